/* The command table and the human-readable printers. --json output bypasses the printers
 * and prints the daemon's result as it came. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client.h"
#include "commands.h"
#include "table.h"

/* ---- JSON accessors that tolerate missing members (an older or newer daemon) ---- */

static const char *jstr(const json_t *o, const char *key)
{
	return json_string_value(json_object_get(o, key));
}

static json_int_t jint(const json_t *o, const char *key)
{
	return json_integer_value(json_object_get(o, key));
}

static bool jbool(const json_t *o, const char *key)
{
	return json_is_true(json_object_get(o, key));
}

/* Formatting helpers write into caller buffers of this size. */
#define FMT_SZ 128

static const char *fmt_int(char *buf, json_int_t v)
{
	snprintf(buf, FMT_SZ, "%" JSON_INTEGER_FORMAT, v);
	return buf;
}

enum time_style { DATE_FMT, MINUTE_FMT, FULL_FMT };

/* Unix seconds as UTC; `never` when the daemon sent null (not set). */
static const char *fmt_time(char *buf, const json_t *v, const char *never, enum time_style st)
{
	time_t t;
	struct tm tm;
	size_t n = 0;

	if (!json_is_integer(v) || json_integer_value(v) == 0)
		return never;
	t = (time_t)json_integer_value(v);
	if (!gmtime_r(&t, &tm))
		return "?";
	switch (st) {
	case DATE_FMT:
		n = strftime(buf, FMT_SZ, "%Y-%m-%d", &tm);
		break;
	case MINUTE_FMT:
		n = strftime(buf, FMT_SZ, "%Y-%m-%d %H:%MZ", &tm);
		break;
	case FULL_FMT:
		n = strftime(buf, FMT_SZ, "%Y-%m-%dT%H:%M:%SZ", &tm);
		break;
	}
	return n ? buf : "?";
}

/* Strings of a JSON array joined by `sep`; `empty` if there are none. Caller frees. */
static char *join(const json_t *a, const char *sep, const char *empty)
{
	size_t i, total = 1;
	json_t *v;
	char *s;

	json_array_foreach(a, i, v)
		total += strlen(json_string_value(v) ? json_string_value(v) : "?") + strlen(sep);
	s = calloc(1, total + strlen(empty));
	if (!s)
		abort();
	json_array_foreach(a, i, v) {
		if (i)
			strcat(s, sep);
		strcat(s, json_string_value(v) ? json_string_value(v) : "?");
	}
	if (!*s)
		strcpy(s, empty);
	return s;
}

static const char *fmt_rpm(char *buf, json_int_t rpm)
{
	if (rpm <= 0)
		return "unlimited";
	return fmt_int(buf, rpm);
}

static char *compact(const json_t *v, const char *none)
{
	char *s = (v && !json_is_null(v)) ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;

	return s ? s : strdup(none);
}

/* A two-column "label:  value" table. */
static void kv(struct cli_table *t, const char *label, const char *value)
{
	const char *row[2] = { label, value };

	cli_table_add(t, row);
}

/* ---- spend: limits, multiplier, what was spent (keys and users) ---- */

/* "12 requests, 3400 tokens, 0.012300000 USD" for one of a spend object's periods. */
static const char *fmt_spend(char *buf, const json_t *spend, const char *period)
{
	const json_t *p = json_object_get(spend, period);

	if (!p)
		return "-";
	snprintf(buf, FMT_SZ, "%" JSON_INTEGER_FORMAT " requests, %" JSON_INTEGER_FORMAT
	         " tokens, %s USD", jint(p, "requests"), jint(p, "tokens"),
	         jstr(p, "cost_usd") ? jstr(p, "cost_usd") : "?");
	return buf;
}

static void spend_rows(struct cli_table *t, const json_t *o)
{
	char b1[FMT_SZ], b2[FMT_SZ], b3[FMT_SZ], b4[FMT_SZ];
	char *limits = join(json_object_get(o, "limits"), ", ", "none");
	const json_t *spend = json_object_get(o, "spend");

	if (json_object_get(o, "user_id")) {
		if (json_is_integer(json_object_get(o, "user_id")))
			snprintf(b4, sizeof(b4), "%" JSON_INTEGER_FORMAT " (%s)", jint(o, "user_id"),
			         jstr(o, "user") ? jstr(o, "user") : "?");
		kv(t, "user:", json_is_integer(json_object_get(o, "user_id")) ? b4 : "none");
	}
	kv(t, "limits:", limits);
	kv(t, "multiplier:", jstr(o, "multiplier") ? jstr(o, "multiplier") : "1");
	kv(t, "spent today:", fmt_spend(b1, spend, "day"));
	kv(t, "this month:", fmt_spend(b2, spend, "month"));
	kv(t, "in all:", fmt_spend(b3, spend, "total"));
	free(limits);
}

/* ---- keys ---- */

static void print_key_detail(const json_t *k)
{
	struct cli_table *t = cli_table_new(2, NULL);
	char b1[FMT_SZ], b2[FMT_SZ], b3[FMT_SZ], b4[FMT_SZ], b5[FMT_SZ], b6[FMT_SZ];
	char *routes = join(json_object_get(k, "routes"), ", ", "all");
	char *ips = join(json_object_get(k, "allow_ips"), ", ", "any");

	kv(t, "id:", fmt_int(b1, jint(k, "id")));
	kv(t, "name:", jstr(k, "name"));
	kv(t, "prefix:", jstr(k, "display"));
	kv(t, "status:", jstr(k, "status"));
	kv(t, "created:", fmt_time(b2, json_object_get(k, "created"), "-", FULL_FMT));
	kv(t, "expires:", fmt_time(b3, json_object_get(k, "expires"), "never", FULL_FMT));
	kv(t, "revoked:", fmt_time(b4, json_object_get(k, "revoked"), "no", FULL_FMT));
	kv(t, "last used:", fmt_time(b5, json_object_get(k, "last_used"), "never", FULL_FMT));
	kv(t, "rpm:", fmt_rpm(b6, jint(k, "rpm")));
	kv(t, "routes:", routes);
	kv(t, "allow ips:", ips);
	spend_rows(t, k);
	cli_table_print(t, stdout);
	free(routes);
	free(ips);
}

