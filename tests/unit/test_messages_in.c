/* messages_in: an Anthropic Messages client in front of an OpenAI upstream
 * (fastgated/messages_in.c), checked field by field against transcripts in
 * tests/golden/messages_in/. Every stream is translated whole and in 1-byte and 7-byte
 * pieces; the outputs must be byte-identical. */
#include <stdbool.h>
#include <stdlib.h>

#include <jansson.h>

#include "messages_in.h"
#include "unit.h"

#define GOLDEN "tests/golden/messages_in/"

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

static json_t *at(const json_t *v, const char *k1, const char *k2)
{
	json_t *x = json_object_get(v, k1);

	return k2 ? json_object_get(x, k2) : x;
}

static const char *s_at(const json_t *v, const char *k1, const char *k2)
{
	return json_string_value(at(v, k1, k2));
}

static long long i_at(const json_t *v, const char *k1, const char *k2)
{
	json_t *x = at(v, k1, k2);

	return json_is_integer(x) ? json_integer_value(x) : -999;
}

/* ---- requests --------------------------------------------------------------------- */

static json_t *request(const char *body, int want_rc, bool *stream, char *err, size_t errlen)
{
	struct msgin_req_opts o = { 0 };
	char *out = NULL;
	size_t n = 0;
	bool st = false;
	int rc = msgin_request(&o, body, strlen(body), &out, &n, &st, err, errlen);
	json_t *res = NULL;

	CHECK_INT(rc, want_rc);
	if (stream)
		*stream = st;
	if (rc == MSGIN_OK) {
		CHECK(out != NULL && strlen(out) == n);
		res = json_loads(out, 0, NULL);
		CHECK(json_is_object(res));
	} else {
		CHECK(out == NULL);
	}
	free(out);
	return res;
}

static json_t *golden_request(const char *name, bool *stream)
{
	size_t n = 0;
	char *in = read_file(name, &n), err[256];
	json_t *res;

	CHECK(in != NULL);
	if (!in)
		return json_object();
	res = request(in, MSGIN_OK, stream, err, sizeof(err));
	if (!res)
		fprintf(stderr, "  %s: %s\n", name, err);
	free(in);
	return res ? res : json_object();
}

TEST(request_multi_turn_with_tools_system_and_options)
{
	bool stream = false;
	json_t *r = golden_request("request-tools.json", &stream), *msgs = at(r, "messages", NULL), *m;
	json_t *calls, *tool;

	CHECK(stream);
	CHECK_STR(s_at(r, "model", NULL), "claude-sonnet-4-5");
	CHECK_INT(i_at(r, "max_tokens", NULL), 1024);
	CHECK(json_is_true(at(r, "stream", NULL)));
	CHECK(json_is_true(at(r, "stream_options", "include_usage")));
	CHECK_INT(json_array_size(msgs), 6);
	/* system: two text blocks -> text parts */
	m = json_array_get(msgs, 0);
	CHECK_STR(s_at(m, "role", NULL), "system");
	CHECK_INT(json_array_size(at(m, "content", NULL)), 2);
	CHECK_STR(s_at(json_array_get(at(m, "content", NULL), 1), "text", NULL), "Use tools.");
	CHECK(at(json_array_get(at(m, "content", NULL), 1), "cache_control", NULL) == NULL);
	m = json_array_get(msgs, 1);
	CHECK_STR(s_at(m, "role", NULL), "user");
	CHECK_STR(s_at(m, "content", NULL), "What is the weather in Paris and Rome?");
	/* assistant: thinking dropped, one text -> string, two tool calls */
	m = json_array_get(msgs, 2);
	CHECK_STR(s_at(m, "role", NULL), "assistant");
	CHECK_STR(s_at(m, "content", NULL), "Checking.");
	calls = at(m, "tool_calls", NULL);
	CHECK_INT(json_array_size(calls), 2);
	CHECK_STR(s_at(json_array_get(calls, 0), "id", NULL), "toolu_01");
	CHECK_STR(s_at(json_array_get(calls, 0), "type", NULL), "function");
	CHECK_STR(s_at(json_array_get(calls, 0), "function", "name"), "get_weather");
	CHECK_STR(s_at(json_array_get(calls, 0), "function", "arguments"), "{\"city\":\"Paris\"}");
	CHECK_STR(s_at(json_array_get(calls, 1), "function", "arguments"),
	          "{\"city\":\"Rome\",\"unit\":\"c\"}");
	/* tool results right after the assistant message, before the user's text */
	tool = json_array_get(msgs, 3);
	CHECK_STR(s_at(tool, "role", NULL), "tool");
	CHECK_STR(s_at(tool, "tool_call_id", NULL), "toolu_01");
	CHECK_STR(s_at(tool, "content", NULL), "18C");
	tool = json_array_get(msgs, 4);
	CHECK_STR(s_at(tool, "tool_call_id", NULL), "toolu_02");
	CHECK_STR(s_at(tool, "content", NULL), "21C\nsunny");
	m = json_array_get(msgs, 5);
	CHECK_STR(s_at(m, "role", NULL), "user");
	CHECK_STR(s_at(m, "content", NULL), "Here you go.");
	/* tools and the rest */
	tool = json_array_get(at(r, "tools", NULL), 0);
	CHECK_STR(s_at(tool, "type", NULL), "function");
	CHECK_STR(s_at(tool, "function", "name"), "get_weather");
	CHECK_STR(s_at(tool, "function", "description"), "Weather by city");
	CHECK_STR(s_at(at(tool, "function", "parameters"), "type", NULL), "object");
	CHECK_STR(s_at(r, "tool_choice", NULL), "auto");
	CHECK(json_is_false(at(r, "parallel_tool_calls", NULL)));
	CHECK_STR(json_string_value(json_array_get(at(r, "stop", NULL), 0)), "END");
	CHECK(json_real_value(at(r, "temperature", NULL)) == 0.7);
	CHECK(json_real_value(at(r, "top_p", NULL)) == 0.9);
	CHECK(at(r, "top_k", NULL) == NULL);
	CHECK(at(r, "metadata", NULL) == NULL);
	CHECK_STR(s_at(r, "user", NULL), "u-42");
	json_decref(r);
}

