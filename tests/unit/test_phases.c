/* The request path's phases, from a request head to the request-done event, with a fake
 * transport in place of an upstream: the real HTTP server on a loopback port, real routes
 * and a real key store, and a transport that records what it was asked to send and
 * answers from a script. What each phase decides is checked by what reaches the fake
 * (nothing, for a request refused before forward) and what the client and the done hook
 * see. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include "endpoints.h"
#include "gateway.h"
#include "http.h"
#include "keys.h"
#include "proxy.h"
#include "reqid.h"
#include "transport.h"
#include "unit.h"

/* ---- the fake transport ------------------------------------------------------------- */

struct fake {
	struct transport t;
	int started;
	char head[8192];
	char body[8192];
	size_t head_len, body_len;
	/* the script */
	enum tr_result result;
	const char *answer;           /* head lines and body, "\r\n\r\n" between them */
	struct tr_xfer *x;
	struct event ev;              /* answers from the loop, never inside tr_start */
};

static void fake_answer(evutil_socket_t fd, short what, void *arg)
{
	struct fake *f = arg;
	struct tr_xfer *x = f->x;
	const char *p = f->answer, *end;
	(void)fd; (void)what;

	if (!x || !x->active)
		return;
	if (f->result == TR_OK) {
		/* head lines one at a time, CRLF included, then the body */
		while ((end = strstr(p, "\r\n"))) {
			size_t n = (size_t)(end - p) + 2;
			if (x->cb->line(x->arg, p, n) < 0)
				break;
			p += n;
			if (n == 2)
				break;
		}
		if (*p)
			x->cb->body(x->arg, p, strlen(p));
	}
	x->active = false;
	f->x = NULL;
	x->cb->done(x->arg, f->result);
}

static int fake_start(struct transport *t, struct tr_xfer *x)
{
	struct fake *f = (struct fake *)t;

	f->started++;
	f->head_len = x->rq.head_len < sizeof(f->head) - 1 ? x->rq.head_len : sizeof(f->head) - 1;
	memcpy(f->head, x->rq.head, f->head_len);
	f->head[f->head_len] = '\0';
	f->body_len = x->rq.body_len < sizeof(f->body) - 1 ? x->rq.body_len : sizeof(f->body) - 1;
	if (f->body_len)
		memcpy(f->body, x->rq.body, f->body_len);
	f->body[f->body_len] = '\0';
	f->x = x;
	x->active = true;
	event_active(&f->ev, 0, 0);
	return 0;
}

static void fake_resume(struct tr_xfer *x)
{
	(void)x;
}

static void fake_cancel(struct tr_xfer *x)
{
	x->active = false;
}

static const struct transport_ops fake_ops = {
	.name = "fake", .start = fake_start, .resume = fake_resume, .cancel = fake_cancel,
};

/* ---- the gateway around it ---------------------------------------------------------- */

struct rig {
	struct event_base *base;
	struct config cfg;
	struct gateway gw;
	struct fake fake;
	char dir[64];
	char secret[KEY_SECRET_LEN + 1];      /* may use every route */
	char narrow[KEY_SECRET_LEN + 1];      /* may use route "other" only */
	char limited[KEY_SECRET_LEN + 1];     /* one request a minute */
	int port;
	int rows;                             /* request-done events */
	int last_status;
	char last_error[64], last_model[64], last_up_rid[64];
};

static void on_done(void *arg, const struct request_done *d)
{
	struct rig *r = arg;

	r->rows++;
	r->last_status = d->row->status;
	snprintf(r->last_error, sizeof(r->last_error), "%s", d->row->error ? d->row->error : "");
	snprintf(r->last_model, sizeof(r->last_model), "%s", d->row->model ? d->row->model : "");
	snprintf(r->last_up_rid, sizeof(r->last_up_rid), "%s",
	         d->row->upstream_request_id ? d->row->upstream_request_id : "");
}

