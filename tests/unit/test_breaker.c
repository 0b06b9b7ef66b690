/* The circuit breaker of one target, driven by a fake clock: when it opens, how long it
 * stays open, the one probe of half-open, Retry-After, health checks, and clocks that jump
 * far ahead or step back. */
#include <stdint.h>
#include <string.h>

#include "breaker.h"
#include "unit.h"

/* The fake clock's start: well above 0, on a second boundary (second 1000) */
#define T0 1000000

/* Let one request through at now and report it failed; true if the state changed. */
static bool fail_at(struct breaker *b, const struct breaker_cfg *c, int64_t now)
{
	enum breaker_pass p = breaker_allow(b, now, NULL);

	CHECK(p == BREAKER_PASS);
	return breaker_failure(b, c, now, p);
}

static void succeed_at(struct breaker *b, int64_t now)
{
	enum breaker_pass p = breaker_allow(b, now, NULL);

	CHECK(p == BREAKER_PASS);
	CHECK(!breaker_success(b, now, p));
}

/* A breaker opened by `failures` failures at now, with the defaults. */
static void open_at(struct breaker *b, struct breaker_cfg *c, int64_t now)
{
	memset(b, 0, sizeof(*b));
	breaker_cfg_defaults(c);
	for (int i = 0; i < c->failures; i++)
		fail_at(b, c, now);
	CHECK_INT(b->state, BREAKER_OPEN);
}

TEST(zeroed_breaker_with_defaults_is_closed_and_lets_requests_through)
{
	struct breaker b;
	struct breaker_cfg c;
	bool changed = true;

	memset(&b, 0, sizeof(b));
	breaker_cfg_defaults(&c);
	CHECK_INT(c.failures, 5);
	CHECK_INT(c.error_rate, 50);
	CHECK_INT(c.min_requests, 20);
	CHECK_INT(c.cooldown_s, 5);
	CHECK_INT(c.max_cooldown_s, 300);
	CHECK_INT(b.state, BREAKER_CLOSED);
	CHECK_INT(breaker_allow(&b, 0, &changed), BREAKER_PASS);
	CHECK(!changed);
	CHECK_INT(breaker_allow(&b, T0, NULL), BREAKER_PASS);
	CHECK_INT(breaker_wait_ms(&b, T0), 0);
}

TEST(opens_after_exactly_failures_consecutive_failures_not_before)
{
	struct breaker b;
	struct breaker_cfg c;

	memset(&b, 0, sizeof(b));
	breaker_cfg_defaults(&c);
	c.error_rate = 0;
	for (int i = 1; i < c.failures; i++) {
		CHECK(!fail_at(&b, &c, T0 + i));
		CHECK_INT(b.state, BREAKER_CLOSED);
	}
	CHECK(fail_at(&b, &c, T0 + 10));
	CHECK_INT(b.state, BREAKER_OPEN);
	CHECK_INT(breaker_allow(&b, T0 + 10, NULL), BREAKER_DENY);
}

TEST(a_success_between_failures_starts_the_run_again)
{
	struct breaker b;
	struct breaker_cfg c;

	memset(&b, 0, sizeof(b));
	breaker_cfg_defaults(&c);
	c.error_rate = 0;
	for (int round = 0; round < 3; round++) {
		for (int i = 1; i < c.failures; i++)
			CHECK(!fail_at(&b, &c, T0));
		succeed_at(&b, T0);
		CHECK_INT(b.consecutive, 0);
	}
	CHECK_INT(b.state, BREAKER_CLOSED);
	for (int i = 1; i < c.failures; i++)
		CHECK(!fail_at(&b, &c, T0));
	CHECK(fail_at(&b, &c, T0));
	CHECK_INT(b.state, BREAKER_OPEN);
}

TEST(failures_zero_disables_the_consecutive_trigger)
{
	struct breaker b;
	struct breaker_cfg c;

	memset(&b, 0, sizeof(b));
	breaker_cfg_defaults(&c);
	c.failures = 0;
	c.error_rate = 0;
	for (int i = 0; i < 1000; i++)
		CHECK(!fail_at(&b, &c, T0 + i));
	CHECK_INT(b.state, BREAKER_CLOSED);
}

