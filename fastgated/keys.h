/* Client API keys: format, hashing, the SQLite store and the in-memory index.
 *
 * Secret format: "fg_" + 40 base62 characters from a CSPRNG + 6 base62 characters of
 * CRC32 over the first 43 characters (like GitHub's token format), so a leaked key can be
 * recognised offline and typos are rejected without a lookup. Only SHA-256(secret) and a
 * display prefix ("fg_" + first 8 random characters) are stored.
 *
 * The store is owned by the event-loop thread. Lookups never touch SQLite: every key is
 * loaded at open into a hash table keyed by SHA-256. Changes (create, revoke, ...) write
 * SQLite first and update memory only when the write succeeded; the write may wait for
 * another process's lock, so the daemon runs it on a thread (struct key_change below). */
#ifndef FG_KEYS_H
#define FG_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cidr.h"
#include "limit.h"
#include "spend.h"

#define KEY_PREFIX        "fg_"
#define KEY_RANDOM_LEN    40
#define KEY_CHECKSUM_LEN  6
#define KEY_SECRET_LEN    (3 + KEY_RANDOM_LEN + KEY_CHECKSUM_LEN)   /* 49 */
#define KEY_DISPLAY_LEN   (3 + 8)                                   /* "fg_AbCdEfGh" */
#define KEY_HASH_LEN      32
#define USER_NAME_MAX     64    /* characters, as for keys */
#define MULTIPLIER_ONE    1000000  /* multipliers are parts per million: 1x */
#define KEY_ALLOW_IPS_MAX 64    /* address ranges a key may be limited to */

/* A user owns keys (DESIGN.md, Spend control): its limits and balance apply to all of
 * them together, on top of each key's own. Users are never deleted (the audit names
 * them), only suspended. */
struct user {
	int64_t id;               /* first, as in struct key: keys.c searches both by it */
	char *name;
	int64_t created;          /* unix seconds */
	bool suspended;           /* its keys get 403 account_suspended */
	int64_t multiplier_ppm;   /* prices times this; MULTIPLIER_ONE = 1x */
	struct spend_balance bal; /* credit from the store; spent from the audit's counters */
	struct spend_account acct;
};

struct key {
	int64_t id;           /* first, as in struct user: keys.c searches both by it */
	char *name;
	char display[KEY_DISPLAY_LEN + 1];
	unsigned char hash[KEY_HASH_LEN];
	int64_t created;      /* unix seconds */
	int64_t expires;      /* unix seconds, 0 = never */
	int64_t revoked;      /* unix seconds, 0 = active */
	int64_t last_used;    /* unix seconds, 0 = never; in memory, persisted lazily */
	char **routes;        /* allowed route names; n_routes == 0 = all */
	size_t n_routes;
	int rpm;              /* the requests/min limit's amount, 0 = none (the old --rpm) */
	int64_t user_id;      /* 0 = no user */
	struct user *user;    /* NULL = no user; users stay in memory until the store closes */
	int64_t multiplier_ppm;
	struct spend_account acct;  /* the key's limits and settled totals */
	struct cidr *allow_ips;     /* n_allow_ips == 0: any client; else only these (403) */
	size_t n_allow_ips;
	bool usage_dirty;     /* last_used changed since the last keystore_take_usage */
};

/* Generate a new secret into out (KEY_SECRET_LEN + 1 bytes). 0 / -1 if the CSPRNG failed. */
int key_generate(char *out);
/* True if `s` has the fg_ format with a correct checksum. Cheap; no lookup. */
bool key_format_valid(const char *s, size_t len);
void key_hash(const char *secret, size_t len, unsigned char out[KEY_HASH_LEN]);
/* CRC-32 (IEEE 802.3, as zlib's crc32()) of buf: the checksum in a secret's last 6
 * characters, written in base62 (0-9A-Za-z), most significant digit first. Exposed so
 * tests and offline scanners can check it independently. */
uint32_t key_crc32(const void *buf, size_t len);

struct keystore;

/* Open (creating if needed) the SQLite store at `path`, migrate its schema
 * (PRAGMA user_version), load every key. NULL on error with *err set (caller frees). */
struct keystore *keystore_open(const char *path, char **err);
void keystore_close(struct keystore *ks);

/* Find the key for a presented secret: format check, SHA-256, hash-table lookup.
 * NULL if unknown or malformed. Does not check revoked/expired (see key_usable). */
struct key *keystore_lookup(struct keystore *ks, const char *secret, size_t len);

/* The last secret one client connection presented and the key it led to. A keep-alive
 * client sends the same key with every request, and its SHA-256 was about 4k of the
 * event loop's 35k instructions per request (issue #6). Zero it to start; wipe it with
 * key_memo_clear (it holds a secret). */
struct key_memo {
	uint64_t gen;
	struct key *key;
	size_t len;
	char secret[KEY_SECRET_LEN];
};
/* A SHA-256 context for one event loop's lookups (EVP_Digest would allocate one per
 * call). NULL when out of memory; lookups without one fall back to the store's, which
 * belongs to loop 0. */
