/* The relay phase: the upstream's answer on its way to the client. The transport hands
 * over the head line by line and then the body; this keeps the head, decides how the
 * answer is framed for the client (whole, or relayed chunk by chunk), scans it for token
 * usage (an SSE stream as it passes, a JSON answer at its end), pauses the transfer while
 * the client reads slowly, and ends the request on the transport's done.
 *
 * The line and body callbacks free nothing and never call the transport back; what must
 * happen after one (a resume) goes through a loop event. `done` may end and free the
 * request: a transport calls it last and touches the transfer no more (transport.h). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "log.h"
#include "proxy.h"
#include "policy.h"
#include "request.h"
#include "util.h"

/* Streaming backpressure: pause the upstream when this much is queued for the client,
 * resume once it is down to a quarter. */
#define CLIENT_HIGH_WATER (256 * 1024)
#define CLIENT_LOW_WATER  (64 * 1024)
/* Answers up to this size with a Content-Length are sent in one piece; larger or
 * unknown-length answers (and every SSE stream) are relayed chunk by chunk. */
#define BUFFER_LIMIT (1024 * 1024)
/* A stream's leading content-free events are held at most this much: a stream that sends
 * more before any content is not one we understand, so it goes on as it comes. */
#define HOLD_LIMIT (64 * 1024)
/* A translated answer is read whole before it is translated: at most this much. */
#define XLATE_LIMIT (16 * 1024 * 1024)
/* on_disconnect: drain reads at most this much of a stream the client left */
#define DRAIN_MAX_BYTES (8 * 1024 * 1024)

/* Answer headers that describe the upstream hop rather than the answer, and our own
 * X-Request-Id, which replaces the upstream's: by length, then by first byte (HNAME_IS),
 * as forward.c's always_stripped. */
static bool response_skipped(const char *n, size_t nl)
{
	switch (nl) {
	case 2: return HNAME_IS(n, nl, "te");
	case 7: return HNAME_IS(n, nl, "trailer") || HNAME_IS(n, nl, "upgrade");
	case 10: return HNAME_IS(n, nl, "connection") || HNAME_IS(n, nl, "keep-alive");
	case 12: return HNAME_IS(n, nl, "x-request-id");
	case 14: return HNAME_IS(n, nl, "content-length");
	case 16: return HNAME_IS(n, nl, "proxy-connection");
	case 17: return HNAME_IS(n, nl, "transfer-encoding");
	default: return false;
	}
}

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

const char *relay_upstream_request_id(const struct attempt *a)
{
	return a->up_rid && a->up_raw ? a->up_raw + a->up_rid - 1 : NULL;
}

static const char *up_value(const struct attempt *a, size_t at)
{
	return at ? a->up_raw + at - 1 : NULL;
}

/* The end of the answer's headers: dec_at reads a value to its NUL at the latest, so this
 * bounds it as well as the value's own strlen would. */
static const char *up_end(const struct attempt *a)
{
	return a->up_raw + a->up_raw_len;
}

/* ---- the answer's head ------------------------------------------------------------- */

static int up_header_add(struct attempt *a, const char *name, size_t nl, const char *value,
                         size_t vl)
{
	size_t need = a->up_raw_len + nl + vl + 2;

	/* the buffer is kept from answer to answer: seldom too small, and then grown */
	if (need > a->up_raw_cap && buf_grow(&a->up_raw, &a->up_raw_cap, need, 512) < 0)
		return -1;
	memcpy(a->up_raw + a->up_raw_len, name, nl);
	a->up_raw[a->up_raw_len + nl] = '\0';
	memcpy(a->up_raw + a->up_raw_len + nl + 1, value, vl);
	a->up_raw[need - 1] = '\0';
	a->up_raw_len = need;
	return 0;
}

/* The answer's headers onto the client's reply, less the hop's own: the fixed list and
 * whatever the upstream named in its Connection header (RFC 9110 7.6.1). */
