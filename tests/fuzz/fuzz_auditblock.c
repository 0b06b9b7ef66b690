/* Fuzz target: the audit database's block format (fastgated/auditblock.c), read back the
 * way the `audit` view reads it: SQLite's json_each over the block, json_extract of each
 * of the 34 columns of a row.
 *
 * The input is cut into 0 to 8 records (none: the block must be "[]"): strings of any
 * bytes (quotes, backslashes, control characters, bytes that are not UTF-8, long runs
 * that make the buffer grow), integers from small to INT64_MIN/INT64_MAX, doubles from
 * the input's raw bits (NaN, infinities, subnormals, huge values) or from tables of edge
 * cases. They go into one block (a fresh one, or one kept across inputs and reset, with
 * ablock_text called once midway as well when the input says so), and what SQLite reads
 * back must be what auditblock.h promises, exactly:
 *   - one row array of 34 values per record, in order;
 *   - strings byte for byte (a C string ends at its NUL), NULL as null;
 *   - integers as INTEGER; key_id and user_id below 1, token counts and cost_nano below
 *     0 as null; booleans 0/1;
 *   - started_at always a REAL: llround(t * 1e6) microseconds written with six decimals
 *     (0 when t is not finite or its microseconds do not fit an int64); latency_ms and
 *     ttfb_ms llround(v * 1e3) with three decimals, null when not finite or past what an
 *     int64 holds in those units, ttfb_ms < 0 null. The number's own text (the `->`
 *     operator gives it) is the one digit string that value has: a '-' only when it is
 *     below 0 (no "-0.000"), then the whole part, the point and every decimal; and the
 *     REAL is that text's nearest double (strtod rounds correctly; so does Debian's
 *     SQLite 3.40 for texts of this form, tried on millions of them, the cases where a
 *     long double division would round twice included), so nothing is compared with a
 *     tolerance;
 *   - first and last are the least and greatest started_at stored, as the double
 *     micro / 1e6 (what ablock_time gives).
 * Between 9e18 and 2^63 units (where the encoder may keep a margin below the int64 limit)
 * either answer is taken: null or the value, 0 or the value for started_at. */
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include <sqlite3.h>

#include "auditblock.h"
#include "fuzz.h"

#define MAX_RECORDS 8
#define STR_BUDGET (16 * 1024)     /* bytes of strings one input may make */

static sqlite3 *db;
static sqlite3_stmt *rows_st;      /* the decoding query, over ?1 = the block's text */
static struct ablock kept;         /* the block reused across inputs (reset each time) */

/* result columns of the decoding query */
enum { Q_KEY, Q_TYPE, Q_LEN, Q_COL0 };
#define Q_TEXT(i) (Q_COL0 + AUDIT_NFIELDS + (i))   /* `->` text of the three doubles */

static void close_db(void)
{
	sqlite3_finalize(rows_st);
	sqlite3_close(db);
	ablock_free(&kept);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char sql[4096];
	size_t n = 0;

	(void)argc;
	(void)argv;
	if (sqlite3_open(":memory:", &db) != SQLITE_OK)
		abort();
	n += (size_t)snprintf(sql + n, sizeof(sql) - n,
	                      "SELECT j.key, j.type, json_array_length(j.value)");
	for (int i = 0; i < AUDIT_NFIELDS; i++)
		n += (size_t)snprintf(sql + n, sizeof(sql) - n, ", json_extract(j.value, '$[%d]')", i);
	n += (size_t)snprintf(sql + n, sizeof(sql) - n,
	                      ", j.value -> '$[%d]', j.value -> '$[%d]', j.value -> '$[%d]'"
	                      " FROM json_each(?1) j ORDER BY j.key",
	                      AUDIT_F_STARTED_AT, AUDIT_F_LATENCY_MS, AUDIT_F_TTFB_MS);
	if (n >= sizeof(sql) || sqlite3_prepare_v2(db, sql, -1, &rows_st, NULL) != SQLITE_OK) {
		fprintf(stderr, "fuzz_auditblock: %s\n", sqlite3_errmsg(db));
		abort();
	}
	atexit(close_db);
	return 0;
}

