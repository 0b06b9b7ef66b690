#include <stdio.h>
#include <string.h>

#include "httperr.h"

const char *httperr_reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default:  return status < 400 ? "OK" : status < 500 ? "Client Error" : "Server Error";
	}
}

const char *httperr_type(int status)
{
	switch (status) {
	case 401: return "authentication_error";
	case 403: return "permission_error";
	case 404: return "not_found_error";
	case 429: return "rate_limit_error";
	case 502: case 504: return "upstream_error";
	case 503: return "service_unavailable";
	default:  return status >= 500 ? "server_error" : "invalid_request_error";
	}
}

/* Messages are gateway-chosen ASCII, but escape anyway so a future caller cannot break
 * the JSON. */
static size_t json_escape(char *out, size_t cap, const char *s)
{
	size_t n = 0;
	for (; *s && n + 7 < cap; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') { out[n++] = '\\'; out[n++] = (char)c; }
		else if (c < 0x20) n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
		else out[n++] = (char)c;
	}
	out[n] = '\0';
	return n;
}

size_t httperr_body(char *buf, size_t cap, int status, const char *code, const char *message)
{
	char msg[512];
	int n;

	json_escape(msg, sizeof(msg), message);
	n = snprintf(buf, cap, "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"code\":\"%s\"}}",
	             msg, httperr_type(status), code);
	if (n < 0)
		return 0;
	return (size_t)n < cap ? (size_t)n : cap - 1;
}

static const char *anthropic_type(int status)
{
	switch (status) {
	case 401: return "authentication_error";
	case 403: return "permission_error";
	case 404: return "not_found_error";
	case 413: return "request_too_large";
	case 429: return "rate_limit_error";
	case 529: return "overloaded_error";
	default:  return status >= 500 ? "api_error" : "invalid_request_error";
	}
}

size_t httperr_body_anthropic(char *buf, size_t cap, int status, const char *code,
                              const char *message)
{
	char msg[512];
	int n;

	json_escape(msg, sizeof(msg), message);
	n = snprintf(buf, cap, "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":\"%s\",\"code\":\"%s\"}}",
	             anthropic_type(status), msg, code);
	if (n < 0)
		return 0;
	return (size_t)n < cap ? (size_t)n : cap - 1;
}
