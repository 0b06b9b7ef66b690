/* Spend control's accounts (DESIGN.md, Spend control): what a key or a user may still
 * spend, and the reservation a request holds against it from its policy phase to its end.
 *
 * An account is a set of limits (limits.h) with a live counter each, plus the settled
 * totals of the current UTC day and month and of all time; a user also has a balance.
 * A request reserves its estimate against every limit and the balance of its key and of
 * its key's user at once, or against none (spend_reserve); at its end the reservation
 * becomes the actual usage (spend_settle) or is given back (spend_release).
 *
 * Everything here runs on the event-loop thread that owns the keys, and nothing waits in
 * between, so "at once" needs no lock: a check and its reservation are one step, however
 * many requests are in flight. Money is integer nano-USD throughout.
 *
 * Layer: state. Pure: no I/O, the time is an argument. */
#ifndef FG_SPEND_H
#define FG_SPEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "limit.h"

struct spend_totals {
	int64_t requests, tokens, cost;   /* cost: nano-USD */
};

enum spend_period { SPEND_ALL, SPEND_DAY, SPEND_MONTH };

struct spend_account {
	struct limit lim[LIMITS_MAX];
	struct limit_counter *ctr;        /* one per limit (allocated: most keys have none) */
	size_t n_lim;
	/* settled usage, for /v1/usage and for a calendar limit added while its window runs */
	int64_t day_start, month_start;   /* the windows day and month hold */
	struct spend_totals day, month, all;
};

/* A user's money: what was topped up, what settled requests spent, and what requests in
 * flight hold. An account without a balance kept is not limited by money. */
struct spend_balance {
	bool kept;
	int64_t credit, spent, reserved;
};

void spend_account_init(struct spend_account *a);
void spend_account_free(struct spend_account *a);
/* Replace the limits. A limit with the same kind and window as one before keeps its
 * counter (lowering a limit must not hand out a fresh window); a new calendar limit starts
 * from the settled totals of its window, a new sliding one from zero. */
void spend_account_set_limits(struct spend_account *a, const struct limit *l, size_t n,
                              int64_t now);
/* A persisted total (the audit database's counters, at start): totals of `period` for the
 * window starting at `start` (0 for SPEND_ALL). A day or month that is not the current one
 * is ignored. Calendar limits' counters take it too. */
void spend_account_load(struct spend_account *a, enum spend_period period, int64_t start,
                        const struct spend_totals *t, int64_t now);
/* The totals of the current day or month (zero once its window has passed), or of all. */
struct spend_totals spend_account_totals(const struct spend_account *a, enum spend_period p,
                                         int64_t now);

/* credit - spent - reserved, in nano-USD (may be negative: an answer may cost more than
 * its estimate). */
int64_t spend_balance_left(const struct spend_balance *b);

/* What a request is expected to use: tokens (prompt estimate + output cap) and cost
 * (nano-USD; -1 when its model has no price). */
struct spend_estimate {
	int64_t tokens;
	int64_t cost;
};

#define SPEND_PARTIES 2                /* the key and its user */
struct spend_party {
	struct spend_account *acct;
	struct spend_balance *bal;        /* NULL: no balance (keys) */
	char kind;                        /* 'k' key, 'u' user: for messages */
	int64_t id;
	unsigned held;                    /* spend.c: the limits reserved against, by kind and
	                                   * window, so that one added meanwhile (key update)
	                                   * is not settled for what it never held */
};

/* For the x-ratelimit-* headers: for each kind (out[LIMIT_REQUESTS], out[LIMIT_TOKENS],
 * out[LIMIT_COST]), the parties' limit of that kind with the least left now. */
struct spend_headroom {
	struct limit lim;
	int64_t remaining;                /* >= 0 */
	int64_t reset_s;                  /* seconds until it is fully free again */
};

struct spend_hold {
	struct spend_party p[SPEND_PARTIES];
	size_t n;
	int64_t at;                       /* when it was reserved: settlement lands there */
	struct spend_estimate est;
	bool active;                      /* reserved, neither settled nor released yet */
	/* spend.c: the headroom as spend_reserve saw it, for spend_headroom at the same time
	 * (one pass over the counters, not two): by kind, what is left and which limit */
	int64_t room_at;
	int64_t room_left[3];
	uint8_t room_p[3], room_j[3];     /* party and limit of the tightest of each kind */
	uint8_t room_found;
};

enum spend_verdict {
	SPEND_OK,
	SPEND_LIMITED,        /* a limit is full now: wait retry_after seconds */
	SPEND_TOO_LARGE,      /* the estimate alone is over a limit: waiting never helps */
	SPEND_NO_BALANCE,     /* the balance left is below the estimate */
	SPEND_BALANCE_HELD,   /* ... only because requests in flight hold it: retry soon */
	SPEND_UNPRICED,       /* a cost limit or a balance applies and the cost is unknown */
};

/* Why a reservation was refused: the party, the limit (or balance), and the numbers. */
struct spend_refusal {
	enum spend_verdict v;
	char kind;                        /* 'k' or 'u' */
	int64_t id;
	struct limit lim;                 /* SPEND_LIMITED, SPEND_TOO_LARGE */
	int64_t retry_after;              /* SPEND_LIMITED: seconds, >= 1 */
	int64_t used, want;               /* counted in the limit's window now; the estimate */
	int64_t left;                     /* SPEND_NO_BALANCE: nano-USD left */
};

/* Reserve h->est against every limit and balance of h->p[0..n) at `now`: all of them, or
 * none when one refuses (then *why says which; with several full limits, the one that
 * frees last, so that its Retry-After is enough for all). Sets h->at and h->active. */
enum spend_verdict spend_reserve(struct spend_hold *h, int64_t now, struct spend_refusal *why);
/* The request ended with this usage (tokens; cost in nano-USD, -1 = none): the reservation
 * is replaced by it in every counter and balance, and the settled totals grow by it.
 * No-op unless h->active. */
void spend_settle(struct spend_hold *h, int64_t now, int64_t tokens, int64_t cost);
/* Nothing was served (a failure before the first byte): the reservation is given back,
 * the request counted nowhere. No-op unless h->active. */
void spend_release(struct spend_hold *h, int64_t now);

/* The headroom of the hold's parties now (after spend_reserve at the same time, what it
 * saw). Returns the kinds found as bits (1 << kind); 0 when the parties have no limit. */
unsigned spend_headroom(struct spend_hold *h, int64_t now, struct spend_headroom out[3]);

#endif
