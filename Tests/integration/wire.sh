#!/usr/bin/env bash
# Wire suite: the INIT flags FuseKit adds to libfuse 3.14's reply (CFuseWire), and the promises they carry.
#   FUSE_HANDLE_KILLPRIV_V2  the daemon clears set-user-ID/set-group-ID exactly where the kernel's own VFS would
#                            (checked against a plain tmpfs, operation by operation), and in return the kernel
#                            stops asking for security.capability before every write(2).
#   FUSE_PARALLEL_DIROPS     lookups and listings in one directory run concurrently and stay right.
#   FUSE_CACHE_SYMLINKS      symlink targets come from the kernel's cache, and a replaced link shows its new target.
# And the readahead window FuseKit gives its mounts.
source "$(dirname "$0")/lib.sh"

KEY=$SCRATCH/root.key
new_key "$KEY"
B=$SCRATCH/backing
M=$SCRATCH/mnt
PLAIN=$SCRATCH/plain
mkdir -p "$PLAIN"
chmod 755 "$SCRATCH"

as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }

# setid_outcomes DIR: each operation below, on a fresh file of each set-ID mode, then the mode it leaves
# (stat %A). Run on the mount and on a plain tmpfs directory: the lines must be identical.
setid_outcomes() {
    local d=$1 m op
    chmod 777 "$d"
    for m in 4755 4777 2777 2767 6777 6767; do
        for op in append-other append-member truncate-other otrunc-other write-root truncate-root chown-root \
                  pwrite-other; do
            rm -f "$d/f"
            printf 'some content\n' > "$d/f"
            chown 0:0 "$d/f"
            case $op in *member) chgrp 65534 "$d/f" ;; esac
            chmod "$m" "$d/f"
            case $op in
                append-other|append-member) as_nobody sh -c "echo more >> '$d/f'" 2>/dev/null ;;
                truncate-other) as_nobody truncate -s 3 "$d/f" 2>/dev/null ;;
                otrunc-other) as_nobody sh -c ": > '$d/f'" 2>/dev/null ;;
                pwrite-other) as_nobody python3 -c "
import os; fd = os.open('$d/f', os.O_WRONLY); os.pwrite(fd, b'xy', 4); os.close(fd)" 2>/dev/null ;;
                write-root) echo more >> "$d/f" ;;
                truncate-root) truncate -s 3 "$d/f" ;;
                chown-root) chown 65534 "$d/f" ;;
            esac
            printf '%s %s %s %s\n' "$m" "$op" "$(stat -c %A "$d/f")" "$(cat "$d/f" | sha256sum | cut -c1-12)"
        done
    done
}

export -f as_nobody setid_outcomes
setid_outcomes "$PLAIN" > "$SCRATCH/plain.outcomes"

for options in "" ",no_writeback"; do
    L="writeback"; [ -n "$options" ] && L="no_writeback"
    echo "== set-user-ID and set-group-ID ($L)"
    check "$L: mounts with allow_other" viking_mount "$B" "$M" -o root_key_file="$KEY",allow_other$options
    mkdir -p "$M/acme/setid"
    check "$L: writes, truncates and chowns by users without CAP_FSETID clear set-ID bits exactly as tmpfs does" \
        bash -c 'diff "$0" <(setid_outcomes "$1")' "$SCRATCH/plain.outcomes" "$M/acme/setid"
    check "$L: the backing file loses the bit too" bash -c "
        rm -f '$M/acme/setid/g'; echo x > '$M/acme/setid/g'; chmod 4777 '$M/acme/setid/g'
        as_nobody sh -c \"echo y >> '$M/acme/setid/g'\"
        [ \$(stat -c %a '$B/acme/setid/g') = 777 ]"
    check "$L: unmount" viking_umount "$M"
done

echo "== the kernel stops probing security.capability (HANDLE_KILLPRIV_V2 granted)"
check "mounts with libfuse's request log (-d)" viking_mount "$B" "$M" -d -o root_key_file="$KEY"
mkdir -p "$M/acme/probe"
check "500 appends of 4 KiB to one file, then it reads back" python3 -c "
import os
fd = os.open('$M/acme/probe/log', os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
for i in range(500): os.write(fd, bytes([i % 251]) * 4096)
os.close(fd)
data = open('$M/acme/probe/log', 'rb').read()
assert data == b''.join(bytes([i % 251]) * 4096 for i in range(500))
"
# Without the flag the kernel sends one GETXATTR (security.capability) per write(2): 500 here.
check "at most a handful of GETXATTR requests for 500 write(2) calls" bash -c "
    n=\$(grep -c 'opcode: GETXATTR' '$M.log'); echo \"GETXATTR requests: \$n\"; [ \$n -le 5 ]"

check "the mount's readahead window is two of FUSE's largest requests (2,048 KiB, not the kernel's 128)" bash -c "
    [ \$(cat /sys/class/bdi/0:\$(stat -c %d '$M')/read_ahead_kb) = 2048 ]"

echo "== parallel lookups and listings in one directory"
mkdir -p "$M/acme/wide"
python3 -c "
import os
for i in range(2000): open(f'$M/acme/wide/f{i:04d}', 'w').write(str(i))
"
check "8 processes look up, read and list 2,000 names of one directory at once, from a cold cache" bash -c "
    echo 3 > /proc/sys/vm/drop_caches
    for p in 0 1 2 3 4 5 6 7; do
        python3 -c \"
import os, random
random.seed(\$p)
names = [f'f{i:04d}' for i in range(2000)]
random.shuffle(names)
for n in names:
    assert open('$M/acme/wide/' + n).read() == str(int(n[1:])), n
    if random.random() < 0.01: assert len(os.listdir('$M/acme/wide')) == 2000
\" &
    done
    fail=0; for j in \$(jobs -p); do wait \$j || fail=1; done; exit \$fail"
check "every inode number is unique across the directory" bash -c "
    [ \$(stat -c %i '$M/acme/wide'/* | sort -u | wc -l) = 2000 ]"

echo "== cached symlinks"
mkdir -p "$M/acme/links"
check "a symlink read 50 times costs the daemon one READLINK" bash -c "
    ln -s target-one '$M/acme/links/l'
    before=\$(grep -c 'opcode: READLINK' '$M.log')
    for i in \$(seq 1 50); do [ \"\$(readlink '$M/acme/links/l')\" = target-one ] || exit 1; done
    after=\$(grep -c 'opcode: READLINK' '$M.log'); echo \"READLINK requests: \$((after - before))\"; [ \$((after - before)) -le 1 ]"
check "a replaced symlink shows its new target at once, also when renamed over" bash -c "
    rm '$M/acme/links/l' && ln -s target-two '$M/acme/links/l' && [ \"\$(readlink '$M/acme/links/l')\" = target-two ] &&
    ln -s target-three '$M/acme/links/m' && mv '$M/acme/links/m' '$M/acme/links/l' && [ \"\$(readlink '$M/acme/links/l')\" = target-three ]"
check "unmount" viking_umount "$M"

finish
