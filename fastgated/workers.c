/* Event-loop threads: see workers.h. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <event2/event.h>

#include "audit.h"
#include "gateway.h"
#include "http.h"
#include "log.h"
#include "util.h"
#include "workers.h"

/* What a loop's inbox can ask of it. */
enum {
	WK_PAUSE = 1,    /* park until loop 0 lets the loops go */
	WK_STOP = 2,     /* stop accepting (SIGTERM) */
	WK_EXIT = 4,     /* leave the event loop */
};

struct worker {
	struct workers *ws;
	struct gateway gw;
	pthread_t thread;
	bool running;            /* the thread was started and not joined */
	int efd;                 /* the inbox's doorbell */
	struct event *inbox_ev;
	unsigned cmds;           /* under ws->mu */
	bool gone;               /* under ws->mu: left its event loop, parks no more */
	/* finished requests for loop 0's tail, under pub_mu */
	pthread_mutex_t pub_mu;
	struct audit_record **pub;
	size_t pub_n, pub_cap;
};

struct workers {
	unsigned n;                      /* loops, loop 0 included */
	struct gateway **all;            /* all[0] is loop 0's */
	struct worker *w;                /* loops 1..n-1: w[i - 1] */

	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool holding;                    /* under mu: loop 0 has the loops paused */
	unsigned parked;                 /* under mu: loops waiting in park() */
	unsigned depth;                  /* loop 0 only: gateway_pause nesting */

	/* loop 0's doorbell for published records */
	int pub_efd;
	struct event *pub_ev;
	void (*on_publish)(void *arg, struct audit_record *rec);
	void *publish_arg;
};

struct event_base *workers_make_base(void)
{
	struct event_config *ec = event_config_new();
	struct event_base *base = NULL;

	/* EV_CLOSED lets us see a client hang up while its request is in flight. */
	if (ec) {
		event_config_require_features(ec, EV_FEATURE_EARLY_CLOSE);
		/* curl changes its interest in a socket several times per transfer; the
		 * changelist folds each loop turn's changes into one epoll_ctl per fd */
		event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
		base = event_base_new_with_config(ec);
		event_config_free(ec);
	}
	if (!base) {
		log_warn("event backend without early-close detection; hang-ups are seen at the next write");
		base = event_base_new();
	}
	return base;
}

