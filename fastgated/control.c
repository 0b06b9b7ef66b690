/* Control socket server: accepts fastgate-cli connections on the gateway's event loop,
 * frames requests with ctlproto, dispatches them through the command table below and
 * writes the replies back in order.
 *
 * Ownership: struct control owns its clients; a client owns its bufferevent, its input
 * buffer and at most one call in progress (a stream). Everything runs on the loop thread. */
#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "control.h"
#include "ctlproto.h"
#include "errlist.h"
#include "gateway.h"
#include "http.h"
#include "keys.h"
#include "log.h"
#include "util.h"
#include "logs.h"
#include "pool.h"
#include "routes.h"
#include "selfserve.h"
#include "stats.h"

struct ctl_command;

struct ctl_client {
	struct control *ctl;
	struct bufferevent *bev;
	struct ctl_linebuf in;
	struct event *resume_ev;   /* re-runs client_pump after a stream ends outside a callback */
	struct ctl_call *active;   /* stream in progress; later requests wait for it */
	unsigned long serial;      /* connection number, for debug logs */
	uid_t uid;
	pid_t pid;
	bool have_cred;
	bool eof;                  /* the peer will send nothing more */
	bool closing;              /* close once the output is written */
	bool throttled;            /* stopped reading until the peer reads its replies */
	struct ctl_client *prev, *next;
};

struct ctl_call {
	struct ctl_client *client;
	const struct ctl_command *cmd;
	bool has_id;
	json_int_t id;
	bool in_handler;           /* the dispatcher frees it when the handler returns */
	bool answered;
	bool streaming;
	const char *err_code;      /* for the state-change log line */
	char err_msg[160];
	char detail[256];          /* what a state change touched; never a secret */
	ctl_stream_cb cancel, drain;
	void *arg;
};

struct control {
	struct gateway *gw;
	char *path;
	dev_t dev;
	ino_t ino;
	struct evconnlistener *listener;
	struct event *retry_ev;    /* re-enables accepting after an accept error (EMFILE) */
	struct ctl_client *clients;
	int nclients;
	unsigned long serial;
	struct dbq *dbq;           /* worker threads for audit database queries */
	struct dbq *keyq;          /* one thread: key-store writes, one at a time, in order */
	struct pending_route *pending_routes;   /* route states submitted, not yet applied */
	struct logs *logs;         /* live tail followers and the ring of recent records */
};

typedef void (*ctl_handler_fn)(struct ctl_call *call, json_t *args);

struct ctl_command {
	const char *name;
	const char *args;          /* argument usage, shown by "help" */
	const char *help;
	bool changes_state;        /* logged at info with the caller's uid */
	ctl_handler_fn fn;
};

static const struct ctl_command *find_command(const char *name);
static void client_pump(struct ctl_client *c);

/* A route whose new state is still being written: a toggle that comes meanwhile flips the
 * state asked for last, not the one still in effect, as it would if run after it. */
struct pending_route {
	char *name;
	bool want;                    /* the state the last submitted change asked for */
	unsigned n;                   /* changes submitted and not applied yet */
	struct pending_route *next;
};

static struct pending_route *pending_route_find(struct control *ctl, const char *name)
{
	struct pending_route *p;

	for (p = ctl->pending_routes; p && strcmp(p->name, name) != 0; p = p->next)
		;
	return p;
}

static void pending_route_add(struct control *ctl, const char *name, bool want)
{
	struct pending_route *p = pending_route_find(ctl, name);

	if (!p) {
		p = xcalloc(1, sizeof(*p));
		p->name = xstrdup(name);
		p->next = ctl->pending_routes;
		ctl->pending_routes = p;
	}
	p->want = want;
	p->n++;
}

static void pending_route_done(struct control *ctl, const char *name)
{
	struct pending_route **pp, *p;

	for (pp = &ctl->pending_routes; (p = *pp) && strcmp(p->name, name) != 0; pp = &p->next)
		;
	if (!p || --p->n)
		return;
	*pp = p->next;
	free(p->name);
	free(p);
}

/* ---- small helpers ---- */

