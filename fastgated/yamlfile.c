/* See yamlfile.h. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "yamlfile.h"

int yamlfile_read(const char *path, struct errlist *errs,
                  void (*walk)(struct yaml_ctx *c, const yaml_node_t *root, void *arg),
                  void *arg)
{
	struct yaml_ctx c = { .path = path, .errs = errs };
	yaml_parser_t parser;
	yaml_document_t doc;
	FILE *f = fopen(path, "rb");

	if (!f) {
		errlist_add(errs, "%s: %s", path, strerror(errno));
		return -1;
	}
	yaml_parser_initialize(&parser);
	yaml_parser_set_input_file(&parser, f);
	if (!yaml_parser_load(&parser, &doc)) {
		errlist_add(errs, "%s:%zu: YAML error: %s", path, parser.problem_mark.line + 1,
		            parser.problem ? parser.problem : "cannot parse");
		c.n_errs++;
	} else {
		c.doc = &doc;
		walk(&c, yaml_document_get_root_node(&doc), arg);
		yaml_document_delete(&doc);
	}
	yaml_parser_delete(&parser);
	fclose(f);
	return c.n_errs ? -1 : 0;
}

void yamlfile_err(struct yaml_ctx *c, const yaml_node_t *n, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* a quoted YAML value may hold a newline: one problem, one line */
	for (char *p = msg; *p; p++)
		if ((unsigned char)*p < 0x20)
			*p = ' ';
	errlist_add(c->errs, "%s:%zu: %s", c->path, n ? n->start_mark.line + 1 : 1, msg);
	c->n_errs++;
}

const char *yamlfile_scalar(const yaml_node_t *n)
{
	return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}
