/* Route files and route matching: path patterns, methods, body matchers, table order, and
 * the exact "FILE:LINE: message" of every kind of error a route file can have. */
#include <dirent.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "reqjson.h"
#include "routes.h"
#include "unit.h"

/* ---- helpers: a scratch routes directory per test ---- */

static char tmpdir[64];

static void tmp_begin(void)
{
	strcpy(tmpdir, "/tmp/fg-routes-XXXXXX");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		exit(2);
	}
}

static void tmp_end(void)
{
	DIR *d = opendir(tmpdir);
	struct dirent *de;
	char path[512];

	while (d && (de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", tmpdir, de->d_name);
		unlink(path);
	}
	if (d)
		closedir(d);
	rmdir(tmpdir);
}

static void put_mode(const char *name, const char *text, mode_t mode)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	f = fopen(path, "w");
	if (!f) {
		perror(path);
		exit(2);
	}
	fputs(text, f);
	fclose(f);
	chmod(path, mode);
}

static void put(const char *name, const char *text)
{
	put_mode(name, text, 0644);
}

/* Load one file's text as the only file of the scratch directory. */
static struct route_table *load_text(const char *text, struct errlist *e)
{
	put("r.yaml", text);
	return route_table_load(tmpdir, e);
}

/* "<tmpdir>/<file>:<line>: <rest>", for exact comparisons. */
static char *where(const char *file, int line, const char *rest)
{
	static char buf[1024];

	snprintf(buf, sizeof(buf), "%s/%s:%d: %s", tmpdir, file, line, rest);
	return buf;
}

/* Exactly one error, and it is this line. */
static void check_one_error(struct route_table *t, struct errlist *e, const char *file,
                            int line, const char *rest)
{
	CHECK(t == NULL);
	CHECK_INT(e->n, 1);
	if (e->n >= 1)
		CHECK_STR(e->lines[0], where(file, line, rest));
	for (size_t i = 1; i < e->n; i++)
		fprintf(stderr, "  extra error: %s\n", e->lines[i]);
	route_table_unref(t);   /* only when the check above failed */
}

static bool any_line_has(const struct errlist *e, const char *needle)
{
	for (size_t i = 0; i < e->n; i++)
		if (strstr(e->lines[i], needle))
			return true;
	return false;
}

/* Names of the table's routes in order, joined by spaces. */
static const char *order(const struct route_table *t)
{
	static char buf[512];
	size_t len = 0;

	buf[0] = '\0';
	for (size_t i = 0; t && i < t->n; i++)
		len += (size_t)snprintf(buf + len, sizeof(buf) - len, "%s%s", i ? " " : "",
		                        t->routes[i]->name);
	return buf;
}

