#!/usr/bin/env bash
# Runs every test program and prints the grand total as the closing line.
# Each program prints its own "N passed, N failed" line last; this adds them up.
set -u
cd "$(dirname "$0")/.."
unit_only=0
[ "${1:-}" = "--unit-only" ] && unit_only=1

total_pass=0 total_fail=0 broken=()
run() {   # run NAME CMD...
  local name=$1; shift
  local log; log=$(mktemp)
  echo "== $name"
  timeout 600 "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local line; line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
  if [ -z "$line" ]; then
    broken+=("$name (exit $rc, no result line)"); total_fail=$((total_fail + 1))
  else
    local p f; p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
    total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
      broken+=("$name (exit $rc)"); total_fail=$((total_fail + 1))
    fi
  fi
  rm -f "$log"
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:exitcode=99}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

for t in build-test/tests/unit/test_*; do
  [ -x "$t" ] && run "unit/$(basename "$t")" "$t"
done
run "fuzz/replay" tests/fuzz/run.sh replay
run "layers" tests/layers/check.sh
run "layers/selftest" tests/layers/check.sh --selftest
if [ $unit_only -eq 0 ]; then
  for t in tests/e2e/test_*.py; do
    run "e2e/$(basename "$t")" python3 "$t"
  done
  # The suites above run with the default: one event loop per core. The shared state
  # (limits, balances, breakers, health) again with the other count: one loop on a
  # machine with several cores, two on a machine with one.
  other=1
  [ "$(nproc)" -le 1 ] && other=2
  for t in tests/e2e/test_spend.py tests/e2e/test_pools.py; do
    run "e2e/$(basename "$t") (workers $other)" env FG_WORKERS=$other python3 "$t"
  done
  # ThreadSanitizer (build-tsan) where the loops share the most (test_workers has spend
  # under concurrent load and control changes): any report fails the run
  tsan="halt_on_error=1 exitcode=66 suppressions=$PWD/tests/tsan/suppressions.txt"
  for t in tests/e2e/test_workers.py tests/e2e/test_pools.py; do
    run "e2e/$(basename "$t") (tsan, workers 2)" \
      env FG_BUILD=build-tsan FG_WORKERS=2 TSAN_OPTIONS="$tsan" python3 "$t"
  done
  run "stress/smoke" python3 tests/stress/run.py --smoke
  if [ -f tests/package.json ]; then
    run "sdk" tests/sdk/run.sh
  fi
fi

echo
for b in "${broken[@]}"; do echo "broken: $b"; done
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
