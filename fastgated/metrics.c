/* Request counters and latency histograms, rendered as Prometheus text. Small linear
 * tables: the number of distinct (route, status) pairs is the number of routes times a
 * handful of statuses, so a scan is cheaper than a hash at this size. */
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

/* Buckets for LLM traffic: sub-millisecond gateway errors up to multi-minute streams. */
static const double buckets[] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                                  30, 60, 120, 300 };
#define NBUCKETS (sizeof(buckets) / sizeof(buckets[0]))

struct histogram {
	unsigned long long counts[NBUCKETS];
	unsigned long long count;
	double sum;
};

struct series {
	char route[NAME_MAX_LEN];
	char label2[32];            /* status, or upstream error kind */
	unsigned long long value;
};

struct metrics {
	struct series requests[MAX_SERIES];
	size_t n_requests;
	struct series upstream_errors[MAX_SERIES];
	size_t n_upstream_errors;
	struct histogram duration, ttfb;
	unsigned long long rejected;
};

struct metrics *metrics_new(void)
{
	return calloc(1, sizeof(struct metrics));
}

void metrics_free(struct metrics *m)
{
	free(m);
}

static void series_add(struct series *tab, size_t *n, const char *route, const char *label2)
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
	tab[i].value++;
}

static void histogram_observe(struct histogram *h, double v)
{
	for (size_t i = 0; i < NBUCKETS; i++)
		if (v <= buckets[i])
			h->counts[i]++;
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

void metrics_on_done(void *arg, const struct request_done *d)
{
	struct gateway *gw = arg;
	const struct audit_record *r = d->row;

	if (!d->refused) {
		gw->stats.requests++;
		if (r->status >= 500 || r->error)
			gw->stats.errors++;
	}
	if (gw->metrics)
		record(gw->metrics, r->route ? r->route : "", r->status, d->total_s, d->ttfb_s,
		       d->upstream_error);
}

static void print_histogram(struct evbuffer *b, const char *name, const char *help,
                            const struct histogram *h)
{
	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (size_t i = 0; i < NBUCKETS; i++)
		evbuffer_add_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, buckets[i], h->counts[i]);
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

int metrics_render(struct gateway *gw, struct evbuffer *b)
{
	struct metrics *m = gw->metrics;

	if (!m)
		return -1;
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
	evbuffer_add_printf(b, "# HELP fastgate_inflight_requests Requests being served now.\n"
	                       "# TYPE fastgate_inflight_requests gauge\nfastgate_inflight_requests %llu\n",
	                    (unsigned long long)gw->stats.inflight);
	evbuffer_add_printf(b, "# HELP fastgate_audit_queue_depth Audit records not yet committed (memory and spool).\n"
	                       "# TYPE fastgate_audit_queue_depth gauge\nfastgate_audit_queue_depth %zu\n",
	                    gw->audit ? audit_queue_depth(gw->audit) : (size_t)0);
	evbuffer_add_printf(b, "# HELP fastgate_open_connections Client connections open now.\n"
	                       "# TYPE fastgate_open_connections gauge\nfastgate_open_connections %d\n",
	                    gw->http ? http_server_connections(gw->http) : 0);
	{
		unsigned open = 0, idle = 0;
		const struct transport *t = gw->transports[TR_KIND_NATIVE];
		if (t && t->ops->counts)
			t->ops->counts(t, &open, &idle);
		evbuffer_add_printf(b, "# HELP fastgate_upstream_connections Plain-HTTP upstream connections open now, by state.\n"
		                       "# TYPE fastgate_upstream_connections gauge\n"
		                       "fastgate_upstream_connections{state=\"busy\"} %u\n"
		                       "fastgate_upstream_connections{state=\"idle\"} %u\n",
		                    open - idle, idle);
	}
	evbuffer_add_printf(b, "# HELP fastgate_upstream_pauses_total Streams paused because the client read slower than the upstream sent.\n"
	                       "# TYPE fastgate_upstream_pauses_total counter\nfastgate_upstream_pauses_total %llu\n",
	                    (unsigned long long)gw->stats.upstream_pauses);
	render_upstreams(gw, b);
	return 0;
}
