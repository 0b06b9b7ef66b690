/* Event-loop threads (`workers`, DESIGN.md Threads): loop 0 runs on the main thread and
 * also owns the control socket, signals, health checks and timers; loops 1..n-1 each run
 * on a thread of their own. Every loop accepts on the same address (SO_REUSEPORT) and
 * owns what it accepts, to the end.
 *
 * What this module does is the threads' mechanics: creating the loops' gateways, running
 * and stopping the threads, pausing them for loop 0 (gateway_pause), and carrying
 * finished requests from the other loops to loop 0's live tail. main.c builds each loop's
 * pieces (transports, HTTP server, metrics, hooks) between workers_new and workers_start.
 *
 * A loop is told what to do through its inbox: a word of flags under the module's mutex
 * and an eventfd that wakes its event base. Pausing is the only thing loop 0 waits for,
 * and a loop answers it between two events: no loop holds a lock or is half-way through
 * changing shared state while it is parked, so loop 0 may change keys, routes and
 * settings then without locks on the readers' side.
 *
 * Layer: wiring. */
#ifndef FG_WORKERS_H
#define FG_WORKERS_H

#include <event2/event.h>

struct gateway;
struct audit_record;
struct workers;

/* Make room for n loops (n >= 2) around loop 0's gateway gw0: the gateways of loops
 * 1..n-1 are zeroed except for their index and what every loop shares (gw0's pointers);
 * gw0 learns the loops (gw->all, n_loops) and gets its pause hook. NULL with *err set. */
struct workers *workers_new(struct gateway *gw0, unsigned n, char **err);
/* The gateway of loop i (1 <= i < n), for main.c to build its pieces. */
struct gateway *workers_loop(struct workers *ws, unsigned i);
/* Give each loop 1..n-1 its inbox and start its thread, which runs its base until
 * workers_join. 0, or -1 with *err set (the threads started are stopped again). */
int workers_start(struct workers *ws, char **err);
/* SIGTERM on loop 0: every other loop stops accepting and closes its idle connections
 * (http_server_stop_accepting), on its own thread; requests in flight go on. */
void workers_stop_accepting(struct workers *ws);
/* Tell every loop to leave its event loop and wait for the threads to end; hand loop 0
 * the records still on their way, and free the module's events. Then the loops' bases,
 * servers and transports are the caller's to free, from this thread, and loop 0's base
 * holds nothing of this module. */
void workers_join(struct workers *ws);
/* After workers_join and after the caller freed the loops' pieces. NULL is fine. */
void workers_free(struct workers *ws);

/* From loop i (>= 1): hand a finished request's record (a reference the caller gives up)
 * to loop 0, which publishes it to the live tail and the recent-records ring. */
void workers_publish(struct workers *ws, unsigned i, struct audit_record *rec);
/* Loop 0's side: called with each record handed over, on loop 0. Set before
 * workers_start. */
void workers_on_publish(struct workers *ws, void (*fn)(void *arg, struct audit_record *rec),
                        void *arg);

/* A new event base as every loop gets it (early-close detection, epoll changelist). */
struct event_base *workers_make_base(void);

#endif
