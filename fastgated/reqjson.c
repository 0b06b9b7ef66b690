/* Request JSON: one reading, and byte-preserving edits; see reqjson.h. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "reqjson.h"

/* A kept first block is poisoned under AddressSanitizer, so that a use after
 * reqjson_free is still reported as one. */
#if defined(__SANITIZE_ADDRESS__)
#define RJ_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RJ_ASAN 1
#endif
#endif
#ifdef RJ_ASAN
#include <sanitizer/asan_interface.h>
#define RJ_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define RJ_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define RJ_POISON(p, n) ((void)(p), (void)(n))
#define RJ_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* An object keeps its keys in a list compared one by one until it has this many members;
 * past that a hash table keeps duplicate detection linear for objects of any size. */
#define RJ_LINEAR_KEYS 16
/* The first block holds the fields and the decoded top-level strings of a usual request,
 * and stays under 1 KiB, the size glibc's per-thread cache serves fastest. */
#define RJ_ARENA_FIRST 320
#define RJ_FIELDS_FIRST 12

/* A chunk of the arena: decoded strings are written into data and never moved, so the
 * pointers in rj_field stay good while later strings go to newer chunks. */
struct rj_chunk {
	struct rj_chunk *prev;
	char data[];
};

/* A key of an object being read: in the body when it had no escapes, else decoded into
 * the arena. hash is set only once the object has gone over to its hash table. */
struct rj_key {
	const char *p;
	size_t len;
	uint64_t hash;
};

/* What an object is to the reading: the top level (members become fields),
 * stream_options (its include_usage is noted) or anything else. */
enum rj_role { ROLE_NESTED, ROLE_TOP, ROLE_SO };

/* An object being read. Its keys are P->keys[first .. n_keys) (the keys of the objects
 * around it come before). Past RJ_LINEAR_KEYS members, table (tcap slots, open
 * addressing) holds for each used slot the key's index from first, plus one. */
struct rj_frame {
	size_t first;
	size_t *table, tcap;
};

/* The reading's state. The cursor is not in it: each step takes the position it starts
 * at and returns the one after what it read (NULL on a fault, the fault in err), so the
 * cursor stays in a register instead of being stored and loaded again at every byte
 * looked at. */
struct rj_parser {
	struct reqjson *rj;
	const unsigned char *base, *end;
	enum rj_result err;               /* why a step returned NULL */
	struct rj_key *keys;
	size_t n_keys, keys_cap;
	uint64_t seed;
	/* the top-level members the readings need, by index into rj->fields */
	size_t i_model, i_stream, i_so, i_max, i_maxc;
	struct rj_key keys_inline[32];
};

static const unsigned char is_ws[256] = { [' '] = 1, ['\t'] = 1, ['\n'] = 1, ['\r'] = 1 };
/* A hex digit's value plus one; 0 for anything else. */
static const unsigned char hexval1[256] = {
	['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5, ['5'] = 6, ['6'] = 7, ['7'] = 8,
	['8'] = 9, ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15,
	['f'] = 16, ['A'] = 11, ['B'] = 12, ['C'] = 13, ['D'] = 14, ['E'] = 15, ['F'] = 16,
};

static const unsigned char *parse_value(struct rj_parser *P, const unsigned char *p,
                                       unsigned depth, enum rj_role child, enum rj_type *type);

/* The byte at *pp once whitespace is skipped (*pp moved to it), or -1 at the end. Most
 * bodies have no whitespace between tokens, and most of the others one space (after ':'
 * and ',', as Python's json.dumps writes them): two tests settle those. */
static inline int peek(const unsigned char **pp, const unsigned char *end)
{
	const unsigned char *p = *pp;

	if (__builtin_expect(p < end && *p > ' ', 1))
		return *p;
	if (end - p >= 2 && *p == ' ' && p[1] > ' ') {
		*pp = p + 1;
		return p[1];
	}
	while (p < end && is_ws[*p])
		p++;
	*pp = p;
	return p < end ? *p : -1;
}

/* A fault: noted for reqjson_parse, and NULL for the step to return. */
static inline const unsigned char *fail(struct rj_parser *P, enum rj_result r)
{
	P->err = r;
	return NULL;
}

/* The length of the well-formed UTF-8 sequence at p (no overlong forms, no surrogates,
 * nothing above U+10FFFF), or 0: jansson refuses the same bytes. */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end)
{
	unsigned c = p[0];
	size_t avail = (size_t)(end - p);
	unsigned lo = 0x80, hi = 0xbf;
	size_t n;

	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	if (avail < n)
		return 0;
	/* the second byte's range is what excludes overlongs, surrogates and > U+10FFFF */
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	return n;
}

/* Four hex digits at p as a number, or -1. */
static inline long hex4(const unsigned char *p)
{
	unsigned a = hexval1[p[0]], b = hexval1[p[1]], c = hexval1[p[2]], d = hexval1[p[3]];

	if (!a || !b || !c || !d)
		return -1;
	return (long)(a - 1) << 12 | (long)(b - 1) << 8 | (long)(c - 1) << 4 | (long)(d - 1);
}

