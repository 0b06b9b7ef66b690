/* The gateway's own answers to a key about itself: GET /v1/models and GET /v1/usage
 * (DESIGN.md, Spend control). Layer: flow. */
#ifndef FG_SELFSERVE_H
#define FG_SELFSERVE_H

#include <stdbool.h>

struct proxy_req;

/* When no route matched: answer GET (or HEAD) /v1/models or /v1/usage for the request's
 * key and return true (the request is then answered); false for any other request. */
bool selfserve_answer(struct proxy_req *px);

#endif
