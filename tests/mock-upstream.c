/*
 * mock-upstream — a fake OpenAI-compatible (and Anthropic Messages API) upstream for
 * fastgate's tests, `make run` and benchmarks. It answers chat completions and messages
 * deterministically, echoes everything else, and misbehaves on request so the gateway's
 * error paths can be exercised.
 *
 * Usage: mock-upstream [--listen HOST:PORT] [-v]
 *   Default 127.0.0.1:8515; port 0 lets the OS pick. After binding, prints exactly one line
 *   "listening HOST:PORT" (the real port) on stdout. SIGTERM/SIGINT exit 0. -v logs each
 *   request to stderr. The listener has SO_REUSEADDR, so a mock killed on a fixed port can
 *   be started again on it at once (connections left in TIME_WAIT do not block the bind).
 *
 * Routes:
 *   POST /v1/chat/completions  chat.completion, or SSE chat.completion.chunk events when
 *                              "stream": true. Text: "Hello from mock." plus
 *                              " You said: <last user message, first 200 characters>".
 *                              A stream opens, as OpenAI's do, with one content-free event,
 *                              delta {"role":"assistant","content":""}, sent with the head;
 *                              then the content chunks (the first at once, the next ones
 *                              X-Mock-Delay-Ms apart; the last has finish_reason "stop"),
 *                              a usage-only chunk when stream_options.include_usage is
 *                              true, and "data: [DONE]".
 *                              Tool calls: when the last user message's text is exactly
 *                              "use the tool", the answer calls the first of "tools"
 *                              (its function.name, or "lookup"): message content null,
 *                              tool_calls [{"id":"call_mock_1","type":"function",
 *                              "function":{"name":N,"arguments":"{\"q\":\"mock\"}"}}],
 *                              finish_reason "tool_calls"; streamed as the role chunk, a
 *                              tool_calls delta {index 0, id, type, function {name,
 *                              arguments ""}}, then the arguments in 3 fragments, the
 *                              last with finish_reason "tool_calls". Completion tokens are
 *                              over the arguments' JSON text.
 *   GET  /v1/models            a model list (demo-model, mock-gpt).
 *   POST /openai/deployments/DEP/chat/completions?api-version=V
 *   POST /openai/v1/chat/completions
 *                              Azure OpenAI's two forms of chat completions, answered as
 *                              /v1/chat/completions is, after Azure's checks: no or an empty
 *                              api-key header is a 401, and the deployment form without an
 *                              api-version query a 404, in Azure's error shape
 *                              ({"error":{"code":"401","message":...}}). An Authorization
 *                              header does not count there (Azure wants api-key).
 *   POST /v1/messages          Anthropic's Messages API (below).
 *   GET  /__mock/stats         counters, the sticky behaviour and the last request (not
 *                              counted as a request).
 *   POST /__mock/reset         zeros the counters, forgets the last request and clears the
 *                              sticky behaviour.
 *   POST /__mock/behave        sets the sticky behaviour (below).
 *   POST /__mock/hold          closes the gate: from now on every non-control request is
 *                              counted as it arrives, then held, unanswered, until
 *                              POST /__mock/release (its first-byte delay, if any, runs
 *                              from then). The stats' "held" is how many wait now (a
 *                              client that leaves takes its request out), "holding"
 *                              whether the gate is closed. Lets a test know that N
 *                              requests are in flight at once, however fast it sends them.
 *   POST /__mock/release       opens the gate and answers every held request, in turn.
 *                              /__mock/reset opens it too. Answer (both): 200
 *                              {"ok":true,"released":N} (N: requests let go; 0 for hold).
 *   anything else              200 echo: {method, uri, path, headers, body}.
 *   Every response carries X-Mock-Received-Auth-SHA256: <hex SHA-256 of the Authorization
 *   received>, when one was: a test can check the key the gateway sent without the mock
 *   echoing a secret back (a newcomer reading the demo's answers took that for a leak).
 *   Paths under /__mock/ are control requests: never counted, never faulted; other
 *   /__mock/ paths and methods get a 404 "unknown_url".
 *
 * Anthropic's Messages API, POST /v1/messages. Every answer on it, errors included, carries
 * "request-id: req_mock_N" (N counts up per request, shared with the chatcmpl-mock-N ids).
 * Errors are in Anthropic's shape, {"type":"error","error":{"type":T,"message":M},
 * "request_id":"req_mock_N"}. The checks, in this order, like the real API's:
 *   no or an empty x-api-key header    401 authentication_error (an Authorization header
 *                                      does not count)
 *   no or an empty anthropic-version   400 invalid_request_error naming the header
 *   then X-Mock-Fail's status, hang, reset and garbage, if asked for; then the body (so
 *   its errors win over slow and the stream-cutting modes), each a 400
 *   invalid_request_error whose message names the field: not JSON, not an object, no (or
 *   not a non-empty string) "model", no (or not an integer >= 1) "max_tokens", "messages"
 *   missing, not an array or empty, a message not an object, a role missing or other than
 *   user|assistant ("system" gets its own message: system goes top level), and two
 *   consecutive messages with the same role. Nothing else is checked.
 * The answer: {"id":"msg_mock_N","type":"message","role":"assistant","model":<request's>,
 *   "content":[{"type":"text","text":T}],"stop_reason":"end_turn","stop_sequence":null,
 *   "usage":{"input_tokens":I,"output_tokens":O,"cache_read_input_tokens":C,
 *   "cache_creation_input_tokens":0}}. T is chat's text ("Hello from mock. You said: ..."),
 *   over the last user message's text: a string content, or its blocks joined by spaces,
 *   each the "text" of a block that has one or the text of a tool_result block's content
 *   (so a tool result comes back in the echo). I is ceil(bytes/4) over the text (same rule)
 *   of "system" and all messages, O over T; C is X-Mock-Cached-Tokens (default 0).
 * Tool use: when the last user message's text is exactly "use the tool", the content is
 *   [{"type":"text","text":"Calling."},{"type":"tool_use","id":"toolu_mock_1","name":
 *   <the first of "tools"' name, or "lookup">,"input":{"q":"mock"}}] and stop_reason
 *   "tool_use"; O is then over "Calling." plus the input's JSON text, {"q":"mock"}.
 * "stream": true: Content-Type text/event-stream, events as "event: NAME" + "data: JSON"
 *   lines: with the head message_start (the message with content [], stop_reason null,
 *   usage {input_tokens I, output_tokens 1, cache_read_input_tokens C,
 *   cache_creation_input_tokens 0}), content_block_start (index 0, text ""), ping; then the
 *   content steps, the first at once and the next ones X-Mock-Delay-Ms apart:
 *   X-Mock-Chunks content_block_delta text_delta pieces of T (split as chat's chunks are),
 *   and for a tool call 3 more, the first also carrying content_block_stop 0 and
 *   content_block_start index 1 {"type":"tool_use","id","name","input":{}}, each a
 *   content_block_delta input_json_delta with a third of {"q":"mock"}; then
 *   content_block_stop (the last block), message_delta (stop_reason, stop_sequence null,
 *   usage {output_tokens O}) and message_stop. "completed" counts it once message_stop is
 *   queued.
 * X-Mock-Fail on this path: "500" and "status:NNN" answer Anthropic's error shape with the
 *   type the API gives that status (400 invalid_request_error, 401 authentication_error,
 *   403 permission_error, 404 not_found_error, 413 request_too_large, 429 rate_limit_error,
 *   500 api_error, 504 timeout_error, 529 overloaded_error; other 4xx invalid_request_error,
 *   anything else api_error); hang, reset, garbage and slow as on chat. The stream modes
 *   always stream (as on chat): reset-mid sends the head events and the first content
 *   delta (piece 0 of T), then an RST; fail-after-content the same with the delta "Hello";
 *   close-after-head the head events in one HTTP chunk, then a plain close; and
 *   overloaded-mid (this path only; elsewhere it is "reset") the head events and the first
 *   content delta, then "event: error" with {"type":"error","error":{"type":
 *   "overloaded_error","message":"Overloaded"}} and a clean end of the response (the
 *   terminating 0-chunk; the connection stays usable): started, neither completed nor
 *   aborted. A bad mock header's 400 is in Anthropic's shape here too (invalid_request_error,
 *   message "mock upstream: bad header ..."). A failing header check is answered even under
 *   X-Mock-Fail (which still counts as "faulted").
 *
 * Request headers (all optional) that change the answer:
 *   X-Mock-Chunks: N                content chunks in a stream (not counting the role-only
 *                                   first event), 1..100000 (default 5)
 *   X-Mock-Delay-Ms: N              pause between stream chunks, 0..3600000 (default 0)
 *   X-Mock-First-Byte-Delay-Ms: N   pause before anything is sent, 0..3600000 (default 0)
 *   X-Mock-Retry-After: S           with a forced status (500 or status:NNN), the answer
 *                                   carries "Retry-After: S", S in 0..2147483647; ignored
 *                                   in the other modes
 *   X-Mock-Cached-Tokens: N         the chat usage object (non-stream and the stream's
 *                                   usage chunk) also carries OpenAI's details objects,
 *                                   "prompt_tokens_details": {"cached_tokens": N} and
 *                                   "completion_tokens_details": {"reasoning_tokens": 0},
 *                                   N in 0..1000000000; without the header it has only
 *                                   prompt_tokens, completion_tokens and total_tokens.
 *                                   On /v1/messages it is usage.cache_read_input_tokens
 *                                   (in the answer and in message_start; 0 without it)
 *   X-Mock-Fail: 500 | status:NNN | hang | reset | reset-mid | garbage | slow
 *                | close-after-head | fail-after-content | overloaded-mid
 * A malformed mock header gets a 400 whose error code is "mock_bad_header" (no fault and
 * no Retry-After then; a valid first-byte delay still comes first).
 * X-Mock-Fail applies to every non-control path. The first-byte delay comes first in
 * every mode. "500" and "status:NNN" (200..599) answer an OpenAI-shaped error JSON with
 * that status; "hang" never answers; "reset" sends an RST before any byte; "garbage"
 * sends bytes that are not HTTP and closes. On chat (stream or not):
 *   slow                1000 ms between chunks unless X-Mock-Delay-Ms says otherwise;
 *                       always streams.
 *   reset-mid           always streams: head, role event and min(2, X-Mock-Chunks) content
 *                       chunks, then an RST.
 *   close-after-head    always streams: the 200 head (text/event-stream, chunked), then ONE
 *                       HTTP chunk holding the SSE comment ": ping" (its own blank-line
 *                       ended block) and the role event, then a plain close (FIN, no RST):
 *                       no content, no [DONE], no terminating 0-chunk.
 *   fail-after-content  always streams: the same head and first HTTP chunk (": ping" and the
 *                       role event), then ONE content chunk, delta {"content":"Hello"}
 *                       (whatever X-Mock-Chunks says), then an RST: no [DONE].
 * A cut stream never carries finish_reason "stop"; X-Mock-Delay-Ms spaces its content
 * chunks only (the cut follows the last one once it is written). For /v1/messages see
 * above. Elsewhere "slow" delays the answer as much, and reset-mid, close-after-head,
 * fail-after-content and overloaded-mid are "reset" (overloaded-mid is that on chat too).
 *
 * Sticky behaviour: POST /__mock/behave with a JSON object body
 *   {"fail": F, "times": N, "every": N, "retry_after": S, "first_byte_delay_ms": N,
 *    "delay_ms": N}
 * makes this instance plan every later non-control request as if it carried
 * X-Mock-Fail: F, X-Mock-Retry-After: S, X-Mock-First-Byte-Delay-Ms and X-Mock-Delay-Ms
 * (same values and ranges as the headers; F is a string). Each header a request does carry
 * wins over the matching field, field by field. Every field is optional and null is the
 * same as leaving it out. "times" (1..1000000000; default unlimited) is how many
 * non-control requests it applies to: every such arrival uses one up, whatever its path
 * and its own headers (a request answered 400 for a bad mock header too); when none are
 * left the behaviour is cleared and the instance behaves normally again. "every" N
 * (1..1000000; default 1) applies the fail mode to every Nth arrival only (the Nth, 2Nth,
 * ...), the others behaving, for a steady failure rate of 1/N; each arrival still uses one
 * of "times". Setting one
 * replaces the previous one (and its count); {} (or only nulls) clears it, as does
 * POST /__mock/reset. Answer: 200 {"ok":true}. A body that is not a JSON object, a
 * duplicate or unknown field, or a bad value gets a 400 whose error code is
 * "mock_bad_header" and whose message names the field; the behaviour is then unchanged.
 * This lets one of several mocks behind a gateway route misbehave while the others,
 * receiving the same forwarded headers, behave.
 *
 * Stats: "requests" counts every non-control arrival, "chat" those on the chat paths and
 * "messages" those of POST /v1/messages (faulted ones, refused ones and ones with a bad
 * mock header too). "faulted" counts the requests planned with an X-Mock-Fail
 * mode, whether the header or the sticky behaviour chose it (delays alone are no fault).
 * A stream is "started" once its head is queued, "completed" once [DONE] is queued,
 * "aborted" when the client leaves before that; reset-mid, close-after-head,
 * fail-after-content and overloaded-mid streams are started but neither completed nor
 * aborted.
 * "open_connections" counts live connections that have carried a non-control request,
 * and /__mock/reset leaves it alone. "behave" is the sticky behaviour's fields plus
 * "times_left" (null: unlimited), or null when none is set.
 *
 * Token counts are ceil(bytes / 4): prompt over the text of all messages, completion over
 * the answer text; stream and non-stream report the same numbers (on /v1/messages too).
 */

