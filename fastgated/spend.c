/* Spend control's accounts; see spend.h. */
#include <stdlib.h>
#include <string.h>

#include "spend.h"
#include "util.h"

void spend_account_init(struct spend_account *a)
{
	memset(a, 0, sizeof(*a));
}

void spend_account_free(struct spend_account *a)
{
	free(a->ctr);
	a->ctr = NULL;
	a->n_lim = 0;
}

/* t falls in the day the totals hold (a month changes only with a day). */
static bool in_day(const struct spend_account *a, int64_t t)
{
	return a->month_start && t >= a->day_start && t < a->day_start + 86400;
}

/* The settled totals' windows follow the clock: a new day or month starts from zero. */
static void totals_roll(struct spend_account *a, int64_t now)
{
	int64_t day, month;

	if (in_day(a, now))
		return;   /* most calls: the month's arithmetic only once a day */
	day = limit_window_start(&(struct limit){ .window = LIMIT_DAY }, now);
	month = limit_month_start(now);

	if (a->day_start != day) {
		a->day_start = day;
		memset(&a->day, 0, sizeof(a->day));
	}
	if (a->month_start != month) {
		a->month_start = month;
		memset(&a->month, 0, sizeof(a->month));
	}
}

static int64_t totals_of(const struct spend_totals *t, enum limit_kind k)
{
	return k == LIMIT_REQUESTS ? t->requests : k == LIMIT_TOKENS ? t->tokens : t->cost;
}

struct spend_totals spend_account_totals(const struct spend_account *a, enum spend_period p,
                                         int64_t now)
{
	struct spend_totals zero = { 0 };

	if (p == SPEND_ALL)
		return a->all;
	if (p == SPEND_DAY)
		return a->day_start == limit_window_start(&(struct limit){ .window = LIMIT_DAY }, now)
		       ? a->day : zero;
	return a->month_start == limit_month_start(now) ? a->month : zero;
}

void spend_account_set_limits(struct spend_account *a, const struct limit *l, size_t n,
                              int64_t now)
{
	struct limit_counter *ctr = n ? xcalloc(n, sizeof(*ctr)) : NULL;

	if (n > LIMITS_MAX)
		n = LIMITS_MAX;
	totals_roll(a, now);
	for (size_t i = 0; i < n; i++) {
		size_t j;

		for (j = 0; j < a->n_lim; j++)
			if (a->lim[j].kind == l[i].kind && a->lim[j].window == l[i].window)
				break;
		if (j < a->n_lim) {
			ctr[i] = a->ctr[j];
			continue;
		}
		limit_counter_init(&ctr[i], &l[i], now);
		if (l[i].window == LIMIT_DAY)
			limit_counter_load(&ctr[i], &l[i], a->day_start,
			                   totals_of(&a->day, l[i].kind), now);
		else if (l[i].window == LIMIT_MONTH)
			limit_counter_load(&ctr[i], &l[i], a->month_start,
			                   totals_of(&a->month, l[i].kind), now);
	}
	free(a->ctr);
	a->ctr = ctr;
	if (n)
		memcpy(a->lim, l, n * sizeof(*l));
	a->n_lim = n;
}

void spend_account_load(struct spend_account *a, enum spend_period period, int64_t start,
                        const struct spend_totals *t, int64_t now)
{
	enum limit_window w = period == SPEND_DAY ? LIMIT_DAY : LIMIT_MONTH;

	totals_roll(a, now);
	if (period == SPEND_ALL) {
		a->all = *t;
		return;
	}
	if (start != (period == SPEND_DAY ? a->day_start : a->month_start))
		return;
	if (period == SPEND_DAY)
		a->day = *t;
	else
		a->month = *t;
	for (size_t i = 0; i < a->n_lim; i++)
		if (a->lim[i].window == w)
			limit_counter_load(&a->ctr[i], &a->lim[i], start, totals_of(t, a->lim[i].kind),
			                   now);
}

int64_t spend_balance_left(const struct spend_balance *b)
{
	return b->credit - b->spent - b->reserved;
}

/* A limit's place in spend_party.held: one bit per kind and window. */
static unsigned limit_bit(const struct limit *l)
{
	return 1u << (l->kind * 4 + l->window);
}

