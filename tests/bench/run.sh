#!/usr/bin/env bash
# fastgate benchmark suite (issue #6). Entry point of `make bench`.
#
# Measures, in one run, on 127.0.0.1 only, alternating the targets round by round:
#   1. non-stream chat completions with wrk (64 connections, 2 threads, keep-alive):
#      direct to the mock upstream (the limit), nginx (1 worker, and as many workers as
#      fastgated has loop threads) and fastgated (auth on); plus a 1-connection latency run
#   2. streams: added time to first byte over direct, inter-chunk gaps kept
#   3. 1,000 concurrent open streams through fastgated: RSS and CPU
#   4. audit rows written against requests forwarded under load (when fastgated audits)
#   5. micro: start-up with 1,000 routes + 100,000 keys; route_match and keystore_lookup
#   6. upstream pools: a pool of three upstreams against one, and one failing 10%
#   7. spend control (issue #19): the policy phase's cost of three limits on the key, key A
#      (none) and key B (three that never trip) taking turns on one fastgated
# and issue 21's shapes, each direct vs nginx (same upstream, as many workers as fastgated
# has loops) vs fastgated, in rotating rounds, judged by medians of per-round ratios:
#   8. A: light upstream (an nginx answering a static chat completion), wrk -t1 -c64:
#      req/s, p50, p99, CPU per request
#   9. B: the same at c=1: latency added over direct, p50 and p99
#  10. C: an upstream answering after 20 ms (the light nginx with Debian's echo module, else
#      the mock's X-Mock-First-Byte-Delay-Ms), c=1,000: req/s and p99
#  11. D: streams from the mock: TTFB added and inter-chunk gaps through nginx and
#      fastgated; RSS and idle CPU of each with 10,000 streams open
#  12. E: fastgated with `workers:` = cores against nginx with as many workers (skipped,
#      with a line in the table, while fastgated has no workers setting)
# and prints the tables (also written to tests/bench/RESULTS.md: sections 1-7 and 8-12 are
# two blocks of it, each replaced only by a run of all its sections).
#
# Settings (environment):
#   BENCH_SECONDS=6         seconds per throughput run
#   BENCH_LAT_SECONDS=3     seconds per 1-connection latency run (0 = skip)
#   BENCH_ROUNDS=8          alternating rounds (each target once per round); on a shared
#                           2-core machine one run of a target varies by +-10%, and the
#                           median of 3 flipped the verdict between runs of the same code.
#                           fastgated is judged against nginx round by round (bench.py
#                           report): more, shorter rounds give more pairs in the same time
#   BENCH_WARMUP_SECONDS=2  wrk warm-up per target before the rounds
#   BENCH_CONNS=64 BENCH_WRK_THREADS=2
#   BENCH_STREAMS=600       streams per side for the TTFB comparison
#   BENCH_OPEN_STREAMS=1000 concurrent streams for the memory test
#   BENCH_FG_THREADS=1      event-loop threads fastgated runs (nginx gets as many workers)
#   BENCH_ROUTES=1000 BENCH_KEYS=100000   sizes for the start-up and micro benchmarks
#   sections 8-12 (BENCH_ROUNDS, BENCH_SECONDS, BENCH_LAT_SECONDS, BENCH_WARMUP_SECONDS and
#   BENCH_STREAMS scale them too):
#   BENCH_SHAPE_CONNS=64 BENCH_SHAPE_WRK_THREADS=1   wrk of shapes A and C
#   BENCH_SLOW_CONNS=1000   connections of shape C
#   BENCH_SLOW_UPSTREAM=nginx  shape C's 20 ms upstream: nginx (echo_sleep; the mock when
#                           the echo module is missing) or mock
#   BENCH_SHAPE_STREAMS=10000  open streams of shape D (cut to what the fd limit allows)
#   BENCH_IDLE_SECONDS=5    how long shape D measures CPU with the streams open and quiet
#   BENCH_FG_WORKERS=$(nproc)  fastgated's `workers:` and nginx's workers in shape E
#   BENCH_RESULTS=tests/bench/RESULTS.md  where the tables go
#   BENCH_NO_BUILD=1        do not run `make programs` first
#   BENCH_KEEP=1            keep the work directory (logs, configs) after the run
#   BENCH_ONLY=7            run only these sections (numbers, comma- or space-separated;
#                           1 brings 4, its audit, and 2 brings 3: they measure the same
#                           fastgated). The tables are then printed; RESULTS.md gets the
#                           block of sections 1-7 only from a run of all of 1-7, and that of
#                           8-12 only from a run of all of 8-12, and keeps the other block.
#                           With BENCH_RESULTS=FILE every block a section ran in is written
# Needs wrk and nginx (installed with apt-get when run as root), python3, cc, pkg-config;
# shape C uses libnginx-mod-http-echo when it is there (also installed when root).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/bench
# shellcheck source=tests/bench/lib.sh
. "$HERE/lib.sh"
BUILD=$ROOT/build

int_setting() { # NAME DEFAULT MIN
	local v=${!1:-$2}
	if ! [[ $v =~ ^[0-9]+$ ]] || (( v < $3 )); then
		echo "run.sh: $1 must be an integer >= $3 (got '$v')" >&2
		exit 2
	fi
	printf '%s' "$v"
}
RUN_S=$(int_setting BENCH_SECONDS 6 1)
LAT_S=$(int_setting BENCH_LAT_SECONDS 3 0)
ROUNDS=$(int_setting BENCH_ROUNDS 8 1)
WARM_S=$(int_setting BENCH_WARMUP_SECONDS 2 0)
CONNS=$(int_setting BENCH_CONNS 64 1)
WRK_T=$(int_setting BENCH_WRK_THREADS 2 1)
STREAMS=$(int_setting BENCH_STREAMS 600 10)
OPEN_STREAMS=$(int_setting BENCH_OPEN_STREAMS 1000 1)
FG_THREADS=$(int_setting BENCH_FG_THREADS 1 1)
N_ROUTES=$(int_setting BENCH_ROUTES 1000 1)
N_KEYS=$(int_setting BENCH_KEYS 100000 1)
SHAPE_CONNS=$(int_setting BENCH_SHAPE_CONNS 64 1)
SHAPE_WRK_T=$(int_setting BENCH_SHAPE_WRK_THREADS 1 1)
SLOW_CONNS=$(int_setting BENCH_SLOW_CONNS 1000 1)
SHAPE_STREAMS=$(int_setting BENCH_SHAPE_STREAMS 10000 1)
IDLE_S=$(int_setting BENCH_IDLE_SECONDS 5 1)
FG_WORKERS=$(int_setting BENCH_FG_WORKERS "$(nproc)" 1)
ONLY=${BENCH_ONLY:-}
ONLY=${ONLY//[ ,]/ }
SECTIONS=" "
for n in ${ONLY:-1 2 3 4 5 6 7 8 9 10 11 12}; do
	case $n in
	1 | 4) SECTIONS+="1 4 " ;;
	2 | 3) SECTIONS+="2 3 " ;;
	5 | 6 | 7 | 8 | 9 | 10 | 11 | 12) SECTIONS+="$n " ;;
	*) echo "run.sh: BENCH_ONLY lists section numbers 1 to 12 (got '$n')" >&2; exit 2 ;;
	esac
