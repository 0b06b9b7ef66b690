/* The audit database's block format (schema version 10): the rows of one writer
 * transaction stored as one row of audit_block, whose `rows` column is a JSON array of
 * row arrays. A row array holds the audit columns in the table's order (enum
 * audit_field: request_id first, the bodies last), each a JSON string, number or null,
 * so that SQLite's own json_each/json_extract read it back (the `audit` view does) and no
 * program needs ours to read the file.
 *
 * Why: one SQLite row per request cost the writer 16,000 instructions (binding 34 values,
 * building the record, two B-tree inserts); in blocks a request costs it about 5,700, the
 * encoding below most of that (tests/bench/callgrind.sh), so the writer takes a core from
 * the event loops less often (issue #21).
 *
 * Values as the row table held them, except times: started_at is kept to the
 * microsecond (six decimals; a time that is not finite, or too far out for an int64 of
 * microseconds, is 0, as the row table's column is NOT NULL), latency_ms and ttfb_ms to
 * the microsecond too (three decimals), which is finer than anything the daemon measures
 * or prints. Unknown values
 * (a token count of -1, no key, no cost) are null, as the row table had NULL. Strings
 * are escaped as JSON needs (quote, backslash, control characters); other bytes, even
 * ones that are not UTF-8, are kept as they came, as a TEXT column keeps them.
 *
 * Rows of one block started within ABLOCK_SPAN_S of each other (the writer cuts a batch
 * into blocks that way), so a reader after a time range needs only the blocks whose
 * first_started is within ABLOCK_SPAN_S before it: an index on first_started finds them. */
#ifndef FG_AUDITBLOCK_H
#define FG_AUDITBLOCK_H

#include <stddef.h>

#include "audit.h"

#define ABLOCK_SPAN_S 1.0

struct ablock {
	char *s;                  /* "[row,row,...": the closing bracket comes with ablock_text */
	size_t len, cap;
	size_t n;                 /* rows */
	double first, last;       /* least and greatest started_at of the rows, as stored */
};

/* Empty the block (keeping its buffer) for the next rows. */
void ablock_reset(struct ablock *b);
/* Append one record as a row array. Never fails (out of memory aborts). */
void ablock_add(struct ablock *b, const struct audit_record *r);
/* The block's JSON text, NUL-terminated, with its length in *len; valid until the next
 * call on b. An empty block is "[]". */
const char *ablock_text(struct ablock *b, size_t *len);
void ablock_free(struct ablock *b);

/* started_at as a block stores it: rounded to the microsecond (0 for no time). */
double ablock_time(double t);

#endif
