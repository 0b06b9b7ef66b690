/* Fuzz target: the control protocol framing (fastgated/ctlproto.c).
 *
 * The input is the byte stream a control client (or the daemon, for the CLI) sends. It is
 * fed to the line splitter in data-derived pieces, once with a small line limit and once
 * with the real one, and the lines handed out must be exactly those a direct split of the
 * whole input gives ('\n' ends a line, one '\r' before it is dropped, a line over the
 * limit ends the stream). Every line then goes through the request, reply and greeting
 * decoders, and whatever decodes is encoded again and must decode to the same thing:
 * the daemon's replies are the CLI's input, so the two sides must agree on every value. */
#include <stdbool.h>
#include <string.h>

#include "ctlproto.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	json_object_seed(1);
	return 0;
}

static bool known_code(const char *code)
{
	static const char *const codes[] = { CTL_E_BAD_REQUEST, CTL_E_LINE_TOO_LONG,
		CTL_E_UNKNOWN_COMMAND, CTL_E_BAD_ARGS, CTL_E_NOT_FOUND, CTL_E_ROUTE_UNAVAILABLE,
		CTL_E_RELOAD_FAILED, CTL_E_BUSY, CTL_E_INTERNAL, NULL };

	for (size_t i = 0; code && codes[i]; i++)
		if (strcmp(code, codes[i]) == 0)
			return true;
	return false;
}

/* An encoder's output is one line: ends in '\n', no other '\n', no NUL. */
static void check_encoded(const char *line, const char *what)
{
	size_t n;

	if (!line)
		return;
	n = strlen(line);
	FUZZ_CHECK(n > 1 && line[n - 1] == '\n', "%s: not terminated by a newline", what);
	FUZZ_CHECK(memchr(line, '\n', n - 1) == NULL, "%s: more than one line: %s", what, line);
}

static void parse_own_reply(const char *enc, struct ctl_reply *rp, const char *what)
{
	struct ctl_error err = { 0 };

	FUZZ_CHECK(enc != NULL, "%s: encoding a decoded value failed", what);
	check_encoded(enc, what);
	FUZZ_CHECK(ctl_parse_reply(enc, strlen(enc) - 1, rp, &err) == 0,
	           "%s: the CLI cannot decode the daemon's line %s(%s)", what, enc, err.message);
}

static void request_round_trip(const struct ctl_request *rq)
{
	struct ctl_request back;
	struct ctl_error err = { 0 };
	char *enc = ctl_encode_request(rq->id, rq->cmd, rq->args);

	FUZZ_CHECK(enc != NULL, "encoding decoded request %s failed", rq->cmd);
	check_encoded(enc, "request");
	FUZZ_CHECK(ctl_parse_request(enc, strlen(enc) - 1, &back, &err) == 0,
	           "re-encoded request does not decode: %s (%s)", enc, err.message);
	FUZZ_CHECK(back.id == rq->id && strcmp(back.cmd, rq->cmd) == 0 &&
	           json_equal(back.args, rq->args), "request changed in a round trip: %s", enc);
	ctl_request_clear(&back);
	free(enc);
}

static void check_request(const char *line, size_t len)
{
	struct ctl_request rq;
	struct ctl_error err = { 0 };

	if (ctl_parse_request(line, len, &rq, &err) == 0) {
		FUZZ_CHECK(rq.has_id && rq.cmd && *rq.cmd, "request decoded without id or cmd");
		FUZZ_CHECK(json_is_object(rq.args), "request args is not an object");
		request_round_trip(&rq);
		/* the error reply for this request must decode with its id */
		{
			struct ctl_reply rp;
			char *enc = ctl_encode_error(true, rq.id, CTL_E_UNKNOWN_COMMAND, rq.cmd, rq.args);

			parse_own_reply(enc, &rp, "error reply");
			FUZZ_CHECK(rp.kind == CTL_REPLY_ERROR && rp.has_id && rp.id == rq.id &&
			           strcmp(rp.code, CTL_E_UNKNOWN_COMMAND) == 0 &&
			           strcmp(rp.message, rq.cmd) == 0, "error reply changed: %s", enc);
			ctl_reply_clear(&rp);
			free(enc);
		}
	} else {
		FUZZ_CHECK(known_code(err.code), "request error without a known code");
		FUZZ_CHECK(err.message[0] != '\0', "request error %s without a message", err.code);
		FUZZ_CHECK(rq.cmd == NULL || rq.has_id, "cmd read without an id");
	}
	ctl_request_clear(&rq);
}

