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

/* ---- the normalised counts: OpenAI's details objects ---- */

/* A usage object as OpenAI sends it (and what it may look like in other hands), and the
 * counts it gives: prompt, completion, cached, cache write, reasoning; -1 = unknown. */
static const struct usage_case {
	const char *usage;
	long p, c, cached, cw, r;
} usage_cases[] = {
	/* no details objects (older models, many OpenAI-compatible servers) */
	{ "{\"prompt_tokens\":19,\"completion_tokens\":10,\"total_tokens\":29}", 19, 10, -1, -1, -1 },
	/* the full shape of a reasoning model's answer with a cache hit */
	{ "{\"prompt_tokens\":2006,\"completion_tokens\":300,\"total_tokens\":2306,"
	  "\"prompt_tokens_details\":{\"cached_tokens\":1920,\"audio_tokens\":0},"
	  "\"completion_tokens_details\":{\"reasoning_tokens\":192,\"audio_tokens\":0,"
	  "\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}",
	  2006, 300, 1920, -1, 192 },
	/* none cached, none spent reasoning: 0 is known, not unknown */
	{ "{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21,"
	  "\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},"
	  "\"completion_tokens_details\":{\"reasoning_tokens\":0}}", 9, 12, 0, -1, 0 },
	/* details first, counts after */
	{ "{\"completion_tokens_details\":{\"reasoning_tokens\":64},\"prompt_tokens_details\":"
	  "{\"cached_tokens\":1024},\"prompt_tokens\":1200,\"completion_tokens\":80}",
	  1200, 80, 1024, -1, 64 },
	/* null details objects, null counts, empty objects */
	{ "{\"prompt_tokens\":5,\"completion_tokens\":6,\"prompt_tokens_details\":null,"
	  "\"completion_tokens_details\":null}", 5, 6, -1, -1, -1 },
	{ "{\"prompt_tokens\":5,\"completion_tokens\":6,\"prompt_tokens_details\":"
	  "{\"cached_tokens\":null,\"audio_tokens\":null},\"completion_tokens_details\":"
	  "{\"reasoning_tokens\":null}}", 5, 6, -1, -1, -1 },
	{ "{\"prompt_tokens\":5,\"completion_tokens\":6,\"prompt_tokens_details\":{},"
	  "\"completion_tokens_details\":{}}", 5, 6, -1, -1, -1 },
	/* other members around the count, nested values with the same names are not it */
	{ "{\"prompt_tokens\":50,\"completion_tokens\":7,\"prompt_tokens_details\":"
	  "{\"audio_tokens\":0,\"x\":{\"cached_tokens\":999},\"y\":[{\"cached_tokens\":998}],"
	  "\"note\":\"cached_tokens\",\"cached_tokens\":40,\"z\":true},\"completion_tokens_details\":"
	  "{\"a\":[1,2],\"reasoning_tokens\":3,\"b\":{\"reasoning_tokens\":997}}}", 50, 7, 40, -1, 3 },
	/* the counts in the wrong places are not taken: only OpenAI's own places */
	{ "{\"prompt_tokens\":8,\"completion_tokens\":2,\"cached_tokens\":4,\"reasoning_tokens\":1,"
	  "\"cache_write_tokens\":3,\"prompt_tokens_details\":{\"reasoning_tokens\":5},"
	  "\"completion_tokens_details\":{\"cached_tokens\":6}}", 8, 2, -1, -1, -1 },
	/* counts that are not plain non-negative integers, details that are not objects */
	{ "{\"prompt_tokens\":8,\"completion_tokens\":2,\"prompt_tokens_details\":"
	  "{\"cached_tokens\":1.5},\"completion_tokens_details\":{\"reasoning_tokens\":-1}}",
	  8, 2, -1, -1, -1 },
	{ "{\"prompt_tokens\":8,\"completion_tokens\":2,\"prompt_tokens_details\":"
	  "{\"cached_tokens\":\"4\"},\"completion_tokens_details\":[{\"reasoning_tokens\":1}]}",
	  8, 2, -1, -1, -1 },
	{ "{\"prompt_tokens\":8,\"completion_tokens\":2,\"prompt_tokens_details\":\"cached\","
	  "\"completion_tokens_details\":7}", 8, 2, -1, -1, -1 },
	/* pretty-printed, as some servers send it */
	{ "{\n  \"prompt_tokens\": 31,\n  \"completion_tokens\": 4,\n  \"prompt_tokens_details\": "
	  "{\n    \"cached_tokens\": 16\n  },\n  \"completion_tokens_details\" : { "
	  "\"reasoning_tokens\" : 2 }\n}", 31, 4, 16, -1, 2 },
};

