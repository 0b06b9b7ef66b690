/* TLS on the client listener; see tls.h. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "log.h"
#include "tls.h"

/* Plaintext handed to one SSL_write: a full TLS record. Smaller pieces of the output
 * buffer are joined first, so a stream of small events does not become a stream of
 * small records. */
#define TLS_RECORD 16384

struct tls_server {
	SSL_CTX *ctx;
	char about[256];
};

/* OpenSSL's reason for the last failure, for a message; clears its error queue. */
static const char *ssl_reason(char *buf, size_t cap)
{
	unsigned long e = ERR_peek_last_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;

	snprintf(buf, cap, "%s", r ? r : "unknown OpenSSL error");
	ERR_clear_error();
	return buf;
}

/* A pass phrase would have OpenSSL prompt on the terminal of a daemon: refuse instead. */
static int no_pass_phrase(char *buf, int size, int rwflag, void *arg)
{
	(void)buf; (void)size; (void)rwflag; (void)arg;
	return 0;
}

/* RFC 7301: choose http/1.1 when offered; otherwise end the handshake with the
 * no_application_protocol alert. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
	static const char h11[] = "http/1.1";
	unsigned int i = 0;
	(void)ssl; (void)arg;

	while (i < inlen) {
		unsigned int n = in[i];

		if (n == 0 || n > inlen - i - 1)
			break;    /* malformed list */
		if (n == sizeof(h11) - 1 && memcmp(in + i + 1, h11, n) == 0) {
			*out = in + i + 1;
			*outlen = (unsigned char)n;
			return SSL_TLSEXT_ERR_OK;
		}
		i += n + 1;
	}
	return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static void describe(struct tls_server *t)
{
	X509 *x = SSL_CTX_get0_certificate(t->ctx);
	char cn[128] = "", until[32] = "?";
	const ASN1_TIME *na;
	struct tm tm;

	if (!x) {
		snprintf(t->about, sizeof(t->about), "no certificate");
		return;
	}
	if (X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn,
	                              (int)sizeof(cn)) < 0)
		snprintf(cn, sizeof(cn), "(no CN)");
	na = X509_get0_notAfter(x);
	if (na && ASN1_TIME_to_tm(na, &tm) == 1)
		strftime(until, sizeof(until), "%Y-%m-%d %H:%M:%S UTC", &tm);
	snprintf(t->about, sizeof(t->about), "CN=%s, valid until %s%s", cn, until,
	         na && X509_cmp_current_time(na) < 0 ? ", EXPIRED" : "");
}

/* A context for cert and key, or NULL with *err set. */
static SSL_CTX *load(const char *cert, const char *key, char **err)
{
	SSL_CTX *ctx = NULL;
	char why[256];
	struct stat st;
	int rc = -1;

	*err = NULL;
	if (access(cert, R_OK) < 0) {
		if (asprintf(err, "tls_cert %s: %s", cert, strerror(errno)) < 0)
			*err = NULL;
		goto out;
	}
	if (access(key, R_OK) < 0) {
		if (asprintf(err, "tls_key %s: %s", key, strerror(errno)) < 0)
			*err = NULL;
		goto out;
	}
	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		if (asprintf(err, "cannot make a TLS context: %s", ssl_reason(why, sizeof(why))) < 0)
			*err = NULL;
		goto out;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/* A client that closes without close_notify has ended, not failed; renegotiation is
	 * a client-driven cost with no use here. */
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF |
	                         SSL_OP_CIPHER_SERVER_PREFERENCE);
	/* The output buffer may be moved or grown between a blocked write and its retry; an
	 * idle keep-alive connection should not hold OpenSSL's buffers. */
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	                      SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"fastgate", 8);
	SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
	SSL_CTX_set_default_passwd_cb(ctx, no_pass_phrase);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		if (asprintf(err, "tls_cert %s: not a PEM certificate chain (%s)", cert,
		             ssl_reason(why, sizeof(why))) < 0)
			*err = NULL;
		goto out;
	}
	/* OpenSSL checks the key against the certificate as it loads it */
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		bool mismatch = ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH ||
		                SSL_CTX_get0_privatekey(ctx);
		int n = mismatch
		      ? asprintf(err, "tls_key %s does not belong to the certificate in tls_cert %s",
		                 key, cert)
		      : asprintf(err, "tls_key %s: not a PEM private key without a pass phrase (%s)",
		                 key, ssl_reason(why, sizeof(why)));
		ERR_clear_error();
		if (n < 0)
			*err = NULL;
		goto out;
	}
	if (stat(key, &st) == 0 && (st.st_mode & S_IROTH))
		log_warn("tls_key %s is readable by every user; chmod o-r it", key);
	rc = 0;