#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/evp.h>

#define DEFAULT_LISTEN  "127.0.0.1:8515"
#define DEFAULT_CHUNKS  5
#define MAX_CHUNKS 100000
#define MAX_DELAY_MS    3600000L
#define MAX_RETRY_AFTER 2147483647L
#define MAX_TIMES       1000000000L
#define MAX_CACHED_TOKENS 1000000000L
#define SLOW_DELAY_MS   1000
#define ECHO_MAX_CHARS  200
#define CONN_BUCKETS    4096
#define LISTEN_BACKLOG  4096
/* Idle keep-alive and hung requests live this long; libevent's default (50 s) would cut
 * slow streams and "hang" requests short. */
#define IO_TIMEOUT_S    3600
#define MOCK_PREFIX     "/__mock/"
#define CHAT_PATH       "/v1/chat/completions"
#define MESSAGES_PATH   "/v1/messages"
#define MODELS_PATH     "/v1/models"
#define GARBAGE_BYTES   "\x01\x02 THIS IS NOT HTTP \xff\xfe\r\n\r\n"
#define PING_COMMENT    ": ping\n\n"
#define AFTER_CONTENT_TEXT "Hello"
#define MAX_CACHED_TOKENS 1000000000L
/* Anthropic's tool-use answer: what it says, the call's id and its input. */
#define TOOL_TRIGGER    "use the tool"
#define TOOL_TEXT       "Calling."
#define TOOL_ID         "toolu_mock_1"
#define TOOL_INPUT      "{\"q\":\"mock\"}"
#define TOOL_PIECES     3
#define TOOL_DEFAULT_NAME "lookup"
#define CALL_ID         "call_mock_1"   /* the same call in OpenAI's shape */

#define FAIL_VALUES "500, status:NNN, hang, reset, reset-mid, garbage, slow, " \
	"close-after-head, fail-after-content or overloaded-mid"

enum fail_mode {
	FAIL_NONE, FAIL_STATUS, FAIL_HANG, FAIL_RESET, FAIL_RESET_MID, FAIL_GARBAGE, FAIL_SLOW,
	FAIL_CLOSE_AFTER_HEAD, FAIL_FAIL_AFTER_CONTENT, FAIL_OVERLOADED_MID
};

/* What the X-Mock-* headers of one request (over the sticky behaviour) ask for. */
struct plan {
	enum fail_mode fail;
	int status;             /* FAIL_STATUS */
	int chunks;
	long delay_ms;          /* -1 when neither header nor behaviour sets it */
	long first_byte_ms;
	long retry_after;       /* -1: no Retry-After on a forced status */
	long cached_tokens;     /* -1: no details objects in the usage */
};

/* The sticky behaviour POST /__mock/behave sets: every later non-control request is
 * planned as if it carried the matching X-Mock-* headers (its own headers still win). */
struct behave {
	int set;
	enum fail_mode fail;    /* FAIL_NONE: not set */
	int status;             /* FAIL_STATUS */
	long times;             /* requests it still applies to; -1 = unlimited */
	long every;             /* fail only every Nth arrival; -1 = every one */
	long seen;              /* arrivals since it was set, for "every" */
	int skip;               /* this arrival is not an Nth one: no fail mode */
	long retry_after;       /* -1: not set (likewise below) */
	long first_byte_ms;
	long delay_ms;
	json_t *spec;           /* the fields that set it, as the stats show them; owned */
};

enum answer_kind { ANS_JSON, ANS_STREAM, ANS_HANG, ANS_RESET, ANS_GARBAGE };

/* How a stream that is cut short ends. */
enum cut_how {
	CUT_NONE,               /* it is not: content, then [DONE] */
	CUT_RST,                /* reset-mid, fail-after-content: an RST */
	CUT_FIN,                /* close-after-head: a plain close, the chunked body unended */
	CUT_ERROR               /* overloaded-mid (Anthropic): an error event, then a clean end */
};

/* Everything needed to answer one request, decided when it arrives. */
struct answer {
	enum answer_kind kind;
	int status;             /* ANS_JSON */
	json_t *body;           /* ANS_JSON; owned */
	char *text;             /* ANS_STREAM: the full assistant text; owned */
	char *model;            /* ANS_STREAM; owned */
	char id[48];
	json_int_t created;
	int chunks;
	long delay_ms;
	enum cut_how cut;       /* ANS_STREAM */
	int cut_after;          /* ANS_STREAM: content chunks before the cut (0: right after
				 * the role event); unused when cut is CUT_NONE */
	int ping;               /* ANS_STREAM: an SSE comment ": ping" goes ahead of the role
				 * event, in the same HTTP chunk */
	int include_usage;
	json_int_t prompt_tokens;
	json_int_t completion_tokens;
	json_int_t cached_tokens;  /* -1: usage without the details objects */
	/* Anthropic's POST /v1/messages */
	int anthropic;          /* the answer is in Anthropic's shapes */
	unsigned long req_n;    /* N of msg_mock_N and req_mock_N */
	char *tool_name;        /* a tool_use answer: the tool it calls; owned; else NULL */
};

enum pending_state {
	PEND_WAIT,              /* first-byte delay running */
	PEND_HANG,              /* never answered; waits for the client to leave */
	PEND_STREAM,            /* headers sent, chunks going out */
	PEND_CUT,               /* cut stream: last chunk queued, RST or close once written */
	PEND_CLOSING,           /* connection already dead or doomed; free it next turn */
	PEND_HELD               /* the gate is closed: waits for POST /__mock/release */
};

struct conn;

/* A request whose answer is not finished yet. Owned by its conn; freed by pending_free(). */
struct pending {
	struct conn *conn;
	struct evhttp_request *req;
	struct event *timer;
	enum pending_state state;
	struct answer ans;
	int sent;               /* content chunks sent */
	long first_byte_ms;     /* PEND_HELD: the first-byte delay to run once released */
};

/* One client connection that has sent at least one request. Freed in conn_closed(). */
struct conn {
	struct mock *mock;
	struct evhttp_connection *evcon;
	struct conn *next;      /* hash bucket chain */
	struct pending *pending;
};

struct stats {
	json_int_t requests;
	json_int_t chat;
	json_int_t messages;    /* POST /v1/messages */
	json_int_t streams_started;
	json_int_t streams_completed;
	json_int_t streams_aborted;
	json_int_t open_connections;
	json_int_t connections_total;   /* ever accepted (that sent a request): shows reuse */
	json_int_t faulted;     /* requests answered in an X-Mock-Fail mode (header or sticky) */
	json_int_t held;        /* requests waiting behind the closed gate now */
};

struct mock {
	struct event_base *base;
	struct evhttp *http;
	struct conn *conns[CONN_BUCKETS];
	struct stats stats;
	json_t *last;           /* the last non-control request, or NULL */
	struct behave behave;
	int holding;            /* POST /__mock/hold: new requests wait for /__mock/release */
	unsigned long next_id;
	int verbose;
};

static void pending_timer(evutil_socket_t fd, short what, void *arg);
static void anthropic_stream_begin(struct pending *p);
static void anthropic_stream_step(struct pending *p);

/* Small helpers. */

static const char *method_name(enum evhttp_cmd_type cmd)
{
	switch (cmd) {
	case EVHTTP_REQ_GET: return "GET";
	case EVHTTP_REQ_POST: return "POST";
	case EVHTTP_REQ_HEAD: return "HEAD";
	case EVHTTP_REQ_PUT: return "PUT";
	case EVHTTP_REQ_DELETE: return "DELETE";
	case EVHTTP_REQ_OPTIONS: return "OPTIONS";
	case EVHTTP_REQ_TRACE: return "TRACE";
	case EVHTTP_REQ_CONNECT: return "CONNECT";
	case EVHTTP_REQ_PATCH: return "PATCH";
	}
	return "UNKNOWN";
}

/* The path part of the request URI, never NULL (CONNECT targets have none). */
static const char *request_path(struct evhttp_request *req)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;

	return path && *path ? path : "/";
}

#define AZURE_DEP_PREFIX "/openai/deployments/"
#define AZURE_V1_CHAT    "/openai/v1/chat/completions"

/* Azure's deployment form of chat completions: /openai/deployments/DEP/chat/completions. */
static int azure_deployment_chat(const char *path)
{
	const char *dep = path + strlen(AZURE_DEP_PREFIX), *slash;

	if (strncmp(path, AZURE_DEP_PREFIX, strlen(AZURE_DEP_PREFIX)) != 0)
		return 0;
	slash = strchr(dep, '/');
	return slash && slash > dep && strcmp(slash, "/chat/completions") == 0;
}

/* A chat completions path: OpenAI's, or one of Azure's two. */
static int is_chat_path(const char *path)
{
	return strcmp(path, CHAT_PATH) == 0 || strcmp(path, AZURE_V1_CHAT) == 0 ||
	    azure_deployment_chat(path);
}

