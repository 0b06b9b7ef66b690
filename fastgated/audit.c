/* The audit trail; see audit.h for the contract.
 *
 * Where a record is, from submit to commit, and who may touch it:
 *   shared queue (q_*)  -- loop threads append, the writer takes the whole list; under mu
 *   writer list (w_*)   -- the writer's; records it failed to commit wait here, in order
 *   spool file          -- the writer's; holds records OLDER than everything in memory
 * Order is kept because the writer always commits the spool before memory and only ever
 * moves the oldest records in memory to the end of the spool. mu is never held across
 * SQLite or file I/O, so audit_submit() waits at most for a few pointer moves. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "audit.h"
#include "auditblock.h"
#include "blockrows.h"
#include "limit.h"
#include "log.h"
#include "reqid.h"
#include "util.h"

#define DEFAULT_MEM_CAP        100000
#define DEFAULT_BATCH          2048   /* rows per transaction: a 50 ms gather at 40k req/s */
#define DEFAULT_PRUNE_MS       (3600u * 1000u)
#define DEFAULT_BUSY_MS        1000
#define DEFAULT_CLOSE_WAIT_MS  10000
#define PRUNE_BATCH            1000   /* rows per DELETE: keeps each prune transaction short */
#define PRUNE_BLOCKS           4      /* blocks per DELETE, likewise (a few thousand rows) */
#define BACKOFF_MIN_MS         50
#define BACKOFF_MAX_MS         2000
#define READ_BUSY_MS           2000
#define SPOOL_VERSION          1
/* How long a woken writer lets records gather. Fewer, larger transactions rewrite the
 * partly filled last pages of the table and its indexes less often: at 15k req/s the
 * writer's CPU per row went from ~7 to ~5 us going from 5 to 20 ms, and from 2.7 to 2.4 us
 * going to 100 ms (issue #6; a harness that submits records at that rate, medians of 5).
 * But a batch is also a burst of fresh pages through the caches the other threads use:
 * side by side with nginx (8 rounds of wrk -c64), fastgated's p99 was 7.25 ms at 100 ms,
 * 6.6-6.8 ms at 10, 20 and 50 ms (nginx 5.98). 50 ms keeps most of the saving. */
#define AUDIT_GATHER_MS        50
/* A block is cut here (auditblock.h): big enough that a block costs its rows little,
 * small enough that the writer's buffer stays small when a route logs bodies. */
#define BLOCK_BYTES_MAX        (256u << 10)

/* The columns as of schema version 2, which migration 4 copies: never edit it. */
#define COLUMNS_V2 "request_id, started_at, key_id, key_name, client_ip, method, path, " \
	"route, upstream, status, latency_ms, ttfb_ms, is_stream, chunks, bytes_in, bytes_out, " \
	"model, prompt_tokens, completion_tokens, error, retries, request_body, response_body"
/* The columns in enum audit_field order: reads and writes both rely on it. A column added
 * later goes here at its enum place (the bodies stay last), never into COLUMNS_V2. */
#define COLUMNS "request_id, started_at, key_id, key_name, client_ip, method, path, " \
	"route, upstream, status, latency_ms, ttfb_ms, is_stream, chunks, bytes_in, bytes_out, " \
	"model, prompt_tokens, completion_tokens, error, retries, attempts, cached_tokens, " \
	"cache_write_tokens, reasoning_tokens, upstream_request_id, user_id, cost_nano, " \
	"price_version, estimated, billed, unpriced, request_body, response_body"
/* The columns of a block's row array (auditblock.h), in COLUMNS order, as SQLite reads
 * them back: json_extract rather than the ->> of SQLite 3.38, so that an older sqlite3(1)
 * can still read the schema. */
#define JX(n) "json_extract(j.value, '$[" #n "]')"
#define BLOCK_COLUMNS JX(0) ", " JX(1) ", " JX(2) ", " JX(3) ", " JX(4) ", " JX(5) ", " \
	JX(6) ", " JX(7) ", " JX(8) ", " JX(9) ", " JX(10) ", " JX(11) ", " JX(12) ", " \
	JX(13) ", " JX(14) ", " JX(15) ", " JX(16) ", " JX(17) ", " JX(18) ", " JX(19) ", " \
	JX(20) ", " JX(21) ", " JX(22) ", " JX(23) ", " JX(24) ", " JX(25) ", " JX(26) ", " \
	JX(27) ", " JX(28) ", " JX(29) ", " JX(30) ", " JX(31) ", " JX(32) ", " JX(33)
_Static_assert(AUDIT_NFIELDS == 34, "BLOCK_COLUMNS names every field");
/* ABLOCK_SPAN_S as SQL text: a block holding a row of a time range began at most this
 * long before it. */
#define SPAN_SQL "1.0"
/* The rows that started in [lo, hi) (SQL parameters), from the row table (through its
 * time index) and from the blocks that can hold such rows (through theirs, decoded by
 * audit_block_rows, blockrows.h: a connection of the daemon's), with two more columns
 * that order rows which started in the same microsecond as they were written: seq_ (the
 * rowid, or the place in the block) and blk_ (0 for the row table, else the block). */
#define ROWS_IN(lo, hi) \
	"(SELECT " COLUMNS ", rowid AS seq_, 0 AS blk_ FROM audit_rows" \
	" WHERE started_at >= " lo " AND started_at < " hi \
	" UNION ALL SELECT r.*, b.id FROM audit_block b, audit_block_rows(b.rows) r" \
	" WHERE b.first_started >= " lo " - " SPAN_SQL " AND b.first_started < " hi \
	" AND b.last_started >= " lo " AND r.c1 >= " lo " AND r.c1 < " hi ")"
/* The v9 columns of the INSTEAD OF INSERT trigger: what a row inserted into the view by
 * hand puts into the row table, with the defaults the table has for omitted columns. */
#define NEW_COLUMNS "NEW.request_id, NEW.started_at, NEW.key_id, NEW.key_name, " \
	"NEW.client_ip, NEW.method, NEW.path, NEW.route, NEW.upstream, NEW.status, " \
	"NEW.latency_ms, NEW.ttfb_ms, NEW.is_stream, NEW.chunks, NEW.bytes_in, NEW.bytes_out, " \
	"NEW.model, NEW.prompt_tokens, NEW.completion_tokens, NEW.error, " \
	"coalesce(NEW.retries, 0), NEW.attempts, NEW.cached_tokens, NEW.cache_write_tokens, " \
	"NEW.reasoning_tokens, NEW.upstream_request_id, NEW.user_id, NEW.cost_nano, " \
	"NEW.price_version, coalesce(NEW.estimated, 0), coalesce(NEW.billed, 0), " \
	"coalesce(NEW.unpriced, 0), NEW.request_body, NEW.response_body"
/* What a reader selects from a file at an older schema version, which a daemon of this
 * version has not opened yet: NULL for the columns added since, so rows come back in the
 * same shape. Version 2 to 4: no attempts; version 5: no cache or reasoning tokens;
 * version 6: no upstream request id; version 7: no spend columns (as if no user, no cost,
 * not estimated, billed or unpriced). */
#define COLUMNS_READ_V4 "request_id, started_at, key_id, key_name, client_ip, method, " \
	"path, route, upstream, status, latency_ms, ttfb_ms, is_stream, chunks, bytes_in, " \
	"bytes_out, model, prompt_tokens, completion_tokens, error, retries, NULL, " \
	"NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, 0, request_body, response_body"
#define COLUMNS_READ_V5 "request_id, started_at, key_id, key_name, client_ip, method, " \
	"path, route, upstream, status, latency_ms, ttfb_ms, is_stream, chunks, bytes_in, " \
	"bytes_out, model, prompt_tokens, completion_tokens, error, retries, attempts, " \
	"NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, 0, request_body, response_body"
#define COLUMNS_READ_V6 "request_id, started_at, key_id, key_name, client_ip, method, " \
	"path, route, upstream, status, latency_ms, ttfb_ms, is_stream, chunks, bytes_in, " \
	"bytes_out, model, prompt_tokens, completion_tokens, error, retries, attempts, " \
	"cached_tokens, cache_write_tokens, reasoning_tokens, NULL, NULL, NULL, NULL, 0, 0, 0, " \
	"request_body, response_body"
#define COLUMNS_READ_V7 "request_id, started_at, key_id, key_name, client_ip, method, " \
	"path, route, upstream, status, latency_ms, ttfb_ms, is_stream, chunks, bytes_in, " \
	"bytes_out, model, prompt_tokens, completion_tokens, error, retries, attempts, " \
	"cached_tokens, cache_write_tokens, reasoning_tokens, upstream_request_id, NULL, NULL, " \
	"NULL, 0, 0, 0, request_body, response_body"

/* The columns after request_id as version 1 created them. Versions 1 and 4 create the
 * table with them: like every step below, never edit it (add a step instead). */
#define V1_COLUMN_DEFS \
	" started_at REAL NOT NULL,"        /* unix seconds */ \
	" key_id INTEGER,"                  /* NULL = no key */ \
	" key_name TEXT, client_ip TEXT, method TEXT, path TEXT, route TEXT, upstream TEXT," \
	" status INTEGER NOT NULL, latency_ms REAL, ttfb_ms REAL, is_stream INTEGER NOT NULL," \
	" chunks INTEGER, bytes_in INTEGER, bytes_out INTEGER, model TEXT," \
	" prompt_tokens INTEGER, completion_tokens INTEGER, error TEXT," \
	" retries INTEGER NOT NULL DEFAULT 0"

/* Schema steps, applied in order inside one transaction; user_version records the last. */
static const struct { int version; const char *sql; } migrations[] = {
	{ 1,
	  "CREATE TABLE audit ("
	  " request_id TEXT NOT NULL PRIMARY KEY," V1_COLUMN_DEFS ");"
	  /* Each filter index ends in started_at so a filtered export streams in time order
	   * without a sort. */
	  "CREATE INDEX audit_started_at ON audit(started_at);"
	  "CREATE INDEX audit_key_id ON audit(key_id, started_at);"
	  "CREATE INDEX audit_route ON audit(route, started_at);"
	  "CREATE INDEX audit_status ON audit(status, started_at);" },
	/* request and response bodies, for routes that ask for them (log_bodies) */
	{ 2,
	  "ALTER TABLE audit ADD COLUMN request_body TEXT;"
	  "ALTER TABLE audit ADD COLUMN response_body TEXT;" },
	/* Every index is one more B-tree insert per request on the writer thread, which shares
	 * the machine with the proxy: route and status filters are few-valued and are answered
	 * from the time-ordered index (a range scan), so their own indexes went (issue #6:
	 * the writer's CPU per row dropped by about a quarter). */
	{ 3,
	  "DROP INDEX IF EXISTS audit_route;"
	  "DROP INDEX IF EXISTS audit_status;" },
	/* One B-tree besides the table: started_at. The unique index on request_id and the
	 * (key_id, started_at) index cost the writer about 11k of its 29k instructions per
	 * row, and with many keys the key index dirtied twice the pages per commit (issue
	 * #6). A row is found by its id through the second the id carries (reqid.h); filters
	 * on key, route or status scan the time range asked for. Rows keep their rowids.
	 * Ids made before this version carry no time: audit_untimed_ids holds the latest
	 * started_at of a row whose id does not, and audit_get looks up to there for them.
	 * Replaying the spool checks for the row instead of relying on a unique index. */
	{ 4,
	  "CREATE TABLE audit_v4 ("
	  " request_id TEXT NOT NULL," V1_COLUMN_DEFS ","
	  " request_body TEXT,"
	  " response_body TEXT);"
	  "INSERT INTO audit_v4 (rowid, " COLUMNS_V2 ") SELECT rowid, " COLUMNS_V2
	  " FROM audit ORDER BY rowid;"
	  "CREATE TABLE audit_untimed_ids (until REAL NOT NULL);"
	  "INSERT INTO audit_untimed_ids SELECT coalesce(max(started_at), 0) FROM audit;"
	  "DROP TABLE audit;"
	  "ALTER TABLE audit_v4 RENAME TO audit;"
	  "CREATE INDEX audit_started_at ON audit(started_at);" },
	/* Every upstream attempt of a request (upstream pools with retries): NULL in the rows
	 * written before, as when nothing was forwarded. Adding a column rewrites no row. */
	{ 5,
	  "ALTER TABLE audit ADD COLUMN attempts TEXT;" },
	/* The usage normalised across providers (DESIGN.md, Providers): prompt tokens read from
	 * and written to the provider's cache, completion tokens spent reasoning. NULL =
	 * unknown, as in every row written before. */
	{ 6,
	  "ALTER TABLE audit ADD COLUMN cached_tokens INTEGER;"
	  "ALTER TABLE audit ADD COLUMN cache_write_tokens INTEGER;"
	  "ALTER TABLE audit ADD COLUMN reasoning_tokens INTEGER;" },
	/* The upstream's own id of the request, for its support: NULL in older rows. */
	{ 7,
	  "ALTER TABLE audit ADD COLUMN upstream_request_id TEXT;" },
	/* Spend control (DESIGN.md): the key's user (NULL = none, as key_id), the cost in
	 * integer nano-USD (NULL = no cost) and the pricing table's version; whether the
	 * tokens are the gateway's estimate, whether the request was charged against its
	 * limits and balance, whether its model had no price. Older rows: none of these. */
	{ 8,
	  "ALTER TABLE audit ADD COLUMN user_id INTEGER;"
	  "ALTER TABLE audit ADD COLUMN cost_nano INTEGER;"
	  "ALTER TABLE audit ADD COLUMN price_version TEXT;"
	  "ALTER TABLE audit ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0;"
	  "ALTER TABLE audit ADD COLUMN billed INTEGER NOT NULL DEFAULT 0;"
	  "ALTER TABLE audit ADD COLUMN unpriced INTEGER NOT NULL DEFAULT 0;" },
	/* What the billed rows add up to, per key and user, for all time, per day and per
	 * month (audit.h, spend counters): kept in the transaction that inserts the rows.
	 * spend_mark holds the rowid up to which every billed row is counted; 0 here, so the
	 * first open counts the billed rows already there (none before version 8). */
	{ 9,
	  "CREATE TABLE spend (scope TEXT NOT NULL, period TEXT NOT NULL,"
	  " start INTEGER NOT NULL, requests INTEGER NOT NULL, tokens INTEGER NOT NULL,"
	  " cost_nano INTEGER NOT NULL, PRIMARY KEY (scope, period, start)) WITHOUT ROWID;"
	  "CREATE TABLE spend_mark (one INTEGER PRIMARY KEY CHECK (one = 1),"
	  " last_rowid INTEGER NOT NULL);"
	  "INSERT INTO spend_mark VALUES (1, 0);" },
	/* Rows in blocks (auditblock.h): the writer stores a transaction's rows as one row of
	 * audit_block instead of one row each, for a third of the CPU (issue #21: the writer
	 * taking a core from the event loop was most of the tail latency). The rows written
	 * before stay in the table, renamed audit_rows, with their rowids (the spend mark
	 * counts in them; a spool replay and rows inserted by hand go there too). `audit` is
	 * now a view of both, with the same columns, so a query of it reads as before (every
	 * block of the file, though: see fastgated(8) for bounding one by time), and an
	 * INSERT into it lands in audit_rows. */
	{ 10,
	  "ALTER TABLE audit RENAME TO audit_rows;"
	  "CREATE TABLE audit_block (id INTEGER PRIMARY KEY, first_started REAL NOT NULL,"
	  " last_started REAL NOT NULL, n INTEGER NOT NULL, rows TEXT NOT NULL);"
	  "CREATE INDEX audit_block_first ON audit_block(first_started);"
	  "CREATE VIEW audit (" COLUMNS ") AS SELECT " COLUMNS " FROM audit_rows"
	  " UNION ALL SELECT " BLOCK_COLUMNS " FROM audit_block b, json_each(b.rows) j;"
	  "CREATE TRIGGER audit_insert INSTEAD OF INSERT ON audit BEGIN"
	  " INSERT INTO audit_rows (" COLUMNS ") VALUES (" NEW_COLUMNS "); END;" },
};
#define SCHEMA_VERSION (migrations[sizeof(migrations) / sizeof(migrations[0]) - 1].version)

const char *const audit_field_names[AUDIT_NFIELDS] = {
	"request_id", "started_at", "key_id", "key_name", "client_ip", "method", "path", "route",
	"upstream", "status", "latency_ms", "ttfb_ms", "is_stream", "chunks", "bytes_in",
	"bytes_out", "model", "prompt_tokens", "completion_tokens", "error", "retries",
	"attempts", "cached_tokens", "cache_write_tokens", "reasoning_tokens",
	"upstream_request_id", "user_id", "cost_usd", "price_version", "estimated", "billed",
	"unpriced", "request_body", "response_body",
};

/* Counters being added up in memory (a batch's, or what audit_spend_load reads): open
 * addressing, keyed by scope, id, period and start. */
struct spend_key {
	char scope;               /* 'k' or 'u' */
	unsigned char period;     /* enum spend_period */
	int64_t id, start;
};

struct spend_ent {
	struct spend_key k;
	int64_t requests, tokens, cost_nano;
	bool used;
};

