/* Last-used times of keys, saved off the event loop (see keyusage.h).
 *
 * Until this module the loop wrote them itself, every 10 s, in a transaction on the key
 * store's connection: with the database's write lock held elsewhere, every request
 * stalled for up to the 5 s busy timeout, every 10 s (DESIGN.md: nothing on the loop
 * blocks, no synchronous SQLite write). Now the loop only appends (id, last_used) pairs
 * to a list under a mutex that is never held across a database call.
 *
 * Threads: the loop calls keyusage_flush; the thread "fg-keyuse" owns the connection. */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "keys.h"
#include "keyusage.h"
#include "log.h"
#include "util.h"

#define BUSY_TIMEOUT_MS 5000
/* Pairs held while the database keeps failing: beyond this the oldest go (one pair per
 * key and hand-over, so only a store with very many busy keys that fails for a long
 * time gets here). */
#define HELD_MAX (1u << 20)

struct keyusage {
	char *path;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t wake;
	/* under mu */
	struct key_use *held;     /* handed over, not written yet */
	size_t n, cap;
	unsigned long handovers;  /* keyusage_flush calls that brought pairs */
	bool stop;
	/* the thread's own */
	sqlite3 *db;
	sqlite3_stmt *st;
	bool failing;
};

static void db_close(struct keyusage *u)
{
	sqlite3_finalize(u->st);
	u->st = NULL;
	sqlite3_close(u->db);
	u->db = NULL;
}

/* Its own connection: the key store's belongs to the loop. The file exists (keystore_open
 * made it) and is in WAL mode, which is a property of the file. */
static int db_open(struct keyusage *u)
{
	if (sqlite3_open_v2(u->path, &u->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
	                    NULL) != SQLITE_OK)
		return -1;
	sqlite3_busy_timeout(u->db, BUSY_TIMEOUT_MS);
	/* Last-used times are advisory: their commits skip the fsync (WAL + NORMAL loses them
	 * only on a power failure). */
	sqlite3_exec(u->db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
	/* Never back in time: a pair written late (after a retry) cannot undo a newer one. */
	return sqlite3_prepare_v2(u->db,
	                          "UPDATE keys SET last_used = ?1 WHERE id = ?2 AND "
	                          "(last_used IS NULL OR last_used < ?1)", -1, &u->st, NULL) ==
	               SQLITE_OK ? 0 : -1;
}

/* One transaction for the whole batch. False if nothing of it was written. */
static bool write_batch(struct keyusage *u, const struct key_use *b, size_t n)
{
	bool ok = false;

	if (!u->db && db_open(u) < 0)
		goto done;
	if (sqlite3_exec(u->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
		goto done;
	for (size_t i = 0; i < n; i++) {
		int step;

		sqlite3_bind_int64(u->st, 1, b[i].last_used);
		sqlite3_bind_int64(u->st, 2, b[i].id);
		step = sqlite3_step(u->st);
		sqlite3_reset(u->st);
		if (step != SQLITE_DONE)
			goto done;
	}
	ok = sqlite3_exec(u->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK;
done:
	if (ok) {
		if (u->failing)
			log_info("key store %s: last-used times saved again", u->path);
		u->failing = false;
		return true;
	}
	if (!u->failing)
		log_warn("key store %s: cannot save last-used times (%s); they are kept and "
		         "tried again every 10 s", u->path,
		         u->db ? sqlite3_errmsg(u->db) : "cannot open it");
	u->failing = true;
	if (u->db)
		sqlite3_exec(u->db, "ROLLBACK", NULL, NULL, NULL);
	db_close(u);   /* the next attempt starts afresh (the file may have been replaced) */
	return false;
}

/* Append n pairs to what is held; mu held. Past HELD_MAX the oldest go. */
static void hold(struct keyusage *u, const struct key_use *b, size_t n)
{
	if (u->n + n > HELD_MAX) {
		size_t drop = u->n + n - HELD_MAX, from_held = drop < u->n ? drop : u->n;

		memmove(u->held, u->held + from_held, (u->n - from_held) * sizeof(*u->held));
		u->n -= from_held;
		b += drop - from_held;   /* all held gone: the oldest new ones go too */
		n -= drop - from_held;
		log_warn("key store %s: %zu last-used times dropped (more than %u waiting)",
		         u->path, drop, HELD_MAX);
	}
	if (u->n + n > u->cap) {
		u->cap = u->n + n > 2 * u->cap ? u->n + n : 2 * u->cap;
		u->held = xrealloc(u->held, u->cap * sizeof(*u->held));
	}
	memcpy(u->held + u->n, b, n * sizeof(*b));
	u->n += n;
}

/* Write each hand-over as it comes. After a failure, wait for the next hand-over (10 s)
 * rather than retry at once; on stop, one last attempt. */
static void *usage_main(void *arg)
{
	struct keyusage *u = arg;
	unsigned long seen = 0;

	pthread_setname_np(pthread_self(), "fg-keyuse");
	pthread_mutex_lock(&u->mu);
	for (;;) {
		struct key_use *b;
		size_t n;
		bool last;

		while (!u->stop && (u->n == 0 || seen == u->handovers))
			pthread_cond_wait(&u->wake, &u->mu);
		if (u->n == 0)
			break;   /* stopping, nothing held */
		seen = u->handovers;
		last = u->stop;
		b = u->held;
		n = u->n;
		u->held = NULL;
		u->n = u->cap = 0;
		pthread_mutex_unlock(&u->mu);
		if (write_batch(u, b, n)) {
			free(b);
			b = NULL;
		}
		pthread_mutex_lock(&u->mu);
		if (b) {
			/* older than what came meanwhile; the order does not matter (see db_open) */
			hold(u, b, n);
			free(b);
		}
		if (last)
			break;
	}
	if (u->n)
		log_warn("key store %s: %zu last-used times could not be saved", u->path, u->n);
	pthread_mutex_unlock(&u->mu);
	db_close(u);
	return NULL;
}

struct keyusage *keyusage_start(const char *keys_path, char **err)
{
	struct keyusage *u = xcalloc(1, sizeof(*u));
	int e;

	u->path = xstrdup(keys_path);
	pthread_mutex_init(&u->mu, NULL);
	pthread_cond_init(&u->wake, NULL);
	if ((e = pthread_create(&u->thread, NULL, usage_main, u)) != 0) {
		*err = xasprintf("cannot start the thread that saves key usage: %s", strerror(e));
		pthread_cond_destroy(&u->wake);
		pthread_mutex_destroy(&u->mu);
		free(u->path);
		free(u);
		return NULL;
	}
	return u;
}

void keyusage_flush(struct keyusage *u, struct keystore *ks)
{
	struct key_use *b;
	size_t n;

	if (!u || !(n = keystore_take_usage(ks, &b)))
		return;
	pthread_mutex_lock(&u->mu);
	hold(u, b, n);
	u->handovers++;
	pthread_cond_signal(&u->wake);
	pthread_mutex_unlock(&u->mu);
	free(b);
}

void keyusage_stop(struct keyusage *u)
{
	if (!u)
		return;
	pthread_mutex_lock(&u->mu);
	u->stop = true;
	pthread_cond_signal(&u->wake);
	pthread_mutex_unlock(&u->mu);
	pthread_join(u->thread, NULL);
	free(u->held);
	pthread_cond_destroy(&u->wake);
	pthread_mutex_destroy(&u->mu);
	free(u->path);
	free(u);
}
