/* Control-side access to the audit trail: logs.tail (with live follow), logs.export and
 * logs.show.
 *
 * Live tail. control_publish_audit() hands every finished request to logs_publish() on
 * the loop thread. Each following tail whose filters match gets it as an event; a
 * follower whose unsent output is over CTL_STREAM_HIGH_WATER stops receiving events
 * until its output drains below CTL_STREAM_LOW_WATER, and is then sent {"dropped":N}
 * (also just before its end, if the daemon stops). So the daemon holds at most about
 * 1 MiB per follower, whatever the request rate.
 *
 * Recent records. The last LOGS_RECENT published records are kept (copies), so a tail or
 * show right after a request sees it even if the audit writer has not committed it yet;
 * rows found in both places are counted once (by request_id).
 *
 * Database reads run on the dbq worker threads (stats.h), never on the loop: the tail's
 * initial rows, each export batch of LOGS_EXPORT_BATCH rows, and show's lookup. An export
 * asks for its next batch only when the client's backlog is low, so it runs in bounded
 * memory at the client's pace; between batches it holds no database connection (it
 * resumes after the last row it sent), so a stalled export never pins the WAL. */
#ifndef FG_LOGS_H
#define FG_LOGS_H

#include <jansson.h>

#include "ctlproto.h"

struct gateway;
struct dbq;
struct ctl_call;
struct audit_record;
struct logs;

#define LOGS_RECENT        1024       /* recent records kept for tail/show */
#define LOGS_TAIL_MAX      CTL_TAIL_LINES_MAX  /* most lines a tail may ask for */
#define LOGS_TAIL_BUDGET   (4 << 20)  /* and at most about this many bytes of them */
#define LOGS_EXPORT_BATCH  256        /* rows per export batch */

struct logs *logs_new(struct gateway *gw, struct dbq *dbq);
/* End every live tail with its dropped count and an end line (the daemon is stopping). */
void logs_stop(struct logs *l);
/* After logs_stop and after every client is gone. NULL is fine. */
void logs_free(struct logs *l);

/* See control_publish_audit(). */
void logs_publish(struct logs *l, const struct audit_record *r);

/* Control handlers (see the command table in control.c). */
void logs_h_tail(struct ctl_call *call, json_t *args);
void logs_h_export(struct ctl_call *call, json_t *args);
void logs_h_show(struct ctl_call *call, json_t *args);

#endif
