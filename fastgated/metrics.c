/* Request counters and latency histograms, rendered as Prometheus text. Small linear
 * tables: the number of distinct (route, status) pairs is the number of routes times a
 * handful of statuses, so a scan is cheaper than a hash at this size. Tokens and cost are
 * by route and model, and the model comes from the client's request: those series are in
 * a hash, at most MODELS_PER_ROUTE models a route (the rest count as model="other"). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/buffer.h>

#include "audit.h"
#include "breaker.h"
#include "gateway.h"
#include "http.h"
#include "metrics.h"
#include "pool.h"
#include "routes.h"
#include "transport.h"
#include "util.h"

#define MAX_SERIES 1024
#define NAME_MAX_LEN 64
#define MODELS_PER_ROUTE 256
#define MODEL_LABEL_MAX 128     /* bytes of a model name kept in its label */

/* Buckets for LLM traffic: sub-millisecond gateway errors up to multi-minute streams. */
static const double buckets[] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                                  30, 60, 120, 300 };
#define NBUCKETS (sizeof(buckets) / sizeof(buckets[0]))

struct histogram {
	/* observations in (buckets[i-1], buckets[i]]: one add a request, where cumulative
	 * counts took one per bucket; print_histogram sums them as the text format wants */
	unsigned long long counts[NBUCKETS];
	unsigned long long count;
	double sum;
};

struct series {
	char route[NAME_MAX_LEN];
	char label2[32];            /* status, or upstream error kind */
	unsigned long long value;
};

enum token_kind { TOK_PROMPT, TOK_COMPLETION, TOK_CACHED, TOK_CACHE_WRITE, TOK_REASONING,
                  TOK_KINDS };
static const char *const token_kind_names[TOK_KINDS] = {
	"prompt", "completion", "cached", "cache_write", "reasoning",
};

/* The tokens and cost of one route and model. */
struct usage_series {
	struct usage_series *chain;  /* next in its hash bucket */
	struct usage_series *next;   /* next in the order first seen (the output's order) */
	size_t hash;
	char *route, *model;         /* the label values, model cleaned and capped */
	unsigned long long tokens[TOK_KINDS];
	unsigned long long cost_nano;
	bool priced;                 /* a request with a cost came: the cost series exists */
};

/* Per route: how many models it has series for, and its unpriced requests. */
struct route_usage {
	struct route_usage *next;
	char *route;
	unsigned models;
	unsigned long long unpriced;
};

/* One per event loop (a shard): its loop counts into it under mu, which only a scrape
 * (metrics_render, on any loop) takes besides, to add the shards up. */
struct metrics {
	pthread_mutex_t mu;
	bool locking;               /* other loops scrape it (metrics_share): take mu */
	struct series requests[MAX_SERIES];
	size_t n_requests;
	struct series upstream_errors[MAX_SERIES];
	size_t n_upstream_errors;
	struct histogram duration, ttfb;
	unsigned long long rejected;
	struct usage_series **usage;        /* hash of (route, model), usage_cap buckets */
	size_t usage_cap, usage_n;
	struct usage_series *usage_first, *usage_last;
	struct route_usage *route_usage;
	/* The series the last request went to, and its route and model as the request had
	 * them: most requests repeat the one before, and skip the cleaning and the hash. */
	struct usage_series *last;
	char last_model[MODEL_LABEL_MAX + 1];
};

struct metrics *metrics_new(void)
{
	struct metrics *m = calloc(1, sizeof(struct metrics));

	if (m)
		pthread_mutex_init(&m->mu, NULL);
	return m;
}

void metrics_share(struct metrics *m)
{
	m->locking = true;
}

void metrics_free(struct metrics *m)
{
	if (!m)
		return;
	pthread_mutex_destroy(&m->mu);
	for (struct usage_series *u = m->usage_first, *next; u; u = next) {
		next = u->next;
		free(u->route);
		free(u->model);
		free(u);
	}
	for (struct route_usage *r = m->route_usage, *next; r; r = next) {
		next = r->next;
		free(r->route);
		free(r);
	}
	free(m->usage);
	free(m);
}

