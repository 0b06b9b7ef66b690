/* Target state: see pool.h. */
#include <stdlib.h>
#include <string.h>

#include "balance.h"
#include "pool.h"
#include "routes.h"
#include "util.h"

static const char *const outcome_names[OUTCOME_COUNT] = {
	"ok", "connect", "timeout", "reset", "protocol", "429", "5xx", "abandoned"
};

const char *attempt_outcome_name(enum attempt_outcome o)
{
	return (unsigned)o < OUTCOME_COUNT ? outcome_names[o] : "unknown";
}

enum attempt_outcome attempt_outcome_of_status(long status)
{
	if (status == 429)
		return OUTCOME_429;
	if (status == 500 || status == 502 || status == 503 || status == 504)
		return OUTCOME_5XX;
	return OUTCOME_OK;
}

void pool_init(struct pool *p)
{
	pthread_mutex_init(&p->mu, NULL);
	p->locking = false;
	p->head = NULL;
	p->n = 0;
}

/* At shutdown, after every loop has stopped: the tables still holding states free them
 * without a registry (and without its lock). */
void pool_clear(struct pool *p)
{
	for (struct target_state *s = p->head, *next; s; s = next) {
		next = s->next;
		s->pool = NULL;
		s->prev = s->next = NULL;
	}
	p->head = NULL;
	p->n = 0;
	pthread_mutex_destroy(&p->mu);
}

void pool_share(struct pool *p)
{
	p->locking = true;
}

/* The registry's mutex when several loops share it, else NULL (nothing to take). */
static pthread_mutex_t *mutex_of(struct pool *p)
{
	return p && p->locking ? &p->mu : NULL;
}

static void take(pthread_mutex_t *mu, bool on)
{
	if (mu && on)
		pthread_mutex_lock(mu);
	else if (mu)
		pthread_mutex_unlock(mu);
}

/* The route's registry lock, inline for the attempt path here (pick, start, end: a
 * function call each way was ~16 instructions a call, three times a request). */
static inline void route_lock(const struct route *r, bool on)
{
	take(mutex_of(r ? r->pool : NULL), on);
}

void pool_lock(const struct route *r)
{
	route_lock(r, true);
}

void pool_unlock(const struct route *r)
{
	route_lock(r, false);
}

void target_state_lock(const struct target_state *s)
{
	take(mutex_of(s ? s->pool : NULL), true);
}

void target_state_unlock(const struct target_state *s)
{
	take(mutex_of(s ? s->pool : NULL), false);
}

static struct target_state *state_find(struct pool *p, const char *route,
                                       const struct route_target *t)
{
	for (struct target_state *s = p->head; s; s = s->next) {
		struct route_target had = { .url = s->url, .provider = (enum provider)s->provider,
		                            .deployment = s->deployment };

		memcpy(had.key_hash, s->key_hash, sizeof(had.key_hash));
		if (strcmp(s->route, route) == 0 && route_target_same(&had, t))
			return s;
	}
	return NULL;
}

static struct target_state *state_new(struct pool *p, const char *route,
                                      const struct route_target *t)
{
	struct target_state *s = xcalloc(1, sizeof(*s));

	s->route = xstrdup(route);
	s->url = xstrdup(t->url);
	s->provider = (int)t->provider;
	s->deployment = xstrdup(t->deployment);
	memcpy(s->key_hash, t->key_hash, sizeof(s->key_hash));
	s->pool = p;
	s->next = p->head;
	if (p->head)
		p->head->prev = s;
	p->head = s;
	p->n++;
	return s;
}

void pool_bind(struct pool *p, struct route_table *t)
{
	pthread_mutex_lock(&p->mu);
	for (size_t i = 0; i < t->n; i++) {
		struct route *r = t->routes[i];

		r->pool = p;

		for (size_t k = 0; k < r->n_targets; k++) {
			struct route_target *tg = &r->targets[k];
			struct target_state *s;

			if (tg->st || !tg->url)
				continue;
			s = state_find(p, r->name, tg);
			if (!s)
				s = state_new(p, r->name, tg);
			s->refs++;
			tg->st = s;
		}
	}
	pthread_mutex_unlock(&p->mu);
}

/* The last table holding a state may go on any loop. */
void target_state_unref(struct target_state *s)
{
	struct pool *p = s ? s->pool : NULL;
	bool last;

	if (!s)
		return;
	if (p)
		pthread_mutex_lock(&p->mu);
	last = --s->refs == 0;
	if (last && p) {
		if (s->prev)
			s->prev->next = s->next;
		else
			p->head = s->next;
		if (s->next)
			s->next->prev = s->prev;
		p->n--;
	}
	if (p)
		pthread_mutex_unlock(&p->mu);
	if (!last)
		return;
	free(s->route);
	free(s->url);
	free(s->deployment);
	free(s);
}

