#!/bin/sh
# Seconds per training step under OpenMP wait policies, on an idle and a loaded machine (README,
# "Threads and shared machines"). Usage:
#   bench/wait_policy.sh [HAKD_BEFORE] [HAKD_AFTER]
# HAKD_BEFORE: a hakd built before the passive default (optional); HAKD_AFTER: this build
# (build/hakd). Rows: idle (hakd at real-time priority, `chrt -f 10`, needs root: nothing else
# runs on the cores meanwhile), then the machine as it is with 0, 1 and 2 extra busy loops.
# Columns: HAKD_AFTER with nothing set (its default), then with each VAR=VALUE of SETTINGS
# (default: passive, GOMP_SPINCOUNT 1000 and 10000, active).
# Each cell: median of iterations 4..ITERS (16) of a deeplabv3-r18-d8 width 0.5, 64x64, batch 8
# step; a few seconds per cell on 2 cores, up to a minute for the default spin under load.
set -u
BEFORE=${1:-}
AFTER=${2:-build/hakd}
ITERS=${ITERS:-16}
SETTINGS=${SETTINGS:-OMP_WAIT_POLICY=passive GOMP_SPINCOUNT=1000 GOMP_SPINCOUNT=10000 OMP_WAIT_POLICY=active}
TMP=$(mktemp -d)
pids=""
# the busy loops must not outlive an interrupted run
trap 'rm -rf "$TMP"; [ -z "$pids" ] || kill $pids 2>/dev/null' EXIT
trap 'exit 130' INT TERM
"$AFTER" synth --out "$TMP/synth" >/dev/null || exit 1

# step HAKD PREFIX VAR=VALUE: the median seconds per step
step() {
  hakd=$1 prefix=$2
  shift 2
  rm -rf "$TMP/w"
  env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT "$@" $prefix "$hakd" train --model deeplabv3-r18-d8 --width 0.5 \
    --dataset generic --data-root "$TMP/synth" --crop 64x64 --batch 8 --iters "$ITERS" --log-every 1 --workers 1 \
    --threads 2 --work-dir "$TMP/w" >/dev/null 2>&1 || { printf '%10s' fail; return; }
  grep '"lr"' "$TMP/w/log.jsonl" | sed 's/.*"time": \([0-9.]*\).*/\1/' | tail -n +4 | sort -n |
    awk '{v[NR] = $1} END {printf "%10.3f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

row() {
  label=$1 prefix=$2
  printf '%-24s' "$label"
  [ -n "$BEFORE" ] && step "$BEFORE" "$prefix" X=1
  step "$AFTER" "$prefix" X=1
  for v in $SETTINGS; do step "$AFTER" "$prefix" "$v"; done
  echo
}

printf '%-24s' "machine"
[ -n "$BEFORE" ] && printf '%10s' before
printf '%10s' default
for v in $SETTINGS; do printf '%10s' "$(echo "$v" | sed 's/OMP_WAIT_POLICY=//; s/GOMP_SPINCOUNT=/spin/')"; done
echo
row "idle (chrt -f 10)" "chrt -f 10"
for busy in 0 1 2; do
  pids=""
  for i in $(seq 1 "$busy"); do sh -c 'while :; do :; done' & pids="$pids $!"; done
  row "load $(cut -d' ' -f1 /proc/loadavg) + $busy busy" ""
  for p in $pids; do kill "$p"; done
  pids=""
done
