/* Control protocol: the framing fastgated and fastgate-cli share.
 *
 * A Unix stream socket carrying newline-delimited JSON, one object per line:
 *   server greeting   {"fastgate":"0.1.0","protocol":1}
 *   request           {"id":N,"cmd":"key.create","args":{...}}
 *   reply             {"id":N,"ok":true,"result":...}
 *                     {"id":N,"ok":false,"error":{"code":"...","message":"..."}}
 *   streamed reply    {"id":N,"event":...} ... then {"id":N,"ok":true,"end":true}
 * A reply to a request whose id could not be read carries "id":null.
 *
 * Everything here is a pure function over bytes and jansson values (no sockets, no
 * libevent), so both programs use the same code and the unit tests can reach all of it. */
#ifndef FG_CTLPROTO_H
#define FG_CTLPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>

#define CTL_PROTOCOL_VERSION 1

/* Longest request line the daemon accepts, without its '\n'. */
#define CTL_LINE_MAX   (64 * 1024)
/* Longest reply line the CLI accepts: a key list can be far larger than a request. */
#define CTL_REPLY_MAX  (64 * 1024 * 1024)

/* Error codes carried in error.code. Scripts match on these; never rename one. */
#define CTL_E_BAD_REQUEST     "bad_request"     /* not JSON, not an object, no integer id, no cmd */
#define CTL_E_LINE_TOO_LONG   "line_too_long"   /* request line over CTL_LINE_MAX; connection closed */
#define CTL_E_UNKNOWN_COMMAND "unknown_command"
#define CTL_E_BAD_ARGS        "bad_args"        /* missing, unknown or ill-typed argument */
#define CTL_E_NOT_FOUND       "not_found"       /* no such key id / route name */
#define CTL_E_ROUTE_UNAVAILABLE "route_unavailable" /* enabling a route whose if_env is unset */
#define CTL_E_RELOAD_FAILED   "reload_failed"   /* error.errors holds every FILE:LINE line */
#define CTL_E_BUSY            "busy"            /* too many control clients; connection closed */
#define CTL_E_INTERNAL        "internal"

/* What went wrong while decoding a line: a code above and a message for the user. */
struct ctl_error {
	const char *code;
	char message[256];
};

/* ---- line framing ---- */

/* Collects bytes from a stream and hands out complete lines. Lines end at '\n'; one '\r'
 * before it is dropped (for people typing into nc/socat). Memory stays bounded by `max`
 * plus one appended chunk. */
struct ctl_linebuf {
	char *buf;
	size_t start;    /* first byte not yet handed out */
	size_t len;      /* bytes held, from buf[0] */
	size_t cap;
	size_t scanned;  /* bytes from `start` already known to hold no '\n' */
	size_t max;      /* longest line accepted, without '\n' */
};

enum ctl_line_status {
	CTL_LINE_NONE = 0,      /* no complete line yet: append more */
	CTL_LINE_OK = 1,        /* line and len set */
	CTL_LINE_TOO_LONG = -1, /* the pending line is over max: the stream cannot be resynchronised */
};

void ctl_linebuf_init(struct ctl_linebuf *lb, size_t max);
void ctl_linebuf_free(struct ctl_linebuf *lb);
/* Append bytes read from the peer. 0, or -1 when out of memory. Invalidates lines handed
 * out before. */
int ctl_linebuf_append(struct ctl_linebuf *lb, const void *data, size_t n);
/* Next complete line. On CTL_LINE_OK, *line points into the buffer (NUL-terminated, no
 * '\n'), valid until the next call to any ctl_linebuf function. */
enum ctl_line_status ctl_linebuf_next(struct ctl_linebuf *lb, char **line, size_t *len);
/* Bytes held that are not yet handed out (an unterminated tail, or lines not yet taken). */
size_t ctl_linebuf_pending(const struct ctl_linebuf *lb);
/* At end of stream: hand out an unterminated last line, as if it had ended in '\n'.
 * Same contract as ctl_linebuf_next; CTL_LINE_NONE when nothing is left. */
