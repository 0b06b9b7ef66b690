# fastgate — build, test, run, install.
# `make` builds both programs into build/; `make test` builds an ASan/UBSan copy into
# build-test/ and runs the unit and end-to-end suites against it.

PREFIX  ?= /usr/local
DESTDIR ?=
VERSION := 0.1.0

PKGS    := libevent libcurl yaml-0.1 sqlite3 jansson libssl libcrypto
CC      ?= cc
WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wformat=2
BASE_CFLAGS = -std=gnu11 $(WARN) -D_GNU_SOURCE -DFG_VERSION=\"$(VERSION)\" \
              -Ifastgated $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LIBS    = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -levent_pthreads -lpthread -lm

REL_CFLAGS  := -O2 -g
TEST_CFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

DAEMON_SRC := $(filter-out fastgated/main.c,$(wildcard fastgated/*.c))
CLI_SRC    := $(wildcard fastgate-cli/*.c)
UNIT_SRC   := $(wildcard tests/unit/test_*.c)
HDRS       := $(wildcard fastgated/*.h fastgate-cli/*.h tests/unit/*.h)

.PHONY: all deps test-deps test unit run install clean programs test-programs bench fuzz stress soak
# The dependency step runs first and alone; the build is a fresh make so that pkg-config
# flags are read after any install.
all: deps
	@$(MAKE) --no-print-directory programs
programs: build/fastgated build/fastgate-cli build/mock-upstream

deps:
	@tests/deps.sh build
test-deps:
	@tests/deps.sh test

# $(1) = output dir, $(2) = extra cflags
define variant
$(1)/obj/%.o: %.c $(HDRS)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(BASE_CFLAGS) $(2) -c $$< -o $$@
$(1)/libfg.a: $(patsubst %.c,$(1)/obj/%.o,$(DAEMON_SRC))
	rm -f $$@ && ar rcs $$@ $$^
$(1)/fastgated: $(1)/obj/fastgated/main.o $(1)/libfg.a
	$$(CC) $(2) -o $$@ $$^ $$(LIBS)
$(1)/fastgate-cli: $(patsubst %.c,$(1)/obj/%.o,$(CLI_SRC)) $(1)/libfg.a
	$$(CC) $(2) -o $$@ $$^ $$(LIBS)
$(1)/mock-upstream: $(1)/obj/tests/mock-upstream.o
	$$(CC) $(2) -o $$@ $$^ $$(LIBS)
$(1)/tests/unit/%: $(1)/obj/tests/unit/%.o $(1)/libfg.a
	@mkdir -p $$(dir $$@)
	$$(CC) $(2) -o $$@ $$^ $$(LIBS)
endef
$(eval $(call variant,build,$(REL_CFLAGS)))
$(eval $(call variant,build-test,$(TEST_CFLAGS)))

UNIT_BINS := $(patsubst tests/unit/%.c,build-test/tests/unit/%,$(UNIT_SRC))
.SECONDARY:

test-programs: programs build-test/fastgated build-test/fastgate-cli build-test/mock-upstream $(UNIT_BINS)

test: test-deps
	@$(MAKE) --no-print-directory test-programs
	@tests/run-all.sh

unit: test-deps
	@$(MAKE) --no-print-directory $(UNIT_BINS)
	@tests/run-all.sh --unit-only

# the load and fault suite at full size (a smoke version runs inside `make test`)
stress: test-deps
	@$(MAKE) --no-print-directory test-programs
	@python3 tests/stress/run.py

# SOAK_MINUTES (30), SOAK_RATE (1000 req/s: half of what make bench measured), SOAK_CONC (16)
soak: deps
	@$(MAKE) --no-print-directory programs
	@python3 tests/stress/soak.py

FUZZ_SECONDS ?= 60
# libFuzzer + ASan/UBSan on the parsers (needs clang); new coverage is merged into tests/fuzz/corpus
fuzz: test-deps
	@tests/fuzz/run.sh fuzz $(FUZZ_SECONDS)

bench: deps
	@$(MAKE) --no-print-directory programs
	@BENCH_NO_BUILD=1 tests/bench/run.sh

run: all
	@tests/run-demo.sh

install: all
	@test -f man/fastgated.8 || { echo 'man pages missing' >&2; exit 1; }
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/bin \
	  $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man5 \
	  $(DESTDIR)$(PREFIX)/share/man/man8 $(DESTDIR)$(PREFIX)/share/fastgate
	install -m 0755 build/fastgated $(DESTDIR)$(PREFIX)/sbin/fastgated
	install -m 0755 build/fastgate-cli $(DESTDIR)$(PREFIX)/bin/fastgate-cli
	install -m 0644 man/fastgate-cli.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 0644 man/fastgate-routes.5 $(DESTDIR)$(PREFIX)/share/man/man5/
	install -m 0644 man/fastgated.8 $(DESTDIR)$(PREFIX)/share/man/man8/
	install -m 0644 share/fastgate.yaml $(DESTDIR)$(PREFIX)/share/fastgate/fastgate.yaml.example
	install -m 0644 share/models.yaml $(DESTDIR)$(PREFIX)/share/fastgate/models.yaml
	install -m 0644 share/pricing.yaml $(DESTDIR)$(PREFIX)/share/fastgate/pricing.yaml
	install -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions
	install -m 0644 share/fastgate-cli.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/fastgate-cli

clean:
	rm -rf build build-test build-fuzz
