/* Off-loop audit-database queries (the dbq worker pool) and the "metrics" command.
 *
 * Threads: the loop thread owns every struct ctl_call and all of struct dbq except what
 * the mutex guards (the two job lists). A job's arg belongs to the worker while work()
 * runs and to the loop thread before and after; the mutex hand-off orders the two. */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <sqlite3.h>

#include "config.h"
#include "control.h"
#include "gateway.h"
#include "log.h"
#include "stats.h"

/* ---- dbq: the worker pool ---- */

#define DBQ_THREADS 2

struct dbq_job {
	struct dbq *q;
	dbq_work_fn work;
	dbq_done_fn done;
	void *arg;
	atomic_bool cancelled;
	struct dbq_job *next;
};

struct dbq {
	struct event_base *base;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct dbq_job *todo, **todo_tail;   /* guarded by mu */
	struct dbq_job *done, **done_tail;   /* guarded by mu */
	atomic_bool stopping;
	pthread_t threads[DBQ_THREADS];
	int nthreads;
	int wake[2];                         /* workers write a byte when a job is done */
	struct event *wake_ev;
};

static char *strdup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *strdup_printf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	return s;
}

static void push(struct dbq_job ***tail, struct dbq_job *job)
{
	job->next = NULL;
	**tail = job;
	*tail = &job->next;
}

static void *worker_main(void *arg)
{
	struct dbq *q = arg;

	pthread_mutex_lock(&q->mu);
	for (;;) {
		struct dbq_job *job;
		ssize_t w;

		while (!q->todo && !atomic_load(&q->stopping))
			pthread_cond_wait(&q->cv, &q->mu);
		if (atomic_load(&q->stopping))
			break;         /* dbq_free hands what is left to its done callbacks */
		job = q->todo;
		q->todo = job->next;
		if (!q->todo)
			q->todo_tail = &q->todo;
		pthread_mutex_unlock(&q->mu);

		if (!dbq_job_cancelled(job))
			job->work(job, job->arg);

		pthread_mutex_lock(&q->mu);
		push(&q->done_tail, job);
		/* A full pipe already holds a wake-up; nothing is lost by EAGAIN. */
		do
			w = write(q->wake[1], "j", 1);
		while (w < 0 && errno == EINTR);
	}
	pthread_mutex_unlock(&q->mu);
	return NULL;
}

/* Run the done callbacks of finished jobs, on the loop thread. */
static void run_done(struct dbq *q)
{
	struct dbq_job *list;

	pthread_mutex_lock(&q->mu);
	list = q->done;
	q->done = NULL;
	q->done_tail = &q->done;
	pthread_mutex_unlock(&q->mu);
	while (list) {
		struct dbq_job *job = list;

		list = job->next;
		job->done(job->arg, atomic_load(&job->cancelled));
		free(job);
	}
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
	char buf[256];

	(void)what;
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	run_done(arg);
}

struct dbq *dbq_new(struct event_base *base, char **err)
{
	struct dbq *q = calloc(1, sizeof(*q));
	sigset_t all, old;

	*err = NULL;
	if (!q) {
		*err = strdup_printf("out of memory");
		return NULL;
	}
	q->base = base;
	q->wake[0] = q->wake[1] = -1;
	q->todo_tail = &q->todo;
	q->done_tail = &q->done;
	pthread_mutex_init(&q->mu, NULL);
	pthread_cond_init(&q->cv, NULL);
	atomic_init(&q->stopping, false);
	if (pipe2(q->wake, O_NONBLOCK | O_CLOEXEC) < 0) {
		*err = strdup_printf("cannot create a pipe for the query threads: %s", strerror(errno));
		goto fail;
	}
	q->wake_ev = event_new(base, q->wake[0], EV_READ | EV_PERSIST, wake_cb, q);
	if (!q->wake_ev || event_add(q->wake_ev, NULL) < 0) {
		*err = strdup_printf("out of memory");
		goto fail;
	}
	/* Signals belong to the loop thread (libevent's signal events). */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (int i = 0; i < DBQ_THREADS; i++) {
		int e = pthread_create(&q->threads[i], NULL, worker_main, q);

		if (e) {
			*err = strdup_printf("cannot start a query thread: %s", strerror(e));
			break;
		}
		q->nthreads++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (*err)
		goto fail;
	return q;
fail:
	dbq_free(q);
	return NULL;
}

void dbq_free(struct dbq *q)
{
	struct dbq_job *j;

	if (!q)
		return;
	pthread_mutex_lock(&q->mu);
	atomic_store(&q->stopping, true);
	for (j = q->todo; j; j = j->next)
		atomic_store(&j->cancelled, true);
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mu);
	for (int i = 0; i < q->nthreads; i++)
		pthread_join(q->threads[i], NULL);
	/* No thread left: the lists are ours. Jobs never started join the finished ones. */
	if (q->todo) {
		*q->done_tail = q->todo;
		q->done_tail = q->todo_tail;
		q->todo = NULL;
		q->todo_tail = &q->todo;
	}
	for (j = q->done; j; j = j->next)
		atomic_store(&j->cancelled, true);
	run_done(q);
	if (q->wake_ev)
		event_free(q->wake_ev);
	if (q->wake[0] >= 0)
		close(q->wake[0]);
	if (q->wake[1] >= 0)
		close(q->wake[1]);
	pthread_cond_destroy(&q->cv);
	pthread_mutex_destroy(&q->mu);
	free(q);
}