static bool named_in_connection(const struct attempt *a, const char *name, size_t nl)
{
	size_t off = 0;

	/* every Connection line counts (there is seldom one, so a walk is cheap) */
	while (off < a->up_raw_len) {
		const char *k = a->up_raw + off;
		size_t kl = strlen(k);
		const char *v = k + kl + 1;
		size_t vl = strlen(v);

		off = (size_t)(v + vl + 1 - a->up_raw);
		if (kl == 10 && strncasecmp(k, "connection", 10) == 0 &&
		    proxy_listed_in_connection(v, vl, name, nl))
			return true;
	}
	return false;
}

/* The kept headers go to http.c as lines in one http_add_header_lines (a few for a long
 * head), not one http_add_header each: its strlen and strpbrk cost ~240 instructions a
 * header. The lines are the ones http_add_header would write, and none needs its check
 * for a CR, LF or colon: a name ends at the line's first colon (on_line), and neither
 * transport hands on a line with a NUL or a bare CR in it (h1resp.c, transport_curl.c's
 * header_cb; test_h1resp), nor one with an LF before its end. */
#define COPY_BUF 2048

static void copy_response_headers(struct proxy_req *px)
{
	const struct attempt *a = &px->att;
	char buf[COPY_BUF];
	size_t n = 0, off = 0;

	while (off < a->up_raw_len) {
		const char *k = a->up_raw + off;
		size_t kl = strlen(k);
		const char *v = k + kl + 1;
		size_t vl = strlen(v);
		size_t at = off + kl + 2;   /* 1 + the value's offset, as on_line notes them */

		off = at + vl;
		/* the first Content-Length and Connection were told by their names as they came:
		 * known by where their values are, not matched again */
		if (at == a->up_cl || at == a->up_conn ||
		    response_skipped(k, kl) || (a->up_conn && named_in_connection(a, k, kl)))
			continue;
		if (n + kl + vl + 4 > sizeof(buf) && n) {
			http_add_header_lines(px->req, buf, n);   /* in order: what is held first */
			n = 0;
		}
		if (kl + vl + 4 > sizeof(buf))
			http_add_header(px->req, k, v);   /* longer than buf alone */
		else
			n = (size_t)(put_header_line(buf + n, k, kl, v, vl) - buf);
	}
	if (n)
		http_add_header_lines(px->req, buf, n);
}

/* Only "chunked" is a transfer coding we can take off; anything else (gzip, ...) would
 * reach the client still coded with no header saying so. */
static bool only_chunked(const char *v, size_t vl)
{
	return vl == 7 && strncasecmp(v, "chunked", 7) == 0;
}

/* Retry-After of a 429 or 503 answer, in seconds (delay-seconds or an HTTP-date, RFC 9110
 * 10.2.3); -1 when there is none or it cannot be read. */
static int64_t answer_retry_after(const struct attempt *a)
{
	const char *v = up_value(a, a->up_ra);
	struct tm tm;

	if (!v || (a->status != 429 && a->status != 503))
		return -1;
	while (*v == ' ' || *v == '\t')
		v++;
	if (*v >= '0' && *v <= '9')
		return (int64_t)dec_at(v, v + strlen(v));
	memset(&tm, 0, sizeof(tm));
	if (strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm)) {
		int64_t d = (int64_t)timegm(&tm) - (int64_t)time(NULL);
		return d > 0 ? d : 0;
	}
	return -1;
}

/* Could a stream of this route that fails before its first content be tried again? Then
 * its head and leading content-free events wait for that content. */
static bool worth_holding(const struct proxy_req *px)
{
	const struct route *r = px->route;

	if (!(r->retry.on & (RETRY_ON_RESET | RETRY_ON_TIMEOUT | RETRY_ON_PROTOCOL)))
		return false;
	/* the last attempt of such a route is held too: failing before content, it gets the
	 * client a plain 502 like the ones before it, not a 200 with an error event */
	return r->retry.attempts > 1 || px->first_route->n_fallback > 0;
}

/* The head is in: how the answer reaches the client. -1: the answer is dropped for a
 * retry (a 429 or 5xx the route retries, with a target left to try). */
