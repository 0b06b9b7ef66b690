/* Spend-control limits (see limit.h): their text and their live counters. Pure state: no
 * clock, no I/O; only error messages are allocated. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "limit.h"
#include "util.h"

#define NANO_PER_USD 1000000000LL

static const char *const kind_names[] = { "requests", "tokens", "cost" };
static const char *const window_names[] = { "min", "hour", "day", "month" };

const char *limit_kind_name(enum limit_kind k)
{
	return (unsigned)k < sizeof(kind_names) / sizeof(kind_names[0]) ? kind_names[k] : "unknown";
}

const char *limit_window_name(enum limit_window w)
{
	return (unsigned)w < sizeof(window_names) / sizeof(window_names[0]) ? window_names[w]
	                                                                     : "unknown";
}

/* Is s[0 .. n) exactly the word w? */
static bool word_is(const char *s, size_t n, const char *w)
{
	return strlen(w) == n && memcmp(s, w, n) == 0;
}

/* a * 10^e, or -1 if that passes INT64_MAX (a >= 0). */
static int64_t scale10(int64_t a, int e)
{
	for (; e > 0; e--) {
		if (a > INT64_MAX / 10)
			return -1;
		a *= 10;
	}
	return a;
}

enum amount_error { AMOUNT_OK, AMOUNT_SYNTAX, AMOUNT_FRACTION, AMOUNT_TOO_LARGE, AMOUNT_ZERO };

/* The amount s[0 .. n) as an integer: digits, optionally '.' and more digits, then (when
 * suffixes is true) one of k K M B G; the value times 10^unit_exp must be whole. Parsed
 * from the digits, not through a double, so "0.1" dollars is exactly 100000000 nano-USD
 * and "9007199254740993" tokens is that number. Trailing zeros of the fraction say nothing,
 * so they are dropped before counting decimals (and before they could overflow). */
static enum amount_error parse_amount(const char *s, size_t n, bool suffixes, int unit_exp,
                                      int64_t *out)
{
	const char *int_p = s, *frac_p = NULL;
	size_t int_n = 0, frac_n = 0, i = 0;
	int exp = unit_exp;
	int64_t v = 0;

	while (i < n && s[i] >= '0' && s[i] <= '9')
		i++;
	int_n = i;
	if (int_n == 0)
		return AMOUNT_SYNTAX;
	if (i < n && s[i] == '.') {
		frac_p = s + ++i;
		while (i < n && s[i] >= '0' && s[i] <= '9')
			i++;
		frac_n = (size_t)(s + i - frac_p);
		if (frac_n == 0)
			return AMOUNT_SYNTAX;
	}
	if (suffixes && i + 1 == n) {
		switch (s[i]) {
		case 'k': case 'K': exp += 3; break;
		case 'M': exp += 6; break;
		case 'B': case 'G': exp += 9; break;
		default: return AMOUNT_SYNTAX;
		}
		i++;
	}
	if (i != n)
		return AMOUNT_SYNTAX;
	while (frac_n > 0 && frac_p[frac_n - 1] == '0')
		frac_n--;
	if (frac_n > (size_t)exp)
		return AMOUNT_FRACTION;
	for (size_t k = 0; k < int_n + frac_n; k++) {
		int d = (k < int_n ? int_p[k] : frac_p[k - int_n]) - '0';

		if (v > (INT64_MAX - d) / 10)
			return AMOUNT_TOO_LARGE;
		v = v * 10 + d;
	}
	v = scale10(v, exp - (int)frac_n);
	if (v < 0)
		return AMOUNT_TOO_LARGE;
	if (v == 0)
		return AMOUNT_ZERO;
	*out = v;
	return AMOUNT_OK;
}

/* One error path for every way a limit's text can be wrong, so that each message starts
 * the same: `limit "TEXT": ...`. */
