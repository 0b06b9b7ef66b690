/* Client-facing HTTP: listener, per-connection guard, dispatch. See http.h for the shape.
 *
 * Guard life cycle: created by evhttp's bevcb for each accepted connection, freed by the
 * filter's free_context when evhttp frees the connection. Nothing else frees it; every
 * path that wants a connection gone asks evhttp (EOF event or evhttp_connection_free). */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "audit.h"
#include "control.h"
#include "gateway.h"
#include "http.h"
#include "httperr.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "reqcheck.h"
#include "reqid.h"

#define LINGER_SECONDS 1

struct guard {
	struct http_server *srv;
	struct bufferevent *under;    /* the socket */
	struct bufferevent *filter;   /* what evhttp reads and writes */
	struct evhttp_connection *evcon; /* known from the first request on */
	struct reqcheck rc;
	size_t scan;                  /* validated head bytes still held in the socket buffer */
	int fd;
	struct event *deadline;       /* request-head deadline, then the lingering-close bound */
	struct event *kick;           /* deferred: resume input after a reply completes */
	struct event *writable;       /* socket writable again after a short write */
	struct event *peer_closed;    /* EV_CLOSED while a request is in flight */
	struct event *flush;          /* deferred: push evhttp's output to the socket */
	struct evbuffer_cb_entry *drain_cb;
	bool blocked;                 /* one request handed to evhttp, reply not finished */
	bool in_request;
	bool rejected;                /* answered by the guard; now lingering */
	bool dead;                    /* write failed; discard output */
	bool in_flush;                /* the output step may write now */
	void (*gone_fn)(void *);      /* who to tell when the connection goes away */
	void *gone_arg;
	LIST_ENTRY(guard) link;
};

struct http_server {
	struct gateway *gw;
	struct evhttp *evhttp;
	struct evhttp_bound_socket *bound;
	LIST_HEAD(, guard) guards;
	int n_conns;
	struct guard **by_fd;         /* fd -> guard, to find a request's guard */
	int by_fd_cap;
	char line[RC_MAX_LINE + 8];   /* scratch for one head line (single-threaded loop) */
};

static void guard_reject(struct guard *g, int status, const char *reason);
static void conn_closed_cb(struct evhttp_connection *evcon, void *arg);

static struct guard *guard_of(struct http_server *s, struct evhttp_request *req)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct bufferevent *bev;
	int fd;

	if (!evcon || !(bev = evhttp_connection_get_bufferevent(evcon)))
		return NULL;
	fd = bufferevent_getfd(bev);
	if (fd < 0 || fd >= s->by_fd_cap)
		return NULL;
	return s->by_fd[fd];
}

