/* The request path as phases; see proxy.h and request.h.
 *
 * After the HTTP server has a complete, validated head (the head phase), a request runs
 * through the phases below in order. Each decides and returns: on to the next phase, wait
 * (an event resumes the request at the next phase: the body arriving, later a Redis
 * answer), or end (the client was answered). The order follows DESIGN.md's status table:
 * 401 (key) before 404 (route) before 403 (key not allowed there) before 429 (rate).
 *
 *   authenticate  key from X-API-Key / Authorization, checked in memory, body unread
 *   body          read up to the limit                                      (waits)
 *   parse         one reading of the JSON body: model, stream
 *   match         route by path, method, body; the key's permissions
 *   policy        policy.c: the spend estimate reserved against limits and balance
 *   cache         response cache lookup (none yet)
 *   forward       forward.c: the attempt: the upstream request through its transport (waits)
 * then relay.c carries the answer to the client, and proxy_finish emits the request-done
 * event (audit, live tail, metrics) and frees the request. */
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "authfail.h"
#include "cidr.h"
#include "cors.h"
#include "forwarded.h"
#include "log.h"
#include "policy.h"
#include "proxy.h"
#include "request.h"
#include "selfserve.h"
#include "util.h"

/* At 2048 bytes and more glibc's calloc clears a request with rep stosb, and callgrind
 * counted 2,000 more instructions a request: keep it below, or measure again. */
_Static_assert(sizeof(struct proxy_req) <= 2000, "struct proxy_req grew past 2000 bytes");

enum phase_rc {
	PH_NEXT,      /* go on with the next phase */
	PH_WAIT,      /* an event resumes the request (proxy_resume) */
	PH_END,       /* the client was answered: finish */
};

static void run_phases(struct proxy_req *px);

double proxy_elapsed(const struct proxy_req *px)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - px->t_start.tv_sec) +
	       (double)(now.tv_nsec - px->t_start.tv_nsec) / 1e9;
}

/* ---- ending ----------------------------------------------------------------------- */

struct http_request *proxy_take_req(struct proxy_req *px)
{
	struct http_request *req = px->req;

	if (req) {
		http_watch_client(req, NULL, NULL);
		http_on_written(req, NULL, NULL);
	}
	px->req = NULL;
	return req;
}

void proxy_reply_error(struct proxy_req *px, int status, const char *code, const char *message)
{
	struct http_request *req = proxy_take_req(px);

	px->status = status;
	if (req)
		http_send_error(req, status, code, message);
}

static char *dup_or_null(const char *s)
{
	return s && *s ? strdup(s) : NULL;
}

static char *empty_to_null(const char *s)
{
	return s && *s ? (char *)s : NULL;
}

