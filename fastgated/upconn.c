/* Plain-HTTP upstreams without libcurl; see upconn.h.
 *
 * Two halves: h1_* is a pure HTTP/1.1 response parser (status line, headers, Content-Length,
 * chunked, read-until-close, 1xx interim answers, HEAD/204/304), and the pool, which owns
 * sockets: one connection carries one transfer at a time and goes back to its origin's idle
 * list when the answer was complete and the upstream allows keep-alive. A connection that
 * turns out dead when reused (closed before any byte of the answer) is replaced once, as
 * curl and nginx do. Every socket keeps one persistent read event for its whole life, so a
 * reused connection costs no epoll_ctl at all. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <event2/event_struct.h>

#include "upconn.h"

/* ======================================================================== parser === */

void h1_init(struct h1_parser *p, bool head_request)
{
	memset(p, 0, sizeof(*p));
	p->state = H1_HEAD;
	p->head_request = head_request;
}

/* Case-insensitive: does the comma-separated list `v` (length n) hold token `tok`? Sets
 * *last when it is the final element. */
static bool list_has(const char *v, size_t n, const char *tok, bool *last)
{
	size_t tl = strlen(tok);
	bool found = false;

	if (last)
		*last = false;
	for (size_t i = 0; i < n;) {
		while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		size_t s = i;
		while (i < n && v[i] != ',')
			i++;
		size_t e = i;
		while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
			e--;
		if (e == s)
			continue;
		bool match = e - s == tl && strncasecmp(v + s, tok, tl) == 0;
		found |= match;
		if (last)
			*last = match; /* the element seen last decides */
	}
	return found;
}

static bool name_is(const char *line, size_t nl, const char *name)
{
	return strlen(name) == nl && strncasecmp(line, name, nl) == 0;
}

/* One header line (without its line end). -1: malformed in a way that breaks framing. */
static int header_line(struct h1_parser *p, const char *line, size_t len)
{
	const char *colon = memchr(line, ':', len);
	const char *v;
	size_t nl, vl;

	if (line[0] == ' ' || line[0] == '\t')
		return -1; /* obsolete line folding */
	if (!colon || colon == line)
		return -1;
	nl = (size_t)(colon - line);
	/* whitespace before the colon (memchr: a byte loop here was ~400 instructions an answer) */
	if (memchr(line, ' ', nl) || memchr(line, '\t', nl))
		return -1;
	v = colon + 1;
	vl = len - nl - 1;
	while (vl && (*v == ' ' || *v == '\t')) { v++; vl--; }
	while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--;

	if (name_is(line, nl, "content-length")) {
		uint64_t n = 0;
		if (vl == 0)
			return -1;
		for (size_t i = 0; i < vl; i++) {
			if (v[i] < '0' || v[i] > '9' || n > (UINT64_MAX - 9) / 10)
				return -1;
			n = n * 10 + (uint64_t)(v[i] - '0');
		}
		if (p->has_len && p->remaining != n)
			return -1; /* two different lengths: refuse to guess */
		p->has_len = true;
		p->remaining = n;
	} else if (name_is(line, nl, "transfer-encoding")) {
		bool last;
		list_has(v, vl, "chunked", &last);
		p->chunked = last;
		if (!last)
			p->conn_close = true; /* not chunked at the end: the body runs to the close */
		p->has_len = false;
		p->remaining = 0;
		p->trailer_bytes = 1; /* marks "Transfer-Encoding seen": Content-Length is ignored */
	} else if (name_is(line, nl, "connection")) {
		if (list_has(v, vl, "close", NULL))
			p->conn_close = true;
		if (list_has(v, vl, "keep-alive", NULL))
			p->conn_keep = true;
	}
	return 0;
}