/* The fd is set by evhttp after the bevcb returns, so the guard learns it on first input. */
static void guard_register_fd(struct guard *g)
{
	int one = 1;

	if (g->fd >= 0)
		return;
	g->fd = bufferevent_getfd(g->under);
	if (g->fd < 0 || g->fd >= g->srv->by_fd_cap)
		return;
	g->srv->by_fd[g->fd] = g;
	setsockopt(g->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void guard_arm_deadline(struct guard *g, int seconds)
{
	struct timeval tv = { seconds, 0 };
	event_add(g->deadline, &tv);
}

/* Ask evhttp to drop the connection; it frees the filter and with it this guard. Only
 * called from the guard's own event callbacks, never from inside evhttp. */
static void guard_close_now(struct guard *g)
{
	bufferevent_trigger_event(g->filter, BEV_EVENT_EOF | BEV_EVENT_READING, 0);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct guard *g = arg;
	(void)fd; (void)what;

	if (g->rejected) {
		guard_close_now(g);
		return;
	}
	if (g->in_request)
		return;
	log_debug("connection fd %d: request head not complete in time", g->fd);
	metrics_count_rejected(g->srv->gw, 408);
	guard_reject(g, 408, "request head not received in time");
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct guard *g = arg;
	(void)fd; (void)what;

	if (evbuffer_get_length(bufferevent_get_input(g->under)) > 0) {
		/* evhttp may free the connection inside; the reference keeps the filter whole
		 * until libevent is done touching it (see flush_cb) */
		bufferevent_incref(g->filter);
		bufferevent_trigger(g->under, EV_READ, BEV_TRIG_IGNORE_WATERMARKS);
		bufferevent_decref(g->filter);
	}
}

/* evhttp adds a reply to the filter's buffer first and enables writing only afterwards,
 * and enabling does not run the filter. So every addition schedules one pass of the output
 * step for later in this loop iteration, when writing is enabled. */
static void output_added_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct guard *g = arg;

	if (info->n_added > 0 && evbuffer_get_length(buf) > 0)
		event_active(g->flush, 0, 0);
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct guard *g = arg;
	(void)fd; (void)what;

	if (evbuffer_get_length(bufferevent_get_output(g->filter)) > 0) {
		/* evhttp may free the connection from the write callback this runs (reply done,
		 * Connection: close). libevent's filter code goes on to re-arm the filter's write
		 * timeout after that callback, which on a freed filter leaves a dangling timer in
		 * the event base. Holding a reference defers the free until we are done. */
		bufferevent_incref(g->filter);
		g->in_flush = true;
		bufferevent_trigger(g->under, EV_WRITE, BEV_TRIG_IGNORE_WATERMARKS);
		g->in_flush = false;
		bufferevent_decref(g->filter);
	}
}

static void writable_cb(evutil_socket_t fd, short what, void *arg)
{
	struct guard *g = arg;
	(void)fd; (void)what;

	/* Runs the filter's output step again, which writes what is left. */
	flush_cb(fd, what, g);
}

static void peer_closed_cb(evutil_socket_t fd, short what, void *arg)
{
	struct guard *g = arg;
	(void)fd; (void)what;

	/* The client hung up while its request was in flight. evhttp would only notice at the
	 * next write; freeing the connection runs the proxy's close callback now, which
	 * aborts the upstream transfer. */
	log_debug("connection fd %d: client closed during request", g->fd);
	if (g->evcon)
		evhttp_connection_free(g->evcon);
}

/* Once the rejection is on the wire, half-close so the client reads it and then EOF; the
 * deadline bounds how long we wait for the client to close its side. */
static void drain_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct guard *g = arg;

	guard_register_fd(g);
	if (info->n_deleted == 0 || evbuffer_get_length(buf) > 0 || g->fd < 0)
		return;
	shutdown(g->fd, SHUT_WR);
	evbuffer_remove_cb_entry(buf, g->drain_cb);
	g->drain_cb = NULL;
}

/* A request the guard refused still gets its audit row: who, when, what status. */
static void audit_rejection(struct guard *g, const char *id, int status, const char *code)
{
	struct gateway *gw = g->srv->gw;
	struct audit_record *rec;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	struct timespec now;
	char ip[INET6_ADDRSTRLEN] = "";

	if (!gw->audit)
		return;
	guard_register_fd(g);
	if (g->fd >= 0 && getpeername(g->fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET6)
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, ip, sizeof(ip));
		else
			inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof(ip));
	}
	clock_gettime(CLOCK_REALTIME, &now);
	rec = audit_record_new();
	rec->request_id = strdup(id);
	rec->started_at = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
	rec->client_ip = *ip ? strdup(ip) : NULL;
	rec->status = status;
	rec->latency_ms = 0;
	rec->error = strdup(code);
	control_publish_audit(gw->control, rec);
	audit_submit(gw->audit, rec);
}

static void guard_reject(struct guard *g, int status, const char *reason)
{
	char body[640], id[REQID_LEN + 1];
	const char *code = status == 413 ? "request_too_large"
	                 : status == 414 ? "uri_too_long"
	                 : status == 431 ? "headers_too_large"
	                 : status == 408 ? "request_timeout"
	                 : status == 503 ? "unavailable" : "bad_request";
	size_t len;

	if (g->rejected)
		return;
	g->rejected = true;
	reqid_next(id);
	audit_rejection(g, id, status, code);
	len = httperr_body(body, sizeof(body), status, code, reason);
	evbuffer_add_printf(bufferevent_get_output(g->under),
	                    "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
	                    "Content-Length: %zu\r\nConnection: close\r\nX-Request-Id: %s\r\n\r\n",
	                    status, httperr_reason(status), len, id);
	evbuffer_add(bufferevent_get_output(g->under), body, len);
	g->drain_cb = evbuffer_add_cb(bufferevent_get_output(g->under), drain_cb, g);
	bufferevent_enable(g->under, EV_WRITE);
	evbuffer_drain(bufferevent_get_input(g->under), evbuffer_get_length(bufferevent_get_input(g->under)));
	g->scan = 0;
	guard_arm_deadline(g, LINGER_SECONDS);
}