/* The done phase: the request-done event carries the audit row as it will be written. */
static void emit_done(struct proxy_req *px, double total_s)
{
	struct audit_record row = { 0 };
	struct request_done d = { 0 };
	char *answer = NULL;

	if (px->answer_log)
		answer = relay_body_for_audit(px, (const char *)evbuffer_pullup(px->answer_log, -1),
		                              evbuffer_get_length(px->answer_log), NULL, 0);
	/* borrowed pointers: subscribers copy what they keep */
	row.request_id = px->id;
	row.started_at = px->started_at;
	row.key_id = px->key_id;
	row.key_name = empty_to_null(px->key_name);
	row.client_ip = empty_to_null(px->client_ip);
	row.method = empty_to_null(px->method);
	row.path = empty_to_null(px->path);
	if (px->route) {
		row.route = px->route->name;
		if (px->forwarded && px->att.target >= 0)
			row.upstream = empty_to_null(px->route->targets[px->att.target].origin);
	}
	row.retries = px->attempts > 1 ? px->attempts - 1 : 0;
	row.attempts = px->attempt_log_len ? px->attempt_log : NULL;
	row.upstream_request_id = px->forwarded ? (char *)relay_upstream_request_id(&px->att) : NULL;
	row.status = (int)px->status;
	row.latency_ms = total_s * 1000.0;
	row.ttfb_ms = px->att.ttfb_s >= 0 ? px->att.ttfb_s * 1000.0 : -1;
	row.is_stream = px->sse || px->streaming;
	row.chunks = px->chunks;
	row.bytes_in = (int64_t)px->body_len;
	row.bytes_out = (int64_t)px->bytes_out;
	row.model = empty_to_null(px->model);
	row.prompt_tokens = px->usage.found ? px->usage.prompt_tokens : -1;
	row.completion_tokens = px->usage.found ? px->usage.completion_tokens : -1;
	row.cached_tokens = px->usage.found ? px->usage.cached_tokens : -1;
	row.cache_write_tokens = px->usage.found ? px->usage.cache_write_tokens : -1;
	row.reasoning_tokens = px->usage.found ? px->usage.reasoning_tokens : -1;
	row.cost_nano = -1;                  /* none until the request is priced (issue 19) */
	row.error = empty_to_null(px->error_kind);
	row.user_id = px->key && px->key->user ? px->key->user->id : 0;
	row.cost_nano = px->charged ? px->cost_nano : -1;
	row.price_version = px->charged && px->priced ? px->price_version : NULL;
	row.billed = px->charged;
	row.estimated = px->usage_estimated;
	row.unpriced = px->charged && px->model[0] && !px->priced;
	row.request_body = px->body_log;
	row.response_body = answer;
	d.row = &row;
	d.total_s = total_s;
	d.ttfb_s = px->att.ttfb_s;
	d.upstream_error = px->error_kind;
	d.with_bodies = 1;
	reqdone_emit(&px->gw->done, &d);
	free(answer);
}

/* A request's memory (~2 KB, past glibc's per-thread cache of small blocks), its two
 * attempt buffers and its answer buffer are kept by the loop for the next request rather
 * than freed: malloc and free of them, and the coalescing of free blocks behind them, were
 * ~5% of the loop's CPU at 1,000 concurrent requests (perf). Few, and small: what a burst
 * of thousands of streams leaves behind is given back to the system (main.c's trim), and
 * every block kept here holds a page of it; a buffer grown past a usual request's is freed. */
#define SPARES_MAX 64
#define SPARE_BUF_MAX 4096

static struct proxy_req *spare_take(struct gateway *gw)
{
	struct proxy_req *px = gw->spares;
	char *head, *up_raw;
	size_t head_cap, up_raw_cap;
	struct evbuffer *out;

	if (!px)
		return calloc(1, sizeof(*px));
	MEM_UNPOISON(px, sizeof(*px));
	gw->spares = px->next_spare;
	gw->n_spares--;
	head = px->att.head;
	head_cap = px->att.head_cap;
	up_raw = px->att.up_raw;
	up_raw_cap = px->att.up_raw_cap;
	out = px->out;
	MEM_UNPOISON(head, head_cap);
	MEM_UNPOISON(up_raw, up_raw_cap);
	memset(px, 0, sizeof(*px));
	px->out = out;
	px->att.head = head;
	px->att.head_cap = head_cap;
	px->att.up_raw = up_raw;
	px->att.up_raw_cap = up_raw_cap;
	return px;
}

/* What a finished request's memory still holds once proxy_finish is done with it. */
static void px_free(struct proxy_req *px)
{
	forward_attempt_free(&px->att);
	if (px->out)
		evbuffer_free(px->out);
	free(px);
}

/* The end of a finished request's memory: kept as a spare, or freed. */
static void spare_give(struct gateway *gw, struct proxy_req *px)
{
	struct attempt *a = &px->att;

	if (gw->n_spares >= SPARES_MAX || a->head_cap > SPARE_BUF_MAX ||
	    a->up_raw_cap > SPARE_BUF_MAX || !px->out) {
		px_free(px);
		return;
	}
	forward_attempt_clear(a);
	evbuffer_drain(px->out, evbuffer_get_length(px->out));
	MEM_POISON(a->head, a->head_cap);
	MEM_POISON(a->up_raw, a->up_raw_cap);
	px->next_spare = gw->spares;
	gw->spares = px;
	gw->n_spares++;
	MEM_POISON(px, sizeof(*px));
}