struct dbq_job *dbq_submit(struct dbq *q, dbq_work_fn work, dbq_done_fn done, void *arg)
{
	struct dbq_job *job = calloc(1, sizeof(*job));

	if (!job)
		abort();
	job->q = q;
	job->work = work;
	job->done = done;
	job->arg = arg;
	atomic_init(&job->cancelled, false);
	pthread_mutex_lock(&q->mu);
	push(&q->todo_tail, job);
	pthread_cond_signal(&q->cv);
	pthread_mutex_unlock(&q->mu);
	return job;
}

void dbq_cancel(struct dbq_job *job)
{
	if (job)
		atomic_store(&job->cancelled, true);
}

bool dbq_job_cancelled(const struct dbq_job *job)
{
	return atomic_load(&job->cancelled) || atomic_load(&job->q->stopping);
}

/* ---- shared helpers ---- */

double stats_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

bool stats_arg_time(struct ctl_call *call, json_t *args, const char *key, double *out)
{
	json_t *v = json_object_get(args, key);

	if (!v || json_is_null(v))
		return true;
	if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 253402300799.0) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL,
		                "'%s' must be a time in unix seconds (fastgate-cli accepts ISO 8601 "
		                "and relative times like 30m)", key);
		return false;
	}
	*out = json_number_value(v);
	return true;
}

/* ---- metrics ---- */

#define HOURS_MAX   2160     /* 90 days of hourly rows */
#define DAYS_MAX    3660
#define GROUPS_MAX  100      /* breakdown rows; the rest are counted, not listed */
#define ERR_SQL     "(status >= 500 OR error IS NOT NULL)"

enum by { BY_NONE, BY_ROUTE, BY_KEY, BY_MODEL };

struct metrics_job {
	struct ctl_call *call;   /* NULL once the client went away */
	struct dbq_job *job;
	char *db_path;
	double now, since, until;
	int step;                /* series bucket in seconds: 0 (none), 3600, 86400 */
	double first;            /* start of the first bucket */
	int nbuckets;
	enum by by;
	json_t *result;
	char *err;
};

/* Which rows a query covers: a time range and, optionally, one group of a breakdown. */
struct scope {
	double lo, hi;
	const char *col;         /* NULL: no group */
	bool gnull;              /* the group is the NULL value */
	bool gint;
	sqlite3_int64 gi;
	const char *gs;
};

static void bind_scope(sqlite3_stmt *st, const struct scope *sc)
{
	sqlite3_bind_double(st, 1, sc->lo);
	sqlite3_bind_double(st, 2, sc->hi);
	if (!sc->col)
		return;
	if (sc->gnull)
		sqlite3_bind_null(st, 3);
	else if (sc->gint)
		sqlite3_bind_int64(st, 3, sc->gi);
	else
		sqlite3_bind_text(st, 3, sc->gs, -1, SQLITE_TRANSIENT);
}