int limit_parse(const char *text, struct limit *l, char **err)
{
	const char *colon, *slash, *amt, *win;
	size_t kind_n, amt_n, win_n;
	struct limit r;
	enum amount_error ae;
	int k;

	if (!text)
		text = "";
	colon = strchr(text, ':');
	if (!colon) {
		set_err(err, "limit \"%s\": expected KIND:AMOUNT/WINDOW, e.g. requests:100/min", text);
		return -1;
	}
	kind_n = (size_t)(colon - text);
	for (k = 0; k < 3 && !word_is(text, kind_n, kind_names[k]); k++)
		;
	if (k == 3) {
		set_err(err, "limit \"%s\": unknown kind \"%.*s\" (requests, tokens or cost)", text,
		        (int)kind_n, text);
		return -1;
	}
	r.kind = (enum limit_kind)k;
	amt = colon + 1;
	slash = strchr(amt, '/');
	if (!slash) {
		set_err(err, "limit \"%s\": no window (end it with /min, /hour, /day or /month)", text);
		return -1;
	}
	amt_n = (size_t)(slash - amt);
	win = slash + 1;
	win_n = strlen(win);
	if (word_is(win, win_n, "min") || word_is(win, win_n, "minute")) {
		r.window = LIMIT_MIN;
	} else if (word_is(win, win_n, "hour")) {
		r.window = LIMIT_HOUR;
	} else if (word_is(win, win_n, "day")) {
		r.window = LIMIT_DAY;
	} else if (word_is(win, win_n, "month")) {
		r.window = LIMIT_MONTH;
	} else {
		set_err(err, "limit \"%s\": unknown window \"%s\" (min, hour, day or month)", text, win);
		return -1;
	}
	ae = r.kind == LIMIT_COST ? parse_amount(amt, amt_n, false, 9, &r.amount)
	                          : parse_amount(amt, amt_n, true, 0, &r.amount);
	switch (ae) {
	case AMOUNT_OK:
		break;
	case AMOUNT_SYNTAX:
		if (r.kind == LIMIT_COST)
			set_err(err, "limit \"%s\": bad amount \"%.*s\" (US dollars, e.g. 25 or 0.50)",
			        text, (int)amt_n, amt);
		else
			set_err(err, "limit \"%s\": bad amount \"%.*s\" (a number, optionally with k, M "
			        "or B)", text, (int)amt_n, amt);
		return -1;
	case AMOUNT_FRACTION:
		if (r.kind == LIMIT_COST)
			set_err(err, "limit \"%s\": amount \"%.*s\" has more than 9 decimals (a "
			        "nano-dollar is the smallest)", text, (int)amt_n, amt);
		else
			set_err(err, "limit \"%s\": amount \"%.*s\" is not a whole number of %s", text,
			        (int)amt_n, amt, kind_names[r.kind]);
		return -1;
	case AMOUNT_TOO_LARGE:
		set_err(err, "limit \"%s\": amount \"%.*s\" is too large (at most %s)", text,
		        (int)amt_n, amt, r.kind == LIMIT_COST ? "9223372036.854775807" :
		        "9223372036854775807");
		return -1;
	case AMOUNT_ZERO:
		set_err(err, "limit \"%s\": the amount must be more than 0 (to refuse everything, "
		        "suspend the key or user instead)", text);
		return -1;
	}
	*l = r;
	return 0;
}

/* The amount's parser is the limits' own, so "1k" means the same in both places. */
int limit_rate_parse(const char *text, struct limit_rate *r, char **err)
{
	static const struct { const char *word; int64_t s; } units[] = {
		{ "s", 1 }, { "sec", 1 }, { "second", 1 }, { "min", 60 }, { "minute", 60 },
		{ "hour", 3600 },
	};
	const char *slash, *unit;
	struct limit_rate v = { 0, 0 };
	size_t amt_n, unit_n;

	if (!text)
		text = "";
	slash = strchr(text, '/');
	if (!slash) {
		set_err(err, "rate \"%s\": expected AMOUNT/UNIT, e.g. 20/min (or off)", text);
		return -1;
	}
	amt_n = (size_t)(slash - text);
	unit = slash + 1;
	unit_n = strlen(unit);
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (word_is(unit, unit_n, units[i].word))
			v.per_s = units[i].s;
	if (!v.per_s) {
		set_err(err, "rate \"%s\": unknown unit \"%s\" (s, min or hour)", text, unit);
		return -1;
	}
	switch (parse_amount(text, amt_n, true, 0, &v.amount)) {
	case AMOUNT_OK:
		break;
	case AMOUNT_ZERO:
		set_err(err, "rate \"%s\": the amount must be more than 0 (to turn it off, say "
		        "off)", text);
		return -1;
	case AMOUNT_TOO_LARGE:
		set_err(err, "rate \"%s\": amount \"%.*s\" is too large", text, (int)amt_n, text);
		return -1;
	default:
		set_err(err, "rate \"%s\": bad amount \"%.*s\" (a whole number, optionally with "
		        "k, M or B)", text, (int)amt_n, text);
		return -1;
	}
	*r = v;
	return 0;
}

