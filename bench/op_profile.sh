#!/bin/sh
# Builds bench/op_profile.c against a Release build's libhakd.a (default build/) with the linker's
# --wrap hooks it needs, then runs it with the given `hakd bench` options, e.g.
#   bench/op_profile.sh --model segformer-b0 --mode train --size 512x512 --batch 2 --iters 3
# Environment: BUILD (build dir), CC (cc); GOMP_SPINCOUNT=1000 unless OMP_WAIT_POLICY or
# GOMP_SPINCOUNT is set, as the CLI does.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build}
[ -f "$build/libhakd.a" ] || { echo "op_profile.sh: no $build/libhakd.a; build first (or set BUILD)" >&2; exit 1; }
exe="$build/op_profile"
wraps=""
for f in hakd_record hakd_ctx_reset hakd_model_forward hakd_backward hakd_optim_step hakd_params_zero_grad \
  hakd_model_macs hakd_model_executed_macs openblas_set_num_threads; do
  wraps="$wraps -Wl,--wrap=$f"
done
# Rebuilt every time (about a second), so it always matches the library.
# shellcheck disable=SC2046,SC2086 # word lists
${CC:-cc} -std=c11 -O2 -Wall -Wextra -D_GNU_SOURCE -I"$root/include" "$root/bench/op_profile.c" -o "$exe" $wraps \
  "$build/libhakd.a" $(pkg-config --libs openblas) -fopenmp -lpng -ljpeg -ldnnl -lm
# The CLI (apps/) spins briefly (GOMP_SPINCOUNT=1000) when no wait policy is set, and `hakd bench`
# steps are timed that way; op_profile links the library without the CLI, so it sets the same here
# (libgomp reads it at start-up). Without it the small steps come out up to 1.5x longer.
if [ -z "${OMP_WAIT_POLICY:-}" ] && [ -z "${GOMP_SPINCOUNT:-}" ]; then export GOMP_SPINCOUNT=1000; fi
exec "$exe" "$@"
