/* The http:// transport; see transport_h1.h.
 *
 * One connection carries one transfer at a time and goes back to its origin's idle list
 * when the answer was complete and the upstream allows keep-alive. A reused connection
 * that fails before any byte of the answer was most likely closed by the upstream while
 * idle; the request is sent once more on a new connection only when nothing of it was
 * written yet or the caller marked it replayable (an idempotent method): a POST that may
 * have reached the upstream is never sent twice (RFC 9110 9.2.2). Every socket keeps one
 * persistent read event for its whole life, so a reused connection costs no epoll_ctl. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <event2/event_struct.h>

#include "h1resp.h"
#include "resolve.h"
#include "transport_h1.h"
#include "util.h"

#define IDLE_MAX_DEFAULT 256       /* until the gateway sets it (tr_set_idle_max) */
#define BUF_START (16 * 1024)
#define BUF_MAX   (H1_HEAD_MAX + 16 * 1024)
#define NAME_TTL_SECONDS 60
/* An idle connection older than this is closed rather than reused: common upstream
 * servers drop theirs after 5 s (uvicorn, Node), and a request written into a connection
 * the upstream is closing at that moment is lost (a POST is not sent again). */
#define IDLE_REUSE_MS 4000
/* With more addresses of a name left to try, one that does not answer a connect within
 * this gets no more time: the next address does. */
#define NEXT_ADDRESS_MS 3000

struct origin {
	struct pool *pool;
	char *host;                       /* "host[:port]" as the route gave it */
	char *name;                       /* host part, brackets removed */
	int port;
	bool literal;                     /* an IP address: never resolved */
	bool resolving;
	size_t n_addrs;                   /* 0 until resolved */
	size_t good;                      /* the address that connected last */
	struct sockaddr_storage addr[RESOLVE_MAX_ADDRS];
	socklen_t addrlen[RESOLVE_MAX_ADDRS];
	time_t resolved_at;
	struct tr_xfer *waiters;          /* transfers waiting for the name */
	LIST_HEAD(, conn) idle;
	unsigned n_idle;
	struct origin *next;
};

struct conn {
	struct pool *pool;
	struct origin *origin;
	size_t addr_i;                    /* which of the origin's addresses */
	int fd;
	int err;                          /* a failure noticed outside the event handlers */
	struct event rev;                 /* persistent, for the socket's whole life */
	struct event wev;                 /* connect completion and blocked writes */
	struct tr_xfer *x;                /* NULL while idle */
	struct h1_parser h1;
	char *buf;
	size_t len, cap;
	bool connecting, reused, idle;
	int64_t idle_since;               /* ms, CLOCK_MONOTONIC_COARSE */
	LIST_ENTRY(conn) idle_link;
	LIST_ENTRY(conn) all_link;
};

struct pool {
	struct transport t;               /* first: the transport.h view of this */
	struct event_base *base;
	struct resolver *resolver;
	struct origin *origins;
	LIST_HEAD(, conn) all;
	unsigned open, idle;
	unsigned idle_max;                /* per origin */
};

static const struct transport_ops h1_ops;
static void read_cb(evutil_socket_t fd, short what, void *arg);
static void write_cb(evutil_socket_t fd, short what, void *arg);
static void start_on(struct origin *o, struct tr_xfer *x);

static int64_t coarse_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- connections ---------------------------------------------------------------- */

static void conn_close(struct conn *c)
{
	struct pool *p = c->pool;

	if (c->idle) {
		LIST_REMOVE(c, idle_link);
		c->origin->n_idle--;
		CTR_ADD(p->idle, -1);
	}
	LIST_REMOVE(c, all_link);
	event_del(&c->rev);
	event_del(&c->wev);
	close(c->fd);
	free(c->buf);
	free(c);
	CTR_ADD(p->open, -1);
}

/* A new non-blocking socket with its connect to address i started, bounded by timeout_ms.
 * NULL when no socket could be made; a refused connect is reported later, from the loop
 * (c->err). */
