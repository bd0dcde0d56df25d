#!/bin/sh
# Data-parallel scaling on one machine (README "Several processes and machines", docs/SCALING.md):
# 2 processes x 1 thread (mpirun) against 1 process x 1 thread and 1 process x 2 threads, for a CNN
# and a Transformer training step and a HeteroAKD distillation step, with the gradient all-reduce
# per iteration. Usage:
#   bench/mpi_scaling.sh [HAKD]        (HAKD: build/hakd by default)
# Each cell: global images/s from the median step time of iterations 4..ITERS (16), best of REPEAT
# (2) runs; batch 8 (2 x 4 under mpirun), 64x64 crops of `hakd synth` images. The all-reduce columns
# come from the 2-process runs' last log line: the time spent after backward waiting for the
# reductions (buckets started during backward), and the same with HAKD_DIST_OVERLAP=0 (everything
# reduced after backward: the all-reduce's whole time). "SyncBN off" is the 2-process run with
# --sync-bn 0 (no BatchNorm reductions inside forward and backward). PREFIX runs every hakd
# process under a command, e.g. PREFIX="chrt -f 10" (root) so that other jobs on a shared machine
# do not take the cores meanwhile. A few minutes on 2 cores.
set -u
HAKD=${1:-build/hakd}
ITERS=${ITERS:-16}
REPEAT=${REPEAT:-2}
MPIRUN=${MPIRUN:-mpirun --oversubscribe --allow-run-as-root --bind-to none}
PREFIX=${PREFIX:-}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM
"$HAKD" synth --out "$TMP/synth" --train 64 --val 2 --size 64x64 >/dev/null || exit 1
COMMON="--dataset generic --data-root $TMP/synth --crop 64x64 --batch 8 --iters $ITERS --log-every 1 --workers 1 \
--memory-check 0"
# a teacher for the distillation step (its quality does not matter to the step's time)
"$HAKD" train --model segformer-b0 $COMMON --iters 1 --work-dir "$TMP/teacher" >/dev/null 2>&1 || {
  echo "mpi_scaling: the teacher run failed" >&2
  exit 1
}
CNN="train --model deeplabv3-r18-d8 --width 0.5"
TRANSFORMER="train --model segformer-b0"
DISTILL="distill --model deeplabv3-r18-d8 --width 0.5 --teacher segformer-b0 --teacher-weights $TMP/teacher/best.safetensors --method heteroakd"

# median seconds per step of iterations 4.. of a finished run's log
median_step() {
  grep '"lr"' "$1/log.jsonl" | sed 's/.*"time": \([0-9.]*\).*/\1/' | tail -n +4 | sort -n |
    awk '{v[NR] = $1} END {printf "%.4f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

# cell PREFIX THREADS WORKLOAD: best global images/s of REPEAT runs; the 2-process runs leave their
# log in $TMP/last.log
cell() {
  prefix=$1 threads=$2
  shift 2
  best=""
  r=0
  while [ $r -lt "$REPEAT" ]; do
    rm -rf "$TMP/w"
    # shellcheck disable=SC2086
    $prefix $PREFIX "$HAKD" $* $COMMON --threads "$threads" --work-dir "$TMP/w" >"$TMP/last.log" 2>&1 || {
      printf ' %12s |' fail
      return
    }
    s=$(median_step "$TMP/w")
    best=$(awk -v s="$s" -v b="$best" 'BEGIN {v = 8 / s; if (b == "" || v > b) b = v; printf "%.1f", b}')
    r=$((r + 1))
  done
  printf ' %12s |' "$best"
}

# the all-reduce line of the last 2-process run: "MB wait" columns
allreduce() {
  sed -n 's/.*all-reduce of \([0-9.]*\) MB per iteration; backward \([0-9.]*\) ms, then \([0-9.]*\) ms waiting.*/\1 \2 \3/p' \
    "$TMP/last.log"
}

echo "hakd data-parallel scaling: global images/s (batch 8, 64x64), median step of iterations 4..$ITERS, best of $REPEAT"
echo "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); PREFIX='$PREFIX'; OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset} OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-unset}"
echo
echo "| step | params | 1 proc x 1 thread | 1 proc x 2 threads | 2 procs x 1 thread | 2 procs, SyncBN off | all-reduce MB/iter | backward ms (2 procs) | wait after backward ms | all-reduce alone ms (no overlap) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for w in CNN TRANSFORMER DISTILL; do
  eval "args=\$$w"
  rm -rf "$TMP/p"
  # shellcheck disable=SC2086
  "$HAKD" $args $COMMON --iters 1 --threads 1 --work-dir "$TMP/p" >"$TMP/p.log" 2>&1
  params=$(sed -n 's/.*(\([a-z]*\), \([0-9.]*M\) params).*/\2/p' "$TMP/p.log" | head -n 1)
  printf '| %s | %s |' "$(echo "$args" | cut -d' ' -f1-3)" "$params"
  cell "" 1 $args
  cell "" 2 $args
  cell "$MPIRUN -np 2" 1 $args
  set -- $(allreduce)
  mb=${1:-?} backward=${2:-?} wait=${3:-?}
  cell "$MPIRUN -np 2" 1 $args --sync-bn 0
  export HAKD_DIST_OVERLAP=0
  cell "$MPIRUN -x HAKD_DIST_OVERLAP -np 2" 1 $args >/dev/null
  unset HAKD_DIST_OVERLAP
  set -- $(allreduce)
  printf ' %s | %s | %s | %s |\n' "$mb" "$backward" "$wait" "${3:-?}"
done