static int head_done(struct proxy_req *px)
{
	struct attempt *a = &px->att;
	const char *ct = up_value(a, a->up_ct), *cl = up_value(a, a->up_cl);
	enum attempt_outcome o = attempt_outcome_of_status(a->status);

	if ((o != OUTCOME_OK || px->route->retry.n_codes) && !px->draining &&
	    forward_may_retry(px, o, a->status)) {
		a->dropped = true;
		return -1;
	}
	px->status = a->status;
	px->stream_pending = false;   /* a head seen before (a proxy's CONNECT answer) counts no more */
	/* the first byte first: most answers are application/json */
	px->sse = ct && (ct[0] | 0x20) == 't' && strncasecmp(ct, "text/event-stream", 17) == 0;
	if (!px->sse && px->scan.strip_usage)
		px->scan.strip_usage = false; /* not a stream after all: pass it as it is */
	if (a->xlate == XLATE_MESSAGES) {
		/* OpenAI's events become Anthropic's (msgin_stream_feed), which carry their usage
		 * in message_delta: nothing to strip */
		px->scan.strip_usage = false;
		if (px->sse) {
			a->msgin = calloc(1, sizeof(*a->msgin));
			if (!a->msgin)
				return -1;
			msgin_stream_init(a->msgin);
		}
	} else if ((a->xlate || a->anth_read) && px->sse) {
		/* Anthropic's events become OpenAI's as they come (anth_stream_feed), with the
		 * usage chunk when the client asked for one; passed as they are, the same reading
		 * gives the usage */
		a->anth = calloc(1, sizeof(*a->anth));
		if (!a->anth)
			return -1;
		anth_stream_init(a->anth, px->include_usage, (long)time(NULL));
	}
	if (px->head_request || a->status == 204 || a->status == 304) {
		/* no body follows: answered whole, with the upstream's length (RFC 9110 9.3.2) */
		px->sse = false;
		forward_arm_timer(px, px->route->timeout);
	} else if (a->xlate && !px->sse) {
		/* a whole answer (or error) is translated whole: read it all first */
		forward_arm_timer(px, px->route->timeout);
	} else if (px->sse || !cl || dec_at(cl, up_end(a)) > BUFFER_LIMIT) {
		/* The reply head goes out with the first body bytes (on_body): an upstream that
		 * fails before sending any still gets the client a clean 502, or a retry. */
		px->stream_pending = true;
		px->holding = px->sse && a->status < 300 && worth_holding(px);
		forward_arm_timer(px, px->route->idle_timeout);
	} else {
		forward_arm_timer(px, px->route->timeout);
	}
	return 0;
}

/* The answer's headers the end of its head looks at, noted as they pass rather than
 * searched for in the whole head then. */
enum up_kind { UP_OTHER, UP_TYPE, UP_LENGTH, UP_CONNECTION, UP_RETRY_AFTER, UP_ID, UP_TE };

/* Which of them the name is: by length and first byte (HNAME_IS), as response_skipped.
 * The upstream's own id of the request, for the audit, is Anthropic's request-id or
 * OpenAI's x-request-id. */
static enum up_kind up_kind_of(const char *n, size_t nl)
{
	switch (nl) {
	case 10:
		return HNAME_IS(n, nl, "connection") ? UP_CONNECTION :
		       HNAME_IS(n, nl, "request-id") ? UP_ID : UP_OTHER;
	case 11: return HNAME_IS(n, nl, "retry-after") ? UP_RETRY_AFTER : UP_OTHER;
	case 12:
		return HNAME_IS(n, nl, "content-type") ? UP_TYPE :
		       HNAME_IS(n, nl, "x-request-id") ? UP_ID : UP_OTHER;
	case 14: return HNAME_IS(n, nl, "content-length") ? UP_LENGTH : UP_OTHER;
	case 17: return HNAME_IS(n, nl, "transfer-encoding") ? UP_TE : UP_OTHER;
	default: return UP_OTHER;
	}
}

