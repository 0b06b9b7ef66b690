/* The state of one proxied request, shared by the phases of the request path:
 * proxy.c (head, authenticate, body, parse, match, policy, cache, done), forward.c (the
 * attempt: the upstream request and its transfer) and relay.c (the answer, to the client).
 *
 * Two structs: the request (one per client request, from its head to its audit row) and
 * the attempt (one per try of an upstream: what was sent where and what came back). A
 * later retry or failover makes a new attempt and keeps the request.
 *
 * Ownership: proxy.c creates a request in proxy_request and frees it in exactly one place
 * (proxy_finish), which runs once. It may run inside a callback only where the caller of
 * that callback touches nothing of the request afterwards: the transport's `done` (called
 * last), the body callback and the handler itself (http.c returns at once), the request's
 * own events. Where that does not hold (the client vanished inside an http.c call), it is
 * deferred to finish_ev (the Redis freeClientAsync idea).
 *
 * Layer: flow. */
#ifndef FG_REQUEST_H
#define FG_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <event2/buffer.h>
#include <event2/event_struct.h>

#include "anthropic.h"
#include "messages_in.h"
#include "gateway.h"
#include "http.h"
#include "pool.h"
#include "pricing.h"
#include "reqid.h"
#include "spend.h"
#include "reqjson.h"
#include "transport.h"
#include "usage.h"

/* One try of an upstream. */
struct attempt {
	struct proxy_req *px;
	struct tr_xfer x;
	int target;                       /* index in px->route->targets; -1 before a pick */
	enum breaker_pass pass;           /* the breaker's ticket, handed back at the end */
	int64_t started_ms;               /* monotonic */
	double started_s;                 /* proxy_elapsed at its start: with ttfb_s, the
	                                   * upstream's own time to the head, to the microsecond */
	bool ended;                       /* its outcome went to the pool */
	bool dropped;                     /* its answer (a 429 or 5xx) is dropped for a retry */
	char *body;                       /* the body with this target's model, or translated
	                                   * for its provider; NULL: px's */
	size_t body_len;
	/* the request and its answer translated (relay.c): OpenAI's chat to an Anthropic
	 * upstream, or Anthropic's Messages API to an OpenAI one */
	enum { XLATE_NONE, XLATE_ANTHROPIC, XLATE_MESSAGES } xlate;
	struct anth_stream *anth;         /* XLATE_ANTHROPIC stream (or anth_read): the translator */
	struct msgin_stream *msgin;       /* XLATE_MESSAGES stream: the translator */
	char *xl;                         /* its output for one body chunk, reused */
	size_t xl_len, xl_cap;
	bool anth_read;                   /* an Anthropic answer passed as it is (/v1/messages):
	                                   * read for its usage only */
	struct anth_usage au;             /* Anthropic's usage, read once (translated or not):
	                                   * the audit's counts, cache writes included */
	char *head;                       /* the request head, as the upstream gets it */
	size_t head_len, head_cap;
	/* the answer's head, as it arrives */
	long status;
	char *up_raw;                     /* headers, "name\0value\0"...: copied once into the reply */
	size_t up_raw_len, up_raw_cap;
	size_t up_ct, up_cl, up_conn, up_ra, up_rid; /* 1 + offset in up_raw of the first
	                                   * Content-Type, Content-Length, Connection, Retry-After
	                                   * and request-id (or x-request-id) values; 0 = none */
	double ttfb_s;                    /* < 0 until the answer's head is in */
	bool timed_out;
	bool bad_answer;                  /* a head line we will not relay (protocol error) */
};

