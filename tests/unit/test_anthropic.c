/* provider: anthropic: the request, answer and stream translation (fastgated/anthropic.c),
 * checked field by field against transcripts in the shapes of Anthropic's published API
 * reference (tests/golden/anthropic/). Every stream is translated whole and in 1-byte and
 * 7-byte pieces; the three outputs must be byte-identical. */
#include <stdbool.h>
#include <stdlib.h>

#include <jansson.h>

#include "anthropic.h"
#include "unit.h"

#define GOLDEN "tests/golden/anthropic/"
#define CREATED 1700000000L

static char *read_file(const char *name, size_t *len)
{
	char path[256];
	FILE *f;
	char *buf = NULL;
	long n;

	snprintf(path, sizeof(path), GOLDEN "%s", name);
	f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "  cannot open %s (run from the repository's top directory)\n", path);
		return NULL;
	}
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
		buf = malloc((size_t)n + 1);
		if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) {
			buf[n] = '\0';
			*len = (size_t)n;
		} else {
			free(buf);
			buf = NULL;
		}
	}
	fclose(f);
	return buf;
}

/* ---- streams ---------------------------------------------------------------------- */

struct run {
	char *out;            /* everything written, NUL-terminated */
	int finish_rc;
	int last_feed_rc;
	struct anth_usage usage;
	bool failed, stopped;
};

static struct run translate(const char *in, size_t n, size_t piece, bool include_usage)
{
	struct anth_stream s;
	struct run r = { 0 };
	size_t len = 0, cap = 0;

	anth_stream_init(&s, include_usage, CREATED);
	for (size_t off = 0; off < n; off += piece) {
		size_t k = n - off < piece ? n - off : piece;

		r.last_feed_rc = anth_stream_feed(&s, in + off, k, &r.out, &len, &cap);
		CHECK(r.last_feed_rc >= 0);
	}
	r.finish_rc = anth_stream_finish(&s, &r.out, &len, &cap);
	r.usage = s.usage;
	r.failed = s.failed;
	r.stopped = s.stopped;
	anth_stream_free(&s);
	if (!r.out)
		r.out = strdup("");
	return r;
}

/* The events of an output: each "data: X\n\n", X parsed (an array of JSON values;
 * [DONE] as the string "[DONE]"). Anything else in the output fails the check. */
static json_t *events_of(const char *out)
{
	json_t *evs = json_array();
	const char *p = out;

	while (*p) {
		const char *end = strstr(p, "\n\n");
		json_t *v;

		CHECK(strncmp(p, "data: ", 6) == 0 && end);
		if (strncmp(p, "data: ", 6) != 0 || !end)
			break;
		if ((size_t)(end - p) == 12 && strncmp(p + 6, "[DONE]", 6) == 0)
			v = json_string("[DONE]");
		else
			v = json_loadb(p + 6, (size_t)(end - p - 6), 0, NULL);
		CHECK(v != NULL);
		json_array_append_new(evs, v ? v : json_null());
		p = end + 2;
	}
	return evs;
}

/* A golden stream translated three ways, which must agree byte for byte. */
static json_t *golden_stream(const char *name, bool include_usage, struct run *whole)
{
	size_t n = 0;
	char *in = read_file(name, &n);
	struct run one, seven;
	json_t *evs;

	CHECK(in != NULL);
	if (!in)
		return json_array();
	*whole = translate(in, n, n ? n : 1, include_usage);
	one = translate(in, n, 1, include_usage);
	seven = translate(in, n, 7, include_usage);
	CHECK_STR(one.out, whole->out);
	CHECK_STR(seven.out, whole->out);
	CHECK_INT(one.finish_rc, whole->finish_rc);
	CHECK_INT(one.usage.prompt_tokens, whole->usage.prompt_tokens);
	CHECK_INT(one.usage.completion_tokens, whole->usage.completion_tokens);
	free(one.out);
	free(seven.out);
	free(in);
	evs = events_of(whole->out);
	return evs;
}

static const char *get_str(const json_t *v, const char *path1, const char *path2)
{
	json_t *x = json_object_get(v, path1);

	if (path2)
		x = json_object_get(x, path2);
	return json_string_value(x);
}

static json_t *choice0(const json_t *ev)
{
	return json_array_get(json_object_get(ev, "choices"), 0);
}

/* The whole text of one delta member over all chunks. */
static char *assemble(const json_t *evs, const char *member)
{
	size_t i, len = 0;
	json_t *ev;
	char *acc = calloc(1, 1);

	json_array_foreach(evs, i, ev) {
		const char *s = json_string_value(json_object_get(json_object_get(choice0(ev), "delta"), member));

		if (s) {
			acc = realloc(acc, len + strlen(s) + 1);
			memcpy(acc + len, s, strlen(s) + 1);
			len += strlen(s);
		}
	}
	return acc;
}

/* Every finish_reason that is not null, in order, joined by commas. */
static char *finish_reasons(const json_t *evs)
{
	static char buf[256];
	size_t i;
	json_t *ev;

	buf[0] = '\0';
	json_array_foreach(evs, i, ev) {
		const char *f = json_string_value(json_object_get(choice0(ev), "finish_reason"));

		if (f) {
			if (buf[0])
				strcat(buf, ",");
			strncat(buf, f, sizeof(buf) - strlen(buf) - 2);
		}
	}
	return buf;
}

/* Every chunk (not [DONE], not an error) carries the message's id, the created time and
 * the model, and the object name. */