/* What the estimate asks of a limit of this kind. */
static int64_t want_of(const struct spend_estimate *e, enum limit_kind k)
{
	return k == LIMIT_REQUESTS ? 1 : k == LIMIT_TOKENS ? e->tokens : e->cost;
}

/* Note limit j of party i for the headers: the least left of each kind wins. */
static void room_note(struct spend_hold *h, size_t i, size_t j, int64_t left)
{
	const struct limit *l = &h->p[i].acct->lim[j];

	if (left < 0)
		left = 0;
	if ((h->room_found & (1u << l->kind)) && left >= h->room_left[l->kind])
		return;
	h->room_left[l->kind] = left;
	h->room_p[l->kind] = (uint8_t)i;
	h->room_j[l->kind] = (uint8_t)j;
	h->room_found |= (uint8_t)(1u << l->kind);
}

enum spend_verdict spend_reserve(struct spend_hold *h, int64_t now, struct spend_refusal *why)
{
	struct spend_refusal r = { .v = SPEND_OK };
	int64_t used[SPEND_PARTIES][LIMITS_MAX];

	h->room_found = 0;
	h->room_at = now;
	/* every check first, so that a refusal leaves nothing reserved */
	for (size_t i = 0; i < h->n; i++) {
		struct spend_party *p = &h->p[i];
		struct spend_account *a = p->acct;

		for (size_t j = 0; a && j < a->n_lim; j++) {
			const struct limit *l = &a->lim[j];
			int64_t want = want_of(&h->est, l->kind), u, wait;

			if (l->kind == LIMIT_COST && h->est.cost < 0) {
				r = (struct spend_refusal){ .v = SPEND_UNPRICED, .kind = p->kind,
				                            .id = p->id, .lim = *l };
				goto refused;
			}
			/* the usual case fits: the exact wait is worked out only when it does not */
			u = used[i][j] = limit_used(&a->ctr[j], l, now);
			wait = u <= l->amount && want <= l->amount - u ? 0
			       : limit_wait(&a->ctr[j], l, now, want);
			if (wait == 0)
				continue;
			if (wait < 0) {
				r = (struct spend_refusal){ .v = SPEND_TOO_LARGE, .kind = p->kind,
				                            .id = p->id, .lim = *l, .want = want,
				                            .used = u };
				goto refused;
			}
			if (r.v == SPEND_OK || wait > r.retry_after)
				r = (struct spend_refusal){ .v = SPEND_LIMITED, .kind = p->kind, .id = p->id,
				                            .lim = *l, .retry_after = wait, .want = want,
				                            .used = u };
		}
		if (p->bal && p->bal->kept) {
			int64_t left = spend_balance_left(p->bal);

			if (h->est.cost < 0) {
				r = (struct spend_refusal){ .v = SPEND_UNPRICED, .kind = p->kind,
				                            .id = p->id };
				goto refused;
			}
			/* a balance does not come back by waiting: it outranks a full limit; unless
			 * what is missing is held by requests in flight, which settle soon */
			if (left <= 0 || left < h->est.cost) {
				bool held = p->bal->credit - p->bal->spent >= h->est.cost &&
				            p->bal->credit - p->bal->spent > 0;

				r = (struct spend_refusal){ .v = held ? SPEND_BALANCE_HELD
				                                      : SPEND_NO_BALANCE,
				                            .kind = p->kind, .id = p->id, .left = left,
				                            .want = h->est.cost, .retry_after = 1 };
				goto refused;
			}
		}
	}
	if (r.v != SPEND_OK)
		goto refused;
	for (size_t i = 0; i < h->n; i++) {
		struct spend_account *a = h->p[i].acct;

		h->p[i].held = 0;
		for (size_t j = 0; a && j < a->n_lim; j++) {
			int64_t want = want_of(&h->est, a->lim[j].kind);

			limit_add(&a->ctr[j], &a->lim[j], now, want);
			h->p[i].held |= limit_bit(&a->lim[j]);
			room_note(h, i, j, a->lim[j].amount - used[i][j] - (want > 0 ? want : 0));
		}
		if (h->p[i].bal && h->est.cost > 0)
			h->p[i].bal->reserved += h->est.cost;
	}
	h->at = now;
	h->active = true;
	if (why)
		*why = r;
	return SPEND_OK;
refused:
	/* the headers of a refusal: what is left without this request */
	for (size_t i = 0; i < h->n && r.v == SPEND_LIMITED; i++)
		for (size_t j = 0; h->p[i].acct && j < h->p[i].acct->n_lim; j++)
			room_note(h, i, j, h->p[i].acct->lim[j].amount - used[i][j]);
	if (r.v != SPEND_LIMITED)
		h->room_at = now - 1;   /* not every counter was read: spend_headroom reads them */
	if (why)
		*why = r;
	return r.v;
}

