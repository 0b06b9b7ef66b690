/* The audit trail: one row per request that reached fastgate, written off the request path.
 *
 * Write side. The event loop fills a struct audit_record when a request ends and hands it
 * to audit_submit(), which only appends it to an in-memory queue under a mutex. A writer
 * thread owns the SQLite connection (WAL) and inserts the queue in batches, one
 * transaction per batch, in submission order; a batch's rows are stored as blocks
 * (auditblock.h: a few rows of audit_block in started_at order, read back through the
 * `audit` view). When the database cannot be written
 * (locked, read-only, disk full, I/O error) the writer keeps the records in memory up to
 * a cap and moves the oldest of the overflow into an append-only spool file beside the
 * database (default DB + ".spool", mode 0600, one JSON object per line); once SQLite
 * accepts writes again it writes the spool first, then memory, so order is kept. A spool
 * left by a previous run is replayed by the next audit_open(), row by row into the row
 * table audit_rows, skipping a row that is there already (by request_id in its second),
 * so a replay that is interrupted and repeated never duplicates a row. The writer also prunes rows older than the
 * retention period, in small batches between inserts.
 *
 * Read side. audit_query_open()/audit_get() open their own read-only connection, so an
 * export of a million rows streams row by row in bounded memory and never blocks the
 * writer (WAL readers and the writer do not wait for each other).
 *
 * Formatting. CSV (RFC 4180 quoting) and JSON, with a selectable field list; the default
 * list is DESIGN.md's CSV column order, then retries, attempts, the cache and reasoning
 * token counts, the upstream's request id and the spend columns. */
#ifndef FG_AUDIT_H
#define FG_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "spend.h"      /* enum spend_period */

/* One finished request. Every string is owned by the record (malloc'd, NULL = none) and
 * freed by audit_record_free()/audit_record_clear(). Numbers use -1 for "unknown" where
 * noted; the exports print unknown as an empty CSV field / JSON null. */
struct audit_record {
	char *request_id;         /* required: the X-Request-Id; the row's primary key */
	double started_at;        /* unix seconds, sub-millisecond precision */
	int64_t key_id;           /* 0 = no key (e.g. a 401) */
	char *key_name;
	char *client_ip;
	char *method;
	char *path;               /* as the client sent it, without the query (it may hold a credential) */
	char *route;              /* NULL when no route matched */
	char *upstream;           /* upstream URL, NULL when nothing was forwarded */
	double latency_ms;        /* start to last byte sent */
	double ttfb_ms;           /* start to first upstream byte; -1 = none */
	int64_t chunks;           /* chunks relayed to the client */
	int64_t bytes_in;         /* request body bytes from the client */
	int64_t bytes_out;        /* response body bytes to the client */
	char *model;
	int64_t prompt_tokens;    /* -1 = unknown */
	int64_t completion_tokens;/* -1 = unknown */
	char *error;              /* error kind ("timeout", "reset", "client_closed", ...) or NULL */
	char *attempts;           /* every upstream attempt, in order, as upstream=outcome:ms
	                           * joined by ';' (e.g. "http://10.0.0.5:8000=connect:3;
	                           * http://10.0.0.6:8000=ok:120"); NULL when nothing was
	                           * forwarded */
	/* The rest of the usage normalised as DESIGN.md has it (Providers); prompt_tokens
	 * counts the cached tokens too (OpenAI's meaning), completion_tokens the reasoning. */
	int64_t cached_tokens;    /* prompt tokens read from the provider's cache; -1 = unknown */
	int64_t cache_write_tokens; /* prompt tokens written to it; -1 = unknown (no OpenAI
	                           * upstream reports it) */
	int64_t reasoning_tokens; /* completion tokens spent reasoning; -1 = unknown */
	char *upstream_request_id; /* the last upstream's own id of the request (Anthropic's
	                           * request-id, OpenAI's x-request-id header), or NULL */
	/* Spend (DESIGN.md, Spend control). Money is integer nano-USD (1 USD = 1e9). */
	int64_t user_id;          /* the key's user; 0 = no user */
	int64_t cost_nano;        /* what the request cost; -1 = no cost (an unpriced model, or
	                           * nothing was charged) */
	char *price_version;      /* the version of the pricing table the cost came from, or NULL */
	char *request_body;       /* only for routes with log_bodies: truncated, else NULL */
	char *response_body;