struct key_hasher;
struct key_hasher *key_hasher_new(void);
void key_hasher_free(struct key_hasher *h);
/* keystore_lookup, answered from m when the same secret comes again and the store has not
 * changed since in a way that could send it elsewhere; remembers a found key in m. h:
 * the calling loop's hasher (NULL on loop 0). */
struct key *keystore_lookup_memo(struct keystore *ks, const char *secret, size_t len,
                                 struct key_memo *m, struct key_hasher *h);
void key_memo_clear(struct key_memo *m);
struct key *keystore_get(struct keystore *ks, int64_t id);

/* 1 if usable now (not revoked, not expired). */
bool key_usable(const struct key *k, int64_t now);

/* The rules for a user's name: as for a key's (key_name_check). */
int user_name_check(const char *name, char **err);

/* Users, in id order; valid until the next change to the store. */
size_t keystore_user_count(const struct keystore *ks);
struct user *keystore_user_at(struct keystore *ks, size_t i);
struct user *keystore_user_get(struct keystore *ks, int64_t id);

/* Create a key. routes may be NULL/0 (all routes). expires 0 = never. On success writes the
 * secret (KEY_SECRET_LEN + 1 bytes) into secret_out, sets *out and returns 0; on failure
 * returns -1 with *err set (caller frees). */
int keystore_create(struct keystore *ks, const char *name, char *const *routes, size_t n_routes,
                    int rpm, int64_t expires, char *secret_out, struct key **out, char **err);
/* Revoke by id: -1 with *err "no key with id N" if unknown. Revoking twice is fine. */
int keystore_revoke(struct keystore *ks, int64_t id, char **err);

/* The rules for a key's name (non-empty, at most 64 characters of printable UTF-8, no
 * leading or trailing space). 0 if `name` is acceptable, else -1 with *err saying why
 * (caller frees). keystore_create applies it; callers use it to tell a bad name from a
 * store failure. */
int key_name_check(const char *name, char **err);

/* What keystore_update changes: only the fields whose KEY_CHANGE_* bit is in `set`. */
#define KEY_CHANGE_ROUTES  0x1u
#define KEY_CHANGE_RPM     0x2u
#define KEY_CHANGE_EXPIRES 0x4u
#define KEY_CHANGE_LIMITS  0x8u     /* the whole list; with RPM, rpm is applied after it */
#define KEY_CHANGE_MULTIPLIER 0x10u
#define KEY_CHANGE_ALLOW_IPS  0x20u  /* the whole list; 0 ranges = any client */
struct key_changes {
	unsigned set;
	char *const *routes;  /* borrowed; n_routes == 0 = all routes */
	size_t n_routes;
	int rpm;              /* the requests/min limit; 0 = none */
	int64_t expires;      /* unix seconds, 0 = never */
	const struct limit *lim;  /* borrowed */
	size_t n_lim;
	int64_t multiplier_ppm;
	const struct cidr *allow_ips;  /* borrowed; at most KEY_ALLOW_IPS_MAX */
	size_t n_allow_ips;
};
/* Change a key's policy: SQLite first, then the in-memory key (so a running daemon applies
 * it to the next request). The rate-limit window in progress is kept. -1 with *err set
 * (caller frees) if the id is unknown ("no key with id N"), the key is revoked, a value is
 * invalid or the write failed; the key is then unchanged. */
int keystore_update(struct keystore *ks, int64_t id, const struct key_changes *ch, char **err);
/* Give a key a new secret, keeping its id, name, policy and history. The old secret stops
 * matching at once. Writes the new secret (KEY_SECRET_LEN + 1 bytes) into secret_out.
 * -1 with *err set (caller frees) if the id is unknown ("no key with id N"), the key is
 * revoked, or the write failed; the old secret then still works. */
int keystore_rotate(struct keystore *ks, int64_t id, char *secret_out, char **err);

/* All keys, in id order; valid until the next change to the store. */
size_t keystore_count(const struct keystore *ks);
struct key *keystore_at(struct keystore *ks, size_t i);

/* Record a use (in memory; saved by keyusage.c, off the event loop). */
void key_touch(struct key *k, int64_t now);
/* A key's last use, as handed to keyusage.c to be saved. */
struct key_use {
	int64_t id, last_used;
};
/* The keys touched since the previous call, as pairs in a new array *out (caller frees;
 * NULL when there are none); their marks are cleared. Returns how many. */
size_t keystore_take_usage(struct keystore *ks, struct key_use **out);

/* Held by the request path (any loop) around spend_reserve, spend_settle, spend_release
 * and reads of a key's or user's spend account, so that limits and balances are exact
 * across loops. Loop 0 changes the store with the other loops paused and needs no lock. */
void keystore_spend_lock(struct keystore *ks);
/* Several event loops will use the store: keystore_spend_lock locks from now on (with one
 * loop it costs nothing). Before the other loops start. */
void keystore_share(struct keystore *ks);
void keystore_spend_unlock(struct keystore *ks);

/* Spend (settled totals from the audit database's counters, at start): scope 'k' or
 * 'u' and id name the account; unknown ids are ignored (a key or user the store no
 * longer has). */