/* "started_at >= ?1 AND started_at < ?2 [AND col IS ?3]" into buf. */
static const char *scope_where(const struct scope *sc, char *buf, size_t size)
{
	snprintf(buf, size, "started_at >= ?1 AND started_at < ?2%s%s%s",
	         sc->col ? " AND " : "", sc->col ? sc->col : "", sc->col ? " IS ?3" : "");
	return buf;
}

static int progress_cb(void *arg)
{
	return dbq_job_cancelled(arg);
}

static void set_sql_err(struct metrics_job *m, sqlite3 *db, const char *what)
{
	if (!m->err)
		m->err = strdup_printf("%s in audit database %s: %s", what, m->db_path,
		                       sqlite3_errmsg(db));
}

static double round3(double v)
{
	return round(v * 1000.0) / 1000.0;
}

static json_t *ms_or_null(bool have, double v)
{
	return have ? json_real(round3(v)) : json_null();
}

/* Nearest-rank percentile p of `col` over the n non-null values in scope:
 * the value at 1-based rank ceil(p/100 * n), read with ORDER BY col LIMIT 1 OFFSET rank-1.
 * 1 with *out set, 0 when n is 0, -1 on error. */
static int percentile(struct metrics_job *m, sqlite3 *db, const struct scope *sc,
                      const char *col, sqlite3_int64 n, double p, double *out)
{
	char where[160], sql[400];
	sqlite3_stmt *st = NULL;
	sqlite3_int64 rank;
	int rc, ret = -1;

	if (n <= 0)
		return 0;
	rank = (sqlite3_int64)ceil(p / 100.0 * (double)n);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	snprintf(sql, sizeof(sql), "SELECT %s FROM audit WHERE %s AND %s IS NOT NULL "
	         "ORDER BY %s LIMIT 1 OFFSET ?4", col, scope_where(sc, where, sizeof(where)), col,
	         col);
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
		set_sql_err(m, db, "cannot query");
		goto done;
	}
	bind_scope(st, sc);
	sqlite3_bind_int64(st, 4, rank - 1);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*out = sqlite3_column_double(st, 0);
		ret = 1;
	} else if (rc == SQLITE_DONE) {
		ret = 0;     /* rows vanished (pruned) between the count and now */
	} else {
		set_sql_err(m, db, "cannot read");
	}
done:
	sqlite3_finalize(st);
	return ret;
}

/* {"p50":..,"p95":..,"p99":..} of col over scope; NULL on error. */
static json_t *percentiles(struct metrics_job *m, sqlite3 *db, const struct scope *sc,
                           const char *col, sqlite3_int64 n, const double *ps, size_t nps)
{
	json_t *o = json_object();

	for (size_t i = 0; o && i < nps; i++) {
		char name[32];
		double v = 0;
		int r = percentile(m, db, sc, col, n, ps[i], &v);

		if (r < 0) {
			json_decref(o);
			return NULL;
		}
		snprintf(name, sizeof(name), "p%g", ps[i]);
		json_object_set_new(o, name, ms_or_null(r > 0, v));
	}
	return o;
}

static const double P3[] = { 50, 95, 99 };
static const double P2[] = { 50, 95 };

