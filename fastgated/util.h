/* Allocation and error-message helpers shared by the daemon's modules. Out of memory is
 * not a condition fastgated recovers from (a half-built route table or key record would be
 * worse than a restart by the supervisor), so the x* functions abort instead of returning
 * NULL. */
#ifndef FG_UTIL_H
#define FG_UTIL_H

#include <stddef.h>
#include <stdint.h>
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

/* A header name with its length, for lists that are checked against every header of
 * every request and answer: only names of the same length are compared. The list ends
 * with { NULL, 0 }. */
struct hname {
	const char *s;
	size_t len;
};
#define HNAME(lit) { lit, sizeof(lit) - 1 }
/* Is the name (nl bytes, any case) in the list? Inline: it runs for every header. */
static inline int hname_listed(const char *name, size_t nl, const struct hname *list)
{
	for (; list->s; list++)
		if (list->len == nl && strncasecmp(name, list->s, nl) == 0)
			return 1;
	return 0;
}

/* CLOCK_MONOTONIC in milliseconds: for deadlines and intervals that wall-clock steps must
 * not move. */
int64_t mono_ms(void);

/* A formatted, malloc'd string. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Replace *err (freed first) with a formatted message; does nothing when err is NULL. */
void set_err(char **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
