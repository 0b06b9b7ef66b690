/* Spend-control limits: their text (every form and every mistake), and their counters
 * driven by a fake clock (plain integers of Unix seconds). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "limit.h"
#include "unit.h"

/* The fake clock: 2026-03-10 00:00:00 UTC, on a minute (and day) boundary */
#define T0 1773100800LL
#define DAY 86400LL

/* Parse text, which must succeed, and check what it gave. */
static void parses_as(const char *text, enum limit_kind kind, int64_t amount,
                      enum limit_window window)
{
	struct limit l = { LIMIT_REQUESTS, LIMIT_MIN, -7 };
	char *err = NULL;

	if (limit_parse(text, &l, &err) != 0) {
		unit_failed_checks++;
		fprintf(stderr, "  limit_parse(\"%s\") failed: %s\n", text, err ? err : "(no message)");
		free(err);
		return;
	}
	CHECK(err == NULL);
	CHECK_INT(l.kind, kind);
	CHECK_INT(l.amount, amount);
	CHECK_INT(l.window, window);
}

/* Parse text, which must fail with exactly message, and leave the limit alone. */
static void refused_with(const char *text, const char *message)
{
	struct limit l = { LIMIT_TOKENS, LIMIT_DAY, 42 };
	char *err = NULL;

	CHECK_INT(limit_parse(text, &l, &err), -1);
	CHECK_STR(err, message);
	CHECK_INT(l.kind, LIMIT_TOKENS);
	CHECK_INT(l.window, LIMIT_DAY);
	CHECK_INT(l.amount, 42);
	free(err);
}

/* format(parse(text)) is canon, and parse(canon) gives the same limit back. */
static void formats_as(const char *text, const char *canon)
{
	struct limit l, back;
	char buf[LIMIT_TEXT_MAX];

	CHECK_INT(limit_parse(text, &l, NULL), 0);
	CHECK_STR(limit_format(&l, buf, sizeof(buf)), canon);
	CHECK_INT(limit_parse(buf, &back, NULL), 0);
	CHECK_INT(back.kind, l.kind);
	CHECK_INT(back.window, l.window);
	CHECK_INT(back.amount, l.amount);
}

TEST(parse_reads_each_kind_and_window)
{
	parses_as("requests:100/min", LIMIT_REQUESTS, 100, LIMIT_MIN);
	parses_as("requests:100/minute", LIMIT_REQUESTS, 100, LIMIT_MIN);
	parses_as("tokens:5000/hour", LIMIT_TOKENS, 5000, LIMIT_HOUR);
	parses_as("tokens:1/day", LIMIT_TOKENS, 1, LIMIT_DAY);
	parses_as("cost:25/month", LIMIT_COST, 25000000000LL, LIMIT_MONTH);
}

TEST(parse_count_suffixes_scale_by_powers_of_ten)
{
	parses_as("tokens:1k/day", LIMIT_TOKENS, 1000, LIMIT_DAY);
	parses_as("tokens:1K/day", LIMIT_TOKENS, 1000, LIMIT_DAY);
	parses_as("tokens:1M/day", LIMIT_TOKENS, 1000000, LIMIT_DAY);
	parses_as("tokens:1B/day", LIMIT_TOKENS, 1000000000, LIMIT_DAY);
	parses_as("tokens:3G/day", LIMIT_TOKENS, 3000000000LL, LIMIT_DAY);
	parses_as("requests:2.5k/min", LIMIT_REQUESTS, 2500, LIMIT_MIN);
	parses_as("tokens:1.234567M/day", LIMIT_TOKENS, 1234567, LIMIT_DAY);
	parses_as("tokens:0.001k/day", LIMIT_TOKENS, 1, LIMIT_DAY);
	/* a fraction that is whole, trailing zeros however many */
	parses_as("requests:7.0/min", LIMIT_REQUESTS, 7, LIMIT_MIN);
	parses_as("tokens:1.500000000000000000000000k/day", LIMIT_TOKENS, 1500, LIMIT_DAY);
	parses_as("requests:007/min", LIMIT_REQUESTS, 7, LIMIT_MIN);
}

TEST(parse_counts_are_exact_up_to_int64_max)
{
	/* 2^53 + 1: a double would have rounded it */
	parses_as("tokens:9007199254740993/day", LIMIT_TOKENS, 9007199254740993LL, LIMIT_DAY);
	parses_as("tokens:9223372036854775807/day", LIMIT_TOKENS, INT64_MAX, LIMIT_DAY);
	parses_as("tokens:9223372036.854775807B/day", LIMIT_TOKENS, INT64_MAX, LIMIT_DAY);
}

TEST(parse_cost_is_exact_nano_dollars)
{
	parses_as("cost:0.50/day", LIMIT_COST, 500000000, LIMIT_DAY);
	parses_as("cost:0.1/day", LIMIT_COST, 100000000, LIMIT_DAY);
	parses_as("cost:0.000000001/min", LIMIT_COST, 1, LIMIT_MIN);
	parses_as("cost:12.345678912/hour", LIMIT_COST, 12345678912LL, LIMIT_HOUR);
	parses_as("cost:1.0000000000000/day", LIMIT_COST, 1000000000, LIMIT_DAY);
	parses_as("cost:9223372036.854775807/month", LIMIT_COST, INT64_MAX, LIMIT_MONTH);
}

TEST(parse_refuses_bad_shapes_kinds_and_windows)
{
	refused_with("", "limit \"\": expected KIND:AMOUNT/WINDOW, e.g. requests:100/min");
	refused_with("100/min", "limit \"100/min\": expected KIND:AMOUNT/WINDOW, e.g. "
	             "requests:100/min");
	refused_with("request:100/min",
	             "limit \"request:100/min\": unknown kind \"request\" (requests, tokens or cost)");
	refused_with("Requests:100/min",
	             "limit \"Requests:100/min\": unknown kind \"Requests\" (requests, tokens or "
	             "cost)");
	refused_with(":100/min", "limit \":100/min\": unknown kind \"\" (requests, tokens or cost)");
	refused_with("requests:100",
	             "limit \"requests:100\": no window (end it with /min, /hour, /day or /month)");
	refused_with("requests:100/week",
	             "limit \"requests:100/week\": unknown window \"week\" (min, hour, day or month)");
	refused_with("requests:100/", "limit \"requests:100/\": unknown window \"\" (min, hour, "
	             "day or month)");
	refused_with("requests:100/min ", "limit \"requests:100/min \": unknown window \"min \" "
	             "(min, hour, day or month)");
	refused_with("requests:1/2/min", "limit \"requests:1/2/min\": unknown window \"2/min\" "
	             "(min, hour, day or month)");
}

