/* Fuzz target: token usage and the SSE scanner (fastgated/usage.c).
 *
 * The input is an upstream answer (an SSE stream or a JSON body) and, read as a request
 * body, what a client sends. The scanner is fed in data-derived pieces, some of them empty
 * (curl may call a write callback with no bytes):
 *  - strip off, the output is the input byte for byte (the client sees the upstream);
 *  - strip on, the output does not depend on where the pieces were cut, is the input with
 *    whole events left out, and every event left out is a usage-only chunk;
 *  - the usage found (every count: prompt, completion, cached, cache-write, reasoning) is
 *    the same in both modes and for every cut.
 * sse_first_content, as the relay calls it on a growing held stream, gives the same answer
 * as on the whole, never moves backwards or past the end, and stops only at an event's end.
 * (The request side, the body's one reading and its splice, is fuzz_reqjson.c.) */
#include <stdbool.h>
#include <string.h>

#include "usage.h"
#include "fuzz.h"
#include <jansson.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	json_object_seed(1);
	return 0;
}

struct scan_out {
	char *buf;
	size_t len, cap;
	struct usage usage;
};

/* Feed the input in pieces: with pieces == 1, whole; otherwise lengths from the seed,
 * including zero. */
static void scan(const uint8_t *data, size_t size, bool strip, int pieces, uint64_t seed,
                 struct scan_out *o)
{
	struct sse_scan s;
	size_t off = 0;

	memset(o, 0, sizeof(*o));
	sse_scan_init(&s, strip);
	for (int i = 0; off < size || i == 0; i++) {
		size_t n = size - off;

		if (pieces > 1 && i < 4 * pieces)
			n = (size_t)(fuzz_next(&seed) % (size / (size_t)pieces + 2));
		if (n > size - off)
			n = size - off;
		FUZZ_CHECK(sse_scan_feed(&s, (const char *)data + off, n, &o->buf, &o->len, &o->cap) == 0,
		           "feed failed");
		off += n;
		if (off == size && i > 0)
			break;
	}
	FUZZ_CHECK(sse_scan_finish(&s, &o->buf, &o->len, &o->cap) == 0, "finish failed");
	FUZZ_CHECK(s.len == 0, "finish left %zu bytes held", s.len);
	o->usage = s.usage;
	sse_scan_free(&s);
}

static bool same_usage(const struct usage *a, const struct usage *b)
{
	return a->found == b->found && a->prompt_tokens == b->prompt_tokens &&
	       a->completion_tokens == b->completion_tokens && a->cached_tokens == b->cached_tokens &&
	       a->cache_write_tokens == b->cache_write_tokens &&
	       a->reasoning_tokens == b->reasoning_tokens;
}

/* A usage-only chunk: some "data:" line holds {"usage":{...},"choices":[]}. */
static bool is_usage_only(const char *ev, size_t n)
{
	const char *p = ev, *end = ev + n;
	bool found = false;

	while (p < end && !found) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		size_t ln = eol ? (size_t)(eol - p) : (size_t)(end - p);

		if (ln >= 5 && memcmp(p, "data:", 5) == 0) {
			json_t *root = json_loadb(p + 5, ln - 5, 0, NULL);
			json_t *choices = json_object_get(root, "choices");

			found = json_is_object(json_object_get(root, "usage")) && json_is_array(choices) &&
			        json_array_size(choices) == 0;
			json_decref(root);
		}
		p = eol ? eol + 1 : end;
	}
	return found;
}

/* The stripped output is the input minus whole usage-only events, in order. */
static void check_stripped(const uint8_t *in, size_t size, const struct scan_out *o)
{
	size_t i = 0, j = 0;

	while (i < size) {
		size_t k = i, end = size;

		/* one event: up to and including "\n\n" or "\n\r\n" */
		for (; k + 1 < size; k++) {
			if (in[k] != '\n')
				continue;
			if (in[k + 1] == '\n') {
				end = k + 2;
				break;
			}
			if (in[k + 1] == '\r' && k + 2 < size && in[k + 2] == '\n') {
				end = k + 3;
				break;
			}
		}
		if (j + (end - i) <= o->len && memcmp(o->buf + j, in + i, end - i) == 0) {
			j += end - i;
		} else {
			FUZZ_CHECK(is_usage_only((const char *)in + i, end - i),
			           "an event that is not usage-only was dropped (at byte %zu)", i);
		}
		i = end;
	}
	FUZZ_CHECK(j == o->len, "stripped output has %zu bytes the input does not", o->len - j);
}

