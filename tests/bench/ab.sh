#!/usr/bin/env bash
# Side-by-side A/B of fastgated builds against nginx, for deciding whether a change helps on
# a noisy shared machine (make bench measures one build; this compares several at once).
#
#   tests/bench/ab.sh ROUNDS SECONDS BUILD_DIR...      e.g. tests/bench/ab.sh 8 4 /tmp/old/build build
#
# Starts one mock upstream, one fastgated per BUILD_DIR (its fastgated and fastgate-cli; a
# BUILD_DIR may hold a wrapper script that sets an environment first) and nginx (1 worker,
# proxy_pass with upstream keepalive, as in run.sh), all on free 127.0.0.1 ports. Then ROUNDS
# rounds of `wrk -t2 -c64 -d SECONDS` with tests/bench/post.lua, each target once per round
# in a rotating order, and prints per target the medians over the rounds: req/s (and the
# ratio to nginx), p50/p90/p99, and CPU per request of the proxy (all its threads; of them,
# fastgated's audit writer, the thread named fg-audit), the mock, wrk and the idle time of
# the machine (from /proc); and context switches per request, voluntary/involuntary, of the
# proxy (all its threads) and of the mock; and TCP segments sent per request on the machine
# (/proc/net/snmp OutSegs: data and pure ACKs of every hop). Then, per build, the median over
# rounds of its req/s ratio and p99 difference to nginx in the same round, and in how many
# rounds its p99 was lower. Ends only the processes it started.
# Settings: AB_CONNS (64), AB_WRK_THREADS (2), AB_UPSTREAM (mock; light: the nginx answering
# from memory of run.sh's shapes A, B and E, whose CPU is then the "mock" column's).
# Needs wrk, nginx, python3, /usr/bin/time.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/bench/lib.sh
. "$ROOT/tests/bench/lib.sh"
if (( $# < 3 )); then
	sed -n '2,21p' "$0" >&2
	exit 2
fi
R=$1 S=$2
shift 2
BUILDS=("$@")
CONNS=${AB_CONNS:-64}
UPSTREAM=${AB_UPSTREAM:-mock}
[[ $UPSTREAM == mock || $UPSTREAM == light ]] ||
	{ echo "ab.sh: AB_UPSTREAM is mock or light (got '$UPSTREAM')" >&2; exit 2; }
WRK_T=${AB_WRK_THREADS:-2}
for t in wrk nginx python3 /usr/bin/time; do
	command -v "$t" >/dev/null 2>&1 || { echo "ab.sh: $t is required" >&2; exit 1; }
done
W=$(mktemp -d "${TMPDIR:-/tmp}/fastgate-ab.XXXXXX")
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT
wait_for() { # FILE REGEX SECONDS PID
	bench_wait_line "$@" && return 0
	echo "ab.sh: timed out waiting for $2 in $1" >&2
	cat "$1" >&2
	exit 1
}
cpu_of() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }   # utime+stime, all threads
audit_cpu_of() { # utime+stime of fastgated's audit writer thread (named fg-audit); 0 if none
	local t
	for t in /proc/"$1"/task/*; do
		[[ $(cat "$t/comm" 2>/dev/null) == fg-audit ]] && { awk '{ print $14 + $15 }' "$t/stat"; return; }
	done
	echo 0
}
idle_now() { awk '/^cpu / { print $5 + $6 }' /proc/stat; }
segs_now() { awk '/^Tcp: [0-9]/ { print $12 }' /proc/net/snmp; }   # TCP segments sent, all sockets
# context switches of all threads of a process: voluntary (it blocked: waiting for events,
# a lock, a sleep) and involuntary (preempted while it wanted the CPU)
switches_of() {
	cat /proc/"$1"/task/*/status 2>/dev/null |
		awk '/^voluntary_ctxt/ { v += $2 } /^nonvoluntary_ctxt/ { n += $2 } END { print v + 0, n + 0 }'
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
if [[ $UPSTREAM == light ]]; then
	# the light upstream of run.sh's shapes A, B and E: nginx answering from memory
	mport=$(free_port)
	mkdir -p "$W/light/tmp" "$W/light/logs"
	bench_light_conf "$W/light" "$mport" "" 1 20000 nginx >"$W/light/nginx.conf"
	nginx -p "$W/light" -c "$W/light/nginx.conf" -e "$W/light/logs/error.log" \
		>"$W/light/stdout" 2>&1 &
	PIDS+=($!)
	MOCKP=""
	for _ in $(seq 50); do
		MOCKP=$(pgrep -P "${PIDS[-1]}" | head -1 || true)
		[[ -n $MOCKP ]] && break
		sleep 0.1
	done
	[[ -n $MOCKP ]] || { echo "ab.sh: the light upstream did not start" >&2; exit 1; }
else
	"$ROOT/build/mock-upstream" --listen 127.0.0.1:0 >"$W/mock.out" 2>&1 &
	MOCKP=$!
	PIDS+=("$MOCKP")
	wait_for "$W/mock.out" '^listening ' 10 "$MOCKP"
	mport=$(bench_mock_port "$W/mock.out")
fi
mkdir -p "$W/routes"
bench_chat_route "$W/routes/chat.yaml" "$mport"

declare -A URL KEY PP NAME
T=()
i=0
for b in "${BUILDS[@]}"; do
	d=$W/fg$i
	mkdir -p "$d"
	# shellcheck disable=SC2046 # one event loop each, so builds with and without workers compare
	"$b/fastgated" --listen 127.0.0.1:0 --routes "$W/routes" --keys "$d/keys.db" \
		--audit "$d/audit.db" --control "$d/ctl.sock" $(bench_workers_flag "$b/fastgated" 1) \
		>"$d/out" 2>"$d/log" &
	PIDS+=($!)
	PP[fg$i]=$!
	wait_for "$d/log" 'listening on http://' 20 "${PP[fg$i]}"
	URL[fg$i]=http://127.0.0.1:$(bench_fg_port "$d/log")/v1/chat/completions
	KEY[fg$i]=$(bench_key "$b/fastgate-cli" "$d/ctl.sock" ab)
	NAME[fg$i]=$b
	T+=("fg$i")
	i=$((i + 1))
done

NP=$(free_port)
mkdir -p "$W/ngx/tmp" "$W/ngx/logs"
bench_nginx_conf "$W/ngx" "$NP" "$mport" 1 >"$W/ngx/nginx.conf"
nginx -p "$W/ngx" -c "$W/ngx/nginx.conf" -e "$W/ngx/logs/error.log" >"$W/ngx/stdout" 2>&1 &
NGP=$!
PIDS+=("$NGP")
for _ in $(seq 50); do
	PP[ngx]=$(pgrep -P "$NGP" | head -1 || true)
	[[ -n ${PP[ngx]} ]] && break
	sleep 0.1
done
[[ -n ${PP[ngx]} ]] || { echo "ab.sh: nginx did not start" >&2; cat "$W/ngx/logs/error.log" >&2; exit 1; }
URL[ngx]=http://127.0.0.1:$NP/v1/chat/completions
KEY[ngx]=none
NAME[ngx]=nginx
T=(ngx "${T[@]}")

run_wrk() { # TARGET SECONDS OUT
	BENCH_KEY=${KEY[$1]} /usr/bin/time -f "%U %S" -o "$3.time" wrk -t"$WRK_T" -c"$CONNS" -d"$2s" \
		-s "$ROOT/tests/bench/post.lua" "${URL[$1]}" >"$3" 2>&1
}
for t in "${T[@]}"; do run_wrk "$t" 2 "$W/warm"; done
for ((r = 0; r < R; r++)); do
	for ((k = 0; k < ${#T[@]}; k++)); do
		t=${T[$(( (k + r) % ${#T[@]} ))]}
		c0="$(cpu_of "${PP[$t]}") $(cpu_of "$MOCKP") $(idle_now) $(audit_cpu_of "${PP[$t]}")"
		c0+=" $(switches_of "${PP[$t]}") $(switches_of "$MOCKP") $(segs_now)"
		run_wrk "$t" "$S" "$W/w.out"
		c1="$(cpu_of "${PP[$t]}") $(cpu_of "$MOCKP") $(idle_now) $(audit_cpu_of "${PP[$t]}")"
		c1+=" $(switches_of "${PP[$t]}") $(switches_of "$MOCKP") $(segs_now)"
		python3 - "$t" "$r" "$W/w.out" "$c0" "$c1" "$(cat "$W/w.out.time")" "$(getconf CLK_TCK)" >>"$W/res" <<'PY'
import json, re, sys
t, rnd, out, a, b, w, hz = sys.argv[1:]
j = json.loads(re.search(r'BENCHJSON (\{.*\})', open(out).read()).group(1))
a = [float(x) for x in a.split()]; b = [float(x) for x in b.split()]; w = [float(x) for x in w.split()]
n = j['requests']; us = lambda ticks: ticks * 1e6 / float(hz) / n
print(t, rnd, n * 1e6 / j['duration_us'], j['p50_us'] / 1e3, j['p90_us'] / 1e3, j['p99_us'] / 1e3,
      j['err_status'] + j['err_connect'] + j['err_read'] + j['err_timeout'],
      us(b[0] - a[0]), us(b[1] - a[1]), (w[0] + w[1]) * 1e6 / n, us(b[2] - a[2]),
      us(b[3] - a[3]), *((b[k] - a[k]) / n for k in range(4, 9)))
PY
	done
done

python3 - "$W/res" "${T[@]}" <<PY
import statistics as st, sys
names = {$(for t in "${T[@]}"; do printf '"%s": "%s", ' "$t" "${NAME[$t]}"; done)}
by, rounds = {}, {}
for line in open(sys.argv[1]):
    f = line.split()
    by.setdefault(f[0], []).append([float(x) for x in f[2:]])
    rounds.setdefault(f[1], {})[f[0]] = [float(x) for x in f[2:]]
med = lambda t, k: st.median(v[k] for v in by[t])
base = med("ngx", 0)
print("medians over %d rounds of wrk -t$WRK_T -c$CONNS -d${S}s (CPU in us per request)" % len(by["ngx"]))
for t in sys.argv[2:]:
    print("%-28s %7.0f req/s %.3fx  p50 %.2f p90 %.2f p99 %.2f ms  errors %d  "
          "cpu: proxy %.1f (audit writer %.1f) mock %.1f wrk %.1f idle %.1f  "
          "switches: proxy %.3f/%.3f mock %.3f/%.3f  segments %.2f" % (
              names[t][-28:], med(t, 0), med(t, 0) / base, med(t, 1), med(t, 2), med(t, 3),
              sum(v[4] for v in by[t]), med(t, 5), med(t, 9), med(t, 6), med(t, 7), med(t, 8),
              med(t, 10), med(t, 11), med(t, 12), med(t, 13), med(t, 14)))
# Each round's runs are back to back, so a build is best judged against nginx round by
# round (the machine's speed drifts between rounds): as make bench judges its targets.
print("paired with nginx by round: median req/s ratio, median p99 difference, rounds with a lower p99")
for t in sys.argv[2:]:
    if t == "ngx":
        continue
    pairs = [(g[t][0] / g["ngx"][0], g[t][3] - g["ngx"][3]) for g in rounds.values()
             if t in g and "ngx" in g]
    if pairs:
        print("%-28s %.3fx  p99 %+.2f ms  lower in %d of %d  (p99 differences: %s)" % (
            names[t][-28:], st.median(p[0] for p in pairs), st.median(p[1] for p in pairs),
            sum(p[1] < 0 for p in pairs), len(pairs), " ".join("%+.2f" % p[1] for p in pairs)))
PY
