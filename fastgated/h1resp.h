/* The upstream HTTP/1.1 response parser: status line, headers, Content-Length, chunked,
 * read-until-close, 1xx interim answers, HEAD/204/304. Pure (no sockets, no allocation):
 * fed whatever bytes arrived, it hands each head line and each run of body bytes to its
 * callbacks. Unit-tested in tests/unit/test_h1resp.c, fuzzed as h1resp.
 *
 * Layer: codec. */
#ifndef FG_H1RESP_H
#define FG_H1RESP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum h1_state { H1_HEAD, H1_BODY_LEN, H1_BODY_EOF, H1_CHUNK_SIZE, H1_CHUNK_DATA,
                H1_CHUNK_CRLF, H1_TRAILER, H1_DONE };

/* what h1_feed stopped on */
enum h1_event { H1_MORE, H1_COMPLETE, H1_PAUSED, H1_ABORTED, H1_BAD };

#define H1_HEAD_MAX (64 * 1024)  /* one response head, status line to empty line */

struct h1_callbacks {
	/* a status or header line, or the empty line that ends a head: 0 goes on, -1 aborts */
	int (*line)(void *arg, const char *line, size_t len);
	/* body bytes: 0 consumed, 1 pause (not consumed: offered again after a resume), -1 abort */
	int (*body)(void *arg, const char *data, size_t len);
};

struct h1_parser {
	enum h1_state state;
	bool head_request;      /* the request was HEAD: no body follows any head */
	int status;             /* of the head being read, then of the final answer */
	int minor;              /* HTTP/1.minor */
	bool keepalive;         /* the connection can carry another request afterwards */
	bool seen_bytes;        /* any byte of an answer arrived */
	bool has_len, chunked, conn_close, conn_keep;
	uint64_t remaining;     /* body bytes, or bytes left in the current chunk */
	size_t head_bytes;      /* size of the head so far, against H1_HEAD_MAX */
	size_t trailer_bytes;
};

void h1_init(struct h1_parser *p, bool head_request);
/* Parse what arrived. Returns the bytes consumed; *ev says why it stopped. Bytes after a
 * complete answer are left unconsumed (the caller treats them as a protocol error). */
size_t h1_feed(struct h1_parser *p, const char *data, size_t len,
               const struct h1_callbacks *cb, void *arg, enum h1_event *ev);
/* The peer closed. H1_COMPLETE for a read-until-close body, otherwise H1_BAD. */
enum h1_event h1_eof(const struct h1_parser *p);

#endif
