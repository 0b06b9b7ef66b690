/* The forward phase: the attempt loop. Picks a target of the route's pool (pool.h), builds
 * the upstream request for it (the target's path, the cleaned headers, its key, its model)
 * as the bytes of an HTTP/1.1 head and starts it through the transport the target was
 * bound to when the routes loaded. When an attempt fails before anything of the answer
 * reached the client, and the route's retry policy allows, the next attempt goes to a
 * target not yet tried, then to the fallback routes, all inside one deadline; each
 * attempt's outcome goes to its target's breaker and to the audit. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <event2/event.h>

#include "anthropic.h"
#include "log.h"

#include "forwarded.h"
#include "proxy.h"
#include "request.h"
#include "usage.h"
#include "util.h"

#define CHAT_COMPLETIONS "/v1/chat/completions"
#define MESSAGES "/v1/messages"

/* Headers no upstream gets from the client, in any case:
 *  - host, and the client's credentials: x-api-key, authorization, api-key (Azure's key
 *    header: only the route's key may reach an upstream);
 *  - what the gateway writes itself: x-forwarded-for and x-forwarded-proto (forwarded.h),
 *    x-request-id;
 *  - hop-by-hop (RFC 9110 7.6.1) and framing, as the transport frames the request itself:
 *    connection, keep-alive, proxy-connection, proxy-authorization, proxy-authenticate, te,
 *    trailer, transfer-encoding, upgrade, content-length, expect;
 *  - accept-encoding, replaced by identity: the gateway reads every answer (usage), so it
 *    must not be compressed on the way.
 * By length, then each name of that length by its first byte (HNAME_IS): a header that
 * passes costs a few instructions, where a walk of the whole list cost ~140 a header. */
static bool always_stripped(const char *n, size_t nl)
{
	switch (nl) {
	case 2: return HNAME_IS(n, nl, "te");
	case 4: return HNAME_IS(n, nl, "host");
	case 6: return HNAME_IS(n, nl, "expect");
	case 7: return HNAME_IS(n, nl, "api-key") || HNAME_IS(n, nl, "trailer") ||
	               HNAME_IS(n, nl, "upgrade");
	case 9: return HNAME_IS(n, nl, "x-api-key");
	case 10: return HNAME_IS(n, nl, "connection") || HNAME_IS(n, nl, "keep-alive");
	case 12: return HNAME_IS(n, nl, "x-request-id");
	case 13: return HNAME_IS(n, nl, "authorization");
	case 14: return HNAME_IS(n, nl, "content-length");
	case 15: return HNAME_IS(n, nl, "x-forwarded-for") || HNAME_IS(n, nl, "accept-encoding");
	case 16: return HNAME_IS(n, nl, "proxy-connection");
	case 17: return HNAME_IS(n, nl, "x-forwarded-proto") ||
	                HNAME_IS(n, nl, "transfer-encoding");
	case 18: return HNAME_IS(n, nl, "proxy-authenticate");
	case 19: return HNAME_IS(n, nl, "proxy-authorization");
	default: return false;
	}
}

/* strcasecmp(a, b) == 0 for names from the route file: their first bytes, folded as
 * ASCII letters fold, must agree before the call. Never a wrong answer: two bytes that are
 * equal in any case are equal after | 0x20 too. */
static bool same_name(const char *a, const char *b)
{
	return ((unsigned char)a[0] | 0x20) == ((unsigned char)b[0] | 0x20) && strcasecmp(a, b) == 0;
}

bool proxy_listed_in_connection(const char *conn, size_t conn_len, const char *name, size_t nl)
{
	const char *p = conn, *end = conn + conn_len;

	while (p < end) {
		while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
			p++;
		const char *e = p;
		while (e < end && *e != ',' && *e != ' ' && *e != '\t')
			e++;
		if ((size_t)(e - p) == nl && strncasecmp(p, name, nl) == 0)
			return true;
		p = e;
	}
	return false;
}

/* Stripped for another reason than its name alone; seldom reached (most headers a client
 * sends are in always_stripped or end here at the memchr). */
static bool stripped_otherwise(const char *name, size_t nl, char *const *extra, size_t n_extra,
                               const char *connection, size_t connection_len)
{
	/* X_API_Key could become X-API-Key behind a CGI-style upstream: dropped, as nginx does */
	if (memchr(name, '_', nl))
		return true;
	for (size_t i = 0; i < n_extra; i++)
		if (same_name(name, extra[i]))
			return true;
	return connection && proxy_listed_in_connection(connection, connection_len, name, nl);
}