/* ---- the input, read front to back; past its end every read gives 0 ---- */

struct cursor {
	const uint8_t *p;
	size_t n, at;
	size_t budget;                 /* string bytes still allowed */
};

static uint8_t byte(struct cursor *c)
{
	return c->at < c->n ? c->p[c->at++] : 0;
}

static uint64_t bytes_le(struct cursor *c, int k)
{
	uint64_t v = 0;

	for (int i = 0; i < k; i++)
		v |= (uint64_t)byte(c) << (8 * i);
	return v;
}

static int64_t take_int(struct cursor *c)
{
	static const int64_t edge[] = {
		INT64_MIN, INT64_MIN + 1, INT64_MAX, INT64_MAX - 1, -1, 0, 1, 2,
		INT32_MIN, INT32_MAX, (int64_t)INT32_MAX + 1, 9007199254740993LL,
		-9007199254740993LL, 999999999999999999LL, 1000000000000000000LL, -10,
	};
	uint8_t m = byte(c);

	switch (m % 4) {
	case 0: return (int64_t)bytes_le(c, 8);
	case 1: return (int8_t)byte(c);
	case 2: return edge[byte(c) % (sizeof(edge) / sizeof(edge[0]))];
	default: return (int16_t)bytes_le(c, 2);
	}
}

static double take_double(struct cursor *c)
{
	static const double edge[] = {
		NAN, -NAN, INFINITY, -INFINITY, 0.0, -0.0, -0.0004, 0.0004, 0.0005, -0.0005,
		0.0015, -0.0015, 2.5e-7, -2.5e-7, 5e-7, 1765151481.1234567, 1765151481.0,
		1765151481.9999996, 4294967296.0000005, 9007199254.740992, 9007199254.740993,
		9e12, 9.1e12, 9.2e12, 9223372036854.775, 9.3e12, 9e15, 9.1e15, 9.2e15,
		9223372036854775.0, 9.3e15, 1e300, -1e300, 1.7976931348623157e308,
		-1.7976931348623157e308, 2.2250738585072014e-308, 4.9e-324, -9e12, -9.3e15,
		0.49999999999999994, 123.4565, 999.9995, -999.9995,
	};
	uint8_t m = byte(c);
	uint64_t raw;
	double d;

	switch (m % 6) {
	case 0:                       /* any bits: NaNs, infinities, subnormals, huge */
		raw = bytes_le(c, 8);
		memcpy(&d, &raw, sizeof(d));
		return d;
	case 1:                       /* a small signed value to a few decimals */
		return (double)(int32_t)(bytes_le(c, 3) << 8) / 256 / pow(10, byte(c) % 8);
	case 2:                       /* a time like a clock gives */
		return 1700000000.0 + (double)bytes_le(c, 4) + (double)bytes_le(c, 3) / 16777216.0;
	case 3:
		return edge[byte(c) % (sizeof(edge) / sizeof(edge[0]))];
	case 4:                       /* any magnitude, around the thresholds too */
		return ldexp((double)(int16_t)bytes_le(c, 2), (int)(byte(c) % 160) - 80);
	default:                      /* ties at the last decimal kept */
		return ((double)(int64_t)(bytes_le(c, 6) << 16) / 65536 + 0.5) /
		       (byte(c) & 1 ? 1e3 : 1e6);
	}
}

/* A spec byte, then: 0 = NULL; 1..0xbf = that many - 1 bytes of the input; 0xc0.. = a
 * run of up to 32 input bytes repeated 8 to 512 times. The string ends at its first
 * NUL, as the record's C strings do. */
