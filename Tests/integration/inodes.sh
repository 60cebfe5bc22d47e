#!/usr/bin/env bash
# Inode-table suite: what the low-level (inode) FUSE binding promises — open files follow renames and outlive
# unlinks, hard links are one inode, forgotten inodes release their descriptors, listings resume correctly across
# buffer boundaries with and without READDIRPLUS, and the writeback cache stays correct.
source "$(dirname "$0")/lib.sh"

KEY=$SCRATCH/root.key
new_key "$KEY"
B=$SCRATCH/backing
M=$SCRATCH/mnt

# names_and_open_files LABEL: the behaviours that depend on how inodes are reached, run on the mount at $M.
names_and_open_files() {
local L=$1
mkdir -p "$M/acme"
rm -rf "$M/acme/olddir" "$M/acme/newdir" "$M/acme/sub" "$M/acme/a" "$M/acme/after"
check "$L: hard links are one inode: link counts are right at once, through either name" bash -c "
    echo shared > '$M/acme/a' && ln '$M/acme/a' '$M/acme/b'
    [ \$(stat -c %h '$M/acme/a') = 2 ] && [ \$(stat -c %h '$M/acme/b') = 2 ] && [ \$(stat -c %i '$M/acme/a') = \$(stat -c %i '$M/acme/b') ]
    echo more >> '$M/acme/b'; [ \"\$(cat '$M/acme/a')\" = \"\$(printf 'shared\nmore')\" ]
    rm '$M/acme/b'; [ \$(stat -c %h '$M/acme/a') = 1 ]"
check "$L: a file renamed while open keeps its data and takes new writes under the new name" python3 -c "
import os
d = '$M/acme'
fd = os.open(d + '/before', os.O_CREAT | os.O_RDWR, 0o644)
os.write(fd, b'x' * 10000)
os.rename(d + '/before', d + '/after')
os.mkdir(d + '/sub'); os.rename(d + '/after', d + '/sub/moved')
os.pwrite(fd, b'tail', 10000)
assert os.fstat(fd).st_size == 10004
os.close(fd)
assert open(d + '/sub/moved', 'rb').read() == b'x' * 10000 + b'tail'
assert not os.path.exists(d + '/before')
"
check "$L: a file unlinked while open can still be read, written, truncated and stat'ed; sync -f after close" python3 -c "
import os
p = '$M/acme/doomed'
fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o600)
os.write(fd, os.urandom(9000))
os.unlink(p)
os.pwrite(fd, b'still here', 20000)
assert os.fstat(fd).st_size == 20010
assert os.pread(fd, 10, 20000) == b'still here'
os.ftruncate(fd, 100)
assert os.fstat(fd).st_size == 100
os.fchmod(fd, 0o640)
os.close(fd)
assert not os.path.exists(p)
os.sync()
"
check "$L: sync -f on the mount after the unlinked file is closed" sync -f "$M"
check "$L: a directory renamed while a file in it is open: writes land in the renamed tree" python3 -c "
import os
d = '$M/acme'
os.makedirs(d + '/olddir/deep')
fd = os.open(d + '/olddir/deep/f', os.O_CREAT | os.O_WRONLY, 0o644)
os.write(fd, b'one ')
os.rename(d + '/olddir', d + '/newdir')
os.write(fd, b'two')
os.close(fd)
assert open(d + '/newdir/deep/f', 'rb').read() == b'one two'
"
check "$L: the backing copy of the renamed file decrypts (reference implementation)" bash -c "
    [ \"\$($REF decrypt '$KEY' acme '$B/acme/newdir/deep/f')\" = 'one two' ]"

}

echo "== open files and names (every inode holds a descriptor)"
check "mounts" viking_mount "$B" "$M" -o root_key_file="$KEY"
names_and_open_files "with descriptors"
check "unmount" viking_umount "$M"

echo "== open files and names (past the descriptor budget: inodes reached by name)"
# 1,100 descriptors leave a budget of 76 held inodes, 67 of them for files (the rest kept for directories);
# everything past it is reached through parent and name.
mount_limited() { ( ulimit -n 1100 && viking_mount "$@" ); }
check "mounts with a 1,100-descriptor limit" mount_limited "$B" "$M" -o root_key_file="$KEY"
python3 -c "
import os
os.makedirs('$M/acme/filler', exist_ok=True)
for i in range(300): open(f'$M/acme/filler/{i}', 'w').write('f')
"
names_and_open_files "by name"
check "by name: a name reused by another file is not mistaken for the forgotten one" python3 -c "
import os
d = '$M/acme/filler'
assert all(open(f'{d}/{i}').read() == 'f' for i in range(300))
os.rename(f'{d}/7', f'{d}/seven'); open(f'{d}/7', 'w').write('new')
assert open(f'{d}/seven').read() == 'f' and open(f'{d}/7').read() == 'new'
"
check "by name: the daemon kept within its limit" bash -c "[ \$(ls /proc/\$(cat '$M.pid')/fd | wc -l) -lt 1100 ]"
check "by name: past the files' share of the budget, new directories still get descriptors" bash -c "
    pid=\$(cat '$M.pid'); before=\$(ls /proc/\$pid/fd | wc -l)
    for i in 1 2 3 4 5; do echo x > '$M/acme/filler/'file-\$i; done; stat '$M/acme/filler'/file-* >/dev/null
    files=\$(ls /proc/\$pid/fd | wc -l)
    for i in 1 2 3 4 5; do mkdir '$M/acme/filler/'dir-\$i; done; stat '$M/acme/filler'/dir-* >/dev/null
    after=\$(ls /proc/\$pid/fd | wc -l)
    echo \"descriptors: \$before, after 5 files \$files, after 5 directories \$after\"
    [ \$files -eq \$before ] && [ \$after -ge \$((files + 5)) ]"
check "by name: renaming over and removing inodes known only by name, then sync -f, reports no error" bash -c "
    echo replacement > '$M/acme/filler/new' && mv '$M/acme/filler/new' '$M/acme/filler/5' && [ \$(cat '$M/acme/filler/5') = replacement ] \
    && rm -rf '$M/acme/filler' && sync -f '$M' && [ ! -e '$M/acme/filler' ]"
check "unmount" viking_umount "$M"

echo "== permissions"
check "mounts" viking_mount "$B" "$M" -o root_key_file="$KEY"
check "without allow_other the mount has no default_permissions (only its owner can enter)" bash -c "
    grep \" $M fuse.vikingfs \" /proc/mounts | grep -qv default_permissions"
check "access(2) answers from the backing file's mode: test -x false on 0644, true on 0755" bash -c "
    echo x > '$M/acme/plain' && chmod 644 '$M/acme/plain' && ! test -x '$M/acme/plain' && chmod 755 '$M/acme/plain' && test -x '$M/acme/plain'"
check "unmount" viking_umount "$M"
check "with allow_other the kernel checks modes (default_permissions added)" bash -c "
    '$BIN/vikingfs-mount' '$B' '$M' -o root_key_file='$KEY',allow_other && grep \" $M fuse.vikingfs \" /proc/mounts | grep -q default_permissions; s=\$?; fusermount3 -u '$M'; exit \$s"

echo "== descriptors"
check "mounts" viking_mount "$B" "$M" -o root_key_file="$KEY"
check "the daemon raised its descriptor limit (to fs.nr_open with CAP_SYS_RESOURCE, else to its hard limit)" bash -c "
    read -r soft hard <<< \$(awk '/^Max open files/ { print \$4, \$5 }' /proc/\$(cat '$M.pid')/limits)
    [ \"\$soft\" = \"\$hard\" ] || { echo \"soft \$soft, hard \$hard\"; exit 1; }
    if grep -q '^CapEff:.*' /proc/self/status && capsh --decode=\$(awk '/^CapEff/ { print \$2 }' /proc/self/status) 2>/dev/null | grep -q cap_sys_resource; then
        [ \"\$hard\" = \$(cat /proc/sys/fs/nr_open) ] || { echo \"hard \$hard, nr_open \$(cat /proc/sys/fs/nr_open)\"; exit 1; }
    fi"
check "25,000 files (more than this machine's default descriptor limit) can be created, listed and read" python3 -c "
import os
d = '$M/acme/many'
os.mkdir(d)
for i in range(25000):
    with open(f'{d}/f{i:05d}', 'w') as f: f.write(str(i))
names = sorted(os.listdir(d))
assert names == [f'f{i:05d}' for i in range(25000)], 'listing differs'
sizes = {e.name: e.stat().st_size for e in os.scandir(d)}
assert all(sizes[f'f{i:05d}'] == len(str(i)) for i in range(25000)), 'a size differs'
assert open(f'{d}/f24999').read() == '24999'
"
check "cached inodes hold descriptors up to the budget, and release them when the kernel forgets them" bash -c "
    pid=\$(cat '$M.pid'); held=\$(ls /proc/\$pid/fd | wc -l); limit=\$(awk '/^Max open files/ { print \$4 }' /proc/\$pid/limits)
    budget=\$(( limit - (limit / 8 > 1024 ? limit / 8 : 1024) )); files_share=\$(( budget - budget / 8 ))
    want=\$(( files_share < 25000 ? files_share : 25000 ))
    [ \$held -ge \$want ] && [ \$held -lt \$limit ] || { echo \"\$held descriptors (limit \$limit, files' share \$files_share) while 25,000 inodes are cached\"; exit 1; }
    sync; echo 2 > /proc/sys/vm/drop_caches
    for i in \$(seq 50); do now=\$(ls /proc/\$pid/fd | wc -l); [ \$now -lt 1000 ] && exit 0; sleep 0.1; done
    echo \"still \$now descriptors after the kernel dropped its inodes (was \$held)\"; exit 1"
check "the files read back after the kernel forgot their inodes" bash -c "
    [ \$(cat '$M/acme/many/f12345') = 12345 ] && [ \$(ls '$M/acme/many' | wc -l) = 25000 ]"

echo "== listings"
mkdir -p "$M/acme/list"
python3 -c "
import os
for i in range(3000): open(f'$M/acme/list/entry-with-a-long-name-{i:04d}', 'w').write('x' * (i % 50))
"
touch "$B/acme/list/.vikingfs-tmp-hidden.abc"
check "a 3,000-entry listing (many readdir calls) is complete, in order, without hidden names" python3 -c "
import os
names = sorted(os.listdir('$M/acme/list'))
assert names == sorted(f'entry-with-a-long-name-{i:04d}' for i in range(3000)), (len(names), names[:3])
"
check "sizes in a READDIRPLUS listing are plaintext sizes" bash -c "
    echo 3 > /proc/sys/vm/drop_caches
    ls -l '$M/acme/list' | awk 'NR > 1 { split(\$9, p, \"-\"); if (\$5 != (p[6] + 0) % 50) { print \"wrong size: \" \$0; bad = 1 } } END { exit bad }'"
check "unmount" viking_umount "$M"
check "remount with plain listings (no_readdirplus)" viking_mount "$B" "$M" -o root_key_file="$KEY",no_readdirplus
check "the same listing without READDIRPLUS" bash -c "
    [ \$(ls '$M/acme/list' | wc -l) = 3000 ] && [ \$(find '$M/acme/list' -type f -size -1c | wc -l) = 60 ]"
check "unmount" viking_umount "$M"

echo "== writeback cache"
check "mounts with -o writeback" viking_mount "$B" "$M" -o root_key_file="$KEY",writeback
SRC=$SCRATCH/src
mkdir -p "$SRC"
cp -a /usr/include/linux "$SRC/"
check "tar in and out of a tree matches byte for byte" bash -c "
    tar -C '$SCRATCH' -cf - src | tar -C '$M/acme' -xf - && sync -f '$M' && diff -r '$SRC' '$M/acme/src'"
check "appends through O_APPEND on a write-only descriptor" bash -c "
    for i in 1 2 3; do echo line\$i >> '$M/acme/log'; done; [ \"\$(cat '$M/acme/log')\" = \"\$(printf 'line1\nline2\nline3')\" ]"
check "mmap writes reach the file" python3 -c "
import mmap, os
p = '$M/acme/mapped'
with open(p, 'wb') as f: f.write(b'\0' * 20000)
with open(p, 'r+b') as f:
    m = mmap.mmap(f.fileno(), 20000)
    m[5000:5005] = b'hello'; m.flush(); m.close()
assert open(p, 'rb').read()[5000:5005] == b'hello'
"
check "random writes and truncates agree with a plain file" python3 -c "
import os, random
random.seed(7)
a = os.open('$M/acme/rw', os.O_CREAT | os.O_RDWR, 0o644); b = os.open('$SCRATCH/rw', os.O_CREAT | os.O_RDWR, 0o644)
for i in range(1500):
    r = random.random()
    if r < 0.6:
        off, data = random.randint(0, 300000), os.urandom(random.randint(1, 20000))
        os.pwrite(a, data, off); os.pwrite(b, data, off)
    elif r < 0.7:
        n = random.randint(0, 320000); os.ftruncate(a, n); os.ftruncate(b, n)
    else:
        off, n = random.randint(0, 320000), random.randint(1, 30000)
        assert os.pread(a, n, off) == os.pread(b, n, off), f'step {i}'
os.close(a); os.close(b)
assert open('$M/acme/rw', 'rb').read() == open('$SCRATCH/rw', 'rb').read()
"
check "rm -rf then sync -f succeeds (no ESTALE for forgotten inodes)" bash -c "rm -rf '$M/acme/src' && sync -f '$M' && [ ! -e '$M/acme/src' ]"
check "unmount" viking_umount "$M"
check "everything written through the writeback cache is there after a remount" bash -c "
    '$BIN/vikingfs-mount' '$B' '$M' -o root_key_file='$KEY' && cmp '$M/acme/rw' '$SCRATCH/rw' \
    && [ \"\$(cat '$M/acme/log')\" = \"\$(printf 'line1\nline2\nline3')\" ] && [ \"\$($REF decrypt '$KEY' acme '$B/acme/log')\" = \"\$(printf 'line1\nline2\nline3')\" ]; s=\$?; fusermount3 -u '$M'; exit \$s"

finish
