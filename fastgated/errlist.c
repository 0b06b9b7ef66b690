#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "errlist.h"

void errlist_add(struct errlist *e, const char *fmt, ...)
{
	va_list ap;
	char *line = NULL;

	va_start(ap, fmt);
	if (vasprintf(&line, fmt, ap) < 0)
		abort();
	va_end(ap);
	if (e->n == e->cap) {
		e->cap = e->cap ? e->cap * 2 : 8;
		e->lines = realloc(e->lines, e->cap * sizeof(*e->lines));
		if (!e->lines)
			abort();
	}
	e->lines[e->n++] = line;
}

void errlist_clear(struct errlist *e)
{
	for (size_t i = 0; i < e->n; i++)
		free(e->lines[i]);
	free(e->lines);
	e->lines = NULL;
	e->n = e->cap = 0;
}
