/* Unit tests for bytescan.h: line_scan() (and its word-at-a-time path, which an x86-64
 * build uses only for lines of 8 to 15 bytes) against a byte-by-byte reference, with the
 * colon and the unprintable bytes at every position of every length around the 8- and
 * 16-byte steps, and on random lines. Each line sits at the very end of its own heap block
 * of exactly its length, so a read past it is an ASan error. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bytescan.h"
#include "unit.h"

static bool ref_scan(const unsigned char *s, size_t n, size_t *colon)
{
	bool ok = true;

	*colon = n;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < 0x20 || s[i] >= 0x7f)
			ok = false;
		if (s[i] == ':' && *colon == n)
			*colon = i;
	}
	return ok;
}

static int mismatches;

/* Scan buf[0..n) with both paths, copied into a block of exactly n bytes. */
static void check_line(const unsigned char *buf, size_t n)
{
	char *s = malloc(n ? n : 1);
	size_t want_colon, colon = 12345, wcolon = 12345;
	bool want, got;

	if (!s)
		abort();
	memcpy(s, buf, n);
	want = ref_scan(buf, n, &want_colon);
	got = line_scan(s, n, &colon);
	if (got != want || colon != want_colon) {
		if (mismatches++ < 10)
			fprintf(stderr, "  line_scan n=%zu: printable %d colon %zu, expected %d %zu\n",
			        n, got, colon, want, want_colon);
	}
	if (n >= 8) {
		wcolon = n;   /* line_scan_words() expects *colon preset to n */
		got = line_scan_words(s, n, &wcolon);
		if (got != want || wcolon != want_colon) {
			if (mismatches++ < 10)
				fprintf(stderr, "  line_scan_words n=%zu: printable %d colon %zu, "
				        "expected %d %zu\n", n, got, wcolon, want, want_colon);
		}
	}
	free(s);
}

TEST(empty_and_short_lines)
{
	size_t colon = 99;

	mismatches = 0;
	CHECK(line_scan("", 0, &colon));
	CHECK_INT(colon, 0);
	CHECK(line_scan("a:b", 3, &colon));
	CHECK_INT(colon, 1);
	CHECK(!line_scan("a\tb", 3, &colon));
	CHECK_INT(colon, 3);
	CHECK(line_scan("Host: x:1", 9, &colon));
	CHECK_INT(colon, 4);
	CHECK(line_scan("Content-Type: application/json", 30, &colon));
	CHECK_INT(colon, 12);
	CHECK(!line_scan("Content-Type: application/json\r", 31, &colon));
	CHECK_INT(colon, 12);
}

/* Every length to 70, a colon at every position (or none), and one byte of each edge
 * class at every position (or none). */
TEST(colon_and_bad_byte_at_every_position)
{
	static const unsigned char edges[] = { 0x00, 0x09, 0x0a, 0x0d, 0x1f, 0x20, 0x3a, 0x7e,
	                                       0x7f, 0x80, 0xc3, 0xff };
	unsigned char buf[80];

	mismatches = 0;
	for (size_t n = 0; n <= 70; n++)
		for (size_t c = 0; c <= n; c++)
			for (size_t e = 0; e <= sizeof(edges); e++)
				for (size_t q = 0; q < (e < sizeof(edges) ? n : 1); q++) {
					for (size_t i = 0; i < n; i++)
						buf[i] = (unsigned char)('A' + i % 26);
					if (c < n)
						buf[c] = ':';
					if (e < sizeof(edges))
						buf[q] = edges[e];
					check_line(buf, n);
				}
	CHECK_INT(mismatches, 0);
}

/* Two colons: the first is the one reported, wherever the steps fall. */
TEST(first_of_two_colons)
{
	unsigned char buf[80];

	mismatches = 0;
	for (size_t n = 2; n <= 70; n++)
		for (size_t a = 0; a < n; a++)
			for (size_t b = a + 1; b < n; b++) {
				memset(buf, 'x', n);
				buf[a] = buf[b] = ':';
				check_line(buf, n);
			}
	CHECK_INT(mismatches, 0);
}

/* Random lines: bytes mostly printable, some colons, a few of anything. */
TEST(random_lines)
{
	unsigned char buf[300];
	uint64_t x = 0x9e3779b97f4a7c15ull;

	mismatches = 0;
	for (int round = 0; round < 200000; round++) {
		size_t n;

		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		n = (size_t)(x % sizeof(buf));
		for (size_t i = 0; i < n; i++) {
			unsigned r;

			x ^= x << 13; x ^= x >> 7; x ^= x << 17;
			r = (unsigned)(x % 1000);
			buf[i] = r < 990 ? (unsigned char)(0x20 + r % 0x5f)   /* printable */
			       : r < 995 ? ':' : (unsigned char)(x >> 32);
		}
		check_line(buf, n);
	}
	CHECK_INT(mismatches, 0);
}

/* bytes_have(): each of the three bytes (and bytes next to them in value) at every
 * position of every length to 70, in an exact-size block; and none at all. */
TEST(bytes_have_finds_each_byte_at_every_position)
{
	static const unsigned char near[] = { '\r', '\n', ':', 0x0b, 0x0c, 0x0e, 0x39, 0x3b,
	                                       0x8d, 0x8a, 0xba, 0x00, 0xff };
	int bad = 0;

	for (size_t n = 0; n <= 70; n++)
		for (size_t e = 0; e <= sizeof(near); e++)
			for (size_t q = 0; q < (e < sizeof(near) ? n : 1); q++) {
				char *s = malloc(n ? n : 1);
				bool want = false, got;

				if (!s)
					abort();
				for (size_t i = 0; i < n; i++)
					s[i] = (char)('a' + i % 26);
				if (e < sizeof(near)) {
					s[q] = (char)near[e];
					want = near[e] == '\r' || near[e] == '\n' || near[e] == ':';
				}
				got = bytes_have(s, n, '\r', '\n', ':');
				if (got != want && bad++ < 10)
					fprintf(stderr, "  n=%zu byte 0x%02x at %zu: %d, expected %d\n", n,
					        e < sizeof(near) ? near[e] : 0, q, got, want);
				/* two of the three the same, as http_add_header asks for a value */
				got = bytes_have(s, n, '\r', '\n', '\n');
				want = want && near[e] != ':';
				if (got != want && bad++ < 10)
					fprintf(stderr, "  n=%zu (CR LF) byte 0x%02x at %zu: %d, expected %d\n",
					        n, e < sizeof(near) ? near[e] : 0, q, got, want);
				free(s);
			}
	CHECK_INT(bad, 0);
}

RUN_TESTS()