/* Input step: validate and pass at most one request to evhttp. */
static enum bufferevent_filter_result
guard_in(struct evbuffer *src, struct evbuffer *dst, ev_ssize_t limit,
         enum bufferevent_flush_mode mode, void *ctx)
{
	struct guard *g = ctx;
	struct http_server *s = g->srv;
	bool moved = false;
	(void)limit; (void)mode;

	guard_register_fd(g);
	if (g->rejected) {
		evbuffer_drain(src, evbuffer_get_length(src));
		return BEV_NEED_MORE;
	}
	while (!g->blocked && evbuffer_get_length(src) > g->scan) {
		enum reqcheck_result r;
		bool in_head = g->rc.state == RC_REQUEST_LINE || g->rc.state == RC_HEADERS;

		if (g->rc.state == RC_REQUEST_LINE && g->scan == 0 && g->rc.head_len == 0 &&
		    !evtimer_pending(g->deadline, NULL))
			guard_arm_deadline(g, s->gw->cfg->header_timeout);

		if (reqcheck_wants_line(&g->rc)) {
			struct evbuffer_ptr p;
			size_t eol_len = 0, len, linelimit = reqcheck_line_limit(&g->rc);

			evbuffer_ptr_set(src, &p, g->scan, EVBUFFER_PTR_SET);
			p = evbuffer_search_eol(src, &p, &eol_len, EVBUFFER_EOL_LF);
			if (p.pos < 0) {
				if (evbuffer_get_length(src) - g->scan > linelimit + 1)
					r = reqcheck_line_too_long(&g->rc);
				else
					break; /* wait for the rest of the line */
			} else {
				len = (size_t)p.pos - g->scan + 1;
				if (len > linelimit + 2 || len > sizeof(s->line)) {
					r = reqcheck_line_too_long(&g->rc);
				} else {
					evbuffer_ptr_set(src, &p, g->scan, EVBUFFER_PTR_SET);
					evbuffer_copyout_from(src, &p, s->line, len);
					r = reqcheck_line(&g->rc, s->line, len);
					g->scan += len;
				}
			}
			if (r == RC_REJECT) {
				metrics_count_rejected(s->gw, g->rc.status);
				guard_reject(g, g->rc.status, g->rc.reason);
				return moved ? BEV_OK : BEV_NEED_MORE;
			}
			/* A head is held until complete; body lines (chunk sizes) pass at once. */
			if (!in_head || r == RC_HEAD_DONE || r == RC_REQUEST_DONE) {
				evbuffer_remove_buffer(src, dst, g->scan);
				g->scan = 0;
				moved = true;
				if (in_head)
					event_del(g->deadline);
			}
		} else {
			uint64_t want = reqcheck_data_wanted(&g->rc);
			size_t have = evbuffer_get_length(src);
			size_t n = have < want ? have : (size_t)want;

			evbuffer_remove_buffer(src, dst, n);
			moved = true;
			r = reqcheck_data(&g->rc, n);
		}
		if (r == RC_REQUEST_DONE)
			g->blocked = true;
	}
	return moved ? BEV_OK : BEV_NEED_MORE;
}

/* Output step: write directly to the socket. What the kernel does not take stays in the
 * filter's buffer, so evhttp's "reply written" callbacks fire only once bytes are out.
 * It writes only from flush_cb, never inside the evbuffer_add that queued the bytes:
 * evhttp sets its "written" callback after adding, so a write that completed inside the
 * add would fire the previous callback and lose the new one. */
static enum bufferevent_filter_result
guard_out(struct evbuffer *src, struct evbuffer *dst, ev_ssize_t limit,
          enum bufferevent_flush_mode mode, void *ctx)
{
	struct guard *g = ctx;
	(void)dst; (void)limit; (void)mode;

