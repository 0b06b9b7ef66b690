/* Unit tests for audit.c: the writer (every record lands once, in order, from one or
 * several threads; as blocks of rows, schema version 10), what happens while the database
 * cannot be written (memory, then the spool, then recovery in order; replay at the next
 * open, into the row table), schema migrations, retention, the read side (filters, order,
 * limits and the windows they are read in, audit_get) and the CSV/JSON formats. Order is
 * checked as users see it, through the export (started_at, then the order of writing):
 * the `audit` view has no rowid. The "database cannot be written" cases hold SQLite's
 * write lock from a second connection: the tests may run as root, for whom a chmod 0444
 * changes nothing. Every database lives in its own directory under /tmp, removed at the
 * end of the test. */
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "audit.h"
#include "reqid.h"
#include "util.h"

static struct reqid_gen test_ids;
#include "unit.h"

struct tmpdb {
	char dir[64];
	char path[128];
	char spool[160];
};

static void tmpdb_make(struct tmpdb *t)
{
	snprintf(t->dir, sizeof(t->dir), "/tmp/fg_test_audit_XXXXXX");
	if (!mkdtemp(t->dir)) {
		perror("mkdtemp");
		abort();
	}
	snprintf(t->path, sizeof(t->path), "%s/audit.db", t->dir);
	snprintf(t->spool, sizeof(t->spool), "%s.spool", t->path);
}

static void tmpdb_remove(struct tmpdb *t)
{
	DIR *d = opendir(t->dir);
	struct dirent *e;
	char p[400];

	while (d && (e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		snprintf(p, sizeof(p), "%s/%s", t->dir, e->d_name);
		unlink(p);
	}
	if (d)
		closedir(d);
	rmdir(t->dir);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static char *dup_s(const char *s)
{
	char *p = strdup(s);
	if (!p)
		abort();
	return p;
}

/* The attempts text make_record gives row i, into buf; NULL (nothing forwarded) for every
 * third row. */
static const char *attempts_for(int i, char *buf, size_t cap)
{
	if (i % 3 == 0)
		return NULL;
	snprintf(buf, cap, "http://10.0.0.5:8000=connect:%d;http://10.0.0.6:8000=ok:%d",
	         i % 50, 100 + i);
	return buf;
}

/* The cache and reasoning token counts make_record gives row i: unknown (-1) in some rows,
 * 0 (known to be none, which is not unknown) in others. */
static int64_t cached_for(int i) { return i % 4 == 0 ? -1 : i % 4 == 1 ? 0 : 1000 + i; }
static int64_t cache_write_for(int i) { return i % 5 == 0 ? -1 : 2 * i; }
static int64_t reasoning_for(int i) { return i % 3 == 0 ? -1 : i % 3 == 1 ? 300 + i : 0; }

/* The spend columns make_record gives row i: no user in some rows; no cost (-1) in every
 * sixth, a cost with nine significant decimals in the others (more than a double keeps at
 * ten dollars and up); rows without a cost are unpriced or not charged. */
static int64_t user_for(int i) { return i % 5 == 0 ? 0 : 100 + i % 2; }
static int64_t cost_for(int i) { return i % 6 == 0 ? -1 : (int64_t)i * 1000000007LL + 123450; }
static const char *price_version_for(int i) { return i % 3 == 0 ? NULL : "2026-12-01.1"; }
static bool estimated_for(int i) { return i % 7 == 3; }
static bool billed_for(int i) { return i % 6 != 0 && i % 4 != 2; }
static bool unpriced_for(int i) { return i % 12 == 6; }

/* A record whose every field is derived from `i`, so any row can be checked alone. */
static struct audit_record *make_record(const char *prefix, int i, double started_at)
{
	struct audit_record *r = audit_record_new();
	char buf[64];

	snprintf(buf, sizeof(buf), "%s%06d", prefix, i);
	r->request_id = dup_s(buf);
	r->started_at = started_at;
	r->key_id = 1 + i % 3;
	snprintf(buf, sizeof(buf), "key-%d", 1 + i % 3);
	r->key_name = dup_s(buf);
	r->client_ip = dup_s("127.0.0.1");
	r->method = dup_s("POST");
	r->path = dup_s("/v1/chat/completions");
	r->route = dup_s(i % 2 ? "qwen3" : "gpt");
	r->upstream = dup_s("http://10.0.0.5:3398/v1/chat/completions");
	r->status = 200;
	r->latency_ms = 10.0 + i * 0.001;
	r->ttfb_ms = 1.25;
	r->is_stream = i % 2;
	r->chunks = i % 7;
	r->bytes_in = 100 + i;
	r->bytes_out = 1000 + i;
	r->model = dup_s("Qwen3-8B");
	r->prompt_tokens = 11;
	r->completion_tokens = 22;
	r->cached_tokens = cached_for(i);
	r->cache_write_tokens = cache_write_for(i);
	r->reasoning_tokens = reasoning_for(i);
	if (attempts_for(i, buf, sizeof(buf)))
		r->attempts = dup_s(buf);
	if (i % 4 == 1) {                     /* the upstream's own id, when it sent one */
		snprintf(buf, sizeof(buf), "req_%06d", i);
		r->upstream_request_id = dup_s(buf);
	}
	r->user_id = user_for(i);
	r->cost_nano = cost_for(i);
	if (price_version_for(i))
		r->price_version = dup_s(price_version_for(i));
	r->estimated = estimated_for(i);
	r->billed = billed_for(i);
	r->unpriced = unpriced_for(i);
	return r;
}

static struct audit *open_ok(const char *path, const struct audit_options *opt)
{
	char *err = NULL;
	struct audit *a = audit_open(path, opt, &err);

	if (!a)
		fprintf(stderr, "  audit_open(%s): %s\n", path, err ? err : "(no message)");
	CHECK(a != NULL);
	CHECK(err == NULL);
	free(err);
	return a;
}

/* Wait until the queue depth is `want`; false after timeout_s. */
static bool wait_depth(struct audit *a, size_t want, double timeout_s)
{
	double until = mono_s() + timeout_s;

	while (audit_queue_depth(a) != want) {
		if (mono_s() > until)
			return false;
		sleep_ms(5);
	}
	return true;
}

static sqlite3 *raw_open(const char *path)
{
	sqlite3 *db = NULL;

	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
		fprintf(stderr, "  sqlite3_open(%s): %s\n", path, db ? sqlite3_errmsg(db) : "?");
		abort();
	}
	sqlite3_busy_timeout(db, 5000);
	return db;
}

static long long raw_int(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *st = NULL;
	long long v = -1;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	else
		fprintf(stderr, "  %s: %s\n", sql, sqlite3_errmsg(db));
	sqlite3_finalize(st);
	return v;
}

static long long db_int(const char *path, const char *sql)
{
	sqlite3 *db = raw_open(path);
	long long v = raw_int(db, sql);
	sqlite3_close(db);
	return v;
}

/* Hold the database's write lock from another connection, as an operator's sqlite3 shell
 * or a stuck process would. */
static sqlite3 *lock_db(const char *path)
{
	sqlite3 *db = raw_open(path);
	if (sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, NULL) != SQLITE_OK) {
		fprintf(stderr, "  BEGIN EXCLUSIVE: %s\n", sqlite3_errmsg(db));
		abort();
	}
	return db;
}

static void unlock_db(sqlite3 *db)
{
	CHECK_INT(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
}

/* Release a lock_db() taken before records were submitted, so that the writer most likely
 * commits them all in one batch: an attempt it began with part of them gives up within
 * its busy timeout (the callers' 20 ms) while the lock is held, and each retry takes every
 * queued record first; so the lock is held 100 ms past the last submit. Not certain: a
 * writer in SCHED_IDLE on a busy machine may take part of the records and not run again
 * until after the unlock. Callers that need one batch check that they got it. */
static void unlock_db_as_one_batch(sqlite3 *db)
{
	sleep_ms(100);
	unlock_db(db);
}

/* The text of the first column of the first row of sql, malloc'd; NULL if none (or NULL). */
static char *db_text(const char *path, const char *sql)
{
	sqlite3 *db = raw_open(path);
	sqlite3_stmt *st = NULL;
	char *v = NULL;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW) {
		if (sqlite3_column_text(st, 0))
			v = dup_s((const char *)sqlite3_column_text(st, 0));
	} else {
		fprintf(stderr, "  %s: %s\n", sql, sqlite3_errmsg(db));
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

/* Check that sql's text is want (and free it). */
#define CHECK_DB_TEXT(path, sql, want) do { char *v_ = db_text(path, sql); \
	CHECK_STR(v_, want); free(v_); } while (0)

/* n rows inserted by hand (as sqlite3 or an older build would) through the `audit` view,
 * which puts them into the row table in one statement, rowids in order: prefix000000..,
 * started at t0 + i * step, key 1 + i % 3, user 100 + i % 2, 10 + 5 tokens, costing
 * 1000 + i nano-USD, billed or not. */
static void hand_rows(const char *path, const char *prefix, int n, double t0, double step,
                      bool billed)
{
	sqlite3 *db = raw_open(path);
	char sql[1024];

	snprintf(sql, sizeof(sql),
	         "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < %d)"
	         " INSERT INTO audit (request_id, started_at, key_id, user_id, status, is_stream,"
	         " prompt_tokens, completion_tokens, cost_nano, billed)"
	         " SELECT printf('%s%%06d', i), %.17g + i * %.17g, 1 + i %% 3, 100 + i %% 2, 200, 0,"
	         " 10, 5, 1000 + i, %d FROM c ORDER BY i", n - 1, prefix, t0, step, billed ? 1 : 0);
	if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK) {
		fprintf(stderr, "  hand_rows: %s\n", sqlite3_errmsg(db));
		CHECK(0);
	}
	sqlite3_close(db);
}

/* Blocks that break the format (auditblock.h): rows spanning more than ABLOCK_SPAN_S (1 s);
 * n, first_started or last_started not what the rows say; rows not in started_at order
 * inside the block; a row array without the 34 columns. Returns how many (0: none). */
static long long check_blocks(const char *path)
{
	long long bad = db_int(path,
		"SELECT (SELECT count(*) FROM audit_block b WHERE last_started - first_started > 1.0"
		"  OR n != json_array_length(rows)"
		"  OR first_started != (SELECT min(json_extract(j.value, '$[1]'))"
		"   FROM json_each(b.rows) j)"
		"  OR last_started != (SELECT max(json_extract(j.value, '$[1]'))"
		"   FROM json_each(b.rows) j))"
		" + (SELECT count(*) FROM (SELECT json_extract(j.value, '$[1]') AS t,"
		"  lag(json_extract(j.value, '$[1]')) OVER (PARTITION BY b.id ORDER BY j.key) AS p"
		"  FROM audit_block b, json_each(b.rows) j) WHERE t < p)"
		" + (SELECT count(*) FROM audit_block b, json_each(b.rows) j"
		"  WHERE json_array_length(j.value) != 34)");

	if (bad)
		fprintf(stderr, "  %lld block(s) or rows in blocks break the block format\n", bad);
	return bad;
}

/* Check that the export (audit_query_open, oldest first: the order users see, started_at
 * then the order of writing) holds exactly the ids prefix000000..prefix(n-1), each once,
 * in submission order after `skip` earlier rows; that the `audit` view holds as many rows;
 * and that the blocks keep their format. Callers give record i a started_at that never
 * decreases with i, so a record lost, doubled or moved shows. Returns the number of
 * mismatches. */
static int check_ids_in_order(const char *path, const char *prefix, int n, int skip)
{
	char *err = NULL;
	struct audit_cursor *c = audit_query_open(path, NULL, &err);
	struct audit_record r = { 0 };
	int i = 0, row = 0, bad = 0, rc;
	long long in_view;
	char want[64];

	if (!c) {
		fprintf(stderr, "  audit_query_open: %s\n", err ? err : "?");
		free(err);
		return 1;
	}
	while ((rc = audit_cursor_next(c, &r)) == 1) {
		if (row++ < skip)
			continue;
		snprintf(want, sizeof(want), "%s%06d", prefix, i);
		if (i >= n || !r.request_id || strcmp(r.request_id, want) != 0) {
			if (bad++ < 3)
				fprintf(stderr, "  row %d: %s, expected %s\n", row - 1,
				        r.request_id ? r.request_id : "NULL",
				        i < n ? want : "(no more rows)");
		}
		i++;
	}
	if (rc < 0) {
		fprintf(stderr, "  audit_cursor_next: %s\n", audit_cursor_error(c));
		bad++;
	}
	audit_record_clear(&r);
	audit_cursor_close(c);
	if (i != n) {
		fprintf(stderr, "  %d rows after the first %d, expected %d\n", i, skip, n);
		bad++;
	}
	if ((in_view = db_int(path, "SELECT count(*) FROM audit")) != row) {
		fprintf(stderr, "  the audit view has %lld rows, the export %d\n", in_view, row);
		bad++;
	}
	return bad + (int)check_blocks(path);
}

static long count_lines(const char *path)
{
	FILE *f = fopen(path, "r");
	long n = 0;
	int c;

	if (!f)
		return -1;
	while ((c = getc(f)) != EOF)
		n += c == '\n';
	fclose(f);
	return n;
}

/* Check that every row prefix000000..prefix(n-1) read back through the query cursor has
 * the columns added after version 4 as make_record gave them: attempts, the cache and
 * reasoning token counts, the upstream's id, the spend columns. Returns the number of
 * mismatches. */
static int check_late_columns(const char *path, const char *prefix, int n)
{
	struct audit_cursor *c = audit_query_open(path, NULL, NULL);
	struct audit_record r = { 0 };
	size_t plen = strlen(prefix);
	int bad = 0, seen = 0;
	char buf[128];

	if (!c)
		return 1;
	while (audit_cursor_next(c, &r) == 1) {
		const char *want;
		int i;

		if (strncmp(r.request_id, prefix, plen) != 0)
			continue;
		i = atoi(r.request_id + plen);
		want = attempts_for(i, buf, sizeof(buf));
		seen++;
		if (want ? !r.attempts || strcmp(r.attempts, want) != 0 : r.attempts != NULL) {
			if (bad++ < 3)
				fprintf(stderr, "  %s: attempts %s, expected %s\n", r.request_id,
				        r.attempts ? r.attempts : "NULL", want ? want : "NULL");
		}
		snprintf(buf, sizeof(buf), "req_%06d", i);
		if (i % 4 == 1 ? !r.upstream_request_id || strcmp(r.upstream_request_id, buf) != 0
		               : r.upstream_request_id != NULL) {
			if (bad++ < 3)
				fprintf(stderr, "  %s: upstream request id %s\n", r.request_id,
				        r.upstream_request_id ? r.upstream_request_id : "NULL");
		}
		if (r.user_id != user_for(i) || r.cost_nano != cost_for(i) ||
		    (price_version_for(i) ? !r.price_version ||
		     strcmp(r.price_version, price_version_for(i)) != 0 : r.price_version != NULL) ||
		    r.estimated != estimated_for(i) || r.billed != billed_for(i) ||
		    r.unpriced != unpriced_for(i)) {
			if (bad++ < 3)
				fprintf(stderr, "  %s: user %lld cost %lld price version %s estimated %d "
				        "billed %d unpriced %d\n", r.request_id, (long long)r.user_id,
				        (long long)r.cost_nano, r.price_version ? r.price_version : "NULL",
				        r.estimated, r.billed, r.unpriced);
		}
		if (r.cached_tokens != cached_for(i) || r.cache_write_tokens != cache_write_for(i) ||
		    r.reasoning_tokens != reasoning_for(i)) {
			if (bad++ < 3)
				fprintf(stderr, "  %s: cached/cache write/reasoning %lld/%lld/%lld, "
				        "expected %lld/%lld/%lld\n", r.request_id,
				        (long long)r.cached_tokens, (long long)r.cache_write_tokens,
				        (long long)r.reasoning_tokens, (long long)cached_for(i),
				        (long long)cache_write_for(i), (long long)reasoning_for(i));
		}
	}
	audit_record_clear(&r);
	audit_cursor_close(c);
	if (seen != n) {
		fprintf(stderr, "  %d rows with prefix %s, expected %d\n", seen, prefix, n);
		bad++;
	}
	return bad;
}

/* ---- writer ---- */

TEST(twenty_thousand_records_land_exactly_once_in_submission_order)
{
	struct tmpdb t;
	struct audit *a;
	double t0 = now_s();

	tmpdb_make(&t);
	a = open_ok(t.path, NULL);
	for (int i = 0; i < 20000; i++)
		audit_submit(a, make_record("r", i, t0 + i * 1e-4));
	CHECK(wait_depth(a, 0, 30));
	audit_close(a);

	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit"), 20000);
	CHECK_INT(db_int(t.path, "SELECT count(DISTINCT request_id) FROM audit"), 20000);
	/* the writer's rows are all in blocks */
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_rows"), 0);
	CHECK_INT(db_int(t.path, "SELECT sum(n) FROM audit_block"), 20000);
	CHECK_INT(check_ids_in_order(t.path, "r", 20000, 0), 0);
	CHECK(access(t.spool, F_OK) != 0);
	tmpdb_remove(&t);
}

TEST(close_drains_the_queue_without_waiting_first)
{
	struct tmpdb t;
	struct audit *a;

	tmpdb_make(&t);
	a = open_ok(t.path, NULL);
	for (int i = 0; i < 5000; i++)
		audit_submit(a, make_record("c", i, 1.7e9 + i));
	audit_close(a);     /* as on SIGTERM: whatever is queued must still land */
	CHECK_INT(check_ids_in_order(t.path, "c", 5000, 0), 0);
	tmpdb_remove(&t);
}

struct producer {
	struct audit *a;
	char prefix[16];
	int n;
};

/* Record i of a producer starts in second i / 50: runs of 50 records of one thread (and
 * of the other threads) share their started_at, so only the writer's keeping submission
 * order among records of the same time (the place in a block, then the block's id) puts a
 * thread's records in order in the export. */
static void *produce(void *arg)
{
	struct producer *p = arg;
	for (int i = 0; i < p->n; i++)
		audit_submit(p->a, make_record(p->prefix, i, 1.7e9 + i / 50));
	return NULL;
}

TEST(records_from_several_threads_all_land_in_per_thread_order)
{
	struct tmpdb t;
	struct producer p[4];
	pthread_t th[4];
	struct audit *a;
	struct audit_cursor *c;
	struct audit_record r = { 0 };
	int next[4] = { 0 }, bad = 0;

	tmpdb_make(&t);
	a = open_ok(t.path, &(struct audit_options){ .batch_size = 100 });
	for (int i = 0; i < 4; i++) {
		p[i].a = a;
		snprintf(p[i].prefix, sizeof(p[i].prefix), "t%d-", i);
		p[i].n = 5000;
		pthread_create(&th[i], NULL, produce, &p[i]);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	audit_close(a);

	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit"), 20000);
	CHECK_INT(db_int(t.path, "SELECT count(DISTINCT request_id) FROM audit"), 20000);
	/* in the order users see: the export */
	CHECK((c = audit_query_open(t.path, NULL, NULL)) != NULL);
	while (c && audit_cursor_next(c, &r) == 1) {
		int th_i, seq;
		if (sscanf(r.request_id, "t%d-%d", &th_i, &seq) != 2 ||
		    th_i < 0 || th_i > 3 || seq != next[th_i]++)
			bad++;
	}
	audit_record_clear(&r);
	audit_cursor_close(c);
	CHECK_INT(bad, 0);
	for (int i = 0; i < 4; i++)
		CHECK_INT(next[i], 5000);
	CHECK_INT(check_blocks(t.path), 0);
	tmpdb_remove(&t);
}

TEST(locked_database_spills_to_memory_then_spool_and_recovers_in_order)
{
	struct tmpdb t;
	struct audit *a;
	sqlite3 *lock;
	struct stat st;
	double until;
	long spooled = 0;

	tmpdb_make(&t);
	a = open_ok(t.path, &(struct audit_options){ .mem_cap = 100, .batch_size = 64,
	                                             .busy_timeout_ms = 20 });
	/* a first batch goes through normally */
	for (int i = 0; i < 50; i++)
		audit_submit(a, make_record("s", i, 1.7e9 + i));
	CHECK(wait_depth(a, 0, 10));

	lock = lock_db(t.path);
	for (int i = 50; i < 1050; i++) {
		audit_submit(a, make_record("s", i, 1.7e9 + i));
		if (i % 100 == 0)
			sleep_ms(10);   /* let the writer fail, back off and spill in between */
	}
	/* Nothing is lost and at most about mem_cap records stay in memory. */
	until = mono_s() + 10;
	while (mono_s() < until && (spooled = count_lines(t.spool)) < 1000 - 100)
		sleep_ms(10);
	CHECK(spooled >= 1000 - 100);
	CHECK(spooled <= 1000);
	CHECK_INT(audit_queue_depth(a), 1000);
	CHECK_INT(raw_int(lock, "SELECT count(*) FROM audit"), 50);
	CHECK(stat(t.spool, &st) == 0 && (st.st_mode & 0777) == 0600);

	unlock_db(lock);
	CHECK(wait_depth(a, 0, 20));
	CHECK(access(t.spool, F_OK) != 0);     /* replayed spools are removed */
	/* and the writer is healthy again afterwards */
	for (int i = 1050; i < 1100; i++)
		audit_submit(a, make_record("s", i, 1.7e9 + i));
	audit_close(a);
	/* the spool was replayed into the row table, the rest written as blocks; the export
	 * merges them back into one order */
	CHECK(db_int(t.path, "SELECT count(*) FROM audit_rows") >= spooled);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_rows") +
	          db_int(t.path, "SELECT sum(n) FROM audit_block"), 1100);
	CHECK_INT(check_ids_in_order(t.path, "s", 1100, 0), 0);
	CHECK_INT(check_late_columns(t.path, "s", 1100), 0);
	tmpdb_remove(&t);
}