/* The secret and what it grants, then the one reminder that it will not be shown again. */
static void print_key_created(const json_t *k)
{
	struct cli_table *t = cli_table_new(2, NULL);
	char b1[FMT_SZ], b2[FMT_SZ], b3[FMT_SZ];
	char *routes = join(json_object_get(k, "routes"), ", ", "all");
	char *ips = join(json_object_get(k, "allow_ips"), ", ", "any");

	kv(t, "key:", jstr(k, "key"));
	kv(t, "id:", fmt_int(b1, jint(k, "id")));
	kv(t, "name:", jstr(k, "name"));
	kv(t, "prefix:", jstr(k, "display"));
	kv(t, "routes:", routes);
	kv(t, "rpm:", fmt_rpm(b2, jint(k, "rpm")));
	kv(t, "expires:", fmt_time(b3, json_object_get(k, "expires"), "never", FULL_FMT));
	kv(t, "allow ips:", ips);
	cli_table_print(t, stdout);
	printf("\nStore this key now: it is shown only once; fastgate keeps only its hash.\n");
	free(routes);
	free(ips);
}

static void print_key_rotated(const json_t *k)
{
	printf("Key %" JSON_INTEGER_FORMAT " (%s) has a new secret; the old one no longer works.\n\n",
	       jint(k, "id"), jstr(k, "name") ? jstr(k, "name") : "?");
	print_key_created(k);
}

static void print_key_updated(const json_t *k)
{
	printf("Updated key %" JSON_INTEGER_FORMAT " (%s); the next request uses the new settings.\n\n",
	       jint(k, "id"), jstr(k, "name") ? jstr(k, "name") : "?");
	print_key_detail(k);
}

static void print_key_list(const json_t *a)
{
	static const char *const head[] = { "ID", "NAME", "PREFIX", "STATUS", "USER", "CREATED",
	                                    "EXPIRES", "LAST USED", "ALLOW", "LIMITS", "ROUTES" };
	struct cli_table *t = cli_table_new(11, head);
	size_t i;
	json_t *k;

	json_array_foreach(a, i, k) {
		char b1[FMT_SZ], b2[FMT_SZ], b3[FMT_SZ], b4[FMT_SZ], b5[FMT_SZ];
		char *routes = join(json_object_get(k, "routes"), ",", "all");
		char *limits = join(json_object_get(k, "limits"), ",", "none");
		char *ips = join(json_object_get(k, "allow_ips"), ",", "any");
		const char *row[11] = {
			fmt_int(b1, jint(k, "id")), jstr(k, "name"), jstr(k, "display"),
			jstr(k, "status"),
			json_is_integer(json_object_get(k, "user_id")) ? fmt_int(b5, jint(k, "user_id"))
			                                               : "-",
			fmt_time(b2, json_object_get(k, "created"), "-", DATE_FMT),
			fmt_time(b3, json_object_get(k, "expires"), "never", DATE_FMT),
			fmt_time(b4, json_object_get(k, "last_used"), "never", MINUTE_FMT),
			ips, limits, routes,
		};

		cli_table_add(t, row);
		free(routes);
		free(limits);
		free(ips);
	}
	if (cli_table_rows(t) == 0) {
		cli_table_free(t);
		printf("No keys. Create one with: fastgate-cli key create --name NAME\n");
		return;
	}
	cli_table_print(t, stdout);
}

static void print_key_revoked(const json_t *k)
{
	printf("Revoked key %" JSON_INTEGER_FORMAT " (%s). Requests with it now get 401.\n",
	       jint(k, "id"), jstr(k, "name") ? jstr(k, "name") : "?");
}

/* ---- routes ---- */

/* "enabled", "disabled" or "unavailable" (its if_env variable is unset); "*" when the run-time state differs from the file. */
/* ---- users ---- */

static void print_user_detail(const json_t *u)
{
	struct cli_table *t = cli_table_new(2, NULL);
	char b1[FMT_SZ], b2[FMT_SZ], b3[FMT_SZ], b4[FMT_SZ];
	const json_t *bal = json_object_get(u, "balance_usd");

	kv(t, "id:", fmt_int(b1, jint(u, "id")));
	kv(t, "name:", jstr(u, "name"));
	kv(t, "status:", jstr(u, "status"));
	kv(t, "created:", fmt_time(b2, json_object_get(u, "created"), "-", FULL_FMT));
	kv(t, "keys:", fmt_int(b3, jint(u, "keys")));
	if (json_is_string(bal))
		snprintf(b4, sizeof(b4), "%s USD (topped up %s, spent %s, held by requests %s)",
		         json_string_value(bal), jstr(u, "credit_usd"), jstr(u, "spent_usd"),
		         jstr(u, "reserved_usd"));
	kv(t, "balance:", json_is_string(bal) ? b4 : "not kept (no balance limit)");
	spend_rows(t, u);
	cli_table_print(t, stdout);
}

static void print_user_changed(const json_t *u)
{
	printf("User %" JSON_INTEGER_FORMAT " (%s); its keys' next requests see the change.\n\n",
	       jint(u, "id"), jstr(u, "name") ? jstr(u, "name") : "?");
	print_user_detail(u);
}

static void print_user_list(const json_t *a)
{
	static const char *const head[] = { "ID", "NAME", "STATUS", "KEYS", "BALANCE",
	                                     "SPENT", "LIMITS" };
	struct cli_table *t = cli_table_new(7, head);
	size_t i;
	json_t *u;

	json_array_foreach(a, i, u) {
		char b1[FMT_SZ], b2[FMT_SZ];
		char *limits = join(json_object_get(u, "limits"), ",", "none");
		const json_t *bal = json_object_get(u, "balance_usd");
		const char *row[7] = {
			fmt_int(b1, jint(u, "id")), jstr(u, "name"), jstr(u, "status"),
			fmt_int(b2, jint(u, "keys")),
			json_is_string(bal) ? json_string_value(bal) : "-",
			jstr(u, "spent_usd"), limits,
		};

		cli_table_add(t, row);
		free(limits);
	}
	if (cli_table_rows(t) == 0) {
		cli_table_free(t);
		printf("No users. Create one with: fastgate-cli user create --name NAME\n");
		return;
	}
	cli_table_print(t, stdout);
}

