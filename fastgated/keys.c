/* Client API keys: the secret format, the SQLite store and the in-memory index that the
 * request path uses. See keys.h for the contract; the notes here say why it is built so.
 *
 * Memory layout: every key is its own allocation, so a struct key * handed to a request
 * stays valid while the arrays around it grow. The store keeps those pointers twice: in id
 * order (for listing and lookup by id, binary search) and in an open-addressing table keyed
 * by SHA-256 of the secret (for authentication). Keys are never deleted, only revoked; the
 * one removal is of a rotated key's old hash, which re-inserts the rest of its probe run
 * instead of leaving a tombstone, so lookups never have to step over dead slots. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <sqlite3.h>

#include "keys.h"
#include "log.h"
#include "util.h"

#define KEY_NAME_MAX     64     /* characters (code points) */
#define ROUTE_NAME_MAX   128    /* bytes */
#define TARGET_URL_MAX   4096   /* bytes */
#define BUSY_TIMEOUT_MS  5000   /* start-up (schema and load), and each change on the writer
                                 * connection: another process's write lock (a backup, an
                                 * sqlite3 shell) is waited for this long from when the change
                                 * was prepared, off the event loop, before the change is
                                 * refused (busy_hint says why) */
/* After start-up the loop's own connection only reads (route states, at reload), which WAL
 * hardly ever makes wait; should it have to, it must not stall every request for long. */
#define LOOP_BUSY_MS     250

static const char b62_digits[] =
	"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

struct keystore {
	sqlite3 *db;               /* the loop thread's: start-up, then reads */
	sqlite3 *wdb;              /* changes: used by one thread at a time (keystore_change_write) */
	char *path;
	struct key **keys;         /* id order */
	size_t n, cap;
	struct key **slots;        /* hash table by SHA-256; power of two, load <= 0.5 */
	size_t nslots;
	struct user **users;       /* id order; each its own allocation, never freed early */
	size_t n_users, cap_users;
	sqlite3_stmt *st_rs_get, *st_ts_get;                      /* on db */
	sqlite3_stmt *st_insert, *st_revoke, *st_rs_set, *st_ts_set, *st_update,
	             *st_rotate, *st_user_insert, *st_user_update, *st_topup,
	             *st_credit;                                  /* on wdb */
	EVP_MD_CTX *md_ctx;        /* loop 0's lookups reuse it: EVP_Digest allocates a context
	                            * per call (other loops bring their own: key_hasher) */
	/* Held around every reservation, settlement and read of a spend account by the
	 * request path, which runs on every loop: the limits and balances stay exact. */
	pthread_mutex_t spend_mu;
	bool spend_locking;        /* several loops (keystore_share): take spend_mu */
	/* Changes whenever a secret may stop leading to the key it led to (a key rotated or
	 * added, the table rebuilt): a key_memo made before then is not trusted. Starts at 1,
	 * so a zeroed memo never matches. */
	uint64_t gen;
};

/* Schema migrations, applied in order inside one transaction. To add version N, append
 * { N, "ALTER TABLE ..." }: a database at version N-1 runs only that step, a new one runs
 * them all. Never edit a step that has shipped. */
struct migration {
	int version;
	const char *sql;
};

static const struct migration migrations[] = {
	{ 1,
	  "CREATE TABLE keys ("
	  " id INTEGER PRIMARY KEY,"
	  " name TEXT NOT NULL,"
	  " display TEXT NOT NULL,"
	  " hash BLOB NOT NULL UNIQUE,"
	  " created INTEGER,"
	  " expires INTEGER,"
	  " revoked INTEGER,"
	  " last_used INTEGER,"
	  " routes TEXT,"          /* comma-separated route names; '' = all routes */
	  " rpm INTEGER);"
	  "CREATE TABLE route_state ("
	  " name TEXT PRIMARY KEY,"
	  " enabled INTEGER NOT NULL,"
	  " updated INTEGER);" },
	/* `upstream drain`: an upstream is known by its route and URL, the part of its
	 * identity that an operator sees and a route file keeps across edits */
	{ 2,
	  "CREATE TABLE target_state ("
	  " route TEXT NOT NULL,"
	  " url TEXT NOT NULL,"
	  " drained INTEGER NOT NULL,"
	  " updated INTEGER,"
	  " PRIMARY KEY (route, url));" },
	/* spend control: users own keys; limits as "kind:amount/window,..." (limits.h); a
	 * key's old rpm becomes its requests/min limit. credit is what was topped up in all
	 * (topups keeps each top-up); what was spent is counted with the audit rows. */
	{ 3,
	  "CREATE TABLE users ("
	  " id INTEGER PRIMARY KEY,"
	  " name TEXT NOT NULL UNIQUE,"
	  " created INTEGER,"
	  " suspended INTEGER NOT NULL DEFAULT 0,"
	  " balance_kept INTEGER NOT NULL DEFAULT 0,"
	  " credit_nano INTEGER NOT NULL DEFAULT 0,"
	  " multiplier_ppm INTEGER NOT NULL DEFAULT 1000000,"
	  " limits TEXT NOT NULL DEFAULT '');"
	  "CREATE TABLE topups ("
	  " id INTEGER PRIMARY KEY,"
	  " user_id INTEGER NOT NULL,"
	  " amount_nano INTEGER NOT NULL,"
	  " at INTEGER NOT NULL);"
	  "ALTER TABLE keys ADD COLUMN user_id INTEGER;"
	  "ALTER TABLE keys ADD COLUMN limits TEXT NOT NULL DEFAULT '';"
	  "ALTER TABLE keys ADD COLUMN multiplier_ppm INTEGER NOT NULL DEFAULT 1000000;"
	  "UPDATE keys SET limits = 'requests:' || rpm || '/min' WHERE rpm > 0;" },
	/* who may call with a key: address ranges as "10.0.0.0/8,192.168.1.7"; '' = anyone */
	{ 4,
	  "ALTER TABLE keys ADD COLUMN allow_ips TEXT NOT NULL DEFAULT '';" },
};
#define SCHEMA_VERSION (migrations[sizeof(migrations) / sizeof(migrations[0]) - 1].version)

/* ---- secret format ---- */

static uint32_t crc_table[256];

static void crc_table_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int b = 0; b < 8; b++)
			c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
		crc_table[i] = c;
	}
}

uint32_t key_crc32(const void *buf, size_t len)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	const unsigned char *p = buf;
	uint32_t crc = 0xFFFFFFFFu;

	/* By table: every request's key is checked, and bit by bit it cost ~3k instructions. */
	pthread_once(&once, crc_table_init);
	for (size_t i = 0; i < len; i++)
		crc = (crc >> 8) ^ crc_table[(crc ^ p[i]) & 0xff];
	return crc ^ 0xFFFFFFFFu;
}

static signed char b62_table[256];

static void b62_table_init(void)
{
	for (int c = 0; c < 256; c++)
		b62_table[c] = (signed char)(c >= '0' && c <= '9' ? c - '0'
		                           : c >= 'A' && c <= 'Z' ? c - 'A' + 10
		                           : c >= 'a' && c <= 'z' ? c - 'a' + 36 : -1);
}

/* Value of a base62 digit, or -1. */
static pthread_once_t b62_once = PTHREAD_ONCE_INIT;

/* By table, without branches on the secret's bytes; b62_once must have run. */
static int b62_value(unsigned char c)
{
	return b62_table[c];
}

int key_generate(char *out)
{
	/* 62 * 4 = 248: bytes below it map onto the digits evenly (b % 62), bytes at or above
	 * it are thrown away, so every character is uniform (no modulo bias). */
	unsigned char buf[64];
	size_t used = sizeof(buf);
	int n = 0;
	uint32_t crc;

	memcpy(out, KEY_PREFIX, 3);
	while (n < KEY_RANDOM_LEN) {
		unsigned char b;

		if (used == sizeof(buf)) {
			if (RAND_bytes(buf, (int)sizeof(buf)) != 1)
				goto fail;
			used = 0;
		}
		b = buf[used++];
		if (b >= 248)
			continue;
		out[3 + n++] = b62_digits[b % 62];
	}
	crc = key_crc32(out, 3 + KEY_RANDOM_LEN);
	for (int i = KEY_CHECKSUM_LEN - 1; i >= 0; i--) {
		out[3 + KEY_RANDOM_LEN + i] = b62_digits[crc % 62];
		crc /= 62;
	}
	out[KEY_SECRET_LEN] = '\0';
	OPENSSL_cleanse(buf, sizeof(buf));
	return 0;
fail:
	OPENSSL_cleanse(buf, sizeof(buf));
	OPENSSL_cleanse(out, KEY_SECRET_LEN + 1);
	return -1;
}

bool key_format_valid(const char *s, size_t len)
{
	uint64_t sum = 0;
	int bad = 0;

	if (!s || len != KEY_SECRET_LEN || memcmp(s, KEY_PREFIX, 3) != 0)
		return false;
	pthread_once(&b62_once, b62_table_init);
	/* No early exit inside the secret: the cost does not depend on where it is wrong. */
	for (size_t i = 3; i < 3 + KEY_RANDOM_LEN; i++)
		bad |= b62_value((unsigned char)s[i]) < 0;
	for (size_t i = 3 + KEY_RANDOM_LEN; i < KEY_SECRET_LEN; i++) {
		int v = b62_value((unsigned char)s[i]);
		bad |= v < 0;
		sum = sum * 62 + (uint64_t)(v < 0 ? 0 : v);
	}
	return !bad && sum == key_crc32(s, 3 + KEY_RANDOM_LEN);
}

/* SHA256() looks the algorithm up by name on every call, which cost more than the rest of
 * the key check; the implementation is fetched once and reused (EVP_MD is thread-safe). */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
	sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

void key_hash(const char *secret, size_t len, unsigned char out[KEY_HASH_LEN])
{
	pthread_once(&sha256_once, sha256_fetch);
	if (!sha256_md || !EVP_Digest(secret, len, out, NULL, sha256_md, NULL))
		SHA256((const unsigned char *)secret, len, out);
}

/* key_hash with a context kept by the caller (one per thread): the same digest without the
 * context allocation and set-up of EVP_Digest, a third of its cost per request. */