/* The rest of scan_string, from p, the first byte that ended its plain run: escapes,
 * UTF-8 sequences and the faults. Surrogate escapes must come as a high-low pair, as
 * jansson requires. */
static const unsigned char *scan_string_rest(struct rj_parser *P, const unsigned char *p,
                                             bool *has_esc)
{
	const unsigned char *end = P->end;
	bool esc = false;

	for (;;) {
		if (p >= end)
			return fail(P, RJ_NOT_JSON);
		if (*p == '"')
			break;
		if (*p == '\\') {
			long cp;

			esc = true;
			if (end - p < 2)
				return fail(P, RJ_NOT_JSON);
			switch (p[1]) {
			case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
				p += 2;
				goto plain;
			case 'u':
				break;
			default:
				return fail(P, RJ_NOT_JSON);
			}
			if (end - p < 6 || (cp = hex4(p + 2)) < 0)
				return fail(P, RJ_NOT_JSON);
			p += 6;
			if (cp >= 0xdc00 && cp <= 0xdfff)
				return fail(P, RJ_NOT_JSON);
			if (cp >= 0xd800 && cp <= 0xdbff) {
				if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || (cp = hex4(p + 2)) < 0 ||
				    cp < 0xdc00 || cp > 0xdfff)
					return fail(P, RJ_NOT_JSON);
				p += 6;
			}
		} else if (*p < 0x20) {
			return fail(P, RJ_NOT_JSON);
		} else {
			size_t n = utf8_seq(p, end);

			if (!n)
				return fail(P, RJ_NOT_JSON);
			p += n;
		}
plain:
		p = reqjson_plain_end(p, end);
	}
	*has_esc = esc;
	return p;
}

/* Check the string whose opening quote is at p: its closing quote, or NULL. *has_esc:
 * it has escapes (only those strings need decoding). Most strings are plain ASCII up to
 * their closing quote: that case is found here, inline, and anything else is handed to
 * scan_string_rest. */
static inline const unsigned char *scan_string(struct rj_parser *P, const unsigned char *p,
                                               const unsigned char *end, bool *has_esc)
{
	p = reqjson_plain_end(p + 1, end);
	if (p < end && *p == '"') {
		*has_esc = false;
		return p;
	}
	return scan_string_rest(P, p, has_esc);
}

