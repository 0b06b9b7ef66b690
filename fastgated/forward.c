/* The forward phase: the attempt. Builds the upstream request for the matched route (the
 * target, the cleaned headers, the route's key) as the bytes of an HTTP/1.1 head and
 * starts it through the transport the route was bound to when the routes loaded. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <event2/event.h>

#include "proxy.h"
#include "request.h"
#include "util.h"

static const struct hname always_stripped[] = {
	HNAME("host"), HNAME("x-api-key"), HNAME("authorization"), HNAME("x-forwarded-for"),
	HNAME("x-request-id"),
	/* hop-by-hop (RFC 9110 7.6.1) and framing: the transport frames the request itself */
	HNAME("connection"), HNAME("keep-alive"), HNAME("proxy-connection"),
	HNAME("proxy-authorization"), HNAME("proxy-authenticate"), HNAME("te"), HNAME("trailer"),
	HNAME("transfer-encoding"), HNAME("upgrade"), HNAME("content-length"), HNAME("expect"),
	/* replaced by identity: the gateway reads every answer (usage), so it must not be
	 * compressed on the way */
	HNAME("accept-encoding"),
	{ NULL, 0 }
};

bool proxy_listed_in_connection(const char *conn, size_t conn_len, const char *name, size_t nl)
{
	const char *p = conn, *end = conn + conn_len;

	while (p < end) {
		while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
			p++;
		const char *e = p;
		while (e < end && *e != ',' && *e != ' ' && *e != '\t')
			e++;
		if ((size_t)(e - p) == nl && strncasecmp(p, name, nl) == 0)
			return true;
		p = e;
	}
	return false;
}

static int header_stripped(const char *name, size_t nl, char *const *extra, size_t n_extra,
                           const char *connection, size_t connection_len)
{
	if (hname_listed(name, nl, always_stripped))
		return 1;
	/* X_API_Key could become X-API-Key behind a CGI-style upstream: dropped, as nginx does */
	if (memchr(name, '_', nl))
		return 1;
	for (size_t i = 0; i < n_extra; i++)
		if (strcasecmp(name, extra[i]) == 0)
			return 1;
	return connection && proxy_listed_in_connection(connection, connection_len, name, nl);
}

int proxy_header_stripped(const char *name, char *const *extra, size_t n_extra,
                          const char *connection)
{
	return header_stripped(name, strlen(name), extra, n_extra, connection,
	                       connection ? strlen(connection) : 0);
}

static int head_add(struct attempt *a, const char *s, size_t n)
{
	return buf_append(&a->head, &a->head_len, &a->head_cap, s, n, 1024);
}

/* "name: value\r\n" onto the head, room made once for the whole line. */
static int head_add_header(struct attempt *a, const char *name, size_t nl, const char *value,
                           size_t vl)
{
	char *p;

	if (buf_grow(&a->head, &a->head_cap, a->head_len + nl + vl + 4, 1024) < 0)
		return -1;
	p = a->head + a->head_len;
	memcpy(p, name, nl);
	memcpy(p + nl, ": ", 2);
	memcpy(p + nl + 2, value, vl);
	memcpy(p + nl + 2 + vl, "\r\n", 2);
	a->head_len += nl + vl + 4;
	return 0;
}

/* "METHOD target HTTP/1.1\r\nHost: host\r\n": the target is the route's path (or the
 * client's, less strip_prefix) and the client's query. */
static int head_start(struct attempt *a, const struct route *r, const struct http_request *in)
{
	const char *p = in->path;
	size_t ml = strlen(in->method_name), hl = strlen(r->upstream_host), pl, ql;
	char *w;

	if (!r->upstream_path) {
		size_t sl = r->strip_prefix ? strlen(r->strip_prefix) : 0;
		if (sl && strncmp(p, r->strip_prefix, sl) == 0 && (p[sl] == '/' || p[sl] == '\0'))
			p += sl;
		if (*p == '\0')
			p = "/";
	} else {
		p = r->upstream_path;
	}
	pl = strlen(p);
	ql = in->query ? strlen(in->query) + 1 : 0;
	if (buf_grow(&a->head, &a->head_cap, ml + pl + ql + hl + 21, 1024) < 0)
		return -1;
	w = a->head;
	memcpy(w, in->method_name, ml);
	w[ml] = ' ';
	w += ml + 1;
	memcpy(w, p, pl);
	w += pl;
	if (in->query) {
		*w++ = '?';
		memcpy(w, in->query, ql - 1);
		w += ql - 1;
	}
	memcpy(w, " HTTP/1.1\r\nHost: ", 17);
	w += 17;
	memcpy(w, r->upstream_host, hl);
	memcpy(w + hl, "\r\n", 2);
	a->head_len = (size_t)(w + hl + 2 - a->head);
	return 0;
}

