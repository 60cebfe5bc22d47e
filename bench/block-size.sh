#!/usr/bin/env bash
# Native block size sweep: the same workloads at 4, 16 and 64 KiB blocks, interleaved over several rounds so
# background noise hits every size alike; prints the median of each. Needs root and a release build.
#   bench/block-size.sh [ROUNDS]
set -euo pipefail
source "$(dirname "$0")/scratch.sh"
ROUNDS=${1:-3}
command -v fio >/dev/null || apt-get install -y -qq fio >/dev/null
scratch_setup blocksize 3g
results=$W/results
for round in $(seq 1 "$ROUNDS"); do
    for bs in 4096 16384 65536; do
        rm -rf "$W/b"; mkdir -p "$W/b" "$W/m"
        "$BIN/vikingfs-mount" "$W/b" "$W/m" -o root_key_file="$W/key",block_size=$bs 2>/dev/null
        mkdir "$W/m/acme"
        # MB/s from dd's byte count and seconds (its own rate switches between MB/s and GB/s).
        rate() { awk '/copied/ {for (i = 1; i <= NF; i++) if ($i == "s,") s = $(i-1); printf "%.0f", $1 / s / 1e6}'; }
        w=$(dd if=/dev/zero of="$W/m/acme/s" bs=1M count=512 conv=fsync 2>&1 | rate)
        echo 3 > /proc/sys/vm/drop_caches
        r=$(dd if="$W/m/acme/s" of=/dev/null bs=1M 2>&1 | rate)
        rm "$W/m/acme/s"
        fio_iops() { fio --name=j --filename="$W/m/acme/fio" --size=64M --rw="$1" --bs=4k --ioengine=psync --direct=1 \
                         --runtime=4 --time_based --numjobs=2 --group_reporting --output-format=terse 2>/dev/null \
                     | awk -F';' -v rw="$1" '{print (rw=="randread") ? $8 : $49}'; }
        rr=$(fio_iops randread); rw=$(fio_iops randwrite)
        echo "$bs $w $r $rr $rw" >> "$results"
        fusermount3 -u "$W/m"
    done
done
echo "| block | write MB/s | read MB/s (cold) | 4k randread IOPS | 4k randwrite IOPS |"
echo "|---|---|---|---|---|"
for bs in 4096 16384 65536; do
    awk -v bs=$bs '$1==bs' "$results" | python3 -c '
import statistics, sys
rows = [list(map(float, l.split()[1:])) for l in sys.stdin]
med = [statistics.median(c) for c in zip(*rows)]
print("| %d KiB | %.0f | %.0f | %.0f | %.0f |" % (int(sys.argv[1]) // 1024, *med))' $bs
done
echo "($ROUNDS rounds, medians; $(nproc) cores, $(uname -r))"
