/* The price table and money arithmetic (pricing.c): the shipped share/pricing.yaml loads
 * and prices the common models, the first matching glob wins, every mistake is named by
 * line, decimal text becomes nano-dollars exactly, a cost is rounded once, a million costs
 * add up exactly where doubles drift, and huge counts neither overflow nor wrap. */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "pricing.h"
#include "unit.h"

#define MUSD(m) ((int64_t)(m) * 1000000)   /* thousandths of a dollar, in nano */

static char path[64];

/* Write text to a scratch file and load it; the errors go to e. */
static struct price_table *load_text(const char *text, struct errlist *e)
{
	FILE *f;
	int fd;

	snprintf(path, sizeof(path), "/tmp/fg-pricing-XXXXXX");
	fd = mkstemp(path);
	if (fd < 0 || !(f = fdopen(fd, "w"))) {
		perror("mkstemp");
		exit(2);
	}
	fputs(text, f);
	fclose(f);
	return pricing_load(path, e);
}

/* Exactly one error, at this line, saying this. */
static void one_error(struct price_table *t, struct errlist *e, int line, const char *msg)
{
	char want[512];

	snprintf(want, sizeof(want), "%s:%d: %s", path, line, msg);
	CHECK(t == NULL);
	CHECK_INT(e->n, 1);
	if (e->n)
		CHECK_STR(e->lines[0], want);
	pricing_free(t);
	errlist_clear(e);
	unlink(path);
}

static struct price_table *shipped(void)
{
	struct errlist e = { 0 };
	struct price_table *t = pricing_load("share/pricing.yaml", &e);

	for (size_t i = 0; i < e.n; i++)
		fprintf(stderr, "  %s\n", e.lines[i]);
	CHECK(t != NULL);
	errlist_clear(&e);
	return t;
}

static int64_t cost_of(const struct price *p, int64_t prompt, int64_t cached, int64_t cache_write,
                       int64_t completion)
{
	struct usage_counts u = { prompt, cached, cache_write, completion };

	return pricing_cost(p, &u, PPM);
}