static int status_line(struct h1_parser *p, const char *line, size_t len)
{
	/* HTTP/1.x SSS[ reason] */
	if (len < 12 || strncmp(line, "HTTP/1.", 7) != 0 || line[7] < '0' || line[7] > '9' ||
	    line[8] != ' ')
		return -1;
	for (int i = 9; i < 12; i++)
		if (line[i] < '0' || line[i] > '9')
			return -1;
	if (len > 12 && line[12] != ' ')
		return -1;
	p->minor = line[7] - '0';
	p->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
	if (p->status < 100)
		return -1;
	p->has_len = p->chunked = p->conn_close = p->conn_keep = false;
	p->remaining = 0;
	p->trailer_bytes = 0;
	return 0;
}

/* The empty line ended a head: decide how the body is framed. */
static enum h1_event end_of_head(struct h1_parser *p)
{
	bool te_seen = p->trailer_bytes != 0;

	p->trailer_bytes = 0;
	if (p->status < 200) {
		if (p->status == 101)
			return H1_BAD; /* no protocol switches through the gateway */
		p->status = 0;     /* an interim answer: the real one follows */
		p->head_bytes = 0;
		return H1_MORE;
	}
	p->keepalive = p->minor >= 1 ? !p->conn_close : p->conn_keep && !p->conn_close;
	if (p->head_request || p->status == 204 || p->status == 304) {
		p->state = H1_DONE;
	} else if (p->chunked) {
		p->state = H1_CHUNK_SIZE;
	} else if (p->has_len && !te_seen) {
		p->state = p->remaining ? H1_BODY_LEN : H1_DONE;
	} else {
		p->state = H1_BODY_EOF;
		p->keepalive = false;
	}
	return p->state == H1_DONE ? H1_COMPLETE : H1_MORE;
}

/* A chunk-size line: hex digits, then optional extensions after ';'. */
static int chunk_size(const char *line, size_t len, uint64_t *out)
{
	uint64_t n = 0;
	size_t i = 0;

	for (; i < len; i++) {
		int d;
		char c = line[i];
		if (c >= '0' && c <= '9') d = c - '0';
		else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
		else break;
		if (n > (UINT64_MAX >> 4))
			return -1;
		n = (n << 4) | (uint64_t)d;
	}
	if (i == 0)
		return -1;
	while (i < len && (line[i] == ' ' || line[i] == '\t'))
		i++;
	if (i < len && line[i] != ';')
		return -1;
	*out = n;
	return 0;
}

