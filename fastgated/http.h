/* The client-facing HTTP/1.1 server: listener, connections, request framing, replies.
 *
 * Our own, on plain sockets and libevent events (the shape of libevent's sample server and
 * Redis' networking.c): a connection reads into one buffer, reqcheck.c validates every byte
 * of a request (holding the head until it is complete, with a deadline), the head is parsed
 * in place, the request goes to the handler, and replies are written with writev from one
 * output buffer. Violations are answered here (400/408/413/414/431/503, then a lingering
 * close). One request per connection is in the handler at a time; pipelined requests wait
 * in the buffer, in order.
 *
 * It replaced evhttp behind a bufferevent filter, which cost about a third of the gateway's
 * instructions per request and two epoll_ctl calls per request.
 *
 * Request life: a request is handed to its handler as soon as its head is in; the body is
 * read only when the handler asks for it (http_read_body), so a client refused on its head
 * (no key) never makes the gateway allocate or read its body. The handler owns a request
 * from dispatch until it calls one of the ending functions (http_reply*, http_reply_end,
 * http_send_error, http_abort). If the client goes away first, the `gone` callback set
 * with http_watch_client runs (always from the loop, never inside one of these calls) and
 * the request is invalid from then on.
 *
 * Layer: io. The server includes nothing above its layer: the gateway registers what it
 * serves (http_handlers, http_server_route) and hears of refusals through a callback. */
#ifndef FG_HTTP_H
#define FG_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "config.h"
#include "reqid.h"

struct http_server;

enum http_method { HTTP_GET, HTTP_POST, HTTP_HEAD, HTTP_PUT, HTTP_DELETE, HTTP_OPTIONS, HTTP_PATCH };

struct http_header {
	const char *name, *value;
	size_t name_len;              /* strlen(name): lookups compare lengths first */
};

/* What a handler reads. Strings are NUL-terminated and live as long as the request. */
struct http_request {
	enum http_method method;
	const char *method_name;      /* "POST" */
	const char *path;             /* without the query */
	const char *query;            /* after '?', or NULL */
	const struct http_header *headers;
	size_t n_headers;
	bool http11;
	bool anthropic_errors;        /* http_send_error answers in Anthropic's shape (the
	                               * handler sets it for clients of its Messages API) */
	char id[REQID_LEN + 1];       /* X-Request-Id, already on the reply headers */
	struct http_conn *conn;       /* private */
};

/* A request the server answered itself (400/408/413/414/431/503) before any handler saw
 * it: reported so that it is audited and counted like every other request. */
struct http_refusal {
	const char *id;
	const char *client_ip;
	int status;
	const char *code;             /* "bad_request", "request_too_large", ... */
};

typedef void (*http_handler_fn)(void *arg, struct http_request *req);

/* What the gateway plugs into the server: the server knows nothing of keys, routes, the
 * audit or metrics. */
struct http_handlers {
	http_handler_fn request;      /* every request no exact path below claimed */
	void (*refused)(void *arg, const struct http_refusal *r);
	/* per-connection memory for the handler (zeroed), and its cleanup at close */
	size_t conn_data_size;
	void (*conn_closed)(void *arg, void *conn_data);
	void *arg;
};

/* One event loop's server among several (`workers`), all listening on one address. */
struct http_server_opts {
	unsigned loop;            /* the loop's index: its request ids carry it (reqid.h) */
	bool reuseport;           /* several loops accept on the address (SO_REUSEPORT) */
	const char *bind;         /* ADDR:PORT to bind instead of cfg->listen: the address the
	                           * first loop bound (its port, where cfg asked for port 0) */
	int *conn_total;          /* connections open on every loop (atomic), against
	                           * max_connections */
};

/* Bind cfg->listen and start serving on base. opts NULL: the only loop. NULL with *err
 * set (caller frees) on failure. cfg->max_connections is lowered to what the descriptor
 * limit allows. The first of several loops (opts->reuseport without opts->bind) first
 * binds the address alone, so that a port another process holds is refused, not shared. */
struct http_server *http_server_start(struct event_base *base, struct config *cfg,
                                      const struct http_handlers *h,
                                      const struct http_server_opts *opts, char **err);
/* GET requests without a query for exactly this path go to fn instead (/health, /metrics).
 * -1 when the table is full. */
