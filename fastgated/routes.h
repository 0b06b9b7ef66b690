/* Route table: loaded from the YAML files in routes.d, matched per request.
 *
 * A table is immutable once loaded except for each route's `enabled` flag, which the
 * control channel flips at run time. Tables are reference counted so a reload can swap
 * in a new table while in-flight requests keep the route they started with. */
#ifndef FG_ROUTES_H
#define FG_ROUTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <jansson.h>

#include "balance.h"
#include "breaker.h"
#include "errlist.h"
#include "reqjson.h"
#include "transport.h"

struct route_kv {
	char *name;
	char *value;
};

struct pool;           /* pool.h: the registry of target states */
struct target_state;   /* pool.h: what a target's state is (breaker, in flight, drained) */

/* What an upstream speaks (DESIGN.md, Providers). Clients always speak OpenAI's API. */
enum provider {
	PROVIDER_OPENAI,       /* OpenAI's API as it is: OpenAI, vLLM, every compatible server */
	PROVIDER_AZURE,        /* Azure OpenAI: deployment URLs, api-version, the api-key header */
	PROVIDER_ANTHROPIC,    /* Anthropic's Messages API: chat completions translated (anthropic.h) */
};
const char *provider_name(enum provider p);

/* One upstream of a route's pool. Immutable once loaded, except `st`, bound by the pool
 * registry (pool.h) when the table is installed; NULL in a table only checked. */
struct route_target {
	char *url;             /* as written in the file (contains no secret) */
	char *origin;          /* "scheme://host[:port]" */
	char *path;            /* path from the URL (no query), or NULL: keep the client's path */
	char *host;            /* host[:port], for the Host header and display */
	enum tr_kind transport; /* which transport carries it: fixed when the routes load */
	char *api_key;         /* resolved secret or NULL; never log it */
	char *api_key_file;    /* as written, or NULL */
	char *ca_file;         /* CA bundle to verify an https upstream, or NULL: system CAs */
	char *model;           /* `model:` sent to this upstream instead of the client's, or NULL */
	enum provider provider;
	char *deployment;      /* azure: the deployment requests go to; NULL with api_version v1 */
	char *api_version;     /* azure: the api-version query value, or "v1" for /openai/v1;
	                        * anthropic: the anthropic-version header (default 2023-06-01) */
	int weight;            /* 1..1000, default 1 */
	int priority;          /* tier, 0..100 default 0: higher tiers serve only while every
	                        * lower one is unavailable */
	int line;              /* where it is written */
	/* who it is, for keeping its state across reloads: url, provider, deployment and the
	 * SHA-256 of its key (never shown) */
	unsigned char key_hash[32];
	struct target_state *st;
};

/* The same upstream: url, provider, deployment and key. */
bool route_target_same(const struct route_target *a, const struct route_target *b);

/* Outcomes `retry.on` may list (bits), beside specific status codes. */
enum {
	RETRY_ON_CONNECT  = 1u << 0,  /* refused, unreachable, name not found, TLS handshake:
	                               * nothing of the request reached the upstream */
	RETRY_ON_TIMEOUT  = 1u << 1,  /* no answer head within `timeout` */
	RETRY_ON_RESET    = 1u << 2,  /* closed or reset before anything reached the client */
	RETRY_ON_PROTOCOL = 1u << 3,  /* answered something that is not HTTP */
	RETRY_ON_429      = 1u << 4,
	RETRY_ON_5XX      = 1u << 5,  /* 500, 502, 503, 504 (not 501, 505...: those are answers) */
};
#define RETRY_MAX_CODES 16
/* The words of `retry.on` for those bits, in their order (parsing, route show, --check). */
struct retry_word { const char *word; unsigned bit; };
extern const struct retry_word retry_words[];
#define N_RETRY_WORDS 6

struct route_retry {
	int attempts;          /* tries in all, first included: 1..10 */
	unsigned on;           /* RETRY_ON_* */
	int codes[RETRY_MAX_CODES]; /* further statuses listed in `on` */
	size_t n_codes;
	int deadline_s;        /* one deadline across every attempt; 0 = none */
};

/* `health:` active checks; path NULL = none. */
struct route_health {
	char *path;
	int interval_s, timeout_s, healthy, unhealthy;
};

struct route {
	char *name;            /* unique across all files, [A-Za-z0-9_.-]+ */
	int priority;          /* lower first; default 100 */
	bool enabled_in_file;  /* `enabled:` as written (default true) */
	bool enabled;          /* effective state; the control channel may override */
	char *file;            /* path of the file that defined it */
	int line;              /* line of the route's first key in that file */

	/* match */
	char *match_path;      /* pattern, or NULL = any path */
	char **methods;        /* upper-case method names; n_methods == 0 = any */
	size_t n_methods;
	json_t *match_body;    /* object of field -> string glob | true/false | number; or NULL */