static const char *route_state(char *buf, const json_t *r)
{
	bool on = jbool(r, "enabled");
	const char *s = jstr(r, "unavailable") ? "unavailable" : on ? "enabled" : "disabled";

	snprintf(buf, FMT_SZ, "%s%s", s, on != jbool(r, "enabled_in_file") ? "*" : "");
	return buf;
}

static void print_route_list(const json_t *a)
{
	static const char *const head[] = { "NAME", "PRIO", "STATE", "PATH", "METHODS",
	                                    "UPSTREAM", "FILE" };
	struct cli_table *t = cli_table_new(7, head);
	bool overridden = false;
	size_t i;
	json_t *r;

	json_array_foreach(a, i, r) {
		char b1[FMT_SZ], b2[FMT_SZ], src[512];
		char *methods = join(json_object_get(r, "methods"), ",", "any");
		const char *row[7];

		snprintf(src, sizeof(src), "%s:%" JSON_INTEGER_FORMAT,
		         jstr(r, "file") ? jstr(r, "file") : "?", jint(r, "line"));
		row[0] = jstr(r, "name");
		row[1] = fmt_int(b1, jint(r, "priority"));
		row[2] = route_state(b2, r);
		row[3] = jstr(r, "path") ? jstr(r, "path") : "any";
		row[4] = methods;
		row[5] = jstr(r, "upstream");
		row[6] = src;
		overridden |= jbool(r, "enabled") != jbool(r, "enabled_in_file");
		cli_table_add(t, row);
		free(methods);
	}
	if (cli_table_rows(t) == 0) {
		cli_table_free(t);
		printf("No routes loaded. Add route files to routes.d and run: fastgate-cli reload\n");
		return;
	}
	cli_table_print(t, stdout);
	if (overridden)
		printf("* set at run time with fastgate-cli; differs from the route file\n");
}

/* "3 attempts on connect, timeout, 5xx; deadline 30 s" */
static void fmt_retry(char *buf, size_t size, const json_t *rt)
{
	json_int_t n = jint(rt, "attempts"), dl = jint(rt, "deadline");
	char *on = join(json_object_get(rt, "on"), ", ", "nothing");
	char dls[FMT_SZ];

	if (dl > 0)
		snprintf(dls, sizeof(dls), "deadline %" JSON_INTEGER_FORMAT " s", dl);
	else
		snprintf(dls, sizeof(dls), "no deadline");
	if (n <= 1)
		snprintf(buf, size, "1 attempt (no retries); %s", dls);
	else
		snprintf(buf, size, "%" JSON_INTEGER_FORMAT " attempts on %s; %s", n, on, dls);
	free(on);
}

/* "5 failures in a row or 50% of at least 20 requests a minute; open 5 s, up to 300 s", or
 * "off" (null: the route's one upstream is tried every time). */
static void fmt_breaker(char *buf, size_t size, const json_t *b)
{
	if (!json_is_object(b)) {
		snprintf(buf, size, "off");
		return;
	}
	snprintf(buf, size, "%" JSON_INTEGER_FORMAT " failures in a row or %" JSON_INTEGER_FORMAT
	         "%% of at least %" JSON_INTEGER_FORMAT " requests a minute; open %"
	         JSON_INTEGER_FORMAT " s, doubling up to %" JSON_INTEGER_FORMAT " s",
	         jint(b, "failures"), jint(b, "error_rate"), jint(b, "min_requests"),
	         jint(b, "cooldown"), jint(b, "max_cooldown"));
}

/* "GET /v1/models every 10 s (timeout 2 s; 2 to pass, 3 to fail)", or "off". */
static void fmt_health(char *buf, size_t size, const json_t *h)
{
	if (!json_is_object(h)) {
		snprintf(buf, size, "off");
		return;
	}
	snprintf(buf, size, "GET %s every %" JSON_INTEGER_FORMAT " s (timeout %"
	         JSON_INTEGER_FORMAT " s; %" JSON_INTEGER_FORMAT " to pass, %" JSON_INTEGER_FORMAT
	         " to fail)", jstr(h, "path") ? jstr(h, "path") : "?", jint(h, "interval"),
	         jint(h, "timeout"), jint(h, "healthy"), jint(h, "unhealthy"));
}

/* The time to upstream u's answer head, averaged; "-" before the first answer. The
 * average starts at 0, which is also what answers faster than the millisecond the daemon
 * measures in leave it at: the attempts that got an answer tell the two apart. */
static const char *fmt_latency(char *buf, const json_t *u)
{
	const json_t *v = json_object_get(u, "latency_ewma_ms"), *att = json_object_get(u, "attempts");

	if (!json_is_number(v) || (json_number_value(v) <= 0 &&
	                           jint(att, "ok") + jint(att, "429") + jint(att, "5xx") == 0))
		return "-";
	snprintf(buf, FMT_SZ, "%.1f ms", json_number_value(v));
	return buf;
}

/* The upstreams of one route, as route show lists them. */
static void print_pool(const json_t *a)
{
	static const char *const head[] = { "ID", "STATE", "WEIGHT", "PRIO", "MODEL", "URL" };
	struct cli_table *t = cli_table_new(6, head);
	size_t i;
	json_t *u;

	json_array_foreach(a, i, u) {
		char b1[FMT_SZ], b2[FMT_SZ];
		const char *row[6] = {
			jstr(u, "id"), jstr(u, "state"), fmt_int(b1, jint(u, "weight")),
			fmt_int(b2, jint(u, "priority")), jstr(u, "model") ? jstr(u, "model") : "-",
			jstr(u, "url"),
		};

		cli_table_add(t, row);
	}
	cli_table_print(t, stdout);
}

