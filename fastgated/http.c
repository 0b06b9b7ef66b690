/* The client-facing HTTP/1.1 server; see http.h for the shape and the request life.
 *
 * A connection is one struct http_conn with embedded events: `rev` (persistent read, for
 * the connection's whole life, so a keep-alive request costs no epoll_ctl), `wev` (only
 * while a write is blocked), `timer` (head deadline, body inactivity, keep-alive idle or
 * the lingering close, whichever applies) and `kick`/`flush` (deferred work, so that
 * nothing re-enters a handler from inside one of its own calls).
 *
 * Input: bytes go into `in`; reqcheck validates them line by line and byte count by byte
 * count; a head is held in `in` until it is complete, then copied and parsed in place; body
 * bytes are copied into a buffer the handler can take. The next pipelined request is looked
 * at only after the current one has ended.
 *
 * Bytes move through the connection's conn_io (connio.h): the socket itself, or TLS. */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include "bytescan.h"
#include "connio.h"
#include "http.h"
#include "httperr.h"
#include "log.h"
#include "reqcheck.h"
#include "reqid.h"
#include "tls.h"
#include "util.h"

#define LINGER_SECONDS 1
#define IN_START (16 * 1024)
#define ACCEPTS_PER_WAKE 64
/* Pipelined requests are not started while this much of earlier answers is unwritten. */
#define PIPELINE_BACKLOG (256 * 1024)

#define MAX_PATH_HANDLERS 8

enum timer_kind { T_NONE, T_IDLE, T_HEAD, T_BODY, T_LINGER };

/* Where the request in the handler is with its body. A request is dispatched as soon as
 * its head is in, so that the handler can refuse it before a byte of its body is read. */
enum body_state {
	B_WAIT,       /* a body follows and the handler has not asked for it */
	B_READING,    /* asked for: process() takes it in */
	B_DONE,       /* read, or there was none */
	B_FAILED,     /* could not be read (timeout, limit, framing): input is no longer read */
};

struct http_conn {
	struct http_server *srv;
	int fd;
	const struct conn_io *io;
	void *ioh;                    /* io's state (TLS), NULL on a plain connection */
	bool read_wants_write;        /* TLS: a read waits for the socket to take bytes */
	bool write_wants_read;        /* TLS: a write waits for bytes from the client */
	char ip[INET6_ADDRSTRLEN];
	struct event rev, wev, timer, kick, flush;
	enum timer_kind timer_kind;
	int64_t deadline_ms;          /* when timer_kind is due (CLOCK_MONOTONIC_COARSE) */
	int64_t timer_at_ms;          /* when the libevent timer fires, if timer_pending */
	bool timer_pending;

	char *in;                     /* unconsumed input is in[pos, len) */
	size_t len, cap, pos;
	size_t scan;                  /* head bytes validated beyond pos, held until complete */
	struct reqcheck rc;

	struct evbuffer *out;

	/* the request in the handler (or being read) */
	struct http_request req;
	char *head;                   /* copy of the head, parsed in place */
	size_t head_cap;
	struct http_header *hdrs;
	size_t hdrs_cap;
	char *body;
	size_t body_len, body_cap;
	char *outhead;                /* "Name: value\r\n" lines the handler added */
	size_t outhead_len, outhead_cap;
	bool outhead_date;            /* one of them is a Date (write_head adds none then) */

	bool in_handler;              /* a request is dispatched and not ended */
	bool keepalive;               /* the client allows another request after this one */
	bool close_after;             /* close once the answer is out */
	bool streaming;               /* a reply head went out; chunks follow */
	bool chunked;
	bool rejected;                /* answered here; lingering, then closed */
	bool lingering;
	bool read_paused;             /* input buffer full while a request is in the handler */
	enum body_state body_st;
	bool body_sync;               /* http_read_body is reading what is buffered */
	int body_status;              /* why it could not be read (408, 413, 400) */
	void (*body_fn)(void *, int); /* http_read_body's callback, until it has run */
	void *body_arg;
	void (*gone_fn)(void *);
	void *gone_arg;
	void (*written_fn)(void *);
	void *written_arg;
	LIST_ENTRY(http_conn) link;
	/* the handler's http_conn_data follows the struct */
};

struct path_handler {
	const char *path;
	http_handler_fn fn;
	void *arg;
};

struct http_server {
	struct event_base *base;
	struct config *cfg;
	struct http_handlers h;
	struct path_handler paths[MAX_PATH_HANDLERS];
	size_t n_paths;
	struct reqid_gen ids;         /* this loop's request ids */
	char date[64];                /* "Date: ...\r\n", formatted once a second */
	time_t date_at;
	bool stopping;
	char addr[128];
	int lfd;
	struct tls_server *tls;       /* NULL: plain HTTP */
	struct event lev;
	struct event resume_accept;   /* after EMFILE: accept again a little later */
	bool listening;
	LIST_HEAD(, http_conn) conns;
	int n_conns;                  /* CTR_ADD: metrics on other loops read it */
	int peak_conns;               /* most open at once since http_server_take_peak (atomic:
	                               * loop 0 takes every loop's) */
	int *conn_total;              /* open on every loop (atomic): own_total with one loop */
	int own_total;
	time_t last_accept_warn;
};

static void conn_free(struct http_conn *c);
static void process(struct http_conn *c);

/* ---- small helpers ---------------------------------------------------------------- */

static int64_t coarse_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Connection timers are lazy: a request moves a connection through three of them (head,
 * then none while the handler works, then idle), and adding to and removing from
 * libevent's timer heap each time was a visible share of a request (issue #6). Only the
 * deadline is recorded here; the libevent timer is (re)armed only when it is not pending
 * or would fire too late, and timer_cb arms it again for whatever is left. */
static void arm_timer(struct http_conn *c, enum timer_kind kind, int seconds)
{
	int64_t due = coarse_ms() + (int64_t)seconds * 1000;

	c->timer_kind = kind;
	c->deadline_ms = due;
	if (!c->timer_pending || due < c->timer_at_ms) {
		struct timeval tv = { seconds, 0 };

		evtimer_add(&c->timer, &tv);
		c->timer_pending = true;
		c->timer_at_ms = due;
	}
}

