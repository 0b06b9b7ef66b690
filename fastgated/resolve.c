/* Name lookups on a thread of their own; see resolve.h. */
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <event2/event.h>

#include "resolve.h"

struct job {
	char *name;
	int port;
	resolve_fn fn;
	void *arg;
	struct resolve_result res;
	struct job *next;
};

struct resolver {
	int efd;
	struct event *ev;
	pthread_t thread;
	bool started;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stop;
	struct job *todo, *todo_tail;   /* for the thread */
	struct job *done;               /* for the loop */
};

static void job_free(struct job *j)
{
	free(j->name);
	free(j);
}

static void lookup(struct job *j)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
	                          .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res = NULL, *a;
	char port[8];

	snprintf(port, sizeof(port), "%d", j->port);
	j->res.err = getaddrinfo(j->name, port, &hints, &res);
	if (j->res.err)
		return;
	for (a = res; a && j->res.n < RESOLVE_MAX_ADDRS; a = a->ai_next) {
		if ((a->ai_family != AF_INET && a->ai_family != AF_INET6) ||
		    a->ai_addrlen > sizeof(j->res.addr[0]))
			continue;
		memcpy(&j->res.addr[j->res.n], a->ai_addr, a->ai_addrlen);
		j->res.len[j->res.n++] = a->ai_addrlen;
	}
	freeaddrinfo(res);
	if (j->res.n == 0)
		j->res.err = EAI_NONAME;
}

static void *thread_main(void *arg)
{
	struct resolver *r = arg;
	uint64_t one = 1;

	pthread_mutex_lock(&r->mu);
	for (;;) {
		struct job *j;

		while (!r->todo && !r->stop)
			pthread_cond_wait(&r->cv, &r->mu);
		if (r->stop)
			break;
		j = r->todo;
		r->todo = j->next;
		if (!r->todo)
			r->todo_tail = NULL;
		pthread_mutex_unlock(&r->mu);
		lookup(j);
		pthread_mutex_lock(&r->mu);
		j->next = r->done;
		r->done = j;
		if (write(r->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
			break;   /* cannot happen with an eventfd below its maximum */
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

/* On the loop: hand every finished lookup to its caller. */
static void done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct resolver *r = arg;
	struct job *list, *rev = NULL;
	uint64_t n;
	(void)what;

	if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		return;
	pthread_mutex_lock(&r->mu);
	list = r->done;
	r->done = NULL;
	pthread_mutex_unlock(&r->mu);
	while (list) {              /* oldest first */
		struct job *next = list->next;
		list->next = rev;
		rev = list;
		list = next;
	}
	while (rev) {
		struct job *next = rev->next;
		rev->fn(rev->arg, &rev->res);
		job_free(rev);
		rev = next;
	}
}

struct resolver *resolver_new(struct event_base *base)
{
	struct resolver *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	if (r->efd < 0 || !(r->ev = event_new(base, r->efd, EV_READ | EV_PERSIST, done_cb, r)) ||
	    event_add(r->ev, NULL) < 0)
		goto err;
	if (pthread_create(&r->thread, NULL, thread_main, r) != 0)
		goto err;
	r->started = true;
	pthread_setname_np(r->thread, "fg-dns");
	return r;
err:
	resolver_free(r);
	return NULL;
}

void resolver_free(struct resolver *r)
{
	if (!r)
		return;
	if (r->started) {
		pthread_mutex_lock(&r->mu);
		r->stop = true;
		pthread_cond_signal(&r->cv);
		pthread_mutex_unlock(&r->mu);
		pthread_join(r->thread, NULL);
	}
	while (r->todo) {
		struct job *j = r->todo;
		r->todo = j->next;
		job_free(j);
	}
	while (r->done) {
		struct job *j = r->done;
		r->done = j->next;
		job_free(j);
	}
	if (r->ev)
		event_free(r->ev);
	if (r->efd >= 0)
		close(r->efd);
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->mu);
	free(r);
}

int resolver_lookup(struct resolver *r, const char *name, int port, resolve_fn fn, void *arg)
{
	struct job *j = calloc(1, sizeof(*j));

	if (!j || !(j->name = strdup(name))) {
		free(j);
		return -1;
	}
	j->port = port;
	j->fn = fn;
	j->arg = arg;
	pthread_mutex_lock(&r->mu);
	if (r->todo_tail)
		r->todo_tail->next = j;
	else
		r->todo = j;
	r->todo_tail = j;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
	return 0;
}
