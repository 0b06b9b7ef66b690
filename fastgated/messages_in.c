/* Anthropic Messages in front of an OpenAI upstream: the codec. The mapping is the table in
 * messages_in.h; this file follows it in the same order (request, answer, stream). */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "messages_in.h"

#define DUMP_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(15))
#define MAX_TOKENS_COUNT (1LL << 48)
#define MAX_TOOLS 1024   /* tool calls a stream may carry */

static void seterr(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static int set_new(json_t *obj, const char *key, json_t *value)
{
	return value && json_object_set_new(obj, key, value) == 0 ? 0 : -1;
}

static int append_new(json_t *arr, json_t *value)
{
	return value && json_array_append_new(arr, value) == 0 ? 0 : -1;
}

static const char *str_of(const json_t *obj, const char *key, size_t *len)
{
	json_t *v = json_object_get(obj, key);

	if (!json_is_string(v))
		return NULL;
	if (len)
		*len = json_string_length(v);
	return json_string_value(v);
}

static bool grow_cat(char **buf, size_t *len, const char *s, size_t n)
{
	char *p = realloc(*buf, *len + n + 1);

	if (!p)
		return false;
	memcpy(p + *len, s, n);
	*len += n;
	p[*len] = '\0';
	*buf = p;
	return true;
}

/* ---- request ---------------------------------------------------------------------- */

struct req {
	char *err; size_t errlen;
	json_t *messages;     /* the OpenAI messages being built */
	int rc;
};

static int req_fail(struct req *r, int rc)
{
	if (r->rc == 0)
		r->rc = rc;
	return -1;
}

#define INVALID(r, ...) (seterr((r)->err, (r)->errlen, __VA_ARGS__), req_fail((r), MSGIN_INVALID))
#define NOMEM(r) (seterr((r)->err, (r)->errlen, "out of memory"), req_fail((r), MSGIN_NOMEM))

static json_t *text_part(const char *s, size_t n)
{
	return json_pack("{s:s,s:s%}", "type", "text", "text", s, n);
}

/* parts (text parts only, or text and image parts) as content: one text part is its
 * string, more are the array. */
static json_t *content_of(json_t *parts)
{
	json_t *p0 = json_array_get(parts, 0);

	if (json_array_size(parts) == 1 && strcmp(str_of(p0, "type", NULL), "text") == 0)
		return json_incref(json_object_get(p0, "text"));
	return json_incref(parts);
}

static int add_msg(struct req *r, const char *role, json_t *content)
{
	json_t *m;

	if (!content)
		return NOMEM(r);
	m = json_pack("{s:s,s:o}", "role", role, "content", content);
	return append_new(r->messages, m) < 0 ? NOMEM(r) : 0;
}

static int add_system(struct req *r, const json_t *sys)
{
	json_t *parts, *b;
	size_t i;
	int rc = 0;

	if (!sys || json_is_null(sys))
		return 0;
	if (json_is_string(sys))
		return json_string_length(sys) ? add_msg(r, "system", json_incref((json_t *)sys)) : 0;
	if (!json_is_array(sys))
		return INVALID(r, "system must be a string or an array of text blocks");
	if (!(parts = json_array()))
		return NOMEM(r);
	json_array_foreach(sys, i, b) {
		const char *type = str_of(b, "type", NULL), *text = str_of(b, "text", NULL);
		size_t n = json_string_length(json_object_get(b, "text"));

		if (!type || strcmp(type, "text") != 0 || !text) {
			rc = INVALID(r, "system[%zu]: only text blocks are supported", i);
			break;
		}
		if (n && append_new(parts, text_part(text, n)) < 0) {
			rc = NOMEM(r);
			break;
		}
	}
	if (rc == 0 && json_array_size(parts))
		rc = add_msg(r, "system", content_of(parts));
	json_decref(parts);
	return rc;
}

/* An image block as an image_url part. */
static json_t *image_part(struct req *r, const json_t *b, const char *where, size_t i)
{
	json_t *src = json_object_get(b, "source");
	const char *type = str_of(src, "type", NULL);

	if (type && strcmp(type, "base64") == 0) {
		const char *mt = str_of(src, "media_type", NULL), *data = str_of(src, "data", NULL);
		char *url;
		json_t *p;

		if (!mt || !data || !*mt || !*data || strpbrk(mt, ";,")) {
			INVALID(r, "%s.content[%zu].source needs a media_type and base64 data", where, i);
			return NULL;
		}
		if (asprintf(&url, "data:%s;base64,%s", mt, data) < 0) {
			NOMEM(r);
			return NULL;
		}
		p = json_pack("{s:s,s:{s:s}}", "type", "image_url", "image_url", "url", url);
		free(url);
		if (!p)
			NOMEM(r);
		return p;
	}
	if (type && strcmp(type, "url") == 0 && str_of(src, "url", NULL)) {
		json_t *p = json_pack("{s:s,s:{s:O}}", "type", "image_url", "image_url", "url",
		                      json_object_get(src, "url"));

		if (!p)
			NOMEM(r);
		return p;
	}
	INVALID(r, "%s.content[%zu]: an image source must be base64 or url", where, i);
	return NULL;
}

static int add_tool_result(struct req *r, const json_t *b, const char *where, size_t i)
{
	json_t *id = json_object_get(b, "tool_use_id"), *c = json_object_get(b, "content"), *x;
	char *text = NULL;
	size_t len = 0, k;
	int rc;

	if (!json_is_string(id))
		return INVALID(r, "%s.content[%zu].tool_use_id must be a string", where, i);
	if (json_is_array(c)) {
		if (!(text = strdup("")))
			return NOMEM(r);
		json_array_foreach(c, k, x) {
			const char *type = str_of(x, "type", NULL), *t = str_of(x, "text", NULL);

			if (!type || strcmp(type, "text") != 0 || !t) {
				free(text);
				return INVALID(r, "%s.content[%zu].content[%zu]: only text blocks are "
				               "supported in a tool_result for this upstream", where, i, k);
			}
			if ((len && !grow_cat(&text, &len, "\n", 1)) ||
			    !grow_cat(&text, &len, t, json_string_length(json_object_get(x, "text")))) {
				free(text);
				return NOMEM(r);
			}
		}
	} else if (c && !json_is_null(c) && !json_is_string(c)) {
		return INVALID(r, "%s.content[%zu].content must be a string or text blocks", where, i);
	}
	x = json_pack("{s:s,s:O,s:s%}", "role", "tool", "tool_call_id", id, "content",
	              text ? text : json_is_string(c) ? json_string_value(c) : "",
	              text ? len : json_is_string(c) ? json_string_length(c) : 0);
	free(text);
	rc = append_new(r->messages, x) < 0 ? NOMEM(r) : 0;
	return rc;
}

static int add_user(struct req *r, const json_t *content, const char *where)
{
	json_t *parts, *b;
	size_t i;
	int rc = 0;

	if (json_is_string(content))
		return add_msg(r, "user", json_incref((json_t *)content));
	if (!json_is_array(content))
		return INVALID(r, "%s.content must be a string or an array of blocks", where);
	if (!(parts = json_array()))
		return NOMEM(r);
	json_array_foreach(content, i, b) {
		const char *type = str_of(b, "type", NULL);

		if (type && strcmp(type, "text") == 0 && str_of(b, "text", NULL)) {
			size_t n = json_string_length(json_object_get(b, "text"));

			if (n && append_new(parts, text_part(str_of(b, "text", NULL), n)) < 0)
				rc = NOMEM(r);
		} else if (type && strcmp(type, "image") == 0) {
			json_t *p = image_part(r, b, where, i);

			if (!p || append_new(parts, p) < 0)
				rc = r->rc ? -1 : NOMEM(r);
		} else if (type && strcmp(type, "tool_result") == 0) {
			rc = add_tool_result(r, b, where, i);
		} else {
			rc = INVALID(r, "%s.content[%zu]: only text, image and tool_result blocks are "
			             "supported in a user message for this upstream", where, i);
		}
		if (rc < 0)
			break;
	}
	if (rc == 0 && json_array_size(parts))
		rc = add_msg(r, "user", content_of(parts));
	json_decref(parts);
	return rc;
}

static int add_assistant(struct req *r, const json_t *content, const char *where)
{
	json_t *parts, *calls, *b, *m = NULL;
	size_t i;
	int rc = 0;

	if (json_is_string(content))
		return json_string_length(content) ?
		       add_msg(r, "assistant", json_incref((json_t *)content)) : 0;
	if (!json_is_array(content))
		return INVALID(r, "%s.content must be a string or an array of blocks", where);
	parts = json_array();
	calls = json_array();
	if (!parts || !calls) {
		rc = NOMEM(r);
		goto done;
	}
	json_array_foreach(content, i, b) {
		const char *type = str_of(b, "type", NULL);

		if (type && strcmp(type, "text") == 0 && str_of(b, "text", NULL)) {
			size_t n = json_string_length(json_object_get(b, "text"));

			if (n && append_new(parts, text_part(str_of(b, "text", NULL), n)) < 0)
				rc = NOMEM(r);
		} else if (type && strcmp(type, "tool_use") == 0) {
			json_t *input = json_object_get(b, "input");
			char *args;

			if (!str_of(b, "id", NULL) || !str_of(b, "name", NULL) || !json_is_object(input)) {
				rc = INVALID(r, "%s.content[%zu]: a tool_use block needs an id, a name and "
				             "an object input", where, i);
				break;
			}
			if (!(args = json_dumps(input, DUMP_FLAGS))) {
				rc = NOMEM(r);
				break;
			}
			if (append_new(calls, json_pack("{s:O,s:s,s:{s:O,s:s}}", "id",
			                                json_object_get(b, "id"), "type", "function",
			                                "function", "name", json_object_get(b, "name"),
			                                "arguments", args)) < 0)
				rc = NOMEM(r);
			free(args);
		} else if (type && (strcmp(type, "thinking") == 0 ||
		                    strcmp(type, "redacted_thinking") == 0)) {
			continue;   /* the upstream cannot check Anthropic's signatures */
		} else {
			rc = INVALID(r, "%s.content[%zu]: only text, tool_use and thinking blocks are "
			             "supported in an assistant message for this upstream", where, i);
		}
		if (rc < 0)
			break;
	}
	if (rc < 0 || (json_array_size(parts) == 0 && json_array_size(calls) == 0))
		goto done;
	m = json_pack("{s:s,s:o}", "role", "assistant", "content",
	              json_array_size(parts) ? content_of(parts) : json_null());
	if (!m || (json_array_size(calls) && set_new(m, "tool_calls", json_incref(calls)) < 0) ||
	    append_new(r->messages, json_incref(m)) < 0)
		rc = NOMEM(r);
done:
	json_decref(m);
	json_decref(parts);
	json_decref(calls);
	return rc;
}

static int add_tools(struct req *r, json_t *out, const json_t *tools)
{
	json_t *list, *t;
	size_t i;

	if (!tools || json_is_null(tools))
		return 0;
	if (!json_is_array(tools))
		return INVALID(r, "tools must be an array");
	if (json_array_size(tools) == 0)
		return 0;
	list = json_array();
	if (set_new(out, "tools", list) < 0)
		return NOMEM(r);
	json_array_foreach(tools, i, t) {
		const char *type = str_of(t, "type", NULL);
		json_t *schema = json_object_get(t, "input_schema"), *d = json_object_get(t, "description");
		json_t *fn;

		if (!json_is_object(t) || (json_object_get(t, "type") && (!type || strcmp(type, "custom") != 0)))
			return INVALID(r, "tools[%zu]: only client tools (name, input_schema) are "
			               "supported by this upstream", i);
		if (!str_of(t, "name", NULL) || !json_is_object(schema))
			return INVALID(r, "tools[%zu] needs a name and an input_schema object", i);
		fn = json_pack("{s:O,s:O}", "name", json_object_get(t, "name"), "parameters", schema);
		if (!fn || (json_is_string(d) && set_new(fn, "description", json_incref(d)) < 0) ||
		    append_new(list, json_pack("{s:s,s:o}", "type", "function", "function", fn)) < 0)
			return NOMEM(r);
	}
	return 0;
}

static int add_tool_choice(struct req *r, json_t *out, const json_t *tc)
{
	const char *type = str_of(tc, "type", NULL);
	json_t *c, *dp;

	if (!tc || json_is_null(tc))
		return 0;
	if (!type)
		return INVALID(r, "tool_choice must be an object with a type");
	dp = json_object_get(tc, "disable_parallel_tool_use");
	if (dp && !json_is_boolean(dp))
		return INVALID(r, "tool_choice.disable_parallel_tool_use must be a boolean");
	if (strcmp(type, "auto") == 0)
		c = json_string("auto");
	else if (strcmp(type, "any") == 0)
		c = json_string("required");
	else if (strcmp(type, "none") == 0)
		c = json_string("none");
	else if (strcmp(type, "tool") == 0 && str_of(tc, "name", NULL))
		c = json_pack("{s:s,s:{s:O}}", "type", "function", "function", "name",
		              json_object_get(tc, "name"));
	else
		return INVALID(r, "tool_choice.type must be auto, any, none or tool (with a name)");
	if (!json_object_get(out, "tools")) {   /* OpenAI refuses a choice among no tools */
		json_decref(c);
		return 0;
	}
	if (set_new(out, "tool_choice", c) < 0)
		return NOMEM(r);
	if (json_is_true(dp) && strcmp(type, "none") != 0 &&
	    set_new(out, "parallel_tool_calls", json_false()) < 0)
		return NOMEM(r);
	return 0;
}

static int add_sampling(struct req *r, json_t *out, const json_t *in)
{
	static const char *const pass[] = { "temperature", "top_p" };
	json_t *stop = json_object_get(in, "stop_sequences"), *md = json_object_get(in, "metadata");
	json_t *mt = json_object_get(in, "max_tokens"), *s, *user;
	size_t i;

	if (!json_is_integer(mt) || json_integer_value(mt) < 0)
		return INVALID(r, "max_tokens is required and must be a non-negative integer");
	if (set_new(out, "max_tokens", json_incref(mt)) < 0)
		return NOMEM(r);
	if (json_is_array(stop)) {
		json_array_foreach(stop, i, s)
			if (!json_is_string(s))
				return INVALID(r, "stop_sequences[%zu] must be a string", i);
		if (json_array_size(stop) && set_new(out, "stop", json_incref(stop)) < 0)
			return NOMEM(r);
	} else if (stop && !json_is_null(stop)) {
		return INVALID(r, "stop_sequences must be an array of strings");
	}
	for (i = 0; i < sizeof(pass) / sizeof(pass[0]); i++) {
		json_t *v = json_object_get(in, pass[i]);

		if (!v || json_is_null(v))
			continue;
		if (!json_is_number(v))
			return INVALID(r, "%s must be a number", pass[i]);
		if (set_new(out, pass[i], json_incref(v)) < 0)
			return NOMEM(r);
	}
	if (md && !json_is_null(md) && !json_is_object(md))
		return INVALID(r, "metadata must be an object");
	user = json_object_get(md, "user_id");
	if (json_is_string(user) && json_string_length(user) &&
	    set_new(out, "user", json_incref(user)) < 0)
		return NOMEM(r);
	return 0;
}

int msgin_request(const struct msgin_req_opts *o, const char *body, size_t len, char **out,
                  size_t *out_len, bool *stream, char *err, size_t errlen)
{
	struct req r = { .err = err, .errlen = errlen };
	json_t *in, *res = NULL, *msgs, *m, *st;
	size_t i;

	*out = NULL;
	*out_len = 0;
	*stream = false;
	seterr(err, errlen, "%s", "");
	in = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
	if (!json_is_object(in)) {
		INVALID(&r, "the request body must be a JSON object");
		goto done;
	}
	msgs = json_object_get(in, "messages");
	if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
		INVALID(&r, "messages must be a non-empty array");
		goto done;
	}
	if (!o->model && !json_is_string(json_object_get(in, "model"))) {
		INVALID(&r, "model must be a string");
		goto done;
	}
	st = json_object_get(in, "stream");
	if (st && !json_is_boolean(st) && !json_is_null(st)) {
		INVALID(&r, "stream must be a boolean");
		goto done;
	}
	r.messages = json_array();
	res = json_object();
	if (!r.messages || !res || set_new(res, "model", o->model ? json_string(o->model)
	                                   : json_incref(json_object_get(in, "model"))) < 0) {
		NOMEM(&r);
		goto done;
	}
	if (add_system(&r, json_object_get(in, "system")) < 0)
		goto done;
	json_array_foreach(msgs, i, m) {
		char where[48];
		const char *role = str_of(m, "role", NULL);
		json_t *content = json_object_get(m, "content");

		snprintf(where, sizeof(where), "messages[%zu]", i);
		if (!json_is_object(m) || !role) {
			INVALID(&r, "%s must be an object with a role", where);
			goto done;
		}
		if (strcmp(role, "user") == 0) {
			if (add_user(&r, content, where) < 0)
				goto done;
		} else if (strcmp(role, "assistant") == 0) {
			if (add_assistant(&r, content, where) < 0)
				goto done;
		} else {
			INVALID(&r, "%s: role must be user or assistant", where);
			goto done;
		}
	}
	for (i = 0; i < json_array_size(r.messages); i++)
		if (strcmp(str_of(json_array_get(r.messages, i), "role", NULL), "system") != 0)
			break;
	if (i == json_array_size(r.messages)) {
		INVALID(&r, "messages: no user or assistant message with content");
		goto done;
	}
	if (set_new(res, "messages", json_incref(r.messages)) < 0) {
		NOMEM(&r);
		goto done;
	}
	if (add_sampling(&r, res, in) < 0 || add_tools(&r, res, json_object_get(in, "tools")) < 0 ||
	    add_tool_choice(&r, res, json_object_get(in, "tool_choice")) < 0)
		goto done;
	if (json_is_true(st)) {
		*stream = true;
		if (set_new(res, "stream", json_true()) < 0 ||
		    set_new(res, "stream_options", json_pack("{s:b}", "include_usage", 1)) < 0) {
			NOMEM(&r);
			goto done;
		}
	}
	*out = json_dumps(res, DUMP_FLAGS);
	if (!*out)
		NOMEM(&r);
	else
		*out_len = strlen(*out);
done:
	if (r.rc)
		*stream = false;
	json_decref(in);
	json_decref(res);
	json_decref(r.messages);
	return r.rc;
}