size_t h1_feed(struct h1_parser *p, const char *data, size_t len,
               const struct h1_callbacks *cb, void *arg, enum h1_event *ev)
{
	size_t off = 0;

	if (len)
		p->seen_bytes = true;
	for (;;) {
		size_t avail = len - off;
		const char *at = data + off, *nl;
		size_t ll, n;
		int r;

		switch (p->state) {
		case H1_HEAD:
		case H1_CHUNK_SIZE:
		case H1_TRAILER:
			nl = memchr(at, '\n', avail);
			if (!nl) {
				size_t used = p->state == H1_HEAD ? p->head_bytes :
				              p->state == H1_TRAILER ? p->trailer_bytes : 0;
				size_t cap = p->state == H1_CHUNK_SIZE ? 1024 : H1_HEAD_MAX;
				*ev = used + avail > cap ? H1_BAD : H1_MORE;
				return off;
			}
			ll = (size_t)(nl - at) + 1;              /* with its '\n' */
			n = ll - 1 - (ll >= 2 && at[ll - 2] == '\r');  /* without the line end */
			if (p->state == H1_CHUNK_SIZE) {
				/* the same bound as for a line still arriving, so where the network
				 * cut the answer cannot change the outcome */
				if (ll - 1 > 1024 || chunk_size(at, n, &p->remaining) < 0) {
					*ev = H1_BAD;
					return off;
				}
				off += ll;
				p->state = p->remaining ? H1_CHUNK_DATA : H1_TRAILER;
				continue;
			}
			if (p->state == H1_TRAILER) {
				/* trailers are dropped: the client's answer was already framed */
				off += ll;
				p->trailer_bytes += ll;
				if (p->trailer_bytes > H1_HEAD_MAX) {
					*ev = H1_BAD;
					return off;
				}
				if (n == 0) {
					p->state = H1_DONE;
					*ev = H1_COMPLETE;
					return off;
				}
				continue;
			}
			p->head_bytes += ll;
			if (p->head_bytes > H1_HEAD_MAX) {
				*ev = H1_BAD;
				return off;
			}
			if (p->status == 0)
				r = status_line(p, at, n);
			else if (n == 0)
				r = 0;
			else
				r = header_line(p, at, n);
			if (r < 0) {
				*ev = H1_BAD;
				return off;
			}
			if (cb->line(arg, at, ll) < 0) {
				*ev = H1_ABORTED;
				return off;
			}
			off += ll;
			if (n == 0) {
				enum h1_event e = end_of_head(p);
				if (e != H1_MORE) {
					*ev = e;
					return off;
				}
			}
			continue;
		case H1_BODY_LEN:
		case H1_CHUNK_DATA:
		case H1_BODY_EOF:
			if (avail == 0) {
				*ev = H1_MORE;
				return off;
			}
			n = avail;
			if (p->state != H1_BODY_EOF && n > p->remaining)
				n = (size_t)p->remaining;
			r = cb->body(arg, at, n);
			if (r != 0) {
				*ev = r > 0 ? H1_PAUSED : H1_ABORTED;
				return off;
			}
			off += n;
			if (p->state == H1_BODY_EOF)
				continue;
			p->remaining -= n;
			if (p->remaining == 0) {
				if (p->state == H1_CHUNK_DATA) {
					p->state = H1_CHUNK_CRLF;
					continue;
				}
				p->state = H1_DONE;
				*ev = H1_COMPLETE;
				return off;
			}
			continue;
		case H1_CHUNK_CRLF:
			if (avail == 0 || (at[0] == '\r' && avail < 2)) {
				*ev = H1_MORE;
				return off;
			}
			if (at[0] == '\n') {
				off += 1;
			} else if (at[0] == '\r' && at[1] == '\n') {
				off += 2;
			} else {
				*ev = H1_BAD;
				return off;
			}
			p->state = H1_CHUNK_SIZE;
			continue;
		case H1_DONE:
			*ev = H1_COMPLETE;
			return off;
		}
	}
}

enum h1_event h1_eof(const struct h1_parser *p)
{
	return p->state == H1_BODY_EOF ? H1_COMPLETE : H1_BAD;
}

/* ========================================================================== pool === */

#define IDLE_MAX_PER_ORIGIN 256
#define BUF_START (16 * 1024)
#define BUF_MAX   (H1_HEAD_MAX + 16 * 1024)

struct origin {
	char *host;                       /* "host[:port]" as the route gave it */
	struct sockaddr_storage addr;
	socklen_t addrlen;
	LIST_HEAD(, upconn) idle;
	unsigned n_idle;
	struct origin *next;
};

struct upconn {
	struct upconn_pool *pool;
	struct origin *origin;
	int fd;
	int err;                          /* a failure noticed outside the event handlers */
	struct event rev;                 /* persistent, for the socket's whole life */
	struct event wev;                 /* connect completion and blocked writes */
	struct upconn_xfer *x;            /* NULL while idle */
	struct h1_parser h1;
	char *buf;
	size_t len, cap;
	bool connecting, reused, idle;
	LIST_ENTRY(upconn) idle_link;
	LIST_ENTRY(upconn) all_link;
};

struct upconn_pool {
	struct event_base *base;
	struct origin *origins;
	LIST_HEAD(, upconn) all;
	unsigned open, idle;
};

static void read_cb(evutil_socket_t fd, short what, void *arg);
static void write_cb(evutil_socket_t fd, short what, void *arg);

struct upconn_pool *upconn_pool_new(struct event_base *base)
{
	struct upconn_pool *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->base = base;
	LIST_INIT(&p->all);
	return p;
}