TEST(parse_refuses_bad_count_amounts)
{
	refused_with("tokens:1X/day", "limit \"tokens:1X/day\": bad amount \"1X\" (a number, "
	             "optionally with k, M or B)");
	refused_with("tokens:/day", "limit \"tokens:/day\": bad amount \"\" (a number, "
	             "optionally with k, M or B)");
	refused_with("tokens:-5/day", "limit \"tokens:-5/day\": bad amount \"-5\" (a number, "
	             "optionally with k, M or B)");
	refused_with("tokens:+5/day", "limit \"tokens:+5/day\": bad amount \"+5\" (a number, "
	             "optionally with k, M or B)");
	refused_with("tokens: 5/day", "limit \"tokens: 5/day\": bad amount \" 5\" (a number, "
	             "optionally with k, M or B)");
	refused_with("tokens:.5k/day", "limit \"tokens:.5k/day\": bad amount \".5k\" (a number, "
	             "optionally with k, M or B)");
	refused_with("tokens:5./day", "limit \"tokens:5./day\": bad amount \"5.\" (a number, "
	             "optionally with k, M or B)");
	refused_with("tokens:1kk/day", "limit \"tokens:1kk/day\": bad amount \"1kk\" (a number, "
	             "optionally with k, M or B)");
	/* m could be milli or million: neither is guessed */
	refused_with("tokens:1m/day", "limit \"tokens:1m/day\": bad amount \"1m\" (a number, "
	             "optionally with k, M or B)");
	refused_with("tokens:1e6/day", "limit \"tokens:1e6/day\": bad amount \"1e6\" (a number, "
	             "optionally with k, M or B)");
	refused_with("tokens:1,000/day", "limit \"tokens:1,000/day\": bad amount \"1,000\" (a "
	             "number, optionally with k, M or B)");
	refused_with("requests:1.5/min", "limit \"requests:1.5/min\": amount \"1.5\" is not a "
	             "whole number of requests");
	refused_with("tokens:1.0001k/day", "limit \"tokens:1.0001k/day\": amount \"1.0001k\" is "
	             "not a whole number of tokens");
	refused_with("requests:0/min", "limit \"requests:0/min\": the amount must be more than 0 "
	             "(to refuse everything, suspend the key or user instead)");
	refused_with("requests:0.0k/min", "limit \"requests:0.0k/min\": the amount must be more "
	             "than 0 (to refuse everything, suspend the key or user instead)");
	refused_with("tokens:9223372036854775808/day", "limit \"tokens:9223372036854775808/day\": "
	             "amount \"9223372036854775808\" is too large (at most 9223372036854775807)");
	refused_with("tokens:9223372036.854775808B/day", "limit \"tokens:9223372036.854775808B/"
	             "day\": amount \"9223372036.854775808B\" is too large (at most "
	             "9223372036854775807)");
	refused_with("tokens:10000000000B/day", "limit \"tokens:10000000000B/day\": amount "
	             "\"10000000000B\" is too large (at most 9223372036854775807)");
}

TEST(parse_refuses_bad_cost_amounts)
{
	refused_with("cost:1k/month", "limit \"cost:1k/month\": bad amount \"1k\" (US dollars, "
	             "e.g. 25 or 0.50)");
	refused_with("cost:$25/month", "limit \"cost:$25/month\": bad amount \"$25\" (US dollars, "
	             "e.g. 25 or 0.50)");
	refused_with("cost:abc/month", "limit \"cost:abc/month\": bad amount \"abc\" (US dollars, "
	             "e.g. 25 or 0.50)");
	refused_with("cost:0.0000000001/day", "limit \"cost:0.0000000001/day\": amount "
	             "\"0.0000000001\" has more than 9 decimals (a nano-dollar is the smallest)");
	refused_with("cost:0/day", "limit \"cost:0/day\": the amount must be more than 0 (to "
	             "refuse everything, suspend the key or user instead)");
	refused_with("cost:0.000/day", "limit \"cost:0.000/day\": the amount must be more than 0 "
	             "(to refuse everything, suspend the key or user instead)");
	refused_with("cost:9223372036.854775808/day", "limit \"cost:9223372036.854775808/day\": "
	             "amount \"9223372036.854775808\" is too large (at most 9223372036.854775807)");
}

TEST(parse_error_replaces_an_old_message_and_err_may_be_null)
{
	struct limit l;
	char *err = strdup("old");

	CHECK_INT(limit_parse("x", &l, &err), -1);
	CHECK_STR(err, "limit \"x\": expected KIND:AMOUNT/WINDOW, e.g. requests:100/min");
	free(err);
	CHECK_INT(limit_parse("x", &l, NULL), -1);
	CHECK_INT(limit_parse(NULL, &l, NULL), -1);
}

/* auth_fail_limit's rate: the limits' amounts, a short window, and a message for each
 * mistake that names the text. */
TEST(rate_parse_reads_amount_and_unit_and_refuses_mistakes)
{
	static const struct { const char *text; int64_t amount, per_s; } good[] = {
		{ "20/min", 20, 60 }, { "20/minute", 20, 60 }, { "3/s", 3, 1 }, { "3/sec", 3, 1 },
		{ "3/second", 3, 1 }, { "1k/hour", 1000, 3600 }, { "1/hour", 1, 3600 },
	};
	static const struct { const char *text, *says; } bad[] = {
		{ "20", "expected AMOUNT/UNIT" }, { "", "expected AMOUNT/UNIT" },
		{ "20/day", "unknown unit \"day\"" }, { "20/", "unknown unit" },
		{ "/min", "bad amount" }, { "0/min", "more than 0" }, { "-1/min", "bad amount" },
		{ "2.5/min", "bad amount" }, { "20 /min", "bad amount" }, { "20/min ", "unknown unit" },
		{ "99999999999999999999/s", "too large" }, { "off/min", "bad amount" },
	};
	struct limit_rate r;
	char *err = NULL;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		r.amount = r.per_s = -1;
		CHECK_INT(limit_rate_parse(good[i].text, &r, &err), 0);
		CHECK_INT(r.amount, good[i].amount);
		CHECK_INT(r.per_s, good[i].per_s);
	}
	CHECK(err == NULL);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		r.amount = r.per_s = 7;
		CHECK_INT(limit_rate_parse(bad[i].text, &r, &err), -1);
		if (!err || !strstr(err, bad[i].says) || !strstr(err, "rate \"")) {
			unit_failed_checks++;
			fprintf(stderr, "  \"%s\": message \"%s\", expected \"%s\"\n", bad[i].text,
			        err ? err : "(none)", bad[i].says);
		}
		CHECK(r.amount == 7 && r.per_s == 7);
	}
	free(err);
}

TEST(format_is_canonical_and_parses_back)
{
	formats_as("requests:100/min", "requests:100/min");
	formats_as("requests:100/minute", "requests:100/min");
	formats_as("tokens:1M/day", "tokens:1000000/day");
	formats_as("tokens:2.5k/hour", "tokens:2500/hour");
	formats_as("cost:25/month", "cost:25/month");
	formats_as("cost:25.000/month", "cost:25/month");
	formats_as("cost:0.50/day", "cost:0.5/day");
	formats_as("cost:0.000000001/min", "cost:0.000000001/min");
	formats_as("cost:10.01/hour", "cost:10.01/hour");
	formats_as("cost:1234.123456789/day", "cost:1234.123456789/day");
	formats_as("tokens:9223372036854775807/month", "tokens:9223372036854775807/month");
	formats_as("cost:9223372036.854775807/month", "cost:9223372036.854775807/month");
}