	/* the small fields together, so that no padding sits between them: the record is
	 * allocated per request and sits in queues by the thousand */
	int status;               /* status sent to the client */
	int retries;              /* upstream attempts beyond the first */
	bool is_stream;
	bool billed;              /* charged against its key's and user's limits and balance (its
	                           * reservation was settled, not released): the spend counters
	                           * count it */
	bool estimated;           /* the token counts are the gateway's estimate (the client left
	                           * mid-stream, or the upstream reported no usage) */
	bool unpriced;            /* the model had no price */

	bool packed_;               /* private: strings live in the record's own block */
	uint8_t lane_;              /* private: the audit lane it was submitted on */
	unsigned refs_;             /* private: owners of a packed record (audit_record_share) */
	uint32_t size_;             /* private: bytes of a packed record's block (< 4 GiB:
	                             * a record's bodies are capped at a few MiB) */
	struct audit_record *next_; /* private to audit.c (queue link) */
};

/* A heap record with the "unknown" values set (ttfb and every token count -1); never NULL (out of
 * memory aborts). Free with audit_record_free() unless it is given to audit_submit(). */
struct audit_record *audit_record_new(void);
/* One allocation holding a copy of src and of its strings (the request and response
 * bodies only when with_bodies): on the request path this replaces a dozen strdups. Free
 * it with audit_record_free() like any other record. */
struct audit_record *audit_record_pack(const struct audit_record *src, bool with_bodies);
/* Another owner for r, without its bodies: when r is packed and has none (it is never
 * changed after packing), the same r, freed when the last owner calls audit_record_free();
 * any thread. Otherwise a packed copy without the bodies. */
struct audit_record *audit_record_share(const struct audit_record *r);
/* What a record costs in memory, for limits in bytes: records vary from half a kilobyte
 * to the size of logged bodies. Known at once for a packed record; an unpacked one (e.g.
 * from audit_cursor_next) has its strings measured. */
size_t audit_record_bytes(const struct audit_record *r);
/* Free the strings and the record itself (a shared record: when its last owner does).
 * NULL is fine. */
void audit_record_free(struct audit_record *r);
/* Free the strings of a caller-owned record (e.g. one filled by audit_cursor_next) and
 * reset it to the audit_record_new() state. */
void audit_record_clear(struct audit_record *r);

/* ---- fields ---- */

enum audit_field {
	AUDIT_F_REQUEST_ID, AUDIT_F_STARTED_AT, AUDIT_F_KEY_ID, AUDIT_F_KEY_NAME,
	AUDIT_F_CLIENT_IP, AUDIT_F_METHOD, AUDIT_F_PATH, AUDIT_F_ROUTE, AUDIT_F_UPSTREAM,
	AUDIT_F_STATUS, AUDIT_F_LATENCY_MS, AUDIT_F_TTFB_MS, AUDIT_F_IS_STREAM, AUDIT_F_CHUNKS,
	AUDIT_F_BYTES_IN, AUDIT_F_BYTES_OUT, AUDIT_F_MODEL, AUDIT_F_PROMPT_TOKENS,
	AUDIT_F_COMPLETION_TOKENS, AUDIT_F_ERROR,
	AUDIT_F_RETRIES,          /* after DESIGN.md's 20 CSV columns, still exported by default */
	AUDIT_F_ATTEMPTS,
	AUDIT_F_CACHED_TOKENS, AUDIT_F_CACHE_WRITE_TOKENS, AUDIT_F_REASONING_TOKENS,
	AUDIT_F_UPSTREAM_REQUEST_ID,
	AUDIT_F_USER_ID,          /* spend: the key's user, */
	AUDIT_F_COST_USD,         /* the cost as an exact decimal (9 places) from cost_nano, */
	AUDIT_F_PRICE_VERSION,    /* the pricing table's version */
	AUDIT_F_ESTIMATED,        /* and whether the token counts are the gateway's estimate */
	AUDIT_F_BILLED,           /* not exported by default: ask with --fields */
	AUDIT_F_UNPRICED,
	AUDIT_F_REQUEST_BODY,     /* not exported by default either; stored only */
	AUDIT_F_RESPONSE_BODY,    /* for routes with log_bodies. The bodies stay last (audit.c) */
	AUDIT_NFIELDS
};
/* The default export columns are the first AUDIT_NDEFAULT_FIELDS: DESIGN.md's order, then
 * retries, attempts, cached_tokens, cache_write_tokens, reasoning_tokens,
 * upstream_request_id, user_id, cost_usd, price_version and estimated. */
#define AUDIT_NDEFAULT_FIELDS AUDIT_F_BILLED

/* Field names as they appear in the CSV header, JSON keys and --fields. */
extern const char *const audit_field_names[AUDIT_NFIELDS];