static void series_add_n(struct series *tab, size_t *n, const char *route, const char *label2,
                         unsigned long long count)
{
	size_t i;

	for (i = 0; i < *n; i++)
		if (strcmp(tab[i].route, route) == 0 && strcmp(tab[i].label2, label2) == 0)
			break;
	if (i == *n) {
		if (*n == MAX_SERIES)
			return; /* bounded: past this many series, new ones are not tracked */
		snprintf(tab[i].route, sizeof(tab[i].route), "%s", route);
		snprintf(tab[i].label2, sizeof(tab[i].label2), "%s", label2);
		(*n)++;
	}
	tab[i].value += count;
}

static void series_add(struct series *tab, size_t *n, const char *route, const char *label2)
{
	series_add_n(tab, n, route, label2, 1);
}

static void histogram_observe(struct histogram *h, double v)
{
	for (size_t i = 0; i < NBUCKETS; i++)
		if (v <= buckets[i]) {
			h->counts[i]++;
			break;
		}
	h->count++;
	h->sum += v;
}

static void record(struct metrics *m, const char *route, int status, double total_s,
                   double ttfb_s, const char *upstream_error)
{
	char st[4] = "000";

	if (status >= 100 && status <= 999) {  /* always, for HTTP; no printf per request */
		st[0] = (char)('0' + status / 100);
		st[1] = (char)('0' + status / 10 % 10);
		st[2] = (char)('0' + status % 10);
	}
	series_add(m->requests, &m->n_requests, route ? route : "", st);
	histogram_observe(&m->duration, total_s);
	if (ttfb_s >= 0)
		histogram_observe(&m->ttfb, ttfb_s);
	if (upstream_error)
		series_add(m->upstream_errors, &m->n_upstream_errors, route ? route : "", upstream_error);
}

static struct route_usage *route_usage(struct metrics *m, const char *route)
{
	struct route_usage *r;

	for (r = m->route_usage; r; r = r->next)
		if (strcmp(r->route, route) == 0)
			return r;
	r = xcalloc(1, sizeof(*r));
	r->route = xstrdup(route);
	r->next = m->route_usage;
	m->route_usage = r;
	return r;
}

/* The model as a label value: at most MODEL_LABEL_MAX bytes (cut at a character's start),
 * bytes that are not UTF-8 and control characters as '?', so the text stays valid
 * whatever a client sends. Into out (MODEL_LABEL_MAX + 1 bytes). */
static void model_label(const char *model, char *out)
{
	const unsigned char *p = (const unsigned char *)(model ? model : "");
	size_t n = 0;

	while (*p) {
		unsigned c = *p, cp = 0;
		size_t len = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3
		           : c >= 0xf0 && c <= 0xf4 ? 4 : 0;

		cp = len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
		for (size_t k = 1; k < len; k++) {
			if ((p[k] & 0xc0) != 0x80) {
				len = 0;
				break;
			}
			cp = (cp << 6) | (p[k] & 0x3f);
		}
		if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
		    (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (len == 1 && (c < 0x20 || c == 0x7f)))
			len = 0;
		if (n + (len ? len : 1) > MODEL_LABEL_MAX)
			break;
		if (len) {
			memcpy(out + n, p, len);
			n += len;
			p += len;
		} else {
			out[n++] = '?';
			p++;
		}
	}
	out[n] = '\0';
}

