# Shared helpers for the integration suites: a tmpfs scratch area, mounts that are always unmounted,
# and pass/fail bookkeeping. Source it; call `finish` last.
set -u
set -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${VIKINGFS_BIN:-$REPO/.build/debug}
SHARED=${VIKINGFS_SHARED:-$REPO/../shared}
VECTORS=$SHARED/vectors/ove1
REF="python3 $REPO/Tests/integration/vikingfs_ref.py"

PASSED=0
FAILED=0
FAILED_NAMES=()

SCRATCH=$(mktemp -d /tmp/vikingfs-test.XXXXXX)
mount -t tmpfs -o size=2g tmpfs "$SCRATCH"
touch -d '1 minute ago' "$SCRATCH/.started"

cleanup() {
    # Unmount every FUSE mount below the scratch area, then the tmpfs itself, whatever state the test left.
    local m
    for m in $(awk -v s="$SCRATCH" '$2 ~ "^"s {print $2}' /proc/mounts | sort -r); do
        [ "$m" = "$SCRATCH" ] && continue
        fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    local pid
    for pid in $(pgrep -f "vikingfs-mount $SCRATCH" 2>/dev/null); do kill "$pid" 2>/dev/null; done
    umount "$SCRATCH" 2>/dev/null || umount -l "$SCRATCH" 2>/dev/null
    rmdir "$SCRATCH" 2>/dev/null
}
trap cleanup EXIT

log() { printf '  %s\n' "$*"; }

# check NAME COMMAND...: runs the command, records pass or fail with its output on failure.
check() {
    local name=$1; shift
    local out
    if out=$("$@" 2>&1); then
        PASSED=$((PASSED + 1)); printf 'ok   %s\n' "$name"
    else
        FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name"); printf 'FAIL %s\n%s\n' "$name" "$(printf '%s' "$out" | tail -n 20 | sed 's/^/     /')"
    fi
}

# expect_fail NAME COMMAND...: the command must fail.
expect_fail() {
    local name=$1; shift
    if "$@" >/dev/null 2>&1; then
        FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name"); printf 'FAIL %s (succeeded, should have failed)\n' "$name"
    else
        PASSED=$((PASSED + 1)); printf 'ok   %s\n' "$name"
    fi
}

new_key() { # new_key PATH: a fresh 64-hex root key, mode 0600
    python3 -c 'import os; print(os.urandom(32).hex())' > "$1"; chmod 600 "$1"
}

# viking_mount BACKING MOUNTPOINT [options]: mounts in the foreground in the background, logging to
# MOUNTPOINT.log, and waits until the mount is live.
viking_mount() {
    local backing=$1 mnt=$2; shift 2
    mkdir -p "$backing" "$mnt"
    # VIKINGFS_TEST_OPTIONS adds mount options to every test mount (e.g. writeback, to run a suite with it).
    "$BIN/vikingfs-mount" "$backing" "$mnt" -f "$@" ${VIKINGFS_TEST_OPTIONS:+-o "$VIKINGFS_TEST_OPTIONS"} >"$mnt.log" 2>&1 &
    echo $! > "$mnt.pid"
    local i
    for i in $(seq 1 400); do
        if grep -q " $mnt fuse" /proc/mounts; then return 0; fi
        if ! kill -0 $! 2>/dev/null; then cat "$mnt.log" >&2; return 1; fi
        sleep 0.05
    done
    cat "$mnt.log" >&2
    return 1
}

viking_umount() {
    local mnt=$1 i
    fusermount3 -u "$mnt" || return 1
    for i in $(seq 1 400); do pgrep -f "vikingfs-mount .* $mnt -f" >/dev/null || return 0; sleep 0.05; done
}

tree_manifest() { # tree_manifest DIR: path, type, mode and content hash of everything below DIR
    (cd "$1" && find . -mindepth 1 -printf '%P %y %m %s %l\n' | LC_ALL=C sort && \
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum)
}

finish() {
    echo
    if [ "$FAILED" -gt 0 ]; then
        printf 'failed: %s\n' "${FAILED_NAMES[@]}"
        # The daemons' last words (a crash message says more than "transport endpoint is not connected").
        local f
        for f in $(find "$SCRATCH" -maxdepth 3 -name '*.log' -newer "$SCRATCH/.started" 2>/dev/null); do
            printf -- '--- last lines of %s\n' "$f"; tail -n 15 "$f" | sed 's/^/     /'
        done
    fi
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}
