/* CORS for browser clients (DESIGN.md, Operating it): off unless cors_origins is set.
 *
 * Layer: flow. */
#ifndef FG_CORS_H
#define FG_CORS_H

#include <stdbool.h>

struct config;
struct http_request;

/* For a request from an allowed Origin, the Access-Control-* headers its answer needs
 * (added to whatever answer comes, errors included). true when it is a preflight
 * (OPTIONS with Access-Control-Request-Method): the caller answers it 204, without a
 * key. A request from another origin gets no header: the browser refuses it. */
bool cors_headers(const struct config *cfg, struct http_request *req);

#endif