static size_t usage_hash(const char *route, const char *model)
{
	size_t h = 14695981039346656037u;

	for (const char *p = route; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211u;
	h = (h ^ 0xff) * 1099511628211u;      /* a separator no label has */
	for (const char *p = model; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211u;
	return h;
}

static struct usage_series *usage_find(struct metrics *m, const char *route, const char *model,
                                       size_t h)
{
	if (!m->usage_cap)
		return NULL;
	for (struct usage_series *u = m->usage[h & (m->usage_cap - 1)]; u; u = u->chain)
		if (u->hash == h && strcmp(u->route, route) == 0 && strcmp(u->model, model) == 0)
			return u;
	return NULL;
}

static struct usage_series *usage_add(struct metrics *m, const char *route, const char *model,
                                      size_t h)
{
	struct usage_series *u = xcalloc(1, sizeof(*u));

	if (m->usage_n >= m->usage_cap) {      /* chains of one on average */
		size_t cap = m->usage_cap ? m->usage_cap * 2 : 64;
		struct usage_series **t = xcalloc(cap, sizeof(*t));

		for (struct usage_series *v = m->usage_first; v; v = v->next) {
			v->chain = t[v->hash & (cap - 1)];
			t[v->hash & (cap - 1)] = v;
		}
		free(m->usage);
		m->usage = t;
		m->usage_cap = cap;
	}
	u->hash = h;
	u->route = xstrdup(route);
	u->model = xstrdup(model);
	u->chain = m->usage[h & (m->usage_cap - 1)];
	m->usage[h & (m->usage_cap - 1)] = u;
	if (m->usage_last)
		m->usage_last->next = u;
	else
		m->usage_first = u;
	m->usage_last = u;
	m->usage_n++;
	return u;
}

/* The series of route and model (a label, hashed as h), made if new: past
 * MODELS_PER_ROUTE models a route, a new one counts as "other", itself no model. */
static struct usage_series *usage_series(struct metrics *m, const char *route,
                                         const char *model, size_t h)
{
	struct usage_series *u = usage_find(m, route, model, h);
	struct route_usage *ru;

	if (u)
		return u;
	ru = route_usage(m, route);
	if (strcmp(model, "other") != 0) {
		if (ru->models >= MODELS_PER_ROUTE) {
			model = "other";
			h = usage_hash(route, model);
			if ((u = usage_find(m, route, model, h)))
				return u;
		} else {
			ru->models++;
		}
	}
	return usage_add(m, route, model, h);
}

/* Tokens and cost by route and model; unpriced requests by route. */
static void record_usage(struct metrics *m, const char *route, const struct audit_record *r)
{
	const int64_t counts[TOK_KINDS] = { r->prompt_tokens, r->completion_tokens,
	                                    r->cached_tokens, r->cache_write_tokens,
	                                    r->reasoning_tokens };
	char model[MODEL_LABEL_MAX + 1];
	struct usage_series *u;
	bool any = r->cost_nano >= 0;
	size_t h;

	if (r->unpriced)
		route_usage(m, route)->unpriced++;
	if (!r->model || !*r->model)
		return;   /* no model call (a GET passed through): no token or cost series */
	for (int k = 0; k < TOK_KINDS; k++)
		any |= counts[k] > 0;
	if (!any)            /* nothing to add: no series for a client's made-up model */
		return;
	if ((u = m->last) && strcmp(u->route, route) == 0 &&
	    strcmp(m->last_model, r->model ? r->model : "") == 0)
		goto add;
	model_label(r->model, model);
	h = usage_hash(route, model);
	u = usage_series(m, route, model, h);
	/* a model too long to keep here is looked up each time (its label is cut) */
	m->last = NULL;
	if (!r->model || strnlen(r->model, MODEL_LABEL_MAX + 1) <= MODEL_LABEL_MAX) {
		snprintf(m->last_model, sizeof(m->last_model), "%s", r->model ? r->model : "");
		m->last = u;
	}
add:
	for (int k = 0; k < TOK_KINDS; k++)
		if (counts[k] > 0)
			u->tokens[k] += (unsigned long long)counts[k];
	if (r->cost_nano >= 0) {
		u->cost_nano += (unsigned long long)r->cost_nano;
		u->priced = true;
	}
}

void metrics_on_done(void *arg, const struct request_done *d)
{
	struct gateway *gw = arg;
	const struct audit_record *r = d->row;

	if (!d->refused) {
		CTR_ADD(gw->stats.requests, 1);
		if (r->status >= 500 || r->error)
			CTR_ADD(gw->stats.errors, 1);
	}
	if (gw->metrics) {
		struct metrics *m = gw->metrics;

		if (m->locking)
			pthread_mutex_lock(&m->mu);
		record(m, r->route ? r->route : "", r->status, d->total_s, d->ttfb_s,
		       d->upstream_error);
		record_usage(m, r->route ? r->route : "", r);
		if (m->locking)
			pthread_mutex_unlock(&m->mu);
	}
}

static void histogram_merge(struct histogram *dst, const struct histogram *src)
{
	for (size_t i = 0; i < NBUCKETS; i++)
		dst->counts[i] += src->counts[i];
	dst->count += src->count;
	dst->sum += src->sum;
}

/* Add shard src into dst (a scrape's sum of every loop's shard). */
static void metrics_merge(struct metrics *dst, const struct metrics *src)
{
	for (size_t i = 0; i < src->n_requests; i++)
		series_add_n(dst->requests, &dst->n_requests, src->requests[i].route,
		             src->requests[i].label2, src->requests[i].value);
	for (size_t i = 0; i < src->n_upstream_errors; i++)
		series_add_n(dst->upstream_errors, &dst->n_upstream_errors,
		             src->upstream_errors[i].route, src->upstream_errors[i].label2,
		             src->upstream_errors[i].value);
	histogram_merge(&dst->duration, &src->duration);
	histogram_merge(&dst->ttfb, &src->ttfb);
	dst->rejected += src->rejected;
	for (const struct usage_series *u = src->usage_first; u; u = u->next) {
		/* each shard keeps MODELS_PER_ROUTE a route; so does their sum */
		struct usage_series *v = usage_series(dst, u->route, u->model, u->hash);

		for (int k = 0; k < TOK_KINDS; k++)
			v->tokens[k] += u->tokens[k];
		v->cost_nano += u->cost_nano;
		v->priced |= u->priced;
	}
	for (const struct route_usage *r = src->route_usage; r; r = r->next)
		route_usage(dst, r->route)->unpriced += r->unpriced;
}

static void print_histogram(struct evbuffer *b, const char *name, const char *help,
                            const struct histogram *h)
{
	unsigned long long le = 0;

	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (size_t i = 0; i < NBUCKETS; i++) {
		le += h->counts[i];
		evbuffer_add_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, buckets[i], le);
	}
	evbuffer_add_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n",
	                    name, h->count, name, h->sum, name, h->count);
}

