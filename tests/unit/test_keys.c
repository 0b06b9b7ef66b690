/* Unit tests for keys.c: the secret format, hashing, the SQLite store (round trip, update,
 * rotation, schema versioning, file mode), rate limits and loading a large store. Every
 * store lives in its own directory under /tmp, removed at the end of the test. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "keys.h"
#include "keyusage.h"
#include "unit.h"

static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

struct tmpdb {
	char dir[64];
	char path[128];
};

static void tmpdb_make(struct tmpdb *t)
{
	snprintf(t->dir, sizeof(t->dir), "/tmp/fg_test_keys_XXXXXX");
	if (!mkdtemp(t->dir)) {
		perror("mkdtemp");
		abort();
	}
	snprintf(t->path, sizeof(t->path), "%s/fastgate.db", t->dir);
}

static void tmpdb_remove(struct tmpdb *t)
{
	static const char *suffixes[] = { "", "-wal", "-shm", "-journal" };
	char p[160];

	for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
		snprintf(p, sizeof(p), "%s%s", t->path, suffixes[i]);
		unlink(p);
	}
	rmdir(t->dir);
}

static struct keystore *open_ok(const char *path)
{
	char *err = NULL;
	struct keystore *ks = keystore_open(path, &err);

	if (!ks)
		fprintf(stderr, "  keystore_open(%s): %s\n", path, err ? err : "(no message)");
	CHECK(ks != NULL);
	CHECK(err == NULL);
	free(err);
	return ks;
}

/* The checksum as the format defines it, computed here without keys.c's encoder. */
static void expected_checksum(const char *secret, char out[KEY_CHECKSUM_LEN + 1])
{
	uint32_t crc = key_crc32(secret, 3 + KEY_RANDOM_LEN);

	for (int i = KEY_CHECKSUM_LEN - 1; i >= 0; i--) {
		out[i] = b62[crc % 62];
		crc /= 62;
	}
	out[KEY_CHECKSUM_LEN] = '\0';
}

TEST(crc32_matches_the_standard_check_value)
{
	CHECK_INT(key_crc32("123456789", 9), 0xCBF43926u);
	CHECK_INT(key_crc32("", 0), 0);
}

TEST(generated_key_has_fg_format_and_valid_checksum)
{
	char s[KEY_SECRET_LEN + 1], sum[KEY_CHECKSUM_LEN + 1];

	for (int n = 0; n < 50; n++) {
		CHECK_INT(key_generate(s), 0);
		CHECK_INT(strlen(s), 49);
		CHECK(strncmp(s, "fg_", 3) == 0);
		CHECK_INT(strspn(s + 3, b62), KEY_RANDOM_LEN + KEY_CHECKSUM_LEN);
		expected_checksum(s, sum);
		CHECK_STR(s + 3 + KEY_RANDOM_LEN, sum);
		CHECK(key_format_valid(s, strlen(s)));
	}
}

TEST(any_single_character_change_fails_the_format_check)
{
	char s[KEY_SECRET_LEN + 1];

	CHECK_INT(key_generate(s), 0);
	for (int i = 0; i < KEY_SECRET_LEN; i++) {
		char orig = s[i];

		/* Every other base62 digit (and a non-digit) at every position, prefix included. */
		for (int d = 0; d < 62; d++) {
			if (b62[d] == orig)
				continue;
			s[i] = b62[d];
			if (key_format_valid(s, KEY_SECRET_LEN)) {
				fprintf(stderr, "  position %d changed to '%c' still valid\n", i, b62[d]);
				CHECK(0);
			}
		}
		s[i] = '+';
		CHECK(!key_format_valid(s, KEY_SECRET_LEN));
		s[i] = orig;
	}
	CHECK(key_format_valid(s, KEY_SECRET_LEN));
}

TEST(format_check_rejects_wrong_length_prefix_and_charset)
{
	char s[KEY_SECRET_LEN + 2];

	CHECK_INT(key_generate(s), 0);
	CHECK(!key_format_valid(NULL, 0));
	CHECK(!key_format_valid(s, KEY_SECRET_LEN - 1));
	s[KEY_SECRET_LEN] = 'A';
	s[KEY_SECRET_LEN + 1] = '\0';
	CHECK(!key_format_valid(s, KEY_SECRET_LEN + 1));
	CHECK(!key_format_valid("sk-abc", 6));
	CHECK(!key_format_valid("", 0));
}

static int cmp_secret(const void *a, const void *b)
{
	return memcmp(a, b, KEY_SECRET_LEN + 1);
}

TEST(thousand_generated_keys_are_unique)
{
	enum { N = 1000 };
	char (*keys)[KEY_SECRET_LEN + 1] = calloc(N, KEY_SECRET_LEN + 1);
	int dups = 0;

	for (int i = 0; i < N; i++)
		CHECK_INT(key_generate(keys[i]), 0);
	qsort(keys, N, KEY_SECRET_LEN + 1, cmp_secret);
	for (int i = 1; i < N; i++)
		dups += strcmp(keys[i - 1], keys[i]) == 0;
	CHECK_INT(dups, 0);
	free(keys);
}

/* 5000 keys = 200,000 random characters, ~3226 per digit (sd ~56). Taking bytes modulo 62
 * without rejection would give the first 8 digits ~3906: outside the +-300 band. */
TEST(random_characters_are_uniform_over_base62)
{
	enum { N = 5000 };
	long counts[62] = { 0 };
	char s[KEY_SECRET_LEN + 1];
	double expect = (double)N * KEY_RANDOM_LEN / 62;

	for (int i = 0; i < N; i++) {
		CHECK_INT(key_generate(s), 0);
		for (int j = 3; j < 3 + KEY_RANDOM_LEN; j++)
			counts[strchr(b62, s[j]) - b62]++;
	}
	for (int d = 0; d < 62; d++)
		if (counts[d] < expect - 300 || counts[d] > expect + 300) {
			fprintf(stderr, "  digit '%c' drawn %ld times, expected ~%.0f\n", b62[d],
			        counts[d], expect);
			CHECK(0);
		}
}

TEST(key_hash_is_sha256)
{
	static const unsigned char abc[KEY_HASH_LEN] = {
		0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
		0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
		0xf2, 0x00, 0x15, 0xad,
	};
	unsigned char h[KEY_HASH_LEN];

	key_hash("abc", 3, h);
	CHECK(memcmp(h, abc, KEY_HASH_LEN) == 0);
}

TEST(store_round_trip_survives_close_and_reopen)
{
	struct tmpdb t;
	struct keystore *ks;
	struct key *k = NULL, *k2 = NULL;
	char secret[KEY_SECRET_LEN + 1], secret2[KEY_SECRET_LEN + 1];
	char *routes[] = { "qwen3", "gpt-4.1_mini" };
	char *err = NULL;
	int64_t id, id2, expires = (int64_t)time(NULL) + 86400;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (!ks)
		goto out;
	CHECK_INT(keystore_count(ks), 0);
	CHECK_INT(keystore_create(ks, "team alpha", routes, 2, 120, expires, secret, &k, &err), 0);
	CHECK(err == NULL);
	CHECK(k != NULL);
	CHECK(key_format_valid(secret, strlen(secret)));
	CHECK_INT(keystore_create(ks, "bob", NULL, 0, 0, 0, secret2, &k2, &err), 0);
	if (!k || !k2)
		goto close;
	id = k->id;
	id2 = k2->id;
	CHECK(id2 > id);
	CHECK(keystore_lookup(ks, secret, strlen(secret)) == k);
	CHECK(keystore_get(ks, id) == k);
	CHECK(strncmp(k->display, secret, KEY_DISPLAY_LEN) == 0);
	CHECK_INT(strlen(k->display), KEY_DISPLAY_LEN);
	CHECK(k->created > 0);
	CHECK_INT(keystore_revoke(ks, id2, &err), 0);
	CHECK(k2->revoked > 0);
	CHECK(!key_usable(k2, (int64_t)time(NULL)));
	CHECK(key_usable(k, (int64_t)time(NULL)));
	keystore_close(ks);

	ks = open_ok(t.path);
	if (!ks)
		goto out;
	CHECK_INT(keystore_count(ks), 2);
	k = keystore_lookup(ks, secret, strlen(secret));
	k2 = keystore_lookup(ks, secret2, strlen(secret2));
	CHECK(k != NULL && k2 != NULL);
	if (!k || !k2)
		goto close;
	CHECK(keystore_at(ks, 0) == k);
	CHECK(keystore_at(ks, 1) == k2);
	CHECK(keystore_at(ks, 2) == NULL);
	CHECK_INT(k->id, id);
	CHECK_STR(k->name, "team alpha");
	CHECK_INT(k->rpm, 120);
	CHECK_INT(k->expires, expires);
	CHECK_INT(k->revoked, 0);
	CHECK_INT(k->n_routes, 2);
	if (k->n_routes == 2) {
		CHECK_STR(k->routes[0], "qwen3");
		CHECK_STR(k->routes[1], "gpt-4.1_mini");
	}
	CHECK_INT(k2->id, id2);
	CHECK_STR(k2->name, "bob");
	CHECK_INT(k2->n_routes, 0);
	CHECK_INT(k2->rpm, 0);
	CHECK(k2->revoked > 0);
	CHECK(!key_usable(k2, (int64_t)time(NULL)));
	/* Revoking twice is fine and keeps the first time. */
	{
		int64_t when = k2->revoked;

		CHECK_INT(keystore_revoke(ks, id2, &err), 0);
		CHECK_INT(k2->revoked, when);
	}
close:
	keystore_close(ks);
out:
	free(err);
	tmpdb_remove(&t);
}