static void disarm_timer(struct http_conn *c)
{
	c->timer_kind = T_NONE;    /* a pending libevent timer finds nothing due */
}

/* ---- plain connections ------------------------------------------------------------ */

static ssize_t plain_read(void *h, int fd, void *buf, size_t n, enum io_want *want)
{
	(void)h;
	*want = IO_WANT_READ;
	return read(fd, buf, n);
}

static int plain_write(void *h, int fd, struct evbuffer *out, enum io_want *want)
{
	(void)h;
	*want = IO_WANT_WRITE;
	return evbuffer_write(out, fd);
}

static bool plain_pending(void *h)
{
	(void)h;
	return false;
}

static void plain_close_write(void *h, int fd)
{
	(void)h;
	shutdown(fd, SHUT_WR);
}

static void plain_free(void *h)
{
	(void)h;
}

static const struct conn_io plain_io = {
	.read = plain_read,
	.write = plain_write,
	.pending = plain_pending,
	.close_write = plain_close_write,
	.free = plain_free,
};

/* Read events again after a pause; bytes TLS already holds would raise no event. */
static void resume_reading(struct http_conn *c)
{
	c->read_paused = false;
	event_add(&c->rev, NULL);
	if (c->io->pending(c->ioh))
		event_active(&c->rev, EV_READ, 1);
}

/* Stop the socket (the connection may live on until its handler lets go of it). */
static void close_socket(struct http_conn *c)
{
	c->io->free(c->ioh);
	c->ioh = NULL;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

/* ---- closing ---------------------------------------------------------------------- */

/* The client is gone or failed: tell the handler holding its request, then free. */
static void conn_gone(struct http_conn *c)
{
	void (*fn)(void *) = c->gone_fn;

	c->gone_fn = NULL;
	if (c->in_handler && fn) {
		c->in_handler = false;
		fn(c->gone_arg);
	}
	if (c->in_handler) {
		/* held but not watched: the handler ends it later; only stop the socket now */
		event_del(&c->rev);
		event_del(&c->wev);
		disarm_timer(c);
		close_socket(c);
		return;
	}
	conn_free(c);
}

/* Half-close once the answer is out, read and drop what the client still sends, close at
 * its EOF or after LINGER_SECONDS: the client reads our last answer instead of a reset. */
static void begin_linger(struct http_conn *c)
{
	if (c->lingering)
		return;
	c->lingering = true;
	c->io->close_write(c->ioh, c->fd);
	c->len = c->pos = c->scan = 0;
	if (c->read_paused)
		resume_reading(c);
	arm_timer(c, T_LINGER, LINGER_SECONDS);
}

/* ---- output ----------------------------------------------------------------------- */

/* Write what is queued as far as the kernel takes it. -1 when the client failed (the
 * caller decides what that means); 0 otherwise, with wev armed if something is left. */
static int write_out(struct http_conn *c)
{
	while (evbuffer_get_length(c->out) > 0) {
		enum io_want want;
		int n = c->io->write(c->ioh, c->fd, c->out, &want);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				struct timeval tv = { c->srv->cfg->idle_timeout, 0 };
				if (want == IO_WANT_READ) {
					/* rev runs the write again (wev) when the client sends */
					c->write_wants_read = true;
					if (c->read_paused)
						resume_reading(c);
					return 0;
				}
				event_add(&c->wev, &tv); /* a client that stops reading is dropped */
				return 0;
			}
			return -1;
		}
	}
	event_del(&c->wev);
	return 0;
}

/* After the answer to a request is queued and written as far as possible: close, or wait
 * for the next request. */
static void after_answer(struct http_conn *c)
{
	bool drained = evbuffer_get_length(c->out) == 0;

	if (c->close_after || c->rejected) {
		if (drained)
			begin_linger(c);
		return;
	}
	if (c->pos < c->len) {
		if (evbuffer_get_length(c->out) <= PIPELINE_BACKLOG)
			event_active(&c->kick, 0, 0);
	} else if (drained) {
		arm_timer(c, T_IDLE, c->srv->cfg->idle_timeout);
	}
}

static void wev_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_conn *c = arg;
	(void)fd;

	if (what & EV_TIMEOUT) {
		log_debug("connection fd %d: client stopped reading; closing", c->fd);
		conn_gone(c);
		return;
	}
	if (c->read_wants_write) {
		c->read_wants_write = false;
		event_active(&c->rev, EV_READ, 1);
		if (evbuffer_get_length(c->out) == 0)
			return;      /* only the read was waiting */
	}
	if (write_out(c) < 0) {
		conn_gone(c);
		return;
	}
	if (c->in_handler) {
		if (c->written_fn)
			c->written_fn(c->written_arg);
		return;
	}
	after_answer(c);
}

/* Deferred write of streamed chunks (never inside the handler's own call). */
static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_conn *c = arg;
	(void)fd; (void)what;

	if (evbuffer_get_length(c->out) == 0 || event_pending(&c->wev, EV_WRITE, NULL))
		return;
	if (write_out(c) < 0) {
		conn_gone(c);
		return;
	}
	if (c->in_handler && c->written_fn)
		c->written_fn(c->written_arg);
}

static void add_hex(struct evbuffer *b, size_t n)
{
	char buf[24], *p = buf + sizeof(buf);
	static const char hex[] = "0123456789abcdef";

	*--p = '\n';
	*--p = '\r';
	do {
		*--p = hex[n & 0xf];
		n >>= 4;
	} while (n);
	evbuffer_add(b, p, (size_t)(buf + sizeof(buf) - p));
}

static void add_dec(char **p, size_t n)
{
	*p += fmt_dec(*p, n);
}

static void add_str(char **p, const char *s)
{
	size_t n = strlen(s);
	memcpy(*p, s, n);
	*p += n;
}

enum framing { F_LENGTH, F_CHUNKED, F_CLOSE, F_NONE /* no body, no length to announce */ };

