/* Fuzz target: the text of spend-control limits (fastgated/limit.c), as operators type it
 * on `fastgate-cli key create --limit` and as the key store keeps it.
 *
 * Any bytes: limits_parse either refuses them with a message and leaves the set as it was,
 * or accepts them; an accepted set formats (limits_format) to text that parses back to the
 * same set, at most LIMITS_MAX limits, each amount > 0, no two with the same kind and
 * window. Then the counters: the input drives reservations and adjustments on each limit
 * (times from the input), and the usage never goes below 0, a
 * wait of 0 means the amount fits, and what limit_wait promises holds at that time.
 *
 * The same bytes as a rate (limit_rate_parse, fastgate.yaml's auth_fail_limit): refused
 * with a message and *r untouched, or an amount > 0 per 1, 60 or 3600 seconds that reads
 * back the same from its plain text. */
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "limit.h"

static void check_rate(const char *text)
{
	struct limit_rate r = { -5, -5 }, back = { 0, 0 };
	char *err = NULL, plain[48];

	if (limit_rate_parse(text, &r, &err) < 0) {
		FUZZ_CHECK(err && *err, "rate refused without a message: %s", text);
		FUZZ_CHECK(r.amount == -5 && r.per_s == -5, "a refused rate was changed");
		free(err);
		return;
	}
	FUZZ_CHECK(r.amount > 0, "rate amount %lld", (long long)r.amount);
	FUZZ_CHECK(r.per_s == 1 || r.per_s == 60 || r.per_s == 3600, "per %lld s",
	           (long long)r.per_s);
	snprintf(plain, sizeof(plain), "%lld/%s", (long long)r.amount,
	         r.per_s == 1 ? "s" : r.per_s == 60 ? "min" : "hour");
	FUZZ_CHECK(limit_rate_parse(plain, &back, &err) == 0 && back.amount == r.amount &&
	           back.per_s == r.per_s, "\"%s\" does not read back", plain);
	free(err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char text[512], buf[LIMITS_TEXT_MAX], *err = NULL;
	struct limit set[LIMITS_MAX], again[LIMITS_MAX];
	size_t n = 0, m = 0, len = size < sizeof(text) - 1 ? size : sizeof(text) - 1;

	memcpy(text, data, len);
	text[len] = '\0';
	check_rate(text);
	if (limits_parse(text, set, &n, &err) < 0) {
		FUZZ_CHECK(err && *err, "refused without a message: %s", text);
		FUZZ_CHECK(n == 0, "a refused list added %zu limits", n);
		free(err);
		return 0;
	}
	FUZZ_CHECK(n <= LIMITS_MAX, "%zu limits", n);
	limits_format(set, n, buf, sizeof(buf));
	FUZZ_CHECK(limits_parse(buf, again, &m, &err) == 0 && m == n,
	           "\"%s\" does not parse back (%s)", buf, err ? err : "count differs");
	for (size_t i = 0; i < n; i++) {
		FUZZ_CHECK(set[i].amount > 0, "amount %lld", (long long)set[i].amount);
		FUZZ_CHECK(memcmp(&set[i], &again[i], sizeof(set[i])) == 0, "round trip of %s", buf);
		for (size_t j = 0; j < i; j++)
			FUZZ_CHECK(set[i].kind != set[j].kind || set[i].window != set[j].window,
			           "two limits of one kind and window in %s", buf);
	}
	/* the counters, driven by the input's bytes */
	for (size_t i = 0; i < n; i++) {
		struct limit_counter c;
		int64_t now = 1796083200, at = now;

		limit_counter_init(&c, &set[i], now);
		for (size_t k = 0; k < size; k++) {
			/* from nothing to a little over the limit (then never), without overflow */
			__int128 want = (__int128)(data[k] % 18) * (set[i].amount / 17 + 1);
			int64_t amount = want > INT64_MAX ? INT64_MAX : (int64_t)want;
			int64_t wait = limit_wait(&c, &set[i], now, amount);

			if (wait == 0) {
				at = limit_add(&c, &set[i], now, amount);
				FUZZ_CHECK(limit_used(&c, &set[i], now) <= set[i].amount,
				           "over the limit after a wait of 0");
			} else if (wait > 0) {
				FUZZ_CHECK(limit_wait(&c, &set[i], now + wait, amount) == 0,
				           "still no room after the promised wait %lld", (long long)wait);
			} else {
				FUZZ_CHECK(amount > set[i].amount, "never for an amount that fits");
			}
			if (data[k] & 0x40)
				limit_adjust(&c, &set[i], at, now, -(int64_t)(data[k] & 7));
			FUZZ_CHECK(limit_used(&c, &set[i], now) >= 0, "negative usage");
			/* forward only: a counter takes an earlier time as the latest it saw, and
			 * then a wait is not measured from the time given */
			now += (int64_t)(data[k] & 0x3f) * 7;
		}
	}
	return 0;
}