/* Parses a whole decimal number in [min, max]; 0 on success, -1 otherwise. */
static int parse_long(const char *s, long min, long max, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	while (*end == ' ' || *end == '\t')
		end++;
	if (errno || end == s || *end || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

/* A JSON string from arbitrary bytes: request bodies need not be UTF-8, and jansson refuses
 * invalid UTF-8, so such bytes become '?'. Caller owns the result; NULL on OOM. */
static json_t *json_bytes(const char *s, size_t n)
{
	json_t *j;
	char *copy;
	size_t i;

	if (n == 0)
		return json_string("");
	j = json_stringn(s, n);
	if (j)
		return j;
	copy = malloc(n);
	if (!copy)
		return NULL;
	for (i = 0; i < n; i++)
		copy[i] = (unsigned char)s[i] < 0x80 ? s[i] : '?';
	j = json_stringn(copy, n);
	free(copy);
	return j;
}

/* The request body, with its length; NULL (and 0) when empty. Points into libevent's buffer. */
static const char *request_body(struct evhttp_request *req, size_t *len)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);

	*len = evbuffer_get_length(in);
	return *len ? (const char *)evbuffer_pullup(in, -1) : NULL;
}

/* {method, uri, headers, body} of a request, as both the echo answer and the stats' "last".
 * Repeated header names are joined with ", ". Caller owns the result; NULL on OOM. */
static json_t *request_json(struct evhttp_request *req)
{
	struct evkeyvalq *hdrs = evhttp_request_get_input_headers(req);
	struct evkeyval *h;
	json_t *obj = json_object();
	json_t *headers = json_object();
	const char *body;
	size_t body_len;

	if (!obj || !headers)
		goto fail;
	TAILQ_FOREACH(h, hdrs, next) {
		json_t *old = json_object_get(headers, h->key);
		json_t *val;

		if (old) {
			val = json_sprintf("%s, %s", json_string_value(old), h->value);
		} else {
			val = json_string(h->value);
			if (!val)
				val = json_bytes(h->value, strlen(h->value));
		}
		if (json_object_set_new(headers, h->key, val) < 0)
			goto fail;
	}
	body = request_body(req, &body_len);
	if (json_object_set_new(obj, "method",
		json_string(method_name(evhttp_request_get_command(req)))) < 0
	    || json_object_set_new(obj, "uri", json_bytes(evhttp_request_get_uri(req),
		strlen(evhttp_request_get_uri(req)))) < 0
	    || json_object_set_new(obj, "path", json_bytes(request_path(req),
		strlen(request_path(req)))) < 0)
		goto fail;
	/* set_new consumes headers even when it fails */
	if (json_object_set_new(obj, "headers", headers) < 0) {
		headers = NULL;
		goto fail;
	}
	headers = NULL;
	if (json_object_set_new(obj, "body", json_bytes(body, body_len)) < 0)
		goto fail;
	return obj;
fail:
	json_decref(headers);
	json_decref(obj);
	return NULL;
}

/* Sends obj (not consumed) as the whole response. */
static void send_json(struct evhttp_request *req, int status, const json_t *obj)
{
	struct evbuffer *buf = evbuffer_new();
	char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;

	if (!buf || !text) {
		evhttp_send_error(req, 500, "mock-upstream: out of memory");
		goto done;
	}
	evbuffer_add(buf, text, strlen(text));
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "application/json");
	/* libevent knows no phrase for 429 and would say "Client Error" */
	evhttp_send_reply(req, status, status == 429 ? "Too Many Requests" : NULL, buf);
done:
	free(text);
	if (buf)
		evbuffer_free(buf);
}

/* An OpenAI-shaped error body. Caller owns the result. */
static json_t *error_json(const char *message, const char *type, const char *code)
{
	return json_pack("{s:{s:s,s:s,s:n,s:s}}", "error", "message", message, "type", type,
	    "param", "code", code);
}

static void answer_error(struct answer *ans, int status, const char *message,
    const char *type, const char *code)
{
	ans->kind = ANS_JSON;
	ans->status = status;
	json_decref(ans->body);
	ans->body = error_json(message, type, code);
}

/* The error a real upstream would send with this status. */
static void answer_forced_status(struct answer *ans, int status)
{
	char msg[112];
	char code[32];
	const char *type = "invalid_request_error";
	const char *c = code;

	snprintf(msg, sizeof(msg), "mock upstream: forced status %d (X-Mock-Fail or /__mock/behave)",
	    status);
	snprintf(code, sizeof(code), "mock_status_%d", status);
	if (status == 401) {
		c = "invalid_api_key";
	} else if (status == 404) {
		c = "model_not_found";
	} else if (status == 429) {
		type = "requests";
		c = "rate_limit_exceeded";
	} else if (status >= 500) {
		type = "server_error";
		c = "server_error";
	}
	answer_error(ans, status, msg, type, c);
}

static void answer_clear(struct answer *ans)
{
	json_decref(ans->body);
	free(ans->text);
	free(ans->model);
	free(ans->tool_name);
	memset(ans, 0, sizeof(*ans));
}

/* X-Mock-* headers. */

static int parse_fail(const char *v, struct plan *plan)
{
	long status;

	if (strcmp(v, "500") == 0) {
		plan->fail = FAIL_STATUS;
		plan->status = 500;
	} else if (strncmp(v, "status:", 7) == 0) {
		if (parse_long(v + 7, 200, 599, &status) < 0)
			return -1;
		plan->fail = FAIL_STATUS;
		plan->status = (int)status;
	} else if (strcmp(v, "hang") == 0) {
		plan->fail = FAIL_HANG;
	} else if (strcmp(v, "reset") == 0) {
		plan->fail = FAIL_RESET;
	} else if (strcmp(v, "reset-mid") == 0) {
		plan->fail = FAIL_RESET_MID;
	} else if (strcmp(v, "garbage") == 0) {
		plan->fail = FAIL_GARBAGE;
	} else if (strcmp(v, "slow") == 0) {
		plan->fail = FAIL_SLOW;
	} else if (strcmp(v, "close-after-head") == 0) {
		plan->fail = FAIL_CLOSE_AFTER_HEAD;
	} else if (strcmp(v, "fail-after-content") == 0) {
		plan->fail = FAIL_FAIL_AFTER_CONTENT;
	} else if (strcmp(v, "overloaded-mid") == 0) {
		plan->fail = FAIL_OVERLOADED_MID;
	} else {
		return -1;
	}
	return 0;
}

/* Fills plan from the sticky behaviour b (if set), then from the request headers, which
 * win; on a malformed header, turns ans into a 400 naming it and returns -1. */
static int plan_parse(struct evhttp_request *req, const struct behave *b, struct plan *plan,
    struct answer *ans)
{
	struct evkeyvalq *h = evhttp_request_get_input_headers(req);
	const char *v;
	const char *bad = NULL;
	long n;
	char msg[192];

	memset(plan, 0, sizeof(*plan));
	plan->chunks = DEFAULT_CHUNKS;
	plan->delay_ms = -1;
	plan->retry_after = -1;
	plan->cached_tokens = -1;
	if (b->set) {
		plan->fail = b->skip ? FAIL_NONE : b->fail;
		plan->status = b->status;
		plan->delay_ms = b->delay_ms;
		plan->first_byte_ms = b->first_byte_ms < 0 ? 0 : b->first_byte_ms;
		plan->retry_after = b->retry_after;
	}
	if ((v = evhttp_find_header(h, "X-Mock-Chunks")) != NULL) {
		if (parse_long(v, 1, MAX_CHUNKS, &n) < 0)
			bad = "X-Mock-Chunks (want 1..100000)";
		else
			plan->chunks = (int)n;
	}
	if ((v = evhttp_find_header(h, "X-Mock-Delay-Ms")) != NULL
	    && parse_long(v, 0, MAX_DELAY_MS, &plan->delay_ms) < 0)
		bad = "X-Mock-Delay-Ms (want 0..3600000)";
	if ((v = evhttp_find_header(h, "X-Mock-First-Byte-Delay-Ms")) != NULL
	    && parse_long(v, 0, MAX_DELAY_MS, &plan->first_byte_ms) < 0)
		bad = "X-Mock-First-Byte-Delay-Ms (want 0..3600000)";
	if ((v = evhttp_find_header(h, "X-Mock-Retry-After")) != NULL
	    && parse_long(v, 0, MAX_RETRY_AFTER, &plan->retry_after) < 0)
		bad = "X-Mock-Retry-After (want 0..2147483647)";
	if ((v = evhttp_find_header(h, "X-Mock-Cached-Tokens")) != NULL
	    && parse_long(v, 0, MAX_CACHED_TOKENS, &plan->cached_tokens) < 0)
		bad = "X-Mock-Cached-Tokens (want 0..1000000000)";
	if ((v = evhttp_find_header(h, "X-Mock-Fail")) != NULL && parse_fail(v, plan) < 0)
		bad = "X-Mock-Fail (want " FAIL_VALUES ")";
	if (!bad)
		return 0;
	snprintf(msg, sizeof(msg), "mock upstream: bad header %s", bad);
	answer_error(ans, 400, msg, "invalid_request_error", "mock_bad_header");
	return -1;
}

/* Chat completions. */

/* Appends the text of a message content (a string, or an array of {type:text, text} parts
 * joined by spaces) to out. */
static void content_text(const json_t *content, struct evbuffer *out)
{
	size_t i;
	json_t *part;
	int first = 1;

	if (json_is_string(content)) {
		evbuffer_add(out, json_string_value(content), json_string_length(content));
		return;
	}
	if (!json_is_array(content))
		return;
	json_array_foreach(content, i, part) {
		json_t *text = json_object_get(part, "text");

		if (!json_is_string(text))
			continue;
		if (!first)
			evbuffer_add(out, " ", 1);
		evbuffer_add(out, json_string_value(text), json_string_length(text));
		first = 0;
	}
}

/* Byte length of the first max_chars UTF-8 characters of s. */
static size_t utf8_prefix(const char *s, size_t len, size_t max_chars)
{
	size_t i, chars = 0;

	for (i = 0; i < len; i++) {
		if (((unsigned char)s[i] & 0xC0) != 0x80 && chars++ == max_chars)
			return i;
	}
	return len;
}

/* Start of piece k of n: k/n of the way through text, moved forward to a character
 * boundary so no SSE delta carries half a UTF-8 character. */
static size_t piece_start(const char *text, size_t len, int k, int n)
{
	size_t off = len * (size_t)k / (size_t)n;

	while (off < len && ((unsigned char)text[off] & 0xC0) == 0x80)
		off++;
	return off;
}

static json_int_t tokens_for(size_t bytes)
{
	return (json_int_t)((bytes + 3) / 4);
}

/* "Hello from mock." plus " You said: <the first ECHO_MAX_CHARS characters of user>" when
 * user is not empty. Caller owns the result; NULL on OOM. */
static char *reply_text(struct evbuffer *user)
{
	struct evbuffer *reply = evbuffer_new();
	size_t len = evbuffer_get_length(user);
	char *text = NULL;

	if (!reply)
		return NULL;
	evbuffer_add_printf(reply, "Hello from mock.");
	if (len) {
		const char *u = (const char *)evbuffer_pullup(user, -1);

		evbuffer_add_printf(reply, " You said: ");
		evbuffer_add(reply, u, utf8_prefix(u, len, ECHO_MAX_CHARS));
	}
	len = evbuffer_get_length(reply);
	text = strndup((const char *)evbuffer_pullup(reply, -1), len);
	evbuffer_free(reply);
	return text;
}