TEST(format_round_trips_every_cost_fraction_digit_position)
{
	/* one nonzero digit in each of the nine decimal places, and every amount up to 1e4 nano */
	for (int64_t a = 1; a <= 1000000000; a *= 10) {
		struct limit l = { LIMIT_COST, LIMIT_DAY, a * 7 }, back;
		char buf[LIMIT_TEXT_MAX];

		CHECK_INT(limit_parse(limit_format(&l, buf, sizeof(buf)), &back, NULL), 0);
		CHECK_INT(back.amount, l.amount);
	}
	for (int64_t a = 1; a <= 10000; a++) {
		struct limit l = { LIMIT_COST, LIMIT_HOUR, a * 99991 }, back;
		char buf[LIMIT_TEXT_MAX];

		CHECK_INT(limit_parse(limit_format(&l, buf, sizeof(buf)), &back, NULL), 0);
		CHECK_INT(back.amount, l.amount);
		/* shortest: a fraction never ends in 0 (the text ends "D/hour") */
		CHECK(!strchr(buf, '.') || buf[strlen(buf) - strlen("/hour") - 1] != '0');
	}
}

TEST(format_truncates_into_a_small_buffer)
{
	struct limit l = { LIMIT_REQUESTS, LIMIT_MIN, 100 };
	char buf[9];

	CHECK_STR(limit_format(&l, buf, sizeof(buf)), "requests");
	CHECK_STR(limit_kind_name(LIMIT_COST), "cost");
	CHECK_STR(limit_window_name(LIMIT_MONTH), "month");
	CHECK_STR(limit_kind_name((enum limit_kind)9), "unknown");
	CHECK_STR(limit_window_name((enum limit_window)-1), "unknown");
}

TEST(limits_parse_adds_lists_and_repeated_calls)
{
	struct limit set[LIMITS_MAX];
	size_t n = 0;
	char buf[LIMITS_TEXT_MAX];

	CHECK_INT(limits_parse("requests:100/min", set, &n, NULL), 0);
	CHECK_INT(limits_parse(" tokens:1M/day ,\tcost:25/month ", set, &n, NULL), 0);
	CHECK_INT(n, 3);
	CHECK_STR(limits_format(set, n, buf, sizeof(buf)),
	          "requests:100/min,tokens:1000000/day,cost:25/month");
	/* the same kind in another window, and another kind in the same window, are fine */
	CHECK_INT(limits_parse("requests:5k/hour,tokens:10k/min", set, &n, NULL), 0);
	CHECK_INT(n, 5);
	CHECK_STR(limits_format(set, 0, buf, sizeof(buf)), "");
}

TEST(limits_parse_refuses_duplicates_empties_and_too_many_adding_nothing)
{
	struct limit set[LIMITS_MAX];
	size_t n = 0;
	char *err = NULL;
	char buf[LIMITS_TEXT_MAX];

	CHECK_INT(limits_parse("requests:100/min,cost:1/day", set, &n, NULL), 0);
	CHECK_INT(limits_parse("tokens:1k/day,requests:200/minute", set, &n, &err), -1);
	CHECK_STR(err, "limit \"requests:200/minute\": there is already a limit on requests per "
	          "min (requests:100/min); give each kind and window once");
	CHECK_INT(n, 2);
	CHECK_INT(limits_parse("tokens:1k/day,tokens:2k/day", set, &n, &err), -1);
	CHECK_STR(err, "limit \"tokens:2k/day\": there is already a limit on tokens per day "
	          "(tokens:1000/day); give each kind and window once");
	CHECK_INT(limits_parse("tokens:1k/day,,cost:2/month", set, &n, &err), -1);
	CHECK_STR(err, "limits \"tokens:1k/day,,cost:2/month\": an empty limit (write "
	          "KIND:AMOUNT/WINDOW, e.g. requests:100/min, separated by commas)");
	CHECK_INT(limits_parse("tokens:1k/day,", set, &n, &err), -1);
	CHECK_INT(limits_parse("", set, &n, &err), -1);
	CHECK_INT(limits_parse("tokens:1k/day, tokens:1X/day", set, &n, &err), -1);
	CHECK_STR(err, "limit \"tokens:1X/day\": bad amount \"1X\" (a number, optionally with k, M "
	          "or B)");
	CHECK_INT(n, 2);
	CHECK_STR(limits_format(set, n, buf, sizeof(buf)), "requests:100/min,cost:1/day");
	/* 8 in all is the most */
	CHECK_INT(limits_parse("requests:1/hour,requests:1/day,requests:1/month,tokens:1/min",
	                       set, &n, NULL), 0);
	CHECK_INT(limits_parse("tokens:1/hour,tokens:1/day", set, &n, NULL), 0);
	CHECK_INT(n, 8);
	CHECK_INT(limits_parse("tokens:1/month", set, &n, &err), -1);
	CHECK_STR(err, "limit \"tokens:1/month\": too many limits (at most 8 on a key or user)");
	CHECK_INT(n, 8);
	/* an item longer than any limit is refused without being copied whole */
	n = 2;
	{
		char longer[400];

		memset(longer, '9', sizeof(longer));
		memcpy(longer, "tokens:", 7);
		strcpy(longer + sizeof(longer) - 5, "/day");
		CHECK_INT(limits_parse(longer, set, &n, &err), -1);
		CHECK_STR(err, "limit \"tokens:999999999999999999999999999999999...\": too long");
		CHECK_INT(n, 2);
	}
	n = 8;
	/* a caller's count beyond the array is refused, not copied */
	n = LIMITS_MAX + 1;
	CHECK_INT(limits_parse("tokens:1/month", set, &n, &err), -1);
	CHECK_STR(err, "limits: 9 given, at most 8 on a key or user");
	CHECK_INT(n, LIMITS_MAX + 1);
	free(err);
}

TEST(limits_format_of_a_full_set_fits_and_parses_back)
{
	static const char *const big[] = {
		"requests:9223372036854775807/month", "tokens:9223372036854775807/month",
		"cost:9223372036.854775807/month", "cost:1.000000001/day", "cost:0.123456789/hour",
		"cost:9223372036.854775807/min", "tokens:9223372036854775807/hour",
		"requests:9223372036854775807/hour",
	};
	struct limit set[LIMITS_MAX], back[LIMITS_MAX];
	size_t n = 0, nb = 0;
	char buf[LIMITS_TEXT_MAX];

	for (size_t i = 0; i < LIMITS_MAX; i++)
		CHECK_INT(limits_parse(big[i], set, &n, NULL), 0);
	limits_format(set, n, buf, sizeof(buf));
	CHECK_INT(limits_parse(buf, back, &nb, NULL), 0);
	CHECK_INT(nb, n);
	CHECK(memcmp(set, back, sizeof(set)) == 0);
}

/* A limit from its text, which must parse. */
static struct limit L(const char *text)
{
	struct limit l = { LIMIT_REQUESTS, LIMIT_MIN, 1 };

	CHECK_INT(limit_parse(text, &l, NULL), 0);
	return l;
}

