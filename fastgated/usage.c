/* Token usage extraction; see usage.h. */
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "usage.h"

/* An SSE event larger than this is not one we need to read: pass it on and stop holding. */
#define SSE_MAX_EVENT (1024 * 1024)

/* ---- a minimal JSON scanner for the hot path ----------------------------------------
 * Every request and every answer is looked at for a handful of top-level fields. A full
 * parse (jansson) allocates a node per value and was a quarter of the gateway's
 * instructions per request; this walks the bytes once and allocates nothing. It accepts
 * only what JSON allows; anything else ends the scan with "not found". */

struct jscan {
	const char *p, *end;
};

/* Bytes that end the plain run inside a string: the quote, a backslash, control bytes. */
static const bool str_stop[256] = {
	[0x00] = 1, [0x01] = 1, [0x02] = 1, [0x03] = 1, [0x04] = 1, [0x05] = 1, [0x06] = 1,
	[0x07] = 1, [0x08] = 1, [0x09] = 1, [0x0a] = 1, [0x0b] = 1, [0x0c] = 1, [0x0d] = 1,
	[0x0e] = 1, [0x0f] = 1, [0x10] = 1, [0x11] = 1, [0x12] = 1, [0x13] = 1, [0x14] = 1,
	[0x15] = 1, [0x16] = 1, [0x17] = 1, [0x18] = 1, [0x19] = 1, [0x1a] = 1, [0x1b] = 1,
	[0x1c] = 1, [0x1d] = 1, [0x1e] = 1, [0x1f] = 1, ['"'] = 1, ['\\'] = 1,
};