/* ---- answer ----------------------------------------------------------------------- */

static long tok(const json_t *obj, const char *key, bool *seen)
{
	json_t *v = json_object_get(obj, key);

	if (!json_is_integer(v))
		return 0;
	if (seen)
		*seen = true;
	if (json_integer_value(v) < 0 || json_integer_value(v) > MAX_TOKENS_COUNT)
		return 0;
	return (long)json_integer_value(v);
}

static void usage_unknown(struct anth_usage *u)
{
	u->prompt_tokens = u->cached_tokens = u->cache_write_tokens = -1;
	u->completion_tokens = u->reasoning_tokens = -1;
	u->found = false;
}

/* OpenAI's usage object into the audit's struct; false when there is none. */
static bool usage_of(const json_t *usage, long *prompt, long *cached, long *completion,
                     long *reasoning)
{
	bool seen = false, rseen = false;

	if (!json_is_object(usage))
		return false;
	*prompt = tok(usage, "prompt_tokens", &seen);
	*completion = tok(usage, "completion_tokens", &seen);
	*cached = tok(json_object_get(usage, "prompt_tokens_details"), "cached_tokens", NULL);
	if (*cached > *prompt)
		*cached = *prompt;
	*reasoning = tok(json_object_get(usage, "completion_tokens_details"), "reasoning_tokens",
	                 &rseen);
	if (!rseen)
		*reasoning = -1;
	return seen;
}

