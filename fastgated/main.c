/* fastgated: flags, start-up, signals, orderly shutdown. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <event2/event.h>

#include "audit.h"
#include "authfail.h"
#include "config.h"
#include "control.h"
#include "endpoints.h"
#include "gateway.h"
#include "health.h"
#include "http.h"
#include "keyusage.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "tls.h"
#include "transport_curl.h"
#include "transport_h1.h"
#include "workers.h"

#define USAGE \
	"usage: fastgated [-c FILE] [--listen ADDR:PORT] [--tls-cert FILE --tls-key FILE] [--routes DIR]\n" \
	"                 [--models FILE] [--pricing FILE] [--keys FILE] [--audit FILE] [--control PATH]\n" \
	"                 [--workers N|auto] [--check] [--daemon --pidfile FILE] [-v] [--version]\n"

struct runtime {
	struct gateway gw;
	struct config cfg;
	int argc;                  /* the command line: a reload applies its flags again */
	char **argv;
	const char *config_file;   /* -c FILE (in argv), or NULL: what a reload re-reads */
	struct event *sig_term, *sig_int, *sig_hup;
	struct event *drain_poll, *drain_deadline, *usage_flush, *trim;
	int conn_high;             /* most connections open at once since the last trim */
	struct keyusage *usage;    /* saves the keys' last-used times off the loop */
	struct health *health;     /* active health checks of the routes that ask for them */
	struct workers *workers;   /* loops 1..n-1, or NULL with one loop */
	int conn_total;            /* client connections open on every loop (atomic) */
	int signals_seen;
};

static void print_errors(const struct errlist *errs)
{
	for (size_t i = 0; i < errs->n; i++)
		fprintf(stderr, "%s\n", errs->lines[i]);
}

static void set_str(char **field, const char *value)
{
	free(*field);
	*field = strdup(value);
}

/* The version, then the paths this build uses where neither a flag nor the file names one,
 * because an installed fastgated's are not a source tree's and an operator must see which. */
static void print_version(void)
{
	printf("fastgated %s\n", FG_VERSION);
	printf("defaults:\n");
	printf("  config   %s\n", FG_DEFAULT_CONFIG[0] ? FG_DEFAULT_CONFIG : "(none; -c FILE)");
	printf("  routes   %s\n", FG_DEFAULT_ROUTES);
	printf("  models   %s\n", FG_DEFAULT_MODELS);
	printf("  pricing  %s\n", FG_DEFAULT_PRICING);
	printf("  keys     %s\n", FG_DEFAULT_KEYS);
	printf("  audit    %s\n", FG_DEFAULT_AUDIT);
	printf("  control  %s\n", FG_DEFAULT_CONTROL);
}

enum { OPT_LISTEN = 256, OPT_TLS_CERT, OPT_TLS_KEY, OPT_ROUTES, OPT_MODELS, OPT_PRICING, OPT_KEYS, OPT_AUDIT, OPT_CONTROL, OPT_CHECK, OPT_DAEMON,
       OPT_PIDFILE, OPT_VERSION, OPT_WORKERS };