/* Match and return the route's name, "-" for no match, "!" for a bad body. */
static const char *match_name(const struct route_table *t, const char *method, const char *path,
                              const char *body)
{
	struct route_request rq = { .method = method, .path = path, .body = body,
	                            .body_len = body ? strlen(body) : 0 };
	struct reqjson rj = { 0 };
	const struct route *r = NULL;
	enum route_match_result res;
	static char name[128];

	if (body) {   /* the parse phase's one reading, as the proxy makes it */
		reqjson_parse(&rj, body, strlen(body));
		rq.rj = &rj;
	}
	res = route_match(t, &rq, &r);
	reqjson_free(&rj);
	if (res == ROUTE_BAD_BODY)
		return "!";
	if (res != ROUTE_MATCHED || !r)
		return "-";
	snprintf(name, sizeof(name), "%s", r->name);
	return name;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- path patterns ---- */

TEST(path_exact_matches_only_that_path)
{
	CHECK(route_path_match("/v1/chat/completions", "/v1/chat/completions"));
	CHECK(!route_path_match("/v1/chat/completions", "/v1/chat/completions/"));
	CHECK(!route_path_match("/v1/chat/completions", "/v1/chat"));
	CHECK(!route_path_match("/v1/chat/completions", "/v1/chat/completionsX"));
	CHECK(!route_path_match("/v1/models", "/V1/models"));
	CHECK(route_path_match("/", "/"));
	CHECK(!route_path_match("/", "/a"));
}

TEST(path_star_segment_matches_exactly_one_nonempty_segment)
{
	CHECK(route_path_match("/v1/*", "/v1/models"));
	CHECK(!route_path_match("/v1/*", "/v1/"));
	CHECK(!route_path_match("/v1/*", "/v1"));
	CHECK(!route_path_match("/v1/*", "/v1/a/b"));
	CHECK(route_path_match("/v1/*/completions", "/v1/chat/completions"));
	CHECK(!route_path_match("/v1/*/completions", "/v1/a/b/completions"));
}

TEST(path_star_inside_segment_globs_within_the_segment)
{
	CHECK(route_path_match("/files/*.json", "/files/a.json"));
	CHECK(route_path_match("/files/*.json", "/files/.json"));
	CHECK(!route_path_match("/files/*.json", "/files/a.txt"));
	CHECK(!route_path_match("/files/*.json", "/files/x/a.json"));
	CHECK(route_path_match("/v*/models", "/v2/models"));
	CHECK(route_path_match("/a*b*c", "/aXXbYYc"));
	CHECK(!route_path_match("/a*b*c", "/aXXbYYd"));
}

TEST(path_double_star_matches_any_depth_including_none)
{
	CHECK(route_path_match("/api/**", "/api"));
	CHECK(route_path_match("/api/**", "/api/"));
	CHECK(route_path_match("/api/**", "/api/x"));
	CHECK(route_path_match("/api/**", "/api/x/y/z"));
	CHECK(!route_path_match("/api/**", "/apix"));
	CHECK(!route_path_match("/api/**", "/ap"));
	CHECK(!route_path_match("/api/**", "/other/api"));
	CHECK(route_path_match("/a/**/b", "/a/b"));
	CHECK(route_path_match("/a/**/b", "/a/x/y/b"));
	CHECK(!route_path_match("/a/**/b", "/a/x/y/c"));
	CHECK(route_path_match("/**", "/"));
	CHECK(route_path_match("/**", "/anything/at/all"));
}

TEST(path_param_matches_one_nonempty_segment)
{
	CHECK(route_path_match("/user/{id}", "/user/42"));
	CHECK(!route_path_match("/user/{id}", "/user/"));
	CHECK(!route_path_match("/user/{id}", "/user"));
	CHECK(!route_path_match("/user/{id}", "/user/42/posts"));
	CHECK(route_path_match("/user/{id}/posts", "/user/42/posts"));
	CHECK(!route_path_match("/user/{id}/posts", "/user//posts"));
}

TEST(path_relative_pattern_matches_the_last_segment_anywhere)
{
	CHECK(route_path_match("*.json", "/a.json"));
	CHECK(route_path_match("*.json", "/x/y/a.json"));
	CHECK(!route_path_match("*.json", "/a.json/x"));
	CHECK(!route_path_match("*.json", "/a.jsonx"));
	CHECK(route_path_match("v1/*.json", "/deep/v1/x.json"));
	CHECK(!route_path_match("v1/*.json", "/deep/v2/x.json"));
}

TEST(path_null_pattern_is_any_and_bad_paths_never_match)
{
	CHECK(route_path_match(NULL, "/anything"));
	CHECK(!route_path_match("/**", NULL));
	CHECK(!route_path_match("/**", "relative"));
	CHECK(!route_path_match("/**", ""));
}

TEST(path_long_paths_use_the_heap_and_still_match)
{
	char path[4096], pat[1024];
	size_t n = 0, m = 0;

	for (int i = 0; i < 300; i++)
		n += (size_t)snprintf(path + n, sizeof(path) - n, "/s%d", i);
	for (int i = 0; i < 40; i++)
		m += (size_t)snprintf(pat + m, sizeof(pat) - m, "/**/s%d", i * 7);
	snprintf(pat + m, sizeof(pat) - m, "/**/s299");
	CHECK(route_path_match(pat, path));
	snprintf(pat + m, sizeof(pat) - m, "/**/s300");
	CHECK(!route_path_match(pat, path));
}

TEST(path_pathological_patterns_finish_quickly)
{
	char path[8192], pat[2048], seg[4096];
	size_t n = 0, m = 0;
	double t0 = now_s(), elapsed;
	bool r1, r2;

	/* many ** against a long path that fails only at the very end: exponential with naive
	 * backtracking, quadratic here */
	for (int i = 0; i < 1000; i++)
		n += (size_t)snprintf(path + n, sizeof(path) - n, "/a");
	for (int i = 0; i < 300; i++)
		m += (size_t)snprintf(pat + m, sizeof(pat) - m, "/**/a");
	snprintf(pat + m, sizeof(pat) - m, "/b");
	r1 = route_path_match(pat, path);
	/* many * in one segment against a long segment */
	memset(seg, 'a', 3000);
	seg[0] = '/';
	seg[3000] = '\0';
	m = 0;
	pat[m++] = '/';
	for (int i = 0; i < 500; i++) {
		pat[m++] = 'a';
		pat[m++] = '*';
	}
	pat[m++] = 'b';
	pat[m] = '\0';
	r2 = route_path_match(pat, seg);
	elapsed = now_s() - t0;
	CHECK(!r1);
	CHECK(!r2);
	CHECK(elapsed < 2.0);
}

/* ---- body matching ---- */

/* route_body_match against a body read by reqjson, as the proxy reads it */
static bool body_matches(const json_t *want, const char *body)
{
	struct reqjson rj;
	bool m;

	reqjson_parse(&rj, body, strlen(body));
	m = route_body_match(want, &rj, body);
	reqjson_free(&rj);
	return m;
}

TEST(body_match_string_glob_bool_and_number)
{
	json_t *want = json_pack("{s:s, s:b, s:i}", "model", "Qwen3-*", "stream", 1, "n", 2);

	CHECK(body_matches(want, "{\"model\":\"Qwen3-32B\",\"stream\":true,\"n\":2,\"x\":\"extra\"}"));
	CHECK(body_matches(want, "{\"model\":\"Qwen3-8B\",\"stream\":true,\"n\":2.0}"));
	CHECK(!body_matches(want, "{\"model\":\"qwen3-32B\",\"stream\":true,\"n\":2}"));
	CHECK(!body_matches(want, "{\"model\":\"Qwen3-32B\",\"stream\":false,\"n\":2}"));
	CHECK(!body_matches(want, "{\"model\":\"Qwen3-32B\",\"stream\":1,\"n\":2}"));
	CHECK(!body_matches(want, "{\"model\":\"Qwen3-32B\",\"stream\":true}"));
	CHECK(!body_matches(want, "{\"model\":3,\"stream\":true,\"n\":2}"));
	CHECK(!body_matches(want, "[1]"));
	CHECK(!body_matches(want, "not json"));
	json_decref(want);
}

TEST(body_match_reads_keys_and_strings_with_their_escapes_decoded)
{
	json_t *want = json_pack("{s:s}", "model", "gpt-4o*");

	/* the upstream decodes the escapes: so does the match */
	CHECK(body_matches(want, "{\"mod\\u0065l\":\"gpt\\u002d4o-mini\"}"));
	/* a duplicate key is no reading at all: no match either way */
	CHECK(!body_matches(want, "{\"model\":\"gpt-4o\",\"mod\\u0065l\":\"cheap\"}"));
	/* an escaped NUL cannot be globbed on the part before it */
	CHECK(!body_matches(want, "{\"model\":\"gpt-4o\\u0000x\"}"));
	json_decref(want);
}

TEST(body_match_single_values_and_glob_classes)
{
	json_t *want = json_pack("{s:s, s:s, s:s}", "a", "gpt-4o-[0-9]*", "b", "*/model", "c", "a?c");

	CHECK(body_matches(want, "{\"a\":\"gpt-4o-2024\",\"b\":\"org/model\",\"c\":\"abc\"}"));
	CHECK(!body_matches(want, "{\"a\":\"gpt-4o-mini\",\"b\":\"org/model\",\"c\":\"abc\"}"));
	json_decref(want);
}

static const char *body_routes =
	"routes:\n"
	"  - name: qwen\n"
	"    priority: 10\n"
	"    match: { path: /v1/chat/completions, body: { model: \"Qwen3-*\" } }\n"
	"    upstream: { url: \"http://q:1\" }\n"
	"  - name: streamer\n"
	"    priority: 20\n"
	"    match: { path: /v1/chat/completions, body: { stream: true, n: 1 } }\n"
	"    upstream: { url: \"http://s:1\" }\n"
	"  - name: models\n"
	"    priority: 5\n"
	"    match: { path: /v1/models }\n"
	"    upstream: { url: \"http://m:1\" }\n"
	"  - name: rest\n"
	"    priority: 30\n"
	"    match: { path: /v1/chat/completions }\n"
	"    upstream: { url: \"http://r:1\" }\n";

TEST(route_match_uses_body_globs_and_exact_values)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	t = load_text(body_routes, &e);
	CHECK(t != NULL);
	CHECK_INT(e.n, 0);
	CHECK_STR(match_name(t, "POST", "/v1/chat/completions", "{\"model\":\"Qwen3-32B\"}"), "qwen");
	CHECK_STR(match_name(t, "POST", "/v1/chat/completions",
	                     "{\"model\":\"gpt\",\"stream\":true,\"n\":1.0}"), "streamer");
	CHECK_STR(match_name(t, "POST", "/v1/chat/completions",
	                     "{\"model\":\"gpt\",\"stream\":true,\"n\":2}"), "rest");
	/* a string glob never matches a non-string field */
	CHECK_STR(match_name(t, "POST", "/v1/chat/completions", "{\"model\":3}"), "rest");
	/* missing field: no match, next route */
	CHECK_STR(match_name(t, "POST", "/v1/chat/completions", "{\"stream\":true}"), "rest");
	/* a route reading the body sees something that is not a JSON object */
	CHECK_STR(match_name(t, "POST", "/v1/chat/completions", "[1,2]"), "!");
	CHECK_STR(match_name(t, "POST", "/v1/chat/completions", "not json"), "!");
	CHECK_STR(match_name(t, "POST", "/v1/chat/completions", NULL), "!");
	/* no route reads the body here, so a bad body is fine */
	CHECK_STR(match_name(t, "GET", "/v1/models", "not json"), "models");
	CHECK_STR(match_name(t, "GET", "/v2/other", NULL), "-");
	route_table_unref(t);
	errlist_clear(&e);
	tmp_end();
}

TEST(a_route_that_reads_the_body_needs_a_json_object_and_others_do_not)
{
	struct errlist e = { 0 };
	struct route_table *t;
	struct route_request rq = { .method = "GET", .path = "/v1/models", .body = "[1]",
	                            .body_len = 3 };
	const struct route *r = NULL;

	tmp_begin();
	t = load_text(body_routes, &e);
	CHECK(t != NULL);
	/* no body read: the route that matches /v1/models takes anything */
	CHECK_INT(route_match(t, &rq, &r), ROUTE_MATCHED);
	rq.method = "POST";
	rq.path = "/v1/chat/completions";
	CHECK_INT(route_match(t, &rq, &r), ROUTE_BAD_BODY);   /* no reading was made */
	CHECK(r == NULL);
	route_table_unref(t);
	errlist_clear(&e);
	tmp_end();
}

TEST(methods_are_upper_cased_and_matched_case_insensitively)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	t = load_text("routes:\n"
	              "  - name: rw\n"
	              "    match: { path: /x, methods: [post, Get] }\n"
	              "    upstream: { url: \"http://h:1\" }\n"
	              "  - name: any\n"
	              "    match: { path: /y }\n"
	              "    upstream: { url: \"http://h:1\" }\n", &e);
	CHECK(t != NULL);
	if (t) {
		CHECK_INT(t->routes[0]->n_methods, 2);
		CHECK_STR(t->routes[0]->methods[0], "POST");
		CHECK_STR(t->routes[0]->methods[1], "GET");
		CHECK_INT(t->routes[1]->n_methods, 0);
	}
	CHECK_STR(match_name(t, "POST", "/x", NULL), "rw");
	CHECK_STR(match_name(t, "get", "/x", NULL), "rw");
	CHECK_STR(match_name(t, "DELETE", "/x", NULL), "-");
	CHECK_STR(match_name(t, "DELETE", "/y", NULL), "any");
	CHECK_STR(match_name(t, "PATCH", "/y", NULL), "any");
	route_table_unref(t);
	errlist_clear(&e);
	tmp_end();
}

