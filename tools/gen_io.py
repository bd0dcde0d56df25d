"""Fixtures for tests/test_safetensors.c and tests/test_npy.c: a safetensors file written by
PyTorch through fixturelib, F16/BF16 tensors with torch's own float32 conversion, and .npy
files written by numpy (format 1.0 and 2.0). Run with /usr/bin/python3."""
import json
import os
import struct

import numpy as np
import torch

import fixturelib

IO_DIR = os.path.join(fixturelib.FIXTURES, "io")


def torch_written():
    tensors = {
        "layer.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) * 0.25 - 3,
        "index": torch.tensor([-5, 0, 2**40 + 7], dtype=torch.int64),
        "pixels": (torch.arange(6, dtype=torch.uint8) * 50).reshape(2, 3),
        "counts": torch.tensor([-2**31, 1, 2**31 - 1], dtype=torch.int32),
        "precise": torch.tensor([1.0 / 3.0, -1e-3], dtype=torch.float64),
        "empty": torch.zeros(0, 3),
    }
    fixturelib.save("io/torch_written.safetensors", tensors,
                    metadata={"format": "pt", "source": 'gen_io.py "torch" \u00e9'})


def save_raw(path, tensors):
    """fixturelib has no 16-bit float dtypes: same layout, raw bits taken through an int16 view."""
    dtype_names = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.contiguous()
        raw = (t.view(torch.int16) if t.element_size() == 2 else t).numpy().tobytes()
        header[name] = {"dtype": dtype_names[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(os.path.join(IO_DIR, path), "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def torch_half():
    torch.manual_seed(0)
    special = torch.tensor([0.0, -0.0, 1.0, -2.0, 65504.0, 1e-6, 3e-5, 1e-8, 1e-39, 3.0e38,
                            float("inf"), float("-inf"), float("nan"), 1.0 / 3.0])
    values = torch.cat([special, torch.randn(64 - len(special)) * 10])
    half = values.to(torch.float16)
    bhalf = values.to(torch.bfloat16)
    save_raw("torch_half.safetensors", {"half": half, "half_as_f32": half.float(),
                                        "bhalf": bhalf, "bhalf_as_f32": bhalf.float()})


def numpy_files():
    # Values the C test recomputes: i / 7 rounded to float32, as numpy does it.
    np.save(os.path.join(IO_DIR, "f32_2d.npy"), (np.arange(15).reshape(3, 5) / 7).astype("<f4"))
    np.save(os.path.join(IO_DIR, "i64_1d.npy"), np.array([-3, 0, 7, 2**40], dtype="<i8"))
    np.save(os.path.join(IO_DIR, "bool.npy"), np.array([[True, False, True], [False, False, True]]))
    with open(os.path.join(IO_DIR, "f64_v2.npy"), "wb") as f:
        np.lib.format.write_array(f, np.arange(6, dtype="<f8").reshape(2, 3) / 8, version=(2, 0))

if __name__ == "__main__":
    os.makedirs(IO_DIR, exist_ok=True)
    torch_written()
    torch_half()
    numpy_files()