void keystore_spend_load(struct keystore *ks, char scope, int64_t id, enum spend_period p,
                         int64_t start, const struct spend_totals *t, int64_t now);

/* Route/state persistence shared with the control channel: the run-time enabled flag of
 * routes, kept in the same database. -1 = no override stored. */
int keystore_route_state_get(struct keystore *ks, const char *route);
int keystore_route_state_set(struct keystore *ks, const char *route, int enabled, char **err);
/* The same for an upstream of a route, drained or not (`upstream drain`), known by the
 * route's name and the upstream's URL as written: a state outlives reloads that move the
 * upstream in its list or change its key, and applies to every upstream of the route with
 * that URL. -1 = nothing stored, 0 = not drained, 1 = drained. */
int keystore_target_state_get(struct keystore *ks, const char *route, const char *url);
int keystore_target_state_set(struct keystore *ks, const char *route, const char *url,
                              int drained, char **err);

/* A change in three steps, so that its SQLite write never holds up the event loop:
 *  1. keystore_change_*() on the loop thread checks it against the keys in memory and
 *     prepares it (a new secret is made here); NULL with *err set (caller frees) when it
 *     is refused, e.g. "no key with id N";
 *  2. keystore_change_write() on any thread writes it on the store's own write connection.
 *     Changes are written one at a time, in the order they were prepared (one writer
 *     thread); a write waits for another process's lock until 5 s after its change was
 *     prepared, however many were queued before it. Changes prepared before
 *     earlier ones were written still hold together: update sets only the fields it names,
 *     and update or rotate of a key revoked meanwhile fails;
 *  3. keystore_change_apply() on the loop thread, in the same order, updates memory if the
 *     write succeeded and frees the change: 0 with *out (the key; NULL for a route or
 *     upstream state: the caller applies those) and the new secret in secret_out (create
 *     and rotate; KEY_SECRET_LEN + 1 bytes, may be NULL), or -1 with *err set (caller
 *     frees). A change never written reports that.
 * keystore_create() and the other calls above run the three steps in a row. */
struct key_change;
struct key_change *keystore_change_create(struct keystore *ks, const char *name,
                                          char *const *routes, size_t n_routes, int rpm,
                                          int64_t expires, char **err);
/* The same with spend control: an owning user (0 = none), limits and a multiplier
 * (MULTIPLIER_ONE = 1x). The user must exist and not be suspended. */
struct key_change *keystore_change_create_for(struct keystore *ks, const char *name,
                                              char *const *routes, size_t n_routes,
                                              int64_t expires, int64_t user_id,
                                              const struct limit *lim, size_t n_lim,
                                              int64_t multiplier_ppm, char **err);
/* A create change just prepared (by either call above) with its key limited to clients in
 * these ranges (copied). 0; or -1 with *err set (caller frees) when there are more than
 * KEY_ALLOW_IPS_MAX or c is no create, and c as it was. */
int keystore_change_create_allow_ips(struct key_change *c, const struct cidr *ips, size_t n,
                                     char **err);
struct key_change *keystore_change_revoke(struct keystore *ks, int64_t id, char **err);
struct key_change *keystore_change_update(struct keystore *ks, int64_t id,
                                          const struct key_changes *ch, char **err);
struct key_change *keystore_change_rotate(struct keystore *ks, int64_t id, char **err);
struct key_change *keystore_change_route_state(struct keystore *ks, const char *route,
                                               bool enabled, char **err);
struct key_change *keystore_change_target_state(struct keystore *ks, const char *route,
                                                const char *url, bool drained, char **err);
/* Users: create (balance_kept: the user has a balance, starting at credit nano-USD),
 * change, top up (amount in nano-USD, negative to correct; keeps a balance from then on).
 * keystore_change_apply answers these with *out NULL; keystore_change_user_id() names
 * the user once the change is written. */
#define USER_CHANGE_LIMITS     0x1u
#define USER_CHANGE_MULTIPLIER 0x2u
#define USER_CHANGE_SUSPENDED  0x4u
struct user_changes {
	unsigned set;
	const struct limit *lim;   /* borrowed: the whole list */
	size_t n_lim;
	int64_t multiplier_ppm;
	bool suspended;
};
struct key_change *keystore_change_user_create(struct keystore *ks, const char *name,
                                               bool balance_kept, int64_t credit,
                                               int64_t multiplier_ppm, const struct limit *lim,
                                               size_t n_lim, char **err);
struct key_change *keystore_change_user_update(struct keystore *ks, int64_t id,
                                               const struct user_changes *ch, char **err);
struct key_change *keystore_change_user_topup(struct keystore *ks, int64_t id, int64_t amount,
                                              char **err);
/* The user a user change is about (its new id for a create, once written); 0 for others. */
int64_t keystore_change_user_id(const struct key_change *c);
void keystore_change_write(struct key_change *c);
int keystore_change_apply(struct key_change *c, struct key **out, char *secret_out, char **err);
/* Drop a change without applying it (one that was never written). NULL is fine. */
void keystore_change_free(struct key_change *c);

#endif