static struct conn *conn_open(struct pool *p, struct origin *o, size_t i, int64_t timeout_ms)
{
	struct timeval tv = { (time_t)(timeout_ms / 1000), (suseconds_t)(timeout_ms % 1000) * 1000 };
	struct conn *c = calloc(1, sizeof(*c));
	int one = 1;

	if (!c)
		return NULL;
	c->fd = socket(o->addr[i].ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0 || !(c->buf = malloc(BUF_START))) {
		if (c->fd >= 0)
			close(c->fd);
		free(c);
		return NULL;
	}
	c->cap = BUF_START;
	c->pool = p;
	c->origin = o;
	c->addr_i = i;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(c->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	event_assign(&c->rev, p->base, c->fd, EV_READ | EV_PERSIST, read_cb, c);
	event_assign(&c->wev, p->base, c->fd, EV_WRITE, write_cb, c);
	LIST_INSERT_HEAD(&p->all, c, all_link);
	CTR_ADD(p->open, 1);
	c->connecting = true;
	if (connect(c->fd, (struct sockaddr *)&o->addr[i], o->addrlen[i]) < 0) {
		if (errno == EINPROGRESS) {
			event_add(&c->wev, &tv);   /* EV_TIMEOUT: the address did not answer */
		} else {
			/* refused at once (possible on loopback): reported from the loop */
			c->err = errno ? errno : ECONNREFUSED;
			event_active(&c->wev, EV_WRITE, 1);
		}
	} else {
		c->connecting = false;
	}
	event_add(&c->rev, NULL);
	return c;
}

/* Write what is left of the request. 0 when all of it is out or the rest waits for
 * EV_WRITE; otherwise the errno. */
static int send_more(struct conn *c)
{
	struct tr_xfer *x = c->x;
	const struct tr_request *rq = &x->rq;
	size_t total = rq->head_len + rq->body_len;

	while (x->sent < total) {
		struct iovec iov[2];
		int n = 0;

		if (x->sent < rq->head_len) {
			iov[n].iov_base = (char *)rq->head + x->sent;
			iov[n++].iov_len = rq->head_len - x->sent;
		}
		if (rq->body_len) {
			size_t skip = x->sent > rq->head_len ? x->sent - rq->head_len : 0;
			iov[n].iov_base = (char *)rq->body + skip;
			iov[n++].iov_len = rq->body_len - skip;
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

static void attach(struct conn *c, struct tr_xfer *x)
{
	c->x = x;
	x->impl = c;
	x->sent = 0;
	c->len = 0;
	h1_init(&c->h1, x->rq.head_request);
	if (!c->connecting && !c->err) {
		int e = send_more(c);
		if (e) {
			/* reported from the loop: the caller may still be in tr_start */
			c->err = e;
			event_active(&c->wev, EV_WRITE, 1);
		}
	}
}

/* Detach the transfer and report it; the connection is kept idle or closed first, so
 * that `done` may free the transfer and even start a new one on this same connection. */
static void conclude(struct conn *c, enum tr_result r, bool reusable)
{
	struct tr_xfer *x = c->x;
	struct origin *o = c->origin;

	c->x = NULL;
	x->impl = NULL;
	x->active = false;
	x->paused = false;
	if (reusable && c->len == 0 && o->n_idle < c->pool->idle_max) {
		c->idle = true;
		c->reused = false;
		c->idle_since = coarse_ms();
		LIST_INSERT_HEAD(&o->idle, c, idle_link);
		o->n_idle++;
		CTR_ADD(c->pool->idle, 1);
	} else {
		conn_close(c);
	}
	x->cb->done(x->arg, r);
}

/* How long a connect to the origin may take: the request's connect timeout, less while
 * other addresses of the name are left to try. */
static int64_t connect_ms(const struct origin *o, const struct tr_xfer *x)
{
	int64_t ms = (int64_t)(x->rq.connect_timeout > 0 ? x->rq.connect_timeout : 60) * 1000;

	return x->tries + 1 < o->n_addrs && ms > NEXT_ADDRESS_MS ? NEXT_ADDRESS_MS : ms;
}

/* Move x to a new connection to address i of its origin. */
static void reopen(struct conn *c, size_t i)
{
	struct tr_xfer *x = c->x;
	struct origin *o = c->origin;
	struct pool *p = c->pool;
	struct conn *n;

	c->x = NULL;
	x->impl = NULL;
	conn_close(c);
	if (i >= o->n_addrs)       /* a refresh since left the name fewer addresses */
		i = 0;
	n = conn_open(p, o, i, connect_ms(o, x));
	if (!n) {
		x->active = false;
		x->cb->done(x->arg, TR_CONNECT);
		return;
	}
	attach(n, x);
}

/* The connection failed under its transfer. */
static void conn_failed(struct conn *c, enum tr_result r)
{
	struct tr_xfer *x = c->x;

	/* closed by the upstream while idle, before it read this request (nothing of it was
	 * written), or a request that may be sent twice: once more on a new connection */
	if (c->reused && !x->retried && !c->h1.seen_bytes && (x->sent == 0 || x->rq.replayable)) {
		x->retried = true;
		reopen(c, c->addr_i);
		return;
	}
	conclude(c, r, false);
}

/* A connect failed or timed out: the next address of the name, while this transfer has
 * not tried them all. New transfers start from the next one too. */
static void connect_failed(struct conn *c)
{
	struct origin *o = c->origin;
	struct tr_xfer *x = c->x;
	size_t next = o->n_addrs ? (c->addr_i + 1) % o->n_addrs : 0;

	if (c->addr_i == o->good)
		o->good = next;
	if (++x->tries < o->n_addrs) {
		reopen(c, next);
		return;
	}
	conclude(c, TR_CONNECT, false);
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	int e;
	socklen_t el = sizeof(e);

	if (!c->x)
		return;
	if ((what & EV_TIMEOUT) && c->connecting) {
		connect_failed(c);
		return;
	}
	if (c->err) {
		c->err = 0;
		if (c->connecting)
			connect_failed(c);
		else
			conn_failed(c, TR_RESET);
		return;
	}
	if (c->connecting) {
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) < 0)
			e = errno;
		if (e) {
			connect_failed(c);
			return;
		}
		c->connecting = false;
		c->origin->good = c->addr_i;
	}
	if ((e = send_more(c)) != 0)
		conn_failed(c, TR_RESET);
}

/* Run the parser over what is buffered and act on where it stopped. */
static void process(struct conn *c)
{
	struct tr_xfer *x = c->x;
	const struct h1_callbacks cb = { x->cb->line, x->cb->body };
	enum h1_event ev;
	size_t used = h1_feed(&c->h1, c->buf, c->len, &cb, x->arg, &ev);

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
		conclude(c, TR_ABORTED, false);
		return;
	case H1_BAD:
		conclude(c, TR_PROTOCOL, false);
		return;
	case H1_COMPLETE:
		/* bytes after a complete answer: the connection is out of step, do not reuse */
		conclude(c, TR_OK, c->h1.keepalive && c->len == 0 &&
		                   x->sent == x->rq.head_len + x->rq.body_len);
		return;
	}
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
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
			conclude(c, TR_NOMEM, false);
			return;
		}
		c->buf = nb;
		c->cap = ncap;
	}
	if (c->len == c->cap) {
		conclude(c, TR_PROTOCOL, false);
		return;
	}
	n = recv(fd, c->buf + c->len, c->cap - c->len, 0);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		conn_failed(c, TR_RESET);
		return;
	}
	if (n == 0) {
		if (!c->h1.seen_bytes && c->len == 0) {
			conn_failed(c, TR_RESET);
			return;
		}
		if (c->len == 0 && h1_eof(&c->h1) == H1_COMPLETE)
			conclude(c, TR_OK, false);
		else
			conclude(c, TR_RESET, false);
		return;
	}
	c->len += (size_t)n;
	process(c);
}

