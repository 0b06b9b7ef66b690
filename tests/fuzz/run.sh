#!/usr/bin/env bash
# Fuzzing for fastgate's parsers (libFuzzer, ASan + UBSan) and the corpus replay for make test.
#
#   tests/fuzz/run.sh fuzz [SECONDS] [TARGET...]  build build-fuzz/fuzz_* with clang, fuzz each
#                                                 target for SECONDS (default 60), then merge the
#                                                 inputs that add coverage into the corpus
#   tests/fuzz/run.sh replay [TARGET...]          build build-test/fuzz/replay_* with cc (gcc) and
#                                                 replay every corpus; closes with "N passed, N failed"
#   tests/fuzz/run.sh minimize [TARGET...]        rewrite a corpus as the smallest set covering the
#                                                 same edges (when it grows past ~200 files)
#   tests/fuzz/run.sh coverage [TARGET...]        line coverage of the modules by the corpus (llvm-cov)
#
# Targets: reqcheck routes ctlproto bodymatch sse usage h1resp reqjson anthropic messages_in pricing limit cidr
# auditblock blockrows. Corpus: tests/fuzz/corpus/TARGET/.
# A crash found while fuzzing is saved as build-fuzz/artifacts/TARGET/crash-*; once fixed,
# copy it into the corpus as crash-WHAT (minimize keeps seed-* and crash-* files) so the
# replay keeps checking it.
set -u
cd "$(dirname "$0")/../.."

ALL_TARGETS=(reqcheck routes ctlproto bodymatch sse usage h1resp reqjson anthropic messages_in pricing limit cidr
  auditblock blockrows)
FUZZ_DIR=tests/fuzz
WARN="-Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wformat=2"
BASE="-std=gnu11 -D_GNU_SOURCE -g -fno-omit-frame-pointer -Ifastgated"

die() { echo "run.sh: $*" >&2; exit 2; }

# The module sources each target links.
sources_of() {
  case $1 in
    reqcheck)  echo fastgated/reqcheck.c ;;
    routes|bodymatch)
               echo fastgated/routes.c fastgated/reqjson.c fastgated/errlist.c fastgated/util.c \
                    fastgated/pool.c fastgated/balance.c fastgated/breaker.c ;;
    ctlproto)  echo fastgated/ctlproto.c ;;
    sse|usage) echo fastgated/usage.c ;;
    h1resp)    echo fastgated/h1resp.c ;;
    reqjson)   echo fastgated/reqjson.c ;;
    anthropic) echo fastgated/anthropic.c fastgated/sseread.c ;;
    messages_in) echo fastgated/messages_in.c fastgated/sseread.c ;;
    pricing)   echo fastgated/pricing.c fastgated/errlist.c fastgated/util.c fastgated/yamlfile.c ;;
    limit)     echo fastgated/limit.c fastgated/util.c ;;
    cidr)      echo fastgated/cidr.c ;;
    auditblock) echo fastgated/auditblock.c fastgated/util.c ;;
    blockrows) echo fastgated/blockrows.c fastgated/util.c ;;
    *) die "unknown target '$1' (targets: ${ALL_TARGETS[*]})" ;;
  esac
}

# Libraries a target needs beyond pkg_flags': the audit block targets read blocks back with
# SQLite.
libs_of() {
  case $1 in
    auditblock|blockrows) echo -lsqlite3 -lm ;;
  esac
}

# Extra libFuzzer flags per target: a dictionary when there is one; larger inputs where
# the format needs room (a route or price file, an SSE stream with several events).
fuzz_flags() {
  local f="-max_len=4096"
  case $1 in routes|sse|usage|anthropic|messages_in|pricing|auditblock|blockrows) f="-max_len=16384" ;; esac
  case $1 in
    reqcheck|routes) f="$f -dict=$FUZZ_DIR/$1.dict" ;;
    h1resp)          f="$f -dict=$FUZZ_DIR/reqcheck.dict" ;;
    anthropic)       f="$f -dict=$FUZZ_DIR/anthropic.dict" ;;
    messages_in)     f="$f -dict=$FUZZ_DIR/messages_in.dict" ;;
    pricing)         f="$f -dict=$FUZZ_DIR/pricing.dict" ;;
    *)               f="$f -dict=$FUZZ_DIR/json.dict" ;;
  esac
  echo "$f"
}

