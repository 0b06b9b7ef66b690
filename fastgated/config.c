/* fastgate.yaml: a flat mapping of settings. Every key is listed in one table with its
 * type, so unknown keys and bad values are reported as FILE:LINE with what was expected. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

#include "config.h"

enum ctype { C_STR, C_INT, C_SIZE, C_BOOL, C_CIDRS, C_ORIGINS, C_RATE };

struct setting {
	const char *name;
	enum ctype type;
	size_t offset;
	long min, max;
};

#define S(name, type, field, min, max) { name, type, offsetof(struct config, field), min, max }
static const struct setting settings[] = {
	S("listen", C_STR, listen, 0, 0),
	S("tls_cert", C_STR, tls_cert, 0, 0),
	S("tls_key", C_STR, tls_key, 0, 0),
	S("routes", C_STR, routes_dir, 0, 0),
	S("models", C_STR, models_path, 0, 0),
	S("pricing", C_STR, pricing_path, 0, 0),
	S("require_price", C_BOOL, require_price, 0, 0),
	S("trusted_proxies", C_CIDRS, trusted_proxies, 0, 0),
	S("allow_ips", C_CIDRS, allow_ips, 0, 0),
	S("cors_origins", C_ORIGINS, cors_origins, 0, 0),
	S("auth_fail_limit", C_RATE, auth_fail_limit, 1, 1000000),
	S("keys", C_STR, keys_path, 0, 0),
	S("audit", C_STR, audit_path, 0, 0),
	S("control", C_STR, control_path, 0, 0),
	S("control_group", C_STR, control_group, 0, 0),
	S("max_body", C_SIZE, max_body, 1024, 1L << 30),
	S("max_headers", C_SIZE, max_headers, 1024, 1L << 20),
	S("header_timeout", C_INT, header_timeout, 1, 3600),
	S("idle_timeout", C_INT, idle_timeout, 1, 86400),
	S("max_connections", C_INT, max_connections, 1, 1000000),
	S("workers", C_INT, workers, 1, CONFIG_WORKERS_MAX),   /* or auto: 0 */
	S("drain_timeout", C_INT, drain_timeout, 0, 3600),
	S("metrics_public", C_BOOL, metrics_public, 0, 0),
	S("audit_retention_days", C_INT, audit_retention_days, 0, 36500),
	S("audit_memory_cap", C_INT, audit_memory_cap, 100, 10000000),
};
#undef S

/* What a running daemon cannot take over from a reload: the listening socket, the stores
 * and the control socket are opened once, at start, and the audit writer sizes its memory
 * then. Every other setting is read where it is used, so a reload applies it. */
static const char *const restart_only[] = {
	"listen", "keys", "audit", "control", "control_group", "audit_memory_cap", "workers",
};

void config_defaults(struct config *c)
{
	memset(c, 0, sizeof(*c));
	c->listen = strdup("127.0.0.1:8514");
	c->routes_dir = strdup(FG_DEFAULT_ROUTES);
	c->models_path = strdup(FG_DEFAULT_MODELS);
	c->pricing_path = strdup(FG_DEFAULT_PRICING);
	c->keys_path = strdup(FG_DEFAULT_KEYS);
	c->audit_path = strdup(FG_DEFAULT_AUDIT);
	c->control_path = strdup(FG_DEFAULT_CONTROL);
	c->max_body = 10 * 1024 * 1024;
	c->max_headers = 32 * 1024;
	c->header_timeout = 10;
	c->idle_timeout = 60;
	c->max_connections = 4096;
	c->workers = 0;   /* auto */
	c->drain_timeout = 30;
	c->audit_retention_days = 90;
	c->audit_memory_cap = 100000;
	c->auth_fail_limit = (struct limit_rate){ .amount = 20, .per_s = 60 };
}

int config_workers(const struct config *c)
{
	long n = c->workers;

	if (n <= 0)
		n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : n > CONFIG_WORKERS_MAX ? CONFIG_WORKERS_MAX : (int)n;
}

void config_free(struct config *c)
{
	free(c->listen);
	free(c->tls_cert);
	free(c->tls_key);
	free(c->models_path);
	free(c->pricing_path);
	free(c->routes_dir);
	free(c->keys_path);
	free(c->audit_path);
	free(c->control_path);
	free(c->control_group);
	free(c->pidfile);
	free(c->trusted_proxies);
	free(c->allow_ips);
	for (size_t i = 0; i < c->n_cors_origins; i++)
		free(c->cors_origins[i]);
	free(c->cors_origins);
	memset(c, 0, sizeof(*c));
}

