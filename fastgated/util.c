#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util.h"

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		abort();
	return p;
}

void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (!p)
		abort();
	return p;
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p)
		abort();
	return p;
}

char *xstrdup(const char *s)
{
	return s ? xstrndup(s, strlen(s)) : NULL;
}

char *xstrndup(const char *s, size_t n)
{
	char *p = strndup(s, n);
	if (!p)
		abort();
	return p;
}

int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		abort();
	va_end(ap);
	return s;
}

void set_err(char **err, const char *fmt, ...)
{
	va_list ap;
	char *msg = NULL;

	if (!err)
		return;
	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		abort();
	va_end(ap);
	free(*err);
	*err = msg;
}

int buf_grow(char **buf, size_t *cap, size_t need, size_t start)
{
	size_t n = *cap ? *cap : start;
	char *b;

	if (need <= *cap)
		return 0;
	while (n < need)
		n *= 2;
	if (!(b = realloc(*buf, n)))
		return -1;
	*buf = b;
	*cap = n;
	return 0;
}

int buf_append(char **buf, size_t *len, size_t *cap, const void *p, size_t n, size_t start)
{
	if (buf_grow(buf, cap, *len + n, start) < 0)
		return -1;
	memcpy(*buf + *len, p, n);
	*len += n;
	return 0;
}

size_t fmt_dec(char *out, uint64_t n)
{
	/* two digits a division: half the steps (x-ratelimit-* makes nine numbers a request) */
	static const char pairs[201] =
		"00010203040506070809101112131415161718192021222324252627282930313233343536373839"
		"40414243444546474849505152535455565758596061626364656667686970717273747576777879"
		"8081828384858687888990919293949596979899";
	static const uint64_t pow10[20] = {
		1ull, 10ull, 100ull, 1000ull, 10000ull, 100000ull, 1000000ull, 10000000ull,
		100000000ull, 1000000000ull, 10000000000ull, 100000000000ull, 1000000000000ull,
		10000000000000ull, 100000000000000ull, 1000000000000000ull, 10000000000000000ull,
		100000000000000000ull, 1000000000000000000ull, 10000000000000000000ull,
	};
	/* count the digits first and write them in place, from the last: a copy from a
	 * scratch buffer was a libc memcpy call per number. The count: log10 from the bit
	 * length (1233/4096 ~ log10(2)), one below or right, which the table settles. n|1 has
	 * the digits of n, and a bit length for 0 too. */
	uint64_t m = n | 1;
	size_t t = ((size_t)(64 - __builtin_clzll(m)) * 1233) >> 12;
	size_t k = t + (m >= pow10[t]);
	char *q = out + k;

	while (n >= 100) {
		q -= 2;
		memcpy(q, pairs + (n % 100) * 2, 2);
		n /= 100;
	}
	if (n >= 10) {
		q -= 2;
		memcpy(q, pairs + n * 2, 2);
	} else {
		*--q = (char)('0' + n);
	}
	return k;
}

size_t fmt_usd_nano(char *out, int64_t nano)
{
	/* the magnitude as unsigned, so INT64_MIN has one too */
	uint64_t mag = nano < 0 ? (uint64_t)0 - (uint64_t)nano : (uint64_t)nano;
	uint64_t frac = mag % 1000000000u;
	size_t n = 0;

	if (nano < 0)
		out[n++] = '-';
	n += fmt_dec(out + n, mag / 1000000000u);
	out[n++] = '.';
	for (int i = 8; i >= 0; i--, frac /= 10)
		out[n + (size_t)i] = (char)('0' + frac % 10);
	n += 9;
	out[n] = '\0';
	return n;
}
