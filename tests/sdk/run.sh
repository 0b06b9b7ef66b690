#!/usr/bin/env bash
# Runs the SDK end-to-end tests (the openai and @anthropic-ai/sdk packages, sdk/*.test.mjs)
# against build-test/ (or $FG_BUILD) with node's built-in test runner, and closes with
# "N passed, N failed" from the runner's TAP summary.
# node_modules is (re)made with `npm ci` from package-lock.json when a dependency that
# package.json pins is missing or at another version.
# Exit status: 0 only if the summary was produced and nothing failed.
set -u

cd "$(dirname "$0")/.." || exit 2          # tests/
export FG_BUILD="$(cd "${FG_BUILD:-../build-test}" 2>/dev/null && pwd || echo "${FG_BUILD:-../build-test}")"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
	echo "sdk: node and npm are needed (apt-get install nodejs npm)" >&2
	echo "0 passed, 1 failed"
	exit 1
fi

# exit 0 when every dependency in package.json is installed at its pinned version
deps_installed() {
	node -e '
const fs = require("fs");
const deps = JSON.parse(fs.readFileSync("package.json", "utf8")).dependencies || {};
for (const [name, want] of Object.entries(deps)) {
	let have;
	try { have = JSON.parse(fs.readFileSync(`node_modules/${name}/package.json`, "utf8")).version; } catch { process.exit(1); }
	if (have !== want) process.exit(1);
}' 2>/dev/null
}

if ! deps_installed; then
	if ! timeout 300 npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>npm-ci.log; then
		echo "sdk: npm ci failed:" >&2
		cat npm-ci.log >&2
		rm -f npm-ci.log
		echo "0 passed, 1 failed"
		exit 1
	fi
	rm -f npm-ci.log
fi

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
timeout -k 10 "${FG_SDK_TIMEOUT:-180}" \
	node --test --test-reporter=tap sdk/openai.test.mjs sdk/anthropic.test.mjs sdk/spend.test.mjs sdk/tls.test.mjs 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}

pass="$(sed -n 's/^# pass \([0-9][0-9]*\)$/\1/p' "$out" | tail -n 1)"
fail="$(sed -n 's/^# fail \([0-9][0-9]*\)$/\1/p' "$out" | tail -n 1)"
cancelled="$(sed -n 's/^# cancelled \([0-9][0-9]*\)$/\1/p' "$out" | tail -n 1)"

if [ -z "$pass" ] || [ -z "$fail" ]; then
	[ "$rc" -eq 124 ] && echo "sdk: the test run timed out" >&2
	echo "sdk: the test runner produced no summary (exit $rc)" >&2
	echo "${pass:-0} passed, $(( ${fail:-0} + 1 )) failed"
	exit 1
fi
failed=$(( fail + ${cancelled:-0} ))
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
	echo "sdk: the test runner exited $rc with no failed test" >&2
	failed=1
fi
echo "$pass passed, $failed failed"
if [ "$failed" -ne 0 ] || [ "$rc" -ne 0 ]; then
	exit 1
fi
exit 0
