/* The https:// transport; see transport_curl.h. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <curl/curl.h>
#include <event2/event.h>

#include "log.h"
#include "transport_curl.h"

#define EASY_POOL_MAX 256

struct sock_ctx {
	struct event *ev;
	struct upstream *u;
};

struct upstream {
	struct transport t;               /* first: the transport.h view of this */
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	int running;
	CURL *pool[EASY_POOL_MAX];
	int n_pool;
};

/* One transfer's curl side: the handle and what it must keep alive until done. */
struct curl_xfer {
	struct upstream *u;
	struct tr_xfer *x;
	CURL *easy;
	struct curl_slist *headers;
	char *url;
	size_t read_off;              /* body bytes handed to curl by read_cb */
	bool bad_answer;              /* a header line we refused: a protocol error */
};

static enum tr_result as_result(CURLcode rc)
{
	switch (rc) {
	case CURLE_OK:                      return TR_OK;
	case CURLE_COULDNT_CONNECT:         return TR_CONNECT;
	case CURLE_COULDNT_RESOLVE_HOST:    return TR_RESOLVE;
	case CURLE_OPERATION_TIMEDOUT:      return TR_TIMEOUT;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:      return TR_TLS;
	case CURLE_WEIRD_SERVER_REPLY:
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_BAD_CONTENT_ENCODING:    return TR_PROTOCOL;
	case CURLE_WRITE_ERROR:             return TR_ABORTED;
	case CURLE_OUT_OF_MEMORY:           return TR_NOMEM;
	default:                            return TR_RESET;
	}
}

static void easy_put(struct upstream *u, CURL *easy)
{
	if (!easy)
		return;
	if (u->n_pool < EASY_POOL_MAX) {
		curl_easy_reset(easy);
		u->pool[u->n_pool++] = easy;
	} else {
		curl_easy_cleanup(easy);
	}
}

static void cx_free(struct curl_xfer *cx)
{
	easy_put(cx->u, cx->easy);
	curl_slist_free_all(cx->headers);
	free(cx->url);
	free(cx);
}

/* Collect finished transfers. Runs after curl_multi_socket_action has returned, so removing
 * handles and running the caller's completion here is allowed. */
static void check_multi_info(struct upstream *u)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(u->multi, &left))) {
		struct curl_xfer *cx = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&cx);
		CURLcode result = msg->data.result;
		curl_multi_remove_handle(u->multi, msg->easy_handle);
		if (cx) {
			struct tr_xfer *x = cx->x;

			enum tr_result r = cx->bad_answer ? TR_PROTOCOL : as_result(result);

			if (result != CURLE_OK)
				log_debug("upstream %s: %s", x->rq.origin, curl_easy_strerror(result));
			cx_free(cx);
			x->impl = NULL;
			x->active = false;
			x->paused = false;
			x->cb->done(x->arg, r);
		}
	}
}

static void socket_event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct upstream *u = arg;
	int action = ((what & EV_READ) ? CURL_CSELECT_IN : 0) |
	             ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);

	curl_multi_socket_action(u->multi, fd, action, &u->running);
	check_multi_info(u);
	if (u->running <= 0)
		evtimer_del(u->timer);
}

static void timer_event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct upstream *u = arg;
	(void)fd; (void)what;

	curl_multi_socket_action(u->multi, CURL_SOCKET_TIMEOUT, 0, &u->running);
	check_multi_info(u);
}

/* CURLMOPT_TIMERFUNCTION: only (re)arm the one timer. */
static int timer_function(CURLM *multi, long timeout_ms, void *arg)
{
	struct upstream *u = arg;
	(void)multi;

	if (timeout_ms < 0) {
		evtimer_del(u->timer);
	} else {
		struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
		evtimer_add(u->timer, &tv);
	}
	return 0;
}

/* CURLMOPT_SOCKETFUNCTION: mirror curl's interest in a socket with one persistent event. */
static int socket_function(CURL *easy, curl_socket_t s, int what, void *arg, void *sockp)
{
	struct upstream *u = arg;
	struct sock_ctx *sc = sockp;
	short kind;
	(void)easy;

	if (what == CURL_POLL_REMOVE) {
		if (sc) {
			event_free(sc->ev);
			free(sc);
			curl_multi_assign(u->multi, s, NULL);
		}
		return 0;
	}
	kind = (short)(((what & CURL_POLL_IN) ? EV_READ : 0) |
	               ((what & CURL_POLL_OUT) ? EV_WRITE : 0) | EV_PERSIST);
	if (!sc) {
		sc = calloc(1, sizeof(*sc));
		if (!sc)
			return -1;
		sc->u = u;
		sc->ev = event_new(u->base, s, kind, socket_event_cb, u);
		if (!sc->ev) {
			free(sc);
			return -1;
		}
		curl_multi_assign(u->multi, s, sc);
	} else {
		/* same socket, new interest: re-assign the event in place, no allocation */
		event_del(sc->ev);
		event_assign(sc->ev, u->base, s, kind, socket_event_cb, u);
	}
	event_add(sc->ev, NULL);
	return 0;
}