struct spend_map {
	struct spend_ent *e;
	size_t cap, n;            /* cap: a power of two, or 0 */
};

/* One event loop's way into the writer: its own queue and lock, so that loops never wait
 * for each other to submit, only (rarely, for a pointer swap) for the writer. */
struct audit_lane {
	pthread_mutex_t mu;
	struct audit *a;
	unsigned idx;
	/* under mu */
	struct audit_record *q_head, *q_tail;
	size_t q_n;               /* also read without mu by the writer (atomic) */
	size_t q_bytes;
	/* Committed records go back to the lane that submitted them, to be freed there (a
	 * few per audit_submit): they were allocated on that loop's thread, and a burst of
	 * frees from the writer took the allocator's lock for that heap again and again,
	 * which the event loop then waited for (issue #6: ~20 futex waits a second at 20k
	 * req/s, with the writer SCHED_IDLE). */
	struct audit_record *done_head, *done_tail;
	size_t done_bytes;
};

struct audit {
	char *db_path, *spool_path;
	size_t mem_cap, batch_size;
	unsigned retention_days, prune_interval_ms, busy_timeout_ms, close_wait_ms;

	struct audit_lane *lanes;
	unsigned n_lanes;
	/* atomics: every lane and the writer change them */
	size_t mem_n;             /* records in the lanes and the writer's hands */
	size_t depth;             /* mem_n + spool_n: submitted, not committed */
	int64_t progress_ms;      /* monotonic: the last commit, or when depth left 0 */
	bool writer_waiting;      /* written under mu; read by submitters without it */
	bool backoff;             /* the database is failing: wake the writer only to spill
	                           * (written under mu, read without it) */

	pthread_mutex_t mu;
	pthread_cond_t wake;
	pthread_t thread;
	/* under mu */
	size_t spool_left;        /* the writer's spool_n, for audit_spend_load */
	bool stop;
	bool retention_new;       /* audit_set_retention: the writer takes retention_next */
	unsigned retention_next;

	/* writer thread only (and audit_open/audit_close around it) */
	sqlite3 *db;
	sqlite3_stmt *st_insert, *st_prune;
	sqlite3_stmt *st_block;               /* one block of rows (auditblock.h) */
	sqlite3_stmt *st_prune_blocks;        /* blocks whose rows have all expired */
	sqlite3_stmt *st_insert_new;          /* one row, unless it is there already (replay) */
	sqlite3_stmt *st_untimed;             /* raise the bound in audit_untimed_ids */
	sqlite3_stmt *st_begin, *st_commit;   /* prepared once: sqlite3_exec parses each time */
	sqlite3_stmt *st_top;                 /* the last rowid of audit_rows */
	sqlite3_stmt *st_spend_rows;          /* billed rows above a rowid */
	sqlite3_stmt *st_spend_add;           /* add to one counter */
	sqlite3_stmt *st_spend_new;           /* make one */
	sqlite3_stmt *st_mark_set;            /* set the mark */
	struct spend_map spend;               /* this batch's counts, not written yet */
	struct ablock block;                  /* the block being encoded */
	struct timed *sorted;                 /* a batch in started_at order, to cut blocks,
	                                       * then its records in that order */
	size_t sorted_cap;
	int64_t mark_db;                      /* spend_mark as committed */
	int64_t mark_mem;                     /* every row up to this rowid is counted or known
	                                       * not to be billed: ahead of mark_db while only
	                                       * unbilled rows came (written lazily) */
	bool reconnect;           /* the connection may be stuck read-only: reopen on retry */
	struct audit_record *w_head, *w_tail;
	size_t w_n, w_bytes;      /* w_bytes: memory the held records take (audit_record_bytes) */
	int spool_fd;             /* append side, -1 until the first spill */
	FILE *spool_rd;           /* replay side */
	off_t spool_off;          /* bytes of the spool already committed */
	size_t spool_n;           /* records in the spool after spool_off */
	bool spool_written;       /* appended to since it was last emptied (fdatasync at close) */
	bool db_failing, spool_failing;
	bool idle_ok;             /* the writer may run in SCHED_IDLE (it can leave it again) */
	bool idle_now;            /* it does now */
	int64_t next_retry_ms, next_prune_ms;
	unsigned backoff_ms;
};

/* ---- small helpers ---- */

/* How far a row's started_at may be from the second its id carries: the id is made from
 * the coarse clock (a tick behind at most) just before started_at is read. */
#define ID_SLACK_S 2

/* An id of the reqid form that does not carry the second its row started in: made before
 * schema version 4. (An id of another form is looked for in every row anyway.) */
static bool id_untimed(const char *id, double started_at)
{
	int64_t sec;

	return id && reqid_second(id, &sec) && (started_at < (double)(sec - ID_SLACK_S) ||
	                                        started_at >= (double)(sec + ID_SLACK_S + 1));
}

static double wall_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A growing string for building lines. */
struct sbuf {
	char *s;
	size_t len, cap;
};

static void sb_grow(struct sbuf *b, size_t more)
{
	if (b->len + more + 1 <= b->cap)
		return;
	while (b->len + more + 1 > b->cap)
		b->cap = b->cap ? b->cap * 2 : 256;
	b->s = xrealloc(b->s, b->cap);
}

static void sb_putn(struct sbuf *b, const char *s, size_t n)
{
	sb_grow(b, n);
	memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = '\0';
}

static void sb_putc(struct sbuf *b, char c) { sb_putn(b, &c, 1); }

/* The string, "" if nothing was added; the caller frees it. */
static char *sb_take(struct sbuf *b)
{
	if (!b->s) {
		sb_grow(b, 0);
		b->s[0] = '\0';
	}
	return b->s;
}

/* ---- records ---- */

static void record_init(struct audit_record *r)
{
	memset(r, 0, sizeof(*r));
	r->ttfb_ms = -1;
	r->prompt_tokens = -1;
	r->completion_tokens = -1;
	r->cached_tokens = -1;
	r->cache_write_tokens = -1;
	r->reasoning_tokens = -1;
	r->cost_nano = -1;
}

struct audit_record *audit_record_new(void)
{
	struct audit_record *r = xmalloc(sizeof(*r));
	record_init(r);
	return r;
}

struct audit_record *audit_record_pack(const struct audit_record *src, bool with_bodies)
{
	static const size_t fields[] = {
		offsetof(struct audit_record, request_id), offsetof(struct audit_record, key_name),
		offsetof(struct audit_record, client_ip), offsetof(struct audit_record, method),
		offsetof(struct audit_record, path), offsetof(struct audit_record, route),
		offsetof(struct audit_record, upstream), offsetof(struct audit_record, model),
		offsetof(struct audit_record, error), offsetof(struct audit_record, attempts),
		offsetof(struct audit_record, upstream_request_id),
		offsetof(struct audit_record, price_version),
		/* the bodies last: left out without with_bodies */
		offsetof(struct audit_record, request_body),
		offsetof(struct audit_record, response_body),
	};
	size_t n = sizeof(fields) / sizeof(fields[0]) - (with_bodies ? 0 : 2);
	size_t len[sizeof(fields) / sizeof(fields[0])] = { 0 };
	size_t need = sizeof(struct audit_record);
	struct audit_record *r;
	char *p;

	for (size_t i = 0; i < n; i++) {
		const char *s = *(char *const *)((const char *)src + fields[i]);
		if (s)
			need += (len[i] = strlen(s) + 1);
	}
	r = xmalloc(need);
	*r = *src;
	r->next_ = NULL;
	r->packed_ = true;
	r->refs_ = 1;
	r->size_ = need;
	if (!with_bodies)
		r->request_body = r->response_body = NULL;
	p = (char *)(r + 1);
	for (size_t i = 0; i < n; i++) {
		char **dst = (char **)((char *)r + fields[i]);
		if (!len[i])
			continue;
		memcpy(p, *dst, len[i]);
		*dst = p;
		p += len[i];
	}
	return r;
}

void audit_record_clear(struct audit_record *r)
{
	if (!r)
		return;
	if (r->packed_) {
		record_init(r);  /* the strings go with the block, in audit_record_free */
		return;
	}
	free(r->request_id);
	free(r->key_name);
	free(r->client_ip);
	free(r->method);
	free(r->path);
	free(r->route);
	free(r->upstream);
	free(r->model);
	free(r->error);
	free(r->attempts);
	free(r->upstream_request_id);
	free(r->price_version);
	free(r->request_body);
	free(r->response_body);
	record_init(r);
}

struct audit_record *audit_record_share(const struct audit_record *r)
{
	struct audit_record *w = (struct audit_record *)r;   /* only refs_ changes */

	if (!r->packed_ || r->request_body || r->response_body)
		return audit_record_pack(r, false);
	__atomic_add_fetch(&w->refs_, 1, __ATOMIC_RELAXED);
	return w;
}