TEST(error_rate_opens_only_once_min_requests_are_in_the_last_minute)
{
	struct breaker b;
	struct breaker_cfg c;
	int64_t now = T0;

	memset(&b, 0, sizeof(b));
	breaker_cfg_defaults(&c);
	c.failures = 0;
	/* 9 failures and 10 successes spread over 19 s: 47% of 19, below both thresholds */
	for (int i = 0; i < 19; i++, now += 1000) {
		if (i % 2)
			CHECK(!fail_at(&b, &c, now));
		else
			succeed_at(&b, now);
	}
	CHECK_INT(b.state, BREAKER_CLOSED);
	/* the 20th outcome, a failure: 10 of 20 is 50% */
	CHECK(fail_at(&b, &c, now));
	CHECK_INT(b.state, BREAKER_OPEN);
}

TEST(error_rate_below_the_threshold_keeps_it_closed)
{
	struct breaker b;
	struct breaker_cfg c;

	memset(&b, 0, sizeof(b));
	breaker_cfg_defaults(&c);
	c.failures = 0;
	/* 30 successes then 29 failures: 29 of 59 is 49% */
	for (int i = 0; i < 30; i++)
		succeed_at(&b, T0 + i * 100);
	for (int i = 0; i < 29; i++)
		CHECK(!fail_at(&b, &c, T0 + 3000 + i * 100));
	CHECK_INT(b.state, BREAKER_CLOSED);
	CHECK(fail_at(&b, &c, T0 + 6000));
	CHECK_INT(b.state, BREAKER_OPEN);
}

TEST(outcomes_leave_the_error_rate_after_60_s)
{
	struct breaker b;
	struct breaker_cfg c;

	memset(&b, 0, sizeof(b));
	breaker_cfg_defaults(&c);
	c.failures = 0;
	/* 19 failures in second 1000, one short of min_requests: one more in second 1059
	 * still makes 20 in the last minute */
	for (int i = 0; i < 19; i++)
		CHECK(!fail_at(&b, &c, T0));
	CHECK(fail_at(&b, &c, T0 + 59999));
	CHECK_INT(b.state, BREAKER_OPEN);

	/* the same in second 1060: the first 19 are a minute old and no longer count */
	memset(&b, 0, sizeof(b));
	for (int i = 0; i < 19; i++)
		CHECK(!fail_at(&b, &c, T0));
	CHECK(!fail_at(&b, &c, T0 + 60000));
	CHECK_INT(b.state, BREAKER_CLOSED);

	/* 61 s on, in another bucket than second 1000's (which still holds its 19 failures, so
	 * only their age keeps them out): 19 more stay below min_requests, the 20th opens it */
	memset(&b, 0, sizeof(b));
	for (int i = 0; i < 19; i++)
		CHECK(!fail_at(&b, &c, T0));
	for (int i = 0; i < 19; i++)
		CHECK(!fail_at(&b, &c, T0 + 61000));
	CHECK_INT(b.state, BREAKER_CLOSED);
	CHECK(fail_at(&b, &c, T0 + 61000 + 58999));
	CHECK_INT(b.state, BREAKER_OPEN);
}

TEST(open_breaker_refuses_until_the_cooldown_ends_then_lets_one_probe)
{
	struct breaker b;
	struct breaker_cfg c;
	bool changed = false;

	open_at(&b, &c, T0);
	CHECK_INT(breaker_allow(&b, T0 + 4999, &changed), BREAKER_DENY);
	CHECK(!changed);
	CHECK_INT(b.state, BREAKER_OPEN);
	CHECK_INT(breaker_allow(&b, T0 + 5000, &changed), BREAKER_PROBE);
	CHECK(changed);
	CHECK_INT(b.state, BREAKER_HALF_OPEN);
	for (int i = 0; i < 10; i++) {
		CHECK_INT(breaker_allow(&b, T0 + 5000 + i * 1000, &changed), BREAKER_DENY);
		CHECK(!changed);
	}
}