void proxy_spares_free(struct gateway *gw)
{
	while (gw->spares) {
		struct proxy_req *px = gw->spares;

		MEM_UNPOISON(px, sizeof(*px));
		MEM_UNPOISON(px->att.head, px->att.head_cap);
		MEM_UNPOISON(px->att.up_raw, px->att.up_raw_cap);
		gw->spares = px->next_spare;
		px_free(px);
	}
	gw->n_spares = 0;
}

void proxy_finish(struct proxy_req *px)
{
	struct gateway *gw = px->gw;
	double total = proxy_elapsed(px);

	if (px->finished)
		return;
	px->finished = true;
	if (forward_cancel(px) && !px->error_kind)
		px->error_kind = "client_closed";
	if (px->forwarded)
		forward_attempt_end(px, OUTCOME_ABANDONED, 0, -1);   /* no-op once it has ended */
	if (px->req)
		proxy_take_req(px);
	CTR_ADD(gw->stats.inflight, -1);
	policy_bill(px);
	emit_done(px, total);
	log_debug("request %s route=%s status=%ld %.1fms chunks=%u bytes=%zu%s%s", px->id,
	          px->route ? px->route->name : "-", px->status, total * 1000, px->chunks,
	          px->bytes_out, px->error_kind ? " error=" : "", px->error_kind ? px->error_kind : "");

	free(px->attempt_log);
	free(px->body);
	free(px->body_rewritten);
	free(px->key_name);
	free(px->body_log);
	if (px->answer_log)
		evbuffer_free(px->answer_log);
	free(px->path);
	sse_scan_free(&px->scan);
	free(px->scan_out);
	reqjson_free(&px->rj);
	event_del(&px->timer_ev);
	event_del(&px->resume_ev);
	event_del(&px->finish_ev);
	if (px->retry_ev)
		event_free(px->retry_ev);
	if (px->table)
		route_table_unref(px->table);
	spare_give(gw, px);
}

static void finish_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	proxy_finish(arg);
}

/* The client connection is gone (hang-up, write error, timeout); the request is invalid
 * from here on. Only note it and finish from the loop. */
static void client_closed_cb(void *arg)
{
	struct proxy_req *px = arg;

	px->req = NULL;
	if (!px->status || px->status < 400)
		px->status = 499; /* nginx's "client closed request" */
	/* the upstream has the request: its prompt is billed at least (relay.c: a cut stream) */
	px->left_in_flight = px->att.x.active;
	/* on_disconnect: drain: an answer under way is read to its end (bounded by the idle
	 * timeout and DRAIN_MAX_BYTES), so that the upstream's own usage is billed rather than
	 * an estimate; relay.c discards what it reads and finishes the request */
	if (px->route && px->route->drain_on_disconnect && px->att.x.active) {
		px->draining = true;
		px->error_kind = "client_closed";
		if (px->paused)
			event_active(&px->resume_ev, 0, 0);
		if (px->streaming)   /* before the head, the first-byte timer stays */
			forward_arm_timer(px, px->route->idle_timeout);
		return;
	}
	event_active(&px->finish_ev, 0, 0);
}

/* ---- authenticate ------------------------------------------------------------------- */

/* The presented key, from X-API-Key or Authorization: Bearer. Returns -1 when the request
 * carries more than one credential (ambiguous: refused rather than guessed). */
static int find_credential(const struct http_request *in, const char **out, size_t *len)
{
	int seen = 0;

	*out = NULL;
	for (size_t i = 0; i < in->n_headers; i++) {
		const struct http_header *h = &in->headers[i];
		const char *v = NULL;
		if (h->name_len == 9 && strcasecmp(h->name, "x-api-key") == 0) {
			v = h->value;
		} else if (h->name_len == 13 && strcasecmp(h->name, "authorization") == 0) {
			v = h->value;
			if (strncasecmp(v, "Bearer ", 7) == 0)
				v += 7;
			else
				v = ""; /* another scheme: not a fastgate key */
		} else {
			continue;
		}
		if (++seen > 1)
			return -1;
		while (*v == ' ')
			v++;
		*out = v;
	}
	if (*out) {
		*len = strlen(*out);
		while (*len && (*out)[*len - 1] == ' ')
			(*len)--;
	}
	return 0;
}