/* ---- order, enable, find, refcount ---- */

TEST(table_order_is_priority_then_file_name_then_position)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	/* written in the "wrong" order on disk to show the sort is by name */
	put("b.yaml", "routes:\n"
	              "  - { name: b1, priority: 10, upstream: { url: \"http://h\" } }\n"
	              "  - { name: b2, upstream: { url: \"http://h\" } }\n"
	              "  - { name: b3, priority: 10, upstream: { url: \"http://h\" } }\n");
	put("a.yml", "routes:\n"
	             "  - { name: a1, upstream: { url: \"http://h\" } }\n"
	             "  - { name: a2, priority: 10, upstream: { url: \"http://h\" } }\n"
	             "  - { name: a3, priority: -5, upstream: { url: \"http://h\" } }\n");
	put("c.txt", "not a route file: ignored\n");
	put(".hidden.yaml", "also: ignored\n");
	t = route_table_load(tmpdir, &e);
	CHECK(t != NULL);
	CHECK_INT(e.n, 0);
	CHECK_STR(order(t), "a3 a2 b1 b3 a1 b2");
	CHECK_STR(t ? t->dir : NULL, tmpdir);
	if (t) {
		CHECK_INT(t->routes[0]->priority, -5);
		CHECK_INT(t->routes[4]->priority, 100);
		CHECK(strstr(t->routes[0]->file, "/a.yml") != NULL);
		CHECK_INT(t->routes[0]->line, 4);
	}
	route_table_unref(t);
	errlist_clear(&e);
	tmp_end();
}

TEST(disabled_route_is_skipped_so_the_next_match_is_the_fallback)
{
	struct errlist e = { 0 };
	struct route_table *t;
	struct route *primary;

	tmp_begin();
	t = load_text("routes:\n"
	              "  - name: primary\n"
	              "    priority: 1\n"
	              "    enabled: false\n"
	              "    match: { path: /v1/chat/completions }\n"
	              "    upstream: { url: \"http://p:1\" }\n"
	              "  - name: fallback\n"
	              "    priority: 2\n"
	              "    match: { path: /v1/chat/completions }\n"
	              "    upstream: { url: \"http://f:1\" }\n", &e);
	CHECK(t != NULL);
	primary = route_table_find(t, "primary");
	CHECK(primary != NULL);
	if (primary) {
		CHECK(!primary->enabled);
		CHECK(!primary->enabled_in_file);
	}
	CHECK_STR(match_name(t, "POST", "/v1/chat/completions", NULL), "fallback");
	if (primary) {
		primary->enabled = true;   /* what the control channel does */
		CHECK_STR(match_name(t, "POST", "/v1/chat/completions", NULL), "primary");
	}
	CHECK(route_table_find(t, "nope") == NULL);
	route_table_unref(t);
	errlist_clear(&e);
	tmp_end();
}

TEST(table_refcount_keeps_it_alive_until_the_last_unref)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	t = load_text("routes:\n  - { name: a, upstream: { url: \"http://h\" } }\n", &e);
	CHECK(t != NULL);
	if (t) {
		CHECK_INT(t->refcount, 1);
		route_table_ref(t);
		CHECK_INT(t->refcount, 2);
		route_table_unref(t);
		CHECK_INT(t->refcount, 1);
		CHECK_STR(t->routes[0]->name, "a");   /* still readable: ASan would object */
	}
	route_table_unref(t);
	errlist_clear(&e);
	tmp_end();
}

/* ---- loading: values ---- */

TEST(defaults_and_all_fields_are_loaded)
{
	struct errlist e = { 0 };
	struct route_table *t;
	const struct route *r, *d;
	json_t *f;

	tmp_begin();
	t = load_text("routes:\n"
	              "  - name: full.route_1\n"
	              "    priority: 40\n"
	              "    match:\n"
	              "      path: /qwen/**\n"
	              "    upstream:\n"
	              "      url: HTTP://10.0.0.5:3398\n"
	              "      api_key: literal-key\n"
	              "    strip_prefix: /qwen\n"
	              "    timeout: 30\n"
	              "    idle_timeout: 5\n"
	              "    strip_headers: [X-Debug, x-trace]\n"
	              "    add_headers: { X-Proxy-Source: fastgate, X-Num: 5 }\n"
	              "    add_body_fields:\n"
	              "      max_tokens: 2048\n"
	              "      temperature: 0.5\n"
	              "      stream: false\n"
	              "      quoted: \"42\"\n"
	              "      quoted_bool: 'true'\n"
	              "      nothing: null\n"
	              "      stop: [\"\\n\", END]\n"
	              "      meta: { user: bob, tags: [1, 2.5] }\n"
	              "  - name: d\n"
	              "    upstream: { url: \"https://api.example.com/v1/chat/completions\" }\n"
	              "    timeout: 7\n", &e);
	CHECK(t != NULL);
	CHECK_INT(e.n, 0);
	r = route_table_find(t, "full.route_1");
	d = route_table_find(t, "d");
	CHECK(r && d);
	if (!r || !d)
		goto done;
	CHECK_INT(r->priority, 40);
	CHECK(r->enabled && r->enabled_in_file);
	CHECK_INT(r->line, 2);
	CHECK_STR(r->match_path, "/qwen/**");
	CHECK_STR(r->targets[0].url, "HTTP://10.0.0.5:3398");
	CHECK_STR(r->targets[0].origin, "http://10.0.0.5:3398");
	CHECK_STR(r->targets[0].host, "10.0.0.5:3398");
	CHECK(r->targets[0].path == NULL);
	CHECK_STR(r->targets[0].api_key, "literal-key");
	CHECK(r->targets[0].api_key_file == NULL);
	CHECK_STR(r->strip_prefix, "/qwen");
	CHECK_INT(r->timeout, 30);
	CHECK_INT(r->idle_timeout, 5);
	CHECK_INT(r->n_strip_headers, 2);
	CHECK_STR(r->strip_headers[0], "x-debug");
	CHECK_STR(r->strip_headers[1], "x-trace");
	CHECK_INT(r->n_add_headers, 2);
	CHECK_STR(r->add_headers[0].name, "X-Proxy-Source");
	CHECK_STR(r->add_headers[0].value, "fastgate");
	CHECK_STR(r->add_headers[1].value, "5");
	CHECK(r->unavailable == NULL);
	f = r->add_body_fields;
	CHECK(json_is_integer(json_object_get(f, "max_tokens")));
	CHECK_INT(json_integer_value(json_object_get(f, "max_tokens")), 2048);
	CHECK(json_is_real(json_object_get(f, "temperature")));
	CHECK(json_is_false(json_object_get(f, "stream")));
	CHECK_STR(json_string_value(json_object_get(f, "quoted")), "42");
	CHECK_STR(json_string_value(json_object_get(f, "quoted_bool")), "true");
	CHECK(json_is_null(json_object_get(f, "nothing")));
	CHECK_STR(json_string_value(json_array_get(json_object_get(f, "stop"), 0)), "\n");
	CHECK_STR(json_string_value(json_array_get(json_object_get(f, "stop"), 1)), "END");
	CHECK_STR(json_string_value(json_object_get(json_object_get(f, "meta"), "user")), "bob");
	CHECK(json_is_real(json_array_get(json_object_get(json_object_get(f, "meta"), "tags"), 1)));

	CHECK_INT(d->priority, 100);
	CHECK(d->match_path == NULL && d->n_methods == 0 && d->match_body == NULL);
	CHECK_STR(d->targets[0].origin, "https://api.example.com");
	CHECK_STR(d->targets[0].path, "/v1/chat/completions");
	CHECK(d->targets[0].api_key == NULL);
	CHECK_INT(d->timeout, 7);
	CHECK_INT(d->idle_timeout, 7);   /* defaults to timeout */
	CHECK(d->add_body_fields == NULL);
	CHECK_STR(match_name(t, "GET", "/anything", NULL), "d");   /* no path: any */
	CHECK_STR(match_name(t, "GET", "/qwen/v1/x", NULL), "full.route_1");
done:
	route_table_unref(t);
	errlist_clear(&e);
	tmp_end();
}