static void check_chunk_heads(const json_t *evs, const char *id)
{
	size_t i;
	json_t *ev;

	json_array_foreach(evs, i, ev) {
		if (json_is_string(ev) || json_object_get(ev, "error"))
			continue;
		CHECK_STR(get_str(ev, "id", NULL), id);
		CHECK_STR(get_str(ev, "object", NULL), "chat.completion.chunk");
		CHECK_STR(get_str(ev, "model", NULL), "claude-sonnet-4-5");
		CHECK_INT(json_integer_value(json_object_get(ev, "created")), CREATED);
	}
}

static bool is_done(const json_t *ev)
{
	return json_is_string(ev) && strcmp(json_string_value(ev), "[DONE]") == 0;
}

TEST(stream_text_gives_role_content_finish_and_done)
{
	struct run r;
	json_t *evs = golden_stream("stream-text.sse", false, &r), *first = json_array_get(evs, 0);
	char *content = assemble(evs, "content");
	size_t n = json_array_size(evs);

	CHECK_INT(r.finish_rc, ANTH_OK);
	CHECK_INT(r.last_feed_rc, ANTH_STREAM_ENDED);
	CHECK(r.stopped && !r.failed);
	/* role chunk, Hello, !, finish, [DONE]: ping, block start/stop give nothing */
	CHECK_INT(n, 5);
	CHECK_STR(get_str(json_object_get(choice0(first), "delta"), "role", NULL), "assistant");
	CHECK(json_is_null(json_object_get(choice0(first), "finish_reason")));
	CHECK_STR(content, "Hello!");
	CHECK_STR(finish_reasons(evs), "stop");
	CHECK(json_object_size(json_object_get(choice0(json_array_get(evs, n - 2)), "delta")) == 0);
	CHECK(is_done(json_array_get(evs, n - 1)));
	check_chunk_heads(evs, "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY");
	/* no usage chunk unless asked for; the audit has it anyway */
	for (size_t i = 0; i < n; i++)
		CHECK(json_object_get(json_array_get(evs, i), "usage") == NULL);
	CHECK(r.usage.found);
	CHECK_INT(r.usage.prompt_tokens, 25);
	CHECK_INT(r.usage.completion_tokens, 15);
	CHECK_INT(r.usage.cached_tokens, 0);
	CHECK_INT(r.usage.reasoning_tokens, -1);
	free(content);
	free(r.out);
	json_decref(evs);
}

TEST(stream_include_usage_sends_the_usage_chunk_before_done)
{
	struct run r;
	json_t *evs = golden_stream("stream-text.sse", true, &r);
	size_t n = json_array_size(evs);
	json_t *u = json_array_get(evs, n - 2), *usage = json_object_get(u, "usage");

	CHECK_INT(n, 6);
	CHECK(json_is_array(json_object_get(u, "choices")) && json_array_size(json_object_get(u, "choices")) == 0);
	CHECK_INT(json_integer_value(json_object_get(usage, "prompt_tokens")), 25);
	CHECK_INT(json_integer_value(json_object_get(usage, "completion_tokens")), 15);
	CHECK_INT(json_integer_value(json_object_get(usage, "total_tokens")), 40);
	CHECK_INT(json_integer_value(json_object_get(json_object_get(usage, "prompt_tokens_details"), "cached_tokens")), 0);
	CHECK(is_done(json_array_get(evs, n - 1)));
	CHECK_STR(finish_reasons(evs), "stop");
	check_chunk_heads(evs, "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY");
	free(r.out);
	json_decref(evs);
}

/* The bug every peer had: tool calls numbered by content block (1, 2) or all 0, and
 * fragments of one call appended to the other. */