/* One-row aggregate over the window. */
static json_t *summary(struct metrics_job *m, sqlite3 *db, const struct scope *sc)
{
	static const char sql[] =
		"SELECT COUNT(*), SUM(" ERR_SQL "),"
		" SUM(status BETWEEN 100 AND 199), SUM(status BETWEEN 200 AND 299),"
		" SUM(status BETWEEN 300 AND 399), SUM(status BETWEEN 400 AND 499),"
		" SUM(status >= 500), SUM(is_stream), COUNT(latency_ms), AVG(latency_ms),"
		" MAX(latency_ms), COUNT(ttfb_ms), SUM(prompt_tokens), SUM(completion_tokens),"
		" COUNT(DISTINCT key_id), COUNT(DISTINCT route), SUM(bytes_in), SUM(bytes_out),"
		" SUM(key_id IS NULL)"
		" FROM audit WHERE started_at >= ?1 AND started_at < ?2";
	sqlite3_stmt *st = NULL;
	sqlite3_int64 v[19] = { 0 };
	double avg = 0, max = 0;
	json_t *o = NULL, *lat, *ttfb;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
		set_sql_err(m, db, "cannot query");
		goto done;
	}
	bind_scope(st, sc);
	if (sqlite3_step(st) != SQLITE_ROW) {
		set_sql_err(m, db, "cannot read");
		goto done;
	}
	for (int i = 0; i < 19; i++)
		v[i] = sqlite3_column_int64(st, i);
	avg = sqlite3_column_double(st, 9);
	max = sqlite3_column_double(st, 10);
	sqlite3_finalize(st);
	st = NULL;

	lat = percentiles(m, db, sc, "latency_ms", v[8], P3, 3);
	ttfb = percentiles(m, db, sc, "ttfb_ms", v[11], P3, 3);
	if (!lat || !ttfb) {
		json_decref(lat);
		json_decref(ttfb);
		goto done;
	}
	json_object_set_new(lat, "avg", ms_or_null(v[8] > 0, avg));
	json_object_set_new(lat, "max", ms_or_null(v[8] > 0, max));
	o = json_pack("{s:I, s:I, s:o, s:{s:I, s:I, s:I, s:I, s:I}, s:I, s:o, s:o, s:{s:I, s:I},"
	              " s:{s:I, s:I}, s:I, s:I, s:I}",
	              "requests", (json_int_t)v[0],
	              "errors", (json_int_t)v[1],
	              "success_rate", v[0] ? json_real(round((double)(v[0] - v[1]) / (double)v[0]
	                                                     * 1e6) / 1e6) : json_null(),
	              "status", "1xx", (json_int_t)v[2], "2xx", (json_int_t)v[3],
	              "3xx", (json_int_t)v[4], "4xx", (json_int_t)v[5], "5xx", (json_int_t)v[6],
	              "streams", (json_int_t)v[7],
	              "latency_ms", lat,
	              "ttfb_ms", ttfb,
	              "tokens", "prompt", (json_int_t)v[12], "completion", (json_int_t)v[13],
	              "bytes", "in", (json_int_t)v[16], "out", (json_int_t)v[17],
	              "active_keys", (json_int_t)v[14],
	              "active_routes", (json_int_t)v[15],
	              "requests_without_key", (json_int_t)v[18]);
done:
	sqlite3_finalize(st);
	return o;
}

static json_int_t count_since(struct metrics_job *m, sqlite3 *db, double since, double until)
{
	sqlite3_stmt *st = NULL;
	json_int_t n = -1;

	if (sqlite3_prepare_v2(db, "SELECT COUNT(*) FROM audit WHERE started_at >= ?1 AND "
	                       "started_at < ?2", -1, &st, NULL) != SQLITE_OK) {
		set_sql_err(m, db, "cannot query");
		return -1;
	}
	sqlite3_bind_double(st, 1, since);
	sqlite3_bind_double(st, 2, until);
	if (sqlite3_step(st) == SQLITE_ROW)
		n = sqlite3_column_int64(st, 0);
	else
		set_sql_err(m, db, "cannot read");
	sqlite3_finalize(st);
	return n;
}

static json_t *series_row(double start, json_int_t requests, json_int_t errors, json_t *pct)
{
	return json_pack("{s:I, s:I, s:I, s:o, s:o}", "start", (json_int_t)start,
	                 "requests", requests, "errors", errors,
	                 "p50_ms", pct ? json_incref(json_object_get(pct, "p50")) : json_null(),
	                 "p95_ms", pct ? json_incref(json_object_get(pct, "p95")) : json_null());
}