static void conn_close(struct upconn *c)
{
	struct upconn_pool *p = c->pool;

	if (c->idle) {
		LIST_REMOVE(c, idle_link);
		c->origin->n_idle--;
		p->idle--;
	}
	LIST_REMOVE(c, all_link);
	event_del(&c->rev);
	event_del(&c->wev);
	close(c->fd);
	free(c->buf);
	free(c);
	p->open--;
}

void upconn_pool_free(struct upconn_pool *p)
{
	if (!p)
		return;
	while (!LIST_EMPTY(&p->all)) {
		struct upconn *c = LIST_FIRST(&p->all);
		if (c->x) {
			c->x->conn = NULL;
			c->x->active = false;
		}
		conn_close(c);
	}
	while (p->origins) {
		struct origin *o = p->origins;
		p->origins = o->next;
		free(o->host);
		free(o);
	}
	free(p);
}

/* "host[:port]" to an address, for IP literals only: resolving names would block the loop,
 * and those routes stay with curl's threaded resolver. That includes "localhost", which
 * may mean 127.0.0.1, ::1 or both, and curl tries each. */
static int parse_host(const char *host, struct sockaddr_storage *ss, socklen_t *len)
{
	char name[64];
	const char *port_s = NULL, *end;
	long port = 80;

	memset(ss, 0, sizeof(*ss));
	if (host[0] == '[') {
		end = strchr(host, ']');
		if (!end || (size_t)(end - host - 1) >= sizeof(name))
			return -1;
		memcpy(name, host + 1, (size_t)(end - host - 1));
		name[end - host - 1] = '\0';
		if (end[1] == ':')
			port_s = end + 2;
		else if (end[1])
			return -1;
	} else {
		end = strchr(host, ':');
		size_t n = end ? (size_t)(end - host) : strlen(host);
		if (n >= sizeof(name))
			return -1;
		memcpy(name, host, n);
		name[n] = '\0';
		if (end)
			port_s = end + 1;
	}
	if (port_s) {
		char *e;
		port = strtol(port_s, &e, 10);
		if (*e || port < 1 || port > 65535)
			return -1;
	}
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, name, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons((uint16_t)port);
		*len = sizeof(*a4);
	} else if (inet_pton(AF_INET6, name, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons((uint16_t)port);
		*len = sizeof(*a6);
	} else {
		return -1;
	}
	return 0;
}

static struct origin *origin_find(const struct upconn_pool *p, const char *host)
{
	struct origin *o;

	for (o = p->origins; o; o = o->next)
		if (strcmp(o->host, host) == 0)
			return o;
	return NULL;
}

bool upconn_supported(const struct upconn_pool *p, const char *host)
{
	struct sockaddr_storage ss;
	socklen_t len;

	/* asked for every request: parsing the host each time was ~250 instructions */
	return origin_find(p, host) || parse_host(host, &ss, &len) == 0;
}

static struct origin *origin_get(struct upconn_pool *p, const char *host)
{
	struct origin *o = origin_find(p, host);

	if (o)
		return o;
	o = calloc(1, sizeof(*o));
	if (!o)
		return NULL;
	if (parse_host(host, &o->addr, &o->addrlen) < 0 || !(o->host = strdup(host))) {
		free(o);
		return NULL;
	}
	LIST_INIT(&o->idle);
	o->next = p->origins;
	p->origins = o;
	return o;
}

/* A new non-blocking socket with its connect started. NULL when no socket could be made;
 * a refused connect is reported later, from the loop (c->err). */
static struct upconn *conn_open(struct upconn_pool *p, struct origin *o)
{
	struct upconn *c = calloc(1, sizeof(*c));
	int one = 1;

