/* The per-address count of failed authentications (authfail.c), on a fake clock in
 * milliseconds: the window, the addresses (IPv4, IPv6 /64s, mapped, loopback), and the
 * cap on how many are held. */
#include <stdio.h>
#include <string.h>

#include "authfail.h"
#include "unit.h"

#define WIN 60000   /* 20/min, the default */

static void fail_n(struct authfail *af, const char *ip, int n, int64_t now)
{
	for (int i = 0; i < n; i++)
		authfail_count(af, ip, WIN, now);
}

TEST(an_address_is_refused_from_its_limit_to_the_end_of_its_window)
{
	struct authfail *af = authfail_new(AUTHFAIL_CAP);

	fail_n(af, "203.0.113.7", 19, 1000);
	CHECK_INT(authfail_wait(af, "203.0.113.7", 20, WIN, 1500), 0);
	/* the count says which failure this one is: the 20th is within a limit of 20 */
	CHECK_INT(authfail_count(af, "203.0.113.7", WIN, 2000), 20);
	/* the window started at the first failure, 1000: it ends at 61000 */
	CHECK_INT(authfail_wait(af, "203.0.113.7", 20, WIN, 2000), 59000);
	CHECK_INT(authfail_wait(af, "203.0.113.7", 20, WIN, 60999), 1);
	CHECK_INT(authfail_wait(af, "203.0.113.7", 20, WIN, 61000), 0);
	/* one more that passed authfail_wait before the 20th was counted (another loop's
	 * request) is the 21st: past the limit, the caller answers it 429 */
	CHECK_INT(authfail_count(af, "203.0.113.7", WIN, 2001), 21);
	CHECK_INT(authfail_count(af, "127.0.0.1", WIN, 2001), 0);
	/* a lower limit (a reload) applies to what was counted */
	CHECK_INT(authfail_wait(af, "203.0.113.7", 5, WIN, 30000), 31000);
	authfail_free(af);
}

TEST(a_failure_after_the_window_starts_a_new_one)
{
	struct authfail *af = authfail_new(16);

	fail_n(af, "198.51.100.1", 3, 0);
	CHECK(authfail_wait(af, "198.51.100.1", 3, WIN, 100) > 0);
	authfail_count(af, "198.51.100.1", WIN, WIN + 5);
	CHECK_INT(authfail_wait(af, "198.51.100.1", 3, WIN, WIN + 6), 0);
	fail_n(af, "198.51.100.1", 2, WIN + 10);
	CHECK_INT(authfail_wait(af, "198.51.100.1", 3, WIN, WIN + 11), WIN - 6);
	CHECK_INT(authfail_size(af), 1);
	authfail_free(af);
}

TEST(addresses_count_apart_ipv4_ipv6_by_64_and_mapped_as_ipv4)
{
	struct authfail *af = authfail_new(AUTHFAIL_CAP);

	fail_n(af, "192.0.2.1", 2, 0);
	CHECK(authfail_wait(af, "192.0.2.1", 2, WIN, 1) > 0);
	CHECK_INT(authfail_wait(af, "192.0.2.2", 2, WIN, 1), 0);
	/* a dual-stack socket's IPv4 client is the same client */
	CHECK(authfail_wait(af, "::ffff:192.0.2.1", 2, WIN, 1) > 0);
	/* IPv6: a /64 is one client, the next /64 another */
	authfail_count(af, "2001:db8:1:2::5", WIN, 0);
	authfail_count(af, "2001:db8:1:2:ffff::9", WIN, 0);
	CHECK(authfail_wait(af, "2001:db8:1:2::77", 2, WIN, 1) > 0);
	CHECK_INT(authfail_wait(af, "2001:db8:1:3::5", 2, WIN, 1), 0);
	CHECK_INT(authfail_wait(af, "2001:db8:1:2::5", 3, WIN, 1), 0);
	CHECK_INT(authfail_size(af), 2);
	authfail_free(af);
}

TEST(loopback_clients_are_never_counted)
{
	struct authfail *af = authfail_new(AUTHFAIL_CAP);
	const char *local[] = { "127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1" };

	for (size_t i = 0; i < sizeof(local) / sizeof(local[0]); i++) {
		fail_n(af, local[i], 50, 0);
		CHECK_INT(authfail_wait(af, local[i], 1, WIN, 1), 0);
	}
	CHECK_INT(authfail_size(af), 0);
	/* ::2 and 128.0.0.1 are not loopback */
	authfail_count(af, "::2", WIN, 0);
	authfail_count(af, "128.0.0.1", WIN, 0);
	CHECK_INT(authfail_size(af), 2);
	authfail_free(af);
}

