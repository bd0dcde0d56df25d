"""Golden fixtures for conv2d, pooling, resizing and batchnorm (tests/test_op_{conv2d,pool,resize,batchnorm}.c).

Every case stores its inputs, PyTorch's output, a fixed random upstream gradient `gy` and PyTorch's
gradients for it (L = sum(y * gy)). Integer case parameters are an I64 tensor `<case>.params`.
Run with /usr/bin/python3 (Debian's python3-torch)."""
import torch
import torch.nn.functional as F

import fixturelib

torch.manual_seed(20240611)


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float32)


def grads(y, inputs):
    gy = randn(*y.shape)
    gs = torch.autograd.grad(y, inputs, gy)
    return gy, gs


def conv_fixtures():
    # name, (N, Cin, H, W), Cout, kernel, stride, padding, dilation, groups, bias
    cases = [
        ("basic", (2, 2, 5, 7), 3, 3, 1, 1, 1, 1, True),
        ("stride2", (1, 3, 9, 8), 4, 3, 2, 1, 1, 1, False),
        ("dilation2", (1, 3, 9, 7), 2, 3, 1, 2, 2, 1, True),
        ("dilation4", (1, 2, 11, 10), 3, 3, 1, 4, 4, 1, False),
        ("groups2", (2, 4, 6, 5), 4, 3, 1, 1, 1, 2, True),
        ("depthwise_s1", (2, 3, 7, 6), 3, 3, 1, 1, 1, 3, True),
        ("depthwise_s2", (1, 3, 9, 8), 3, 3, 2, 1, 1, 3, False),
        ("pointwise", (2, 4, 5, 3), 5, 1, 1, 0, 1, 1, True),
        ("pointwise_s2", (1, 4, 7, 7), 6, 1, 2, 0, 1, 1, False),
        ("stem7x7_s2", (1, 2, 11, 9), 3, 7, 2, 3, 1, 1, False),
        ("patch7x7_s4", (1, 2, 13, 10), 2, 7, 4, 3, 1, 1, True),
        ("sr8x8_s8", (1, 2, 16, 9), 2, 8, 8, 0, 1, 1, True),
    ]
    out = {}
    for name, xshape, cout, k, stride, pad, dil, groups, has_bias in cases:
        x = randn(*xshape).requires_grad_()
        w = (randn(cout, xshape[1] // groups, k, k) * 0.5).requires_grad_()
        b = randn(cout).requires_grad_() if has_bias else None
        y = F.conv2d(x, w, b, stride=stride, padding=pad, dilation=dil, groups=groups)
        inputs = [x, w] + ([b] if has_bias else [])
        gy, gs = grads(y, inputs)
        out[name + ".params"] = torch.tensor([stride, pad, dil, groups, int(has_bias)], dtype=torch.int64)
        out[name + ".x"] = x
        out[name + ".w"] = w
        if has_bias:
            out[name + ".b"] = b
            out[name + ".gb"] = gs[2]
        out[name + ".y"] = y
        out[name + ".gy"] = gy
        out[name + ".gx"] = gs[0]
        out[name + ".gw"] = gs[1]
    fixturelib.save("ops/conv2d.safetensors", out, {"cases": ",".join(c[0] for c in cases)})


def pool_fixtures():
    out = {}
    # name, kind, (N, C, H, W), kernel, stride, padding (adaptive: out_h, out_w)
    cases = [
        ("max_k3s2p1", "max", (2, 2, 9, 9), 3, 2, 1),
        ("max_k2s2p0", "max", (1, 2, 7, 6), 2, 2, 0),
        ("max_k3s1p1", "max", (1, 1, 5, 6), 3, 1, 1),
        ("avg_k3s1p1", "avg", (1, 2, 5, 6), 3, 1, 1),
        ("avg_k2s2p0", "avg", (2, 1, 7, 6), 2, 2, 0),
        ("avg_k3s2p1", "avg", (1, 2, 8, 7), 3, 2, 1),
        ("adaptive_1", "adaptive", (2, 2, 7, 10), 1, 1, 0),
        ("adaptive_2", "adaptive", (1, 2, 7, 10), 2, 2, 0),
        ("adaptive_3", "adaptive", (1, 2, 7, 10), 3, 3, 0),
        ("adaptive_6", "adaptive", (1, 2, 7, 10), 6, 6, 0),
        ("adaptive_6_from5", "adaptive", (1, 1, 5, 5), 6, 6, 0),
        ("adaptive_3x2_from6", "adaptive", (1, 2, 6, 6), 3, 2, 0),
    ]
    for name, kind, xshape, a, b, c in cases:
        x = randn(*xshape).requires_grad_()
        if kind == "max":
            y = F.max_pool2d(x, a, b, c)
        elif kind == "avg":
            y = F.avg_pool2d(x, a, b, c, count_include_pad=True)
        else:
            y = F.adaptive_avg_pool2d(x, (a, b))
        gy, (gx,) = grads(y, [x])
        out[name + ".params"] = torch.tensor([a, b, c], dtype=torch.int64)
        out[name + ".x"] = x
        out[name + ".y"] = y
        out[name + ".gy"] = gy
        out[name + ".gx"] = gx
    fixturelib.save("ops/pool.safetensors", out, {"cases": ",".join(c[0] for c in cases)})


def resize_fixtures():
    out = {}
    # name, mode, (N, C, H, W), out_h, out_w, align_corners
    cases = [
        ("bilinear_up", "bilinear", (1, 2, 5, 7), 8, 11, 0),
        ("bilinear_up_ac", "bilinear", (1, 2, 5, 7), 8, 11, 1),
        ("bilinear_down", "bilinear", (2, 1, 9, 8), 4, 3, 0),
        ("bilinear_down_ac", "bilinear", (2, 1, 9, 8), 4, 3, 1),
        ("bilinear_x4", "bilinear", (1, 1, 4, 3), 16, 12, 0),
        ("bilinear_to1_ac", "bilinear", (1, 1, 4, 5), 1, 2, 1),
        ("bilinear_same", "bilinear", (1, 1, 3, 4), 3, 8, 0),
        ("nearest_up", "nearest", (1, 2, 5, 7), 8, 11, 0),
        ("nearest_7to3", "nearest", (1, 1, 7, 7), 3, 3, 0),
        ("nearest_3to7", "nearest", (1, 1, 3, 3), 7, 7, 0),
        ("nearest_x2", "nearest", (1, 1, 3, 4), 6, 8, 0),
    ]
    for name, mode, xshape, oh, ow, ac in cases:
        x = randn(*xshape).requires_grad_()
        if mode == "bilinear":
            y = F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=bool(ac))
        else:
            y = F.interpolate(x, size=(oh, ow), mode="nearest")
        gy, (gx,) = grads(y, [x])
        out[name + ".params"] = torch.tensor([oh, ow, ac], dtype=torch.int64)
        out[name + ".x"] = x
        out[name + ".y"] = y
        out[name + ".gy"] = gy
        out[name + ".gx"] = gx
    # Integer label maps, resized through float (labels < 2^24 are exact) as mmseg does.
    label_cases = [
        ("labels_7to3", (2, 7, 7), 3, 3),
        ("labels_3to7", (1, 3, 3), 7, 7),
        ("labels_5x9to8x4", (1, 5, 9), 8, 4),
        ("labels4d_6to13", (1, 1, 6, 6), 13, 13),
    ]
    for name, shape, oh, ow in label_cases:
        labels = torch.randint(0, 19, shape, dtype=torch.int64)
        labels[..., 0, 0] = 255
        x = labels.float()
        if x.dim() == 3:
            y = F.interpolate(x[:, None], size=(oh, ow), mode="nearest")[:, 0]
        else:
            y = F.interpolate(x, size=(oh, ow), mode="nearest")
        out[name + ".params"] = torch.tensor([oh, ow, 0], dtype=torch.int64)
        out[name + ".x"] = labels.to(torch.int32)
        out[name + ".y"] = y.to(torch.int32)
    fixturelib.save("ops/resize.safetensors", out,
                    {"cases": ",".join(c[0] for c in cases), "label_cases": ",".join(c[0] for c in label_cases)})


def batchnorm_fixtures():
    out = {}
    # name, x shape, affine, training, momentum, eps
    cases = [
        ("train4d", (3, 4, 5, 6), True, True, 0.1, 1e-5),
        ("train2d", (6, 5), True, True, 0.1, 1e-5),
        ("train_noaffine", (2, 3, 4, 3), False, True, 0.3, 1e-3),
        ("eval4d", (2, 4, 3, 5), True, False, 0.1, 1e-5),
    ]
    for name, xshape, affine, training, momentum, eps in cases:
        c = xshape[1]
        x = (randn(*xshape) * 2.0 + 0.5).requires_grad_()
        weight = (randn(c) * 0.5 + 1.0).requires_grad_() if affine else None
        bias = randn(c).requires_grad_() if affine else None
        running_mean = randn(c) * 0.2
        running_var = torch.rand(c) + 0.5
        rm_before, rv_before = running_mean.clone(), running_var.clone()
        y = F.batch_norm(x, running_mean, running_var, weight, bias, training=training, momentum=momentum, eps=eps)
        inputs = [x] + ([weight, bias] if affine else [])
        gy, gs = grads(y, inputs)
        out[name + ".params"] = torch.tensor([int(affine), int(training)], dtype=torch.int64)
        out[name + ".hyper"] = torch.tensor([momentum, eps], dtype=torch.float32)
        out[name + ".x"] = x
        if affine:
            out[name + ".weight"] = weight
            out[name + ".bias"] = bias
            out[name + ".gweight"] = gs[1]
            out[name + ".gbias"] = gs[2]
        out[name + ".running_mean"] = rm_before
        out[name + ".running_var"] = rv_before
        out[name + ".running_mean_after"] = running_mean
        out[name + ".running_var_after"] = running_var
        out[name + ".y"] = y
        out[name + ".gy"] = gy
        out[name + ".gx"] = gs[0]
    fixturelib.save("ops/batchnorm.safetensors", out, {"cases": ",".join(c[0] for c in cases)})


if __name__ == "__main__":
    conv_fixtures()
    pool_fixtures()
    resize_fixtures()
    batchnorm_fixtures()
