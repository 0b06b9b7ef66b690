/* The http:// transport: our own keep-alive connection pool and HTTP/1.1 framing (the
 * parser is h1resp.c), driven by the gateway's libevent loop, behind transport.h.
 *
 * Why not curl for these: on the request path curl cost more than the rest of the gateway
 * together (its multi/socket machinery, two poll() calls per reused connection, a timer
 * round per transfer). Names (localhost too) are resolved by resolve.c off the loop and
 * kept for a minute; every address of a name is tried in turn until one connects.
 *
 * Layer: io. */
#ifndef FG_TRANSPORT_H1_H
#define FG_TRANSPORT_H1_H

#include <event2/event.h>

#include "transport.h"

/* NULL with *err set (caller frees) when the pool or its resolver cannot be made. */
struct transport *transport_h1_new(struct event_base *base, char **err);
void transport_h1_free(struct transport *t);

#endif