void audit_record_free(struct audit_record *r)
{
	if (!r)
		return;
	/* the last owner frees; acquire-release so it sees every other owner's reads done */
	if (r->packed_ && __atomic_sub_fetch(&r->refs_, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	audit_record_clear(r);
	free(r);
}

size_t audit_record_bytes(const struct audit_record *r)
{
	const char *s[] = { r->request_id, r->key_name, r->client_ip, r->method, r->path,
	                    r->route, r->upstream, r->model, r->error, r->attempts,
	                    r->upstream_request_id, r->price_version, r->request_body,
	                    r->response_body };
	size_t n = sizeof(*r);

	if (r->packed_)
		return r->size_;
	for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++)
		n += s[i] ? strlen(s[i]) + 1 : 0;
	return n;
}

static void free_list(struct audit_record *r)
{
	while (r) {
		struct audit_record *next = r->next_;
		audit_record_free(r);
		r = next;
	}
}

/* ---- fields ---- */

int audit_field_index(const char *name)
{
	if (!name)
		return -1;
	for (int i = 0; i < AUDIT_NFIELDS; i++)
		if (strcmp(name, audit_field_names[i]) == 0)
			return i;
	return -1;
}

/* "request_id, started_at, ..." for error messages; caller frees. */
static char *field_list_text(void)
{
	struct sbuf b = { 0 };

	for (int i = 0; i < AUDIT_NFIELDS; i++) {
		if (i)
			sb_putn(&b, ", ", 2);
		sb_putn(&b, audit_field_names[i], strlen(audit_field_names[i]));
	}
	return sb_take(&b);
}

int audit_fields_parse(const char *list, int *out, size_t cap, char **err)
{
	const char *p = list ? list : "";
	size_t n = 0;

	for (;;) {
		const char *start, *end;
		char name[64];
		int idx = -1;

		while (*p == ' ' || *p == '\t')
			p++;
		start = p;
		while (*p && *p != ',')
			p++;
		end = p;
		while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		if ((size_t)(end - start) < sizeof(name)) {
			memcpy(name, start, (size_t)(end - start));
			name[end - start] = '\0';
			idx = audit_field_index(name);
		}
		if (idx < 0) {
			char *valid = field_list_text();
			if (end == start)
				set_err(err, "empty field name in \"%s\"; fields are: %s", list ? list : "",
				        valid);
			else
				set_err(err, "unknown field \"%.*s\"; fields are: %s", (int)(end - start),
				        start, valid);
			free(valid);
			return -1;
		}
		if (n >= cap) {
			set_err(err, "too many fields in \"%s\" (at most %zu)", list, cap);
			return -1;
		}
		out[n++] = idx;
		if (!*p)
			break;
		p++;
	}
	return (int)n;
}

static const int default_fields[AUDIT_NDEFAULT_FIELDS] = {
	0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
	AUDIT_F_RETRIES, AUDIT_F_ATTEMPTS, AUDIT_F_CACHED_TOKENS, AUDIT_F_CACHE_WRITE_TOKENS,
	AUDIT_F_REASONING_TOKENS, AUDIT_F_UPSTREAM_REQUEST_ID, AUDIT_F_USER_ID, AUDIT_F_COST_USD,
	AUDIT_F_PRICE_VERSION, AUDIT_F_ESTIMATED,
};

static void pick_fields(const int **fields, size_t *nfields)
{
	if (!*fields) {
		*fields = default_fields;
		*nfields = AUDIT_NDEFAULT_FIELDS;
	}
}

/* ---- formatting ---- */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if the bytes there are not one
 * (overlong forms, surrogates and code points past U+10FFFF are invalid). */
static size_t utf8_seq(const unsigned char *s)
{
	unsigned c = s[0];
	size_t n;
	unsigned cp;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2, cp = c & 0x1f;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3, cp = c & 0x0f;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4, cp = c & 0x07;
	else
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

/* s as a JSON string, with U+FFFD for each byte that is not part of valid UTF-8: paths
 * and headers come from clients, and one bad byte must not cost the whole row. */
static json_t *json_text(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	struct sbuf b = { 0 };
	json_t *j;

	if (!s)
		return json_null();
	if ((j = json_string(s)))
		return j;
	while (*p) {
		size_t n = utf8_seq(p);
		if (n) {
			sb_putn(&b, (const char *)p, n);
			p += n;
		} else {
			sb_putn(&b, "\xef\xbf\xbd", 3);
			p++;
		}
	}
	j = json_string(sb_take(&b));
	free(b.s);
	return j ? j : json_null();
}

static void format_time(double t, char *out, size_t cap)
{
	struct tm tm;
	time_t secs;
	long ms;

	if (!(t >= 0) || t > 253402300799.0)   /* NaN, negative, past year 9999 */
		t = 0;
	secs = (time_t)floor(t);
	ms = lround((t - (double)secs) * 1000.0);
	if (ms >= 1000) {
		secs++;
		ms -= 1000;
	}
	gmtime_r(&secs, &tm);
	snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
	         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
}

/* Milliseconds rounded to microseconds, so JSON shows 12.346, not 12.345999999999. */
static double ms3(double v)
{
	return round(v * 1000.0) / 1000.0;
}

/* A token count for CSV: empty when unknown (-1). */
static const char *count_text(int64_t v, char *buf, size_t cap)
{
	if (v < 0)
		return NULL;
	snprintf(buf, cap, "%" PRId64, v);
	return buf;
}

/* The text of one field for CSV: points into the record or into buf; NULL = empty. */
static const char *field_text(const struct audit_record *r, int f, char *buf, size_t cap)
{
	switch (f) {
	case AUDIT_F_REQUEST_ID: return r->request_id;
	case AUDIT_F_STARTED_AT: format_time(r->started_at, buf, cap); return buf;
	case AUDIT_F_KEY_ID:
		if (r->key_id <= 0)
			return NULL;
		snprintf(buf, cap, "%" PRId64, r->key_id);
		return buf;
	case AUDIT_F_KEY_NAME: return r->key_name;
	case AUDIT_F_CLIENT_IP: return r->client_ip;
	case AUDIT_F_METHOD: return r->method;
	case AUDIT_F_PATH: return r->path;
	case AUDIT_F_ROUTE: return r->route;
	case AUDIT_F_UPSTREAM: return r->upstream;
	case AUDIT_F_STATUS: snprintf(buf, cap, "%d", r->status); return buf;
	case AUDIT_F_LATENCY_MS: snprintf(buf, cap, "%.3f", r->latency_ms); return buf;
	case AUDIT_F_TTFB_MS:
		if (r->ttfb_ms < 0)
			return NULL;
		snprintf(buf, cap, "%.3f", r->ttfb_ms);
		return buf;
	case AUDIT_F_IS_STREAM: return r->is_stream ? "1" : "0";
	case AUDIT_F_CHUNKS: snprintf(buf, cap, "%" PRId64, r->chunks); return buf;
	case AUDIT_F_BYTES_IN: snprintf(buf, cap, "%" PRId64, r->bytes_in); return buf;
	case AUDIT_F_BYTES_OUT: snprintf(buf, cap, "%" PRId64, r->bytes_out); return buf;
	case AUDIT_F_MODEL: return r->model;
	case AUDIT_F_PROMPT_TOKENS:
		if (r->prompt_tokens < 0)
			return NULL;
		snprintf(buf, cap, "%" PRId64, r->prompt_tokens);
		return buf;
	case AUDIT_F_COMPLETION_TOKENS:
		if (r->completion_tokens < 0)
			return NULL;
		snprintf(buf, cap, "%" PRId64, r->completion_tokens);
		return buf;
	case AUDIT_F_ERROR: return r->error;
	case AUDIT_F_RETRIES: snprintf(buf, cap, "%d", r->retries); return buf;
	case AUDIT_F_ATTEMPTS: return r->attempts;
	case AUDIT_F_CACHED_TOKENS: return count_text(r->cached_tokens, buf, cap);
	case AUDIT_F_CACHE_WRITE_TOKENS: return count_text(r->cache_write_tokens, buf, cap);
	case AUDIT_F_REASONING_TOKENS: return count_text(r->reasoning_tokens, buf, cap);
	case AUDIT_F_UPSTREAM_REQUEST_ID: return r->upstream_request_id;
	case AUDIT_F_USER_ID:
		if (r->user_id <= 0)
			return NULL;
		snprintf(buf, cap, "%" PRId64, r->user_id);
		return buf;
	case AUDIT_F_COST_USD:
		if (r->cost_nano < 0 || cap < FMT_USD_MAX)
			return NULL;
		fmt_usd_nano(buf, r->cost_nano);
		return buf;
	case AUDIT_F_PRICE_VERSION: return r->price_version;
	case AUDIT_F_ESTIMATED: return r->estimated ? "1" : "0";
	case AUDIT_F_BILLED: return r->billed ? "1" : "0";
	case AUDIT_F_UNPRICED: return r->unpriced ? "1" : "0";
	case AUDIT_F_REQUEST_BODY: return r->request_body;
	case AUDIT_F_RESPONSE_BODY: return r->response_body;
	default: return NULL;
	}
}

static void csv_put(struct sbuf *b, const char *s)
{
	if (!s)
		return;
	if (!strpbrk(s, ",\"\r\n")) {
		sb_putn(b, s, strlen(s));
		return;
	}
	sb_putc(b, '"');
	for (; *s; s++) {
		if (*s == '"')
			sb_putc(b, '"');
		sb_putc(b, *s);
	}
	sb_putc(b, '"');
}

char *audit_csv_header(const int *fields, size_t nfields)
{
	struct sbuf b = { 0 };

	pick_fields(&fields, &nfields);
	for (size_t i = 0; i < nfields; i++) {
		if (i)
			sb_putc(&b, ',');
		if (fields[i] >= 0 && fields[i] < AUDIT_NFIELDS)
			csv_put(&b, audit_field_names[fields[i]]);
	}
	return sb_take(&b);
}

char *audit_record_csv(const struct audit_record *r, const int *fields, size_t nfields)
{
	struct sbuf b = { 0 };
	char buf[64];

	pick_fields(&fields, &nfields);
	for (size_t i = 0; i < nfields; i++) {
		if (i)
			sb_putc(&b, ',');
		csv_put(&b, field_text(r, fields[i], buf, sizeof(buf)));
	}
	return sb_take(&b);
}

char *audit_csv_line(const char *const *cells, size_t n)
{
	struct sbuf b = { 0 };

	for (size_t i = 0; i < n; i++) {
		if (i)
			sb_putc(&b, ',');
		csv_put(&b, cells[i]);
	}
	return sb_take(&b);
}

static json_t *int_or_null(int64_t v, int64_t unknown_below)
{
	return v < unknown_below ? json_null() : json_integer((json_int_t)v);
}

static json_t *field_json(const struct audit_record *r, int f)
{
	char buf[64];

	switch (f) {
	case AUDIT_F_REQUEST_ID: return json_text(r->request_id);
	case AUDIT_F_STARTED_AT: format_time(r->started_at, buf, sizeof(buf)); return json_string(buf);
	case AUDIT_F_KEY_ID: return int_or_null(r->key_id, 1);
	case AUDIT_F_KEY_NAME: return json_text(r->key_name);
	case AUDIT_F_CLIENT_IP: return json_text(r->client_ip);
	case AUDIT_F_METHOD: return json_text(r->method);
	case AUDIT_F_PATH: return json_text(r->path);
	case AUDIT_F_ROUTE: return json_text(r->route);
	case AUDIT_F_UPSTREAM: return json_text(r->upstream);
	case AUDIT_F_STATUS: return json_integer(r->status);
	case AUDIT_F_LATENCY_MS: return json_real(ms3(r->latency_ms));
	case AUDIT_F_TTFB_MS: return r->ttfb_ms < 0 ? json_null() : json_real(ms3(r->ttfb_ms));
	case AUDIT_F_IS_STREAM: return json_boolean(r->is_stream);
	case AUDIT_F_CHUNKS: return json_integer((json_int_t)r->chunks);
	case AUDIT_F_BYTES_IN: return json_integer((json_int_t)r->bytes_in);
	case AUDIT_F_BYTES_OUT: return json_integer((json_int_t)r->bytes_out);
	case AUDIT_F_MODEL: return json_text(r->model);
	case AUDIT_F_PROMPT_TOKENS: return int_or_null(r->prompt_tokens, 0);
	case AUDIT_F_COMPLETION_TOKENS: return int_or_null(r->completion_tokens, 0);
	case AUDIT_F_ERROR: return json_text(r->error);
	case AUDIT_F_RETRIES: return json_integer(r->retries);
	case AUDIT_F_ATTEMPTS: return json_text(r->attempts);
	case AUDIT_F_CACHED_TOKENS: return int_or_null(r->cached_tokens, 0);
	case AUDIT_F_CACHE_WRITE_TOKENS: return int_or_null(r->cache_write_tokens, 0);
	case AUDIT_F_REASONING_TOKENS: return int_or_null(r->reasoning_tokens, 0);
	case AUDIT_F_UPSTREAM_REQUEST_ID: return json_text(r->upstream_request_id);
	case AUDIT_F_USER_ID: return int_or_null(r->user_id, 1);
	case AUDIT_F_COST_USD:
		/* a string: a JSON number would be read as a double by most parsers */
		if (r->cost_nano < 0)
			return json_null();
		fmt_usd_nano(buf, r->cost_nano);
		return json_string(buf);
	case AUDIT_F_PRICE_VERSION: return json_text(r->price_version);
	case AUDIT_F_ESTIMATED: return json_boolean(r->estimated);
	case AUDIT_F_BILLED: return json_boolean(r->billed);
	case AUDIT_F_UNPRICED: return json_boolean(r->unpriced);
	case AUDIT_F_REQUEST_BODY: return json_text(r->request_body);
	case AUDIT_F_RESPONSE_BODY: return json_text(r->response_body);
	default: return json_null();
	}
}

json_t *audit_record_json(const struct audit_record *r, const int *fields, size_t nfields)
{
	json_t *o = json_object();

	if (!o)
		abort();
	pick_fields(&fields, &nfields);
	for (size_t i = 0; i < nfields; i++)
		if (fields[i] >= 0 && fields[i] < AUDIT_NFIELDS)
			json_object_set_new(o, audit_field_names[fields[i]], field_json(r, fields[i]));
	return o;
}

char *audit_record_jsonl(const struct audit_record *r, const int *fields, size_t nfields)
{
	json_t *o = audit_record_json(r, fields, nfields);
	char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);

	json_decref(o);
	if (!s)
		abort();
	return s;
}

/* ---- spool codec ----
 * One record per line: every field under its export name, "v" the format version.
 * Unlike the exports, times and numbers are kept exactly: started_at is unix seconds,
 * unknown values are -1, so a replayed row equals the row that would have been written. */

static char *spool_line(const struct audit_record *r)
{
	json_t *o = json_object();
	char *s;

	if (!o)
		abort();
	json_object_set_new(o, "v", json_integer(SPOOL_VERSION));
	json_object_set_new(o, "request_id", json_text(r->request_id));
	json_object_set_new(o, "started_at", json_real(r->started_at));
	json_object_set_new(o, "key_id", json_integer((json_int_t)r->key_id));
	json_object_set_new(o, "key_name", json_text(r->key_name));
	json_object_set_new(o, "client_ip", json_text(r->client_ip));
	json_object_set_new(o, "method", json_text(r->method));
	json_object_set_new(o, "path", json_text(r->path));
	json_object_set_new(o, "route", json_text(r->route));
	json_object_set_new(o, "upstream", json_text(r->upstream));
	json_object_set_new(o, "status", json_integer(r->status));
	json_object_set_new(o, "latency_ms", json_real(r->latency_ms));
	json_object_set_new(o, "ttfb_ms", json_real(r->ttfb_ms));
	json_object_set_new(o, "is_stream", json_boolean(r->is_stream));
	json_object_set_new(o, "chunks", json_integer((json_int_t)r->chunks));
	json_object_set_new(o, "bytes_in", json_integer((json_int_t)r->bytes_in));
	json_object_set_new(o, "bytes_out", json_integer((json_int_t)r->bytes_out));
	json_object_set_new(o, "model", json_text(r->model));
	json_object_set_new(o, "prompt_tokens", json_integer((json_int_t)r->prompt_tokens));
	json_object_set_new(o, "completion_tokens", json_integer((json_int_t)r->completion_tokens));
	json_object_set_new(o, "error", json_text(r->error));
	json_object_set_new(o, "retries", json_integer(r->retries));
	json_object_set_new(o, "attempts", json_text(r->attempts));
	json_object_set_new(o, "cached_tokens", json_integer((json_int_t)r->cached_tokens));
	json_object_set_new(o, "cache_write_tokens",
	                    json_integer((json_int_t)r->cache_write_tokens));
	json_object_set_new(o, "reasoning_tokens", json_integer((json_int_t)r->reasoning_tokens));
	json_object_set_new(o, "upstream_request_id", json_text(r->upstream_request_id));
	json_object_set_new(o, "user_id", json_integer((json_int_t)r->user_id));
	json_object_set_new(o, "cost_nano", json_integer((json_int_t)r->cost_nano));
	json_object_set_new(o, "price_version", json_text(r->price_version));
	json_object_set_new(o, "estimated", json_boolean(r->estimated));
	json_object_set_new(o, "billed", json_boolean(r->billed));
	json_object_set_new(o, "unpriced", json_boolean(r->unpriced));
	if (r->request_body)
		json_object_set_new(o, "request_body", json_text(r->request_body));
	if (r->response_body)
		json_object_set_new(o, "response_body", json_text(r->response_body));
	s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (!s)
		abort();
	return s;
}

static char *j_str(const json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? xstrdup(s) : NULL;
}

static double j_num(const json_t *o, const char *key, double dflt)
{
	const json_t *v = json_object_get(o, key);
	return json_is_number(v) ? json_number_value(v) : dflt;
}

static int64_t j_int(const json_t *o, const char *key, int64_t dflt)
{
	const json_t *v = json_object_get(o, key);
	if (json_is_integer(v))
		return (int64_t)json_integer_value(v);
	if (json_is_real(v))
		return (int64_t)json_real_value(v);
	return dflt;
}

/* A record from one spool line, or NULL if the line is not one. */
static struct audit_record *spool_parse(const char *line, size_t len)
{
	json_error_t jerr;
	json_t *o = json_loadb(line, len, 0, &jerr);
	struct audit_record *r = NULL;

	/* A later format only adds fields, so a line from a newer fastgated is read for the
	 * fields this one knows rather than lost. */
	if (!json_is_object(o) || !json_is_string(json_object_get(o, "request_id")) ||
	    j_int(o, "v", 0) < SPOOL_VERSION)
		goto done;
	r = audit_record_new();
	r->request_id = j_str(o, "request_id");
	r->started_at = j_num(o, "started_at", 0);
	r->key_id = j_int(o, "key_id", 0);
	r->key_name = j_str(o, "key_name");
	r->client_ip = j_str(o, "client_ip");
	r->method = j_str(o, "method");
	r->path = j_str(o, "path");
	r->route = j_str(o, "route");
	r->upstream = j_str(o, "upstream");
	r->status = (int)j_int(o, "status", 0);
	r->latency_ms = j_num(o, "latency_ms", 0);
	r->ttfb_ms = j_num(o, "ttfb_ms", -1);
	r->is_stream = json_is_true(json_object_get(o, "is_stream"));
	r->chunks = j_int(o, "chunks", 0);
	r->bytes_in = j_int(o, "bytes_in", 0);
	r->bytes_out = j_int(o, "bytes_out", 0);
	r->model = j_str(o, "model");
	r->prompt_tokens = j_int(o, "prompt_tokens", -1);
	r->completion_tokens = j_int(o, "completion_tokens", -1);
	r->error = j_str(o, "error");
	r->retries = (int)j_int(o, "retries", 0);
	r->attempts = j_str(o, "attempts");      /* absent from lines spooled before it existed */
	r->cached_tokens = j_int(o, "cached_tokens", -1);          /* likewise */
	r->cache_write_tokens = j_int(o, "cache_write_tokens", -1);
	r->reasoning_tokens = j_int(o, "reasoning_tokens", -1);
	r->upstream_request_id = j_str(o, "upstream_request_id");   /* likewise */
	r->user_id = j_int(o, "user_id", 0);                         /* likewise */
	r->cost_nano = j_int(o, "cost_nano", -1);
	r->price_version = j_str(o, "price_version");
	r->estimated = json_is_true(json_object_get(o, "estimated"));
	r->billed = json_is_true(json_object_get(o, "billed"));
	r->unpriced = json_is_true(json_object_get(o, "unpriced"));
	r->request_body = j_str(o, "request_body");
	r->response_body = j_str(o, "response_body");
done:
	json_decref(o);
	return r;
}

/* ---- spend counters in memory ---- */

static const char *const period_names[] = { [SPEND_ALL] = "all", [SPEND_DAY] = "day",
                                            [SPEND_MONTH] = "month" };

static size_t spend_hash(const struct spend_key *k)
{
	uint64_t h = (uint64_t)k->id * 0x9e3779b97f4a7c15u;

	h ^= (uint64_t)k->start * 0xc2b2ae3d27d4eb4fu;
	h ^= ((uint64_t)(unsigned char)k->scope << 8 | k->period) * 0x165667b19e3779f9u;
	h ^= h >> 31;
	return (size_t)h;
}

static bool spend_key_eq(const struct spend_key *a, const struct spend_key *b)
{
	return a->id == b->id && a->start == b->start && a->scope == b->scope &&
	       a->period == b->period;
}

/* Room for `want` entries with the table at most half full (short probe runs). */
static void spend_map_grow(struct spend_map *m, size_t want)
{
	struct spend_map bigger = { NULL, m->cap ? m->cap : 64, 0 };

	if (want * 2 <= m->cap)
		return;
	while (want * 2 > bigger.cap)
		bigger.cap *= 2;
	bigger.e = xcalloc(bigger.cap, sizeof(*bigger.e));
	for (size_t j = 0; j < m->cap; j++) {
		size_t i;

		if (!m->e[j].used)
			continue;
		for (i = spend_hash(&m->e[j].k) & (bigger.cap - 1); bigger.e[i].used;
		     i = (i + 1) & (bigger.cap - 1))
			;
		bigger.e[i] = m->e[j];
		bigger.n++;
	}
	free(m->e);
	*m = bigger;
}

/* The entry for k, made (zero) if there is none. Never NULL (out of memory aborts). */
static struct spend_ent *spend_get(struct spend_map *m, const struct spend_key *k)
{
	size_t i;

	spend_map_grow(m, m->n + 1);
	for (i = spend_hash(k) & (m->cap - 1); m->e[i].used; i = (i + 1) & (m->cap - 1))
		if (spend_key_eq(&m->e[i].k, k))
			return &m->e[i];
	m->e[i].k = *k;
	m->e[i].requests = m->e[i].tokens = m->e[i].cost_nano = 0;
	m->e[i].used = true;
	m->n++;
	return &m->e[i];
}

static void spend_add(struct spend_map *m, const struct spend_key *k, int64_t requests,
                      int64_t tokens, int64_t cost_nano)
{
	struct spend_ent *e = spend_get(m, k);

	e->requests += requests;
	e->tokens += tokens;
	e->cost_nano += cost_nano;
}

/* Empty it, keeping the table for the next batch unless a large one grew it. */
static void spend_clear(struct spend_map *m)
{
	if (m->cap > 4096) {
		free(m->e);
		m->e = NULL;
		m->cap = 0;
	} else if (m->n) {
		memset(m->e, 0, m->cap * sizeof(*m->e));
	}
	m->n = 0;
}

static void spend_free(struct spend_map *m)
{
	free(m->e);
	memset(m, 0, sizeof(*m));
}

/* 00:00 UTC of the day that holds t (unix seconds): the calendar of the limits (limit.h),
 * so that the counters written here and the windows counted in memory agree. */
static int64_t day_start(double t)
{
	static const struct limit day = { .window = LIMIT_DAY };

	return limit_window_start(&day, (int64_t)floor(t));
}

/* 00:00 UTC of the first of the month that holds t (unix seconds), or of the next month. */
static int64_t month_start(int64_t t, bool next)
{
	return next ? limit_next_month(t) : limit_month_start(t);
}

/* One inserted row, if it is billed and has a key: its key's and its user's day. The
 * month and all-time counters follow from the days in spend_roll_up. */
static void spend_count(struct spend_map *m, bool billed, int64_t key_id, int64_t user_id,
                        double started_at, int64_t prompt, int64_t completion,
                        int64_t cost_nano)
{
	struct spend_key k;
	int64_t tokens;

	if (!billed || key_id <= 0)
		return;
	tokens = (prompt > 0 ? prompt : 0) + (completion > 0 ? completion : 0);
	if (cost_nano < 0)
		cost_nano = 0;
	k.scope = 'k';
	k.period = SPEND_DAY;
	k.id = key_id;
	k.start = day_start(started_at);
	spend_add(m, &k, 1, tokens, cost_nano);
	if (user_id > 0) {
		k.scope = 'u';
		k.id = user_id;
		spend_add(m, &k, 1, tokens, cost_nano);
	}
}

/* Add every day entry to its month's and to the all-time entry of the same scope. */
static void spend_roll_up(struct spend_map *m)
{
	/* room for a month and an all-time entry per day: nothing moves while we walk */
	spend_map_grow(m, m->n * 3);
	for (size_t i = 0; i < m->cap; i++) {
		const struct spend_ent *d = &m->e[i];
		struct spend_key k;

		if (!d->used || d->k.period != SPEND_DAY)
			continue;
		k = d->k;
		k.period = SPEND_MONTH;
		k.start = month_start(d->k.start, false);
		spend_add(m, &k, d->requests, d->tokens, d->cost_nano);
		k.period = SPEND_ALL;
		k.start = 0;
		spend_add(m, &k, d->requests, d->tokens, d->cost_nano);
	}
}

/* ---- database ---- */

/* Create the file ourselves so it is 0600 whatever the umask; SQLite gives the -wal and
 * -shm files the database file's mode. The directory is the operator's to create. */
static int ensure_db_file(const char *path, char **err)
{
	struct stat st;
	int fd;

	if (stat(path, &st) == 0) {
		if (!S_ISREG(st.st_mode)) {
			set_err(err, "audit database %s is not a regular file", path);
			return -1;
		}
		if (st.st_mode & 077)
			log_warn("audit database %s is accessible by group or others (mode %03o); "
			         "run chmod 600 on it", path, (unsigned)(st.st_mode & 0777));
		return 0;
	}
	if (errno != ENOENT) {
		set_err(err, "cannot open audit database %s: %s", path, strerror(errno));
		return -1;
	}
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		if (errno == EEXIST)    /* another process made it between stat and open */
			return 0;
		if (errno == ENOENT)
			set_err(err, "cannot create audit database %s: its directory does not exist "
			        "(create it, or point --audit elsewhere)", path);
		else
			set_err(err, "cannot create audit database %s: %s", path, strerror(errno));
		return -1;
	}
	if (fchmod(fd, 0600) != 0) {
		set_err(err, "cannot set mode 0600 on audit database %s: %s", path, strerror(errno));
		close(fd);
		unlink(path);
		return -1;
	}
	close(fd);
	return 0;
}