TEST(sliding_minute_fills_and_each_second_ages_out_exactly_at_s_plus_60)
{
	struct limit l = L("requests:5/min");
	struct limit_counter c;

	limit_counter_init(&c, &l, T0);
	for (int i = 0; i < 5; i++) {
		CHECK_INT(limit_wait(&c, &l, T0 + i, 1), 0);
		CHECK_INT(limit_add(&c, &l, T0 + i, 1), T0 + i);
	}
	CHECK_INT(limit_used(&c, &l, T0 + 4), 5);
	/* the usage of second T0 is in the window up to T0 + 59 and leaves at T0 + 60 */
	CHECK_INT(limit_used(&c, &l, T0 + 59), 5);
	CHECK_INT(limit_used(&c, &l, T0 + 60), 4);
	CHECK_INT(limit_used(&c, &l, T0 + 63), 1);
	CHECK_INT(limit_used(&c, &l, T0 + 64), 0);
	CHECK_INT(limit_window_start(&l, T0 + 64), T0 + 5);
}

TEST(sliding_minute_retry_after_is_the_first_second_that_admits)
{
	struct limit l = L("requests:5/min");
	struct limit_counter c;

	limit_counter_init(&c, &l, T0);
	for (int i = 0; i < 5; i++)
		limit_add(&c, &l, T0 + i, 1);
	/* one more fits once the usage of T0 has left, at T0 + 60 */
	CHECK_INT(limit_wait(&c, &l, T0 + 4, 1), 56);
	CHECK_INT(limit_wait(&c, &l, T0 + 30, 1), 30);
	CHECK_INT(limit_wait(&c, &l, T0 + 59, 1), 1);
	CHECK_INT(limit_wait(&c, &l, T0 + 60, 1), 0);
	/* three fit once T0, T0 + 1 and T0 + 2 have left: at T0 + 62 */
	CHECK_INT(limit_wait(&c, &l, T0 + 10, 3), 52);
	CHECK_INT(limit_wait(&c, &l, T0 + 61, 3), 1);
	/* the whole limit once everything has left: T0 + 64 */
	CHECK_INT(limit_wait(&c, &l, T0 + 10, 5), 54);
	CHECK_INT(limit_wait(&c, &l, T0 + 63, 5), 1);
	CHECK_INT(limit_wait(&c, &l, T0 + 64, 5), 0);
	/* limit_wait changed nothing: the counter still holds all five at T0 + 59 */
	CHECK_INT(limit_used(&c, &l, T0 + 59), 5);
	/* refill at T0 + 60: the next one waits for T0 + 1 to leave, one second */
	limit_add(&c, &l, T0 + 60, 1);
	CHECK_INT(limit_wait(&c, &l, T0 + 60, 1), 1);
}

TEST(sliding_minute_retry_after_with_uneven_buckets)
{
	struct limit l = L("tokens:100/min");
	struct limit_counter c;

	limit_counter_init(&c, &l, T0);
	limit_add(&c, &l, T0, 50);
	limit_add(&c, &l, T0 + 20, 30);
	limit_add(&c, &l, T0 + 40, 20);
	/* 100 used; 10 more need 10 gone: the 50 of T0 leave at T0 + 60 */
	CHECK_INT(limit_wait(&c, &l, T0 + 45, 10), 15);
	/* 60 need 60 gone: T0's 50 and T0 + 20's 30, gone at T0 + 80 */
	CHECK_INT(limit_wait(&c, &l, T0 + 45, 60), 35);
	CHECK_INT(limit_wait(&c, &l, T0 + 60, 60), 20);
	CHECK_INT(limit_wait(&c, &l, T0 + 60, 50), 0);
	/* 81 need everything gone: T0 + 100 */
	CHECK_INT(limit_wait(&c, &l, T0 + 45, 81), 55);
	CHECK_INT(limit_wait(&c, &l, T0 + 45, 100), 55);
	CHECK_INT(limit_wait(&c, &l, T0 + 45, 101), LIMIT_NEVER);
	CHECK_INT(limit_reset_in(&c, &l, T0 + 45), 15);
	CHECK_INT(limit_clear_in(&c, &l, T0 + 45), 55);
	CHECK_INT(limit_reset_in(&c, &l, T0 + 70), 10);
	CHECK_INT(limit_clear_in(&c, &l, T0 + 70), 30);
	CHECK_INT(limit_reset_in(&c, &l, T0 + 100), 0);
	CHECK_INT(limit_clear_in(&c, &l, T0 + 100), 0);
}

TEST(sliding_hour_keeps_minutes_and_ages_out_at_the_60th_minute)
{
	struct limit l = L("tokens:100/hour");
	struct limit_counter c;

	limit_counter_init(&c, &l, T0);
	limit_add(&c, &l, T0 + 30, 60);         /* minute 0 */
	limit_add(&c, &l, T0 + 600 + 59, 40);   /* minute 10 */
	CHECK_INT(limit_used(&c, &l, T0 + 1000), 100);
	/* minute 0 is in the window up to T0 + 3599: 3570 s after T0 + 30 */
	CHECK_INT(limit_used(&c, &l, T0 + 3599), 100);
	CHECK_INT(limit_used(&c, &l, T0 + 3600), 40);
	CHECK_INT(limit_used(&c, &l, T0 + 4199), 40);
	CHECK_INT(limit_used(&c, &l, T0 + 4200), 0);
	CHECK_INT(limit_window_start(&l, T0 + 3600), T0 + 60);
	CHECK_INT(limit_window_start(&l, T0 + 3659), T0 + 60);
	CHECK_INT(limit_window_start(&l, T0 + 3660), T0 + 120);
}

TEST(sliding_hour_retry_after_at_several_points)
{
	struct limit l = L("tokens:100/hour");
	struct limit_counter c;

	limit_counter_init(&c, &l, T0);
	limit_add(&c, &l, T0 + 30, 60);
	limit_add(&c, &l, T0 + 659, 40);
	CHECK_INT(limit_wait(&c, &l, T0 + 1000, 1), 2600);
	CHECK_INT(limit_wait(&c, &l, T0 + 1000, 60), 2600);
	CHECK_INT(limit_wait(&c, &l, T0 + 1000, 61), 3200);
	CHECK_INT(limit_wait(&c, &l, T0 + 3599, 1), 1);
	CHECK_INT(limit_wait(&c, &l, T0 + 3600, 60), 0);
	CHECK_INT(limit_wait(&c, &l, T0 + 3600, 61), 600);
	CHECK_INT(limit_wait(&c, &l, T0 + 4199, 61), 1);
	CHECK_INT(limit_wait(&c, &l, T0 + 1000, 101), LIMIT_NEVER);
	CHECK_INT(limit_reset_in(&c, &l, T0 + 1000), 2600);
	CHECK_INT(limit_clear_in(&c, &l, T0 + 1000), 3200);
	/* a refill in minute 60 waits for minute 10 */
	limit_add(&c, &l, T0 + 3600, 60);
	CHECK_INT(limit_wait(&c, &l, T0 + 3600, 1), 600);
}

