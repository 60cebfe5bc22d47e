#!/usr/bin/env bash
# Repeatable cost of the daemon's own code: runs vikingfs-mount under valgrind's callgrind (instruction counts,
# not seconds, so the figures do not move with machine load) through a fixed workload, then prints the total
# and the top functions. Compare totals before and after a change to the data path.
#   bench/callgrind.sh            (needs root, valgrind, a release build)
set -euo pipefail
source "$(dirname "$0")/scratch.sh"
command -v valgrind >/dev/null || apt-get install -y -qq valgrind >/dev/null
scratch_setup callgrind 1g
mkdir -p "$W/b" "$W/m"
valgrind --tool=callgrind --callgrind-out-file="$W/callgrind.out" \
    "$BIN/vikingfs-mount" "$W/b" "$W/m" -f -o root_key_file="$W/key" >"$W/daemon.log" 2>&1 &
for _ in $(seq 1 600); do grep -q " $W/m fuse" /proc/mounts && break; sleep 0.1; done
grep -q " $W/m fuse" /proc/mounts || { cat "$W/daemon.log"; exit 1; }
mkdir "$W/m/acme"
# The workload: 64 MiB streamed in and out in 1 MiB writes, 1,000 small files created, read and removed.
dd if=/dev/zero of="$W/m/acme/stream" bs=1M count=64 conv=fsync status=none
echo 3 > /proc/sys/vm/drop_caches
dd if="$W/m/acme/stream" of=/dev/null bs=1M status=none
for i in $(seq 1 1000); do echo "small file $i" > "$W/m/acme/f$i"; done
cat "$W/m/acme"/f* > /dev/null
rm -f "$W/m/acme"/f*
fusermount3 -u "$W/m"
for _ in $(seq 1 300); do [ -s "$W/callgrind.out" ] && ! pgrep -f "callgrind-out-file=$W" >/dev/null && break; sleep 0.2; done
echo "workload: 64 MiB written + read, 1,000 small files created, read, removed"
callgrind_annotate "$W/callgrind.out" 2>/dev/null | grep -E "PROGRAM TOTALS|^ *[0-9,]+ \(" | head -25
