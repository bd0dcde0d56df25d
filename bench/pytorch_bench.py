"""The PyTorch side of bench/compare_pytorch.sh: times the same step as `hakd bench` (same models,
shapes, losses, optimizer and thread count) and prints one JSON line with the same keys.

Models come from the parity fixture scripts (tools/gen_models_mit.py, tools/gen_models_cnn.py,
torchvision's deeplabv3_resnet50), the distillation losses from tools/gen_distill.py; this file
only assembles them into the steps src/train/bench.c times:
  infer    model.eval() under torch.no_grad(): logits at the model's output stride
  train    forward, CE on the logits upsampled bilinearly to the input size, backward, optimizer
           step (SGD momentum 0.9 wd 1e-4 lr 0.01 for CNNs; AdamW lr 6e-5 wd 0.01 with a 10x decode
           head for SegFormer)
  distill  teacher forward (eval, no grad), the student's train step plus HeteroAKD on stage 4
           (projectors 1x1 conv + BN to K channels on the student's logits grid, KD on the logits
           upsampled to the input size, L_hakd, L_proj) with the distiller's default weights.
Run with /usr/bin/python3 (Debian's python3-torch). --sgemm-peak prints torch.mm's GFLOP/s instead;
--profile N prints torch.autograd.profiler's top N ops (self CPU time) over the timed iterations
to stderr (for comparing with bench/op_profile.sh)."""
import argparse
import importlib
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
gen_models_mit = importlib.import_module("gen_models_mit")
gen_models_cnn = importlib.import_module("gen_models_cnn")
gen_distill = importlib.import_module("gen_distill")

IGNORE = 255


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Segmenter(nn.Module):
    """One interface over the reference modules: forward(x) -> (logits, aux or None, stages 1..4).
    family is "transformer" or "cnn"; head_prefix names the decode head's parameters."""

    def __init__(self, net, run, family, head_prefix):
        super().__init__()
        self.net = net
        self.run = run
        self.family = family
        self.head_prefix = head_prefix

    def forward(self, x):
        return self.run(x)


def build_model(name, num_classes):
    if name.startswith("segformer-b"):
        cfg = gen_models_mit.Config(int(name[len("segformer-b"):]), 1.0, num_classes, 0.1)
        net = gen_models_mit.SegformerForSemanticSegmentation(cfg)

        def run(x):
            logits, stages = net(x)
            return logits, None, stages

        return Segmenter(net, run, "transformer", "decode_head")
    if name == "deeplabv3-r50-d8":
        net = torchvision.models.segmentation.deeplabv3_resnet50(
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)

        def run(x):
            stages = []
            for key, module in net.backbone.items():
                x = module(x)
                if key.startswith("layer"):
                    stages.append(x)
            return net.classifier(stages[3]), None, stages

        return Segmenter(net, run, "cnn", "classifier")
    if name == "deeplabv3-r18-d8":
        backbone = gen_models_cnn.ResNet([2, 2, 2, 2], 8)
        net = gen_models_cnn.SegModel(backbone, backbone.stages, "classifier",
                                      gen_models_cnn.deeplab_head(512, num_classes))
    elif name == "deeplabv3-mbv2":
        backbone, stages_fn = gen_models_cnn.mobilenetv2_d8()
        net = gen_models_cnn.SegModel(backbone, stages_fn, "classifier", gen_models_cnn.deeplab_head(320, num_classes))
    elif name == "pspnet-r18-d8":
        backbone = gen_models_cnn.ResNet([2, 2, 2, 2], 8)
        net = gen_models_cnn.SegModel(backbone, backbone.stages, "decode_head",
                                      gen_models_cnn.PSPHead(512, 128, num_classes))
    else:
        sys.exit("pytorch_bench.py: no PyTorch reference for model '%s'" % name)

    def run(x):
        stages, logits, aux = net(x)
        return logits, aux, stages

    return Segmenter(net, run, "cnn", net.head_name)


def make_optimizer(model, extra_params):
    head = [p for n, p in model.net.named_parameters() if n.startswith(model.head_prefix)]
    rest = [p for n, p in model.net.named_parameters() if not n.startswith(model.head_prefix)]
    if model.family == "transformer":
        groups = [{"params": head, "lr": 6e-4}, {"params": rest + extra_params}]
        return torch.optim.AdamW(groups, lr=6e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01), "adamw"
    groups = [{"params": head + rest + extra_params}]
    return torch.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=1e-4), "sgd"


def projector(cin, k):
    """src/distill/conv1x1.c with BN: 1x1 conv without bias, then BatchNorm2d."""
    return nn.Sequential(nn.Conv2d(cin, k, 1, bias=False), nn.BatchNorm2d(k))


