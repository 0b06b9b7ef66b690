/* The price table and money arithmetic; see pricing.h. */
#include <fnmatch.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "pricing.h"
#include "util.h"
#include "yamlfile.h"

#define PRICES_MAX      10000
#define VERSION_MAX     PRICE_VERSION_MAX
#define USD_MAX         9000000000LL

typedef unsigned __int128 u128;

/* ---- money ---- */

/* A decimal with at most max_dec decimals, as an integer count of 10^-max_dec units, at
 * most max. Digits, then optionally '.' and one or more digits: nothing else, so "1e3",
 * " 1", "+1", "1." and ".5" are refused rather than read in some surprising way. */
static int parse_fixed(const char *s, int max_dec, uint64_t max, int64_t *out)
{
	uint64_t scale = 1, whole = 0, frac = 0;
	int nd = 0;

	for (int i = 0; i < max_dec; i++)
		scale *= 10;
	if (!s || *s < '0' || *s > '9')
		return -1;
	for (; *s >= '0' && *s <= '9'; s++) {
		whole = whole * 10 + (uint64_t)(*s - '0');
		if (whole > max / scale)   /* also keeps whole * 10 from overflowing */
			return -1;
	}
	if (*s == '.') {
		s++;
		for (; *s >= '0' && *s <= '9'; s++) {
			if (++nd > max_dec)
				return -1;
			frac = frac * 10 + (uint64_t)(*s - '0');
		}
		if (nd == 0)
			return -1;
	}
	if (*s)
		return -1;
	for (int i = nd; i < max_dec; i++)
		frac *= 10;
	if (whole * scale + frac > max)
		return -1;
	*out = (int64_t)(whole * scale + frac);
	return 0;
}

int money_parse_usd(const char *s, int64_t *nano)
{
	return parse_fixed(s, 9, (uint64_t)USD_MAX * NANO_PER_USD, nano);
}

int money_parse_multiplier(const char *s, int64_t *ppm)
{
	int64_t v;

	if (parse_fixed(s, 6, 1000 * PPM, &v) < 0 || v == 0)
		return -1;
	*ppm = v;
	return 0;
}

char *money_format_usd(int64_t nano, char *buf, size_t n)
{
	char text[FMT_USD_MAX];

	fmt_usd_nano(text, nano);   /* util.c's, which the audit writer uses too */
	snprintf(buf, n, "%s", text);
	return buf;
}

int64_t money_mul_ppm(int64_t a_ppm, int64_t b_ppm)
{
	__int128 p = (__int128)a_ppm * b_ppm;   /* at most 2^126 in magnitude */
	__int128 q = p >= 0 ? (p + PPM / 2) / PPM : -((-p + PPM / 2) / PPM);

	if (q > INT64_MAX)
		return INT64_MAX;
	if (q < INT64_MIN)
		return INT64_MIN;
	return (int64_t)q;
}

static uint64_t count_of(int64_t c)
{
	return c > 0 ? (uint64_t)c : 0;
}

/* A price not given is billed as the fallback (input), and a price with none as 0. */
static uint64_t rate_of(int64_t r, int64_t fallback)
{
	if (r >= 0)
		return (uint64_t)r;
	return fallback >= 0 ? (uint64_t)fallback : 0;
}

/* Each count times its rate: nano-USD x tokens per 1M tokens. */
static u128 rated_sum(const struct price *p, const struct usage_counts *u)
{
	u128 prompt, cached, cache_write, uncached;

	prompt = count_of(u->prompt);
	cached = count_of(u->cached);
	cache_write = count_of(u->cache_write);
	uncached = prompt > cached + cache_write ? prompt - cached - cache_write : 0;
	/* four products of two numbers below 2^63 each: below 4 * 2^126 = 2^128 together */
	return uncached * rate_of(p->input, 0)
	     + cached * rate_of(p->cached_input, p->input)
	     + cache_write * rate_of(p->cache_write, p->input)
	     + (u128)count_of(u->completion) * rate_of(p->output, 0);
}

