/* util.c helpers on the request path: fmt_dec (lengths in forwarded heads). */
#include <stdint.h>
#include <string.h>

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
	/* no terminator: the byte after the digits is left alone */
	CHECK_INT(fmt_dec(out, 42), 2);
	CHECK(out[0] == '4' && out[1] == '2' && out[2] == 'c');
}

RUN_TESTS()
