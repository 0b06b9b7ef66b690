/* fastgate-cli's side of the control socket: connect, check the greeting, send one
 * request, read its reply. Blocking sockets with a timeout: the CLI does one thing and
 * exits, so an event loop would only hide the control flow. */
#ifndef FG_CLI_CLIENT_H
#define FG_CLI_CLIENT_H

#include <signal.h>
#include <jansson.h>

#include "ctlproto.h"

/* Exit statuses, part of the CLI's contract with scripts. */
enum cli_exit {
	CLI_EXIT_OK = 0,
	CLI_EXIT_REFUSED = 1,      /* the daemon answered with an error */
	CLI_EXIT_USAGE = 2,        /* bad command line */
	CLI_EXIT_UNREACHABLE = 3,  /* no daemon on the socket, or it did not answer */
};

#define CLI_TIMEOUT_S 10

/* Returned by cli_call/cli_read_reply (never an exit status) when SIGINT or SIGTERM
 * arrived after cli_stop_on_signals(): the user asked to stop, nothing is wrong. */
#define CLI_INTERRUPTED (-2)

struct cli_conn {
	int fd;
	const char *path;          /* borrowed */
	struct ctl_linebuf in;
	char version[64];          /* the daemon's, from its greeting */
	json_int_t next_id;
	int timeout_s;             /* receive timeout; 0 = wait for ever */
};

/* Connect to `path` and read the greeting. CLI_EXIT_OK, or CLI_EXIT_UNREACHABLE after
 * printing why (naming the socket and whether anything listens on it). */
int cli_connect(struct cli_conn *c, const char *path);
/* Send `cmd` with `args` (borrowed; NULL = {}) and read the reply into *rp (caller clears
 * it with ctl_reply_clear). CLI_EXIT_OK when a reply arrived (which may be an error
 * reply: check rp->kind), else CLI_EXIT_UNREACHABLE after printing why. */
int cli_call(struct cli_conn *c, const char *cmd, const json_t *args, struct ctl_reply *rp);
/* Read the next reply line (events of a stream). Same contract as cli_call. */
int cli_read_reply(struct cli_conn *c, struct ctl_reply *rp);
void cli_close(struct cli_conn *c);
/* Change how long a read waits for the daemon; 0 = for ever (logs tail -f). */
void cli_set_timeout(struct cli_conn *c, int seconds);
/* From now on SIGINT and SIGTERM end the wait for replies on c: the next (or current)
 * cli_read_reply returns CLI_INTERRUPTED. */
void cli_stop_on_signals(struct cli_conn *c);
/* Set by those signals. */
extern volatile sig_atomic_t cli_interrupted;

/* "fastgate-cli: " + message on stderr. */
void cli_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