static char *take_str(struct cursor *c)
{
	uint8_t spec = byte(c);
	size_t len, chunk = 0, reps = 1;
	char *s;

	if (spec == 0)
		return NULL;
	if (spec < 0xc0) {
		len = spec - 1u;
	} else {
		chunk = byte(c) % 32 + 1u;
		reps = 8u * (spec - 0xbfu);
		len = chunk * reps;
	}
	if (len > c->budget)
		len = c->budget;
	c->budget -= len;
	s = malloc(len + 1);
	if (!s)
		abort();
	if (spec < 0xc0) {
		for (size_t i = 0; i < len; i++)
			s[i] = (char)byte(c);
	} else {
		uint8_t run[32];

		for (size_t i = 0; i < chunk; i++)
			run[i] = byte(c);
		for (size_t i = 0; i < len; i++)
			s[i] = (char)run[i % chunk];
	}
	s[len] = '\0';
	return s;
}

static void take_record(struct cursor *c, struct audit_record *r)
{
	memset(r, 0, sizeof(*r));
	r->request_id = take_str(c);
	r->started_at = take_double(c);
	r->key_id = take_int(c);
	r->key_name = take_str(c);
	r->client_ip = take_str(c);
	r->method = take_str(c);
	r->path = take_str(c);
	r->route = take_str(c);
	r->upstream = take_str(c);
	r->status = (int)(int32_t)(uint32_t)take_int(c);
	r->latency_ms = take_double(c);
	r->ttfb_ms = take_double(c);
	r->is_stream = byte(c) & 1;
	r->chunks = take_int(c);
	r->bytes_in = take_int(c);
	r->bytes_out = take_int(c);
	r->model = take_str(c);
	r->prompt_tokens = take_int(c);
	r->completion_tokens = take_int(c);
	r->error = take_str(c);
	r->retries = (int)(int32_t)(uint32_t)take_int(c);
	r->attempts = take_str(c);
	r->cached_tokens = take_int(c);
	r->cache_write_tokens = take_int(c);
	r->reasoning_tokens = take_int(c);
	r->upstream_request_id = take_str(c);
	r->user_id = take_int(c);
	r->cost_nano = take_int(c);
	r->price_version = take_str(c);
	r->estimated = byte(c) & 1;
	r->billed = byte(c) & 1;
	r->unpriced = byte(c) & 1;
	r->request_body = take_str(c);
	r->response_body = take_str(c);
}

static void free_record(struct audit_record *r)
{
	char *s[] = { r->request_id, r->key_name, r->client_ip, r->method, r->path, r->route,
	              r->upstream, r->model, r->error, r->attempts, r->upstream_request_id,
	              r->price_version, r->request_body, r->response_body };

	for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++)
		free(s[i]);
}

/* ---- what the contract says a record's row holds ---- */

enum kind { W_NULL, W_INT, W_TEXT, W_FIXED };
enum alt { ALT_NONE, ALT_NULL, ALT_ZERO };   /* the other answer taken in the margin */

struct want {
	enum kind kind;
	int64_t i;                    /* W_INT; W_FIXED: units of 10^-places */
	const char *s;                /* W_TEXT */
	int places;                   /* W_FIXED */
	enum alt alt;                 /* W_FIXED */
};

static struct want w_str(const char *s)
{
	return s ? (struct want){ .kind = W_TEXT, .s = s } : (struct want){ .kind = W_NULL };
}

static struct want w_int(int64_t v)
{
	return (struct want){ .kind = W_INT, .i = v };
}

static struct want w_int_or_null(int64_t v, int64_t unknown_below)
{
	return v < unknown_below ? (struct want){ .kind = W_NULL } : w_int(v);
}

/* v in units of 10^-places: null when not finite or past what an int64 holds (either
 * answer in the margin from 9e18 to 2^63); with zero_for_null (started_at), 0 instead. */
static struct want w_fixed(double v, int places, bool zero_for_null)
{
	double x = v * (places == 6 ? 1e6 : 1e3);
	struct want w = { .kind = W_FIXED, .places = places };