/* Write code point cp as UTF-8 at o; the number of bytes. */
static size_t utf8_put(char *o, unsigned long cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xc0 | cp >> 6);
		o[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xe0 | cp >> 12);
		o[1] = (char)(0x80 | (cp >> 6 & 0x3f));
		o[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | cp >> 18);
	o[1] = (char)(0x80 | (cp >> 12 & 0x3f));
	o[2] = (char)(0x80 | (cp >> 6 & 0x3f));
	o[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/* Decode the content [s, e) of a string scan_string accepted into out (room for e - s
 * bytes: no escape decodes longer than it is written); the decoded length. */
static size_t decode_string(const unsigned char *s, const unsigned char *e, char *out)
{
	char *o = out;

	while (s < e) {
		const unsigned char *bs = memchr(s, '\\', (size_t)(e - s));
		size_t n = (size_t)((bs ? bs : e) - s);
		unsigned long cp;

		memcpy(o, s, n);
		o += n;
		if (!bs)
			break;
		s = bs + 2;
		switch (bs[1]) {
		case 'b': *o++ = '\b'; break;
		case 'f': *o++ = '\f'; break;
		case 'n': *o++ = '\n'; break;
		case 'r': *o++ = '\r'; break;
		case 't': *o++ = '\t'; break;
		case 'u':
			cp = (unsigned long)hex4(bs + 2);
			s = bs + 6;
			if (cp >= 0xd800 && cp <= 0xdbff) {
				cp = 0x10000 + ((cp - 0xd800) << 10) + ((unsigned long)hex4(s + 2) - 0xdc00);
				s += 6;
			}
			o += utf8_put(o, cp);
			break;
		default:   /* '"', '\\', '/' */
			*o++ = (char)bs[1];
			break;
		}
	}
	return (size_t)(o - out);
}

/* Room for need bytes in the arena, or NULL. A full chunk is left as it is and a new one
 * (twice as big, or big enough) is put in front, so nothing written moves. */
static char *arena_room(struct reqjson *rj, size_t need)
{
	struct rj_chunk *c;
	size_t cap;

	if (rj->arena && rj->arena_cap - rj->arena_len >= need)
		return ((struct rj_chunk *)(void *)rj->arena)->data + rj->arena_len;
	cap = rj->arena_cap ? rj->arena_cap : RJ_ARENA_FIRST / 2;
	do
		cap *= 2;
	while (cap < need && cap < SIZE_MAX / 4);
	if (cap < need || !(c = malloc(sizeof(*c) + cap)))
		return NULL;
	c->prev = (struct rj_chunk *)(void *)rj->arena;
	rj->arena = (char *)c;
	rj->arena_cap = cap;
	rj->arena_len = 0;
	return c->data;
}

/* memcpy(o, s, n) for the short strings a request's top level has (keys, model names),
 * without the call, which costs more than such a copy: two overlapping loads and stores,
 * all within [s, s + n) and [o, o + n). */
static inline void copy_short(char *o, const unsigned char *s, size_t n)
{
	if (n > 16) {
		memcpy(o, s, n);
	} else if (n >= 8) {
		uint64_t a, b;

		memcpy(&a, s, 8);
		memcpy(&b, s + n - 8, 8);
		memcpy(o, &a, 8);
		memcpy(o + n - 8, &b, 8);
	} else if (n >= 4) {
		uint32_t a, b;

		memcpy(&a, s, 4);
		memcpy(&b, s + n - 4, 4);
		memcpy(o, &a, 4);
		memcpy(o + n - 4, &b, 4);
	} else {
		for (size_t i = 0; i < n; i++)
			o[i] = (char)s[i];
	}
}

/* Decode the string content [s, e) into the arena, NUL-terminated; NULL when out of
 * memory. esc: it has escapes (otherwise it is copied as it is). */
static inline const char *arena_string(struct reqjson *rj, const unsigned char *s,
                                       const unsigned char *e, bool esc, size_t *len)
{
	size_t raw = (size_t)(e - s), n;
	char *o = arena_room(rj, raw + 1);

	if (!o)
		return NULL;
	if (esc) {
		n = decode_string(s, e, o);
	} else {
		copy_short(o, s, raw);
		n = raw;
	}
	o[n] = '\0';
	rj->arena_len += n + 1;
	*len = n;
	return o;
}

/* A hash of a key under a per-process random seed, so that a client cannot choose keys
 * that all land in one slot and make its object's duplicate check quadratic. */
static uint64_t key_hash(uint64_t seed, const char *k, size_t len)
{
	uint64_t h = seed ^ (len * 0x9e3779b97f4a7c15ULL);

	for (; len >= 8; k += 8, len -= 8) {
		uint64_t w;

		memcpy(&w, k, 8);
		h = (h ^ w) * 0xff51afd7ed558ccdULL;
		h ^= h >> 32;
	}
	for (; len; k++, len--)
		h = (h ^ (unsigned char)*k) * 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 29;
	h *= 0x9e3779b97f4a7c15ULL;
	return h ^ (h >> 32);
}

/* The seed for key_hash: random once per process (jansson seeds its tables the same
 * way), falling back to an address when the kernel gives nothing. */
static uint64_t hash_seed(void)
{
	static uint64_t seed;
	uint64_t s = __atomic_load_n(&seed, __ATOMIC_RELAXED);

	if (s)
		return s;
	if (getrandom(&s, sizeof(s), GRND_NONBLOCK) != (ssize_t)sizeof(s))
		s = (uint64_t)(uintptr_t)&s * 0x9e3779b97f4a7c15ULL;
	s |= 1;
	__atomic_store_n(&seed, s, __ATOMIC_RELAXED);
	return s;
}

/* (Re)build the hash table of an object with n keys, at least four slots a key, so a
 * probe ends after a slot or two. */
static enum rj_result table_build(struct rj_parser *P, struct rj_frame *fr, size_t n)
{
	struct rj_key *ks = P->keys + fr->first;
	size_t cap = 64, *t;

	while (cap < 4 * n)
		cap *= 2;
	t = calloc(cap, sizeof(*t));
	if (!t)
		return RJ_NOMEM;
	if (!fr->table) {   /* going over from the list: hash the keys seen so far */
		P->seed = hash_seed();
		for (size_t i = 0; i < n; i++)
			ks[i].hash = key_hash(P->seed, ks[i].p, ks[i].len);
	}
	for (size_t i = 0; i < n; i++) {
		size_t j = ks[i].hash & (cap - 1);

		while (t[j])
			j = (j + 1) & (cap - 1);
		t[j] = i + 1;
	}
	free(fr->table);
	fr->table = t;
	fr->tcap = cap;
	return RJ_OK;
}

/* Add key k to the open object fr: RJ_DUPLICATE_KEY when the object already has it. */
static enum rj_result key_add_rest(struct rj_parser *P, struct rj_frame *fr, const char *k,
                                   size_t len)
{
	size_t n = P->n_keys - fr->first;
	uint64_t h = 0;
	struct rj_key *ks;

	if (fr->table) {
		struct rj_key *e;

		h = key_hash(P->seed, k, len);
		ks = P->keys + fr->first;
		for (size_t j = h & (fr->tcap - 1); fr->table[j]; j = (j + 1) & (fr->tcap - 1)) {
			e = &ks[fr->table[j] - 1];
			if (e->hash == h && e->len == len && memcmp(e->p, k, len) == 0)
				return RJ_DUPLICATE_KEY;
		}
	} else {
		ks = P->keys + fr->first;
		for (size_t i = 0; i < n; i++)
			if (ks[i].len == len && memcmp(ks[i].p, k, len) == 0)
				return RJ_DUPLICATE_KEY;
	}
	if (P->n_keys == P->keys_cap) {
		size_t cap = 2 * P->keys_cap;
		struct rj_key *nk;

		if (P->keys == P->keys_inline) {
			nk = malloc(cap * sizeof(*nk));
			if (nk)
				memcpy(nk, P->keys, P->n_keys * sizeof(*nk));
		} else {
			nk = cap < SIZE_MAX / sizeof(*nk) ? realloc(P->keys, cap * sizeof(*nk)) : NULL;
		}
		if (!nk)
			return RJ_NOMEM;
		P->keys = nk;
		P->keys_cap = cap;
	}
	P->keys[P->n_keys++] = (struct rj_key){ k, len, h };
	n++;
	if (fr->table) {
		size_t j = h & (fr->tcap - 1);

		if (4 * n > 2 * fr->tcap)   /* over half full: twice the room */
			return table_build(P, fr, n);
		while (fr->table[j])
			j = (j + 1) & (fr->tcap - 1);
		fr->table[j] = n;
		return RJ_OK;
	}
	return n > RJ_LINEAR_KEYS ? table_build(P, fr, n) : RJ_OK;
}

/* key_add_rest for the usual object: few keys, compared one by one, and room for one
 * more in P->keys. Inline, as it is done for every key. */
static inline enum rj_result key_add(struct rj_parser *P, struct rj_frame *fr, const char *k,
                                     size_t len)
{
	size_t n = P->n_keys - fr->first;
	const struct rj_key *ks = P->keys + fr->first;

	if (fr->table || n >= RJ_LINEAR_KEYS || P->n_keys == P->keys_cap)
		return key_add_rest(P, fr, k, len);
	for (size_t i = 0; i < n; i++)
		if (ks[i].len == len && memcmp(ks[i].p, k, len) == 0)
			return RJ_DUPLICATE_KEY;
	P->keys[P->n_keys++] = (struct rj_key){ k, len, 0 };
	return RJ_OK;
}

#define RJ_FIRST_SIZE (sizeof(struct rj_chunk) + RJ_FIELDS_FIRST * sizeof(struct rj_field) + \
                       RJ_ARENA_FIRST)