static void call_detail(struct ctl_call *call, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void call_detail(struct ctl_call *call, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(call->detail, sizeof(call->detail), fmt, ap);
	va_end(ap);
	/* It goes into a log line; a name from the client must not be able to forge another. */
	for (char *p = call->detail; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
}

static size_t output_len(const struct ctl_client *c)
{
	return evbuffer_get_length(bufferevent_get_output(c->bev));
}

/* Queue one encoded line (taking ownership). A line that could not be built means we are
 * out of memory: close rather than leave the peer waiting for a reply that never comes. */
static void client_send(struct ctl_client *c, char *line)
{
	if (!line || bufferevent_write(c->bev, line, strlen(line)) < 0) {
		log_error("control: out of memory writing a reply; closing client %lu", c->serial);
		c->closing = true;
	}
	free(line);
}

/* ---- client lifetime ---- */

static void client_free(struct ctl_client *c)
{
	struct control *ctl = c->ctl;

	if (c->active) {
		struct ctl_call *call = c->active;

		c->active = NULL;
		if (call->cancel)
			call->cancel(call, call->arg);
		free(call);
	}
	if (c->prev)
		c->prev->next = c->next;
	else
		ctl->clients = c->next;
	if (c->next)
		c->next->prev = c->prev;
	ctl->nclients--;
	log_debug("control: client %lu disconnected", c->serial);
	ctl_linebuf_free(&c->in);
	event_free(c->resume_ev);
	bufferevent_free(c->bev);
	free(c);
}

/* Free the client if it has nothing left to do. Callers must not touch c afterwards. */
static void client_maybe_free(struct ctl_client *c)
{
	if (c->closing && !c->active && output_len(c) == 0)
		client_free(c);
}

/* After a fatal input error or EOF there is nothing more worth reading. Otherwise reading
 * stays on even during a stream or while replies pile up, so a hang-up is noticed at once;
 * the read high-water mark bounds what can queue behind a running stream. */
static void client_update_reading(struct ctl_client *c)
{
	if (c->eof || c->closing)
		bufferevent_disable(c->bev, EV_READ);
}

/* Move bytes from the socket's input buffer into the line assembler: one chunk, only when
 * no complete line is held, so memory stays bounded by the longest accepted line. */
static bool client_fill(struct ctl_client *c)
{
	struct evbuffer *input = bufferevent_get_input(c->bev);
	char chunk[16384];
	int n;

	if (evbuffer_get_length(input) == 0)
		return false;
	n = evbuffer_remove(input, chunk, sizeof(chunk));
	if (n <= 0)
		return false;
	if (ctl_linebuf_append(&c->in, chunk, (size_t)n) < 0) {
		log_error("control: out of memory reading from client %lu", c->serial);
		c->closing = true;
		return false;
	}
	return true;
}

/* ---- replies ---- */

struct gateway *ctl_call_gateway(const struct ctl_call *call)
{
	return call->client->ctl->gw;
}

struct logs *ctl_call_logs(const struct ctl_call *call)
{
	return call->client->ctl->logs;
}

struct dbq *ctl_call_dbq(const struct ctl_call *call)
{
	return call->client->ctl->dbq;
}

void control_publish_audit(struct control *c, const struct audit_record *r)
{
	if (c && r)
		logs_publish(c->logs, r);
}

void ctl_reply_ok(struct ctl_call *call, json_t *result)
{
	if (call->answered || call->streaming) {
		log_error("control: %s answered twice", call->cmd->name);
		json_decref(result);
		return;
	}
	call->answered = true;
	client_send(call->client, ctl_encode_result(call->has_id, call->id, result));
	json_decref(result);
}

/* What the state-change log line says of a failure. */
static void note_error(struct ctl_call *call, const char *code, const char *msg)
{
	call->err_code = code;
	/* The log line keeps to one line: a multi-line message (reload) is cut at its first. */
	snprintf(call->err_msg, sizeof(call->err_msg), "%.*s%s", (int)strcspn(msg, "\n"), msg,
	         strchr(msg, '\n') ? " ..." : "");
	for (char *p = call->err_msg; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
}

static void reply_error_str(struct ctl_call *call, const char *code, json_t *extra, const char *msg)
{
	if (call->answered || call->streaming) {
		log_error("control: %s answered twice", call->cmd->name);
		json_decref(extra);
		return;
	}
	call->answered = true;
	note_error(call, code, msg);
	client_send(call->client, ctl_encode_error(call->has_id, call->id, code, msg, extra));
	json_decref(extra);
}

void ctl_reply_error(struct ctl_call *call, const char *code, json_t *extra, const char *fmt, ...)
{
	va_list ap;
	char *msg = NULL;

	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	va_end(ap);
	reply_error_str(call, code, extra, msg ? msg : code);
	free(msg);
}

/* ---- streams ---- */

void ctl_stream_begin(struct ctl_call *call, ctl_stream_cb cancel, ctl_stream_cb drain, void *arg)
{
	call->streaming = true;
	call->cancel = cancel;
	call->drain = drain;
	call->arg = arg;
	call->client->active = call;
}

int ctl_stream_event(struct ctl_call *call, json_t *event)
{
	char *line = ctl_encode_event(call->id, event);
	int ret = -1;

	json_decref(event);
	if (line && bufferevent_write(call->client->bev, line, strlen(line)) == 0)
		ret = 0;
	free(line);
	return ret;
}

size_t ctl_stream_backlog(const struct ctl_call *call)
{
	return output_len(call->client);
}

static void log_state_change(const struct ctl_call *call);

/* The stream is over: free the call and let the client's queued requests run. Inside the
 * handler the dispatcher does both once the handler returns. A command that changes state
 * and answers this way (a key-store change) is logged now, with its outcome. */
static void stream_finish(struct ctl_call *call)
{
	struct ctl_client *c = call->client;

	call->answered = true;
	c->active = NULL;
	if (call->cmd->changes_state)
		log_state_change(call);
	if (call->in_handler)
		return;
	free(call);
	event_active(c->resume_ev, EV_TIMEOUT, 0);
}

void ctl_stream_end(struct ctl_call *call)
{
	client_send(call->client, ctl_encode_end(call->id));
	stream_finish(call);
}

void ctl_stream_fail(struct ctl_call *call, const char *code, const char *message)
{
	note_error(call, code, message);
	client_send(call->client, ctl_encode_error(true, call->id, code, message, NULL));
	stream_finish(call);
}

void ctl_stream_result(struct ctl_call *call, json_t *result)
{
	if (!result) {
		ctl_stream_fail(call, CTL_E_INTERNAL, "out of memory building the reply");
		return;
	}
	client_send(call->client, ctl_encode_result(call->has_id, call->id, result));
	json_decref(result);
	stream_finish(call);
}

/* ---- dispatch ---- */

/* "uid U pid P: command detail", how state-change log lines name a call. */
static void call_who(const struct ctl_call *call, char *buf, size_t size)
{
	const struct ctl_client *c = call->client;
	char id[48] = "uid ?";

	if (c->have_cred)
		snprintf(id, sizeof(id), "uid %u pid %d", (unsigned)c->uid, (int)c->pid);
	snprintf(buf, size, "%s: %s%s%s", id, call->cmd->name, call->detail[0] ? " " : "",
	         call->detail);
}

static void log_state_change(const struct ctl_call *call)
{
	char who[400];

	call_who(call, who, sizeof(who));
	if (call->err_code)
		log_info("control: %s: failed (%s: %s)", who, call->err_code, call->err_msg);
	else
		log_info("control: %s", who);
}

static bool blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
			return false;
	return true;
}

static void handle_line(struct ctl_client *c, const char *line, size_t len)
{
	struct ctl_request rq;
	struct ctl_error err;
	const struct ctl_command *cmd;
	struct ctl_call *call;

	if (blank(line, len))
		return;
	if (ctl_parse_request(line, len, &rq, &err) < 0) {
		client_send(c, ctl_encode_error(rq.has_id, rq.id, err.code, err.message, NULL));
		goto done;
	}
	cmd = find_command(rq.cmd);
	if (!cmd) {
		char *msg = xasprintf("unknown command '%.100s' (the \"help\" command lists them)",
		                           rq.cmd);

		client_send(c, ctl_encode_error(true, rq.id, CTL_E_UNKNOWN_COMMAND,
		                                msg ? msg : rq.cmd, NULL));
		free(msg);
		goto done;
	}
	call = calloc(1, sizeof(*call));
	if (!call) {
		client_send(c, ctl_encode_error(true, rq.id, CTL_E_INTERNAL, "out of memory", NULL));
		goto done;
	}
	call->client = c;
	call->cmd = cmd;
	call->has_id = true;
	call->id = rq.id;
	call->in_handler = true;
	/* A command reads and changes what every loop uses (keys, routes, spend, target
	 * states): the other loops wait the few microseconds it takes. What it leaves to later
	 * events (key store writes, queries) pauses them again if it changes anything. */
	gateway_pause(c->ctl->gw);
	cmd->fn(call, rq.args);
	gateway_resume(c->ctl->gw);
	call->in_handler = false;
	if (!call->answered && !call->streaming) {
		log_error("control: handler for %s returned without answering", cmd->name);
		reply_error_str(call, CTL_E_INTERNAL, NULL, "the command produced no answer");
	}
	if (cmd->changes_state && !call->streaming)
		log_state_change(call);     /* a stream's at its end (stream_finish) */
	if (c->active != call)
		free(call);
done:
	ctl_request_clear(&rq);
}

/* Answer every complete request we hold, in order, unless a stream is running or the
 * peer is not reading its replies. May free the client: callers must not touch c after. */
static void client_pump(struct ctl_client *c)
{
	char *line;
	size_t len;

	while (!c->active && !c->closing) {
		enum ctl_line_status st;

		if (output_len(c) > CTL_STREAM_HIGH_WATER) {
			c->throttled = true;
			break;
		}
		c->throttled = false;
		st = ctl_linebuf_next(&c->in, &line, &len);
		if (st == CTL_LINE_NONE && client_fill(c))
			continue;
		if (st == CTL_LINE_NONE && c->eof)
			st = ctl_linebuf_take_rest(&c->in, &line, &len);
		if (st == CTL_LINE_NONE) {
			if (c->eof)
				c->closing = true;
			break;
		}
		if (st == CTL_LINE_TOO_LONG) {
			char msg[96];

			snprintf(msg, sizeof(msg), "request line longer than %d bytes; closing",
			         CTL_LINE_MAX);
			client_send(c, ctl_encode_error(false, 0, CTL_E_LINE_TOO_LONG, msg, NULL));
			log_warn("control: client %lu sent a line over %d bytes; closed", c->serial,
			         CTL_LINE_MAX);
			ctl_linebuf_free(&c->in);
			evbuffer_drain(bufferevent_get_input(c->bev),
			               evbuffer_get_length(bufferevent_get_input(c->bev)));
			c->closing = true;
			break;
		}
		handle_line(c, line, len);
	}
	client_update_reading(c);
	client_maybe_free(c);
}

/* ---- bufferevent callbacks ---- */

static void read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	client_pump(arg);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct ctl_client *c = arg;

	(void)bev;
	if (c->active && c->active->drain && output_len(c) <= CTL_STREAM_LOW_WATER)
		c->active->drain(c->active, c->active->arg);
	if (c->throttled && output_len(c) <= CTL_STREAM_LOW_WATER) {
		client_pump(c);
		return;
	}
	client_maybe_free(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct ctl_client *c = arg;

	(void)bev;
	if (what & BEV_EVENT_ERROR) {
		log_debug("control: client %lu: %s", c->serial, strerror(EVUTIL_SOCKET_ERROR()));
		client_free(c);
		return;
	}
	if (what & BEV_EVENT_EOF) {
		c->eof = true;
		/* A peer that hangs up during a stream (Ctrl-C on `logs tail -f`) is gone. */
		if (c->active) {
			client_free(c);
			return;
		}
		client_pump(c);
	}
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	client_pump(arg);
}

/* ---- accepting ---- */

static void reject_busy(int fd)
{
	char *line = ctl_encode_error(false, 0, CTL_E_BUSY,
	                              "too many control clients connected; try again", NULL);

	if (line && send(fd, line, strlen(line), MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		log_debug("control: could not tell a rejected client why: %s", strerror(errno));
	free(line);
	close(fd);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int socklen, void *arg)
{
	struct control *ctl = arg;
	struct ctl_client *c;
	struct ucred cred;
	socklen_t credlen = sizeof(cred);

	(void)l;
	(void)sa;
	(void)socklen;
	if (ctl->nclients >= CTL_MAX_CLIENTS) {
		log_warn("control: %d clients connected; refusing another", ctl->nclients);
		reject_busy(fd);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		goto fail;
	c->ctl = ctl;
	c->serial = ++ctl->serial;
	ctl_linebuf_init(&c->in, CTL_LINE_MAX);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &credlen) == 0) {
		c->uid = cred.uid;
		c->pid = cred.pid;
		c->have_cred = true;
	}
	c->bev = bufferevent_socket_new(ctl->gw->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev)
		goto fail;
	fd = -1;
	c->resume_ev = event_new(ctl->gw->base, -1, 0, resume_cb, c);
	if (!c->resume_ev)
		goto fail;
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	bufferevent_setwatermark(c->bev, EV_WRITE, CTL_STREAM_LOW_WATER, 0);
	bufferevent_setwatermark(c->bev, EV_READ, 0, CTL_LINE_MAX + 1);
	if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) < 0)
		goto fail;

	c->next = ctl->clients;
	if (c->next)
		c->next->prev = c;
	ctl->clients = c;
	ctl->nclients++;
	log_debug("control: client %lu connected (uid %u pid %d)", c->serial, (unsigned)c->uid,
	          (int)c->pid);
	client_send(c, ctl_encode_greeting(FG_VERSION));
	return;
fail:
	log_error("control: out of memory accepting a client");
	if (c) {
		if (c->resume_ev)
			event_free(c->resume_ev);
		if (c->bev)
			bufferevent_free(c->bev);
		free(c);
	}
	if (fd >= 0)
		close(fd);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct control *ctl = arg;

	(void)fd;
	(void)what;
	evconnlistener_enable(ctl->listener);
}

/* accept() failed (out of descriptors, most likely). Retrying at once would spin on the
 * same pending connection, so pause accepting for a second. */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
	struct control *ctl = arg;
	struct timeval tv = { 1, 0 };

	log_warn("control: accept on %s failed: %s; pausing for 1 s", ctl->path,
	         strerror(EVUTIL_SOCKET_ERROR()));
	evconnlistener_disable(l);
	evtimer_add(ctl->retry_ev, &tv);
}

/* ---- socket setup ---- */

/* An existing file at path: remove it if it is a socket nobody listens on. */
static int clear_stale_socket(const char *path, char **err)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct stat st;
	int fd, r, e;

	if (lstat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		*err = xasprintf("cannot inspect control socket %s: %s", path, strerror(errno));
		return -1;
	}
	if (!S_ISSOCK(st.st_mode)) {
		*err = xasprintf("control socket path %s exists and is not a socket; remove it "
		                      "or choose another --control path", path);
		return -1;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*err = xasprintf("cannot create a socket: %s", strerror(errno));
		return -1;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	r = connect(fd, (struct sockaddr *)&sun, sizeof(sun));
	e = errno;
	close(fd);
	if (r == 0 || e == EAGAIN || e == EINPROGRESS) {
		*err = xasprintf("another fastgated is already listening on %s; stop it, or "
		                      "choose another --control path", path);
		return -1;
	}
	if (e != ECONNREFUSED) {
		*err = xasprintf("cannot check whether %s is in use: %s", path, strerror(e));
		return -1;
	}
	if (unlink(path) < 0 && errno != ENOENT) {
		*err = xasprintf("cannot remove stale control socket %s: %s", path,
		                      strerror(errno));
		return -1;
	}
	log_info("control: removed stale socket %s", path);
	return 0;
}

static int lookup_group(const char *group, gid_t *gid, char **err)
{
	struct group gr, *res = NULL;
	char buf[16384];
	int r;

	r = getgrnam_r(group, &gr, buf, sizeof(buf), &res);
	if (r != 0 || !res) {
		*err = r ? xasprintf("cannot look up control group '%s': %s", group, strerror(r))
		         : xasprintf("control group '%s' does not exist", group);
		return -1;
	}
	*gid = res->gr_gid;
	return 0;
}

/* Create, bind and listen; returns the listening fd or -1 with *err. */
static int bind_socket(const char *path, const char *group, struct stat *st_out, char **err)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	size_t plen = strlen(path);
	gid_t gid = 0;
	mode_t old_mask;
	int fd = -1, r;
	bool bound = false;

	if (plen == 0 || plen >= sizeof(sun.sun_path)) {
		*err = xasprintf("control socket path '%s' must be 1 to %zu bytes long", path,
		                      sizeof(sun.sun_path) - 1);
		return -1;
	}
	if (group && lookup_group(group, &gid, err) < 0)
		return -1;
	if (clear_stale_socket(path, err) < 0)
		return -1;
	memcpy(sun.sun_path, path, plen + 1);

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*err = xasprintf("cannot create the control socket: %s", strerror(errno));
		goto fail;
	}
	/* The socket file must never exist with wider permissions, not even for an instant. */
	old_mask = umask(0177);
	r = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
	umask(old_mask);
	if (r < 0) {
		*err = xasprintf("cannot bind control socket %s: %s", path, strerror(errno));
		goto fail;
	}
	bound = true;
	if (group) {
		if (chown(path, (uid_t)-1, gid) < 0) {
			*err = xasprintf("cannot give control socket %s to group '%s': %s (the "
			                      "daemon's user must be a member of it)", path, group,
			                      strerror(errno));
			goto fail;
		}
		if (chmod(path, 0660) < 0) {
			*err = xasprintf("cannot chmod control socket %s: %s", path,
			                      strerror(errno));
			goto fail;
		}
	}
	if (listen(fd, 16) < 0) {
		*err = xasprintf("cannot listen on control socket %s: %s", path, strerror(errno));
		goto fail;
	}
	if (stat(path, st_out) < 0)
		memset(st_out, 0, sizeof(*st_out));
	return fd;
fail:
	if (bound)
		unlink(path);
	if (fd >= 0)
		close(fd);
	return -1;
}

struct control *control_start(struct gateway *gw, const char *path, const char *group, char **err)
{
	struct control *ctl;
	struct stat st;
	int fd;

	*err = NULL;
	/* Writing to a client that hung up must be an error return, not a fatal signal. */
	signal(SIGPIPE, SIG_IGN);

