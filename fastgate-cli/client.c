/* Blocking control-socket client. Every failure to reach or hear from the daemon is
 * reported here, once, with the socket path and what to do about it. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "client.h"

void cli_err(const char *fmt, ...)
{
	va_list ap;

	fputs("fastgate-cli: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

volatile sig_atomic_t cli_interrupted;
static volatile int interrupt_fd = -1;

/* Shutting the socket down wakes a recv() that is blocked, or about to block, at once:
 * no window where the signal is missed. Both calls are async-signal-safe. */
static void on_stop_signal(int sig)
{
	int fd = interrupt_fd;

	(void)sig;
	cli_interrupted = 1;
	if (fd >= 0)
		shutdown(fd, SHUT_RDWR);
}

void cli_stop_on_signals(struct cli_conn *c)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop_signal;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0;           /* no SA_RESTART: blocked writes to stdout return too */
	interrupt_fd = c->fd;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

void cli_set_timeout(struct cli_conn *c, int seconds)
{
	struct timeval tv = { seconds, 0 };

	c->timeout_s = seconds;
	if (c->fd >= 0)
		setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

static const char hint[] = "(start it, or pass --socket / set FASTGATE_SOCKET)";

/* Explain a failed connect() in terms of what the user should check. */
static void explain_connect_error(const char *path, int e)
{
	struct stat st;

	switch (e) {
	case ENOENT:
		cli_err("cannot connect to %s: %s — is fastgated running? %s", path, strerror(e), hint);
		break;
	case ECONNREFUSED:
		if (stat(path, &st) == 0 && !S_ISSOCK(st.st_mode))
			cli_err("cannot connect to %s: it exists but is not a socket — is this the "
			        "right path? %s", path, hint);
		else
			cli_err("cannot connect to %s: %s — the socket file exists but no fastgated "
			        "is listening on it (it stopped or crashed) %s", path, strerror(e), hint);
		break;
	case EACCES:
	case EPERM:
		cli_err("cannot connect to %s: %s — fastgated may be running, but this user may "
		        "not use its control socket (run as the daemon's user or a member of its "
		        "control group)", path, strerror(e));
		break;
	case EAGAIN:
		cli_err("cannot connect to %s: fastgated is running but not accepting "
		        "connections (overloaded?)", path);
		break;
	default:
		cli_err("cannot connect to %s: %s %s", path, strerror(e), hint);
	}
}

/* Read one line. 0 with line and len set; -1 after printing why (timeout, hang-up); -2
 * quietly when a stop signal arrived. */
static int read_line(struct cli_conn *c, char **line, size_t *len)
{
	char buf[65536];

	for (;;) {
		enum ctl_line_status st = ctl_linebuf_next(&c->in, line, len);
		ssize_t n;

		if (st == CTL_LINE_OK)
			return 0;
		if (st == CTL_LINE_TOO_LONG) {
			cli_err("reply from fastgated on %s is longer than %d bytes", c->path,
			        CTL_REPLY_MAX);
			return -1;
		}
		n = recv(c->fd, buf, sizeof(buf), 0);
		if (cli_interrupted && n <= 0)
			return -2;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			cli_err("no answer from fastgated on %s within %d s — is it stuck?", c->path,
			        c->timeout_s);
			return -1;
		}
		if (n < 0) {
			cli_err("reading from %s: %s", c->path, strerror(errno));
			return -1;
		}
		if (n == 0) {
			if (ctl_linebuf_take_rest(&c->in, line, len) == CTL_LINE_OK)
				return 0;
			cli_err("fastgated closed the connection on %s without answering", c->path);
			return -1;
		}
		if (ctl_linebuf_append(&c->in, buf, (size_t)n) < 0) {
			cli_err("out of memory");
			return -1;
		}
	}
}

