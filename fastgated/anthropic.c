/* provider: anthropic: the OpenAI <-> Anthropic Messages codec. The mapping is the table in
 * anthropic.h; this file follows it in the same order (request, answer, stream). */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "anthropic.h"

/* 15 significant digits: what the client wrote with up to 15 comes out the same (0.7, not
 * jansson's default 0.69999999999999996). */
#define DUMP_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(15))

/* Token counts above this are treated as garbage (0): sums of a few of them cannot
 * overflow a long. */
#define MAX_TOKENS_COUNT (1LL << 48)

/* Content blocks a stream may open; Anthropic numbers them 0, 1, 2... */
#define MAX_BLOCKS 4096

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

/* json_object_set_new that reports failure (jansson frees value either way). */
static int set_new(json_t *obj, const char *key, json_t *value)
{
	return value && json_object_set_new(obj, key, value) == 0 ? 0 : -1;
}

static int append_new(json_t *arr, json_t *value)
{
	return value && json_array_append_new(arr, value) == 0 ? 0 : -1;
}

/* A JSON string member as (pointer, length), or NULL. */
static const char *str_of(const json_t *obj, const char *key, size_t *len)
{
	json_t *v = json_object_get(obj, key);

	if (!json_is_string(v))
		return NULL;
	if (len)
		*len = json_string_length(v);
	return json_string_value(v);
}

/* ---- request ---------------------------------------------------------------------- */

struct req {
	char *err; size_t errlen;
	json_t *messages;     /* the Anthropic messages being built */
	json_t *system;       /* text blocks for `system` */
	int rc;               /* the first failure: ANTH_INVALID or ANTH_NOMEM */
};

static int req_fail(struct req *r, int rc)
{
	if (r->rc == 0)
		r->rc = rc;
	return -1;
}

#define INVALID(r, ...) (seterr((r)->err, (r)->errlen, __VA_ARGS__), req_fail((r), ANTH_INVALID))
#define NOMEM(r) (seterr((r)->err, (r)->errlen, "out of memory"), req_fail((r), ANTH_NOMEM))

/* Add a block to the last message when it has this role, else to a new message: Anthropic
 * wants the roles to alternate, OpenAI clients often send two user turns in a row. */
static int add_block(struct req *r, const char *role, json_t *block)
{
	size_t n = json_array_size(r->messages);
	json_t *last = n ? json_array_get(r->messages, n - 1) : NULL;
	json_t *msg;

	if (!block)
		return NOMEM(r);
	if (last && strcmp(json_string_value(json_object_get(last, "role")), role) == 0) {
		if (append_new(json_object_get(last, "content"), block) < 0)
			return NOMEM(r);
		return 0;
	}
	/* "o" hands block over to the message even when packing fails */
	msg = json_pack("{s:s,s:[o]}", "role", role, "content", block);
	if (append_new(r->messages, msg) < 0)
		return NOMEM(r);
	return 0;
}

static json_t *text_block(const char *s, size_t n)
{
	json_t *b = json_object();

	if (!b || set_new(b, "type", json_string("text")) < 0 ||
	    set_new(b, "text", json_stringn(s, n)) < 0) {
		json_decref(b);
		return NULL;
	}
	return b;
}

/* Text-only content (system, developer, tool, assistant): a string or text parts. Each
 * non-empty text becomes a block appended to `into`. */
static int add_texts(struct req *r, json_t *into, const json_t *content, const char *where)
{
	size_t i;
	json_t *part;

	if (!content || json_is_null(content))   /* absent: an assistant turn of tool calls */
		return 0;
	if (json_is_string(content)) {
		if (json_string_length(content) == 0)
			return 0;
		return append_new(into, text_block(json_string_value(content), json_string_length(content)))
		       < 0 ? NOMEM(r) : 0;
	}
	if (!json_is_array(content))
		return INVALID(r, "%s.content must be a string or an array of parts", where);
	json_array_foreach(content, i, part) {
		const char *type = str_of(part, "type", NULL), *text;
		size_t n;

		if (!type || strcmp(type, "text") != 0 || !(text = str_of(part, "text", &n)))
			return INVALID(r, "%s.content[%zu]: only text parts are supported here", where, i);
		if (n && append_new(into, text_block(text, n)) < 0)
			return NOMEM(r);
	}
	return 0;
}

