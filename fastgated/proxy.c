/* The request path; see proxy.h. Order of checks follows DESIGN.md's status table:
 * 401 (key) before 404 (route) before 403 (key not allowed there) before 429 (rate). */
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <time.h>
#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include "gateway.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "reqid.h"
#include "audit.h"
#include "control.h"
#include "upconn.h"
#include "upstream.h"
#include "usage.h"
#include "util.h"

/* Streaming backpressure: pause the upstream when this much is queued for the client,
 * resume once it is down to a quarter. */
#define CLIENT_HIGH_WATER (256 * 1024)
#define CLIENT_LOW_WATER  (64 * 1024)
/* Answers up to this size with a Content-Length are sent in one piece; larger or
 * unknown-length answers (and every SSE stream) are relayed chunk by chunk. */
#define BUFFER_LIMIT (1024 * 1024)

struct proxy_req {
	struct gateway *gw;
	struct http_request *req;         /* NULL once ended or the client is gone */
	struct route_table *table;        /* referenced: the route outlives a reload */
	const struct route *route;
	int64_t key_id;
	char *key_name;
	char id[REQID_LEN + 1];
	const char *secret;               /* the client's key, in its request's headers */
	size_t secret_len;
	double started_at;                /* wall clock, for the audit */
	const char *method;               /* static: http.c's method table */
	char *path;                       /* as the client sent it, without the query */
	char client_ip[64];
	size_t bytes_in;
	char *body_log;                   /* log_bodies: the request body as forwarded */
	struct evbuffer *answer_log;      /* log_bodies: the answer as relayed, up to the cap */

	bool native;                      /* plain HTTP through upconn.c rather than curl */
	bool forwarded;                   /* a transfer to the upstream was started */
	struct upstream_xfer xfer;        /* curl: https and named hosts */
	struct curl_slist *headers;
	struct upconn_xfer up;            /* native: the request head is framed here */
	char *up_head;
	size_t up_head_len, up_head_cap;
	char *body;                       /* request body, taken from the connection */
	size_t body_len;
	char *body_rewritten;             /* when add_body_fields or usage injection changed it */
	char model[128];                  /* the request's "model", for the audit */
	bool client_stream;               /* the client asked for a stream */
	bool head_request;                /* HEAD: the answer has no body */
	bool sse;                         /* the answer is an event stream being scanned */
	struct sse_scan scan;             /* finds usage in a stream; strips what we injected */
	char *scan_out;                   /* scanner output buffer, reused per chunk */
	size_t scan_len, scan_cap;
	struct usage usage;
	char *url;

	char *up_raw;                     /* upstream response headers, "name\0value\0"...:
	                                   * one buffer, copied once into the reply */
	size_t up_raw_len, up_raw_cap;
	size_t up_ct, up_cl;              /* 1 + offset in up_raw of the first Content-Type
	                                   * and Content-Length value; 0 = none */
	struct evbuffer *out;             /* buffered answer, or one chunk to relay */
	long status;
	bool started;                     /* reply head sent to the client */
	bool streaming;
	bool stream_pending;              /* a stream whose head waits for its first bytes */
	bool paused;
	bool timed_out;
	bool finished;
	const char *error_kind;           /* upstream failure kind for metrics, or NULL */

	/* embedded, not allocated: three fewer mallocs per request */
	struct event timer_ev;            /* first byte, then idle between chunks */
	struct event resume_ev;           /* deferred curl_easy_pause(CONT) */
	struct event finish_ev;           /* deferred finish after the client vanished */
	struct timespec t_start;
	double ttfb_s;
	unsigned chunks;
	size_t bytes_out;
};

static double elapsed_since(const struct timespec *t0)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

/* A header name with its length: the lists below are checked for every header of every
 * request and answer, so only names of the same length are compared. */
struct hname {
	const char *s;
	size_t len;
};
#define HNAME(lit) { lit, sizeof(lit) - 1 }

static const struct hname always_stripped[] = {
	HNAME("host"), HNAME("x-api-key"), HNAME("authorization"), HNAME("x-forwarded-for"),
	HNAME("x-request-id"),
	/* hop-by-hop (RFC 9110 7.6.1) and framing: curl frames the upstream request itself */
	HNAME("connection"), HNAME("keep-alive"), HNAME("proxy-connection"),
	HNAME("proxy-authorization"), HNAME("proxy-authenticate"), HNAME("te"), HNAME("trailer"),
	HNAME("transfer-encoding"), HNAME("upgrade"), HNAME("content-length"), HNAME("expect"),
	{ NULL, 0 }
};

/* Response headers that describe the upstream hop rather than the answer, and our own
 * X-Request-Id, which replaces the upstream's. */
static const struct hname response_skipped[] = {
	HNAME("connection"), HNAME("keep-alive"), HNAME("transfer-encoding"),
	HNAME("content-length"), HNAME("proxy-connection"), HNAME("trailer"), HNAME("upgrade"),
	HNAME("te"), HNAME("x-request-id"), { NULL, 0 }
};

static bool name_listed(const char *name, size_t nl, const struct hname *list)
{
	for (; list->s; list++)
		if (list->len == nl && strncasecmp(name, list->s, nl) == 0)
			return true;
	return false;
}

/* Header names the client listed in Connection are hop-by-hop too. */
static bool listed_in_connection(const char *conn, const char *name, size_t nl)
{
	const char *p = conn;

	while (p && *p) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		const char *end = p;
		while (*end && *end != ',' && *end != ' ' && *end != '\t')
			end++;
		if ((size_t)(end - p) == nl && strncasecmp(p, name, nl) == 0)
			return true;
		p = end;
	}
	return false;
}

