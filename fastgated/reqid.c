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
	counter = (counter + 1) & 0xffffffffffffULL;
	snprintf(out, REQID_LEN + 1, "%08x%012llx", boot_prefix, (unsigned long long)counter);
}
