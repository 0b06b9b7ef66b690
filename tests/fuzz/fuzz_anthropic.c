/* Fuzz target: the provider: anthropic codec (fastgated/anthropic.c).
 *
 * Whatever an upstream sends, the client must get either a valid OpenAI answer or a clean
 * error, and a stream must always be terminated. The input is read three ways:
 *  - as an Anthropic SSE stream, fed whole and in data-derived pieces (some empty): the
 *    output is the same for every cut; it is a sequence of "data: X\n\n" events, each X a
 *    JSON object or [DONE]; exactly the last event is [DONE] or an {"error":...} object;
 *    an [DONE] comes only after a chunk with a finish_reason; finish says ANTH_TRUNCATED
 *    exactly when it had to write the error event itself;
 *  - as a whole Anthropic answer: a chat.completion (ANTH_OK) or an {"error":...}
 *    (ANTH_UPSTREAM_ERROR), valid JSON either way, or ANTH_INVALID with a message and no
 *    output;
 *  - as a client's OpenAI request: a JSON object with model, max_tokens and a non-empty
 *    messages array whose roles are user/assistant, or ANTH_INVALID with a message. */
#include <stdbool.h>
#include <string.h>

#include <jansson.h>

#include "anthropic.h"
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

static void run_stream(const uint8_t *data, size_t size, bool include_usage, int pieces,
                       uint64_t seed, struct out *o)
{
	struct anth_stream s;
	size_t off = 0;
	int rc = 0, before_end = 0;

	memset(o, 0, sizeof(*o));
	anth_stream_init(&s, include_usage, 1700000000L);
	for (int i = 0; off < size || i == 0; i++) {
		size_t n = size - off;

		if (pieces > 1 && i < 4 * pieces)
			n = (size_t)(fuzz_next(&seed) % (size / (size_t)pieces + 2));
		if (n > size - off)
			n = size - off;
		rc = anth_stream_feed(&s, (const char *)data + off, n, &o->buf, &o->len, &o->cap);
		FUZZ_CHECK(rc == 0 || rc == ANTH_STREAM_ENDED, "feed returned %d", rc);
		FUZZ_CHECK(!before_end || rc == ANTH_STREAM_ENDED, "a stream that ended started again");
		before_end = rc == ANTH_STREAM_ENDED;
		off += n;
		if (off == size && i > 0)
			break;
	}
	o->finish_rc = anth_stream_finish(&s, &o->buf, &o->len, &o->cap);
	FUZZ_CHECK(o->finish_rc == ANTH_OK || o->finish_rc == ANTH_TRUNCATED, "finish returned %d",
	           o->finish_rc);
	FUZZ_CHECK(o->finish_rc == ANTH_OK || !before_end, "truncated after the stream had ended");
	FUZZ_CHECK(s.in.line_cap <= 2 * ANTH_MAX_EVENT && s.in.data_cap <= 2 * ANTH_MAX_EVENT,
	           "held more than an event's worth");
	o->failed = s.failed;
	o->stopped = s.stopped;
	o->prompt = s.usage.prompt_tokens;
	o->completion = s.usage.completion_tokens;
	anth_stream_free(&s);
}

/* The output's shape: "data: X\n\n" events, X JSON or [DONE], the last the only end. */
static void check_events(const struct out *o)
{
	const char *p = o->buf, *end = o->buf + o->len;
	bool finished = false, last_is_end = false;
	int ends = 0;

	FUZZ_CHECK(o->len > 0, "no output: the stream was not terminated");
	while (p < end) {
		const char *ev_end;
		size_t n;
		json_t *v;

		FUZZ_CHECK(end - p >= 8 && memcmp(p, "data: ", 6) == 0, "an event not starting with data:");
		ev_end = memmem(p + 6, (size_t)(end - p - 6), "\n\n", 2);
		FUZZ_CHECK(ev_end != NULL, "an event not closed by a blank line");
		n = (size_t)(ev_end - p - 6);
		FUZZ_CHECK(ends == 0, "an event after the stream's end");
		if (n == 6 && memcmp(p + 6, "[DONE]", 6) == 0) {
			FUZZ_CHECK(finished, "[DONE] without a finish_reason before it");
			FUZZ_CHECK(o->stopped && !o->failed, "[DONE] but the translator says otherwise");
			ends++;
			last_is_end = true;
		} else {
			json_t *choices, *c;
			size_t i;

			FUZZ_CHECK(memchr(p + 6, '\n', n) == NULL, "a line break inside an event's JSON");
			v = json_loadb(p + 6, n, 0, NULL);
			FUZZ_CHECK(json_is_object(v), "an event whose data is not a JSON object");
			if (json_object_get(v, "error")) {
				FUZZ_CHECK(json_is_string(json_object_get(json_object_get(v, "error"), "message")),
				           "an error without a message");
				FUZZ_CHECK(o->failed, "an error event the translator does not report");
				ends++;
				last_is_end = true;
			} else {
				FUZZ_CHECK(json_is_string(json_object_get(v, "id")) &&
				           json_is_string(json_object_get(v, "model")),
				           "a chunk without id or model");
				choices = json_object_get(v, "choices");
				FUZZ_CHECK(json_is_array(choices), "a chunk without choices");
				json_array_foreach(choices, i, c) {
					json_t *fr = json_object_get(c, "finish_reason");

					FUZZ_CHECK(json_is_object(json_object_get(c, "delta")), "a choice without delta");
					if (json_is_string(fr)) {
						FUZZ_CHECK(!finished, "two finish reasons");
						finished = true;
					}
				}
			}
			json_decref(v);
		}
		p = ev_end + 2;
	}
	FUZZ_CHECK(last_is_end && ends == 1, "the stream does not end with [DONE] or one error");
	if (o->finish_rc == ANTH_TRUNCATED)
		FUZZ_CHECK(o->failed && !o->stopped && strstr(o->buf, "\"stream_truncated\"") != NULL,
		           "truncation reported without its error event");
}

