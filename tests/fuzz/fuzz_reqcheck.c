/* Fuzz target: the strict HTTP/1.x request checker (fastgated/reqcheck.c).
 *
 * The input is the raw byte stream a client sends. The checker is a pure state machine, so
 * its verdict must not depend on how the bytes were cut into reads: the same stream fed
 * whole, in three data-derived pieces through a buffering driver that frames lines exactly
 * as http.c's guard_in does, and in two reqcheck_feed calls split after a line end, must
 * complete the same number of requests and end in the same state with the same rejection.
 * A rejection is always one of the statuses the gateway knows how to answer. */
#include <stdbool.h>
#include <string.h>

#include "reqcheck.h"
#include "fuzz.h"

struct outcome {
	int requests;
	struct reqcheck rc;
};

/* The bytes a socket read hands over are appended here; whole lines and body bytes are
 * taken from the front. Line limits are checked like http.c's guard_in: a line without
 * its LF yet fails once it is over limit + 1 bytes (room for a CR), a complete line once
 * it is over limit + 2. */
struct stream {
	struct reqcheck rc;
	uint8_t *buf;
	size_t len;
	int requests;
};

static void stream_run(struct stream *st)
{
	size_t off = 0;

	while (off < st->len && st->rc.state != RC_REJECTED) {
		enum reqcheck_result r;

		if (reqcheck_wants_line(&st->rc)) {
			size_t limit = reqcheck_line_limit(&st->rc);
			const uint8_t *lf = memchr(st->buf + off, '\n', st->len - off);

			if (!lf) {
				if (st->len - off > limit + 1)
					r = reqcheck_line_too_long(&st->rc);
				else
					break; /* wait for the rest of the line */
			} else {
				size_t n = (size_t)(lf - (st->buf + off)) + 1;

				if (n > limit + 2) {
					r = reqcheck_line_too_long(&st->rc);
				} else {
					r = reqcheck_line(&st->rc, (const char *)st->buf + off, n);
					off += n;
				}
			}
		} else {
			uint64_t want = reqcheck_data_wanted(&st->rc);
			size_t n = st->len - off < want ? st->len - off : (size_t)want;

			FUZZ_CHECK(want > 0, "a body state wants no bytes (state %d)", st->rc.state);
			r = reqcheck_data(&st->rc, n);
			off += n;
		}
		if (r == RC_REQUEST_DONE)
			st->requests++;
	}
	memmove(st->buf, st->buf + off, st->len - off);
	st->len -= off;
}

static void stream_feed(struct stream *st, const uint8_t *data, size_t n)
{
	memcpy(st->buf + st->len, data, n);
	st->len += n;
	stream_run(st);
}

static void check_state(const struct reqcheck *rc, const char *how)
{
	if (rc->state == RC_REJECTED) {
		FUZZ_CHECK(rc->status == 400 || rc->status == 413 || rc->status == 414 ||
		           rc->status == 431, "%s: rejected with status %d", how, rc->status);
		FUZZ_CHECK(rc->reason && *rc->reason, "%s: rejected without a reason", how);
		return;
	}
	FUZZ_CHECK(rc->status == 0 && rc->reason == NULL, "%s: status %d set but not rejected",
	           how, rc->status);
	FUZZ_CHECK(rc->body_total <= rc->max_body, "%s: chunked body %llu over the limit %llu",
	           how, (unsigned long long)rc->body_total, (unsigned long long)rc->max_body);
	FUZZ_CHECK(rc->data_left <= rc->max_body, "%s: %llu body bytes expected, limit %llu", how,
	           (unsigned long long)rc->data_left, (unsigned long long)rc->max_body);
	if (rc->state == RC_REQUEST_LINE || rc->state == RC_HEADERS)
		FUZZ_CHECK(rc->head_len <= rc->max_head, "%s: head of %zu bytes over the limit %zu",
		           how, rc->head_len, rc->max_head);
	FUZZ_CHECK(rc->n_headers <= RC_MAX_HEADERS, "%s: %d headers", how, rc->n_headers);
}

