#!/bin/sh
# A/B of two hakd binaries on one `hakd bench` step: the two alternate (A B, then B A, ...) for
# ROUNDS rounds, and each run prints its median and best step (ms) and the CPU seconds
# (user + system) of the whole process, which a loaded machine disturbs much less than the wall
# time (the same work costs the same CPU time however often the process is descheduled; model
# setup is in it too, the same on both sides).
#
# usage: bench/ab_bench.sh OLD_HAKD NEW_HAKD ROUNDS <hakd bench options>
#   e.g. bench/ab_bench.sh /tmp/hakd-main build/hakd 3 --model segformer-b0 --mode train \
#          --size 64x64 --batch 1 --iters 20 --warmup 2 --threads 1
# Runs under OMP_WAIT_POLICY=PASSIVE unless the environment sets it (spinning waits burn CPU
# time that is no work).
set -eu
[ $# -ge 3 ] || { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
old=$1 new=$2 rounds=$3
shift 3
for bin in "$old" "$new"; do [ -x "$bin" ] || { echo "ab_bench.sh: $bin is not executable" >&2; exit 1; }; done
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
times=$(mktemp)
trap 'rm -f "$times"' EXIT
r=1
while [ "$r" -le "$rounds" ]; do
  if [ $((r % 2)) = 1 ]; then order="old new"; else order="new old"; fi
  for side in $order; do
    if [ "$side" = old ]; then bin=$old; else bin=$new; fi
    load=$(cut -d' ' -f1 /proc/loadavg)
    line=$(/usr/bin/time -f '%U %S' -o "$times" "$bin" bench "$@")
    median=$(printf '%s\n' "$line" | sed 's/.*"ms_per_iter": \([0-9.]*\).*/\1/')
    best=$(printf '%s\n' "$line" | sed 's/.*"ms_min": \([0-9.]*\).*/\1/')
    cpu=$(awk '{ printf "%.2f", $1 + $2 }' "$times")
    echo "$side round $r (load $load): median $median ms, best $best ms, cpu $cpu s"
  done
  r=$((r + 1))
done