static void usage_set(struct anth_usage *u, long prompt, long cached, long completion,
                      long reasoning)
{
	u->prompt_tokens = prompt;
	u->cached_tokens = cached;
	u->cache_write_tokens = 0;
	u->completion_tokens = completion;
	u->reasoning_tokens = reasoning;
	u->found = true;
}

static json_t *usage_json(long prompt, long cached, long completion)
{
	return json_pack("{s:I,s:I,s:I,s:I}", "input_tokens", (json_int_t)(prompt - cached),
	                 "output_tokens", (json_int_t)completion,
	                 "cache_read_input_tokens", (json_int_t)cached,
	                 "cache_creation_input_tokens", (json_int_t)0);
}

static const char *stop_reason(const char *finish)
{
	static const struct { const char *from, *to; } map[] = {
		{ "stop", "end_turn" }, { "length", "max_tokens" }, { "tool_calls", "tool_use" },
		{ "function_call", "tool_use" }, { "content_filter", "refusal" },
	};

	for (size_t i = 0; finish && i < sizeof(map) / sizeof(map[0]); i++)
		if (strcmp(finish, map[i].from) == 0)
			return map[i].to;
	return "end_turn";
}

static bool has_prefix(const char *s, const char *p)
{
	return s && strncmp(s, p, strlen(p)) == 0;
}

