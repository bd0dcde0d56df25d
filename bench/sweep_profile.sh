#!/bin/sh
# Where the time goes at the size-sweep points: runs bench/op_profile.sh on each point that
# --only picks (the same "MODEL MODE SIZExSIZE bB" names and enumeration as
# compare_pytorch.sh --sweep) and prints a short markdown summary per point: the step (ms), its
# executed GFLOP/s and share of the fp32 peak, and the step split into
#   products      conv2d, conv2d_affine_act (inference conv with its BatchNorm/activation fused),
#                 depthwise_conv2d_tokens, linear, matmul, attention (inference): ms, share,
#                 executed GFLOP/s and share
#                 of peak (hakd bench's executed FLOPs over the products' time; the products
#                 are all it counts);
#   memory-bound  every other recorded op: BatchNorm, activations, resizes, softmax, LayerNorm,
#                 elementwise, pooling, losses, copies/permutes/concats (they count no FLOPs);
#   optimizer     optimizer step + zero_grad (training);
#   unattributed  the rest of the step: time between ops that no op records (the tape, the
#                 backward pass's own gradient accumulation, glue);
# then the top op kinds by share (products with their forward/backward GFLOP/s, which count every
# convolution tap, so they can exceed the executed figure). A table of all points ends the output.
#
# usage: bench/sweep_profile.sh [--only REGEX] [--sizes S1,S2,..] [--batches B1,..] [--peak GFLOPS]
#                               [--iters N] [--warmup W] [--threads T] [--top K] [--build DIR]
#                               [--raw DIR]
#   --only    extended regex on "MODEL MODE SIZExSIZE bB" (default: every point), e.g.
#             'segformer-b0 infer 128x128 b2|mbv2 train (128|256)x'
#   --peak    fp32 peak GFLOP/s for the share columns (default 209, bench/README.md's best
#             bench_peak figure on this machine); "measure" runs build/bench_peak once (under
#             PREFIX) and takes the larger of OpenBLAS sgemm and oneDNN matmul 2048^3
#   --iters, --warmup  op_profile's timed and warm-up steps per point (3, 2)
#   --top     op kinds listed per point (6)
#   --raw DIR keeps each point's full op_profile output in DIR
# PREFIX runs each profile under that command, e.g. PREFIX="chrt -f 10" (root), as in
# compare_pytorch.sh. Environment: BUILD (build dir, as --build), CC.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
build=${BUILD:-$(dirname "$here")/build}
only="" sizes=64,128,256,512,1024 batches=1,2 peak=209 iters=3 warmup=2 threads=$(nproc) top=6 raw=""
PREFIX=${PREFIX:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only=$2; shift ;;
    --sizes) sizes=$2; shift ;;
    --batches) batches=$2; shift ;;
    --peak) peak=$2; shift ;;
    --iters) iters=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --threads) threads=$2; shift ;;
    --top) top=$2; shift ;;
    --build) build=$2; shift ;;
    --raw) raw=$2; shift ;;
    -h|--help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "sweep_profile.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -f "$build/libhakd.a" ] || { echo "sweep_profile.sh: no $build/libhakd.a; build first (or pass --build DIR)" >&2; exit 1; }
if [ "$peak" = measure ]; then
  [ -x "$build/bench_peak" ] || { echo "sweep_profile.sh: no $build/bench_peak to measure the peak" >&2; exit 1; }
  line=$(OMP_NUM_THREADS=$threads $PREFIX "$build/bench_peak")
  peak=$(printf '%s\n' "$line" | sed 's/.*"sgemm_openblas": \([0-9.]*\).*"matmul_dnnl": \([0-9.]*\).*/\1 \2/' |
    awk '{ print ($1 > $2 ? $1 : $2) }')
  echo "peak: $line -> $peak GFLOP/s"
fi
[ -z "$raw" ] || mkdir -p "$raw"
summary=$(mktemp)
profile=$(mktemp)
trap 'rm -f "$summary" "$profile"' EXIT
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; threads $threads;" \
  "PREFIX '$PREFIX'; op_profile $warmup warm-up + $iters timed steps per point; fp32 peak $peak GFLOP/s;" \
  "OPENBLAS_CORETYPE '${OPENBLAS_CORETYPE:-}', OPENBLAS_L2_SIZE '${OPENBLAS_L2_SIZE:-}'"
