/* fastgate-cli metrics: the human view of the daemon's "metrics" result. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "commands.h"
#include "table.h"

#define SZ 96
#define PCTS_SZ (SZ * 4)

static json_int_t jint(const json_t *o, const char *key)
{
	return json_integer_value(json_object_get(o, key));
}

static const char *fmt_count(char *buf, json_int_t v)
{
	snprintf(buf, SZ, "%" JSON_INTEGER_FORMAT, v);
	return buf;
}

/* A latency in ms, or "-" when there was nothing to measure. */
static const char *fmt_ms(char *buf, const json_t *v)
{
	if (!json_is_number(v))
		return "-";
	snprintf(buf, SZ, "%.1f", json_number_value(v));
	return buf;
}

static const char *fmt_rate(char *buf, const json_t *v)
{
	if (!json_is_number(v))
		return "-";
	snprintf(buf, SZ, "%.2f%%", json_number_value(v) * 100.0);
	return buf;
}

enum when_style { WHEN_FULL, WHEN_HOUR, WHEN_DAY };

static const char *fmt_when(char *buf, const json_t *v, enum when_style st)
{
	time_t t = (time_t)floor(json_number_value(v));
	struct tm tm;
	size_t n = 0;

	if (!json_is_number(v) || !gmtime_r(&t, &tm))
		return "?";
	switch (st) {
	case WHEN_FULL: n = strftime(buf, SZ, "%Y-%m-%dT%H:%M:%SZ", &tm); break;
	case WHEN_HOUR: n = strftime(buf, SZ, "%Y-%m-%d %H:00", &tm); break;
	case WHEN_DAY: n = strftime(buf, SZ, "%Y-%m-%d", &tm); break;
	}
	return n ? buf : "?";
}

static void kv(struct cli_table *t, const char *label, const char *value)
{
	const char *row[2] = { label, value };

	cli_table_add(t, row);
}

/* "p50 12.3 ms, p95 45.6 ms, p99 78.9 ms" or "-" */
static const char *fmt_pcts(char *buf, const json_t *o)
{
	char a[SZ], b[SZ], c[SZ];

	if (!json_is_number(json_object_get(o, "p50")))
		return "-";
	snprintf(buf, PCTS_SZ, "p50 %s ms, p95 %s ms, p99 %s ms", fmt_ms(a, json_object_get(o, "p50")),
	         fmt_ms(b, json_object_get(o, "p95")), fmt_ms(c, json_object_get(o, "p99")));
	return buf;
}

