/* Replay driver: runs a fuzz target's LLVMFuzzerTestOneInput on every file in the given
 * directories (or on the given files), so make test can replay the corpus with gcc's
 * sanitizers and no clang. Each input is copied into a buffer of exactly its size, as
 * libFuzzer does, so a read past the end is caught.
 *
 * A crash or a broken invariant ends the process; before it dies it names the input and
 * how many passed ("replay: FAILED on FILE after N passed"), which run.sh reads. Otherwise
 * the closing line is "N passed, N failed", failed counting inputs that could not be read. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE  /* asprintf */
#endif
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));
/* from the sanitizer runtime; weak so a coverage build without sanitizers links too */
void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

static const char *current;   /* the input being run, for the death message */
static int passed, failed;

static void say_where(void)
{
	char msg[4200];
	int n;

	if (!current)
		return;
	n = snprintf(msg, sizeof(msg), "replay: FAILED on %s after %d passed\n", current, passed);
	if (n > 0)
		(void)!write(2, msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
}

/* ASan and UBSan reports end here */
static void on_sanitizer_death(void)
{
	say_where();
}

/* abort() from FUZZ_CHECK: the sanitizers leave SIGABRT alone */
static void on_signal(int sig)
{
	say_where();
	signal(sig, SIG_DFL);
	raise(sig);
}

static int read_all(const char *path, uint8_t **out, size_t *len)
{
	FILE *f = fopen(path, "rb");
	struct stat st;
	uint8_t *buf;
	size_t got;

	if (!f)
		return -1;
	if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
		fclose(f);
		return -1;
	}
	/* malloc(0) may return NULL; libFuzzer passes a valid pointer even for empty inputs */
	buf = malloc(st.st_size > 0 ? (size_t)st.st_size : 1);
	if (!buf) {
		fclose(f);
		return -1;
	}
	got = fread(buf, 1, (size_t)st.st_size, f);
	fclose(f);
	if (got != (size_t)st.st_size) {
		free(buf);
		return -1;
	}
	*out = buf;
	*len = got;
	return 0;
}

static void run_file(const char *path)
{
	uint8_t *buf = NULL;
	size_t len = 0;

	if (read_all(path, &buf, &len) < 0) {
		fprintf(stderr, "replay: cannot read %s: %s\n", path, strerror(errno));
		failed++;
		return;
	}
	current = path;
	LLVMFuzzerTestOneInput(buf, len);
	current = NULL;
	free(buf);
	passed++;
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Files in name order, so a failure reproduces at the same point every run. */
static void run_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char **names = NULL;
	size_t n = 0, cap = 0;

	if (!d) {
		fprintf(stderr, "replay: cannot open %s: %s\n", dir, strerror(errno));
		failed++;
		return;
	}
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (n == cap) {
			char **p;

			cap = cap ? 2 * cap : 64;
			p = realloc(names, cap * sizeof(*names));
			if (!p)
				abort();
			names = p;
		}
		if (asprintf(&names[n], "%s/%s", dir, de->d_name) < 0)
			abort();
		n++;
	}
	closedir(d);
	if (n)
		qsort(names, n, sizeof(*names), name_cmp);
	for (size_t i = 0; i < n; i++) {
		run_file(names[i]);
		free(names[i]);
	}
	free(names);
}

int main(int argc, char **argv)
{
	struct stat st;

	if (argc < 2) {
		fprintf(stderr, "usage: %s DIR|FILE...\n", argv[0]);
		return 2;
	}
	if (__sanitizer_set_death_callback)
		__sanitizer_set_death_callback(on_sanitizer_death);
	/* SIGSEGV and SIGBUS stay with the sanitizers, which report and then call back */
	signal(SIGABRT, on_signal);
	if (LLVMFuzzerInitialize)
		LLVMFuzzerInitialize(&argc, &argv);
	for (int i = 1; i < argc; i++) {
		if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode))
			run_dir(argv[i]);
		else
			run_file(argv[i]);
	}
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