static void check_counts(const struct usage *u, const struct usage_case *c, const char *how,
                         size_t i)
{
	if (!u->found || u->prompt_tokens != c->p || u->completion_tokens != c->c ||
	    u->cached_tokens != c->cached || u->cache_write_tokens != c->cw ||
	    u->reasoning_tokens != c->r)
		fprintf(stderr, "  case %zu, %s: found %d, %ld/%ld/%ld/%ld/%ld\n", i, how, u->found,
		        u->prompt_tokens, u->completion_tokens, u->cached_tokens,
		        u->cache_write_tokens, u->reasoning_tokens);
	CHECK(u->found);
	CHECK_INT(u->prompt_tokens, c->p);
	CHECK_INT(u->completion_tokens, c->c);
	CHECK_INT(u->cached_tokens, c->cached);
	CHECK_INT(u->cache_write_tokens, c->cw);   /* no OpenAI field: always unknown here */
	CHECK_INT(u->reasoning_tokens, c->r);
}

/* The same counts from a non-stream answer whose usage is last (the tail path), one whose
 * usage comes before other members (the full walk), and a pretty-printed one. */
TEST(usage_details_are_read_from_a_json_answer_on_both_paths)
{
	char body[2048];

	for (size_t i = 0; i < sizeof(usage_cases) / sizeof(usage_cases[0]); i++) {
		const struct usage_case *c = &usage_cases[i];
		struct usage u;

		snprintf(body, sizeof(body), "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\","
		         "\"model\":\"o3-mini\",\"choices\":[{\"index\":0,\"message\":{\"role\":"
		         "\"assistant\",\"content\":\"ok\",\"refusal\":null},\"finish_reason\":"
		         "\"stop\"}],\"usage\":%s}", c->usage);
		CHECK(usage_from_json(body, strlen(body), &u));
		check_counts(&u, c, "usage last", i);
		snprintf(body, sizeof(body), "{\"id\":\"chatcmpl-1\",\"usage\":%s,\"choices\":[],"
		         "\"system_fingerprint\":\"fp_44709d6fcb\"}", c->usage);
		CHECK(usage_from_json(body, strlen(body), &u));
		check_counts(&u, c, "usage first", i);
		snprintf(body, sizeof(body), "{\n  \"id\": \"x\",\n  \"usage\": %s\n}\n", c->usage);
		CHECK(usage_from_json(body, strlen(body), &u));
		check_counts(&u, c, "pretty", i);
	}
}

/* Each case as OpenAI streams it with include_usage: "usage": null on every content chunk,
 * then a usage-only chunk. Same counts with stripping on and off and at every split; the
 * stripped output lacks exactly that chunk. */
TEST(usage_details_are_read_from_a_stream_in_any_split_and_mode)
{
	static const char head[] =
		"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
		"\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],"
		"\"usage\":null}\n\n"
		"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
		"\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n";
	char stream[4096], usage_ev[2048], flat[1024];

	for (size_t i = 0; i < sizeof(usage_cases) / sizeof(usage_cases[0]); i++) {
		const struct usage_case *c = &usage_cases[i];

		/* a data line holds no newline: the pretty case goes on one line */
		snprintf(flat, sizeof(flat), "%s", c->usage);
		for (char *q = flat; *q; q++)
			if (*q == '\n')
				*q = ' ';
		snprintf(usage_ev, sizeof(usage_ev), "data: {\"id\":\"c\",\"object\":"
		         "\"chat.completion.chunk\",\"choices\":[],\"usage\":%s}\n\n", flat);
		snprintf(stream, sizeof(stream), "%s%sdata: [DONE]\n\n", head, usage_ev);
		for (int strip = 0; strip < 2; strip++) {
			for (size_t piece = 1; piece < 64; piece += 7) {
				struct sse_scan s;
				char *out = NULL, want[4096];
				size_t len = 0, cap = 0, n = strlen(stream);

				sse_scan_init(&s, strip);
				for (size_t off = 0; off < n; off += piece)
					CHECK_INT(sse_scan_feed(&s, stream + off, n - off < piece ? n - off : piece,
					                        &out, &len, &cap), 0);
				CHECK_INT(sse_scan_finish(&s, &out, &len, &cap), 0);
				check_counts(&s.usage, c, strip ? "stream, stripped" : "stream", i);
				snprintf(want, sizeof(want), "%s%s", head, strip ? "" : usage_ev);
				strcat(want, "data: [DONE]\n\n");
				CHECK_INT(len, strlen(want));
				CHECK(len == strlen(want) && memcmp(out, want, len) == 0);
				sse_scan_free(&s);
				free(out);
			}
		}
	}
}

