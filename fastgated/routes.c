/* Route table: parse the routes.d YAML files into an ordered, reference-counted table and
 * pick the route for a request.
 *
 * Loading reports every problem it finds, as "FILE:LINE: message", and builds a table only
 * when there are none, so a reload with a typo never half-applies. Matching is on the
 * request path and must not allocate much or blow up on odd patterns: the path matcher is a
 * dynamic programme over (pattern segment, path segment) pairs, O(segments^2) at worst. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/sha.h>
#include <yaml.h>

#include "pool.h"
#include "routes.h"
#include "util.h"

#define ROUTE_FILE_MAX   (4u << 20)  /* bytes; a route file is configuration, not data */
#define KEY_FILE_MAX     65536       /* bytes of an api_key_file */
#define JSON_DEPTH_MAX   32          /* nesting in add_body_fields (aliases can recurse) */
#define JSON_NODES_MAX   10000       /* nodes per add_body_fields (aliases can multiply) */
#define TIMEOUT_MAX      86400       /* seconds */
#define DEFAULT_PRIORITY 100
#define DEFAULT_TIMEOUT  60
#define LOG_BODIES_MAX   (1024 * 1024)  /* bytes of each body kept in the audit row */

/* ---- small helpers (allocation: util.h) ---- */

/* Free a string that may hold a secret, wiping it first. */
static void free_secret(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

struct sbuf {
	char *s;
	size_t n, cap;
};

static void sb_add(struct sbuf *b, const char *p, size_t len)
{
	if (b->n + len + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		char *ns;

		while (cap < b->n + len + 1)
			cap *= 2;
		/* not realloc: the buffer may hold a secret, and realloc could leave a copy */
		ns = xcalloc(1, cap);
		if (b->s) {
			memcpy(ns, b->s, b->n);
			explicit_bzero(b->s, b->cap);
			free(b->s);
		}
		b->s = ns;
		b->cap = cap;
	}
	memcpy(b->s + b->n, p, len);
	b->n += len;
	b->s[b->n] = '\0';
}

static void sb_wipe(struct sbuf *b)
{
	if (b->s) {
		explicit_bzero(b->s, b->cap);
		free(b->s);
	}
	b->s = NULL;
	b->n = b->cap = 0;
}

static bool is_tchar(int ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* An HTTP token (method or header name). */
static bool is_token(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (!is_tchar((unsigned char)*s))
			return false;
	return true;
}

static bool has_ctl(const char *s, size_t len, bool allow_tab)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];

		if ((ch < 0x20 && !(allow_tab && ch == '\t')) || ch == 0x7f)
			return true;
	}
	return false;
}

