/* The HTTP/1.1 response parser; see h1resp.h. */
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "bytescan.h"
#include "h1resp.h"

void h1_init(struct h1_parser *p, bool head_request)
{
	memset(p, 0, sizeof(*p));
	p->state = H1_HEAD;
	p->head_request = head_request;
}

/* Case-insensitive: does the comma-separated list `v` (length n) hold token `tok`? Sets
 * *last when it is the final element. */
static bool list_has(const char *v, size_t n, const char *tok, bool *last)
{
	size_t tl = strlen(tok);
	bool found = false;

	if (last)
		*last = false;
	for (size_t i = 0; i < n;) {
		while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		size_t s = i;
		while (i < n && v[i] != ',')
			i++;
		size_t e = i;
		while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
			e--;
		if (e == s)
			continue;
		bool match = e - s == tl && strncasecmp(v + s, tok, tl) == 0;
		found |= match;
		if (last)
			*last = match; /* the element seen last decides */
	}
	return found;
}

static bool name_is(const char *line, size_t nl, const char *name)
{
	return strlen(name) == nl && strncasecmp(line, name, nl) == 0;
}

/* One header line (without its line end). -1: malformed in a way that breaks framing. */
static int header_line(struct h1_parser *p, const char *line, size_t len)
{
	const char *v;
	size_t nl, vl;
	/* one pass (bytescan.h) for the common line; the byte questions below only for a
	 * line with a control byte or one above ASCII in it */
	bool plain = line_scan(line, len, &nl);

	if (line[0] == ' ' || line[0] == '\t')
		return -1; /* obsolete line folding */
	/* a NUL or bare CR would cut or split the header on its way on (RFC 9110 5.5) */
	if (!plain && (memchr(line, '\0', len) || memchr(line, '\r', len)))
		return -1;
	if (nl == len || nl == 0)   /* no colon, or nothing before it */
		return -1;
	/* whitespace before the colon (a tab only in a line that is not plain) */
	if (memchr(line, ' ', nl) || (!plain && memchr(line, '\t', nl)))
		return -1;
	v = line + nl + 1;
	vl = len - nl - 1;
	while (vl && (*v == ' ' || *v == '\t')) { v++; vl--; }
	while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--;

	if (name_is(line, nl, "content-length")) {
		uint64_t n = 0;
		if (vl == 0)
			return -1;
		for (size_t i = 0; i < vl; i++) {
			if (v[i] < '0' || v[i] > '9' || n > (UINT64_MAX - 9) / 10)
				return -1;
			n = n * 10 + (uint64_t)(v[i] - '0');
		}
		if (p->has_len && p->remaining != n)
			return -1; /* two different lengths: refuse to guess */
		p->has_len = true;
		p->remaining = n;
	} else if (name_is(line, nl, "transfer-encoding")) {
		/* chunked is the one coding we can take off: gzip, or anything else, would reach
		 * the client still coded with no header saying so; a second Transfer-Encoding
		 * line is a coding on top of the first */
		if (p->trailer_bytes || vl != 7 || strncasecmp(v, "chunked", 7) != 0)
			return -1;
		p->chunked = true;
		p->trailer_bytes = 1; /* marks "Transfer-Encoding seen": Content-Length is ignored */
	} else if (name_is(line, nl, "connection")) {
		if (list_has(v, vl, "close", NULL))
			p->conn_close = true;
		if (list_has(v, vl, "keep-alive", NULL))
			p->conn_keep = true;
	}
	return 0;
}

static int status_line(struct h1_parser *p, const char *line, size_t len)
{
	/* HTTP/1.x SSS[ reason] */
	if (len < 12 || strncmp(line, "HTTP/1.", 7) != 0 || line[7] < '0' || line[7] > '9' ||
	    line[8] != ' ')
		return -1;
	for (int i = 9; i < 12; i++)
		if (line[i] < '0' || line[i] > '9')
			return -1;
	if (len > 12 && line[12] != ' ')
		return -1;
	p->minor = line[7] - '0';
	p->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
	if (p->status < 100 || p->status > 599)
		return -1;
	p->has_len = p->chunked = p->conn_close = p->conn_keep = false;
	p->remaining = 0;
	p->trailer_bytes = 0;
	return 0;
}

/* The empty line ended a head: decide how the body is framed. */
static enum h1_event end_of_head(struct h1_parser *p)
{
	bool te_seen = p->trailer_bytes != 0;

	p->trailer_bytes = 0;
	if (p->status < 200) {
		if (p->status == 101)
			return H1_BAD; /* no protocol switches through the gateway */
		p->status = 0;     /* an interim answer: the real one follows */
		p->head_bytes = 0;
		return H1_MORE;
	}
	p->keepalive = p->minor >= 1 ? !p->conn_close : p->conn_keep && !p->conn_close;
	/* Transfer-Encoding from an HTTP/1.0 server, or with a Content-Length too: framing
	 * another hop may read differently; use the answer, never the connection again
	 * (RFC 9112 6.1, 6.3) */
	if (te_seen && (p->minor == 0 || p->has_len))
		p->keepalive = false;
	if (p->head_request || p->status == 204 || p->status == 304) {
		p->state = H1_DONE;
	} else if (p->chunked) {
		p->state = H1_CHUNK_SIZE;
	} else if (p->has_len) {
		p->state = p->remaining ? H1_BODY_LEN : H1_DONE;
	} else {
		p->state = H1_BODY_EOF;
		p->keepalive = false;
	}
	return p->state == H1_DONE ? H1_COMPLETE : H1_MORE;
}