TEST(a_full_table_gives_up_the_address_whose_window_started_first)
{
	struct authfail *af = authfail_new(4);
	char ip[32];

	for (int i = 1; i <= 4; i++) {
		snprintf(ip, sizeof(ip), "10.0.0.%d", i);
		authfail_count(af, ip, WIN, i);
	}
	/* a later failure does not make an address younger: its window is as old as it was */
	authfail_count(af, "10.0.0.1", WIN, 5);
	authfail_count(af, "10.0.0.5", WIN, 6);
	CHECK_INT(authfail_size(af), 4);
	CHECK_INT(authfail_wait(af, "10.0.0.1", 1, WIN, 7), 0);
	CHECK(authfail_wait(af, "10.0.0.2", 1, WIN, 7) > 0);
	CHECK(authfail_wait(af, "10.0.0.5", 1, WIN, 7) > 0);
	/* past its window an address starts again, and is then the youngest */
	authfail_count(af, "10.0.0.1", WIN, WIN + 1);
	authfail_count(af, "10.0.0.6", WIN, WIN + 1);
	CHECK(authfail_wait(af, "10.0.0.1", 1, WIN, WIN + 2) > 0);
	CHECK(authfail_wait(af, "10.0.0.6", 1, WIN, WIN + 2) > 0);
	CHECK_INT(authfail_size(af), 4);
	authfail_free(af);
}

/* A client rotating through source addresses: the table never holds more than its cap,
 * and the addresses it holds are the newest, still refused. */
TEST(rotating_addresses_never_grow_the_table_past_its_cap)
{
	struct authfail *af = authfail_new(1000);
	char ip[48];
	size_t most = 0;

	for (int i = 0; i < 100000; i++) {
		snprintf(ip, sizeof(ip), "2001:db8:%x:%x::1", i >> 16, i & 0xffff);
		authfail_count(af, ip, WIN, i / 100);
		if (authfail_size(af) > most)
			most = authfail_size(af);
	}
	CHECK_INT(most, 1000);
	CHECK(authfail_wait(af, "2001:db8:1:869f::1", 1, WIN, 1000) > 0);   /* the last */
	CHECK_INT(authfail_wait(af, "2001:db8:0:0::1", 1, WIN, 1000), 0);   /* long gone */
	authfail_free(af);
}

/* Growing the table (64, 128, ... entries) keeps every address it holds. */
TEST(every_address_survives_the_table_growing)
{
	struct authfail *af = authfail_new(AUTHFAIL_CAP);
	char ip[32];
	int lost = 0;

	for (int i = 0; i < 3000; i++) {
		snprintf(ip, sizeof(ip), "100.64.%d.%d", i / 250, i % 250);
		fail_n(af, ip, 2, 10);
	}
	CHECK_INT(authfail_size(af), 3000);
	for (int i = 0; i < 3000; i++) {
		snprintf(ip, sizeof(ip), "100.64.%d.%d", i / 250, i % 250);
		lost += authfail_wait(af, ip, 2, WIN, 20) != WIN - 10;
	}
	CHECK_INT(lost, 0);
	authfail_free(af);
}

/* Expired addresses leave the table as later failures come, a few at a time. */
TEST(expired_addresses_are_let_go)
{
	struct authfail *af = authfail_new(AUTHFAIL_CAP);
	char ip[32];

	for (int i = 0; i < 100; i++) {
		snprintf(ip, sizeof(ip), "172.16.0.%d", i);
		authfail_count(af, ip, WIN, 0);
	}
	CHECK_INT(authfail_size(af), 100);
	for (int i = 0; i < 10; i++)
		authfail_count(af, "172.17.0.1", WIN, WIN + i);
	CHECK_INT(authfail_size(af), 1);
	CHECK_INT(authfail_wait(af, "172.16.0.5", 1, WIN, WIN + 20), 0);
	/* and their places are used again: still one entry per address */
	for (int i = 0; i < 100; i++) {
		snprintf(ip, sizeof(ip), "172.18.0.%d", i);
		authfail_count(af, ip, WIN, WIN + 30);
	}
	CHECK_INT(authfail_size(af), 101);
	authfail_free(af);
}

/* An address found past its window (the trimming above has not reached it yet) starts a
 * new one from that failure, and moves to the young end: the older ones go first. */
TEST(an_address_past_its_window_restarts_and_is_youngest)
{
	struct authfail *af = authfail_new(24);
	char ip[32];

	for (int i = 0; i < 20; i++) {
		snprintf(ip, sizeof(ip), "10.1.0.%d", i);
		authfail_count(af, ip, WIN, 0);
	}
	fail_n(af, "10.2.0.1", 3, 1);
	authfail_count(af, "10.2.0.1", WIN, WIN + 1);   /* frees 16 of the 20, restarts this */
	CHECK_INT(authfail_size(af), 5);
	CHECK(authfail_wait(af, "10.2.0.1", 1, WIN, WIN + 2) > 0);
	CHECK_INT(authfail_wait(af, "10.2.0.1", 2, WIN, WIN + 2), 0);
	/* the four left of the 20 go with the next failures; 23 more fill the table */
	for (int i = 0; i < 23; i++) {
		snprintf(ip, sizeof(ip), "10.3.0.%d", i);
		authfail_count(af, ip, WIN, WIN + 3);
	}
	CHECK_INT(authfail_size(af), 24);
	CHECK(authfail_wait(af, "10.2.0.1", 1, WIN, WIN + 4) > 0);
	authfail_count(af, "10.4.0.1", WIN, WIN + 5);
	CHECK_INT(authfail_size(af), 24);
	CHECK_INT(authfail_wait(af, "10.2.0.1", 1, WIN, WIN + 6), 0);   /* now the oldest */
	CHECK(authfail_wait(af, "10.3.0.0", 1, WIN, WIN + 6) > 0);
	authfail_free(af);
}

RUN_TESTS()
