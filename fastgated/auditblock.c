/* The audit block encoder; see auditblock.h for the format. It runs on the audit writer
 * once per row, so it formats numbers itself (snprintf of a double costs more than the
 * rest of a row) and copies strings in runs between the bytes JSON needs escaped. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "auditblock.h"
#include "util.h"

/* The buffer always has SPARE bytes free past what a write asked for, more than all the
 * fixed-size values of a row take together (brackets, 33 commas, at most 22 numbers of
 * 21 bytes, the nulls): so those are written without a check, and only strings, whose
 * length is not known in advance, reserve room. Checking each value cost more than
 * writing it (issue #21). */
#define SPARE 1024

static void __attribute__((noinline)) grow(struct ablock *b, size_t more)
{
	size_t cap = b->cap ? b->cap : 4096;

	while (b->len + more + SPARE + 2 > cap)
		cap *= 2;
	b->s = xrealloc(b->s, cap);
	b->cap = cap;
}

/* Room for `more` bytes and SPARE after them (and the closing bracket and NUL of
 * ablock_text). */
static inline void reserve(struct ablock *b, size_t more)
{
	if (b->len + more + SPARE + 2 > b->cap)
		grow(b, more);
}

/* Writes within the reserve. */
static inline void put1(struct ablock *b, char c)
{
	b->s[b->len++] = c;
}

static inline void put(struct ablock *b, const char *p, size_t n)
{
	memcpy(b->s + b->len, p, n);
	b->len += n;
}

static void put_null(struct ablock *b)
{
	put(b, "null", 4);
}

static void put_int(struct ablock *b, int64_t v)
{
	uint64_t mag = (uint64_t)v;

	if (v < 0) {
		put1(b, '-');
		mag = 0 - mag;            /* INT64_MIN too */
	}
	if (mag < 10)                 /* flags, counts of none: most of a row's numbers */
		put1(b, (char)('0' + mag));
	else
		b->len += fmt_dec(b->s + b->len, mag);
}

/* v unknown (below `unknown_below`) is null, as the row table's NULL. */
static void put_int_or_null(struct ablock *b, int64_t v, int64_t unknown_below)
{
	if (v < unknown_below)
		put_null(b);
	else
		put_int(b, v);
}

static const double scale[] = { 1, 10, 100, 1e3, 1e4, 1e5, 1e6 };

/* v in units of 10^-places, rounded (half away from 0); false when not finite or beyond
 * what an int64 holds in those units (llround's result would be unspecified). */
static bool to_units(double v, int places, int64_t *u)
{
	double x = v * scale[places];

	if (!isfinite(x) || fabs(x) >= 9.0e18)
		return false;
	*u = llround(x);
	return true;
}

/* u units of 10^-places (3 or 6) with the point and every decimal, so that SQLite reads a
 * REAL back as the row table held one. */
static void put_units(struct ablock *b, int64_t u, int places)
{
	static const uint64_t unit[] = { 1, 10, 100, 1000, 10000, 100000, 1000000 };
	char *p = b->s + b->len;
	uint64_t mag = (uint64_t)u, whole, frac;

	if (u < 0) {                  /* below 0 only: -0.0004 ms is 0 units, "0.000" */
		*p++ = '-';
		mag = 0 - mag;
	}
	whole = mag / unit[places];
	frac = mag % unit[places];
	p += fmt_dec(p, whole);
	*p++ = '.';
	for (int i = places - 1; i >= 0; i--, frac /= 10)
		p[i] = (char)('0' + frac % 10);
	p += places;
	b->len = (size_t)(p - b->s);
}

/* v with `places` decimals; not finite, or beyond what an int64 holds in those units:
 * null. */
static void put_fixed(struct ablock *b, double v, int places)
{
	int64_t u;

	if (to_units(v, places, &u))
		put_units(b, u, places);
	else
		put_null(b);
}

/* Which bytes a JSON string cannot hold as they are: 1 = escape (the NUL ends the
 * string, and is looked for only among these). */
static const unsigned char needs_escape[256] = {
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	['"'] = 1, ['\\'] = 1,
};

/* Whether any of the 8 bytes in w needs escaping: below 0x20, a quote or a backslash
 * (the classic "has a byte less than n" and "has a zero byte" word tests). */
static inline bool word_needs_escape(uint64_t w)
{
	const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
	uint64_t q = w ^ (ones * '"'), bs = w ^ (ones * '\\');

	return (((w - ones * 0x20) | (q - ones) | (bs - ones)) & ~w & highs) != 0;
}

/* Copy from p the run of bytes that need no escaping, end at most, to d; the ends of both.
 * 16 bytes a step with SSE2 (stored before they are looked at: the SPARE past the reserve
 * takes the bytes past the run), then 8 at a time, then bytes: the strings of a row are
 * mostly short, and a memcpy call for each cost more than the copy. */
