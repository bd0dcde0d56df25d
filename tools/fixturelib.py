"""Writes golden fixtures as safetensors files without the safetensors package (Debian has
only python3-torch). Run generators with /usr/bin/python3."""
import json
import os
import struct

import torch

_DTYPES = {torch.float32: "F32", torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.float64: "F64"}

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def save(path, tensors, metadata=None):
    """tensors: dict name -> torch.Tensor (float32/float64/int64/int32/uint8). Writes the
    safetensors layout: u64 header length, JSON header, raw little-endian data."""
    header = {}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        raw = t.numpy().tobytes()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    full = os.path.join(FIXTURES, path) if not os.path.isabs(path) else path
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    return full


# ---- deterministic parameter fill shared with tests/param_fill.h ----------------------------
# Model parity fixtures would be megabytes if they stored weights, so both sides fill every
# parameter/buffer from its state_dict name with the same integer hash; fixtures store only
# inputs and outputs.
import numpy as _np


def _fnv1a32(s):
    h = 0x811C9DC5
    for b in s.encode():
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def _uniform01(name, n):
    i = _np.arange(n, dtype=_np.uint64)
    x = (_np.uint64(_fnv1a32(name)) + i * _np.uint64(0x9E3779B1)) & _np.uint64(0xFFFFFFFF)
    x ^= x >> _np.uint64(16)
    x = (x * _np.uint64(0x85EBCA6B)) & _np.uint64(0xFFFFFFFF)
    x ^= x >> _np.uint64(13)
    x = (x * _np.uint64(0xC2B2AE35)) & _np.uint64(0xFFFFFFFF)
    x ^= x >> _np.uint64(16)
    return (x >> _np.uint64(8)).astype(_np.float64) * (1.0 / 16777216.0)


def param_fill_value(name, shape):
    """float32 numpy array for parameter `name` of `shape` (see tests/param_fill.h)."""
    n = int(_np.prod(shape)) if len(shape) else 1
    u = _uniform01(name, n)
    if name.endswith("num_batches_tracked"):
        v = _np.zeros(n)
    elif name.endswith("running_var"):
        v = 0.5 + u
    elif len(shape) >= 2:
        fan_in = n // shape[0]
        v = (2.0 * u - 1.0) * _np.sqrt(3.0 / fan_in)
    elif name.endswith(".weight"):
        v = 0.5 + u
    else:
        v = (2.0 * u - 1.0) * 0.1
    return v.astype(_np.float32).reshape(shape)


def param_fill(module):
    """Fills every parameter and buffer of a torch module by name, in place."""
    with torch.no_grad():
        for name, t in list(module.state_dict(keep_vars=True).items()):
            if t.dtype.is_floating_point:
                t.copy_(torch.from_numpy(param_fill_value(name, list(t.shape))))
