/* Address ranges (cidr.c): what parses, what matches, IPv4-mapped IPv6 clients. */
#include <string.h>

#include "cidr.h"
#include "unit.h"

static bool in(const char *range, const char *ip)
{
	struct cidr c;

	if (cidr_parse(range, &c) < 0)
		return false;
	return cidr_match(&c, 1, ip);
}

TEST(ranges_parse_and_mistakes_are_refused)
{
	struct cidr c;
	const char *bad[] = { "", "/8", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0/8",
	                      "10.0.0.1/8", "::1/129", "fe80::/10x", "example.com", "10.0.0.0/8 ",
	                      " 10.0.0.0/8", "2001:db8::1/32", NULL };

	CHECK_INT(cidr_parse("10.0.0.0/8", &c), 0);
	CHECK_INT(c.bits, 8);
	CHECK_INT(cidr_parse("127.0.0.1", &c), 0);
	CHECK_INT(c.bits, 32);
	CHECK_INT(cidr_parse("2001:db8::/32", &c), 0);
	CHECK_INT(c.bits, 128 - 96);
	CHECK_INT(cidr_parse("::/0", &c), 0);
	CHECK_INT(cidr_parse("0.0.0.0/0", &c), 0);
	for (int i = 0; bad[i]; i++)
		if (cidr_parse(bad[i], &c) == 0) {
			fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
			CHECK(0);
		}
}

TEST(addresses_match_their_ranges_only)
{
	CHECK(in("10.0.0.0/8", "10.255.1.2"));
	CHECK(!in("10.0.0.0/8", "11.0.0.1"));
	CHECK(in("192.168.4.0/22", "192.168.7.255"));
	CHECK(!in("192.168.4.0/22", "192.168.8.0"));
	CHECK(in("127.0.0.1", "127.0.0.1"));
	CHECK(!in("127.0.0.1", "127.0.0.2"));
	CHECK(in("0.0.0.0/0", "8.8.8.8"));
	CHECK(in("2001:db8::/32", "2001:db8:ffff::1"));
	CHECK(!in("2001:db8::/32", "2001:db9::1"));
	CHECK(in("::1", "::1"));
	/* a dual-stack socket's IPv4 client is an IPv4 address */
	CHECK(in("10.0.0.0/8", "::ffff:10.1.2.3"));
	CHECK(!in("::/0", "10.1.2.3"));
	CHECK(!in("10.0.0.0/8", "not an address"));
	CHECK(!in("10.0.0.0/8", NULL));
}

TEST(a_list_matches_any_of_its_ranges)
{
	struct cidr l[2];

	CHECK_INT(cidr_parse("10.0.0.0/8", &l[0]), 0);
	CHECK_INT(cidr_parse("fd00::/8", &l[1]), 0);
	CHECK(cidr_match(l, 2, "10.9.9.9"));
	CHECK(cidr_match(l, 2, "fd12::1"));
	CHECK(!cidr_match(l, 2, "192.0.2.1"));
	CHECK(!cidr_match(l, 0, "10.9.9.9"));
}

/* The text a key's allow_ips is stored and shown in: canonical, and read back the same. */
TEST(a_range_formats_to_text_that_parses_back_to_it)
{
	const char *cases[][2] = { { "10.0.0.0/8", "10.0.0.0/8" }, { "192.168.1.7", "192.168.1.7" },
	                           { "192.168.1.7/32", "192.168.1.7" },
	                           { "2001:DB8:0:0::/32", "2001:db8::/32" }, { "::1", "::1" },
	                           { "0.0.0.0/0", "0.0.0.0/0" } };
	char buf[CIDR_TEXT_MAX];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct cidr c, again;

		CHECK_INT(cidr_parse(cases[i][0], &c), 0);
		CHECK_STR(cidr_format(&c, buf, sizeof(buf)), cases[i][1]);
		CHECK_INT(cidr_parse(buf, &again), 0);
		CHECK(memcmp(&c, &again, sizeof(c)) == 0);
	}
}

RUN_TESTS()