/* Builds the reply text and token counts from the parsed request into ans. 0 or -1 (OOM). */
static int chat_text(const json_t *request, struct answer *ans)
{
	json_t *messages = json_object_get(request, "messages");
	struct evbuffer *all = evbuffer_new();
	struct evbuffer *user = evbuffer_new();
	json_t *msg;
	size_t i;
	int rc = -1;

	if (!all || !user)
		goto done;
	json_array_foreach(messages, i, msg) {
		const char *role = json_string_value(json_object_get(msg, "role"));

		content_text(json_object_get(msg, "content"), all);
		if (role && strcmp(role, "user") == 0) {
			evbuffer_drain(user, evbuffer_get_length(user));
			content_text(json_object_get(msg, "content"), user);
		}
	}
	if (evbuffer_get_length(user) == strlen(TOOL_TRIGGER)
	    && memcmp(evbuffer_pullup(user, -1), TOOL_TRIGGER, strlen(TOOL_TRIGGER)) == 0) {
		json_t *fn = json_object_get(json_array_get(json_object_get(request, "tools"), 0),
		    "function");
		const char *name = json_string_value(json_object_get(fn, "name"));

		ans->tool_name = strdup(name && *name ? name : TOOL_DEFAULT_NAME);
		ans->text = strdup("");
		if (!ans->tool_name || !ans->text)
			goto done;
		ans->completion_tokens = tokens_for(strlen(TOOL_INPUT));
	} else {
		ans->text = reply_text(user);
		if (!ans->text)
			goto done;
		ans->completion_tokens = tokens_for(strlen(ans->text));
	}
	ans->prompt_tokens = tokens_for(evbuffer_get_length(all));
	rc = 0;
done:
	if (all)
		evbuffer_free(all);
	if (user)
		evbuffer_free(user);
	return rc;
}

static json_t *usage_json(const struct answer *ans)
{
	if (ans->cached_tokens >= 0)
		return json_pack("{s:I,s:I,s:I,s:{s:I,s:i},s:{s:i,s:i,s:i,s:i}}",
		    "prompt_tokens", ans->prompt_tokens,
		    "completion_tokens", ans->completion_tokens,
		    "total_tokens", ans->prompt_tokens + ans->completion_tokens,
		    "prompt_tokens_details", "cached_tokens", ans->cached_tokens,
		    "audio_tokens", 0,
		    "completion_tokens_details", "reasoning_tokens", 0, "audio_tokens", 0,
		    "accepted_prediction_tokens", 0, "rejected_prediction_tokens", 0);
	return json_pack("{s:I,s:I,s:I}", "prompt_tokens", ans->prompt_tokens,
	    "completion_tokens", ans->completion_tokens,
	    "total_tokens", ans->prompt_tokens + ans->completion_tokens);
}

static json_t *completion_json(const struct answer *ans)
{
	if (ans->tool_name)
		return json_pack("{s:s,s:s,s:I,s:s,s:[{s:i,s:{s:s,s:n,s:[{s:s,s:s,s:{s:s,s:s}}]},"
		    "s:n,s:s}],s:o}",
		    "id", ans->id, "object", "chat.completion", "created", ans->created,
		    "model", ans->model,
		    "choices", "index", 0, "message", "role", "assistant", "content",
		    "tool_calls", "id", CALL_ID, "type", "function", "function", "name", ans->tool_name,
		    "arguments", TOOL_INPUT,
		    "logprobs", "finish_reason", "tool_calls",
		    "usage", usage_json(ans));
	return json_pack("{s:s,s:s,s:I,s:s,s:[{s:i,s:{s:s,s:s},s:n,s:s}],s:o}",
	    "id", ans->id, "object", "chat.completion", "created", ans->created,
	    "model", ans->model,
	    "choices", "index", 0, "message", "role", "assistant", "content", ans->text,
	    "logprobs", "finish_reason", "stop",
	    "usage", usage_json(ans));
}

/* Decides the answer to a chat completion request. */
static void chat_answer(struct mock *m, struct evhttp_request *req, const struct plan *plan,
    struct answer *ans)
{
	const char *body;
	size_t len;
	json_t *request;
	json_t *opts;
	json_error_t err;
	char msg[JSON_ERROR_TEXT_LENGTH + 96];
	const char *model;

	body = request_body(req, &len);
	request = json_loadb(body ? body : "", len, 0, &err);
	if (!request) {
		snprintf(msg, sizeof(msg),
		    "We could not parse the JSON body of your request: %s (line %d, column %d)",
		    err.text, err.line, err.column);
		answer_error(ans, 400, msg, "invalid_request_error", "invalid_json");
		return;
	}
	if (!json_is_object(request)) {
		answer_error(ans, 400, "The request body must be a JSON object",
		    "invalid_request_error", "invalid_json");
		goto done;
	}
	model = json_string_value(json_object_get(request, "model"));
	ans->model = strdup(model ? model : "mock-gpt");
	if (!ans->model || chat_text(request, ans) < 0) {
		answer_error(ans, 500, "mock upstream: out of memory", "server_error",
		    "server_error");
		goto done;
	}
	snprintf(ans->id, sizeof(ans->id), "chatcmpl-mock-%lu", ++m->next_id);
	ans->created = (json_int_t)time(NULL);
	ans->chunks = ans->tool_name ? 1 + TOOL_PIECES : plan->chunks;
	ans->delay_ms = plan->delay_ms < 0 ? 0 : plan->delay_ms;
	ans->cached_tokens = plan->cached_tokens;
	opts = json_object_get(request, "stream_options");
	ans->include_usage = json_is_true(json_object_get(opts, "include_usage"));
	if (plan->fail == FAIL_SLOW) {
		ans->delay_ms = plan->delay_ms < 0 ? SLOW_DELAY_MS : plan->delay_ms;
		ans->kind = ANS_STREAM;
	} else if (plan->fail == FAIL_RESET_MID) {
		ans->cut = CUT_RST;
		ans->cut_after = plan->chunks < 2 ? plan->chunks : 2;
		ans->kind = ANS_STREAM;
	} else if (plan->fail == FAIL_CLOSE_AFTER_HEAD) {
		ans->cut = CUT_FIN;
		ans->cut_after = 0;
		ans->ping = 1;
		ans->kind = ANS_STREAM;
	} else if (plan->fail == FAIL_FAIL_AFTER_CONTENT) {
		/* token counts stay those of the full text: no usage chunk is ever sent */
		free(ans->text);
		ans->text = strdup(AFTER_CONTENT_TEXT);
		if (!ans->text) {
			answer_error(ans, 500, "mock upstream: out of memory", "server_error",
			    "server_error");
			goto done;
		}
		ans->chunks = 1;
		ans->cut = CUT_RST;
		ans->cut_after = 1;
		ans->ping = 1;
		ans->kind = ANS_STREAM;
	} else if (json_is_true(json_object_get(request, "stream"))) {
		ans->kind = ANS_STREAM;
	} else {
		ans->kind = ANS_JSON;
		ans->status = 200;
		ans->body = completion_json(ans);
	}
done:
	json_decref(request);
}

/* Anthropic's Messages API (POST /v1/messages). */

/* The error type Anthropic's API answers with this status. */
static const char *anthropic_error_type(int status)
{
	switch (status) {
	case 400: return "invalid_request_error";
	case 401: return "authentication_error";
	case 403: return "permission_error";
	case 404: return "not_found_error";
	case 413: return "request_too_large";
	case 429: return "rate_limit_error";
	case 500: return "api_error";
	case 504: return "timeout_error";
	case 529: return "overloaded_error";
	}
	return status >= 400 && status < 500 ? "invalid_request_error" : "api_error";
}

/* Turns ans into an Anthropic-shaped error: {"type":"error","error":{type,message},
 * "request_id"}. message must not point into ans->body. */
static void answer_anthropic_error(struct answer *ans, int status, const char *type,
    const char *message)
{
	char rid[40];

	snprintf(rid, sizeof(rid), "req_mock_%lu", ans->req_n);
	ans->kind = ANS_JSON;
	ans->status = status;
	json_decref(ans->body);
	ans->body = json_pack("{s:s,s:{s:s,s:s},s:s}", "type", "error",
	    "error", "type", type, "message", message, "request_id", rid);
}

static void answer_anthropic_status(struct answer *ans, int status)
{
	char msg[112];

	snprintf(msg, sizeof(msg), "mock upstream: forced status %d (X-Mock-Fail or /__mock/behave)",
	    status);
	answer_anthropic_error(ans, status, anthropic_error_type(status), msg);
}

/* The real API's header checks: x-api-key (Authorization does not count), then
 * anthropic-version. 1 (with ans set to the error) when the request is refused. */
static int anthropic_refuses(struct evhttp_request *req, struct answer *ans)
{
	struct evkeyvalq *h = evhttp_request_get_input_headers(req);
	const char *key = evhttp_find_header(h, "x-api-key");
	const char *version = evhttp_find_header(h, "anthropic-version");

	if (!key || !*key) {
		answer_anthropic_error(ans, 401, "authentication_error",
		    "x-api-key header is required");
		return 1;
	}
	if (!version || !*version) {
		answer_anthropic_error(ans, 400, "invalid_request_error",
		    "anthropic-version: header is required");
		return 1;
	}
	return 0;
}

/* Checks a Messages API request body the way the real API does, for the fields the mock
 * relies on. NULL when it passes, else the message of the 400 (possibly in buf). */
static const char *messages_invalid(const json_t *r, char *buf, size_t n)
{
	json_t *v, *msgs, *msg;
	const char *prev = NULL;
	size_t i;

	if (!json_is_object(r))
		return "body: Input should be a JSON object";
	v = json_object_get(r, "model");
	if (!v)
		return "model: Field required";
	if (!json_is_string(v) || json_string_length(v) == 0)
		return "model: Input should be a non-empty string";
	v = json_object_get(r, "max_tokens");
	if (!v)
		return "max_tokens: Field required";
	if (!json_is_integer(v))
		return "max_tokens: Input should be a valid integer";
	if (json_integer_value(v) < 1)
		return "max_tokens: Input should be greater than or equal to 1";
	msgs = json_object_get(r, "messages");
	if (!msgs)
		return "messages: Field required";
	if (!json_is_array(msgs))
		return "messages: Input should be a valid list";
	if (json_array_size(msgs) == 0)
		return "messages: at least one message is required";
	json_array_foreach(msgs, i, msg) {
		const char *role;

		if (!json_is_object(msg)) {
			snprintf(buf, n, "messages.%zu: Input should be a valid dictionary", i);
			return buf;
		}
		v = json_object_get(msg, "role");
		role = json_string_value(v);
		if (!v) {
			snprintf(buf, n, "messages.%zu.role: Field required", i);
			return buf;
		}
		if (role && strcmp(role, "system") == 0) {
			snprintf(buf, n, "messages.%zu.role: Unexpected role \"system\". The Messages "
			    "API accepts a top-level `system` parameter, not \"system\" as an input "
			    "message role.", i);
			return buf;
		}
		if (!role || (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0)) {
			snprintf(buf, n, "messages.%zu.role: Input should be 'user' or 'assistant'", i);
			return buf;
		}
		if (prev && strcmp(prev, role) == 0) {
			snprintf(buf, n, "messages: roles must alternate between \"user\" and "
			    "\"assistant\", but found multiple \"%s\" roles in a row (messages.%zu and "
			    "messages.%zu)", role, i - 1, i);
			return buf;
		}
		prev = role;
	}
	return NULL;
}

/* Appends the text of an Anthropic content to out: a string, or blocks joined by spaces,
 * each the "text" of a block that has one or the text of a tool_result block's content
 * (itself a string or text blocks). */
