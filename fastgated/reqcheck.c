/* Strict request framing (see reqcheck.h for why it exists). The rules follow RFC 9112 and
 * what nginx enforces: one framing per request, no obsolete line folding, header names are
 * tokens with the colon right after them, HTTP/1.1 needs exactly one Host. */
#include <string.h>
#include <strings.h>

#include "bytescan.h"
#include "reqcheck.h"

static const char *const known_methods[] = {
	"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", NULL
};

/* Byte classes by table. tchar is read for every byte of every header name; value_bad and
 * target_bad only for the lines that line_classes() finds a byte outside printable ASCII in. */
/* RFC 9110 tchar */
static const bool tchar[256] = {
	['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1,
	['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
	['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
};
/* not allowed in a header value: control bytes other than tab, and DEL */
static const bool value_bad[256] = { [0x00 ... 0x08] = 1, [0x0a ... 0x1f] = 1, [0x7f] = 1 };
/* not allowed in a request target: controls, space, DEL and everything above ASCII */
static const bool target_bad[256] = { [0x00 ... 0x20] = 1, [0x7f ... 0xff] = 1 };

static bool is_tchar(unsigned char c)
{
	return tchar[c];
}

/* unreserved / pct-encoded / sub-delims / ":" / "[" / "]": what a Host value may hold.
 * A table: every request's Host goes through it. */
static const bool host_char[256] = {
	['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
	['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
	['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
	['y'] = 1, ['z'] = 1,
	['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
	['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
	['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
	['Y'] = 1, ['Z'] = 1,
	['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
	['8'] = 1, ['9'] = 1,
	['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1, ['%'] = 1, ['!'] = 1, ['$'] = 1, ['&'] = 1,
	['\''] = 1, ['('] = 1, [')'] = 1, ['*'] = 1, ['+'] = 1, [','] = 1, [';'] = 1, ['='] = 1,
	[':'] = 1, ['['] = 1, [']'] = 1,
};

static enum reqcheck_result reject(struct reqcheck *rc, int status, const char *reason)
{
	rc->state = RC_REJECTED;
	rc->status = status;
	rc->reason = reason;
	return RC_REJECT;
}

void reqcheck_init(struct reqcheck *rc, size_t max_head, uint64_t max_body)
{
	memset(rc, 0, sizeof(*rc));
	rc->max_head = max_head;
	rc->max_body = max_body;
	rc->state = RC_REQUEST_LINE;
}

/* Ready for the next pipelined request; limits stay. */
static void next_request(struct reqcheck *rc)
{
	reqcheck_init(rc, rc->max_head, rc->max_body);
}

bool reqcheck_wants_line(const struct reqcheck *rc)
{
	return rc->state != RC_BODY && rc->state != RC_CHUNK_DATA && rc->state != RC_REJECTED;
}

size_t reqcheck_line_limit(const struct reqcheck *rc)
{
	size_t left;

	if (rc->state == RC_REQUEST_LINE || rc->state == RC_HEADERS) {
		left = rc->head_len < rc->max_head ? rc->max_head - rc->head_len : 0;
		return left < RC_MAX_LINE ? left : RC_MAX_LINE;
	}
	return 1024; /* chunk-size lines and trailers are short */
}

enum reqcheck_result reqcheck_line_too_long(struct reqcheck *rc)
{
	if (rc->state == RC_REQUEST_LINE)
		return reject(rc, 414, "request line too long");
	if (rc->state == RC_HEADERS)
		return reject(rc, 431, "request headers too large");
	return reject(rc, 400, "malformed chunked body");
}

/* What a line holds besides printable ASCII: LINE_CTL, a control byte (< 0x20, tab
 * included) or DEL; LINE_HIGH, a byte above ASCII. line_scan() (bytescan.h) finds most
 * lines printable; the byte loops below (NUL and CR search, value and target checks) run
 * only on the rare line that is not. */
enum { LINE_CTL = 1, LINE_HIGH = 2 };

static unsigned line_classes(const char *s, size_t n)
{
	unsigned cls = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c == 0x7f)
			cls |= LINE_CTL;
		else if (c >= 0x80)
			cls |= LINE_HIGH;
	}
	return cls;
}

/* Strip the line ending; a bare CR anywhere else, or a NUL, is never valid. *cls: the
 * line_classes() of what is left; *colon: the index of its first ':' (*out_len if none). */
static bool line_content(const char *line, size_t len, size_t *out_len, unsigned *cls,
                         size_t *colon)
{
	if (len == 0 || line[len - 1] != '\n')
		return false;
	len--;
	if (len > 0 && line[len - 1] == '\r')
		len--;
	*cls = line_scan(line, len, colon) ? 0 : line_classes(line, len);
	if ((*cls & LINE_CTL) && (memchr(line, '\0', len) || memchr(line, '\r', len)))
		return false;
	*out_len = len;
	return true;
}

static enum reqcheck_result request_line(struct reqcheck *rc, const char *s, size_t n,
                                         unsigned cls)
{
	const char *sp1, *sp2, *target, *version;
	size_t mlen, tlen;
	int i;

	if (n == 0) {
		/* RFC 9112 2.2: tolerate a few empty lines between requests */
		if (++rc->blank_lines > 4)
			return reject(rc, 400, "malformed request line");
		return RC_MORE;
	}
	sp1 = memchr(s, ' ', n);
	if (!sp1)
		return reject(rc, 400, "malformed request line");
	mlen = (size_t)(sp1 - s);
	target = sp1 + 1;
	sp2 = memchr(target, ' ', n - mlen - 1);
	if (!sp2)
		return reject(rc, 400, "malformed request line");
	tlen = (size_t)(sp2 - target);
	version = sp2 + 1;
	if (n - (size_t)(version - s) != 8 || memcmp(version, "HTTP/1.", 7) != 0 ||
	    (version[7] != '0' && version[7] != '1'))
		return reject(rc, 400, "unsupported HTTP version");
	rc->http11 = version[7] == '1';

	for (i = 0; known_methods[i]; i++)
		if (strlen(known_methods[i]) == mlen && memcmp(s, known_methods[i], mlen) == 0)
			break;
	if (!known_methods[i])
		return reject(rc, 400, "unsupported method");

	if (tlen == 0)
		return reject(rc, 400, "malformed request target");
	if (target[0] != '/' && !(tlen == 1 && target[0] == '*' && mlen == 7))
		return reject(rc, 400, "request target must be a path");
	/* the target holds no space (it ends at one): only other bytes can be bad */
	if (cls)
		for (size_t k = 0; k < tlen; k++)
			if (target_bad[(unsigned char)target[k]])
				return reject(rc, 400, "malformed request target");
	rc->state = RC_HEADERS;
	return RC_MORE;
}

static bool value_is_n(const char *v, size_t n, const char *want, size_t wn)
{
	return wn == n && strncasecmp(v, want, n) == 0;
}
/* want is a string literal: its length is known at compile time */
#define value_is(v, n, want) value_is_n((v), (n), (want), sizeof(want) - 1)

static enum reqcheck_result header_line(struct reqcheck *rc, const char *s, size_t n,
                                        unsigned cls, size_t namelen)
{
	const char *v;
	size_t vlen;

	if (n == 0)
		return RC_HEAD_DONE; /* caller decides framing */
	if (s[0] == ' ' || s[0] == '\t')
		return reject(rc, 400, "folded header lines are not allowed");
	if (++rc->n_headers > RC_MAX_HEADERS)
		return reject(rc, 431, "too many request headers");
	if (namelen == n || namelen == 0)   /* no colon, or nothing before it */
		return reject(rc, 400, "malformed header line");
	for (size_t k = 0; k < namelen; k++)
		if (!is_tchar((unsigned char)s[k]))
			return reject(rc, 400, "malformed header name");
	v = s + namelen + 1;
	vlen = n - namelen - 1;
	if (cls & LINE_CTL)
		for (size_t k = 0; k < vlen; k++)
			if (value_bad[(unsigned char)v[k]])
				return reject(rc, 400, "control character in header value");
	while (vlen && (*v == ' ' || *v == '\t')) { v++; vlen--; }
	while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t')) vlen--;

	if (value_is(s, namelen, "content-length")) {
		uint64_t cl = 0;
		if (++rc->n_content_length > 1)
			return reject(rc, 400, "more than one Content-Length");
		if (vlen == 0 || vlen > 18)
			return reject(rc, 400, "invalid Content-Length");
		for (size_t k = 0; k < vlen; k++) {
			if (v[k] < '0' || v[k] > '9')
				return reject(rc, 400, "invalid Content-Length");
			cl = cl * 10 + (uint64_t)(v[k] - '0');
		}
		rc->content_length = cl;
	} else if (value_is(s, namelen, "transfer-encoding")) {
		if (++rc->n_transfer_encoding > 1)
			return reject(rc, 400, "more than one Transfer-Encoding");
		if (!value_is(v, vlen, "chunked"))
			return reject(rc, 400, "unsupported Transfer-Encoding");
		rc->chunked = true;
	} else if (value_is(s, namelen, "host")) {
		if (++rc->n_host > 1)
			return reject(rc, 400, "more than one Host header");
		/* uri-host [":" port] (RFC 9112 3.2: a bad Host MUST get 400): reg-name, IPv4 or
		 * an IP literal in brackets, so no blank, no "/", no "@" */
		for (size_t k = 0; k < vlen; k++)
			if (!host_char[(unsigned char)v[k]])
				return reject(rc, 400, "invalid Host header");
	}
	return RC_MORE;
}

/* The head is complete: decide how the body is framed. */
static enum reqcheck_result head_done(struct reqcheck *rc)
{
	if (rc->http11 && rc->n_host != 1)
		return reject(rc, 400, "HTTP/1.1 request without Host");
	if (rc->chunked && rc->n_content_length)
		return reject(rc, 400, "Content-Length with Transfer-Encoding");
	if (rc->chunked && !rc->http11)
		return reject(rc, 400, "Transfer-Encoding in an HTTP/1.0 request");
	if (rc->chunked) {
		rc->state = RC_CHUNK_SIZE;
		return RC_HEAD_DONE;
	}
	if (rc->content_length > rc->max_body)
		return reject(rc, 413, "request body too large");
	if (rc->content_length == 0) {
		next_request(rc);
		return RC_REQUEST_DONE;
	}
	rc->state = RC_BODY;
	rc->data_left = rc->content_length;
	return RC_HEAD_DONE;
}

static enum reqcheck_result chunk_size_line(struct reqcheck *rc, const char *s, size_t n)
{
	uint64_t size = 0;
	size_t k;

	for (k = 0; k < n; k++) {
		char c = s[k];
		int d;
		if (c >= '0' && c <= '9') d = c - '0';
		else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
		else break;
		if (k >= 15)
			return reject(rc, 400, "malformed chunked body");
		size = size * 16 + (uint64_t)d;
	}
	if (k == 0 || (k < n && s[k] != ';' && s[k] != ' ' && s[k] != '\t'))
		return reject(rc, 400, "malformed chunked body");
	if (size > rc->max_body || rc->body_total + size > rc->max_body)
		return reject(rc, 413, "request body too large");
	if (size == 0) {
		rc->state = RC_TRAILERS;
		return RC_MORE;
	}
	rc->data_left = size;
	rc->body_total += size;
	rc->state = RC_CHUNK_DATA;
	return RC_MORE;
}

enum reqcheck_result reqcheck_line(struct reqcheck *rc, const char *line, size_t len)
{
	size_t n, colon;
	unsigned cls;
	enum reqcheck_result r;

	if (rc->state == RC_REJECTED)
		return RC_REJECT;
	if (rc->state == RC_REQUEST_LINE || rc->state == RC_HEADERS) {
		rc->head_len += len;
		if (rc->head_len > rc->max_head)
			return reject(rc, rc->state == RC_REQUEST_LINE ? 414 : 431,
			              rc->state == RC_REQUEST_LINE ? "request line too long"
			                                           : "request headers too large");
	}
	if (!line_content(line, len, &n, &cls, &colon))
		return reject(rc, 400, rc->state == RC_REQUEST_LINE || rc->state == RC_HEADERS
		              ? "invalid character in request head" : "malformed chunked body");
	switch (rc->state) {
	case RC_REQUEST_LINE:
		return request_line(rc, line, n, cls);
	case RC_HEADERS:
		r = header_line(rc, line, n, cls, colon);
		return r == RC_HEAD_DONE ? head_done(rc) : r;
	case RC_CHUNK_SIZE:
		return chunk_size_line(rc, line, n);
	case RC_CHUNK_END:
		if (n != 0)
			return reject(rc, 400, "malformed chunked body");
		rc->state = RC_CHUNK_SIZE;
		return RC_MORE;
	case RC_TRAILERS:
		if (n == 0) {
			next_request(rc);
			return RC_REQUEST_DONE;
		}
		if (line[0] == ' ' || line[0] == '\t' || !memchr(line, ':', n))
			return reject(rc, 400, "malformed chunked body");
		if (++rc->n_headers > RC_MAX_HEADERS)
			return reject(rc, 431, "too many trailer fields");
		return RC_MORE;
	default:
		return reject(rc, 400, "unexpected data");
	}
}

uint64_t reqcheck_data_wanted(const struct reqcheck *rc)
{
	return (rc->state == RC_BODY || rc->state == RC_CHUNK_DATA) ? rc->data_left : 0;
}

enum reqcheck_result reqcheck_data(struct reqcheck *rc, uint64_t n)
{
	if (n > rc->data_left)
		return reject(rc, 400, "unexpected data");
	rc->data_left -= n;
	if (rc->data_left > 0)
		return RC_MORE;
	if (rc->state == RC_CHUNK_DATA) {
		rc->state = RC_CHUNK_END;
		return RC_MORE;
	}
	next_request(rc);
	return RC_REQUEST_DONE;
}

enum reqcheck_result reqcheck_feed(struct reqcheck *rc, const char *buf, size_t len, int *requests)
{
	enum reqcheck_result last = RC_MORE;
	size_t off = 0;

	while (off < len && rc->state != RC_REJECTED) {
		enum reqcheck_result r;
		if (reqcheck_wants_line(rc)) {
			const char *lf = memchr(buf + off, '\n', len - off);
			size_t limit = reqcheck_line_limit(rc);
			if (!lf) {
				/* limit + 1: the pending bytes may end in the CR of a line that the
				 * check below accepts once its LF arrives (as http.c's process() does) */
				if (len - off > limit + 1)
					return reqcheck_line_too_long(rc);
				break;
			}
			if ((size_t)(lf - (buf + off)) + 1 > limit + 2)
				return reqcheck_line_too_long(rc);
			r = reqcheck_line(rc, buf + off, (size_t)(lf - (buf + off)) + 1);
			off = (size_t)(lf - buf) + 1;
		} else {
			uint64_t want = reqcheck_data_wanted(rc);
			uint64_t n = len - off < want ? len - off : want;
			r = reqcheck_data(rc, n);
			off += (size_t)n;
		}
		if (r == RC_REQUEST_DONE && requests)
			(*requests)++;
		if (r != RC_MORE)
			last = r;
		if (r == RC_REJECT)
			break;
	}
	return last;
}