/* An image_url part: a data: URL becomes a base64 source, an http(s) URL a url source. */
static json_t *image_block(struct req *r, const json_t *part, const char *where, size_t i)
{
	json_t *iu = json_object_get(part, "image_url"), *src = NULL, *b = NULL;
	const char *url;
	size_t n;

	url = json_is_string(iu) ? json_string_value(iu) : str_of(iu, "url", NULL);
	n = json_is_string(iu) ? json_string_length(iu) : json_string_length(json_object_get(iu, "url"));
	if (!url) {
		INVALID(r, "%s.content[%zu].image_url.url must be a string", where, i);
		return NULL;
	}
	src = json_object();
	if (!src)
		goto nomem;
	if (n > 5 && strncmp(url, "data:", 5) == 0) {
		const char *comma = memchr(url, ',', n), *semi;
		size_t mt_len;

		/* data:MEDIA/TYPE[;param]*;base64,DATA */
		if (!comma || comma - url < 12 || strncmp(comma - 7, ";base64", 7) != 0 ||
		    (size_t)(comma + 1 - url) >= n) {
			INVALID(r, "%s.content[%zu].image_url: a data: URL must be base64 "
			        "(data:image/png;base64,...)", where, i);
			goto fail;
		}
		semi = memchr(url + 5, ';', (size_t)(comma - (url + 5)));
		mt_len = (size_t)(semi - (url + 5));
		if (mt_len == 0) {
			INVALID(r, "%s.content[%zu].image_url: the data: URL has no media type", where, i);
			goto fail;
		}
		if (set_new(src, "type", json_string("base64")) < 0 ||
		    set_new(src, "media_type", json_stringn(url + 5, mt_len)) < 0 ||
		    set_new(src, "data", json_stringn(comma + 1, n - (size_t)(comma + 1 - url))) < 0)
			goto nomem;
	} else if ((n > 7 && strncmp(url, "http://", 7) == 0) ||
	           (n > 8 && strncmp(url, "https://", 8) == 0)) {
		if (set_new(src, "type", json_string("url")) < 0 ||
		    set_new(src, "url", json_stringn(url, n)) < 0)
			goto nomem;
	} else {
		INVALID(r, "%s.content[%zu].image_url.url must be a data: (base64) or http(s) URL",
		        where, i);
		goto fail;
	}
	b = json_pack("{s:s,s:o}", "type", "image", "source", src);   /* src is b's now */
	src = NULL;
	if (!b)
		goto nomem;
	return b;
nomem:
	NOMEM(r);
fail:
	json_decref(src);
	json_decref(b);
	return NULL;
}

static int add_user(struct req *r, const json_t *content, const char *where)
{
	size_t i;
	json_t *part;

	if (!content || json_is_string(content) || json_is_null(content)) {
		json_t *tmp = json_array();

		if (!tmp)
			return NOMEM(r);
		if (add_texts(r, tmp, content, where) == 0)
			json_array_foreach(tmp, i, part)
				if (add_block(r, "user", json_incref(part)) < 0)
					break;
		json_decref(tmp);
		return r->rc ? -1 : 0;
	}
	if (!json_is_array(content))
		return INVALID(r, "%s.content must be a string or an array of parts", where);
	json_array_foreach(content, i, part) {
		const char *type = str_of(part, "type", NULL), *text;
		size_t n;

		if (type && strcmp(type, "text") == 0 && (text = str_of(part, "text", &n))) {
			if (n && add_block(r, "user", text_block(text, n)) < 0)
				return -1;
		} else if (type && strcmp(type, "image_url") == 0) {
			json_t *b = image_block(r, part, where, i);

			if (!b || add_block(r, "user", b) < 0)
				return -1;
		} else {
			return INVALID(r, "%s.content[%zu]: only text and image_url parts are supported "
			               "by anthropic upstreams", where, i);
		}
	}
	return 0;
}

static int add_tool_calls(struct req *r, const json_t *calls, const char *where)
{
	size_t i;
	json_t *call;

	if (json_is_null(calls))
		return 0;
	if (!json_is_array(calls))
		return INVALID(r, "%s.tool_calls must be an array", where);
	json_array_foreach(calls, i, call) {
		json_t *fn = json_object_get(call, "function"), *input, *b;
		const char *id = str_of(call, "id", NULL), *name = str_of(fn, "name", NULL), *type;
		const char *args;
		size_t n = 0;

		type = str_of(call, "type", NULL);
		if (!json_is_object(call) || (json_object_get(call, "type") && (!type || strcmp(type, "function") != 0)))
			return INVALID(r, "%s.tool_calls[%zu] must be a function call", where, i);
		if (!id || !name)
			return INVALID(r, "%s.tool_calls[%zu] needs an id and function.name", where, i);
		args = str_of(fn, "arguments", &n);
		if (!args && json_object_get(fn, "arguments"))
			return INVALID(r, "%s.tool_calls[%zu].function.arguments must be a string", where, i);
		if (!args || n == 0) {
			input = json_object();
		} else {
			input = json_loadb(args, n, 0, NULL);
			if (!json_is_object(input)) {
				json_decref(input);
				return INVALID(r, "%s.tool_calls[%zu].function.arguments is not a JSON object "
				               "(anthropic upstreams need the arguments as one)", where, i);
			}
		}
		b = json_object();
		if (!input || !b || set_new(b, "type", json_string("tool_use")) < 0 ||
		    set_new(b, "id", json_incref(json_object_get(call, "id"))) < 0 ||
		    set_new(b, "name", json_incref(json_object_get(fn, "name"))) < 0 ||
		    set_new(b, "input", input) < 0) {
			json_decref(b);
			return NOMEM(r);
		}
		if (add_block(r, "assistant", b) < 0)
			return -1;
	}
	return 0;
}

