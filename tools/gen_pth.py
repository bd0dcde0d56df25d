"""Golden fixtures for the PyTorch checkpoint reader (tests/test_pth.c), written by Debian's
python3-torch's own torch.save. Run with /usr/bin/python3. tests/fixtures/pth/:

  views.pth (+ views_expected.safetensors)   every storage dtype, 0-d, empty, a Parameter, strided
                                              views sharing one storage (transpose, slice, 4-d permute)
  deeplabv3-r18-w1_32-ddp.pth                torchvision DeepLabV3 layout (backbone/classifier/
                                              aux_classifier) on ResNet-18 at width 1/32 under
                                              {"meta", "state_dict", "optimizer"} with DataParallel's
                                              `module.` prefix (the mmseg / DDP checkpoint layout)
  segformer-b0-mmseg-w1_16.pth                mmseg SegFormer as mmseg saves it ({"meta", "state_dict"}):
                                              MiT-B0 at width 1/16 under mmseg's MixVisionTransformer
                                              names + SegformerHead (convs.N.conv/bn, fusion_conv, conv_seg)
  *.golden.safetensors                        input (uint8, x = (u8 - 128) / 64) and logits
and tests/fixtures/models/deeplabv3-r50-d8-mmseg-w1_32.safetensors: mmsegmentation's ResNetV1c-50
(deep stem) + ASPPHead (image_pool, aspp_modules, bottleneck, conv_seg; dilations 1,2,3,4 so the
atrous taps reach real pixels of the small map) in the param_fill parity format of
gen_models_cnn.py (a .pth of its 300+ tiny tensors would be 400 KB of zip headers).
Full-size checks (torchvision deeplabv3_resnet50 with aux, HF SegFormer-B0) are
tools/check_pth_full.py: they write to /tmp, never to the repository.
  refuse_*.pth                                what must be refused: a pickle that calls os.system, a
                                              pickled nn.Module, the legacy format, TorchScript, and
                                              hand-made pickles with storages out of range, huge or
                                              expanded views, a storage of the wrong size, a missing
                                              storage, a big-endian byteorder, a future version.
Model weights come from fixturelib.param_fill (deterministic, but the C tests read them from the
.pth, never fill them). Refusal fixtures are built with Python's pickle and zipfile (stored
entries, as torch.save writes, fixed timestamps); every file is byte-identical across runs except
refuse_legacy.pth, whose storage keys torch derives from object ids."""
import collections
import os
import pickle
import sys
import zipfile

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixturelib  # noqa: E402
import gen_models_cnn as cnn  # noqa: E402
import gen_models_mit as mit  # noqa: E402

DIR = os.path.join(fixturelib.FIXTURES, "pth")


def out(name):
    os.makedirs(DIR, exist_ok=True)
    return os.path.join(DIR, name)


def image(h, w):
    u8 = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8)
    return u8, (u8.float() - 128.0) / 64.0


# ---- views and dtypes -------------------------------------------------------------------------


