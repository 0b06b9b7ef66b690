/* Control protocol framing: request decoding, reply encoding round trips, line splitting. */
#include <stdlib.h>
#include <string.h>

#include "ctlproto.h"
#include "unit.h"

static int parse(const char *line, struct ctl_request *rq, struct ctl_error *err)
{
	return ctl_parse_request(line, strlen(line), rq, err);
}

/* ---- request parsing ---- */

TEST(request_valid_with_args)
{
	struct ctl_request rq;
	struct ctl_error err;

	CHECK_INT(parse("{\"id\":7,\"cmd\":\"key.create\",\"args\":{\"name\":\"ci\"}}", &rq, &err), 0);
	CHECK(rq.has_id);
	CHECK_INT(rq.id, 7);
	CHECK_STR(rq.cmd, "key.create");
	CHECK(json_is_object(rq.args));
	CHECK_STR(json_string_value(json_object_get(rq.args, "name")), "ci");
	ctl_request_clear(&rq);
}

TEST(request_without_args_gets_empty_object)
{
	struct ctl_request rq;
	struct ctl_error err;

	CHECK_INT(parse("{\"id\":1,\"cmd\":\"status\"}", &rq, &err), 0);
	CHECK(json_is_object(rq.args));
	CHECK_INT(json_object_size(rq.args), 0);
	ctl_request_clear(&rq);
	CHECK_INT(parse("{\"id\":1,\"cmd\":\"status\",\"args\":null}", &rq, &err), 0);
	CHECK(json_is_object(rq.args));
	ctl_request_clear(&rq);
}

TEST(request_missing_id_is_bad_request_without_id)
{
	struct ctl_request rq;
	struct ctl_error err;

	CHECK_INT(parse("{\"cmd\":\"status\"}", &rq, &err), -1);
	CHECK_STR(err.code, CTL_E_BAD_REQUEST);
	CHECK(!rq.has_id);
	CHECK(strstr(err.message, "id") != NULL);
	ctl_request_clear(&rq);
}

TEST(request_non_integer_id_is_bad_request)
{
	struct ctl_request rq;
	struct ctl_error err;

	CHECK_INT(parse("{\"id\":\"7\",\"cmd\":\"status\"}", &rq, &err), -1);
	CHECK_STR(err.code, CTL_E_BAD_REQUEST);
	CHECK(!rq.has_id);
	ctl_request_clear(&rq);
	CHECK_INT(parse("{\"id\":1.5,\"cmd\":\"status\"}", &rq, &err), -1);
	CHECK_STR(err.code, CTL_E_BAD_REQUEST);
	ctl_request_clear(&rq);
}

TEST(request_non_object_is_bad_request)
{
	struct ctl_request rq;
	struct ctl_error err;
	const char *bad[] = { "[1,2]", "\"status\"", "42", "null", NULL };

	for (int i = 0; bad[i]; i++) {
		CHECK_INT(parse(bad[i], &rq, &err), -1);
		CHECK_STR(err.code, CTL_E_BAD_REQUEST);
		CHECK(!rq.has_id);
		ctl_request_clear(&rq);
	}
}

TEST(request_malformed_json_is_bad_request)
{
	struct ctl_request rq;
	struct ctl_error err;

	CHECK_INT(parse("{\"id\":1,\"cmd\":", &rq, &err), -1);
	CHECK_STR(err.code, CTL_E_BAD_REQUEST);
	CHECK(strstr(err.message, "malformed JSON") != NULL);
	ctl_request_clear(&rq);
	/* Two objects on one line are not one request. */
	CHECK_INT(parse("{\"id\":1,\"cmd\":\"a\"}{\"id\":2,\"cmd\":\"b\"}", &rq, &err), -1);
	CHECK_STR(err.code, CTL_E_BAD_REQUEST);
	ctl_request_clear(&rq);
}

TEST(request_bad_cmd_type_keeps_id_for_the_reply)
{
	struct ctl_request rq;
	struct ctl_error err;

	CHECK_INT(parse("{\"id\":3,\"cmd\":5}", &rq, &err), -1);
	CHECK_STR(err.code, CTL_E_BAD_REQUEST);
	CHECK(rq.has_id);
	CHECK_INT(rq.id, 3);
	ctl_request_clear(&rq);
	CHECK_INT(parse("{\"id\":3,\"cmd\":\"\"}", &rq, &err), -1);
	CHECK_STR(err.code, CTL_E_BAD_REQUEST);
	ctl_request_clear(&rq);
	CHECK_INT(parse("{\"id\":3}", &rq, &err), -1);
	CHECK_STR(err.code, CTL_E_BAD_REQUEST);
	CHECK(strstr(err.message, "cmd") != NULL);
	ctl_request_clear(&rq);
}

