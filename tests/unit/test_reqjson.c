/* reqjson.c: the one reading of a request body (what is JSON, what is refused, what the
 * audit and the rewrites read) and the splice that edits the client's bytes. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "reqjson.h"
#include "unit.h"

static enum rj_result parse_n(const char *body, size_t len)
{
	struct reqjson rj;
	enum rj_result r = reqjson_parse(&rj, body, len);

	reqjson_free(&rj);
	return r;
}

static enum rj_result parse(const char *body)
{
	return parse_n(body, strlen(body));
}

/* Parse body (which must be RJ_OK) and splice; the result as a C string, "(unchanged)"
 * when the splice had nothing to do, "(failed)" when it failed. The caller frees. */
static char *splice(const char *body, const struct rj_add *adds, size_t n, bool iu)
{
	struct reqjson rj;
	size_t len = strlen(body), out_len = 12345;
	char *out, *s;

	CHECK_INT(reqjson_parse(&rj, body, len), RJ_OK);
	out = reqjson_splice(&rj, body, len, adds, n, iu, &out_len);
	reqjson_free(&rj);
	if (!out) {
		CHECK(out_len == 0 || out_len == SIZE_MAX);
		return strdup(out_len == 0 ? "(unchanged)" : "(failed)");
	}
	s = malloc(out_len + 1);
	memcpy(s, out, out_len);
	s[out_len] = '\0';
	free(out);
	/* whatever the splice writes is a body the same reading accepts */
	CHECK_INT(parse_n(s, out_len), RJ_OK);
	return s;
}

static void check_splice(const char *body, const struct rj_add *adds, size_t n, bool iu,
                         const char *want)
{
	char *got = splice(body, adds, n, iu);

	CHECK_STR(got, want);
	free(got);
}

static const struct rj_add add_max = { "max_tokens", "2048", 4 };

TEST(escaped_second_model_key_is_a_duplicate_not_a_cheaper_model)
{
	struct reqjson rj;
	const char *b = "{\"model\":\"cheap\",\"mod\\u0065l\":\"expensive\"}";

	CHECK_INT(reqjson_parse(&rj, b, strlen(b)), RJ_DUPLICATE_KEY);
	CHECK(rj.model == NULL);
	CHECK_INT(rj.n_fields, 0);
	reqjson_free(&rj);
	CHECK_INT(parse("{\"model\":\"a\",\"model\":\"a\"}"), RJ_DUPLICATE_KEY);
	CHECK_INT(parse("{\"\\u006d\\u006f\\u0064\\u0065\\u006c\":1,\"model\":2}"), RJ_DUPLICATE_KEY);
	/* keys that only look alike are different keys */
	CHECK_INT(parse("{\"model\":\"a\",\"Model\":\"b\",\"model \":\"c\"}"), RJ_OK);
}

TEST(duplicate_keys_are_refused_at_any_depth)
{
	CHECK_INT(parse("{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"role\":\"system\"}]}"),
	          RJ_DUPLICATE_KEY);
	CHECK_INT(parse("{\"a\":{\"b\":{\"c\":1,\"\\u0063\":2}}}"), RJ_DUPLICATE_KEY);
	CHECK_INT(parse("[{\"x\":1,\"x\":1}]"), RJ_DUPLICATE_KEY);
	CHECK_INT(parse("{\"stream_options\":{\"include_usage\":false,\"include_usage\":true}}"),
	          RJ_DUPLICATE_KEY);
	/* the same key in sibling and nested objects is no duplicate */
	CHECK_INT(parse("{\"a\":{\"x\":1},\"b\":{\"x\":1,\"y\":{\"x\":2}},\"x\":[{\"x\":0},{\"x\":0}]}"),
	          RJ_OK);
}

TEST(the_first_fault_in_body_order_is_the_one_reported)
{
	/* a duplicate before broken bytes is reported as the duplicate, as jansson does */
	CHECK_INT(parse("{\"a\":1,\"a\" garbage"), RJ_DUPLICATE_KEY);
	CHECK_INT(parse("{\"a\":1x,\"a\":2}"), RJ_NOT_JSON);
	CHECK_INT(parse("{\"a\":\"\\ud800\",\"a\":2}"), RJ_NOT_JSON);
}