static const struct transport_ops curl_ops;

int transport_curl_global_init(void)
{
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

void transport_curl_global_cleanup(void)
{
	curl_global_cleanup();
}

struct transport *transport_curl_new(struct event_base *base, char **err)
{
	struct upstream *u = calloc(1, sizeof(*u));

	*err = NULL;
	if (!u || !(u->multi = curl_multi_init()) || !(u->timer = evtimer_new(base, timer_event_cb, u))) {
		*err = strdup("cannot initialise libcurl");
		transport_curl_free(u ? &u->t : NULL);
		return NULL;
	}
	u->t.ops = &curl_ops;
	u->base = base;
	curl_multi_setopt(u->multi, CURLMOPT_SOCKETFUNCTION, socket_function);
	curl_multi_setopt(u->multi, CURLMOPT_SOCKETDATA, u);
	curl_multi_setopt(u->multi, CURLMOPT_TIMERFUNCTION, timer_function);
	curl_multi_setopt(u->multi, CURLMOPT_TIMERDATA, u);
	/* until the gateway sets it (tr_set_idle_max): curl's cache is one for all origins */
	curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, 512L);
	return &u->t;
}

void transport_curl_free(struct transport *t)
{
	struct upstream *u = (struct upstream *)t;

	if (!u)
		return;
	for (int i = 0; i < u->n_pool; i++)
		curl_easy_cleanup(u->pool[i]);
	if (u->multi)
		curl_multi_cleanup(u->multi);
	if (u->timer)
		event_free(u->timer);
	free(u);
}


/* ---- one transfer: curl's callbacks hand the answer on as transport.h says ---------- */

static size_t header_cb(char *line, size_t size, size_t n, void *arg)
{
	struct tr_xfer *x = arg;
	struct curl_xfer *cx = x->impl;
	size_t len = size * n, vl = len;

	/* what the native parser refuses, refused here too: a NUL or a bare CR would cut or
	 * split the header on its way on (RFC 9110 5.5) */
	while (vl && (line[vl - 1] == '\n' || line[vl - 1] == '\r'))
		vl--;
	if (memchr(line, '\0', vl) || memchr(line, '\r', vl)) {
		cx->bad_answer = true;
		return 0;
	}
	return x->cb->line(x->arg, line, len) == 0 ? len : 0;
}

static size_t write_cb(char *data, size_t size, size_t n, void *arg)
{
	struct tr_xfer *x = arg;
	size_t len = size * n;
	int r = x->cb->body(x->arg, data, len);

	if (r > 0) {
		x->paused = true;
		return CURL_WRITEFUNC_PAUSE;
	}
	return r == 0 ? len : 0;
}

/* The body of a request that must not be sent twice: handed over by this callback with
 * no way back (seek_cb), so curl cannot replay it on another connection by itself. */
static size_t read_cb(char *buf, size_t size, size_t n, void *arg)
{
	struct curl_xfer *cx = arg;
	size_t left = cx->x->rq.body_len - cx->read_off, k = size * n;

	if (k > left)
		k = left;
	memcpy(buf, cx->x->rq.body + cx->read_off, k);
	cx->read_off += k;
	return k;
}

static int seek_cb(void *arg, curl_off_t offset, int origin)
{
	(void)arg; (void)offset; (void)origin;
	return CURL_SEEKFUNC_CANTSEEK;
}

/* The request line and headers of the head, as curl wants them: method and target apart,
 * one list entry per header. Host and Content-Length are curl's to write. */
