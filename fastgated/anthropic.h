/* provider: anthropic -- the OpenAI chat API translated to Anthropic's Messages API and back.
 *
 * A pure codec (no I/O, no clock, no project headers): the request the client sent in
 * OpenAI's shape becomes the body for POST /v1/messages; the upstream's answer, whole or as
 * an SSE stream, becomes what an OpenAI client expects. Every peer gateway has shipped bugs
 * here (tool-call index always 0, stop reasons lost in streams, cache tokens billed twice),
 * so each rule is written down once, below, and tested against the vendor's documented
 * examples (tests/unit/test_anthropic.c, tests/golden/anthropic/).
 *
 * This table belongs in fastgate-routes(5) as well.
 *
 * Request (OpenAI chat.completions -> Anthropic messages)
 *   model                         the upstream's model when the caller gives one, else kept
 *   max_tokens                    max_tokens, else max_completion_tokens, else the caller's
 *                                 default (the model table); a non-negative integer
 *   messages[role=system|developer]  top-level `system`: a string when there is one text,
 *                                 else an array of text blocks in order (string content or
 *                                 text parts; anything else is refused)
 *   messages[role=user]           user message; content string -> a text block; parts:
 *                                 text -> text; image_url data:MT;base64,D -> image with
 *                                 source {type base64, media_type MT, data D}; image_url
 *                                 http(s)://... -> image with source {type url, url}
 *   messages[role=assistant]      assistant message: content (string or text parts) -> text
 *                                 blocks; tool_calls[] -> tool_use {id, name, input} with
 *                                 input = function.arguments parsed (must be a JSON object;
 *                                 "" is {}), else the request is refused
 *   messages[role=tool]           user message with tool_result {tool_use_id: tool_call_id,
 *                                 content: the string, or text blocks from text parts}
 *   consecutive same role         merged into one message with all their blocks, in order
 *                                 (tool results and user text are both role user)
 *   empty text                    left out (Anthropic refuses empty text blocks); a request
 *                                 left with no message is refused
 *   tools[type=function]          {name, description, input_schema: parameters, or an empty
 *                                 object schema when absent}; other tool types are refused
 *   tool_choice                   "auto" -> {type auto}; "required" -> {type any};
 *                                 "none" -> {type none}; {type function, function {name X}}
 *                                 -> {type tool, name X}; dropped when there are no tools
 *   parallel_tool_calls: false    tool_choice.disable_parallel_tool_use: true (tool_choice
 *                                 {type auto} when the client sent none; not with none)
 *   stop                          stop_sequences (a string becomes a one-element array)
 *   temperature, top_p            passed as they are (Anthropic's temperature is 0..1)
 *   n                             1 or absent; n>1 is refused ("n>1 is not supported by
 *                                 anthropic upstreams", the caller answers 400)
 *   stream                        stream: true when the caller says so
 *   user                          metadata.user_id
 *   anything else                 not sent (frequency/presence penalties, logprobs, seed,
 *                                 response_format, stream_options: the codec emits usage
 *                                 itself)
 *   Numbers are written with 15 significant digits (0.7 stays 0.7).
 *
 * Answer (Anthropic message -> OpenAI chat.completion)
 *   id, model                     kept; object "chat.completion"; created from the caller
 *   content[type=text]            concatenated into choices[0].message.content (null when
 *                                 there is no text block)
 *   content[type=thinking]        concatenated into message.reasoning_content
 *   content[type=tool_use]        message.tool_calls[] {id, type function, function {name,
 *                                 arguments: input as compact JSON text}}
 *   other blocks                  left out (redacted_thinking, server tool blocks)
 *   stop_reason                   end_turn, stop_sequence, pause_turn -> stop;
 *                                 max_tokens, model_context_window_exceeded -> length;
 *                                 tool_use -> tool_calls; refusal -> content_filter;
 *                                 null or unknown -> stop
 *   usage                         prompt_tokens = input_tokens + cache_read_input_tokens +
 *                                 cache_creation_input_tokens (Anthropic's input_tokens
 *                                 excludes both); completion_tokens = output_tokens;
 *                                 total_tokens = the sum; prompt_tokens_details.cached_tokens
 *                                 = cache_read_input_tokens
 *   {"type":"error","error":{type,message}}   {"error":{message, type, code: Anthropic's
 *                                 type}}; type is invalid_request_error for
 *                                 invalid_request_error, request_too_large, not_found_error;
 *                                 authentication_error, permission_error and
 *                                 rate_limit_error keep their names; server_error for
 *                                 api_error, overloaded_error and anything else. The HTTP
 *                                 status stays the upstream's (the caller's part).
 *
 * Stream (Anthropic SSE -> OpenAI chat.completion.chunk SSE, "data: JSON\n\n" each)
 *   message_start                 first chunk: delta {role assistant, content ""}; id, model
 *                                 and input/cache usage are taken from it
 *   content_block_start text      nothing (or its text, when it starts with some)
 *   content_block_start thinking  nothing (or its thinking text as reasoning_content)
 *   content_block_start tool_use  delta.tool_calls [{index: K, id, type function,
 *                                 function {name, arguments ""}}], K counting tool calls
 *                                 only (0, 1, 2...), not content blocks
 *   content_block_delta text_delta        delta.content
 *   content_block_delta thinking_delta    delta.reasoning_content
 *   content_block_delta input_json_delta  delta.tool_calls [{index: K, function
 *                                 {arguments: the fragment}}] for that block's call
 *   signature_delta, other deltas, content_block_stop, ping, unknown events   nothing
 *   message_delta                 usage.output_tokens (cumulative: the last one counts; any
 *                                 input/cache counts it carries replace the earlier ones);
 *                                 stop_reason -> a chunk with delta {} and finish_reason
 *                                 (mapped as for the answer)
 *   message_stop                  finish_reason "stop" if none was sent; then, with
 *                                 stream_options.include_usage, a chunk with choices [] and
 *                                 usage; then data: [DONE]
 *   event error                   data: {"error":{...}} (mapped as for the answer), end,
 *                                 no [DONE]
 *   not an Anthropic stream       data: {"error":{type server_error, code
 *                                 invalid_upstream_stream}}, end (data that is not a JSON
 *                                 object with a type, a delta before message_start or for a
 *                                 block never started, an event over 1 MiB)
 *   end without message_stop      anth_stream_finish: data: {"error":{type server_error,
 *                                 code stream_truncated}}, reported as ANTH_TRUNCATED */