static bool is_env_name(const char *s, size_t len)
{
	if (len == 0 || (!isalpha((unsigned char)s[0]) && s[0] != '_'))
		return false;
	for (size_t i = 1; i < len; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_')
			return false;
	return true;
}

/* ---- freeing ---- */

static void target_clear(struct route_target *t)
{
	free(t->url);
	free(t->origin);
	free(t->path);
	free(t->host);
	free_secret(t->api_key);
	free(t->api_key_file);
	free(t->ca_file);
	free(t->model);
	free(t->deployment);
	free(t->api_version);
	target_state_unref(t->st);
}

static void route_free(struct route *r)
{
	if (!r)
		return;
	free(r->name);
	free(r->file);
	free(r->match_path);
	for (size_t i = 0; i < r->n_methods; i++)
		free(r->methods[i]);
	free(r->methods);
	json_decref(r->match_body);
	for (size_t i = 0; i < r->n_targets; i++)
		target_clear(&r->targets[i]);
	free(r->targets);
	free(r->bt);
	free(r->health.path);
	for (size_t i = 0; i < r->n_fallback; i++)
		free(r->fallback[i]);
	free(r->fallback);
	free(r->strip_prefix);
	for (size_t i = 0; i < r->n_strip_headers; i++)
		free(r->strip_headers[i]);
	free(r->strip_headers);
	for (size_t i = 0; i < r->n_models; i++)
		free(r->models[i]);
	free(r->models);
	for (size_t i = 0; i < r->n_add_headers; i++) {
		free(r->add_headers[i].name);
		free(r->add_headers[i].value);
	}
	free(r->add_headers);
	for (size_t i = 0; i < r->n_body_adds; i++)
		free((char *)r->body_adds[i].value_json);
	free(r->body_adds);
	json_decref(r->add_body_fields);
	free(r->unavailable);
	free(r);
}

struct route_bucket {
	const char *path;      /* a route's literal pattern (owned by the route), NULL = empty */
	size_t *idx;
	size_t n;
};

static size_t path_hash(const char *s)
{
	size_t h = 1469598103934665603ULL;   /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static bool literal_pattern(const char *p)
{
	return p && p[0] == '/' && !strpbrk(p, "*{");
}

static struct route_bucket *bucket_find(const struct route_table *t, const char *path)
{
	size_t mask = t->n_buckets - 1, i;

	if (!t->n_buckets)
		return NULL;
	for (i = path_hash(path) & mask; t->buckets[i].path; i = (i + 1) & mask)
		if (strcmp(t->buckets[i].path, path) == 0)
			return &t->buckets[i];
	return NULL;
}

/* Build the match index once the routes are in match order. */
static void table_index(struct route_table *t)
{
	size_t n_literal = 0;

	for (size_t i = 0; i < t->n; i++)
		n_literal += literal_pattern(t->routes[i]->match_path);
	t->wild = xcalloc(t->n - n_literal, sizeof(*t->wild));
	if (n_literal) {
		t->n_buckets = 8;
		while (t->n_buckets < 2 * n_literal)
			t->n_buckets *= 2;
		t->buckets = xcalloc(t->n_buckets, sizeof(*t->buckets));
	}
	for (size_t i = 0; i < t->n; i++) {
		const char *p = t->routes[i]->match_path;
		struct route_bucket *b;

		if (!literal_pattern(p)) {
			t->wild[t->n_wild++] = i;
			continue;
		}
		b = bucket_find(t, p);
		if (!b) {
			size_t j = path_hash(p) & (t->n_buckets - 1);
			while (t->buckets[j].path)
				j = (j + 1) & (t->n_buckets - 1);
			b = &t->buckets[j];
			b->path = p;
		}
		b->idx = xrealloc(b->idx, (b->n + 1) * sizeof(*b->idx));
		b->idx[b->n++] = i;
	}
}

static void table_free(struct route_table *t)
{
	for (size_t i = 0; i < t->n_buckets; i++)
		free(t->buckets[i].idx);
	free(t->buckets);
	free(t->wild);
	for (size_t i = 0; i < t->n; i++)
		route_free(t->routes[i]);
	free(t->routes);
	free(t->dir);
	free(t);
}

void route_table_ref(struct route_table *t)
{
	if (t)
		__atomic_add_fetch(&t->refcount, 1, __ATOMIC_RELAXED);
}

void route_table_unref(struct route_table *t)
{
	if (t && __atomic_sub_fetch(&t->refcount, 1, __ATOMIC_ACQ_REL) == 0)
		table_free(t);
}

struct route *route_table_find(const struct route_table *t, const char *name)
{
	if (!t || !name)
		return NULL;
	for (size_t i = 0; i < t->n; i++)
		if (strcmp(t->routes[i]->name, name) == 0)
			return t->routes[i];
	return NULL;
}

/* ---- path patterns ---- */

struct seg {
	const char *s;
	size_t len;
};

/* Segments after the leading '/': "/" is one empty segment, "/a/" is "a" and "". */
static size_t count_segs(const char *p)
{
	size_t n = 1;

	for (; *p; p++)
		if (*p == '/')
			n++;
	return n;
}

static void split_segs(const char *p, struct seg *out)
{
	size_t k = 0;
	const char *start = p;

	for (;; p++) {
		if (*p == '/' || *p == '\0') {
			out[k].s = start;
			out[k].len = (size_t)(p - start);
			k++;
			if (*p == '\0')
				break;
			start = p + 1;
		}
	}
}

static bool seg_is(const struct seg *g, const char *lit)
{
	return g->len == strlen(lit) && memcmp(g->s, lit, g->len) == 0;
}

static bool seg_is_param(const struct seg *g)
{
	return g->len >= 2 && g->s[0] == '{' && g->s[g->len - 1] == '}';
}

/* One pattern segment against one path segment. A whole-segment `*` or `{name}` needs a
 * non-empty segment; elsewhere `*` is a glob over any characters (a segment has no '/').
 * The greedy two-pointer glob is O(len(p) * len(s)) at worst. */
static bool seg_match(const struct seg *p, const struct seg *s)
{
	size_t pi = 0, si = 0, star = SIZE_MAX, mark = 0;

	if (seg_is(p, "*") || seg_is_param(p))
		return s->len > 0;
	while (si < s->len) {
		if (pi < p->len && p->s[pi] == '*') {
			star = pi++;
			mark = si;
		} else if (pi < p->len && p->s[pi] == s->s[si]) {
			pi++;
			si++;
		} else if (star != SIZE_MAX) {
			pi = star + 1;
			si = ++mark;
		} else {
			return false;
		}
	}
	while (pi < p->len && p->s[pi] == '*')
		pi++;
	return pi == p->len;
}

bool route_path_match(const char *pattern, const char *path)
{
	struct seg pstack[16], sstack[64], *ps = pstack, *ss = sstack;
	bool rstack[2][65], *next = rstack[0], *cur = rstack[1], *rows = NULL, ok;
	bool relative;
	size_t np, ns;

	if (!pattern)
		return true;
	if (!path || path[0] != '/')
		return false;
	/* a relative pattern such as "*.json" gets an implicit leading "**" segment */
	relative = pattern[0] != '/';
	np = count_segs(relative ? pattern : pattern + 1) + (relative ? 1 : 0);
	ns = count_segs(path + 1);
	if (np > sizeof(pstack) / sizeof(pstack[0]))
		ps = malloc(np * sizeof(*ps));
	if (ns > sizeof(sstack) / sizeof(sstack[0])) {
		ss = malloc(ns * sizeof(*ss));
		rows = malloc(2 * (ns + 1) * sizeof(*rows));
		next = rows;
		cur = rows ? rows + ns + 1 : NULL;
	}
	if (!ps || !ss || !next) {
		ok = false;
		goto done;
	}
	if (relative) {
		ps[0].s = "**";
		ps[0].len = 2;
		split_segs(pattern, ps + 1);
	} else {
		split_segs(pattern + 1, ps);
	}
	split_segs(path + 1, ss);

	/* next[j]: pattern segments i+1.. match path segments j.. */
	for (size_t j = 0; j <= ns; j++)
		next[j] = j == ns;
	for (size_t i = np; i-- > 0;) {
		bool *tmp;

		if (seg_is(&ps[i], "**")) {
			cur[ns] = next[ns];
			for (size_t j = ns; j-- > 0;)
				cur[j] = next[j] || cur[j + 1];
		} else {
			cur[ns] = false;
			for (size_t j = ns; j-- > 0;)
				cur[j] = next[j + 1] && seg_match(&ps[i], &ss[j]);
		}
		tmp = next;
		next = cur;
		cur = tmp;
	}
	ok = next[0];
done:
	if (ps != pstack)
		free(ps);
	if (ss != sstack)
		free(ss);
	free(rows);
	return ok;
}

/* Why a pattern is rejected at load, or NULL if it is fine. */
static const char *path_pattern_problem(const char *p)
{
	const char *start;

	if (!*p)
		return "is empty";
	for (const char *q = p; *q; q++) {
		if (isspace((unsigned char)*q) || has_ctl(q, 1, false))
			return "must not contain spaces or control characters";
		if (*q == '?' || *q == '#')
			return "must not contain '?' or '#' (the query string is not matched)";
	}
	start = p[0] == '/' ? p + 1 : p;
	for (const char *s = start;;) {
		const char *e = strchr(s, '/');
		size_t len = e ? (size_t)(e - s) : strlen(s);
		bool brace = memchr(s, '{', len) || memchr(s, '}', len);

		if (len > 2 && memmem(s, len, "**", 2))
			return "uses ** inside a segment; ** must be a whole segment, as in /api/**";
		if (brace) {
			if (len < 3 || s[0] != '{' || s[len - 1] != '}')
				return "uses {name} inside a segment; {name} must be a whole segment, as in /user/{id}";
			for (size_t i = 1; i + 1 < len; i++)
				if (!isalnum((unsigned char)s[i]) && s[i] != '_')
					return "has a bad {name}: use letters, digits and _ between the braces";
		}
		if (!e)
			break;
		s = e + 1;
	}
	return NULL;
}

/* ---- body matching ---- */

/* A NUL in a decoded string (\u0000) cannot take part in a C-string glob: it never
 * matches a pattern rather than matching on the part before it. */
static bool glob_match(const char *glob, const struct rj_field *f)
{
	return strlen(f->str) == f->str_len && fnmatch(glob, f->str, 0) == 0;
}

bool route_value_match(const json_t *want, const struct reqjson *rj, const struct rj_field *have,
                       const char *body)
{
	int64_t hi;
	double hd;

	if (!want || !have)
		return false;
	if (json_is_string(want))
		return have->type == RJ_STRING && glob_match(json_string_value(want), have);
	if (json_is_boolean(want))
		return json_is_true(want) ? have->type == RJ_TRUE : have->type == RJ_FALSE;
	if (json_is_number(want)) {
		if (have->type != RJ_NUMBER)
			return false;
		if (json_is_integer(want) && reqjson_int64(rj, have, body, &hi))
			return json_integer_value(want) == hi;
		return reqjson_number(rj, have, body, &hd) && json_number_value(want) == hd;
	}
	return false;
}

bool route_body_match(const json_t *want, const struct reqjson *rj, const char *body)
{
	const char *key;
	json_t *v;

	if (!json_is_object(want) || !rj || rj->result != RJ_OK)
		return false;
	/* json_object_foreach wants a non-const object; it only reads */
	json_object_foreach((json_t *)want, key, v) {
		if (!route_value_match(v, rj, reqjson_get(rj, key), body))
			return false;
	}
	return true;
}

static bool method_match(const struct route *r, const char *method)
{
	if (r->n_methods == 0)
		return true;
	if (!method)
		return false;
	for (size_t i = 0; i < r->n_methods; i++)
		if (strcasecmp(r->methods[i], method) == 0)
			return true;
	return false;
}

enum route_match_result route_match(const struct route_table *t, struct route_request *rq,
                                    const struct route **out)
{
	const struct route_bucket *b;
	size_t bi = 0, wi = 0;

	*out = NULL;
	if (!t)
		return ROUTE_NO_MATCH;
	b = bucket_find(t, rq->path);
	/* Only the routes that can match this path: the literal ones for exactly it, merged in
	 * table order with every pattern route. */
	while ((b && bi < b->n) || wi < t->n_wild) {
		size_t i;
		const struct route *r;
		bool literal = b && bi < b->n && (wi >= t->n_wild || b->idx[bi] < t->wild[wi]);

		if (literal)
			i = b->idx[bi++];
		else
			i = t->wild[wi++];
		r = t->routes[i];

		if (!r->enabled)
			continue;
		/* a literal route from the bucket has the very path: nothing to match */
		if (!literal && r->match_path && !route_path_match(r->match_path, rq->path))
			continue;
		if (!method_match(r, rq->method))
			continue;
		if (r->match_body) {
			if (!rq->rj || rq->rj->result != RJ_OK)
				return ROUTE_BAD_BODY;
			if (!route_body_match(r->match_body, rq->rj, rq->body))
				continue;
		}
		*out = r;
		return ROUTE_MATCHED;
	}
	return ROUTE_NO_MATCH;
}

/* ---- loading: per-file context and error collection ---- */

/* A route being loaded, with what ordering and duplicate detection need. */
struct pending {
	struct route *r;
	size_t file_idx, pos;
	int name_line;
};

struct pvec {
	struct pending *v;
	size_t n, cap;
};

/* Errors are gathered per file and sorted by line before they reach the errlist, so the
 * user reads them top to bottom. */
struct perr {
	size_t line, seq;
	char *msg;
};

struct pctx {
	const char *file;
	yaml_document_t *doc;
	size_t file_idx;
	const char *rname;      /* route being parsed, for messages */
	struct perr *errs;
	size_t n_errs, cap_errs;
	size_t json_budget;
};

static size_t node_line(const yaml_node_t *n)
{
	return n ? n->start_mark.line + 1 : 1;
}

static void perr_at(struct pctx *c, size_t line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void perr_at(struct pctx *c, size_t line, const char *fmt, ...)
{
	char *msg = NULL;
	va_list ap;

	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		abort();
	va_end(ap);
	if (c->n_errs == c->cap_errs) {
		c->cap_errs = c->cap_errs ? 2 * c->cap_errs : 8;
		c->errs = xrealloc(c->errs, c->cap_errs * sizeof(*c->errs));
	}
	/* Messages quote values from the file, and a quoted YAML scalar can hold "\n" or an
	 * escape sequence: write control characters as \xNN so every error stays one line
	 * (found by tests/fuzz/fuzz_routes.c). */
	if (has_ctl(msg, strlen(msg), false)) {
		struct sbuf b = { 0 };

		for (const char *q = msg; *q; q++) {
			char hex[5];

			if (has_ctl(q, 1, false)) {
				snprintf(hex, sizeof(hex), "\\x%02x", (unsigned char)*q);
				sb_add(&b, hex, 4);
			} else {
				sb_add(&b, q, 1);
			}
		}
		free(msg);
		msg = b.s;
	}
	c->errs[c->n_errs].line = line;
	c->errs[c->n_errs].seq = c->n_errs;
	if (c->rname) {
		char *full = NULL;

		if (asprintf(&full, "route \"%s\": %s", c->rname, msg) < 0)
			abort();
		free(msg);
		msg = full;
	}
	c->errs[c->n_errs++].msg = msg;
}

#define perr(c, node, ...) perr_at((c), node_line(node), __VA_ARGS__)

static int perr_cmp(const void *a, const void *b)
{
	const struct perr *x = a, *y = b;

	if (x->line != y->line)
		return x->line < y->line ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static yaml_node_t *node(struct pctx *c, int idx)
{
	return yaml_document_get_node(c->doc, idx);
}

/* ---- loading: scalars ---- */

enum sclass { SC_NULL, SC_BOOL, SC_INT, SC_FLOAT, SC_STR };

static const char *sval(const yaml_node_t *n)
{
	return (const char *)n->data.scalar.value;
}

static bool one_of(const char *s, const char *const *words)
{
	for (; *words; words++)
		if (strcmp(s, *words) == 0)
			return true;
	return false;
}

static bool looks_int(const char *s)
{
	if (*s == '-' || *s == '+')
		s++;
	if (!isdigit((unsigned char)*s))
		return false;
	while (isdigit((unsigned char)*s))
		s++;
	return *s == '\0';
}

static bool looks_float(const char *s)
{
	static const char *const special[] = { ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF",
		"-.inf", "-.Inf", "-.INF", ".nan", ".NaN", ".NAN", NULL };
	bool digits = false;

	if (one_of(s, special))
		return true;
	if (*s == '-' || *s == '+')
		s++;
	while (isdigit((unsigned char)*s)) {
		s++;
		digits = true;
	}
	if (*s == '.') {
		s++;
		while (isdigit((unsigned char)*s)) {
			s++;
			digits = true;
		}
	}
	if (!digits)
		return false;
	if (*s == 'e' || *s == 'E') {
		s++;
		if (*s == '-' || *s == '+')
			s++;
		if (!isdigit((unsigned char)*s))
			return false;
		while (isdigit((unsigned char)*s))
			s++;
	}
	return *s == '\0';
}

/* The YAML 1.2 core schema: plain (unquoted) scalars may be null, booleans or numbers;
 * quoted ones are always strings. */
static enum sclass scalar_class(const yaml_node_t *n)
{
	static const char *const nulls[] = { "", "~", "null", "Null", "NULL", NULL };
	static const char *const bools[] = { "true", "True", "TRUE", "false", "False", "FALSE", NULL };
	const char *s = sval(n);
	bool plain = n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ||
	             strcmp((const char *)n->tag, YAML_STR_TAG) != 0;

	if (!plain)
		return SC_STR;
	if (one_of(s, nulls))
		return SC_NULL;
	if (one_of(s, bools))
		return SC_BOOL;
	if (looks_int(s))
		return SC_INT;
	if (looks_float(s))
		return SC_FLOAT;
	return SC_STR;
}

static const char *describe(const yaml_node_t *n)
{
	if (n->type == YAML_MAPPING_NODE)
		return "a mapping";
	if (n->type == YAML_SEQUENCE_NODE)
		return "a sequence";
	if (n->type != YAML_SCALAR_NODE)
		return "nothing";
	switch (scalar_class(n)) {
	case SC_NULL: return "nothing (null)";
	case SC_BOOL: return "true/false";
	case SC_INT: return "an integer";
	case SC_FLOAT: return "a number";
	default: return "a string";
	}
}

/* A string-valued key: any non-null scalar, taken as written. NULL (with an error) if not. */
static const char *get_str(struct pctx *c, const yaml_node_t *n, const char *key)
{
	if (n->type != YAML_SCALAR_NODE || scalar_class(n) == SC_NULL) {
		perr(c, n, "%s: expected a string, got %s", key, describe(n));
		return NULL;
	}
	if (strlen(sval(n)) != n->data.scalar.length) {
		perr(c, n, "%s: must not contain a NUL character", key);
		return NULL;
	}
	return sval(n);
}

static int get_int(struct pctx *c, const yaml_node_t *n, const char *key, int *out)
{
	long long v;
	char *end;

	if (n->type != YAML_SCALAR_NODE || scalar_class(n) != SC_INT) {
		perr(c, n, "%s: expected an integer, got %s", key, describe(n));
		return -1;
	}
	errno = 0;
	v = strtoll(sval(n), &end, 10);
	if (errno || v < INT_MIN || v > INT_MAX) {
		perr(c, n, "%s: %s is out of range", key, sval(n));
		return -1;
	}
	*out = (int)v;
	return 0;
}

static int get_bool(struct pctx *c, const yaml_node_t *n, const char *key, bool *out)
{
	if (n->type != YAML_SCALAR_NODE || scalar_class(n) != SC_BOOL) {
		perr(c, n, "%s: expected true or false, got %s", key, describe(n));
		return -1;
	}
	*out = tolower((unsigned char)sval(n)[0]) == 't';
	return 0;
}

static int get_timeout(struct pctx *c, const yaml_node_t *n, const char *key, int *out)
{
	int v;

	if (get_int(c, n, key, &v) < 0)
		return -1;
	if (v <= 0 || v > TIMEOUT_MAX) {
		perr(c, n, "%s: must be a whole number of seconds from 1 to %d, got %d", key,
		     TIMEOUT_MAX, v);
		return -1;
	}
	*out = v;
	return 0;
}

/* ---- loading: mappings ---- */

/* Walk a mapping whose keys come from `keys` (NULL-terminated); seen[i] receives the value
 * node of keys[i]. Unknown, duplicate and non-string keys are reported. */
static void get_keys(struct pctx *c, const yaml_node_t *m, const char *what,
                     const char *const *keys, yaml_node_t **seen)
{
	for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
		yaml_node_t *k = node(c, p->key), *v = node(c, p->value);
		size_t i;

		if (k->type != YAML_SCALAR_NODE) {
			perr(c, k, "%s: keys must be plain words, got %s", what, describe(k));
			continue;
		}
		for (i = 0; keys[i]; i++)
			if (strcmp(sval(k), keys[i]) == 0)
				break;
		if (!keys[i]) {
			char list[512] = "";
			size_t len = 0;

			for (size_t j = 0; keys[j] && len < sizeof(list); j++)
				len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s",
				                        j ? ", " : "", keys[j]);
			perr(c, k, "unknown key \"%s\" in %s (valid: %s)", sval(k), what, list);
			continue;
		}
		if (seen[i]) {
			perr(c, k, "duplicate key \"%s\" in %s", keys[i], what);
			continue;
		}
		seen[i] = v;
	}
}

static bool expect_type(struct pctx *c, const yaml_node_t *n, yaml_node_type_t type,
                        const char *key, const char *example)
{
	if (n->type == type)
		return true;
	perr(c, n, "%s: expected %s, got %s", key, example, describe(n));
	return false;
}

/* YAML value -> JSON, for add_body_fields. The budget and depth stop alias bombs. */
static json_t *to_json(struct pctx *c, const yaml_node_t *n, int depth)
{
	json_t *j = NULL;

	if (depth > JSON_DEPTH_MAX || c->json_budget == 0) {
		perr(c, n, "add_body_fields: value is nested too deeply or too large");
		return NULL;
	}
	c->json_budget--;
	switch (n->type) {
	case YAML_SCALAR_NODE: {
		const char *s = sval(n);

		switch (scalar_class(n)) {
		case SC_NULL:
			return json_null();
		case SC_BOOL:
			return json_boolean(tolower((unsigned char)s[0]) == 't');
		case SC_INT: {
			long long v;

			errno = 0;
			v = strtoll(s, NULL, 10);
			if (errno) {
				perr(c, n, "add_body_fields: integer %s is out of range", s);
				return NULL;
			}
			return json_integer(v);
		}
		case SC_FLOAT: {
			double d = strtod(s[0] == '+' ? s + 1 : s, NULL);

			if (!isfinite(d)) {
				perr(c, n, "add_body_fields: %s has no JSON form; quote it for a string", s);
				return NULL;
			}
			return json_real(d);
		}
		default:
			j = json_stringn(s, n->data.scalar.length);
			if (!j)
				perr(c, n, "add_body_fields: string is not valid UTF-8");
			return j;
		}
	}
	case YAML_SEQUENCE_NODE:
		j = json_array();
		for (yaml_node_item_t *it = n->data.sequence.items.start;
		     it < n->data.sequence.items.top; it++) {
			json_t *v = to_json(c, node(c, *it), depth + 1);

			if (!v) {
				json_decref(j);
				return NULL;
			}
			json_array_append_new(j, v);
		}
		return j;
	case YAML_MAPPING_NODE:
		j = json_object();
		for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top;
		     p++) {
			yaml_node_t *k = node(c, p->key);
			json_t *v;

			if (k->type != YAML_SCALAR_NODE || strlen(sval(k)) != k->data.scalar.length) {
				perr(c, k, "add_body_fields: field names must be strings");
				json_decref(j);
				return NULL;
			}
			if (json_object_get(j, sval(k))) {
				perr(c, k, "add_body_fields: duplicate field \"%s\"", sval(k));
				json_decref(j);
				return NULL;
			}
			v = to_json(c, node(c, p->value), depth + 1);
			if (!v || json_object_set_new(j, sval(k), v) < 0) {
				if (v)
					perr(c, k, "add_body_fields: field name is not valid UTF-8");
				json_decref(j);
				return NULL;
			}
		}
		return j;
	default:
		perr(c, n, "add_body_fields: empty value");
		return NULL;
	}
}

/* add_body_fields as the splice wants them (reqjson_splice): each value's JSON text,
 * made once here rather than on every request. */
static void body_adds_make(struct route *r)
{
	const char *key;
	json_t *v;
	size_t i = 0;

	r->body_adds = calloc(json_object_size(r->add_body_fields), sizeof(*r->body_adds));
	if (!r->body_adds)
		abort();
	json_object_foreach(r->add_body_fields, key, v) {
		char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);

		if (!text)
			abort();
		r->body_adds[i].key = key;   /* owned by add_body_fields */
		r->body_adds[i].value_json = text;
		r->body_adds[i].value_len = strlen(text);
		i++;
	}
	r->n_body_adds = i;
}

