/* Unit tests for auditblock.c, the audit database's block format: every block is read
 * back the way the `audit` view reads it, with SQLite's json_each over the block and
 * json_extract of each column of a row, and the values must be the ones auditblock.h
 * promises: strings byte for byte (escaped only where JSON needs it, other bytes kept
 * even when they are not UTF-8), null where the row table had NULL, integers exact,
 * started_at a REAL to the microsecond, latency_ms and ttfb_ms to three decimals. The
 * numbers' own text is checked too (the `->` operator gives it), so that "-0.000" or a
 * missing decimal cannot hide behind SQLite reading the same double. */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "auditblock.h"
#include "unit.h"

static sqlite3 *db;

static sqlite3 *mem_db(void)
{
	if (!db && sqlite3_open(":memory:", &db) != SQLITE_OK) {
		fprintf(stderr, "  sqlite3_open(:memory:) failed\n");
		abort();
	}
	return db;
}

/* Result columns of rows_of(): the 34 fields (enum audit_field), then the JSON text of
 * the three fixed-point ones, then the row's value count. */
#define C_TEXT_STARTED  AUDIT_NFIELDS
#define C_TEXT_LATENCY  (AUDIT_NFIELDS + 1)
#define C_TEXT_TTFB     (AUDIT_NFIELDS + 2)
#define C_NVALUES       (AUDIT_NFIELDS + 3)

/* The block's rows in order, as the audit view reads them: step it, then rows_done().
 * One statement, prepared once (the closing-bracket case reads a thousand blocks). */
static sqlite3_stmt *rows_st;

static sqlite3_stmt *rows_of(const char *text, size_t len)
{
	char sql[4096];
	size_t n = 0;

	if (!rows_st) {
		n += (size_t)snprintf(sql + n, sizeof(sql) - n, "SELECT ");
		for (int i = 0; i < AUDIT_NFIELDS; i++)
			n += (size_t)snprintf(sql + n, sizeof(sql) - n,
			                      "json_extract(j.value, '$[%d]'), ", i);
		snprintf(sql + n, sizeof(sql) - n,
		         "j.value -> '$[%d]', j.value -> '$[%d]', j.value -> '$[%d]', "
		         "json_array_length(j.value) FROM json_each(?1) j ORDER BY j.key",
		         AUDIT_F_STARTED_AT, AUDIT_F_LATENCY_MS, AUDIT_F_TTFB_MS);
		if (sqlite3_prepare_v2(mem_db(), sql, -1, &rows_st, NULL) != SQLITE_OK) {
			fprintf(stderr, "  prepare: %s\n", sqlite3_errmsg(db));
			abort();
		}
	}
	sqlite3_reset(rows_st);
	sqlite3_bind_text(rows_st, 1, text, (int)len, SQLITE_STATIC);
	return rows_st;
}

static void rows_done(sqlite3_stmt *st)
{
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
}

/* One row of a one-row block: stepped to it, and checked to be the only one. */
static sqlite3_stmt *only_row(struct ablock *b)
{
	size_t len;
	const char *text = ablock_text(b, &len);
	sqlite3_stmt *st = rows_of(text, len);

	CHECK_INT(sqlite3_step(st), SQLITE_ROW);
	CHECK_INT(sqlite3_column_int(st, C_NVALUES), AUDIT_NFIELDS);
	return st;
}

static void end_rows(sqlite3_stmt *st)
{
	CHECK_INT(sqlite3_step(st), SQLITE_DONE);
	rows_done(st);
}