/* "Date: Mon, 23 Nov 2026 17:36:52 GMT\r\n", formatted once a second per server. */
static const char *date_line(struct http_server *s)
{
	time_t now = time(NULL);

	if (now != s->date_at) {
		struct tm tm;
		gmtime_r(&now, &tm);
		strftime(s->date, sizeof(s->date), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
		s->date_at = now;
	}
	return s->date;
}

/* Did the handler (or the upstream, through it) already set a Date? */
static bool has_date(const char *h, size_t n)
{
	const char *p = h, *end = h + n;

	/* line by line: a byte-by-byte look was ~1k instructions a response (issue #6) */
	while (end - p >= 5) {
		if ((*p == 'D' || *p == 'd') && strncasecmp(p, "date:", 5) == 0)
			return true;
		if (!(p = memchr(p, '\n', (size_t)(end - p))))
			return false;
		p++;
	}
	return false;
}

/* Status line, the handler's headers, framing and connection headers, blank line. */
static void write_head(struct http_conn *c, int status, enum framing f, size_t len)
{
	char stack[2048], *buf = stack, *p;
	size_t need = c->outhead_len + 224;

	/* a body left unread is still on its way: the connection cannot carry another request */
	if (c->srv->stopping || !c->keepalive || f == F_CLOSE || c->body_st != B_DONE)
		c->close_after = true;
	if (need > sizeof(stack) && !(buf = malloc(need))) {
		buf = stack;
		c->outhead_len = 0; /* out of memory: the bare minimum still goes out */
		c->outhead_date = false;
	}
	p = buf;
	add_str(&p, c->req.http11 ? "HTTP/1.1 " : "HTTP/1.0 ");
	add_dec(&p, (size_t)status);
	*p++ = ' ';
	add_str(&p, httperr_reason(status));
	add_str(&p, "\r\n");
	memcpy(p, c->outhead, c->outhead_len);
	p += c->outhead_len;
	if (!c->outhead_date)
		add_str(&p, date_line(c->srv));
	if (f == F_LENGTH && status >= 200 && status != 204) {
		add_str(&p, "Content-Length: ");
		add_dec(&p, len);
		add_str(&p, "\r\n");
	} else if (f == F_CHUNKED) {
		add_str(&p, "Transfer-Encoding: chunked\r\n");
	}
	if (c->close_after)
		add_str(&p, "Connection: close\r\n");
	else if (!c->req.http11)
		add_str(&p, "Connection: keep-alive\r\n");
	add_str(&p, "\r\n");
	evbuffer_add(c->out, buf, (size_t)(p - buf));
	if (buf != stack)
		free(buf);
}

/* The handler is done with the request: write now, then go on with the connection. */
static void end_request(struct http_conn *c)
{
	c->in_handler = false;
	c->streaming = false;
	c->body_fn = NULL;
	c->gone_fn = NULL;
	c->written_fn = NULL;
	c->outhead_len = 0;
	c->outhead_date = false;
	free(c->body);
	c->body = NULL;
	c->body_len = c->body_cap = 0;
	if (c->fd < 0) {          /* the socket already failed (see conn_gone) */
		conn_free(c);
		return;
	}
	if (write_out(c) < 0) {
		conn_free(c);
		return;
	}
	if (c->read_paused)
		resume_reading(c);
	after_answer(c);
}

/* ---- the request API -------------------------------------------------------------- */

const char *http_find_header(const struct http_request *req, const char *name)
{
	size_t nl = strlen(name);

	for (size_t i = 0; i < req->n_headers; i++)
		if (req->headers[i].name_len == nl && strcasecmp(req->headers[i].name, name) == 0)
			return req->headers[i].value;
	return NULL;
}

/* The body is in, or cannot be read: tell the handler, unless http_read_body is still on
 * the stack and answers for itself. */
static void body_notify(struct http_conn *c, int status)
{
	void (*fn)(void *, int) = c->body_fn;

	c->body_status = status;
	if (c->body_sync)
		return;
	c->body_fn = NULL;
	if (fn)
		fn(c->body_arg, status);
}

/* The body cannot be read (too slow, too large, bad framing): stop reading the connection
 * and let the handler answer; the connection closes after that answer. */
static void body_failed(struct http_conn *c, int status)
{
	c->body_st = B_FAILED;
	c->len = c->pos = c->scan = 0;
	disarm_timer(c);
	body_notify(c, status);
}

int http_read_body(struct http_request *req, void (*done)(void *arg, int status), void *arg)
{
	struct http_conn *c = req->conn;
	const char *ex;

	if (c->body_st == B_DONE)
		return HTTP_BODY_READY;
	if (c->body_st == B_WAIT) {
		c->body_st = B_READING;
		/* a declared length is allocated once (reqcheck capped it) */
		if (!c->rc.chunked && c->rc.content_length > c->body_cap) {
			char *b = realloc(c->body, (size_t)c->rc.content_length);
			if (b) {
				c->body = b;
				c->body_cap = (size_t)c->rc.content_length;
			}
		}
		arm_timer(c, T_BODY, c->srv->cfg->idle_timeout);
		/* what is buffered already: a small body usually came with its head */
		c->body_sync = true;
		process(c);
		c->body_sync = false;
		if (c->body_st == B_DONE)
			return HTTP_BODY_READY;
		if (c->body_st == B_FAILED)
			return c->body_status;
	}
	c->body_fn = done;
	c->body_arg = arg;
	if (c->read_paused)       /* the head's buffer filled up with body bytes meanwhile */
		resume_reading(c);
	/* only now: a client the handler refused never gets a 100 to send its body on */
	ex = http_find_header(req, "Expect");
	if (req->http11 && ex && strcasecmp(ex, "100-continue") == 0) {
		evbuffer_add(c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
		event_active(&c->flush, 0, 0);
	}
	return HTTP_BODY_PENDING;
}

void *http_conn_data(struct http_request *req)
{
	return req->conn + 1;
}

char *http_take_body(struct http_request *req, size_t *len)
{
	struct http_conn *c = req->conn;
	char *b = c->body;

	*len = c->body_len;
	c->body = NULL;
	c->body_len = c->body_cap = 0;
	return b;
}

const char *http_client_ip(const struct http_request *req)
{
	return req->conn->ip;
}

void http_watch_client(struct http_request *req, void (*gone)(void *), void *arg)
{
	req->conn->gone_fn = gone;
	req->conn->gone_arg = arg;
}

void http_on_written(struct http_request *req, void (*fn)(void *), void *arg)
{
	req->conn->written_fn = fn;
	req->conn->written_arg = arg;
}

void http_add_header(struct http_request *req, const char *name, const char *value)
{
	struct http_conn *c = req->conn;
	size_t nl = strlen(name), vl = strlen(value);

	/* values come from the upstream or the gateway; a line break would split the reply */
	if (bytes_have(value, vl, '\r', '\n', '\n') || bytes_have(name, nl, '\r', '\n', ':') ||
	    buf_grow(&c->outhead, &c->outhead_cap, c->outhead_len + nl + vl + 4, 512) < 0)
		return;
	if (nl == 4 && strncasecmp(name, "date", 4) == 0)
		c->outhead_date = true;
	c->outhead_len = (size_t)(put_header_line(c->outhead + c->outhead_len, name, nl, value, vl) -
	                          c->outhead);
}

void http_add_header_lines(struct http_request *req, const char *lines, size_t len)
{
	struct http_conn *c = req->conn;

	if (buf_grow(&c->outhead, &c->outhead_cap, c->outhead_len + len, 512) < 0)
		return;
	if (has_date(lines, len))
		c->outhead_date = true;
	memcpy(c->outhead + c->outhead_len, lines, len);
	c->outhead_len += len;
}

void http_close_after(struct http_request *req)
{
	req->conn->close_after = true;
}

void http_reply(struct http_request *req, int status, const char *body, size_t len)
{
	struct http_conn *c = req->conn;

	write_head(c, status, F_LENGTH, len);
	if (len && req->method != HTTP_HEAD)
		evbuffer_add(c->out, body, len);
	end_request(c);
}

void http_reply_buf(struct http_request *req, int status, struct evbuffer *body,
                    int64_t head_length)
{
	struct http_conn *c = req->conn;
	size_t len = body ? evbuffer_get_length(body) : 0;
	bool bodiless = req->method == HTTP_HEAD || status < 200 || status == 204 || status == 304;

	if (!bodiless)
		write_head(c, status, F_LENGTH, len);
	else if (head_length >= 0 && status >= 200 && status != 204)
		write_head(c, status, F_LENGTH, (size_t)head_length);
	else
		write_head(c, status, F_NONE, 0);
	if (len && !bodiless)
		evbuffer_add_buffer(c->out, body);
	else if (len)
		evbuffer_drain(body, len);
	end_request(c);
}

void http_send_error(struct http_request *req, int status, const char *code, const char *message)
{
	char body[640];
	size_t len = req->anthropic_errors
	             ? httperr_body_anthropic(body, sizeof(body), status, code, message)
	             : httperr_body(body, sizeof(body), status, code, message);

	http_add_header(req, "Content-Type", "application/json");
	http_reply(req, status, body, len);
}

void http_reply_start(struct http_request *req, int status)
{
	struct http_conn *c = req->conn;

	c->chunked = req->http11;
	c->streaming = true;
	write_head(c, status, c->chunked ? F_CHUNKED : F_CLOSE, 0);
	event_active(&c->flush, 0, 0);
	/* A stream can stay open for minutes while its client sends nothing: the input
	 * buffer, empty (the head was copied, the body taken), goes back to the allocator
	 * instead of sitting in each of thousands of open streams. rev_cb makes a new one
	 * if the client sends more. */
	if (c->pos == c->len && c->scan == 0 && c->body_st != B_READING) {
		free(c->in);
		c->in = NULL;
		c->len = c->pos = c->cap = 0;
	}
}

void http_reply_chunk(struct http_request *req, struct evbuffer *data)
{
	struct http_conn *c = req->conn;
	size_t n = evbuffer_get_length(data);

	if (n == 0)
		return;
	if (req->method == HTTP_HEAD) {
		evbuffer_drain(data, n);
		return;
	}
	if (c->chunked)
		add_hex(c->out, n);
	evbuffer_add_buffer(c->out, data);
	if (c->chunked)
		evbuffer_add(c->out, "\r\n", 2);
	event_active(&c->flush, 0, 0);
}

void http_reply_end(struct http_request *req)
{
	struct http_conn *c = req->conn;

	if (c->chunked && req->method != HTTP_HEAD)
		evbuffer_add(c->out, "0\r\n\r\n", 5);
	end_request(c);
}

void http_abort(struct http_request *req)
{
	struct http_conn *c = req->conn;

	c->in_handler = false;
	c->gone_fn = NULL;
	if (c->fd >= 0)
		(void)write_out(c); /* what was relayed reaches the client before the cut */
	conn_free(c);
}

size_t http_backlog(const struct http_request *req)
{
	return evbuffer_get_length(req->conn->out);
}

/* ---- refusals ---------------------------------------------------------------------- */

static void reject(struct http_conn *c, int status, const char *reason)
{
	char body[640], head[320], id[REQID_LEN + 1];
	const char *code = status == 413 ? "request_too_large"
	                 : status == 414 ? "uri_too_long"
	                 : status == 431 ? "headers_too_large"
	                 : status == 408 ? "request_timeout"
	                 : status == 503 ? "unavailable" : "bad_request";
	size_t len;
	int hl;

	if (c->rejected)
		return;
	c->rejected = true;
	reqid_next(&c->srv->ids, id);
	if (c->srv->h.refused) {
		struct http_refusal rf = { id, c->ip, status, code };
		c->srv->h.refused(c->srv->h.arg, &rf);
	}
	len = httperr_body(body, sizeof(body), status, code, reason);
	hl = snprintf(head, sizeof(head),
	              "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
	              "Content-Length: %zu\r\nConnection: close\r\nX-Request-Id: %s\r\n%s\r\n",
	              status, httperr_reason(status), len, id, date_line(c->srv));
	evbuffer_add(c->out, head, (size_t)hl);
	evbuffer_add(c->out, body, len);
	c->len = c->pos = c->scan = 0;
	disarm_timer(c);
	if (write_out(c) < 0) {
		conn_free(c);
		return;
	}
	if (evbuffer_get_length(c->out) == 0)
		begin_linger(c);
	else
		arm_timer(c, T_LINGER, c->srv->cfg->idle_timeout);
}

/* ---- input ------------------------------------------------------------------------ */

static enum http_method method_of(const char *m, const char **name)
{
	static const struct { const char *name; enum http_method m; } t[] = {
		{ "GET", HTTP_GET }, { "POST", HTTP_POST }, { "HEAD", HTTP_HEAD }, { "PUT", HTTP_PUT },
		{ "DELETE", HTTP_DELETE }, { "OPTIONS", HTTP_OPTIONS }, { "PATCH", HTTP_PATCH },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (strcmp(m, t[i].name) == 0) {
			*name = t[i].name;
			return t[i].m;
		}
	*name = "GET";
	return HTTP_GET;
}

static bool has_token(const char *v, const char *tok)
{
	size_t tl = strlen(tok);

	while (v && *v) {
		while (*v == ' ' || *v == '\t' || *v == ',')
			v++;
		const char *e = v;
		while (*e && *e != ',')
			e++;
		const char *t = e;
		while (t > v && (t[-1] == ' ' || t[-1] == '\t'))
			t--;
		if ((size_t)(t - v) == tl && strncasecmp(v, tok, tl) == 0)
			return true;
		v = e;
	}
	return false;
}

/* Parse a complete, already validated head (reqcheck accepted every line) in a copy. */
static int parse_head(struct http_conn *c, const char *src, size_t n)
{
	struct http_request *r = &c->req;
	char *p, *end, *line, *sp, *target, *q;
	size_t nh = 0;
	const char *conn;

	if (buf_grow(&c->head, &c->head_cap, n + 1, 1024) < 0)
		return -1;
	memcpy(c->head, src, n);
	c->head[n] = '\0';
	p = c->head;
	end = c->head + n;
	while (p < end && (*p == '\r' || *p == '\n'))  /* blank lines before a request line */
		p++;
	/* request line */
	line = p;
	p = memchr(p, '\n', (size_t)(end - p));
	if (!p)
		return -1;
	*p++ = '\0';
	if (p - 2 >= line && p[-2] == '\r')
		p[-2] = '\0';
	sp = strchr(line, ' ');
	if (!sp)
		return -1;
	*sp = '\0';
	target = sp + 1;
	sp = strchr(target, ' ');
	if (!sp)
		return -1;
	*sp = '\0';
	r->method = method_of(line, &r->method_name);
	q = strchr(target, '?');
	if (q)
		*q++ = '\0';
	r->path = target;
	r->query = q;
	/* from the line itself: reqcheck has already reset its state for a body-less request */
	r->http11 = strcmp(sp + 1, "HTTP/1.0") != 0;
	/* header lines */
	while (p < end) {
		char *colon, *v, *ve;
		line = p;
		p = memchr(p, '\n', (size_t)(end - p));
		if (!p)
			break;
		*p++ = '\0';
		ve = p - 1;
		if (ve > line && ve[-1] == '\r')
			*--ve = '\0';
		if (ve == line)
			break;                 /* the blank line */
		colon = strchr(line, ':');
		if (!colon)
			return -1;
		*colon = '\0';
		v = colon + 1;
		while (*v == ' ' || *v == '\t')
			v++;
		while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
			*--ve = '\0';
		if (nh == c->hdrs_cap) {
			size_t ncap = c->hdrs_cap ? c->hdrs_cap * 2 : 32;
			struct http_header *h = realloc(c->hdrs, ncap * sizeof(*h));
			if (!h)
				return -1;
			c->hdrs = h;
			c->hdrs_cap = ncap;
		}
		c->hdrs[nh].name = line;
		c->hdrs[nh].value = v;
		c->hdrs[nh].name_len = (size_t)(colon - line);
		nh++;
	}
	r->headers = c->hdrs;
	r->n_headers = nh;
	conn = http_find_header(r, "Connection");
	c->keepalive = r->http11 ? !has_token(conn, "close") : has_token(conn, "keep-alive");
	return 0;
}

static void dispatch(struct http_conn *c, bool has_body)
{
	struct http_server *s = c->srv;
	struct http_request *req = &c->req;

	c->in_handler = true;
	c->close_after = false;
	c->outhead_len = 0;
	c->outhead_date = false;
	c->body_st = has_body ? B_WAIT : B_DONE;
	c->body_fn = NULL;
	req->anthropic_errors = false;   /* the handler's, per request */
	disarm_timer(c);
	reqid_next(&s->ids, req->id);
	http_add_header(req, "X-Request-Id", req->id);
	/* the gateway's own endpoints answer HEAD as GET (a load balancer's probe), and a
	 * query string (a cache-buster) changes nothing in them */
	if (req->method == HTTP_GET || req->method == HTTP_HEAD)
		for (size_t i = 0; i < s->n_paths; i++)
			if (strcmp(req->path, s->paths[i].path) == 0) {
				s->paths[i].fn(s->paths[i].arg, req);
				return;
			}
	s->h.request(s->h.arg, req);
}

/* Validate and take in what is buffered: a request head, which is dispatched as soon as it
 * is complete, then (once the handler asks for it) the body. */
static void process(struct http_conn *c)
{
	struct http_server *s = c->srv;

	while ((!c->in_handler || c->body_st == B_READING) && !c->rejected && c->fd >= 0) {
		size_t avail = c->len - c->pos - c->scan;
		enum reqcheck_result r;
		bool in_head = c->rc.state == RC_REQUEST_LINE || c->rc.state == RC_HEADERS;

		if (avail == 0)
			break;
		if (in_head && c->timer_kind != T_HEAD)
			arm_timer(c, T_HEAD, s->cfg->header_timeout);  /* first byte of a head */
		if (reqcheck_wants_line(&c->rc)) {
			const char *start = c->in + c->pos + c->scan;
			const char *nl = memchr(start, '\n', avail);
			size_t limit = reqcheck_line_limit(&c->rc), ll;

			if (!nl) {
				if (avail <= limit + 1)
					break;   /* the rest of the line is still to come */
				r = reqcheck_line_too_long(&c->rc);
			} else if ((ll = (size_t)(nl - start) + 1) > limit + 2) {
				r = reqcheck_line_too_long(&c->rc);
			} else {
				r = reqcheck_line(&c->rc, start, ll);
				c->scan += ll;
			}
			if (r == RC_REJECT) {
				if (c->in_handler)
					body_failed(c, c->rc.status);
				else
					reject(c, c->rc.status, c->rc.reason);
				return;
			}
			if (in_head && (r == RC_HEAD_DONE || r == RC_REQUEST_DONE)) {
				if (parse_head(c, c->in + c->pos, c->scan) < 0) {
					reject(c, 400, "malformed request head");
					return;
				}
				c->pos += c->scan;
				c->scan = 0;
				dispatch(c, r == RC_HEAD_DONE);
				return;   /* the body, and the next request, wait for the handler */
			}
			if (!in_head) {
				c->pos += c->scan;   /* chunk-size lines and trailers: framing only */
				c->scan = 0;
			}
		} else {
			uint64_t want = reqcheck_data_wanted(&c->rc);
			size_t n = avail < want ? avail : (size_t)want;

			if (buf_append(&c->body, &c->body_len, &c->body_cap, c->in + c->pos, n,
			               1024) < 0) {
				body_failed(c, 413);
				return;
			}
			c->pos += n;
			r = reqcheck_data(&c->rc, n);
			if (r == RC_REJECT) {
				body_failed(c, c->rc.status);
				return;
			}
			arm_timer(c, T_BODY, s->cfg->idle_timeout);
		}
		if (r == RC_REQUEST_DONE) {
			c->body_st = B_DONE;
			disarm_timer(c);
			body_notify(c, 0);
			return;   /* the next request waits until this one has ended */
		}
	}
	if (c->pos == c->len && c->scan == 0)
		c->pos = c->len = 0;
	/* all input taken and answered (pipelined requests done): wait idle for the next one */
	if (!c->in_handler && !c->rejected && c->pos == c->len &&
	    evbuffer_get_length(c->out) == 0 && c->timer_kind == T_NONE)
		arm_timer(c, T_IDLE, c->srv->cfg->idle_timeout);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_conn *c = arg;
	(void)fd; (void)what;

	if (c->in_handler)
		return;   /* the next pipelined request waits for this one */
	/* nothing after process(): a request it dispatched may have ended and freed c */
	if (!c->rejected && c->fd >= 0)
		process(c);
}

static void rev_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_conn *c = arg;
	ssize_t n;
	size_t max = c->srv->cfg->max_headers + 65536;
	enum io_want want;
	(void)what;

	if (c->write_wants_read) {
		c->write_wants_read = false;
		event_active(&c->wev, EV_WRITE, 1);
	}
	if (c->lingering) {
		/* the raw socket: after close_notify nothing the client sends is read as TLS */
		char sink[4096];
		n = read(fd, sink, sizeof(sink));
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			conn_free(c);
		return;
	}
	if (c->pos > 0 && c->cap - c->len < 4096) {
		memmove(c->in, c->in + c->pos, c->len - c->pos);
		c->len -= c->pos;
		c->pos = 0;
	}
	if (c->cap - c->len < 4096 && c->cap < max) {
		size_t grow = c->cap ? c->cap * 2 : IN_START;
		buf_grow(&c->in, &c->cap, grow > max ? max : grow, IN_START);
	}
	if (c->len == c->cap) {
		/* full: a request in the handler has pipelined bytes behind it; read on later */
		event_del(&c->rev);
		c->read_paused = true;
		return;
	}
	n = c->io->read(c->ioh, fd, c->in + c->len, c->cap - c->len, &want);
	if (n <= 0) {
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
			if (want == IO_WANT_WRITE) {
				struct timeval tv = { c->srv->cfg->idle_timeout, 0 };

				c->read_wants_write = true;
				event_add(&c->wev, &tv);
			}
			return;
		}
		/* hang-up or error: while a request is in flight this aborts its upstream */
		if (c->in_handler)
			log_debug("connection fd %d: client closed during request", c->fd);
		conn_gone(c);
		return;
	}
	c->len += (size_t)n;
	/* TLS may hold more of the record than fitted; the socket will not signal it. Come
	 * back for it from the loop (conn_free cancels this if process() frees c). */
	if (c->io->pending(c->ioh))
		event_active(&c->rev, EV_READ, 1);
	if (!c->in_handler || c->body_st == B_READING)
		process(c);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_conn *c = arg;
	enum timer_kind k = c->timer_kind;
	int64_t left;
	(void)fd; (void)what;

	c->timer_pending = false;
	if (k == T_NONE)
		return;
	left = c->deadline_ms - coarse_ms();
	if (left > 0) {      /* re-armed lazily for a later deadline: wait for the rest */
		struct timeval tv = { (time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000 };

		evtimer_add(&c->timer, &tv);
		c->timer_pending = true;
		c->timer_at_ms = c->deadline_ms;
		return;
	}
	c->timer_kind = T_NONE;
	switch (k) {
	case T_HEAD:
	case T_BODY:
		if (c->in_handler) {
			if (c->body_st == B_READING) {
				log_debug("connection fd %d: request body not complete in time", c->fd);
				body_failed(c, 408);
			}
			return;
		}
		log_debug("connection fd %d: request %s not complete in time", c->fd,
		          k == T_HEAD ? "head" : "body");
		reject(c, 408, k == T_HEAD ? "request head not received in time"
		                           : "request body not received in time");
		return;
	case T_IDLE:
		if (!c->in_handler)
			conn_free(c);
		return;
	case T_LINGER:
		conn_free(c);  /* lingered long enough, or the refusal never got out */
		return;
	case T_NONE:
		return;
	}
}

/* ---- connections -------------------------------------------------------------------- */

static void conn_free(struct http_conn *c)
{
	struct http_server *s = c->srv;

	event_del(&c->rev);
	event_del(&c->wev);
	event_del(&c->timer);
	event_del(&c->kick);
	event_del(&c->flush);
	close_socket(c);
	LIST_REMOVE(c, link);
	CTR_ADD(s->n_conns, -1);
	__atomic_sub_fetch(s->conn_total, 1, __ATOMIC_RELAXED);
	evbuffer_free(c->out);
	free(c->in);
	free(c->head);
	free(c->hdrs);
	free(c->body);
	free(c->outhead);
	if (s->h.conn_closed)
		s->h.conn_closed(s->h.arg, c + 1);
	free(c);
}

static void conn_new(struct http_server *s, int fd, const struct sockaddr_storage *ss)
{
	struct event_base *base = s->base;
	struct http_conn *c = calloc(1, sizeof(*c) + s->h.conn_data_size);
	int one = 1;

	if (!c || !(c->out = evbuffer_new()) ||
	    (s->tls && !(c->ioh = tls_conn_new(s->tls, fd)))) {
		if (c && c->out)
			evbuffer_free(c->out);
		free(c);
		close(fd);
		return;
	}
	c->srv = s;
	c->fd = fd;
	c->io = s->tls ? &tls_conn_io : &plain_io;
	c->req.conn = c;
	if (ss->ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, c->ip, sizeof(c->ip));
	else if (ss->ss_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, c->ip, sizeof(c->ip));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	reqcheck_init(&c->rc, s->cfg->max_headers, s->cfg->max_body);
	event_assign(&c->rev, base, fd, EV_READ | EV_PERSIST, rev_cb, c);
	event_assign(&c->wev, base, fd, EV_WRITE, wev_cb, c);
	evtimer_assign(&c->timer, base, timer_cb, c);
	event_assign(&c->kick, base, -1, 0, kick_cb, c);
	event_assign(&c->flush, base, -1, 0, flush_cb, c);
	LIST_INSERT_HEAD(&s->conns, c, link);
	CTR_ADD(s->n_conns, 1);
	if (s->n_conns > CTR_GET(s->peak_conns))
		__atomic_store_n(&s->peak_conns, s->n_conns, __ATOMIC_RELAXED);
	event_add(&c->rev, NULL);
	if (__atomic_add_fetch(s->conn_total, 1, __ATOMIC_RELAXED) > s->cfg->max_connections ||
	    s->stopping) {
		reject(c, 503, s->stopping ? "gateway is shutting down" : "too many open connections");
		return;
	}
	arm_timer(c, T_IDLE, s->cfg->idle_timeout);
}

static void accept_cb(evutil_socket_t lfd, short what, void *arg)
{
	struct http_server *s = arg;
	(void)what;

	for (int i = 0; i < ACCEPTS_PER_WAKE; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE) {
				/* out of descriptors: the pending connection keeps the socket readable,
				 * so stop listening for a moment instead of spinning on accept */
				struct timeval tv = { 0, 100 * 1000 };
				time_t now = time(NULL);
				if (now != s->last_accept_warn)
					log_warn("cannot accept a connection: %s", strerror(errno));
				s->last_accept_warn = now;
				event_del(&s->lev);
				evtimer_add(&s->resume_accept, &tv);
			}
			return;
		}
		conn_new(s, fd, &ss);
	}
}

