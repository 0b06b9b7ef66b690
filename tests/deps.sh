#!/usr/bin/env bash
# Make sure the build and test dependencies are present.
# Root: installs what is missing with apt-get. Otherwise: prints the exact apt-get line and fails.
# Usage: tests/deps.sh build|test|bench
set -u
mode=${1:-build}

# pkg-config module -> Debian package
pc_pkgs=(
  "libevent:libevent-dev"
  "libcurl:libcurl4-openssl-dev"
  "yaml-0.1:libyaml-dev"
  "sqlite3:libsqlite3-dev"
  "jansson:libjansson-dev"
  "libssl:libssl-dev"
  "libcrypto:libssl-dev"
)
# command -> Debian package
cmd_pkgs=("cc:gcc" "make:make" "pkg-config:pkg-config")
if [ "$mode" = test ]; then
  cmd_pkgs+=("curl:curl" "python3:python3" "node:nodejs" "npm:npm" "sqlite3:sqlite3" "groff:groff-base"
             "promtool:prometheus" "openssl:openssl" "valgrind:valgrind"
             "systemd-analyze:systemd")
fi

missing=()
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
for entry in "${cmd_pkgs[@]}"; do
  command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
done
if command -v pkg-config >/dev/null 2>&1; then
  for entry in "${pc_pkgs[@]}"; do
    pkg-config --exists "${entry%%:*}" || missing+=("${entry#*:}")
  done
else
  for entry in "${pc_pkgs[@]}"; do missing+=("${entry#*:}"); done
fi
if [ "$mode" = test ]; then
  # the sanitizer runtimes come with gcc; libasan must be linkable
  printf 'int main(void){return 0;}' | cc -x c -fsanitize=address,undefined -o /dev/null - 2>/dev/null \
    || missing+=(libasan8 libubsan1)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

# de-duplicate, keep order
readarray -t missing < <(printf '%s\n' "${missing[@]}" | awk '!seen[$0]++')
line="apt-get install -y ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "fastgate: missing build dependencies. Run as root:" >&2
  echo "  apt-get update && $line" >&2
  exit 1
fi
echo "fastgate: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || { echo "fastgate: apt-get update failed" >&2; exit 1; }
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || { echo "fastgate: '$line' failed" >&2; exit 1; }
