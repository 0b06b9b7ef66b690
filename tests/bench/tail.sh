#!/usr/bin/env bash
# Where a proxy's tail latency comes from (issue #21, item 2): fastgated and nginx side by
# side in front of the same light upstream (an nginx answering a static chat completion:
# lib.sh's bench_light_conf, as in make bench's shapes A-C), each under wrk -t1
# -c${TAIL_CONNS:-64} POST for ${TAIL_SECONDS:-6} s, alternating for ${TAIL_ROUNDS:-3} rounds. Per round and target it prints wrk's p50/p99 and req/s, CPU
# per request of the proxy (and how much of it in the kernel) and of the upstream, and, with `perf sched` (package
# linux-perf; skipped without it or without permission), each proxy thread's run time and
# its average and worst wait for a CPU while runnable during the middle 2 s. For fastgated
# it adds the gateway's own latency (head in to request done) from the audit trail, so
# that time spent inside the gateway can be told from time spent waiting to be read.
#
#   tests/bench/tail.sh [BUILD_DIR]     (default build/)
#
# TAIL_AUDIT_IDLE=1 puts fastgated's audit writer thread at SCHED_IDLE (chrt -i) first, to
# see what its competition for a CPU costs the event loop.
#
# A diagnosis, not a benchmark: perf sched costs a little, and the figures are for
# reading side by side, not for a verdict (make bench gives those).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/bench/lib.sh
. "$ROOT/tests/bench/lib.sh"
B=${1:-$ROOT/build}
SECS=${TAIL_SECONDS:-6}
CONNS=${TAIL_CONNS:-64}
ROUNDS=${TAIL_ROUNDS:-3}
for t in nginx wrk python3 sqlite3; do
	command -v "$t" >/dev/null 2>&1 || { echo "tail.sh: $t is required" >&2; exit 1; }
done
PERF=1
if ! command -v perf >/dev/null 2>&1 || ! perf sched record -o /dev/null -- true >/dev/null 2>&1; then
	PERF=0
	echo "tail.sh: no usable perf sched: the scheduling columns are left out" >&2
fi
(( SECS >= 4 )) || { echo "tail.sh: TAIL_SECONDS must be at least 4" >&2; exit 2; }
W=$(mktemp -d "${TMPDIR:-/tmp}/fastgate-tail.XXXXXX")
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null || true
	done
	rm -rf "$W"
}
trap cleanup EXIT
freeport() { python3 "$ROOT/tests/bench/bench.py" freeport; }

UP=$(freeport)
mkdir -p "$W/up/logs" "$W/up/tmp" "$W/px/logs" "$W/px/tmp" "$W/fg/routes"
bench_light_conf "$W/up" "$UP" "" 1 "$(ulimit -n)" nginx >"$W/up/nginx.conf"
PX=$(freeport)
bench_nginx_conf "$W/px" "$PX" "$UP" 1 "" nginx >"$W/px/nginx.conf"
nginx -p "$W/up" -c "$W/up/nginx.conf" -e "$W/up/logs/error.log" >"$W/up/out" 2>&1 &
PIDS+=($!)
UP_PID=$!
nginx -p "$W/px" -c "$W/px/nginx.conf" -e "$W/px/logs/error.log" >"$W/px/out" 2>&1 &
PIDS+=($!)
PX_PID=$!
bench_chat_route "$W/fg/routes/chat.yaml" "$UP"
# shellcheck disable=SC2046 # one event loop, as nginx here has one worker
"$B/fastgated" --listen 127.0.0.1:0 --routes "$W/fg/routes" --keys "$W/fg/keys.db" \
	--audit "$W/fg/audit.db" --control "$W/fg/ctl.sock" $(bench_workers_flag "$B/fastgated" 1) \
	>"$W/fg/out" 2>"$W/fg/log" &
PIDS+=($!)
FG_PID=$!
bench_wait_line "$W/fg/log" 'listening on http://' 15 "$FG_PID" || { echo "fastgated did not start" >&2; exit 1; }
FG=$(bench_fg_port "$W/fg/log")
export BENCH_KEY
BENCH_KEY=$(bench_key "$B/fastgate-cli" "$W/fg/ctl.sock" tail) || { echo "key create failed" >&2; exit 1; }
for _ in $(seq 50); do
	[[ -n $(pgrep -P "$UP_PID" || true) && -n $(pgrep -P "$PX_PID" || true) ]] && break
	sleep 0.1