enum ctl_line_status ctl_linebuf_take_rest(struct ctl_linebuf *lb, char **line, size_t *len);

/* ---- requests (daemon side) ---- */

struct ctl_request {
	json_t *root;        /* the parsed line; owns cmd */
	bool has_id;
	json_int_t id;
	const char *cmd;     /* NULL if the request could not be read that far */
	json_t *args;        /* an object, never NULL after a successful parse (owned reference) */
};

/* Decode one request line. 0 on success. -1 with *err filled: rq->has_id/rq->id still say
 * whether an id was read, so the error reply can carry it. Always pair with
 * ctl_request_clear. Rules: the line is a JSON object; "id" an integer; "cmd" a non-empty
 * string; "args" absent, null or an object. Anything else is bad_request. */
int ctl_parse_request(const char *line, size_t len, struct ctl_request *rq, struct ctl_error *err);
void ctl_request_clear(struct ctl_request *rq);

/* ---- encoders: each returns one complete line ending in '\n', malloc'd (caller frees),
 * or NULL when out of memory. Values passed in are borrowed, not stolen. ---- */

char *ctl_encode_greeting(const char *version);
char *ctl_encode_request(json_int_t id, const char *cmd, const json_t *args);
char *ctl_encode_result(bool has_id, json_int_t id, const json_t *result);
/* `extra`, if not NULL, is an object whose members are added to the error object
 * (e.g. "errors":[...] for reload_failed). */
char *ctl_encode_error(bool has_id, json_int_t id, const char *code, const char *message,
                       const json_t *extra);
char *ctl_encode_event(json_int_t id, const json_t *event);
char *ctl_encode_end(json_int_t id);

/* ---- replies (CLI side) ---- */

enum ctl_reply_kind {
	CTL_REPLY_RESULT,   /* ok:true with result (JSON null if the server sent none) */
	CTL_REPLY_ERROR,    /* ok:false */
	CTL_REPLY_EVENT,    /* one streamed item */
	CTL_REPLY_END,      /* ok:true, end:true: the stream is over */
};

struct ctl_reply {
	json_t *root;
	enum ctl_reply_kind kind;
	bool has_id;
	json_int_t id;
	json_t *result;       /* CTL_REPLY_RESULT: borrowed from root */
	json_t *event;        /* CTL_REPLY_EVENT: borrowed from root */
	json_t *error;        /* CTL_REPLY_ERROR: the error object, borrowed from root */
	const char *code;     /* CTL_REPLY_ERROR: never NULL ("internal" if the server sent none) */
	const char *message;  /* CTL_REPLY_ERROR: never NULL */
};

/* Decode one reply line. 0, or -1 with *err (code bad_request) if it is not a reply. */
int ctl_parse_reply(const char *line, size_t len, struct ctl_reply *rp, struct ctl_error *err);
void ctl_reply_clear(struct ctl_reply *rp);

/* Decode the greeting. 0 with the server's version copied into version[vsize] and its
 * protocol number in *protocol; -1 with *err if the line is not a greeting. */
int ctl_parse_greeting(const char *line, size_t len, char *version, size_t vsize, int *protocol,
                       struct ctl_error *err);

/* Limits on command arguments, in one place for both programs: the daemon checks them, and
 * fastgate-cli checks them first so that a mistake exits 2 without asking the daemon
 * (even when it is down). */
#define CTL_RPM_MAX          1000000   /* key rpm */
#define CTL_EXPIRES_DAYS_MAX 36500     /* key expires_days */
#define CTL_TAIL_LINES_MAX   10000     /* logs.tail lines */
#define CTL_HOURS_MAX        2160      /* metrics hours: 90 days of hourly rows */
#define CTL_DAYS_MAX         3660      /* metrics days */
#define CTL_ALLOW_IPS_MAX    64        /* key allow_ips: address ranges on one key */

#endif
