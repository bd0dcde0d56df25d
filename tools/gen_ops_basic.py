"""Golden fixtures for the basic ops (tests/test_op_{elementwise,reduce,activation,linear,matmul,shape,
softmax,layernorm,loss}.c).

Every case stores its inputs, PyTorch's output `y`, a fixed random upstream gradient `gy` and PyTorch's
gradients `g<input>` for it (L = sum(y * gy)). Integer case parameters are an I64 tensor `<case>.params`,
real ones an F64 tensor `<case>.fparams`. Run with /usr/bin/python3 (Debian's python3-torch)."""
import torch
import torch.nn.functional as F

import fixturelib

torch.manual_seed(20240612)


def randn(*shape, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float32) * scale).requires_grad_()


def record(out, case, y, inputs, params=None, fparams=None):
    """inputs: dict name -> tensor (float leaves get a gradient `g<name>`, others are stored as is)."""
    diff = {k: v for k, v in inputs.items() if v.dtype == torch.float32 and v.requires_grad}
    gy = torch.randn(*y.shape, dtype=torch.float32)
    grads = torch.autograd.grad(y, list(diff.values()), gy, allow_unused=True) if diff else []
    for name, t in inputs.items():
        out[f"{case}.{name}"] = t
    out[f"{case}.y"] = y
    out[f"{case}.gy"] = gy
    for name, g in zip(diff.keys(), grads):
        out[f"{case}.g{name}"] = g if g is not None else torch.zeros_like(diff[name])
    if params is not None:
        out[f"{case}.params"] = torch.tensor(params, dtype=torch.int64)
    if fparams is not None:
        out[f"{case}.fparams"] = torch.tensor(fparams, dtype=torch.float64)


def elementwise():
    out = {}
    ops = {"add": torch.add, "sub": torch.sub, "mul": torch.mul}
    # case: op, shape of a, shape of b
    cases = [
        ("add_same", "add", (3, 4, 5), (3, 4, 5)),
        ("add_channel", "add", (2, 3, 4, 5), (1, 3, 1, 1)),
        ("add_trailing", "add", (5,), (2, 3, 4, 5)),
        ("add_both", "add", (2, 1, 4, 1), (3, 1, 5)),
        ("sub_channel", "sub", (1, 3, 1, 1), (2, 3, 2, 3)),
        ("sub_both", "sub", (2, 1, 4, 1), (3, 1, 5)),
        ("mul_same", "mul", (3, 7), (3, 7)),
        ("mul_channel", "mul", (2, 3, 2, 3), (1, 3, 1, 1)),
        ("mul_trailing", "mul", (5,), (2, 3, 5)),
        ("mul_both", "mul", (2, 1, 4, 1), (3, 1, 5)),
        ("mul_scalar_like", "mul", (2, 3), (1,)),
    ]
    for case, op, sa, sb in cases:
        a, b = randn(*sa), randn(*sb)
        record(out, case, ops[op](a, b), {"a": a, "b": b})
    x = randn(2, 3, 4)
    record(out, "affine", x * 1.5 + (-0.25), {"x": x}, fparams=[1.5, -0.25])
    fixturelib.save("ops/elementwise.safetensors", out)


def reduce():
    out = {}
    x = randn(2, 3, 4, 5)
    record(out, "sum", torch.sum(x).reshape(1), {"x": x})
    x = randn(2, 3, 4, 5)
    record(out, "mean", torch.mean(x).reshape(1), {"x": x})
    # case: op, shape, dim, keepdim
    for case, op, shape, dim, keep in [
        ("sum_dim1_keep", "sum", (2, 3, 4, 5), 1, 1),
        ("sum_dim0", "sum", (3, 4), 0, 0),
        ("mean_dimlast", "mean", (2, 3, 4, 5), -1, 0),
        ("mean_dim2_keep", "mean", (2, 3, 4, 5), 2, 1),
    ]:
        x = randn(*shape)
        fn = torch.sum if op == "sum" else torch.mean
        record(out, case, fn(x, dim, keepdim=bool(keep)), {"x": x}, params=[dim, keep])
    fixturelib.save("ops/reduce.safetensors", out)


