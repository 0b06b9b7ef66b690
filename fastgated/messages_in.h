/* Anthropic's Messages API in front, OpenAI chat completions behind: the codec for a client
 * that sends POST /v1/messages to a route whose upstream speaks OpenAI (issue 18, item 3,
 * the other direction of anthropic.h).
 *
 * A pure codec (no I/O, no clock): the client's Messages request becomes an OpenAI chat
 * request; the upstream's answer, whole or as an SSE stream, becomes what an Anthropic
 * client expects. Each rule is written down once, below, and tested
 * (tests/unit/test_messages_in.c, tests/golden/messages_in/).
 *
 * Request (Anthropic messages -> OpenAI chat.completions)
 *   model                         the upstream's model when the caller gives one, else kept
 *   max_tokens                    max_tokens (required, a non-negative integer, as
 *                                 Anthropic requires it)
 *   system                        a first message {role system}: a string stays one; text
 *                                 blocks -> string content when there is one, else text
 *                                 parts in order; empty: no system message
 *   messages[role=user]           content string -> {role user, content: the string};
 *                                 blocks: tool_result blocks first, each its own
 *                                 {role tool, tool_call_id: tool_use_id, content: a string
 *                                 (text blocks joined by "\n")}, in order; then the other
 *                                 blocks as one user message: text -> text part, image
 *                                 base64 {media_type MT, data D} -> image_url
 *                                 data:MT;base64,D, image url -> image_url; a single text
 *                                 becomes string content; no such block: no user message
 *   messages[role=assistant]      text blocks -> content (string for one, text parts for
 *                                 more, null when none); tool_use {id, name, input} ->
 *                                 tool_calls[] {id, type function, function {name,
 *                                 arguments: input as compact JSON}}; thinking and
 *                                 redacted_thinking dropped; nothing left: no message
 *   empty text blocks             left out; a request left with no user or assistant
 *                                 message is refused
 *   other blocks, roles, shapes   refused (MSGIN_INVALID, the message says which; the
 *                                 caller answers 400)
 *   tools[]                       {type function, function {name, description,
 *                                 parameters: input_schema}}; only client tools (no type
 *                                 or type "custom"); server tools are refused
 *   tool_choice                   {type auto} -> "auto"; any -> "required"; none -> "none";
 *                                 {type tool, name X} -> {type function, function {name
 *                                 X}}; dropped when there are no tools;
 *                                 disable_parallel_tool_use: true -> parallel_tool_calls:
 *                                 false (with tools, and not with none)
 *   stop_sequences                stop (when not empty)
 *   temperature, top_p            passed as they are
 *   metadata.user_id              user
 *   stream: true                  stream: true and stream_options {include_usage: true}
 *                                 (message_delta needs the usage chunk)
 *   anything else                 not sent (top_k, thinking, service_tier, cache_control)
 *
 * Answer (OpenAI chat.completion -> Anthropic message)
 *   id, model                     kept; type "message", role "assistant"
 *   message.content               one text block when not empty (message.refusal stands in
 *                                 when there is no content)
 *   message.tool_calls[]          tool_use {id, name, input: arguments parsed; "" is {}};
 *                                 arguments that are not a JSON object: MSGIN_INVALID
 *                                 (the caller answers 502)
 *   finish_reason                 stop -> end_turn; length -> max_tokens; tool_calls,
 *                                 function_call -> tool_use; content_filter -> refusal;
 *                                 null or unknown -> end_turn; stop_sequence: null
 *   usage                         input_tokens = prompt_tokens - cached_tokens;
 *                                 output_tokens = completion_tokens;
 *                                 cache_read_input_tokens = prompt_tokens_details.
 *                                 cached_tokens (0 when absent); cache_creation 0
 *   {"error":{message,type,code}} {"type":"error","error":{type, message}}: type from
 *                                 OpenAI's type and code: invalid_request_error;
 *                                 authentication_error (also code invalid_api_key);
 *                                 permission_error; not_found_error (also code
 *                                 model_not_found); rate_limit_error (also
 *                                 insufficient_quota, rate_limit_exceeded);
 *                                 overloaded_error (type or code overloaded*,
 *                                 server_overloaded); api_error for anything else. The
 *                                 HTTP status stays the upstream's (the caller's part).
 *
 * Stream (OpenAI chat.completion.chunk SSE -> Anthropic SSE, "event: T\ndata: JSON\n\n")
 *   first chunk                   message_start {message {id, type message, role
 *                                 assistant, model, content [], stop_reason null,
 *                                 stop_sequence null, usage {input_tokens 0,
 *                                 output_tokens 0}}}, then ping
 *   delta.content (or .refusal)   a text block: content_block_start {type text, text ""}
 *                                 the first time, then content_block_delta text_delta
 *   delta.tool_calls[]            each OpenAI index is its own tool_use block, in order
 *                                 of appearance. Anthropic's blocks are sequential while
 *                                 OpenAI may interleave the calls' fragments, so the first
 *                                 call streams live (content_block_start tool_use with
 *                                 input {}, then input_json_delta per fragment) and later
 *                                 ones are held until finish_reason, each then sent as
 *                                 start, one input_json_delta with all its arguments, stop
 *                                 (held arguments: at most MSGIN_MAX_EVENT bytes in all)
 *   text after a tool call        held like a later call's arguments, sent as its own
 *                                 text block after the tool blocks
 *   finish_reason                 every open block is closed (content_block_stop) and
 *                                 the held ones sent; the stop reason is kept (mapped as
 *                                 for the answer)
 *   usage (a chunk's, usually the last one with choices [])   kept; once a finish_reason
 *                                 is known: message_delta {delta {stop_reason,
 *                                 stop_sequence null}, usage {input_tokens,
 *                                 output_tokens, cache_read_input_tokens,
 *                                 cache_creation_input_tokens 0}} then message_stop: the
 *                                 end. message_delta waits for the usage.
 *   data: [DONE]                  the end as above when it has not come yet (blocks
 *                                 closed, stop_reason end_turn when none was given, usage
 *                                 as known: zeros when none came)
 *   data: {"error":...}           event: error {"type":"error","error":{...}} (mapped as
 *                                 for the answer), the end
 *   not an OpenAI stream          event: error, type api_error, message saying why (data
 *                                 that is not JSON or not an object, an event over
 *                                 MSGIN_MAX_EVENT, a tool call without an index), the end
 *   end before the end            msgin_stream_finish: event: error (api_error, "the
 *                                 upstream's stream ended early"), MSGIN_TRUNCATED */