static void ring(int fd)
{
	uint64_t one = 1;

	/* EAGAIN only when the counter is near overflow: it is rung already */
	if (write(fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("workers: cannot wake a loop: %s", strerror(errno));
}

static void drain_bell(int fd)
{
	uint64_t v;

	if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		log_warn("workers: eventfd read: %s", strerror(errno));
}

/* ---- pausing ---------------------------------------------------------------------- */

static unsigned live(const struct workers *ws)
{
	unsigned n = 0;

	for (unsigned i = 0; i + 1 < ws->n; i++)
		n += ws->w[i].running && !ws->w[i].gone;
	return n;
}

/* Ask every running loop to do cmd (WK_*) at its next turn; under ws->mu. */
static void post_locked(struct workers *ws, unsigned cmd)
{
	for (unsigned i = 0; i + 1 < ws->n; i++) {
		struct worker *w = &ws->w[i];

		if (w->running && !w->gone) {
			w->cmds |= cmd;
			ring(w->efd);
		}
	}
}

/* gw->pause on loop 0. */
static void pause_hook(void *arg, bool stop)
{
	struct workers *ws = arg;

	if (stop) {
		if (ws->depth++ > 0)
			return;
		pthread_mutex_lock(&ws->mu);
		ws->holding = true;
		post_locked(ws, WK_PAUSE);
		while (ws->parked < live(ws))
			pthread_cond_wait(&ws->cv, &ws->mu);
		pthread_mutex_unlock(&ws->mu);
		return;
	}
	if (ws->depth == 0 || --ws->depth > 0)
		return;
	pthread_mutex_lock(&ws->mu);
	ws->holding = false;
	pthread_cond_broadcast(&ws->cv);
	pthread_mutex_unlock(&ws->mu);
}

/* A loop's side of a pause, between two of its events; under ws->mu. */
static void park(struct workers *ws)
{
	ws->parked++;
	pthread_cond_broadcast(&ws->cv);
	while (ws->holding)
		pthread_cond_wait(&ws->cv, &ws->mu);
	ws->parked--;
}

static void inbox_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	struct workers *ws = w->ws;
	unsigned cmds;
	(void)what;

	drain_bell(fd);
	pthread_mutex_lock(&ws->mu);
	cmds = w->cmds;
	w->cmds = 0;
	if (cmds & WK_PAUSE)
		park(ws);
	pthread_mutex_unlock(&ws->mu);
	if (cmds & WK_STOP) {
		w->gw.stopping = true;
		http_server_stop_accepting(w->gw.http);
	}
	if (cmds & WK_EXIT)
		event_base_loopexit(w->gw.base, NULL);
}

static void post(struct workers *ws, unsigned cmd)
{
	pthread_mutex_lock(&ws->mu);
	post_locked(ws, cmd);
	pthread_mutex_unlock(&ws->mu);
}

/* ---- the live tail ---------------------------------------------------------------- */

void workers_publish(struct workers *ws, unsigned i, struct audit_record *rec)
{
	struct worker *w = &ws->w[i - 1];
	bool first;

	pthread_mutex_lock(&w->pub_mu);
	if (w->pub_n == w->pub_cap) {
		size_t cap = w->pub_cap ? w->pub_cap * 2 : 64;
		struct audit_record **p = realloc(w->pub, cap * sizeof(*p));

		if (!p) {   /* the tail misses one; the audit trail has it */
			pthread_mutex_unlock(&w->pub_mu);
			audit_record_free(rec);
			return;
		}
		w->pub = p;
		w->pub_cap = cap;
	}
	w->pub[w->pub_n++] = rec;
	first = w->pub_n == 1;
	pthread_mutex_unlock(&w->pub_mu);
	/* rung only when the list was empty: under load loop 0 takes many at a time */
	if (first)
		ring(ws->pub_efd);
}

static void publish_cb(evutil_socket_t fd, short what, void *arg)
{
	struct workers *ws = arg;
	(void)what;

	if (fd >= 0)
		drain_bell(fd);
	for (unsigned i = 0; i + 1 < ws->n; i++) {
		struct worker *w = &ws->w[i];
		struct audit_record **p;
		size_t n;

		pthread_mutex_lock(&w->pub_mu);
		p = w->pub;
		n = w->pub_n;
		w->pub = NULL;
		w->pub_n = w->pub_cap = 0;
		pthread_mutex_unlock(&w->pub_mu);
		for (size_t k = 0; k < n; k++) {
			if (ws->on_publish)
				ws->on_publish(ws->publish_arg, p[k]);
			audit_record_free(p[k]);
		}
		free(p);
	}
}

void workers_on_publish(struct workers *ws, void (*fn)(void *arg, struct audit_record *rec),
                        void *arg)
{
	ws->on_publish = fn;
	ws->publish_arg = arg;
}

/* ---- life ------------------------------------------------------------------------- */

struct workers *workers_new(struct gateway *gw0, unsigned n, char **err)
{
	struct workers *ws = calloc(1, sizeof(*ws));

	if (!ws || !(ws->all = calloc(n, sizeof(*ws->all))) ||
	    !(ws->w = calloc(n - 1, sizeof(*ws->w)))) {
		if (ws)
			free(ws->all);
		free(ws);
		*err = strdup("out of memory");
		return NULL;
	}
	ws->n = n;
	ws->pub_efd = -1;
	pthread_mutex_init(&ws->mu, NULL);
	pthread_cond_init(&ws->cv, NULL);
	ws->all[0] = gw0;
	for (unsigned i = 1; i < n; i++) {
		struct worker *w = &ws->w[i - 1];
		struct gateway *g = &w->gw;

		w->ws = ws;
		w->efd = -1;
		pthread_mutex_init(&w->pub_mu, NULL);
		/* what every loop shares; the rest is this loop's, made by main.c */
		g->cfg = gw0->cfg;
		g->keys = gw0->keys;
		g->models = gw0->models;
		g->prices = gw0->prices;
		g->audit = gw0->audit;
		g->authfail = gw0->authfail;
		g->started = gw0->started;
		g->reload = NULL;
		g->loop = i;
		ws->all[i] = g;
	}
	for (unsigned i = 0; i < n; i++) {
		ws->all[i]->n_loops = n;
		ws->all[i]->all = ws->all;
		ws->all[i]->workers = ws;
	}
	gw0->pause = pause_hook;
	gw0->pause_arg = ws;
	return ws;
}

struct gateway *workers_loop(struct workers *ws, unsigned i)
{
	return ws->all[i];
}

static void *loop_main(void *arg)
{
	struct worker *w = arg;
	char name[16];

	/* visible in ps -L and top -H */
	snprintf(name, sizeof(name), "fg-loop-%u", w->gw.loop);
	pthread_setname_np(pthread_self(), name);
	event_base_dispatch(w->gw.base);
	pthread_mutex_lock(&w->ws->mu);
	w->gone = true;
	pthread_cond_broadcast(&w->ws->cv);
	pthread_mutex_unlock(&w->ws->mu);
	return NULL;
}

int workers_start(struct workers *ws, char **err)
{
	struct gateway *gw0 = ws->all[0];

	ws->pub_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (ws->pub_efd < 0 ||
	    !(ws->pub_ev = event_new(gw0->base, ws->pub_efd, EV_READ | EV_PERSIST, publish_cb, ws)) ||
	    event_add(ws->pub_ev, NULL) < 0)
		goto fail;
	for (unsigned i = 0; i + 1 < ws->n; i++) {
		struct worker *w = &ws->w[i];

		w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (w->efd < 0 ||
		    !(w->inbox_ev = event_new(w->gw.base, w->efd, EV_READ | EV_PERSIST, inbox_cb, w)) ||
		    event_add(w->inbox_ev, NULL) < 0)
			goto fail;
		if ((errno = pthread_create(&w->thread, NULL, loop_main, w)) != 0)
			goto fail;
		w->running = true;
	}
	return 0;
fail:
	if (asprintf(err, "cannot start the event-loop threads: %s", strerror(errno)) < 0)
		*err = NULL;
	workers_join(ws);
	return -1;
}

void workers_stop_accepting(struct workers *ws)
{
	if (ws)
		post(ws, WK_STOP);
}

void workers_join(struct workers *ws)
{
	if (!ws)
		return;
	post(ws, WK_EXIT);
	for (unsigned i = 0; i + 1 < ws->n; i++) {
		struct worker *w = &ws->w[i];

		if (w->running)
			pthread_join(w->thread, NULL);
		w->running = false;
		/* before the caller frees the loop's base */
		if (w->inbox_ev)
			event_free(w->inbox_ev);
		w->inbox_ev = NULL;
	}
	/* the last records the loops handed over, to the tail's ring as any other */
	publish_cb(-1, 0, ws);
	if (ws->pub_ev)
		event_free(ws->pub_ev);
	ws->pub_ev = NULL;
}

void workers_free(struct workers *ws)
{
	if (!ws)
		return;
	for (unsigned i = 0; i + 1 < ws->n; i++) {
		struct worker *w = &ws->w[i];

		if (w->efd >= 0)
			close(w->efd);
		for (size_t k = 0; k < w->pub_n; k++)
			audit_record_free(w->pub[k]);
		free(w->pub);
		pthread_mutex_destroy(&w->pub_mu);
	}
	if (ws->pub_efd >= 0)
		close(ws->pub_efd);
	pthread_cond_destroy(&ws->cv);
	pthread_mutex_destroy(&ws->mu);
	free(ws->w);
	free(ws->all);
	free(ws);
}