TEST(sliding_counter_survives_a_jump_past_the_window)
{
	struct limit m = L("requests:3/min"), h = L("requests:3/hour");
	struct limit_counter cm, ch;

	limit_counter_init(&cm, &m, T0);
	limit_counter_init(&ch, &h, T0);
	limit_add(&cm, &m, T0, 3);
	limit_add(&ch, &h, T0, 3);
	/* exactly one ring later the old bucket is reused, not added to */
	limit_add(&cm, &m, T0 + 60, 1);
	CHECK_INT(limit_used(&cm, &m, T0 + 60), 1);
	limit_add(&ch, &h, T0 + 3600, 1);
	CHECK_INT(limit_used(&ch, &h, T0 + 3600), 1);
	/* years later */
	CHECK_INT(limit_used(&cm, &m, T0 + 400 * DAY), 0);
	CHECK_INT(limit_used(&ch, &h, T0 + 400 * DAY + 7), 0);
	CHECK_INT(limit_wait(&cm, &m, T0 + 400 * DAY, 3), 0);
}

TEST(calendar_day_resets_at_midnight_utc)
{
	struct limit l = L("requests:3/day");
	struct limit_counter c;
	const int64_t d0 = 1768435200;   /* 2026-01-15 00:00:00 */

	limit_counter_init(&c, &l, d0 + 10);
	limit_add(&c, &l, d0 + 10, 3);
	CHECK_INT(limit_wait(&c, &l, d0 + 10, 1), DAY - 10);
	CHECK_INT(limit_wait(&c, &l, d0 + 10, 3), DAY - 10);
	CHECK_INT(limit_wait(&c, &l, d0 + 10, 4), LIMIT_NEVER);
	CHECK_INT(limit_used(&c, &l, d0 + DAY - 1), 3);
	CHECK_INT(limit_wait(&c, &l, d0 + DAY - 1, 1), 1);
	CHECK_INT(limit_reset_in(&c, &l, d0 + DAY - 1), 1);
	CHECK_INT(limit_clear_in(&c, &l, d0 + DAY - 1), 1);
	CHECK_INT(limit_window_start(&l, d0 + DAY - 1), d0);
	CHECK_INT(limit_wait(&c, &l, d0 + DAY, 3), 0);
	CHECK_INT(limit_used(&c, &l, d0 + DAY), 0);
	CHECK_INT(limit_window_start(&l, d0 + DAY), d0 + DAY);
	CHECK_INT(limit_reset_in(&c, &l, d0 + DAY), DAY);
	CHECK_INT(limit_clear_in(&c, &l, d0 + DAY), 0);
}

/* A month limit filled at from: full up to the last second before next, empty at it. */
static void month_ends_at(int64_t from, int64_t start, int64_t next)
{
	struct limit l = L("cost:1/month");
	struct limit_counter c;

	CHECK_INT(limit_month_start(from), start);
	CHECK_INT(limit_next_month(from), next);
	CHECK_INT(limit_month_start(next - 1), start);
	CHECK_INT(limit_month_start(next), next);
	CHECK_INT(limit_window_start(&l, from), start);
	limit_counter_init(&c, &l, from);
	limit_add(&c, &l, from, 1000000000);
	CHECK_INT(limit_wait(&c, &l, from, 1), next - from);
	CHECK_INT(limit_used(&c, &l, next - 1), 1000000000);
	CHECK_INT(limit_wait(&c, &l, next - 1, 1), 1);
	CHECK_INT(limit_reset_in(&c, &l, next - 1), 1);
	CHECK_INT(limit_used(&c, &l, next), 0);
	CHECK_INT(limit_wait(&c, &l, next, 1000000000), 0);
	CHECK_INT(limit_wait(&c, &l, next, 1000000001), LIMIT_NEVER);
}

TEST(calendar_month_across_december_leap_februaries_and_30_31_day_months)
{
	/* Dec 2025 -> Jan 2026 */
	month_ends_at(1764547200 + 17 * DAY + 3, 1764547200, 1767225600);
	/* Jan (31 days) from its last day */
	month_ends_at(1769817600 + 5, 1767225600, 1769904000);
	/* Feb 2026 (28), Feb 2027 (28), Feb 2028 (leap: 29) from the 29th, Feb 2100 (not leap) */
	month_ends_at(1769904000, 1769904000, 1772323200);
	month_ends_at(1801440000 + 27 * DAY + 86399, 1801440000, 1803859200);
	month_ends_at(1835395200 + 43200, 1832976000, 1835481600);
	month_ends_at(4105123200 + 100, 4105123200, 4107542400);
	/* Feb 2400 (leap: divisible by 400) from the 29th */
	month_ends_at(13574563200, 13574563200 - 28 * DAY, 13574649600);
	/* April (30 days) from its 30th */
	month_ends_at(1777507200 + 3600, 1775001600, 1777593600);
	/* past 2^31 s (2038-01-19) and 2^32 s (2106-02-07) */
	month_ends_at(2147483648LL, 2145916800, 2148595200);
	month_ends_at(4294967296LL, 4294425600, 4296844800);
	/* the last month there is: its end is 10000-01-01 */
	CHECK_INT(limit_month_start(LIMIT_TIME_MAX), 253399622400);
	CHECK_INT(limit_next_month(LIMIT_TIME_MAX), 253402300800);
}

TEST(month_boundaries_agree_with_gmtime_for_every_day_1970_to_2500)
{
	int bad = 0;

	for (int64_t d = 0; d < 194000; d++) {
		time_t t = (time_t)(d * DAY + 12345);
		struct tm tm;
		int64_t start, next;

		gmtime_r(&t, &tm);
		start = (d - (tm.tm_mday - 1)) * DAY;
		tm.tm_mday = 1;
		tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
		tm.tm_mon += 1;
		next = (int64_t)timegm(&tm);
		if (limit_month_start(d * DAY + 12345) != start || limit_next_month(d * DAY + 12345) !=
		    next) {
			if (bad++ < 3)
				fprintf(stderr, "  day %lld: month %lld..%lld, expected %lld..%lld\n",
				        (long long)d, (long long)limit_month_start(d * DAY + 12345),
				        (long long)limit_next_month(d * DAY + 12345), (long long)start,
				        (long long)next);
		}
	}
	CHECK_INT(bad, 0);
}

TEST(times_outside_1970_to_9999_are_taken_as_the_nearer_end)
{
	struct limit d = L("requests:1/day"), m = L("requests:1/min");
	struct limit_counter c;

	CHECK_INT(limit_month_start(-5), 0);
	CHECK_INT(limit_next_month(-5), 31 * DAY);
	CHECK_INT(limit_window_start(&d, INT64_MIN), 0);
	CHECK_INT(limit_window_start(&d, INT64_MAX), LIMIT_TIME_MAX - DAY + 1);
	limit_counter_init(&c, &m, -100);
	CHECK_INT(limit_add(&c, &m, -100, 1), 0);
	CHECK_INT(limit_wait(&c, &m, 0, 1), 60);
	CHECK_INT(limit_add(&c, &m, INT64_MAX, 1), LIMIT_TIME_MAX);
	CHECK_INT(limit_used(&c, &m, INT64_MAX), 1);
	limit_counter_init(&c, &d, INT64_MAX);
	limit_add(&c, &d, INT64_MAX, 1);
	CHECK_INT(limit_wait(&c, &d, INT64_MAX, 1), 1);
}