/* "10M", "512K", "1048576" */
static int parse_size(const char *s, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || v < 0)
		return -1;
	if (*end == 'K' || *end == 'k') { v *= 1024; end++; }
	else if (*end == 'M' || *end == 'm') { v *= 1024 * 1024; end++; }
	else if (*end == 'G' || *end == 'g') { v *= 1024L * 1024 * 1024; end++; }
	if (*end)
		return -1;
	*out = v;
	return 0;
}

static void apply(struct config *c, const struct setting *st, const char *file, int line,
                  const char *value, struct errlist *errs)
{
	char *field = (char *)c + st->offset;
	long v = 0;
	char *end;

	switch (st->type) {
	case C_STR:
		free(*(char **)field);
		*(char **)field = strdup(value);
		if (st->offset == offsetof(struct config, models_path))
			c->models_set = true;   /* named, so it must be there */
		if (st->offset == offsetof(struct config, pricing_path))
			c->pricing_set = true;
		return;
	case C_BOOL:
		if (strcmp(value, "true") == 0 || strcmp(value, "yes") == 0)
			*(bool *)field = true;
		else if (strcmp(value, "false") == 0 || strcmp(value, "no") == 0)
			*(bool *)field = false;
		else
			errlist_add(errs, "%s:%d: %s: expected true or false", file, line, st->name);
		return;
	case C_INT:
		if (st->offset == offsetof(struct config, workers) && strcmp(value, "auto") == 0) {
			*(int *)field = 0;
			return;
		}
		errno = 0;
		v = strtol(value, &end, 10);
		if (errno || end == value || *end) {
			errlist_add(errs, "%s:%d: %s: expected a whole number%s", file, line, st->name,
			            st->offset == offsetof(struct config, workers) ? " or auto" : "");
			return;
		}
		break;
	case C_CIDRS:
	case C_ORIGINS:
		return;   /* apply_cidrs, apply_origins: lists, not one value */
	case C_RATE: {
		struct limit_rate r = { 0, 0 };
		char *why = NULL;

		if (strcmp(value, "off") != 0 && strcmp(value, "0") != 0 &&
		    limit_rate_parse(value, &r, &why) < 0)
			errlist_add(errs, "%s:%d: %s: %s", file, line, st->name, why);
		else if (r.amount > st->max)
			errlist_add(errs, "%s:%d: %s: %lld is out of range (%ld..%ld, or off)", file,
			            line, st->name, (long long)r.amount, st->min, st->max);
		else
			*(struct limit_rate *)field = r;
		free(why);
		return;
	}
	case C_SIZE:
		if (parse_size(value, &v) < 0) {
			errlist_add(errs, "%s:%d: %s: expected a size like 1048576, 512K or 10M",
			            file, line, st->name);
			return;
		}
		break;
	}
	if (v < st->min || v > st->max) {
		errlist_add(errs, "%s:%d: %s: %ld is out of range (%ld..%ld)", file, line, st->name,
		            v, st->min, st->max);
		return;
	}
	if (st->type == C_SIZE)
		*(size_t *)field = (size_t)v;
	else
		*(int *)field = (int)v;
}

/* The list a C_CIDRS setting fills: its array and its count. */
static void cidr_list(struct config *c, const struct setting *st, struct cidr ***list,
                      size_t **n)
{
	*list = (struct cidr **)((char *)c + st->offset);
	*n = st->offset == offsetof(struct config, allow_ips) ? &c->n_allow_ips
	                                                      : &c->n_trusted_proxies;
}

/* One range into the setting's list, or an error naming it. */
static void add_cidr(struct config *c, const struct setting *st, const char *s,
                     const char *file, size_t line, struct errlist *errs)
{
	struct cidr r, **list;
	size_t *n;

	if (cidr_parse(s, &r) < 0) {
		errlist_add(errs, "%s:%zu: %s: \"%s\" is not an address or a range such as "
		            "10.0.0.0/8 or fd00::/8 (no bits set past the prefix)", file, line,
		            st->name, s);
		return;
	}
	cidr_list(c, st, &list, &n);
	*list = realloc(*list, (*n + 1) * sizeof(**list));
	if (!*list)
		abort();
	(*list)[(*n)++] = r;
}

/* A list of ranges: a sequence of them, or one scalar of them separated by commas. A later
 * setting replaces an earlier one, as for every setting. */