/* A label value as the text format wants it: backslash, double quote and line feed
 * escaped. */
static void add_label_value(struct evbuffer *b, const char *v)
{
	for (const char *p = v; *p; p++) {
		size_t run = strcspn(p, "\\\"\n");

		evbuffer_add(b, p, run);
		p += run;
		if (!*p)
			break;
		evbuffer_add(b, *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : "\\n", 2);
	}
}

/* fastgate_tokens_total, fastgate_cost_usd_total and fastgate_unpriced_requests_total. */
static void render_usage(const struct metrics *m, struct evbuffer *b)
{
	char usd[FMT_USD_MAX];

	evbuffer_add_printf(b, "# HELP fastgate_tokens_total Tokens of finished requests as the upstream reported them, by route, model and kind (prompt includes cached, completion includes reasoning).\n"
	                       "# TYPE fastgate_tokens_total counter\n");
	for (const struct usage_series *u = m->usage_first; u; u = u->next)
		for (int k = 0; k < TOK_KINDS; k++) {
			evbuffer_add_printf(b, "fastgate_tokens_total{route=\"");
			add_label_value(b, u->route);
			evbuffer_add_printf(b, "\",model=\"");
			add_label_value(b, u->model);
			evbuffer_add_printf(b, "\",kind=\"%s\"} %llu\n", token_kind_names[k], u->tokens[k]);
		}
	evbuffer_add_printf(b, "# HELP fastgate_cost_usd_total What finished requests cost, in US dollars, by route and model (exact to the nano-dollar).\n"
	                       "# TYPE fastgate_cost_usd_total counter\n");
	for (const struct usage_series *u = m->usage_first; u; u = u->next) {
		if (!u->priced)
			continue;
		fmt_usd_nano(usd, (int64_t)u->cost_nano);
		evbuffer_add_printf(b, "fastgate_cost_usd_total{route=\"");
		add_label_value(b, u->route);
		evbuffer_add_printf(b, "\",model=\"");
		add_label_value(b, u->model);
		evbuffer_add_printf(b, "\"} %s\n", usd);
	}
	evbuffer_add_printf(b, "# HELP fastgate_unpriced_requests_total Requests whose model had no price, by route.\n"
	                       "# TYPE fastgate_unpriced_requests_total counter\n");
	for (const struct route_usage *r = m->route_usage; r; r = r->next) {
		if (!r->unpriced)
			continue;
		evbuffer_add_printf(b, "fastgate_unpriced_requests_total{route=\"");
		add_label_value(b, r->route);
		evbuffer_add_printf(b, "\"} %llu\n", r->unpriced);
	}
}