/* The first header of its kind wins: `at` is 1 + its value's offset in up_raw. */
static void note_header(struct attempt *a, enum up_kind kind, size_t at)
{
	size_t *first;

	switch (kind) {
	case UP_TYPE: first = &a->up_ct; break;
	case UP_LENGTH: first = &a->up_cl; break;
	case UP_CONNECTION: first = &a->up_conn; break;
	case UP_RETRY_AFTER: first = &a->up_ra; break;
	case UP_ID: first = &a->up_rid; break;
	default: return;
	}
	if (!*first)
		*first = at;
}

static int on_line(void *arg, const char *line, size_t len)
{
	struct attempt *a = arg;
	struct proxy_req *px = a->px;
	const char *colon, *v;
	size_t nl, vl;
	enum up_kind kind;

	if (len >= 5 && line[0] == 'H' && memcmp(line, "HTTP/", 5) == 0) {
		/* a new status line ("HTTP/1.1 200 OK", "HTTP/2 200"): forget interim (1xx)
		 * headers, keep the code */
		const char *sp = memchr(line, ' ', len);
		a->up_raw_len = a->up_ct = a->up_cl = a->up_conn = a->up_ra = a->up_rid = 0;
		a->status = sp ? (long)dec_at(sp + 1, line + len) : 0;
		if (a->status < 100 || a->status > 599) {
			a->bad_answer = true;
			return -1;
		}
		return 0;
	}
	if (len <= 2 && (line[0] == '\r' || line[0] == '\n')) {
		if (a->status < 200)
			return 0;
		if (a->ttfb_s < 0)
			a->ttfb_s = proxy_elapsed(px);
		if (!px->req && !px->draining)
			return -1; /* client gone: abort the transfer */
		if (px->draining) {
			/* read on for the usage: the head as for a client, then back to 499 */
			long st = px->status;
			int rc = head_done(px);

			px->status = st;
			px->stream_pending = px->holding = false;
			return rc;
		}
		return head_done(px);
	}
	colon = memchr(line, ':', len);
	if (!colon || colon == line)
		return 0;   /* not a header (curl passes some such lines on) */
	nl = (size_t)(colon - line);
	v = colon + 1;
	vl = len - nl - 1;
	while (vl && (*v == ' ' || *v == '\t')) { v++; vl--; }
	if (vl >= 2 && v[vl - 1] == '\n' && v[vl - 2] == '\r')
		vl -= 2;   /* the line end, as nearly every line ends: the loop below ends at once */
	while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' ' || v[vl - 1] == '\t'))
		vl--;
	kind = up_kind_of(line, nl);
	if (kind == UP_TE && !only_chunked(v, vl)) {
		a->bad_answer = true;
		return -1;
	}
	if (up_header_add(a, line, nl, v, vl) < 0)
		return -1; /* out of memory: abort the transfer */
	note_header(a, kind, a->up_raw_len - vl);
	return 0;
}

/* ---- the body ----------------------------------------------------------------------- */

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

/* Send the reply head and switch to relaying chunks. */
static void start_stream(struct proxy_req *px)
{
	copy_response_headers(px);
	http_on_written(px->req, relay_written, px);
	http_reply_start(px->req, (int)px->status);
	px->started = true;
	px->streaming = true;
	if (evbuffer_get_length(px->out) > 0)
		http_reply_chunk(px->req, px->out);
}