TEST(upstream_url_forms)
{
	struct errlist e = { 0 };
	struct route_table *t;
	const struct route *r;

	tmp_begin();
	t = load_text("routes:\n"
	              "  - { name: slash, upstream: { url: \"http://h:8080/\" } }\n"
	              "  - { name: v6, upstream: { url: \"https://[::1]:8443/v1/x\" } }\n"
	              "  - { name: bare, upstream: { url: \"http://example.com\" } }\n", &e);
	CHECK(t != NULL);
	r = route_table_find(t, "slash");
	CHECK_STR(r ? r->targets[0].path : NULL, "/");
	CHECK_STR(r ? r->targets[0].origin : NULL, "http://h:8080");
	r = route_table_find(t, "v6");
	CHECK_STR(r ? r->targets[0].host : NULL, "[::1]:8443");
	CHECK_STR(r ? r->targets[0].path : NULL, "/v1/x");
	r = route_table_find(t, "bare");
	CHECK(r && r->targets[0].path == NULL);
	CHECK_STR(r ? r->targets[0].host : NULL, "example.com");
	route_table_unref(t);
	errlist_clear(&e);
	tmp_end();
}

TEST(empty_directory_and_empty_files_give_an_empty_table)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	t = route_table_load(tmpdir, &e);
	CHECK(t != NULL);
	CHECK_INT(t ? t->n : 99, 0);
	CHECK_STR(match_name(t, "GET", "/", NULL), "-");
	route_table_unref(t);
	put("a.yaml", "# only a comment\n");
	put("b.yaml", "routes: []\n");
	put("c.yaml", "routes:\n");
	put("d.yaml", "");
	t = route_table_load(tmpdir, &e);
	CHECK(t != NULL);
	CHECK_INT(t ? t->n : 99, 0);
	CHECK_INT(e.n, 0);
	route_table_unref(t);
	errlist_clear(&e);
	tmp_end();
}

TEST(load_files_takes_the_given_order_as_file_order)
{
	struct errlist e = { 0 };
	struct route_table *t;
	char p1[128], p2[128];
	const char *paths[2] = { p1, p2 };

	tmp_begin();
	put("z.yaml", "routes:\n  - { name: z, upstream: { url: \"http://h\" } }\n");
	put("a.yaml", "routes:\n  - { name: a, upstream: { url: \"http://h\" } }\n");
	snprintf(p1, sizeof(p1), "%s/z.yaml", tmpdir);
	snprintf(p2, sizeof(p2), "%s/a.yaml", tmpdir);
	t = route_table_load_files(paths, 2, &e);
	CHECK_STR(order(t), "z a");
	CHECK(t && t->dir == NULL);
	route_table_unref(t);
	errlist_clear(&e);
	tmp_end();
}

/* ---- loading: secrets ---- */

TEST(api_key_expands_env_vars_anywhere_in_the_string)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	setenv("FG_T_PART1", "abc", 1);
	setenv("FG_T_PART2", "xyz", 1);
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream:\n"
	              "      url: http://h\n"
	              "      api_key: \"pre-${FG_T_PART1}-$mid-${FG_T_PART2}\"\n", &e);
	CHECK(t != NULL);
	CHECK_STR(t ? t->routes[0]->targets[0].api_key : NULL, "pre-abc-$mid-xyz");
	route_table_unref(t);
	unsetenv("FG_T_PART1");
	unsetenv("FG_T_PART2");
	errlist_clear(&e);
	tmp_end();
}

TEST(unset_env_var_is_an_error_that_names_it_and_leaks_no_value)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	setenv("FG_T_SET", "top-secret-value", 1);
	unsetenv("FG_T_UNSET");
	setenv("FG_T_EMPTY", "", 1);
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream:\n"
	              "      url: http://h\n"
	              "      api_key: ${FG_T_SET}${FG_T_UNSET}\n"
	              "  - name: b\n"
	              "    upstream:\n"
	              "      url: http://h\n"
	              "      api_key: ${FG_T_EMPTY}\n"
	              "  - name: c\n"
	              "    upstream:\n"
	              "      url: http://h\n"
	              "      api_key: ${FG_T_SET\n", &e);
	CHECK(t == NULL);
	CHECK_INT(e.n, 3);
	if (e.n == 3) {
		CHECK_STR(e.lines[0], where("r.yaml", 5,
		          "route \"a\": api_key: environment variable FG_T_UNSET is not set"));
		CHECK_STR(e.lines[1], where("r.yaml", 9,
		          "route \"b\": api_key: environment variable FG_T_EMPTY is empty"));
		CHECK_STR(e.lines[2], where("r.yaml", 13,
		          "route \"c\": api_key: bad ${...}: write ${NAME} with a name of letters, digits and _"));
	}
	CHECK(!any_line_has(&e, "top-secret-value"));
	unsetenv("FG_T_SET");
	unsetenv("FG_T_EMPTY");
	errlist_clear(&e);
	tmp_end();
}

TEST(if_env_unset_keeps_the_route_listed_but_unavailable)
{
	struct errlist e = { 0 };
	struct route_table *t;
	const struct route *r;
	const char *text = "routes:\n"
	                   "  - name: opt\n"
	                   "    if_env: FG_T_IFENV\n"
	                   "    enabled: true\n"
	                   "    match: { path: /v1/chat/completions }\n"
	                   "    upstream:\n"
	                   "      url: https://api.example.com/v1/chat/completions\n"
	                   "      api_key: ${FG_T_IFENV}\n"
	                   "  - name: other\n"
	                   "    priority: 200\n"
	                   "    match: { path: /v1/chat/completions }\n"
	                   "    upstream: { url: \"http://h\" }\n";

	tmp_begin();
	unsetenv("FG_T_IFENV");
	t = load_text(text, &e);
	CHECK(t != NULL);
	CHECK_INT(e.n, 0);
	r = route_table_find(t, "opt");
	CHECK(r != NULL);
	if (r) {
		CHECK(!r->enabled);
		CHECK(!r->enabled_in_file);
		CHECK(r->targets[0].api_key == NULL);
		CHECK_STR(r->unavailable, "FG_T_IFENV is not set");
	}
	CHECK_STR(match_name(t, "POST", "/v1/chat/completions", NULL), "other");
	route_table_unref(t);

	setenv("FG_T_IFENV", "", 1);
	t = load_text(text, &e);
	r = route_table_find(t, "opt");
	CHECK_STR(r ? r->unavailable : NULL, "FG_T_IFENV is empty");
	route_table_unref(t);

	setenv("FG_T_IFENV", "sk-real", 1);
	t = load_text(text, &e);
	CHECK_INT(e.n, 0);
	r = route_table_find(t, "opt");
	CHECK(r != NULL);
	if (r) {
		CHECK(r->enabled && r->enabled_in_file);
		CHECK(r->unavailable == NULL);
		CHECK_STR(r->targets[0].api_key, "sk-real");
	}
	CHECK_STR(match_name(t, "POST", "/v1/chat/completions", NULL), "opt");
	route_table_unref(t);
	unsetenv("FG_T_IFENV");
	errlist_clear(&e);
	tmp_end();
}