static bool is(const char *s, const char *v)
{
	return s && strcmp(s, v) == 0;
}

/* {"type":"error","error":{type,message}} from OpenAI's error member (anything). */
static json_t *error_json(const json_t *oerr)
{
	const char *type = str_of(oerr, "type", NULL), *code = str_of(oerr, "code", NULL);
	const char *msg = str_of(oerr, "message", NULL), *t = "api_error";

	if (json_is_string(oerr))
		msg = json_string_value(oerr);
	if (is(type, "invalid_request_error") && !is(code, "model_not_found"))
		t = "invalid_request_error";
	if (is(type, "authentication_error") || is(code, "invalid_api_key"))
		t = "authentication_error";
	if (is(type, "permission_error") || is(type, "permission_denied"))
		t = "permission_error";
	if (is(type, "not_found_error") || is(code, "model_not_found"))
		t = "not_found_error";
	if (is(type, "rate_limit_error") || is(type, "insufficient_quota") ||
	    is(code, "rate_limit_exceeded") || is(code, "insufficient_quota"))
		t = "rate_limit_error";
	if (has_prefix(type, "overloaded") || has_prefix(code, "overloaded") ||
	    is(type, "server_overloaded") || is(code, "server_overloaded"))
		t = "overloaded_error";
	return json_pack("{s:s,s:{s:s,s:s}}", "type", "error", "error", "type", t, "message",
	                 msg && *msg ? msg : "the upstream answered an error");
}

