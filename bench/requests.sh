#!/usr/bin/env bash
# FUSE requests per file for the tree workloads, for vikingfs and each peer: counts that do not move with machine
# load, unlike seconds. Counted by the kernel itself (tracepoints fuse:fuse_request_send / fuse_request_end, Linux
# 6.13 and later), so every daemon is measured the same way and none runs with a debug log. Untars a source subtree,
# lists it cold, reads every file cold and removes the tree; prints requests per file by kind, the mean time
# from the kernel sending each kind of request to the daemon's answer, and the daemon's own CPU time (user and
# system, from /proc/PID/stat) per file.
#   bench/requests.sh [SUBTREE]                       default: fs/ext4 of Debian's linux-source-6.1
#   VIKINGFS_OPTIONS=no_writeback bench/requests.sh   to compare a mount option
#   REQUEST_FILESYSTEMS="vikingfs securefs"           which to measure (default: all that are installed)
#   REQUEST_RANDWRITE=1 bench/requests.sh             also bench/run's 4 KiB random-write job (4 fio jobs x 64 MiB,
#                                                     O_DIRECT, two passes, then crc32c verify), per write request
# FORGET is not counted: the kernel queues forgets outside its request path, so the tracepoints never see them.
set -euo pipefail
source "$(dirname "$0")/scratch.sh"
SUBTREE=${1:-fs/ext4}
SOURCE=${BENCH_LINUX_SRC:-/usr/src/linux-source-6.1.tar.xz}
[ -r "$SOURCE" ] || { echo "$SOURCE missing (apt-get install linux-source-6.1)" >&2; exit 1; }
TRACE=/sys/kernel/tracing
[ -d "$TRACE/events" ] || mount -t tracefs nodev "$TRACE"
[ -d "$TRACE/events/fuse/fuse_request_send" ] || { echo "this kernel has no fuse tracepoints (Linux 6.13 or later)" >&2; exit 1; }
command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null

scratch_setup requests 2g
mkdir -p "$W/src"
tar -xJf "$SOURCE" -C "$W/src" "linux-source-6.1/$SUBTREE"
tar -cf "$W/tree.tar" -C "$W/src" linux-source-6.1
files=$(find "$W/src" -type f | wc -l)
echo "tree: $SUBTREE, $files files; vikingfs options: ${VIKINGFS_OPTIONS:-defaults}"
echo "per phase: requests per file (randwrite: per write; its verify reads included), the daemon's user+system CPU"
echo "per file, then each kind of request as count/mean µs from send to answer"

tracing() { # tracing on|off
    local v=0; [ "$1" = on ] && v=1
    if [ $v = 1 ]; then echo > "$TRACE/trace"; fi
    echo $v > "$TRACE/events/fuse/fuse_request_send/enable"
    echo $v > "$TRACE/events/fuse/fuse_request_end/enable"
    echo $v > "$TRACE/tracing_on"
}
trap 'tracing off 2>/dev/null || true; scratch_cleanup' EXIT

daemon_cpu_ticks() { # daemon_cpu_ticks PID -> "user system" clock ticks
    awk '{ print $14, $15 }' "/proc/$1/stat" 2>/dev/null || echo "0 0"
}