TEST(stream_parallel_tool_calls_get_their_own_indexes_and_exact_arguments)
{
	struct run r;
	json_t *evs = golden_stream("stream-tools-parallel.sse", false, &r), *ev, *a, *b;
	char *args[3] = { calloc(1, 1), calloc(1, 1), calloc(1, 1) };
	const char *ids[3] = { 0 }, *names[3] = { 0 };
	char *content = assemble(evs, "content");
	int starts = 0;
	size_t i;

	json_array_foreach(evs, i, ev) {
		json_t *tcs = json_object_get(json_object_get(choice0(ev), "delta"), "tool_calls"), *tc;
		size_t j;

		json_array_foreach(tcs, j, tc) {
			json_int_t k = json_integer_value(json_object_get(tc, "index"));
			const char *frag = get_str(tc, "function", "arguments");

			CHECK(json_is_integer(json_object_get(tc, "index")) && k >= 0 && k < 2);
			if (k < 0 || k > 1)
				continue;
			if (json_object_get(tc, "id")) {
				starts++;
				CHECK(ids[k] == NULL);
				ids[k] = get_str(tc, "id", NULL);
				names[k] = get_str(tc, "function", "name");
				CHECK_STR(get_str(tc, "type", NULL), "function");
				CHECK_STR(frag, "");
			} else {
				CHECK(ids[k] != NULL);   /* no fragment before its call's start */
				CHECK(json_object_get(tc, "type") == NULL);
			}
			if (frag) {
				args[k] = realloc(args[k], strlen(args[k]) + strlen(frag) + 1);
				strcat(args[k], frag);
			}
		}
	}
	CHECK_INT(starts, 2);
	CHECK_STR(ids[0], "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
	CHECK_STR(ids[1], "toolu_01UFoXvmsyCM8HHt5Bas3cDq");
	CHECK_STR(names[0], "get_weather");
	CHECK_STR(names[1], "get_weather");
	CHECK_STR(args[0], "{\"location\": \"San Francisco, CA\", \"unit\": \"fahrenheit\"}");
	/* the fragments are JSON text: an escape in them stays the escape it was */
	CHECK_STR(args[1], "{\"location\": \"Paris, Fr\\u00e9\"}");
	a = json_loads(args[0], 0, NULL);
	b = json_loads(args[1], 0, NULL);
	CHECK(json_is_object(a) && json_is_object(b));
	CHECK_STR(get_str(b, "location", NULL), "Paris, Fr\xc3\xa9");
	CHECK_STR(content, "Let me check both cities.");
	CHECK_STR(finish_reasons(evs), "tool_calls");
	CHECK(is_done(json_array_get(evs, json_array_size(evs) - 1)));
	CHECK_INT(r.usage.prompt_tokens, 472);
	CHECK_INT(r.usage.completion_tokens, 89);
	json_decref(a);
	json_decref(b);
	for (i = 0; i < 3; i++)
		free(args[i]);
	free(content);
	free(r.out);
	json_decref(evs);
}

TEST(stream_thinking_becomes_reasoning_content_and_the_signature_is_dropped)
{
	struct run r;
	json_t *evs = golden_stream("stream-thinking.sse", false, &r);
	char *reasoning = assemble(evs, "reasoning_content"), *content = assemble(evs, "content");

	CHECK_STR(reasoning, "I need to find the GCD of 1071 and 462 using the Euclidean algorithm.\n\n"
	                     "1071 = 2 * 462 + 147");
	CHECK_STR(content, "The greatest common divisor of 1071 and 462 is **21**.");
	CHECK(strstr(r.out, "EqQBCgIYAhIM") == NULL);
	CHECK_STR(finish_reasons(evs), "stop");
	/* role, 2 thinking, 1 text, finish, [DONE] */
	CHECK_INT(json_array_size(evs), 6);
	free(reasoning);
	free(content);
	free(r.out);
	json_decref(evs);
}

TEST(stream_stop_reasons_max_tokens_and_refusal)
{
	struct run r1, r2;
	json_t *e1 = golden_stream("stream-max-tokens.sse", false, &r1);
	json_t *e2 = golden_stream("stream-refusal.sse", false, &r2);

	CHECK_STR(finish_reasons(e1), "length");
	CHECK_STR(finish_reasons(e2), "content_filter");
	CHECK_INT(r1.usage.completion_tokens, 4);
	CHECK_INT(r2.finish_rc, ANTH_OK);
	free(r1.out);
	free(r2.out);
	json_decref(e1);
	json_decref(e2);
}

TEST(stream_overloaded_error_midway_ends_with_an_error_event_and_no_done)
{
	struct run r;
	json_t *evs = golden_stream("stream-overloaded.sse", false, &r);
	size_t n = json_array_size(evs);
	json_t *err = json_object_get(json_array_get(evs, n - 1), "error");
	char *content = assemble(evs, "content");

	CHECK_INT(r.last_feed_rc, ANTH_STREAM_ENDED);
	CHECK_INT(r.finish_rc, ANTH_OK);
	CHECK(r.failed && !r.stopped);
	CHECK_STR(get_str(err, "message", NULL), "Overloaded");
	CHECK_STR(get_str(err, "type", NULL), "server_error");
	CHECK_STR(get_str(err, "code", NULL), "overloaded_error");
	CHECK_STR(content, "Partial");
	CHECK(strstr(r.out, "never relayed") == NULL);
	CHECK(strstr(r.out, "[DONE]") == NULL);
	CHECK_STR(finish_reasons(evs), "");
	free(content);
	free(r.out);
	json_decref(evs);
}

/* Anthropic's input_tokens excludes cache reads and writes; OpenAI's prompt_tokens
 * includes both. Output tokens in message_delta are cumulative: the last one counts. */
TEST(stream_cache_usage_is_normalised_and_output_tokens_are_not_summed)
{
	struct run r;
	json_t *evs = golden_stream("stream-cache.sse", true, &r);
	size_t n = json_array_size(evs);
	json_t *usage = json_object_get(json_array_get(evs, n - 2), "usage");

	CHECK_INT(r.usage.prompt_tokens, 21 + 188 + 1800);
	CHECK_INT(r.usage.cached_tokens, 1800);
	CHECK_INT(r.usage.cache_write_tokens, 188);
	CHECK_INT(r.usage.completion_tokens, 9);
	CHECK_INT(json_integer_value(json_object_get(usage, "prompt_tokens")), 2009);
	CHECK_INT(json_integer_value(json_object_get(usage, "completion_tokens")), 9);
	CHECK_INT(json_integer_value(json_object_get(usage, "total_tokens")), 2018);
	CHECK_INT(json_integer_value(json_object_get(json_object_get(usage, "prompt_tokens_details"), "cached_tokens")), 1800);
	CHECK_STR(finish_reasons(evs), "stop");   /* one finish chunk for two message_deltas */
	free(r.out);
	json_decref(evs);
}

TEST(stream_with_crlf_lines_translates_the_same)
{
	size_t n = 0, m = 0;
	char *in = read_file("stream-tools-parallel.sse", &n), *crlf = malloc(2 * n + 1);
	struct run a, b, c;

	CHECK(in != NULL);
	if (!in) {
		free(crlf);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		if (in[i] == '\n')
			crlf[m++] = '\r';
		crlf[m++] = in[i];
	}
	a = translate(in, n, n, true);
	b = translate(crlf, m, 1, true);
	c = translate(crlf, m, m, true);
	CHECK_STR(b.out, a.out);
	CHECK_STR(c.out, a.out);
	free(a.out);
	free(b.out);
	free(c.out);
	free(in);
	free(crlf);
}

TEST(stream_cut_before_message_stop_is_reported_truncated)
{
	size_t n = 0;
	char *in = read_file("stream-text.sse", &n), *cut;
	struct run r;
	json_t *evs, *err;

	CHECK(in != NULL);
	if (!in)
		return;
	cut = strstr(in, "event: message_delta");
	r = translate(in, (size_t)(cut - in), 1, true);
	evs = events_of(r.out);
	err = json_object_get(json_array_get(evs, json_array_size(evs) - 1), "error");
	CHECK_INT(r.finish_rc, ANTH_TRUNCATED);
	CHECK_STR(get_str(err, "code", NULL), "stream_truncated");
	CHECK_STR(get_str(err, "type", NULL), "server_error");
	CHECK(strstr(r.out, "[DONE]") == NULL);
	CHECK(r.failed);
	/* what came before was relayed, and the usage known so far kept */
	CHECK_INT(r.usage.prompt_tokens, 25);
	free(r.out);
	json_decref(evs);
	free(in);
}

static void check_invalid(const char *in, const char *code)
{
	struct run r = translate(in, strlen(in), 1, false);
	json_t *evs = events_of(r.out);
	json_t *err = json_object_get(json_array_get(evs, json_array_size(evs) - 1), "error");

	CHECK(json_array_size(evs) >= 1);
	CHECK_STR(get_str(err, "code", NULL), code);
	CHECK(strstr(r.out, "[DONE]") == NULL);
	free(r.out);
	json_decref(evs);
}

TEST(stream_that_is_not_anthropic_gives_one_clean_error)
{
	check_invalid("data: not json\n\n", "invalid_upstream_stream");
	check_invalid("data: [1,2]\n\n", "invalid_upstream_stream");
	check_invalid("data: {\"no\":\"type\"}\n\n", "invalid_upstream_stream");
	check_invalid("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
	              "\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n", "invalid_upstream_stream");
	/* a delta for a block never started */
	check_invalid("data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"x\"}}\n\n"
	              "data: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n",
	              "invalid_upstream_stream");
	/* an OpenAI stream is not an Anthropic one */
	check_invalid("data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n",
	              "invalid_upstream_stream");
	/* an HTML error page: no events at all, so the end is a truncation */
	check_invalid("<html><body>502 Bad Gateway</body></html>", "stream_truncated");
	check_invalid("", "stream_truncated");
}

TEST(stream_without_usage_leaves_it_unknown)
{
	const char *in = "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"x\"}}\n\n"
	                 "data: {\"type\":\"message_stop\"}\n\n";
	struct run r = translate(in, strlen(in), 1, true);

	CHECK(!r.usage.found);
	CHECK_INT(r.usage.prompt_tokens, -1);
	CHECK_INT(r.finish_rc, ANTH_OK);
	CHECK(strstr(r.out, "[DONE]") != NULL);
	free(r.out);
}

TEST(answer_without_usage_leaves_it_unknown)
{
	const char *in = "{\"type\":\"message\",\"id\":\"m\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}";
	char *out = NULL, err[100];
	size_t len;
	struct anth_usage u;

	CHECK_INT(anth_answer(in, strlen(in), CREATED, &out, &len, &u, err, sizeof(err)), ANTH_OK);
	CHECK(!u.found);
	CHECK_INT(u.prompt_tokens, -1);
	free(out);
}

TEST(stream_event_over_the_cap_is_refused_without_holding_it)
{
	struct anth_stream s;
	char *out = NULL, *chunk = malloc(65536);
	size_t len = 0, cap = 0;
	int rc = 0;

	memset(chunk, 'a', 65536);
	anth_stream_init(&s, false, CREATED);
	rc = anth_stream_feed(&s, "data: \"", 7, &out, &len, &cap);
	for (int i = 0; i < 64 && rc == 0; i++)
		rc = anth_stream_feed(&s, chunk, 65536, &out, &len, &cap);
	CHECK_INT(rc, ANTH_STREAM_ENDED);
	CHECK(s.in.line_cap <= 2 * ANTH_MAX_EVENT);
	CHECK(out && strstr(out, "invalid_upstream_stream"));
	CHECK_INT(anth_stream_finish(&s, &out, &len, &cap), ANTH_OK);
	anth_stream_free(&s);
	free(out);
	free(chunk);
}

TEST(stream_ignores_unknown_events_and_anything_after_message_stop)
{
	size_t n = 0;
	char *in = read_file("stream-text.sse", &n), *mixed;
	struct run a, b;
	const char *extra = "event: future_event\ndata: {\"type\":\"future_event\",\"x\":1}\n\n: a comment\n\n";
	char *at;

	CHECK(in != NULL);
	if (!in)
		return;
	mixed = malloc(n + 2 * strlen(extra) + 200);
	at = strstr(in, "event: ping");
	memcpy(mixed, in, (size_t)(at - in));
	strcpy(mixed + (at - in), extra);
	strcat(mixed, at);
	strcat(mixed, "data: {\"type\":\"message_start\"}\n\ndata: garbage\n\n");
	a = translate(in, n, n, false);
	b = translate(mixed, strlen(mixed), 3, false);
	CHECK_STR(b.out, a.out);
	CHECK_INT(b.finish_rc, ANTH_OK);
	free(a.out);
	free(b.out);
	free(mixed);
	free(in);
}

/* ---- whole answers ---------------------------------------------------------------- */

static json_t *golden_answer(const char *name, int want_rc, struct anth_usage *u)
{
	size_t n = 0, out_len = 0;
	char *in = read_file(name, &n), *out = NULL, err[200];
	json_t *res = NULL;
	int rc;

	CHECK(in != NULL);
	if (!in)
		return json_object();
	rc = anth_answer(in, n, CREATED, &out, &out_len, u, err, sizeof(err));
	CHECK_INT(rc, want_rc);
	CHECK(out && strlen(out) == out_len);
	if (out)
		res = json_loads(out, 0, NULL);
	CHECK(json_is_object(res));
	free(out);
	free(in);
	return res ? res : json_object();
}

static json_t *message_of(const json_t *res)
{
	return json_object_get(choice0(res), "message");
}

TEST(answer_text_and_usage)
{
	struct anth_usage u;
	json_t *res = golden_answer("answer-text.json", ANTH_OK, &u), *usage = json_object_get(res, "usage");

	CHECK_STR(get_str(res, "id", NULL), "msg_013Zva2CMHLNnXjNJJKqJ2EF");
	CHECK_STR(get_str(res, "object", NULL), "chat.completion");
	CHECK_STR(get_str(res, "model", NULL), "claude-sonnet-4-5");
	CHECK_INT(json_integer_value(json_object_get(res, "created")), CREATED);
	CHECK_INT(json_integer_value(json_object_get(choice0(res), "index")), 0);
	CHECK_STR(get_str(message_of(res), "role", NULL), "assistant");
	CHECK_STR(get_str(message_of(res), "content", NULL), "Hi! My name is Claude.");
	CHECK(json_object_get(message_of(res), "tool_calls") == NULL);
	CHECK(json_object_get(message_of(res), "reasoning_content") == NULL);
	CHECK_STR(get_str(choice0(res), "finish_reason", NULL), "stop");
	CHECK_INT(json_integer_value(json_object_get(usage, "prompt_tokens")), 2095);
	CHECK_INT(json_integer_value(json_object_get(usage, "completion_tokens")), 503);
	CHECK_INT(json_integer_value(json_object_get(usage, "total_tokens")), 2598);
	CHECK(u.found);
	CHECK_INT(u.prompt_tokens, 2095);
	CHECK_INT(u.completion_tokens, 503);
	CHECK_INT(u.cached_tokens, 0);
	CHECK_INT(u.cache_write_tokens, 0);
	json_decref(res);
}

TEST(answer_tool_use_blocks_become_tool_calls_with_json_arguments)
{
	struct anth_usage u;
	json_t *res = golden_answer("answer-tools.json", ANTH_OK, &u);
	json_t *calls = json_object_get(message_of(res), "tool_calls"), *c0, *c1, *a0, *a1;
	json_t *want = json_pack("{s:s,s:s}", "location", "San Francisco, CA", "unit", "celsius");

	CHECK_INT(json_array_size(calls), 2);
	c0 = json_array_get(calls, 0);
	c1 = json_array_get(calls, 1);
	CHECK_STR(get_str(c0, "id", NULL), "toolu_01A09q90qw90lq917835lq9");
	CHECK_STR(get_str(c0, "type", NULL), "function");
	CHECK_STR(get_str(c0, "function", "name"), "get_weather");
	CHECK_STR(get_str(c1, "id", NULL), "toolu_01B19q90qw90lq917835lq8");
	CHECK_STR(get_str(c1, "function", "name"), "get_time");
	CHECK_STR(get_str(c1, "function", "arguments"), "{}");
	a0 = json_loads(get_str(c0, "function", "arguments") ? get_str(c0, "function", "arguments") : "",
	                0, NULL);
	a1 = json_loads(get_str(c1, "function", "arguments") ? get_str(c1, "function", "arguments") : "",
	                0, NULL);
	CHECK(json_equal(a0, want));
	CHECK(json_is_object(a1) && json_object_size(a1) == 0);
	CHECK_STR(get_str(message_of(res), "content", NULL), "I'll check the weather in both places.");
	CHECK_STR(get_str(choice0(res), "finish_reason", NULL), "tool_calls");
	json_decref(a0);
	json_decref(a1);
	json_decref(want);
	json_decref(res);
}

TEST(answer_thinking_and_cache_tokens)
{
	struct anth_usage u;
	json_t *res = golden_answer("answer-thinking-cache.json", ANTH_OK, &u);
	json_t *usage = json_object_get(res, "usage");

	CHECK_STR(get_str(message_of(res), "content", NULL), "Based on my analysis, the answer is 42.");
	CHECK_STR(get_str(message_of(res), "reasoning_content", NULL), "Let me analyze this step by step...");
	CHECK_STR(get_str(choice0(res), "finish_reason", NULL), "length");
	CHECK_INT(json_integer_value(json_object_get(usage, "prompt_tokens")), 3 + 2051 + 2000);
	CHECK_INT(json_integer_value(json_object_get(usage, "completion_tokens")), 393);
	CHECK_INT(json_integer_value(json_object_get(usage, "total_tokens")), 4054 + 393);
	CHECK_INT(json_integer_value(json_object_get(json_object_get(usage, "prompt_tokens_details"), "cached_tokens")), 2000);
	CHECK_INT(u.prompt_tokens, 4054);
	CHECK_INT(u.cached_tokens, 2000);
	CHECK_INT(u.cache_write_tokens, 2051);
	CHECK_INT(u.completion_tokens, 393);
	CHECK_INT(u.reasoning_tokens, -1);
	json_decref(res);
}

TEST(answer_refusal_is_content_filter_with_null_content)
{
	struct anth_usage u;
	json_t *res = golden_answer("answer-refusal.json", ANTH_OK, &u);

	CHECK(json_is_null(json_object_get(message_of(res), "content")));
	CHECK_STR(get_str(choice0(res), "finish_reason", NULL), "content_filter");
	json_decref(res);
	CHECK(u.found);
	CHECK_INT(u.completion_tokens, 0);
}

TEST(answer_errors_take_the_openai_shape)
{
	struct anth_usage u;
	json_t *a = golden_answer("error-overloaded.json", ANTH_UPSTREAM_ERROR, &u);
	json_t *b = golden_answer("error-invalid.json", ANTH_UPSTREAM_ERROR, &u);

	CHECK_STR(get_str(a, "error", "message"), "Overloaded");
	CHECK_STR(get_str(a, "error", "type"), "server_error");
	CHECK_STR(get_str(a, "error", "code"), "overloaded_error");
	CHECK_STR(get_str(b, "error", "message"), "max_tokens: Field required");
	CHECK_STR(get_str(b, "error", "type"), "invalid_request_error");
	CHECK_STR(get_str(b, "error", "code"), "invalid_request_error");
	CHECK(!u.found);
	json_decref(a);
	json_decref(b);
}

TEST(answer_that_is_not_anthropic_is_refused_with_a_message)
{
	static const char *const bad[] = {
		"", "not json", "[]", "{\"type\":\"message\"}", "{\"choices\":[]}",
		"{\"type\":\"completion\",\"content\":[]}", "{\"content\":{}}",
	};
	char *out = (char *)1, err[200];
	size_t len = 5;
	struct anth_usage u;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK_INT(anth_answer(bad[i], strlen(bad[i]), CREATED, &out, &len, &u, err, sizeof(err)),
		          ANTH_INVALID);
		CHECK(out == NULL && len == 0 && err[0] != '\0' && !u.found);
	}
}