TEST(model_and_keys_are_read_with_escapes_decoded)
{
	struct reqjson rj;
	const char *b = "{\"\\u006dodel\":\"gpt\\u002d4\\/o\\n\\\"x\\\\\",\"k\\u00e9y\":\"a\\u0000b\"}";
	const struct rj_field *f;

	CHECK_INT(reqjson_parse(&rj, b, strlen(b)), RJ_OK);
	CHECK(rj.model != NULL);
	if (rj.model) {
		CHECK_STR(rj.model->key, "model");
		CHECK_STR(rj.model->str, "gpt-4/o\n\"x\\");
		CHECK_INT(rj.model->str_len, 11);
		CHECK_INT(rj.model->type, RJ_STRING);
		/* the raw span is the value as sent, quotes included */
		CHECK_INT(rj.model->val_off, 14);
		CHECK(memcmp(b + rj.model->val_off, "\"gpt\\u002d4", 11) == 0);
		CHECK(b[rj.model->val_off + rj.model->val_len - 1] == '"');
	}
	f = reqjson_get(&rj, "k\xc3\xa9y");
	CHECK(f != NULL);
	if (f) {
		CHECK_INT(f->str_len, 3);
		CHECK(memcmp(f->str, "a\0b", 4) == 0);
	}
	CHECK(reqjson_get(&rj, "k\\u00e9y") == NULL);
	reqjson_free(&rj);
}

TEST(model_is_read_only_when_it_is_a_string)
{
	struct reqjson rj;
	const char *b = "{\"model\":[\"a\"]}";

	CHECK_INT(reqjson_parse(&rj, b, strlen(b)), RJ_OK);
	CHECK(rj.model == NULL);
	CHECK_INT(rj.n_fields, 1);
	CHECK_INT(rj.fields[0].type, RJ_ARRAY);
	CHECK(rj.fields[0].str == NULL);
	reqjson_free(&rj);
}

TEST(surrogate_pairs_decode_to_one_utf8_character)
{
	struct reqjson rj;
	const char *b = "{\"model\":\"\\ud83d\\ude00\\u20AC\"}";

	CHECK_INT(reqjson_parse(&rj, b, strlen(b)), RJ_OK);
	CHECK(rj.model && strcmp(rj.model->str, "\xf0\x9f\x98\x80\xe2\x82\xac") == 0);
	reqjson_free(&rj);
}

TEST(stream_include_usage_and_max_tokens_are_read)
{
	struct reqjson rj;
	const char *b = "{\"stream\":true,\"stream_options\":{\"x\":[1],\"include_usage\":true},"
	                "\"max_tokens\":100}";

	CHECK_INT(reqjson_parse(&rj, b, strlen(b)), RJ_OK);
	CHECK(rj.stream);
	CHECK(rj.include_usage);
	CHECK(rj.has_iu);
	CHECK(rj.has_max_tokens);
	CHECK_INT(rj.max_tokens, 100);
	CHECK(rj.stream_options != NULL);
	CHECK_INT(rj.iu_len, 4);
	CHECK(memcmp(b + rj.iu_off, "true", 4) == 0);
	CHECK(b[rj.so_end] == '}' && b[rj.so_end + 1] == ',');
	CHECK(b[rj.obj_end] == '}' && rj.obj_end == strlen(b) - 1);
	reqjson_free(&rj);

	b = "{\"stream\":\"true\",\"stream_options\":{\"include_usage\":false}}";
	CHECK_INT(reqjson_parse(&rj, b, strlen(b)), RJ_OK);
	CHECK(!rj.stream);
	CHECK(!rj.include_usage);
	CHECK(rj.has_iu);
	CHECK(!rj.has_max_tokens);
	reqjson_free(&rj);

	/* only the top-level stream_options, and only its own include_usage, count */
	b = "{\"x\":{\"stream_options\":{\"include_usage\":true}},"
	    "\"stream_options\":{\"y\":{\"include_usage\":true}},\"stream\":1}";
	CHECK_INT(reqjson_parse(&rj, b, strlen(b)), RJ_OK);
	CHECK(!rj.include_usage);
	CHECK(!rj.has_iu);
	CHECK(!rj.stream);
	reqjson_free(&rj);

	b = "{\"stream_options\":{\"include\\u005fusage\":true}}";
	CHECK_INT(reqjson_parse(&rj, b, strlen(b)), RJ_OK);
	CHECK(rj.include_usage);
	reqjson_free(&rj);
}

static void check_max(const char *b, bool has, int64_t want)
{
	struct reqjson rj;

	CHECK_INT(reqjson_parse(&rj, b, strlen(b)), RJ_OK);
	CHECK_INT(rj.has_max_tokens, has);
	if (has)
		CHECK_INT(rj.max_tokens, want);
	reqjson_free(&rj);
}

