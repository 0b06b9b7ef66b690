#include <stdint.h>
#include <stdio.h>
#include <openssl/rand.h>

#include "reqid.h"

static uint32_t boot_prefix;
static uint64_t counter;

int reqid_init(void)
{
	return RAND_bytes((unsigned char *)&boot_prefix, sizeof(boot_prefix)) == 1 ? 0 : -1;
}

void reqid_next(char out[REQID_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	uint64_t c;

	counter = (counter + 1) & 0xffffffffffffULL;
	/* "%08x%012llx" by hand: one per request, and printf was a visible share of it */
	for (int i = 7; i >= 0; i--)
		out[7 - i] = hex[(boot_prefix >> (i * 4)) & 0xf];
	c = counter;
	for (int i = REQID_LEN - 1; i >= 8; i--, c >>= 4)
		out[i] = hex[c & 0xf];
	out[REQID_LEN] = '\0';
}
