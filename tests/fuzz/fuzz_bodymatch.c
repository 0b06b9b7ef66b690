/* Fuzz target: route body matching (route_body_match in fastgated/routes.c).
 *
 * The input is "WANT\0BODY" (or, without a NUL, split in the middle): WANT is the JSON a
 * route's match.body becomes, BODY the client's request body. Besides not crashing on any
 * glob, the result must follow the documented rules, checked against a plain
 * reimplementation where one is easy: an object `want` needs an object body; removing a
 * field from a matching `want` keeps it matching; a `want` made only of literal values
 * (strings without glob characters, booleans, numbers) matches exactly the bodies that hold
 * equal values, and matches itself. */
#include <stdbool.h>
#include <string.h>

#include "routes.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	json_object_seed(1);
	return 0;
}

static bool is_literal(const json_t *v)
{
	if (json_is_string(v))
		return strpbrk(json_string_value(v), "*?[\\") == NULL;
	return json_is_boolean(v) || json_is_number(v);
}

/* The documented rule for one literal value. */
static bool literal_equal(const json_t *want, const json_t *have)
{
	if (!have)
		return false;
	if (json_is_string(want))
		return json_is_string(have) && strcmp(json_string_value(want), json_string_value(have)) == 0;
	if (json_is_boolean(want))
		return json_is_boolean(have) && json_is_true(want) == json_is_true(have);
	if (!json_is_number(have))
		return false;
	if (json_is_integer(want) && json_is_integer(have))
		return json_integer_value(want) == json_integer_value(have);
	return json_number_value(want) == json_number_value(have);
}

static void check(json_t *want, json_t *body)
{
	bool m = route_body_match(want, body);
	const char *key;
	json_t *v;

	if (!json_is_object(want)) {
		if (is_literal(want))
			FUZZ_CHECK(m == literal_equal(want, body), "literal value: match says %d", m);
		return;
	}
	if (!json_is_object(body)) {
		FUZZ_CHECK(!m, "object want matched a non-object body");
		return;
	}
	if (json_object_size(want) == 0)
		FUZZ_CHECK(m, "an empty want must match any object");

	/* literal fields alone: compare with the plain rule, and with themselves */
	{
		json_t *lit = json_object();
		bool all = true;

		json_object_foreach(want, key, v) {
			if (is_literal(v)) {
				json_object_set(lit, key, v);
				all = all && literal_equal(v, json_object_get(body, key));
			}
		}
		FUZZ_CHECK(route_body_match(lit, body) == all, "literal fields: match disagrees");
		FUZZ_CHECK(route_body_match(lit, lit), "literal fields do not match themselves");
		if (json_object_size(lit) == json_object_size(want))
			FUZZ_CHECK(m == all, "all-literal want: match disagrees");
		json_decref(lit);
	}

	/* fewer fields never match less */
	if (m && json_object_size(want) > 0) {
		json_t *fewer = json_copy(want);
		void *it = json_object_iter(fewer);

		json_object_del(fewer, json_object_iter_key(it));
		FUZZ_CHECK(route_body_match(fewer, body), "dropping a field stopped a match");
		json_decref(fewer);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, '\0', size);
	size_t wlen = nul ? (size_t)(nul - data) : size / 2;
	size_t boff = nul ? wlen + 1 : wlen;
	/* match.body values come from YAML, where a string may hold a NUL */
	json_t *want = json_loadb((const char *)data, wlen, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	/* the body is parsed as route_match parses it (JSON_DECODE_ANY: also try scalars) */
	json_t *body = json_loadb((const char *)data + boff, size - boff, JSON_DECODE_ANY, NULL);

	if (want) {
		check(want, body);
		if (json_is_object(body))
			check(body, want);  /* roles swapped: the body's strings become globs */
	}
	json_decref(want);
	json_decref(body);
	return 0;
}
