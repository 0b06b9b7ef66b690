/* The transport interface, through the native HTTP/1.1 transport against a scripted
 * upstream on a loopback socket in the same event loop: names are resolved off the loop,
 * results come back as fastgate's own codes, `done` never runs inside tr_start, and a
 * request that may have reached the upstream is never sent twice unless it is replayable. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <event2/event.h>

#include "transport.h"
#include "transport_h1.h"
#include "unit.h"

/* The scripted upstream: each accepted connection answers its requests from `script`
 * (one answer per request; NULL: read the request, then close without a byte). */
struct upstream {
	struct event_base *base;
	int lfd, port;
	struct event *lev;
	const char *const *script;
	size_t next;                  /* index of the next answer */
	int requests;                 /* requests read, over all connections */
	int connections;
	struct conn_ev { int fd; struct event *ev; char buf[8192]; size_t len; } c[8];
};

static void conn_read(evutil_socket_t fd, short what, void *arg)
{
	struct upstream *u = arg;
	struct conn_ev *c = NULL;
	ssize_t n;
	(void)what;

	for (int i = 0; i < u->connections; i++)
		if (u->c[i].fd == fd)
			c = &u->c[i];
	n = read(fd, c->buf + c->len, sizeof(c->buf) - c->len);
	if (n <= 0) {
		event_del(c->ev);
		close(fd);
		c->fd = -1;
		return;
	}
	c->len += (size_t)n;
	/* a whole request: the head, and the body its Content-Length announces */
	char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
	if (!end)
		return;
	size_t need = (size_t)(end + 4 - c->buf);
	char *cl = memmem(c->buf, need, "Content-Length: ", 16);
	if (cl)
		need += (size_t)atoi(cl + 16);
	if (c->len < need)
		return;
	c->len = 0;
	u->requests++;
	const char *ans = u->script[u->next++];
	if (!ans) {
		event_del(c->ev);
		close(fd);
		c->fd = -1;
		return;
	}
	if (write(fd, ans, strlen(ans)) < 0)
		return;
}

static void accept_cb(evutil_socket_t lfd, short what, void *arg)
{
	struct upstream *u = arg;
	int fd = accept(lfd, NULL, NULL);
	(void)what;

	if (fd < 0 || u->connections == 8)
		return;
	u->c[u->connections].fd = fd;
	u->c[u->connections].len = 0;
	u->c[u->connections].ev = event_new(u->base, fd, EV_READ | EV_PERSIST, conn_read, u);
	event_add(u->c[u->connections].ev, NULL);
	u->connections++;
}

static void upstream_start(struct upstream *u, struct event_base *base, const char *const *script)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);

	memset(u, 0, sizeof(*u));
	u->base = base;
	u->script = script;
	u->lfd = socket(AF_INET, SOCK_STREAM, 0);
	bind(u->lfd, (struct sockaddr *)&a, sizeof(a));
	listen(u->lfd, 16);
	getsockname(u->lfd, (struct sockaddr *)&a, &al);
	u->port = ntohs(a.sin_port);
	u->lev = event_new(base, u->lfd, EV_READ | EV_PERSIST, accept_cb, u);
	event_add(u->lev, NULL);
}

static void upstream_stop(struct upstream *u)
{
	for (int i = 0; i < u->connections; i++) {
		event_free(u->c[i].ev);
		if (u->c[i].fd >= 0)
			close(u->c[i].fd);
	}
	event_free(u->lev);
	close(u->lfd);
}

static int connect_timeout = 5;   /* seconds, for the transfers start() makes */

/* The caller's side of one transfer. */
struct call {
	struct tr_xfer x;
	bool in_start;                /* tr_start is on the stack */
	bool done, done_in_start;
	enum tr_result result;
	int status;
	char body[256];
	size_t body_len;
	char host[64];
	char head[256];
};

