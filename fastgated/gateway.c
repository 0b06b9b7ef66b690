/* Operations on the daemon state shared by SIGHUP, the control channel and start-up. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway.h"
#include "log.h"
#include "util.h"

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

/* `upstream drain` persists in the key store by route and URL. A target that kept its state
 * through the reload has the flag already; one whose state is new (the daemon starting, an
 * upstream added back or given a new key) gets it here, before it can take a request. */
static void apply_target_states(struct gateway *gw, struct route_table *t)
{
	if (!gw->keys)
		return;
	for (size_t i = 0; i < t->n; i++) {
		struct route *r = t->routes[i];

		for (size_t k = 0; k < r->n_targets; k++) {
			struct route_target *tg = &r->targets[k];
			int st = tg->st ? keystore_target_state_get(gw->keys, r->name, tg->url) : -1;

			if (st >= 0)
				tg->st->drained = st != 0;
		}
	}
}

int gateway_load_models(const struct config *cfg, struct model_table **out, struct errlist *errs)
{
	*out = NULL;
	if (!cfg->models_path || (!cfg->models_set && access(cfg->models_path, F_OK) != 0))
		return 0;   /* the default file is optional; a named one is not */
	*out = models_load(cfg->models_path, errs);
	return *out ? 0 : -1;
}

int gateway_load_prices(const struct config *cfg, struct price_table **out, struct errlist *errs)
{
	*out = NULL;
	if (!cfg->pricing_path || (!cfg->pricing_set && access(cfg->pricing_path, F_OK) != 0))
		return 0;
	*out = pricing_load(cfg->pricing_path, errs);
	return *out ? 0 : -1;
}

int gateway_tables_load(const struct config *cfg, struct gateway_tables *t, struct errlist *errs)
{
	int bad_models = gateway_load_models(cfg, &t->models, errs) < 0;
	int bad_prices = gateway_load_prices(cfg, &t->prices, errs) < 0;

	t->routes = bad_models || bad_prices ? NULL : route_table_load(cfg->routes_dir, errs);
	if (!t->routes) {
		gateway_tables_free(t);
		return -1;
	}
	return 0;
}

void gateway_tables_free(struct gateway_tables *t)
{
	route_table_unref(t->routes);
	models_free(t->models);
	pricing_free(t->prices);
	memset(t, 0, sizeof(*t));
}

void gateway_pause(struct gateway *gw)
{
	if (gw->pause)
		gw->pause(gw->pause_arg, true);
}

void gateway_resume(struct gateway *gw)
{
	if (gw->pause)
		gw->pause(gw->pause_arg, false);
}

struct gateway *gateway_loop(struct gateway *gw, unsigned i)
{
	return gw->all ? gw->all[i] : gw;
}

unsigned gateway_loops(const struct gateway *gw)
{
	return gw->all ? gw->n_loops : 1;
}

struct gateway_stats gateway_stats_sum(struct gateway *gw)
{
	struct gateway_stats t = { 0 };

	for (unsigned i = 0; i < gateway_loops(gw); i++) {
		const struct gateway_stats *s = &gateway_loop(gw, i)->stats;

		t.requests += CTR_GET(s->requests);
		t.errors += CTR_GET(s->errors);
		t.inflight += CTR_GET(s->inflight);
		t.upstream_pauses += CTR_GET(s->upstream_pauses);
	}
	return t;
}

void gateway_tables_install(struct gateway *gw, struct gateway_tables *in)
{
	struct route_table *t = in->routes;
	struct model_table *old_models = gw->models;
	struct price_table *old_prices = gw->prices;

	apply_overrides(gw, t);
	gateway_pause(gw);
	/* before the old table lets go of them: the same targets keep their state */
	pool_bind(&gw->pool, t);
	apply_target_states(gw, t);
	for (unsigned i = 0; i < gateway_loops(gw); i++) {
		struct gateway *l = gateway_loop(gw, i);
		struct route_table *old = l->routes;

		/* nothing keeps a model_info across an event; requests copy the price they were
		 * admitted with: the old tables may go */
		l->models = in->models;
		l->prices = in->prices;
		l->price_memo.table = NULL;
		route_table_ref(t);
		l->routes = t;   /* in-flight requests hold their own reference to the old table */
		if (old)
			route_table_unref(old);
	}
	gateway_resume(gw);
	route_table_unref(t);   /* the loops hold it now */
	models_free(old_models);
	pricing_free(old_prices);
	log_info("routes loaded from %s: %zu routes; %s; %s", gw->cfg->routes_dir, t->n,
	         gw->models ? "model table read" : "no model table",
	         gw->prices ? "price table read" : "no price table");
	memset(in, 0, sizeof(*in));
}

int gateway_reload_routes(struct gateway *gw, struct errlist *errs)
{
	struct gateway_tables t = { 0 };

	if (gateway_tables_load(gw->cfg, &t, errs) < 0)
		return -1;
	gateway_tables_install(gw, &t);
	return 0;
}