TEST(max_tokens_is_a_non_negative_int64_integer)
{
	check_max("{\"max_tokens\":0}", true, 0);
	check_max("{\"max_tokens\":9223372036854775807}", true, INT64_MAX);
	check_max("{\"max_tokens\":9223372036854775808}", false, 0);
	check_max("{\"max_tokens\":123456789012345678901234567890}", false, 0);
	check_max("{\"max_tokens\":-1}", false, 0);
	check_max("{\"max_tokens\":1.5}", false, 0);
	check_max("{\"max_tokens\":1e3}", false, 0);
	check_max("{\"max_tokens\":\"5\"}", false, 0);
	check_max("{\"max_completion_tokens\":7}", true, 7);
	/* max_tokens present but unusable: max_completion_tokens is not read instead */
	check_max("{\"max_tokens\":null,\"max_completion_tokens\":7}", false, 0);
	check_max("{\"max_completion_tokens\":7,\"max_tokens\":9}", true, 9);
}

TEST(numbers_read_as_double_and_int64)
{
	struct reqjson rj;
	const char *b = "{\"t\":0.7,\"n\":-9223372036854775808,\"e\":2.5E+2,\"s\":\"1\",\"big\":1e400}";
	double d = 0;
	int64_t i = 0;

	CHECK_INT(reqjson_parse(&rj, b, strlen(b)), RJ_OK);
	CHECK(reqjson_number(&rj, reqjson_get(&rj, "t"), b, &d) && d == 0.7);
	CHECK(reqjson_int64(&rj, reqjson_get(&rj, "n"), b, &i) && i == INT64_MIN);
	CHECK(reqjson_number(&rj, reqjson_get(&rj, "e"), b, &d) && d == 250.0);
	CHECK(!reqjson_int64(&rj, reqjson_get(&rj, "e"), b, &i));
	CHECK(!reqjson_number(&rj, reqjson_get(&rj, "s"), b, &d));
	CHECK(!reqjson_int64(&rj, reqjson_get(&rj, "s"), b, &i));
	CHECK(!reqjson_number(&rj, reqjson_get(&rj, "absent"), b, &d));
	CHECK(reqjson_number(&rj, reqjson_get(&rj, "big"), b, &d) && d > 1e308);
	reqjson_free(&rj);
}

TEST(splice_keeps_numbers_byte_for_byte)
{
	check_splice("{\"model\":\"m\",\"temperature\":0.7,\"seed\":123456789012345678901234567890,"
	             "\"x\":1E400,\"y\":-0.0}", &add_max, 1, false,
	             "{\"model\":\"m\",\"temperature\":0.7,\"seed\":123456789012345678901234567890,"
	             "\"x\":1E400,\"y\":-0.0,\"max_tokens\":2048}");
	check_splice("{\"temperature\":0.7,\"s\":\"\\u00e9\\/\"}", NULL, 0, true,
	             "{\"temperature\":0.7,\"s\":\"\\u00e9\\/\",\"stream_options\":{\"include_usage\":true}}");
}

TEST(splice_into_an_empty_object_writes_no_leading_comma)
{
	struct rj_add two[2] = { add_max, { "user", "\"u\"", 3 } };

	check_splice("{}", &add_max, 1, false, "{\"max_tokens\":2048}");
	check_splice(" { \n } ", &add_max, 1, false, " { \n \"max_tokens\":2048} ");
	check_splice("{}", NULL, 0, true, "{\"stream_options\":{\"include_usage\":true}}");
	check_splice("{}", two, 2, true,
	             "{\"max_tokens\":2048,\"user\":\"u\",\"stream_options\":{\"include_usage\":true}}");
}

TEST(splice_keeps_the_clients_whitespace)
{
	check_splice("\n{ \"model\" : \"m\" ,\n \"stream\": true }\n", &add_max, 1, true,
	             "\n{ \"model\" : \"m\" ,\n \"stream\": true,\"max_tokens\":2048,"
	             "\"stream_options\":{\"include_usage\":true} }\n");
}

TEST(splice_turns_include_usage_false_into_true)
{
	check_splice("{\"stream_options\":{\"include_usage\":false},\"stream\":true}", NULL, 0, true,
	             "{\"stream_options\":{\"include_usage\":true},\"stream\":true}");
	check_splice("{\"stream_options\":{\"include_usage\" : null , \"a\":1}}", NULL, 0, true,
	             "{\"stream_options\":{\"include_usage\" : true , \"a\":1}}");
	/* with the last member being stream_options, the adds go after it */
	check_splice("{\"stream_options\":{\"include_usage\":0}}", &add_max, 1, true,
	             "{\"stream_options\":{\"include_usage\":true},\"max_tokens\":2048}");
	/* already true: nothing to do */
	check_splice("{\"stream_options\":{\"include_usage\":true}}", NULL, 0, true, "(unchanged)");
}

