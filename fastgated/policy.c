/* The policy phase: spend control (DESIGN.md, Spend control; see spend.h and pricing.h).
 * A request's price is looked up and copied, its estimate made from the body's one reading
 * and reserved against the limits of its key and of its key's user and the user's balance,
 * or it is refused with the exact Retry-After; every answer gets the x-ratelimit-* headers.
 * At its end the request is billed (policy_bill): its usage at the price it was admitted
 * with, the reservation settled, or released when no upstream had it.
 *
 * Layer: flow. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "policy.h"
#include "request.h"
#include "util.h"


/* A request that names no model is no model call: it costs nothing and reserves no tokens,
 * only a request. One that names a model is estimated as DESIGN.md says: its prompt by
 * its size (a token per 4 bytes, OpenAI's rule of thumb) and its answer by max_tokens,
 * else the model's output cap from the model table, else this. */
#define ESTIMATE_OUTPUT_TOKENS 4096

/* Go's duration form, as OpenAI's x-ratelimit-reset-* headers have it: "0s", "59s",
 * "6m0s", "1h2m3s". At out (room for 32 bytes); its length. */
static size_t duration_text(char *out, int64_t s)
{
	size_t n = 0;

	if (s < 0)
		s = 0;
	if (s >= 3600) {
		n += fmt_dec(out + n, (uint64_t)(s / 3600));
		out[n++] = 'h';
	}
	if (s >= 60) {
		n += fmt_dec(out + n, (uint64_t)(s / 60 % 60));
		out[n++] = 'm';
	}
	n += fmt_dec(out + n, (uint64_t)(s % 60));
	out[n++] = 's';
	return n;
}

static size_t put(char *out, const char *s, size_t len)
{
	memcpy(out, s, len);
	return len;
}
#define PUT(out, lit) put(out, lit, sizeof(lit) - 1)

/* A count, or nano-USD as dollars for cost. */
static size_t amount_text(char *out, enum limit_kind k, int64_t v)
{
	if (k == LIMIT_COST)
		return fmt_usd_nano(out, v);
	return fmt_dec(out, (uint64_t)(v > 0 ? v : 0));
}

/* OpenAI's x-ratelimit-{limit,remaining,reset}-{requests,tokens} for the tightest limit of
 * each kind on the key and its user, and the same for cost (in USD, fastgate's own), so
 * that SDKs and people see where they stand on every answer. Made into one block of
 * lines: nine headers through snprintf and http_add_header cost 20,000 instructions a
 * request. */
static void ratelimit_headers(struct proxy_req *px, const struct spend_headroom hr[3],
                              unsigned found)
{
	static const char *const kn[3] = { "requests", "tokens", "cost" };
	char buf[3 * 3 * 80];   /* a line is at most 32 + 24 + 2 bytes */
	size_t n = 0;

	if (!found)
		return;
	for (int k = 0; k < 3; k++) {
		size_t kl;

		if (!(found & (1u << k)))
			continue;
		kl = strlen(kn[k]);
		n += PUT(buf + n, "x-ratelimit-limit-");
		n += put(buf + n, kn[k], kl);
		n += PUT(buf + n, ": ");
		n += amount_text(buf + n, (enum limit_kind)k, hr[k].lim.amount);
		n += PUT(buf + n, "\r\nx-ratelimit-remaining-");
		n += put(buf + n, kn[k], kl);
		n += PUT(buf + n, ": ");
		n += amount_text(buf + n, (enum limit_kind)k, hr[k].remaining);
		n += PUT(buf + n, "\r\nx-ratelimit-reset-");
		n += put(buf + n, kn[k], kl);
		n += PUT(buf + n, ": ");
		n += duration_text(buf + n, hr[k].reset_s);
		n += PUT(buf + n, "\r\n");
	}
	http_add_header_lines(px->req, buf, n);
}

/* The model's price, from a one-entry memo: most traffic names the same model again, and
 * a walk of the table's globs is dozens of fnmatch calls. */
static const struct price *find_price(struct gateway *gw, const char *model)
{
	struct price_memo *m = &gw->price_memo;

	if (!gw->prices || !*model)
		return NULL;
	if (m->table != gw->prices || strcmp(m->model, model) != 0) {
		m->table = gw->prices;
		snprintf(m->model, sizeof(m->model), "%s", model);
		m->price = pricing_find(gw->prices, model);
	}
	return m->price;
}

/* OpenAI's "n": that many answers, each up to max_tokens. */
static int64_t times_choices(const struct reqjson *rj, const char *body, int64_t out)
{
	for (size_t i = 0; i < rj->n_fields; i++) {
		const struct rj_field *f = &rj->fields[i];
		uint64_t n = 0;
		const char *p, *end;

		if (f->key_len != 1 || f->key[0] != 'n' || f->type != RJ_NUMBER)
			continue;
		p = body + f->val_off;
		end = p + f->val_len;
		for (; p < end && *p >= '0' && *p <= '9' && n < 1000000; p++)
			n = n * 10 + (uint64_t)(*p - '0');
		if (p != end || n <= 1)
			return out;   /* not a whole number above 1: the upstream refuses it */
		return out > INT64_MAX / (int64_t)n ? INT64_MAX : out * (int64_t)n;
	}
	return out;
}

