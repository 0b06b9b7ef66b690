/* fastgate-cli: operator commands for a running fastgated, over its control socket.
 *
 *   fastgate-cli [--socket PATH] [--json] NOUN VERB [ARGS]
 *
 * The command line is parsed against the table in commands.c; help at every level and the
 * words bash completion offers come from the same table. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "audit.h"
#include "cidr.h"
#include "client.h"
#include "commands.h"
#include "config.h"
#include "ctlproto.h"

/* The daemon's own default, so that an installed CLI finds an installed daemon unasked. */
#define DEFAULT_SOCKET FG_DEFAULT_CONTROL

struct globals {
	const char *socket;
	bool json;
};

/* ---- help, all derived from the command table ---- */

static const struct cli_noun *find_noun(const char *name)
{
	for (size_t i = 0; i < cli_nnouns; i++)
		if (strcmp(cli_nouns[i].name, name) == 0)
			return &cli_nouns[i];
	return NULL;
}

/* The command `noun verb`; verb NULL finds a one-word command. */
static const struct cli_cmd *find_cmd(const char *noun, const char *verb)
{
	for (size_t i = 0; i < cli_ncommands; i++) {
		const struct cli_cmd *c = &cli_commands[i];

		if (strcmp(c->noun, noun) != 0)
			continue;
		if (!verb ? !c->verb : (c->verb && strcmp(c->verb, verb) == 0))
			return c;
	}
	return NULL;
}

/* True if o and the option after it are alternatives (they set the same key). */
static bool alt_next(const struct cli_opt *o)
{
	return o[1].flag && strcmp(o->key, o[1].key) == 0;
}

/* "key update ID [--routes a,b|--all-routes] [--rpm N]" into buf. */
static const char *synopsis(const struct cli_cmd *c, char *buf, size_t size)
{
	size_t n = 0;
	bool in_alt = false;

#define ADD(...) do { int r_ = snprintf(buf + n, n < size ? size - n : 0, __VA_ARGS__); \
		if (r_ > 0) n += (size_t)r_; } while (0)
	ADD("%s%s%s", c->noun, c->verb ? " " : "", c->verb ? c->verb : "");
	if (c->pos.key)
		ADD(c->pos.required ? " %s" : " [%s]", c->pos.metavar);
	for (const struct cli_opt *o = c->opts; o->flag; o++) {
		ADD("%s%s%s%s%s", in_alt ? "|" : o->required ? " " : " [", o->flag,
		    o->metavar ? " " : "", o->metavar ? o->metavar : "",
		    o->required || alt_next(o) ? "" : "]");
		in_alt = alt_next(o);
	}
#undef ADD
	return buf;
}

static void verb_list(const char *noun, char *buf, size_t size)
{
	size_t n = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < cli_ncommands; i++) {
		const struct cli_cmd *c = &cli_commands[i];
		int r;

		if (strcmp(c->noun, noun) != 0 || !c->verb)
			continue;
		r = snprintf(buf + n, n < size ? size - n : 0, "%s%s", n ? "|" : "", c->verb);
		if (r > 0)
			n += (size_t)r;
	}
}

static void print_command_lines(FILE *out, const char *noun)
{
	char syn[512];

	for (size_t i = 0; i < cli_ncommands; i++) {
		const struct cli_cmd *c = &cli_commands[i];

		if (noun && strcmp(c->noun, noun) != 0)
			continue;
		synopsis(c, syn, sizeof(syn));
		if (strlen(syn) <= 34)
			fprintf(out, "  %-34s  %s\n", syn, c->help);
		else
			fprintf(out, "  %s\n  %-34s  %s\n", syn, "", c->help);
	}
}

static void global_help(FILE *out)
{
	fprintf(out,
	        "usage: fastgate-cli [--socket PATH] [--json] NOUN VERB [ARGS]\n"
	        "\n"
	        "Operate a running fastgated over its control socket.\n"
	        "\n"
	        "Commands:\n");
	print_command_lines(out, NULL);
	fprintf(out,
	        "\n"
	        "Options:\n"
	        "  --socket PATH  control socket (default: $FASTGATE_SOCKET, else %s)\n"
	        "  --json         print the daemon's result as one JSON document\n"
	        "  -h, --help     this help; also after a noun or a command (key --help)\n"
	        "  --version      print fastgate-cli's version\n"
	        "\n"
	        "Exit status: 0 ok, 1 fastgated refused, 2 usage error, 3 cannot reach fastgated.\n",
	        DEFAULT_SOCKET);
}

