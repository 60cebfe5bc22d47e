#!/usr/bin/env bash
# Admin commands at scale: 100,000 legacy files in 3 accounts: time seal, fsck, rotate-root-key, fsck again (release build, tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."; BIN=${VIKINGFS_BIN:-.build/release}; [ -x "$BIN/vikingfs" ] || swift build -c release --product vikingfs >/dev/null
W=$(mktemp -d /tmp/scale.XXXXXX); mount -t tmpfs -o size=4g tmpfs "$W"; trap 'umount "$W"; rmdir "$W"' EXIT
python3 - "$W/b" <<'PY'
import os, sys
root = sys.argv[1]
n = 0
for account in ("acme", "globex", "_system"):
    for d in range(100):
        path = os.path.join(root, account, "dir%03d" % d)
        os.makedirs(path)
        for f in range(334):
            if n == 100000: break
            with open(os.path.join(path, "f%04d.md" % f), "w") as fh:
                fh.write(("legacy line %d of %s\n" % (n, account)) * (1 + n % 20))
            n += 1
print(n, "files")
PY
"$BIN/vikingfs" init-key --key-file "$W/k1" >/dev/null; "$BIN/vikingfs" init-key --key-file "$W/k2" >/dev/null
s=$(date +%s.%N); "$BIN/vikingfs" seal "$W/b" --key-file "$W/k1" --quiet; echo "seal: $(echo "$(date +%s.%N) - $s" | bc) s"
s=$(date +%s.%N); "$BIN/vikingfs" fsck "$W/b" --key-file "$W/k1" --quiet; echo "fsck: rc=$? $(echo "$(date +%s.%N) - $s" | bc) s"
s=$(date +%s.%N); "$BIN/vikingfs" rotate-root-key "$W/b" --key-file "$W/k1" --new-key-file "$W/k2" --quiet; echo "rotate: $(echo "$(date +%s.%N) - $s" | bc) s"
s=$(date +%s.%N); "$BIN/vikingfs" fsck "$W/b" --key-file "$W/k2" --quiet; echo "fsck (new key): rc=$? $(echo "$(date +%s.%N) - $s" | bc) s"
"$BIN/vikingfs" fsck "$W/b" --key-file "$W/k1" --quiet >/dev/null 2>&1 && echo "OLD KEY STILL OPENS" || echo "old key refused: ok"
find "$W/b" -type f | wc -l
