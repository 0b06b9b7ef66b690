/* One authoritative reading of a request body's JSON.
 *
 * Every later step (routing, the audit, the rewrites, the forward) must see the body the
 * way the upstream will: keys with their escapes decoded, a duplicate key refused rather
 * than resolved one way here and another way there ({"model":"a","mod\u0065l":"b"} was
 * audited as "a" and billed upstream as "b"). reqjson_parse reads the body once under RFC
 * 8259 and keeps the top-level members, decoded, with the raw span of each value.
 *
 * A rewrite edits the client's bytes instead of re-serialising a parsed tree:
 * reqjson_splice inserts members and sets stream_options.include_usage, and leaves every
 * other byte alone (0.7 stays 0.7, an integer beyond int64 stays what it was).
 *
 * No project headers, no jansson: a pure codec, fuzzed against jansson for agreement. */
#ifndef FG_REQJSON_H
#define FG_REQJSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Arrays and objects nested deeper than this are refused (RJ_TOO_DEEP): the parser
 * recurses once per level, and no chat request needs a tenth of it. */
#define REQJSON_MAX_DEPTH 256

enum rj_type { RJ_STRING, RJ_NUMBER, RJ_TRUE, RJ_FALSE, RJ_NULL, RJ_OBJECT, RJ_ARRAY };
enum rj_result { RJ_OK = 0, RJ_NOT_JSON, RJ_NOT_OBJECT, RJ_DUPLICATE_KEY, RJ_TOO_DEEP, RJ_NOMEM };

/* One member of the top-level object. key and str live in the reqjson's arena. */
struct rj_field {
	const char *key; size_t key_len;   /* decoded (escapes resolved), NUL-terminated */
	enum rj_type type;
	size_t val_off, val_len;           /* the value's raw bytes in the body */
	const char *str; size_t str_len;   /* RJ_STRING: the decoded value, NUL-terminated (may
	                                    * contain NUL if \u0000 was sent: use str_len);
	                                    * other types: NULL, 0 */
};

struct reqjson {
	enum rj_result result;
	struct rj_field *fields; size_t n_fields;   /* in body order */
	/* read once for the audit and for later phases */
	const struct rj_field *model;      /* "model" member when it is a string, else NULL */
	bool stream;                       /* "stream": true */
	bool include_usage;                /* "stream_options": {"include_usage": true} */
	bool has_max_tokens; int64_t max_tokens; /* "max_tokens" (or "max_completion_tokens" if
	                                    * max_tokens is absent) when a non-negative JSON
	                                    * integer (no fraction, no exponent) that fits int64 */
	size_t obj_end;                    /* offset of the top-level closing '}' */
	/* for the splice: the stream_options member (of any type), and its include_usage
	 * member when stream_options is an object that has one */
	const struct rj_field *stream_options;
	size_t iu_off, iu_len; bool has_iu; /* raw span of stream_options.include_usage's value */
	size_t so_end;                     /* offset of stream_options object's closing '}' when
	                                    * it is an object */
	/* private: decoded strings go to a chain of arena chunks (arena is the newest, each
	 * pointing to the one before; arena_len/arena_cap are the newest's), so a string never
	 * moves once written. The first chunk also holds the field array until it outgrows
	 * it; then the array doubles in an allocation of its own (fields_cap tells which). */
	char *arena; size_t arena_len, arena_cap;
	size_t fields_cap;
};

/* Read body[0..len). Fills rj (zeroed here first); returns rj->result.
 * RJ_NOT_JSON: not valid JSON (grammar, bad UTF-8, lone surrogates, control characters in
 * strings, a NUL (\u0000) in a key, trailing garbage, an empty body).
 * RJ_NOT_OBJECT: valid JSON but not an object at the top.
 * RJ_DUPLICATE_KEY: an object at any depth has two members whose decoded keys are equal.
 * RJ_TOO_DEEP: arrays and objects nested beyond REQJSON_MAX_DEPTH.
 * Errors are reported for the first fault in body order, as jansson does. On anything but
 * RJ_OK the readings are left empty (no fields, model NULL, flags false). The caller owns
 * rj's memory and always calls reqjson_free afterwards. */
