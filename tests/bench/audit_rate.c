/*
 * audit_rate — CPU per row of the audit writer thread, on its own: submits N records at a
 * steady RATE per second through audit_submit() (as the event loop does), closes the store
 * and prints the writer's user and system time per row. For A/B of audit.c changes; run
 * each build several times, interleaved, and compare medians (the machine is noisy).
 *
 *   make programs
 *   cc -O2 -D_GNU_SOURCE -Ifastgated tests/bench/audit_rate.c build/libfg.a \
 *      $(pkg-config --libs sqlite3 jansson libcrypto libevent) -lpthread -lm -o /tmp/audit_rate
 *   /tmp/audit_rate /tmp/ar.db 100000 15000     (remove /tmp/ar.db* between runs)
 *
 * The writer's time is the process's minus the submitting (main) thread's, both from
 * getrusage() after audit_close() has joined the writer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "audit.h"
#include "reqid.h"

static struct reqid_gen test_ids;

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double wall_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_REALTIME, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double tv_s(struct timeval t)
{
	return (double)t.tv_sec + (double)t.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
	struct rusage s0, m0, s1, m1;
	struct audit *a;
	char *err = NULL;
	long n;
	double rate, t0, user, sys;

	if (argc != 4 || (n = atol(argv[2])) <= 0 || (rate = atof(argv[3])) <= 0) {
		fprintf(stderr, "usage: audit_rate DB ROWS RATE\n");
		return 2;
	}
	if (reqid_init(&test_ids, 0) < 0 || !(a = audit_open(argv[1], NULL, &err))) {
		fprintf(stderr, "audit_rate: %s\n", err ? err : "cannot start");
		return 1;
	}
	getrusage(RUSAGE_SELF, &s0);
	getrusage(RUSAGE_THREAD, &m0);
	t0 = now_s();
	for (long i = 0; i < n; i++) {
		struct audit_record r = { 0 };
		char id[REQID_LEN + 1];

		reqid_next(&test_ids, id);
		r.request_id = id;
		r.started_at = wall_s();   /* the second the id carries, as in the daemon */
		r.key_id = 1;
		r.key_name = "bench";
		r.client_ip = "127.0.0.1";
		r.method = "POST";
		r.path = "/v1/chat/completions";
		r.route = "chat";
		r.upstream = "http://127.0.0.1:1234/v1/chat/completions";
		r.status = 200;
		r.latency_ms = 1.234;
		r.ttfb_ms = 1.1;
		r.bytes_in = 300;
		r.bytes_out = 310;
		r.model = "mock-model";
		r.prompt_tokens = 12;
		r.completion_tokens = 34;
		audit_submit(a, audit_record_pack(&r, false));
		if (i % 100 == 99) {   /* keep to the rate, 100 records at a time */
			double ahead = t0 + (double)(i + 1) / rate - now_s();
			if (ahead > 0)
				usleep((useconds_t)(ahead * 1e6));
		}
	}
	audit_close(a);
	getrusage(RUSAGE_SELF, &s1);
	getrusage(RUSAGE_THREAD, &m1);
	user = (tv_s(s1.ru_utime) - tv_s(s0.ru_utime)) - (tv_s(m1.ru_utime) - tv_s(m0.ru_utime));
	sys = (tv_s(s1.ru_stime) - tv_s(s0.ru_stime)) - (tv_s(m1.ru_stime) - tv_s(m0.ru_stime));
	printf("rows %ld in %.2f s: writer user %.2f sys %.2f = %.2f us/row\n", n, now_s() - t0,
	       user * 1e6 / (double)n, sys * 1e6 / (double)n, (user + sys) * 1e6 / (double)n);
	return 0;
}
