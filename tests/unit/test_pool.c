/* The live state of a route's upstreams (pool.c): state kept across a reload for the same
 * upstream and fresh for a changed one, picks that skip open, drained and tried targets,
 * attempt outcomes reaching the breaker, and the wait a 503 announces. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "pool.h"
#include "routes.h"
#include "unit.h"

static struct route_table *load(const char *text)
{
	char path[] = "/tmp/fg-pool-XXXXXX";
	int fd = mkstemp(path);
	const char *paths[1] = { path };
	struct errlist e = { 0 };
	struct route_table *t;
	FILE *f;

	if (fd < 0 || !(f = fdopen(fd, "w"))) {
		perror("mkstemp");
		exit(2);
	}
	fputs(text, f);
	fclose(f);
	t = route_table_load_files(paths, 1, &e);
	for (size_t i = 0; i < e.n; i++)
		fprintf(stderr, "  %s\n", e.lines[i]);
	errlist_clear(&e);
	unlink(path);
	return t;
}

static const char three[] =
	"routes:\n"
	"  - name: chat\n"
	"    balance: round_robin\n"
	"    upstreams:\n"
	"      - url: http://a:1\n"
	"      - url: http://b:1\n"
	"        api_key: kb\n"
	"      - url: http://c:1\n"
	"    breaker: { failures: 2, cooldown: 5, max_cooldown: 60 }\n";

/* One failed attempt on target i at now. */
static void fail_once(struct route *r, int64_t now)
{
	enum breaker_pass pass;
	int i = pool_pick(r, 0, now, &pass);

	CHECK(i >= 0);
	if (i < 0)
		return;
	pool_attempt_start(r, (size_t)i);
	pool_attempt_end(r, (size_t)i, now, pass, OUTCOME_CONNECT, -1, -1);
}

TEST(a_reload_keeps_the_state_of_the_same_upstream_and_not_of_a_changed_one)
{
	struct pool p;
	struct route_table *t1 = load(three), *t2;
	struct route *r1, *r2;

	pool_init(&p);
	CHECK(t1 != NULL);
	if (!t1)
		return;
	pool_bind(&p, t1);
	CHECK_INT(p.n, 3);
	r1 = t1->routes[0];
	r1->targets[0].st->inflight = 7;
	r1->targets[1].st->drained = true;
	/* the same file again, except that c has a key now */
	t2 = load("routes:\n"
	          "  - name: chat\n"
	          "    upstreams:\n"
	          "      - url: http://a:1\n"
	          "      - url: http://b:1\n"
	          "        api_key: kb\n"
	          "      - url: http://c:1\n"
	          "        api_key: kc\n");
	CHECK(t2 != NULL);
	if (!t2) {
		route_table_unref(t1);
		return;
	}
	pool_bind(&p, t2);
	r2 = t2->routes[0];
	CHECK(r2->targets[0].st == r1->targets[0].st);
	CHECK_INT(r2->targets[0].st->inflight, 7);
	CHECK(r2->targets[1].st == r1->targets[1].st && r2->targets[1].st->drained);
	CHECK(r2->targets[2].st != r1->targets[2].st);
	CHECK_INT(p.n, 4);
	route_table_unref(t1);       /* the old c goes with the old table */
	CHECK_INT(p.n, 3);
	route_table_unref(t2);
	CHECK_INT(p.n, 0);
	pool_clear(&p);
}