int64_t pricing_cost_n(const struct price *p, const struct usage_counts *u,
                       const int64_t *mult_ppm, size_t n)
{
	u128 num, den = 1000000, next, cost;

	if (!p || !u)
		return -1;
	if (n == 1)
		return pricing_cost(p, u, mult_ppm[0]);
	/* the exact product num / den, multiplier by multiplier (den reaches 10^6 x PPM^n,
	 * 10^24 for three); only a product past 2^128 (a request costing millions at a
	 * thousandfold price) is rounded to the nano-dollar on the way */
	num = rated_sum(p, u);
	for (size_t i = 0; i < n; i++) {
		u128 m = count_of(mult_ppm[i]);

		if (__builtin_mul_overflow(num, m, &next) || den > ((u128)1 << 100)) {
			num = (num + den / 2) / den;
			den = 1;
			if (__builtin_mul_overflow(num, m, &next))
				return INT64_MAX;
		}
		num = next;
		den *= PPM;
	}
	cost = num / den + (num % den >= den - den / 2 ? 1 : 0);
	return cost > (u128)INT64_MAX ? INT64_MAX : (int64_t)cost;
}

int64_t pricing_cost(const struct price *p, const struct usage_counts *u, int64_t multiplier_ppm)
{
	/* sum is in nano-USD x tokens per 1M tokens; the cost is sum * m / (1M x PPM) */
	const u128 div = (u128)1000000 * PPM;
	u128 sum, q, r, m, cost;

	if (!p || !u)
		return -1;
	sum = rated_sum(p, u);
	m = count_of(multiplier_ppm);
	/* sum * m could pass 2^128; split sum as q * div + r so that each part stays exact:
	 * round(sum * m / div) = q * m + round(r * m / div), r * m < 10^12 * 2^63 */
	q = sum / div;
	r = sum % div;
	if (m && q > (u128)INT64_MAX / m)
		return INT64_MAX;
	cost = q * m + (r * m + div / 2) / div;
	return cost > (u128)INT64_MAX ? INT64_MAX : (int64_t)cost;
}

/* ---- the table ---- */

/* A price in USD per 1M tokens, read from the scalar's text (never through a double). */
static int64_t price_value(struct yaml_ctx *c, const yaml_node_t *n, const char *key)
{
	const char *s = yamlfile_scalar(n);
	int64_t v;

	if (s && money_parse_usd(s, &v) == 0)
		return v;
	if (s && s[0] == '-' && money_parse_usd(s + 1, &v) == 0)
		yamlfile_err(c, n, "%s: a price cannot be negative", key);
	else
		yamlfile_err(c, n, "%s: expected USD per 1M tokens as a decimal number such as 2.50 (at most 9 decimals, up to 9000000000)",
		     key);
	return -1;
}

static void parse_price(struct yaml_ctx *c, const yaml_node_t *pn, struct price *pr)
{
	static const char *const keys[] = { "match", "input", "cached_input", "cache_write",
	                                    "output", NULL };
	yaml_node_t *seen[5] = { 0 };
	const char *s;

	pr->line = (int)pn->start_mark.line + 1;
	pr->input = pr->cached_input = pr->cache_write = pr->output = -1;
	if (pn->type != YAML_MAPPING_NODE) {
		yamlfile_err(c, pn, "each entry under prices: must be a mapping (- match: ...)");
		return;
	}
	for (yaml_node_pair_t *p = pn->data.mapping.pairs.start; p < pn->data.mapping.pairs.top; p++) {
		yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
		const char *name = yamlfile_scalar(k);
		size_t i;

		for (i = 0; name && keys[i] && strcmp(name, keys[i]) != 0; i++)
			;
		if (!name || !keys[i])
			yamlfile_err(c, k, "unknown key \"%s\" in a price (valid: match, input, cached_input, cache_write, output)",
			     name ? name : "?");
		else if (seen[i])
			yamlfile_err(c, k, "duplicate key \"%s\" in a price", keys[i]);
		else
			seen[i] = yaml_document_get_node(c->doc, p->value);
	}
	if (!seen[0] || !(s = yamlfile_scalar(seen[0])) || !*s)
		yamlfile_err(c, seen[0] ? seen[0] : pn, "a price needs match: (a glob over model names, such as \"gpt-4o-mini*\")");
	else
		pr->match = xstrdup(s);
	if (!seen[1])
		yamlfile_err(c, pn, "a price needs input: (USD per 1M tokens)");
	if (!seen[4])
		yamlfile_err(c, pn, "a price needs output: (USD per 1M tokens)");
	if (seen[1])
		pr->input = price_value(c, seen[1], "input");
	if (seen[2])
		pr->cached_input = price_value(c, seen[2], "cached_input");
	if (seen[3])
		pr->cache_write = price_value(c, seen[3], "cache_write");
	if (seen[4])
		pr->output = price_value(c, seen[4], "output");
}