static void noun_help(FILE *out, const struct cli_noun *n)
{
	char verbs[256];

	verb_list(n->name, verbs, sizeof(verbs));
	fprintf(out, "usage: fastgate-cli [--socket PATH] [--json] %s %s [ARGS]\n\n%c%s.\n\n"
	        "Commands:\n", n->name, verbs, toupper((unsigned char)n->help[0]), n->help + 1);
	print_command_lines(out, n->name);
	fprintf(out, "\nfastgate-cli %s VERB --help describes one command.\n", n->name);
}

static void cmd_help(FILE *out, const struct cli_cmd *c)
{
	char syn[512];
	char label[64];

	fprintf(out, "usage: fastgate-cli [--socket PATH] [--json] %s\n\n%c%s.\n",
	        synopsis(c, syn, sizeof(syn)), toupper((unsigned char)c->help[0]), c->help + 1);
	if (!c->pos.key && !c->opts[0].flag)
		return;
	fprintf(out, "\nArguments:\n");
	if (c->pos.key)
		fprintf(out, "  %-20s  %s\n", c->pos.metavar, c->pos.help);
	for (const struct cli_opt *o = c->opts; o->flag; o++) {
		snprintf(label, sizeof(label), "%s%s%s", o->flag, o->metavar ? " " : "",
		         o->metavar ? o->metavar : "");
		if (strlen(label) <= 20)
			fprintf(out, "  %-20s  %s%s\n", label, o->help, o->required ? " (required)" : "");
		else
			fprintf(out, "  %s\n  %-20s  %s%s\n", label, "", o->help,
			        o->required ? " (required)" : "");
	}
}

/* Report a command-line mistake with a one-line usage hint; returns CLI_EXIT_USAGE. */
static int usage_error(const struct cli_cmd *c, const char *noun, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int usage_error(const struct cli_cmd *c, const char *noun, const char *fmt, ...)
{
	char syn[512];
	va_list ap;

	fputs("fastgate-cli: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (c) {
		fprintf(stderr, "usage: fastgate-cli %s  (fastgate-cli %s%s%s --help for more)\n",
		        synopsis(c, syn, sizeof(syn)), c->noun, c->verb ? " " : "",
		        c->verb ? c->verb : "");
	} else if (noun) {
		char verbs[256];

		verb_list(noun, verbs, sizeof(verbs));
		fprintf(stderr, "usage: fastgate-cli %s %s [ARGS]  (fastgate-cli %s --help for more)\n",
		        noun, verbs, noun);
	} else {
		fprintf(stderr, "usage: fastgate-cli [--socket PATH] [--json] NOUN VERB [ARGS]  "
		        "(fastgate-cli --help lists the commands)\n");
	}
	return CLI_EXIT_USAGE;
}

/* ---- argument parsing ---- */

/* Global options may appear anywhere before "--". 1 if argv[*i] was one (consumed),
 * 0 if not, -1 on a usage error (reported). */
static int global_option(int argc, char **argv, int *i, struct globals *g,
                         const struct cli_cmd *c, const char *noun)
{
	const char *a = argv[*i];

	if (strcmp(a, "--json") == 0) {
		g->json = true;
		return 1;
	}
	if (strncmp(a, "--socket=", 9) == 0) {
		g->socket = a + 9;
		return 1;
	}
	if (strcmp(a, "--socket") == 0) {
		if (*i + 1 >= argc) {
			usage_error(c, noun, "option --socket needs a value (PATH)");
			return -1;
		}
		g->socket = argv[++*i];
		return 1;
	}
	return 0;
}

static bool is_help(const char *a)
{
	return strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0;
}

/* Strict non-negative decimal. */
static bool parse_uint(const char *s, json_int_t *out)
{
	char *end;
	long long v;

	if (!*s || *s == '-' || *s == '+' || *s == ' ')
		return false;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || *end)
		return false;
	*out = v;
	return true;
}

