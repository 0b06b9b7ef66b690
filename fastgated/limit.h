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
 * one thread at a time.
 *
 * Layer: base (pure, as cidr.c: the configuration file's auth_fail_limit is read with
 * limit_rate_parse). */
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

/* A rate of events in a short window, as fastgate.yaml's auth_fail_limit takes it. */
struct limit_rate {
	int64_t amount;   /* > 0 */
	int64_t per_s;    /* the window: 1, 60 or 3600 seconds */
};

/* Parse AMOUNT/UNIT with no spaces: AMOUNT as for a count limit ("20", "1k"), UNIT s,
 * sec, second, min, minute or hour: "20/min", "3/s". 0 with *r filled; or -1 with *r
 * untouched and *err (as for limit_parse) naming the text and what is wrong with it. */
int limit_rate_parse(const char *text, struct limit_rate *r, char **err);

/* "requests", "tokens", "cost"; "min", "hour", "day", "month": as they appear in a limit's
 * text (and in the x-ratelimit-*-requests/-tokens header names). Static strings; "unknown"
 * for a value outside the enum. */
const char *limit_kind_name(enum limit_kind k);
const char *limit_window_name(enum limit_window w);

/* The live counter of one limit.
 *
 * Time: every function takes now, Unix seconds (UTC, what time() returns); a time outside
 * 0 .. LIMIT_TIME_MAX (1970 to the end of 9999) is taken as the nearer end. A counter keeps
 * the largest now it has seen and takes an earlier one as that (a clock stepping back
 * counts as no time passed): usage cannot become young again or land before usage already
 * counted, and no wait comes out negative.
 *
 * Sliding windows (min, hour) keep usage in 60 buckets so that it leaves the window as it
 * ages, not all at once:
 *   min   one bucket per second. Usage counted at second s is in the window for now in
 *         [s, s + 59]: it leaves at s + 60.
 *   hour  one bucket per minute (minute m = s / 60). Usage counted at second s is in the
 *         window for now in [s, 60 * m + 3599]: it leaves at the start of the 60th minute
 *         after its own, 3541 to 3600 seconds after it was counted.
 * limit_window_start(now) is the first second whose usage still counts at now, so the usage
 * in the window is exactly what was counted (and adjusted) at seconds from it to now.
 *
 * Calendar windows (day, month) keep one count and the window's start: a day starts at
 * 00:00:00 UTC, a month on its 1st at 00:00:00 UTC (leap years by the Gregorian rule; no
 * leap seconds, as in Unix time). Usage counted in a window all leaves at its end.
 *
 * Counts saturate at INT64_MAX and never go below 0. A counter belongs to one limit: pass
 * the same l (same window) to every call; after a change of window, init it again. */
#define LIMIT_TIME_MAX 253402300799LL   /* 9999-12-31 23:59:59 UTC */
#define LIMIT_NEVER (-1)
#define LIMIT_BUCKETS 60

/* Fixed size (504 bytes), no pointers, nothing to free: a zeroed one is an empty counter
 * too. The fields are the module's. */
struct limit_counter {
	int64_t seen;                   /* the largest now seen */
	int64_t head;                   /* sliding: the unit (second or minute) of the newest
	                                 * bucket; calendar: the window's start */
	int64_t used;                   /* calendar: the usage counted in that window */
	int64_t bucket[LIMIT_BUCKETS];  /* calendar: bucket[0] is the window's end (0: not
	                                 * known yet); sliding: bucket[u % 60] is the usage of unit u, for
	                                 * u in (head - 60, head] */
};

/* An empty counter for l as of now. */
void limit_counter_init(struct limit_counter *c, const struct limit *l, int64_t now);

/* The usage in the window at now: reserved and settled, after what has aged out left. */
int64_t limit_used(struct limit_counter *c, const struct limit *l, int64_t now);

/* Would amount more fit now (usage + amount <= l->amount)? 0 if it would; else the exact
 * seconds (>= 1) until it would, if nothing else is counted or adjusted meanwhile: for a
 * sliding window the first second t at which the usage still in the window at t, plus
 * amount, is within the limit, minus now (what Retry-After should say); for a calendar
 * window the seconds to the window's end. LIMIT_NEVER if amount alone is more than the
 * limit: no wait helps. A negative amount counts as 0. Changes nothing. */
int64_t limit_wait(const struct limit_counter *c, const struct limit *l, int64_t now,
                   int64_t amount);

/* Count amount (a reservation) at now; a negative amount counts as 0. It does not check
 * the limit: ask limit_wait first. Returns the second it was counted at: now, or the
 * later time the counter had seen. Keep it: it is the `at` of limit_adjust. */
int64_t limit_add(struct limit_counter *c, const struct limit *l, int64_t now,
                  int64_t amount);

/* Change what was counted at second at (what limit_add returned) by delta: a settlement
 * (actual - reserved, either sign) or a release (-reserved). It lands where the
 * reservation did while that is still in the window: a sliding window's bucket of at, a
 * calendar window's count if at is in the current day or month. Otherwise it is dropped:
 * that usage has already left the window, and settling it now would charge (or refund)
 * the wrong window. A count never goes below 0. An at later than the counter's time is
 * taken as that time. */
void limit_adjust(struct limit_counter *c, const struct limit *l, int64_t at, int64_t now,
                  int64_t delta);

/* For x-ratelimit-reset-*: seconds from now until the oldest usage in a sliding window
 * leaves it (0 if none is counted), or until a calendar window ends (always >= 1). */
int64_t limit_reset_in(const struct limit_counter *c, const struct limit *l, int64_t now);
/* Seconds from now until all usage counted now has left the window, the counter back to
 * empty (0 if it is): OpenAI's meaning of x-ratelimit-reset-*. */
int64_t limit_clear_in(const struct limit_counter *c, const struct limit *l, int64_t now);

/* The first second whose usage counts in the window at now: for day and month the start of
 * the day or month containing now; for min now - 59; for hour the start of the minute 59
 * minutes before now's, between now - 3599 and now - 3540 (usage is kept per minute). Pure:
 * no counter, so no "largest now seen". */
int64_t limit_window_start(const struct limit *l, int64_t now);

/* A calendar window's count after a restart: used (negative as 0) for the window starting
 * at start, as persisted with limit_window_start and limit_used. 0 when loaded; -1, with
 * the count left as it was, when start is not the current window's start at now (a count
 * of a past day or month must not come back) or the window slides (its buckets are not
 * persisted). */
int limit_counter_load(struct limit_counter *c, const struct limit *l, int64_t start,
                       int64_t used, int64_t now);

/* The start of the month containing now (its 1st at 00:00:00 UTC), and of the month after;
 * from the days-from-civil arithmetic, not timegm (no locale or TZ state). Exposed for
 * tests. */
int64_t limit_month_start(int64_t now);
int64_t limit_next_month(int64_t now);

#endif