	ctl = calloc(1, sizeof(*ctl));
	if (!ctl || !(ctl->path = strdup(path))) {
		*err = xasprintf("out of memory");
		goto fail;
	}
	ctl->gw = gw;
	fd = bind_socket(path, group, &st, err);
	if (fd < 0)
		goto fail;
	ctl->dev = st.st_dev;
	ctl->ino = st.st_ino;
	ctl->listener = evconnlistener_new(gw->base, accept_cb, ctl,
	                                   LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
	if (!ctl->listener) {
		close(fd);
		unlink(path);
		*err = xasprintf("cannot watch control socket %s", path);
		goto fail;
	}
	evconnlistener_set_error_cb(ctl->listener, accept_error_cb);
	ctl->retry_ev = evtimer_new(gw->base, retry_cb, ctl);
	if (!ctl->retry_ev) {
		*err = xasprintf("out of memory");
		control_stop(ctl);
		return NULL;
	}
	ctl->dbq = dbq_new(gw->base, 2, "fg-query", err);
	if (!ctl->dbq) {
		control_stop(ctl);
		return NULL;
	}
	ctl->keyq = dbq_new(gw->base, 1, "fg-keys", err);
	if (!ctl->keyq) {
		control_stop(ctl);
		return NULL;
	}
	ctl->logs = logs_new(gw, ctl->dbq);
	if (!ctl->logs) {
		*err = xasprintf("out of memory");
		control_stop(ctl);
		return NULL;
	}
	log_info("control: listening on %s (mode %s%s)", path, group ? "0660, group " : "0600",
	         group ? group : "");
	return ctl;
fail:
	if (!*err)
		*err = xasprintf("cannot start the control socket");
	if (ctl)
		free(ctl->path);
	free(ctl);
	return NULL;
}

/* Hand the kernel what is queued for a client, as far as its socket takes it now; the
 * daemon is stopping and will not wait. (A socket bufferevent keeps its output's front
 * frozen, so this reads the chains instead of draining them with evbuffer_write.) */
static void client_flush_now(struct ctl_client *cl)
{
	struct evbuffer *out = bufferevent_get_output(cl->bev);
	struct evbuffer_iovec v[64];
	evutil_socket_t fd = bufferevent_getfd(cl->bev);
	int n = evbuffer_peek(out, -1, NULL, v, 64);

	for (int i = 0; fd >= 0 && i < n && i < 64; i++) {
		ssize_t w = send(fd, v[i].iov_base, v[i].iov_len, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (w < (ssize_t)v[i].iov_len)
			break;
	}
}

void control_stop(struct control *c)
{
	struct stat st;

	if (!c)
		return;
	/* Followers of logs.tail get their dropped count and an end line, and every client
	 * what is already queued for it, as far as its socket takes it without waiting. */
	logs_stop(c->logs);
	for (struct ctl_client *cl = c->clients; cl; cl = cl->next) {
		/* A query or export still running is answered, not just cut off. */
		if (cl->active)
			client_send(cl, ctl_encode_error(true, cl->active->id, CTL_E_INTERNAL,
			                                 "fastgated is stopping", NULL));
		client_flush_now(cl);
	}
	while (c->clients)
		client_free(c->clients);
	/* After the clients: their streams' cancel callbacks have cancelled their queries.
	 * A key-store change being written is waited for and applied; those not started yet
	 * are dropped, each with a log line. */
	dbq_free(c->dbq);
	dbq_free(c->keyq);            /* its done callbacks have emptied pending_routes */
	logs_free(c->logs);
	if (c->listener)
		evconnlistener_free(c->listener);
	if (c->retry_ev)
		event_free(c->retry_ev);
	/* Only unlink what we created: another daemon may have taken the path over since. */
	if (stat(c->path, &st) == 0 && st.st_dev == c->dev && st.st_ino == c->ino)
		unlink(c->path);
	free(c->path);
	free(c);
}

/* ---- argument helpers: each replies bad_args and returns false on a bad value ---- */

/* Reject members not named in `allowed` (NULL-terminated): a typo must not be ignored. */
bool ctl_args_only(struct ctl_call *call, json_t *args, const char *const *allowed)
{
	const char *key;
	json_t *v;

	json_object_foreach(args, key, v) {
		size_t i;

		for (i = 0; allowed[i]; i++)
			if (strcmp(allowed[i], key) == 0)
				break;
		if (!allowed[i]) {
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "unknown argument '%.64s' for %s",
			                key, call->cmd->name);
			return false;
		}
	}
	return true;
}

bool ctl_arg_string(struct ctl_call *call, json_t *args, const char *key, bool required,
                       const char **out)
{
	json_t *v = json_object_get(args, key);

	if (!v || json_is_null(v)) {
		if (required) {
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "missing argument '%s'", key);
			return false;
		}
		*out = NULL;
		return true;
	}
	if (!json_is_string(v) || json_string_length(v) == 0) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'%s' must be a non-empty string", key);
		return false;
	}
	*out = json_string_value(v);
	return true;
}

/* Absent or null leaves *out as it was (the caller's default). */
bool ctl_arg_int(struct ctl_call *call, json_t *args, const char *key, bool required,
                    json_int_t min, json_int_t max, json_int_t *out)
{
	json_t *v = json_object_get(args, key);

	if (!v || json_is_null(v)) {
		if (required) {
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "missing argument '%s'", key);
			return false;
		}
		return true;
	}
	if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL,
		                "'%s' must be an integer from %" JSON_INTEGER_FORMAT " to %"
		                JSON_INTEGER_FORMAT, key, min, max);
		return false;
	}
	*out = json_integer_value(v);
	return true;
}

bool ctl_arg_bool(struct ctl_call *call, json_t *args, const char *key, bool *out)
{
	json_t *v = json_object_get(args, key);

	if (!v || json_is_null(v))
		return true;
	if (!json_is_boolean(v)) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'%s' must be true or false", key);
		return false;
	}
	*out = json_is_true(v);
	return true;
}

/* ---- JSON views of keys and routes ---- */

static json_t *time_or_null(int64_t t)
{
	return t ? json_integer(t) : json_null();
}

static json_t *string_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

static json_t *string_array(char *const *v, size_t n)
{
	json_t *a = json_array();

	for (size_t i = 0; a && i < n; i++)
		json_array_append_new(a, json_string(v[i]));
	return a;
}

static const char *key_status(const struct key *k, int64_t now)
{
	if (k->revoked)
		return "revoked";
	if (k->expires && k->expires <= now)
		return "expired";
	return "active";
}

/* A multiplier (parts per million) as its shortest decimal: "1", "1.25". */
static json_t *multiplier_json(int64_t ppm)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%lld.%06lld", (long long)(ppm / 1000000),
	                 (long long)(ppm % 1000000));

	while (n > 0 && buf[n - 1] == '0')
		buf[--n] = '\0';
	if (n > 0 && buf[n - 1] == '.')
		buf[--n] = '\0';
	return json_string(buf);
}

static json_t *limit_texts(const struct spend_account *a)
{
	json_t *arr = json_array();
	char buf[LIMIT_TEXT_MAX];

	for (size_t i = 0; arr && i < a->n_lim; i++)
		json_array_append_new(arr, json_string(limit_format(&a->lim[i], buf, sizeof(buf))));
	return arr;
}

static json_t *allow_ips_json(const struct key *k)
{
	json_t *a = json_array();
	char buf[CIDR_TEXT_MAX];

	for (size_t i = 0; a && i < k->n_allow_ips; i++)
		json_array_append_new(a, json_string(cidr_format(&k->allow_ips[i], buf, sizeof(buf))));
	return a;
}

/* Everything about a key except its secret, which the store does not even hold. */
static json_t *key_json(const struct key *k, int64_t now)
{
	return json_pack("{s:I, s:s, s:s, s:I, s:o, s:o, s:o, s:o, s:i, s:s, s:o, s:o, s:o, "
	                 "s:o, s:o, s:o}",
	                 "id", (json_int_t)k->id,
	                 "name", k->name ? k->name : "",
	                 "display", k->display,
	                 "created", (json_int_t)k->created,
	                 "expires", time_or_null(k->expires),
	                 "revoked", time_or_null(k->revoked),
	                 "last_used", time_or_null(k->last_used),
	                 "routes", string_array(k->routes, k->n_routes),
	                 "rpm", k->rpm,
	                 "status", key_status(k, now),
	                 "user_id", k->user ? json_integer(k->user->id) : json_null(),
	                 "user", k->user ? json_string(k->user->name) : json_null(),
	                 "limits", limit_texts(&k->acct),
	                 "multiplier", multiplier_json(k->multiplier_ppm),
	                 "allow_ips", allow_ips_json(k),
	                 "spend", selfserve_spend_json(&k->acct, now));
}

static json_t *user_json(struct gateway *gw, const struct user *u, int64_t now)
{
	size_t keys = 0;
	json_t *o;

	for (size_t i = 0; i < keystore_count(gw->keys); i++) {
		const struct key *k = keystore_at(gw->keys, i);

		keys += k->user == u && !k->revoked;
	}
	o = json_pack("{s:I, s:s, s:I, s:s, s:o, s:o, s:I, s:o}",
	              "id", (json_int_t)u->id, "name", u->name, "created", (json_int_t)u->created,
	              "status", u->suspended ? "suspended" : "active",
	              "multiplier", multiplier_json(u->multiplier_ppm),
	              "limits", limit_texts(&u->acct), "keys", (json_int_t)keys,
	              "spend", selfserve_spend_json(&u->acct, now));
	if (!o)
		return NULL;
	json_object_set_new(o, "balance_usd",
	                    u->bal.kept ? selfserve_usd(spend_balance_left(&u->bal)) : json_null());
	json_object_set_new(o, "credit_usd", selfserve_usd(u->bal.credit));
	json_object_set_new(o, "spent_usd", selfserve_usd(u->bal.spent));
	json_object_set_new(o, "reserved_usd", selfserve_usd(u->bal.reserved));
	return o;
}

/* "host", or "host +2" for a pool: the list's column stays one word wide. */
static json_t *route_upstream_summary(const struct route *r)
{
	if (r->n_targets == 0 || !r->targets[0].host)
		return json_null();
	if (r->n_targets == 1)
		return json_string(r->targets[0].host);
	return json_sprintf("%s +%zu", r->targets[0].host, r->n_targets - 1);
}

static const char *target_state_word(const struct target_state *s, int64_t now_ms)
{
	if (!s)
		return "unknown";
	if (s->drained)
		return "drained";
	if (s->br.state == BREAKER_CLOSED)
		return "up";
	return target_available(s, now_ms) ? "probing" : breaker_state_name(s->br.state);
}

