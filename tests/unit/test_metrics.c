/* Unit tests for metrics.c's spend families, fed through the request-done subscriber and
 * read back from the Prometheus text: tokens by route, model and kind; the cost as an
 * exact decimal of nano-dollars however large it grows; unpriced requests by route; at most
 * 256 models a route, the rest as "other"; label values escaped and kept valid UTF-8. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "audit.h"
#include "gateway.h"
#include "metrics.h"
#include "unit.h"

/* A gateway with nothing but its counters: what metrics_render reads of it may be empty. */
static struct gateway *new_gateway(void)
{
	struct gateway *gw = calloc(1, sizeof(*gw));

	gw->metrics = metrics_new();
	return gw;
}

static void free_gateway(struct gateway *gw)
{
	metrics_free(gw->metrics);
	free(gw);
}

/* One finished request: its usage (-1 unknown) and cost (-1 none). */
static void done(struct gateway *gw, const char *route, const char *model, int64_t prompt,
                 int64_t completion, int64_t cached, int64_t cost_nano, bool unpriced)
{
	struct audit_record r = { 0 };
	struct request_done d = { .row = &r, .total_s = 0.01, .ttfb_s = 0.005 };

	r.route = (char *)route;
	r.model = (char *)model;
	r.status = 200;
	r.prompt_tokens = prompt;
	r.completion_tokens = completion;
	r.cached_tokens = cached;
	r.cache_write_tokens = -1;
	r.reasoning_tokens = -1;
	r.cost_nano = cost_nano;
	r.unpriced = unpriced;
	metrics_on_done(gw, &d);
}

/* The Prometheus text; caller frees. */
static char *render(struct gateway *gw)
{
	struct evbuffer *b = evbuffer_new();
	size_t n;
	char *s;

	CHECK_INT(metrics_render(gw, b), 0);
	n = evbuffer_get_length(b);
	s = malloc(n + 1);
	evbuffer_remove(b, s, n);
	s[n] = '\0';
	evbuffer_free(b);
	return s;
}

/* The line starting with prefix (followed by a space and the value); NULL if none. */
static const char *value_of(const char *text, const char *prefix)
{
	size_t n = strlen(prefix);

	for (const char *p = text; p; p = strchr(p, '\n')) {
		if (*p == '\n')
			p++;
		if (strncmp(p, prefix, n) == 0 && p[n] == ' ')
			return p + n + 1;
	}
	return NULL;
}

static bool line_is(const char *text, const char *prefix, const char *value)
{
	const char *v = value_of(text, prefix);
	size_t n = strlen(value);

	if (!v || strncmp(v, value, n) != 0 || v[n] != '\n') {
		fprintf(stderr, "  %s: %.*s, expected %s\n", prefix, v ? (int)strcspn(v, "\n") : 6,
		        v ? v : "(none)", value);
		return false;
	}
	return true;
}

static int count_lines(const char *text, const char *prefix)
{
	int n = 0;

	for (const char *p = strstr(text, prefix); p; p = strstr(p + 1, prefix))
		n += p == text || p[-1] == '\n';
	return n;
}