TEST(request_args_must_be_an_object)
{
	struct ctl_request rq;
	struct ctl_error err;

	CHECK_INT(parse("{\"id\":4,\"cmd\":\"key.show\",\"args\":[1]}", &rq, &err), -1);
	CHECK_STR(err.code, CTL_E_BAD_REQUEST);
	CHECK_INT(rq.id, 4);
	ctl_request_clear(&rq);
}

TEST(request_duplicate_keys_rejected)
{
	struct ctl_request rq;
	struct ctl_error err;

	CHECK_INT(parse("{\"id\":1,\"cmd\":\"status\",\"cmd\":\"reload\"}", &rq, &err), -1);
	CHECK_STR(err.code, CTL_E_BAD_REQUEST);
	ctl_request_clear(&rq);
}

TEST(request_oversized_line_is_line_too_long)
{
	struct ctl_request rq;
	struct ctl_error err;
	size_t n = CTL_LINE_MAX + 100;
	char *big = malloc(n + 1);
	int len;

	len = snprintf(big, n + 1, "{\"id\":1,\"cmd\":\"key.create\",\"args\":{\"name\":\"");
	memset(big + len, 'a', n - (size_t)len - 3);
	memcpy(big + n - 3, "\"}}", 4);
	CHECK_INT(ctl_parse_request(big, n, &rq, &err), -1);
	CHECK_STR(err.code, CTL_E_LINE_TOO_LONG);
	ctl_request_clear(&rq);
	free(big);
}

/* ---- encoding round trips ---- */

static int reparse(char *line, struct ctl_reply *rp)
{
	struct ctl_error err;
	size_t n;
	int r;

	if (!line)
		return -2;
	n = strlen(line);
	/* Exactly one line: a single '\n', at the end. */
	if (n == 0 || line[n - 1] != '\n' || memchr(line, '\n', n - 1) != NULL) {
		free(line);
		return -3;
	}
	r = ctl_parse_reply(line, n - 1, rp, &err);
	free(line);
	return r;
}

TEST(result_round_trip)
{
	struct ctl_reply rp;
	json_t *res = json_pack("{s:s, s:I}", "name", "multi\nline \"quoted\"", "n", (json_int_t)42);

	CHECK_INT(reparse(ctl_encode_result(true, 9, res), &rp), 0);
	CHECK_INT(rp.kind, CTL_REPLY_RESULT);
	CHECK(rp.has_id);
	CHECK_INT(rp.id, 9);
	CHECK(json_equal(rp.result, res));
	ctl_reply_clear(&rp);
	json_decref(res);
}

TEST(result_null_round_trip)
{
	struct ctl_reply rp;

	CHECK_INT(reparse(ctl_encode_result(true, 1, NULL), &rp), 0);
	CHECK_INT(rp.kind, CTL_REPLY_RESULT);
	CHECK(json_is_null(rp.result));
	ctl_reply_clear(&rp);
}

TEST(error_round_trip_with_extra_and_null_id)
{
	struct ctl_reply rp;
	json_t *extra = json_pack("{s:[s,s], s:s}", "errors", "a.yaml:3: bad", "b.yaml:9: worse",
	                          "code", "must not win");

	CHECK_INT(reparse(ctl_encode_error(false, 0, CTL_E_RELOAD_FAILED,
	                                   "a.yaml:3: bad\nb.yaml:9: worse", extra), &rp), 0);
	CHECK_INT(rp.kind, CTL_REPLY_ERROR);
	CHECK(!rp.has_id);
	CHECK(json_is_null(json_object_get(rp.root, "id")));
	CHECK_STR(rp.code, CTL_E_RELOAD_FAILED);
	CHECK_STR(rp.message, "a.yaml:3: bad\nb.yaml:9: worse");
	CHECK_INT(json_array_size(json_object_get(rp.error, "errors")), 2);
	CHECK(json_is_false(json_object_get(rp.root, "ok")));
	ctl_reply_clear(&rp);
	json_decref(extra);
}