/* One target, as `route show` and `upstream list|show` print it; never its key. */
json_t *ctl_upstream_json(const struct route *r, size_t i, int64_t now_ms)
{
	const struct route_target *t = &r->targets[i];
	const struct target_state *s = t->st;
	int64_t wait = s ? breaker_wait_ms(&s->br, now_ms) : 0;
	json_t *o = json_pack("{s:s, s:s, s:o, s:i, s:i, s:o, s:b, s:o, s:s, s:s}",
	                      "route", r->name,
	                      "url", t->url ? t->url : "",
	                      "path", string_or_null(t->path),
	                      "weight", t->weight,
	                      "priority", t->priority,
	                      "model", string_or_null(t->model),
	                      "api_key_set", t->api_key != NULL,
	                      "api_key_file", string_or_null(t->api_key_file),
	                      "state", target_state_word(s, now_ms),
	                      "breaker", s ? breaker_state_name(s->br.state) : "closed");
	json_t *counts;

	if (!o)
		return NULL;
	json_object_set_new(o, "id", json_sprintf("%s/%zu", r->name, i));
	json_object_set_new(o, "host", string_or_null(t->host));
	json_object_set_new(o, "provider", json_string(provider_name(t->provider)));
	json_object_set_new(o, "deployment", string_or_null(t->deployment));
	json_object_set_new(o, "api_version", string_or_null(t->api_version));
	json_object_set_new(o, "drained", json_boolean(s && s->drained));
	json_object_set_new(o, "inflight", json_integer(s ? s->inflight : 0));
	json_object_set_new(o, "latency_ewma_ms", json_real(s ? s->ewma_ms : 0));
	json_object_set_new(o, "retry_in_ms", json_integer(wait));
	json_object_set_new(o, "consecutive_failures", json_integer(s ? s->br.consecutive : 0));
	json_object_set_new(o, "health", !r->health.path ? json_null()
	                    : !s || !s->health_checked ? json_string("unknown")
	                    : json_string(s->health_ok ? "healthy" : "unhealthy"));
	counts = json_object();
	for (int k = 0; counts && k < OUTCOME_COUNT; k++)
		json_object_set_new(counts, attempt_outcome_name((enum attempt_outcome)k),
		                    json_integer(s ? (json_int_t)s->attempts[k] : 0));
	json_object_set_new(o, "attempts", counts ? counts : json_null());
	return o;
}

static json_t *route_pool_json(const struct route *r)
{
	json_t *list = json_array(), *retry_on = json_array(), *o;
	int64_t now = mono_ms();

	for (size_t i = 0; list && i < r->n_targets; i++)
		json_array_append_new(list, ctl_upstream_json(r, i, now));
	for (size_t i = 0; retry_on && i < N_RETRY_WORDS; i++)
		if (r->retry.on & retry_words[i].bit)
			json_array_append_new(retry_on, json_string(retry_words[i].word));
	for (size_t i = 0; retry_on && i < r->retry.n_codes; i++)
		json_array_append_new(retry_on, json_sprintf("%d", r->retry.codes[i]));
	o = json_pack("{s:o, s:s, s:{s:i, s:o, s:i}, s:o, s:o, s:o}",
	              "upstreams", list ? list : json_null(),
	              "balance", balance_kind_name(r->balance),
	              "retry", "attempts", r->retry.attempts, "on", retry_on ? retry_on : json_null(),
	              "deadline", r->retry.deadline_s,
	              "breaker", !r->breaker_on ? json_null()
	                  : json_pack("{s:i, s:i, s:i, s:i, s:i}", "failures", r->breaker.failures,
	                              "error_rate", r->breaker.error_rate,
	                              "min_requests", r->breaker.min_requests,
	                              "cooldown", r->breaker.cooldown_s,
	                              "max_cooldown", r->breaker.max_cooldown_s),
	              "health", r->health.path
	                  ? json_pack("{s:s, s:i, s:i, s:i, s:i}", "path", r->health.path,
	                              "interval", r->health.interval_s, "timeout", r->health.timeout_s,
	                              "healthy", r->health.healthy, "unhealthy", r->health.unhealthy)
	                  : json_null(),
	              "fallback", string_array(r->fallback, r->n_fallback));
	return o;
}

static json_t *route_summary_json(const struct route *r)
{
	return json_pack("{s:s, s:i, s:b, s:b, s:s, s:i, s:o, s:o, s:o, s:o, s:I}",
	                 "name", r->name,
	                 "priority", r->priority,
	                 "enabled", r->enabled,
	                 "enabled_in_file", r->enabled_in_file,
	                 "file", r->file ? r->file : "",
	                 "line", r->line,
	                 "path", string_or_null(r->match_path),
	                 "methods", string_array(r->methods, r->n_methods),
	                 "upstream", route_upstream_summary(r),
	                 "unavailable", string_or_null(r->unavailable),
	                 "upstreams_count", (json_int_t)r->n_targets);
}

/* Header values may carry credentials the route file reads from the environment. */
static bool header_is_sensitive(const char *name)
{
	static const char *const words[] = { "authorization", "key", "token", "secret",
	                                     "cookie", "password", "auth", NULL };

	for (size_t i = 0; words[i]; i++)
		if (strcasestr(name, words[i]))
			return true;
	return false;
}

static json_t *route_detail_json(const struct route *r)
{
	json_t *o = route_summary_json(r);
	json_t *hdrs = json_object();

	if (!o || !hdrs)
		goto fail;
	for (size_t i = 0; i < r->n_add_headers; i++) {
		const struct route_kv *kv = &r->add_headers[i];

		json_object_set_new(hdrs, kv->name,
		                    json_string(header_is_sensitive(kv->name) ? "(hidden)" : kv->value));
	}
	if (json_object_update_missing_new(o, json_pack(
	        "{s:o, s:s, s:o, s:o, s:b, s:o, s:o, s:i, s:i, s:o, s:O, s:o}",
	        "body", r->match_body ? json_incref(r->match_body) : json_null(),
	        "upstream_url", r->n_targets && r->targets[0].url ? r->targets[0].url : "",
	        "upstream_path", string_or_null(r->n_targets ? r->targets[0].path : NULL),
	        "strip_prefix", string_or_null(r->strip_prefix),
	        "api_key_set", r->n_targets && r->targets[0].api_key != NULL,
	        "api_key_file", string_or_null(r->n_targets ? r->targets[0].api_key_file : NULL),
	        "strip_headers", string_array(r->strip_headers, r->n_strip_headers),
	        "timeout", r->timeout,
	        "idle_timeout", r->idle_timeout,
	        "add_body_fields", r->add_body_fields ? json_incref(r->add_body_fields) : json_null(),
	        "add_headers", hdrs,
	        "upstream_host", string_or_null(r->n_targets ? r->targets[0].host : NULL))) < 0 ||
	    json_object_update_new(o, route_pool_json(r)) < 0)
		goto fail;
	json_decref(hdrs);
	return o;
fail:
	json_decref(hdrs);
	json_decref(o);
	return NULL;
}

/* ---- handlers ---- */

static bool reply_json(struct ctl_call *call, json_t *result)
{
	if (!result) {
		ctl_reply_error(call, CTL_E_INTERNAL, NULL, "out of memory building the reply");
		return false;
	}
	ctl_reply_ok(call, result);
	return true;
}

static bool route_name_valid(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
		      *s == '_' || *s == '.' || *s == '-'))
			return false;
	return true;
}

static void h_help(struct ctl_call *call, json_t *args);

/* Key limits the control channel accepts (the store itself takes any non-negative value). */
#define KEY_RPM_MAX          CTL_RPM_MAX
#define KEY_EXPIRES_DAYS_MAX CTL_EXPIRES_DAYS_MAX
_Static_assert(CTL_ALLOW_IPS_MAX <= KEY_ALLOW_IPS_MAX, "the store must hold what the CLI sends");

/* args.allow_ips, if present and not null: an array of addresses and ranges
 * ("10.0.0.0/8"), [] for any client. *given is set and ips[0 .. *n) filled (room for
 * CTL_ALLOW_IPS_MAX). False after replying, naming the entry that is wrong. */
static bool arg_allow_ips(struct ctl_call *call, json_t *args, bool *given, struct cidr *ips,
                          size_t *n)
{
	json_t *ja = json_object_get(args, "allow_ips"), *v;
	size_t i;

	*given = false;
	*n = 0;
	if (!ja || json_is_null(ja))
		return true;
	if (!json_is_array(ja)) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'allow_ips' must be an array of "
		                "addresses and ranges such as [\"10.0.0.0/8\", \"192.168.1.7\"]");
		return false;
	}
	if (json_array_size(ja) > CTL_ALLOW_IPS_MAX) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'allow_ips' has %zu entries; at most %d "
		                "on a key", json_array_size(ja), CTL_ALLOW_IPS_MAX);
		return false;
	}
	json_array_foreach(ja, i, v) {
		const char *s = json_string_value(v);

		if (!s || cidr_parse(s, &ips[i]) < 0) {
			char shown[80];

			snprintf(shown, sizeof(shown), "%s", s ? s : "(not a string)");
			for (char *p = shown; *p; p++)
				if ((unsigned char)*p < 0x20 || *p == 0x7f)
					*p = '?';
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'allow_ips': \"%s\" is not an "
			                "address or a range such as 10.0.0.0/8 or fd00::/8 (no bits set "
			                "past the prefix)", shown);
			return false;
		}
	}
	*n = json_array_size(ja);
	*given = true;
	return true;
}

/* args.routes, if present and not null, as names of routes loaded now: *given is set and
 * *routes is a new array (caller frees it; the strings belong to args), NULL for []. False
 * after replying. */
static bool arg_routes(struct ctl_call *call, json_t *args, bool *given, char ***routes,
                       size_t *n_routes)
{
	struct gateway *gw = ctl_call_gateway(call);
	json_t *jroutes = json_object_get(args, "routes"), *v;
	char **out;
	size_t i;

	*given = false;
	*routes = NULL;
	*n_routes = 0;
	if (!jroutes || json_is_null(jroutes))
		return true;
	if (!json_is_array(jroutes)) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'routes' must be an array of route names");
		return false;
	}
	out = calloc(json_array_size(jroutes) + 1, sizeof(*out));
	if (!out) {
		ctl_reply_error(call, CTL_E_INTERNAL, NULL, "out of memory");
		return false;
	}
	json_array_foreach(jroutes, i, v) {
		const char *rn = json_string_value(v);

		if (!rn || !route_name_valid(rn)) {
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL,
			                "'routes' must be an array of route names ([A-Za-z0-9_.-]+)");
			goto fail;
		}
		/* A typo here would silently lock the key out of everything. */
		if (!gw->routes || !route_table_find(gw->routes, rn)) {
			ctl_reply_error(call, CTL_E_NOT_FOUND, NULL,
			                "no route named '%s' (fastgate-cli route list shows them)", rn);
			goto fail;
		}
		out[i] = (char *)rn;
	}
	*given = true;
	*n_routes = json_array_size(jroutes);
	if (*n_routes)
		*routes = out;
	else
		free(out);
	return true;
fail:
	free(out);
	return false;
}

/* args.limits, if present: an array of limit texts ("requests:100/min", or several
 * joined by commas), [] for none. False after replying. */
static bool arg_limits(struct ctl_call *call, json_t *args, bool *given, struct limit *lim,
                       size_t *n)
{
	json_t *jl = json_object_get(args, "limits"), *v;
	size_t i;
	char *err = NULL;

	*given = false;
	*n = 0;
	if (!jl || json_is_null(jl))
		return true;
	if (!json_is_array(jl)) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'limits' must be an array of limits "
		                "such as [\"requests:100/min\", \"cost:25/month\"]");
		return false;
	}
	json_array_foreach(jl, i, v) {
		if (!json_is_string(v)) {
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'limits' must be an array of strings");
			return false;
		}
		if (limits_parse(json_string_value(v), lim, n, &err) < 0) {
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "%s", err);
			free(err);
			return false;
		}
	}
	*given = true;
	return true;
}

