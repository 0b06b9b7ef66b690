/*
 * micro — fastgate micro-benchmarks, built by tests/bench/run.sh against build/libfg.a.
 *
 *   micro genkeys DB N SECRETS   create DB through keystore_open (so the schema is the
 *                                daemon's own), then insert N keys in one transaction with
 *                                direct SQL (hash = SHA-256 of the secret, as keys.c stores
 *                                it); the secrets go to SECRETS, one per line.
 *   micro bench ROUTES_DIR DB SECRETS
 *                                time keystore_open (load of every key), keystore_lookup
 *                                (hits in random order, and well-formed unknown secrets),
 *                                route_table_load and route_match (the last route, a random
 *                                route, no match). Prints one JSON object.
 *
 *   micro json [N]               time N (default 1,000,000) readings of a ~300-byte chat
 *                                request body by reqjson_parse (+ reqjson_free). Prints one
 *                                JSON object. Under valgrind --tool=callgrind, the inclusive
 *                                cost divided by N is its instructions a request.
 *
 * Route files come from `bench.py genroutes`: route i is named r<i> and is reached by the
 * request path that bench.py's path_for(i) gives (mirrored in path_for() below).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "errlist.h"
#include "keys.h"
#include "reqjson.h"
#include "routes.h"

static volatile uintptr_t sink;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void)
{
	uint64_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}

static void shuffle(size_t *a, size_t n)
{
	for (size_t i = n; i > 1; i--) {
		size_t j = (size_t)(rng() % i), t = a[i - 1];
		a[i - 1] = a[j];
		a[j] = t;
	}
}

static void die(const char *what, const char *err)
{
	fprintf(stderr, "micro: %s%s%s\n", what, err ? ": " : "", err ? err : "");
	exit(1);
}

static int cmd_genkeys(const char *db, long n, const char *secrets_path)
{
	char *err = NULL, secret[KEY_SECRET_LEN + 1], name[32], display[KEY_DISPLAY_LEN + 1];
	unsigned char hash[KEY_HASH_LEN];
	struct keystore *ks;
	sqlite3 *h;
	sqlite3_stmt *st;
	FILE *out;
	int64_t now = (int64_t)time(NULL);

	ks = keystore_open(db, &err);
	if (!ks)
		die("keystore_open", err);
	if (keystore_count(ks) != 0)
		die("key store is not empty", db);
	keystore_close(ks);

	out = fopen(secrets_path, "w");
	if (!out)
		die("cannot write", secrets_path);
	if (sqlite3_open(db, &h) != SQLITE_OK)
		die("sqlite3_open", sqlite3_errmsg(h));
	if (sqlite3_exec(h, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
		die("BEGIN", sqlite3_errmsg(h));
	if (sqlite3_prepare_v2(h,
	        "INSERT INTO keys (name, display, hash, created, expires, revoked, last_used, "
	        "routes, rpm) VALUES (?1, ?2, ?3, ?4, 0, 0, 0, '', 0)", -1, &st, NULL) != SQLITE_OK)
		die("prepare INSERT", sqlite3_errmsg(h));
	for (long i = 0; i < n; i++) {
		if (key_generate(secret) < 0)
			die("key_generate", NULL);
		key_hash(secret, KEY_SECRET_LEN, hash);
		memcpy(display, secret, KEY_DISPLAY_LEN);
		display[KEY_DISPLAY_LEN] = '\0';
		snprintf(name, sizeof(name), "bench-%ld", i);
		sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(st, 2, display, -1, SQLITE_TRANSIENT);
		sqlite3_bind_blob(st, 3, hash, KEY_HASH_LEN, SQLITE_TRANSIENT);
		sqlite3_bind_int64(st, 4, now);
		if (sqlite3_step(st) != SQLITE_DONE)
			die("INSERT", sqlite3_errmsg(h));
		sqlite3_reset(st);
		fprintf(out, "%s\n", secret);
	}
	sqlite3_finalize(st);
	if (sqlite3_exec(h, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
		die("COMMIT", sqlite3_errmsg(h));
	sqlite3_close(h);
	if (fclose(out) != 0)
		die("cannot write", secrets_path);
	return 0;
}

/* Mirrors bench.py path_for(): the request path that reaches route r<i>. */
static void path_for(size_t i, char *buf, size_t cap)
{
	switch (i % 4) {
	case 0: snprintf(buf, cap, "/svc%zu/deep/er/path", i); break;      /* pattern: any depth under /svc<i> */
	case 1: snprintf(buf, cap, "/v%zu/chat/completions", i); break;    /* pattern: one segment wildcard */
	default: snprintf(buf, cap, "/v1/r%zu/chat/completions", i); break; /* exact */
	}
}