TEST(adjust_settles_up_and_down_and_releases_in_the_reservations_bucket)
{
	const char *texts[] = { "tokens:1000/min", "tokens:1000/hour", "tokens:1000/day",
	                        "tokens:1000/month" };

	for (int i = 0; i < 4; i++) {
		struct limit l = L(texts[i]);
		struct limit_counter c;
		int64_t at;

		limit_counter_init(&c, &l, T0);
		at = limit_add(&c, &l, T0 + 5, 100);
		limit_add(&c, &l, T0 + 10, 50);
		limit_adjust(&c, &l, at, T0 + 20, 30);      /* the answer was longer */
		CHECK_INT(limit_used(&c, &l, T0 + 20), 180);
		limit_adjust(&c, &l, at, T0 + 21, -70);     /* and then shorter */
		CHECK_INT(limit_used(&c, &l, T0 + 21), 110);
		limit_adjust(&c, &l, at, T0 + 22, -60);     /* released: 100 + 30 - 70 - 60 */
		CHECK_INT(limit_used(&c, &l, T0 + 22), 50);
	}
}

TEST(adjust_lands_in_the_bucket_of_at_and_leaves_with_it)
{
	struct limit l = L("tokens:1000/min");
	struct limit_counter c;

	limit_counter_init(&c, &l, T0);
	limit_add(&c, &l, T0, 100);
	limit_add(&c, &l, T0 + 30, 10);
	limit_adjust(&c, &l, T0, T0 + 40, 400);
	CHECK_INT(limit_wait(&c, &l, T0 + 40, 491), 20);
	CHECK_INT(limit_wait(&c, &l, T0 + 40, 490), 0);
	CHECK_INT(limit_used(&c, &l, T0 + 59), 510);
	/* the settled 500 leave with their reservation, not 60 s after the settlement */
	CHECK_INT(limit_used(&c, &l, T0 + 60), 10);
}

TEST(adjust_after_the_reservation_aged_out_is_dropped)
{
	struct limit m = L("tokens:1000/min"), h = L("tokens:1000/hour"), d = L("tokens:1000/day"),
	             mo = L("tokens:1000/month");
	struct limit_counter c;
	const int64_t feb1 = 1769904000;

	limit_counter_init(&c, &m, T0);
	limit_add(&c, &m, T0, 100);
	limit_add(&c, &m, T0 + 30, 10);
	limit_adjust(&c, &m, T0, T0 + 60, -100);    /* a release: T0's bucket is gone */
	CHECK_INT(limit_used(&c, &m, T0 + 60), 10);
	limit_adjust(&c, &m, T0, T0 + 61, 500);     /* a settlement up: not charged now */
	CHECK_INT(limit_used(&c, &m, T0 + 61), 10);

	limit_counter_init(&c, &h, T0);
	limit_add(&c, &h, T0 + 59, 100);
	limit_add(&c, &h, T0 + 60, 10);
	limit_adjust(&c, &h, T0 + 59, T0 + 3599, 5);    /* minute 0 still in */
	CHECK_INT(limit_used(&c, &h, T0 + 3599), 115);
	limit_adjust(&c, &h, T0 + 59, T0 + 3600, -105); /* minute 0 gone */
	CHECK_INT(limit_used(&c, &h, T0 + 3600), 10);

	limit_counter_init(&c, &d, T0 + DAY - 5);
	limit_add(&c, &d, T0 + DAY - 5, 100);
	limit_add(&c, &d, T0 + DAY, 10);
	limit_adjust(&c, &d, T0 + DAY - 5, T0 + DAY + 1, 900);   /* yesterday's: dropped */
	CHECK_INT(limit_used(&c, &d, T0 + DAY + 1), 10);
	limit_adjust(&c, &d, T0 + DAY, T0 + DAY + 2, 7);         /* today's: counted */
	CHECK_INT(limit_used(&c, &d, T0 + DAY + 2), 17);

	limit_counter_init(&c, &mo, feb1 - 1);
	limit_add(&c, &mo, feb1 - 1, 100);
	limit_adjust(&c, &mo, feb1 - 1, feb1, -100);
	limit_add(&c, &mo, feb1, 1);
	CHECK_INT(limit_used(&c, &mo, feb1), 1);
}

TEST(adjust_never_takes_a_count_below_zero)
{
	const char *texts[] = { "tokens:1000/min", "tokens:1000/hour", "tokens:1000/day",
	                        "tokens:1000/month" };

	for (int i = 0; i < 4; i++) {
		struct limit l = L(texts[i]);
		struct limit_counter c;
		int64_t at;

		limit_counter_init(&c, &l, T0);
		at = limit_add(&c, &l, T0, 10);
		limit_adjust(&c, &l, at, T0 + 1, -25);
		CHECK_INT(limit_used(&c, &l, T0 + 1), 0);
		limit_adjust(&c, &l, at, T0 + 1, INT64_MIN);
		CHECK_INT(limit_used(&c, &l, T0 + 1), 0);
		/* nothing owed: the next reservation counts in full */
		limit_add(&c, &l, T0 + 2, 4);
		CHECK_INT(limit_used(&c, &l, T0 + 2), 4);
		CHECK_INT(limit_reset_in(&c, &l, T0 + 2) > 0, 1);
	}
}

TEST(adjust_at_a_later_time_than_the_counter_lands_now)
{
	struct limit l = L("tokens:1000/min");
	struct limit_counter c;

	limit_counter_init(&c, &l, T0);
	limit_add(&c, &l, T0, 5);
	limit_adjust(&c, &l, T0 + 500, T0 + 10, 7);
	CHECK_INT(limit_used(&c, &l, T0 + 10), 12);
	CHECK_INT(limit_used(&c, &l, T0 + 60), 7);
	CHECK_INT(limit_used(&c, &l, T0 + 70), 0);
}

TEST(wait_is_never_for_an_amount_above_the_limit_and_zero_for_the_limit_when_empty)
{
	const char *texts[] = { "requests:10/min", "requests:10/hour", "requests:10/day",
	                        "requests:10/month" };

	for (int i = 0; i < 4; i++) {
		struct limit l = L(texts[i]);
		struct limit_counter c;

		limit_counter_init(&c, &l, T0);
		CHECK_INT(limit_wait(&c, &l, T0, 11), LIMIT_NEVER);
		CHECK_INT(limit_wait(&c, &l, T0, INT64_MAX), LIMIT_NEVER);
		CHECK_INT(limit_wait(&c, &l, T0, 10), 0);
		CHECK_INT(limit_wait(&c, &l, T0, -3), 0);
		CHECK_INT(limit_reset_in(&c, &l, T0), i < 2 ? 0 : i == 2 ? DAY : 22 * DAY);
		limit_add(&c, &l, T0, 10);
		CHECK_INT(limit_wait(&c, &l, T0, 11), LIMIT_NEVER);
		CHECK_INT(limit_wait(&c, &l, T0, 0), 0);
		/* over the limit (a settlement above the estimate): even 0 more waits */
		limit_adjust(&c, &l, T0, T0, 1);
		CHECK(limit_wait(&c, &l, T0, 0) > 0);
		CHECK_INT(limit_add(&c, &l, T0, -5), T0);
		CHECK_INT(limit_used(&c, &l, T0), 11);
	}
}