static const struct option opts[] = {
	{ "config", required_argument, NULL, 'c' },
	{ "listen", required_argument, NULL, OPT_LISTEN },
	{ "tls-cert", required_argument, NULL, OPT_TLS_CERT },
	{ "tls-key", required_argument, NULL, OPT_TLS_KEY },
	{ "routes", required_argument, NULL, OPT_ROUTES },
	{ "models", required_argument, NULL, OPT_MODELS },
	{ "pricing", required_argument, NULL, OPT_PRICING },
	{ "keys", required_argument, NULL, OPT_KEYS },
	{ "audit", required_argument, NULL, OPT_AUDIT },
	{ "control", required_argument, NULL, OPT_CONTROL },
	{ "workers", required_argument, NULL, OPT_WORKERS },
	{ "check", no_argument, NULL, OPT_CHECK },
	{ "daemon", no_argument, NULL, OPT_DAEMON },
	{ "pidfile", required_argument, NULL, OPT_PIDFILE },
	{ "verbose", no_argument, NULL, 'v' },
	{ "version", no_argument, NULL, OPT_VERSION },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

/* --workers: N (1..CONFIG_WORKERS_MAX) or auto (0); -1 for anything else. */
static int parse_workers(const char *s)
{
	char *end;
	long n;

	if (strcmp(s, "auto") == 0)
		return 0;
	errno = 0;
	n = strtol(s, &end, 10);
	return errno || end == s || *end || n < 1 || n > CONFIG_WORKERS_MAX ? -1 : (int)n;
}

/* The flags over what the file said; at start and again at each reload, so that a flag
 * keeps overriding the file. The command line was checked at start: nothing is printed. */
static void apply_flags(int argc, char **argv, struct config *cfg, int *check)
{
	int c;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "c:vh", opts, NULL)) != -1) {
		switch (c) {
		case OPT_LISTEN: set_str(&cfg->listen, optarg); break;
		case OPT_TLS_CERT: set_str(&cfg->tls_cert, optarg); break;
		case OPT_TLS_KEY: set_str(&cfg->tls_key, optarg); break;
		case OPT_ROUTES: set_str(&cfg->routes_dir, optarg); break;
		case OPT_MODELS: set_str(&cfg->models_path, optarg); cfg->models_set = true; break;
		case OPT_PRICING: set_str(&cfg->pricing_path, optarg); cfg->pricing_set = true; break;
		case OPT_KEYS: set_str(&cfg->keys_path, optarg); break;
		case OPT_AUDIT: set_str(&cfg->audit_path, optarg); break;
		case OPT_CONTROL: set_str(&cfg->control_path, optarg); break;
		case OPT_PIDFILE: set_str(&cfg->pidfile, optarg); break;
		case OPT_WORKERS: cfg->workers = parse_workers(optarg); break;
		case OPT_DAEMON: cfg->daemonize = true; break;
		case OPT_CHECK: if (check) *check = 1; break;
		case 'v': cfg->verbose++; break;
		default: break;
		}
	}
}

/* The configuration as start and every reload make it: built-in defaults, then the file,
 * then the flags. 0, or -1 with the problems in errs (cfg is still the caller's to free). */
static int config_build(struct config *cfg, const char *file, int argc, char **argv,
                        int *check, struct errlist *errs)
{
	config_defaults(cfg);
	if (file && config_load_file(cfg, file, errs) < 0)
		return -1;
	apply_flags(argc, argv, cfg, check);
	if (!cfg->tls_cert != !cfg->tls_key) {
		errlist_add(errs, "fastgated: TLS needs both tls_cert and tls_key (--tls-cert, "
		            "--tls-key)");
		return -1;
	}
	return 0;
}

/* Returns -1 after printing a usage error, -2 after printing configuration errors, 1 for
 * --check, 2 for --version or --help (already printed), 0 to run. rt->cfg is built either
 * way (the caller frees it). */