static int header_stripped(const char *name, size_t nl, char *const *extra, size_t n_extra,
                           const char *connection)
{
	if (name_listed(name, nl, always_stripped))
		return 1;
	for (size_t i = 0; i < n_extra; i++)
		if (strcasecmp(name, extra[i]) == 0)
			return 1;
	return connection && listed_in_connection(connection, name, nl);
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

int proxy_header_stripped(const char *name, char *const *extra, size_t n_extra,
                          const char *connection)
{
	return header_stripped(name, strlen(name), extra, n_extra, connection);
}

static void finish(struct proxy_req *px);

/* ---- replies to the client ------------------------------------------------------- */

/* Stop watching the client before an ending reply: the request is not ours afterwards. */
static struct http_request *take_req(struct proxy_req *px)
{
	struct http_request *req = px->req;

	if (req) {
		http_watch_client(req, NULL, NULL);
		http_on_written(req, NULL, NULL);
	}
	px->req = NULL;
	return req;
}

static void reply_error(struct proxy_req *px, int status, const char *code, const char *message)
{
	struct http_request *req = take_req(px);

	px->status = status;
	if (req)
		http_send_error(req, status, code, message);
}

/* The client cannot be told the stream broke except by ending the connection without the
 * closing chunk, so that it sees a truncated answer rather than a complete one. */
static void abort_client(struct proxy_req *px)
{
	struct http_request *req = take_req(px);

	/* chunks already relayed but still queued reach the client before the close */
	if (req)
		http_abort(req);
}

/* Walk the collected upstream headers: *off is the cursor; false at the end. */
static bool up_header_next(const struct proxy_req *px, size_t *off, const char **k, const char **v)
{
	if (*off >= px->up_raw_len)
		return false;
	*k = px->up_raw + *off;
	*v = *k + strlen(*k) + 1;
	*off = (size_t)(*v + strlen(*v) + 1 - px->up_raw);
	return true;
}

static int up_header_add(struct proxy_req *px, const char *name, size_t nl, const char *value, size_t vl)
{
	size_t need = px->up_raw_len + nl + vl + 2;

	if (buf_grow(&px->up_raw, &px->up_raw_cap, need, 512) < 0)
		return -1;
	memcpy(px->up_raw + px->up_raw_len, name, nl);
	px->up_raw[px->up_raw_len + nl] = '\0';
	memcpy(px->up_raw + px->up_raw_len + nl + 1, value, vl);
	px->up_raw[need - 1] = '\0';
	px->up_raw_len = need;
	return 0;
}

static void copy_response_headers(struct proxy_req *px)
{
	const char *k, *v;
	size_t off = 0;

	while (up_header_next(px, &off, &k, &v))
		if (!name_listed(k, (size_t)(v - 1 - k), response_skipped))
			http_add_header(px->req, k, v);
}

static void chunk_written_cb(void *arg)
{
	struct proxy_req *px = arg;

	if (px->paused && px->req && http_backlog(px->req) <= CLIENT_LOW_WATER)
		event_active(&px->resume_ev, 0, 0);
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proxy_req *px = arg;
	(void)fd; (void)what;

	if (!px->paused)
		return;
	px->paused = false;
	if (px->native)
		upconn_resume(&px->up);   /* may complete the transfer: nothing after this */
	else if (px->xfer.active)
		curl_easy_pause(px->xfer.easy, CURLPAUSE_CONT);
}

static bool xfer_active(const struct proxy_req *px)
{
	return px->native ? px->up.active : px->xfer.active;
}

static void xfer_cancel(struct proxy_req *px)
{
	if (px->native)
		upconn_cancel(&px->up);
	else
		upstream_cancel(px->gw->upstream, &px->xfer);
}

static void arm_timer(struct proxy_req *px, int seconds)
{
	struct timeval tv = { seconds, 0 };
	evtimer_add(&px->timer_ev, &tv);
}

/* Send the reply head and switch to relaying chunks. */
static void start_stream(struct proxy_req *px)
{
	copy_response_headers(px);
	http_on_written(px->req, chunk_written_cb, px);
	http_reply_start(px->req, (int)px->status);
	px->started = true;
	px->streaming = true;
	if (evbuffer_get_length(px->out) > 0)
		http_reply_chunk(px->req, px->out);
}

/* ---- curl callbacks (no multi calls, no frees in here) ---------------------------- */

/* The decimal number at s (after blanks), read no further than end; saturates at 10^18.
 * The status code and Content-Length of every answer go through it: strtol and strtoull
 * cost ~150 instructions each (locale, sign, base handling) where this takes a few. */
static uint64_t dec_at(const char *s, const char *end)
{
	uint64_t v = 0;

	while (s < end && (*s == ' ' || *s == '\t'))
		s++;
	for (; s < end && *s >= '0' && *s <= '9'; s++)
		if ((v = v * 10 + (uint64_t)(*s - '0')) >= 1000000000000000000ull)
			return 1000000000000000000ull;
	return v;
}

static size_t header_cb(char *line, size_t size, size_t n, void *arg)
{
	struct proxy_req *px = arg;
	size_t len = size * n;
	char *colon;
	size_t nl, vl;

	if (len >= 5 && line[0] == 'H' && memcmp(line, "HTTP/", 5) == 0) {
		/* a new status line ("HTTP/1.1 200 OK", "HTTP/2 200"): forget interim (1xx)
		 * headers, keep the code */
		const char *sp = memchr(line, ' ', len);
		px->up_raw_len = px->up_ct = px->up_cl = 0;
		px->status = sp ? (long)dec_at(sp + 1, line + len) : 0;
		return len;
	}
	if (len <= 2 && (line[0] == '\r' || line[0] == '\n')) {
		const char *ct, *cl;

		if (px->status < 200)
			return len;
		if (px->ttfb_s < 0)
			px->ttfb_s = elapsed_since(&px->t_start);
		if (!px->req)
			return 0; /* client gone: abort the transfer */
		ct = px->up_ct ? px->up_raw + px->up_ct - 1 : NULL;
		cl = px->up_cl ? px->up_raw + px->up_cl - 1 : NULL;
		px->sse = ct && strncasecmp(ct, "text/event-stream", 17) == 0;
		if (!px->sse && px->scan.strip_usage)
			px->scan.strip_usage = false; /* not a stream after all: pass it as it is */
		if (px->head_request || px->status == 204 || px->status == 304) {
			/* no body follows: answered whole, with the upstream's length (RFC 9110 9.3.2) */
			px->sse = false;
			arm_timer(px, px->route->timeout);
		} else if (px->sse || !cl || dec_at(cl, cl + strlen(cl)) > BUFFER_LIMIT) {
			/* The reply head goes out with the first body bytes (write_cb): an upstream
			 * that fails before sending any still gets the client a clean 502. */
			px->stream_pending = true;
			arm_timer(px, px->route->idle_timeout);
		} else {
			arm_timer(px, px->route->timeout);
		}
		return len;
	}
	colon = memchr(line, ':', len);
	if (!colon)
		return len;
	nl = (size_t)(colon - line);
	if (nl == 0 || nl >= 256 || memchr(line, '\0', len))
		return len;  /* not a header we can pass on */
	colon++;
	vl = len - nl - 1;
	while (vl && (*colon == ' ' || *colon == '\t')) { colon++; vl--; }
	while (vl && (colon[vl - 1] == '\r' || colon[vl - 1] == '\n' || colon[vl - 1] == ' ')) vl--;
	if (vl >= 8192)
		return len;
	if (up_header_add(px, line, nl, colon, vl) < 0)
		return 0; /* out of memory: abort the transfer */
	/* The two headers the end of the head looks at, noted as they pass rather than
	 * searched for in the whole head then (each search ran strlen over every header). */
	if (nl == 12 && !px->up_ct && strncasecmp(line, "Content-Type", 12) == 0)
		px->up_ct = px->up_raw_len - vl;
	else if (nl == 14 && !px->up_cl && strncasecmp(line, "Content-Length", 14) == 0)
		px->up_cl = px->up_raw_len - vl;
	return len;
}

/* log_bodies: keep the first bytes of the answer for the audit row. */
static void log_answer(struct proxy_req *px, const char *data, size_t len)
{
	size_t have, cap = px->route ? (size_t)px->route->log_bodies : 0;

	if (!px->answer_log || cap == 0)
		return;
	have = evbuffer_get_length(px->answer_log);
	if (have < cap)
		evbuffer_add(px->answer_log, data, len < cap - have ? len : cap - have);
}

/* Blank out every occurrence of a secret in a kept body. */
static void redact(char *buf, size_t len, const char *secret, size_t sl)
{
	char *hit;

	if (!secret || sl < 8)
		return;
	while ((hit = memmem(buf, len, secret, sl)))
		memset(hit, '*', sl);
}

/* A body kept for the audit row: at most the route's log_bodies bytes, with the secrets the
 * gateway knows of (the route's upstream key, and for the request the client's own key)
 * blanked out in case a client or an upstream echoes one. NUL bytes become spaces: the
 * column is text. */
static char *body_for_audit(const struct proxy_req *px, const char *data, size_t len,
                            const char *client_secret, size_t client_secret_len)
{
	size_t cap = (size_t)px->route->log_bodies;
	size_t route_secret_len = px->route->api_key ? strlen(px->route->api_key) : 0;
	/* redact before cutting, so that a secret straddling the cut leaves no prefix behind */
	size_t n = cap + (route_secret_len > client_secret_len ? route_secret_len : client_secret_len);
	char *out;

	if (n > len)
		n = len;
	out = malloc(n + 1);
	if (!out)
		return NULL;
	memcpy(out, data, n);
	redact(out, n, px->route->api_key, route_secret_len);
	redact(out, n, client_secret, client_secret_len);
	len = n < cap ? n : cap;
	out[len] = '\0';
	for (size_t i = 0; i < len; i++)
		if (out[i] == '\0')
			out[i] = ' ';
	return out;
}

static size_t write_cb(char *data, size_t size, size_t n, void *arg)
{
	struct proxy_req *px = arg;
	size_t len = size * n;

	if (!px->req)
		return 0; /* client gone: abort */
	if (px->streaming && http_backlog(px->req) > CLIENT_HIGH_WATER) {
		px->paused = true;
		px->gw->stats.upstream_pauses++;
		return CURL_WRITEFUNC_PAUSE;
	}
	if (px->sse) {
		px->scan_len = 0;
		if (sse_scan_feed(&px->scan, data, len, &px->scan_out, &px->scan_len, &px->scan_cap) < 0)
			return 0; /* out of memory: abort the transfer */
		evbuffer_add(px->out, px->scan_out, px->scan_len);
		px->bytes_out += px->scan_len;  /* what the client gets, without a stripped chunk */
		log_answer(px, px->scan_out, px->scan_len);
	} else {
		evbuffer_add(px->out, data, len);
		px->bytes_out += len;
		log_answer(px, data, len);
	}
	px->chunks++;
	if (px->stream_pending || (!px->streaming && evbuffer_get_length(px->out) > BUFFER_LIMIT)) {
		px->stream_pending = false;
		start_stream(px); /* a stream's first bytes, or more than the upstream announced */
	}
	else if (px->streaming)
		http_reply_chunk(px->req, px->out);
	if (px->streaming)
		arm_timer(px, px->route->idle_timeout);
	return len;
}

/* ---- completion --------------------------------------------------------------------- */

static void classify_failure(struct proxy_req *px, CURLcode rc, int *status, const char **msg)
{
	if (px->timed_out) {
		px->error_kind = px->ttfb_s < 0 ? "timeout" : "idle_timeout";
		*status = 504;
		*msg = px->ttfb_s < 0 ? "upstream did not answer in time" : "upstream stream went idle";
		return;
	}
	switch (rc) {
	case CURLE_COULDNT_CONNECT:
	case CURLE_COULDNT_RESOLVE_HOST:
		px->error_kind = "connect";
		*msg = "upstream refused the connection";
		break;
	case CURLE_OPERATION_TIMEDOUT:
		px->error_kind = "timeout";
		*status = 504;
		*msg = "upstream did not answer in time";
		return;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
		px->error_kind = "tls";
		*msg = "TLS handshake with the upstream failed";
		break;
	case CURLE_WEIRD_SERVER_REPLY:
	case CURLE_UNSUPPORTED_PROTOCOL:
		px->error_kind = "protocol";
		*msg = "upstream answered with something that is not HTTP";
		break;
	default:
		px->error_kind = "reset";
		*msg = "upstream closed the connection";
		break;
	}
	*status = 502;
}

static void xfer_done(struct upstream_xfer *x, CURLcode rc)
{
	struct proxy_req *px = (struct proxy_req *)((char *)x - offsetof(struct proxy_req, xfer));
	int status = 502;
	const char *msg = NULL;

	evtimer_del(&px->timer_ev);
	if (!px->req) {
		finish(px);
		return;
	}
	if (rc == CURLE_OK && !px->timed_out) {
		struct http_request *req;
		if (px->sse) {
			px->scan_len = 0;
			if (sse_scan_finish(&px->scan, &px->scan_out, &px->scan_len, &px->scan_cap) == 0 &&
			    px->scan_len > 0)
				evbuffer_add(px->out, px->scan_out, px->scan_len);
			px->usage = px->scan.usage;
		} else if (!px->streaming) {
			usage_from_json((const char *)evbuffer_pullup(px->out, -1),
			                evbuffer_get_length(px->out), &px->usage);
		}
		if (px->stream_pending) {
			px->stream_pending = false;
			start_stream(px);   /* an empty stream: its head and end go out together */
		}
		if (px->streaming) {
			if (evbuffer_get_length(px->out) > 0)
				http_reply_chunk(px->req, px->out);
			req = take_req(px);
			http_reply_end(req);
		} else {
			/* a HEAD or 304 answer announces the length the upstream gave */
			int64_t head_len = px->up_cl ? (int64_t)dec_at(px->up_raw + px->up_cl - 1,
			                   px->up_raw + px->up_cl - 1 + strlen(px->up_raw + px->up_cl - 1)) : -1;
			copy_response_headers(px);
			req = take_req(px);
			http_reply_buf(req, (int)px->status, px->out, head_len);
		}
		finish(px);
		return;
	}
	classify_failure(px, rc, &status, &msg);
	log_debug("request %s: upstream %s (%s)", px->id, px->error_kind, curl_easy_strerror(rc));
	if (px->started) {
		abort_client(px);
		if (px->status < 400)
			px->status = status; /* recorded as the gateway's failure, not the upstream's 200 */
	} else {
		reply_error(px, status, px->error_kind, msg);
	}
	finish(px);
}

/* ---- the native (upconn.c) transfer feeds the same callbacks as curl ------------------ */

static int up_line(void *arg, const char *line, size_t len)
{
	return header_cb((char *)line, 1, len, arg) == len ? 0 : -1;
}

static int up_body(void *arg, const char *data, size_t len)
{
	size_t r = write_cb((char *)data, 1, len, arg);

	return r == CURL_WRITEFUNC_PAUSE ? 1 : r == len ? 0 : -1;
}

static const struct h1_callbacks up_callbacks = { up_line, up_body };

static void up_done(struct upconn_xfer *x, enum upconn_result r)
{
	struct proxy_req *px = (struct proxy_req *)((char *)x - offsetof(struct proxy_req, up));
	static const CURLcode as_curl[] = {
		[UPC_OK] = CURLE_OK, [UPC_CONNECT] = CURLE_COULDNT_CONNECT,
		[UPC_RESET] = CURLE_RECV_ERROR, [UPC_PROTOCOL] = CURLE_WEIRD_SERVER_REPLY,
		[UPC_ABORTED] = CURLE_WRITE_ERROR, [UPC_NOMEM] = CURLE_OUT_OF_MEMORY,
	};

	xfer_done(&px->xfer, as_curl[r]);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proxy_req *px = arg;
	(void)fd; (void)what;

	px->timed_out = true;
	xfer_cancel(px);
	xfer_done(&px->xfer, CURLE_OPERATION_TIMEDOUT);
}

/* The client connection is gone (hang-up, write error, timeout); the request is invalid
 * from here on. Only note it and finish from the loop. */
static void client_closed_cb(void *arg)
{
	struct proxy_req *px = arg;

	px->req = NULL;
	if (!px->status || px->status < 400)
		px->status = 499; /* nginx's "client closed request" */
	event_active(&px->finish_ev, 0, 0);
}

static char *dup_or_null(const char *s)
{
	return s && *s ? strdup(s) : NULL;
}

static char *empty_to_null(const char *s)
{
	return s && *s ? (char *)s : NULL;
}

/* The request-done event: the audit row as it will be written, and what metrics want. */
static void emit_done(struct proxy_req *px, double total_s)
{
	struct gateway *gw = px->gw;
	struct audit_record tmp = { 0 };
	struct request_done d = { 0 };
	char *answer = NULL;

	if (px->answer_log)
		answer = body_for_audit(px, (const char *)evbuffer_pullup(px->answer_log, -1),
		                        evbuffer_get_length(px->answer_log), NULL, 0);
	/* borrowed pointers: the pack copies them */
	tmp.request_id = px->id;
	tmp.started_at = px->started_at;
	tmp.key_id = px->key_id;
	tmp.key_name = empty_to_null(px->key_name);
	tmp.client_ip = empty_to_null(px->client_ip);
	tmp.method = empty_to_null(px->method);
	tmp.path = empty_to_null(px->path);
	if (px->route) {
		tmp.route = px->route->name;
		if (px->forwarded)
			tmp.upstream = empty_to_null(px->route->upstream_origin);
	}
	tmp.status = (int)px->status;
	tmp.latency_ms = total_s * 1000.0;
	tmp.ttfb_ms = px->ttfb_s >= 0 ? px->ttfb_s * 1000.0 : -1;
	tmp.is_stream = px->sse || px->streaming;
	tmp.chunks = px->chunks;
	tmp.bytes_in = (int64_t)px->bytes_in;
	tmp.bytes_out = (int64_t)px->bytes_out;
	tmp.model = empty_to_null(px->model);
	tmp.prompt_tokens = px->usage.found ? px->usage.prompt_tokens : -1;
	tmp.completion_tokens = px->usage.found ? px->usage.completion_tokens : -1;
	tmp.error = empty_to_null(px->error_kind);
	tmp.request_body = px->body_log;
	tmp.response_body = answer;
	d.row = &tmp;
	d.total_s = total_s;
	d.ttfb_s = px->ttfb_s;
	d.upstream_error = px->error_kind;
	d.with_bodies = 1;
	reqdone_emit(&gw->done, &d);
	free(answer);
}

static void finish_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	finish(arg);
}