int http_server_route(struct http_server *s, const char *path, http_handler_fn fn, void *arg);
/* The address as bound, e.g. "127.0.0.1:8514". */
const char *http_server_addr(const struct http_server *s);
/* NULL when the listener speaks plain HTTP; else a line about the certificate serving. */
const char *http_server_tls(const struct http_server *s);
/* A reloaded certificate (the server takes t) for a listener that speaks TLS: new
 * connections get it; open ones keep theirs until they close. */
struct tls_server;
void http_server_swap_tls(struct http_server *s, struct tls_server *t);
/* SIGTERM: stop accepting, close idle keep-alive connections, answer further requests on
 * open connections with Connection: close. In-flight requests go on. */
void http_server_stop_accepting(struct http_server *s);
void http_server_free(struct http_server *s);
/* Connections open on this server now; any thread. */
int http_server_connections(const struct http_server *s);
/* The most connections open at once since the last call (or the start); any thread. */
int http_server_take_peak(struct http_server *s);
/* The most client connections the fd limit leaves room for (raising the soft limit to
 * the hard one first): max_connections is cut to it, at start and on reload. */
int http_conn_capacity(void);

/* First header of that name (case-insensitive), or NULL. */
const char *http_find_header(const struct http_request *req, const char *name);
/* Read the body. HTTP_BODY_READY: it is in already (it came with its head, or
 * there is none) and done will not run. HTTP_BODY_PENDING: done(arg, 0) runs from the loop
 * once it is in, or done(arg, status) when it could not be read (408 too slow, 413 over
 * the limit, 400 malformed framing); Expect: 100-continue is answered now. A status (408,
 * 413, 400) returned at once: it could not be read, done will not run. After a status the
 * handler answers with it. A request ended without its body having been read closes the
 * connection after the answer, so a client that was refused never makes the gateway
 * buffer what it sends. */
#define HTTP_BODY_READY 0
#define HTTP_BODY_PENDING 1
int http_read_body(struct http_request *req, void (*done)(void *arg, int status), void *arg);
/* The request body once read; the caller takes it (free() it). NULL with *len 0 when there
 * is none. */
char *http_take_body(struct http_request *req, size_t *len);
/* The client connected over TLS. */
bool http_request_tls(const struct http_request *req);
/* Peer address as text ("127.0.0.1"). */
const char *http_client_ip(const struct http_request *req);
/* The handler's per-connection memory (http_handlers.conn_data_size bytes). */
void *http_conn_data(struct http_request *req);

/* Call gone(arg) when the client goes away while the handler holds req; NULL stops it. */
void http_watch_client(struct http_request *req, void (*gone)(void *), void *arg);

/* Add a reply header (name and value are copied). */
void http_add_header(struct http_request *req, const char *name, const char *value);
/* Add reply header lines the gateway made itself, "Name: value\r\n" each, in one copy:
 * for a set of headers built per request (x-ratelimit-*), where checking each name and
 * value again would cost more than making them. */
void http_add_header_lines(struct http_request *req, const char *lines, size_t len);
/* Close the connection after this reply. */
void http_close_after(struct http_request *req);

/* Ending replies: a whole answer, or a gateway error in the OpenAI shape. Statuses without
 * a body (1xx, 204, 304) and answers to HEAD send no body bytes; `head_length` (>= 0)
 * is the Content-Length to announce for a HEAD answer or a 304 (the upstream's), -1 for
 * the body's own length. */
void http_reply(struct http_request *req, int status, const char *body, size_t len);
void http_reply_buf(struct http_request *req, int status, struct evbuffer *body,
                    int64_t head_length);
void http_send_error(struct http_request *req, int status, const char *code, const char *message);

/* Streaming: the head (chunked for HTTP/1.1 clients, close-delimited for HTTP/1.0), then
 * chunks (the buffer is emptied), then the end, which ends the request. */
void http_reply_start(struct http_request *req, int status);
void http_reply_chunk(struct http_request *req, struct evbuffer *data);
void http_reply_end(struct http_request *req);
/* End mid-reply: what is queued is written as far as the socket takes it now, then the
 * connection is closed, so the client sees a truncated answer. Ends the request. */
void http_abort(struct http_request *req);

/* Bytes queued for this client and not yet in the kernel. */
size_t http_backlog(const struct http_request *req);
/* Called (from the loop) after each write to this client while req is held. */
void http_on_written(struct http_request *req, void (*fn)(void *), void *arg);

#endif
