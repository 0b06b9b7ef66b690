/* Picking the target of a route's pool for the next attempt: round robin, smooth weighted
 * round robin (nginx's), least in flight (power of two choices), latency (peak EWMA with
 * two choices, as Linkerd), random (by weight); priority tiers; targets a request already
 * tried are skipped.
 *
 * Pure: no clock, no I/O, no allocation. What a target's availability is (breaker,
 * drained, health) and how many requests it has in flight is the caller's to keep;
 * randomness comes from the balancer's own seeded generator, so a test is repeatable.
 *
 * Layer: state. */
#ifndef FG_BALANCE_H
#define FG_BALANCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum balance_kind {
	BALANCE_ROUND_ROBIN,
	BALANCE_WEIGHTED,
	BALANCE_LEAST_INFLIGHT,
	BALANCE_LATENCY,
	BALANCE_RANDOM,
};

/* "round_robin", "weighted", ... into *out; -1 for a name that is none of them. */
int balance_kind_parse(const char *name, enum balance_kind *out);
const char *balance_kind_name(enum balance_kind k);

/* A request remembers the targets it tried in a 64-bit mask: a pool has at most this many. */
#define BALANCE_MAX_TARGETS 64

/* What the balancer reads of a target, and the little it keeps there. */
struct balance_target {
	int weight;            /* >= 1, from the route */
	int priority;          /* tier, from the route: lower is served first */
	bool available;        /* the caller's: breaker lets it through, not drained */
	unsigned inflight;     /* the caller's: requests on it now */
	double ewma_ms;        /* balance_observe's: latency EWMA, 0 before the first sample */
	int64_t current;       /* weighted: the running weight of smooth round robin */
};

struct balancer {
	enum balance_kind kind;
	unsigned next;         /* round robin: where the next look starts */
	uint64_t rng;          /* xorshift64* state, never 0 (balance_init seeds it) */
};

void balance_init(struct balancer *b, enum balance_kind kind, uint64_t seed);

/* The index of the target for the next attempt, or -1 when there is none: only available
 * targets whose bit is not set in `tried` count, and of those only the tier with the
 * lowest priority that has one (a backup tier serves only while no primary can). n is at
 * most BALANCE_MAX_TARGETS. */
int balance_pick(struct balancer *b, struct balance_target *t, size_t n, uint64_t tried);

/* A finished attempt's time to its answer's head, into the target's latency average. */
void balance_observe(struct balance_target *t, double ms);

#endif