/* The first block of the last reading a thread freed, kept for its next reading: its
 * malloc and free were ~130 instructions a request, the loop's next request takes it back
 * for ~10. One block a thread, freed by spare_key's destructor when the thread ends
 * (spare_state: 0 before the destructor is set up for the thread, 1 after, 2 once it ran,
 * when nothing is kept any more). */
static __thread struct rj_chunk *spare_first;
static __thread unsigned char spare_state;
static pthread_key_t spare_key;
static pthread_once_t spare_once = PTHREAD_ONCE_INIT;
static bool spare_key_made;

static void spare_release(void *unused)
{
	(void)unused;
	spare_state = 2;
	if (spare_first) {
		RJ_UNPOISON(spare_first, RJ_FIRST_SIZE);
		free(spare_first);
		spare_first = NULL;
	}
}

static void spare_key_make(void)
{
	spare_key_made = pthread_key_create(&spare_key, spare_release) == 0;
}

/* A first block: the thread's kept one, or a new one; NULL when out of memory. */
static struct rj_chunk *first_take(void)
{
	struct rj_chunk *c = spare_first;

	if (!c)
		return malloc(RJ_FIRST_SIZE);
	spare_first = NULL;
	RJ_UNPOISON(c, RJ_FIRST_SIZE);
	return c;
}

/* A first block its reading is done with: kept when the thread keeps none yet. */
static void first_give(struct rj_chunk *c)
{
	if (spare_first || spare_state == 2) {
		free(c);
		return;
	}
	if (spare_state == 0) {
		/* the key's value only has to be non-NULL for the destructor to run */
		pthread_once(&spare_once, spare_key_make);
		if (!spare_key_made || pthread_setspecific(spare_key, &spare_first) != 0) {
			free(c);
			return;
		}
		spare_state = 1;
	}
	RJ_POISON(c, RJ_FIRST_SIZE);
	spare_first = c;
}

/* The field array for the first RJ_FIELDS_FIRST members and the first arena chunk, in one
 * block: a usual request then costs no malloc (first_take). -1 when out of memory. */
static int first_block(struct reqjson *rj)
{
	size_t fbytes = RJ_FIELDS_FIRST * sizeof(struct rj_field);
	struct rj_chunk *c = first_take();

	if (!c)
		return -1;
	c->prev = NULL;
	rj->arena = (char *)c;
	rj->arena_len = fbytes;
	rj->arena_cap = fbytes + RJ_ARENA_FIRST;
	rj->fields = (struct rj_field *)(void *)c->data;
	rj->fields_cap = RJ_FIELDS_FIRST;
	return 0;
}

/* A new top-level field; NULL when out of memory. The array doubles when full, moving out
 * of the first block to an allocation of its own (reqjson_free tells them apart by
 * fields_cap). */