/* ---- loading: upstream ---- */

static void parse_url(struct pctx *c, const yaml_node_t *n, const char *url, struct route_target *r)
{
	const char *scheme, *auth, *end, *host_end;
	size_t slen;

	/* Messages do not echo the URL: a malformed one may carry credentials. */
	if (strncasecmp(url, "http://", 7) == 0) {
		scheme = "http";
		slen = 7;
	} else if (strncasecmp(url, "https://", 8) == 0) {
		scheme = "https";
		slen = 8;
	} else {
		perr(c, n, "upstream url must start with http:// or https://");
		return;
	}
	for (const char *q = url; *q; q++)
		if (isspace((unsigned char)*q) || has_ctl(q, 1, false)) {
			perr(c, n, "upstream url must not contain spaces or control characters");
			return;
		}
	auth = url + slen;
	end = auth + strcspn(auth, "/?#");
	if (memchr(auth, '@', (size_t)(end - auth))) {
		perr(c, n, "upstream url must not contain user:password@; use api_key");
		return;
	}
	if (*end == '?' || *end == '#' || strpbrk(end, "?#")) {
		perr(c, n, "upstream url must not contain a query string or fragment");
		return;
	}
	if (auth[0] == '[') {
		host_end = memchr(auth, ']', (size_t)(end - auth));
		if (!host_end || host_end == auth + 1) {
			perr(c, n, "upstream url has a bad [IPv6] host");
			return;
		}
		host_end++;
	} else {
		host_end = memchr(auth, ':', (size_t)(end - auth));
		if (!host_end)
			host_end = end;
	}
	if (host_end == auth) {
		perr(c, n, "upstream url has no host");
		return;
	}
	for (const char *q = auth[0] == '[' ? auth + 1 : auth; q < host_end; q++)
		if (auth[0] == '[' ? !isxdigit((unsigned char)*q) && !strchr(":.]", *q)
		                   : !isalnum((unsigned char)*q) && !strchr(".-_", *q)) {
			perr(c, n, "upstream url has a bad host name");
			return;
		}
	if (host_end < end) {
		const char *p = host_end + 1;
		long port = 0;

		if (*host_end != ':' || p == end) {
			perr(c, n, "upstream url has a bad port");
			return;
		}
		for (; p < end; p++) {
			if (!isdigit((unsigned char)*p) || (port = port * 10 + (*p - '0')) > 65535) {
				port = -1;
				break;
			}
		}
		if (port < 1) {
			perr(c, n, "upstream url port must be a number from 1 to 65535");
			return;
		}
	}
	r->url = xstrdup(url);
	r->host = xstrndup(auth, (size_t)(end - auth));
	if (asprintf(&r->origin, "%s://%s", scheme, r->host) < 0)
		abort();
	r->path = *end ? xstrdup(end) : NULL;
	/* fixed here, never guessed per request: TLS goes to curl, plain HTTP is our own */
	r->transport = strcmp(scheme, "https") == 0 ? TR_KIND_CURL : TR_KIND_NATIVE;
}

