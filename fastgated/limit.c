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
