/* Fuzz target: the messages_in codec (fastgated/messages_in.c): an Anthropic client in
 * front of an OpenAI upstream.
 *
 * Whatever the upstream sends, the client must get valid Anthropic events or a clean
 * error, and a stream must always be terminated. The input is read three ways:
 *  - as an OpenAI SSE stream, fed whole and in data-derived pieces (some empty): the output
 *    is the same for every cut; it is a sequence of "event: T\ndata: JSON\n\n" with T the
 *    JSON's type; message_start comes first (unless the stream fails at once), content
 *    blocks are numbered 0, 1, 2... and each delta goes to the open block of its kind;
 *    the last event, and only it, is message_stop (after message_delta) or error;
 *    finish says MSGIN_TRUNCATED exactly when it had to write the error event itself;
 *  - as a whole OpenAI answer: an Anthropic message (MSGIN_OK) or error
 *    (MSGIN_UPSTREAM_ERROR), valid JSON either way, or MSGIN_INVALID with a message;
 *  - as a client's Anthropic request: an OpenAI chat request with model, max_tokens and
 *    messages of known roles, or MSGIN_INVALID with a message. */
#include <stdbool.h>
#include <string.h>

#include <jansson.h>

#include "messages_in.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	json_object_seed(1);
	return 0;
}

struct out {
	char *buf;
	size_t len, cap;
	int finish_rc;
	bool failed, stopped;
	long prompt, completion;
};

static void run_stream(const uint8_t *data, size_t size, int pieces, uint64_t seed, struct out *o)
{
	struct msgin_stream s;
	size_t off = 0;
	int rc = 0, before_end = 0;

	memset(o, 0, sizeof(*o));
	msgin_stream_init(&s);
	for (int i = 0; off < size || i == 0; i++) {
		size_t n = size - off;

		if (pieces > 1 && i < 4 * pieces)
			n = (size_t)(fuzz_next(&seed) % (size / (size_t)pieces + 2));
		if (n > size - off)
			n = size - off;
		rc = msgin_stream_feed(&s, (const char *)data + off, n, &o->buf, &o->len, &o->cap);
		FUZZ_CHECK(rc == 0 || rc == MSGIN_STREAM_ENDED, "feed returned %d", rc);
		FUZZ_CHECK(!before_end || rc == MSGIN_STREAM_ENDED, "a stream that ended started again");
		before_end = rc == MSGIN_STREAM_ENDED;
		off += n;
		if (off == size && i > 0)
			break;
	}
	o->finish_rc = msgin_stream_finish(&s, &o->buf, &o->len, &o->cap);
	FUZZ_CHECK(o->finish_rc == MSGIN_OK || o->finish_rc == MSGIN_TRUNCATED, "finish returned %d",
	           o->finish_rc);
	FUZZ_CHECK(o->finish_rc == MSGIN_OK || !before_end, "truncated after the stream had ended");
	FUZZ_CHECK(s.in.line_cap <= 2 * MSGIN_MAX_EVENT && s.in.data_cap <= 2 * MSGIN_MAX_EVENT &&
	           s.held <= MSGIN_MAX_EVENT, "held more than an event's worth");
	o->failed = s.failed;
	o->stopped = s.stopped;
	o->prompt = s.usage.prompt_tokens;
	o->completion = s.usage.completion_tokens;
	msgin_stream_free(&s);
}

static bool is(const char *s, const char *v)
{
	return s && strcmp(s, v) == 0;
}