TEST(splice_adds_include_usage_to_stream_options_that_lack_it)
{
	check_splice("{\"stream_options\":{}}", NULL, 0, true,
	             "{\"stream_options\":{\"include_usage\":true}}");
	check_splice("{\"stream_options\":{ \n}}", NULL, 0, true,
	             "{\"stream_options\":{ \n\"include_usage\":true}}");
	check_splice("{\"stream_options\":{\"x\":1 },\"m\":2}", &add_max, 1, true,
	             "{\"stream_options\":{\"x\":1 ,\"include_usage\":true},\"m\":2,\"max_tokens\":2048}");
	/* not an object: replaced by one */
	check_splice("{\"stream_options\":null,\"m\":2}", NULL, 0, true,
	             "{\"stream_options\":{\"include_usage\":true},\"m\":2}");
	check_splice("{\"m\":2,\"stream_options\":\"x\"}", &add_max, 1, true,
	             "{\"m\":2,\"stream_options\":{\"include_usage\":true},\"max_tokens\":2048}");
}

TEST(splice_escapes_the_keys_it_writes)
{
	struct rj_add a = { "a\"b\\c\n\x01", "1", 1 };
	struct reqjson rj;
	char *s = splice("{}", &a, 1, false);

	CHECK_STR(s, "{\"a\\\"b\\\\c\\u000a\\u0001\":1}");
	CHECK_INT(reqjson_parse(&rj, s, strlen(s)), RJ_OK);
	CHECK(reqjson_get(&rj, "a\"b\\c\n\x01") != NULL);
	reqjson_free(&rj);
	free(s);
}

TEST(splice_adds_only_what_the_client_did_not_send)
{
	struct rj_add adds[3] = { add_max, { "user", "\"u\"", 3 }, { "user", "\"v\"", 3 } };
	struct rj_add so = { "stream_options", "{\"include_usage\":false}", 23 };

	/* present under an escaped spelling is present */
	check_splice("{\"max\\u005ftokens\":5}", &add_max, 1, false, "(unchanged)");
	check_splice("{\"max_tokens\":5}", adds, 3, false, "{\"max_tokens\":5,\"user\":\"u\"}");
	/* the include_usage edit owns stream_options */
	check_splice("{}", &so, 1, true, "{\"stream_options\":{\"include_usage\":true}}");
	check_splice("{}", &so, 1, false, "{\"stream_options\":{\"include_usage\":false}}");
	check_splice("{\"a\":1}", NULL, 0, false, "(unchanged)");
}

TEST(splice_refuses_a_body_that_did_not_parse)
{
	struct reqjson rj;
	size_t out_len = 0;
	const char *b = "[1]";

	CHECK_INT(reqjson_parse(&rj, b, 3), RJ_NOT_OBJECT);
	CHECK(reqjson_splice(&rj, b, 3, &add_max, 1, true, &out_len) == NULL);
	CHECK(out_len == SIZE_MAX);
	reqjson_free(&rj);
}

TEST(invalid_utf8_is_not_json)
{
	CHECK_INT(parse("{\"a\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\x7f\"}"), RJ_OK);
	CHECK_INT(parse("{\"a\":\"\xc0\x80\"}"), RJ_NOT_JSON);          /* overlong NUL */
	CHECK_INT(parse("{\"a\":\"\xc1\xbf\"}"), RJ_NOT_JSON);          /* overlong */
	CHECK_INT(parse("{\"a\":\"\xe0\x9f\xbf\"}"), RJ_NOT_JSON);      /* overlong 3-byte */
	CHECK_INT(parse("{\"a\":\"\xf0\x8f\xbf\xbf\"}"), RJ_NOT_JSON);  /* overlong 4-byte */
	CHECK_INT(parse("{\"a\":\"\xed\xa0\x80\"}"), RJ_NOT_JSON);      /* U+D800 as UTF-8 */
	CHECK_INT(parse("{\"a\":\"\xf4\x90\x80\x80\"}"), RJ_NOT_JSON);  /* above U+10FFFF */
	CHECK_INT(parse("{\"a\":\"\xf5\x80\x80\x80\"}"), RJ_NOT_JSON);
	CHECK_INT(parse("{\"a\":\"\xe2\x82\"}"), RJ_NOT_JSON);          /* cut short */
	CHECK_INT(parse("{\"a\":\"\x80\"}"), RJ_NOT_JSON);              /* lone continuation */
	CHECK_INT(parse("{\"\xff\":1}"), RJ_NOT_JSON);                  /* in a key */
	CHECK_INT(parse("{\"a\":\"0123456789\xc3\"}"), RJ_NOT_JSON);
	CHECK_INT(parse("{\"a\":1}\xc3\xa9"), RJ_NOT_JSON);
}