echo
for size in $(echo "$sizes" | tr ',' ' '); do
  for model in deeplabv3-r18-d8 deeplabv3-r50-d8 deeplabv3-mbv2 segformer-b0; do
    for mode in infer train; do
      for batch in $(echo "$batches" | tr ',' ' '); do
        name="$model $mode ${size}x$size b$batch"
        case "$model/$mode/$batch" in deeplabv3-*/train/1) continue ;; esac # as compare_pytorch.sh
        if [ -n "$only" ] && ! printf '%s\n' "$name" | grep -qE -- "$only"; then continue; fi
        load=$(cut -d' ' -f1 /proc/loadavg)
        BUILD=$build $PREFIX "$here/op_profile.sh" --model "$model" --mode "$mode" --size "${size}x$size" \
          --batch "$batch" --iters "$iters" --warmup "$warmup" --threads "$threads" --top 0 >"$profile" ||
          { echo "sweep_profile.sh: op_profile failed on $name" >&2; exit 1; }
        [ -z "$raw" ] || cp "$profile" "$raw/$(echo "$name" | tr ' ' '_').txt"
        awk -v name="$name" -v peak="$peak" -v top="$top" -v load="$load" -v summary="$summary" '
          function product(k) { sub(/^T:/, "", k); return k ~ /^(conv2d|conv2d_affine_act|depthwise_conv2d_tokens|linear|matmul|attention)$/ }
          /median .* ms\/iter \(bench\), profiled mean/ {
            for (i = 1; i <= NF; i++) {
              if ($i == "median") median = $(i + 1)
              if ($i == "mean") step = $(i + 1)
            }
          }
          /optimizer .* zero_grad .* outside ops/ {
            for (i = 1; i <= NF; i++) {
              if ($i == "optimizer") optim = $(i + 1) + 0
              if ($i == "zero_grad") optim += $(i + 1)
              if ($i == "ops") outside = $(i + 1) + 0
            }
          }
          /^  executed .* GFLOP\/iter/ { gflop = $2 }
          /^op +fwd ms/ { kinds = 1; next }
          kinds && NF == 0 { kinds = 0 }
          kinds {
            n++; kind[n] = $1; ms[n] = $2 + $3; share[n] = $4
            rate[n] = ($7 == "fwd") ? sprintf(" (fwd %s, bwd %s GFLOP/s)", $8, $10) : ""
            if (product($1)) prod_ms += ms[n]; else mem_ms += ms[n]
          }
          END {
            if (!step) { print "sweep_profile.sh: no profile for " name > "/dev/stderr"; exit 1 }
            gfs = gflop / median * 1e3
            pgfs = prod_ms > 0 ? gflop / prod_ms * 1e3 : 0
            unattr = outside - optim
            if (unattr < 0) unattr = 0
            printf "**%s** (load %s): step %.1f ms (bench median; profiled mean %.1f), %.1f GFLOP/s executed = %.0f%% of %s.\n",
              name, load, median, step, gfs, 100 * gfs / peak, peak
            printf "products %.1f ms (%.0f%%) at %.0f GFLOP/s = %.0f%% of peak; memory-bound ops %.1f ms (%.0f%%); ",
              prod_ms, 100 * prod_ms / step, pgfs, 100 * pgfs / peak, mem_ms, 100 * mem_ms / step
            printf "optimizer %.1f ms (%.0f%%); unattributed %.1f ms (%.0f%%).\n", optim, 100 * optim / step, unattr,
              100 * unattr / step
            printf "top:"
            for (i = 1; i <= n && i <= top; i++) printf "%s %s %s%s", (i > 1 ? ";" : ""), kind[i], share[i], rate[i]
            printf "\n\n"
            memtop = ""
            for (i = 1; i <= n && split(memtop, t, ",") < 3; i++)
              if (!product(kind[i])) memtop = memtop (memtop == "" ? "" : ", ") kind[i] " " share[i]
            printf "| %s | %.1f | %.0f | %.0f%% | %.0f%% @ %.0f%% | %.0f%% | %.0f%% | %.0f%% | %s |\n", name, median, gfs,
              100 * gfs / peak, 100 * prod_ms / step, 100 * pgfs / peak, 100 * mem_ms / step, 100 * optim / step,
              100 * unattr / step, memtop >> summary
          }' "$profile"
      done
    done
  done
done
[ -s "$summary" ] || { echo "sweep_profile.sh: no point matches --only '$only'" >&2; exit 2; }
echo "| point | step ms | GFLOP/s | of peak | products (share @ of peak) | memory-bound | optimizer | unattributed | top memory-bound kinds |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
cat "$summary"