	if (!c)
		return NULL;
	c->fd = socket(o->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0 || !(c->buf = malloc(BUF_START))) {
		if (c->fd >= 0)
			close(c->fd);
		free(c);
		return NULL;
	}
	c->cap = BUF_START;
	c->pool = p;
	c->origin = o;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(c->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	event_assign(&c->rev, p->base, c->fd, EV_READ | EV_PERSIST, read_cb, c);
	event_assign(&c->wev, p->base, c->fd, EV_WRITE, write_cb, c);
	LIST_INSERT_HEAD(&p->all, c, all_link);
	p->open++;
	if (connect(c->fd, (struct sockaddr *)&o->addr, o->addrlen) < 0) {
		if (errno == EINPROGRESS) {
			c->connecting = true;
			event_add(&c->wev, NULL);
		} else {
			/* refused at once (possible on loopback): reported from the loop */
			c->connecting = true;
			c->err = errno ? errno : ECONNREFUSED;
			event_active(&c->wev, EV_WRITE, 1);
		}
	}
	event_add(&c->rev, NULL);
	return c;
}

static void attach(struct upconn *c, struct upconn_xfer *x)
{
	c->x = x;
	x->conn = c;
	x->sent = 0;
	c->len = 0;
	h1_init(&c->h1, x->head_request);
}

/* Detach the transfer and report it; the connection is kept idle or closed first, so
 * that `done` may free the transfer and even start a new one on this same connection. */
static void conclude(struct upconn *c, enum upconn_result r, bool reusable)
{
	struct upconn_xfer *x = c->x;
	struct origin *o = c->origin;

	c->x = NULL;
	x->conn = NULL;
	x->active = false;
	x->paused = false;
	if (reusable && c->len == 0 && o->n_idle < IDLE_MAX_PER_ORIGIN) {
		c->idle = true;
		c->reused = false;
		LIST_INSERT_HEAD(&o->idle, c, idle_link);
		o->n_idle++;
		c->pool->idle++;
	} else {
		conn_close(c);
	}
	x->done(x, r);
}

/* Write what is left of the request. 0 when all of it is out or the rest waits for
 * EV_WRITE; otherwise the errno. */
static int send_more(struct upconn *c)
{
	struct upconn_xfer *x = c->x;
	size_t total = x->req[0].iov_len + x->req[1].iov_len;

	while (x->sent < total) {
		struct iovec iov[2];
		int n = 0;
		size_t skip = x->sent;
		for (int i = 0; i < 2; i++) {
			if (skip >= x->req[i].iov_len) {
				skip -= x->req[i].iov_len;
				continue;
			}
			iov[n].iov_base = (char *)x->req[i].iov_base + skip;
			iov[n].iov_len = x->req[i].iov_len - skip;
			skip = 0;
			n++;
		}
		struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)n };
		ssize_t w = sendmsg(c->fd, &m, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				event_add(&c->wev, NULL);
				return 0;
			}
			return errno;
		}
		x->sent += (size_t)w;
	}
	return 0;
}

/* The connection failed under its transfer. A reused connection that failed before any
 * answer was most likely closed by the upstream while idle: try once more on a new one. */
static void conn_failed(struct upconn *c, enum upconn_result r)
{
	struct upconn_xfer *x = c->x;

	if (c->reused && !x->retried && !c->h1.seen_bytes) {
		struct origin *o = c->origin;
		struct upconn_pool *p = c->pool;
		struct upconn *n;

		c->x = NULL;
		x->conn = NULL;
		conn_close(c);
		x->retried = true;
		n = conn_open(p, o);
		if (n) {
			attach(n, x);
			if (!n->connecting && !n->err) {
				int e = send_more(n);
				if (e) {
					n->err = e;
					event_active(&n->wev, EV_WRITE, 1);
				}
			}
			return;
		}
		x->active = false;
		x->done(x, UPC_CONNECT);
		return;
	}
	conclude(c, r, false);
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct upconn *c = arg;
	int e;
	socklen_t el = sizeof(e);
	(void)what;

	if (!c->x)
		return;
	if (c->err) {
		c->err = 0;
		conn_failed(c, c->connecting ? UPC_CONNECT : UPC_RESET);
		return;
	}
	if (c->connecting) {
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) < 0)
			e = errno;
		if (e) {
			conclude(c, UPC_CONNECT, false);
			return;
		}
		c->connecting = false;
	}
	if ((e = send_more(c)) != 0)
		conn_failed(c, UPC_RESET);
}