/* ---- requests --------------------------------------------------------------------- */

static json_t *request(const char *body, const char *model, long dflt, bool stream, int want_rc,
                       char *err, size_t errlen)
{
	struct anth_req_opts o = { .model = model, .default_max_tokens = dflt, .stream = stream };
	char *out = NULL, ebuf[256];
	size_t len = 0;
	json_t *res = NULL;
	int rc;

	if (!err) {
		err = ebuf;
		errlen = sizeof(ebuf);
	}
	rc = anth_request(&o, body, strlen(body), &out, &len, err, errlen);
	CHECK_INT(rc, want_rc);
	if (rc != want_rc)
		fprintf(stderr, "  (error: %s)\n", err);
	if (rc == ANTH_OK) {
		CHECK(out && strlen(out) == len);
		res = json_loads(out, 0, NULL);
		CHECK(json_is_object(res));
		/* the numbers the client wrote come out as written */
		if (strstr(body, "0.7"))
			CHECK(strstr(out, "0.7") && !strstr(out, "0.69999"));
	} else {
		CHECK(out == NULL && len == 0);
		CHECK(err[0] != '\0');
	}
	free(out);
	return res;
}

static json_t *block(const json_t *req, size_t msg, size_t blk)
{
	return json_array_get(json_object_get(json_array_get(json_object_get(req, "messages"), msg), "content"), blk);
}