static int on_body(void *arg, const char *data, size_t len)
{
	struct attempt *a = arg;
	struct proxy_req *px = a->px;

	if (!px->req && !px->draining)
		return -1; /* client gone: abort */
	if (px->draining && (px->drained += len) > DRAIN_MAX_BYTES)
		return -1; /* enough: billed by the estimate */
	if (px->req && px->streaming && http_backlog(px->req) > CLIENT_HIGH_WATER) {
		/* the client is slow, not the upstream: no idle timer while paused */
		px->paused = true;
		CTR_ADD(px->gw->stats.upstream_pauses, 1);
		evtimer_del(&px->timer_ev);
		return 1;
	}
	if (a->anth) {
		a->xl_len = 0;
		if (anth_stream_feed(a->anth, data, len, &a->xl, &a->xl_len, &a->xl_cap) == ANTH_NOMEM)
			return -1;
	}
	if (a->msgin) {
		a->xl_len = 0;
		if (msgin_stream_feed(a->msgin, data, len, &a->xl, &a->xl_len, &a->xl_cap) == MSGIN_NOMEM)
			return -1;
	}
	if ((a->anth && a->xlate) || a->msgin) {
		data = a->xl;
		len = a->xl_len;
		if (len == 0) {
			forward_arm_timer(px, px->route->idle_timeout);
			return 0;   /* an event not complete yet, or one with nothing to say */
		}
	}
	if (px->draining) {
		/* read for its usage only: nobody is there to get it; a whole answer is kept
		 * (bounded by DRAIN_MAX_BYTES) to read its usage at the end */
		px->scan_len = 0;
		if (px->sse && sse_scan_feed(&px->scan, data, len, &px->scan_out, &px->scan_len,
		                             &px->scan_cap) < 0)
			return -1;
		if (!px->sse && !px->streaming)
			evbuffer_add(px->out, data, len);
		forward_arm_timer(px, px->route->idle_timeout);
		return 0;
	}
	if (a->xlate && !px->sse && !a->anth && !a->msgin) {
		if (evbuffer_get_length(px->out) + len > XLATE_LIMIT) {
			a->bad_answer = true;
			return -1;
		}
		evbuffer_add(px->out, data, len);
		return 0;   /* translated at its end (on_done) */
	}
	if (px->sse) {
		px->scan_len = 0;
		if (sse_scan_feed(&px->scan, data, len, &px->scan_out, &px->scan_len, &px->scan_cap) < 0)
			return -1; /* out of memory: abort the transfer */
		evbuffer_add(px->out, px->scan_out, px->scan_len);
		px->bytes_out += px->scan_len;  /* what the client gets, without a stripped chunk */
		log_answer(px, px->scan_out, px->scan_len);
	} else {
		evbuffer_add(px->out, data, len);
		px->bytes_out += len;
		log_answer(px, data, len);
	}
	px->chunks++;
	if (px->holding) {
		size_t held = evbuffer_get_length(px->out);

		if (held <= HOLD_LIMIT &&
		    !sse_first_content((const char *)evbuffer_pullup(px->out, -1), held, &px->hold_seen)) {
			forward_arm_timer(px, px->route->idle_timeout);
			return 0;   /* nothing but a head and content-free events yet */
		}
		px->holding = false;
	}
	if (px->stream_pending || (!px->streaming && evbuffer_get_length(px->out) > BUFFER_LIMIT)) {
		px->stream_pending = false;
		start_stream(px); /* a stream's first bytes, or more than the upstream announced */
	} else if (px->streaming) {
		http_reply_chunk(px->req, px->out);
	}
	if (px->streaming)
		forward_arm_timer(px, px->route->idle_timeout);
	return 0;
}

void relay_written(void *arg)
{
	struct proxy_req *px = arg;

	if (px->paused && px->req && http_backlog(px->req) <= CLIENT_LOW_WATER)
		event_active(&px->resume_ev, 0, 0);
}

void relay_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proxy_req *px = arg;
	(void)fd; (void)what;

	if (!px->paused)
		return;
	px->paused = false;
	forward_arm_timer(px, px->route->idle_timeout);
	tr_resume(&px->att.x);   /* may complete the transfer: nothing after this */
}

/* ---- the end ------------------------------------------------------------------------ */

void relay_reset(struct proxy_req *px)
{
	evbuffer_drain(px->out, evbuffer_get_length(px->out));
	if (px->answer_log)
		evbuffer_drain(px->answer_log, evbuffer_get_length(px->answer_log));
	sse_scan_free(&px->scan);
	sse_scan_init(&px->scan, px->usage_injected);
	px->usage.found = false;
	px->usage.prompt_tokens = px->usage.completion_tokens = -1;
	px->status = 0;
	px->sse = px->stream_pending = px->holding = false;
	px->hold_seen = 0;
	px->chunks = 0;
	px->bytes_out = 0;
}