static int parse_args(struct runtime *rt)
{
	struct errlist errs = { 0 };
	int c, check = 0;
	bool by_default = false;

	rt->config_file = NULL;
	opterr = 1;
	while ((c = getopt_long(rt->argc, rt->argv, "c:vh", opts, NULL)) != -1) {
		if (c == 'c')
			rt->config_file = optarg;
		else if (c == 'h') {
			printf(USAGE);
			return 2;
		} else if (c == OPT_VERSION) {
			print_version();
			return 2;
		} else if (c == '?') {
			fprintf(stderr, USAGE);
			return -1;
		} else if (c == OPT_WORKERS && parse_workers(optarg) < 0) {
			fprintf(stderr, "fastgated: --workers: expected a number of event loops from 1 to "
			        "%d, or auto (one per core), not '%s'\n", CONFIG_WORKERS_MAX, optarg);
			return -1;
		}
	}
	if (optind < rt->argc) {
		fprintf(stderr, "fastgated: unexpected argument '%s'\n" USAGE, rt->argv[optind]);
		return -1;
	}
	/* An installed daemon always reads its own file, so a missing one is an error: running
	 * on built-in defaults instead would hide an operator's settings without a word. */
	if (!rt->config_file && FG_DEFAULT_CONFIG[0]) {
		rt->config_file = FG_DEFAULT_CONFIG;
		by_default = true;
	}
	if (config_build(&rt->cfg, rt->config_file, rt->argc, rt->argv, &check, &errs) < 0) {
		print_errors(&errs);
		errlist_clear(&errs);
		if (by_default && access(rt->config_file, F_OK) < 0)
			fprintf(stderr, "fastgated: %s is the default configuration file; name another "
			        "with -c FILE (-c /dev/null: the built-in defaults)\n", rt->config_file);
		return -2; /* a bad configuration, not a usage error: exit 1 */
	}
	if (rt->cfg.daemonize && !rt->cfg.pidfile) {
		fprintf(stderr, "fastgated: --daemon needs --pidfile FILE\n");
		return -1;
	}
	return check;
}

static int run_check(struct config *cfg)
{
	struct errlist errs = { 0 };
	struct model_table *models = NULL;
	struct price_table *prices = NULL;
	int bad_models = gateway_load_models(cfg, &models, &errs) < 0;
	int bad_prices = gateway_load_prices(cfg, &prices, &errs) < 0;
	struct route_table *t = route_table_load(cfg->routes_dir, &errs);
	struct tls_server *tls = NULL;

	if (cfg->tls_cert && cfg->tls_key) {
		char *err = NULL;

		tls = tls_server_new(cfg->tls_cert, cfg->tls_key, &err);
		if (!tls)
			errlist_add(&errs, "%s", err ? err : "out of memory");
		free(err);
	}
	if (!t || bad_models || bad_prices || (cfg->tls_cert && !tls)) {
		print_errors(&errs);
		errlist_clear(&errs);
		route_table_unref(t);
		models_free(models);
		pricing_free(prices);
		tls_server_free(tls);
		return 1;
	}
	if (tls)
		printf("%s: TLS certificate OK (%s)\n", cfg->tls_cert, tls_server_describe(tls));
	tls_server_free(tls);
	if (models)
		printf("%s: %zu models OK\n", models->path, models->n);
	if (prices)
		printf("%s: %zu prices OK (version %s)\n", prices->path, prices->n, prices->version);
	models_free(models);
	pricing_free(prices);
	printf("%s: %zu routes OK\n", cfg->routes_dir, t->n);
	for (size_t i = 0; i < t->n; i++)
		route_print_pool(t->routes[i], stdout);
	route_table_unref(t);
	return 0;
}

static void spend_row_cb(void *arg, const struct spend_row *r)
{
	struct gateway *gw = arg;
	struct spend_totals t = { r->requests, r->tokens, r->cost_nano };

	keystore_spend_load(gw->keys, r->scope, r->id, r->period, r->start, &t, time(NULL));
}

/* What keys and users spent, from the audit database's counters, which are written in the
 * same transactions as the audit rows: the balances and the day and month windows go on
 * where they stood, however the last run ended. Before the first request. */
static int load_spend(struct gateway *gw, char **err)
{
	int64_t now = time(NULL);
	int64_t since = now - 31 * 86400;

	return audit_spend_load(gw->audit, since, spend_row_cb, gw, err);
}

static void drain_poll_cb(evutil_socket_t fd, short what, void *arg)
{
	struct runtime *rt = arg;
	(void)fd; (void)what;

	if (gateway_stats_sum(&rt->gw).inflight == 0) {
		log_info("all requests finished; exiting");
		event_base_loopexit(rt->gw.base, NULL);
	}
}

