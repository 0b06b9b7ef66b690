/* TLS on the client listener, with OpenSSL: the certificate and key, and the connection
 * operations (connio.h) the HTTP server uses for a TLS connection.
 *
 * TLS 1.2 and later; ALPN offers http/1.1 only (a client that offers only other protocols
 * is refused with the RFC 7301 alert instead of speaking a protocol it did not ask for).
 * A reload loads a new tls_server and swaps it in; connections open at that moment keep the
 * context they were accepted with (each SSL holds a reference to its SSL_CTX), so a
 * certificate swap drops nothing.
 *
 * Layer: io. Used from the event loop thread only. */
#ifndef FG_TLS_H
#define FG_TLS_H

#include "connio.h"

struct tls_server;

/* Load cert (PEM chain) and key (PEM). NULL with *err set (caller frees) naming the file
 * and what is wrong: unreadable, not PEM, a key with a pass phrase, a key that does not
 * belong to the certificate. */
struct tls_server *tls_server_new(const char *cert, const char *key, char **err);
void tls_server_free(struct tls_server *t);

/* One line about the certificate serving now: "CN=api.example.com, valid until 2027-12-07"
 * (", EXPIRED" when it is). Owned by t, valid until the next reload. */
const char *tls_server_describe(const struct tls_server *t);

/* A connection's TLS state on an accepted socket, or NULL (out of memory). Freed with
 * tls_conn_io.free. */
void *tls_conn_new(struct tls_server *t, int fd);
extern const struct conn_io tls_conn_io;

#endif
