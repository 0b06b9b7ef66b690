/* The circuit breaker of one upstream target (DESIGN.md, Upstream pools): the state machine
 * only. It reads no clock, opens no socket and allocates nothing: every call takes now_ms,
 * the caller's monotonic clock in milliseconds, so a test can drive it with a fake one.
 *
 * CLOSED lets every request through. `failures` consecutive failures, or `error_rate`% of
 * failures among at least `min_requests` outcomes of the last minute, open it for `cooldown`
 * seconds. OPEN refuses everything until then; the first request asked about afterwards
 * moves it to HALF_OPEN and goes as the probe, and no other goes while the probe is out.
 * The probe's success closes it; its failure opens it again for twice the last cooldown, at
 * most `max_cooldown`. An upstream 429/503 with Retry-After opens it for exactly that long,
 * and active health checks open and close it.
 *
 * Ownership: the caller owns both structs (a struct breaker lives inside its target; nothing
 * is allocated, nothing needs freeing) and no function keeps a pointer to either. There is
 * no lock: calls on one breaker must come from one thread at a time.
 *
 * A now_ms smaller than one already seen counts as no time passed (the breaker keeps the
 * largest it has seen), so a clock stepping back cannot underflow a wait or revive old
 * outcomes. */
#ifndef FG_BREAKER_H
#define FG_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

/* The route's `breaker:` block. Values are the config loader's to validate; here a
 * failures or error_rate of 0 (or less) disables that trigger, a min_requests below 1
 * counts as 1, a negative cooldown as 0 and a max_cooldown below cooldown as cooldown. */
struct breaker_cfg {
	int failures;           /* consecutive failures that open it */
	int error_rate;         /* percent of failures in the last minute that opens it */
	int min_requests;       /* outcomes the last minute must hold before error_rate counts */
	int cooldown_s;         /* first open period after failures */
	int max_cooldown_s;     /* cap of the doubling */
};

/* Fill c with DESIGN.md's example: failures 5, error_rate 50, min_requests 20, cooldown 5,
 * max_cooldown 300. */
void breaker_cfg_defaults(struct breaker_cfg *c);

enum breaker_state { BREAKER_CLOSED, BREAKER_OPEN, BREAKER_HALF_OPEN };

/* What breaker_allow decided. DENY is 0, so the result reads as a bool. The caller keeps it
 * with the attempt and hands it back with the outcome: only the probe's outcome may close
 * or re-open a half-open breaker, not that of a long request sent before it opened. */
enum breaker_pass { BREAKER_DENY, BREAKER_PASS, BREAKER_PROBE };

/* The last minute of outcomes while closed, one bucket per second of now_ms / 1000. */
#define BREAKER_WINDOW_S 60
struct breaker_bucket {
	int64_t sec;            /* the second whose outcomes these are */
	uint32_t ok, failed;
};

/* Zero-initialised (or memset to 0) it is closed with no history: ready to use. The fields
 * are for reading (state for `upstream show` and the up metric); change them only through
 * the functions below. */
struct breaker {
	enum breaker_state state;
	bool probe_out;         /* HALF_OPEN: the probe has been let through, no outcome yet */
	int consecutive;        /* failures in a row while closed */
	struct breaker_bucket window[BREAKER_WINDOW_S];
	int64_t last_ms;        /* the largest now_ms seen */
	int64_t open_until_ms;  /* OPEN: refuse until then */
	int64_t hold_until_ms;  /* the end of the last Retry-After, which a health check keeps */
	int64_t cooldown_ms;    /* the last open period after failures; 0 once closed */
};

/* How long breaker_wait_ms says to wait while the probe is out (its answer may take any
 * time): a client told to retry should not come back at once. */
#define BREAKER_PROBE_WAIT_MS 1000
/* The longest Retry-After obeyed: a bigger one (or a date far ahead) is taken as this. */
#define BREAKER_MAX_RETRY_AFTER_S (24 * 3600)

/* May a request go to this target now? CLOSED: PASS. OPEN: DENY until open_until_ms; from
 * then the first call moves it to HALF_OPEN and returns PROBE. HALF_OPEN: PROBE if no probe
 * is out, else DENY. *changed (may be NULL) is set to whether the state changed (OPEN to
 * HALF_OPEN), for fastgate_breaker_transitions_total. Each PASS or PROBE must end in exactly
 * one of breaker_success, breaker_failure, breaker_retry_after or breaker_abandoned. */
enum breaker_pass breaker_allow(struct breaker *b, int64_t now_ms, bool *changed);

/* The outcome of a request breaker_allow let through; pass is what it returned. The probe
 * (PROBE while HALF_OPEN with the probe out): a success closes the breaker, forgets the
 * last minute and resets the cooldown; a failure opens it again for twice the last cooldown
 * (at most max_cooldown). A PASS while CLOSED (or a PROBE the breaker has since moved on
 * from) counts toward `failures` in a row (a success resets the run) and the last minute's
 * error rate, and a failure may open it for `cooldown`. Outcomes that reach an OPEN or
 * HALF_OPEN breaker otherwise say nothing new and are ignored. True when the state changed
 * (then b->state is the new one). */
bool breaker_success(struct breaker *b, int64_t now_ms, enum breaker_pass pass);
bool breaker_failure(struct breaker *b, const struct breaker_cfg *c, int64_t now_ms,
                     enum breaker_pass pass);

/* The upstream answered 429 or 503 with Retry-After: seconds (negative taken as 0, more than
 * BREAKER_MAX_RETRY_AFTER_S as that). Whatever the state, it is OPEN until at least now plus
 * exactly that long (a longer open period already running is kept); the cooldown is neither
 * used nor doubled. Report such an answer here instead of breaker_failure. A probe still out
 * no longer counts as one. True when the state changed. */
bool breaker_retry_after(struct breaker *b, int64_t now_ms, int64_t seconds);

/* A verdict of the active health check (after its healthy/unhealthy thresholds). Healthy
 * closes an OPEN or HALF_OPEN breaker at once as a probe's success does, unless a
 * Retry-After is still running: the upstream asked for that wait. Unhealthy opens a CLOSED
 * one for `cooldown`, re-opens a HALF_OPEN one as a failed probe does, and keeps an OPEN one
 * open at least the last cooldown from now (repeated verdicts do not double it). True when
 * the state changed. */
bool breaker_health(struct breaker *b, const struct breaker_cfg *c, int64_t now_ms,
                    bool healthy);

/* The request breaker_allow let through ended with no outcome (the client went away before
 * the upstream answered). For the probe, another may go; for a PASS nothing happens. */
void breaker_abandoned(struct breaker *b, enum breaker_pass pass);

/* Milliseconds until breaker_allow would let a request through, 0 if it would now; for the
 * Retry-After of a 503 when no target of a route is available (round up to seconds).
 * BREAKER_PROBE_WAIT_MS while a probe is out. Changes nothing. */
int64_t breaker_wait_ms(const struct breaker *b, int64_t now_ms);

/* "closed", "open" or "half_open": the `to` label of the transitions metric. A static
 * string; "unknown" for a value outside the enum. */
const char *breaker_state_name(enum breaker_state s);

#endif