def views_and_dtypes():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) * 0.5 - 2.0
    sd = collections.OrderedDict()
    sd["f32"] = base
    sd["f32_t"] = base.t()                 # stride (1, 4), same storage
    sd["f32_slice"] = base[1:, ::2]        # offset 4, stride (4, 2), same storage
    sd["f32_perm"] = torch.arange(24.0).reshape(2, 3, 4, 1).permute(2, 0, 3, 1)
    sd["f16"] = (base * 0.25).half()
    sd["bf16"] = (base * 0.125).bfloat16()
    sd["f64"] = base.double() / 3.0
    sd["i64"] = torch.tensor([-(2 ** 40), -1, 0, 7])
    sd["i32"] = torch.tensor([-5, 3], dtype=torch.int32)
    sd["i16"] = torch.tensor([-300, 300], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(3.5)
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = nn.Parameter(torch.tensor([1.0, 2.0]))
    torch.save(sd, out("views.pth"))
    golden = {}
    for k, v in sd.items():
        v = v.detach().contiguous()
        golden[k] = v.double() if v.is_floating_point() else v.long()
    fixturelib.save(out("views_expected.safetensors"), golden)


# ---- torchvision layout -----------------------------------------------------------------------


def torchvision_tiny():
    width, k = 1.0 / 32, 5
    backbone = cnn.ResNet([2, 2, 2, 2], 8, width=width)
    c3, c4 = cnn.scale(256, width), cnn.scale(512, width)
    m = cnn.SegModel(backbone, backbone.stages, "classifier", cnn.deeplab_head(c4, k, width), cnn.FCNHead(c3, k))
    fixturelib.param_fill(m)
    m.eval()
    u8, x = image(49, 65)
    with torch.no_grad():
        logits = m(x)[1]
    sd = m.state_dict()
    ddp = collections.OrderedDict(("module." + name, t) for name, t in sd.items())
    torch.save({"meta": {"epoch": 3, "CLASSES": ("a", "b"), "PALETTE": [[1, 2, 3]], "lr": 0.01, "ok": True, "x": None},
                "state_dict": ddp,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": [0, 1]}]}},
               out("deeplabv3-r18-w1_32-ddp.pth"))
    fixturelib.save(out("deeplabv3-r18-w1_32.golden.safetensors"), {"input": u8, "logits": logits})


# ---- mmsegmentation DeepLabV3 (ResNetV1c-50 + ASPPHead + FCN auxiliary head) --------------------


class ConvModule(nn.Module):
    """mmcv ConvModule(conv_cfg=None, norm_cfg=BN, act_cfg=ReLU): `conv` (bias-free), `bn`, ReLU."""

    def __init__(self, cin, cout, kernel, padding=0, dilation=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.act else x


class Bottleneck(nn.Module):
    """mmseg / torchvision Bottleneck (style 'pytorch': stride and dilation on the 3x3)."""

    def __init__(self, inplanes, planes, stride, dilation, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class ResNetV1c(nn.Module):
    """mmseg ResNetV1c-50, strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contract_dilation (the
    first block of a dilated layer uses half the dilation), with a width multiplier."""

    def __init__(self, width):
        super().__init__()
        half, inplanes = cnn.scale(32, width), cnn.scale(64, width)
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, 2, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, 1, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, inplanes, 3, 1, 1, bias=False), nn.BatchNorm2d(inplanes), nn.ReLU())
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        strides, dilations = (1, 2, 1, 1), (1, 1, 2, 4)
        for i, n in enumerate((3, 4, 6, 3)):
            planes = cnn.scale(64 << i, width)
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, strides[i], bias=False),
                                       nn.BatchNorm2d(planes * 4))
            d = dilations[i]
            blocks = [Bottleneck(inplanes, planes, strides[i], d // 2 if d > 1 else d, downsample)]
            inplanes = planes * 4
            blocks += [Bottleneck(inplanes, planes, 1, d, None) for _ in range(1, n)]
            setattr(self, "layer%d" % (i + 1), nn.Sequential(*blocks))

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        outs = []
        for i in range(4):
            x = getattr(self, "layer%d" % (i + 1))(x)
            outs.append(x)
        return outs


class ASPPHead(nn.Module):
    """mmseg/models/decode_heads/aspp_head.py with BaseDecodeHead's conv_seg and dropout."""

    def __init__(self, cin, channels, num_classes, dilations):
        super().__init__()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(cin, channels, 1))
        self.aspp_modules = nn.ModuleList(
            [ConvModule(cin, channels, 1 if d == 1 else 3, padding=0 if d == 1 else d, dilation=d) for d in dilations])
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3, padding=1)

    def forward(self, x):
        outs = [F.interpolate(self.image_pool(x), size=x.shape[2:], mode="bilinear", align_corners=False)]
        outs += [m(x) for m in self.aspp_modules]
        return self.conv_seg(self.dropout(self.bottleneck(torch.cat(outs, dim=1))))


