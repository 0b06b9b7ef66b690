/* See cidr.h. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "cidr.h"

int cidr_parse(const char *s, struct cidr *out)
{
	char addr[64];
	const char *slash = strchr(s, '/');
	size_t n = slash ? (size_t)(slash - s) : strlen(s);
	int max;

	if (n == 0 || n >= sizeof(addr))
		return -1;
	memcpy(addr, s, n);
	addr[n] = '\0';
	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, addr, out->addr) == 1) {
		out->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, addr, out->addr) == 1) {
		out->family = AF_INET6;
		max = 128;
	} else {
		return -1;
	}
	out->bits = max;
	if (slash) {
		char *end;
		long b;

		if (!slash[1] || slash[1] < '0' || slash[1] > '9')
			return -1;
		b = strtol(slash + 1, &end, 10);
		if (*end || b < 0 || b > max)
			return -1;
		out->bits = (int)b;
	}
	/* no bit set past the prefix */
	for (int i = out->bits; i < max; i++)
		if (out->addr[i / 8] & (0x80 >> (i % 8)))
			return -1;
	return 0;
}

static bool in_range(const struct cidr *c, const unsigned char *a)
{
	int full = c->bits / 8, rest = c->bits % 8;

	if (memcmp(c->addr, a, (size_t)full) != 0)
		return false;
	return !rest || ((c->addr[full] ^ a[full]) & (0xff00 >> rest) & 0xff) == 0;
}

bool cidr_match(const struct cidr *list, size_t n, const char *ip)
{
	unsigned char a4[4], a6[16];
	bool v4 = ip && inet_pton(AF_INET, ip, a4) == 1;
	bool v6 = ip && !v4 && inet_pton(AF_INET6, ip, a6) == 1;

	/* ::ffff:a.b.c.d is an IPv4 client on a dual-stack socket */
	if (v6 && memcmp(a6, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0) {
		memcpy(a4, a6 + 12, 4);
		v4 = true;
	}
	for (size_t i = 0; i < n; i++) {
		if (list[i].family == AF_INET && v4 && in_range(&list[i], a4))
			return true;
		if (list[i].family == AF_INET6 && v6 && in_range(&list[i], a6))
			return true;
	}
	return false;
}

char *cidr_format(const struct cidr *c, char *buf, size_t size)
{
	char addr[INET6_ADDRSTRLEN];
	int max = c->family == AF_INET ? 32 : 128;

	if (!inet_ntop(c->family, c->addr, addr, sizeof(addr)))
		addr[0] = '\0';
	if (c->bits == max)
		snprintf(buf, size, "%s", addr);
	else
		snprintf(buf, size, "%s/%d", addr, c->bits);
	return buf;
}