static const char full_request[] =
	"{\"model\":\"gpt-4o\",\"messages\":["
	"{\"role\":\"system\",\"content\":\"You are terse.\"},"
	"{\"role\":\"developer\",\"content\":[{\"type\":\"text\",\"text\":\"Answer in French.\"}]},"
	"{\"role\":\"user\",\"content\":\"Hello\"},"
	"{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"What is in these?\"},"
	"{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,iVBORw0KGgo=\"}},"
	"{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://example.com/cat.jpg\",\"detail\":\"high\"}}]},"
	"{\"role\":\"assistant\",\"content\":null,\"tool_calls\":["
	"{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}},"
	"{\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"\"}}]},"
	"{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"18C\"},"
	"{\"role\":\"tool\",\"tool_call_id\":\"call_2\",\"content\":[{\"type\":\"text\",\"text\":\"noon\"}]},"
	"{\"role\":\"user\",\"content\":\"Thanks\"}],"
	"\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"Weather\","
	"\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},\"required\":[\"city\"]}}},"
	"{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}],"
	"\"tool_choice\":\"required\",\"parallel_tool_calls\":false,"
	"\"stop\":\"###\",\"temperature\":0.7,\"top_p\":1,\"n\":1,\"user\":\"u-42\","
	"\"frequency_penalty\":0.5,\"stream_options\":{\"include_usage\":true}}";