static void key_hash_with(EVP_MD_CTX *ctx, const char *secret, size_t len,
                          unsigned char out[KEY_HASH_LEN])
{
	if (!ctx || !EVP_DigestInit_ex2(ctx, sha256_md, NULL) ||
	    !EVP_DigestUpdate(ctx, secret, len) || !EVP_DigestFinal_ex(ctx, out, NULL))
		key_hash(secret, len, out);
}

/* ---- key objects ---- */

static void free_routes(char **routes, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(routes[i]);
	free(routes);
}

static void key_free(struct key *k)
{
	if (!k)
		return;
	free(k->name);
	free_routes(k->routes, k->n_routes);
	free(k->allow_ips);
	spend_account_free(&k->acct);
	free(k);
}

static void user_free(struct user *u)
{
	if (!u)
		return;
	free(u->name);
	spend_account_free(&u->acct);
	free(u);
}

/* The requests/min limit's amount: what `rpm` has always meant. */
static int rpm_of(const struct limit *lim, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (lim[i].kind == LIMIT_REQUESTS && lim[i].window == LIMIT_MIN)
			return lim[i].amount > INT32_MAX ? INT32_MAX : (int)lim[i].amount;
	return 0;
}

/* lim[0..*n) with its requests/min limit set to rpm (0: removed). */
static void limits_with_rpm(struct limit *lim, size_t *n, int rpm)
{
	size_t i;

	for (i = 0; i < *n; i++)
		if (lim[i].kind == LIMIT_REQUESTS && lim[i].window == LIMIT_MIN)
			break;
	if (rpm > 0 && i < *n) {
		lim[i].amount = rpm;
	} else if (rpm > 0 && *n < LIMITS_MAX) {
		lim[*n] = (struct limit){ .kind = LIMIT_REQUESTS, .window = LIMIT_MIN,
		                          .amount = rpm };
		(*n)++;
	} else if (rpm == 0 && i < *n) {
		memmove(lim + i, lim + i + 1, (*n - i - 1) * sizeof(*lim));
		(*n)--;
	}
}

/* Limits as stored. */
static char *limits_text(const struct limit *lim, size_t n)
{
	char buf[LIMITS_MAX * 48 + 1];

	return xstrdup(n ? limits_format(lim, n, buf, sizeof(buf)) : "");
}

/* Split the stored "a,b,c" into k->routes; NULL or "" means all routes. */
static void key_set_routes_text(struct key *k, const char *text)
{
	size_t n = 0;
	const char *p;

	if (!text || !*text)
		return;
	for (p = text; *p; p++)
		n += *p == ',';
	k->routes = xcalloc(n + 1, sizeof(*k->routes));
	for (p = text; *p; ) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);

		if (len)
			k->routes[k->n_routes++] = xstrndup(p, len);
		p += len + (end != NULL);
	}
}

/* "a,b,c" for the routes column; caller frees. Names were checked to hold no comma. */
static char *routes_join(char *const *routes, size_t n)
{
	size_t len = 1;
	char *out, *p;

	for (size_t i = 0; i < n; i++)
		len += strlen(routes[i]) + 1;
	out = p = xmalloc(len);
	*p = '\0';
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(routes[i]);

		if (i)
			*p++ = ',';
		memcpy(p, routes[i], l);
		p += l;
	}
	*p = '\0';
	return out;
}

/* Address ranges as stored: "10.0.0.0/8,192.168.1.7", "" for none. Caller frees. */
static char *allow_ips_join(const struct cidr *ips, size_t n)
{
	char *out = xmalloc(n * CIDR_TEXT_MAX + 1), *p = out;

	*p = '\0';
	for (size_t i = 0; i < n; i++) {
		if (i)
			*p++ = ',';
		cidr_format(&ips[i], p, CIDR_TEXT_MAX);
		p += strlen(p);
	}
	return out;
}

/* The stored text back into ranges (a new array in *out, NULL for none), or -1 when an
 * item does not parse: a range dropped quietly would widen who may call. */
static int allow_ips_split(const char *text, struct cidr **out, size_t *n)
{
	size_t cap = 1;
	const char *p;

	*out = NULL;
	*n = 0;
	if (!text || !*text)
		return 0;
	for (p = text; *p; p++)
		cap += *p == ',';
	if (cap > KEY_ALLOW_IPS_MAX)
		return -1;
	*out = xcalloc(cap, sizeof(**out));
	for (p = text; ; ) {
		char item[CIDR_TEXT_MAX];
		size_t len = strcspn(p, ",");

		if (len == 0 || len >= sizeof(item))
			goto bad;
		memcpy(item, p, len);
		item[len] = '\0';
		if (cidr_parse(item, &(*out)[(*n)++]) < 0)
			goto bad;
		if (!p[len])
			return 0;
		p += len + 1;
	}
bad:
	free(*out);
	*out = NULL;
	*n = 0;
	return -1;
}

/* ---- the in-memory index ---- */

static size_t hash_slot(const unsigned char hash[KEY_HASH_LEN], size_t nslots)
{
	uint64_t h;

	/* SHA-256 output is already uniform: its first 8 bytes are the hash value. */
	memcpy(&h, hash, sizeof(h));
	return (size_t)h & (nslots - 1);
}

static void table_put(struct key **slots, size_t nslots, struct key *k)
{
	size_t i = hash_slot(k->hash, nslots);

	while (slots[i])
		i = (i + 1) & (nslots - 1);
	slots[i] = k;
}

/* Take k out of the hash table (found by its current hash). Linear probing finds a key by
 * walking from its home slot to the first empty one, so every key after k in the same run
 * is put back: each then lands at or before where it was, and no walk crosses a hole. */
static void table_remove(struct keystore *ks, const struct key *k)
{
	size_t mask = ks->nslots - 1, i;

	for (i = hash_slot(k->hash, ks->nslots); ks->slots[i] != k; i = (i + 1) & mask)
		if (!ks->slots[i])
			return;       /* not indexed: nothing to remove */
	ks->slots[i] = NULL;
	ks->gen++;
	for (i = (i + 1) & mask; ks->slots[i]; i = (i + 1) & mask) {
		struct key *moved = ks->slots[i];

		ks->slots[i] = NULL;
		table_put(ks->slots, ks->nslots, moved);
	}
}

/* Make room for `want` keys at load <= 0.5, rehashing into a bigger table if needed. */
static void table_reserve(struct keystore *ks, size_t want)
{
	size_t nslots = ks->nslots ? ks->nslots : 16;
	struct key **slots;

	while (nslots < want * 2)
		nslots *= 2;
	if (nslots == ks->nslots)
		return;
	slots = xcalloc(nslots, sizeof(*slots));
	for (size_t i = 0; i < ks->n; i++)
		table_put(slots, nslots, ks->keys[i]);
	free(ks->slots);
	ks->slots = slots;
	ks->nslots = nslots;
}

/* Add k to both indexes; the store owns it from here. */
static void index_add(struct keystore *ks, struct key *k)
{
	size_t pos = ks->n;

	table_reserve(ks, ks->n + 1);
	if (ks->n == ks->cap) {
		ks->cap = ks->cap ? ks->cap * 2 : 64;
		ks->keys = realloc(ks->keys, ks->cap * sizeof(*ks->keys));
		if (!ks->keys)
			abort();
	}
	/* Rowids only grow while we never delete, so this loop almost never runs. */
	while (pos > 0 && ks->keys[pos - 1]->id > k->id)
		pos--;
	memmove(ks->keys + pos + 1, ks->keys + pos, (ks->n - pos) * sizeof(*ks->keys));
	ks->keys[pos] = k;
	ks->n++;
	table_put(ks->slots, ks->nslots, k);
	ks->gen++;
}

static void user_index_add(struct keystore *ks, struct user *u)
{
	size_t pos = ks->n_users;

	if (ks->n_users == ks->cap_users) {
		ks->cap_users = ks->cap_users ? ks->cap_users * 2 : 16;
		ks->users = realloc(ks->users, ks->cap_users * sizeof(*ks->users));
		if (!ks->users)
			abort();
	}
	while (pos > 0 && ks->users[pos - 1]->id > u->id)
		pos--;
	memmove(ks->users + pos + 1, ks->users + pos, (ks->n_users - pos) * sizeof(*ks->users));
	ks->users[pos] = u;
	ks->n_users++;
}

/* ---- SQLite plumbing ---- */

static int exec_sql(struct keystore *ks, const char *sql, const char *what, char **err)
{
	char *msg = NULL;

	if (sqlite3_exec(ks->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		set_err(err, "key store %s: %s failed: %s", ks->path, what,
		        msg ? msg : sqlite3_errmsg(ks->db));
		sqlite3_free(msg);
		return -1;
	}
	return 0;
}

static int prepare(struct keystore *ks, sqlite3 *db, sqlite3_stmt **st, const char *sql,
                   char **err)
{
	if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL) != SQLITE_OK) {
		set_err(err, "key store %s: cannot prepare statement: %s", ks->path,
		        sqlite3_errmsg(db));
		return -1;
	}
	return 0;
}

/* Create the file ourselves so it is 0600 whatever the umask; SQLite gives the -wal and
 * -shm files the database file's mode. A missing directory is the operator's to create:
 * guessing a tree of directories for a secrets store is not ours to do. */
static int ensure_db_file(const char *path, char **err)
{
	struct stat st;
	int fd;

	if (stat(path, &st) == 0) {
		if (!S_ISREG(st.st_mode)) {
			set_err(err, "key store %s is not a regular file", path);
			return -1;
		}
		if (st.st_mode & 077)
			log_warn("key store %s is accessible by group or others (mode %03o); "
			         "run chmod 600 on it", path, (unsigned)(st.st_mode & 0777));
		return 0;
	}
	if (errno != ENOENT) {
		set_err(err, "cannot open key store %s: %s", path, strerror(errno));
		return -1;
	}

	{
		const char *slash = strrchr(path, '/');
		char *dir = slash ? xstrndup(path, slash == path ? 1 : (size_t)(slash - path))
		                  : xstrndup(".", 1);
		int ok = stat(dir, &st) == 0 && S_ISDIR(st.st_mode);

		if (!ok)
			set_err(err, "cannot create key store %s: directory %s does not exist "
			        "(create it, or point --keys elsewhere)", path, dir);
		free(dir);
		if (!ok)
			return -1;
	}

	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		if (errno == EEXIST)    /* another process made it between stat and open */
			return 0;
		set_err(err, "cannot create key store %s: %s", path, strerror(errno));
		return -1;
	}
	if (fchmod(fd, 0600) != 0) {
		set_err(err, "cannot set mode 0600 on key store %s: %s", path, strerror(errno));
		close(fd);
		unlink(path);
		return -1;
	}
	close(fd);
	return 0;
}