static struct rj_field *field_new(struct reqjson *rj)
{
	if (rj->n_fields == rj->fields_cap) {
		size_t cap = 2 * rj->fields_cap;
		struct rj_field *f = NULL;

		if (cap < SIZE_MAX / sizeof(*f)) {
			if (rj->fields_cap == RJ_FIELDS_FIRST) {
				if ((f = malloc(cap * sizeof(*f))))
					memcpy(f, rj->fields, rj->n_fields * sizeof(*f));
			} else {
				f = realloc(rj->fields, cap * sizeof(*f));
			}
		}
		if (!f)
			return NULL;
		rj->fields = f;
		rj->fields_cap = cap;
	}
	return memset(&rj->fields[rj->n_fields++], 0, sizeof(struct rj_field));
}

/* Note a top-level key the readings need, by its index (the field array may still move). */
static void note_top_key(struct rj_parser *P, const char *k, size_t len, size_t i)
{
	switch (len) {
	case 5:
		if (memcmp(k, "model", 5) == 0)
			P->i_model = i;
		break;
	case 6:
		if (memcmp(k, "stream", 6) == 0)
			P->i_stream = i;
		break;
	case 10:
		if (memcmp(k, "max_tokens", 10) == 0)
			P->i_max = i;
		break;
	case 14:
		if (memcmp(k, "stream_options", 14) == 0)
			P->i_so = i;
		break;
	case 21:
		if (memcmp(k, "max_completion_tokens", 21) == 0)
			P->i_maxc = i;
		break;
	}
}

/* A number at p: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?, of any size; the
 * byte after it, or NULL. */
static const unsigned char *parse_number(struct rj_parser *P, const unsigned char *p)
{
	const unsigned char *end = P->end;

	if (*p == '-')
		p++;
	if (p >= end || *p < '0' || *p > '9')
		return fail(P, RJ_NOT_JSON);
	if (*p++ != '0')
		while (p < end && *p >= '0' && *p <= '9')
			p++;
	if (p < end && *p == '.') {
		p++;
		if (p >= end || *p < '0' || *p > '9')
			return fail(P, RJ_NOT_JSON);
		while (p < end && *p >= '0' && *p <= '9')
			p++;
	}
	if (p < end && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < end && (*p == '+' || *p == '-'))
			p++;
		if (p >= end || *p < '0' || *p > '9')
			return fail(P, RJ_NOT_JSON);
		while (p < end && *p >= '0' && *p <= '9')
			p++;
	}
	/* "01" is not a number followed by "1": the grammar has nothing that may follow a
	 * number directly but whitespace and punctuation, which the caller checks */
	return p;
}

/* The object whose '{' is at p, at nesting depth `depth`; the byte after its '}', or
 * NULL. Duplicates are looked for as each key is read (before its value), so the fault
 * reported is the first in body order, as jansson reports it. Always inlined into
 * parse_top and parse_object, so that each is compiled for its roles: the top level's
 * fields and copies then cost the nested objects nothing (not even registers). */
static inline __attribute__((always_inline)) const unsigned char *
object_members(struct rj_parser *P, const unsigned char *p, unsigned depth, enum rj_role role)
{
	struct rj_frame fr = { .first = P->n_keys };
	struct reqjson *rj = P->rj;
	const unsigned char *end = P->end;
	enum rj_result r;
	int c;

	p++;
	c = peek(&p, end);
	if (c == '}')
		goto close;
	for (;;) {
		const unsigned char *ks, *ke;
		const char *k;
		size_t kn, voff;
		enum rj_type type;
		enum rj_role child = ROLE_NESTED;   /* the role of an object value */
		struct rj_field *f = NULL;
		bool is_iu = false, esc;

		if (c != '"')
			goto not_json;
		ks = p + 1;
		if (!(ke = scan_string(P, p, end, &esc)))
			goto fault;
		if (role == ROLE_TOP || esc) {
			/* top-level keys are kept; others only when escapes make them differ from
			 * their bytes */
			k = arena_string(rj, ks, ke, esc, &kn);
			if (!k) {
				P->err = RJ_NOMEM;
				goto fault;
			}
			if (esc && memchr(k, '\0', kn))
				goto not_json;
		} else {
			k = (const char *)ks;
			kn = (size_t)(ke - ks);
		}
		if ((r = key_add(P, &fr, k, kn)) != RJ_OK) {
			P->err = r;
			goto fault;
		}
		p = ke + 1;
		if (peek(&p, end) != ':')
			goto not_json;
		p++;
		if ((c = peek(&p, end)) < 0)
			goto not_json;
		voff = (size_t)(p - P->base);
		if (role == ROLE_TOP) {
			size_t i = rj->n_fields;

			if (!(f = field_new(rj))) {
				P->err = RJ_NOMEM;
				goto fault;
			}
			f->key = k;
			f->key_len = kn;
			f->val_off = voff;
			note_top_key(P, k, kn, i);
			/* f stays good: only the top-level object adds fields */
			if (P->i_so == i)
				child = ROLE_SO;
		} else {
			is_iu = role == ROLE_SO && kn == 13 && memcmp(k, "include_usage", 13) == 0;
		}
		if (c == '"') {
			/* a string, the usual value: read here, without a call */
			const unsigned char *ve = scan_string(P, p, end, &esc);

			if (!ve)
				goto fault;
			type = RJ_STRING;
			p = ve + 1;
		} else if (c == '-' || (c >= '0' && c <= '9')) {
			/* a number, as often as not (temperature, max_tokens): no call either */
			type = RJ_NUMBER;
			if (!(p = parse_number(P, p)))
				goto fault;
		} else {
			if (!(p = parse_value(P, p, depth, child, &type)))
				goto fault;
		}
		if (f) {
			f->type = type;
			f->val_len = (size_t)(p - P->base) - voff;
			if (type == RJ_STRING) {
				f->str = arena_string(rj, P->base + voff + 1, p - 1, esc, &f->str_len);
				if (!f->str) {
					P->err = RJ_NOMEM;
					goto fault;
				}
			}
		} else if (is_iu) {
			rj->has_iu = true;
			rj->iu_off = voff;
			rj->iu_len = (size_t)(p - P->base) - voff;
			rj->include_usage = type == RJ_TRUE;
		}
		c = peek(&p, end);
		if (c == ',') {
			p++;
			c = peek(&p, end);
			continue;
		}
		if (c == '}')
			break;
		goto not_json;
	}
close:
	if (role == ROLE_TOP)
		rj->obj_end = (size_t)(p - P->base);
	else if (role == ROLE_SO)
		rj->so_end = (size_t)(p - P->base);
	p++;
	goto done;
not_json:
	P->err = RJ_NOT_JSON;
fault:
	p = NULL;
done:
	if (fr.table)
		free(fr.table);
	P->n_keys = fr.first;
	return p;
}