/* The whole answer is in: the rest of it, then the end, to the client. */
static void answer_complete(struct proxy_req *px)
{
	struct attempt *a = &px->att;
	struct http_request *req;

	if (a->anth) {
		/* the translator's last words: a truncated stream gets its error event */
		a->xl_len = 0;
		anth_stream_finish(a->anth, &a->xl, &a->xl_len, &a->xl_cap);
		a->au = a->anth->usage;
		px->scan_len = 0;
		if (a->xlate && a->xl_len && sse_scan_feed(&px->scan, a->xl, a->xl_len, &px->scan_out,
		                                           &px->scan_len, &px->scan_cap) == 0) {
			evbuffer_add(px->out, px->scan_out, px->scan_len);
			px->bytes_out += px->scan_len;
		}
	} else if (a->msgin) {
		a->xl_len = 0;
		msgin_stream_finish(a->msgin, &a->xl, &a->xl_len, &a->xl_cap);
		a->au = a->msgin->usage;
		px->scan_len = 0;
		if (a->xl_len && sse_scan_feed(&px->scan, a->xl, a->xl_len, &px->scan_out,
		                               &px->scan_len, &px->scan_cap) == 0) {
			evbuffer_add(px->out, px->scan_out, px->scan_len);
			px->bytes_out += px->scan_len;
		}
	} else if (a->anth_read && !px->streaming && evbuffer_get_length(px->out)) {
		char *ignored = NULL;
		size_t n = 0;

		anth_answer((const char *)evbuffer_pullup(px->out, -1), evbuffer_get_length(px->out),
		            0, &ignored, &n, &a->au, NULL, 0);
		free(ignored);
	}
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
	/* Anthropic's own reading, cache writes included (OpenAI's usage has no field for
	 * them), whether the answer was translated or passed */
	if ((a->xlate || a->anth_read) && a->au.found) {
		px->usage.prompt_tokens = a->au.prompt_tokens;
		px->usage.completion_tokens = a->au.completion_tokens;
		px->usage.cached_tokens = a->au.cached_tokens;
		px->usage.cache_write_tokens = a->au.cache_write_tokens;
		px->usage.reasoning_tokens = a->au.reasoning_tokens;
		px->usage.found = true;
	}
	if (!px->req)
		return;   /* drained for its usage: nobody to send the end to */
	if (px->stream_pending) {
		px->stream_pending = false;
		px->holding = false;
		start_stream(px);   /* an empty stream: its head and end go out together */
	}
	if (px->streaming) {
		if (evbuffer_get_length(px->out) > 0)
			http_reply_chunk(px->req, px->out);
		req = proxy_take_req(px);
		http_reply_end(req);
	} else {
		/* a HEAD or 304 answer announces the length the upstream gave */
		const char *cl = up_value(a, a->up_cl);
		int64_t head_len = cl ? (int64_t)dec_at(cl, up_end(a)) : -1;

		copy_response_headers(px);
		/* the answer is whole: its cost is known before its head goes */
		policy_bill(px);
		if (px->cost_nano >= 0 && px->charged) {
			char cost[FMT_USD_MAX];

			fmt_usd_nano(cost, px->cost_nano);
			http_add_header(px->req, "X-Fastgate-Cost", cost);
		}
		req = proxy_take_req(px);
		http_reply_buf(req, (int)px->status, px->out, head_len);
	}
}

struct failure {
	int status;
	const char *kind;
	const char *message;
};

static struct failure classify(const struct attempt *a, enum tr_result r)
{
	if (a->timed_out)
		return a->ttfb_s < 0
		       ? (struct failure){ 504, "timeout", "upstream did not answer in time" }
		       : (struct failure){ 504, "idle_timeout", "upstream stream went idle" };
	if (a->bad_answer)
		r = TR_PROTOCOL;
	switch (r) {
	case TR_CONNECT:
		return (struct failure){ 502, "connect", "upstream refused the connection" };
	case TR_RESOLVE:
		return (struct failure){ 502, "resolve", "upstream host name could not be resolved" };
	case TR_TIMEOUT:
		return (struct failure){ 504, "timeout", "upstream did not answer in time" };
	case TR_TLS:
		return (struct failure){ 502, "tls", "TLS handshake with the upstream failed" };
	case TR_PROTOCOL:
		return (struct failure){ 502, "protocol",
		                         "upstream answered with something that is not HTTP" };
	default:
		return (struct failure){ 502, "reset", "upstream closed the connection" };
	}
}