pkg_flags() {
  pkg-config --cflags --libs yaml-0.1 jansson libevent libcrypto 2>/dev/null \
    || die "pkg-config cannot find yaml-0.1, jansson, libevent and libcrypto (run tests/deps.sh build)"
}

# needs_build OUT SRC...: true when OUT is missing or older than a source or header.
needs_build() {
  local out=$1; shift
  [ -x "$out" ] || return 0
  local f
  for f in "$@" fastgated/*.h "$FUZZ_DIR/fuzz.h" "$0"; do
    [ "$f" -nt "$out" ] && return 0
  done
  return 1
}

targets_from_args() {
  if [ $# -eq 0 ]; then
    printf '%s\n' "${ALL_TARGETS[@]}"
  else
    local t
    for t in "$@"; do sources_of "$t" >/dev/null; echo "$t"; done
  fi
}

build_fuzzer() {   # build_fuzzer TARGET
  local t=$1 out=build-fuzz/fuzz_$1 srcs
  srcs=$(sources_of "$t")
  # shellcheck disable=SC2086
  needs_build "$out" "$FUZZ_DIR/fuzz_$t.c" $srcs || return 0
  command -v clang >/dev/null 2>&1 \
    || die "clang is needed for fuzzing: apt-get install clang libclang-rt-dev"
  mkdir -p build-fuzz
  echo "clang fuzz_$t"
  # shellcheck disable=SC2086
  clang $BASE $WARN -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -o "$out" "$FUZZ_DIR/fuzz_$t.c" $srcs $(pkg_flags) $(libs_of "$t") \
    || die "building $out failed (libFuzzer comes with libclang-rt-dev)"
}

build_replay() {   # build_replay TARGET
  local t=$1 out=build-test/fuzz/replay_$1 srcs
  srcs=$(sources_of "$t")
  # shellcheck disable=SC2086
  needs_build "$out" "$FUZZ_DIR/fuzz_$t.c" "$FUZZ_DIR/replay.c" $srcs || return 0
  mkdir -p build-test/fuzz
  # shellcheck disable=SC2086
  ${CC:-cc} $BASE $WARN -O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined \
    -o "$out" "$FUZZ_DIR/replay.c" "$FUZZ_DIR/fuzz_$t.c" $srcs $(pkg_flags) $(libs_of "$t")
}

cmd_fuzz() {
  local secs=60
  case ${1:-} in ''|*[!0-9]*) ;; *) secs=$1; shift ;; esac
  local t rc status=0 work art
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  for t in $(targets_from_args "$@"); do
    build_fuzzer "$t"
    work=build-fuzz/corpus/$t art=build-fuzz/artifacts/$t
    mkdir -p "$work" "$art" "$FUZZ_DIR/corpus/$t"
    echo "== fuzz $t for ${secs}s"
    # New inputs go to the work dir; the checked-in corpus only gets what adds coverage.
    # shellcheck disable=SC2046
    build-fuzz/fuzz_"$t" $(fuzz_flags "$t") -max_total_time="$secs" -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$art/" \
      "$work" "$FUZZ_DIR/corpus/$t" 2>&1 | grep -E '^#[0-9]+ +DONE|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)|^(==[0-9]+==|SUMMARY|.*fuzz invariant broken|artifact_prefix|Test unit written)|INFO: Loaded|cov:.*ft:' | tail -n 12
    rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
      echo "!! fuzz $t: exit $rc; crash inputs: $(ls "$art" 2>/dev/null | tr '\n' ' ')"
      status=1
      continue
    fi
    # -use_counters=0: an input joins the checked-in corpus for a new edge, not for a new
    # hit count of a known one (that keeps it a few hundred files; the work dir keeps all)
    # shellcheck disable=SC2046
    build-fuzz/fuzz_"$t" $(fuzz_flags "$t") -use_counters=0 -merge=1 "$FUZZ_DIR/corpus/$t" "$work" 2>&1 \
      | grep -E 'MERGE-OUTER: [0-9]+ new files' || true
    echo "corpus $t: $(ls "$FUZZ_DIR/corpus/$t" | wc -l) files"
  done
  return $status
}

cmd_minimize() {
  local t tmp
  for t in $(targets_from_args "$@"); do
    build_fuzzer "$t"
    tmp=build-fuzz/min-$t
    rm -rf "$tmp" && mkdir -p "$tmp"
    # shellcheck disable=SC2046
    build-fuzz/fuzz_"$t" $(fuzz_flags "$t") -use_counters=0 -merge=1 "$tmp" "$FUZZ_DIR/corpus/$t" 2>&1 \
      | grep -E 'MERGE-OUTER: [0-9]+ new files' || die "merging $t failed"
    # keep hand-written seeds and fixed crashes (seed-*, crash-*) even when they add no coverage
    cp -p "$FUZZ_DIR"/corpus/"$t"/seed-* "$FUZZ_DIR"/corpus/"$t"/crash-* "$tmp"/ 2>/dev/null
    rm -rf "${FUZZ_DIR:?}/corpus/$t" && mv "$tmp" "$FUZZ_DIR/corpus/$t"
    echo "corpus $t: $(ls "$FUZZ_DIR/corpus/$t" | wc -l) files"
  done
}

# Line and function coverage of each target's module sources by its corpus (clang
# source-based coverage; the corpus is replayed through replay.c).
cmd_coverage() {
  local t srcs out prof
  command -v llvm-profdata >/dev/null 2>&1 && command -v llvm-cov >/dev/null 2>&1 \
    || die "coverage needs llvm-profdata and llvm-cov (apt-get install llvm)"
  mkdir -p build-fuzz/cov
  for t in $(targets_from_args "$@"); do
    srcs=$(sources_of "$t") out=build-fuzz/cov/replay_$t prof=build-fuzz/cov/$t
    # shellcheck disable=SC2086
    clang $BASE -O0 -fprofile-instr-generate -fcoverage-mapping -o "$out" \
      "$FUZZ_DIR/replay.c" "$FUZZ_DIR/fuzz_$t.c" $srcs $(pkg_flags) $(libs_of "$t") \
      || die "building $out failed"
    rm -f "$prof".profraw
    LLVM_PROFILE_FILE=$prof.profraw "$out" "$FUZZ_DIR/corpus/$t" >/dev/null 2>&1 \
      || die "replaying the $t corpus failed (run: $0 replay $t)"
    llvm-profdata merge -sparse "$prof".profraw -o "$prof".profdata || die "llvm-profdata failed"
    echo "== $t ($(ls "$FUZZ_DIR/corpus/$t" | wc -l) inputs)"
    if [ "$t" = bodymatch ]; then
      # the target reaches only the body matcher of routes.c
      llvm-cov report -show-functions "$out" -instr-profile="$prof".profdata fastgated/routes.c \
        | awk 'NR == 1 || /value_match|route_body_match/'
    else
      # shellcheck disable=SC2086
      llvm-cov report "$out" -instr-profile="$prof".profdata $srcs | grep -v -e '^---' -e '^$'
    fi
  done
}

cmd_replay() {
  local t out rc line p f total_p=0 total_f=0 log
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:exitcode=99}
  # gcc links UBSan's runtime apart from ASan's, so its deaths skip replay.c's death
  # callback; aborting instead lets replay.c's SIGABRT handler name the input
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}:abort_on_error=1"
  log=$(mktemp)
  for t in $(targets_from_args "$@"); do
    if ! build_replay "$t"; then
      echo "FAIL replay $t: build failed"
      total_f=$((total_f + 1))
      continue
    fi
    build-test/fuzz/replay_"$t" "$FUZZ_DIR/corpus/$t" >"$log" 2>&1
    rc=$?
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
    if [ "$rc" -eq 0 ] && [ -n "$line" ]; then
      p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
      echo "ok   replay $t: $line"
    else
      # the process died on one input: the ones before it passed
      cat "$log"
      p=$(sed -n 's/^replay: FAILED on .* after \([0-9]*\) passed$/\1/p' "$log" | tail -n 1)
      if [ -n "$line" ]; then
        p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
        [ "$f" -eq 0 ] && f=1
      else
        p=${p:-0} f=1
      fi
      echo "FAIL replay $t (exit $rc)"
    fi
    total_p=$((total_p + p)); total_f=$((total_f + f))
  done
  rm -f "$log"
  echo "$total_p passed, $total_f failed"
  [ "$total_f" -eq 0 ]
}

case ${1:-} in
  fuzz)     shift; cmd_fuzz "$@" ;;
  replay)   shift; cmd_replay "$@" ;;
  minimize) shift; cmd_minimize "$@" ;;
  coverage) shift; cmd_coverage "$@" ;;
  *) echo "usage: $0 fuzz [SECONDS] [TARGET...] | replay [TARGET...] | minimize [TARGET...] | coverage [TARGET...]" >&2
     exit 2 ;;
esac