TEST(an_abandoned_probe_lets_another_through)
{
	struct breaker b;
	struct breaker_cfg c;
	enum breaker_pass p;

	open_at(&b, &c, T0);
	p = breaker_allow(&b, T0 + 5000, NULL);
	CHECK_INT(p, BREAKER_PROBE);
	CHECK_INT(breaker_allow(&b, T0 + 5001, NULL), BREAKER_DENY);
	breaker_abandoned(&b, p);
	CHECK_INT(b.state, BREAKER_HALF_OPEN);
	p = breaker_allow(&b, T0 + 5002, NULL);
	CHECK_INT(p, BREAKER_PROBE);
	CHECK_INT(breaker_allow(&b, T0 + 5003, NULL), BREAKER_DENY);
	/* an abandoned ordinary request does not free the probe slot */
	breaker_abandoned(&b, BREAKER_PASS);
	CHECK_INT(breaker_allow(&b, T0 + 5004, NULL), BREAKER_DENY);
	CHECK(breaker_success(&b, T0 + 5005, p));
	CHECK_INT(b.state, BREAKER_CLOSED);
}

TEST(failed_probes_double_the_cooldown_up_to_max_cooldown)
{
	struct breaker b;
	struct breaker_cfg c;
	int64_t now = T0, want = 5000;
	static const int64_t seq[] = { 10000, 20000, 40000, 80000, 160000, 300000, 300000 };

	open_at(&b, &c, now);
	CHECK_INT(b.open_until_ms, now + want);
	for (size_t i = 0; i < sizeof(seq) / sizeof(seq[0]); i++) {
		enum breaker_pass p;

		now += want;
		p = breaker_allow(&b, now, NULL);
		CHECK_INT(p, BREAKER_PROBE);
		CHECK(breaker_failure(&b, &c, now, p));
		want = seq[i];
		CHECK_INT(b.state, BREAKER_OPEN);
		CHECK_INT(b.open_until_ms, now + want);
		CHECK_INT(breaker_allow(&b, now + want - 1, NULL), BREAKER_DENY);
	}
}

TEST(a_successful_probe_closes_it_and_resets_the_cooldown_and_the_window)
{
	struct breaker b;
	struct breaker_cfg c;
	enum breaker_pass p;
	int64_t now = T0 + 5000;

	open_at(&b, &c, T0);
	p = breaker_allow(&b, now, NULL);
	CHECK(breaker_failure(&b, &c, now, p));          /* open for 10 s */
	now += 10000;
	p = breaker_allow(&b, now, NULL);
	CHECK_INT(p, BREAKER_PROBE);
	CHECK(breaker_success(&b, now, p));
	CHECK_INT(b.state, BREAKER_CLOSED);
	CHECK_INT(breaker_allow(&b, now, NULL), BREAKER_PASS);
	/* the failures that opened it are forgotten: it takes 5 new ones, and 5 s again */
	for (int i = 1; i < c.failures; i++)
		CHECK(!fail_at(&b, &c, now));
	CHECK(fail_at(&b, &c, now));
	CHECK_INT(b.open_until_ms, now + 5000);
}

TEST(closing_forgets_the_error_rate_window)
{
	struct breaker b;
	struct breaker_cfg c;
	enum breaker_pass p;

	memset(&b, 0, sizeof(b));
	breaker_cfg_defaults(&c);
	c.failures = 0;
	for (int i = 0; i < 20; i++)
		fail_at(&b, &c, T0);
	CHECK_INT(b.state, BREAKER_OPEN);
	p = breaker_allow(&b, T0 + 5000, NULL);
	CHECK(breaker_success(&b, T0 + 5000, p));
	/* within the same minute, one failure must not reopen it on the old failures */
	CHECK(!fail_at(&b, &c, T0 + 6000));
	CHECK_INT(b.state, BREAKER_CLOSED);
}