/* The path picks the route and may be forwarded, so it must mean the same thing to us and
 * to the upstream: no "." or ".." segments (also percent-encoded), no encoded "/" or "\"
 * (which some upstreams decode into a separator after we matched), no raw "\" and no
 * encoded NUL. */
bool proxy_path_is_clean(const char *path)
{
	const char *seg = path;

	/* one look for the two bytes that need a closer one: most paths have neither */
	for (const char *p = strpbrk(path, "%\\"); p; p = strpbrk(p + 1, "%\\"))
		if (*p == '\\' || strncasecmp(p, "%2f", 3) == 0 || strncasecmp(p, "%5c", 3) == 0 ||
		    strncmp(p, "%00", 3) == 0)
			return false;
	while (*seg) {
		size_t n = strcspn(seg, "/"), dots = 0, i = 0;

		while (i < n) {
			if (seg[i] == '.') {
				i++;
			} else if (n - i >= 3 && strncasecmp(seg + i, "%2e", 3) == 0) {
				i += 3;
			} else {
				break;
			}
			dots++;
		}
		if (i == n && (dots == 1 || dots == 2))
			return false;
		seg += n;
		if (*seg == '/')
			seg++;
	}
	return true;
}

/* An address at its auth_fail_limit gets 429 until its window ends, whatever key it
 * sends: looking the key up would cost what the limit saves, and a 429 that lifted for a
 * good key would tell a guesser when it had found one. */
static bool auth_failures_refused(struct proxy_req *px)
{
	const struct limit_rate *r = &px->gw->cfg->auth_fail_limit;
	/* no address held: no clock read on every request */
	int64_t wait = r->amount && authfail_size(px->gw->authfail)
	             ? authfail_wait(px->gw->authfail, px->client_ip, r->amount, r->per_s * 1000,
	                             mono_ms())
	             : 0;
	char ra[24], msg[160];

	if (wait <= 0)
		return false;
	snprintf(ra, sizeof(ra), "%lld", (long long)((wait + 999) / 1000));
	http_add_header(px->req, "Retry-After", ra);
	snprintf(msg, sizeof(msg), "too many requests from this address failed authentication; "
	         "retry in %s s", ra);
	proxy_reply_error(px, 429, "too_many_auth_failures", msg);
	return true;
}

/* A key that is unknown, revoked or expired: 401 with code and message. Under
 * auth_fail_limit it counts against its client's address (a missing key does not: see
 * ph_authenticate), and a failure past the limit, reached meanwhile by requests on other
 * loops, is answered 429 as auth_failures_refused does: exactly the limit's number get 401. */
static void auth_failed(struct proxy_req *px, const char *code, const char *message)
{
	const struct limit_rate *r = &px->gw->cfg->auth_fail_limit;

	if (r->amount &&
	    authfail_count(px->gw->authfail, px->client_ip, r->per_s * 1000, mono_ms()) >
	    (uint64_t)r->amount && auth_failures_refused(px))
		return;
	proxy_reply_error(px, 401, code, message);
}

/* 401 when the key is revoked or expired, 403 when it may not be used from the client's
 * address. Run again once the body is in: the key may have been revoked or narrowed
 * meanwhile (a key found stays in memory until the store closes, so the pointer needs no
 * second look-up). */
static enum phase_rc check_key(struct proxy_req *px)
{
	const struct key *k = px->key;

