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
	sqlite3_stmt *st_rs_get, *st_ts_get;                      /* on db */
	sqlite3_stmt *st_insert, *st_revoke, *st_rs_set, *st_ts_set, *st_update,
	             *st_rotate;                                  /* on wdb */
	EVP_MD_CTX *md_ctx;        /* lookups reuse it: EVP_Digest allocates a context per call */
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
	free(k);
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
	                       "last_used, routes, rpm FROM keys ORDER BY id",
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
		k->rpm = sqlite3_column_int(st, 9);
		if (k->rpm < 0)
			k->rpm = 0;
		index_add(ks, k);
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

	if (migrate(ks, err) < 0 || load_keys(ks, err) < 0)
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
	            "routes, rpm) VALUES (?1, ?2, ?3, ?4, ?5, 0, 0, ?6, ?7)", err) < 0 ||
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
	            "expires = CASE WHEN ?5 THEN ?6 ELSE expires END "
	            "WHERE id = ?9 AND coalesce(revoked, 0) = 0", err) < 0 ||
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
	if (sqlite3_close(ks->wdb) != SQLITE_OK)
		log_warn("key store %s: close failed: %s", ks->path, sqlite3_errmsg(ks->wdb));
	if (sqlite3_close(ks->db) != SQLITE_OK)
		log_warn("key store %s: close failed: %s", ks->path, sqlite3_errmsg(ks->db));
	for (size_t i = 0; i < ks->n; i++)
		key_free(ks->keys[i]);
	free(ks->keys);
	free(ks->slots);
	free(ks->path);
	EVP_MD_CTX_free(ks->md_ctx);
	free(ks);
}

/* ---- lookups ---- */

struct key *keystore_lookup(struct keystore *ks, const char *secret, size_t len)
{
	unsigned char hash[KEY_HASH_LEN];
	size_t i;

	if (!ks || !ks->nslots || !key_format_valid(secret, len))
		return NULL;
	key_hash_with(ks->md_ctx, secret, len, hash);
	for (i = hash_slot(hash, ks->nslots); ks->slots[i]; i = (i + 1) & (ks->nslots - 1))
		if (CRYPTO_memcmp(ks->slots[i]->hash, hash, KEY_HASH_LEN) == 0)
			return ks->slots[i];
	return NULL;
}

struct key *keystore_lookup_memo(struct keystore *ks, const char *secret, size_t len,
                                 struct key_memo *m)
{
	struct key *k;

