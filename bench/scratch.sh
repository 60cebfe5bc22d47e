# Shared set-up for the small bench scripts (sourced): a release vikingfs-mount in $BIN, a tmpfs scratch dir $W
# with a fresh root key at $W/key and a mountpoint $W/m, all torn down on exit even after an error.
#   scratch_setup NAME TMPFS_SIZE
scratch_setup() {
    cd "$(dirname "${BASH_SOURCE[1]}")/.."
    BIN=${VIKINGFS_BIN:-.build/release}
    # Always (incrementally) built: a stale release binary would measure old code.
    if [ -z "${VIKINGFS_BIN:-}" ]; then
        swift build -c release --product vikingfs-mount >/dev/null && swift build -c release --product fuse-passthrough >/dev/null
    fi
    W=$(mktemp -d "/tmp/vikingfs-$1.XXXXXX")
    mount -t tmpfs -o "size=$2" tmpfs "$W"
    trap scratch_cleanup EXIT
    mkdir -p "$W/m"
    python3 -c 'import os; print(os.urandom(32).hex())' > "$W/key"; chmod 600 "$W/key"
}

scratch_cleanup() {
    fusermount3 -u "$W/m" 2>/dev/null || true
    # The daemon may still be closing its files on the tmpfs: retry, then detach lazily.
    for _ in $(seq 1 50); do umount "$W" 2>/dev/null && break; sleep 0.1; done
    if mountpoint -q "$W"; then umount -l "$W" || true; fi
    rmdir "$W" 2>/dev/null || true
}