#ifndef FG_ANTHROPIC_H
#define FG_ANTHROPIC_H

#include <stdbool.h>
#include <stddef.h>

#include "sseread.h"

/* Results. Negative: nothing usable was produced. */
#define ANTH_OK          0
#define ANTH_INVALID    -1   /* the input is not what it should be; the message says why */
#define ANTH_NOMEM      -2
#define ANTH_UPSTREAM_ERROR 1 /* answer: the upstream answered an error (translated) */
#define ANTH_TRUNCATED   2   /* stream: ended without message_stop (an error event sent) */

/* Largest SSE event (its lines together) the stream translator holds. */
#define ANTH_MAX_EVENT (1024 * 1024)

/* Usage normalised for the audit and billing (DESIGN.md, Providers): OpenAI's meaning,
 * prompt_tokens includes cached reads and cache writes. -1 when unknown. */
struct anth_usage {
	long prompt_tokens;       /* input + cache read + cache write */
	long cached_tokens;       /* cache_read_input_tokens */
	long cache_write_tokens;  /* cache_creation_input_tokens */
	long completion_tokens;   /* output_tokens */
	long reasoning_tokens;    /* Anthropic does not count thinking apart: -1 */
	bool found;
};

struct anth_req_opts {
	const char *model;        /* the upstream's model name, or NULL to keep the client's */
	long default_max_tokens;  /* when the client sent neither max_tokens nor
	                           * max_completion_tokens; <= 0 refuses such requests */
	bool stream;
};

/* The client's OpenAI chat request body[0..len) as an Anthropic Messages request. On
 * ANTH_OK *out is a malloc'd, NUL-terminated JSON text the caller frees (*out_len bytes).
 * On ANTH_INVALID err holds a message for the client (the caller answers 400); on either
 * error *out is NULL. err may be NULL when errlen is 0. */
int anth_request(const struct anth_req_opts *o, const char *body, size_t len, char **out,
                 size_t *out_len, char *err, size_t errlen);

/* A whole Anthropic answer body[0..len) as an OpenAI one. created is the chunk's Unix time
 * (the codec reads no clock). ANTH_OK: *out is a chat.completion and *u its usage.
 * ANTH_UPSTREAM_ERROR: *out is {"error":{...}} (the caller keeps the upstream's status).
 * ANTH_INVALID: *out is NULL and err says what was wrong (the caller answers 502).
 * *out is malloc'd and NUL-terminated; the caller frees it. */
int anth_answer(const char *body, size_t len, long created, char **out, size_t *out_len,
                struct anth_usage *u, char *err, size_t errlen);

/* The stream translator: fed the upstream's bytes in any pieces, it appends OpenAI SSE
 * events to the caller's growing buffer. Its output does not depend on where the pieces
 * were cut. Once it has ended (ANTH_STREAM_ENDED), further bytes are ignored. */
struct anth_block;
struct anth_stream {
	bool include_usage;
	long created;
	struct sse_reader in;     /* the upstream's events, read in pieces */
	/* the message */
	char *id, *model;
	bool started, finished, ended, failed, stopped;
	struct anth_block *blocks; size_t n_blocks;
	int n_tools;
	const char *finish_reason;
	long input, cache_read, cache_write, output;
	struct anth_usage usage;  /* kept current as events arrive */
};

#define ANTH_STREAM_ENDED 1

void anth_stream_init(struct anth_stream *s, bool include_usage, long created);
void anth_stream_free(struct anth_stream *s);
/* Returns 0, ANTH_STREAM_ENDED once [DONE] or an error event has been written (now or
 * before), or ANTH_NOMEM. *out (malloc'd, *out_len used of *out_cap) is the caller's. */
int anth_stream_feed(struct anth_stream *s, const char *data, size_t len, char **out,
                     size_t *out_len, size_t *out_cap);
/* The upstream is done. ANTH_OK when the stream had ended properly ([DONE] or an upstream
 * error event written); ANTH_TRUNCATED when it had not: an error event is written then, so
 * the client's stream is always terminated; or ANTH_NOMEM. */
int anth_stream_finish(struct anth_stream *s, char **out, size_t *out_len, size_t *out_cap);

#endif
