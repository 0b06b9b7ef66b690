/* A list of user-facing error lines ("FILE:LINE: message"), collected while loading
 * configuration so that every problem is reported at once, not only the first. */
#ifndef FG_ERRLIST_H
#define FG_ERRLIST_H

#include <stddef.h>

struct errlist {
	char **lines;
	size_t n, cap;
};

/* Append one formatted line (no trailing newline needed). Out of memory aborts. */
void errlist_add(struct errlist *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Free the lines; the struct itself is the caller's. */
void errlist_clear(struct errlist *e);

#endif