TEST(if_env_does_not_hide_other_errors)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	unsetenv("FG_T_IFENV");
	t = load_text("routes:\n"
	              "  - name: opt\n"
	              "    if_env: FG_T_IFENV\n"
	              "    upstream:\n"
	              "      url: ftp://h\n", &e);
	check_one_error(t, &e, "r.yaml", 5,
	                "route \"opt\": upstream url must start with http:// or https://");
	errlist_clear(&e);
	t = load_text("routes:\n  - { name: x, if_env: 1BAD, upstream: { url: \"http://h\" } }\n", &e);
	check_one_error(t, &e, "r.yaml", 2,
	                "route \"x\": if_env: \"1BAD\" is not an environment variable name");
	errlist_clear(&e);
	tmp_end();
}

TEST(api_key_file_is_read_trimmed_and_must_be_private)
{
	struct errlist e = { 0 };
	struct route_table *t;
	char line[512];

	tmp_begin();
	put_mode("good.key", "sk-from-file\r\n\n", 0600);
	put_mode("open.key", "sk-open\n", 0640);
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream:\n"
	              "      url: http://h\n"
	              "      api_key_file: good.key\n", &e);   /* relative to the route file */
	CHECK(t != NULL);
	CHECK_STR(t ? t->routes[0]->targets[0].api_key : NULL, "sk-from-file");
	CHECK_STR(t ? t->routes[0]->targets[0].api_key_file : NULL, "good.key");
	route_table_unref(t);

	snprintf(line, sizeof(line),
	         "route \"a\": api_key_file %s/open.key can be read by group or others (mode 0640); run chmod 600 on it",
	         tmpdir);
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream:\n"
	              "      url: http://h\n"
	              "      api_key_file: open.key\n", &e);
	check_one_error(t, &e, "r.yaml", 5, line);
	CHECK(!any_line_has(&e, "sk-open"));
	errlist_clear(&e);

	snprintf(line, sizeof(line), "route \"a\": api_key_file %s/missing.key: No such file or directory",
	         tmpdir);
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream:\n"
	              "      url: http://h\n"
	              "      api_key_file: missing.key\n", &e);
	check_one_error(t, &e, "r.yaml", 5, line);
	errlist_clear(&e);

	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream:\n"
	              "      url: http://h\n"
	              "      api_key: x\n"
	              "      api_key_file: good.key\n", &e);
	check_one_error(t, &e, "r.yaml", 6, "route \"a\": use either api_key or api_key_file, not both");
	errlist_clear(&e);
	tmp_end();
}

/* ---- loading: errors, each with its exact FILE:LINE ---- */

TEST(error_yaml_syntax_reports_the_parser_line)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	t = load_text("routes:\n  - name: a\n  bad: : x\n", &e);
	check_one_error(t, &e, "r.yaml", 3,
	                "YAML syntax error: did not find expected '-' indicator "
	                "(while parsing a block collection at line 2)");
	errlist_clear(&e);
	tmp_end();
}

TEST(error_unknown_key_names_it_and_lists_valid_keys)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream:\n"
	              "      url: http://h\n"
	              "      apikey: x\n"
	              "    bogus: 1\n", &e);
	CHECK(t == NULL);
	CHECK_INT(e.n, 2);
	if (e.n == 2) {
		CHECK_STR(e.lines[0], where("r.yaml", 5,
		          "route \"a\": unknown key \"apikey\" in upstream (valid: url, api_key, api_key_file, ca_file, weight, priority, model, "
		          "provider, deployment, api_version)"));
		CHECK_STR(e.lines[1], where("r.yaml", 6,
		          "route \"a\": unknown key \"bogus\" in a route (valid: name, priority, enabled, "
		          "if_env, match, upstream, strip_prefix, timeout, idle_timeout, strip_headers, "
		          "add_headers, add_body_fields, stream_usage, log_bodies, upstreams, balance, retry, "
		          "breaker, health, fallback, require_price, on_disconnect, models)"));
	}
	errlist_clear(&e);
	t = load_text("route:\n  - name: a\n", &e);
	check_one_error(t, &e, "r.yaml", 1, "unknown key \"route\" in the top level (valid: routes)");
	errlist_clear(&e);
	tmp_end();
}

/* Spend control's route keys: require_price, on_disconnect and the models list. */
TEST(spend_keys_are_read_and_their_mistakes_named)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream: { url: \"http://h\" }\n"
	              "    require_price: true\n"
	              "    on_disconnect: drain\n"
	              "    models: [gpt-4o, \"Qwen/Qwen3-8B\"]\n"
	              "  - name: b\n"
	              "    upstream: { url: \"http://h\" }\n", &e);
	CHECK(t != NULL);
	if (t) {
		const struct route *a = route_table_find(t, "a"), *b = route_table_find(t, "b");

		CHECK(a && a->require_price && a->drain_on_disconnect && a->n_models == 2);
		if (a && a->n_models == 2) {
			CHECK_STR(a->models[0], "gpt-4o");
			CHECK_STR(a->models[1], "Qwen/Qwen3-8B");
		}
		CHECK(b && !b->require_price && !b->drain_on_disconnect && b->n_models == 0);
		route_table_unref(t);
	}
	errlist_clear(&e);
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream: { url: \"http://h\" }\n"
	              "    on_disconnect: keep\n"
	              "    models: [gpt-4o, gpt-4o, \"a b\"]\n", &e);
	CHECK(t == NULL);
	CHECK_INT(e.n, 3);
	if (e.n == 3) {
		CHECK_STR(e.lines[0], where("r.yaml", 4,
		          "route \"a\": on_disconnect: expected cancel or drain, not \"keep\""));
		CHECK_STR(e.lines[1], where("r.yaml", 5,
		          "route \"a\": models: \"gpt-4o\" is listed twice"));
		CHECK_STR(e.lines[2], where("r.yaml", 5,
		          "route \"a\": models: \"a b\" is not a model id (1 to 256 printable "
		          "characters, no spaces)"));
	}
	errlist_clear(&e);
}

TEST(error_wrong_types_say_what_was_expected)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    priority: high\n"
	              "    enabled: yes\n"
	              "    match:\n"
	              "      methods: POST\n"
	              "      body: { model: [a] }\n"
	              "    upstream: { url: \"http://h\" }\n"
	              "    add_headers: [x]\n"
	              "    timeout: \"5\"\n", &e);
	CHECK(t == NULL);
	CHECK_INT(e.n, 6);
	if (e.n == 6) {
		CHECK_STR(e.lines[0], where("r.yaml", 3,
		          "route \"a\": priority: expected an integer, got a string"));
		CHECK_STR(e.lines[1], where("r.yaml", 4,
		          "route \"a\": enabled: expected true or false, got a string"));
		CHECK_STR(e.lines[2], where("r.yaml", 6,
		          "route \"a\": methods: expected a sequence such as [GET, POST], got a string"));
		CHECK_STR(e.lines[3], where("r.yaml", 7,
		          "route \"a\": match body \"model\": expected a string glob, true/false or a number, got a sequence"));
		CHECK_STR(e.lines[4], where("r.yaml", 9,
		          "route \"a\": add_headers: expected a mapping such as { X-Proxy-Source: fastgate }, got a sequence"));
		CHECK_STR(e.lines[5], where("r.yaml", 10,
		          "route \"a\": timeout: expected an integer, got a string"));
	}
	errlist_clear(&e);
	t = load_text("- name: a\n", &e);
	check_one_error(t, &e, "r.yaml", 1,
	                "expected a mapping with a routes: key at the top, got a sequence");
	errlist_clear(&e);
	t = load_text("routes:\n  - just a string\n", &e);
	check_one_error(t, &e, "r.yaml", 2,
	                "each entry under routes: must be a mapping (- name: ...), got a string");
	errlist_clear(&e);
	tmp_end();
}

