/* Spend-control limits on keys and users (DESIGN.md, Spend control): `kind:amount/window`,
 * e.g. `requests:100/min`, `tokens:1M/day`, `cost:25/month`. This module is the text of a
 * limit and the live counter of one; it reads no clock, does no I/O and allocates nothing
 * but error messages, so a test can drive it with a fake clock. `requests:N/min` is what
 * the old `--rpm N` becomes.
 *
 * Kinds count requests, tokens, or cost in integer nano-USD (1 USD = 1e9): money is never
 * a double here, and amounts are parsed from their text digit by digit.
 *
 * Ownership: the caller owns every struct (a counter lives inside its key or user); no
 * function keeps a pointer to one. There is no lock: calls on one counter must come from
 * one thread at a time. */
#ifndef FG_LIMIT_H
#define FG_LIMIT_H

#include <stddef.h>
#include <stdint.h>

enum limit_kind { LIMIT_REQUESTS, LIMIT_TOKENS, LIMIT_COST };
/* min and hour slide; day and month are calendar windows in UTC. */
enum limit_window { LIMIT_MIN, LIMIT_HOUR, LIMIT_DAY, LIMIT_MONTH };

struct limit {
	enum limit_kind kind;
	enum limit_window window;
	int64_t amount;         /* > 0: a count, or nano-USD for LIMIT_COST */
};

/* At most this many limits on one key or user. */
#define LIMITS_MAX 8
/* Room for any limit_format text, and for any limits_format list, with the NUL. */
#define LIMIT_TEXT_MAX 48
#define LIMITS_TEXT_MAX (LIMITS_MAX * LIMIT_TEXT_MAX)

/* Parse one limit: KIND:AMOUNT/WINDOW with no spaces.
 *   KIND    requests | tokens | cost
 *   AMOUNT  requests, tokens: digits, optionally with a fraction and a suffix k or K (1e3),
 *           M (1e6), B or G (1e9), as long as the result is whole: "100", "1M", "2.5k".
 *           cost: US dollars with at most 9 decimals (trailing zeros aside), no suffix:
 *           "25", "0.50". Always more than 0 and at most INT64_MAX (in nano-USD for cost).
 *   WINDOW  min | minute | hour | day | month
 * 0 with *l filled; or -1 with *l untouched and *err (if err is not NULL; the caller frees
 * it, any old message is freed first) naming the text and what is wrong with it. */
int limit_parse(const char *text, struct limit *l, char **err);

/* The canonical text of l into buf (n bytes; LIMIT_TEXT_MAX is always enough, a smaller
 * buf gets a truncated, NUL-terminated text): counts in plain digits ("tokens:1000000/day"),
 * cost as the shortest exact decimal ("cost:25/month", "cost:0.5/day"), the window as min,
 * hour, day or month. limit_parse gives back l from it. Returns buf. */
char *limit_format(const struct limit *l, char *buf, size_t n);

/* Add the limits of text, one limit or a comma-separated list of them (spaces around each
 * allowed), to set[0 .. *n). Call it once per --limit: the lists add up. 0, or -1 with
 * *err and set and *n unchanged (nothing of a bad list is added): a limit limit_parse
 * refuses, an empty item, more than LIMITS_MAX in all, or two with the same kind and
 * window (two on requests per minute could only mean a mistake). set has room for
 * LIMITS_MAX. */
int limits_parse(const char *text, struct limit *set, size_t *n, char **err);

/* set[0 .. n) as a comma-separated list of limit_format texts ("" for none) into buf
 * (size bytes; LIMITS_TEXT_MAX is always enough). limits_parse gives back the set from it.
 * Returns buf. */
char *limits_format(const struct limit *set, size_t n, char *buf, size_t size);

/* "requests", "tokens", "cost"; "min", "hour", "day", "month": as they appear in a limit's
 * text (and in the x-ratelimit-*-requests/-tokens header names). Static strings; "unknown"
 * for a value outside the enum. */
const char *limit_kind_name(enum limit_kind k);
const char *limit_window_name(enum limit_window w);

#endif