static void apply_cidrs(struct config *c, const struct setting *st, yaml_document_t *doc,
                        const yaml_node_t *v, const char *file, struct errlist *errs)
{
	struct cidr **list;
	size_t *n;

	cidr_list(c, st, &list, &n);
	*n = 0;
	if (v->type == YAML_SEQUENCE_NODE) {
		for (yaml_node_item_t *it = v->data.sequence.items.start;
		     it < v->data.sequence.items.top; it++) {
			yaml_node_t *e = yaml_document_get_node(doc, *it);

			if (e->type != YAML_SCALAR_NODE)
				errlist_add(errs, "%s:%zu: %s: expected addresses or ranges", file,
				            e->start_mark.line + 1, st->name);
			else
				add_cidr(c, st, (char *)e->data.scalar.value, file,
				         e->start_mark.line + 1, errs);
		}
	} else if (v->type == YAML_SCALAR_NODE) {
		char *copy = strdup((char *)v->data.scalar.value), *save = NULL;

		if (!copy)
			abort();
		for (char *tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save))
			add_cidr(c, st, tok, file, v->start_mark.line + 1, errs);
		free(copy);
	} else {
		errlist_add(errs, "%s:%zu: %s: expected a list such as [10.0.0.0/8]", file,
		            v->start_mark.line + 1, st->name);
	}
}

/* An origin as browsers send it: "*", or scheme://host[:port] with no path. */
static bool origin_ok(const char *s)
{
	const char *host;

	if (strcmp(s, "*") == 0)
		return true;
	if (strncmp(s, "https://", 8) == 0)
		host = s + 8;
	else if (strncmp(s, "http://", 7) == 0)
		host = s + 7;
	else
		return false;
	if (!*host)
		return false;
	for (; *host; host++)
		if (!((*host >= 'a' && *host <= 'z') || (*host >= '0' && *host <= '9') ||
		      *host == '.' || *host == '-' || *host == ':' || *host == '[' || *host == ']'))
			return false;   /* upper case, a path, a slash: browsers never send those */
	return true;
}

/* cors_origins: a sequence of origins (or one, or several separated by commas). */
static void apply_origins(struct config *c, yaml_document_t *doc, const yaml_node_t *v,
                          const char *file, struct errlist *errs)
{
	const yaml_node_t *one[1] = { v };
	const yaml_node_t *const *items = one;
	size_t n = 1;
	yaml_node_t *seq[256];

	for (size_t i = 0; i < c->n_cors_origins; i++)
		free(c->cors_origins[i]);
	c->n_cors_origins = 0;
	if (v->type == YAML_SEQUENCE_NODE) {
		n = 0;
		for (yaml_node_item_t *it = v->data.sequence.items.start;
		     it < v->data.sequence.items.top && n < 256; it++)
			seq[n++] = yaml_document_get_node(doc, *it);
		items = (const yaml_node_t *const *)seq;
	}
	for (size_t i = 0; i < n; i++) {
		char *copy, *save = NULL;

		if (items[i]->type != YAML_SCALAR_NODE) {
			errlist_add(errs, "%s:%zu: cors_origins: expected origins such as "
			            "https://app.example.com, or \"*\"", file, items[i]->start_mark.line + 1);
			continue;
		}
		copy = strdup((char *)items[i]->data.scalar.value);
		if (!copy)
			abort();
		for (char *tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
			if (!origin_ok(tok)) {
				errlist_add(errs, "%s:%zu: cors_origins: \"%s\" is not an origin (scheme://"
				            "host[:port] in lower case, no path; or \"*\")", file,
				            items[i]->start_mark.line + 1, tok);
				continue;
			}
			c->cors_origins = realloc(c->cors_origins,
			                          (c->n_cors_origins + 1) * sizeof(*c->cors_origins));
			if (!c->cors_origins || !(c->cors_origins[c->n_cors_origins] = strdup(tok)))
				abort();
			c->n_cors_origins++;
		}
		free(copy);
	}
}