static int add_tool_result(struct req *r, const json_t *m, const char *where)
{
	json_t *id = json_object_get(m, "tool_call_id"), *content = json_object_get(m, "content");
	json_t *b;

	if (!json_is_string(id))
		return INVALID(r, "%s.tool_call_id must be a string", where);
	b = json_object();
	if (!b || set_new(b, "type", json_string("tool_result")) < 0 ||
	    set_new(b, "tool_use_id", json_incref(id)) < 0)
		goto nomem;
	if (json_is_string(content)) {
		if (json_string_length(content) && set_new(b, "content", json_incref(content)) < 0)
			goto nomem;
	} else if (!json_is_null(content) && content) {
		json_t *texts = json_array();

		if (!texts || set_new(b, "content", texts) < 0)
			goto nomem;
		if (add_texts(r, texts, content, where) < 0) {
			json_decref(b);
			return -1;
		}
	}
	return add_block(r, "user", b);
nomem:
	json_decref(b);
	return NOMEM(r);
}

static int add_message(struct req *r, const json_t *m, size_t i)
{
	char where[48];
	const char *role = str_of(m, "role", NULL);
	json_t *content = json_object_get(m, "content");

	snprintf(where, sizeof(where), "messages[%zu]", i);
	if (!json_is_object(m) || !role)
		return INVALID(r, "%s must be an object with a role", where);
	if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0)
		return add_texts(r, r->system, content, where);
	if (strcmp(role, "user") == 0)
		return add_user(r, content, where);
	if (strcmp(role, "tool") == 0)
		return add_tool_result(r, m, where);
	if (strcmp(role, "assistant") == 0) {
		json_t *tmp = json_array(), *b;
		size_t k;

		if (!tmp)
			return NOMEM(r);
		if (add_texts(r, tmp, content, where) == 0)
			json_array_foreach(tmp, k, b)
				if (add_block(r, "assistant", json_incref(b)) < 0)
					break;
		json_decref(tmp);
		if (r->rc)
			return -1;
		return add_tool_calls(r, json_object_get(m, "tool_calls"), where);
	}
	return INVALID(r, "%s: role must be system, developer, user, assistant or tool", where);
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
		json_t *fn = json_object_get(t, "function"), *params, *d, *o;
		const char *type = str_of(t, "type", NULL);

		if (!type || strcmp(type, "function") != 0 || !str_of(fn, "name", NULL))
			return INVALID(r, "tools[%zu]: only function tools with a name are supported by "
			               "anthropic upstreams", i);
		params = json_object_get(fn, "parameters");
		if (params && !json_is_object(params))
			return INVALID(r, "tools[%zu].function.parameters must be an object", i);
		o = json_object();
		if (append_new(list, o) < 0 || set_new(o, "name", json_incref(json_object_get(fn, "name"))) < 0)
			return NOMEM(r);
		d = json_object_get(fn, "description");
		if (json_is_string(d) && set_new(o, "description", json_incref(d)) < 0)
			return NOMEM(r);
		if (params) {
			if (set_new(o, "input_schema", json_incref(params)) < 0)
				return NOMEM(r);
		} else if (set_new(o, "input_schema", json_pack("{s:s,s:{}}", "type", "object",
		                                                "properties")) < 0) {
			return NOMEM(r);
		}
	}
	return 0;
}

static int add_tool_choice(struct req *r, json_t *out, const json_t *in)
{
	json_t *tc = json_object_get(in, "tool_choice"), *ptc = json_object_get(in, "parallel_tool_calls");
	json_t *c = NULL;
	bool serial;

	if (ptc && !json_is_boolean(ptc) && !json_is_null(ptc))
		return INVALID(r, "parallel_tool_calls must be a boolean");
	serial = json_is_false(ptc);
	if (tc && json_is_string(tc)) {
		const char *s = json_string_value(tc);

		if (strcmp(s, "auto") == 0)
			c = json_pack("{s:s}", "type", "auto");
		else if (strcmp(s, "required") == 0)
			c = json_pack("{s:s}", "type", "any");
		else if (strcmp(s, "none") == 0)
			c = json_pack("{s:s}", "type", "none");
		else
			return INVALID(r, "tool_choice must be auto, required, none or a function");
	} else if (json_is_object(tc)) {
		const char *type = str_of(tc, "type", NULL);
		json_t *name = json_object_get(json_object_get(tc, "function"), "name");

		if (!type || strcmp(type, "function") != 0 || !json_is_string(name))
			return INVALID(r, "tool_choice must be auto, required, none or "
			               "{\"type\":\"function\",\"function\":{\"name\":...}}");
		c = json_pack("{s:s,s:O}", "type", "tool", "name", name);
	} else if (tc && !json_is_null(tc)) {
		return INVALID(r, "tool_choice must be a string or an object");
	}
	/* no tools: nothing to choose among (Anthropic refuses tool_choice alone) */
	if (!json_object_get(out, "tools")) {
		json_decref(c);
		return 0;
	}
	if (!c && serial)
		c = json_pack("{s:s}", "type", "auto");
	if (!c)
		return tc && !json_is_null(tc) ? NOMEM(r) : 0;
	if (serial && strcmp(json_string_value(json_object_get(c, "type")), "none") != 0 &&
	    set_new(c, "disable_parallel_tool_use", json_true()) < 0) {
		json_decref(c);
		return NOMEM(r);
	}
	return set_new(out, "tool_choice", c) < 0 ? NOMEM(r) : 0;
}

