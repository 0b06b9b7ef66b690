/* Gateway error bodies in the OpenAI error shape, so SDKs show the message:
 * {"error":{"message":"…","type":"…","code":"…"}}. Messages are fixed strings chosen by
 * the gateway; nothing a client sent (keys above all) is echoed back. */
#ifndef FG_HTTPERR_H
#define FG_HTTPERR_H

#include <stddef.h>

/* Reason phrase for a status ("Bad Request"). */
const char *httperr_reason(int status);
/* OpenAI error `type` for a status ("invalid_request_error", "authentication_error", …). */
const char *httperr_type(int status);
/* Write the JSON body into buf; returns its length (truncated safely to cap - 1). */
size_t httperr_body(char *buf, size_t cap, int status, const char *code, const char *message);
/* The same in Anthropic's shape, for clients of its Messages API (their SDK reads it):
 * {"type":"error","error":{"type":"…","message":"…","code":"…"}}, the type Anthropic's
 * for the status (authentication_error, rate_limit_error, api_error, …), the gateway's
 * code kept beside it. */
size_t httperr_body_anthropic(char *buf, size_t cap, int status, const char *code,
                              const char *message);

#endif
