/* The client-facing HTTP server: evhttp behind a per-connection guard.
 *
 * Every accepted connection gets a bufferevent filter (the guard) between the socket and
 * evhttp. Inbound, the guard runs reqcheck over each request, holds a request head until it
 * is complete and valid (with a deadline), passes one request at a time to evhttp, and
 * answers violations itself (400/408/413/414/431, then a lingering close). Outbound, it
 * writes straight to the socket so that "written" means "in the kernel", which is what
 * streaming backpressure and evhttp's close-after-reply need. */
#ifndef FG_HTTP_H
#define FG_HTTP_H

#include <stddef.h>
#include <event2/http.h>

struct gateway;
struct http_server;

/* Bind gw->cfg->listen and start serving; fills gw->listen_addr with the bound address.
 * NULL with *err set (caller frees) on failure. */
struct http_server *http_server_start(struct gateway *gw, char **err);
/* SIGTERM: stop accepting, close idle keep-alive connections. In-flight requests go on. */
void http_server_stop_accepting(struct http_server *s);
void http_server_free(struct http_server *s);
int http_server_connections(const struct http_server *s);

/* Call gone(arg) when the client connection of req goes away (hang-up, write error,
 * timeout), from inside evhttp: the callee must only note it and defer work. Pass
 * gone = NULL to stop watching, which must happen before the reply is handed back. */
void http_watch_client(struct http_server *s, struct evhttp_request *req,
                       void (*gone)(void *), void *arg);

/* Write what is queued for this request's client to its socket now, as far as the socket
 * takes it without blocking: used before dropping a connection mid-reply. */
void http_flush_now(struct http_server *s, struct evhttp_request *req);

/* Bytes accepted for this request's client but not yet in the kernel. */
size_t http_client_backlog(struct evhttp_request *req);

/* Answer with a gateway error in the OpenAI shape (and X-Request-Id, set by the caller
 * beforehand on the output headers). */
void http_send_error(struct evhttp_request *req, int status, const char *code, const char *message);

/* Peer address as text ("127.0.0.1"), into out. */
void http_client_ip(struct evhttp_request *req, char *out, size_t cap);

#endif