#ifndef FG_MESSAGES_IN_H
#define FG_MESSAGES_IN_H

#include <stdbool.h>
#include <stddef.h>

#include "anthropic.h"   /* struct anth_usage: the audit's normalised usage */

#define MSGIN_OK            0
#define MSGIN_INVALID      -1   /* the input is not what it should be; the message says why */
#define MSGIN_NOMEM        -2
#define MSGIN_UPSTREAM_ERROR 1  /* answer: the upstream answered an error (translated) */
#define MSGIN_TRUNCATED     2   /* stream: ended early (an error event sent) */
#define MSGIN_STREAM_ENDED  1

/* Largest SSE event the stream translator holds, and the most held tool/text bytes. */
#define MSGIN_MAX_EVENT (1024 * 1024)

struct msgin_req_opts {
	const char *model;        /* the upstream's model name, or NULL to keep the client's */
};

/* The client's Anthropic Messages request body[0..len) as an OpenAI chat request. On
 * MSGIN_OK *out is malloc'd JSON (*out_len bytes) the caller frees and *stream says whether
 * the client asked for a stream. On MSGIN_INVALID err holds a message for the client (the
 * caller answers 400, type invalid_request_error); on any error *out is NULL. */
int msgin_request(const struct msgin_req_opts *o, const char *body, size_t len, char **out,
                  size_t *out_len, bool *stream, char *err, size_t errlen);

/* A whole OpenAI answer body[0..len) as an Anthropic one. MSGIN_OK: *out is a message and
 * *u its usage (anth_usage: prompt_tokens includes the cached ones). MSGIN_UPSTREAM_ERROR:
 * *out is {"type":"error",...} (the caller keeps the upstream's status). MSGIN_INVALID:
 * *out is NULL, err says what was wrong (the caller answers 502). */
int msgin_answer(const char *body, size_t len, char **out, size_t *out_len,
                 struct anth_usage *u, char *err, size_t errlen);

struct msgin_tool;
struct msgin_stream {
	struct sse_reader in;     /* the upstream's events, read in pieces */
	/* the message */
	bool started, finished, ended, failed, stopped;
	int next_block;           /* the next Anthropic content block index */
	int open_block;           /* the open block, -1 when none */
	bool text_open;           /* the open block is text */
	int live_tool;            /* OpenAI index of the tool call streaming live, -1 none */
	struct msgin_tool *tools; size_t n_tools;
	char *late_text; size_t late_len;   /* text after a tool call, held */
	size_t held;              /* bytes held in tools' arguments and late_text */
	const char *stop_reason;
	bool have_usage;
	long prompt, cached, completion, reasoning;
	struct anth_usage usage;  /* kept current as chunks arrive */
};

void msgin_stream_init(struct msgin_stream *s);
void msgin_stream_free(struct msgin_stream *s);
/* Appends Anthropic SSE events to *out (malloc'd, *out_len used of *out_cap, the caller's).
 * Returns 0, MSGIN_STREAM_ENDED once the stream has ended (message_stop or an error event
 * written, now or before; later bytes are ignored), or MSGIN_NOMEM. The output does not
 * depend on where the pieces were cut. */
int msgin_stream_feed(struct msgin_stream *s, const char *data, size_t len, char **out,
                      size_t *out_len, size_t *out_cap);
/* The upstream is done. MSGIN_OK when the stream had ended; MSGIN_TRUNCATED when not (an
 * error event is written, so the client's stream is always terminated); or MSGIN_NOMEM. */
int msgin_stream_finish(struct msgin_stream *s, char **out, size_t *out_len, size_t *out_cap);

#endif
