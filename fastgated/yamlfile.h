/* A whole YAML file read into a libyaml document, for the data files (models.yaml,
 * pricing.yaml) whose loaders then walk the document and name each mistake by line.
 *
 * Layer: base. */
#ifndef FG_YAMLFILE_H
#define FG_YAMLFILE_H

#include <yaml.h>

#include "errlist.h"

/* Read the file at path and hand its root node to walk (which reports its mistakes with
 * yamlfile_err). 0 when neither the reading nor the walk found a mistake; -1 otherwise,
 * with one line per mistake in errs ("FILE: reason" when the file cannot be read,
 * "FILE:LINE: YAML error: ..." when it is not YAML). */
struct yaml_ctx;
int yamlfile_read(const char *path, struct errlist *errs,
                  void (*walk)(struct yaml_ctx *c, const yaml_node_t *root, void *arg),
                  void *arg);

/* Walking a loaded file: its path and document, where the errors go and how many. */
struct yaml_ctx {
	const char *path;
	yaml_document_t *doc;
	struct errlist *errs;
	size_t n_errs;
};

/* One "FILE:LINE: message" for node n (line 1 when n is NULL), on one line whatever the
 * message holds; counts it in c->n_errs. */
void yamlfile_err(struct yaml_ctx *c, const yaml_node_t *n, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* A scalar node's text, or NULL for any other node (or NULL). */
const char *yamlfile_scalar(const yaml_node_t *n);

#endif
