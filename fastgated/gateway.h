/* The daemon's state as one event loop sees it: one struct per loop (`workers`, DESIGN.md
 * Threads), owned by that loop's thread.
 *
 * What a loop owns outright: its event base, HTTP server, transports (and their
 * connection pools), metrics shard, counters, audit lane, price memo and SHA-256 context.
 * What the loops share, through pointers every copy holds: the settings, the key store,
 * the route, model and price tables (each loop holds its own reference to the route
 * table), the upstream pool (pool.h: locked), the spend accounts (keys.h: locked), the
 * auth-failure table (locked), the audit writer and the control socket (loop 0's).
 * The shared tables and the key store change only on loop 0 and only while every other
 * loop is paused between two of its events (gateway_pause), so readers take no lock;
 * what requests change on every loop (target states, spend, auth failures) is locked
 * where it is kept.
 *
 * Layer: state. It names the io pieces (HTTP server, transports) and the control server
 * only as opaque pointers; wiring (main.c) creates and connects them. */
#ifndef FG_GATEWAY_H
#define FG_GATEWAY_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <event2/event.h>

#include "config.h"
#include "errlist.h"
#include "keys.h"
#include "models.h"
#include "pool.h"
#include "pricing.h"
#include "reqdone.h"
#include "routes.h"

struct transport;     /* transport.h: native HTTP/1.1 and curl */
struct control;       /* control.h: the control socket */
struct http_server;   /* http.h: listener and request checks */
struct metrics;       /* metrics.h: counters and histograms */
struct audit;         /* audit.h: the audit trail's writer */
struct authfail;      /* authfail.h: failed authentications per client address */
struct workers;       /* workers.h: the event-loop threads */
struct key_hasher;    /* keys.h */
struct audit_lane;    /* audit.h */

/* This loop's; changed with CTR_ADD (util.h) so that any loop may sum them. */
struct gateway_stats {
	uint64_t requests;        /* finished requests */
	uint64_t errors;          /* finished with status >= 500 or an upstream error */
	uint64_t inflight;
	uint64_t upstream_pauses;  /* streams paused because their client read too slowly */
};

struct gateway {
	struct event_base *base;
	struct config *cfg;
	struct keystore *keys;
	struct route_table *routes;   /* current table; requests hold their own reference */
	struct pool pool;             /* the live state of every route's upstreams (pool.h) */
	struct model_table *models;   /* share/models.yaml, or NULL when there is none */
	struct price_table *prices;   /* share/pricing.yaml, or NULL when there is none */
	struct price_memo {           /* the last model priced (proxy.c) */
		const struct price_table *table;
		char model[128];
		const struct price *price;
	} price_memo;
	struct transport *transports[TR_KIND_COUNT];  /* a route's kind is fixed at load */
	struct control *control;
	struct http_server *http;
	struct metrics *metrics;
	struct audit *audit;
	struct authfail *authfail;    /* shared by every loop; its table grows at the first failure */
	struct reqdone_hooks done;    /* told of every finished request (reqdone.h) */
	struct proxy_req *spares;     /* finished requests' memory for the next ones (proxy.c) */
	unsigned n_spares;
	time_t started;
	char listen_addr[128];        /* as bound, e.g. "127.0.0.1:8514" */
	bool stopping;                /* SIGTERM seen: no new requests */
	struct gateway_stats stats;
	/* What SIGHUP does, for the control channel's reload to do the same (main.c sets it:
	 * it owns the flags and the config file). 0, or -1 with errs filled and nothing
	 * changed; warns gets what was read but cannot apply without a restart. */
	int (*reload)(void *arg, struct errlist *errs, struct errlist *warns);
	void *reload_arg;

	/* The event loops: this one's index, how many there are, and every loop's gateway
	 * (all[0] is loop 0, which also runs the control socket, signals, health checks and
	 * the timers). With one loop, all is NULL. */
	unsigned loop, n_loops;
	struct gateway *const *all;
	struct workers *workers;      /* NULL with one loop */
	struct key_hasher *hasher;    /* this loop's SHA-256 context; NULL on loop 0 */
	struct audit_lane *lane;      /* this loop's queue into the audit writer */
	/* Set on loop 0 when there are other loops (workers.c): stop them between two of
	 * their events (stop = true) and let them go on. Nestable. */
	void (*pause)(void *arg, bool stop);
	void *pause_arg;
};

/* Loop 0, before it changes what every loop reads (keys, routes, settings, target
 * states): the other loops wait, between two of their events, until gateway_resume. A
 * no-op with one loop; nestable. Never while holding a lock another loop may wait for. */
void gateway_pause(struct gateway *gw);
void gateway_resume(struct gateway *gw);
/* The gateway of loop i (i < gateway_loops), and how many loops there are now (1 until
 * the other loops' gateways exist: main.c sets n_loops before it makes them). */
struct gateway *gateway_loop(struct gateway *gw, unsigned i);
unsigned gateway_loops(const struct gateway *gw);
/* Every loop's counters added up (any loop may call it). */
struct gateway_stats gateway_stats_sum(struct gateway *gw);

/* The tables a reload replaces: read together, all of them before any is swapped in. */
struct gateway_tables {
	struct route_table *routes;
	struct model_table *models;   /* NULL: no model table (the default file is absent) */
	struct price_table *prices;   /* NULL: no price table */
};

/* Read the model table, the price table and routes_dir as cfg names them, touching nothing
 * of a running gateway. 0 with t filled, or -1 with "FILE:LINE: message" lines in errs and
 * t empty. */
int gateway_tables_load(const struct config *cfg, struct gateway_tables *t, struct errlist *errs);
/* Swap loaded tables in, taking them over (t is left empty): apply stored enable/disable
 * overrides, bind the targets' live states (pool.h), apply the stored drained flags, and
 * hand every loop the new tables (the others paused). gw is loop 0's. The old route
 * table goes when the last request holding it ends. Cannot fail. */
void gateway_tables_install(struct gateway *gw, struct gateway_tables *t);
/* Free what t holds (after a load that is not installed); t is left empty. */
void gateway_tables_free(struct gateway_tables *t);
/* gateway_tables_load with gw->cfg, then gateway_tables_install: the start's first load.
 * On error: -1 with errs filled, the old tables (if any) stay. */
int gateway_reload_routes(struct gateway *gw, struct errlist *errs);

/* The configured model table: 0 with *out set (NULL when the default file is absent: no
 * table, not an error), or -1 with errs filled. */
int gateway_load_models(const struct config *cfg, struct model_table **out, struct errlist *errs);
/* The same for the price table (share/pricing.yaml). */
int gateway_load_prices(const struct config *cfg, struct price_table **out, struct errlist *errs);

#endif
