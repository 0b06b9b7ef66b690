/* Off-loop audit-database queries (the dbq worker pool) and the "metrics" and "report"
 * commands.
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

#include "audit.h"
#include "blockrows.h"
#include "config.h"
#include "control.h"
#include "ctlproto.h"
#include "gateway.h"
#include "log.h"
#include "pool.h"
#include "routes.h"
#include "util.h"
#include "stats.h"

/* ---- dbq: the worker pool ---- */

#define DBQ_MAX_THREADS 4

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
	pthread_t threads[DBQ_MAX_THREADS];
	int nthreads;
	char name[16];                       /* the threads' name (ps -L, top -H) */
	int wake[2];                         /* workers write a byte when a job is done */
	struct event *wake_ev;
};

static void push(struct dbq_job ***tail, struct dbq_job *job)
{
	job->next = NULL;
	**tail = job;
	*tail = &job->next;
}

static void *worker_main(void *arg)
{
	struct dbq *q = arg;

	pthread_setname_np(pthread_self(), q->name);
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

struct dbq *dbq_new(struct event_base *base, int nthreads, const char *name, char **err)
{
	struct dbq *q = calloc(1, sizeof(*q));
	sigset_t all, old;

	*err = NULL;
	if (!q) {
		*err = xasprintf("out of memory");
		return NULL;
	}
	q->base = base;
	snprintf(q->name, sizeof(q->name), "%s", name);
	q->wake[0] = q->wake[1] = -1;
	q->todo_tail = &q->todo;
	q->done_tail = &q->done;
	pthread_mutex_init(&q->mu, NULL);
	pthread_cond_init(&q->cv, NULL);
	atomic_init(&q->stopping, false);
	if (pipe2(q->wake, O_NONBLOCK | O_CLOEXEC) < 0) {
		*err = xasprintf("cannot create a pipe for the query threads: %s", strerror(errno));
		goto fail;
	}
	q->wake_ev = event_new(base, q->wake[0], EV_READ | EV_PERSIST, wake_cb, q);
	if (!q->wake_ev || event_add(q->wake_ev, NULL) < 0) {
		*err = xasprintf("out of memory");
		goto fail;
	}
	/* Signals belong to the loop thread (libevent's signal events). */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	if (nthreads < 1 || nthreads > DBQ_MAX_THREADS)
		nthreads = nthreads < 1 ? 1 : DBQ_MAX_THREADS;
	for (int i = 0; i < nthreads; i++) {
		int e = pthread_create(&q->threads[i], NULL, worker_main, q);

		if (e) {
			*err = xasprintf("cannot start a query thread: %s", strerror(e));
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

int stats_schema_version(sqlite3 *db)
{
	sqlite3_stmt *st = NULL;
	int v = 0;

	if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	return v;
}

/* Prepare the statement fmt formats to (printf-style), on db. SQLITE_OK or SQLite's error. */
static int __attribute__((format(printf, 3, 4)))
prepare_fmt(sqlite3 *db, sqlite3_stmt **st, const char *fmt, ...)
{
	va_list ap;
	char *sql;
	int rc;

	va_start(ap, fmt);
	if (vasprintf(&sql, fmt, ap) < 0)
		abort();
	va_end(ap);
	rc = sqlite3_prepare_v2(db, sql, -1, st, NULL);
	free(sql);
	return rc;
}

/* ---- metrics ---- */

#define HOURS_MAX   CTL_HOURS_MAX
#define DAYS_MAX    CTL_DAYS_MAX
#define GROUPS_MAX  100      /* breakdown rows; the rest are counted, not listed */
#define ERR_SQL     "(status >= 500 OR error IS NOT NULL)"
/* Refused by the gateway itself, nothing forwarded: a bad key, no route, a key not allowed,
 * a limit (401, 403, 404, 429...). Not counted in the success rate, which is the
 * upstreams' and the gateway's own failures among the requests it took on. */
#define REFUSED_SQL "(upstream IS NULL AND status BETWEEN 400 AND 499)"
#define BUCKET_SQL  "CAST((started_at - ?3) / ?4 AS INTEGER)"

/* BY_UPSTREAM is not read from the audit database: it is the upstreams' live counters. */
enum by { BY_NONE, BY_ROUTE, BY_KEY, BY_MODEL, BY_UPSTREAM, BY_USER };

struct metrics_job {
	struct ctl_call *call;   /* NULL once the client went away */
	struct dbq_job *job;
	char *db_path;
	double now, since, until;
	int step;                /* series bucket in seconds: 0 (none), 3600, 86400 */
	double first;            /* start of the first bucket */
	int nbuckets;
	enum by by;
	const char *cost_col;    /* "cost_nano", or "NULL" in a file before schema 8 */
	const char *user_col;    /* "user_id", or "NULL" likewise */
	const char *rows;        /* what to read the rows of [?1, ?2) from (audit_rows_source) */
	json_t *result;
	char *err;
};

/* The percentiles reported, as nearest ranks: the value at rank ceil(p/100 * n) of the n
 * values in ascending order. */
#define NPCT 3
static const int pct_of[NPCT] = { 50, 95, 99 };
static const char *const pct_name[NPCT] = { "p50", "p95", "p99" };

struct pcts {
	double v[NPCT];
	bool have[NPCT];
};

static int progress_cb(void *arg)
{
	return dbq_job_cancelled(arg);
}

static void set_sql_err(struct metrics_job *m, sqlite3 *db, const char *what)
{
	if (!m->err)
		m->err = xasprintf("%s in audit database %s: %s", what, m->db_path,
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

/* The share of the requests the gateway took on (all less those it refused itself) that
 * ended without an error; null when there were none. */
static json_t *rate_or_null(sqlite3_int64 n, sqlite3_int64 refused, sqlite3_int64 errs)
{
	n -= refused;
	return n > 0 ? json_real(round((double)(n - errs) / (double)n * 1e6) / 1e6) : json_null();
}

static void bind_window(sqlite3_stmt *st, const struct metrics_job *m)
{
	sqlite3_bind_double(st, 1, m->since);
	sqlite3_bind_double(st, 2, m->until);
	/* ?3 and ?4 place a row in its series bucket; statements without them ignore these
	 * binds (SQLITE_RANGE). */
	sqlite3_bind_double(st, 3, m->first);
	sqlite3_bind_int(st, 4, m->step ? m->step : 1);
}

/* Called for each (group, percentile) found: st is on the row (column 0 = the group). */
typedef void (*pct_fn)(void *ctx, sqlite3_stmt *st, int which, double v);

/* Nearest-rank percentiles of `col` over the window, for every group of `gexpr` (NULL:
 * the window as one group), in one sorted pass: ROW_NUMBER() over each group in
 * ascending order, keeping the rows whose rank is ceil(p * n / 100). 0, or -1 on error. */
static int group_percentiles(struct metrics_job *m, sqlite3 *db, const char *gexpr,
                             const char *col, pct_fn fn, void *ctx)
{
	char part[160] = "";
	sqlite3_stmt *st = NULL;
	int rc;

	if (gexpr)
		snprintf(part, sizeof(part), "PARTITION BY %s ", gexpr);
	if (prepare_fmt(db, &st,
	         "SELECT g, rn, cnt, v FROM (SELECT %s AS g, %s AS v,"
	         " ROW_NUMBER() OVER (%sORDER BY %s) AS rn, COUNT(*) OVER (%s) AS cnt"
	         " FROM %s WHERE started_at >= ?1 AND started_at < ?2 AND %s IS NOT NULL)"
	         " WHERE rn IN ((cnt * %d + 99) / 100, (cnt * %d + 99) / 100, (cnt * %d + 99) / 100)",
	         gexpr ? gexpr : "0", col, part, col, gexpr ? part : "", m->rows, col, pct_of[0],
	         pct_of[1], pct_of[2]) != SQLITE_OK) {
		set_sql_err(m, db, "cannot query");
		return -1;
	}
	bind_window(st, m);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		sqlite3_int64 rn = sqlite3_column_int64(st, 1), cnt = sqlite3_column_int64(st, 2);

		for (int i = 0; i < NPCT; i++)
			if (rn == (cnt * pct_of[i] + 99) / 100)
				fn(ctx, st, i, sqlite3_column_double(st, 3));
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		set_sql_err(m, db, "cannot read");
		return -1;
	}
	return 0;
}

static void pct_set(struct pcts *p, int which, double v)
{
	p->v[which] = v;
	p->have[which] = true;
}

static void pct_one(void *ctx, sqlite3_stmt *st, int which, double v)
{
	(void)st;
	pct_set(ctx, which, v);
}

/* {"p50":..,"p95":..,"p99":..}, null where there were no values. */
static json_t *pcts_json(const struct pcts *p, int n)
{
	json_t *o = json_object();

	for (int i = 0; o && i < n; i++)
		json_object_set_new(o, pct_name[i], ms_or_null(p->have[i], p->v[i]));
	return o;
}

/* One-row aggregate over the window. */
static json_t *summary(struct metrics_job *m, sqlite3 *db)
{
#define SUMMARY_SQL \
		"SELECT COUNT(*), SUM(" ERR_SQL ")," \
		" SUM(status BETWEEN 100 AND 199), SUM(status BETWEEN 200 AND 299)," \
		" SUM(status BETWEEN 300 AND 399), SUM(status BETWEEN 400 AND 499)," \
		" SUM(status >= 500), SUM(is_stream), COUNT(latency_ms), AVG(latency_ms)," \
		" MAX(latency_ms), COUNT(ttfb_ms), SUM(prompt_tokens), SUM(completion_tokens)," \
		" COUNT(DISTINCT key_id), COUNT(DISTINCT route), SUM(bytes_in), SUM(bytes_out)," \
		" SUM(key_id IS NULL), SUM(%s), SUM(" REFUSED_SQL ")" \
		" FROM %s WHERE started_at >= ?1 AND started_at < ?2"
	struct pcts lat = { 0 }, ttfb = { 0 };
	sqlite3_stmt *st = NULL;
	sqlite3_int64 v[21] = { 0 };
	char usd[FMT_USD_MAX];
	double avg, max;
	json_t *jl;

	/* integers summed by SQLite (an error on overflow, never a float) */
	if (prepare_fmt(db, &st, SUMMARY_SQL, m->cost_col, m->rows) != SQLITE_OK) {
#undef SUMMARY_SQL
		set_sql_err(m, db, "cannot query");
		return NULL;
	}
	bind_window(st, m);
	if (sqlite3_step(st) != SQLITE_ROW) {
		set_sql_err(m, db, "cannot read");
		sqlite3_finalize(st);
		return NULL;
	}
	for (int i = 0; i < 21; i++)
		v[i] = sqlite3_column_int64(st, i);
	avg = sqlite3_column_double(st, 9);
	max = sqlite3_column_double(st, 10);
	sqlite3_finalize(st);

	if ((v[8] && group_percentiles(m, db, NULL, "latency_ms", pct_one, &lat) < 0) ||
	    (v[11] && group_percentiles(m, db, NULL, "ttfb_ms", pct_one, &ttfb) < 0))
		return NULL;
	jl = pcts_json(&lat, NPCT);
	json_object_set_new(jl, "avg", ms_or_null(v[8] > 0, avg));
	json_object_set_new(jl, "max", ms_or_null(v[8] > 0, max));
	fmt_usd_nano(usd, v[19]);
	return json_pack("{s:I, s:I, s:I, s:o, s:{s:I, s:I, s:I, s:I, s:I}, s:I, s:o, s:o,"
	                 " s:{s:I, s:I}, s:{s:I, s:I}, s:I, s:I, s:I, s:s}",
	                 "requests", (json_int_t)v[0],
	                 "errors", (json_int_t)v[1],
	                 "refused", (json_int_t)v[20],
	                 "success_rate", rate_or_null(v[0], v[20], v[1]),
	                 "status", "1xx", (json_int_t)v[2], "2xx", (json_int_t)v[3],
	                 "3xx", (json_int_t)v[4], "4xx", (json_int_t)v[5], "5xx", (json_int_t)v[6],
	                 "streams", (json_int_t)v[7],
	                 "latency_ms", jl,
	                 "ttfb_ms", pcts_json(&ttfb, NPCT),
	                 "tokens", "prompt", (json_int_t)v[12], "completion", (json_int_t)v[13],
	                 "bytes", "in", (json_int_t)v[16], "out", (json_int_t)v[17],
	                 "active_keys", (json_int_t)v[14],
	                 "active_routes", (json_int_t)v[15],
	                 "requests_without_key", (json_int_t)v[18],
	                 "cost_usd", usd);
}

static json_int_t count_since(struct metrics_job *m, sqlite3 *db, double since, double until)
{
	sqlite3_stmt *st = NULL;
	json_int_t n = -1;

	if (prepare_fmt(db, &st, "SELECT COUNT(*) FROM %s WHERE started_at >= ?1 AND "
	                "started_at < ?2", m->rows) != SQLITE_OK) {
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

struct bucket {
	sqlite3_int64 requests, errors;
	struct pcts lat;
};

struct buckets {
	struct bucket *b;
	int n;
};

static void pct_bucket(void *ctx, sqlite3_stmt *st, int which, double v)
{
	struct buckets *bs = ctx;
	int i = sqlite3_column_int(st, 0);

	if (i >= 0 && i < bs->n)
		pct_set(&bs->b[i].lat, which, v);
}

/* One row per bucket from m->first, empty buckets included. db may be NULL (no data). */
static json_t *series(struct metrics_job *m, sqlite3 *db)
{
	struct buckets bs = { calloc((size_t)m->nbuckets, sizeof(struct bucket)), m->nbuckets };
	sqlite3_stmt *st = NULL;
	json_t *a = NULL;
	int rc = SQLITE_DONE;

	if (!bs.b) {
		m->err = xasprintf("out of memory");
		return NULL;
	}
	if (db) {
		if (prepare_fmt(db, &st, "SELECT " BUCKET_SQL " AS b, COUNT(*), SUM(" ERR_SQL ")"
		                " FROM %s WHERE started_at >= ?1 AND started_at < ?2 GROUP BY b",
		                m->rows) != SQLITE_OK) {
			set_sql_err(m, db, "cannot query");
			goto done;
		}
		bind_window(st, m);
		while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
			int i = sqlite3_column_int(st, 0);

			if (i >= 0 && i < bs.n) {
				bs.b[i].requests = sqlite3_column_int64(st, 1);
				bs.b[i].errors = sqlite3_column_int64(st, 2);
			}
		}
		if (rc != SQLITE_DONE) {
			set_sql_err(m, db, "cannot read");
			goto done;
		}
		if (group_percentiles(m, db, BUCKET_SQL, "latency_ms", pct_bucket, &bs) < 0)
			goto done;
	}
	a = json_array();
	for (int i = 0; a && i < bs.n; i++)
		json_array_append_new(a, json_pack("{s:I, s:I, s:I, s:o, s:o}",
		                      "start", (json_int_t)(m->first + (double)i * m->step),
		                      "requests", (json_int_t)bs.b[i].requests,
		                      "errors", (json_int_t)bs.b[i].errors,
		                      "p50_ms", ms_or_null(bs.b[i].lat.have[0], bs.b[i].lat.v[0]),
		                      "p95_ms", ms_or_null(bs.b[i].lat.have[1], bs.b[i].lat.v[1])));
done:
	sqlite3_finalize(st);
	free(bs.b);
	return a;
}

static const char *by_name(enum by by)
{
	return by == BY_ROUTE ? "route" : by == BY_KEY ? "key" : by == BY_UPSTREAM ? "upstream"
	       : by == BY_USER ? "user" : "model";
}

struct group {
	bool gnull;
	sqlite3_int64 gi;         /* BY_KEY */
	char *gs;                 /* BY_ROUTE, BY_MODEL */
	char *key_name;
	sqlite3_int64 requests, errors, lat_n, prompt, completion, cost_nano, refused;
	double avg;
	struct pcts lat;
};

struct groups {
	struct group g[GROUPS_MAX];
	int n;
	bool by_int;
};

static void pct_group(void *ctx, sqlite3_stmt *st, int which, double v)
{
	struct groups *gs = ctx;
	bool null = sqlite3_column_type(st, 0) == SQLITE_NULL;

	for (int i = 0; i < gs->n; i++) {
		struct group *g = &gs->g[i];

		if (g->gnull != null)
			continue;
		if (!null && (gs->by_int ? g->gi != sqlite3_column_int64(st, 0)
		                         : strcmp(g->gs, (const char *)sqlite3_column_text(st, 0)) != 0))
			continue;
		pct_set(&g->lat, which, v);
		return;
	}
}

/* The busiest GROUPS_MAX groups of the window, busiest first. */
static json_t *breakdown(struct metrics_job *m, sqlite3 *db)
{
	const char *col = m->by == BY_ROUTE ? "route" : m->by == BY_KEY ? "key_id"
	                : m->by == BY_USER ? m->user_col : "model";
	struct groups *gs = calloc(1, sizeof(*gs));
	sqlite3_stmt *st = NULL;
	char usd[FMT_USD_MAX];
	json_t *rows = NULL, *res = NULL;
	json_int_t ngroups = 0;
	int rc = SQLITE_DONE;

	if (!gs) {
		m->err = xasprintf("out of memory");
		return NULL;
	}
	gs->by_int = m->by == BY_KEY || m->by == BY_USER;
	if (db) {
		if (prepare_fmt(db, &st,
		         "SELECT %s, COUNT(*), SUM(" ERR_SQL "), COUNT(latency_ms), AVG(latency_ms),"
		         " SUM(prompt_tokens), SUM(completion_tokens), MAX(key_name),"
		         " COUNT(*) OVER (), SUM(%s), SUM(" REFUSED_SQL ") FROM %s"
		         " WHERE started_at >= ?1 AND"
		         " started_at < ?2 GROUP BY %s ORDER BY COUNT(*) DESC, %s LIMIT %d", col,
		         m->cost_col, m->rows, col, col, GROUPS_MAX) != SQLITE_OK) {
			set_sql_err(m, db, "cannot query");
			goto done;
		}
		bind_window(st, m);
		while ((rc = sqlite3_step(st)) == SQLITE_ROW && gs->n < GROUPS_MAX) {
			struct group *g = &gs->g[gs->n++];
			const char *kn = (const char *)sqlite3_column_text(st, 7);

			g->gnull = sqlite3_column_type(st, 0) == SQLITE_NULL;
			g->gi = sqlite3_column_int64(st, 0);
			if (!g->gnull && !gs->by_int)
				g->gs = strdup((const char *)sqlite3_column_text(st, 0));
			g->key_name = kn ? strdup(kn) : NULL;
			g->requests = sqlite3_column_int64(st, 1);
			g->errors = sqlite3_column_int64(st, 2);
			g->lat_n = sqlite3_column_int64(st, 3);
			g->avg = sqlite3_column_double(st, 4);
			g->prompt = sqlite3_column_int64(st, 5);
			g->completion = sqlite3_column_int64(st, 6);
			ngroups = sqlite3_column_int64(st, 8);
			g->cost_nano = sqlite3_column_int64(st, 9);
			g->refused = sqlite3_column_int64(st, 10);
			if ((!g->gnull && !gs->by_int && !g->gs) || (kn && !g->key_name)) {
				m->err = xasprintf("out of memory");
				goto done;
			}
		}
		if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
			set_sql_err(m, db, "cannot read");
			goto done;
		}
		sqlite3_finalize(st);
		st = NULL;
		if (gs->n && group_percentiles(m, db, col, "latency_ms", pct_group, gs) < 0)
			goto done;
	}
	rows = json_array();
	for (int i = 0; rows && i < gs->n; i++) {
		struct group *g = &gs->g[i];
		json_t *row = json_object(), *lat = pcts_json(&g->lat, NPCT);

		if (m->by == BY_KEY) {
			json_object_set_new(row, "key_id", g->gnull ? json_null() : json_integer(g->gi));
			json_object_set_new(row, "key_name", g->key_name ? json_string(g->key_name)
			                                                 : json_null());
		} else if (m->by == BY_USER) {
			json_object_set_new(row, "user_id", g->gnull ? json_null() : json_integer(g->gi));
		} else {
			json_object_set_new(row, by_name(m->by), g->gnull ? json_null()
			                                                  : json_string(g->gs));
		}
		json_object_set_new(lat, "avg", ms_or_null(g->lat_n > 0, g->avg));
		json_object_set_new(row, "requests", json_integer(g->requests));
		json_object_set_new(row, "errors", json_integer(g->errors));
		json_object_set_new(row, "refused", json_integer(g->refused));
		json_object_set_new(row, "success_rate", rate_or_null(g->requests, g->refused,
		                                                      g->errors));
		json_object_set_new(row, "latency_ms", lat);
		json_object_set_new(row, "tokens", json_pack("{s:I, s:I}",
		                    "prompt", (json_int_t)g->prompt,
		                    "completion", (json_int_t)g->completion));
		fmt_usd_nano(usd, g->cost_nano);
		json_object_set_new(row, "cost_usd", json_string(usd));
		json_array_append_new(rows, row);
	}
	res = json_pack("{s:s, s:O, s:I, s:b}", "by", by_name(m->by), "rows", rows,
	                "groups", ngroups, "truncated", ngroups > gs->n);
done:
	sqlite3_finalize(st);
	for (int i = 0; i < gs->n; i++) {
		free(gs->g[i].gs);
		free(gs->g[i].key_name);
	}
	free(gs);
	json_decref(rows);
	return res;
}

/* The audit table exists (a database created by something else may not have it yet). */
static int have_table(struct metrics_job *m, sqlite3 *db)
{
	sqlite3_stmt *st = NULL;
	int rc, ret = -1;

	/* a view from schema 10 on */
	if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view')"
	                       " AND name = 'audit'", -1, &st, NULL) != SQLITE_OK) {
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
	struct stat stt;
	sqlite3 *db = NULL;
	json_t *res = NULL, *v;
	json_int_t last_hour = 0;

	if (stat(m->db_path, &stt) == 0) {
		if (sqlite3_open_v2(m->db_path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
		                    NULL) != SQLITE_OK) {
			m->err = xasprintf("cannot open audit database %s: %s", m->db_path,
			                       db ? sqlite3_errmsg(db) : "out of memory");
			goto done;
		}
		sqlite3_busy_timeout(db, 2000);
		sqlite3_progress_handler(db, 10000, progress_cb, job);
		blockrows_register(db);   /* without it, a query of blocks fails and says so */
		switch (have_table(m, db)) {
		case -1:
			goto done;
		case 0:
			sqlite3_close(db);
			db = NULL;
			break;
		}
		if (db) {
			int version = stats_schema_version(db);

			/* a file no daemon of this version has opened yet: no spend columns */
			if (version < 8)
				m->cost_col = m->user_col = "NULL";
			m->rows = audit_rows_source(version);
		}
	} else if (errno != ENOENT) {
		m->err = xasprintf("cannot open audit database %s: %s", m->db_path,
		                       strerror(errno));
		goto done;
	}

	if (db) {
		res = summary(m, db);
		if (!res)
			goto done;
		last_hour = count_since(m, db, m->now - 3600, m->now + 1);
		if (last_hour < 0)
			goto done;
	} else {
		/* No database yet: the same shape, all zeros. */
		res = json_pack("{s:i, s:i, s:i, s:n, s:{s:i, s:i, s:i, s:i, s:i}, s:i,"
		                " s:{s:n, s:n, s:n, s:n, s:n}, s:{s:n, s:n, s:n}, s:{s:i, s:i},"
		                " s:{s:i, s:i}, s:i, s:i, s:i, s:s}",
		                "requests", 0, "errors", 0, "refused", 0, "success_rate",
		                "status", "1xx", 0, "2xx", 0, "3xx", 0, "4xx", 0, "5xx", 0,
		                "streams", 0,
		                "latency_ms", "p50", "p95", "p99", "avg", "max",
		                "ttfb_ms", "p50", "p95", "p99",
		                "tokens", "prompt", 0, "completion", 0,
		                "bytes", "in", 0, "out", 0,
		                "active_keys", 0, "active_routes", 0, "requests_without_key", 0,
		                "cost_usd", "0.000000000");
		if (!res) {
			m->err = xasprintf("out of memory");
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
	if (m->by != BY_NONE && m->by != BY_UPSTREAM) {
		v = breakdown(m, db);
		if (!v)
			goto done;
		json_object_set_new(res, "breakdown", v);
	}
	m->result = res;
	res = NULL;
done:
	if (!m->result && !m->err)
		m->err = xasprintf("query interrupted");
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

/* The breakdown of `metrics --by upstream`: every upstream of the routes serving now, in
 * match order, with its counters since its state was made (at start, or when a reload
 * added it): the audit database does not say which upstream each attempt went to. Loop
 * thread. */
static json_t *upstream_breakdown(const struct gateway *gw)
{
	const struct route_table *t = gw->routes;
	json_t *rows = json_array();
	int64_t now = mono_ms();
	json_int_t n = 0;

	for (size_t i = 0; rows && t && i < t->n; i++) {
		const struct route *r = t->routes[i];

		for (size_t k = 0; rows && k < r->n_targets; k++) {
			const struct target_state *st = r->targets[k].st;
			json_t *row = ctl_upstream_json(r, k, now);
			json_int_t total = 0;

			for (int o = 0; st && o < OUTCOME_COUNT; o++)
				total += (json_int_t)st->attempts[o];
			if (!row || json_object_set_new(row, "attempts_total", json_integer(total)) < 0) {
				json_decref(row);
				json_decref(rows);
				rows = NULL;
			} else if (json_array_append_new(rows, row) < 0) {
				json_decref(rows);
				rows = NULL;
			}
			n++;
		}
	}
	return rows ? json_pack("{s:s, s:o, s:I, s:b, s:b}", "by", "upstream", "rows", rows,
	                        "groups", n, "truncated", false, "live", true) : NULL;
}

/* Loop thread. */
static void metrics_done(void *arg, bool cancelled)
{
	struct metrics_job *m = arg;

	if (!cancelled && m->call) {
		if (m->result && m->by == BY_UPSTREAM &&
		    json_object_set_new(m->result, "breakdown",
		                        upstream_breakdown(ctl_call_gateway(m->call))) < 0) {
			json_decref(m->result);
			m->result = NULL;
			free(m->err);
			m->err = xasprintf("out of memory");
		}
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
		else if (strcmp(by, "upstream") == 0)
			byv = BY_UPSTREAM;
		else if (strcmp(by, "user") == 0)
			byv = BY_USER;
		else {
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'by' must be \"route\", \"key\", "
			                "\"user\", \"model\" or \"upstream\"");
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
	m->cost_col = "cost_nano";
	m->user_col = "user_id";
	m->rows = "audit";
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

/* ---- report: spend by user, key or model ----
 * One grouped pass over the window on a worker thread: requests, prompt, completion and
 * cached tokens, cost (SQLite sums the integer nano-dollars: exact, never a double) and
 * the unpriced, estimated and billed requests of each group, busiest spender first, and
 * their total. As JSON rows, or with format "csv" as RFC 4180 text in the result. */

/* Rows listed; past this many groups they are still counted and in the total. */
#define REPORT_GROUPS_MAX 100000

/* What a group (or the total) adds up to. */
struct tally {
	int64_t requests, prompt, completion, cached, cost_nano, unpriced, estimated, billed;
};
#define TALLY_N 8

struct report_job {
	struct ctl_call *call;    /* NULL once the client went away */
	struct dbq_job *job;
	char *db_path;
	double since, until;
	enum by by;             /* BY_USER, BY_KEY or BY_MODEL */
	bool csv;
	json_t *result;
	char *err;
};

static int64_t *tally_at(struct tally *t, int i)
{
	int64_t *v[TALLY_N] = { &t->requests, &t->prompt, &t->completion, &t->cached,
	                        &t->cost_nano, &t->unpriced, &t->estimated, &t->billed };
	return v[i];
}

/* The tally's members after the group's, as JSON (into o) or as CSV cells (into cells,
 * whose texts live in buf), in struct tally's order. */
static void tally_json(json_t *o, const struct tally *t)
{
	char usd[FMT_USD_MAX];

	fmt_usd_nano(usd, t->cost_nano);
	json_object_set_new(o, "requests", json_integer(t->requests));
	json_object_set_new(o, "prompt_tokens", json_integer(t->prompt));
	json_object_set_new(o, "completion_tokens", json_integer(t->completion));
	json_object_set_new(o, "cached_tokens", json_integer(t->cached));
	json_object_set_new(o, "cost_usd", json_string(usd));
	json_object_set_new(o, "cost_nano", json_integer(t->cost_nano));
	json_object_set_new(o, "unpriced", json_integer(t->unpriced));
	json_object_set_new(o, "estimated", json_integer(t->estimated));
	json_object_set_new(o, "billed", json_integer(t->billed));
}

static const char *const tally_names[] = { "requests", "prompt_tokens", "completion_tokens",
                                           "cached_tokens", "cost_usd", "unpriced",
                                           "estimated", "billed" };
#define TALLY_COLS 8

static void tally_cells(struct tally *t, char buf[TALLY_COLS][FMT_USD_MAX],
                        const char **cells)
{
	for (int i = 0; i < TALLY_COLS; i++) {
		if (tally_at(t, i) == &t->cost_nano)
			fmt_usd_nano(buf[i], t->cost_nano);
		else
			snprintf(buf[i], FMT_USD_MAX, "%lld", (long long)*tally_at(t, i));
		cells[i] = buf[i];
	}
}

/* Add one CSV line (and its CR LF) to *csv. */
static void csv_add(char **csv, size_t *len, size_t *cap, const char *const *cells, size_t n)
{
	char *line = audit_csv_line(cells, n);

	if (buf_append(csv, len, cap, line, strlen(line), 4096) < 0 ||
	    buf_append(csv, len, cap, "\r\n", 3, 4096) < 0)    /* with the NUL, not counted */
		abort();
	(*len)--;
	free(line);
}

/* Worker thread: one grouped pass over the window. */
static void report_work(struct dbq_job *job, void *arg)
{
	struct report_job *r = arg;
	struct tally total = { 0 };
	struct stat stt;
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	json_t *rows = json_array();
	char *csv = NULL, buf[TALLY_COLS][FMT_USD_MAX];
	size_t len = 0, cap = 0;
	int64_t groups = 0;
	int version, rc;
	const char *g, *cost, *cached, *flag_unpriced, *flag_estimated, *flag_billed;

	if (!rows)
		abort();
	if (stat(r->db_path, &stt) == 0) {
		if (sqlite3_open_v2(r->db_path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
		                    NULL) != SQLITE_OK) {
			r->err = xasprintf("cannot open audit database %s: %s", r->db_path,
			                   db ? sqlite3_errmsg(db) : "out of memory");
			goto done;
		}
		sqlite3_busy_timeout(db, 2000);
		sqlite3_progress_handler(db, 10000, progress_cb, job);
		blockrows_register(db);   /* without it, a query of blocks fails and says so */
	} else if (errno != ENOENT) {
		r->err = xasprintf("cannot open audit database %s: %s", r->db_path, strerror(errno));
		goto done;
	}

	if (r->csv) {
		const char *head[2 + TALLY_COLS] = { NULL };
		size_t n = 0;

		if (r->by == BY_USER)
			head[n++] = "user_id";
		else if (r->by == BY_KEY)
			head[n++] = "key_id", head[n++] = "key_name";
		else
			head[n++] = "model";
		for (int i = 0; i < TALLY_COLS; i++)
			head[n++] = tally_names[i];
		csv_add(&csv, &len, &cap, head, n);
	}

	/* a file no daemon of this version has opened yet lacks the newer columns */
	version = db ? stats_schema_version(db) : 0;
	cached = version >= 6 ? "cached_tokens" : "NULL";
	cost = version >= 8 ? "cost_nano" : "NULL";
	flag_unpriced = version >= 8 ? "unpriced" : "0";
	flag_estimated = version >= 8 ? "estimated" : "0";
	flag_billed = version >= 8 ? "billed" : "0";
	g = r->by == BY_USER ? (version >= 8 ? "user_id" : "NULL")
	  : r->by == BY_KEY ? "key_id" : "model";
	/* SQLite sums integers exactly (and fails on an overflow): the cost is never a float */
	if (db && prepare_fmt(db, &st,
	         "SELECT %s AS g, MAX(key_name), COUNT(*), coalesce(SUM(prompt_tokens), 0),"
	         " coalesce(SUM(completion_tokens), 0), coalesce(SUM(%s), 0),"
	         " coalesce(SUM(%s), 0) AS c, SUM(%s), SUM(%s), SUM(%s) FROM %s"
	         " WHERE started_at >= ?1 AND started_at < ?2 GROUP BY g"
	         " ORDER BY c DESC, COUNT(*) DESC, g", g, cached, cost, flag_unpriced,
	         flag_estimated, flag_billed, audit_rows_source(version)) != SQLITE_OK) {
		r->err = xasprintf("cannot query audit database %s: %s", r->db_path,
		                   sqlite3_errmsg(db));
		goto done;
	}
	if (st) {
		sqlite3_bind_double(st, 1, r->since);
		sqlite3_bind_double(st, 2, r->until);
	}
	while (st && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct tally t;
		bool null = sqlite3_column_type(st, 0) == SQLITE_NULL;
		const char *name = (const char *)sqlite3_column_text(st, 1);

		for (int i = 0; i < TALLY_N; i++) {
			*tally_at(&t, i) = sqlite3_column_int64(st, 2 + i);
			if (__builtin_add_overflow(*tally_at(&total, i), *tally_at(&t, i),
			                           tally_at(&total, i))) {
				r->err = xasprintf("the report's total is too large to add up");
				goto done;
			}
		}
		if (++groups > REPORT_GROUPS_MAX)
			continue;
		if (r->csv) {
			const char *cells[2 + TALLY_COLS] = { NULL };
			char id[24];
			size_t n = 0;

			if (r->by == BY_MODEL) {
				cells[n++] = null ? NULL : (const char *)sqlite3_column_text(st, 0);
			} else {
				snprintf(id, sizeof(id), "%lld", (long long)sqlite3_column_int64(st, 0));
				cells[n++] = null ? NULL : id;
				if (r->by == BY_KEY)
					cells[n++] = null ? NULL : name;
			}
			tally_cells(&t, buf, cells + n);
			csv_add(&csv, &len, &cap, cells, n + TALLY_COLS);
		} else {
			json_t *row = json_object();

			if (r->by == BY_MODEL) {
				json_object_set_new(row, "model", null ? json_null() :
				                    json_string((const char *)sqlite3_column_text(st, 0)));
			} else {
				json_t *id = null ? json_null() : json_integer(sqlite3_column_int64(st, 0));

				json_object_set_new(row, r->by == BY_USER ? "user_id" : "key_id", id);
				if (r->by == BY_KEY)
					json_object_set_new(row, "key_name", null || !name ? json_null()
					                                                   : json_string(name));
			}
			tally_json(row, &t);
			json_array_append_new(rows, row);
		}
	}
	if (st && rc != SQLITE_DONE) {
		r->err = xasprintf("cannot read audit database %s: %s", r->db_path,
		                   sqlite3_errmsg(db));
		goto done;
	}
	r->result = json_pack("{s:s, s:f, s:f, s:I, s:b, s:b}", "by", by_name(r->by),
	                      "since", r->since, "until", r->until, "groups", (json_int_t)groups,
	                      "truncated", groups > REPORT_GROUPS_MAX, "database", db != NULL);
	if (!r->result)
		abort();
	if (r->csv) {
		const char *cells[2 + TALLY_COLS] = { "total" };
		size_t n = r->by == BY_KEY ? 2 : 1;

		tally_cells(&total, buf, cells + n);
		csv_add(&csv, &len, &cap, cells, n + TALLY_COLS);
		json_object_set_new(r->result, "format", json_string("csv"));
		json_object_set_new(r->result, "csv", json_string(csv));
	} else {
		json_t *t = json_object();

		tally_json(t, &total);
		json_object_set_new(r->result, "rows", rows);
		json_object_set_new(r->result, "total", t);
		rows = NULL;
	}
done:
	if (!r->result && !r->err)
		r->err = xasprintf("query interrupted");
	sqlite3_finalize(st);
	sqlite3_close(db);
	json_decref(rows);
	free(csv);
}

static void report_free(struct report_job *r)
{
	json_decref(r->result);
	free(r->err);
	free(r->db_path);
	free(r);
}

/* Loop thread. */
static void report_done(void *arg, bool cancelled)
{
	struct report_job *r = arg;

	if (!cancelled && r->call) {
		if (r->result && r->by == BY_USER) {
			/* users' names are the key store's, which lives on this thread */
			struct gateway *gw = ctl_call_gateway(r->call);
			json_t *row;
			size_t i;

			json_array_foreach(json_object_get(r->result, "rows"), i, row) {
				json_t *id = json_object_get(row, "user_id");
				const struct user *u = json_is_integer(id) && gw->keys
				                       ? keystore_user_get(gw->keys, json_integer_value(id))
				                       : NULL;

				json_object_set_new(row, "user_name", u ? json_string(u->name) : json_null());
			}
		}
		if (r->result) {
			ctl_stream_result(r->call, r->result);
			r->result = NULL;
		} else {
			ctl_stream_fail(r->call, CTL_E_INTERNAL, r->err ? r->err : "query failed");
		}
	}
	report_free(r);
}

static void report_cancel(struct ctl_call *call, void *arg)
{
	struct report_job *r = arg;

	(void)call;
	r->call = NULL;
	dbq_cancel(r->job);
}

/* 00:00 UTC on the 1st of the month that holds t. */
static double month_start_utc(double t)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (!gmtime_r(&tt, &tm))
		return 0;
	tm.tm_mday = 1;
	tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
	return (double)timegm(&tm);
}

void stats_h_report(struct ctl_call *call, json_t *args)
{
	static const char *const allowed[] = { "since", "until", "by", "format", NULL };
	struct gateway *gw = ctl_call_gateway(call);
	const char *by = NULL, *format = NULL;
	double since = -1, until = -1;
	enum by byv = BY_USER;
	struct report_job *r;

	if (!ctl_args_only(call, args, allowed) ||
	    !stats_arg_time(call, args, "since", &since) ||
	    !stats_arg_time(call, args, "until", &until) ||
	    !ctl_arg_string(call, args, "by", false, &by) ||
	    !ctl_arg_string(call, args, "format", false, &format))
		return;
	if (by) {
		if (strcmp(by, "user") == 0)
			byv = BY_USER;
		else if (strcmp(by, "key") == 0)
			byv = BY_KEY;
		else if (strcmp(by, "model") == 0)
			byv = BY_MODEL;
		else {
			ctl_reply_error(call, CTL_E_BAD_ARGS, NULL,
			                "'by' must be \"user\", \"key\" or \"model\"");
			return;
		}
	}
	if (format && strcmp(format, "json") != 0 && strcmp(format, "csv") != 0) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'format' must be \"json\" or \"csv\"");
		return;
	}
	if (until < 0)
		until = stats_now();
	if (since < 0) {
		/* the billing month so far; the month before when until is its first second */
		since = month_start_utc(until);
		if (since >= until)
			since = month_start_utc(until - 1);
	}
	if (since >= until) {
		ctl_reply_error(call, CTL_E_BAD_ARGS, NULL, "'since' must be before 'until'");
		return;
	}
	r = xcalloc(1, sizeof(*r));
	r->db_path = xstrdup(gw->cfg->audit_path ? gw->cfg->audit_path : "");
	r->since = since;
	r->until = until;
	r->by = byv;
	r->csv = format && strcmp(format, "csv") == 0;
	r->call = call;
	ctl_stream_begin(call, report_cancel, NULL, r);
	r->job = dbq_submit(ctl_call_dbq(call), report_work, report_done, r);
}