static void same_outcome(const struct outcome *a, const struct outcome *b, const char *how)
{
	FUZZ_CHECK(a->requests == b->requests, "%s: %d requests, whole feed gave %d", how,
	           b->requests, a->requests);
	FUZZ_CHECK(a->rc.state == b->rc.state, "%s: ends in state %d, whole feed in %d", how,
	           b->rc.state, a->rc.state);
	FUZZ_CHECK(a->rc.status == b->rc.status, "%s: status %d (%s), whole feed %d (%s)", how,
	           b->rc.status, b->rc.reason ? b->rc.reason : "-", a->rc.status,
	           a->rc.reason ? a->rc.reason : "-");
	if (a->rc.state == RC_REJECTED)
		return;
	FUZZ_CHECK(a->rc.head_len == b->rc.head_len && a->rc.data_left == b->rc.data_left &&
	           a->rc.body_total == b->rc.body_total && a->rc.n_headers == b->rc.n_headers,
	           "%s: counters differ from the whole feed", how);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* small limits, so 413/414/431 are reachable with short inputs; one pair above
	 * RC_MAX_LINE so the per-line cap is what limits a head line */
	static const size_t heads[] = { 64, 200, 1024, RC_MAX_LINE + 100 };
	static const uint64_t bodies[] = { 0, 16, 300, 1u << 20 };
	uint64_t seed = fuzz_hash(data, size) | 1;
	size_t max_head = heads[fuzz_next(&seed) % 4];
	uint64_t max_body = bodies[fuzz_next(&seed) % 4];
	size_t cut1 = size ? (size_t)(fuzz_next(&seed) % (size + 1)) : 0;
	size_t cut2 = size ? (size_t)(fuzz_next(&seed) % (size + 1)) : 0;
	struct outcome whole = { 0 }, other = { 0 };
	struct stream st = { 0 };
	int lfs = 0;

	if (cut1 > cut2) {
		size_t t = cut1;
		cut1 = cut2;
		cut2 = t;
	}
	for (size_t i = 0; i < size; i++)
		lfs += data[i] == '\n';

	/* 1. whole, through the convenience feeder */
	reqcheck_init(&whole.rc, max_head, max_body);
	reqcheck_feed(&whole.rc, (const char *)data, size, &whole.requests);
	check_state(&whole.rc, "whole");
	FUZZ_CHECK(whole.requests <= lfs, "%d requests from %d line ends", whole.requests, lfs);

	/* 2. whole, through the http.c-style driver: same framing, same verdict */
	st.buf = malloc(size ? size : 1);
	if (!st.buf)
		return 0;
	reqcheck_init(&st.rc, max_head, max_body);
	stream_feed(&st, data, size);
	other.requests = st.requests;
	other.rc = st.rc;
	check_state(&st.rc, "driver, whole");
	same_outcome(&whole, &other, "driver, whole");

	/* 3. three pieces through the driver: as if the client's bytes came in three reads */
	st.len = 0;
	st.requests = 0;
	reqcheck_init(&st.rc, max_head, max_body);
	stream_feed(&st, data, cut1);
	check_state(&st.rc, "driver, piece 1");
	stream_feed(&st, data + cut1, cut2 - cut1);
	check_state(&st.rc, "driver, piece 2");
	stream_feed(&st, data + cut2, size - cut2);
	other.requests = st.requests;
	other.rc = st.rc;
	check_state(&st.rc, "driver, 3 pieces");
	same_outcome(&whole, &other, "driver, 3 pieces");
	free(st.buf);

	/* 4. two reqcheck_feed calls split just after a line end: reqcheck_feed resumes at
	 * line boundaries and inside bodies, so this must also agree */
	{
		const uint8_t *lf = cut1 ? memchr(data + cut1 - 1, '\n', size - cut1 + 1) : NULL;
		size_t at = lf ? (size_t)(lf - data) + 1 : size;

		memset(&other, 0, sizeof(other));
		reqcheck_init(&other.rc, max_head, max_body);
		reqcheck_feed(&other.rc, (const char *)data, at, &other.requests);
		check_state(&other.rc, "feed, piece 1");
		if (other.rc.state != RC_REJECTED)
			reqcheck_feed(&other.rc, (const char *)data + at, size - at, &other.requests);
		check_state(&other.rc, "feed, 2 pieces");
		same_outcome(&whole, &other, "feed, split after a line end");
	}
	return 0;
}