/* ---- origins and names ------------------------------------------------------------ */

/* "host[:port]" into its name and port; an IP literal fills the first address. */
static int parse_host(struct origin *o, const char *host)
{
	const char *port_s = NULL, *end;
	size_t n;

	if (host[0] == '[') {
		end = strchr(host, ']');
		if (!end)
			return -1;
		n = (size_t)(end - host - 1);
		host++;
		if (end[1] == ':')
			port_s = end + 2;
		else if (end[1])
			return -1;
	} else {
		end = strchr(host, ':');
		n = end ? (size_t)(end - host) : strlen(host);
		if (end)
			port_s = end + 1;
	}
	if (n == 0 || !(o->name = strndup(host, n)))
		return -1;
	o->port = 80;
	if (port_s) {
		char *e;
		long port = strtol(port_s, &e, 10);
		if (*e || port < 1 || port > 65535)
			return -1;
		o->port = (int)port;
	}
	struct sockaddr_in *a4 = (struct sockaddr_in *)&o->addr[0];
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&o->addr[0];
	if (inet_pton(AF_INET, o->name, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons((uint16_t)o->port);
		o->addrlen[0] = sizeof(*a4);
	} else if (inet_pton(AF_INET6, o->name, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons((uint16_t)o->port);
		o->addrlen[0] = sizeof(*a6);
	} else {
		return 0;   /* a name */
	}
	o->literal = true;
	o->n_addrs = 1;
	return 0;
}

static struct origin *origin_get(struct pool *p, const char *host)
{
	struct origin *o;

	for (o = p->origins; o; o = o->next)
		if (strcmp(o->host, host) == 0)
			return o;
	o = calloc(1, sizeof(*o));
	if (!o)
		return NULL;
	o->pool = p;
	if (!(o->host = strdup(host)) || parse_host(o, host) < 0) {
		free(o->name);
		free(o->host);
		free(o);
		return NULL;
	}
	LIST_INIT(&o->idle);
	o->next = p->origins;
	p->origins = o;
	return o;
}

/* On the loop, a lookup came back: start or fail everything that waited for it. */
static void resolved(void *arg, const struct resolve_result *r)
{
	struct origin *o = arg;
	struct tr_xfer *w = o->waiters;

	o->resolving = false;
	o->waiters = NULL;
	if (r->err == 0) {
		memcpy(o->addr, r->addr, sizeof(o->addr));
		memcpy(o->addrlen, r->len, sizeof(o->addrlen));
		o->n_addrs = r->n;
		o->good = 0;
		o->resolved_at = time(NULL);
	}
	/* a refresh that failed keeps the addresses the name had */
	while (w) {
		struct tr_xfer *next = w->next_wait;

		w->waiting = false;
		w->next_wait = NULL;
		if (o->n_addrs) {
			start_on(o, w);
		} else {
			w->active = false;
			w->cb->done(w->arg, TR_RESOLVE);
		}
		w = next;
	}
}

/* An idle connection of the origin, or a new one; NULL when no socket could be made.
 * The idle list is newest first: once one is too old to trust, so is the rest. */
static struct conn *conn_for(struct origin *o, const struct tr_xfer *x)
{
	struct pool *p = o->pool;
	struct conn *c = LIST_FIRST(&o->idle);

	if (c && coarse_ms() - c->idle_since > IDLE_REUSE_MS) {
		while ((c = LIST_FIRST(&o->idle)))
			conn_close(c);
	}
	if (!c)
		return conn_open(p, o, o->good < o->n_addrs ? o->good : 0, connect_ms(o, x));
	LIST_REMOVE(c, idle_link);
	c->idle = false;
	c->reused = true;
	o->n_idle--;
	CTR_ADD(p->idle, -1);
	return c;
}

/* From the loop, once the name is known: start x or report why not. */
static void start_on(struct origin *o, struct tr_xfer *x)
{
	struct conn *c = conn_for(o, x);

	if (!c) {
		x->active = false;
		x->cb->done(x->arg, TR_CONNECT);
		return;
	}
	attach(c, x);
}

static int h1_start(struct transport *t, struct tr_xfer *x)
{
	struct pool *p = (struct pool *)t;
	struct origin *o = origin_get(p, x->rq.host);
	struct conn *c;

	if (!o)
		return -1;
	x->active = true;
	x->paused = false;
	x->retried = false;
	x->waiting = false;
	x->tries = 0;
	x->impl = NULL;
	if (!o->literal && !o->resolving &&
	    (o->n_addrs == 0 || time(NULL) - o->resolved_at >= NAME_TTL_SECONDS)) {
		if (resolver_lookup(p->resolver, o->name, o->port, resolved, o) == 0)
			o->resolving = true;
	}
	if (o->n_addrs == 0) {
		if (!o->resolving) {
			x->active = false;
			return -1;
		}
		/* the first lookup of this name: wait for it (a refresh holds no request) */
		x->waiting = true;
		x->next_wait = o->waiters;
		o->waiters = x;
		return 0;
	}
	if (!(c = conn_for(o, x))) {
		x->active = false;
		return -1;
	}
	attach(c, x);
	return 0;
}

static void h1_resume(struct tr_xfer *x)
{
	struct conn *c = x->impl;

	if (!c || !x->paused)
		return;
	x->paused = false;
	event_add(&c->rev, NULL);
	if (c->len > 0)
		process(c);
}

static void h1_cancel(struct tr_xfer *x)
{
	struct conn *c = x->impl;

	x->active = false;
	x->paused = false;
	if (x->waiting) {
		struct origin *o = origin_get((struct pool *)x->t, x->rq.host);
		struct tr_xfer **pp = o ? &o->waiters : NULL;

		while (pp && *pp && *pp != x)
			pp = &(*pp)->next_wait;
		if (pp && *pp)
			*pp = x->next_wait;
		x->waiting = false;
		return;
	}
	if (!c)
		return;
	c->x = NULL;
	x->impl = NULL;
	conn_close(c);
}

static void h1_counts(const struct transport *t, unsigned *open, unsigned *idle)
{
	const struct pool *p = (const struct pool *)t;

	*open = CTR_GET(p->open);   /* read from any loop (metrics) */
	*idle = CTR_GET(p->idle);
}

static void h1_set_idle_max(struct transport *t, unsigned n)
{
	((struct pool *)t)->idle_max = n;
}

static const struct transport_ops h1_ops = {
	.name = "http", .start = h1_start, .resume = h1_resume, .cancel = h1_cancel,
	.counts = h1_counts, .set_idle_max = h1_set_idle_max,
};

/* ---- the pool ------------------------------------------------------------------- */

struct transport *transport_h1_new(struct event_base *base, char **err)
{
	struct pool *p = calloc(1, sizeof(*p));

	*err = NULL;
	if (!p || !(p->resolver = resolver_new(base))) {
		free(p);
		*err = strdup("cannot start the name resolver thread");
		return NULL;
	}
	p->t.ops = &h1_ops;
	p->base = base;
	p->idle_max = IDLE_MAX_DEFAULT;
	LIST_INIT(&p->all);
	return &p->t;
}

void transport_h1_free(struct transport *t)
{
	struct pool *p = (struct pool *)t;

	if (!p)
		return;
	resolver_free(p->resolver);   /* first: no lookup comes back to a freed origin */
	while (!LIST_EMPTY(&p->all)) {
		struct conn *c = LIST_FIRST(&p->all);
		if (c->x) {
			c->x->impl = NULL;
			c->x->active = false;
		}
		conn_close(c);
	}
	while (p->origins) {
		struct origin *o = p->origins;
		p->origins = o->next;
		for (struct tr_xfer *w = o->waiters; w; w = w->next_wait)
			w->active = w->waiting = false;
		free(o->name);
		free(o->host);
		free(o);
	}
	free(p);
}