/* Expand ${VAR} anywhere in `in` from the environment. Unset or empty variables are errors
 * unless `quiet` (the route is unavailable anyway). Never puts a value in a message. */
static char *expand_env(struct pctx *c, const yaml_node_t *n, const char *in, bool quiet)
{
	struct sbuf b = { 0 };
	bool failed = false;

	for (const char *p = in; *p;) {
		const char *open = strstr(p, "${"), *close, *v;
		char *name;

		if (!open) {
			sb_add(&b, p, strlen(p));
			break;
		}
		sb_add(&b, p, (size_t)(open - p));
		close = strchr(open + 2, '}');
		if (!close || !is_env_name(open + 2, (size_t)(close - open - 2))) {
			perr(c, n, "api_key: bad ${...}: write ${NAME} with a name of letters, digits and _");
			failed = true;
			break;
		}
		name = xstrndup(open + 2, (size_t)(close - open - 2));
		v = getenv(name);
		if (!v || !*v) {
			if (!quiet)
				perr(c, n, "api_key: environment variable %s is %s", name,
				     v ? "empty" : "not set");
			failed = true;
		} else if (has_ctl(v, strlen(v), false)) {
			perr(c, n, "api_key: environment variable %s contains a newline or control character",
			     name);
			failed = true;
		} else {
			sb_add(&b, v, strlen(v));
		}
		free(name);
		p = close + 1;
	}
	if (!failed && (!b.s || !*b.s)) {
		perr(c, n, "api_key is empty");
		failed = true;
	}
	if (!failed && has_ctl(b.s, b.n, false)) {
		perr(c, n, "api_key contains a control character");
		failed = true;
	}
	if (failed) {
		sb_wipe(&b);
		return NULL;
	}
	return b.s;
}

/* Read a key file: a regular file nobody but its owner may access; trailing whitespace
 * (the newline editors add) is dropped. Relative paths are relative to the route file. */
static char *read_key_file(struct pctx *c, const yaml_node_t *n, const char *path)
{
	char *full = NULL, *buf = NULL, *key = NULL;
	struct stat st;
	size_t len = 0;
	int fd = -1;

	if (path[0] == '/') {
		full = xstrdup(path);
	} else {
		const char *slash = strrchr(c->file, '/');

		if (asprintf(&full, "%.*s%s", slash ? (int)(slash - c->file + 1) : 0, c->file,
		             path) < 0)
			abort();
	}
	fd = open(full, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0 || fstat(fd, &st) < 0) {
		perr(c, n, "api_key_file %s: %s", full, strerror(errno));
		goto done;
	}
	if (!S_ISREG(st.st_mode)) {
		perr(c, n, "api_key_file %s is not a regular file", full);
		goto done;
	}
	if (st.st_mode & 077) {
		perr(c, n, "api_key_file %s can be read by group or others (mode %04o); run chmod 600 on it",
		     full, (unsigned)(st.st_mode & 07777));
		goto done;
	}
	if (st.st_size > KEY_FILE_MAX) {
		perr(c, n, "api_key_file %s is larger than %d bytes", full, KEY_FILE_MAX);
		goto done;
	}
	buf = xcalloc(1, KEY_FILE_MAX + 1);
	for (;;) {
		ssize_t got = read(fd, buf + len, KEY_FILE_MAX - len);

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			perr(c, n, "api_key_file %s: %s", full, strerror(errno));
			goto done;
		}
		if (got == 0 || (len += (size_t)got) == KEY_FILE_MAX)
			break;
	}
	while (len && isspace((unsigned char)buf[len - 1]))
		buf[--len] = '\0';
	if (len == 0)
		perr(c, n, "api_key_file %s is empty", full);
	else if (has_ctl(buf, len, false))
		perr(c, n, "api_key_file %s has more than one line or a control character", full);
	else
		key = xstrndup(buf, len);
done:
	if (buf) {
		explicit_bzero(buf, KEY_FILE_MAX + 1);
		free(buf);
	}
	if (fd >= 0)
		close(fd);
	free(full);
	return key;
}

#define TARGET_WEIGHT_MAX   1000
#define TARGET_PRIORITY_MAX 100

static int get_int_in(struct pctx *c, const yaml_node_t *n, const char *key, int lo, int hi,
                      const char *unit, int *out)
{
	int v;

	if (get_int(c, n, key, &v) < 0)
		return -1;
	if (v < lo || v > hi) {
		perr(c, n, "%s: expected %s from %d to %d, got %d", key, unit, lo, hi, v);
		return -1;
	}
	*out = v;
	return 0;
}

/* A path relative to the route file's directory, as api_key_file and ca_file are. */
static char *beside_file(struct pctx *c, const char *s)
{
	char *full;

	if (s[0] == '/' || !strrchr(c->file, '/'))
		return xstrdup(s);
	if (asprintf(&full, "%.*s/%s", (int)(strrchr(c->file, '/') - c->file), c->file, s) < 0)
		abort();
	return full;
}

enum {
	T_URL, T_API_KEY, T_API_KEY_FILE, T_CA_FILE, T_WEIGHT, T_PRIORITY, T_MODEL, T_PROVIDER,
	T_DEPLOYMENT, T_API_VERSION, T_COUNT
};
static const char *const target_keys[T_COUNT + 1] = {
	"url", "api_key", "api_key_file", "ca_file", "weight", "priority", "model", "provider",
	"deployment", "api_version", NULL
};

const char *provider_name(enum provider p)
{
	return p == PROVIDER_AZURE ? "azure" : p == PROVIDER_ANTHROPIC ? "anthropic" : "openai";
}

#define ANTHROPIC_VERSION "2023-06-01"

/* A value that goes into a URL path or query as it is: letters, digits and - . _ only. */
static bool url_safe(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && !strchr("-._", *s))
			return false;
	return true;
}

/* provider:, deployment:, api_version: of one upstream. */
static void parse_provider(struct pctx *c, const yaml_node_t *un, yaml_node_t **seen,
                           struct route_target *t)
{
	const char *s;

	if (seen[T_PROVIDER] && (s = get_str(c, seen[T_PROVIDER], "provider"))) {
		if (strcmp(s, "openai") == 0)
			t->provider = PROVIDER_OPENAI;
		else if (strcmp(s, "azure") == 0)
			t->provider = PROVIDER_AZURE;
		else if (strcmp(s, "anthropic") == 0)
			t->provider = PROVIDER_ANTHROPIC;
		else
			perr(c, seen[T_PROVIDER], "provider: unknown \"%s\" (valid: openai, anthropic, azure)", s);
	}
	if (seen[T_DEPLOYMENT] && (s = get_str(c, seen[T_DEPLOYMENT], "deployment"))) {
		if (!url_safe(s))
			perr(c, seen[T_DEPLOYMENT], "deployment: expected a deployment name of letters, digits, '-', '.' and '_'");
		else
			t->deployment = xstrdup(s);
	}
	if (seen[T_API_VERSION] && (s = get_str(c, seen[T_API_VERSION], "api_version"))) {
		if (!url_safe(s))
			perr(c, seen[T_API_VERSION], "api_version: expected a version such as \"2024-10-21\" or v1");
		else
			t->api_version = xstrdup(s);
	}
	if (t->provider != PROVIDER_AZURE && seen[T_DEPLOYMENT])
		perr(c, seen[T_DEPLOYMENT], "deployment: only for provider: azure");
	if (t->provider == PROVIDER_ANTHROPIC) {
		if (!t->api_version && !seen[T_API_VERSION])
			t->api_version = xstrdup(ANTHROPIC_VERSION);
		return;
	}
	if (t->provider != PROVIDER_AZURE) {
		if (seen[T_API_VERSION])
			perr(c, seen[T_API_VERSION], "api_version: only for provider: azure or anthropic");
		return;
	}
	if (t->path)
		perr(c, seen[T_URL] ? seen[T_URL] : un,
		     "provider azure: url is the resource alone, such as https://RES.openai.azure.com (the path is made from deployment and api_version)");
	if (!seen[T_API_VERSION])
		perr(c, un, "provider azure needs api_version (such as \"2024-10-21\", or v1 for the /openai/v1 API)");
	else if (t->api_version && strcmp(t->api_version, "v1") == 0 && t->deployment)
		perr(c, seen[T_DEPLOYMENT], "deployment: not with api_version v1 (the model in the body names the deployment)");
	else if (t->api_version && strcmp(t->api_version, "v1") != 0 && !seen[T_DEPLOYMENT])
		perr(c, un, "provider azure needs deployment (unless api_version is v1)");
}

