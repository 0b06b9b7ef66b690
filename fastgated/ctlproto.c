/* Control protocol framing: line splitting, request/reply decoding and encoding.
 * See ctlproto.h for the wire format. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctlproto.h"

static void set_err(struct ctl_error *err, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_err(struct ctl_error *err, const char *code, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return;
	err->code = code;
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
}

/* ---- line framing ---- */

void ctl_linebuf_init(struct ctl_linebuf *lb, size_t max)
{
	memset(lb, 0, sizeof(*lb));
	lb->max = max;
}

void ctl_linebuf_free(struct ctl_linebuf *lb)
{
	free(lb->buf);
	lb->buf = NULL;
	lb->start = lb->len = lb->cap = lb->scanned = 0;
}

size_t ctl_linebuf_pending(const struct ctl_linebuf *lb)
{
	return lb->len - lb->start;
}

int ctl_linebuf_append(struct ctl_linebuf *lb, const void *data, size_t n)
{
	/* Reclaim what was handed out before growing, so a long-lived connection keeps a
	 * buffer the size of its longest line, not of everything it ever sent. */
	if (lb->start > 0) {
		memmove(lb->buf, lb->buf + lb->start, lb->len - lb->start);
		lb->len -= lb->start;
		lb->start = 0;
	}
	/* +1: ctl_linebuf_take_rest NUL-terminates an unterminated tail in place. */
	if (lb->len + n + 1 > lb->cap) {
		size_t cap = lb->cap ? lb->cap : 4096;
		char *p;

		while (cap < lb->len + n + 1)
			cap *= 2;
		p = realloc(lb->buf, cap);
		if (!p)
			return -1;
		lb->buf = p;
		lb->cap = cap;
	}
	if (n)
		memcpy(lb->buf + lb->len, data, n);
	lb->len += n;
	return 0;
}

/* Hand out [start, start+n) as a line ending at buf[start+n] ('\n' or end of data). */
static void hand_out(struct ctl_linebuf *lb, size_t n, size_t consumed, char **line, size_t *len)
{
	char *s = lb->buf + lb->start;

	if (n > 0 && s[n - 1] == '\r')
		n--;
	s[n] = '\0';
	*line = s;
	*len = n;
	lb->start += consumed;
	lb->scanned = 0;
}

enum ctl_line_status ctl_linebuf_next(struct ctl_linebuf *lb, char **line, size_t *len)
{
	size_t avail = lb->len - lb->start;
	char *s, *nl;

	if (avail == 0)
		return CTL_LINE_NONE;
	s = lb->buf + lb->start;
	nl = memchr(s + lb->scanned, '\n', avail - lb->scanned);
	if (!nl) {
		lb->scanned = avail;
		/* A tail of exactly max bytes may still be followed by "\r\n". */
		if (avail > lb->max + 1 || (avail == lb->max + 1 && s[avail - 1] != '\r'))
			return CTL_LINE_TOO_LONG;
		return CTL_LINE_NONE;
	}
	{
		size_t n = (size_t)(nl - s);
		size_t content = (n > 0 && s[n - 1] == '\r') ? n - 1 : n;

		if (content > lb->max)
			return CTL_LINE_TOO_LONG;
		hand_out(lb, n, n + 1, line, len);
	}
	return CTL_LINE_OK;
}

enum ctl_line_status ctl_linebuf_take_rest(struct ctl_linebuf *lb, char **line, size_t *len)
{
	enum ctl_line_status st = ctl_linebuf_next(lb, line, len);
	size_t avail;

	if (st != CTL_LINE_NONE)
		return st;
	avail = lb->len - lb->start;
	if (avail == 0)
		return CTL_LINE_NONE;
	/* append() always leaves one spare byte for this terminator. */
	hand_out(lb, avail, avail, line, len);
	return CTL_LINE_OK;
}

/* ---- decoding ---- */

/* Parse one line as a JSON object. NULL with *err (bad_request) otherwise. */
static json_t *load_object(const char *line, size_t len, struct ctl_error *err)
{
	json_error_t jerr;
	json_t *root;

	root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		set_err(err, CTL_E_BAD_REQUEST, "malformed JSON at column %d: %s", jerr.column,
		        jerr.text);
		return NULL;
	}
	if (!json_is_object(root)) {
		set_err(err, CTL_E_BAD_REQUEST, "a request must be a JSON object");
		json_decref(root);
		return NULL;
	}
	return root;
}

