/* Address ranges (CIDR: "10.0.0.0/8", "2001:db8::/32", or one address) for the settings
 * that decide whom to trust or serve, such as trusted_proxies.
 *
 * Layer: base. */
#ifndef FG_CIDR_H
#define FG_CIDR_H

#include <stdbool.h>
#include <stddef.h>

struct cidr {
	int family;                /* AF_INET or AF_INET6 */
	unsigned char addr[16];    /* network order; bits past the prefix are zero */
	int bits;                  /* prefix length: 0..32 or 0..128 */
};

/* Parse "ADDR" or "ADDR/BITS". 0, or -1 when it is not one (a host part set past the
 * prefix, "10.0.0.1/8", is refused too: it is almost always a typo for another range). */
int cidr_parse(const char *s, struct cidr *out);
/* Is the address (text, as the HTTP server keeps a client's: "127.0.0.1", "::1",
 * "::ffff:10.1.2.3") in one of the ranges? An IPv4-mapped IPv6 address matches IPv4
 * ranges. False for text that is no address. */
bool cidr_match(const struct cidr *list, size_t n, const char *ip);
/* The canonical text of c into buf (CIDR_TEXT_MAX bytes is always enough): the address as
 * inet_ntop writes it, and "/BITS" unless it is one address. cidr_parse gives c back from
 * it. Returns buf. */
#define CIDR_TEXT_MAX 52   /* INET6_ADDRSTRLEN (46) + "/128" + NUL */
char *cidr_format(const struct cidr *c, char *buf, size_t size);

#endif
