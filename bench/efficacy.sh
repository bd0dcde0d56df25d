#!/bin/sh
# Does distillation help? Runs `hakd demo` over N seeds in one setting, two runs at a time with one
# thread each, then `hakd stats` over the per-seed results: every method's mean +- std mIoU and
# its paired per-seed difference against labels only and against KD with the 95% t-interval, the
# teacher's lead per seed, and the classes where the teacher beats the labels-only student.
#
# Usage: bench/efficacy.sh [--seeds N (5)] [--first S (0)] [--jobs J (2)] [--out DIR] [demo flags...]
#   e.g. bench/efficacy.sh --direction transformer-to-cnn --methods none,kd,heteroakd
#        bench/efficacy.sh --out efficacy_out/c2t --methods heteroakd --set lambda_hakd=0.5   (a sweep
#        point: reuses each seed's cached teacher and labels-only row in the same --out)
# Writes DIR/seedS/ (each seed's demo work dirs, log and results.tsv) and DIR/stats.md (the table,
# the command and the commit). Rerunning with the same settings reuses the cached teachers.
set -eu
cd "$(dirname "$0")/.."
seeds=5 first=0 jobs=2 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds=$2; shift 2 ;;
    --first) first=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) break ;;
  esac
done
case "$seeds$first$jobs" in *[!0-9]*) echo "efficacy: --seeds, --first and --jobs take numbers" >&2; exit 2 ;; esac
[ "$seeds" -ge 1 ] && [ "$jobs" -ge 1 ] || { echo "efficacy: --seeds and --jobs must be >= 1" >&2; exit 2; }
direction=cnn-to-transformer
prev=""
for a in "$@"; do
  [ "$prev" = "--direction" ] && direction=$a
  case "$a" in --direction=*) direction=${a#--direction=} ;; esac
  prev=$a
done
[ -n "$out" ] || out="efficacy_out/$direction"
make build >/dev/null
mkdir -p "$out"
hakd=./build/hakd
# one thread per run, passive OpenMP waits: two runs share the two cores without spinning
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

last=$((first + seeds - 1))
start=$(date +%s)
running=0 done_runs=0 pids=""
echo "efficacy: seeds $first..$last of hakd demo $* ($jobs at a time, one thread each) into $out/"
wait_one() {
  # waits for the oldest running seed and reports progress with an ETA
  set -- $pids
  pid=$1
  shift
  pids="$*"
  if ! wait "$pid"; then
    echo "efficacy: a seed failed; see $out/seed*.log" >&2
    exit 1
  fi
  done_runs=$((done_runs + 1))
  running=$((running - 1))
  el=$(($(date +%s) - start))
  eta=$((el * (seeds - done_runs) / done_runs))
  printf 'efficacy: %d/%d seeds done, %dm%02ds elapsed, about %dm%02ds left\n' "$done_runs" "$seeds" \
    $((el / 60)) $((el % 60)) $((eta / 60)) $((eta % 60))
}
s=$first
while [ "$s" -le "$last" ]; do
  [ "$running" -ge "$jobs" ] && wait_one
  "$hakd" demo --seed "$s" --threads 1 --out "$out/seed$s" "$@" >"$out/seed$s.log" 2>&1 &
  pids="$pids $!"
  running=$((running + 1))
  s=$((s + 1))
done
while [ "$running" -gt 0 ]; do wait_one; done

files=""
s=$first
while [ "$s" -le "$last" ]; do files="$files $out/seed$s/results.tsv"; s=$((s + 1)); done
{
  echo "Command: bench/efficacy.sh --seeds $seeds --first $first --jobs $jobs --out $out $*"
  echo "Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //');" \
    "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset} OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-unset}"
  echo
  # shellcheck disable=SC2086
  "$hakd" stats $files
} >"$out/stats.md"
cat "$out/stats.md"
