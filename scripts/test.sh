#!/usr/bin/env bash
# Runs every test: unit tests (swift test), then the integration suites that mount real file systems.
# Needs root (mounting FUSE and tmpfs). Prints one closing line: "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh || { echo "installing dependencies failed"; echo "0 passed, 1 failed"; exit 1; }

echo "== build"
if ! swift build > /tmp/vikingfs-build.log 2>&1; then
    grep -E 'error:' /tmp/vikingfs-build.log | head -20 || tail -n 20 /tmp/vikingfs-build.log
    echo "build failed"; echo; echo "0 passed, 1 failed"; exit 1
fi
tail -n 1 /tmp/vikingfs-build.log

total_passed=0
total_failed=0

echo "== unit tests (swift test)"
swift test 2>&1 | tee /tmp/vikingfs-swift-test.log | grep -E '✘|error:|failed|passed after|Executed' | tail -n 20
unit_status=${PIPESTATUS[0]}
unit_passed=$(grep -oE 'Test run with [0-9]+ tests? in [0-9]+ suites? passed' /tmp/vikingfs-swift-test.log | grep -oE '[0-9]+' | head -1)
unit_failed=$(grep -cE '^✘ Test .* (failed|recorded an issue)' /tmp/vikingfs-swift-test.log)
if [ "$unit_status" -ne 0 ]; then unit_failed=$((unit_failed > 0 ? unit_failed : 1)); fi
total_passed=$((total_passed + ${unit_passed:-0}))
total_failed=$((total_failed + unit_failed))

for suite in Tests/integration/core.sh Tests/integration/core.sh:no_writeback Tests/integration/inodes.sh Tests/integration/wire.sh Tests/integration/uring.sh Tests/integration/admin.sh Tests/integration/ove1.sh Tests/integration/providers.sh Tests/integration/interop.sh; do
    # SUITE:OPTIONS runs a suite again with extra mount options on every mount.
    options=""; case $suite in *:*) options=${suite#*:}; suite=${suite%%:*} ;; esac
    [ -f "$suite" ] || continue
    echo "== $suite${options:+ (-o $options)}"
    VIKINGFS_TEST_OPTIONS=$options bash "$suite" 2>&1 | tee /tmp/vikingfs-suite.log
    status=${PIPESTATUS[0]}
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' /tmp/vikingfs-suite.log | tail -1)
    p=$(echo "$line" | awk '{print $1}'); f=$(echo "$line" | awk '{print $3}')
    if [ -z "$line" ]; then p=0; f=1; fi
    if [ "$status" -ne 0 ] && [ "${f:-0}" -eq 0 ]; then f=1; fi
    total_passed=$((total_passed + ${p:-0}))
    total_failed=$((total_failed + ${f:-0}))
done

leftover=$(grep -E ' fuse\.vikingfs | fuse\.passthrough ' /proc/mounts | grep /tmp/vikingfs-test || true)
if [ -n "$leftover" ]; then echo "mounts left behind: $leftover"; total_failed=$((total_failed + 1)); fi

echo
echo "$total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ]
