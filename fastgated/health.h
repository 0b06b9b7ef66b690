/* Active health checks (a route's `health:` block): every `interval` seconds a GET of the
 * route's health path goes to each of its upstreams, through the transport the upstream
 * uses for requests, with its key. `unhealthy` failures in a row open the upstream's
 * breaker, `healthy` passes in a row close it (breaker_health). The runs and the next
 * check's time live in the upstream's state (pool.h), so they survive a reload.
 *
 * Ownership: health_start returns a checker the caller frees with health_stop, which
 * cancels the checks under way. One per event loop.
 *
 * Layer: flow. */
#ifndef FG_HEALTH_H
#define FG_HEALTH_H

struct gateway;
struct health;

/* Start the checker's one-second tick on gw->base; NULL when out of memory. */
struct health *health_start(struct gateway *gw);
void health_stop(struct health *h);

#endif
