"""Golden fixtures for the distillation losses (tests/test_distill.c).

An independent PyTorch implementation of HETEROAKD.md sections 2-5 (L_hakd with its reliability,
KMM and KEM), of Hinton KD, channel-wise distillation (CWD) and the FitNet feature loss. Values
are computed in float64 from float32 inputs; gradients come from autograd, with .detach() where
the spec makes a quantity a constant (S_t, Z_hyb, W). Each case stores its loss `<case>.loss`,
dLoss/dZ_s `<case>.grad` and, for HeteroAKD, the KEM weight map `<case>.weights`.
Run with /usr/bin/python3 (Debian's python3-torch)."""
import torch
import torch.nn.functional as F

import fixturelib

torch.manual_seed(20250407)
IGNORE = 255
EPS = 1e-6


def randn(*shape, scale=1.0):
    return torch.randn(*shape, dtype=torch.float32) * scale


# ---- HeteroAKD (HETEROAKD.md sections 1-5) ---------------------------------------------------

def align_to(z_s, z_t, labels):
    """Z_t bilinear (align_corners=False) and labels nearest onto Z_s's grid (section 1)."""
    size = z_s.shape[-2:]
    if z_t.shape[-2:] != size:
        z_t = F.interpolate(z_t, size=size, mode="bilinear", align_corners=False)
    if labels.shape[-2:] != size:
        labels = F.interpolate(labels[:, None].double(), size=size, mode="nearest")[:, 0].long()
    return z_t, labels


def reliability(z, labels, bce):
    """H(Z): per pixel CE (N,h,w), or per pixel and class one-vs-rest BCE (N,K,h,w) (section 2).
    Values at ignored pixels are placeholders (label 0); KEM gives them weight 0."""
    y = labels.clamp(max=z.shape[1] - 1) * (labels != IGNORE)
    if not bce:
        return -F.log_softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)
    onehot = F.one_hot(y, z.shape[1]).permute(0, 3, 1, 2).to(z.dtype)
    return F.binary_cross_entropy_with_logits(z, onehot, reduction="none")


def masked_softmax(e, valid, dim):
    """softmax of e over `dim` restricted to valid entries; 0 elsewhere and where none is valid."""
    e = e.masked_fill(~valid, float("-inf"))
    w = torch.softmax(e, dim=dim)
    return torch.nan_to_num(w, nan=0.0) * valid


def kem_weights(h_s, h_hyb, valid, bce, axis, kem):
    n = valid.shape[0]
    if not kem:
        count = valid.reshape(n, -1).sum(1).clamp(min=1).to(h_s.dtype)
        w = valid.to(h_s.dtype) / count.view(n, 1, 1)
        if bce:
            w = w[:, None].expand_as(h_s)
        return w.clone()
    d = (h_s - h_hyb).clamp(min=0)
    e = h_s + d
    if not bce:
        return masked_softmax(e.reshape(n, -1), valid.reshape(n, -1), 1).reshape(e.shape)
    k = e.shape[1]
    valid_k = valid[:, None].expand_as(e)
    if axis == "spatial":
        return masked_softmax(e.reshape(n, k, -1), valid_k.reshape(n, k, -1), 2).reshape(e.shape)
    return masked_softmax(e, valid_k, 1)


def hakd_loss(z_s, z_t, labels, T, bce, axis, kmm, kem):
    z_t, labels = align_to(z_s, z_t, labels)
    valid = labels != IGNORE
    zs = z_s.detach()
    zt = z_t.detach()
    h_s = reliability(zs, labels, bce)
    if kmm:
        h_t = reliability(zt, labels, bce)
        s_t = h_s / (h_t + h_s + EPS)
        if not bce:
            s_t = s_t[:, None]
        z_hyb = s_t * zt + (1 - s_t) * zs
    else:
        z_hyb = zt
    h_hyb = reliability(z_hyb, labels, bce)
    w = kem_weights(h_s, h_hyb, valid, bce, axis, kem).detach()
    if not bce:
        q = torch.softmax(z_hyb / T, dim=1)
        kl = (q * (torch.log_softmax(z_hyb / T, dim=1) - torch.log_softmax(z_s / T, dim=1))).sum(1)
    else:
        a, b = z_hyb / T, z_s / T
        q = torch.sigmoid(a)
        kl = q * (F.logsigmoid(a) - F.logsigmoid(b)) + (1 - q) * (F.logsigmoid(-a) - F.logsigmoid(-b))
    return T * T * (w * kl).sum() / z_s.shape[0], w


def hakd_inputs():
    """3 images: 0 has some ignored pixels, 1 has none valid, 2 is all valid. K = 4 classes;
    Z_s on a 4x5 grid, Z_t on 3x6, labels on 10x12 (all resized to 4x5). The teacher leans
    towards the label so reliabilities differ between the two."""
    n, k = 3, 4
    labels = torch.randint(0, k, (n, 10, 12), dtype=torch.int64)
    labels[0][torch.rand(10, 12) < 0.3] = IGNORE
    labels[1] = IGNORE
    z_s = randn(n, k, 4, 5, scale=1.5)
    z_t = randn(n, k, 3, 6, scale=2.0)
    near = F.interpolate(labels[:, None].double(), size=(3, 6), mode="nearest")[:, 0].long()
    z_t += 2.5 * F.one_hot(near.clamp(max=k - 1), k).permute(0, 3, 1, 2).float() * (near != IGNORE)[:, None]
    return z_s, z_t, labels


