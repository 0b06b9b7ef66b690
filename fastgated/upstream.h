/* The upstream side: one libcurl multi handle driven by the libevent loop, in the shape of
 * curl's docs/examples/multi-event.c. Connections to upstreams are kept alive and reused by
 * the multi's connection cache; easy handles are pooled.
 *
 * Rules kept here so callers need not know them: curl_multi_socket_action is only called
 * from libevent callbacks, and finished transfers are removed from the multi before the
 * caller's done function runs, outside any curl callback. */
#ifndef FG_UPSTREAM_H
#define FG_UPSTREAM_H

#include <curl/curl.h>
#include <event2/event.h>

struct upstream;

/* Embedded by the caller in its per-request state; CURLOPT_PRIVATE points at it. */
struct upstream_xfer {
	void (*done)(struct upstream_xfer *x, CURLcode result);
	CURL *easy;
	int active;   /* added to the multi and not yet finished or cancelled */
};

struct upstream *upstream_new(struct event_base *base, char **err);
void upstream_free(struct upstream *u);

/* A reset easy handle from the pool (or a new one); NULL when out of memory. */
CURL *upstream_easy_get(struct upstream *u);
/* Give a handle back once its transfer is finished or cancelled. */
void upstream_easy_put(struct upstream *u, CURL *easy);

/* Start x->easy (already configured). x->done runs once, from the loop, unless cancelled. */
int upstream_start(struct upstream *u, struct upstream_xfer *x);
/* Stop a transfer; x->done will not run. Safe when it already finished. Must not be called
 * from inside a curl callback. */
void upstream_cancel(struct upstream *u, struct upstream_xfer *x);

/* Transfers running now. */
int upstream_running(const struct upstream *u);

#endif
