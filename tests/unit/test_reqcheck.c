/* The strict request checker: what it accepts, what it rejects and with which status. */
#include <stdio.h>

#include "reqcheck.h"
#include "unit.h"

static int feed(const char *s, int *status, int *requests)
{
	struct reqcheck rc;
	enum reqcheck_result r;

	reqcheck_init(&rc, 8192, 1024);
	*requests = 0;
	r = reqcheck_feed(&rc, s, strlen(s), requests);
	*status = rc.status;
	return r;
}

static int status_of(const char *s)
{
	int st, n;
	feed(s, &st, &n);
	return st;
}

TEST(simple_get_is_one_complete_request)
{
	int st, n;
	int r = feed("GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n", &st, &n);
	CHECK_INT(r, RC_REQUEST_DONE);
	CHECK_INT(n, 1);
}

TEST(content_length_body_completes_after_its_bytes)
{
	struct reqcheck rc;
	int n = 0;
	const char *head = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n";

	reqcheck_init(&rc, 8192, 1024);
	CHECK_INT(reqcheck_feed(&rc, head, strlen(head), &n), RC_HEAD_DONE);
	CHECK_INT(reqcheck_data_wanted(&rc), 5);
	CHECK_INT(reqcheck_feed(&rc, "hel", 3, &n), RC_MORE);
	CHECK_INT(reqcheck_feed(&rc, "lo", 2, &n), RC_REQUEST_DONE);
	CHECK_INT(n, 1);
}

TEST(pipelined_requests_are_counted_separately)
{
	int st, n;
	feed("GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok"
	     "GET /x HTTP/1.0\r\n\r\n", &st, &n);
	CHECK_INT(n, 3);
}

