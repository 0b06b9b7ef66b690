/* Spend control's accounts (spend.c): a reservation is all or nothing across the key and
 * its user, settlement replaces it by what was used, a release gives it back, balances
 * and limits never admit more than they allow, and the settled totals follow the UTC
 * calendar. The clock is a number. */
#include <stdlib.h>

#include "spend.h"
#include "unit.h"

#define T0 1796083200LL          /* 2026-12-01T00:00:00Z */
#define USD 1000000000LL

static struct limit lim(const char *text)
{
	struct limit l;
	char *err = NULL;

	if (limit_parse(text, &l, &err) < 0) {
		fprintf(stderr, "bad limit %s: %s\n", text, err);
		exit(2);
	}
	return l;
}

static void account(struct spend_account *a, const char *l1, const char *l2, int64_t now)
{
	struct limit l[2];
	size_t n = 0;

	spend_account_init(a);
	if (l1)
		l[n++] = lim(l1);
	if (l2)
		l[n++] = lim(l2);
	spend_account_set_limits(a, l, n, now);
}

static struct spend_hold hold(struct spend_account *k, struct spend_account *u,
                              struct spend_balance *b, int64_t tokens, int64_t cost)
{
	struct spend_hold h = { .n = 0 };

	h.p[h.n++] = (struct spend_party){ .acct = k, .kind = 'k', .id = 1 };
	if (u)
		h.p[h.n++] = (struct spend_party){ .acct = u, .bal = b, .kind = 'u', .id = 7 };
	h.est.tokens = tokens;
	h.est.cost = cost;
	return h;
}

static int64_t used(struct spend_account *a, size_t i, int64_t now)
{
	return limit_used(&a->ctr[i], &a->lim[i], now);
}

TEST(a_reservation_counts_at_once_and_settles_to_what_was_used)
{
	struct spend_account k;
	struct spend_hold h1, h2;
	struct spend_refusal why;

	account(&k, "tokens:1000/min", "requests:5/min", T0);
	h1 = hold(&k, NULL, NULL, 600, 0);
	h2 = hold(&k, NULL, NULL, 600, 0);
	CHECK_INT(spend_reserve(&h1, T0, &why), SPEND_OK);
	CHECK_INT(used(&k, 0, T0), 600);
	CHECK_INT(used(&k, 1, T0), 1);
	/* 600 more does not fit until the first leaves the minute: exactly 60 s */
	CHECK_INT(spend_reserve(&h2, T0 + 10, &why), SPEND_LIMITED);
	CHECK_INT(why.retry_after, 50);
	CHECK_INT(why.kind, 'k');
	CHECK_INT(why.used, 600);
	CHECK(!h2.active);
	CHECK_INT(used(&k, 1, T0 + 10), 1);          /* the refused one counted nowhere */
	/* settled at 100 tokens: now it fits */
	spend_settle(&h1, T0 + 11, 100, 0);
	CHECK_INT(used(&k, 0, T0 + 11), 100);
	CHECK_INT(used(&k, 1, T0 + 11), 1);
	CHECK_INT(spend_reserve(&h2, T0 + 12, &why), SPEND_OK);
	CHECK_INT(used(&k, 0, T0 + 12), 700);
	spend_settle(&h2, T0 + 13, 650, 0);
	CHECK_INT(used(&k, 0, T0 + 13), 750);
	/* settling twice changes nothing */
	spend_settle(&h2, T0 + 14, 650, 0);
	CHECK_INT(used(&k, 0, T0 + 14), 750);
	CHECK_INT(k.all.requests, 2);
	CHECK_INT(k.all.tokens, 750);
	spend_account_free(&k);
}

TEST(a_release_gives_everything_back_and_counts_no_request)
{
	struct spend_account k;
	struct spend_hold h;

	account(&k, "tokens:1000/hour", "requests:2/day", T0);
	h = hold(&k, NULL, NULL, 900, 0);
	CHECK_INT(spend_reserve(&h, T0, NULL), SPEND_OK);
	spend_release(&h, T0 + 1);
	CHECK_INT(used(&k, 0, T0 + 1), 0);
	CHECK_INT(used(&k, 1, T0 + 1), 0);
	CHECK_INT(k.all.requests, 0);
	CHECK(!h.active);
	spend_account_free(&k);
}

