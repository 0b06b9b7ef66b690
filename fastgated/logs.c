/* logs.tail, logs.export, logs.show and the live fan-out of finished requests.
 *
 * Ownership: struct logs (one per control socket) owns the ring of recent records and
 * the list of live followers. Each running command owns a small state struct; a state
 * with a query on a dbq worker is freed by that query's done callback, otherwise by the
 * stream's cancel callback or when the stream ends. Everything here except the *_work
 * functions runs on the loop thread. */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "audit.h"
#include "config.h"
#include "control.h"
#include "gateway.h"
#include "log.h"
#include "util.h"
#include "logs.h"
#include "stats.h"

#define RING_BYTES_MAX     (4 << 20)   /* the recent-records ring also stays under this */
#define TAIL_CAP           CTL_STREAM_HIGH_WATER
#define EXPORT_RESUME_BELOW (4 * CTL_STREAM_LOW_WATER)
#define EXPORT_FIELDS_MAX  64

struct tail;

struct logs {
	struct gateway *gw;
	struct dbq *dbq;
	struct audit_record *ring[LOGS_RECENT];  /* packed; ring[(head - 1) % N] is newest */
	size_t head, count, bytes;
	struct tail *tails;                      /* live followers */
};

/* Every field, kept bodies included: tail events and show. */
static const int all_fields[AUDIT_NFIELDS] = {
	0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
	24, 25, 26, 27, 28, 29, 30, 31, 32, 33,
};
_Static_assert(AUDIT_NFIELDS == 34, "all_fields lists every audit field");

static json_t *record_event(const struct audit_record *r)
{
	return audit_record_json(r, all_fields, AUDIT_NFIELDS);
}

/* The db file is there; false with errno ENOENT when it is not (yet): no rows. */
static bool db_exists(const char *path)
{
	struct stat st;

	return path && *path && stat(path, &st) == 0;
}

/* ---- the ring of recent records ---- */

static size_t ring_index(const struct logs *l, size_t i)   /* i = 0: newest */
{
	return (l->head + LOGS_RECENT - 1 - i) % LOGS_RECENT;
}

static void ring_drop_oldest(struct logs *l)
{
	size_t k = ring_index(l, l->count - 1);

	l->bytes -= audit_record_bytes(l->ring[k]);
	audit_record_free(l->ring[k]);
	l->ring[k] = NULL;
	l->count--;
}

static void ring_add(struct logs *l, const struct audit_record *r)
{
	/* the record the writer gets is never changed: hold it too rather than copy it (the
	 * bodies, kept for routes that log them, are not for the ring) */
	struct audit_record *kept = audit_record_share(r);
	size_t size = audit_record_bytes(kept);

	if (size > RING_BYTES_MAX / 4) {
		audit_record_free(kept);    /* a monster row is not worth evicting hundreds for */
		return;
	}
	while (l->count && (l->count == LOGS_RECENT || l->bytes + size > RING_BYTES_MAX))
		ring_drop_oldest(l);
	l->ring[l->head] = kept;
	l->bytes += size;
	l->head = (l->head + 1) % LOGS_RECENT;
	l->count++;
}

static const struct audit_record *ring_find(const struct logs *l, const char *id)
{
	for (size_t i = 0; i < l->count; i++) {
		const struct audit_record *r = l->ring[ring_index(l, i)];

		if (r->request_id && strcmp(r->request_id, id) == 0)
			return r;
	}
	return NULL;
}

/* ---- filters (shared by tail and export) ---- */

struct filter {
	int64_t key_id;     /* -1 any, 0 requests without a key, N that key */
	int64_t user_id;    /* -1 any, 0 requests without a user, N that user */
	char *route;        /* NULL any */
	int status;         /* 0 any, 1..5 a class, 100..599 exact */
	int is_stream;      /* -1 any */
	char *error;        /* NULL any, "" any error, else that kind */
};