char *limit_format(const struct limit *l, char *buf, size_t n)
{
	const char *kind = limit_kind_name(l->kind), *win = limit_window_name(l->window);

	if (n == 0)
		return buf;
	if (l->kind == LIMIT_COST && l->amount % NANO_PER_USD != 0) {
		char frac[9];
		int64_t f = l->amount % NANO_PER_USD;
		int len = 9;

		for (int i = 8; i >= 0; i--, f /= 10)
			frac[i] = (char)('0' + f % 10);
		while (frac[len - 1] == '0')
			len--;
		snprintf(buf, n, "%s:%lld.%.*s/%s", kind, (long long)(l->amount / NANO_PER_USD), len,
		         frac, win);
	} else if (l->kind == LIMIT_COST) {
		snprintf(buf, n, "%s:%lld/%s", kind, (long long)(l->amount / NANO_PER_USD), win);
	} else {
		snprintf(buf, n, "%s:%lld/%s", kind, (long long)l->amount, win);
	}
	return buf;
}

/* A list is checked whole before anything is added, so a mistake in its third item does not
 * leave the first two in: the caller can report it and keep the limits it had. */
int limits_parse(const char *text, struct limit *set, size_t *n, char **err)
{
	struct limit all[LIMITS_MAX];
	size_t have = *n;
	const char *p = text ? text : "";
	char item[256];

	if (have > LIMITS_MAX) {
		set_err(err, "limits: %zu given, at most %d on a key or user", have, LIMITS_MAX);
		return -1;
	}
	memcpy(all, set, have * sizeof(all[0]));
	for (;;) {
		const char *start, *end;
		size_t len;
		struct limit l;

		while (*p == ' ' || *p == '\t')
			p++;
		start = p;
		while (*p && *p != ',')
			p++;
		end = p;
		while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		len = (size_t)(end - start);
		if (len == 0) {
			set_err(err, "limits \"%s\": an empty limit (write KIND:AMOUNT/WINDOW, e.g. "
			        "requests:100/min, separated by commas)", text ? text : "");
			return -1;
		}
		if (len >= sizeof(item)) {
			set_err(err, "limit \"%.*s...\": too long", 40, start);
			return -1;
		}
		memcpy(item, start, len);
		item[len] = '\0';
		if (limit_parse(item, &l, err) < 0)
			return -1;
		for (size_t i = 0; i < have; i++) {
			if (all[i].kind == l.kind && all[i].window == l.window) {
				char old[LIMIT_TEXT_MAX];

				set_err(err, "limit \"%s\": there is already a limit on %s per %s (%s); "
				        "give each kind and window once", item, kind_names[l.kind],
				        window_names[l.window], limit_format(&all[i], old, sizeof(old)));
				return -1;
			}
		}
		if (have == LIMITS_MAX) {
			set_err(err, "limit \"%s\": too many limits (at most %d on a key or user)", item,
			        LIMITS_MAX);
			return -1;
		}
		all[have++] = l;
		if (!*p)
			break;
		p++;
	}
	memcpy(set, all, have * sizeof(all[0]));
	*n = have;
	return 0;
}

char *limits_format(const struct limit *set, size_t n, char *buf, size_t size)
{
	size_t used = 0;

	if (size == 0)
		return buf;
	buf[0] = '\0';
	for (size_t i = 0; i < n && used < size; i++) {
		char one[LIMIT_TEXT_MAX];
		int w = snprintf(buf + used, size - used, "%s%s", i ? "," : "",
		                 limit_format(&set[i], one, sizeof(one)));

		if (w < 0)
			break;
		used += (size_t)w;
	}
	return buf;
}

/* --- counters --- */

#define DAY_S 86400

/* now inside the range the calendar arithmetic and the buckets are made for: no overflow
 * and no negative unit anywhere below. */
static int64_t clamp_time(int64_t t)
{
	return t < 0 ? 0 : t > LIMIT_TIME_MAX ? LIMIT_TIME_MAX : t;
}

/* a + b for counts (a >= 0): at most INT64_MAX, at least 0. */
static int64_t count_add(int64_t a, int64_t b)
{
	if (b > 0 && a > INT64_MAX - b)
		return INT64_MAX;
	a += b;
	return a < 0 ? 0 : a;
}

/* Would amount more fit under limit with used counted? Written so that nothing overflows. */
static bool fits(int64_t used, int64_t amount, int64_t limit)
{
	return used <= limit && amount <= limit - used;
}

/* Seconds per bucket of a sliding window; 0 for a calendar one. */
static int64_t unit_s(const struct limit *l)
{
	return l->window == LIMIT_MIN ? 1 : l->window == LIMIT_HOUR ? 60 : 0;
}

/* The time a call acts at: now, unless the counter has seen a later one. */
static int64_t acting_time(const struct limit_counter *c, int64_t now)
{
	now = clamp_time(now);
	return now > c->seen ? now : c->seen;
}

