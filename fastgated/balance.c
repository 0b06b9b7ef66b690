/* Target selection; see balance.h. */
#include <string.h>

#include "balance.h"

static const char *const names[] = {
	[BALANCE_ROUND_ROBIN] = "round_robin", [BALANCE_WEIGHTED] = "weighted",
	[BALANCE_LEAST_INFLIGHT] = "least_inflight", [BALANCE_LATENCY] = "latency",
	[BALANCE_RANDOM] = "random",
};

int balance_kind_parse(const char *name, enum balance_kind *out)
{
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(name, names[i]) == 0) {
			*out = (enum balance_kind)i;
			return 0;
		}
	return -1;
}

const char *balance_kind_name(enum balance_kind k)
{
	return (size_t)k < sizeof(names) / sizeof(names[0]) ? names[k] : "?";
}

void balance_init(struct balancer *b, enum balance_kind kind, uint64_t seed)
{
	memset(b, 0, sizeof(*b));
	b->kind = kind;
	b->rng = seed ? seed : 0x9e3779b97f4a7c15ULL;
}

/* xorshift64*: fast, and good enough to spread picks */
static uint64_t next_random(struct balancer *b)
{
	uint64_t x = b->rng;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	b->rng = x;
	return x * 0x2545f4914f6cdd1dULL;
}

static uint64_t below(struct balancer *b, uint64_t n)
{
	return (next_random(b) >> 11) % n;
}

/* The targets this pick chooses from: available, not tried, in the lowest tier that has
 * any. Their indexes go to cand; returns how many. */
static size_t candidates(const struct balance_target *t, size_t n, uint64_t tried,
                         size_t cand[BALANCE_MAX_TARGETS])
{
	int tier = 0;
	bool any = false;
	size_t k = 0;

	for (size_t i = 0; i < n; i++)
		if (t[i].available && !(tried >> i & 1) && (!any || t[i].priority < tier)) {
			tier = t[i].priority;
			any = true;
		}
	for (size_t i = 0; any && i < n; i++)
		if (t[i].available && !(tried >> i & 1) && t[i].priority == tier)
			cand[k++] = i;
	return k;
}

/* nginx's smooth weighted round robin: every candidate gains its weight, the one with the
 * most is picked and pays the total back. The order is spread out ({5,1,1} gives
 * a a b a c a a), never a burst of one target. */
static size_t pick_weighted(struct balance_target *t, const size_t *cand, size_t k)
{
	int64_t total = 0;
	size_t best = cand[0];

	for (size_t j = 0; j < k; j++) {
		struct balance_target *x = &t[cand[j]];

		x->current += x->weight;
		total += x->weight;
		if (x->current > t[best].current)
			best = cand[j];
	}
	t[best].current -= total;
	return best;
}

/* Two candidates at random, the cheaper of them: a power of two choices spreads load
 * almost as well as looking at all of them, and never herds every request onto the one
 * target that looked cheapest a moment ago. */
static size_t pick_two(struct balancer *b, const struct balance_target *t, const size_t *cand,
                       size_t k, double (*cost)(const struct balance_target *))
{
	size_t i, j;
	double ci, cj;

	if (k == 1)
		return cand[0];
	i = (size_t)below(b, k);
	j = (size_t)below(b, k - 1);
	if (j >= i)
		j++;
	ci = cost(&t[cand[i]]);
	cj = cost(&t[cand[j]]);
	return cj < ci ? cand[j] : cand[i];
}

/* In flight per unit of weight: a target weighted 2 takes twice the load. */
static double inflight_cost(const struct balance_target *t)
{
	return (double)t->inflight / (double)(t->weight > 0 ? t->weight : 1);
}

/* Peak EWMA: latency times the queue it would join; a target with no sample yet costs
 * nothing, so a new or recovered one is tried. */
static double latency_cost(const struct balance_target *t)
{
	return t->ewma_ms * (double)(t->inflight + 1);
}

static size_t pick_random(struct balancer *b, const struct balance_target *t, const size_t *cand,
                          size_t k)
{
	uint64_t total = 0, r;

	for (size_t j = 0; j < k; j++)
		total += (uint64_t)(t[cand[j]].weight > 0 ? t[cand[j]].weight : 1);
	r = below(b, total);
	for (size_t j = 0; j < k; j++) {
		uint64_t w = (uint64_t)(t[cand[j]].weight > 0 ? t[cand[j]].weight : 1);
		if (r < w)
			return cand[j];
		r -= w;
	}
	return cand[k - 1];
}

static size_t pick_round_robin(struct balancer *b, size_t n, const size_t *cand, size_t k)
{
	/* the first candidate at or after the cursor, going round */
	size_t best = cand[0];

	for (size_t j = 0; j < k; j++)
		if (cand[j] >= b->next % n) {
			best = cand[j];
			break;
		}
	b->next = (unsigned)(best + 1);
	return best;
}

int balance_pick(struct balancer *b, struct balance_target *t, size_t n, uint64_t tried)
{
	size_t cand[BALANCE_MAX_TARGETS], k;

	if (n > BALANCE_MAX_TARGETS)
		n = BALANCE_MAX_TARGETS;
	k = candidates(t, n, tried, cand);
	if (k == 0)
		return -1;
	switch (b->kind) {
	case BALANCE_ROUND_ROBIN:
		return (int)pick_round_robin(b, n, cand, k);
	case BALANCE_WEIGHTED:
		return (int)pick_weighted(t, cand, k);
	case BALANCE_LEAST_INFLIGHT:
		return (int)pick_two(b, t, cand, k, inflight_cost);
	case BALANCE_LATENCY:
		return (int)pick_two(b, t, cand, k, latency_cost);
	case BALANCE_RANDOM:
		return (int)pick_random(b, t, cand, k);
	}
	return (int)cand[0];
}

/* Weight of the newest sample: about the last ten answers count, so a target that slows
 * down is seen within a few requests and one sample does not swing it. */
#define EWMA_ALPHA 0.2

void balance_observe(struct balance_target *t, double ms)
{
	if (ms < 0)
		return;
	t->ewma_ms = t->ewma_ms > 0 ? t->ewma_ms + EWMA_ALPHA * (ms - t->ewma_ms) : ms;
}