TEST(outcomes_of_requests_sent_before_it_opened_do_not_decide_half_open)
{
	struct breaker b;
	struct breaker_cfg c;
	enum breaker_pass old, probe;

	memset(&b, 0, sizeof(b));
	breaker_cfg_defaults(&c);
	old = breaker_allow(&b, T0, NULL);        /* a long stream, still running */
	for (int i = 0; i < c.failures; i++)
		fail_at(&b, &c, T0);
	/* its outcome while open changes nothing */
	CHECK(!breaker_success(&b, T0 + 1000, old));
	CHECK_INT(b.state, BREAKER_OPEN);
	probe = breaker_allow(&b, T0 + 5000, NULL);
	CHECK_INT(probe, BREAKER_PROBE);
	/* nor while half-open: the probe decides */
	CHECK(!breaker_success(&b, T0 + 6000, old));
	CHECK(!breaker_failure(&b, &c, T0 + 6000, old));
	CHECK_INT(b.state, BREAKER_HALF_OPEN);
	CHECK(b.probe_out);
	CHECK(breaker_success(&b, T0 + 7000, probe));
	CHECK_INT(b.state, BREAKER_CLOSED);
	/* a DENY handed back by mistake counts for nothing */
	CHECK(!breaker_failure(&b, &c, T0 + 7000, BREAKER_DENY));
	CHECK_INT(b.consecutive, 0);
	CHECK(!fail_at(&b, &c, T0 + 7000));
	CHECK(!breaker_success(&b, T0 + 7000, BREAKER_DENY));
	CHECK_INT(b.consecutive, 1);
}

TEST(retry_after_opens_for_exactly_that_long)
{
	struct breaker b;
	struct breaker_cfg c;
	bool changed;

	memset(&b, 0, sizeof(b));
	breaker_cfg_defaults(&c);
	CHECK(breaker_retry_after(&b, T0, 42));
	CHECK_INT(b.state, BREAKER_OPEN);
	CHECK_INT(breaker_allow(&b, T0 + 41999, &changed), BREAKER_DENY);
	CHECK_INT(breaker_allow(&b, T0 + 42000, &changed), BREAKER_PROBE);
	CHECK(changed);
	/* a probe answered with Retry-After: open exactly that long, below cooldown too */
	CHECK(breaker_retry_after(&b, T0 + 42000, 1));
	CHECK_INT(b.open_until_ms, T0 + 43000);
	CHECK_INT(breaker_allow(&b, T0 + 43000, NULL), BREAKER_PROBE);
	/* and not doubled: 3 s asked for after a 1 s one is 3 s */
	CHECK(breaker_retry_after(&b, T0 + 43000, 3));
	CHECK_INT(b.open_until_ms, T0 + 46000);
	/* a failed probe after Retry-After opens it for the first cooldown, not a doubling */
	{
		enum breaker_pass p = breaker_allow(&b, T0 + 46000, NULL);

		CHECK(breaker_failure(&b, &c, T0 + 46000, p));
		CHECK_INT(b.open_until_ms, T0 + 46000 + 5000);
	}
}

TEST(retry_after_is_capped_at_a_day_and_a_negative_one_is_zero)
{
	struct breaker b;

	memset(&b, 0, sizeof(b));
	CHECK(breaker_retry_after(&b, T0, INT64_MAX));
	CHECK_INT(b.open_until_ms, T0 + 24LL * 3600 * 1000);
	memset(&b, 0, sizeof(b));
	CHECK(breaker_retry_after(&b, T0, -5));
	CHECK_INT(b.open_until_ms, T0);
	CHECK_INT(breaker_wait_ms(&b, T0), 0);
	CHECK_INT(breaker_allow(&b, T0, NULL), BREAKER_PROBE);
}

TEST(retry_after_does_not_shorten_a_longer_open_period)
{
	struct breaker b;
	struct breaker_cfg c;

	open_at(&b, &c, T0);
	CHECK(!breaker_retry_after(&b, T0 + 1000, 1));
	CHECK_INT(b.open_until_ms, T0 + 5000);
	CHECK(!breaker_retry_after(&b, T0 + 1000, 60));
	CHECK_INT(b.open_until_ms, T0 + 61000);
}