static void drain_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct runtime *rt = arg;
	(void)fd; (void)what;

	log_warn("drain timeout: %llu requests still in flight are cut",
	         (unsigned long long)gateway_stats_sum(&rt->gw).inflight);
	event_base_loopexit(rt->gw.base, NULL);
}

static void stop_cb(evutil_socket_t sig, short what, void *arg)
{
	struct runtime *rt = arg;
	struct timeval poll = { 0, 50000 }, deadline = { rt->cfg.drain_timeout, 0 };
	(void)what;

	if (++rt->signals_seen > 1) {
		log_warn("second signal: exiting now");
		event_base_loopexit(rt->gw.base, NULL);
		return;
	}
	log_info("signal %d: no new connections; draining %llu requests (at most %ds)", (int)sig,
	         (unsigned long long)gateway_stats_sum(&rt->gw).inflight, rt->cfg.drain_timeout);
	rt->gw.stopping = true;
	http_server_stop_accepting(rt->gw.http);
	workers_stop_accepting(rt->workers);
	event_add(rt->drain_poll, &poll);
	event_add(rt->drain_deadline, &deadline);
}

/* The loop's upstream transports keep up to max_connections idle connections (transport.h,
 * tr_set_idle_max), at start and after a reload that changes it. */
static void loop_idle_max(struct gateway *gw)
{
	for (int k = 0; k < TR_KIND_COUNT; k++)
		tr_set_idle_max(gw->transports[k], (unsigned)gw->cfg->max_connections);
}

/* What SIGHUP and the control channel's `reload` do, all or nothing, in this order:
 *  1. read the configuration as at start: defaults, fastgate.yaml, then the flags again;
 *  2. settings that need a restart keep their running value (a warning says so), and
 *     max_connections is cut to what the fd limit allows, as at start;
 *  3. read the model and price tables and the routes, from the paths step 1 gave, and the
 *     TLS certificate and key;
 *  4. swap in the settings, then the tables and the certificate; tell the audit writer its
 *     retention.
 * Nothing changes before step 4, so an error anywhere leaves the daemon as it was. Every
 * reader of a setting runs on this thread and holds no pointer into the configuration
 * across an event (the ranges and origins are read and done with inside one callback),
 * so the old one is freed at once. Returns 0 with warns filled, or -1 with errs filled
 * (what warns holds then describes a reload that did not happen). */
static int runtime_reload(struct runtime *rt, struct errlist *errs, struct errlist *warns)
{
	struct config next, old;
	struct gateway_tables tables = { 0 };
	struct tls_server *tls[CONFIG_WORKERS_MAX] = { 0 };   /* one per loop */
	unsigned loops = gateway_loops(&rt->gw);
	bool swap_tls;
	int cap = http_conn_capacity(), rc = -1;

	/* 1 */
	if (config_build(&next, rt->config_file, rt->argc, rt->argv, NULL, errs) < 0)
		goto out;
	/* 2 */
	config_keep_restart_only(&next, &rt->cfg, rt->config_file, warns);
	if (next.max_connections > cap) {
		errlist_add(warns, "max_connections: %d exceeds what the fd limit allows; using %d",
		            next.max_connections, cap);
		next.max_connections = cap;
	}
	/* 3 */
	if (gateway_tables_load(&next, &tables, errs) < 0)
		goto out;
	/* TLS stays on (step 2): the certificate and key, read again, for every loop */
	for (unsigned i = 0; next.tls_cert && i < loops; i++) {
		char *err = NULL;

		tls[i] = tls_server_new(next.tls_cert, next.tls_key, &err);
		if (!tls[i]) {
			errlist_add(errs, "%s", err ? err : "out of memory");
			free(err);
			goto out;
		}
	}
	/* 4, with the other loops paused: they read the settings and the tables */
	swap_tls = tls[0] != NULL;
	gateway_pause(&rt->gw);
	old = rt->cfg;
	rt->cfg = next;
	next = old;   /* freed below */
	gateway_tables_install(&rt->gw, &tables);
	for (unsigned i = 0; i < loops; i++)
		loop_idle_max(gateway_loop(&rt->gw, i));
	for (unsigned i = 0; swap_tls && i < loops; i++) {
		http_server_swap_tls(gateway_loop(&rt->gw, i)->http, tls[i]);
		tls[i] = NULL;
	}
	gateway_resume(&rt->gw);
	if (swap_tls)
		log_info("TLS certificate: %s", http_server_tls(rt->gw.http));
	if (rt->gw.audit && rt->cfg.audit_retention_days != next.audit_retention_days)
		audit_set_retention(rt->gw.audit, (unsigned)rt->cfg.audit_retention_days);
	if (rt->config_file)
		log_info("configuration re-read from %s", rt->config_file);
	rc = 0;
out:
	config_free(&next);
	gateway_tables_free(&tables);
	for (unsigned i = 0; i < loops; i++)
		tls_server_free(tls[i]);
	return rc;
}