/* An amount of US dollars (a decimal string such as "12.50", or a whole number) into
 * nano-USD; negative only if allowed. False after replying. */
static bool arg_usd(struct ctl_call *call, json_t *args, const char *key, bool required,
                    bool negative, bool *given, int64_t *nano)
{
	json_t *v = json_object_get(args, key);
	const char *s;
	char buf[32];
	bool minus = false;

	*given = false;
	if (!v || json_is_null(v)) {
		if (required)
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "missing argument '%s'", key);
		return !required;
	}
	if (json_is_integer(v)) {
		snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		s = buf;
	} else if (json_is_string(v)) {
		s = json_string_value(v);
	} else {
		s = NULL;
	}
	if (s && *s == '-' && negative) {
		minus = true;
		s++;
	}
	if (!s || money_parse_usd(s, nano) < 0) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'%s' must be an amount of US dollars "
		                "such as \"12.50\" (at most 9 decimals%s)", key,
		                negative ? "; a leading - to take money off" : ", not negative");
		return false;
	}
	if (minus)
		*nano = -*nano;
	*given = true;
	return true;
}

/* args.multiplier: "1.25" (or a whole number). False after replying. */
static bool arg_multiplier(struct ctl_call *call, json_t *args, bool *given, int64_t *ppm)
{
	json_t *v = json_object_get(args, "multiplier");
	char buf[32];
	const char *s = NULL;

	*given = false;
	if (!v || json_is_null(v))
		return true;
	if (json_is_integer(v)) {
		snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		s = buf;
	} else if (json_is_string(v)) {
		s = json_string_value(v);
	}
	if (!s || money_parse_multiplier(s, ppm) < 0) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'multiplier' must be a number more than "
		                "0 and at most 1000 with at most 6 decimals, such as \"1.25\"");
		return false;
	}
	*given = true;
	return true;
}

/* Expiry time for expires_days counted from now; 0 days = never. */
static int64_t expires_from_days(json_int_t days, int64_t now)
{
	return days ? now + (int64_t)days * 86400 : 0;
}

/* ---- key-store changes off the loop ----
 * A key or route command prepares its change here, the fg-keys thread writes it (the
 * write may wait up to 5 s for another process's lock on the key store) and change_done
 * applies it here and answers; meanwhile the loop goes on serving requests and other
 * commands. The call stays open as a stream until then. A change once submitted is
 * applied even if its client hangs up, and then logged on its own line. */
struct change_job {
	struct ctl_call *call;        /* NULL once the client has gone */
	struct control *ctl;
	struct key_change *change;
	char *fail;                   /* the error's start, e.g. "cannot rotate key 3" */
	char who[400];                /* call_who, kept for when the client has gone */
	char *route;                  /* route and upstream commands: the route; NULL for keys */
	char *url;                    /* upstream commands: the upstream's URL; else NULL */
	size_t index;                 /* upstream commands: its place in the route when asked */
	bool was, want;               /* route commands: enabled before, and asked for;
	                               * upstream commands: drained before, and asked for */
	bool secret;                  /* the answer carries the new secret (create, rotate) */
	bool created;                 /* the log line gets the new key's id */
	bool user;                    /* a user command: the answer is the user */
};

static void change_job_free(struct change_job *j)
{
	keystore_change_free(j->change);
	free(j->fail);
	free(j->route);
	free(j->url);
	free(j);
}

static void change_work(struct dbq_job *job, void *arg)
{
	struct change_job *j = arg;

	(void)job;
	keystore_change_write(j->change);
}

/* The route's new state in the table serving now (a reload may have replaced the table
 * since the command came: the route is found again by name). NULL if it is gone. */
static struct route *route_state_apply(struct gateway *gw, const char *name, bool want)
{
	struct route *r = gw->routes ? route_table_find(gw->routes, name) : NULL;

	if (r && !(want && r->unavailable))
		r->enabled = want;
	return r;
}

/* The drained flag asked for, on every upstream of the route with that URL in the table
 * serving now (found again by name and URL: a reload may have come since the command).
 * The route, or NULL if it or every such upstream is gone. j->index becomes the upstream
 * to answer with (the one asked about if it is still there, else the first with that URL)
 * and j->was its flag before. */
static struct route *target_state_apply(struct gateway *gw, struct change_job *j)
{
	struct route *r = gw->routes ? route_table_find(gw->routes, j->route) : NULL;
	bool found = false;

	for (size_t i = 0; r && i < r->n_targets; i++) {
		struct route_target *t = &r->targets[i];

		if (!t->st || !t->url || strcmp(t->url, j->url) != 0)
			continue;
		if (!found && (j->index >= r->n_targets || !r->targets[j->index].st ||
		               strcmp(r->targets[j->index].url, j->url) != 0))
			j->index = i;
		if (i == j->index)
			j->was = t->st->drained;
		found = true;
		t->st->drained = j->want;
	}
	return found ? r : NULL;
}

/* The answer to a change applied: the key, or the route r (NULL: gone meanwhile). */
static void change_answer(struct change_job *j, struct key *k, struct route *r,
                          int64_t user_id, const char *secret)
{
	struct ctl_call *call = j->call;
	json_t *res;

	if (j->url) {
		if (!r) {
			ctl_stream_fail(call, CTL_E_INTERNAL, "the upstream vanished (reloaded "
			                "meanwhile); its state is stored and applies should it return");
			return;
		}
		res = ctl_upstream_json(r, j->index, mono_ms());
		if (res)
			json_object_set_new(res, "changed", json_boolean(j->was != j->want));
	} else if (j->user) {
		struct gateway *gw = j->ctl->gw;
		const struct user *u = keystore_user_get(gw->keys, user_id);

		res = u ? user_json(gw, u, time(NULL)) : NULL;
	} else if (j->route) {
		if (!r) {
			ctl_stream_fail(call, CTL_E_INTERNAL, "the route vanished (reloaded meanwhile)");
			return;
		}
		res = route_summary_json(r);
		if (res)
			json_object_set_new(res, "changed", json_boolean(j->was != r->enabled));
	} else {
		res = key_json(k, time(NULL));
		if (res && j->secret)
			json_object_set_new(res, "key", json_string(secret));
	}
	ctl_stream_result(call, res);
}

static void change_done(void *arg, bool cancelled)
{
	struct change_job *j = arg;
	struct key *k = NULL;
	char secret[KEY_SECRET_LEN + 1] = "";
	char *err = NULL;
	struct key_change *c = j->change;
	struct route *r = NULL;
	int64_t user_id = keystore_change_user_id(c);   /* c is freed by the apply */
	int rc;

	/* Cancelled only when the daemon stops: a change written is applied all the same,
	 * one never written says so. */
	(void)cancelled;
	j->change = NULL;
	gateway_pause(j->ctl->gw);   /* the keys, routes and targets every loop reads */
	rc = keystore_change_apply(c, &k, secret, &err);
	if (j->url) {
		if (rc == 0)
			r = target_state_apply(j->ctl->gw, j);
	} else if (j->route) {
		pending_route_done(j->ctl, j->route);
		if (rc == 0)
			r = route_state_apply(j->ctl->gw, j->route, j->want);
	}
	if (j->call && rc < 0) {
		char *msg = xasprintf("%s: %s", j->fail, err ? err : "key store error");

		ctl_stream_fail(j->call, CTL_E_INTERNAL, msg);
		free(msg);
	} else if (j->call) {
		if (k && j->created)
			call_detail(j->call, "id=%lld name=\"%s\"", (long long)k->id, k->name);
		else if (j->user && j->created)
			call_detail(j->call, "user id=%lld", (long long)user_id);
		change_answer(j, k, r, user_id, secret);
	} else {
		if (rc < 0)
			log_info("control: %s: failed after the client left (%s: %s)", j->who, j->fail,
			         err ? err : "key store error");
		else
			log_info("control: %s: done after the client left", j->who);
	}
	gateway_resume(j->ctl->gw);
	explicit_bzero(secret, sizeof(secret));
	free(err);
	change_job_free(j);
}

static void change_cancel(struct ctl_call *call, void *arg)
{
	struct change_job *j = arg;

	call_who(call, j->who, sizeof(j->who));
	j->call = NULL;                /* the change itself goes on */
}

/* A job for a prepared change; `fail` (taken) starts the error message should the write
 * fail. The caller sets what the answer needs, then change_submit. */
static struct change_job *change_job_new(struct ctl_call *call, struct key_change *c, char *fail)
{
	struct change_job *j = xcalloc(1, sizeof(*j));

	j->call = call;
	j->ctl = call->client->ctl;
	j->change = c;
	j->fail = fail;
	return j;
}

/* The answer comes from change_done, once the fg-keys thread has written the change. */
static void change_submit(struct change_job *j)
{
	if (j->route && !j->url)
		pending_route_add(j->ctl, j->route, j->want);
	ctl_stream_begin(j->call, change_cancel, NULL, j);
	dbq_submit(j->ctl->keyq, change_work, change_done, j);
}

static void h_key_create(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { "name", "routes", "rpm", "expires_days", "user",
	                                       "limits", "multiplier", "allow_ips", NULL };
	struct gateway *gw = ctl_call_gateway(call);
	const char *name;
	json_int_t rpm = 0, days = 0, user = 0;
	char **routes = NULL;
	size_t n_routes = 0, n_lim = 0;
	bool routes_given, given;
	char *err = NULL;
	struct key_change *c;
	struct change_job *j;
	int64_t now = time(NULL), mult = MULTIPLIER_ONE;
	struct limit lim[LIMITS_MAX];
	struct cidr ips[CTL_ALLOW_IPS_MAX];
	size_t n_ips = 0;

	if (!ctl_args_only(call, args, allowed) || !ctl_arg_string(call, args, "name", true, &name) ||
	    !ctl_arg_int(call, args, "rpm", false, 0, KEY_RPM_MAX, &rpm) ||
	    !ctl_arg_int(call, args, "expires_days", false, 0, KEY_EXPIRES_DAYS_MAX, &days) ||
	    !ctl_arg_int(call, args, "user", false, 1, INT64_MAX, &user) ||
	    !arg_limits(call, args, &given, lim, &n_lim) ||
	    !arg_multiplier(call, args, &given, &mult) ||
	    !arg_allow_ips(call, args, &given, ips, &n_ips))
		return;
	if (rpm > 0) {
		for (size_t i = 0; i < n_lim; i++)
			if (lim[i].kind == LIMIT_REQUESTS && lim[i].window == LIMIT_MIN) {
				ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "give rpm or a requests/min "
				                "limit, not both");
				return;
			}
	}
	if (rpm > 0) {
		if (n_lim == LIMITS_MAX) {
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "at most %d limits", LIMITS_MAX);
			return;
		}
		lim[n_lim++] = (struct limit){ .kind = LIMIT_REQUESTS, .window = LIMIT_MIN,
		                               .amount = rpm };
	}
	if (user && !keystore_user_get(gw->keys, user)) {
		ctl_reply_error(call, CTL_E_NOT_FOUND, NULL, "no user with id %" JSON_INTEGER_FORMAT
		                " (fastgate-cli user list shows them)", user);
		return;
	}
	call_detail(call, "name=\"%s\"", name);
	/* The name's rules belong to the key store; breaking them is the caller's mistake,
	 * while a failure of keystore_create below is the daemon's. */
	if (key_name_check(name, &err) < 0) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "cannot create key: %s", err);
		goto done;
	}
	if (!arg_routes(call, args, &routes_given, &routes, &n_routes))
		goto done;
	c = keystore_change_create_for(gw->keys, name, routes, n_routes,
	                               expires_from_days(days, now), user, lim, n_lim, mult, &err);
	if (c && keystore_change_create_allow_ips(c, ips, n_ips, &err) < 0) {
		keystore_change_free(c);
		c = NULL;
	}
	if (!c) {
		ctl_reply_error(call, CTL_E_INTERNAL, NULL, "cannot create key: %s",
		                err ? err : "key store error");
		goto done;
	}
	j = change_job_new(call, c, xasprintf("cannot create key"));
	j->secret = j->created = true;
	change_submit(j);