/* Threads of this process in scheduling policy `policy` (field 41 of /proc/.../stat). */
static int threads_in_policy(int policy)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	while (d && (e = readdir(d))) {
		char path[300], buf[1024], *p;
		FILE *f;
		int field = 2, pol = -1;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/stat", e->d_name);
		if (!(f = fopen(path, "re")))
			continue;
		if (fgets(buf, sizeof(buf), f) && (p = strrchr(buf, ')'))) {
			for (p++; *p && field < 41; p++)
				if (*p == ' ')
					field++;
			if (field == 41)
				pol = atoi(p);
		}
		fclose(f);
		n += pol == policy;
	}
	if (d)
		closedir(d);
	return n;
}

static bool wait_policy_count(int policy, int want, double timeout_s)
{
	double until = mono_s() + timeout_s;

	while (threads_in_policy(policy) != want) {
		if (mono_s() > until)
			return false;
		sleep_ms(5);
	}
	return true;
}

/* The writer yields the CPU to everything else (SCHED_IDLE) while it keeps up, and returns
 * to normal priority when it falls behind: here, a locked database. Only where the process
 * may leave SCHED_IDLE again (root, CAP_SYS_NICE or RLIMIT_NICE); elsewhere it stays normal. */
TEST(writer_runs_idle_while_it_keeps_up_and_normal_when_behind)
{
	struct tmpdb t;
	struct audit *a;
	sqlite3 *lock;
	struct rlimit rl;
	bool may = geteuid() == 0 ||
	           (getrlimit(RLIMIT_NICE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur >= 20);

	tmpdb_make(&t);
	CHECK_INT(threads_in_policy(SCHED_IDLE), 0);
	a = open_ok(t.path, &(struct audit_options){ .batch_size = 8, .busy_timeout_ms = 20 });
	for (int i = 0; i < 4; i++)
		audit_submit(a, make_record("p", i, 1.7e9 + i));
	CHECK(wait_depth(a, 0, 10));
	if (!may) {
		CHECK_INT(threads_in_policy(SCHED_IDLE), 0);
		audit_close(a);
		tmpdb_remove(&t);
		return;
	}
	CHECK(wait_policy_count(SCHED_IDLE, 1, 5));

	lock = lock_db(t.path);
	for (int i = 4; i < 200; i++)
		audit_submit(a, make_record("p", i, 1.7e9 + i));
	CHECK(wait_policy_count(SCHED_IDLE, 0, 5));      /* behind: normal again */
	unlock_db(lock);
	CHECK(wait_depth(a, 0, 20));
	audit_submit(a, make_record("p", 200, 1.7e9 + 200));
	CHECK(wait_depth(a, 0, 10));
	CHECK(wait_policy_count(SCHED_IDLE, 1, 5));      /* caught up: idle again */
	audit_close(a);
	CHECK_INT(threads_in_policy(SCHED_IDLE), 0);
	CHECK_INT(check_ids_in_order(t.path, "p", 201, 0), 0);
	tmpdb_remove(&t);
}

TEST(submit_never_waits_for_a_database_that_is_locked)
{
	struct tmpdb t;
	struct audit *a;
	sqlite3 *lock;
	double worst = 0;

	tmpdb_make(&t);
	/* Each write attempt now blocks the writer inside SQLite for 1.5 s. */
	a = open_ok(t.path, &(struct audit_options){ .mem_cap = 200, .busy_timeout_ms = 1500 });
	lock = lock_db(t.path);
	for (int i = 0; i < 600; i++) {
		double t0 = mono_s(), dt;
		audit_submit(a, make_record("w", i, 1.7e9 + i));
		dt = mono_s() - t0;
		if (dt > worst)
			worst = dt;
		sleep_ms(5);
	}
	if (worst >= 0.2)
		fprintf(stderr, "  slowest audit_submit: %.3f s\n", worst);
	CHECK(worst < 0.2);
	CHECK_INT(audit_queue_depth(a), 600);
	unlock_db(lock);
	audit_close(a);
	CHECK_INT(check_ids_in_order(t.path, "w", 600, 0), 0);
	tmpdb_remove(&t);
}

TEST(records_left_in_the_spool_at_close_are_written_first_at_next_open)
{
	struct tmpdb t;
	struct audit *a;
	sqlite3 *lock;
	struct audit_options opt = { .mem_cap = 1000, .busy_timeout_ms = 20,
	                             .close_wait_ms = 300 };

	tmpdb_make(&t);
	a = open_ok(t.path, &opt);
	lock = lock_db(t.path);
	for (int i = 0; i < 300; i++)
		audit_submit(a, make_record("p", i, 1.7e9 + i));
	audit_close(a);     /* the database stays locked: everything goes to the spool */
	CHECK_INT(count_lines(t.spool), 300);
	{
		/* row 1's line carries its attempts as written, row 0's a null; the token counts
		 * exactly, unknown as -1 */
		FILE *f = fopen(t.spool, "r");
		char line[4096], want[160], buf[128];

		CHECK(f != NULL);
		CHECK(f && fgets(line, sizeof(line), f) && strstr(line, "\"attempts\":null") &&
		      strstr(line, "\"cached_tokens\":-1,\"cache_write_tokens\":-1,"
		             "\"reasoning_tokens\":-1") &&
		      /* row 0: no user, no cost (-1 in the spool, not null) */
		      strstr(line, "\"user_id\":0,\"cost_nano\":-1,\"price_version\":null,"
		             "\"estimated\":false,\"billed\":false,\"unpriced\":false"));
		snprintf(want, sizeof(want), "\"attempts\":\"%s\"",
		         attempts_for(1, buf, sizeof(buf)));
		CHECK(f && fgets(line, sizeof(line), f) && strstr(line, want) &&
		      strstr(line, "\"cached_tokens\":0,\"cache_write_tokens\":2,"
		             "\"reasoning_tokens\":301") &&
		      /* row 1: the cost as an exact integer of nano-USD */
		      strstr(line, "\"user_id\":101,\"cost_nano\":1000123457,"
		             "\"price_version\":\"2026-12-01.1\",\"estimated\":false,"
		             "\"billed\":true,\"unpriced\":false"));
		if (f)
			fclose(f);
	}
	CHECK_INT(raw_int(lock, "SELECT count(*) FROM audit"), 0);
	unlock_db(lock);

	/* A new start counts the spool as waiting and writes it before anything new. */
	a = open_ok(t.path, &opt);
	CHECK(audit_queue_depth(a) >= 300);
	for (int i = 300; i < 350; i++)
		audit_submit(a, make_record("p", i, 1.7e9 + i));
	CHECK(wait_depth(a, 0, 20));
	audit_close(a);
	CHECK_INT(check_ids_in_order(t.path, "p", 350, 0), 0);
	CHECK_INT(check_late_columns(t.path, "p", 350), 0);
	CHECK(access(t.spool, F_OK) != 0);
	tmpdb_remove(&t);
}

TEST(spool_replay_skips_bad_lines_repairs_a_torn_end_and_never_duplicates)
{
	struct tmpdb t;
	struct audit *a;
	struct audit_record *r;
	struct audit_options opt = { .busy_timeout_ms = 20, .close_wait_ms = 300 };
	char first[4096] = "";
	sqlite3 *lock;
	FILE *f;

	tmpdb_make(&t);
	/* One row already in the database, as if a replay was cut short after its commit and
	 * before the spool shrank: h000000 is spooled, replayed (into the row table, where a
	 * replay writes), and its line put back at the head of the spool. */
	a = open_ok(t.path, &opt);
	lock = lock_db(t.path);
	audit_submit(a, make_record("h", 0, 1.7e9));
	audit_close(a);
	unlock_db(lock);
	f = fopen(t.spool, "r");
	CHECK(f && fgets(first, sizeof(first), f) && strstr(first, "\"h000000\""));
	if (f)
		fclose(f);
	a = open_ok(t.path, NULL);
	CHECK(wait_depth(a, 0, 10));
	audit_close(a);
	CHECK(access(t.spool, F_OK) != 0);
	CHECK_INT(db_int(t.path, "SELECT rowid FROM audit_rows WHERE request_id = 'h000000'"), 1);

	f = fopen(t.spool, "w");
	fputs(first, f);
	fputs("{\"v\":1,\"request_id\":\"h000001\",\"started_at\":1700000001.25,\"key_id\":7,"
	      "\"path\":\"/a,\\\"b\\\"\\nc\",\"status\":504,\"latency_ms\":60000.5,"
	      "\"ttfb_ms\":-1,\"is_stream\":true,\"prompt_tokens\":-1,"
	      "\"completion_tokens\":-1,\"error\":\"timeout\",\"retries\":2,"
	      "\"attempts\":\"http://10.0.0.5:8000=timeout:30000;http://10.0.0.6:8000=reset:2;"
	      "http://10.0.0.7:8000=timeout:30000\",\"cached_tokens\":1920,"
	      "\"cache_write_tokens\":0,\"user_id\":42,\"cost_nano\":9007199254740993,"
	      "\"price_version\":\"p1\",\"estimated\":true,\"billed\":true}\n", f);
	fputs("this is not json\n", f);
	/* a newer format: the fields this version knows are kept */
	fputs("{\"v\":2,\"request_id\":\"h000002\",\"started_at\":1700000002,\"status\":201,"
	      "\"new_field\":[1]}\n", f);
	fputs("{\"v\":0,\"request_id\":\"not-a-version\"}\n", f);
	fputs("{\"v\":1,\"request_id\":\"torn", f);   /* a crash in the middle of a line */
	fclose(f);
	chmod(t.spool, 0600);

	a = open_ok(t.path, NULL);
	CHECK(wait_depth(a, 0, 10));
	audit_submit(a, make_record("h", 3, 1.7e9 + 3));
	audit_close(a);

	CHECK_INT(check_ids_in_order(t.path, "h", 4, 0), 0);
	/* the replayed lines in the row table (h000000 still once), the new record in a block */
	{
		char *ids = db_text(t.path, "SELECT group_concat(request_id) FROM (SELECT request_id "
		                    "FROM audit_rows ORDER BY rowid)");
		CHECK_STR(ids, "h000000,h000001,h000002");
		free(ids);
	}
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_block b, json_each(b.rows) j WHERE "
	                 "json_extract(j.value, '$[0]') = 'h000003'"), 1);
	r = audit_record_new();
	CHECK_INT(audit_get(t.path, "h000001", r, NULL), 1);
	CHECK(fabs(r->started_at - 1700000001.25) < 1e-9);
	CHECK_INT(r->key_id, 7);
	CHECK_STR(r->path, "/a,\"b\"\nc");
	CHECK_INT(r->status, 504);
	CHECK(r->ttfb_ms < 0);
	CHECK(r->is_stream);
	CHECK_INT(r->prompt_tokens, -1);
	CHECK_STR(r->error, "timeout");
	CHECK_INT(r->retries, 2);
	CHECK_STR(r->attempts, "http://10.0.0.5:8000=timeout:30000;http://10.0.0.6:8000=reset:2;"
	          "http://10.0.0.7:8000=timeout:30000");
	CHECK_INT(r->cached_tokens, 1920);
	CHECK_INT(r->cache_write_tokens, 0);
	CHECK_INT(r->reasoning_tokens, -1);   /* not in the line: unknown */
	CHECK_INT(r->user_id, 42);
	CHECK_INT(r->cost_nano, 9007199254740993LL);   /* 2^53 + 1: exact, never a double */
	CHECK_STR(r->price_version, "p1");
	CHECK(r->estimated && r->billed && !r->unpriced);
	CHECK(r->route == NULL);
	CHECK_INT(audit_get(t.path, "h000002", r, NULL), 1);
	CHECK_INT(r->status, 201);
	CHECK(r->attempts == NULL);     /* a line without the fields, as spooled before them */
	CHECK_INT(r->cached_tokens, -1);
	CHECK_INT(r->cache_write_tokens, -1);
	CHECK_INT(r->reasoning_tokens, -1);
	CHECK_INT(r->user_id, 0);
	CHECK_INT(r->cost_nano, -1);
	CHECK(r->price_version == NULL && !r->estimated && !r->billed && !r->unpriced);
	audit_record_free(r);
	CHECK(access(t.spool, F_OK) != 0);
	tmpdb_remove(&t);
}

TEST(record_without_request_id_is_refused_and_does_not_block_the_rest)
{
	struct tmpdb t;
	struct audit *a;
	struct audit_record *bad = audit_record_new();

	tmpdb_make(&t);
	a = open_ok(t.path, NULL);
	audit_submit(a, make_record("n", 0, 1.7e9));
	audit_submit(a, bad);
	audit_submit(a, make_record("n", 1, 1.7e9 + 1));
	CHECK(wait_depth(a, 0, 10));
	audit_close(a);
	CHECK_INT(check_ids_in_order(t.path, "n", 2, 0), 0);
	tmpdb_remove(&t);
}

/* A record the database refuses (here: triggers abort it) is dropped alone, also when it
 * sits inside a block: SQLite refuses the whole block, whose records are then inserted one
 * by one into the row table, where only the record at fault is refused again. The next
 * batch is written as a block again. */
TEST(a_record_the_database_refuses_is_dropped_alone_even_inside_a_block)
{
	struct tmpdb t;
	struct audit *a;
	struct audit_options opt = { .busy_timeout_ms = 20 };
	sqlite3 *db, *lock;

	tmpdb_make(&t);
	a = open_ok(t.path, NULL);
	audit_close(a);
	db = raw_open(t.path);
	CHECK_INT(sqlite3_exec(db, "CREATE TRIGGER poison_block BEFORE INSERT ON audit_block "
	                       "WHEN NEW.rows LIKE '%\"g000017\"%' "
	                       "BEGIN SELECT RAISE(ABORT, 'poison'); END;"
	                       "CREATE TRIGGER poison_row BEFORE INSERT ON audit_rows "
	                       "WHEN NEW.request_id = 'g000017' "
	                       "BEGIN SELECT RAISE(ABORT, 'poison'); END;",
	                       NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	a = open_ok(t.path, &opt);
	/* held back until all 40 are in: one batch, and (0.39 s of started_at) one block */
	lock = lock_db(t.path);
	for (int i = 0; i < 40; i++)
		audit_submit(a, make_record("g", i, 1.7e9 + i * 0.01));
	unlock_db_as_one_batch(lock);
	CHECK(wait_depth(a, 0, 10));
	for (int i = 40; i < 50; i++)
		audit_submit(a, make_record("g", i, 1.7e9 + i * 0.01));
	CHECK(wait_depth(a, 0, 10));
	audit_close(a);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit WHERE request_id LIKE 'g%'"), 49);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit WHERE request_id = 'g000017'"), 0);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit WHERE request_id IN ('g000016', 'g000018', 'g000039')"), 3);
	/* The refused block's other records went row by row, the rest as blocks. The block
	 * holding g000017 is all of the first 40 when they made one batch (the usual case:
	 * 39 rows), else a run of them around it: the row table holds one run of ids with
	 * g000017 its only gap, and g000016 or g000018. */
	{
		char *ids = db_text(t.path, "SELECT group_concat(substr(request_id, 2) + 0) FROM "
		                    "(SELECT request_id FROM audit_rows ORDER BY rowid)");
		int lo = -1, hi = -1, cnt = 0, gaps = 0, prev = -1;

		for (char *p = ids; p && *p; ) {
			int v = (int)strtol(p, &p, 10);

			if (lo < 0)
				lo = v;
			if (prev >= 0 && v != prev + 1)
				gaps += v == prev + 2 && v == 18 ? 0 : 1;
			hi = prev = v;
			cnt++;
			if (*p == ',')
				p++;
		}
		if (cnt != 39)
			fprintf(stderr, "  note: the first 40 records made more than one batch; the row "
			        "table holds g%06d..g%06d\n", lo, hi);
		CHECK(cnt >= 1);
		CHECK_INT(gaps, 0);
		CHECK(lo <= 18 && hi >= 16);
		CHECK_INT(cnt, hi - lo + (lo <= 16 && hi >= 18 ? 0 : 1));
		free(ids);
	}
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_rows") +
	          db_int(t.path, "SELECT sum(n) FROM audit_block"), 49);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_block b, json_each(b.rows) j WHERE "
	                 "json_extract(j.value, '$[0]') BETWEEN 'g000040' AND 'g000049'"), 10);
	/* in order, with g000017 missing */
	{
		struct audit_cursor *c = audit_query_open(t.path, NULL, NULL);
		struct audit_record r = { 0 };
		int n = 0, bad = 0;
		char want[16];

		CHECK(c != NULL);
		while (c && audit_cursor_next(c, &r) == 1) {
			int i = n < 17 ? n : n + 1;

			snprintf(want, sizeof(want), "g%06d", i);
			bad += strcmp(r.request_id, want) != 0;
			n++;
		}
		audit_record_clear(&r);
		audit_cursor_close(c);
		CHECK_INT(n, 49);
		CHECK_INT(bad, 0);
	}
	tmpdb_remove(&t);
}

/* Ids read back through the export (oldest first, or as q asks), into ids[0..cap) (each
 * malloc'd); the row count, or -1 on an error (nothing left allocated). */
static int export_ids(const char *path, const struct audit_query *q, char **ids, int cap)
{
	char *err = NULL;
	struct audit_cursor *c = audit_query_open(path, q, &err);
	struct audit_record r = { 0 };
	int n = 0, rc;

	if (!c) {
		fprintf(stderr, "  audit_query_open: %s\n", err ? err : "?");
		free(err);
		return -1;
	}
	while ((rc = audit_cursor_next(c, &r)) == 1) {
		if (n < cap)
			ids[n] = dup_s(r.request_id);
		n++;
	}
	if (rc < 0) {
		fprintf(stderr, "  audit_cursor_next: %s\n", audit_cursor_error(c));
		while (n > 0)
			if (--n < cap)
				free(ids[n]);
	}
	audit_record_clear(&r);
	audit_cursor_close(c);
	return rc < 0 ? -1 : n;
}

static void free_ids(char **ids, int n)
{
	for (int i = 0; i < n; i++)
		free(ids[i]);
}

/* The writer stores new rows as blocks, not in the row table. A batch whose records started
 * over several seconds (short requests, and two streams that started before them and
 * finished last, one 30 s before) is sorted by started_at and cut into blocks that span at
 * most a second each; the export gives the rows back in started_at order, not in the
 * order they finished, oldest or newest first. */
/* A batch that came in reverse started_at order (more moves than the writer's insertion
 * sort allows itself, so qsort finishes it), in pairs that started in the same
 * microsecond: one block, rows ascending, each pair in the order submitted. */
