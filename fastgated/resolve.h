/* Host names resolved off the loop: one thread runs getaddrinfo (the system's resolver:
 * /etc/hosts, DNS, whatever nsswitch says, as curl's threaded resolver does) and hands the
 * answers back to the loop through an eventfd. Nothing on the loop ever blocks on a name.
 *
 * Layer: io. */
#ifndef FG_RESOLVE_H
#define FG_RESOLVE_H

#include <stddef.h>
#include <sys/socket.h>
#include <event2/event.h>

#define RESOLVE_MAX_ADDRS 8

struct resolve_result {
	int err;                      /* 0, or getaddrinfo's EAI_* code */
	size_t n;
	struct sockaddr_storage addr[RESOLVE_MAX_ADDRS];
	socklen_t len[RESOLVE_MAX_ADDRS];
};

typedef void (*resolve_fn)(void *arg, const struct resolve_result *r);

struct resolver;

/* NULL when the thread or its eventfd cannot be made. */
struct resolver *resolver_new(struct event_base *base);
/* Stops the thread (waiting for a lookup under way); callbacks still pending never run. */
void resolver_free(struct resolver *r);
/* Look up name:port (TCP); fn(arg, result) runs later, on the loop. -1 when out of memory
 * (fn will not run). */
int resolver_lookup(struct resolver *r, const char *name, int port, resolve_fn fn, void *arg);

#endif