	if (!isfinite(x) || fabs(x) >= 9223372036854775808.0) {
		if (!zero_for_null)
			return (struct want){ .kind = W_NULL };
		w.i = 0;
		return w;
	}
	w.i = llround(x);
	if (fabs(x) >= 9.0e18)
		w.alt = zero_for_null ? ALT_ZERO : ALT_NULL;
	return w;
}

static void want_row(const struct audit_record *r, struct want w[AUDIT_NFIELDS])
{
	w[AUDIT_F_REQUEST_ID] = w_str(r->request_id);
	w[AUDIT_F_STARTED_AT] = w_fixed(r->started_at, 6, true);
	w[AUDIT_F_KEY_ID] = w_int_or_null(r->key_id, 1);
	w[AUDIT_F_KEY_NAME] = w_str(r->key_name);
	w[AUDIT_F_CLIENT_IP] = w_str(r->client_ip);
	w[AUDIT_F_METHOD] = w_str(r->method);
	w[AUDIT_F_PATH] = w_str(r->path);
	w[AUDIT_F_ROUTE] = w_str(r->route);
	w[AUDIT_F_UPSTREAM] = w_str(r->upstream);
	w[AUDIT_F_STATUS] = w_int(r->status);
	w[AUDIT_F_LATENCY_MS] = w_fixed(r->latency_ms, 3, false);
	w[AUDIT_F_TTFB_MS] = r->ttfb_ms < 0 ? (struct want){ .kind = W_NULL }
	                                    : w_fixed(r->ttfb_ms, 3, false);
	w[AUDIT_F_IS_STREAM] = w_int(r->is_stream);
	w[AUDIT_F_CHUNKS] = w_int(r->chunks);
	w[AUDIT_F_BYTES_IN] = w_int(r->bytes_in);
	w[AUDIT_F_BYTES_OUT] = w_int(r->bytes_out);
	w[AUDIT_F_MODEL] = w_str(r->model);
	w[AUDIT_F_PROMPT_TOKENS] = w_int_or_null(r->prompt_tokens, 0);
	w[AUDIT_F_COMPLETION_TOKENS] = w_int_or_null(r->completion_tokens, 0);
	w[AUDIT_F_ERROR] = w_str(r->error);
	w[AUDIT_F_RETRIES] = w_int(r->retries);
	w[AUDIT_F_ATTEMPTS] = w_str(r->attempts);
	w[AUDIT_F_CACHED_TOKENS] = w_int_or_null(r->cached_tokens, 0);
	w[AUDIT_F_CACHE_WRITE_TOKENS] = w_int_or_null(r->cache_write_tokens, 0);
	w[AUDIT_F_REASONING_TOKENS] = w_int_or_null(r->reasoning_tokens, 0);
	w[AUDIT_F_UPSTREAM_REQUEST_ID] = w_str(r->upstream_request_id);
	w[AUDIT_F_USER_ID] = w_int_or_null(r->user_id, 1);
	w[AUDIT_F_COST_USD] = w_int_or_null(r->cost_nano, 0);
	w[AUDIT_F_PRICE_VERSION] = w_str(r->price_version);
	w[AUDIT_F_ESTIMATED] = w_int(r->estimated);
	w[AUDIT_F_BILLED] = w_int(r->billed);
	w[AUDIT_F_UNPRICED] = w_int(r->unpriced);
	w[AUDIT_F_REQUEST_BODY] = w_str(r->request_body);
	w[AUDIT_F_RESPONSE_BODY] = w_str(r->response_body);
}

/* The one text a fixed-point value has: "-" below 0 only, whole part, point, decimals. */
static void fixed_text(int64_t n, int places, char *out, size_t cap)
{
	uint64_t unit = places == 6 ? 1000000 : 1000;
	uint64_t mag = n < 0 ? 0 - (uint64_t)n : (uint64_t)n;

	snprintf(out, cap, "%s%" PRIu64 ".%0*" PRIu64, n < 0 ? "-" : "", mag / unit, places,
	         mag % unit);
}

