/* Fuzz target: the request JSON reading and splice (fastgated/reqjson.c), against jansson.
 *
 * The daemon decides on reqjson's reading and the upstream decodes with a JSON library;
 * the bypass this module closes came from two readings disagreeing. So the input is read
 * by both, and:
 *  - reqjson accepts (RJ_OK or RJ_NOT_OBJECT) exactly when jansson (duplicates refused,
 *    any top-level value, NUL allowed in strings) accepts, and says RJ_NOT_OBJECT exactly
 *    when jansson's value is not an object. Set aside: RJ_TOO_DEEP (reqjson's limit is
 *    lower than jansson's) and a number jansson cannot hold even as a double (jansson
 *    fails; JSON has no such limit). An integer jansson cannot hold is retried as a real,
 *    so such bodies are still compared. A raw NUL byte, which jansson sometimes skips,
 *    is never JSON to reqjson;
 *  - RJ_DUPLICATE_KEY exactly when jansson's error is a duplicate key (both stop at the
 *    first fault, so both name the same one);
 *  - for an object: the same top-level keys in the same order, each value of the same
 *    type, the same strings (decoded, NUL-terminated: the arena's copies), the same
 *    numbers (as doubles and as int64), the same model bytes, the same stream and
 *    include_usage flags, the same max_tokens;
 *  - the splice (two fixed adds, include_usage set) gives a body both accept, with every
 *    other member's bytes as sent (reqjson) and value equal (jansson), the adds present
 *    once, include_usage true and nothing else in stream_options changed; a splice with
 *    nothing to do changes nothing. */
#include <stdbool.h>
#include <string.h>

#include <jansson.h>

#include "fuzz.h"
#include "reqjson.h"

#define ODD_KEY "x\"y\\z\n"
#define ODD_VALUE "[1,{\"a\":null}]"

static const struct rj_add adds[] = {
	{ "max_tokens", "2048", 4 },
	{ ODD_KEY, ODD_VALUE, sizeof(ODD_VALUE) - 1 },
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	json_object_seed(1);
	return 0;
}

/* jansson's type as reqjson's. */
static enum rj_type rj_type_of(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return RJ_OBJECT;
	case JSON_ARRAY: return RJ_ARRAY;
	case JSON_STRING: return RJ_STRING;
	case JSON_INTEGER: case JSON_REAL: return RJ_NUMBER;
	case JSON_TRUE: return RJ_TRUE;
	case JSON_FALSE: return RJ_FALSE;
	default: return RJ_NULL;
	}
}