static void check_reply(const char *line, size_t len)
{
	struct ctl_reply rp, back;
	struct ctl_error err = { 0 };
	char *enc = NULL;

	if (ctl_parse_reply(line, len, &rp, &err) < 0) {
		FUZZ_CHECK(known_code(err.code) && err.message[0], "reply error without code or message");
		FUZZ_CHECK(rp.root == NULL, "failed reply parse kept its JSON");
		return;
	}
	switch (rp.kind) {
	case CTL_REPLY_RESULT:
		FUZZ_CHECK(rp.result != NULL, "result reply without a result");
		enc = ctl_encode_result(rp.has_id, rp.id, rp.result);
		parse_own_reply(enc, &back, "result");
		FUZZ_CHECK(back.kind == CTL_REPLY_RESULT && back.has_id == rp.has_id &&
		           (!rp.has_id || back.id == rp.id) && json_equal(back.result, rp.result),
		           "result changed in a round trip: %s", enc);
		ctl_reply_clear(&back);
		break;
	case CTL_REPLY_ERROR:
		FUZZ_CHECK(rp.code && rp.message, "error reply without code or message");
		enc = ctl_encode_error(rp.has_id, rp.id, rp.code, rp.message,
		                       json_is_object(rp.error) ? rp.error : NULL);
		parse_own_reply(enc, &back, "error");
		FUZZ_CHECK(back.kind == CTL_REPLY_ERROR && strcmp(back.code, rp.code) == 0 &&
		           strcmp(back.message, rp.message) == 0, "error changed in a round trip: %s", enc);
		ctl_reply_clear(&back);
		break;
	case CTL_REPLY_EVENT:
		FUZZ_CHECK(rp.event != NULL, "event reply without an event");
		if (rp.has_id) {
			enc = ctl_encode_event(rp.id, rp.event);
			parse_own_reply(enc, &back, "event");
			FUZZ_CHECK(back.kind == CTL_REPLY_EVENT && back.id == rp.id &&
			           json_equal(back.event, rp.event), "event changed in a round trip: %s", enc);
			ctl_reply_clear(&back);
		}
		break;
	case CTL_REPLY_END:
		if (rp.has_id) {
			enc = ctl_encode_end(rp.id);
			parse_own_reply(enc, &back, "end");
			FUZZ_CHECK(back.kind == CTL_REPLY_END && back.id == rp.id, "end changed: %s", enc);
			ctl_reply_clear(&back);
		}
		break;
	}
	free(enc);
	ctl_reply_clear(&rp);
}

static void check_greeting(const char *line, size_t len)
{
	char version[16], again[64];
	int protocol = -1, p2 = -1;
	struct ctl_error err = { 0 };
	char *enc;

	if (ctl_parse_greeting(line, len, version, sizeof(version), &protocol, &err) < 0)
		return;
	FUZZ_CHECK(strlen(version) < sizeof(version), "greeting version not terminated");
	enc = ctl_encode_greeting(version);
	if (!enc)
		return; /* truncation may cut a UTF-8 sequence: not a string jansson encodes */
	check_encoded(enc, "greeting");
	FUZZ_CHECK(ctl_parse_greeting(enc, strlen(enc) - 1, again, sizeof(again), &p2, &err) == 0 &&
	           strcmp(again, version) == 0 && p2 == CTL_PROTOCOL_VERSION,
	           "greeting changed in a round trip: %s", enc);
	free(enc);
}

/* Raw line bytes as the strings an encoder is given (a message, a code, a version). */
static void encode_raw(const char *line, json_int_t id)
{
	struct ctl_reply rp;
	char *enc = ctl_encode_error(id & 1, id, line, line, NULL);

	if (!enc) {
		/* the only refusal: a string jansson will not encode (not UTF-8) */
		FUZZ_CHECK(json_string(line) == NULL, "encoding error \"%s\" failed", line);
		return;
	}
	parse_own_reply(enc, &rp, "raw error");
	FUZZ_CHECK(rp.kind == CTL_REPLY_ERROR && strcmp(rp.code, line) == 0 &&
	           strcmp(rp.message, line) == 0 && rp.has_id == (bool)(id & 1) &&
	           (!rp.has_id || rp.id == id), "raw error changed in a round trip: %s", enc);
	ctl_reply_clear(&rp);
	free(enc);
}