static void resume_accept_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_server *s = arg;
	(void)fd; (void)what;

	if (s->listening)
		event_add(&s->lev, NULL);
}

/* ---- the server --------------------------------------------------------------------- */

/* Raise the soft fd limit so max_connections is reachable. */
static int fd_capacity(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		if (rl.rlim_cur < rl.rlim_max) {
			rl.rlim_cur = rl.rlim_max > 1048576 ? 1048576 : rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
			getrlimit(RLIMIT_NOFILE, &rl);
		}
		if (rl.rlim_cur > 1048576)
			rl.rlim_cur = 1048576;
		return (int)rl.rlim_cur;
	}
	return 1024;
}

int http_conn_capacity(void)
{
	return fd_capacity() - 64;   /* the rest: listener, stores, upstreams, control */
}

static int parse_listen(const char *spec, char *host, size_t hostcap, int *port)
{
	const char *colon = strrchr(spec, ':');
	char *end;
	long p;
	size_t hl;

	if (!colon)
		return -1;
	hl = (size_t)(colon - spec);
	if (spec[0] == '[' && hl >= 2 && spec[hl - 1] == ']') {
		spec++;
		hl -= 2;
	}
	if (hl == 0 || hl >= hostcap)
		return -1;
	memcpy(host, spec, hl);
	host[hl] = '\0';
	p = strtol(colon + 1, &end, 10);
	if (*end || end == colon + 1 || p < 0 || p > 65535)
		return -1;
	*port = (int)p;
	return 0;
}

