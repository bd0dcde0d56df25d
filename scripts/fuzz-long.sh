#!/bin/sh
# The long fuzzing runs behind docs/RELIABILITY.md: each harness in turn (one job, nice), for
# SECONDS each (600 by default), from its seed corpus, continuing past crashes, OOMs and
# timeouts (-fork=1 -ignore_*) so that one run collects every distinct failure. Needs the
# build of `make fuzz-build`. Output: build-fuzz/long-<name>.log, new inputs in
# build-fuzz/corpus/<name>/, failures in build-fuzz/artifacts/<name>/.
#   sh scripts/fuzz-long.sh [HARNESS...]      (default: all)
SECONDS_EACH=${SECONDS_EACH:-600}
cd "$(dirname "$0")/.." || exit 1
for h in ${*:-safetensors npy png jpeg config pth}; do
  bin=build-fuzz/fuzz/fuzz_$h
  # A rebuild of build-fuzz (fixes found by the previous harness) holds this file meanwhile.
  while [ -e build-fuzz/.building ]; do sleep 5; done
  [ -x "$bin" ] || { echo "fuzz-long: $bin missing: run make fuzz-build" >&2; exit 1; }
  mkdir -p build-fuzz/corpus/$h build-fuzz/artifacts/$h
  echo "fuzz-long: $h for $SECONDS_EACH s, started $(date -u +%H:%M:%S)"
  OMP_NUM_THREADS=1 nice -n 10 "$bin" -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=5 -max_len=16384 -print_final_stats=1 \
    -artifact_prefix=build-fuzz/artifacts/$h/ build-fuzz/corpus/$h fuzz/corpus/$h >build-fuzz/long-$h.log 2>&1
  echo "fuzz-long: $h exit $?, ended $(date -u +%H:%M:%S); last status:"
  grep -E "^#[0-9]+" build-fuzz/long-$h.log | tail -n 1
  ls build-fuzz/artifacts/$h | sed 's/^/  artifact: /'
done