int config_load_file(struct config *c, const char *path, struct errlist *errs)
{
	FILE *f = fopen(path, "r");
	yaml_parser_t parser;
	yaml_document_t doc;
	yaml_node_t *root;
	size_t before = errs->n;
	bool have_doc = false;

	if (!f) {
		errlist_add(errs, "%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	yaml_parser_initialize(&parser);
	yaml_parser_set_input_file(&parser, f);
	if (!yaml_parser_load(&parser, &doc)) {
		errlist_add(errs, "%s:%zu: %s", path, parser.problem_mark.line + 1,
		            parser.problem ? parser.problem : "YAML syntax error");
		goto out;
	}
	have_doc = true;
	root = yaml_document_get_root_node(&doc);
	if (!root)
		goto out; /* empty file: all defaults */
	if (root->type != YAML_MAPPING_NODE) {
		errlist_add(errs, "%s:%zu: expected a mapping of settings", path, root->start_mark.line + 1);
		goto out;
	}
	for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
		yaml_node_t *k = yaml_document_get_node(&doc, p->key);
		yaml_node_t *v = yaml_document_get_node(&doc, p->value);
		int line = (int)k->start_mark.line + 1;
		const struct setting *st = NULL;

		if (k->type != YAML_SCALAR_NODE) {
			errlist_add(errs, "%s:%d: expected a setting name", path, line);
			continue;
		}
		for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++)
			if (strcmp((char *)k->data.scalar.value, settings[i].name) == 0)
				st = &settings[i];
		if (!st) {
			errlist_add(errs, "%s:%d: unknown setting '%s'", path, line, (char *)k->data.scalar.value);
			continue;
		}
		if (st->type == C_CIDRS) {
			apply_cidrs(c, st, &doc, v, path, errs);
			continue;
		}
		if (st->type == C_ORIGINS) {
			apply_origins(c, &doc, v, path, errs);
			continue;
		}
		if (v->type != YAML_SCALAR_NODE) {
			errlist_add(errs, "%s:%d: %s: expected a single value", path, line, st->name);
			continue;
		}
		apply(c, st, path, line, (char *)v->data.scalar.value, errs);
	}
out:
	if (have_doc)
		yaml_document_delete(&doc);
	yaml_parser_delete(&parser);
	fclose(f);
	return errs->n > before ? -1 : 0;
}

static const struct setting *setting_named(const char *name)
{
	for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++)
		if (strcmp(settings[i].name, name) == 0)
			return &settings[i];
	return NULL;
}

void config_keep_restart_only(struct config *next, const struct config *running,
                              const char *file, struct errlist *warns)
{
	for (size_t i = 0; i < sizeof(restart_only) / sizeof(restart_only[0]); i++) {
		const struct setting *st = setting_named(restart_only[i]);
		char *a = (char *)next + st->offset;
		const char *b = (const char *)running + st->offset;
		char now[64];
		const char *shown = now;
		bool same;

		switch (st->type) {
		case C_STR: {
			char *x = *(char **)a;
			const char *y = *(char *const *)b;

			same = (!x && !y) || (x && y && strcmp(x, y) == 0);
			shown = y ? y : "unset";
			free(x);
			*(char **)a = NULL;
			if (y && !(*(char **)a = strdup(y)))
				abort();
			break;
		}
		case C_INT:
			same = *(int *)a == *(const int *)b;
			snprintf(now, sizeof(now), "%d", *(const int *)b);
			if (st->offset == offsetof(struct config, workers) && *(const int *)b == 0)
				snprintf(now, sizeof(now), "auto");
			*(int *)a = *(const int *)b;
			break;
		case C_SIZE:
			same = *(size_t *)a == *(const size_t *)b;
			snprintf(now, sizeof(now), "%zu", *(const size_t *)b);
			*(size_t *)a = *(const size_t *)b;
			break;
		default:
			abort();   /* a list or a flag in restart_only: compare it here first */
		}
		if (!same)
			errlist_add(warns, "%s: changed in %s; restart fastgated to apply (still %s)",
			            st->name, file ? file : "the configuration", shown);
	}
	/* The listener's connections are all plain or all TLS, so only a restart turns TLS on
	 * or off; while it stays on, the certificate and key are read again from the paths
	 * next names. */
	if (!next->tls_cert != !running->tls_cert) {
		errlist_add(warns, "tls_cert: %s in %s; restart fastgated to turn TLS %s",
		            next->tls_cert ? "set" : "unset", file ? file : "the configuration",
		            next->tls_cert ? "on" : "off");
		free(next->tls_cert);
		free(next->tls_key);
		next->tls_cert = running->tls_cert ? strdup(running->tls_cert) : NULL;
		next->tls_key = running->tls_key ? strdup(running->tls_key) : NULL;
		if (running->tls_cert && (!next->tls_cert || !next->tls_key))
			abort();
	}
}