static int user_version(struct keystore *ks, int *version, char **err)
{
	sqlite3_stmt *st = NULL;
	int rc = -1;

	if (sqlite3_prepare_v2(ks->db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK ||
	    sqlite3_step(st) != SQLITE_ROW) {
		set_err(err, "key store %s: cannot read schema version: %s", ks->path,
		        sqlite3_errmsg(ks->db));
		goto done;
	}
	*version = sqlite3_column_int(st, 0);
	rc = 0;
done:
	sqlite3_finalize(st);
	return rc;
}

/* Bring the schema to SCHEMA_VERSION. BEGIN IMMEDIATE takes the write lock before the
 * version is read, so two processes opening a new file cannot both run step 1. */
static int migrate(struct keystore *ks, char **err)
{
	int version = 0;
	char sql[64];

	if (exec_sql(ks, "BEGIN IMMEDIATE", "starting the schema check", err) < 0)
		return -1;
	if (user_version(ks, &version, err) < 0)
		goto fail;
	if (version > SCHEMA_VERSION) {
		set_err(err, "key store %s has schema version %d, newer than the %d this fastgated "
		        "understands; it was written by a newer fastgate: upgrade fastgated or use "
		        "another --keys file", ks->path, version, SCHEMA_VERSION);
		goto fail;
	}
	if (version < 0) {
		set_err(err, "key store %s has an invalid schema version %d", ks->path, version);
		goto fail;
	}
	for (size_t i = 0; i < sizeof(migrations) / sizeof(migrations[0]); i++) {
		if (migrations[i].version <= version)
			continue;
		if (exec_sql(ks, migrations[i].sql, "schema migration", err) < 0)
			goto fail;
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", migrations[i].version);
		if (exec_sql(ks, sql, "setting the schema version", err) < 0)
			goto fail;
		if (version > 0)
			log_info("key store %s: schema migrated to version %d", ks->path,
			         migrations[i].version);
	}
	return exec_sql(ks, "COMMIT", "committing the schema", err);
fail:
	sqlite3_exec(ks->db, "ROLLBACK", NULL, NULL, NULL);
	return -1;
}

/* Stored limits, or -1 with *err naming the row: a limit that does not parse is not
 * dropped quietly (that would lift it). */
static int load_limits(struct keystore *ks, const char *what, int64_t id, const char *text,
                       struct spend_account *a, char **err)
{
	struct limit lim[LIMITS_MAX];
	size_t n = 0;
	char *why = NULL;

	if (text && *text && limits_parse(text, lim, &n, &why) < 0) {
		set_err(err, "key store %s: %s %lld has limits the daemon cannot read (%s); fix "
		        "them with fastgate-cli %s update", ks->path, what, (long long)id,
		        why ? why : "?", what);
		free(why);
		return -1;
	}
	spend_account_set_limits(a, lim, n, (int64_t)time(NULL));
	return 0;
}

static int load_users(struct keystore *ks, char **err)
{
	sqlite3_stmt *st = NULL;
	int rc = -1, step;

	if (sqlite3_prepare_v2(ks->db,
	                       "SELECT id, name, created, suspended, balance_kept, credit_nano, "
	                       "multiplier_ppm, limits FROM users ORDER BY id",
	                       -1, &st, NULL) != SQLITE_OK) {
		set_err(err, "key store %s: cannot read users: %s", ks->path, sqlite3_errmsg(ks->db));
		goto done;
	}
	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		struct user *u = xcalloc(1, sizeof(*u));
		const char *name = (const char *)sqlite3_column_text(st, 1);

		u->id = sqlite3_column_int64(st, 0);
		u->name = xstrdup(name ? name : "");
		u->created = sqlite3_column_int64(st, 2);
		u->suspended = sqlite3_column_int(st, 3) != 0;
		u->bal.kept = sqlite3_column_int(st, 4) != 0;
		u->bal.credit = sqlite3_column_int64(st, 5);
		u->multiplier_ppm = sqlite3_column_int64(st, 6);
		if (u->multiplier_ppm <= 0)
			u->multiplier_ppm = MULTIPLIER_ONE;
		spend_account_init(&u->acct);
		user_index_add(ks, u);
		if (load_limits(ks, "user", u->id, (const char *)sqlite3_column_text(st, 7), &u->acct,
		                err) < 0)
			goto done;
	}
	if (step != SQLITE_DONE) {
		set_err(err, "key store %s: reading users failed: %s", ks->path,
		        sqlite3_errmsg(ks->db));
		goto done;
	}
	rc = 0;
done:
	sqlite3_finalize(st);
	return rc;
}