static int reload_hook(void *arg, struct errlist *errs, struct errlist *warns)
{
	return runtime_reload(arg, errs, warns);
}

static void hup_cb(evutil_socket_t sig, short what, void *arg)
{
	struct runtime *rt = arg;
	struct errlist errs = { 0 }, warns = { 0 };
	(void)sig; (void)what;

	if (runtime_reload(rt, &errs, &warns) < 0) {
		log_error("reload failed; the previous configuration and routes keep serving:");
		for (size_t i = 0; i < errs.n; i++)
			log_error("  %s", errs.lines[i]);
	} else {
		for (size_t i = 0; i < warns.n; i++)
			log_warn("reload: %s", warns.lines[i]);
	}
	errlist_clear(&errs);
	errlist_clear(&warns);
}

/* After a burst of connections (thousands of open streams) has closed, glibc keeps the
 * memory they freed in its heap, and the daemon's RSS stays where the burst left it. Once
 * most of them are gone, hand the free pages back (malloc_trim releases free pages inside
 * the heap, not only its top). It walks the heap on the loop, a few milliseconds after a
 * burst of hundreds of megabytes, so only then. */
#define TRIM_FROM_CONNS 512

static void trim_cb(evutil_socket_t fd, short what, void *arg)
{
	struct runtime *rt = arg;
	int peak = 0, now = 0;
	(void)fd; (void)what;

	/* every loop's, as their memory is one heap to trim (glibc trims every arena) */
	for (unsigned i = 0; i < gateway_loops(&rt->gw); i++) {
		struct http_server *h = gateway_loop(&rt->gw, i)->http;

		peak += http_server_take_peak(h);
		now += http_server_connections(h);
	}
	if (peak > rt->conn_high)
		rt->conn_high = peak;
	if (rt->conn_high >= TRIM_FROM_CONNS && now <= rt->conn_high / 4) {
		malloc_trim(0);
		log_debug("%d connections at most since the last trim, %d now: heap trimmed",
		          rt->conn_high, now);
		rt->conn_high = now;
	}
}

static void usage_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct runtime *rt = arg;
	(void)fd; (void)what;

	keyusage_flush(rt->usage, rt->gw.keys);
}

/* The request-done subscriber that writes the audit trail: the live tail sees the row
 * first, then the writer thread takes it. One packed block (audit_record_pack) serves
 * both and outlives the request. */
static void audit_on_done(void *arg, const struct request_done *d)
{
	struct gateway *gw = arg;
	struct audit_record *rec;

	if (!gw->audit)
		return;
	rec = audit_record_pack(d->row, d->with_bodies);
	if (gw->loop == 0)
		control_publish_audit(gw->control, rec);
	else   /* the tail is loop 0's: a reference travels there */
		workers_publish(gw->workers, gw->loop, audit_record_share(rec));
	audit_lane_submit(gw->lane, rec);
}

/* Loop 0's side of workers_publish. */
static void publish_on_loop0(void *arg, struct audit_record *rec)
{
	struct runtime *rt = arg;

	control_publish_audit(rt->gw.control, rec);
}