static void print_summary(const json_t *r)
{
	struct cli_table *t = cli_table_new(2, NULL);
	const json_t *lat = json_object_get(r, "latency_ms"), *st = json_object_get(r, "status");
	const json_t *tok = json_object_get(r, "tokens");
	char b1[SZ], b2[SZ], win[SZ * 3], req[SZ * 2], err[SZ * 2], stat[SZ * 3], latb[PCTS_SZ + 3 * SZ];
	char ttfb[PCTS_SZ], tokb[SZ * 2], b3[SZ], b4[SZ], b5[SZ], b6[SZ], costb[SZ];
	double secs = json_number_value(json_object_get(r, "until")) -
	              json_number_value(json_object_get(r, "since"));

	snprintf(win, sizeof(win), fabs(secs / 3600.0 - round(secs / 3600.0)) < 0.01
	         ? "%s .. %s (%.0f h)" : "%s .. %s (%.1f h)",
	         fmt_when(b1, json_object_get(r, "since"), WHEN_FULL),
	         fmt_when(b2, json_object_get(r, "until"), WHEN_FULL), secs / 3600.0);
	snprintf(req, sizeof(req), "%" JSON_INTEGER_FORMAT "   (last hour: %" JSON_INTEGER_FORMAT
	         ")", jint(r, "requests"), jint(r, "requests_last_hour"));
	snprintf(err, sizeof(err), "%" JSON_INTEGER_FORMAT "   (status >= 500 or an upstream "
	         "error)", jint(r, "errors"));
	snprintf(stat, sizeof(stat), "2xx %" JSON_INTEGER_FORMAT ", 3xx %" JSON_INTEGER_FORMAT
	         ", 4xx %" JSON_INTEGER_FORMAT ", 5xx %" JSON_INTEGER_FORMAT, jint(st, "2xx"),
	         jint(st, "3xx"), jint(st, "4xx"), jint(st, "5xx"));
	if (json_is_number(json_object_get(lat, "avg")))
		snprintf(latb, sizeof(latb), "%s (avg %s, max %s)", fmt_pcts(ttfb, lat),
		         fmt_ms(b3, json_object_get(lat, "avg")), fmt_ms(b4, json_object_get(lat, "max")));
	else
		snprintf(latb, sizeof(latb), "-");
	snprintf(tokb, sizeof(tokb), "prompt %" JSON_INTEGER_FORMAT ", completion %"
	         JSON_INTEGER_FORMAT, jint(tok, "prompt"), jint(tok, "completion"));

	kv(t, "window:", win);
	kv(t, "requests:", req);
	kv(t, "errors:", err);
	if (json_is_integer(json_object_get(r, "refused"))) {
		char refb[64];

		snprintf(refb, sizeof(refb), "%" JSON_INTEGER_FORMAT " (answered by the gateway: "
		         "bad key, no route, a limit)", jint(r, "refused"));
		kv(t, "refused:", refb);
	}
	kv(t, "success rate:", fmt_rate(b5, json_object_get(r, "success_rate")));
	kv(t, "status:", stat);
	kv(t, "streams:", fmt_count(b6, jint(r, "streams")));
	kv(t, "latency:", latb);
	kv(t, "ttfb:", fmt_pcts(ttfb, json_object_get(r, "ttfb_ms")));
	kv(t, "tokens:", tokb);
	snprintf(costb, sizeof(costb), "%s USD", json_string_value(json_object_get(r, "cost_usd"))
	         ? json_string_value(json_object_get(r, "cost_usd")) : "-");
	kv(t, "cost:", costb);
	kv(t, "active keys:", fmt_count(b1, jint(r, "active_keys")));
	kv(t, "active routes:", fmt_count(b2, jint(r, "active_routes")));
	cli_table_print(t, stdout);
	if (json_is_false(json_object_get(r, "database")))
		printf("(no audit database yet: nothing has been recorded)\n");
}

static void print_series(const json_t *a, bool hourly)
{
	static const char *const head_h[] = { "HOUR (UTC)", "REQUESTS", "ERRORS", "P50 MS",
	                                      "P95 MS" };
	static const char *const head_d[] = { "DAY (UTC)", "REQUESTS", "ERRORS", "P50 MS",
	                                      "P95 MS" };
	struct cli_table *t = cli_table_new(5, hourly ? head_h : head_d);
	size_t i;
	json_t *row;

	json_array_foreach(a, i, row) {
		char b[5][SZ];
		const char *cells[5] = {
			fmt_when(b[0], json_object_get(row, "start"), hourly ? WHEN_HOUR : WHEN_DAY),
			fmt_count(b[1], jint(row, "requests")), fmt_count(b[2], jint(row, "errors")),
			fmt_ms(b[3], json_object_get(row, "p50_ms")),
			fmt_ms(b[4], json_object_get(row, "p95_ms")),
		};

		cli_table_add(t, cells);
	}
	printf("\n");
	cli_table_print(t, stdout);
}

/* The upstreams' live counters: not from the audit log, so not limited to the window. */
static void print_upstream_breakdown(const json_t *bd)
{
	static const char *const head[] = { "UPSTREAM", "STATE", "INFLIGHT", "EWMA MS",
	                                    "ATTEMPTS", "OUTCOMES", "URL" };
	struct cli_table *t = cli_table_new(7, head);
	size_t i;
	json_t *row;

	json_array_foreach(json_object_get(bd, "rows"), i, row) {
		const json_t *ewma = json_object_get(row, "latency_ewma_ms");
		const json_t *att = json_object_get(row, "attempts");
		/* 0 is the start, and also answers under the millisecond the daemon measures */
		bool answered = jint(att, "ok") + jint(att, "429") + jint(att, "5xx") > 0;
		char b[4][SZ], out[SZ * 4];
		const char *cells[7] = {
			json_string_value(json_object_get(row, "id")),
			json_string_value(json_object_get(row, "state")),
			fmt_count(b[0], jint(row, "inflight")),
			json_is_number(ewma) && (json_number_value(ewma) > 0 || answered)
			? fmt_ms(b[1], ewma) : "-",
			fmt_count(b[2], jint(row, "attempts_total")),
			cli_fmt_outcomes(out, sizeof(out), json_object_get(row, "attempts")),
			json_string_value(json_object_get(row, "url")),
		};

		cli_table_add(t, cells);
	}
	printf("\n");
	if (cli_table_rows(t) == 0) {
		cli_table_free(t);
		printf("No upstreams: no routes are loaded.\n");
		return;
	}
	cli_table_print(t, stdout);
	printf("(upstreams: live counters since fastgated started or the upstream was added, "
	       "not limited to the window)\n");
}