/* Read "id": 1 if an integer id is present (stored in *id), 0 if absent or null,
 * -1 if present with another type. */
static int read_id(json_t *root, json_int_t *id)
{
	json_t *v = json_object_get(root, "id");

	if (!v || json_is_null(v))
		return 0;
	if (!json_is_integer(v))
		return -1;
	*id = json_integer_value(v);
	return 1;
}

int ctl_parse_request(const char *line, size_t len, struct ctl_request *rq, struct ctl_error *err)
{
	json_t *cmd, *args;
	int r;

	memset(rq, 0, sizeof(*rq));
	if (len > CTL_LINE_MAX) {
		set_err(err, CTL_E_LINE_TOO_LONG, "request line longer than %d bytes", CTL_LINE_MAX);
		return -1;
	}
	rq->root = load_object(line, len, err);
	if (!rq->root)
		return -1;
	r = read_id(rq->root, &rq->id);
	if (r < 0) {
		set_err(err, CTL_E_BAD_REQUEST, "\"id\" must be an integer");
		return -1;
	}
	if (r == 0) {
		set_err(err, CTL_E_BAD_REQUEST, "missing \"id\" (an integer the reply will carry)");
		return -1;
	}
	rq->has_id = true;

	cmd = json_object_get(rq->root, "cmd");
	if (!cmd) {
		set_err(err, CTL_E_BAD_REQUEST, "missing \"cmd\"");
		return -1;
	}
	if (!json_is_string(cmd) || json_string_length(cmd) == 0) {
		set_err(err, CTL_E_BAD_REQUEST, "\"cmd\" must be a non-empty string");
		return -1;
	}
	rq->cmd = json_string_value(cmd);

	args = json_object_get(rq->root, "args");
	if (!args || json_is_null(args)) {
		rq->args = json_object();
		if (!rq->args) {
			set_err(err, CTL_E_INTERNAL, "out of memory");
			return -1;
		}
	} else if (json_is_object(args)) {
		rq->args = json_incref(args);
	} else {
		set_err(err, CTL_E_BAD_REQUEST, "\"args\" must be an object");
		return -1;
	}
	return 0;
}

void ctl_request_clear(struct ctl_request *rq)
{
	json_decref(rq->args);
	json_decref(rq->root);
	memset(rq, 0, sizeof(*rq));
}

int ctl_parse_reply(const char *line, size_t len, struct ctl_reply *rp, struct ctl_error *err)
{
	json_t *ok, *v;
	int r;

	memset(rp, 0, sizeof(*rp));
	rp->root = load_object(line, len, err);
	if (!rp->root)
		return -1;
	r = read_id(rp->root, &rp->id);
	if (r < 0) {
		set_err(err, CTL_E_BAD_REQUEST, "reply \"id\" is not an integer");
		goto fail;
	}
	rp->has_id = r == 1;

	if ((v = json_object_get(rp->root, "event")) != NULL) {
		rp->kind = CTL_REPLY_EVENT;
		rp->event = v;
		return 0;
	}
	ok = json_object_get(rp->root, "ok");
	if (!json_is_boolean(ok)) {
		set_err(err, CTL_E_BAD_REQUEST, "reply has neither \"ok\" nor \"event\"");
		goto fail;
	}
	if (json_is_true(ok)) {
		if (json_is_true(json_object_get(rp->root, "end"))) {
			rp->kind = CTL_REPLY_END;
			return 0;
		}
		rp->kind = CTL_REPLY_RESULT;
		rp->result = json_object_get(rp->root, "result");
		if (!rp->result) {
			/* A result-less reply still means "done"; give callers a value to print. */
			json_object_set_new(rp->root, "result", json_null());
			rp->result = json_object_get(rp->root, "result");
		}
		return 0;
	}
	rp->kind = CTL_REPLY_ERROR;
	rp->error = json_object_get(rp->root, "error");
	if (json_is_object(rp->error)) {
		rp->code = json_string_value(json_object_get(rp->error, "code"));
		rp->message = json_string_value(json_object_get(rp->error, "message"));
	}
	if (!rp->code)
		rp->code = CTL_E_INTERNAL;
	if (!rp->message)
		rp->message = "the daemon reported an error without a message";
	return 0;
fail:
	json_decref(rp->root);
	rp->root = NULL;
	return -1;
}

void ctl_reply_clear(struct ctl_reply *rp)
{
	json_decref(rp->root);
	memset(rp, 0, sizeof(*rp));
}

