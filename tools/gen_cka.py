"""Golden linear CKA values for tests/test_cka.c (tests/fixtures/distill/cka.safetensors).

Linear CKA (Kornblith et al. 2019) in its feature-space form on column-centred float64 copies of
float32 inputs: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F); the Gram form <HKH, HLH> / (||HKH|| ||HLH||)
is checked to agree. Cases: `<case>.x`, `<case>.y` (n, p) / (n, q) float32, `<case>.cka` float64.
The `maps` case stores feature maps `maps.a` (N, C, H, W), `maps.b` and the CKA of their per-image
F.adaptive_avg_pool2d(., (8, 8)) features flattened to C*64 (hakd cka's convention).
Run with /usr/bin/python3 (Debian's python3-torch)."""
import torch
import torch.nn.functional as F

import fixturelib

torch.manual_seed(20250512)
GRID = 8


def cka_features(x, y):
    x = x.double()
    y = y.double()
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    return (y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm())


def cka_gram(x, y):
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k = h @ (x.double() @ x.double().T) @ h
    l = h @ (y.double() @ y.double().T) @ h
    return (k * l).sum() / (k.norm() * l.norm())


def pooled(maps):
    return F.adaptive_avg_pool2d(maps, (GRID, GRID)).flatten(1)


tensors = {}


def add(case, x, y):
    value = cka_features(x, y)
    assert abs(value - cka_gram(x, y)) < 1e-12, case
    tensors[f"{case}.x"] = x
    tensors[f"{case}.y"] = y
    tensors[f"{case}.cka"] = value.reshape(1)
    print(f"{case}: CKA {value.item():.12f}")


# Independent Gaussian features: a small value (its bias ~ sqrt(p q) / n).
add("random", torch.randn(16, 24), torch.randn(16, 10))
# Y a noisy nonlinear function of X: a large value below 1.
x = torch.randn(20, 12)
add("related", x, torch.tanh(x @ torch.randn(12, 7)) + 0.3 * torch.randn(20, 7))
# Post-ReLU-like features with a mean far above their spread (cancellation in the centring).
x = torch.relu(torch.randn(24, 9)) + 50.0
add("offset", x, x[:, :5] * 2.0 + 0.5 * torch.randn(24, 5) + 100.0)
# Feature maps of two stages: one larger than the grid, one smaller (pooling replicates).
a = torch.randn(6, 3, 10, 13)
b = F.avg_pool2d(a[:, :2], 2, 2, ceil_mode=True)[:, :, :4, :4].repeat(1, 3, 1, 1)[:, :5] + 0.4 * torch.randn(6, 5, 4, 4)
value = cka_features(pooled(a), pooled(b))
tensors["maps.a"] = a
tensors["maps.b"] = b
tensors["maps.cka"] = value.reshape(1)
print(f"maps: CKA {value.item():.12f}")

fixturelib.save("distill/cka.safetensors", tensors)