/* Names are resolved once, at start-up, where blocking is fine. reuseport: one of several
 * loops' sockets on the address; probe: bind it alone first (the first loop), which fails
 * while another socket holds it, even one that allows sharing, and picks the port when
 * port is 0 (the server reads the port back with getsockname). */
static int listen_on(const char *host, int port, bool reuseport, bool probe)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
	                          .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *res = NULL;
	char ps[8];
	int fd, one = 1, e;

	snprintf(ps, sizeof(ps), "%d", port);
	if ((e = getaddrinfo(host, ps, &hints, &res)) != 0 || !res) {
		errno = e == EAI_SYSTEM ? errno : EADDRNOTAVAIL;
		return -1;
	}
	if (probe) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int pfd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

		if (pfd < 0 || setsockopt(pfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
		    bind(pfd, res->ai_addr, res->ai_addrlen) < 0 ||
		    getsockname(pfd, (struct sockaddr *)&ss, &sl) < 0) {
			e = errno;
			if (pfd >= 0)
				close(pfd);
			freeaddrinfo(res);
			errno = e;
			return -1;
		}
		close(pfd);
		/* port 0 asked: the loops share the port the probe was given */
		if (ss.ss_family == AF_INET6)
			((struct sockaddr_in6 *)res->ai_addr)->sin6_port =
				((struct sockaddr_in6 *)&ss)->sin6_port;
		else
			((struct sockaddr_in *)res->ai_addr)->sin_port = ((struct sockaddr_in *)&ss)->sin_port;
	}
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		freeaddrinfo(res);
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if ((reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
	    bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 4096) < 0) {
		e = errno;
		close(fd);
		freeaddrinfo(res);
		errno = e;
		return -1;
	}
	freeaddrinfo(res);
	return fd;
}