def hakd_cases(bce):
    z_s, z_t, labels = hakd_inputs()
    out = {"z_s": z_s, "z_t": z_t, "labels": labels.to(torch.int32)}
    names = []
    axes = ["spatial", "class"] if bce else ["spatial"]
    for axis in axes:
        for kmm in (1, 0):
            for kem in (1, 0):
                for T in (1, 4):
                    name = "%s%s_kmm%d_kem%d_T%d" % ("bce" if bce else "ce", "_" + axis if bce else "", kmm, kem, T)
                    grids = [("", z_t)]
                    if not bce and kmm and kem and T == 4:
                        # the same case with Z_t already on Z_s's grid (no resize)
                        grids.append(("_samegrid", F.interpolate(z_t, size=(4, 5), mode="bilinear",
                                                                 align_corners=False)))
                    for suffix, zt in grids:
                        zs = z_s.double().requires_grad_()
                        loss, w = hakd_loss(zs, zt.double(), labels, float(T), bce, axis, kmm, kem)
                        (grad,) = torch.autograd.grad(loss, zs)
                        case = name + suffix
                        names.append(case)
                        out[case + ".params"] = torch.tensor([int(bce), int(axis == "class"), 1 - kmm, 1 - kem, T],
                                                             dtype=torch.int64)
                        if suffix:
                            out[case + ".z_t"] = zt
                        out[case + ".loss"] = loss.detach().float().reshape(1)
                        out[case + ".grad"] = grad.float()
                        out[case + ".weights"] = w.float()
    return out, names


# ---- baselines -------------------------------------------------------------------------------

def kd_loss(s, t, T):
    """Hinton KD per pixel, mean over all N*h*w pixels, times T^2; t resized to s's grid."""
    if t.shape[-2:] != s.shape[-2:]:
        t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)
    q = torch.softmax(t / T, dim=1)
    kl = (q * (torch.log_softmax(t / T, dim=1) - torch.log_softmax(s / T, dim=1))).sum(1)
    return T * T * kl.sum() / kl.numel()


def cwd_loss(s, t, T):
    """Channel-wise distillation: softmax over h*w of each channel of x/T, KL(teacher||student),
    summed, / (N*C), times T^2; t resized to s's grid."""
    if t.shape[-2:] != s.shape[-2:]:
        t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)
    n, c = s.shape[:2]
    ls = torch.log_softmax(s.reshape(n, c, -1) / T, dim=2)
    lt = torch.log_softmax(t.reshape(n, c, -1) / T, dim=2)
    return T * T * (lt.exp() * (lt - ls)).sum() / (n * c)


def baseline_cases():
    out, names = {}, []
    cases = [("kd_T1", kd_loss, 1.0, (2, 5, 4, 6), (2, 5, 4, 6)),
             ("kd_T4", kd_loss, 4.0, (2, 5, 4, 6), (2, 5, 4, 6)),
             ("kd_T2_resize", kd_loss, 2.0, (2, 5, 4, 6), (2, 5, 3, 3)),
             ("cwd_T4", cwd_loss, 4.0, (2, 5, 4, 6), (2, 5, 4, 6)),
             ("cwd_T1", cwd_loss, 1.0, (2, 5, 4, 6), (2, 5, 4, 6)),
             ("cwd_T4_resize", cwd_loss, 4.0, (2, 5, 4, 6), (2, 5, 7, 5))]
    for name, fn, T, sshape, tshape in cases:
        s = randn(*sshape, scale=2.0)
        t = randn(*tshape, scale=2.0)
        sd = s.double().requires_grad_()
        loss = fn(sd, t.double(), T)
        (grad,) = torch.autograd.grad(loss, sd)
        names.append(name)
        out[name + ".s"] = s
        out[name + ".t"] = t
        out[name + ".T"] = torch.tensor([T], dtype=torch.float32)
        out[name + ".loss"] = loss.detach().float().reshape(1)
        out[name + ".grad"] = grad.float()

    # FitNet: student feature (2,3,4,5) -> 1x1 conv (3->6, no bias) -> BatchNorm (training mode,
    # batch statistics) vs the teacher feature (2,6,7,9) resized bilinearly to 4x5; MSE mean.
    x = randn(2, 3, 4, 5)
    w = randn(6, 3, 1, 1, scale=0.5)
    gamma = 0.5 + torch.rand(6)
    beta = randn(6, scale=0.1)
    f_t = randn(2, 6, 7, 9)
    params = [p.double().requires_grad_() for p in (x, w, gamma, beta)]
    xd, wd, gd, bd = params
    y = F.batch_norm(F.conv2d(xd, wd), None, None, gd, bd, training=True, eps=1e-5)
    target = F.interpolate(f_t.double(), size=(4, 5), mode="bilinear", align_corners=False)
    loss = F.mse_loss(y, target)
    grads = torch.autograd.grad(loss, params)
    names.append("fitnet")
    for key, v in zip(("x", "w", "gamma", "beta", "f_t"), (x, w, gamma, beta, f_t)):
        out["fitnet." + key] = v
    out["fitnet.loss"] = loss.detach().float().reshape(1)
    for key, g in zip(("gx", "gw", "ggamma", "gbeta"), grads):
        out["fitnet." + key] = g.float()
    return out, names


def main():
    for bce, path in ((False, "distill/hakd_ce.safetensors"), (True, "distill/hakd_bce.safetensors")):
        tensors, names = hakd_cases(bce)
        fixturelib.save(path, tensors, {"cases": ",".join(names)})
    tensors, names = baseline_cases()
    fixturelib.save("distill/baselines.safetensors", tensors, {"cases": ",".join(names)})


if __name__ == "__main__":
    main()
