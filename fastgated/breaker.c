/* The circuit breaker of one upstream target (see breaker.h). Pure state: no clock, no I/O,
 * no allocation. */
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "breaker.h"

/* The values DESIGN.md shows for `breaker:`, for a route that gives the block without
 * every key. */
void breaker_cfg_defaults(struct breaker_cfg *c)
{
	c->failures = 5;
	c->error_rate = 50;
	c->min_requests = 20;
	c->cooldown_s = 5;
	c->max_cooldown_s = 300;
}

/* The time of this call: never earlier than one already seen, so that a clock stepping back
 * counts as no time passed instead of making waits negative or outcomes young again. */
static int64_t seen(struct breaker *b, int64_t now_ms)
{
	if (now_ms > b->last_ms)
		b->last_ms = now_ms;
	return b->last_ms;
}

/* now + ms without overflow: a caller's clock near INT64_MAX must not wrap an open period
 * into the past. ms is never negative here. */
static int64_t later(int64_t now_ms, int64_t ms)
{
	return now_ms > INT64_MAX - ms ? INT64_MAX : now_ms + ms;
}

/* The first open period after failures, in ms (a negative cooldown counts as 0). */
static int64_t base_cooldown(const struct breaker_cfg *c)
{
	return c->cooldown_s > 0 ? (int64_t)c->cooldown_s * 1000 : 0;
}

/* The open period after the last one (b->cooldown_ms) failed too: twice as long, within
 * max_cooldown, which is never below the first period. 0 means the breaker has not opened
 * for failures since it last closed, so the first period applies. */
static int64_t next_cooldown(const struct breaker *b, const struct breaker_cfg *c)
{
	int64_t base = base_cooldown(c);
	int64_t cap = c->max_cooldown_s > 0 ? (int64_t)c->max_cooldown_s * 1000 : 0;
	int64_t next = b->cooldown_ms > 0 ? b->cooldown_ms * 2 : base;

	if (cap < base)
		cap = base;
	return next > cap ? cap : next;
}

/* Refuse requests until until_ms. Any probe out no longer decides anything. */
static void open_until(struct breaker *b, int64_t until_ms)
{
	b->state = BREAKER_OPEN;
	b->probe_out = false;
	b->open_until_ms = until_ms;
}

/* Open (or re-open from half-open) for failures: each time in a row twice as long. */
static void open_for_failures(struct breaker *b, const struct breaker_cfg *c, int64_t now_ms)
{
	b->cooldown_ms = next_cooldown(b, c);
	open_until(b, later(now_ms, b->cooldown_ms));
}

/* Back to normal with a clean slate: the failures that opened it (still within the minute)
 * must not open it again on the first failure after it recovered. */
static void close_fresh(struct breaker *b)
{
	b->state = BREAKER_CLOSED;
	b->probe_out = false;
	b->consecutive = 0;
	b->cooldown_ms = 0;
	b->open_until_ms = 0;
	memset(b->window, 0, sizeof(b->window));
}

/* The bucket of second sec, emptied first if it still holds a minute-old second. */
static struct breaker_bucket *bucket_at(struct breaker *b, int64_t sec)
{
	struct breaker_bucket *bk = &b->window[sec % BREAKER_WINDOW_S];

	if (bk->sec != sec) {
		bk->sec = sec;
		bk->ok = 0;
		bk->failed = 0;
	}
	return bk;
}

/* Whether the last minute's failures reach error_rate percent of at least min_requests
 * outcomes. Called just after a failure was counted, so the total is never 0. Buckets of
 * seconds before the minute are skipped, not cleared: bucket_at reuses them. */
static bool rate_tripped(const struct breaker *b, const struct breaker_cfg *c, int64_t now_ms)
{
	int64_t sec = now_ms / 1000;
	uint64_t total = 0, failed = 0;

	/* above 100% it can never trip; this also keeps error_rate * total far from overflow */
	if (c->error_rate <= 0 || c->error_rate > 100)
		return false;
	for (int i = 0; i < BREAKER_WINDOW_S; i++) {
		const struct breaker_bucket *bk = &b->window[i];

		if (bk->sec > sec - BREAKER_WINDOW_S && bk->sec <= sec) {
			total += (uint64_t)bk->ok + bk->failed;
			failed += bk->failed;
		}
	}
	return total >= (uint64_t)(c->min_requests > 0 ? c->min_requests : 0) &&
	       failed * 100 >= (uint64_t)c->error_rate * total;
}

/* Whether an outcome reported with pass is the probe's, which alone decides a half-open
 * breaker. A PROBE of an earlier half-open period (the breaker opened again meanwhile)
 * counts as an ordinary request. */
static bool is_probe(const struct breaker *b, enum breaker_pass pass)
{
	return pass == BREAKER_PROBE && b->state == BREAKER_HALF_OPEN && b->probe_out;
}

/* The only place OPEN becomes HALF_OPEN: the breaker has no timer, so the cooldown ends
 * when the next request asks, which then goes as the probe. */