/* One row per bucket from m->first, empty buckets included. db may be NULL (no data). */
static json_t *series(struct metrics_job *m, sqlite3 *db)
{
	static const char sql[] =
		"SELECT CAST((started_at - ?3) / ?4 AS INTEGER) AS b, COUNT(*), SUM(" ERR_SQL "),"
		" COUNT(latency_ms) FROM audit WHERE started_at >= ?1 AND started_at < ?2"
		" GROUP BY b ORDER BY b";
	struct scope sc = { .lo = m->since, .hi = m->until };
	sqlite3_stmt *st = NULL;
	json_t *a = json_array();
	int next = 0, rc = SQLITE_DONE;

	if (db) {
		if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
			set_sql_err(m, db, "cannot query");
			goto fail;
		}
		bind_scope(st, &sc);
		sqlite3_bind_double(st, 3, m->first);
		sqlite3_bind_int(st, 4, m->step);
	}
	while (db && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		int b = sqlite3_column_int(st, 0);
		struct scope bs;
		json_t *pct;

		if (b < 0 || b >= m->nbuckets)
			continue;
		for (; next < b; next++)
			json_array_append_new(a, series_row(m->first + (double)next * m->step, 0, 0,
			                                     NULL));
		bs = sc;
		bs.lo = fmax(m->since, m->first + (double)b * m->step);
		bs.hi = fmin(m->until, m->first + (double)(b + 1) * m->step);
		pct = percentiles(m, db, &bs, "latency_ms", sqlite3_column_int64(st, 3), P2, 2);
		if (!pct)
			goto fail;
		json_array_append_new(a, series_row(m->first + (double)b * m->step,
		                                     sqlite3_column_int64(st, 1),
		                                     sqlite3_column_int64(st, 2), pct));
		json_decref(pct);
		next = b + 1;
	}
	if (rc != SQLITE_DONE) {
		set_sql_err(m, db, "cannot read");
		goto fail;
	}
	for (; next < m->nbuckets; next++)
		json_array_append_new(a, series_row(m->first + (double)next * m->step, 0, 0, NULL));
	sqlite3_finalize(st);
	return a;
fail:
	sqlite3_finalize(st);
	json_decref(a);
	return NULL;
}

static const char *by_name(enum by by)
{
	return by == BY_ROUTE ? "route" : by == BY_KEY ? "key" : "model";
}

/* The busiest GROUPS_MAX groups of the window, busiest first. */
static json_t *breakdown(struct metrics_job *m, sqlite3 *db)
{
	const char *col = m->by == BY_ROUTE ? "route" : m->by == BY_KEY ? "key_id" : "model";
	struct scope sc = { .lo = m->since, .hi = m->until };
	sqlite3_stmt *st = NULL;
	char sql[600];
	json_t *rows = json_array(), *res = NULL;
	json_int_t groups = 0;
	int rc = SQLITE_DONE;

	if (db) {
		snprintf(sql, sizeof(sql),
		         "SELECT %s, COUNT(*), SUM(" ERR_SQL "), COUNT(latency_ms), AVG(latency_ms),"
		         " SUM(prompt_tokens), SUM(completion_tokens), MAX(key_name),"
		         " COUNT(*) OVER () FROM audit WHERE started_at >= ?1 AND started_at < ?2"
		         " GROUP BY %s ORDER BY COUNT(*) DESC, %s LIMIT %d", col, col, col,
		         GROUPS_MAX);
		if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
			set_sql_err(m, db, "cannot query");
			goto done;
		}
		bind_scope(st, &sc);
	}
	while (db && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		sqlite3_int64 n = sqlite3_column_int64(st, 1), errs = sqlite3_column_int64(st, 2);
		struct scope gs = sc;
		json_t *row, *pct;

		groups = sqlite3_column_int64(st, 8);
		gs.col = col;
		gs.gnull = sqlite3_column_type(st, 0) == SQLITE_NULL;
		gs.gint = m->by == BY_KEY;
		gs.gi = sqlite3_column_int64(st, 0);
		gs.gs = (const char *)sqlite3_column_text(st, 0);
		pct = percentiles(m, db, &gs, "latency_ms", sqlite3_column_int64(st, 3), P3, 3);
		if (!pct)
			goto done;
		row = json_object();
		if (m->by == BY_KEY) {
			json_object_set_new(row, "key_id", gs.gnull ? json_null() : json_integer(gs.gi));
			json_object_set_new(row, "key_name", sqlite3_column_type(st, 7) == SQLITE_NULL
			                    ? json_null()
			                    : json_string((const char *)sqlite3_column_text(st, 7)));
		} else {
			json_object_set_new(row, by_name(m->by), gs.gnull ? json_null()
			                                                  : json_string(gs.gs));
		}
		json_object_set_new(row, "requests", json_integer(n));
		json_object_set_new(row, "errors", json_integer(errs));
		json_object_set_new(row, "success_rate",
		                    n ? json_real(round((double)(n - errs) / (double)n * 1e6) / 1e6)
		                      : json_null());
		json_object_set_new(row, "latency_ms", pct);
		json_object_set_new(json_object_get(row, "latency_ms"), "avg",
		                    ms_or_null(sqlite3_column_int64(st, 3) > 0,
		                               sqlite3_column_double(st, 4)));
		json_object_set_new(row, "tokens", json_pack("{s:I, s:I}",
		                    "prompt", (json_int_t)sqlite3_column_int64(st, 5),
		                    "completion", (json_int_t)sqlite3_column_int64(st, 6)));
		json_array_append_new(rows, row);
	}
	if (rc != SQLITE_DONE) {
		set_sql_err(m, db, "cannot read");
		goto done;
	}
	res = json_pack("{s:s, s:O, s:I, s:b}", "by", by_name(m->by), "rows", rows,
	                "groups", groups, "truncated", groups > (json_int_t)json_array_size(rows));