/* Inline in the loop over the client's headers: a call a header cost ~20 instructions of
 * saving and restoring registers alone. */
static inline bool header_stripped(const char *name, size_t nl, char *const *extra,
                                   size_t n_extra, const char *connection,
                                   size_t connection_len)
{
	return always_stripped(name, nl) ||
	       stripped_otherwise(name, nl, extra, n_extra, connection, connection_len);
}

int proxy_header_stripped(const char *name, char *const *extra, size_t n_extra,
                          const char *connection)
{
	return header_stripped(name, strlen(name), extra, n_extra, connection,
	                       connection ? strlen(connection) : 0);
}

/* ---- the head ------------------------------------------------------------------------ */

/* Room for n more bytes at the end of the head: where they go, or NULL when memory ran
 * out. The test is inline: the head's buffer, kept from request to request, is nearly
 * always big enough, and a buf_grow call a header was ~15 instructions each. */
static char *head_room(struct attempt *a, size_t n)
{
	if (a->head_len + n > a->head_cap &&
	    buf_grow(&a->head, &a->head_cap, a->head_len + n, 1024) < 0)
		return NULL;
	return a->head + a->head_len;
}

static char *put(char *w, const char *s, size_t n)
{
	memcpy(w, s, n);
	return w + n;
}

/* A literal: its length known to the compiler, its memcpy a few moves. */
#define PUT_LIT(w, lit) put((w), "" lit, sizeof(lit) - 1)

/* The bytes of "name: value\r\n". */
#define HEADER_LEN(nl, vl) ((nl) + (vl) + 4)

/* The head ends at w. */
static void head_end_at(struct attempt *a, const char *w)
{
	a->head_len = (size_t)(w - a->head);
}

/* The client's path less the route's strip_prefix ("/" when nothing is left). */
static const char *client_path(const struct route *r, const struct http_request *in)
{
	const char *p = in->path;
	size_t sl = r->strip_prefix ? strlen(r->strip_prefix) : 0;

	if (sl && strncmp(p, r->strip_prefix, sl) == 0 && (p[sl] == '/' || p[sl] == '\0'))
		p += sl;
	return *p ? p : "/";
}

/* "METHOD target HTTP/1.1\r\nHost: host\r\n": the target is the upstream's path (or the
 * client's, cpath: less strip_prefix) and the client's query. An Azure upstream's path is
 * made from its deployment and api_version (DESIGN.md, Providers): the client's /v1/X
 * becomes /openai/deployments/DEP/X?api-version=V, or /openai/v1/X for api_version v1. */
static int head_start(struct attempt *a, const struct route_target *t,
                      const struct http_request *in, const char *cpath)
{
	const char *p, *pre = "", *dep = "", *ver = NULL, *query = in->query;
	size_t ml = strlen(in->method_name), hl = strlen(t->host), prl = 0, dl = 0, pl, vl = 0, ql;
	char *w;

	p = t->path ? t->path : cpath;
	if (a->xlate == XLATE_ANTHROPIC && !t->path) {
		p = "/v1/messages";   /* the Messages API, whatever OpenAI path was asked */
		query = NULL;
	} else if (a->xlate == XLATE_MESSAGES && !t->path) {
		p = CHAT_COMPLETIONS;  /* and the other way: an Azure upstream maps it on below */
		query = NULL;
	}
	if (t->provider == PROVIDER_AZURE) {
		if (strncmp(p, "/v1", 3) == 0 && (p[3] == '/' || p[3] == '\0'))
			p += 3;
		if (strcmp(t->api_version, "v1") == 0) {
			pre = "/openai/v1";
			prl = sizeof("/openai/v1") - 1;
		} else {
			pre = "/openai/deployments/";
			prl = sizeof("/openai/deployments/") - 1;
			dep = t->deployment;
			dl = strlen(dep);
			ver = t->api_version;
			vl = strlen(ver) + sizeof("api-version=") - 1;
		}
	}
	pl = strlen(p);
	ql = query ? strlen(query) + 1 : 0;
	a->head_len = 0;
	if (!(w = head_room(a, ml + prl + dl + pl + vl + ql + hl + 22)))
		return -1;
	w = put(w, in->method_name, ml);
	*w++ = ' ';
	w = put(w, pre, prl);
	w = put(w, dep, dl);
	w = put(w, p, pl);
	if (ver) {
		w = PUT_LIT(w, "?api-version=");
		w = put(w, ver, vl - 12);
	}
	if (query) {
		*w++ = ver ? '&' : '?';
		w = put(w, query, ql - 1);
	}
	w = PUT_LIT(w, " HTTP/1.1\r\nHost: ");
	w = put(w, t->host, hl);
	head_end_at(a, PUT_LIT(w, "\r\n"));
	return 0;
}