TEST(wait_ms_says_how_long_until_a_request_may_go)
{
	struct breaker b;
	struct breaker_cfg c;
	enum breaker_pass p;

	memset(&b, 0, sizeof(b));
	CHECK_INT(breaker_wait_ms(&b, T0), 0);
	open_at(&b, &c, T0);
	CHECK_INT(breaker_wait_ms(&b, T0), 5000);
	CHECK_INT(breaker_wait_ms(&b, T0 + 1234), 3766);
	CHECK_INT(breaker_wait_ms(&b, T0 + 5000), 0);
	CHECK_INT(breaker_wait_ms(&b, T0 + 999999), 0);
	CHECK_INT(b.state, BREAKER_OPEN);             /* asking changed nothing */
	p = breaker_allow(&b, T0 + 5000, NULL);
	CHECK_INT(breaker_wait_ms(&b, T0 + 5000), BREAKER_PROBE_WAIT_MS);
	breaker_abandoned(&b, p);
	CHECK_INT(breaker_wait_ms(&b, T0 + 5000), 0);
	CHECK(breaker_retry_after(&b, T0 + 5000, 7));
	CHECK_INT(breaker_wait_ms(&b, T0 + 5000), 7000);
}

TEST(health_checks_open_and_close_it)
{
	struct breaker b;
	struct breaker_cfg c;

	memset(&b, 0, sizeof(b));
	breaker_cfg_defaults(&c);
	CHECK(!breaker_health(&b, &c, T0, true));
	CHECK_INT(b.state, BREAKER_CLOSED);
	CHECK(breaker_health(&b, &c, T0, false));
	CHECK_INT(b.state, BREAKER_OPEN);
	CHECK_INT(b.open_until_ms, T0 + 5000);
	/* repeated unhealthy verdicts keep it open, without doubling */
	CHECK(!breaker_health(&b, &c, T0 + 4000, false));
	CHECK_INT(b.open_until_ms, T0 + 9000);
	/* healthy closes it before the cooldown ends */
	CHECK(breaker_health(&b, &c, T0 + 6000, true));
	CHECK_INT(b.state, BREAKER_CLOSED);
	CHECK_INT(breaker_allow(&b, T0 + 6000, NULL), BREAKER_PASS);
	/* half-open: unhealthy re-opens it as a failed probe would, healthy closes it */
	open_at(&b, &c, T0);
	CHECK_INT(breaker_allow(&b, T0 + 5000, NULL), BREAKER_PROBE);
	CHECK(breaker_health(&b, &c, T0 + 5000, false));
	CHECK_INT(b.open_until_ms, T0 + 15000);
	CHECK_INT(breaker_allow(&b, T0 + 15000, NULL), BREAKER_PROBE);
	CHECK(breaker_health(&b, &c, T0 + 15000, true));
	CHECK_INT(b.state, BREAKER_CLOSED);
	CHECK(!b.probe_out);
}

TEST(a_healthy_check_does_not_cut_a_retry_after_short)
{
	struct breaker b;
	struct breaker_cfg c;

	memset(&b, 0, sizeof(b));
	breaker_cfg_defaults(&c);
	CHECK(breaker_retry_after(&b, T0, 30));
	CHECK(!breaker_health(&b, &c, T0 + 10000, true));
	CHECK_INT(b.state, BREAKER_OPEN);
	CHECK(breaker_health(&b, &c, T0 + 30000, true));
	CHECK_INT(b.state, BREAKER_CLOSED);
}