static json_t *own_error(const char *message)
{
	return json_pack("{s:s,s:{s:s,s:s}}", "type", "error", "error", "type", "api_error",
	                 "message", message);
}

static json_t *str_or_empty(const json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);

	return json_is_string(v) ? json_incref(v) : json_string("");
}

static int answer_message(const json_t *in, json_t **res, struct anth_usage *u, char *err,
                          size_t errlen)
{
	json_t *choice = json_array_get(json_object_get(in, "choices"), 0);
	json_t *msg = json_object_get(choice, "message"), *content, *calls, *c, *text;
	long prompt = 0, cached = 0, completion = 0, reasoning = -1;
	bool seen;
	size_t i;

	if (!json_is_object(msg)) {
		seterr(err, errlen, "the upstream's answer has no choices[0].message");
		return MSGIN_INVALID;
	}
	if (!(content = json_array()))
		return MSGIN_NOMEM;
	text = json_object_get(msg, "content");
	if (!json_is_string(text) || !json_string_length(text))
		text = json_object_get(msg, "refusal");
	if (json_is_string(text) && json_string_length(text) &&
	    append_new(content, json_pack("{s:s,s:O}", "type", "text", "text", text)) < 0)
		goto nomem;
	calls = json_object_get(msg, "tool_calls");
	if (calls && !json_is_null(calls) && !json_is_array(calls)) {
		seterr(err, errlen, "the upstream's tool_calls is not an array");
		json_decref(content);
		return MSGIN_INVALID;
	}
	json_array_foreach(calls, i, c) {
		json_t *fn = json_object_get(c, "function"), *input;
		const char *args = str_of(fn, "arguments", NULL);
		size_t n = json_string_length(json_object_get(fn, "arguments"));

		if (!str_of(c, "id", NULL) || !str_of(fn, "name", NULL) || !args) {
			seterr(err, errlen, "the upstream's tool_calls[%zu] lacks an id, a name or "
			       "arguments", i);
			json_decref(content);
			return MSGIN_INVALID;
		}
		input = n ? json_loadb(args, n, 0, NULL) : json_object();
		if (!json_is_object(input)) {
			json_decref(input);
			seterr(err, errlen, "the upstream's tool_calls[%zu].function.arguments is not "
			       "a JSON object", i);
			json_decref(content);
			return MSGIN_INVALID;
		}
		if (append_new(content, json_pack("{s:s,s:O,s:O,s:o}", "type", "tool_use", "id",
		                                  json_object_get(c, "id"), "name",
		                                  json_object_get(fn, "name"), "input", input)) < 0)
			goto nomem;
	}
	seen = usage_of(json_object_get(in, "usage"), &prompt, &cached, &completion, &reasoning);
	*res = json_pack("{s:o,s:s,s:s,s:o,s:o,s:s,s:n,s:o}", "id", str_or_empty(in, "id"),
	                 "type", "message", "role", "assistant", "model", str_or_empty(in, "model"),
	                 "content", content, "stop_reason",
	                 stop_reason(str_of(choice, "finish_reason", NULL)), "stop_sequence",
	                 "usage", usage_json(prompt, cached, completion));
	if (!*res)
		return MSGIN_NOMEM;
	if (seen)
		usage_set(u, prompt, cached, completion, reasoning);
	return MSGIN_OK;
nomem:
	json_decref(content);
	return MSGIN_NOMEM;
}