TEST(a_reversed_batch_with_ties_is_sorted_and_ties_keep_their_order)
{
	enum { N = 60 };
	struct tmpdb t;
	struct audit *a;
	const double t0 = 1700000000.0;
	char want[N * 8 + 1] = "", *got = NULL;
	bool one_batch = false;

	for (int attempt = 0; attempt < 5 && !one_batch; attempt++) {
		sqlite3 *lock;

		if (attempt) {
			fprintf(stderr, "  note: the records were not written in one batch; again\n");
			tmpdb_remove(&t);
		}
		tmpdb_make(&t);
		a = open_ok(t.path, &(struct audit_options){ .busy_timeout_ms = 20 });
		lock = lock_db(t.path);
		for (int i = 0; i < N; i++)   /* 2k and 2k+1 start together, later k first */
			audit_submit(a, make_record("r", i, t0 + (N / 2 - 1 - i / 2) * 0.01));
		unlock_db_as_one_batch(lock);
		CHECK(wait_depth(a, 0, 10));
		audit_close(a);
		one_batch = db_int(t.path, "SELECT count(*) FROM audit_block") == 1;
	}
	CHECK(one_batch);
	CHECK_INT(db_int(t.path, "SELECT sum(n) FROM audit_block"), N);
	CHECK_INT(check_blocks(t.path), 0);
	for (int k = N / 2 - 1; k >= 0; k--) {
		char pair[20];

		snprintf(pair, sizeof(pair), "%s%d,%d", k == N / 2 - 1 ? "" : ",", 2 * k, 2 * k + 1);
		strcat(want, pair);
	}
	got = db_text(t.path, "SELECT group_concat(CAST(substr(json_extract(j.value, '$[0]'), 2)"
	              " AS INTEGER)) FROM (SELECT j.value FROM audit_block b, json_each(b.rows) j"
	              " ORDER BY b.id, j.key) j");
	CHECK_STR(got, want);
	free(got);
	tmpdb_remove(&t);
}

TEST(a_batch_is_stored_as_blocks_of_at_most_a_second_in_started_at_order)
{
	enum { SHORT = 28, N = SHORT + 2 };
	struct tmpdb t;
	struct audit *a;
	struct audit_query q;
	const double t0 = 1700000000.0;
	const char *want[N];
	char *ids[N + 4], names[N][16];
	sqlite3 *lock;
	bool one_batch = false;
	int n, k = 0;

	/* One batch is what this is about. It is known to have been one when the blocks, in
	 * the order written, are in started_at order: l000000, submitted last, started first.
	 * If the writer took the records in two goes, the whole run is made again. */
	for (int attempt = 0; attempt < 5 && !one_batch; attempt++) {
		char *by_id, *by_time;

		if (attempt) {
			fprintf(stderr, "  note: the records were not written in one batch (or the "
			        "blocks not in started_at order); again\n");
			tmpdb_remove(&t);
		}
		tmpdb_make(&t);
		a = open_ok(t.path, &(struct audit_options){ .busy_timeout_ms = 20 });
		lock = lock_db(t.path);     /* held until all are in */
		for (int i = 0; i < SHORT; i++)
			audit_submit(a, make_record("s", i, t0 + i * 0.125));
		audit_submit(a, make_record("l", 0, t0 - 30));
		audit_submit(a, make_record("l", 1, t0 + 0.5625));
		unlock_db_as_one_batch(lock);
		CHECK(wait_depth(a, 0, 10));
		audit_close(a);
		by_id = db_text(t.path, "SELECT group_concat(id) FROM (SELECT id FROM audit_block "
		                "ORDER BY id)");
		by_time = db_text(t.path, "SELECT group_concat(id) FROM (SELECT id FROM audit_block "
		                  "ORDER BY first_started, id)");
		one_batch = by_id && by_time && strcmp(by_id, by_time) == 0;
		free(by_id);
		free(by_time);
	}
	CHECK(one_batch);

	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_rows"), 0);
	CHECK_INT(db_int(t.path, "SELECT sum(n) FROM audit_block"), N);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit"), N);
	/* n:first..last (seconds after t0), in the order written: the stream of t0 - 30 alone;
	 * then 1 s each (the eight-to-a-second shorts and the later stream); the rest */
	CHECK_DB_TEXT(t.path, "SELECT group_concat(x, ' ') FROM (SELECT n || ':' || "
	              "(first_started - 1700000000) || '..' || (last_started - 1700000000) AS x "
	              "FROM audit_block ORDER BY id)",
	              "1:-30.0..-30.0 10:0.0..1.0 9:1.125..2.125 9:2.25..3.25 1:3.375..3.375");
	CHECK_INT(check_blocks(t.path), 0);

	/* the export: l000000, s000000..s000004, l000001 (0.5625), s000005.. */
	for (int i = 0; i < SHORT; i++)
		snprintf(names[i], sizeof(names[i]), "s%06d", i);
	snprintf(names[SHORT], sizeof(names[SHORT]), "l000000");
	snprintf(names[SHORT + 1], sizeof(names[SHORT + 1]), "l000001");
	want[k++] = names[SHORT];
	for (int i = 0; i < SHORT; i++) {
		if (i == 5)
			want[k++] = names[SHORT + 1];
		want[k++] = names[i];
	}
	audit_query_init(&q);
	n = export_ids(t.path, &q, ids, N + 4);
	CHECK_INT(n, N);
	for (int i = 0; i < n && i < N; i++)
		CHECK_STR(ids[i], want[i]);
	free_ids(ids, n < N + 4 ? n : N + 4);
	q.newest_first = true;
	n = export_ids(t.path, &q, ids, N + 4);
	CHECK_INT(n, N);
	for (int i = 0; i < n && i < N; i++)
		CHECK_STR(ids[i], want[N - 1 - i]);
	free_ids(ids, n < N + 4 ? n : N + 4);
	tmpdb_remove(&t);
}

static void *free_in_thread(void *arg)
{
	audit_record_free(arg);
	return NULL;
}

/* The logs ring and the writer hold the same packed record: each owner frees it once, the
 * last one for real (ASan reports a double free or a leak otherwise); unpacked records
 * are copied instead. */
TEST(a_shared_record_lives_until_its_last_owner_frees_it)
{
	struct audit_record *src = make_record("sh", 1, 1.7e9), *packed, *copy;
	pthread_t th[8];

	packed = audit_record_pack(src, false);
	for (int i = 0; i < 8; i++)
		CHECK(audit_record_share(packed) == packed);
	for (int i = 0; i < 8; i++)
		pthread_create(&th[i], NULL, free_in_thread, packed);
	for (int i = 0; i < 8; i++)
		pthread_join(th[i], NULL);
	CHECK_STR(packed->request_id, src->request_id);   /* one owner left: still whole */
	audit_record_free(packed);

	copy = audit_record_share(src);                   /* not packed: a copy */
	CHECK(copy != src);
	CHECK_STR(copy->request_id, src->request_id);
	audit_record_free(copy);
	audit_record_free(src);
}

/* attempts is one of the record's strings: a packed record holds its own copy inside its
 * block (with or without the bodies, and so does a share of it), and it counts in the
 * record's size. */
TEST(attempts_is_packed_shared_and_counted_like_every_string)
{
	struct audit_record *src = make_record("pk", 1, 1.7e9), *packed, *lean, *copy;
	const char *want;
	size_t with, without, len;

	CHECK(src->attempts != NULL);
	len = strlen(src->attempts);
	with = audit_record_bytes(src);
	free(src->attempts);
	src->attempts = NULL;
	without = audit_record_bytes(src);
	CHECK_INT(with - without, len + 1);
	src->attempts = dup_s("http://10.0.0.5:8000=connect:3;http://10.0.0.6:8000=ok:120");
	src->request_body = dup_s("{\"q\":1}");
	want = src->attempts;

	for (int bodies = 0; bodies < 2; bodies++) {
		packed = audit_record_pack(src, bodies);
		CHECK_STR(packed->attempts, want);
		CHECK_INT(packed->cached_tokens, 0);             /* row 1's counts */
		CHECK_INT(packed->cache_write_tokens, 2);
		CHECK_INT(packed->reasoning_tokens, 301);
		CHECK(packed->attempts != src->attempts);
		CHECK(packed->attempts > (char *)packed &&
		      packed->attempts < (char *)packed + audit_record_bytes(packed));
		CHECK(bodies ? packed->request_body != NULL : packed->request_body == NULL);
		lean = audit_record_share(packed);      /* the same block, or a copy without bodies */
		CHECK_STR(lean->attempts, want);
		CHECK_INT(lean->reasoning_tokens, 301);
		CHECK(lean->attempts > (char *)lean &&
		      lean->attempts < (char *)lean + audit_record_bytes(lean));
		audit_record_free(packed);
		audit_record_free(lean);
	}
	copy = audit_record_share(src);
	audit_record_free(src);                 /* the copy does not lean on src's strings */
	CHECK_STR(copy->attempts, "http://10.0.0.5:8000=connect:3;http://10.0.0.6:8000=ok:120");
	audit_record_free(copy);
}

/* ---- files and schema ---- */

/* A database as an older release left it: its audit table (request_id the primary key),
 * then `sql` (indexes, rows, user_version). */
static void make_old_store(const char *path, const char *sql)
{
	sqlite3 *db;

	CHECK_INT(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
	          SQLITE_OK);
	CHECK_INT(sqlite3_exec(db,
	          "CREATE TABLE audit (request_id TEXT NOT NULL PRIMARY KEY, started_at REAL NOT NULL,"
	          " key_id INTEGER, key_name TEXT, client_ip TEXT, method TEXT, path TEXT, route TEXT,"
	          " upstream TEXT, status INTEGER NOT NULL, latency_ms REAL, ttfb_ms REAL,"
	          " is_stream INTEGER NOT NULL, chunks INTEGER, bytes_in INTEGER, bytes_out INTEGER,"
	          " model TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, error TEXT,"
	          " retries INTEGER NOT NULL DEFAULT 0, request_body TEXT, response_body TEXT);",
	          NULL, NULL, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
}

/* The columns of the `audit` view, in enum audit_field order (cost_nano: the column of the
 * cost_usd field). */
#define VIEW_COLUMNS "request_id,started_at,key_id,key_name,client_ip,method,path,route," \
	"upstream,status,latency_ms,ttfb_ms,is_stream,chunks,bytes_in,bytes_out,model," \
	"prompt_tokens,completion_tokens,error,retries,attempts,cached_tokens," \
	"cache_write_tokens,reasoning_tokens,upstream_request_id,user_id,cost_nano," \
	"price_version,estimated,billed,unpriced,request_body,response_body"

/* Schema version 10. The row table audit_rows (version 9's table `audit`, renamed): one
 * B-tree besides the table, on started_at; no index on request_id (not even a unique one);
 * the attempts column (version 5) after the older ones, then the cache and reasoning token
 * columns (version 6), then upstream_request_id (version 7), then the spend columns
 * (version 8). The blocks: audit_block, with one index, on first_started. `audit`: a view
 * (not a table) with the 34 columns in order, and a trigger that sends an INSERT into it to
 * audit_rows. The spend counters and their mark (version 9). */
static void check_current_schema(const char *path)
{
	static const struct { const char *name, *type; int notnull; const char *dflt; } spend[] = {
		{ "user_id", "INTEGER", 0, NULL }, { "cost_nano", "INTEGER", 0, NULL },
		{ "price_version", "TEXT", 0, NULL }, { "estimated", "INTEGER", 1, "0" },
		{ "billed", "INTEGER", 1, "0" }, { "unpriced", "INTEGER", 1, "0" },
	};
	char sql[300];

	CHECK_INT(db_int(path, "PRAGMA user_version"), 10);
	CHECK_INT(db_int(path, "SELECT cid FROM pragma_table_info('audit_rows') WHERE name = "
	                 "'attempts' AND type = 'TEXT' AND \"notnull\" = 0 AND "
	                 "dflt_value IS NULL"), 23);
	CHECK_INT(db_int(path, "SELECT cid FROM pragma_table_info('audit_rows') WHERE name = "
	                 "'cached_tokens' AND type = 'INTEGER' AND \"notnull\" = 0 AND "
	                 "dflt_value IS NULL"), 24);
	CHECK_INT(db_int(path, "SELECT cid FROM pragma_table_info('audit_rows') WHERE name = "
	                 "'cache_write_tokens' AND type = 'INTEGER' AND \"notnull\" = 0 AND "
	                 "dflt_value IS NULL"), 25);
	CHECK_INT(db_int(path, "SELECT cid FROM pragma_table_info('audit_rows') WHERE name = "
	                 "'reasoning_tokens' AND type = 'INTEGER' AND \"notnull\" = 0 AND "
	                 "dflt_value IS NULL"), 26);
	CHECK_INT(db_int(path, "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND "
	                 "tbl_name = 'audit_rows'"), 1);
	CHECK_INT(db_int(path, "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND "
	                 "name = 'audit_started_at' AND tbl_name = 'audit_rows'"), 1);
	CHECK_DB_TEXT(path, "SELECT group_concat(name) FROM pragma_index_info('audit_started_at')",
	              "started_at");
	CHECK_INT(db_int(path, "SELECT cid FROM pragma_table_info('audit_rows') WHERE name = "
	                 "'upstream_request_id' AND type = 'TEXT' AND \"notnull\" = 0 AND "
	                 "dflt_value IS NULL"), 27);
	for (int i = 0; i < 6; i++) {
		snprintf(sql, sizeof(sql), "SELECT cid FROM pragma_table_info('audit_rows') WHERE "
		         "name = '%s' AND type = '%s' AND \"notnull\" = %d AND dflt_value IS %s%s%s",
		         spend[i].name, spend[i].type, spend[i].notnull, spend[i].dflt ? "'" : "",
		         spend[i].dflt ? spend[i].dflt : "NULL", spend[i].dflt ? "'" : "");
		CHECK_INT(db_int(path, sql), 28 + i);
	}
	CHECK_INT(db_int(path, "SELECT count(*) FROM pragma_table_info('audit_rows')"), 34);

	/* the blocks */
	CHECK_DB_TEXT(path, "SELECT group_concat(c, ', ') FROM (SELECT name || ' ' || type || ' ' "
	              "|| \"notnull\" || ' ' || pk AS c FROM pragma_table_info('audit_block') "
	              "ORDER BY cid)", "id INTEGER 0 1, first_started REAL 1 0, "
	              "last_started REAL 1 0, n INTEGER 1 0, rows TEXT 1 0");
	CHECK_INT(db_int(path, "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND "
	                 "tbl_name = 'audit_block'"), 1);
	CHECK_INT(db_int(path, "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND "
	                 "name = 'audit_block_first' AND tbl_name = 'audit_block'"), 1);
	CHECK_DB_TEXT(path, "SELECT group_concat(name) FROM pragma_index_info('audit_block_first')",
	              "first_started");

	/* the view and its trigger */
	CHECK_DB_TEXT(path, "SELECT group_concat(type) FROM sqlite_master WHERE name = 'audit'",
	              "view");
	CHECK_DB_TEXT(path, "SELECT group_concat(name, ',') FROM (SELECT name FROM "
	              "pragma_table_info('audit') ORDER BY cid)", VIEW_COLUMNS);
	CHECK_INT(db_int(path, "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND "
	                 "tbl_name = 'audit' AND sql LIKE '%INSTEAD OF INSERT%audit_rows%'"), 1);

	CHECK_INT(db_int(path, "SELECT count(*) FROM pragma_table_info('spend')"), 6);
	CHECK_INT(db_int(path, "SELECT count(*) FROM pragma_index_info('sqlite_autoindex_spend_1')"),
	          3);                         /* the key: scope, period, start */
	CHECK_INT(db_int(path, "SELECT count(*) FROM spend_mark"), 1);
}

TEST(database_is_created_mode_0600_with_schema_version_and_indexes)
{
	struct tmpdb t;
	struct audit *a;
	struct stat st;
	mode_t old = umask(0);

	tmpdb_make(&t);
	a = open_ok(t.path, NULL);
	umask(old);
	CHECK(stat(t.path, &st) == 0);
	CHECK_INT(st.st_mode & 0777, 0600);
	audit_close(a);
	check_current_schema(t.path);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_untimed_ids WHERE until = 0"), 1);
	tmpdb_remove(&t);
}

TEST(a_version_2_store_is_migrated_and_keeps_its_rows)
{
	struct tmpdb t;
	struct audit *a;
	struct audit_record out = { 0 };

	tmpdb_make(&t);
	/* the schema as release 2 left it: four filter indexes */
	make_old_store(t.path,
	               "CREATE INDEX audit_started_at ON audit(started_at);"
	               "CREATE INDEX audit_key_id ON audit(key_id, started_at);"
	               "CREATE INDEX audit_route ON audit(route, started_at);"
	               "CREATE INDEX audit_status ON audit(status, started_at);"
	               "INSERT INTO audit (request_id, started_at, route, status, is_stream)"
	               " VALUES ('old-1', 1700000000, 'chat', 200, 0);"
	               "PRAGMA user_version = 2;");
	a = open_ok(t.path, NULL);
	audit_close(a);
	check_current_schema(t.path);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit WHERE request_id = 'old-1' AND "
	                 "route = 'chat' AND status = 200 AND attempts IS NULL AND "
	                 "cached_tokens IS NULL AND cache_write_tokens IS NULL AND "
	                 "reasoning_tokens IS NULL"), 1);
	/* in the row table, with its rowid; found by its id (not of the reqid form) */
	CHECK_INT(db_int(t.path, "SELECT rowid FROM audit_rows WHERE request_id = 'old-1' AND "
	                 "route = 'chat' AND status = 200"), 1);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_block"), 0);
	CHECK_INT(audit_get(t.path, "old-1", &out, NULL), 1);
	CHECK_STR(out.route, "chat");
	CHECK(fabs(out.started_at - 1700000000.0) < 1e-9);
	audit_record_clear(&out);
	tmpdb_remove(&t);
}

/* Version 3 (release of session 3) had a unique index on request_id and a key index; the
 * rows move to the new table with their rowids and stay findable by their old ids, which
 * carry no time. */
TEST(a_version_3_store_is_rebuilt_and_its_old_ids_are_still_found)
{
	struct tmpdb t;
	struct audit *a;
	struct audit_record out = { 0 };
	char id[REQID_LEN + 1];
	double now = now_s();

	tmpdb_make(&t);
	make_old_store(t.path,
	               "CREATE INDEX audit_started_at ON audit(started_at);"
	               "CREATE INDEX audit_key_id ON audit(key_id, started_at);"
	               /* old ids: a random prefix, then a counter */
	               "INSERT INTO audit (rowid, request_id, started_at, key_id, status, is_stream)"
	               " VALUES (7, '98a0cc62000000000001', 1700000000.5, 3, 200, 0),"
	               " (9, '98a0cc62000000000002', 1700000100.25, 4, 502, 1);"
	               "PRAGMA user_version = 3;");

	a = open_ok(t.path, NULL);
	reqid_next(&test_ids, id);
	{
		struct audit_record *r = make_record("n", 0, now);
		free(r->request_id);
		r->request_id = dup_s(id);
		audit_submit(a, r);
	}
	audit_close(a);

	check_current_schema(t.path);
	/* the old rows in the row table with their rowids, the new one in a block; the view
	 * shows all three */
	CHECK_INT(db_int(t.path, "SELECT rowid FROM audit_rows WHERE request_id = "
	                 "'98a0cc62000000000002' AND key_id = 4 AND status = 502 AND is_stream = 1"),
	          9);
	CHECK_INT(db_int(t.path, "SELECT rowid FROM audit_rows WHERE request_id = "
	                 "'98a0cc62000000000001' AND key_id = 3"), 7);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_rows"), 2);
	CHECK_INT(db_int(t.path, "SELECT sum(n) FROM audit_block"), 1);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit WHERE request_id = "
	                 "'98a0cc62000000000002' AND key_id = 4 AND status = 502 AND is_stream = 1"),
	          1);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit"), 3);
	/* the bound covers the old rows only: the new row's id carries its time */
	CHECK_INT(db_int(t.path, "SELECT until * 100 FROM audit_untimed_ids"), 170000010025LL);
	CHECK_INT(audit_get(t.path, "98a0cc62000000000001", &out, NULL), 1);
	CHECK_INT(out.key_id, 3);
	audit_record_clear(&out);
	CHECK_INT(audit_get(t.path, "98a0cc62000000000002", &out, NULL), 1);
	CHECK_INT(out.status, 502);
	audit_record_clear(&out);
	CHECK_INT(audit_get(t.path, id, &out, NULL), 1);
	CHECK_STR(out.request_id, id);
	audit_record_clear(&out);
	CHECK_INT(audit_get(t.path, "98a0cc62000000000003", &out, NULL), 0);
	tmpdb_remove(&t);
}