TEST(request_full_translation)
{
	json_t *r = request(full_request, "claude-sonnet-4-5", 4096, true, ANTH_OK, NULL, 0), *sys, *b;
	json_t *msgs = json_object_get(r, "messages"), *tools = json_object_get(r, "tools");
	json_t *input, *want;

	CHECK_STR(get_str(r, "model", NULL), "claude-sonnet-4-5");
	CHECK_INT(json_integer_value(json_object_get(r, "max_tokens")), 4096);
	CHECK(json_is_true(json_object_get(r, "stream")));
	/* system and developer: two texts, so text blocks in order */
	sys = json_object_get(r, "system");
	CHECK_INT(json_array_size(sys), 2);
	CHECK_STR(get_str(json_array_get(sys, 0), "type", NULL), "text");
	CHECK_STR(get_str(json_array_get(sys, 0), "text", NULL), "You are terse.");
	CHECK_STR(get_str(json_array_get(sys, 1), "text", NULL), "Answer in French.");
	/* user+user merged; assistant; tool+tool+user merged */
	CHECK_INT(json_array_size(msgs), 3);
	CHECK_STR(get_str(json_array_get(msgs, 0), "role", NULL), "user");
	CHECK_STR(get_str(json_array_get(msgs, 1), "role", NULL), "assistant");
	CHECK_STR(get_str(json_array_get(msgs, 2), "role", NULL), "user");
	CHECK_INT(json_array_size(json_object_get(json_array_get(msgs, 0), "content")), 4);
	CHECK_STR(get_str(block(r, 0, 0), "text", NULL), "Hello");
	CHECK_STR(get_str(block(r, 0, 1), "text", NULL), "What is in these?");
	b = block(r, 0, 2);
	CHECK_STR(get_str(b, "type", NULL), "image");
	CHECK_STR(get_str(b, "source", "type"), "base64");
	CHECK_STR(get_str(b, "source", "media_type"), "image/png");
	CHECK_STR(get_str(b, "source", "data"), "iVBORw0KGgo=");
	b = block(r, 0, 3);
	CHECK_STR(get_str(b, "source", "type"), "url");
	CHECK_STR(get_str(b, "source", "url"), "https://example.com/cat.jpg");
	/* tool calls */
	CHECK_INT(json_array_size(json_object_get(json_array_get(msgs, 1), "content")), 2);
	b = block(r, 1, 0);
	CHECK_STR(get_str(b, "type", NULL), "tool_use");
	CHECK_STR(get_str(b, "id", NULL), "call_1");
	CHECK_STR(get_str(b, "name", NULL), "get_weather");
	input = json_object_get(b, "input");
	want = json_pack("{s:s}", "city", "Paris");
	CHECK(json_equal(input, want));
	json_decref(want);
	CHECK(json_is_object(json_object_get(block(r, 1, 1), "input")) &&
	      json_object_size(json_object_get(block(r, 1, 1), "input")) == 0);
	/* tool results, then the user's text */
	CHECK_INT(json_array_size(json_object_get(json_array_get(msgs, 2), "content")), 3);
	b = block(r, 2, 0);
	CHECK_STR(get_str(b, "type", NULL), "tool_result");
	CHECK_STR(get_str(b, "tool_use_id", NULL), "call_1");
	CHECK_STR(get_str(b, "content", NULL), "18C");
	b = block(r, 2, 1);
	CHECK_STR(get_str(b, "tool_use_id", NULL), "call_2");
	CHECK_STR(get_str(json_array_get(json_object_get(b, "content"), 0), "text", NULL), "noon");
	CHECK_STR(get_str(block(r, 2, 2), "text", NULL), "Thanks");
	/* tools */
	CHECK_INT(json_array_size(tools), 2);
	CHECK_STR(get_str(json_array_get(tools, 0), "name", NULL), "get_weather");
	CHECK_STR(get_str(json_array_get(tools, 0), "description", NULL), "Weather");
	CHECK_STR(get_str(json_array_get(tools, 0), "input_schema", "type"), "object");
	CHECK(json_object_get(json_object_get(json_object_get(json_array_get(tools, 0), "input_schema"),
	                                      "properties"), "city") != NULL);
	CHECK_STR(get_str(json_array_get(tools, 1), "input_schema", "type"), "object");
	CHECK(json_object_get(json_array_get(tools, 1), "description") == NULL);
	/* tool_choice, parallel calls, stop, sampling, user */
	CHECK_STR(get_str(r, "tool_choice", "type"), "any");
	CHECK(json_is_true(json_object_get(json_object_get(r, "tool_choice"), "disable_parallel_tool_use")));
	CHECK_INT(json_array_size(json_object_get(r, "stop_sequences")), 1);
	CHECK_STR(json_string_value(json_array_get(json_object_get(r, "stop_sequences"), 0)), "###");
	CHECK(json_real_value(json_object_get(r, "temperature")) == 0.7);
	CHECK_INT(json_integer_value(json_object_get(r, "top_p")), 1);
	CHECK_STR(get_str(r, "metadata", "user_id"), "u-42");
	/* what Anthropic has no use for is not sent */
	CHECK(json_object_get(r, "n") == NULL);
	CHECK(json_object_get(r, "frequency_penalty") == NULL);
	CHECK(json_object_get(r, "stream_options") == NULL);
	CHECK(json_object_get(r, "tool_calls") == NULL);
	json_decref(r);
}