int msgin_answer(const char *body, size_t len, char **out, size_t *out_len,
                 struct anth_usage *u, char *err, size_t errlen)
{
	json_t *in, *res = NULL;
	int rc;

	*out = NULL;
	*out_len = 0;
	usage_unknown(u);
	seterr(err, errlen, "%s", "");
	in = json_loadb(body, len, 0, NULL);
	if (!json_is_object(in)) {
		seterr(err, errlen, "the upstream's answer is not a JSON object");
		rc = MSGIN_INVALID;
	} else if (json_object_get(in, "error") && !json_is_null(json_object_get(in, "error"))) {
		res = error_json(json_object_get(in, "error"));
		rc = res ? MSGIN_UPSTREAM_ERROR : MSGIN_NOMEM;
	} else {
		rc = answer_message(in, &res, u, err, errlen);
	}
	if (rc >= 0) {
		*out = json_dumps(res, DUMP_FLAGS);
		if (*out) {
			*out_len = strlen(*out);
		} else {
			rc = MSGIN_NOMEM;
		}
	}
	if (rc == MSGIN_NOMEM)
		seterr(err, errlen, "out of memory");
	if (rc < 0)
		usage_unknown(u);
	json_decref(res);
	json_decref(in);
	return rc;
}

/* ---- stream ----------------------------------------------------------------------- */

struct msgin_tool {
	bool seen;
	int order;            /* order of appearance among the tool calls */
	char *id, *name;
	char *args; size_t args_len;
};

struct sink { char **buf; size_t *len, *cap; };

static int sink_put(struct sink *k, const char *s, size_t n)
{
	if (*k->len + n + 1 > *k->cap) {
		size_t cap = *k->cap ? *k->cap : 256;
		char *p;

		while (cap < *k->len + n + 1)
			cap *= 2;
		p = realloc(*k->buf, cap);
		if (!p)
			return MSGIN_NOMEM;
		*k->buf = p;
		*k->cap = cap;
	}
	memcpy(*k->buf + *k->len, s, n);
	*k->len += n;
	(*k->buf)[*k->len] = '\0';
	return 0;
}

/* "event: TYPE\ndata: JSON\n\n", TYPE the object's type. Takes ownership of obj. */
static int emit(struct sink *k, json_t *obj)
{
	char *text = obj ? json_dumps(obj, DUMP_FLAGS) : NULL;
	const char *type = str_of(obj, "type", NULL);
	int rc = MSGIN_NOMEM;

	if (text && type && sink_put(k, "event: ", 7) == 0 && sink_put(k, type, strlen(type)) == 0 &&
	    sink_put(k, "\ndata: ", 7) == 0 && sink_put(k, text, strlen(text)) == 0 &&
	    sink_put(k, "\n\n", 2) == 0)
		rc = 0;
	json_decref(obj);
	free(text);
	return rc;
}

#define STOPPED 1   /* a handler's result: the stream has ended, stop */

/* The stream ends here with an error event. Returns STOPPED (or out of memory), never 0,
 * so that every caller up to the feed stops: nothing may follow the error event. */
static int stream_fail(struct msgin_stream *s, struct sink *k, json_t *error)
{
	int rc;

	s->ended = s->failed = true;
	rc = emit(k, error);
	return rc < 0 ? rc : STOPPED;
}

static int invalid_stream(struct msgin_stream *s, struct sink *k, const char *why)
{
	char msg[160];

	snprintf(msg, sizeof(msg), "the upstream's stream is not a valid OpenAI stream: %s", why);
	return stream_fail(s, k, own_error(msg));
}

static int start_message(struct msgin_stream *s, struct sink *k, const json_t *chunk)
{
	json_t *id = json_object_get(chunk, "id"), *model = json_object_get(chunk, "model");
	int rc;

	s->started = true;
	rc = emit(k, json_pack("{s:s,s:{s:o,s:s,s:s,s:o,s:[],s:n,s:n,s:{s:i,s:i}}}",
	                       "type", "message_start", "message",
	                       "id", json_is_string(id) ? json_incref(id) : json_string(""),
	                       "type", "message", "role", "assistant",
	                       "model", json_is_string(model) ? json_incref(model) : json_string(""),
	                       "content", "stop_reason", "stop_sequence",
	                       "usage", "input_tokens", 0, "output_tokens", 0));
	return rc ? rc : emit(k, json_pack("{s:s}", "type", "ping"));
}

static int close_block(struct msgin_stream *s, struct sink *k)
{
	int rc;

	if (s->open_block < 0)
		return 0;
	rc = emit(k, json_pack("{s:s,s:i}", "type", "content_block_stop", "index", s->open_block));
	s->open_block = -1;
	s->text_open = false;
	return rc;
}