static void finish(struct proxy_req *px)
{
	struct gateway *gw = px->gw;
	double total = elapsed_since(&px->t_start);

	if (px->finished)
		return;
	px->finished = true;
	if (xfer_active(px)) {
		xfer_cancel(px);
		if (!px->error_kind)
			px->error_kind = "client_closed";
	}
	if (px->req)
		take_req(px);
	gw->stats.inflight--;
	emit_done(px, total);
	log_debug("request %s route=%s status=%ld %.1fms chunks=%u bytes=%zu%s%s", px->id,
	          px->route ? px->route->name : "-", px->status, total * 1000, px->chunks,
	          px->bytes_out, px->error_kind ? " error=" : "", px->error_kind ? px->error_kind : "");

	upstream_easy_put(gw->upstream, px->xfer.easy);
	curl_slist_free_all(px->headers);
	free(px->up_head);
	free(px->up_raw);
	free(px->body);
	if (px->out)
		evbuffer_free(px->out);
	free(px->body_rewritten);
	free(px->key_name);
	free(px->body_log);
	if (px->answer_log)
		evbuffer_free(px->answer_log);
	free(px->path);
	sse_scan_free(&px->scan);
	free(px->scan_out);
	free(px->url);
	event_del(&px->timer_ev);
	event_del(&px->resume_ev);
	event_del(&px->finish_ev);
	if (px->table)
		route_table_unref(px->table);
	free(px);
}

