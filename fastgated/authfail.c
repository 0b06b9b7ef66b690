/* See authfail.h. The table: entries in one array, found by a chained hash of their
 * address, and linked in the order their windows started, so that the head of that list
 * is both the first to expire and the one to give up when the table is full. An entry's
 * window restarts only at now (a monotonic clock), so moving it to the tail then keeps
 * the list in order. Indexes are kept plus one, so that 0 ends a list. */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>

#include "authfail.h"
#include "util.h"

#define FIRST_ENTRIES 64
/* Expired entries freed by each count, oldest first: the table sheds a burst of old
 * addresses over the next counts instead of in one long pause. */
#define TRIM_PER_COUNT 16

struct entry {
	unsigned char addr[16];  /* as addr_key makes it */
	int64_t start;           /* ms: the window's first failure */
	uint32_t fails;
	uint32_t next;           /* the hash chain; on the free list, the next free entry */
	uint32_t older, newer;   /* the list by start */
};

struct authfail {
	struct entry *e;
	uint32_t made;           /* entries handed out so far, free ones included */
	uint32_t alloc;          /* room in e */
	uint32_t max;
	uint32_t *head;          /* chains, mask + 1 of them */
	uint32_t mask;
	uint32_t free;           /* entries given back */
	uint32_t oldest, newest;
	size_t live;             /* read without the lock: the common case is none */
	uint64_t k0, k1;         /* the hash key: random, so clients cannot aim at one chain */
	pthread_mutex_t mu;      /* every loop counts and checks here */
};

static const unsigned char v4_mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
static const unsigned char v6_loopback[16] = { [15] = 1 };

/* The 16 bytes the client at ip is counted under: an IPv4 address as IPv4-mapped IPv6,
 * an IPv6 address's /64. Text that is no address (which forwarded.c never gives) counts
 * under zeros, shared. False for loopback, never counted. */
static bool addr_key(const char *ip, unsigned char out[16])
{
	unsigned char a[16];

	memset(out, 0, 16);
	if (ip && inet_pton(AF_INET, ip, a) == 1) {
		memcpy(out, v4_mapped, 12);
		memcpy(out + 12, a, 4);
	} else if (ip && inet_pton(AF_INET6, ip, a) == 1) {
		if (memcmp(a, v6_loopback, 16) == 0)
			return false;
		memcpy(out, a, memcmp(a, v4_mapped, 12) == 0 ? 16 : 8);
	}
	return !(memcmp(out, v4_mapped, 12) == 0 && out[12] == 127);
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND do { \
	v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
	v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2; \
	v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0; \
	v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); } while (0)

/* SipHash-2-4 of 16 bytes: the addresses are the clients' choice (an IPv6 /48 holds 65536
 * /64s), and with a hash they could predict they could put every one in the same chain. */