static void anthropic_content_text(const json_t *content, struct evbuffer *out)
{
	size_t i;
	json_t *part;
	int first = 1;

	if (!json_is_array(content)) {
		content_text(content, out);
		return;
	}
	json_array_foreach(content, i, part) {
		json_t *text = json_object_get(part, "text");
		const char *type = json_string_value(json_object_get(part, "type"));

		if (json_is_string(text)) {
			if (!first)
				evbuffer_add(out, " ", 1);
			evbuffer_add(out, json_string_value(text), json_string_length(text));
		} else if (type && strcmp(type, "tool_result") == 0) {
			if (!first)
				evbuffer_add(out, " ", 1);
			content_text(json_object_get(part, "content"), out);
		} else {
			continue;
		}
		first = 0;
	}
}

/* The answer's text (or tool call) and token counts from a checked request. 0 or -1 (OOM). */
static int messages_text(const json_t *request, struct answer *ans)
{
	json_t *messages = json_object_get(request, "messages");
	struct evbuffer *all = evbuffer_new();
	struct evbuffer *user = evbuffer_new();
	json_t *msg;
	size_t i, len;
	int rc = -1;

	if (!all || !user)
		goto done;
	anthropic_content_text(json_object_get(request, "system"), all);
	json_array_foreach(messages, i, msg) {
		const char *role = json_string_value(json_object_get(msg, "role"));

		anthropic_content_text(json_object_get(msg, "content"), all);
		if (role && strcmp(role, "user") == 0) {
			evbuffer_drain(user, evbuffer_get_length(user));
			anthropic_content_text(json_object_get(msg, "content"), user);
		}
	}
	len = evbuffer_get_length(user);
	if (len == strlen(TOOL_TRIGGER)
	    && memcmp(evbuffer_pullup(user, -1), TOOL_TRIGGER, len) == 0) {
		json_t *tool = json_array_get(json_object_get(request, "tools"), 0);
		const char *name = json_string_value(json_object_get(tool, "name"));

		ans->tool_name = strdup(name && *name ? name : TOOL_DEFAULT_NAME);
		ans->text = strdup(TOOL_TEXT);
		if (!ans->tool_name || !ans->text)
			goto done;
		ans->completion_tokens = tokens_for(strlen(TOOL_TEXT) + strlen(TOOL_INPUT));
	} else {
		ans->text = reply_text(user);
		if (!ans->text)
			goto done;
		ans->completion_tokens = tokens_for(strlen(ans->text));
	}
	ans->prompt_tokens = tokens_for(evbuffer_get_length(all));
	rc = 0;
done:
	if (all)
		evbuffer_free(all);
	if (user)
		evbuffer_free(user);
	return rc;
}

static json_t *anthropic_usage(const struct answer *ans, json_int_t output_tokens)
{
	return json_pack("{s:I,s:I,s:I,s:I}", "input_tokens", ans->prompt_tokens,
	    "output_tokens", output_tokens, "cache_read_input_tokens", ans->cached_tokens,
	    "cache_creation_input_tokens", (json_int_t)0);
}

/* The whole answer: a text block, then the tool_use block of a tool call. */
static json_t *message_json(const struct answer *ans)
{
	json_t *content = json_pack("[{s:s,s:s}]", "type", "text", "text", ans->text);

	if (content && ans->tool_name
	    && json_array_append_new(content, json_pack("{s:s,s:s,s:s,s:o}", "type", "tool_use",
		"id", TOOL_ID, "name", ans->tool_name, "input", json_loads(TOOL_INPUT, 0, NULL)))
		< 0) {
		json_decref(content);
		content = NULL;
	}
	return json_pack("{s:s,s:s,s:s,s:s,s:o,s:s,s:n,s:o}", "id", ans->id, "type", "message",
	    "role", "assistant", "model", ans->model, "content", content,
	    "stop_reason", ans->tool_name ? "tool_use" : "end_turn", "stop_sequence",
	    "usage", anthropic_usage(ans, ans->completion_tokens));
}

/* Decides the answer to a Messages API request that passed the header checks. */
static void messages_answer(struct evhttp_request *req, const struct plan *plan,
    struct answer *ans)
{
	const char *body, *bad;
	size_t len;
	json_t *request;
	json_error_t err;
	char msg[JSON_ERROR_TEXT_LENGTH + 256];

	body = request_body(req, &len);
	request = json_loadb(body ? body : "", len, 0, &err);
	if (!request) {
		snprintf(msg, sizeof(msg), "body: not valid JSON: %s (line %d, column %d)",
		    err.text, err.line, err.column);
		answer_anthropic_error(ans, 400, "invalid_request_error", msg);
		return;
	}
	bad = messages_invalid(request, msg, sizeof(msg));
	if (bad) {
		answer_anthropic_error(ans, 400, "invalid_request_error", bad);
		goto done;
	}
	ans->anthropic = 1;
	ans->model = strdup(json_string_value(json_object_get(request, "model")));
	if (!ans->model || messages_text(request, ans) < 0) {
		answer_anthropic_error(ans, 500, "api_error", "mock upstream: out of memory");
		goto done;
	}
	snprintf(ans->id, sizeof(ans->id), "msg_mock_%lu", ans->req_n);
	/* Anthropic always reports it: 0 when the header did not say */
	ans->cached_tokens = plan->cached_tokens < 0 ? 0 : plan->cached_tokens;
	ans->chunks = plan->chunks;
	ans->delay_ms = plan->delay_ms < 0 ? 0 : plan->delay_ms;
	ans->kind = ANS_STREAM;
	if (plan->fail == FAIL_SLOW) {
		ans->delay_ms = plan->delay_ms < 0 ? SLOW_DELAY_MS : plan->delay_ms;
	} else if (plan->fail == FAIL_RESET_MID) {
		ans->cut = CUT_RST;
		ans->cut_after = 1;
	} else if (plan->fail == FAIL_CLOSE_AFTER_HEAD) {
		ans->cut = CUT_FIN;
		ans->cut_after = 0;
	} else if (plan->fail == FAIL_FAIL_AFTER_CONTENT) {
		/* token counts stay those of the full answer: message_delta is never sent */
		free(ans->text);
		free(ans->tool_name);
		ans->tool_name = NULL;
		ans->text = strdup(AFTER_CONTENT_TEXT);
		if (!ans->text) {
			answer_anthropic_error(ans, 500, "api_error", "mock upstream: out of memory");
			goto done;
		}
		ans->chunks = 1;
		ans->cut = CUT_RST;
		ans->cut_after = 1;
	} else if (plan->fail == FAIL_OVERLOADED_MID) {
		ans->cut = CUT_ERROR;
		ans->cut_after = 1;
	} else if (!json_is_true(json_object_get(request, "stream"))) {
		ans->kind = ANS_JSON;
		ans->status = 200;
		ans->body = message_json(ans);
	}
done:
	json_decref(request);
}

static json_t *models_json(void)
{
	return json_pack("{s:s,s:[{s:s,s:s,s:i,s:s},{s:s,s:s,s:i,s:s}]}",
	    "object", "list", "data",
	    "id", "demo-model", "object", "model", "created", 1700000000, "owned_by", "mock",
	    "id", "mock-gpt", "object", "model", "created", 1700000000, "owned_by", "mock");
}

/* Decides how to answer a non-control request. seen is its request_json() (may be NULL). */
/* Azure's checks of its chat paths: the api-key header, and api-version on the deployment
 * form. 1 (with ans set to Azure's error) when the request is refused. */
static int azure_refuses(struct evhttp_request *req, const char *path, struct answer *ans)
{
	const char *key = evhttp_find_header(evhttp_request_get_input_headers(req), "api-key");
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *q = uri ? evhttp_uri_get_query(uri) : NULL;
	const char *code = NULL, *msg = NULL;

	if (!key || !*key) {
		code = "401";
		msg = "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
		    "to provide a valid key for an active subscription and use a correct regional API "
		    "endpoint for your resource.";
	} else if (azure_deployment_chat(path) && (!q || (strncmp(q, "api-version=", 12) != 0
	    && !strstr(q, "&api-version=")))) {
		code = "404";
		msg = "Resource not found";
	}
	if (!code)
		return 0;
	ans->kind = ANS_JSON;
	ans->status = atoi(code);
	json_decref(ans->body);
	ans->body = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
	return 1;
}

static void route(struct mock *m, struct evhttp_request *req, const struct plan *plan,
    const json_t *seen, struct answer *ans)
{
	const char *path = request_path(req);
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	int chat = cmd == EVHTTP_REQ_POST && is_chat_path(path);
	int messages = cmd == EVHTTP_REQ_POST && strcmp(path, MESSAGES_PATH) == 0;

	if (chat && strcmp(path, CHAT_PATH) != 0 && azure_refuses(req, path, ans))
		return;
	if (messages && anthropic_refuses(req, ans))
		return;
	switch (plan->fail) {
	case FAIL_STATUS:
		if (messages)
			answer_anthropic_status(ans, plan->status);
		else
			answer_forced_status(ans, plan->status);
		return;
	case FAIL_HANG:
		ans->kind = ANS_HANG;
		return;
	case FAIL_RESET:
		ans->kind = ANS_RESET;
		return;
	case FAIL_GARBAGE:
		ans->kind = ANS_GARBAGE;
		return;
	case FAIL_RESET_MID:
	case FAIL_CLOSE_AFTER_HEAD:
	case FAIL_FAIL_AFTER_CONTENT:
		if (!chat && !messages) {
			ans->kind = ANS_RESET;
			return;
		}
		break;
	case FAIL_OVERLOADED_MID:
		if (!messages) {
			ans->kind = ANS_RESET;
			return;
		}
		break;
	case FAIL_NONE:
	case FAIL_SLOW:
		break;
	}
	ans->kind = ANS_JSON;
	ans->status = 200;
	if (chat)
		chat_answer(m, req, plan, ans);
	else if (messages)
		messages_answer(req, plan, ans);
	else if (cmd == EVHTTP_REQ_GET && strcmp(path, MODELS_PATH) == 0)
		ans->body = models_json();
	else
		ans->body = json_deep_copy(seen);
}

/* Connections. */

static size_t conn_bucket(const struct evhttp_connection *evcon)
{
	uintptr_t v = (uintptr_t)evcon;

	return (size_t)((v >> 4) ^ (v >> 16)) % CONN_BUCKETS;
}

/* Called by libevent exactly once when a connection we track goes away: the client left,
 * we closed it, or the server is shutting down. Frees the conn and whatever it was doing. */
static void conn_closed(struct evhttp_connection *evcon, void *arg)
{
	struct conn *conn = arg;
	struct mock *m = conn->mock;
	struct pending *p = conn->pending;
	struct conn **pp;

	if (p) {
		if (p->state == PEND_STREAM)
			m->stats.streams_aborted++;
		if (p->state == PEND_HELD)
			m->stats.held--;
		/* libevent detaches an unanswered request from a connection the client closed
		 * and leaves freeing it to us; one still attached is freed with the connection. */
		if (!evhttp_request_get_connection(p->req))
			evhttp_request_free(p->req);
		event_free(p->timer);
		answer_clear(&p->ans);
		free(p);
	}
	for (pp = &m->conns[conn_bucket(evcon)]; *pp; pp = &(*pp)->next) {
		if (*pp == conn) {
			*pp = conn->next;
			break;
		}
	}
	m->stats.open_connections--;
	free(conn);
}

/* The conn for evcon, created (and hooked to its close) on its first request. NULL on OOM. */
static struct conn *conn_get(struct mock *m, struct evhttp_connection *evcon)
{
	size_t b = conn_bucket(evcon);
	struct conn *conn;

