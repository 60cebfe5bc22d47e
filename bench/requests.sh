#!/usr/bin/env bash
# FUSE requests per file for the tree workloads: a count that does not move with machine load, unlike seconds.
# Mounts vikingfs (and FuseKit's passthrough) with libfuse's debug log, untars a source subtree, lists it cold,
# reads every file cold and removes the tree, and counts the kernel's requests of each kind per phase.
#   bench/requests.sh [SUBTREE]                  default: fs/ext4 of Debian's linux-source-6.1
#   VIKINGFS_OPTIONS=no_writeback bench/requests.sh   to compare a mount option
set -euo pipefail
source "$(dirname "$0")/scratch.sh"
SUBTREE=${1:-fs/ext4}
SOURCE=${BENCH_LINUX_SRC:-/usr/src/linux-source-6.1.tar.xz}
[ -r "$SOURCE" ] || { echo "$SOURCE missing (apt-get install linux-source-6.1)" >&2; exit 1; }
scratch_setup requests 2g
mkdir -p "$W/src"
tar -xJf "$SOURCE" -C "$W/src" "linux-source-6.1/$SUBTREE"
tar -cf "$W/tree.tar" -C "$W/src" linux-source-6.1
files=$(find "$W/src" -type f | wc -l)
echo "tree: $SUBTREE, $files files; vikingfs options: ${VIKINGFS_OPTIONS:-defaults}"

count() { # count LOG: "N OPCODE" lines of one phase, then empties the log
    grep -a -oE 'opcode: [A-Z_]+' "$1" | awk '{print $2}' | sort | uniq -c | sort -rn | awk '{printf "%s %s, ", $1, $2}'
    : > "$1"
}

measure() { # measure NAME BINARY [OPTIONS...]
    local name=$1 binary=$2; shift 2
    mkdir -p "$W/b-$name" "$W/m"
    "$binary" "$W/b-$name" "$W/m" -d "$@" >"$W/$name.log" 2>&1 &
    for _ in $(seq 1 100); do grep -q " $W/m fuse" /proc/mounts && break; sleep 0.1; done
    : > "$W/$name.log"
    local total before
    tar -xf "$W/tree.tar" -C "$W/m"; sync -f "$W/m"
    before=$(grep -a -c 'opcode:' "$W/$name.log"); printf '%-12s untar   %5.1f/file  %s\n' "$name" "$(echo "$before / $files" | bc -l)" "$(count "$W/$name.log")"
    echo 3 > /proc/sys/vm/drop_caches; ls -lR "$W/m" >/dev/null
    before=$(grep -a -c 'opcode:' "$W/$name.log"); printf '%-12s ls -lR  %5.1f/file  %s\n' "$name" "$(echo "$before / $files" | bc -l)" "$(count "$W/$name.log")"
    echo 3 > /proc/sys/vm/drop_caches; find "$W/m" -type f -print0 | xargs -0 cat >/dev/null
    before=$(grep -a -c 'opcode:' "$W/$name.log"); printf '%-12s cat     %5.1f/file  %s\n' "$name" "$(echo "$before / $files" | bc -l)" "$(count "$W/$name.log")"
    rm -rf "$W/m/linux-source-6.1"
    before=$(grep -a -c 'opcode:' "$W/$name.log"); printf '%-12s rm -rf  %5.1f/file  %s\n' "$name" "$(echo "$before / $files" | bc -l)" "$(count "$W/$name.log")"
    fusermount3 -u "$W/m"
    sleep 0.5
}

command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null
measure vikingfs "$BIN/vikingfs-mount" -o "root_key_file=$W/key${VIKINGFS_OPTIONS:+,$VIKINGFS_OPTIONS}"
measure passthrough "$BIN/fuse-passthrough" ${PASSTHROUGH_OPTIONS:+-o "$PASSTHROUGH_OPTIONS"}