/* Every counter and balance of the hold moves by what was used minus what was reserved. */
static void adjust(struct spend_hold *h, int64_t now, int64_t requests, int64_t tokens,
                   int64_t cost)
{
	int64_t est_cost = h->est.cost > 0 ? h->est.cost : 0;

	for (size_t i = 0; i < h->n; i++) {
		struct spend_account *a = h->p[i].acct;

		for (size_t j = 0; a && j < a->n_lim; j++) {
			const struct limit *l = &a->lim[j];
			int64_t delta;

			if (!(h->p[i].held & limit_bit(l))) {
				/* added after the reservation: it started from the settled totals, so
				 * only what this request used, if anything, is new to it */
				delta = l->kind == LIMIT_REQUESTS ? requests : l->kind == LIMIT_TOKENS
				        ? tokens : cost;
				if (delta)
					limit_add(&a->ctr[j], l, now, delta);
				continue;
			}
			delta = l->kind == LIMIT_REQUESTS ? requests - 1
			                : l->kind == LIMIT_TOKENS ? tokens - h->est.tokens
			                : cost - est_cost;

			if (delta)
				limit_adjust(&a->ctr[j], l, h->at, now, delta);
		}
		if (h->p[i].bal) {
			h->p[i].bal->reserved -= est_cost;
			h->p[i].bal->spent += cost;
		}
	}
}

void spend_settle(struct spend_hold *h, int64_t now, int64_t tokens, int64_t cost)
{
	if (!h->active)
		return;
	if (tokens < 0)
		tokens = 0;
	if (cost < 0)
		cost = 0;
	adjust(h, now, 1, tokens, cost);
	for (size_t i = 0; i < h->n; i++) {
		struct spend_account *a = h->p[i].acct;
		struct spend_totals *t[3];

		if (!a)
			continue;
		/* the totals of the day the request started in, as the audit's counters have it */
		totals_roll(a, now);
		t[0] = &a->all;
		t[1] = in_day(a, h->at) ? &a->day : NULL;
		t[2] = t[1] || a->month_start == limit_month_start(h->at) ? &a->month : NULL;
		for (size_t k = 0; k < 3; k++) {
			if (!t[k])
				continue;
			t[k]->requests++;
			t[k]->tokens += tokens;
			t[k]->cost += cost;
		}
	}
	h->active = false;
}

void spend_release(struct spend_hold *h, int64_t now)
{
	if (!h->active)
		return;
	adjust(h, now, 0, 0, 0);
	h->active = false;
}

unsigned spend_headroom(struct spend_hold *h, int64_t now, struct spend_headroom out[3])
{
	if (h->room_at != now) {
		/* not what spend_reserve saw a moment ago: read the counters again */
		h->room_found = 0;
		h->room_at = now;
		for (size_t i = 0; i < h->n; i++)
			for (size_t j = 0; h->p[i].acct && j < h->p[i].acct->n_lim; j++)
				room_note(h, i, j, h->p[i].acct->lim[j].amount -
				          limit_used(&h->p[i].acct->ctr[j], &h->p[i].acct->lim[j], now));
	}
	for (int k = 0; k < 3; k++) {
		const struct spend_account *a;

		if (!(h->room_found & (1u << k)))
			continue;
		a = h->p[h->room_p[k]].acct;
		out[k].lim = a->lim[h->room_j[k]];
		out[k].remaining = h->room_left[k];
		/* the reset of the tightest only: it walks the buckets again */
		out[k].reset_s = limit_clear_in(&a->ctr[h->room_j[k]], &out[k].lim, now);
	}
	return h->room_found;
}