	guard_register_fd(g);
	if (g->dead || g->rejected || g->fd < 0) {
		evbuffer_drain(src, evbuffer_get_length(src));
		return BEV_OK;
	}
	if (!g->in_flush) {
		event_active(g->flush, 0, 0);
		return BEV_NEED_MORE;
	}
	while (evbuffer_get_length(src) > 0) {
		int n = evbuffer_write(src, g->fd);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
				break;
			/* The peer is gone. Tell evhttp later, not from inside its own write. */
			g->dead = true;
			evbuffer_drain(src, evbuffer_get_length(src));
			bufferevent_trigger_event(g->filter, BEV_EVENT_ERROR | BEV_EVENT_WRITING,
			                          BEV_TRIG_DEFER_CALLBACKS);
			return BEV_OK;
		}
	}
	if (evbuffer_get_length(src) > 0) {
		event_add(g->writable, NULL);
		return BEV_NEED_MORE;
	}
	return BEV_OK;
}

static void guard_free(void *ctx)
{
	struct guard *g = ctx;
	struct http_server *s = g->srv;

	if (g->fd >= 0 && g->fd < s->by_fd_cap && s->by_fd[g->fd] == g)
		s->by_fd[g->fd] = NULL;
	if (g->drain_cb)
		evbuffer_remove_cb_entry(bufferevent_get_output(g->under), g->drain_cb);
	event_free(g->deadline);
	event_free(g->kick);
	event_free(g->flush);
	if (g->writable)
		event_free(g->writable);
	if (g->peer_closed)
		event_free(g->peer_closed);
	LIST_REMOVE(g, link);
	s->n_conns--;
	free(g);
}

static struct bufferevent *guard_new(struct event_base *base, void *arg)
{
	struct http_server *s = arg;
	struct guard *g = calloc(1, sizeof(*g));

	if (!g)
		return NULL;
	g->srv = s;
	g->fd = -1;
	reqcheck_init(&g->rc, s->gw->cfg->max_headers, s->gw->cfg->max_body);
	g->under = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	g->deadline = evtimer_new(base, deadline_cb, g);
	g->kick = event_new(base, -1, 0, kick_cb, g);
	g->flush = event_new(base, -1, 0, flush_cb, g);
	if (!g->under || !g->deadline || !g->kick || !g->flush)
		goto err;
	/* Bound what one connection can make us buffer before we look at it. */
	bufferevent_setwatermark(g->under, EV_READ, 0, s->gw->cfg->max_headers + 65536);
	g->filter = bufferevent_filter_new(g->under, guard_in, guard_out, BEV_OPT_CLOSE_ON_FREE,
	                                   guard_free, g);
	if (!g->filter)
		goto err;
	/* From here on the filter owns `under` and frees the guard. */
	evbuffer_add_cb(bufferevent_get_output(g->filter), output_added_cb, g);
	LIST_INSERT_HEAD(&s->guards, g, link);
	s->n_conns++;
	if (s->n_conns > s->gw->cfg->max_connections || s->gw->stopping) {
		metrics_count_rejected(s->gw, 503);
		guard_reject(g, 503, s->gw->stopping ? "gateway is shutting down"
		                                       : "too many open connections");
	}
	return g->filter;
err:
	if (g->under)
		bufferevent_free(g->under);
	if (g->deadline)
		event_free(g->deadline);
	if (g->kick)
		event_free(g->kick);
	if (g->flush)
		event_free(g->flush);
	free(g);
	return NULL;
}

/* The fd of a new guard is unknown in guard_new, so the write and close watchers are made
 * when the first request arrives (the fd is set by then). */
static int guard_ready_for_request(struct guard *g, struct evhttp_request *req)
{
	struct event_base *base = g->srv->gw->base;

	guard_register_fd(g);
	if (!g->evcon) {
		g->evcon = evhttp_request_get_connection(req);
		evhttp_connection_set_closecb(g->evcon, conn_closed_cb, g);
	}
	if (!g->writable) {
		g->writable = event_new(base, g->fd, EV_WRITE, writable_cb, g);
		g->peer_closed = event_new(base, g->fd, EV_CLOSED, peer_closed_cb, g);
		if (!g->writable || !g->peer_closed)
			return -1;
	}
	g->in_request = true;
	event_add(g->peer_closed, NULL);
	return 0;
}

/* evhttp is freeing the connection. The guard itself is freed a little later (libevent
 * finalizes the filter from the loop), so from here on nothing may touch the connection:
 * stop every guard event and tell the request's owner. */