/* The readings of an object against jansson's tree. */
static void check_readings(const struct reqjson *rj, const char *body, json_t *root,
                           bool ints_as_reals)
{
	const char *key;
	json_t *v, *model, *max;
	size_t i = 0;

	FUZZ_CHECK(rj->n_fields == json_object_size(root), "%zu members, jansson %zu",
	           rj->n_fields, json_object_size(root));
	json_object_foreach(root, key, v) {
		const struct rj_field *f = &rj->fields[i];
		double d;
		int64_t n;

		FUZZ_CHECK(i < rj->n_fields && strlen(key) == f->key_len &&
		           memcmp(key, f->key, f->key_len + 1) == 0,
		           "member %zu is \"%s\" for jansson", i, key);
		FUZZ_CHECK(f->type == rj_type_of(v), "member \"%s\" is of type %d, jansson's %d", key,
		           f->type, rj_type_of(v));
		if (json_is_string(v))
			FUZZ_CHECK(f->str && f->str_len == json_string_length(v) &&
			           memcmp(f->str, json_string_value(v), f->str_len + 1) == 0,
			           "member \"%s\" is not jansson's string", key);
		else
			FUZZ_CHECK(!f->str && f->str_len == 0, "member \"%s\" has a string", key);
		FUZZ_CHECK(reqjson_number(rj, f, body, &d) == json_is_number(v) &&
		           (!json_is_number(v) || d == json_number_value(v)),
		           "member \"%s\" as a double", key);
		if (!ints_as_reals)
			FUZZ_CHECK(reqjson_int64(rj, f, body, &n) == json_is_integer(v) &&
			           (!json_is_integer(v) || n == json_integer_value(v)),
			           "member \"%s\" as an int64", key);
		i++;
	}
	model = json_object_get(root, "model");
	if (json_is_string(model))
		FUZZ_CHECK(rj->model && rj->model->str_len == json_string_length(model) &&
		           memcmp(rj->model->str, json_string_value(model), rj->model->str_len) == 0,
		           "model differs from jansson's \"%s\"", json_string_value(model));
	else
		FUZZ_CHECK(!rj->model, "a model that jansson does not see as a string");
	FUZZ_CHECK(rj->stream == json_is_true(json_object_get(root, "stream")), "stream flag");
	FUZZ_CHECK(rj->include_usage ==
	           json_is_true(json_object_get(json_object_get(root, "stream_options"), "include_usage")),
	           "include_usage flag");
	FUZZ_CHECK(rj->has_iu ==
	           (json_object_get(json_object_get(root, "stream_options"), "include_usage") != NULL),
	           "has_iu");
	if (ints_as_reals)
		return;
	max = json_object_get(root, "max_tokens");
	if (!max)
		max = json_object_get(root, "max_completion_tokens");
	if (json_is_integer(max) && json_integer_value(max) >= 0)
		FUZZ_CHECK(rj->has_max_tokens && rj->max_tokens == json_integer_value(max),
		           "max_tokens %lld, jansson %lld", (long long)rj->max_tokens,
		           (long long)json_integer_value(max));
	else
		FUZZ_CHECK(!rj->has_max_tokens, "max_tokens read where jansson has none");
}