TEST(the_key_and_its_user_are_reserved_together_or_not_at_all)
{
	struct spend_account k, u;
	struct spend_balance b = { 0 };
	struct spend_hold h1, h2;
	struct spend_refusal why;

	account(&k, "requests:10/min", NULL, T0);
	account(&u, "requests:1/min", NULL, T0);
	h1 = hold(&k, &u, &b, 10, 0);
	h2 = hold(&k, &u, &b, 10, 0);
	CHECK_INT(spend_reserve(&h1, T0, &why), SPEND_OK);
	CHECK_INT(spend_reserve(&h2, T0, &why), SPEND_LIMITED);
	CHECK_INT(why.kind, 'u');
	CHECK_INT(why.id, 7);
	CHECK_INT(why.retry_after, 60);
	/* the key's limit was checked and passed, but nothing of h2 stayed on it */
	CHECK_INT(used(&k, 0, T0), 1);
	spend_account_free(&k);
	spend_account_free(&u);
}

TEST(a_balance_admits_estimates_up_to_what_is_left_and_settles_to_the_real_cost)
{
	struct spend_account k, u;
	struct spend_balance b = { .kept = true, .credit = 1000 };
	struct spend_hold h1, h2, h3;
	struct spend_refusal why;

	account(&k, NULL, NULL, T0);
	account(&u, NULL, NULL, T0);
	h1 = hold(&k, &u, &b, 10, 600);
	h2 = hold(&k, &u, &b, 10, 600);
	CHECK_INT(spend_reserve(&h1, T0, &why), SPEND_OK);
	CHECK_INT(b.reserved, 600);
	/* 400 left, but only because the first holds 600: a wait, not a spent balance */
	CHECK_INT(spend_reserve(&h2, T0, &why), SPEND_BALANCE_HELD);
	CHECK_INT(why.left, 400);
	CHECK_INT(why.want, 600);
	CHECK_INT(why.retry_after, 1);
	h3 = hold(&k, &u, &b, 10, 1200);
	CHECK_INT(spend_reserve(&h3, T0, &why), SPEND_NO_BALANCE);   /* more than the credit */
	spend_settle(&h1, T0 + 1, 5, 300);
	CHECK_INT(b.reserved, 0);
	CHECK_INT(b.spent, 300);
	CHECK_INT(spend_balance_left(&b), 700);
	CHECK_INT(spend_reserve(&h2, T0 + 1, &why), SPEND_OK);
	/* an answer dearer than its estimate overdraws: the balance goes below zero and the
	 * next request is refused, whatever it would cost */
	spend_settle(&h2, T0 + 2, 5, 900);
	CHECK_INT(spend_balance_left(&b), -200);
	h3 = hold(&k, &u, &b, 0, 0);
	CHECK_INT(spend_reserve(&h3, T0 + 2, &why), SPEND_NO_BALANCE);
	CHECK_INT(why.left, -200);
	CHECK_INT(u.all.cost, 1200);
	spend_account_free(&k);
	spend_account_free(&u);
}

TEST(many_requests_at_once_admit_exactly_what_a_cost_limit_allows)
{
	struct spend_account k;
	struct spend_hold h[200];
	int admitted = 0;

	account(&k, "cost:0.001/day", NULL, T0);
	for (int i = 0; i < 200; i++) {
		h[i] = hold(&k, NULL, NULL, 10, 7 * 1000);     /* 7000 nano-USD each */
		admitted += spend_reserve(&h[i], T0 + 5, NULL) == SPEND_OK;
	}
	CHECK_INT(admitted, 1000000 / 7000);                 /* 142 */
	CHECK_INT(used(&k, 0, T0 + 5), 142 * 7000);
	for (int i = 0; i < 200; i++)
		spend_release(&h[i], T0 + 6);
	CHECK_INT(used(&k, 0, T0 + 6), 0);
	spend_account_free(&k);
}