static int daemonize(const char *pidfile)
{
	pid_t pid = fork();
	FILE *f;
	int fd;

	if (pid < 0)
		return -1;
	if (pid > 0)
		_exit(0);
	if (setsid() < 0)
		return -1;
	fd = open("/dev/null", O_RDWR);
	if (fd >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		if (fd > 2)
			close(fd);
	}
	f = fopen(pidfile, "w");
	if (!f)
		return -1;
	fprintf(f, "%d\n", (int)getpid());
	fclose(f);
	return 0;
}

/* What loop gw has of its own (the parts every loop has alike; loop 0's base, metrics
 * and the shared parts are made before): transports, audit lane, request-done hooks,
 * HTTP server with its probes. Loops after the first listen on the address loop 0 bound. */
static int loop_setup(struct runtime *rt, struct gateway *gw, char **err)
{
	struct http_server_opts ho = {
		.loop = gw->loop, .reuseport = gw->n_loops > 1, .conn_total = &rt->conn_total,
		.bind = gw->loop ? rt->gw.listen_addr : NULL,
	};
	struct http_handlers h = {
		.request = proxy_request, .refused = endpoints_refused,
		.conn_data_size = proxy_conn_data_size(), .conn_closed = proxy_conn_closed,
		.arg = gw,
	};

	if (gw->loop > 0) {
		gw->base = workers_make_base();
		gw->metrics = metrics_new();
		gw->hasher = key_hasher_new();
		if (!gw->base || !gw->metrics || !gw->hasher) {
			*err = strdup("out of memory");
			return -1;
		}
		gw->routes = rt->gw.routes;
		route_table_ref(gw->routes);
	}
	if (gw->n_loops > 1)
		metrics_share(gw->metrics);   /* any loop's scrape adds it up */
	gw->lane = audit_lane(gw->audit, gw->loop);
	gw->transports[TR_KIND_CURL] = transport_curl_new(gw->base, err);
	if (!gw->transports[TR_KIND_CURL])
		return -1;
	gw->transports[TR_KIND_NATIVE] = transport_h1_new(gw->base, err);
	if (!gw->transports[TR_KIND_NATIVE])
		return -1;
	loop_idle_max(gw);
	if (reqdone_subscribe(&gw->done, metrics_on_done, gw) < 0 ||
	    reqdone_subscribe(&gw->done, audit_on_done, gw) < 0) {
		*err = strdup("too many request-done subscribers");
		return -1;
	}
	gw->http = http_server_start(gw->base, gw->cfg, &h, &ho, err);
	if (!gw->http)
		return -1;
	if (endpoints_register(gw) < 0) {
		*err = strdup("cannot register /health and /metrics");
		return -1;
	}
	if (gw->loop == 0)
		snprintf(gw->listen_addr, sizeof(gw->listen_addr), "%s", http_server_addr(gw->http));
	else
		memcpy(gw->listen_addr, rt->gw.listen_addr, sizeof(gw->listen_addr));
	return 0;
}

/* Free what loop_setup made (and, for loops after the first, their base and the rest of
 * their own). Frees every client connection and lets their requests finish first. */
static void loop_teardown(struct gateway *gw)
{
	if (gw->http) {
		http_server_free(gw->http);
		gw->http = NULL;
	}
	proxy_spares_free(gw);
	transport_curl_free(gw->transports[TR_KIND_CURL]);
	transport_h1_free(gw->transports[TR_KIND_NATIVE]);
	gw->transports[TR_KIND_CURL] = gw->transports[TR_KIND_NATIVE] = NULL;
	if (gw->loop == 0)
		return;
	if (gw->routes)
		route_table_unref(gw->routes);
	gw->routes = NULL;
	metrics_free(gw->metrics);
	gw->metrics = NULL;
	key_hasher_free(gw->hasher);
	gw->hasher = NULL;
	if (gw->base)
		event_base_free(gw->base);
	gw->base = NULL;
}

