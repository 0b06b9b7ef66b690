/* Fuzz target: route file loading and matching (fastgated/routes.c).
 *
 * The input is written to one route file per process (created once in a private directory
 * next to a few key files it may name, rewritten per input, removed at exit) and loaded. The loader's contract is checked on every input: a failed load reports at
 * least one error, and every error is a single non-empty "FILE:LINE: message" or
 * "FILE: message" line that starts with the file's path, because fastgated --check and
 * `fastgate-cli reload` print them one per line. A table that loads is matched against a
 * few requests: a match must be an enabled route whose pattern and methods accept the
 * request, and every route must be findable by its unique name. One input length in four
 * is loaded as two files, which exercises the duplicate-name report. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "reqjson.h"
#include "routes.h"
#include "fuzz.h"

static char dir[200], path[256];
static int fd = -1;

/* Files a route may name, relative to the route file: api_key_file and ca_file then reach
 * their success and permission paths. */
static const struct {
	const char *name;
	const char *text;
	mode_t mode;
} side_files[] = {
	{ "key", "sk-from-file\n", 0600 },
	{ "key644", "sk-from-file", 0644 },
	{ "empty.key", " \n", 0600 },
	{ "two-lines.key", "a\nb\n", 0600 },
	{ "ca.pem", "-----BEGIN CERTIFICATE-----\n", 0644 },
};

static void remove_files(void)
{
	char p[300];

	for (size_t i = 0; i < sizeof(side_files) / sizeof(side_files[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, side_files[i].name);
		unlink(p);
	}
	unlink(path);
	rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *tmp = getenv("TMPDIR");
	char p[300];

	(void)argc;
	(void)argv;
	/* tmpfs when there is one: rewriting a file on ext4 can flush it to disk every time */
	if (!tmp || !*tmp)
		tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
	snprintf(dir, sizeof(dir), "%s/fastgate-fuzz-routes-%d", tmp, (int)getpid());
	snprintf(path, sizeof(path), "%s/routes.yaml", dir);
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		perror(dir);
		abort();
	}
	atexit(remove_files);
	for (size_t i = 0; i < sizeof(side_files) / sizeof(side_files[0]); i++) {
		int sfd;

		snprintf(p, sizeof(p), "%s/%s", dir, side_files[i].name);
		sfd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, side_files[i].mode);
		if (sfd < 0 || write(sfd, side_files[i].text, strlen(side_files[i].text)) < 0 ||
		    fchmod(sfd, side_files[i].mode) < 0) {
			perror(p);
			abort();
		}
		close(sfd);
	}
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		perror(path);
		abort();
	}
	/* ${VAR} expansion and if_env have something to find, set and unset */
	setenv("FUZZ_KEY", "sk-fuzz-0123456789", 1);
	setenv("FUZZ_EMPTY", "", 1);
	setenv("FUZZ_NEWLINE", "a\nb", 1);
	unsetenv("FUZZ_UNSET");
	json_object_seed(1);
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

static void check_match(const struct route_table *t, const char *method, const char *rpath,
                        const char *body)
{
	struct route_request rq = { .method = method, .path = rpath, .body = body,
	                            .body_len = body ? strlen(body) : 0 };
	struct reqjson rj = { 0 };
	const struct route *r = NULL;
	enum route_match_result m;

	if (body) {   /* the parse phase's reading, as the proxy makes it */
		reqjson_parse(&rj, body, strlen(body));
		rq.rj = &rj;
	}
	m = route_match(t, &rq, &r);

	if (m == ROUTE_MATCHED) {
		bool method_ok;

		FUZZ_CHECK(r != NULL && r->enabled, "matched a disabled route");
		method_ok = r->n_methods == 0;
		FUZZ_CHECK(route_path_match(r->match_path, rpath), "route %s matched %s but its pattern %s does not",
		           r->name, rpath, r->match_path);
		for (size_t i = 0; i < r->n_methods; i++)
			method_ok |= strcasecmp(r->methods[i], method) == 0;
		FUZZ_CHECK(method_ok, "route %s matched method %s", r->name, method);
		if (r->match_body)
			FUZZ_CHECK(rj.result == RJ_OK && route_body_match(r->match_body, &rj, body),
			           "route %s matched without its body", r->name);
	} else {
		FUZZ_CHECK(r == NULL, "no match but a route was returned");
		if (m == ROUTE_BAD_BODY)
			FUZZ_CHECK(!body || rj.result != RJ_OK, "bad body reported for a JSON object body");
	}
	reqjson_free(&rj);
}

static void check_table(struct route_table *t)
{
	static const char *const paths[] = { "/", "/v1/chat/completions", "/v1/models",
		"/api/a/b/c.json", "/user/42", "/qwen/v1/x", "//", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r",
		/* more segments than route_path_match keeps on its stack */
		("/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p"
		 "/q/r/s/t/u/v/w/x/y/z/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z.json") };
	static const char *const bodies[] = { NULL, "{\"model\":\"demo-1\",\"stream\":true}",
		"{\"model\":\"gpt-4o\",\"n\":1,\"x\":false}", "not json", "[1]",
		"{\"model\":\"Qwen3-8b\",\"stream\":true,\"n\":1,\"temperature\":0.5}" };
	static const char *const methods[] = { "POST", "GET", "get" };

	FUZZ_CHECK(t->refcount == 1, "new table has refcount %d", t->refcount);
	for (size_t i = 0; i < t->n; i++) {
		const struct route *r = t->routes[i];

		FUZZ_CHECK(r->name && *r->name, "route %zu has no name", i);
		FUZZ_CHECK(route_table_find(t, r->name) == r, "route %s not found by name", r->name);
		FUZZ_CHECK(!r->unavailable || !r->enabled, "unavailable route %s is enabled", r->name);
		FUZZ_CHECK(r->targets[0].url && r->targets[0].origin && r->targets[0].host,
		           "route %s loaded without an upstream", r->name);
		FUZZ_CHECK(r->timeout > 0 && r->idle_timeout > 0, "route %s has a zero timeout", r->name);
		if (i > 0)
			FUZZ_CHECK(t->routes[i - 1]->priority <= r->priority, "routes out of priority order");
		/* each route's own pattern, taken as a path, is a request worth trying */
		if (r->match_path && r->match_path[0] == '/')
			check_match(t, r->n_methods ? r->methods[0] : "GET", r->match_path, bodies[1]);
	}
	for (size_t p = 0; p < sizeof(paths) / sizeof(paths[0]); p++)
		for (size_t b = 0; b < sizeof(bodies) / sizeof(bodies[0]); b++)
			check_match(t, methods[(p + b) % 3], paths[p], bodies[b]);
	route_table_ref(t);
	route_table_unref(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *files[2] = { path, path };
	struct errlist errs = { 0 };
	struct route_table *t;

	if (fd < 0)
		LLVMFuzzerInitialize(NULL, NULL);
	if (!write_input(data, size))
		return 0;
	t = route_table_load_files(files, size % 4 == 3 ? 2 : 1, &errs);
	check_errors(&errs);
	if (t) {
		FUZZ_CHECK(errs.n == 0, "a table loaded with %zu errors", errs.n);
		check_table(t);
		route_table_unref(t);
	} else {
		FUZZ_CHECK(errs.n > 0, "the load failed without an error");
	}
	errlist_clear(&errs);
	return 0;
}