TEST(an_estimate_larger_than_a_limit_can_never_fit)
{
	struct spend_account k;
	struct spend_hold h;
	struct spend_refusal why;

	account(&k, "tokens:1000/min", NULL, T0);
	h = hold(&k, NULL, NULL, 1001, 0);
	CHECK_INT(spend_reserve(&h, T0, &why), SPEND_TOO_LARGE);
	CHECK_INT(why.want, 1001);
	CHECK_INT(used(&k, 0, T0), 0);
	spend_account_free(&k);
}

TEST(an_unknown_cost_is_refused_only_where_money_is_limited)
{
	struct spend_account k, u;
	struct spend_balance b = { .kept = true, .credit = USD };
	struct spend_balance none = { 0 };
	struct spend_hold h;
	struct spend_refusal why;

	account(&k, "tokens:1000/min", NULL, T0);
	account(&u, NULL, NULL, T0);
	h = hold(&k, &u, &none, 10, -1);
	CHECK_INT(spend_reserve(&h, T0, &why), SPEND_OK);    /* no cost limit, no balance */
	spend_release(&h, T0);
	h = hold(&k, &u, &b, 10, -1);
	CHECK_INT(spend_reserve(&h, T0, &why), SPEND_UNPRICED);
	CHECK_INT(why.kind, 'u');
	spend_account_free(&k);
	account(&k, "cost:1/day", NULL, T0);
	h = hold(&k, NULL, NULL, 10, -1);
	CHECK_INT(spend_reserve(&h, T0, &why), SPEND_UNPRICED);
	CHECK_INT(why.kind, 'k');
	spend_account_free(&k);
	spend_account_free(&u);
}

TEST(settled_totals_follow_the_utc_day_and_month)
{
	struct spend_account k;
	struct spend_hold h;
	struct spend_totals t;
	int64_t dec31 = T0 + 30 * 86400 + 86399;          /* 2026-12-31T23:59:59Z */

	account(&k, NULL, NULL, T0);
	h = hold(&k, NULL, NULL, 100, 50);
	CHECK_INT(spend_reserve(&h, dec31, NULL), SPEND_OK);
	spend_settle(&h, dec31, 80, 40);
	t = spend_account_totals(&k, SPEND_DAY, dec31);
	CHECK_INT(t.requests, 1);
	CHECK_INT(t.tokens, 80);
	CHECK_INT(t.cost, 40);
	t = spend_account_totals(&k, SPEND_MONTH, dec31);
	CHECK_INT(t.cost, 40);
	/* a second later it is a new day, month and year */
	t = spend_account_totals(&k, SPEND_DAY, dec31 + 1);
	CHECK_INT(t.requests, 0);
	t = spend_account_totals(&k, SPEND_MONTH, dec31 + 1);
	CHECK_INT(t.requests, 0);
	t = spend_account_totals(&k, SPEND_ALL, dec31 + 1);
	CHECK_INT(t.requests, 1);
	/* a request reserved on the 31st and settled on the 1st counts on the 31st (as the
	 * audit's counters, by its start), so not in the new day */
	h = hold(&k, NULL, NULL, 100, 50);
	CHECK_INT(spend_reserve(&h, dec31, NULL), SPEND_OK);
	spend_settle(&h, dec31 + 5, 10, 10);
	t = spend_account_totals(&k, SPEND_DAY, dec31 + 5);
	CHECK_INT(t.requests, 0);
	CHECK_INT(k.all.requests, 2);
	spend_account_free(&k);
}