/* The output's grammar (see the top of this file). */
static void check_events(const struct out *o)
{
	const char *p = o->buf, *end = o->buf + o->len;
	bool started = false, delta_sent = false, ended = false;
	long next_block = 0, open = -1;
	const char *open_kind = NULL;   /* "text" or "tool_use": static strings */

	FUZZ_CHECK(o->len > 0, "no output: the stream was not terminated");
	while (p < end) {
		const char *nl, *ev_end, *type;
		size_t tlen, n;
		json_t *v;

		FUZZ_CHECK(!ended, "an event after the stream's end");
		FUZZ_CHECK(end - p > 7 && memcmp(p, "event: ", 7) == 0, "an event not starting with event:");
		nl = memchr(p, '\n', (size_t)(end - p));
		FUZZ_CHECK(nl != NULL, "an event line without its end");
		tlen = (size_t)(nl - p - 7);
		FUZZ_CHECK(end - nl > 6 && memcmp(nl + 1, "data: ", 6) == 0, "no data line");
		ev_end = memmem(nl + 7, (size_t)(end - nl - 7), "\n\n", 2);
		FUZZ_CHECK(ev_end != NULL, "an event not closed by a blank line");
		n = (size_t)(ev_end - nl - 7);
		FUZZ_CHECK(memchr(nl + 7, '\n', n) == NULL, "a line break inside an event's JSON");
		v = json_loadb(nl + 7, n, 0, NULL);
		FUZZ_CHECK(json_is_object(v), "an event whose data is not a JSON object");
		type = json_string_value(json_object_get(v, "type"));
		FUZZ_CHECK(type && strlen(type) == tlen && memcmp(type, p + 7, tlen) == 0,
		           "the event name is not the data's type");
		if (is(type, "error")) {
			json_t *e = json_object_get(v, "error");

			FUZZ_CHECK(json_is_string(json_object_get(e, "type")) &&
			           json_is_string(json_object_get(e, "message")), "an error without type and message");
			FUZZ_CHECK(o->failed, "an error event the translator does not report");
			ended = true;
		} else if (is(type, "message_start")) {
			FUZZ_CHECK(!started, "two message_start");
			FUZZ_CHECK(json_is_string(json_object_get(json_object_get(v, "message"), "id")),
			           "message_start without an id");
			started = true;
		} else {
			json_t *idx = json_object_get(v, "index");

			FUZZ_CHECK(started, "%s before message_start", type);
			FUZZ_CHECK(!delta_sent || is(type, "message_stop"), "an event after message_delta");
			if (is(type, "content_block_start")) {
				FUZZ_CHECK(open < 0, "a block started while another is open");
				FUZZ_CHECK(json_integer_value(idx) == next_block, "block numbers out of order");
				open = next_block++;
				const char *kind = json_string_value(json_object_get(json_object_get(v, "content_block"), "type"));

				FUZZ_CHECK(is(kind, "text") || is(kind, "tool_use"), "a block of kind %s",
				           kind ? kind : "(none)");
				open_kind = is(kind, "text") ? "text" : "tool_use";
			} else if (is(type, "content_block_delta")) {
				const char *dt = json_string_value(json_object_get(json_object_get(v, "delta"), "type"));

				FUZZ_CHECK(open >= 0 && json_integer_value(idx) == open, "a delta for no open block");
				FUZZ_CHECK(is(open_kind, "text") ? is(dt, "text_delta") : is(dt, "input_json_delta"),
				           "a %s delta in a %s block", dt ? dt : "(none)", open_kind);
			} else if (is(type, "content_block_stop")) {
				FUZZ_CHECK(open >= 0 && json_integer_value(idx) == open, "a stop for no open block");
				open = -1;
			} else if (is(type, "message_delta")) {
				json_t *u = json_object_get(v, "usage");

				FUZZ_CHECK(open < 0, "message_delta with a block open");
				FUZZ_CHECK(json_is_string(json_object_get(json_object_get(v, "delta"), "stop_reason")),
				           "message_delta without a stop_reason");
				FUZZ_CHECK(json_integer_value(json_object_get(u, "input_tokens")) >= 0 &&
				           json_is_integer(json_object_get(u, "output_tokens")),
				           "message_delta without usage");
				delta_sent = true;
			} else if (is(type, "message_stop")) {
				FUZZ_CHECK(delta_sent, "message_stop without message_delta");
				FUZZ_CHECK(o->stopped && !o->failed, "message_stop the translator does not report");
				ended = true;
			} else {
				FUZZ_CHECK(is(type, "ping"), "an unknown event %s", type);
			}
		}
		json_decref(v);
		p = ev_end + 2;
	}
	FUZZ_CHECK(ended, "the stream does not end with message_stop or an error");
	if (o->finish_rc == MSGIN_TRUNCATED)
		FUZZ_CHECK(o->failed && !o->stopped && strstr(o->buf, "ended early") != NULL,
		           "truncation reported without its error event");
}

