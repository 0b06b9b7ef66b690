/* The plain-HTTP upstream response parser (h1resp.c): framing, interim answers,
 * keep-alive decisions, malformed answers, pauses; every input is also fed one byte at a
 * time, since the network may split an answer anywhere. */
#include <stdlib.h>

#include <event2/event.h>

#include "unit.h"
#include "h1resp.h"

struct seen {
	char lines[4096];   /* the head lines as received, concatenated */
	char body[8192];
	size_t nlines, nbody;
	int pause_every;    /* body callback pauses on every n-th call (0 = never) */
	int calls;
	bool abort_on_head_end;
};

static int on_line(void *arg, const char *line, size_t len)
{
	struct seen *s = arg;

	if (s->nlines + len < sizeof(s->lines)) {
		memcpy(s->lines + s->nlines, line, len);
		s->nlines += len;
		s->lines[s->nlines] = '\0';
	}
	if (s->abort_on_head_end && (len == 2 || len == 1))
		return -1;
	return 0;
}

static int on_body(void *arg, const char *data, size_t len)
{
	struct seen *s = arg;

	s->calls++;
	if (s->pause_every && s->calls % s->pause_every == 0)
		return 1;
	if (s->nbody + len < sizeof(s->body)) {
		memcpy(s->body + s->nbody, data, len);
		s->nbody += len;
		s->body[s->nbody] = '\0';
	}
	return 0;
}

static const struct h1_callbacks cbs = { on_line, on_body };

/* Feed `in` in pieces of `step` bytes the way the native transport does: unconsumed bytes stay in front
 * of the next read, a pause is resumed at once. Returns the final event; *left gets the
 * bytes never consumed. */
static enum h1_event feed(struct h1_parser *p, const char *in, size_t step, struct seen *s,
                          size_t *left)
{
	char buf[16384];
	size_t have = 0, off = 0, n = strlen(in);
	enum h1_event ev = H1_MORE;

	while (off < n || have) {
		size_t k = n - off < step ? n - off : step;
		memcpy(buf + have, in + off, k);
		have += k;
		off += k;
		for (;;) {
			size_t used = h1_feed(p, buf, have, &cbs, s, &ev);
			memmove(buf, buf + used, have - used);
			have -= used;
			if (ev != H1_PAUSED)
				break;
		}
		if (ev != H1_MORE)
			break;
		if (k == 0)
			break;
	}
	*left = have + (n - off);
	return ev;
}

static void both_ways(const char *in, bool head_req, enum h1_event want, const char *body,
                      int status, bool keepalive)
{
	size_t steps[] = { 100000, 1, 7 };

	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		struct h1_parser p;
		struct seen s = { .pause_every = i == 2 ? 3 : 0 };
		size_t left;

		h1_init(&p, head_req);
		enum h1_event ev = feed(&p, in, steps[i], &s, &left);
		if (ev == H1_MORE && want == H1_COMPLETE)
			ev = h1_eof(&p); /* a read-until-close body ends at the close */
		CHECK_INT(ev, want);
		if (want != H1_COMPLETE)
			continue;
		CHECK_STR(s.body, body);
		CHECK_INT(p.status, status);
		CHECK_INT(p.keepalive, keepalive);
		CHECK_INT(left, 0);
	}
}

TEST(content_length_body_and_keepalive)
{
	both_ways("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
	          "{\"ok\":true}", false, H1_COMPLETE, "{\"ok\":true}", 200, true);
}

TEST(chunked_body_is_dechunked_with_extensions_and_trailers)
{
	both_ways("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
	          "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
	          false, H1_COMPLETE, "hello world", 200, true);
}

TEST(transfer_codings_other_than_chunked_are_refused)
{
	/* de-chunked but still gzip, with no header saying so, is not the upstream's answer */
	static const char *bad[] = {
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxxxx",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nxx",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct h1_parser p;
		struct seen s = { 0 };
		size_t left;

		h1_init(&p, false);
		CHECK_INT(feed(&p, bad[i], 100000, &s, &left), H1_BAD);
	}
}

TEST(te_from_http10_or_with_a_length_is_used_once_and_never_reused)
{
	both_ways("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
	          "5\r\nhello\r\n0\r\n\r\n", false, H1_COMPLETE, "hello", 200, false);
	both_ways("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
	          "5\r\nhello\r\n0\r\n\r\n", false, H1_COMPLETE, "hello", 200, false);
}

TEST(status_out_of_range_and_control_bytes_in_headers_are_refused)
{
	static const char *bad[] = {
		"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
	};
	static const size_t lens[] = { 0, 0, 48, 48 };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct h1_parser p;
		struct seen s = { 0 };
		enum h1_event ev;
		size_t n = lens[i] ? lens[i] : strlen(bad[i]);

		h1_init(&p, false);
		h1_feed(&p, bad[i], n, &cbs, &s, &ev);
		CHECK_INT(ev, H1_BAD);
	}
}

