/* Allocation and error-message helpers shared by the daemon's modules. Out of memory is
 * not a condition fastgated recovers from (a half-built route table or key record would be
 * worse than a restart by the supervisor), so the x* functions abort instead of returning
 * NULL. */
#ifndef FG_UTIL_H
#define FG_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

/* Memory kept for reuse instead of freed (proxy.c's spare requests) is poisoned under
 * AddressSanitizer, so a use after its owner finished is still reported as one. */
#if defined(__SANITIZE_ADDRESS__)
#define FG_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FG_ASAN 1
#endif
#endif
#ifdef FG_ASAN
#include <sanitizer/asan_interface.h>
#define MEM_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define MEM_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define MEM_POISON(p, n) ((void)(p), (void)(n))
#define MEM_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
/* NULL in, NULL out: for optional strings. */
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Make room for `need` bytes in a growable buffer (capacity doubling from `start`).
 * 0, or -1 with the buffer untouched when memory runs out: for request-path buffers, where
 * one failed request is better than an abort. */
int buf_grow(char **buf, size_t *cap, size_t need, size_t start);
/* Append n bytes at *len, growing as buf_grow does; 0, or -1 with nothing appended. */
int buf_append(char **buf, size_t *len, size_t *cap, const void *p, size_t n, size_t start);
/* Write n in decimal at out (room for 20 digits, no NUL); the number of digits. The
 * request path formats lengths with it: snprintf cost ~800 instructions a request. */
size_t fmt_dec(char *out, uint64_t n);
/* Money as an exact decimal of US dollars with nine places, from integer nano-dollars
 * (1 USD = 1e9): 123450 -> "0.000123450", -1500000000 -> "-1.500000000". Never through
 * a double. NUL-terminated at out, which has room for FMT_USD_MAX bytes; the length. */
#define FMT_USD_MAX 24
size_t fmt_usd_nano(char *out, int64_t nano);

/* A counter that one thread (its event loop) changes and any thread may read (metrics,
 * the drain at shutdown): relaxed loads and stores, which compile to plain moves, so the
 * writer pays nothing for a reader elsewhere and the reader sees a whole value. Never for
 * a counter two threads change. */
#define CTR_GET(c) __atomic_load_n(&(c), __ATOMIC_RELAXED)
#define CTR_ADD(c, n) __atomic_store_n(&(c), CTR_GET(c) + (n), __ATOMIC_RELAXED)

/* "name: value\r\n" at w, which has room for it (nl + vl + 4 bytes); where it ends. The
 * upstream's head (forward.c) and the client's answer head (http.c, relay.c) are written
 * with it. */
static inline char *put_header_line(char *w, const char *name, size_t nl, const char *value,
                                    size_t vl)
{
	memcpy(w, name, nl);
	w[nl] = ':';
	w[nl + 1] = ' ';
	memcpy(w + nl + 2, value, vl);
	w[nl + 2 + vl] = '\r';
	w[nl + 3 + vl] = '\n';
	return w + nl + vl + 4;
}

/* Is the header name (nl bytes, any case) the literal lit, written in lower case and
 * starting with a letter? For the fixed lists checked against every header of every
 * request and answer (forward.c, relay.c): the length and the first byte turn nearly every
 * other name away before any strncasecmp. The first byte's test is exact: with lit[0] a
 * lower-case letter, (c | 0x20) == lit[0] holds for that letter in either case only. */
#define HNAME_IS(name, nl, lit) hname_is((name), (nl), "" lit, sizeof(lit) - 1)
static inline int hname_is(const char *name, size_t nl, const char *lit, size_t ll)
{
	return nl == ll && ((unsigned char)name[0] | 0x20) == (unsigned char)lit[0] &&
	       strncasecmp(name + 1, lit + 1, ll - 1) == 0;
}

/* CLOCK_MONOTONIC in milliseconds: for deadlines and intervals that wall-clock steps must
 * not move. */
int64_t mono_ms(void);

/* A formatted, malloc'd string. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Replace *err (freed first) with a formatted message; does nothing when err is NULL. */
void set_err(char **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