TEST(event_and_end_round_trip)
{
	struct ctl_reply rp;
	json_t *ev = json_pack("{s:i}", "status", 200);

	CHECK_INT(reparse(ctl_encode_event(5, ev), &rp), 0);
	CHECK_INT(rp.kind, CTL_REPLY_EVENT);
	CHECK_INT(rp.id, 5);
	CHECK(json_equal(rp.event, ev));
	ctl_reply_clear(&rp);
	CHECK_INT(reparse(ctl_encode_end(5), &rp), 0);
	CHECK_INT(rp.kind, CTL_REPLY_END);
	CHECK_INT(rp.id, 5);
	ctl_reply_clear(&rp);
	json_decref(ev);
}

TEST(request_encode_then_parse)
{
	struct ctl_request rq;
	struct ctl_error err;
	json_t *args = json_pack("{s:[s,s], s:i}", "routes", "a", "b", "rpm", 60);
	char *line = ctl_encode_request(12, "key.create", args);

	CHECK(line != NULL);
	CHECK(line[strlen(line) - 1] == '\n');
	CHECK_INT(ctl_parse_request(line, strlen(line) - 1, &rq, &err), 0);
	CHECK_INT(rq.id, 12);
	CHECK_STR(rq.cmd, "key.create");
	CHECK(json_equal(rq.args, args));
	ctl_request_clear(&rq);
	free(line);
	json_decref(args);
}

TEST(greeting_round_trip)
{
	struct ctl_error err;
	char version[32];
	int proto = 0;
	char *line = ctl_encode_greeting("0.1.0");

	CHECK_STR(line, "{\"fastgate\":\"0.1.0\",\"protocol\":1}\n");
	CHECK_INT(ctl_parse_greeting(line, strlen(line) - 1, version, sizeof(version), &proto, &err), 0);
	CHECK_STR(version, "0.1.0");
	CHECK_INT(proto, CTL_PROTOCOL_VERSION);
	free(line);
	CHECK_INT(ctl_parse_greeting("{\"id\":null,\"ok\":false}", 22, version, sizeof(version),
	                             &proto, &err), -1);
}

TEST(reply_without_ok_or_event_rejected)
{
	struct ctl_reply rp;
	struct ctl_error err;

	CHECK_INT(ctl_parse_reply("{\"id\":1}", 8, &rp, &err), -1);
	CHECK_STR(err.code, CTL_E_BAD_REQUEST);
	CHECK(rp.root == NULL);
	CHECK_INT(ctl_parse_reply("{\"id\":1,\"ok\":false}", 19, &rp, &err), 0);
	CHECK_STR(rp.code, CTL_E_INTERNAL);   /* a message is always there to print */
	CHECK(rp.message != NULL);
	ctl_reply_clear(&rp);
}

/* ---- line splitting ---- */

TEST(lines_split_across_partial_reads)
{
	struct ctl_linebuf lb;
	const char *stream = "{\"id\":1}\n{\"id\":2,\"cmd\":\"x\"}\r\n\n{\"id\":3}\n";
	char *line;
	size_t len;
	const char *want[] = { "{\"id\":1}", "{\"id\":2,\"cmd\":\"x\"}", "", "{\"id\":3}" };
	size_t got = 0;

	ctl_linebuf_init(&lb, 64);
	/* One byte at a time: every split point, including between '\r' and '\n'. */
	for (size_t i = 0; stream[i]; i++) {
		CHECK_INT(ctl_linebuf_append(&lb, stream + i, 1), 0);
		while (ctl_linebuf_next(&lb, &line, &len) == CTL_LINE_OK) {
			CHECK(got < 4);
			if (got < 4) {
				CHECK_STR(line, want[got]);
				CHECK_INT(len, strlen(want[got]));
			}
			got++;
		}
	}
	CHECK_INT(got, 4);
	CHECK_INT(ctl_linebuf_pending(&lb), 0);
	ctl_linebuf_free(&lb);
}