/* v is one of the comma-separated words in choices. */
static bool choice_ok(const char *choices, const char *v)
{
	size_t n = strlen(v);

	for (const char *p = choices; *p;) {
		size_t w = strcspn(p, ",");

		if (w == n && strncmp(p, v, n) == 0)
			return true;
		p += w;
		if (*p)
			p++;
	}
	return false;
}

/* Convert one option value to its JSON form; NULL after a usage error. */
static json_t *opt_value(const struct cli_cmd *c, const struct cli_opt *o, const char *v)
{
	const char *what = o->flag ? o->flag : o->metavar;
	json_int_t n;

	if (o->choices && !choice_ok(o->choices, v)) {
		usage_error(c, NULL, "%s must be one of %s, not '%s'", what, o->choices, v);
		return NULL;
	}
	switch (o->type) {
	case CLI_ARG_STRING:
		if (!*v) {
			usage_error(c, NULL, "%s must not be empty", what);
			return NULL;
		}
		return json_string(v);
	case CLI_ARG_INT:
		if (!parse_uint(v, &n) || (!o->flag && n == 0)) {
			usage_error(c, NULL, "%s must be a %s integer, not '%s'", what,
			            o->flag ? "non-negative" : "positive", v);
			return NULL;
		}
		return json_integer(n);
	case CLI_ARG_FLAG:
		return json_true();
	case CLI_ARG_FALSE:
		return json_false();
	case CLI_ARG_TIME: {
		struct timeval now;
		double t;

		gettimeofday(&now, NULL);
		if (!cli_parse_time(v, (double)now.tv_sec + (double)now.tv_usec / 1e6, &t)) {
			usage_error(c, NULL, "%s: cannot read the time '%s' (give 2026-11-23T10:00:00Z, "
			            "2026-11-23, unix seconds, or an age like 30m, 1h, 7d)", what, v);
			return NULL;
		}
		/* Whole seconds as an integer; a fraction kept to the millisecond. */
		if (t == floor(t))
			return json_integer((json_int_t)t);
		return json_real(round(t * 1000.0) / 1000.0);
	}
	case CLI_ARG_CLEAR:
		for (const struct cli_opt *alt = c->opts; alt->flag; alt++) {
			if (strcmp(alt->key, o->key) != 0 || alt == o)
				continue;
			if (alt->type == CLI_ARG_LIST || alt->type == CLI_ARG_MULTI ||
			    alt->type == CLI_ARG_ADDRS)
				return json_array();
			if (alt->type == CLI_ARG_INT)
				return json_integer(0);
		}
		abort();      /* the command table gave it no alternative: a bug, not input */
	case CLI_ARG_MULTI:
		if (!*v) {
			usage_error(c, NULL, "%s must not be empty", what);
			return NULL;
		}
		return json_string(v);
	case CLI_ARG_LIST:
	case CLI_ARG_ADDRS: {
		json_t *a = json_array();
		char *copy = strdup(v), *save = NULL, *tok;

		if (!a || !copy)
			abort();
		for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
			while (*tok == ' ')
				tok++;
			for (char *e = tok + strlen(tok); e > tok && e[-1] == ' '; e--)
				e[-1] = '\0';
			if (*tok)
				json_array_append_new(a, json_string(tok));
		}
		free(copy);
		/* an empty address list lifts the restriction; an empty route list means nothing */
		if (json_array_size(a) == 0 && o->type != CLI_ARG_ADDRS) {
			json_decref(a);
			usage_error(c, NULL, "%s needs at least one name (a,b,...)", what);
			return NULL;
		}
		return a;
	}
	}
	return NULL;
}

static const struct cli_opt *find_opt(const struct cli_cmd *c, const char *flag, size_t len)
{
	for (const struct cli_opt *o = c->opts; o->flag; o++)
		if (strlen(o->flag) == len && strncmp(o->flag, flag, len) == 0)
			return o;
	return NULL;
}

static bool any_given(const bool given[CLI_MAX_OPTS])
{
	for (size_t i = 0; i < CLI_MAX_OPTS; i++)
		if (given[i])
			return true;
	return false;
}

