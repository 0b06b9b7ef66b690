/* Control socket: the daemon side of fastgate-cli.
 *
 * A Unix stream socket served on the gateway's event loop with bufferevents. Each client
 * gets the greeting, then its request lines are answered in order (see ctlproto.h for the
 * framing). Commands are declared once, in the table in control.c: name, argument usage,
 * one-line help, handler. Commands that change state are logged with the caller's uid. */
#ifndef FG_CONTROL_H
#define FG_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "ctlproto.h"

struct gateway;
struct control;
struct ctl_call;
struct audit_record;
struct logs;
struct dbq;
struct route;

#define CTL_MAX_CLIENTS 64

/* Bind `path` and start accepting on gw->base. If a socket file already exists it is
 * removed only when nothing answers on it; a live daemon there is an error. Mode 0600,
 * or 0660 with group `group` (may be NULL). Ignores SIGPIPE process-wide, since a client
 * that hangs up mid-reply must not kill the daemon. NULL with *err set (caller frees) on
 * failure. */
struct control *control_start(struct gateway *gw, const char *path, const char *group, char **err);
/* Close every client (streams are cancelled), stop listening and unlink the socket file if
 * it is still the one we created. NULL is fine. */
void control_stop(struct control *c);

/* Live tail: called on the loop thread for every finished request, before the record is
 * handed to the audit writer. Fans the record out to `logs.tail` followers whose filters
 * match (a follower that reads too slowly loses events and is told how many) and keeps a
 * copy in a small ring of recent records, so a tail or `logs.show` right after a request
 * sees it even before the writer has committed it. Borrows r. c NULL: does nothing. */
void control_publish_audit(struct control *c, const struct audit_record *r);

/* ---- handler API ----
 * A handler is called with one request and must, before it returns, either answer with
 * ctl_reply_ok / ctl_reply_error, or start a stream with ctl_stream_begin. The call is
 * owned by the control module: it is freed after a direct answer, or after
 * ctl_stream_end / ctl_stream_fail, or (after the cancel callback ran) when the client goes
 * away. Until then the client's later requests wait, so replies keep their order. */

struct gateway *ctl_call_gateway(const struct ctl_call *call);
/* The control socket's log and query modules (logs.h, stats.h), for their handlers. */
struct logs *ctl_call_logs(const struct ctl_call *call);
struct dbq *ctl_call_dbq(const struct ctl_call *call);

/* Answer with {"ok":true,"result":result}. Steals `result` (NULL = JSON null). */
void ctl_reply_ok(struct ctl_call *call, json_t *result);
/* Answer with {"ok":false,"error":{code, message, ...extra}}. Steals `extra` (may be NULL). */
void ctl_reply_error(struct ctl_call *call, const char *code, json_t *extra, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Streaming (logs.tail, logs.export).
 * cancel: the client went away or the daemon is stopping; the handler must forget `call`
 *         (it is freed right after cancel returns) and must not call any ctl_ function on it.
 * drain:  the client's output buffer fell below CTL_STREAM_LOW_WATER; a producer that
 *         paused because ctl_stream_backlog() was high may continue. May be NULL.
 * A subscriber that cannot keep up must be told by a "dropped" count inside its events,
 * never by letting ctl_stream_backlog() grow without bound. */
#define CTL_STREAM_LOW_WATER  (64 * 1024)
#define CTL_STREAM_HIGH_WATER (1024 * 1024)
typedef void (*ctl_stream_cb)(struct ctl_call *call, void *arg);
void ctl_stream_begin(struct ctl_call *call, ctl_stream_cb cancel, ctl_stream_cb drain, void *arg);
/* Send {"id":N,"event":event}. Steals `event`. 0, or -1 if the line could not be queued. */
int ctl_stream_event(struct ctl_call *call, json_t *event);
/* Bytes waiting to be written to this client. */
size_t ctl_stream_backlog(const struct ctl_call *call);
/* Finish: {"id":N,"ok":true,"end":true}; frees the call. */
void ctl_stream_end(struct ctl_call *call);
/* Finish with an error reply instead (after zero or more events); frees the call. */
void ctl_stream_fail(struct ctl_call *call, const char *code, const char *message);
/* Deferred answer: a handler whose work runs elsewhere (a query on a worker thread) starts
 * a stream with ctl_stream_begin and later, on the loop thread, answers with an ordinary
 * {"ok":true,"result":result} (no events before it). Steals `result` (NULL = out of
 * memory: an internal error is sent instead); frees the call. */
void ctl_stream_result(struct ctl_call *call, json_t *result);

/* ---- argument helpers for handlers: each replies bad_args and returns false on a bad
 * value ---- */
/* Reject members not named in `allowed` (NULL-terminated): a typo must not be ignored. */
bool ctl_args_only(struct ctl_call *call, json_t *args, const char *const *allowed);
/* A non-empty string; absent or null gives *out = NULL unless required. */
bool ctl_arg_string(struct ctl_call *call, json_t *args, const char *key, bool required,
                    const char **out);
/* An integer in [min, max]; absent or null leaves *out as it was (the caller's default). */
bool ctl_arg_int(struct ctl_call *call, json_t *args, const char *key, bool required,
                 json_int_t min, json_int_t max, json_int_t *out);
/* true or false; absent or null leaves *out as it was. */
bool ctl_arg_bool(struct ctl_call *call, json_t *args, const char *key, bool *out);

/* Upstream i of route r as `upstream show` prints it (never its key): id "ROUTE/INDEX",
 * URL, weight, priority, model, state, breaker, in flight, latency average, attempts by
 * outcome. now_ms is mono_ms(). A new object, or NULL when out of memory. */
json_t *ctl_upstream_json(const struct route *r, size_t i, int64_t now_ms);

#endif