static int add_sampling(struct req *r, json_t *out, const json_t *in)
{
	static const char *const pass[] = { "temperature", "top_p" };
	json_t *stop = json_object_get(in, "stop"), *n = json_object_get(in, "n");
	json_t *user = json_object_get(in, "user");

	if (n && !json_is_null(n)) {
		if (!json_is_integer(n) || json_integer_value(n) < 1)
			return INVALID(r, "n must be a positive integer");
		if (json_integer_value(n) > 1)
			return INVALID(r, "n>1 is not supported by anthropic upstreams");
	}
	if (json_is_string(stop)) {
		if (set_new(out, "stop_sequences", json_pack("[O]", stop)) < 0)
			return NOMEM(r);
	} else if (json_is_array(stop)) {
		size_t i;
		json_t *s;

		json_array_foreach(stop, i, s)
			if (!json_is_string(s))
				return INVALID(r, "stop[%zu] must be a string", i);
		if (json_array_size(stop) && set_new(out, "stop_sequences", json_incref(stop)) < 0)
			return NOMEM(r);
	} else if (stop && !json_is_null(stop)) {
		return INVALID(r, "stop must be a string or an array of strings");
	}
	for (size_t i = 0; i < sizeof(pass) / sizeof(pass[0]); i++) {
		json_t *v = json_object_get(in, pass[i]);

		if (!v || json_is_null(v))
			continue;
		if (!json_is_number(v))
			return INVALID(r, "%s must be a number", pass[i]);
		if (set_new(out, pass[i], json_incref(v)) < 0)
			return NOMEM(r);
	}
	if (json_is_string(user) && json_string_length(user) &&
	    set_new(out, "metadata", json_pack("{s:O}", "user_id", user)) < 0)
		return NOMEM(r);
	return 0;
}

/* max_tokens, else max_completion_tokens (the order reqjson reads them in), else the
 * caller's default. */
static int add_max_tokens(struct req *r, json_t *out, const json_t *in, long dflt)
{
	static const char *const keys[] = { "max_tokens", "max_completion_tokens" };

	for (size_t i = 0; i < 2; i++) {
		json_t *v = json_object_get(in, keys[i]);

		if (!v || json_is_null(v))
			continue;
		if (!json_is_integer(v) || json_integer_value(v) < 0)
			return INVALID(r, "%s must be a non-negative integer", keys[i]);
		return set_new(out, "max_tokens", json_incref(v)) < 0 ? NOMEM(r) : 0;
	}
	if (dflt <= 0)
		return INVALID(r, "max_tokens is required for this model (anthropic upstreams need it)");
	return set_new(out, "max_tokens", json_integer(dflt)) < 0 ? NOMEM(r) : 0;
}

int anth_request(const struct anth_req_opts *o, const char *body, size_t len, char **out,
                 size_t *out_len, char *err, size_t errlen)
{
	struct req r = { .err = err, .errlen = errlen };
	json_t *in = NULL, *res = NULL, *msgs, *m;
	size_t i;

	*out = NULL;
	*out_len = 0;
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
	r.messages = json_array();
	r.system = json_array();
	res = json_object();
	if (!r.messages || !r.system || !res) {
		NOMEM(&r);
		goto done;
	}
	if (set_new(res, "model", o->model ? json_string(o->model)
	                                   : json_incref(json_object_get(in, "model"))) < 0) {
		NOMEM(&r);
		goto done;
	}
	if (add_max_tokens(&r, res, in, o->default_max_tokens) < 0)
		goto done;
	json_array_foreach(msgs, i, m)
		if (add_message(&r, m, i) < 0)
			goto done;
	if (json_array_size(r.messages) == 0) {
		INVALID(&r, "messages: no user or assistant message with content");
		goto done;
	}
	if (json_array_size(r.system) == 1) {
		if (set_new(res, "system", json_incref(json_object_get(json_array_get(r.system, 0), "text"))) < 0)
			NOMEM(&r);
	} else if (json_array_size(r.system) > 1 && set_new(res, "system", json_incref(r.system)) < 0) {
		NOMEM(&r);
	}
	if (r.rc || set_new(res, "messages", json_incref(r.messages)) < 0) {
		NOMEM(&r);
		goto done;
	}
	if (add_sampling(&r, res, in) < 0 || add_tools(&r, res, json_object_get(in, "tools")) < 0 ||
	    add_tool_choice(&r, res, in) < 0)
		goto done;
	if (o->stream && set_new(res, "stream", json_true()) < 0) {
		NOMEM(&r);
		goto done;
	}
	*out = json_dumps(res, DUMP_FLAGS);
	if (!*out)
		NOMEM(&r);
	else
		*out_len = strlen(*out);
done:
	json_decref(in);
	json_decref(res);
	json_decref(r.messages);
	json_decref(r.system);
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

static void usage_set(struct anth_usage *u, long input, long cache_read, long cache_write,
                      long output)
{
	u->prompt_tokens = input + cache_read + cache_write;
	u->cached_tokens = cache_read;
	u->cache_write_tokens = cache_write;
	u->completion_tokens = output;
	u->reasoning_tokens = -1;
	u->found = true;
}

static void usage_unknown(struct anth_usage *u)
{
	u->prompt_tokens = u->cached_tokens = u->cache_write_tokens = -1;
	u->completion_tokens = u->reasoning_tokens = -1;
	u->found = false;
}

static json_t *usage_json(const struct anth_usage *u)
{
	return json_pack("{s:I,s:I,s:I,s:{s:I}}",
	                 "prompt_tokens", (json_int_t)u->prompt_tokens,
	                 "completion_tokens", (json_int_t)u->completion_tokens,
	                 "total_tokens", (json_int_t)(u->prompt_tokens + u->completion_tokens),
	                 "prompt_tokens_details", "cached_tokens", (json_int_t)u->cached_tokens);
}

static const char *finish_reason(const char *stop_reason)
{
	static const struct { const char *from, *to; } map[] = {
		{ "end_turn", "stop" }, { "stop_sequence", "stop" }, { "pause_turn", "stop" },
		{ "max_tokens", "length" }, { "model_context_window_exceeded", "length" },
		{ "tool_use", "tool_calls" }, { "refusal", "content_filter" },
	};

	for (size_t i = 0; stop_reason && i < sizeof(map) / sizeof(map[0]); i++)
		if (strcmp(stop_reason, map[i].from) == 0)
			return map[i].to;
	return "stop";
}

/* {"error":{"message","type","code"}} from Anthropic's error object (which may be
 * anything: defaults stand in for what is missing). */
static json_t *error_json(const json_t *aerr)
{
	static const struct { const char *from, *to; } map[] = {
		{ "invalid_request_error", "invalid_request_error" },
		{ "request_too_large", "invalid_request_error" },
		{ "not_found_error", "invalid_request_error" },
		{ "authentication_error", "authentication_error" },
		{ "permission_error", "permission_error" },
		{ "rate_limit_error", "rate_limit_error" },
	};
	const char *atype = str_of(aerr, "type", NULL), *type = "server_error";
	json_t *msg = json_object_get(aerr, "message");

	for (size_t i = 0; atype && i < sizeof(map) / sizeof(map[0]); i++)
		if (strcmp(atype, map[i].from) == 0)
			type = map[i].to;
	if (json_is_string(msg))
		return json_pack("{s:{s:O,s:s,s:s}}", "error", "message", msg, "type", type,
		                 "code", atype ? atype : "api_error");
	return json_pack("{s:{s:s,s:s,s:s}}", "error", "message", "the upstream reported an error",
	                 "type", type, "code", atype ? atype : "api_error");
}

static json_t *own_error(const char *code, const char *message)
{
	return json_pack("{s:{s:s,s:s,s:s}}", "error", "message", message, "type", "server_error",
	                 "code", code);
}

/* The string of a member or "" (ids and models are shown, not relied on). */
static json_t *str_or_empty(const json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);

	return json_is_string(v) ? json_incref(v) : json_string("");
}