/* A chunk-size line: hex digits, then optional extensions after ';'. */
static int chunk_size(const char *line, size_t len, uint64_t *out)
{
	uint64_t n = 0;
	size_t i = 0;

	for (; i < len; i++) {
		int d;
		char c = line[i];
		if (c >= '0' && c <= '9') d = c - '0';
		else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
		else break;
		if (n > (UINT64_MAX >> 4))
			return -1;
		n = (n << 4) | (uint64_t)d;
	}
	if (i == 0)
		return -1;
	while (i < len && (line[i] == ' ' || line[i] == '\t'))
		i++;
	if (i < len && line[i] != ';')
		return -1;
	*out = n;
	return 0;
}

size_t h1_feed(struct h1_parser *p, const char *data, size_t len,
               const struct h1_callbacks *cb, void *arg, enum h1_event *ev)
{
	size_t off = 0;

	if (len)
		p->seen_bytes = true;
	for (;;) {
		size_t avail = len - off;
		const char *at = data + off, *nl;
		size_t ll, n;
		int r;

		switch (p->state) {
		case H1_HEAD:
		case H1_CHUNK_SIZE:
		case H1_TRAILER:
			nl = memchr(at, '\n', avail);
			if (!nl) {
				size_t used = p->state == H1_HEAD ? p->head_bytes :
				              p->state == H1_TRAILER ? p->trailer_bytes : 0;
				size_t cap = p->state == H1_CHUNK_SIZE ? 1024 : H1_HEAD_MAX;
				*ev = used + avail > cap ? H1_BAD : H1_MORE;
				return off;
			}
			ll = (size_t)(nl - at) + 1;              /* with its '\n' */
			n = ll - 1 - (ll >= 2 && at[ll - 2] == '\r');  /* without the line end */
			if (p->state == H1_CHUNK_SIZE) {
				/* the same bound as for a line still arriving, so where the network
				 * cut the answer cannot change the outcome */
				if (ll - 1 > 1024 || chunk_size(at, n, &p->remaining) < 0) {
					*ev = H1_BAD;
					return off;
				}
				off += ll;
				p->state = p->remaining ? H1_CHUNK_DATA : H1_TRAILER;
				continue;
			}
			if (p->state == H1_TRAILER) {
				/* trailers are dropped: the client's answer was already framed */
				off += ll;
				p->trailer_bytes += ll;
				if (p->trailer_bytes > H1_HEAD_MAX) {
					*ev = H1_BAD;
					return off;
				}
				if (n == 0) {
					p->state = H1_DONE;
					*ev = H1_COMPLETE;
					return off;
				}
				continue;
			}
			p->head_bytes += ll;
			if (p->head_bytes > H1_HEAD_MAX) {
				*ev = H1_BAD;
				return off;
			}
			if (p->status == 0)
				r = status_line(p, at, n);
			else if (n == 0)
				r = 0;
			else
				r = header_line(p, at, n);
			if (r < 0) {
				*ev = H1_BAD;
				return off;
			}
			if (cb->line(arg, at, ll) < 0) {
				*ev = H1_ABORTED;
				return off;
			}
			off += ll;
			if (n == 0) {
				enum h1_event e = end_of_head(p);
				if (e != H1_MORE) {
					*ev = e;
					return off;
				}
			}
			continue;
		case H1_BODY_LEN:
		case H1_CHUNK_DATA:
		case H1_BODY_EOF:
			if (avail == 0) {
				*ev = H1_MORE;
				return off;
			}
			n = avail;
			if (p->state != H1_BODY_EOF && n > p->remaining)
				n = (size_t)p->remaining;
			r = cb->body(arg, at, n);
			if (r != 0) {
				*ev = r > 0 ? H1_PAUSED : H1_ABORTED;
				return off;
			}
			off += n;
			if (p->state == H1_BODY_EOF)
				continue;
			p->remaining -= n;
			if (p->remaining == 0) {
				if (p->state == H1_CHUNK_DATA) {
					p->state = H1_CHUNK_CRLF;
					continue;
				}
				p->state = H1_DONE;
				*ev = H1_COMPLETE;
				return off;
			}
			continue;
		case H1_CHUNK_CRLF:
			if (avail == 0 || (at[0] == '\r' && avail < 2)) {
				*ev = H1_MORE;
				return off;
			}
			if (at[0] == '\n') {
				off += 1;
			} else if (at[0] == '\r' && at[1] == '\n') {
				off += 2;
			} else {
				*ev = H1_BAD;
				return off;
			}
			p->state = H1_CHUNK_SIZE;
			continue;
		case H1_DONE:
			*ev = H1_COMPLETE;
			return off;
		}
	}
}

enum h1_event h1_eof(const struct h1_parser *p)
{
	return p->state == H1_BODY_EOF ? H1_COMPLETE : H1_BAD;
}
