/* Strict HTTP/1.x request framing checks, fed line by line and byte count by byte count.
 *
 * The rules are nginx's and RFC 9112's: no folded headers, no space before a colon, one
 * Content-Length, no Transfer-Encoding other than chunked, a Host for HTTP/1.1. http.c runs
 * every byte a client sends through here before it parses anything, so a request the
 * gateway acts on is one nginx would also accept, and request boundaries are known even
 * for pipelined requests.
 *
 * Pure state machine: no I/O, no allocation — the fuzz target calls it directly. */
#ifndef FG_REQCHECK_H
#define FG_REQCHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum reqcheck_state {
	RC_REQUEST_LINE = 0, /* waiting for a request line (blank lines before it are skipped) */
	RC_HEADERS,
	RC_BODY,             /* Content-Length body: reqcheck_data_wanted() bytes */
	RC_CHUNK_SIZE,       /* chunked body: a chunk-size line */
	RC_CHUNK_DATA,       /* chunk payload bytes */
	RC_CHUNK_END,        /* the CRLF after a chunk's payload */
	RC_TRAILERS,         /* trailer lines after the last chunk */
	RC_REJECTED,
};

enum reqcheck_result {
	RC_MORE = 0,         /* keep feeding */
	RC_HEAD_DONE,        /* the head is complete and valid; a body follows */
	RC_REQUEST_DONE,     /* a whole request (head and body) is complete */
	RC_REJECT,           /* see status / reason */
};

struct reqcheck {
	enum reqcheck_state state;
	size_t max_head;       /* bytes for request line + headers */
	uint64_t max_body;
	size_t head_len;
	int n_headers;
	int blank_lines;
	bool http11;
	int n_content_length, n_transfer_encoding, n_host;
	bool chunked;
	uint64_t content_length;
	uint64_t data_left;    /* in RC_BODY / RC_CHUNK_DATA */
	uint64_t body_total;
	int status;            /* when rejected: 400, 413, 414, 431 */
	const char *reason;    /* when rejected: a static, client-safe message */
};

#define RC_MAX_LINE     16384   /* longest single line accepted */
#define RC_MAX_HEADERS  100

void reqcheck_init(struct reqcheck *rc, size_t max_head, uint64_t max_body);
/* True when the next input is a line (head, chunk size, chunk end, trailers). */
bool reqcheck_wants_line(const struct reqcheck *rc);
/* Feed one line: the bytes up to and including its LF (`len` counts the LF). */
enum reqcheck_result reqcheck_line(struct reqcheck *rc, const char *line, size_t len);
/* Called when a line grows past what may still fit without its end in sight. */
enum reqcheck_result reqcheck_line_too_long(struct reqcheck *rc);
/* In RC_BODY / RC_CHUNK_DATA: how many payload bytes are expected next. */
uint64_t reqcheck_data_wanted(const struct reqcheck *rc);
/* Account n (<= wanted) payload bytes. */
enum reqcheck_result reqcheck_data(struct reqcheck *rc, uint64_t n);
/* The longest line still acceptable in the current state (for the caller's scan). */
size_t reqcheck_line_limit(const struct reqcheck *rc);

/* Convenience for tests and fuzzing: feed a whole buffer; returns the result of the last
 * step that was not RC_MORE (or RC_MORE), counting completed requests in *requests. */
enum reqcheck_result reqcheck_feed(struct reqcheck *rc, const char *buf, size_t len, int *requests);

#endif
