#!/bin/sh
# Side-by-side throughput of hakd and PyTorch on this CPU: for each case, `hakd bench` and
# bench/pytorch_bench.py run the same step (same model, shapes, losses, optimizer, thread count)
# alternately for several rounds (hakd first in odd rounds, PyTorch first in even ones); the table
# shows each side's median images/s, the median of the per-round ratios hakd/PyTorch, each side's
# peak RSS (largest over the rounds; PyTorch's includes the interpreter and libtorch, ~250 MB on
# its own) and hakd's achieved GFLOP/s (executed multiply-adds: hakd bench --help), also as a
# share of the machine's peak measured at the start by build/bench_peak: for fp32 the larger of
# OpenBLAS sgemm and oneDNN matmul 2048^3, for bf16 the AVX512-BF16 dot-product loop.
#
# usage: bench/compare_pytorch.sh [--quick] [--rounds R] [--iters N] [--warmup W] [--threads T]
#                                 [--build DIR] [--out FILE.jsonl] [--only REGEX] [--precision P]
#                                 [--sweep [--sizes S1,S2,..] [--batches B1,..] [--tsv FILE] [--plot PREFIX]]
#   --quick   small sizes (64x64; 64x128 for the 512x1024 case), 2 rounds of 1 + 2 iterations,
#             to check the script in about a minute; with --sweep: sizes 64,128, 1 timed step.
#   --sweep   the size sweep: deeplabv3-r18-d8, deeplabv3-r50-d8, deeplabv3-mbv2 and segformer-b0,
#             inference and training, square inputs of each size in --sizes (64,128,256,512,1024)
#             at each batch in --batches (1,2; the DeepLabV3 models train at batch >= 2 only).
#             Per point the two sides alternate A/B/A/B for R rounds (default 2) of 2 warm-up +
#             N (default 2) timed steps per side and run, and each side's best
#             (smallest) step over all its timed steps counts; bench/sweep_table.py prints ms per
#             image and the ratio PyTorch time / hakd time (> 1: hakd faster). Points already
#             complete in an existing --out file are not run again, a larger --rounds adds the
#             missing rounds to them (a sweep can be run in parts, points re-measured later;
#             --only REGEX picks points by "MODEL MODE SIZExSIZE bB"); --tsv writes the points,
#             --plot PREFIX draws PREFIX-<mode>-b<B>.png (ms per image against input pixels,
#             log-log, both sides) with build/bench_sweep_plot.
#   --only    run only the cases whose name matches the extended regex (e.g. 'infer|distill').
#   --precision bf16: hakd --precision bf16 against PyTorch's no-grad passes under
#             torch.autocast(cpu, bfloat16) and its training steps in fp32 (torch 1.13's CPU autocast
#             cannot train these models: no bfloat16 ReLU backward); the segformer-b0 infer case is
#             left out (its autocast fails in the MiT LayerNorm).
# Every JSON line of both sides is appended to --out (default: a temporary file that is removed).
# PREFIX runs both sides' processes under the same command, e.g. PREFIX="chrt -f 10"
# (root): real-time priority so that other jobs on a shared machine do not preempt either side;
# it is recorded in each JSON line ("prefix"); bench_peak runs under it too.
# Needs Debian's python3-torch (/usr/bin/python3) and a Release build (default: build/).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
build="$root/build"
rounds=3 iters=3 warmup=2 quick=0 threads=$(nproc) out="" only="" precision=fp32
sweep=0 sizes="" batches=1,2 tsv="" plot="" rounds_set=0 iters_set=0
python=${PYTHON:-/usr/bin/python3}
PREFIX=${PREFIX:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --rounds) rounds=$2; rounds_set=1; shift ;;
    --iters) iters=$2; iters_set=1; shift ;;
    --sweep) sweep=1 ;;
    --sizes) sizes=$2; shift ;;
    --batches) batches=$2; shift ;;
    --tsv) tsv=$2; shift ;;
    --plot) plot=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --threads) threads=$2; shift ;;
    --build) build=$2; shift ;;
    --out) out=$2; shift ;;
    --only) only=$2; shift ;;
    --precision) precision=$2; shift ;;
    -h|--help) sed -n '2,37p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare_pytorch.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$sweep" = 1 ]; then
  [ "$rounds_set" = 1 ] || rounds=2
  [ "$iters_set" = 1 ] || iters=2
  if [ "$quick" = 1 ]; then
    [ -n "$sizes" ] || sizes=64,128
    [ "$iters_set" = 1 ] || iters=1
  fi
  [ -n "$sizes" ] || sizes=64,128,256,512,1024