/* The client's first Connection header (as http_find_header finds it), or NULL. */
static const char *connection_header(const struct http_request *in)
{
	for (size_t k = 0; k < in->n_headers; k++)
		if (HNAME_IS(in->headers[k].name, in->headers[k].name_len, "connection"))
			return in->headers[k].value;
	return NULL;
}

/* A header the route adds itself (add_headers): the client's of that name gives way. */
static bool route_adds(const struct route *r, const char *name)
{
	for (size_t i = 0; i < r->n_add_headers; i++)
		if (same_name(name, r->add_headers[i].name))
			return true;
	return false;
}

static int head_add_header(struct attempt *a, const char *name, size_t nl, const char *value,
                           size_t vl)
{
	char *w = head_room(a, HEADER_LEN(nl, vl));

	if (!w)
		return -1;
	head_end_at(a, put_header_line(w, name, nl, value, vl));
	return 0;
}

/* The client's headers less the stripped ones, then the route's add_headers. */
static int head_passed_headers(struct attempt *a, const struct route *r,
                               const struct http_request *in)
{
	const char *conn = connection_header(in);
	size_t conn_len = conn ? strlen(conn) : 0;

	for (size_t k = 0; k < in->n_headers; k++) {
		const struct http_header *h = &in->headers[k];

		if (header_stripped(h->name, h->name_len, r->strip_headers, r->n_strip_headers, conn,
		                    conn_len) || route_adds(r, h->name))
			continue;
		if (head_add_header(a, h->name, h->name_len, h->value, strlen(h->value)) < 0)
			return -1;
	}
	for (size_t i = 0; i < r->n_add_headers; i++)
		if (head_add_header(a, r->add_headers[i].name, strlen(r->add_headers[i].name),
		                    r->add_headers[i].value, strlen(r->add_headers[i].value)) < 0)
			return -1;
	return 0;
}

/* The upstream's key as its provider takes it: the lengths of what put_key writes. */
struct key_headers {
	const char *key;              /* the target's api_key, or NULL */
	size_t kl;
	const char *version;          /* anthropic-version to add, or NULL */
	size_t vl;
};

static size_t key_headers_of(struct key_headers *k, const struct attempt *a,
                             const struct route_target *t, const struct http_request *in)
{
	k->key = t->api_key;
	k->kl = k->key ? strlen(k->key) : 0;
	k->version = NULL;
	k->vl = 0;
	if (t->provider == PROVIDER_ANTHROPIC) {
		/* the client's anthropic-version is kept on /v1/messages, which it wrote for */
		if (a->xlate != XLATE_NONE || !http_find_header(in, "anthropic-version")) {
			k->version = t->api_version;
			k->vl = strlen(k->version);
		}
		return (k->key ? HEADER_LEN(9, k->kl) : 0) + (k->version ? HEADER_LEN(17, k->vl) : 0);
	}
	if (!k->key)
		return 0;
	if (t->provider == PROVIDER_AZURE)
		return HEADER_LEN(7, k->kl);
	return sizeof("Authorization: Bearer \r\n") - 1 + k->kl;
}

static char *put_key(char *w, const struct key_headers *k, const struct route_target *t)
{
	if (t->provider == PROVIDER_ANTHROPIC) {
		if (k->key)
			w = put_header_line(w, "x-api-key", 9, k->key, k->kl);
		if (k->version)
			w = put_header_line(w, "anthropic-version", 17, k->version, k->vl);
	} else if (k->key && t->provider == PROVIDER_AZURE) {
		w = put_header_line(w, "api-key", 7, k->key, k->kl);
	} else if (k->key) {
		w = PUT_LIT(w, "Authorization: Bearer ");
		w = put(w, k->key, k->kl);
		w = PUT_LIT(w, "\r\n");
	}
	return w;
}

