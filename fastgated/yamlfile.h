/* A whole YAML file read into a libyaml document, for the data files (models.yaml,
 * pricing.yaml) whose loaders then walk the document and name each mistake by line.
 *
 * Layer: base. */
#ifndef FG_YAMLFILE_H
#define FG_YAMLFILE_H

#include <yaml.h>

#include "errlist.h"

/* 0 with *doc loaded (the caller deletes it with yaml_document_delete), or -1 with one line
 * in errs: "FILE: reason" when the file cannot be read, "FILE:LINE: YAML error: ..." when
 * it is not YAML. */
int yamlfile_load(const char *path, yaml_document_t *doc, struct errlist *errs);

#endif
