#!/usr/bin/env bash
# `make run`: the mock upstream and fastgated on the bundled routes.d, a demo key, and a
# curl line that works when pasted. Ctrl-C stops both.
set -u
cd "$(dirname "$0")/.."
GW_PORT=${FASTGATE_PORT:-8514}
# The demo routes in routes.d/10-demo.yaml point at the mock on 8515; another port gets a
# copy of routes.d pointing there, in the run directory.
MOCK_PORT=${FASTGATE_MOCK_PORT:-8515}
# FASTGATE_RUN_DIR (used by the tests) keeps every file of the demo in one directory;
# by default the source tree's defaults are used: ./keys/, ./fastgate.sock, ./run/.
if [ -n "${FASTGATE_RUN_DIR:-}" ]; then
  RUN=$FASTGATE_RUN_DIR
  STORE_ARGS=(--keys "$RUN/fastgate.db" --audit "$RUN/audit.db")
  SOCK=$RUN/fastgate.sock
else
  RUN=run
  STORE_ARGS=()
  SOCK=$PWD/fastgate.sock
fi
mkdir -p "$RUN" keys

for v in GW_PORT MOCK_PORT; do
  case ${!v} in
    ''|*[!0-9]*) echo "make run: port '${!v}' is not a number (FASTGATE_PORT, FASTGATE_MOCK_PORT)" >&2; exit 1 ;;
  esac
done
if [ "$GW_PORT" = "$MOCK_PORT" ]; then
  echo "make run: the gateway and the mock cannot share port $GW_PORT" >&2
  exit 1
fi
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$GW_PORT" "$MOCK_PORT"; do
  if port_busy "$p"; then
    echo "make run: port $p on 127.0.0.1 is already in use (another fastgate or mock running?)." >&2
    echo "          Stop it, or pick free ports: FASTGATE_PORT (gateway, now $GW_PORT)," >&2
    echo "          FASTGATE_MOCK_PORT (mock upstream, now $MOCK_PORT)." >&2
    exit 1
  fi
done
ROUTES=routes.d
if [ "$MOCK_PORT" != 8515 ]; then
  ROUTES=$RUN/routes.d
  rm -rf "$ROUTES" && mkdir -p "$ROUTES"
  for f in routes.d/*.yaml; do
    sed "s#127\.0\.0\.1:8515#127.0.0.1:$MOCK_PORT#g" "$f" > "$ROUTES/$(basename "$f")"
  done
fi

pids=()
# Ctrl-C reaches the whole process group, fastgated too: a second signal from here would
# cut its drain short ("second signal: exiting now"), so only other endings send one.
cleanup() {
  trap - INT TERM EXIT
  if [ "$1" != INT ]; then
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  fi
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  echo; echo "make run: stopped."
  exit 0
}
trap 'cleanup INT' INT
trap 'cleanup TERM' TERM
trap 'cleanup EXIT' EXIT

build/mock-upstream --listen "127.0.0.1:$MOCK_PORT" > "$RUN/mock.out" 2> "$RUN/mock.log" &
pids+=($!)
# A port taken between the check above and now: say so rather than serve a dead route.
for _ in $(seq 1 50); do
  grep -q listening "$RUN/mock.out" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q listening "$RUN/mock.out" 2>/dev/null; then
  echo "make run: the mock upstream did not start on 127.0.0.1:$MOCK_PORT; see $RUN/mock.log" >&2
  exit 1
fi
# tee ignores Ctrl-C (an ignored signal stays ignored across exec): it must outlive
# fastgated to write its shutdown lines into the log
build/fastgated --listen "127.0.0.1:$GW_PORT" --control "$SOCK" --routes "$ROUTES" "${STORE_ARGS[@]}" \
  2> >(trap '' INT TERM; exec tee "$RUN/fastgated.log" >&2) &
pids+=($!)

# Wait (bounded) for the control socket to answer.
for _ in $(seq 1 100); do
  build/fastgate-cli --socket "$SOCK" status >/dev/null 2>&1 && break
  sleep 0.1
done
if ! build/fastgate-cli --socket "$SOCK" status >/dev/null 2>&1; then
  echo "make run: fastgated did not start; see $RUN/fastgated.log" >&2
  exit 1
fi

# One demo key, kept across runs in run/demo.key (the store only has its hash).
KEYFILE=$RUN/demo.key
key=""
if [ -s "$KEYFILE" ]; then
  key=$(cat "$KEYFILE")
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $key" \
         "http://127.0.0.1:$GW_PORT/v1/models")
  [ "$code" = 200 ] || key=""
fi
if [ -z "$key" ]; then
  key=$(build/fastgate-cli --socket "$SOCK" --json key create --name demo \
        | grep -o '"key": *"fg_[A-Za-z0-9]*"' | grep -o 'fg_[A-Za-z0-9]*')
  [ -n "$key" ] || { echo "make run: could not create the demo key" >&2; exit 1; }
  (umask 077; printf '%s\n' "$key" > "$KEYFILE")
fi

cat <<MSG

fastgate is running on http://127.0.0.1:$GW_PORT (mock upstream on 127.0.0.1:$MOCK_PORT).
Demo key (also in $KEYFILE): $key

Try a streaming chat completion:

  curl -N http://127.0.0.1:$GW_PORT/v1/chat/completions \\
    -H "Authorization: Bearer $key" -H "Content-Type: application/json" \\
    -d '{"model":"demo-model","stream":true,"messages":[{"role":"user","content":"Hello"}]}'

Operate it:  build/fastgate-cli --socket $SOCK key list
Ctrl-C stops both processes.
MSG
wait "${pids[1]}"
