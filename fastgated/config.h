/* Daemon configuration: built-in defaults, then fastgate.yaml (-c FILE), then flags. */
#ifndef FG_CONFIG_H
#define FG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "cidr.h"
#include "errlist.h"
#include "limit.h"

/* Built-in default paths. Run from a source tree they are relative to the working directory;
 * `make install` compiles its own copy with each one defined from PREFIX, SYSCONFDIR,
 * LOCALSTATEDIR and RUNSTATEDIR, so that an installed fastgated (and the fastgate-cli beside
 * it) never depends on where it was started. FG_DEFAULT_CONFIG "": no file is read without -c. */
#ifndef FG_DEFAULT_CONFIG
#define FG_DEFAULT_CONFIG ""
#endif
#ifndef FG_DEFAULT_ROUTES
#define FG_DEFAULT_ROUTES "./routes.d"
#endif
#ifndef FG_DEFAULT_MODELS
#define FG_DEFAULT_MODELS "./share/models.yaml"
#endif
#ifndef FG_DEFAULT_PRICING
#define FG_DEFAULT_PRICING "./share/pricing.yaml"
#endif
#ifndef FG_DEFAULT_KEYS
#define FG_DEFAULT_KEYS "./keys/fastgate.db"
#endif
#ifndef FG_DEFAULT_AUDIT
#define FG_DEFAULT_AUDIT "./keys/audit.db"
#endif
#ifndef FG_DEFAULT_CONTROL
#define FG_DEFAULT_CONTROL "./fastgate.sock"
#endif

struct config {
	char *listen;          /* "127.0.0.1:8514" */
	char *tls_cert;        /* PEM certificate chain; with tls_key: the listener speaks TLS */
	char *tls_key;         /* PEM private key */
	char *routes_dir;      /* "./routes.d" */
	char *models_path;     /* "./share/models.yaml": the model table */
	bool models_set;       /* models_path was given (file or flag): it must exist */
	char *pricing_path;    /* "./share/pricing.yaml": the price table */
	bool pricing_set;      /* ... given (file or flag): it must exist */
	bool require_price;    /* a model without a price is refused (403 model_not_priced) */
	struct cidr *trusted_proxies; /* peers whose X-Forwarded-For is believed (and kept) */
	size_t n_trusted_proxies;
	struct cidr *allow_ips;  /* NULL: any client; else only these (403 ip_not_allowed) */
	size_t n_allow_ips;
	char **cors_origins;     /* browser origins allowed ("*": any); none: CORS off */
	size_t n_cors_origins;
	struct limit_rate auth_fail_limit; /* failed authentications per client address before
	                                    * 429; amount 0: off; 20/min */
	char *keys_path;       /* "./keys/fastgate.db" */
	char *audit_path;      /* "./keys/audit.db" */
	char *control_path;    /* "./fastgate.sock" */
	char *control_group;   /* NULL: socket mode 0600; else 0660 owned by this group */
	char *pidfile;         /* with --daemon */
	bool daemonize;
	int verbose;

	size_t max_body;        /* bytes; 10 MiB */
	size_t max_headers;     /* bytes of the whole request head; 32 KiB */
	int header_timeout;     /* seconds for the whole request head (slowloris); 10 */
	int idle_timeout;       /* seconds of client silence: body reads, keep-alive; 60 */
	int max_connections;    /* open client connections, on all loops together; 4096 */
	int workers;            /* event-loop threads; 0 = auto: one per online core
	                         * (config_workers), at most CONFIG_WORKERS_MAX */
	int drain_timeout;      /* seconds SIGTERM waits for in-flight requests; 30 */
	bool metrics_public;    /* serve /metrics to non-loopback clients */
	int audit_retention_days; /* audit rows older than this are pruned; 0 = keep; 90 */
	int audit_memory_cap;   /* audit records held in memory before spooling; 100000 */
};

#define CONFIG_WORKERS_MAX 64

void config_defaults(struct config *c);
/* The number of event loops c asks for: workers, or with auto one per online core (at
 * most CONFIG_WORKERS_MAX). */
int config_workers(const struct config *c);
/* Read fastgate.yaml; unknown keys and bad values are errors ("FILE:LINE: message"). */
int config_load_file(struct config *c, const char *path, struct errlist *errs);
void config_free(struct config *c);
/* For a reload: each setting that needs a restart (listen, keys, audit, control,
 * control_group, audit_memory_cap, and TLS turned on or off) gets a copy of its running
 * value in next, with a line in warns ("listen: changed in FILE; restart fastgated to
 * apply") where next read another. running is not touched, so a reload that fails later
 * leaves it as it was. */
void config_keep_restart_only(struct config *next, const struct config *running,
                              const char *file, struct errlist *warns);

#endif