static const char routes_yaml[] =
	"routes:\n"
	"  - name: chat\n"
	"    match: { path: /v1/chat/completions, methods: [POST] }\n"
	"    upstream: { url: http://fake.invalid:1/v1/chat/completions, api_key: up-secret-key }\n"
	"    add_body_fields: { max_tokens: 2048 }\n"
	"  - name: other\n"
	"    match: { path: /other }\n"
	"    upstream: { url: http://fake.invalid:1 }\n"
	"  - name: hdrs\n"
	"    match: { path: /hdrs }\n"
	"    upstream: { url: http://fake.invalid:1/up, api_key: up-secret-key }\n"
	"    strip_headers: [X-Debug, x-trace]\n"
	"    add_headers: { X-Added: added, content-type: text/plain }\n";

static void rig_up(struct rig *r)
{
	struct http_handlers h = { proxy_request, endpoints_refused, 0, proxy_conn_closed, NULL };
	char path[128], *err = NULL;
	struct errlist errs = { 0 };
	const char *files[1];
	char *only_other[] = { "other" };
	struct key *k;
	FILE *f;

	memset(r, 0, sizeof(*r));
	snprintf(r->dir, sizeof(r->dir), "/tmp/fg-phases-XXXXXX");
	CHECK(mkdtemp(r->dir) != NULL);
	r->base = event_base_new();
	config_defaults(&r->cfg);
	free(r->cfg.listen);
	r->cfg.listen = strdup("127.0.0.1:0");
	r->cfg.max_body = 4096;
	r->gw.base = r->base;
	r->gw.cfg = &r->cfg;
	snprintf(path, sizeof(path), "%s/keys.db", r->dir);
	r->gw.keys = keystore_open(path, &err);
	CHECK(r->gw.keys != NULL);
	CHECK_INT(keystore_create(r->gw.keys, "wide", NULL, 0, 0, 0, r->secret, &k, &err), 0);
	CHECK_INT(keystore_create(r->gw.keys, "narrow", only_other, 1, 0, 0, r->narrow, &k, &err), 0);
	CHECK_INT(keystore_create(r->gw.keys, "limited", NULL, 0, 1, 0, r->limited, &k, &err), 0);
	snprintf(path, sizeof(path), "%s/routes.yaml", r->dir);
	f = fopen(path, "w");
	fputs(routes_yaml, f);
	fclose(f);
	files[0] = path;
	r->gw.routes = route_table_load_files(files, 1, &errs);
	CHECK(r->gw.routes != NULL);
	pool_bind(&r->gw.pool, r->gw.routes);   /* as gateway_reload_routes does */
	r->fake.t.ops = &fake_ops;
	event_assign(&r->fake.ev, r->base, -1, 0, fake_answer, &r->fake);
	r->gw.transports[TR_KIND_NATIVE] = r->gw.transports[TR_KIND_CURL] = &r->fake.t;
	reqdone_subscribe(&r->gw.done, on_done, r);
	h.conn_data_size = proxy_conn_data_size();
	h.arg = &r->gw;
	r->gw.http = http_server_start(r->base, &r->cfg, &h, NULL, &err);
	CHECK(r->gw.http != NULL);
	r->port = atoi(strrchr(http_server_addr(r->gw.http), ':') + 1);
	errlist_clear(&errs);
	free(err);
}

static void rig_down(struct rig *r)
{
	char cmd[128];

	http_server_free(r->gw.http);
	proxy_spares_free(&r->gw);   /* what finished requests left for the next ones */
	event_del(&r->fake.ev);
	route_table_unref(r->gw.routes);
	keystore_close(r->gw.keys);
	config_free(&r->cfg);
	event_base_free(r->base);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", r->dir);
	CHECK(system(cmd) == 0);
}

/* Send `req` on a new connection and run the loop until the answer is in (the server
 * closes, or a whole Content-Length answer arrived), for at most 5 s. */