TEST(request_images_become_image_url_parts)
{
	bool stream = true;
	json_t *r = golden_request("request-image.json", &stream), *msgs = at(r, "messages", NULL);
	json_t *parts = at(json_array_get(msgs, 1), "content", NULL);

	CHECK(!stream);
	CHECK(at(r, "stream", NULL) == NULL && at(r, "stream_options", NULL) == NULL);
	CHECK_STR(s_at(json_array_get(msgs, 0), "content", NULL), "Describe images.");
	CHECK_INT(json_array_size(parts), 3);
	CHECK_STR(s_at(json_array_get(parts, 0), "type", NULL), "image_url");
	CHECK_STR(s_at(at(json_array_get(parts, 0), "image_url", NULL), "url", NULL),
	          "data:image/png;base64,iVBORw0KGgo=");
	CHECK_STR(s_at(at(json_array_get(parts, 1), "image_url", NULL), "url", NULL),
	          "https://example.com/cat.jpg");
	CHECK_STR(s_at(json_array_get(parts, 2), "text", NULL), "What are these?");
	json_decref(r);
}

TEST(request_tool_choice_variants)
{
	static const char *const pre = "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":"
		"\"user\",\"content\":\"hi\"}],\"tools\":[{\"name\":\"f\",\"input_schema\":"
		"{\"type\":\"object\"}}],\"tool_choice\":";
	char body[512], err[200];
	json_t *r;

	snprintf(body, sizeof(body), "%s{\"type\":\"any\"}}", pre);
	r = request(body, MSGIN_OK, NULL, err, sizeof(err));
	CHECK_STR(s_at(r, "tool_choice", NULL), "required");
	CHECK(at(r, "parallel_tool_calls", NULL) == NULL);
	json_decref(r);
	snprintf(body, sizeof(body), "%s{\"type\":\"none\",\"disable_parallel_tool_use\":true}}", pre);
	r = request(body, MSGIN_OK, NULL, err, sizeof(err));
	CHECK_STR(s_at(r, "tool_choice", NULL), "none");
	CHECK(at(r, "parallel_tool_calls", NULL) == NULL);
	json_decref(r);
	snprintf(body, sizeof(body), "%s{\"type\":\"tool\",\"name\":\"f\"}}", pre);
	r = request(body, MSGIN_OK, NULL, err, sizeof(err));
	CHECK_STR(s_at(at(r, "tool_choice", NULL), "type", NULL), "function");
	CHECK_STR(s_at(at(r, "tool_choice", NULL), "function", "name"), "f");
	json_decref(r);
	snprintf(body, sizeof(body), "%s{\"type\":\"tool\"}}", pre);
	CHECK(request(body, MSGIN_INVALID, NULL, err, sizeof(err)) == NULL);
	CHECK(strstr(err, "tool_choice") != NULL);
	/* no tools: the choice is dropped */
	r = request("{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":"
	            "\"hi\"}],\"tool_choice\":{\"type\":\"any\"}}", MSGIN_OK, NULL, err, sizeof(err));
	CHECK(at(r, "tool_choice", NULL) == NULL);
	json_decref(r);
}