static void conn_closed_cb(struct evhttp_connection *evcon, void *arg)
{
	struct guard *g = arg;
	void (*fn)(void *) = g->gone_fn;
	(void)evcon;

	g->evcon = NULL;
	g->dead = true;
	g->gone_fn = NULL;
	event_del(g->deadline);
	event_del(g->kick);
	event_del(g->flush);
	if (g->writable)
		event_del(g->writable);
	if (g->peer_closed)
		event_del(g->peer_closed);
	if (fn)
		fn(g->gone_arg);
}

void http_watch_client(struct http_server *s, struct evhttp_request *req,
                       void (*gone)(void *), void *arg)
{
	struct guard *g = req ? guard_of(s, req) : NULL;

	if (g) {
		g->gone_fn = gone;
		g->gone_arg = arg;
	}
}

static void request_complete_cb(struct evhttp_request *req, void *arg)
{
	struct guard *g = arg;
	(void)req;

	log_debug("connection fd %d: reply complete", g->fd);
	g->in_request = false;
	g->blocked = false;
	if (g->peer_closed)
		event_del(g->peer_closed);
	/* evhttp re-enables reading after this returns; pick up pipelined bytes then. */
	event_active(g->kick, 0, 0);
}

void http_send_error(struct evhttp_request *req, int status, const char *code, const char *message)
{
	char body[640];
	size_t len = httperr_body(body, sizeof(body), status, code, message);
	struct evbuffer *buf = evbuffer_new();
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);

	evhttp_remove_header(h, "Content-Type");
	evhttp_add_header(h, "Content-Type", "application/json");
	if (buf)
		evbuffer_add(buf, body, len);
	evhttp_send_reply(req, status, httperr_reason(status), buf);
	if (buf)
		evbuffer_free(buf);
}

void http_client_ip(struct evhttp_request *req, char *out, size_t cap)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	const char *addr = NULL;
	ev_uint16_t port = 0;

	if (evcon)
		evhttp_connection_get_peer(evcon, (char **)&addr, &port);
	size_t n = addr ? strnlen(addr, cap - 1) : 0;

	if (cap == 0)
		return;
	memcpy(out, addr ? addr : "", n);
	out[n] = '\0';
}

void http_flush_now(struct http_server *s, struct evhttp_request *req)
{
	struct guard *g = guard_of(s, req);
	struct evbuffer *out;

	if (!g || g->dead || g->rejected || g->fd < 0)
		return;
	out = bufferevent_get_output(g->filter);
	while (evbuffer_get_length(out) > 0 && evbuffer_write(out, g->fd) > 0)
		;
}

size_t http_client_backlog(struct evhttp_request *req)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;

	return bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}

static bool is_loopback(const char *ip)
{
	return strncmp(ip, "127.", 4) == 0 || strcmp(ip, "::1") == 0 ||
	       strncmp(ip, "::ffff:127.", 11) == 0;
}

static void dispatch_cb(struct evhttp_request *req, void *arg)
{
	struct http_server *s = arg;
	struct guard *g = guard_of(s, req);

	const char *uri = evhttp_request_get_uri(req);
	char id[REQID_LEN + 1];

	reqid_next(id);
	evhttp_add_header(evhttp_request_get_output_headers(req), "X-Request-Id", id);
	if (!g || guard_ready_for_request(g, req) < 0) {
		http_send_error(req, 500, "internal_error", "connection state lost");
		return;
	}
	evhttp_request_set_on_complete_cb(req, request_complete_cb, g);
	if (evhttp_request_get_command(req) == EVHTTP_REQ_GET && uri) {
		if (strcmp(uri, "/health") == 0) {
			struct evbuffer *b = evbuffer_new();
			evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			                  "application/json");
			evbuffer_add_printf(b, "{\"status\":\"%s\"}\n",
			                    s->gw->stopping ? "stopping" : "ok");
			evhttp_send_reply(req, s->gw->stopping ? 503 : 200,
			                  s->gw->stopping ? "Service Unavailable" : "OK", b);
			evbuffer_free(b);
			return;
		}
		if (strcmp(uri, "/metrics") == 0) {
			char ip[64];
			http_client_ip(req, ip, sizeof(ip));
			if (!s->gw->cfg->metrics_public && !is_loopback(ip)) {
				http_send_error(req, 403, "forbidden", "/metrics is served to loopback clients only");
				return;
			}
			metrics_serve(s->gw, req);
			return;
		}
	}
	proxy_handle(s->gw, req, id);
}