/* The top-level object, whose '{' is at p. */
static const unsigned char *parse_top(struct rj_parser *P, const unsigned char *p)
{
	return object_members(P, p, 1, ROLE_TOP);
}

/* An object below the top, stream_options' value (so) or any other. */
static const unsigned char *parse_object(struct rj_parser *P, const unsigned char *p,
                                         unsigned depth, bool so)
{
	return object_members(P, p, depth, so ? ROLE_SO : ROLE_NESTED);
}

/* The array whose '[' is at p; the byte after its ']', or NULL. */
static const unsigned char *parse_array(struct rj_parser *P, const unsigned char *p,
                                        unsigned depth)
{
	const unsigned char *end = P->end;
	enum rj_type type;
	int c;

	p++;
	c = peek(&p, end);
	if (c == ']')
		return p + 1;
	for (;;) {
		if (c < 0)
			return fail(P, RJ_NOT_JSON);
		if (!(p = parse_value(P, p, depth, ROLE_NESTED, &type)))
			return NULL;
		c = peek(&p, end);
		if (c == ',') {
			p++;
			c = peek(&p, end);
			continue;
		}
		if (c == ']')
			return p + 1;
		return fail(P, RJ_NOT_JSON);
	}
}

/* A literal word (true, false, null) at p; the byte after it, or NULL. */
static const unsigned char *parse_word(struct rj_parser *P, const unsigned char *p,
                                       const char *w, size_t n)
{
	if ((size_t)(P->end - p) < n || memcmp(p, w, n) != 0)
		return fail(P, RJ_NOT_JSON);
	return p + n;
}

/* The value at p (not whitespace, not the end), inside a container at `depth`; child is
 * the role an object value takes. The byte after the value, or NULL. */
static const unsigned char *parse_value(struct rj_parser *P, const unsigned char *p,
                                        unsigned depth, enum rj_role child, enum rj_type *type)
{
	bool esc;

	switch (*p) {
	case '"':
		*type = RJ_STRING;
		return (p = scan_string(P, p, P->end, &esc)) ? p + 1 : NULL;
	case '{':
		*type = RJ_OBJECT;
		if (depth >= REQJSON_MAX_DEPTH)
			return fail(P, RJ_TOO_DEEP);
		return parse_object(P, p, depth + 1, child == ROLE_SO);
	case '[':
		*type = RJ_ARRAY;
		if (depth >= REQJSON_MAX_DEPTH)
			return fail(P, RJ_TOO_DEEP);
		return parse_array(P, p, depth + 1);
	case 't':
		*type = RJ_TRUE;
		return parse_word(P, p, "true", 4);
	case 'f':
		*type = RJ_FALSE;
		return parse_word(P, p, "false", 5);
	case 'n':
		*type = RJ_NULL;
		return parse_word(P, p, "null", 4);
	default:
		*type = RJ_NUMBER;
		return parse_number(P, p);
	}
}