/* Appends s[0..n) to a growing malloc'd string; false when out of memory. */
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

static int answer_message(const json_t *in, long created, json_t **res, struct anth_usage *u,
                          char *err, size_t errlen)
{
	json_t *content = json_object_get(in, "content"), *b, *msg = NULL, *calls = NULL;
	json_t *usage = json_object_get(in, "usage");
	char *text = NULL, *thinking = NULL;
	size_t text_len = 0, thinking_len = 0, i;
	bool has_text = false, has_thinking = false, seen = false;
	int rc = ANTH_NOMEM;

	if (!json_is_array(content)) {
		seterr(err, errlen, "the upstream's answer has no content array");
		return ANTH_INVALID;
	}
	calls = json_array();
	if (!calls)
		goto done;
	json_array_foreach(content, i, b) {
		const char *type = str_of(b, "type", NULL), *s;
		size_t n;

		if (!type)
			continue;
		if (strcmp(type, "text") == 0 && (s = str_of(b, "text", &n))) {
			has_text = true;
			if (!grow_cat(&text, &text_len, s, n))
				goto done;
		} else if (strcmp(type, "thinking") == 0 && (s = str_of(b, "thinking", &n))) {
			has_thinking = true;
			if (!grow_cat(&thinking, &thinking_len, s, n))
				goto done;
		} else if (strcmp(type, "tool_use") == 0) {
			json_t *input = json_object_get(b, "input");
			char *args = input ? json_dumps(input, DUMP_FLAGS | JSON_ENCODE_ANY) : strdup("{}");
			json_t *c;

			if (!args)
				goto done;
			c = json_pack("{s:o,s:s,s:{s:o,s:s}}", "id", str_or_empty(b, "id"),
			              "type", "function", "function", "name", str_or_empty(b, "name"),
			              "arguments", args);
			free(args);
			if (append_new(calls, c) < 0)
				goto done;
		}
	}
	msg = json_pack("{s:s}", "role", "assistant");
	if (!msg || set_new(msg, "content", has_text ? json_stringn(text, text_len) : json_null()) < 0)
		goto done;
	if (has_thinking && set_new(msg, "reasoning_content", json_stringn(thinking, thinking_len)) < 0)
		goto done;
	if (json_array_size(calls) && set_new(msg, "tool_calls", json_incref(calls)) < 0)
		goto done;
	usage_set(u, tok(usage, "input_tokens", &seen), tok(usage, "cache_read_input_tokens", NULL),
	          tok(usage, "cache_creation_input_tokens", NULL), tok(usage, "output_tokens", &seen));
	*res = json_pack("{s:o,s:s,s:I,s:o,s:[{s:i,s:O,s:s}]}", "id", str_or_empty(in, "id"),
	                 "object", "chat.completion", "created", (json_int_t)created,
	                 "model", str_or_empty(in, "model"), "choices", "index", 0, "message", msg,
	                 "finish_reason", finish_reason(str_of(in, "stop_reason", NULL)));
	if (!*res || set_new(*res, "usage", usage_json(u)) < 0)
		goto done;
	if (!seen)
		usage_unknown(u);   /* the client sees zeros; the audit knows they are not counts */
	rc = ANTH_OK;
done:
	if (rc == ANTH_NOMEM)
		seterr(err, errlen, "out of memory");
	free(text);
	free(thinking);
	json_decref(msg);
	json_decref(calls);
	return rc;
}