TEST(lookup_of_unknown_or_malformed_secret_returns_null)
{
	struct tmpdb t;
	struct keystore *ks;
	char secret[KEY_SECRET_LEN + 1], other[KEY_SECRET_LEN + 1];
	char *err = NULL;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (ks) {
		CHECK(keystore_lookup(ks, "fg_nope", 7) == NULL);     /* empty store */
		CHECK_INT(keystore_create(ks, "a", NULL, 0, 0, 0, secret, NULL, &err), 0);
		CHECK(keystore_lookup(ks, secret, KEY_SECRET_LEN) != NULL);
		CHECK_INT(key_generate(other), 0);                      /* well formed, unknown */
		CHECK(keystore_lookup(ks, other, KEY_SECRET_LEN) == NULL);
		CHECK(keystore_lookup(ks, secret, KEY_SECRET_LEN - 1) == NULL);
		secret[10] = secret[10] == 'a' ? 'b' : 'a';            /* checksum now wrong */
		CHECK(keystore_lookup(ks, secret, KEY_SECRET_LEN) == NULL);
		CHECK(keystore_lookup(ks, "", 0) == NULL);
		CHECK(keystore_lookup(ks, "Bearer xyz", 10) == NULL);
		keystore_close(ks);
	}
	free(err);
	tmpdb_remove(&t);
}

TEST(many_created_keys_stay_findable_as_the_table_grows)
{
	enum { N = 300 };
	struct tmpdb t;
	struct keystore *ks;
	char (*secrets)[KEY_SECRET_LEN + 1] = calloc(N, KEY_SECRET_LEN + 1);
	struct key **made = calloc(N, sizeof(*made));
	char *err = NULL;
	int missing = 0;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (ks) {
		for (int i = 0; i < N; i++)
			CHECK_INT(keystore_create(ks, "k", NULL, 0, 0, 0, secrets[i], &made[i], &err), 0);
		for (int i = 0; i < N; i++)
			missing += keystore_lookup(ks, secrets[i], KEY_SECRET_LEN) != made[i];
		CHECK_INT(missing, 0);
		CHECK_INT(keystore_count(ks), N);
		keystore_close(ks);
	}
	free(secrets);
	free(made);
	free(err);
	tmpdb_remove(&t);
}

TEST(expired_key_is_not_usable)
{
	struct key k;

	memset(&k, 0, sizeof(k));
	CHECK(key_usable(&k, 1700000000));                 /* never expires */
	k.expires = 1700000000;
	CHECK(key_usable(&k, 1699999999));
	CHECK(!key_usable(&k, 1700000000));
	CHECK(!key_usable(&k, 1800000000));
	k.expires = 0;
	k.revoked = 1600000000;
	CHECK(!key_usable(&k, 1700000000));
}

TEST(create_rejects_bad_name_rpm_and_routes_with_a_message)
{
	struct tmpdb t;
	struct keystore *ks;
	char secret[KEY_SECRET_LEN + 1];
	char long_name[80];
	char *bad_route[] = { "ok", "no spaces" };
	char *empty_route[] = { "" };
	char *err = NULL;

	memset(long_name, 'x', 65);
	long_name[65] = '\0';
	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (ks) {
		CHECK_INT(keystore_create(ks, "", NULL, 0, 0, 0, secret, NULL, &err), -1);
		CHECK(err && strstr(err, "empty"));
		CHECK_INT(keystore_create(ks, long_name, NULL, 0, 0, 0, secret, NULL, &err), -1);
		CHECK(err && strstr(err, "64"));
		long_name[64] = '\0';                               /* exactly 64 is fine */
		CHECK_INT(keystore_create(ks, long_name, NULL, 0, 0, 0, secret, NULL, &err), 0);
		CHECK_INT(keystore_create(ks, "tab\there", NULL, 0, 0, 0, secret, NULL, &err), -1);
		CHECK(err && strstr(err, "control"));
		CHECK_INT(keystore_create(ks, "bad\xff", NULL, 0, 0, 0, secret, NULL, &err), -1);
		CHECK(err && strstr(err, "UTF-8"));
		CHECK_INT(keystore_create(ks, "\xc3\xa9quipe", NULL, 0, 0, 0, secret, NULL, &err), 0);
		CHECK_INT(keystore_create(ks, "a", NULL, 0, -1, 0, secret, NULL, &err), -1);
		CHECK(err && strstr(err, "rpm"));
		CHECK_INT(keystore_create(ks, "a", bad_route, 2, 0, 0, secret, NULL, &err), -1);
		CHECK(err && strstr(err, "no spaces"));
		CHECK_INT(keystore_create(ks, "a", empty_route, 1, 0, 0, secret, NULL, &err), -1);
		CHECK_INT(keystore_count(ks), 2);                   /* failures stored nothing */
		keystore_close(ks);
	}
	free(err);
	tmpdb_remove(&t);
}

TEST(revoking_an_unknown_id_names_it)
{
	struct tmpdb t;
	struct keystore *ks;
	char *err = NULL;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (ks) {
		CHECK_INT(keystore_revoke(ks, 42, &err), -1);
		CHECK_STR(err, "no key with id 42");
		keystore_close(ks);
	}
	free(err);
	tmpdb_remove(&t);
}

TEST(key_name_check_accepts_printable_names_and_says_what_is_wrong)
{
	char *err = NULL;

	CHECK_INT(key_name_check("team alpha", &err), 0);
	CHECK(err == NULL);
	CHECK_INT(key_name_check("\xc3\xa9quipe", &err), 0);
	CHECK_INT(key_name_check("", &err), -1);
	CHECK(err && strstr(err, "empty"));
	CHECK_INT(key_name_check(NULL, &err), -1);
	CHECK_INT(key_name_check("a\nb", &err), -1);
	CHECK(err && strstr(err, "control"));
	CHECK_INT(key_name_check(" lead", &err), -1);
	CHECK(err && strstr(err, "space"));
	CHECK_INT(key_name_check("bad\xff", &err), -1);
	CHECK(err && strstr(err, "UTF-8"));
	free(err);
}

