/* The model table; see models.h. */
#include <errno.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "models.h"
#include "util.h"
#include "yamlfile.h"

#define MODELS_MAX      10000
#define TOKENS_MAX      100000000L   /* a hundred million: beyond any model's window */

static long tokens(struct yaml_ctx *c, const yaml_node_t *n, const char *key)
{
	const char *s = yamlfile_scalar(n);
	char *end;
	long v;

	errno = 0;
	v = s ? strtol(s, &end, 10) : 0;
	if (!s || !*s || *end || errno || v < 1 || v > TOKENS_MAX) {
		yamlfile_err(c, n, "%s: expected a number of tokens from 1 to %ld", key, TOKENS_MAX);
		return 0;
	}
	return v;
}

static void parse_model(struct yaml_ctx *c, const yaml_node_t *mn, struct model_info *m)
{
	static const char *const keys[] = { "match", "provider", "context_window",
	                                    "max_output_tokens", "default_output_tokens", NULL };
	yaml_node_t *seen[5] = { 0 };
	const char *s;

	m->line = (int)mn->start_mark.line + 1;
	if (mn->type != YAML_MAPPING_NODE) {
		yamlfile_err(c, mn, "each entry under models: must be a mapping (- match: ...)");
		return;
	}
	for (yaml_node_pair_t *p = mn->data.mapping.pairs.start; p < mn->data.mapping.pairs.top; p++) {
		yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
		const char *name = yamlfile_scalar(k);
		size_t i;

		for (i = 0; name && keys[i] && strcmp(name, keys[i]) != 0; i++)
			;
		if (!name || !keys[i])
			yamlfile_err(c, k, "unknown key \"%s\" in a model (valid: match, provider, context_window, max_output_tokens, default_output_tokens)",
			     name ? name : "?");
		else if (seen[i])
			yamlfile_err(c, k, "duplicate key \"%s\" in a model", keys[i]);
		else
			seen[i] = yaml_document_get_node(c->doc, p->value);
	}
	if (!seen[0] || !(s = yamlfile_scalar(seen[0])) || !*s)
		yamlfile_err(c, seen[0] ? seen[0] : mn, "a model needs match: (a glob over model names, such as \"gpt-4o*\")");
	else
		m->match = xstrdup(s);
	if (seen[1]) {
		s = yamlfile_scalar(seen[1]);
		if (!s || (strcmp(s, "openai") && strcmp(s, "anthropic") && strcmp(s, "azure")))
			yamlfile_err(c, seen[1], "provider: expected openai, anthropic or azure");
		else
			m->provider = xstrdup(s);
	}
	if (!seen[2] || !seen[3])
		yamlfile_err(c, mn, "a model needs context_window: and max_output_tokens:");
	if (seen[2])
		m->context_window = tokens(c, seen[2], "context_window");
	if (seen[3])
		m->max_output_tokens = tokens(c, seen[3], "max_output_tokens");
	m->default_output_tokens = seen[4] ? tokens(c, seen[4], "default_output_tokens")
	                                   : m->max_output_tokens;
	if (m->max_output_tokens > m->context_window && m->context_window)
		yamlfile_err(c, seen[3], "max_output_tokens (%ld) is more than context_window (%ld)",
		     m->max_output_tokens, m->context_window);
	if (m->default_output_tokens > m->max_output_tokens && m->max_output_tokens)
		yamlfile_err(c, seen[4], "default_output_tokens (%ld) is more than max_output_tokens (%ld)",
		     m->default_output_tokens, m->max_output_tokens);
}

/* The file's root into the table (yamlfile_read's walk). */
static void parse_root(struct yaml_ctx *c, const yaml_node_t *root, void *table)
{
	struct model_table *t = table;
	const yaml_node_t *list = NULL;

	if (!root || root->type != YAML_MAPPING_NODE) {
		yamlfile_err(c, root, "expected a mapping with a models: key at the top");
		return;
	}
	for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
		yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
		const char *name = yamlfile_scalar(k);

		if (name && strcmp(name, "models") == 0)
			list = yaml_document_get_node(c->doc, p->value);
		else if (!name || (strcmp(name, "updated") && strcmp(name, "source")))
			yamlfile_err(c, k, "unknown key \"%s\" at the top (valid: models, updated, source)",
			     name ? name : "?");
	}
	if (!list || list->type != YAML_SEQUENCE_NODE) {
		yamlfile_err(c, list ? list : root, "models: expected a sequence of models (- match: ...)");
		return;
	}
	t->n = (size_t)(list->data.sequence.items.top - list->data.sequence.items.start);
	if (t->n > MODELS_MAX) {
		yamlfile_err(c, list, "models: at most %d entries", MODELS_MAX);
		t->n = 0;
		return;
	}
	t->models = xcalloc(t->n ? t->n : 1, sizeof(*t->models));
	for (size_t i = 0; i < t->n; i++)
		parse_model(c, yaml_document_get_node(c->doc, list->data.sequence.items.start[i]),
		            &t->models[i]);
}

struct model_table *models_load(const char *path, struct errlist *errs)
{
	struct model_table *t = xcalloc(1, sizeof(*t));

	t->path = xstrdup(path);
	if (yamlfile_read(path, errs, parse_root, t) < 0) {
		models_free(t);
		return NULL;
	}
	return t;
}

void models_free(struct model_table *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n; i++) {
		free(t->models[i].match);
		free(t->models[i].provider);
	}
	free(t->models);
	free(t->path);
	free(t);
}

const struct model_info *models_find(const struct model_table *t, const char *model)
{
	if (!t || !model)
		return NULL;
	for (size_t i = 0; i < t->n; i++)
		if (fnmatch(t->models[i].match, model, 0) == 0)
			return &t->models[i];
	return NULL;
}