struct proxy_req {
	struct proxy_req *next_spare;     /* first: the loop's spares are linked through it */
	struct gateway *gw;
	struct http_request *req;         /* NULL once ended or the client is gone */
	unsigned phase;                   /* the phase to run next (proxy.c) */
	struct route_table *table;        /* referenced: the route outlives a reload */
	const struct route *route;
	int64_t key_id;
	char *key_name;
	const char *secret;               /* the client's key, in its request's headers */
	size_t secret_len;
	char id[REQID_LEN + 1];
	double started_at;                /* wall clock, for the audit */
	struct timespec t_start;
	const char *method;               /* static: http.c's method table */
	char *path;                       /* as the client sent it, without the query */
	char client_ip[64];
	bool head_request;                /* HEAD: the answer has no body */
	struct key *key;                  /* found at authentication; keys stay in memory
	                                   * until the store closes */
	struct reqjson rj;                /* the body's one reading (parse phase) */
	struct route_request rq;          /* what matching sees */

	/* the body and its one reading */
	char *body;                       /* taken from the connection */
	size_t body_len;
	char *body_rewritten;             /* when add_body_fields or usage injection changed it */
	size_t rewritten_len;
	char model[128];                  /* the request's "model", for the audit */
	bool client_stream;               /* the client asked for a stream */
	bool include_usage;               /* ... with stream_options.include_usage */
	bool usage_injected;              /* the gateway asked the stream for usage (the
	                                   * scanner strips it again) */
	char *body_log;                   /* log_bodies: the request body as forwarded */
	struct evbuffer *answer_log;      /* log_bodies: the answer as relayed, up to the cap */

	struct attempt att;               /* the upstream try under way (reused by the next) */
	bool forwarded;                   /* an attempt was started */
	/* the attempt loop (forward.c) */
	const struct route *first_route;  /* the matched route, before any fallback */
	size_t next_fallback;             /* first_route->fallback[next_fallback] is next */
	uint64_t tried;                   /* targets of px->route tried (bit i = targets[i]) */
	int route_attempts;               /* attempts on px->route */
	int attempts;                     /* attempts in all */
	long last_status;                 /* status to report if a retry finds nothing left */
	int64_t deadline_ms;              /* monotonic end of retry.deadline; 0 = none */
	bool timer_is_deadline;           /* timer_ev is armed for the deadline */
	bool deadline_hit;                /* ... and it fired: no attempt after this one */
	char *attempt_log;                /* "url=outcome:ms;...", for the audit */
	size_t attempt_log_len, attempt_log_cap;
	bool holding;                     /* a stream's head and content-free events wait for
	                                   * content, so that a failure before it can be retried */
	size_t hold_seen;                 /* bytes of out already found content-free */

	/* spend control (proxy.c: policy phase, then the bill at the end) */
	struct spend_hold hold;           /* the estimate reserved against limits and balance */
	struct price price;               /* the model's price, copied: a reload may free the
	                                   * table while the request runs (match is NULL) */
	bool priced;                      /* price holds the model's price */
	bool billed;                      /* bill() ran: cost_nano and the flags are final */
	bool charged;                     /* ... and the hold was settled, not released */
	bool usage_estimated;             /* the bill's tokens are the gateway's estimate */
	char price_version[PRICE_VERSION_MAX + 1];
	int64_t mult[3];                  /* the key's, the user's and the global multiplier
	                                   * (ppm): their product is taken exactly */
	unsigned n_mult;
	int64_t est_prompt;               /* tokens: the prompt's estimate */
	int64_t cost_nano;                /* the bill; -1 = none (unpriced, or not charged) */

	/* the answer, on its way to the client (relay.c) */
	struct evbuffer *out;             /* buffered answer, or one chunk to relay */
	bool sse;                         /* the answer is an event stream being scanned */
	struct sse_scan scan;             /* finds usage in a stream; strips what we injected */
	char *scan_out;                   /* scanner output buffer, reused per chunk */
	size_t scan_len, scan_cap;
	struct usage usage;
	long status;                      /* what the client got */
	bool started;                     /* reply head sent to the client */
	bool streaming;
	bool stream_pending;              /* a stream whose head waits for its first bytes */
	bool paused;
	bool draining;                    /* the client left a stream on an on_disconnect: drain
	                                   * route: the upstream is read on for its usage */
	size_t drained;                   /* bytes read since (bounded: DRAIN_MAX_BYTES) */
	bool left_in_flight;              /* the client left while the upstream had the request */
	bool finished;
	const char *error_kind;           /* upstream failure kind for metrics, or NULL */
	unsigned chunks;
	size_t bytes_out;