TEST(rotate_gives_a_new_secret_and_the_old_one_stops_matching)
{
	struct tmpdb t;
	struct keystore *ks;
	struct key *k = NULL, *other = NULL;
	char old[KEY_SECRET_LEN + 1], fresh[KEY_SECRET_LEN + 1], second[KEY_SECRET_LEN + 1];
	char other_secret[KEY_SECRET_LEN + 1];
	char *routes[] = { "qwen3", "gpt-4.1_mini" };
	char *err = NULL;
	int64_t id = 0, created = 0, expires = (int64_t)time(NULL) + 86400;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (!ks)
		goto out;
	CHECK_INT(keystore_create(ks, "team alpha", routes, 2, 120, expires, old, &k, &err), 0);
	CHECK_INT(keystore_create(ks, "bystander", NULL, 0, 0, 0, other_secret, &other, &err), 0);
	if (!k || !other)
		goto close;
	id = k->id;
	created = k->created;
	CHECK_INT(keystore_rotate(ks, id, fresh, &err), 0);
	CHECK(err == NULL);
	CHECK(key_format_valid(fresh, strlen(fresh)));
	CHECK(strcmp(fresh, old) != 0);
	CHECK(keystore_lookup(ks, old, KEY_SECRET_LEN) == NULL);
	CHECK(keystore_lookup(ks, fresh, KEY_SECRET_LEN) == k);
	CHECK(keystore_lookup(ks, other_secret, KEY_SECRET_LEN) == other);
	CHECK(keystore_get(ks, id) == k);
	CHECK(strncmp(k->display, fresh, KEY_DISPLAY_LEN) == 0);
	CHECK_INT(keystore_count(ks), 2);
	/* Rotating again retires the second secret as well. */
	CHECK_INT(keystore_rotate(ks, id, second, &err), 0);
	CHECK(keystore_lookup(ks, fresh, KEY_SECRET_LEN) == NULL);
	CHECK(keystore_lookup(ks, second, KEY_SECRET_LEN) == k);
	keystore_close(ks);

	ks = open_ok(t.path);
	if (!ks)
		goto out;
	CHECK(keystore_lookup(ks, old, KEY_SECRET_LEN) == NULL);
	CHECK(keystore_lookup(ks, fresh, KEY_SECRET_LEN) == NULL);
	k = keystore_lookup(ks, second, KEY_SECRET_LEN);
	CHECK(k != NULL);
	if (!k)
		goto close;
	CHECK_INT(k->id, id);
	CHECK_STR(k->name, "team alpha");
	CHECK_INT(k->created, created);
	CHECK_INT(k->rpm, 120);
	CHECK_INT(k->expires, expires);
	CHECK_INT(k->revoked, 0);
	CHECK_INT(k->n_routes, 2);
	if (k->n_routes == 2) {
		CHECK_STR(k->routes[0], "qwen3");
		CHECK_STR(k->routes[1], "gpt-4.1_mini");
	}
	CHECK(strncmp(k->display, second, KEY_DISPLAY_LEN) == 0);
close:
	keystore_close(ks);
out:
	free(err);
	tmpdb_remove(&t);
}

/* Rotation takes entries out of the open-addressing table; every other key must stay
 * findable however the probe runs were laid out. */
TEST(rotating_many_keys_leaves_every_current_secret_findable)
{
	enum { N = 500 };
	struct tmpdb t;
	struct keystore *ks;
	char (*secrets)[KEY_SECRET_LEN + 1] = calloc(N, KEY_SECRET_LEN + 1);
	char (*retired)[KEY_SECRET_LEN + 1] = calloc(N, KEY_SECRET_LEN + 1);
	struct key **made = calloc(N, sizeof(*made));
	char *err = NULL;
	int wrong = 0, stale = 0;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (ks) {
		for (int i = 0; i < N; i++)
			CHECK_INT(keystore_create(ks, "k", NULL, 0, 0, 0, secrets[i], &made[i], &err), 0);
		for (int i = 0; i < N; i += 2) {
			memcpy(retired[i], secrets[i], sizeof(retired[i]));
			CHECK_INT(keystore_rotate(ks, made[i]->id, secrets[i], &err), 0);
		}
		for (int i = 0; i < N; i++) {
			wrong += keystore_lookup(ks, secrets[i], KEY_SECRET_LEN) != made[i];
			stale += i % 2 == 0 && keystore_lookup(ks, retired[i], KEY_SECRET_LEN) != NULL;
		}
		CHECK_INT(wrong, 0);
		CHECK_INT(stale, 0);
		CHECK_INT(keystore_count(ks), N);
		keystore_close(ks);
	}
	free(secrets);
	free(retired);
	free(made);
	free(err);
	tmpdb_remove(&t);
}

/* A connection's memo answers its client's next request with the same key; a rotation
 * (which sends the old secret nowhere) must not be outlived by it, and a revocation is
 * seen because the key itself is returned. */
TEST(a_connection_memo_repeats_a_lookup_but_never_outlives_a_rotation)
{
	struct tmpdb t;
	struct keystore *ks;
	struct key *a = NULL, *b = NULL;
	struct key_memo m = { 0 };
	char sa[KEY_SECRET_LEN + 1], sb[KEY_SECRET_LEN + 1], fresh[KEY_SECRET_LEN + 1];
	char *err = NULL;
	/* a loop's own hasher, as loops after the first use; the first two lookups use the
	 * store's (loop 0's) */
	struct key_hasher *h = key_hasher_new();

	CHECK(h != NULL);
	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (!ks)
		goto out;
	CHECK_INT(keystore_create(ks, "a", NULL, 0, 0, 0, sa, &a, &err), 0);
	CHECK_INT(keystore_create(ks, "b", NULL, 0, 0, 0, sb, &b, &err), 0);
	if (!a || !b)
		goto close;
	CHECK(keystore_lookup_memo(ks, sa, KEY_SECRET_LEN, &m, NULL) == a);
	CHECK(m.key == a && m.len == KEY_SECRET_LEN);
	CHECK(keystore_lookup_memo(ks, sa, KEY_SECRET_LEN, &m, NULL) == a);
	/* another key on the same connection, a shorter or a wrong secret */
	CHECK(keystore_lookup_memo(ks, sb, KEY_SECRET_LEN, &m, h) == b);
	CHECK(keystore_lookup_memo(ks, sb, KEY_SECRET_LEN - 1, &m, h) == NULL);
	sb[5] = sb[5] == 'x' ? 'y' : 'x';
	CHECK(keystore_lookup_memo(ks, sb, KEY_SECRET_LEN, &m, h) == NULL);
	CHECK(m.key == b);     /* failures are not remembered */
	/* the memo holds a's secret when a is rotated: the old secret leads nowhere now */
	CHECK(keystore_lookup_memo(ks, sa, KEY_SECRET_LEN, &m, h) == a);
	CHECK_INT(keystore_rotate(ks, a->id, fresh, &err), 0);
	CHECK(keystore_lookup_memo(ks, sa, KEY_SECRET_LEN, &m, h) == NULL);
	CHECK(keystore_lookup_memo(ks, fresh, KEY_SECRET_LEN, &m, h) == a);
	/* revoked: still the key, whose revoked field the caller checks */
	CHECK_INT(keystore_revoke(ks, a->id, &err), 0);
	CHECK(keystore_lookup_memo(ks, fresh, KEY_SECRET_LEN, &m, h) == a);
	CHECK(a->revoked != 0);
	key_memo_clear(&m);
	CHECK(m.key == NULL && m.len == 0 && m.secret[0] == 0);
close:
	keystore_close(ks);
out:
	key_hasher_free(h);
	free(err);
	tmpdb_remove(&t);
}

TEST(rotate_refuses_unknown_and_revoked_keys_and_keeps_the_old_secret)
{
	struct tmpdb t;
	struct keystore *ks;
	struct key *k = NULL;
	char secret[KEY_SECRET_LEN + 1], fresh[KEY_SECRET_LEN + 1];
	char *err = NULL;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (ks) {
		CHECK_INT(keystore_rotate(ks, 42, fresh, &err), -1);
		CHECK_STR(err, "no key with id 42");
		CHECK_INT(keystore_create(ks, "gone", NULL, 0, 0, 0, secret, &k, &err), 0);
		if (k) {
			CHECK_INT(keystore_revoke(ks, k->id, &err), 0);
			CHECK_INT(keystore_rotate(ks, k->id, fresh, &err), -1);
			CHECK(err && strstr(err, "revoked"));
			CHECK(keystore_lookup(ks, secret, KEY_SECRET_LEN) == k);
		}
		keystore_close(ks);
	}
	free(err);
	tmpdb_remove(&t);
}