static void print_route_detail(const json_t *r)
{
	struct cli_table *t = cli_table_new(2, NULL);
	char b1[FMT_SZ], b2[FMT_SZ], src[512], key[512], tmo[FMT_SZ];
	char *methods = join(json_object_get(r, "methods"), ", ", "any");
	char *strip = join(json_object_get(r, "strip_headers"), ", ", "-");
	char *body = compact(json_object_get(r, "body"), "-");
	char *addh = compact(json_object_get(r, "add_headers"), "-");
	char *addb = compact(json_object_get(r, "add_body_fields"), "-");
	const json_t *h = json_object_get(r, "add_headers");

	if (json_object_size(h) == 0) {
		free(addh);
		addh = strdup("-");
	}
	snprintf(src, sizeof(src), "%s:%" JSON_INTEGER_FORMAT,
	         jstr(r, "file") ? jstr(r, "file") : "?", jint(r, "line"));
	if (jbool(r, "api_key_set"))
		snprintf(key, sizeof(key), "set%s%s%s", jstr(r, "api_key_file") ? " (from " : "",
		         jstr(r, "api_key_file") ? jstr(r, "api_key_file") : "",
		         jstr(r, "api_key_file") ? ")" : "");
	else
		snprintf(key, sizeof(key), "none (the client's Authorization is not forwarded)");
	snprintf(tmo, sizeof(tmo), "%" JSON_INTEGER_FORMAT " s to first byte, %"
	         JSON_INTEGER_FORMAT " s idle", jint(r, "timeout"), jint(r, "idle_timeout"));

	kv(t, "name:", jstr(r, "name"));
	kv(t, "state:", route_state(b1, r));
	if (jstr(r, "unavailable"))
		kv(t, "unavailable:", jstr(r, "unavailable"));
	kv(t, "in file:", jbool(r, "enabled_in_file") ? "enabled" : "disabled");
	kv(t, "priority:", fmt_int(b2, jint(r, "priority")));
	kv(t, "defined at:", src);
	kv(t, "path:", jstr(r, "path") ? jstr(r, "path") : "any");
	kv(t, "methods:", methods);
	kv(t, "body match:", body);
	kv(t, "upstream:", jstr(r, "upstream_url"));
	kv(t, "upstream key:", key);
	kv(t, "strip prefix:", jstr(r, "strip_prefix") ? jstr(r, "strip_prefix") : "-");
	kv(t, "timeout:", tmo);
	kv(t, "strip headers:", strip);
	kv(t, "add headers:", addh);
	kv(t, "add body fields:", addb);
	if (json_object_get(r, "upstreams")) {
		char bal[FMT_SZ], retry[512], brk[512], health[512];
		char *fallback = join(json_object_get(r, "fallback"), ", ", "-");

		snprintf(bal, sizeof(bal), "%s", jstr(r, "balance") ? jstr(r, "balance") : "?");
		fmt_retry(retry, sizeof(retry), json_object_get(r, "retry"));
		fmt_breaker(brk, sizeof(brk), json_object_get(r, "breaker"));
		fmt_health(health, sizeof(health), json_object_get(r, "health"));
		kv(t, "balance:", bal);
		kv(t, "retry:", retry);
		kv(t, "breaker:", brk);
		kv(t, "health:", health);
		kv(t, "fallback:", fallback);
		free(fallback);
	}
	cli_table_print(t, stdout);
	if (json_array_size(json_object_get(r, "upstreams")) > 0) {
		printf("\n");
		print_pool(json_object_get(r, "upstreams"));
	}
	free(methods);
	free(strip);
	free(body);
	free(addh);
	free(addb);
}

static void print_route_changed(const json_t *r)
{
	bool on = jbool(r, "enabled");
	const char *name = jstr(r, "name") ? jstr(r, "name") : "?";

	if (json_object_get(r, "changed") && !jbool(r, "changed"))
		printf("Route %s was already %s.\n", name, on ? "enabled" : "disabled");
	else
		printf("Route %s is now %s (kept across restarts).\n", name, on ? "enabled" : "disabled");
}

/* ---- upstreams ---- */

static void print_upstream_list(const json_t *a)
{
	static const char *const head[] = { "ID", "STATE", "BREAKER", "INFLIGHT", "LATENCY",
	                                    "WEIGHT", "PRIO", "URL" };
	struct cli_table *t = cli_table_new(8, head);
	size_t i;
	json_t *u;

	json_array_foreach(a, i, u) {
		char b1[FMT_SZ], b2[FMT_SZ], b3[FMT_SZ], b4[FMT_SZ];
		const char *row[8] = {
			jstr(u, "id"), jstr(u, "state"), jstr(u, "breaker"),
			fmt_int(b1, jint(u, "inflight")),
			fmt_latency(b2, u),
			fmt_int(b3, jint(u, "weight")), fmt_int(b4, jint(u, "priority")), jstr(u, "url"),
		};

		cli_table_add(t, row);
	}
	if (cli_table_rows(t) == 0) {
		cli_table_free(t);
		printf("No upstreams: no routes are loaded.\n");
		return;
	}
	cli_table_print(t, stdout);
}

const char *cli_fmt_outcomes(char *buf, size_t size, const json_t *att)
{
	const char *k;
	json_t *v;
	size_t n = 0;

	buf[0] = '\0';
	json_object_foreach((json_t *)att, k, v)
		if (json_integer_value(v) > 0 && n < size)
			n += (size_t)snprintf(buf + n, size - n, "%s%s %" JSON_INTEGER_FORMAT,
			                      n ? ", " : "", k, json_integer_value(v));
	return n ? buf : "-";
}

/* "ok 12, 5xx 1 (13 in all)", or "none yet". */
static void fmt_attempts(char *buf, size_t size, const json_t *att)
{
	char list[400];
	const char *k;
	json_t *v;
	json_int_t total = 0;

	json_object_foreach((json_t *)att, k, v)
		total += json_integer_value(v) > 0 ? json_integer_value(v) : 0;
	if (!total)
		snprintf(buf, size, "none yet");
	else
		snprintf(buf, size, "%s (%" JSON_INTEGER_FORMAT " in all)",
		         cli_fmt_outcomes(list, sizeof(list), att), total);
}