/* The option of c that sets args member key, for messages. */
static const char *flag_of(const struct cli_cmd *c, const char *key)
{
	for (const struct cli_opt *o = c->opts; o->flag; o++)
		if (strcmp(o->key, key) == 0)
			return o->flag;
	return key;
}

/* What the CLI can tell is wrong without the daemon: the limits the control protocol sets
 * on numbers, options that exclude each other, export columns that do not exist. A usage
 * error (exit 2, nothing sent), even when the daemon is down. */
static int check_args(const struct cli_cmd *c, const json_t *args)
{
	static const struct { const char *key; json_int_t max; } maxima[] = {
		{ "rpm", CTL_RPM_MAX }, { "expires_days", CTL_EXPIRES_DAYS_MAX },
		{ "lines", CTL_TAIL_LINES_MAX }, { "hours", CTL_HOURS_MAX }, { "days", CTL_DAYS_MAX },
	};
	const char *fields = json_string_value(json_object_get(args, "fields"));
	const json_t *ips = json_object_get(args, "allow_ips"), *ip;
	size_t i;

	json_array_foreach(ips, i, ip) {
		struct cidr r;

		if (cidr_parse(json_string_value(ip), &r) < 0)
			return usage_error(c, NULL, "%s: \"%s\" is not an address or a range such as "
			                   "10.0.0.0/8 or fd00::/8 (no bits set past the prefix)",
			                   flag_of(c, "allow_ips"), json_string_value(ip));
	}
	if (json_array_size(ips) > CTL_ALLOW_IPS_MAX)
		return usage_error(c, NULL, "%s: at most %d addresses or ranges on a key, not %zu",
		                   flag_of(c, "allow_ips"), CTL_ALLOW_IPS_MAX, json_array_size(ips));
	for (i = 0; i < sizeof(maxima) / sizeof(maxima[0]); i++) {
		const json_t *v = json_object_get(args, maxima[i].key);

		if (json_is_integer(v) && json_integer_value(v) > maxima[i].max)
			return usage_error(c, NULL, "%s must be at most %" JSON_INTEGER_FORMAT ", not %"
			                   JSON_INTEGER_FORMAT, flag_of(c, maxima[i].key), maxima[i].max,
			                   json_integer_value(v));
	}
	if ((json_object_get(args, "hourly") || json_object_get(args, "hours")) &&
	    (json_object_get(args, "daily") || json_object_get(args, "days")))
		return usage_error(c, NULL, "choose --hourly (or --hours) or --daily (or --days), "
		                   "not both");
	if (fields) {
		int cols[64];
		char *err = NULL;

		if (audit_fields_parse(fields, cols, sizeof(cols) / sizeof(cols[0]), &err) < 0) {
			int rc = usage_error(c, NULL, "--fields: %s", err ? err : "bad list");

			free(err);
			return rc;
		}
	}
	return CLI_EXIT_OK;
}

/* A second bare argument stands for the command's one required option when it is not
 * given yet: `user topup 3 25` is `user topup 3 --amount 25`, as DESIGN.md writes it. NULL
 * when the command has no such option. */
static const struct cli_opt *second_positional(const struct cli_cmd *c, const json_t *args)
{
	const struct cli_opt *found = NULL;

	for (const struct cli_opt *o = c->opts; o->flag; o++) {
		if (!o->required)
			continue;
		if (found)
			return NULL;   /* two required options: which one would be ambiguous */
		found = o;
	}
	return found && !json_object_get(args, found->key) ? found : NULL;
}

/* Parse a command's arguments from argv[i..] into a new args object. Returns
 * CLI_EXIT_OK with *out set, CLI_EXIT_USAGE after reporting, or -1 if help was printed. */
static int parse_cmd_args(const struct cli_cmd *c, int argc, char **argv, int i,
                          struct globals *g, json_t **out)
{
	json_t *args = json_object();
	bool only_positional = false, given[CLI_MAX_OPTS] = { false };
	int ret = CLI_EXIT_USAGE;