/* `name{route="R",upstream="U"` of one target, without the closing brace, so that a
 * caller can add labels. */
static void add_target_labels(struct evbuffer *b, const char *name, const struct route *r,
                              const char *url)
{
	evbuffer_add_printf(b, "%s{route=\"", name);
	add_label_value(b, r->name);
	evbuffer_add_printf(b, "\",upstream=\"");
	add_label_value(b, url);
	evbuffer_add_printf(b, "\"");
}

/* What the upstream metrics report of one series: the targets of r with one URL, summed
 * (two upstreams of a route may share a URL with different keys; a series may appear only
 * once). */
struct target_sum {
	bool up;
	uint64_t inflight;
	uint64_t attempts[OUTCOME_COUNT];
	uint64_t transitions[3];
};

/* The sum for targets[i]'s URL, or false when an earlier target of r has that URL (its
 * series is already written). */
static bool target_sum(const struct route *r, size_t i, int64_t now_ms, struct target_sum *out)
{
	const char *url = r->targets[i].url;

	memset(out, 0, sizeof(*out));
	for (size_t k = 0; k < i; k++)
		if (r->targets[k].url && strcmp(r->targets[k].url, url) == 0)
			return false;
	pool_lock(r);   /* every loop's attempts change these */
	for (size_t k = i; k < r->n_targets; k++) {
		const struct target_state *s = r->targets[k].st;

		if (!r->targets[k].url || strcmp(r->targets[k].url, url) != 0 || !s)
			continue;
		out->up |= target_available(s, now_ms);
		out->inflight += s->inflight;
		for (int o = 0; o < OUTCOME_COUNT; o++)
			out->attempts[o] += s->attempts[o];
		for (int t = 0; t < 3; t++)
			out->transitions[t] += s->transitions[t];
	}
	pool_unlock(r);
	return true;
}

enum upstream_family { FAM_UP, FAM_INFLIGHT, FAM_ATTEMPTS, FAM_TRANSITIONS };

/* The series of one per-upstream family, every upstream of every route in t. */
static void render_upstream_family(struct evbuffer *b, const struct route_table *t,
                                   enum upstream_family what, int64_t now_ms)
{
	static const char *const names[] = {
		[FAM_UP] = "fastgate_upstream_up",
		[FAM_INFLIGHT] = "fastgate_upstream_inflight",
		[FAM_ATTEMPTS] = "fastgate_upstream_attempts_total",
		[FAM_TRANSITIONS] = "fastgate_breaker_transitions_total",
	};

