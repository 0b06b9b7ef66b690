/* Token usage extraction; see usage.h. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "reqjson.h"   /* reqjson_plain_end: the string scan both JSON readers share */
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

/* Length of the well-formed UTF-8 sequence at p (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF), or 0. jansson refuses what this refuses, so a
 * document is JSON to the scanner exactly when it is JSON to everything else. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
	unsigned c = p[0], cp;
	size_t n;

	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if ((size_t)(end - p) < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

/* Four hex digits at p (end bounds it), or -1. */
static long hex4(const char *p, const char *end)
{
	long v = 0;

	if (end - p < 4)
		return -1;
	for (int i = 0; i < 4; i++) {
		char c = p[i];
		int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
		      : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
		if (d < 0)
			return -1;
		v = v << 4 | d;
	}
	return v;
}

/* The escape after a backslash at p: its length, or 0 when JSON does not allow it (a
 * \u0000, which jansson refuses by default, and lone surrogates included). */
static size_t escape_len(const char *p, const char *end)
{
	long cp, lo;

	if (p >= end)
		return 0;
	if (strchr("\"\\/bfnrt", *p) && *p)
		return 1;
	if (*p != 'u' || (cp = hex4(p + 1, end)) <= 0 || (cp >= 0xdc00 && cp <= 0xdfff))
		return 0;
	if (cp < 0xd800 || cp > 0xdbff)
		return 5;
	/* a high surrogate needs its low half right after it */
	if (end - p < 11 || p[5] != '\\' || p[6] != 'u' || (lo = hex4(p + 7, end)) < 0xdc00 ||
	    lo > 0xdfff)
		return 0;
	return 11;
}