TEST(request_invalid_shapes_are_refused_with_a_message)
{
	static const struct { const char *body, *want; } cases[] = {
		{ "[1]", "JSON object" },
		{ "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[]}", "messages" },
		{ "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "max_tokens" },
		{ "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}", "role" },
		{ "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"document\"}]}]}", "messages[0].content[0]" },
		{ "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image\",\"source\":{\"type\":\"file\"}}]}]}", "image source" },
		{ "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"a\",\"name\":\"f\",\"input\":3}]}]}", "tool_use" },
		{ "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"web_search_20250305\",\"name\":\"web_search\"}]}", "client tools" },
		{ "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop_sequences\":\"END\"}", "stop_sequences" },
		{ "{\"model\":\"m\",\"max_tokens\":5,\"system\":\"s\",\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"t\"}]}]}", "no user or assistant" },
		{ "{\"model\":\"m\",\"max_tokens\":5,\"system\":7,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "system" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char err[256] = "";

		CHECK(request(cases[i].body, MSGIN_INVALID, NULL, err, sizeof(err)) == NULL);
		if (!strstr(err, cases[i].want))
			fprintf(stderr, "  case %zu: \"%s\" lacks \"%s\"\n", i, err, cases[i].want);
		CHECK(strstr(err, cases[i].want) != NULL);
	}
}

/* ---- answers ---------------------------------------------------------------------- */

static json_t *golden_answer(const char *name, int want_rc, struct anth_usage *u)
{
	size_t n = 0;
	char *in = read_file(name, &n), *out = NULL, err[256];
	size_t out_len = 0;
	json_t *res = NULL;
	int rc;

	CHECK(in != NULL);
	if (!in)
		return json_object();
	rc = msgin_answer(in, n, &out, &out_len, u, err, sizeof(err));
	CHECK_INT(rc, want_rc);
	if (out) {
		res = json_loads(out, 0, NULL);
		CHECK(json_is_object(res));
	}
	free(out);
	free(in);
	return res ? res : json_object();
}

TEST(answer_text_with_cached_usage)
{
	struct anth_usage u;
	json_t *r = golden_answer("answer-text.json", MSGIN_OK, &u), *c = at(r, "content", NULL);

	CHECK_STR(s_at(r, "id", NULL), "chatcmpl-abc");
	CHECK_STR(s_at(r, "type", NULL), "message");
	CHECK_STR(s_at(r, "role", NULL), "assistant");
	CHECK_STR(s_at(r, "model", NULL), "gpt-4o-2024-08-06");
	CHECK_INT(json_array_size(c), 1);
	CHECK_STR(s_at(json_array_get(c, 0), "type", NULL), "text");
	CHECK_STR(s_at(json_array_get(c, 0), "text", NULL), "Hello there!");
	CHECK_STR(s_at(r, "stop_reason", NULL), "end_turn");
	CHECK(json_is_null(at(r, "stop_sequence", NULL)));
	CHECK_INT(i_at(r, "usage", "input_tokens"), 176);
	CHECK_INT(i_at(r, "usage", "output_tokens"), 15);
	CHECK_INT(i_at(r, "usage", "cache_read_input_tokens"), 1024);
	CHECK_INT(i_at(r, "usage", "cache_creation_input_tokens"), 0);
	CHECK(u.found);
	CHECK_INT(u.prompt_tokens, 1200);
	CHECK_INT(u.cached_tokens, 1024);
	CHECK_INT(u.cache_write_tokens, 0);
	CHECK_INT(u.completion_tokens, 15);
	CHECK_INT(u.reasoning_tokens, 0);
	json_decref(r);
}

TEST(answer_tool_calls_become_tool_use_blocks)
{
	struct anth_usage u;
	json_t *r = golden_answer("answer-tools.json", MSGIN_OK, &u), *c = at(r, "content", NULL);
	json_t *b;

	CHECK_INT(json_array_size(c), 2);   /* content null: no text block */
	b = json_array_get(c, 0);
	CHECK_STR(s_at(b, "type", NULL), "tool_use");
	CHECK_STR(s_at(b, "id", NULL), "call_a");
	CHECK_STR(s_at(b, "name", NULL), "get_weather");
	CHECK_STR(s_at(b, "input", "city"), "Paris");
	b = json_array_get(c, 1);
	CHECK_STR(s_at(b, "name", NULL), "get_time");
	CHECK(json_is_object(at(b, "input", NULL)) && json_object_size(at(b, "input", NULL)) == 0);
	CHECK_STR(s_at(r, "stop_reason", NULL), "tool_use");
	CHECK_INT(i_at(r, "usage", "input_tokens"), 80);
	CHECK_INT(i_at(r, "usage", "cache_read_input_tokens"), 0);
	CHECK_INT(u.prompt_tokens, 80);
	CHECK_INT(u.cached_tokens, 0);
	CHECK_INT(u.reasoning_tokens, -1);
	json_decref(r);
}

TEST(answer_length_and_content_filter)
{
	struct anth_usage u;
	json_t *a = golden_answer("answer-length.json", MSGIN_OK, &u);
	json_t *b = golden_answer("answer-content-filter.json", MSGIN_OK, &u);

	CHECK_STR(s_at(a, "stop_reason", NULL), "max_tokens");
	CHECK_STR(s_at(json_array_get(at(a, "content", NULL), 0), "text", NULL), "Once upon a");
	CHECK_STR(s_at(b, "stop_reason", NULL), "refusal");
	CHECK_STR(s_at(json_array_get(at(b, "content", NULL), 0), "text", NULL),
	          "I can't help with that.");
	json_decref(a);
	json_decref(b);
}

TEST(answer_errors_take_anthropics_shape)
{
	struct anth_usage u;
	json_t *a = golden_answer("error-rate-limit.json", MSGIN_UPSTREAM_ERROR, &u);
	json_t *b = golden_answer("error-invalid-key.json", MSGIN_UPSTREAM_ERROR, &u);

	CHECK_STR(s_at(a, "type", NULL), "error");
	CHECK_STR(s_at(a, "error", "type"), "rate_limit_error");
	CHECK_STR(s_at(a, "error", "message"), "Rate limit reached for gpt-4o");
	CHECK_STR(s_at(b, "error", "type"), "authentication_error");
	CHECK(!u.found);
	json_decref(a);
	json_decref(b);
}

TEST(answer_unparsable_arguments_or_garbage_are_invalid)
{
	static const char *const bad[] = {
		"{\"choices\":[{\"message\":{\"content\":null,\"tool_calls\":[{\"id\":\"c\",\"function\":"
		"{\"name\":\"f\",\"arguments\":\"{not json\"}}]},\"finish_reason\":\"tool_calls\"}]}",
		"{\"object\":\"list\"}", "nope", "",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct anth_usage u;
		char *out = (char *)1, err[200] = "";
		size_t n = 7;

		CHECK_INT(msgin_answer(bad[i], strlen(bad[i]), &out, &n, &u, err, sizeof(err)),
		          MSGIN_INVALID);
		CHECK(out == NULL && n == 0 && err[0] != '\0' && !u.found);
	}
}

/* ---- streams ---------------------------------------------------------------------- */

struct run {
	char *out;
	int finish_rc;
	struct anth_usage usage;
	bool failed, stopped;
};

static struct run translate(const char *in, size_t n, size_t piece)
{
	struct msgin_stream s;
	struct run r = { 0 };
	size_t len = 0, cap = 0;

	msgin_stream_init(&s);
	for (size_t off = 0; off < n; off += piece) {
		size_t k = n - off < piece ? n - off : piece;

		CHECK(msgin_stream_feed(&s, in + off, k, &r.out, &len, &cap) >= 0);
	}
	r.finish_rc = msgin_stream_finish(&s, &r.out, &len, &cap);
	r.usage = s.usage;
	r.failed = s.failed;
	r.stopped = s.stopped;
	msgin_stream_free(&s);
	if (!r.out)
		r.out = strdup("");
	return r;
}

/* The events of an output: "event: T\ndata: JSON\n\n", T the data's type. */
static json_t *events_of(const char *out)
{
	json_t *evs = json_array();
	const char *p = out;

	while (*p) {
		const char *nl = strchr(p, '\n'), *end;
		char name[64];
		json_t *ev;

		CHECK(strncmp(p, "event: ", 7) == 0 && nl && (size_t)(nl - p - 7) < sizeof(name));
		if (strncmp(p, "event: ", 7) != 0 || !nl || (size_t)(nl - p - 7) >= sizeof(name))
			break;
		memcpy(name, p + 7, (size_t)(nl - p - 7));
		name[nl - p - 7] = '\0';
		p = nl + 1;
		end = strstr(p, "\n\n");
		CHECK(strncmp(p, "data: ", 6) == 0 && end);
		if (strncmp(p, "data: ", 6) != 0 || !end)
			break;
		ev = json_loadb(p + 6, (size_t)(end - p - 6), 0, NULL);
		CHECK(json_is_object(ev));
		CHECK_STR(s_at(ev, "type", NULL), name);
		json_array_append_new(evs, ev ? ev : json_null());
		p = end + 2;
	}
	return evs;
}

static json_t *golden_stream(const char *name, struct run *whole)
{
	size_t n = 0;
	char *in = read_file(name, &n);
	struct run one, seven;

	CHECK(in != NULL);
	if (!in)
		return json_array();
	*whole = translate(in, n, n ? n : 1);
	one = translate(in, n, 1);
	seven = translate(in, n, 7);
	CHECK_STR(one.out, whole->out);
	CHECK_STR(seven.out, whole->out);
	CHECK_INT(one.finish_rc, whole->finish_rc);
	CHECK_INT(one.usage.prompt_tokens, whole->usage.prompt_tokens);
	free(one.out);
	free(seven.out);
	free(in);
	return events_of(whole->out);
}

/* The event types joined by commas. */
static void types_of(const json_t *evs, char *buf, size_t len)
{
	size_t i, used = 0;
	json_t *ev;

	buf[0] = '\0';
	json_array_foreach(evs, i, ev)
		used += (size_t)snprintf(buf + used, used < len ? len - used : 0, "%s%s",
		                         i ? "," : "", s_at(ev, "type", NULL));
}

TEST(stream_text_holds_message_delta_for_the_usage_chunk)
{
	struct run r;
	json_t *evs = golden_stream("stream-text.sse", &r), *ev;
	char types[1024];

	types_of(evs, types, sizeof(types));
	CHECK_STR(types, "message_start,ping,content_block_start,content_block_delta,"
	          "content_block_delta,content_block_stop,message_delta,message_stop");
	ev = json_array_get(evs, 0);
	CHECK_STR(s_at(at(ev, "message", NULL), "id", NULL), "chatcmpl-s");
	CHECK_STR(s_at(at(ev, "message", NULL), "model", NULL), "gpt-4o");
	CHECK_INT(json_array_size(at(at(ev, "message", NULL), "content", NULL)), 0);
	CHECK_INT(i_at(at(ev, "message", NULL), "usage", "input_tokens"), 0);
	ev = json_array_get(evs, 2);
	CHECK_INT(i_at(ev, "index", NULL), 0);
	CHECK_STR(s_at(ev, "content_block", "type"), "text");
	CHECK_STR(s_at(json_array_get(evs, 3), "delta", "text"), "Hello");
	CHECK_STR(s_at(json_array_get(evs, 4), "delta", "type"), "text_delta");
	CHECK_STR(s_at(json_array_get(evs, 4), "delta", "text"), ", world");
	ev = json_array_get(evs, 6);
	CHECK_STR(s_at(ev, "delta", "stop_reason"), "end_turn");
	CHECK(json_is_null(at(ev, "delta", "stop_sequence")));
	CHECK_INT(i_at(ev, "usage", "input_tokens"), 512);
	CHECK_INT(i_at(ev, "usage", "output_tokens"), 7);
	CHECK_INT(i_at(ev, "usage", "cache_read_input_tokens"), 1536);
	CHECK_INT(i_at(ev, "usage", "cache_creation_input_tokens"), 0);
	CHECK_INT(r.finish_rc, MSGIN_OK);
	CHECK(r.stopped && !r.failed);
	CHECK(r.usage.found);
	CHECK_INT(r.usage.prompt_tokens, 2048);
	CHECK_INT(r.usage.cached_tokens, 1536);
	CHECK_INT(r.usage.completion_tokens, 7);
	free(r.out);
	json_decref(evs);
}

TEST(stream_message_delta_waits_until_usage_even_after_finish_reason)
{
	const char *in = "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":"
		"{\"content\":\"x\"},\"finish_reason\":\"stop\"}]}\n\n";
	struct msgin_stream s;
	char *out = NULL;
	size_t len = 0, cap = 0;

	msgin_stream_init(&s);
	CHECK_INT(msgin_stream_feed(&s, in, strlen(in), &out, &len, &cap), 0);
	CHECK(out && strstr(out, "content_block_stop") && !strstr(out, "message_delta"));
	in = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n";
	CHECK_INT(msgin_stream_feed(&s, in, strlen(in), &out, &len, &cap), MSGIN_STREAM_ENDED);
	CHECK(strstr(out, "\"usage\":{\"input_tokens\":3,\"output_tokens\":1,") != NULL);
	CHECK(strstr(out, "event: message_stop\n") != NULL);
	CHECK_INT(msgin_stream_finish(&s, &out, &len, &cap), MSGIN_OK);
	msgin_stream_free(&s);
	free(out);
}

TEST(stream_two_interleaved_tool_calls_give_two_blocks_with_exact_inputs)
{
	struct run r;
	json_t *evs = golden_stream("stream-tools-parallel.sse", &r), *ev;
	char types[1024], *inputs[2] = { NULL, NULL };
	size_t lens[2] = { 0, 0 }, i;

	types_of(evs, types, sizeof(types));
	CHECK_STR(types, "message_start,ping,content_block_start,content_block_delta,"
	          "content_block_delta,content_block_stop,content_block_start,content_block_delta,"
	          "content_block_stop,message_delta,message_stop");
	ev = json_array_get(evs, 2);
	CHECK_STR(s_at(ev, "content_block", "type"), "tool_use");
	CHECK_STR(s_at(ev, "content_block", "id"), "call_a");
	CHECK_STR(s_at(ev, "content_block", "name"), "get_weather");
	CHECK(json_object_size(at(ev, "content_block", "input")) == 0);
	ev = json_array_get(evs, 6);
	CHECK_INT(i_at(ev, "index", NULL), 1);
	CHECK_STR(s_at(ev, "content_block", "id"), "call_b");
	CHECK_STR(s_at(ev, "content_block", "name"), "get_time");
	json_array_foreach(evs, i, ev) {
		long long idx = i_at(ev, "index", NULL);
		const char *pj = s_at(ev, "delta", "partial_json");

		if (pj && idx >= 0 && idx < 2) {
			inputs[idx] = realloc(inputs[idx], lens[idx] + strlen(pj) + 1);
			memcpy(inputs[idx] + lens[idx], pj, strlen(pj) + 1);
			lens[idx] += strlen(pj);
		}
	}
	CHECK_STR(inputs[0], "{\"city\":\"Paris\"}");
	CHECK_STR(inputs[1], "{\"tz\":\"CET\"}");
	ev = json_array_get(evs, 9);
	CHECK_STR(s_at(ev, "delta", "stop_reason"), "tool_use");
	CHECK_INT(i_at(ev, "usage", "output_tokens"), 40);
	CHECK_INT(i_at(ev, "usage", "input_tokens"), 100);
	free(inputs[0]);
	free(inputs[1]);
	free(r.out);
	json_decref(evs);
}

TEST(stream_done_without_usage_chunk_ends_with_zero_usage)
{
	struct run r;
	json_t *evs = golden_stream("stream-done-no-usage.sse", &r), *ev;
	char types[1024];

	types_of(evs, types, sizeof(types));
	CHECK_STR(types, "message_start,ping,content_block_start,content_block_delta,"
	          "content_block_stop,message_delta,message_stop");
	ev = json_array_get(evs, 5);
	CHECK_STR(s_at(ev, "delta", "stop_reason"), "max_tokens");
	CHECK_INT(i_at(ev, "usage", "output_tokens"), 0);
	CHECK_INT(r.finish_rc, MSGIN_OK);
	CHECK(!r.usage.found);
	free(r.out);
	json_decref(evs);
}

TEST(stream_error_midway_is_an_anthropic_error_event)
{
	struct run r;
	json_t *evs = golden_stream("stream-error.sse", &r), *ev;
	char types[1024];

	types_of(evs, types, sizeof(types));
	CHECK_STR(types, "message_start,ping,content_block_start,content_block_delta,error");
	ev = json_array_get(evs, 4);
	CHECK_STR(s_at(ev, "error", "type"), "overloaded_error");
	CHECK_STR(s_at(ev, "error", "message"), "The server is overloaded");
	CHECK_INT(r.finish_rc, MSGIN_OK);
	CHECK(r.failed);
	free(r.out);
	json_decref(evs);
}

TEST(stream_cut_short_is_truncated_with_an_error_event)
{
	struct run r;
	json_t *evs = golden_stream("stream-truncated.sse", &r), *ev;
	char types[1024];

	types_of(evs, types, sizeof(types));
	CHECK_STR(types, "message_start,ping,content_block_start,content_block_delta,"
	          "content_block_stop,error");
	ev = json_array_get(evs, 5);
	CHECK_STR(s_at(ev, "error", "type"), "api_error");
	CHECK_INT(r.finish_rc, MSGIN_TRUNCATED);
	CHECK(r.failed && !r.stopped);
	free(r.out);
	json_decref(evs);
}

TEST(stream_garbage_gives_one_clean_error_and_oversized_events_are_refused)
{
	struct run r = translate("data: {nope\n\ndata: [DONE]\n\n", 27, 1);
	json_t *evs = events_of(r.out);
	char *big;
	size_t n = MSGIN_MAX_EVENT + 100;

	CHECK_INT(json_array_size(evs), 1);
	CHECK_STR(s_at(json_array_get(evs, 0), "error", "type"), "api_error");
	CHECK_INT(r.finish_rc, MSGIN_OK);
	json_decref(evs);
	free(r.out);
	big = malloc(n);
	memset(big, 'a', n);
	memcpy(big, "data: ", 6);
	r = translate(big, n, 4096);
	CHECK(strstr(r.out, "larger than 1 MiB") != NULL);
	CHECK(r.failed);
	free(r.out);
	free(big);
}

TEST(stream_text_after_a_tool_call_is_held_and_sent_after_the_tool_blocks)
{
	const char *in =
		"data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"A\"}}]}\n\n"
		"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"t\","
		"\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}}]}\n\n"
		"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"B\"},\"finish_reason\":\"tool_calls\"}]}\n\n"
		"data: [DONE]\n\n";
	struct run r = translate(in, strlen(in), 1), w = translate(in, strlen(in), strlen(in));
	json_t *evs = events_of(r.out);
	char types[1024];

	CHECK_STR(r.out, w.out);
	types_of(evs, types, sizeof(types));
	CHECK_STR(types, "message_start,ping,content_block_start,content_block_delta,"
	          "content_block_stop,content_block_start,content_block_delta,content_block_stop,"
	          "content_block_start,content_block_delta,content_block_stop,message_delta,"
	          "message_stop");
	CHECK_STR(s_at(json_array_get(evs, 5), "content_block", "type"), "tool_use");
	CHECK_STR(s_at(json_array_get(evs, 6), "delta", "partial_json"), "{}");
	CHECK_INT(i_at(json_array_get(evs, 8), "index", NULL), 2);
	CHECK_STR(s_at(json_array_get(evs, 9), "delta", "text"), "B");
	CHECK_STR(s_at(json_array_get(evs, 11), "delta", "stop_reason"), "tool_use");
	json_decref(evs);
	free(r.out);
	free(w.out);
}

RUN_TESTS()
