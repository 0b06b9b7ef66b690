/* What the gateway answers itself, ahead of any route: GET /health, GET /metrics; and the
 * requests the HTTP server refused, turned into request-done events.
 *
 * Layer: flow. */
#ifndef FG_ENDPOINTS_H
#define FG_ENDPOINTS_H

struct gateway;
struct http_refusal;

/* Register /health and /metrics with gw->http. -1 when the server's table is full. */
int endpoints_register(struct gateway *gw);
/* http_handlers.refused (arg: the gateway): the refusal becomes a request-done event, so it
 * is audited and counted like any other request. */
void endpoints_refused(void *arg, const struct http_refusal *r);

#endif
