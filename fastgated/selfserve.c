/* What a key may ask the gateway about itself (DESIGN.md, Spend control): GET /v1/models,
 * the models of the routes the key may use, in OpenAI's list shape; GET /v1/usage, the
 * key's own spend, its limits and its user's balance. Both only when no route matches the
 * path itself (a route may still send /v1/models to an upstream). See selfserve.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <jansson.h>

#include "request.h"
#include "selfserve.h"

json_t *selfserve_usd(int64_t nano)
{
	char buf[40];

	return json_string(money_format_usd(nano, buf, sizeof(buf)));
}

static json_t *totals_json(const struct spend_totals *t)
{
	return json_pack("{s:I, s:I, s:o}", "requests", (json_int_t)t->requests,
	                 "tokens", (json_int_t)t->tokens, "cost_usd", selfserve_usd(t->cost));
}

json_t *selfserve_spend_json(const struct spend_account *a, int64_t now)
{
	struct spend_totals d = spend_account_totals(a, SPEND_DAY, now);
	struct spend_totals m = spend_account_totals(a, SPEND_MONTH, now);
	struct spend_totals all = spend_account_totals(a, SPEND_ALL, now);

	return json_pack("{s:o, s:o, s:o}", "day", totals_json(&d), "month", totals_json(&m),
	                 "total", totals_json(&all));
}

/* Each limit with what is used of it now, what is left and when it is all free again. */
static json_t *limits_json(struct spend_account *a, int64_t now)
{
	json_t *arr = json_array();

	for (size_t i = 0; arr && i < a->n_lim; i++) {
		const struct limit *l = &a->lim[i];
		int64_t used = limit_used(&a->ctr[i], l, now);
		int64_t left = l->amount - used > 0 ? l->amount - used : 0;
		int64_t reset = limit_clear_in(&a->ctr[i], l, now);
		char text[LIMIT_TEXT_MAX];
		bool cost = l->kind == LIMIT_COST;

		json_array_append_new(arr, json_pack(
			"{s:s, s:s, s:s, s:o, s:o, s:o, s:I, s:I}",
			"limit", limit_format(l, text, sizeof(text)),
			"kind", limit_kind_name(l->kind), "window", limit_window_name(l->window),
			"amount", cost ? selfserve_usd(l->amount) : json_integer(l->amount),
			"used", cost ? selfserve_usd(used) : json_integer(used),
			"remaining", cost ? selfserve_usd(left) : json_integer(left),
			"reset_seconds", (json_int_t)reset, "reset_at", (json_int_t)(now + reset)));
	}
	return arr;
}

static void answer(struct proxy_req *px, json_t *body)
{
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	struct http_request *req;

	json_decref(body);
	if (!text) {
		proxy_reply_error(px, 500, "internal_error", "out of memory");
		return;
	}
	px->status = 200;
	req = proxy_take_req(px);
	http_add_header(req, "Content-Type", "application/json");
	http_reply(req, 200, text, strlen(text));
	free(text);
}

static void usage_answer(struct proxy_req *px)
{
	struct key *k = px->key;
	struct user *u = k->user;
	int64_t now = time(NULL);
	json_t *user = json_null(), *body;

	/* other loops reserve and settle against the same accounts */
	keystore_spend_lock(px->gw->keys);
	if (u) {
		user = json_pack("{s:I, s:s, s:b, s:o, s:o}", "id", (json_int_t)u->id, "name", u->name,
		                 "suspended", u->suspended, "limits", limits_json(&u->acct, now),
		                 "spend", selfserve_spend_json(&u->acct, now));
		if (user && u->bal.kept) {
			json_object_set_new(user, "balance_usd",
			                    selfserve_usd(spend_balance_left(&u->bal)));
			json_object_set_new(user, "credit_usd", selfserve_usd(u->bal.credit));
			json_object_set_new(user, "spent_usd", selfserve_usd(u->bal.spent));
			json_object_set_new(user, "reserved_usd", selfserve_usd(u->bal.reserved));
		} else if (user) {
			json_object_set_new(user, "balance_usd", json_null());
		}
	}
	body = json_pack("{s:s, s:I, s:{s:I, s:s, s:s, s:o, s:o}, s:o}", "object", "usage",
	                 "at", (json_int_t)now, "key", "id", (json_int_t)k->id, "name", k->name,
	                 "display", k->display, "limits", limits_json(&k->acct, now),
	                 "spend", selfserve_spend_json(&k->acct, now), "user", user ? user : json_null());
	keystore_spend_unlock(px->gw->keys);
	answer(px, body);
}

/* The models of every enabled route the key may use, each once, with the provider of the
 * route's first upstream as owned_by. */
static void models_answer(struct proxy_req *px)
{
	const struct route_table *t = px->table;
	json_t *data = json_array(), *seen = json_object(), *body;
	json_int_t created = (json_int_t)px->gw->started;

	for (size_t i = 0; data && seen && i < t->n; i++) {
		const struct route *r = t->routes[i];

		if (!r->enabled || !proxy_key_allows_route(px->key, r->name))
			continue;
		for (size_t m = 0; m < r->n_models; m++) {
			if (json_object_get(seen, r->models[m]))
				continue;
			json_object_set_new(seen, r->models[m], json_true());
			json_array_append_new(data, json_pack(
				"{s:s, s:s, s:I, s:s}", "id", r->models[m], "object", "model",
				"created", created, "owned_by",
				r->n_targets ? provider_name(r->targets[0].provider) : "fastgate"));
		}
	}
	json_decref(seen);
	body = data ? json_pack("{s:s, s:o}", "object", "list", "data", data) : NULL;
	answer(px, body);
}

bool selfserve_answer(struct proxy_req *px)
{
	const char *path = px->req->path;

	if (px->req->method != HTTP_GET && px->req->method != HTTP_HEAD)
		return false;
	if (strcmp(path, "/v1/models") == 0)
		models_answer(px);
	else if (strcmp(path, "/v1/usage") == 0)
		usage_answer(px);
	else
		return false;
	return true;
}
