/* Token usage and model names for the audit trail.
 *
 * Non-stream answers carry `usage` in their JSON body. Streams carry it in a final chunk
 * (`"choices": []` plus `usage`) when the request asked for
 * `stream_options.include_usage`; when the client did not ask, the gateway asks for it and
 * removes that chunk again, so the client sees exactly the stream it asked for.
 *
 * The SSE scanner below splits a relayed byte stream into events without copying the
 * bytes it forwards unchanged; only `data:` lines that mention "usage" are parsed. */
#ifndef FG_USAGE_H
#define FG_USAGE_H

#include <stdbool.h>
#include <stddef.h>

/* Normalised as DESIGN.md has it (Providers), every count -1 when unknown. From an OpenAI
 * `usage` object: prompt_tokens and completion_tokens, prompt_tokens_details.cached_tokens
 * and completion_tokens_details.reasoning_tokens; cache_write_tokens has no OpenAI field
 * and stays -1 (a provider translator fills it). Each usage object read replaces all five:
 * a count the last one lacks is unknown. */
struct usage {
	long prompt_tokens;       /* OpenAI's meaning: cached tokens included */
	long completion_tokens;   /* reasoning tokens included */
	long cached_tokens;       /* prompt tokens read from the provider's cache */
	long cache_write_tokens;  /* prompt tokens written to it */
	long reasoning_tokens;    /* completion tokens spent reasoning */
	bool found;
};

/* Every count unknown, found false. */
void usage_reset(struct usage *u);

/* Usage from a whole JSON answer. Returns true when found. */
bool usage_from_json(const char *body, size_t len, struct usage *u);

/* Incremental SSE event splitter. */
struct sse_scan {
	char *buf;           /* bytes of the event being assembled */
	size_t len, cap;
	bool strip_usage;    /* drop usage-only events from the output */
	unsigned long events; /* complete events passed on: a stream cut short is billed by
	                       * them (one token per chunk, as OpenAI's streams and vLLM's send) */
	struct usage usage;
};

void sse_scan_init(struct sse_scan *s, bool strip_usage);
void sse_scan_free(struct sse_scan *s);
/* Feed bytes as they arrive. Complete events are appended to *out (a malloc'd buffer
 * grown as needed, *out_len its length) unless they are stripped; with strip_usage off,
 * the output is exactly the input. Returns -1 only when out of memory. */
int sse_scan_feed(struct sse_scan *s, const char *data, size_t len, char **out, size_t *out_len,
                  size_t *out_cap);
/* At the end of the stream: whatever incomplete event is left is passed on as is. */
int sse_scan_finish(struct sse_scan *s, char **out, size_t *out_len, size_t *out_cap);

/* A stream's leading events, held until the first that carries content (so that an
 * upstream failing before it can be retried without the client seeing anything): looks at
 * the complete events of buf from *from on. True when one of them carries content (an
 * OpenAI chunk with a non-empty delta or a finish reason, usage, an error, [DONE],
 * Anthropic's deltas, anything not understood); otherwise false with *from moved past
 * every complete event, all of them content-free (comments, pings, role-only chunks,
 * message_start...). */
bool sse_first_content(const char *buf, size_t len, size_t *from);

#endif