done:
	free(routes);
	free(err);
}

static void h_key_list(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { "all", NULL };
	struct gateway *gw = ctl_call_gateway(call);
	bool all = false;
	int64_t now = time(NULL);
	json_t *a;
	size_t n;

	if (!ctl_args_only(call, args, allowed) || !ctl_arg_bool(call, args, "all", &all))
		return;
	a = json_array();
	n = gw->keys ? keystore_count(gw->keys) : 0;
	for (size_t i = 0; a && i < n; i++) {
		const struct key *k = keystore_at(gw->keys, i);

		if (k->revoked && !all)
			continue;
		if (json_array_append_new(a, key_json(k, now)) < 0) {
			json_decref(a);
			a = NULL;
		}
	}
	reply_json(call, a);
}

/* The key named by args.id, or NULL after replying. `allowed` lists every argument the
 * command takes; NULL means id alone. */
static struct key *arg_key(struct ctl_call *call, json_t *args, const char *const *allowed)
{
	static const char *const id_only[] = { "id", NULL };
	struct gateway *gw = ctl_call_gateway(call);
	json_int_t id = 0;
	struct key *k;

	if (!ctl_args_only(call, args, allowed ? allowed : id_only) ||
	    !ctl_arg_int(call, args, "id", true, 1, INT64_MAX, &id))
		return NULL;
	call_detail(call, "id=%" JSON_INTEGER_FORMAT, id);
	k = gw->keys ? keystore_get(gw->keys, id) : NULL;
	if (!k)
		ctl_reply_error(call, CTL_E_NOT_FOUND, NULL, "no key with id %" JSON_INTEGER_FORMAT
		                " (fastgate-cli key list --all shows them)", id);
	return k;
}

static void h_key_show(struct ctl_call *call, json_t *args)
{
	struct key *k = arg_key(call, args, NULL);

	if (k)
		reply_json(call, key_json(k, time(NULL)));
}

static void h_key_revoke(struct ctl_call *call, json_t *args)
{
	struct gateway *gw = ctl_call_gateway(call);
	struct key *k = arg_key(call, args, NULL);
	struct key_change *c;
	char *err = NULL;

	if (!k)
		return;
	call_detail(call, "id=%lld name=\"%s\"%s", (long long)k->id, k->name,
	            k->revoked ? " (already revoked)" : "");
	if (k->revoked) {              /* nothing to write: the first revocation stays */
		reply_json(call, key_json(k, time(NULL)));
		return;
	}
	c = keystore_change_revoke(gw->keys, k->id, &err);
	if (!c)
		ctl_reply_error(call, CTL_E_INTERNAL, NULL, "cannot revoke key %lld: %s",
		                (long long)k->id, err ? err : "key store error");
	else
		change_submit(change_job_new(call, c, xasprintf("cannot revoke key %lld",
		                                                 (long long)k->id)));
	free(err);
}

/* Revocation is final; checked here so the caller hears it as a refusal, not as a store
 * failure. False after replying. */
static bool key_not_revoked(struct ctl_call *call, const struct key *k, const char *doing)
{
	if (!k->revoked)
		return true;
	ctl_reply_error(call, CTL_E_BAD_ARGS, NULL,
	                "key %lld (%s) is revoked and cannot be %s; create a new key instead",
	                (long long)k->id, k->name, doing);
	return false;
}

static void h_key_update(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { "id", "routes", "rpm", "expires_days", "limits",
	                                       "multiplier", "allow_ips", NULL };
	struct gateway *gw = ctl_call_gateway(call);
	struct key *k = arg_key(call, args, allowed);
	struct key_changes ch = { 0 };
	json_int_t rpm = -1, days = -1;
	char **routes = NULL;
	size_t n_routes = 0, n_lim = 0;
	bool routes_given = false, lim_given = false, mult_given = false, ips_given = false;
	char *err = NULL, routes_s[160] = "", rpm_s[32] = "", exp_s[48] = "", ips_s[40] = "";
	char lim_s[LIMITS_TEXT_MAX + 16] = "";
	int64_t id, now = time(NULL), mult = 0;
	struct limit lim[LIMITS_MAX];
	struct cidr ips[CTL_ALLOW_IPS_MAX];
	size_t n_ips = 0;
	struct key_change *c;

	if (!k)
		return;
	id = k->id;
	call_detail(call, "id=%lld name=\"%s\"", (long long)id, k->name);
	if (!ctl_arg_int(call, args, "rpm", false, 0, KEY_RPM_MAX, &rpm) ||
	    !ctl_arg_int(call, args, "expires_days", false, 0, KEY_EXPIRES_DAYS_MAX, &days) ||
	    !arg_limits(call, args, &lim_given, lim, &n_lim) ||
	    !arg_multiplier(call, args, &mult_given, &mult) ||
	    !arg_allow_ips(call, args, &ips_given, ips, &n_ips) ||
	    !arg_routes(call, args, &routes_given, &routes, &n_routes))
		goto done;
	if (!routes_given && rpm < 0 && days < 0 && !lim_given && !mult_given && !ips_given) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "nothing to change: give routes, rpm, "
		                "limits, multiplier, allow_ips or expires_days");
		goto done;
	}
	if (ips_given) {
		ch.set |= KEY_CHANGE_ALLOW_IPS;
		ch.allow_ips = ips;
		ch.n_allow_ips = n_ips;
		if (n_ips)
			snprintf(ips_s, sizeof(ips_s), " allow_ips=%zu ranges", n_ips);
		else
			snprintf(ips_s, sizeof(ips_s), " allow_ips=any");
	}
	if (lim_given) {
		char buf[LIMITS_TEXT_MAX];

		ch.set |= KEY_CHANGE_LIMITS;
		ch.lim = lim;
		ch.n_lim = n_lim;
		snprintf(lim_s, sizeof(lim_s), " limits=%s",
		         n_lim ? limits_format(lim, n_lim, buf, sizeof(buf)) : "none");
	}
	if (mult_given) {
		ch.set |= KEY_CHANGE_MULTIPLIER;
		ch.multiplier_ppm = mult;
	}
	if (!key_not_revoked(call, k, "changed"))
		goto done;
	if (routes_given) {
		size_t len = (size_t)snprintf(routes_s, sizeof(routes_s), " routes=%s",
		                              n_routes ? "" : "all");

		for (size_t i = 0; i < n_routes && len < sizeof(routes_s); i++)
			len += (size_t)snprintf(routes_s + len, sizeof(routes_s) - len, "%s%s",
			                        i ? "," : "", routes[i]);
		ch.set |= KEY_CHANGE_ROUTES;
		ch.routes = routes;
		ch.n_routes = n_routes;
	}
	if (rpm >= 0) {
		ch.set |= KEY_CHANGE_RPM;
		ch.rpm = (int)rpm;
		snprintf(rpm_s, sizeof(rpm_s), " rpm=%d", ch.rpm);
	}
	if (days >= 0) {
		ch.set |= KEY_CHANGE_EXPIRES;
		ch.expires = expires_from_days(days, now);
		snprintf(exp_s, sizeof(exp_s), " expires_days=%" JSON_INTEGER_FORMAT, days);
	}
	call_detail(call, "id=%lld name=\"%s\"%s%s%s%s%s", (long long)id, k->name, routes_s,
	            rpm_s, exp_s, lim_s, ips_s);
	c = keystore_change_update(gw->keys, id, &ch, &err);
	if (!c)
		ctl_reply_error(call, CTL_E_INTERNAL, NULL, "cannot update key %lld: %s",
		                (long long)id, err ? err : "key store error");
	else
		change_submit(change_job_new(call, c, xasprintf("cannot update key %lld",
		                                                 (long long)id)));
done:
	free(routes);
	free(err);
}

static void h_key_rotate(struct ctl_call *call, json_t *args)
{
	struct gateway *gw = ctl_call_gateway(call);
	struct key *k = arg_key(call, args, NULL);
	struct key_change *c;
	struct change_job *j;
	char *err = NULL;

	if (!k)
		return;
	call_detail(call, "id=%lld name=\"%s\"", (long long)k->id, k->name);
	if (!key_not_revoked(call, k, "rotated"))
		return;
	c = keystore_change_rotate(gw->keys, k->id, &err);
	if (!c) {
		ctl_reply_error(call, CTL_E_INTERNAL, NULL, "cannot rotate key %lld: %s",
		                (long long)k->id, err ? err : "key store error");
	} else {
		j = change_job_new(call, c, xasprintf("cannot rotate key %lld", (long long)k->id));
		j->secret = true;
		change_submit(j);
	}
	free(err);
}

/* ---- users ---- */

/* The user named by args.id, or NULL after replying. */
static struct user *arg_user(struct ctl_call *call, json_t *args, const char *const *allowed)
{
	static const char *const id_only[] = { "id", NULL };
	struct gateway *gw = ctl_call_gateway(call);
	json_int_t id = 0;
	struct user *u;

	if (!ctl_args_only(call, args, allowed ? allowed : id_only) ||
	    !ctl_arg_int(call, args, "id", true, 1, INT64_MAX, &id))
		return NULL;
	call_detail(call, "user id=%" JSON_INTEGER_FORMAT, id);
	u = gw->keys ? keystore_user_get(gw->keys, id) : NULL;
	if (!u)
		ctl_reply_error(call, CTL_E_NOT_FOUND, NULL, "no user with id %" JSON_INTEGER_FORMAT
		                " (fastgate-cli user list shows them)", id);
	return u;
}

static void user_submit(struct ctl_call *call, struct key_change *c, char *err, char *fail,
                        bool created)
{
	struct change_job *j;

	if (!c) {
		ctl_reply_error(call, err && strstr(err, "already") ? CTL_E_BAD_ARGS : CTL_E_INTERNAL,
		                NULL, "%s: %s", fail, err ? err : "key store error");
		free(fail);
		return;
	}
	j = change_job_new(call, c, fail);
	j->user = true;
	j->created = created;
	change_submit(j);
}