static void filter_clear(struct filter *f)
{
	free(f->route);
	free(f->error);
	memset(f, 0, sizeof(*f));
}

/* status: 404, "404", "4xx" (or "4XX"). */
static bool parse_status(json_t *v, int *out)
{
	const char *s;

	if (json_is_integer(v)) {
		json_int_t n = json_integer_value(v);

		if (n < 100 || n > 599)
			return false;
		*out = (int)n;
		return true;
	}
	s = json_string_value(v);
	if (!s || strlen(s) != 3 || s[0] < '1' || s[0] > '5')
		return false;
	if ((s[1] == 'x' || s[1] == 'X') && (s[2] == 'x' || s[2] == 'X')) {
		*out = s[0] - '0';
		return true;
	}
	if (s[1] < '0' || s[1] > '9' || s[2] < '0' || s[2] > '9')
		return false;
	*out = atoi(s);
	return true;
}

/* Read the filter arguments; false after replying. */
static bool filter_parse(struct ctl_call *call, json_t *args, struct filter *f)
{
	json_int_t key_id = -1, user_id = -1;
	const char *route = NULL;
	bool stream = false;
	json_t *v;

	memset(f, 0, sizeof(*f));
	f->key_id = -1;
	f->user_id = -1;
	f->is_stream = -1;
	if (!ctl_arg_int(call, args, "key_id", false, 0, INT64_MAX, &key_id) ||
	    !ctl_arg_int(call, args, "user_id", false, 0, INT64_MAX, &user_id) ||
	    !ctl_arg_string(call, args, "route", false, &route))
		return false;
	f->key_id = key_id;
	f->user_id = user_id;
	v = json_object_get(args, "status");
	if (v && !json_is_null(v) && !parse_status(v, &f->status)) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL,
		                "'status' must be a status (100 to 599) or a class like \"5xx\"");
		return false;
	}
	v = json_object_get(args, "stream");
	if (v && !json_is_null(v)) {
		if (!ctl_arg_bool(call, args, "stream", &stream))
			return false;
		f->is_stream = stream;
	}
	v = json_object_get(args, "error");
	if (json_is_true(v)) {
		f->error = xstrdup("");
	} else if (v && !json_is_null(v)) {
		if (!json_is_string(v) || json_string_length(v) == 0) {
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'error' must be an error kind "
			                "(e.g. \"timeout\") or true for any error");
			return false;
		}
		f->error = xstrdup(json_string_value(v));
	}
	f->route = xstrdup(route);
	return true;
}

static void filter_query(const struct filter *f, struct audit_query *q)
{
	audit_query_init(q);
	q->key_id = f->key_id;
	q->user_id = f->user_id;
	q->route = f->route;
	q->status = f->status;
	q->is_stream = f->is_stream;
	q->error = f->error;
}

static bool filter_match(const struct filter *f, const struct audit_record *r)
{
	if (f->key_id == 0 && r->key_id > 0)
		return false;
	if (f->key_id > 0 && r->key_id != f->key_id)
		return false;
	if (f->user_id == 0 && r->user_id > 0)
		return false;
	if (f->user_id > 0 && r->user_id != f->user_id)
		return false;
	if (f->route && (!r->route || strcmp(f->route, r->route) != 0))
		return false;
	if (f->status >= 100 && r->status != f->status)
		return false;
	if (f->status > 0 && f->status < 10 && r->status / 100 != f->status)
		return false;
	if (f->is_stream >= 0 && (int)r->is_stream != f->is_stream)
		return false;
	if (f->error && (!r->error || (*f->error && strcmp(f->error, r->error) != 0)))
		return false;
	return true;
}

/* ---- logs.tail ---- */

struct tail_item {
	double ts;
	size_t seq;           /* tie-break: database rows first, then ring order */
	char *id;
	json_t *ev;
};

