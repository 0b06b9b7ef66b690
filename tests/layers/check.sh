#!/usr/bin/env bash
# The layer check (DESIGN.md, Architecture): every file of fastgated/ belongs to one layer,
# and includes only headers of its own layer or lower ones, so the request path cannot
# grow an include cycle again (http.c once included the proxy, the audit and the metrics,
# which included http.h back). The table below is the one place the layers are written
# down; a new file fails the check until it is given a layer here.
#
#   tests/layers/check.sh [DIR]     (default fastgated/)   closes with "N passed, N failed"
#   tests/layers/check.sh --selftest   shows that the check fails on an upward include and on
#                                      a file with no layer (a check that cannot fail is none)
set -u
cd "$(dirname "$0")/../.."
if [ "${1:-}" = --selftest ]; then
  t=$(mktemp -d); trap 'rm -rf "$t"' EXIT
  printf '#include "proxy.h"\n' >"$t/http.c"; printf '\n' >"$t/proxy.h"
  if "$0" "$t" >/dev/null; then echo "upward include not caught"; echo "0 passed, 1 failed"; exit 1; fi
  printf '\n' >"$t/http.c"; printf '\n' >"$t/nolayer.c"
  if "$0" "$t" >/dev/null; then echo "file with no layer not caught"; echo "0 passed, 1 failed"; exit 1; fi
  rm "$t/nolayer.c"
  if ! "$0" "$t" >/dev/null; then echo "a clean tree fails"; echo "0 passed, 1 failed"; exit 1; fi
  echo "3 passed, 0 failed"; exit 0
fi
dir=${1:-fastgated}

# layer number: name, then the modules (a module is NAME.c and/or NAME.h)
layers=(
  "0 base:    util bytescan log config errlist reqid httperr yamlfile cidr limit"
  "1 codec:   reqcheck h1resp usage reqjson ctlproto anthropic messages_in sseread"
  "2 io:      http connio tls transport transport_h1 transport_curl resolve"
  "3 state:   routes keys keyusage audit auditblock blockrows metrics reqdone gateway balance breaker pool models spend pricing authfail"
  "4 flow:    request proxy forward relay endpoints control logs stats health selfserve policy forwarded cors"
  "5 wiring:  main workers"
)

declare -A level name_of
for row in "${layers[@]}"; do
  n=${row%% *}; rest=${row#* }; lname=${rest%%:*}; mods=${rest#*:}
  name_of[$n]=$lname
  for m in $mods; do level[$m]=$n; done
done

pass=0 fail=0
for f in "$dir"/*.c "$dir"/*.h; do
  [ -e "$f" ] || continue
  base=$(basename "$f"); mod=${base%.*}
  if [ -z "${level[$mod]+x}" ]; then
    echo "FAIL $f: not in the layer table (tests/layers/check.sh): give it a layer"
    fail=$((fail + 1)); continue
  fi
  me=${level[$mod]} bad=0
  while IFS= read -r inc; do
    imod=${inc%.h}
    if [ -z "${level[$imod]+x}" ]; then
      echo "FAIL $f includes \"$inc\", which is in no layer"; bad=1; continue
    fi
    if [ "${level[$imod]}" -gt "$me" ]; then
      echo "FAIL $f (${name_of[$me]}) includes \"$inc\" (${name_of[${level[$imod]}]}): a lower layer must not include a higher one"
      bad=1
    fi
  done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
  if [ $bad -eq 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