TEST(update_changes_only_the_given_fields_and_persists)
{
	struct tmpdb t;
	struct keystore *ks;
	struct key *k = NULL;
	char secret[KEY_SECRET_LEN + 1];
	char *routes[] = { "qwen3", "gpt-4.1_mini" };
	char *one_route[] = { "llama" };
	char *err = NULL;
	int64_t id = 0, expires = (int64_t)time(NULL) + 86400, later = expires + 7 * 86400;
	struct key_changes ch;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (!ks)
		goto out;
	CHECK_INT(keystore_create(ks, "team alpha", routes, 2, 120, expires, secret, &k, &err), 0);
	if (!k)
		goto close;
	id = k->id;

	memset(&ch, 0, sizeof(ch));
	ch.set = KEY_CHANGE_RPM;
	ch.rpm = 7;
	CHECK_INT(keystore_update(ks, id, &ch, &err), 0);
	CHECK(err == NULL);
	CHECK_INT(k->rpm, 7);
	CHECK_INT(k->expires, expires);
	CHECK_INT(k->n_routes, 2);

	memset(&ch, 0, sizeof(ch));
	ch.set = KEY_CHANGE_EXPIRES;
	ch.expires = later;
	CHECK_INT(keystore_update(ks, id, &ch, &err), 0);
	CHECK_INT(k->expires, later);
	CHECK_INT(k->rpm, 7);
	CHECK_INT(k->n_routes, 2);

	memset(&ch, 0, sizeof(ch));
	ch.set = KEY_CHANGE_ROUTES;
	ch.routes = one_route;
	ch.n_routes = 1;
	CHECK_INT(keystore_update(ks, id, &ch, &err), 0);
	CHECK_INT(k->n_routes, 1);
	if (k->n_routes == 1)
		CHECK_STR(k->routes[0], "llama");
	CHECK_INT(k->rpm, 7);
	CHECK_INT(k->expires, later);
	CHECK(keystore_lookup(ks, secret, KEY_SECRET_LEN) == k);   /* secret untouched */
	keystore_close(ks);

	ks = open_ok(t.path);
	if (!ks)
		goto out;
	k = keystore_get(ks, id);
	CHECK(k != NULL);
	if (!k)
		goto close;
	CHECK_STR(k->name, "team alpha");
	CHECK_INT(k->rpm, 7);
	CHECK_INT(k->expires, later);
	CHECK_INT(k->n_routes, 1);
	if (k->n_routes == 1)
		CHECK_STR(k->routes[0], "llama");

	/* All three at once, each to its "no restriction" value. */
	memset(&ch, 0, sizeof(ch));
	ch.set = KEY_CHANGE_ROUTES | KEY_CHANGE_RPM | KEY_CHANGE_EXPIRES;
	CHECK_INT(keystore_update(ks, id, &ch, &err), 0);
	CHECK_INT(k->n_routes, 0);
	CHECK_INT(k->rpm, 0);
	CHECK_INT(k->expires, 0);
	keystore_close(ks);

	ks = open_ok(t.path);
	if (!ks)
		goto out;
	k = keystore_get(ks, id);
	CHECK(k != NULL);
	if (k) {
		CHECK_INT(k->n_routes, 0);
		CHECK_INT(k->rpm, 0);
		CHECK_INT(k->expires, 0);
		CHECK(keystore_lookup(ks, secret, KEY_SECRET_LEN) == k);
	}
close:
	keystore_close(ks);
out:
	free(err);
	tmpdb_remove(&t);
}

TEST(update_of_unknown_revoked_or_invalid_leaves_the_key_unchanged)
{
	struct tmpdb t;
	struct keystore *ks;
	struct key *k = NULL, *gone = NULL;
	char secret[KEY_SECRET_LEN + 1];
	char *routes[] = { "qwen3" };
	char *bad_route[] = { "no spaces" };
	char *err = NULL;
	struct key_changes ch;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (!ks)
		goto out;
	CHECK_INT(keystore_create(ks, "a", routes, 1, 10, 0, secret, &k, &err), 0);
	CHECK_INT(keystore_create(ks, "b", NULL, 0, 10, 0, secret, &gone, &err), 0);
	if (!k || !gone)
		goto close;
	memset(&ch, 0, sizeof(ch));
	ch.set = KEY_CHANGE_RPM;
	ch.rpm = 5;
	CHECK_INT(keystore_update(ks, 42, &ch, &err), -1);
	CHECK_STR(err, "no key with id 42");

	CHECK_INT(keystore_revoke(ks, gone->id, &err), 0);
	CHECK_INT(keystore_update(ks, gone->id, &ch, &err), -1);
	CHECK(err && strstr(err, "revoked"));
	CHECK_INT(gone->rpm, 10);

	ch.set = KEY_CHANGE_RPM | KEY_CHANGE_ROUTES;
	ch.rpm = 5;
	ch.routes = bad_route;
	ch.n_routes = 1;
	CHECK_INT(keystore_update(ks, k->id, &ch, &err), -1);
	CHECK(err && strstr(err, "no spaces"));
	CHECK_INT(k->rpm, 10);
	CHECK_INT(k->n_routes, 1);

	memset(&ch, 0, sizeof(ch));
	ch.set = KEY_CHANGE_RPM | KEY_CHANGE_EXPIRES;
	ch.rpm = -1;
	CHECK_INT(keystore_update(ks, k->id, &ch, &err), -1);
	CHECK(err && strstr(err, "rpm"));
	ch.rpm = 3;
	ch.expires = -5;
	CHECK_INT(keystore_update(ks, k->id, &ch, &err), -1);
	CHECK(err && strstr(err, "expiry"));
	CHECK_INT(k->rpm, 10);
	CHECK_INT(k->expires, 0);
close:
	keystore_close(ks);
out:
	free(err);
	tmpdb_remove(&t);
}

/* The daemon prepares a change on the loop, writes it on a thread and applies it back on
 * the loop; several may be prepared before the first is written, all from the same state
 * in memory. Written and applied in that order, they must add up as if run one by one. */
TEST(changes_prepared_together_add_up_when_written_in_order)
{
	struct tmpdb t;
	struct keystore *ks;
	struct key *k = NULL, *other = NULL, *got = NULL;
	char secret[KEY_SECRET_LEN + 1], fresh[KEY_SECRET_LEN + 1];
	char *routes[] = { "qwen3" };
	char *err = NULL;
	struct key_changes rpm = { .set = KEY_CHANGE_RPM, .rpm = 7 };
	struct key_changes rts = { .set = KEY_CHANGE_ROUTES, .routes = routes, .n_routes = 1 };
	struct key_change *c[4];
	int64_t first;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (!ks)
		goto out;
	CHECK_INT(keystore_create(ks, "a", NULL, 0, 10, 0, secret, &k, &err), 0);
	CHECK_INT(keystore_create(ks, "b", NULL, 0, 0, 0, secret, &other, &err), 0);
	if (!k || !other)
		goto close;

	/* two updates of different fields: neither undoes the other */
	c[0] = keystore_change_update(ks, k->id, &rpm, &err);
	c[1] = keystore_change_update(ks, k->id, &rts, &err);
	CHECK(c[0] && c[1]);
	if (!c[0] || !c[1])
		goto close;
	keystore_change_write(c[0]);
	keystore_change_write(c[1]);
	CHECK_INT(k->rpm, 10);                       /* nothing in memory before apply */
	CHECK_INT(keystore_change_apply(c[0], &got, NULL, &err), 0);
	CHECK(got == k);
	CHECK_INT(keystore_change_apply(c[1], &got, NULL, &err), 0);
	CHECK_INT(k->rpm, 7);
	CHECK_INT(k->n_routes, 1);

	/* revoke, then an update and a rotation prepared before the revocation was written:
	 * both fail and the key keeps its policy and secret, in the store and in memory */
	c[0] = keystore_change_revoke(ks, k->id, &err);
	c[1] = keystore_change_update(ks, k->id, &rpm, &err);
	c[2] = keystore_change_rotate(ks, k->id, &err);
	c[3] = keystore_change_revoke(ks, k->id, &err);   /* revoking twice is fine */
	CHECK(c[0] && c[1] && c[2] && c[3]);
	if (!c[0] || !c[1] || !c[2] || !c[3])
		goto close;
	for (int i = 0; i < 4; i++)
		keystore_change_write(c[i]);
	CHECK_INT(keystore_change_apply(c[0], NULL, NULL, &err), 0);
	first = k->revoked;
	CHECK(first > 0);
	CHECK_INT(keystore_change_apply(c[1], NULL, NULL, &err), -1);
	CHECK(err && strstr(err, "revoked meanwhile") && strstr(err, "nothing was changed"));
	free(err);
	err = NULL;
	CHECK_INT(keystore_change_apply(c[2], NULL, fresh, &err), -1);
	CHECK(err && strstr(err, "revoked meanwhile"));
	free(err);
	err = NULL;
	CHECK_INT(keystore_change_apply(c[3], NULL, NULL, &err), 0);
	CHECK_INT(k->revoked, first);
	CHECK(keystore_lookup(ks, secret, KEY_SECRET_LEN) == other);   /* b's secret, last made */

	/* a change dropped before its write leaves no trace; one never written says so */
	keystore_change_free(keystore_change_update(ks, other->id, &rpm, &err));
	c[0] = keystore_change_update(ks, other->id, &rpm, &err);
	CHECK_INT(keystore_change_apply(c[0], NULL, NULL, &err), -1);
	CHECK(err && strstr(err, "not written"));
	CHECK_INT(other->rpm, 0);
	keystore_close(ks);

	/* what the store holds after a reopen matches what memory said */
	ks = open_ok(t.path);
	if (!ks)
		goto out;
	k = keystore_get(ks, 1);
	other = keystore_get(ks, 2);
	CHECK(k && other);
	if (k && other) {
		CHECK_INT(k->rpm, 7);
		CHECK_INT(k->n_routes, 1);
		CHECK_INT(k->revoked, first);
		CHECK_INT(other->rpm, 0);
	}
close:
	keystore_close(ks);
out:
	free(err);
	tmpdb_remove(&t);
}

