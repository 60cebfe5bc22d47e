#!/usr/bin/env bash
# OVE1 writes through the mount (issue 3): format=ove1, format preservation, write-back safety.
source "$(dirname "$0")/lib.sh"

KEY=$SCRATCH/root.key
new_key "$KEY"
B=$SCRATCH/backing
M=$SCRATCH/mnt

layout_is_ove1() { # layout_is_ove1 BACKINGFILE PLAINTEXT_SIZE
    python3 - "$1" "$2" <<'PY'
import struct, sys
d = open(sys.argv[1], "rb").read()
assert d[:4] == b"OVE1", d[:4]
assert d[4] == 1 and d[5] == 1, (d[4], d[5])                 # version 1, provider 0x01 (local key file)
assert struct.unpack(">HHH", d[6:12]) == (48, 12, 12)
assert len(d) == int(sys.argv[2]) + 100, len(d)
PY
}

echo "== format=ove1"
check "mount with format=ove1" viking_mount "$B" "$M" -o root_key_file="$KEY",format=ove1
mkdir -p "$M/acme" "$M/_system"
head -c 70000 /dev/urandom > "$SCRATCH/blob"
check "write files of several sizes" bash -c "
    : > '$M/acme/zero'; printf x > '$M/acme/one'; head -c 4096 '$SCRATCH/blob' > '$M/acme/page'; cp '$SCRATCH/blob' '$M/acme/blob'
    echo '{\"accounts\":[]}' > '$M/_system/accounts.json'"
check "new files are OVE1 envelopes with the OVE1 byte layout" bash -c "
    $(declare -f layout_is_ove1); layout_is_ove1 '$B/acme/zero' 0 && layout_is_ove1 '$B/acme/one' 1 && layout_is_ove1 '$B/acme/page' 4096 && layout_is_ove1 '$B/acme/blob' 70000"