static void h_user_create(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { "name", "balance", "multiplier", "limits", NULL };
	struct gateway *gw = ctl_call_gateway(call);
	const char *name;
	int64_t balance = 0, mult = MULTIPLIER_ONE;
	bool has_balance = false, given;
	struct limit lim[LIMITS_MAX];
	size_t n_lim = 0;
	char *err = NULL;
	struct key_change *c;

	if (!ctl_args_only(call, args, allowed) || !ctl_arg_string(call, args, "name", true, &name) ||
	    !arg_usd(call, args, "balance", false, false, &has_balance, &balance) ||
	    !arg_multiplier(call, args, &given, &mult) || !arg_limits(call, args, &given, lim, &n_lim))
		return;
	call_detail(call, "user name=\"%s\"", name);
	if (user_name_check(name, &err) < 0) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "cannot create user: %s", err);
		free(err);
		return;
	}
	c = keystore_change_user_create(gw->keys, name, has_balance, balance, mult, lim, n_lim,
	                                &err);
	user_submit(call, c, err, xasprintf("cannot create user"), true);
	free(err);
}

static void h_user_list(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { NULL };
	struct gateway *gw = ctl_call_gateway(call);
	int64_t now = time(NULL);
	json_t *a;

	if (!ctl_args_only(call, args, allowed))
		return;
	a = json_array();
	for (size_t i = 0; a && i < keystore_user_count(gw->keys); i++)
		if (json_array_append_new(a, user_json(gw, keystore_user_at(gw->keys, i), now)) < 0) {
			json_decref(a);
			a = NULL;
		}
	reply_json(call, a);
}

static void h_user_show(struct ctl_call *call, json_t *args)
{
	struct user *u = arg_user(call, args, NULL);

	if (u)
		reply_json(call, user_json(ctl_call_gateway(call), u, time(NULL)));
}

static void h_user_update(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { "id", "multiplier", "limits", NULL };
	struct gateway *gw = ctl_call_gateway(call);
	struct user *u = arg_user(call, args, allowed);
	struct user_changes ch = { 0 };
	struct limit lim[LIMITS_MAX];
	size_t n_lim = 0;
	bool lim_given, mult_given;
	char *err = NULL;

	if (!u || !arg_multiplier(call, args, &mult_given, &ch.multiplier_ppm) ||
	    !arg_limits(call, args, &lim_given, lim, &n_lim))
		return;
	if (!lim_given && !mult_given) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "nothing to change: give limits or "
		                "multiplier");
		return;
	}
	ch.set = (lim_given ? USER_CHANGE_LIMITS : 0) | (mult_given ? USER_CHANGE_MULTIPLIER : 0);
	ch.lim = lim;
	ch.n_lim = n_lim;
	user_submit(call, keystore_change_user_update(gw->keys, u->id, &ch, &err), err,
	            xasprintf("cannot update user %lld", (long long)u->id), false);
	free(err);
}

static void user_suspend(struct ctl_call *call, json_t *args, bool suspend)
{
	struct gateway *gw = ctl_call_gateway(call);
	struct user *u = arg_user(call, args, NULL);
	struct user_changes ch = { .set = USER_CHANGE_SUSPENDED, .suspended = suspend };
	char *err = NULL;

	if (!u)
		return;
	user_submit(call, keystore_change_user_update(gw->keys, u->id, &ch, &err), err,
	            xasprintf("cannot %s user %lld", suspend ? "suspend" : "resume",
	                      (long long)u->id), false);
	free(err);
}

static void h_user_suspend(struct ctl_call *call, json_t *args) { user_suspend(call, args, true); }
static void h_user_resume(struct ctl_call *call, json_t *args) { user_suspend(call, args, false); }

static void h_user_topup(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { "id", "amount", NULL };
	struct gateway *gw = ctl_call_gateway(call);
	struct user *u = arg_user(call, args, allowed);
	int64_t amount = 0;
	bool given;
	char *err = NULL, buf[40];

	if (!u || !arg_usd(call, args, "amount", true, true, &given, &amount))
		return;
	call_detail(call, "user id=%lld amount=%s", (long long)u->id,
	            money_format_usd(amount, buf, sizeof(buf)));
	user_submit(call, keystore_change_user_topup(gw->keys, u->id, amount, &err), err,
	            xasprintf("cannot top up user %lld", (long long)u->id), false);
	free(err);
}

static void h_route_list(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { NULL };
	struct gateway *gw = ctl_call_gateway(call);
	json_t *a;

	if (!ctl_args_only(call, args, allowed))
		return;
	a = json_array();
	for (size_t i = 0; a && gw->routes && i < gw->routes->n; i++) {
		if (json_array_append_new(a, route_summary_json(gw->routes->routes[i])) < 0) {
			json_decref(a);
			a = NULL;
		}
	}
	reply_json(call, a);
}

/* The route named by args.name, or NULL after replying. */
static struct route *arg_route(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { "name", NULL };
	struct gateway *gw = ctl_call_gateway(call);
	const char *name;
	struct route *r;

	if (!ctl_args_only(call, args, allowed) || !ctl_arg_string(call, args, "name", true, &name))
		return NULL;
	if (!route_name_valid(name)) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL,
		                "'name' must be a route name ([A-Za-z0-9_.-]+)");
		return NULL;
	}
	call_detail(call, "%s", name);
	r = gw->routes ? route_table_find(gw->routes, name) : NULL;
	if (!r)
		ctl_reply_error(call, CTL_E_NOT_FOUND, NULL,
		                "no route named '%s' (fastgate-cli route list shows them)", name);
	return r;
}

static void h_route_show(struct ctl_call *call, json_t *args)
{
	struct route *r = arg_route(call, args);

	if (r)
		reply_json(call, route_detail_json(r));
}

enum route_op { ROUTE_ENABLE, ROUTE_DISABLE, ROUTE_TOGGLE };

static void route_set(struct ctl_call *call, json_t *args, enum route_op op)
{
	struct gateway *gw = ctl_call_gateway(call);
	struct route *r = arg_route(call, args);
	struct pending_route *p;
	struct key_change *c;
	struct change_job *j;
	char *err = NULL;
	bool was, want;

	if (!r)
		return;
	p = pending_route_find(call->client->ctl, r->name);
	was = p ? p->want : r->enabled;
	want = op == ROUTE_ENABLE ? true : op == ROUTE_DISABLE ? false : !was;
	call_detail(call, "%s (%s -> %s)", r->name, was ? "enabled" : "disabled",
	            want ? "enabled" : "disabled");
	if (want && r->unavailable) {
		ctl_reply_error(call, CTL_E_ROUTE_UNAVAILABLE, NULL,
		                "route %s cannot be enabled: %s. fastgated reads its environment "
		                "when it starts, so a reload does not see a new value: set it where "
		                "fastgated is started (systemd: Environment= or EnvironmentFile=) "
		                "and restart it, or give the key in api_key_file, which reload "
		                "re-reads", r->name, r->unavailable);
		return;
	}
	c = keystore_change_route_state(gw->keys, r->name, want, &err);
	if (!c) {
		ctl_reply_error(call, CTL_E_INTERNAL, NULL, "cannot %s route %s: %s",
		                want ? "enable" : "disable", r->name, err ? err : "no key store");
	} else {
		j = change_job_new(call, c, xasprintf("cannot %s route %s",
		                                      want ? "enable" : "disable", r->name));
		j->route = xstrdup(r->name);
		j->was = was;
		j->want = want;
		change_submit(j);
	}
	free(err);
}

static void h_route_enable(struct ctl_call *call, json_t *args) { route_set(call, args, ROUTE_ENABLE); }
static void h_route_disable(struct ctl_call *call, json_t *args) { route_set(call, args, ROUTE_DISABLE); }
static void h_route_toggle(struct ctl_call *call, json_t *args) { route_set(call, args, ROUTE_TOGGLE); }

/* ---- upstreams: the targets of the routes' pools, known as ROUTE/INDEX ---- */

static void h_upstream_list(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { "route", NULL };
	struct gateway *gw = ctl_call_gateway(call);
	const char *name;
	int64_t now = mono_ms();
	json_t *a;

	if (!ctl_args_only(call, args, allowed) || !ctl_arg_string(call, args, "route", false, &name))
		return;
	if (name && !route_name_valid(name)) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL,
		                "'route' must be a route name ([A-Za-z0-9_.-]+)");
		return;
	}
	if (name && (!gw->routes || !route_table_find(gw->routes, name))) {
		ctl_reply_error(call, CTL_E_NOT_FOUND, NULL,
		                "no route named '%s' (fastgate-cli route list shows them)", name);
		return;
	}
	a = json_array();
	for (size_t i = 0; a && gw->routes && i < gw->routes->n; i++) {
		const struct route *r = gw->routes->routes[i];

		if (name && strcmp(r->name, name) != 0)
			continue;
		for (size_t k = 0; a && k < r->n_targets; k++)
			if (json_array_append_new(a, ctl_upstream_json(r, k, now)) < 0) {
				json_decref(a);
				a = NULL;
			}
	}
	reply_json(call, a);
}

/* An id from the client, fit to be repeated in a message. */
static bool id_printable(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			return false;
	return true;
}

/* The route of the upstream named by args.id ("ROUTE/INDEX"), its place in *index; NULL
 * after replying. */
static struct route *arg_upstream(struct ctl_call *call, json_t *args, size_t *index)
{
	static const char *const allowed[] = { "id", NULL };
	struct gateway *gw = ctl_call_gateway(call);
	const char *id, *slash, *digits;
	struct route *r = NULL;
	char *name = NULL;
	unsigned long n = 0;

	if (!ctl_args_only(call, args, allowed) || !ctl_arg_string(call, args, "id", true, &id))
		return NULL;
	slash = strchr(id, '/');
	digits = slash ? slash + 1 : "";
	if (slash)
		name = xstrndup(id, (size_t)(slash - id));
	if (!name || !route_name_valid(name) || !*digits || strlen(digits) > 6 ||
	    strspn(digits, "0123456789") != strlen(digits)) {
		if (id_printable(id))
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'%.64s' is not an upstream id: "
			                "give ROUTE/INDEX, such as chat/0 (fastgate-cli upstream list "
			                "shows them)", id);
		else
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'id' must be an upstream id, "
			                "ROUTE/INDEX, such as chat/0");
		goto done;
	}
	n = strtoul(digits, NULL, 10);
	call_detail(call, "%s/%lu", name, n);
	r = gw->routes ? route_table_find(gw->routes, name) : NULL;
	if (!r) {
		ctl_reply_error(call, CTL_E_NOT_FOUND, NULL, "no upstream %s/%lu: no route named '%s' "
		                "(fastgate-cli upstream list shows the upstreams)", name, n, name);
	} else if (n >= r->n_targets) {
		if (r->n_targets == 1)
			ctl_reply_error(call, CTL_E_NOT_FOUND, NULL, "no upstream %s/%lu: route %s has "
			                "one upstream, %s/0", name, n, name, name);
		else
			ctl_reply_error(call, CTL_E_NOT_FOUND, NULL, "no upstream %s/%lu: route %s has "
			                "%zu upstreams, %s/0 to %s/%zu", name, n, name, r->n_targets,
			                name, name, r->n_targets - 1);
		r = NULL;
	} else {
		*index = (size_t)n;
	}
done:
	free(name);
	return r;
}

static void h_upstream_show(struct ctl_call *call, json_t *args)
{
	size_t i = 0;
	struct route *r = arg_upstream(call, args, &i);

	if (r)
		reply_json(call, ctl_upstream_json(r, i, mono_ms()));
}

/* Drain or undrain: stored first (by route and URL, so that it outlives reloads and
 * restarts), applied once written, in change_done. */