int anth_answer(const char *body, size_t len, long created, char **out, size_t *out_len,
                struct anth_usage *u, char *err, size_t errlen)
{
	json_t *in, *res = NULL;
	const char *type;
	int rc;

	*out = NULL;
	*out_len = 0;
	usage_unknown(u);
	seterr(err, errlen, "%s", "");
	in = json_loadb(body, len, 0, NULL);
	type = str_of(in, "type", NULL);
	if (!json_is_object(in)) {
		seterr(err, errlen, "the upstream's answer is not a JSON object");
		rc = ANTH_INVALID;
	} else if (type && strcmp(type, "error") == 0) {
		res = error_json(json_object_get(in, "error"));
		rc = res ? ANTH_UPSTREAM_ERROR : ANTH_NOMEM;
	} else if (type && strcmp(type, "message") != 0) {
		seterr(err, errlen, "the upstream's answer is neither a message nor an error");
		rc = ANTH_INVALID;
	} else {
		rc = answer_message(in, created, &res, u, err, errlen);
	}
	if (rc >= 0) {
		*out = json_dumps(res, DUMP_FLAGS);
		if (*out) {
			*out_len = strlen(*out);
		} else {
			seterr(err, errlen, "out of memory");
			rc = ANTH_NOMEM;
		}
	}
	if (rc < 0)
		usage_unknown(u);
	json_decref(res);
	json_decref(in);
	return rc;
}

/* ---- stream ----------------------------------------------------------------------- */

enum block_kind { BLOCK_NONE, BLOCK_OTHER, BLOCK_TEXT, BLOCK_THINKING, BLOCK_TOOL };

struct anth_block {
	enum block_kind kind;
	int tool;             /* BLOCK_TOOL: its index among the tool calls */
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
			return ANTH_NOMEM;
		*k->buf = p;
		*k->cap = cap;
	}
	memcpy(*k->buf + *k->len, s, n);
	*k->len += n;
	(*k->buf)[*k->len] = '\0';
	return 0;
}

/* One "data: JSON\n\n" event. Takes ownership of obj (NULL: out of memory). */
static int emit(struct sink *k, json_t *obj)
{
	char *text = obj ? json_dumps(obj, DUMP_FLAGS) : NULL;
	int rc = ANTH_NOMEM;

	json_decref(obj);
	if (text && sink_put(k, "data: ", 6) == 0 && sink_put(k, text, strlen(text)) == 0 &&
	    sink_put(k, "\n\n", 2) == 0)
		rc = 0;
	free(text);
	return rc;
}

/* A chunk with one choice: delta (owned) and a finish reason or null. */
static int emit_chunk(struct anth_stream *s, struct sink *k, json_t *delta, const char *finish)
{
	if (!delta)
		return ANTH_NOMEM;
	return emit(k, json_pack("{s:s,s:s,s:I,s:s,s:[{s:i,s:o,s:o}]}", "id", s->id,
	                         "object", "chat.completion.chunk", "created", (json_int_t)s->created,
	                         "model", s->model, "choices", "index", 0, "delta", delta,
	                         "finish_reason", finish ? json_string(finish) : json_null()));
}

#define STOPPED 1   /* a handler's result: the stream has ended, stop */

/* The stream ends here with an error event. Returns STOPPED (or out of memory), never 0,
 * so that every caller up to the feed stops: nothing may follow the error event. */
static int stream_fail(struct anth_stream *s, struct sink *k, json_t *error)
{
	int rc;

	s->ended = s->failed = true;
	rc = emit(k, error);
	return rc < 0 ? rc : STOPPED;
}

static int invalid_stream(struct anth_stream *s, struct sink *k, const char *why)
{
	char msg[160];

	snprintf(msg, sizeof(msg), "the upstream's stream is not a valid Anthropic stream: %s", why);
	return stream_fail(s, k, own_error("invalid_upstream_stream", msg));
}

static void stream_usage(struct anth_stream *s)
{
	usage_set(&s->usage, s->input, s->cache_read, s->cache_write, s->output);
}

/* Usage counts present in obj replace the ones known (message_delta's are cumulative). */
static void take_usage(struct anth_stream *s, const json_t *usage)
{
	bool seen = false;
	long v;

	if (!json_is_object(usage))
		return;
	v = tok(usage, "input_tokens", &seen);
	if (seen)
		s->input = v;
	seen = false;
	v = tok(usage, "cache_read_input_tokens", &seen);
	if (seen)
		s->cache_read = v;
	seen = false;
	v = tok(usage, "cache_creation_input_tokens", &seen);
	if (seen)
		s->cache_write = v;
	seen = false;
	v = tok(usage, "output_tokens", &seen);
	if (seen)
		s->output = v;
	stream_usage(s);
}