static int load_keys(struct keystore *ks, char **err)
{
	sqlite3_stmt *st = NULL;
	int rc = -1, step;
	size_t want = 0;

	/* Size the table once from the row count instead of rehashing on the way up. */
	if (sqlite3_prepare_v2(ks->db, "SELECT count(*) FROM keys", -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		want = (size_t)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	st = NULL;
	table_reserve(ks, want);
	if (want > ks->cap) {
		ks->cap = want;
		ks->keys = realloc(ks->keys, ks->cap * sizeof(*ks->keys));
		if (!ks->keys)
			abort();
	}

	if (sqlite3_prepare_v2(ks->db,
	                       "SELECT id, name, display, hash, created, expires, revoked, "
	                       "last_used, routes, rpm, user_id, limits, multiplier_ppm, allow_ips "
	                       "FROM keys ORDER BY id",
	                       -1, &st, NULL) != SQLITE_OK) {
		set_err(err, "key store %s: cannot read keys: %s", ks->path, sqlite3_errmsg(ks->db));
		goto done;
	}
	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		struct key *k;
		const char *name = (const char *)sqlite3_column_text(st, 1);
		const char *display = (const char *)sqlite3_column_text(st, 2);
		const void *hash = sqlite3_column_blob(st, 3);
		int64_t id = sqlite3_column_int64(st, 0);

		if (!hash || sqlite3_column_bytes(st, 3) != KEY_HASH_LEN) {
			set_err(err, "key store %s: key id %lld has a malformed hash (%d bytes, "
			        "expected %d); the database is damaged", ks->path, (long long)id,
			        sqlite3_column_bytes(st, 3), KEY_HASH_LEN);
			goto done;
		}
		k = xcalloc(1, sizeof(*k));
		k->id = id;
		k->name = xstrndup(name ? name : "", (size_t)sqlite3_column_bytes(st, 1));
		snprintf(k->display, sizeof(k->display), "%s", display ? display : "");
		memcpy(k->hash, hash, KEY_HASH_LEN);
		k->created = sqlite3_column_int64(st, 4);
		k->expires = sqlite3_column_int64(st, 5);
		k->revoked = sqlite3_column_int64(st, 6);
		k->last_used = sqlite3_column_int64(st, 7);
		key_set_routes_text(k, (const char *)sqlite3_column_text(st, 8));
		k->user_id = sqlite3_column_int64(st, 10);
		k->user = k->user_id ? keystore_user_get(ks, k->user_id) : NULL;
		k->multiplier_ppm = sqlite3_column_int64(st, 12);
		if (k->multiplier_ppm <= 0)
			k->multiplier_ppm = MULTIPLIER_ONE;
		spend_account_init(&k->acct);
		index_add(ks, k);
		if (k->user_id && !k->user)
			log_warn("key store %s: key %lld belongs to user %lld, who is not in the store; "
			         "the key is used without a user", ks->path, (long long)id,
			         (long long)k->user_id);
		if (load_limits(ks, "key", id, (const char *)sqlite3_column_text(st, 11), &k->acct,
		                err) < 0)
			goto done;
		k->rpm = rpm_of(k->acct.lim, k->acct.n_lim);
		if (allow_ips_split((const char *)sqlite3_column_text(st, 13), &k->allow_ips,
		                    &k->n_allow_ips) < 0) {
			set_err(err, "key store %s: key %lld has allow_ips the daemon cannot read (\"%s\"); "
			        "correct that column of the keys table with sqlite3 (addresses and "
			        "ranges separated by commas; '' lets any client use the key)", ks->path,
			        (long long)id, sqlite3_column_text(st, 13));
			goto done;
		}
	}
	if (step != SQLITE_DONE) {
		set_err(err, "key store %s: reading keys failed: %s", ks->path,
		        sqlite3_errmsg(ks->db));
		goto done;
	}
	rc = 0;
done:
	sqlite3_finalize(st);
	return rc;
}

/* A connection to the store, waiting up to BUSY_TIMEOUT_MS for another process's lock.
 * -1 with *err set; *db is to be closed either way. */
static int store_connect(const char *path, sqlite3 **db, char **err)
{
	if (sqlite3_open_v2(path, db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
		set_err(err, "cannot open key store %s: %s", path,
		        *db ? sqlite3_errmsg(*db) : "out of memory");
		return -1;
	}
	sqlite3_extended_result_codes(*db, 1);
	sqlite3_busy_timeout(*db, BUSY_TIMEOUT_MS);
	return 0;
}

struct keystore *keystore_open(const char *path, char **err)
{
	struct keystore *ks;
	sqlite3_stmt *st = NULL;

	if (!path || !*path) {
		set_err(err, "no key store path given");
		return NULL;
	}
	if (ensure_db_file(path, err) < 0)
		return NULL;

	ks = xcalloc(1, sizeof(*ks));
	ks->gen = 1;
	ks->path = xstrndup(path, strlen(path));
	pthread_mutex_init(&ks->spend_mu, NULL);
	pthread_once(&sha256_once, sha256_fetch);
	if (sha256_md)
		ks->md_ctx = EVP_MD_CTX_new();   /* NULL: lookups fall back to key_hash() */
	if (store_connect(path, &ks->db, err) < 0)
		goto fail;

	/* The first statement is where "file is not a database" shows up. */
	if (sqlite3_prepare_v2(ks->db, "PRAGMA journal_mode=WAL", -1, &st, NULL) != SQLITE_OK ||
	    sqlite3_step(st) != SQLITE_ROW) {
		set_err(err, "cannot open key store %s: %s", path, sqlite3_errmsg(ks->db));
		goto fail;
	}
	if (sqlite3_stricmp((const char *)sqlite3_column_text(st, 0), "wal") != 0)
		log_warn("key store %s: WAL journal not available (journal_mode=%s)", path,
		         sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	st = NULL;

	if (migrate(ks, err) < 0 || load_users(ks, err) < 0 || load_keys(ks, err) < 0)
		goto fail;
	if (prepare(ks, ks->db, &ks->st_rs_get, "SELECT enabled FROM route_state WHERE name = ?1",
	            err) < 0 ||
	    prepare(ks, ks->db, &ks->st_ts_get,
	            "SELECT drained FROM target_state WHERE route = ?1 AND url = ?2", err) < 0)
		goto fail;
	/* Changes go through a connection of their own, so that the thread writing them never
	 * shares one with the loop. Each statement names the key as ?9. Revoking keeps the
	 * first time; update and rotate leave a revoked key alone, and update sets only the
	 * fields asked for: changes prepared together (from the same state in memory) are
	 * written one after the other without undoing each other. */
	if (store_connect(path, &ks->wdb, err) < 0 ||
	    prepare(ks, ks->wdb, &ks->st_insert,
	            "INSERT INTO keys (name, display, hash, created, expires, revoked, last_used, "
	            "routes, rpm, user_id, limits, multiplier_ppm, allow_ips) "
	            "VALUES (?1, ?2, ?3, ?4, ?5, 0, 0, ?6, ?7, ?10, ?11, ?12, ?13)", err) < 0 ||
	    prepare(ks, ks->wdb, &ks->st_revoke,
	            "UPDATE keys SET revoked = CASE WHEN revoked > 0 THEN revoked ELSE ?1 END "
	            "WHERE id = ?9", err) < 0 ||
	    prepare(ks, ks->wdb, &ks->st_rs_set,
	            "INSERT OR REPLACE INTO route_state (name, enabled, updated) "
	            "VALUES (?1, ?2, ?3)", err) < 0 ||
	    prepare(ks, ks->wdb, &ks->st_ts_set,
	            "INSERT OR REPLACE INTO target_state (route, url, drained, updated) "
	            "VALUES (?1, ?2, ?3, ?4)", err) < 0 ||
	    prepare(ks, ks->wdb, &ks->st_update,
	            "UPDATE keys SET routes = CASE WHEN ?1 THEN ?2 ELSE routes END, "
	            "rpm = CASE WHEN ?3 THEN ?4 ELSE rpm END, "
	            "expires = CASE WHEN ?5 THEN ?6 ELSE expires END, "
	            "limits = CASE WHEN ?3 THEN ?7 ELSE limits END, "
	            "multiplier_ppm = CASE WHEN ?10 THEN ?11 ELSE multiplier_ppm END, "
	            "allow_ips = CASE WHEN ?12 THEN ?13 ELSE allow_ips END "
	            "WHERE id = ?9 AND coalesce(revoked, 0) = 0", err) < 0 ||
	    prepare(ks, ks->wdb, &ks->st_user_insert,
	            "INSERT INTO users (name, created, balance_kept, credit_nano, multiplier_ppm, "
	            "limits) VALUES (?1, ?2, ?3, ?4, ?5, ?6)", err) < 0 ||
	    prepare(ks, ks->wdb, &ks->st_user_update,
	            "UPDATE users SET limits = CASE WHEN ?1 THEN ?2 ELSE limits END, "
	            "multiplier_ppm = CASE WHEN ?3 THEN ?4 ELSE multiplier_ppm END, "
	            "suspended = CASE WHEN ?5 THEN ?6 ELSE suspended END WHERE id = ?9", err) < 0 ||
	    prepare(ks, ks->wdb, &ks->st_topup,
	            "INSERT INTO topups (user_id, amount_nano, at) VALUES (?9, ?1, ?2)", err) < 0 ||
	    prepare(ks, ks->wdb, &ks->st_credit,
	            "UPDATE users SET credit_nano = credit_nano + ?1, balance_kept = 1 "
	            "WHERE id = ?9", err) < 0 ||
	    prepare(ks, ks->wdb, &ks->st_rotate,
	            "UPDATE keys SET hash = ?1, display = ?2 "
	            "WHERE id = ?9 AND coalesce(revoked, 0) = 0", err) < 0)
		goto fail;
	sqlite3_busy_timeout(ks->db, LOOP_BUSY_MS);
	return ks;
fail:
	sqlite3_finalize(st);
	keystore_close(ks);
	return NULL;
}

void keystore_close(struct keystore *ks)
{
	if (!ks)
		return;
	sqlite3_finalize(ks->st_insert);
	sqlite3_finalize(ks->st_revoke);
	sqlite3_finalize(ks->st_rs_get);
	sqlite3_finalize(ks->st_rs_set);
	sqlite3_finalize(ks->st_ts_get);
	sqlite3_finalize(ks->st_ts_set);
	sqlite3_finalize(ks->st_update);
	sqlite3_finalize(ks->st_rotate);
	sqlite3_finalize(ks->st_user_insert);
	sqlite3_finalize(ks->st_user_update);
	sqlite3_finalize(ks->st_topup);
	sqlite3_finalize(ks->st_credit);
	if (sqlite3_close(ks->wdb) != SQLITE_OK)
		log_warn("key store %s: close failed: %s", ks->path, sqlite3_errmsg(ks->wdb));
	if (sqlite3_close(ks->db) != SQLITE_OK)
		log_warn("key store %s: close failed: %s", ks->path, sqlite3_errmsg(ks->db));
	for (size_t i = 0; i < ks->n; i++)
		key_free(ks->keys[i]);
	free(ks->keys);
	for (size_t i = 0; i < ks->n_users; i++)
		user_free(ks->users[i]);
	free(ks->users);
	free(ks->slots);
	free(ks->path);
	EVP_MD_CTX_free(ks->md_ctx);
	pthread_mutex_destroy(&ks->spend_mu);
	free(ks);
}

void keystore_share(struct keystore *ks)
{
	ks->spend_locking = true;
}

void keystore_spend_lock(struct keystore *ks)
{
	if (ks->spend_locking)
		pthread_mutex_lock(&ks->spend_mu);
}

void keystore_spend_unlock(struct keystore *ks)
{
	if (ks->spend_locking)
		pthread_mutex_unlock(&ks->spend_mu);
}

/* ---- lookups ---- */

struct key_hasher {
	EVP_MD_CTX *ctx;
};

struct key_hasher *key_hasher_new(void)
{
	struct key_hasher *h = calloc(1, sizeof(*h));

	pthread_once(&sha256_once, sha256_fetch);
	if (h)
		h->ctx = EVP_MD_CTX_new();   /* NULL: lookups fall back to key_hash() */
	return h;
}

void key_hasher_free(struct key_hasher *h)
{
	if (h)
		EVP_MD_CTX_free(h->ctx);
	free(h);
}

static struct key *lookup_with(struct keystore *ks, EVP_MD_CTX *ctx, const char *secret,
                               size_t len)
{
	unsigned char hash[KEY_HASH_LEN];
	size_t i;

	if (!ks || !ks->nslots || !key_format_valid(secret, len))
		return NULL;
	key_hash_with(ctx, secret, len, hash);
	for (i = hash_slot(hash, ks->nslots); ks->slots[i]; i = (i + 1) & (ks->nslots - 1))
		if (CRYPTO_memcmp(ks->slots[i]->hash, hash, KEY_HASH_LEN) == 0)
			return ks->slots[i];
	return NULL;
}

struct key *keystore_lookup(struct keystore *ks, const char *secret, size_t len)
{
	return lookup_with(ks, ks ? ks->md_ctx : NULL, secret, len);
}

/* Equal in time that depends on n only (no exit or branch on a byte): 8 bytes a step, where
 * CRYPTO_memcmp goes a byte at a time (~350 instructions for a key, on every request). */
static bool secret_equal(const char *a, const char *b, size_t n)
{
	uint64_t d = 0;
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		uint64_t x, y;

		memcpy(&x, a + i, sizeof(x));
		memcpy(&y, b + i, sizeof(y));
		d |= x ^ y;
	}
	for (; i < n; i++)
		d |= (uint64_t)((unsigned char)a[i] ^ (unsigned char)b[i]);
	return d == 0;
}

struct key *keystore_lookup_memo(struct keystore *ks, const char *secret, size_t len,
                                 struct key_memo *m, struct key_hasher *h)
{
	struct key *k;

	if (ks && m->key && m->gen == ks->gen && m->len == len &&
	    secret_equal(m->secret, secret, len))
		return m->key;
	k = lookup_with(ks, h ? h->ctx : ks ? ks->md_ctx : NULL, secret, len);
	if (k && len <= sizeof(m->secret)) {
		m->gen = ks->gen;
		m->key = k;
		m->len = len;
		memcpy(m->secret, secret, len);
	}
	return k;
}

void key_memo_clear(struct key_memo *m)
{
	OPENSSL_cleanse(m, sizeof(*m));
}

/* Keys and users both start with their int64_t id and are kept in id order: one binary
 * search for both (a pointer to a struct is a pointer to its first member). */
static void *find_by_id(void *const *v, size_t n, int64_t id)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int64_t at = *(const int64_t *)v[mid];

		if (at == id)
			return v[mid];
		if (at < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

struct key *keystore_get(struct keystore *ks, int64_t id)
{
	return ks ? find_by_id((void *const *)ks->keys, ks->n, id) : NULL;
}

struct user *keystore_user_get(struct keystore *ks, int64_t id)
{
	return ks ? find_by_id((void *const *)ks->users, ks->n_users, id) : NULL;
}

size_t keystore_user_count(const struct keystore *ks)
{
	return ks ? ks->n_users : 0;
}

struct user *keystore_user_at(struct keystore *ks, size_t i)
{
	return ks && i < ks->n_users ? ks->users[i] : NULL;
}

void keystore_spend_load(struct keystore *ks, char scope, int64_t id, enum spend_period p,
                         int64_t start, const struct spend_totals *t, int64_t now)
{
	struct spend_account *a = NULL;
	struct user *u = NULL;

	if (scope == 'k') {
		struct key *k = keystore_get(ks, id);

		a = k ? &k->acct : NULL;
	} else if (scope == 'u' && (u = keystore_user_get(ks, id))) {
		a = &u->acct;
		if (p == SPEND_ALL)
			u->bal.spent = t->cost;
	}
	if (a)
		spend_account_load(a, p, start, t, now);
}

size_t keystore_count(const struct keystore *ks)
{
	return ks ? ks->n : 0;
}

struct key *keystore_at(struct keystore *ks, size_t i)
{
	return ks && i < ks->n ? ks->keys[i] : NULL;
}

bool key_usable(const struct key *k, int64_t now)
{
	return k && k->revoked == 0 && (k->expires == 0 || now < k->expires);
}

/* ---- changes ---- */

/* Decode one UTF-8 sequence; its length, or 0 if invalid (overlong, surrogate, too big). */
static size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
	size_t n;
	uint32_t c = s[0], min;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xC2 && c <= 0xDF)
		n = 2, c &= 0x1F, min = 0x80;
	else if (c >= 0xE0 && c <= 0xEF)
		n = 3, c &= 0x0F, min = 0x800;
	else if (c >= 0xF0 && c <= 0xF4)
		n = 4, c &= 0x07, min = 0x10000;
	else
		return 0;
	if (len < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3F);
	}
	if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
		return 0;
	*cp = c;
	return n;
}

