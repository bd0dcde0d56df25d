"""Full-size .pth checks (not needed by CI; the files are 15-240 MB, so they go to /tmp, never into
the repository). For each model a state_dict is written by python3-torch's torch.save, read by
`hakd predict --weights X.pth` and the logits at the model's native resolution compared with
PyTorch's on the same input:

  torchvision deeplabv3_resnet50(aux_loss=True)      torch.save(model.state_dict())       deeplabv3-r50-d8
  Hugging Face SegformerForSemanticSegmentation B0   torch.save(model.state_dict())       segformer-b0
  mmseg DeepLabV3 R50-D8 (ResNetV1c + ASPPHead + aux) torch.save({"meta", "state_dict"}) deeplabv3-r50-d8-mmseg
  mmseg SegFormer-B0 (MiT + SegformerHead)           torch.save({"meta", "state_dict"})   segformer-b0-mmseg

and a pickle that calls os.system is shown refused without running. Weights are
fixturelib.param_fill's (no download here; torchvision's pretrained files have this layout).
Usage: /usr/bin/python3 tools/check_pth_full.py [path/to/hakd]   (default build/hakd)"""
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixturelib  # noqa: E402
import gen_models_mit as mit  # noqa: E402
import gen_pth  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
HAKD = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "hakd")
TMP = "/tmp/hakd_pth_full"
TOLERANCE = 1e-4  # max |hakd - torch| / max |torch|: float32 with other summation orders


def check(name, model_name, k, checkpoint, logits, x):
    path = os.path.join(TMP, name + ".pth")
    torch.save(checkpoint, path)
    np.save(os.path.join(TMP, "input.npy"), x.numpy())
    out = os.path.join(TMP, name + ".logits.npy")
    t0 = time.time()
    r = subprocess.run([HAKD, "predict", "--model", model_name, "--num-classes", str(k), "--weights", path,
                        "--input", os.path.join(TMP, "input.npy"), "--save-logits", out],
                       capture_output=True, text=True)
    seconds = time.time() - t0
    if r.returncode:
        print(r.stdout, r.stderr)
        raise SystemExit("%s: hakd predict failed" % name)
    got = np.load(out)
    want = logits.numpy()
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = np.abs(got - want).max()
    rel = diff / np.abs(want).max()
    print("%-28s %-24s %6.1f MB  logits %s  max|diff| %.3g  max|diff|/max|ref| %.3g  (hakd predict %.1f s)  %s"
          % (name, model_name, os.path.getsize(path) / 1e6, "x".join(map(str, want.shape)), diff, rel, seconds,
             "OK" if rel <= TOLERANCE else "FAIL"))
    for line in r.stderr.splitlines():
        if line.startswith("note:"):
            print("    " + line)
    return rel <= TOLERANCE


def main():
    os.makedirs(TMP, exist_ok=True)
    torch.manual_seed(0)
    ok = True
    with torch.no_grad():
        m = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                                               aux_loss=True)
        fixturelib.param_fill(m)
        m.eval()
        x = torch.randn(1, 3, 193, 257)
        logits = m.classifier(m.backbone(x)["out"])
        ok &= check("deeplabv3_resnet50_aux", "deeplabv3-r50-d8", 21, m.state_dict(), logits, x)

        hf = mit.build(0, num_labels=150).eval()
        x = torch.randn(1, 3, 256, 256)
        logits, stages = hf(x)
        ok &= check("segformer_b0_hf", "segformer-b0", 150, hf.state_dict(), logits, x)

        head = gen_pth.SegformerHead(mit.Config(0).hidden_sizes, 256, 150)
        holder = torch.nn.Module()
        holder.decode_head = head
        fixturelib.param_fill(holder)
        head.eval()
        sd = gen_pth.hf_to_mmseg_mit(hf.state_dict())
        sd.update(holder.state_dict())
        ok &= check("segformer_b0_mmseg", "segformer-b0-mmseg", 150, {"meta": gen_pth.mmseg_meta(), "state_dict": sd},
                    head(stages), x)

        mm = gen_pth.EncoderDecoder(gen_pth.ResNetV1c(1.0), gen_pth.ASPPHead(2048, 512, 19, (1, 12, 24, 36)),
                                    gen_pth.FCNHead(1024, 256, 19))
        fixturelib.param_fill(mm)
        mm.eval()
        x = torch.randn(1, 3, 193, 257)
        logits = mm.decode_head(mm.backbone(x)[3])
        ok &= check("deeplabv3_r50_mmseg", "deeplabv3-r50-d8-mmseg", 19,
                    {"meta": gen_pth.mmseg_meta(), "state_dict": mm.state_dict()}, logits, x)

    marker = "/tmp/hakd_pth_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    evil = os.path.join(ROOT, "tests", "fixtures", "pth", "refuse_os_system.pth")
    r = subprocess.run([HAKD, "convert", evil, os.path.join(TMP, "evil.safetensors")], capture_output=True, text=True)
    print("os.system pickle: exit %d, %s; %s exists: %s" % (r.returncode, r.stderr.strip(), marker,
                                                           os.path.exists(marker)))
    ok &= r.returncode == 1 and not os.path.exists(marker)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