elif [ "$quick" = 1 ]; then
  rounds=2 iters=2 warmup=1 square=64x64 wide=64x128
else
  square=512x512 wide=512x1024
fi
hakd="$build/hakd"
[ -x "$hakd" ] || { echo "compare_pytorch.sh: no $hakd; build first (or pass --build DIR)" >&2; exit 1; }
"$python" -c "import torch" 2>/dev/null || { echo "compare_pytorch.sh: $python has no torch" >&2; exit 1; }
results=${out:-$(mktemp)}
[ -n "$out" ] || trap 'rm -f "$results"' EXIT

if [ "$sweep" = 1 ]; then
  hakd="$build/hakd"
  [ -x "$hakd" ] || { echo "compare_pytorch.sh: no $hakd; build first (or pass --build DIR)" >&2; exit 1; }
  "$python" -c "import torch" 2>/dev/null || { echo "compare_pytorch.sh: $python has no torch" >&2; exit 1; }
  results=${out:-$(mktemp)}
  [ -n "$out" ] || trap 'rm -f "$results"' EXIT
  touch "$results"
  echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; threads $threads;" \
    "precision $precision; PREFIX '$PREFIX'; sizes $sizes, batches $batches; per point $rounds rounds A/B of $warmup warm-up +" \
    "$iters timed steps per side, best step counts; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  # the machine's peaks (bench_peak), once per invocation: the table's share-of-peak column
  if [ -x "$build/bench_peak" ]; then
    load=$(cut -d' ' -f1 /proc/loadavg)
    line=$(OMP_NUM_THREADS=$threads $PREFIX "$build/bench_peak") &&
      echo "{\"side\": \"peak\", \"case\": \"peak\", \"round\": 0, \"load\": $load, \"result\": $line}" >>"$results"
    echo "  peaks (load $load): $line" >&2
  fi
  # smallest sizes first: a sweep cut short still covers every model
  for size in $(echo "$sizes" | tr ',' ' '); do
    for model in deeplabv3-r18-d8 deeplabv3-r50-d8 deeplabv3-mbv2 segformer-b0; do
      for mode in infer train; do
        for batch in $(echo "$batches" | tr ',' ' '); do
          name="$model $mode ${size}x$size b$batch"
          # BatchNorm after the ASPP's global pooling sees one value per channel at batch 1: both
          # sides refuse to train it (PyTorch: "Expected more than 1 value per channel")
          case "$model/$mode/$batch" in deeplabv3-*/train/1) continue ;; esac
          if [ -n "$only" ] && ! printf '%s\n' "$name" | grep -qE -- "$only"; then continue; fi
          done_runs=$(grep -cF "\"case\": \"$name\"" "$results" || true)
          [ "$done_runs" -lt $((2 * rounds)) ] || continue
          round=$((done_runs / 2 + 1)) # a larger --rounds adds rounds to a measured point
          while [ "$round" -le "$rounds" ]; do
            if [ $((round % 2)) = 1 ]; then order="hakd torch"; else order="torch hakd"; fi
            for side in $order; do
              load=$(cut -d' ' -f1 /proc/loadavg)
              if [ "$side" = hakd ]; then
                line=$($PREFIX "$hakd" bench --model "$model" --mode "$mode" --size "${size}x$size" --batch "$batch" \
                  --iters "$iters" --warmup "$warmup" --threads "$threads" --precision "$precision") || line=""
              else
                line=$($PREFIX "$python" "$here/pytorch_bench.py" --model "$model" --mode "$mode" --size "${size}x$size" \
                  --batch "$batch" --iters "$iters" --warmup "$warmup" --threads "$threads" --precision "$precision") ||
                  line=""
              fi
              [ -n "$line" ] || { echo "compare_pytorch.sh: $side failed on $name" >&2; exit 1; }
              echo "{\"side\": \"$side\", \"case\": \"$name\", \"round\": $round, \"load\": $load, \"prefix\": \"$PREFIX\"," \
                "\"result\": $line}" >>"$results"
              echo "  $name, $side (load $load): $line" >&2
            done
            round=$((round + 1))
          done
        done
      done
    done
  done
  echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  "$python" "$here/sweep_table.py" "$results" ${tsv:+--tsv "$tsv"}
  if [ -n "$plot" ] && [ -n "$tsv" ]; then
    for mode in infer train; do
      for batch in $(echo "$batches" | tr ',' ' '); do
        "$build/bench_sweep_plot" "$tsv" "$mode" "$batch" "$plot-$mode-b$batch.png"
      done
    done
  fi
  exit 0
fi