static void exchange(struct rig *r, const char *req, char *out, size_t cap)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)r->port),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	size_t len = 0;

	out[0] = '\0';
	CHECK(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	CHECK(write(fd, req, strlen(req)) == (ssize_t)strlen(req));
	for (int i = 0; i < 500; i++) {
		struct timeval tv = { 0, 10000 };
		ssize_t n;
		const char *cl, *body;

		event_base_loopexit(r->base, &tv);
		event_base_dispatch(r->base);
		n = recv(fd, out + len, cap - 1 - len, MSG_DONTWAIT);
		if (n == 0)
			break;
		if (n > 0) {
			len += (size_t)n;
			out[len] = '\0';
		}
		if ((body = strstr(out, "\r\n\r\n")) && (cl = strstr(out, "Content-Length: ")) &&
		    cl < body && strlen(body + 4) >= (size_t)atoi(cl + 16))
			break;
	}
	close(fd);
	/* let the server see the close and finish the request */
	for (int i = 0; i < 5; i++) {
		struct timeval tv = { 0, 2000 };
		event_base_loopexit(r->base, &tv);
		event_base_dispatch(r->base);
	}
}

static int status_of(const char *answer)
{
	return strncmp(answer, "HTTP/1.1 ", 9) == 0 ? atoi(answer + 9) : -1;
}

static void chat(struct rig *r, const char *key, const char *body, char *out, size_t cap)
{
	char req[4096];

	snprintf(req, sizeof(req),
	         "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-API-Key: %s\r\n"
	         "Content-Type: application/json\r\nAccept-Encoding: gzip\r\nX_Forwarded_For: 6.6.6.6\r\n"
	         "Content-Length: %zu\r\n\r\n%s", key, strlen(body), body);
	exchange(r, req, out, cap);
}

static const char ok_answer[] =
	"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 66\r\n\r\n"
	"{\"id\":\"x\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4},\"a\":1}";

/* ---- the phases --------------------------------------------------------------------- */

TEST(authenticate_refuses_a_missing_key_before_the_body_is_read)
{
	struct rig r;
	char out[4096];

	rig_up(&r);
	/* a body is announced and never sent: the answer cannot wait for it */
	exchange(&r, "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 4000\r\n\r\n",
	         out, sizeof(out));
	CHECK_INT(status_of(out), 401);
	CHECK(strstr(out, "missing_api_key") != NULL);
	CHECK(strstr(out, "Connection: close") != NULL);
	CHECK_INT(r.fake.started, 0);
	CHECK_INT(r.rows, 1);
	rig_down(&r);
}

TEST(match_refuses_an_unknown_path_and_a_route_the_key_may_not_use)
{
	struct rig r;
	char out[4096], req[512];

	rig_up(&r);
	snprintf(req, sizeof(req), "GET /nowhere HTTP/1.1\r\nHost: gw\r\nX-API-Key: %s\r\n\r\n", r.secret);
	exchange(&r, req, out, sizeof(out));
	CHECK_INT(status_of(out), 404);
	chat(&r, r.narrow, "{\"model\":\"m\"}", out, sizeof(out));
	CHECK_INT(status_of(out), 403);
	CHECK_INT(r.fake.started, 0);
	CHECK_INT(r.rows, 2);
	rig_down(&r);
}

TEST(body_refuses_a_chunked_body_over_the_limit_after_the_key_was_accepted)
{
	struct rig r;
	char out[4096], req[8192];
	int n;

	rig_up(&r);   /* max_body 4096 */
	n = snprintf(req, sizeof(req), "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
	             "X-API-Key: %s\r\nTransfer-Encoding: chunked\r\n\r\n1388\r\n", r.secret);
	memset(req + n, 'x', 5000);   /* 0x1388 = 5000 bytes */
	req[n + 5000] = '\0';
	exchange(&r, req, out, sizeof(out));
	CHECK_INT(status_of(out), 413);
	CHECK(strstr(out, "request_too_large") != NULL);
	CHECK(strstr(out, "Connection: close") != NULL);
	CHECK_INT(r.fake.started, 0);
	CHECK_INT(r.rows, 1);
	rig_down(&r);
}