/* ---- request set-up ---------------------------------------------------------------- */

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

/* Reject "." and ".." segments (also percent-encoded): the path picks the route and may be
 * forwarded, so it must mean the same thing to us and to the upstream. */
static bool path_is_clean(const char *path)
{
	const char *seg = path;

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

static bool key_allows_route(const struct key *k, const char *route)
{
	if (k->n_routes == 0)
		return true;
	for (size_t i = 0; i < k->n_routes; i++)
		if (strcmp(k->routes[i], route) == 0)
			return true;
	return false;
}

/* Rewrite the body when the route adds fields, or when a stream must be asked for its
 * usage. Sets the model and stream flags for the audit either way. -1: a rewrite was
 * needed but the body is not a JSON object. */
static int prepare_body(struct proxy_req *px, struct route_request *rq, bool *rewritten)
{
	const struct route *r = px->route;
	/* a request without a body (GET /v1/models) has nothing to add fields to */
	bool add_fields = r->add_body_fields && json_object_size(r->add_body_fields) > 0 &&
	                  rq->body_len > 0;
	bool added = false;
	bool include_usage = false, inject;
	const char *field;
	json_t *value, *so;

	*rewritten = false;
	usage_request_info(rq->body, rq->body_len, px->model, sizeof(px->model),
	                   &px->client_stream, &include_usage);
	inject = r->stream_usage && px->client_stream && !include_usage;
	if (!add_fields && !inject)
		return 0;
	if (rq->json_state == 0) {
		rq->json = json_loadb(rq->body, rq->body_len, 0, NULL);
		rq->json_state = json_is_object(rq->json) ? 1 : -1;
	}
	if (rq->json_state != 1)
		return add_fields ? -1 : 0;
	if (add_fields)
		json_object_foreach(r->add_body_fields, field, value)
			if (!json_object_get(rq->json, field)) {
				json_object_set(rq->json, field, value);
				added = true;
			}
	if (!added && !inject)
		return 0; /* the client sent every field: forward its bytes unchanged */
	if (inject) {
		so = json_object_get(rq->json, "stream_options");
		if (!json_is_object(so)) {
			so = json_object();
			json_object_set_new(rq->json, "stream_options", so);
		}
		json_object_set_new(so, "include_usage", json_true());
		sse_scan_init(&px->scan, true);
	}
	value = json_object_get(rq->json, "model");
	if (json_is_string(value))
		snprintf(px->model, sizeof(px->model), "%s", json_string_value(value));
	px->body_rewritten = json_dumps(rq->json, JSON_COMPACT);
	*rewritten = px->body_rewritten != NULL;
	return px->body_rewritten ? 0 : -1;
}

static int build_url(struct proxy_req *px, const char *path, const char *query)
{
	const struct route *r = px->route;
	const char *p = path;
	int n;

	if (!r->upstream_path) {
		size_t sl = r->strip_prefix ? strlen(r->strip_prefix) : 0;
		if (sl && strncmp(p, r->strip_prefix, sl) == 0 && (p[sl] == '/' || p[sl] == '\0'))
			p += sl;
		if (*p == '\0')
			p = "/";
	} else {
		p = r->upstream_path;
	}
	{
		size_t ol = strlen(r->upstream_origin), pl = strlen(p), ql = query ? strlen(query) : 0;
		char *u = malloc(ol + pl + ql + 2);
		if (!u)
			return -1;
		memcpy(u, r->upstream_origin, ol);
		memcpy(u + ol, p, pl);
		n = (int)(ol + pl);
		if (query) {
			u[n++] = '?';
			memcpy(u + n, query, ql);
			n += (int)ql;
		}
		u[n] = '\0';
		px->url = u;
	}
	return 0;
}

/* Append to the native request head. */
static int head_add(struct proxy_req *px, const char *s, size_t n)
{
	return buf_append(&px->up_head, &px->up_head_len, &px->up_head_cap, s, n, 1024);
}

static int head_add_str(struct proxy_req *px, const char *s)
{
	return head_add(px, s, strlen(s));
}

/* "name: value\r\n" onto the native request head, room made once for the whole line. */
static int head_add_header(struct proxy_req *px, const char *name, size_t nl, const char *value,
                           size_t vl)
{
	char *p;

	if (buf_grow(&px->up_head, &px->up_head_cap, px->up_head_len + nl + vl + 4, 1024) < 0)
		return -1;
	p = px->up_head + px->up_head_len;
	memcpy(p, name, nl);
	memcpy(p + nl, ": ", 2);
	memcpy(p + nl + 2, value, vl);
	memcpy(p + nl + 2 + vl, "\r\n", 2);
	px->up_head_len += nl + vl + 4;
	return 0;
}

static int add_header(struct proxy_req *px, const char *name, const char *value)
{
	char stack[1024], *line = stack;

	if (px->native)
		return head_add_header(px, name, strlen(name), value, strlen(value));
	size_t need = strlen(name) + strlen(value) + 3;
	struct curl_slist *l;

	/* curl copies the line: format it on the stack unless it is unusually long */
	if (need > sizeof(stack) && !(line = malloc(need)))
		return -1;
	/* "Name:" would make curl drop the header; "Name;" sends it with an empty value. */
	snprintf(line, need > sizeof(stack) ? need : sizeof(stack), *value ? "%s: %s" : "%s;", name, value);
	l = curl_slist_append(px->headers, line);
	if (line != stack)
		free(line);
	if (!l)
		return -1;
	px->headers = l;
	return 0;
}

static int build_headers(struct proxy_req *px, const struct http_request *in)
{
	const struct route *r = px->route;
	const char *conn = http_find_header(in, "Connection");
	char *auth = NULL;
	int rc = -1;

	for (size_t k = 0; k < in->n_headers; k++) {
		const struct http_header *h = &in->headers[k];
		if (header_stripped(h->name, h->name_len, r->strip_headers, r->n_strip_headers, conn))
			continue;
		bool overridden = false;
		for (size_t i = 0; i < r->n_add_headers; i++)
			if (strcasecmp(h->name, r->add_headers[i].name) == 0)
				overridden = true;
		if (!overridden && add_header(px, h->name, h->value) < 0)
			goto out;
	}
	for (size_t i = 0; i < r->n_add_headers; i++)
		if (add_header(px, r->add_headers[i].name, r->add_headers[i].value) < 0)
			goto out;
	if (r->api_key && px->native) {
		if (head_add_str(px, "Authorization: Bearer ") < 0 || head_add_str(px, r->api_key) < 0 ||
		    head_add(px, "\r\n", 2) < 0)
			goto out;
	} else if (r->api_key) {
		if (asprintf(&auth, "Bearer %s", r->api_key) < 0) {
			auth = NULL;
			goto out;
		}
		if (add_header(px, "Authorization", auth) < 0)
			goto out;
	}
	if (add_header(px, "X-Request-Id", px->id) < 0)
		goto out;
	/* "Expect:" with no value stops curl from adding Expect: 100-continue to large bodies */
	if (!px->native) {
		struct curl_slist *l = curl_slist_append(px->headers, "Expect:");
		if (!l)
			goto out;
		px->headers = l;
	}
	rc = 0;
out:
	if (auth) {
		explicit_bzero(auth, strlen(auth));
		free(auth);
	}
	return rc;
}

static int setup_easy(struct proxy_req *px, const struct http_request *req, const char *body, size_t body_len)
{
	CURL *e = px->xfer.easy;
	enum http_method cmd = req->method;
	const char *method = req->method_name;

	curl_easy_setopt(e, CURLOPT_URL, px->url);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, px->headers);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, (long)px->route->timeout);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, px);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, px);
	if (px->route->ca_file) {
		/* the route's CA bundle alone: not also the system's certificate directory */
		curl_easy_setopt(e, CURLOPT_CAINFO, px->route->ca_file);
		curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
	}
	if (cmd == HTTP_HEAD) {
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	} else if (body_len > 0 || cmd == HTTP_POST || cmd == HTTP_PUT ||
	           cmd == HTTP_PATCH) {
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
	} else if (cmd != HTTP_GET) {
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
	}
	return 0;
}