/* Names end up in tables, CSV and JSON (jansson wants valid UTF-8): printable text only.
 * `what` is "key" or "user". */
static int name_check(const char *what, const char *name, char **err)
{
	const unsigned char *s = (const unsigned char *)name;
	size_t len, chars = 0;

	if (!name || !*name) {
		set_err(err, "%s name must not be empty", what);
		return -1;
	}
	len = strlen(name);
	for (size_t i = 0; i < len; chars++) {
		uint32_t cp;
		size_t n = utf8_decode(s + i, len - i, &cp);

		if (!n) {
			set_err(err, "%s name is not valid UTF-8 (byte %zu)", what, i + 1);
			return -1;
		}
		if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) {
			set_err(err, "%s name must not contain control characters (character %zu)",
			        what, chars + 1);
			return -1;
		}
		i += n;
	}
	if (chars > KEY_NAME_MAX) {
		set_err(err, "%s name is %zu characters long; the limit is %d", what, chars,
		        KEY_NAME_MAX);
		return -1;
	}
	if (s[0] == ' ' || s[len - 1] == ' ') {
		set_err(err, "%s name must not start or end with a space", what);
		return -1;
	}
	return 0;
}

int key_name_check(const char *name, char **err)
{
	return name_check("key", name, err);
}

int user_name_check(const char *name, char **err)
{
	return name_check("user", name, err);
}

static int check_route_name(const char *r, char **err)
{
	size_t len = r ? strlen(r) : 0;

	if (len == 0 || len > ROUTE_NAME_MAX) {
		set_err(err, "route name must be 1 to %d characters long", ROUTE_NAME_MAX);
		return -1;
	}
	for (size_t i = 0; i < len; i++) {
		char c = r[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == '-')) {
			set_err(err, "route name \"%.*s\" may only contain letters, digits, '_', '.' "
			        "and '-'", (int)len, r);
			return -1;
		}
	}
	return 0;
}

/* ---- changes: prepared and applied on the loop, written on the writer thread ---- */

enum change_kind { CHANGE_CREATE, CHANGE_REVOKE, CHANGE_UPDATE, CHANGE_ROTATE, CHANGE_ROUTE,
                   CHANGE_TARGET, CHANGE_USER_CREATE, CHANGE_USER_UPDATE, CHANGE_USER_TOPUP };

struct key_change {
	struct keystore *ks;
	enum change_kind kind;
	int64_t id;                        /* the key; create: set by the write */
	bool written;                      /* by keystore_change_write; if not, err says why */
	int64_t deadline;                  /* mono_ms: give up waiting for a lock from here */
	char *err;
	struct key *fresh;                 /* create: the new key, ours until applied */
	char secret[KEY_SECRET_LEN + 1];   /* create, rotate */
	char display[KEY_DISPLAY_LEN + 1]; /* rotate */
	unsigned char hash[KEY_HASH_LEN];  /* rotate */
	int64_t when;                      /* revoke: the time; route: the time */
	unsigned set;                      /* update: KEY_CHANGE_* */
	char **routes;                     /* update: the new list (applied by swapping) */
	size_t n_routes;
	char *routes_text;                 /* create, update: as stored */
	int rpm;
	int64_t expires;
	char *route;                       /* route state, target state */
	int enabled;
	char *url;                         /* target state: the upstream's URL */
	int drained;
	/* spend control: key create and update, user changes */
	struct limit lim[LIMITS_MAX];      /* the whole new list */
	size_t n_lim;
	char *limits_text;                 /* as stored */
	int64_t multiplier_ppm;
	int64_t user_id;                   /* key create: its user; user changes: the user */
	struct user *fresh_user;           /* user create: ours until applied */
	int64_t amount;                    /* top-up, nano-USD */
	bool suspended;
	struct cidr *allow_ips;            /* update: the new list (applied by swapping) */
	size_t n_allow_ips;
	char *allow_ips_text;              /* create, update: as stored */
};

/* Completes a failed write's message when the cause is another process's lock. */
static const char *busy_hint(sqlite3 *db)
{
	return (sqlite3_errcode(db) & 0xff) == SQLITE_BUSY
	       ? " (another process holds the key store's write lock, such as a backup or an "
	         "sqlite3 shell; nothing was changed: try again)" : "";
}

static struct key_change *change_new(struct keystore *ks, enum change_kind kind, int64_t id)
{
	struct key_change *c = xcalloc(1, sizeof(*c));

	c->ks = ks;
	c->kind = kind;
	c->id = id;
	c->deadline = mono_ms() + BUSY_TIMEOUT_MS;
	return c;
}

void keystore_change_free(struct key_change *c)
{
	if (!c)
		return;
	key_free(c->fresh);
	user_free(c->fresh_user);
	free(c->limits_text);
	free_routes(c->routes, c->n_routes);
	free(c->routes_text);
	free(c->route);
	free(c->url);
	free(c->allow_ips);
	free(c->allow_ips_text);
	free(c->err);
	OPENSSL_cleanse(c->secret, sizeof(c->secret));
	OPENSSL_cleanse(c->hash, sizeof(c->hash));
	free(c);
}

static int check_limits(int rpm, int64_t expires, char **err)
{
	if (rpm < 0) {
		set_err(err, "rpm must be 0 (unlimited) or more, not %d", rpm);
		return -1;
	}
	if (expires < 0) {
		set_err(err, "expiry time must be 0 (never) or a unix time, not %lld",
		        (long long)expires);
		return -1;
	}
	return 0;
}

/* A copy of a checked route list, so that nothing can fail between the write and the
 * swap in memory. -1 with *err set. */
static int copy_routes(char *const *routes, size_t n, char ***out, char **err)
{
	if (n && !routes) {
		set_err(err, "internal error: %zu routes given without a list", n);
		return -1;
	}
	for (size_t i = 0; i < n; i++)
		if (check_route_name(routes[i], err) < 0)
			return -1;
	*out = n ? xcalloc(n, sizeof(**out)) : NULL;
	for (size_t i = 0; i < n; i++)
		(*out)[i] = xstrdup(routes[i]);
	return 0;
}

/* A multiplier as stored: more than 0, at most 1000x. */
static int check_multiplier(int64_t ppm, char **err)
{
	if (ppm <= 0 || ppm > 1000 * (int64_t)MULTIPLIER_ONE) {
		set_err(err, "multiplier must be more than 0 and at most 1000");
		return -1;
	}
	return 0;
}

static int check_limit_list(const struct limit *lim, size_t n, char **err)
{
	if (n > LIMITS_MAX) {
		set_err(err, "at most %d limits, not %zu", LIMITS_MAX, n);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		if (lim[i].amount <= 0) {
			set_err(err, "a limit's amount must be more than 0");
			return -1;
		}
		for (size_t j = 0; j < i; j++)
			if (lim[j].kind == lim[i].kind && lim[j].window == lim[i].window) {
				set_err(err, "two %s limits per %s: give each kind and window once",
				        limit_kind_name(lim[i].kind), limit_window_name(lim[i].window));
				return -1;
			}
	}
	return 0;
}

/* An address list a key can have: 0, or -1 with *err set. */
static int check_allow_ips(const struct cidr *ips, size_t n, char **err)
{
	if (n > KEY_ALLOW_IPS_MAX) {
		set_err(err, "at most %d address ranges on a key, not %zu", KEY_ALLOW_IPS_MAX, n);
		return -1;
	}
	if (n && !ips) {
		set_err(err, "internal error: %zu address ranges given without a list", n);
		return -1;
	}
	for (size_t i = 0; i < n; i++)
		if ((ips[i].family != AF_INET || ips[i].bits > 32) &&
		    (ips[i].family != AF_INET6 || ips[i].bits > 128)) {
			set_err(err, "internal error: address range %zu is not one", i + 1);
			return -1;
		}
	return 0;
}

/* A copy of a checked list, NULL for none: taken when the change is prepared, so that
 * nothing can fail between the write and the swap in memory. */
static struct cidr *dup_allow_ips(const struct cidr *ips, size_t n)
{
	struct cidr *out = n ? xcalloc(n, sizeof(*out)) : NULL;

	if (n)
		memcpy(out, ips, n * sizeof(*out));
	return out;
}

struct key_change *keystore_change_create(struct keystore *ks, const char *name,
                                          char *const *routes, size_t n_routes, int rpm,
                                          int64_t expires, char **err)
{
	struct limit lim[1];
	size_t n = 0;

	if (check_limits(rpm, expires, err) < 0)
		return NULL;
	limits_with_rpm(lim, &n, rpm);
	return keystore_change_create_for(ks, name, routes, n_routes, expires, 0, lim, n,
	                                  MULTIPLIER_ONE, err);
}