TEST(policy_refuses_a_key_over_its_rate_with_retry_after)
{
	struct rig r;
	char out[4096];

	rig_up(&r);
	r.fake.result = TR_OK;
	r.fake.answer = ok_answer;
	chat(&r, r.limited, "{\"model\":\"m\"}", out, sizeof(out));
	CHECK_INT(status_of(out), 200);
	chat(&r, r.limited, "{\"model\":\"m\"}", out, sizeof(out));
	CHECK_INT(status_of(out), 429);
	CHECK(strstr(out, "Retry-After: ") != NULL);
	CHECK(strstr(out, "rate_limited") != NULL);
	CHECK_INT(r.fake.started, 1);   /* the second never reached the forward phase */
	rig_down(&r);
}

TEST(parse_refuses_a_duplicate_key_whatever_the_route)
{
	struct rig r;
	char out[4096];

	rig_up(&r);
	chat(&r, r.secret, "{\"model\":\"cheap\",\"mod\\u0065l\":\"expensive\"}", out, sizeof(out));
	CHECK_INT(status_of(out), 400);
	CHECK(strstr(out, "duplicate_key") != NULL);
	CHECK_INT(r.fake.started, 0);
	CHECK_STR(r.last_model, "");
	rig_down(&r);
}

TEST(parse_refuses_a_body_too_deep_to_be_read_whatever_the_route)
{
	struct rig r;
	char out[4096], body[1200];
	size_t n = 0;

	rig_up(&r);
	/* too deep to read is too deep to know it has no second "model" further on */
	n += (size_t)snprintf(body, sizeof(body), "{\"model\":\"a\",\"x\":");
	for (int i = 0; i < 300; i++)
		body[n++] = '[';
	for (int i = 0; i < 300; i++)
		body[n++] = ']';
	snprintf(body + n, sizeof(body) - n, ",\"model\":\"b\"}");
	chat(&r, r.secret, body, out, sizeof(out));
	CHECK_INT(status_of(out), 400);
	CHECK_INT(r.fake.started, 0);
	rig_down(&r);
}

TEST(forward_sends_one_clean_head_and_the_clients_bytes_with_fields_spliced_in)
{
	struct rig r;
	char out[4096];

	rig_up(&r);
	r.fake.result = TR_OK;
	r.fake.answer = ok_answer;
	chat(&r, r.secret, "{\"model\":\"m\\u002dx\",\"temperature\":0.7,\"n\":123456789012345678901234567890}",
	     out, sizeof(out));
	CHECK_INT(r.fake.started, 1);
	CHECK(strncmp(r.fake.head, "POST /v1/chat/completions HTTP/1.1\r\nHost: fake.invalid:1\r\n", 57) == 0);
	CHECK(strstr(r.fake.head, "Authorization: Bearer up-secret-key\r\n") != NULL);
	CHECK(strstr(r.fake.head, "Accept-Encoding: identity\r\n") != NULL);
	CHECK(strstr(r.fake.head, "gzip") == NULL);
	CHECK(strstr(r.fake.head, "X-API-Key") == NULL);
	CHECK(strstr(r.fake.head, "X_Forwarded_For") == NULL);
	CHECK(strstr(r.fake.body, "\"temperature\":0.7,") != NULL);
	CHECK(strstr(r.fake.body, "123456789012345678901234567890") != NULL);
	CHECK(strstr(r.fake.body, "\"max_tokens\":2048") != NULL);
	CHECK_INT(status_of(out), 200);
	CHECK(strstr(out, "\"a\":1}") != NULL);
	CHECK_INT(r.rows, 1);
	CHECK_STR(r.last_model, "m-x");   /* the decoded reading, as the upstream sees it */
	CHECK_STR(r.last_error, "");
	rig_down(&r);
}