/* Run the parser over what is buffered and act on where it stopped. */
static void process(struct upconn *c)
{
	struct upconn_xfer *x = c->x;
	enum h1_event ev;
	size_t used = h1_feed(&c->h1, c->buf, c->len, x->cb, x->arg, &ev);

	if (used) {
		memmove(c->buf, c->buf + used, c->len - used);
		c->len -= used;
	}
	switch (ev) {
	case H1_MORE:
		return;
	case H1_PAUSED:
		x->paused = true;
		event_del(&c->rev);
		return;
	case H1_ABORTED:
		conclude(c, UPC_ABORTED, false);
		return;
	case H1_BAD:
		conclude(c, UPC_PROTOCOL, false);
		return;
	case H1_COMPLETE:
		/* bytes after a complete answer: the connection is out of step, do not reuse */
		conclude(c, UPC_OK, c->h1.keepalive && c->len == 0 &&
		                    x->sent == x->req[0].iov_len + x->req[1].iov_len);
		return;
	}
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct upconn *c = arg;
	ssize_t n;
	(void)what;

	if (!c->x) {
		/* idle: the upstream closed it (or sent something unasked); either way it is done */
		conn_close(c);
		return;
	}
	if (c->connecting) {
		write_cb(fd, EV_WRITE, c); /* an error shows as readable too: settle the connect */
		return;
	}
	if (c->cap - c->len < 4096 && c->cap < BUF_MAX) {
		size_t ncap = c->cap * 2 > BUF_MAX ? BUF_MAX : c->cap * 2;
		char *nb = realloc(c->buf, ncap);
		if (!nb) {
			conclude(c, UPC_NOMEM, false);
			return;
		}
		c->buf = nb;
		c->cap = ncap;
	}
	if (c->len == c->cap) {
		conclude(c, UPC_PROTOCOL, false);
		return;
	}
	n = recv(fd, c->buf + c->len, c->cap - c->len, 0);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		conn_failed(c, UPC_RESET);
		return;
	}
	if (n == 0) {
		if (!c->h1.seen_bytes && c->len == 0) {
			conn_failed(c, UPC_RESET);
			return;
		}
		if (c->len == 0 && h1_eof(&c->h1) == H1_COMPLETE)
			conclude(c, UPC_OK, false);
		else
			conclude(c, UPC_RESET, false);
		return;
	}
	c->len += (size_t)n;
	process(c);
}

int upconn_start(struct upconn_pool *p, const char *host, struct upconn_xfer *x)
{
	struct origin *o = origin_get(p, host);
	struct upconn *c;
	int e;

	if (!o)
		return -1;
	x->active = true;
	x->paused = false;
	x->retried = false;
	c = LIST_FIRST(&o->idle);
	if (c) {
		LIST_REMOVE(c, idle_link);
		c->idle = false;
		c->reused = true;
		o->n_idle--;
		p->idle--;
	} else if (!(c = conn_open(p, o))) {
		x->active = false;
		return -1;
	}
	attach(c, x);
	if (!c->connecting && !c->err && (e = send_more(c)) != 0) {
		/* reported from the loop: the caller is still setting up */
		c->err = e;
		event_active(&c->wev, EV_WRITE, 1);
	}
	return 0;
}

void upconn_resume(struct upconn_xfer *x)
{
	struct upconn *c = x->conn;

	if (!c || !x->paused)
		return;
	x->paused = false;
	event_add(&c->rev, NULL);
	if (c->len > 0)
		process(c);
}

void upconn_cancel(struct upconn_xfer *x)
{
	struct upconn *c = x->conn;

	x->active = false;
	x->paused = false;
	if (!c)
		return;
	c->x = NULL;
	x->conn = NULL;
	conn_close(c);
}

void upconn_counts(const struct upconn_pool *p, unsigned *open, unsigned *idle)
{
	*open = p->open;
	*idle = p->idle;
}