static int text_block(struct msgin_stream *s, struct sink *k, const char *text, size_t n)
{
	int rc;

	if (!s->text_open) {
		if ((rc = close_block(s, k)) != 0)
			return rc;
		s->open_block = s->next_block++;
		s->text_open = true;
		rc = emit(k, json_pack("{s:s,s:i,s:{s:s,s:s}}", "type", "content_block_start",
		                       "index", s->open_block, "content_block", "type", "text",
		                       "text", ""));
		if (rc)
			return rc;
	}
	return emit(k, json_pack("{s:s,s:i,s:{s:s,s:s%}}", "type", "content_block_delta",
	                         "index", s->open_block, "delta", "type", "text_delta",
	                         "text", text, n));
}

static int tool_start(struct msgin_stream *s, struct sink *k, const struct msgin_tool *t)
{
	s->open_block = s->next_block++;
	s->text_open = false;
	return emit(k, json_pack("{s:s,s:i,s:{s:s,s:s,s:s,s:{}}}", "type", "content_block_start",
	                         "index", s->open_block, "content_block", "type", "tool_use",
	                         "id", t->id ? t->id : "", "name", t->name ? t->name : "",
	                         "input"));
}

static int tool_args(struct msgin_stream *s, struct sink *k, const char *a, size_t n)
{
	if (n == 0)
		return 0;
	return emit(k, json_pack("{s:s,s:i,s:{s:s,s:s%}}", "type", "content_block_delta",
	                         "index", s->open_block, "delta", "type", "input_json_delta",
	                         "partial_json", a, n));
}

static bool hold(struct msgin_stream *s, char **buf, size_t *len, const char *a, size_t n)
{
	if (s->held + n > MSGIN_MAX_EVENT)
		return false;
	s->held += n;
	return grow_cat(buf, len, a, n);
}

static int on_tool_call(struct msgin_stream *s, struct sink *k, const json_t *tc)
{
	json_t *idx = json_object_get(tc, "index"), *fn = json_object_get(tc, "function");
	json_int_t i = json_is_integer(idx) ? json_integer_value(idx) : -1;
	const char *args = str_of(fn, "arguments", NULL);
	size_t n = json_string_length(json_object_get(fn, "arguments"));
	struct msgin_tool *t;
	int rc;

	if (i < 0 || i >= MAX_TOOLS)
		return invalid_stream(s, k, "a tool call without a valid index");
	if ((size_t)i >= s->n_tools) {
		struct msgin_tool *p = realloc(s->tools, ((size_t)i + 1) * sizeof(*p));

		if (!p)
			return MSGIN_NOMEM;
		memset(p + s->n_tools, 0, ((size_t)i + 1 - s->n_tools) * sizeof(*p));
		s->tools = p;
		s->n_tools = (size_t)i + 1;
	}
	t = &s->tools[i];
	if (!t->seen) {
		int order = 0;

		for (size_t j = 0; j < s->n_tools; j++)
			order += s->tools[j].seen;
		t->seen = true;
		t->order = order;
	}
	if (!t->id && str_of(tc, "id", NULL) && !(t->id = strdup(str_of(tc, "id", NULL))))
		return MSGIN_NOMEM;
	if (!t->name && str_of(fn, "name", NULL) && !(t->name = strdup(str_of(fn, "name", NULL))))
		return MSGIN_NOMEM;
	if (s->live_tool < 0 && t->order == 0) {   /* the first call: live */
		if ((rc = close_block(s, k)) != 0 || (rc = tool_start(s, k, t)) != 0)
			return rc;
		s->live_tool = (int)i;
	}
	if (s->live_tool == (int)i && s->open_block >= 0)
		return args ? tool_args(s, k, args, n) : 0;
	if (args && n && !hold(s, &t->args, &t->args_len, args, n))
		return invalid_stream(s, k, "held tool arguments over 1 MiB");
	return 0;
}

/* finish_reason: close what is open, send what was held. */
static int on_finish(struct msgin_stream *s, struct sink *k, const char *finish)
{
	int rc;

	s->finished = true;
	s->stop_reason = stop_reason(finish);
	if ((rc = close_block(s, k)) != 0)
		return rc;
	for (int order = 1; order <= (int)s->n_tools; order++) {
		for (size_t j = 0; j < s->n_tools; j++) {
			struct msgin_tool *t = &s->tools[j];

			if (!t->seen || t->order != order)
				continue;
			if ((rc = tool_start(s, k, t)) != 0 || (rc = tool_args(s, k, t->args, t->args_len)) != 0 ||
			    (rc = close_block(s, k)) != 0)
				return rc;
		}
	}
	if (s->late_len) {
		if ((rc = text_block(s, k, s->late_text, s->late_len)) != 0 || (rc = close_block(s, k)) != 0)
			return rc;
	}
	return 0;
}

static int end_message(struct msgin_stream *s, struct sink *k)
{
	int rc = 0;

	if (!s->finished)
		rc = on_finish(s, k, NULL);
	if (rc == 0)
		rc = emit(k, json_pack("{s:s,s:{s:s,s:n},s:o}", "type", "message_delta", "delta",
		                       "stop_reason", s->stop_reason, "stop_sequence",
		                       "usage", usage_json(s->prompt, s->cached, s->completion)));
	if (rc == 0)
		rc = emit(k, json_pack("{s:s}", "type", "message_stop"));
	s->ended = s->stopped = true;
	return rc;
}