TEST(chunked_body_with_extensions_and_trailers_is_accepted)
{
	int st, n;
	int r = feed("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	             "3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n", &st, &n);
	CHECK_INT(r, RC_REQUEST_DONE);
	CHECK_INT(n, 1);
}

TEST(bare_lf_line_endings_are_tolerated)
{
	int st, n;
	CHECK_INT(feed("GET / HTTP/1.1\nHost: a\n\n", &st, &n), RC_REQUEST_DONE);
}

TEST(framing_conflicts_are_400)
{
	CHECK_INT(status_of("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"), 400);
	CHECK_INT(status_of("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
	CHECK_INT(status_of("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"), 400);
	CHECK_INT(status_of("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"), 400);
	CHECK_INT(status_of("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
	CHECK_INT(status_of("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
	CHECK_INT(status_of("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"), 400);
	CHECK_INT(status_of("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n"), 400);
}

TEST(malformed_heads_are_400)
{
	CHECK_INT(status_of("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), 400);
	CHECK_INT(status_of("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n continued\r\n\r\n"), 400);
	CHECK_INT(status_of("GET / HTTP/1.1\r\nX: 1\r\n\r\n"), 400);
	CHECK_INT(status_of("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
	CHECK_INT(status_of("GET /\r\n\r\n"), 400);
	CHECK_INT(status_of("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 400);
	CHECK_INT(status_of("BREW / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
	CHECK_INT(status_of("GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
	CHECK_INT(status_of("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"), 400);
	CHECK_INT(status_of("GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n"), 400);
	CHECK_INT(status_of("GET / HTTP/1.1\r\nHost: a\r\nX\x01: a\r\n\r\n"), 400);
	CHECK_INT(status_of("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
}

TEST(nul_byte_in_head_is_400)
{
	struct reqcheck rc;
	static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n";
	reqcheck_init(&rc, 8192, 1024);
	CHECK_INT(reqcheck_feed(&rc, req, sizeof(req) - 1, NULL), RC_REJECT);
	CHECK_INT(rc.status, 400);
}

TEST(oversized_heads_get_414_or_431)
{
	char buf[20000];
	memset(buf, 'a', sizeof(buf));
	memcpy(buf, "GET /", 5);
	buf[sizeof(buf) - 1] = '\0';
	CHECK_INT(status_of(buf), 414);

	strcpy(buf, "GET / HTTP/1.1\r\nHost: a\r\nX-Big: ");
	size_t off = strlen(buf);
	memset(buf + off, 'b', 9000);
	strcpy(buf + off + 9000, "\r\n\r\n");
	CHECK_INT(status_of(buf), 431);
}

TEST(too_many_headers_is_431)
{
	char buf[8192] = "GET / HTTP/1.1\r\nHost: a\r\n";
	for (int i = 0; i < RC_MAX_HEADERS + 1; i++)
		strcat(buf, "X: 1\r\n");
	strcat(buf, "\r\n");
	struct reqcheck rc;
	reqcheck_init(&rc, 65536, 1024);
	CHECK_INT(reqcheck_feed(&rc, buf, strlen(buf), NULL), RC_REJECT);
	CHECK_INT(rc.status, 431);
}

TEST(body_over_the_limit_is_413_from_the_head)
{
	CHECK_INT(status_of("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1025\r\n\r\n"), 413);
	CHECK_INT(status_of("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	                    "300\r\n"), 0); /* 768 bytes: fine so far */
	CHECK_INT(status_of("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	                    "401\r\n"), 413);
}

TEST(chunk_framing_errors_are_400)
{
	CHECK_INT(status_of("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), 400);
	CHECK_INT(status_of("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n"), 400);
	CHECK_INT(status_of("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	                    "ffffffffffffffffff\r\n"), 400);
}

TEST(a_few_blank_lines_before_a_request_are_skipped)
{
	int st, n;
	CHECK_INT(feed("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", &st, &n), RC_REQUEST_DONE);
	CHECK_INT(status_of("\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n"), 400);
}

/* One request whose byte at line offset pos of the header value (or of the target) is c;
 * the verdict on it. The positions cover every place in the 8-byte words reqcheck reads
 * lines by, and the bytes after the last whole word. */
static enum reqcheck_result with_byte(bool in_target, size_t pos, unsigned char c, int *status)
{
	char req[256];
	struct reqcheck rc;
	size_t n;
	enum reqcheck_result r;

	if (in_target)
		n = (size_t)snprintf(req, sizeof(req), "GET /%s HTTP/1.1\r\nHost: a\r\n\r\n",
		                     "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH");
	else
		n = (size_t)snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: a\r\nX-Long: %s\r\n\r\n",
		                     "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH");
	req[(in_target ? strlen("GET /") : strlen("GET / HTTP/1.1\r\nHost: a\r\nX-Long: ")) + pos] =
		(char)c;
	reqcheck_init(&rc, 8192, 1024);
	r = reqcheck_feed(&rc, req, n, NULL);
	*status = rc.status;
	return r;
}

TEST(bad_bytes_are_found_wherever_they_are_in_a_line)
{
	static const unsigned char value_bad[] = { 0x00, 0x01, 0x0b, 0x1f, 0x7f, '\r' };
	static const unsigned char value_ok[] = { '\t', ' ', 0x80, 0xff, '~' };
	static const unsigned char target_bad[] = { 0x00, 0x05, 0x7f, 0x80, 0xc3, 0xff, '\t' };
	int st;

	for (size_t pos = 0; pos < 44; pos++) {
		for (size_t i = 0; i < sizeof(value_bad); i++) {
			CHECK_INT(with_byte(false, pos, value_bad[i], &st), RC_REJECT);
			CHECK_INT(st, 400);
		}
		for (size_t i = 0; i < sizeof(value_ok); i++)
			CHECK_INT(with_byte(false, pos, value_ok[i], &st), RC_REQUEST_DONE);
		for (size_t i = 0; i < sizeof(target_bad); i++) {
			CHECK_INT(with_byte(true, pos, target_bad[i], &st), RC_REJECT);
			CHECK_INT(st, 400);
		}
		CHECK_INT(with_byte(true, pos, '%', &st), RC_REQUEST_DONE);
	}
}

TEST(a_host_that_is_not_host_and_port_is_400)
{
	static const char *bad[] = { "x y", "a/b", "user@host", "h\"x", "a<b" };
	static const char *good[] = { "", "api.example.com", "10.0.0.5:8000", "[::1]:8080", "a_b-c.d~" };
	char req[256];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", bad[i]);
		CHECK_INT(status_of(req), 400);
	}
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		int st, n;
		snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", good[i]);
		CHECK_INT(feed(req, &st, &n), RC_REQUEST_DONE);
	}
}

RUN_TESTS()