/* Version 4 (the table as migration 4 rebuilt it) gains the attempts column: every row
 * stays, with its rowid and every value, and reads attempts as NULL. Before a daemon of this
 * version has opened the file, the read side (which never writes) already reads it. */
TEST(a_version_4_store_gains_the_attempts_column_and_keeps_its_rows)
{
	struct tmpdb t;
	struct audit *a;
	struct audit_record out = { 0 };
	struct audit_cursor *c;
	struct audit_query q;
	char timed[REQID_LEN + 1], sql[1024];
	double now = now_s();
	sqlite3 *db;
	int n = 0;

	tmpdb_make(&t);
	reqid_next(&test_ids, timed);
	snprintf(sql, sizeof(sql),
	         "CREATE TABLE audit (request_id TEXT NOT NULL, started_at REAL NOT NULL,"
	         " key_id INTEGER, key_name TEXT, client_ip TEXT, method TEXT, path TEXT, route TEXT,"
	         " upstream TEXT, status INTEGER NOT NULL, latency_ms REAL, ttfb_ms REAL,"
	         " is_stream INTEGER NOT NULL, chunks INTEGER, bytes_in INTEGER, bytes_out INTEGER,"
	         " model TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, error TEXT,"
	         " retries INTEGER NOT NULL DEFAULT 0, request_body TEXT, response_body TEXT);"
	         "CREATE TABLE audit_untimed_ids (until REAL NOT NULL);"
	         "INSERT INTO audit_untimed_ids VALUES (1700000000.5);"
	         "CREATE INDEX audit_started_at ON audit(started_at);"
	         "INSERT INTO audit (rowid, request_id, started_at, key_id, route, upstream, status,"
	         " is_stream, error, retries, request_body, response_body) VALUES"
	         " (4, '98a0cc62000000000001', 1700000000.5, 3, 'chat', 'http://10.0.0.5:8000',"
	         " 502, 0, 'timeout', 2, '{\"q\":1}', NULL),"
	         " (8, '%s', %.6f, NULL, NULL, NULL, 401, 0, NULL, 0, NULL, NULL);"
	         "PRAGMA user_version = 4;", timed, now);
	CHECK_INT(sqlite3_open_v2(t.path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
	          SQLITE_OK);
	CHECK_INT(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);

	/* read as it is: a query and a lookup by either kind of id */
	audit_query_init(&q);
	CHECK((c = audit_query_open(t.path, &q, NULL)) != NULL);
	while (c && audit_cursor_next(c, &out) == 1) {
		CHECK(out.attempts == NULL);
		CHECK_INT(out.cached_tokens, -1);
		CHECK_INT(out.reasoning_tokens, -1);
		n++;
	}
	audit_cursor_close(c);
	CHECK_INT(n, 2);
	CHECK_INT(audit_get(t.path, "98a0cc62000000000001", &out, NULL), 1);
	CHECK_INT(out.retries, 2);
	CHECK_STR(out.request_body, "{\"q\":1}");
	CHECK(out.attempts == NULL);
	CHECK_INT(audit_get(t.path, timed, &out, NULL), 1);
	CHECK_INT(out.status, 401);
	CHECK_INT(db_int(t.path, "PRAGMA user_version"), 4);     /* readers changed nothing */

	a = open_ok(t.path, NULL);
	{
		struct audit_record *r = make_record("v5-", 1, now + 1);
		audit_submit(a, r);
	}
	audit_close(a);
	check_current_schema(t.path);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit"), 3);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_rows"), 2);
	CHECK_INT(db_int(t.path, "SELECT rowid FROM audit_rows WHERE request_id = "
	                 "'98a0cc62000000000001'"
	                 " AND started_at = 1700000000.5 AND key_id = 3 AND route = 'chat'"
	                 " AND upstream = 'http://10.0.0.5:8000' AND status = 502 AND is_stream = 0"
	                 " AND error = 'timeout' AND retries = 2 AND request_body = '{\"q\":1}'"
	                 " AND response_body IS NULL AND attempts IS NULL"), 4);
	CHECK_INT(db_int(t.path, "SELECT rowid FROM audit_rows WHERE request_id = (SELECT "
	                 "request_id FROM audit WHERE status = 401) AND attempts IS NULL"), 8);
	/* and through the view, with every value */
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit WHERE request_id = "
	                 "'98a0cc62000000000001'"
	                 " AND started_at = 1700000000.5 AND key_id = 3 AND route = 'chat'"
	                 " AND upstream = 'http://10.0.0.5:8000' AND status = 502 AND is_stream = 0"
	                 " AND error = 'timeout' AND retries = 2 AND request_body = '{\"q\":1}'"
	                 " AND response_body IS NULL AND attempts IS NULL"), 1);
	CHECK_INT(db_int(t.path, "SELECT until * 10 FROM audit_untimed_ids"), 17000000005LL);
	CHECK_INT(audit_get(t.path, "98a0cc62000000000001", &out, NULL), 1);
	CHECK_INT(out.retries, 2);
	CHECK(out.attempts == NULL);
	CHECK_INT(audit_get(t.path, "v5-000001", &out, NULL), 1);
	CHECK_STR(out.attempts, "http://10.0.0.5:8000=connect:1;http://10.0.0.6:8000=ok:101");
	audit_record_clear(&out);
	CHECK_INT(check_late_columns(t.path, "v5-", 1), 0);
	tmpdb_remove(&t);
}

/* Version 5 (version 4 plus attempts) gains the cache and reasoning token columns: every
 * row stays, with its rowid and every value, and reads the new counts as NULL (unknown,
 * -1 in a record). The read side reads a version 5 file before any daemon of this version
 * has opened it, without changing it. */
TEST(a_version_5_store_gains_the_token_columns_and_keeps_its_rows)
{
	struct tmpdb t;
	struct audit *a;
	struct audit_record out = { 0 };
	struct audit_cursor *c;
	char timed[REQID_LEN + 1], sql[2048], *line;
	double now = now_s();
	sqlite3 *db;
	int n = 0;

	tmpdb_make(&t);
	reqid_next(&test_ids, timed);
	snprintf(sql, sizeof(sql),
	         "CREATE TABLE audit (request_id TEXT NOT NULL, started_at REAL NOT NULL,"
	         " key_id INTEGER, key_name TEXT, client_ip TEXT, method TEXT, path TEXT, route TEXT,"
	         " upstream TEXT, status INTEGER NOT NULL, latency_ms REAL, ttfb_ms REAL,"
	         " is_stream INTEGER NOT NULL, chunks INTEGER, bytes_in INTEGER, bytes_out INTEGER,"
	         " model TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, error TEXT,"
	         " retries INTEGER NOT NULL DEFAULT 0, request_body TEXT, response_body TEXT,"
	         " attempts TEXT);"
	         "CREATE TABLE audit_untimed_ids (until REAL NOT NULL);"
	         "INSERT INTO audit_untimed_ids VALUES (0);"
	         "CREATE INDEX audit_started_at ON audit(started_at);"
	         "INSERT INTO audit (rowid, request_id, started_at, key_id, route, upstream, status,"
	         " is_stream, model, prompt_tokens, completion_tokens, error, retries, request_body,"
	         " response_body, attempts) VALUES"
	         " (5, '%s', %.6f, 2, 'chat', 'http://10.0.0.5:8000', 200, 1, 'gpt-4o', 2006, 300,"
	         " NULL, 1, NULL, '{\"a\":1}',"
	         " 'http://10.0.0.5:8000=5xx:3;http://10.0.0.6:8000=ok:90'),"
	         " (6, '98a0cc62000000000009', 1.0, NULL, NULL, NULL, 401, 0, NULL, NULL, NULL,"
	         " NULL, 0, NULL, NULL, NULL);"
	         "PRAGMA user_version = 5;", timed, now);
	CHECK_INT(sqlite3_open_v2(t.path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
	          SQLITE_OK);
	CHECK_INT(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);

	/* read as it is */
	CHECK((c = audit_query_open(t.path, NULL, NULL)) != NULL);
	while (c && audit_cursor_next(c, &out) == 1) {
		CHECK_INT(out.cached_tokens, -1);
		CHECK_INT(out.cache_write_tokens, -1);
		CHECK_INT(out.reasoning_tokens, -1);
		n++;
	}
	audit_cursor_close(c);
	CHECK_INT(n, 2);
	CHECK_INT(audit_get(t.path, timed, &out, NULL), 1);
	CHECK_INT(out.prompt_tokens, 2006);
	CHECK_STR(out.attempts, "http://10.0.0.5:8000=5xx:3;http://10.0.0.6:8000=ok:90");
	CHECK_STR(out.response_body, "{\"a\":1}");
	CHECK_INT(out.cached_tokens, -1);
	line = audit_record_csv(&out, NULL, 0);         /* unknown: empty fields at the end */
	{
		/* ... the token counts, no upstream id, no user, cost or price version, not
		 * estimated */
		const char *want = ",1,http://10.0.0.5:8000=5xx:3;http://10.0.0.6:8000=ok:90,,,,,,,,0";
		CHECK(strlen(line) > strlen(want) &&
		      strcmp(line + strlen(line) - strlen(want), want) == 0);
	}
	free(line);
	CHECK_INT(db_int(t.path, "PRAGMA user_version"), 5);     /* readers changed nothing */

	a = open_ok(t.path, NULL);
	audit_submit(a, make_record("v6-", 2, now + 1));
	audit_close(a);
	check_current_schema(t.path);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit"), 3);
	snprintf(sql, sizeof(sql),
	         "SELECT rowid FROM audit_rows WHERE request_id = '%s' AND key_id = 2 AND"
	         " route = 'chat' AND upstream = 'http://10.0.0.5:8000' AND status = 200 AND"
	         " is_stream = 1 AND"
	         " model = 'gpt-4o' AND prompt_tokens = 2006 AND completion_tokens = 300 AND"
	         " error IS NULL AND retries = 1 AND request_body IS NULL AND"
	         " response_body = '{\"a\":1}' AND"
	         " attempts = 'http://10.0.0.5:8000=5xx:3;http://10.0.0.6:8000=ok:90' AND"
	         " cached_tokens IS NULL AND cache_write_tokens IS NULL AND"
	         " reasoning_tokens IS NULL", timed);
	CHECK_INT(db_int(t.path, sql), 5);
	CHECK_INT(db_int(t.path, "SELECT rowid FROM audit_rows WHERE request_id = "
	                 "'98a0cc62000000000009' AND status = 401 AND cached_tokens IS NULL"), 6);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_rows"), 2);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit WHERE request_id = "
	                 "'98a0cc62000000000009' AND status = 401 AND cached_tokens IS NULL"), 1);
	CHECK_INT(audit_get(t.path, timed, &out, NULL), 1);
	CHECK_INT(out.retries, 1);
	CHECK_INT(out.cached_tokens, -1);
	CHECK_INT(out.reasoning_tokens, -1);
	CHECK_INT(audit_get(t.path, "v6-000002", &out, NULL), 1);
	CHECK_INT(out.cached_tokens, 1002);
	CHECK_INT(out.cache_write_tokens, 4);
	CHECK_INT(out.reasoning_tokens, 0);
	audit_record_clear(&out);
	CHECK_INT(check_late_columns(t.path, "v6-", 1), 0);
	tmpdb_remove(&t);
}

/* The audit table as schema version 7 left it (in version 5's column order, then the
 * ones added by ALTER TABLE): the older stores the migration tests build by hand. */
#define V7_COLUMN_DDL "request_id TEXT NOT NULL, started_at REAL NOT NULL, key_id INTEGER," \
	" key_name TEXT, client_ip TEXT, method TEXT, path TEXT, route TEXT, upstream TEXT," \
	" status INTEGER NOT NULL, latency_ms REAL, ttfb_ms REAL, is_stream INTEGER NOT NULL," \
	" chunks INTEGER, bytes_in INTEGER, bytes_out INTEGER, model TEXT, prompt_tokens INTEGER," \
	" completion_tokens INTEGER, error TEXT, retries INTEGER NOT NULL DEFAULT 0," \
	" request_body TEXT, response_body TEXT, attempts TEXT, cached_tokens INTEGER," \
	" cache_write_tokens INTEGER, reasoning_tokens INTEGER, upstream_request_id TEXT"

static int run_query(const char *path, const struct audit_query *q, int *idx, int cap);

/* Version 7 (version 6 plus the upstream's request id) gains the spend columns: every row
 * stays with its values and reads as a request without a user or a cost, not estimated,
 * billed or unpriced; so does the read side before any daemon of this version opened it,
 * also when asked for one user's requests. */
TEST(a_version_7_store_gains_the_spend_columns_and_keeps_its_rows)
{
	struct tmpdb t;
	struct audit *a;
	struct audit_record out = { 0 };
	struct audit_query q;
	char timed[REQID_LEN + 1], sql[2048], *line;
	int idx[4];
	double now = now_s();
	sqlite3 *db;

	tmpdb_make(&t);
	reqid_next(&test_ids, timed);
	snprintf(sql, sizeof(sql),
	         "CREATE TABLE audit (" V7_COLUMN_DDL ");"
	         "CREATE TABLE audit_untimed_ids (until REAL NOT NULL);"
	         "INSERT INTO audit_untimed_ids VALUES (0);"
	         "CREATE INDEX audit_started_at ON audit(started_at);"
	         "INSERT INTO audit (rowid, request_id, started_at, key_id, route, status, is_stream,"
	         " model, prompt_tokens, completion_tokens, retries, cached_tokens,"
	         " upstream_request_id) VALUES (3, '%s', %.6f, 2, 'chat', 200, 0, 'gpt-4o', 2006,"
	         " 300, 0, 7, 'req_old');"
	         "PRAGMA user_version = 7;", timed, now);
	CHECK_INT(sqlite3_open_v2(t.path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
	          SQLITE_OK);
	CHECK_INT(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);

	/* read as it is */
	CHECK_INT(audit_get(t.path, timed, &out, NULL), 1);
	CHECK_INT(out.prompt_tokens, 2006);
	CHECK_STR(out.upstream_request_id, "req_old");
	CHECK_INT(out.user_id, 0);
	CHECK_INT(out.cost_nano, -1);
	CHECK(out.price_version == NULL && !out.estimated && !out.billed && !out.unpriced);
	line = audit_record_csv(&out, NULL, 0);        /* no user, cost, price version */
	CHECK(strlen(line) > 13 && strcmp(line + strlen(line) - 13, ",req_old,,,,0") == 0);
	free(line);
	audit_query_init(&q);
	q.user_id = 0;
	CHECK_INT(run_query(t.path, &q, idx, 4), 1);   /* every old row is one without a user */
	q.user_id = 5;
	CHECK_INT(run_query(t.path, &q, idx, 4), 0);
	CHECK_INT(db_int(t.path, "PRAGMA user_version"), 7);     /* readers changed nothing */

	a = open_ok(t.path, NULL);
	audit_submit(a, make_record("v8-", 7, now + 1));
	audit_close(a);
	check_current_schema(t.path);
	snprintf(sql, sizeof(sql),
	         "SELECT rowid FROM audit_rows WHERE request_id = '%s' AND key_id = 2 AND"
	         " model = 'gpt-4o'"
	         " AND prompt_tokens = 2006 AND cached_tokens = 7 AND upstream_request_id = 'req_old'"
	         " AND user_id IS NULL AND cost_nano IS NULL AND price_version IS NULL AND"
	         " estimated = 0 AND billed = 0 AND unpriced = 0", timed);
	CHECK_INT(db_int(t.path, sql), 3);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_rows"), 1);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit"), 2);
	CHECK_INT(audit_get(t.path, timed, &out, NULL), 1);     /* still found after migrating */
	CHECK_STR(out.upstream_request_id, "req_old");
	CHECK_INT(out.cost_nano, -1);
	/* stored as integers, NULL for none: row 7 has user 101 and a cost */
	CHECK_INT(db_int(t.path, "SELECT user_id FROM audit WHERE request_id = 'v8-000007' AND "
	                 "typeof(user_id) = 'integer' AND typeof(cost_nano) = 'integer'"), 101);
	CHECK_INT(db_int(t.path, "SELECT cost_nano FROM audit WHERE request_id = 'v8-000007'"),
	          7000000049LL + 123450);
	CHECK_INT(check_late_columns(t.path, "v8-", 1), 0);
	audit_record_clear(&out);
	tmpdb_remove(&t);
}

static long long spend_mismatches(const char *path);
static long long spend_get(const char *path, const char *scope, const char *period,
                           long long start, const char *what);

/* Version 9 (version 7 plus the spend columns, counters and mark; the last before blocks)
 * gains blocks. Its rows stay in the row table, renamed audit_rows, with their rowids and
 * values; the spend mark counts in those rowids (a billed old row not counted yet is
 * counted at the first open). New rows go to blocks. An export merges old and new rows in
 * started_at order; audit_get and the `audit` view find both; an INSERT into the view
 * continues the old rowids. Before a daemon of this version has opened the file, the read
 * side reads it as it is, without changing it. */
