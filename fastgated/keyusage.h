/* Last-used times of keys, saved to the key store by a thread of its own.
 *
 * The event loop records each use in memory (key_touch). Every 10 s it hands the keys
 * touched since then to this thread (keyusage_flush), which writes them on its own
 * connection. The loop never waits for the key database: when another process holds its
 * write lock (an operator's sqlite3 shell, a backup), only this thread waits, and what it
 * could not write is retried with the next hand-over. */
#ifndef FG_KEYUSAGE_H
#define FG_KEYUSAGE_H

struct keystore;
struct keyusage;

/* Start the thread for the key store at keys_path (already created by keystore_open).
 * NULL with *err set (caller frees). */
struct keyusage *keyusage_start(const char *keys_path, char **err);
/* Loop thread: hand over the last-used times touched since the previous call. Never
 * blocks on the database. */
void keyusage_flush(struct keyusage *u, struct keystore *ks);
/* Write what is still held (waiting at most the busy timeout for a locked database), stop
 * the thread and free u. NULL is fine. */
void keyusage_stop(struct keyusage *u);

#endif