TEST(relay_turns_transport_results_into_gateway_errors)
{
	static const struct { enum tr_result r; int status; const char *code; } cases[] = {
		{ TR_CONNECT, 502, "connect" }, { TR_RESOLVE, 502, "resolve" },
		{ TR_PROTOCOL, 502, "protocol" }, { TR_RESET, 502, "reset" },
		{ TR_TIMEOUT, 504, "timeout" }, { TR_TLS, 502, "tls" },
	};
	struct rig r;
	char out[4096];

	rig_up(&r);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		r.fake.result = cases[i].r;
		chat(&r, r.secret, "{\"model\":\"m\"}", out, sizeof(out));
		CHECK_INT(status_of(out), cases[i].status);
		CHECK(strstr(out, cases[i].code) != NULL);
		CHECK_STR(r.last_error, cases[i].code);
	}
	CHECK_INT(r.rows, (int)(sizeof(cases) / sizeof(cases[0])));
	rig_down(&r);
}

TEST(a_head_answer_keeps_the_upstreams_length_and_sends_no_body)
{
	struct rig r;
	char out[4096], req[512];

	rig_up(&r);
	r.fake.result = TR_OK;
	r.fake.answer = "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nConnection: X-Hop\r\nX-Hop: 1\r\n"
	                "Connection: keep-alive, X-Hop-Two\r\nX-Hop-Two: 2\r\nX-Kept: 3\r\n\r\n";
	snprintf(req, sizeof(req), "HEAD /other HTTP/1.1\r\nHost: gw\r\nX-API-Key: %s\r\n\r\n", r.secret);
	exchange(&r, req, out, sizeof(out));
	CHECK_INT(status_of(out), 200);
	CHECK(strstr(out, "Content-Length: 1234\r\n") != NULL);
	CHECK(strstr(out, "X-Hop") == NULL);      /* named in either Connection line */
	CHECK(strstr(out, "X-Kept: 3\r\n") != NULL);
	CHECK(strstr(out, "Transfer-Encoding") == NULL);
	CHECK(strcmp(strstr(out, "\r\n\r\n"), "\r\n\r\n") == 0);
	rig_down(&r);
}

/* Blank out what changes from run to run (the request id, the date) so that heads compare
 * byte for byte. */
static void mask(char *s, const char *prefix, size_t n)
{
	for (char *p = strstr(s, prefix); p; p = strstr(p + 1, prefix))
		memset(p + strlen(prefix), '#', n);
}

/* Names one byte or one letter off the stripped ones pass; the stripped ones go in any
 * case; the route's own strip and add lists apply case-insensitively; the order is kept.
 * Byte for byte what the upstream gets. */
TEST(forward_strips_exactly_the_listed_headers_whatever_their_case)
{
	struct rig r;
	char out[8192], req[4096];

	rig_up(&r);
	r.fake.result = TR_OK;
	r.fake.answer = ok_answer;
	snprintf(req, sizeof(req), "POST /hdrs?q=1 HTTP/1.1\r\nHost: gw\r\nX-API-Key: %s\r\n"
	         "Content-Type: application/json\r\nHos: a\r\nHostt: b\r\nTE: trailers\r\nTf: 1\r\n"
	         "Upgradf: 2\r\nXonnection: 3\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 4\r\n"
	         "X-Hopp: 5\r\nAccept-Encodinh: 6\r\nACCEPT-ENCODING: gzip\r\n"
	         "Proxy-Authenticatf: 7\r\nContent-Lengthy: 8\r\nx-request-ie: 9\r\nApi-Key: k\r\n"
	         "Authorizatiom: z\r\nExpecu: 10\r\nX_Under: 11\r\nKeep-Alive: 5\r\nTrailer: x\r\n"
	         "Proxy-Connection: x\r\nTransfer-Encodinf: x\r\nX-Forwarded-Fos: 12\r\n"
	         "x-forwarded-for: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Debug: 1\r\nX-Debugs: 2\r\n"
	         "X-TRACE: 3\r\nx-tracf: 4\r\nCONTENT-TYPE: x/y\r\nX-ADDED: client\r\n"
	         "Content-Length: 2\r\n\r\n{}", r.secret);
	exchange(&r, req, out, sizeof(out));
	CHECK_INT(status_of(out), 200);
	mask(r.fake.head, "X-Request-Id: ", REQID_LEN);
	CHECK_STR(r.fake.head,
	          "POST /up?q=1 HTTP/1.1\r\nHost: fake.invalid:1\r\nHos: a\r\nHostt: b\r\nTf: 1\r\n"
	          "Upgradf: 2\r\nXonnection: 3\r\nX-Hopp: 5\r\nAccept-Encodinh: 6\r\n"
	          "Proxy-Authenticatf: 7\r\nContent-Lengthy: 8\r\nx-request-ie: 9\r\n"
	          "Authorizatiom: z\r\nExpecu: 10\r\nTransfer-Encodinf: x\r\nX-Forwarded-Fos: 12\r\n"
	          "X-Debugs: 2\r\nx-tracf: 4\r\nX-Added: added\r\ncontent-type: text/plain\r\n"
	          "Authorization: Bearer up-secret-key\r\nX-Request-Id: ####################\r\n"
	          "Accept-Encoding: identity\r\nX-Forwarded-For: 127.0.0.1\r\n"
	          "X-Forwarded-Proto: http\r\nContent-Length: 2\r\n\r\n");
	rig_down(&r);
}