bool target_available(const struct target_state *s, int64_t now_ms)
{
	return s && !s->drained && breaker_wait_ms(&s->br, now_ms) == 0;
}

bool pool_target_available(const struct route *r, size_t i, int64_t now_ms)
{
	bool ok;

	route_lock(r, true);
	ok = target_available(r->targets[i].st, now_ms);
	route_lock(r, false);
	return ok;
}

static void note_transition(struct target_state *s, bool changed)
{
	if (changed && (unsigned)s->br.state < 3)
		s->transitions[s->br.state]++;
}

static int pick_locked(struct route *r, uint64_t tried, int64_t now_ms, enum breaker_pass *pass)
{
	*pass = BREAKER_DENY;
	for (size_t i = 0; i < r->n_targets; i++) {
		const struct target_state *s = r->targets[i].st;

		r->bt[i].available = target_available(s, now_ms);
		r->bt[i].inflight = s ? s->inflight : 0;
		r->bt[i].ewma_ms = s ? s->ewma_ms : 0;
	}
	/* at most one round per target: a breaker that says no after saying it would is
	 * marked and the pick made again */
	for (size_t round = 0; round < r->n_targets; round++) {
		int i = balance_pick(&r->bal, r->bt, r->n_targets, tried);
		bool changed = false;
		struct target_state *s;

		if (i < 0)
			return -1;
		s = r->targets[i].st;
		*pass = breaker_allow(&s->br, now_ms, &changed);
		note_transition(s, changed);
		if (*pass != BREAKER_DENY)
			return i;
		r->bt[i].available = false;
	}
	return -1;
}

int pool_pick(struct route *r, uint64_t tried, int64_t now_ms, enum breaker_pass *pass)
{
	int i;

	route_lock(r, true);
	i = pick_locked(r, tried, now_ms, pass);
	route_lock(r, false);
	return i;
}

int64_t pool_wait_ms(const struct route *r, int64_t now_ms)
{
	int64_t best = -1;

	route_lock(r, true);
	for (size_t i = 0; i < r->n_targets; i++) {
		const struct target_state *s = r->targets[i].st;
		int64_t w;

		if (!s || s->drained)
			continue;
		w = breaker_wait_ms(&s->br, now_ms);
		if (best < 0 || w < best)
			best = w;
	}
	route_lock(r, false);
	return best;
}

bool pool_route_available(const struct route *r, int64_t now_ms)
{
	bool ok = false;

	route_lock(r, true);
	for (size_t i = 0; i < r->n_targets && !ok; i++)
		ok = target_available(r->targets[i].st, now_ms);
	route_lock(r, false);
	return ok;
}

void pool_release(struct route *r, size_t i, enum breaker_pass pass)
{
	struct target_state *s = r->targets[i].st;

	route_lock(r, true);
	if (s && pass != BREAKER_DENY)
		breaker_abandoned(&s->br, pass);
	route_lock(r, false);
}

void pool_attempt_start(struct route *r, size_t i)
{
	struct target_state *s = r->targets[i].st;

	route_lock(r, true);
	if (s)
		s->inflight++;
	route_lock(r, false);
}

static void attempt_end_locked(struct route *r, struct target_state *s, int64_t now_ms,
                               enum breaker_pass pass, enum attempt_outcome o,
                               int64_t retry_after_s, double ttfb_ms)
{
	bool changed;

	if (s->inflight)
		s->inflight--;
	s->attempts[o < OUTCOME_COUNT ? o : OUTCOME_RESET]++;
	if (ttfb_ms >= 0) {
		struct balance_target bt = { .ewma_ms = s->ewma_ms };

		balance_observe(&bt, ttfb_ms);
		s->ewma_ms = bt.ewma_ms;
	}
	if (pass == BREAKER_DENY || !r->breaker_on)
		return;
	switch (o) {
	case OUTCOME_OK:
		changed = breaker_success(&s->br, now_ms, pass);
		break;
	case OUTCOME_ABANDONED:
		breaker_abandoned(&s->br, pass);
		changed = false;
		break;
	case OUTCOME_429:
	case OUTCOME_5XX:
		if (retry_after_s >= 0) {
			changed = breaker_retry_after(&s->br, now_ms, retry_after_s);
			break;
		}
		/* fall through */
	default:
		changed = breaker_failure(&s->br, &r->breaker, now_ms, pass);
		break;
	}
	note_transition(s, changed);
}

void pool_attempt_end(struct route *r, size_t i, int64_t now_ms, enum breaker_pass pass,
                      enum attempt_outcome o, int64_t retry_after_s, double ttfb_ms)
{
	struct target_state *s = r->targets[i].st;

	if (!s)
		return;
	route_lock(r, true);
	attempt_end_locked(r, s, now_ms, pass, o, retry_after_s, ttfb_ms);
	route_lock(r, false);
}