done:
	sqlite3_finalize(st);
	json_decref(rows);
	return res;
}

/* The audit table exists (a database created by something else may not have it yet). */
static int have_table(struct metrics_job *m, sqlite3 *db)
{
	sqlite3_stmt *st = NULL;
	int rc, ret = -1;

	if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
	                       "name = 'audit'", -1, &st, NULL) != SQLITE_OK) {
		set_sql_err(m, db, "cannot read the schema");
		return -1;
	}
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		ret = 1;
	else if (rc == SQLITE_DONE)
		ret = 0;
	else
		set_sql_err(m, db, "cannot read the schema");
	sqlite3_finalize(st);
	return ret;
}

/* Worker thread. */
static void metrics_work(struct dbq_job *job, void *arg)
{
	struct metrics_job *m = arg;
	struct scope sc = { .lo = m->since, .hi = m->until };
	struct stat stt;
	sqlite3 *db = NULL;
	json_t *res = NULL, *v;
	json_int_t last_hour = 0;

	if (stat(m->db_path, &stt) == 0) {
		if (sqlite3_open_v2(m->db_path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
		                    NULL) != SQLITE_OK) {
			m->err = strdup_printf("cannot open audit database %s: %s", m->db_path,
			                       db ? sqlite3_errmsg(db) : "out of memory");
			goto done;
		}
		sqlite3_busy_timeout(db, 2000);
		sqlite3_progress_handler(db, 10000, progress_cb, job);
		switch (have_table(m, db)) {
		case -1:
			goto done;
		case 0:
			sqlite3_close(db);
			db = NULL;
			break;
		}
	} else if (errno != ENOENT) {
		m->err = strdup_printf("cannot open audit database %s: %s", m->db_path,
		                       strerror(errno));
		goto done;
	}

	if (db) {
		res = summary(m, db, &sc);
		if (!res)
			goto done;
		last_hour = count_since(m, db, m->now - 3600, m->now + 1);
		if (last_hour < 0)
			goto done;
	} else {
		/* No database yet: the same shape, all zeros. */
		res = json_pack("{s:i, s:i, s:n, s:{s:i, s:i, s:i, s:i, s:i}, s:i,"
		                " s:{s:n, s:n, s:n, s:n, s:n}, s:{s:n, s:n, s:n}, s:{s:i, s:i},"
		                " s:{s:i, s:i}, s:i, s:i, s:i}",
		                "requests", 0, "errors", 0, "success_rate",
		                "status", "1xx", 0, "2xx", 0, "3xx", 0, "4xx", 0, "5xx", 0,
		                "streams", 0,
		                "latency_ms", "p50", "p95", "p99", "avg", "max",
		                "ttfb_ms", "p50", "p95", "p99",
		                "tokens", "prompt", 0, "completion", 0,
		                "bytes", "in", 0, "out", 0,
		                "active_keys", 0, "active_routes", 0, "requests_without_key", 0);
		if (!res) {
			m->err = strdup_printf("out of memory");
			goto done;
		}
	}
	json_object_set_new(res, "since", json_real(round3(m->since)));
	json_object_set_new(res, "until", json_real(round3(m->until)));
	json_object_set_new(res, "requests_last_hour", json_integer(last_hour));
	json_object_set_new(res, "database", json_boolean(db != NULL));
	if (m->step) {
		v = series(m, db);
		if (!v)
			goto done;
		json_object_set_new(res, m->step == 3600 ? "hourly" : "daily", v);
	}
	if (m->by != BY_NONE) {
		v = breakdown(m, db);
		if (!v)
			goto done;
		json_object_set_new(res, "breakdown", v);
	}
	m->result = res;
	res = NULL;
done:
	if (!m->result && !m->err)
		m->err = strdup_printf("query interrupted");
	json_decref(res);
	sqlite3_close(db);
}