/* One upstream: `upstream:` or an entry of `upstreams:`. */
static void parse_target(struct pctx *c, const yaml_node_t *un, const char *what,
                         struct route_target *t, bool unavailable)
{
	yaml_node_t *seen[T_COUNT] = { 0 };
	const char *s;

	t->weight = 1;
	t->line = (int)node_line(un);
	if (!expect_type(c, un, YAML_MAPPING_NODE, what, "a mapping with url: and api_key:"))
		return;
	get_keys(c, un, what, target_keys, seen);
	if (!seen[T_URL])
		perr(c, un, "%s has no url", what);
	else if ((s = get_str(c, seen[T_URL], "upstream url")))
		parse_url(c, seen[T_URL], s, t);
	if (seen[T_API_KEY] && seen[T_API_KEY_FILE]) {
		perr(c, seen[T_API_KEY_FILE], "use either api_key or api_key_file, not both");
		return;
	}
	if (seen[T_API_KEY] && (s = get_str(c, seen[T_API_KEY], "api_key"))) {
		char *key = expand_env(c, seen[T_API_KEY], s, unavailable);

		if (unavailable)
			free_secret(key);
		else
			t->api_key = key;
	}
	if (seen[T_API_KEY_FILE] && (s = get_str(c, seen[T_API_KEY_FILE], "api_key_file"))) {
		t->api_key_file = xstrdup(s);
		if (!unavailable)
			t->api_key = read_key_file(c, seen[T_API_KEY_FILE], s);
	}
	if (t->api_key)
		SHA256((const unsigned char *)t->api_key, strlen(t->api_key), t->key_hash);
	if (seen[T_CA_FILE] && (s = get_str(c, seen[T_CA_FILE], "ca_file"))) {
		/* checked by curl at connect; here only that it can be read */
		t->ca_file = beside_file(c, s);
		if (access(t->ca_file, R_OK) != 0)
			perr(c, seen[T_CA_FILE], "ca_file: cannot read %s", t->ca_file);
	}
	if (seen[T_WEIGHT])
		get_int_in(c, seen[T_WEIGHT], "weight", 1, TARGET_WEIGHT_MAX, "a whole number",
		           &t->weight);
	if (seen[T_PRIORITY])
		get_int_in(c, seen[T_PRIORITY], "priority", 0, TARGET_PRIORITY_MAX, "a tier",
		           &t->priority);
	parse_provider(c, un, seen, t);
	if (seen[T_MODEL] && (s = get_str(c, seen[T_MODEL], "model"))) {
		if (!*s || has_ctl(s, strlen(s), false))
			perr(c, seen[T_MODEL], "model: expected a model name without control characters or tabs");
		else
			t->model = xstrdup(s);
	}
}

bool route_has_provider(const struct route *r, enum provider p)
{
	for (size_t i = 0; i < r->n_targets; i++)
		if (r->targets[i].provider == p)
			return true;
	return false;
}

bool route_target_same(const struct route_target *a, const struct route_target *b)
{
	return a->url && b->url && strcmp(a->url, b->url) == 0 && a->provider == b->provider &&
	       (a->deployment ? b->deployment && strcmp(a->deployment, b->deployment) == 0
	                      : !b->deployment) &&
	       memcmp(a->key_hash, b->key_hash, sizeof(a->key_hash)) == 0;
}

static void parse_targets(struct pctx *c, const yaml_node_t *one, const yaml_node_t *list,
                          struct route *r, bool unavailable)
{
	size_t n;

	if (one && list) {
		perr(c, list, "use either upstream: (one) or upstreams: (a list), not both");
		return;
	}
	if (one) {
		r->targets = xcalloc(1, sizeof(*r->targets));
		r->n_targets = 1;
		parse_target(c, one, "upstream", &r->targets[0], unavailable);
		return;
	}
	if (!expect_type(c, list, YAML_SEQUENCE_NODE, "upstreams",
	                 "a sequence of upstreams (- url: ...)"))
		return;
	n = (size_t)(list->data.sequence.items.top - list->data.sequence.items.start);
	if (n == 0 || n > BALANCE_MAX_TARGETS) {
		perr(c, list, "upstreams: expected from 1 to %d upstreams, got %zu",
		     BALANCE_MAX_TARGETS, n);
		return;
	}
	r->targets = xcalloc(n, sizeof(*r->targets));
	r->n_targets = n;
	for (size_t i = 0; i < n; i++) {
		char what[32];

		snprintf(what, sizeof(what), "upstreams[%zu]", i);
		parse_target(c, node(c, list->data.sequence.items.start[i]), what, &r->targets[i],
		             unavailable);
	}
	/* the same URL with the same key twice is one upstream counted twice: use weight */
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < i; j++)
			if (route_target_same(&r->targets[i], &r->targets[j]))
				perr_at(c, (size_t)r->targets[i].line,
				        "upstreams[%zu] repeats upstreams[%zu] (same url, provider, deployment and key); give one of them a weight instead",
				        i, j);
}

static void parse_balance(struct pctx *c, const yaml_node_t *n, struct route *r)
{
	const char *s = get_str(c, n, "balance");

	if (s && balance_kind_parse(s, &r->balance) < 0)
		perr(c, n, "balance: unknown \"%s\" (valid: round_robin, weighted, least_inflight, latency, random)",
		     s);
}

const struct retry_word retry_words[N_RETRY_WORDS] = {
	{ "connect", RETRY_ON_CONNECT }, { "timeout", RETRY_ON_TIMEOUT },
	{ "reset", RETRY_ON_RESET }, { "protocol", RETRY_ON_PROTOCOL },
	{ "429", RETRY_ON_429 }, { "5xx", RETRY_ON_5XX },
};

/* `on:` words: connect, timeout, reset, protocol, 429, 5xx, or a status from 400 to 599. */
static void parse_retry_on(struct pctx *c, const yaml_node_t *n, struct route_retry *rt)
{

	rt->on = 0;
	if (!expect_type(c, n, YAML_SEQUENCE_NODE, "retry on",
	                 "a sequence such as [connect, timeout, 429, 5xx]"))
		return;
	for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
	     it++) {
		yaml_node_t *e = node(c, *it);
		const char *w = e->type == YAML_SCALAR_NODE ? sval(e) : NULL;
		size_t k;
		int code;

		for (k = 0; w && k < N_RETRY_WORDS; k++)
			if (strcasecmp(w, retry_words[k].word) == 0)
				break;
		if (w && k < N_RETRY_WORDS) {
			rt->on |= retry_words[k].bit;
			continue;
		}
		if (!w || scalar_class(e) != SC_INT || (code = atoi(w)) < 400 || code > 599) {
			perr(c, e, "retry on: \"%s\" is not an outcome (valid: connect, timeout, reset, protocol, 429, 5xx, or a status from 400 to 599)",
			     w ? w : describe(e));
			continue;
		}
		if (rt->n_codes == RETRY_MAX_CODES) {
			perr(c, e, "retry on: at most %d status codes", RETRY_MAX_CODES);
			continue;
		}
		rt->codes[rt->n_codes++] = code;
	}
}

static void parse_retry(struct pctx *c, const yaml_node_t *n, struct route *r)
{
	static const char *const keys[] = { "attempts", "on", "deadline", NULL };
	yaml_node_t *seen[3] = { 0 };

	if (!expect_type(c, n, YAML_MAPPING_NODE, "retry",
	                 "a mapping such as { attempts: 3, on: [connect, 5xx], deadline: 30 }"))
		return;
	get_keys(c, n, "retry", keys, seen);
	if (seen[0])
		get_int_in(c, seen[0], "retry attempts", 1, 10, "a count of tries", &r->retry.attempts);
	if (seen[1])
		parse_retry_on(c, seen[1], &r->retry);
	if (seen[2])
		get_timeout(c, seen[2], "retry deadline", &r->retry.deadline_s);
}

static void parse_breaker(struct pctx *c, const yaml_node_t *n, struct route *r)
{
	static const char *const keys[] = { "failures", "error_rate", "min_requests", "cooldown",
	                                    "max_cooldown", NULL };
	yaml_node_t *seen[5] = { 0 };
	struct breaker_cfg *b = &r->breaker;

	if (!expect_type(c, n, YAML_MAPPING_NODE, "breaker",
	                 "a mapping such as { failures: 5, cooldown: 5 }"))
		return;
	get_keys(c, n, "breaker", keys, seen);
	if (seen[0])
		get_int_in(c, seen[0], "breaker failures", 0, 1000, "a count (0 = off)", &b->failures);
	if (seen[1])
		get_int_in(c, seen[1], "breaker error_rate", 0, 100, "a percentage (0 = off)",
		           &b->error_rate);
	if (seen[2])
		get_int_in(c, seen[2], "breaker min_requests", 1, 100000, "a count", &b->min_requests);
	if (seen[3])
		get_int_in(c, seen[3], "breaker cooldown", 1, TIMEOUT_MAX, "seconds", &b->cooldown_s);
	if (seen[4])
		get_int_in(c, seen[4], "breaker max_cooldown", 1, TIMEOUT_MAX, "seconds",
		           &b->max_cooldown_s);
	if (b->max_cooldown_s < b->cooldown_s)
		perr(c, seen[4] ? seen[4] : n, "breaker: max_cooldown (%d) is shorter than cooldown (%d)",
		     b->max_cooldown_s, b->cooldown_s);
}