TEST(a_version_9_store_keeps_its_rows_in_the_row_table_and_new_ones_go_to_blocks)
{
	/* ids of the reqid form carrying second 1700000000 (0x6553f100), at times around it;
	 * old rows o*, new rows n*, and an old row whose id is not of the reqid form */
	static const struct { const char *id; double dt; int rowid; } rows[] = {
		{ "6553f100000000000001", -1.5, 3 }, { "6553f100000000000011", -1.0, 0 },
		{ "6553f100000000000002", -0.25, 5 }, { "6553f100000000000012", 0.5, 0 },
		{ "6553f100000000000003", 1.0, 9 }, { "6553f100000000000013", 1.5, 0 },
		{ "legacy-1", 2.0, 12 },
	};
	enum { N = sizeof(rows) / sizeof(rows[0]) };
	struct tmpdb t;
	struct audit *a;
	struct audit_record out = { 0 };
	struct audit_query q;
	char sql[4096], *ids[N + 4];
	size_t len;
	sqlite3 *db;
	int n;

	tmpdb_make(&t);
	len = (size_t)snprintf(sql, sizeof(sql),
	         "CREATE TABLE audit (" V7_COLUMN_DDL ", user_id INTEGER,"
	         " cost_nano INTEGER, price_version TEXT, estimated INTEGER NOT NULL DEFAULT 0,"
	         " billed INTEGER NOT NULL DEFAULT 0, unpriced INTEGER NOT NULL DEFAULT 0);"
	         "CREATE TABLE audit_untimed_ids (until REAL NOT NULL);"
	         "INSERT INTO audit_untimed_ids VALUES (0);"
	         "CREATE INDEX audit_started_at ON audit(started_at);"
	         "CREATE TABLE spend (scope TEXT NOT NULL, period TEXT NOT NULL,"
	         " start INTEGER NOT NULL, requests INTEGER NOT NULL, tokens INTEGER NOT NULL,"
	         " cost_nano INTEGER NOT NULL, PRIMARY KEY (scope, period, start)) WITHOUT ROWID;"
	         "CREATE TABLE spend_mark (one INTEGER PRIMARY KEY CHECK (one = 1),"
	         " last_rowid INTEGER NOT NULL);"
	         "INSERT INTO spend_mark VALUES (1, 0);");
	for (int i = 0; i < N; i++) {
		if (!rows[i].rowid)
			continue;
		/* the second old row is billed (key 4, user 40) and not counted yet */
		len += (size_t)snprintf(sql + len, sizeof(sql) - len,
		         "INSERT INTO audit (rowid, request_id, started_at, key_id, user_id, route,"
		         " status, is_stream, prompt_tokens, completion_tokens, cost_nano,"
		         " price_version, billed, upstream_request_id) VALUES (%d, '%s', %.17g, %s,"
		         " %s, 'chat', %d, 0, 10, 5, %s, %s, %d, 'up-%d');", rows[i].rowid,
		         rows[i].id, 1700000000.0 + rows[i].dt, i == 2 ? "4" : "NULL",
		         i == 2 ? "40" : "NULL", 400 + i, i == 2 ? "777" : "NULL",
		         i == 2 ? "'p9'" : "NULL", i == 2, i);
	}
	snprintf(sql + len, sizeof(sql) - len, "PRAGMA user_version = 9;");
	CHECK_INT(sqlite3_open_v2(t.path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
	          SQLITE_OK);
	CHECK_INT(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);

	/* read as it is */
	audit_query_init(&q);
	n = export_ids(t.path, &q, ids, N + 4);
	CHECK_INT(n, 4);
	for (int i = 0, k = 0; i < N && k < n; i++)
		if (rows[i].rowid)
			CHECK_STR(ids[k++], rows[i].id);
	free_ids(ids, n > 0 ? n : 0);
	CHECK_INT(audit_get(t.path, rows[2].id, &out, NULL), 1);
	CHECK_INT(out.cost_nano, 777);
	CHECK_INT(db_int(t.path, "PRAGMA user_version"), 9);     /* readers changed nothing */

	a = open_ok(t.path, NULL);
	for (int i = 0; i < N; i++) {
		struct audit_record *r;

		if (rows[i].rowid)
			continue;
		r = make_record("n", i, 1700000000.0 + rows[i].dt);
		free(r->request_id);
		r->request_id = dup_s(rows[i].id);
		free(r->route);
		r->route = dup_s("new");
		r->status = 400 + i;
		audit_submit(a, r);
	}
	audit_close(a);
	check_current_schema(t.path);

	/* the old rows with their rowids and values, in the row table; the new ones in blocks */
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_rows"), 4);
	CHECK_INT(db_int(t.path, "SELECT sum(n) FROM audit_block"), 3);
	for (int i = 0; i < N; i++) {
		if (!rows[i].rowid)
			continue;
		snprintf(sql, sizeof(sql), "SELECT rowid FROM audit_rows WHERE request_id = '%s' AND "
		         "started_at = %.17g AND status = %d AND route = 'chat' AND "
		         "upstream_request_id = 'up-%d'", rows[i].id, 1700000000.0 + rows[i].dt,
		         400 + i, i);
		CHECK_INT(db_int(t.path, sql), rows[i].rowid);
	}
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_block b, json_each(b.rows) j WHERE "
	                 "json_extract(j.value, '$[0]') IN ('6553f100000000000011', "
	                 "'6553f100000000000012', '6553f100000000000013')"), 3);
	/* the billed old row counted at the open, the mark at the last old rowid; the new
	 * rows counted in the blocks' transaction */
	CHECK_INT(spend_mismatches(t.path), 0);
	CHECK_INT(spend_get(t.path, "k:4", "all", 0, "cost_nano"), 777);
	CHECK_INT(db_int(t.path, "SELECT last_rowid FROM spend_mark"), 12);

	/* the export merges them in started_at order, both ways */
	audit_query_init(&q);
	n = export_ids(t.path, &q, ids, N + 4);
	CHECK_INT(n, N);
	for (int i = 0; i < n && i < N; i++)
		CHECK_STR(ids[i], rows[i].id);
	free_ids(ids, n > 0 ? (n < N + 4 ? n : N + 4) : 0);
	q.newest_first = true;
	q.limit = 4;
	n = export_ids(t.path, &q, ids, N + 4);
	CHECK_INT(n, 4);
	for (int i = 0; i < n && i < 4; i++)
		CHECK_STR(ids[i], rows[N - 1 - i].id);
	free_ids(ids, n > 0 ? n : 0);
	audit_query_init(&q);           /* a time range across both */
	q.since = 1700000000.0 - 1.0;
	q.until = 1700000000.0 + 1.5;
	n = export_ids(t.path, &q, ids, N + 4);
	CHECK_INT(n, 4);
	for (int i = 0; i < n && i < 4; i++)
		CHECK_STR(ids[i], rows[1 + i].id);
	free_ids(ids, n > 0 ? n : 0);

	/* audit_get and the view find every one, old and new */
	for (int i = 0; i < N; i++) {
		CHECK_INT(audit_get(t.path, rows[i].id, &out, NULL), 1);
		CHECK_STR(out.request_id, rows[i].id);
		CHECK_INT(out.status, 400 + i);
		CHECK_STR(out.route, rows[i].rowid ? "chat" : "new");
		snprintf(sql, sizeof(sql), "SELECT count(*) FROM audit WHERE request_id = '%s' AND "
		         "started_at = %.17g AND status = %d", rows[i].id, 1700000000.0 + rows[i].dt,
		         400 + i);
		CHECK_INT(db_int(t.path, sql), 1);
	}
	CHECK_INT(audit_get(t.path, rows[2].id, &out, NULL), 1);
	CHECK_INT(out.cost_nano, 777);
	CHECK_STR(out.price_version, "p9");
	CHECK(out.billed);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit"), N);

	/* a row inserted into the view by hand goes on from the old rowids */
	db = raw_open(t.path);
	CHECK_INT(sqlite3_exec(db, "INSERT INTO audit (request_id, started_at, status, is_stream)"
	                       " VALUES ('by-hand', 1700000003, 200, 0)", NULL, NULL, NULL),
	          SQLITE_OK);
	CHECK_INT(raw_int(db, "SELECT rowid FROM audit_rows WHERE request_id = 'by-hand'"), 13);
	sqlite3_close(db);
	CHECK_DB_TEXT(t.path, "SELECT typeof(rowid) FROM audit WHERE request_id = 'by-hand'",
	              "null");                   /* the view has none */
	audit_record_clear(&out);
	tmpdb_remove(&t);
}

/* Ids carry the second they were made in, which is how a row is found without an index on
 * request_id; a row whose id does not (a spool written before, a hand-made record) raises
 * the bound up to which audit_get also looks row by row. */
TEST(a_row_is_found_by_the_second_its_id_carries)
{
	struct tmpdb t;
	struct audit *a;
	struct audit_record out = { 0 };
	char ids[3][REQID_LEN + 1];
	int64_t sec;
	double now = now_s();

	reqid_next(&test_ids, ids[0]);
	CHECK(reqid_second(ids[0], &sec));
	CHECK(sec >= (int64_t)now - 1 && sec <= (int64_t)now + 1);
	CHECK(!reqid_second("98a0cc6200000000000", &sec));     /* 19 digits */
	CHECK(!reqid_second("98a0cc620000000000012", &sec));   /* 21 */
	CHECK(!reqid_second("98A0CC62000000000001", &sec));    /* upper case is not ours */
	CHECK(!reqid_second("98a0cc6200000000000g", &sec));
	CHECK(!reqid_second("98a0cc62", &sec));                /* ends after the second */
	CHECK(!reqid_second("98a0", &sec));                    /* ends inside it */
	CHECK(!reqid_second("98a0-c6200000000000001", &sec));  /* not hex inside the second */
	CHECK(reqid_second("0000000f000000000001", &sec) && sec == 15);

	tmpdb_make(&t);
	a = open_ok(t.path, NULL);
	for (int i = 0; i < 3; i++) {
		struct audit_record *r = make_record("x", i, now + i * 0.001);
		if (i)
			reqid_next(&test_ids, ids[i]);
		free(r->request_id);
		r->request_id = dup_s(ids[i]);
		audit_submit(a, r);
	}
	CHECK(wait_depth(a, 0, 10));
	/* every id so far carries its time: nothing is looked for row by row */
	CHECK_INT(db_int(t.path, "SELECT until FROM audit_untimed_ids"), 0);
	/* an id from another second, as the old format would decode to */
	{
		struct audit_record *r = make_record("y", 1, now - 7200.5);
		free(r->request_id);
		r->request_id = dup_s("00000010000000000001");
		audit_submit(a, r);
	}
	audit_submit(a, make_record("z", 1, now));   /* not of the reqid form */
	audit_close(a);
	CHECK_INT(db_int(t.path, "SELECT CAST(until AS INTEGER) FROM audit_untimed_ids"),
	          (long long)(now - 7200.5));
	for (int i = 0; i < 3; i++) {
		CHECK_INT(audit_get(t.path, ids[i], &out, NULL), 1);
		CHECK_STR(out.request_id, ids[i]);
		CHECK_INT(out.bytes_in, 100 + i);
		audit_record_clear(&out);
	}
	/* stored (the view shows it), and found by audit_get */
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit WHERE request_id = "
	                 "'00000010000000000001' AND bytes_in = 101"), 1);
	CHECK_INT(audit_get(t.path, "00000010000000000001", &out, NULL), 1);
	CHECK_INT(out.bytes_in, 101);
	audit_record_clear(&out);
	CHECK_INT(audit_get(t.path, "00000010000000000002", &out, NULL), 0);
	CHECK_INT(audit_get(t.path, "z000001", &out, NULL), 1);
	audit_record_clear(&out);
	CHECK_INT(audit_get(t.path, "z000002", &out, NULL), 0);
	tmpdb_remove(&t);
}

TEST(open_refuses_a_newer_schema_and_a_missing_directory)
{
	struct tmpdb t;
	struct audit *a;
	char *err = NULL;
	char missing[200];
	sqlite3 *db;

	tmpdb_make(&t);
	a = open_ok(t.path, NULL);
	audit_close(a);
	db = raw_open(t.path);
	sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL);
	sqlite3_close(db);
	CHECK(audit_open(t.path, NULL, &err) == NULL);
	CHECK(err && strstr(err, "newer"));
	free(err);
	err = NULL;

	snprintf(missing, sizeof(missing), "%s/nope/audit.db", t.dir);
	CHECK(audit_open(missing, NULL, &err) == NULL);
	CHECK(err && strstr(err, "directory does not exist"));
	free(err);
	tmpdb_remove(&t);
}

/* ---- retention ---- */

TEST(retention_prunes_only_rows_older_than_the_limit_in_batches)
{
	struct tmpdb t;
	struct audit *a;
	double now = now_s(), until;
	long long left = -1;

	tmpdb_make(&t);
	a = open_ok(t.path, NULL);     /* retention 0: keep forever */
	for (int i = 0; i < 2500; i++) /* more than one prune batch */
		audit_submit(a, make_record("old", i, now - 10 * 86400.0 + i));
	for (int i = 0; i < 3; i++)
		audit_submit(a, make_record("edge", i, now - 6.9 * 86400.0 + i));
	for (int i = 0; i < 3; i++)
		audit_submit(a, make_record("new", i, now - i));
	audit_close(a);
	/* rows in the row table too (an older version's, or inserted by hand): more than one
	 * prune batch of them */
	hand_rows(t.path, "rold", 1500, now - 10 * 86400.0 + 0.5, 1, false);
	hand_rows(t.path, "redge", 3, now - 6.9 * 86400.0 + 0.5, 1, false);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit"), 2506 + 1503);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_rows"), 1503);

	a = open_ok(t.path, &(struct audit_options){ .retention_days = 7,
	                                             .prune_interval_ms = 50 });
	until = mono_s() + 10;
	while (mono_s() < until && (left = db_int(t.path, "SELECT count(*) FROM audit")) != 9)
		sleep_ms(20);
	audit_close(a);
	CHECK_INT(left, 9);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit WHERE request_id LIKE 'old%'"), 0);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit WHERE request_id LIKE 'edge%'"), 3);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit WHERE request_id LIKE 'new%'"), 3);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit WHERE request_id LIKE 'rold%'"), 0);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_rows WHERE request_id LIKE 'redge%'"),
	          3);
	tmpdb_remove(&t);
}

/* A reload hands the running writer a new retention: pruning starts (or stops) without a
 * restart. */
TEST(retention_set_at_run_time_prunes_from_then_on_and_0_stops_it)
{
	struct tmpdb t;
	struct audit *a;
	double now = now_s(), until;
	long long left = -1;

	tmpdb_make(&t);
	a = open_ok(t.path, &(struct audit_options){ .prune_interval_ms = 50 });   /* keep forever */
	for (int i = 0; i < 5; i++)
		audit_submit(a, make_record("old", i, now - 10 * 86400.0 + i));
	for (int i = 0; i < 3; i++)
		audit_submit(a, make_record("new", i, now - i));
	until = mono_s() + 10;
	while (mono_s() < until && (left = db_int(t.path, "SELECT count(*) FROM audit")) != 8)
		sleep_ms(20);
	CHECK_INT(left, 8);
	sleep_ms(200);   /* four prune intervals: nothing goes while retention is 0 */
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit"), 8);

	audit_set_retention(a, 7);
	until = mono_s() + 10;
	while (mono_s() < until && (left = db_int(t.path, "SELECT count(*) FROM audit")) != 3)
		sleep_ms(20);
	CHECK_INT(left, 3);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit WHERE request_id LIKE 'new%'"), 3);

	audit_set_retention(a, 0);
	for (int i = 5; i < 8; i++)
		audit_submit(a, make_record("old", i, now - 10 * 86400.0 + i));
	until = mono_s() + 10;
	while (mono_s() < until && (left = db_int(t.path, "SELECT count(*) FROM audit")) != 6)
		sleep_ms(20);
	sleep_ms(200);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit"), 6);
	audit_close(a);
	tmpdb_remove(&t);
}

/* Retention deletes a block only when every row in it has expired. A block's rows span at
 * most a second, so one whose first row has expired may still hold rows that have not:
 * here the rows of "mix" started from 0.02 s before the limit (at the open) to 0.97 s
 * after it, and the block stays, whole, while its last row is within the retention; once
 * that one has expired too, the block goes. A block of rows long expired goes at once, one
 * of recent rows stays. */
TEST(retention_deletes_a_block_only_when_all_its_rows_have_expired)
{
	struct tmpdb t;
	struct audit *a = NULL;
	sqlite3 *lock;
	double t0 = 0, until, now = 0, gone_at = 0;
	long long mixed = -1, old = -1, blocks = -1;
	int kept_while_live = 0, partial = 0;

	/* The "mix" rows must make one block: they do unless the writer took them in two
	 * goes, or the machine was so slow that their last row expired before they were
	 * written (both seen right after the commit); then the run is made again. None of the
	 * mix rows there right after the commit, while its last is live: a failure. */
	for (int attempt = 0; attempt < 5; attempt++) {
		if (attempt) {
			fprintf(stderr, "  note: mix rows in %lld blocks, %.3f s after t0; again\n",
			        blocks, now - t0);
			audit_close(a);
			tmpdb_remove(&t);
		}
		tmpdb_make(&t);
		a = open_ok(t.path, &(struct audit_options){ .retention_days = 7,
		                                             .prune_interval_ms = 20,
		                                             .busy_timeout_ms = 20 });
		lock = lock_db(t.path);     /* held until all are in */
		t0 = now_s();
		for (int k = 0; k < 10; k++) {
			audit_submit(a, make_record("old", k, t0 - 7 * 86400.0 - 30 + k * 0.1));
			audit_submit(a, make_record("mix", k, t0 - 7 * 86400.0 - 0.02 + k * 0.11));
			audit_submit(a, make_record("new", k, t0 - 86400.0 + k * 0.1));
		}
		unlock_db_as_one_batch(lock);
		CHECK(wait_depth(a, 0, 10));     /* committed (and maybe pruned in the same step) */
		blocks = db_int(t.path, "SELECT count(DISTINCT b.id) FROM audit_block b, "
		                "json_each(b.rows) j WHERE json_extract(j.value, '$[0]') LIKE 'mix%'");
		now = now_s();
		if (blocks == 1 || (blocks == 0 && now < t0 + 0.97))
			break;
	}
	until = mono_s() + 10;
	while (mono_s() < until) {
		old = db_int(t.path, "SELECT count(*) FROM audit WHERE request_id LIKE 'old%'");
		mixed = db_int(t.path, "SELECT count(*) FROM audit WHERE request_id LIKE 'mix%'");
		now = now_s();
		if (mixed != 0 && mixed != 10)
			partial++;
		/* the expired block gone, the mixed one there while its last row is live */
		if (old == 0 && mixed == 10 && now < t0 + 0.97)
			kept_while_live++;
		if (mixed == 0) {
			gone_at = now;
			break;
		}
		sleep_ms(10);
	}
	audit_close(a);
	CHECK_INT(partial, 0);
	CHECK(kept_while_live > 0);
	if (!kept_while_live)
		fprintf(stderr, "  the mixed block was never seen kept while its last row was live "
		        "(gone %.3f s after t0)\n", gone_at - t0);
	CHECK(gone_at > t0 + 0.97);          /* not before its last row expired */
	CHECK_INT(mixed, 0);                 /* but then */
	CHECK_INT(old, 0);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit WHERE request_id LIKE 'new%'"), 10);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_block"), 1);
	tmpdb_remove(&t);
}

/* ---- spend counters ---- */

/* The counters as they should be, from the billed rows of the audit table, computed by
 * SQLite's own date functions (not audit.c's): a key's and its user's requests, tokens
 * and cost for all time, per day and per month. */
#define SPEND_EXPECTED \
	"WITH b AS (SELECT key_id, user_id, started_at," \
	"  max(coalesce(prompt_tokens, 0), 0) + max(coalesce(completion_tokens, 0), 0) AS tok," \
	"  max(coalesce(cost_nano, 0), 0) AS cost FROM audit WHERE billed = 1 AND key_id > 0)," \
	" s AS (SELECT 'k:' || key_id AS scope, started_at, tok, cost FROM b" \
	"  UNION ALL SELECT 'u:' || user_id, started_at, tok, cost FROM b WHERE user_id > 0)," \
	" e AS (SELECT scope, 'all' AS period, 0 AS start, count(*) AS requests," \
	"  sum(tok) AS tokens, sum(cost) AS cost_nano FROM s GROUP BY scope" \
	"  UNION ALL SELECT scope, 'day', CAST(started_at / 86400 AS INTEGER) * 86400, count(*)," \
	"  sum(tok), sum(cost) FROM s GROUP BY 1, 3" \
	"  UNION ALL SELECT scope, 'month', CAST(strftime('%s', started_at, 'unixepoch'," \
	"  'start of month') AS INTEGER), count(*), sum(tok), sum(cost) FROM s GROUP BY 1, 3) "

/* Counter rows that differ from what the billed rows add up to, both ways (0: they
 * agree); the first few are shown. */
static long long spend_mismatches(const char *path)
{
	sqlite3 *db = raw_open(path);
	sqlite3_stmt *st = NULL;
	long long n = 0;

	if (sqlite3_prepare_v2(db, SPEND_EXPECTED "SELECT 'expected', * FROM (SELECT * FROM e "
	                       "EXCEPT SELECT * FROM spend) UNION ALL SELECT 'counted', * FROM "
	                       "(SELECT * FROM spend EXCEPT SELECT * FROM e)", -1, &st, NULL) !=
	    SQLITE_OK) {
		fprintf(stderr, "  spend_mismatches: %s\n", sqlite3_errmsg(db));
		n = -1;
	}
	while (st && sqlite3_step(st) == SQLITE_ROW)
		if (n++ < 6)
			fprintf(stderr, "  %s: %s %s %lld requests %lld tokens %lld cost %lld\n",
			        sqlite3_column_text(st, 0), sqlite3_column_text(st, 1),
			        sqlite3_column_text(st, 2), (long long)sqlite3_column_int64(st, 3),
			        (long long)sqlite3_column_int64(st, 4),
			        (long long)sqlite3_column_int64(st, 5),
			        (long long)sqlite3_column_int64(st, 6));
	sqlite3_finalize(st);
	sqlite3_close(db);
	return n;
}