static enum attempt_outcome failure_outcome(const struct attempt *a, enum tr_result r)
{
	if (a->timed_out)
		return OUTCOME_TIMEOUT;
	if (a->bad_answer)
		return OUTCOME_PROTOCOL;
	switch (r) {
	case TR_CONNECT:
	case TR_RESOLVE:
	case TR_TLS:
		return OUTCOME_CONNECT;   /* nothing of the request went out */
	case TR_TIMEOUT:
		return OUTCOME_TIMEOUT;
	case TR_PROTOCOL:
		return OUTCOME_PROTOCOL;
	default:
		return OUTCOME_RESET;
	}
}

/* A stream that broke after content reached the client: an error event it can read (the
 * SDKs raise on one; bytes of a half-sent event are closed off first), then the cut
 * without the closing chunk, so that nothing reading the framing takes it as complete. */
static void stream_error_event(struct proxy_req *px, const struct failure *f)
{
	char ev[320];
	int n = snprintf(ev, sizeof(ev),
	                 "\n\ndata: {\"error\":{\"message\":\"%s after the answer had started\","
	                 "\"type\":\"upstream_error\",\"code\":\"%s\"}}\n\n", f->message, f->kind);
	struct http_request *req;

	evbuffer_drain(px->out, evbuffer_get_length(px->out));
	evbuffer_add(px->out, ev, (size_t)n < sizeof(ev) ? (size_t)n : sizeof(ev) - 1);
	http_reply_chunk(px->req, px->out);
	req = proxy_take_req(px);
	http_abort(req);   /* writes what is queued first */
}

/* A whole translated answer (or error) in px->out, turned into what the client speaks:
 * false when it is not one. */
static bool translate_whole(struct proxy_req *px)
{
	struct anth_usage u;
	char *out = NULL, err[160];
	size_t n = 0, len = evbuffer_get_length(px->out);
	const char *in = (const char *)evbuffer_pullup(px->out, -1);
	/* the two codecs share their result codes' meaning: OK, an upstream error, invalid */
	int rc = px->att.xlate == XLATE_MESSAGES
	         ? msgin_answer(in, len, &out, &n, &u, err, sizeof(err))
	         : anth_answer(in, len, (long)time(NULL), &out, &n, &u, err, sizeof(err));

	if (rc != ANTH_OK && rc != ANTH_UPSTREAM_ERROR) {
		log_debug("request %s: answer not translated: %s", px->id, err);
		free(out);
		return false;
	}
	evbuffer_drain(px->out, len);
	evbuffer_add(px->out, out, n);
	px->bytes_out = n;
	px->att.au = u;
	free(out);
	return true;
}