/* Raise the soft fd limit so max_connections is reachable, and size the fd index. */
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

struct http_server *http_server_start(struct gateway *gw, char **err)
{
	struct http_server *s = calloc(1, sizeof(*s));
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[256], addr[INET6_ADDRSTRLEN];
	int port, fd, max_conns;

	*err = NULL;
	if (!s) {
		*err = strdup("out of memory");
		return NULL;
	}
	s->gw = gw;
	LIST_INIT(&s->guards);
	if (parse_listen(gw->cfg->listen, host, sizeof(host), &port) < 0) {
		if (asprintf(err, "invalid listen address '%s' (expected ADDR:PORT)", gw->cfg->listen) < 0)
			*err = NULL;
		goto err;
	}
	s->by_fd_cap = fd_capacity();
	max_conns = s->by_fd_cap - 64;
	if (gw->cfg->max_connections > max_conns) {
		log_warn("max_connections %d exceeds what the fd limit allows; using %d",
		         gw->cfg->max_connections, max_conns);
		gw->cfg->max_connections = max_conns;
	}
	s->by_fd = calloc((size_t)s->by_fd_cap, sizeof(*s->by_fd));
	s->evhttp = evhttp_new(gw->base);
	if (!s->by_fd || !s->evhttp) {
		*err = strdup("out of memory");
		goto err;
	}
	evhttp_set_bevcb(s->evhttp, guard_new, s);
	evhttp_set_gencb(s->evhttp, dispatch_cb, s);
	evhttp_set_default_content_type(s->evhttp, NULL);
	evhttp_set_allowed_methods(s->evhttp, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
	                           EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
	                           EVHTTP_REQ_PATCH);
	/* The guard enforces the real limits with the right status codes; these are backstops. */
	evhttp_set_max_headers_size(s->evhttp, (ev_ssize_t)gw->cfg->max_headers + 4096);
	evhttp_set_max_body_size(s->evhttp, (ev_ssize_t)gw->cfg->max_body + 1);
	evhttp_set_timeout(s->evhttp, gw->cfg->idle_timeout);
	s->bound = evhttp_bind_socket_with_handle(s->evhttp, host, (ev_uint16_t)port);
	if (!s->bound) {
		if (asprintf(err, "cannot listen on %s: %s", gw->cfg->listen, strerror(errno)) < 0)
			*err = NULL;
		goto err;
	}
	fd = evhttp_bound_socket_get_fd(s->bound);
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
			inet_ntop(AF_INET6, &a6->sin6_addr, addr, sizeof(addr));
			snprintf(gw->listen_addr, sizeof(gw->listen_addr), "[%s]:%d", addr, ntohs(a6->sin6_port));
		} else {
			struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
			inet_ntop(AF_INET, &a4->sin_addr, addr, sizeof(addr));
			snprintf(gw->listen_addr, sizeof(gw->listen_addr), "%s:%d", addr, ntohs(a4->sin_port));
		}
	}
	return s;
err:
	http_server_free(s);
	return NULL;
}

void http_server_stop_accepting(struct http_server *s)
{
	struct guard *g, *next;

	if (s->bound) {
		evhttp_del_accept_socket(s->evhttp, s->bound);
		s->bound = NULL;
	}
	/* Idle keep-alive connections would otherwise hold the drain open. */
	for (g = LIST_FIRST(&s->guards); g; g = next) {
		next = LIST_NEXT(g, link);
		if (!g->in_request && !g->rejected)
			guard_close_now(g);
	}
}

int http_server_connections(const struct http_server *s)
{
	return s->n_conns;
}

void http_server_free(struct http_server *s)
{
	if (!s)
		return;
	if (s->evhttp) {
		/* Frees every connection. Their guards are finalized by libevent from the loop
		 * and still use this struct, and proxied requests finish from deferred events:
		 * let the loop run those before the struct goes. */
		evhttp_free(s->evhttp);
		for (int i = 0; i < 4 && !LIST_EMPTY(&s->guards); i++)
			event_base_loop(s->gw->base, EVLOOP_NONBLOCK);
		event_base_loop(s->gw->base, EVLOOP_NONBLOCK);
	}
	free(s->by_fd);
	free(s);
}
