/* Fuzz target: route body matching (route_body_match in fastgated/routes.c) on the
 * parse phase's one reading of the body (reqjson.c).
 *
 * The input is "WANT\0BODY" (or, without a NUL, split in the middle): WANT is the JSON a
 * route's match.body becomes, BODY the client's request body, read by reqjson as the proxy
 * reads it. Besides not crashing on any glob, the result must follow the documented rules,
 * checked against a plain reimplementation on jansson's reading of the same body where one
 * is easy: only a JSON object with no duplicate key can match; an empty want matches any
 * such object; removing a field from a matching `want` keeps it matching; a `want` made
 * only of literal values (strings without glob characters, booleans, numbers) matches
 * exactly the bodies that hold equal values. */
#include <stdbool.h>
#include <string.h>

#include "reqjson.h"
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
		return strpbrk(json_string_value(v), "*?[\\") == NULL &&
		       strlen(json_string_value(v)) == json_string_length(v);
	return json_is_boolean(v) || json_is_number(v);
}

/* The documented rule for one literal value. */
static bool literal_equal(const json_t *want, const json_t *have)
{
	if (!have)
		return false;
	if (json_is_string(want))
		return json_is_string(have) && strlen(json_string_value(have)) == json_string_length(have) &&
		       strcmp(json_string_value(want), json_string_value(have)) == 0;
	if (json_is_boolean(want))
		return json_is_boolean(have) && json_is_true(want) == json_is_true(have);
	if (!json_is_number(have))
		return false;
	if (json_is_integer(want) && json_is_integer(have))
		return json_integer_value(want) == json_integer_value(have);
	return json_number_value(want) == json_number_value(have);
}

static bool matches(json_t *want, const char *text, size_t len)
{
	struct reqjson rj;
	bool m;

	reqjson_parse(&rj, text, len);
	m = route_body_match(want, &rj, text);
	reqjson_free(&rj);
	return m;
}

/* body: jansson's reading of the same text (NULL where jansson refuses it) */
static void check(json_t *want, const char *text, size_t len, json_t *body)
{
	struct reqjson rj;
	bool m;
	const char *key;
	json_t *v;

	reqjson_parse(&rj, text, len);
	m = route_body_match(want, &rj, text);
	if (rj.result != RJ_OK || !json_is_object(want)) {
		FUZZ_CHECK(!m, "matched without an object reading (result %d)", (int)rj.result);
		reqjson_free(&rj);
		return;
	}
	reqjson_free(&rj);
	if (json_object_size(want) == 0)
		FUZZ_CHECK(m, "an empty want must match any object");
	if (!json_is_object(body))
		return;   /* jansson cannot hold it (an integer beyond int64): no reference */

	/* literal fields alone: compare with the plain rule */
	{
		json_t *lit = json_object();
		bool all = true;

		json_object_foreach(want, key, v) {
			if (is_literal(v)) {
				json_object_set(lit, key, v);
				all = all && literal_equal(v, json_object_get(body, key));
			}
		}
		FUZZ_CHECK(matches(lit, text, len) == all, "literal fields: match disagrees");
		if (json_object_size(lit) == json_object_size(want))
			FUZZ_CHECK(m == all, "all-literal want: match disagrees");
		json_decref(lit);
	}

	/* fewer fields never match less */
	if (m && json_object_size(want) > 0) {
		json_t *fewer = json_copy(want);
		void *it = json_object_iter(fewer);

		json_object_del(fewer, json_object_iter_key(it));
		FUZZ_CHECK(matches(fewer, text, len), "dropping a field stopped a match");
		json_decref(fewer);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, '\0', size);
	size_t wlen = nul ? (size_t)(nul - data) : size / 2;
	size_t boff = nul ? wlen + 1 : wlen;
	const char *text = (const char *)data + boff;
	/* match.body values come from YAML, where a string may hold a NUL */
	json_t *want = json_loadb((const char *)data, wlen, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	/* the reference reading: as strict as reqjson about duplicates; NULs kept */
	json_t *body = json_loadb(text, size - boff, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, NULL);

	if (want)
		check(want, text, size - boff, body);
	json_decref(want);
	json_decref(body);
	return 0;
}