out:
	if (rc < 0) {
		if (!*err)
			*err = strdup("out of memory");
		SSL_CTX_free(ctx);
		ctx = NULL;
	}
	return ctx;
}

struct tls_server *tls_server_new(const char *cert, const char *key, char **err)
{
	struct tls_server *t = calloc(1, sizeof(*t));

	*err = NULL;
	if (!t) {
		*err = strdup("out of memory");
		return NULL;
	}
	t->ctx = load(cert, key, err);
	if (!t->ctx) {
		free(t);
		return NULL;
	}
	describe(t);
	return t;
}

void tls_server_free(struct tls_server *t)
{
	if (!t)
		return;
	SSL_CTX_free(t->ctx);
	free(t);
}

const char *tls_server_describe(const struct tls_server *t)
{
	return t->about;
}

void *tls_conn_new(struct tls_server *t, int fd)
{
	SSL *ssl = SSL_new(t->ctx);

	if (!ssl)
		return NULL;
	if (SSL_set_fd(ssl, fd) != 1) {
		SSL_free(ssl);
		return NULL;
	}
	SSL_set_accept_state(ssl);
	return ssl;
}

/* After SSL_read or SSL_write returned r <= 0: -1 with errno and *want set, or 0 when
 * the peer has ended the connection. */
static int io_result(SSL *ssl, int r, enum io_want *want)
{
	int e = SSL_get_error(ssl, r);
	char why[128];

	switch (e) {
	case SSL_ERROR_WANT_READ:
		*want = IO_WANT_READ;
		errno = EAGAIN;
		return -1;
	case SSL_ERROR_WANT_WRITE:
		*want = IO_WANT_WRITE;
		errno = EAGAIN;
		return -1;
	case SSL_ERROR_ZERO_RETURN:
		return 0;
	case SSL_ERROR_SYSCALL:
		ERR_clear_error();
		if (errno == 0 || errno == EAGAIN)
			errno = ECONNRESET;
		return -1;
	default:
		/* a failed handshake (a plain-HTTP client, an old TLS version, no shared cipher)
		 * or a broken record: say why at debug level, where a client's mistake belongs */
		log_debug("TLS connection fd %d: %s", SSL_get_fd(ssl), ssl_reason(why, sizeof(why)));
		errno = EPROTO;
		return -1;
	}
}

static ssize_t tls_read(void *h, int fd, void *buf, size_t n, enum io_want *want)
{
	SSL *ssl = h;
	int r;
	(void)fd;

	/* other users of OpenSSL on this thread (libcurl) may have left errors queued, and
	 * SSL_get_error reads the queue */
	ERR_clear_error();
	r = SSL_read(ssl, buf, n > INT32_MAX ? INT32_MAX : (int)n);
	if (r > 0)
		return r;
	return io_result(ssl, r, want);
}

static int tls_write(void *h, int fd, struct evbuffer *out, enum io_want *want)
{
	SSL *ssl = h;
	size_t len = evbuffer_get_length(out);
	size_t n = len < TLS_RECORD ? len : TLS_RECORD;
	unsigned char *p;
	int r;
	(void)fd;

	if (n == 0)
		return 0;
	p = evbuffer_pullup(out, (ssize_t)n);
	if (!p) {
		errno = ENOMEM;
		return -1;
	}
	ERR_clear_error();
	r = SSL_write(ssl, p, (int)n);
	if (r > 0) {
		evbuffer_drain(out, (size_t)r);
		return r;
	}
	r = io_result(ssl, r, want);
	if (r == 0) {         /* close_notify while writing: the peer is gone */
		errno = EPIPE;
		r = -1;
	}
	return r;
}

static bool tls_pending(void *h)
{
	return SSL_pending(h) > 0;
}

static void tls_close_write(void *h, int fd)
{
	ERR_clear_error();
	/* close_notify, then the TCP half-close the server does for plain connections too;
	 * whether the peer answers does not matter any more */
	if (SSL_shutdown(h) < 0)
		ERR_clear_error();
	shutdown(fd, SHUT_WR);
}

static void tls_free(void *h)
{
	SSL_free(h);
}

const struct conn_io tls_conn_io = {
	.read = tls_read,
	.write = tls_write,
	.pending = tls_pending,
	.close_write = tls_close_write,
	.free = tls_free,
};
