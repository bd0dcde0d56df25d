#!/bin/sh
# CTest install.example_builds_against_installed_tree: installs the build tree into a temporary
# prefix (what `make install` does, with --prefix), builds examples/segment_image.c against the
# installed tree twice, through pkg-config and through CMake's find_package(hakd), and runs both
# on an image with weights made by the installed CLI (a 1-iteration training run): both must
# succeed and print the same segmentation.
# usage: install_test.sh BUILD_DIR SOURCE_DIR
set -eu
BUILD=$1
SRC=$2
FLAGS=${HAKD_EXAMPLE_FLAGS:-} # the sanitizer build's -fsanitize, empty otherwise
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PREFIX=$TMP/prefix
cmake --install "$BUILD" --prefix "$PREFIX" >/dev/null
for f in include/hakd/infer.h include/hakd/model.h bin/hakd; do
  [ -e "$PREFIX/$f" ] || { echo "install: $f missing"; exit 1; }
done
LIBDIR=$(dirname "$(find "$PREFIX" -name hakd.pc)")/..
for f in libhakd.a libhakd.so cmake/hakd/hakdConfig.cmake cmake/hakd/hakdTargets.cmake; do
  [ -e "$LIBDIR/$f" ] || { echo "install: $f missing under $LIBDIR"; exit 1; }
done

# weights and an image from the installed CLI
"$PREFIX/bin/hakd" synth --out "$TMP/data" --train 4 --val 1 --size 64x64 >/dev/null
"$PREFIX/bin/hakd" train --model deeplabv3-mbv2 --data-root "$TMP/data" --crop 64x64 --batch 2 --iters 1 \
  --threads 2 --memory-check 0 --work-dir "$TMP/run" >/dev/null 2>&1 || { echo "install: training failed"; exit 1; }
IMAGE=$(find "$TMP/data/images" -name '*.png' | head -n 1)

# 1. pkg-config (the shared library; rpath so the binary finds it where it was installed)
export PKG_CONFIG_PATH="$LIBDIR/pkgconfig"
CFLAGS=$(pkg-config --cflags hakd)
LIBS=$(pkg-config --libs hakd)
case "$CFLAGS" in *"$PREFIX"*) ;; *) echo "install: pkg-config --cflags '$CFLAGS' does not point into $PREFIX"; exit 1 ;; esac
cc -std=c11 -Wall -Wextra -Werror $FLAGS $CFLAGS "$SRC/examples/segment_image.c" -o "$TMP/seg_pkgconfig" $LIBS \
  -Wl,-rpath,"$(pkg-config --variable=libdir hakd)"
"$TMP/seg_pkgconfig" "$TMP/run/latest.safetensors" "$IMAGE" "$TMP/mask_pc.png" > "$TMP/out_pc.txt"

# 2. CMake find_package(hakd)
cmake -S "$SRC/examples" -B "$TMP/cmake-build" -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_FLAGS="$FLAGS" -DCMAKE_EXE_LINKER_FLAGS="$FLAGS" >/dev/null
cmake --build "$TMP/cmake-build" >/dev/null
"$TMP/cmake-build/segment_image" "$TMP/run/latest.safetensors" "$IMAGE" "$TMP/mask_cmake.png" > "$TMP/out_cmake.txt"

# the binaries use the installed library, not the build tree's
if ldd "$TMP/seg_pkgconfig" | grep -q "$BUILD"; then echo "install: example linked against the build tree"; exit 1; fi
grep -q "classes" "$TMP/out_pc.txt" || { echo "install: unexpected output"; cat "$TMP/out_pc.txt"; exit 1; }
cmp "$TMP/out_pc.txt" "$TMP/out_cmake.txt" || { echo "install: the two builds disagree"; exit 1; }
cmp "$TMP/mask_pc.png" "$TMP/mask_cmake.png" || { echo "install: masks differ"; exit 1; }
cat "$TMP/out_pc.txt"
echo "install: pkg-config and find_package builds of examples/segment_image.c agree"