static int on_chunk(struct msgin_stream *s, struct sink *k, const json_t *ch)
{
	json_t *choices = json_object_get(ch, "choices"), *c, *usage = json_object_get(ch, "usage");
	size_t i;
	int rc;

	if (!json_is_object(ch))
		return invalid_stream(s, k, "data that is not a JSON object");
	if (json_object_get(ch, "error") && !json_is_null(json_object_get(ch, "error")))
		return stream_fail(s, k, error_json(json_object_get(ch, "error")));
	if (choices && !json_is_array(choices))
		return invalid_stream(s, k, "choices that is not an array");
	if (!s->started && (rc = start_message(s, k, ch)) != 0)
		return rc;
	json_array_foreach(choices, i, c) {
		json_t *d = json_object_get(c, "delta"), *calls = json_object_get(d, "tool_calls"), *tc;
		const char *text = str_of(d, "content", NULL), *finish;
		size_t n = json_string_length(json_object_get(d, "content")), j;

		if (json_integer_value(json_object_get(c, "index")) != 0)
			continue;   /* n > 1 is never asked for */
		if (!text || !n) {
			text = str_of(d, "refusal", NULL);
			n = json_string_length(json_object_get(d, "refusal"));
		}
		if (text && n && !s->finished) {
			if (s->live_tool >= 0) {
				if (!hold(s, &s->late_text, &s->late_len, text, n))
					return invalid_stream(s, k, "held text over 1 MiB");
			} else if ((rc = text_block(s, k, text, n)) != 0) {
				return rc;
			}
		}
		if (calls && !json_is_null(calls) && !json_is_array(calls))
			return invalid_stream(s, k, "tool_calls that is not an array");
		json_array_foreach(calls, j, tc)
			if (!s->finished && (rc = on_tool_call(s, k, tc)) != 0)
				return rc;
		finish = str_of(c, "finish_reason", NULL);
		if (finish && !s->finished && (rc = on_finish(s, k, finish)) != 0)
			return rc;
	}
	if (json_is_object(usage)) {
		long reasoning;

		if (usage_of(usage, &s->prompt, &s->cached, &s->completion, &reasoning)) {
			s->have_usage = true;
			usage_set(&s->usage, s->prompt, s->cached, s->completion, reasoning);
		}
		if (s->have_usage && s->finished)
			return end_message(s, k);
	}
	return 0;
}

static int dispatch(struct msgin_stream *s, struct sink *k)
{
	size_t n;
	const char *data = sse_reader_take(&s->in, &n);
	json_t *ch;
	int rc;

	if (!data)
		return 0;
	if (n == 6 && memcmp(data, "[DONE]", 6) == 0) {
		if (!s->started && (rc = start_message(s, k, NULL)) != 0)
			return rc;
		return end_message(s, k);
	}
	ch = json_loadb(data, n, 0, NULL);
	rc = ch ? on_chunk(s, k, ch) : invalid_stream(s, k, "event data that is not JSON");
	json_decref(ch);
	return rc;
}


void msgin_stream_init(struct msgin_stream *s)
{
	memset(s, 0, sizeof(*s));
	s->open_block = -1;
	s->live_tool = -1;
	usage_unknown(&s->usage);
}

void msgin_stream_free(struct msgin_stream *s)
{
	for (size_t i = 0; i < s->n_tools; i++) {
		free(s->tools[i].id);
		free(s->tools[i].name);
		free(s->tools[i].args);
	}
	free(s->tools);
	free(s->late_text);
	sse_reader_free(&s->in);
	memset(s, 0, sizeof(*s));
}

int msgin_stream_feed(struct msgin_stream *s, const char *data, size_t len, char **out,
                      size_t *out_len, size_t *out_cap)
{
	struct sink k = { out, out_len, out_cap };
	size_t at = 0;
	int rc = 0;

	while (at < len && !s->ended && rc == 0) {
		switch (sse_reader_feed(&s->in, data, len, &at, MSGIN_MAX_EVENT)) {
		case SSE_READ_EVENT:
			rc = dispatch(s, &k);
			break;
		case SSE_READ_TOO_BIG:
			rc = invalid_stream(s, &k, "an event larger than 1 MiB");
			break;
		case SSE_READ_NOMEM:
			return MSGIN_NOMEM;
		default:
			break;
		}
	}
	if (rc < 0)
		return rc;
	return s->ended ? MSGIN_STREAM_ENDED : 0;
}

int msgin_stream_finish(struct msgin_stream *s, char **out, size_t *out_len, size_t *out_cap)
{
	struct sink k = { out, out_len, out_cap };
	int rc = 0;

	if (!s->ended && sse_reader_flush(&s->in) < 0)
		return MSGIN_NOMEM;
	if (rc == 0 && !s->ended)
		rc = dispatch(s, &k);
	if (rc < 0)
		return rc;
	if (s->ended)
		return MSGIN_OK;
	rc = stream_fail(s, &k, own_error("the upstream's stream ended early"));
	return rc < 0 ? rc : MSGIN_TRUNCATED;
}