	if (!args)
		abort();
	for (; i < argc; i++) {
		const char *a = argv[i];
		const struct cli_opt *o;
		const char *val;
		json_t *v;
		int r;

		if (!only_positional && a[0] == '-' && a[1]) {
			if (strcmp(a, "--") == 0) {
				only_positional = true;
				continue;
			}
			if (is_help(a)) {
				cmd_help(stdout, c);
				ret = -1;
				goto done;
			}
			r = global_option(argc, argv, &i, g, c, NULL);
			if (r < 0)
				goto done;
			if (r > 0)
				continue;
			o = find_opt(c, a, strcspn(a, "="));
			if (!o) {
				usage_error(c, NULL, "unknown option '%.*s' for '%s%s%s'",
				            (int)strcspn(a, "="), a, c->noun, c->verb ? " " : "",
				            c->verb ? c->verb : "");
				goto done;
			}
			if (json_object_get(args, o->key) &&
			    !(o->type == CLI_ARG_MULTI && given[o - c->opts])) {
				const struct cli_opt *other = c->opts;

				while (other->flag && !(other != o && given[other - c->opts] &&
				                        strcmp(other->key, o->key) == 0))
					other++;
				if (other->flag)
					usage_error(c, NULL, "options %s and %s cannot be used together",
					            other->flag, o->flag);
				else
					usage_error(c, NULL, "option %s given twice", o->flag);
				goto done;
			}
			given[o - c->opts] = true;
			val = strchr(a, '=') ? strchr(a, '=') + 1 : NULL;
			if (o->type == CLI_ARG_FLAG || o->type == CLI_ARG_CLEAR ||
			    o->type == CLI_ARG_FALSE) {
				if (val) {
					usage_error(c, NULL, "option %s takes no value", o->flag);
					goto done;
				}
			} else if (!val) {
				if (i + 1 >= argc) {
					usage_error(c, NULL, "option %s needs a value (%s)", o->flag,
					            o->metavar);
					goto done;
				}
				val = argv[++i];
			}
		} else {
			o = &c->pos;
			val = a;
			if (o->key && json_object_get(args, o->key))
				o = second_positional(c, args);
			if (!o || !o->key || json_object_get(args, o->key)) {
				usage_error(c, NULL, "unexpected argument '%s'", a);
				goto done;
			}
		}
		v = opt_value(c, o, val ? val : "");
		if (!v)
			goto done;
		if (o->type == CLI_ARG_MULTI) {
			json_t *arr = json_object_get(args, o->key);

			if (!arr) {
				arr = json_array();
				json_object_set_new(args, o->key, arr);
			}
			json_array_append_new(arr, v);
			continue;
		}
		json_object_set_new(args, o->key, v);
	}
	if (c->pos.key && c->pos.required && !json_object_get(args, c->pos.key)) {
		usage_error(c, NULL, "missing %s", c->pos.metavar);
		goto done;
	}
	for (const struct cli_opt *o = c->opts; o->flag; o++)
		if (o->required && !json_object_get(args, o->key)) {
			usage_error(c, NULL, "missing %s %s", o->flag, o->metavar);
			goto done;
		}
	if (c->needs_an_option && !any_given(given)) {
		char flags[256];
		size_t n = 0;

		flags[0] = '\0';
		for (const struct cli_opt *o = c->opts; o->flag && n < sizeof(flags); o++)
			n += (size_t)snprintf(flags + n, sizeof(flags) - n, "%s%s",
			                      n ? (o[1].flag ? ", " : " or ") : "", o->flag);
		usage_error(c, NULL, "nothing to change: give %s", flags);
		goto done;
	}
	*out = args;
	args = NULL;
	ret = CLI_EXIT_OK;
done:
	json_decref(args);
	return ret;
}

/* ---- shell completion ----
 * `fastgate-cli --complete WORD...` prints the candidates for the word after WORDs, one a
 * line. Values the daemon knows are requested with a directive the script resolves:
 * @file (a path), @route, @routes (comma list), @key (a key id), @upstream (ROUTE/INDEX),
 * @user (a user id). */