class FCNHead(nn.Module):
    """mmseg FCNHead(num_convs=1, concat_input=False) as the auxiliary head."""

    def __init__(self, cin, channels, num_classes):
        super().__init__()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)
        self.convs = nn.Sequential(ConvModule(cin, channels, 3, padding=1))

    def forward(self, x):
        return self.conv_seg(self.dropout(self.convs(x)))


class EncoderDecoder(nn.Module):
    def __init__(self, backbone, decode_head, auxiliary_head=None):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        if auxiliary_head is not None:
            self.auxiliary_head = auxiliary_head


def mmseg_meta():
    return {"mmseg_version": "0.30.0", "config": "norm_cfg = dict(type='SyncBN')\n", "CLASSES": ("a", "b", "c"),
            "PALETTE": [[128, 64, 128], [244, 35, 232]], "iter": 80000, "epoch": 1, "time": "Sat Nov 28 2026",
            "hook_msgs": {"last_ckpt": "/work_dirs/iter_80000.pth"}, "seed": 0, "env_info": "sys.platform: linux"}


def mmseg_deeplabv3():
    width, k = 1.0 / 32, 5
    backbone = ResNetV1c(width)
    c3, c4 = cnn.scale(256, width) * 4, cnn.scale(512, width) * 4
    del c3  # the FCN auxiliary head maps onto aux_classifier (tested with the torchvision layout)
    m = EncoderDecoder(backbone, ASPPHead(c4, cnn.scale(512, width), k, (1, 2, 3, 4)))
    cnn.save_forward("deeplabv3-r50-d8-mmseg-w1_32", m, m.backbone, m.decode_head, None, (1, 3, 49, 65))


# ---- SegFormer: Hugging Face names, and mmseg's MiT + SegformerHead -----------------------------


class SegformerHead(nn.Module):
    """mmseg/models/decode_heads/segformer_head.py: per stage a 1x1 ConvModule, bilinear to stage 1,
    concat in stage order, fusion_conv (1x1 ConvModule), dropout, conv_seg."""

    def __init__(self, in_channels, channels, num_classes):
        super().__init__()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)
        self.convs = nn.ModuleList([ConvModule(c, channels, 1) for c in in_channels])
        self.fusion_conv = ConvModule(channels * len(in_channels), channels, 1)

    def forward(self, stages):
        size = stages[0].shape[2:]
        outs = [F.interpolate(conv(x), size=size, mode="bilinear", align_corners=False)
                for x, conv in zip(stages, self.convs)]
        return self.conv_seg(self.dropout(self.fusion_conv(torch.cat(outs, dim=1))))


def hf_to_mmseg_mit(sd):
    """Hugging Face MiT names -> mmseg MixVisionTransformer names (backbone.layers.i.0 = patch
    embedding, .1.j = blocks with nn.MultiheadAttention's fused in_proj and the Mix-FFN as 1x1
    convs ffn.layers.0/1/4, .2 = the stage's norm)."""
    out_sd = collections.OrderedDict()
    pre = "segformer.encoder."
    for name, t in sd.items():
        if not name.startswith(pre):
            continue
        n = name[len(pre):]
        parts = n.split(".")
        if parts[0] == "patch_embeddings":
            s, rest = parts[1], ".".join(parts[3:])
            kind = "projection" if parts[2] == "proj" else "norm"
            out_sd["backbone.layers.%s.0.%s.%s" % (s, kind, rest)] = t
        elif parts[0] == "layer_norm":
            out_sd["backbone.layers.%s.2.%s" % (parts[1], parts[2])] = t
        elif parts[0] == "block":
            s, j, rest = parts[1], parts[2], ".".join(parts[3:])
            b = "backbone.layers.%s.1.%s." % (s, j)
            what = rest.rsplit(".", 1)[1]
            if rest.startswith("attention.self.query."):
                q = t
                k = sd[pre + "block.%s.%s.attention.self.key.%s" % (s, j, what)]
                v = sd[pre + "block.%s.%s.attention.self.value.%s" % (s, j, what)]
                out_sd[b + "attn.attn.in_proj_" + what] = torch.cat([q, k, v], 0)
            elif rest.startswith("attention.self.key.") or rest.startswith("attention.self.value."):
                continue
            else:
                rules = [("layer_norm_1.", "norm1."), ("attention.self.sr.", "attn.sr."),
                         ("attention.self.layer_norm.", "attn.norm."), ("attention.output.dense.", "attn.attn.out_proj."),
                         ("layer_norm_2.", "norm2."), ("mlp.dense1.", "ffn.layers.0."),
                         ("mlp.dwconv.dwconv.", "ffn.layers.1."), ("mlp.dense2.", "ffn.layers.4.")]
                for a, c in rules:
                    if rest.startswith(a):
                        v = t
                        if a in ("mlp.dense1.", "mlp.dense2.") and what == "weight":
                            v = t.reshape(t.shape[0], t.shape[1], 1, 1)  # mmseg's Mix-FFN linears are 1x1 convs
                        out_sd[b + c + rest[len(a):]] = v
                        break
                else:
                    raise KeyError(name)
    return out_sd