struct tail {
	struct logs *l;
	struct ctl_call *call;    /* NULL once the client went away (job still running) */
	struct dbq_job *job;
	char *db_path;
	struct filter f;
	bool follow;
	size_t lines;
	/* filled by tail_work */
	struct tail_item *items;
	size_t nitems;
	char *err;
	/* live */
	bool live, dropping;
	json_int_t dropped;
	struct tail *prev, *next;
};

static void tail_free(struct tail *t)
{
	for (size_t i = 0; i < t->nitems; i++) {
		free(t->items[i].id);
		json_decref(t->items[i].ev);
	}
	free(t->items);
	free(t->err);
	free(t->db_path);
	filter_clear(&t->f);
	free(t);
}

static void tail_unlink(struct tail *t)
{
	if (!t->live)
		return;
	if (t->prev)
		t->prev->next = t->next;
	else
		t->l->tails = t->next;
	if (t->next)
		t->next->prev = t->prev;
	t->prev = t->next = NULL;
	t->live = false;
}

/* Worker: the newest `lines` matching rows, newest first, within the byte budget. */
static void tail_work(struct dbq_job *job, void *arg)
{
	struct tail *t = arg;
	struct audit_query q;
	struct audit_cursor *cur;
	struct audit_record r = { 0 };
	size_t bytes = 0;
	char *err = NULL;
	int rc = 0;

	if (!db_exists(t->db_path)) {
		if (errno != ENOENT)
			t->err = xasprintf("cannot open audit database %s: %s", t->db_path,
			                   strerror(errno));
		return;
	}
	filter_query(&t->f, &q);
	q.newest_first = true;
	q.limit = t->lines;
	cur = audit_query_open(t->db_path, &q, &err);
	if (!cur) {
		t->err = err ? err : xasprintf("cannot query the audit database");
		return;
	}
	t->items = xcalloc(t->lines, sizeof(*t->items));
	while (t->nitems < t->lines && (rc = audit_cursor_next(cur, &r)) == 1) {
		struct tail_item *it = &t->items[t->nitems];

		bytes += audit_record_bytes(&r);
		if (bytes > LOGS_TAIL_BUDGET || dbq_job_cancelled(job))
			break;
		it->ts = r.started_at;
		it->seq = t->nitems;
		it->id = xstrdup(r.request_id ? r.request_id : "");
		it->ev = record_event(&r);
		t->nitems++;
	}
	if (rc < 0)
		t->err = xasprintf("%s", audit_cursor_error(cur));
	audit_record_clear(&r);
	audit_cursor_close(cur);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_item_newest_first(const void *a, const void *b)
{
	const struct tail_item *x = a, *y = b;

	if (x->ts != y->ts)
		return x->ts > y->ts ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Add the matching recent records the database did not return, then send the newest
 * `lines` oldest first. */
static void tail_send_initial(struct tail *t)
{
	struct logs *l = t->l;
	char **ids = xcalloc(t->nitems + 1, sizeof(*ids));
	size_t nids = t->nitems, n;

	for (size_t i = 0; i < t->nitems; i++)
		ids[i] = t->items[i].id;
	qsort(ids, nids, sizeof(*ids), cmp_str);
	if (t->lines && l->count) {
		t->items = realloc(t->items, (t->nitems + l->count) * sizeof(*t->items));
		if (!t->items)
			abort();
	}
	for (size_t i = 0; t->lines && i < l->count; i++) {
		const struct audit_record *r = l->ring[ring_index(l, i)];
		struct tail_item *it;
		const char *id = r->request_id ? r->request_id : "";

		if (!filter_match(&t->f, r) || bsearch(&id, ids, nids, sizeof(*ids), cmp_str))
			continue;
		it = &t->items[t->nitems];
		it->ts = r->started_at;
		it->seq = t->nitems;
		it->id = xstrdup(id);
		it->ev = record_event(r);
		t->nitems++;
	}
	free(ids);
	if (t->nitems)
		qsort(t->items, t->nitems, sizeof(*t->items), cmp_item_newest_first);
	n = t->nitems < t->lines ? t->nitems : t->lines;
	for (size_t i = n; i-- > 0;) {
		json_t *ev = t->items[i].ev;

		t->items[i].ev = NULL;
		ctl_stream_event(t->call, ev);
	}
}

/* Initial rows are out: follow, or end. */
static void tail_continue(struct tail *t)
{
	if (t->err) {
		ctl_stream_fail(t->call, CTL_E_INTERNAL, t->err);
		tail_free(t);
		return;
	}
	tail_send_initial(t);
	if (!t->follow) {
		ctl_stream_end(t->call);
		tail_free(t);
		return;
	}
	for (size_t i = 0; i < t->nitems; i++) {
		free(t->items[i].id);
		json_decref(t->items[i].ev);
	}
	free(t->items);
	t->items = NULL;
	t->nitems = 0;
	t->live = true;
	t->next = t->l->tails;
	if (t->next)
		t->next->prev = t;
	t->l->tails = t;
}

static void tail_done(void *arg, bool cancelled)
{
	struct tail *t = arg;

	t->job = NULL;
	if (cancelled || !t->call) {
		tail_free(t);
		return;
	}
	tail_continue(t);
}

static void tail_cancel(struct ctl_call *call, void *arg)
{
	struct tail *t = arg;

	(void)call;
	t->call = NULL;
	if (t->job) {
		dbq_cancel(t->job);     /* tail_done frees it */
		return;
	}
	tail_unlink(t);
	tail_free(t);
}

static void send_dropped(struct tail *t)
{
	if (t->dropped && ctl_stream_event(t->call, json_pack("{s:I}", "dropped", t->dropped)) == 0)
		t->dropped = 0;
}

static void tail_drain(struct ctl_call *call, void *arg)
{
	struct tail *t = arg;

	(void)call;
	if (!t->live)
		return;
	t->dropping = false;
	send_dropped(t);
}

void logs_h_tail(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { "follow", "lines", "key_id", "user_id", "route",
	                                       "status", "stream", "error", NULL };
	struct gateway *gw = ctl_call_gateway(call);
	struct tail *t;
	json_int_t lines = 10;
	bool follow = false;

	if (!ctl_args_only(call, args, allowed) || !ctl_arg_bool(call, args, "follow", &follow) ||
	    !ctl_arg_int(call, args, "lines", false, 0, LOGS_TAIL_MAX, &lines))
		return;
	t = xcalloc(1, sizeof(*t));
	if (!filter_parse(call, args, &t->f)) {
		tail_free(t);
		return;
	}
	t->l = ctl_call_logs(call);
	t->call = call;
	t->follow = follow;
	t->lines = (size_t)lines;
	t->db_path = xstrdup(gw->cfg->audit_path ? gw->cfg->audit_path : "");
	ctl_stream_begin(call, tail_cancel, tail_drain, t);
	if (t->lines)
		t->job = dbq_submit(t->l->dbq, tail_work, tail_done, t);
	else
		tail_continue(t);
}

void logs_publish(struct logs *l, const struct audit_record *r)
{
	json_t *ev = NULL;

	if (!l)
		return;
	ring_add(l, r);
	for (struct tail *t = l->tails; t; t = t->next) {
		if (!filter_match(&t->f, r))
			continue;
		/* Over the cap: drop until the output has drained, then say how many. */
		if (t->dropping || ctl_stream_backlog(t->call) > TAIL_CAP) {
			t->dropping = true;
			t->dropped++;
			continue;
		}
		send_dropped(t);
		if (!ev)
			ev = record_event(r);
		if (ctl_stream_event(t->call, json_incref(ev)) < 0)
			t->dropped++;
	}
	json_decref(ev);
}

/* ---- logs.export ---- */

struct export {
	struct ctl_call *call;    /* NULL once the client went away (job still running) */
	struct dbq_job *job;
	char *db_path;
	struct filter f;
	double since, until;
	bool csv;
	int fields[EXPORT_FIELDS_MAX];
	size_t nfields;           /* 0: the default columns */
	/* where the next batch starts: after the rows at pos_ts whose ids are in ties */
	bool have_pos;
	double pos_ts;
	char **ties;
	size_t nties, cap_ties;
	/* one batch, worker -> loop */
	json_t *batch;
	bool eof;
	char *err;
	bool waiting;             /* for the client to drain */
	json_int_t rows;
};

static void export_clear_ties(struct export *e)
{
	for (size_t i = 0; i < e->nties; i++)
		free(e->ties[i]);
	e->nties = 0;
}

static void export_free(struct export *e)
{
	export_clear_ties(e);
	free(e->ties);
	json_decref(e->batch);
	free(e->err);
	free(e->db_path);
	filter_clear(&e->f);
	free(e);
}

static bool export_is_tie(const struct export *e, const char *id)
{
	for (size_t i = 0; i < e->nties; i++)
		if (strcmp(e->ties[i], id) == 0)
			return true;
	return false;
}

static void export_add_tie(struct export *e, const char *id)
{
	if (e->nties == e->cap_ties) {
		e->cap_ties = e->cap_ties ? e->cap_ties * 2 : 4;
		e->ties = realloc(e->ties, e->cap_ties * sizeof(*e->ties));
		if (!e->ties)
			abort();
	}
	e->ties[e->nties++] = xstrdup(id);
}

/* A JSON string of s, with U+FFFD for bytes that are not UTF-8 (a CSV line carries the
 * client's path as it came). */
static json_t *json_text(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	json_t *j = json_string(s);
	char *buf, *o;

	if (j)
		return j;
	buf = o = xcalloc(strlen(s) * 3 + 1, 1);
	while (*p) {
		size_t n = 0;
		unsigned c = *p, cp = 0;

		if (c < 0x80)
			n = 1, cp = c;
		else if (c >= 0xc2 && c <= 0xdf)
			n = 2, cp = c & 0x1f;
		else if (c >= 0xe0 && c <= 0xef)
			n = 3, cp = c & 0x0f;
		else if (c >= 0xf0 && c <= 0xf4)
			n = 4, cp = c & 0x07;
		for (size_t i = 1; i < n; i++) {
			if ((p[i] & 0xc0) != 0x80) {
				n = 0;
				break;
			}
			cp = (cp << 6) | (p[i] & 0x3f);
		}
		if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			n = 0;
		if (n) {
			memcpy(o, p, n);
			o += n;
			p += n;
		} else {
			memcpy(o, "\xef\xbf\xbd", 3);
			o += 3;
			p++;
		}
	}
	j = json_string(buf);
	free(buf);
	return j ? j : json_string("");
}

static json_t *export_event(const struct export *e, const struct audit_record *r)
{
	const int *fields = e->nfields ? e->fields : NULL;
	char *line;
	json_t *ev;

	if (!e->csv)
		return audit_record_json(r, fields, e->nfields);
	line = audit_record_csv(r, fields, e->nfields);
	ev = json_pack("{s:o}", "line", json_text(line));
	free(line);
	return ev;
}

/* Worker: the next batch, read on a fresh connection from where the last one stopped. */
static void export_work(struct dbq_job *job, void *arg)
{
	struct export *e = arg;
	struct audit_query q;
	struct audit_cursor *cur;
	struct audit_record r = { 0 };
	size_t sent = 0;
	char *err = NULL;
	int rc = 0;

	e->batch = json_array();
	if (!e->batch)
		abort();
	if (!db_exists(e->db_path)) {
		if (errno != ENOENT)
			e->err = xasprintf("cannot open audit database %s: %s", e->db_path,
			                   strerror(errno));
		e->eof = true;
		return;
	}
	filter_query(&e->f, &q);
	q.since = e->have_pos ? e->pos_ts : e->since;
	q.until = e->until;
	q.limit = LOGS_EXPORT_BATCH + e->nties;
	cur = audit_query_open(e->db_path, &q, &err);
	if (!cur) {
		e->err = err ? err : xasprintf("cannot query the audit database");
		return;
	}
	while (sent < LOGS_EXPORT_BATCH && (rc = audit_cursor_next(cur, &r)) == 1) {
		const char *id = r.request_id ? r.request_id : "";

		if (e->have_pos && r.started_at == e->pos_ts && export_is_tie(e, id))
			continue;
		if (!e->have_pos || r.started_at != e->pos_ts) {
			export_clear_ties(e);
			e->pos_ts = r.started_at;
			e->have_pos = true;
		}
		export_add_tie(e, id);
		json_array_append_new(e->batch, export_event(e, &r));
		sent++;
		if (dbq_job_cancelled(job))
			break;
	}
	if (rc < 0)
		e->err = xasprintf("%s", audit_cursor_error(cur));
	else if (rc == 0)
		e->eof = true;
	audit_record_clear(&r);
	audit_cursor_close(cur);
}

static void export_done(void *arg, bool cancelled);

static void export_next(struct export *e)
{
	e->waiting = false;
	e->job = dbq_submit(ctl_call_dbq(e->call), export_work, export_done, e);
}

static void export_done(void *arg, bool cancelled)
{
	struct export *e = arg;
	size_t i;
	json_t *ev;

	e->job = NULL;
	if (cancelled || !e->call) {
		export_free(e);
		return;
	}
	if (e->err) {
		ctl_stream_fail(e->call, CTL_E_INTERNAL, e->err);
		export_free(e);
		return;
	}
	json_array_foreach(e->batch, i, ev) {
		if (ctl_stream_event(e->call, json_incref(ev)) < 0) {
			ctl_stream_fail(e->call, CTL_E_INTERNAL, "out of memory sending the export");
			export_free(e);
			return;
		}
	}
	e->rows += (json_int_t)json_array_size(e->batch);
	json_decref(e->batch);
	e->batch = NULL;
	if (e->eof) {
		ctl_stream_end(e->call);
		export_free(e);
		return;
	}
	/* Fetch the next batch while this one is written, unless the client lags. */
	if (ctl_stream_backlog(e->call) <= EXPORT_RESUME_BELOW)
		export_next(e);
	else
		e->waiting = true;
}

static void export_drain(struct ctl_call *call, void *arg)
{
	struct export *e = arg;

	(void)call;
	if (e->waiting && !e->job)
		export_next(e);
}

static void export_cancel(struct ctl_call *call, void *arg)
{
	struct export *e = arg;

	(void)call;
	e->call = NULL;
	if (e->job)
		dbq_cancel(e->job);     /* export_done frees it */
	else
		export_free(e);
}

void logs_h_export(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { "format", "since", "until", "fields", "key_id",
	                                       "user_id", "route", "status", "stream", "error",
	                                       NULL };
	struct gateway *gw = ctl_call_gateway(call);
	const char *format, *fields = NULL;
	double since = 0, until = 0;
	struct export *e;
	char *err = NULL;

	if (!ctl_args_only(call, args, allowed) ||
	    !ctl_arg_string(call, args, "format", true, &format) ||
	    !stats_arg_time(call, args, "since", &since) ||
	    !stats_arg_time(call, args, "until", &until) ||
	    !ctl_arg_string(call, args, "fields", false, &fields))
		return;
	if (strcmp(format, "csv") != 0 && strcmp(format, "jsonl") != 0) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'format' must be \"csv\" or \"jsonl\"");
		return;
	}
	if (until > 0 && since >= until) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'since' must be before 'until'");
		return;
	}
	e = xcalloc(1, sizeof(*e));
	if (!filter_parse(call, args, &e->f)) {
		export_free(e);
		return;
	}
	if (fields) {
		int n = audit_fields_parse(fields, e->fields, EXPORT_FIELDS_MAX, &err);

		if (n < 0) {
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "%s", err ? err : "bad 'fields'");
			free(err);
			export_free(e);
			return;
		}
		e->nfields = (size_t)n;
	}
	e->csv = format[0] == 'c';
	e->since = since;
	/* Without an end, stop at now: a busy gateway must not keep a slow export going
	 * forever. */
	e->until = until > 0 ? until : stats_now();
	e->db_path = xstrdup(gw->cfg->audit_path ? gw->cfg->audit_path : "");
	e->call = call;
	ctl_stream_begin(call, export_cancel, export_drain, e);
	if (e->csv) {
		char *head = audit_csv_header(e->nfields ? e->fields : NULL, e->nfields);

		ctl_stream_event(call, json_pack("{s:s}", "line", head));
		free(head);
	}
	export_next(e);
}

