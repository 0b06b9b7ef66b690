#!/usr/bin/env bash
# Instructions per proxied request, by thread, under callgrind: the repeatable figure for
# comparing two builds on a noisy machine (callgrind counts instructions, not time).
#
#   tests/bench/callgrind.sh [BUILD_DIR]     (default: build/, i.e. `make programs`)
#
# Starts the mock upstream and fastgated (under valgrind --tool=callgrind) on free loopback
# ports, drives `wrk -t1 -c4 -d${CG_SECONDS:-10}s` with tests/bench/post.lua, stops both by
# PID and prints instructions per request: total, the audit writer thread
# (audit.c:writer_main, inclusive) and the rest (the event loop). Needs valgrind and wrk.
# That first line divides the whole run, start-up included, by the requests, so it moves
# with how many requests the run got through (start-up is ~47M instructions, ~5,000 a
# request at 10,000 requests); the second line, "after start-up", leaves out what ran
# before wrk (callgrind_control --dump on fastgated's PID once its key exists), and is the
# one to compare between runs that got through different numbers of requests.
# CG_OUT=FILE keeps the profile for callgrind_annotate / kcachegrind (the part after
# start-up; FILE.start-up the part before). CG_POOL=N (default 1)
# puts N mock upstreams behind the route as a pool (upstreams:), to weigh the pool's cost.
#
# Spend control (issue #19), the policy phase's cost of a key's limits: CG_LIMITS=0 and
# CG_LIMITS=1 send the same priced request (model gpt-4o-mini, max_tokens 64; fastgated
# gets --pricing share/pricing.yaml), under a key without limits (0) or with three that
# never trip in the run (1: requests:100000000/min, tokens:100000000000/day,
# cost:1000000/month, BENCH_SPEND_LIMITS in lib.sh). Compare the two "after start-up"
# event-loop figures:
#   CG_SECONDS=6 CG_LIMITS=0 tests/bench/callgrind.sh
#   CG_SECONDS=6 CG_LIMITS=1 tests/bench/callgrind.sh
# Unset, as before: model mock-gpt (unpriced), fastgated's default price table, no limits.
# CG_WORKERS=N (default 1) event loops: "event loop" is then all of them together.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/bench/lib.sh
. "$ROOT/tests/bench/lib.sh"
B=${1:-$ROOT/build}
SECS=${CG_SECONDS:-10}
for t in valgrind callgrind_annotate wrk python3; do
	command -v "$t" >/dev/null 2>&1 || { echo "callgrind.sh: $t is required" >&2; exit 1; }
done
W=$(mktemp -d "${TMPDIR:-/tmp}/fastgate-cg.XXXXXX")
MP="" FP=""
cleanup() {
	[[ -n $FP ]] && kill "$FP" 2>/dev/null && wait "$FP" 2>/dev/null
	local p
	for p in $MP; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
	rm -rf "$W"
}
trap cleanup EXIT

wait_for() { # FILE REGEX SECONDS PID
	bench_wait_line "$@" && return 0
	echo "callgrind.sh: timed out waiting for $2 in $1" >&2
	cat "$1" >&2
	exit 1
}

POOL=${CG_POOL:-1}
LIMITS=${CG_LIMITS:-}
case $LIMITS in
'') MODEL=mock-gpt; FG_PRICING=(); KEY_LIMITS=() ;;
0) MODEL=gpt-4o-mini; FG_PRICING=(--pricing "$ROOT/share/pricing.yaml"); KEY_LIMITS=() ;;
1)
	MODEL=gpt-4o-mini
	FG_PRICING=(--pricing "$ROOT/share/pricing.yaml")
	KEY_LIMITS=("${BENCH_SPEND_LIMITS[@]}")
	;;
*) echo "callgrind.sh: CG_LIMITS must be 0 or 1 (got '$LIMITS')" >&2; exit 2 ;;
esac
for (( i = 0; i < POOL; i++ )); do
	"$B/mock-upstream" --listen 127.0.0.1:0 >"$W/mock$i.out" 2>&1 &
	MP="$MP $!"
	wait_for "$W/mock$i.out" '^listening ' 10 "$!"
