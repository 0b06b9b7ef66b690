/* Request ids: the X-Request-Id of every response and the id of its audit row.
 * 20 hex characters: the Unix second the request arrived in (8), then a 48-bit counter
 * (12): the event loop's index, then a count from a random value at start-up. Ids are unique within a process, and
 * with overwhelming probability across restarts (the same second and overlapping counter
 * ranges). The second lets the audit trail find a row by its id through the time index,
 * so the table needs no index of its own on request_id (issue #6). */
#ifndef FG_REQID_H
#define FG_REQID_H

#include <stdbool.h>
#include <stdint.h>

#define REQID_LEN 20

/* One generator per event loop (no global counter, so loops need no lock). The counter's
 * top REQID_LOOP_BITS bits are the loop's index, so ids from different loops never meet;
 * the rest starts at a random value, which keeps restarts apart. */
#define REQID_LOOP_BITS 6   /* up to 64 loops */
struct reqid_gen {
	uint64_t counter;
};

/* 0 on success, -1 if the CSPRNG failed. Call once before reqid_next. */
int reqid_init(struct reqid_gen *g, unsigned loop);
/* Write the next id (REQID_LEN chars + NUL) into out. */
void reqid_next(struct reqid_gen *g, char out[REQID_LEN + 1]);
/* The Unix second an id of this format was made in; false if id is not 20 lower-case hex
 * digits. Ids made before this format (a random prefix) decode too, to a meaningless
 * second: callers look near it first and then where such older ids may be. */
bool reqid_second(const char *id, int64_t *second);

#endif
