# fastgate — build, test, run, install.
# `make` builds both programs into build/; `make test` builds an ASan/UBSan copy into
# build-test/ and runs the unit and end-to-end suites against it.

PREFIX  ?= /usr/local
DESTDIR ?=
VERSION := 0.1.0

# Where `make install` puts things. Configuration and state are not under PREFIX: /etc and
# /var even for PREFIX=/usr/local, as Debian does. The systemd, sysusers and tmpfiles
# directories under PREFIX/lib are all on systemd's search paths, /usr/local/lib included.
SYSCONFDIR     ?= /etc
LOCALSTATEDIR  ?= /var
RUNSTATEDIR    ?= /run
SBINDIR        ?= $(PREFIX)/sbin
BINDIR         ?= $(PREFIX)/bin
MANDIR         ?= $(PREFIX)/share/man
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR    ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR    ?= $(PREFIX)/lib/tmpfiles.d
FG_ETC   = $(SYSCONFDIR)/fastgate
FG_DATA  = $(PREFIX)/share/fastgate
FG_STATE = $(LOCALSTATEDIR)/lib/fastgate
FG_RUN   = $(RUNSTATEDIR)/fastgate
# The installed programs' defaults (fastgated/config.h): build-install/ is compiled with
# them, so an installed fastgated never reads paths relative to its working directory.
INSTALL_DEFS = -DFG_DEFAULT_CONFIG='"$(FG_ETC)/fastgate.yaml"' \
  -DFG_DEFAULT_ROUTES='"$(FG_ETC)/routes.d"' \
  -DFG_DEFAULT_MODELS='"$(FG_DATA)/models.yaml"' -DFG_DEFAULT_PRICING='"$(FG_DATA)/pricing.yaml"' \
  -DFG_DEFAULT_KEYS='"$(FG_STATE)/fastgate.db"' -DFG_DEFAULT_AUDIT='"$(FG_STATE)/audit.db"' \
  -DFG_DEFAULT_CONTROL='"$(FG_RUN)/fastgate.sock"'
# The same paths in the unit and the sysusers and tmpfiles snippets (share/*.in) ...
INSTALL_SED = -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@ETCDIR@|$(FG_ETC)|g' -e 's|@STATEDIR@|$(FG_STATE)|g'
# ... and in the installed fastgate.yaml, whose values show the defaults
YAML_SED = -e 's|\./routes\.d *|$(FG_ETC)/routes.d  |' \
  -e 's|\./share/models\.yaml *|$(FG_DATA)/models.yaml  |' \
  -e 's|\./share/pricing\.yaml *|$(FG_DATA)/pricing.yaml  |' \
  -e 's|\./keys/fastgate\.db *|$(FG_STATE)/fastgate.db  |' \
  -e 's|\./keys/audit\.db *|$(FG_STATE)/audit.db  |' \
  -e 's|\./fastgate\.sock *|$(FG_RUN)/fastgate.sock  |'
INSTALL_GEN = build-install/fastgated.service build-install/fastgate.sysusers \
  build-install/fastgate.tmpfiles build-install/fastgate.yaml

PKGS    := libevent libcurl yaml-0.1 sqlite3 jansson libssl libcrypto
CC      ?= cc
WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wformat=2
BASE_CFLAGS = -std=gnu11 $(WARN) -D_GNU_SOURCE -DFG_VERSION=\"$(VERSION)\" \
              -Ifastgated $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LIBS    = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -levent_pthreads -lpthread -lm

# The release build is optimised across files at link time: a request crosses a dozen small
# modules, and calls between them cost ~1,000 instructions a request (tests/bench/callgrind.sh).
REL_CFLAGS  := -O2 -g -flto=auto
TEST_CFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
# ThreadSanitizer, for the event loops (workers) and the threads beside them
TSAN_CFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=thread

# gcc-ar indexes the LTO objects' symbols (through the plugin); it archives plain ones too
FG_AR := $(shell command -v gcc-ar 2>/dev/null || echo ar)

