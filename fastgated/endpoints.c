/* The gateway's own answers; see endpoints.h. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <event2/buffer.h>

#include "audit.h"
#include "endpoints.h"
#include "gateway.h"
#include "http.h"
#include "metrics.h"
#include "pool.h"
#include "util.h"

/* Liveness: 200 while serving, 503 once draining so a load balancer takes it out. */
static void health(void *arg, struct http_request *req)
{
	struct gateway *gw = arg;
	const char *b = gw->stopping ? "{\"status\":\"stopping\"}\n" : "{\"status\":\"ok\"}\n";

	http_add_header(req, "Content-Type", "application/json");
	http_reply(req, gw->stopping ? 503 : 200, b, strlen(b));
}

/* The audit writer has rows it has not committed for this long: readiness fails, as a
 * gateway that cannot keep its audit trail should not take traffic. */
#define AUDIT_STALL_MS 10000

static bool audit_stalled(const struct gateway *gw)
{
	return gw->audit && audit_stalled_ms(gw->audit) >= AUDIT_STALL_MS;
}

/* Readiness (DESIGN.md, Upstream pools): 200 when the gateway can serve, else 503 with
 * every reason, so that a load balancer or Kubernetes routes around this instance. */
static void ready(void *arg, struct http_request *req)
{
	struct gateway *gw = arg;
	const struct route_table *t = gw->routes;
	json_t *reasons = json_array(), *o;
	int64_t now = mono_ms();
	char *body;

	if (!reasons)
		goto oom;
	if (gw->stopping)
		json_array_append_new(reasons, json_string("stopping: draining in-flight requests"));
	if (!t || t->n == 0)
		json_array_append_new(reasons, json_string("no routes loaded"));
	for (size_t i = 0; t && i < t->n; i++) {
		const struct route *r = t->routes[i];

		if (r->enabled && !pool_route_available(r, now))
			json_array_append_new(reasons, json_sprintf(
			    "route %s: no available upstream (circuit open, drained or unhealthy)", r->name));
	}
	if (audit_stalled(gw))
		json_array_append_new(reasons, json_string("audit writer stalled: rows are not being committed"));
	o = json_array_size(reasons)
	    ? json_pack("{s:s, s:O}", "status", "not_ready", "reasons", reasons)
	    : json_pack("{s:s}", "status", "ready");
	body = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (!body)
		goto oom;
	http_add_header(req, "Content-Type", "application/json");
	http_add_header(req, "Cache-Control", "no-store");
	http_reply(req, json_array_size(reasons) ? 503 : 200, body, strlen(body));
	free(body);
	json_decref(reasons);
	return;
oom:
	json_decref(reasons);
	http_send_error(req, 500, "internal_error", "out of memory");
}

static bool is_loopback(const char *ip)
{
	return strncmp(ip, "127.", 4) == 0 || strcmp(ip, "::1") == 0 ||
	       strncmp(ip, "::ffff:127.", 11) == 0;
}

static void metrics(void *arg, struct http_request *req)
{
	struct gateway *gw = arg;
	struct evbuffer *b;

	if (!gw->cfg->metrics_public && !is_loopback(http_client_ip(req))) {
		http_send_error(req, 403, "forbidden", "/metrics is served to loopback clients only");
		return;
	}
	b = evbuffer_new();
	if (!b || metrics_render(gw, b) < 0) {
		if (b)
			evbuffer_free(b);
		http_send_error(req, 500, "internal_error", "metrics unavailable");
		return;
	}
	http_add_header(req, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	http_reply_buf(req, 200, b, -1);
	evbuffer_free(b);
}

int endpoints_register(struct gateway *gw)
{
	if (http_server_route(gw->http, "/health", health, gw) < 0 ||
	    http_server_route(gw->http, "/health/ready", ready, gw) < 0 ||
	    http_server_route(gw->http, "/metrics", metrics, gw) < 0)
		return -1;
	return 0;
}

void endpoints_refused(void *arg, const struct http_refusal *r)
{
	struct gateway *gw = arg;
	struct audit_record row = { .ttfb_ms = -1, .prompt_tokens = -1, .completion_tokens = -1,
	                            .cached_tokens = -1, .cache_write_tokens = -1,
	                            .reasoning_tokens = -1, .cost_nano = -1 };
	struct request_done d = { .row = &row, .ttfb_s = -1, .refused = 1 };
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	/* borrowed for the call: subscribers copy what they keep */
	row.request_id = (char *)r->id;
	row.started_at = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
	row.client_ip = r->client_ip && r->client_ip[0] ? (char *)r->client_ip : NULL;
	row.status = r->status;
	row.error = (char *)r->code;
	reqdone_emit(&gw->done, &d);
}