/* What the gateway writes after them: the target's key, X-Request-Id, Accept-Encoding,
 * X-Forwarded-For and -Proto, then Content-Length (when with_length) and the blank line
 * that ends the head. Measured first, so that the head grows once for all of it. */
static int head_finish(struct attempt *a, const struct route_target *t,
                       const struct http_request *in, const char *id, bool with_length,
                       size_t body_len)
{
	const struct config *cfg = a->px->gw->cfg;
	struct key_headers k;
	char *chain = forwarded_for(cfg, in), *w;
	const char *xff = chain ? chain : http_client_ip(in);
	const char *xfp = forwarded_proto(cfg, in);
	size_t xffl = strlen(xff), xfpl = strlen(xfp);
	size_t need = key_headers_of(&k, a, t, in) + HEADER_LEN(12, REQID_LEN) +
	              sizeof("Accept-Encoding: identity\r\n") - 1 + HEADER_LEN(15, xffl) +
	              HEADER_LEN(17, xfpl) +
	              (with_length ? sizeof("Content-Length: \r\n\r\n") - 1 + 20 : 2);

	if (!(w = head_room(a, need))) {
		free(chain);
		return -1;
	}
	w = put_key(w, &k, t);
	w = put_header_line(w, "X-Request-Id", 12, id, REQID_LEN);
	w = PUT_LIT(w, "Accept-Encoding: identity\r\n");
	w = put_header_line(w, "X-Forwarded-For", 15, xff, xffl);
	w = put_header_line(w, "X-Forwarded-Proto", 17, xfp, xfpl);
	free(chain);
	if (with_length) {
		w = PUT_LIT(w, "Content-Length: ");
		w += fmt_dec(w, body_len);
		w = PUT_LIT(w, "\r\n");
	}
	head_end_at(a, PUT_LIT(w, "\r\n"));
	return 0;
}

/* Safe methods may be sent again if a reused connection dies before any answer; anything
 * else may have been acted on (an LLM run, billed) and is never sent twice on its own. */
/* Sent to Anthropic as max_tokens when the client asked for no limit and the model table
 * does not know the model: its API requires one. */
#define ANTHROPIC_DEFAULT_MAX_TOKENS 4096


static bool replayable(enum http_method m)
{
	return m == HTTP_GET || m == HTTP_HEAD || m == HTTP_OPTIONS;
}

/* ---- the body ------------------------------------------------------------------------ */

/* Rewrite the body when the route adds fields, or when a stream must be asked for its
 * usage: the client's bytes with members spliced in, never a re-serialised tree.
 * -1: a rewrite was needed but the body is not a JSON object, or out of memory. */
static int prepare_body(struct proxy_req *px)
{
	const struct route *r = px->route;
	/* a request without a body (GET /v1/models) has nothing to add fields to */
	bool add_fields = r->n_body_adds > 0 && px->body_len > 0;
	/* Anthropic's streams report usage on their own, and its API refuses stream_options */
	bool inject = r->stream_usage && px->client_stream && !px->include_usage &&
	              !route_has_provider(r, PROVIDER_ANTHROPIC);
	size_t len;

	free(px->body_rewritten);
	px->body_rewritten = NULL;
	px->rewritten_len = 0;
	px->usage_injected = false;
	sse_scan_free(&px->scan);
	sse_scan_init(&px->scan, false);
	if (!add_fields && !inject)
		return 0;
	if (px->rj.result != RJ_OK || px->body_len == 0)
		return add_fields ? -1 : 0;
	px->body_rewritten = reqjson_splice(&px->rj, px->body, px->body_len, r->body_adds,
	                                    add_fields ? r->n_body_adds : 0, inject, &len);
	if (!px->body_rewritten)
		return len == 0 ? 0 : -1;   /* 0: the client sent every field */
	px->rewritten_len = len;
	/* a model the route adds is the model the upstream runs: the audit says so */
	if (!px->model[0] && add_fields) {
		json_t *m = json_object_get(r->add_body_fields, "model");
		if (json_is_string(m))
			snprintf(px->model, sizeof(px->model), "%s", json_string_value(m));
	}
	if (inject) {
		px->usage_injected = true;
		sse_scan_init(&px->scan, true);
	}
	return 0;
}

/* `model:` of a target: the body with its "model" value replaced (or added), every other
 * byte kept. NULL when the body is not a JSON object (it goes as it is) or out of memory. */
