/* The request path: authenticate, match a route, rewrite, forward, relay the answer.
 *
 * One struct proxy_req per request, created in proxy_handle and freed in exactly one place
 * (finish), which always runs from a libevent callback: never from inside a curl callback
 * and never from inside one of http.c's calls (the Redis freeClientAsync idea). */
#ifndef FG_PROXY_H
#define FG_PROXY_H

#include <stddef.h>


struct gateway;
struct http_request;

/* The HTTP server's request handler (arg: the gateway): serves one client request from its
 * head on. req->id is already on the response headers. */
void proxy_request(void *arg, struct http_request *req);
/* What the proxy keeps per client connection (the memo of the key it sent last), for
 * http_handlers.conn_data_size and .conn_closed (which wipes the secret). */
size_t proxy_conn_data_size(void);
void proxy_conn_closed(void *arg, void *conn_data);

/* Header cleaning, exposed for tests: true if a client header must not be forwarded
 * (always stripped, hop-by-hop, named in the client's Connection header, or listed in the
 * route's strip_headers). `connection` is the Connection header's value or NULL. */
int proxy_header_stripped(const char *name, char *const *extra, size_t n_extra,
                          const char *connection);

#endif