TEST(lone_surrogate_escapes_are_not_json)
{
	CHECK_INT(parse("{\"a\":\"\\ud800\"}"), RJ_NOT_JSON);
	CHECK_INT(parse("{\"a\":\"\\udc00\"}"), RJ_NOT_JSON);
	CHECK_INT(parse("{\"a\":\"\\udbff\\u0041\"}"), RJ_NOT_JSON);
	CHECK_INT(parse("{\"a\":\"\\ud800x\"}"), RJ_NOT_JSON);
	CHECK_INT(parse("{\"a\":\"\\ud800\\ud800\"}"), RJ_NOT_JSON);
	CHECK_INT(parse("{\"a\":\"\\ud800\\u"), RJ_NOT_JSON);
	CHECK_INT(parse("{\"a\":\"\\udbff\\udfff\"}"), RJ_OK);
}

TEST(strings_need_valid_escapes_and_no_control_bytes)
{
	CHECK_INT(parse("{\"a\":\"\x01\"}"), RJ_NOT_JSON);
	CHECK_INT(parse("{\"a\":\"tab\there\"}"), RJ_NOT_JSON);
	CHECK_INT(parse("{\"a\":\"\\x41\"}"), RJ_NOT_JSON);
	CHECK_INT(parse("{\"a\":\"\\u12g4\"}"), RJ_NOT_JSON);
	CHECK_INT(parse("{\"a\":\"\\u123\"}"), RJ_NOT_JSON);
	CHECK_INT(parse("{\"a\":\"abc"), RJ_NOT_JSON);
	CHECK_INT(parse("{\"a\":\"abc\\"), RJ_NOT_JSON);
	/* NUL is fine in a value, not in a key (jansson cannot hold it there either) */
	CHECK_INT(parse("{\"a\":\"\\u0000\"}"), RJ_OK);
	CHECK_INT(parse("{\"a\\u0000\":1}"), RJ_NOT_JSON);
	CHECK_INT(parse("{\"x\":{\"a\\u0000\":1}}"), RJ_NOT_JSON);
	CHECK_INT(parse_n("{\"a\":\"\0\"}", 7), RJ_NOT_JSON);
}

TEST(grammar_faults_are_not_json)
{
	static const char *bad[] = {
		"", "   \n\t\r", "{", "}", "{\"a\":1,}", "{\"a\" 1}", "{\"a\":}", "{,}", "{\"a\":1 \"b\":2}",
		"{'a':1}", "{a:1}", "{\"a\":tru}", "{\"a\":nul}", "{\"a\":True}", "{\"a\":01}",
		"{\"a\":1.}", "{\"a\":.5}", "{\"a\":1e}", "{\"a\":1e+}", "{\"a\":-}", "{\"a\":+1}",
		"{\"a\":0x1}", "{\"a\":[1,]}", "{\"a\":[1 2]}", "{\"a\":[}", "{\"a\":1}x", "{\"a\":1}{}",
		"{\"a\":1}}", "\xef\xbb\xbf{}", "{\"a\":1}\f", "{\"a\":NaN}", "{\"a\":Infinity}",
		"{\"a\":-Infinity}", "{\"a\":[1]]", "{\"a\":\"x\"\"y\"}",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		enum rj_result r = parse(bad[i]);

		if (r != RJ_NOT_JSON)
			fprintf(stderr, "  body '%s'\n", bad[i]);
		CHECK_INT(r, RJ_NOT_JSON);
	}
	CHECK_INT(parse("{\"a\":-0.0e-5,\"b\":1E400,\"c\":123456789012345678901234567890,\"d\":[],"
	                "\"e\":{},\"f\":[null,true,false,\"\"]}"), RJ_OK);
	CHECK_INT(parse(" \t\r\n{}\n \t\r"), RJ_OK);
}

TEST(valid_json_that_is_not_an_object_is_told_apart)
{
	CHECK_INT(parse("[]"), RJ_NOT_OBJECT);
	CHECK_INT(parse("[{\"model\":\"x\"}]"), RJ_NOT_OBJECT);
	CHECK_INT(parse("\"x\""), RJ_NOT_OBJECT);
	CHECK_INT(parse(" 1 "), RJ_NOT_OBJECT);
	CHECK_INT(parse("-1.5e3"), RJ_NOT_OBJECT);
	CHECK_INT(parse("null"), RJ_NOT_OBJECT);
	CHECK_INT(parse("true"), RJ_NOT_OBJECT);
	CHECK_INT(parse("[1,]"), RJ_NOT_JSON);
}

/* n nested arrays inside {"a": ... }: depth n + 1 */
static enum rj_result parse_deep(size_t n, bool in_object)
{
	size_t len = 2 * n + 6, k = 0;
	char *b = malloc(len + 1);
	enum rj_result r;