static char *body_with_model(const char *body, size_t len, const char *model, size_t *out_len)
{
	struct reqjson rj;
	const struct rj_field *f;
	char *lit = NULL, *out = NULL;
	size_t ll = 0;

	if (reqjson_parse(&rj, body, len) != RJ_OK)
		goto done;
	/* the value as a JSON string: the route file allows no control characters in it */
	lit = malloc(2 * strlen(model) + 3);
	if (!lit)
		goto done;
	lit[ll++] = '"';
	for (const char *p = model; *p; p++) {
		if (*p == '"' || *p == '\\')
			lit[ll++] = '\\';
		lit[ll++] = *p;
	}
	lit[ll++] = '"';
	if ((f = reqjson_get(&rj, "model"))) {
		*out_len = len - f->val_len + ll;
		out = malloc(*out_len);
		if (out) {
			memcpy(out, body, f->val_off);
			memcpy(out + f->val_off, lit, ll);
			memcpy(out + f->val_off + ll, body + f->val_off + f->val_len,
			       len - f->val_off - f->val_len);
		}
	} else {
		struct rj_add add = { "model", lit, ll };

		out = reqjson_splice(&rj, body, len, &add, 1, false, out_len);
	}
done:
	free(lit);
	reqjson_free(&rj);
	return out;
}

/* ---- one attempt ---------------------------------------------------------------------- */

/* ";url=what:ms" onto the request's attempts column, whole or not at all: what is the
 * answer's status when one came (status >= 100), else the outcome's name. By hand:
 * snprintf cost ~950 instructions a request here. */
static void attempt_log_add(struct proxy_req *px, const char *url, long status,
                            const char *outcome, int64_t ms)
{
	size_t ul = strlen(url), ol = status >= 100 ? 0 : strlen(outcome);
	size_t need = px->attempt_log_len + 1 + ul + 1 + ol + 20 + 1 + 20 + 1;
	char *w;

	if (buf_grow(&px->attempt_log, &px->attempt_log_cap, need, 256) < 0)
		return;
	w = px->attempt_log + px->attempt_log_len;
	if (px->attempt_log_len)
		*w++ = ';';
	w = put(w, url, ul);
	*w++ = '=';
	w = status >= 100 ? w + fmt_dec(w, (uint64_t)status) : put(w, outcome, ol);
	*w++ = ':';
	w += fmt_dec(w, (uint64_t)(ms < 0 ? 0 : ms));
	*w = '\0';
	px->attempt_log_len = (size_t)(w - px->attempt_log);
}

void forward_attempt_end(struct proxy_req *px, enum attempt_outcome o, long status,
                         int64_t retry_after_s)
{
	struct attempt *a = &px->att;
	struct route *r = (struct route *)px->route;   /* its pool's live state is mutable */
	int64_t now;

	/* before the clock: proxy_finish calls it again for every request that got this far */
	if (a->ended || a->target < 0)
		return;
	now = mono_ms();
	a->ended = true;
	pool_attempt_end(r, (size_t)a->target, now, a->pass, o, retry_after_s,
	                 a->ttfb_s >= 0 ? (a->ttfb_s - a->started_s) * 1000.0 : -1);
	/* the status when an answer came, else what went wrong */
	if (status < 100 || o == OUTCOME_TIMEOUT || o == OUTCOME_RESET || o == OUTCOME_PROTOCOL)
		status = 0;
	attempt_log_add(px, r->targets[a->target].url, status, attempt_outcome_name(o),
	                now - a->started_ms);
}

/* What an attempt holds for its target alone: its body and its translator. */
static void attempt_drop(struct attempt *a)
{
	free(a->body);
	a->body = NULL;
	if (a->anth) {
		anth_stream_free(a->anth);
		free(a->anth);
		a->anth = NULL;
	}
	if (a->msgin) {
		msgin_stream_free(a->msgin);
		free(a->msgin);
		a->msgin = NULL;
	}
	free(a->xl);
	a->xl = NULL;
}

void forward_attempt_clear(struct attempt *a)
{
	attempt_drop(a);
}

void forward_attempt_free(struct attempt *a)
{
	attempt_drop(a);
	free(a->head);
	free(a->up_raw);
	a->head = a->up_raw = NULL;
}