TEST(the_shipped_table_loads_and_prices_common_models)
{
	static const char *const priced[] = {
		"gpt-5", "gpt-5-2025-08-07", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-4.1-mini",
		"gpt-4.1-nano-2025-04-14", "gpt-4o", "gpt-4o-2024-08-06", "gpt-4o-mini",
		"gpt-4o-mini-2024-07-18", "o1", "o3", "o3-mini", "o4-mini", "gpt-3.5-turbo",
		"claude-opus-4-1-20250805", "claude-opus-4-20250514", "claude-opus-4-5-20251101",
		"claude-sonnet-4-5", "claude-sonnet-4-20250514", "claude-haiku-4-5-20251001",
		"claude-3-5-haiku-20241022", "claude-3-haiku-20240307", "Qwen3-32B",
		"Qwen/Qwen3-235B-A22B", "meta-llama/Llama-3.3-70B-Instruct", "gpt-oss-120b",
		"openai/gpt-oss-20b", NULL };
	struct price_table *t = shipped();
	const struct price *p;
	char buf[32];

	CHECK_STR(t ? t->version : NULL, "2026-12-07");
	CHECK(t && t->source && strstr(t->source, "OpenAI") && strstr(t->source, "Anthropic"));
	for (int i = 0; priced[i]; i++)
		if (!pricing_find(t, priced[i])) {
			unit_failed_checks++;
			fprintf(stderr, "  %s is not priced\n", priced[i]);
		}
	for (size_t i = 0; t && i < t->n; i++)
		CHECK(t->prices[i].input >= 0 && t->prices[i].output >= 0);

	/* gpt-4o-mini: $0.15 / $0.075 cached / $0.60 per 1M, no cache writes */
	p = pricing_find(t, "gpt-4o-mini-2024-07-18");
	CHECK(p && p->input == 150000000 && p->cached_input == 75000000 && p->output == 600000000 &&
	      p->cache_write == -1);
	/* 1000 prompt tokens of which 200 cached, 500 out: 800 x 150 + 200 x 75 + 500 x 600 nano */
	CHECK_STR(money_format_usd(cost_of(p, 1000, 200, 0, 500), buf, sizeof(buf)), "0.000435000");
	p = pricing_find(t, "gpt-4o");
	CHECK_STR(money_format_usd(cost_of(p, 1000, 200, 0, 500), buf, sizeof(buf)), "0.007250000");
	p = pricing_find(t, "gpt-5");
	CHECK(p && p->input == MUSD(1250) && p->cached_input == 125000000 && p->output == MUSD(10000));
	p = pricing_find(t, "o3-mini-2025-01-31");
	CHECK(p && p->input == MUSD(1100) && p->output == MUSD(4400));
	p = pricing_find(t, "o3");
	CHECK(p && p->input == MUSD(2000) && p->output == MUSD(8000));

	/* Anthropic: cache reads 0.1x, 5-minute writes 1.25x input */
	p = pricing_find(t, "claude-sonnet-4-5-20250929");
	CHECK(p && p->input == MUSD(3000) && p->cached_input == MUSD(300) && p->cache_write == MUSD(3750) &&
	      p->output == MUSD(15000));
	/* 10000 prompt: 8000 read, 1000 written, 1000 plain; 100 out */
	CHECK_STR(money_format_usd(cost_of(p, 10000, 8000, 1000, 100), buf, sizeof(buf)), "0.010650000");
	p = pricing_find(t, "claude-opus-4-5");
	CHECK(p && p->input == MUSD(5000) && p->cache_write == MUSD(6250) && p->output == MUSD(25000));
	p = pricing_find(t, "claude-opus-4-1");
	CHECK(p && p->input == MUSD(15000) && p->cached_input == MUSD(1500) && p->output == MUSD(75000));
	p = pricing_find(t, "claude-3-5-haiku-latest");
	CHECK(p && p->input == MUSD(800) && p->cached_input == MUSD(80) && p->cache_write == MUSD(1000));
	p = pricing_find(t, "claude-3-haiku-20240307");
	CHECK(p && p->input == MUSD(250) && p->cache_write == MUSD(300) && p->output == MUSD(1250));

	/* open models: each size its own example, an unknown size its family's largest */
	p = pricing_find(t, "meta-llama/Llama-3.1-8B-Instruct");
	CHECK(p && p->input == MUSD(180));
	p = pricing_find(t, "meta-llama/Llama-3.2-11B-Vision-Instruct");
	CHECK(p && p->input == MUSD(3500));

	/* a variant that is not listed is unpriced, not billed at its sibling's price */
	CHECK(pricing_find(t, "gpt-5-pro") == NULL);
	CHECK(pricing_find(t, "gpt-4o-realtime-preview") == NULL);
	CHECK(pricing_find(t, "no-such-model") == NULL);
	CHECK(pricing_find(t, "") == NULL);
	CHECK(pricing_find(t, NULL) == NULL);
	CHECK(pricing_find(NULL, "gpt-4o") == NULL);
	pricing_free(t);
	pricing_free(NULL);
}

TEST(the_first_matching_glob_wins)
{
	struct errlist e = { 0 };
	struct price_table *t = shipped();
	const struct price *p;

	/* gpt-4o's first snapshot, listed before the dated glob that also matches it */
	p = pricing_find(t, "gpt-4o-2024-05-13");
	CHECK(p && p->input == MUSD(5000) && p->cached_input == -1 && p->output == MUSD(15000));
	p = pricing_find(t, "claude-opus-4-5-20251101");
	CHECK(p && p->input == MUSD(5000));
	pricing_free(t);

	t = load_text("version: v1\nprices:\n"
	              "  - { match: \"gpt-4o-mini*\", input: 1, output: 2 }\n"
	              "  - { match: \"gpt-4o*\", input: 3, output: 4 }\n", &e);
	CHECK(t && t->n == 2 && e.n == 0);
	p = pricing_find(t, "gpt-4o-mini-2024-07-18");
	CHECK(p && p->input == MUSD(1000) && p->line == 3);
	p = pricing_find(t, "gpt-4o-2024-08-06");
	CHECK(p && p->input == MUSD(3000) && p->line == 4);
	CHECK_STR(t ? t->prices[0].match : NULL, "gpt-4o-mini*");
	CHECK(t && t->source == NULL);
	pricing_free(t);
	unlink(path);

	/* the other way round the general entry takes every model */
	t = load_text("version: v1\nprices:\n"
	              "  - { match: \"gpt-4o*\", input: 3, output: 4 }\n"
	              "  - { match: \"gpt-4o-mini*\", input: 1, output: 2 }\n", &e);
	p = pricing_find(t, "gpt-4o-mini");
	CHECK(p && p->input == MUSD(3000));
	pricing_free(t);
	unlink(path);
	errlist_clear(&e);
}