def activation():
    out = {}
    # Scale 4 puts inputs on both sides of relu6's clip at 6; no input within 1e-2 of a kink
    # (0, 6), where the one-sided derivative convention would matter.
    x = torch.randn(2, 3, 4, 5) * 4
    x = torch.where((x.abs() < 1e-2) | ((x - 6).abs() < 1e-2), x + 0.05, x).requires_grad_()
    for name, fn in [("relu", F.relu), ("relu6", F.relu6), ("gelu", lambda t: F.gelu(t, approximate="none")),
                     ("sigmoid", torch.sigmoid)]:
        xi = x.detach().clone().requires_grad_()
        record(out, name, fn(xi), {"x": xi})
    fixturelib.save("ops/activation.safetensors", out)


def linear():
    out = {}
    x, w, b = randn(2, 3, 5), randn(4, 5), randn(4)
    record(out, "bias_3d", F.linear(x, w, b), {"x": x, "w": w, "b": b})
    x, w = randn(6, 5), randn(3, 5)
    record(out, "nobias_2d", F.linear(x, w), {"x": x, "w": w})
    fixturelib.save("ops/linear.safetensors", out)


def matmul():
    out = {}
    # case: shape of a (as stored), shape of b (as stored), transpose_a, transpose_b
    cases = [
        ("batched", (2, 3, 4, 5), (2, 3, 5, 6), 0, 0),
        ("trans_a", (3, 5, 4), (3, 5, 3), 1, 0),
        ("trans_b", (3, 4, 5), (3, 3, 5), 0, 1),
        ("trans_ab", (3, 5, 4), (3, 3, 5), 1, 1),
        ("shared_b", (2, 3, 4, 5), (5, 3), 0, 0),
        ("shared_b_trans_a", (3, 5, 4), (5, 6), 1, 0),
        ("shared_b_trans_b", (3, 4, 5), (6, 5), 0, 1),
        ("plain_2d", (4, 5), (6, 5), 0, 1),
    ]
    for case, sa, sb, ta, tb in cases:
        a, b = randn(*sa), randn(*sb)
        y = torch.matmul(a.transpose(-1, -2) if ta else a, b.transpose(-1, -2) if tb else b)
        record(out, case, y, {"a": a, "b": b}, params=[ta, tb])
    fixturelib.save("ops/matmul.safetensors", out)


def shape():
    out = {}
    for case, xshape, perm in [
        ("permute_0231", (2, 3, 4, 5), (0, 2, 3, 1)),
        ("permute_0312", (2, 3, 4, 5), (0, 3, 1, 2)),
        ("permute_0213", (2, 3, 4, 5), (0, 2, 1, 3)),
        ("permute_5d", (2, 3, 1, 4, 2), (4, 2, 0, 3, 1)),
        ("permute_6d", (2, 1, 3, 2, 2, 3), (5, 0, 3, 4, 1, 2)),
    ]:
        x = randn(*xshape)
        record(out, case, x.permute(*perm).contiguous(), {"x": x}, params=list(perm))
    xs = [randn(2, 3, 4), randn(2, 1, 4), randn(2, 2, 4)]
    record(out, "concat_dim1", torch.cat(xs, 1), {f"x{i}": t for i, t in enumerate(xs)}, params=[1])
    xs = [randn(2, 3, 2), randn(2, 3, 3)]
    record(out, "concat_dimlast", torch.cat(xs, -1), {f"x{i}": t for i, t in enumerate(xs)}, params=[-1])
    xs = [randn(1, 2, 3), randn(2, 2, 3)]
    record(out, "concat_dim0", torch.cat(xs, 0), {f"x{i}": t for i, t in enumerate(xs)}, params=[0])
    # case: shape, dim, start, length
    for case, xshape, dim, start, length in [
        ("slice_dim1", (2, 6, 4), 1, 1, 3),
        ("slice_dimlast_negative_start", (2, 3, 5), -1, -3, 2),
        ("slice_dim0", (4, 3), 0, 2, 2),
    ]:
        x = randn(*xshape)
        record(out, case, x.narrow(dim, start, length).contiguous(), {"x": x}, params=[dim, start, length])
    x = randn(2, 3, 4)
    record(out, "reshape_infer", x.reshape(4, -1), {"x": x}, params=[4, -1])
    x = randn(2, 3, 4, 5)
    record(out, "flatten_1_2", torch.flatten(x, 1, 2), {"x": x}, params=[1, 2])
    fixturelib.save("ops/shape.safetensors", out)


