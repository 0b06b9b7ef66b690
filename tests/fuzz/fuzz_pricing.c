/* Fuzz target: price table loading and money arithmetic (fastgated/pricing.c).
 *
 * The input is written to one price file per process (created once in a private directory,
 * rewritten per input, removed at exit) and loaded. The loader's contract is checked on
 * every input: a failed load reports at least one error, and every error is a single
 * non-empty "FILE:LINE: message" or "FILE: message" line that starts with the file's path.
 * A table that loads has a one-line version, a glob and non-negative input and output on
 * every entry and no glob twice; pricing_find gives the first entry whose glob matches; and
 * pricing_cost, for counts derived from the input, equals the direct 128-bit computation,
 * never goes down when tokens are added and rounds once under a multiplier.
 *
 * The input as a string, and each of its lines, also goes through money_parse_usd and
 * money_parse_multiplier: what they accept is digits with at most one '.', within range,
 * and formats back to the same amount. */
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pricing.h"
#include "fuzz.h"

typedef unsigned __int128 u128;

static char dir[200], path[256];
static int fd = -1;

static void remove_files(void)
{
	unlink(path);
	rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *tmp = getenv("TMPDIR");

	(void)argc;
	(void)argv;
	/* tmpfs when there is one: rewriting a file on ext4 can flush it to disk every time */
	if (!tmp || !*tmp)
		tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
	snprintf(dir, sizeof(dir), "%s/fastgate-fuzz-pricing-%d", tmp, (int)getpid());
	snprintf(path, sizeof(path), "%s/pricing.yaml", dir);
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		perror(dir);
		abort();
	}
	atexit(remove_files);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		perror(path);
		abort();
	}
	return 0;
}

/* Overwrite in place, then cut to size: no truncation to zero, which is what makes ext4
 * flush a rewritten file on close. */
static bool write_input(const uint8_t *data, size_t size)
{
	size_t off = 0;

	while (off < size) {
		ssize_t n = pwrite(fd, data + off, size - off, (off_t)off);

		if (n <= 0)
			return false;
		off += (size_t)n;
	}
	return ftruncate(fd, (off_t)size) == 0;
}

static void check_errors(const struct errlist *errs)
{
	size_t plen = strlen(path);

	for (size_t i = 0; i < errs->n; i++) {
		const char *e = errs->lines[i];

		FUZZ_CHECK(e && *e, "error %zu is empty", i);
		FUZZ_CHECK(strncmp(e, path, plen) == 0 && e[plen] == ':',
		           "error does not start with \"FILE:\": %s", e);
		FUZZ_CHECK(e[plen + 1] != '\0', "error has no message: %s", e);
		FUZZ_CHECK(strchr(e, '\n') == NULL && strchr(e, '\r') == NULL,
		           "error spans more than one line: %s", e);
	}
}

/* The cost the plain way, for counts small enough that sum * m cannot pass 2^128. */
static int64_t reference_cost(const struct price *p, const struct usage_counts *u, int64_t m)
{
	const u128 div = (u128)1000000 * PPM;
	int64_t in = p->input < 0 ? 0 : p->input;
	int64_t rc = p->cached_input >= 0 ? p->cached_input : in;
	int64_t rw = p->cache_write >= 0 ? p->cache_write : in;
	int64_t out = p->output < 0 ? 0 : p->output;
	int64_t plain = u->prompt - u->cached - u->cache_write;
	u128 sum, cost;

	if (plain < 0)
		plain = 0;
	sum = (u128)plain * (uint64_t)in + (u128)u->cached * (uint64_t)rc +
	      (u128)u->cache_write * (uint64_t)rw + (u128)u->completion * (uint64_t)out;
	cost = (sum * (uint64_t)m + div / 2) / div;
	return cost > (u128)INT64_MAX ? INT64_MAX : (int64_t)cost;
}

static void check_costs(const struct price *p, uint64_t *seed)
{
	for (int k = 0; k < 4; k++) {
		/* counts below 2^20, a multiplier up to 1000 */
		struct usage_counts u = {
			(int64_t)(fuzz_next(seed) & 0xfffff), (int64_t)(fuzz_next(seed) & 0x3ffff),
			(int64_t)(fuzz_next(seed) & 0x3ffff), (int64_t)(fuzz_next(seed) & 0xfffff) };
		int64_t m = 1 + (int64_t)(fuzz_next(seed) % (uint64_t)(1000 * PPM));
		struct usage_counts more = u;
		int64_t c = pricing_cost(p, &u, m), c1, c2;
		__int128 twice;

		FUZZ_CHECK(c == reference_cost(p, &u, m), "cost %" PRId64 " for %s, expected %" PRId64,
		           c, p->match, reference_cost(p, &u, m));
		more.completion++;
		FUZZ_CHECK(pricing_cost(p, &more, m) >= c, "one more token out cost less (%s)", p->match);
		more = u;
		more.prompt++;
		FUZZ_CHECK(pricing_cost(p, &more, m) >= c, "one more token in cost less (%s)", p->match);
		/* one rounding: twice the multiplier is twice the cost, give or take one nano */
		c1 = pricing_cost(p, &u, PPM);
		c2 = pricing_cost(p, &u, 2 * PPM);
		twice = (__int128)c2 - 2 * (__int128)c1;
		FUZZ_CHECK(c1 >= 0 && (c2 == INT64_MAX || (twice >= -1 && twice <= 1)),
		           "cost %" PRId64 " at 1x, %" PRId64 " at 2x (%s)", c1, c2, p->match);
	}
}