	if (in_object) {
		memcpy(b, "{\"a\":", 5);
		k = 5;
	}
	for (size_t i = 0; i < n; i++)
		b[k++] = '[';
	for (size_t i = 0; i < n; i++)
		b[k++] = ']';
	if (in_object)
		b[k++] = '}';
	r = parse_n(b, k);
	free(b);
	return r;
}

TEST(nesting_beyond_the_limit_is_too_deep)
{
	CHECK_INT(parse_deep(REQJSON_MAX_DEPTH - 1, true), RJ_OK);
	CHECK_INT(parse_deep(REQJSON_MAX_DEPTH, true), RJ_TOO_DEEP);
	CHECK_INT(parse_deep(REQJSON_MAX_DEPTH, false), RJ_NOT_OBJECT);
	CHECK_INT(parse_deep(REQJSON_MAX_DEPTH + 1, false), RJ_TOO_DEEP);
	CHECK_INT(parse_deep(100000, true), RJ_TOO_DEEP);
}

/* An object of n members "k<i>":i, with member `dup_at` (if < n) named like member
 * `dup_of`; nested under {"o": ...} when nested. */
static char *big_object(size_t n, size_t dup_at, size_t dup_of, bool nested, size_t *len)
{
	size_t cap = 32 * n + 64, k = 0;
	char *b = malloc(cap);

	if (nested)
		k += (size_t)sprintf(b + k, "{\"o\":");
	b[k++] = '{';
	for (size_t i = 0; i < n; i++)
		k += (size_t)sprintf(b + k, "%s\"k%zu\":%zu", i ? "," : "", i == dup_at ? dup_of : i, i);
	b[k++] = '}';
	if (nested)
		b[k++] = '}';
	*len = k;
	return b;
}

TEST(big_objects_are_read_whole_and_their_duplicates_found)
{
	struct reqjson rj;
	size_t len, n = 20000;
	char *b = big_object(n, SIZE_MAX, 0, false, &len);
	const struct rj_field *f;

	CHECK_INT(reqjson_parse(&rj, b, len), RJ_OK);
	CHECK_INT(rj.n_fields, n);
	f = reqjson_get(&rj, "k19999");
	CHECK(f && f == &rj.fields[n - 1] && f->type == RJ_NUMBER);
	CHECK(rj.fields[17].key_len == 3 && strcmp(rj.fields[17].key, "k17") == 0);
	reqjson_free(&rj);
	free(b);
	/* duplicates met by the list (first 16 keys) and by the hash table, at both levels */
	for (int nested = 0; nested < 2; nested++) {
		b = big_object(n, 5, 3, nested, &len);
		CHECK_INT(parse_n(b, len), RJ_DUPLICATE_KEY);
		free(b);
		b = big_object(n, 40, 3, nested, &len);
		CHECK_INT(parse_n(b, len), RJ_DUPLICATE_KEY);
		free(b);
		b = big_object(n, n - 1, n - 2, nested, &len);
		CHECK_INT(parse_n(b, len), RJ_DUPLICATE_KEY);
		free(b);
		b = big_object(n, n - 1, 16, nested, &len);
		CHECK_INT(parse_n(b, len), RJ_DUPLICATE_KEY);
		free(b);
		b = big_object(n, SIZE_MAX, 0, nested, &len);
		CHECK_INT(parse_n(b, len), RJ_OK);
		free(b);
	}
}

TEST(long_strings_and_many_top_level_strings_survive_arena_growth)
{
	struct reqjson rj;
	size_t n = 3000, k = 0;
	char *b = malloc(n * 64 + 16), want[64];
	bool all = true;

	b[k++] = '{';
	for (size_t i = 0; i < n; i++)
		k += (size_t)sprintf(b + k, "%s\"key\\u0020%zu\":\"value %zu with some length\\n\"",
		                     i ? "," : "", i, i);
	b[k++] = '}';
	CHECK_INT(reqjson_parse(&rj, b, k), RJ_OK);
	CHECK_INT(rj.n_fields, n);
	for (size_t i = 0; i < rj.n_fields; i++) {
		snprintf(want, sizeof(want), "value %zu with some length\n", i);
		all = all && strcmp(rj.fields[i].str, want) == 0;
		snprintf(want, sizeof(want), "key %zu", i);
		all = all && strcmp(rj.fields[i].key, want) == 0;
	}
	CHECK(all);
	reqjson_free(&rj);
	free(b);
}

/* ---- string scanning, which reads 16 or 8 bytes a step ---------------------------- */

/* body[0..len) parsed from a heap block of exactly len bytes, so ASan sees any read at
 * or past the end. */
static enum rj_result parse_exact(struct reqjson *rj, const char *body, size_t len)
{
	char *b = malloc(len ? len : 1);
	enum rj_result r;