static void shutdown_all(struct runtime *rt)
{
	struct gateway *gw = &rt->gw;

	if (gw->control) {
		control_stop(gw->control);
		gw->control = NULL;   /* requests finishing below publish to nobody */
	}
	/* the other loops first: their requests end on their own bases, from here */
	workers_join(rt->workers);
	for (unsigned i = 1; rt->workers && i < gw->n_loops; i++)
		loop_teardown(workers_loop(rt->workers, i));
	if (gw->http) {
		/* Frees every client connection and lets their requests finish. */
		http_server_free(gw->http);
		gw->http = NULL;
	}
	/* every request has finished: the last uses go with the rest */
	keyusage_flush(rt->usage, gw->keys);
	keyusage_stop(rt->usage);
	rt->usage = NULL;
	/* every request has finished and been handed over: write the rest of the trail */
	if (gw->audit)
		audit_close(gw->audit);
	health_stop(rt->health);   /* its checks use the transports */
	rt->health = NULL;
	loop_teardown(gw);
	workers_free(rt->workers);
	rt->workers = NULL;
	keystore_close(gw->keys);
	if (gw->routes)
		route_table_unref(gw->routes);
	models_free(gw->models);
	pricing_free(gw->prices);
	metrics_free(gw->metrics);
	authfail_free(gw->authfail);
	pool_clear(&gw->pool);
	struct event *evs[] = { rt->sig_term, rt->sig_int, rt->sig_hup, rt->drain_poll,
	                        rt->drain_deadline, rt->usage_flush, rt->trim };
	for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
		if (evs[i])
			event_free(evs[i]);
	if (gw->base)
		event_base_free(gw->base);
}