static int head_headers(struct attempt *a, const struct route *r, const struct http_request *in,
                        const char *id)
{
	const char *conn = http_find_header(in, "Connection");
	size_t conn_len = conn ? strlen(conn) : 0;

	for (size_t k = 0; k < in->n_headers; k++) {
		const struct http_header *h = &in->headers[k];
		bool overridden = false;

		if (header_stripped(h->name, h->name_len, r->strip_headers, r->n_strip_headers, conn,
		                    conn_len))
			continue;
		for (size_t i = 0; i < r->n_add_headers && !overridden; i++)
			overridden = strcasecmp(h->name, r->add_headers[i].name) == 0;
		if (!overridden &&
		    head_add_header(a, h->name, h->name_len, h->value, strlen(h->value)) < 0)
			return -1;
	}
	for (size_t i = 0; i < r->n_add_headers; i++)
		if (head_add_header(a, r->add_headers[i].name, strlen(r->add_headers[i].name),
		                    r->add_headers[i].value, strlen(r->add_headers[i].value)) < 0)
			return -1;
	if (r->api_key && (head_add(a, "Authorization: Bearer ", 22) < 0 ||
	                   head_add(a, r->api_key, strlen(r->api_key)) < 0 ||
	                   head_add(a, "\r\n", 2) < 0))
		return -1;
	if (head_add_header(a, "X-Request-Id", 12, id, REQID_LEN) < 0 ||
	    head_add(a, "Accept-Encoding: identity\r\n", 27) < 0)
		return -1;
	return 0;
}

/* Safe methods may be sent again if a reused connection dies before any answer; anything
 * else may have been acted on (an LLM run, billed) and is never sent twice on its own. */
static bool replayable(enum http_method m)
{
	return m == HTTP_GET || m == HTTP_HEAD || m == HTTP_OPTIONS;
}

int forward_start(struct proxy_req *px, const struct http_request *in, const char *body,
                  size_t body_len)
{
	const struct route *r = px->route;
	struct attempt *a = &px->att;
	enum http_method m = in->method;
	char cl[48];
	size_t n;

	if (head_start(a, r, in) < 0 || head_headers(a, r, in, px->id) < 0)
		return -1;
	if (m == HTTP_HEAD)
		body_len = 0;
	if (body_len > 0 || m == HTTP_POST || m == HTTP_PUT || m == HTTP_PATCH) {
		n = sizeof("Content-Length: ") - 1;
		memcpy(cl, "Content-Length: ", n);
		n += fmt_dec(cl + n, body_len);
		memcpy(cl + n, "\r\n\r\n", 4);     /* and the blank line that ends the head */
		if (head_add(a, cl, n + 4) < 0)
			return -1;
	} else if (head_add(a, "\r\n", 2) < 0) {
		return -1;
	}
	a->x.rq.origin = r->upstream_origin;
	a->x.rq.host = r->upstream_host;
	a->x.rq.head = a->head;
	a->x.rq.head_len = a->head_len;
	a->x.rq.body = body;
	a->x.rq.body_len = body_len;
	a->x.rq.head_request = m == HTTP_HEAD;
	a->x.rq.replayable = replayable(m);
	a->x.rq.connect_timeout = r->timeout;
	a->x.rq.ca_file = r->ca_file;
	a->x.cb = &relay_callbacks;
	a->x.arg = a;
	if (tr_start(px->gw->transports[r->transport], &a->x) < 0)
		return -1;
	forward_arm_timer(px, r->timeout);
	return 0;
}

void forward_arm_timer(struct proxy_req *px, int seconds)
{
	struct timeval tv = { seconds, 0 };

	evtimer_add(&px->timer_ev, &tv);
}

bool forward_cancel(struct proxy_req *px)
{
	if (!px->att.x.active)
		return false;
	tr_cancel(&px->att.x);
	return true;
}
