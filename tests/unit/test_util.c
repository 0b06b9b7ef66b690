/* util.c helpers on the request path: fmt_dec (lengths in forwarded heads); util.h's
 * HNAME_IS (the stripped and skipped header names). */
#include <stdint.h>
#include <string.h>

#include "httperr.h"
#include "unit.h"
#include "util.h"

static void check_dec(uint64_t n, const char *want)
{
	char out[21];
	size_t k;

	memset(out, 'x', sizeof(out));
	k = fmt_dec(out, n);
	out[k < sizeof(out) ? k : sizeof(out) - 1] = '\0';
	CHECK_INT(k, strlen(want));
	CHECK_STR(out, want);
}

TEST(fmt_dec_writes_every_digit_and_nothing_more)
{
	char out[4] = "abc";

	check_dec(0, "0");
	check_dec(7, "7");
	check_dec(10, "10");
	check_dec(303, "303");
	check_dec(1234567890, "1234567890");
	check_dec(UINT64_MAX, "18446744073709551615");
	/* each side of every power of ten (the digit count is found before the digits) */
	for (uint64_t p = 10, k = 2; k <= 20; k++, p = k <= 20 ? p * 10 : p) {
		char want[24];

		snprintf(want, sizeof(want), "%llu", (unsigned long long)(p - 1));
		check_dec(p - 1, want);
		snprintf(want, sizeof(want), "%llu", (unsigned long long)p);
		check_dec(p, want);
	}
	/* digits two at a time: every length and every pair against snprintf */
	for (uint64_t n = 0, step = 1; n < UINT64_MAX / 3; n += step, step += step / 7 + 1) {
		char want[24];

		snprintf(want, sizeof(want), "%llu", (unsigned long long)n);
		check_dec(n, want);
	}
	/* no terminator: the byte after the digits is left alone */
	CHECK_INT(fmt_dec(out, 42), 2);
	CHECK(out[0] == '4' && out[1] == '2' && out[2] == 'c');
}

TEST(gateway_errors_in_openais_and_anthropics_shapes)
{
	char b[640];
	size_t n;

	n = httperr_body(b, sizeof(b), 401, "invalid_api_key", "invalid \"API\" key");
	CHECK_STR(b, "{\"error\":{\"message\":\"invalid \\\"API\\\" key\",\"type\":\"authentication_error\",\"code\":\"invalid_api_key\"}}");
	CHECK_INT(n, strlen(b));
	n = httperr_body_anthropic(b, sizeof(b), 429, "rate_limited", "slow down");
	CHECK_STR(b, "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"slow down\",\"code\":\"rate_limited\"}}");
	CHECK_INT(n, strlen(b));
	httperr_body_anthropic(b, sizeof(b), 503, "upstream_unavailable", "m");
	CHECK(strstr(b, "\"type\":\"api_error\"") != NULL);
	httperr_body_anthropic(b, sizeof(b), 400, "invalid_json", "m");
	CHECK(strstr(b, "\"type\":\"invalid_request_error\"") != NULL);
	/* truncated safely */
	n = httperr_body_anthropic(b, 16, 401, "x", "y");
	CHECK_INT(n, 15);
	CHECK_INT(strlen(b), 15);
}

/* The whole name, in any case; never a name of another length, nor one whose first byte
 * is not the literal's letter in either case (| 0x20 folds '@' onto '`', never onto a
 * letter). */
TEST(hname_is_matches_the_whole_name_in_any_case)
{
	CHECK(HNAME_IS("host", 4, "host"));
	CHECK(HNAME_IS("HOST", 4, "host"));
	CHECK(HNAME_IS("hOsT", 4, "host"));
	CHECK(HNAME_IS("Content-Length", 14, "content-length"));
	CHECK(!HNAME_IS("hos", 3, "host"));
	CHECK(!HNAME_IS("hostx", 5, "host"));
	CHECK(!HNAME_IS("host", 3, "host"));
	CHECK(!HNAME_IS("iost", 4, "host"));
	CHECK(!HNAME_IS("Gost", 4, "host"));
	CHECK(!HNAME_IS("(ost", 4, "host"));
	CHECK(!HNAME_IS("hosu", 4, "host"));
	CHECK(!HNAME_IS("Content_Length", 14, "content-length"));
	CHECK(!HNAME_IS("Content\rLength", 14, "content-length"));
	CHECK(HNAME_IS("TE", 2, "te"));
	CHECK(!HNAME_IS("TF", 2, "te"));
}

RUN_TESTS()
