/* The policy phase: spend control, and the bill at a request's end. Layer: flow. */
#ifndef FG_POLICY_H
#define FG_POLICY_H

#include <stdbool.h>

struct proxy_req;

/* Reserve the request's estimate against its key's and user's limits and balance. true:
 * on to the next phase; false: the request was answered (429, 403). */
bool policy_admit(struct proxy_req *px);
/* The request's cost from its usage (or the estimate when the usage is unknown), and its
 * reservation settled or released; once (later calls return at once). relay.c calls it
 * before a whole answer's head, for X-Fastgate-Cost; proxy_finish in any case. */
void policy_bill(struct proxy_req *px);

#endif
