/* Aligned text tables: collect every row first, then size each column to its widest cell. */
#include <stdlib.h>
#include <string.h>

#include "table.h"

struct cli_table {
	size_t ncols;
	size_t nrows, cap;
	char **cells;        /* nrows * ncols, row-major; row 0 is the header if any */
	int has_header;
};

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (!p)
		abort();
	return p;
}

/* Copy a cell, replacing control characters. */
static char *clean_copy(const char *s)
{
	size_t n = strlen(s);
	char *d = xrealloc(NULL, n + 1);

	for (size_t i = 0; i <= n; i++)
		d[i] = (i < n && ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)) ? '?' : s[i];
	return d;
}

size_t cli_text_width(const char *s)
{
	size_t w = 0;

	for (; *s; s++)
		if (((unsigned char)*s & 0xC0) != 0x80)
			w++;
	return w;
}

struct cli_table *cli_table_new(size_t ncols, const char *const *headers)
{
	struct cli_table *t = xrealloc(NULL, sizeof(*t));

	memset(t, 0, sizeof(*t));
	t->ncols = ncols;
	if (headers) {
		cli_table_add(t, headers);
		t->has_header = 1;
	}
	return t;
}

void cli_table_add(struct cli_table *t, const char *const *cells)
{
	if (t->nrows == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 16;
		t->cells = xrealloc(t->cells, t->cap * t->ncols * sizeof(*t->cells));
	}
	for (size_t i = 0; i < t->ncols; i++)
		t->cells[t->nrows * t->ncols + i] = clean_copy(cells[i] ? cells[i] : "-");
	t->nrows++;
}

size_t cli_table_rows(const struct cli_table *t)
{
	return t->nrows - (size_t)t->has_header;
}

void cli_table_print(struct cli_table *t, FILE *out)
{
	size_t *width = xrealloc(NULL, t->ncols * sizeof(*width));

	memset(width, 0, t->ncols * sizeof(*width));
	for (size_t r = 0; r < t->nrows; r++)
		for (size_t i = 0; i < t->ncols; i++) {
			size_t w = cli_text_width(t->cells[r * t->ncols + i]);

			if (w > width[i])
				width[i] = w;
		}
	for (size_t r = 0; r < t->nrows; r++) {
		for (size_t i = 0; i < t->ncols; i++) {
			const char *cell = t->cells[r * t->ncols + i];

			fputs(cell, out);
			if (i + 1 < t->ncols)
				fprintf(out, "%*s", (int)(width[i] - cli_text_width(cell) + 2), "");
		}
		fputc('\n', out);
	}
	free(width);
	cli_table_free(t);
}

void cli_table_free(struct cli_table *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->nrows * t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
	free(t);
}