struct key_change *keystore_change_create_for(struct keystore *ks, const char *name,
                                              char *const *routes, size_t n_routes,
                                              int64_t expires, int64_t user_id,
                                              const struct limit *lim, size_t n_lim,
                                              int64_t multiplier_ppm, char **err)
{
	struct key_change *c;
	struct key *k;
	char **copy = NULL;
	struct user *u = NULL;

	if (!ks) {
		set_err(err, "internal error: no key store");
		return NULL;
	}
	if (user_id && !(u = keystore_user_get(ks, user_id))) {
		set_err(err, "no user with id %lld", (long long)user_id);
		return NULL;
	}
	if (u && u->suspended) {
		set_err(err, "user %lld (%s) is suspended; resume it first", (long long)u->id,
		        u->name);
		return NULL;
	}
	if (key_name_check(name, err) < 0 || check_limits(0, expires, err) < 0 ||
	    check_limit_list(lim, n_lim, err) < 0 || check_multiplier(multiplier_ppm, err) < 0 ||
	    copy_routes(routes, n_routes, &copy, err) < 0)
		return NULL;
	c = change_new(ks, CHANGE_CREATE, 0);
	memcpy(c->lim, lim, n_lim * sizeof(*lim));
	c->n_lim = n_lim;
	c->limits_text = limits_text(lim, n_lim);
	c->multiplier_ppm = multiplier_ppm;
	c->user_id = user_id;
	c->fresh = k = xcalloc(1, sizeof(*k));
	k->routes = copy;
	k->n_routes = n_routes;
	if (key_generate(c->secret) < 0) {
		set_err(err, "the random number generator failed; no key was created");
		keystore_change_free(c);
		return NULL;
	}
	k->name = xstrdup(name);
	memcpy(k->display, c->secret, KEY_DISPLAY_LEN);
	k->display[KEY_DISPLAY_LEN] = '\0';
	key_hash(c->secret, KEY_SECRET_LEN, k->hash);
	k->created = (int64_t)time(NULL);
	k->expires = expires;
	k->rpm = rpm_of(lim, n_lim);
	k->user_id = user_id;
	k->user = u;
	k->multiplier_ppm = multiplier_ppm;
	spend_account_init(&k->acct);
	spend_account_set_limits(&k->acct, lim, n_lim, k->created);
	c->routes_text = routes_join(k->routes, k->n_routes);
	return c;
}

int keystore_change_create_allow_ips(struct key_change *c, const struct cidr *ips, size_t n,
                                     char **err)
{
	if (!c || c->kind != CHANGE_CREATE || !c->fresh) {
		set_err(err, "internal error: address ranges for a change that creates no key");
		return -1;
	}
	if (check_allow_ips(ips, n, err) < 0)
		return -1;
	free(c->fresh->allow_ips);
	c->fresh->allow_ips = dup_allow_ips(ips, n);
	c->fresh->n_allow_ips = n;
	free(c->allow_ips_text);
	c->allow_ips_text = allow_ips_join(ips, n);
	return 0;
}

struct key_change *keystore_change_revoke(struct keystore *ks, int64_t id, char **err)
{
	struct key_change *c;

	if (!keystore_get(ks, id)) {
		set_err(err, "no key with id %lld", (long long)id);
		return NULL;
	}
	c = change_new(ks, CHANGE_REVOKE, id);
	c->when = (int64_t)time(NULL);
	if (c->when <= 0)
		c->when = 1;
	return c;
}

/* The key that update and rotate may change: it exists and is not revoked. Revocation is
 * final, so changing a revoked key could only suggest otherwise. */
static struct key *changeable_key(struct keystore *ks, int64_t id, const char *what, char **err)
{
	struct key *k = keystore_get(ks, id);

	if (!k)
		set_err(err, "no key with id %lld", (long long)id);
	else if (k->revoked)
		set_err(err, "key %lld is revoked and cannot be %s; create a new key instead",
		        (long long)id, what);
	return k && !k->revoked ? k : NULL;
}

struct key_change *keystore_change_update(struct keystore *ks, int64_t id,
                                          const struct key_changes *ch, char **err)
{
	struct key_change *c;
	char **copy = NULL;

	if (!ks || !ch) {
		set_err(err, "internal error: keystore_update called without a store or changes");
		return NULL;
	}
	struct key *k;

	if (!(k = changeable_key(ks, id, "changed", err)) ||
	    check_limits(ch->set & KEY_CHANGE_RPM ? ch->rpm : 0,
	                 ch->set & KEY_CHANGE_EXPIRES ? ch->expires : 0, err) < 0 ||
	    ((ch->set & KEY_CHANGE_LIMITS) && check_limit_list(ch->lim, ch->n_lim, err) < 0) ||
	    ((ch->set & KEY_CHANGE_MULTIPLIER) && check_multiplier(ch->multiplier_ppm, err) < 0) ||
	    ((ch->set & KEY_CHANGE_ALLOW_IPS) &&
	     check_allow_ips(ch->allow_ips, ch->n_allow_ips, err) < 0) ||
	    ((ch->set & KEY_CHANGE_ROUTES) && copy_routes(ch->routes, ch->n_routes, &copy, err) < 0))
		return NULL;
	c = change_new(ks, CHANGE_UPDATE, id);
	c->set = ch->set & (KEY_CHANGE_ROUTES | KEY_CHANGE_RPM | KEY_CHANGE_EXPIRES |
	                    KEY_CHANGE_LIMITS | KEY_CHANGE_MULTIPLIER | KEY_CHANGE_ALLOW_IPS);
	if (c->set & KEY_CHANGE_ALLOW_IPS) {
		c->allow_ips = dup_allow_ips(ch->allow_ips, ch->n_allow_ips);
		c->n_allow_ips = ch->n_allow_ips;
		c->allow_ips_text = allow_ips_join(ch->allow_ips, ch->n_allow_ips);
	}
	c->expires = ch->expires;
	c->multiplier_ppm = ch->multiplier_ppm;
	/* rpm is the requests/min limit: both become one new list, stored whole */
	if (c->set & (KEY_CHANGE_LIMITS | KEY_CHANGE_RPM)) {
		if (c->set & KEY_CHANGE_LIMITS) {
			memcpy(c->lim, ch->lim, ch->n_lim * sizeof(*ch->lim));
			c->n_lim = ch->n_lim;
		} else {
			memcpy(c->lim, k->acct.lim, k->acct.n_lim * sizeof(*c->lim));
			c->n_lim = k->acct.n_lim;
		}
		if (c->set & KEY_CHANGE_RPM)
			limits_with_rpm(c->lim, &c->n_lim, ch->rpm);
		c->set |= KEY_CHANGE_LIMITS;
		c->limits_text = limits_text(c->lim, c->n_lim);
	}
	c->rpm = rpm_of(c->lim, c->n_lim);
	if (c->set & KEY_CHANGE_ROUTES) {
		c->routes = copy;
		c->n_routes = ch->n_routes;
		c->routes_text = routes_join(copy, ch->n_routes);
	}
	return c;
}

struct key_change *keystore_change_rotate(struct keystore *ks, int64_t id, char **err)
{
	struct key_change *c;

	if (!changeable_key(ks, id, "rotated", err))
		return NULL;
	c = change_new(ks, CHANGE_ROTATE, id);
	if (key_generate(c->secret) < 0) {
		set_err(err, "the random number generator failed; key %lld keeps its secret",
		        (long long)id);
		keystore_change_free(c);
		return NULL;
	}
	memcpy(c->display, c->secret, KEY_DISPLAY_LEN);
	c->display[KEY_DISPLAY_LEN] = '\0';
	key_hash(c->secret, KEY_SECRET_LEN, c->hash);
	return c;
}

struct key_change *keystore_change_route_state(struct keystore *ks, const char *route,
                                               bool enabled, char **err)
{
	struct key_change *c;

	if (!ks) {
		set_err(err, "internal error: no key store");
		return NULL;
	}
	if (check_route_name(route, err) < 0)
		return NULL;
	c = change_new(ks, CHANGE_ROUTE, 0);
	c->route = xstrdup(route);
	c->enabled = enabled;
	c->when = (int64_t)time(NULL);
	return c;
}

/* Upstream URLs are written by the route loader, which refuses credentials in them; here
 * they only need to be something a row can hold and a log line can show. */
static int check_target_url(const char *url, char **err)
{
	size_t len = url ? strlen(url) : 0;

	if (len == 0 || len > TARGET_URL_MAX) {
		set_err(err, "upstream URL must be 1 to %d bytes long", TARGET_URL_MAX);
		return -1;
	}
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)url[i] < 0x20 || url[i] == 0x7f) {
			set_err(err, "upstream URL must not contain control characters");
			return -1;
		}
	return 0;
}

struct key_change *keystore_change_target_state(struct keystore *ks, const char *route,
                                                const char *url, bool drained, char **err)
{
	struct key_change *c;

	if (!ks) {
		set_err(err, "internal error: no key store");
		return NULL;
	}
	if (check_route_name(route, err) < 0 || check_target_url(url, err) < 0)
		return NULL;
	c = change_new(ks, CHANGE_TARGET, 0);
	c->route = xstrdup(route);
	c->url = xstrdup(url);
	c->drained = drained;
	c->when = (int64_t)time(NULL);
	return c;
}

struct key_change *keystore_change_user_create(struct keystore *ks, const char *name,
                                               bool balance_kept, int64_t credit,
                                               int64_t multiplier_ppm, const struct limit *lim,
                                               size_t n_lim, char **err)
{
	struct key_change *c;
	struct user *u;

	if (!ks) {
		set_err(err, "internal error: no key store");
		return NULL;
	}
	if (user_name_check(name, err) < 0 || check_limit_list(lim, n_lim, err) < 0 ||
	    check_multiplier(multiplier_ppm, err) < 0)
		return NULL;
	for (size_t i = 0; i < ks->n_users; i++)
		if (strcmp(ks->users[i]->name, name) == 0) {
			set_err(err, "there is a user named \"%s\" already (id %lld)", name,
			        (long long)ks->users[i]->id);
			return NULL;
		}
	if (credit < 0) {
		set_err(err, "a new user's balance must not be negative");
		return NULL;
	}
	c = change_new(ks, CHANGE_USER_CREATE, 0);
	c->fresh_user = u = xcalloc(1, sizeof(*u));
	u->name = xstrdup(name);
	u->created = (int64_t)time(NULL);
	u->multiplier_ppm = multiplier_ppm;
	u->bal.kept = balance_kept;
	u->bal.credit = balance_kept ? credit : 0;
	spend_account_init(&u->acct);
	spend_account_set_limits(&u->acct, lim, n_lim, u->created);
	c->limits_text = limits_text(lim, n_lim);
	return c;
}