/* ns per call of route_match, visiting the request paths in turn for at least `secs`. */
static double time_match(const struct route_table *t, char **paths, size_t n, double secs,
                         const char *want_prefix, size_t *wrong)
{
	double t0, t1;
	size_t calls = 0;

	*wrong = 0;
	t0 = now_s();
	do {
		for (size_t i = 0; i < n || i < 64; i++) {
			struct route_request rq = { .method = "POST", .path = paths[i % n], .body = "{}",
			                            .body_len = 2 };
			const struct route *out = NULL;
			enum route_match_result m = route_match(t, &rq, &out);
			sink += (uintptr_t)out + (uintptr_t)m;
			if (want_prefix && (m != ROUTE_MATCHED || !out ||
			                    strncmp(out->name, want_prefix, strlen(want_prefix)) != 0))
				(*wrong)++;
			if (!want_prefix && m == ROUTE_MATCHED)
				(*wrong)++;
			calls++;
		}
		t1 = now_s();
	} while (t1 - t0 < secs);
	return (t1 - t0) * 1e9 / (double)calls;
}

static int cmd_bench(const char *routes_dir, const char *db, const char *secrets_path)
{
	char *err = NULL, line[256];
	struct errlist errs = { 0 };
	struct keystore *ks;
	struct route_table *t;
	FILE *f;
	char **secrets = NULL, **miss;
	size_t n = 0, cap = 0, *order, hits = 0, nmiss = 10000, lookups = 0, wrong;
	double t0, t1, open_ms, load_ms, hit_ns, miss_ns, last_ns, rand_ns, none_ns;

	/* keys */
	t0 = now_s();
	ks = keystore_open(db, &err);
	t1 = now_s();
	if (!ks)
		die("keystore_open", err);
	open_ms = (t1 - t0) * 1e3;
	f = fopen(secrets_path, "r");
	if (!f)
		die("cannot read", secrets_path);
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		if (n == cap) {
			cap = cap ? cap * 2 : 1024;
			secrets = realloc(secrets, cap * sizeof(*secrets));
			if (!secrets)
				abort();
		}
		secrets[n++] = strdup(line);
	}
	fclose(f);
	if (n == 0)
		die("no secrets in", secrets_path);
	order = malloc(n * sizeof(*order));
	for (size_t i = 0; i < n; i++)
		order[i] = i;
	shuffle(order, n);
	for (size_t i = 0; i < n; i++)   /* warm-up pass, and a correctness check */
		if (keystore_lookup(ks, secrets[order[i]], strlen(secrets[order[i]])))
			hits++;
	if (hits != n)
		fprintf(stderr, "micro: only %zu of %zu keys found by keystore_lookup\n", hits, n);
	t0 = now_s();
	do {
		shuffle(order, n);
		for (size_t i = 0; i < n; i++)
			sink += (uintptr_t)keystore_lookup(ks, secrets[order[i]], KEY_SECRET_LEN);
		lookups += n;
		t1 = now_s();
	} while (t1 - t0 < 0.5 && lookups < 20u * n);
	hit_ns = (t1 - t0) * 1e9 / (double)lookups;
	miss = malloc(nmiss * sizeof(*miss));
	for (size_t i = 0; i < nmiss; i++) {
		miss[i] = malloc(KEY_SECRET_LEN + 1);
		if (key_generate(miss[i]) < 0)
			die("key_generate", NULL);
	}
	lookups = 0;
	t0 = now_s();
	do {
		for (size_t i = 0; i < nmiss; i++)
			sink += (uintptr_t)keystore_lookup(ks, miss[i], KEY_SECRET_LEN);
		lookups += nmiss;
		t1 = now_s();
	} while (t1 - t0 < 0.2);
	miss_ns = (t1 - t0) * 1e9 / (double)lookups;

	/* routes */
	t0 = now_s();
	t = route_table_load(routes_dir, &errs);
	t1 = now_s();
	if (!t) {
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.lines[i]);
		die("route_table_load failed", routes_dir);
	}
	load_ms = (t1 - t0) * 1e3;
	{
		size_t nr = t->n;
		char **all = malloc(nr * sizeof(*all)), *last[1], *none[1], buf[128], want[32];
		size_t *ord = malloc(nr * sizeof(*ord)), wrong_rand = 0, wrong_last = 0, wrong_none;

		for (size_t i = 0; i < nr; i++) {
			path_for(i, buf, sizeof(buf));
			all[i] = strdup(buf);
			ord[i] = i;
		}
		/* every route reaches its own r<i> (checked one by one) */
		for (size_t i = 0; i < nr; i++) {
			snprintf(want, sizeof(want), "r%zu", i);
			struct route_request rq = { .method = "POST", .path = all[i], .body = "{}",
			                            .body_len = 2 };
			const struct route *out = NULL;
			if (route_match(t, &rq, &out) != ROUTE_MATCHED || !out || strcmp(out->name, want))
				wrong_rand++;
		}
		shuffle(ord, nr);
		char **shuffled = malloc(nr * sizeof(*shuffled));
		for (size_t i = 0; i < nr; i++)
			shuffled[i] = all[ord[i]];
		last[0] = all[nr - 1];
		none[0] = "/no/such/route/here";
		snprintf(want, sizeof(want), "r%zu", nr - 1);
		last_ns = time_match(t, last, 1, 0.5, want, &wrong_last);
		rand_ns = time_match(t, shuffled, nr, 0.5, "r", &wrong);
		none_ns = time_match(t, none, 1, 0.5, NULL, &wrong_none);
		printf("{\"keys\":%zu,\"keys_found\":%zu,\"keystore_open_ms\":%.2f,"
		       "\"key_lookup_hit_ns\":%.1f,\"key_lookup_miss_ns\":%.1f,"
		       "\"routes\":%zu,\"route_table_load_ms\":%.2f,\"route_match_last_ns\":%.1f,"
		       "\"route_match_random_ns\":%.1f,\"route_match_none_ns\":%.1f,"
		       "\"route_match_wrong\":%zu}\n",
		       keystore_count(ks), hits, open_ms, hit_ns, miss_ns, nr, load_ms, last_ns,
		       rand_ns, none_ns, wrong_rand + wrong_last + wrong + wrong_none);
	}
	route_table_unref(t);
	keystore_close(ks);
	errlist_clear(&errs);
	return 0;
}