/* One request through the key's limits (spend.h), as the policy phase does. */
static enum spend_verdict one_request(struct key *k, int64_t now, int64_t *retry)
{
	struct spend_hold h = { .n = 1 };
	struct spend_refusal why;
	enum spend_verdict v;

	h.p[0] = (struct spend_party){ .acct = &k->acct, .kind = 'k', .id = k->id };
	v = spend_reserve(&h, now, &why);
	*retry = why.retry_after;
	spend_settle(&h, now, 0, 0);
	return v;
}

/* Lowering the limit mid-minute counts the requests already made in that minute. */
TEST(update_of_rpm_keeps_the_current_rate_window)
{
	struct tmpdb t;
	struct keystore *ks;
	struct key *k = NULL;
	char secret[KEY_SECRET_LEN + 1];
	char *err = NULL;
	struct key_changes ch = { .set = KEY_CHANGE_RPM, .rpm = 2 };
	int64_t t0 = time(NULL), ra = 0;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (ks) {
		CHECK_INT(keystore_create(ks, "a", NULL, 0, 10, 0, secret, &k, &err), 0);
		if (k) {
			CHECK_INT(k->acct.n_lim, 1);
			for (int i = 0; i < 3; i++)
				CHECK_INT(one_request(k, t0 + i, &ra), SPEND_OK);
			CHECK_INT(keystore_update(ks, k->id, &ch, &err), 0);
			CHECK_INT(k->rpm, 2);
			/* 3 counted, 2 allowed: the first two must leave the minute first */
			CHECK_INT(one_request(k, t0 + 5, &ra), SPEND_LIMITED);
			CHECK_INT(ra, 56);
			CHECK_INT(one_request(k, t0 + 61, &ra), SPEND_OK);
			CHECK_INT(one_request(k, t0 + 61, &ra), SPEND_LIMITED);
		}
		keystore_close(ks);
	}
	free(err);
	tmpdb_remove(&t);
}

/* A store written before users and limits (schema version 2) keeps its keys, and a key's
 * rpm becomes its requests/min limit. */
TEST(a_version_2_store_migrates_rpm_into_a_limit)
{
	struct tmpdb t;
	sqlite3 *db = NULL;
	struct keystore *ks;
	struct key *k;
	char secret[KEY_SECRET_LEN + 1];
	unsigned char hash[KEY_HASH_LEN];
	sqlite3_stmt *st = NULL;

	tmpdb_make(&t);
	CHECK_INT(key_generate(secret), 0);
	key_hash(secret, KEY_SECRET_LEN, hash);
	CHECK_INT(sqlite3_open(t.path, &db), SQLITE_OK);
	CHECK_INT(sqlite3_exec(db,
		"CREATE TABLE keys (id INTEGER PRIMARY KEY, name TEXT NOT NULL, display TEXT NOT NULL,"
		" hash BLOB NOT NULL UNIQUE, created INTEGER, expires INTEGER, revoked INTEGER,"
		" last_used INTEGER, routes TEXT, rpm INTEGER);"
		"CREATE TABLE route_state (name TEXT PRIMARY KEY, enabled INTEGER NOT NULL,"
		" updated INTEGER);"
		"CREATE TABLE target_state (route TEXT NOT NULL, url TEXT NOT NULL,"
		" drained INTEGER NOT NULL, updated INTEGER, PRIMARY KEY (route, url));"
		"PRAGMA user_version = 2;", NULL, NULL, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_prepare_v2(db, "INSERT INTO keys VALUES (5, 'old', 'fg_AAAAAAAA', ?1, "
	                             "1700000000, 0, 0, 0, 'a,b', 30)", -1, &st, NULL), SQLITE_OK);
	sqlite3_bind_blob(st, 1, hash, KEY_HASH_LEN, SQLITE_STATIC);
	CHECK_INT(sqlite3_step(st), SQLITE_DONE);
	sqlite3_finalize(st);
	sqlite3_close(db);
	ks = open_ok(t.path);
	if (ks) {
		k = keystore_lookup(ks, secret, KEY_SECRET_LEN);
		CHECK(k != NULL);
		if (k) {
			char buf[LIMITS_TEXT_MAX];

			CHECK_INT(k->id, 5);
			CHECK_INT(k->rpm, 30);
			CHECK_INT(k->n_routes, 2);
			CHECK_STR(limits_format(k->acct.lim, k->acct.n_lim, buf, sizeof(buf)),
			          "requests:30/min");
			CHECK(k->user == NULL);
			CHECK_INT(k->multiplier_ppm, MULTIPLIER_ONE);
		}
		keystore_close(ks);
	}
	tmpdb_remove(&t);
}

/* A store written before per-key address lists (schema version 3, with users, limits and
 * multipliers) keeps every key and all of its policy, and its keys may call from anywhere
 * until given a list. */
TEST(a_version_3_store_migrates_and_keeps_every_key)
{
	struct tmpdb t;
	sqlite3 *db = NULL;
	struct keystore *ks;
	struct key *k;
	char secret[KEY_SECRET_LEN + 1], other[KEY_SECRET_LEN + 1], buf[LIMITS_TEXT_MAX];
	unsigned char hash[KEY_HASH_LEN], hash2[KEY_HASH_LEN];
	sqlite3_stmt *st = NULL;

	tmpdb_make(&t);
	CHECK_INT(key_generate(secret), 0);
	CHECK_INT(key_generate(other), 0);
	key_hash(secret, KEY_SECRET_LEN, hash);
	key_hash(other, KEY_SECRET_LEN, hash2);
	CHECK_INT(sqlite3_open(t.path, &db), SQLITE_OK);
	/* the schema as steps 1 to 3 left it */
	CHECK_INT(sqlite3_exec(db,
		"CREATE TABLE keys (id INTEGER PRIMARY KEY, name TEXT NOT NULL, display TEXT NOT NULL,"
		" hash BLOB NOT NULL UNIQUE, created INTEGER, expires INTEGER, revoked INTEGER,"
		" last_used INTEGER, routes TEXT, rpm INTEGER, user_id INTEGER,"
		" limits TEXT NOT NULL DEFAULT '', multiplier_ppm INTEGER NOT NULL DEFAULT 1000000);"
		"CREATE TABLE route_state (name TEXT PRIMARY KEY, enabled INTEGER NOT NULL,"
		" updated INTEGER);"
		"CREATE TABLE target_state (route TEXT NOT NULL, url TEXT NOT NULL,"
		" drained INTEGER NOT NULL, updated INTEGER, PRIMARY KEY (route, url));"
		"CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
		" created INTEGER, suspended INTEGER NOT NULL DEFAULT 0,"
		" balance_kept INTEGER NOT NULL DEFAULT 0, credit_nano INTEGER NOT NULL DEFAULT 0,"
		" multiplier_ppm INTEGER NOT NULL DEFAULT 1000000, limits TEXT NOT NULL DEFAULT '');"
		"CREATE TABLE topups (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL,"
		" amount_nano INTEGER NOT NULL, at INTEGER NOT NULL);"
		"INSERT INTO users (id, name, created, multiplier_ppm, limits)"
		" VALUES (2, 'team', 1700000000, 1500000, 'cost:10/day');"
		"INSERT INTO route_state VALUES ('chat', 0, 1700000000);"
		"PRAGMA user_version = 3;", NULL, NULL, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_prepare_v2(db, "INSERT INTO keys VALUES (7, 'ci', 'fg_AAAAAAAA', ?1, "
	                             "1700000000, 0, 0, 0, 'chat', 0, 2, 'tokens:1000/day', "
	                             "2000000), (9, 'gone', 'fg_BBBBBBBB', ?2, 1700000000, 0, "
	                             "1700000100, 0, '', 0, NULL, '', 1000000)", -1, &st, NULL),
	          SQLITE_OK);
	sqlite3_bind_blob(st, 1, hash, KEY_HASH_LEN, SQLITE_STATIC);
	sqlite3_bind_blob(st, 2, hash2, KEY_HASH_LEN, SQLITE_STATIC);
	CHECK_INT(sqlite3_step(st), SQLITE_DONE);
	sqlite3_finalize(st);
	sqlite3_close(db);
	db = NULL;

	ks = open_ok(t.path);
	if (ks) {
		CHECK_INT(keystore_count(ks), 2);
		k = keystore_lookup(ks, secret, KEY_SECRET_LEN);
		CHECK(k != NULL);
		if (k) {
			CHECK_INT(k->id, 7);
			CHECK_STR(k->name, "ci");
			CHECK(k->n_routes == 1 && strcmp(k->routes[0], "chat") == 0);
			CHECK(k->user && k->user->id == 2);
			CHECK_INT(k->multiplier_ppm, 2000000);
			CHECK_STR(limits_format(k->acct.lim, k->acct.n_lim, buf, sizeof(buf)),
			          "tokens:1000/day");
			CHECK_INT(k->n_allow_ips, 0);
			CHECK(k->allow_ips == NULL);
		}
		k = keystore_lookup(ks, other, KEY_SECRET_LEN);
		CHECK(k && k->id == 9 && k->revoked == 1700000100 && k->n_allow_ips == 0);
		CHECK_INT(keystore_route_state_get(ks, "chat"), 0);
		keystore_close(ks);
	}
	CHECK_INT(sqlite3_open(t.path, &db), SQLITE_OK);
	CHECK_INT(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_step(st), SQLITE_ROW);
	CHECK_INT(sqlite3_column_int(st, 0), 4);
	sqlite3_finalize(st);
	sqlite3_close(db);
	tmpdb_remove(&t);
}

static size_t ranges(const char *text, struct cidr *out)
{
	char copy[512], *save = NULL;
	size_t n = 0;

	snprintf(copy, sizeof(copy), "%s", text);
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		CHECK_INT(cidr_parse(tok, &out[n]), 0);
		n++;
	}
	return n;
}

static const char *key_ips(const struct key *k, char *buf, size_t size)
{
	size_t used = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < k->n_allow_ips && used < size; i++) {
		char one[CIDR_TEXT_MAX];

		used += (size_t)snprintf(buf + used, size - used, "%s%s", i ? "," : "",
		                         cidr_format(&k->allow_ips[i], one, sizeof(one)));
	}
	return buf;
}