check "the reference decrypter opens them under the right account" bash -c "
    cmp <($REF decrypt '$KEY' acme '$B/acme/blob') '$SCRATCH/blob' && [ \"\$($REF decrypt '$KEY' _system '$B/_system/accounts.json')\" = '{\"accounts\":[]}' ]"
check "reads back through the mount" cmp "$M/acme/blob" "$SCRATCH/blob"
check "random writes to an OVE1 file match a plain file" python3 - "$M/acme/rw" "$SCRATCH/rw-plain" <<'PY'
import os, random, sys
random.seed(3)
a, b = sys.argv[1:3]
for p in (a, b): open(p, "wb").close()
for round in range(30):
    fa, fb = os.open(a, os.O_RDWR), os.open(b, os.O_RDWR)
    for i in range(20):
        off, data = random.randint(0, 100000), os.urandom(random.randint(1, 9000))
        os.pwrite(fa, data, off); os.pwrite(fb, data, off)
        if random.random() < 0.1:
            size = random.randint(0, 120000); os.ftruncate(fa, size); os.ftruncate(fb, size)
        assert os.pread(fa, 200000, 0) == os.pread(fb, 200000, 0)
    os.close(fa); os.close(fb)
assert open(a, "rb").read() == open(b, "rb").read()
PY
check "the OVE1 file on disk decrypts to the same bytes after close" bash -c "cmp <($REF decrypt '$KEY' acme '$B/acme/rw') '$SCRATCH/rw-plain'"
check "fsync writes the envelope back while the file stays open" python3 -c "
import os, subprocess
fd = os.open('$M/acme/synced', os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b'durable before close'); os.fsync(fd)
out = subprocess.run(['python3', '$REPO/Tests/integration/vikingfs_ref.py', 'decrypt', '$KEY', 'acme', '$B/acme/synced'], capture_output=True).stdout
os.close(fd)
assert out == b'durable before close', out"
check "no temporary file is listed or left" bash -c "[ -z \"\$(ls -a '$M/acme' | grep vikingfs-tmp)\" ] && [ -z \"\$(find '$B' -name '.vikingfs-tmp-*')\" ]"
check "a file larger than ove1_max_size is EFBIG" bash -c "
    out=\$(dd if=/dev/zero of='$M/acme/huge' bs=1M count=80 2>&1); echo \"\$out\" | grep -q 'File too large'"
check "the EFBIG is logged" grep -q "ove1_max_size" "$M.log"
check "unmount" viking_umount "$M"

echo "== files keep their format"
check "mount with the native default" viking_mount "$B" "$M" -o root_key_file="$KEY"
check "an OVE1 file rewritten through a native mount stays OVE1" bash -c "
    echo 'rewritten SECRET' > '$M/acme/one' && [ \$(head -c4 '$B/acme/one') = OVE1 ] && [ \"\$($REF decrypt '$KEY' acme '$B/acme/one')\" = 'rewritten SECRET' ]"
check "an appended OVE1 file stays OVE1" bash -c "echo more >> '$M/acme/one' && [ \$(head -c4 '$B/acme/one') = OVE1 ] && [ \$(wc -l < '$M/acme/one') = 2 ]"
check "new files on a native mount are native" bash -c "echo n > '$M/acme/native' && [ \$(head -c4 '$B/acme/native') = VKFS ]"
check "copy OVE1 -> native and back keeps content" bash -c "cp '$M/acme/blob' '$M/acme/blob-native' && [ \$(head -c4 '$B/acme/blob-native') = VKFS ] && cmp '$M/acme/blob-native' '$SCRATCH/blob'"
check "unmount" viking_umount "$M"
check "mount format=ove1 again" viking_mount "$B" "$M" -o root_key_file="$KEY",format=ove1
check "a native file rewritten through an ove1 mount stays native" bash -c "echo changed >> '$M/acme/native' && [ \$(head -c4 '$B/acme/native') = VKFS ] && [ \"\$(cat '$M/acme/native')\" = \"\$(printf 'n\nchanged')\" ]"
check "copy native -> OVE1 keeps content" bash -c "cp '$M/acme/blob-native' '$M/acme/blob-ove1' && [ \$(head -c4 '$B/acme/blob-ove1') = OVE1 ] && cmp '$M/acme/blob-ove1' '$SCRATCH/blob'"
check "unmount" viking_umount "$M"

echo "== a kill during write-back leaves the old or the new envelope, never a torn one"
head -c $((40 << 20)) /dev/urandom > "$SCRATCH/old-content"
head -c $((40 << 20)) /dev/urandom > "$SCRATCH/new-content"
check "prepare a 40 MiB OVE1 file" bash -c "$(declare -f viking_mount); BIN='$BIN'; viking_mount '$B' '$M' -o root_key_file='$KEY',format=ove1 && cp '$SCRATCH/old-content' '$M/acme/big' && fusermount3 -u '$M'"
for seed in 1 2 3 4 5; do
    viking_mount "$B" "$M" -o root_key_file="$KEY",format=ove1 >/dev/null 2>&1
    pid=$(cat "$M.pid")
    (cp "$SCRATCH/new-content" "$M/acme/big" 2>/dev/null &)
    sleep "0.$(( (seed * 37) % 9 + 1 ))"
    kill -9 "$pid"
    sleep 0.2
    fusermount3 -u "$M" 2>/dev/null || umount -l "$M" 2>/dev/null
    check "kill -9 at point $seed: backing file is the old or the new envelope" bash -c "
        h=\$($REF decrypt '$KEY' acme '$B/acme/big' | sha256sum | cut -d' ' -f1)
        [ \"\$h\" = \$(sha256sum < '$SCRATCH/old-content' | cut -d' ' -f1) ] || [ \"\$h\" = \$(sha256sum < '$SCRATCH/new-content' | cut -d' ' -f1) ]"
done
check "remount after the kills" viking_mount "$B" "$M" -o root_key_file="$KEY"
check "temporary files are not listed and are cleaned up" bash -c "
    [ -z \"\$(ls -a '$M/acme' | grep vikingfs-tmp)\" ] && ls '$M/acme' >/dev/null && [ -z \"\$(find '$B' -name '.vikingfs-tmp-*')\" ]"
check "the file reads completely" bash -c "[ \$(wc -c < '$M/acme/big') = $((40 << 20)) ]"
check "unmount" viking_umount "$M"

finish
