#!/bin/sh
# Installs the Debian packages hakd builds against, only those missing.
# Called by `make`; root installs with apt-get, anyone else gets the command to run.
set -e
# libopenmpi-dev + openmpi-bin: data-parallel runs (mpirun -np N hakd train) and their tests.
PKGS="build-essential cmake pkg-config libopenblas-dev libdnnl-dev libpng-dev libjpeg62-turbo-dev libopenmpi-dev openmpi-bin"
[ "${HAKD_WITH_TORCH:-0}" = 1 ] && PKGS="$PKGS python3-torch python3-torchvision python3-numpy"
# tools/check_onnx.sh only: onnx.checker (onnxruntime-node comes from npm, outside the repository).
[ "${HAKD_WITH_ONNX:-0}" = 1 ] && PKGS="$PKGS python3-onnx python3-numpy"
# make fuzz-build / fuzz-smoke only: clang with its libFuzzer/sanitizer runtimes and OpenMP.
[ "${HAKD_WITH_FUZZ:-0}" = 1 ] && PKGS="$PKGS clang libclang-rt-dev libomp-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "install-deps: installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing
else
  echo "install-deps: missing Debian packages:$missing" >&2
  echo "install-deps: run as root: apt-get install$missing" >&2
  exit 1
fi