TEST(tokens_and_cost_are_counted_by_route_and_model_and_the_cost_is_exact)
{
	struct gateway *gw = new_gateway();
	char *text;

	done(gw, "chat", "gpt-4o", 1000, 200, 300, 123450, false);
	done(gw, "chat", "gpt-4o", 10, -1, -1, 1000000001, false);   /* unknown: adds nothing */
	done(gw, "chat", "llama", 5, 6, 0, -1, true);                /* unpriced */
	done(gw, "chat", "llama", -1, -1, -1, -1, true);
	done(gw, "embed", "gpt-4o", 7, 0, -1, 0, false);             /* free, not unpriced */
	done(gw, "chat", "made-up", -1, -1, -1, -1, false);          /* a 401: no series */
	text = render(gw);
	CHECK(strstr(text, "# TYPE fastgate_tokens_total counter\n") != NULL);
	CHECK(strstr(text, "# TYPE fastgate_cost_usd_total counter\n") != NULL);
	CHECK(strstr(text, "# TYPE fastgate_unpriced_requests_total counter\n") != NULL);
	CHECK(line_is(text, "fastgate_tokens_total{route=\"chat\",model=\"gpt-4o\",kind=\"prompt\"}",
	              "1010"));
	CHECK(line_is(text, "fastgate_tokens_total{route=\"chat\",model=\"gpt-4o\",kind=\"completion\"}",
	              "200"));
	CHECK(line_is(text, "fastgate_tokens_total{route=\"chat\",model=\"gpt-4o\",kind=\"cached\"}",
	              "300"));
	CHECK(line_is(text, "fastgate_tokens_total{route=\"chat\",model=\"gpt-4o\",kind=\"cache_write\"}",
	              "0"));
	CHECK(line_is(text, "fastgate_tokens_total{route=\"chat\",model=\"gpt-4o\",kind=\"reasoning\"}",
	              "0"));
	CHECK(line_is(text, "fastgate_cost_usd_total{route=\"chat\",model=\"gpt-4o\"}",
	              "1.000123451"));
	CHECK(line_is(text, "fastgate_cost_usd_total{route=\"embed\",model=\"gpt-4o\"}",
	              "0.000000000"));
	/* no cost series for a model that was never priced: no silent $0 */
	CHECK(value_of(text, "fastgate_cost_usd_total{route=\"chat\",model=\"llama\"}") == NULL);
	CHECK(line_is(text, "fastgate_tokens_total{route=\"chat\",model=\"llama\",kind=\"completion\"}",
	              "6"));
	CHECK(line_is(text, "fastgate_unpriced_requests_total{route=\"chat\"}", "2"));
	CHECK(value_of(text, "fastgate_unpriced_requests_total{route=\"embed\"}") == NULL);
	CHECK_INT(count_lines(text, "fastgate_tokens_total{route=\"chat\",model=\"made-up\""), 0);
	CHECK_INT(count_lines(text, "fastgate_tokens_total{"), 3 * 5);
	free(text);

	/* beyond what a double holds exactly: 2^53 + 1 nano-dollars, and on */
	done(gw, "big", "m", 1, 1, -1, 9007199254740993LL, false);
	done(gw, "big", "m", 1, 1, -1, 9007199254740993LL, false);
	text = render(gw);
	CHECK(line_is(text, "fastgate_cost_usd_total{route=\"big\",model=\"m\"}",
	              "18014398.509481986"));
	free(text);
	free_gateway(gw);
}

TEST(a_route_keeps_at_most_256_models_and_counts_the_rest_as_other)
{
	struct gateway *gw = new_gateway();
	char model[32], *text;

	for (int i = 0; i < 300; i++) {
		snprintf(model, sizeof(model), "m%03d", i);
		done(gw, "chat", model, 1, 1, -1, 1, false);
	}
	done(gw, "chat", "m000", 1, 1, -1, 1, false);     /* an old one keeps its series */
	done(gw, "other-route", "m299", 1, 1, -1, 1, false);   /* another route: its own 256 */
	text = render(gw);
	CHECK_INT(count_lines(text, "fastgate_cost_usd_total{route=\"chat\","), 257);
	CHECK(line_is(text, "fastgate_cost_usd_total{route=\"chat\",model=\"m000\"}", "0.000000002"));
	CHECK(line_is(text, "fastgate_cost_usd_total{route=\"chat\",model=\"m255\"}", "0.000000001"));
	CHECK(value_of(text, "fastgate_cost_usd_total{route=\"chat\",model=\"m256\"}") == NULL);
	CHECK(line_is(text, "fastgate_cost_usd_total{route=\"chat\",model=\"other\"}", "0.000000044"));
	CHECK(line_is(text, "fastgate_tokens_total{route=\"chat\",model=\"other\",kind=\"prompt\"}",
	              "44"));
	CHECK(line_is(text, "fastgate_cost_usd_total{route=\"other-route\",model=\"m299\"}",
	              "0.000000001"));
	free(text);
	free_gateway(gw);
}