done
want() { [[ $SECTIONS == *" $1 "* ]]; }
want_all() { local n; for n in "$@"; do want "$n" || return 1; done; }
want_any() { local n; for n in "$@"; do want "$n" && return 0; done; return 1; }
# which blocks of the results file this run replaces (bench.py report --blocks)
BLOCKS=()
if [[ -n ${BENCH_RESULTS:-} ]]; then
	RESULTS_MD=$BENCH_RESULTS
	want_any 1 2 3 4 5 6 7 && BLOCKS+=(legacy)
	want_any 8 9 10 11 12 && BLOCKS+=(shapes)
else
	RESULTS_MD=$HERE/RESULTS.md
	want_all 1 2 3 4 5 6 7 && BLOCKS+=(legacy)
	want_all 8 9 10 11 12 && BLOCKS+=(shapes)
	(( ${#BLOCKS[@]} )) || RESULTS_MD=
fi
if (( WRK_T > CONNS )); then WRK_T=$CONNS; fi

COMMAND="tests/bench/run.sh${*:+ $*}"
BENCH_ENV=$(env | grep -E '^BENCH_[A-Z_]+=' | sort | tr '\n' ' ' || true)
[[ -n $BENCH_ENV ]] && COMMAND="${BENCH_ENV}${COMMAND}"
[[ -n ${MAKELEVEL:-} ]] && COMMAND="make bench (${COMMAND})"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- tools
NGINX=$(command -v nginx || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true)
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[[ -n $NGINX ]] || ! want_any 1 8 9 10 11 12 || missing+=(nginx-light)
if (( ${#missing[@]} )); then
	if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
		log "installing ${missing[*]} (wrk nginx-light)"
		DEBIAN_FRONTEND=noninteractive apt-get install -y wrk nginx-light ||
			{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk nginx-light; } ||
			die "apt-get install -y wrk nginx-light failed"
		NGINX=$(command -v nginx || echo /usr/sbin/nginx)
	else
		echo "run.sh: missing ${missing[*]}; install them with:" >&2
		echo "  sudo apt-get install -y wrk nginx-light" >&2
		exit 1
	fi
fi
# shape C's 20 ms upstream: nginx's echo module (echo_sleep), else the mock
ECHO_SO=
case ${BENCH_SLOW_UPSTREAM:-nginx} in
nginx | mock) ;;
*) echo "run.sh: BENCH_SLOW_UPSTREAM is nginx or mock (got '$BENCH_SLOW_UPSTREAM')" >&2; exit 2 ;;
esac
if want 10 && [[ -n $NGINX && ${BENCH_SLOW_UPSTREAM:-nginx} == nginx ]]; then
	mods=$("$NGINX" -V 2>&1 | sed -n 's/.*--modules-path=\([^ ]*\).*/\1/p')
	mods=${mods:-/usr/lib/nginx/modules}
	if [[ ! -e $mods/ngx_http_echo_module.so && $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
		log "installing libnginx-mod-http-echo (shape C's 20 ms upstream)"
		DEBIAN_FRONTEND=noninteractive apt-get install -y libnginx-mod-http-echo >&2 ||
			log "apt-get install -y libnginx-mod-http-echo failed: shape C uses the mock"
	fi
	[[ -e $mods/ngx_http_echo_module.so ]] && ECHO_SO=$mods/ngx_http_echo_module.so
fi
for t in python3 cc pkg-config timeout; do
	command -v "$t" >/dev/null 2>&1 || die "$t is required (it is part of the build dependencies: make deps)"
done
# the interpreter itself, not a version-manager shim that costs ~0.4 s per call
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
PY=("$PYTHON" "$HERE/bench.py")
PKGS=(libevent libcurl yaml-0.1 sqlite3 jansson libcrypto)

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
	log "building release binaries (make programs)"
	make -s -C "$ROOT" programs >&2 || die "make programs failed"
fi
for b in fastgated fastgate-cli mock-upstream libfg.a; do
	[[ -e $BUILD/$b ]] || die "$BUILD/$b is missing; run make programs"
done

# ---------------------------------------------------------------- process bookkeeping
W=$(mktemp -d "${TMPDIR:-/tmp}/fastgate-bench.XXXXXX")
RES=$W/results.jsonl
: >"$RES"
PIDS=()
# Run a snapshot of the binaries, so a rebuild during the run cannot mix versions.
mkdir -p "$W/bin"
cp -p "$BUILD/fastgated" "$BUILD/fastgate-cli" "$BUILD/mock-upstream" "$BUILD/libfg.a" "$W/bin/"
mkdir -p "$W/bin/include"
cp -p "$ROOT"/fastgated/*.h "$W/bin/include/"
BIN_BUILT=$(date -r "$BUILD/fastgated" '+%Y-%m-%d %H:%M:%S')
BUILD=$W/bin

stop_pid() { # PID [TIMEOUT_S]: TERM, wait, KILL; sets STOP_RC (exit status, or "killed")
	local pid=$1 t=${2:-10} end
	STOP_RC=gone
	kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null && STOP_RC=0 || STOP_RC=$?; return 0; }
	kill -TERM "$pid" 2>/dev/null || true
	end=$(( ${EPOCHREALTIME/./} + t * 1000000 ))
	while (( ${EPOCHREALTIME/./} < end )); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	if kill -0 "$pid" 2>/dev/null; then
		kill -KILL "$pid" 2>/dev/null || true
		STOP_RC=killed
		wait "$pid" 2>/dev/null || true
		return 0
	fi
	STOP_RC=0
	wait "$pid" 2>/dev/null || STOP_RC=$?
}

cleanup() {
	local rc=$? pid
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do
		kill -0 "$pid" 2>/dev/null && stop_pid "$pid" 5
	done
	if [[ -n ${BENCH_KEEP:-} || $rc != 0 ]]; then
		log "work directory kept: $W"
	else
		rm -rf "$W"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_http() { # URL KEY TIMEOUT_S
	local end=$(( ${EPOCHREALTIME/./} + $3 * 1000000 ))
	while (( ${EPOCHREALTIME/./} < end )); do
		"${PY[@]}" check "$1" "$2" 2>/dev/null && return 0
		sleep 0.2
	done
	"${PY[@]}" check "$1" "$2"
}

# Sections 8-12 report in a block of their own: their notes and flags go there.
NOTE_KEY=note FLAG_KIND=flag CUR_SHAPE=
info() { # KEY VALUE
	"$PYTHON" -c 'import json,sys; print(json.dumps({"kind":"info","key":sys.argv[1],"value":sys.argv[2]}))' \
		"$1" "$2" >>"$RES"
}
note() { log "note: $1"; info "$NOTE_KEY$(printf '%02d' "$NOTE_N")" "$1"; NOTE_N=$(( NOTE_N + 1 )); }
flag() { # WHAT VALUE TARGET RESULT: a table row the script decides itself
	"$PYTHON" -c 'import json,sys; print(json.dumps(dict(zip(("kind","shape","what","value","target","result"), sys.argv[1:]))))' \
		"$FLAG_KIND" "$CUR_SHAPE" "$1" "$2" "$3" "$4" >>"$RES"
}
NOTE_N=0

# fd limit: 1,000 streams need ~2,000 fds in fastgated and 1,000 in the client and the mock;
# shape D's 10,000 need ~20,000 in each proxy. Root may raise the hard limit too.
want_fd=65536
(( 2 * SHAPE_STREAMS + 1024 > want_fd )) && want_fd=$(( 2 * SHAPE_STREAMS + 1024 ))
if ! ulimit -n "$want_fd" 2>/dev/null; then
	hard=$(ulimit -Hn)
	[[ $hard == unlimited ]] || (( hard >= want_fd )) || want_fd=$hard
	ulimit -n "$want_fd" 2>/dev/null || true
fi
nofile=$(ulimit -n)
if (( nofile < 2 * OPEN_STREAMS + 256 )); then
	OPEN_STREAMS=$(( (nofile - 256) / 2 ))
	(( OPEN_STREAMS < 1 )) && OPEN_STREAMS=1
	note "fd limit is $nofile: open-stream test reduced to $OPEN_STREAMS streams"
fi

info date "$(date '+%Y-%m-%d %H:%M:%S %Z')"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOAD_START%% *}" -v n="$(nproc)" 'BEGIN { exit !(l >= n / 2) }'; then
	note "the machine was busy when the run started (load average $LOAD_START on $(nproc) CPUs): other processes compete with the benchmark, so figures are noisier"
	info "snote$(printf '%02d' "$NOTE_N")" "the machine was busy when the run started (load average $LOAD_START on $(nproc) CPUs): other processes compete with the benchmark, so figures are noisier"
	NOTE_N=$(( NOTE_N + 1 ))
fi
info command "$COMMAND"
info conns "$CONNS"
info fg_threads "$FG_THREADS"
src=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- fastgated 2>/dev/null &&
	[[ -z $(git -C "$ROOT" status --porcelain -- fastgated 2>/dev/null) ]] || src="$src + uncommitted changes in fastgated/"
info source "git $src; binaries built $BIN_BUILT"
info tools "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), ${NGINX:+$("$NGINX" -v 2>&1 | sed 's/.*: //'), }Python $("$PYTHON" -c 'import platform; print(platform.python_version())')"
info settings "wrk -t$WRK_T -c$CONNS -d${RUN_S}s (+ -t1 -c1 -d${LAT_S}s), $ROUNDS rounds, ${WARM_S}s warm-up; $STREAMS TTFB streams per side; $OPEN_STREAMS open streams; $N_ROUTES routes, $N_KEYS keys; ulimit -n $nofile${ONLY:+; sections${SECTIONS% } only (BENCH_ONLY)}"

# ---------------------------------------------------------------- mock upstream
"$BUILD/mock-upstream" --listen 127.0.0.1:0 >"$W/mock.out" 2>"$W/mock.err" &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
bench_wait_line "$W/mock.out" '^listening ' 10 "$MOCK_PID" ||
	die "mock-upstream did not start: $(cat "$W/mock.err")"
MOCK_PORT=$(bench_mock_port "$W/mock.out")
[[ -n $MOCK_PORT ]] || die "cannot read the mock's port from: $(cat "$W/mock.out")"
log "mock-upstream pid $MOCK_PID on 127.0.0.1:$MOCK_PORT"

# ---------------------------------------------------------------- fastgated
# fastgated runs FG_THREADS event loops (nginx gets as many workers), FG_LOOPS in shape E
start_fg() { # DIR [UPSTREAM_PORT] [CONFIG_FILE]: sets FG_PID FG_PORT KEY
	local d=$1 cfg=()
	mkdir -p "$d/routes"
	bench_chat_route "$d/routes/chat.yaml" "${2:-$MOCK_PORT}"
	[[ -n ${3:-} ]] && cfg=(-c "$3")
	"$BUILD/fastgated" ${cfg[@]+"${cfg[@]}"} --listen 127.0.0.1:0 --routes "$d/routes" --keys "$d/keys.db" \
		--audit "$d/audit.db" --control "$d/ctl.sock" --workers "${FG_LOOPS:-$FG_THREADS}" \
		>"$d/stdout.log" 2>"$d/fastgated.log" &
	FG_PID=$!
	PIDS+=("$FG_PID")
	bench_wait_line "$d/fastgated.log" 'listening on http://' 15 "$FG_PID" ||
		die "fastgated did not start: $(tail -20 "$d/fastgated.log")"
	FG_PORT=$(bench_fg_port "$d/fastgated.log")
	[[ -n $FG_PORT ]] || die "cannot read fastgated's port from its log"
	KEY=$(bench_key "$BUILD/fastgate-cli" "$d/ctl.sock" bench) ||
		die "fastgate-cli key create failed"
	log "fastgated pid $FG_PID on 127.0.0.1:$FG_PORT ($(awk '/^Threads:/{print $2}' "/proc/$FG_PID/status") OS threads)"
}

stop_fg() { # DIR LABEL: SIGTERM, wait up to 30 s (drain + audit flush), note a bad exit
	local t0 t1
	t0=$(date +%s.%N)
	stop_pid "$FG_PID" 30
	t1=$(date +%s.%N)
	log "fastgated ($2) stopped: exit $STOP_RC after $("$PYTHON" -c "print('%.2f' % ($t1 - $t0))") s"
	if [[ $STOP_RC == 0 ]]; then
		flag "fastgated ($2) stops on SIGTERM" "exit 0 after $("$PYTHON" -c "print('%.2f' % ($t1 - $t0))") s" "exit 0 within 30 s" PASS
	else
		flag "fastgated ($2) stops on SIGTERM" "exit status $STOP_RC after $("$PYTHON" -c "print('%.1f' % ($t1 - $t0))") s" "exit 0 within 30 s" FAIL
	fi
	local bad
	bad=$(grep -E ' (WARN|ERROR) ' "$1/fastgated.log" | grep -v 'max_connections' | sort | uniq -c | sort -rn | head -5 || true)
	[[ -z $bad ]] || note "fastgated ($2) log warnings/errors: $(echo "$bad" | sed 's/^ *//' | cut -c1-220 | tr '\n' ';')"
}

# ---------------------------------------------------------------- nginx
NGX_PIDS=()
start_nginx() { # NAME WORKERS [UPSTREAM_PORT]: sets NGX_PORT, NGX_PID (BENCH_NGX_*: lib.sh)
	local d=$W/$1
	mkdir -p "$d/tmp" "$d/logs"
	NGX_PORT=$("${PY[@]}" freeport)
	bench_nginx_conf "$d" "$NGX_PORT" "${3:-$MOCK_PORT}" "$2" "$nofile" "$NGINX" >"$d/nginx.conf"
	"$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/logs/error.log" -t >"$d/test.log" 2>&1 ||
		die "nginx config test failed: $(cat "$d/test.log")"
	"$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/logs/error.log" >"$d/stdout.log" 2>&1 &
	NGX_PID=$!
	PIDS+=("$NGX_PID")
	NGX_PIDS+=("$NGX_PID")
	wait_http "http://127.0.0.1:$NGX_PORT/v1/chat/completions" x 10 >/dev/null ||
		die "nginx ($1) does not answer: $(tail -5 "$d/logs/error.log")"
	log "nginx $1 ($2 worker(s)) pid $NGX_PID on 127.0.0.1:$NGX_PORT"
}

# ---------------------------------------------------------------- wrk
# CPU ticks (utime + stime, all threads) of the processes serving a target: the mock for
# direct, nginx's workers, fastgated. CPU per request does not depend on how busy the
# rest of the machine is, the way req/s does.
declare -A TPIDS
cpu_ticks() { # PID...
	local t=0 pid
	for pid in "$@"; do
		t=$(( t + $(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0) ))
	done
	echo "$t"
}

run_wrk() { # TARGET URL CONNS THREADS SECONDS ROUND(-1 = warm-up); prints completed requests
	local out=$W/wrk-$1-c$3-r$6.txt c0 c1
	# shellcheck disable=SC2086
	c0=$(cpu_ticks ${TPIDS[$1]:-})
	BENCH_KEY=$KEY BENCH_MODEL=$WRK_MODEL BENCH_HEADER=$WRK_HEADER timeout $(( $5 + 30 )) wrk -t"$4" -c"$3" -d"$5"s --timeout 5s --latency \
		-s "$HERE/post.lua" "$2" >"$out" 2>&1 || die "wrk $1 failed: $(tail -5 "$out")"
	# shellcheck disable=SC2086
	c1=$(cpu_ticks ${TPIDS[$1]:-})
	"${PY[@]}" wrk "$out" --out "$RES" --target "$1" --conns "$3" --round "$6" \
		--cpu-ticks "$(( c1 - c0 ))" --clk-tck "$(getconf CLK_TCK)"
}

WRK_MODEL=mock-gpt   # the model post.lua's requests name (section 7: a priced one)
WRK_HEADER=          # one more request header ("Name: value"; section 10 on the mock)
FG_FWD=0    # requests fastgated forwarded to the mock during its runs (mock's own counter)
FG_DONE=0   # requests wrk completed through fastgated
mock_chat() { "${PY[@]}" mockstat "$MOCK_PORT"; }

bench_target() { # TARGET CONNS THREADS SECONDS ROUND
	local url=${URL[$1]} before after n
	if [[ $1 == fastgated ]]; then
		before=$(mock_chat)
		n=$(run_wrk "$1" "$url" "$2" "$3" "$4" "$5" | tail -1)
		n=${n:-0}
		sleep 0.5   # let requests the client gave up on reach the mock before counting
		after=$(mock_chat)
		FG_FWD=$(( FG_FWD + after - before ))
		FG_DONE=$(( FG_DONE + n ))
	else
		run_wrk "$1" "$url" "$2" "$3" "$4" "$5" >/dev/null
	fi
}

# ================================================================ 1. throughput
declare -A URL
if want 1; then
log "== 1. non-stream throughput and latency (wrk -t$WRK_T -c$CONNS -d${RUN_S}s, $ROUNDS rounds)"
URL[direct]=http://127.0.0.1:$MOCK_PORT/v1/chat/completions
TPIDS[direct]=$MOCK_PID
start_nginx nginx1 1
URL[nginx1]=http://127.0.0.1:$NGX_PORT/v1/chat/completions
TPIDS[nginx1]="$NGX_PID $(pgrep -P "$NGX_PID" | tr '\n' ' ')"
TARGETS=(direct nginx1)
if (( FG_THREADS != 1 )); then
	start_nginx "nginx$FG_THREADS" "$FG_THREADS"
	URL[nginx$FG_THREADS]=http://127.0.0.1:$NGX_PORT/v1/chat/completions
	TPIDS[nginx$FG_THREADS]="$NGX_PID $(pgrep -P "$NGX_PID" | tr '\n' ' ')"
	TARGETS+=("nginx$FG_THREADS")
else
	note "fastgated runs 1 event-loop thread, so nginx at equal workers is the 1-worker run"
fi
FG1=$W/fg-load
start_fg "$FG1"
URL[fastgated]=http://127.0.0.1:$FG_PORT/v1/chat/completions
TPIDS[fastgated]=$FG_PID
TARGETS+=(fastgated)
before=$(mock_chat)
wait_http "${URL[fastgated]}" "$KEY" 10 || die "fastgated does not proxy a chat completion"
FG_FWD=$(( FG_FWD + $(mock_chat) - before )); FG_DONE=$(( FG_DONE + 1 ))
info fg_os_threads "$(awk '/^Threads:/{print $2}' /proc/"$FG_PID"/status)"

if (( WARM_S > 0 )); then
	for t in "${TARGETS[@]}"; do
		log "warm-up $t (${WARM_S}s)"
		bench_target "$t" "$CONNS" "$WRK_T" "$WARM_S" -1
	done
fi
nt=${#TARGETS[@]}
for (( r = 1; r <= ROUNDS; r++ )); do
	log "round $r/$ROUNDS"
	for (( i = 0; i < nt; i++ )); do
		t=${TARGETS[$(( (i + r - 1) % nt ))]}
		bench_target "$t" "$CONNS" "$WRK_T" "$RUN_S" "$r"
		if (( LAT_S > 0 )); then
			bench_target "$t" 1 1 "$LAT_S" "$r"
		fi
	done
done

# ================================================================ 4. audit (of the load above)
log "== 4. audit rows against requests served under load"
fg_total=$("${PY[@]}" metrics "http://127.0.0.1:$FG_PORT/metrics" 2>/dev/null |
	"$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["requests_total"])' 2>/dev/null || echo -1)
stop_fg "$FG1" "load run"
"${PY[@]}" auditcount "$FG1/audit.db" --out "$RES" --forwarded "$FG_FWD" --completed "$FG_DONE" \
	--requests-total "$fg_total"
[[ $fg_total != -1 ]] && note "load run: fastgate_requests_total = $fg_total, forwarded to the mock = $FG_FWD, completed by wrk = $FG_DONE"
for pid in "${NGX_PIDS[@]}"; do
	stop_pid "$pid" 10
done
fi # sections 1 and 4

# ================================================================ 2. streams
if want 2; then
log "== 2. streams: time to first byte and inter-chunk gaps"
FG2=$W/fg-streams
start_fg "$FG2"
timeout 180 "${PY[@]}" ttfb --out "$RES" --direct-port "$MOCK_PORT" --gateway-port "$FG_PORT" \
	--key "$KEY" --n "$STREAMS" --max-seconds 120 || die "ttfb measurement failed"
timeout 120 "${PY[@]}" gaps --out "$RES" --direct-port "$MOCK_PORT" --gateway-port "$FG_PORT" \
	--key "$KEY" --n 20 --chunks 5 --delay 20 || die "gap measurement failed"

# ================================================================ 3. open streams
log "== 3. $OPEN_STREAMS concurrent open streams through fastgated"
timeout 120 "${PY[@]}" hold --out "$RES" --port "$FG_PORT" --pid "$FG_PID" --key "$KEY" \
	--n "$OPEN_STREAMS" --chunks 30 --delay 1000 --cpu-seconds 5 || die "open-stream test failed"
if timeout 20 "${PY[@]}" check "http://127.0.0.1:$FG_PORT/v1/chat/completions" "$KEY"; then
	flag "fastgated serves a request after $OPEN_STREAMS clients hung up" "200" "200" PASS
else
	flag "fastgated serves a request after $OPEN_STREAMS clients hung up" "no answer within 10 s (CPU $(ps -o pcpu= -p "$FG_PID" | tr -d ' ')%)" "200" FAIL
fi
stop_fg "$FG2" "stream runs"
fi # sections 2 and 3

# ================================================================ 6. upstream pools
# One fastgated, three routes side by side: /single (one mock), /pool (three targets on
# that same mock, under three keys: only the gateway's side changes) and /poolfail (that
# mock, a second one and a third that answers 500 to every 10th request it gets), the two
# pools retrying on 5xx. Rounds alternate the three, so the pool's cost is a per-round
# ratio against /single; the failing pool's client errors are counted by wrk (non-2xx and
# socket errors).
if want 6; then
log "== 6. upstream pools: three upstreams against one, and one failing 10% of its requests"
POOL_MOCKS=()
for n in 2 3; do
	"$BUILD/mock-upstream" --listen 127.0.0.1:0 >"$W/mock$n.out" 2>"$W/mock$n.err" &
	PIDS+=("$!")
	TPIDS[mock$n]=$!
	bench_wait_line "$W/mock$n.out" '^listening ' 10 "$!" || die "mock $n did not start"
	POOL_MOCKS+=("$(bench_mock_port "$W/mock$n.out")")
done
"$PYTHON" -c 'import http.client,sys; c=http.client.HTTPConnection("127.0.0.1",int(sys.argv[1]),timeout=5); c.request("POST","/__mock/behave",body=b"{\"fail\":\"500\",\"every\":10}"); r=c.getresponse(); sys.exit(r.status!=200)' \
	"${POOL_MOCKS[1]}" || die "cannot make mock 3 fail every 10th request"
FG6=$W/fg-pool
mkdir -p "$FG6/routes"
bench_pool_routes "$FG6/routes/pool.yaml" "$MOCK_PORT" "${POOL_MOCKS[0]}" "${POOL_MOCKS[1]}"
"$BUILD/fastgated" --listen 127.0.0.1:0 --routes "$FG6/routes" --keys "$FG6/keys.db" \
	--audit "$FG6/audit.db" --control "$FG6/ctl.sock" --workers "$FG_THREADS" \
	>"$FG6/stdout.log" 2>"$FG6/fastgated.log" &
FG_PID=$!
PIDS+=("$FG_PID")
bench_wait_line "$FG6/fastgated.log" 'listening on http://' 15 "$FG_PID" || die "fastgated (pools) did not start"
FG_PORT=$(bench_fg_port "$FG6/fastgated.log")
KEY=$(bench_key "$BUILD/fastgate-cli" "$FG6/ctl.sock" bench) || die "fastgate-cli key create failed"
for t in single pool poolfail; do
	URL[fg-$t]=http://127.0.0.1:$FG_PORT/$t/v1/chat/completions
	TPIDS[fg-$t]=$FG_PID
	wait_http "${URL[fg-$t]}" "$KEY" 10 || die "fastgated does not proxy /$t"
done
POOL_TARGETS=(fg-single fg-pool fg-poolfail)
for (( r = 1; r <= ROUNDS; r++ )); do
	log "pool round $r/$ROUNDS"
	for (( i = 0; i < 3; i++ )); do
		t=${POOL_TARGETS[$(( (i + r - 1) % 3 ))]}
		run_wrk "$t" "${URL[$t]}" "$CONNS" "$WRK_T" "$RUN_S" "$r" >/dev/null
	done
done
"$PYTHON" -c 'import json,sys,urllib.request; print(json.dumps({"kind":"poolstats","faulted":json.load(urllib.request.urlopen("http://127.0.0.1:%s/__mock/stats" % sys.argv[1]))["faulted"]}))' \
	"${POOL_MOCKS[1]}" >>"$RES" || note "cannot read mock 3's stats"
stop_fg "$FG6" "pool runs"
fi # section 6

# ================================================================ 7. spend control
# One fastgated with the price table (--pricing share/pricing.yaml) and the chat route, two
# keys: A without limits, B with the three of BENCH_SPEND_LIMITS (lib.sh: one per kind),
# which no run comes near, so each of B's requests is reserved, settled and answered with
# x-ratelimit-* headers, and none is refused. wrk's requests name gpt-4o-mini (priced) with
# max_tokens, so both keys pay for the price lookup and the estimate and B for its limits on
# top. Each round runs A and B back to back at c=$CONNS in a rotating order, then both at
# c=1 (the latency run, as in section 1); the report takes B against A round by round.
if want 7; then
log "== 7. spend control: a key with three limits against a key without"
SPEND_MODEL=gpt-4o-mini
FG7=$W/fg-spend
mkdir -p "$FG7/routes"
bench_chat_route "$FG7/routes/chat.yaml" "$MOCK_PORT"
"$BUILD/fastgated" --listen 127.0.0.1:0 --routes "$FG7/routes" --keys "$FG7/keys.db" \
	--audit "$FG7/audit.db" --control "$FG7/ctl.sock" --pricing "$ROOT/share/pricing.yaml" \
	--workers "$FG_THREADS" \
	>"$FG7/stdout.log" 2>"$FG7/fastgated.log" &
FG_PID=$!
PIDS+=("$FG_PID")
bench_wait_line "$FG7/fastgated.log" 'listening on http://' 15 "$FG_PID" ||
	die "fastgated (spend) did not start: $(tail -20 "$FG7/fastgated.log")"
FG_PORT=$(bench_fg_port "$FG7/fastgated.log")
declare -A SKEY
SKEY[spend-a]=$(bench_key "$BUILD/fastgate-cli" "$FG7/ctl.sock" spend-a) ||
	die "fastgate-cli key create failed"
SKEY[spend-b]=$(bench_key "$BUILD/fastgate-cli" "$FG7/ctl.sock" spend-b "${BENCH_SPEND_LIMITS[@]}") ||
	die "fastgate-cli key create ${BENCH_SPEND_LIMITS[*]} failed"
for t in spend-a spend-b; do
	URL[$t]=http://127.0.0.1:$FG_PORT/v1/chat/completions
	TPIDS[$t]=$FG_PID
	# the model must be priced (else B's cost limit refuses it), and only B has limits
	hdr=$("${PY[@]}" check "${URL[$t]}" "${SKEY[$t]}" --model "$SPEND_MODEL" \
		--header X-Fastgate-Cost --header x-ratelimit-limit-requests) ||
		die "fastgated (spend) does not proxy a $SPEND_MODEL request with key $t"
	{ read -r cost || true; read -r lim || true; } <<<"$hdr"
	[[ -n $cost ]] || die "no X-Fastgate-Cost on a $SPEND_MODEL answer: fastgated has no price for it ($ROOT/share/pricing.yaml)"
	if [[ $t == spend-a && -n $lim ]] || [[ $t == spend-b && $lim != 100000000 ]]; then
		die "key $t: x-ratelimit-limit-requests is '$lim'"
	fi
done
WRK_MODEL=$SPEND_MODEL
SPEND_TARGETS=(spend-a spend-b)
SPEND_B_DONE=1   # the check above
if (( WARM_S > 0 )); then
	for t in "${SPEND_TARGETS[@]}"; do
		KEY=${SKEY[$t]}
		n=$(run_wrk "$t" "${URL[$t]}" "$CONNS" "$WRK_T" "$WARM_S" -1 | tail -1)
		[[ $t == spend-b ]] && SPEND_B_DONE=$(( SPEND_B_DONE + ${n:-0} ))
	done
fi
for (( r = 1; r <= ROUNDS; r++ )); do
	log "spend round $r/$ROUNDS"
	for c in "$CONNS" 1; do
		(( c == 1 && (LAT_S == 0 || CONNS == 1) )) && continue
		for (( i = 0; i < 2; i++ )); do
			t=${SPEND_TARGETS[$(( (i + r - 1) % 2 ))]}
			KEY=${SKEY[$t]}
			if (( c == 1 )); then
				n=$(run_wrk "$t" "${URL[$t]}" 1 1 "$LAT_S" "$r" | tail -1)
			else
				n=$(run_wrk "$t" "${URL[$t]}" "$CONNS" "$WRK_T" "$RUN_S" "$r" | tail -1)
			fi
			[[ $t == spend-b ]] && SPEND_B_DONE=$(( SPEND_B_DONE + ${n:-0} ))
		done
	done
done
WRK_MODEL=mock-gpt
# key B's settled spend (a fresh key store: A is id 1, B id 2), against what it completed
spent=$("$BUILD/fastgate-cli" --socket "$FG7/ctl.sock" --json key show 2 |
	"$PYTHON" -c 'import json,sys; k=json.load(sys.stdin); print(k["name"], k["spend"]["total"]["requests"], k["spend"]["total"]["cost_usd"])') ||
	spent="? ? ?"
read -r sname sreq scost <<<"$spent"
note "spend control: key $sname (three limits) settled $sreq requests (\$$scost) against $SPEND_B_DONE that wrk and the check completed with it"
stop_fg "$FG7" "spend runs"
fi # section 7

# ================================================================ 5. micro
if want 5; then
log "== 5. start-up with $N_ROUTES routes + $N_KEYS keys; route_match, keystore_lookup"
M=$W/micro
mkdir -p "$M"
# shellcheck disable=SC2046
if cc -O2 -std=gnu11 -D_GNU_SOURCE -I "$BUILD/include" $(pkg-config --cflags "${PKGS[@]}") \
	"$HERE/micro.c" "$BUILD/libfg.a" $(pkg-config --libs "${PKGS[@]}") -levent_pthreads -lpthread -lm \
	-o "$M/micro" 2>"$M/cc.log"; then
	"${PY[@]}" genroutes "$M/routes" "$N_ROUTES" "$MOCK_PORT"
	t0=$(date +%s.%N)
	timeout 300 "$M/micro" genkeys "$M/keys.db" "$N_KEYS" "$M/secrets.txt" ||
		die "generating $N_KEYS keys failed"
	log "generated $N_KEYS keys in $("$PYTHON" -c "print('%.1f' % ($(date +%s.%N) - $t0))") s"
	timeout 300 "${PY[@]}" startup --out "$RES" --bin "$BUILD/fastgated" --routes "$M/routes" \
		--keys "$M/keys.db" --workdir "$M/run" --n 5 || die "start-up measurement failed"
	if timeout 300 "$M/micro" bench "$M/routes" "$M/keys.db" "$M/secrets.txt" >"$M/micro.json" 2>"$M/micro.err"; then
		"$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); d["kind"]="micro"; print(json.dumps(d))' \
			"$M/micro.json" >>"$RES"
		log "micro: $(cat "$M/micro.json")"
	else
		note "micro bench failed: $(tail -3 "$M/micro.err" | tr '\n' ' ')"
	fi
	[[ -s $M/micro.err ]] && note "micro: $(tail -3 "$M/micro.err" | tr '\n' ' ')"
else
	why="micro.c does not build against build/libfg.a: $(grep -m1 -E 'error' "$M/cc.log" || head -1 "$M/cc.log")"
	for w in "start-up, 1,000 routes + 100,000 keys" "route_match / keystore_lookup"; do
		"$PYTHON" -c 'import json,sys; print(json.dumps({"kind":"skip","what":sys.argv[1],"why":sys.argv[2]}))' \
			"$w" "$why" >>"$RES"
	done
	log "$why"
fi
fi # section 5

# ================================================================ 8-12. issue 21's shapes
# Each shape starts its own proxies; nginx gets as many workers as fastgated has event
# loops (1, or `workers:` in shape E) and points at the same upstream as fastgated. The
# light upstream is an nginx answering from memory (lib.sh bench_light_conf), so the proxy,
# not the upstream, is what costs. Notes and flags of these sections go to their own block.
NOTE_KEY=snote FLAG_KIND=shape_flag
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
nginx_pids() { echo "$1 $(pgrep -P "$1" | tr '\n' ' ')"; } # master + workers
shape_skip() { # SHAPE WHAT WHY: a SKIP line in the shape's table
	"$PYTHON" -c 'import json,sys; print(json.dumps(dict(zip(("kind","shape","what","why"), ["shape_skip"] + sys.argv[1:]))))' \
		"$1" "$2" "$3" >>"$RES"
	log "shape $1 skipped: $3"
}

start_light() { # NAME WORKERS [slow]: sets LIGHT_PORT, LIGHT_SLOW_PORT (20 ms; needs ECHO_SO), LIGHT_PID(S)
	local d=$W/$1 i
	mkdir -p "$d/tmp" "$d/logs"
	LIGHT_PORT=$("${PY[@]}" freeport)
	LIGHT_SLOW_PORT=
	if [[ -n ${3:-} && -n $ECHO_SO ]]; then
		for (( i = 0; i < 10; i++ )); do
			LIGHT_SLOW_PORT=$("${PY[@]}" freeport)
			[[ $LIGHT_SLOW_PORT != "$LIGHT_PORT" ]] && break
		done
	fi
	bench_light_conf "$d" "$LIGHT_PORT" "$LIGHT_SLOW_PORT" "$2" "$nofile" "$NGINX" "$ECHO_SO" >"$d/nginx.conf"
	"$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/logs/error.log" -t >"$d/test.log" 2>&1 ||
		die "light upstream: nginx config test failed: $(cat "$d/test.log")"
	"$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/logs/error.log" >"$d/stdout.log" 2>&1 &
	LIGHT_PID=$!
	PIDS+=("$LIGHT_PID")
	wait_http "http://127.0.0.1:$LIGHT_PORT/v1/chat/completions" x 10 >/dev/null ||
		die "light upstream ($1) does not answer: $(tail -5 "$d/logs/error.log")"
	if [[ -n $LIGHT_SLOW_PORT ]]; then
		wait_http "http://127.0.0.1:$LIGHT_SLOW_PORT/v1/chat/completions" x 10 >/dev/null ||
			die "light upstream ($1, 20 ms) does not answer: $(tail -5 "$d/logs/error.log")"
	fi
	LIGHT_PIDS=$(nginx_pids "$LIGHT_PID")
	log "light upstream $1 ($2 worker(s)) pid $LIGHT_PID on 127.0.0.1:$LIGHT_PORT${LIGHT_SLOW_PORT:+, 20 ms on :$LIGHT_SLOW_PORT}"
}

shape_targets() { # SHAPE DIRECT_PORT DIRECT_PIDS NGINX_PORT NGINX_PID FG_PORT FG_PID
	URL[$1-direct]=http://127.0.0.1:$2/v1/chat/completions
	TPIDS[$1-direct]=$3
	URL[$1-nginx]=http://127.0.0.1:$4/v1/chat/completions
	TPIDS[$1-nginx]=$(nginx_pids "$5")
	URL[$1-fastgated]=http://127.0.0.1:$6/v1/chat/completions
	TPIDS[$1-fastgated]=$7
	wait_http "${URL[$1-fastgated]}" "$KEY" 10 >/dev/null || die "fastgated (shape $1) does not proxy a chat completion"
	wait_http "${URL[$1-nginx]}" x 10 >/dev/null || die "nginx (shape $1) does not proxy a chat completion"
}

shape_rounds() { # CONNS THREADS SECONDS TARGET...: a warm-up of each, then ROUNDS rotating rounds
	local c=$1 th=$2 sec=$3 r i t nt
	shift 3
	local ts=("$@")
	nt=${#ts[@]}
	if (( WARM_S > 0 )); then
		for t in "${ts[@]}"; do
			run_wrk "$t" "${URL[$t]}" "$c" "$th" "$WARM_S" -1 >/dev/null
		done
	fi
	for (( r = 1; r <= ROUNDS; r++ )); do
		log "round $r/$ROUNDS"
		for (( i = 0; i < nt; i++ )); do
			t=${ts[$(( (i + r - 1) % nt ))]}
			run_wrk "$t" "${URL[$t]}" "$c" "$th" "$sec" "$r" >/dev/null
		done
	done
}

WRK_CMD="wrk --timeout 5s --latency -s tests/bench/post.lua"
if want_any 8 9 10 11 12; then
	info shape_settings "A: wrk -t$SHAPE_WRK_T -c$SHAPE_CONNS -d${RUN_S}s; B: -t1 -c1 -d${LAT_S}s; C: -t$SHAPE_WRK_T -c$SLOW_CONNS -d${RUN_S}s; E: -t$WRK_T -c$CONNS -d${RUN_S}s; $ROUNDS rounds, ${WARM_S}s warm-up per target; D: $STREAMS TTFB streams per target, $SHAPE_STREAMS open streams, ${IDLE_S}s of idle CPU; ulimit -n $nofile${ONLY:+; sections${SECTIONS% } only (BENCH_ONLY)}"
	info shape_conns_a "$SHAPE_CONNS"
	info shape_conns_c "$SLOW_CONNS"
	info shape_conns_e "$CONNS"
	if [[ -n $ECHO_SO ]] || ! want 10; then
		c_up="C: that nginx, answering after echo_sleep 0.020 (libnginx-mod-http-echo)"
	else
		c_up="C: the mock (tests/mock-upstream.c), asked for a 20 ms first-byte delay by X-Mock-First-Byte-Delay-Ms: 20 on every request"
	fi
	info shape_upstreams "A, B, E: an nginx (1 worker; E: as many as the proxies) answering POST /v1/chat/completions with a 280-byte chat completion from memory, no access log; $c_up; D: the mock (streams)"
fi
if want_any 8 9 10; then
	start_light light 1 "$(want 10 && echo slow)"
fi

# ---------------------------------------------------------------- 8, 9. A and B
if want_any 8 9; then
	log "== 8/9. shapes A and B: light upstream, c=$SHAPE_CONNS and c=1"
	CUR_SHAPE=A
	want 8 || CUR_SHAPE=B
	l0=$(loadavg)
	start_nginx ngx-ab 1 "$LIGHT_PORT"
	FGAB=$W/fg-ab
	start_fg "$FGAB" "$LIGHT_PORT"
	shape_targets A "$LIGHT_PORT" "$LIGHT_PIDS" "$NGX_PORT" "$NGX_PID" "$FG_PORT" "$FG_PID"
	for t in direct nginx fastgated; do
		URL[B-$t]=${URL[A-$t]}
		TPIDS[B-$t]=${TPIDS[A-$t]}
	done
	if want 9 && (( LAT_S == 0 )); then
		shape_skip B "latency at c=1" "BENCH_LAT_SECONDS=0"
	fi
	if (( WARM_S > 0 )); then
		for t in direct nginx fastgated; do
			run_wrk "A-$t" "${URL[A-$t]}" "$SHAPE_CONNS" "$SHAPE_WRK_T" "$WARM_S" -1 >/dev/null
		done
	fi
	ABT=(direct nginx fastgated)
	for (( r = 1; r <= ROUNDS; r++ )); do
		log "A/B round $r/$ROUNDS"
		for (( i = 0; i < 3; i++ )); do
			t=${ABT[$(( (i + r - 1) % 3 ))]}
			if want 8; then
				run_wrk "A-$t" "${URL[A-$t]}" "$SHAPE_CONNS" "$SHAPE_WRK_T" "$RUN_S" "$r" >/dev/null
			fi
			if want 9 && (( LAT_S > 0 )); then
				run_wrk "B-$t" "${URL[B-$t]}" 1 1 "$LAT_S" "$r" >/dev/null
			fi
		done
	done
	stop_fg "$FGAB" "shapes A and B"
	stop_pid "$NGX_PID" 10
	ports="PORT: the light upstream (direct), nginx, fastgated"
	info shape_cmd_8 "$WRK_CMD -t$SHAPE_WRK_T -c$SHAPE_CONNS -d${RUN_S}s http://127.0.0.1:PORT/v1/chat/completions ($ports)"
	info shape_cmd_9 "$WRK_CMD -t1 -c1 -d${LAT_S}s http://127.0.0.1:PORT/v1/chat/completions ($ports), in the same rounds as A"
	info shape_load_8 "$l0 before, $(loadavg) after (shapes A and B)"
	info shape_load_9 "$l0 before, $(loadavg) after (shapes A and B)"
fi

# ---------------------------------------------------------------- 10. C
# 1,000 clients, each request answered 20 ms late: the proxies hold ~1,000 client and
# ~1,000 upstream connections; nginx keeps as many idle upstream connections.
if want 10; then
	log "== 10. shape C: 20 ms upstream, c=$SLOW_CONNS"
	CUR_SHAPE=C
	l0=$(loadavg)
	if [[ -n $LIGHT_SLOW_PORT ]]; then
		SLOW_PORT=$LIGHT_SLOW_PORT SLOW_PIDS=$LIGHT_PIDS
	else
		SLOW_PORT=$MOCK_PORT SLOW_PIDS=$MOCK_PID
		WRK_HEADER="X-Mock-First-Byte-Delay-Ms: 20"
		if [[ ${BENCH_SLOW_UPSTREAM:-nginx} == mock ]]; then
			why="BENCH_SLOW_UPSTREAM=mock"
		else
			why="nginx's echo module (libnginx-mod-http-echo) is not installed"
		fi
		note "shape C: $why, so the 20 ms upstream is the mock (X-Mock-First-Byte-Delay-Ms: 20), whose CPU (~35 us a request) is part of every run"
	fi
	wc=$(( 2 * SLOW_CONNS + 1024 ))
	(( wc < 8192 )) && wc=8192
	BENCH_NGX_KEEPALIVE=$SLOW_CONNS BENCH_NGX_WORKER_CONNS=$wc BENCH_NGX_BACKLOG=4096 \
		start_nginx ngx-c 1 "$SLOW_PORT"
	maxc=$(( SLOW_CONNS + 1024 ))
	(( maxc < 4096 )) && maxc=4096
	FGC=$W/fg-c
	mkdir -p "$FGC"
	printf '# shape C: room for %d clients\nmax_connections: %d\n' "$SLOW_CONNS" "$maxc" >"$FGC/fastgated.yaml"
	start_fg "$FGC" "$SLOW_PORT" "$FGC/fastgated.yaml"
	shape_targets C "$SLOW_PORT" "$SLOW_PIDS" "$NGX_PORT" "$NGX_PID" "$FG_PORT" "$FG_PID"
	if (( nofile < 2 * SLOW_CONNS + 256 )); then
		note "shape C: the fd limit ($nofile) is under 2 x $SLOW_CONNS connections: expect connect errors"
	fi
	note "shape C limits: fastgated max_connections $maxc, nginx worker_connections $wc with keepalive $SLOW_CONNS to the upstream, fd limit $nofile for every process"
	shape_rounds "$SLOW_CONNS" "$SHAPE_WRK_T" "$RUN_S" C-direct C-nginx C-fastgated
	stop_fg "$FGC" "shape C"
	stop_pid "$NGX_PID" 10
	hdr=
	[[ -z $WRK_HEADER ]] || hdr="BENCH_HEADER=\"$WRK_HEADER\" "
	info shape_cmd_10 "$hdr$WRK_CMD -t$SHAPE_WRK_T -c$SLOW_CONNS -d${RUN_S}s http://127.0.0.1:PORT/v1/chat/completions (PORT: the 20 ms upstream (direct), nginx, fastgated)"
	info shape_load_10 "$l0 before, $(loadavg) after"
	WRK_HEADER=
fi
if want_any 8 9 10; then
	stop_pid "$LIGHT_PID" 10
fi

# ---------------------------------------------------------------- 11. D
# Streams come from the mock (the light upstream does not stream); nginx proxies them with
# proxy_buffering off. TTFB and gaps take turns request by request; then each proxy in turn
# holds SHAPE_STREAMS streams open, quiet after their first chunk, for RSS and idle CPU.
if want 11; then
	log "== 11. shape D: streams"
	CUR_SHAPE=D
	l0=$(loadavg)
	nd=$SHAPE_STREAMS
	if (( nofile < 2 * nd + 256 )); then
		nd=$(( (nofile - 256) / 2 ))
		(( nd < 1 )) && nd=1
		note "shape D: the fd limit is $nofile, so $nd streams are held open, not $SHAPE_STREAMS"
	fi
	info shape_streams_asked "$SHAPE_STREAMS"
	# nginx closes connections still waiting for their request once fewer than 1/16 of
	# worker_connections are free ("worker_connections are not enough, reusing
	# connections"): 2 a stream, plus that sixteenth, plus room
	wc=$(( 2 * nd * 17 / 16 + 1024 ))
	(( wc < 8192 )) && wc=8192
	BENCH_NGX_STREAM=1 BENCH_NGX_WORKER_CONNS=$wc BENCH_NGX_BACKLOG=4096 start_nginx ngx-d 1 "$MOCK_PORT"
	ND_PID=$NGX_PID ND_PORT=$NGX_PORT
	FGD=$W/fg-d
	mkdir -p "$FGD"
	printf '# shape D: room for %d streams\nmax_connections: %d\n' "$nd" $(( nd + 1024 )) >"$FGD/fastgated.yaml"
	start_fg "$FGD" "$MOCK_PORT" "$FGD/fastgated.yaml"
	shape_targets D "$MOCK_PORT" "$MOCK_PID" "$ND_PORT" "$ND_PID" "$FG_PORT" "$FG_PID"
	timeout 300 "${PY[@]}" ttfbn --out "$RES" --label D --target "direct:$MOCK_PORT" \
		--target "nginx:$ND_PORT" --target "fastgated:$FG_PORT" --key "$KEY" --n "$STREAMS" \
		--rounds "$ROUNDS" --max-seconds 240 || die "shape D: ttfb measurement failed"
	timeout 120 "${PY[@]}" gapsn --out "$RES" --label D --target "direct:$MOCK_PORT" \
		--target "nginx:$ND_PORT" --target "fastgated:$FG_PORT" --key "$KEY" --n 20 --chunks 5 \
		--delay 20 || die "shape D: gap measurement failed"
	hold_pids=()
	for p in $(nginx_pids "$ND_PID"); do hold_pids+=(--pid "$p"); done
	timeout 400 "${PY[@]}" hold --out "$RES" --kind shape_hold --label nginx --no-metrics \
		--port "$ND_PORT" "${hold_pids[@]}" --key "$KEY" --n "$nd" --chunks 2 --delay 600000 \
		--cpu-seconds "$IDLE_S" --ramp-timeout 180 || die "shape D: open streams through nginx failed"
	timeout 400 "${PY[@]}" hold --out "$RES" --kind shape_hold --label fastgated \
		--port "$FG_PORT" --pid "$FG_PID" --key "$KEY" --n "$nd" --chunks 2 --delay 600000 \
		--cpu-seconds "$IDLE_S" --ramp-timeout 180 || die "shape D: open streams through fastgated failed"
	if timeout 20 "${PY[@]}" check "http://127.0.0.1:$FG_PORT/v1/chat/completions" "$KEY"; then
		flag "fastgated serves a request after $nd stream clients hung up" "200" "200" PASS
	else
		flag "fastgated serves a request after $nd stream clients hung up" "no answer within 10 s" "200" FAIL
	fi
	stop_fg "$FGD" "shape D"
	stop_pid "$ND_PID" 10
	info shape_cmd_11 "bench.py ttfbn --target direct:MOCK --target nginx:NGINX --target fastgated:FASTGATED --n $STREAMS --rounds $ROUNDS (5-chunk streams); bench.py gapsn (the same targets) --n 20 --chunks 5 --delay 20; bench.py hold --n $nd --chunks 2 --delay 600000 --cpu-seconds $IDLE_S, through nginx, then through fastgated"
	info shape_load_11 "$l0 before, $(loadavg) after"
fi

# ---------------------------------------------------------------- 12. E
if want 12; then
	log "== 12. shape E: workers = $FG_WORKERS"
	CUR_SHAPE=E
	l0=$(loadavg)
	FGE=$W/fg-e
	mkdir -p "$FGE/check"
	printf '# shape E\nworkers: %d\n' "$FG_WORKERS" >"$FGE/fastgated.yaml"
	if ! out=$("$BUILD/fastgated" --check -c "$FGE/fastgated.yaml" --routes "$FGE/check" 2>&1); then
		if grep -q "unknown setting 'workers'" <<<"$out"; then
			why="fastgated has no workers setting yet"
		else
			why="fastgated --check refuses 'workers: $FG_WORKERS': $(grep -m1 . <<<"$out")"
		fi
		shape_skip E "workers: $FG_WORKERS (cores) against nginx with $FG_WORKERS workers" "$why"
	else
		info shape_workers "$FG_WORKERS"
		start_light light-e "$FG_WORKERS"
		start_nginx ngx-e "$FG_WORKERS" "$LIGHT_PORT"
		FG_LOOPS=$FG_WORKERS start_fg "$FGE" "$LIGHT_PORT" "$FGE/fastgated.yaml"
		shape_targets E "$LIGHT_PORT" "$LIGHT_PIDS" "$NGX_PORT" "$NGX_PID" "$FG_PORT" "$FG_PID"
		log "fastgated (workers: $FG_WORKERS) runs $(awk '/^Threads:/{print $2}' "/proc/$FG_PID/status") OS threads"
		shape_rounds "$CONNS" "$WRK_T" "$RUN_S" E-direct E-nginx E-fastgated
		stop_fg "$FGE" "shape E"
		stop_pid "$NGX_PID" 10
		stop_pid "$LIGHT_PID" 10
		info shape_cmd_12 "$WRK_CMD -t$WRK_T -c$CONNS -d${RUN_S}s http://127.0.0.1:PORT/v1/chat/completions (PORT: the light upstream with $FG_WORKERS workers (direct), nginx with $FG_WORKERS workers, fastgated with workers: $FG_WORKERS)"
		note "shape E: on $(nproc) cores wrk, the upstream and the proxy share the cores, so more workers cannot show scaling in req/s; CPU per request is the figure that compares the two"
	fi
	info shape_load_12 "$l0 before, $(loadavg) after"
fi
NOTE_KEY=note FLAG_KIND=flag CUR_SHAPE=

# ================================================================ report
info load "load average $LOAD_START at start, $(cut -d' ' -f1-3 /proc/loadavg) at the end ($(nproc) CPUs)"
log "== results"
if [[ -n $RESULTS_MD ]]; then
	mkdir -p "$(dirname "$RESULTS_MD")"
	"${PY[@]}" report --results "$RES" --md "$RESULTS_MD" --blocks "$(IFS=,; echo "${BLOCKS[*]}")"
else
	"${PY[@]}" report --results "$RES"
fi
