/* Usage extraction from JSON answers and SSE streams, and the usage-chunk stripping. */
#include <stdlib.h>

#include <jansson.h>

#include "unit.h"
#include "usage.h"

static const char stream_with_usage[] =
	"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"
	"data: {\"choices\":[{\"delta\":{\"content\":\" there\"}}]}\r\n\r\n"
	"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\n"
	"data: [DONE]\n\n";

static char *run_scan(bool strip, size_t piece, struct usage *u)
{
	struct sse_scan s;
	char *out = NULL;
	size_t len = 0, cap = 0, n = strlen(stream_with_usage);

	sse_scan_init(&s, strip);
	for (size_t off = 0; off < n; off += piece) {
		size_t k = n - off < piece ? n - off : piece;
		CHECK_INT(sse_scan_feed(&s, stream_with_usage + off, k, &out, &len, &cap), 0);
	}
	CHECK_INT(sse_scan_finish(&s, &out, &len, &cap), 0);
	*u = s.usage;
	sse_scan_free(&s);
	out = realloc(out, len + 1);
	out[len] = '\0';
	return out;
}

TEST(usage_is_read_from_a_json_answer)
{
	struct usage u;
	const char *b = "{\"id\":\"x\",\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5}}";
	CHECK(usage_from_json(b, strlen(b), &u));
	CHECK_INT(u.prompt_tokens, 12);
	CHECK_INT(u.completion_tokens, 5);
	CHECK(!usage_from_json("{\"id\":1}", 8, &u));
	CHECK(!usage_from_json("not json \"usage\"", 16, &u));
}

/* The tail fast path must agree with the full walk: a "usage" that is not a top-level
 * member, or that sits in a string, is not taken from the tail. */
TEST(usage_at_the_tail_is_taken_only_when_it_is_a_top_level_member)
{
	static const struct { const char *json; bool found; long prompt, completion; } cases[] = {
		{ "{\"id\":\"x\",\"usage\" : {\"prompt_tokens\":3,\"completion_tokens\":4} }\n", true, 3, 4 },
		/* nested in another member, last in the text */
		{ "{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2},\"z\":{\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":9}}}", true, 1, 2 },
		/* only nested: no top-level usage at all */
		{ "{\"z\":{\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":9}}}", false, -1, -1 },
		/* a key that merely ends in an escaped quote and "usage" */
		{ "{\"a\\\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":9}}", false, -1, -1 },
		/* usage first, other members after it */
		{ "{\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6},\"id\":\"x\"}", true, 5, 6 },
		/* the string "usage" as a value */
		{ "{\"m\":\"usage\",\"n\":1}", false, -1, -1 },
		/* trailing bytes after the document: not the tail path, the full walk finds it */
		{ "{\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}x", true, 5, 6 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct usage u;
		bool f = usage_from_json(cases[i].json, strlen(cases[i].json), &u);
		if (f != cases[i].found)
			fprintf(stderr, "  case %zu: found=%d\n", i, f);
		CHECK_INT(f, cases[i].found);
		CHECK_INT(u.prompt_tokens, cases[i].prompt);
		CHECK_INT(u.completion_tokens, cases[i].completion);
	}
}

/* Only a chunk that is JSON to any parser is taken for a usage chunk and stripped: these
 * look like one to a lenient scanner, but are not JSON (found by fuzzing against jansson). */
TEST(an_event_that_is_not_strict_json_is_never_stripped)
{
	static const char *const events[] = {
		"data: {\"choices\":[],\"usage\":{\"pr\x8d\x92pt_tokens\":3}}\n\n",    /* invalid UTF-8 */
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2}}%\r%\n\n",      /* bytes after it */
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":06}}\n\n",          /* leading zero */
		"data: {\"choices\":[],\"usage\":{\"p\":66666666666666666666666}}\n\n", /* too big */
		"data: {\"choices\":[],\"usage\":{\"p\":\"\\ud800\"}}\n\n",           /* lone surrogate */
		"data: {\"choices\":[],\"usage\":{\"p\":\"\\x\"}}\n\n",               /* bad escape */
	};
	for (size_t i = 0; i < sizeof(events) / sizeof(events[0]); i++) {
		struct sse_scan sc;
		char *out = NULL;
		size_t len = 0, cap = 0, n = strlen(events[i]);

		sse_scan_init(&sc, true);
		CHECK_INT(sse_scan_feed(&sc, events[i], n, &out, &len, &cap), 0);
		CHECK_INT(sse_scan_finish(&sc, &out, &len, &cap), 0);
		if (len != n)
			fprintf(stderr, "  event %zu was stripped\n", i);
		CHECK_INT(len, n);
		sse_scan_free(&sc);
		free(out);
	}
	/* and a valid one still is */
	{
		const char *ok = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"x\":\"\\ud83d\\ude00\u00e9\",\"r\":1.5e3}}\n\n";
		struct sse_scan sc;
		char *out = NULL;
		size_t len = 0, cap = 0;

		sse_scan_init(&sc, true);
		CHECK_INT(sse_scan_feed(&sc, ok, strlen(ok), &out, &len, &cap), 0);
		CHECK_INT(sse_scan_finish(&sc, &out, &len, &cap), 0);
		CHECK_INT(len, 0);
		CHECK_INT(sc.usage.prompt_tokens, 2);
		sse_scan_free(&sc);
		free(out);
	}
}