enum rj_result reqjson_parse(struct reqjson *rj, const char *body, size_t len);
void reqjson_free(struct reqjson *rj);

/* The top-level member with that decoded key (a C string), or NULL. Linear: for the few
 * look-ups a request needs, not for walking a big object. */
const struct rj_field *reqjson_get(const struct reqjson *rj, const char *key);

/* A number member as double (false when f is not a number). Out-of-range values give
 * +-HUGE_VAL or 0 as strtod does. body is the parsed body. */
bool reqjson_number(const struct reqjson *rj, const struct rj_field *f, const char *body, double *out);
/* A number member as int64: false when f is not a number, has a fraction or an exponent
 * (1.0 and 1e3 are not integers, as for jansson) or does not fit. */
bool reqjson_int64(const struct reqjson *rj, const struct rj_field *f, const char *body, int64_t *out);

/* A member to add when the client did not send it: key as plain text (UTF-8, escaped when
 * written), value as JSON text of value_len bytes (trusted: it comes from the route file). */
struct rj_add { const char *key; const char *value_json; size_t value_len; };

/* The body with `adds` inserted (only those whose key is absent; a key repeated in adds is
 * added once, the first) and, when set_include_usage, stream_options.include_usage made
 * true: stream_options is added when absent, replaced by {"include_usage":true} when it is
 * not an object, given an include_usage member when it lacks one, or has its include_usage
 * value replaced by `true` when that value is anything else (an add for "stream_options"
 * is then ignored). Added members go after the last member, in adds order, with
 * stream_options last. Every other byte of the client's body is kept exactly (numbers,
 * whitespace, escapes).
 * Returns a malloc'd buffer the caller frees, with *out_len; or NULL with *out_len = 0 when
 * nothing needed changing, or NULL with *out_len = SIZE_MAX when it could not be done (out
 * of memory, or rj->result is not RJ_OK). */
char *reqjson_splice(const struct reqjson *rj, const char *body, size_t len,
                     const struct rj_add *adds, size_t n_adds, bool set_include_usage,
                     size_t *out_len);

/* The first byte in [p, end) that ends a plain run of JSON string content: '"', '\\', a
 * control byte (< 0x20) or any byte of a multi-byte UTF-8 sequence (>= 0x80); end when
 * there is none. Message text is most of a request's and an answer's bytes, so this is
 * the JSON readers' inner loop (reqjson.c, usage.c): it reads 16 bytes a step with SSE2,
 * else 8 (and the last few one by one), never a byte at or past end. */
static inline const unsigned char *reqjson_plain_end(const unsigned char *p,
                                                     const unsigned char *end)
{
#ifdef __SSE2__
	const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
	const __m128i space = _mm_set1_epi8(' ');

	while (end - p >= 16) {
		__m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
		/* the compare is signed: bytes from 0x80 up are negative, so "below ' '" flags
		 * them together with the control bytes */
		__m128i stop = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote),
		                                         _mm_cmpeq_epi8(x, bslash)),
		                            _mm_cmplt_epi8(x, space));
		unsigned m = (unsigned)_mm_movemask_epi8(stop);

		if (m)
			return p + __builtin_ctz(m);   /* bit i is byte i */
		p += 16;
	}
#endif
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	/* 8 bytes a step: a byte below 0x80 that is none of the stops leaves no high bit and
	 * no borrow in any of the three tests, so the lowest flagged byte is the first stop
	 * (a borrow can flag bytes above it falsely: they are not looked at). The word's
	 * first byte is its lowest on a little-endian machine. */
	while (end - p >= 8) {
		const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
		uint64_t x, q, b, m;

		memcpy(&x, p, 8);
		q = x ^ (ones * '"');
		b = x ^ (ones * '\\');
		m = (x | (x - ones * 0x20) | (q - ones) | (b - ones)) & highs;
		if (m)
			return p + __builtin_ctzll(m) / 8;
		p += 8;
	}
#endif
	while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
		p++;
	return p;
}


#endif