static void check_table(const struct price_table *t, uint64_t seed)
{
	FUZZ_CHECK(t->version && *t->version && strlen(t->version) <= 64, "a table with no version");
	for (const char *s = t->version; *s; s++)
		FUZZ_CHECK((unsigned char)*s >= 0x20, "a control character in the version");
	FUZZ_CHECK(t->path && strcmp(t->path, path) == 0, "the table's path is not the file's");
	for (size_t i = 0; i < t->n; i++) {
		const struct price *p = &t->prices[i];
		const struct price *f;
		size_t first;

		FUZZ_CHECK(p->match && *p->match, "price %zu has no match", i);
		FUZZ_CHECK(p->input >= 0 && p->output >= 0, "price %s loaded without input or output", p->match);
		FUZZ_CHECK(p->cached_input >= -1 && p->cache_write >= -1, "price %s below -1", p->match);
		FUZZ_CHECK(p->line >= 1, "price %s has no line", p->match);
		for (size_t j = 0; j < i; j++)
			FUZZ_CHECK(strcmp(t->prices[j].match, p->match) != 0, "match %s loaded twice", p->match);
		/* the glob's own text as a model name: the first entry that matches it, or none */
		for (first = 0; first < t->n; first++)
			if (fnmatch(t->prices[first].match, p->match, 0) == 0)
				break;
		f = pricing_find(t, p->match);
		FUZZ_CHECK(first < t->n ? f == &t->prices[first] : f == NULL,
		           "pricing_find(%s) is not the first match", p->match);
		check_costs(p, &seed);
	}
	FUZZ_CHECK(pricing_find(t, "") == NULL && pricing_find(t, NULL) == NULL,
	           "an empty model name was priced");
}

/* What the money parsers accept is digits and one '.', in range, and formats back. */
static void check_money(const char *s)
{
	int64_t usd = -7, ppm = -7, again = -7;
	char buf[32];
	int dots = 0;

	if (money_parse_usd(s, &usd) == 0) {
		for (const char *c = s; *c; c++) {
			FUZZ_CHECK((*c >= '0' && *c <= '9') || *c == '.', "accepted \"%s\"", s);
			dots += *c == '.';
		}
		FUZZ_CHECK(dots <= 1 && s[0] != '.', "accepted \"%s\"", s);
		FUZZ_CHECK(usd >= 0 && usd <= 9000000000LL * NANO_PER_USD, "\"%s\" is %" PRId64, s, usd);
		money_format_usd(usd, buf, sizeof(buf));
		FUZZ_CHECK(money_parse_usd(buf, &again) == 0 && again == usd,
		           "\"%s\" is %" PRId64 ", formatted %s", s, usd, buf);
	} else {
		FUZZ_CHECK(usd == -7, "a refused amount was written");
	}
	if (money_parse_multiplier(s, &ppm) == 0) {
		FUZZ_CHECK(ppm >= 1 && ppm <= 1000 * PPM, "multiplier \"%s\" is %" PRId64, s, ppm);
		/* the same text as dollars: the same number, three more decimals */
		FUZZ_CHECK(usd == ppm * 1000, "multiplier \"%s\" is %" PRId64 " ppm but %" PRId64 " nano",
		           s, ppm, usd);
		FUZZ_CHECK(money_mul_ppm(ppm, PPM) == ppm && money_mul_ppm(PPM, ppm) == ppm,
		           "multiplying %" PRId64 " by 1", ppm);
	} else {
		FUZZ_CHECK(ppm == -7, "a refused multiplier was written");
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct errlist errs = { 0 };
	struct price_table *t;
	char *s;

	if (fd < 0)
		LLVMFuzzerInitialize(NULL, NULL);

	/* the input as a C string (to its first NUL), whole and line by line */
	s = malloc(size + 1);
	if (!s)
		abort();
	memcpy(s, data, size);
	s[size] = '\0';
	check_money(s);
	for (char *line = s, *nl; line; line = nl ? nl + 1 : NULL) {
		nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		check_money(line);
	}
	free(s);

	if (!write_input(data, size))
		return 0;
	t = pricing_load(path, &errs);
	check_errors(&errs);
	if (t) {
		FUZZ_CHECK(errs.n == 0, "a table loaded with %zu errors", errs.n);
		check_table(t, fuzz_hash(data, size) | 1);
		pricing_free(t);
	} else {
		FUZZ_CHECK(errs.n > 0, "the load failed without an error");
	}
	errlist_clear(&errs);
	return 0;
}