	/* the pool: `upstreams:` in order, or the one `upstream:` */
	struct route_target *targets;
	size_t n_targets;         /* 1..BALANCE_MAX_TARGETS */
	enum balance_kind balance; /* default weighted (round robin when every weight is 1) */
	struct route_retry retry;
	struct breaker_cfg breaker;
	bool breaker_on;          /* written, or a pool of several: one upstream alone keeps
	                           * today's behaviour (every request tried) unless asked */
	struct route_health health;
	char **fallback;          /* route names tried in order when this pool has nothing left */
	size_t n_fallback;
	int fallback_line;        /* where `fallback:` is written, for its errors */
	/* live, mutable like `enabled`: the balancer's position and its view of the targets
	 * (refreshed from each target's state before a pick), under the pool's lock (pool.h) */
	struct balancer bal;
	struct balance_target *bt;
	struct pool *pool;        /* the registry of its targets' states (pool_bind): its lock
	                           * guards bal, bt and those states across event loops */
	bool stream_usage;     /* ask streams for usage and strip it if the client did not; default true */
	int log_bodies;        /* keep this many bytes of request and response body in the audit
	                        * row, for debugging; 0 (default) keeps none */
	char *strip_prefix;    /* or NULL */
	int timeout;           /* seconds to first byte; default 60 */
	int idle_timeout;      /* seconds between stream chunks; default = timeout */
	char **strip_headers;  /* lower-cased */
	size_t n_strip_headers;
	bool require_price;    /* a model without a price gets 403 model_not_priced */
	bool drain_on_disconnect; /* on_disconnect: drain (read the upstream on, bounded, for
	                        * its usage) rather than cancel (the default) */
	char **models;         /* `models:` the model ids this route serves, for GET /v1/models */
	size_t n_models;
	struct route_kv *add_headers;
	size_t n_add_headers;
	json_t *add_body_fields; /* object, or NULL */
	struct rj_add *body_adds; /* the same, as the splice takes them (keys borrowed from it) */
	size_t n_body_adds;

	/* `if_env: VAR` named a variable that is unset or empty: the route is listed but
	 * enabled = enabled_in_file = false and api_key = NULL. A message for the operator,
	 * e.g. "OPENAI_API_KEY is not set"; NULL when the route is usable. Never enable a
	 * route that has this set. */
	char *unavailable;
};

struct route_bucket;

struct route_table {
	struct route **routes; /* in match order: priority, then file name, then position */
	size_t n;
	int refcount;
	char *dir;             /* directory it was loaded from */
	/* Match index, built at load: routes whose path pattern is a literal path are found by
	 * hashing the request path; `wild` holds every other route. Both list positions in
	 * `routes`, ascending, so merging them keeps the match order. */
	struct route_bucket *buckets;
	size_t n_buckets;      /* a power of two, or 0 */
	size_t *wild;
	size_t n_wild;
};

/* Load every *.yaml / *.yml file in `dir` (sorted by file name). On any error returns NULL
 * and adds one "FILE:LINE: message" line per problem to `errs`; all files are checked.
 * The returned table has refcount 1. */
struct route_table *route_table_load(const char *dir, struct errlist *errs);
/* Load the given files (used by tests and by route_table_load). Same error contract; the
 * files' order in `paths` stands in for file-name order. The table's dir is NULL. */
struct route_table *route_table_load_files(const char *const *paths, size_t n, struct errlist *errs);

void route_table_ref(struct route_table *t);
void route_table_unref(struct route_table *t);   /* frees at zero */

struct route *route_table_find(const struct route_table *t, const char *name);

/* What a request offers for matching: the body's one reading (reqjson_parse, made by the
 * parse phase; NULL when the request has no body), which every route reading the body
 * uses. */
struct route_request {
	const char *method;   /* "POST" */
	const char *path;     /* path only, no query string */
	const char *body;
	size_t body_len;
	const struct reqjson *rj;
};

enum route_match_result { ROUTE_MATCHED = 0, ROUTE_NO_MATCH = -1, ROUTE_BAD_BODY = -2 };

/* First enabled route, in table order, whose path, method and body match.
 * ROUTE_BAD_BODY: a route that reads the body would have been tried but the body is not
 * a JSON object (the caller answers 400). */
enum route_match_result route_match(const struct route_table *t, struct route_request *rq,
                                    const struct route **out);

/* The route's pool for `fastgated --check`: its upstreams (never a key), balance, retry
 * policy, breaker, health checks and fallbacks, a few indented lines. */
void route_print_pool(const struct route *r, FILE *out);

/* Has r an upstream of that provider? */
bool route_has_provider(const struct route *r, enum provider p);

/* Path pattern match: exact, `*` within one segment, `**` across segments, `{name}` one
 * non-empty segment; anything else literal. Exposed for tests. */
bool route_path_match(const char *pattern, const char *path);

/* Body match. `want` an object: the body must be a JSON object holding every field of
 * `want`, each matching: a string is an fnmatch(3) glob (`*`, `?`, `[...]`; `*` also
 * matches `/`) against the decoded string; a boolean or number must be an equal value of
 * the same family (1 == 1.0). route_value_match is one field's rule. Exposed for tests. */
bool route_body_match(const json_t *want, const struct reqjson *rj, const char *body);
bool route_value_match(const json_t *want, const struct reqjson *rj, const struct rj_field *have,
                       const char *body);

#endif
