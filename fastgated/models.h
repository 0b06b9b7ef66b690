/* The model table (share/models.yaml, DESIGN.md Providers): for each model name glob, the
 * provider that serves it, its context window and its output limits. The Anthropic
 * translation takes `default_output_tokens` as max_tokens when a client sends none (the
 * Messages API requires one), and spend control will take the limits for its estimates.
 *
 * Ownership: models_load returns a table the caller frees with models_free; the gateway
 * keeps one and replaces it on reload. A `struct model_info` pointer is valid until that
 * table is freed: use it within one event, never keep it across one.
 *
 * Layer: state. */
#ifndef FG_MODELS_H
#define FG_MODELS_H

#include <stdio.h>

#include "errlist.h"

struct model_info {
	char *match;                 /* fnmatch(3) glob over the model name, as written */
	char *provider;              /* "openai", "anthropic", "azure", or NULL: not said */
	long context_window;         /* tokens, prompt and output together */
	long max_output_tokens;      /* the most one answer may hold */
	long default_output_tokens;  /* when a client asks for no limit; <= max_output_tokens */
	int line;
};

struct model_table {
	struct model_info *models;   /* in file order: the first match wins */
	size_t n;
	char *path;
};

/* Read a model file. NULL on any problem, with one "FILE:LINE: message" per problem in
 * errs; a table only when there is none. */
struct model_table *models_load(const char *path, struct errlist *errs);
void models_free(struct model_table *t);   /* NULL is fine */

/* The first entry whose glob matches the model name; NULL when none does (or t is NULL). */
const struct model_info *models_find(const struct model_table *t, const char *model);

#endif