TEST(many_lines_in_one_read)
{
	struct ctl_linebuf lb;
	char *line;
	size_t len;

	ctl_linebuf_init(&lb, 64);
	CHECK_INT(ctl_linebuf_append(&lb, "a\nbb\nccc", 8), 0);
	CHECK_INT(ctl_linebuf_next(&lb, &line, &len), CTL_LINE_OK);
	CHECK_STR(line, "a");
	CHECK_INT(ctl_linebuf_next(&lb, &line, &len), CTL_LINE_OK);
	CHECK_STR(line, "bb");
	CHECK_INT(ctl_linebuf_next(&lb, &line, &len), CTL_LINE_NONE);
	CHECK_INT(ctl_linebuf_pending(&lb), 3);
	CHECK_INT(ctl_linebuf_append(&lb, "c\n", 2), 0);
	CHECK_INT(ctl_linebuf_next(&lb, &line, &len), CTL_LINE_OK);
	CHECK_STR(line, "cccc");
	ctl_linebuf_free(&lb);
}

TEST(unterminated_tail_taken_at_eof)
{
	struct ctl_linebuf lb;
	char *line;
	size_t len;

	ctl_linebuf_init(&lb, 64);
	CHECK_INT(ctl_linebuf_append(&lb, "x\n{\"id\":1}", 10), 0);
	CHECK_INT(ctl_linebuf_take_rest(&lb, &line, &len), CTL_LINE_OK);
	CHECK_STR(line, "x");
	CHECK_INT(ctl_linebuf_take_rest(&lb, &line, &len), CTL_LINE_OK);
	CHECK_STR(line, "{\"id\":1}");
	CHECK_INT(len, 8);
	CHECK_INT(ctl_linebuf_take_rest(&lb, &line, &len), CTL_LINE_NONE);
	ctl_linebuf_free(&lb);
}

TEST(line_at_limit_accepted_one_over_rejected)
{
	struct ctl_linebuf lb;
	char buf[20];
	char *line;
	size_t len;

	memset(buf, 'a', sizeof(buf));
	ctl_linebuf_init(&lb, 8);
	CHECK_INT(ctl_linebuf_append(&lb, buf, 8), 0);
	CHECK_INT(ctl_linebuf_next(&lb, &line, &len), CTL_LINE_NONE);
	CHECK_INT(ctl_linebuf_append(&lb, "\r", 1), 0);       /* may still be "\r\n" */
	CHECK_INT(ctl_linebuf_next(&lb, &line, &len), CTL_LINE_NONE);
	CHECK_INT(ctl_linebuf_append(&lb, "\n", 1), 0);
	CHECK_INT(ctl_linebuf_next(&lb, &line, &len), CTL_LINE_OK);
	CHECK_INT(len, 8);
	ctl_linebuf_free(&lb);

	/* Over the limit without a newline: reported before the rest arrives. */
	ctl_linebuf_init(&lb, 8);
	CHECK_INT(ctl_linebuf_append(&lb, buf, 9), 0);
	CHECK_INT(ctl_linebuf_next(&lb, &line, &len), CTL_LINE_TOO_LONG);
	ctl_linebuf_free(&lb);

	/* Over the limit with its newline in the same read. */
	ctl_linebuf_init(&lb, 8);
	CHECK_INT(ctl_linebuf_append(&lb, "ok\n", 3), 0);
	CHECK_INT(ctl_linebuf_append(&lb, buf, 9), 0);
	CHECK_INT(ctl_linebuf_append(&lb, "\n", 1), 0);
	CHECK_INT(ctl_linebuf_next(&lb, &line, &len), CTL_LINE_OK);
	CHECK_STR(line, "ok");
	CHECK_INT(ctl_linebuf_next(&lb, &line, &len), CTL_LINE_TOO_LONG);
	ctl_linebuf_free(&lb);
}

TEST(buffer_reuses_space_after_lines_are_taken)
{
	struct ctl_linebuf lb;
	char *line;
	size_t len, cap;

	ctl_linebuf_init(&lb, 64);
	CHECK_INT(ctl_linebuf_append(&lb, "first line\n", 11), 0);
	cap = lb.cap;
	for (int i = 0; i < 10000; i++) {
		CHECK_INT(ctl_linebuf_next(&lb, &line, &len), CTL_LINE_OK);
		CHECK_INT(ctl_linebuf_append(&lb, "first line\n", 11), 0);
	}
	CHECK_INT(lb.cap, cap);
	ctl_linebuf_free(&lb);
}

RUN_TESTS()