/* Make the attempt ready for a new target: the buffers stay, their contents go. */
static void attempt_reset(struct attempt *a)
{
	struct proxy_req *px = a->px;
	char *head = a->head, *up_raw = a->up_raw;
	size_t head_cap = a->head_cap, up_raw_cap = a->up_raw_cap;

	attempt_drop(a);
	memset(a, 0, sizeof(*a));
	a->px = px;
	a->head = head;
	a->head_cap = head_cap;
	a->up_raw = up_raw;
	a->up_raw_cap = up_raw_cap;
	a->target = -1;
	a->ttfb_s = -1;
}

/* Build and start the attempt on target i: 0, or -1 when it could not be started. */
/* The request as Anthropic's Messages API takes it (anthropic.h); its max_tokens, when the
 * client sent none, from the model table. 0, or -1 with err set for the client (a 400). */
static int to_anthropic(struct proxy_req *px, const struct route_target *t, const char *body,
                        size_t len, char *err, size_t errlen)
{
	struct attempt *a = &px->att;
	const struct model_info *mi = models_find(px->gw->models, t->model ? t->model : px->model);
	struct anth_req_opts o = {
		.model = t->model,
		.default_max_tokens = mi ? mi->default_output_tokens : ANTHROPIC_DEFAULT_MAX_TOKENS,
		.stream = px->client_stream,
	};
	int rc = anth_request(&o, body, len, &a->body, &a->body_len, err, errlen);

	if (rc == ANTH_NOMEM)
		snprintf(err, errlen, "out of memory");
	return rc == ANTH_OK ? 0 : -1;
}

static int attempt_start(struct proxy_req *px, int i, enum breaker_pass pass, int64_t now,
                         char *err, size_t errlen)
{
	const struct route *r = px->route;
	const struct route_target *t = &r->targets[i];
	const struct http_request *in = px->req;
	struct attempt *a = &px->att;
	enum http_method m = in->method;
	const char *body = px->body_rewritten ? px->body_rewritten : px->body;
	size_t body_len = px->body_rewritten ? px->rewritten_len : px->body_len;
	const char *cpath = client_path(r, in);   /* read once: the checks and the head's */
	size_t n;

	attempt_reset(a);
	/* chat completions to an Anthropic upstream are translated; a request the translation
	 * refuses is the client's mistake, answered before anything is sent */
	if (t->provider == PROVIDER_ANTHROPIC && strcmp(cpath, CHAT_COMPLETIONS) == 0) {
		a->xlate = XLATE_ANTHROPIC;
		if (to_anthropic(px, t, body, body_len, err, errlen) < 0)
			return -2;
		body = a->body;
		body_len = a->body_len;
	} else if (t->provider == PROVIDER_ANTHROPIC) {
		a->anth_read = true;   /* Anthropic's own API, passed: its usage read the same way */
	} else if (strcmp(cpath, MESSAGES) == 0) {
		/* Anthropic's API to an OpenAI upstream: the client's bytes as they came, not a
		 * body the route rewrote for OpenAI's API */
		struct msgin_req_opts o = { .model = t->model };
		bool stream;
		int rc;

		a->xlate = XLATE_MESSAGES;
		rc = msgin_request(&o, px->body, px->body_len, &a->body, &a->body_len, &stream, err,
		                   errlen);
		if (rc != MSGIN_OK) {
			if (rc == MSGIN_NOMEM)
				snprintf(err, errlen, "out of memory");
			return -2;
		}
		body = a->body;
		body_len = a->body_len;
	}
	a->target = i;
	a->pass = pass;
	a->started_ms = now;
	a->started_s = proxy_elapsed(px);
	px->tried |= (uint64_t)1 << i;
	px->route_attempts++;
	px->attempts++;
	pool_attempt_start((struct route *)r, (size_t)i);
	if (!a->xlate && t->model && body_len > 0 &&
	    (a->body = body_with_model(body, body_len, t->model, &n))) {
		body = a->body;
		body_len = n;
	}
	if (m == HTTP_HEAD)
		body_len = 0;
	if (head_start(a, t, in, cpath) < 0 || head_passed_headers(a, r, in) < 0 ||
	    head_finish(a, t, in, px->id,
	                body_len > 0 || m == HTTP_POST || m == HTTP_PUT || m == HTTP_PATCH,
	                body_len) < 0)
		return -1;
	a->x.rq.origin = t->origin;
	a->x.rq.host = t->host;
	a->x.rq.head = a->head;
	a->x.rq.head_len = a->head_len;
	a->x.rq.body = body;
	a->x.rq.body_len = body_len;
	a->x.rq.head_request = m == HTTP_HEAD;
	a->x.rq.replayable = replayable(m);
	a->x.rq.connect_timeout = r->timeout;
	a->x.rq.ca_file = t->ca_file;
	a->x.cb = &relay_callbacks;
	a->x.arg = a;
	if (tr_start(px->gw->transports[t->transport], &a->x) < 0)
		return -1;
	px->forwarded = true;
	forward_arm_timer(px, r->timeout);
	return 0;
}