/* Index (enum audit_field) of a field name, or -1 if there is none by that name. */
int audit_field_index(const char *name);
/* Parse a --fields list ("request_id,status,latency_ms"; spaces around names allowed) into
 * out[0..cap). Returns the count, or -1 with *err set (caller frees) naming the bad field
 * and listing the valid ones. Duplicates are kept as given. */
int audit_fields_parse(const char *list, int *out, size_t cap, char **err);

/* ---- formatting ---- *
 * `fields`/`nfields` select and order the columns; fields == NULL means the default list
 * (nfields is then ignored). started_at is written as ISO 8601 UTC with milliseconds
 * ("2026-11-23T11:30:00.123Z"), latency_ms/ttfb_ms with three decimals, unknown values as
 * an empty CSV field / JSON null. Results are malloc'd, caller frees; never NULL (out of
 * memory aborts). Lines carry no line terminator: the caller adds "\n" or "\r\n". */

/* The header line: the field names, comma-separated. */
char *audit_csv_header(const int *fields, size_t nfields);
/* One record as an RFC 4180 line: a field containing a comma, quote, CR or LF is quoted
 * and its quotes doubled. */
char *audit_record_csv(const struct audit_record *r, const int *fields, size_t nfields);
/* Any cells as one RFC 4180 line, quoted as above (NULL = an empty field): for other
 * tables of the audit data (fastgate-cli report) written the same way. */
char *audit_csv_line(const char *const *cells, size_t n);
/* One record as a JSON object (new reference) keyed by field name, for embedding in a
 * control-channel event. Strings that are not valid UTF-8 get U+FFFD for the bad bytes. */
json_t *audit_record_json(const struct audit_record *r, const int *fields, size_t nfields);
/* audit_record_json() as one compact line of text. */
char *audit_record_jsonl(const struct audit_record *r, const int *fields, size_t nfields);

/* ---- write side ---- */

struct audit_options {
	size_t mem_cap;           /* records held in memory before spilling; 0 = 100000 */
	unsigned retention_days;  /* rows older than this are pruned; 0 = keep forever */
	size_t batch_size;        /* rows per transaction; 0 = 512 */
	const char *spool_path;   /* NULL = db_path + ".spool" (copied) */
	unsigned prune_interval_ms; /* between prune passes; 0 = 1 hour (first pass at start) */
	unsigned busy_timeout_ms; /* how long one write waits for a lock; 0 = 1000 */
	unsigned close_wait_ms;   /* how long audit_close keeps retrying a failing database
	                           * before leaving the rest in the spool; 0 = 10000 */
	unsigned lanes;           /* producers (event loops), each with a lane; 0 = 1; at
	                           * most AUDIT_LANES_MAX */
};
#define AUDIT_LANES_MAX 255

struct audit;

/* Open (creating if needed, mode 0600) the audit database, bring its schema to the current
 * version (PRAGMA user_version), count a spool left by a previous run and start the
 * writer thread, which replays that spool before anything new. opt may be NULL (all
 * defaults). A database that exists with the current schema but cannot be written right
 * now still opens: records wait in memory and the spool. NULL on error with *err set
 * (caller frees): missing directory, not a database, newer schema, spool unreadable. */
struct audit *audit_open(const char *db_path, const struct audit_options *opt, char **err);

/* Keep rows for `days` from now on (0: forever), as a reload of audit_retention_days asks:
 * the writer takes it at its next turn and, unless 0, prunes by it right away, then at
 * its interval. Any thread. */
void audit_set_retention(struct audit *a, unsigned days);

/* One producer's way in: lane i (< opt.lanes) belongs to one thread (an event loop),
 * which alone submits on it. */
struct audit_lane;
struct audit_lane *audit_lane(struct audit *a, unsigned i);
/* Queue a finished record on the caller's lane. Takes ownership of rec (and all its
 * strings) whatever happens. Never blocks on disk, and takes no lock another loop takes:
 * the lane's own mutex, which the writer holds only to move list pointers, then atomic
 * counters; the writer's mutex only to wake it when it sleeps. A record without a
 * request_id cannot be stored: it is logged and freed. */
void audit_lane_submit(struct audit_lane *l, struct audit_record *rec);
/* audit_lane_submit on lane 0 (a single producer: start-up, tests). */
void audit_submit(struct audit *a, struct audit_record *rec);

/* Records submitted and not yet committed to SQLite: in memory plus in the spool
 * (fastgate_audit_queue_depth). Cheap; any thread. */
size_t audit_queue_depth(struct audit *a);
/* Milliseconds since the writer last committed anything while records wait (0 when none
 * wait): a database that stays locked or read-only shows here, for /health/ready. Cheap;
 * any thread. */