TEST(time_going_backwards_counts_as_no_time_passed)
{
	const char *texts[] = { "requests:3/min", "requests:3/hour", "requests:3/day",
	                        "requests:3/month" };
	/* just past the end of February 2026: a day and a month boundary behind */
	const int64_t t = 1772323200 + 100;

	for (int i = 0; i < 4; i++) {
		struct limit l = L(texts[i]);
		struct limit_counter c;
		int64_t at;

		limit_counter_init(&c, &l, t - 200);
		limit_add(&c, &l, t - 200, 2);      /* before the boundary */
		at = limit_add(&c, &l, t, 1);
		/* the clock steps back 200 s, behind the boundary: what left (the minute's usage of
		 * t - 200, the day's and month's before midnight) does not come back */
		CHECK_INT(limit_used(&c, &l, t - 200), i == 1 ? 3 : 1);
		CHECK_INT(limit_add(&c, &l, t - 150, 1), t);
		CHECK_INT(limit_used(&c, &l, t - 150), i == 1 ? 4 : 2);
		/* waits are measured from the latest time seen: t's bucket leaves at t + 60 */
		if (i == 0)
			CHECK_INT(limit_wait(&c, &l, t - 1000, 2), 60);
		CHECK(limit_wait(&c, &l, t - 1000, 3) >= 1);
		CHECK(limit_reset_in(&c, &l, t - 1000) >= 1);
		/* a release of the reservation made at t still finds it */
		limit_adjust(&c, &l, at, t - 10, -1);
		CHECK_INT(limit_used(&c, &l, t - 10), i == 1 ? 3 : 1);
		/* and time going forward again works as usual */
		CHECK_INT(limit_used(&c, &l, t + 40 * DAY), 0);
	}
}

TEST(load_restores_the_current_calendar_window_only)
{
	struct limit d = L("cost:10/day"), m = L("cost:10/min");
	struct limit_counter c;
	int64_t start = limit_window_start(&d, T0 + 500);

	limit_counter_init(&c, &d, T0 + 500);
	CHECK_INT(limit_counter_load(&c, &d, start, 7000000000LL, T0 + 500), 0);
	CHECK_INT(limit_used(&c, &d, T0 + 600), 7000000000LL);
	CHECK_INT(limit_wait(&c, &d, T0 + 600, 3000000000LL), 0);
	CHECK_INT(limit_wait(&c, &d, T0 + 600, 3000000001LL), DAY - 600);
	/* yesterday's count does not come back */
	CHECK_INT(limit_counter_load(&c, &d, start - DAY, 1, T0 + 700), -1);
	CHECK_INT(limit_used(&c, &d, T0 + 700), 7000000000LL);
	/* nor one for a start that is no window's */
	CHECK_INT(limit_counter_load(&c, &d, start + 1, 1, T0 + 700), -1);
	CHECK_INT(limit_counter_load(&c, &d, start, -5, T0 + 700), 0);
	CHECK_INT(limit_used(&c, &d, T0 + 700), 0);
	/* sliding windows are not persisted */
	limit_counter_init(&c, &m, T0);
	CHECK_INT(limit_counter_load(&c, &m, limit_window_start(&m, T0), 5, T0), -1);
	CHECK_INT(limit_used(&c, &m, T0), 0);
}

TEST(a_zeroed_counter_is_an_empty_one)
{
	const char *texts[] = { "requests:3/min", "requests:3/hour", "requests:3/day",
	                        "requests:3/month" };

	for (int i = 0; i < 4; i++) {
		struct limit l = L(texts[i]);
		struct limit_counter c;

		memset(&c, 0, sizeof(c));
		CHECK_INT(limit_used(&c, &l, T0), 0);
		CHECK_INT(limit_wait(&c, &l, T0, 3), 0);
		limit_add(&c, &l, T0, 3);
		CHECK_INT(limit_used(&c, &l, T0), 3);
	}
	CHECK_INT(sizeof(struct limit_counter), 504);
}

TEST(counts_saturate_instead_of_overflowing)
{
	const char *texts[] = { "tokens:9223372036854775807/min", "tokens:9223372036854775807/hour",
	                        "tokens:9223372036854775807/day" };

	for (int i = 0; i < 3; i++) {
		struct limit l = L(texts[i]);
		struct limit_counter c;

		limit_counter_init(&c, &l, T0);
		for (int k = 0; k < 70; k++)
			limit_add(&c, &l, T0 + k, INT64_MAX - 1);
		limit_adjust(&c, &l, T0 + 69, T0 + 69, INT64_MAX);
		CHECK_INT(limit_used(&c, &l, T0 + 69), INT64_MAX);
		CHECK(limit_wait(&c, &l, T0 + 69, 1) > 0);
		CHECK_INT(limit_wait(&c, &l, T0 + 69, 0), 0);
	}
}

/* --- the property test: the counter against a model that keeps every reservation --- */

/* One reservation as the model keeps it: when it was counted and what it stands at now
 * (after settlements and releases; never below 0, as a real reservation). */
struct model_ev {
	int64_t at;
	int64_t value;
	int64_t month;          /* at's year * 12 + month, from gmtime_r */
};

struct model {
	enum limit_window window;
	int64_t limit;
	struct model_ev ev[1024];
	int n;
};

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

/* xorshift64*: fixed seed, the same run every time */
static uint64_t rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

static int64_t rnd_in(int64_t lo, int64_t hi)
{
	return lo + (int64_t)(rnd() % (uint64_t)(hi - lo + 1));
}

static int64_t month_of(int64_t t)
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	return (int64_t)(tm.tm_year + 1900) * 12 + tm.tm_mon;
}

/* Is a reservation counted at ev->at in the window at t? Written from the rules in limit.h,
 * not from the module: min [s, s + 59]; hour while t's minute is less than 60 after s's;
 * day the same UTC day; month the same UTC month by gmtime. tmonth is month_of(t). */
static int in_window(const struct model *m, const struct model_ev *ev, int64_t t, int64_t tmonth)
{
	if (ev->at > t)
		return 0;
	switch (m->window) {
	case LIMIT_MIN: return t - ev->at <= 59;
	case LIMIT_HOUR: return t / 60 - ev->at / 60 <= 59;
	case LIMIT_DAY: return t / DAY == ev->at / DAY;
	case LIMIT_MONTH: return tmonth == ev->month;
	}
	return 0;
}

static int64_t model_used(const struct model *m, int64_t t)
{
	int64_t sum = 0, tmonth = m->window == LIMIT_MONTH ? month_of(t) : 0;

	for (int i = 0; i < m->n; i++)
		if (in_window(m, &m->ev[i], t, tmonth))
			sum += m->ev[i].value;
	return sum;
}