static void print_upstream_detail(const json_t *u)
{
	struct cli_table *t = cli_table_new(2, NULL);
	char b1[FMT_SZ], b2[FMT_SZ], b3[FMT_SZ], b4[FMT_SZ], b5[FMT_SZ], key[512], brk[FMT_SZ];
	char att[512];
	const json_t *health = json_object_get(u, "health");

	if (jbool(u, "api_key_set"))
		snprintf(key, sizeof(key), "set%s%s%s", jstr(u, "api_key_file") ? " (from " : "",
		         jstr(u, "api_key_file") ? jstr(u, "api_key_file") : "",
		         jstr(u, "api_key_file") ? ")" : "");
	else
		snprintf(key, sizeof(key), "none");
	if (jint(u, "retry_in_ms") > 0)
		snprintf(brk, sizeof(brk), "%s (takes requests again in %" JSON_INTEGER_FORMAT
		         " ms)", jstr(u, "breaker") ? jstr(u, "breaker") : "?", jint(u, "retry_in_ms"));
	else
		snprintf(brk, sizeof(brk), "%s", jstr(u, "breaker") ? jstr(u, "breaker") : "?");
	fmt_attempts(att, sizeof(att), json_object_get(u, "attempts"));

	kv(t, "id:", jstr(u, "id"));
	kv(t, "route:", jstr(u, "route"));
	kv(t, "url:", jstr(u, "url"));
	kv(t, "state:", jstr(u, "state"));
	kv(t, "drained:", jbool(u, "drained") ? "yes (no new requests)" : "no");
	kv(t, "breaker:", brk);
	kv(t, "failures in a row:", fmt_int(b1, jint(u, "consecutive_failures")));
	kv(t, "health:", json_is_string(health) ? json_string_value(health) : "no checks");
	kv(t, "in flight:", fmt_int(b2, jint(u, "inflight")));
	kv(t, "latency:", fmt_latency(b3, u));
	kv(t, "weight:", fmt_int(b4, jint(u, "weight")));
	kv(t, "priority:", fmt_int(b5, jint(u, "priority")));
	kv(t, "model:", jstr(u, "model") ? jstr(u, "model") : "the client's");
	kv(t, "upstream key:", key);
	kv(t, "attempts:", att);
	cli_table_print(t, stdout);
}

static void print_upstream_changed(const json_t *u)
{
	const char *id = jstr(u, "id") ? jstr(u, "id") : "?";
	const char *url = jstr(u, "url") ? jstr(u, "url") : "?";
	bool drained = jbool(u, "drained");

	if (json_object_get(u, "changed") && !jbool(u, "changed"))
		printf("Upstream %s (%s) was already %s.\n", id, url,
		       drained ? "drained" : "taking requests");
	else if (drained)
		printf("Upstream %s (%s) is drained: it gets no new requests; those in flight "
		       "finish (kept across restarts).\n", id, url);
	else
		printf("Upstream %s (%s) takes requests again (kept across restarts).\n", id, url);
}

/* ---- reload, status ---- */

static void print_reload(const json_t *r)
{
	size_t i;
	json_t *w;

	json_array_foreach(json_object_get(r, "warnings"), i, w)
		fprintf(stderr, "%s\n", json_string_value(w) ? json_string_value(w) : "?");
	printf("Routes reloaded: %" JSON_INTEGER_FORMAT " routes, %" JSON_INTEGER_FORMAT
	       " enabled.\n", jint(r, "routes"), jint(r, "routes_enabled"));
}

static const char *fmt_duration(char *buf, json_int_t s)
{
	if (s >= 86400)
		snprintf(buf, FMT_SZ, "%" JSON_INTEGER_FORMAT "d %" JSON_INTEGER_FORMAT "h %"
		         JSON_INTEGER_FORMAT "m", s / 86400, s % 86400 / 3600, s % 3600 / 60);
	else if (s >= 3600)
		snprintf(buf, FMT_SZ, "%" JSON_INTEGER_FORMAT "h %" JSON_INTEGER_FORMAT "m %"
		         JSON_INTEGER_FORMAT "s", s / 3600, s % 3600 / 60, s % 60);
	else if (s >= 60)
		snprintf(buf, FMT_SZ, "%" JSON_INTEGER_FORMAT "m %" JSON_INTEGER_FORMAT "s",
		         s / 60, s % 60);
	else
		snprintf(buf, FMT_SZ, "%" JSON_INTEGER_FORMAT "s", s);
	return buf;
}

static void print_status(const json_t *r)
{
	struct cli_table *t = cli_table_new(2, NULL);
	char b1[FMT_SZ], b2[FMT_SZ], b3[FMT_SZ], b4[FMT_SZ], b5[FMT_SZ], b6[FMT_SZ], b7[FMT_SZ], b8[FMT_SZ];

	snprintf(b2, sizeof(b2), "%" JSON_INTEGER_FORMAT " (%" JSON_INTEGER_FORMAT " enabled)",
	         jint(r, "routes"), jint(r, "routes_enabled"));
	snprintf(b3, sizeof(b3), "%" JSON_INTEGER_FORMAT " (%" JSON_INTEGER_FORMAT " active)",
	         jint(r, "keys"), jint(r, "keys_active"));
	kv(t, "version:", jstr(r, "version"));
	if (json_object_get(r, "pid"))
		kv(t, "pid:", fmt_int(b6, jint(r, "pid")));
	kv(t, "uptime:", fmt_duration(b1, jint(r, "uptime_s")));
	kv(t, "listen:", jstr(r, "listen"));
	if (json_object_get(r, "workers"))
		kv(t, "workers:", fmt_int(b7, jint(r, "workers")));
	kv(t, "routes:", b2);
	kv(t, "keys:", b3);
	if (json_object_get(r, "connections"))
		kv(t, "connections:", fmt_int(b8, jint(r, "connections")));
	kv(t, "inflight:", fmt_int(b4, jint(r, "inflight")));
	kv(t, "requests:", fmt_int(b5, jint(r, "requests")));
	if (jbool(r, "stopping"))
		kv(t, "state:", "stopping (draining in-flight requests)");
	cli_table_print(t, stdout);
}