/* The readings, from the top-level members noted while parsing. */
static void read_fields(struct rj_parser *P)
{
	struct reqjson *rj = P->rj;

	if (P->i_model != SIZE_MAX && rj->fields[P->i_model].type == RJ_STRING)
		rj->model = &rj->fields[P->i_model];
	rj->stream = P->i_stream != SIZE_MAX && rj->fields[P->i_stream].type == RJ_TRUE;
	if (P->i_so != SIZE_MAX)
		rj->stream_options = &rj->fields[P->i_so];
	if (P->i_max != SIZE_MAX || P->i_maxc != SIZE_MAX) {
		const struct rj_field *f = &rj->fields[P->i_max != SIZE_MAX ? P->i_max : P->i_maxc];
		int64_t v;

		if (reqjson_int64(rj, f, (const char *)P->base, &v) && v >= 0) {
			rj->has_max_tokens = true;
			rj->max_tokens = v;
		}
	}
}

enum rj_result reqjson_parse(struct reqjson *rj, const char *body, size_t len)
{
	struct rj_parser P;
	const unsigned char *p;
	enum rj_type type;
	enum rj_result r = RJ_OK;
	int c;

	memset(rj, 0, sizeof(*rj));
	P.rj = rj;
	P.base = (const unsigned char *)body;
	P.end = P.base + len;
	P.err = RJ_OK;
	P.keys = P.keys_inline;
	P.n_keys = 0;
	P.keys_cap = sizeof(P.keys_inline) / sizeof(P.keys_inline[0]);
	P.seed = 0;
	P.i_model = P.i_stream = P.i_so = P.i_max = P.i_maxc = SIZE_MAX;

	p = P.base;
	c = peek(&p, P.end);
	if (c < 0) {
		r = RJ_NOT_JSON;
		goto done;
	}
	if (c == '{') {
		if (first_block(rj) < 0) {
			r = RJ_NOMEM;
			goto done;
		}
		p = parse_top(&P, p);
		type = RJ_OBJECT;
	} else {
		p = parse_value(&P, p, 0, ROLE_NESTED, &type);
	}
	if (!p)
		r = P.err;
	else if (peek(&p, P.end) >= 0)
		r = RJ_NOT_JSON;
	else if (type != RJ_OBJECT)
		r = RJ_NOT_OBJECT;
	else
		read_fields(&P);
done:
	if (P.keys != P.keys_inline)
		free(P.keys);
	if (r != RJ_OK) {
		/* nothing half-read is left to be used; the memory stays for reqjson_free */
		rj->n_fields = 0;
		rj->model = rj->stream_options = NULL;
		rj->stream = rj->include_usage = rj->has_max_tokens = rj->has_iu = false;
		rj->max_tokens = 0;
		rj->obj_end = rj->iu_off = rj->iu_len = rj->so_end = 0;
	}
	rj->result = r;
	return r;
}

void reqjson_free(struct reqjson *rj)
{
	struct rj_chunk *c = (struct rj_chunk *)(void *)rj->arena;

	/* a reading that stayed in its first block (one chunk, the fields in it) gives it
	 * back to be kept; any other frees all it has */
	if (c && !c->prev && rj->fields_cap == RJ_FIELDS_FIRST) {
		first_give(c);
		c = NULL;
	}
	while (c) {
		struct rj_chunk *prev = c->prev;

		free(c);
		c = prev;
	}
	if (rj->fields_cap > RJ_FIELDS_FIRST)
		free(rj->fields);
	memset(rj, 0, sizeof(*rj));
}

const struct rj_field *reqjson_get(const struct reqjson *rj, const char *key)
{
	size_t n = strlen(key);

	for (size_t i = 0; i < rj->n_fields; i++)
		if (rj->fields[i].key_len == n && memcmp(rj->fields[i].key, key, n) == 0)
			return &rj->fields[i];
	return NULL;
}

bool reqjson_number(const struct reqjson *rj, const struct rj_field *f, const char *body, double *out)
{
	char small[64], *buf = small, *end;
	bool ok = false;

	(void)rj;
	if (!f || f->type != RJ_NUMBER)
		return false;
	/* the value is not NUL-terminated in the body: strtod reads a copy */
	if (f->val_len >= sizeof(small) && !(buf = malloc(f->val_len + 1)))
		return false;
	memcpy(buf, body + f->val_off, f->val_len);
	buf[f->val_len] = '\0';
	*out = strtod(buf, &end);
	ok = end == buf + f->val_len;   /* a locale whose decimal point is not '.' stops early */
	if (buf != small)
		free(buf);
	return ok;
}

bool reqjson_int64(const struct reqjson *rj, const struct rj_field *f, const char *body, int64_t *out)
{
	const char *p, *end;
	bool neg;
	uint64_t v = 0, lim;

	(void)rj;
	if (!f || f->type != RJ_NUMBER)
		return false;
	p = body + f->val_off;
	end = p + f->val_len;
	neg = *p == '-';
	if (neg)
		p++;
	lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (; p < end; p++) {
		unsigned d = (unsigned)(*p - '0');

		if (d > 9 || v > (lim - d) / 10)   /* '.', 'e' or 'E', or too big */
			return false;
		v = v * 10 + d;
	}
	*out = neg ? (int64_t)(0 - v) : (int64_t)v;
	return true;
}

/* The JSON string for key at o ("..." with '"', '\\' and control bytes escaped); the
 * bytes written, at most 6 a byte of key plus 2. */