static int exec_sql(sqlite3 *db, const char *sql)
{
	return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

static void rollback(sqlite3 *db)
{
	if (!sqlite3_get_autocommit(db))
		exec_sql(db, "ROLLBACK");
}

static int read_user_version(sqlite3 *db, int *version)
{
	sqlite3_stmt *st = NULL;
	int rc = -1;

	if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW) {
		*version = sqlite3_column_int(st, 0);
		rc = 0;
	}
	sqlite3_finalize(st);
	return rc;
}

/* Bring the schema to SCHEMA_VERSION. A database already at that version is not written
 * to, so one that is read-only or locked right now still opens (records then wait). */
static int migrate(sqlite3 *db, const char *path, char **err)
{
	int version = 0;
	char sql[64];

	if (read_user_version(db, &version) < 0) {
		set_err(err, "audit database %s: cannot read schema version: %s", path,
		        sqlite3_errmsg(db));
		return -1;
	}
	if (version == SCHEMA_VERSION)
		return 0;
	if (exec_sql(db, "BEGIN IMMEDIATE") != SQLITE_OK) {
		set_err(err, "audit database %s: cannot create or update its schema: %s", path,
		        sqlite3_errmsg(db));
		return -1;
	}
	if (read_user_version(db, &version) < 0) {
		set_err(err, "audit database %s: cannot read schema version: %s", path,
		        sqlite3_errmsg(db));
		goto fail;
	}
	if (version > SCHEMA_VERSION) {
		set_err(err, "audit database %s has schema version %d, newer than the %d this "
		        "fastgated understands: upgrade fastgated or use another --audit file",
		        path, version, SCHEMA_VERSION);
		goto fail;
	}
	if (version < 0) {
		set_err(err, "audit database %s has an invalid schema version %d", path, version);
		goto fail;
	}
	for (size_t i = 0; i < sizeof(migrations) / sizeof(migrations[0]); i++) {
		if (migrations[i].version <= version)
			continue;
		if (version > 0)
			log_info("audit database %s: updating the schema to version %d (on a large "
			         "database this takes a while, once)", path, migrations[i].version);
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", migrations[i].version);
		if (exec_sql(db, migrations[i].sql) != SQLITE_OK ||
		    exec_sql(db, sql) != SQLITE_OK) {
			set_err(err, "audit database %s: schema migration to version %d failed: %s",
			        path, migrations[i].version, sqlite3_errmsg(db));
			goto fail;
		}
		if (version > 0)
			log_info("audit database %s: schema migrated to version %d", path,
			         migrations[i].version);
	}
	if (exec_sql(db, "COMMIT") != SQLITE_OK) {
		set_err(err, "audit database %s: cannot commit its schema: %s", path,
		        sqlite3_errmsg(db));
		goto fail;
	}
	return 0;
fail:
	rollback(db);
	return -1;
}

static void db_disconnect(struct audit *a)
{
	sqlite3_finalize(a->st_insert);
	sqlite3_finalize(a->st_block);
	sqlite3_finalize(a->st_prune_blocks);
	sqlite3_finalize(a->st_insert_new);
	sqlite3_finalize(a->st_untimed);
	a->st_block = a->st_prune_blocks = a->st_insert_new = a->st_untimed = NULL;
	sqlite3_finalize(a->st_begin);
	sqlite3_finalize(a->st_commit);
	a->st_begin = a->st_commit = NULL;
	sqlite3_finalize(a->st_prune);
	a->st_insert = a->st_prune = NULL;
	sqlite3_finalize(a->st_top);
	sqlite3_finalize(a->st_spend_rows);
	sqlite3_finalize(a->st_spend_add);
	sqlite3_finalize(a->st_mark_set);
	sqlite3_finalize(a->st_spend_new);
	a->st_top = a->st_spend_rows = a->st_spend_add = a->st_mark_set = a->st_spend_new = NULL;
	if (a->db && sqlite3_close(a->db) != SQLITE_OK)
		log_warn("audit database %s: close failed: %s", a->db_path, sqlite3_errmsg(a->db));
	a->db = NULL;
}

/* "?1, ?2, ..., ?N" for every field, at sql + n; the new length. */
static size_t every_parameter(char *sql, size_t cap, size_t n)
{
	for (int j = 1; j <= AUDIT_NFIELDS; j++)
		n += (size_t)snprintf(sql + n, cap - n, "%s?%d", j > 1 ? ", " : "", j);
	return n;
}

static void spend_catch_up_now(struct audit *a);

/* Open the writer's connection and its statements, creating the file (0600) and the schema
 * if needed: at open, and again after a failure that may have left the connection unable
 * to write (e.g. the file was moved away). A current schema costs one PRAGMA read. */