/* Each usage object replaces the last one whole: a later one without details leaves the
 * details unknown, not as an earlier chunk had them (servers that send usage on every
 * chunk, continuous_usage_stats). */
TEST(a_later_usage_object_replaces_every_count)
{
	static const char stream[] =
		"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":10,"
		"\"completion_tokens\":1,\"prompt_tokens_details\":{\"cached_tokens\":8},"
		"\"completion_tokens_details\":{\"reasoning_tokens\":1}}}\n\n"
		"data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":{\"prompt_tokens\":10,"
		"\"completion_tokens\":2}}\n\n";
	struct sse_scan s;
	char *out = NULL;
	size_t len = 0, cap = 0;

	sse_scan_init(&s, false);
	CHECK_INT(s.usage.cached_tokens, -1);
	CHECK_INT(s.usage.cache_write_tokens, -1);
	CHECK_INT(s.usage.reasoning_tokens, -1);
	CHECK_INT(sse_scan_feed(&s, stream, strlen(stream), &out, &len, &cap), 0);
	CHECK(s.usage.found);
	CHECK_INT(s.usage.completion_tokens, 2);
	CHECK_INT(s.usage.cached_tokens, -1);
	CHECK_INT(s.usage.reasoning_tokens, -1);
	sse_scan_free(&s);
	free(out);

	/* and a JSON answer without usage leaves nothing over from an earlier one */
	{
		struct usage u;
		const char *with = "{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,"
		                   "\"prompt_tokens_details\":{\"cached_tokens\":2}}}";
		CHECK(usage_from_json(with, strlen(with), &u));
		CHECK_INT(u.cached_tokens, 2);
		CHECK(!usage_from_json("{\"id\":1}", 8, &u));
		CHECK_INT(u.cached_tokens, -1);
		usage_reset(&u);
		CHECK(!u.found);
		CHECK_INT(u.prompt_tokens + u.completion_tokens + u.cached_tokens +
		          u.cache_write_tokens + u.reasoning_tokens, -5);
	}
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

/* ---- string scanning, which reads 16 or 8 bytes a step ---------------------------- */

/* usage_from_json on body[0..len) copied to a heap block of exactly len bytes, so ASan
 * sees any read at or past the end. */
static bool usage_exact(const char *body, size_t len, struct usage *u)
{
	char *b = malloc(len ? len : 1);
	bool found;

	memcpy(b, body, len);
	found = usage_from_json(b, len, u);
	free(b);
	return found;
}

/* A stop byte written into a string's content, and whether the string is then JSON to
 * the scanner (which, like jansson, refuses \u0000). */
static const struct { const char *raw; bool ok; } usage_stops[] = {
	{ "", true }, { "\\n", true }, { "\\\"", true }, { "\\\\", true }, { "\\u00e9", true },
	{ "\\ud83d\\ude00", true }, { "\xc3\xa9", true }, { "\xe2\x82\xac", true },
	{ "\x7f", true }, { " ", true },
	{ "\x01", false }, { "\t", false }, { "\xff", false }, { "\x80", false }, { "\xc3", false },
	{ "\\x", false }, { "\\u0000", false }, { "\\ud800", false }, { "\"x", false },
};

/* len letters with the stop at position at (at == len: at the end). */
static size_t usage_stop_content(char *out, size_t len, size_t at, const char *raw)
{
	size_t o = 0;

	for (size_t i = 0; i <= len; i++) {
		if (i == at) {
			memcpy(out + o, raw, strlen(raw));
			o += strlen(raw);
		}
		if (i < len)
			out[o++] = (char)('a' + i % 26);
	}
	return o;
}

TEST(a_stop_byte_is_found_at_every_position_of_a_16_and_8_byte_step)
{
	char c[128], body[512];
	size_t bad = 0;

	for (size_t ki = 0; ki < sizeof(usage_stops) / sizeof(usage_stops[0]); ki++) {
		for (size_t len = 0; len <= 40; len++) {
			for (size_t at = 0; at <= len; at++) {
				size_t n = usage_stop_content(c, len, at, usage_stops[ki].raw), bl;
				bool want = usage_stops[ki].ok, ok;
				struct usage u;

				/* a key of the usage object at the tail */
				bl = (size_t)snprintf(body, sizeof(body),
				                      "{\"usage\":{\"prompt_tokens\":1,\"%.*s\":2,"
				                      "\"completion_tokens\":3}}", (int)n, c);
				ok = usage_exact(body, bl, &u) == want &&
				     u.prompt_tokens == (want ? 1 : -1) && u.completion_tokens == (want ? 3 : -1);
				/* a string before the usage object, which the full walk reads */
				bl = (size_t)snprintf(body, sizeof(body),
				                      "{\"s\":\"%.*s\",\"usage\":{\"prompt_tokens\":1,"
				                      "\"completion_tokens\":3},\"z\":0}", (int)n, c);
				ok = ok && usage_exact(body, bl, &u) == want;
				/* a key of the usage object that runs into the end of the buffer */
				bl = (size_t)snprintf(body, sizeof(body), "{\"usage\":{\"prompt_tokens\":1,\"%.*s",
				                      (int)n, c);
				ok = ok && !usage_exact(body, bl, &u);
				if (!ok && bad++ < 5)
					fprintf(stderr, "  stop %zu, length %zu, at %zu: %s\n", ki, len, at, body);
			}
		}
	}
	CHECK_INT(bad, 0);
}

TEST(a_usage_chunk_with_a_stop_byte_anywhere_in_a_key_is_stripped_only_when_json)
{
	char c[128], ev[512];

	for (size_t ki = 0; ki < sizeof(usage_stops) / sizeof(usage_stops[0]); ki++) {
		for (size_t len = 0; len <= 34; len += 1) {
			size_t at = len / 2, n = usage_stop_content(c, len, at, usage_stops[ki].raw);
			size_t el = (size_t)snprintf(ev, sizeof(ev),
			                             "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,"
			                             "\"%.*s\":0}}\n\n", (int)n, c);
			struct sse_scan s;
			char *out = NULL, *in = malloc(el);
			size_t out_len = 0, cap = 0;

			memcpy(in, ev, el);
			sse_scan_init(&s, true);
			CHECK_INT(sse_scan_feed(&s, in, el, &out, &out_len, &cap), 0);
			CHECK_INT(sse_scan_finish(&s, &out, &out_len, &cap), 0);
			CHECK_INT(out_len, usage_stops[ki].ok ? 0 : el);
			CHECK_INT(s.usage.prompt_tokens, usage_stops[ki].ok ? 4 : -1);
			sse_scan_free(&s);
			free(out);
			free(in);
		}
	}
}

/* The nesting limit is where it was when the usage object was checked in one walk and
 * read in another: a details object holding 62 nested arrays is read on both paths, 63 on
 * the tail path only (it walks the usage object from one level up), 64 on neither. */
TEST(the_nesting_limit_inside_usage_is_the_same_on_both_paths)
{
	static const struct { int tail, depth; bool found; } cases[] = {
		{ 0, 62, true }, { 0, 63, false }, { 1, 63, true }, { 1, 64, false },
	};
	char b[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct usage u;
		int n = sprintf(b, "{\"usage\":{\"prompt_tokens\":1,\"prompt_tokens_details\":{\"x\":");

		for (int d = 0; d < cases[i].depth; d++)
			b[n++] = '[';
		for (int d = 0; d < cases[i].depth; d++)
			b[n++] = ']';
		n += sprintf(b + n, ",\"cached_tokens\":2}}%s}", cases[i].tail ? "" : ",\"z\":0");
		CHECK_INT(usage_from_json(b, (size_t)n, &u), cases[i].found);
		CHECK_INT(u.cached_tokens, cases[i].found ? 2 : -1);
	}
}

/* A number too long for the stack buffer, with an exponent beyond a long: it does not fit
 * a double, as jansson says (real number overflow), so the answer is not JSON; with a
 * negative exponent it is about 0 and fits. */
TEST(a_long_number_with_a_huge_exponent_does_not_fit)
{
	char b[1024];
	struct usage u;
	int n;

	for (int neg = 0; neg < 2; neg++) {
		n = sprintf(b, "{\"x\":1");
		memset(b + n, '0', 400);
		n += 400;
		n += sprintf(b + n, "e%s99999999999999999999,\"usage\":{\"prompt_tokens\":1},\"z\":0}",
		             neg ? "-" : "");
		CHECK_INT(usage_from_json(b, (size_t)n, &u), neg);
		CHECK_INT(u.prompt_tokens, neg ? 1 : -1);
	}
	/* such a number at the very end of the buffer: its exponent is read up to there */
	n = sprintf(b, "{\"usage\":1,\"x\":1");
	memset(b + n, '0', 400);
	n += 400;
	n += sprintf(b + n, "e5");
	CHECK(!usage_exact(b, (size_t)n, &u));
}

RUN_TESTS()
