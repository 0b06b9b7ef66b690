/* The https:// transport: one libcurl multi handle driven by the libevent loop, in the
 * shape of curl's docs/examples/multi-event.c, behind transport.h. Connections are kept
 * alive and reused by the multi's connection cache; easy handles are pooled.
 *
 * Rules kept here so callers need not know them: curl_multi_socket_action is only called
 * from libevent callbacks, finished transfers are removed from the multi before the
 * caller's done runs, and a request that is not replayable is handed to curl through a
 * read callback that cannot rewind, so curl cannot send it a second time on its own.
 *
 * Layer: io. */
#ifndef FG_TRANSPORT_CURL_H
#define FG_TRANSPORT_CURL_H

#include <event2/event.h>

#include "transport.h"

/* libcurl's process-wide set-up and tear-down: once, before any thread starts, and at
 * exit. -1 when libcurl cannot be initialised. */
int transport_curl_global_init(void);
void transport_curl_global_cleanup(void);

/* NULL with *err set (caller frees) when libcurl cannot be set up. */
struct transport *transport_curl_new(struct event_base *base, char **err);
void transport_curl_free(struct transport *t);

#endif