	memcpy(b, body, len);
	r = reqjson_parse(rj, b, len);
	if (rj->model)   /* the readings live in the arena, not in b: it may go */
		CHECK(rj->model->str < b || rj->model->str >= b + len);
	free(b);
	return r;
}

/* What a stop byte is, as written into a string's content and as decoded; want is the
 * result for a body where the string is the model. */
static const struct stop_kind {
	const char *raw, *decoded;
	enum rj_result want;
} stop_kinds[] = {
	{ "", "", RJ_OK },                              /* none: plain to the end */
	{ "\\n", "\n", RJ_OK },
	{ "\\\"", "\"", RJ_OK },
	{ "\\\\", "\\", RJ_OK },
	{ "\\u00e9", "\xc3\xa9", RJ_OK },
	{ "\\ud83d\\ude00", "\xf0\x9f\x98\x80", RJ_OK },
	{ "\xc3\xa9", "\xc3\xa9", RJ_OK },              /* UTF-8 */
	{ "\xe2\x82\xac", "\xe2\x82\xac", RJ_OK },
	{ "\x7f", "\x7f", RJ_OK },                      /* DEL is not a control byte to JSON */
	{ " ", " ", RJ_OK },
	{ "\x01", NULL, RJ_NOT_JSON },                  /* control bytes */
	{ "\x1f", NULL, RJ_NOT_JSON },
	{ "\t", NULL, RJ_NOT_JSON },
	{ "\xff", NULL, RJ_NOT_JSON },                  /* never in UTF-8 */
	{ "\x80", NULL, RJ_NOT_JSON },                  /* a lone continuation byte */
	{ "\xc3", NULL, RJ_NOT_JSON },                  /* a sequence cut short */
	{ "\\x", NULL, RJ_NOT_JSON },                   /* a bad escape */
	{ "\"x", NULL, RJ_NOT_JSON },                   /* a quote ends the string early */
};

/* The content: len bytes of letters with the stop written at position at (at == len:
 * at the end); *dec gets the decoded content. */
static size_t stop_content(char *out, char *dec, size_t len, size_t at, const struct stop_kind *k)
{
	size_t o = 0, d = 0;

	for (size_t i = 0; i <= len; i++) {
		if (i == at) {
			memcpy(out + o, k->raw, strlen(k->raw));
			o += strlen(k->raw);
			if (k->decoded) {
				memcpy(dec + d, k->decoded, strlen(k->decoded));
				d += strlen(k->decoded);
			}
		}
		if (i < len) {
			out[o++] = (char)('a' + i % 26);
			dec[d++] = (char)('a' + i % 26);
		}
	}
	dec[d] = '\0';
	return o;
}

TEST(a_stop_byte_is_found_at_every_position_of_a_16_and_8_byte_step)
{
	char content[128], dec[128], body[256];
	size_t bad = 0;

	for (size_t ki = 0; ki < sizeof(stop_kinds) / sizeof(stop_kinds[0]); ki++) {
		const struct stop_kind *k = &stop_kinds[ki];

		for (size_t len = 0; len <= 40; len++) {
			for (size_t at = 0; at <= len; at++) {
				struct reqjson rj;
				size_t n = stop_content(content, dec, len, at, k), bl;
				enum rj_result r;
				bool ok;

				/* as the model, the last thing before the closing brace */
				bl = (size_t)sprintf(body, "{\"model\":\"%.*s\"}", (int)n, content);
				r = parse_exact(&rj, body, bl);
				ok = r == k->want && (r != RJ_OK || (rj.model &&
				     rj.model->str_len == strlen(dec) && strcmp(rj.model->str, dec) == 0));
				reqjson_free(&rj);
				/* as a key, nested (read without a copy when plain) and at the top */
				bl = (size_t)sprintf(body, "{\"m\":[{\"%.*s\":1,\"z\":2}],\"%.*s\":3}",
				                     (int)n, content, (int)n, content);
				r = parse_exact(&rj, body, bl);
				ok = ok && r == k->want && (r != RJ_OK ||
				     (rj.n_fields == 2 && strcmp(rj.fields[1].key, dec) == 0));
				reqjson_free(&rj);
				/* as the whole body: the string ends at the buffer's last byte, and
				 * without its closing quote it runs into the end */
				bl = (size_t)sprintf(body, "\"%.*s\"", (int)n, content);
				ok = ok && parse_exact(&rj, body, bl) ==
				     (k->want == RJ_OK ? RJ_NOT_OBJECT : RJ_NOT_JSON);
				reqjson_free(&rj);
				ok = ok && parse_exact(&rj, body, bl - 1) == RJ_NOT_JSON;
				reqjson_free(&rj);
				if (!ok && bad++ < 5)
					fprintf(stderr, "  stop kind %zu, length %zu, at %zu: %s\n", ki, len, at,
					        body);
			}
		}
	}
	CHECK_INT(bad, 0);
}