static void on_done(void *arg, enum tr_result r)
{
	struct attempt *a = arg;
	struct proxy_req *px = a->px;
	enum attempt_outcome o;
	struct failure f;

	evtimer_del(&px->timer_ev);
	if (px->draining && r == TR_OK && !a->timed_out) {
		/* drained to the end: the upstream's own usage, read as for a whole answer */
		forward_attempt_end(px, attempt_outcome_of_status(a->status), a->status, -1);
		answer_complete(px);
		proxy_finish(px);
		return;
	}
	if (!px->req) {
		forward_attempt_end(px, OUTCOME_ABANDONED, 0, -1);
		proxy_finish(px);
		return;
	}
	if (a->dropped) {
		/* a 429 or 5xx the route retries: its verdict, then the next target */
		forward_attempt_end(px, attempt_outcome_of_status(a->status), a->status,
		                    answer_retry_after(a));
		px->last_status = a->status;
		px->error_kind = a->status == 429 ? "rate_limited" : "upstream_status";
		forward_retry(px);
		return;
	}
	/* a whole translated answer is held until now (never started): translated here */
	if (r == TR_OK && !a->timed_out && a->xlate && !px->sse && !px->started &&
	    !translate_whole(px)) {
		forward_attempt_end(px, OUTCOME_PROTOCOL, 0, -1);
		px->error_kind = "protocol";
		proxy_reply_error(px, 502, "protocol", a->xlate == XLATE_MESSAGES
		                  ? "upstream answered something that is not an OpenAI chat completion"
		                  : "upstream answered something that is not an Anthropic message");
		proxy_finish(px);
		return;
	}
	if (r == TR_OK && !a->timed_out) {
		forward_attempt_end(px, attempt_outcome_of_status(a->status), a->status,
		                    answer_retry_after(a));
		px->error_kind = NULL;   /* an earlier attempt's failure is in the attempts column */
		answer_complete(px);
		proxy_finish(px);
		return;
	}
	f = classify(a, r);
	o = failure_outcome(a, r);
	forward_attempt_end(px, o, 0, -1);
	px->error_kind = f.kind;
	log_debug("request %s: upstream %s (%s)", px->id, f.kind, tr_result_kind(r));
	if (!px->started && forward_may_retry(px, o, 0)) {
		px->last_status = f.status;
		forward_retry(px);
		return;
	}
	if (px->started && px->sse) {
		stream_error_event(px, &f);
		if (px->status < 400)
			px->status = f.status; /* recorded as the gateway's failure, not a 200 */
	} else if (px->started) {
		/* the client cannot be told the answer broke except by a cut without the closing
		 * chunk, so that it sees a truncated answer rather than a complete one */
		struct http_request *req = proxy_take_req(px);
		if (req)
			http_abort(req);
		if (px->status < 400)
			px->status = f.status;
	} else {
		proxy_reply_error(px, f.status, f.kind, f.message);
	}
	proxy_finish(px);
}

void relay_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proxy_req *px = arg;
	(void)fd; (void)what;

	px->att.timed_out = true;
	if (px->timer_is_deadline)
		px->deadline_hit = true;
	forward_cancel(px);
	on_done(&px->att, TR_TIMEOUT);
}

const struct tr_callbacks relay_callbacks = { on_line, on_body, on_done };

/* ---- bodies for the audit row -------------------------------------------------------- */

/* Blank out every occurrence of a secret in a kept body. */
static void redact(char *buf, size_t len, const char *secret, size_t sl)
{
	char *hit;

	if (!secret || sl < 8)
		return;
	while ((hit = memmem(buf, len, secret, sl)))
		memset(hit, '*', sl);
}

/* At most the route's log_bodies bytes, with the secrets the gateway knows of (the
 * keys of the route's upstreams, and for the request the client's own key) blanked out in case a
 * client or an upstream echoes one. NUL bytes become spaces: the column is text. */
char *relay_body_for_audit(const struct proxy_req *px, const char *data, size_t len,
                           const char *client_secret, size_t client_secret_len)
{
	const struct route *r = px->route;
	size_t cap = (size_t)r->log_bodies, longest = client_secret_len;
	size_t n;
	char *out;

	for (size_t i = 0; i < r->n_targets; i++)
		if (r->targets[i].api_key && strlen(r->targets[i].api_key) > longest)
			longest = strlen(r->targets[i].api_key);
	/* redact before cutting, so that a secret straddling the cut leaves no prefix behind */
	n = cap + longest;
	if (n > len)
		n = len;
	out = malloc(n + 1);
	if (!out)
		return NULL;
	memcpy(out, data, n);
	for (size_t i = 0; i < r->n_targets; i++)
		if (r->targets[i].api_key)
			redact(out, n, r->targets[i].api_key, strlen(r->targets[i].api_key));
	redact(out, n, client_secret, client_secret_len);
	len = n < cap ? n : cap;
	out[len] = '\0';
	for (size_t i = 0; i < len; i++)
		if (out[i] == '\0')
			out[i] = ' ';
	return out;
}