static void upstream_set(struct ctl_call *call, json_t *args, bool drain)
{
	struct gateway *gw = ctl_call_gateway(call);
	size_t i = 0;
	struct route *r = arg_upstream(call, args, &i);
	const struct route_target *t;
	struct key_change *c;
	struct change_job *j;
	char *err = NULL;

	if (!r)
		return;
	t = &r->targets[i];
	call_detail(call, "%s/%zu %s (%s -> %s)", r->name, i, t->url ? t->url : "?",
	            t->st && t->st->drained ? "drained" : "not drained",
	            drain ? "drained" : "not drained");
	if (!t->st || !t->url) {
		ctl_reply_error(call, CTL_E_INTERNAL, NULL, "upstream %s/%zu has no live state",
		                r->name, i);
		return;
	}
	c = keystore_change_target_state(gw->keys, r->name, t->url, drain, &err);
	if (!c) {
		ctl_reply_error(call, CTL_E_INTERNAL, NULL, "cannot %s upstream %s/%zu: %s",
		                drain ? "drain" : "undrain", r->name, i, err ? err : "no key store");
	} else {
		j = change_job_new(call, c, xasprintf("cannot %s upstream %s/%zu",
		                                      drain ? "drain" : "undrain", r->name, i));
		j->route = xstrdup(r->name);
		j->url = xstrdup(t->url);
		j->index = i;
		j->was = t->st->drained;
		j->want = drain;
		change_submit(j);
	}
	free(err);
}

static void h_upstream_drain(struct ctl_call *call, json_t *args) { upstream_set(call, args, true); }
static void h_upstream_undrain(struct ctl_call *call, json_t *args) { upstream_set(call, args, false); }

static size_t routes_enabled(const struct route_table *t)
{
	size_t n = 0;

	for (size_t i = 0; t && i < t->n; i++)
		n += t->routes[i]->enabled;
	return n;
}

static json_t *errlist_json(const struct errlist *e)
{
	json_t *a = json_array();

	for (size_t i = 0; a && i < e->n; i++)
		json_array_append_new(a, json_string(e->lines[i]));
	return a;
}

/* The same reload as SIGHUP (gw->reload: fastgate.yaml, then the tables). A failure
 * answers with the "FILE:LINE: message" lines in an `errors` array, and the daemon goes on
 * as it was; a success names what a restart would still have to apply in `warnings`. */
static void h_reload(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { NULL };
	struct gateway *gw = ctl_call_gateway(call);
	struct errlist errs = { 0 }, warns = { 0 };
	json_t *res;
	int rc;

	if (!ctl_args_only(call, args, allowed))
		return;
	rc = gw->reload(gw->reload_arg, &errs, &warns);
	if (rc < 0) {
		size_t total = 1;
		char *msg;

		for (size_t i = 0; i < errs.n; i++)
			total += strlen(errs.lines[i]) + 1;
		msg = calloc(1, total);
		for (size_t i = 0; msg && i < errs.n; i++) {
			if (i)
				strcat(msg, "\n");
			strcat(msg, errs.lines[i]);
		}
		call_detail(call, "(%zu error%s; the old configuration and routes keep serving)",
		            errs.n, errs.n == 1 ? "" : "s");
		reply_error_str(call, CTL_E_RELOAD_FAILED,
		                json_pack("{s:o}", "errors", errlist_json(&errs)),
		                msg && *msg ? msg : "reload failed; the old configuration and "
		                "routes keep serving");
		free(msg);
		goto done;
	}
	call_detail(call, "(%zu routes, %zu enabled%s)", gw->routes ? gw->routes->n : 0,
	            routes_enabled(gw->routes), warns.n ? "; restart needed to apply all" : "");
	res = json_pack("{s:I, s:I}", "routes", (json_int_t)(gw->routes ? gw->routes->n : 0),
	                "routes_enabled", (json_int_t)routes_enabled(gw->routes));
	if (res && warns.n)
		json_object_set_new(res, "warnings", errlist_json(&warns));
	reply_json(call, res);
done:
	errlist_clear(&errs);
	errlist_clear(&warns);
}

static void h_status(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { NULL };
	struct gateway *gw = ctl_call_gateway(call);
	int64_t now = time(NULL);
	size_t nkeys = 0, active = 0;
	struct gateway_stats st = gateway_stats_sum(gw);
	int conns = 0;

	if (!ctl_args_only(call, args, allowed))
		return;
	for (unsigned i = 0; i < gateway_loops(gw); i++)
		if (gateway_loop(gw, i)->http)
			conns += http_server_connections(gateway_loop(gw, i)->http);
	if (gw->keys) {
		nkeys = keystore_count(gw->keys);
		for (size_t i = 0; i < nkeys; i++)
			active += key_usable(keystore_at(gw->keys, i), now);
	}
	reply_json(call, json_pack("{s:s, s:I, s:I, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b}",
	                           "version", FG_VERSION,
	                           "pid", (json_int_t)getpid(),
	                           "uptime_s", (json_int_t)(gw->started ? now - gw->started : 0),
	                           "listen", gw->listen_addr,
	                           "routes", (json_int_t)(gw->routes ? gw->routes->n : 0),
	                           "routes_enabled", (json_int_t)routes_enabled(gw->routes),
	                           "keys", (json_int_t)nkeys,
	                           "keys_active", (json_int_t)active,
	                           "workers", (json_int_t)gateway_loops(gw),
	                           "connections", (json_int_t)conns,
	                           "inflight", (json_int_t)st.inflight,
	                           "requests", (json_int_t)st.requests,
	                           "errors", (json_int_t)st.errors,
	                           "stopping", gw->stopping));
}

/* Every command the daemon answers, declared once: dispatch and "help" both read it. */
static const struct ctl_command commands[] = {
	{ "key.create", "{name, routes?: [route...], rpm?: int, expires_days?: int, user?: int, "
	  "limits?: [\"kind:amount/window\"...], multiplier?: \"1.25\", "
	  "allow_ips?: [\"10.0.0.0/8\"...]}",
	  "create a key; the reply holds the secret, shown only this once", true, h_key_create },
	{ "key.list", "{all?: bool}", "list keys (revoked ones only with all)", false, h_key_list },
	{ "key.show", "{id: int}", "show one key", false, h_key_show },
	{ "key.revoke", "{id: int}", "revoke a key; requests with it get 401 at once", true,
	  h_key_revoke },
	{ "key.update", "{id: int, routes?: [route...], rpm?: int, expires_days?: int, "
	  "limits?: [...], multiplier?, allow_ips?: [...]}",
	  "change a key's routes ([] = all), rpm limit (0 = none), limits ([] = none), price "
	  "multiplier, client addresses ([] = any) or expiry (days from now, 0 = never); only "
	  "the given fields change, at once",
	  true, h_key_update },
	{ "key.rotate", "{id: int}",
	  "give a key a new secret (same id and policy); the old one stops working at once and "
	  "the reply holds the new one, shown only this once", true, h_key_rotate },
	{ "user.create", "{name, balance?: \"USD\", multiplier?: \"1.25\", limits?: [...]}",
	  "create a user (keys are given to it with key.create user); with balance, its "
	  "requests stop with 429 insufficient_quota once it is spent", true, h_user_create },
	{ "user.list", "{}", "list users with their balances, limits and spend", false,
	  h_user_list },
	{ "user.show", "{id: int}", "show one user", false, h_user_show },
	{ "user.update", "{id: int, limits?: [...], multiplier?}",
	  "change a user's limits ([] = none) or price multiplier", true, h_user_update },
	{ "user.topup", "{id: int, amount: \"USD\"}",
	  "add to a user's balance (a negative amount takes off); kept in the topups ledger",
	  true, h_user_topup },
	{ "user.suspend", "{id: int}", "refuse every request of the user's keys (403)", true,
	  h_user_suspend },
	{ "user.resume", "{id: int}", "let a suspended user's keys work again", true,
	  h_user_resume },
	{ "route.list", "{}", "list routes in match order", false, h_route_list },
	{ "route.show", "{name}", "show one route (never its upstream key)", false, h_route_show },
	{ "route.enable", "{name}", "enable a route (persists across restarts)", true,
	  h_route_enable },
	{ "route.disable", "{name}", "disable a route (persists across restarts)", true,
	  h_route_disable },
	{ "route.toggle", "{name}", "flip a route's enabled state", true, h_route_toggle },
	{ "upstream.list", "{route?}", "list the upstreams of every route's pool, or of one route",
	  false, h_upstream_list },
	{ "upstream.show", "{id: \"ROUTE/INDEX\"}",
	  "show one upstream: state, breaker, in flight, latency, attempts", false,
	  h_upstream_show },
	{ "upstream.drain", "{id: \"ROUTE/INDEX\"}",
	  "send an upstream no new requests (persists across reloads and restarts)", true,
	  h_upstream_drain },
	{ "upstream.undrain", "{id: \"ROUTE/INDEX\"}",
	  "let a drained upstream take requests again (persists)", true, h_upstream_undrain },
	{ "reload", "{}", "re-read fastgate.yaml, the route files and the model and price tables; "
	  "on error everything stays as it was", true,
	  h_reload },
	{ "status", "{}", "version, uptime, listen address, route and key counts", false,
	  h_status },
	{ "logs.tail", "{follow?: bool, lines?: int, key_id?: int, user_id?: int, route?, "
	  "status?: int|\"5xx\", "
	  "stream?: bool, error?: string|true}",
	  "stream the last `lines` (default 10) matching requests, oldest first, as events; "
	  "with follow, then every new one until the client hangs up ({\"dropped\":N} events "
	  "count what a slow reader missed)", false, logs_h_tail },
	{ "logs.export", "{format: \"csv\"|\"jsonl\", since?: unix-seconds, until?: unix-seconds, "
	  "fields?: \"a,b\", key_id?, user_id?, route?, status?, stream?, error?}",
	  "stream audit rows oldest first: csv as {\"line\":...} events, header first; jsonl as "
	  "record objects", false, logs_h_export },
	{ "logs.show", "{id: request-id}", "one audit record in full, retries, attempts and kept bodies included", false,
	  logs_h_show },
	{ "metrics", "{since?: unix-seconds, until?: unix-seconds, hourly?: bool, hours?: int, "
	  "daily?: bool, days?: int, by?: \"route\"|\"key\"|\"user\"|\"model\"|\"upstream\"}",
	  "request totals, errors, success rate, latency and TTFB percentiles, active keys and "
	  "routes from the audit database; optional hourly/daily series and a breakdown", false,
	  stats_h_metrics },
	{ "report", "{since?: unix-seconds, until?: unix-seconds, by?: \"user\"|\"key\"|\"model\", "
	  "format?: \"json\"|\"csv\"}",
	  "spend from the audit database by user (default), key or model: requests, tokens, cost, "
	  "unpriced, estimated and billed requests, and a total; default window: this month",
	  false, stats_h_report },
	{ "help", "{}", "list the commands", false, h_help },
};

static const struct ctl_command *find_command(const char *name)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

static void h_help(struct ctl_call *call, json_t *args)
{
	json_t *a = json_array();

	(void)args;
	for (size_t i = 0; a && i < sizeof(commands) / sizeof(commands[0]); i++)
		json_array_append_new(a, json_pack("{s:s, s:s, s:s}", "cmd", commands[i].name,
		                                   "args", commands[i].args, "help", commands[i].help));
	reply_json(call, a);
}