static struct user *known_user(struct keystore *ks, int64_t id, char **err)
{
	struct user *u = keystore_user_get(ks, id);

	if (!u)
		set_err(err, "no user with id %lld", (long long)id);
	return u;
}

struct key_change *keystore_change_user_update(struct keystore *ks, int64_t id,
                                               const struct user_changes *ch, char **err)
{
	struct key_change *c;

	if (!ks || !ch) {
		set_err(err, "internal error: user update without a store or changes");
		return NULL;
	}
	if (!known_user(ks, id, err) ||
	    ((ch->set & USER_CHANGE_LIMITS) && check_limit_list(ch->lim, ch->n_lim, err) < 0) ||
	    ((ch->set & USER_CHANGE_MULTIPLIER) && check_multiplier(ch->multiplier_ppm, err) < 0))
		return NULL;
	c = change_new(ks, CHANGE_USER_UPDATE, 0);
	c->user_id = id;
	c->set = ch->set & (USER_CHANGE_LIMITS | USER_CHANGE_MULTIPLIER | USER_CHANGE_SUSPENDED);
	if (c->set & USER_CHANGE_LIMITS) {
		memcpy(c->lim, ch->lim, ch->n_lim * sizeof(*ch->lim));
		c->n_lim = ch->n_lim;
		c->limits_text = limits_text(c->lim, c->n_lim);
	}
	c->multiplier_ppm = ch->multiplier_ppm;
	c->suspended = ch->suspended;
	return c;
}

struct key_change *keystore_change_user_topup(struct keystore *ks, int64_t id, int64_t amount,
                                              char **err)
{
	struct key_change *c;
	const int64_t cap = (int64_t)1000000000 * 1000000000;   /* $1e9 in nano-USD */
	struct user *u;

	if (!ks || !(u = known_user(ks, id, err)))
		return NULL;
	if (amount == 0 || amount > cap || amount < -cap) {
		set_err(err, "a top-up must be a non-zero amount of at most 1000000000 USD");
		return NULL;
	}
	if (u->bal.credit > cap || u->bal.credit < -cap) {
		set_err(err, "user %lld's credit is at its limit of 1000000000 USD", (long long)id);
		return NULL;
	}
	c = change_new(ks, CHANGE_USER_TOPUP, 0);
	c->user_id = id;
	c->amount = amount;
	c->when = (int64_t)time(NULL);
	return c;
}

int64_t keystore_change_user_id(const struct key_change *c)
{
	return c && (c->kind == CHANGE_USER_CREATE || c->kind == CHANGE_USER_UPDATE ||
	             c->kind == CHANGE_USER_TOPUP) ? c->user_id : 0;
}

/* Changes that name no key: a route's or an upstream's state, a user. */
static bool change_of_state(const struct key_change *c)
{
	return c->kind == CHANGE_ROUTE || c->kind == CHANGE_TARGET ||
	       c->kind == CHANGE_USER_CREATE || c->kind == CHANGE_USER_UPDATE ||
	       c->kind == CHANGE_USER_TOPUP;
}