/* ---- the loop ------------------------------------------------------------------------- */

/* The timer the deadline cut short has fired, or the clock says so. The flag, not the
 * clock alone: the timer may fire a few milliseconds before a coarse clock reaches the
 * deadline, and another attempt then would be one past it. */
static bool deadline_passed(const struct proxy_req *px, int64_t now)
{
	return px->deadline_ms && (px->deadline_hit || now >= px->deadline_ms);
}

/* A fallback route this request may use: enabled, allowed for its key, with a target
 * that takes requests now. */
static const struct route *fallback_usable(const struct proxy_req *px, size_t k, int64_t now)
{
	const struct route *f = route_table_find(px->table, px->first_route->fallback[k]);

	if (!f || !f->enabled || !proxy_key_allows_route(px->key, f->name) ||
	    !pool_route_available(f, now))
		return NULL;
	return f;
}

/* Is there a target left to try: in this route within its attempts, or a fallback? */
static bool something_left(const struct proxy_req *px, int64_t now)
{
	const struct route *r = px->route;

	if (px->route_attempts < r->retry.attempts)
		for (size_t i = 0; i < r->n_targets; i++)
			if (!(px->tried & ((uint64_t)1 << i)) && pool_target_available(r, i, now))
				return true;
	for (size_t k = px->next_fallback; k < px->first_route->n_fallback; k++)
		if (fallback_usable(px, k, now))
			return true;
	return false;
}

static bool outcome_listed(const struct route *r, enum attempt_outcome o, long status)
{
	for (size_t i = 0; i < r->retry.n_codes; i++)
		if (r->retry.codes[i] == status)
			return true;
	switch (o) {
	case OUTCOME_CONNECT: return r->retry.on & RETRY_ON_CONNECT;
	case OUTCOME_TIMEOUT: return r->retry.on & RETRY_ON_TIMEOUT;
	case OUTCOME_RESET: return r->retry.on & RETRY_ON_RESET;
	case OUTCOME_PROTOCOL: return r->retry.on & RETRY_ON_PROTOCOL;
	case OUTCOME_429: return r->retry.on & RETRY_ON_429;
	case OUTCOME_5XX: return r->retry.on & RETRY_ON_5XX;
	default: return false;
	}
}

bool forward_may_retry(struct proxy_req *px, enum attempt_outcome o, long status)
{
	int64_t now = mono_ms();

	if (px->started || !px->req || px->finished || deadline_passed(px, now))
		return false;
	/* every re-send is one the route asked for, for any method: an LLM call that may
	 * have run upstream costs money and must not run twice unasked */
	if (!outcome_listed(px->route, o, status))
		return false;
	return something_left(px, now);
}

/* Answer the request when nothing could be started: 503 when no target of the route (or
 * its fallbacks) was available at all, with the time until one is again. */
static void reply_unavailable(struct proxy_req *px, int64_t now)
{
	int64_t wait = pool_wait_ms(px->first_route, now);
	char ra[24], msg[256];

	for (size_t k = 0; k < px->first_route->n_fallback; k++) {
		const struct route *f = route_table_find(px->table, px->first_route->fallback[k]);
		int64_t w = f && f->enabled ? pool_wait_ms(f, now) : -1;

		if (w >= 0 && (wait < 0 || w < wait))
			wait = w;
	}
	/* every target drained: an operator's doing; no time to promise, so a modest one */
	snprintf(ra, sizeof(ra), "%lld", wait < 0 ? 10LL : (long long)((wait + 999) / 1000 ? (wait + 999) / 1000 : 1));
	snprintf(msg, sizeof(msg), "every upstream of route %s is unavailable (circuit open, drained or unhealthy); retry after %s s",
	         px->first_route->name, ra);
	if (px->req)
		http_add_header(px->req, "Retry-After", ra);
	px->error_kind = "unavailable";
	proxy_reply_error(px, 503, "upstream_unavailable", msg);
}

