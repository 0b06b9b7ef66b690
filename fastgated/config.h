/* Daemon configuration: built-in defaults, then fastgate.yaml (-c FILE), then flags. */
#ifndef FG_CONFIG_H
#define FG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "cidr.h"
#include "errlist.h"

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
	int max_connections;    /* open client connections; 4096 */
	int drain_timeout;      /* seconds SIGTERM waits for in-flight requests; 30 */
	bool metrics_public;    /* serve /metrics to non-loopback clients */
	int audit_retention_days; /* audit rows older than this are pruned; 0 = keep; 90 */
	int audit_memory_cap;   /* audit records held in memory before spooling; 100000 */
};

void config_defaults(struct config *c);
/* Read fastgate.yaml; unknown keys and bad values are errors ("FILE:LINE: message"). */
int config_load_file(struct config *c, const char *path, struct errlist *errs);
void config_free(struct config *c);

#endif