TEST(strings_that_end_at_the_buffers_end_are_read_to_the_last_byte)
{
	struct reqjson rj;
	char body[128];

	/* no closing quote, no closing brace, for every distance of the end from the
	 * string's start: the reading stops at the end and says so */
	for (size_t len = 0; len <= 40; len++) {
		size_t bl = (size_t)sprintf(body, "{\"model\":\"%.*s", (int)len,
		                            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH");

		CHECK_INT(parse_exact(&rj, body, bl), RJ_NOT_JSON);
		reqjson_free(&rj);
		body[bl++] = '\\';   /* ... ending in half an escape */
		CHECK_INT(parse_exact(&rj, body, bl), RJ_NOT_JSON);
		reqjson_free(&rj);
		memcpy(body + bl - 1, "\\u00e", 5);
		CHECK_INT(parse_exact(&rj, body, bl + 4), RJ_NOT_JSON);
		reqjson_free(&rj);
		memcpy(body + bl - 1, "\xe2\x82", 2);   /* ... or half a UTF-8 sequence */
		CHECK_INT(parse_exact(&rj, body, bl + 1), RJ_NOT_JSON);
		reqjson_free(&rj);
		memcpy(body + bl - 1, "\"}", 2);        /* closed: fine */
		CHECK_INT(parse_exact(&rj, body, bl + 1), RJ_OK);
		CHECK(rj.model && rj.model->str_len == len);
		reqjson_free(&rj);
	}
}

/* ---- the first block a thread keeps from one reading to the next --------------------- */

static bool model_is(const char *body, const char *want)
{
	struct reqjson rj;
	bool ok = reqjson_parse(&rj, body, strlen(body)) == RJ_OK && rj.model &&
	          strcmp(rj.model->str, want) == 0 && rj.n_fields == 2 &&
	          strcmp(rj.fields[1].key, "max_tokens") == 0 && rj.max_tokens == 7;

	reqjson_free(&rj);
	return ok;
}

TEST(readings_alive_together_and_one_after_another_keep_their_own_memory)
{
	struct reqjson a, b, c;
	const char *ba = "{\"model\":\"first\",\"max_tokens\":1}";
	const char *bb = "{\"model\":\"second model\",\"max_tokens\":2}";
	const char *bc = "{\"model\":\"3\",\"n\":3}";

	/* a's block is kept when it is freed, b's freed (one is kept a thread), c takes a's */
	CHECK_INT(reqjson_parse(&a, ba, strlen(ba)), RJ_OK);
	CHECK_INT(reqjson_parse(&b, bb, strlen(bb)), RJ_OK);
	CHECK(a.model && strcmp(a.model->str, "first") == 0);
	CHECK(b.model && strcmp(b.model->str, "second model") == 0);
	reqjson_free(&a);
	CHECK(b.model && strcmp(b.model->str, "second model") == 0);
	reqjson_free(&b);
	CHECK_INT(reqjson_parse(&c, bc, strlen(bc)), RJ_OK);
	CHECK_INT(c.n_fields, 2);
	CHECK(c.model && strcmp(c.model->str, "3") == 0 && strcmp(c.fields[1].key, "n") == 0);
	CHECK(!c.has_max_tokens);
	reqjson_free(&c);
	/* a reading whose fields or strings outgrew the first block frees all of it */
	CHECK_INT(parse("{\"a\":1,\"b\":2,\"c\":3,\"d\":4,\"e\":5,\"f\":6,\"g\":7,\"h\":8,\"i\":9,"
	                "\"j\":10,\"k\":11,\"l\":12,\"m\":13}"), RJ_OK);
	CHECK(model_is("{\"model\":\"after\",\"max_tokens\":7}", "after"));
}

static void *parse_in_a_thread(void *arg)
{
	*(bool *)arg = model_is("{\"model\":\"threaded\",\"max_tokens\":7}", "threaded") &&
	               model_is("{\"model\":\"again\",\"max_tokens\":7}", "again");
	return NULL;
}

/* the block a thread keeps is freed when it ends (LeakSanitizer would report it) */
TEST(a_threads_kept_block_goes_when_the_thread_ends)
{
	for (int i = 0; i < 3; i++) {
		pthread_t t;
		bool ok = false;

		CHECK_INT(pthread_create(&t, NULL, parse_in_a_thread, &ok), 0);
		CHECK_INT(pthread_join(t, NULL), 0);
		CHECK(ok);
	}
}

RUN_TESTS()