enum breaker_pass breaker_allow(struct breaker *b, int64_t now_ms, bool *changed)
{
	enum breaker_pass pass = BREAKER_DENY;
	bool moved = false;

	now_ms = seen(b, now_ms);
	if (b->state == BREAKER_OPEN && now_ms >= b->open_until_ms) {
		b->state = BREAKER_HALF_OPEN;
		moved = true;
	}
	if (b->state == BREAKER_CLOSED) {
		pass = BREAKER_PASS;
	} else if (b->state == BREAKER_HALF_OPEN && !b->probe_out) {
		b->probe_out = true;
		pass = BREAKER_PROBE;
	}
	if (changed)
		*changed = moved;
	return pass;
}

/* A success is evidence only from the probe (recovered) or while closed (breaks a run of
 * failures, dilutes the error rate); see breaker.h. */
bool breaker_success(struct breaker *b, int64_t now_ms, enum breaker_pass pass)
{
	bool moved = false;

	now_ms = seen(b, now_ms);
	if (pass == BREAKER_DENY)
		goto done;
	if (is_probe(b, pass)) {
		close_fresh(b);
		moved = true;
	} else if (b->state == BREAKER_CLOSED) {
		struct breaker_bucket *bk = bucket_at(b, now_ms / 1000);

		if (bk->ok < UINT32_MAX)
			bk->ok++;
		b->consecutive = 0;
	}
done:
	return moved;
}

/* A failure re-opens from the probe, and while closed may reach either trigger; one reaching
 * an open breaker was sent before it opened and is already accounted for. */
bool breaker_failure(struct breaker *b, const struct breaker_cfg *c, int64_t now_ms,
                     enum breaker_pass pass)
{
	bool moved = false;

	now_ms = seen(b, now_ms);
	if (pass == BREAKER_DENY)
		goto done;
	if (is_probe(b, pass)) {
		open_for_failures(b, c, now_ms);
		moved = true;
	} else if (b->state == BREAKER_CLOSED) {
		struct breaker_bucket *bk = bucket_at(b, now_ms / 1000);

		if (bk->failed < UINT32_MAX)
			bk->failed++;
		if (b->consecutive < INT_MAX)
			b->consecutive++;
		if ((c->failures > 0 && b->consecutive >= c->failures) ||
		    rate_tripped(b, c, now_ms)) {
			open_for_failures(b, c, now_ms);
			moved = true;
		}
	}
done:
	return moved;
}

/* The upstream named its own wait: obey it exactly rather than guess with the cooldown,
 * and remember it so a health check cannot cut it short. */
bool breaker_retry_after(struct breaker *b, int64_t now_ms, int64_t seconds)
{
	enum breaker_state was = b->state;
	int64_t until;

	now_ms = seen(b, now_ms);
	if (seconds < 0)
		seconds = 0;
	if (seconds > BREAKER_MAX_RETRY_AFTER_S)
		seconds = BREAKER_MAX_RETRY_AFTER_S;
	until = later(now_ms, seconds * 1000);
	if (until > b->hold_until_ms)
		b->hold_until_ms = until;
	if (b->state == BREAKER_OPEN && b->open_until_ms > until)
		until = b->open_until_ms;
	open_until(b, until);
	return b->state != was;
}

/* An active check sees the target without waiting for client traffic: it may close an open
 * breaker before its cooldown ends, and open one nothing is being sent to. */
bool breaker_health(struct breaker *b, const struct breaker_cfg *c, int64_t now_ms,
                    bool healthy)
{
	enum breaker_state was = b->state;

	now_ms = seen(b, now_ms);
	if (healthy) {
		if (b->state != BREAKER_CLOSED && now_ms >= b->hold_until_ms)
			close_fresh(b);
	} else if (b->state != BREAKER_OPEN) {
		open_for_failures(b, c, now_ms);
	} else {
		int64_t until = later(now_ms, b->cooldown_ms > 0 ? b->cooldown_ms : base_cooldown(c));

		if (until > b->open_until_ms)
			b->open_until_ms = until;
	}
	return b->state != was;
}

/* Without this a probe whose client left would hold a half-open breaker shut for good. */
void breaker_abandoned(struct breaker *b, enum breaker_pass pass)
{
	if (is_probe(b, pass))
		b->probe_out = false;
}

/* Read-only, so the clock-going-back rule is applied here without storing now. */
int64_t breaker_wait_ms(const struct breaker *b, int64_t now_ms)
{
	int64_t wait = 0;

	if (now_ms < b->last_ms)
		now_ms = b->last_ms;
	if (b->state == BREAKER_OPEN && b->open_until_ms > now_ms)
		wait = b->open_until_ms - now_ms;
	else if (b->state == BREAKER_HALF_OPEN && b->probe_out)
		wait = BREAKER_PROBE_WAIT_MS;
	return wait;
}

/* Metric labels and CLI output name the states the same way. */
const char *breaker_state_name(enum breaker_state s)
{
	switch (s) {
	case BREAKER_CLOSED:
		return "closed";
	case BREAKER_OPEN:
		return "open";
	case BREAKER_HALF_OPEN:
		return "half_open";
	}
	return "unknown";
}