	if (k->revoked) {
		auth_failed(px, "revoked_api_key", "API key has been revoked");
		return PH_END;
	}
	if (!key_usable(k, time(NULL))) {
		auth_failed(px, "expired_api_key", "API key has expired");
		return PH_END;
	}
	if (k->n_allow_ips && !cidr_match(k->allow_ips, k->n_allow_ips, px->client_ip)) {
		proxy_reply_error(px, 403, "ip_not_allowed",
		                  "this API key may not be used from this address (its allow_ips)");
		return PH_END;
	}
	return PH_NEXT;
}

static enum phase_rc ph_authenticate(struct proxy_req *px)
{
	struct http_request *req = px->req;

	if (px->gw->stopping) {
		http_close_after(req);
		proxy_reply_error(px, 503, "shutting_down", "gateway is shutting down");
		return PH_END;
	}
	if (!req->path || !*req->path || !proxy_path_is_clean(req->path)) {
		proxy_reply_error(px, 400, "invalid_path", "request path is malformed");
		return PH_END;
	}
	/* a browser's preflight carries no key: answered here, audited like any request */
	if (cors_headers(px->gw->cfg, req)) {
		req = proxy_take_req(px);
		px->status = 204;
		http_reply_buf(req, 204, NULL, -1);
		return PH_END;
	}
	/* before any key is looked at: from elsewhere, a key is not even tried */
	if (px->gw->cfg->n_allow_ips &&
	    !cidr_match(px->gw->cfg->allow_ips, px->gw->cfg->n_allow_ips, px->client_ip)) {
		proxy_reply_error(px, 403, "ip_not_allowed",
		                  "requests from this address are not allowed (allow_ips)");
		return PH_END;
	}
	if (auth_failures_refused(px))
		return PH_END;
	/* not counted as failures: no key (a browser's preflight, a health probe, a client
	 * not yet set up) and two keys are mistakes, not guesses */
	if (find_credential(req, &px->secret, &px->secret_len) < 0) {
		proxy_reply_error(px, 401, "ambiguous_credentials",
		                  "send exactly one API key (X-API-Key or Authorization: Bearer)");
		return PH_END;
	}
	if (!px->secret || px->secret_len == 0) {
		proxy_reply_error(px, 401, "missing_api_key",
		                  "no API key: send X-API-Key or Authorization: Bearer");
		return PH_END;
	}
	px->key = keystore_lookup_memo(px->gw->keys, px->secret, px->secret_len,
	                               http_conn_data(req), px->gw->hasher);
	if (!px->key) {
		auth_failed(px, "invalid_api_key", "invalid API key");
		return PH_END;
	}
	px->key_id = px->key->id;
	px->key_name = dup_or_null(px->key->name);
	return check_key(px);
}

/* ---- body ---------------------------------------------------------------------------- */

static void body_read(void *arg, int status)
{
	struct proxy_req *px = arg;

	if (status) {
		proxy_reply_error(px, status,
		                  status == 413 ? "request_too_large" :
		                  status == 408 ? "request_timeout" : "bad_request",
		                  status == 413 ? "request body too large" :
		                  status == 408 ? "request body not received in time" :
		                  "malformed request body");
		proxy_finish(px);
		return;
	}
	px->body = http_take_body(px->req, &px->body_len);
	/* the key again: it may have been revoked while the body was on its way */
	if (check_key(px) == PH_END) {
		proxy_finish(px);
		return;
	}
	px->phase++;
	run_phases(px);
}

static enum phase_rc ph_body(struct proxy_req *px)
{
	int st = http_read_body(px->req, body_read, px);

	if (st == HTTP_BODY_PENDING)
		return PH_WAIT;
	/* already in (a small body comes with its head): on at once, no loop round */
	if (st == HTTP_BODY_READY) {
		px->body = http_take_body(px->req, &px->body_len);
		return PH_NEXT;
	}
	body_read(px, st);   /* could not be read: answers and finishes */
	return PH_WAIT;
}

/* ---- parse, match, policy, cache --------------------------------------------------- */

/* The one reading of the body that every later step uses: routing, the audit's model,
 * the rewrites. A body that is not JSON is forwarded as it is unless a route needs to
 * read it; a JSON object with a duplicate key is refused whatever the route, because
 * the upstream may resolve it differently from us (the model billed is not the model
 * audited). */
