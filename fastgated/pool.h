/* The live state of the upstreams of every route's pool (DESIGN.md, Upstream pools): for
 * each target its circuit breaker, the requests on it now, its latency average, whether an
 * operator drained it, its health checks and its attempt counters. Choosing the target of
 * an attempt (balance.c) and the breaker's decisions (breaker.c) happen here, against
 * this state.
 *
 * Ownership: a registry (struct pool, one per event loop) holds the states; a route
 * table's targets reference them (route_target.st, counted). pool_bind gives a newly
 * loaded table the states of the table it replaces wherever a target is the same one --
 * same route, URL, provider, deployment and key -- so a reload keeps a tripped breaker tripped; a state
 * nothing references any more is freed. There is one registry for all event loops, so a
 * target has one breaker and one count of requests in flight however many loops send to
 * it: its mutex guards every state, and each route's balancer (routes.h: bal, bt), for
 * the few hundred instructions of a pick or an attempt's end. The functions below take
 * it themselves; pool_lock is for readers of the states (metrics, health checks).
 *
 * Layer: state. */
#ifndef FG_POOL_H
#define FG_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#include "breaker.h"

struct route;
struct route_table;

/* How one attempt on a target ended. */
enum attempt_outcome {
	OUTCOME_OK,          /* answered (any status that is not one below) */
	OUTCOME_CONNECT,     /* could not connect, resolve or shake hands: nothing was sent */
	OUTCOME_TIMEOUT,     /* no answer head in time */
	OUTCOME_RESET,       /* closed or reset on the way */
	OUTCOME_PROTOCOL,    /* answered something that is not HTTP */
	OUTCOME_429,
	OUTCOME_5XX,
	OUTCOME_ABANDONED,   /* the client left or the deadline passed first: no verdict */
	OUTCOME_COUNT
};
const char *attempt_outcome_name(enum attempt_outcome o);

struct target_state {
	unsigned refs;
	struct pool *pool;           /* NULL once the registry is gone */
	struct target_state *prev, *next;
	char *route;                 /* identity: route name, URL, provider, deployment, key hash */
	char *url;
	int provider;
	char *deployment;
	unsigned char key_hash[32];

	struct breaker br;
	unsigned inflight;
	double ewma_ms;              /* time to the answer's head, averaged; 0 = no sample */
	bool drained;                /* by `upstream drain`: no new attempts */
	/* active health checks (health.c): the last verdict and the runs that lead to one */
	int health_ok_run, health_fail_run;
	bool health_checked;         /* a verdict has been reached */
	bool health_ok;
	bool health_busy;            /* a check is under way */
	int64_t health_next_ms;      /* monotonic time of the next check */
	/* counters for the metrics */
	uint64_t attempts[OUTCOME_COUNT];
	uint64_t transitions[3];     /* by the breaker state moved to */
};

struct pool {
	pthread_mutex_t mu;
	bool locking;            /* several loops share it (pool_share): take mu */
	struct target_state *head;
	size_t n;
};

void pool_init(struct pool *p);
/* Several event loops will use the registry: from now on its functions take the lock
 * (with one loop they skip it). Before the other loops start. */
void pool_share(struct pool *p);
/* Detach every state (the tables still holding them free them). */
void pool_clear(struct pool *p);
/* Hold the lock of the registry the route's (or the state's) targets belong to, to read
 * their states; NULL-safe. */
void pool_lock(const struct route *r);
void pool_unlock(const struct route *r);
void target_state_lock(const struct target_state *s);
void target_state_unlock(const struct target_state *s);

/* Give every target of t a state: the existing one of the same identity, else a new one. */
void pool_bind(struct pool *p, struct route_table *t);
void target_state_unref(struct target_state *s);   /* NULL is fine */

/* May the target take an attempt now (not drained, breaker would let one through)? The
 * caller holds the lock. */
bool target_available(const struct target_state *s, int64_t now_ms);
/* The same for target i of r, taking the lock. */
bool pool_target_available(const struct route *r, size_t i, int64_t now_ms);

/* The target of r for the next attempt, skipping those in `tried` (bit i = targets[i]):
 * its index, or -1 when none is available. *pass is the breaker's ticket for the attempt,
 * to be handed back to pool_attempt_end. */
int pool_pick(struct route *r, uint64_t tried, int64_t now_ms, enum breaker_pass *pass);

/* Milliseconds until some target of r that is not drained takes requests again, for a
 * 503's Retry-After; 0 when one would now, -1 when every target is drained. */
int64_t pool_wait_ms(const struct route *r, int64_t now_ms);
/* Has r a target that could take a request now (for /health/ready)? */
bool pool_route_available(const struct route *r, int64_t now_ms);

/* pool_pick's ticket for target i given back unused: nothing was sent to it. */
void pool_release(struct route *r, size_t i, enum breaker_pass pass);

/* An attempt on target i of r starts / ends. retry_after_s >= 0 when the answer (429 or
 * 503) carried one; ttfb_ms < 0 when no head came. */
void pool_attempt_start(struct route *r, size_t i);
void pool_attempt_end(struct route *r, size_t i, int64_t now_ms, enum breaker_pass pass,
                      enum attempt_outcome o, int64_t retry_after_s, double ttfb_ms);

/* The outcome class of an answer's status: OK, 429 or 5XX (500, 502, 503, 504). */
enum attempt_outcome attempt_outcome_of_status(long status);

#endif