/* A second entry with the same glob could never match: the first always wins. */
static void check_duplicates(struct yaml_ctx *c, const yaml_node_t *list, const struct price_table *t)
{
	for (size_t i = 1; i < t->n; i++) {
		if (!t->prices[i].match)
			continue;
		for (size_t j = 0; j < i; j++) {
			if (t->prices[j].match && strcmp(t->prices[i].match, t->prices[j].match) == 0) {
				yamlfile_err(c, yaml_document_get_node(c->doc, list->data.sequence.items.start[i]),
				     "duplicate match \"%s\" (first at line %d): this entry would never be used",
				     t->prices[i].match, t->prices[j].line);
				break;
			}
		}
	}
}

static int version_ok(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n == 0 || n > VERSION_MAX)
		return 0;
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return 0;
	return 1;
}

/* The file's root into the table (yamlfile_read's walk). */
static void parse_root(struct yaml_ctx *c, const yaml_node_t *root, void *table)
{
	struct price_table *t = table;
	static const char *const keys[] = { "version", "source", "prices", "multiplier", NULL };
	yaml_node_t *seen[4] = { 0 };
	const yaml_node_t *list;

	if (!root || root->type != YAML_MAPPING_NODE) {
		yamlfile_err(c, root, "expected a mapping with version: and prices: at the top");
		return;
	}
	for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
		yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
		const char *name = yamlfile_scalar(k);
		size_t i;

		for (i = 0; name && keys[i] && strcmp(name, keys[i]) != 0; i++)
			;
		if (!name || !keys[i])
			yamlfile_err(c, k, "unknown key \"%s\" at the top (valid: version, source, prices, "
			     "multiplier)",
			     name ? name : "?");
		else if (seen[i])
			yamlfile_err(c, k, "duplicate key \"%s\" at the top", keys[i]);
		else
			seen[i] = yaml_document_get_node(c->doc, p->value);
	}
	if (!seen[0])
		yamlfile_err(c, root, "a price table needs version: (such as \"2026-12-07\"; every cost is recorded with it)");
	else if (!version_ok(yamlfile_scalar(seen[0])))
		yamlfile_err(c, seen[0], "version: expected one line of up to %d characters, such as \"2026-12-07\"",
		     VERSION_MAX);
	else
		t->version = xstrdup(yamlfile_scalar(seen[0]));
	if (seen[1] && !yamlfile_scalar(seen[1]))
		yamlfile_err(c, seen[1], "source: expected a string (where the prices come from)");
	else if (seen[1])
		t->source = xstrdup(yamlfile_scalar(seen[1]));
	t->multiplier_ppm = PPM;
	if (seen[3] && (!yamlfile_scalar(seen[3]) ||
	                money_parse_multiplier(yamlfile_scalar(seen[3]), &t->multiplier_ppm) < 0)) {
		yamlfile_err(c, seen[3], "multiplier: expected a number more than 0 and at most 1000 with at "
		     "most 6 decimals, such as 1.2 (every price is multiplied by it)");
		t->multiplier_ppm = PPM;
	}
	list = seen[2];
	if (!list || list->type != YAML_SEQUENCE_NODE) {
		yamlfile_err(c, list ? list : root, "prices: expected a sequence of prices (- match: ...)");
		return;
	}
	t->n = (size_t)(list->data.sequence.items.top - list->data.sequence.items.start);
	if (t->n > PRICES_MAX) {
		yamlfile_err(c, list, "prices: at most %d entries", PRICES_MAX);
		t->n = 0;
		return;
	}
	t->prices = xcalloc(t->n ? t->n : 1, sizeof(*t->prices));
	for (size_t i = 0; i < t->n; i++)
		parse_price(c, yaml_document_get_node(c->doc, list->data.sequence.items.start[i]),
		            &t->prices[i]);
	check_duplicates(c, list, t);
}

struct price_table *pricing_load(const char *path, struct errlist *errs)
{
	struct price_table *t = xcalloc(1, sizeof(*t));

	t->path = xstrdup(path);
	if (yamlfile_read(path, errs, parse_root, t) < 0) {
		pricing_free(t);
		return NULL;
	}
	return t;
}

void pricing_free(struct price_table *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n; i++)
		free(t->prices[i].match);
	free(t->prices);
	free(t->path);
	free(t->version);
	free(t->source);
	free(t);
}

const struct price *pricing_find(const struct price_table *t, const char *model)
{
	if (!t || !model || !*model)
		return NULL;
	for (size_t i = 0; i < t->n; i++)
		if (fnmatch(t->prices[i].match, model, 0) == 0)
			return &t->prices[i];
	return NULL;
}
