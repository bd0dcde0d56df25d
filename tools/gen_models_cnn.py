"""Parity fixtures for the CNN segmentation models (tests/test_model_cnn.c).

Every parameter and buffer is filled from its state_dict name with fixturelib.param_fill (the C test
does the same with tests/param_fill.h), so a fixture stores only:
  input        U8 (N, 3, H, W) image; the network input is (input - 128) / 64, exact in float32
  logits       the head's logits at its native output stride (before any upsampling)
  aux          the FCN auxiliary head's logits (when the model has one)
  stage_shapes I64 (4, 4): shapes of the backbone's stage 1..4 features
and the metadata entry `state_dict` ("name:d0xd1x...;..." in state_dict order) so the C side can
check that it registers exactly the same tensors in the same order.

The train fixture (deeplabv3-r18-d8 at width 1/32, batch 2, dropout 0) also stores the labels (U8,
255 = ignore), the loss CE(up(logits)) + 0.4 CE(up(aux)) with bilinear upsampling to the input size,
every parameter's gradient (`grad.<name>`) and every BN running statistic after the step
(`after.<name>`).

Models: torchvision's deeplabv3_resnet50 itself; for the rest, modules built here with the exact
reference names: a dilated BasicBlock ResNet (torchvision refuses dilation in BasicBlock), the
mmseg ResNetV1c deep stem, torchvision's MobileNetV2 features dilated in place, torchvision's ASPP
and FCNHead, and mmseg's PSPHead. Run with /usr/bin/python3 (torchvision 0.14)."""
import collections

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.models.segmentation.fcn import FCNHead

import fixturelib

torch.manual_seed(20240612)


def scale(channels, width):
    """src/models/layers.c layer_scale_channels with divisor 1."""
    if width == 1.0:
        return channels
    return max(1, int(channels * width + 0.5))


# ---- ResNet with a dilated BasicBlock -----------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision's BasicBlock, with both 3x3 convs dilated (padding = dilation)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride, dilation, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


class ResNet(nn.Module):
    """torchvision ResNet's layer construction (replace_stride_with_dilation rule included) with a
    width multiplier and the optional mmseg ResNetV1c deep stem."""

    def __init__(self, blocks, output_stride, width=1.0, deep_stem=False):
        super().__init__()
        self.inplanes = scale(64, width)
        if deep_stem:
            half = scale(32, width)
            self.stem = nn.Sequential(
                nn.Conv2d(3, half, 3, 2, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, half, 3, 1, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, self.inplanes, 3, 1, 1, bias=False), nn.BatchNorm2d(self.inplanes),
                nn.ReLU(inplace=True))
        else:
            self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(self.inplanes)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.dilation = 1
        dilate = [False, False, output_stride <= 8, output_stride <= 16]
        for i in range(4):
            layer = self._make_layer(scale(64 << i, width), blocks[i], 1 if i == 0 else 2, dilate[i])
            setattr(self, "layer%d" % (i + 1), layer)

    def _make_layer(self, planes, blocks, stride, dilate):
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, previous_dilation, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, 1, self.dilation, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self, x):
        x = self.stem(x) if hasattr(self, "stem") else self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        out = []
        for i in range(4):
            x = getattr(self, "layer%d" % (i + 1))(x)
            out.append(x)
        return out


# ---- heads ---------------------------------------------------------------------------------------


def deeplab_head(in_channels, num_classes, width=1.0, rates=(12, 24, 36)):
    """torchvision's DeepLabHead (same module indices and names) with the 256 channels scaled."""
    ch = scale(256, width)
    return nn.Sequential(ASPP(in_channels, list(rates), ch), nn.Conv2d(ch, ch, 3, padding=1, bias=False),
                         nn.BatchNorm2d(ch), nn.ReLU(), nn.Conv2d(ch, num_classes, 1))


class ConvModule(nn.Module):
    """mmcv ConvModule with BN and ReLU: `conv` (no bias), `bn`."""

    def __init__(self, cin, cout, kernel, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class PSPHead(nn.Module):
    """mmseg PSPHead (bins 1,2,3,6, align_corners=False); conv_seg is created first as in BaseDecodeHead."""

    def __init__(self, in_channels, channels, num_classes):
        super().__init__()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)
        self.psp_modules = nn.ModuleList(
            [nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvModule(in_channels, channels, 1)) for b in (1, 2, 3, 6)])
        self.bottleneck = ConvModule(in_channels + 4 * channels, channels, 3, padding=1)

    def forward(self, x):
        outs = [x] + [F.interpolate(m(x), size=x.shape[2:], mode="bilinear", align_corners=False)
                      for m in self.psp_modules]
        return self.conv_seg(self.dropout(self.bottleneck(torch.cat(outs, 1))))


class SegModel(nn.Module):
    """backbone (stage features) + classifier (+ aux_classifier on stage 3); module names set the
    state_dict prefixes, as in torchvision's segmentation models."""

    def __init__(self, backbone, stages_fn, head_name, head, aux=None):
        super().__init__()
        self.backbone = backbone
        self.stages_fn = stages_fn
        self.head_name = head_name
        setattr(self, head_name, head)
        if aux is not None:
            self.aux_classifier = aux

    def forward(self, x):
        stages = self.stages_fn(x)
        logits = getattr(self, self.head_name)(stages[3])
        aux = self.aux_classifier(stages[2]) if hasattr(self, "aux_classifier") else None
        return stages, logits, aux


# ---- MobileNetV2, dilated to output stride 8 -------------------------------------------------------