static void metrics_free(struct metrics_job *m)
{
	json_decref(m->result);
	free(m->err);
	free(m->db_path);
	free(m);
}

/* Loop thread. */
static void metrics_done(void *arg, bool cancelled)
{
	struct metrics_job *m = arg;

	if (!cancelled && m->call) {
		if (m->result) {
			ctl_stream_result(m->call, m->result);
			m->result = NULL;
		} else {
			ctl_stream_fail(m->call, CTL_E_INTERNAL, m->err ? m->err : "query failed");
		}
	}
	metrics_free(m);
}

static void metrics_cancel(struct ctl_call *call, void *arg)
{
	struct metrics_job *m = arg;

	(void)call;
	m->call = NULL;
	dbq_cancel(m->job);
}

void stats_h_metrics(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { "since", "until", "hourly", "hours", "daily",
	                                       "days", "by", NULL };
	struct gateway *gw = ctl_call_gateway(call);
	struct metrics_job *m;
	bool hourly = false, daily = false;
	json_int_t hours = 0, days = 0;
	double since = -1, until = -1, now = stats_now();
	const char *by = NULL;
	enum by byv = BY_NONE;

	if (!ctl_args_only(call, args, allowed) ||
	    !stats_arg_time(call, args, "since", &since) ||
	    !stats_arg_time(call, args, "until", &until) ||
	    !ctl_arg_bool(call, args, "hourly", &hourly) ||
	    !ctl_arg_bool(call, args, "daily", &daily) ||
	    !ctl_arg_int(call, args, "hours", false, 1, HOURS_MAX, &hours) ||
	    !ctl_arg_int(call, args, "days", false, 1, DAYS_MAX, &days) ||
	    !ctl_arg_string(call, args, "by", false, &by))
		return;
	/* --hours N alone asks for the hourly series, --days N for the daily one. */
	hourly |= hours > 0;
	daily |= days > 0;
	if (hourly && daily) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "choose hourly or daily, not both");
		return;
	}
	if (by) {
		if (strcmp(by, "route") == 0)
			byv = BY_ROUTE;
		else if (strcmp(by, "key") == 0)
			byv = BY_KEY;
		else if (strcmp(by, "model") == 0)
			byv = BY_MODEL;
		else {
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL,
			                "'by' must be \"route\", \"key\" or \"model\"");
			return;
		}
	}
	if (until < 0)
		until = now;
	m = calloc(1, sizeof(*m));
	if (!m || !(m->db_path = strdup(gw->cfg->audit_path ? gw->cfg->audit_path : ""))) {
		free(m);
		ctl_reply_error(call, CTL_E_INTERNAL, NULL, "out of memory");
		return;
	}
	m->now = now;
	m->until = until;
	m->by = byv;
	if (hourly || daily) {
		int step = hourly ? 3600 : 86400;
		json_int_t n = hourly ? (hours ? hours : 24) : (days ? days : 7);
		double last = floor(until / step) * step;
		double buckets;

		if (until == last && until > 0)
			last -= step;          /* until on a boundary: that bucket would be empty */
		m->step = step;
		m->first = since >= 0 ? floor(since / step) * step : last - (double)(n - 1) * step;
		buckets = floor((last - m->first) / step) + 1;
		if (buckets > (hourly ? HOURS_MAX : DAYS_MAX) || buckets < 1) {
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL,
			                buckets < 1 ? "'since' must be before 'until'"
			                : hourly ? "that is too many hours for an hourly series; use daily"
			                : "that is too many days for a daily series");
			metrics_free(m);
			return;
		}
		m->nbuckets = (int)buckets;
		m->since = since >= 0 ? since : m->first;
	} else {
		m->since = since >= 0 ? since : until - 86400;
	}
	if (m->since >= m->until) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'since' must be before 'until'");
		metrics_free(m);
		return;
	}
	m->call = call;
	ctl_stream_begin(call, metrics_cancel, NULL, m);
	m->job = dbq_submit(ctl_call_dbq(call), metrics_work, metrics_done, m);
}
