#!/usr/bin/env bash
# Core integration suite: real mounts on tmpfs, driven with real tools (issue 2).
source "$(dirname "$0")/lib.sh"

KEY=$SCRATCH/root.key
new_key "$KEY"
B=$SCRATCH/backing
M=$SCRATCH/mnt
mkdir -p "$B" "$M"

echo "== mount, key check"
check "mounts on an empty backing dir" viking_mount "$B" "$M" -o root_key_file="$KEY"
check "creates the key check backend_meta.json" test -s "$B/backend_meta.json"
check "key check is an OVE1 envelope of empty content" bash -c "[ \$(head -c4 '$B/backend_meta.json') = OVE1 ] && [ \$(stat -c %s '$B/backend_meta.json') = 100 ] && [ \$(stat -c %s '$M/backend_meta.json') = 0 ]"
expect_fail "key check cannot be deleted through the mount" rm -f "$M/backend_meta.json"
check "mount shows up as fuse.vikingfs with the backing dir as source" grep -q "^$B $M fuse.vikingfs " /proc/mounts

check "the daemon cannot dump core (RLIMIT_CORE 0)" bash -c "grep -E '^Max core file size +0 +0' /proc/\$(cat '$M.pid')/limits"
check "no key material in argv, the log or the backing dir" bash -c "
    k=\$(tr -d '\n' < '$KEY'); ! grep -q \"\$k\" /proc/\$(cat '$M.pid')/cmdline && ! grep -q \"\$k\" '$M.log' && ! grep -rqa \"\$k\" '$B'"

echo "== real tools"
SRC=$SCRATCH/src
mkdir -p "$SRC"
cp -a /usr/include/linux /usr/include/openssl /usr/include/asm-generic "$SRC/"
ln -s linux/fs.h "$SRC/fs-link.h"
ln "$SRC/openssl/ssl.h" "$SRC/ssl-hardlink.h"
mkdir -p "$SRC/empty-dir"; : > "$SRC/empty-file"
printf 'SECRETMARKER-%s\n' {1..2000} > "$SRC/marker.txt"
chmod 640 "$SRC/marker.txt"; touch -d '2001-02-03 04:05:06' "$SRC/marker.txt"
mkdir -p "$M/acme" "$M/globex"
check "cp -a a source tree in" cp -a "$SRC" "$M/acme/src"
check "cp -a tree is identical through the mount" diff <(tree_manifest "$SRC") <(tree_manifest "$M/acme/src")
check "cp -a back out is identical" bash -c "cp -a '$M/acme/src' '$SCRATCH/src-out' && diff <(cd '$SRC' && find . -type f -print0 | sort -z | xargs -0 sha256sum) <(cd '$SCRATCH/src-out' && find . -type f -print0 | sort -z | xargs -0 sha256sum)"
check "hard link kept by cp -a" bash -c "[ \$(stat -c %i '$M/acme/src/openssl/ssl.h') = \$(stat -c %i '$M/acme/src/ssl-hardlink.h') ]"
check "tar in" bash -c "mkdir '$M/acme/tarred' && tar -C '$SRC' -cf - . | tar -C '$M/acme/tarred' -xf -"
check "tar tree is identical" diff <(tree_manifest "$SRC") <(tree_manifest "$M/acme/tarred")
check "tar out round-trips checksums" bash -c "mkdir '$SCRATCH/tar-out' && tar -C '$M/acme/tarred' -cf - . | tar -C '$SCRATCH/tar-out' -xf - && diff <(tree_manifest '$SRC') <(tree_manifest '$SCRATCH/tar-out')"
check "rsync -a in" rsync -a "$SRC/" "$M/globex/rsynced/"
check "rsync tree is identical and a second rsync transfers nothing" bash -c "diff <(tree_manifest '$SRC') <(tree_manifest '$M/globex/rsynced') && [ -z \"\$(rsync -ai '$SRC/' '$M/globex/rsynced/')\" ]"
check "git init/add/commit/log" bash -c "
    set -e; cd '$M/acme'; mkdir repo; cd repo; git init -q; git config user.email t@example.com; git config user.name t
    cp -a '$SRC/openssl' .; git add -A; git commit -qm first; echo change >> openssl/ssl.h; git commit -qam second
    [ \$(git log --oneline | wc -l) = 2 ]; git fsck --strict >/dev/null 2>&1; git status --porcelain | wc -l | grep -qx 0"