/* The spliced body: reqjson's reading keeps every member's bytes, jansson's keeps values. */
static void check_splice(const struct reqjson *rj, const char *body, size_t len, json_t *root,
                         int flags)
{
	struct reqjson out_rj;
	json_error_t err;
	json_t *out_root = NULL, *so, *out_so;
	size_t out_len = 1, n_added = 0;
	char *out;
	const char *key;
	json_t *v;

	out = reqjson_splice(rj, body, len, NULL, 0, false, &out_len);
	FUZZ_CHECK(!out && out_len == 0, "a splice with nothing to do changed the body");
	out = reqjson_splice(rj, body, len, adds, 2, true, &out_len);
	if (!out) {
		FUZZ_CHECK(out_len == 0, "splice failed (%zu)", out_len);
		FUZZ_CHECK(rj->include_usage && reqjson_get(rj, "max_tokens") && reqjson_get(rj, ODD_KEY),
		           "splice did nothing where it had work");
		return;
	}
	FUZZ_CHECK(reqjson_parse(&out_rj, out, out_len) == RJ_OK, "spliced body refused (%d): %.*s",
	           out_rj.result, (int)out_len, out);
	FUZZ_CHECK(out_rj.include_usage, "include_usage not true after the splice: %.*s",
	           (int)out_len, out);
	n_added = !reqjson_get(rj, "max_tokens") + !reqjson_get(rj, ODD_KEY) + !rj->stream_options;
	FUZZ_CHECK(out_rj.n_fields == rj->n_fields + n_added, "%zu members after the splice, want %zu",
	           out_rj.n_fields, rj->n_fields + n_added);
	for (size_t i = 0; i < rj->n_fields; i++) {
		const struct rj_field *f = &rj->fields[i], *g = &out_rj.fields[i];

		FUZZ_CHECK(g->key_len == f->key_len && memcmp(g->key, f->key, f->key_len) == 0,
		           "member %zu moved", i);
		if (f == rj->stream_options)
			continue;
		FUZZ_CHECK(g->val_len == f->val_len &&
		           memcmp(out + g->val_off, body + f->val_off, f->val_len) == 0,
		           "member \"%s\" changed bytes", f->key);
	}
	reqjson_free(&out_rj);

	if (root) {
		out_root = json_loadb(out, out_len, flags, &err);
		FUZZ_CHECK(json_is_object(out_root), "jansson refuses the spliced body: %s: %.*s", err.text,
		           (int)out_len, out);
		json_object_foreach(root, key, v)
			if (strcmp(key, "stream_options") != 0)
				FUZZ_CHECK(json_equal(v, json_object_get(out_root, key)),
				           "member \"%s\" changed value", key);
		FUZZ_CHECK(json_object_size(out_root) == json_object_size(root) + n_added, "member count");
		FUZZ_CHECK(json_number_value(json_object_get(out_root, "max_tokens")) == 2048 ||
		           json_object_get(root, "max_tokens"), "max_tokens not added");
		FUZZ_CHECK(json_is_array(json_object_get(out_root, ODD_KEY)) || json_object_get(root, ODD_KEY),
		           "escaped key not added");
		so = json_object_get(root, "stream_options");
		out_so = json_object_get(out_root, "stream_options");
		FUZZ_CHECK(json_is_true(json_object_get(out_so, "include_usage")), "include_usage");
		if (json_is_object(so)) {
			json_object_foreach(so, key, v)
				if (strcmp(key, "include_usage") != 0)
					FUZZ_CHECK(json_equal(v, json_object_get(out_so, key)),
					           "stream_options.%s changed", key);
			FUZZ_CHECK(json_object_size(out_so) ==
			           json_object_size(so) + !json_object_get(so, "include_usage"),
			           "stream_options member count");
		} else {
			FUZZ_CHECK(json_object_size(out_so) == 1, "stream_options is more than include_usage");
		}
		json_decref(out_root);
	}
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *body = (const char *)data;
	int flags = JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL;
	struct reqjson rj;
	json_error_t err;
	json_t *root;
	enum rj_result r;
	bool rj_ok, overflow;

	r = reqjson_parse(&rj, body, size);
	FUZZ_CHECK(r != RJ_NOMEM, "out of memory");
	root = json_loadb(body, size, flags, &err);
	if (!root && json_error_code(&err) == json_error_numeric_overflow) {
		/* an integer beyond int64 is JSON: read it again as a real */
		flags |= JSON_DECODE_INT_AS_REAL;
		root = json_loadb(body, size, flags, &err);
	}
	overflow = !root && json_error_code(&err) == json_error_numeric_overflow;
	rj_ok = r == RJ_OK || r == RJ_NOT_OBJECT;
	/* jansson 2.14 drops a NUL byte that follows a number or a literal ({"a":1<NUL>} is
	 * accepted): a raw NUL is never JSON, so such bodies are only checked for that */
	if (memchr(body, '\0', size)) {
		FUZZ_CHECK(!rj_ok, "a body with a NUL byte accepted");
	} else if (r != RJ_TOO_DEEP && !overflow) {
		FUZZ_CHECK(rj_ok == (root != NULL), "reqjson says %d, jansson %s", r,
		           root ? "accepts" : err.text);
		if (root)
			FUZZ_CHECK((r == RJ_OK) == json_is_object(root), "reqjson says %d, jansson type %d",
			           r, json_typeof(root));
		else
			FUZZ_CHECK((r == RJ_DUPLICATE_KEY) ==
			           (json_error_code(&err) == json_error_duplicate_key),
			           "reqjson says %d, jansson: %s", r, err.text);
	}
	if (r == RJ_OK) {
		if (root)
			check_readings(&rj, body, root, (flags & JSON_DECODE_INT_AS_REAL) != 0);
		check_splice(&rj, body, size, root, flags);
	} else {
		FUZZ_CHECK(rj.n_fields == 0 && !rj.model && !rj.stream && !rj.include_usage,
		           "readings left after a failed parse");
	}
	json_decref(root);
	reqjson_free(&rj);
	return 0;
}