	/* embedded, not allocated: fewer mallocs per request */
	struct event timer_ev;            /* first byte, then idle between chunks */
	struct event resume_ev;           /* deferred transport resume */
	struct event finish_ev;           /* deferred finish after the client vanished */
	struct event *retry_ev;           /* the next attempt, started from the loop (allocated
	                                   * on the first retry) */
};

/* ---- proxy.c ---- */
/* Answer with a gateway error (OpenAI shape); the request is not the client's any more. */
void proxy_reply_error(struct proxy_req *px, int status, const char *code, const char *message);
/* May this key use the route (its allowed-routes list)? */
bool proxy_key_allows_route(const struct key *k, const char *route);
/* Stop watching the client before an ending reply; returns the request to end. */
struct http_request *proxy_take_req(struct proxy_req *px);
/* The request's end: done hook, then free. Runs once; from the loop only. */
void proxy_finish(struct proxy_req *px);
double proxy_elapsed(const struct proxy_req *px);

/* ---- forward.c ---- */
/* The forward phase: the first attempt. false when the request was answered at once (no
 * target available: 503, or it could not be started: 500); the caller then finishes it. */
bool forward_begin(struct proxy_req *px);
/* The attempt under way ended with outcome o (status: the answer's, or 0; retry_after_s
 * from its head or -1): its verdict goes to the target's breaker and the audit. */
void forward_attempt_end(struct proxy_req *px, enum attempt_outcome o, long status,
                         int64_t retry_after_s);
/* May the request be tried again elsewhere after outcome o (status for 429/5xx)? Nothing
 * may have reached the client; the route's retry policy, its deadline and the targets and
 * fallbacks left decide. */
bool forward_may_retry(struct proxy_req *px, enum attempt_outcome o, long status);
/* Start the next attempt from the loop (after forward_may_retry said yes). */
void forward_retry(struct proxy_req *px);
/* Free what the attempt holds (proxy_finish). */
void forward_attempt_free(struct attempt *a);
/* Free what the attempt holds for its target, keeping its two buffers (head, up_raw) for
 * the next request made in the same memory (proxy.c's spares). */
void forward_attempt_clear(struct attempt *a);
/* Arm the request's timer (first byte, or idle between chunks); never past the deadline. */
void forward_arm_timer(struct proxy_req *px, int seconds);
/* Stop the attempt's transfer if it is running; false when there was none. */
bool forward_cancel(struct proxy_req *px);
/* Event callback (arg: the request): the deferred next attempt. */
void forward_retry_cb(evutil_socket_t fd, short what, void *arg);

/* ---- relay.c ---- */
extern const struct tr_callbacks relay_callbacks;
/* The answer's request-id (or x-request-id) header value, or NULL. */
const char *relay_upstream_request_id(const struct attempt *a);
/* Forget what a failed attempt's answer left (nothing of it reached the client). */
void relay_reset(struct proxy_req *px);
/* http_on_written: ask the transport for more once the client's backlog is low. */
void relay_written(void *arg);
/* Event callbacks (arg: the request): the first-byte or idle timer, and the deferred
 * resume of a paused transfer. */
void relay_timer_cb(evutil_socket_t fd, short what, void *arg);
void relay_resume_cb(evutil_socket_t fd, short what, void *arg);
/* log_bodies: keep at most the route's log_bodies bytes of data, secrets blanked. */
char *relay_body_for_audit(const struct proxy_req *px, const char *data, size_t len,
                           const char *client_secret, size_t client_secret_len);

#endif