static void parse_health(struct pctx *c, const yaml_node_t *n, struct route *r)
{
	static const char *const keys[] = { "path", "interval", "timeout", "healthy", "unhealthy",
	                                    NULL };
	yaml_node_t *seen[5] = { 0 };
	struct route_health *h = &r->health;
	const char *s;

	if (!expect_type(c, n, YAML_MAPPING_NODE, "health",
	                 "a mapping such as { path: /v1/models, interval: 10 }"))
		return;
	get_keys(c, n, "health", keys, seen);
	h->interval_s = 10;
	h->timeout_s = 2;
	h->healthy = 2;
	h->unhealthy = 3;
	if (!seen[0])
		perr(c, n, "health has no path (such as path: /v1/models)");
	else if ((s = get_str(c, seen[0], "health path"))) {
		if (s[0] != '/' || strpbrk(s, " \t\r\n#") || has_ctl(s, strlen(s), false))
			perr(c, seen[0], "health path: expected a path starting with /, such as /v1/models");
		else
			h->path = xstrdup(s);
	}
	if (seen[1])
		get_int_in(c, seen[1], "health interval", 1, 3600, "seconds", &h->interval_s);
	if (seen[2])
		get_int_in(c, seen[2], "health timeout", 1, 600, "seconds", &h->timeout_s);
	if (seen[3])
		get_int_in(c, seen[3], "health healthy", 1, 100, "a count of checks", &h->healthy);
	if (seen[4])
		get_int_in(c, seen[4], "health unhealthy", 1, 100, "a count of checks", &h->unhealthy);
	if (h->path && h->timeout_s > h->interval_s)
		perr(c, seen[2] ? seen[2] : n, "health: timeout (%d) is longer than interval (%d)",
		     h->timeout_s, h->interval_s);
}

static void parse_fallback(struct pctx *c, const yaml_node_t *n, struct route *r)
{
	size_t cap;

	if (!expect_type(c, n, YAML_SEQUENCE_NODE, "fallback", "a sequence of route names"))
		return;
	cap = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
	r->fallback = xcalloc(cap ? cap : 1, sizeof(*r->fallback));
	r->fallback_line = (int)node_line(n);
	for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
	     it++) {
		const char *s = get_str(c, node(c, *it), "fallback");

		if (s)
			r->fallback[r->n_fallback++] = xstrdup(s);
	}
}

/* ---- loading: a route ---- */

/* `models:` model ids as clients send them (GET /v1/models lists them): printable, no
 * spaces, at most 256 bytes, each once. */
static char **model_list(struct pctx *c, const yaml_node_t *n, size_t *count)
{
	char **v;
	size_t k = 0;

	*count = 0;
	if (!expect_type(c, n, YAML_SEQUENCE_NODE, "models",
	                 "a sequence of model ids such as [gpt-4o, gpt-4o-mini]"))
		return NULL;
	v = xcalloc((size_t)(n->data.sequence.items.top - n->data.sequence.items.start) + 1,
	            sizeof(*v));
	for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
	     it++) {
		yaml_node_t *e = node(c, *it);
		const char *s = get_str(c, e, "models");
		bool ok = s && *s && strlen(s) <= 256, dup = false;

		if (!s)
			continue;
		for (const char *q = s; ok && *q; q++)
			ok = (unsigned char)*q > 0x20 && *q != 0x7f;
		for (size_t i = 0; ok && i < k; i++)
			dup |= strcmp(v[i], s) == 0;
		if (!ok)
			perr(c, e, "models: \"%s\" is not a model id (1 to 256 printable characters, "
			     "no spaces)", s);
		else if (dup)
			perr(c, e, "models: \"%s\" is listed twice", s);
		else
			v[k++] = xstrdup(s);
	}
	*count = k;
	return v;
}

static char **str_list(struct pctx *c, const yaml_node_t *n, const char *key, bool upper,
                       size_t *count)
{
	char **v;
	size_t k = 0;

	*count = 0;
	if (!expect_type(c, n, YAML_SEQUENCE_NODE, key,
	                 upper ? "a sequence such as [GET, POST]" : "a sequence such as [x-debug]"))
		return NULL;
	v = xcalloc((size_t)(n->data.sequence.items.top - n->data.sequence.items.start),
	            sizeof(*v));
	for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
	     it++) {
		yaml_node_t *e = node(c, *it);
		const char *s = get_str(c, e, key);
		char *copy;

		if (!s)
			continue;
		if (!is_token(s)) {
			perr(c, e, "%s: \"%s\" is not a valid %s", key, s,
			     upper ? "method name" : "header name");
			continue;
		}
		copy = xstrdup(s);
		for (char *q = copy; *q; q++)
			*q = (char)(upper ? toupper((unsigned char)*q) : tolower((unsigned char)*q));
		v[k++] = copy;
	}
	*count = k;
	return v;
}

static void parse_match(struct pctx *c, const yaml_node_t *mn, struct route *r)
{
	static const char *const keys[] = { "path", "methods", "body", NULL };
	yaml_node_t *seen[3] = { 0 };
	const char *s, *why;

	if (!expect_type(c, mn, YAML_MAPPING_NODE, "match", "a mapping with path:, methods:, body:"))
		return;
	get_keys(c, mn, "match", keys, seen);
	if (seen[0] && (s = get_str(c, seen[0], "match path"))) {
		if ((why = path_pattern_problem(s)))
			perr(c, seen[0], "bad path pattern \"%s\": it %s", s, why);
		else
			r->match_path = xstrdup(s);
	}
	if (seen[1])
		r->methods = str_list(c, seen[1], "methods", true, &r->n_methods);
	if (seen[2] && expect_type(c, seen[2], YAML_MAPPING_NODE, "match body",
	                           "a mapping of field: glob, such as { model: \"gpt-4*\" }")) {
		json_t *body = json_object();

		for (yaml_node_pair_t *p = seen[2]->data.mapping.pairs.start;
		     p < seen[2]->data.mapping.pairs.top; p++) {
			yaml_node_t *k = node(c, p->key), *v = node(c, p->value);
			const char *field = get_str(c, k, "match body field name");
			json_t *want = NULL;

			if (!field)
				continue;
			if (json_object_get(body, field)) {
				perr(c, k, "match body: duplicate field \"%s\"", field);
				continue;
			}
			if (v->type == YAML_SCALAR_NODE) {
				switch (scalar_class(v)) {
				case SC_STR:
					want = json_stringn(sval(v), v->data.scalar.length);
					break;
				case SC_BOOL:
					want = json_boolean(tolower((unsigned char)sval(v)[0]) == 't');
					break;
				case SC_INT: {
					long long iv;

					errno = 0;
					iv = strtoll(sval(v), NULL, 10);
					want = errno ? NULL : json_integer(iv);
					break;
				}
				case SC_FLOAT: {
					double d = strtod(sval(v)[0] == '+' ? sval(v) + 1 : sval(v), NULL);

					want = isfinite(d) ? json_real(d) : NULL;
					break;
				}
				default:
					break;
				}
			}
			if (!want) {
				perr(c, v, "match body \"%s\": expected a string glob, true/false or a number, got %s",
				     field, describe(v));
				continue;
			}
			if (json_object_set_new(body, field, want) < 0)
				perr(c, k, "match body: field name is not valid UTF-8");
		}
		if (json_object_size(body))
			r->match_body = body;
		else
			json_decref(body);
	}
}

static void parse_add_headers(struct pctx *c, const yaml_node_t *n, struct route *r)
{
	size_t cap;

	if (!expect_type(c, n, YAML_MAPPING_NODE, "add_headers",
	                 "a mapping such as { X-Proxy-Source: fastgate }"))
		return;
	cap = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
	r->add_headers = xcalloc(cap, sizeof(*r->add_headers));
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
		yaml_node_t *k = node(c, p->key), *v = node(c, p->value);
		const char *name = get_str(c, k, "add_headers name"), *value;

		if (!name)
			continue;
		if (!is_token(name)) {
			perr(c, k, "add_headers: \"%s\" is not a valid header name", name);
			continue;
		}
		value = get_str(c, v, "add_headers value");
		if (!value)
			continue;
		if (has_ctl(value, strlen(value), true)) {
			perr(c, v, "add_headers: value of %s contains a newline or control character", name);
			continue;
		}
		r->add_headers[r->n_add_headers].name = xstrdup(name);
		r->add_headers[r->n_add_headers++].value = xstrdup(value);
	}
}

enum {
	K_NAME, K_PRIORITY, K_ENABLED, K_IF_ENV, K_MATCH, K_UPSTREAM, K_STRIP_PREFIX, K_TIMEOUT,
	K_IDLE_TIMEOUT, K_STRIP_HEADERS, K_ADD_HEADERS, K_ADD_BODY_FIELDS, K_STREAM_USAGE,
	K_LOG_BODIES, K_UPSTREAMS, K_BALANCE, K_RETRY, K_BREAKER, K_HEALTH, K_FALLBACK,
	K_REQUIRE_PRICE, K_ON_DISCONNECT, K_MODELS, K_COUNT
};
static const char *const route_keys[K_COUNT + 1] = {
	"name", "priority", "enabled", "if_env", "match", "upstream", "strip_prefix", "timeout",
	"idle_timeout", "strip_headers", "add_headers", "add_body_fields", "stream_usage", "log_bodies",
	"upstreams", "balance", "retry", "breaker", "health", "fallback", "require_price",
	"on_disconnect", "models", NULL
};