/* The whole spend table as text, in order, for before/after comparisons; caller frees. */
static char *spend_text(const char *path)
{
	sqlite3 *db = raw_open(path);
	sqlite3_stmt *st = NULL;
	char *out = NULL;

	if (sqlite3_prepare_v2(db, "SELECT group_concat(x, ';') FROM (SELECT scope || ',' || period"
	                       " || ',' || start || ',' || requests || ',' || tokens || ',' || "
	                       "cost_nano AS x FROM spend ORDER BY scope, period, start)", -1, &st,
	                       NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW &&
	    sqlite3_column_text(st, 0))
		out = dup_s((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	sqlite3_close(db);
	return out ? out : dup_s("");
}

static long long spend_get(const char *path, const char *scope, const char *period,
                           long long start, const char *what)
{
	char sql[256];

	snprintf(sql, sizeof(sql), "SELECT coalesce((SELECT %s FROM spend WHERE scope = '%s' AND "
	         "period = '%s' AND start = %lld), -1)", what, scope, period, start);
	return db_int(path, sql);
}

#define DEC_1 1796083200LL      /* 2026-12-01T00:00:00Z */
#define NOV_1 1793491200LL
#define NOV_30 1795996800LL

/* What audit_spend_load reported, as "scope:id,period,start,requests,tokens,cost" lines. */
struct loaded {
	char rows[256][96];
	int n;
};

static void collect(void *arg, const struct spend_row *r)
{
	struct loaded *l = arg;
	static const char *const names[] = { "all", "day", "month" };

	if (l->n < 256)
		snprintf(l->rows[l->n++], sizeof(l->rows[0]), "%c:%lld,%s,%lld,%lld,%lld,%lld",
		         r->scope, (long long)r->id, names[r->period], (long long)r->start,
		         (long long)r->requests, (long long)r->tokens, (long long)r->cost_nano);
}

static int cmp_line(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* The loaded rows in the order spend_text lists the table's, joined the same way. */
static char *loaded_text(struct loaded *l)
{
	size_t cap = 1, n = 0;
	char *s;

	qsort(l->rows, (size_t)l->n, sizeof(l->rows[0]), cmp_line);
	for (int i = 0; i < l->n; i++)
		cap += strlen(l->rows[i]) + 1;
	s = calloc(1, cap);
	for (int i = 0; i < l->n; i++)
		n += (size_t)snprintf(s + n, cap - n, "%s%s", i ? ";" : "", l->rows[i]);
	return s;
}

/* 3000 records, one a second across midnight into December, in batches of 100: the
 * counters of every key and user, for all time, both days and both months, equal what
 * the billed rows add up to; rows billed without a key, and unbilled rows, count nowhere. */
TEST(spend_counters_equal_the_billed_rows_across_batches_days_and_months)
{
	struct tmpdb t;
	struct audit *a;
	struct loaded *l = calloc(1, sizeof(*l));
	char *table, *loaded;
	long long k1 = 0, k1_tok = 0, k1_cost = 0;
	char *err = NULL;

	tmpdb_make(&t);
	a = open_ok(t.path, &(struct audit_options){ .batch_size = 100 });
	for (int i = 0; i < 3000; i++) {
		struct audit_record *r = make_record("s", i, (double)DEC_1 - 1500 + i + 0.25);

		if (i % 97 == 0)
			r->key_id = 0;           /* a billed row without a key: nothing to count */
		if (i % 11 == 0)
			r->prompt_tokens = -1;   /* unknown counts as none */
		if (r->billed && r->key_id == 1) {
			k1++;
			k1_tok += (r->prompt_tokens > 0 ? r->prompt_tokens : 0) + r->completion_tokens;
			k1_cost += r->cost_nano > 0 ? r->cost_nano : 0;
		}
		audit_submit(a, r);
	}
	CHECK(wait_depth(a, 0, 30));
	CHECK_INT(spend_mismatches(t.path), 0);     /* before close: every commit agrees */
	CHECK_INT(audit_spend_load(a, 0, collect, l, &err), 0);
	audit_close(a);
	CHECK_INT(spend_mismatches(t.path), 0);

	CHECK(k1 > 400);
	CHECK_INT(spend_get(t.path, "k:1", "all", 0, "requests"), k1);
	CHECK_INT(spend_get(t.path, "k:1", "all", 0, "tokens"), k1_tok);
	CHECK_INT(spend_get(t.path, "k:1", "all", 0, "cost_nano"), k1_cost);
	CHECK_INT(spend_get(t.path, "k:1", "day", NOV_30, "requests") +
	          spend_get(t.path, "k:1", "day", DEC_1, "requests"), k1);
	CHECK_INT(spend_get(t.path, "k:1", "month", NOV_1, "requests") +
	          spend_get(t.path, "k:1", "month", DEC_1, "requests"), k1);
	CHECK(spend_get(t.path, "u:100", "month", NOV_1, "requests") > 0);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM spend WHERE scope = 'k:0' OR scope = 'u:0'"),
	          0);
	/* 3 keys and 2 users, each with 1 + 2 days + 2 months */
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM spend"), 25);
	/* the rows are in blocks, counted as they were written; the mark (in the row table's
	 * rowids) covers every row there is there: none */
	CHECK_INT(db_int(t.path, "SELECT sum(n) FROM audit_block"), 3000);
	CHECK_INT(db_int(t.path, "SELECT coalesce(max(rowid), 0) FROM audit_rows"), 0);
	CHECK_INT(db_int(t.path, "SELECT last_rowid FROM spend_mark"), 0);

	/* what the daemon loads at start is the table */
	table = spend_text(t.path);
	loaded = loaded_text(l);
	CHECK_STR(loaded, table);
	free(loaded);
	free(table);

	/* since December: November's day and month are over, and may be left out */
	a = open_ok(t.path, NULL);
	l->n = 0;
	CHECK_INT(audit_spend_load(a, DEC_1, collect, l, &err), 0);
	audit_close(a);
	CHECK_INT(l->n, 15);
	for (int i = 0; i < l->n; i++)
		CHECK(strstr(l->rows[i], ",1795996800,") == NULL &&
		      strstr(l->rows[i], ",1793491200,") == NULL);
	/* since 2027: December is over too (its month ends on January 1st): all time only */
	a = open_ok(t.path, NULL);
	l->n = 0;
	CHECK_INT(audit_spend_load(a, 1798761600, collect, l, &err), 0);
	audit_close(a);
	CHECK_INT(l->n, 5);
	for (int i = 0; i < l->n; i++)
		CHECK(strstr(l->rows[i], ",all,0,") != NULL);
	free(err);
	free(l);
	tmpdb_remove(&t);
}

/* The spool's records are counted when they reach the database, once: a line whose row is
 * there already (a replay cut short) is skipped and not counted again; and the daemon's
 * start waits for the spool before it loads the counters. */
TEST(spend_counters_count_a_replayed_spool_once)
{
	struct tmpdb t;
	struct audit *a;
	struct audit_options opt = { .mem_cap = 1000, .busy_timeout_ms = 20,
	                             .close_wait_ms = 300 };
	struct loaded *l = calloc(1, sizeof(*l));
	sqlite3 *lock;
	long long want = 0;
	FILE *f;

	tmpdb_make(&t);
	a = open_ok(t.path, &opt);
	lock = lock_db(t.path);
	for (int i = 0; i < 200; i++) {
		struct audit_record *r = make_record("r", i, 1.7e9 + i);

		want += r->billed && r->key_id == 2;
		audit_submit(a, r);
	}
	audit_close(a);             /* still locked: all 200 in the spool */
	unlock_db(lock);
	CHECK_INT(count_lines(t.spool), 200);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM spend"), 0);

	/* a line the database has already, as if the last replay was cut off after its
	 * commit: r000001 (billed, key 2) */
	f = fopen(t.spool, "a");
	fputs("{\"v\":1,\"request_id\":\"r000001\",\"started_at\":1700000001,\"key_id\":2,"
	      "\"status\":200,\"prompt_tokens\":11,\"completion_tokens\":22,\"cost_nano\":5,"
	      "\"billed\":true}\n", f);
	fclose(f);

	a = open_ok(t.path, &opt);
	CHECK_INT(audit_spend_load(a, 0, collect, l, NULL), 0);   /* waits for the replay */
	CHECK_INT(audit_queue_depth(a), 0);
	audit_close(a);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit"), 200);
	CHECK_INT(spend_mismatches(t.path), 0);
	CHECK_INT(spend_get(t.path, "k:2", "all", 0, "requests"), want);
	{
		char want_row[64];
		bool found = false;

		snprintf(want_row, sizeof(want_row), "k:2,all,0,%lld,", want);
		for (int i = 0; i < l->n; i++)
			found |= strncmp(l->rows[i], want_row, strlen(want_row)) == 0;
		CHECK(found);
	}
	free(l);
	tmpdb_remove(&t);
}

/* Billed rows that the writer did not insert (sqlite3, an older build) are counted at the
 * next open, or by the writer's next batch while it runs; audit_spend_load includes them
 * even before either has happened, and never twice. */
TEST(spend_counters_catch_up_with_rows_inserted_behind_the_writer)
{
	struct tmpdb t;
	struct audit *a;
	struct loaded *l = calloc(1, sizeof(*l));
	char *table, *loaded;
	sqlite3 *db;

#define HAND_ROW(id, key, user, t0, cost) \
	"INSERT INTO audit (request_id, started_at, key_id, user_id, status, is_stream," \
	" prompt_tokens, completion_tokens, cost_nano, billed) VALUES ('" id "', " #t0 ", " \
	#key ", " #user ", 200, 0, 100, 20, " #cost ", 1);"
	tmpdb_make(&t);
	a = open_ok(t.path, NULL);
	for (int i = 0; i < 50; i++)
		audit_submit(a, make_record("w", i, 1.7e9 + i));
	audit_close(a);
	CHECK_INT(spend_mismatches(t.path), 0);

	db = raw_open(t.path);
	CHECK_INT(sqlite3_exec(db, HAND_ROW("hand1", 7, 70, 1700000100.5, 1000000001)
	                           HAND_ROW("hand2", 7, 0, 1700086500, 3), NULL, NULL, NULL),
	          SQLITE_OK);
	sqlite3_close(db);
	CHECK_INT(spend_mismatches(t.path), 4 + 3);   /* k:7: all, 2 days, 1 month; u:70 */
	/* through the view's trigger into the row table, whose rowids the mark counts in (the
	 * writer's 50 rows are in blocks) */
	CHECK_INT(db_int(t.path, "SELECT rowid FROM audit_rows WHERE request_id = 'hand1'"), 1);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_rows"), 2);
	CHECK_INT(db_int(t.path, "SELECT rowid FROM audit_rows WHERE request_id = 'hand2'"), 2);
	CHECK_INT(db_int(t.path, "SELECT last_rowid FROM spend_mark"), 0);

	a = open_ok(t.path, NULL);                    /* counted at open */
	CHECK_INT(spend_mismatches(t.path), 0);
	CHECK_INT(db_int(t.path, "SELECT last_rowid FROM spend_mark"), 2);
	CHECK_INT(spend_get(t.path, "k:7", "all", 0, "requests"), 2);
	CHECK_INT(spend_get(t.path, "k:7", "all", 0, "tokens"), 240);
	CHECK_INT(spend_get(t.path, "k:7", "all", 0, "cost_nano"), 1000000004LL);
	CHECK_INT(spend_get(t.path, "u:70", "all", 0, "cost_nano"), 1000000001LL);

	/* behind the running writer: load sees it at once, the next batch counts it */
	db = raw_open(t.path);
	CHECK_INT(sqlite3_exec(db, HAND_ROW("hand3", 8, 80, 1700000200, 42), NULL, NULL, NULL),
	          SQLITE_OK);
	CHECK_INT(raw_int(db, "SELECT rowid FROM audit_rows WHERE request_id = 'hand3'"), 3);
	sqlite3_close(db);
	CHECK_INT(audit_spend_load(a, 0, collect, l, NULL), 0);
	{
		bool found = false;

		for (int i = 0; i < l->n; i++)
			found |= strcmp(l->rows[i], "k:8,all,0,1,120,42") == 0;
		CHECK(found);
	}
	audit_submit(a, make_record("w", 50, 1.7e9 + 50));
	CHECK(wait_depth(a, 0, 10));
	CHECK_INT(spend_mismatches(t.path), 0);
	CHECK_INT(spend_get(t.path, "u:80", "all", 0, "cost_nano"), 42);
	CHECK_INT(db_int(t.path, "SELECT last_rowid FROM spend_mark"), 3);
	l->n = 0;
	CHECK_INT(audit_spend_load(a, 0, collect, l, NULL), 0);
	audit_close(a);
	table = spend_text(t.path);                   /* counted once: load is the table */
	loaded = loaded_text(l);
	CHECK_STR(loaded, table);
	free(loaded);
	free(table);
	free(l);
	tmpdb_remove(&t);
}

/* Retention deletes rows, not what they cost: the counters stay as they were, for the rows
 * of blocks and of the row table alike. When every row of the row table is gone, the mark
 * comes down with them: a row inserted by hand afterwards (rowid 1 again) is still
 * counted. */
TEST(pruning_rows_leaves_the_spend_counters_alone)
{
	struct tmpdb t;
	struct audit *a;
	double now = now_s(), until;
	char *before, *after;
	long long left = -1;
	sqlite3 *db;

	tmpdb_make(&t);
	a = open_ok(t.path, NULL);
	for (int i = 0; i < 1500; i++)
		audit_submit(a, make_record("old", i, now - 20 * 86400.0 + i));
	audit_close(a);
	/* and 300 billed rows in the row table, inserted behind the writer: counted at the
	 * next open, which moves the mark to their last rowid */
	hand_rows(t.path, "hand", 300, now - 19 * 86400.0, 1, true);
	audit_close(open_ok(t.path, NULL));
	CHECK_INT(spend_mismatches(t.path), 0);
	CHECK_INT(db_int(t.path, "SELECT last_rowid FROM spend_mark"), 300);
	CHECK(db_int(t.path, "SELECT count(*) FROM audit_block") > 0);
	before = spend_text(t.path);
	CHECK(strlen(before) > 0);

	a = open_ok(t.path, &(struct audit_options){ .retention_days = 7,
	                                             .prune_interval_ms = 50 });
	until = mono_s() + 10;
	while (mono_s() < until && (left = db_int(t.path, "SELECT count(*) FROM audit")) != 0)
		sleep_ms(20);
	audit_close(a);
	CHECK_INT(left, 0);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_rows"), 0);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_block"), 0);
	after = spend_text(t.path);
	CHECK_STR(after, before);
	CHECK_INT(db_int(t.path, "SELECT last_rowid FROM spend_mark"), 0);

	db = raw_open(t.path);
	CHECK_INT(sqlite3_exec(db, HAND_ROW("late", 9, 0, 1700000000, 7), NULL, NULL, NULL),
	          SQLITE_OK);
	CHECK_INT(raw_int(db, "SELECT rowid FROM audit_rows WHERE request_id = 'late'"), 1);
	sqlite3_close(db);
	a = open_ok(t.path, NULL);
	audit_close(a);
	CHECK_INT(spend_get(t.path, "k:9", "all", 0, "cost_nano"), 7);
	free(before);
	free(after);
	tmpdb_remove(&t);
#undef HAND_ROW
}

/* A writer killed (SIGKILL) at any moment leaves rows and counters that agree: they are
 * committed together. */
TEST(spend_counters_and_rows_agree_after_sigkill)
{
	struct tmpdb t;
	pid_t pid;
	int status = 0;

	tmpdb_make(&t);
	pid = fork();
	if (pid == 0) {
		struct audit *a = audit_open(t.path, &(struct audit_options){ .batch_size = 50 },
		                             NULL);

		for (int i = 0; a; i++) {
			audit_submit(a, make_record("k", i, 1.7e9 + i * 0.01));
			if (i % 50 == 0)
				sleep_ms(1);
		}
		_exit(1);
	}
	CHECK(pid > 0);
	sleep_ms(700);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	CHECK(db_int(t.path, "SELECT count(*) FROM audit") > 0);
	CHECK_INT(spend_mismatches(t.path), 0);       /* as the kill left them */
	audit_close(open_ok(t.path, NULL));
	CHECK_INT(spend_mismatches(t.path), 0);
	tmpdb_remove(&t);
}

/* ---- read side ---- */

/* 40 rows at t0 + i: key 1+i%3, route qwen3 (odd) / gpt (even), status 200, 404 every
 * 5th, 502 every 7th (timeout), 599 at 37, 429 at 38, no key and 401 at 39; streams on
 * odd rows. */
static void fill_for_queries(const char *path, double t0)
{
	struct audit *a = open_ok(path, NULL);

	for (int i = 0; i < 40; i++) {
		struct audit_record *r = make_record("q", i, t0 + i);
		if (i % 5 == 0)
			r->status = 404;
		if (i % 7 == 0) {
			r->status = 502;
			r->error = dup_s("timeout");
		}
		if (i == 37)
			r->status = 599;
		if (i == 38)
			r->status = 429;
		if (i == 39) {
			r->key_id = 0;
			free(r->key_name);
			r->key_name = NULL;
			r->status = 401;
		}
		audit_submit(a, r);
	}
	audit_close(a);
}

/* Run a query; returns the row count and writes the row indexes (from the ids) to idx. */
static int run_query(const char *path, const struct audit_query *q, int *idx, int cap)
{
	char *err = NULL;
	struct audit_cursor *c = audit_query_open(path, q, &err);
	struct audit_record r = { 0 };
	int n = 0, rc;

	if (!c) {
		fprintf(stderr, "  audit_query_open: %s\n", err);
		free(err);
		return -1;
	}
	while ((rc = audit_cursor_next(c, &r)) == 1) {
		if (n < cap)
			idx[n] = atoi(r.request_id + 1);
		n++;
	}
	if (rc < 0)
		fprintf(stderr, "  audit_cursor_next: %s\n", audit_cursor_error(c));
	audit_record_clear(&r);
	audit_cursor_close(c);
	return rc < 0 ? -1 : n;
}

/* a text column that may be NULL: equal to want, or NULL when want is */
#define CHECK_OPT_STR(got, want) do { const char *w_ = (want); \
	if (w_) CHECK_STR(got, w_); else CHECK((got) == NULL); } while (0)

/* The times of field_record(i), by i % 4: digits past what a block keeps (started_at to the
 * microsecond, latency_ms and ttfb_ms to three decimals), and what a block gives back (the
 * decimals it stores, rounded half away from zero). ttfb -1: unknown (NULL). */
static const double frac_in[4] = { 0.1234567, 0.0000003, 0.9999997, 0.25 };
static const long long frac_us[4] = { 123457, 0, 1000000, 250000 };
static const double lat_in[4] = { 12.3456789, 0.0004, 10.0005001, 60000.5 };
static const char *const lat_want[4] = { "12.346", "0.000", "10.001", "60000.500" };
static const double ttfb_in[4] = { 1.25, -1, 3.0004999, 0.0016 };
static const char *const ttfb_want[4] = { "1.250", NULL, "3.000", "0.002" };

/* A record with every field set from i: make_record's, other statuses, counts and
 * retries, an error in every fifth, bodies in rows 40..79; in every tenth, strings JSON
 * must escape (quote, backslash, control characters), bytes that are not UTF-8 and
 * integers past 2^53. */
static struct audit_record *field_record(int i)
{
	struct audit_record *x = make_record("f", i, 1700000000.0 + 2 * i + frac_in[i % 4]);
	char buf[128];

	x->latency_ms = lat_in[i % 4];
	x->ttfb_ms = ttfb_in[i % 4];
	x->status = 200 + i;
	x->prompt_tokens = 1000 + i;
	x->completion_tokens = 2000 + i;
	x->retries = i % 4;
	if (i % 5 == 0) {
		snprintf(buf, sizeof(buf), "error-%d", i);
		x->error = dup_s(buf);
	}
	if (i >= 40 && i < 80) {
		snprintf(buf, sizeof(buf), "{\"q\":%d}", i);
		x->request_body = dup_s(buf);
		snprintf(buf, sizeof(buf), "{\"a\":%d}", i);
		x->response_body = dup_s(buf);
	}
	if (i % 10 == 3) {
		free(x->key_name);
		x->key_name = dup_s("q\"uo\\te");
		free(x->path);
		x->path = dup_s("/a\nb\tc\rd\x01\x1f/e");
		free(x->model);
		x->model = dup_s("bad \xff\xfe bytes, ünï 😀");
		x->bytes_out = 9007199254740993LL;           /* 2^53 + 1 */
		x->cost_nano = 9007199254740993LL;
	}
	return x;
}

/* Every field of field_record(0..n-1) read back through the export, in order: started_at,
 * latency_ms and ttfb_ms as a block stores them (rounded), or as they went in. */
