/* One interface for talking to an upstream, whatever carries the bytes.
 *
 * Two transports implement it: native HTTP/1.1 (transport_h1.c: our own keep-alive pool
 * and response parser, names resolved off the loop by resolve.c) for every http://
 * upstream, and libcurl (transport_curl.c) for https://. Which one serves a target is fixed when the routes
 * are loaded (route_transport), never guessed per request.
 *
 * The caller describes the request once, as the bytes of an HTTP/1.1 head (request line,
 * Host, headers, the blank line) plus a body; the native transport writes them as they are
 * and curl reads its header list out of them. The answer comes back the same way from both:
 * the status line, each header line and the blank line one at a time (CRLF included), then
 * the body de-chunked, then `done` with one of fastgate's own result codes. No libcurl type
 * appears outside transport_curl.c.
 *
 * Rules both keep: `done` runs exactly once per started transfer unless the caller
 * cancels it, from the loop (never inside tr_start; inside tr_resume it may, as the held
 * bytes complete the answer), and last: the transport touches the transfer no more after
 * it, so the caller may free the transfer, and end its request, inside it. A request that may have reached the
 * upstream is never sent again unless the caller marked it `replayable` (an idempotent
 * method, RFC 9110 9.2.2); even then only on a reused connection that failed before any
 * byte of an answer.
 *
 * Layer: io. */
#ifndef FG_TRANSPORT_H
#define FG_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>

enum tr_result {
	TR_OK,
	TR_CONNECT,     /* refused or unreachable */
	TR_RESOLVE,     /* the name did not resolve */
	TR_TIMEOUT,     /* connecting took too long */
	TR_TLS,         /* handshake or certificate */
	TR_RESET,       /* closed or reset before the answer was complete */
	TR_PROTOCOL,    /* an answer that is not HTTP, or not one we can frame */
	TR_ABORTED,     /* the caller's callback asked to stop */
	TR_NOMEM,
};

/* "connect", "resolve", ... : the error kinds of metrics and the audit */
const char *tr_result_kind(enum tr_result r);

enum tr_kind { TR_KIND_NATIVE, TR_KIND_CURL, TR_KIND_COUNT };

struct tr_callbacks {
	/* a status or header line, or the blank line that ends the head: 0 goes on, -1 aborts */
	int (*line)(void *arg, const char *line, size_t len);
	/* body bytes: 0 consumed, 1 pause (not consumed: offered again after tr_resume), -1 abort */
	int (*body)(void *arg, const char *data, size_t len);
	void (*done)(void *arg, enum tr_result r);
};

/* What to send, and to whom. Everything is borrowed until `done` (or tr_cancel). */
struct tr_request {
	const char *origin;       /* "http://10.0.0.5:8000", "https://api.example.com" */
	const char *host;         /* "host[:port]" of the origin */
	const char *head;         /* the request head, blank line included */
	size_t head_len;
	const char *body;
	size_t body_len;
	bool head_request;        /* HEAD: no body follows any answer head */
	bool replayable;          /* may be re-sent on a new connection (see above) */
	int connect_timeout;      /* seconds */
	const char *ca_file;      /* https: verify against this bundle alone, or NULL */
};

struct transport;

struct tr_xfer {
	/* set by the caller before tr_start */
	struct tr_request rq;
	const struct tr_callbacks *cb;
	void *arg;
	/* the transport's */
	struct transport *t;
	void *impl;               /* native: its connection; curl: the easy handle */
	size_t sent;              /* request bytes written (native) */
	bool active;              /* started, and neither done nor cancelled */
	bool paused;
	bool retried;
	bool waiting;             /* native: queued behind a name lookup */
	struct tr_xfer *next_wait;
	size_t tries;             /* native: addresses of the name tried */
};

struct transport_ops {
	const char *name;
	/* 0 started (done will run), -1 could not start (done will not run) */
	int (*start)(struct transport *t, struct tr_xfer *x);
	void (*resume)(struct tr_xfer *x);
	void (*cancel)(struct tr_xfer *x);
	/* connections open (busy + idle) and idle now, for metrics; NULL: not counted */
	void (*counts)(const struct transport *t, unsigned *open, unsigned *idle);
	/* how many finished connections may wait idle for reuse (per origin where the
	 * transport keeps them per origin); NULL: the transport's own fixed number */
	void (*set_idle_max)(struct transport *t, unsigned n);
};

struct transport {
	const struct transport_ops *ops;
};

static inline int tr_start(struct transport *t, struct tr_xfer *x)
{
	x->t = t;
	return t->ops->start(t, x);
}

/* After the body callback asked for a pause: offer the held bytes again, then read on. */
static inline void tr_resume(struct tr_xfer *x)
{
	if (x->active)
		x->t->ops->resume(x);
}

/* The gateway keeps as many idle upstream connections as it admits client connections
 * (max_connections): a client connection has at most one transfer at a time, so no more
 * than that many can ever be reused at once, and with fewer a busy gateway closes
 * connections only to open them again on the next requests. */
static inline void tr_set_idle_max(struct transport *t, unsigned n)
{
	if (t && t->ops->set_idle_max)
		t->ops->set_idle_max(t, n);
}

/* Abandon a transfer: `done` will not run. Safe when it already finished. Never from
 * inside one of the transfer's own callbacks. */
static inline void tr_cancel(struct tr_xfer *x)
{
	if (x->active)
		x->t->ops->cancel(x);
}

#endif