	for (conn = m->conns[b]; conn; conn = conn->next) {
		if (conn->evcon == evcon)
			return conn;
	}
	conn = calloc(1, sizeof(*conn));
	if (!conn)
		return NULL;
	conn->mock = m;
	conn->evcon = evcon;
	conn->next = m->conns[b];
	m->conns[b] = conn;
	m->stats.open_connections++;
	m->stats.connections_total++;
	evhttp_connection_set_closecb(evcon, conn_closed, conn);
	{
		/* stream chunks go out as written, not merged by Nagle behind a delayed ACK */
		int one = 1, fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evcon));
		if (fd >= 0)
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	return conn;
}

static int conn_fd(const struct conn *conn)
{
	return bufferevent_getfd(evhttp_connection_get_bufferevent(conn->evcon));
}

/* libevent stops reading once a request is in, so a client leaving while we delay or hang
 * would go unnoticed. Reading again with no read callback (as libevent itself does while it
 * writes a reply) keeps its error callback, which frees the connection on EOF. */
static void watch_close(struct conn *conn)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(conn->evcon);
	bufferevent_data_cb wcb;
	bufferevent_event_cb ecb;
	void *arg;

	bufferevent_getcb(bev, NULL, &wcb, &ecb, &arg);
	bufferevent_setcb(bev, NULL, wcb, ecb, arg);
	bufferevent_enable(bev, EV_READ);
}

/* Pending requests. */

/* Takes over ans. NULL on OOM (ans is then untouched). */
static struct pending *pending_new(struct conn *conn, struct evhttp_request *req,
    struct answer *ans)
{
	struct pending *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->timer = evtimer_new(conn->mock->base, pending_timer, p);
	if (!p->timer) {
		free(p);
		return NULL;
	}
	p->conn = conn;
	p->req = req;
	p->ans = *ans;
	memset(ans, 0, sizeof(*ans));
	conn->pending = p;
	return p;
}

/* Forgets p before its request goes back to libevent, which may free the connection (and
 * call conn_closed) synchronously while finishing the reply. */
static void pending_free(struct pending *p)
{
	p->conn->pending = NULL;
	event_free(p->timer);
	answer_clear(&p->ans);
	free(p);
}

static void pending_after(struct pending *p, long ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	evtimer_add(p->timer, &tv);
}

/* Kills the TCP connection with an RST. SO_LINGER {1,0} makes the close abortive, but
 * libevent's evhttp_connection_free() calls shutdown(SHUT_WR) first, which would send a
 * FIN ahead of it; connecting to AF_UNSPEC aborts the socket (RST) right now instead, and
 * libevent later closes the dead fd. */
static void tcp_reset(struct conn *conn)
{
	int fd = conn_fd(conn);
	struct linger lg = { 1, 0 };
	struct sockaddr sa;

	if (fd < 0)
		return;
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	memset(&sa, 0, sizeof(sa));
	sa.sa_family = AF_UNSPEC;
	if (connect(fd, &sa, sizeof(sa)) < 0 && conn->mock->verbose)
		fprintf(stderr, "mock-upstream: AF_UNSPEC disconnect failed (%s); "
		    "the client may see a FIN before the RST\n", strerror(errno));
}

/* Frees the connection on the next loop turn, outside libevent's own callbacks. */
static void close_later(struct pending *p)
{
	p->state = PEND_CLOSING;
	pending_after(p, 0);
}

static void garbage(struct pending *p)
{
	int fd = conn_fd(p->conn);

	if (fd >= 0 && write(fd, GARBAGE_BYTES, sizeof(GARBAGE_BYTES) - 1) < 0
	    && p->conn->mock->verbose)
		fprintf(stderr, "mock-upstream: garbage write: %s\n", strerror(errno));
	close_later(p);
}

/* Streaming. */

/* Queues one SSE event carrying chunk (consumed) as one HTTP chunk, after prefix (raw SSE
 * text, or NULL). written, if set, runs once it is on the wire. */
static void stream_event(struct pending *p, const char *prefix, json_t *chunk,
    void (*written)(struct evhttp_connection *, void *))
{
	struct evbuffer *buf = evbuffer_new();
	char *text = chunk ? json_dumps(chunk, JSON_COMPACT) : NULL;

	if (buf && text) {
		if (prefix)
			evbuffer_add(buf, prefix, strlen(prefix));
		evbuffer_add_printf(buf, "data: %s\n\n", text);
		evhttp_send_reply_chunk_with_cb(p->req, buf, written, p);
	}
	free(text);
	if (buf)
		evbuffer_free(buf);
	json_decref(chunk);
}

static json_t *chunk_json(const struct pending *p, json_t *choices, json_t *usage)
{
	json_t *c = json_pack("{s:s,s:s,s:I,s:s,s:o}", "id", p->ans.id,
	    "object", "chat.completion.chunk", "created", p->ans.created,
	    "model", p->ans.model, "choices", choices);

	/* OpenAI sends "usage": null on every chunk but the last when usage was asked for. */
	if (c && p->ans.include_usage)
		json_object_set_new(c, "usage", usage ? usage : json_null());
	else
		json_decref(usage);
	return c;
}

/* The content-free first chunk OpenAI opens every stream with: delta {role, content ""}. */
static json_t *role_chunk(const struct pending *p)
{
	return chunk_json(p, json_pack("[{s:i,s:{s:s,s:s},s:n,s:n}]", "index", 0,
	    "delta", "role", "assistant", "content", "", "logprobs", "finish_reason"), NULL);
}

/* A tool call's chunk p->sent: its head (id, name), then its arguments in fragments. */
static json_t *tool_chunk(const struct pending *p)
{
	int last = p->sent + 1 == p->ans.chunks && p->ans.cut == CUT_NONE;
	json_t *call;

	if (p->sent == 0) {
		call = json_pack("{s:i,s:s,s:s,s:{s:s,s:s}}", "index", 0, "id", CALL_ID,
		    "type", "function", "function", "name", p->ans.tool_name, "arguments", "");
	} else {
		size_t len = strlen(TOOL_INPUT);
		size_t from = piece_start(TOOL_INPUT, len, p->sent - 1, TOOL_PIECES);
		size_t to = piece_start(TOOL_INPUT, len, p->sent, TOOL_PIECES);

		call = json_pack("{s:i,s:{s:s%}}", "index", 0, "function", "arguments",
		    TOOL_INPUT + from, to - from);
	}
	return chunk_json(p, json_pack("[{s:i,s:{s:[o]},s:n,s:s?}]", "index", 0,
	    "delta", "tool_calls", call, "logprobs", "finish_reason", last ? "tool_calls" : NULL),
	    NULL);
}

/* The chunk carrying content piece p->sent. */
static json_t *content_chunk(const struct pending *p)
{
	const char *text = p->ans.text;
	size_t len = strlen(text);
	size_t from = piece_start(text, len, p->sent, p->ans.chunks);
	size_t to = piece_start(text, len, p->sent + 1, p->ans.chunks);
	/* a stream that is cut short never finishes */
	int last = p->sent + 1 == p->ans.chunks && p->ans.cut == CUT_NONE;

	return chunk_json(p, json_pack("[{s:i,s:{s:s%},s:n,s:s?}]", "index", 0,
	    "delta", "content", text + from, to - from,
	    "logprobs", "finish_reason", last ? "stop" : NULL), NULL);
}

static void cut_written(struct evhttp_connection *evcon, void *arg)
{
	struct pending *p = arg;

	(void)evcon;
	if (p->state != PEND_CUT)
		return;
	if (p->ans.cut == CUT_RST)
		tcp_reset(p->conn);
	close_later(p);
}

static void stream_end(struct pending *p)
{
	struct evhttp_request *req = p->req;
	struct evbuffer *done = evbuffer_new();

	if (p->ans.include_usage)
		stream_event(p, NULL, chunk_json(p, json_array(), usage_json(&p->ans)), NULL);
	if (done) {
		evbuffer_add_printf(done, "data: [DONE]\n\n");
		evhttp_send_reply_chunk(req, done);
		evbuffer_free(done);
	}
	p->conn->mock->stats.streams_completed++;
	pending_free(p);
	evhttp_send_reply_end(req);
}

/* Sends the next content chunk (all remaining ones when there is no delay). */
static void stream_step(struct pending *p)
{
	if (p->ans.anthropic) {
		anthropic_stream_step(p);
		return;
	}
	do {
		int cut = p->ans.cut != CUT_NONE && p->sent + 1 == p->ans.cut_after;

		if (cut)
			p->state = PEND_CUT;
		stream_event(p, NULL, p->ans.tool_name ? tool_chunk(p) : content_chunk(p),
		    cut ? cut_written : NULL);
		p->sent++;
		if (cut)
			return;
	} while (p->ans.delay_ms == 0 && p->sent < p->ans.chunks);
	if (p->sent < p->ans.chunks)
		pending_after(p, p->ans.delay_ms);
	else
		stream_end(p);
}

static void stream_begin(struct pending *p)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(p->req);

	evhttp_add_header(h, "Content-Type", "text/event-stream");
	evhttp_add_header(h, "Cache-Control", "no-cache");
	evhttp_send_reply_start(p->req, 200, "OK");
	p->state = PEND_STREAM;
	p->conn->mock->stats.streams_started++;
	if (p->ans.anthropic) {
		anthropic_stream_begin(p);
		return;
	}
	if (p->ans.cut != CUT_NONE && p->ans.cut_after == 0) {
		p->state = PEND_CUT;
		stream_event(p, p->ans.ping ? PING_COMMENT : NULL, role_chunk(p), cut_written);
		return;
	}
	stream_event(p, p->ans.ping ? PING_COMMENT : NULL, role_chunk(p), NULL);
	stream_step(p);
}

/* Anthropic streams: "event: NAME" and "data: JSON" lines per event. The events before the
 * first content delta go out with the head; then come the content steps, the first at once
 * and the next ones X-Mock-Delay-Ms apart: X-Mock-Chunks text_delta pieces of the text
 * (block 0), and for a tool call TOOL_PIECES input_json_delta pieces (block 1, opened by the
 * first of them); then the closing events. */

/* Appends one event carrying data (consumed) to buf. */
static void anthropic_event(struct evbuffer *buf, const char *name, json_t *data)
{
	char *text = data ? json_dumps(data, JSON_COMPACT) : NULL;

	if (text)
		evbuffer_add_printf(buf, "event: %s\ndata: %s\n\n", name, text);
	free(text);
	json_decref(data);
}

/* message_start, content_block_start (text, block 0) and ping. */
static void anthropic_head(const struct pending *p, struct evbuffer *buf)
{
	const struct answer *a = &p->ans;

	anthropic_event(buf, "message_start", json_pack("{s:s,s:{s:s,s:s,s:s,s:s,s:[],s:n,s:n,s:o}}",
	    "type", "message_start", "message", "id", a->id, "type", "message",
	    "role", "assistant", "model", a->model, "content", "stop_reason", "stop_sequence",
	    "usage", anthropic_usage(a, 1)));
	anthropic_event(buf, "content_block_start", json_pack("{s:s,s:i,s:{s:s,s:s}}",
	    "type", "content_block_start", "index", 0, "content_block", "type", "text",
	    "text", ""));
	anthropic_event(buf, "ping", json_pack("{s:s}", "type", "ping"));
}

static int anthropic_steps(const struct answer *a)
{
	return a->chunks + (a->tool_name ? TOOL_PIECES : 0);
}

