#!/usr/bin/env bash
# Regenerates the OpenViking interop evidence in Tests/interop/ (issue 3, "Both directions, tested").
# Developer-run, NOT run by CI: it installs the heavy `openviking` package from PyPI into a venv under /tmp.
# CI checks the committed outputs with Tests/integration/interop.sh, without OpenViking.
#
#   sudo bash Tests/interop/make_evidence.sh          (needs root or FUSE access, python3 with venv)
#
# Environment:
#   VIKINGFS_BIN        directory holding vikingfs-mount (default: .build/debug, built if missing)
#   OPENVIKING_VENV     venv to use or create (default: /tmp/vikingfs-openviking-venv)
#   OPENVIKING_VERSION  pin a version (default: the newest on PyPI)
#
# It produces (commit all of them):
#   vikingfs-ove1/              backing files written by vikingfs -o format=ove1 with root.key
#   openviking-verdict.json     OpenViking's FileEncryptor opening every one of them: hashes, sizes, match
#   openviking-made/            files sealed by OpenViking's FileEncryptor with root.key
#   openviking-made.json        their plaintext hashes
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${VIKINGFS_BIN:-$REPO/.build/debug}
VENV=${OPENVIKING_VENV:-/tmp/vikingfs-openviking-venv}
PKG="openviking${OPENVIKING_VERSION:+==$OPENVIKING_VERSION}"

if [ ! -x "$BIN/vikingfs-mount" ]; then
    echo "== building vikingfs-mount"
    (cd "$REPO" && swift build --product vikingfs-mount)
fi

echo "== python venv with $PKG ($VENV)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet "$PKG"
PY="$VENV/bin/python"
OV_VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("openviking"))')
echo "openviking $OV_VERSION"

WORK=$(mktemp -d /tmp/vikingfs-interop.XXXXXX)
B=$WORK/backing
M=$WORK/mnt
KEY=$WORK/root.key
MOUNT_PID=
cleanup() {
    if grep -q " $M fuse" /proc/mounts 2>/dev/null; then fusermount3 -u "$M" || umount -l "$M"; fi
    [ -n "$MOUNT_PID" ] && kill "$MOUNT_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# Git does not keep file modes; vikingfs-mount wants the key file 0600.
install -m 600 "$HERE/root.key" "$KEY"
mkdir -p "$B" "$M"

mount_ove1() {
    "$BIN/vikingfs-mount" "$B" "$M" -f -o "root_key_file=$KEY,format=ove1" >>"$WORK/mount.log" 2>&1 &
    MOUNT_PID=$!
    for _ in $(seq 1 200); do
        grep -q " $M fuse" /proc/mounts && return 0
        kill -0 "$MOUNT_PID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$WORK/mount.log" >&2
    echo "vikingfs-mount did not come up" >&2
    exit 1
}
unmount() {
    fusermount3 -u "$M"
    wait "$MOUNT_PID" || { cat "$WORK/mount.log" >&2; echo "vikingfs-mount exited with an error" >&2; exit 1; }
    MOUNT_PID=
}

echo "== writing the evidence set through vikingfs-mount -o format=ove1"
mount_ove1
python3 "$HERE/vikingfs_writer.py" write "$M" "$WORK/manifest.json"
unmount

echo "== an OpenViking-sealed file, rewritten through vikingfs"
HYBRID=acme/resources/ov-sealed-then-vikingfs-rewritten.md
"$PY" "$HERE/openviking_check.py" seal-into "$KEY" "$B" "$WORK/manifest.json" "$HYBRID"
mount_ove1
python3 "$HERE/vikingfs_writer.py" rewrite "$M" "$WORK/manifest.json" "$HYBRID"
unmount

echo "== copying the backing files into Tests/interop/vikingfs-ove1"
rm -rf "$HERE/vikingfs-ove1"
cp -a "$B" "$HERE/vikingfs-ove1"

COMMIT=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$REPO" status --porcelain -- Sources Package.swift 2>/dev/null)" ]; then COMMIT="$COMMIT+uncommitted-changes"; fi
META=(--meta "vikingfs_version=$("$BIN/vikingfs-mount" -V 2>&1 | head -n 1)"
      --meta "vikingfs_commit=$COMMIT"
      --meta "vikingfs_mount_options=-o root_key_file=Tests/interop/root.key,format=ove1"
      --meta "produced_by=Tests/interop/make_evidence.sh")

echo "== opening every vikingfs-written file with OpenViking's FileEncryptor"
status=0
"$PY" "$HERE/openviking_check.py" check "$KEY" "$HERE/vikingfs-ove1" "$WORK/manifest.json" \
    "$HERE/openviking-verdict.json" "${META[@]}" || status=1

echo "== sealing the OpenViking-made set"
rm -rf "$HERE/openviking-made"
"$PY" "$HERE/openviking_check.py" make "$KEY" "$HERE/openviking-made" "$HERE/openviking-made.json" \
    --meta "produced_by=Tests/interop/make_evidence.sh" || status=1

echo
if [ "$status" -eq 0 ]; then
    echo "evidence regenerated with openviking $OV_VERSION; run: bash Tests/integration/interop.sh"
else
    echo "OpenViking did NOT open every vikingfs file as expected: see Tests/interop/openviking-verdict.json" >&2
fi
exit "$status"