TEST(body_without_length_runs_to_the_close_and_is_not_reused)
{
	both_ways("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
	          false, H1_COMPLETE, "until close", 200, false);
}

TEST(interim_answers_are_skipped_and_their_lines_seen)
{
	struct h1_parser p;
	struct seen s = { 0 };
	size_t left;

	h1_init(&p, false);
	CHECK_INT(feed(&p, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
	               100000, &s, &left), H1_COMPLETE);
	CHECK_INT(p.status, 201);
	CHECK_STR(s.body, "ok");
	CHECK(strstr(s.lines, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n") == s.lines);
}

TEST(head_204_and_304_have_no_body)
{
	both_ways("HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n", true, H1_COMPLETE, "", 200, true);
	both_ways("HTTP/1.1 204 No Content\r\n\r\n", false, H1_COMPLETE, "", 204, true);
	both_ways("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false, H1_COMPLETE, "", 304, true);
}

TEST(connection_close_and_http10_are_not_kept_alive)
{
	both_ways("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
	          false, H1_COMPLETE, "x", 200, false);
	both_ways("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", false, H1_COMPLETE, "x", 200, false);
	both_ways("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx",
	          false, H1_COMPLETE, "x", 200, true);
}

TEST(lf_only_lines_are_accepted)
{
	both_ways("HTTP/1.1 200 OK\nContent-Length: 2\n\nhi", false, H1_COMPLETE, "hi", 200, true);
}

TEST(malformed_answers_are_refused)
{
	const char *bad[] = {
		"SSH-2.0-OpenSSH_9.2\r\n\r\n",
		"HTTP/1.1 2000 OK\r\n\r\n",
		"HTTP/2 200\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nX-Tab\t: 1\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nX-Mid dle: 1\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
		"HTTP/1.1 200 OK\r\nNoColonHere\r\n\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct h1_parser p;
		struct seen s = { 0 };
		size_t left;
		h1_init(&p, false);
		enum h1_event ev = feed(&p, bad[i], 100000, &s, &left);
		if (ev != H1_BAD)
			fprintf(stderr, "  input %zu accepted\n", i);
		CHECK_INT(ev, H1_BAD);
	}
}

TEST(an_endless_head_is_refused_at_the_cap)
{
	struct h1_parser p;
	struct seen s = { 0 };
	char *big = malloc(H1_HEAD_MAX + 100);
	enum h1_event ev;

	memcpy(big, "HTTP/1.1 200 OK\r\nX-Big: ", 24);
	memset(big + 24, 'a', H1_HEAD_MAX + 100 - 24);
	h1_init(&p, false);
	h1_feed(&p, big, H1_HEAD_MAX + 100, &cbs, &s, &ev);
	CHECK_INT(ev, H1_BAD);
	free(big);
}

TEST(an_overlong_chunk_size_line_is_refused_however_it_arrives)
{
	static char in[2200];
	size_t steps[] = { 100000, 1, 700 };
	int n = snprintf(in, sizeof(in), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=");

	memset(in + n, 'a', 1100);
	static const char tail[] = "\r\nhello\r\n0\r\n\r\n";
	memcpy(in + n + 1100, tail, sizeof(tail));
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		struct h1_parser p;
		struct seen s = { 0 };
		size_t left;
		h1_init(&p, false);
		CHECK_INT(feed(&p, in, steps[i], &s, &left), H1_BAD);
	}
}

TEST(truncated_answers_are_not_complete_at_the_close)
{
	const char *cut[] = {
		"",
		"HTTP/1.1 200 OK\r\nContent-Le",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
	};
	for (size_t i = 0; i < sizeof(cut) / sizeof(cut[0]); i++) {
		struct h1_parser p;
		struct seen s = { 0 };
		size_t left;
		h1_init(&p, false);
		CHECK_INT(feed(&p, cut[i], 100000, &s, &left), H1_MORE);
		CHECK_INT(h1_eof(&p), H1_BAD);
	}
}

TEST(bytes_after_a_complete_answer_are_left_over)
{
	struct h1_parser p;
	struct seen s = { 0 };
	enum h1_event ev;
	const char *in = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA";

	h1_init(&p, false);
	CHECK_INT(h1_feed(&p, in, strlen(in), &cbs, &s, &ev), strlen(in) - 5);
	CHECK_INT(ev, H1_COMPLETE);
}

TEST(a_callback_can_abort)
{
	struct h1_parser p;
	struct seen s = { .abort_on_head_end = true };
	enum h1_event ev;
	const char *in = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

	h1_init(&p, false);
	h1_feed(&p, in, strlen(in), &cbs, &s, &ev);
	CHECK_INT(ev, H1_ABORTED);
	CHECK_INT(s.nbody, 0);
}

RUN_TESTS()