def softmax():
    out = {}
    # case: log, shape, dim, input scale (50 makes exp overflow without the max subtraction)
    for case, log, xshape, dim, scale in [
        ("softmax_dim1", 0, (2, 5, 3, 4), 1, 1.0),
        ("softmax_dimlast", 0, (2, 3, 7), -1, 1.0),
        ("softmax_dim0", 0, (4, 3), 0, 1.0),
        ("softmax_large", 0, (3, 6), -1, 50.0),
        ("log_softmax_dim1", 1, (2, 5, 3, 4), 1, 1.0),
        ("log_softmax_dimlast", 1, (2, 3, 7), -1, 1.0),
        ("log_softmax_large", 1, (3, 6), -1, 50.0),
    ]:
        x = randn(*xshape, scale=scale)
        y = F.log_softmax(x, dim) if log else F.softmax(x, dim)
        record(out, case, y, {"x": x}, params=[log, dim])
    fixturelib.save("ops/softmax.safetensors", out)


def layernorm():
    out = {}
    x, w, b = randn(2, 3, 8), randn(8), randn(8)
    # Inputs with an offset: the variance must not suffer from E[x^2] - E[x]^2 cancellation.
    x = (x.detach() + 3.0).requires_grad_()
    record(out, "affine", F.layer_norm(x, (8,), w, b, 1e-5), {"x": x, "w": w, "b": b}, fparams=[1e-5])
    x = randn(4, 6)
    record(out, "plain", F.layer_norm(x, (6,), None, None, 1e-6), {"x": x}, fparams=[1e-6])
    fixturelib.save("ops/layernorm.safetensors", out)


def loss():
    out = {}
    # Cross entropy: labels I32, some pixels ignored.
    logits = randn(2, 5, 3, 4)
    labels = torch.randint(0, 5, (2, 3, 4), dtype=torch.int32)
    labels[0, 0, :2] = 255
    labels[1, 2, 3] = 255
    y = F.cross_entropy(logits, labels.long(), ignore_index=255).reshape(1)
    record(out, "ce_4d", y, {"x": logits, "labels": labels}, params=[255])
    logits = randn(6, 4)
    labels = torch.tensor([0, 3, -100, 1, 2, 3], dtype=torch.int32)
    y = F.cross_entropy(logits, labels.long(), ignore_index=-100).reshape(1)
    record(out, "ce_2d", y, {"x": logits, "labels": labels}, params=[-100])
    # Every pixel ignored: PyTorch returns nan (0/0); hakd's contract is a loss of exactly 0 with a
    # zero gradient, so the expected values are written explicitly.
    logits = randn(2, 3, 2, 2)
    labels = torch.full((2, 2, 2), 255, dtype=torch.int32)
    out["ce_all_ignored.x"] = logits
    out["ce_all_ignored.labels"] = labels
    out["ce_all_ignored.y"] = torch.zeros(1)
    out["ce_all_ignored.gy"] = torch.randn(1)
    out["ce_all_ignored.gx"] = torch.zeros_like(logits)
    out["ce_all_ignored.params"] = torch.tensor([255], dtype=torch.int64)
    # KL distillation loss: t is a constant target (no gradient stored for it).
    for case, shape, T in [("kl_T1", (2, 5, 3, 4), 1.0), ("kl_T4", (2, 5, 3, 4), 4.0), ("kl_2d", (6, 4), 2.0)]:
        s = randn(*shape, scale=2.0)
        t = (torch.randn(*shape) * 2.0)
        divisor = float(shape[0] * (shape[2] * shape[3] if len(shape) == 4 else 1))
        y = (F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="sum") * T * T / divisor).reshape(1)
        record(out, case, y, {"s": s, "t": t}, fparams=[T, divisor])
    fixturelib.save("ops/loss.safetensors", out)


if __name__ == "__main__":
    elementwise()
    reduce()
    activation()
    linear()
    matmul()
    shape()
    softmax()
    layernorm()
    loss()
