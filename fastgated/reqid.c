#include <stdint.h>
#include <time.h>
#include <openssl/rand.h>

#include "reqid.h"

#define COUNTER_MASK 0xffffffffffffULL   /* 48 bits */

static uint64_t counter;

int reqid_init(void)
{
	if (RAND_bytes((unsigned char *)&counter, sizeof(counter)) != 1)
		return -1;
	counter &= COUNTER_MASK;
	return 0;
}

void reqid_next(char out[REQID_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	struct timespec now;
	uint32_t sec;
	uint64_t c;

	/* The coarse clock is a memory read; it may lag by a tick, which the readers allow for
	 * (they look a few seconds around the id's second). */
	clock_gettime(CLOCK_REALTIME_COARSE, &now);
	sec = (uint32_t)now.tv_sec;
	counter = (counter + 1) & COUNTER_MASK;
	/* "%08x%012llx" by hand: one per request, and printf was a visible share of it */
	for (int i = 7; i >= 0; i--, sec >>= 4)
		out[i] = hex[sec & 0xf];
	c = counter;
	for (int i = REQID_LEN - 1; i >= 8; i--, c >>= 4)
		out[i] = hex[c & 0xf];
	out[REQID_LEN] = '\0';
}

bool reqid_second(const char *id, int64_t *second)
{
	uint32_t sec = 0;
	int i;

	for (i = 0; id[i]; i++) {
		int d = id[i] >= '0' && id[i] <= '9' ? id[i] - '0'
		      : id[i] >= 'a' && id[i] <= 'f' ? id[i] - 'a' + 10 : -1;
		if (d < 0 || i >= REQID_LEN)
			return false;
		if (i < 8)
			sec = sec << 4 | (uint32_t)d;
	}
	if (i != REQID_LEN)
		return false;
	*second = sec;
	return true;
}