static void check_every_field(const char *path, int n, bool rounded)
{
	struct audit_cursor *c;
	struct audit_record r = { 0 };
	char *err = NULL, buf[128];
	int seen = 0;

	CHECK((c = audit_query_open(path, NULL, &err)) != NULL);
	while (c && audit_cursor_next(c, &r) == 1) {
		int i = seen++;
		bool bodies = i >= 40 && i < 80, odd = i % 10 == 3;
		struct audit_record *x = field_record(i);
		long long us = frac_us[i % 4];
		double want_t, want_lat, want_ttfb;

		snprintf(buf, sizeof(buf), "f%06d", i);
		CHECK_STR(r.request_id, buf);
		if (rounded) {
			/* the decimals as a block stores them, read as C reads them */
			snprintf(buf, sizeof(buf), "%lld.%06lld", 1700000000LL + 2 * i + us / 1000000,
			         us % 1000000);
			want_t = strtod(buf, NULL);
			want_lat = strtod(lat_want[i % 4], NULL);
			want_ttfb = ttfb_want[i % 4] ? strtod(ttfb_want[i % 4], NULL) : -1;
		} else {
			want_t = x->started_at;
			want_lat = x->latency_ms;
			want_ttfb = x->ttfb_ms;
		}
		if (r.started_at != want_t || r.latency_ms != want_lat || r.ttfb_ms != want_ttfb) {
			unit_failed_checks++;
			fprintf(stderr, "  %s: started_at %.9f latency_ms %.9f ttfb_ms %.9f, expected "
			        "%.9f %.9f %.9f\n", r.request_id, r.started_at, r.latency_ms, r.ttfb_ms,
			        want_t, want_lat, want_ttfb);
		}
		CHECK_INT(r.key_id, 1 + i % 3);
		snprintf(buf, sizeof(buf), "key-%d", 1 + i % 3);
		CHECK_STR(r.key_name, odd ? "q\"uo\\te" : buf);
		CHECK_STR(r.client_ip, "127.0.0.1");
		CHECK_STR(r.method, "POST");
		CHECK_STR(r.path, odd ? "/a\nb\tc\rd\x01\x1f/e" : "/v1/chat/completions");
		CHECK_STR(r.route, i % 2 ? "qwen3" : "gpt");
		CHECK_STR(r.upstream, "http://10.0.0.5:3398/v1/chat/completions");
		CHECK_INT(r.status, 200 + i);
		CHECK_INT(r.is_stream, i % 2);
		CHECK_INT(r.chunks, i % 7);
		CHECK_INT(r.bytes_in, 100 + i);
		CHECK_INT(r.bytes_out, odd ? 9007199254740993LL : 1000 + i);
		CHECK_STR(r.model, odd ? "bad \xff\xfe bytes, ünï 😀" : "Qwen3-8B");
		CHECK_INT(r.prompt_tokens, 1000 + i);
		CHECK_INT(r.completion_tokens, 2000 + i);
		CHECK_INT(r.cached_tokens, cached_for(i));
		CHECK_INT(r.cache_write_tokens, cache_write_for(i));
		CHECK_INT(r.reasoning_tokens, reasoning_for(i));
		CHECK_INT(r.retries, i % 4);
		CHECK_INT(r.user_id, user_for(i));
		CHECK_INT(r.cost_nano, odd ? 9007199254740993LL : cost_for(i));
		CHECK_OPT_STR(r.price_version, price_version_for(i));
		CHECK_INT(r.estimated, estimated_for(i));
		CHECK_INT(r.billed, billed_for(i));
		CHECK_INT(r.unpriced, unpriced_for(i));
		CHECK_OPT_STR(r.attempts, attempts_for(i, buf, sizeof(buf)));
		CHECK_OPT_STR(r.upstream_request_id, x->upstream_request_id);
		snprintf(buf, sizeof(buf), "error-%d", i);
		CHECK_OPT_STR(r.error, i % 5 == 0 ? buf : NULL);
		snprintf(buf, sizeof(buf), "{\"q\":%d}", i);
		CHECK_OPT_STR(r.request_body, bodies ? buf : NULL);
		snprintf(buf, sizeof(buf), "{\"a\":%d}", i);
		CHECK_OPT_STR(r.response_body, bodies ? buf : NULL);
		audit_record_free(x);
	}
	CHECK_INT(seen, n);
	audit_record_clear(&r);
	audit_cursor_close(c);
	free(err);
}

/* The writer stores a batch as blocks: every field of every row comes back as it went in
 * (times as a block keeps them), with or without bodies. Rows of the row table (here: every
 * block refused by a trigger, so the writer falls back to inserting its rows one by one)
 * come back whole, times too. */
TEST(every_field_survives_the_block_encoding_and_the_row_table)
{
	enum { N = 110 };
	struct tmpdb t[2];
	struct audit *a;
	sqlite3 *db;

	for (int k = 0; k < 2; k++) {
		tmpdb_make(&t[k]);
		a = open_ok(t[k].path, NULL);
		if (k == 1) {
			audit_close(a);
			db = raw_open(t[1].path);
			CHECK_INT(sqlite3_exec(db, "CREATE TRIGGER no_blocks BEFORE INSERT ON audit_block "
			                       "BEGIN SELECT RAISE(ABORT, 'no blocks'); END;",
			                       NULL, NULL, NULL), SQLITE_OK);
			sqlite3_close(db);
			a = open_ok(t[1].path, NULL);
		}
		for (int i = 0; i < N; i++)
			audit_submit(a, field_record(i));
		audit_close(a);
	}
	CHECK_INT(db_int(t[0].path, "SELECT count(*) FROM audit_rows"), 0);
	CHECK_INT(db_int(t[0].path, "SELECT sum(n) FROM audit_block"), N);
	CHECK_INT(check_blocks(t[0].path), 0);
	/* stored as the decimals a block keeps: f000000's started_at, latency, ttfb */
	CHECK_DB_TEXT(t[0].path, "SELECT substr(rows, 1, 40) FROM audit_block ORDER BY id LIMIT 1",
	              "[[\"f000000\",1700000000.123457,1,\"key-1\",");
	CHECK_DB_TEXT(t[0].path, "SELECT json_extract(j.value, '$[10]') || ' ' || "
	              "json_extract(j.value, '$[11]') FROM audit_block b, json_each(b.rows) j "
	              "WHERE json_extract(j.value, '$[0]') = 'f000000'", "12.346 1.25");
	check_every_field(t[0].path, N, true);

	CHECK_INT(db_int(t[1].path, "SELECT count(*) FROM audit_rows"), N);
	CHECK_INT(db_int(t[1].path, "SELECT count(*) FROM audit_block"), 0);
	check_every_field(t[1].path, N, false);
	tmpdb_remove(&t[0]);
	tmpdb_remove(&t[1]);
}

TEST(query_filters_by_time_key_route_status_class_stream_and_error)
{
	struct tmpdb t;
	struct audit_query q;
	double t0 = 1700000000.0;
	int idx[64], n, expect;

	tmpdb_make(&t);
	fill_for_queries(t.path, t0);

	audit_query_init(&q);
	CHECK_INT(run_query(t.path, &q, idx, 64), 40);

	audit_query_init(&q);          /* since inclusive, until exclusive */
	q.since = t0 + 10;
	q.until = t0 + 20;
	n = run_query(t.path, &q, idx, 64);
	CHECK_INT(n, 10);
	CHECK_INT(idx[0], 10);
	CHECK_INT(idx[9], 19);

	audit_query_init(&q);
	q.key_id = 2;
	n = run_query(t.path, &q, idx, 64);
	for (int i = 0; i < n; i++)
		CHECK_INT(idx[i] % 3, 1);
	CHECK_INT(n, 13);              /* i%3 == 1 for i < 39 */

	audit_query_init(&q);
	q.key_id = 0;                  /* requests without a key */
	n = run_query(t.path, &q, idx, 64);
	CHECK_INT(n, 1);
	CHECK_INT(idx[0], 39);

	audit_query_init(&q);
	q.user_id = 101;               /* odd rows but every fifth */
	n = run_query(t.path, &q, idx, 64);
	CHECK_INT(n, 16);
	for (int i = 0; i < n && i < 64; i++)
		CHECK(idx[i] % 2 == 1 && idx[i] % 5 != 0);
	q.user_id = 0;                 /* requests without a user */
	n = run_query(t.path, &q, idx, 64);
	CHECK_INT(n, 8);
	for (int i = 0; i < n && i < 64; i++)
		CHECK_INT(idx[i] % 5, 0);
	q.user_id = 100;
	q.key_id = 1;                  /* with the key filter: both hold */
	n = run_query(t.path, &q, idx, 64);
	for (int i = 0; i < n && i < 64; i++)
		CHECK(idx[i] % 2 == 0 && idx[i] % 5 != 0 && idx[i] % 3 == 0);
	CHECK_INT(n, 5);               /* 6, 12, 18, 24, 36 (0 and 30 have no user) */

	audit_query_init(&q);
	q.route = "qwen3";
	q.is_stream = 1;
	CHECK_INT(run_query(t.path, &q, idx, 64), 20);
	q.is_stream = 0;
	CHECK_INT(run_query(t.path, &q, idx, 64), 0);

	audit_query_init(&q);
	q.status = 404;
	expect = 0;
	for (int i = 0; i < 39; i++)
		expect += i % 5 == 0 && i % 7 != 0;
	CHECK_INT(run_query(t.path, &q, idx, 64), expect);

	audit_query_init(&q);
	q.status = 4;                  /* the 4xx class: 404s, the 429 and the 401 */
	CHECK_INT(run_query(t.path, &q, idx, 64), expect + 2);
	q.status = 5;
	n = run_query(t.path, &q, idx, 64);
	CHECK_INT(n, 7);               /* 0, 7, 14, 21, 28, 35 and the 599 */
	CHECK_INT(idx[6], 37);
	q.status = 599;
	CHECK_INT(run_query(t.path, &q, idx, 64), 1);

	audit_query_init(&q);
	q.error = "timeout";
	CHECK_INT(run_query(t.path, &q, idx, 64), 6);
	q.error = "";                  /* any error */
	CHECK_INT(run_query(t.path, &q, idx, 64), 6);
	q.error = "reset";
	CHECK_INT(run_query(t.path, &q, idx, 64), 0);

	audit_query_init(&q);
	q.status = 42;
	{
		char *err = NULL;
		CHECK(audit_query_open(t.path, &q, &err) == NULL);
		CHECK(err && strstr(err, "status filter 42"));
		free(err);
	}
	tmpdb_remove(&t);
}

TEST(query_returns_rows_in_started_at_order_with_limit_and_newest_first)
{
	struct tmpdb t;
	struct audit *a;
	struct audit_query q;
	int idx[16], n;

	tmpdb_make(&t);
	a = open_ok(t.path, NULL);
	/* submitted out of time order: the export is still in time order */
	for (int i = 9; i >= 0; i--)
		audit_submit(a, make_record("o", i, 1700000000.0 + i * 0.5));
	audit_close(a);

	audit_query_init(&q);
	n = run_query(t.path, &q, idx, 16);
	CHECK_INT(n, 10);
	for (int i = 0; i < n; i++)
		CHECK_INT(idx[i], i);

	q.limit = 3;
	q.newest_first = true;         /* what "logs tail" without -f wants */
	n = run_query(t.path, &q, idx, 16);
	CHECK_INT(n, 3);
	CHECK_INT(idx[0], 9);
	CHECK_INT(idx[2], 7);
	tmpdb_remove(&t);
}

TEST(export_of_many_rows_streams_while_the_writer_keeps_writing)
{
	struct tmpdb t;
	struct audit *a;
	struct audit_query q;
	struct audit_cursor *c;
	struct audit_record r = { 0 };
	int n = 0;

	tmpdb_make(&t);
	a = open_ok(t.path, NULL);
	for (int i = 0; i < 30000; i++)
		audit_submit(a, make_record("e", i, 1.7e9 + i));
	CHECK(wait_depth(a, 0, 30));

	audit_query_init(&q);
	c = audit_query_open(t.path, &q, NULL);
	CHECK(c != NULL);
	/* Half-way through the export the writer commits more: it is not blocked by the
	 * reader, and the export sees the snapshot it started with. */
	while (c && audit_cursor_next(c, &r) == 1) {
		if (++n == 15000) {
			for (int i = 30000; i < 30100; i++)
				audit_submit(a, make_record("e", i, 1.7e9 + i));
			CHECK(wait_depth(a, 0, 10));
		}
	}
	audit_record_clear(&r);
	audit_cursor_close(c);
	CHECK_INT(n, 30000);
	audit_close(a);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit"), 30100);
	tmpdb_remove(&t);
}

/* A row of the model the windows test checks queries against. */
struct wrow {
	double t;
	int src, seq, key;        /* src 0: the row table (seq: rowid order), 1: a block */
	char id[16];
};

/* started_at, then the row table before the blocks, then the order written: the export's
 * order for rows that started in the same microsecond. */
static int wrow_cmp(const void *x, const void *y)
{
	const struct wrow *a = x, *b = y;

	if (a->t != b->t)
		return a->t < b->t ? -1 : 1;
	if (a->src != b->src)
		return a->src - b->src;
	return a->seq - b->seq;
}

/* The number of differences between what q reads and want[0..n). */
static int check_query(const char *path, const struct audit_query *q,
                       const struct wrow *const *want, int n)
{
	char **ids = malloc(sizeof(*ids) * (size_t)(n + 8));
	int got = export_ids(path, q, ids, n + 8), bad = 0;

	if (got != n) {
		fprintf(stderr, "  %d rows, expected %d\n", got, n);
		bad++;
	}
	for (int i = 0; i < got && i < n; i++)
		if (strcmp(ids[i], want[i]->id) != 0 && bad++ < 3)
			fprintf(stderr, "  row %d: %s, expected %s\n", i, ids[i], want[i]->id);
	if (got > 0)
		free_ids(ids, got < n + 8 ? got : n + 8);
	free(ids);
	return bad;
}

/* From schema 10 on a query reads its range in windows (of 32 blocks and 10,000 rows of the
 * row table at most), each sorted on its own. Over 600 blocks (5 rows a block, 1.25 s
 * apart) and 36,000 rows of the row table interleaved with them in time (24,000 over the
 * whole range, every eighth in the same microsecond as a block's row; 12,000 more in a
 * burst of 23 s, where windows end at a row, inside a block), every query returns exactly
 * the rows it asks for, in order, none twice: all of them; the newest N (more than a
 * window of either kind); the newest N of one key; time ranges of many windows whose ends
 * fall inside blocks, oldest and newest first, with and without a limit. */
TEST(queries_read_many_blocks_and_rows_window_by_window_exactly_once_in_order)
{
	enum { NB = 3000, NR = 24000, ND = 12000, N = NB + NR + ND };
	const double t0 = 1700000000.0, burst = t0 + 600;
	struct wrow *m = calloc(N, sizeof(*m));
	const struct wrow **want = calloc(N, sizeof(*want));
	struct tmpdb t;
	struct audit *a;
	struct audit_query q;
	int k;

	tmpdb_make(&t);
	a = open_ok(t.path, NULL);
	for (int i = 0; i < NB; i++)
		audit_submit(a, make_record("b", i, t0 + i * 0.25));
	audit_close(a);
	hand_rows(t.path, "r", NR, t0, 1.0 / 32, false);
	hand_rows(t.path, "d", ND, burst, 1.0 / 512, false);
	CHECK(db_int(t.path, "SELECT count(*) FROM audit_block") >= NB / 5);
	CHECK_INT(db_int(t.path, "SELECT sum(n) FROM audit_block"), NB);
	CHECK_INT(db_int(t.path, "SELECT count(*) FROM audit_rows"), NR + ND);

	for (int i = 0; i < NB; i++) {
		m[i] = (struct wrow){ .t = t0 + i * 0.25, .src = 1, .seq = i, .key = 1 + i % 3 };
		snprintf(m[i].id, sizeof(m[i].id), "b%06d", i);
	}
	for (int j = 0; j < NR; j++) {
		m[NB + j] = (struct wrow){ .t = t0 + j * (1.0 / 32), .src = 0, .seq = j,
		                           .key = 1 + j % 3 };
		snprintf(m[NB + j].id, sizeof(m[NB + j].id), "r%06d", j);
	}
	for (int j = 0; j < ND; j++) {          /* inserted after the r rows: later rowids */
		m[NB + NR + j] = (struct wrow){ .t = burst + j * (1.0 / 512), .src = 0,
		                                .seq = NR + j, .key = 1 + j % 3 };
		snprintf(m[NB + NR + j].id, sizeof(m[NB + NR + j].id), "d%06d", j);
	}
	qsort(m, N, sizeof(*m), wrow_cmp);

	audit_query_init(&q);                   /* everything */
	for (int i = 0; i < N; i++)
		want[i] = &m[i];
	CHECK_INT(check_query(t.path, &q, want, N), 0);

	q.newest_first = true;                  /* the newest 24,000: ~230 blocks, 21,000 rows */
	q.limit = 24000;
	for (int i = 0; i < 24000; i++)
		want[i] = &m[N - 1 - i];
	CHECK_INT(check_query(t.path, &q, want, 24000), 0);
	q.limit = 7;
	CHECK_INT(check_query(t.path, &q, want, 7), 0);

	q.limit = 3000;                         /* the newest 3,000 of key 2 */
	q.key_id = 2;
	k = 0;
	for (int i = N - 1; i >= 0 && k < 3000; i--)
		if (m[i].key == 2)
			want[k++] = &m[i];
	CHECK_INT(k, 3000);
	CHECK_INT(check_query(t.path, &q, want, k), 0);

	audit_query_init(&q);                   /* newest first from inside the burst */
	q.newest_first = true;
	q.until = burst + 10.3;
	q.limit = 15000;
	k = 0;
	for (int i = N - 1; i >= 0 && k < 15000; i--)
		if (m[i].t < q.until)
			want[k++] = &m[i];
	CHECK_INT(check_query(t.path, &q, want, k), 0);

	audit_query_init(&q);                   /* a range whose ends are inside blocks */
	q.since = t0 + 100.1;
	q.until = t0 + 650.6;
	k = 0;
	for (int i = 0; i < N; i++)
		if (m[i].t >= q.since && m[i].t < q.until)
			want[k++] = &m[i];
	CHECK(k > 17000 + 12000 + 2000);
	CHECK_INT(check_query(t.path, &q, want, k), 0);
	q.newest_first = true;                  /* the same, newest first; a limit it never reaches */
	q.limit = 100000;
	for (int i = 0; i < k / 2; i++) {
		const struct wrow *w = want[i];
		want[i] = want[k - 1 - i];
		want[k - 1 - i] = w;
	}
	CHECK_INT(check_query(t.path, &q, want, k), 0);
	free(m);
	free(want);
	tmpdb_remove(&t);
}