/* Frame the request for upconn.c: request line, Host, the cleaned headers, the body's
 * length; the body itself goes out from where it is, as the second iovec. */
static int start_native(struct proxy_req *px, const struct http_request *req,
                        const char *body, size_t body_len)
{
	enum http_method cmd = req->method;
	const char *target = px->url + strlen(px->route->upstream_origin);
	const char *host = px->route->upstream_host;
	size_t ml = strlen(req->method_name), tl = strlen(target), hl = strlen(host);
	char cl[48], *p;

	/* "METHOD target HTTP/1.1\r\nHost: host\r\n", room made once */
	if (buf_grow(&px->up_head, &px->up_head_cap, px->up_head_len + ml + tl + hl + 20, 1024) < 0)
		return -1;
	p = px->up_head + px->up_head_len;
	memcpy(p, req->method_name, ml);
	p[ml] = ' ';
	p += ml + 1;
	memcpy(p, target, tl);
	p += tl;
	memcpy(p, " HTTP/1.1\r\nHost: ", 17);
	p += 17;
	memcpy(p, host, hl);
	memcpy(p + hl, "\r\n", 2);
	px->up_head_len = (size_t)(p + hl + 2 - px->up_head);
	if (build_headers(px, req) < 0)
		return -1;
	if (cmd == HTTP_HEAD)
		body_len = 0;
	if (body_len > 0 || cmd == HTTP_POST || cmd == HTTP_PUT || cmd == HTTP_PATCH) {
		size_t n = sizeof("Content-Length: ") - 1;

		memcpy(cl, "Content-Length: ", n);
		n += fmt_dec(cl + n, body_len);
		memcpy(cl + n, "\r\n\r\n", 4);     /* and the blank line that ends the head */
		if (head_add(px, cl, n + 4) < 0)
			return -1;
	} else if (head_add(px, "\r\n", 2) < 0) {
		return -1;
	}
	px->up.cb = &up_callbacks;
	px->up.arg = px;
	px->up.done = up_done;
	px->up.head_request = cmd == HTTP_HEAD;
	px->up.req[0].iov_base = px->up_head;
	px->up.req[0].iov_len = px->up_head_len;
	px->up.req[1].iov_base = (void *)body;
	px->up.req[1].iov_len = body_len;
	return upconn_start(px->gw->upconn, px->route->upstream_host, &px->up);
}