void cli_print_error(const struct cli_cmd *cmd, const json_t *error, const char *message)
{
	const json_t *errors = json_object_get(error, "errors");
	const char *code = jstr(error, "code");

	if (code && strcmp(code, "reload_failed") == 0) {
		size_t i;
		json_t *e;

		if (json_array_size(errors) > 0)
			json_array_foreach(errors, i, e)
				fprintf(stderr, "%s\n", json_string_value(e) ? json_string_value(e) : "?");
		else
			fprintf(stderr, "%s\n", message);
		cli_err("reload failed; fastgated keeps serving with the previous configuration "
		        "and routes");
		return;
	}
	if (code && strcmp(code, "unknown_command") == 0) {
		cli_err("%s (is fastgated older than this fastgate-cli? '%s' needs '%s')", message,
		        cmd->verb ? cmd->verb : cmd->noun, cmd->ctl);
		return;
	}
	cli_err("%s", message);
}

/* ---- the table ---- */

#define OPT_END { 0 }
#define NO_POS { 0 }
/* The filters logs tail and logs export share. */
#define LOG_FILTERS \
	{ "--key", "ID", CLI_ARG_INT, "key_id", false, "only requests made with this key (0: without a key)", CLI_COMPLETE_KEY, NULL }, \
	{ "--user", "ID", CLI_ARG_INT, "user_id", false, "only requests made with a key of this user (0: without a user)", CLI_COMPLETE_USER, NULL }, \
	{ "--route", "NAME", CLI_ARG_STRING, "route", false, "only requests this route served", CLI_COMPLETE_ROUTE, NULL }, \
	{ "--status", "S", CLI_ARG_STRING, "status", false, "only this status (404) or class (5xx)", CLI_COMPLETE_NONE, NULL }, \
	{ "--stream", NULL, CLI_ARG_FLAG, "stream", false, "only streamed responses", CLI_COMPLETE_NONE, NULL }, \
	{ "--no-stream", NULL, CLI_ARG_FALSE, "stream", false, "only plain (not streamed) responses", CLI_COMPLETE_NONE, NULL }, \
	{ "--error", "KIND", CLI_ARG_STRING, "error", false, "only requests that failed this way (timeout, reset, ...)", CLI_COMPLETE_NONE, NULL }, \
	{ "--errors", NULL, CLI_ARG_FLAG, "error", false, "only requests that failed with any error", CLI_COMPLETE_NONE, NULL }

