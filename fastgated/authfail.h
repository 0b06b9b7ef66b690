/* Requests that failed authentication, counted per client address (DESIGN.md, Operating
 * it: auth_fail_limit). An address that has failed `limit` times in its window is refused
 * until the window ends, before any key is looked at, so a flood of guessed keys costs
 * the gateway a table lookup and cannot crowd out other clients.
 *
 * The window is fixed: it starts at an address's first failure and lasts window_ms; the
 * next failure after it starts a new one. Addresses are counted as they are, except that
 * an IPv6 address counts for its /64 (one subscriber's network: its other addresses cost
 * nothing to use) and an IPv4-mapped IPv6 address as the IPv4 address. Loopback clients
 * (127.0.0.0/8, ::1) are never counted, as fail2ban ignores them by default: with the
 * default listen address they are every client, and a proxy on the same host that is not
 * in trusted_proxies would otherwise lock everyone behind it out.
 *
 * Memory is bounded: at most `cap` addresses are held (a table grown as needed), and a new
 * one beyond that takes the place of the one whose window started first, so a client
 * rotating through source addresses cannot grow it. One table serves every event loop
 * behind a mutex, which a check skips while no address is held (the common case). The
 * clock is the caller's (milliseconds, monotonic), so a test can drive it.
 *
 * Layer: state. */
#ifndef FG_AUTHFAIL_H
#define FG_AUTHFAIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AUTHFAIL_CAP 65536   /* addresses held at most: about 2.5 MB when all are used */

struct authfail;

/* An empty table for at most cap addresses (1 or more; AUTHFAIL_CAP in the daemon).
 * Never NULL (out of memory aborts). Free with authfail_free. */
struct authfail *authfail_new(size_t cap);
void authfail_free(struct authfail *af);

/* Milliseconds until the client at ip (text, as the audit's client_ip) may be served
 * again: > 0 once it has failed `limit` times in the window that holds now, 0 otherwise. */
int64_t authfail_wait(struct authfail *af, const char *ip, int64_t limit, int64_t window_ms,
                      int64_t now_ms);
/* Count one failed authentication of the client at ip at now_ms: the address's failures
 * in the window, this one included (0 for loopback, never counted). With several event
 * loops, requests that all passed authfail_wait can fail together: the count tells the
 * ones past the limit, so that exactly `limit` of them are answered as failures. */
uint32_t authfail_count(struct authfail *af, const char *ip, int64_t window_ms,
                        int64_t now_ms);

/* Addresses held now, expired windows included until their place is needed: for tests. */
size_t authfail_size(const struct authfail *af);

#endif