TEST(error_duplicate_name_across_files_gives_both_locations)
{
	struct errlist e = { 0 };
	struct route_table *t;
	char first[256], rest[512];

	tmp_begin();
	put("10-a.yaml", "routes:\n"
	                 "  - name: one\n"
	                 "    upstream: { url: \"http://h\" }\n"
	                 "  - upstream: { url: \"http://h\" }\n"
	                 "    name: twin\n");
	put("20-b.yaml", "# second file\n"
	                 "routes:\n"
	                 "  - name: two\n"
	                 "    upstream: { url: \"http://h\" }\n"
	                 "  - name: twin\n"
	                 "    upstream: { url: \"http://h\" }\n");
	t = route_table_load(tmpdir, &e);
	snprintf(first, sizeof(first), "%s/10-a.yaml:5", tmpdir);
	snprintf(rest, sizeof(rest), "duplicate route name \"twin\" (first defined at %s)", first);
	check_one_error(t, &e, "20-b.yaml", 5, rest);
	errlist_clear(&e);
	tmp_end();
}

TEST(error_missing_name_upstream_and_url)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	t = load_text("routes:\n"
	              "  - priority: 1\n"
	              "    upstream: { url: \"http://h\" }\n"
	              "  - name: nour\n"
	              "    timeout: 5\n"
	              "  - name: nourl\n"
	              "    upstream:\n"
	              "      api_key: x\n", &e);
	CHECK(t == NULL);
	CHECK_INT(e.n, 3);
	if (e.n == 3) {
		CHECK_STR(e.lines[0], where("r.yaml", 2,
		          "route has no name: (every route needs a unique name)"));
		CHECK_STR(e.lines[1], where("r.yaml", 4,
		          "route \"nour\": route has no upstream: (it needs at least upstream: { url: ... })"));
		CHECK_STR(e.lines[2], where("r.yaml", 8, "route \"nourl\": upstream has no url"));
	}
	errlist_clear(&e);
	tmp_end();
}

TEST(error_bad_names)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	t = load_text("routes:\n"
	              "  - name: \"has space\"\n"
	              "    upstream: { url: \"http://h\" }\n", &e);
	check_one_error(t, &e, "r.yaml", 2,
	                "name \"has space\" may only use letters, digits, '_', '.' and '-'");
	errlist_clear(&e);
	t = load_text("routes:\n"
	              "  - name:\n"
	              "    upstream: { url: \"http://h\" }\n", &e);
	check_one_error(t, &e, "r.yaml", 2, "name: expected a string, got nothing (null)");
	errlist_clear(&e);
	tmp_end();
}

TEST(error_bad_upstream_urls)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	t = load_text("routes:\n"
	              "  - { name: a, upstream: { url: \"ftp://h/x\" } }\n"
	              "  - { name: b, upstream: { url: \"http://user:pw@h/x\" } }\n"
	              "  - { name: c, upstream: { url: \"http://h/x?a=1\" } }\n"
	              "  - { name: d, upstream: { url: \"http:///x\" } }\n"
	              "  - { name: e, upstream: { url: \"http://h:99999\" } }\n"
	              "  - { name: f, upstream: { url: \"http://h/x#frag\" } }\n"
	              "  - { name: g, upstream: { url: \"http://[zz]:1/\" } }\n", &e);
	CHECK(t == NULL);
	CHECK_INT(e.n, 7);
	if (e.n == 7) {
		CHECK_STR(e.lines[0], where("r.yaml", 2,
		          "route \"a\": upstream url must start with http:// or https://"));
		CHECK_STR(e.lines[1], where("r.yaml", 3,
		          "route \"b\": upstream url must not contain user:password@; use api_key"));
		CHECK_STR(e.lines[2], where("r.yaml", 4,
		          "route \"c\": upstream url must not contain a query string or fragment"));
		CHECK_STR(e.lines[3], where("r.yaml", 5, "route \"d\": upstream url has no host"));
		CHECK_STR(e.lines[4], where("r.yaml", 6,
		          "route \"e\": upstream url port must be a number from 1 to 65535"));
		CHECK_STR(e.lines[5], where("r.yaml", 7,
		          "route \"f\": upstream url must not contain a query string or fragment"));
		CHECK_STR(e.lines[6], where("r.yaml", 8, "route \"g\": upstream url has a bad host name"));
	}
	CHECK(!any_line_has(&e, "pw"));
	errlist_clear(&e);
	tmp_end();
}

TEST(error_bad_path_patterns)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	t = load_text("routes:\n"
	              "  - { name: a, match: { path: \"/a**/b\" }, upstream: { url: \"http://h\" } }\n"
	              "  - { name: b, match: { path: \"/user/x{id}\" }, upstream: { url: \"http://h\" } }\n"
	              "  - { name: c, match: { path: \"/v1/x?y=1\" }, upstream: { url: \"http://h\" } }\n"
	              "  - { name: d, match: { path: \"\" }, upstream: { url: \"http://h\" } }\n"
	              "  - { name: e, match: { path: \"/u/{i-d}\" }, upstream: { url: \"http://h\" } }\n", &e);
	CHECK(t == NULL);
	CHECK_INT(e.n, 5);
	if (e.n == 5) {
		CHECK_STR(e.lines[0], where("r.yaml", 2, "route \"a\": bad path pattern \"/a**/b\": it "
		          "uses ** inside a segment; ** must be a whole segment, as in /api/**"));
		CHECK_STR(e.lines[1], where("r.yaml", 3, "route \"b\": bad path pattern \"/user/x{id}\": it "
		          "uses {name} inside a segment; {name} must be a whole segment, as in /user/{id}"));
		CHECK_STR(e.lines[2], where("r.yaml", 4, "route \"c\": bad path pattern \"/v1/x?y=1\": it "
		          "must not contain '?' or '#' (the query string is not matched)"));
		CHECK_STR(e.lines[3], where("r.yaml", 5, "route \"d\": bad path pattern \"\": it is empty"));
		CHECK_STR(e.lines[4], where("r.yaml", 6, "route \"e\": bad path pattern \"/u/{i-d}\": it "
		          "has a bad {name}: use letters, digits and _ between the braces"));
	}
	errlist_clear(&e);
	tmp_end();
}

TEST(error_timeouts_must_be_positive)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream: { url: \"http://h\" }\n"
	              "    timeout: -5\n"
	              "    idle_timeout: 0\n", &e);
	CHECK(t == NULL);
	CHECK_INT(e.n, 2);
	if (e.n == 2) {
		CHECK_STR(e.lines[0], where("r.yaml", 4,
		          "route \"a\": timeout: must be a whole number of seconds from 1 to 86400, got -5"));
		CHECK_STR(e.lines[1], where("r.yaml", 5,
		          "route \"a\": idle_timeout: must be a whole number of seconds from 1 to 86400, got 0"));
	}
	errlist_clear(&e);
	tmp_end();
}

TEST(error_duplicate_keys_and_bad_headers)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream: { url: \"http://h\" }\n"
	              "    timeout: 5\n"
	              "    timeout: 6\n"
	              "    strip_headers: [\"bad header\"]\n"
	              "    add_headers: { X-A: \"line\\r\\nInjected: 1\" }\n"
	              "    strip_prefix: /qwen/\n", &e);
	CHECK(t == NULL);
	CHECK_INT(e.n, 4);
	if (e.n == 4) {
		CHECK_STR(e.lines[0], where("r.yaml", 5, "route \"a\": duplicate key \"timeout\" in a route"));
		CHECK_STR(e.lines[1], where("r.yaml", 6,
		          "route \"a\": strip_headers: \"bad header\" is not a valid header name"));
		CHECK_STR(e.lines[2], where("r.yaml", 7,
		          "route \"a\": add_headers: value of X-A contains a newline or control character"));
		CHECK_STR(e.lines[3], where("r.yaml", 8, "route \"a\": strip_prefix: expected a literal path "
		          "starting with / and not ending with /, such as /qwen"));
	}
	errlist_clear(&e);
	tmp_end();
}

TEST(error_every_file_is_checked_and_errors_accumulate)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	errlist_add(&e, "an earlier, unrelated error");
	put("a.yaml", "routes:\n  - { name: a, upstream: { url: \"ftp://h\" } }\n");
	put("b.yaml", "routes:\n  - { name: ok, upstream: { url: \"http://h\" } }\n");
	put("c.yaml", "routes: [\n");
	t = route_table_load(tmpdir, &e);
	CHECK(t == NULL);
	CHECK_INT(e.n, 3);
	if (e.n == 3) {
		CHECK_STR(e.lines[0], "an earlier, unrelated error");
		CHECK_STR(e.lines[1], where("a.yaml", 2,
		          "route \"a\": upstream url must start with http:// or https://"));
		CHECK(strncmp(e.lines[2], where("c.yaml", 2, "YAML syntax error: "),
		              strlen(where("c.yaml", 2, "YAML syntax error: "))) == 0);
	}
	errlist_clear(&e);
	tmp_end();
}