int64_t audit_stalled_ms(struct audit *a);

/* Stop the writer after it has committed everything it can: it keeps retrying a failing
 * database for up to close_wait_ms, then appends what is left to the spool (replayed by
 * the next audit_open). Joins the thread and frees a. NULL is fine. Call after the last
 * audit_submit. */
void audit_close(struct audit *a);

/* ---- spend counters ----
 * The audit database also holds what the billed requests add up to, per key ("k:ID") and
 * per user ("u:ID"): requests, tokens (prompt + completion) and cost in nano-USD, for all
 * time (start 0), per UTC day (start = its midnight, unix seconds) and per UTC month
 * (start = the 1st, 00:00). The writer adds every row it inserts with billed set and a
 * key to them in the transaction that inserts the row, so after a crash the rows and the
 * counters still agree; a row inserted by anything else (sqlite3, an older build) is
 * added at the next open, or by the writer's next batch. Pruning rows (retention) does
 * not change the counters: they are what was spent, not what is still on file. */

struct spend_row {
	char scope;               /* 'k' (a key) or 'u' (a user) */
	int64_t id;
	enum spend_period period;
	int64_t start;            /* unix seconds; 0 for SPEND_ALL */
	int64_t requests, tokens, cost_nano;
};

/* Every counter of a's database, one cb call each (on the calling thread, in no particular
 * order), for the daemon's start: call it once, on the loop thread, after audit_open and
 * before serving. It first waits for the writer to commit the spool a previous run left
 * (while that makes progress; with the database locked or failing, for at most
 * close_wait_ms), so that the counters include those requests; then it reads on a
 * read-only connection of its own, adding any billed rows the counters do not include yet,
 * so it never waits for the write lock. Day and month windows that ended before `since`
 * may be skipped (0: none are). 0, or -1 with *err set (caller frees). */
int audit_spend_load(struct audit *a, int64_t since,
                     void (*cb)(void *arg, const struct spend_row *r), void *arg, char **err);

/* Live tail: not provided here. The loop thread already holds each record before
 * audit_submit(); it formats it for tail subscribers with audit_record_json() first. */

/* ---- read side ---- */

struct audit_query {
	double since;             /* unix seconds, started_at >= since; 0 = open */
	double until;             /* unix seconds, started_at < until; 0 = open */
	int64_t key_id;           /* -1 = any, 0 = requests without a key, N = that key */
	int64_t user_id;          /* -1 = any, 0 = requests without a user, N = that user */
	const char *route;        /* exact route name; NULL = any */
	int status;               /* 0 = any; 1..5 = that class (5 = 5xx); 100..599 = exact */
	int is_stream;            /* -1 = any, 0 = plain answers, 1 = streams */
	const char *error;        /* exact error kind; NULL = any; "" = rows with an error */
	size_t limit;             /* 0 = no limit */
	bool newest_first;        /* false: oldest first (export); true: newest first */
};
/* Sets the "match everything" values (key_id and user_id -1, is_stream -1, rest zero). */
void audit_query_init(struct audit_query *q);

struct audit_cursor;

/* Open a read-only connection and start the query; rows come in started_at order (ties in
 * insertion order). q is copied. NULL on error with *err set (caller frees). */
struct audit_cursor *audit_query_open(const char *db_path, const struct audit_query *q,
                                      char **err);
/* Next row into *out, which must be zeroed or hold a record from a previous call (its
 * strings are freed first); the caller frees the last one with audit_record_clear().
 * 1 = a row, 0 = no more rows, -1 = error (message via audit_cursor_error). */
int audit_cursor_next(struct audit_cursor *c, struct audit_record *out);
/* The last error of the cursor, valid until the next call on it; NULL if none. */
const char *audit_cursor_error(const struct audit_cursor *c);
void audit_cursor_close(struct audit_cursor *c);

/* Fetch one row by request id into *out (zeroed or previously filled, as above).
 * 1 = found, 0 = no such request, -1 = error with *err set (caller frees). */
int audit_get(const char *db_path, const char *request_id, struct audit_record *out,
              char **err);

/* For other readers of the file (stats.c): what to select the rows that started in
 * [?1, ?2) FROM, in a file at schema `version`. From schema 10 on, a subquery over the
 * row table and the blocks (the `audit` view would decode every block of the file); the
 * caller still writes "WHERE started_at >= ?1 AND started_at < ?2", which an older file's
 * table "audit" needs. */
const char *audit_rows_source(int version);

#endif