static int take_head(struct curl_xfer *cx, char *method, size_t cap)
{
	const struct tr_request *rq = &cx->x->rq;
	const char *p = rq->head, *end = rq->head + rq->head_len;
	const char *sp1, *sp2, *eol = memchr(p, '\n', (size_t)(end - p));
	size_t ml, ol = strlen(rq->origin);

	if (!eol || !(sp1 = memchr(p, ' ', (size_t)(eol - p))) ||
	    !(sp2 = memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1))))
		return -1;
	ml = (size_t)(sp1 - p);
	if (ml >= cap || !(cx->url = malloc(ol + (size_t)(sp2 - sp1))))
		return -1;
	memcpy(method, p, ml);
	method[ml] = '\0';
	memcpy(cx->url, rq->origin, ol);
	memcpy(cx->url + ol, sp1 + 1, (size_t)(sp2 - sp1 - 1));
	cx->url[ol + (size_t)(sp2 - sp1 - 1)] = '\0';
	for (p = eol + 1; p < end; p = eol + 1) {
		char line[8192 + 256], *l = line;
		size_t n;
		struct curl_slist *sl;

		if (!(eol = memchr(p, '\n', (size_t)(end - p))))
			break;
		n = (size_t)(eol - p);
		if (n && p[n - 1] == '\r')
			n--;
		if (n == 0)
			break;                          /* the blank line */
		if ((n >= 5 && strncasecmp(p, "host:", 5) == 0) ||
		    (n >= 15 && strncasecmp(p, "content-length:", 15) == 0))
			continue;
		if (n >= sizeof(line) && !(l = malloc(n + 2)))
			return -1;
		memcpy(l, p, n);
		l[n] = '\0';
		/* "Name:" would make curl drop the header; "Name;" sends it with an empty value */
		{
			char *colon = memchr(l, ':', n);
			size_t v = colon ? (size_t)(colon - l) + 1 : n;

			while (v < n && (l[v] == ' ' || l[v] == '\t'))
				v++;
			if (colon && v == n) {
				colon[0] = ';';
				colon[1] = '\0';
			}
		}
		sl = curl_slist_append(cx->headers, l);
		if (l != line)
			free(l);
		if (!sl)
			return -1;
		cx->headers = sl;
	}
	/* no Expect: 100-continue on large bodies: the upstream gets the body at once */
	if (!(cx->headers = curl_slist_append(cx->headers, "Expect:")))
		return -1;
	return 0;
}

static int curl_start(struct transport *t, struct tr_xfer *x)
{
	struct upstream *u = (struct upstream *)t;
	const struct tr_request *rq = &x->rq;
	struct curl_xfer *cx = calloc(1, sizeof(*cx));
	char method[32];
	CURL *e;

	if (!cx)
		return -1;
	cx->u = u;
	cx->x = x;
	cx->easy = u->n_pool > 0 ? u->pool[--u->n_pool] : curl_easy_init();
	if (!cx->easy || take_head(cx, method, sizeof(method)) < 0)
		goto err;
	e = cx->easy;
	curl_easy_setopt(e, CURLOPT_URL, cx->url);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, cx->headers);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, (long)rq->connect_timeout);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)cx);
	/* behind an https_proxy from the environment, the proxy's CONNECT answer is not the
	 * upstream's head */
	curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
	if (rq->ca_file) {
		/* the route's CA bundle alone: not also the system's certificate directory */
		curl_easy_setopt(e, CURLOPT_CAINFO, rq->ca_file);
		curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
	}
	if (rq->head_request) {
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	} else if (rq->body_len > 0 || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
	           strcmp(method, "PATCH") == 0) {
		curl_easy_setopt(e, CURLOPT_POST, 1L);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->body_len);
		if (rq->replayable) {
			curl_easy_setopt(e, CURLOPT_POSTFIELDS, rq->body);
		} else {
			curl_easy_setopt(e, CURLOPT_READFUNCTION, read_cb);
			curl_easy_setopt(e, CURLOPT_READDATA, cx);
			curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, seek_cb);
			curl_easy_setopt(e, CURLOPT_SEEKDATA, cx);
		}
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
	} else if (strcmp(method, "GET") != 0) {
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
	}
	if (curl_multi_add_handle(u->multi, e) != CURLM_OK)
		goto err;
	x->impl = cx;
	x->active = true;
	x->paused = false;
	return 0;
err:
	cx_free(cx);
	return -1;
}

/* Never called from inside a curl callback: the caller defers it to a loop event. */
static void curl_resume(struct tr_xfer *x)
{
	struct curl_xfer *cx = x->impl;

	if (!x->paused)
		return;
	x->paused = false;
	curl_easy_pause(cx->easy, CURLPAUSE_CONT);
}

static void curl_cancel(struct tr_xfer *x)
{
	struct curl_xfer *cx = x->impl;

	curl_multi_remove_handle(cx->u->multi, cx->easy);
	cx_free(cx);
	x->impl = NULL;
	x->active = false;
	x->paused = false;
}

static void curl_set_idle_max(struct transport *t, unsigned n)
{
	curl_multi_setopt(((struct upstream *)t)->multi, CURLMOPT_MAXCONNECTS, (long)n);
}

static const struct transport_ops curl_ops = {
	.name = "curl", .start = curl_start, .resume = curl_resume, .cancel = curl_cancel,
	.set_idle_max = curl_set_idle_max,
};
