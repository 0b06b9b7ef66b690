/* The gateway's own answers to a key about itself: GET /v1/models and GET /v1/usage
 * (DESIGN.md, Spend control). Layer: flow. */
#ifndef FG_SELFSERVE_H
#define FG_SELFSERVE_H

#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>

struct proxy_req;
struct spend_account;

/* When no route matched: answer GET (or HEAD) /v1/models or /v1/usage for the request's
 * key and return true (the request is then answered); false for any other request. */
bool selfserve_answer(struct proxy_req *px);

/* The JSON views of money and spend that /v1/usage shows and the control channel's key
 * and user objects share. Money as an exact decimal string (nano-USD inside), never a
 * double. */
json_t *selfserve_usd(int64_t nano);
/* {"day":{requests,tokens,cost_usd},"month":{...},"total":{...}} of an account now. */
json_t *selfserve_spend_json(const struct spend_account *a, int64_t now);

#endif