TEST(prices_are_read_exactly_from_text)
{
	struct errlist e = { 0 };
	struct price_table *t = load_text(
		"version: \"2026-12-07\"\nsource: somewhere\nprices:\n"
		"  - match: a\n"
		"    input: \"0.000000001\"\n"       /* a quoted string */
		"    cached_input: 0.1\n"             /* not 0.1000000000000000055511 */
		"    cache_write: 0\n"
		"    output: 9000000000\n"
		"  - { match: b, input: 0, output: 0 }\n", &e);
	const struct price *p = pricing_find(t, "a");

	CHECK(t && e.n == 0);
	CHECK(p && p->input == 1 && p->cached_input == 100000000 && p->cache_write == 0 &&
	      p->output == 9000000000LL * NANO_PER_USD && p->line == 4);
	CHECK_STR(t ? t->source : NULL, "somewhere");
	/* a self-hosted model at 0 is priced (known to cost nothing), not unpriced */
	p = pricing_find(t, "b");
	CHECK(p && p->cached_input == -1 && cost_of(p, 1000, 10, 10, 1000) == 0);
	pricing_free(t);
	errlist_clear(&e);
	unlink(path);
}

TEST(mistakes_are_named_by_line)
{
	struct errlist e = { 0 };
	char want[512];
	struct price_table *t;

	one_error(load_text("version: v\nprices:\n  - { match: a, input: 1, output: 2, colour: red }\n", &e),
	          &e, 3, "unknown key \"colour\" in a price (valid: match, input, cached_input, cache_write, output)");
	one_error(load_text("version: v\nprices:\n  - match: a\n    input: 1\n    input: 2\n    output: 2\n", &e),
	          &e, 5, "duplicate key \"input\" in a price");
	one_error(load_text("version: v\nprices:\n  - { input: 1, output: 2 }\n", &e),
	          &e, 3, "a price needs match: (a glob over model names, such as \"gpt-4o-mini*\")");
	one_error(load_text("version: v\nprices:\n  - { match: \"\", input: 1, output: 2 }\n", &e),
	          &e, 3, "a price needs match: (a glob over model names, such as \"gpt-4o-mini*\")");
	one_error(load_text("version: v\nprices:\n  - { match: a, output: 2 }\n", &e),
	          &e, 3, "a price needs input: (USD per 1M tokens)");
	one_error(load_text("version: v\nprices:\n  - match: a\n    input: 1\n", &e),
	          &e, 3, "a price needs output: (USD per 1M tokens)");
	static const char *const bad_numbers[] = { "1e-6", "2.5.0", "\"0.1234567891\"", "[1]",
		"\"\"", "~", "+1", "\"1 \"", ".5", "5.", "0x10", "9000000000.000000001", NULL };
	for (int i = 0; bad_numbers[i]; i++) {
		char text[200];

		snprintf(text, sizeof(text), "version: v\nprices:\n  - match: a\n    input: 1\n    output: %s\n",
		         bad_numbers[i]);
		one_error(load_text(text, &e), &e, 5,
		          "output: expected USD per 1M tokens as a decimal number such as 2.50 (at most 9 decimals, up to 9000000000)");
	}
	one_error(load_text("version: v\nprices:\n  - { match: a, input: 1, cached_input: -0.5, output: 2 }\n", &e),
	          &e, 3, "cached_input: a price cannot be negative");
	one_error(load_text("version: v\nprices:\n  - { match: a, input: 1, output: 2 }\n"
	                    "  - { match: b, input: 1, output: 2 }\n  - { match: a, input: 3, output: 4 }\n", &e),
	          &e, 5, "duplicate match \"a\" (first at line 3): this entry would never be used");
	one_error(load_text("version: v\nprices:\n  - just-a-name\n", &e),
	          &e, 3, "each entry under prices: must be a mapping (- match: ...)");
	one_error(load_text("- version\n", &e), &e, 1, "expected a mapping with version: and prices: at the top");
	one_error(load_text("", &e), &e, 1, "expected a mapping with version: and prices: at the top");
	one_error(load_text("version: v\ncurrency: USD\nprices: []\n", &e),
	          &e, 2, "unknown key \"currency\" at the top (valid: version, source, prices, multiplier)");
	one_error(load_text("version: v\nprices: []\nversion: w\n", &e),
	          &e, 3, "duplicate key \"version\" at the top");
	one_error(load_text("source: x\nprices: []\n", &e),
	          &e, 1, "a price table needs version: (such as \"2026-12-07\"; every cost is recorded with it)");
	one_error(load_text("version: \"a\\nb\"\nprices: []\n", &e),
	          &e, 1, "version: expected one line of up to 31 characters, such as \"2026-12-07\"");
	one_error(load_text("version: \"0123456789012345678901234567890123\"\nprices: []\n", &e),
	          &e, 1, "version: expected one line of up to 31 characters, such as \"2026-12-07\"");
	one_error(load_text("version: [1]\nprices: []\n", &e),
	          &e, 1, "version: expected one line of up to 31 characters, such as \"2026-12-07\"");
	one_error(load_text("version: v\nsource: { a: b }\nprices: []\n", &e),
	          &e, 2, "source: expected a string (where the prices come from)");
	one_error(load_text("version: v\nprices: { match: a }\n", &e),
	          &e, 2, "prices: expected a sequence of prices (- match: ...)");
	one_error(load_text("version: v\n", &e),
	          &e, 1, "prices: expected a sequence of prices (- match: ...)");
	one_error(load_text("version: v\nprices: [\n", &e), &e, 3, "YAML error: did not find expected node content");

	/* every problem at once, each on its own line */
	t = load_text("version: v\nprices:\n  - { match: a, input: x, output: 2 }\n"
	              "  - { match: b, input: 1, output: -2, extra: 1 }\n", &e);
	CHECK(t == NULL);
	CHECK_INT(e.n, 3);
	if (e.n == 3) {
		snprintf(want, sizeof(want), "%s:3: input: expected USD per 1M tokens as a decimal number such as 2.50 (at most 9 decimals, up to 9000000000)", path);
		CHECK_STR(e.lines[0], want);
		snprintf(want, sizeof(want), "%s:4: unknown key \"extra\" in a price (valid: match, input, cached_input, cache_write, output)", path);
		CHECK_STR(e.lines[1], want);
		snprintf(want, sizeof(want), "%s:4: output: a price cannot be negative", path);
		CHECK_STR(e.lines[2], want);
	}
	errlist_clear(&e);
	unlink(path);

	CHECK(pricing_load("/nonexistent/pricing.yaml", &e) == NULL);
	CHECK_INT(e.n, 1);
	CHECK_STR(e.n ? e.lines[0] : NULL, "/nonexistent/pricing.yaml: No such file or directory");
	errlist_clear(&e);
}

