/* Scans of one HTTP head line: is it printable ASCII, and where is its first colon. Every
 * line of every request head (reqcheck) and upstream answer head (h1resp) goes through
 * this; byte loops and a memchr per question cost ~100 instructions a line, this ~20.
 * 16 bytes a step with SSE2 (part of every x86-64), a 64-bit word a step elsewhere. Never
 * reads outside [s, s + n). */
#ifndef FG_BYTESCAN_H
#define FG_BYTESCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define BYTESCAN_ONES  0x0101010101010101ull
#define BYTESCAN_HIGHS 0x8080808080808080ull

/* Does the word hold a byte below 0x20, DEL, or a byte above ASCII? Exact (the borrow of
 * a subtraction can only run from a byte that is itself below 0x20, or DEL). */
static inline bool word_has_unprintable(uint64_t w)
{
	uint64_t d = w ^ (BYTESCAN_ONES * 0x7f);

	return (((w - BYTESCAN_ONES * 0x20) & ~w) | ((d - BYTESCAN_ONES) & ~d) | w) & BYTESCAN_HIGHS;
}

/* The high bit of each byte of w equal to c. Bytes above the first match may be marked
 * falsely (the borrow), the lowest mark is always right: read only the first one. */
static inline uint64_t word_eq(uint64_t w, unsigned char c)
{
	uint64_t x = w ^ (BYTESCAN_ONES * c);

	return (x - BYTESCAN_ONES) & ~x & BYTESCAN_HIGHS;
}

/* Inlined where used even when LTO sees several callers: a call costs as much as the scan
 * of a short line. */
#define BYTESCAN_INLINE static inline __attribute__((always_inline))

/* line_scan() a word at a time, for n >= 8 (and on a CPU without SSE2) */
BYTESCAN_INLINE bool line_scan_words(const char *s, size_t n, size_t *colon)
{
	size_t i = 0;
	bool bad = false;

	for (;;) {
		uint64_t w;

		/* the last step overlaps the one before rather than leaving a tail; the bytes
		 * seen twice hold no colon (or the first was found already) */
		if (i + 8 > n)
			i = n - 8;
		memcpy(&w, s + i, sizeof(w));
		bad |= word_has_unprintable(w);
		if (*colon == n) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
			uint64_t m = word_eq(w, ':');
			if (m)
				*colon = i + (size_t)__builtin_ctzll(m) / 8;
#else
			const char *c = memchr(s + i, ':', 8);
			if (c)
				*colon = (size_t)(c - s);
#endif
		}
		i += 8;
		if (i >= n)
			return !bad;
	}
}

/* true when s[0..n) is printable ASCII (0x20..0x7e) only; *colon is the index of the
 * first ':' (n when there is none). */
BYTESCAN_INLINE bool line_scan(const char *s, size_t n, size_t *colon)
{
	bool bad = false;

	*colon = n;
#ifdef __SSE2__
	if (n >= 16) {
		const __m128i below = _mm_set1_epi8(0x20), del = _mm_set1_epi8(0x7f);
		const __m128i col = _mm_set1_epi8(':');
		__m128i acc = _mm_setzero_si128();
		size_t i = 0;

		for (;;) {
			/* overlapping the step before, as in line_scan_words() */
			if (i + 16 > n)
				i = n - 16;
			__m128i x = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
			/* a signed compare: bytes above ASCII are negative, below 0x20 too */
			acc = _mm_or_si128(acc, _mm_or_si128(_mm_cmplt_epi8(x, below),
			                                     _mm_cmpeq_epi8(x, del)));
			if (*colon == n) {
				unsigned m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, col));
				if (m)
					*colon = i + (size_t)__builtin_ctz(m);
			}
			i += 16;
			if (i >= n)
				return _mm_movemask_epi8(acc) == 0;
		}
	}
#endif
	if (n >= 8)
		return line_scan_words(s, n, colon);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		bad |= c < 0x20 || c >= 0x7f;
		if (c == ':' && *colon == n)
			*colon = i;
	}
	return !bad;
}

/* Does s[0..n) hold byte a, b or c (pass one twice for two)? For strings going into a head
 * line, where strpbrk cost ~25 instructions a call. */
BYTESCAN_INLINE bool bytes_have(const char *s, size_t n, char a, char b, char c)
{
	size_t i = 0;

#ifdef __SSE2__
	if (n >= 16) {
		const __m128i va = _mm_set1_epi8(a), vb = _mm_set1_epi8(b), vc = _mm_set1_epi8(c);
		__m128i acc = _mm_setzero_si128();

		for (;;) {
			if (i + 16 > n)
				i = n - 16;   /* overlapping, as in line_scan() */
			__m128i x = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
			acc = _mm_or_si128(acc, _mm_or_si128(_mm_cmpeq_epi8(x, va),
			                                     _mm_or_si128(_mm_cmpeq_epi8(x, vb),
			                                                  _mm_cmpeq_epi8(x, vc))));
			i += 16;
			if (i >= n)
				return _mm_movemask_epi8(acc) != 0;
		}
	}
#endif
	if (n >= 8) {
		uint64_t m = 0;

		for (;;) {
			uint64_t w;

			if (i + 8 > n)
				i = n - 8;
			memcpy(&w, s + i, sizeof(w));
			/* a false mark needs a true one below it: nonzero means a match */
			m |= word_eq(w, (unsigned char)a) | word_eq(w, (unsigned char)b) |
			     word_eq(w, (unsigned char)c);
			i += 8;
			if (i >= n)
				return m != 0;
		}
	}
	for (; i < n; i++)
		if (s[i] == a || s[i] == b || s[i] == c)
			return true;
	return false;
}

#endif
