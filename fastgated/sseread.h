/* Reading an upstream's server-sent events (the WHATWG EventSource format) in pieces, for
 * the provider translators: bytes as they arrive in, the data of each complete event out.
 * A line ends at LF, CR or CRLF (a CR at the end of one piece and an LF at the start of the
 * next are one line end); a blank line ends an event; of the fields only `data` is kept,
 * its lines joined with "\n" (the type a translator needs is inside the data). Comments,
 * event, id and retry lines are read and dropped.
 *
 * Ownership: the caller owns the struct (zeroed is ready) and frees its buffers with
 * sse_reader_free. Pure: no I/O, no project headers.
 *
 * Layer: codec. */
#ifndef FG_SSEREAD_H
#define FG_SSEREAD_H

#include <stdbool.h>
#include <stddef.h>

struct sse_reader {
	char *line; size_t line_len, line_cap;   /* the line being read */
	bool after_cr;            /* the last byte ended a line with CR: a LF next is its end */
	char *data; size_t data_len, data_cap;   /* the event's data lines, each + "\n" */
	size_t event_bytes;       /* bytes of the event so far, for the caller's limit */
	bool has_data;
};

enum sse_read_result {
	SSE_READ_MORE,            /* every byte taken, no event complete yet */
	SSE_READ_EVENT,           /* a blank line ended an event (with or without data) */
	SSE_READ_TOO_BIG,         /* the event passed max_event bytes */
	SSE_READ_NOMEM,
};

/* Take bytes of data[*at..len) up to the end of the next event; *at moves past what was
 * taken. Call again while bytes are left. */
enum sse_read_result sse_reader_feed(struct sse_reader *r, const char *data, size_t len,
                                     size_t *at, size_t max_event);
/* The upstream is done: a last line without its line end counts as ended (its event is
 * then complete only if the caller says so: take its data). 0, or -1 out of memory. */
int sse_reader_flush(struct sse_reader *r);
/* The complete event's data (its lines joined, without the last "\n") and its length, or
 * NULL when it had no data line; the reader forgets it. */
const char *sse_reader_take(struct sse_reader *r, size_t *len);
void sse_reader_free(struct sse_reader *r);

#endif