TEST(usd_amounts_parse_exactly_and_refuse_anything_else)
{
	static const struct { const char *s; int64_t nano; } ok[] = {
		{ "0", 0 }, { "25", 25000000000LL }, { "0.15", 150000000 }, { "2.5", 2500000000LL },
		{ "0.000000001", 1 }, { "1.000000000", 1000000000 }, { "007.5", 7500000000LL },
		{ "0000000000000000000000000001", 1000000000 }, { "9000000000", 9000000000000000000LL },
		{ "9000000000.000000000", 9000000000000000000LL }, { "8999999999.999999999", 8999999999999999999LL },
	};
	static const char *const bad[] = { "", ".", "5.", ".5", "-1", "+1", " 1", "1 ", "1e3", "1E3",
		"0.0000000001", "9000000000.000000001", "9000000001", "99999999999999999999999",
		"1,5", "0x10", "inf", "nan", "1..2", "1.2.3", "1_000", "\xd9\xa1", NULL };
	int64_t v;

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		v = -7;
		CHECK_INT(money_parse_usd(ok[i].s, &v), 0);
		CHECK_INT(v, ok[i].nano);
	}
	for (int i = 0; bad[i]; i++) {
		v = -7;
		if (money_parse_usd(bad[i], &v) != -1 || v != -7) {
			unit_failed_checks++;
			fprintf(stderr, "  money_parse_usd(\"%s\") accepted\n", bad[i]);
		}
	}
	CHECK_INT(money_parse_usd(NULL, &v), -1);
}

