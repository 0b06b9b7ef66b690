/* Plain-HTTP upstreams without libcurl: a keep-alive connection pool per origin and an
 * HTTP/1.1 response parser, driven by the gateway's libevent loop.
 *
 * Why: on the request path curl cost more than the rest of the gateway together (its
 * multi/socket machinery, two poll() calls per reused connection, a timer round per
 * transfer). For http:// origins given as an IP address the gateway now frames the request
 * and parses the answer itself; https:// and named hosts (localhost too) still go through
 * upstream.c (curl: TLS, asynchronous DNS, every address of a name).
 *
 * Contract with the caller (proxy.c): the callbacks in struct upconn_xfer see the answer's
 * status line, header lines and final empty line one at a time (CRLF included, as curl's
 * header callback does), then the body, de-chunked. `done` runs exactly once per started
 * transfer unless it is cancelled, and always as the last thing the pool does with it, so
 * the caller may free the transfer inside `done`. */
#ifndef FG_UPCONN_H
#define FG_UPCONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <event2/event.h>

/* ---- response parser (pure; unit-tested in tests/unit/test_upconn.c) ------------------ */

enum h1_state { H1_HEAD, H1_BODY_LEN, H1_BODY_EOF, H1_CHUNK_SIZE, H1_CHUNK_DATA,
                H1_CHUNK_CRLF, H1_TRAILER, H1_DONE };

/* what h1_feed stopped on */
enum h1_event { H1_MORE, H1_COMPLETE, H1_PAUSED, H1_ABORTED, H1_BAD };

#define H1_HEAD_MAX (64 * 1024)  /* one response head, status line to empty line */

struct h1_callbacks {
	/* a status or header line, or the empty line that ends a head: 0 goes on, -1 aborts */
	int (*line)(void *arg, const char *line, size_t len);
	/* body bytes: 0 consumed, 1 pause (not consumed: offered again after a resume), -1 abort */
	int (*body)(void *arg, const char *data, size_t len);
};

struct h1_parser {
	enum h1_state state;
	bool head_request;      /* the request was HEAD: no body follows any head */
	int status;             /* of the head being read, then of the final answer */
	int minor;              /* HTTP/1.minor */
	bool keepalive;         /* the connection can carry another request afterwards */
	bool seen_bytes;        /* any byte of an answer arrived */
	bool has_len, chunked, conn_close, conn_keep;
	uint64_t remaining;     /* body bytes, or bytes left in the current chunk */
	size_t head_bytes;      /* size of the head so far, against H1_HEAD_MAX */
	size_t trailer_bytes;
};

void h1_init(struct h1_parser *p, bool head_request);
/* Parse what arrived. Returns the bytes consumed; *ev says why it stopped. Bytes after a
 * complete answer are left unconsumed (the caller treats them as a protocol error). */
size_t h1_feed(struct h1_parser *p, const char *data, size_t len,
               const struct h1_callbacks *cb, void *arg, enum h1_event *ev);
/* The peer closed. H1_COMPLETE for a read-until-close body, otherwise H1_BAD. */
enum h1_event h1_eof(const struct h1_parser *p);

/* ---- connection pool ------------------------------------------------------------------ */

enum upconn_result { UPC_OK, UPC_CONNECT, UPC_RESET, UPC_PROTOCOL, UPC_ABORTED, UPC_NOMEM };

struct upconn_pool;
struct upconn;

struct upconn_xfer {
	/* set by the caller before upconn_start */
	const struct h1_callbacks *cb;
	void *arg;
	void (*done)(struct upconn_xfer *x, enum upconn_result result);
	struct iovec req[2];      /* request head and body; the caller keeps them alive */
	bool head_request;
	/* the pool's */
	struct upconn *conn;
	size_t sent;
	bool active, paused, retried;
};

struct upconn_pool *upconn_pool_new(struct event_base *base);
void upconn_pool_free(struct upconn_pool *p);

/* True when `host` ("host[:port]" of an http:// URL) is one this pool can reach itself.
 * A host the pool has already connected to is answered from its list of origins. */
bool upconn_supported(const struct upconn_pool *p, const char *host);

/* Send x->req to `host` on a pooled connection (or a new one). 0, or -1 when no socket
 * could be made (x->done does not run then). */
int upconn_start(struct upconn_pool *p, const char *host, struct upconn_xfer *x);
/* After the body callback asked for a pause: offer the held bytes again, then read on. */
void upconn_resume(struct upconn_xfer *x);
/* Abandon a transfer; its connection is closed and x->done will not run. */
void upconn_cancel(struct upconn_xfer *x);

/* Connections open (busy + idle) and idle, for tests and metrics. */
void upconn_counts(const struct upconn_pool *p, unsigned *open, unsigned *idle);

#endif