static int start_curl(struct proxy_req *px, const struct http_request *req,
                      const char *body, size_t body_len)
{
	px->xfer.easy = upstream_easy_get(px->gw->upstream);
	if (!px->xfer.easy || build_headers(px, req) < 0 || setup_easy(px, req, body, body_len) < 0)
		return -1;
	return upstream_start(px->gw->upstream, &px->xfer);
}

static struct proxy_req *proxy_req_new(struct gateway *gw, struct http_request *req, const char *id)
{
	struct proxy_req *px = calloc(1, sizeof(*px));

	if (!px)
		return NULL;
	px->gw = gw;
	px->req = req;
	px->ttfb_s = -1;
	clock_gettime(CLOCK_MONOTONIC, &px->t_start);
	{
		struct timespec wall;
		clock_gettime(CLOCK_REALTIME, &wall);
		px->started_at = (double)wall.tv_sec + (double)wall.tv_nsec / 1e9;
	}
	px->method = req->method_name;
	px->head_request = req->method == HTTP_HEAD;
	/* the path only: a query string can carry credentials (?api_key=...), and the audit
	 * trail must never hold one */
	px->path = dup_or_null(req->path);
	{
		const char *ip = http_client_ip(req);
		size_t n = strnlen(ip, sizeof(px->client_ip) - 1);
		memcpy(px->client_ip, ip, n);
		px->client_ip[n] = '\0';
	}
	px->key_id = 0;
	memcpy(px->id, id, REQID_LEN);
	px->id[REQID_LEN] = '\0';
	px->xfer.done = xfer_done;
	sse_scan_init(&px->scan, false);
	px->usage.prompt_tokens = px->usage.completion_tokens = -1;
	px->table = gw->routes;
	route_table_ref(px->table);
	px->out = evbuffer_new();
	evtimer_assign(&px->timer_ev, gw->base, timer_cb, px);
	event_assign(&px->resume_ev, gw->base, -1, 0, resume_cb, px);
	event_assign(&px->finish_ev, gw->base, -1, 0, finish_cb, px);
	gw->stats.inflight++;
	if (!px->out) {
		finish(px);
		return NULL;
	}
	/* from here on the request ends through finish() */
	http_watch_client(req, client_closed_cb, px);
	return px;
}