def segformers():
    width, k = 1.0 / 16, 5
    u8, x = image(64, 64)
    hf = mit.build(0, width=width, num_labels=k).eval()
    with torch.no_grad():
        _, stages = hf(x)

    cfg = mit.Config(0, width, k)
    head = SegformerHead(cfg.hidden_sizes, cfg.decoder_hidden_size, k)
    holder = nn.Module()
    holder.decode_head = head
    fixturelib.param_fill(holder)
    head.eval()
    with torch.no_grad():
        logits = head(stages)
    sd = hf_to_mmseg_mit(hf.state_dict())
    sd.update(holder.state_dict())
    torch.save({"meta": mmseg_meta(), "state_dict": sd}, out("segformer-b0-mmseg-w1_16.pth"))
    fixturelib.save(out("segformer-b0-mmseg-w1_16.golden.safetensors"), {"input": u8, "logits": logits})


# ---- what must be refused ---------------------------------------------------------------------


def zip_archive(path, entries, archive="archive"):
    """A torch.save-like zip: stored entries under archive/."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in entries:
            info = zipfile.ZipInfo(archive + "/" + name, date_time=(1980, 1, 1, 0, 0, 0))  # reproducible bytes
            z.writestr(info, data, compress_type=zipfile.ZIP_STORED)


class FakeStorage:
    def __init__(self, cls, key, numel):
        self.cls, self.key, self.numel = cls, key, numel


class FakeTensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def crafted(path, tensors, storages, extra=()):
    """tensors: name -> FakeTensor; storages: key -> bytes."""
    import io
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=2).dump(collections.OrderedDict(tensors))
    entries = [("data.pkl", buf.getvalue())] + [("data/" + k, v) for k, v in storages.items()]
    entries += [("version", b"3\n")] + list(extra)
    zip_archive(path, entries)


class Evil:
    """Unpickling this runs os.system (touches a marker file the C test checks stays absent)."""

    def __reduce__(self):
        return os.system, ("touch /tmp/hakd_pth_pwned",)


def refusals():
    zip_archive(out("refuse_os_system.pth"), [("data.pkl", pickle.dumps({"w": Evil()}, protocol=2)),
                                              ("version", b"3\n")])
    # a whole module pickled (torch.save(model)): its class is a global
    torch.save(nn.Conv2d(1, 1, 1), out("refuse_module.pth"))
    sd = collections.OrderedDict(w=torch.ones(2, 2))
    torch.save(sd, out("refuse_legacy.pth"), _use_new_zipfile_serialization=False)
    torch.jit.save(torch.jit.script(nn.ReLU()), out("refuse_torchscript.pt"))
    f32 = b"\0\0\x80\x3f" * 4  # four 1.0 floats
    st = FakeStorage(torch.FloatStorage, "0", 4)
    crafted(out("refuse_out_of_range.pth"), {"w": FakeTensor(st, 2, (2, 2), (2, 1))}, {"0": f32})
    crafted(out("refuse_huge.pth"), {"w": FakeTensor(st, 0, (1 << 40, 1 << 40), (1, 1))}, {"0": f32})
    crafted(out("refuse_expanded.pth"), {"w": FakeTensor(st, 0, (1000000,), (0,))}, {"0": f32})
    crafted(out("refuse_storage_size.pth"), {"w": FakeTensor(FakeStorage(torch.FloatStorage, "0", 8), 0, (8,), (1,))},
            {"0": f32})
    crafted(out("refuse_missing_storage.pth"), {"w": FakeTensor(st, 0, (4,), (1,))}, {})
    crafted(out("refuse_big_endian.pth"), {"w": FakeTensor(st, 0, (4,), (1,))}, {"0": f32}, [("byteorder", b"big")])
    import io
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=2).dump(collections.OrderedDict(w=FakeTensor(st, 0, (4,), (1,))))
    zip_archive(out("refuse_version.pth"), [("data.pkl", buf.getvalue()), ("data/0", f32), ("version", b"99\n")])
    # a dict without tensors anywhere a state_dict is looked for
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, out("refuse_no_state_dict.pth"))


def fuzz_corpus():
    """Seeds of fuzz/corpus/pth: whole small .pth files, and bare pickles that fuzz_pth.c wraps into
    an archive with storages data/0..data/7 of 64 bytes (16 float32 / 8 int64 / 32 float16 each)."""
    import io
    import shutil
    corpus = os.path.join(fixturelib.FIXTURES, "..", "..", "fuzz", "corpus", "pth")
    os.makedirs(corpus, exist_ok=True)
    for name in ("views.pth", "refuse_os_system.pth", "refuse_module.pth", "refuse_legacy.pth",
                 "refuse_out_of_range.pth", "refuse_big_endian.pth", "refuse_no_state_dict.pth"):
        shutil.copy(out(name), os.path.join(corpus, name))
    f32 = FakeStorage(torch.FloatStorage, "0", 16)
    i64 = FakeStorage(torch.LongStorage, "1", 8)
    f16 = FakeStorage(torch.HalfStorage, "2", 32)
    sd = collections.OrderedDict()
    sd["conv.weight"] = FakeTensor(f32, 0, (4, 4), (4, 1))
    sd["conv.weight_t"] = FakeTensor(f32, 0, (4, 4), (1, 4))
    sd["slice"] = FakeTensor(f32, 5, (2, 3), (4, 2))
    sd["bn.num_batches_tracked"] = FakeTensor(i64, 3, (), ())
    sd["half"] = FakeTensor(f16, 0, (2, 4, 4), (16, 4, 1))
    ckpt = {"meta": {"iter": 2 ** 40, "neg": -7, "lr": 0.5, "ok": True, "no": False, "x": None, "t": (1, "a"),
                     "l": [1, [2.0]]}, "state_dict": sd}
    for proto in (2, 4):
        buf = io.BytesIO()
        TorchLikePickler(buf, protocol=proto).dump(ckpt)
        with open(os.path.join(corpus, "checkpoint_proto%d.pkl" % proto), "wb") as fp:
            fp.write(buf.getvalue())
    with open(os.path.join(corpus, "os_system.pkl"), "wb") as fp:
        fp.write(pickle.dumps({"w": Evil()}, protocol=2))


if __name__ == "__main__":
    torch.manual_seed(20261129)
    views_and_dtypes()
    torchvision_tiny()
    mmseg_deeplabv3()
    segformers()
    refusals()
    fuzz_corpus()
    for f in sorted(os.listdir(DIR)):
        print("%8d  %s" % (os.path.getsize(os.path.join(DIR, f)), f))
