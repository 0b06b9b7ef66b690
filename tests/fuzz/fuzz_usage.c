/* Fuzz target: usage_from_json (fastgated/usage.c), the reading of a whole answer's token
 * counts, against jansson.
 *
 * usage_from_json reads counts without parsing the whole answer (only the trailing
 * "usage" member when the answer ends with it, else a walk of the top-level members that
 * allocates nothing), so its reading is checked against a full parse. For an answer
 * jansson accepts as an object, duplicate keys refused:
 *  - usage is found exactly when the object has a "usage" member that is an object;
 *  - each count (prompt_tokens, completion_tokens, prompt_tokens_details.cached_tokens,
 *    completion_tokens_details.reasoning_tokens) is the member's value when it is a
 *    non-negative integer below 10^13 (the scanner's digit limit), -1 otherwise;
 *    cache_write_tokens is always -1.
 * Set aside: inputs with a \u escape (the scanner matches keys by their bytes as sent,
 * jansson by their decoded text), with a NUL byte (jansson skips some), nested deeper
 * than the scanner's 64 levels (counted as '{' and '[' bytes), with a run of 100 digits
 * (a number of 400 characters or more, whose size the scanner estimates: one between
 * 10^300 and DBL_MAX is refused), and a count of 0 when the input has a "-0" (an integer
 * 0 to jansson, not a count to the scanner).
 * Whatever the input: found or not, the counts are -1 when not found, and a count is -1
 * or non-negative.
 *
 * tests/fuzz/run.sh fuzz SECONDS usage; make test replays its corpus (seeded with the mock's
 * answer and an OpenAI-shaped one, whose usage is not the last member). */
#include <stdbool.h>
#include <string.h>

#include <jansson.h>

#include "fuzz.h"
#include "usage.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	json_object_seed(1);
	return 0;
}

/* The count the scanner should read from v (NULL: absent), or -2 for "not checked". */
static long want_count(json_t *v, bool minus_zero)
{
	json_int_t n;

	if (!json_is_integer(v))
		return -1;
	n = json_integer_value(v);
	if (n == 0 && minus_zero)
		return -2;
	return n >= 0 && n < 10000000000000LL ? (long)n : -1;
}

static void check_count(const char *name, long got, long want)
{
	if (want != -2)
		FUZZ_CHECK(got == want, "%s: %ld, jansson says %ld", name, got, want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *body = (const char *)data;
	size_t opens = 0;
	struct usage u;
	json_error_t err;
	json_t *root, *usage;
	bool found, minus_zero;

	found = usage_from_json(body, size, &u);
	FUZZ_CHECK(found == u.found, "returned %d, found %d", found, u.found);
	FUZZ_CHECK(u.cache_write_tokens == -1, "cache_write_tokens set");
	if (!found)
		FUZZ_CHECK(u.prompt_tokens == -1 && u.completion_tokens == -1 && u.cached_tokens == -1 &&
		           u.reasoning_tokens == -1, "counts set without usage");
	FUZZ_CHECK(u.prompt_tokens >= -1 && u.completion_tokens >= -1 && u.cached_tokens >= -1 &&
	           u.reasoning_tokens >= -1, "a negative count");

	if (size == 0 || memchr(body, '\0', size) || memmem(body, size, "\\u", 2))
		return 0;
	for (size_t i = 0, run = 0; i < size; i++) {
		opens += body[i] == '{' || body[i] == '[';
		run = body[i] >= '0' && body[i] <= '9' ? run + 1 : 0;
		if (run >= 100)
			return 0;
	}
	if (opens > 60)
		return 0;
	root = json_loadb(body, size, JSON_REJECT_DUPLICATES, &err);
	if (!json_is_object(root)) {
		json_decref(root);
		return 0;
	}
	usage = json_object_get(root, "usage");
	FUZZ_CHECK(found == json_is_object(usage), "usage %s, jansson %s", found ? "found" : "not found",
	           json_is_object(usage) ? "has it" : "has none");
	if (found) {
		json_t *pd = json_object_get(usage, "prompt_tokens_details");
		json_t *cd = json_object_get(usage, "completion_tokens_details");

		minus_zero = memmem(body, size, "-0", 2) != NULL;
		check_count("prompt_tokens", u.prompt_tokens,
		            want_count(json_object_get(usage, "prompt_tokens"), minus_zero));
		check_count("completion_tokens", u.completion_tokens,
		            want_count(json_object_get(usage, "completion_tokens"), minus_zero));
		check_count("cached_tokens", u.cached_tokens,
		            want_count(json_object_get(pd, "cached_tokens"), minus_zero));
		check_count("reasoning_tokens", u.reasoning_tokens,
		            want_count(json_object_get(cd, "reasoning_tokens"), minus_zero));
	}
	json_decref(root);
	return 0;
}
