/* Reading server-sent events in pieces; see sseread.h. */
#include <stdlib.h>
#include <string.h>

#include "sseread.h"

/* Room for need bytes in *buf (capacity doubling from start); false when out of memory. */
static bool room(char **buf, size_t *cap, size_t need, size_t start)
{
	size_t c = *cap ? *cap : start;
	char *p;

	if (need <= *cap)
		return true;
	while (c < need)
		c *= 2;
	p = realloc(*buf, c);
	if (!p)
		return false;
	*buf = p;
	*cap = c;
	return true;
}

/* A non-blank line ended: keep it if it is a data field. */
static bool field_line(struct sse_reader *r)
{
	const char *colon = memchr(r->line, ':', r->line_len), *v;
	size_t name_len = colon ? (size_t)(colon - r->line) : r->line_len, vlen;

	v = colon ? colon + 1 : r->line + r->line_len;
	vlen = (size_t)(r->line + r->line_len - v);
	if (vlen && *v == ' ') {
		v++;
		vlen--;
	}
	r->line_len = 0;
	if (name_len != 4 || memcmp(r->line, "data", 4) != 0)
		return true;
	if (!room(&r->data, &r->data_cap, r->data_len + vlen + 1, 1024))
		return false;
	memcpy(r->data + r->data_len, v, vlen);
	r->data_len += vlen;
	r->data[r->data_len++] = '\n';
	r->has_data = true;
	return true;
}

enum sse_read_result sse_reader_feed(struct sse_reader *r, const char *data, size_t len,
                                     size_t *at, size_t max_event)
{
	while (*at < len) {
		const char *p = data + *at;
		size_t rest = len - *at, n = 0;

		if (r->after_cr) {
			r->after_cr = false;
			if (*p == '\n') {
				(*at)++;
				r->event_bytes++;
				continue;
			}
		}
		while (n < rest && p[n] != '\n' && p[n] != '\r')
			n++;
		if (r->event_bytes + n + 1 > max_event)
			return SSE_READ_TOO_BIG;
		r->event_bytes += n;
		if (n) {
			if (!room(&r->line, &r->line_cap, r->line_len + n + 1, 256))
				return SSE_READ_NOMEM;
			memcpy(r->line + r->line_len, p, n);
			r->line_len += n;
		}
		*at += n;
		if (n == rest)
			return SSE_READ_MORE;
		r->after_cr = p[n] == '\r';
		r->event_bytes++;
		(*at)++;
		if (r->line_len == 0) {
			r->event_bytes = 0;
			return SSE_READ_EVENT;
		}
		if (!field_line(r))
			return SSE_READ_NOMEM;
	}
	return SSE_READ_MORE;
}

int sse_reader_flush(struct sse_reader *r)
{
	return r->line_len && !field_line(r) ? -1 : 0;
}

const char *sse_reader_take(struct sse_reader *r, size_t *len)
{
	if (!r->has_data)
		return NULL;
	r->has_data = false;
	*len = r->data_len ? r->data_len - 1 : 0;
	r->data_len = 0;
	return r->data;
}

void sse_reader_free(struct sse_reader *r)
{
	free(r->line);
	free(r->data);
	memset(r, 0, sizeof(*r));
}