int main(int argc, char **argv)
{
	static struct runtime rt;
	struct gateway *gw = &rt.gw;
	struct errlist errs = { 0 };
	struct timeval every_10s = { 10, 0 };
	char *err = NULL;
	int rc = 1, mode;

	rt.argc = argc;
	rt.argv = argv;
	mode = parse_args(&rt);
	if (mode < 0) {
		config_free(&rt.cfg);
		return mode == -2 ? 1 : 2;
	}
	if (mode == 2) {
		config_free(&rt.cfg);
		return 0;
	}
	if (mode == 1) {
		rc = run_check(&rt.cfg);
		config_free(&rt.cfg);
		return rc;
	}
	log_set_level(rt.cfg.verbose ? LOG_LVL_DEBUG : LOG_LVL_INFO);
	signal(SIGPIPE, SIG_IGN);
	if (transport_curl_global_init() < 0) {
		log_error("cannot initialise libcurl");
		goto out;
	}
	if (rt.cfg.daemonize && daemonize(rt.cfg.pidfile) < 0) {
		log_error("cannot daemonize or write %s: %s", rt.cfg.pidfile, strerror(errno));
		goto out;
	}
	gw->cfg = &rt.cfg;
	gw->reload = reload_hook;
	gw->reload_arg = &rt;
	gw->started = time(NULL);
	pool_init(&gw->pool);   /* the one registry of target states, for every loop */
	gw->base = workers_make_base();
	gw->metrics = metrics_new();
	gw->authfail = authfail_new(AUTHFAIL_CAP);
	gw->n_loops = (unsigned)config_workers(&rt.cfg);
	if (!gw->base || !gw->metrics || !gw->authfail) {
		log_error("out of memory");
		goto out;
	}
	gw->keys = keystore_open(rt.cfg.keys_path, &err);
	if (!gw->keys) {
		log_error("key store %s: %s", rt.cfg.keys_path, err ? err : "cannot open");
		goto out;
	}
	rt.usage = keyusage_start(rt.cfg.keys_path, &err);
	if (!rt.usage) {
		log_error("%s", err);
		goto out;
	}
	{
		struct audit_options ao = { 0 };
		ao.retention_days = (unsigned)rt.cfg.audit_retention_days;
		ao.mem_cap = (size_t)rt.cfg.audit_memory_cap;
		ao.lanes = gw->n_loops;
		gw->audit = audit_open(rt.cfg.audit_path, &ao, &err);
		if (!gw->audit) {
			log_error("audit store %s: %s", rt.cfg.audit_path, err ? err : "cannot open");
			goto out;
		}
	}
	if (load_spend(gw, &err) < 0) {
		log_error("audit store %s: %s", rt.cfg.audit_path, err ? err : "cannot read spend");
		goto out;
	}
	if (gateway_reload_routes(gw, &errs) < 0) {
		print_errors(&errs);
		log_error("no valid route set in %s; not starting", rt.cfg.routes_dir);
		goto out;
	}
	if (gw->n_loops > 1) {
		rt.workers = workers_new(gw, gw->n_loops, &err);
		if (!rt.workers) {
			log_error("%s", err);
			goto out;
		}
		workers_on_publish(rt.workers, publish_on_loop0, &rt);
		/* what requests change on every loop: locked from now on */
		pool_share(&gw->pool);
		keystore_share(gw->keys);
	} else {
		gw->n_loops = 1;
	}
	/* loop 0 first: the others listen on the address it bound */
	for (unsigned i = 0; i < gw->n_loops; i++) {
		if (loop_setup(&rt, gateway_loop(gw, i), &err) < 0) {
			log_error("%s", err ? err : "cannot start the HTTP server");
			goto out;
		}
	}
	rt.health = health_start(gw);
	if (!rt.health) {
		log_error("out of memory");
		goto out;
	}
	gw->control = control_start(gw, rt.cfg.control_path, rt.cfg.control_group, &err);
	if (!gw->control) {
		log_error("control socket %s: %s", rt.cfg.control_path, err ? err : "cannot start");
		goto out;
	}
	rt.sig_term = evsignal_new(gw->base, SIGTERM, stop_cb, &rt);
	rt.sig_int = evsignal_new(gw->base, SIGINT, stop_cb, &rt);
	rt.sig_hup = evsignal_new(gw->base, SIGHUP, hup_cb, &rt);
	rt.drain_poll = event_new(gw->base, -1, EV_PERSIST, drain_poll_cb, &rt);
	rt.drain_deadline = evtimer_new(gw->base, drain_deadline_cb, &rt);
	rt.usage_flush = event_new(gw->base, -1, EV_PERSIST, usage_flush_cb, &rt);
	rt.trim = event_new(gw->base, -1, EV_PERSIST, trim_cb, &rt);
	if (!rt.sig_term || !rt.sig_int || !rt.sig_hup || !rt.drain_poll || !rt.drain_deadline ||
	    !rt.usage_flush || !rt.trim) {
		log_error("out of memory");
		goto out;
	}
	event_add(rt.sig_term, NULL);
	event_add(rt.sig_int, NULL);
	event_add(rt.sig_hup, NULL);
	event_add(rt.usage_flush, &every_10s);
	event_add(rt.trim, &every_10s);
	if (rt.workers && workers_start(rt.workers, &err) < 0) {
		log_error("%s", err ? err : "cannot start the event-loop threads");
		goto out;
	}

	log_info("fastgated %s listening on %s://%s (%zu routes, %zu keys, %u worker%s, control %s)",
	         FG_VERSION, http_server_tls(gw->http) ? "https" : "http", gw->listen_addr,
	         gw->routes->n, keystore_count(gw->keys), gw->n_loops, gw->n_loops == 1 ? "" : "s",
	         rt.cfg.control_path);
	if (http_server_tls(gw->http))
		log_info("TLS certificate: %s", http_server_tls(gw->http));
	event_base_dispatch(gw->base);
	rc = 0;
out:
	free(err);
	errlist_clear(&errs);
	shutdown_all(&rt);
	transport_curl_global_cleanup();
	config_free(&rt.cfg);
	return rc;
}