struct expected {
	const uint8_t *data;
	size_t size, pos;
	bool ended;      /* a too-long line was seen: nothing follows */
};

/* The next line of the whole input by the rules above: 1 with the line, 0 at the end,
 * -1 when the line is over max. */
static int next_expected(struct expected *x, size_t max, const uint8_t **line, size_t *len)
{
	const uint8_t *s = x->data + x->pos, *nl;
	size_t n, avail = x->size - x->pos;

	if (x->ended || avail == 0)
		return 0;
	nl = memchr(s, '\n', avail);
	n = nl ? (size_t)(nl - s) : avail;
	x->pos += nl ? n + 1 : n;
	if (n > 0 && s[n - 1] == '\r')
		n--;
	if (n > max) {
		x->ended = true;
		return -1;
	}
	*line = s;
	*len = n;
	return 1;
}

/* Compare one handed-out line with the expected one; decode it when asked. */
static void take(struct expected *x, size_t max, const char *line, size_t len, bool decode,
                 json_int_t id)
{
	const uint8_t *want;
	size_t wlen;

	FUZZ_CHECK(next_expected(x, max, &want, &wlen) == 1, "a line was handed out past the end");
	FUZZ_CHECK(len == wlen && memcmp(line, want, len) == 0 && line[len] == '\0',
	           "line of %zu bytes handed out, expected %zu bytes", len, wlen);
	if (!decode)
		return;
	check_request(line, len);
	check_reply(line, len);
	check_greeting(line, len);
	encode_raw(line, id);
}

static void split_run(const uint8_t *data, size_t size, size_t max, uint64_t *seed, bool decode)
{
	struct ctl_linebuf lb;
	struct expected x = { .data = data, .size = size };
	enum ctl_line_status st = CTL_LINE_NONE;
	size_t off = 0;
	char *line;
	size_t len;

	ctl_linebuf_init(&lb, max);
	while (off < size && st != CTL_LINE_TOO_LONG) {
		size_t piece = 1 + (size_t)(fuzz_next(seed) % 64);

		if (piece > size - off)
			piece = size - off;
		FUZZ_CHECK(ctl_linebuf_append(&lb, data + off, piece) == 0, "append failed");
		off += piece;
		while ((st = ctl_linebuf_next(&lb, &line, &len)) == CTL_LINE_OK)
			take(&x, max, line, len, decode, (json_int_t)fuzz_next(seed));
		if (st == CTL_LINE_NONE)
			FUZZ_CHECK(ctl_linebuf_pending(&lb) <= max + 1, "%zu bytes held with a line limit of %zu",
			           ctl_linebuf_pending(&lb), max);
	}
	if (st != CTL_LINE_TOO_LONG) {
		st = ctl_linebuf_take_rest(&lb, &line, &len);
		if (st == CTL_LINE_OK) {
			take(&x, max, line, len, decode, 0);
			FUZZ_CHECK(ctl_linebuf_take_rest(&lb, &line, &len) == CTL_LINE_NONE,
			           "the rest was handed out twice");
		}
	}
	if (st == CTL_LINE_TOO_LONG) {
		const uint8_t *want;
		size_t wlen;

		FUZZ_CHECK(next_expected(&x, max, &want, &wlen) == -1,
		           "line reported too long, but the next line is %zu bytes (max %zu)", wlen, max);
	} else {
		FUZZ_CHECK(x.pos == x.size && !x.ended, "input left over: %zu of %zu bytes", x.pos,
		           x.size);
	}
	ctl_linebuf_free(&lb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t seed = fuzz_hash(data, size) | 1;

	/* a small limit exercises the too-long paths; the real one decodes every line */
	split_run(data, size, 1 + (size_t)(fuzz_next(&seed) % 40), &seed, false);
	split_run(data, size, CTL_LINE_MAX, &seed, true);
	return 0;
}
