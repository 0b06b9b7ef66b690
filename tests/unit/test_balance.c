/* Target selection for a route's pool (balance.c): each balancer's distribution, smooth
 * weighted order, priority tiers, and the targets a request already tried. */
#include <stdlib.h>

#include "balance.h"
#include "unit.h"

static void targets(struct balance_target *t, size_t n, const int *weights)
{
	for (size_t i = 0; i < n; i++)
		t[i] = (struct balance_target){ .weight = weights[i], .available = true };
}

/* Picks over `rounds`, counted per target. */
static void count(enum balance_kind kind, struct balance_target *t, size_t n, int rounds,
                  int *counts)
{
	struct balancer b;

	balance_init(&b, kind, 42);
	for (size_t i = 0; i < n; i++)
		counts[i] = 0;
	for (int r = 0; r < rounds; r++) {
		int i = balance_pick(&b, t, n, 0);
		if (i >= 0)
			counts[i]++;
	}
}

/* Within 3% of the share its weight asks for. */
static void check_shares(const int *counts, const int *weights, size_t n, int rounds)
{
	int total = 0;

	for (size_t i = 0; i < n; i++)
		total += weights[i];
	for (size_t i = 0; i < n; i++) {
		double want = (double)rounds * weights[i] / total;
		CHECK(counts[i] >= want * 0.97 && counts[i] <= want * 1.03);
		if (!(counts[i] >= want * 0.97 && counts[i] <= want * 1.03))
			fprintf(stderr, "  target %zu: %d picks, want %.0f\n", i, counts[i], want);
	}
}

TEST(weighted_follows_the_weights_within_3_percent_over_10000_picks)
{
	static const int w[] = { 5, 3, 2 };
	struct balance_target t[3];
	int c[3];

	targets(t, 3, w);
	count(BALANCE_WEIGHTED, t, 3, 10000, c);
	check_shares(c, w, 3, 10000);
}

TEST(weighted_is_smooth_as_nginx_no_burst_of_one_target)
{
	static const int w[] = { 5, 1, 1 };
	static const int want[] = { 0, 0, 1, 0, 2, 0, 0 };   /* a a b a c a a */
	struct balance_target t[3];
	struct balancer b;

	targets(t, 3, w);
	balance_init(&b, BALANCE_WEIGHTED, 1);
	for (int round = 0; round < 3; round++)
		for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
			CHECK_INT(balance_pick(&b, t, 3, 0), want[i]);
}

TEST(random_follows_the_weights_within_3_percent_over_10000_picks)
{
	static const int w[] = { 3, 1 };
	struct balance_target t[2];
	int c[2];

	targets(t, 2, w);
	count(BALANCE_RANDOM, t, 2, 10000, c);
	check_shares(c, w, 2, 10000);
}

TEST(round_robin_takes_turns)
{
	static const int w[] = { 1, 1, 1 };
	struct balance_target t[3];
	struct balancer b;

	targets(t, 3, w);
	balance_init(&b, BALANCE_ROUND_ROBIN, 1);
	for (int i = 0; i < 9; i++)
		CHECK_INT(balance_pick(&b, t, 3, 0), i % 3);
	t[1].available = false;   /* skipped, and the turn goes on */
	CHECK_INT(balance_pick(&b, t, 3, 0), 0);
	CHECK_INT(balance_pick(&b, t, 3, 0), 2);
	CHECK_INT(balance_pick(&b, t, 3, 0), 0);
}

TEST(least_inflight_never_picks_the_busier_of_two)
{
	static const int w[] = { 1, 1, 1 };
	struct balance_target t[3];
	int c[3];

	targets(t, 3, w);
	t[0].inflight = 10;
	count(BALANCE_LEAST_INFLIGHT, t, 3, 1000, c);
	CHECK_INT(c[0], 0);   /* any pair it is in has a less busy member */
	CHECK(c[1] > 400 && c[2] > 400);
	/* weight 2 carries twice the load for the same cost */
	t[0].inflight = 2;
	t[0].weight = 2;
	t[1].inflight = 2;
	t[2].inflight = 2;
	count(BALANCE_LEAST_INFLIGHT, t, 3, 1000, c);
	CHECK(c[0] > c[1] && c[0] > c[2]);
}