static void parse_route(struct pctx *c, const yaml_node_t *rn, size_t pos, struct pvec *out)
{
	yaml_node_t *seen[K_COUNT] = { 0 };
	struct route *r;
	struct pending *pd;
	bool unavailable = false;
	const char *s;

	c->rname = NULL;
	if (rn->type != YAML_MAPPING_NODE) {
		perr(c, rn, "each entry under routes: must be a mapping (- name: ...), got %s",
		     describe(rn));
		return;
	}
	r = xcalloc(1, sizeof(*r));
	r->priority = DEFAULT_PRIORITY;
	r->enabled_in_file = true;
	r->timeout = DEFAULT_TIMEOUT;
	r->idle_timeout = 0;
	r->stream_usage = true;
	r->file = xstrdup(c->file);
	r->line = (int)node_line(rn);

	if (out->n == out->cap) {
		out->cap = out->cap ? 2 * out->cap : 16;
		out->v = xrealloc(out->v, out->cap * sizeof(*out->v));
	}
	pd = &out->v[out->n++];
	pd->r = r;
	pd->file_idx = c->file_idx;
	pd->pos = pos;
	pd->name_line = 0;

	/* the name first, so every later message can say which route it is about */
	for (yaml_node_pair_t *p = rn->data.mapping.pairs.start; p < rn->data.mapping.pairs.top; p++) {
		yaml_node_t *k = node(c, p->key), *v = node(c, p->value);

		if (k->type == YAML_SCALAR_NODE && strcmp(sval(k), "name") == 0) {
			if ((s = get_str(c, v, "name"))) {
				bool ok = *s != '\0';

				for (const char *q = s; *q; q++)
					if (!isalnum((unsigned char)*q) && !strchr("_.-", *q))
						ok = false;
				if (!ok) {
					perr(c, v, "name \"%s\" may only use letters, digits, '_', '.' and '-'", s);
				} else {
					r->name = xstrdup(s);
					pd->name_line = (int)node_line(v);
				}
			}
			break;
		}
	}
	c->rname = r->name;
	get_keys(c, rn, "a route", route_keys, seen);
	if (!seen[K_NAME])
		perr(c, rn, "route has no name: (every route needs a unique name)");

	if (seen[K_IF_ENV] && (s = get_str(c, seen[K_IF_ENV], "if_env"))) {
		const char *v;

		if (!is_env_name(s, strlen(s))) {
			perr(c, seen[K_IF_ENV], "if_env: \"%s\" is not an environment variable name", s);
		} else if (!(v = getenv(s)) || !*v) {
			unavailable = true;
			if (asprintf(&r->unavailable, "%s is %s", s, v ? "empty" : "not set") < 0)
				abort();
		}
	}
	if (seen[K_PRIORITY])
		get_int(c, seen[K_PRIORITY], "priority", &r->priority);
	if (seen[K_ENABLED])
		get_bool(c, seen[K_ENABLED], "enabled", &r->enabled_in_file);
	if (unavailable)
		r->enabled_in_file = false;
	r->enabled = r->enabled_in_file;
	if (seen[K_MATCH])
		parse_match(c, seen[K_MATCH], r);
	if (seen[K_UPSTREAM] || seen[K_UPSTREAMS])
		parse_targets(c, seen[K_UPSTREAM], seen[K_UPSTREAMS], r, unavailable);
	else
		perr(c, rn, "route has no upstream: (it needs at least upstream: { url: ... })");
	r->balance = BALANCE_WEIGHTED;
	if (seen[K_BALANCE])
		parse_balance(c, seen[K_BALANCE], r);
	/* without retry:, only what never left: a refused connection goes to the next target */
	r->retry.attempts = r->n_targets < 3 ? (int)(r->n_targets ? r->n_targets : 1) : 3;
	r->retry.on = RETRY_ON_CONNECT;
	if (seen[K_RETRY])
		parse_retry(c, seen[K_RETRY], r);
	breaker_cfg_defaults(&r->breaker);
	r->breaker_on = seen[K_BREAKER] || seen[K_HEALTH] || r->n_targets > 1;
	if (seen[K_BREAKER])
		parse_breaker(c, seen[K_BREAKER], r);
	if (seen[K_HEALTH])
		parse_health(c, seen[K_HEALTH], r);
	if (seen[K_FALLBACK])
		parse_fallback(c, seen[K_FALLBACK], r);
	if (r->n_targets) {
		r->bt = xcalloc(r->n_targets, sizeof(*r->bt));
		for (size_t i = 0; i < r->n_targets; i++) {
			r->bt[i].weight = r->targets[i].weight;
			r->bt[i].priority = r->targets[i].priority;
			r->bt[i].available = true;
		}
		/* seeded from the route, so that a run can be repeated */
		balance_init(&r->bal, r->balance,
		             (r->name ? (uint64_t)path_hash(r->name) : 1) ^ (uint64_t)r->line);
	}
	if (seen[K_STRIP_PREFIX] && (s = get_str(c, seen[K_STRIP_PREFIX], "strip_prefix"))) {
		size_t len = strlen(s);

		/* the prefix is removed only at a segment boundary, so a trailing / never matches */
		if (s[0] != '/' || len < 2 || s[len - 1] == '/' || strpbrk(s, "?#*{} \t"))
			perr(c, seen[K_STRIP_PREFIX],
			     "strip_prefix: expected a literal path starting with / and not ending with /, such as /qwen");
		else
			r->strip_prefix = xstrdup(s);
	}
	if (seen[K_TIMEOUT])
		get_timeout(c, seen[K_TIMEOUT], "timeout", &r->timeout);
	if (seen[K_IDLE_TIMEOUT])
		get_timeout(c, seen[K_IDLE_TIMEOUT], "idle_timeout", &r->idle_timeout);
	if (r->idle_timeout == 0)
		r->idle_timeout = r->timeout;
	if (seen[K_STREAM_USAGE])
		get_bool(c, seen[K_STREAM_USAGE], "stream_usage", &r->stream_usage);
	if (seen[K_LOG_BODIES] && get_int(c, seen[K_LOG_BODIES], "log_bodies", &r->log_bodies) == 0 &&
	    (r->log_bodies < 0 || r->log_bodies > LOG_BODIES_MAX)) {
		perr(c, seen[K_LOG_BODIES], "log_bodies: expected a byte count from 0 to %d", LOG_BODIES_MAX);
		r->log_bodies = 0;
	}
	if (seen[K_STRIP_HEADERS])
		r->strip_headers = str_list(c, seen[K_STRIP_HEADERS], "strip_headers", false,
		                            &r->n_strip_headers);
	if (seen[K_REQUIRE_PRICE])
		get_bool(c, seen[K_REQUIRE_PRICE], "require_price", &r->require_price);
	if (seen[K_ON_DISCONNECT] && (s = get_str(c, seen[K_ON_DISCONNECT], "on_disconnect"))) {
		if (strcmp(s, "drain") == 0)
			r->drain_on_disconnect = true;
		else if (strcmp(s, "cancel") != 0)
			perr(c, seen[K_ON_DISCONNECT], "on_disconnect: expected cancel or drain, not "
			     "\"%s\"", s);
	}
	if (seen[K_MODELS])
		r->models = model_list(c, seen[K_MODELS], &r->n_models);
	if (seen[K_ADD_HEADERS])
		parse_add_headers(c, seen[K_ADD_HEADERS], r);
	if (seen[K_ADD_BODY_FIELDS] &&
	    expect_type(c, seen[K_ADD_BODY_FIELDS], YAML_MAPPING_NODE, "add_body_fields",
	                "a mapping such as { max_tokens: 2048 }")) {
		c->json_budget = JSON_NODES_MAX;
		r->add_body_fields = to_json(c, seen[K_ADD_BODY_FIELDS], 0);
		if (r->add_body_fields && json_object_size(r->add_body_fields) == 0) {
			json_decref(r->add_body_fields);
			r->add_body_fields = NULL;
		}
		if (r->add_body_fields)
			body_adds_make(r);
	}
	c->rname = NULL;
}

/* ---- loading: files ---- */

static void yaml_problem(struct pctx *c, const yaml_parser_t *ps, const char *text)
{
	size_t line;

	if (ps->error == YAML_READER_ERROR) {
		line = 1;
		for (size_t i = 0; i < ps->problem_offset && text[i]; i++)
			line += text[i] == '\n';
		perr_at(c, line, "YAML error: %s (the file must be UTF-8 text)",
		        ps->problem ? ps->problem : "cannot read");
	} else if (ps->error == YAML_MEMORY_ERROR) {
		abort();
	} else if (ps->context) {
		perr_at(c, ps->problem_mark.line + 1, "YAML syntax error: %s (%s at line %zu)",
		        ps->problem ? ps->problem : "bad syntax", ps->context,
		        ps->context_mark.line + 1);
	} else {
		perr_at(c, ps->problem_mark.line + 1, "YAML syntax error: %s",
		        ps->problem ? ps->problem : "bad syntax");
	}
}

static void parse_root(struct pctx *c, const yaml_node_t *root, struct pvec *out)
{
	static const char *const keys[] = { "routes", NULL };
	yaml_node_t *seen[1] = { 0 };
	const yaml_node_t *list;
	size_t pos = 0;

	if (root->type == YAML_SCALAR_NODE && scalar_class(root) == SC_NULL)
		return;
	if (root->type != YAML_MAPPING_NODE) {
		perr(c, root, "expected a mapping with a routes: key at the top, got %s",
		     describe(root));
		return;
	}
	get_keys(c, root, "the top level", keys, seen);
	list = seen[0];
	if (!list || (list->type == YAML_SCALAR_NODE && scalar_class(list) == SC_NULL))
		return;
	if (!expect_type(c, list, YAML_SEQUENCE_NODE, "routes", "a sequence of routes (- name: ...)"))
		return;
	for (yaml_node_item_t *it = list->data.sequence.items.start;
	     it < list->data.sequence.items.top; it++)
		parse_route(c, node(c, *it), pos++, out);
}