/* Bytes a JSON number is made of. */
static const bool num_char[256] = {
	['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
	['8'] = 1, ['9'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1, ['e'] = 1, ['E'] = 1,
};

static void js_ws(struct jscan *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
		j->p++;
}

/* A string; on success s and n span its raw contents (escapes left as written). */
static bool js_string(struct jscan *j, const char **s, size_t *n)
{
	const char *q;

	if (j->p >= j->end || *j->p != '"')
		return false;
	q = ++j->p;
	while (j->p < j->end && *j->p != '"') {
		/* plain bytes in a tight loop: strings are most of a chat body */
		while (j->p < j->end && !str_stop[(unsigned char)*j->p])
			j->p++;
		if (j->p >= j->end || *j->p == '"')
			break;
		if ((unsigned char)*j->p < 0x20)
			return false;
		if (*j->p == '\\' && ++j->p >= j->end)
			return false;
		j->p++;
	}
	if (j->p >= j->end)
		return false;
	*s = q;
	*n = (size_t)(j->p - q);
	j->p++;
	return true;
}

static bool js_literal(struct jscan *j, const char *lit)
{
	size_t n = strlen(lit);

	if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
		return false;
	j->p += n;
	return true;
}

static bool js_value(struct jscan *j, int depth);

/* An object or array, skipped. */
static bool js_container(struct jscan *j, int depth, char close)
{
	const char *k;
	size_t kn;

	if (depth > 64)
		return false;
	j->p++;
	js_ws(j);
	if (j->p < j->end && *j->p == close) {
		j->p++;
		return true;
	}
	for (;;) {
		if (close == '}') {
			if (!js_string(j, &k, &kn))
				return false;
			js_ws(j);
			if (j->p >= j->end || *j->p != ':')
				return false;
			j->p++;
		}
		if (!js_value(j, depth + 1))
			return false;
		js_ws(j);
		if (j->p < j->end && *j->p == ',') {
			j->p++;
			js_ws(j);
			continue;
		}
		if (j->p < j->end && *j->p == close) {
			j->p++;
			return true;
		}
		return false;
	}
}

static bool js_value(struct jscan *j, int depth)
{
	const char *s;
	size_t n;

	js_ws(j);
	if (j->p >= j->end)
		return false;
	switch (*j->p) {
	case '"': return js_string(j, &s, &n);
	case '{': return js_container(j, depth, '}');
	case '[': return js_container(j, depth, ']');
	case 't': return js_literal(j, "true");
	case 'f': return js_literal(j, "false");
	case 'n': return js_literal(j, "null");
	default:
		if (*j->p != '-' && (*j->p < '0' || *j->p > '9'))
			return false;
		while (j->p < j->end && num_char[(unsigned char)*j->p])
			j->p++;
		return true;
	}
}

static bool key_is(const char *k, size_t kn, const char *want)
{
	return strlen(want) == kn && memcmp(k, want, kn) == 0;
}

/* Walk the members of the object at j->p, calling fn(key, value span) for each; true if
 * the object is well formed. */
static bool js_members(struct jscan *j, void (*fn)(void *, const char *, size_t, struct jscan *),
                       void *arg)
{
	const char *k;
	size_t kn;

	js_ws(j);
	if (j->p >= j->end || *j->p != '{')
		return false;
	j->p++;
	js_ws(j);
	if (j->p < j->end && *j->p == '}') {
		j->p++;
		return true;
	}
	for (;;) {
		struct jscan v;
		if (!js_string(j, &k, &kn))
			return false;
		js_ws(j);
		if (j->p >= j->end || *j->p != ':')
			return false;
		j->p++;
		js_ws(j);
		v.p = j->p;
		if (!js_value(j, 1))
			return false;
		v.end = j->p;
		fn(arg, k, kn, &v);
		js_ws(j);
		if (j->p < j->end && *j->p == ',') {
			j->p++;
			js_ws(j);
			continue;
		}
		if (j->p < j->end && *j->p == '}') {
			j->p++;
			return true;
		}
		return false;
	}
}

static void usage_field(void *arg, const char *k, size_t kn, struct jscan *v)
{
	struct usage *u = arg;
	long *dst = key_is(k, kn, "prompt_tokens") ? &u->prompt_tokens
	          : key_is(k, kn, "completion_tokens") ? &u->completion_tokens : NULL;
	long n = 0;
	const char *p = v->p;

	if (!dst || p >= v->end || *p < '0' || *p > '9')
		return;
	for (; p < v->end && *p >= '0' && *p <= '9' && n < 1000000000000L; p++)
		n = n * 10 + (*p - '0');
	if (p == v->end) /* a plain non-negative integer, as usage counts are */
		*dst = n;
}

static void usage_member(void *arg, const char *k, size_t kn, struct jscan *v)
{
	struct usage *u = arg;
	struct jscan obj = *v;

	if (!key_is(k, kn, "usage") || v->p >= v->end || *v->p != '{')
		return;
	u->prompt_tokens = u->completion_tokens = -1;
	if (js_members(&obj, usage_field, u))
		u->found = true;
}

/* Fast path: OpenAI-style answers end with the "usage" member. Take the last "usage" key
 * when it is a member (a ',' or '{' before it: an escaped quote has a backslash there) whose
 * object value is followed only by the document's closing brace; anything else goes the
 * full way. Saves walking every choice of every answer. */
static bool usage_at_tail(const char *body, size_t len, struct usage *u)
{
	const char *hit = NULL, *p = body, *b, *end = body + len;
	struct jscan j, obj;

	while ((p = memmem(p, (size_t)(end - p), "\"usage\"", 7)) != NULL)
		hit = p++;
	if (!hit)
		return false;
	for (b = hit; b > body && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\n' || b[-1] == '\r'); b--)
		;
	if (b == body || (b[-1] != ',' && b[-1] != '{'))
		return false;
	j.p = hit + 7;
	j.end = end;
	js_ws(&j);
	if (j.p >= j.end || *j.p != ':')
		return false;
	j.p++;
	js_ws(&j);
	if (j.p >= j.end || *j.p != '{')
		return false;
	obj = j;
	if (!js_value(&j, 1))
		return false;
	obj.end = j.p;
	js_ws(&j);
	if (j.p >= j.end || *j.p != '}')
		return false;
	j.p++;
	js_ws(&j);
	if (j.p != j.end)
		return false;
	u->prompt_tokens = u->completion_tokens = -1;
	if (!js_members(&obj, usage_field, u))
		return false;
	u->found = true;
	return true;
}

bool usage_from_json(const char *body, size_t len, struct usage *u)
{
	struct jscan j = { body, body + len };

	u->found = false;
	u->prompt_tokens = u->completion_tokens = -1;
	if (len == 0 || !memmem(body, len, "\"usage\"", 7))
		return false;
	if (usage_at_tail(body, len, u))
		return true;
	u->found = false;
	u->prompt_tokens = u->completion_tokens = -1;
	js_members(&j, usage_member, u);
	return u->found;
}

struct request_info {
	char *model;
	size_t cap;
	bool *stream, *include_usage;
};

static void stream_options_member(void *arg, const char *k, size_t kn, struct jscan *v)
{
	struct request_info *ri = arg;

	if (key_is(k, kn, "include_usage"))
		*ri->include_usage = js_literal(v, "true");
}

static void request_member(void *arg, const char *k, size_t kn, struct jscan *v)
{
	struct request_info *ri = arg;
	const char *s;
	size_t n;

	if (key_is(k, kn, "model")) {
		struct jscan sv = *v;
		ri->model[0] = '\0';
		if (js_string(&sv, &s, &n)) {
			json_t *decoded = NULL;
			/* the rare name with escapes is decoded properly; plain ones are copied */
			if (memchr(s, '\\', n)) {
				decoded = json_loadb(v->p, (size_t)(sv.p - v->p), JSON_DECODE_ANY, NULL);
				if (json_is_string(decoded)) {
					s = json_string_value(decoded);
					n = strlen(s);
				}
			}
			if (n >= ri->cap)
				n = ri->cap - 1;
			memcpy(ri->model, s, n);
			ri->model[n] = '\0';
			json_decref(decoded);
		}
	} else if (key_is(k, kn, "stream")) {
		struct jscan sv = *v;
		*ri->stream = js_literal(&sv, "true");
	} else if (key_is(k, kn, "stream_options")) {
		struct jscan sv = *v;
		*ri->include_usage = false;
		js_members(&sv, stream_options_member, ri);
	}
}

void usage_request_info(const char *body, size_t len, char *model, size_t cap,
                        bool *stream, bool *include_usage)
{
	struct request_info ri = { model, cap, stream, include_usage };
	struct jscan j = { body, body + len };

	model[0] = '\0';
	*stream = *include_usage = false;
	/* leading whitespace is valid JSON and upstreams accept it (see the fuzz corpus) */
	if (!js_members(&j, request_member, &ri)) {
		model[0] = '\0';
		*stream = *include_usage = false;
		return;
	}
	js_ws(&j);
	if (j.p != j.end) { /* trailing garbage: not a JSON document */
		model[0] = '\0';
		*stream = *include_usage = false;
	}
}

char *usage_request_with_include_usage(const char *body, size_t len)
{
	json_t *root = json_loadb(body, len, 0, NULL), *so;
	char *out = NULL;

	if (!json_is_object(root))
		goto done;
	so = json_object_get(root, "stream_options");
	if (!json_is_object(so)) {
		so = json_object();
		if (!so || json_object_set_new(root, "stream_options", so) < 0)
			goto done;
	}
	if (json_object_set_new(so, "include_usage", json_true()) < 0)
		goto done;
	out = json_dumps(root, JSON_COMPACT);
done:
	json_decref(root);
	return out;
}

void sse_scan_init(struct sse_scan *s, bool strip_usage)
{
	memset(s, 0, sizeof(*s));
	s->strip_usage = strip_usage;
	s->usage.prompt_tokens = s->usage.completion_tokens = -1;
}

void sse_scan_free(struct sse_scan *s)
{
	free(s->buf);
	s->buf = NULL;
	s->len = s->cap = 0;
}

static int append(char **out, size_t *len, size_t *cap, const char *data, size_t n)
{
	if (*len + n > *cap) {
		size_t ncap = *cap ? *cap : 4096;
		char *p;
		while (ncap < *len + n)
			ncap *= 2;
		p = realloc(*out, ncap);
		if (!p)
			return -1;
		*out = p;
		*cap = ncap;
	}
	memcpy(*out + *len, data, n);
	*len += n;
	return 0;
}

struct event_info {
	struct usage *usage;
	bool has_usage, empty_choices;
};

static void event_member(void *arg, const char *k, size_t kn, struct jscan *v)
{
	struct event_info *ei = arg;

	if (key_is(k, kn, "usage") && v->p < v->end && *v->p == '{') {
		usage_member(ei->usage, k, kn, v);
		ei->has_usage = true;
	} else if (key_is(k, kn, "choices") && v->p < v->end && *v->p == '[') {
		struct jscan c = { v->p + 1, v->end };
		js_ws(&c);
		ei->empty_choices = c.p < c.end && *c.p == ']';
	}
}

/* Look at one complete event. Returns true if it is a usage-only chunk. */
static bool inspect_event(struct sse_scan *s, const char *ev, size_t n)
{
	const char *p = ev, *end = ev + n;
	bool usage_only = false;

	if (!memmem(ev, n, "\"usage\"", 7))
		return false;
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		size_t ln = eol ? (size_t)(eol - p) : (size_t)(end - p);
		if (ln >= 5 && memcmp(p, "data:", 5) == 0) {
			struct event_info ei = { &s->usage, false, false };
			struct jscan j = { p + 5, p + ln };
			if (js_members(&j, event_member, &ei) && ei.has_usage)
				usage_only = ei.empty_choices;
		}
		p = eol ? eol + 1 : end;
	}
	return usage_only;
}

/* Offset just past the blank line that ends the first event in buf, or 0. */
static size_t event_end(const char *buf, size_t len)
{
	for (size_t i = 0; i + 1 < len; i++) {
		if (buf[i] != '\n')
			continue;
		if (buf[i + 1] == '\n')
			return i + 2;
		if (buf[i + 1] == '\r' && i + 2 < len && buf[i + 2] == '\n')
			return i + 3;
	}
	return 0;
}

int sse_scan_feed(struct sse_scan *s, const char *data, size_t len, char **out, size_t *out_len,
                  size_t *out_cap)
{
	size_t end, done = 0;

	/* Nothing new can complete an event. And before anything was buffered, an empty write
	 * (curl may make one) would do arithmetic on and memcpy to NULL pointers, which is
	 * undefined even for 0 bytes (found by tests/fuzz/fuzz_sse.c). */
	if (len == 0)
		return 0;
	if (!s->strip_usage && append(out, out_len, out_cap, data, len) < 0)
		return -1;
	if (append(&s->buf, &s->len, &s->cap, data, len) < 0)
		return -1;
	while ((end = event_end(s->buf + done, s->len - done)) > 0) {
		const char *ev = s->buf + done;
		bool drop = inspect_event(s, ev, end);
		if (s->strip_usage && !drop && append(out, out_len, out_cap, ev, end) < 0)
			return -1;
		done += end;
	}
	if (done > 0) {
		memmove(s->buf, s->buf + done, s->len - done);
		s->len -= done;
	}
	if (s->len > SSE_MAX_EVENT) {
		/* not an event stream we can read: stop holding bytes back */
		if (s->strip_usage && append(out, out_len, out_cap, s->buf, s->len) < 0)
			return -1;
		s->len = 0;
	}
	return 0;
}

int sse_scan_finish(struct sse_scan *s, char **out, size_t *out_len, size_t *out_cap)
{
	int rc = 0;

	if (s->strip_usage && s->len > 0)
		rc = append(out, out_len, out_cap, s->buf, s->len);
	s->len = 0;
	return rc;
}