static struct anth_block *block_at(struct anth_stream *s, const json_t *ev)
{
	json_t *idx = json_object_get(ev, "index");
	json_int_t i = json_is_integer(idx) ? json_integer_value(idx) : -1;

	if (i < 0 || (size_t)i >= s->n_blocks || s->blocks[i].kind == BLOCK_NONE)
		return NULL;
	return &s->blocks[i];
}

static int on_block_start(struct anth_stream *s, struct sink *k, const json_t *ev)
{
	json_t *idx = json_object_get(ev, "index"), *cb = json_object_get(ev, "content_block");
	json_int_t i = json_is_integer(idx) ? json_integer_value(idx) : -1;
	const char *type = str_of(cb, "type", NULL), *text;
	struct anth_block *b;
	size_t n;

	if (i < 0 || i >= MAX_BLOCKS || !type)
		return invalid_stream(s, k, "content_block_start without an index and a block type");
	if ((size_t)i >= s->n_blocks) {
		struct anth_block *p = realloc(s->blocks, ((size_t)i + 1) * sizeof(*p));

		if (!p)
			return ANTH_NOMEM;
		memset(p + s->n_blocks, 0, ((size_t)i + 1 - s->n_blocks) * sizeof(*p));
		s->blocks = p;
		s->n_blocks = (size_t)i + 1;
	}
	b = &s->blocks[i];
	if (b->kind != BLOCK_NONE)
		return invalid_stream(s, k, "a content block started twice");
	if (strcmp(type, "text") == 0) {
		b->kind = BLOCK_TEXT;
		if ((text = str_of(cb, "text", &n)) && n)
			return emit_chunk(s, k, json_pack("{s:s%}", "content", text, n), NULL);
	} else if (strcmp(type, "thinking") == 0) {
		b->kind = BLOCK_THINKING;
		if ((text = str_of(cb, "thinking", &n)) && n)
			return emit_chunk(s, k, json_pack("{s:s%}", "reasoning_content", text, n), NULL);
	} else if (strcmp(type, "tool_use") == 0) {
		json_t *input = json_object_get(cb, "input");
		char *args = NULL;
		int rc;

		if (!str_of(cb, "id", NULL) || !str_of(cb, "name", NULL))
			return invalid_stream(s, k, "a tool_use block without an id and a name");
		b->kind = BLOCK_TOOL;
		b->tool = s->n_tools++;
		/* streamed tool input starts as {} and comes in input_json_delta fragments; an
		 * input given whole at the start is sent as the first fragment */
		if (json_is_object(input) && json_object_size(input))
			args = json_dumps(input, DUMP_FLAGS);
		else if (input && !json_is_object(input))
			return invalid_stream(s, k, "a tool_use block whose input is not an object");
		if (json_is_object(input) && json_object_size(input) && !args)
			return ANTH_NOMEM;
		rc = emit_chunk(s, k, json_pack("{s:[{s:i,s:O,s:s,s:{s:O,s:s}}]}", "tool_calls",
		                                "index", b->tool, "id", json_object_get(cb, "id"),
		                                "type", "function", "function",
		                                "name", json_object_get(cb, "name"),
		                                "arguments", args ? args : ""), NULL);
		free(args);
		return rc;
	} else {
		b->kind = BLOCK_OTHER;   /* redacted_thinking, server tools: not the client's */
	}
	return 0;
}

static int on_block_delta(struct anth_stream *s, struct sink *k, const json_t *ev)
{
	struct anth_block *b = block_at(s, ev);
	json_t *d = json_object_get(ev, "delta");
	const char *type = str_of(d, "type", NULL), *text;
	size_t n;

	if (!b || !type)
		return invalid_stream(s, k, "a delta for a content block that was not started");
	if (strcmp(type, "text_delta") == 0) {
		if (b->kind != BLOCK_TEXT || !(text = str_of(d, "text", &n)))
			return invalid_stream(s, k, "a text_delta outside a text block");
		return n ? emit_chunk(s, k, json_pack("{s:s%}", "content", text, n), NULL) : 0;
	}
	if (strcmp(type, "thinking_delta") == 0) {
		if (b->kind != BLOCK_THINKING || !(text = str_of(d, "thinking", &n)))
			return invalid_stream(s, k, "a thinking_delta outside a thinking block");
		return n ? emit_chunk(s, k, json_pack("{s:s%}", "reasoning_content", text, n), NULL) : 0;
	}
	if (strcmp(type, "input_json_delta") == 0) {
		if (b->kind != BLOCK_TOOL || !(text = str_of(d, "partial_json", &n)))
			return invalid_stream(s, k, "an input_json_delta outside a tool_use block");
		if (n == 0)
			return 0;
		return emit_chunk(s, k, json_pack("{s:[{s:i,s:{s:s%}}]}", "tool_calls", "index", b->tool,
		                                  "function", "arguments", text, n), NULL);
	}
	return 0;   /* signature_delta, citations_delta, and deltas yet to come */
}

