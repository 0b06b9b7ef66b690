/* Who the client is, behind proxies (DESIGN.md, Operating it): X-Forwarded-For is believed
 * only from a peer in trusted_proxies, which also decides the audit's client_ip.
 *
 * Layer: flow. */
#ifndef FG_FORWARDED_H
#define FG_FORWARDED_H

#include <stddef.h>

struct config;
struct http_request;

/* The client's address into out (cap bytes): the connecting peer; or, when the peer is a
 * trusted proxy that sent X-Forwarded-For, the last address in it that is not a trusted
 * proxy itself (the first untrusted hop, counted from the gateway). */
void forwarded_client_ip(const struct config *cfg, const struct http_request *req, char *out,
                         size_t cap);
/* The upstream's X-Forwarded-For value when the peer is a trusted proxy that sent one: its
 * chain with the peer's address appended, a new string (caller frees). NULL otherwise (or
 * out of memory): then the value is the peer's address alone, and a header the client
 * wrote is dropped (anyone can write one). */
char *forwarded_for(const struct config *cfg, const struct http_request *req);
/* The upstream's X-Forwarded-Proto value: a trusted proxy's own (it terminated TLS), else
 * the scheme the client used with the gateway. */
const char *forwarded_proto(const struct config *cfg, const struct http_request *req);

#endif