static int db_connect(struct audit *a, char **err)
{
	sqlite3_stmt *st = NULL;
	char insert[1024], insert_new[1024];
	size_t n;
	int rc;

	n = (size_t)snprintf(insert, sizeof(insert), "INSERT INTO audit_rows (" COLUMNS ") VALUES (");
	n = every_parameter(insert, sizeof(insert), n);
	snprintf(insert + n, sizeof(insert) - n, ")");
	/* a spooled record may have been committed already, by a replay that was cut off
	 * before the spool shrank: the time index finds it at once. Only a replay writes a
	 * spooled record, and only into audit_rows, so that is the one place to look. */
	n = (size_t)snprintf(insert_new, sizeof(insert_new),
	                     "INSERT INTO audit_rows (" COLUMNS ") SELECT ");
	n = every_parameter(insert_new, sizeof(insert_new), n);
	snprintf(insert_new + n, sizeof(insert_new) - n, " WHERE NOT EXISTS (SELECT 1 FROM audit_rows "
	         "WHERE started_at = ?2 AND request_id = ?1)");
	if (ensure_db_file(a->db_path, err) < 0)
		return -1;
	if (sqlite3_open_v2(a->db_path, &a->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
	                    NULL) != SQLITE_OK) {
		set_err(err, "cannot open audit database %s: %s", a->db_path,
		        a->db ? sqlite3_errmsg(a->db) : "out of memory");
		goto fail;
	}
	sqlite3_extended_result_codes(a->db, 1);
	sqlite3_busy_timeout(a->db, (int)a->busy_timeout_ms);

	/* The first statement is where "file is not a database" shows up. A read-only file
	 * cannot switch to WAL; that is reported by the first write, not here. */
	if (sqlite3_prepare_v2(a->db, "PRAGMA journal_mode=WAL", -1, &st, NULL) != SQLITE_OK) {
		set_err(err, "cannot open audit database %s: %s", a->db_path, sqlite3_errmsg(a->db));
		goto fail;
	}
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW &&
	    sqlite3_stricmp((const char *)sqlite3_column_text(st, 0), "wal") != 0)
		log_warn("audit database %s: WAL journal not available (journal_mode=%s)",
		         a->db_path, sqlite3_column_text(st, 0));
	if ((rc & 0xff) == SQLITE_NOTADB || (rc & 0xff) == SQLITE_CORRUPT) {
		set_err(err, "cannot open audit database %s: %s", a->db_path, sqlite3_errmsg(a->db));
		goto fail;
	}
	sqlite3_finalize(st);
	st = NULL;
	/* WAL + NORMAL: a commit survives a crash of fastgated; only a power loss can cost
	 * the last transactions. */
	exec_sql(a->db, "PRAGMA synchronous=NORMAL");

	if (migrate(a->db, a->db_path, err) < 0)
		goto fail;
	if (sqlite3_prepare_v3(a->db, insert, -1, SQLITE_PREPARE_PERSISTENT, &a->st_insert,
	                       NULL) != SQLITE_OK ||
	    sqlite3_prepare_v3(a->db, insert_new, -1, SQLITE_PREPARE_PERSISTENT,
	                       &a->st_insert_new, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v3(a->db,
	                       "UPDATE audit_untimed_ids SET until = ?1 WHERE until < ?1",
	                       -1, SQLITE_PREPARE_PERSISTENT, &a->st_untimed, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v3(a->db,
	                       "DELETE FROM audit_rows WHERE rowid IN (SELECT rowid FROM "
	                       "audit_rows WHERE started_at < ?1 ORDER BY started_at LIMIT ?2)",
	                       -1, SQLITE_PREPARE_PERSISTENT, &a->st_prune, NULL) != SQLITE_OK ||
	    /* a block whose first row started a span before the cutoff has no row left to
	     * keep (auditblock.h) */
	    sqlite3_prepare_v3(a->db,
	                       "DELETE FROM audit_block WHERE id IN (SELECT id FROM audit_block "
	                       "WHERE first_started < ?1 - " SPAN_SQL " ORDER BY first_started "
	                       "LIMIT ?2)", -1, SQLITE_PREPARE_PERSISTENT, &a->st_prune_blocks,
	                       NULL) != SQLITE_OK ||
	    sqlite3_prepare_v3(a->db,
	                       "INSERT INTO audit_block (first_started, last_started, n, rows) "
	                       "VALUES (?1, ?2, ?3, ?4)", -1, SQLITE_PREPARE_PERSISTENT,
	                       &a->st_block, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v3(a->db, "BEGIN IMMEDIATE", -1, SQLITE_PREPARE_PERSISTENT,
	                       &a->st_begin, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v3(a->db, "COMMIT", -1, SQLITE_PREPARE_PERSISTENT, &a->st_commit,
	                       NULL) != SQLITE_OK ||
	    sqlite3_prepare_v3(a->db, "SELECT coalesce(max(rowid), 0) FROM audit_rows", -1,
	                       SQLITE_PREPARE_PERSISTENT, &a->st_top, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v3(a->db, "SELECT key_id, user_id, started_at, prompt_tokens, "
	                       "completion_tokens, cost_nano FROM audit_rows WHERE rowid > ?1 "
	                       "AND billed = 1 AND key_id > 0", -1, SQLITE_PREPARE_PERSISTENT,
	                       &a->st_spend_rows, NULL) != SQLITE_OK ||
	    /* a counter is made once and then added to every batch: UPDATE first, which costs
	     * about half of an INSERT ... ON CONFLICT DO UPDATE that finds the row */
	    sqlite3_prepare_v3(a->db, "UPDATE spend SET requests = requests + ?4, tokens = "
	                       "tokens + ?5, cost_nano = cost_nano + ?6 WHERE scope = ?1 AND "
	                       "period = ?2 AND start = ?3", -1, SQLITE_PREPARE_PERSISTENT,
	                       &a->st_spend_add, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v3(a->db, "INSERT INTO spend (scope, period, start, requests, tokens, "
	                       "cost_nano) VALUES (?1, ?2, ?3, ?4, ?5, ?6)", -1,
	                       SQLITE_PREPARE_PERSISTENT, &a->st_spend_new, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v3(a->db, "INSERT INTO spend_mark (one, last_rowid) VALUES (1, ?1) "
	                       "ON CONFLICT (one) DO UPDATE SET last_rowid = excluded.last_rowid",
	                       -1, SQLITE_PREPARE_PERSISTENT, &a->st_mark_set, NULL) != SQLITE_OK) {
		set_err(err, "audit database %s: %s", a->db_path, sqlite3_errmsg(a->db));
		goto fail;
	}
	if (sqlite3_prepare_v2(a->db, "SELECT last_rowid FROM spend_mark", -1, &st, NULL) !=
	    SQLITE_OK) {
		set_err(err, "audit database %s: %s", a->db_path, sqlite3_errmsg(a->db));
		goto fail;
	}
	rc = sqlite3_step(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		set_err(err, "audit database %s: cannot read the spend mark: %s", a->db_path,
		        sqlite3_errmsg(a->db));
		goto fail;
	}
	a->mark_db = a->mark_mem = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	sqlite3_finalize(st);
	spend_catch_up_now(a);
	return 0;
fail:
	sqlite3_finalize(st);
	db_disconnect(a);
	return -1;
}

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
	/* with the length given, SQLite does not measure the string a byte at a time
	 * (libc's strlen is several times faster: ~230 instructions a row, issue #6) */
	if (s)
		sqlite3_bind_text(st, i, s, (int)strlen(s), SQLITE_STATIC);
	else
		sqlite3_bind_null(st, i);
}

static void bind_int_or_null(sqlite3_stmt *st, int i, int64_t v, int64_t unknown_below)
{
	if (v < unknown_below)
		sqlite3_bind_null(st, i);
	else
		sqlite3_bind_int64(st, i, v);
}

/* Run a statement without results (BEGIN, COMMIT): SQLITE_OK or the error code. */
static int step_once(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	sqlite3_reset(st);
	return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Errors that one record will hit however often it is retried. */
static bool poison_error(int rc)
{
	rc &= 0xff;
	return rc == SQLITE_CONSTRAINT || rc == SQLITE_MISMATCH || rc == SQLITE_TOOBIG ||
	       rc == SQLITE_RANGE;
}

/* ---- spend counters in the database ----
 * mark_mem is where the counters stand in the rowids of audit_rows: every row up to it is
 * counted or not billed. At the start of each batch the writer reads the last rowid; rows
 * beyond mark_mem that it did not insert itself (sqlite3, another build) are counted then.
 * Blocks need no mark: only the writer makes them, and counts their rows in the
 * transaction that inserts them. The mark is written in the transaction of any batch
 * that counts something, so the counters and the mark move together; a run of batches
 * that count nothing lets it lag (a reconcile at the next open reads those rows again and
 * finds nothing to add), up to MARK_LAG_ROWS rows, and audit_close writes it. */
#define MARK_LAG_ROWS 100000

/* Write the counters in m to the spend table, inside the open transaction. */
static int spend_write(struct audit *a, const struct spend_map *m)
{
	for (size_t i = 0; i < m->cap; i++) {
		const struct spend_ent *e = &m->e[i];
		sqlite3_stmt *st = a->st_spend_add;
		char scope[24];
		size_t n = 2;

		if (!e->used)
			continue;
		scope[0] = e->k.scope;
		scope[1] = ':';
		n += fmt_dec(scope + 2, (uint64_t)e->k.id);   /* ids are positive */
		for (int pass = 0; pass < 2; pass++, st = a->st_spend_new) {
			sqlite3_bind_text(st, 1, scope, (int)n, SQLITE_STATIC);
			sqlite3_bind_text(st, 2, period_names[e->k.period],
			                  (int)strlen(period_names[e->k.period]), SQLITE_STATIC);
			sqlite3_bind_int64(st, 3, e->k.start);
			sqlite3_bind_int64(st, 4, e->requests);
			sqlite3_bind_int64(st, 5, e->tokens);
			sqlite3_bind_int64(st, 6, e->cost_nano);
			if (step_once(st) != SQLITE_OK)
				return -1;
			if (pass == 0 && sqlite3_changes(a->db) > 0)
				break;       /* there already: added to */
		}
	}
	return 0;
}

static int mark_write(struct audit *a, int64_t mark)
{
	sqlite3_bind_int64(a->st_mark_set, 1, mark);
	return step_once(a->st_mark_set) == SQLITE_OK ? 0 : -1;
}

/* Inside the batch's transaction, before its inserts: count the billed rows that others
 * inserted beyond mark_mem into a->spend. The number counted, or -1. */
static int64_t spend_catch_up(struct audit *a)
{
	int64_t top, n = 0;
	int rc;

	rc = sqlite3_step(a->st_top);
	top = sqlite3_column_int64(a->st_top, 0);
	sqlite3_reset(a->st_top);
	if (rc != SQLITE_ROW)
		return -1;
	if (top < a->mark_mem) {
		/* the newest rows were deleted: what is left is counted, and a row inserted by
		 * someone else from now on gets a rowid above top */
		a->mark_mem = top;
		return 0;
	}
	if (top == a->mark_mem)
		return 0;
	sqlite3_bind_int64(a->st_spend_rows, 1, a->mark_mem);
	while ((rc = sqlite3_step(a->st_spend_rows)) == SQLITE_ROW) {
		sqlite3_stmt *st = a->st_spend_rows;

		spend_count(&a->spend, true, sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1),
		            sqlite3_column_double(st, 2), sqlite3_column_int64(st, 3),
		            sqlite3_column_int64(st, 4), sqlite3_column_int64(st, 5));
		n++;
	}
	sqlite3_reset(a->st_spend_rows);
	if (rc != SQLITE_DONE)
		return -1;
	a->mark_mem = top;
	return n;
}

/* Inside the batch's transaction, after its inserts: write what it counted and, when it
 * must (or has lagged long enough), the mark. *mark_to: the mark once committed, or -1. */
static int spend_finish(struct audit *a, bool counted, int64_t *mark_to)
{
	*mark_to = -1;
	if (a->spend.n) {
		spend_roll_up(&a->spend);
		if (spend_write(a, &a->spend) < 0)
			return -1;
	}
	if (counted || a->mark_mem < a->mark_db || a->mark_mem - a->mark_db >= MARK_LAG_ROWS) {
		if (mark_write(a, a->mark_mem) < 0)
			return -1;
		*mark_to = a->mark_mem;
	}
	spend_clear(&a->spend);
	return 0;
}

/* At connect: count the billed rows beyond the mark in a transaction of their own, so the
 * counters agree with the rows before anything new is written. A database that cannot be
 * written now is caught up by the writer's first batch instead. */
static void spend_catch_up_now(struct audit *a)
{
	int64_t mark_was = a->mark_mem, n, mark_to, top;
	int rc = sqlite3_step(a->st_top);

	/* a read first: no write lock (nor a wait for one) when there is nothing to do */
	top = sqlite3_column_int64(a->st_top, 0);
	sqlite3_reset(a->st_top);
	if (rc != SQLITE_ROW || top == a->mark_mem)
		return;
	if (step_once(a->st_begin) != SQLITE_OK)
		goto fail;
	if ((n = spend_catch_up(a)) < 0 || spend_finish(a, n > 0, &mark_to) < 0 ||
	    step_once(a->st_commit) != SQLITE_OK)
		goto fail;
	if (mark_to >= 0)
		a->mark_db = mark_to;
	if (n > 0)
		log_info("audit database %s: %" PRId64 " billed rows were not in the spend counters; "
		         "they are now", a->db_path, n);
	return;
fail:
	rollback(a->db);
	spend_clear(&a->spend);
	a->mark_mem = mark_was;
}

/* Bind one record at parameters 1 .. AUDIT_NFIELDS. Every parameter is bound each time
 * (NULLs too), so the statements are never stepped with the SQLITE_STATIC pointers of a
 * record already freed, and no sqlite3_clear_bindings pass is needed between steps. */
static void bind_record(sqlite3_stmt *st, const struct audit_record *r)
{
	bind_text(st, 1, r->request_id);
	sqlite3_bind_double(st, 2, r->started_at);
	bind_int_or_null(st, 3, r->key_id, 1);
	bind_text(st, 4, r->key_name);
	bind_text(st, 5, r->client_ip);
	bind_text(st, 6, r->method);
	bind_text(st, 7, r->path);
	bind_text(st, 8, r->route);
	bind_text(st, 9, r->upstream);
	sqlite3_bind_int(st, 10, r->status);
	sqlite3_bind_double(st, 11, r->latency_ms);
	if (r->ttfb_ms < 0)
		sqlite3_bind_null(st, 12);
	else
		sqlite3_bind_double(st, 12, r->ttfb_ms);
	sqlite3_bind_int(st, 13, r->is_stream ? 1 : 0);
	sqlite3_bind_int64(st, 14, r->chunks);
	sqlite3_bind_int64(st, 15, r->bytes_in);
	sqlite3_bind_int64(st, 16, r->bytes_out);
	bind_text(st, 17, r->model);
	bind_int_or_null(st, 18, r->prompt_tokens, 0);
	bind_int_or_null(st, 19, r->completion_tokens, 0);
	bind_text(st, 20, r->error);
	sqlite3_bind_int(st, 21, r->retries);
	bind_text(st, 22, r->attempts);
	bind_int_or_null(st, 23, r->cached_tokens, 0);
	bind_int_or_null(st, 24, r->cache_write_tokens, 0);
	bind_int_or_null(st, 25, r->reasoning_tokens, 0);
	bind_text(st, 26, r->upstream_request_id);
	bind_int_or_null(st, 27, r->user_id, 1);
	bind_int_or_null(st, 28, r->cost_nano, 0);
	bind_text(st, 29, r->price_version);
	sqlite3_bind_int(st, 30, r->estimated ? 1 : 0);
	sqlite3_bind_int(st, 31, r->billed ? 1 : 0);
	sqlite3_bind_int(st, 32, r->unpriced ? 1 : 0);
	bind_text(st, 33, r->request_body);
	bind_text(st, 34, r->response_body);
}

/* Insert one record into audit_rows inside the open transaction: with st_insert, or on
 * replay with st_insert_new, which skips a record already there. *rowid: its rowid once
 * written. 0 = written, 2 = it was there already (a replay), 1 = this record can never be
 * written (logged, to be dropped), -1 = the database failed. */
static int insert_record(struct audit *a, const struct audit_record *r, bool replay,
                         int64_t *rowid)
{
	sqlite3_stmt *st = replay ? a->st_insert_new : a->st_insert;
	int rc;

	bind_record(st, r);
	rc = sqlite3_step(st);
	sqlite3_reset(st);
	if (rc == SQLITE_DONE) {
		if (replay && sqlite3_changes(a->db) == 0)
			return 2;
		*rowid = sqlite3_last_insert_rowid(a->db);
		return 0;
	}
	if (poison_error(rc)) {
		char *line = spool_line(r);
		log_error("audit: request %s cannot be stored (%s); dropped: %s",
		          r->request_id ? r->request_id : "(no id)", sqlite3_errmsg(a->db), line);
		free(line);
		return 1;
	}
	return -1;
}

/* Count an inserted record (if billed) into the batch's spend. */
static void spend_count_record(struct audit *a, const struct audit_record *r)
{
	if (r->billed)      /* the common case, cheap: most rows are not billed */
		spend_count(&a->spend, true, r->key_id, r->user_id, r->started_at,
		            r->prompt_tokens, r->completion_tokens, r->cost_nano);
}

/* Insert records one by one into audit_rows (a replay, or a block SQLite refused);
 * *row_top: the last rowid written. 0, or -1 if the database failed. */
static int insert_rows(struct audit *a, const struct audit_record *const *r, size_t n,
                       bool replay, int64_t *row_top)
{
	for (size_t i = 0; i < n; i++) {
		int rc = insert_record(a, r[i], replay, row_top);

		if (rc < 0)
			return -1;
		if (rc == 0)        /* a replayed row that was there already was counted then */
			spend_count_record(a, r[i]);
	}
	return 0;
}

/* Insert the block encoded in a->block, which holds r[0..n). 0, or -1 if the database
 * failed. */
static int insert_block(struct audit *a, const struct audit_record *const *r, size_t n,
                        int64_t *row_top)
{
	const char *text;
	size_t len;
	int rc;

	text = ablock_text(&a->block, &len);
	sqlite3_bind_double(a->st_block, 1, a->block.first);
	sqlite3_bind_double(a->st_block, 2, a->block.last);
	sqlite3_bind_int64(a->st_block, 3, (int64_t)n);
	sqlite3_bind_text(a->st_block, 4, text, (int)len, SQLITE_STATIC);
	rc = sqlite3_step(a->st_block);
	sqlite3_reset(a->st_block);
	ablock_reset(&a->block);
	if (rc == SQLITE_DONE) {
		for (size_t i = 0; i < n; i++)
			spend_count_record(a, r[i]);
		return 0;
	}
	/* refused for what it holds (too big, say): row by row, which drops only the record
	 * at fault */
	return poison_error(rc) ? insert_rows(a, r, n, false, row_top) : -1;
}

struct timed {
	double t;                 /* started_at as a block stores it */
	const struct audit_record *r;
};

/* Ascending started_at; records that started in the same microsecond keep their order
 * (the array is filled in list order, so comparing addresses keeps it). */
static int by_started(const void *x, const void *y)
{
	const struct timed *a = x, *b = y;

	if (a->t != b->t)
		return a->t < b->t ? -1 : 1;
	return a < b ? -1 : a > b;
}

/* Sort v[0..n) as by_started does. By insertion: a batch comes nearly in order (records
 * queue as their requests end, close to when they started), where that is about n steps,
 * and qsort's call through a pointer per comparison cost ~300 instructions a record
 * (tests/bench/callgrind.sh). Past 8 moves a record on average, qsort sorts the rest. */
static void sort_batch(struct timed *v, size_t n)
{
	size_t moves = 0;

	for (size_t i = 1; i < n; i++) {
		struct timed x = v[i];
		size_t j = i;

		while (j > 0 && v[j - 1].t > x.t) {   /* strictly: equal times keep their order */
			v[j] = v[j - 1];
			j--;
			if (++moves > 8 * n) {
				v[j] = x;   /* into the gap: the array stays the batch */
				qsort(v, n, sizeof(*v), by_started);
				return;
			}
		}
		v[j] = x;
	}
}

/* The first n records of a list into a->sorted, each with its time as a block stores it;
 * how many there were (n, unless the list is shorter). */
static size_t batch_fill(struct audit *a, const struct audit_record *r, size_t n)
{
	size_t i = 0;

	if (a->sorted_cap < n) {
		a->sorted_cap = n < 64 ? 64 : n;
		free(a->sorted);
		a->sorted = xmalloc(a->sorted_cap * (sizeof(struct timed) +
		                                     sizeof(const struct audit_record *)));
	}
	for (; i < n && r; i++, r = r->next_) {
		a->sorted[i].t = ablock_time(r->started_at);
		a->sorted[i].r = r;
	}
	return i;
}

/* The n records of a->sorted, in its order, as an array (in the same allocation). */
static const struct audit_record **batch_records(struct audit *a, size_t n)
{
	const struct audit_record **recs =
		(const struct audit_record **)(a->sorted + a->sorted_cap);

	for (size_t i = 0; i < n; i++)
		recs[i] = a->sorted[i].r;
	return recs;
}

/* Insert the n records of a->sorted as blocks: in started_at order, cut where the rows
 * would span more than ABLOCK_SPAN_S (a long stream ending now started long before the
 * others of its batch) or once the text reaches BLOCK_BYTES_MAX. */
static int insert_blocks(struct audit *a, size_t n, int64_t *row_top)
{
	const struct timed *v = a->sorted;
	const struct audit_record **recs;
	size_t from = 0;

	sort_batch(a->sorted, n);
	recs = batch_records(a, n);
	ablock_reset(&a->block);
	for (size_t i = 0; i < n; i++) {
		if (i > from && v[i].t - v[from].t > ABLOCK_SPAN_S) {
			if (insert_block(a, recs + from, i - from, row_top) < 0)
				return -1;
			from = i;
		}
		ablock_add(&a->block, recs[i]);
		if (a->block.len >= BLOCK_BYTES_MAX) {
			if (insert_block(a, recs + from, i + 1 - from, row_top) < 0)
				return -1;
			from = i + 1;
		}
	}
	return n > from ? insert_block(a, recs + from, n - from, row_top) : 0;
}

/* Write the first n records of a list in one transaction: as blocks, or on replay (they
 * come from the spool and may be there already) row by row through st_insert_new. 0 on
 * success; -1 if the database failed (nothing of the batch is committed). */
static int commit_list(struct audit *a, const struct audit_record *r, size_t n, bool replay)
{
	const struct audit_record *p = r;
	int64_t mark_was = a->mark_mem, mark_to, caught, row_top = -1;
	double untimed = 0;

	/* Rows whose id does not carry the second they started in (made by a version before
	 * schema 4 and replayed from its spool, or when the clock stepped between the id and
	 * the start) are found by audit_get through this bound: at least the time as stored,
	 * in the row table or rounded to the microsecond in a block. */
	for (size_t k = 0; k < n && p; k++, p = p->next_) {
		double t = fmax(p->started_at, ablock_time(p->started_at));

		if (t > untimed && id_untimed(p->request_id, p->started_at))
			untimed = t;
	}
	if (step_once(a->st_begin) != SQLITE_OK)
		goto fail;
	if (untimed > 0) {
		sqlite3_bind_double(a->st_untimed, 1, untimed);
		if (step_once(a->st_untimed) != SQLITE_OK)
			goto fail;
	}
	if ((caught = spend_catch_up(a)) < 0)
		goto fail;
	n = batch_fill(a, r, n);
	if ((replay ? insert_rows(a, batch_records(a, n), n, true, &row_top)
	            : insert_blocks(a, n, &row_top)) < 0)
		goto fail;
	/* the rows just inserted into audit_rows are its last ones: nobody else writes inside
	 * the transaction */
	if (row_top >= 0)
		a->mark_mem = row_top;
	if (spend_finish(a, caught > 0 || a->spend.n > 0, &mark_to) < 0 ||
	    step_once(a->st_commit) != SQLITE_OK)
		goto fail;
	if (mark_to >= 0)
		a->mark_db = mark_to;
	if (caught > 0)
		log_info("audit database %s: %" PRId64 " billed rows written by something else were "
		         "not in the spend counters; they are now", a->db_path, caught);
	return 0;
fail:
	rollback(a->db);
	spend_clear(&a->spend);
	a->mark_mem = mark_was;
	return -1;
}

/* ---- the writer ---- */

static void db_failed(struct audit *a, const char *what)
{
	int rc = sqlite3_extended_errcode(a->db);

	if (!a->db_failing)
		log_warn("audit database %s: cannot %s (%s); records wait in memory (up to %zu) "
		         "and then in %s", a->db_path, what, sqlite3_errmsg(a->db), a->mem_cap,
		         a->spool_path);
	a->db_failing = true;
	/* A lock clears by itself; anything else may have left the connection read-only
	 * (e.g. the file was read-only when it was opened), so start afresh next time. */
	if ((rc & 0xff) != SQLITE_BUSY && (rc & 0xff) != SQLITE_LOCKED)
		a->reconnect = true;
	a->backoff_ms = a->backoff_ms ? a->backoff_ms * 2 : BACKOFF_MIN_MS;
	if (a->backoff_ms > BACKOFF_MAX_MS)
		a->backoff_ms = BACKOFF_MAX_MS;
	a->next_retry_ms = mono_ms() + a->backoff_ms;
}

static void db_succeeded(struct audit *a)
{
	if (a->db_failing)
		log_info("audit database %s: writable again; %zu records waiting",
		         a->db_path, audit_queue_depth(a));
	a->db_failing = false;
	a->backoff_ms = 0;
	a->next_retry_ms = 0;
}

/* Records left the queue for good (committed or dropped). */
static void account_done(struct audit *a, size_t from_mem, size_t from_spool)
{
	__atomic_sub_fetch(&a->mem_n, from_mem, __ATOMIC_SEQ_CST);
	__atomic_store_n(&a->progress_ms, mono_ms(), __ATOMIC_RELAXED);
	__atomic_sub_fetch(&a->depth, from_mem + from_spool, __ATOMIC_SEQ_CST);
	pthread_mutex_lock(&a->mu);
	a->spool_left -= from_spool;
	pthread_mutex_unlock(&a->mu);
}

/* More than this much memory in committed records waiting to be freed by submitters (who
 * have gone quiet, or are few): the writer frees the next ones itself. */
#define DONE_MAX_BYTES (2u << 20)
/* Committed records freed by each audit_submit: more than one, so a batch is gone well
 * before the next one comes back. */
#define FREE_PER_SUBMIT 4

/* Hand a committed list back to the lane it came from, to be freed by audit_submit. */
static void lane_give_back(struct audit_lane *l, struct audit_record *first,
                           struct audit_record *last, size_t bytes)
{
	bool keep;

	pthread_mutex_lock(&l->mu);
	keep = l->done_bytes < DONE_MAX_BYTES;
	if (keep) {
		if (l->done_tail)
			l->done_tail->next_ = first;
		else
			l->done_head = first;
		l->done_tail = last;
		l->done_bytes += bytes;
	}
	pthread_mutex_unlock(&l->mu);
	if (!keep)
		free_list(first);
}

/* The n records from first to last (linked, bytes in all) are committed: account for
 * them, and hand each back to its lane, a lane's records as one list. */
static void account_done_list(struct audit *a, struct audit_record *first,
                              struct audit_record *last, size_t n, size_t bytes)
{
	__atomic_sub_fetch(&a->mem_n, n, __ATOMIC_SEQ_CST);
	__atomic_store_n(&a->progress_ms, mono_ms(), __ATOMIC_RELAXED);
	__atomic_sub_fetch(&a->depth, n, __ATOMIC_SEQ_CST);
	if (a->n_lanes == 1) {
		lane_give_back(&a->lanes[0], first, last, bytes);
		return;
	}
	while (first) {   /* one lane per pass: its records leave the list */
		struct audit_lane *l = &a->lanes[first->lane_ < a->n_lanes ? first->lane_ : 0];
		struct audit_record *head = NULL, *tail = NULL, *rest = NULL, *rest_tail = NULL;
		size_t lane_bytes = 0;

		for (struct audit_record *r = first, *next; r; r = next) {
			next = r->next_;
			r->next_ = NULL;
			if (&a->lanes[r->lane_ < a->n_lanes ? r->lane_ : 0] == l) {
				lane_bytes += audit_record_bytes(r);
				if (tail)
					tail->next_ = r;
				else
					head = r;
				tail = r;
			} else {
				if (rest_tail)
					rest_tail->next_ = r;
				else
					rest = r;
				rest_tail = r;
			}
		}
		lane_give_back(l, head, tail, lane_bytes);
		first = rest;
	}
}

static void spool_forget(struct audit *a)
{
	if (a->spool_rd)
		fclose(a->spool_rd);
	a->spool_rd = NULL;
	if (a->spool_fd >= 0) {
		if (a->spool_written)
			fdatasync(a->spool_fd);
		close(a->spool_fd);
	}
	a->spool_fd = -1;
	a->spool_written = false;
	a->spool_off = 0;
}

/* The spool is fully committed: remove it so that its presence means "records wait". */
static void spool_done(struct audit *a)
{
	spool_forget(a);
	if (unlink(a->spool_path) != 0 && errno != ENOENT) {
		int fd = open(a->spool_path, O_WRONLY | O_TRUNC | O_CLOEXEC);
		if (fd >= 0)
			close(fd);
		else
			log_error("audit spool %s: cannot remove or truncate it after replay: %s; "
			          "its records are in the database now, remove it by hand",
			          a->spool_path, strerror(errno));
	}
}

/* Commit up to batch_size records from the spool. 1 = progress, -1 = database failed. */
static int spool_replay_batch(struct audit *a)
{
	struct audit_record *head = NULL, **tail = &head;
	size_t lines = 0, n = 0;
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	off_t end;
	int rc = -1;

	if (!a->spool_rd && !(a->spool_rd = fopen(a->spool_path, "re"))) {
		if (errno == ENOENT) {
			log_error("audit spool %s: removed while %zu records waited in it; they are "
			          "lost", a->spool_path, a->spool_n);
			account_done(a, 0, a->spool_n);
			a->spool_n = 0;
			spool_done(a);
			return 1;
		}
		log_error("audit spool %s: cannot read it: %s; %zu records wait in it",
		          a->spool_path, strerror(errno), a->spool_n);
		a->next_retry_ms = mono_ms() + BACKOFF_MAX_MS;
		return -1;
	}
	clearerr(a->spool_rd);
	if (fseeko(a->spool_rd, a->spool_off, SEEK_SET) != 0)
		goto eof;
	while (lines < a->batch_size && (len = getline(&line, &cap, a->spool_rd)) > 0) {
		struct audit_record *r;

		lines++;
		if ((r = spool_parse(line, (size_t)len))) {
			*tail = r;
			tail = &r->next_;
			n++;
		} else {
			log_warn("audit spool %s: line at byte %lld is not an audit record; "
			         "skipped: %.*s", a->spool_path,
			         (long long)(ftello(a->spool_rd) - len),
			         (int)(len > 200 ? 200 : len - (line[len - 1] == '\n')), line);
		}
	}
	free(line);
	line = NULL;
	end = ftello(a->spool_rd);
	if (lines == 0)
		goto eof;
	if (commit_list(a, head, n, true) < 0) {
		db_failed(a, "write");
		goto done;
	}
	db_succeeded(a);
	a->spool_off = end;
	if (lines > a->spool_n)    /* lines appended behind our back; count what we had */
		lines = a->spool_n;
	a->spool_n -= lines;
	account_done(a, 0, lines);
	if (a->spool_n == 0)
		spool_done(a);
	rc = 1;
done:
	free_list(head);
	return rc;
eof:
	/* Fewer lines than counted (the file changed under us): nothing more to replay. */
	free(line);
	log_warn("audit spool %s: ended %zu records early", a->spool_path, a->spool_n);
	account_done(a, 0, a->spool_n);
	a->spool_n = 0;
	spool_done(a);
	return 1;
}

/* Commit the oldest batch held in memory. 1 = progress, -1 = database failed. */
static int memory_commit_batch(struct audit *a)
{
	size_t n = a->w_n < a->batch_size ? a->w_n : a->batch_size;
	struct audit_record *first, *last;
	size_t bytes;

	if (commit_list(a, a->w_head, n, false) < 0) {
		db_failed(a, "write");
		return -1;
	}
	db_succeeded(a);
	first = last = a->w_head;
	bytes = audit_record_bytes(first);
	for (size_t i = 1; i < n; i++) {
		last = last->next_;
		bytes += audit_record_bytes(last);
	}
	a->w_bytes -= bytes;
	a->w_head = last->next_;
	last->next_ = NULL;
	if (!a->w_head)
		a->w_tail = NULL;
	a->w_n -= n;
	account_done_list(a, first, last, n, bytes);
	return 1;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Move the oldest `count` records in memory to the end of the spool in one write. 0 on
 * success; -1 if the write failed: they stay in memory and the partial line is cut off. */
static int spill_chunk(struct audit *a, size_t count)
{
	struct sbuf b = { 0 };
	struct audit_record *r = a->w_head;
	struct stat st;
	size_t n = 0;

	if (a->spool_fd < 0) {
		a->spool_fd = open(a->spool_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
		if (a->spool_fd < 0)
			goto fail;
	}
	for (; r && n < count; r = r->next_, n++) {
		char *line = spool_line(r);
		sb_putn(&b, line, strlen(line));
		sb_putc(&b, '\n');
		free(line);
	}
	if (fstat(a->spool_fd, &st) != 0)
		goto fail;
	if (write_all(a->spool_fd, b.s, b.len) != 0) {
		int e = errno;
		if (ftruncate(a->spool_fd, st.st_size) != 0)
			log_error("audit spool %s: cannot cut off a partial write: %s",
			          a->spool_path, strerror(errno));
		errno = e;
		goto fail;
	}
	free(b.s);
	for (size_t i = 0; i < n; i++) {
		r = a->w_head;
		a->w_head = r->next_;
		a->w_bytes -= audit_record_bytes(r);
		audit_record_free(r);
	}
	if (!a->w_head)
		a->w_tail = NULL;
	a->w_n -= n;
	a->spool_n += n;
	a->spool_written = true;
	__atomic_sub_fetch(&a->mem_n, n, __ATOMIC_SEQ_CST);  /* depth is unchanged: they still wait */
	pthread_mutex_lock(&a->mu);
	a->spool_left += n;
	pthread_mutex_unlock(&a->mu);
	return 0;
fail:
	free(b.s);
	if (!a->spool_failing)
		log_error("audit spool %s: cannot write it (%s); %zu records held in memory, over "
		          "the cap of %zu", a->spool_path, strerror(errno), a->w_n, a->mem_cap);
	a->spool_failing = true;
	return -1;
}

/* Move the oldest `count` records in memory to the spool, in chunks so that the line
 * buffer stays small whatever the cap. Nothing is dropped if the spool cannot be written:
 * the records stay in memory, over the cap. */
static void spill(struct audit *a, size_t count)
{
	bool first = !a->spool_written || a->spool_failing;
	size_t held = a->w_n, moved = 0;

	while (moved < count) {
		size_t n = count - moved < 1024 ? count - moved : 1024;
		if (spill_chunk(a, n) < 0)
			break;
		moved += n;
	}
	if (moved == count)
		a->spool_failing = false;
	if (moved && first)
		log_warn("audit: %zu records held in memory (cap %zu); moved %zu to %s",
		         held, a->mem_cap, moved, a->spool_path);
}

/* Run a prune statement (?1 the cutoff, ?2 the limit): what it deleted, or -1. */
static int prune_step(struct audit *a, sqlite3_stmt *st, double cutoff, int limit)
{
	int rc;

	sqlite3_bind_double(st, 1, cutoff);
	sqlite3_bind_int(st, 2, limit);
	rc = sqlite3_step(st);
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? sqlite3_changes(a->db) : -1;
}

/* One pass of pruning: at most PRUNE_BATCH rows and PRUNE_BLOCKS blocks. 1 = done for
 * now, 0 = more to delete, -1 = database failed. */
static int prune_batch(struct audit *a)
{
	double cutoff = wall_seconds() - (double)a->retention_days * 86400.0;
	int64_t mark_was = a->mark_mem, top;
	int rc, changes, blocks;

	if (step_once(a->st_begin) != SQLITE_OK ||
	    (changes = prune_step(a, a->st_prune, cutoff, PRUNE_BATCH)) < 0 ||
	    (blocks = prune_step(a, a->st_prune_blocks, cutoff, PRUNE_BLOCKS)) < 0)
		goto fail;
	/* The counters stay: they are what was spent. But when the newest rows went too, the
	 * mark comes down to the last one left, in this transaction: a row someone else
	 * inserts next gets a rowid above it, and is counted. */
	rc = sqlite3_step(a->st_top);
	top = sqlite3_column_int64(a->st_top, 0);
	sqlite3_reset(a->st_top);
	if (rc != SQLITE_ROW)
		goto fail;
	if (top < a->mark_mem) {
		a->mark_mem = top;
		if (mark_write(a, top) < 0)
			goto fail;
	}
	if (step_once(a->st_commit) != SQLITE_OK)
		goto fail;
	if (a->mark_mem != mark_was)
		a->mark_db = a->mark_mem;
	return changes < PRUNE_BATCH && blocks < PRUNE_BLOCKS ? 1 : 0;
fail:
	rollback(a->db);
	a->mark_mem = mark_was;
	db_failed(a, "prune old rows");
	return -1;
}

static void deadline_ts(int64_t at_ms, struct timespec *ts)
{
	ts->tv_sec = (time_t)(at_ms / 1000);
	ts->tv_nsec = (long)(at_ms % 1000) * 1000000L;
}

/* Has any lane records the writer has not taken? */
static bool lanes_pending(struct audit *a)
{
	for (unsigned i = 0; i < a->n_lanes; i++)
		if (__atomic_load_n(&a->lanes[i].q_n, __ATOMIC_SEQ_CST))
			return true;
	return false;
}

/* Move everything submitted so far behind the records the writer already holds.
 * Returns whether audit_close() has asked the writer to stop. */
static bool take_queue(struct audit *a)
{
	bool stop;

	for (unsigned i = 0; i < a->n_lanes; i++) {
		struct audit_lane *l = &a->lanes[i];

		if (!__atomic_load_n(&l->q_n, __ATOMIC_SEQ_CST))
			continue;
		pthread_mutex_lock(&l->mu);
		if (l->q_head) {
			if (a->w_tail)
				a->w_tail->next_ = l->q_head;
			else
				a->w_head = l->q_head;
			a->w_tail = l->q_tail;
			a->w_n += l->q_n;
			a->w_bytes += l->q_bytes;
			l->q_head = l->q_tail = NULL;
			__atomic_store_n(&l->q_n, 0, __ATOMIC_SEQ_CST);
			l->q_bytes = 0;
		}
		pthread_mutex_unlock(&l->mu);
	}
	pthread_mutex_lock(&a->mu);
	if (a->retention_new) {
		a->retention_days = a->retention_next;
		a->next_prune_ms = a->retention_days ? mono_ms() : 0;   /* a pass by it now */
		a->retention_new = false;
	}
	stop = a->stop;
	pthread_mutex_unlock(&a->mu);
	return stop;
}

/* One step of database work, if no retry is pending: reconnect when needed, commit one
 * batch (the spool first: it is older than anything in memory), then one small prune
 * step, so pruning never starves the inserts. True if it made progress. */
static bool db_step(struct audit *a, int64_t now, bool stopping)
{
	bool progress = false;
	char *err = NULL;
	int rc = 0;

	if (now < a->next_retry_ms || !(a->spool_n || a->w_n || a->next_prune_ms))
		return false;
	if (a->reconnect) {
		db_disconnect(a);
		if (db_connect(a, &err) < 0) {
			if (!a->db_failing)
				log_warn("%s", err);
			free(err);
			a->db_failing = true;
			a->backoff_ms = BACKOFF_MAX_MS;
			a->next_retry_ms = now + BACKOFF_MAX_MS;
			return false;
		}
		a->reconnect = false;
	}
	if (a->spool_n)
		rc = spool_replay_batch(a);
	else if (a->w_n)
		rc = memory_commit_batch(a);
	if (rc > 0)
		progress = true;
	if (rc >= 0 && a->next_prune_ms && now >= a->next_prune_ms && !stopping) {
		int p = prune_batch(a);
		if (p == 1)
			a->next_prune_ms = now + a->prune_interval_ms;
		else if (p == 0)
			progress = true;
	}
	return progress;
}

/* ---- the writer's share of the CPU ----
 * On a small machine the writer shares the cores with the event loop (and often with the
 * upstream and the clients), and a batch is about a millisecond of CPU in one go. At normal
 * priority a waking writer preempts whoever runs, and the requests waiting on them show it
 * in their tail latency (issue #6: p99 at one connection 0.70 -> 0.34 ms, nginx 0.22). So
 * while it keeps up, the writer runs in the SCHED_IDLE class, on CPU time nothing else
 * wants; it returns to normal as soon as records pile up, the database fails or the daemon
 * stops. Leaving SCHED_IDLE needs CAP_SYS_NICE or an RLIMIT_NICE that allows nice 0; a
 * writer that could not leave it might be starved on a busy machine, so without either it
 * stays at normal priority throughout. */
#define CAP_SYS_NICE_BIT 23

static bool can_leave_idle(void)
{
	struct rlimit rl;
	unsigned long long caps = 0;
	char line[256];
	FILE *f;

	if (getrlimit(RLIMIT_NICE, &rl) == 0 && (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= 20))
		return true;
	if (!(f = fopen("/proc/self/status", "re")))
		return false;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "CapEff: %llx", &caps) == 1)
			break;
	fclose(f);
	return caps & (1ULL << CAP_SYS_NICE_BIT);
}

/* Records held while idle are memory the loop cannot reclaim until the writer runs: past
 * this (a few seconds of large records at most), normal priority until caught up. */
#define IDLE_MAX_BYTES (4u << 20)

/* Idle while the backlog is at most one batch; normal above four batches, above
 * IDLE_MAX_BYTES, or when behind for another reason. In between, keep the current class
 * (no flapping at the edge). */
static void writer_pace(struct audit *a, bool stopping)
{
	struct sched_param sp = { 0 };
	size_t backlog = a->w_n + a->spool_n;
	bool idle = a->idle_now;

	if (!a->idle_ok)
		return;
	if (stopping || a->db_failing || a->spool_n || backlog > 4 * a->batch_size ||
	    a->w_bytes > IDLE_MAX_BYTES)
		idle = false;
	else if (backlog <= a->batch_size && a->w_bytes <= IDLE_MAX_BYTES / 4)
		idle = true;
	if (idle == a->idle_now)
		return;
	/* pid 0 is the calling thread */
	if (sched_setscheduler(0, idle ? SCHED_IDLE : SCHED_OTHER, &sp) == 0) {
		a->idle_now = idle;
	} else if (!idle) {
		log_warn("audit: the writer cannot leave the idle scheduling class (%s); it runs "
		         "idle from now on", strerror(errno));
		a->idle_ok = false;
	} else {
		a->idle_ok = false;   /* not allowed here (e.g. seccomp): stay normal */
	}
}

/* The writer thread: commit, spill, prune, sleep; on stop, drain then leave. */
static void *writer_main(void *arg)
{
	struct audit *a = arg;
	int64_t close_deadline = 0;
	bool woken = false;

	/* visible in ps -L and top -H, and what tests/bench/ab.sh reports the writer's CPU by */
	pthread_setname_np(pthread_self(), "fg-audit");
	a->next_prune_ms = a->retention_days ? mono_ms() : 0;
	a->idle_ok = can_leave_idle();
	for (;;) {
		bool stopping = take_queue(a), progress;
		int64_t now = mono_ms(), due;

		if (stopping && !close_deadline)
			close_deadline = now + a->close_wait_ms;
		writer_pace(a, stopping);
		progress = db_step(a, now, stopping);

		/* Spill down to three quarters of the cap, so an outage costs one spool write
		 * per cap/4 records, not one per record. */
		if (a->w_n > a->mem_cap)
			spill(a, a->w_n - a->mem_cap * 3 / 4);

		if (stopping) {
			bool empty = !lanes_pending(a);

			if (empty && a->w_n == 0 && a->spool_n == 0)
				break;
			if (empty && mono_ms() >= close_deadline) {
				if (a->w_n)
					spill(a, a->w_n);
				if (a->w_n)
					log_error("audit: %zu records could be written neither to %s nor to "
					          "%s; they are lost", a->w_n, a->db_path, a->spool_path);
				else if (a->spool_n)
					log_warn("audit: %zu records left in %s; the next start writes "
					         "them to %s", a->spool_n, a->spool_path, a->db_path);
				break;
			}
		}
		if (progress)
			continue;

		/* Sleep until a submit or until the next step is due: the retry while records
		 * wait, else the next prune (never before the retry); while stopping, no later
		 * than the close deadline. */
		due = INT64_MAX;
		if (a->spool_n || a->w_n)
			due = a->next_retry_ms;
		else if (a->next_prune_ms && !stopping)
			due = a->next_prune_ms > a->next_retry_ms ? a->next_prune_ms : a->next_retry_ms;
		if (stopping && close_deadline < due)
			due = close_deadline;
		now = mono_ms();
		if (due <= now)
			continue;
		pthread_mutex_lock(&a->mu);
		__atomic_store_n(&a->backoff, a->next_retry_ms > now, __ATOMIC_RELAXED);
		/* waiting is announced before the lanes are looked at, and a submit counts its
		 * record before it looks at waiting (both sequentially consistent): one of the
		 * two sees the other, so no record waits for a wake-up that never comes */
		__atomic_store_n(&a->writer_waiting, true, __ATOMIC_SEQ_CST);
		if (!lanes_pending(a) && a->stop == stopping && !a->retention_new) {
			if (due == INT64_MAX) {
				pthread_cond_wait(&a->wake, &a->mu);
			} else {
				struct timespec ts;
				deadline_ts(due, &ts);
				pthread_cond_timedwait(&a->wake, &a->mu, &ts);
			}
			woken = lanes_pending(a) && !a->stop;
		}
		__atomic_store_n(&a->writer_waiting, false, __ATOMIC_SEQ_CST);
		pthread_mutex_unlock(&a->mu);
		/* Woken by a submit: let a few milliseconds of records gather, so that under load
		 * one transaction carries many rows and the loop thread is not made to wake us
		 * (a futex call) for every request. */
		if (woken) {
			struct timespec gather = { 0, AUDIT_GATHER_MS * 1000000L };
			nanosleep(&gather, NULL);
			woken = false;
		}
	}

	free_list(a->w_head);
	a->w_head = a->w_tail = NULL;
	return NULL;
}

/* Count the records a previous run left in the spool, and end a torn last line so new
 * lines are not glued to it. */
static int spool_scan(struct audit *a, char **err)
{
	FILE *f = fopen(a->spool_path, "re");
	size_t n = 0;
	int c, last = '\n';
	struct stat st;

	if (!f) {
		if (errno == ENOENT)
			return 0;
		set_err(err, "cannot read audit spool %s: %s", a->spool_path, strerror(errno));
		return -1;
	}
	if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077))
		log_warn("audit spool %s is accessible by group or others (mode %03o); "
		         "run chmod 600 on it", a->spool_path, (unsigned)(st.st_mode & 0777));
	while ((c = getc_unlocked(f)) != EOF) {
		if (c == '\n')
			n++;
		last = c;
	}
	fclose(f);
	if (last != '\n') {
		int fd = open(a->spool_path, O_WRONLY | O_APPEND | O_CLOEXEC);
		if (fd < 0 || write_all(fd, "\n", 1) != 0) {
			set_err(err, "cannot repair audit spool %s: %s", a->spool_path, strerror(errno));
			if (fd >= 0)
				close(fd);
			return -1;
		}
		close(fd);
		n++;
	}
	a->spool_n = n;
	if (n)
		log_info("audit spool %s: %zu records from a previous run will be written to %s",
		         a->spool_path, n, a->db_path);
	return 0;
}

/* Free what the lanes hold: records given back, and any submitted after the writer's last
 * look (only if audit_submit raced audit_close). */
static void lanes_free(struct audit *a)
{
	for (unsigned i = 0; i < a->n_lanes; i++) {
		free_list(a->lanes[i].q_head);
		free_list(a->lanes[i].done_head);
		pthread_mutex_destroy(&a->lanes[i].mu);
	}
	free(a->lanes);
}

struct audit *audit_open(const char *db_path, const struct audit_options *opt, char **err)
{
	static const struct audit_options defaults;
	struct audit *a;
	pthread_condattr_t ca;

	if (!opt)
		opt = &defaults;
	if (!db_path || !*db_path) {
		set_err(err, "no audit database path given");
		return NULL;
	}
	a = xmalloc(sizeof(*a));
	memset(a, 0, sizeof(*a));
	a->spool_fd = -1;
	a->db_path = xstrdup(db_path);
	if (opt->spool_path && *opt->spool_path) {
		a->spool_path = xstrdup(opt->spool_path);
	} else if (asprintf(&a->spool_path, "%s.spool", db_path) < 0) {
		abort();
	}
	a->mem_cap = opt->mem_cap ? opt->mem_cap : DEFAULT_MEM_CAP;
	a->batch_size = opt->batch_size ? opt->batch_size : DEFAULT_BATCH;
	a->retention_days = opt->retention_days;
	a->prune_interval_ms = opt->prune_interval_ms ? opt->prune_interval_ms : DEFAULT_PRUNE_MS;
	a->busy_timeout_ms = opt->busy_timeout_ms ? opt->busy_timeout_ms : DEFAULT_BUSY_MS;
	a->close_wait_ms = opt->close_wait_ms ? opt->close_wait_ms : DEFAULT_CLOSE_WAIT_MS;

	a->n_lanes = opt->lanes ? opt->lanes : 1;
	a->lanes = xcalloc(a->n_lanes, sizeof(*a->lanes));
	for (unsigned i = 0; i < a->n_lanes; i++) {
		pthread_mutex_init(&a->lanes[i].mu, NULL);
		a->lanes[i].a = a;
		a->lanes[i].idx = i;
	}
	pthread_mutex_init(&a->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&a->wake, &ca);
	pthread_condattr_destroy(&ca);

	if (db_connect(a, err) < 0 || spool_scan(a, err) < 0)
		goto fail;
	a->depth = a->spool_left = a->spool_n;
	a->progress_ms = mono_ms();
	if ((errno = pthread_create(&a->thread, NULL, writer_main, a)) != 0) {
		set_err(err, "audit: cannot start the writer thread: %s", strerror(errno));
		goto fail;
	}
	return a;
fail:
	db_disconnect(a);
	spend_free(&a->spend);
	ablock_free(&a->block);
	free(a->sorted);
	pthread_cond_destroy(&a->wake);
	pthread_mutex_destroy(&a->mu);
	lanes_free(a);
	free(a->db_path);
	free(a->spool_path);
	free(a);
	return NULL;
}

void audit_set_retention(struct audit *a, unsigned days)
{
	pthread_mutex_lock(&a->mu);
	a->retention_next = days;
	a->retention_new = true;
	pthread_cond_signal(&a->wake);
	pthread_mutex_unlock(&a->mu);
}

struct audit_lane *audit_lane(struct audit *a, unsigned i)
{
	return a ? &a->lanes[i < a->n_lanes ? i : 0] : NULL;
}

void audit_lane_submit(struct audit_lane *l, struct audit_record *rec)
{
	struct audit *a = l ? l->a : NULL;
	struct audit_record *done;
	size_t mem;

	if (!rec)
		return;
	if (!a || !rec->request_id) {
		log_error("audit: record without %s dropped (status %d, path %s)",
		          a ? "a request id" : "an audit store", rec->status,
		          rec->path ? rec->path : "-");
		audit_record_free(rec);
		return;
	}
	rec->next_ = NULL;
	rec->lane_ = (uint8_t)l->idx;
	pthread_mutex_lock(&l->mu);
	if (l->q_tail)
		l->q_tail->next_ = rec;
	else
		l->q_head = rec;
	l->q_tail = rec;
	l->q_bytes += audit_record_bytes(rec);
	if ((done = l->done_head)) {
		struct audit_record *last = done;

		l->done_bytes -= audit_record_bytes(last);
		for (int k = 1; k < FREE_PER_SUBMIT && last->next_; k++) {
			last = last->next_;
			l->done_bytes -= audit_record_bytes(last);
		}
		l->done_head = last->next_;
		if (!l->done_head)
			l->done_tail = NULL;
		last->next_ = NULL;
	}
	__atomic_store_n(&l->q_n, l->q_n + 1, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&l->mu);
	mem = __atomic_add_fetch(&a->mem_n, 1, __ATOMIC_SEQ_CST);
	if (__atomic_fetch_add(&a->depth, 1, __ATOMIC_SEQ_CST) == 0)   /* the wait starts now */
		__atomic_store_n(&a->progress_ms, mono_ms(), __ATOMIC_RELAXED);
	/* While the database is failing, the writer only needs waking to spill. */
	if (__atomic_load_n(&a->writer_waiting, __ATOMIC_SEQ_CST) &&
	    (!__atomic_load_n(&a->backoff, __ATOMIC_RELAXED) || mem > a->mem_cap)) {
		pthread_mutex_lock(&a->mu);
		pthread_cond_signal(&a->wake);
		pthread_mutex_unlock(&a->mu);
	}
	free_list(done);
}

void audit_submit(struct audit *a, struct audit_record *rec)
{
	if (!a) {
		audit_lane_submit(NULL, rec);
		return;
	}
	audit_lane_submit(&a->lanes[0], rec);
}

size_t audit_queue_depth(struct audit *a)
{
	return a ? __atomic_load_n(&a->depth, __ATOMIC_SEQ_CST) : 0;
}

int64_t audit_stalled_ms(struct audit *a)
{
	int64_t ms = 0;

	if (a && __atomic_load_n(&a->depth, __ATOMIC_SEQ_CST) > 0)
		ms = mono_ms() - __atomic_load_n(&a->progress_ms, __ATOMIC_RELAXED);
	return ms > 0 ? ms : 0;
}

void audit_close(struct audit *a)
{
	if (!a)
		return;
	pthread_mutex_lock(&a->mu);
	a->stop = true;
	pthread_cond_signal(&a->wake);
	pthread_mutex_unlock(&a->mu);
	pthread_join(a->thread, NULL);

	/* the counters lag nothing now: the next open need not read these rows again */
	if (a->db && a->mark_mem != a->mark_db && mark_write(a, a->mark_mem) == 0)
		a->mark_db = a->mark_mem;
	spend_free(&a->spend);
	ablock_free(&a->block);
	free(a->sorted);
	spool_forget(a);
	db_disconnect(a);
	pthread_cond_destroy(&a->wake);
	pthread_mutex_destroy(&a->mu);
	lanes_free(a);
	free(a->db_path);
	free(a->spool_path);
	free(a);
}

/* ---- read side ---- */

/* From schema 10 on, a query reads its range in windows of time: the statement sorts one
 * window at a time (a block's rows come out of audit_block_rows, not an index), and a
 * LIMIT stops it after a few windows instead of after decoding every block of the range.
 * The first window holds the start of one block (or WINDOW_ROWS rows of audit_rows), and
 * each next one twice as many, up to WINDOW_BLOCKS_MAX: the newest 20 rows cost one
 * block's decoding, an export of millions a window of 64 blocks at a time. */
#define WINDOW_BLOCKS_MAX 64
#define WINDOW_ROWS       500
#define EDGE_SQL(agg, cmp, rcmp, dir) \
	"SELECT " agg "(e) FROM (SELECT (SELECT first_started FROM audit_block" \
	" WHERE first_started " cmp " ?1 AND first_started " rcmp " ?2 ORDER BY first_started " \
	dir " LIMIT 1 OFFSET ?3 - 1) AS e UNION ALL SELECT (SELECT started_at" \
	" FROM audit_rows WHERE started_at " cmp " ?1 AND started_at " rcmp " ?2" \
	" ORDER BY started_at " dir " LIMIT 1 OFFSET ?3 * " STR(WINDOW_ROWS) " - 1))"
#define STR_(x) #x
#define STR(x) STR_(x)

struct audit_cursor {
	sqlite3 *db;
	sqlite3_stmt *st;
	char *errmsg;
	/* windows (schema 10 on): st reads [?1, ?2); edge finds the next window's far end */
	sqlite3_stmt *edge;       /* NULL: st reads the whole range at once */
	double lo, hi;            /* the range asked for */
	double at;                /* where the next window begins (newest first: ends) */
	bool newest_first, done;
	int wblocks;              /* blocks in the next window */
	int limit_param;          /* the LIMIT's parameter number; 0 = no limit */
	uint64_t left;            /* rows the limit still allows */
};

void audit_query_init(struct audit_query *q)
{
	memset(q, 0, sizeof(*q));
	q->key_id = -1;
	q->user_id = -1;
	q->is_stream = -1;
}

static char *col_text(sqlite3_stmt *st, int i)
{
	const char *s = (const char *)sqlite3_column_text(st, i);
	return s ? xstrdup(s) : NULL;
}

static int64_t col_int_or(sqlite3_stmt *st, int i, int64_t null_value)
{
	return sqlite3_column_type(st, i) == SQLITE_NULL ? null_value : sqlite3_column_int64(st, i);
}

/* A row selected with COLUMNS into a record. */
static void row_to_record(sqlite3_stmt *st, struct audit_record *r)
{
	audit_record_clear(r);
	r->request_id = col_text(st, AUDIT_F_REQUEST_ID);
	r->started_at = sqlite3_column_double(st, AUDIT_F_STARTED_AT);
	r->key_id = col_int_or(st, AUDIT_F_KEY_ID, 0);
	r->key_name = col_text(st, AUDIT_F_KEY_NAME);
	r->client_ip = col_text(st, AUDIT_F_CLIENT_IP);
	r->method = col_text(st, AUDIT_F_METHOD);
	r->path = col_text(st, AUDIT_F_PATH);
	r->route = col_text(st, AUDIT_F_ROUTE);
	r->upstream = col_text(st, AUDIT_F_UPSTREAM);
	r->status = sqlite3_column_int(st, AUDIT_F_STATUS);
	r->latency_ms = sqlite3_column_double(st, AUDIT_F_LATENCY_MS);
	r->ttfb_ms = sqlite3_column_type(st, AUDIT_F_TTFB_MS) == SQLITE_NULL
	             ? -1 : sqlite3_column_double(st, AUDIT_F_TTFB_MS);
	r->is_stream = sqlite3_column_int(st, AUDIT_F_IS_STREAM) != 0;
	r->chunks = sqlite3_column_int64(st, AUDIT_F_CHUNKS);
	r->bytes_in = sqlite3_column_int64(st, AUDIT_F_BYTES_IN);
	r->bytes_out = sqlite3_column_int64(st, AUDIT_F_BYTES_OUT);
	r->model = col_text(st, AUDIT_F_MODEL);
	r->prompt_tokens = col_int_or(st, AUDIT_F_PROMPT_TOKENS, -1);
	r->completion_tokens = col_int_or(st, AUDIT_F_COMPLETION_TOKENS, -1);
	r->error = col_text(st, AUDIT_F_ERROR);
	r->retries = sqlite3_column_int(st, AUDIT_F_RETRIES);
	r->attempts = col_text(st, AUDIT_F_ATTEMPTS);
	r->cached_tokens = col_int_or(st, AUDIT_F_CACHED_TOKENS, -1);
	r->cache_write_tokens = col_int_or(st, AUDIT_F_CACHE_WRITE_TOKENS, -1);
	r->reasoning_tokens = col_int_or(st, AUDIT_F_REASONING_TOKENS, -1);
	r->upstream_request_id = col_text(st, AUDIT_F_UPSTREAM_REQUEST_ID);
	r->user_id = col_int_or(st, AUDIT_F_USER_ID, 0);
	r->cost_nano = col_int_or(st, AUDIT_F_COST_USD, -1);
	r->price_version = col_text(st, AUDIT_F_PRICE_VERSION);
	r->estimated = sqlite3_column_int(st, AUDIT_F_ESTIMATED) != 0;
	r->billed = sqlite3_column_int(st, AUDIT_F_BILLED) != 0;
	r->unpriced = sqlite3_column_int(st, AUDIT_F_UNPRICED) != 0;
	r->request_body = col_text(st, AUDIT_F_REQUEST_BODY);
	r->response_body = col_text(st, AUDIT_F_RESPONSE_BODY);
}

/* The columns a reader selects from a file at schema `version`: one that no daemon of
 * this version has opened yet lacks the newer columns, which read as NULL. */
static const char *read_columns(int version)
{
	return version < 5 ? COLUMNS_READ_V4 : version < 6 ? COLUMNS_READ_V5
	     : version < 7 ? COLUMNS_READ_V6 : version < 8 ? COLUMNS_READ_V7 : COLUMNS;
}

/* A read-only connection: it never takes the write lock, so the writer never waits for
 * it (WAL). */
static sqlite3 *open_reader(const char *path, char **err)
{
	sqlite3 *db = NULL;
	struct stat st;

	if (!path || !*path) {
		set_err(err, "no audit database path given");
		return NULL;
	}
	if (stat(path, &st) != 0) {
		set_err(err, "cannot open audit database %s: %s", path, strerror(errno));
		return NULL;
	}
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
	    SQLITE_OK) {
		set_err(err, "cannot open audit database %s: %s", path,
		        db ? sqlite3_errmsg(db) : "out of memory");
		sqlite3_close(db);
		return NULL;
	}
	sqlite3_extended_result_codes(db, 1);
	sqlite3_busy_timeout(db, READ_BUSY_MS);
	if (blockrows_register(db) != SQLITE_OK) {
		set_err(err, "audit database %s: %s", path, sqlite3_errmsg(db));
		sqlite3_close(db);
		return NULL;
	}
	return db;
}

/* Point c->st at the next window of its range: false when the range is read, or on an
 * error (c->errmsg set). */
static bool next_window(struct audit_cursor *c)
{
	double w_lo, w_hi, far;
	int rc;

	if (c->done || c->left == 0)
		return false;
	sqlite3_bind_double(c->edge, 1, c->at);
	sqlite3_bind_double(c->edge, 2, c->newest_first ? c->lo : c->hi);
	sqlite3_bind_int(c->edge, 3, c->wblocks);
	if (c->wblocks < WINDOW_BLOCKS_MAX)
		c->wblocks *= 2;
	rc = sqlite3_step(c->edge);
	if (rc != SQLITE_ROW) {
		if (asprintf(&c->errmsg, "reading the audit database: %s", sqlite3_errmsg(c->db)) < 0)
			abort();
		sqlite3_reset(c->edge);
		return false;
	}
	if (sqlite3_column_type(c->edge, 0) == SQLITE_NULL) {
		far = c->newest_first ? c->lo : c->hi;
		c->done = true;         /* this window reaches the end of the range */
	} else {
		far = sqlite3_column_double(c->edge, 0);
	}
	sqlite3_reset(c->edge);
	w_lo = c->newest_first ? far : c->at;
	w_hi = c->newest_first ? c->at : far;
	c->at = far;
	sqlite3_reset(c->st);
	sqlite3_bind_double(c->st, 1, w_lo);
	sqlite3_bind_double(c->st, 2, w_hi);
	if (c->limit_param)
		sqlite3_bind_int64(c->st, c->limit_param,
		                   c->left > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)c->left);
	return true;
}

struct audit_cursor *audit_query_open(const char *db_path, const struct audit_query *q,
                                      char **err)
{
	struct audit_query all;
	struct audit_cursor *c;
	struct sbuf sql = { 0 };
	const char *dir;
	int i = 1, version = SCHEMA_VERSION;
	bool blocks;

	if (!q) {
		audit_query_init(&all);
		q = &all;
	}
	if (q->status < 0 || (q->status > 5 && q->status < 100) || q->status > 599) {
		set_err(err, "status filter %d: give 100..599 for one status or 1..5 for a class "
		        "(5 = 5xx)", q->status);
		return NULL;
	}
	c = xmalloc(sizeof(*c));
	memset(c, 0, sizeof(*c));
	c->left = q->limit ? q->limit : UINT64_MAX;
	c->newest_first = q->newest_first;
	c->lo = q->since > 0 ? q->since : -INFINITY;
	c->hi = q->until > 0 ? q->until : INFINITY;
	c->at = q->newest_first ? c->hi : c->lo;
	c->wblocks = 1;
	if (!(c->db = open_reader(db_path, err)))
		goto fail;
	if (read_user_version(c->db, &version) < 0)
		version = SCHEMA_VERSION;   /* the query below reports what is wrong */
	blocks = version >= 10;

	/* Placeholders are numbered in the order the conditions are added; bound below in
	 * the same order. With blocks, ?1 and ?2 are the window, and the range is the
	 * windows'. */
#define ADD(s) sb_putn(&sql, s, strlen(s))
	ADD("SELECT ");
	ADD(read_columns(version));
	if (blocks) {
		ADD(" FROM " ROWS_IN("?1", "?2") " WHERE 1");
		i = 3;
	} else {
		ADD(" FROM audit WHERE 1");
		if (q->since > 0)
			ADD(" AND started_at >= ?");
		if (q->until > 0)
			ADD(" AND started_at < ?");
	}
	if (q->key_id == 0)
		ADD(" AND key_id IS NULL");
	else if (q->key_id > 0)
		ADD(" AND key_id = ?");
	/* a file before version 8 has no users: every row is one without */
	if (q->user_id == 0 && version >= 8)
		ADD(" AND user_id IS NULL");
	else if (q->user_id > 0)
		ADD(version >= 8 ? " AND user_id = ?" : " AND 0");
	if (q->route)
		ADD(" AND route = ?");
	if (q->status >= 100)
		ADD(" AND status = ?");
	else if (q->status > 0)
		ADD(" AND status >= ? AND status <= ?");
	if (q->is_stream >= 0)
		ADD(" AND is_stream = ?");
	if (q->error && !*q->error)
		ADD(" AND error IS NOT NULL");
	else if (q->error)
		ADD(" AND error = ?");
	dir = q->newest_first ? " DESC" : "";
	ADD(" ORDER BY started_at");
	ADD(dir);
	ADD(blocks ? ", blk_" : ", rowid");
	ADD(dir);
	if (blocks) {
		ADD(", seq_");
		ADD(dir);
	}
	if (q->limit)
		ADD(" LIMIT ?");
#undef ADD

	if (sqlite3_prepare_v2(c->db, sql.s, -1, &c->st, NULL) != SQLITE_OK ||
	    (blocks && sqlite3_prepare_v2(c->db, q->newest_first
	                                  ? EDGE_SQL("max", "<", ">", "DESC")
	                                  : EDGE_SQL("min", ">", "<", "ASC"),
	                                  -1, &c->edge, NULL) != SQLITE_OK)) {
		set_err(err, "cannot query audit database %s: %s", db_path, sqlite3_errmsg(c->db));
		goto fail;
	}
	if (!blocks && q->since > 0)
		sqlite3_bind_double(c->st, i++, q->since);
	if (!blocks && q->until > 0)
		sqlite3_bind_double(c->st, i++, q->until);
	if (q->key_id > 0)
		sqlite3_bind_int64(c->st, i++, q->key_id);
	if (q->user_id > 0 && version >= 8)
		sqlite3_bind_int64(c->st, i++, q->user_id);
	if (q->route)
		sqlite3_bind_text(c->st, i++, q->route, -1, SQLITE_TRANSIENT);
	if (q->status >= 100) {
		sqlite3_bind_int(c->st, i++, q->status);
	} else if (q->status > 0) {
		sqlite3_bind_int(c->st, i++, q->status * 100);
		sqlite3_bind_int(c->st, i++, q->status * 100 + 99);
	}
	if (q->is_stream >= 0)
		sqlite3_bind_int(c->st, i++, q->is_stream ? 1 : 0);
	if (q->error && *q->error)
		sqlite3_bind_text(c->st, i++, q->error, -1, SQLITE_TRANSIENT);
	if (q->limit) {
		c->limit_param = i;
		sqlite3_bind_int64(c->st, i++,
		                   q->limit > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)q->limit);
	}
	/* every window reads the same snapshot of the file: a row committed meanwhile is
	 * neither missed between two windows nor read twice */
	if (blocks && (exec_sql(c->db, "BEGIN") != SQLITE_OK || !next_window(c))) {
		set_err(err, "cannot query audit database %s: %s", db_path,
		        c->errmsg ? c->errmsg : sqlite3_errmsg(c->db));
		goto fail;
	}
	free(sql.s);
	return c;
fail:
	free(sql.s);
	audit_cursor_close(c);
	return NULL;
}

