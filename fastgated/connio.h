/* How the HTTP server moves a connection's bytes: on the plain socket, or through TLS.
 * The server does all of its I/O through these, so one strict parser and one connection
 * life serve both.
 *
 * Layer: io. */
#ifndef FG_CONNIO_H
#define FG_CONNIO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <event2/buffer.h>

/* What an operation that could not go on now waits for. TLS may need to write in order to
 * read (a handshake message) or read in order to write (a key update), so the server waits
 * for what the operation says, not for what it was doing. */
enum io_want { IO_WANT_READ, IO_WANT_WRITE };

struct conn_io {
	/* Bytes read into buf (> 0); 0 at the peer's orderly end; -1 with errno: EAGAIN when
	 * it must wait for *want, anything else when the connection failed. */
	ssize_t (*read)(void *h, int fd, void *buf, size_t n, enum io_want *want);
	/* Write from the front of out and drain what went: bytes written (> 0), or -1 as for
	 * read. */
	int (*write)(void *h, int fd, struct evbuffer *out, enum io_want *want);
	/* Bytes taken off the socket and not yet returned by read: the socket will not say
	 * they are there. */
	bool (*pending)(void *h);
	/* The last answer is out: tell the peer no more will come (then the server lingers,
	 * reading and dropping, on the raw socket). */
	void (*close_write)(void *h, int fd);
	void (*free)(void *h);
};

#endif
