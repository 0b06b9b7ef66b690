/* Counters for /metrics (Prometheus text) and `fastgate-cli metrics`. Owned by the loop
 * thread; updated when a request finishes. */
#ifndef FG_METRICS_H
#define FG_METRICS_H

#include <event2/http.h>

struct gateway;
struct metrics;

struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);

/* One finished request: route ("" when none matched), status, seconds to done and to the
 * first upstream byte (< 0 when there was none), upstream error kind or NULL. */
void metrics_record(struct gateway *gw, const char *route, int status, double total_s,
                    double ttfb_s, const char *upstream_error);
/* A request http.c refused before it reached a handler (400/408/413/414/431/503). */
void metrics_count_rejected(struct gateway *gw, int status);
struct http_request;
void metrics_serve(struct gateway *gw, struct http_request *req);

#endif
