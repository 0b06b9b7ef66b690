/* See yamlfile.h. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "yamlfile.h"

int yamlfile_load(const char *path, yaml_document_t *doc, struct errlist *errs)
{
	yaml_parser_t parser;
	FILE *f = fopen(path, "rb");
	int rc = 0;

	if (!f) {
		errlist_add(errs, "%s: %s", path, strerror(errno));
		return -1;
	}
	yaml_parser_initialize(&parser);
	yaml_parser_set_input_file(&parser, f);
	if (!yaml_parser_load(&parser, doc)) {
		errlist_add(errs, "%s:%zu: YAML error: %s", path, parser.problem_mark.line + 1,
		            parser.problem ? parser.problem : "cannot parse");
		rc = -1;
	}
	yaml_parser_delete(&parser);
	fclose(f);
	return rc;
}
