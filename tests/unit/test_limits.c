/* Spend-control limits: their text (every form and every mistake), and their counters
 * driven by a fake clock (plain integers of Unix seconds). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "limit.h"
#include "unit.h"

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

RUN_TESTS()