/* Start an attempt on the route's pool or, when it has nothing left, on the next fallback
 * route. false: nothing could start and the client has been answered. */
static bool attempt_next(struct proxy_req *px)
{
	int64_t now = mono_ms();

	for (;;) {
		const struct route *r = px->route;

		if (px->route_attempts < r->retry.attempts) {
			enum breaker_pass pass;
			int i = pool_pick((struct route *)r, px->tried, now, &pass);

			if (i >= 0) {
				char err[256];   /* only its string is read: no need to clear 256 bytes */
				int rc;

				err[0] = '\0';
				rc = attempt_start(px, i, pass, now, err, sizeof(err));
				if (rc == 0)
					return true;
				if (rc == -2) {
					/* nothing was sent: the target's breaker hears nothing of it */
					pool_release((struct route *)r, (size_t)i, pass);
					proxy_reply_error(px, 400, "invalid_request_error", err);
					return false;
				}
				forward_attempt_end(px, OUTCOME_ABANDONED, 0, -1);
				proxy_reply_error(px, 500, "internal_error", "could not start the upstream request");
				return false;
			}
		}
		if (px->next_fallback >= px->first_route->n_fallback)
			break;
		r = fallback_usable(px, px->next_fallback++, now);
		if (!r)
			continue;
		log_debug("request %s: route %s has no upstream left, falling back to %s", px->id,
		          px->route->name, r->name);
		px->route = r;
		px->tried = 0;
		px->route_attempts = 0;
		if (prepare_body(px) < 0) {
			proxy_reply_error(px, 400, "invalid_json", "request body must be a JSON object");
			return false;
		}
	}
	if (px->attempts == 0) {
		reply_unavailable(px, now);
	} else {
		/* a retry was judged possible, and by now nothing is left (a breaker moved) */
		long st = px->last_status == 429 || px->last_status >= 500 ? px->last_status : 502;

		proxy_reply_error(px, (int)st, px->error_kind ? px->error_kind : "upstream_error",
		                  "no upstream of the route could answer");
	}
	return false;
}

bool forward_begin(struct proxy_req *px)
{
	px->first_route = px->route;
	if (px->route->retry.deadline_s)
		px->deadline_ms = mono_ms() + (int64_t)px->route->retry.deadline_s * 1000;
	if (prepare_body(px) < 0) {
		proxy_reply_error(px, 400, "invalid_json", "request body must be a JSON object");
		return false;
	}
	if (px->route->log_bodies > 0) {
		const char *b = px->body_rewritten ? px->body_rewritten : px->body;
		size_t bl = px->body_rewritten ? px->rewritten_len : px->body_len;

		px->body_log = relay_body_for_audit(px, b, bl, px->secret, px->secret_len);
		px->answer_log = evbuffer_new();
	}
	return attempt_next(px);
}

void forward_retry(struct proxy_req *px)
{
	/* allocated on first use: most requests never retry, and an event embedded in every
	 * request made its allocation cross glibc's 2 KiB line where calloc's clearing costs
	 * three times as much. Out of memory aborts, as xmalloc does. */
	if (!px->retry_ev && !(px->retry_ev = event_new(px->gw->base, -1, 0, forward_retry_cb, px)))
		abort();
	event_active(px->retry_ev, 0, 0);
}

void forward_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proxy_req *px = arg;
	(void)fd; (void)what;

	if (!px->req) {           /* the client left while the retry waited */
		proxy_finish(px);
		return;
	}
	relay_reset(px);
	if (!attempt_next(px))
		proxy_finish(px);
}

void forward_arm_timer(struct proxy_req *px, int seconds)
{
	struct timeval tv = { seconds, 0 };

	/* the deadline bounds the attempts, up to the answer's head; not a running answer */
	px->timer_is_deadline = false;
	if (px->deadline_ms && px->att.ttfb_s < 0) {
		int64_t left = px->deadline_ms - mono_ms();

		if (left < 0)
			left = 0;
		if (left <= (int64_t)seconds * 1000) {
			tv.tv_sec = left / 1000;
			tv.tv_usec = (left % 1000) * 1000;
			px->timer_is_deadline = true;
		}
	}
	evtimer_add(&px->timer_ev, &tv);
}

bool forward_cancel(struct proxy_req *px)
{
	if (!px->att.x.active)
		return false;
	tr_cancel(&px->att.x);
	return true;
}
