/* See forwarded.h. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>

#include "cidr.h"
#include "config.h"
#include "forwarded.h"
#include "http.h"

static bool trusted(const struct config *cfg, const char *ip)
{
	return cfg->n_trusted_proxies && cidr_match(cfg->trusted_proxies, cfg->n_trusted_proxies,
	                                            ip);
}

static bool is_address(const char *s)
{
	unsigned char a[16];

	return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

void forwarded_client_ip(const struct config *cfg, const struct http_request *req, char *out,
                         size_t cap)
{
	const char *peer = http_client_ip(req);
	const char *xff = trusted(cfg, peer) ? http_find_header(req, "X-Forwarded-For") : NULL;
	char chain[1024], *hops[32], *save = NULL;
	size_t n = 0;

	snprintf(out, cap, "%s", peer);
	if (!xff || strlen(xff) >= sizeof(chain))
		return;
	snprintf(chain, sizeof(chain), "%s", xff);
	for (char *h = strtok_r(chain, ", \t", &save); h && n < 32; h = strtok_r(NULL, ", \t", &save))
		hops[n++] = h;
	/* from the right: each hop was added by the proxy after it, and the trusted ones are
	 * ours; the first that is not is the client. Something that is no address ends the
	 * belief: what is left of it was written by whoever sent it. */
	while (n > 0 && is_address(hops[n - 1])) {
		snprintf(out, cap, "%s", hops[--n]);
		if (!trusted(cfg, out))
			return;
	}
}

char *forwarded_for(const struct config *cfg, const struct http_request *req)
{
	const char *peer = http_client_ip(req);
	const char *xff = trusted(cfg, peer) ? http_find_header(req, "X-Forwarded-For") : NULL;
	char *out = NULL;

	if (xff && *xff && asprintf(&out, "%s, %s", xff, peer) < 0)
		out = NULL;
	return out;
}

const char *forwarded_proto(const struct config *cfg, const struct http_request *req)
{
	const char *p = trusted(cfg, http_client_ip(req))
	                ? http_find_header(req, "X-Forwarded-Proto") : NULL;

	if (p && (strcmp(p, "https") == 0 || strcmp(p, "http") == 0))
		return p;
	return http_request_tls(req) ? "https" : "http";
}
