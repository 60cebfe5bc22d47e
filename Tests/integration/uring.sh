#!/usr/bin/env bash
# io_uring suite: FuseKit serving FUSE requests over io_uring (CFuseWire/uring.c), Linux 6.14+.
# The fuse module offers it only while its enable_uring parameter is on; this suite turns it on for its own run
# and puts back the value it found. It checks that the mounts really are served over the rings, that real tools
# get the same results as over /dev/fuse, that no_io_uring keeps a mount off the rings, that unmounting and
# stopping the daemon end cleanly, and then runs the core and wire suites whole over io_uring.
source "$(dirname "$0")/lib.sh"

PARAM=/sys/module/fuse/parameters/enable_uring
if [ ! -e "$PARAM" ]; then
    # Not a skip: the machines this project runs on (Linux 6.18) have it; an older kernel must be noticed.
    check "the kernel offers FUSE over io_uring ($PARAM exists; Linux 6.14+ with CONFIG_FUSE_IO_URING)" test -e "$PARAM"
    finish; exit
fi
WAS=$(cat "$PARAM")
restore_param() { echo "$WAS" > "$PARAM" 2>/dev/null; }
trap 'restore_param; cleanup' EXIT
check "enable_uring can be turned on" bash -c "echo 1 > '$PARAM' && [ \$(cat '$PARAM') = Y ]"

KEY=$SCRATCH/root.key
new_key "$KEY"
B=$SCRATCH/backing
M=$SCRATCH/mnt
CPUS=$(python3 -c 'import re; t = open("/sys/devices/system/cpu/possible").read(); print(max(int(n) for n in re.findall(r"\d+", t)) + 1)')

ring_fds() { ls -l "/proc/$1/fd" 2>/dev/null | grep -c 'anon_inode:\[io_uring\]'; }
# Completions the daemon's rings have reaped, summed over its rings: grows only with requests served over them.
ring_completions() {
    local pid=$1 fd total=0 head
    for fd in $(ls -l "/proc/$pid/fd" | awk '/anon_inode:\[io_uring\]/ {print $9}'); do
        head=$(awk '/^CqHead:/ {print $2}' "/proc/$pid/fdinfo/$fd")
        total=$((total + ${head:-0}))
    done
    echo "$total"
}