	if (ks && m->key && m->gen == ks->gen && m->len == len &&
	    CRYPTO_memcmp(m->secret, secret, len) == 0)
		return m->key;
	k = keystore_lookup(ks, secret, len);
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

struct key *keystore_get(struct keystore *ks, int64_t id)
{
	size_t lo = 0, hi = ks ? ks->n : 0;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (ks->keys[mid]->id == id)
			return ks->keys[mid];
		if (ks->keys[mid]->id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
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

/* Names end up in tables, CSV and JSON (jansson wants valid UTF-8): printable text only. */
int key_name_check(const char *name, char **err)
{
	const unsigned char *s = (const unsigned char *)name;
	size_t len, chars = 0;

	if (!name || !*name) {
		set_err(err, "key name must not be empty");
		return -1;
	}
	len = strlen(name);
	for (size_t i = 0; i < len; chars++) {
		uint32_t cp;
		size_t n = utf8_decode(s + i, len - i, &cp);

		if (!n) {
			set_err(err, "key name is not valid UTF-8 (byte %zu)", i + 1);
			return -1;
		}
		if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) {
			set_err(err, "key name must not contain control characters (character %zu)",
			        chars + 1);
			return -1;
		}
		i += n;
	}
	if (chars > KEY_NAME_MAX) {
		set_err(err, "key name is %zu characters long; the limit is %d", chars,
		        KEY_NAME_MAX);
		return -1;
	}
	if (s[0] == ' ' || s[len - 1] == ' ') {
		set_err(err, "key name must not start or end with a space");
		return -1;
	}
	return 0;
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
                   CHANGE_TARGET };

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
	free_routes(c->routes, c->n_routes);
	free(c->routes_text);
	free(c->route);
	free(c->url);
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

struct key_change *keystore_change_create(struct keystore *ks, const char *name,
                                          char *const *routes, size_t n_routes, int rpm,
                                          int64_t expires, char **err)
{
	struct key_change *c;
	struct key *k;
	char **copy = NULL;

	if (!ks) {
		set_err(err, "internal error: no key store");
		return NULL;
	}
	if (key_name_check(name, err) < 0 || check_limits(rpm, expires, err) < 0 ||
	    copy_routes(routes, n_routes, &copy, err) < 0)
		return NULL;
	c = change_new(ks, CHANGE_CREATE, 0);
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
	k->rpm = rpm;
	c->routes_text = routes_join(k->routes, k->n_routes);
	return c;
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
	if (!changeable_key(ks, id, "changed", err) ||
	    check_limits(ch->set & KEY_CHANGE_RPM ? ch->rpm : 0,
	                 ch->set & KEY_CHANGE_EXPIRES ? ch->expires : 0, err) < 0 ||
	    ((ch->set & KEY_CHANGE_ROUTES) && copy_routes(ch->routes, ch->n_routes, &copy, err) < 0))
		return NULL;
	c = change_new(ks, CHANGE_UPDATE, id);
	c->set = ch->set & (KEY_CHANGE_ROUTES | KEY_CHANGE_RPM | KEY_CHANGE_EXPIRES);
	c->rpm = ch->rpm;
	c->expires = ch->expires;
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

/* Changes that name no key: a route's or an upstream's state. */
static bool change_of_state(const struct key_change *c)
{
	return c->kind == CHANGE_ROUTE || c->kind == CHANGE_TARGET;
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
		sqlite3_bind_int(st, 3, !!(c->set & KEY_CHANGE_RPM));
		sqlite3_bind_int(st, 4, c->rpm);
		sqlite3_bind_int(st, 5, !!(c->set & KEY_CHANGE_EXPIRES));
		sqlite3_bind_int64(st, 6, c->expires);
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
	rc = sqlite3_step(st);
	if (rc != SQLITE_DONE) {
		if (c->kind == CHANGE_CREATE)
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
	} else {
		if (c->kind == CHANGE_CREATE)
			c->id = sqlite3_last_insert_rowid(db);
		c->written = true;
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
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
		if (c->set & KEY_CHANGE_RPM)
			k->rpm = c->rpm;
		if (c->set & KEY_CHANGE_EXPIRES)
			k->expires = c->expires;
		break;
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

void key_touch(struct key *k, int64_t now)
{
	if (!k || now == k->last_used)
		return;
	k->last_used = now;
	k->usage_dirty = true;
}

size_t keystore_take_usage(struct keystore *ks, struct key_use **out)
{
	size_t dirty = 0, n = 0;

	*out = NULL;
	if (!ks)
		return 0;
	for (size_t i = 0; i < ks->n; i++)
		dirty += ks->keys[i]->usage_dirty;
	if (!dirty)
		return 0;
	*out = xmalloc(dirty * sizeof(**out));
	for (size_t i = 0; i < ks->n && n < dirty; i++) {
		struct key *k = ks->keys[i];

		if (!k->usage_dirty)
			continue;
		(*out)[n].id = k->id;
		(*out)[n].last_used = k->last_used;
		n++;
		k->usage_dirty = false;
	}
	return n;
}

/* Fixed window that starts at the first request after the previous one ended: cheap, one
 * pair of fields per key, and Retry-After is exact for it. Bursts of up to 2*rpm across a
 * window boundary are possible; that is the accepted price. */
int key_rate_check(struct key *k, int64_t now)
{
	if (!k || k->rpm <= 0)
		return 0;
	if (k->window_count == 0 || now >= k->window_start + KEY_RATE_WINDOW ||
	    now < k->window_start) {             /* the clock went back: start afresh */
		k->window_start = now;
		k->window_count = 0;
	}
	if (k->window_count < k->rpm) {
		k->window_count++;
		return 0;
	}
	return (int)(k->window_start + KEY_RATE_WINDOW - now);
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