static uint64_t hash16(const struct authfail *af, const unsigned char in[16])
{
	uint64_t v0 = 0x736f6d6570736575ULL ^ af->k0, v1 = 0x646f72616e646f6dULL ^ af->k1;
	uint64_t v2 = 0x6c7967656e657261ULL ^ af->k0, v3 = 0x7465646279746573ULL ^ af->k1;
	uint64_t m[2], b = (uint64_t)16 << 56;

	memcpy(m, in, 16);
	for (int i = 0; i < 2; i++) {
		v3 ^= m[i];
		SIPROUND;
		SIPROUND;
		v0 ^= m[i];
	}
	v3 ^= b;
	SIPROUND;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

static struct entry *at(const struct authfail *af, uint32_t i)
{
	return &af->e[i - 1];
}

static uint32_t *chain_of(struct authfail *af, const unsigned char addr[16])
{
	return &af->head[hash16(af, addr) & af->mask];
}

static uint32_t find(struct authfail *af, const unsigned char key[16])
{
	uint32_t i = af->head ? *chain_of(af, key) : 0;

	while (i && memcmp(at(af, i)->addr, key, 16) != 0)
		i = at(af, i)->next;
	return i;
}

static void age_unlink(struct authfail *af, uint32_t i)
{
	struct entry *x = at(af, i);

	if (x->older)
		at(af, x->older)->newer = x->newer;
	else
		af->oldest = x->newer;
	if (x->newer)
		at(af, x->newer)->older = x->older;
	else
		af->newest = x->older;
	x->older = x->newer = 0;
}

static void age_push(struct authfail *af, uint32_t i)
{
	struct entry *x = at(af, i);

	x->older = af->newest;
	x->newer = 0;
	if (af->newest)
		at(af, af->newest)->newer = i;
	else
		af->oldest = i;
	af->newest = i;
}

/* Take entry i out of the table onto the free list. */
static void drop(struct authfail *af, uint32_t i)
{
	uint32_t *p = chain_of(af, at(af, i)->addr);

	while (*p != i)
		p = &at(af, *p)->next;
	*p = at(af, i)->next;
	age_unlink(af, i);
	at(af, i)->next = af->free;
	af->free = i;
	__atomic_store_n(&af->live, af->live - 1, __ATOMIC_RELAXED);
}

/* Twice the room (up to max) and twice the chains, every entry in use chained again. */
static void grow(struct authfail *af)
{
	uint32_t room = af->alloc ? af->alloc * 2 : FIRST_ENTRIES, chains = 1;

	if (room > af->max)
		room = af->max;
	while (chains < room)
		chains *= 2;
	af->e = xrealloc(af->e, (size_t)room * sizeof(*af->e));
	af->alloc = room;
	free(af->head);
	af->head = xcalloc(chains, sizeof(*af->head));
	af->mask = chains - 1;
	for (uint32_t i = af->oldest; i; i = at(af, i)->newer) {
		uint32_t *p = chain_of(af, at(af, i)->addr);

		at(af, i)->next = *p;
		*p = i;
	}
}

/* A free entry: one given back, a new one, or, with the table full, the one whose window
 * started first. */
static uint32_t take(struct authfail *af)
{
	uint32_t i;

	if (!af->free && af->made == af->alloc) {
		if (af->alloc < af->max)
			grow(af);
		else
			drop(af, af->oldest);
	}
	if (af->free) {
		i = af->free;
		af->free = at(af, i)->next;
	} else {
		i = ++af->made;
	}
	return i;
}

struct authfail *authfail_new(size_t cap)
{
	struct authfail *af = xcalloc(1, sizeof(*af));
	uint64_t k[2];

	af->max = cap < 1 ? 1 : cap > UINT32_MAX / 2 ? UINT32_MAX / 2 : (uint32_t)cap;
	if (getrandom(k, sizeof(k), GRND_NONBLOCK) != (ssize_t)sizeof(k)) {
		/* no entropy yet (early boot): a key nobody outside knows is still better */
		k[0] = (uint64_t)mono_ms() * 0x9e3779b97f4a7c15ULL;
		k[1] = (uint64_t)(uintptr_t)af ^ 0xc2b2ae3d27d4eb4fULL;
	}
	af->k0 = k[0];
	af->k1 = k[1];
	pthread_mutex_init(&af->mu, NULL);
	return af;
}

void authfail_free(struct authfail *af)
{
	if (!af)
		return;
	free(af->e);
	free(af->head);
	pthread_mutex_destroy(&af->mu);
	free(af);
}

int64_t authfail_wait(struct authfail *af, const char *ip, int64_t limit, int64_t window_ms,
                      int64_t now_ms)
{
	unsigned char key[16];
	const struct entry *x;
	int64_t wait = 0;
	uint32_t i;

	/* the common case, no failures held: no hashing and no lock */
	if (!authfail_size(af) || !addr_key(ip, key))
		return 0;
	pthread_mutex_lock(&af->mu);
	if ((i = find(af, key))) {
		x = at(af, i);
		if (now_ms - x->start < window_ms && x->fails >= limit)
			wait = x->start + window_ms - now_ms;
	}
	pthread_mutex_unlock(&af->mu);
	return wait;
}

uint32_t authfail_count(struct authfail *af, const char *ip, int64_t window_ms,
                        int64_t now_ms)
{
	unsigned char key[16];
	struct entry *x;
	uint32_t i, fails;

	if (!af || !addr_key(ip, key))
		return 0;
	pthread_mutex_lock(&af->mu);
	for (int n = 0; n < TRIM_PER_COUNT && af->oldest &&
	                now_ms - at(af, af->oldest)->start >= window_ms; n++)
		drop(af, af->oldest);
	i = find(af, key);
	if (i && now_ms - at(af, i)->start >= window_ms) {
		/* a new window: at the tail of the list, where its start now belongs */
		at(af, i)->fails = 0;
		at(af, i)->start = now_ms;
		age_unlink(af, i);
		age_push(af, i);
	} else if (!i) {
		uint32_t *chain;

		i = take(af);
		x = at(af, i);
		memcpy(x->addr, key, 16);
		x->start = now_ms;
		x->fails = 0;
		chain = chain_of(af, key);
		x->next = *chain;
		*chain = i;
		age_push(af, i);
		__atomic_store_n(&af->live, af->live + 1, __ATOMIC_RELAXED);
	}
	x = at(af, i);
	if (x->fails < UINT32_MAX)
		x->fails++;
	fails = x->fails;
	pthread_mutex_unlock(&af->mu);
	return fails;
}

size_t authfail_size(const struct authfail *af)
{
	return af ? __atomic_load_n(&af->live, __ATOMIC_RELAXED) : 0;
}