def heteroakd_terms(proj_s, proj_t, t_out, s_out, labels):
    """src/distill/distiller.c for the default options (stage 4, logits grid, T 4, kd_T 1):
    0.1 KD + L_hakd + L_proj."""
    size = labels.shape[-2:]
    up = lambda t, s: t if t.shape[-2:] == s else F.interpolate(t, size=s, mode="bilinear", align_corners=False)
    s_logits, t_logits = s_out[0], t_out[0]
    kd = gen_distill.kd_loss(up(s_logits, size), up(t_logits, size), 1.0)
    grid = s_logits.shape[-2:]
    f_s, f_t = s_out[2][3], t_out[2][3]
    z_s = up(proj_s(f_s), grid)
    z_t = up(proj_t(f_t), grid)
    l_hakd, _ = gen_distill.hakd_loss(z_s, z_t, labels, 4.0, False, "spatial", True, True)
    _, y = gen_distill.align_to(z_s, z_t, labels)
    l_proj = F.cross_entropy(up(proj_s(f_s.detach()), grid), y, ignore_index=IGNORE) + \
        F.cross_entropy(z_t, y, ignore_index=IGNORE)
    return 0.1 * kd + l_hakd + l_proj


def sgemm_peak(n=2048):
    a, b = torch.rand(n, n) - 0.5, torch.rand(n, n) - 0.5
    torch.mm(a, b)
    best, total, runs = 1e30, 0.0, 0
    while runs < 3 or (total < 0.2 and runs < 50):
        t0 = time.perf_counter()
        torch.mm(a, b)
        t = time.perf_counter() - t0
        best, total, runs = min(best, t), total + t, runs + 1
    return 2.0 * n ** 3 / best / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--mode", choices=["infer", "train", "distill"], default="train")
    ap.add_argument("--size", default="512x512")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--teacher")
    ap.add_argument("--method", default="heteroakd", choices=["heteroakd"])
    ap.add_argument("--num-classes", type=int, default=19)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: no-grad forward passes (infer, the teacher) under torch.autocast('cpu', bfloat16); "
                         "training steps stay fp32 (torch 1.13's CPU autocast has no bfloat16 ReLU backward, "
                         "'hardshrink_backward_cpu', nor a bfloat16 MiT LayerNorm)")
    ap.add_argument("--sgemm-peak", action="store_true")
    ap.add_argument("--profile", type=int, default=0, metavar="N")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.sgemm_peak:
        print(json.dumps({"torch_sgemm_gflops": round(sgemm_peak(), 1), "threads": torch.get_num_threads()}))
        return
    if not a.model or (a.mode == "distill" and not a.teacher):
        ap.error("--model is required, and --teacher with --mode distill")
    h, w = (int(v) for v in (a.size.split("x") if "x" in a.size else (a.size, a.size)))
    torch.manual_seed(a.seed)
    model = build_model(a.model, a.num_classes)
    teacher = build_model(a.teacher, a.num_classes) if a.mode == "distill" else None
    x = torch.randn(a.batch, 3, h, w)
    labels = torch.randint(0, a.num_classes, (a.batch, h, w))
    extra, optimizer, opt_name = [], None, "none"
    if teacher is not None:
        with torch.no_grad():
            f_s = model.eval()(x[:1, :, :64, :64])[2][3].shape[1]
            f_t = teacher.eval()(x[:1, :, :64, :64])[2][3].shape[1]
        proj_s, proj_t = projector(f_s, a.num_classes), projector(f_t, a.num_classes)
        extra = list(proj_s.parameters()) + list(proj_t.parameters())
    if a.mode != "infer":
        model.train()
        optimizer, opt_name = make_optimizer(model, extra)
    base_rss = peak_rss_mb()

    autocast = lambda: torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16")

    def step():
        if a.mode == "infer":
            with torch.no_grad(), autocast():
                return model.eval()(x)
        t_out = None
        if teacher is not None:
            with torch.no_grad(), autocast():
                t_out = teacher.eval()(x)
        out = model(x)
        if t_out is not None and a.precision == "bf16":  # losses in float32, as hakd computes them
            t_out = (t_out[0].float(), None, [f.float() for f in t_out[2]])
        up = lambda t: F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
        loss = F.cross_entropy(up(out[0]), labels, ignore_index=IGNORE)
        if out[1] is not None:
            loss = loss + 0.4 * F.cross_entropy(up(out[1]), labels, ignore_index=IGNORE)
        if teacher is not None:
            loss = loss + heteroakd_terms(proj_s, proj_t, t_out, out, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    times = []
    for _ in range(a.warmup):
        step()
    with torch.autograd.profiler.profile(enabled=a.profile > 0, record_shapes=True) as prof:
        for _ in range(a.iters):
            t0 = time.perf_counter()
            step()
            times.append(1e3 * (time.perf_counter() - t0))
    if a.profile > 0:
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=a.profile),
              file=sys.stderr)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.profile), file=sys.stderr)
    median = statistics.median(times)
    result = {"model": a.model, "mode": a.mode}
    if teacher is not None:
        result.update(teacher=a.teacher, method=a.method)
    result.update(size="%dx%d" % (h, w), batch=a.batch, images_per_s=round(1e3 * a.batch / median, 4),
                  ms_per_iter=round(median, 2), ms_min=round(min(times), 2), ms_max=round(max(times), 2),
                  peak_rss_mb=round(peak_rss_mb(), 1), base_rss_mb=round(base_rss, 1),
                  threads=torch.get_num_threads(),
                  precision=a.precision if a.mode == "infer" or a.teacher else "fp32", optimizer=opt_name, iters=a.iters,
                  warmup=a.warmup, torch=torch.__version__)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