int audit_cursor_next(struct audit_cursor *c, struct audit_record *out)
{
	int rc;

	if (!c || !c->st)
		return 0;
	free(c->errmsg);
	c->errmsg = NULL;
	for (;;) {
		rc = sqlite3_step(c->st);
		if (rc == SQLITE_ROW) {
			row_to_record(c->st, out);
			if (c->limit_param)
				c->left--;
			return 1;
		}
		if (rc != SQLITE_DONE)
			break;
		if (!c->edge || !next_window(c))
			return c->errmsg ? -1 : 0;
	}
	if (asprintf(&c->errmsg, "reading the audit database: %s", sqlite3_errmsg(c->db)) < 0)
		abort();
	return -1;
}

const char *audit_cursor_error(const struct audit_cursor *c)
{
	return c ? c->errmsg : NULL;
}

void audit_cursor_close(struct audit_cursor *c)
{
	if (!c)
		return;
	sqlite3_finalize(c->st);
	sqlite3_finalize(c->edge);
	sqlite3_close(c->db);       /* a read transaction still open ends with it */
	free(c->errmsg);
	free(c);
}

/* Where to look for a row by its id, in order: around the second the id carries (the
 * time index makes that a few seconds of rows); then, from schema version 4 on, among the
 * rows up to the last one whose id carries no time (none in a file begun at version 4:
 * nothing is read). An id not of the reqid form (a row someone wrote by hand, a typo), or
 * a file at an older version (its daemon not upgraded yet): everywhere. */