TEST(audit_get_returns_every_field_including_unknowns)
{
	struct tmpdb t;
	struct audit *a;
	struct audit_record *in = make_record("g", 1, 1700000000.123456), out = { 0 };
	char *err = NULL;

	tmpdb_make(&t);
	a = open_ok(t.path, NULL);
	in->retries = 3;
	in->error = dup_s("reset");
	audit_submit(a, in);
	in = make_record("g", 2, 1700000001.0);
	free(in->attempts);
	in->attempts = NULL;         /* nothing was forwarded */
	in->key_id = 0;
	free(in->key_name);
	in->key_name = NULL;
	free(in->route);
	in->route = NULL;
	in->ttfb_ms = -1;
	in->prompt_tokens = in->completion_tokens = -1;
	in->cached_tokens = in->cache_write_tokens = in->reasoning_tokens = -1;
	in->user_id = 0;
	in->cost_nano = -1;
	free(in->price_version);
	in->price_version = NULL;
	in->billed = false;
	in->estimated = in->unpriced = true;
	audit_submit(a, in);
	audit_close(a);

	CHECK_INT(audit_get(t.path, "g000001", &out, &err), 1);
	CHECK_STR(out.request_id, "g000001");
	CHECK(fabs(out.started_at - 1700000000.123456) < 1e-6);
	CHECK_INT(out.key_id, 2);
	CHECK_STR(out.key_name, "key-2");
	CHECK_STR(out.client_ip, "127.0.0.1");
	CHECK_STR(out.method, "POST");
	CHECK_STR(out.path, "/v1/chat/completions");
	CHECK_STR(out.route, "qwen3");
	CHECK_STR(out.upstream, "http://10.0.0.5:3398/v1/chat/completions");
	CHECK_INT(out.status, 200);
	CHECK(fabs(out.latency_ms - 10.001) < 1e-9);
	CHECK(fabs(out.ttfb_ms - 1.25) < 1e-9);
	CHECK(out.is_stream);
	CHECK_INT(out.chunks, 1);
	CHECK_INT(out.bytes_in, 101);
	CHECK_INT(out.bytes_out, 1001);
	CHECK_STR(out.model, "Qwen3-8B");
	CHECK_INT(out.prompt_tokens, 11);
	CHECK_INT(out.completion_tokens, 22);
	CHECK_INT(out.cached_tokens, 0);          /* none: known, not unknown */
	CHECK_INT(out.cache_write_tokens, 2);
	CHECK_INT(out.reasoning_tokens, 301);
	CHECK_STR(out.error, "reset");
	CHECK_INT(out.retries, 3);
	CHECK_STR(out.attempts, "http://10.0.0.5:8000=connect:1;http://10.0.0.6:8000=ok:101");
	CHECK_INT(out.user_id, 101);
	CHECK_INT(out.cost_nano, 1000123457);
	CHECK_STR(out.price_version, "2026-12-01.1");
	CHECK(!out.estimated && out.billed && !out.unpriced);

	CHECK_INT(audit_get(t.path, "g000002", &out, &err), 1);   /* reuses out */
	CHECK_INT(out.user_id, 0);
	CHECK_INT(out.cost_nano, -1);
	CHECK(out.price_version == NULL);
	CHECK(out.estimated && !out.billed && out.unpriced);
	CHECK_INT(out.key_id, 0);
	CHECK(out.key_name == NULL);
	CHECK(out.route == NULL);
	CHECK(out.ttfb_ms < 0);
	CHECK_INT(out.prompt_tokens, -1);
	CHECK_INT(out.completion_tokens, -1);
	CHECK_INT(out.cached_tokens, -1);
	CHECK_INT(out.cache_write_tokens, -1);
	CHECK_INT(out.reasoning_tokens, -1);
	CHECK(out.error == NULL);
	CHECK(out.attempts == NULL);

	CHECK_INT(audit_get(t.path, "nope", &out, &err), 0);
	CHECK(err == NULL);
	audit_record_clear(&out);
	tmpdb_remove(&t);
}

/* ---- formats ---- */

/* A strict RFC 4180 parser for one record, written independently of audit.c's writer.
 * csv_field: one field starting at *sp, malloc'd, with *sp left on the ',' or NUL after
 * it; NULL on a syntax error. */
static char *csv_field(const char **sp)
{
	const char *s = *sp;
	char *f = malloc(strlen(s) + 1), *o = f;

	if (*s == '"') {
		for (s++;; s++) {
			if (!*s)
				goto bad;
			if (*s == '"') {
				if (s[1] != '"') {
					s++;
					break;
				}
				s++;
			}
			*o++ = *s;
		}
	} else {
		for (; *s && *s != ','; s++) {
			if (*s == '"' || *s == '\r' || *s == '\n')
				goto bad;
			*o++ = *s;
		}
	}
	if (*s && *s != ',')
		goto bad;
	*o = '\0';
	*sp = s;
	return f;
bad:
	free(f);
	return NULL;
}

/* The fields of one record into out[0..cap); the count, or -1 (nothing left allocated). */
static int csv_parse(const char *s, char **out, int cap)
{
	int n = 0;

	for (;;) {
		char *f = csv_field(&s);

		if (!f || n >= cap) {
			free(f);
			while (n > 0)
				free(out[--n]);
			return -1;
		}
		out[n++] = f;
		if (!*s)
			return n;
		s++;
	}
}

TEST(csv_header_is_the_design_column_order)
{
	char *h = audit_csv_header(NULL, 0);
	int f[3];

	CHECK_STR(h, "request_id,started_at,key_id,key_name,client_ip,method,path,route,upstream,"
	             "status,latency_ms,ttfb_ms,is_stream,chunks,bytes_in,bytes_out,model,"
	             "prompt_tokens,completion_tokens,error,retries,attempts,cached_tokens,"
	             "cache_write_tokens,reasoning_tokens,upstream_request_id,user_id,cost_usd,"
	             "price_version,estimated");
	free(h);
	CHECK_INT(audit_fields_parse("status, retries ,request_id", f, 3, NULL), 3);
	h = audit_csv_header(f, 3);
	CHECK_STR(h, "status,retries,request_id");
	free(h);
	CHECK_INT(audit_fields_parse("attempts,request_body,retries", f, 3, NULL), 3);
	h = audit_csv_header(f, 3);
	CHECK_STR(h, "attempts,request_body,retries");
	free(h);
	CHECK_INT(audit_fields_parse("reasoning_tokens,cached_tokens,cache_write_tokens", f, 3,
	                             NULL), 3);
	h = audit_csv_header(f, 3);
	CHECK_STR(h, "reasoning_tokens,cached_tokens,cache_write_tokens");
	free(h);
}

TEST(csv_quotes_commas_quotes_and_newlines_and_parses_back)
{
	static const char *nasty[] = {
		"plain", "a,b", "say \"hi\"", "line1\nline2", "cr\rlf\r\n", "\"", ",", "",
		" spaces kept ", "ünïcödé",
	};
	size_t nn = sizeof(nasty) / sizeof(nasty[0]);

	for (size_t k = 0; k < nn; k++) {
		struct audit_record *r = make_record("x", 5, 1763897400.1234);
		char *line, *fields[32];
		int n;

		free(r->path);
		r->path = dup_s(nasty[k]);
		free(r->key_name);
		r->key_name = dup_s(nasty[(k + 1) % nn]);
		free(r->model);
		r->model = NULL;
		r->ttfb_ms = -1;
		free(r->attempts);
		r->attempts = dup_s(nasty[(k + 2) % nn]);
		free(r->price_version);
		r->price_version = dup_s(nasty[(k + 3) % nn]);
		r->retries = (int)k;
		line = audit_record_csv(r, NULL, 0);
		n = csv_parse(line, fields, 32);
		CHECK_INT(n, 30);
		if (n == 30) {
			CHECK_STR(fields[0], "x000005");
			CHECK_STR(fields[1], "2025-11-23T11:30:00.123Z");
			CHECK_STR(fields[2], "3");
			CHECK_STR(fields[3], nasty[(k + 1) % nn]);
			CHECK_STR(fields[6], nasty[k]);
			CHECK_STR(fields[9], "200");
			CHECK_STR(fields[10], "10.005");
			CHECK_STR(fields[11], "");      /* unknown ttfb */
			CHECK_STR(fields[12], "1");
			CHECK_STR(fields[16], "");      /* no model */
			CHECK_STR(fields[19], "");      /* no error */
			CHECK_INT(atoi(fields[20]), (int)k);
			CHECK_STR(fields[21], nasty[(k + 2) % nn]);
			CHECK_STR(fields[22], "0");     /* row 5's cached, cache write, reasoning */
			CHECK_STR(fields[23], "");
			CHECK_STR(fields[24], "0");
			CHECK_STR(fields[25], "req_000005");
			CHECK_STR(fields[26], "");      /* row 5: no user; its exact cost, price version */
			CHECK_STR(fields[27], "5.000123485");
			CHECK_STR(fields[28], nasty[(k + 3) % nn]);
			CHECK_STR(fields[29], "0");     /* not estimated */
		}
		for (int i = 0; i < n; i++)
			free(fields[i]);
		/* a field without specials is not quoted */
		if (k == 0)
			CHECK(strstr(line, ",plain,") != NULL);
		free(line);
		audit_record_free(r);
	}
}

/* attempts after retries at the end of the default columns: ';' and '=' need no quoting in
 * CSV, a ',' (or a quote) in it does; empty when nothing was forwarded. */
TEST(csv_attempts_column_is_quoted_only_when_it_must_be)
{
	static const char *const values[] = {
		"http://10.0.0.5:8000=connect:3;http://10.0.0.6:8000=ok:120",
		"http://10.0.0.5:8000/a,b=reset:2;http://[::1]:8000=ok:7",
		"http://10.0.0.5:8000/\"q\"=timeout:30000;x=ok:1,2",
	};
	struct audit_record *r = make_record("c", 3, 1763897400.0);
	int f[2] = { AUDIT_F_ATTEMPTS, AUDIT_F_RETRIES };
	char *line, *fields[32];
	int n;

	CHECK(r->attempts == NULL);                       /* row 3: nothing forwarded */
	line = audit_record_csv(r, NULL, 0);
	/* retries, attempts, then the cache and reasoning token counts (unknown: empty), no
	 * upstream id, then row 3's user, cost, no price version, estimated */
	{
		const char *want = ",0,,1003,6,,,101,3.000123471,,1";
		CHECK(strlen(line) > strlen(want) &&
		      strcmp(line + strlen(line) - strlen(want), want) == 0);
	}
	free(line);
	for (size_t k = 0; k < sizeof(values) / sizeof(values[0]); k++) {
		free(r->attempts);
		r->attempts = dup_s(values[k]);
		r->retries = 1;
		line = audit_record_csv(r, NULL, 0);
		n = csv_parse(line, fields, 32);
		CHECK_INT(n, 30);
		if (n == 30) {
			CHECK_STR(fields[19], "");
			CHECK_STR(fields[20], "1");
			CHECK_STR(fields[21], values[k]);
			CHECK_STR(fields[22], "1003");
		}
		for (int i = 0; i < n; i++)
			free(fields[i]);
		if (k == 0) {                                 /* verbatim, unquoted */
			char want[128];
			snprintf(want, sizeof(want), ",1,%s,1003,6,,,101,3.000123471,,1", values[0]);
			CHECK(strlen(line) > strlen(want) &&
			      strcmp(line + strlen(line) - strlen(want), want) == 0);
		}
		free(line);
		line = audit_record_csv(r, f, 2);
		n = csv_parse(line, fields, 32);
		CHECK_INT(n, 2);
		if (n == 2) {
			CHECK_STR(fields[0], values[k]);
			CHECK_STR(fields[1], "1");
		}
		for (int i = 0; i < n; i++)
			free(fields[i]);
		CHECK(k == 0 ? line[0] != '"' : line[0] == '"');
		free(line);
	}
	audit_record_free(r);
}

TEST(jsonl_lines_are_valid_json_with_nulls_for_unknowns_and_clean_utf8)
{
	struct audit_record *r = make_record("j", 4, 1763897400.5);
	json_error_t jerr;
	json_t *o;
	char *line;
	int f[2];

	free(r->path);
	r->path = dup_s("/a\"b\\c\n\x01\xff\xc3(end");   /* quote, backslash, control, bad UTF-8 */
	r->prompt_tokens = -1;
	r->key_id = 0;
	r->error = dup_s("client_closed");
	r->latency_ms = 12.3456789;
	line = audit_record_jsonl(r, NULL, 0);
	CHECK(strchr(line, '\n') == NULL);
	o = json_loads(line, 0, &jerr);
	CHECK(json_is_object(o));
	CHECK_INT(json_object_size(o), 30);
	CHECK_STR(json_string_value(json_object_get(o, "request_id")), "j000004");
	CHECK_STR(json_string_value(json_object_get(o, "started_at")), "2025-11-23T11:30:00.500Z");
	CHECK(json_is_null(json_object_get(o, "key_id")));
	CHECK(json_is_null(json_object_get(o, "prompt_tokens")));
	CHECK_INT(json_integer_value(json_object_get(o, "completion_tokens")), 22);
	CHECK(json_is_false(json_object_get(o, "is_stream")));
	CHECK(fabs(json_real_value(json_object_get(o, "latency_ms")) - 12.346) < 1e-9);
	CHECK_STR(json_string_value(json_object_get(o, "path")),
	          "/a\"b\\c\n\x01\xef\xbf\xbd\xef\xbf\xbd(end");
	CHECK_STR(json_string_value(json_object_get(o, "error")), "client_closed");
	CHECK_INT(json_integer_value(json_object_get(o, "retries")), 0);
	CHECK_STR(json_string_value(json_object_get(o, "attempts")),
	          "http://10.0.0.5:8000=connect:4;http://10.0.0.6:8000=ok:104");
	/* row 4's counts: cached unknown, the others known */
	CHECK(json_is_null(json_object_get(o, "cached_tokens")));
	CHECK_INT(json_integer_value(json_object_get(o, "cache_write_tokens")), 8);
	CHECK_INT(json_integer_value(json_object_get(o, "reasoning_tokens")), 304);
	/* row 4's spend: the cost an exact decimal string, not a float */
	CHECK_INT(json_integer_value(json_object_get(o, "user_id")), 100);
	CHECK_STR(json_string_value(json_object_get(o, "cost_usd")), "4.000123478");
	CHECK_STR(json_string_value(json_object_get(o, "price_version")), "2026-12-01.1");
	CHECK(json_is_false(json_object_get(o, "estimated")));
	CHECK(json_object_get(o, "request_body") == NULL);  /* not a default column */
	CHECK(json_object_get(o, "billed") == NULL && json_object_get(o, "unpriced") == NULL);
	json_decref(o);
	free(line);
	/* the default keys in order: DESIGN.md's, then retries, attempts and the token counts,
	 * the upstream's id and the spend columns */
	line = audit_record_jsonl(r, NULL, 0);
	CHECK(strstr(line, "\"error\":\"client_closed\",\"retries\":0,"
	             "\"attempts\":\"http://10.0.0.5:8000=connect:4;") != NULL);
	CHECK(strstr(line, ":104\",\"cached_tokens\":null,\"cache_write_tokens\":8,"
	             "\"reasoning_tokens\":304,\"upstream_request_id\":null,\"user_id\":100,"
	             "\"cost_usd\":\"4.000123478\",\"price_version\":\"2026-12-01.1\","
	             "\"estimated\":false}") != NULL);
	free(line);
	r->cached_tokens = 0;                    /* none is 0, not null */
	r->reasoning_tokens = 1234567890123LL;
	f[0] = audit_field_index("cached_tokens");
	f[1] = audit_field_index("reasoning_tokens");
	line = audit_record_jsonl(r, f, 2);
	CHECK_STR(line, "{\"cached_tokens\":0,\"reasoning_tokens\":1234567890123}");
	free(line);
	line = audit_record_csv(r, f, 2);
	CHECK_STR(line, "0,1234567890123");
	free(line);
	free(r->attempts);
	r->attempts = NULL;
	f[0] = audit_field_index("attempts");
	line = audit_record_jsonl(r, f, 1);
	CHECK_STR(line, "{\"attempts\":null}");
	free(line);

	f[0] = audit_field_index("retries");
	f[1] = audit_field_index("status");
	line = audit_record_jsonl(r, f, 2);
	CHECK_STR(line, "{\"retries\":0,\"status\":200}");
	free(line);
	audit_record_free(r);
}

/* Money is printed from integer nano-USD digit by digit: nine places always, a sign when
 * negative, and no value is rounded, however large. */
TEST(cost_usd_is_an_exact_decimal_of_the_integer_nano_dollars)
{
	static const struct { int64_t nano; const char *text; } cases[] = {
		{ 0, "0.000000000" }, { 1, "0.000000001" }, { 123450, "0.000123450" },
		{ 1000000000, "1.000000000" }, { 9007199254740993LL, "9007199.254740993" },
		{ -1500000000, "-1.500000000" }, { INT64_MAX, "9223372036.854775807" },
		{ INT64_MIN, "-9223372036.854775808" },
	};
	struct audit_record *r = make_record("m", 1, 1763897400.0);
	int f[2] = { AUDIT_F_COST_USD, AUDIT_F_ESTIMATED };
	char buf[FMT_USD_MAX], *line;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		CHECK_INT(fmt_usd_nano(buf, cases[i].nano), strlen(cases[i].text));
		CHECK_STR(buf, cases[i].text);
	}
	r->cost_nano = 9007199254740993LL;
	r->estimated = true;
	line = audit_record_csv(r, f, 2);
	CHECK_STR(line, "9007199.254740993,1");
	free(line);
	line = audit_record_jsonl(r, f, 2);
	CHECK_STR(line, "{\"cost_usd\":\"9007199.254740993\",\"estimated\":true}");
	free(line);
	r->cost_nano = -1;                      /* no cost: empty, null */
	r->estimated = false;
	line = audit_record_csv(r, f, 2);
	CHECK_STR(line, ",0");
	free(line);
	line = audit_record_jsonl(r, f, 2);
	CHECK_STR(line, "{\"cost_usd\":null,\"estimated\":false}");
	free(line);
	r->cost_nano = 0;                       /* free is a cost of 0, not none */
	f[1] = AUDIT_F_BILLED;
	line = audit_record_csv(r, f, 2);
	CHECK_STR(line, "0.000000000,1");      /* row 1 is billed */
	free(line);
	audit_record_free(r);
}

TEST(field_names_parse_and_unknown_names_are_rejected_with_the_valid_list)
{
	int f[AUDIT_NFIELDS];
	char *err = NULL;

	CHECK_INT(audit_field_index("request_id"), AUDIT_F_REQUEST_ID);
	CHECK_INT(audit_field_index("error"), AUDIT_F_ERROR);
	CHECK_INT(audit_field_index("retries"), AUDIT_F_RETRIES);
	CHECK_INT(audit_field_index("attempts"), AUDIT_F_ATTEMPTS);
	CHECK_INT(AUDIT_F_ATTEMPTS, AUDIT_F_RETRIES + 1);
	CHECK_STR(audit_field_names[AUDIT_F_ATTEMPTS], "attempts");
	CHECK_INT(audit_field_index("cached_tokens"), AUDIT_F_CACHED_TOKENS);
	CHECK_INT(audit_field_index("cache_write_tokens"), AUDIT_F_CACHE_WRITE_TOKENS);
	CHECK_INT(audit_field_index("reasoning_tokens"), AUDIT_F_REASONING_TOKENS);
	CHECK_INT(AUDIT_F_CACHED_TOKENS, AUDIT_F_ATTEMPTS + 1);
	CHECK_INT(audit_field_index("upstream_request_id"), AUDIT_F_UPSTREAM_REQUEST_ID);
	CHECK_INT(AUDIT_F_REASONING_TOKENS + 1, AUDIT_F_UPSTREAM_REQUEST_ID);
	CHECK_INT(audit_field_index("user_id"), AUDIT_F_USER_ID);
	CHECK_INT(audit_field_index("cost_usd"), AUDIT_F_COST_USD);
	CHECK_INT(audit_field_index("price_version"), AUDIT_F_PRICE_VERSION);
	CHECK_INT(audit_field_index("estimated"), AUDIT_F_ESTIMATED);
	CHECK_INT(audit_field_index("billed"), AUDIT_F_BILLED);
	CHECK_INT(audit_field_index("unpriced"), AUDIT_F_UNPRICED);
	CHECK_INT(audit_field_index("cost_nano"), -1);     /* the column's name, not a field's */
	CHECK_INT(AUDIT_F_UPSTREAM_REQUEST_ID + 1, AUDIT_F_USER_ID);
	CHECK_INT(AUDIT_F_ESTIMATED + 1, AUDIT_F_BILLED);
	CHECK_INT(AUDIT_F_UNPRICED + 1, AUDIT_F_REQUEST_BODY);
	CHECK_INT(AUDIT_NDEFAULT_FIELDS, AUDIT_F_ESTIMATED + 1);
	CHECK_INT(audit_field_index("Request_ID"), -1);
	CHECK_INT(audit_field_index("bogus"), -1);
	CHECK_INT(audit_fields_parse("model", f, AUDIT_NFIELDS, &err), 1);
	CHECK_INT(f[0], AUDIT_F_MODEL);
	CHECK_INT(audit_fields_parse("model,bogus", f, AUDIT_NFIELDS, &err), -1);
	CHECK(err && strstr(err, "unknown field \"bogus\"") && strstr(err, "completion_tokens") &&
	      strstr(err, "retries, attempts, cached_tokens, cache_write_tokens, "
	             "reasoning_tokens, upstream_request_id, user_id, cost_usd, price_version, "
	             "estimated, billed, unpriced, request_body"));
	free(err);
	err = NULL;
	CHECK_INT(audit_fields_parse("model,,status", f, AUDIT_NFIELDS, &err), -1);
	CHECK(err && strstr(err, "empty field name"));
	free(err);
	err = NULL;
	CHECK_INT(audit_fields_parse("model,status", f, 1, &err), -1);
	CHECK(err && strstr(err, "too many fields"));
	free(err);
}

RUN_TESTS()