struct http_server *http_server_start(struct event_base *base, struct config *cfg,
                                      const struct http_handlers *h,
                                      const struct http_server_opts *opts, char **err)
{
	static const struct http_server_opts alone;
	struct http_server *s = calloc(1, sizeof(*s));
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[256], addr[INET6_ADDRSTRLEN];
	int port, max_conns;

	*err = NULL;
	if (!s) {
		*err = strdup("out of memory");
		return NULL;
	}
	s->base = base;
	s->cfg = cfg;
	s->h = *h;
	s->lfd = -1;
	s->date_at = -1;
	if (!opts)
		opts = &alone;
	s->conn_total = opts->conn_total ? opts->conn_total : &s->own_total;
	if (reqid_init(&s->ids, opts->loop) < 0) {
		*err = strdup("cannot seed request ids from the random generator");
		goto err;
	}
	LIST_INIT(&s->conns);
	if (parse_listen(opts->bind ? opts->bind : cfg->listen, host, sizeof(host), &port) < 0) {
		if (asprintf(err, "invalid listen address '%s' (expected ADDR:PORT)", cfg->listen) < 0)
			*err = NULL;
		goto err;
	}
	if (cfg->tls_cert && cfg->tls_key) {
		s->tls = tls_server_new(cfg->tls_cert, cfg->tls_key, err);
		if (!s->tls)
			goto err;
	}
	max_conns = http_conn_capacity();
	if (cfg->max_connections > max_conns) {
		log_warn("max_connections %d exceeds what the fd limit allows; using %d",
		         cfg->max_connections, max_conns);
		cfg->max_connections = max_conns;
	}
	s->lfd = listen_on(host, port, opts->reuseport, opts->reuseport && !opts->bind);
	if (s->lfd < 0) {
		if (asprintf(err, "cannot listen on %s: %s", cfg->listen, strerror(errno)) < 0)
			*err = NULL;
		goto err;
	}
	event_assign(&s->lev, base, s->lfd, EV_READ | EV_PERSIST, accept_cb, s);
	evtimer_assign(&s->resume_accept, base, resume_accept_cb, s);
	event_add(&s->lev, NULL);
	s->listening = true;
	if (getsockname(s->lfd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
			inet_ntop(AF_INET6, &a6->sin6_addr, addr, sizeof(addr));
			snprintf(s->addr, sizeof(s->addr), "[%s]:%d", addr, ntohs(a6->sin6_port));
		} else {
			struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
			inet_ntop(AF_INET, &a4->sin_addr, addr, sizeof(addr));
			snprintf(s->addr, sizeof(s->addr), "%s:%d", addr, ntohs(a4->sin_port));
		}
	}
	return s;
err:
	http_server_free(s);
	return NULL;
}

