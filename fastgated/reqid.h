/* Request ids: the X-Request-Id of every response and the id of its audit row.
 * 20 hex characters: 32 random bits drawn at start-up, then a 48-bit counter, so ids are
 * unique within a process and, with overwhelming probability, across restarts. */
#ifndef FG_REQID_H
#define FG_REQID_H

#define REQID_LEN 20

/* 0 on success, -1 if the CSPRNG failed. Call once before reqid_next. */
int reqid_init(void);
/* Write the next id (REQID_LEN chars + NUL) into out. */
void reqid_next(char out[REQID_LEN + 1]);

#endif
