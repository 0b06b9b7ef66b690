/* Fuzz target: address ranges (fastgated/cidr.c), as trusted_proxies and allow_ips are
 * written in fastgate.yaml and as client addresses are matched against them.
 *
 * Any bytes: cidr_parse refuses them or gives a range whose prefix fits its family and
 * has no bit set past it; that range contains its own network address (written back with
 * inet_ntop), and a /32 or /128 of that address is inside it; its cidr_format text (how a
 * key's allow_ips is stored) parses back to the same range. The input is also matched
 * as an address against a few fixed ranges: no crash, and a match only for an address. */
#include <arpa/inet.h>
#include <string.h>
#include <sys/socket.h>

#include "cidr.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char text[128], addr[INET6_ADDRSTRLEN], host[INET6_ADDRSTRLEN + 8], canon[CIDR_TEXT_MAX];
	struct cidr c, fixed[3], self, again;
	size_t n = size < sizeof(text) - 1 ? size : sizeof(text) - 1;
	unsigned char probe[16];

	memcpy(text, data, n);
	text[n] = '\0';
	if (cidr_parse(text, &c) == 0) {
		int max = c.family == AF_INET ? 32 : 128;

		FUZZ_CHECK(c.family == AF_INET || c.family == AF_INET6, "family %d", c.family);
		FUZZ_CHECK(c.bits >= 0 && c.bits <= max, "bits %d", c.bits);
		FUZZ_CHECK(inet_ntop(c.family, c.addr, addr, sizeof(addr)) != NULL, "ntop");
		FUZZ_CHECK(cidr_match(&c, 1, addr), "%s not in %s", addr, text);
		snprintf(host, sizeof(host), "%s", addr);
		FUZZ_CHECK(cidr_parse(host, &self) == 0 && self.bits == max, "%s as a host", host);
		cidr_format(&c, canon, sizeof(canon));
		FUZZ_CHECK(cidr_parse(canon, &again) == 0 && memcmp(&c, &again, sizeof(c)) == 0,
		           "\"%s\" (from \"%s\") does not parse back", canon, text);
	}
	cidr_parse("10.0.0.0/8", &fixed[0]);
	cidr_parse("fd00::/8", &fixed[1]);
	cidr_parse("0.0.0.0/0", &fixed[2]);
	if (cidr_match(fixed, 3, text))
		FUZZ_CHECK(inet_pton(AF_INET, text, probe) == 1 || inet_pton(AF_INET6, text, probe) == 1,
		           "\"%s\" matched without being an address", text);
	return 0;
}