/* The answer's headers reach the client as they came, in order, less the hop's own (in
 * any case, and those its Connection names), however many and however long they are;
 * the first x-request-id (or request-id) is the upstream's id in the audit. */
TEST(relay_copies_exactly_the_answers_own_headers)
{
	struct rig r;
	static char out[65536], answer[32768], want[32768];
	char req[512];
	size_t n = 0, w = 0;

	rig_up(&r);
	r.fake.result = TR_OK;
	n += (size_t)snprintf(answer + n, sizeof(answer) - n,
	                      "HTTP/1.1 201 Created\r\ncontent-TYPE: application/json\r\n"
	                      "CONTENT-LENGTH: 2\r\nTe: x\r\nTf: y\r\nTrailes: z\r\nUPGRADE: h2\r\n"
	                      "X-Request-Id: up-1\r\nX-Request-Ie: k\r\nKeep-Alivf: 1\r\n"
	                      "keep-alive: timeout=5\r\nConnection: X-Hop\r\nX-Hop: 1\r\nx-hop2: 2\r\n"
	                      "Proxy-Connection: x\r\nProxy-Connectiom: y\r\nX-Empty:\r\n"
	                      "X-Spaces:   a b  \r\nrequest-iD: rid-2\r\nRetry-After: 3\r\n"
	                      "Transfer-Encoding: chunked\r\nConnectiom: keep\r\n");
	w += (size_t)snprintf(want + w, sizeof(want) - w,
	                      "content-TYPE: application/json\r\nTf: y\r\nTrailes: z\r\n"
	                      "X-Request-Ie: k\r\nKeep-Alivf: 1\r\nx-hop2: 2\r\nProxy-Connectiom: y\r\n"
	                      "X-Empty: \r\nX-Spaces: a b\r\nrequest-iD: rid-2\r\nRetry-After: 3\r\n"
	                      "Connectiom: keep\r\n");
	/* more than any one buffer of them holds, and one longer than such a buffer */
	for (int i = 0; i < 13; i++) {
		size_t len = i < 12 ? 300 : 5000;
		size_t k = (size_t)snprintf(answer + n, sizeof(answer) - n, "X-Big-%d: ", i);

		memcpy(want + w, answer + n, k);
		n += k;
		w += k;
		memset(answer + n, 'a' + i, len);
		memset(want + w, 'a' + i, len);
		n += len;
		w += len;
		memcpy(answer + n, "\r\n", 2);
		memcpy(want + w, "\r\n", 2);
		n += 2;
		w += 2;
	}
	snprintf(answer + n, sizeof(answer) - n, "X-Last: end\r\n\r\n{}");
	snprintf(want + w, sizeof(want) - w, "X-Last: end\r\nX-Fastgate-Cost: ");
	r.fake.answer = answer;
	snprintf(req, sizeof(req), "GET /other HTTP/1.1\r\nHost: gw\r\nX-API-Key: %s\r\n\r\n", r.secret);
	exchange(&r, req, out, sizeof(out));
	CHECK_INT(status_of(out), 201);
	CHECK(strncmp(out, "HTTP/1.1 201 OK\r\nX-Request-Id: ", 31) == 0);
	CHECK(strncmp(out + 31 + REQID_LEN, "\r\n", 2) == 0);
	CHECK(strncmp(out + 33 + REQID_LEN, want, strlen(want)) == 0);
	CHECK(strstr(out, "\r\nContent-Length: 2\r\n\r\n{}") != NULL);
	CHECK_STR(r.last_up_rid, "up-1");
	rig_down(&r);
}

