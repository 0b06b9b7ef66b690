/* Aligned text tables for fastgate-cli's human output, in the style of redis-cli and
 * unbound-control: column widths come from the data, the last column is not padded. */
#ifndef FG_CLI_TABLE_H
#define FG_CLI_TABLE_H

#include <stddef.h>
#include <stdio.h>

struct cli_table;

/* `headers` (ncols strings, copied) or NULL for a table without a header row.
 * Out of memory aborts: a CLI has nothing better to do. */
struct cli_table *cli_table_new(size_t ncols, const char *const *headers);
/* Add a row of ncols cells (copied; NULL prints as "-"). Control characters are shown
 * as '?' so data from the daemon cannot drive the terminal. */
void cli_table_add(struct cli_table *t, const char *const *cells);
size_t cli_table_rows(const struct cli_table *t);
/* Print and free. Columns are separated by two spaces. */
void cli_table_print(struct cli_table *t, FILE *out);
void cli_table_free(struct cli_table *t);

/* Display width of a UTF-8 string, counted in code points. */
size_t cli_text_width(const char *s);

#endif