const struct cli_cmd cli_commands[] = {
	{ "key", "create", "key.create", "create a key and print its secret, once",
	  NO_POS, {
		{ "--name", "N", CLI_ARG_STRING, "name", true, "who or what the key is for", CLI_COMPLETE_NONE, NULL },
		{ "--routes", "a,b", CLI_ARG_LIST, "routes", false, "allow only these routes (default: all)", CLI_COMPLETE_ROUTES, NULL },
		{ "--rpm", "N", CLI_ARG_INT, "rpm", false, "requests per minute (default: unlimited)", CLI_COMPLETE_NONE, NULL },
		{ "--expires-days", "N", CLI_ARG_INT, "expires_days", false, "expire after N days (default: never)", CLI_COMPLETE_NONE, NULL },
		{ "--user", "ID", CLI_ARG_INT, "user", false, "the user who owns the key (its limits and balance apply too)", CLI_COMPLETE_NONE, NULL },
		{ "--limit", "KIND:N/WIN", CLI_ARG_MULTI, "limits", false, "a limit, repeatable: requests:100/min, tokens:1M/day, cost:25/month", CLI_COMPLETE_NONE, NULL },
		{ "--multiplier", "X", CLI_ARG_STRING, "multiplier", false, "prices times X for this key (default 1)", CLI_COMPLETE_NONE, NULL },
		{ "--allow-ips", "a,b", CLI_ARG_ADDRS, "allow_ips", false, "only clients at these addresses or ranges, such as 10.0.0.0/8,192.168.1.7 (default: any; at most 64)", CLI_COMPLETE_NONE, NULL },
		OPT_END }, print_key_created, false, NULL, 0 },
	{ "key", "list", "key.list", "list keys (never their secrets)",
	  NO_POS, {
		{ "--all", NULL, CLI_ARG_FLAG, "all", false, "include revoked keys", CLI_COMPLETE_NONE, NULL },
		OPT_END }, print_key_list, false, NULL, 0 },
	{ "key", "show", "key.show", "show one key",
	  { NULL, "ID", CLI_ARG_INT, "id", true, "the key's id (see key list)", CLI_COMPLETE_KEY, NULL },
	  { OPT_END }, print_key_detail, false, NULL, 0 },
	{ "key", "revoke", "key.revoke", "revoke a key; it stops working at once",
	  { NULL, "ID", CLI_ARG_INT, "id", true, "the key's id (see key list)", CLI_COMPLETE_KEY, NULL },
	  { OPT_END }, print_key_revoked, false, NULL, 0 },
	{ "key", "update", "key.update", "change a key's routes, limits, multiplier, client addresses or expiry, at once",
	  { NULL, "ID", CLI_ARG_INT, "id", true, "the key's id (see key list)", CLI_COMPLETE_KEY, NULL }, {
		{ "--routes", "a,b", CLI_ARG_LIST, "routes", false, "allow only these routes", CLI_COMPLETE_ROUTES, NULL },
		{ "--all-routes", NULL, CLI_ARG_CLEAR, "routes", false, "allow every route", CLI_COMPLETE_NONE, NULL },
		{ "--rpm", "N", CLI_ARG_INT, "rpm", false, "requests per minute (0: unlimited)", CLI_COMPLETE_NONE, NULL },
		{ "--expires-days", "N", CLI_ARG_INT, "expires_days", false, "expire N days from now", CLI_COMPLETE_NONE, NULL },
		{ "--no-expiry", NULL, CLI_ARG_CLEAR, "expires_days", false, "never expire", CLI_COMPLETE_NONE, NULL },
		{ "--limit", "KIND:N/WIN", CLI_ARG_MULTI, "limits", false, "replace the limits with these (repeatable)", CLI_COMPLETE_NONE, NULL },
		{ "--no-limits", NULL, CLI_ARG_CLEAR, "limits", false, "remove every limit", CLI_COMPLETE_NONE, NULL },
		{ "--multiplier", "X", CLI_ARG_STRING, "multiplier", false, "prices times X for this key", CLI_COMPLETE_NONE, NULL },
		{ "--allow-ips", "a,b", CLI_ARG_ADDRS, "allow_ips", false, "replace the addresses or ranges clients may call from (empty: any)", CLI_COMPLETE_NONE, NULL },
		{ "--any-ip", NULL, CLI_ARG_CLEAR, "allow_ips", false, "let clients call from any address", CLI_COMPLETE_NONE, NULL },
		OPT_END }, print_key_updated, true, NULL, 0 },
	{ "user", "create", "user.create", "create a user, with a balance and limits if given",
	  NO_POS, {
		{ "--name", "N", CLI_ARG_STRING, "name", true, "who the user is", CLI_COMPLETE_NONE, NULL },
		{ "--balance", "USD", CLI_ARG_STRING, "balance", false, "keep a balance, starting at USD (default: no balance kept)", CLI_COMPLETE_NONE, NULL },
		{ "--multiplier", "X", CLI_ARG_STRING, "multiplier", false, "prices times X for this user's keys (default 1)", CLI_COMPLETE_NONE, NULL },
		{ "--limit", "KIND:N/WIN", CLI_ARG_MULTI, "limits", false, "a limit for all the user's keys together, repeatable", CLI_COMPLETE_NONE, NULL },
		OPT_END }, print_user_changed, false, NULL, 0 },
	{ "user", "list", "user.list", "list users with their balances and limits",
	  NO_POS, { OPT_END }, print_user_list, false, NULL, 0 },
	{ "user", "show", "user.show", "show one user: balance, limits, spend",
	  { NULL, "ID", CLI_ARG_INT, "id", true, "the user's id (see user list)", CLI_COMPLETE_NONE, NULL },
	  { OPT_END }, print_user_detail, false, NULL, 0 },
	{ "user", "update", "user.update", "change a user's limits or multiplier, at once",
	  { NULL, "ID", CLI_ARG_INT, "id", true, "the user's id (see user list)", CLI_COMPLETE_NONE, NULL }, {
		{ "--limit", "KIND:N/WIN", CLI_ARG_MULTI, "limits", false, "replace the limits with these (repeatable)", CLI_COMPLETE_NONE, NULL },
		{ "--no-limits", NULL, CLI_ARG_CLEAR, "limits", false, "remove every limit", CLI_COMPLETE_NONE, NULL },
		{ "--multiplier", "X", CLI_ARG_STRING, "multiplier", false, "prices times X", CLI_COMPLETE_NONE, NULL },
		OPT_END }, print_user_changed, true, NULL, 0 },
	{ "user", "topup", "user.topup", "add USD to a user's balance (negative to take off)",
	  { NULL, "ID", CLI_ARG_INT, "id", true, "the user's id (see user list)", CLI_COMPLETE_NONE, NULL }, {
		{ "--amount", "USD", CLI_ARG_STRING, "amount", true, "dollars, such as 25 or 12.50", CLI_COMPLETE_NONE, NULL },
		OPT_END }, print_user_changed, false, NULL, 0 },
	{ "user", "suspend", "user.suspend", "refuse the user's keys (403) until resumed",
	  { NULL, "ID", CLI_ARG_INT, "id", true, "the user's id (see user list)", CLI_COMPLETE_NONE, NULL },
	  { OPT_END }, print_user_changed, false, NULL, 0 },
	{ "user", "resume", "user.resume", "let a suspended user's keys work again",
	  { NULL, "ID", CLI_ARG_INT, "id", true, "the user's id (see user list)", CLI_COMPLETE_NONE, NULL },
	  { OPT_END }, print_user_changed, false, NULL, 0 },
	{ "key", "rotate", "key.rotate", "replace a key's secret (printed once); the old one stops working",
	  { NULL, "ID", CLI_ARG_INT, "id", true, "the key's id (see key list)", CLI_COMPLETE_KEY, NULL },
	  { OPT_END }, print_key_rotated, false, NULL, 0 },
	{ "route", "list", "route.list", "list routes in match order",
	  NO_POS, { OPT_END }, print_route_list, false, NULL, 0 },
	{ "route", "show", "route.show", "show one route in full (never its upstream key)",
	  { NULL, "NAME", CLI_ARG_STRING, "name", true, "the route's name", CLI_COMPLETE_ROUTE, NULL },
	  { OPT_END }, print_route_detail, false, NULL, 0 },
	{ "route", "enable", "route.enable", "enable a route (kept across restarts)",
	  { NULL, "NAME", CLI_ARG_STRING, "name", true, "the route's name", CLI_COMPLETE_ROUTE, NULL },
	  { OPT_END }, print_route_changed, false, NULL, 0 },
	{ "route", "disable", "route.disable", "disable a route; the next match serves instead",
	  { NULL, "NAME", CLI_ARG_STRING, "name", true, "the route's name", CLI_COMPLETE_ROUTE, NULL },
	  { OPT_END }, print_route_changed, false, NULL, 0 },
	{ "route", "toggle", "route.toggle", "flip a route between enabled and disabled",
	  { NULL, "NAME", CLI_ARG_STRING, "name", true, "the route's name", CLI_COMPLETE_ROUTE, NULL },
	  { OPT_END }, print_route_changed, false, NULL, 0 },
	{ "upstream", "list", "upstream.list", "list the upstreams of every route, or of one",
	  NO_POS, {
		{ "--route", "NAME", CLI_ARG_STRING, "route", false, "only this route's upstreams", CLI_COMPLETE_ROUTE, NULL },
		OPT_END }, print_upstream_list, false, NULL, 0 },
	{ "upstream", "show", "upstream.show", "show one upstream: state, breaker, latency, attempts",
	  { NULL, "ID", CLI_ARG_STRING, "id", true, "ROUTE/INDEX, as upstream list shows it", CLI_COMPLETE_UPSTREAM, NULL },
	  { OPT_END }, print_upstream_detail, false, NULL, 0 },
	{ "upstream", "drain", "upstream.drain", "send an upstream no new requests (kept across restarts)",
	  { NULL, "ID", CLI_ARG_STRING, "id", true, "ROUTE/INDEX, as upstream list shows it", CLI_COMPLETE_UPSTREAM, NULL },
	  { OPT_END }, print_upstream_changed, false, NULL, 0 },
	{ "upstream", "undrain", "upstream.undrain", "let a drained upstream take requests again",
	  { NULL, "ID", CLI_ARG_STRING, "id", true, "ROUTE/INDEX, as upstream list shows it", CLI_COMPLETE_UPSTREAM, NULL },
	  { OPT_END }, print_upstream_changed, false, NULL, 0 },
	{ "reload", NULL, "reload", "re-read fastgate.yaml and the route files; on error nothing changes",
	  NO_POS, { OPT_END }, print_reload, false, NULL, 0 },
	{ "status", NULL, "status", "version, uptime, listen address, route and key counts",
	  NO_POS, { OPT_END }, print_status, false, NULL, 0 },
	{ "logs", "tail", "logs.tail", "print the latest requests, one line each; -f keeps following",
	  NO_POS, {
		{ "-f", NULL, CLI_ARG_FLAG, "follow", false, "keep printing new requests as they finish, until Ctrl-C", CLI_COMPLETE_NONE, NULL },
		{ "-n", "N", CLI_ARG_INT, "lines", false, "print the last N requests first (default 10, at most 10000)", CLI_COMPLETE_NONE, NULL },
		LOG_FILTERS,
		OPT_END }, NULL, false, cli_run_logs_tail, 0 },
	{ "logs", "export", "logs.export", "write audit rows to stdout, oldest first, as CSV or JSON lines",
	  NO_POS, {
		{ "--format", "csv|jsonl", CLI_ARG_STRING, "format", true, "CSV (RFC 4180, header first) or one JSON object per line", CLI_COMPLETE_NONE, "csv,jsonl" },
		{ "--since", "T", CLI_ARG_TIME, "since", false, "from T: 2026-11-23T10:00:00Z, 2026-11-23 (UTC), or an age like 30m, 1h, 7d", CLI_COMPLETE_NONE, NULL },
		{ "--until", "T", CLI_ARG_TIME, "until", false, "up to, not including, T (default: now)", CLI_COMPLETE_NONE, NULL },
		{ "--fields", "a,b", CLI_ARG_STRING, "fields", false, "only these columns, in this order (also: request_body, response_body)", CLI_COMPLETE_NONE, NULL },
		LOG_FILTERS,
		OPT_END }, NULL, false, cli_run_logs_export, 0 },
	{ "logs", "show", "logs.show", "show one request's audit record in full",
	  { NULL, "ID", CLI_ARG_STRING, "id", true, "the request id (X-Request-Id; id= in logs tail)", CLI_COMPLETE_NONE, NULL },
	  { OPT_END }, cli_print_log_record, false, NULL, 0 },
	{ "metrics", NULL, "metrics", "totals, errors, success rate, latency and TTFB percentiles, active keys and routes",
	  NO_POS, {
		{ "--since", "T", CLI_ARG_TIME, "since", false, "window start (default: 24 hours ago; same forms as logs export)", CLI_COMPLETE_NONE, NULL },
		{ "--until", "T", CLI_ARG_TIME, "until", false, "window end (default: now)", CLI_COMPLETE_NONE, NULL },
		{ "--hourly", NULL, CLI_ARG_FLAG, "hourly", false, "add one row per hour", CLI_COMPLETE_NONE, NULL },
		{ "--hours", "N", CLI_ARG_INT, "hours", false, "hourly rows for the last N hours (default 24)", CLI_COMPLETE_NONE, NULL },
		{ "--daily", NULL, CLI_ARG_FLAG, "daily", false, "add one row per day (UTC)", CLI_COMPLETE_NONE, NULL },
		{ "--days", "N", CLI_ARG_INT, "days", false, "daily rows for the last N days (default 7)", CLI_COMPLETE_NONE, NULL },
		{ "--by", "route|key|user|model|upstream", CLI_ARG_STRING, "by", false, "add a breakdown by route, key, user or model; or the upstreams' live counters", CLI_COMPLETE_NONE, "route,key,user,model,upstream" },
		OPT_END }, cli_print_metrics, false, NULL, 120 },
	{ "report", NULL, "report", "spend by user, key or model: requests, tokens, cost; this month by default",
	  NO_POS, {
		{ "--since", "T", CLI_ARG_TIME, "since", false, "from T (default: the 1st of this month, 00:00 UTC; same forms as logs export)", CLI_COMPLETE_NONE, NULL },
		{ "--until", "T", CLI_ARG_TIME, "until", false, "up to, not including, T (default: now)", CLI_COMPLETE_NONE, NULL },
		{ "--by", "user|key|model", CLI_ARG_STRING, "by", false, "one row per user (default), key or model", CLI_COMPLETE_NONE, "user,key,model" },
		{ "--csv", NULL, CLI_ARG_FLAG, "csv", false, "CSV (RFC 4180, header first, the total last) instead of a table", CLI_COMPLETE_NONE, NULL },
		OPT_END }, NULL, false, cli_run_report, 120 },
};
const size_t cli_ncommands = sizeof(cli_commands) / sizeof(cli_commands[0]);

const struct cli_noun cli_nouns[] = {
	{ "key", "manage client API keys" },
	{ "route", "inspect routes and switch them on and off" },
	{ "upstream", "inspect the upstreams of the routes' pools and drain them" },
	{ "user", "manage users: balances, limits, suspension" },
	{ "logs", "read the audit log: follow requests live, export rows, show one" },
};
const size_t cli_nnouns = sizeof(cli_nouns) / sizeof(cli_nouns[0]);
