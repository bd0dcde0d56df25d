"""Golden values for src/train/optim.c: torch.optim.SGD / AdamW with two parameter groups
(the second with a 10x lr and no weight decay, like a head with norm/bias exemption) and
global-norm gradient clipping, three steps with fixed gradients."""
import torch

import fixturelib

torch.manual_seed(0)
w0 = torch.randn(4, 3)
b0 = torch.randn(3)
grads = [(torch.randn(4, 3), torch.randn(3)) for _ in range(3)]
out = {"w0": w0, "b0": b0}
for k, (gw, gb) in enumerate(grads):
    out[f"grad{k}.w"] = gw
    out[f"grad{k}.b"] = gb

for name, make in [
    ("sgd", lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=0.05)),
    ("adamw", lambda groups: torch.optim.AdamW(groups, lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)),
]:
    for clip in (0.0, 1.0):
        w = torch.nn.Parameter(w0.clone())
        b = torch.nn.Parameter(b0.clone())
        base = 0.1 if name == "sgd" else 0.01
        opt = make([{"params": [w]}, {"params": [b], "lr": base * 10, "weight_decay": 0.0}])
        for k, (gw, gb) in enumerate(grads):
            w.grad = gw.clone()
            b.grad = gb.clone()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_([w, b], clip)
            opt.step()
            out[f"{name}.clip{int(clip)}.step{k}.w"] = w.detach().clone()
            out[f"{name}.clip{int(clip)}.step{k}.b"] = b.detach().clone()

# poly schedule with mmseg linear warm-up: base 0.01, 100 iters, power 0.9, min 1e-4, warm-up 10 at ratio 0.1
lrs = []
for it in range(100):
    lr = (0.01 - 1e-4) * (1 - it / 100) ** 0.9 + 1e-4
    if it < 10:
        lr *= 1 - (1 - it / 10) * (1 - 0.1)
    lrs.append(lr)
out["poly_lr"] = torch.tensor(lrs, dtype=torch.float64)
fixturelib.save("train/optim.safetensors", out)