TEST(transitions_are_reported_exactly_when_the_state_changes)
{
	struct breaker b;
	struct breaker_cfg c;
	enum breaker_state before;
	enum breaker_pass p;
	bool changed;
	int64_t now = T0;
	int moves = 0;

	memset(&b, 0, sizeof(b));
	breaker_cfg_defaults(&c);
	/* a mixed sequence: every call's report is compared with the state it left */
	for (int i = 0; i < 400; i++, now += 700) {
		before = b.state;
		p = breaker_allow(&b, now, &changed);
		CHECK(changed == (b.state != before));
		moves += changed;
		if (!p)
			continue;
		before = b.state;
		switch (i % 7) {
		case 0:
			changed = breaker_success(&b, now, p);
			break;
		case 6:
			changed = breaker_retry_after(&b, now, i % 3);
			break;
		case 5:
			changed = breaker_health(&b, &c, now, i % 2);
			break;
		default:
			changed = breaker_failure(&b, &c, now, p);
			break;
		}
		CHECK(changed == (b.state != before));
		moves += changed;
	}
	CHECK(moves > 20);     /* the sequence did move it around */
}

TEST(hours_long_time_jumps_are_handled)
{
	struct breaker b;
	struct breaker_cfg c;
	int64_t hours = 5LL * 3600 * 1000;

	memset(&b, 0, sizeof(b));
	breaker_cfg_defaults(&c);
	c.failures = 0;
	for (int i = 0; i < 19; i++)
		fail_at(&b, &c, T0);
	/* hours later the old bucket (same slot: 5 h is a whole number of minutes) is stale */
	CHECK(!fail_at(&b, &c, T0 + hours));
	CHECK_INT(b.state, BREAKER_CLOSED);
	open_at(&b, &c, T0);
	CHECK_INT(breaker_allow(&b, T0 + hours, NULL), BREAKER_PROBE);
	CHECK_INT(breaker_wait_ms(&b, T0 + 2 * hours), BREAKER_PROBE_WAIT_MS);
	/* a clock near its end does not wrap an open period into the past */
	memset(&b, 0, sizeof(b));
	CHECK(breaker_retry_after(&b, INT64_MAX - 10, 60));
	CHECK_INT(b.open_until_ms, INT64_MAX);
	CHECK_INT(breaker_allow(&b, INT64_MAX - 5, NULL), BREAKER_DENY);
	CHECK_INT(breaker_wait_ms(&b, INT64_MAX - 5), 5);
}

TEST(a_clock_stepping_back_counts_as_no_time_passed)
{
	struct breaker b;
	struct breaker_cfg c;

	open_at(&b, &c, T0);
	CHECK_INT(breaker_allow(&b, T0 + 3000, NULL), BREAKER_DENY);
	/* back before the opening: the wait is still 2 s from T0 + 3000, not 5 s or more */
	CHECK_INT(breaker_wait_ms(&b, T0 - 100000), 2000);
	CHECK_INT(breaker_allow(&b, 0, NULL), BREAKER_DENY);
	CHECK_INT(breaker_allow(&b, INT64_MIN, NULL), BREAKER_DENY);
	CHECK_INT(breaker_wait_ms(&b, INT64_MIN), 2000);
	CHECK_INT(breaker_allow(&b, T0 + 5000, NULL), BREAKER_PROBE);

	/* outcomes reported with an earlier time land in the latest second seen */
	memset(&b, 0, sizeof(b));
	c.failures = 0;
	for (int i = 0; i < 19; i++)
		fail_at(&b, &c, T0 + 120000);
	CHECK(fail_at(&b, &c, T0));
	CHECK_INT(b.state, BREAKER_OPEN);
	CHECK_INT(b.open_until_ms, T0 + 125000);

	/* a negative clock on a fresh breaker neither crashes nor opens anything */
	memset(&b, 0, sizeof(b));
	CHECK_INT(breaker_allow(&b, -123456789, NULL), BREAKER_PASS);
	CHECK(!breaker_failure(&b, &c, -123456789, BREAKER_PASS));
	CHECK_INT(breaker_wait_ms(&b, -5), 0);
}

TEST(state_names_are_the_metric_labels)
{
	CHECK_STR(breaker_state_name(BREAKER_CLOSED), "closed");
	CHECK_STR(breaker_state_name(BREAKER_OPEN), "open");
	CHECK_STR(breaker_state_name(BREAKER_HALF_OPEN), "half_open");
	CHECK_STR(breaker_state_name((enum breaker_state)42), "unknown");
}

RUN_TESTS()