/* A key's address list is stored with it: set at creation, replaced and cleared by an
 * update, kept by a rotation and by other updates, and read back after a restart. */
TEST(a_keys_allow_ips_are_stored_updated_cleared_and_kept_by_rotation)
{
	struct tmpdb t;
	struct keystore *ks;
	struct key_change *c;
	struct key *k = NULL;
	struct cidr ips[KEY_ALLOW_IPS_MAX + 1];
	struct key_changes ch = { 0 };
	char secret[KEY_SECRET_LEN + 1], fresh[KEY_SECRET_LEN + 1], buf[1024], *err = NULL;
	int64_t id = 0;
	size_t n;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (!ks)
		goto out;
	n = ranges("10.0.0.0/8,192.168.1.7,2001:db8::/32", ips);
	c = keystore_change_create(ks, "office", NULL, 0, 0, 0, &err);
	CHECK(c != NULL);
	CHECK_INT(keystore_change_create_allow_ips(c, ips, n, &err), 0);
	keystore_change_write(c);
	CHECK_INT(keystore_change_apply(c, &k, secret, &err), 0);
	id = k ? k->id : 0;
	CHECK(k && k->n_allow_ips == 3);
	keystore_close(ks);

	ks = open_ok(t.path);
	if (!ks)
		goto out;
	k = keystore_lookup(ks, secret, KEY_SECRET_LEN);
	CHECK(k != NULL);
	if (k)
		CHECK_STR(key_ips(k, buf, sizeof(buf)), "10.0.0.0/8,192.168.1.7,2001:db8::/32");
	/* another update leaves the list alone; a rotation keeps it */
	ch.set = KEY_CHANGE_RPM;
	ch.rpm = 5;
	CHECK_INT(keystore_update(ks, id, &ch, &err), 0);
	CHECK_INT(keystore_rotate(ks, id, fresh, &err), 0);
	k = keystore_lookup(ks, fresh, KEY_SECRET_LEN);
	CHECK(k && k->n_allow_ips == 3);
	/* replaced */
	ch.set = KEY_CHANGE_ALLOW_IPS;
	ch.allow_ips = ips;
	ch.n_allow_ips = ranges("203.0.113.0/24", ips);
	CHECK_INT(keystore_update(ks, id, &ch, &err), 0);
	keystore_close(ks);

	ks = open_ok(t.path);
	if (!ks)
		goto out;
	k = keystore_get(ks, id);
	CHECK(k != NULL);
	if (k) {
		CHECK_STR(key_ips(k, buf, sizeof(buf)), "203.0.113.0/24");
		CHECK_INT(k->rpm, 5);
	}
	/* too many: refused, and the key keeps its list */
	for (size_t i = 0; i <= KEY_ALLOW_IPS_MAX; i++)
		ips[i] = ips[0];
	ch.n_allow_ips = KEY_ALLOW_IPS_MAX + 1;
	CHECK_INT(keystore_update(ks, id, &ch, &err), -1);
	CHECK(err && strstr(err, "at most 64"));
	c = keystore_change_create(ks, "many", NULL, 0, 0, 0, &err);
	CHECK(c != NULL);
	CHECK_INT(keystore_change_create_allow_ips(c, ips, KEY_ALLOW_IPS_MAX + 1, &err), -1);
	keystore_change_free(c);
	k = keystore_get(ks, id);
	CHECK(k && k->n_allow_ips == 1);
	/* cleared: anyone */
	ch.n_allow_ips = 0;
	ch.allow_ips = NULL;
	CHECK_INT(keystore_update(ks, id, &ch, &err), 0);
	keystore_close(ks);

	ks = open_ok(t.path);
	if (!ks)
		goto out;
	k = keystore_get(ks, id);
	CHECK(k && k->n_allow_ips == 0 && k->allow_ips == NULL);
	keystore_close(ks);
out:
	free(err);
	tmpdb_remove(&t);
}

/* A list the daemon cannot read back is an error at open, not a key that works from
 * anywhere. */
