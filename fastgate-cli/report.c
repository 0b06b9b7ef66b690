/* fastgate-cli report: spend by user, key or model, as a table, JSON (--json) or CSV
 * (--csv, written by the daemon as RFC 4180 text: the same quoting as logs export). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "client.h"
#include "commands.h"
#include "table.h"

#define SZ 96

static json_int_t jint(const json_t *o, const char *key)
{
	return json_integer_value(json_object_get(o, key));
}

static const char *fmt_count(char *buf, json_int_t v)
{
	snprintf(buf, SZ, "%" JSON_INTEGER_FORMAT, v);
	return buf;
}

static const char *fmt_when(char *buf, const json_t *v)
{
	time_t t = (time_t)floor(json_number_value(v));
	struct tm tm;

	if (!json_is_number(v) || !gmtime_r(&t, &tm) ||
	    !strftime(buf, SZ, "%Y-%m-%dT%H:%M:%SZ", &tm))
		return "?";
	return buf;
}

/* One row of the table: the group's label, then its numbers. */
static void add_row(struct cli_table *t, const char *label, const json_t *row)
{
	char b[7][SZ];
	const char *cost = json_string_value(json_object_get(row, "cost_usd"));
	const char *cells[9] = {
		label, fmt_count(b[0], jint(row, "requests")),
		fmt_count(b[1], jint(row, "prompt_tokens")),
		fmt_count(b[2], jint(row, "completion_tokens")),
		fmt_count(b[3], jint(row, "cached_tokens")), cost ? cost : "-",
		fmt_count(b[4], jint(row, "unpriced")), fmt_count(b[5], jint(row, "estimated")),
		fmt_count(b[6], jint(row, "billed")),
	};

	cli_table_add(t, cells);
}

void cli_print_report(const json_t *r)
{
	const char *by = json_string_value(json_object_get(r, "by"));
	bool key = by && strcmp(by, "key") == 0, model = by && strcmp(by, "model") == 0;
	const char *const head[] = { key ? "KEY" : model ? "MODEL" : "USER", "REQUESTS",
	                             "PROMPT", "COMPLETION", "CACHED", "COST USD", "UNPRICED",
	                             "ESTIMATED", "BILLED" };
	struct cli_table *t = cli_table_new(9, head);
	const json_t *rows = json_object_get(r, "rows");
	char b1[SZ], b2[SZ];
	size_t i;
	json_t *row;

	printf("window: %s .. %s (by %s)\n", fmt_when(b1, json_object_get(r, "since")),
	       fmt_when(b2, json_object_get(r, "until")), by ? by : "user");
	json_array_foreach(rows, i, row) {
		char label[SZ * 3];
		const json_t *id = json_object_get(row, key ? "key_id" : "user_id");
		const char *name = json_string_value(json_object_get(row, key ? "key_name"
		                                                                : "user_name"));

		if (model)
			snprintf(label, sizeof(label), "%s",
			         json_string_value(json_object_get(row, "model"))
			         ? json_string_value(json_object_get(row, "model")) : "(no model)");
		else if (json_is_null(id))
			snprintf(label, sizeof(label), key ? "(no key)" : "(no user)");
		else if (key)
			snprintf(label, sizeof(label), "%" JSON_INTEGER_FORMAT " (%s)",
			         json_integer_value(id), name ? name : "?");
		else if (name)
			snprintf(label, sizeof(label), "%" JSON_INTEGER_FORMAT " (%s)",
			         json_integer_value(id), name);
		else
			snprintf(label, sizeof(label), "%" JSON_INTEGER_FORMAT, json_integer_value(id));
		add_row(t, label, row);
	}
	if (json_is_object(json_object_get(r, "total")))
		add_row(t, "TOTAL", json_object_get(r, "total"));
	cli_table_print(t, stdout);
	if (json_is_true(json_object_get(r, "truncated")))
		printf("(the %zu biggest of %" JSON_INTEGER_FORMAT " groups; the total counts all)\n",
		       json_array_size(rows), jint(r, "groups"));
	if (json_is_false(json_object_get(r, "database")))
		printf("(no audit database yet: nothing has been recorded)\n");
}

int cli_run_report(const struct cli_cmd *c, const json_t *args, const struct cli_ctx *ctx)
{
	json_t *a = json_deep_copy(args);
	bool csv = json_is_true(json_object_get(args, "csv"));
	struct cli_conn conn;
	struct ctl_reply rp = { 0 };
	int ret;

	if (!a)
		abort();
	/* the daemon writes the CSV, so that it quotes as logs export does */
	json_object_del(a, "csv");
	if (csv)
		json_object_set_new(a, "format", json_string("csv"));
	ret = cli_connect(&conn, ctx->socket);
	if (ret != CLI_EXIT_OK)
		goto done;
	cli_set_timeout(&conn, c->timeout_s);
	ret = cli_call(&conn, c->ctl, a, &rp);
	if (ret != CLI_EXIT_OK)
		goto done;
	switch (rp.kind) {
	case CTL_REPLY_RESULT:
		if (ctx->json) {
			json_dumpf(rp.result, stdout, JSON_COMPACT | JSON_ENCODE_ANY |
			           JSON_REAL_PRECISION(15));
			fputc('\n', stdout);
		} else if (csv) {
			const char *text = json_string_value(json_object_get(rp.result, "csv"));

			if (!text) {
				cli_err("unexpected reply from fastgated to 'report': no CSV");
				ret = CLI_EXIT_UNREACHABLE;
				goto done;
			}
			fputs(text, stdout);
			if (json_is_true(json_object_get(rp.result, "truncated")))
				cli_err("only the %d biggest of %" JSON_INTEGER_FORMAT " groups are listed; "
				        "the total counts all (narrow the window)", 100000,
				        jint(rp.result, "groups"));
		} else {
			cli_print_report(rp.result);
		}
		ret = CLI_EXIT_OK;
		break;
	case CTL_REPLY_ERROR:
		cli_print_error(c, rp.error, rp.message);
		ret = CLI_EXIT_REFUSED;
		break;
	default:
		cli_err("unexpected streamed reply from fastgated to '%s'", c->ctl);
		ret = CLI_EXIT_UNREACHABLE;
	}
done:
	ctl_reply_clear(&rp);
	cli_close(&conn);
	json_decref(a);
	if (ret == CLI_EXIT_OK && fflush(stdout) != 0 && errno != EPIPE) {
		cli_err("writing output: %s", strerror(errno));
		ret = CLI_EXIT_REFUSED;
	}
	return ret;
}