/* The longest any reservation stays in the window: a wait is never longer. */
static int64_t model_horizon(const struct model *m)
{
	return m->window == LIMIT_MIN ? 60 : m->window == LIMIT_HOUR ? 3600 :
	       m->window == LIMIT_DAY ? DAY : 31 * DAY;
}

/* The first second t' >= t at which amount more fits, as t' - t. Nothing is added while
 * time passes, so the usage only falls: whether it fits is false up to some second and
 * true from then on, and a binary search over seconds finds that first second exactly. */
static int64_t model_wait(const struct model *m, int64_t t, int64_t amount)
{
	int64_t lo = t, hi = t + model_horizon(m);

	if (amount > m->limit)
		return LIMIT_NEVER;
	if (model_used(m, t) + amount <= m->limit)
		return 0;
	CHECK(model_used(m, hi) + amount <= m->limit);
	while (hi - lo > 1) {     /* lo does not fit, hi fits */
		int64_t mid = lo + (hi - lo) / 2;

		if (model_used(m, mid) + amount <= m->limit)
			hi = mid;
		else
			lo = mid;
	}
	return hi - t;
}

/* Drop reservations that have left the window at t (they never come back), but only when
 * the list is getting full, so that settlements of aged-out ones are exercised too. */
static void model_prune(struct model *m, int64_t t)
{
	int64_t tmonth = m->window == LIMIT_MONTH ? month_of(t) : 0;
	int k = 0;

	if (m->n < 200)
		return;
	for (int i = 0; i < m->n; i++)
		if (in_window(m, &m->ev[i], t, tmonth) || rnd() % 8 == 0)
			m->ev[k++] = m->ev[i];
	m->n = k;
}

/* Drive one counter and the model with the same random steps: time moves by small steps,
 * sometimes not at all, sometimes back, sometimes far ahead; reservations are made when
 * limit_wait says they fit (and sometimes regardless), settled up or down and released.
 * After every step the usage, the wait for a random amount, and the reset times must be
 * exactly the model's. */
static void run_property(const char *text, int64_t start, int64_t step_max, int steps)
{
	struct limit l = L(text);
	struct limit_counter c;
	struct model *m = calloc(1, sizeof(*m));
	int64_t t = start, seen = start;
	int bad = 0, waited = 0, admitted = 0, live_adjusts = 0, aged_adjusts = 0;

	m->window = l.window;
	m->limit = l.amount;
	limit_counter_init(&c, &l, t);
	for (int step = 0; step < steps && bad < 5; step++) {
		uint64_t r = rnd() % 100;
		int64_t now, eff, amount, got, want;

		if (r < 70)
			t += rnd_in(0, step_max);
		else if (r < 80)
			;
		else if (r < 95)
			t -= rnd_in(1, 3 * step_max);
		else
			t += rnd_in(model_horizon(m) / 2, 2 * model_horizon(m));
		now = t;
		eff = now > seen ? now : seen;

		r = rnd() % 100;
		if (r < 50) {
			amount = rnd_in(1, m->limit / 3);
			got = limit_wait(&c, &l, now, amount);
			want = model_wait(m, eff, amount);
			if (got != want && bad++ < 5)
				fprintf(stderr, "  %s step %d t %lld: wait(%lld) %lld, model %lld\n", text,
				        step, (long long)eff, (long long)amount, (long long)got,
				        (long long)want);
			waited += got > 0;
			if ((got == 0 || rnd() % 20 == 0) && m->n < 1024) {
				int64_t at = limit_add(&c, &l, now, amount);

				CHECK_INT(at, eff);
				m->ev[m->n].at = at;
				m->ev[m->n].value = amount;
				m->ev[m->n].month = month_of(at);
				m->n++;
				admitted++;
			}
		} else if (r < 85 && m->n > 0) {
			/* mostly one of the latest reservations (likely still in the window), else any */
			int pick = rnd() % 4 ? m->n - 1 - (int)(rnd() % (uint64_t)(m->n < 20 ? m->n : 20))
			                     : (int)(rnd() % (uint64_t)m->n);
			struct model_ev *ev = &m->ev[pick];
			/* settled: up to twice the estimate and a bit, or down to nothing; or released */
			int64_t actual = r < 75 ? rnd_in(0, 2 * ev->value + 5) : 0;

			if (in_window(m, ev, eff, m->window == LIMIT_MONTH ? month_of(eff) : 0))
				live_adjusts++;
			else
				aged_adjusts++;
			limit_adjust(&c, &l, ev->at, now, actual - ev->value);
			ev->value = actual;
		} else {
			/* a time check only */
			limit_used(&c, &l, now);
		}
		seen = eff > seen ? eff : seen;

		got = limit_used(&c, &l, now);
		want = model_used(m, eff);
		if (got != want && bad++ < 5)
			fprintf(stderr, "  %s step %d t %lld: used %lld, model %lld\n", text, step,
			        (long long)eff, (long long)got, (long long)want);
		amount = rnd_in(0, m->limit + 2);
		got = limit_wait(&c, &l, now, amount);
		want = model_wait(m, eff, amount);
		if (got != want && bad++ < 5)
			fprintf(stderr, "  %s step %d t %lld: wait(%lld) %lld, model %lld\n", text, step,
			        (long long)eff, (long long)amount, (long long)got, (long long)want);
		/* the reset times: when the oldest and the newest counted usage leave, i.e. the
		 * first second at which usage falls below what it is, and the first it is 0 */
		if (l.window == LIMIT_MIN || l.window == LIMIT_HOUR) {
			int64_t u = model_used(m, eff);

			want = u == 0 ? 0 : model_wait(m, eff, m->limit - u + 1);
			CHECK_INT(limit_reset_in(&c, &l, now), want);
			want = u == 0 ? 0 : model_wait(m, eff, m->limit);
			CHECK_INT(limit_clear_in(&c, &l, now), want);
		}
		model_prune(m, eff);
	}
	CHECK_INT(bad, 0);
	/* the run did what it is for: it filled the limit, made callers wait, admitted many and
	 * settled reservations both in the window and after they had aged out */
	CHECK(waited > steps / 20);
	CHECK(admitted > steps / 20);
	CHECK(live_adjusts > steps / 20);
	CHECK(aged_adjusts > steps / 20);
	free(m);
}

TEST(property_minute_window_matches_a_model_of_every_reservation)
{
	run_property("tokens:100/min", 2147483000LL, 4, 100000);
}

TEST(property_hour_window_matches_a_model_of_every_reservation)
{
	run_property("tokens:100/hour", 2147483000LL, 150, 100000);
}

TEST(property_day_window_matches_a_model_of_every_reservation)
{
	run_property("tokens:100/day", 1829000000LL, 3500, 100000);
}

TEST(property_month_window_matches_a_model_of_every_reservation)
{
	/* from late 2027, by steps of up to ~1.2 days: across 2028's leap February, the 30- and
	 * 31-day months, year ends and 2038, for some 150 years */
	run_property("cost:0.0000001/month", 1825000000LL, 100000, 100000);
}

RUN_TESTS()
