/* The price table (share/pricing.yaml, DESIGN.md Spend control) and the money arithmetic
 * that spend control bills with. Money is an integer count of nano-dollars (1 USD =
 * 1,000,000,000 nano) from the file's text to the audit row: no price, cost or multiplier
 * ever passes through a double, so a million requests add up to the cent the vendor bills.
 *
 * A price is per model name glob, in nano-USD per 1M tokens, for uncached input, cached
 * input (a cache read), cache writes and output. A model that no glob matches is unpriced:
 * pricing_find says so with NULL, and the caller must not bill it as $0.
 *
 * Ownership: pricing_load returns a table the caller frees with pricing_free; the gateway
 * keeps one and replaces it on reload. A `struct price` pointer is valid until that table
 * is freed: use it within one event, never keep it across one.
 *
 * Layer: state. */
#ifndef FG_PRICING_H
#define FG_PRICING_H

#include <stddef.h>
#include <stdint.h>

#include "errlist.h"

#define NANO_PER_USD 1000000000LL
#define PPM 1000000LL                  /* multipliers are parts per million: 1.25 -> 1250000 */

struct price {
	char *match;            /* fnmatch(3) glob over the model name, as written */
	int64_t input;          /* nano-USD per 1M tokens; -1 = not given */
	int64_t cached_input;   /* -1 = not given: billed as input */
	int64_t cache_write;    /* -1 = not given: billed as input */
	int64_t output;         /* -1 only if not given (input and output are required) */
	int line;
};

/* A table's version goes into every audit row and is copied into each request: one short
 * line, such as a date. */
#define PRICE_VERSION_MAX 31

struct price_table {
	struct price *prices;   /* in file order: the first match wins */
	size_t n;
	char *path;
	char *version;          /* recorded with every cost as its price version */
	char *source;           /* where the prices come from; NULL when not said */
	int64_t multiplier_ppm; /* `multiplier:` every price times this (PPM = 1x): the
	                         * global one, times the user's and the key's */
};

/* Read a price file. NULL on any problem, with one "FILE:LINE: message" per problem in
 * errs (or "FILE: message" when the file cannot be read); a table only when there is none. */
struct price_table *pricing_load(const char *path, struct errlist *errs);
void pricing_free(struct price_table *t);   /* NULL is fine */

/* The first entry whose glob matches the model name; NULL = unpriced (also when t is NULL
 * or model is NULL or empty). */
const struct price *pricing_find(const struct price_table *t, const char *model);

/* Token counts of one answer. prompt INCLUDES cached and cache_write (OpenAI's meaning of
 * prompt_tokens; usage.c normalises Anthropic's counts to it). */
struct usage_counts { int64_t prompt, cached, cache_write, completion; };

/* The cost in nano-USD of the counts at price p, times multiplier_ppm, rounded once at the
 * end, half up. Uncached prompt = prompt - cached - cache_write, never below 0; cached and
 * cache_write tokens are billed at their own price, or at input when the price gives none.
 * Negative counts, and a negative multiplier, count as 0. The sum is exact in unsigned
 * 128-bit arithmetic for every count and price an int64_t holds; a cost beyond INT64_MAX
 * nano (9.2 billion USD) is INT64_MAX. -1 when p or u is NULL: unpriced, never $0. */
int64_t pricing_cost(const struct price *p, const struct usage_counts *u, int64_t multiplier_ppm);

/* The same with several multipliers (ppm each: the global, the user's, the key's), their
 * product taken exactly and the cost rounded once, half up. -1 when p or u is NULL. */
int64_t pricing_cost_n(const struct price *p, const struct usage_counts *u,
                       const int64_t *mult_ppm, size_t n);
/* Parse a decimal USD amount ("25", "0.15", "2.5", "0.000000001") into nano: one or more
 * digits, then optionally '.' and one to nine digits; no sign, exponent or spaces. 0, or -1
 * on anything else or on more than 9,000,000,000 USD. */
int money_parse_usd(const char *s, int64_t *nano);

/* Parse a multiplier ("1", "1.25", "0.5"; the same form with at most 6 decimals) into ppm;
 * 0 when 0 < x <= 1000, -1 otherwise. */
int money_parse_multiplier(const char *s, int64_t *ppm);

/* Format nano-USD exactly as a decimal with 9 decimals ("0.000123450", "-1.500000000",
 * "25.000000000"), truncated to fit n like snprintf; returns buf. 32 bytes always suffice. */
char *money_format_usd(int64_t nano, char *buf, size_t n);

/* Combine two multipliers (each ppm) with one rounding: a*b/PPM, half up (half away from
 * zero for a negative product); saturates at the int64_t range. */
int64_t money_mul_ppm(int64_t a_ppm, int64_t b_ppm);

#endif