TEST(persisted_totals_restore_calendar_limits_and_a_limit_added_later)
{
	struct spend_account k;
	struct spend_totals day = { 3, 900, 2 * USD }, month = { 40, 5000, 20 * USD };
	struct spend_totals old = { 99, 99, 99 }, all = { 500, 90000, 300 * USD };
	struct spend_hold h;
	struct spend_refusal why;
	int64_t now = T0 + 9 * 86400 + 3600;               /* 2026-12-10T01:00Z */
	struct limit l[2];

	account(&k, "cost:2.5/day", NULL, now);
	spend_account_load(&k, SPEND_DAY, T0 + 8 * 86400, &old, now);   /* yesterday: ignored */
	spend_account_load(&k, SPEND_DAY, T0 + 9 * 86400, &day, now);
	spend_account_load(&k, SPEND_MONTH, T0, &month, now);
	spend_account_load(&k, SPEND_ALL, 0, &all, now);
	CHECK_INT(used(&k, 0, now), 2 * USD);
	CHECK_INT(spend_account_totals(&k, SPEND_ALL, now).cost, 300 * USD);
	h = hold(&k, NULL, NULL, 1, USD);
	CHECK_INT(spend_reserve(&h, now, &why), SPEND_LIMITED);
	CHECK_INT(why.retry_after, 86400 - 3600);           /* until midnight UTC */
	/* a month limit added now starts from the month's settled total, and the day limit
	 * keeps its counter */
	l[0] = lim("cost:2.5/day");
	l[1] = lim("cost:21/month");
	spend_account_set_limits(&k, l, 2, now);
	CHECK_INT(used(&k, 0, now), 2 * USD);
	CHECK_INT(used(&k, 1, now), 20 * USD);
	spend_account_free(&k);
}

/* A limit added while a request is in flight starts from the settled totals; the request
 * settling or failing afterwards must not take its estimate off that new counter. */
TEST(a_limit_added_meanwhile_is_not_settled_for_what_it_never_held)
{
	struct spend_account k;
	struct spend_hold h1, h2;
	struct limit l = lim("tokens:1000/day");

	account(&k, NULL, NULL, T0);
	h1 = hold(&k, NULL, NULL, 500, 0);
	CHECK_INT(spend_reserve(&h1, T0, NULL), SPEND_OK);
	spend_settle(&h1, T0, 157, 0);
	h2 = hold(&k, NULL, NULL, 700, 0);
	CHECK_INT(spend_reserve(&h2, T0 + 1, NULL), SPEND_OK);
	spend_account_set_limits(&k, &l, 1, T0 + 2);
	CHECK_INT(used(&k, 0, T0 + 2), 157);
	spend_release(&h2, T0 + 3);
	CHECK_INT(used(&k, 0, T0 + 3), 157);
	/* and one that settles adds what it used */
	h2 = hold(&k, NULL, NULL, 700, 0);
	spend_account_set_limits(&k, NULL, 0, T0 + 4);
	CHECK_INT(spend_reserve(&h2, T0 + 4, NULL), SPEND_OK);
	spend_account_set_limits(&k, &l, 1, T0 + 5);
	spend_settle(&h2, T0 + 6, 40, 0);
	CHECK_INT(used(&k, 0, T0 + 6), 157 + 40);
	spend_account_free(&k);
}

TEST(headroom_names_the_tightest_limit_of_a_kind)
{
	struct spend_account k, u;
	struct spend_balance b = { 0 };
	struct spend_hold h;
	struct spend_headroom hr[3];

	account(&k, "requests:100/min", "tokens:5000/day", T0);
	account(&u, "requests:3/min", NULL, T0);
	h = hold(&k, &u, &b, 100, 0);
	CHECK_INT(spend_reserve(&h, T0, NULL), SPEND_OK);
	CHECK_INT(spend_headroom(&h, T0, hr), (1u << LIMIT_REQUESTS) | (1u << LIMIT_TOKENS));
	CHECK_INT(hr[LIMIT_REQUESTS].lim.amount, 3);
	CHECK_INT(hr[LIMIT_REQUESTS].remaining, 2);
	CHECK_INT(hr[LIMIT_REQUESTS].reset_s, 60);
	CHECK_INT(hr[LIMIT_TOKENS].remaining, 4900);
	CHECK_INT(hr[LIMIT_TOKENS].reset_s, 86400);
	spend_account_free(&k);
	spend_account_free(&u);
}

RUN_TESTS()