static void check_answer(const uint8_t *data, size_t size)
{
	char *out = NULL, err[200];
	size_t len = 0;
	struct anth_usage u;
	int rc = msgin_answer((const char *)data, size, &out, &len, &u, err, sizeof(err));
	json_t *v;

	FUZZ_CHECK(rc == MSGIN_OK || rc == MSGIN_UPSTREAM_ERROR || rc == MSGIN_INVALID, "answer rc %d", rc);
	if (rc == MSGIN_INVALID) {
		FUZZ_CHECK(out == NULL && len == 0 && err[0] && !u.found, "a refused answer with output");
		return;
	}
	FUZZ_CHECK(out && strlen(out) == len, "answer output length");
	v = json_loadb(out, len, 0, NULL);
	FUZZ_CHECK(json_is_object(v), "answer output is not a JSON object");
	if (rc == MSGIN_OK) {
		json_t *usage = json_object_get(v, "usage");

		FUZZ_CHECK(is(json_string_value(json_object_get(v, "type")), "message") &&
		           json_is_array(json_object_get(v, "content")) &&
		           json_is_string(json_object_get(v, "stop_reason")) &&
		           json_integer_value(json_object_get(usage, "input_tokens")) >= 0,
		           "a message missing parts");
		FUZZ_CHECK(!u.found || (u.prompt_tokens >= 0 && u.completion_tokens >= 0 &&
		           u.cached_tokens <= u.prompt_tokens), "usage out of range");
	} else {
		FUZZ_CHECK(is(json_string_value(json_object_get(v, "type")), "error") &&
		           json_is_string(json_object_get(json_object_get(v, "error"), "message")),
		           "an error answer without a message");
	}
	json_decref(v);
	free(out);
}

static void check_request(const uint8_t *data, size_t size, uint64_t *seed)
{
	struct msgin_req_opts o = { .model = fuzz_next(seed) & 1 ? "gpt-x" : NULL };
	char *out = NULL, err[200];
	size_t len = 0, i;
	bool stream = false;
	int rc = msgin_request(&o, (const char *)data, size, &out, &len, &stream, err, sizeof(err));
	json_t *v, *msgs, *m;

	FUZZ_CHECK(rc == MSGIN_OK || rc == MSGIN_INVALID, "request rc %d", rc);
	if (rc == MSGIN_INVALID) {
		FUZZ_CHECK(out == NULL && len == 0 && err[0] && !stream, "a refused request with output");
		return;
	}
	FUZZ_CHECK(out && strlen(out) == len, "request output length");
	v = json_loadb(out, len, 0, NULL);
	msgs = json_object_get(v, "messages");
	FUZZ_CHECK(json_is_string(json_object_get(v, "model")) &&
	           json_is_integer(json_object_get(v, "max_tokens")) && json_array_size(msgs) > 0,
	           "a translated request missing model, max_tokens or messages");
	FUZZ_CHECK(json_is_true(json_object_get(v, "stream")) == stream &&
	           json_is_true(json_object_get(json_object_get(v, "stream_options"), "include_usage")) == stream,
	           "stream flag");
	json_array_foreach(msgs, i, m) {
		const char *role = json_string_value(json_object_get(m, "role"));

		FUZZ_CHECK(is(role, "system") || is(role, "user") || is(role, "assistant") || is(role, "tool"),
		           "a role OpenAI does not know");
		FUZZ_CHECK(!is(role, "system") || i == 0, "a system message not first");
		FUZZ_CHECK(!is(role, "tool") || json_is_string(json_object_get(m, "tool_call_id")),
		           "a tool message without tool_call_id");
	}
	json_decref(v);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t seed = fuzz_hash(data, size) | 1;
	struct out whole, split;

	run_stream(data, size, 1, 0, &whole);
	run_stream(data, size, 2 + (int)(fuzz_next(&seed) % 8), fuzz_next(&seed), &split);
	FUZZ_CHECK(split.len == whole.len && memcmp(split.buf, whole.buf, whole.len) == 0,
	           "stream output depends on how it was cut (%zu vs %zu bytes)", split.len, whole.len);
	FUZZ_CHECK(split.finish_rc == whole.finish_rc && split.prompt == whole.prompt &&
	           split.completion == whole.completion, "stream result depends on the cuts");
	check_events(&whole);
	free(whole.buf);
	free(split.buf);

	check_answer(data, size);
	check_request(data, size, &seed);
	return 0;
}