/* The candidates for an option's value (or the positional argument). */
static void complete_value(const struct cli_opt *o)
{
	if (o->choices) {
		for (const char *p = o->choices; *p;) {
			size_t w = strcspn(p, ",");

			printf("%.*s\n", (int)w, p);
			p += w;
			if (*p)
				p++;
		}
		return;
	}
	switch (o->complete) {
	case CLI_COMPLETE_ROUTE: puts("@route"); break;
	case CLI_COMPLETE_ROUTES: puts("@routes"); break;
	case CLI_COMPLETE_KEY: puts("@key"); break;
	case CLI_COMPLETE_UPSTREAM: puts("@upstream"); break;
	case CLI_COMPLETE_USER: puts("@user"); break;
	case CLI_COMPLETE_NONE: break;
	}
}

static void complete_cmd(const struct cli_cmd *c, int n, char **w)
{
	bool pos_given = false;

	for (int i = 0; i < n; i++) {
		const struct cli_opt *o;

		if (strcmp(w[i], "--socket") == 0) {
			i++;
			continue;
		}
		if (w[i][0] != '-') {
			pos_given = true;
			continue;
		}
		o = find_opt(c, w[i], strlen(w[i]));
		if (o && o->metavar) {
			if (i + 1 == n) {
				complete_value(o);
				return;
			}
			i++;
		}
	}
	if (n > 0 && strcmp(w[n - 1], "--socket") == 0) {
		puts("@file");
		return;
	}
	if (c->pos.key && !pos_given)
		complete_value(&c->pos);
	for (const struct cli_opt *o = c->opts; o->flag; o++)
		puts(o->flag);
	puts("--json");
	puts("--help");
}

static void complete(int n, char **w)
{
	int i = 0;

	while (i < n && w[i][0] == '-') {
		if (strcmp(w[i], "--socket") == 0 && ++i >= n) {
			puts("@file");
			return;
		}
		i++;
	}
	if (i >= n) {
		for (size_t k = 0; k < cli_nnouns; k++)
			puts(cli_nouns[k].name);
		for (size_t k = 0; k < cli_ncommands; k++)
			if (!cli_commands[k].verb)
				puts(cli_commands[k].noun);
		puts("--socket");
		puts("--json");
		puts("--help");
		puts("--version");
		return;
	}
	if (find_cmd(w[i], NULL)) {
		complete_cmd(find_cmd(w[i], NULL), n - i - 1, w + i + 1);
		return;
	}
	if (!find_noun(w[i]))
		return;
	if (i + 1 >= n) {
		for (size_t k = 0; k < cli_ncommands; k++)
			if (cli_commands[k].verb && strcmp(cli_commands[k].noun, w[i]) == 0)
				puts(cli_commands[k].verb);
		return;
	}
	if (find_cmd(w[i], w[i + 1]))
		complete_cmd(find_cmd(w[i], w[i + 1]), n - i - 2, w + i + 2);
}

/* ---- running a command ---- */

static int run(const struct cli_cmd *c, const json_t *args, const struct globals *g)
{
	struct cli_conn conn;
	struct ctl_reply rp = { 0 };
	int ret;

	if (c->run) {
		struct cli_ctx ctx = { g->socket, g->json };

		return c->run(c, args, &ctx);
	}
	ret = cli_connect(&conn, g->socket);
	if (ret != CLI_EXIT_OK)
		goto done;
	if (c->timeout_s)
		cli_set_timeout(&conn, c->timeout_s);
	ret = cli_call(&conn, c->ctl, args, &rp);
	if (ret != CLI_EXIT_OK)
		goto done;
	switch (rp.kind) {
	case CTL_REPLY_RESULT:
		if (g->json) {
			/* 15 digits: 1.443, not 1.4430000000000001 (the daemon sends 17). */
			json_dumpf(rp.result, stdout, JSON_COMPACT | JSON_ENCODE_ANY |
			           JSON_REAL_PRECISION(15));
			fputc('\n', stdout);
		} else {
			c->print(rp.result);
		}
		ret = CLI_EXIT_OK;
		break;
	case CTL_REPLY_ERROR:
		if (g->json && rp.error) {
			/* a script reads the refusal as it reads results: the daemon's error object
			 * (code, message, and reload's errors) on stdout; people read stderr */
			json_t *o = json_pack("{s:O}", "error", rp.error);

			if (o) {
				json_dumpf(o, stdout, JSON_COMPACT);
				fputc('\n', stdout);
				json_decref(o);
			}
		}
		cli_print_error(c, rp.error, rp.message);
		ret = CLI_EXIT_REFUSED;
		break;
	default:
		cli_err("unexpected streamed reply from fastgated to '%s'", c->ctl);
		ret = CLI_EXIT_UNREACHABLE;
	}
done:
	ctl_reply_clear(&rp);
	cli_close(&conn);
	if (ret == CLI_EXIT_OK && fflush(stdout) != 0 && errno != EPIPE) {
		/* EPIPE: the reader (| head) has what it wanted; not an error. */
		cli_err("writing output: %s", strerror(errno));
		ret = CLI_EXIT_REFUSED;
	}
	return ret;
}