static int on_line(void *arg, const char *line, size_t len)
{
	struct call *c = arg;

	if (len > 9 && memcmp(line, "HTTP/1.", 7) == 0)
		c->status = atoi(line + 9);
	return 0;
}

static int on_body(void *arg, const char *data, size_t len)
{
	struct call *c = arg;

	if (len > sizeof(c->body) - c->body_len)
		len = sizeof(c->body) - c->body_len;
	memcpy(c->body + c->body_len, data, len);
	c->body_len += len;
	return 0;
}

static void on_done(void *arg, enum tr_result r)
{
	struct call *c = arg;

	c->done = true;
	c->done_in_start = c->in_start;
	c->result = r;
}

static const struct tr_callbacks cbs = { on_line, on_body, on_done };

static int start(struct transport *t, struct call *c, const char *host, const char *method,
                 bool replayable)
{
	int r;

	memset(c, 0, sizeof(*c));
	snprintf(c->host, sizeof(c->host), "%s", host);
	snprintf(c->head, sizeof(c->head), "%s /x HTTP/1.1\r\nHost: %s\r\nContent-Length: 2\r\n\r\n",
	         method, host);
	c->x.rq.origin = "http://test";
	c->x.rq.host = c->host;
	c->x.rq.head = c->head;
	c->x.rq.head_len = strlen(c->head);
	c->x.rq.body = "{}";
	c->x.rq.body_len = 2;
	c->x.rq.replayable = replayable;
	c->x.rq.connect_timeout = connect_timeout;
	c->x.cb = &cbs;
	c->x.arg = c;
	c->in_start = true;
	r = tr_start(t, &c->x);
	c->in_start = false;
	return r;
}

/* Run the loop until the call is done, for at most 5 s. */
static void wait_done(struct event_base *base, struct call *c)
{
	for (int i = 0; i < 500 && !c->done; i++) {
		struct timeval tv = { 0, 10000 };
		event_base_loopexit(base, &tv);
		event_base_dispatch(base);
	}
}

#define OK_ANSWER "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

TEST(a_named_host_is_resolved_off_the_loop_and_reached)
{
	static const char *const script[] = { OK_ANSWER };
	struct event_base *base = event_base_new();
	char *err = NULL;
	struct transport *t = transport_h1_new(base, &err);
	struct upstream u;
	struct call c;
	char host[64];

	upstream_start(&u, base, script);
	snprintf(host, sizeof(host), "localhost:%d", u.port);
	CHECK_INT(start(t, &c, host, "POST", false), 0);
	CHECK(!c.done);               /* the lookup is on its way: nothing decided yet */
	wait_done(base, &c);
	CHECK(c.done && !c.done_in_start);
	CHECK_INT(c.result, TR_OK);
	CHECK_INT(c.status, 200);
	CHECK_INT(c.body_len, 2);
	CHECK_INT(u.requests, 1);
	transport_h1_free(t);
	upstream_stop(&u);
	event_base_free(base);
}

TEST(an_unknown_name_is_a_resolve_failure_reported_from_the_loop)
{
	struct event_base *base = event_base_new();
	char *err = NULL;
	struct transport *t = transport_h1_new(base, &err);
	struct call c;

	CHECK_INT(start(t, &c, "no-such-host.invalid:9", "GET", true), 0);
	wait_done(base, &c);
	CHECK(c.done && !c.done_in_start);
	CHECK_INT(c.result, TR_RESOLVE);
	CHECK_STR(tr_result_kind(c.result), "resolve");
	transport_h1_free(t);
	event_base_free(base);
}

TEST(a_refused_connection_is_a_connect_failure)
{
	struct event_base *base = event_base_new();
	char *err = NULL;
	struct transport *t = transport_h1_new(base, &err);
	struct upstream u;
	struct call c;
	char host[64];

	upstream_start(&u, base, NULL);
	snprintf(host, sizeof(host), "127.0.0.1:%d", u.port);
	upstream_stop(&u);            /* the port is free again: nothing listens */
	CHECK_INT(start(t, &c, host, "POST", false), 0);
	wait_done(base, &c);
	CHECK(c.done && !c.done_in_start);
	CHECK_INT(c.result, TR_CONNECT);
	transport_h1_free(t);
	event_base_free(base);
}