check "sqlite3 inserts 10,000 rows" bash -c "
    set -e; cd '$M/acme'
    sqlite3 queue.db 'PRAGMA journal_mode=WAL; CREATE TABLE q(id INTEGER PRIMARY KEY, body TEXT);' >/dev/null
    (echo 'BEGIN;'; for i in \$(seq 1 10000); do echo \"INSERT INTO q(body) VALUES('row-\$i-SECRETMARKER');\"; done; echo 'COMMIT;') | sqlite3 queue.db
    [ \$(sqlite3 queue.db 'SELECT count(*) FROM q') = 10000 ]"
check "random-offset writes and truncates match a plain file" python3 - "$M/acme/random.bin" "$SCRATCH/random-plain.bin" <<'PY'
import os, random, sys
random.seed(7)
a, b = sys.argv[1], sys.argv[2]
fa = os.open(a, os.O_RDWR | os.O_CREAT, 0o644); fb = os.open(b, os.O_RDWR | os.O_CREAT, 0o644)
for i in range(3000):
    op = random.random()
    if op < 0.6:
        off = random.choice([random.randint(0, 400000), random.randint(0, 40) * 4096, random.randint(0, 40) * 4096 - 1])
        data = os.urandom(random.choice([1, 27, 4095, 4096, 4097, random.randint(1, 70000)]))
        os.pwrite(fa, data, max(0, off)); os.pwrite(fb, data, max(0, off))
    elif op < 0.75:
        size = random.choice([0, random.randint(0, 400000), random.randint(0, 60) * 4096, 1 << 22])
        os.ftruncate(fa, size); os.ftruncate(fb, size)
    else:
        off, n = random.randint(0, 450000), random.randint(1, 90000)
        assert os.pread(fa, n, off) == os.pread(fb, n, off), f"read mismatch at step {i}"
    assert os.fstat(fa).st_size == os.fstat(fb).st_size, f"size mismatch at step {i}"
os.close(fa); os.close(fb)
assert open(a, 'rb').read() == open(b, 'rb').read()
PY
check "sparse file: dd seek leaves a hole that reads as zeros" bash -c "
    dd if=/dev/urandom of='$SCRATCH/tail' bs=4096 count=1 status=none
    dd if='$SCRATCH/tail' of='$M/acme/sparse' bs=4096 seek=2560 status=none
    [ \$(stat -c %s '$M/acme/sparse') = \$((2561*4096)) ] && cmp <(head -c \$((2560*4096)) '$M/acme/sparse') <(head -c \$((2560*4096)) /dev/zero) \
        && cmp <(tail -c 4096 '$M/acme/sparse') '$SCRATCH/tail' && [ \$(du -k '$B/acme/sparse' | cut -f1) -lt 1000 ]"
check "truncate up and down" bash -c "
    printf 'abcdefgh' > '$M/acme/t'; truncate -s 10000 '$M/acme/t'; truncate -s 5 '$M/acme/t'; truncate -s 7 '$M/acme/t'
    [ \"\$(od -An -c '$M/acme/t' | tr -d ' ')\" = 'abcde\\0\\0' ]"
check "append with >>" bash -c "for i in 1 2 3; do echo line\$i >> '$M/acme/appended'; done; [ \"\$(cat '$M/acme/appended')\" = \"\$(printf 'line1\nline2\nline3')\" ]"
check "fallocate extends the size" bash -c "fallocate -l 100000 '$M/acme/alloc' && [ \$(stat -c %s '$M/acme/alloc') = 100000 ] && cmp '$M/acme/alloc' <(head -c 100000 /dev/zero)"
check "symlink and readlink" bash -c "ln -s target-name '$M/acme/sl' && [ \$(readlink '$M/acme/sl') = target-name ]"
check "mkfifo" bash -c "mkfifo '$M/acme/fifo' && [ -p '$M/acme/fifo' ]"
check "chmod, chown, touch -d are kept" bash -c "
    echo x > '$M/acme/meta'; chmod 600 '$M/acme/meta'; chown 1234:5678 '$M/acme/meta'; touch -d '2010-01-02 03:04:05' '$M/acme/meta'
    [ \"\$(stat -c '%a %u %g %Y' '$M/acme/meta')\" = \"600 1234 5678 \$(date -d '2010-01-02 03:04:05' +%s)\" ]"
check "extended attributes round-trip and are sealed on the backing file" bash -c "
    setfattr -n user.note -v 'SECRETMARKER-xattr' '$M/acme/meta' && [ \"\$(getfattr --only-values -n user.note '$M/acme/meta')\" = SECRETMARKER-xattr ] \
    && getfattr -d '$M/acme/meta' | grep -q user.note && ! getfattr -d -m - '$B/acme/meta' 2>/dev/null | grep -q SECRETMARKER \
    && setfattr -x user.note '$M/acme/meta' && ! getfattr -n user.note '$M/acme/meta' 2>/dev/null"
expect_fail "non-user xattr namespaces are not supported" setfattr -n trusted.x -v 1 "$M/acme/meta"
check "rename within an account, RENAME_NOREPLACE and RENAME_EXCHANGE" python3 - "$M/acme" <<'PY'
import ctypes, os, sys
d = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
def renameat2(a, b, flags):
    r = libc.renameat2(-100, a.encode(), -100, b.encode(), flags)
    return 0 if r == 0 else ctypes.get_errno()
for n, c in (("x1", "one"), ("x2", "two")):
    open(f"{d}/{n}", "w").write(c)
assert renameat2(f"{d}/x1", f"{d}/x2", 1) == 17        # RENAME_NOREPLACE: EEXIST
assert renameat2(f"{d}/x1", f"{d}/x2", 2) == 0         # RENAME_EXCHANGE
assert open(f"{d}/x1").read() == "two" and open(f"{d}/x2").read() == "one"
os.rename(f"{d}/x1", f"{d}/sub-x1") ; assert open(f"{d}/sub-x1").read() == "two"
PY
check "hard link within an account" bash -c "ln '$M/acme/meta' '$M/acme/meta-link' && [ \$(stat -c %h '$M/acme/meta-link') = 2 ] && [ \$(stat -c %i '$M/acme/meta-link') = \$(stat -c %i '$M/acme/meta') ] && cmp '$M/acme/meta' '$M/acme/meta-link'"

check "sync -f after deleting a file succeeds" bash -c "echo gone > '$M/acme/deleted' && rm '$M/acme/deleted' && sync -f '$M'"

echo "== accounts"
check "cross-account rename is EXDEV" python3 -c "
import errno, os
try:
    os.rename('$M/acme/meta', '$M/globex/meta'); raise SystemExit('rename succeeded')
except OSError as e:
    assert e.errno == errno.EXDEV, e"
check "cross-account hard link is EXDEV" python3 -c "
import errno, os
try:
    os.link('$M/acme/meta', '$M/globex/meta'); raise SystemExit('link succeeded')
except OSError as e:
    assert e.errno == errno.EXDEV, e"
check "renaming an account directory is EXDEV" python3 -c "
import errno, os
try:
    os.rename('$M/globex', '$M/globex2'); raise SystemExit('rename succeeded')
except OSError as e:
    assert e.errno == errno.EXDEV, e"
printf 'same content SECRETMARKER\n' > "$M/acme/same"
printf 'same content SECRETMARKER\n' > "$M/globex/same"
check "two accounts' files open only under their own account key" bash -c "
    [ \"\$($REF decrypt '$KEY' acme '$B/acme/same')\" = 'same content SECRETMARKER' ] && [ \"\$($REF decrypt '$KEY' globex '$B/globex/same')\" = 'same content SECRETMARKER' ] \
    && ! $REF decrypt '$KEY' globex '$B/acme/same' >/dev/null 2>&1 && ! $REF decrypt '$KEY' acme '$B/globex/same' >/dev/null 2>&1"
check "files in the root and under _system are sealed under _system" bash -c "
    echo rootfile > '$M/top.txt' && mkdir -p '$M/_system' && echo sys > '$M/_system/s.json' \
    && [ \"\$($REF decrypt '$KEY' _system '$B/top.txt')\" = rootfile ] && [ \"\$($REF decrypt '$KEY' _system '$B/_system/s.json')\" = sys ]"
check "cross-account mv copies, deletes and re-seals under the destination key" bash -c "
    printf 'moving SECRETMARKER\n' > '$M/acme/mover' && mv '$M/acme/mover' '$M/globex/mover' && [ ! -e '$M/acme/mover' ] \
    && [ \"\$(cat '$M/globex/mover')\" = 'moving SECRETMARKER' ] && [ \"\$($REF decrypt '$KEY' globex '$B/globex/mover')\" = 'moving SECRETMARKER' ]"
check "cross-account mv of a directory tree" bash -c "mv '$M/acme/tarred/openssl' '$M/globex/openssl-moved' && diff -r '$SRC/openssl' '$M/globex/openssl-moved'"

echo "== concurrency"
check "two writers on different files and readers of a file being written see consistent data" python3 - "$M/acme" <<'PY'
import os, sys, threading, hashlib
d = sys.argv[1]
errors = []
def writer(name, seed):
    try:
        with open(f"{d}/{name}", "wb") as f:
            for i in range(400):
                f.write(bytes([(seed + i) % 256]) * 8192)
    except Exception as e:
        errors.append(e)
progress = [0]
# O_DIRECT takes the page cache (which gives no atomicity within a page between a reader and a writer, on any
# Linux file system) out of the picture: each 64 KiB pread/pwrite is one request to vikingfs, and vikingfs must
# never let a read see half of a write. Each record is one repeated byte value; readers check that.
import mmap
def rewriter(path, rounds):
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, 65536)
    for r in range(1, rounds + 1):
        progress[0] = r
        buf[:] = bytes([r]) * 65536
        os.pwritev(fd, [buf], 0)
    os.close(fd)
def reader(path, rounds):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 65536)
    for _ in range(rounds):
        n = os.preadv(fd, [buf], 0)
        latest = progress[0]
        record = set(buf[:n])
        if len(record) != 1:
            errors.append(AssertionError("torn record: %d distinct byte values" % len(record)))
        elif record.pop() > latest:
            errors.append(AssertionError("a record holds bytes that were never written"))
    os.close(fd)
shared = f"{d}/shared-record"
open(shared, "wb").write(b"\0" * 65536)
ts = [threading.Thread(target=writer, args=("w1", 1)), threading.Thread(target=writer, args=("w2", 2)),
      threading.Thread(target=rewriter, args=(shared, 250))] + [threading.Thread(target=reader, args=(shared, 250)) for _ in range(3)]
for t in ts: t.start()
for t in ts: t.join()
for name, seed in (("w1", 1), ("w2", 2)):
    expect = b"".join(bytes([(seed + i) % 256]) * 8192 for i in range(400))
    assert open(f"{d}/{name}", "rb").read() == expect, name
assert not errors, errors
PY

echo "== legacy plaintext and empty files"
check "unmount" viking_umount "$M"
mkdir -p "$B/acme/legacy"
printf 'LEGACY plaintext file\n' > "$B/acme/legacy/old.md"; chmod 644 "$B/acme/legacy/old.md"
: > "$B/acme/legacy/empty.txt"
check "remount" viking_mount "$B" "$M" -o root_key_file="$KEY"
check "legacy file reads as it is" bash -c "[ \"\$(cat '$M/acme/legacy/old.md')\" = 'LEGACY plaintext file' ]"
check "legacy file shows no write bits" bash -c "[ \$(stat -c %a '$M/acme/legacy/old.md') = 444 ]"
check "legacy file refuses writes with EROFS" python3 -c "
import errno, os
for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND):
    try:
        os.close(os.open('$M/acme/legacy/old.md', flags)); raise SystemExit('open succeeded with %o' % flags)
    except OSError as e:
        assert e.errno == errno.EROFS, e
try:
    os.truncate('$M/acme/legacy/old.md', 3); raise SystemExit('truncate succeeded')
except OSError as e:
    assert e.errno == errno.EROFS, e"
check "legacy file is left byte-for-byte untouched" bash -c "[ \"\$(cat '$B/acme/legacy/old.md')\" = 'LEGACY plaintext file' ]"
check "legacy file can be renamed within its account and deleted" bash -c "mv '$M/acme/legacy/old.md' '$M/acme/legacy/renamed.md' && cat '$M/acme/legacy/renamed.md' >/dev/null && cp '$M/acme/legacy/renamed.md' '$M/acme/legacy/copy.md' && rm '$M/acme/legacy/renamed.md'"
check "a copy of a legacy file is sealed" bash -c "[ \$(head -c4 '$B/acme/legacy/copy.md') = VKFS ]"
check "empty backing file is an empty, writable file" bash -c "[ \$(stat -c %s '$M/acme/legacy/empty.txt') = 0 ] && echo now-sealed > '$M/acme/legacy/empty.txt' && [ \$(cat '$M/acme/legacy/empty.txt') = now-sealed ] && [ \$(head -c4 '$B/acme/legacy/empty.txt') = VKFS ]"

check "no_legacy refuses legacy files with EIO" bash -c "
    fusermount3 -u '$M' && '$BIN/vikingfs-mount' '$B' '$M' -o root_key_file='$KEY',no_legacy 2>/dev/null \
    && printf 'planted' > '$B/acme/legacy/planted.md' && ! cat '$M/acme/legacy/planted.md' 2>/dev/null && [ \"\$(cat '$M/acme/legacy/empty.txt')\" = now-sealed ]; rc=\$?
    rm -f '$B/acme/legacy/planted.md'; fusermount3 -u '$M'; exit \$rc"
check "remount without no_legacy" viking_mount "$B" "$M" -o root_key_file="$KEY"

echo "== what the backing dir holds"
check "no plaintext marker anywhere in the backing dir" bash -c "! grep -r -a -l SECRETMARKER '$B'"
check "no temporary files left behind" bash -c "[ -z \"\$(find '$B' -name '.vikingfs-tmp-*')\" ]"

echo "== tamper"
printf 'tamper target %.0s' $(seq 1 2000) > "$M/acme/tamper"
cp "$M/acme/tamper" "$SCRATCH/tamper-plain"
check "unmount before tampering" viking_umount "$M"
python3 - "$B/acme/tamper" <<'PY'
import sys
p = sys.argv[1]; d = bytearray(open(p, 'rb').read())
d[96 + 4124 + 100] ^= 0x01   # a byte inside block 1
open(p, 'wb').write(d)
PY
check "remount after tampering" viking_mount "$B" "$M" -o root_key_file="$KEY"
check "reading a tampered block is EIO" bash -c "cat '$M/acme/tamper' 2>&1 >/dev/null | grep -q 'Input/output error'"
check "untampered blocks still read correctly" bash -c "cmp <(head -c 4096 '$M/acme/tamper') <(head -c 4096 '$SCRATCH/tamper-plain')"
check "the tamper is logged with the file name" grep -q "acme/tamper: block 1 fails authentication" "$M.log"
check "tampered block refuses a partial overwrite (EIO), never silently rewrites" bash -c "! dd if=/dev/zero of='$M/acme/tamper' bs=1 count=10 seek=4200 conv=notrunc status=none 2>/dev/null || ! sync '$M/acme/tamper'"
python3 - "$B/acme/same" <<'PY'
import sys
p = sys.argv[1]; d = bytearray(open(p, 'rb').read()); d[60] ^= 0x80; open(p, 'wb').write(d)
PY
check "a tampered header makes the whole file EIO" bash -c "cat '$M/acme/same' 2>&1 >/dev/null | grep -q 'Input/output error'"
cp "$B/globex/mover" "$B/acme/foreign"
check "a file copied from another account fails to open (EIO)" bash -c "cat '$M/acme/foreign' 2>&1 >/dev/null | grep -q 'Input/output error'"
rm -f "$B/acme/foreign"

echo "== remount and persistence"
tree_manifest "$M/acme/src" > "$SCRATCH/manifest-before"
check "unmount" viking_umount "$M"
check "remount" viking_mount "$B" "$M" -o root_key_file="$KEY"
check "everything reads back after remount" bash -c "tree_manifest() { (cd \"\$1\" && find . -mindepth 1 -printf '%P %y %m %s %l\n' | LC_ALL=C sort && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum); }; diff '$SCRATCH/manifest-before' <(tree_manifest '$M/acme/src')"
check "sqlite3 rows read back after remount" bash -c "[ \$(sqlite3 '$M/acme/queue.db' 'SELECT count(*) FROM q WHERE body LIKE \"row-%\"') = 10000 ] && sqlite3 '$M/acme/queue.db' 'PRAGMA integrity_check' | grep -qx ok"
check "git log after remount" bash -c "cd '$M/acme/repo' && [ \$(git log --oneline | wc -l) = 2 ]"
check "SIGTERM unmounts cleanly" bash -c "kill -TERM \$(cat '$M.pid') && for i in \$(seq 200); do grep -q ' $M fuse' /proc/mounts || exit 0; sleep 0.1; done; exit 1"

echo "== key handling"
WRONG=$SCRATCH/wrong.key; new_key "$WRONG"
check "the wrong root key refuses to mount with exit code 3 and a clear message" bash -c "
    out=\$('$BIN/vikingfs-mount' '$B' '$M' -o root_key_file='$WRONG' 2>&1); rc=\$?
    [ \$rc = 3 ] && echo \"\$out\" | grep -q 'wrong root key' && ! grep -q ' $M fuse' /proc/mounts"
chmod 644 "$WRONG"
check "a key file readable by others is refused" bash -c "
    out=\$('$BIN/vikingfs-mount' '$B' '$M' -o root_key_file='$WRONG' 2>&1); [ \$? = 3 ] && echo \"\$out\" | grep -q 'chmod 600'"
check "a missing key file is a clear failure" bash -c "out=\$('$BIN/vikingfs-mount' '$B' '$M' -o root_key_file=/nonexistent 2>&1); [ \$? = 3 ] && echo \"\$out\" | grep -q 'No such file'"
check "an unknown option is refused before mounting" bash -c "out=\$('$BIN/vikingfs-mount' '$B' '$M' -o root_key_file='$KEY',bogus=1 2>&1); [ \$? = 2 ] && echo \"\$out\" | grep -q \"unknown option 'bogus'\""
check "a missing key check with sealed files present refuses to mount" bash -c "
    mv '$B/backend_meta.json' '$SCRATCH/meta.bak'; out=\$('$BIN/vikingfs-mount' '$B' '$M' -o root_key_file='$KEY' 2>&1); rc=\$?
    mv '$SCRATCH/meta.bak' '$B/backend_meta.json'; [ \$rc = 3 ] && echo \"\$out\" | grep -q 'missing'"
check "daemon mode: returns once mounted, detached" bash -c "'$BIN/vikingfs-mount' '$B' '$M' -o root_key_file='$KEY' && grep -q ' $M fuse' /proc/mounts && [ -s '$M/acme/same' ] || true; grep -q ' $M fuse' /proc/mounts"
check "daemon mode unmounts with fusermount3 -u" viking_umount "$M"
check "read-only mount refuses writes and reads fine" bash -c "
    viking_mount() { '$BIN/vikingfs-mount' \"\$@\"; }; viking_mount '$B' '$M' -o root_key_file='$KEY',ro \
    && [ \"\$(cat '$M/globex/mover')\" = 'moving SECRETMARKER' ] && ! touch '$M/acme/new' 2>/dev/null; rc=\$?; fusermount3 -u '$M'; exit \$rc"

echo "== a full backing disk"
mkdir -p "$SCRATCH/small"
mount -t tmpfs -o size=4m tmpfs "$SCRATCH/small"
mkdir -p "$SCRATCH/small/b"
check "mount on a 4 MiB backing file system" viking_mount "$SCRATCH/small/b" "$SCRATCH/small-m" -o root_key_file="$KEY"
head -c 1000000 /dev/urandom > "$SCRATCH/keep"
check "a file that fits is written" bash -c "mkdir '$SCRATCH/small-m/acme' && cp '$SCRATCH/keep' '$SCRATCH/small-m/acme/keep'"
check "filling the disk fails with ENOSPC" bash -c "! dd if=/dev/urandom of='$SCRATCH/small-m/acme/fill' bs=64k count=200 2>'$SCRATCH/dd.err' && grep -q 'No space left' '$SCRATCH/dd.err'"
check "after ENOSPC both files read without EIO: the old one whole, the new one a prefix" bash -c "
    cmp '$SCRATCH/small-m/acme/keep' '$SCRATCH/keep' && cat '$SCRATCH/small-m/acme/fill' > /dev/null && [ \$(stat -c %s '$SCRATCH/small-m/acme/fill') -gt 0 ]"
check "after ENOSPC the files still read after a remount" bash -c "
    fusermount3 -u '$SCRATCH/small-m' && '$BIN/vikingfs-mount' '$SCRATCH/small/b' '$SCRATCH/small-m' -o root_key_file='$KEY' 2>/dev/null \
    && cmp '$SCRATCH/small-m/acme/keep' '$SCRATCH/keep' && cat '$SCRATCH/small-m/acme/fill' > /dev/null; rc=\$?; fusermount3 -u '$SCRATCH/small-m'; exit \$rc"
umount "$SCRATCH/small"

echo "== fstab and mount -a"
created_helper=0
if [ ! -e /sbin/mount.vikingfs ]; then ln -s "$BIN/vikingfs-mount" /sbin/mount.vikingfs; created_helper=1; fi
printf '%s %s vikingfs root_key_file=%s,_netdev,nofail 0 0\n' "$B" "$M" "$KEY" > "$SCRATCH/fstab"
check "mount -a mounts an fstab line of type vikingfs" bash -c "mount -a -T '$SCRATCH/fstab' && grep -q ' $M fuse.vikingfs ' /proc/mounts && [ \"\$(cat '$M/globex/mover')\" = 'moving SECRETMARKER' ]"
check "umount unmounts it" bash -c "umount '$M' && ! grep -q ' $M fuse' /proc/mounts"
[ "$created_helper" = 1 ] && rm -f /sbin/mount.vikingfs

echo "== OpenViking fixtures"
cp -a "$VECTORS/viking" "$SCRATCH/ov"
cp "$VECTORS/master.key" "$SCRATCH/ov.key"; chmod 600 "$SCRATCH/ov.key"
check "mounts OpenViking's own tree with its key" viking_mount "$SCRATCH/ov" "$SCRATCH/ovm" -o root_key_file="$SCRATCH/ov.key"
check "every fixture reads back with its size and SHA-256" python3 - "$SCRATCH/ovm" "$VECTORS/expected.json" <<'PY'
import hashlib, json, os, sys
root, expected = sys.argv[1], json.load(open(sys.argv[2]))
for path, e in expected.items():
    data = open(os.path.join(root, path), "rb").read()
    assert len(data) == e["size"] and os.stat(os.path.join(root, path)).st_size == e["size"], path
    assert hashlib.sha256(data).hexdigest() == e["sha256"], path
PY
check "unmount fixtures" viking_umount "$SCRATCH/ovm"
check "a wrong key refuses OpenViking's tree too" bash -c "'$BIN/vikingfs-mount' '$SCRATCH/ov' '$SCRATCH/ovm' -o root_key_file='$KEY'; [ \$? = 3 ]"

finish