done
mkdir -p "$W/routes"
if (( POOL == 1 )); then
	bench_chat_route "$W/routes/chat.yaml" "$(bench_mock_port "$W/mock0.out")"
else
	{
		printf 'routes:\n  - name: chat\n    match: { path: /v1/chat/completions, methods: [POST] }\n    upstreams:\n'
		for (( i = 0; i < POOL; i++ )); do
			printf '      - { url: http://127.0.0.1:%s/v1/chat/completions, api_key: upstream-key }\n' \
				"$(bench_mock_port "$W/mock$i.out")"
		done
	} >"$W/routes/chat.yaml"
fi
# One event loop (CG_WORKERS to change it), so that builds with and without workers compare.
FG_WORKERS=()
if "$B/fastgated" --help 2>&1 | grep -q -- --workers; then
	FG_WORKERS=(--workers "${CG_WORKERS:-1}")
fi
valgrind --tool=callgrind --callgrind-out-file="$W/cg.out" "$B/fastgated" --listen 127.0.0.1:0 \
	--routes "$W/routes" --keys "$W/keys.db" --audit "$W/audit.db" --control "$W/ctl.sock" \
	${FG_PRICING[@]+"${FG_PRICING[@]}"} ${FG_WORKERS[@]+"${FG_WORKERS[@]}"} >"$W/fg.out" 2>"$W/fg.log" &
FP=$!
wait_for "$W/fg.log" 'listening on http://' 60 "$FP"
fport=$(bench_fg_port "$W/fg.log")
key=$(bench_key "$B/fastgate-cli" "$W/ctl.sock" callgrind ${KEY_LIMITS[@]+"${KEY_LIMITS[@]}"})
# start-up so far into cg.out.1, counters zeroed: cg.out gets the requests (and the exit)
split=1
callgrind_control --dump=start-up "$FP" >"$W/cgctl.out" 2>&1 && [[ -s $W/cg.out.1 ]] || {
	echo "callgrind.sh: callgrind_control --dump $FP failed, no after-start-up figure: $(tail -2 "$W/cgctl.out")" >&2
	split=0
}
BENCH_KEY=$key BENCH_MODEL=$MODEL wrk -t1 -c4 -d"${SECS}s" -s "$ROOT/tests/bench/post.lua" \
	"http://127.0.0.1:$fport/v1/chat/completions" >"$W/wrk.out" 2>&1
n=$(grep -o '"requests":[0-9]*' "$W/wrk.out" | cut -d: -f2)
non2xx=$(grep -o '"err_status":[0-9]*' "$W/wrk.out" | cut -d: -f2)
if [[ ${non2xx:-0} != 0 ]]; then
	echo "callgrind.sh: $non2xx of $n answers were not 2xx (a limit refused them?): the count is not of proxied requests" >&2
	exit 1
fi
kill "$FP"
wait "$FP" 2>/dev/null || true
FP=""
cg_total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'; }
cg_writer() {
	callgrind_annotate --inclusive=yes "$1" 2>/dev/null |
		awk '/audit.c:writer_main/ && !done { gsub(",", "", $1); print $1; done = 1 }'
}
run_total=$(cg_total "$W/cg.out") run_writer=$(cg_writer "$W/cg.out")
run_writer=${run_writer:-0}
total=$run_total writer=$run_writer
if (( split )); then
	start_writer=$(cg_writer "$W/cg.out.1")
	total=$(( total + $(cg_total "$W/cg.out.1") )) writer=$(( writer + ${start_writer:-0} ))
fi
echo "requests $n (wrk -t1 -c4 -d${SECS}s through $B/fastgated under callgrind; model $MODEL, key limits: ${KEY_LIMITS[*]:-none})"
if [[ -n ${CG_OUT:-} ]]; then
	cp "$W/cg.out" "$CG_OUT"
	if (( split )); then cp "$W/cg.out.1" "$CG_OUT.start-up"; fi
fi
echo "instructions per request: total $(( total / n )), audit writer $(( writer / n )), event loop $(( (total - writer) / n ))"
if (( split )); then
	echo "after start-up: total $(( run_total / n )), audit writer $(( run_writer / n )), event loop $(( (run_total - run_writer) / n ))"
fi
