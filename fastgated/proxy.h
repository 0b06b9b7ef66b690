/* The request path: the phases from authenticate to done (proxy.c), the attempt
 * (forward.c) and the relay of the answer (relay.c); their shared state is request.h.
 *
 * Layer: flow. */
#ifndef FG_PROXY_H
#define FG_PROXY_H

#include <stdbool.h>
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
/* Free the memory the loop keeps from finished requests for the next ones (at its end). */
void proxy_spares_free(struct gateway *gw);

/* Header cleaning, exposed for tests: true if a client header must not be forwarded
 * (always stripped, hop-by-hop, named in the client's Connection header, or listed in the
 * route's strip_headers). `connection` is the Connection header's value or NULL. */
int proxy_header_stripped(const char *name, char *const *extra, size_t n_extra,
                          const char *connection);
/* Is `name` one of the tokens of a Connection header value? (both directions) */
bool proxy_listed_in_connection(const char *conn, size_t conn_len, const char *name, size_t nl);
/* The request path means the same to us and to any upstream: no dot segments, no encoded
 * "/", "\" or NUL, no raw "\". */
bool proxy_path_is_clean(const char *path);

#endif