TEST(latency_prefers_the_faster_target_and_tries_one_with_no_sample)
{
	static const int w[] = { 1, 1 };
	struct balance_target t[2];
	int c[2];

	targets(t, 2, w);
	for (int i = 0; i < 20; i++) {
		balance_observe(&t[0], 100);
		balance_observe(&t[1], 10);
	}
	CHECK(t[0].ewma_ms > 99 && t[0].ewma_ms < 101);
	count(BALANCE_LATENCY, t, 2, 100, c);
	CHECK_INT(c[1], 100);
	t[1].ewma_ms = 0;          /* no sample yet: costs nothing */
	t[0].ewma_ms = 5;
	count(BALANCE_LATENCY, t, 2, 100, c);
	CHECK_INT(c[1], 100);
	/* the latency average moves toward new samples, not by jumps */
	balance_observe(&t[0], 1000);
	CHECK(t[0].ewma_ms > 5 && t[0].ewma_ms < 500);
}

TEST(a_backup_tier_serves_only_while_no_primary_can)
{
	static const enum balance_kind kinds[] = { BALANCE_ROUND_ROBIN, BALANCE_WEIGHTED,
		BALANCE_LEAST_INFLIGHT, BALANCE_LATENCY, BALANCE_RANDOM };
	static const int w[] = { 1, 1, 1 };

	for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
		struct balance_target t[3];
		int c[3];

		targets(t, 3, w);
		t[2].priority = 1;               /* the backup */
		t[0].available = false;          /* one primary down: the other serves */
		count(kinds[k], t, 3, 200, c);
		CHECK_INT(c[1], 200);
		CHECK_INT(c[2], 0);
		t[1].available = false;          /* no primary left: the backup */
		count(kinds[k], t, 3, 200, c);
		CHECK_INT(c[2], 200);
	}
}

TEST(a_retry_never_picks_a_target_the_request_tried)
{
	static const enum balance_kind kinds[] = { BALANCE_ROUND_ROBIN, BALANCE_WEIGHTED,
		BALANCE_LEAST_INFLIGHT, BALANCE_LATENCY, BALANCE_RANDOM };
	static const int w[] = { 4, 1, 1, 2 };

	for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
		struct balance_target t[4];
		struct balancer b;

		targets(t, 4, w);
		t[3].priority = 1;
		balance_init(&b, kinds[k], 7);
		for (int req = 0; req < 200; req++) {
			uint64_t tried = 0;
			int picks = 0, i;

			/* every target once, the backup tier last, then nothing */
			while ((i = balance_pick(&b, t, 4, tried)) >= 0) {
				CHECK(!(tried >> i & 1));
				CHECK(i != 3 || (tried & 7) == 7);
				tried |= 1ULL << i;
				picks++;
			}
			CHECK_INT(picks, 4);
		}
	}
}

TEST(no_available_target_is_no_pick)
{
	static const int w[] = { 1, 1 };
	struct balance_target t[2];
	struct balancer b;

	targets(t, 2, w);
	t[0].available = t[1].available = false;
	balance_init(&b, BALANCE_WEIGHTED, 3);
	CHECK_INT(balance_pick(&b, t, 2, 0), -1);
	CHECK_INT(balance_pick(&b, t, 0, 0), -1);
}

TEST(balance_names_parse_both_ways)
{
	enum balance_kind k;

	CHECK_INT(balance_kind_parse("least_inflight", &k), 0);
	CHECK_INT(k, BALANCE_LEAST_INFLIGHT);
	CHECK_STR(balance_kind_name(k), "least_inflight");
	CHECK_INT(balance_kind_parse("fastest", &k), -1);
}

RUN_TESTS()
