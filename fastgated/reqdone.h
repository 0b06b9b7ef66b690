/* The request-done hook: the one place a finished request is announced.
 *
 * Every request ends by emitting one event, whether the proxy served it or refused it
 * (401, 404...) or the HTTP server refused it (400, 413, 431...). The gateway's own
 * probes, /health and /metrics, are the exception: load balancers and scrapers call
 * them every few seconds, and a row each would bury the trail. The audit trail, the live tail and the metrics subscribe here rather than being
 * called from each place a request can end (later: quota settlement, the response cache,
 * target feedback). Subscribers run on the loop thread, in the order they subscribed, and
 * must not block; the event and its strings are borrowed for the call only.
 *
 * Layer: state. */
#ifndef FG_REQDONE_H
#define FG_REQDONE_H

#include <stddef.h>

#include "audit.h"

/* What a finished request was: the audit row as it will be written (borrowed pointers).
 * Fields a later phase adds (cost, attempts, user) go into the row first. */
struct request_done {
	const struct audit_record *row;
	double total_s;               /* start to end, seconds */
	double ttfb_s;                /* start to the first upstream byte; < 0 = none */
	const char *upstream_error;   /* an upstream failure kind, for metrics, or NULL */
	int with_bodies;              /* the row carries logged bodies (log_bodies) */
	int refused;                  /* the HTTP server refused it before any handler */
};

typedef void (*reqdone_fn)(void *arg, const struct request_done *d);

#define REQDONE_MAX 8

struct reqdone_hooks {
	struct {
		reqdone_fn fn;
		void *arg;
	} sub[REQDONE_MAX];
	size_t n;
};

/* Add a subscriber. -1 when REQDONE_MAX are already there. */
int reqdone_subscribe(struct reqdone_hooks *h, reqdone_fn fn, void *arg);
/* Tell every subscriber, in order. */
void reqdone_emit(const struct reqdone_hooks *h, const struct request_done *d);

#endif