static int text_col(int field)
{
	return field == AUDIT_F_STARTED_AT ? Q_TEXT(0) : field == AUDIT_F_LATENCY_MS ? Q_TEXT(1)
	                                                                           : Q_TEXT(2);
}

/* One fixed-point column of row `row`; the units it holds (for started_at) in *stored. */
static void check_fixed(int row, int field, const struct want *w, int64_t *stored)
{
	int col = Q_COL0 + field, type = sqlite3_column_type(rows_st, col);
	const char *text = (const char *)sqlite3_column_text(rows_st, text_col(field));
	char want[48], zero[48];
	double v, exact;

	FUZZ_CHECK(text != NULL, "row %d column %d: no JSON text", row, field);
	if (type == SQLITE_NULL) {
		FUZZ_CHECK(w->alt == ALT_NULL, "row %d column %d: null for %" PRId64 " units",
		           row, field, w->i);
		FUZZ_CHECK(strcmp(text, "null") == 0, "row %d column %d: null written %s", row, field,
		           text);
		return;
	}
	FUZZ_CHECK(type == SQLITE_FLOAT, "row %d column %d: type %d, not REAL", row, field, type);
	fixed_text(w->i, w->places, want, sizeof(want));
	fixed_text(0, w->places, zero, sizeof(zero));
	if (strcmp(text, want) == 0)
		*stored = w->i;
	else if (w->alt == ALT_ZERO && strcmp(text, zero) == 0)
		*stored = 0;
	else
		FUZZ_CHECK(0, "row %d column %d: written %s, expected %s", row, field, text, want);
	v = sqlite3_column_double(rows_st, col);
	exact = strtod(text, NULL);
	FUZZ_CHECK(v == exact, "row %d column %d: %s read as %.17g, not %.17g", row, field, text,
	           v, exact);
}

static void check_row(int row, const struct want w[AUDIT_NFIELDS], int64_t *started_us)
{
	for (int f = 0; f < AUDIT_NFIELDS; f++) {
		int col = Q_COL0 + f, type = sqlite3_column_type(rows_st, col);

		switch (w[f].kind) {
		case W_NULL:
			FUZZ_CHECK(type == SQLITE_NULL, "row %d column %d: type %d, expected null",
			           row, f, type);
			if (f == AUDIT_F_LATENCY_MS || f == AUDIT_F_TTFB_MS)
				FUZZ_CHECK(strcmp((const char *)sqlite3_column_text(rows_st, text_col(f)),
				                  "null") == 0, "row %d column %d: not written null", row, f);
			break;
		case W_INT:
			FUZZ_CHECK(type == SQLITE_INTEGER, "row %d column %d: type %d, expected INTEGER",
			           row, f, type);
			FUZZ_CHECK(sqlite3_column_int64(rows_st, col) == w[f].i,
			           "row %d column %d: %lld, expected %" PRId64, row, f,
			           (long long)sqlite3_column_int64(rows_st, col), w[f].i);
			break;
		case W_TEXT: {
			size_t len = strlen(w[f].s);
			const unsigned char *t = sqlite3_column_text(rows_st, col);

			FUZZ_CHECK(type == SQLITE_TEXT, "row %d column %d: type %d, expected TEXT",
			           row, f, type);
			FUZZ_CHECK((size_t)sqlite3_column_bytes(rows_st, col) == len &&
			           memcmp(t, w[f].s, len) == 0,
			           "row %d column %d: %d bytes back, %zu put in, or other bytes", row, f,
			           sqlite3_column_bytes(rows_st, col), len);
			break;
		}
		case W_FIXED: {
			int64_t stored = 0;

			check_fixed(row, f, &w[f], &stored);
			if (f == AUDIT_F_STARTED_AT)
				*started_us = stored;
			break;
		}
		}
	}
}

/* Decode the block's text and check its first `n` rows against w; return the least and
 * greatest started_at the rows hold (micro / 1e6). */
static void check_block(const char *text, size_t len, size_t n,
                        struct want w[][AUDIT_NFIELDS], double *first, double *last)
{
	size_t rows = 0;
	int rc;