static size_t put_key(char *o, const char *key)
{
	static const char hex[] = "0123456789abcdef";
	char *s = o;

	*o++ = '"';
	for (const unsigned char *k = (const unsigned char *)key; *k; k++) {
		if (*k == '"' || *k == '\\') {
			*o++ = '\\';
			*o++ = (char)*k;
		} else if (*k < 0x20) {
			memcpy(o, "\\u00", 4);
			o[4] = hex[*k >> 4];
			o[5] = hex[*k & 15];
			o += 6;
		} else {
			*o++ = (char)*k;
		}
	}
	*o++ = '"';
	return (size_t)(o - s);
}

/* Whether adds[i] is to be written: its key is not in the body, not an earlier add's, and
 * not stream_options when that member is the splice's own to write. */
static bool add_wanted(const struct reqjson *rj, const struct rj_add *adds, size_t i,
                       bool set_include_usage)
{
	if (set_include_usage && strcmp(adds[i].key, "stream_options") == 0)
		return false;
	if (reqjson_get(rj, adds[i].key))
		return false;
	for (size_t j = 0; j < i; j++)
		if (strcmp(adds[j].key, adds[i].key) == 0)
			return false;
	return true;
}

char *reqjson_splice(const struct reqjson *rj, const char *body, size_t len,
                     const struct rj_add *adds, size_t n_adds, bool set_include_usage,
                     size_t *out_len)
{
	static const char iu_member[] = "\"include_usage\":true";
	static const char so_member[] = "\"stream_options\":{\"include_usage\":true}";
	/* one edit inside stream_options (at e1, replacing e1_del bytes by e1_text), then one
	 * insertion of the new members after the last member (at e2) */
	size_t e1 = 0, e1_del = 0, e2, cap, n_new = 0;
	const char *e1_text = NULL;
	bool e1_comma = false, add_so = false, none_yet;
	char *out = NULL, *o;

	*out_len = SIZE_MAX;
	if (rj->result != RJ_OK)
		return NULL;
	if (set_include_usage) {
		const struct rj_field *so = rj->stream_options;

		if (!so) {
			add_so = true;
		} else if (so->type != RJ_OBJECT) {
			e1 = so->val_off;
			e1_del = so->val_len;
			e1_text = "{\"include_usage\":true}";
		} else if (!rj->has_iu) {
			size_t b = rj->so_end;

			while (b > so->val_off && is_ws[(unsigned char)body[b - 1]])
				b--;
			e1 = rj->so_end;
			e1_comma = body[b - 1] != '{';
			e1_text = iu_member;
		} else if (!(rj->iu_len == 4 && memcmp(body + rj->iu_off, "true", 4) == 0)) {
			e1 = rj->iu_off;
			e1_del = rj->iu_len;
			e1_text = "true";
		}
	}
	/* the room needed, counted before writing so the buffer is allocated once: 128 for
	 * the stream_options edits, 6 a key byte (\u00XX) and 4 (quotes, ':', ',') an add */
	if (len > SIZE_MAX / 2)
		return NULL;
	cap = len + 128;
	for (size_t i = 0; i < n_adds; i++) {
		size_t kl;

		if (!add_wanted(rj, adds, i, set_include_usage))
			continue;
		n_new++;
		kl = strlen(adds[i].key);
		if (kl > (SIZE_MAX - cap) / 8 || adds[i].value_len > SIZE_MAX - cap - 8 * kl - 4)
			return NULL;
		cap += 6 * kl + adds[i].value_len + 4;
	}
	if (!e1_text && !add_so && n_new == 0) {
		*out_len = 0;
		return NULL;
	}
	if (!(out = malloc(cap)))
		return NULL;
	o = out;
	e2 = rj->n_fields ? rj->fields[rj->n_fields - 1].val_off + rj->fields[rj->n_fields - 1].val_len
	                  : rj->obj_end;
	if (e1_text) {
		memcpy(o, body, e1);
		o += e1;
		if (e1_comma)
			*o++ = ',';
		memcpy(o, e1_text, strlen(e1_text));
		o += strlen(e1_text);
	}
	/* e1 + e1_del <= e2: stream_options is a member, so its insides end by the last
	 * member's end */
	memcpy(o, body + e1 + e1_del, e2 - e1 - e1_del);
	o += e2 - e1 - e1_del;
	none_yet = rj->n_fields == 0;
	for (size_t i = 0; i < n_adds; i++) {
		if (!add_wanted(rj, adds, i, set_include_usage))
			continue;
		if (!none_yet)
			*o++ = ',';
		none_yet = false;
		o += put_key(o, adds[i].key);
		*o++ = ':';
		memcpy(o, adds[i].value_json, adds[i].value_len);
		o += adds[i].value_len;
	}
	if (add_so) {
		if (!none_yet)
			*o++ = ',';
		memcpy(o, so_member, sizeof(so_member) - 1);
		o += sizeof(so_member) - 1;
	}
	memcpy(o, body + e2, len - e2);
	o += len - e2;
	*out_len = (size_t)(o - out);
	return out;
}
