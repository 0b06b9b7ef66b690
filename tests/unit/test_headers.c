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

RUN_TESTS()