/* The first column of the first row of `sql` over ?1 = text, as text (NULL for null). */
static char *q1(const char *sql, const char *text, size_t len)
{
	sqlite3_stmt *st = NULL;
	char *out = NULL;

	if (sqlite3_prepare_v2(mem_db(), sql, -1, &st, NULL) != SQLITE_OK) {
		fprintf(stderr, "  prepare %s: %s\n", sql, sqlite3_errmsg(db));
		abort();
	}
	sqlite3_bind_text(st, 1, text, (int)len, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
		out = strdup((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return out;
}

static void check_text_col(sqlite3_stmt *st, int col, const char *want, size_t want_len)
{
	CHECK_INT(sqlite3_column_type(st, col), SQLITE_TEXT);
	CHECK_INT(sqlite3_column_bytes(st, col), want_len);
	CHECK(sqlite3_column_text(st, col) && (size_t)sqlite3_column_bytes(st, col) == want_len &&
	      memcmp(sqlite3_column_text(st, col), want, want_len) == 0);
}

static void check_null_col(sqlite3_stmt *st, int col)
{
	if (sqlite3_column_type(st, col) != SQLITE_NULL) {
		unit_failed_checks++;
		fprintf(stderr, "  column %d is %s, expected null\n", col,
		        sqlite3_column_text(st, col));
	}
}

static void check_int_col(sqlite3_stmt *st, int col, int64_t want)
{
	CHECK_INT(sqlite3_column_type(st, col), SQLITE_INTEGER);
	CHECK_INT(sqlite3_column_int64(st, col), want);
}

/* A REAL whose JSON text is exactly `text` and whose value is exactly `want`. */
static void check_real_col(sqlite3_stmt *st, int col, int text_col, const char *text,
                           double want)
{
	CHECK_INT(sqlite3_column_type(st, col), SQLITE_FLOAT);
	CHECK_STR((const char *)sqlite3_column_text(st, text_col), text);
	if (sqlite3_column_double(st, col) != want) {
		unit_failed_checks++;
		fprintf(stderr, "  column %d read %.17g, expected %.17g\n", col,
		        sqlite3_column_double(st, col), want);
	}
}

/* A record with every value known and plain (string literals: never freed). */
static void plain_record(struct audit_record *r)
{
	memset(r, 0, sizeof(*r));
	r->request_id = "req-1";
	r->started_at = 1765151481.25;
	r->key_id = 3;
	r->key_name = "team-a";
	r->client_ip = "10.0.0.1";
	r->method = "POST";
	r->path = "/v1/chat/completions";
	r->route = "openai";
	r->upstream = "http://10.0.0.5:8000";
	r->status = 200;
	r->latency_ms = 120.5;
	r->ttfb_ms = 30.25;
	r->is_stream = true;
	r->chunks = 12;
	r->bytes_in = 2048;
	r->bytes_out = 4096;
	r->model = "gpt-4o";
	r->prompt_tokens = 100;
	r->completion_tokens = 50;
	r->error = "timeout";
	r->retries = 1;
	r->attempts = "http://10.0.0.5:8000=ok:120";
	r->cached_tokens = 20;
	r->cache_write_tokens = 5;
	r->reasoning_tokens = 10;
	r->upstream_request_id = "up-1";
	r->user_id = 7;
	r->cost_nano = 123456789;
	r->price_version = "2026-01";
	r->estimated = false;
	r->billed = true;
	r->unpriced = false;
	r->request_body = "{\"model\":\"gpt-4o\"}";
	r->response_body = "{\"id\":\"x\"}";
}

TEST(a_plain_record_reads_back_column_by_column)
{
	struct ablock b = { 0 };
	struct audit_record r;
	sqlite3_stmt *st;

	plain_record(&r);
	ablock_add(&b, &r);
	st = only_row(&b);
	check_text_col(st, AUDIT_F_REQUEST_ID, "req-1", 5);
	check_real_col(st, AUDIT_F_STARTED_AT, C_TEXT_STARTED, "1765151481.250000", 1765151481.25);
	check_int_col(st, AUDIT_F_KEY_ID, 3);
	check_text_col(st, AUDIT_F_KEY_NAME, "team-a", 6);
	check_text_col(st, AUDIT_F_CLIENT_IP, "10.0.0.1", 8);
	check_text_col(st, AUDIT_F_METHOD, "POST", 4);
	check_text_col(st, AUDIT_F_PATH, "/v1/chat/completions", 20);
	check_text_col(st, AUDIT_F_ROUTE, "openai", 6);
	check_text_col(st, AUDIT_F_UPSTREAM, "http://10.0.0.5:8000", 20);
	check_int_col(st, AUDIT_F_STATUS, 200);
	check_real_col(st, AUDIT_F_LATENCY_MS, C_TEXT_LATENCY, "120.500", 120.5);
	check_real_col(st, AUDIT_F_TTFB_MS, C_TEXT_TTFB, "30.250", 30.25);
	check_int_col(st, AUDIT_F_IS_STREAM, 1);
	check_int_col(st, AUDIT_F_CHUNKS, 12);
	check_int_col(st, AUDIT_F_BYTES_IN, 2048);
	check_int_col(st, AUDIT_F_BYTES_OUT, 4096);
	check_text_col(st, AUDIT_F_MODEL, "gpt-4o", 6);
	check_int_col(st, AUDIT_F_PROMPT_TOKENS, 100);
	check_int_col(st, AUDIT_F_COMPLETION_TOKENS, 50);
	check_text_col(st, AUDIT_F_ERROR, "timeout", 7);
	check_int_col(st, AUDIT_F_RETRIES, 1);
	check_text_col(st, AUDIT_F_ATTEMPTS, "http://10.0.0.5:8000=ok:120", 27);
	check_int_col(st, AUDIT_F_CACHED_TOKENS, 20);
	check_int_col(st, AUDIT_F_CACHE_WRITE_TOKENS, 5);
	check_int_col(st, AUDIT_F_REASONING_TOKENS, 10);
	check_text_col(st, AUDIT_F_UPSTREAM_REQUEST_ID, "up-1", 4);
	check_int_col(st, AUDIT_F_USER_ID, 7);
	check_int_col(st, AUDIT_F_COST_USD, 123456789);
	check_text_col(st, AUDIT_F_PRICE_VERSION, "2026-01", 7);
	check_int_col(st, AUDIT_F_ESTIMATED, 0);
	check_int_col(st, AUDIT_F_BILLED, 1);
	check_int_col(st, AUDIT_F_UNPRICED, 0);
	check_text_col(st, AUDIT_F_REQUEST_BODY, "{\"model\":\"gpt-4o\"}", 18);
	check_text_col(st, AUDIT_F_RESPONSE_BODY, "{\"id\":\"x\"}", 10);
	end_rows(st);
	CHECK_INT(b.n, 1);
	CHECK(b.first == 1765151481.25 && b.last == 1765151481.25);
	ablock_free(&b);
	CHECK(b.s == NULL && b.len == 0 && b.cap == 0 && b.n == 0);
}

TEST(escapes_are_only_what_json_needs_and_read_back_as_the_bytes)
{
	static const char nasty[] = "q\"uote \\back\\ nl\n cr\r tab\t soh\x01 us\x1f del\x7f end";
	struct ablock b = { 0 };
	struct audit_record r;
	sqlite3_stmt *st;
	const char *text;
	size_t len;

	plain_record(&r);
	r.key_name = (char *)nasty;
	r.response_body = "\"";                   /* a string that is only an escape */
	r.request_body = "\\";
	ablock_add(&b, &r);
	text = ablock_text(&b, &len);
	/* written: quote, backslash and the control characters escaped; DEL kept as it is */
	CHECK(strstr(text, "\"q\\\"uote \\\\back\\\\ nl\\n cr\\r tab\\t soh\\u0001 us\\u001f del\x7f"
	                   " end\"") != NULL);
	CHECK(strstr(text, ",\"\\\"\"]") != NULL);
	st = only_row(&b);
	check_text_col(st, AUDIT_F_KEY_NAME, nasty, sizeof(nasty) - 1);
	check_text_col(st, AUDIT_F_RESPONSE_BODY, "\"", 1);
	check_text_col(st, AUDIT_F_REQUEST_BODY, "\\", 1);
	end_rows(st);
	ablock_free(&b);
}

TEST(every_control_character_reads_back)
{
	char all[32];
	struct ablock b = { 0 };
	struct audit_record r;
	sqlite3_stmt *st;

	for (int i = 1; i < 32; i++)
		all[i - 1] = (char)i;
	all[31] = '\0';
	plain_record(&r);
	r.path = all;
	ablock_add(&b, &r);
	st = only_row(&b);
	check_text_col(st, AUDIT_F_PATH, all, 31);
	end_rows(st);
	ablock_free(&b);
}

TEST(bytes_that_are_not_utf8_are_kept_byte_for_byte)
{
	/* a lone continuation, an overlong NUL, a surrogate, 0xff 0xfe, a cut 3-byte
	 * sequence; then valid UTF-8 (é, an emoji) */
	static const char bad[] = "\x80 \xc0\x80 \xed\xa0\x80 \xff\xfe \xe2\x82";
	static const char good[] = "caf\xc3\xa9 \xf0\x9f\x98\x80";
	struct ablock b = { 0 };
	struct audit_record r;
	const char *text;
	char *hex;
	size_t len;
	sqlite3_stmt *st;

	plain_record(&r);
	r.model = (char *)bad;
	r.error = (char *)good;
	ablock_add(&b, &r);
	text = ablock_text(&b, &len);
	CHECK(memmem(text, len, bad, sizeof(bad) - 1) != NULL);    /* raw in the block too */
	hex = q1("SELECT hex(json_extract(value, '$[16]')) FROM json_each(?1)", text, len);
	CHECK_STR(hex, "8020C08020EDA08020FFFE20E282");
	free(hex);
	hex = q1("SELECT hex(json_extract(value, '$[19]')) FROM json_each(?1)", text, len);
	CHECK_STR(hex, "636166C3A920F09F9880");
	free(hex);
	st = only_row(&b);
	check_text_col(st, AUDIT_F_MODEL, bad, sizeof(bad) - 1);
	check_text_col(st, AUDIT_F_ERROR, good, sizeof(good) - 1);
	end_rows(st);
	ablock_free(&b);
}

TEST(unknown_values_are_null_and_known_ones_at_the_edge_are_not)
{
	struct ablock b = { 0 };
	struct audit_record r;
	sqlite3_stmt *st;
	int row = 0;
	size_t len;
	const char *text;

	/* row 0: every string NULL, every unknown number at its "unknown" value */
	memset(&r, 0, sizeof(r));
	r.started_at = 1765151481.0;
	r.key_id = 0;
	r.user_id = 0;
	r.ttfb_ms = -1;
	r.prompt_tokens = r.completion_tokens = r.cached_tokens = -1;
	r.cache_write_tokens = r.reasoning_tokens = -1;
	r.cost_nano = -1;
	ablock_add(&b, &r);
	/* row 1: further below (key and user -5, a ttfb that rounds to 0 but is < 0) */
	r.key_id = r.user_id = -5;
	r.ttfb_ms = -0.0001;
	r.prompt_tokens = r.completion_tokens = r.cached_tokens = INT64_MIN;
	r.cache_write_tokens = r.reasoning_tokens = r.cost_nano = INT64_MIN;
	ablock_add(&b, &r);
	/* row 2: the least known values: key and user 1, zero tokens, cost and ttfb, and
	 * empty strings (which are not null) */
	r.key_id = r.user_id = 1;
	r.ttfb_ms = 0;
	r.prompt_tokens = r.completion_tokens = r.cached_tokens = 0;
	r.cache_write_tokens = r.reasoning_tokens = r.cost_nano = 0;
	r.request_id = r.key_name = r.client_ip = r.method = r.path = r.route = "";
	r.upstream = r.model = r.error = r.attempts = r.upstream_request_id = "";
	r.price_version = r.request_body = r.response_body = "";
	ablock_add(&b, &r);

	text = ablock_text(&b, &len);
	st = rows_of(text, len);
	for (; sqlite3_step(st) == SQLITE_ROW; row++) {
		static const int strs[] = {
			AUDIT_F_REQUEST_ID, AUDIT_F_KEY_NAME, AUDIT_F_CLIENT_IP, AUDIT_F_METHOD,
			AUDIT_F_PATH, AUDIT_F_ROUTE, AUDIT_F_UPSTREAM, AUDIT_F_MODEL, AUDIT_F_ERROR,
			AUDIT_F_ATTEMPTS, AUDIT_F_UPSTREAM_REQUEST_ID, AUDIT_F_PRICE_VERSION,
			AUDIT_F_REQUEST_BODY, AUDIT_F_RESPONSE_BODY };
		static const int unknowable[] = {
			AUDIT_F_KEY_ID, AUDIT_F_PROMPT_TOKENS, AUDIT_F_COMPLETION_TOKENS,
			AUDIT_F_CACHED_TOKENS, AUDIT_F_CACHE_WRITE_TOKENS, AUDIT_F_REASONING_TOKENS,
			AUDIT_F_USER_ID, AUDIT_F_COST_USD };

		for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
			if (row < 2)
				check_null_col(st, strs[i]);
			else
				check_text_col(st, strs[i], "", 0);
		}
		for (size_t i = 0; i < sizeof(unknowable) / sizeof(unknowable[0]); i++) {
			int f = unknowable[i];

			if (row < 2)
				check_null_col(st, f);
			else
				check_int_col(st, f, f == AUDIT_F_KEY_ID || f == AUDIT_F_USER_ID ? 1 : 0);
		}
		if (row < 2) {
			check_null_col(st, AUDIT_F_TTFB_MS);
			CHECK_STR((const char *)sqlite3_column_text(st, C_TEXT_TTFB), "null");
		} else {
			check_real_col(st, AUDIT_F_TTFB_MS, C_TEXT_TTFB, "0.000", 0.0);
		}
		/* the numbers that are never unknown stay numbers, the booleans 0 */
		check_int_col(st, AUDIT_F_STATUS, 0);
		check_int_col(st, AUDIT_F_CHUNKS, 0);
		check_int_col(st, AUDIT_F_RETRIES, 0);
		check_int_col(st, AUDIT_F_IS_STREAM, 0);
		check_int_col(st, AUDIT_F_BILLED, 0);
		check_real_col(st, AUDIT_F_LATENCY_MS, C_TEXT_LATENCY, "0.000", 0.0);
	}
	CHECK_INT(row, 3);
	rows_done(st);
	ablock_free(&b);
}

TEST(integers_are_exact_from_int64_min_to_int64_max)
{
	struct ablock b = { 0 };
	struct audit_record r;
	sqlite3_stmt *st;

	plain_record(&r);
	r.key_id = INT64_MAX;
	r.chunks = INT64_MIN;
	r.bytes_in = INT64_MAX;
	r.bytes_out = -1;
	r.prompt_tokens = INT64_MAX;
	r.cost_nano = INT64_MAX;
	r.user_id = INT64_MAX - 1;
	r.status = INT_MIN;
	r.retries = INT_MAX;
	r.cached_tokens = 9007199254740993LL;          /* 2^53 + 1: not a double */
	r.reasoning_tokens = 1000000000000000000LL;
	r.is_stream = false;
	r.estimated = r.unpriced = true;
	ablock_add(&b, &r);
	r.chunks = INT64_MIN + 1;
	r.bytes_out = -9007199254740993LL;
	r.status = -1;
	ablock_add(&b, &r);

	{
		size_t len;
		const char *text = ablock_text(&b, &len);

		CHECK(strstr(text, ",-9223372036854775808,") != NULL);
		CHECK(strstr(text, ",9223372036854775807,") != NULL);
		st = rows_of(text, len);
	}
	CHECK_INT(sqlite3_step(st), SQLITE_ROW);
	check_int_col(st, AUDIT_F_KEY_ID, INT64_MAX);
	check_int_col(st, AUDIT_F_CHUNKS, INT64_MIN);
	check_int_col(st, AUDIT_F_BYTES_IN, INT64_MAX);
	check_int_col(st, AUDIT_F_BYTES_OUT, -1);
	check_int_col(st, AUDIT_F_PROMPT_TOKENS, INT64_MAX);
	check_int_col(st, AUDIT_F_COST_USD, INT64_MAX);
	check_int_col(st, AUDIT_F_USER_ID, INT64_MAX - 1);
	check_int_col(st, AUDIT_F_STATUS, INT_MIN);
	check_int_col(st, AUDIT_F_RETRIES, INT_MAX);
	check_int_col(st, AUDIT_F_CACHED_TOKENS, 9007199254740993LL);
	check_int_col(st, AUDIT_F_REASONING_TOKENS, 1000000000000000000LL);
	check_int_col(st, AUDIT_F_IS_STREAM, 0);
	check_int_col(st, AUDIT_F_ESTIMATED, 1);
	check_int_col(st, AUDIT_F_UNPRICED, 1);
	CHECK_INT(sqlite3_step(st), SQLITE_ROW);
	check_int_col(st, AUDIT_F_CHUNKS, INT64_MIN + 1);
	check_int_col(st, AUDIT_F_BYTES_OUT, -9007199254740993LL);
	check_int_col(st, AUDIT_F_STATUS, -1);
	end_rows(st);
	ablock_free(&b);
}

/* started_at t written as `text` and read back as the double `want`; first == last == want */
static void check_started(double t, const char *text, double want)
{
	struct ablock b = { 0 };
	struct audit_record r;
	sqlite3_stmt *st;

	plain_record(&r);
	r.started_at = t;
	ablock_add(&b, &r);
	st = only_row(&b);
	check_real_col(st, AUDIT_F_STARTED_AT, C_TEXT_STARTED, text, want);
	end_rows(st);
	if (b.first != want || b.last != want || ablock_time(t) != want) {
		unit_failed_checks++;
		fprintf(stderr, "  started_at %.17g: first %.17g, last %.17g, ablock_time %.17g,"
		        " expected %.17g\n", t, b.first, b.last, ablock_time(t), want);
	}
	ablock_free(&b);
}

TEST(started_at_is_a_real_rounded_to_the_microsecond)
{
	char *type;
	struct ablock b = { 0 };
	struct audit_record r;
	size_t len;
	const char *text;

	check_started(1765151481.1234567, "1765151481.123457", 1765151481.123457);
	check_started(1765151481.1234562, "1765151481.123456", 1765151481.123456);
	check_started(1765151480.9999996, "1765151481.000000", 1765151481.0);
	check_started(1765151481.0, "1765151481.000000", 1765151481.0);
	check_started(0.0, "0.000000", 0.0);
	check_started(-1.25, "-1.250000", -1.25);
	check_started(-0.0000004, "0.000000", 0.0);          /* rounds to 0: no "-0.000000" */
	check_started(-0.0, "0.000000", 0.0);
	check_started(4102444800.000001, "4102444800.000001", 4102444800.000001);   /* 2100 */
	/* a whole second is a REAL all the same, not an INTEGER */
	plain_record(&r);
	r.started_at = 1765151481.0;
	ablock_add(&b, &r);
	text = ablock_text(&b, &len);
	type = q1("SELECT typeof(json_extract(value, '$[1]')) FROM json_each(?1)", text, len);
	CHECK_STR(type, "real");
	free(type);
	ablock_free(&b);
}

TEST(a_started_at_that_is_no_time_is_stored_as_0_not_null)
{
	/* started_at is NOT NULL in the row table: NaN, the infinities and values whose
	 * microseconds do not fit an int64 are 0, and first/last say 0 too */
	check_started(NAN, "0.000000", 0.0);
	check_started(INFINITY, "0.000000", 0.0);
	check_started(-INFINITY, "0.000000", 0.0);
	check_started(1e300, "0.000000", 0.0);
	check_started(-1e300, "0.000000", 0.0);
	check_started(9.3e12, "0.000000", 0.0);
}

/* latency_ms v written as `text` (NULL: null) and read back as `want` */
static void check_latency(double v, const char *text, double want)
{
	struct ablock b = { 0 };
	struct audit_record r;
	sqlite3_stmt *st;

	plain_record(&r);
	r.latency_ms = v;
	r.ttfb_ms = v;
	ablock_add(&b, &r);
	st = only_row(&b);
	if (!text) {
		check_null_col(st, AUDIT_F_LATENCY_MS);
		check_null_col(st, AUDIT_F_TTFB_MS);
		CHECK_STR((const char *)sqlite3_column_text(st, C_TEXT_LATENCY), "null");
	} else {
		check_real_col(st, AUDIT_F_LATENCY_MS, C_TEXT_LATENCY, text, want);
		if (v < 0)              /* a ttfb below 0 is none */
			check_null_col(st, AUDIT_F_TTFB_MS);
		else
			check_real_col(st, AUDIT_F_TTFB_MS, C_TEXT_TTFB, text, want);
	}
	end_rows(st);
	ablock_free(&b);
}

TEST(latency_and_ttfb_have_three_decimals_and_no_negative_zero)
{
	check_latency(120.5, "120.500", 120.5);
	check_latency(0.0004, "0.000", 0.0);
	check_latency(-0.0004, "0.000", 0.0);
	check_latency(-0.0, "0.000", 0.0);
	check_latency(12.3456, "12.346", 12.346);
	check_latency(12.3454, "12.345", 12.345);
	check_latency(-12.3456, "-12.346", -12.346);
	check_latency(-0.0016, "-0.002", -0.002);
	check_latency(1999.9996, "2000.000", 2000.0);
	check_latency(86400000.0, "86400000.000", 86400000.0);
}

TEST(not_finite_or_huge_latency_and_ttfb_are_null)
{
	check_latency(NAN, NULL, 0);
	check_latency(-NAN, NULL, 0);
	check_latency(INFINITY, NULL, 0);
	check_latency(-INFINITY, NULL, 0);
	check_latency(1e300, NULL, 0);
	check_latency(-1e300, NULL, 0);
	check_latency(DBL_MAX, NULL, 0);
	check_latency(9.3e15, NULL, 0);        /* 9.3e18 units: past INT64_MAX */
}

TEST(an_empty_block_is_an_empty_array)
{
	struct ablock b = { 0 };
	struct audit_record r;
	const char *text;
	size_t len = 99;
	sqlite3_stmt *st;

	text = ablock_text(&b, &len);
	CHECK_STR(text, "[]");
	CHECK_INT(len, 2);
	CHECK_INT(b.n, 0);
	st = rows_of(text, len);
	end_rows(st);
	/* emptied after a row: the same */
	plain_record(&r);
	ablock_add(&b, &r);
	ablock_reset(&b);
	text = ablock_text(&b, &len);
	CHECK_STR(text, "[]");
	CHECK_INT(len, 2);
	CHECK_INT(b.n, 0);
	ablock_free(&b);
}

TEST(first_and_last_are_the_least_and_greatest_over_rows_out_of_order)
{
	static const double starts[] = { 1765151481.5, 1765151480.25, 1765151481.9999996,
	                                 1765151480.2500004, 1765151481.0 };
	struct ablock b = { 0 };
	struct audit_record r;
	sqlite3_stmt *st;
	const char *text;
	size_t len;
	int row = 0;
	double least = INFINITY, most = -INFINITY;

	plain_record(&r);
	for (size_t i = 0; i < sizeof(starts) / sizeof(starts[0]); i++) {
		r.started_at = starts[i];
		ablock_add(&b, &r);
	}
	/* the greatest is 1765151481.9999996 rounded: 1765151482, not the raw value */
	CHECK(b.first == 1765151480.25);
	CHECK(b.last == 1765151482.0);
	CHECK(b.last == ablock_time(1765151481.9999996));
	/* and they are the least and greatest of what SQLite reads back */
	text = ablock_text(&b, &len);
	st = rows_of(text, len);
	for (; sqlite3_step(st) == SQLITE_ROW; row++) {
		double t = sqlite3_column_double(st, AUDIT_F_STARTED_AT);

		least = t < least ? t : least;
		most = t > most ? t : most;
	}
	rows_done(st);
	CHECK_INT(row, 5);
	CHECK(least == b.first && most == b.last);
	ablock_free(&b);
}

/* Row i of the big block: a 1 KB body of its own, escapes included. */
static void big_body(char *out, size_t len, int i, char tag)
{
	for (size_t k = 0; k < len; k++)
		out[k] = (char)('a' + (int)((k + (size_t)i) % 26));
	out[0] = tag;
	out[len / 2] = '"';
	out[len / 3] = '\n';
	out[len / 4] = '\\';
	snprintf(out + 1, 12, "%010d", i);
	out[11] = '-';
	out[len] = '\0';
}

TEST(five_thousand_rows_with_1kb_bodies_grow_the_buffer_and_read_back)
{
	enum { N = 5000, BODY = 1024 };
	struct ablock b = { 0 };
	struct audit_record r;
	char id[32], req[BODY + 1], resp[BODY + 1];
	sqlite3_stmt *st;
	const char *text;
	size_t len, caps = 0, last_cap = 0;
	int row = 0, bad = 0;

	plain_record(&r);
	r.request_id = id;
	r.request_body = req;
	r.response_body = resp;
	for (int i = 0; i < N; i++) {
		snprintf(id, sizeof(id), "req-%d", i);
		big_body(req, BODY, i, '>');
		big_body(resp, BODY, i, '<');
		r.started_at = 1765151481.0 + i * 0.000001;
		r.bytes_in = i;
		r.cost_nano = i % 3 ? i : -1;
		ablock_add(&b, &r);
		if (b.cap != last_cap) {
			caps++;
			last_cap = b.cap;
		}
	}
	CHECK_INT(b.n, N);
	CHECK(caps > 5);                          /* it grew, several times */
	text = ablock_text(&b, &len);
	CHECK(len > (size_t)N * 2 * BODY);
	CHECK(strlen(text) == len && text[len - 1] == ']');
	/* the columns that differ by row only: SQLite parses a row once per json_extract, and
	 * 34 of them over 5,000 rows fill ASan's quarantine for nothing */
	if (sqlite3_prepare_v2(mem_db(), "SELECT json_array_length(j.value), "
	                       "json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'), "
	                       "json_extract(j.value, '$[14]'), json_extract(j.value, '$[27]'), "
	                       "json_extract(j.value, '$[32]'), json_extract(j.value, '$[33]') "
	                       "FROM json_each(?1) j ORDER BY j.key", -1, &st, NULL) != SQLITE_OK)
		abort();
	sqlite3_bind_text(st, 1, text, (int)len, SQLITE_STATIC);
	for (; sqlite3_step(st) == SQLITE_ROW; row++) {
		char want_id[32];
		double want_t = ablock_time(1765151481.0 + row * 0.000001);

		snprintf(want_id, sizeof(want_id), "req-%d", row);
		big_body(req, BODY, row, '>');
		big_body(resp, BODY, row, '<');
		/* one CHECK per row would be 5,000 lines when it breaks: count, then report */
		if (sqlite3_column_int(st, 0) != AUDIT_NFIELDS ||
		    sqlite3_column_type(st, 1) != SQLITE_TEXT ||
		    strcmp((const char *)sqlite3_column_text(st, 1), want_id) != 0 ||
		    sqlite3_column_type(st, 2) != SQLITE_FLOAT ||
		    sqlite3_column_double(st, 2) != want_t ||
		    sqlite3_column_type(st, 3) != SQLITE_INTEGER ||
		    sqlite3_column_int64(st, 3) != row ||
		    sqlite3_column_type(st, 4) != (row % 3 ? SQLITE_INTEGER : SQLITE_NULL) ||
		    sqlite3_column_int64(st, 4) != (row % 3 ? row : 0) ||
		    sqlite3_column_bytes(st, 5) != BODY ||
		    memcmp(sqlite3_column_text(st, 5), req, BODY) != 0 ||
		    sqlite3_column_bytes(st, 6) != BODY ||
		    memcmp(sqlite3_column_text(st, 6), resp, BODY) != 0) {
			if (bad++ < 3)
				fprintf(stderr, "  row %d does not read back as written\n", row);
		}
	}
	sqlite3_finalize(st);
	CHECK_INT(row, N);
	CHECK_INT(bad, 0);
	CHECK(b.first == 1765151481.0);
	CHECK(b.last == ablock_time(1765151481.0 + (N - 1) * 0.000001));

	/* reset keeps the buffer: the next block is written into the same memory */
	{
		char *buf = b.s;
		size_t cap = b.cap;

		ablock_reset(&b);
		CHECK_INT(b.n, 0);
		CHECK_INT(b.len, 1);
		r.request_id = "after-reset";
		r.request_body = r.response_body = NULL;
		r.started_at = 1765151999.5;
		ablock_add(&b, &r);
		text = ablock_text(&b, &len);
		CHECK(b.s == buf && b.cap == cap);
		CHECK(len < 400);
		CHECK_INT(b.n, 1);
		CHECK(b.first == 1765151999.5 && b.last == 1765151999.5);
		st = only_row(&b);
		check_text_col(st, AUDIT_F_REQUEST_ID, "after-reset", 11);
		check_null_col(st, AUDIT_F_REQUEST_BODY);
		end_rows(st);
	}
	ablock_free(&b);
}

TEST(the_closing_bracket_fits_at_every_length_around_a_growth)
{
	/* one row whose body makes the text end at each byte around the buffer's sizes
	 * (4096, then doubled): ablock_text's bracket and NUL must always have room (ASan
	 * sees a byte written past the buffer) */
	static char body[16400];
	static const size_t caps[] = { 4096, 8192, 16384 };
	struct ablock b = { 0 };
	struct audit_record r;
	size_t base;
	int bad = 0, tried = 0;

	plain_record(&r);
	r.response_body = "";
	ablock_add(&b, &r);
	base = b.len;                             /* the row with an empty body */
	ablock_free(&b);
	r.response_body = body;
	for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++) {
		for (size_t end = caps[c] - 4; end <= caps[c] + 2; end++) {
			size_t n = end - base, len;
			sqlite3_stmt *st;
			const char *text;

			memset(body, 'x', n);
			body[n] = '\0';
			/* a fresh block each time: its first buffer is the one at stake */
			ablock_add(&b, &r);
			CHECK_INT(b.len, end);
			text = ablock_text(&b, &len);
			st = rows_of(text, len);
			if (strlen(text) != len || text[len - 1] != ']' || len + 1 > b.cap ||
			    sqlite3_step(st) != SQLITE_ROW ||
			    (size_t)sqlite3_column_bytes(st, AUDIT_F_RESPONSE_BODY) != n ||
			    sqlite3_step(st) != SQLITE_DONE)
				bad++;
			rows_done(st);
			ablock_free(&b);
			tried++;
		}
	}
	CHECK_INT(tried, 21);
	CHECK_INT(bad, 0);
}

TEST(rows_added_after_ablock_text_extend_the_same_array)
{
	struct ablock b = { 0 };
	struct audit_record r;
	const char *text;
	size_t len;
	sqlite3_stmt *st;

	plain_record(&r);
	ablock_add(&b, &r);
	text = ablock_text(&b, &len);
	CHECK_INT(len, strlen(text));
	r.request_id = "req-2";
	r.started_at = 1765151480.0;
	ablock_add(&b, &r);
	text = ablock_text(&b, &len);
	st = rows_of(text, len);
	CHECK_INT(sqlite3_step(st), SQLITE_ROW);
	check_text_col(st, AUDIT_F_REQUEST_ID, "req-1", 5);
	CHECK_INT(sqlite3_step(st), SQLITE_ROW);
	check_text_col(st, AUDIT_F_REQUEST_ID, "req-2", 5);
	end_rows(st);
	CHECK(b.first == 1765151480.0 && b.last == 1765151481.25);
	ablock_free(&b);
}

RUN_TESTS()