/* Howard Hinnant's days_from_civil: days since 1970-01-01 of y-m-d in the proleptic
 * Gregorian calendar. Years are counted from March so that the leap day is the last day of
 * a year and month lengths repeat in a 5-month pattern ((153 * mp + 2) / 5). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

/* Its inverse, the year and month only. */
static void civil_from_days(int64_t z, int64_t *y, int *m)
{
	int64_t era, doe, yoe, doy, mp;

	z += 719468;
	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = z - era * 146097;
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	*m = (int)(mp < 10 ? mp + 3 : mp - 9);
	*y = yoe + era * 400 + (*m <= 2);
}

int64_t limit_month_start(int64_t now)
{
	int64_t y;
	int m;

	civil_from_days(clamp_time(now) / DAY_S, &y, &m);
	return days_from_civil(y, m, 1) * DAY_S;
}

int64_t limit_next_month(int64_t now)
{
	int64_t y;
	int m;

	civil_from_days(clamp_time(now) / DAY_S, &y, &m);
	return m == 12 ? days_from_civil(y + 1, 1, 1) * DAY_S : days_from_civil(y, m + 1, 1) * DAY_S;
}

int64_t limit_window_start(const struct limit *l, int64_t now)
{
	now = clamp_time(now);
	switch (l->window) {
	case LIMIT_MIN:
		return now - (LIMIT_BUCKETS - 1);
	case LIMIT_HOUR:
		return (now / 60 - (LIMIT_BUCKETS - 1)) * 60;
	case LIMIT_DAY:
		return now - now % DAY_S;
	case LIMIT_MONTH:
		break;
	}
	return limit_month_start(now);
}

/* The end of the calendar window containing t: the first second of the next one. */
static int64_t calendar_end(const struct limit *l, int64_t t)
{
	return l->window == LIMIT_DAY ? t - t % DAY_S + DAY_S : limit_next_month(t);
}

/* A calendar counter keeps its window's end in bucket[0] (its buckets are otherwise
 * unused), so that a call within the window needs no calendar arithmetic: a month's is
 * a hundred instructions, and every request makes several calls. */
#define CAL_END(c) ((c)->bucket[0])

static bool in_window(const struct limit_counter *c, int64_t t)
{
	return t >= c->head && t < CAL_END(c);
}

/* Move the counter to the time of this call and return it: sliding buckets of units that
 * have left the window are emptied for reuse, a calendar count of a past window is
 * dropped. The only place time moves forward. */
static int64_t advance(struct limit_counter *c, const struct limit *l, int64_t now)
{
	int64_t t = acting_time(c, now), unit = unit_s(l);

	c->seen = t;
	if (unit) {
		int64_t u = t / unit;

		/* u < head only if the counter was made for another window: start afresh */
		if (u - c->head >= LIMIT_BUCKETS || u < c->head) {
			memset(c->bucket, 0, sizeof(c->bucket));
		} else {
			for (int64_t k = c->head + 1; k <= u; k++)
				c->bucket[k % LIMIT_BUCKETS] = 0;
		}
		c->head = u;
	} else if (!in_window(c, t)) {
		int64_t start = limit_window_start(l, t);

		if (start != c->head)
			c->used = 0;
		c->head = start;
		CAL_END(c) = calendar_end(l, t);
	}
	return t;
}

/* The lowest unit of a sliding window's buckets that is still in the window at t (the
 * newest is c->head): the window at t holds units (t / unit - 60, t / unit], the ring
 * (head - 60, head], and no unit is below 0. */
static int64_t oldest_unit(const struct limit_counter *c, const struct limit *l, int64_t t)
{
	int64_t lo = t / unit_s(l) - (LIMIT_BUCKETS - 1);

	if (lo < c->head - (LIMIT_BUCKETS - 1))
		lo = c->head - (LIMIT_BUCKETS - 1);
	return lo < 0 ? 0 : lo;
}

/* The usage in the window at t (t >= c->seen), reading only. */
static int64_t used_at(const struct limit_counter *c, const struct limit *l, int64_t t)
{
	int64_t sum = 0;

	if (!unit_s(l))
		return in_window(c, t) ? c->used : 0;
	if (t / unit_s(l) == c->head) {
		/* the usual case (the counter was just advanced): the window is the whole ring.
		 * Counts are >= 0, so the sum saturates exactly when an add overflows. */
		for (int i = 0; i < LIMIT_BUCKETS; i++)
			if (__builtin_add_overflow(sum, c->bucket[i], &sum))
				return INT64_MAX;
		return sum;
	}
	for (int64_t u = oldest_unit(c, l, t); u <= c->head; u++)
		sum = count_add(sum, c->bucket[u % LIMIT_BUCKETS]);
	return sum;
}