TEST(request_keeps_the_model_one_system_string_and_max_tokens)
{
	json_t *r = request("{\"model\":\"claude-haiku-4-5\",\"max_tokens\":100,\"max_completion_tokens\":5,"
	                    "\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
	                    "{\"role\":\"user\",\"content\":\"Hi\"}],\"stop\":[\"a\",\"b\"]}",
	                    NULL, 4096, false, ANTH_OK, NULL, 0);

	CHECK_STR(get_str(r, "model", NULL), "claude-haiku-4-5");
	CHECK_STR(get_str(r, "system", NULL), "Be brief.");
	CHECK_INT(json_integer_value(json_object_get(r, "max_tokens")), 100);
	CHECK(json_object_get(r, "stream") == NULL);
	CHECK_INT(json_array_size(json_object_get(r, "stop_sequences")), 2);
	CHECK(json_object_get(r, "tools") == NULL && json_object_get(r, "tool_choice") == NULL);
	json_decref(r);
	r = request("{\"model\":\"m\",\"max_completion_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}",
	            NULL, 0, false, ANTH_OK, NULL, 0);
	CHECK_INT(json_integer_value(json_object_get(r, "max_tokens")), 5);
	json_decref(r);
}

static json_t *tool_choice_of(const char *tc_and_ptc)
{
	char body[512];
	json_t *r, *tc;

	snprintf(body, sizeof(body), "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
	         "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]%s}", tc_and_ptc);
	r = request(body, NULL, 10, false, ANTH_OK, NULL, 0);
	tc = json_incref(json_object_get(r, "tool_choice"));
	json_decref(r);
	return tc;
}