/* ---- logs.show ---- */

struct show {
	struct logs *l;
	struct ctl_call *call;
	struct dbq_job *job;
	char *db_path;
	char *id;
	struct audit_record rec;
	int found;             /* audit_get's answer */
	char *err;
};

static void show_free(struct show *s)
{
	audit_record_clear(&s->rec);
	free(s->db_path);
	free(s->id);
	free(s->err);
	free(s);
}

static void show_work(struct dbq_job *job, void *arg)
{
	struct show *s = arg;

	(void)job;
	if (!db_exists(s->db_path)) {
		int e = errno;

		s->found = e == ENOENT ? 0 : -1;
		if (e != ENOENT)
			s->err = xasprintf("cannot open audit database %s: %s", s->db_path,
			                   strerror(e));
		return;
	}
	s->found = audit_get(s->db_path, s->id, &s->rec, &s->err);
}

static void show_done(void *arg, bool cancelled)
{
	struct show *s = arg;
	const struct audit_record *r;

	s->job = NULL;
	if (cancelled || !s->call) {
		show_free(s);
		return;
	}
	r = s->found == 1 ? &s->rec : ring_find(s->l, s->id);
	if (r)
		ctl_stream_result(s->call, record_event(r));
	else if (s->found < 0)
		ctl_stream_fail(s->call, CTL_E_INTERNAL, s->err ? s->err : "cannot read the audit "
		                "database");
	else {
		char *msg = xasprintf("no request with id %.100s in the audit log", s->id);

		ctl_stream_fail(s->call, CTL_E_NOT_FOUND, msg);
		free(msg);
	}
	show_free(s);
}

