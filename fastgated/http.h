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
 * Request life: the handler owns a request from dispatch until it calls one of the ending
 * functions (http_reply*, http_reply_end, http_send_error, http_abort). If the client goes
 * away first, the `gone` callback set with http_watch_client runs (always from the loop,
 * never inside one of these calls) and the request is invalid from then on. */
#ifndef FG_HTTP_H
#define FG_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <event2/buffer.h>

struct key_memo;

struct gateway;
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
	struct http_conn *conn;       /* private */
};

/* Bind gw->cfg->listen and start serving; fills gw->listen_addr with the bound address.
 * NULL with *err set (caller frees) on failure. */
struct http_server *http_server_start(struct gateway *gw, char **err);
/* SIGTERM: stop accepting, close idle keep-alive connections. In-flight requests go on. */
void http_server_stop_accepting(struct http_server *s);
void http_server_free(struct http_server *s);
int http_server_connections(const struct http_server *s);

/* First header of that name (case-insensitive), or NULL. */
const char *http_find_header(const struct http_request *req, const char *name);
/* The request body; the caller takes it (free() it). NULL with *len 0 when there is none. */
char *http_take_body(struct http_request *req, size_t *len);
/* Peer address as text ("127.0.0.1"). */
const char *http_client_ip(const struct http_request *req);
/* The connection's memo of the last key its client presented (keys.h), for
 * keystore_lookup_memo; wiped when the connection closes. */
struct key_memo *http_key_memo(struct http_request *req);

/* Call gone(arg) when the client goes away while the handler holds req; NULL stops it. */
void http_watch_client(struct http_request *req, void (*gone)(void *), void *arg);

/* Add a reply header (name and value are copied). */
void http_add_header(struct http_request *req, const char *name, const char *value);
/* Close the connection after this reply. */
void http_close_after(struct http_request *req);

/* Ending replies: a whole answer, or a gateway error in the OpenAI shape. */
void http_reply(struct http_request *req, int status, const char *body, size_t len);
void http_reply_buf(struct http_request *req, int status, struct evbuffer *body);
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