TEST(request_tool_choice_variants)
{
	json_t *tc;

	tc = tool_choice_of(",\"tool_choice\":\"auto\"");
	CHECK_STR(get_str(tc, "type", NULL), "auto");
	CHECK(json_object_get(tc, "disable_parallel_tool_use") == NULL);
	json_decref(tc);
	tc = tool_choice_of(",\"tool_choice\":\"none\",\"parallel_tool_calls\":false");
	CHECK_STR(get_str(tc, "type", NULL), "none");
	CHECK(json_object_get(tc, "disable_parallel_tool_use") == NULL);
	json_decref(tc);
	tc = tool_choice_of(",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}}");
	CHECK_STR(get_str(tc, "type", NULL), "tool");
	CHECK_STR(get_str(tc, "name", NULL), "f");
	json_decref(tc);
	tc = tool_choice_of(",\"parallel_tool_calls\":false");
	CHECK_STR(get_str(tc, "type", NULL), "auto");
	CHECK(json_is_true(json_object_get(tc, "disable_parallel_tool_use")));
	json_decref(tc);
	tc = tool_choice_of(",\"parallel_tool_calls\":true");
	CHECK(tc == NULL);
	json_decref(tc);
}

static void check_refused(const char *body, const char *want_in_message)
{
	char err[256] = "";
	json_t *r = request(body, NULL, 10, false, ANTH_INVALID, err, sizeof(err));

	CHECK(r == NULL);
	if (want_in_message && !strstr(err, want_in_message)) {
		CHECK(strstr(err, want_in_message) != NULL);
		fprintf(stderr, "  message was: %s\n", err);
	}
}

#define M_USER "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]"

TEST(request_n_above_one_is_refused_with_the_documented_message)
{
	char err[256] = "";
	json_t *r = request("{\"model\":\"m\",\"n\":2," M_USER "}", NULL, 10, false, ANTH_INVALID,
	                    err, sizeof(err));

	CHECK_STR(err, "n>1 is not supported by anthropic upstreams");
	CHECK(r == NULL);
}

TEST(request_unparsable_tool_arguments_are_refused_clearly)
{
	check_refused("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"},"
	              "{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\","
	              "\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"city\\\":\"}}]}]}",
	              "messages[1].tool_calls[0].function.arguments");
	check_refused("{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\","
	              "\"function\":{\"name\":\"f\",\"arguments\":\"[1]\"}}]}]}", "arguments");
}

TEST(request_that_is_not_a_chat_request_is_refused)
{
	check_refused("", "JSON object");
	check_refused("[]", "JSON object");
	check_refused("{\"model\":\"m\",\"model\":\"n\"," M_USER "}", "JSON object");
	check_refused("{\"model\":\"m\"}", "messages");
	check_refused("{\"model\":\"m\",\"messages\":[]}", "messages");
	check_refused("{" M_USER "}", "model");
	check_refused("{\"model\":\"m\",\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "role");
	check_refused("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":5}]}", "content");
	check_refused("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\"}]}]}",
	              "only text and image_url");
	check_refused("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
	              "\"image_url\":{\"url\":\"ftp://x/y.png\"}}]}]}", "image_url");
	check_refused("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
	              "\"image_url\":{\"url\":\"data:image/png,abc\"}}]}]}", "base64");
	check_refused("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\"}]}", "no user");
	check_refused("{\"model\":\"m\",\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "tool_call_id");
	check_refused("{\"model\":\"m\",\"max_tokens\":-1," M_USER "}", "max_tokens");
	check_refused("{\"model\":\"m\",\"max_tokens\":1.5," M_USER "}", "max_tokens");
	check_refused("{\"model\":\"m\",\"stop\":7," M_USER "}", "stop");
	check_refused("{\"model\":\"m\",\"temperature\":\"hot\"," M_USER "}", "temperature");
	check_refused("{\"model\":\"m\",\"tools\":[{\"type\":\"code_interpreter\"}]," M_USER "}", "tools[0]");
	check_refused("{\"model\":\"m\",\"tool_choice\":\"sometimes\",\"tools\":[{\"type\":\"function\","
	              "\"function\":{\"name\":\"f\"}}]," M_USER "}", "tool_choice");
}

TEST(request_without_max_tokens_and_no_default_is_refused)
{
	char err[256] = "";
	struct anth_req_opts o = { .model = NULL, .default_max_tokens = 0 };
	const char *body = "{\"model\":\"m\"," M_USER "}";
	char *out = NULL;
	size_t len = 0;

	CHECK_INT(anth_request(&o, body, strlen(body), &out, &len, err, sizeof(err)), ANTH_INVALID);
	CHECK(strstr(err, "max_tokens") != NULL);
	CHECK(out == NULL);
}

RUN_TESTS()