static void show_cancel(struct ctl_call *call, void *arg)
{
	struct show *s = arg;

	(void)call;
	s->call = NULL;
	dbq_cancel(s->job);          /* show_done frees it */
}

void logs_h_show(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { "id", NULL };
	struct gateway *gw = ctl_call_gateway(call);
	const char *id;
	struct show *s;

	if (!ctl_args_only(call, args, allowed) || !ctl_arg_string(call, args, "id", true, &id))
		return;
	s = xcalloc(1, sizeof(*s));
	s->l = ctl_call_logs(call);
	s->call = call;
	s->id = xstrdup(id);
	s->db_path = xstrdup(gw->cfg->audit_path ? gw->cfg->audit_path : "");
	ctl_stream_begin(call, show_cancel, NULL, s);
	s->job = dbq_submit(s->l->dbq, show_work, show_done, s);
}

/* ---- lifetime ---- */

struct logs *logs_new(struct gateway *gw, struct dbq *dbq)
{
	struct logs *l = calloc(1, sizeof(*l));

	if (!l)
		return NULL;
	l->gw = gw;
	l->dbq = dbq;
	return l;
}

void logs_stop(struct logs *l)
{
	if (!l)
		return;
	while (l->tails) {
		struct tail *t = l->tails;
		struct ctl_call *call = t->call;

		tail_unlink(t);
		send_dropped(t);
		ctl_stream_end(call);
		tail_free(t);
	}
}

void logs_free(struct logs *l)
{
	if (!l)
		return;
	logs_stop(l);
	while (l->count)
		ring_drop_oldest(l);
	free(l);
}