static char *read_file(struct pctx *c, size_t *len)
{
	struct stat st;
	char *buf = NULL;
	size_t n = 0;
	int fd = open(c->file, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

	if (fd < 0 || fstat(fd, &st) < 0) {
		perr_at(c, 0, "cannot read: %s", strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		perr_at(c, 0, "not a regular file");
		goto fail;
	}
	if (st.st_size > (off_t)ROUTE_FILE_MAX) {
		perr_at(c, 0, "larger than %u bytes; is this really a route file?", ROUTE_FILE_MAX);
		goto fail;
	}
	buf = xcalloc(1, (size_t)st.st_size + 1);
	while (n < (size_t)st.st_size) {
		ssize_t got = read(fd, buf + n, (size_t)st.st_size - n);

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			perr_at(c, 0, "cannot read: %s", strerror(errno));
			goto fail;
		}
		if (got == 0)
			break;
		n += (size_t)got;
	}
	close(fd);
	buf[n] = '\0';
	*len = n;
	return buf;
fail:
	if (fd >= 0)
		close(fd);
	free(buf);
	return NULL;
}

static void parse_file(struct pctx *c, struct pvec *out)
{
	yaml_parser_t ps;
	yaml_document_t doc;
	size_t len;
	char *text = read_file(c, &len);

	if (!text)
		return;
	if (!yaml_parser_initialize(&ps))
		abort();
	yaml_parser_set_input_string(&ps, (const unsigned char *)text, len);
	if (!yaml_parser_load(&ps, &doc)) {
		yaml_problem(c, &ps, text);
		goto done;
	}
	c->doc = &doc;
	if (yaml_document_get_root_node(&doc)) {
		parse_root(c, yaml_document_get_root_node(&doc), out);
		yaml_document_delete(&doc);
		/* a second document would be silently ignored: say so instead */
		if (!yaml_parser_load(&ps, &doc)) {
			yaml_problem(c, &ps, text);
		} else {
			if (yaml_document_get_root_node(&doc))
				perr(c, yaml_document_get_root_node(&doc),
				     "only one YAML document per route file (remove the ---)");
			yaml_document_delete(&doc);
		}
	} else {
		yaml_document_delete(&doc);
	}
	c->doc = NULL;
done:
	yaml_parser_delete(&ps);
	free(text);
}

static int pending_name_cmp(const void *a, const void *b)
{
	const struct pending *x = a, *y = b;
	int d = strcmp(x->r->name, y->r->name);

	if (d)
		return d;
	if (x->file_idx != y->file_idx)
		return x->file_idx < y->file_idx ? -1 : 1;
	return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static int pending_order_cmp(const void *a, const void *b)
{
	const struct pending *x = a, *y = b;

	if (x->r->priority != y->r->priority)
		return x->r->priority < y->r->priority ? -1 : 1;
	if (x->file_idx != y->file_idx)
		return x->file_idx < y->file_idx ? -1 : 1;
	return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* Names must be unique across all files; report each repeat with where the name was
 * first used. */
static void check_duplicates(struct pvec *pv, struct errlist *errs)
{
	struct pending *named = xcalloc(pv->n, sizeof(*named));
	size_t n = 0;

	for (size_t i = 0; i < pv->n; i++)
		if (pv->v[i].r->name)
			named[n++] = pv->v[i];
	qsort(named, n, sizeof(*named), pending_name_cmp);
	for (size_t i = 1, first = 0; i < n; i++) {
		if (strcmp(named[i].r->name, named[first].r->name) != 0) {
			first = i;
			continue;
		}
		errlist_add(errs, "%s:%d: duplicate route name \"%s\" (first defined at %s:%d)",
		            named[i].r->file, named[i].name_line, named[i].r->name,
		            named[first].r->file, named[first].name_line);
	}
	free(named);
}

/* Every fallback names another route of the set. */
static void check_fallbacks(struct pvec *pv, struct errlist *errs)
{
	for (size_t i = 0; i < pv->n; i++) {
		const struct route *r = pv->v[i].r;

		for (size_t f = 0; f < r->n_fallback; f++) {
			size_t j;

			if (r->name && strcmp(r->fallback[f], r->name) == 0) {
				errlist_add(errs, "%s:%d: route \"%s\": fallback names the route itself",
				            r->file, r->fallback_line, r->name);
				continue;
			}
			for (j = 0; j < pv->n; j++)
				if (pv->v[j].r->name && strcmp(pv->v[j].r->name, r->fallback[f]) == 0)
					break;
			if (j == pv->n)
				errlist_add(errs, "%s:%d: route \"%s\": fallback \"%s\" is not a route",
				            r->file, r->fallback_line, r->name ? r->name : "?", r->fallback[f]);
		}
	}
}

struct route_table *route_table_load_files(const char *const *paths, size_t n,
                                           struct errlist *errs)
{
	struct pvec pv = { 0 };
	struct route_table *t = NULL;
	size_t errs_before = errs->n;

	for (size_t i = 0; i < n; i++) {
		struct pctx c = { .file = paths[i], .file_idx = i };

		parse_file(&c, &pv);
		/* file-level problems (line 0) are printed as "FILE: message" */
		if (c.n_errs)
			qsort(c.errs, c.n_errs, sizeof(*c.errs), perr_cmp);
		for (size_t e = 0; e < c.n_errs; e++) {
			if (c.errs[e].line == 0)
				errlist_add(errs, "%s: %s", c.file, c.errs[e].msg);
			else
				errlist_add(errs, "%s:%zu: %s", c.file, c.errs[e].line, c.errs[e].msg);
			free(c.errs[e].msg);
		}
		free(c.errs);
	}
	check_duplicates(&pv, errs);
	check_fallbacks(&pv, errs);
	if (errs->n != errs_before) {
		for (size_t i = 0; i < pv.n; i++)
			route_free(pv.v[i].r);
		goto done;
	}
	if (pv.n)
		qsort(pv.v, pv.n, sizeof(*pv.v), pending_order_cmp);
	t = xcalloc(1, sizeof(*t));
	t->refcount = 1;
	t->n = pv.n;
	t->routes = xcalloc(pv.n, sizeof(*t->routes));
	for (size_t i = 0; i < pv.n; i++)
		t->routes[i] = pv.v[i].r;
	table_index(t);
done:
	free(pv.v);
	return t;
}

static bool is_route_file(const char *name)
{
	size_t len = strlen(name);

	if (name[0] == '.')
		return false;
	return (len > 5 && strcmp(name + len - 5, ".yaml") == 0) ||
	       (len > 4 && strcmp(name + len - 4, ".yml") == 0);
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

struct route_table *route_table_load(const char *dir, struct errlist *errs)
{
	struct route_table *t = NULL;
	struct dirent *de;
	char **paths = NULL;
	size_t n = 0, cap = 0, dlen = strlen(dir);
	DIR *d = opendir(dir);

	if (!d) {
		errlist_add(errs, "%s: cannot open the route directory: %s", dir, strerror(errno));
		return NULL;
	}
	while ((de = readdir(d))) {
		struct stat st;
		char *path;

		if (!is_route_file(de->d_name))
			continue;
		if (asprintf(&path, "%s%s%s", dir, dlen && dir[dlen - 1] == '/' ? "" : "/",
		             de->d_name) < 0)
			abort();
		/* editors and packages leave directories and sockets around; only files count */
		if (stat(path, &st) < 0 || !S_ISREG(st.st_mode)) {
			free(path);
			continue;
		}
		if (n == cap) {
			cap = cap ? 2 * cap : 16;
			paths = xrealloc(paths, cap * sizeof(*paths));
		}
		paths[n++] = path;
	}
	closedir(d);
	if (n)
		qsort(paths, n, sizeof(*paths), name_cmp);
	t = route_table_load_files((const char *const *)paths, n, errs);
	if (t)
		t->dir = xstrdup(dir);
	for (size_t i = 0; i < n; i++)
		free(paths[i]);
	free(paths);
	return t;
}

void route_print_pool(const struct route *r, FILE *out)
{
	const char *sep = "";

	fprintf(out, "  %s (%s:%d): %zu upstream%s, %s\n", r->name, r->file, r->line, r->n_targets,
	        r->n_targets == 1 ? "" : "s", balance_kind_name(r->balance));
	for (size_t i = 0; i < r->n_targets; i++) {
		const struct route_target *t = &r->targets[i];

		fprintf(out, "    %s/%zu %s weight %d tier %d%s%s%s%s%s%s%s%s%s\n", r->name, i, t->url,
		        t->weight, t->priority, t->model ? " model " : "", t->model ? t->model : "",
		        t->provider != PROVIDER_OPENAI ? " provider " : "",
		        t->provider != PROVIDER_OPENAI ? provider_name(t->provider) : "",
		        t->deployment ? " deployment " : "", t->deployment ? t->deployment : "",
		        t->api_version ? " api_version " : "", t->api_version ? t->api_version : "",
		        t->api_key ? " key set" : "");
	}
	fprintf(out, "    retry: %d attempt%s on ", r->retry.attempts, r->retry.attempts == 1 ? "" : "s");
	for (size_t i = 0; i < N_RETRY_WORDS; i++)
		if (r->retry.on & retry_words[i].bit) {
			fprintf(out, "%s%s", sep, retry_words[i].word);
			sep = ",";
		}
	for (size_t i = 0; i < r->retry.n_codes; i++) {
		fprintf(out, "%s%d", sep, r->retry.codes[i]);
		sep = ",";
	}
	fprintf(out, "%s", *sep ? "" : "nothing");
	if (r->retry.deadline_s)
		fprintf(out, ", deadline %d s", r->retry.deadline_s);
	fprintf(out, "\n");
	if (r->breaker_on)
		fprintf(out, "    breaker: %d failures or %d%% of %d in a minute, cooldown %d s up to %d s\n",
		        r->breaker.failures, r->breaker.error_rate, r->breaker.min_requests,
		        r->breaker.cooldown_s, r->breaker.max_cooldown_s);
	else
		fprintf(out, "    breaker: off\n");
	if (r->health.path)
		fprintf(out, "    health: GET %s every %d s (timeout %d s, %d to pass, %d to fail)\n",
		        r->health.path, r->health.interval_s, r->health.timeout_s, r->health.healthy,
		        r->health.unhealthy);
	for (size_t i = 0; i < r->n_fallback; i++)
		fprintf(out, "%s%s", i ? ", " : "    fallback: ", r->fallback[i]);
	if (r->n_fallback)
		fprintf(out, "\n");
}