DAEMON_SRC := $(filter-out fastgated/main.c,$(wildcard fastgated/*.c))
CLI_SRC    := $(wildcard fastgate-cli/*.c)
UNIT_SRC   := $(wildcard tests/unit/test_*.c)
HDRS       := $(wildcard fastgated/*.h fastgate-cli/*.h tests/unit/*.h)

.PHONY: all deps test-deps test unit run install install-programs clean programs test-programs bench fuzz stress soak FORCE
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
	rm -f $$@ && $(FG_AR) rcs $$@ $$^
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
$(eval $(call variant,build-tsan,$(TSAN_CFLAGS)))
$(eval $(call variant,build-install,$(REL_CFLAGS) $$(INSTALL_DEFS)))

# Rewritten only when the paths change, so a second `make install` with another PREFIX
# rebuilds what has the old paths compiled in, and an unchanged one rebuilds nothing.
build-install/paths.stamp: FORCE
	@mkdir -p $(@D)
	@echo '$(SBINDIR) $(FG_ETC) $(FG_DATA) $(FG_STATE) $(FG_RUN)' | cmp -s - $@ \
	  || echo '$(SBINDIR) $(FG_ETC) $(FG_DATA) $(FG_STATE) $(FG_RUN)' >$@
$(patsubst %.c,build-install/obj/%.o,$(DAEMON_SRC) fastgated/main.c $(CLI_SRC)): build-install/paths.stamp
build-install/fastgate.yaml: share/fastgate.yaml build-install/paths.stamp
	sed $(YAML_SED) $< >$@
build-install/%: share/%.in build-install/paths.stamp
	sed $(INSTALL_SED) $< >$@

UNIT_BINS := $(patsubst tests/unit/%.c,build-test/tests/unit/%,$(UNIT_SRC))
.SECONDARY:

test-programs: programs build-test/fastgated build-test/fastgate-cli build-test/mock-upstream $(UNIT_BINS) \
  build-tsan/fastgated build-tsan/fastgate-cli build-tsan/mock-upstream

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

install-programs: build-install/fastgated build-install/fastgate-cli $(INSTALL_GEN)

# An operator's fastgate.yaml is never overwritten: when it differs from this version's, the
# new one goes beside it as fastgate.yaml.dist. The example routes go in only when routes.d/
# does not exist yet, so a route file the operator removed does not come back.
install: deps
	@test -f man/fastgated.8 || { echo 'man pages missing' >&2; exit 1; }
	@$(MAKE) --no-print-directory install-programs
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) \
	  $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 \
	  $(DESTDIR)$(FG_DATA) $(DESTDIR)$(PREFIX)/share/bash-completion/completions \
	  $(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) \
	  $(DESTDIR)$(FG_ETC)
	install -d -m 0750 $(DESTDIR)$(FG_STATE)
	install -m 0755 build-install/fastgated $(DESTDIR)$(SBINDIR)/fastgated
	install -m 0755 build-install/fastgate-cli $(DESTDIR)$(BINDIR)/fastgate-cli
	install -m 0644 man/fastgate-cli.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 man/fastgate-routes.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 man/fastgated.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 build-install/fastgate.yaml $(DESTDIR)$(FG_DATA)/fastgate.yaml.example
	install -m 0644 share/models.yaml $(DESTDIR)$(FG_DATA)/models.yaml
	install -m 0644 share/pricing.yaml $(DESTDIR)$(FG_DATA)/pricing.yaml
	install -m 0644 share/fastgate-cli.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/fastgate-cli
	install -m 0644 build-install/fastgated.service $(DESTDIR)$(SYSTEMDUNITDIR)/fastgated.service
	install -m 0644 build-install/fastgate.sysusers $(DESTDIR)$(SYSUSERSDIR)/fastgate.conf
	install -m 0644 build-install/fastgate.tmpfiles $(DESTDIR)$(TMPFILESDIR)/fastgate.conf
	@if cmp -s build-install/fastgate.yaml $(DESTDIR)$(FG_ETC)/fastgate.yaml; then :; \
	elif [ -e $(DESTDIR)$(FG_ETC)/fastgate.yaml ]; then \
	  echo "install -m 0644 build-install/fastgate.yaml $(DESTDIR)$(FG_ETC)/fastgate.yaml.dist"; \
	  install -m 0644 build-install/fastgate.yaml $(DESTDIR)$(FG_ETC)/fastgate.yaml.dist; \
	  echo "fastgate: kept $(DESTDIR)$(FG_ETC)/fastgate.yaml; this version's is fastgate.yaml.dist beside it"; \
	else \
	  echo "install -m 0644 build-install/fastgate.yaml $(DESTDIR)$(FG_ETC)/fastgate.yaml"; \
	  install -m 0644 build-install/fastgate.yaml $(DESTDIR)$(FG_ETC)/fastgate.yaml; \
	fi
	@if [ -e $(DESTDIR)$(FG_ETC)/routes.d ]; then \
	  echo "fastgate: kept $(DESTDIR)$(FG_ETC)/routes.d/ as it is"; \
	else \
	  echo "install -d $(DESTDIR)$(FG_ETC)/routes.d"; \
	  install -d $(DESTDIR)$(FG_ETC)/routes.d && \
	  install -m 0644 routes.d/50-openai.yaml $(DESTDIR)$(FG_ETC)/routes.d/50-openai.yaml; \
	fi
	@[ -n "$(DESTDIR)" ] || printf '%s\n' \
	  "fastgate: installed. As root, create the user and the state directory, then start it:" \
	  "  systemd-sysusers $(SYSUSERSDIR)/fastgate.conf" \
	  "  systemd-tmpfiles --create $(TMPFILESDIR)/fastgate.conf" \
	  "  systemctl daemon-reload && systemctl enable --now fastgated"

clean:
	rm -rf build build-test build-tsan build-fuzz build-install