int cli_connect(struct cli_conn *c, const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct timeval tv = { CLI_TIMEOUT_S, 0 };
	struct ctl_error err;
	struct ctl_reply rp;
	char *line;
	size_t len;
	int protocol;

	memset(c, 0, sizeof(*c));
	c->fd = -1;
	c->path = path;
	c->next_id = 1;
	c->timeout_s = CLI_TIMEOUT_S;
	ctl_linebuf_init(&c->in, CTL_REPLY_MAX);
	if (strlen(path) >= sizeof(sun.sun_path)) {
		cli_err("socket path %s is too long (at most %zu bytes)", path, sizeof(sun.sun_path) - 1);
		return CLI_EXIT_UNREACHABLE;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		cli_err("cannot create a socket: %s", strerror(errno));
		return CLI_EXIT_UNREACHABLE;
	}
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(c->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		explain_connect_error(path, errno);
		return CLI_EXIT_UNREACHABLE;
	}
	if (read_line(c, &line, &len) < 0)
		return CLI_EXIT_UNREACHABLE;
	if (ctl_parse_greeting(line, len, c->version, sizeof(c->version), &protocol, &err) < 0) {
		/* A daemon that turns us away (too many clients) says so in an error reply. */
		if (ctl_parse_reply(line, len, &rp, &err) == 0 && rp.kind == CTL_REPLY_ERROR)
			cli_err("fastgated on %s refused the connection: %s", path, rp.message);
		else
			cli_err("%s does not speak the fastgate control protocol (greeting: %.80s)",
			        path, line);
		if (rp.root)
			ctl_reply_clear(&rp);
		return CLI_EXIT_UNREACHABLE;
	}
	if (protocol != CTL_PROTOCOL_VERSION) {
		cli_err("fastgated %s on %s speaks control protocol %d, this fastgate-cli speaks %d; "
		        "use the fastgate-cli that came with the daemon", c->version, path, protocol,
		        CTL_PROTOCOL_VERSION);
		return CLI_EXIT_UNREACHABLE;
	}
	return CLI_EXIT_OK;
}

int cli_read_reply(struct cli_conn *c, struct ctl_reply *rp)
{
	struct ctl_error err;
	char *line;
	size_t len;
	int r;

	memset(rp, 0, sizeof(*rp));
	r = read_line(c, &line, &len);
	if (r == -2)
		return CLI_INTERRUPTED;
	if (r < 0)
		return CLI_EXIT_UNREACHABLE;
	if (ctl_parse_reply(line, len, rp, &err) < 0) {
		cli_err("unreadable reply from fastgated on %s: %s", c->path, err.message);
		return CLI_EXIT_UNREACHABLE;
	}
	return CLI_EXIT_OK;
}

int cli_call(struct cli_conn *c, const char *cmd, const json_t *args, struct ctl_reply *rp)
{
	json_int_t id = c->next_id++;
	char *req = ctl_encode_request(id, cmd, args);
	size_t off = 0, n;
	int ret;

	memset(rp, 0, sizeof(*rp));
	if (!req) {
		cli_err("out of memory");
		return CLI_EXIT_UNREACHABLE;
	}
	n = strlen(req);
	while (off < n) {
		ssize_t w = send(c->fd, req + off, n - off, MSG_NOSIGNAL);

		if (w < 0 && cli_interrupted) {
			free(req);
			return CLI_INTERRUPTED;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			cli_err("sending to fastgated on %s: %s", c->path, strerror(errno));
			free(req);
			return CLI_EXIT_UNREACHABLE;
		}
		off += (size_t)w;
	}
	free(req);
	for (;;) {
		ret = cli_read_reply(c, rp);
		if (ret != CLI_EXIT_OK)
			return ret;
		/* id null: the daemon could not read our request at all; that is our answer. */
		if (!rp->has_id || rp->id == id)
			return CLI_EXIT_OK;
		ctl_reply_clear(rp);
	}
}

void cli_close(struct cli_conn *c)
{
	interrupt_fd = -1;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	ctl_linebuf_free(&c->in);
}