static json_t *block_stop(int index)
{
	return json_pack("{s:s,s:i}", "type", "content_block_stop", "index", index);
}

/* Content step i. */
static void anthropic_step(const struct pending *p, struct evbuffer *buf, int i)
{
	const struct answer *a = &p->ans;
	const char *text = a->text;
	size_t len = strlen(text), from, to;
	int k = i - a->chunks;

	if (i < a->chunks) {
		from = piece_start(text, len, i, a->chunks);
		to = piece_start(text, len, i + 1, a->chunks);
		anthropic_event(buf, "content_block_delta", json_pack("{s:s,s:i,s:{s:s,s:s%}}",
		    "type", "content_block_delta", "index", 0, "delta", "type", "text_delta",
		    "text", text + from, to - from));
		return;
	}
	if (k == 0) {
		anthropic_event(buf, "content_block_stop", block_stop(0));
		anthropic_event(buf, "content_block_start", json_pack("{s:s,s:i,s:{s:s,s:s,s:s,s:{}}}",
		    "type", "content_block_start", "index", 1, "content_block", "type", "tool_use",
		    "id", TOOL_ID, "name", a->tool_name, "input"));
	}
	len = strlen(TOOL_INPUT);
	from = piece_start(TOOL_INPUT, len, k, TOOL_PIECES);
	to = piece_start(TOOL_INPUT, len, k + 1, TOOL_PIECES);
	anthropic_event(buf, "content_block_delta", json_pack("{s:s,s:i,s:{s:s,s:s%}}",
	    "type", "content_block_delta", "index", 1, "delta", "type", "input_json_delta",
	    "partial_json", TOOL_INPUT + from, to - from));
}

/* Queues buf (freed) as one HTTP chunk; written, if set, runs once it is on the wire. */
static void anthropic_send(struct pending *p, struct evbuffer *buf,
    void (*written)(struct evhttp_connection *, void *))
{
	evhttp_send_reply_chunk_with_cb(p->req, buf, written, p);
	evbuffer_free(buf);
}

/* The closing events and the end of the response. */
static void anthropic_stream_end(struct pending *p)
{
	struct evhttp_request *req = p->req;
	struct evbuffer *buf = evbuffer_new();
	const struct answer *a = &p->ans;

	if (buf) {
		anthropic_event(buf, "content_block_stop", block_stop(a->tool_name ? 1 : 0));
		anthropic_event(buf, "message_delta", json_pack("{s:s,s:{s:s,s:n},s:{s:I}}",
		    "type", "message_delta", "delta", "stop_reason",
		    a->tool_name ? "tool_use" : "end_turn", "stop_sequence",
		    "usage", "output_tokens", a->completion_tokens));
		anthropic_event(buf, "message_stop", json_pack("{s:s}", "type", "message_stop"));
		anthropic_send(p, buf, NULL);
	}
	p->conn->mock->stats.streams_completed++;
	pending_free(p);
	evhttp_send_reply_end(req);
}

/* overloaded-mid: the error event, then a clean end of the response (no message_stop). */
static void anthropic_stream_error(struct pending *p)
{
	struct evhttp_request *req = p->req;
	struct evbuffer *buf = evbuffer_new();

	if (buf) {
		anthropic_event(buf, "error", json_pack("{s:s,s:{s:s,s:s}}", "type", "error",
		    "error", "type", "overloaded_error", "message", "Overloaded"));
		anthropic_send(p, buf, NULL);
	}
	pending_free(p);
	evhttp_send_reply_end(req);
}

/* Sends the next content step (all remaining ones when there is no delay). */
static void anthropic_stream_step(struct pending *p)
{
	int total = anthropic_steps(&p->ans);

	do {
		int cut = p->ans.cut != CUT_NONE && p->sent + 1 == p->ans.cut_after;
		struct evbuffer *buf = evbuffer_new();

		if (!buf) {
			tcp_reset(p->conn);
			close_later(p);
			return;
		}
		anthropic_step(p, buf, p->sent);
		p->sent++;
		if (cut && p->ans.cut == CUT_ERROR) {
			anthropic_send(p, buf, NULL);
			anthropic_stream_error(p);
			return;
		}
		if (cut)
			p->state = PEND_CUT;
		anthropic_send(p, buf, cut ? cut_written : NULL);
		if (cut)
			return;
	} while (p->ans.delay_ms == 0 && p->sent < total);
	if (p->sent < total)
		pending_after(p, p->ans.delay_ms);
	else
		anthropic_stream_end(p);
}

/* After the head is sent: the opening events, then the content. */
static void anthropic_stream_begin(struct pending *p)
{
	struct evbuffer *buf = evbuffer_new();

	if (!buf) {
		tcp_reset(p->conn);
		close_later(p);
		return;
	}
	anthropic_head(p, buf);
	if (p->ans.cut != CUT_NONE && p->ans.cut_after == 0) {
		p->state = PEND_CUT;
		anthropic_send(p, buf, cut_written);
		return;
	}
	anthropic_send(p, buf, NULL);
	anthropic_stream_step(p);
}

/* Delivers the answer once the first-byte delay (if any) is over. */
static void pending_go(struct pending *p)
{
	struct evhttp_request *req = p->req;
	json_t *body;
	int status;

	switch (p->ans.kind) {
	case ANS_JSON:
		body = json_incref(p->ans.body);
		status = p->ans.status;
		pending_free(p);
		send_json(req, status, body);
		json_decref(body);
		break;
	case ANS_STREAM:
		stream_begin(p);
		break;
	case ANS_HANG:
		p->state = PEND_HANG;
		watch_close(p->conn);
		break;
	case ANS_RESET:
		tcp_reset(p->conn);
		close_later(p);
		break;
	case ANS_GARBAGE:
		garbage(p);
		break;
	}
}

static void pending_timer(evutil_socket_t fd, short what, void *arg)
{
	struct pending *p = arg;

	(void)fd;
	(void)what;
	switch (p->state) {
	case PEND_WAIT:
		pending_go(p);
		break;
	case PEND_STREAM:
		stream_step(p);
		break;
	case PEND_CLOSING:
		/* conn_closed frees p (and the request with the connection). */
		evhttp_connection_free(p->conn->evcon);
		break;
	case PEND_HANG:
	case PEND_CUT:
	case PEND_HELD:
		break;
	}
}

/* Opens the gate: every held request goes on (after its first-byte delay, if it has one)
 * from its own timer, so nothing is freed while the connections are walked. */
static json_int_t release_held(struct mock *m)
{
	json_int_t n = 0;

	m->holding = 0;
	for (size_t b = 0; b < CONN_BUCKETS; b++) {
		for (struct conn *c = m->conns[b]; c; c = c->next) {
			struct pending *p = c->pending;

			if (!p || p->state != PEND_HELD)
				continue;
			p->state = PEND_WAIT;
			pending_after(p, p->first_byte_ms);
			m->stats.held--;
			n++;
		}
	}
	return n;
}

/* The sticky behaviour. */

static void behave_clear(struct behave *b)
{
	json_decref(b->spec);
	memset(b, 0, sizeof(*b));
}

/* Reads one optional integer field of a behave body into *out (left alone when the field is
 * absent or null). 0, or -1 with a message naming the field in bad. */
static int behave_int(const json_t *body, const char *key, long min, long max, long *out,
    char *bad, size_t badlen)
{
	json_t *v = json_object_get(body, key);

	if (!v || json_is_null(v))
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
		snprintf(bad, badlen, "%s (want an integer %ld..%ld)", key, min, max);
		return -1;
	}
	*out = (long)json_integer_value(v);
	return 0;
}

/* Parses the body of POST /__mock/behave into b (cleared first; b->set stays 0 for {} or
 * only nulls). 0, or -1 with a message naming the bad field in bad; b is then cleared. */
static int behave_parse(const char *body, size_t len, struct behave *b, char *bad,
    size_t badlen)
{
	static const char *const fields[] = { "fail", "times", "every", "retry_after",
	    "first_byte_delay_ms", "delay_ms" };
	json_error_t err;
	json_t *req = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY,
	    &err);
	json_t *fail, *v;
	const char *key;
	struct plan plan;
	size_t i;
	int rc = -1;

	memset(b, 0, sizeof(*b));
	b->times = b->every = b->retry_after = b->first_byte_ms = b->delay_ms = -1;
	if (!req) {
		snprintf(bad, badlen, "body (not JSON: %s)", err.text);
		return -1;
	}
	if (!json_is_object(req)) {
		snprintf(bad, badlen, "body (want a JSON object)");
		goto done;
	}
	json_object_foreach(req, key, v) {
		for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
			if (strcmp(key, fields[i]) == 0)
				break;
		if (i == sizeof(fields) / sizeof(fields[0])) {
			snprintf(bad, badlen, "field \"%.40s\" (want fail, times, every, retry_after, "
			    "first_byte_delay_ms or delay_ms)", key);
			goto done;
		}
	}
	fail = json_object_get(req, "fail");
	memset(&plan, 0, sizeof(plan));
	if (fail && !json_is_null(fail)
	    && (!json_is_string(fail) || parse_fail(json_string_value(fail), &plan) < 0)) {
		snprintf(bad, badlen, "fail (want a string: " FAIL_VALUES ")");
		goto done;
	}
	b->fail = plan.fail;
	b->status = plan.status;
	if (behave_int(req, "times", 1, MAX_TIMES, &b->times, bad, badlen) < 0
	    || behave_int(req, "every", 1, 1000000, &b->every, bad, badlen) < 0
	    || behave_int(req, "retry_after", 0, MAX_RETRY_AFTER, &b->retry_after, bad,
		badlen) < 0
	    || behave_int(req, "first_byte_delay_ms", 0, MAX_DELAY_MS, &b->first_byte_ms, bad,
		badlen) < 0
	    || behave_int(req, "delay_ms", 0, MAX_DELAY_MS, &b->delay_ms, bad, badlen) < 0)
		goto done;
	/* what the stats show: the fields given, nulls left out */
	b->spec = json_object();
	if (!b->spec) {
		snprintf(bad, badlen, "body (mock upstream out of memory)");
		goto done;
	}
	json_object_foreach(req, key, v) {
		if (!json_is_null(v))
			json_object_set(b->spec, key, v);
	}
	b->set = json_object_size(b->spec) > 0;
	rc = 0;
done:
	json_decref(req);
	if (rc < 0)
		behave_clear(b);
	return rc;
}

/* One non-control request has arrived while the behaviour was set: counts down "times". */
static void behave_used(struct behave *b)
{
	if (b->set && b->times > 0 && --b->times == 0)
		behave_clear(b);
}

/* The behaviour as the stats show it: its fields and "times_left" (null: unlimited), or
 * NULL when none is set. Caller owns the result. */
static json_t *behave_json(const struct behave *b)
{
	json_t *j;

	if (!b->set)
		return NULL;
	j = json_deep_copy(b->spec);
	if (j)
		json_object_set_new(j, "times_left", b->times < 0 ? json_null()
		    : json_integer(b->times));
	return j;
}

/* Request entry points. */

static json_t *stats_json(const struct mock *m)
{
	return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:b,s:o?,s:O?}",
	    "requests", m->stats.requests, "chat", m->stats.chat,
	    "messages", m->stats.messages,
	    "streams_started", m->stats.streams_started,
	    "streams_completed", m->stats.streams_completed,
	    "streams_aborted", m->stats.streams_aborted,
	    "open_connections", m->stats.open_connections,
	    "connections_total", m->stats.connections_total,
	    "faulted", m->stats.faulted,
	    "held", m->stats.held, "holding", m->holding,
	    "behave", behave_json(&m->behave),
	    "last", m->last);
}