	FUZZ_CHECK(len >= 2 && text[0] == '[' && text[len - 1] == ']' && text[len] == '\0',
	           "the block is not one bracketed NUL-terminated array");
	FUZZ_CHECK(strlen(text) == len, "a NUL inside the block's %zu bytes", len);
	if (n == 0)
		FUZZ_CHECK(len == 2 && strcmp(text, "[]") == 0, "an empty block is %s", text);
	sqlite3_reset(rows_st);
	sqlite3_bind_text(rows_st, 1, text, (int)len, SQLITE_STATIC);
	while ((rc = sqlite3_step(rows_st)) == SQLITE_ROW) {
		int64_t us = 0;
		double t;

		FUZZ_CHECK(rows < n, "more than %zu rows", n);
		FUZZ_CHECK(sqlite3_column_int64(rows_st, Q_KEY) == (int64_t)rows, "row %zu has key %lld",
		           rows, (long long)sqlite3_column_int64(rows_st, Q_KEY));
		FUZZ_CHECK(strcmp((const char *)sqlite3_column_text(rows_st, Q_TYPE), "array") == 0,
		           "row %zu is a %s", rows, sqlite3_column_text(rows_st, Q_TYPE));
		FUZZ_CHECK(sqlite3_column_int(rows_st, Q_LEN) == AUDIT_NFIELDS,
		           "row %zu has %d values", rows, sqlite3_column_int(rows_st, Q_LEN));
		check_row((int)rows, w[rows], &us);
		t = (double)us / 1e6;
		if (rows == 0 || t < *first)
			*first = t;
		if (rows == 0 || t > *last)
			*last = t;
		rows++;
	}
	FUZZ_CHECK(rc == SQLITE_DONE, "SQLite: %s", sqlite3_errmsg(db));
	FUZZ_CHECK(rows == n, "%zu rows read back, %zu written", rows, n);
	sqlite3_reset(rows_st);
	sqlite3_clear_bindings(rows_st);
}

static void check_text(struct ablock *b, size_t n, struct want w[][AUDIT_NFIELDS])
{
	double first = 0, last = 0;
	size_t len = 0;
	const char *text = ablock_text(b, &len);

	FUZZ_CHECK(b->n == n, "the block counts %zu rows, %zu added", b->n, n);
	check_block(text, len, n, w, &first, &last);
	if (n > 0) {
		/* the same double the encoder stores: micro / 1e6 */
		FUZZ_CHECK(b->first == first && b->last == last,
		           "first/last %.17g/%.17g, the rows' least/greatest %.17g/%.17g",
		           b->first, b->last, first, last);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cursor c = { data, size, 0, STR_BUDGET };
	struct audit_record recs[MAX_RECORDS];
	struct want w[MAX_RECORDS][AUDIT_NFIELDS];
	struct ablock fresh = { 0 }, *b;
	size_t n, mid;
	uint8_t flags;

	if (!db)
		LLVMFuzzerInitialize(NULL, NULL);
	n = byte(&c) % (MAX_RECORDS + 1);
	flags = byte(&c);
	/* bit 0: the block kept across inputs, reset; else a fresh one (bit 1: reset first) */
	b = flags & 1 ? &kept : &fresh;
	if (flags & 3)
		ablock_reset(b);
	/* the high bits: after how many records ablock_text is called midway (0: never) */
	mid = n ? (flags >> 4) % (n + 1) : 0;
	for (size_t i = 0; i < n; i++) {
		take_record(&c, &recs[i]);
		want_row(&recs[i], w[i]);
	}
	for (size_t i = 0; i < n; i++) {
		ablock_add(b, &recs[i]);
		if (i + 1 == mid)
			check_text(b, mid, w);
	}
	check_text(b, n, w);
	for (size_t i = 0; i < n; i++)
		free_record(&recs[i]);
	ablock_free(&fresh);
	return 0;
}