echo "== vikingfs over io_uring"
check "mounts" viking_mount "$B" "$M" -o root_key_file="$KEY"
PID=$(cat "$M.pid")
check "one ring per possible CPU ($CPUS) in the daemon" bash -c "[ \$(ls -l /proc/$PID/fd | grep -c 'anon_inode:\[io_uring\]') = $CPUS ]"
check "the log says the mount is served over io_uring" grep -q "serving FUSE requests over io_uring: $CPUS queues" "$M.log"
check "one queue thread per CPU, each pinned to its CPU" bash -c "
    n=0; for t in /proc/$PID/task/*; do
        name=\$(cat \$t/comm); case \$name in fuse-ring-*) ;; *) continue ;; esac
        cpu=\${name#fuse-ring-}; grep -qx \"Cpus_allowed_list:\s*\$cpu\" \$t/status || { echo \"\$name: \$(grep Cpus_allowed_list \$t/status)\"; exit 1; }
        n=\$((n + 1))
    done; [ \$n = $CPUS ]"

check "one bulk worker per CPU for large reads, not pinned" bash -c "
    n=0; for t in /proc/$PID/task/*; do
        [ \"\$(cat \$t/comm)\" = fuse-bulk ] || continue
        [ \"\$(awk '/Cpus_allowed_list/ {print \$2}' \$t/status)\" = \"\$(awk '/Cpus_allowed_list/ {print \$2}' /proc/$PID/status)\" ] || exit 1
        n=\$((n + 1))
    done; [ \$n = $CPUS ]"

before=$(ring_completions "$PID")
SRC=$SCRATCH/src
mkdir -p "$SRC" "$M/acme"
cp -a /usr/include/linux /usr/include/openssl "$SRC/"
check "cp -a a tree in, identical through the mount" bash -c "cp -a '$SRC' '$M/acme/src' && diff <(tree_manifest '$SRC') <(tree_manifest '$M/acme/src')"
check "tar round trip" bash -c "mkdir '$M/acme/t' && tar -C '$SRC' -cf - . | tar -C '$M/acme/t' -xf - && mkdir '$SCRATCH/t-out' && tar -C '$M/acme/t' -cf - . | tar -C '$SCRATCH/t-out' -xf - && diff <(tree_manifest '$SRC') <(tree_manifest '$SCRATCH/t-out')"
check "rsync -a in, then a second rsync transfers nothing" bash -c "rsync -a '$SRC/' '$M/acme/r/' && diff <(tree_manifest '$SRC') <(tree_manifest '$M/acme/r') && [ -z \"\$(rsync -ai '$SRC/' '$M/acme/r/')\" ]"
check "1 MiB writes and reads (the largest requests; reads go to the bulk workers) keep every byte" bash -c "
    head -c 48M /dev/urandom > '$SCRATCH/big' && dd if='$SCRATCH/big' of='$M/acme/big' bs=1M conv=fsync status=none &&
    echo 3 > /proc/sys/vm/drop_caches && cmp '$SCRATCH/big' '$M/acme/big'"
check "4 writers at once on both CPUs, then each file verified" bash -c "
    for i in 1 2 3 4; do
        (head -c 8M /dev/urandom > '$SCRATCH/p'\$i && dd if='$SCRATCH/p'\$i of='$M/acme/p'\$i bs=4k status=none) &
    done; wait; echo 3 > /proc/sys/vm/drop_caches
    for i in 1 2 3 4; do cmp '$SCRATCH/p'\$i '$M/acme/p'\$i || exit 1; done"
check "sqlite3 inserts 5,000 rows in WAL mode" bash -c "
    set -e; cd '$M/acme'
    sqlite3 q.db 'PRAGMA journal_mode=WAL; CREATE TABLE q(id INTEGER PRIMARY KEY, body TEXT);' >/dev/null
    (echo 'BEGIN;'; for i in \$(seq 1 5000); do echo \"INSERT INTO q(body) VALUES('row-\$i');\"; done; echo 'COMMIT;') | sqlite3 q.db
    [ \$(sqlite3 q.db 'SELECT count(*) FROM q') = 5000 ]"
check "git commit and fsck" bash -c "
    set -e; cd '$M/acme'; mkdir g; cd g; git init -q; git config user.email t@example.com; git config user.name t
    cp -a '$SRC/openssl' .; git add -A; git commit -qm one; git fsck --strict >/dev/null 2>&1"
check "a 3,000-entry directory lists whole" bash -c "mkdir '$M/acme/many' && (cd '$M/acme/many' && seq 1 3000 | xargs touch) && [ \$(ls '$M/acme/many' | wc -l) = 3000 ] && [ \$(ls -l '$M/acme/many' | grep -c '^-') = 3000 ]"
check "a 64 KiB extended attribute round-trips" bash -c "
    v=\$(head -c 49152 /dev/urandom | base64 -w0 | head -c 65000); setfattr -n user.big -v \"\$v\" '$M/acme/big' &&
    [ \"\$(getfattr --only-values -n user.big '$M/acme/big')\" = \"\$v\" ]"
check "the backing dir holds ciphertext only" bash -c "! grep -rqa 'LINUX_VERSION_CODE' '$B/acme'"
check "a tampered block inside a 1 MiB read is EIO and a log line, never wrong bytes" bash -c "
    cp '$M/acme/big' '$M/acme/tampered' && sync && echo 3 > /proc/sys/vm/drop_caches &&
    printf 'X' | dd of='$B/acme/tampered' bs=1 seek=\$((20 * 1048576 + 777)) conv=notrunc status=none &&
    echo 3 > /proc/sys/vm/drop_caches &&
    ! dd if='$M/acme/tampered' of='$SCRATCH/tampered.out' bs=1M status=none 2>'$SCRATCH/dd.err' &&
    grep -q 'Input/output error' '$SCRATCH/dd.err' && grep -q 'tampered.*EIO' '$M.log' &&
    [ \$(stat -c %s '$SCRATCH/tampered.out') -le \$((20 * 1048576)) ] &&
    cmp -n \$(stat -c %s '$SCRATCH/tampered.out') '$SCRATCH/tampered.out' '$SCRATCH/big'"
after=$(ring_completions "$PID")
check "the requests above came over the rings (completions $before -> $after)" test "$after" -gt $((before + 10000))
check "unmounts, and the daemon exits" viking_umount "$M"

echo "== polling off, and no_io_uring"
check "mounts with io_uring_poll_us=0 (queues sleep between requests)" viking_mount "$B" "$M" -o root_key_file="$KEY",io_uring_poll_us=0
check "a tree reads back identical" diff <(tree_manifest "$SRC") <(tree_manifest "$M/acme/src")
check "writes land" bash -c "cp '$SCRATCH/big' '$M/acme/big2' && cmp '$SCRATCH/big' '$M/acme/big2'"
check "unmounts" viking_umount "$M"
check "mounts with no_io_uring" viking_mount "$B" "$M" -o root_key_file="$KEY",no_io_uring
check "no ring in the daemon" bash -c "[ \$(ls -l /proc/\$(cat '$M.pid')/fd | grep -c 'anon_inode:\[io_uring\]') = 0 ]"
check "the same tree over /dev/fuse" diff <(tree_manifest "$SRC") <(tree_manifest "$M/acme/src")
check "unmounts" viking_umount "$M"
expect_fail "io_uring_poll_us must be a number" "$BIN/vikingfs-mount" "$B" "$M" -f -o root_key_file="$KEY",io_uring_poll_us=soon

echo "== ending"
check "mounts" viking_mount "$B" "$M" -o root_key_file="$KEY"
check "SIGTERM while a reader is busy: the daemon unmounts and exits within 10 s" bash -c "
    (while cat '$M/acme/big' > /dev/null 2>&1; do :; done) & reader=\$!
    sleep 0.5; kill -TERM \$(cat '$M.pid')
    for i in \$(seq 1 100); do kill -0 \$(cat '$M.pid') 2>/dev/null || break; sleep 0.1; done
    kill \$reader 2>/dev/null; wait \$reader 2>/dev/null
    ! kill -0 \$(cat '$M.pid') 2>/dev/null && ! grep -q ' $M fuse' /proc/mounts"
check "mounts again" viking_mount "$B" "$M" -o root_key_file="$KEY"
check "a killed daemon leaves a mount that fails cleanly (ENOTCONN) and unmounts" bash -c "
    kill -KILL \$(cat '$M.pid'); sleep 0.3
    ! stat '$M/acme' 2>/dev/null && fusermount3 -u '$M' && ! grep -q ' $M fuse' /proc/mounts"
check "mounts after that" viking_mount "$B" "$M" -o root_key_file="$KEY"
check "and the data is intact" cmp "$SCRATCH/big" "$M/acme/big"
check "unmounts" viking_umount "$M"

echo "== the passthrough over io_uring"
P=$SCRATCH/pt-mnt
mkdir -p "$SCRATCH/pt-back" "$P"
check "fuse-passthrough mounts over io_uring" bash -c "'$BIN/fuse-passthrough' '$SCRATCH/pt-back' '$P' && sleep 0.2 &&
    [ \$(ls -l /proc/\$(pgrep -f '^$BIN/fuse-passthrough $SCRATCH/pt-back')/fd | grep -c 'anon_inode:\[io_uring\]') = $CPUS ]"
check "a tree copied through it is identical in its backing dir" bash -c "cp -a '$SRC' '$P/src' && diff <(tree_manifest '$SRC') <(tree_manifest '$SCRATCH/pt-back/src')"
check "unmounts" fusermount3 -u "$P"

echo "== the core and wire suites over io_uring"
for suite in core wire; do
    echo "-- $suite.sh"
    out=$(bash "$REPO/Tests/integration/$suite.sh" 2>&1)
    printf '%s\n' "$out" | grep -E '^(FAIL|failed:)' | sed 's/^/   /'
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -1)
    p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
    if [ -z "$line" ]; then f=1; p=0; printf '%s\n' "$out" | tail -20; fi
    PASSED=$((PASSED + p)); FAILED=$((FAILED + f))
    [ "$f" = 0 ] || FAILED_NAMES+=("$suite.sh over io_uring ($f failed)")
    echo "   $suite.sh over io_uring: $line"
done
check "enable_uring was still on after them" bash -c "[ \$(cat '$PARAM') = Y ]"

finish