static const char *const get_where[] = {
	"started_at >= ?2 AND started_at < ?3 AND request_id = ?1",
	"started_at <= (SELECT max(until) FROM audit_untimed_ids) AND request_id = ?1",
	"request_id = ?1",
};
/* Where each of those looks from schema 10 on: the rows and blocks of the id's seconds;
 * the rows and blocks up to the bound; everything. */
static const char *const get_from_v10[] = {
	ROWS_IN("?2", "?3"),
	ROWS_IN("-1e300", "(SELECT max(until) FROM audit_untimed_ids) + 1"),
	"audit",
};

const char *audit_rows_source(int version)
{
	return version >= 10 ? ROWS_IN("?1", "?2") : "audit";
}

int audit_get(const char *db_path, const char *request_id, struct audit_record *out,
              char **err)
{
	sqlite3 *db;
	sqlite3_stmt *st = NULL;
	int64_t sec = 0;
	bool timed;
	int rc = 0, version = 0;

	if (!request_id) {
		set_err(err, "no request id given");
		return -1;
	}
	if (!(db = open_reader(db_path, err)))
		return -1;
	if (read_user_version(db, &version) < 0) {
		set_err(err, "reading audit database %s: %s", db_path, sqlite3_errmsg(db));
		rc = -1;
	}
	timed = reqid_second(request_id, &sec);
	for (size_t i = 0; rc == 0 && i < sizeof(get_where) / sizeof(get_where[0]); i++) {
		bool skip = i == 0 ? !timed : i == 1 ? !timed || version < 4 : timed && version >= 4;
		char *sql;
		int step;

		if (skip)
			continue;
		sql = xasprintf("SELECT %s FROM %s WHERE %s", read_columns(version),
		                version >= 10 ? get_from_v10[i] : "audit", get_where[i]);
		if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
			set_err(err, "cannot query audit database %s: %s", db_path, sqlite3_errmsg(db));
			free(sql);
			rc = -1;
			break;
		}
		free(sql);
		sqlite3_bind_text(st, 1, request_id, -1, SQLITE_STATIC);
		if (i == 0) {
			sqlite3_bind_double(st, 2, (double)(sec - ID_SLACK_S));
			sqlite3_bind_double(st, 3, (double)(sec + ID_SLACK_S + 1));
		}
		step = sqlite3_step(st);
		if (step == SQLITE_ROW) {
			row_to_record(st, out);
			rc = 1;
		} else if (step != SQLITE_DONE) {
			set_err(err, "reading audit database %s: %s", db_path, sqlite3_errmsg(db));
			rc = -1;
		}
		sqlite3_finalize(st);
		st = NULL;
	}
	sqlite3_close(db);
	return rc;
}

