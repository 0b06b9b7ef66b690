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
	CLI_ARG_CLEAR,    /* --all-routes      -> "routes": [], --no-expiry -> "expires_days": 0:
	                   * lifts a restriction by sending the empty value of its alternative */
};

/* What shell completion offers for a value. */
enum cli_complete {
	CLI_COMPLETE_NONE,
	CLI_COMPLETE_ROUTE,    /* one route name */
	CLI_COMPLETE_ROUTES,   /* comma-separated route names */
	CLI_COMPLETE_KEY,      /* a key id */
};

/* Options next to each other that share a key are alternatives: at most one of them may be
 * given, and the synopsis shows them as [--a X|--b]. A CLI_ARG_CLEAR option needs one
 * (CLI_ARG_LIST or CLI_ARG_INT) to take its empty value from. */
struct cli_opt {
	const char *flag;      /* "--name"; NULL for the positional argument */
	const char *metavar;   /* "N"; NULL for flags */
	enum cli_argtype type;
	const char *key;       /* member of the request's args */
	bool required;
	const char *help;
	enum cli_complete complete;
};

#define CLI_MAX_OPTS 8

struct cli_cmd {
	const char *noun;
	const char *verb;          /* NULL: a one-word command ("reload") */
	const char *ctl;           /* daemon command, e.g. "key.create" */
	const char *help;          /* one line */
	struct cli_opt pos;        /* pos.key NULL: no positional argument */
	struct cli_opt opts[CLI_MAX_OPTS];   /* ends at the first with flag NULL */
	void (*print)(const json_t *result);
	bool needs_an_option;      /* the command is pointless without at least one option */
};

struct cli_noun {
	const char *name;
	const char *help;
};

extern const struct cli_cmd cli_commands[];
extern const size_t cli_ncommands;
extern const struct cli_noun cli_nouns[];
extern const size_t cli_nnouns;

/* Print a daemon error reply the way this command wants it shown (stderr). */
void cli_print_error(const struct cli_cmd *cmd, const json_t *error, const char *message);

#endif