static void body_read(void *arg, int status);

/* Head and authenticate: everything that can be decided before the body is read. */
void proxy_request(void *arg, struct http_request *req)
{
	struct gateway *gw = arg;
	struct proxy_req *px;
	const char *path = req->path;
	const char *secret;
	size_t secret_len = 0;
	struct key *k;
	int64_t now = time(NULL);

	px = proxy_req_new(gw, req, req->id);
	if (!px) {
		http_send_error(req, 500, "internal_error", "out of memory");
		return;
	}
	if (gw->stopping) {
		http_close_after(req);
		reply_error(px, 503, "shutting_down", "gateway is shutting down");
		goto done;
	}
	if (!path || !*path || !path_is_clean(path)) {
		reply_error(px, 400, "invalid_path", "request path is malformed");
		goto done;
	}
	if (find_credential(req, &secret, &secret_len) < 0) {
		reply_error(px, 401, "ambiguous_credentials", "send exactly one API key (X-API-Key or Authorization: Bearer)");
		goto done;
	}
	if (!secret || secret_len == 0) {
		reply_error(px, 401, "missing_api_key", "no API key: send X-API-Key or Authorization: Bearer");
		goto done;
	}
	k = keystore_lookup_memo(gw->keys, secret, secret_len, http_conn_data(req));
	if (!k) {
		reply_error(px, 401, "invalid_api_key", "invalid API key");
		goto done;
	}
	px->key_id = k->id;
	px->key_name = dup_or_null(k->name);
	if (k->revoked) {
		reply_error(px, 401, "revoked_api_key", "API key has been revoked");
		goto done;
	}
	if (!key_usable(k, now)) {
		reply_error(px, 401, "expired_api_key", "API key has expired");
		goto done;
	}
	px->secret = secret;
	px->secret_len = secret_len;
	http_read_body(req, body_read, px);
	return;
done:
	finish(px);
}