/* A chat request as clients send it: two messages, model, stream, temperature. */
static const char chat_body[] =
	"{\"model\":\"mock-gpt\",\"temperature\":0.7,\"stream\":true,\"max_tokens\":64,"
	"\"messages\":[{\"role\":\"system\",\"content\":\"You are a terse assistant. Answer in one "
	"sentence.\"},{\"role\":\"user\",\"content\":\"Summarise the benefits of keep-alive "
	"connections between a gateway and its upstream in a few words, please.\"}]}";

static int cmd_json(long n)
{
	size_t len = sizeof(chat_body) - 1;
	double t0, t1, parse_ns;

	t0 = now_s();
	for (long i = 0; i < n; i++) {
		struct reqjson rj;

		if (reqjson_parse(&rj, chat_body, len) != RJ_OK || !rj.model || !rj.stream)
			die("reqjson_parse did not read the chat body", NULL);
		sink += rj.n_fields;
		reqjson_free(&rj);
	}
	t1 = now_s();
	parse_ns = (t1 - t0) * 1e9 / (double)(n ? n : 1);
	printf("{\"body_bytes\":%zu,\"calls\":%ld,\"reqjson_parse_ns\":%.1f}\n", len, n,
	       parse_ns);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 5 && strcmp(argv[1], "genkeys") == 0)
		return cmd_genkeys(argv[2], atol(argv[3]), argv[4]);
	if (argc == 5 && strcmp(argv[1], "bench") == 0)
		return cmd_bench(argv[2], argv[3], argv[4]);
	if ((argc == 2 || argc == 3) && strcmp(argv[1], "json") == 0)
		return cmd_json(argc == 3 ? atol(argv[2]) : 1000000);
	fprintf(stderr, "usage: micro genkeys DB N SECRETS | micro bench ROUTES_DIR DB SECRETS | "
	        "micro json [N]\n");
	return 2;
}