TEST(stream_usage_is_found_in_any_split_and_passed_unchanged)
{
	for (size_t piece = 1; piece < 40; piece += 3) {
		struct usage u;
		char *out = run_scan(false, piece, &u);
		CHECK_STR(out, stream_with_usage);
		CHECK(u.found);
		CHECK_INT(u.prompt_tokens, 7);
		CHECK_INT(u.completion_tokens, 3);
		free(out);
	}
}

TEST(stripping_removes_only_the_usage_chunk)
{
	struct usage u;
	char *out = run_scan(true, 5, &u);
	CHECK(strstr(out, "usage") == NULL);
	CHECK(strstr(out, "\" there\"") != NULL);
	CHECK(strstr(out, "data: [DONE]\n\n") != NULL);
	CHECK_INT(u.completion_tokens, 3);
	free(out);
}

TEST(usage_mentioned_inside_a_string_is_not_usage)
{
	struct usage u;
	const char *b = "{\"choices\":[{\"message\":{\"content\":\"the \\\"usage\\\": {\\\"prompt_tokens\\\": 9}\"}}]}";
	CHECK(!usage_from_json(b, strlen(b), &u));
	const char *late = "{\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}";
	CHECK(usage_from_json(late, strlen(late), &u));
	CHECK_INT(u.prompt_tokens, 3);
}

TEST(an_endless_event_is_not_held_forever)
{
	struct sse_scan s;
	char *out = NULL, *junk = malloc(2 * 1024 * 1024);
	size_t len = 0, cap = 0;

	memset(junk, 'a', 2 * 1024 * 1024);
	sse_scan_init(&s, true);
	CHECK_INT(sse_scan_feed(&s, junk, 2 * 1024 * 1024, &out, &len, &cap), 0);
	CHECK_INT(len, 2 * 1024 * 1024);
	CHECK_INT(s.len, 0);
	sse_scan_free(&s);
	free(out);
	free(junk);
}

/* true when the events of s hold content; *held = bytes found content-free */
static bool first_content(const char *s, size_t *held)
{
	*held = 0;
	return sse_first_content(s, strlen(s), held);
}

TEST(a_streams_leading_events_without_content_are_told_apart)
{
	size_t held;
	const char *role = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
	                   "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n";
	char buf[1024];

	/* comments, pings, the role-only chunk, Anthropic's openers: no content */
	CHECK(!first_content(": ping\n\n", &held) && held == 8);
	CHECK(!first_content(role, &held) && held == strlen(role));
	CHECK(!first_content("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n"
	                     "event: ping\ndata: {\"type\": \"ping\"}\n\n", &held));
	CHECK(!first_content("data: {\"type\":\"content_block_start\",\"index\":0,"
	                     "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\n", &held));
	/* an incomplete event is not looked at yet */
	CHECK(!first_content("data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n", &held) &&
	      held == 0);
	/* content of every kind */
	snprintf(buf, sizeof(buf), "%sdata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n", role);
	CHECK(first_content(buf, &held) && held == strlen(role));
	CHECK(first_content("data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n", &held));
	CHECK(first_content("data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"hm\"}}]}\n\n", &held));
	CHECK(first_content("data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n", &held));
	CHECK(first_content("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n", &held));
	CHECK(first_content("data: {\"error\":{\"message\":\"x\"}}\n\n", &held));
	CHECK(first_content("data: [DONE]\n\n", &held));
	CHECK(first_content("data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"a\"}}\n\n", &held));
	/* what it does not understand it does not sit on */
	CHECK(first_content("data: not json\n\n", &held));
	CHECK(first_content("data: {\"whatever\":1}\n\n", &held));
	CHECK(first_content("data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]} x\n\n", &held));
}

RUN_TESTS()