static const char *party_word(char kind)
{
	return kind == 'u' ? "user" : "API key";
}

/* Refused: the answer says which limit or balance, with the exact wait. */
static void spend_refused(struct proxy_req *px, const struct spend_refusal *why)
{
	char msg[320], lt[LIMIT_TEXT_MAX], ra[24], a[40], b[40];

	switch (why->v) {
	case SPEND_UNPRICED:
		snprintf(msg, sizeof(msg), "model \"%s\" has no price, and the %s (id %lld) has "
		         "%s; add the model to the price table", px->model, party_word(why->kind),
		         (long long)why->id, why->lim.amount ? "a cost limit" : "a balance");
		proxy_reply_error(px, 403, "model_not_priced", msg);
		return;
	case SPEND_NO_BALANCE:
		http_add_header(px->req, "x-should-retry", "false");
		if (why->left <= 0) {
			snprintf(msg, sizeof(msg), "the balance of this key's user (id %lld) is spent; "
			         "ask an operator for a top-up", (long long)why->id);
		} else {
			money_format_usd(why->left, a, sizeof(a));
			money_format_usd(why->want, b, sizeof(b));
			snprintf(msg, sizeof(msg), "the balance of this key's user (id %lld) is %s USD, "
			         "less than this request may cost (%s USD: its prompt and max_tokens); "
			         "send a lower max_tokens or ask for a top-up", (long long)why->id, a, b);
		}
		proxy_reply_error(px, 429, "insufficient_quota", msg);
		return;
	case SPEND_BALANCE_HELD:
		/* not spent: requests in flight hold it, and settle at their real cost */
		http_add_header(px->req, "Retry-After", "1");
		money_format_usd(why->left, a, sizeof(a));
		money_format_usd(why->want, b, sizeof(b));
		snprintf(msg, sizeof(msg), "the balance of this key's user (id %lld) left after the "
		         "requests in flight is %s USD, less than this request may cost (%s USD); "
		         "retry when they finish", (long long)why->id, a, b);
		proxy_reply_error(px, 429, "rate_limited", msg);
		return;
	case SPEND_TOO_LARGE:
		http_add_header(px->req, "x-should-retry", "false");
		limit_format(&why->lim, lt, sizeof(lt));
		snprintf(msg, sizeof(msg), "this request needs %lld%s of the %s (id %lld) limit %s on "
		         "its own; it can never fit (send a lower max_tokens)", (long long)why->want,
		         why->lim.kind == LIMIT_COST ? " nano-USD" : "", party_word(why->kind),
		         (long long)why->id, lt);
		proxy_reply_error(px, 429, "request_too_large", msg);
		return;
	default:
		limit_format(&why->lim, lt, sizeof(lt));
		snprintf(ra, sizeof(ra), "%lld", (long long)why->retry_after);
		http_add_header(px->req, "Retry-After", ra);
		snprintf(msg, sizeof(msg), "the %s (id %lld) is over its limit %s; retry in %lld s",
		         party_word(why->kind), (long long)why->id, lt, (long long)why->retry_after);
		proxy_reply_error(px, 429, "rate_limited", msg);
		return;
	}
}

