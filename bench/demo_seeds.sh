#!/bin/sh
# Runs the demo for several seeds and prints mean ± std of each method's mIoU (the README's
# demo table). Usage: bench/demo_seeds.sh [seeds...]   (default: 0 1 2)
# DEMO_FLAGS passes extra demo flags; PARALLEL=1 runs the seeds at once (use with
# DEMO_FLAGS="--threads 1" on a 2-core machine).
set -e
cd "$(dirname "$0")/.."
make -s build
mkdir -p demo_out
seeds=${*:-0 1 2}
for s in $seeds; do
  if [ "${PARALLEL:-0}" = 1 ]; then
    ./build/hakd demo --seed "$s" --out "demo_out/seed$s" $DEMO_FLAGS > "demo_out/seed$s.log" 2>&1 &
  else
    mkdir -p demo_out
    ./build/hakd demo --seed "$s" --out "demo_out/seed$s" $DEMO_FLAGS > "demo_out/seed$s.log" 2>&1
  fi
done
wait
for s in $seeds; do
  echo "== seed $s"
  tail -n 14 "demo_out/seed$s.log"
done
echo
echo "mIoU over seeds: $seeds (mean ± sample std)"
for s in $seeds; do cat "demo_out/seed$s/results.tsv"; done | awk -F'\t' '
  $1 == "method" { next }
  { n[$1]++; sum[$1] += $2; sq[$1] += $2 * $2; if (!($1 in order)) { order[$1] = ++count; name[count] = $1 } }
  END {
    printf "| %-20s | %-14s |\n|----------------------|----------------|\n", "method", "mIoU";
    for (i = 1; i <= count; i++) {
      m = name[i]; mean = sum[m] / n[m]; var = n[m] > 1 ? (sq[m] - n[m] * mean * mean) / (n[m] - 1) : 0;
      if (var < 0) var = 0;
      printf "| %-20s | %6.2f ± %5.2f |\n", m, mean, sqrt(var);
    }
  }'
