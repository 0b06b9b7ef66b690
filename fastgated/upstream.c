/* libcurl multi_socket driven by libevent; see upstream.h. */
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>

#include "log.h"
#include "upstream.h"

#define EASY_POOL_MAX 256

struct sock_ctx {
	struct event *ev;
	struct upstream *u;
};

struct upstream {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	int running;
	CURL *pool[EASY_POOL_MAX];
	int n_pool;
};

/* Collect finished transfers. Runs after curl_multi_socket_action has returned, so removing
 * handles and running the caller's completion here is allowed. */
static void check_multi_info(struct upstream *u)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(u->multi, &left))) {
		struct upstream_xfer *x = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
		CURLcode result = msg->data.result;
		curl_multi_remove_handle(u->multi, msg->easy_handle);
		if (x) {
			x->active = 0;
			x->done(x, result);
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

struct upstream *upstream_new(struct event_base *base, char **err)
{
	struct upstream *u = calloc(1, sizeof(*u));

	*err = NULL;
	if (!u || !(u->multi = curl_multi_init()) || !(u->timer = evtimer_new(base, timer_event_cb, u))) {
		*err = strdup("cannot initialise libcurl");
		upstream_free(u);
		return NULL;
	}
	u->base = base;
	curl_multi_setopt(u->multi, CURLMOPT_SOCKETFUNCTION, socket_function);
	curl_multi_setopt(u->multi, CURLMOPT_SOCKETDATA, u);
	curl_multi_setopt(u->multi, CURLMOPT_TIMERFUNCTION, timer_function);
	curl_multi_setopt(u->multi, CURLMOPT_TIMERDATA, u);
	/* Enough idle upstream connections for a busy gateway to reuse rather than reconnect. */
	curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, 512L);
	return u;
}

void upstream_free(struct upstream *u)
{
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

CURL *upstream_easy_get(struct upstream *u)
{
	if (u->n_pool > 0)
		return u->pool[--u->n_pool];
	return curl_easy_init();
}

void upstream_easy_put(struct upstream *u, CURL *easy)
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

int upstream_start(struct upstream *u, struct upstream_xfer *x)
{
	curl_easy_setopt(x->easy, CURLOPT_PRIVATE, (char *)x);
	if (curl_multi_add_handle(u->multi, x->easy) != CURLM_OK)
		return -1;
	x->active = 1;
	return 0;
}

void upstream_cancel(struct upstream *u, struct upstream_xfer *x)
{
	if (!x->active)
		return;
	curl_multi_remove_handle(u->multi, x->easy);
	x->active = 0;
}

int upstream_running(const struct upstream *u)
{
	return u->running;
}