TEST(multipliers_parse_to_ppm_between_zero_and_a_thousand)
{
	static const struct { const char *s; int64_t ppm; } ok[] = {
		{ "1", 1000000 }, { "1.25", 1250000 }, { "0.5", 500000 }, { "0.000001", 1 },
		{ "1000", 1000000000 }, { "1000.000000", 1000000000 }, { "01.5", 1500000 },
	};
	static const char *const bad[] = { "0", "0.0", "0.000000", "0.0000001", "1.0000001",
		"1000.000001", "1001", "-1", "", "1e0", ".5", "1.", " 1", "1x", NULL };
	int64_t v;

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		v = -7;
		CHECK_INT(money_parse_multiplier(ok[i].s, &v), 0);
		CHECK_INT(v, ok[i].ppm);
	}
	for (int i = 0; bad[i]; i++) {
		v = -7;
		if (money_parse_multiplier(bad[i], &v) != -1 || v != -7) {
			unit_failed_checks++;
			fprintf(stderr, "  money_parse_multiplier(\"%s\") accepted\n", bad[i]);
		}
	}
	CHECK_INT(money_parse_multiplier(NULL, &v), -1);
}

TEST(usd_amounts_format_exactly_with_nine_decimals)
{
	char buf[32], small[5];
	int64_t v;

	CHECK_STR(money_format_usd(0, buf, sizeof(buf)), "0.000000000");
	CHECK_STR(money_format_usd(123450, buf, sizeof(buf)), "0.000123450");
	CHECK_STR(money_format_usd(-1500000000, buf, sizeof(buf)), "-1.500000000");
	CHECK_STR(money_format_usd(25 * NANO_PER_USD, buf, sizeof(buf)), "25.000000000");
	CHECK_STR(money_format_usd(1, buf, sizeof(buf)), "0.000000001");
	CHECK_STR(money_format_usd(-1, buf, sizeof(buf)), "-0.000000001");
	CHECK_STR(money_format_usd(-999999999, buf, sizeof(buf)), "-0.999999999");
	CHECK_STR(money_format_usd(INT64_MAX, buf, sizeof(buf)), "9223372036.854775807");
	CHECK_STR(money_format_usd(INT64_MIN, buf, sizeof(buf)), "-9223372036.854775808");
	/* truncated like snprintf, always terminated */
	CHECK_STR(money_format_usd(25 * NANO_PER_USD, small, sizeof(small)), "25.0");
	/* what is formatted parses back to the same nano */
	CHECK(money_parse_usd(money_format_usd(8999999999999999999LL, buf, sizeof(buf)), &v) == 0 &&
	      v == 8999999999999999999LL);
	CHECK(money_parse_usd(money_format_usd(150000000, buf, sizeof(buf)), &v) == 0 && v == 150000000);
}

TEST(multipliers_combine_with_one_rounding)
{
	CHECK_INT(money_mul_ppm(1250000, 1200000), 1500000);   /* 1.25 x 1.2 */
	CHECK_INT(money_mul_ppm(1250000, 800000), PPM);        /* 1.25 x 0.8 = 1 exactly */
	CHECK_INT(money_mul_ppm(500000, 500000), 250000);
	CHECK_INT(money_mul_ppm(1500000, 333333), 500000);     /* 0.4999995 rounds half up */
	CHECK_INT(money_mul_ppm(1499997, 333333), 499999);     /* 0.499998500001 */
	CHECK_INT(money_mul_ppm(1, 499999), 0);
	CHECK_INT(money_mul_ppm(1, 500000), 1);
	CHECK_INT(money_mul_ppm(-1, 500000), -1);              /* half away from zero */
	CHECK_INT(money_mul_ppm(PPM, INT64_MAX), INT64_MAX);
	CHECK_INT(money_mul_ppm(INT64_MAX, INT64_MAX), INT64_MAX);
	CHECK_INT(money_mul_ppm(INT64_MIN, INT64_MAX), INT64_MIN);
}