TEST(error_missing_directory_is_one_line_naming_it)
{
	struct errlist e = { 0 };
	struct route_table *t = route_table_load("/nonexistent/fg-routes.d", &e);

	CHECK(t == NULL);
	CHECK_INT(e.n, 1);
	CHECK_STR(e.n ? e.lines[0] : NULL,
	          "/nonexistent/fg-routes.d: cannot open the route directory: No such file or directory");
	errlist_clear(&e);
}

TEST(error_second_yaml_document_and_alias_bomb)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	t = load_text("routes: []\n---\nroutes: []\n", &e);
	check_one_error(t, &e, "r.yaml", 3, "only one YAML document per route file (remove the ---)");
	errlist_clear(&e);
	/* a self-referencing alias and an exponential one: both must stop, with an error */
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream: { url: \"http://h\" }\n"
	              "    add_body_fields: { x: &loop [ *loop ] }\n", &e);
	CHECK(t == NULL);
	CHECK(any_line_has(&e, "add_body_fields: value is nested too deeply or too large"));
	errlist_clear(&e);
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream: { url: \"http://h\" }\n"
	              "    add_body_fields:\n"
	              "      a: &a [x, x, x, x, x, x, x, x, x, x]\n"
	              "      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
	              "      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
	              "      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
	              "      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
	              "      f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n", &e);
	CHECK(t == NULL);
	CHECK(any_line_has(&e, "add_body_fields: value is nested too deeply or too large"));
	errlist_clear(&e);
	tmp_end();
}

/* ---- the shipped routes.d ---- */

TEST(shipped_routes_load_and_route_the_demo)
{
	struct errlist e = { 0 };
	struct route_table *t;
	const struct route *r;

	unsetenv("OPENAI_API_KEY");
	/* tests run from the top of the source tree (tests/run-all.sh does cd there) */
	t = route_table_load("routes.d", &e);
	CHECK(t != NULL);
	CHECK_INT(e.n, 0);
	for (size_t i = 0; i < e.n; i++)
		fprintf(stderr, "  %s\n", e.lines[i]);
	CHECK_STR(order(t), "demo demo-models openai");
	r = route_table_find(t, "demo");
	CHECK_STR(r ? r->targets[0].api_key : NULL, "mock-upstream-key");
	CHECK_STR(r ? r->targets[0].origin : NULL, "http://127.0.0.1:8515");
	CHECK_STR(r ? r->targets[0].path : NULL, "/v1/chat/completions");
	CHECK(r && r->n_add_headers == 1 && strcmp(r->add_headers[0].value, "fastgate") == 0);
	r = route_table_find(t, "demo-models");
	CHECK(r && r->targets[0].path == NULL);
	r = route_table_find(t, "openai");
	CHECK(r && !r->enabled && r->targets[0].api_key == NULL);
	CHECK_STR(r ? r->unavailable : NULL, "OPENAI_API_KEY is not set");
	CHECK_STR(match_name(t, "POST", "/v1/chat/completions", "{\"model\":\"demo-model\"}"), "demo");
	CHECK_STR(match_name(t, "POST", "/v1/chat/completions", "{\"model\":\"gpt-4o\"}"), "-");
	CHECK_STR(match_name(t, "GET", "/v1/models", NULL), "demo-models");
	route_table_unref(t);

	setenv("OPENAI_API_KEY", "sk-test", 1);
	t = route_table_load("routes.d", &e);
	CHECK_INT(e.n, 0);
	r = route_table_find(t, "openai");
	CHECK(r && r->enabled && r->unavailable == NULL);
	CHECK_STR(r ? r->targets[0].api_key : NULL, "sk-test");
	CHECK_STR(match_name(t, "POST", "/v1/chat/completions", "{\"model\":\"gpt-4o\"}"), "openai");
	route_table_unref(t);
	unsetenv("OPENAI_API_KEY");
	errlist_clear(&e);
}

TEST(a_pool_of_upstreams_with_its_policies_loads)
{
	struct errlist e = { 0 };
	struct route_table *t;
	const struct route *r;

	tmp_begin();
	setenv("POOL_KEY_B", "sk-b", 1);
	t = load_text("routes:\n"
	              "  - name: chat\n"
	              "    balance: least_inflight\n"
	              "    upstreams:\n"
	              "      - url: http://10.0.0.5:8000/v1/chat/completions\n"
	              "        weight: 3\n"
	              "      - url: https://b.example/v1\n"
	              "        api_key: ${POOL_KEY_B}\n"
	              "        model: gpt-4o\n"
	              "        priority: 1\n"
	              "    retry: { attempts: 2, on: [connect, timeout, 429, 5xx, 404], deadline: 30 }\n"
	              "    breaker: { failures: 3, error_rate: 40, min_requests: 10, cooldown: 2, max_cooldown: 60 }\n"
	              "    health: { path: /v1/models, interval: 5 }\n"
	              "    fallback: [backup]\n"
	              "  - name: backup\n"
	              "    upstream: { url: http://10.0.0.9:8000 }\n", &e);
	CHECK(t != NULL);
	for (size_t i = 0; i < e.n; i++)
		fprintf(stderr, "  %s\n", e.lines[i]);
	r = t ? route_table_find(t, "chat") : NULL;
	CHECK(r != NULL);
	if (r) {
		CHECK_INT(r->n_targets, 2);
		CHECK_INT(r->balance, BALANCE_LEAST_INFLIGHT);
		CHECK_INT(r->targets[0].weight, 3);
		CHECK_INT(r->targets[0].priority, 0);
		CHECK(r->targets[0].api_key == NULL && r->targets[0].model == NULL);
		CHECK_INT(r->targets[0].transport, TR_KIND_NATIVE);
		CHECK_STR(r->targets[1].api_key, "sk-b");
		CHECK_STR(r->targets[1].model, "gpt-4o");
		CHECK_INT(r->targets[1].priority, 1);
		CHECK_INT(r->targets[1].transport, TR_KIND_CURL);
		CHECK_STR(r->targets[1].path, "/v1");
		CHECK_INT(r->retry.attempts, 2);
		CHECK_INT(r->retry.on, RETRY_ON_CONNECT | RETRY_ON_TIMEOUT | RETRY_ON_429 | RETRY_ON_5XX);
		CHECK_INT(r->retry.n_codes, 1);
		CHECK_INT(r->retry.codes[0], 404);
		CHECK_INT(r->retry.deadline_s, 30);
		CHECK(r->breaker_on);
		CHECK_INT(r->breaker.failures, 3);
		CHECK_INT(r->breaker.error_rate, 40);
		CHECK_INT(r->breaker.min_requests, 10);
		CHECK_INT(r->breaker.cooldown_s, 2);
		CHECK_INT(r->breaker.max_cooldown_s, 60);
		CHECK_STR(r->health.path, "/v1/models");
		CHECK_INT(r->health.interval_s, 5);
		CHECK_INT(r->health.unhealthy, 3);
		CHECK_INT(r->n_fallback, 1);
		CHECK_STR(r->n_fallback ? r->fallback[0] : NULL, "backup");
		/* the keys differ, so do the identities */
		CHECK(memcmp(r->targets[0].key_hash, r->targets[1].key_hash, 32) != 0);
	}
	r = t ? route_table_find(t, "backup") : NULL;
	if (r) {
		/* one upstream: no breaker unless asked, and no retry to make */
		CHECK(!r->breaker_on);
		CHECK_INT(r->retry.attempts, 1);
		CHECK_INT(r->retry.on, RETRY_ON_CONNECT);
		CHECK_INT(r->balance, BALANCE_WEIGHTED);
	}
	route_table_unref(t);
	unsetenv("POOL_KEY_B");
	errlist_clear(&e);
	tmp_end();
}