static const unsigned char *copy_plain(const unsigned char *p, const unsigned char *end,
                                       char **dp)
{
	char *d = *dp;
	uint64_t w;

#ifdef __SSE2__
	const __m128i max_ctl = _mm_set1_epi8(0x1f), quote = _mm_set1_epi8('"'),
	              bslash = _mm_set1_epi8('\\');

	while (end - p >= 16) {
		__m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
		/* unsigned x <= 0x1f: the maximum of x and 0x1f is 0x1f */
		__m128i esc = _mm_or_si128(_mm_cmpeq_epi8(_mm_max_epu8(x, max_ctl), max_ctl),
		                           _mm_or_si128(_mm_cmpeq_epi8(x, quote),
		                                        _mm_cmpeq_epi8(x, bslash)));
		unsigned m = (unsigned)_mm_movemask_epi8(esc);

		_mm_storeu_si128((__m128i *)(void *)d, x);
		if (m) {
			unsigned k = (unsigned)__builtin_ctz(m);

			*dp = d + k;
			return p + k;
		}
		p += 16;
		d += 16;
	}
#endif
	while (end - p >= 8) {
		memcpy(&w, p, 8);
		if (word_needs_escape(w))
			break;
		memcpy(d, &w, 8);
		p += 8;
		d += 8;
	}
	while (p < end && !needs_escape[*p])
		*d++ = (char)*p++;
	*dp = d;
	return p;
}

static void put_str(struct ablock *b, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)s, *end;
	char *d;

	if (!s) {
		put_null(b);
		return;
	}
	end = p + strlen(s);
	put1(b, '"');
	for (;;) {
		reserve(b, (size_t)(end - p) + 6);   /* the rest as it is, and an escape */
		d = b->s + b->len;
		p = copy_plain(p, end, &d);
		b->len = (size_t)(d - b->s);
		if (p == end)
			break;
		switch (*p) {
		case '"': put(b, "\\\"", 2); break;
		case '\\': put(b, "\\\\", 2); break;
		case '\n': put(b, "\\n", 2); break;
		case '\r': put(b, "\\r", 2); break;
		case '\t': put(b, "\\t", 2); break;
		default: {
			char u[6] = { '\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15] };
			put(b, u, sizeof(u));
		}
		}
		p++;
	}
	put1(b, '"');
}

static void comma(struct ablock *b)
{
	put1(b, ',');
}

/* started_at in microseconds as a block stores it: never null (the row table's column is
 * NOT NULL), so a time that is none (not finite, or too far out for an int64 of
 * microseconds) is 0. */
static int64_t time_us(double t)
{
	int64_t us;

	return to_units(t, 6, &us) ? us : 0;
}

double ablock_time(double t)
{
	return (double)time_us(t) / 1e6;
}

void ablock_reset(struct ablock *b)
{
	b->len = 0;
	b->n = 0;
	b->first = b->last = 0;
	reserve(b, 0);
	put1(b, '[');
}

void ablock_add(struct ablock *b, const struct audit_record *r)
{
	int64_t us = time_us(r->started_at);
	double t = (double)us / 1e6;      /* ablock_time: first and last are what is written */

	if (b->len == 0)
		ablock_reset(b);
	reserve(b, 0);                    /* for the fixed-size values up to the first string */
	if (b->n == 0 || t < b->first)
		b->first = t;
	if (b->n == 0 || t > b->last)
		b->last = t;
	if (b->n++)
		comma(b);
	/* enum audit_field order; each value as bind_record put it in the row table */
	put1(b, '[');
	put_str(b, r->request_id); comma(b);
	put_units(b, us, 6); comma(b);
	put_int_or_null(b, r->key_id, 1); comma(b);
	put_str(b, r->key_name); comma(b);
	put_str(b, r->client_ip); comma(b);
	put_str(b, r->method); comma(b);
	put_str(b, r->path); comma(b);
	put_str(b, r->route); comma(b);
	put_str(b, r->upstream); comma(b);
	put_int(b, r->status); comma(b);
	put_fixed(b, r->latency_ms, 3); comma(b);
	if (r->ttfb_ms < 0)
		put_null(b);
	else
		put_fixed(b, r->ttfb_ms, 3);
	comma(b);
	put_int(b, r->is_stream ? 1 : 0); comma(b);
	put_int(b, r->chunks); comma(b);
	put_int(b, r->bytes_in); comma(b);
	put_int(b, r->bytes_out); comma(b);
	put_str(b, r->model); comma(b);
	put_int_or_null(b, r->prompt_tokens, 0); comma(b);
	put_int_or_null(b, r->completion_tokens, 0); comma(b);
	put_str(b, r->error); comma(b);
	put_int(b, r->retries); comma(b);
	put_str(b, r->attempts); comma(b);
	put_int_or_null(b, r->cached_tokens, 0); comma(b);
	put_int_or_null(b, r->cache_write_tokens, 0); comma(b);
	put_int_or_null(b, r->reasoning_tokens, 0); comma(b);
	put_str(b, r->upstream_request_id); comma(b);
	put_int_or_null(b, r->user_id, 1); comma(b);
	put_int_or_null(b, r->cost_nano, 0); comma(b);
	put_str(b, r->price_version); comma(b);
	put_int(b, r->estimated ? 1 : 0); comma(b);
	put_int(b, r->billed ? 1 : 0); comma(b);
	put_int(b, r->unpriced ? 1 : 0); comma(b);
	put_str(b, r->request_body); comma(b);
	put_str(b, r->response_body);
	put1(b, ']');
}

const char *ablock_text(struct ablock *b, size_t *len)
{
	if (b->len == 0)
		ablock_reset(b);
	/* reserve() always leaves two bytes: the bracket and the NUL, not counted in len */
	b->s[b->len] = ']';
	b->s[b->len + 1] = '\0';
	*len = b->len + 1;
	return b->s;
}

void ablock_free(struct ablock *b)
{
	free(b->s);
	memset(b, 0, sizeof(*b));
}