bool policy_admit(struct proxy_req *px)
{
	struct gateway *gw = px->gw;
	struct key *k = px->key;
	struct user *u = k->user;
	/* the second the request started in, as its audit row and the counters written with it
	 * have it: a request at 23:59:59 counts in that day, here and after a restart */
	int64_t now = (int64_t)px->started_at;
	const struct price *p;
	struct spend_refusal why;
	enum spend_verdict verdict;
	struct spend_headroom hr[3];
	unsigned found;
	bool model = px->model[0] != '\0';
	int64_t est_output = 0;

	if (u && u->suspended) {
		proxy_reply_error(px, 403, "account_suspended",
		                  "the user this API key belongs to is suspended");
		return false;
	}
	px->cost_nano = -1;
	px->mult[px->n_mult++] = k->multiplier_ppm;
	if (u)
		px->mult[px->n_mult++] = u->multiplier_ppm;
	if (gw->prices)
		px->mult[px->n_mult++] = gw->prices->multiplier_ppm;
	if ((p = find_price(gw, px->model))) {
		px->price = *p;
		px->price.match = NULL;
		px->priced = true;
		snprintf(px->price_version, sizeof(px->price_version), "%s", gw->prices->version);
	} else if (model && (px->route->require_price || gw->cfg->require_price)) {
		char msg[300];

		snprintf(msg, sizeof(msg), "model \"%s\" has no price, and %s requires one; add it "
		         "to the price table", px->model, px->route->require_price
		         ? "this route" : "this gateway");
		proxy_reply_error(px, 403, "model_not_priced", msg);
		return false;
	}
	if (model)
		px->est_prompt = ((int64_t)px->body_len + 3) / 4;
	/* the output's estimate only where something is limited: the model table is a walk
	 * of globs, and most keys have no limit */
	if (model && (k->acct.n_lim || (u && (u->acct.n_lim || u->bal.kept))) && px->body) {
		const struct model_info *mi = px->rj.has_max_tokens ? NULL
		                              : models_find(gw->models, px->model);

		est_output = px->rj.has_max_tokens ? px->rj.max_tokens
		                 : mi && mi->max_output_tokens > 0 ? mi->max_output_tokens
		                 : ESTIMATE_OUTPUT_TOKENS;
		est_output = times_choices(&px->rj, px->body, est_output);
	}
	px->hold.n = 0;
	px->hold.p[px->hold.n++] = (struct spend_party){ .acct = &k->acct, .kind = 'k',
	                                                 .id = k->id };
	if (u)
		px->hold.p[px->hold.n++] = (struct spend_party){ .acct = &u->acct, .bal = &u->bal,
		                                                 .kind = 'u', .id = u->id };
	/* max_tokens may be any JSON integer: the sum saturates, and an estimate that large
	 * is over any limit (request_too_large), never a wrapped negative that fits */
	px->hold.est.tokens = est_output > INT64_MAX - px->est_prompt ? INT64_MAX
	                      : px->est_prompt + est_output;
	px->hold.est.cost = !model ? 0 : px->priced
	                    ? pricing_cost_n(&px->price, &(struct usage_counts){
	                              .prompt = px->est_prompt, .completion = est_output },
	                              px->mult, px->n_mult)
	                    : -1;
	/* the reservation and the headroom it leaves, as one step across loops */
	keystore_spend_lock(gw->keys);
	verdict = spend_reserve(&px->hold, now, &why);
	found = spend_headroom(&px->hold, now, hr);
	keystore_spend_unlock(gw->keys);
	ratelimit_headers(px, hr, found);
	if (verdict != SPEND_OK) {
		spend_refused(px, &why);
		return false;
	}
	key_touch(k, now);
	return true;
}

/* The bill: what the request used, at the price it was admitted with. Usage the upstream
 * reported is billed as it is; without it (a stream the client left, an upstream that
 * sent none) the gateway's estimate is billed and flagged: the prompt's estimate and a
 * token per event relayed. Nothing served (no answer from any upstream) costs nothing and
 * gives the reservation back. */
void policy_bill(struct proxy_req *px)
{
	struct usage_counts uc = { 0 };
	bool served = px->forwarded && ((px->att.status > 0 && px->att.ttfb_s >= 0) ||
	                                px->left_in_flight);
	int64_t now = time(NULL);

	if (px->billed)
		return;
	px->billed = true;
	if (!served || !px->route) {
		keystore_spend_lock(px->gw->keys);
		spend_release(&px->hold, now);
		keystore_spend_unlock(px->gw->keys);
		return;
	}
	if (px->usage.found) {
		uc.prompt = px->usage.prompt_tokens > 0 ? px->usage.prompt_tokens : 0;
		uc.completion = px->usage.completion_tokens > 0 ? px->usage.completion_tokens : 0;
		uc.cached = px->usage.cached_tokens > 0 ? px->usage.cached_tokens : 0;
		uc.cache_write = px->usage.cache_write_tokens > 0 ? px->usage.cache_write_tokens : 0;
	} else if (px->model[0] && px->att.status < 400) {
		/* a served model call without usage: our estimate, flagged as one */
		uc.prompt = px->est_prompt;
		uc.completion = px->sse ? (int64_t)px->scan.events
		                        : ((int64_t)px->bytes_out + 3) / 4;
		if (px->sse && uc.completion > 0)
			uc.completion--;   /* the role chunk or [DONE] carries no token */
		px->usage_estimated = true;
		px->usage.prompt_tokens = uc.prompt;
		px->usage.completion_tokens = uc.completion;
		px->usage.found = true;
	}
	if (px->priced)
		px->cost_nano = pricing_cost_n(&px->price, &uc, px->mult, px->n_mult);
	else if (!px->model[0])
		px->cost_nano = 0;
	px->charged = true;
	keystore_spend_lock(px->gw->keys);
	spend_settle(&px->hold, now, uc.prompt > INT64_MAX - uc.completion ? INT64_MAX
	             : uc.prompt + uc.completion,
	             px->cost_nano > 0 ? px->cost_nano : 0);
	keystore_spend_unlock(px->gw->keys);
}