# case name | hakd bench / pytorch_bench.py arguments
cases="segformer-b0 train|--model segformer-b0 --mode train --size $square --batch 2
segformer-b0 infer|--model segformer-b0 --mode infer --size $square --batch 1
deeplabv3-r18-d8 train|--model deeplabv3-r18-d8 --mode train --size $square --batch 2
deeplabv3-mbv2 train|--model deeplabv3-mbv2 --mode train --size $square --batch 2
deeplabv3-r50-d8 infer|--model deeplabv3-r50-d8 --mode infer --size $wide --batch 1
distill r50-d8 -> segformer-b0 (HeteroAKD)|--model segformer-b0 --teacher deeplabv3-r50-d8 --mode distill --method heteroakd --size $square --batch 2"
[ "$precision" = fp32 ] || [ -n "$only" ] || only='segformer-b0 train|r18-d8 train|mbv2 train|r50-d8 infer|distill'
if [ -n "$only" ]; then
  cases=$(printf '%s\n' "$cases" | grep -E -- "^[^|]*($only)" || true)
  [ -n "$cases" ] || { echo "compare_pytorch.sh: no case matches --only '$only'" >&2; exit 2; }
fi

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; threads $threads; precision $precision;" \
  "PREFIX '$PREFIX'; $rounds rounds of $warmup warm-up + $iters timed iterations; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
peak_line=""
if [ -x "$build/bench_peak" ]; then
  peak_line=$(OMP_NUM_THREADS=$threads $PREFIX "$build/bench_peak" 2>/dev/null || true)
fi
torch_peak=$($PREFIX "$python" "$here/pytorch_bench.py" --sgemm-peak --threads "$threads" | sed 's/.*gflops": \([0-9.]*\).*/\1/')
echo "peaks: ${peak_line:-(bench_peak not built)}; torch.mm 2048^3: $torch_peak GFLOP/s"

run_side() { # side case args
  side=$1 name=$2
  shift 2
  if [ "$side" = hakd ]; then
    line=$($PREFIX "$hakd" bench "$@" --iters "$iters" --warmup "$warmup" --threads "$threads" --precision "$precision")
  else
    line=$($PREFIX "$python" "$here/pytorch_bench.py" "$@" --iters "$iters" --warmup "$warmup" --threads "$threads" \
      --precision "$precision")
  fi
  echo "{\"side\": \"$side\", \"case\": \"$name\", \"round\": $round, \"prefix\": \"$PREFIX\", \"result\": $line}" >>"$results"
  echo "  $side: $line" >&2
}

round=1
while [ "$round" -le "$rounds" ]; do
  echo "round $round/$rounds (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  printf '%s\n' "$cases" | while IFS='|' read -r name args; do
    # shellcheck disable=SC2086 # args is a word list
    if [ $((round % 2)) = 1 ]; then
      run_side hakd "$name" $args
      run_side torch "$name" $args
    else
      run_side torch "$name" $args
      run_side hakd "$name" $args
    fi
  done
  round=$((round + 1))
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

"$python" - "$results" "${peak_line:-{\}}" "$precision" <<'EOF'
import collections, json, statistics, sys

rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["case"], collections.defaultdict(dict))[r["side"]][r["round"]] = r["result"]
print()
peaks = json.loads(sys.argv[2])
if sys.argv[3] == "bf16":
    peak, peak_name = peaks.get("dot_bf16", 0), "bf16 dot peak"
else:
    peak, peak_name = max(peaks.get("sgemm_openblas", 0), peaks.get("matmul_dnnl", 0)), "fp32 peak"
print("| case | size x batch | hakd img/s | torch img/s | ratio | hakd RSS | torch RSS | hakd GFLOP/s | of %s |" % peak_name)
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for case, sides in rows.items():
    h, t = sides["hakd"], sides["torch"]
    rounds = sorted(set(h) & set(t))
    ratio = statistics.median(h[k]["images_per_s"] / t[k]["images_per_s"] for k in rounds)
    med = lambda side, key: statistics.median(side[k][key] for k in rounds)
    first = h[rounds[0]]
    gflops = med(h, "gflops")
    print("| %s | %s x %d | %.3f | %.3f | %.2f | %.0f MB | %.0f MB | %.1f | %s |" % (
        case, first["size"], first["batch"], med(h, "images_per_s"), med(t, "images_per_s"), ratio,
        max(h[k]["peak_rss_mb"] for k in rounds), max(t[k]["peak_rss_mb"] for k in rounds), gflops,
        "%.0f%%" % (100 * gflops / peak) if peak > 0 else "n/a"))
EOF