void limit_counter_init(struct limit_counter *c, const struct limit *l, int64_t now)
{
	memset(c, 0, sizeof(*c));
	c->seen = clamp_time(now);
	c->head = unit_s(l) ? c->seen / unit_s(l) : limit_window_start(l, c->seen);
	if (!unit_s(l))
		CAL_END(c) = calendar_end(l, c->seen);
}

int64_t limit_used(struct limit_counter *c, const struct limit *l, int64_t now)
{
	return used_at(c, l, advance(c, l, now));
}

/* For a sliding window, usage only leaves as time passes, so the answer is the first
 * bucket (oldest first) whose leaving brings the rest within reach. The sums of the newer
 * buckets are made newest first: a saturated sum then stays an upper bound, where
 * subtracting from a saturated total would not. */
int64_t limit_wait(const struct limit_counter *c, const struct limit *l, int64_t now,
                   int64_t amount)
{
	int64_t t = acting_time(c, now), unit = unit_s(l), lo, newer[LIMIT_BUCKETS], acc = 0;
	int n;

	if (amount < 0)
		amount = 0;
	if (fits(used_at(c, l, t), amount, l->amount))
		return 0;
	if (amount > l->amount)
		return LIMIT_NEVER;
	if (!unit)
		return (in_window(c, t) ? CAL_END(c) : calendar_end(l, t)) - t;
	lo = oldest_unit(c, l, t);
	n = (int)(c->head - lo + 1);
	for (int i = n - 1; i >= 0; i--) {
		newer[i] = acc;
		acc = count_add(acc, c->bucket[(lo + i) % LIMIT_BUCKETS]);
	}
	/* bucket lo + i leaves at the start of unit lo + i + 60, which is after t */
	for (int i = 0; i < n; i++)
		if (fits(newer[i], amount, l->amount))
			return (lo + i + LIMIT_BUCKETS) * unit - t;
	return LIMIT_NEVER; /* not reached: with every bucket gone, amount <= limit fits */
}

int64_t limit_add(struct limit_counter *c, const struct limit *l, int64_t now,
                  int64_t amount)
{
	int64_t t = advance(c, l, now);

	if (amount > 0) {
		int64_t *count = unit_s(l) ? &c->bucket[c->head % LIMIT_BUCKETS] : &c->used;

		*count = count_add(*count, amount);
	}
	return t;
}

void limit_adjust(struct limit_counter *c, const struct limit *l, int64_t at, int64_t now,
                  int64_t delta)
{
	int64_t t = advance(c, l, now), unit = unit_s(l);

	at = clamp_time(at);
	if (at > t)
		at = t;
	if (unit) {
		int64_t u = at / unit;

		/* advance made head t's unit, so the ring is exactly the window */
		if (u > c->head - LIMIT_BUCKETS)
			c->bucket[u % LIMIT_BUCKETS] = count_add(c->bucket[u % LIMIT_BUCKETS], delta);
	} else if (in_window(c, at)) {
		c->used = count_add(c->used, delta);
	}
}

int64_t limit_reset_in(const struct limit_counter *c, const struct limit *l, int64_t now)
{
	int64_t t = acting_time(c, now), unit = unit_s(l);

	if (!unit)
		return (in_window(c, t) ? CAL_END(c) : calendar_end(l, t)) - t;
	for (int64_t u = oldest_unit(c, l, t); u <= c->head; u++)
		if (c->bucket[u % LIMIT_BUCKETS] > 0)
			return (u + LIMIT_BUCKETS) * unit - t;
	return 0;
}

int64_t limit_clear_in(const struct limit_counter *c, const struct limit *l, int64_t now)
{
	int64_t t = acting_time(c, now), unit = unit_s(l);

	if (!unit)
		return used_at(c, l, t) > 0 ? CAL_END(c) - t : 0;
	for (int64_t u = c->head; u >= oldest_unit(c, l, t); u--)
		if (c->bucket[u % LIMIT_BUCKETS] > 0)
			return (u + LIMIT_BUCKETS) * unit - t;
	return 0;
}

int limit_counter_load(struct limit_counter *c, const struct limit *l, int64_t start,
                       int64_t used, int64_t now)
{
	if (unit_s(l))
		return -1;
	advance(c, l, now);
	if (start != c->head)
		return -1;
	c->used = used > 0 ? used : 0;
	return 0;
}