/* ---- spend counters, read ---- */

/* "k:12" into *scope and *id; false if it is not of that form. */
static bool parse_scope(const char *s, char *scope, int64_t *id)
{
	char *end;

	if (!s || (s[0] != 'k' && s[0] != 'u') || s[1] != ':' || s[2] < '0' || s[2] > '9')
		return false;
	errno = 0;
	*id = strtoll(s + 2, &end, 10);
	*scope = s[0];
	return errno == 0 && *end == '\0';
}

static int parse_period(const char *s)
{
	for (int p = SPEND_ALL; p <= SPEND_MONTH; p++)
		if (s && strcmp(s, period_names[p]) == 0)
			return p;
	return -1;
}

/* The window ended before `since` (0: none has). */
static bool window_over(const struct spend_key *k, int64_t since)
{
	if (since <= 0 || k->period == SPEND_ALL)
		return false;
	if (k->period == SPEND_DAY)
		return k->start + 86400 <= since;
	return month_start(k->start, true) <= since;
}

int audit_spend_load(struct audit *a, int64_t since,
                     void (*cb)(void *arg, const struct spend_row *r), void *arg, char **err)
{
	struct spend_map all = { 0 }, fresh = { 0 };
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int64_t mark = 0, idle;
	size_t left;
	int rc = -1, step;

	if (!a || !cb) {
		set_err(err, "no audit store to load the spend counters from");
		return -1;
	}
	/* The spool of the previous run holds requests it charged: wait for the writer to
	 * commit it, as long as it makes progress. */
	for (;;) {
		struct timespec tick = { 0, 10 * 1000000L };

		pthread_mutex_lock(&a->mu);
		left = a->spool_left;
		idle = mono_ms() - __atomic_load_n(&a->progress_ms, __ATOMIC_RELAXED);
		pthread_mutex_unlock(&a->mu);
		if (!left || idle >= (int64_t)a->close_wait_ms)
			break;
		nanosleep(&tick, NULL);
	}
	if (left)
		log_warn("audit: %zu records wait in %s because %s cannot be written; the spend "
		         "counters loaded now do not include them", left, a->spool_path, a->db_path);

	/* one read transaction: the counters and the rows beyond the mark as of one moment */
	if (!(db = open_reader(a->db_path, err)))
		return -1;
	if (exec_sql(db, "BEGIN") != SQLITE_OK ||
	    sqlite3_prepare_v2(db, "SELECT last_rowid FROM spend_mark", -1, &st, NULL) != SQLITE_OK)
		goto sql_fail;
	if ((step = sqlite3_step(st)) == SQLITE_ROW)
		mark = sqlite3_column_int64(st, 0);
	else if (step != SQLITE_DONE)
		goto sql_fail;
	sqlite3_finalize(st);
	st = NULL;

	if (sqlite3_prepare_v2(db, "SELECT scope, period, start, requests, tokens, cost_nano "
	                       "FROM spend WHERE period = 'all' OR start > ?1", -1, &st,
	                       NULL) != SQLITE_OK)
		goto sql_fail;
	/* a month is at most 31 days: anything that ended before since started before this */
	sqlite3_bind_int64(st, 1, since > 0 ? since - 31 * 86400 : INT64_MIN);
	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		struct spend_key k;
		int period = parse_period((const char *)sqlite3_column_text(st, 1));

		if (period < 0 || !parse_scope((const char *)sqlite3_column_text(st, 0), &k.scope,
		                               &k.id))
			continue;            /* not ours: written by hand */
		k.period = (unsigned char)period;
		k.start = sqlite3_column_int64(st, 2);
		spend_add(&all, &k, sqlite3_column_int64(st, 3), sqlite3_column_int64(st, 4),
		          sqlite3_column_int64(st, 5));
	}
	if (step != SQLITE_DONE)
		goto sql_fail;
	sqlite3_finalize(st);
	st = NULL;

	/* billed rows the counters do not hold yet (sqlite3, an older build, or a batch the
	 * writer has not caught up with): as the writer will count them */
	if (sqlite3_prepare_v2(db, "SELECT key_id, user_id, started_at, prompt_tokens, "
	                       "completion_tokens, cost_nano FROM audit_rows WHERE rowid > ?1 "
	                       "AND billed = 1 AND key_id > 0", -1, &st, NULL) != SQLITE_OK)
		goto sql_fail;
	sqlite3_bind_int64(st, 1, mark);
	while ((step = sqlite3_step(st)) == SQLITE_ROW)
		spend_count(&fresh, true, sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1),
		            sqlite3_column_double(st, 2), sqlite3_column_int64(st, 3),
		            sqlite3_column_int64(st, 4), sqlite3_column_int64(st, 5));
	if (step != SQLITE_DONE)
		goto sql_fail;
	sqlite3_finalize(st);
	st = NULL;
	exec_sql(db, "COMMIT");
	spend_roll_up(&fresh);
	for (size_t i = 0; i < fresh.cap; i++)
		if (fresh.e[i].used)
			spend_add(&all, &fresh.e[i].k, fresh.e[i].requests, fresh.e[i].tokens,
			          fresh.e[i].cost_nano);

	for (size_t i = 0; i < all.cap; i++) {
		const struct spend_ent *e = &all.e[i];
		struct spend_row r;

		if (!e->used || window_over(&e->k, since))
			continue;
		r.scope = e->k.scope;
		r.id = e->k.id;
		r.period = (enum spend_period)e->k.period;
		r.start = e->k.start;
		r.requests = e->requests;
		r.tokens = e->tokens;
		r.cost_nano = e->cost_nano;
		cb(arg, &r);
	}
	rc = 0;
	goto done;
sql_fail:
	set_err(err, "cannot read the spend counters in audit database %s: %s", a->db_path,
	        sqlite3_errmsg(db));
done:
	sqlite3_finalize(st);
	sqlite3_close(db);
	spend_free(&all);
	spend_free(&fresh);
	return rc;
}