TEST(picks_skip_open_drained_and_tried_targets_and_the_wait_is_the_earliest)
{
	struct pool p;
	struct route_table *t = load(three);
	struct route *r;
	enum breaker_pass pass;
	int64_t now = 1000000;

	pool_init(&p);
	if (!t)
		return;
	pool_bind(&p, t);
	r = t->routes[0];
	CHECK(r->breaker_on);
	/* a refuses twice in a row: its breaker opens for 5 s */
	for (int k = 0; k < 2; k++) {
		pool_attempt_start(r, 0);
		pool_attempt_end(r, 0, now, breaker_allow(&r->targets[0].st->br, now, NULL),
		                 OUTCOME_CONNECT, -1, -1);
	}
	CHECK_INT(r->targets[0].st->br.state, BREAKER_OPEN);
	CHECK_INT(r->targets[0].st->transitions[BREAKER_OPEN], 1);
	CHECK_INT(r->targets[0].st->attempts[OUTCOME_CONNECT], 2);
	CHECK_INT(r->targets[0].st->inflight, 0);
	r->targets[1].st->drained = true;
	for (int k = 0; k < 10; k++)
		CHECK_INT(pool_pick(r, 0, now, &pass), 2);
	CHECK_INT(pool_pick(r, 1u << 2, now, &pass), -1);   /* c tried: nothing left */
	CHECK(pool_route_available(r, now));
	r->targets[2].st->drained = true;
	CHECK(!pool_route_available(r, now));
	CHECK_INT(pool_wait_ms(r, now + 1000), 4000);        /* a, in 4 s; b and c drained */
	/* after the cooldown a gets one probe, and nobody else while it is out */
	CHECK_INT(pool_pick(r, 0, now + 5000, &pass), 0);
	CHECK_INT(pass, BREAKER_PROBE);
	{
		enum breaker_pass other;
		CHECK_INT(pool_pick(r, 0, now + 5000, &other), -1);
	}
	pool_attempt_end(r, 0, now + 5100, pass, OUTCOME_OK, -1, 80);
	CHECK_INT(r->targets[0].st->br.state, BREAKER_CLOSED);
	CHECK(r->targets[0].st->ewma_ms > 0);
	CHECK_INT(pool_wait_ms(r, now + 5100), 0);
	r->targets[0].st->drained = true;
	CHECK_INT(pool_wait_ms(r, now + 5100), -1);          /* every target drained */
	route_table_unref(t);
	pool_clear(&p);
}

TEST(retry_after_opens_for_exactly_that_long_and_a_lone_upstream_has_no_breaker)
{
	struct pool p;
	struct route_table *t = load(three);
	struct route_table *one = load("routes:\n"
	                               "  - name: solo\n"
	                               "    upstream: { url: http://a:1 }\n");
	struct route *r;
	enum breaker_pass pass;
	int64_t now = 5000000;
	int i;

	pool_init(&p);
	if (!t || !one)
		return;
	pool_bind(&p, t);
	pool_bind(&p, one);
	r = t->routes[0];
	i = pool_pick(r, 0, now, &pass);
	CHECK(i >= 0);
	pool_attempt_start(r, (size_t)i);
	pool_attempt_end(r, (size_t)i, now, pass, OUTCOME_429, 2, 10);
	CHECK_INT(r->targets[i].st->br.state, BREAKER_OPEN);
	CHECK(!target_available(r->targets[i].st, now + 1999));
	CHECK(target_available(r->targets[i].st, now + 2000));
	/* solo: failures change nothing, it is always tried */
	r = one->routes[0];
	CHECK(!r->breaker_on);
	for (int k = 0; k < 20; k++)
		fail_once(r, now);
	CHECK_INT(r->targets[0].st->br.state, BREAKER_CLOSED);
	CHECK_INT(r->targets[0].st->attempts[OUTCOME_CONNECT], 20);
	route_table_unref(t);
	route_table_unref(one);
	pool_clear(&p);
}

TEST(outcomes_of_statuses)
{
	CHECK_INT(attempt_outcome_of_status(200), OUTCOME_OK);
	CHECK_INT(attempt_outcome_of_status(404), OUTCOME_OK);
	CHECK_INT(attempt_outcome_of_status(501), OUTCOME_OK);
	CHECK_INT(attempt_outcome_of_status(429), OUTCOME_429);
	CHECK_INT(attempt_outcome_of_status(503), OUTCOME_5XX);
	CHECK_STR(attempt_outcome_name(OUTCOME_ABANDONED), "abandoned");
	CHECK_STR(attempt_outcome_name(OUTCOME_COUNT), "unknown");
}

RUN_TESTS()