static enum phase_rc ph_parse(struct proxy_req *px)
{
	struct reqjson *rj = &px->rj;

	px->rq.method = px->req->method_name;
	px->rq.path = px->req->path;
	px->rq.body_len = px->body_len;
	px->rq.body = px->body_len ? px->body : "";
	if (px->body_len == 0)
		return PH_NEXT;
	px->rq.rj = rj;
	switch (reqjson_parse(rj, px->body, px->body_len)) {
	case RJ_OK:
		break;
	case RJ_DUPLICATE_KEY:
		proxy_reply_error(px, 400, "duplicate_key",
		                  "request body has the same JSON key twice in one object");
		return PH_END;
	case RJ_TOO_DEEP:
		/* not read, so not known to be free of a duplicate key either: refused */
		proxy_reply_error(px, 400, "invalid_json", "request body is nested too deeply");
		return PH_END;
	case RJ_NOMEM:
		proxy_reply_error(px, 500, "internal_error", "out of memory");
		return PH_END;
	default:
		return PH_NEXT;
	}
	if (rj->model) {
		size_t n = rj->model->str_len < sizeof(px->model) - 1 ? rj->model->str_len
		                                                       : sizeof(px->model) - 1;
		memcpy(px->model, rj->model->str, n);
		px->model[n] = '\0';
	}
	px->client_stream = rj->stream;
	px->include_usage = rj->include_usage;
	return PH_NEXT;
}

bool proxy_key_allows_route(const struct key *k, const char *route)
{
	if (k->n_routes == 0)
		return true;
	for (size_t i = 0; i < k->n_routes; i++)
		if (strcmp(k->routes[i], route) == 0)
			return true;
	return false;
}

/* src as printable ASCII for a message: other bytes become '?', and a long one ends in
 * "..." (an echo of the client's bytes must stay valid JSON and one line). */
static const char *printable(char *out, size_t cap, const char *src)
{
	size_t n = 0;

	for (; *src && n + 4 < cap; src++)
		out[n++] = *src >= 0x20 && *src < 0x7f ? *src : '?';
	if (*src) {
		memcpy(out + n, "...", 3);
		n += 3;
	}
	out[n] = '\0';
	return out;
}

/* The 404 says what found no route: the model when the body named one, and the method and
 * the path. */
static void no_route(struct proxy_req *px)
{
	char msg[400], path[160], model[136];

	printable(path, sizeof(path), px->req->path);
	if (px->model[0])
		snprintf(msg, sizeof(msg), "no route for model \"%s\" on %s %s",
		         printable(model, sizeof(model), px->model), px->method, path);
	else
		snprintf(msg, sizeof(msg), "no route matches %s %s", px->method, path);
	proxy_reply_error(px, 404, "no_route", msg);
}

static enum phase_rc ph_match(struct proxy_req *px)
{
	switch (route_match(px->table, &px->rq, &px->route)) {
	case ROUTE_MATCHED:
		break;
	case ROUTE_BAD_BODY:
		proxy_reply_error(px, 400, "invalid_json", "request body must be a JSON object");
		return PH_END;
	default:
		if (selfserve_answer(px))
			return PH_END;
		no_route(px);
		return PH_END;
	}
	if (!proxy_key_allows_route(px->key, px->route->name)) {
		proxy_reply_error(px, 403, "route_not_allowed", "this API key may not use this route");
		return PH_END;
	}
	return PH_NEXT;
}

/* Spend control (policy.c): the estimate reserved, or the refusal answered. */
static enum phase_rc ph_policy(struct proxy_req *px)
{
	return policy_admit(px) ? PH_NEXT : PH_END;
}

/* No response cache yet: the seam where its lookup goes. */
static enum phase_rc ph_cache(struct proxy_req *px)
{
	(void)px;
	return PH_NEXT;
}

/* ---- forward -------------------------------------------------------------------------- */

