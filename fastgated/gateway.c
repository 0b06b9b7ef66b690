/* Operations on the daemon state shared by SIGHUP, the control channel and start-up. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "log.h"

/* Run-time enable/disable overrides live in the key store and win over the file, except
 * for a route that cannot run (its if_env variable is unset). */
static void apply_overrides(struct gateway *gw, struct route_table *t)
{
	for (size_t i = 0; i < t->n; i++) {
		struct route *r = t->routes[i];
		int st = gw->keys ? keystore_route_state_get(gw->keys, r->name) : -1;
		if (st >= 0 && !r->unavailable)
			r->enabled = st != 0;
	}
}

int gateway_reload_routes(struct gateway *gw, struct errlist *errs)
{
	struct route_table *t = route_table_load(gw->cfg->routes_dir, errs);
	struct route_table *old = gw->routes;

	if (!t)
		return -1;
	apply_overrides(gw, t);
	/* before the old table lets go of them: the same targets keep their state */
	pool_bind(&gw->pool, t);
	gw->routes = t;   /* in-flight requests hold their own reference to the old table */
	if (old)
		route_table_unref(old);
	log_info("routes loaded from %s: %zu routes", gw->cfg->routes_dir, t->n);
	return 0;
}