	for (size_t i = 0; t && i < t->n; i++) {
		const struct route *r = t->routes[i];

		for (size_t k = 0; k < r->n_targets; k++) {
			struct target_sum sum;

			if (!r->targets[k].url || !target_sum(r, k, now_ms, &sum))
				continue;
			switch (what) {
			case FAM_UP:
			case FAM_INFLIGHT:
				add_target_labels(b, names[what], r, r->targets[k].url);
				evbuffer_add_printf(b, "} %llu\n", what == FAM_UP
				                    ? (unsigned long long)sum.up
				                    : (unsigned long long)sum.inflight);
				break;
			case FAM_ATTEMPTS:
				for (int o = 0; o < OUTCOME_COUNT; o++) {
					add_target_labels(b, names[what], r, r->targets[k].url);
					evbuffer_add_printf(b, ",outcome=\"%s\"} %llu\n",
					                    attempt_outcome_name((enum attempt_outcome)o),
					                    (unsigned long long)sum.attempts[o]);
				}
				break;
			case FAM_TRANSITIONS:
				for (int st = 0; st < 3; st++) {
					add_target_labels(b, names[what], r, r->targets[k].url);
					evbuffer_add_printf(b, ",to=\"%s\"} %llu\n",
					                    breaker_state_name((enum breaker_state)st),
					                    (unsigned long long)sum.transitions[st]);
				}
				break;
			}
		}
	}
}

/* The upstreams of the routes serving now, from their live state (pool.h). */
static void render_upstreams(struct gateway *gw, struct evbuffer *b)
{
	int64_t now = mono_ms();

	evbuffer_add_printf(b, "# HELP fastgate_upstream_up 1 when the upstream takes requests now (not drained, circuit not open), else 0.\n"
	                       "# TYPE fastgate_upstream_up gauge\n");
	render_upstream_family(b, gw->routes, FAM_UP, now);
	evbuffer_add_printf(b, "# HELP fastgate_upstream_inflight Attempts on the upstream in flight now.\n"
	                       "# TYPE fastgate_upstream_inflight gauge\n");
	render_upstream_family(b, gw->routes, FAM_INFLIGHT, now);
	evbuffer_add_printf(b, "# HELP fastgate_upstream_attempts_total Attempts on the upstream, by how they ended.\n"
	                       "# TYPE fastgate_upstream_attempts_total counter\n");
	render_upstream_family(b, gw->routes, FAM_ATTEMPTS, now);
	evbuffer_add_printf(b, "# HELP fastgate_breaker_transitions_total Circuit breaker state changes of the upstream, by the state moved to.\n"
	                       "# TYPE fastgate_breaker_transitions_total counter\n");
	render_upstream_family(b, gw->routes, FAM_TRANSITIONS, now);
}

/* What every loop counts alike, summed: the loops' own counters and their servers' and
 * transports' gauges. */
struct loop_sums {
	uint64_t inflight, pauses;
	int conns;
	unsigned up_open, up_idle;
};

static void loops_sum(struct gateway *gw, struct evbuffer *b, struct loop_sums *s)
{
	unsigned n = gateway_loops(gw);

	memset(s, 0, sizeof(*s));
	evbuffer_add_printf(b, "# HELP fastgate_workers Event-loop threads serving requests (workers).\n"
	                       "# TYPE fastgate_workers gauge\nfastgate_workers %u\n"
	                       "# HELP fastgate_worker_requests_total Requests finished, by the event loop that served them.\n"
	                       "# TYPE fastgate_worker_requests_total counter\n", n);
	for (unsigned i = 0; i < n; i++)
		evbuffer_add_printf(b, "fastgate_worker_requests_total{worker=\"%u\"} %llu\n", i,
		                    (unsigned long long)CTR_GET(gateway_loop(gw, i)->stats.requests));
	evbuffer_add_printf(b, "# HELP fastgate_worker_connections Client connections open now, by the event loop that holds them.\n"
	                       "# TYPE fastgate_worker_connections gauge\n");
	for (unsigned i = 0; i < n; i++) {
		struct gateway *l = gateway_loop(gw, i);
		const struct transport *t = l->transports[TR_KIND_NATIVE];
		int c = l->http ? http_server_connections(l->http) : 0;

		evbuffer_add_printf(b, "fastgate_worker_connections{worker=\"%u\"} %d\n", i, c);
		s->conns += c;
		s->inflight += CTR_GET(l->stats.inflight);
		s->pauses += CTR_GET(l->stats.upstream_pauses);
		if (t && t->ops->counts) {
			unsigned open = 0, idle = 0;

			t->ops->counts(t, &open, &idle);
			s->up_open += open;
			s->up_idle += idle;
		}
	}
}