TEST(a_stored_allow_ips_that_does_not_parse_fails_the_open)
{
	struct tmpdb t;
	struct keystore *ks;
	sqlite3 *db = NULL;
	char secret[KEY_SECRET_LEN + 1], *err = NULL;
	struct key *k = NULL;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (ks) {
		CHECK_INT(keystore_create(ks, "x", NULL, 0, 0, 0, secret, &k, &err), 0);
		keystore_close(ks);
	}
	CHECK_INT(sqlite3_open(t.path, &db), SQLITE_OK);
	CHECK_INT(sqlite3_exec(db, "UPDATE keys SET allow_ips = '10.0.0.0/8,10.0.0.1/8'", NULL,
	                       NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	ks = keystore_open(t.path, &err);
	CHECK(ks == NULL);
	CHECK(err && strstr(err, "allow_ips") && strstr(err, "10.0.0.1/8"));
	keystore_close(ks);
	free(err);
	tmpdb_remove(&t);
}

/* Users, their top-ups and their keys are stored: a store opened again has them all. */
TEST(users_balances_limits_and_owned_keys_survive_reopening)
{
	struct tmpdb t;
	struct keystore *ks;
	struct key_change *c;
	struct key *k = NULL;
	struct user *u;
	struct limit l[2];
	size_t n = 0;
	char *err = NULL, secret[KEY_SECRET_LEN + 1], buf[LIMITS_TEXT_MAX];
	int64_t uid = 0, kid = 0;

	tmpdb_make(&t);
	CHECK_INT(limits_parse("cost:25/month,tokens:1M/day", l, &n, &err), 0);
	ks = open_ok(t.path);
	if (!ks)
		goto out;
	c = keystore_change_user_create(ks, "alice", true, 10 * 1000000000LL, 1250000, l, n, &err);
	CHECK(c != NULL);
	keystore_change_write(c);
	uid = keystore_change_user_id(c);
	CHECK(uid > 0);
	CHECK_INT(keystore_change_apply(c, NULL, NULL, &err), 0);
	/* the same name twice is refused before any write */
	CHECK(keystore_change_user_create(ks, "alice", false, 0, MULTIPLIER_ONE, NULL, 0,
	                                  &err) == NULL);
	CHECK(err && strstr(err, "already"));
	free(err);
	err = NULL;
	c = keystore_change_user_topup(ks, uid, -2500000000LL, &err);
	CHECK(c != NULL);
	keystore_change_write(c);
	CHECK_INT(keystore_change_apply(c, NULL, NULL, &err), 0);
	c = keystore_change_create_for(ks, "alice-laptop", NULL, 0, 0, uid, l, 1, 2000000, &err);
	CHECK(c != NULL);
	keystore_change_write(c);
	CHECK_INT(keystore_change_apply(c, &k, secret, &err), 0);
	kid = k ? k->id : 0;
	/* a key for a user that does not exist is refused */
	CHECK(keystore_change_create_for(ks, "x", NULL, 0, 0, uid + 100, NULL, 0, MULTIPLIER_ONE,
	                                 &err) == NULL);
	free(err);
	err = NULL;
	keystore_close(ks);

	ks = open_ok(t.path);
	if (!ks)
		goto out;
	u = keystore_user_get(ks, uid);
	CHECK(u != NULL);
	if (u) {
		CHECK_STR(u->name, "alice");
		CHECK(u->bal.kept);
		CHECK_INT(u->bal.credit, 7500000000LL);
		CHECK_INT(u->multiplier_ppm, 1250000);
		CHECK_STR(limits_format(u->acct.lim, u->acct.n_lim, buf, sizeof(buf)),
		          "cost:25/month,tokens:1000000/day");
	}
	k = keystore_get(ks, kid);
	CHECK(k && k->user == u && k->user_id == uid);
	if (k) {
		CHECK_INT(k->multiplier_ppm, 2000000);
		CHECK_STR(limits_format(k->acct.lim, k->acct.n_lim, buf, sizeof(buf)),
		          "cost:25/month");
	}
	keystore_close(ks);
out:
	free(err);
	tmpdb_remove(&t);
}

TEST(db_file_is_created_mode_0600)
{
	struct tmpdb t;
	struct keystore *ks;
	struct stat st;
	char wal[160];
	mode_t old = umask(0);        /* even a permissive umask must not widen it */

	tmpdb_make(&t);
	ks = open_ok(t.path);
	umask(old);
	CHECK_INT(stat(t.path, &st), 0);
	CHECK_INT(st.st_mode & 0777, 0600);
	snprintf(wal, sizeof(wal), "%s-wal", t.path);
	if (stat(wal, &st) == 0)
		CHECK_INT(st.st_mode & 0777, 0600);
	keystore_close(ks);
	tmpdb_remove(&t);

	old = umask(0277);            /* nor may a strict one leave us without write access */
	tmpdb_make(&t);
	ks = open_ok(t.path);
	umask(old);
	CHECK_INT(stat(t.path, &st), 0);
	CHECK_INT(st.st_mode & 0777, 0600);
	keystore_close(ks);
	tmpdb_remove(&t);
}

TEST(store_uses_wal_journal)
{
	struct tmpdb t;
	struct keystore *ks;
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	keystore_close(ks);
	CHECK_INT(sqlite3_open(t.path, &db), SQLITE_OK);
	CHECK_INT(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_step(st), SQLITE_ROW);
	CHECK_STR((const char *)sqlite3_column_text(st, 0), "wal");
	sqlite3_finalize(st);
	sqlite3_close(db);
	tmpdb_remove(&t);
}

TEST(missing_directory_is_reported_with_its_path)
{
	char *err = NULL;
	struct keystore *ks = keystore_open("/tmp/fg_no_such_dir_for_keys/sub/fastgate.db", &err);

	CHECK(ks == NULL);
	CHECK(err && strstr(err, "/tmp/fg_no_such_dir_for_keys/sub"));
	CHECK(err && strstr(err, "does not exist"));
	keystore_close(ks);
	free(err);
}

TEST(db_with_future_schema_version_is_refused)
{
	struct tmpdb t;
	sqlite3 *db = NULL;
	char *err = NULL;
	struct keystore *ks;

	tmpdb_make(&t);
	CHECK_INT(sqlite3_open(t.path, &db), SQLITE_OK);
	CHECK_INT(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	chmod(t.path, 0600);          /* only the version is under test, not the mode warning */
	ks = keystore_open(t.path, &err);
	CHECK(ks == NULL);
	CHECK(err && strstr(err, "99"));
	CHECK(err && strstr(err, "newer"));
	CHECK(err && strstr(err, t.path));
	keystore_close(ks);
	free(err);
	tmpdb_remove(&t);
}

TEST(file_that_is_not_a_database_is_refused)
{
	struct tmpdb t;
	FILE *f;
	char *err = NULL;
	struct keystore *ks;

	tmpdb_make(&t);
	f = fopen(t.path, "w");
	CHECK(f != NULL);
	if (f) {
		fputs("this is not sqlite, just a long enough line of text to look like a header\n", f);
		fclose(f);
		chmod(t.path, 0600);
	}
	ks = keystore_open(t.path, &err);
	CHECK(ks == NULL);
	CHECK(err && strstr(err, t.path));
	keystore_close(ks);
	free(err);
	tmpdb_remove(&t);
}

TEST(route_state_get_set_round_trip)
{
	struct tmpdb t;
	struct keystore *ks;
	char *err = NULL;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (ks) {
		CHECK_INT(keystore_route_state_get(ks, "qwen3"), -1);
		CHECK_INT(keystore_route_state_set(ks, "qwen3", 0, &err), 0);
		CHECK_INT(keystore_route_state_get(ks, "qwen3"), 0);
		CHECK_INT(keystore_route_state_set(ks, "gpt", 1, &err), 0);
		CHECK_INT(keystore_route_state_set(ks, "gpt", 0, &err), 0);
		CHECK_INT(keystore_route_state_set(ks, "gpt", 1, &err), 0);
		CHECK_INT(keystore_route_state_set(ks, "bad name", 1, &err), -1);
		keystore_close(ks);
	}
	ks = open_ok(t.path);
	if (ks) {
		CHECK_INT(keystore_route_state_get(ks, "qwen3"), 0);
		CHECK_INT(keystore_route_state_get(ks, "gpt"), 1);
		CHECK_INT(keystore_route_state_get(ks, "other"), -1);
		keystore_close(ks);
	}
	free(err);
	tmpdb_remove(&t);
}

TEST(target_state_get_set_round_trip)
{
	struct tmpdb t;
	struct keystore *ks;
	char *err = NULL;
	const char *a = "http://127.0.0.1:8000/v1/chat/completions";
	const char *b = "https://res.example.test";

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (ks) {
		CHECK_INT(keystore_target_state_get(ks, "chat", a), -1);
		CHECK_INT(keystore_target_state_set(ks, "chat", a, 1, &err), 0);
		CHECK_INT(keystore_target_state_get(ks, "chat", a), 1);
		CHECK_INT(keystore_target_state_get(ks, "chat", b), -1);   /* by URL */
		CHECK_INT(keystore_target_state_get(ks, "other", a), -1);  /* and by route */
		CHECK_INT(keystore_target_state_set(ks, "chat", b, 1, &err), 0);
		CHECK_INT(keystore_target_state_set(ks, "chat", b, 0, &err), 0);
		CHECK_INT(keystore_target_state_get(ks, "chat", b), 0);
		CHECK_INT(keystore_route_state_get(ks, "chat"), -1);      /* not a route state */
		CHECK_INT(keystore_target_state_set(ks, "bad name", a, 1, &err), -1);
		CHECK(err && strstr(err, "route name"));
		free(err);
		err = NULL;
		CHECK_INT(keystore_target_state_set(ks, "chat", "", 1, &err), -1);
		CHECK(err && strstr(err, "URL"));
		free(err);
		err = NULL;
		CHECK_INT(keystore_target_state_set(ks, "chat", "http://x/\n", 1, &err), -1);
		CHECK(err && strstr(err, "control characters"));
		keystore_close(ks);
	}
	ks = open_ok(t.path);
	if (ks) {
		CHECK_INT(keystore_target_state_get(ks, "chat", a), 1);
		CHECK_INT(keystore_target_state_get(ks, "chat", b), 0);
		keystore_close(ks);
	}
	free(err);
	tmpdb_remove(&t);
}

/* A store written by a fastgated from before upstream states (schema version 1) is
 * migrated in place: its keys and route states stay, and upstream states can be kept. */
TEST(version_1_store_is_migrated_and_keeps_its_keys_and_route_states)
{
	struct tmpdb t;
	struct keystore *ks;
	struct key *k = NULL;
	char secret[KEY_SECRET_LEN + 1];
	char *err = NULL;
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (ks) {
		CHECK_INT(keystore_create(ks, "old", NULL, 0, 7, 0, secret, &k, &err), 0);
		CHECK_INT(keystore_route_state_set(ks, "legacy", 0, &err), 0);
		keystore_close(ks);
	}
	/* back to what version 1 had */
	CHECK_INT(sqlite3_open(t.path, &db), SQLITE_OK);
	CHECK_INT(sqlite3_exec(db, "DROP TABLE target_state; DROP TABLE users; DROP TABLE topups;"
	                       "ALTER TABLE keys DROP COLUMN user_id;"
	                       "ALTER TABLE keys DROP COLUMN limits;"
	                       "ALTER TABLE keys DROP COLUMN multiplier_ppm;"
	                       "ALTER TABLE keys DROP COLUMN allow_ips;"
	                       "PRAGMA user_version = 1", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	db = NULL;

	ks = open_ok(t.path);
	if (ks) {
		k = keystore_lookup(ks, secret, KEY_SECRET_LEN);
		CHECK(k && strcmp(k->name, "old") == 0 && k->rpm == 7);
		CHECK_INT(keystore_route_state_get(ks, "legacy"), 0);
		CHECK_INT(keystore_target_state_get(ks, "legacy", "http://h:1"), -1);
		CHECK_INT(keystore_target_state_set(ks, "legacy", "http://h:1", 1, &err), 0);
		keystore_close(ks);
	}
	CHECK_INT(sqlite3_open(t.path, &db), SQLITE_OK);
	CHECK_INT(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_step(st), SQLITE_ROW);
	CHECK_INT(sqlite3_column_int(st, 0), 4);
	sqlite3_finalize(st);
	sqlite3_close(db);
	ks = open_ok(t.path);
	if (ks) {
		CHECK_INT(keystore_target_state_get(ks, "legacy", "http://h:1"), 1);
		keystore_close(ks);
	}
	free(err);
	tmpdb_remove(&t);
}

static double now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

TEST(handed_over_last_used_persists_and_the_rest_does_not)
{
	struct tmpdb t;
	struct keystore *ks;
	struct keyusage *u;
	struct key *a = NULL, *b = NULL;
	struct key_use *pairs;
	char sa[KEY_SECRET_LEN + 1], sb[KEY_SECRET_LEN + 1];
	char *err = NULL;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (ks) {
		CHECK_INT(keystore_create(ks, "a", NULL, 0, 0, 0, sa, &a, &err), 0);
		CHECK_INT(keystore_create(ks, "b", NULL, 0, 0, 0, sb, &b, &err), 0);
		CHECK_INT(keystore_take_usage(ks, &pairs), 0);      /* nothing touched */
		CHECK(pairs == NULL);
		u = keyusage_start(t.path, &err);
		CHECK(u != NULL);
		key_touch(a, 1700000100);
		CHECK(a->usage_dirty);
		keyusage_flush(u, ks);
		CHECK(!a->usage_dirty);
		key_touch(b, 1700000200);                           /* never handed over */
		keyusage_stop(u);
		keystore_close(ks);
	}
	ks = open_ok(t.path);
	if (ks) {
		a = keystore_lookup(ks, sa, KEY_SECRET_LEN);
		b = keystore_lookup(ks, sb, KEY_SECRET_LEN);
		CHECK(a && a->last_used == 1700000100);
		CHECK(b && b->last_used == 0);
		keystore_close(ks);
	}
	free(err);
	tmpdb_remove(&t);
}

/* The event loop hands last-used times over while another process holds the key
 * database's write lock: the hand-over returns at once (before keyusage.c the loop waited
 * for the lock, up to the 5 s busy timeout), and the times are saved once it is free. An
 * older time handed over later never replaces a newer one. */
TEST(last_used_hand_over_does_not_wait_for_a_locked_database)
{
	struct tmpdb t;
	struct keystore *ks;
	struct keyusage *u;
	struct key *a = NULL;
	char sa[KEY_SECRET_LEN + 1];
	char *err = NULL;
	sqlite3 *other = NULL;

	tmpdb_make(&t);
	ks = open_ok(t.path);
	if (ks) {
		double t0;

		CHECK_INT(keystore_create(ks, "a", NULL, 0, 0, 0, sa, &a, &err), 0);
		u = keyusage_start(t.path, &err);
		CHECK(u != NULL);
		CHECK_INT(sqlite3_open(t.path, &other), SQLITE_OK);
		CHECK_INT(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
		key_touch(a, 1700000300);
		t0 = now_seconds();
		keyusage_flush(u, ks);
		CHECK(now_seconds() - t0 < 1.0);
		CHECK_INT(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
		/* a stale pair for the same key, as a retry after a failure would bring */
		a->last_used = 1700000000;
		a->usage_dirty = true;
		keyusage_flush(u, ks);
		keyusage_stop(u);
		sqlite3_close(other);
		keystore_close(ks);
	}
	ks = open_ok(t.path);
	if (ks) {
		a = keystore_lookup(ks, sa, KEY_SECRET_LEN);
		CHECK(a && a->last_used == 1700000300);
		keystore_close(ks);
	}
	free(err);
	tmpdb_remove(&t);
}


TEST(hundred_thousand_keys_load_and_one_is_found)
{
	enum { N = 100000, PROBE = 73123 };
	struct tmpdb t;
	struct keystore *ks;
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	char secret[KEY_SECRET_LEN + 1], probe[KEY_SECRET_LEN + 1], last[KEY_SECRET_LEN + 1];
	unsigned char h[KEY_HASH_LEN];
	struct key *k;
	double t0;

	tmpdb_make(&t);
	ks = open_ok(t.path);                                   /* creates the schema */
	keystore_close(ks);

	CHECK_INT(sqlite3_open(t.path, &db), SQLITE_OK);
	CHECK_INT(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_prepare_v2(db, "INSERT INTO keys (id, name, display, hash, created, "
	                             "expires, revoked, last_used, routes, rpm, limits) "
	                             "VALUES (?1, ?2, ?3, ?4, 1700000000, 0, 0, 0, ?5, 60, "
	                             "'requests:60/min')",
	                             -1, &st, NULL), SQLITE_OK);
	for (int i = 1; i <= N; i++) {
		char name[32], display[KEY_DISPLAY_LEN + 1];

		if (key_generate(secret) < 0)
			break;
		if (i == PROBE)
			memcpy(probe, secret, sizeof(secret));
		if (i == N)
			memcpy(last, secret, sizeof(secret));
		key_hash(secret, KEY_SECRET_LEN, h);
		snprintf(name, sizeof(name), "bulk-%d", i);
		snprintf(display, sizeof(display), "%.*s", KEY_DISPLAY_LEN, secret);
		sqlite3_bind_int64(st, 1, i);
		sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(st, 3, display, -1, SQLITE_TRANSIENT);
		sqlite3_bind_blob(st, 4, h, KEY_HASH_LEN, SQLITE_TRANSIENT);
		sqlite3_bind_text(st, 5, i % 2 ? "a,b" : "", -1, SQLITE_STATIC);
		if (sqlite3_step(st) != SQLITE_DONE) {
			CHECK(0);
			break;
		}
		sqlite3_reset(st);
	}
	sqlite3_finalize(st);
	CHECK_INT(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);

	t0 = now_seconds();
	ks = open_ok(t.path);
	printf("     loaded %d keys in %.1f ms\n", N, (now_seconds() - t0) * 1000);
	if (ks) {
		CHECK_INT(keystore_count(ks), N);
		k = keystore_lookup(ks, probe, KEY_SECRET_LEN);
		CHECK(k != NULL);
		if (k) {
			CHECK_INT(k->id, PROBE);
			CHECK_STR(k->name, "bulk-73123");
			CHECK_INT(k->n_routes, 2);
			CHECK_INT(k->rpm, 60);
		}
		k = keystore_lookup(ks, last, KEY_SECRET_LEN);
		CHECK(k != NULL && k->id == N);
		CHECK(keystore_get(ks, 4242) && keystore_get(ks, 4242)->id == 4242);
		CHECK(keystore_get(ks, N + 1) == NULL);
		CHECK_INT(key_generate(secret), 0);
		CHECK(keystore_lookup(ks, secret, KEY_SECRET_LEN) == NULL);
		keystore_close(ks);
	}
	tmpdb_remove(&t);
}

RUN_TESTS()