/* A stream is told by its Content-Type in any case; its head goes out with its first
 * bytes, the same headers copied. */
TEST(relay_streams_an_answer_whose_content_type_says_so_in_any_case)
{
	struct rig r;
	char out[4096], req[512];

	rig_up(&r);
	r.fake.result = TR_OK;
	r.fake.answer = "HTTP/1.1 200 OK\r\nCONTENT-TYPE: Text/Event-Stream\r\nx-request-id: s-1\r\n"
	                "Connection: close\r\nX-Kept: 1\r\n\r\ndata: {}\n\n";
	snprintf(req, sizeof(req), "GET /other HTTP/1.1\r\nHost: gw\r\nX-API-Key: %s\r\n\r\n", r.secret);
	exchange(&r, req, out, sizeof(out));
	CHECK_INT(status_of(out), 200);
	CHECK(strstr(out, "\r\nCONTENT-TYPE: Text/Event-Stream\r\nX-Kept: 1\r\n") != NULL);
	CHECK(strstr(out, "Transfer-Encoding: chunked\r\n") != NULL);
	CHECK(strstr(out, "data: {}\n\n") != NULL);
	CHECK(strstr(out, "s-1") == NULL);
	CHECK_STR(r.last_up_rid, "s-1");
	rig_down(&r);
}

/* A POST without a body still says so (Content-Length: 0); a GET says nothing of a length;
 * a long body's length is every digit of it. */
TEST(forward_announces_the_bodys_length_when_there_is_one_to_announce)
{
	struct rig r;
	char out[8192], req[8192], body[1300];

	rig_up(&r);
	r.fake.result = TR_OK;
	r.fake.answer = ok_answer;
	snprintf(req, sizeof(req), "POST /other HTTP/1.1\r\nHost: gw\r\nX-API-Key: %s\r\n"
	         "Content-Length: 0\r\n\r\n", r.secret);
	exchange(&r, req, out, sizeof(out));
	CHECK_INT(status_of(out), 200);
	CHECK(strstr(r.fake.head, "\r\nX-Forwarded-Proto: http\r\nContent-Length: 0\r\n\r\n") != NULL);
	snprintf(req, sizeof(req), "GET /other HTTP/1.1\r\nHost: gw\r\nX-API-Key: %s\r\n\r\n",
	         r.secret);
	exchange(&r, req, out, sizeof(out));
	CHECK(strstr(r.fake.head, "\r\nX-Forwarded-Proto: http\r\n\r\n") != NULL);
	CHECK(strstr(r.fake.head, "Content-Length") == NULL);
	memset(body, 'x', 1234);
	body[1234] = '\0';
	snprintf(req, sizeof(req), "PUT /other HTTP/1.1\r\nHost: gw\r\nX-API-Key: %s\r\n"
	         "Content-Length: 1234\r\n\r\n%s", r.secret, body);
	exchange(&r, req, out, sizeof(out));
	CHECK(strstr(r.fake.head, "\r\nContent-Length: 1234\r\n\r\n") != NULL);
	CHECK_INT(r.fake.body_len, 1234);
	rig_down(&r);
}

RUN_TESTS()
