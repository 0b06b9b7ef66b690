/* Fuzz target: the upstream answer parser (fastgated/h1resp.c).
 *
 * The input is what an upstream sends back. It is parsed whole, then again cut into
 * data-derived pieces with the body callback pausing now and then (as a slow client makes
 * the proxy do). Invariants:
 *  - h1_feed never reports consuming more than it was given;
 *  - the outcome (complete, refused, needs more), the head lines seen, the body bytes
 *    delivered, the status and the keep-alive decision do not depend on the cuts;
 *  - the body delivered is never longer than the input;
 *  - a HEAD answer delivers no body. */
#include <stdbool.h>
#include <string.h>

#include "h1resp.h"
#include "fuzz.h"

struct sink {
	char lines[8192], body[8192];
	size_t nlines, nbody;
	size_t total_body;
	uint64_t seed;
	bool pausing;
};

static int on_line(void *arg, const char *line, size_t len)
{
	struct sink *s = arg;
	size_t n = len < sizeof(s->lines) - s->nlines ? len : sizeof(s->lines) - s->nlines;

	memcpy(s->lines + s->nlines, line, n);
	s->nlines += n;
	return 0;
}

static int on_body(void *arg, const char *data, size_t len)
{
	struct sink *s = arg;
	size_t n;

	if (s->pausing && fuzz_next(&s->seed) % 4 == 0)
		return 1;
	n = len < sizeof(s->body) - s->nbody ? len : sizeof(s->body) - s->nbody;
	memcpy(s->body + s->nbody, data, n);
	s->nbody += n;
	s->total_body += len;
	return 0;
}

static const struct h1_callbacks cbs = { on_line, on_body };

/* Parse data as the native transport would: unconsumed bytes stay in front of the next read. */
static enum h1_event parse(const uint8_t *data, size_t size, bool head, bool cut, uint64_t seed,
                           struct sink *s, struct h1_parser *p)
{
	static char buf[1 << 17];
	size_t have = 0, off = 0;
	enum h1_event ev = H1_MORE;

	memset(s, 0, sizeof(*s));
	s->seed = seed;
	s->pausing = cut;
	h1_init(p, head);
	while (off < size) {
		size_t n = size - off;
		if (cut)
			n = 1 + (size_t)(fuzz_next(&s->seed) % 64);
		if (n > size - off)
			n = size - off;
		memcpy(buf + have, data + off, n);
		have += n;
		off += n;
		for (int rounds = 0; rounds < 100000; rounds++) {
			size_t used = h1_feed(p, buf, have, &cbs, s, &ev);
			FUZZ_CHECK(used <= have, "consumed %zu of %zu", used, have);
			memmove(buf, buf + used, have - used);
			have -= used;
			if (ev != H1_PAUSED)
				break;
		}
		FUZZ_CHECK(ev != H1_PAUSED, "paused forever");
		if (ev != H1_MORE)
			break;
	}
	if (ev == H1_MORE)
		ev = h1_eof(p) == H1_COMPLETE ? H1_COMPLETE : H1_MORE;
	return ev;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct sink a, b;
	struct h1_parser pa, pb;
	uint64_t seed = fuzz_hash(data, size);
	bool head = size > 0 && (data[0] & 1) && (data[0] & 2);

	if (size > (1 << 16))
		return 0;
	enum h1_event ea = parse(data, size, head, false, seed, &a, &pa);
	enum h1_event eb = parse(data, size, head, true, seed, &b, &pb);

	FUZZ_CHECK(ea == eb, "outcome %d whole, %d cut", ea, eb);
	FUZZ_CHECK(a.nlines == b.nlines && memcmp(a.lines, b.lines, a.nlines) == 0, "head lines differ");
	FUZZ_CHECK(a.total_body == b.total_body && a.nbody == b.nbody &&
	           memcmp(a.body, b.body, a.nbody) == 0, "body differs (%zu vs %zu bytes)",
	           a.total_body, b.total_body);
	FUZZ_CHECK(a.total_body <= size, "more body than input");
	if (ea == H1_COMPLETE) {
		FUZZ_CHECK(pa.status == pb.status && pa.status >= 200 && pa.status <= 999,
		           "status %d / %d", pa.status, pb.status);
		FUZZ_CHECK(pa.keepalive == pb.keepalive, "keep-alive differs");
	}
	if (head && ea == H1_COMPLETE)
		FUZZ_CHECK(a.total_body == 0, "a HEAD answer had a body");
	return 0;
}
