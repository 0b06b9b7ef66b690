/* fastgate-cli's command table: each NOUN VERB with its options, the daemon command it
 * sends and how it prints the result. Parsing, --help at every level and shell completion
 * are all derived from this one table. */
#ifndef FG_CLI_COMMANDS_H
#define FG_CLI_COMMANDS_H

#include <stdbool.h>
#include <jansson.h>

enum cli_argtype {
	CLI_ARG_STRING,   /* --name N          -> "name": "N" */
	CLI_ARG_INT,      /* --rpm N           -> "rpm": N (a non-negative integer) */
	CLI_ARG_FLAG,     /* --all             -> "all": true */
	CLI_ARG_LIST,     /* --routes a,b      -> "routes": ["a","b"] */
	CLI_ARG_ADDRS,    /* --allow-ips a,b   -> "allow_ips": ["a","b"]; "" -> [] (no list) */
	CLI_ARG_CLEAR,    /* --all-routes      -> "routes": [], --no-expiry -> "expires_days": 0:
	                   * lifts a restriction by sending the empty value of its alternative */
	CLI_ARG_FALSE,    /* --no-stream       -> "stream": false (the opposite of a FLAG) */
	CLI_ARG_MULTI,    /* --limit X, repeatable -> "limits": ["X", ...] */
	CLI_ARG_TIME,     /* --since T         -> "since": unix seconds; T is ISO 8601
	                   * (2026-11-23T10:00:00Z, 2026-11-23), unix seconds, or an age
	                   * (30m, 1h, 7d: that long ago); see cli_parse_time */
};

/* What shell completion offers for a value. */
enum cli_complete {
	CLI_COMPLETE_NONE,
	CLI_COMPLETE_ROUTE,    /* one route name */
	CLI_COMPLETE_ROUTES,   /* comma-separated route names */
	CLI_COMPLETE_KEY,      /* a key id */
	CLI_COMPLETE_UPSTREAM, /* an upstream id, ROUTE/INDEX */
	CLI_COMPLETE_USER,     /* a user id */
};

/* Global options, as the command runner sees them. */
struct cli_ctx {
	const char *socket;
	bool json;
};

/* Options next to each other that share a key are alternatives: at most one of them may be
 * given, and the synopsis shows them as [--a X|--b]. A CLI_ARG_CLEAR option needs one
 * (CLI_ARG_LIST, CLI_ARG_ADDRS, CLI_ARG_MULTI or CLI_ARG_INT) to take its empty value
 * from. */
struct cli_opt {
	const char *flag;      /* "--name"; NULL for the positional argument */
	const char *metavar;   /* "N"; NULL for flags */
	enum cli_argtype type;
	const char *key;       /* member of the request's args */
	bool required;
	const char *help;
	enum cli_complete complete;
	const char *choices;   /* "csv,jsonl": the only values accepted (and completed); NULL any */
};

#define CLI_MAX_OPTS 16

struct cli_cmd {
	const char *noun;
	const char *verb;          /* NULL: a one-word command ("reload") */
	const char *ctl;           /* daemon command, e.g. "key.create" */
	const char *help;          /* one line */
	struct cli_opt pos;        /* pos.key NULL: no positional argument */
	struct cli_opt opts[CLI_MAX_OPTS];   /* ends at the first with flag NULL */
	void (*print)(const json_t *result);
	bool needs_an_option;      /* the command is pointless without at least one option */
	/* A command that is not one request and one reply (a stream) runs itself and returns
	 * the exit status; NULL: send, wait for the result, print it. */
	int (*run)(const struct cli_cmd *c, const json_t *args, const struct cli_ctx *ctx);
	int timeout_s;             /* how long to wait for the daemon; 0: CLI_TIMEOUT_S */
};

struct cli_noun {
	const char *name;
	const char *help;
};

extern const struct cli_cmd cli_commands[];
extern const size_t cli_ncommands;
extern const struct cli_noun cli_nouns[];
extern const size_t cli_nnouns;

/* An upstream's attempts object as "ok 12, 5xx 1": the outcomes that happened, in the
 * daemon's order, into buf; "-" when none did. */
const char *cli_fmt_outcomes(char *buf, size_t size, const json_t *att);

/* Print a daemon error reply the way this command wants it shown (stderr). */
void cli_print_error(const struct cli_cmd *cmd, const json_t *error, const char *message);

/* ---- logs.c ---- */
int cli_run_logs_tail(const struct cli_cmd *c, const json_t *args, const struct cli_ctx *ctx);
int cli_run_logs_export(const struct cli_cmd *c, const json_t *args, const struct cli_ctx *ctx);
void cli_print_log_record(const json_t *r);
/* Parse a time for --since/--until into unix seconds: ISO 8601 date-time
 * (2026-11-23T10:00:00Z, fractions and +01:00 offsets allowed, no zone = UTC, a space
 * may replace the T), a date (2026-11-23 = its midnight UTC), unix seconds (digits
 * only), "now", or an age: a number and a unit s, m, h, d or w (30m = 30 minutes ago).
 * False if s is none of these. */
bool cli_parse_time(const char *s, double now, double *out);

/* ---- metrics.c ---- */
void cli_print_metrics(const json_t *r);

/* ---- report.c ---- */
int cli_run_report(const struct cli_cmd *c, const json_t *args, const struct cli_ctx *ctx);
void cli_print_report(const json_t *r);

#endif
