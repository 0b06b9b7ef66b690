/* Token usage extraction; see usage.h. */
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "usage.h"

/* An SSE event larger than this is not one we need to read: pass it on and stop holding. */
#define SSE_MAX_EVENT (1024 * 1024)

static void usage_from_object(json_t *u, struct usage *out)
{
	json_t *p = json_object_get(u, "prompt_tokens");
	json_t *c = json_object_get(u, "completion_tokens");

	if (!json_is_object(u))
		return;
	out->found = true;
	out->prompt_tokens = json_is_integer(p) ? (long)json_integer_value(p) : -1;
	out->completion_tokens = json_is_integer(c) ? (long)json_integer_value(c) : -1;
}

bool usage_from_json(const char *body, size_t len, struct usage *u)
{
	json_t *root;

	u->found = false;
	u->prompt_tokens = u->completion_tokens = -1;
	if (len == 0 || !memmem(body, len, "\"usage\"", 7))
		return false;
	root = json_loadb(body, len, 0, NULL);
	if (json_is_object(root))
		usage_from_object(json_object_get(root, "usage"), u);
	json_decref(root);
	return u->found;
}

void usage_request_info(const char *body, size_t len, char *model, size_t cap,
                        bool *stream, bool *include_usage)
{
	json_t *root, *m, *so;

	model[0] = '\0';
	*stream = *include_usage = false;
	if (len == 0 || body[0] != '{')
		return;
	root = json_loadb(body, len, 0, NULL);
	if (!json_is_object(root)) {
		json_decref(root);
		return;
	}
	m = json_object_get(root, "model");
	if (json_is_string(m)) {
		size_t n = strlen(json_string_value(m));
		if (n >= cap)
			n = cap - 1;
		memcpy(model, json_string_value(m), n);
		model[n] = '\0';
	}
	*stream = json_is_true(json_object_get(root, "stream"));
	so = json_object_get(root, "stream_options");
	*include_usage = json_is_object(so) && json_is_true(json_object_get(so, "include_usage"));
	json_decref(root);
}

char *usage_request_with_include_usage(const char *body, size_t len)
{
	json_t *root = json_loadb(body, len, 0, NULL), *so;
	char *out = NULL;

	if (!json_is_object(root))
		goto done;
	so = json_object_get(root, "stream_options");
	if (!json_is_object(so)) {
		so = json_object();
		if (!so || json_object_set_new(root, "stream_options", so) < 0)
			goto done;
	}
	if (json_object_set_new(so, "include_usage", json_true()) < 0)
		goto done;
	out = json_dumps(root, JSON_COMPACT);
done:
	json_decref(root);
	return out;
}

void sse_scan_init(struct sse_scan *s, bool strip_usage)
{
	memset(s, 0, sizeof(*s));
	s->strip_usage = strip_usage;
	s->usage.prompt_tokens = s->usage.completion_tokens = -1;
}

void sse_scan_free(struct sse_scan *s)
{
	free(s->buf);
	s->buf = NULL;
	s->len = s->cap = 0;
}

static int append(char **out, size_t *len, size_t *cap, const char *data, size_t n)
{
	if (*len + n > *cap) {
		size_t ncap = *cap ? *cap : 4096;
		char *p;
		while (ncap < *len + n)
			ncap *= 2;
		p = realloc(*out, ncap);
		if (!p)
			return -1;
		*out = p;
		*cap = ncap;
	}
	memcpy(*out + *len, data, n);
	*len += n;
	return 0;
}

/* Look at one complete event. Returns true if it is a usage-only chunk. */
static bool inspect_event(struct sse_scan *s, const char *ev, size_t n)
{
	const char *p = ev, *end = ev + n;
	bool usage_only = false;

	if (!memmem(ev, n, "\"usage\"", 7))
		return false;
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		size_t ln = eol ? (size_t)(eol - p) : (size_t)(end - p);
		if (ln >= 5 && memcmp(p, "data:", 5) == 0) {
			const char *d = p + 5;
			size_t dn = ln - 5;
			json_t *root, *choices;
			if (dn && *d == ' ') { d++; dn--; }
			if (dn && d[dn - 1] == '\r') dn--;
			root = json_loadb(d, dn, 0, NULL);
			if (json_is_object(root)) {
				json_t *u = json_object_get(root, "usage");
				if (json_is_object(u)) {
					usage_from_object(u, &s->usage);
					choices = json_object_get(root, "choices");
					usage_only = json_is_array(choices) && json_array_size(choices) == 0;
				}
			}
			json_decref(root);
		}
		p = eol ? eol + 1 : end;
	}
	return usage_only;
}

/* Offset just past the blank line that ends the first event in buf, or 0. */
static size_t event_end(const char *buf, size_t len)
{
	for (size_t i = 0; i + 1 < len; i++) {
		if (buf[i] != '\n')
			continue;
		if (buf[i + 1] == '\n')
			return i + 2;
		if (buf[i + 1] == '\r' && i + 2 < len && buf[i + 2] == '\n')
			return i + 3;
	}
	return 0;
}

int sse_scan_feed(struct sse_scan *s, const char *data, size_t len, char **out, size_t *out_len,
                  size_t *out_cap)
{
	size_t end, done = 0;

	if (!s->strip_usage && append(out, out_len, out_cap, data, len) < 0)
		return -1;
	if (append(&s->buf, &s->len, &s->cap, data, len) < 0)
		return -1;
	while ((end = event_end(s->buf + done, s->len - done)) > 0) {
		const char *ev = s->buf + done;
		bool drop = inspect_event(s, ev, end);
		if (s->strip_usage && !drop && append(out, out_len, out_cap, ev, end) < 0)
			return -1;
		done += end;
	}
	if (done > 0) {
		memmove(s->buf, s->buf + done, s->len - done);
		s->len -= done;
	}
	if (s->len > SSE_MAX_EVENT) {
		/* not an event stream we can read: stop holding bytes back */
		if (s->strip_usage && append(out, out_len, out_cap, s->buf, s->len) < 0)
			return -1;
		s->len = 0;
	}
	return 0;
}

int sse_scan_finish(struct sse_scan *s, char **out, size_t *out_len, size_t *out_cap)
{
	int rc = 0;

	if (s->strip_usage && s->len > 0)
		rc = append(out, out_len, out_cap, s->buf, s->len);
	s->len = 0;
	return rc;
}