static int on_message_stop(struct anth_stream *s, struct sink *k)
{
	int rc = 0;

	if (!s->finished) {
		s->finished = true;
		rc = emit_chunk(s, k, json_object(), "stop");
	}
	if (rc == 0 && s->include_usage)
		rc = emit(k, json_pack("{s:s,s:s,s:I,s:s,s:[],s:o}", "id", s->id,
		                       "object", "chat.completion.chunk", "created", (json_int_t)s->created,
		                       "model", s->model, "choices", "usage", usage_json(&s->usage)));
	if (rc == 0)
		rc = sink_put(k, "data: [DONE]\n\n", 14);
	s->ended = s->stopped = true;
	return rc;
}

static int on_event(struct anth_stream *s, struct sink *k, const json_t *ev)
{
	const char *type = str_of(ev, "type", NULL);

	if (!json_is_object(ev) || !type)
		return invalid_stream(s, k, "an event that is not a JSON object with a type");
	if (strcmp(type, "ping") == 0)
		return 0;
	if (strcmp(type, "error") == 0)
		return stream_fail(s, k, error_json(json_object_get(ev, "error")));
	if (strcmp(type, "message_start") == 0) {
		json_t *m = json_object_get(ev, "message");
		const char *id = str_of(m, "id", NULL), *model = str_of(m, "model", NULL);

		if (s->started || !json_is_object(m))
			return invalid_stream(s, k, "a second message_start, or one without a message");
		free(s->id);
		free(s->model);
		s->id = strdup(id ? id : "");
		s->model = strdup(model ? model : "");
		if (!s->id || !s->model)
			return ANTH_NOMEM;
		s->started = true;
		take_usage(s, json_object_get(m, "usage"));   /* none: the usage stays unknown */
		return emit_chunk(s, k, json_pack("{s:s,s:s}", "role", "assistant", "content", ""), NULL);
	}
	if (strncmp(type, "message_", 8) != 0 && strncmp(type, "content_block_", 14) != 0)
		return 0;   /* event types added later: Anthropic asks clients to skip them */
	if (!s->started)
		return invalid_stream(s, k, "an event before message_start");
	if (strcmp(type, "content_block_start") == 0)
		return on_block_start(s, k, ev);
	if (strcmp(type, "content_block_delta") == 0)
		return on_block_delta(s, k, ev);
	if (strcmp(type, "content_block_stop") == 0)
		return block_at(s, ev) ? 0 : invalid_stream(s, k, "a stop for a block never started");
	if (strcmp(type, "message_delta") == 0) {
		const char *stop = str_of(json_object_get(ev, "delta"), "stop_reason", NULL);

		take_usage(s, json_object_get(ev, "usage"));
		if (stop && !s->finished) {
			s->finished = true;
			return emit_chunk(s, k, json_object(), finish_reason(stop));
		}
		return 0;
	}
	if (strcmp(type, "message_stop") == 0)
		return on_message_stop(s, k);
	return 0;
}

static int dispatch(struct anth_stream *s, struct sink *k)
{
	size_t n;
	const char *data = sse_reader_take(&s->in, &n);
	json_t *ev;
	int rc;

	if (!data)
		return 0;
	ev = json_loadb(data, n, 0, NULL);
	rc = ev ? on_event(s, k, ev) : invalid_stream(s, k, "event data that is not JSON");
	json_decref(ev);
	return rc;
}


void anth_stream_init(struct anth_stream *s, bool include_usage, long created)
{
	memset(s, 0, sizeof(*s));
	s->include_usage = include_usage;
	s->created = created;
	usage_unknown(&s->usage);
}

void anth_stream_free(struct anth_stream *s)
{
	sse_reader_free(&s->in);
	free(s->id);
	free(s->model);
	free(s->blocks);
	memset(s, 0, sizeof(*s));
}

int anth_stream_feed(struct anth_stream *s, const char *data, size_t len, char **out,
                     size_t *out_len, size_t *out_cap)
{
	struct sink k = { out, out_len, out_cap };
	size_t at = 0;
	int rc = 0;

	while (at < len && !s->ended && rc == 0) {
		switch (sse_reader_feed(&s->in, data, len, &at, ANTH_MAX_EVENT)) {
		case SSE_READ_EVENT:
			rc = dispatch(s, &k);
			break;
		case SSE_READ_TOO_BIG:
			rc = invalid_stream(s, &k, "an event larger than 1 MiB");
			break;
		case SSE_READ_NOMEM:
			return ANTH_NOMEM;
		default:
			break;
		}
	}
	if (rc < 0)
		return rc;
	return s->ended ? ANTH_STREAM_ENDED : 0;
}

int anth_stream_finish(struct anth_stream *s, char **out, size_t *out_len, size_t *out_cap)
{
	struct sink k = { out, out_len, out_cap };
	int rc = 0;

	/* a last event the upstream did not close with a blank line still counts */
	if (!s->ended && sse_reader_flush(&s->in) < 0)
		return ANTH_NOMEM;
	if (rc == 0 && !s->ended)
		rc = dispatch(s, &k);
	if (rc < 0)
		return rc;
	if (s->ended)
		return ANTH_OK;
	rc = stream_fail(s, &k, own_error("stream_truncated",
	                                  "the upstream's stream ended before message_stop"));
	return rc < 0 ? rc : ANTH_TRUNCATED;
}