/* /__mock/ endpoints: introspection that must not disturb what it reports. */
static void control(struct mock *m, struct evhttp_request *req, const char *path)
{
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	json_t *reply;
	int status = 200;

	if (cmd == EVHTTP_REQ_GET && strcmp(path, MOCK_PREFIX "stats") == 0) {
		reply = stats_json(m);
	} else if (cmd == EVHTTP_REQ_POST && strcmp(path, MOCK_PREFIX "reset") == 0) {
		json_int_t open = m->stats.open_connections;

		release_held(m);
		/* open_connections is a gauge of live sockets, not a counter: keep it. */
		memset(&m->stats, 0, sizeof(m->stats));
		m->stats.open_connections = open;
		json_decref(m->last);
		m->last = NULL;
		behave_clear(&m->behave);
		reply = json_pack("{s:b}", "ok", 1);
	} else if (cmd == EVHTTP_REQ_POST && strcmp(path, MOCK_PREFIX "hold") == 0) {
		m->holding = 1;
		reply = json_pack("{s:b,s:I}", "ok", 1, "released", (json_int_t)0);
	} else if (cmd == EVHTTP_REQ_POST && strcmp(path, MOCK_PREFIX "release") == 0) {
		reply = json_pack("{s:b,s:I}", "ok", 1, "released", release_held(m));
	} else if (cmd == EVHTTP_REQ_POST && strcmp(path, MOCK_PREFIX "behave") == 0) {
		struct behave b;
		char bad[192], msg[224];
		size_t len;
		const char *body = request_body(req, &len);

		if (behave_parse(body, len, &b, bad, sizeof(bad)) == 0) {
			behave_clear(&m->behave);
			m->behave = b;
			reply = json_pack("{s:b}", "ok", 1);
		} else {
			status = 400;
			snprintf(msg, sizeof(msg), "mock upstream: bad behave %s", bad);
			reply = error_json(msg, "invalid_request_error", "mock_bad_header");
		}
	} else {
		status = 404;
		reply = error_json("mock upstream: unknown control endpoint "
		    "(GET /__mock/stats, POST /__mock/reset, POST /__mock/behave, "
		    "POST /__mock/hold, POST /__mock/release)",
		    "invalid_request_error", "unknown_url");
	}
	send_json(req, status, reply);
	json_decref(reply);
}

static const char *kind_name(const struct answer *ans)
{
	switch (ans->kind) {
	case ANS_JSON: return "json";
	case ANS_STREAM: return "stream";
	case ANS_HANG: return "hang";
	case ANS_RESET: return "reset";
	case ANS_GARBAGE: return "garbage";
	}
	return "?";
}

static void on_request(struct evhttp_request *req, void *arg)
{
	struct mock *m = arg;
	const char *path = request_path(req);
	const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req),
	    "Authorization");
	struct plan plan;
	struct answer ans;
	struct conn *conn;
	struct pending *p;
	char num[40];
	int planned;
	int messages = evhttp_request_get_command(req) == EVHTTP_REQ_POST
	    && strcmp(path, MESSAGES_PATH) == 0;

	memset(&ans, 0, sizeof(ans));
	if (auth) {
		unsigned char md[EVP_MAX_MD_SIZE];
		unsigned int mdlen = 0;
		char hex[2 * EVP_MAX_MD_SIZE + 1];

		if (EVP_Digest(auth, strlen(auth), md, &mdlen, EVP_sha256(), NULL)) {
			for (unsigned int i = 0; i < mdlen; i++)
				snprintf(hex + 2 * i, 3, "%02x", md[i]);
			evhttp_add_header(evhttp_request_get_output_headers(req),
			    "X-Mock-Received-Auth-SHA256", hex);
		}
	}
	if (strncmp(path, MOCK_PREFIX, strlen(MOCK_PREFIX)) == 0) {
		control(m, req, path);
		return;
	}
	m->stats.requests++;
	if (evhttp_request_get_command(req) == EVHTTP_REQ_POST && is_chat_path(path))
		m->stats.chat++;
	if (messages) {
		/* Anthropic's API puts a request-id on every answer, errors included */
		m->stats.messages++;
		ans.req_n = ++m->next_id;
		snprintf(num, sizeof(num), "req_mock_%lu", ans.req_n);
		evhttp_add_header(evhttp_request_get_output_headers(req), "request-id", num);
	}
	/* Registered here, not only when an answer is deferred, so open_connections counts
	 * every connection that has carried a request. */
	conn = conn_get(m, evhttp_request_get_connection(req));
	json_decref(m->last);
	m->last = request_json(req);
	m->behave.skip = m->behave.every > 1 && ++m->behave.seen % m->behave.every != 0;
	planned = plan_parse(req, &m->behave, &plan, &ans) == 0;
	behave_used(&m->behave);
	if (!planned && messages) {
		/* the bad-header 400 in Anthropic's shape (its message copied: the body goes) */
		char msg[224];
		const char *was = json_string_value(json_object_get(json_object_get(ans.body,
		    "error"), "message"));

		snprintf(msg, sizeof(msg), "%s", was ? was : "mock upstream: bad header");
		answer_anthropic_error(&ans, 400, "invalid_request_error", msg);
	}
	if (planned) {
		route(m, req, &plan, m->last, &ans);
		if (plan.fail != FAIL_NONE)
			m->stats.faulted++;
		if (plan.fail == FAIL_STATUS && plan.retry_after >= 0) {
			snprintf(num, sizeof(num), "%ld", plan.retry_after);
			evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", num);
		}
	}
	if (planned && plan.fail == FAIL_SLOW && ans.kind == ANS_JSON && ans.status == 200
	    && !is_chat_path(path))
		plan.first_byte_ms += plan.delay_ms < 0 ? SLOW_DELAY_MS : plan.delay_ms;
	if (m->verbose)
		fprintf(stderr, "mock-upstream: %s %s -> %s %d\n",
		    method_name(evhttp_request_get_command(req)), evhttp_request_get_uri(req),
		    kind_name(&ans), ans.status);
	if (ans.kind == ANS_JSON && plan.first_byte_ms == 0 && !m->holding) {
		send_json(req, ans.status, ans.body);
		goto done;
	}
	p = conn ? pending_new(conn, req, &ans) : NULL;
	if (!p) {
		evhttp_send_error(req, 500, "mock-upstream: out of memory");
		goto done;
	}
	if (m->holding) {
		p->state = PEND_HELD;
		p->first_byte_ms = plan.first_byte_ms;
		m->stats.held++;
		watch_close(conn);
	} else if (plan.first_byte_ms > 0) {
		p->state = PEND_WAIT;
		watch_close(conn);
		pending_after(p, plan.first_byte_ms);
	} else {
		pending_go(p);
	}
done:
	answer_clear(&ans);
}

/* Startup and shutdown. */

/* Each benchmark connection is a file descriptor. */
static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* Binds and listens on "HOST:PORT" ("[v6]:PORT" too); prints the "listening" line that tests
 * wait for. Returns the listening fd or -1 with a message on stderr. */
static int listen_on(const char *spec)
{
	char host[256];
	const char *colon = strrchr(spec, ':');
	struct addrinfo hints, *ai = NULL;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char shost[NI_MAXHOST], sport[NI_MAXSERV];
	size_t hl;
	int fd = -1, one = 1, rc;

	if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof(host)) {
		fprintf(stderr, "mock-upstream: --listen wants HOST:PORT, got \"%s\"\n", spec);
		return -1;
	}
	hl = (size_t)(colon - spec);
	if (spec[0] == '[' && spec[hl - 1] == ']') {
		memcpy(host, spec + 1, hl - 2);
		host[hl - 2] = '\0';
	} else {
		memcpy(host, spec, hl);
		host[hl] = '\0';
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
	rc = getaddrinfo(host, colon + 1, &hints, &ai);
	if (rc != 0) {
		fprintf(stderr, "mock-upstream: bad --listen address \"%s\": %s "
		    "(use a numeric host, e.g. 127.0.0.1:8515)\n", spec, gai_strerror(rc));
		return -1;
	}
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0
	    || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0
	    || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0
	    || listen(fd, LISTEN_BACKLOG) < 0
	    || getsockname(fd, (struct sockaddr *)&ss, &sl) < 0
	    || getnameinfo((struct sockaddr *)&ss, sl, shost, sizeof(shost), sport,
		sizeof(sport), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
		fprintf(stderr, "mock-upstream: cannot listen on %s: %s\n", spec, strerror(errno));
		if (fd >= 0)
			close(fd);
		fd = -1;
		goto done;
	}
	if (ss.ss_family == AF_INET6)
		printf("listening [%s]:%s\n", shost, sport);
	else
		printf("listening %s:%s\n", shost, sport);
	fflush(stdout);
done:
	freeaddrinfo(ai);
	return fd;
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	event_base_loopbreak(arg);
}

static void usage(FILE *out)
{
	fprintf(out, "usage: mock-upstream [--listen HOST:PORT] [-v]\n"
	    "  --listen HOST:PORT  address to serve (default " DEFAULT_LISTEN
	    "; port 0 = any free port)\n"
	    "  -v                  log each request to stderr\n");
}

int main(int argc, char **argv)
{
	struct mock m;
	const char *listen_spec = DEFAULT_LISTEN;
	struct event *sigterm = NULL, *sigint = NULL;
	int fd, i, rc = 1;

	memset(&m, 0, sizeof(m));
	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
			listen_spec = argv[++i];
		} else if (strcmp(argv[i], "-v") == 0) {
			m.verbose = 1;
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "mock-upstream: unknown argument \"%s\"\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit();
	m.base = event_base_new();
	m.http = m.base ? evhttp_new(m.base) : NULL;
	if (!m.http) {
		fprintf(stderr, "mock-upstream: cannot create the libevent HTTP server\n");
		goto done;
	}
	evhttp_set_allowed_methods(m.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD
	    | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE
	    | EVHTTP_REQ_PATCH);
	evhttp_set_timeout(m.http, IO_TIMEOUT_S);
	evhttp_set_gencb(m.http, on_request, &m);
	fd = listen_on(listen_spec);
	if (fd < 0)
		goto done;
	if (!evhttp_accept_socket_with_handle(m.http, fd)) {
		fprintf(stderr, "mock-upstream: libevent refused the listening socket\n");
		close(fd);
		goto done;
	}
	sigterm = evsignal_new(m.base, SIGTERM, on_signal, m.base);
	sigint = evsignal_new(m.base, SIGINT, on_signal, m.base);
	if (!sigterm || !sigint || event_add(sigterm, NULL) < 0 || event_add(sigint, NULL) < 0) {
		fprintf(stderr, "mock-upstream: cannot install signal handlers\n");
		goto done;
	}
	if (event_base_dispatch(m.base) < 0) {
		fprintf(stderr, "mock-upstream: event loop failed\n");
		goto done;
	}
	rc = 0;
done:
	/* evhttp_free closes every connection, and conn_closed frees what each was doing. */
	if (m.http)
		evhttp_free(m.http);
	if (sigterm)
		event_free(sigterm);
	if (sigint)
		event_free(sigint);
	json_decref(m.last);
	behave_clear(&m.behave);
	if (m.base)
		event_base_free(m.base);
	libevent_global_shutdown();
	return rc;
}
