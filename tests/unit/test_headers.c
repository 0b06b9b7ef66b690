/* Header cleaning before forwarding (DESIGN.md: always stripped, hop-by-hop, route's own). */
#include "proxy.h"
#include "unit.h"

TEST(credentials_and_forwarding_headers_are_always_stripped)
{
	const char *names[] = { "Host", "x-api-key", "AUTHORIZATION", "X-Forwarded-For", "X-Request-Id" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		CHECK(proxy_header_stripped(names[i], NULL, 0, NULL));
}

TEST(hop_by_hop_and_framing_headers_are_stripped)
{
	const char *names[] = { "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer",
	                        "Transfer-Encoding", "Upgrade", "Proxy-Authorization",
	                        "Content-Length", "Expect" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		CHECK(proxy_header_stripped(names[i], NULL, 0, NULL));
}

TEST(headers_named_in_connection_are_hop_by_hop)
{
	CHECK(proxy_header_stripped("X-Secret-Hop", NULL, 0, "keep-alive, x-secret-hop"));
	CHECK(proxy_header_stripped("x-b", NULL, 0, "x-a,x-b"));
	CHECK(!proxy_header_stripped("X-Secret", NULL, 0, "x-secret-hop"));
}

TEST(route_strip_headers_apply_case_insensitively)
{
	char *extra[] = { "x-debug" };
	CHECK(proxy_header_stripped("X-Debug", extra, 1, NULL));
	CHECK(!proxy_header_stripped("X-Debugger", extra, 1, NULL));
}

TEST(ordinary_headers_pass)
{
	const char *names[] = { "Content-Type", "Accept", "User-Agent", "OpenAI-Organization", "X-Keep" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		CHECK(!proxy_header_stripped(names[i], NULL, 0, "close"));
}

/* Every always-stripped name, in lower, upper and mixed case; a name a byte longer or
 * shorter, or with its first or last letter changed, is another header and passes. */
TEST(stripping_matches_the_whole_name_in_any_case_and_nothing_else)
{
	static const char *const names[] = {
		"host", "x-api-key", "authorization", "x-forwarded-for", "x-forwarded-proto",
		"api-key", "x-request-id", "connection", "keep-alive", "proxy-connection",
		"proxy-authorization", "proxy-authenticate", "te", "trailer", "transfer-encoding",
		"upgrade", "content-length", "expect", "accept-encoding",
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char v[64];
		size_t n = strlen(names[i]);

		memcpy(v, names[i], n + 1);
		CHECK(proxy_header_stripped(v, NULL, 0, NULL));
		for (size_t k = 0; k < n; k++)
			v[k] = (char)(v[k] >= 'a' && v[k] <= 'z' ? v[k] - 32 : v[k]);
		CHECK(proxy_header_stripped(v, NULL, 0, NULL));
		for (size_t k = 0; k < n; k += 2)
			v[k] = names[i][k];
		CHECK(proxy_header_stripped(v, NULL, 0, NULL));
		/* a byte more, a byte less */
		memcpy(v, names[i], n);
		memcpy(v + n, "s", 2);
		CHECK(!proxy_header_stripped(v, NULL, 0, NULL));
		v[n - 1] = '\0';
		CHECK(!proxy_header_stripped(v, NULL, 0, NULL));
		/* the first letter or the last one changed, or the first made a digit */
		memcpy(v, names[i], n + 1);
		v[0] = (char)(v[0] + 1);
		CHECK(!proxy_header_stripped(v, NULL, 0, NULL));
		v[0] = (char)(names[i][0] - 32 + 1);
		CHECK(!proxy_header_stripped(v, NULL, 0, NULL));
		v[0] = '7';
		CHECK(!proxy_header_stripped(v, NULL, 0, NULL));
		memcpy(v, names[i], n + 1);
		v[n - 1] = (char)(v[n - 1] == 'z' ? 'y' : v[n - 1] + 1);
		CHECK(!proxy_header_stripped(v, NULL, 0, NULL));
	}
}

TEST(a_name_with_an_underscore_is_stripped)
{
	CHECK(proxy_header_stripped("X_API_Key", NULL, 0, NULL));
	CHECK(proxy_header_stripped("_", NULL, 0, NULL));
	CHECK(proxy_header_stripped("content_type", NULL, 0, NULL));
	CHECK(!proxy_header_stripped("content-type", NULL, 0, NULL));
}

TEST(route_strip_headers_compare_whole_names)
{
	char *extra[] = { "X-Debug", "x-trace-id", "@odd" };

	CHECK(proxy_header_stripped("x-DEBUG", extra, 3, NULL));
	CHECK(proxy_header_stripped("X-TRACE-ID", extra, 3, NULL));
	CHECK(!proxy_header_stripped("X-Debu", extra, 3, NULL));
	CHECK(!proxy_header_stripped("Y-Debug", extra, 3, NULL));
	CHECK(!proxy_header_stripped("X-Trace-Ie", extra, 3, NULL));
	CHECK(proxy_header_stripped("@ODD", extra, 3, NULL));
	/* '`' is '@' | 0x20, not its other case */
	CHECK(!proxy_header_stripped("`odd", extra, 3, NULL));
}

TEST(connection_lists_name_whole_tokens_in_any_case)
{
	CHECK(proxy_header_stripped("X-Hop", NULL, 0, "close,  X-HOP ,x-other"));
	CHECK(!proxy_header_stripped("X-Ho", NULL, 0, "x-hop"));
	CHECK(!proxy_header_stripped("X-Hops", NULL, 0, "x-hop"));
	CHECK(!proxy_header_stripped("X-Hop", NULL, 0, ""));
}

RUN_TESTS()
