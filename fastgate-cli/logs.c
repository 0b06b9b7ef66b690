/* fastgate-cli logs tail / export / show: streamed replies and their output.
 *
 * Output goes to stdout through stdio. A reader that goes away (| head) makes a write
 * fail with EPIPE (SIGPIPE is ignored): we stop there and exit 0. SIGINT/SIGTERM during a
 * stream (Ctrl-C on tail -f) also end it with exit 0. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client.h"
#include "commands.h"
#include "table.h"

/* ---- times ---- */

static bool all_digits(const char *s, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

/* n digits at s as a number in [min, max]. */
static bool num(const char *s, size_t n, int min, int max, int *out)
{
	int v = 0;

	if (!all_digits(s, n))
		return false;
	for (size_t i = 0; i < n; i++)
		v = v * 10 + (s[i] - '0');
	if (v < min || v > max)
		return false;
	*out = v;
	return true;
}

static int days_in_month(int y, int m)
{
	static const int d[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };

	if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
		return 29;
	return d[m - 1];
}

/* YYYY-MM-DD[(T| )HH:MM[:SS[.fff]][Z|(+|-)HH[:]MM]] */
static bool parse_iso(const char *s, double *out)
{
	struct tm tm = { 0 };
	int y, mo, d, h = 0, mi = 0, sec = 0, oh = 0, om = 0, sign = 0;
	double frac = 0;
	size_t n = strlen(s), i = 10;
	time_t t;

	if (n < 10 || s[4] != '-' || s[7] != '-' || !num(s, 4, 1970, 9999, &y) ||
	    !num(s + 5, 2, 1, 12, &mo) || !num(s + 8, 2, 1, 31, &d) || d > days_in_month(y, mo))
		return false;
	if (i < n) {
		if ((s[i] != 'T' && s[i] != 't' && s[i] != ' ') || n < i + 6 || s[i + 3] != ':' ||
		    !num(s + i + 1, 2, 0, 23, &h) || !num(s + i + 4, 2, 0, 59, &mi))
			return false;
		i += 6;
		if (i < n && s[i] == ':') {
			if (n < i + 3 || !num(s + i + 1, 2, 0, 60, &sec))
				return false;
			i += 3;
			if (i < n && (s[i] == '.' || s[i] == ',')) {
				size_t j = i + 1;
				double scale = 0.1;

				if (j >= n || s[j] < '0' || s[j] > '9')
					return false;
				for (; j < n && s[j] >= '0' && s[j] <= '9'; j++, scale /= 10)
					frac += (s[j] - '0') * scale;
				i = j;
			}
		}
		if (i < n && (s[i] == 'Z' || s[i] == 'z')) {
			i++;
		} else if (i < n && (s[i] == '+' || s[i] == '-')) {
			sign = s[i] == '-' ? -1 : 1;
			if (n >= i + 6 && s[i + 3] == ':' && num(s + i + 1, 2, 0, 23, &oh) &&
			    num(s + i + 4, 2, 0, 59, &om))
				i += 6;
			else if (n >= i + 5 && num(s + i + 1, 2, 0, 23, &oh) && num(s + i + 3, 2, 0, 59, &om))
				i += 5;
			else if (n >= i + 3 && num(s + i + 1, 2, 0, 23, &oh))
				i += 3;
			else
				return false;
		}
		if (i != n)
			return false;
	}
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec;
	t = timegm(&tm);
	if (t == (time_t)-1)
		return false;
	*out = (double)t + frac - sign * (oh * 3600 + om * 60);
	return *out >= 0;
}

bool cli_parse_time(const char *s, double now, double *out)
{
	size_t n = strlen(s);
	char *end;
	double v, unit;

	if (strcmp(s, "now") == 0) {
		*out = now;
		return true;
	}
	if (all_digits(s, n)) {               /* unix seconds */
		if (n > 12)
			return false;
		*out = strtod(s, NULL);
		return true;
	}
	if (n >= 2 && s[0] >= '0' && s[0] <= '9' && strchr("smhdw", s[n - 1])) {
		errno = 0;
		v = strtod(s, &end);
		if (errno || end != s + n - 1 || !(v >= 0) || !isfinite(v))
			return false;
		switch (s[n - 1]) {
		case 's': unit = 1; break;
		case 'm': unit = 60; break;
		case 'h': unit = 3600; break;
		case 'd': unit = 86400; break;
		default: unit = 7 * 86400; break;
		}
		*out = now - v * unit;
		return *out >= 0;
	}
	return parse_iso(s, out);
}

/* ---- output ---- */

enum out_status { OUT_OK, OUT_CLOSED, OUT_ERROR };

/* After writing: has stdout failed? A closed reader is not an error. */
static enum out_status out_check(void)
{
	if (!ferror(stdout))
		return OUT_OK;
	if (errno == EPIPE || cli_interrupted)
		return OUT_CLOSED;
	cli_err("writing output: %s", strerror(errno));
	return OUT_ERROR;
}

static enum out_status out_flush(void)
{
	if (fflush(stdout) == 0)
		return OUT_OK;
	return out_check();
}

/* Copy s to out with control characters shown as '?', so a request path cannot drive
 * the terminal. */
static void put_clean(FILE *out, const char *s)
{
	for (; *s; s++)
		fputc(((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s, out);
}

/* " name=value", quoted when the value has a space or a quote. */
static void put_kv(FILE *out, const char *name, const char *value)
{
	bool quote = !*value || strpbrk(value, " \"=") != NULL;

	fprintf(out, " %s=", name);
	if (!quote) {
		put_clean(out, value);
		return;
	}
	fputc('"', out);
	for (const char *p = value; *p; p++) {
		if (*p == '"' || *p == '\\')
			fputc('\\', out);
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			fputc('?', out);
		else
			fputc(*p, out);
	}
	fputc('"', out);
}

static const char *jstr(const json_t *o, const char *key)
{
	return json_string_value(json_object_get(o, key));
}

static bool jnull(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);

	return !v || json_is_null(v);
}

/* 2026-11-23T12:00:01.123Z 200 POST /v1/chat/completions route=demo key=alice 12.3ms
 * ttfb=4.1ms stream chunks=6 model=demo-model tokens=7/3 id=... */
static void print_tail_line(FILE *out, const json_t *r)
{
	const char *s;
	char buf[64];

	put_clean(out, jstr(r, "started_at") ? jstr(r, "started_at") : "?");
	fprintf(out, " %" JSON_INTEGER_FORMAT " ", json_integer_value(json_object_get(r, "status")));
	put_clean(out, jstr(r, "method") ? jstr(r, "method") : "-");
	fputc(' ', out);
	put_clean(out, jstr(r, "path") ? jstr(r, "path") : "-");
	put_kv(out, "route", jstr(r, "route") ? jstr(r, "route") : "-");
	if ((s = jstr(r, "key_name")) != NULL) {
		put_kv(out, "key", s);
	} else if (!jnull(r, "key_id")) {
		snprintf(buf, sizeof(buf), "#%" JSON_INTEGER_FORMAT,
		         json_integer_value(json_object_get(r, "key_id")));
		put_kv(out, "key", buf);
	} else {
		put_kv(out, "key", "-");
	}
	fprintf(out, " %.1fms", json_number_value(json_object_get(r, "latency_ms")));
	if (!jnull(r, "ttfb_ms"))
		fprintf(out, " ttfb=%.1fms", json_number_value(json_object_get(r, "ttfb_ms")));
	if (json_is_true(json_object_get(r, "is_stream")))
		fprintf(out, " stream chunks=%" JSON_INTEGER_FORMAT,
		        json_integer_value(json_object_get(r, "chunks")));
	if ((s = jstr(r, "model")) != NULL)
		put_kv(out, "model", s);
	if (!jnull(r, "prompt_tokens") || !jnull(r, "completion_tokens")) {
		fputs(" tokens=", out);
		if (jnull(r, "prompt_tokens"))
			fputc('-', out);
		else
			fprintf(out, "%" JSON_INTEGER_FORMAT,
			        json_integer_value(json_object_get(r, "prompt_tokens")));
		fputc('/', out);
		if (jnull(r, "completion_tokens"))
			fputc('-', out);
		else
			fprintf(out, "%" JSON_INTEGER_FORMAT,
			        json_integer_value(json_object_get(r, "completion_tokens")));
	}
	if ((s = jstr(r, "error")) != NULL)
		put_kv(out, "error", s);
	if (json_integer_value(json_object_get(r, "retries")) > 0)
		fprintf(out, " retries=%" JSON_INTEGER_FORMAT,
		        json_integer_value(json_object_get(r, "retries")));
	put_kv(out, "id", jstr(r, "request_id") ? jstr(r, "request_id") : "?");
	fputc('\n', out);
}

/* ---- streams ---- */

/* Called for each event; returns OUT_OK to go on. */
typedef enum out_status (*event_fn)(const json_t *ev, const struct cli_ctx *ctx, void *arg);

/* Send the command, then hand every event to fn until the daemon ends the stream, the
 * user interrupts, or stdout closes. The exit status. */
static int stream(const struct cli_cmd *c, const json_t *args, const struct cli_ctx *ctx,
                  int timeout_s, event_fn fn, void *arg)
{
	struct cli_conn conn;
	struct ctl_reply rp = { 0 };
	enum out_status os = OUT_OK;
	int ret;

	ret = cli_connect(&conn, ctx->socket);
	if (ret != CLI_EXIT_OK)
		goto done;
	cli_set_timeout(&conn, timeout_s);
	cli_stop_on_signals(&conn);
	for (ret = cli_call(&conn, c->ctl, args, &rp); ret == CLI_EXIT_OK;
	     ret = cli_read_reply(&conn, &rp)) {
		switch (rp.kind) {
		case CTL_REPLY_EVENT:
			os = fn(rp.event, ctx, arg);
			break;
		case CTL_REPLY_END:
			os = out_flush();
			ret = os == OUT_ERROR ? CLI_EXIT_REFUSED : CLI_EXIT_OK;
			goto done;
		case CTL_REPLY_ERROR:
			out_flush();
			cli_print_error(c, rp.error, rp.message);
			ret = CLI_EXIT_REFUSED;
			goto done;
		case CTL_REPLY_RESULT:
			cli_err("unexpected reply from fastgated to '%s': a result, not a stream",
			        c->ctl);
			ret = CLI_EXIT_UNREACHABLE;
			goto done;
		}
		ctl_reply_clear(&rp);
		if (os != OUT_OK || cli_interrupted)
			break;
	}
	if (ret == CLI_INTERRUPTED || cli_interrupted || os == OUT_CLOSED) {
		out_flush();
		ret = CLI_EXIT_OK;
	} else if (os == OUT_ERROR) {
		ret = CLI_EXIT_REFUSED;
	}
done:
	ctl_reply_clear(&rp);
	cli_close(&conn);
	return ret;
}

static void report_dropped(const json_t *ev)
{
	json_int_t n = json_integer_value(json_object_get(ev, "dropped"));

	fflush(stdout);
	cli_err("%" JSON_INTEGER_FORMAT " request%s not shown: this reader fell behind and "
	        "fastgated dropped them (the audit log has them all)", n, n == 1 ? "" : "s");
}

static enum out_status tail_event(const json_t *ev, const struct cli_ctx *ctx, void *arg)
{
	bool follow = *(const bool *)arg;

	if (json_object_get(ev, "dropped") && !json_object_get(ev, "request_id")) {
		report_dropped(ev);
		return OUT_OK;
	}
	if (ctx->json) {
		json_dumpf(ev, stdout, JSON_COMPACT | JSON_REAL_PRECISION(15));
		fputc('\n', stdout);
	} else {
		print_tail_line(stdout, ev);
	}
	/* Following: each line as it happens, even into a pipe. */
	if (follow)
		fflush(stdout);
	return out_check();
}

int cli_run_logs_tail(const struct cli_cmd *c, const json_t *args, const struct cli_ctx *ctx)
{
	bool follow = json_is_true(json_object_get(args, "follow"));

	/* A quiet gateway may say nothing for hours: a follower waits for ever. */
	return stream(c, args, ctx, follow ? 0 : 60, tail_event, &follow);
}

static enum out_status export_event(const json_t *ev, const struct cli_ctx *ctx, void *arg)
{
	const char *line;

	(void)ctx;
	if (*(const bool *)arg) {
		line = json_string_value(json_object_get(ev, "line"));
		if (!line) {
			cli_err("unexpected event from fastgated in a CSV export");
			return OUT_ERROR;
		}
		fputs(line, stdout);
		fputs("\r\n", stdout);        /* RFC 4180 line ends */
	} else {
		json_dumpf(ev, stdout, JSON_COMPACT | JSON_REAL_PRECISION(15));
		fputc('\n', stdout);
	}
	return out_check();
}

int cli_run_logs_export(const struct cli_cmd *c, const json_t *args, const struct cli_ctx *ctx)
{
	const char *format = json_string_value(json_object_get(args, "format"));
	bool csv = format && strcmp(format, "csv") == 0;

	return stream(c, args, ctx, 120, export_event, &csv);
}

/* ---- logs show ---- */

static void kv(struct cli_table *t, const char *label, const char *value)
{
	const char *row[2] = { label, value };

	cli_table_add(t, row);
}

static const char *num_or(char *buf, size_t size, const json_t *r, const char *key,
                          const char *none)
{
	const json_t *v = json_object_get(r, key);

	if (json_is_integer(v))
		snprintf(buf, size, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
	else if (json_is_real(v))
		snprintf(buf, size, "%.3f ms", json_real_value(v));
	else
		return none;
	return buf;
}

void cli_print_log_record(const json_t *r)
{
	struct cli_table *t = cli_table_new(2, NULL);
	char b[13][64], key[256], cost[96];
	const char *name = jstr(r, "key_name");

	snprintf(cost, sizeof(cost), "%s USD", jstr(r, "cost_usd") ? jstr(r, "cost_usd") : "");

	if (jnull(r, "key_id"))
		snprintf(key, sizeof(key), "none");
	else
		snprintf(key, sizeof(key), "%" JSON_INTEGER_FORMAT "%s%s%s",
		         json_integer_value(json_object_get(r, "key_id")), name ? " (" : "",
		         name ? name : "", name ? ")" : "");
	kv(t, "request id:", jstr(r, "request_id"));
	kv(t, "started:", jstr(r, "started_at"));
	kv(t, "key:", key);
	kv(t, "client:", jstr(r, "client_ip"));
	kv(t, "method:", jstr(r, "method"));
	kv(t, "path:", jstr(r, "path"));
	kv(t, "route:", jstr(r, "route") ? jstr(r, "route") : "none");
	kv(t, "upstream:", jstr(r, "upstream") ? jstr(r, "upstream") : "none");
	kv(t, "status:", num_or(b[0], sizeof(b[0]), r, "status", "-"));
	kv(t, "latency:", num_or(b[1], sizeof(b[1]), r, "latency_ms", "-"));
	kv(t, "ttfb:", num_or(b[2], sizeof(b[2]), r, "ttfb_ms", "none"));
	kv(t, "stream:", json_is_true(json_object_get(r, "is_stream")) ? "yes" : "no");
	kv(t, "chunks:", num_or(b[3], sizeof(b[3]), r, "chunks", "-"));
	kv(t, "bytes in:", num_or(b[4], sizeof(b[4]), r, "bytes_in", "-"));
	kv(t, "bytes out:", num_or(b[5], sizeof(b[5]), r, "bytes_out", "-"));
	kv(t, "model:", jstr(r, "model") ? jstr(r, "model") : "none");
	kv(t, "prompt tokens:", num_or(b[6], sizeof(b[6]), r, "prompt_tokens", "unknown"));
	kv(t, "cached tokens:", num_or(b[9], sizeof(b[9]), r, "cached_tokens", "unknown"));
	kv(t, "cache write tokens:",
	   num_or(b[10], sizeof(b[10]), r, "cache_write_tokens", "unknown"));
	kv(t, "completion tokens:", num_or(b[7], sizeof(b[7]), r, "completion_tokens", "unknown"));
	kv(t, "reasoning tokens:", num_or(b[11], sizeof(b[11]), r, "reasoning_tokens", "unknown"));
	kv(t, "error:", jstr(r, "error") ? jstr(r, "error") : "none");
	kv(t, "retries:", num_or(b[8], sizeof(b[8]), r, "retries", "0"));
	kv(t, "attempts:", jstr(r, "attempts") ? jstr(r, "attempts") : "none");
	kv(t, "upstream request id:", jstr(r, "upstream_request_id") ? jstr(r, "upstream_request_id") : "-");
	kv(t, "user:", num_or(b[12], sizeof(b[12]), r, "user_id", "none"));
	/* an exact decimal string from the daemon, never a float here */
	kv(t, "cost:", jstr(r, "cost_usd") ? cost : json_is_true(json_object_get(r, "unpriced"))
	   ? "none (unpriced model)" : "none");
	kv(t, "price version:", jstr(r, "price_version") ? jstr(r, "price_version") : "-");
	kv(t, "billed:", json_is_true(json_object_get(r, "billed")) ? "yes" : "no");
	kv(t, "tokens estimated:", json_is_true(json_object_get(r, "estimated"))
	   ? "yes (by the gateway, not the upstream)" : "no");
	cli_table_print(t, stdout);
}
