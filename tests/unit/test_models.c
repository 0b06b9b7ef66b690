/* The model table (models.c): the shipped share/models.yaml loads and answers for the
 * common models, the first matching glob wins, and every mistake is named by line. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "models.h"
#include "unit.h"

static char path[64];

/* Write text to a scratch file and load it; the errors go to e. */
static struct model_table *load_text(const char *text, struct errlist *e)
{
	FILE *f;
	int fd;

	snprintf(path, sizeof(path), "/tmp/fg-models-XXXXXX");
	fd = mkstemp(path);
	if (fd < 0 || !(f = fdopen(fd, "w"))) {
		perror("mkstemp");
		exit(2);
	}
	fputs(text, f);
	fclose(f);
	return models_load(path, e);
}

/* Exactly one error, at this line, saying this. */
static void one_error(struct model_table *t, struct errlist *e, int line, const char *msg)
{
	char want[512];

	snprintf(want, sizeof(want), "%s:%d: %s", path, line, msg);
	CHECK(t == NULL);
	CHECK_INT(e->n, 1);
	if (e->n)
		CHECK_STR(e->lines[0], want);
	models_free(t);
	errlist_clear(e);
	unlink(path);
}

TEST(the_shipped_table_loads_and_answers_for_common_models)
{
	struct errlist e = { 0 };
	struct model_table *t = models_load("share/models.yaml", &e);
	const struct model_info *m;

	for (size_t i = 0; i < e.n; i++)
		fprintf(stderr, "  %s\n", e.lines[i]);
	CHECK(t != NULL);
	CHECK(t && t->n >= 20);
	m = models_find(t, "gpt-4o-mini");
	CHECK(m && m->context_window == 128000 && m->max_output_tokens == 16384);
	CHECK_STR(m ? m->provider : NULL, "openai");
	/* the specific entry before the general one */
	m = models_find(t, "claude-opus-4-1-20250805");
	CHECK(m && m->max_output_tokens == 32000);
	m = models_find(t, "claude-3-5-haiku-20241022");
	CHECK(m && m->max_output_tokens == 8192 && m->default_output_tokens == 8192);
	CHECK_STR(m ? m->provider : NULL, "anthropic");
	/* reasoning models default to their whole output limit: thinking counts against it */
	m = models_find(t, "o3-mini");
	CHECK(m && m->default_output_tokens == m->max_output_tokens);
	m = models_find(t, "Qwen3-32B");
	CHECK(m && m->provider == NULL && m->default_output_tokens <= m->max_output_tokens);
	for (size_t i = 0; t && i < t->n; i++) {
		CHECK(t->models[i].default_output_tokens <= t->models[i].max_output_tokens);
		CHECK(t->models[i].max_output_tokens <= t->models[i].context_window);
	}
	CHECK(models_find(t, "no-such-model") == NULL);
	CHECK(models_find(NULL, "gpt-4o") == NULL);
	models_free(t);
	errlist_clear(&e);
}

TEST(mistakes_are_named_by_line)
{
	struct errlist e = { 0 };

	one_error(load_text("models:\n  - { match: a, context_window: 10, max_output_tokens: 5, colour: red }\n", &e),
	          &e, 2, "unknown key \"colour\" in a model (valid: match, provider, context_window, max_output_tokens, default_output_tokens)");
	one_error(load_text("models:\n  - { context_window: 10, max_output_tokens: 5 }\n", &e),
	          &e, 2, "a model needs match: (a glob over model names, such as \"gpt-4o*\")");
	one_error(load_text("models:\n  - match: a\n    context_window: ten\n    max_output_tokens: 5\n", &e),
	          &e, 3, "context_window: expected a number of tokens from 1 to 100000000");
	one_error(load_text("models:\n  - match: a\n    context_window: 10\n    max_output_tokens: 20\n", &e),
	          &e, 4, "max_output_tokens (20) is more than context_window (10)");
	one_error(load_text("models:\n  - { match: a, context_window: 10, max_output_tokens: 5,\n      default_output_tokens: 6 }\n", &e),
	          &e, 3, "default_output_tokens (6) is more than max_output_tokens (5)");
	one_error(load_text("models:\n  - { match: a, provider: bedrock, context_window: 10, max_output_tokens: 5 }\n", &e),
	          &e, 2, "provider: expected openai, anthropic or azure");
	one_error(load_text("models:\n  - { match: a }\n", &e),
	          &e, 2, "a model needs context_window: and max_output_tokens:");
	one_error(load_text("models:\n  - just-a-name\n", &e),
	          &e, 2, "each entry under models: must be a mapping (- match: ...)");
	/* a misspelt key is named, and so is the models: it leaves missing */
	CHECK(load_text("modles: []\n", &e) == NULL);
	CHECK_INT(e.n, 2);
	if (e.n == 2) {
		char want[256];

		snprintf(want, sizeof(want), "%s:1: unknown key \"modles\" at the top (valid: models, updated, source)", path);
		CHECK_STR(e.lines[0], want);
		snprintf(want, sizeof(want), "%s:1: models: expected a sequence of models (- match: ...)", path);
		CHECK_STR(e.lines[1], want);
	}
	errlist_clear(&e);
	unlink(path);
	one_error(load_text("models: [\n", &e), &e, 2, "YAML error: did not find expected node content");
	CHECK(models_load("/nonexistent/models.yaml", &e) == NULL);
	CHECK_INT(e.n, 1);
	CHECK_STR(e.n ? e.lines[0] : NULL, "/nonexistent/models.yaml: No such file or directory");
	errlist_clear(&e);
}

RUN_TESTS()
