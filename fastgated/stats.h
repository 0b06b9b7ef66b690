/* Audit-database queries for the control socket, run off the event loop.
 *
 * dbq: a small pool of worker threads. The loop thread submits a job (a function that
 * reads the audit database on its own read-only connection and fills the job's state);
 * when it is done, its `done` callback runs back on the loop thread, woken through a
 * pipe. So a percentile over a million rows, or a filter that scans a large table, never
 * stalls proxying. logs.c uses it for tail, export and show; this file for `metrics` and
 * `report`; control.c also runs a one-thread queue of its own for key-store writes.
 *
 * metrics: totals, errors, success rate, latency/TTFB percentiles (nearest rank, with
 * ORDER BY ... LIMIT 1 OFFSET k), tokens and cost, active keys and routes, requests in the
 * last hour, an optional hourly or daily series and a breakdown by route, key, user or
 * model, all computed
 * with SQL on a read-only connection to gw->cfg->audit_path. A database that does not
 * exist yet answers zeros. The breakdown by upstream is the exception: the upstreams' live
 * counters (pool.h), read on the loop thread when the answer goes out. */
#ifndef FG_STATS_H
#define FG_STATS_H

#include <stdbool.h>
#include <jansson.h>

struct event_base;
struct ctl_call;
struct dbq;
struct dbq_job;

/* Runs on a worker thread. Must not touch loop-owned state (gateway, control calls). */
typedef void (*dbq_work_fn)(struct dbq_job *job, void *arg);
/* Runs on the loop thread exactly once per submitted job, after work returned (or
 * without work having run, if the job was cancelled first or the pool is stopping).
 * cancelled: dbq_cancel() was called or the pool is being freed; the callee then only
 * cleans up. */
typedef void (*dbq_done_fn)(void *arg, bool cancelled);

/* Start nthreads worker threads (1 to 4) named `name` (at most 15 characters) and the
 * wake-up pipe on `base`. With one thread, jobs also run one at a time, in order. NULL
 * with *err (caller frees). */
struct dbq *dbq_new(struct event_base *base, int nthreads, const char *name, char **err);
/* Mark every job cancelled, wait for running ones to return, then call every pending
 * done callback with cancelled = true. NULL is fine. */
void dbq_free(struct dbq *q);
/* Queue a job; jobs start in submission order. Never NULL (out of memory aborts). The
 * pointer is valid until `done` has been called. */
struct dbq_job *dbq_submit(struct dbq *q, dbq_work_fn work, dbq_done_fn done, void *arg);
/* Ask a queued or running job to stop; `done` still runs later, with cancelled = true.
 * Loop thread only. */
void dbq_cancel(struct dbq_job *job);
/* For work functions: true once the job should stop early (check between rows). */
bool dbq_job_cancelled(const struct dbq_job *job);

/* Control handler for "metrics" (see the command table in control.c). */
void stats_h_metrics(struct ctl_call *call, json_t *args);
/* Control handler for "report": {since?: unix-seconds (default: 00:00 UTC on the 1st of
 * the month that holds until), until?: unix-seconds (default: now), by?: "user"|"key"|
 * "model" (default "user"), format?: "json"|"csv"}. Spend over the window from the audit
 * database, on a worker thread: per group its requests, prompt, completion and cached
 * tokens, cost_usd (and cost_nano) summed in integers, and its unpriced, estimated and
 * billed requests, busiest spender first; then the total. */
void stats_h_report(struct ctl_call *call, json_t *args);

/* Helpers shared with logs.c and report.c. */
struct sqlite3;
/* The audit database's schema version (PRAGMA user_version); 0 if it cannot be read. */
int stats_schema_version(struct sqlite3 *db);
/* Current time as unix seconds with sub-second precision. */
double stats_now(void);
/* args[key] as unix seconds (an integer or a real, >= 0) into *out; absent or null leaves
 * *out alone. False after replying bad_args. */
bool stats_arg_time(struct ctl_call *call, json_t *args, const char *key, double *out);

#endif