TEST(a_cost_is_rounded_once_half_up)
{
	struct price one = { .input = 1, .cached_input = -1, .cache_write = -1, .output = 1 };
	struct price three = { .input = 3, .cached_input = -1, .cache_write = -1, .output = 3 };
	struct usage_counts u;

	/* 1 nano per 1M tokens: half a million tokens cost half a nano-dollar */
	CHECK_INT(cost_of(&one, 500000, 0, 0, 0), 1);
	CHECK_INT(cost_of(&one, 499999, 0, 0, 0), 0);
	CHECK_INT(cost_of(&one, 1500000, 0, 0, 0), 2);
	/* 0.4 + 0.4: rounding each part would give 0 */
	CHECK_INT(cost_of(&one, 400000, 0, 0, 400000), 1);
	/* the multiplier before the rounding: 0.3 nano x 2 = 0.6, not round(0.3) x 2 = 0 */
	u = (struct usage_counts){ 100000, 0, 0, 0 };
	CHECK_INT(pricing_cost(&three, &u, 2 * PPM), 1);
	u = (struct usage_counts){ 1000000, 0, 0, 0 };
	CHECK_INT(pricing_cost(&one, &u, 1500000), 2);     /* 1.5 */
	CHECK_INT(pricing_cost(&one, &u, 1250000), 1);     /* 1.25 */
	CHECK_INT(pricing_cost(&one, &u, 0), 0);
	CHECK_INT(pricing_cost(&one, &u, -PPM), 0);
	/* a multiplier applied once: 7 USD at 1.1 is 7.7 USD, to the nano */
	u = (struct usage_counts){ 0, 0, 0, 1000000 };
	one.output = MUSD(7000);
	CHECK_INT(pricing_cost(&one, &u, 1100000), 7700000000LL);
	CHECK_INT(pricing_cost(&one, &u, money_mul_ppm(1250000, 800000)), MUSD(7000));
	CHECK_INT(pricing_cost(NULL, &u, PPM), -1);
	CHECK_INT(pricing_cost(&one, NULL, PPM), -1);
}

TEST(cached_and_cache_write_tokens_bill_at_their_price_or_else_input)
{
	struct price p = { .input = MUSD(3000), .cached_input = MUSD(300), .cache_write = MUSD(3750),
	                   .output = MUSD(15000) };

	/* 1M prompt: 250k plain, 500k read, 250k written */
	CHECK_INT(cost_of(&p, 1000000, 500000, 250000, 0), 750000000 + 150000000 + 937500000);
	CHECK_INT(cost_of(&p, 0, 0, 0, 1000), 15000000);
	/* without their own prices both are input */
	p.cached_input = p.cache_write = -1;
	CHECK_INT(cost_of(&p, 1000000, 500000, 250000, 0), MUSD(3000));
	p.cached_input = 0;   /* a free cache read is a price, not "not given" */
	CHECK_INT(cost_of(&p, 1000000, 500000, 250000, 0), MUSD(1500));
	/* cached and written beyond prompt: nothing plain, never a negative remainder */
	p.cached_input = MUSD(300);
	CHECK_INT(cost_of(&p, 100, 80, 40, 0), 80 * 300 + 40 * 3000);
	/* negative counts count as 0 */
	CHECK_INT(cost_of(&p, -5, -1, -1, -100), 0);
	CHECK_INT(cost_of(&p, 1000, -1, 0, 0), 3000000);
}

/* Four request shapes from the shipped table, 250,000 of each. Their exact costs in nano,
 * worked by hand from the prices ($0.15 per 1M tokens is 150 nano a token): */
#define SHAPE_A 339300      /* gpt-4o-mini: 722 x 150 + 512 x 75 + 321 x 600 */
#define SHAPE_B 12000600    /* gpt-4o-mini: 80000 x 150 + 1 x 600 */
#define SHAPE_C 4425000     /* claude-sonnet-4-5: 200 x 3000 + 1500 x 300 + 300 x 3750 + 150 x 15000 */
#define SHAPE_D 1550        /* gpt-5-nano: 7 x 50 + 3 x 400 */