TEST(pool_mistakes_are_reported_at_their_line)
{
	struct errlist e = { 0 };
	struct route_table *t;

	tmp_begin();
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream: { url: http://h }\n"
	              "    upstreams: [ { url: http://g } ]\n", &e);
	check_one_error(t, &e, "r.yaml", 4,
	                "route \"a\": use either upstream: (one) or upstreams: (a list), not both");
	errlist_clear(&e);
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstreams: []\n", &e);
	check_one_error(t, &e, "r.yaml", 3, "route \"a\": upstreams: expected from 1 to 64 upstreams, got 0");
	errlist_clear(&e);
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstreams:\n"
	              "      - url: http://h\n"
	              "      - url: http://h\n", &e);
	check_one_error(t, &e, "r.yaml", 5,
	                "route \"a\": upstreams[1] repeats upstreams[0] (same url, provider, deployment and key); give one of them a weight instead");
	errlist_clear(&e);
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstreams:\n"
	              "      - url: http://h\n"
	              "        weight: 0\n", &e);
	check_one_error(t, &e, "r.yaml", 5, "route \"a\": weight: expected a whole number from 1 to 1000, got 0");
	errlist_clear(&e);
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream: { url: http://h }\n"
	              "    balance: fastest\n", &e);
	check_one_error(t, &e, "r.yaml", 4,
	                "route \"a\": balance: unknown \"fastest\" (valid: round_robin, weighted, least_inflight, latency, random)");
	errlist_clear(&e);
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream: { url: http://h }\n"
	              "    retry: { on: [connect, sometimes] }\n", &e);
	check_one_error(t, &e, "r.yaml", 4,
	                "route \"a\": retry on: \"sometimes\" is not an outcome (valid: connect, timeout, reset, protocol, 429, 5xx, or a status from 400 to 599)");
	errlist_clear(&e);
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream: { url: http://h }\n"
	              "    retry: { attempts: 11 }\n", &e);
	check_one_error(t, &e, "r.yaml", 4,
	                "route \"a\": retry attempts: expected a count of tries from 1 to 10, got 11");
	errlist_clear(&e);
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream: { url: http://h }\n"
	              "    breaker: { cooldown: 10, max_cooldown: 5 }\n", &e);
	check_one_error(t, &e, "r.yaml", 4,
	                "route \"a\": breaker: max_cooldown (5) is shorter than cooldown (10)");
	errlist_clear(&e);
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream: { url: http://h }\n"
	              "    health: { interval: 5 }\n", &e);
	check_one_error(t, &e, "r.yaml", 4, "route \"a\": health has no path (such as path: /v1/models)");
	errlist_clear(&e);
	t = load_text("routes:\n"
	              "  - name: a\n"
	              "    upstream: { url: http://h }\n"
	              "    fallback: [a]\n"
	              "  - name: b\n"
	              "    upstream: { url: http://h }\n"
	              "    fallback: [nowhere]\n", &e);
	CHECK(t == NULL);
	CHECK(any_line_has(&e, "r.yaml:4: route \"a\": fallback names the route itself"));
	CHECK(any_line_has(&e, "r.yaml:7: route \"b\": fallback \"nowhere\" is not a route"));
	route_table_unref(t);
	errlist_clear(&e);
	tmp_end();
}

TEST(azure_upstreams_load_and_their_mistakes_are_named)
{
	struct errlist e = { 0 };
	struct route_table *t;
	const struct route *r;

	tmp_begin();
	t = load_text("routes:\n"
	              "  - name: az\n"
	              "    upstreams:\n"
	              "      - url: https://res.openai.azure.com\n"
	              "        provider: azure\n"
	              "        deployment: gpt4o-prod\n"
	              "        api_version: \"2024-10-21\"\n"
	              "        api_key: k\n"
	              "      - url: https://res.openai.azure.com\n"
	              "        provider: azure\n"
	              "        deployment: gpt4o-mini\n"
	              "        api_version: \"2024-10-21\"\n"
	              "        api_key: k\n"
	              "      - url: https://res.openai.azure.com\n"
	              "        provider: azure\n"
	              "        api_version: v1\n"
	              "        api_key: k\n", &e);
	CHECK(t != NULL);
	for (size_t i = 0; i < e.n; i++)
		fprintf(stderr, "  %s\n", e.lines[i]);
	r = t ? t->routes[0] : NULL;
	if (r) {
		/* two deployments of one resource under one key are two upstreams */
		CHECK_INT(r->n_targets, 3);
		CHECK_INT(r->targets[0].provider, PROVIDER_AZURE);
		CHECK_STR(r->targets[0].deployment, "gpt4o-prod");
		CHECK_STR(r->targets[0].api_version, "2024-10-21");
		CHECK(!route_target_same(&r->targets[0], &r->targets[1]));
		CHECK(r->targets[2].deployment == NULL);
		CHECK_STR(provider_name(r->targets[2].provider), "azure");
	}
	route_table_unref(t);
	errlist_clear(&e);

	t = load_text("routes:\n  - name: c\n    upstream: { url: https://api.anthropic.com, provider: anthropic }\n"
	              "  - name: d\n    upstream: { url: https://api.anthropic.com, provider: anthropic,\n"
	              "                api_version: \"2024-01-01\" }\n", &e);
	CHECK(t != NULL);
	if (t) {
		CHECK_INT(t->routes[0]->targets[0].provider, PROVIDER_ANTHROPIC);
		CHECK_STR(t->routes[0]->targets[0].api_version, "2023-06-01");
		CHECK_STR(t->routes[1]->targets[0].api_version, "2024-01-01");
	}
	route_table_unref(t);
	errlist_clear(&e);

	static const struct { const char *target; int line; const char *msg; } bad[] = {
		{ "      provider: azure\n      deployment: d\n", 4,
		  "route \"a\": provider azure needs api_version (such as \"2024-10-21\", or v1 for the /openai/v1 API)" },
		{ "      provider: azure\n      api_version: \"2024-10-21\"\n", 4,
		  "route \"a\": provider azure needs deployment (unless api_version is v1)" },
		{ "      provider: azure\n      api_version: v1\n      deployment: d\n", 7,
		  "route \"a\": deployment: not with api_version v1 (the model in the body names the deployment)" },
		{ "      deployment: d\n", 5, "route \"a\": deployment: only for provider: azure" },
		{ "      provider: azure\n      api_version: \"2024/10\"\n      deployment: d\n", 6,
		  "route \"a\": api_version: expected a version such as \"2024-10-21\" or v1" },
		{ "      provider: azure\n      api_version: v1\n      deployment: \"a b\"\n", 7,
		  "route \"a\": deployment: expected a deployment name of letters, digits, '-', '.' and '_'" },
		{ "      provider: anthropic\n      deployment: d\n", 6,
		  "route \"a\": deployment: only for provider: azure" },
		{ "      api_version: \"2024-10-21\"\n", 5,
		  "route \"a\": api_version: only for provider: azure or anthropic" },
		{ "      provider: bedrock\n", 5, "route \"a\": provider: unknown \"bedrock\" (valid: openai, anthropic, azure)" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char text[512];

		snprintf(text, sizeof(text), "routes:\n  - name: a\n    upstream:\n      url: http://h\n%s",
		         bad[i].target);
		t = load_text(text, &e);
		check_one_error(t, &e, "r.yaml", bad[i].line, bad[i].msg);
		errlist_clear(&e);
	}
	t = load_text("routes:\n  - name: a\n    upstream:\n      url: https://res.openai.azure.com/openai\n"
	              "      provider: azure\n      api_version: v1\n", &e);
	check_one_error(t, &e, "r.yaml", 4,
	                "route \"a\": provider azure: url is the resource alone, such as https://RES.openai.azure.com (the path is made from deployment and api_version)");
	errlist_clear(&e);
	tmp_end();
}

RUN_TESTS()