/* The relay's hold: the stream arrives in pieces, `from` carried between calls. */
static void check_first_content(const uint8_t *data, size_t size, uint64_t seed)
{
	size_t whole_from = 0, from = 0, have = 0;
	bool whole = sse_first_content((const char *)data, size, &whole_from), split = false;

	FUZZ_CHECK(whole_from <= size, "first_content: moved past the end");
	FUZZ_CHECK(whole_from == 0 || (whole_from >= 2 && data[whole_from - 1] == '\n'),
	           "first_content: stopped inside an event (at %zu)", whole_from);
	for (int i = 0; i < 64 && !split; i++) {
		size_t before = from;

		have = i == 63 ? size : have + (size_t)(fuzz_next(&seed) % (size / 4 + 2));
		if (have > size)
			have = size;
		split = sse_first_content((const char *)data, have, &from);
		FUZZ_CHECK(from >= before && from <= have, "first_content: moved backwards");
		if (have == size)
			break;
	}
	FUZZ_CHECK(split == whole, "first_content: the answer depends on how the stream was cut");
	if (!whole)
		FUZZ_CHECK(from == whole_from, "first_content: held %zu bytes in pieces, %zu whole",
		           from, whole_from);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t seed = fuzz_hash(data, size) | 1;
	struct scan_out off_whole, off_split, on_whole, on_split;
	struct usage u;

	scan(data, size, false, 1, 0, &off_whole);
	scan(data, size, false, 3, fuzz_next(&seed), &off_split);
	scan(data, size, true, 1, 0, &on_whole);
	scan(data, size, true, 2 + (int)(fuzz_next(&seed) % 8), fuzz_next(&seed), &on_split);

	FUZZ_CHECK(off_whole.len == size && (size == 0 || memcmp(off_whole.buf, data, size) == 0),
	           "strip off: output differs from the input");
	FUZZ_CHECK(off_split.len == size && (size == 0 || memcmp(off_split.buf, data, size) == 0),
	           "strip off, in pieces: output differs from the input");
	FUZZ_CHECK(on_split.len == on_whole.len &&
	           (on_whole.len == 0 || memcmp(on_split.buf, on_whole.buf, on_whole.len) == 0),
	           "strip on: output depends on how the stream was cut (%zu vs %zu bytes)",
	           on_split.len, on_whole.len);
	FUZZ_CHECK(on_whole.len <= size, "strip on: output longer than the input");
	check_stripped(data, size, &on_whole);
	FUZZ_CHECK(same_usage(&off_whole.usage, &off_split.usage) &&
	           same_usage(&off_whole.usage, &on_whole.usage) &&
	           same_usage(&off_whole.usage, &on_split.usage), "usage depends on mode or cuts");
	free(off_whole.buf);
	free(off_split.buf);
	free(on_whole.buf);
	free(on_split.buf);

	check_first_content(data, size, fuzz_next(&seed));
	if (usage_from_json((const char *)data, size, &u))
		FUZZ_CHECK(u.found, "usage reported without found");
	else
		FUZZ_CHECK(!u.found && u.prompt_tokens == -1 && u.completion_tokens == -1 &&
		           u.cached_tokens == -1 && u.reasoning_tokens == -1,
		           "no usage but counts set");
	/* no OpenAI field carries it: only a provider translator sets it */
	FUZZ_CHECK(u.cache_write_tokens == -1 && on_whole.usage.cache_write_tokens == -1,
	           "cache_write_tokens read from an OpenAI usage object");
	return 0;
}
