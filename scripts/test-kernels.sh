#!/bin/sh
# Runs the whole test suite once per kernel choice this CPU can run and prints a table: every
# OpenBLAS core type the CPU supports (OPENBLAS_CORETYPE) and oneDNN capped at AVX2
# (ONEDNN_MAX_CPU_ISA=AVX2, what a CPU without AVX-512 gives, which also refuses bf16), alone and
# together. The suite must pass in every row: a tolerance or a training outcome that holds only
# with one set of kernels is a bug in the test or the code.
#
# This script is the one place that sets these variables: the tests and CI never do, since a
# machine's environment may set them for good reasons.
#
# Usage: sh scripts/test-kernels.sh [BUILD_DIR]   (default build/, built first with `make build`)
set -u
cd "$(dirname "$0")/.."
BUILD=${1:-build}
make build BUILD="$BUILD" >/dev/null || { echo "test-kernels: build failed" >&2; exit 1; }
JOBS=$(nproc)
flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { case " $flags " in *" $1 "*) return 0 ;; esac; return 1; }

# name|environment assignments (empty = as the machine's environment has it)
rows="default|"
if has avx2 && has fma; then
  rows="$rows
Haswell|OPENBLAS_CORETYPE=Haswell
Zen|OPENBLAS_CORETYPE=Zen"
fi
if has avx512f && has avx512bw && has avx512vl && has avx512dq && has avx512cd; then
  rows="$rows
SkylakeX|OPENBLAS_CORETYPE=SkylakeX"
fi
if has avx512_bf16; then
  rows="$rows
Cooperlake|OPENBLAS_CORETYPE=Cooperlake"
fi
rows="$rows
oneDNN AVX2|ONEDNN_MAX_CPU_ISA=AVX2"
if has avx2 && has fma; then
  rows="$rows
Zen + oneDNN AVX2|OPENBLAS_CORETYPE=Zen ONEDNN_MAX_CPU_ISA=AVX2"
fi

logdir=$(mktemp -d)
table="| kernels | OpenBLAS core | oneDNN ISA | bf16 | passed | failed | failing tests |
|---|---|---|---|---|---|---|"
status=0
n=0
echo "$rows" | while IFS='|' read -r name assign; do
  n=$((n + 1))
  log="$logdir/$n.log"
  printf 'test-kernels: %-18s %s ...\n' "$name" "${assign:-(machine environment)}" >&2
  # OpenBLAS names the core it runs; oneDNN and the bf16 check are asked through hakd itself
  core=$(cd "$BUILD" && env $assign OPENBLAS_VERBOSE=2 ./test_core precision_names_parse_and_unknown_ones_are_errors 2>&1 |
    sed -n 's/^Core: //p' | head -1)
  isa=$(cd "$BUILD" && env $assign ONEDNN_VERBOSE=1 ./test_op_conv2d frozen_inputs_dnnl 2>&1 |
    sed -n 's/^onednn_verbose,info,cpu,isa://p' | head -1)
  bf16=$(env $assign "$BUILD/hakd" predict --precision bf16 2>&1 | grep -q 'AVX512-BF16' && echo refused || echo runs)
  (cd "$BUILD" && env $assign ctest -j "$JOBS" >"$log" 2>&1)
  passed=$(sed -n 's/.* \([0-9]*\) tests failed out of \([0-9]*\)/\2 \1/p' "$log" | awk '{print $1 - $2}')
  failed=$(sed -n 's/.* \([0-9]*\) tests failed out of .*/\1/p' "$log")
  failing=$(sed -n 's/^[[:space:]]*[0-9]* - \([^ ]*\) .*/\1/p' "$log" | tr '\n' ' ')
  echo "| $name | ${core:-?} | ${isa:-?} | $bf16 | ${passed:-?} | ${failed:-?} | ${failing:--} |" >>"$logdir/table"
done
echo
echo "$table"
cat "$logdir/table"
echo
echo "(logs: $logdir; environment of this machine: OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}, OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-unset})"
if grep -q '| [1-9][0-9]* | [^|]* |$' "$logdir/table" || grep -q '| ? |' "$logdir/table"; then exit 1; fi
exit 0