int ctl_parse_greeting(const char *line, size_t len, char *version, size_t vsize, int *protocol,
                       struct ctl_error *err)
{
	json_t *root, *v, *p;
	int ret = -1;

	root = load_object(line, len, err);
	if (!root)
		return -1;
	v = json_object_get(root, "fastgate");
	p = json_object_get(root, "protocol");
	if (!json_is_string(v) || !json_is_integer(p)) {
		set_err(err, CTL_E_BAD_REQUEST, "not a fastgate greeting");
		goto done;
	}
	if (vsize > 0)
		snprintf(version, vsize, "%s", json_string_value(v));
	*protocol = (int)json_integer_value(p);
	ret = 0;
done:
	json_decref(root);
	return ret;
}

/* ---- encoding ---- */

/* Serialise `obj` as one compact line with '\n'. Takes ownership of obj. Compact jansson
 * output escapes control characters inside strings, so the line holds no other '\n'. */
static char *finish_line(json_t *obj)
{
	char *s, *line = NULL;
	size_t n;

	if (!obj)
		return NULL;
	s = json_dumps(obj, JSON_COMPACT | JSON_ENCODE_ANY);
	json_decref(obj);
	if (!s)
		return NULL;
	n = strlen(s);
	line = malloc(n + 2);
	if (line) {
		memcpy(line, s, n);
		line[n] = '\n';
		line[n + 1] = '\0';
	}
	free(s);
	return line;
}

/* Start a reply object with its "id" member (null when the request's id is unknown). */
static json_t *reply_head(bool has_id, json_int_t id)
{
	json_t *o = json_object();

	if (o && json_object_set_new(o, "id", has_id ? json_integer(id) : json_null()) < 0) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* Add `v` under `key`, borrowing it (json_object_set takes its own reference). A NULL
 * value fails the whole encoding rather than producing a reply without the member. */
static int put(json_t *o, const char *key, const json_t *v)
{
	return v ? json_object_set(o, key, (json_t *)v) : -1;
}

static int put_new(json_t *o, const char *key, json_t *v)
{
	return json_object_set_new(o, key, v);
}

char *ctl_encode_greeting(const char *version)
{
	json_t *o = json_object();

	if (!o || put_new(o, "fastgate", json_string(version)) < 0 ||
	    put_new(o, "protocol", json_integer(CTL_PROTOCOL_VERSION)) < 0) {
		json_decref(o);
		return NULL;
	}
	return finish_line(o);
}

char *ctl_encode_request(json_int_t id, const char *cmd, const json_t *args)
{
	json_t *o = reply_head(true, id);

	if (!o || put_new(o, "cmd", json_string(cmd)) < 0 ||
	    (args && put(o, "args", args) < 0)) {
		json_decref(o);
		return NULL;
	}
	return finish_line(o);
}

char *ctl_encode_result(bool has_id, json_int_t id, const json_t *result)
{
	json_t *o = reply_head(has_id, id);

	if (!o || put_new(o, "ok", json_true()) < 0 ||
	    (result ? put(o, "result", result) : put_new(o, "result", json_null())) < 0) {
		json_decref(o);
		return NULL;
	}
	return finish_line(o);
}

char *ctl_encode_error(bool has_id, json_int_t id, const char *code, const char *message,
                       const json_t *extra)
{
	json_t *o = reply_head(has_id, id);
	json_t *e = json_object();

	if (!o || !e)
		goto fail;
	if (extra && json_is_object(extra) && json_object_update(e, (json_t *)extra) < 0)
		goto fail;
	/* code and message last, so `extra` can never overwrite them. */
	if (put_new(e, "code", json_string(code)) < 0 ||
	    put_new(e, "message", json_string(message ? message : code)) < 0)
		goto fail;
	if (put_new(o, "ok", json_false()) < 0 || put_new(o, "error", e) < 0) {
		e = NULL;
		goto fail;
	}
	return finish_line(o);
fail:
	json_decref(e);
	json_decref(o);
	return NULL;
}

char *ctl_encode_event(json_int_t id, const json_t *event)
{
	json_t *o = reply_head(true, id);

	if (!o || put(o, "event", event) < 0) {
		json_decref(o);
		return NULL;
	}
	return finish_line(o);
}

char *ctl_encode_end(json_int_t id)
{
	json_t *o = reply_head(true, id);

	if (!o || put_new(o, "ok", json_true()) < 0 || put_new(o, "end", json_true()) < 0) {
		json_decref(o);
		return NULL;
	}
	return finish_line(o);
}