/* Body, parse, match, policy, forward: the rest, once the body is in. */
static void body_read(void *arg, int status)
{
	struct proxy_req *px = arg;
	struct gateway *gw = px->gw;
	struct http_request *req = px->req;
	const char *path = req->path;
	const char *query = req->query;
	struct route_request rq = { 0 };
	const char *send_body;
	size_t send_len;
	struct key *k;
	int64_t now = time(NULL);
	int retry;
	bool rewritten;

	if (status) {
		reply_error(px, status, status == 413 ? "request_too_large" : status == 408 ?
		            "request_timeout" : "bad_request", status == 413 ? "request body too large" :
		            status == 408 ? "request body not received in time" : "malformed request body");
		goto done;
	}
	/* the key again: the store may have changed while the body was on its way */
	k = keystore_lookup_memo(gw->keys, px->secret, px->secret_len, http_conn_data(req));
	if (!k || k->revoked || k->id != px->key_id) {
		reply_error(px, 401, "revoked_api_key", "API key has been revoked");
		goto done;
	}
	px->body = http_take_body(req, &px->body_len);
	px->bytes_in = px->body_len;
	rq.method = req->method_name;
	rq.path = path;
	rq.body_len = px->body_len;
	rq.body = rq.body_len ? px->body : "";
	switch (route_match(px->table, &rq, &px->route)) {
	case ROUTE_MATCHED:
		break;
	case ROUTE_BAD_BODY:
		reply_error(px, 400, "invalid_json", "request body must be a JSON object");
		goto done;
	default:
		reply_error(px, 404, "no_route", "no route matches this request");
		goto done;
	}
	if (!key_allows_route(k, px->route->name)) {
		reply_error(px, 403, "route_not_allowed", "this API key may not use this route");
		goto done;
	}
	if ((retry = key_rate_check(k, now)) > 0) {
		char ra[16];
		snprintf(ra, sizeof(ra), "%d", retry);
		http_add_header(req, "Retry-After", ra);
		reply_error(px, 429, "rate_limited", "this API key is over its requests-per-minute limit");
		goto done;
	}
	key_touch(k, now);

	send_body = rq.body;
	send_len = rq.body_len;
	if (prepare_body(px, &rq, &rewritten) < 0) {
		reply_error(px, 400, "invalid_json", "request body must be a JSON object");
		goto done;
	}
	if (rewritten) {
		send_body = px->body_rewritten;
		send_len = strlen(px->body_rewritten);
	}
	if (px->route->log_bodies > 0) {
		px->body_log = body_for_audit(px, send_body, send_len, px->secret, px->secret_len);
		px->answer_log = evbuffer_new();
	}
	/* plain HTTP to an address is framed here; TLS and names that need resolving go to curl */
	px->native = strncmp(px->route->upstream_origin, "http://", 7) == 0 &&
	             upconn_supported(gw->upconn, px->route->upstream_host);
	if (build_url(px, path, query) < 0 ||
	    (px->native ? start_native(px, req, send_body, send_len)
	                : start_curl(px, req, send_body, send_len)) < 0) {
		reply_error(px, 500, "internal_error", "could not start the upstream request");
		goto done;
	}
	px->forwarded = true;
	arm_timer(px, px->route->timeout);
	json_decref(rq.json);
	return;
done:
	json_decref(rq.json);
	finish(px);
}
