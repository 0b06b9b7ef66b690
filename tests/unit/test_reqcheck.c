/* The strict request checker: what it accepts, what it rejects and with which status. */
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

RUN_TESTS()