int main(int argc, char **argv)
{
	struct globals g = { NULL, false };
	const struct cli_cmd *c;
	const struct cli_noun *noun;
	json_t *args = NULL;
	const char *env = getenv("FASTGATE_SOCKET");
	int i = 1, r, ret;

	g.socket = env && *env ? env : DEFAULT_SOCKET;
	/* A closed stdout (| head) is an EPIPE to stop on quietly, not a fatal signal. */
	signal(SIGPIPE, SIG_IGN);
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		}
		if (is_help(argv[i])) {
			global_help(stdout);
			return CLI_EXIT_OK;
		}
		if (strcmp(argv[i], "--version") == 0) {
			printf("fastgate-cli %s (control protocol %d)\n", FG_VERSION, CTL_PROTOCOL_VERSION);
			return CLI_EXIT_OK;
		}
		if (strcmp(argv[i], "--complete") == 0) {
			complete(argc - i - 1, argv + i + 1);
			return CLI_EXIT_OK;
		}
		r = global_option(argc, argv, &i, &g, NULL, NULL);
		if (r < 0)
			return CLI_EXIT_USAGE;
		if (r == 0)
			return usage_error(NULL, NULL, "unknown option '%s'", argv[i]);
	}
	if (i >= argc)
		return usage_error(NULL, NULL, "missing command");

	if (strcmp(argv[i], "help") == 0) {
		/* "help [NOUN [VERB]]" is --help spelled as a command. */
		if (i + 1 >= argc) {
			global_help(stdout);
			return CLI_EXIT_OK;
		}
		if ((c = find_cmd(argv[i + 1], i + 2 < argc ? argv[i + 2] : NULL)) != NULL) {
			cmd_help(stdout, c);
			return CLI_EXIT_OK;
		}
		if ((noun = find_noun(argv[i + 1])) != NULL && i + 2 >= argc) {
			noun_help(stdout, noun);
			return CLI_EXIT_OK;
		}
		return usage_error(NULL, NULL, "no help for '%s%s%s'", argv[i + 1],
		                   i + 2 < argc ? " " : "", i + 2 < argc ? argv[i + 2] : "");
	}

	c = find_cmd(argv[i], NULL);
	if (c) {
		i++;
	} else if ((noun = find_noun(argv[i])) != NULL) {
		for (i++; i < argc; i++) {
			if (is_help(argv[i])) {
				noun_help(stdout, noun);
				return CLI_EXIT_OK;
			}
			r = global_option(argc, argv, &i, &g, NULL, noun->name);
			if (r < 0)
				return CLI_EXIT_USAGE;
			if (r == 0)
				break;
		}
		if (i >= argc)
			return usage_error(NULL, noun->name, "'%s' needs a command", noun->name);
		c = find_cmd(noun->name, argv[i]);
		if (!c)
			return usage_error(NULL, noun->name, "unknown command '%s %s'", noun->name,
			                   argv[i]);
		i++;
	} else {
		return usage_error(NULL, NULL, "unknown command '%s'", argv[i]);
	}

	r = parse_cmd_args(c, argc, argv, i, &g, &args);
	if (r < 0)
		return CLI_EXIT_OK;
	if (r == CLI_EXIT_OK)
		r = check_args(c, args);
	if (r != CLI_EXIT_OK) {
		json_decref(args);
		return r;
	}
	ret = run(c, args, &g);
	json_decref(args);
	return ret;
}