TEST(no_float_drift_over_a_million_requests)
{
	struct price_table *t = shipped();
	const struct price *mini = pricing_find(t, "gpt-4o-mini");
	const struct price *sonnet = pricing_find(t, "claude-sonnet-4-5");
	const struct price *nano = pricing_find(t, "gpt-5-nano");
	const struct { const struct price *p; struct usage_counts u; int64_t want; } shape[4] = {
		{ mini, { 1234, 512, 0, 321 }, SHAPE_A },
		{ mini, { 80000, 0, 0, 1 }, SHAPE_B },
		{ sonnet, { 2000, 1500, 300, 150 }, SHAPE_C },
		{ nano, { 7, 0, 0, 3 }, SHAPE_D },
	};
	/* what a naive gateway keeps: the same prices as doubles, in USD */
	const double usd[4][4] = {   /* input, cached_input, cache_write, output */
		{ 0.15, 0.075, 0.15, 0.60 }, { 0.15, 0.075, 0.15, 0.60 },
		{ 3.00, 0.30, 3.75, 15.00 }, { 0.05, 0.005, 0.05, 0.40 } };
	const int64_t exact = 250000LL * (SHAPE_A + SHAPE_B + SHAPE_C + SHAPE_D);
	int64_t sum = 0;
	double naive = 0;
	char buf[32];

	if (!mini || !sonnet || !nano) {
		unit_failed_checks++;
		fprintf(stderr, "  the shipped table does not price gpt-4o-mini, claude-sonnet-4-5 and gpt-5-nano\n");
		pricing_free(t);
		return;
	}
	for (int k = 0; k < 4; k++)
		CHECK_INT(pricing_cost(shape[k].p, &shape[k].u, PPM), shape[k].want);
	for (int i = 0; i < 1000000; i++) {
		const struct usage_counts *u = &shape[i % 4].u;
		const double *d = usd[i % 4];

		sum += pricing_cost(shape[i % 4].p, u, PPM);
		naive += (double)(u->prompt - u->cached - u->cache_write) / 1e6 * d[0] +
		         (double)u->cached / 1e6 * d[1] + (double)u->cache_write / 1e6 * d[2] +
		         (double)u->completion / 1e6 * d[3];
	}
	CHECK_INT(sum, exact);
	CHECK_STR(money_format_usd(sum, buf, sizeof(buf)), "4191.612500000");
	/* the doubles miss by whole nano-dollars: with them this test would fail */
	CHECK(llround(naive * 1e9) != exact);
	fprintf(stderr, "  (a double accumulator ends at %.9f USD, %lld nano off)\n", naive,
	        (long long)(llround(naive * 1e9) - exact));
	pricing_free(t);
}

TEST(huge_counts_neither_overflow_nor_wrap)
{
	/* $1,000,000 per 1M tokens: a nano-dollar a token times a million */
	struct price dear = { .input = 1000000 * NANO_PER_USD, .cached_input = -1, .cache_write = -1,
	                      .output = 1000000 * NANO_PER_USD };
	struct price cheap = { .input = 1, .cached_input = -1, .cache_write = -1, .output = 1 };
	struct price per_nano = { .input = 1000000, .cached_input = -1, .cache_write = -1,
	                          .output = 1000000 };
	struct price most = { .input = INT64_MAX, .cached_input = INT64_MAX,
	                      .cache_write = INT64_MAX, .output = INT64_MAX };
	struct usage_counts all = { INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX };
	struct usage_counts prompt = { INT64_MAX, 0, 0, 0 };

	/* exact where the answer fits, saturated where it does not, never negative */
	CHECK_INT(pricing_cost(&cheap, &prompt, PPM), 9223372036855LL);   /* INT64_MAX / 1e6, half up */
	CHECK_INT(pricing_cost(&per_nano, &prompt, PPM), INT64_MAX);
	CHECK_INT(pricing_cost(&per_nano, &prompt, PPM / 2), 4611686018427387904LL);
	/* 3 x INT64_MAX tokens (read, written, out; nothing plain) at 1 nano per 1M, x 1000 */
	CHECK_INT(pricing_cost(&cheap, &all, 1000 * PPM), 27670116110564327LL);
	CHECK_INT(pricing_cost(&dear, &all, 1000 * PPM), INT64_MAX);
	CHECK_INT(pricing_cost(&dear, &all, PPM), INT64_MAX);
	CHECK_INT(pricing_cost(&most, &all, INT64_MAX), INT64_MAX);
	CHECK_INT(pricing_cost(&most, &all, 1), INT64_MAX);
	/* a big bill that fits: 10^9 tokens out at $1,000,000 per 1M is $10^9; x 10 does not fit */
	prompt = (struct usage_counts){ 0, 0, 0, 1000000000 };
	CHECK_INT(pricing_cost(&dear, &prompt, PPM), 1000000000LL * NANO_PER_USD);
	CHECK_INT(pricing_cost(&dear, &prompt, 9 * PPM), 9000000000LL * NANO_PER_USD);
	CHECK_INT(pricing_cost(&dear, &prompt, 10 * PPM), INT64_MAX);
}

RUN_TESTS()