def mobilenetv2_d8(width=1.0):
    """torchvision mobilenet_v2 features.0..17 (features.18 dropped); the depthwise convs of
    features.7-13 get stride 1 and dilation 2, those of features.14-17 dilation 4 (padding = dilation)."""
    features = torchvision.models.mobilenet_v2(weights=None, width_mult=width).features[:18]
    for index in range(7, 18):
        d = 2 if index <= 13 else 4
        for m in features[index].modules():
            if isinstance(m, nn.Conv2d) and m.groups > 1:
                m.stride, m.dilation, m.padding = (1, 1), (d, d), (d, d)
    backbone = nn.Module()
    backbone.features = features

    def stages(x):
        out = []
        for index, block in enumerate(features):
            x = block(x)
            if index in (3, 6, 13, 17):
                out.append(x)
        return out

    return backbone, stages


# ---- fixtures ----------------------------------------------------------------------------------------


def image(*shape):
    u8 = torch.randint(0, 256, shape, dtype=torch.uint8)
    return u8, (u8.float() - 128.0) / 64.0


def state_dict_metadata(model):
    return ";".join("%s:%s" % (k, "x".join(str(d) for d in v.shape)) for k, v in model.state_dict().items())


def save_forward(name, model, stages_fn, head, aux, shape):
    fixturelib.param_fill(model)
    model.eval()
    u8, x = image(*shape)
    with torch.no_grad():
        stages = stages_fn(x)
        logits = head(stages[3])
        tensors = {"input": u8, "logits": logits}
        if aux is not None:
            tensors["aux"] = aux(stages[2])
    tensors["stage_shapes"] = torch.tensor([list(s.shape) for s in stages], dtype=torch.int64)
    path = fixturelib.save("models/%s.safetensors" % name, tensors, {"state_dict": state_dict_metadata(model)})
    print(name, "logits", tuple(logits.shape), "stages", [tuple(s.shape) for s in stages], path)


def torchvision_r50():
    m = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=19,
                                                           aux_loss=True)

    def stages(x):
        out = []
        for name, module in m.backbone.items():
            x = module(x)
            if name.startswith("layer"):
                out.append(x)
        return out

    save_forward("deeplabv3-r50-d8", m, stages, m.classifier, m.aux_classifier, (1, 3, 65, 97))


def resnet18_models():
    r18 = [2, 2, 2, 2]
    backbone = ResNet(r18, 8)
    m = SegModel(backbone, backbone.stages, "classifier", deeplab_head(512, 5))
    save_forward("deeplabv3-r18-d8", m, backbone.stages, m.classifier, None, (1, 3, 65, 97))

    backbone = ResNet(r18, 8)
    m = SegModel(backbone, backbone.stages, "decode_head", PSPHead(512, 128, 5))
    save_forward("pspnet-r18-d8", m, backbone.stages, m.decode_head, None, (1, 3, 65, 97))

    backbone = ResNet(r18, 16, width=0.5, deep_stem=True)
    m = SegModel(backbone, backbone.stages, "classifier", deeplab_head(256, 5, 0.5))
    save_forward("deeplabv3-r18-d16-deepstem-w0.5", m, backbone.stages, m.classifier, None, (1, 3, 49, 71))


def mobilenetv2_model():
    backbone, stages = mobilenetv2_d8()
    m = SegModel(backbone, stages, "classifier", deeplab_head(320, 5))
    # Tall and narrow: the stride-8 map is 38 x 4, so ASPP's rate 12/24/36 taps reach real pixels.
    save_forward("deeplabv3-mbv2", m, stages, m.classifier, None, (1, 3, 301, 27))


def train_step():
    width, k = 1.0 / 32, 5
    backbone = ResNet([2, 2, 2, 2], 8, width=width)
    c3, c4 = scale(256, width), scale(512, width)
    m = SegModel(backbone, backbone.stages, "classifier", deeplab_head(c4, k, width), FCNHead(c3, k))
    fixturelib.param_fill(m)
    for module in m.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    m.train()
    u8, x = image(2, 3, 33, 41)
    labels = torch.randint(0, k, (2, 33, 41), dtype=torch.uint8)
    labels[torch.rand(2, 33, 41) < 0.2] = 255
    _, logits, aux = m(x)
    target = labels.long()
    up = lambda t: F.interpolate(t, size=x.shape[2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(up(logits), target, ignore_index=255) + 0.4 * F.cross_entropy(up(aux), target,
                                                                                          ignore_index=255)
    loss.backward()
    tensors = collections.OrderedDict(input=u8, labels=labels, loss=loss.detach().reshape(1), logits=logits.detach())
    for name, p in m.named_parameters():
        tensors["grad." + name] = p.grad
    for name, b in m.named_buffers():
        if name.endswith("running_mean") or name.endswith("running_var"):
            tensors["after." + name] = b
    path = fixturelib.save("models/deeplabv3-r18-d8-train-w1_32.safetensors", tensors,
                           {"state_dict": state_dict_metadata(m)})
    print("train: loss %.6f, %d parameters, %d grads" % (loss.item(), sum(p.numel() for p in m.parameters()),
                                                       sum(1 for _ in m.parameters())), path)


def aspp_rates_model():
    """ASPP rates fitted to a small map (--aspp-dilations 1,2,3): a 64x64 input gives an 8x8 map.
    Written last so that the fixtures above keep their random inputs."""
    backbone = ResNet([2, 2, 2, 2], 8, width=0.5)
    m = SegModel(backbone, backbone.stages, "classifier", deeplab_head(256, 5, 0.5, rates=(1, 2, 3)))
    save_forward("deeplabv3-r18-d8-w0.5-aspp123", m, backbone.stages, m.classifier, None, (1, 3, 64, 64))


if __name__ == "__main__":
    torchvision_r50()
    resnet18_models()
    mobilenetv2_model()
    train_step()
    aspp_rates_model()
