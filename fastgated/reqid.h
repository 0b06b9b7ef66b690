/* Request ids: the X-Request-Id of every response and the id of its audit row.
 * 20 hex characters: the Unix second the request arrived in (8), then a 48-bit counter
 * that starts at a random value at start-up (12). Ids are unique within a process, and
 * with overwhelming probability across restarts (the same second and overlapping counter
 * ranges). The second lets the audit trail find a row by its id through the time index,
 * so the table needs no index of its own on request_id (issue #6). */
#ifndef FG_REQID_H
#define FG_REQID_H

#include <stdbool.h>
#include <stdint.h>

#define REQID_LEN 20

/* One generator per event loop (no global counter, so loops need no lock): each starts at
 * its own random value, which keeps ids from different loops apart as they are kept apart
 * across restarts. */
struct reqid_gen {
	uint64_t counter;
};

/* 0 on success, -1 if the CSPRNG failed. Call once before reqid_next. */
int reqid_init(struct reqid_gen *g);
/* Write the next id (REQID_LEN chars + NUL) into out. */
void reqid_next(struct reqid_gen *g, char out[REQID_LEN + 1]);
/* The Unix second an id of this format was made in; false if id is not 20 lower-case hex
 * digits. Ids made before this format (a random prefix) decode too, to a meaningless
 * second: callers look near it first and then where such older ids may be. */
bool reqid_second(const char *id, int64_t *second);

#endif
