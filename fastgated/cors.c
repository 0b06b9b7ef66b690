/* See cors.h. */
#include <string.h>

#include "config.h"
#include "cors.h"
#include "http.h"

/* What a script in the page may read of an answer: the request id, the cost and the
 * limits' headers (the rest are CORS-safelisted or of no use to it). */
#define EXPOSED "X-Request-Id, X-Fastgate-Cost, Retry-After, x-ratelimit-limit-requests, " \
	"x-ratelimit-remaining-requests, x-ratelimit-reset-requests, " \
	"x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens"

bool cors_headers(const struct config *cfg, struct http_request *req)
{
	const char *origin = cfg->n_cors_origins ? http_find_header(req, "Origin") : NULL;
	const char *asked;
	bool any = false, listed = false;

	if (!origin)
		return false;
	for (size_t i = 0; i < cfg->n_cors_origins; i++) {
		any |= strcmp(cfg->cors_origins[i], "*") == 0;
		listed |= strcmp(cfg->cors_origins[i], origin) == 0;
	}
	if (!any && !listed)
		return false;
	/* a listed origin is named back (and caches must keep answers apart by it) */
	http_add_header(req, "Access-Control-Allow-Origin", listed ? origin : "*");
	if (listed)
		http_add_header(req, "Vary", "Origin");
	if (req->method == HTTP_OPTIONS &&
	    (asked = http_find_header(req, "Access-Control-Request-Method"))) {
		const char *hdrs = http_find_header(req, "Access-Control-Request-Headers");

		http_add_header(req, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
		http_add_header(req, "Access-Control-Allow-Headers",
		                hdrs && *hdrs ? hdrs : "Authorization, Content-Type, X-API-Key");
		http_add_header(req, "Access-Control-Max-Age", "600");
		return true;
	}
	http_add_header(req, "Access-Control-Expose-Headers", EXPOSED);
	return false;
}