done
if [[ ${TAIL_AUDIT_IDLE:-0} == 1 ]]; then
	for task in /proc/"$FG_PID"/task/*; do
		[[ $(cat "$task/comm") == fg-audit ]] && chrt -i -p 0 "${task##*/}"
	done
fi
UPW=$(pgrep -P "$UP_PID" | head -1)
PXW=$(pgrep -P "$PX_PID" | head -1)

ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
sys_ticks() { awk '{ sub(/.*\) /, ""); print $13 }' "/proc/$1/stat"; }
# run_one NAME PORT PROXY_PID: one wrk run, with perf sched over its middle 2 s
run_one() {
	local name=$1 port=$2 pp=$3 a u t0 out n b u2 lat sched="" s0 s1
	a=$(ticks "$pp"); u=$(ticks "$UPW"); s0=$(sys_ticks "$pp"); t0=$(date +%s.%N)
	wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "$ROOT/tests/bench/post.lua" \
		"http://127.0.0.1:$port/v1/chat/completions" >"$W/wrk.out" 2>&1 &
	local wp=$!
	if (( PERF )); then
		sleep $(( (SECS - 2) / 2 ))
		perf sched record -o "$W/sched.data" -- sleep 2 >/dev/null 2>&1 || true
		sched=$(perf sched latency --pids -i "$W/sched.data" 2>/dev/null |
			awk -v pid="$pp" -F'|' 'NR > 3 && $1 ~ ":" {
				split($1, t, ":"); gsub(/ /, "", t[2]);
				gsub(/ +ms/, "", $2); gsub(/ /, "", $2); gsub(/avg: *| ms/, "", $4); gsub(/max: *| ms/, "", $5);
				gsub(/ /, "", $4); gsub(/ /, "", $5); gsub(/ +$/, "", t[1]); gsub(/^ +/, "", t[1]);
				print t[1] "/" t[2] " run " $2 " ms, wait avg " $4 " max " $5 " ms" }' |
			while read -r line; do
				tid=${line%% run*}; tid=${tid##*/}
				[[ -n $tid && -e /proc/$pp/task/$tid ]] && echo "    $line"
			done || true)
	fi
	wait "$wp"
	b=$(ticks "$pp"); u2=$(ticks "$UPW"); s1=$(sys_ticks "$pp")
	out=$(cat "$W/wrk.out")
	n=$(awk '/requests in/ { print $1 }' <<<"$out")
	printf '%-9s %9s req/s  p50 %-7s p99 %-7s  cpu/req proxy %5.1f us (%.1f in the kernel), upstream %5.1f us\n' \
		"$name" "$(awk '/Requests\/sec/ { printf "%.0f", $2 }' <<<"$out")" \
		"$(awk '$1 == "50%" { print $2 }' <<<"$out")" "$(awk '$1 == "99%" { print $2 }' <<<"$out")" \
		"$(python3 -c "print(($b - $a) * 10000 / $n)")" "$(python3 -c "print(($s1 - $s0) * 10000 / $n)")" \
		"$(python3 -c "print(($u2 - $u) * 10000 / $n)")"
	if [[ $name == fastgated ]]; then
		sleep 1.5   # the audit writer's next commit
		lat=$(sqlite3 "$W/fg/audit.db" "with x as (select latency_ms l, row_number() over (order by latency_ms) rn, count(*) over () c from audit where started_at > $t0) select printf('%.2f ms, p99 %.2f ms, max %.2f ms (%d rows)', (select l from x where rn = c / 2), (select l from x where rn = c * 99 / 100), (select max(l) from x), (select count(*) from x));")
		echo "    inside the gateway (head in to done): p50 $lat"
	fi
	[[ -z $sched ]] || echo "$sched"
}

echo "tail.sh: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), wrk -t1 -c$CONNS -d${SECS}s, upstream nginx static on :$UP"
for r in $(seq "$ROUNDS"); do
	echo "round $r"
	if (( r % 2 )); then
		run_one fastgated "$FG" "$FG_PID"; run_one nginx "$PX" "$PXW"
	else
		run_one nginx "$PX" "$PXW"; run_one fastgated "$FG" "$FG_PID"
	fi
done