static inline bool is_json_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Whitespace after j->p skipped: out of line, as compact JSON, the usual case, has none
 * (js_ws's one test says so). */
static __attribute__((noinline)) void js_ws_skip(struct jscan *j)
{
	const char *p = j->p;

	while (p < j->end && is_json_ws(*p))
		p++;
	j->p = p;
}

static inline void js_ws(struct jscan *j)
{
	if (__builtin_expect(j->p < j->end && (unsigned char)*j->p > ' ', 1))
		return;
	js_ws_skip(j);
}

/* The rest of js_string from p, the first byte that ended its plain run: escapes, UTF-8
 * sequences and the faults (with j->p left at the fault). On success, p is at the closing
 * quote. */
static bool js_string_rest(struct jscan *j, const char **pp)
{
	const char *p = *pp, *end = j->end;

	for (;;) {
		if (p >= end) {
			j->p = p;
			return false;
		}
		if (*p == '"')
			break;
		if ((unsigned char)*p < 0x20) {
			j->p = p;
			return false;
		}
		if (*p == '\\') {
			size_t e = escape_len(p + 1, end);
			if (!e) {
				j->p = p;
				return false;
			}
			p += 1 + e;
		} else {
			size_t u8 = utf8_len((const unsigned char *)p, (const unsigned char *)end);
			if (!u8) {
				j->p = p;
				return false;
			}
			p += u8;
		}
		p = (const char *)reqjson_plain_end((const unsigned char *)p,
		                                    (const unsigned char *)end);
	}
	*pp = p;
	return true;
}

/* A string; on success s and n span its raw contents (escapes left as written). Plain
 * ASCII runs (most of a chat body) go 16 bytes a step (reqjson_plain_end); a string that
 * is plain up to its closing quote, the usual key, is read here inline, the cursor in a
 * local so that the compiler does not store it back at every step. */
static inline bool js_string(struct jscan *j, const char **s, size_t *n)
{
	const char *p = j->p, *q, *end = j->end;

	if (p >= end || *p != '"')
		return false;
	q = ++p;
	p = (const char *)reqjson_plain_end((const unsigned char *)p, (const unsigned char *)end);
	if (!(p < end && *p == '"') && !js_string_rest(j, &p))
		return false;
	*s = q;
	*n = (size_t)(p - q);
	j->p = p + 1;
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

static bool is_digit(const struct jscan *j, const char *p)
{
	return p < j->end && *p >= '0' && *p <= '9';
}

/* A number jansson can hold: an integer within 64 bits, a real that is finite. */
static bool number_fits(const char *s, size_t n, bool integer)
{
	char buf[400];
	const char *d = s + (s[0] == '-');
	size_t nd = n - (size_t)(d - s);

	if (integer) {
		static const char max[] = "9223372036854775807";   /* LLONG_MAX; -2^63 one more */
		if (nd != 19)
			return nd < 19;
		int c = memcmp(d, max, 19);
		return c <= 0 || (s[0] == '-' && memcmp(d, "9223372036854775808", 19) == 0);
	}
	{
		/* the common reals (0.7, 1e-5) cannot overflow: only strtod a number that might */
		const char *e = memchr(s, 'e', n);
		if (!e)
			e = memchr(s, 'E', n);
		if (!e && n < 300)
			return true;          /* without an exponent it takes 309 digits to overflow */
		if (e && n < 24) {
			const char *x = e + 1 + (e[1] == '+' || e[1] == '-');
			if (s + n - x <= 2)
				return true;      /* at most ~20 digits times 10^99 */
		}
		if (n >= sizeof(buf)) {
			/* very long: the value is about 10^(integer digits + exponent), compared
			 * with 10^300 without adding the two. The exponent is read here, within
			 * the number, as strtol reads it (a huge one saturated): strtol read on
			 * past a number at the very end of the buffer, and the sum with its
			 * LONG_MAX overflowed (undefined; it wrapped, and such a number was taken
			 * as one that fits). Both found by fuzz_usage.c. */
			const char *dot = memchr(d, '.', nd), *stop = dot ? dot : e ? e : s + n;
			long digits, ex = 0;

			while (d < stop && *d == '0')
				d++;
			digits = (long)(stop - d);
			if (e) {
				const char *x = e + 1;
				bool neg = *x == '-';

				if (*x == '+' || *x == '-')
					x++;
				for (; x < s + n; x++)
					ex = ex <= (LONG_MAX - 9) / 10 ? ex * 10 + (*x - '0') : LONG_MAX;
				if (neg)
					ex = -ex;
			}
			return ex < 300 - digits;
		}
	}
	memcpy(buf, s, n);
	buf[n] = '\0';
	double v = strtod(buf, NULL);
	return isfinite(v);
}

/* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? as JSON has it (no "06", no "1.", no "+1") */
static bool js_number(struct jscan *j)
{
	const char *p = j->p;
	bool integer = true;

	if (p < j->end && *p == '-')
		p++;
	if (!is_digit(j, p))
		return false;
	if (*p++ != '0')
		while (is_digit(j, p))
			p++;
	if (p < j->end && *p == '.') {
		integer = false;
		if (!is_digit(j, ++p))
			return false;
		while (is_digit(j, p))
			p++;
	}
	if (p < j->end && (*p == 'e' || *p == 'E')) {
		integer = false;
		p++;
		if (p < j->end && (*p == '+' || *p == '-'))
			p++;
		if (!is_digit(j, p))
			return false;
		while (is_digit(j, p))
			p++;
	}
	/* an integer of fewer than 19 characters fits whatever its digits: no call for the
	 * counts of a usage object */
	if (!(integer && p - j->p < 19) && !number_fits(j->p, (size_t)(p - j->p), integer))
		return false;
	j->p = p;
	return true;
}

/* What an object walk does with a member: fn is called with the value's span once the
 * value is known to be JSON; take, offered first a value that is an object (j at its
 * '{'), may read it itself, checking it and reading what it wants in one walk (it returns
 * true, with *ok false when the value is not JSON), or return false to leave it to the
 * walk. */
typedef void member_fn(void *arg, const char *k, size_t kn, struct jscan *v);
typedef bool take_fn(void *arg, const char *k, size_t kn, struct jscan *j, int depth, bool *ok);

/* The object whose '{' is at j->p, inside `depth` containers (more than 64 is too deep),
 * checked as JSON, each member handed to take and fn (either may be NULL); true if it is
 * JSON, with j->p past it. */
static bool js_object(struct jscan *j, int depth, member_fn *fn, take_fn *take, void *arg)
{
	const char *k;
	size_t kn;

	if (depth > 64)
		return false;
	j->p++;
	js_ws(j);
	if (j->p < j->end && *j->p == '}') {
		j->p++;
		return true;
	}
	for (;;) {
		struct jscan v;
		bool ok;

		if (!js_string(j, &k, &kn))
			return false;
		js_ws(j);
		if (j->p >= j->end || *j->p != ':')
			return false;
		j->p++;
		js_ws(j);
		if (take && j->p < j->end && *j->p == '{' && take(arg, k, kn, j, depth + 1, &ok)) {
			if (!ok)
				return false;
		} else {
			v.p = j->p;
			if (!js_value(j, depth + 1))
				return false;
			v.end = j->p;
			if (fn)
				fn(arg, k, kn, &v);
		}
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

/* An object or array, skipped. */
static bool js_container(struct jscan *j, int depth, char close)
{
	if (close == '}')
		return js_object(j, depth, NULL, NULL, NULL);
	if (depth > 64)
		return false;
	j->p++;
	js_ws(j);
	if (j->p < j->end && *j->p == close) {
		j->p++;
		return true;
	}
	for (;;) {
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
		return js_number(j);
	}
}

static bool key_is(const char *k, size_t kn, const char *want)
{
	return strlen(want) == kn && memcmp(k, want, kn) == 0;
}

/* Walk the members of the object at j->p (after whitespace), as js_object does at the
 * top; true if the object is well formed. */
static inline bool js_members_take(struct jscan *j, member_fn *fn, take_fn *take, void *arg)
{
	js_ws(j);
	if (j->p >= j->end || *j->p != '{')
		return false;
	return js_object(j, 0, fn, take, arg);
}

/* The same, calling fn(key, value span) for each member. */
static inline bool js_members(struct jscan *j, member_fn *fn, void *arg)
{
	return js_members_take(j, fn, NULL, arg);
}

void usage_reset(struct usage *u)
{
	u->prompt_tokens = u->completion_tokens = -1;
	u->cached_tokens = u->cache_write_tokens = u->reasoning_tokens = -1;
	u->found = false;
}

/* A usage count: a plain non-negative integer (anything else, null included, leaves *dst
 * as it was: unknown). */
static void read_count(const struct jscan *v, long *dst)
{
	long n = 0;
	const char *p = v->p;

	if (p >= v->end || *p < '0' || *p > '9')
		return;
	for (; p < v->end && *p >= '0' && *p <= '9' && n < 1000000000000L; p++)
		n = n * 10 + (*p - '0');
	if (p == v->end)
		*dst = n;
}

/* One count inside a *_tokens_details object; its other members are skipped. */
struct detail {
	const char *name;
	long *dst;
};

static void detail_field(void *arg, const char *k, size_t kn, struct jscan *v)
{
	struct detail *d = arg;

	if (key_is(k, kn, d->name))
		read_count(v, d->dst);
}

/* A usage object's counts (the details objects are take_details' to read). */
static void usage_count(void *arg, const char *k, size_t kn, struct jscan *v)
{
	struct usage *u = arg;

	/* by length first: one compare of the key's bytes at most */
	if (kn == 13 && key_is(k, kn, "prompt_tokens"))
		read_count(v, &u->prompt_tokens);
	else if (kn == 17 && key_is(k, kn, "completion_tokens"))
		read_count(v, &u->completion_tokens);
}

/* A usage object's *_tokens_details object, read while it is checked. */
static bool take_details(void *arg, const char *k, size_t kn, struct jscan *j, int depth, bool *ok)
{
	struct usage *u = arg;
	struct detail d;

	if (kn == 21 && key_is(k, kn, "prompt_tokens_details"))
		d = (struct detail){ "cached_tokens", &u->cached_tokens };
	else if (kn == 25 && key_is(k, kn, "completion_tokens_details"))
		d = (struct detail){ "reasoning_tokens", &u->reasoning_tokens };
	else
		return false;
	*ok = js_object(j, depth, detail_field, NULL, &d);
	return true;
}

/* The usage object at j->p (after whitespace) read into *u, which is reset first: true
 * when it is a JSON object. One walk checks it and reads it. */
static bool read_usage(struct jscan *j, struct usage *u)
{
	usage_reset(u);
	return js_members_take(j, usage_count, take_details, u);
}

/* A member of an SSE chunk, whose value is known to be JSON: when it is the usage object,
 * it is read into *arg. */
static void usage_member(void *arg, const char *k, size_t kn, struct jscan *v)
{
	struct usage *u = arg;
	struct jscan obj = *v;

	if (!key_is(k, kn, "usage") || v->p >= v->end || *v->p != '{')
		return;
	if (read_usage(&obj, u))
		u->found = true;
}

/* A top-level member of a whole answer: the usage object is read while it is checked
 * (into a copy: *arg keeps what an earlier usage member gave when this one is not JSON,
 * as then the walk ends). */
static bool take_usage(void *arg, const char *k, size_t kn, struct jscan *j, int depth, bool *ok)
{
	struct usage *u = arg, got;

	if (!key_is(k, kn, "usage"))
		return false;
	usage_reset(&got);
	*ok = js_object(j, depth, usage_count, take_details, &got);
	if (*ok) {
		*u = got;
		u->found = true;
	}
	return true;
}

/* 1: found at the tail; 0: not there, walk the document; -1: no "usage" key at all.
 * Fast path: OpenAI-style answers end with the "usage" member. Take the last "usage" key
 * when it is a member (a ',' or '{' before it: an escaped quote has a backslash there) whose
 * object value is followed only by the document's closing brace; anything else goes the
 * full way. Saves walking every choice of every answer. */
static int usage_at_tail(const char *body, size_t len, struct usage *u)
{
	const char *hit = NULL, *p, *b, *end = body + len;
	struct usage got;
	struct jscan j;

	/* the last "usage" key, looked for from the end, where answers put it: by its 'u',
	 * which few of the bytes after it have (none of the counts' keys), where every few
	 * bytes there is a quote */
	for (size_t n = len; (p = memrchr(body, 'u', n)) != NULL; n = (size_t)(p - body))
		if (p > body && (size_t)(end - p) >= 6 && memcmp(p - 1, "\"usage\"", 7) == 0) {
			hit = p - 1;
			break;
		}
	if (!hit)
		return -1;   /* no "usage" anywhere: nothing to walk for */
	/* what follows can only succeed when the answer ends with two closing braces (the
	 * usage object's, the document's): OpenAI's answers, which have service_tier and
	 * system_fingerprint after usage, go to the full walk without walking usage first */
	for (b = end; b > hit && is_json_ws(b[-1]); b--)
		;
	if (b == hit || b[-1] != '}')
		return 0;
	for (b--; b > hit && is_json_ws(b[-1]); b--)
		;
	if (b == hit || b[-1] != '}')
		return 0;
	for (b = hit; b > body && is_json_ws(b[-1]); b--)
		;
	if (b == body || (b[-1] != ',' && b[-1] != '{'))
		return 0;
	j.p = hit + 7;
	j.end = end;
	js_ws(&j);
	if (j.p >= j.end || *j.p != ':')
		return 0;
	j.p++;
	js_ws(&j);
	/* one walk both checks the object and reads its fields (into got: u is only
	 * written once the whole tail is known to be right) */
	if (!read_usage(&j, &got))
		return 0;
	js_ws(&j);
	if (j.p >= j.end || *j.p != '}')
		return 0;
	j.p++;
	js_ws(&j);
	if (j.p != j.end)
		return 0;
	*u = got;
	u->found = true;
	return 1;
}

bool usage_from_json(const char *body, size_t len, struct usage *u)
{
	struct jscan j = { body, body + len };

	usage_reset(u);
	if (len == 0)
		return false;
	switch (usage_at_tail(body, len, u)) {
	case 1:
		return true;
	case -1:
		return false;
	}
	usage_reset(u);
	js_members_take(&j, NULL, take_usage, u);
	return u->found;
}

void sse_scan_init(struct sse_scan *s, bool strip_usage)
{
	memset(s, 0, sizeof(*s));
	s->strip_usage = strip_usage;
	usage_reset(&s->usage);
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
			/* the whole line must be the object: anything after it is not JSON */
			if (js_members(&j, event_member, &ei) && (js_ws(&j), j.p == j.end) && ei.has_usage)
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

		/* a token a chunk: not the usage-only chunk, not the closing [DONE] */
		s->events += !drop && !(end >= 12 && (memcmp(ev, "data: [DONE]", 12) == 0 ||
		                                      memcmp(ev, "data:[DONE]", 11) == 0));
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

/* ---- content in a stream's leading events ------------------------------------------- */

struct content_info {
	bool free_shape;     /* a shape known to carry no content (role-only chunk, ping...) */
	bool content;
};

static bool span_is(const struct jscan *v, const char *lit)
{
	size_t n = strlen(lit);

	return (size_t)(v->end - v->p) == n && memcmp(v->p, lit, n) == 0;
}

/* A value that says something: a non-empty string, array or object, a number, true. */
static bool span_has_value(const struct jscan *v)
{
	return !(span_is(v, "null") || span_is(v, "\"\"") || span_is(v, "[]") ||
	         span_is(v, "{}") || span_is(v, "false"));
}

static void delta_member(void *arg, const char *k, size_t kn, struct jscan *v)
{
	struct content_info *ci = arg;

	/* role is the only member of OpenAI's first chunk that is not content */
	if (!key_is(k, kn, "role") && span_has_value(v))
		ci->content = true;
}

static void choice_member(void *arg, const char *k, size_t kn, struct jscan *v)
{
	struct content_info *ci = arg;
	struct jscan d = *v;

	if (key_is(k, kn, "delta")) {
		if (!js_members(&d, delta_member, ci))
			ci->content = true;
	} else if (key_is(k, kn, "finish_reason") || key_is(k, kn, "text") ||
	           key_is(k, kn, "message")) {
		if (span_has_value(v))
			ci->content = true;
	}
}

static void content_member(void *arg, const char *k, size_t kn, struct jscan *v)
{
	static const char *const free_types[] = {
		/* Anthropic's events before the first delta */
		"\"message_start\"", "\"ping\"", "\"content_block_start\"", "\"content_block_stop\"", NULL
	};
	struct content_info *ci = arg;

	if (key_is(k, kn, "choices") && v->p < v->end && *v->p == '[') {
		struct jscan j = { v->p + 1, v->end };

		ci->free_shape = true;
		js_ws(&j);
		while (j.p < j.end && *j.p != ']') {
			if (!js_members(&j, choice_member, ci)) {
				ci->content = true;
				return;
			}
			js_ws(&j);
			if (j.p < j.end && *j.p == ',') {
				j.p++;
				js_ws(&j);
			} else {
				break;
			}
		}
	} else if (key_is(k, kn, "type")) {
		size_t i;

		for (i = 0; free_types[i] && !span_is(v, free_types[i]); i++)
			;
		if (free_types[i])
			ci->free_shape = true;
		else
			ci->content = true;
	} else if (key_is(k, kn, "usage") || key_is(k, kn, "error")) {
		if (span_has_value(v))
			ci->content = true;
	}
}

/* Does one complete event carry content? Comments, pings and events with no data do not;
 * an OpenAI chunk whose deltas hold only a role, or an Anthropic message_start, ping or
 * content_block_start, do not; everything else does, anything unreadable included (the
 * gateway must not sit on what it does not understand). */
static bool event_has_content(const char *ev, size_t n)
{
	const char *p = ev, *end = ev + n;

	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		size_t ln = eol ? (size_t)(eol - p) : (size_t)(end - p);

		if (ln && p[ln - 1] == '\r')
			ln--;
		if (ln >= 5 && memcmp(p, "data:", 5) == 0) {
			struct content_info ci = { false, false };
			struct jscan j = { p + 5, p + ln };

			js_ws(&j);
			if (!js_members(&j, content_member, &ci) || (js_ws(&j), j.p != j.end) ||
			    ci.content || !ci.free_shape)
				return true;
		}
		p = eol ? eol + 1 : end;
	}
	return false;
}

bool sse_first_content(const char *buf, size_t len, size_t *from)
{
	size_t end;

	while (*from < len && (end = event_end(buf + *from, len - *from)) > 0) {
		if (event_has_content(buf + *from, end))
			return true;
		*from += end;
	}
	return false;
}
