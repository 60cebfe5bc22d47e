#!/usr/bin/env bash
# The main job on an embedded default: a fresh local root key, a scratch AGFS-like backing dir with two
# accounts and a legacy file, mounted; prints what applications see and what the disk holds; unmounts.
# Needs root (FUSE). Leaves nothing mounted. Set KEEP=1 to keep the scratch dir.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift build 2>&1 | tail -n 1
BIN=.build/debug

WORK=$(mktemp -d /tmp/vikingfs-demo.XXXXXX)
BACKING=$WORK/backing MNT=$WORK/mnt KEY=$WORK/root.key
mkdir -p "$BACKING/acme/resources" "$MNT"
cleanup() { fusermount3 -u "$MNT" 2>/dev/null || true; [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT

echo "legacy notes written before encryption" > "$BACKING/acme/resources/legacy.md"
"$BIN/vikingfs" init-key --key-file "$KEY"
"$BIN/vikingfs-mount" "$BACKING" "$MNT" -o root_key_file="$KEY"

mkdir -p "$MNT/globex/resources" "$MNT/_system"
echo "# Acme roadmap: launch the rocket skates" > "$MNT/acme/resources/doc.md"
echo '{"users":{"alice":{"role":"admin"}}}' > "$MNT/globex/resources/users.json"
echo '{"accounts":["acme","globex"]}' > "$MNT/_system/accounts.json"

echo; echo "=== what applications see at $MNT"
(cd "$MNT" && find . -type f | sort | while read -r f; do printf '%-32s %s\n' "$f" "$(head -c 60 "$f")"; done)
echo; echo "=== what the disk holds at $BACKING"
(cd "$BACKING" && find . -type f | sort | while read -r f; do
    printf '%-32s %5s bytes  %-4s %s...\n' "$f" "$(stat -c %s "$f")" "$(head -c 4 "$f" | tr -c '[:print:]' '.')" "$(head -c 28 "$f" | tail -c 24 | xxd -p | tr -d '\n')"
done)
echo; echo "(VKFS... = vikingfs native format, OVE1... = OpenViking envelope; legacy.md stays plaintext and read-only"
echo " until 'vikingfs seal'. Each account's files are sealed under its own key.)"