int http_server_route(struct http_server *s, const char *path, http_handler_fn fn, void *arg)
{
	if (s->n_paths == MAX_PATH_HANDLERS)
		return -1;
	s->paths[s->n_paths++] = (struct path_handler){ path, fn, arg };
	return 0;
}

const char *http_server_addr(const struct http_server *s)
{
	return s->addr;
}

const char *http_server_tls(const struct http_server *s)
{
	return s->tls ? tls_server_describe(s->tls) : NULL;
}

void http_server_swap_tls(struct http_server *s, struct tls_server *t)
{
	/* open connections hold their own reference to the old certificate's context */
	tls_server_free(s->tls);
	s->tls = t;
}

bool http_request_tls(const struct http_request *req)
{
	return req->conn->ioh != NULL;
}

void http_server_stop_accepting(struct http_server *s)
{
	struct http_conn *c, *next;

	s->stopping = true;
	if (s->listening) {
		event_del(&s->lev);
		evtimer_del(&s->resume_accept);
		close(s->lfd);
		s->lfd = -1;
		s->listening = false;
	}
	/* Idle keep-alive connections would otherwise hold the drain open. */
	for (c = LIST_FIRST(&s->conns); c; c = next) {
		next = LIST_NEXT(c, link);
		if (!c->in_handler && !c->rejected)
			conn_free(c);
	}
}

int http_server_connections(const struct http_server *s)
{
	return CTR_GET(s->n_conns);
}

int http_server_take_peak(struct http_server *s)
{
	return __atomic_exchange_n(&s->peak_conns, CTR_GET(s->n_conns), __ATOMIC_RELAXED);
}

void http_server_free(struct http_server *s)
{
	if (!s)
		return;
	if (s->listening) {
		event_del(&s->lev);
		evtimer_del(&s->resume_accept);
		close(s->lfd);
	}
	/* Requests still in a handler are told their client is gone; the proxy finishes
	 * them from deferred events, which the loop passes below run. */
	while (!LIST_EMPTY(&s->conns)) {
		struct http_conn *c = LIST_FIRST(&s->conns);
		if (c->in_handler && c->gone_fn)
			conn_gone(c);
		else
			conn_free(c);
	}
	for (int i = 0; i < 4; i++)
		event_base_loop(s->base, EVLOOP_NONBLOCK);
	tls_server_free(s->tls);
	free(s);
}
