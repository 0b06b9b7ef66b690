#include <stdint.h>
#include <time.h>
#include <openssl/rand.h>

#include "reqid.h"

/* The 48-bit counter: the event loop's index in the top REQID_LOOP_BITS, then a count that
 * starts at random and wraps within its own bits, so no two loops ever make the same id. */
#define COUNT_BITS (48 - REQID_LOOP_BITS)
#define COUNT_MASK ((1ULL << COUNT_BITS) - 1)

int reqid_init(struct reqid_gen *g, unsigned loop)
{
	uint64_t r;

	if (RAND_bytes((unsigned char *)&r, sizeof(r)) != 1)
		return -1;
	g->counter = ((uint64_t)(loop & ((1u << REQID_LOOP_BITS) - 1)) << COUNT_BITS) |
	             (r & COUNT_MASK);
	return 0;
}

void reqid_next(struct reqid_gen *g, char out[REQID_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	struct timespec now;
	uint32_t sec;
	uint64_t c;

	/* The coarse clock is a memory read; it may lag by a tick, which the readers allow for
	 * (they look a few seconds around the id's second). */
	clock_gettime(CLOCK_REALTIME_COARSE, &now);
	sec = (uint32_t)now.tv_sec;
	g->counter = (g->counter & ~COUNT_MASK) | ((g->counter + 1) & COUNT_MASK);
	/* "%08x%012llx" by hand: one per request, and printf was a visible share of it */
	for (int i = 7; i >= 0; i--, sec >>= 4)
		out[i] = hex[sec & 0xf];
	c = g->counter;
	for (int i = REQID_LEN - 1; i >= 8; i--, c >>= 4)
		out[i] = hex[c & 0xf];
	out[REQID_LEN] = '\0';
}

/* One more than the value of a lower-case hex digit, 0 for any other byte. The audit
 * writer checks every row's id: with a range test per character that took ~360
 * instructions a row, with the table ~260, and ~205 with the second's digits and the
 * counter's checked in separate loops (callgrind). */
static const unsigned char hex1[256] = {
	['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5, ['5'] = 6, ['6'] = 7, ['7'] = 8,
	['8'] = 9, ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15,
	['f'] = 16,
};

bool reqid_second(const char *id, int64_t *second)
{
	const unsigned char *p = (const unsigned char *)id;
	uint32_t sec = 0;
	unsigned ok = 1;

	/* hex1[0] is 0: a string that ends early fails the digit test at its NUL, before
	 * anything past it is read. The second is in the first 8 digits, the counter after. */
	for (int i = 0; i < 8; i++) {
		unsigned v = hex1[p[i]];

		if (!v)
			return false;
		sec = sec << 4 | (v - 1);
	}
	for (int i = 8; i < REQID_LEN && ok; i++)
		ok = hex1[p[i]];
	if (!ok || p[REQID_LEN])
		return false;
	*second = sec;
	return true;
}