/* forward.c runs the attempt loop; relay.c ends the request once an attempt answers. */
static enum phase_rc ph_forward(struct proxy_req *px)
{
	return forward_begin(px) ? PH_WAIT : PH_END;
}

/* ---- the pipeline -------------------------------------------------------------------- */

static const struct {
	const char *name;
	enum phase_rc (*run)(struct proxy_req *px);
} phases[] = {
	{ "authenticate", ph_authenticate },
	{ "body", ph_body },
	{ "parse", ph_parse },
	{ "match", ph_match },
	{ "policy", ph_policy },
	{ "cache", ph_cache },
	{ "forward", ph_forward },
};
#define N_PHASES (sizeof(phases) / sizeof(phases[0]))

/* Run phases from px->phase on until one waits or ends the request. A waiting phase's
 * event moves px->phase on and calls this again. */
static void run_phases(struct proxy_req *px)
{
	while (px->phase < N_PHASES) {
		enum phase_rc rc = phases[px->phase].run(px);

		if (rc == PH_WAIT)
			return;
		if (rc == PH_END) {
			proxy_finish(px);
			return;
		}
		px->phase++;
	}
}

static struct proxy_req *proxy_req_new(struct gateway *gw, struct http_request *req)
{
	struct proxy_req *px = spare_take(gw);
	struct timespec wall;
	const char *ip;
	size_t n;

	if (!px)
		return NULL;
	px->gw = gw;
	px->req = req;
	px->att.px = px;
	px->att.ttfb_s = -1;
	px->att.target = -1;
	clock_gettime(CLOCK_MONOTONIC, &px->t_start);
	clock_gettime(CLOCK_REALTIME, &wall);
	px->started_at = (double)wall.tv_sec + (double)wall.tv_nsec / 1e9;
	px->method = req->method_name;
	px->head_request = req->method == HTTP_HEAD;
	/* Anthropic's SDK reads errors in its own shape: the gateway's too, on its API */
	req->anthropic_errors = strcmp(req->path, "/v1/messages") == 0;
	/* the path only: a query string can carry credentials (?api_key=...), and the audit
	 * trail must never hold one */
	px->path = dup_or_null(req->path);
	if (gw->cfg->n_trusted_proxies) {
		forwarded_client_ip(gw->cfg, req, px->client_ip, sizeof(px->client_ip));
	} else {
		ip = http_client_ip(req);
		n = strlen(ip);   /* an address as text: shorter than client_ip, but bound it */
		if (n > sizeof(px->client_ip) - 1)
			n = sizeof(px->client_ip) - 1;
		memcpy(px->client_ip, ip, n);
		px->client_ip[n] = '\0';
	}
	memcpy(px->id, req->id, REQID_LEN + 1);
	sse_scan_init(&px->scan, false);
	usage_reset(&px->usage);
	px->table = gw->routes;
	route_table_ref(px->table);
	if (!px->out)
		px->out = evbuffer_new();   /* a spare brings its own, emptied */
	evtimer_assign(&px->timer_ev, gw->base, relay_timer_cb, px);
	event_assign(&px->resume_ev, gw->base, -1, 0, relay_resume_cb, px);
	event_assign(&px->finish_ev, gw->base, -1, 0, finish_cb, px);
	CTR_ADD(gw->stats.inflight, 1);
	if (!px->out) {
		px->status = 500;   /* what the caller answers */
		proxy_finish(px);
		return NULL;
	}
	/* from here on the request ends through proxy_finish() */
	http_watch_client(req, client_closed_cb, px);
	return px;
}

void proxy_request(void *arg, struct http_request *req)
{
	struct proxy_req *px = proxy_req_new(arg, req);

	if (!px) {
		http_send_error(req, 500, "internal_error", "out of memory");
		return;
	}
	run_phases(px);
}

size_t proxy_conn_data_size(void)
{
	return sizeof(struct key_memo);
}

void proxy_conn_closed(void *arg, void *conn_data)
{
	(void)arg;
	key_memo_clear(conn_data);
}
