#!/bin/sh
# Runs the demo for several seeds and prints mean ± std of each method's mIoU (the README's
# demo table). Usage: bench/demo_seeds.sh [seeds...]   (default: 0 1 2)
# Extra demo flags can be passed in DEMO_FLAGS (e.g. DEMO_FLAGS="--threads 1").
set -e
cd "$(dirname "$0")/.."
make -s build
seeds=${*:-0 1 2}
for s in $seeds; do
  echo "== seed $s"
  ./build/hakd demo --seed "$s" --out "demo_out/seed$s" $DEMO_FLAGS | tail -n 14
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