static void print_breakdown(const json_t *bd)
{
	const char *by = json_string_value(json_object_get(bd, "by"));
	const char *const head[] = { by && strcmp(by, "key") == 0 ? "KEY" :
	                             by && strcmp(by, "user") == 0 ? "USER" :
	                             by && strcmp(by, "model") == 0 ? "MODEL" : "ROUTE",
	                             "REQUESTS", "ERRORS", "SUCCESS", "P50 MS", "P95 MS", "P99 MS",
	                             "TOKENS IN/OUT", "COST USD" };
	struct cli_table *t = cli_table_new(9, head);
	const json_t *rows = json_object_get(bd, "rows");
	size_t i;
	json_t *row;

	json_array_foreach(rows, i, row) {
		const json_t *lat = json_object_get(row, "latency_ms"), *tok = json_object_get(row, "tokens");
		char b[8][SZ * 2];
		const char *label;

		if (by && strcmp(by, "user") == 0) {
			if (json_is_null(json_object_get(row, "user_id")))
				snprintf(b[0], sizeof(b[0]), "(no user)");
			else
				snprintf(b[0], sizeof(b[0]), "%" JSON_INTEGER_FORMAT, jint(row, "user_id"));
			label = b[0];
		} else if (by && strcmp(by, "key") == 0) {
			if (json_is_null(json_object_get(row, "key_id")))
				snprintf(b[0], sizeof(b[0]), "(no key)");
			else
				snprintf(b[0], sizeof(b[0]), "%" JSON_INTEGER_FORMAT " (%s)", jint(row, "key_id"),
				         json_string_value(json_object_get(row, "key_name"))
				         ? json_string_value(json_object_get(row, "key_name")) : "?");
			label = b[0];
		} else {
			label = json_string_value(json_object_get(row, by ? by : "route"));
			if (!label)
				label = by && strcmp(by, "route") == 0 ? "(no route)" : "(none)";
		}
		snprintf(b[7], sizeof(b[7]), "%" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT,
		         jint(tok, "prompt"), jint(tok, "completion"));
		{
			const char *cells[9] = {
				label, fmt_count(b[1], jint(row, "requests")),
				fmt_count(b[2], jint(row, "errors")),
				fmt_rate(b[3], json_object_get(row, "success_rate")),
				fmt_ms(b[4], json_object_get(lat, "p50")), fmt_ms(b[5], json_object_get(lat, "p95")),
				fmt_ms(b[6], json_object_get(lat, "p99")), b[7],
				json_string_value(json_object_get(row, "cost_usd")),
			};

			cli_table_add(t, cells);
		}
	}
	printf("\n");
	if (cli_table_rows(t) == 0) {
		cli_table_free(t);
		printf("No requests in this window to break down by %s.\n", by ? by : "route");
		return;
	}
	cli_table_print(t, stdout);
	if (json_is_true(json_object_get(bd, "truncated")))
		printf("(the busiest %zu of %" JSON_INTEGER_FORMAT " %ss)\n", json_array_size(rows),
		       jint(bd, "groups"), by ? by : "group");
}

void cli_print_metrics(const json_t *r)
{
	print_summary(r);
	if (json_is_array(json_object_get(r, "hourly")))
		print_series(json_object_get(r, "hourly"), true);
	if (json_is_array(json_object_get(r, "daily")))
		print_series(json_object_get(r, "daily"), false);
	if (json_is_object(json_object_get(r, "breakdown"))) {
		const json_t *bd = json_object_get(r, "breakdown");
		const char *by = json_string_value(json_object_get(bd, "by"));

		if (by && strcmp(by, "upstream") == 0)
			print_upstream_breakdown(bd);
		else
			print_breakdown(bd);
	}
}