/* A top-up is two statements (the ledger row, the credit) in one transaction. */
static int write_topup(struct key_change *c)
{
	struct keystore *ks = c->ks;
	int rc = SQLITE_ERROR;

	if (sqlite3_exec(ks->wdb, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
		return sqlite3_errcode(ks->wdb);
	sqlite3_bind_int64(ks->st_topup, 1, c->amount);
	sqlite3_bind_int64(ks->st_topup, 2, c->when);
	sqlite3_bind_int64(ks->st_topup, 9, c->user_id);
	sqlite3_bind_int64(ks->st_credit, 1, c->amount);
	sqlite3_bind_int64(ks->st_credit, 9, c->user_id);
	if (sqlite3_step(ks->st_topup) == SQLITE_DONE && sqlite3_step(ks->st_credit) == SQLITE_DONE)
		rc = sqlite3_changes(ks->wdb) == 1 ? SQLITE_DONE : SQLITE_NOTFOUND;
	sqlite3_reset(ks->st_topup);
	sqlite3_clear_bindings(ks->st_topup);
	sqlite3_reset(ks->st_credit);
	sqlite3_clear_bindings(ks->st_credit);
	if (rc == SQLITE_DONE && sqlite3_exec(ks->wdb, "COMMIT", NULL, NULL, NULL) == SQLITE_OK)
		return SQLITE_DONE;
	sqlite3_exec(ks->wdb, "ROLLBACK", NULL, NULL, NULL);
	return rc == SQLITE_DONE ? SQLITE_ERROR : rc;
}

void keystore_change_write(struct key_change *c)
{
	struct keystore *ks = c->ks;
	sqlite3 *db = ks->wdb;
	sqlite3_stmt *st;
	const struct key *k = c->fresh;
	int64_t wait = c->deadline - mono_ms();
	int rc;

	/* The wait for another process's lock counts from when the change was prepared, so
	 * that changes queued behind a locked store are each answered within BUSY_TIMEOUT_MS
	 * of their command (the client gives up after 10 s), not one after the other. */
	sqlite3_busy_timeout(db, wait > 0 ? (int)wait : 0);
	switch (c->kind) {
	case CHANGE_CREATE:
		st = ks->st_insert;
		sqlite3_bind_text(st, 1, k->name, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, k->display, -1, SQLITE_STATIC);
		sqlite3_bind_blob(st, 3, k->hash, KEY_HASH_LEN, SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, k->created);
		sqlite3_bind_int64(st, 5, k->expires);
		sqlite3_bind_text(st, 6, c->routes_text, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 7, k->rpm);
		if (c->user_id)
			sqlite3_bind_int64(st, 10, c->user_id);
		sqlite3_bind_text(st, 11, c->limits_text, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 12, c->multiplier_ppm);
		sqlite3_bind_text(st, 13, c->allow_ips_text ? c->allow_ips_text : "", -1,
		                  SQLITE_STATIC);
		break;
	case CHANGE_USER_CREATE:
		st = ks->st_user_insert;
		sqlite3_bind_text(st, 1, c->fresh_user->name, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, c->fresh_user->created);
		sqlite3_bind_int(st, 3, c->fresh_user->bal.kept);
		sqlite3_bind_int64(st, 4, c->fresh_user->bal.credit);
		sqlite3_bind_int64(st, 5, c->fresh_user->multiplier_ppm);
		sqlite3_bind_text(st, 6, c->limits_text, -1, SQLITE_STATIC);
		break;
	case CHANGE_USER_UPDATE:
		st = ks->st_user_update;
		sqlite3_bind_int(st, 1, !!(c->set & USER_CHANGE_LIMITS));
		sqlite3_bind_text(st, 2, c->limits_text ? c->limits_text : "", -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 3, !!(c->set & USER_CHANGE_MULTIPLIER));
		sqlite3_bind_int64(st, 4, c->multiplier_ppm);
		sqlite3_bind_int(st, 5, !!(c->set & USER_CHANGE_SUSPENDED));
		sqlite3_bind_int(st, 6, c->suspended);
		sqlite3_bind_int64(st, 9, c->user_id);
		break;
	case CHANGE_USER_TOPUP:
		st = NULL;
		break;
	case CHANGE_ROUTE:
		st = ks->st_rs_set;
		sqlite3_bind_text(st, 1, c->route, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 2, c->enabled ? 1 : 0);
		sqlite3_bind_int64(st, 3, c->when);
		break;
	case CHANGE_TARGET:
		st = ks->st_ts_set;
		sqlite3_bind_text(st, 1, c->route, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, c->url, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 3, c->drained ? 1 : 0);
		sqlite3_bind_int64(st, 4, c->when);
		break;
	case CHANGE_REVOKE:
		st = ks->st_revoke;
		sqlite3_bind_int64(st, 1, c->when);
		break;
	case CHANGE_UPDATE:
		st = ks->st_update;
		sqlite3_bind_int(st, 1, !!(c->set & KEY_CHANGE_ROUTES));
		sqlite3_bind_text(st, 2, c->routes_text, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 3, !!(c->set & KEY_CHANGE_LIMITS));
		sqlite3_bind_int(st, 4, c->rpm);
		sqlite3_bind_int(st, 5, !!(c->set & KEY_CHANGE_EXPIRES));
		sqlite3_bind_int64(st, 6, c->expires);
		sqlite3_bind_text(st, 7, c->limits_text ? c->limits_text : "", -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 10, !!(c->set & KEY_CHANGE_MULTIPLIER));
		sqlite3_bind_int64(st, 11, c->multiplier_ppm);
		sqlite3_bind_int(st, 12, !!(c->set & KEY_CHANGE_ALLOW_IPS));
		sqlite3_bind_text(st, 13, c->allow_ips_text ? c->allow_ips_text : "", -1,
		                  SQLITE_STATIC);
		break;
	case CHANGE_ROTATE:
	default:
		st = ks->st_rotate;
		sqlite3_bind_blob(st, 1, c->hash, KEY_HASH_LEN, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, c->display, -1, SQLITE_STATIC);
		break;
	}
	if (c->kind != CHANGE_CREATE && !change_of_state(c))
		sqlite3_bind_int64(st, 9, c->id);
	rc = st ? sqlite3_step(st) : write_topup(c);
	if (rc != SQLITE_DONE) {
		if (c->kind == CHANGE_USER_CREATE || c->kind == CHANGE_USER_UPDATE ||
		    c->kind == CHANGE_USER_TOPUP)
			set_err(&c->err, "cannot %s in %s: %s%s",
			        c->kind == CHANGE_USER_CREATE ? "store the new user"
			        : c->kind == CHANGE_USER_UPDATE ? "change the user" : "top the user up",
			        ks->path, rc == SQLITE_NOTFOUND ? "the user is not in the store"
			        : sqlite3_errmsg(db), busy_hint(db));
		else if (c->kind == CHANGE_CREATE)
			set_err(&c->err, "cannot store the new key in %s: %s%s", ks->path,
			        sqlite3_errmsg(db), busy_hint(db));
		else if (c->kind == CHANGE_ROUTE)
			set_err(&c->err, "cannot save the state of route %s in %s: %s%s", c->route,
			        ks->path, sqlite3_errmsg(db), busy_hint(db));
		else if (c->kind == CHANGE_TARGET)
			set_err(&c->err, "cannot save the state of upstream %s of route %s in %s: "
			        "%s%s", c->url, c->route, ks->path, sqlite3_errmsg(db), busy_hint(db));
		else
			set_err(&c->err, "cannot %s key %lld in %s: %s%s%s",
			        c->kind == CHANGE_REVOKE ? "revoke" : c->kind == CHANGE_UPDATE ? "update"
			        : "store the new secret of", (long long)c->id, ks->path,
			        sqlite3_errmsg(db), busy_hint(db),
			        c->kind == CHANGE_ROTATE ? "; the old secret still works" : "");
	} else if (c->kind != CHANGE_CREATE && !change_of_state(c) &&
	           sqlite3_changes(db) == 0) {
		/* Update and rotate change the row only while the key is not revoked, which a
		 * change written since this one was prepared may have done. */
		set_err(&c->err, c->kind == CHANGE_REVOKE
		        ? "key %lld is no longer in %s; was the database changed by hand?"
		        : "key %lld was revoked meanwhile (or is no longer in %s); nothing was changed",
		        (long long)c->id, ks->path);
	} else if (c->kind == CHANGE_USER_UPDATE && sqlite3_changes(db) == 0) {
		set_err(&c->err, "user %lld is no longer in %s; was the database changed by hand?",
		        (long long)c->user_id, ks->path);
	} else {
		if (c->kind == CHANGE_CREATE)
			c->id = sqlite3_last_insert_rowid(db);
		if (c->kind == CHANGE_USER_CREATE)
			c->user_id = sqlite3_last_insert_rowid(db);
		c->written = true;
	}
	if (st) {
		sqlite3_reset(st);
		sqlite3_clear_bindings(st);
	}
}

int keystore_change_apply(struct key_change *c, struct key **out, char *secret_out, char **err)
{
	struct keystore *ks = c->ks;
	struct key *k = NULL;
	int rc = -1;

	if (!c->written) {
		if (c->err) {
			*err = c->err;
			c->err = NULL;
		} else {
			set_err(err, "the change was not written: fastgated is stopping");
		}
		goto done;
	}
	if (c->kind == CHANGE_CREATE) {
		k = c->fresh;
		c->fresh = NULL;
		k->id = c->id;
		index_add(ks, k);
	} else if (c->kind == CHANGE_USER_CREATE) {
		c->fresh_user->id = c->user_id;
		user_index_add(ks, c->fresh_user);
		c->fresh_user = NULL;
	} else if ((c->kind == CHANGE_USER_UPDATE || c->kind == CHANGE_USER_TOPUP) &&
	           !keystore_user_get(ks, c->user_id)) {
		set_err(err, "user %lld vanished from memory", (long long)c->user_id);
		goto done;
	} else if (!change_of_state(c) && !(k = keystore_get(ks, c->id))) {
		set_err(err, "key %lld vanished from memory", (long long)c->id);  /* keys stay */
		goto done;
	}
	switch (c->kind) {
	case CHANGE_REVOKE:
		if (!k->revoked)       /* the store kept the first revocation time too */
			k->revoked = c->when;
		break;
	case CHANGE_UPDATE:
		if (c->set & KEY_CHANGE_ROUTES) {
			char **old = k->routes;
			size_t n_old = k->n_routes;

			k->routes = c->routes;
			k->n_routes = c->n_routes;
			c->routes = old;
			c->n_routes = n_old;       /* freed with c */
		}
		/* The window in progress stays: lowering a limit must not hand out a fresh
		 * minute. */
		if (c->set & KEY_CHANGE_LIMITS) {
			spend_account_set_limits(&k->acct, c->lim, c->n_lim, (int64_t)time(NULL));
			k->rpm = c->rpm;
		}
		if (c->set & KEY_CHANGE_MULTIPLIER)
			k->multiplier_ppm = c->multiplier_ppm;
		if (c->set & KEY_CHANGE_ALLOW_IPS) {
			struct cidr *old = k->allow_ips;

			k->allow_ips = c->allow_ips;
			k->n_allow_ips = c->n_allow_ips;
			c->allow_ips = old;        /* freed with c */
		}
		if (c->set & KEY_CHANGE_EXPIRES)
			k->expires = c->expires;
		break;
	case CHANGE_USER_UPDATE: {
		struct user *u = keystore_user_get(ks, c->user_id);

		if (c->set & USER_CHANGE_LIMITS)
			spend_account_set_limits(&u->acct, c->lim, c->n_lim, (int64_t)time(NULL));
		if (c->set & USER_CHANGE_MULTIPLIER)
			u->multiplier_ppm = c->multiplier_ppm;
		if (c->set & USER_CHANGE_SUSPENDED)
			u->suspended = c->suspended;
		break;
	}
	case CHANGE_USER_TOPUP: {
		struct user *u = keystore_user_get(ks, c->user_id);

		u->bal.kept = true;
		u->bal.credit += c->amount;
		break;
	}
	case CHANGE_ROTATE:
		/* Out under the old hash, back in under the new: from here the old secret is
		 * unknown. */
		table_remove(ks, k);
		memcpy(k->hash, c->hash, KEY_HASH_LEN);
		memcpy(k->display, c->display, sizeof(c->display));
		table_put(ks->slots, ks->nslots, k);
		break;
	default:
		break;
	}
	if (secret_out && (c->kind == CHANGE_CREATE || c->kind == CHANGE_ROTATE))
		memcpy(secret_out, c->secret, sizeof(c->secret));
	if (out)
		*out = k;
	rc = 0;
done:
	keystore_change_free(c);
	return rc;
}

/* The synchronous forms: prepare, write and apply in a row, on the calling thread. */
static int change_now(struct key_change *c, struct key **out, char *secret_out, char **err)
{
	if (!c)
		return -1;
	keystore_change_write(c);
	return keystore_change_apply(c, out, secret_out, err);
}

int keystore_create(struct keystore *ks, const char *name, char *const *routes, size_t n_routes,
                    int rpm, int64_t expires, char *secret_out, struct key **out, char **err)
{
	if (!secret_out) {
		set_err(err, "internal error: keystore_create called without a buffer");
		return -1;
	}
	return change_now(keystore_change_create(ks, name, routes, n_routes, rpm, expires, err),
	                  out, secret_out, err);
}

int keystore_revoke(struct keystore *ks, int64_t id, char **err)
{
	struct key *k = keystore_get(ks, id);

	if (k && k->revoked)       /* keep the first revocation time */
		return 0;
	return change_now(keystore_change_revoke(ks, id, err), NULL, NULL, err);
}

int keystore_update(struct keystore *ks, int64_t id, const struct key_changes *ch, char **err)
{
	return change_now(keystore_change_update(ks, id, ch, err), NULL, NULL, err);
}

int keystore_rotate(struct keystore *ks, int64_t id, char *secret_out, char **err)
{
	if (!secret_out) {
		set_err(err, "internal error: keystore_rotate called without a buffer");
		return -1;
	}
	return change_now(keystore_change_rotate(ks, id, err), NULL, secret_out, err);
}

int keystore_route_state_set(struct keystore *ks, const char *route, int enabled, char **err)
{
	return change_now(keystore_change_route_state(ks, route, enabled != 0, err), NULL, NULL,
	                  err);
}

int keystore_target_state_set(struct keystore *ks, const char *route, const char *url,
                              int drained, char **err)
{
	return change_now(keystore_change_target_state(ks, route, url, drained != 0, err), NULL,
	                  NULL, err);
}

/* ---- usage and rate limits (memory only on the request path) ---- */

/* Every loop touches keys and loop 0 takes the marks: relaxed atomics, as a second more or
 * less in last_used is all a race could cost. */
void key_touch(struct key *k, int64_t now)
{
	if (!k || now == __atomic_load_n(&k->last_used, __ATOMIC_RELAXED))
		return;
	__atomic_store_n(&k->last_used, now, __ATOMIC_RELAXED);
	__atomic_store_n(&k->usage_dirty, true, __ATOMIC_RELAXED);
}

size_t keystore_take_usage(struct keystore *ks, struct key_use **out)
{
	size_t dirty = 0, n = 0;

	*out = NULL;
	if (!ks)
		return 0;
	for (size_t i = 0; i < ks->n; i++)
		dirty += __atomic_load_n(&ks->keys[i]->usage_dirty, __ATOMIC_RELAXED);
	if (!dirty)
		return 0;
	*out = xmalloc(dirty * sizeof(**out));
	for (size_t i = 0; i < ks->n && n < dirty; i++) {
		struct key *k = ks->keys[i];

		if (!__atomic_exchange_n(&k->usage_dirty, false, __ATOMIC_RELAXED))
			continue;
		(*out)[n].id = k->id;
		(*out)[n].last_used = __atomic_load_n(&k->last_used, __ATOMIC_RELAXED);
		n++;
	}
	return n;
}

/* ---- run-time route state ---- */

int keystore_route_state_get(struct keystore *ks, const char *route)
{
	int rc = -1, step;

	if (!ks || !route)
		return -1;
	sqlite3_bind_text(ks->st_rs_get, 1, route, -1, SQLITE_STATIC);
	step = sqlite3_step(ks->st_rs_get);
	if (step == SQLITE_ROW)
		rc = sqlite3_column_int(ks->st_rs_get, 0) ? 1 : 0;
	else if (step != SQLITE_DONE)
		log_warn("key store %s: reading the state of route %s failed: %s", ks->path, route,
		         sqlite3_errmsg(ks->db));
	sqlite3_reset(ks->st_rs_get);
	sqlite3_clear_bindings(ks->st_rs_get);
	return rc;
}

int keystore_target_state_get(struct keystore *ks, const char *route, const char *url)
{
	int rc = -1, step;

	if (!ks || !route || !url)
		return -1;
	sqlite3_bind_text(ks->st_ts_get, 1, route, -1, SQLITE_STATIC);
	sqlite3_bind_text(ks->st_ts_get, 2, url, -1, SQLITE_STATIC);
	step = sqlite3_step(ks->st_ts_get);
	if (step == SQLITE_ROW)
		rc = sqlite3_column_int(ks->st_ts_get, 0) ? 1 : 0;
	else if (step != SQLITE_DONE)
		log_warn("key store %s: reading the state of upstream %s of route %s failed: %s",
		         ks->path, url, route, sqlite3_errmsg(ks->db));
	sqlite3_reset(ks->st_ts_get);
	sqlite3_clear_bindings(ks->st_ts_get);
	return rc;
}
