#!/bin/sh
# ONNX export check (not needed by CI): three students are trained for a few iterations on a
# synthetic dataset (so BatchNorm statistics are not the identity), exported with `hakd export`,
# checked by onnx.checker (Debian's python3-onnx: HAKD_WITH_ONNX=1 sh scripts/install-deps.sh) and
# run in onnxruntime (npm's onnxruntime-node, installed outside the repository) on an input whose
# logits `hakd predict --save-logits` also writes. Prints the max relative error
# max|ort - hakd| / max|hakd| per model and fails above 1e-4.
#
# usage: tools/check_onnx.sh [BUILD_DIR]   (default build; env ORT_DIR: where onnxruntime-node is
#        or goes, default $HOME/.cache/hakd-ort; WORK: scratch directory, default a new temp dir)
set -eu
BUILD=${1:-build}
HAKD=$(cd "$BUILD" && pwd)/hakd
ORT_DIR=${ORT_DIR:-$HOME/.cache/hakd-ort}
WORK=${WORK:-$(mktemp -d)}
[ -x "$HAKD" ] || { echo "check_onnx: $HAKD not built (make build)"; exit 1; }
/usr/bin/python3 -c "import onnx" 2>/dev/null || { echo "check_onnx: python3-onnx missing: HAKD_WITH_ONNX=1 sh scripts/install-deps.sh"; exit 1; }
if [ ! -d "$ORT_DIR/node_modules/onnxruntime-node" ]; then
  # --ignore-scripts: the install script only fetches GPU extras; the CPU runtime is in the package
  mkdir -p "$ORT_DIR" && (cd "$ORT_DIR" && npm init -y >/dev/null && npm install --ignore-scripts onnxruntime-node >/dev/null)
fi
echo "check_onnx: work dir $WORK"
cd "$WORK"
"$HAKD" synth --out synth --train 16 --val 2 --size 96x96 >/dev/null
K=$(wc -l < synth/classes.txt)
# a batch of 2 normalised images (1, 3, H, W) each, as predict reads them from .npy
/usr/bin/python3 - <<'PY'
import numpy as np
rng = np.random.default_rng(0)
for i in range(2):
    np.save(f"x{i}.npy", rng.standard_normal((1, 3, 96, 96)).astype(np.float32))
PY
cat > run_ort.js <<'JS'
// node run_ort.js MODEL.onnx x0.npy x1.npy ... : runs the batch in onnxruntime, prints the max
// relative error against ref<i>.npy (hakd predict's logits) for each image.
const fs = require('fs');
const ort = require(process.env.ORT_DIR + '/node_modules/onnxruntime-node');
function readNpy(path) {
  const buf = fs.readFileSync(path);
  const headerLen = buf.readUInt16LE(8);
  const header = buf.toString('latin1', 10, 10 + headerLen);
  if (!header.includes("'<f4'")) throw new Error(path + ': not float32');
  const shape = header.match(/\(([^)]*)\)/)[1].split(',').filter(s => s.trim()).map(Number);
  const data = new Float32Array(buf.buffer.slice(buf.byteOffset + 10 + headerLen, buf.byteOffset + buf.length));
  return { shape, data };
}
(async () => {
  const [model, ...inputs] = process.argv.slice(2);
  const xs = inputs.map(readNpy), [, c, h, w] = xs[0].shape, n = xs.length;
  const batch = new Float32Array(n * c * h * w);
  xs.forEach((x, i) => batch.set(x.data, i * c * h * w));
  const session = await ort.InferenceSession.create(model);
  const out = await session.run({ input: new ort.Tensor('float32', batch, [n, c, h, w]) });
  const y = out.logits;
  let worst = 0;
  for (let i = 0; i < n; i++) {
    const ref = readNpy(inputs[i].replace('x', 'ref_'));
    if (JSON.stringify(ref.shape.slice(1)) !== JSON.stringify(y.dims.slice(1).map(Number)))
      throw new Error('shape ' + y.dims + ' vs ' + ref.shape);
    const per = ref.data.length, got = y.data.subarray(i * per, (i + 1) * per);
    let maxAbs = 0, maxDiff = 0;
    for (let j = 0; j < per; j++) {
      maxAbs = Math.max(maxAbs, Math.abs(ref.data[j]));
      maxDiff = Math.max(maxDiff, Math.abs(got[j] - ref.data[j]));
    }
    worst = Math.max(worst, maxDiff / maxAbs);
  }
  console.log(`logits [${y.dims}] max_rel_err ${worst.toExponential(2)}`);
  process.exit(worst <= 1e-4 ? 0 : 1);
})().catch(e => { console.error(e.message); process.exit(1); });
JS
status=0
# model | training flags (reference widths; the ASPP rates fit the 12x12 stride-8 map of a 96x96 input)
while read -r model flags; do
  "$HAKD" train --model "$model" --data-root synth --crop 96x96 --batch 4 --iters 4 --threads 2 \
    --memory-check 0 --work-dir "w_$model" $flags >/dev/null 2>&1 || { echo "$model: training failed"; status=1; continue; }
  eflags=$(echo "$flags" | sed 's/--aux [^ ]*//')
  "$HAKD" export --model "$model" --num-classes "$K" --weights "w_$model/latest.safetensors" --size 96x96 \
    --out "$model.onnx" $eflags
  /usr/bin/python3 -c "import onnx, sys; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True); print(sys.argv[1] + ': onnx.checker (full_check) passed')" "$model.onnx"
  for i in 0 1; do
    "$HAKD" predict --model "$model" --num-classes "$K" --weights "w_$model/latest.safetensors" --input "x$i.npy" \
      --save-logits "ref_$i.npy" $eflags >/dev/null 2>&1
  done
  printf '%s: onnxruntime vs hakd predict, batch of 2: ' "$model"
  ORT_DIR="$ORT_DIR" node run_ort.js "$model.onnx" x0.npy x1.npy || status=1
done <<'MODELS'
segformer-b0
deeplabv3-r18-d8 --aspp-dilations 2,4,6 --aux 0
deeplabv3-mbv2 --aspp-dilations 2,4,6
MODELS
[ $status = 0 ] && echo "check_onnx: all passed" || echo "check_onnx: FAILED"
exit $status