# phase NAME LABEL CONNECTION DAEMON UNITS UNIT COMMAND...: runs the command with tracing on and prints that
# connection's requests and the daemon's CPU time, both per UNIT (UNITS of them: files, or write requests).
phase() {
    local name=$1 label=$2 connection=$3 daemon=$4 units=$5 unit=$6; shift 6
    local before after
    before=$(daemon_cpu_ticks "$daemon")
    tracing on; "$@"; tracing off
    after=$(daemon_cpu_ticks "$daemon")
    awk -v c="$connection" -v files="$units" -v unit="$unit" -v name="$name" -v label="$label" \
        -v cpu="$before $after" -v hz="$(getconf CLK_TCK)" '
        { conn = ""; for (i = 1; i <= NF; i++) { if ($i == "connection") conn = $(i+1); if ($i == "req") u = $(i+1); if ($i == "opcode") op = $(i+2) } }
        conn != c { next }
        { t = $4; sub(/:$/, "", t) }
        /fuse_request_send:/ { gsub(/[()]|FUSE_/, "", op); start[u] = t; kind[u] = op; n[op]++; total++ }
        /fuse_request_end:/ && (u in start) { sum[kind[u]] += t - start[u]; done[kind[u]]++; delete start[u] }
        END {
            split(cpu, t, " ")
            line = sprintf("%-12s %-9s %5.1f/%s, daemon CPU %.1f+%.1f µs/%s ", name, label, total / files, unit,
                           (t[3] - t[1]) / hz / files * 1e6, (t[4] - t[2]) / hz / files * 1e6, unit)
            m = 0; for (k in n) order[++m] = k
            for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (n[order[j]] > n[order[i]]) { x = order[i]; order[i] = order[j]; order[j] = x }
            for (i = 1; i <= m; i++) { k = order[i]; line = line sprintf(" %d %s/%.0f", n[k], k, done[k] ? sum[k] / done[k] * 1e6 : 0) }
            print line
        }' "$TRACE/trace"
}

mount_fs() { # mount_fs NAME BACKING MOUNTPOINT
    case $1 in
        vikingfs) "$BIN/vikingfs-mount" "$2" "$3" -o "root_key_file=$W/key${VIKINGFS_OPTIONS:+,$VIKINGFS_OPTIONS}" ;;
        passthrough) "$BIN/fuse-passthrough" "$2" "$3" ;;
        securefs) securefs create --pass pw --pbkdf pkcs5-pbkdf2-hmac-sha256 -r 1000 "$2" >/dev/null &&
                  securefs mount -b --log "$W/securefs.log" --pass pw "$2" "$3" >/dev/null ;;
        gocryptfs) gocryptfs -init -q -extpass "echo pw" -scryptn 10 "$2" && gocryptfs -q -extpass "echo pw" "$2" "$3" ;;
    esac
}

measure() { # measure NAME
    local name=$1 m=$W/m
    mkdir -p "$W/b-$name" "$m"
    mount_fs "$name" "$W/b-$name" "$m" || { echo "$name: mount failed" >&2; return 1; }
    for _ in $(seq 1 100); do grep -q " $m fuse" /proc/mounts && break; sleep 0.1; done
    local connection daemon
    connection=$(stat -c %d "$m")
    daemon=$(pgrep -n -f -- " $m( |\$)" || echo 0)
    local tree=("$connection" "$daemon" "$files" file)
    phase "$name" untar "${tree[@]}" sh -c "tar -xf '$W/tree.tar' -C '$m' && sync -f '$m'"
    echo 3 > /proc/sys/vm/drop_caches
    phase "$name" "ls -lR" "${tree[@]}" sh -c "ls -lR '$m' >/dev/null"
    echo 3 > /proc/sys/vm/drop_caches
    phase "$name" cat "${tree[@]}" sh -c "find '$m' -type f -print0 | xargs -0 cat >/dev/null"
    phase "$name" "rm -rf" "${tree[@]}" rm -rf "$m/linux-source-6.1"
    if [ -n "${REQUEST_RANDWRITE:-}" ]; then
        # bench/run's random-write job: every 4 KiB block of each job's file written once per pass, then read back.
        mkdir "$m/fio"
        phase "$name" randwrite "$connection" "$daemon" $((4 * 16384 * 2)) write \
            fio --name=rw --directory="$m/fio" --rw=randwrite --bs=4k --size=64M --numjobs=4 --ioengine=psync \
                --direct=1 --loops=2 --verify=crc32c --verify_fatal=1 --verify_state_save=0 --output=/dev/null
        rm -rf "$m/fio"
    fi
    fusermount3 -u "$m"
    sleep 0.5
}

for name in ${REQUEST_FILESYSTEMS:-vikingfs passthrough securefs gocryptfs}; do
    case $name in securefs|gocryptfs) command -v "$name" >/dev/null || { echo "$name not installed: skipped (bench/run installs it)"; continue; } ;; esac
    measure "$name"
done
