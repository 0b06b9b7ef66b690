/* Active health checks; see health.h. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>

#include "gateway.h"
#include "health.h"
#include "log.h"
#include "pool.h"
#include "transport.h"
#include "util.h"

/* One check under way. It holds the table its route belongs to, so that a reload during
 * the check frees nothing it uses; its verdict goes to the upstream's state. */
struct check {
	struct health *h;
	struct check *prev, *next;
	struct route_table *table;
	struct route *route;
	size_t target;
	struct tr_xfer x;
	struct event *timer;
	char *head;
	long status;
	bool timed_out;
};

#define TICK_MS       1000
#define TICK_SLACK_MS 100

struct health {
	struct gateway *gw;
	struct event *tick;
	struct check *checks;
};

static void check_free(struct check *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		c->h->checks = c->next;
	if (c->next)
		c->next->prev = c->prev;
	if (c->timer)
		event_free(c->timer);
	route_table_unref(c->table);
	free(c->head);
	free(c);
}

static void verdict(struct check *c, bool ok)
{
	struct route *r = c->route;
	struct target_state *s = r->targets[c->target].st;
	int64_t now = mono_ms();
	bool changed = false;

	if (!s)
		return;
	/* the breaker is shared with every loop's requests; the health fields are this loop's */
	target_state_lock(s);
	s->health_busy = false;
	if (ok) {
		s->health_fail_run = 0;
		if (++s->health_ok_run >= r->health.healthy) {
			if (s->health_checked && !s->health_ok)
				log_info("upstream %s/%zu (%s) is healthy again", r->name, c->target, s->url);
			s->health_checked = s->health_ok = true;
			/* every pass, not only the first: a Retry-After of the upstream's own may
			 * have held the breaker open at the last one */
			if (s->br.state != BREAKER_CLOSED)
				changed = breaker_health(&s->br, &r->breaker, now, true);
		}
	} else {
		s->health_ok_run = 0;
		if (++s->health_fail_run >= r->health.unhealthy) {
			if (!s->health_checked || s->health_ok)
				log_warn("upstream %s/%zu (%s) failed %d health checks in a row", r->name,
				         c->target, s->url, s->health_fail_run);
			s->health_checked = true;
			s->health_ok = false;
			changed = breaker_health(&s->br, &r->breaker, now, false);
		}
	}
	if (changed && (unsigned)s->br.state < 3)
		s->transitions[s->br.state]++;
	target_state_unlock(s);
}

static int on_line(void *arg, const char *line, size_t len)
{
	struct check *c = arg;

	/* "HTTP/1.1 200 OK": the last status line wins (1xx come first); three digits read
	 * within the line, which need not end in a NUL */
	if (len > 12 && memcmp(line, "HTTP/", 5) == 0) {
		const char *sp = memchr(line, ' ', len);

		const char *end = sp && line + len - sp > 4 ? sp + 4 : line + len;

		c->status = 0;
		for (const char *d = sp ? sp + 1 : end; d < end; d++) {
			if (*d < '0' || *d > '9') {
				c->status = 0;
				break;
			}
			c->status = c->status * 10 + (*d - '0');
		}
	}
	return 0;
}

static int on_body(void *arg, const char *data, size_t len)
{
	(void)arg; (void)data; (void)len;
	return 0;   /* read and dropped: only the status counts */
}

static void on_done(void *arg, enum tr_result r)
{
	struct check *c = arg;

	verdict(c, r == TR_OK && c->status >= 200 && c->status < 300);
	check_free(c);
}

static const struct tr_callbacks check_callbacks = { on_line, on_body, on_done };

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct check *c = arg;
	(void)fd; (void)what;

	tr_cancel(&c->x);
	verdict(c, false);
	check_free(c);
}

static void check_start(struct health *h, struct route_table *t, struct route *r, size_t i)
{
	const struct route_target *tg = &r->targets[i];
	struct check *c = calloc(1, sizeof(*c));
	struct timeval tv = { r->health.timeout_s, 0 };
	struct target_state *s = tg->st;

	if (!c)
		return;
	c->h = h;
	c->route = r;
	c->target = i;
	c->table = t;
	route_table_ref(t);
	c->next = h->checks;
	if (h->checks)
		h->checks->prev = c;
	h->checks = c;
	c->timer = evtimer_new(h->gw->base, timeout_cb, c);
	c->head = xasprintf("GET %s HTTP/1.1\r\nHost: %s\r\n%s%s%sUser-Agent: fastgate-health\r\n"
	                    "Accept: */*\r\n\r\n", r->health.path, tg->host,
	                    !tg->api_key ? "" : tg->provider == PROVIDER_AZURE ? "api-key: "
	                                                                       : "Authorization: Bearer ",
	                    tg->api_key ? tg->api_key : "", tg->api_key ? "\r\n" : "");
	s->health_busy = true;
	/* due an interval after this one started, not after it ended: checks keep their pace */
	s->health_next_ms = mono_ms() + (int64_t)r->health.interval_s * 1000;
	c->x.rq.origin = tg->origin;
	c->x.rq.host = tg->host;
	c->x.rq.head = c->head;
	c->x.rq.head_len = strlen(c->head);
	c->x.rq.replayable = true;
	c->x.rq.connect_timeout = r->health.timeout_s;
	c->x.rq.ca_file = tg->ca_file;
	c->x.cb = &check_callbacks;
	c->x.arg = c;
	if (!c->timer || tr_start(h->gw->transports[tg->transport], &c->x) < 0) {
		verdict(c, false);
		check_free(c);
		return;
	}
	evtimer_add(c->timer, &tv);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct health *h = arg;
	struct route_table *t = h->gw->routes;
	int64_t now = mono_ms();
	(void)fd; (void)what;

	if (!t || h->gw->stopping)
		return;
	for (size_t i = 0; i < t->n; i++) {
		struct route *r = t->routes[i];

		if (!r->health.path || !r->enabled)
			continue;
		for (size_t k = 0; k < r->n_targets; k++) {
			struct target_state *s = r->targets[k].st;

			/* the tick is no more exact than a check's start: a little early counts */
			if (s && !s->health_busy && !s->drained && now + TICK_SLACK_MS >= s->health_next_ms)
				check_start(h, t, r, k);
		}
	}
}

struct health *health_start(struct gateway *gw)
{
	struct health *h = calloc(1, sizeof(*h));
	struct timeval every = { TICK_MS / 1000, (TICK_MS % 1000) * 1000 };

	if (!h)
		return NULL;
	h->gw = gw;
	h->tick = event_new(gw->base, -1, EV_PERSIST, tick_cb, h);
	if (!h->tick) {
		free(h);
		return NULL;
	}
	event_add(h->tick, &every);
	return h;
}

void health_stop(struct health *h)
{
	if (!h)
		return;
	while (h->checks) {
		struct check *c = h->checks;
		struct target_state *s = c->route->targets[c->target].st;

		tr_cancel(&c->x);
		if (s)
			s->health_busy = false;
		check_free(c);
	}
	event_free(h->tick);
	free(h);
}