static void check_answer(const uint8_t *data, size_t size)
{
	char *out = NULL, err[200];
	size_t len = 0;
	struct anth_usage u;
	int rc = anth_answer((const char *)data, size, 1700000000L, &out, &len, &u, err, sizeof(err));
	json_t *v;

	FUZZ_CHECK(rc == ANTH_OK || rc == ANTH_UPSTREAM_ERROR || rc == ANTH_INVALID, "answer rc %d", rc);
	if (rc == ANTH_INVALID) {
		FUZZ_CHECK(out == NULL && len == 0 && err[0] && !u.found, "a refused answer with output");
		return;
	}
	FUZZ_CHECK(out && strlen(out) == len, "answer output length");
	v = json_loadb(out, len, 0, NULL);
	FUZZ_CHECK(json_is_object(v), "answer output is not a JSON object");
	if (rc == ANTH_OK) {
		json_t *c = json_array_get(json_object_get(v, "choices"), 0);

		FUZZ_CHECK(json_is_object(json_object_get(c, "message")) &&
		           json_is_string(json_object_get(c, "finish_reason")) &&
		           json_is_object(json_object_get(v, "usage")), "a chat.completion missing parts");
		FUZZ_CHECK(!u.found || (u.prompt_tokens >= 0 && u.completion_tokens >= 0 &&
		           u.cached_tokens <= u.prompt_tokens), "usage out of range");
	} else {
		FUZZ_CHECK(json_is_string(json_object_get(json_object_get(v, "error"), "message")),
		           "an error answer without a message");
	}
	json_decref(v);
	free(out);
}

static void check_request(const uint8_t *data, size_t size, uint64_t *seed)
{
	struct anth_req_opts o = {
		.model = fuzz_next(seed) & 1 ? "claude-x" : NULL,
		.default_max_tokens = (long)(fuzz_next(seed) % 3),
		.stream = fuzz_next(seed) & 1,
	};
	char *out = NULL, err[200];
	size_t len = 0, i;
	int rc = anth_request(&o, (const char *)data, size, &out, &len, err, sizeof(err));
	json_t *v, *msgs, *m;

	FUZZ_CHECK(rc == ANTH_OK || rc == ANTH_INVALID, "request rc %d", rc);
	if (rc == ANTH_INVALID) {
		FUZZ_CHECK(out == NULL && len == 0 && err[0], "a refused request with output");
		return;
	}
	FUZZ_CHECK(out && strlen(out) == len, "request output length");
	v = json_loadb(out, len, 0, NULL);
	msgs = json_object_get(v, "messages");
	FUZZ_CHECK(json_is_string(json_object_get(v, "model")) &&
	           json_is_integer(json_object_get(v, "max_tokens")) && json_array_size(msgs) > 0,
	           "a translated request missing model, max_tokens or messages");
	FUZZ_CHECK(json_is_true(json_object_get(v, "stream")) == o.stream, "stream flag");
	json_array_foreach(msgs, i, m) {
		const char *role = json_string_value(json_object_get(m, "role"));
		const char *prev = i ? json_string_value(json_object_get(json_array_get(msgs, i - 1), "role")) : "";

		FUZZ_CHECK(role && (strcmp(role, "user") == 0 || strcmp(role, "assistant") == 0),
		           "a role Anthropic does not know");
		FUZZ_CHECK(strcmp(role, prev) != 0, "two messages of the same role in a row");
		FUZZ_CHECK(json_array_size(json_object_get(m, "content")) > 0, "a message without blocks");
	}
	json_decref(v);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t seed = fuzz_hash(data, size) | 1;
	bool include_usage = fuzz_next(&seed) & 1;
	struct out whole, split;

	run_stream(data, size, include_usage, 1, 0, &whole);
	run_stream(data, size, include_usage, 2 + (int)(fuzz_next(&seed) % 8), fuzz_next(&seed), &split);
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