TEST(model_labels_are_escaped_capped_and_valid_utf8)
{
	struct gateway *gw = new_gateway();
	char long_model[400], *text;

	memset(long_model, 'x', sizeof(long_model) - 1);
	long_model[sizeof(long_model) - 1] = '\0';
	done(gw, "chat", "a\"b\\c\nd", 1, 0, -1, -1, false);
	done(gw, "chat", "bad\xff\xc3(utf8 \xe2\x82\xac ok \xed\xa0\x80", 1, 0, -1, -1, false);
	done(gw, "chat", long_model, 1, 0, -1, -1, false);
	done(gw, "chat", NULL, 1, 0, -1, -1, false);
	text = render(gw);
	CHECK(line_is(text, "fastgate_tokens_total{route=\"chat\",model=\"a\\\"b\\\\c?d\",kind=\"prompt\"}",
	              "1"));
	CHECK(line_is(text, "fastgate_tokens_total{route=\"chat\",model=\"bad?\?(utf8 \xe2\x82\xac ok ?\?\?\","
	              "kind=\"prompt\"}", "1"));
	{
		char want[300];

		snprintf(want, sizeof(want), "fastgate_tokens_total{route=\"chat\",model=\"%.128s\","
		         "kind=\"prompt\"}", long_model);
		CHECK(line_is(text, want, "1"));
	}
	/* a request without a model (a GET passed through) is no model call: no series */
	CHECK(!strstr(text, "model=\"\""));
	free(text);
	free_gateway(gw);
}

/* a line's value (value_of) starts with want: the number and its line end */
#define CHECK_STR_PREFIX(v, want) do { const char *v_ = (v); \
	if (!v_ || strncmp(v_, want, strlen(want)) != 0) { unit_failed_checks++; \
	fprintf(stderr, "  %s:%d: %s is \"%.20s\", expected \"%s\"\n", __FILE__, __LINE__, \
	        #v, v_ ? v_ : "(none)", want); } } while (0)

/* The duration and TTFB histograms as the text format has them: each bucket counts the
 * requests at or below its bound (cumulative), +Inf and _count all, _sum the seconds. */
TEST(histogram_buckets_are_cumulative)
{
	struct gateway *gw = new_gateway();
	const double durations[] = { 0.001, 0.005, 0.007, 0.3, 0.3, 59.0, 400.0 };
	struct audit_record r = { 0 };
	char *text;

	r.route = "chat";
	r.status = 200;
	r.cost_nano = -1;
	for (size_t i = 0; i < sizeof(durations) / sizeof(durations[0]); i++) {
		struct request_done d = { .row = &r, .total_s = durations[i], .ttfb_s = -1 };

		if (i == 0)
			d.ttfb_s = 0.02;   /* one TTFB only: the others had none */
		metrics_on_done(gw, &d);
	}
	text = render(gw);
#define BUCKET(le, want) CHECK_STR_PREFIX(value_of(text, \
	"fastgate_request_duration_seconds_bucket{le=\"" le "\"}"), want)
	BUCKET("0.005", "2\n");    /* 0.001 and 0.005: a bound is in its bucket */
	BUCKET("0.01", "3\n");
	BUCKET("0.25", "3\n");
	BUCKET("0.5", "5\n");
	BUCKET("30", "5\n");
	BUCKET("60", "6\n");
	BUCKET("300", "6\n");
	BUCKET("+Inf", "7\n");
#undef BUCKET
	CHECK_STR_PREFIX(value_of(text, "fastgate_request_duration_seconds_count"), "7\n");
	CHECK_STR_PREFIX(value_of(text, "fastgate_ttfb_seconds_bucket{le=\"0.01\"}"), "0\n");
	CHECK_STR_PREFIX(value_of(text, "fastgate_ttfb_seconds_bucket{le=\"0.025\"}"), "1\n");
	CHECK_STR_PREFIX(value_of(text, "fastgate_ttfb_seconds_bucket{le=\"300\"}"), "1\n");
	CHECK_STR_PREFIX(value_of(text, "fastgate_ttfb_seconds_count"), "1\n");
	free(text);
	free_gateway(gw);
}

RUN_TESTS()
