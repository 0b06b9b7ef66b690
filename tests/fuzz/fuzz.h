/* Shared helpers for the fuzz targets in tests/fuzz/.
 *
 * Each target is built twice: by clang with -fsanitize=fuzzer (libFuzzer supplies main and
 * mutates inputs), and by gcc with replay.c as main (make test replays the corpus without
 * clang). A broken invariant aborts, so both libFuzzer and the replay see it as a crash. */
#ifndef FG_FUZZ_H
#define FG_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond, ...) do { \
	if (!(cond)) { \
		fprintf(stderr, "%s:%d: fuzz invariant broken: %s: ", __FILE__, __LINE__, #cond); \
		fprintf(stderr, __VA_ARGS__); \
		fputc('\n', stderr); \
		abort(); \
	} } while (0)

/* FNV-1a: split points and limits are derived from the input itself, so every input
 * replays exactly the same way (no randomness outside what libFuzzer mutates). */
static inline uint64_t fuzz_hash(const uint8_t *data, size_t size)
{
	uint64_t h = 1469598103934665603ULL;

	for (size_t i = 0; i < size; i++) {
		h ^= data[i];
		h *= 1099511628211ULL;
	}
	return h;
}

/* Next pseudo-random number from a state seeded by fuzz_hash (xorshift64*). */
static inline uint64_t fuzz_next(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ULL;
}

#endif
