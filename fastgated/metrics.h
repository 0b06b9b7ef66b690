/* Counters for /metrics (Prometheus text) and `fastgate-cli metrics`. Owned by the loop
 * thread; updated when a request finishes (a request-done subscriber).
 *
 * Layer: state. */
#ifndef FG_METRICS_H
#define FG_METRICS_H

#include <event2/buffer.h>

#include "reqdone.h"

struct gateway;
struct metrics;

struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);
/* The shard of one of several loops: any loop's scrape reads it, so it is locked from now
 * on (with one loop it is not). Before the other loops start. */
void metrics_share(struct metrics *m);

/* The request-done subscriber (arg: the gateway): counts the request by route and status,
 * its duration and TTFB, an upstream failure by kind, its tokens by kind and its cost by
 * route and model (at most 256 models a route, the rest as "other"), and an unpriced
 * request by route. */
void metrics_on_done(void *arg, const struct request_done *d);
/* The Prometheus text of everything counted, appended to b. -1 when out of memory. */
int metrics_render(struct gateway *gw, struct evbuffer *b);

#endif