/* The upstream answers on a kept-alive connection, then reads the next request and
 * closes without a byte: the request may have been acted on. */
static void closed_under(const char *method, bool replayable, enum tr_result want, int want_requests)
{
	static const char *const script[] = { OK_ANSWER, NULL, OK_ANSWER };
	struct event_base *base = event_base_new();
	char *err = NULL;
	struct transport *t = transport_h1_new(base, &err);
	struct upstream u;
	struct call c;
	char host[64];

	upstream_start(&u, base, script);
	snprintf(host, sizeof(host), "127.0.0.1:%d", u.port);
	start(t, &c, host, method, replayable);
	wait_done(base, &c);
	CHECK_INT(c.result, TR_OK);
	start(t, &c, host, method, replayable);
	wait_done(base, &c);
	CHECK_INT(c.result, want);
	CHECK_INT(u.requests, want_requests);
	transport_h1_free(t);
	upstream_stop(&u);
	event_base_free(base);
}

TEST(a_request_that_may_have_been_acted_on_is_not_sent_twice)
{
	closed_under("POST", false, TR_RESET, 2);
}

TEST(a_replayable_request_is_sent_once_more_on_a_new_connection)
{
	closed_under("GET", true, TR_OK, 3);
}

TEST(a_cancelled_transfer_never_reports)
{
	static const char *const script[] = { OK_ANSWER };
	struct event_base *base = event_base_new();
	char *err = NULL;
	struct transport *t = transport_h1_new(base, &err);
	struct upstream u;
	struct call c;
	char host[64];

	upstream_start(&u, base, script);
	snprintf(host, sizeof(host), "localhost:%d", u.port);
	start(t, &c, host, "POST", false);
	tr_cancel(&c.x);              /* while its name is still being looked up */
	CHECK(!c.x.active);
	for (int i = 0; i < 20; i++) {
		struct timeval tv = { 0, 10000 };
		event_base_loopexit(base, &tv);
		event_base_dispatch(base);
	}
	CHECK(!c.done);
	transport_h1_free(t);
	upstream_stop(&u);
	event_base_free(base);
}

/* A listener that never accepts, its queue full: further connects get no answer at all
 * (their SYNs are dropped), as from a host that silently drops packets. */
TEST(a_connect_that_gets_no_answer_fails_at_the_connect_timeout)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	struct event_base *base = event_base_new();
	char *err = NULL;
	struct transport *t = transport_h1_new(base, &err);
	int lfd = socket(AF_INET, SOCK_STREAM, 0), fill[4];
	struct call c;
	char host[64];
	struct timespec t0, t1;

	bind(lfd, (struct sockaddr *)&a, sizeof(a));
	listen(lfd, 0);
	getsockname(lfd, (struct sockaddr *)&a, &al);
	for (int i = 0; i < 4; i++) {   /* fill the accept queue; the rest may hang */
		fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
		connect(fill[i], (struct sockaddr *)&a, sizeof(a));
	}
	snprintf(host, sizeof(host), "127.0.0.1:%d", ntohs(a.sin_port));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	connect_timeout = 1;
	start(t, &c, host, "POST", false);
	connect_timeout = 5;
	wait_done(base, &c);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	CHECK(c.done);
	CHECK_INT(c.result, TR_CONNECT);
	/* it waited for its timeout (the connect hung), and no longer */
	double waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	CHECK(waited > 0.9 && waited < 3.0);
	transport_h1_free(t);
	for (int i = 0; i < 4; i++)
		close(fill[i]);
	close(lfd);
	event_base_free(base);
}

RUN_TESTS()