int metrics_render(struct gateway *gw, struct evbuffer *b)
{
	unsigned n = gateway_loops(gw);
	struct metrics *m = gw->metrics, *sum = NULL;
	struct loop_sums ls;

	if (!m)
		return -1;
	if (n > 1) {   /* the shards added up, each held only while it is read */
		if (!(sum = metrics_new()))
			return -1;
		for (unsigned i = 0; i < n; i++) {
			struct metrics *sh = gateway_loop(gw, i)->metrics;

			pthread_mutex_lock(&sh->mu);
			metrics_merge(sum, sh);
			pthread_mutex_unlock(&sh->mu);
		}
		m = sum;
	} else if (m->locking) {
		pthread_mutex_lock(&m->mu);
	}
	evbuffer_add_printf(b, "# HELP fastgate_requests_total Requests finished, by route and status.\n"
	                       "# TYPE fastgate_requests_total counter\n");
	for (size_t i = 0; i < m->n_requests; i++)
		evbuffer_add_printf(b, "fastgate_requests_total{route=\"%s\",status=\"%s\"} %llu\n",
		                    m->requests[i].route, m->requests[i].label2, m->requests[i].value);
	print_histogram(b, "fastgate_request_duration_seconds",
	                "Time from request received to response done.", &m->duration);
	print_histogram(b, "fastgate_ttfb_seconds",
	                "Time from request received to the first upstream byte.", &m->ttfb);
	evbuffer_add_printf(b, "# HELP fastgate_upstream_errors_total Upstream failures, by route and kind.\n"
	                       "# TYPE fastgate_upstream_errors_total counter\n");
	for (size_t i = 0; i < m->n_upstream_errors; i++)
		evbuffer_add_printf(b, "fastgate_upstream_errors_total{route=\"%s\",kind=\"%s\"} %llu\n",
		                    m->upstream_errors[i].route, m->upstream_errors[i].label2,
		                    m->upstream_errors[i].value);
	render_usage(m, b);
	if (sum)
		metrics_free(sum);
	else if (m->locking)
		pthread_mutex_unlock(&m->mu);
	loops_sum(gw, b, &ls);
	evbuffer_add_printf(b, "# HELP fastgate_inflight_requests Requests being served now.\n"
	                       "# TYPE fastgate_inflight_requests gauge\nfastgate_inflight_requests %llu\n",
	                    (unsigned long long)ls.inflight);
	evbuffer_add_printf(b, "# HELP fastgate_audit_queue_depth Audit records not yet committed (memory and spool).\n"
	                       "# TYPE fastgate_audit_queue_depth gauge\nfastgate_audit_queue_depth %zu\n",
	                    gw->audit ? audit_queue_depth(gw->audit) : (size_t)0);
	evbuffer_add_printf(b, "# HELP fastgate_open_connections Client connections open now.\n"
	                       "# TYPE fastgate_open_connections gauge\nfastgate_open_connections %d\n",
	                    ls.conns);
	evbuffer_add_printf(b, "# HELP fastgate_upstream_connections Plain-HTTP upstream connections open now, by state.\n"
	                       "# TYPE fastgate_upstream_connections gauge\n"
	                       "fastgate_upstream_connections{state=\"busy\"} %u\n"
	                       "fastgate_upstream_connections{state=\"idle\"} %u\n",
	                    ls.up_open - ls.up_idle, ls.up_idle);
	evbuffer_add_printf(b, "# HELP fastgate_upstream_pauses_total Streams paused because the client read slower than the upstream sent.\n"
	                       "# TYPE fastgate_upstream_pauses_total counter\nfastgate_upstream_pauses_total %llu\n",
	                    (unsigned long long)ls.pauses);
	render_upstreams(gw, b);
	return 0;
}
