"""Golden fixtures for the MiT encoder and the SegFormer all-MLP decoder (tests/test_model_mit.c).

There is no `transformers` package here, so this is a PyTorch reimplementation of Hugging Face's
SegformerForSemanticSegmentation (transformers/models/segformer/modeling_segformer.py) with the same
module names (hence the same state_dict keys) and the same math:
- overlapping patch embeddings: Conv2d(k, stride, padding k // 2, bias) -> flatten -> LayerNorm;
- blocks: x + attn(LN1(x)), then x + MixFFN(LN2(x)); efficient self-attention reduces keys/values
  with Conv2d(k = stride = sr) + LayerNorm when sr > 1; scores / sqrt(head_dim), softmax;
- Mix-FFN: Linear(C, 4C) -> depthwise 3x3 conv (bias) -> exact GELU -> Linear(4C, C);
- a LayerNorm after every stage, stages returned as NCHW;
- every LayerNorm is nn.LayerNorm(C) with torch's default eps 1e-5 (HF's config carries
  layer_norm_eps = 1e-6 but modeling_segformer.py never passes it to a LayerNorm);
- decode head: per stage Linear(Ci, D) on the flattened tokens, bilinear upsampling
  (align_corners=False) to stage 1's size, concat in reverse order (c4, c3, c2, c1), 1x1 conv
  (no bias), BatchNorm2d, ReLU, dropout, 1x1 conv classifier;
- training loss as HF: logits upsampled bilinearly to the label size, CrossEntropyLoss(ignore 255).

Width multiplier (hakd_model_options.width, mirrored by scale_channels below = layer_scale_channels):
hidden size i is scaled and rounded to a multiple of the stage's head count (heads stay 1, 2, 5, 8, so
channels per head = hidden / heads), the Mix-FFN hidden size stays 4x, the decoder size D is scaled
and rounded to the nearest integer.

Parameters come from fixturelib.param_fill (the same name hash as tests/param_fill.h), so the
fixtures hold only inputs and outputs. Run with /usr/bin/python3."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import fixturelib

DEPTHS = {0: [2, 2, 2, 2], 1: [2, 2, 2, 2], 2: [3, 4, 6, 3], 3: [3, 4, 18, 3], 4: [3, 8, 27, 3], 5: [3, 6, 40, 3]}
HEADS = [1, 2, 5, 8]
SR_RATIOS = [8, 4, 2, 1]
PATCH_SIZES = [7, 3, 3, 3]
PATCH_STRIDES = [4, 2, 2, 2]
MLP_RATIO = 4


def scale_channels(channels, width, divisor):
    """layer_scale_channels (src/models/layers.c) in float32 arithmetic."""
    if width == 1.0:
        return channels
    c = int(np.float32(channels) * np.float32(width) + np.float32(0.5))
    if divisor > 1:
        c = ((c + divisor // 2) // divisor) * divisor
    return c if c >= divisor else max(divisor, 1)


class Config:
    def __init__(self, variant, width=1.0, num_labels=5, classifier_dropout_prob=0.1):
        base = [32, 64, 160, 256] if variant == 0 else [64, 128, 320, 512]
        self.hidden_sizes = [scale_channels(c, width, h) for c, h in zip(base, HEADS)]
        self.depths = DEPTHS[variant]
        decoder = 256 if variant <= 1 else 768
        self.decoder_hidden_size = scale_channels(decoder, width, 1)
        self.num_labels = num_labels
        self.classifier_dropout_prob = classifier_dropout_prob


class SegformerOverlapPatchEmbeddings(nn.Module):
    def __init__(self, patch_size, stride, num_channels, hidden_size):
        super().__init__()
        self.proj = nn.Conv2d(num_channels, hidden_size, patch_size, stride, patch_size // 2)
        self.layer_norm = nn.LayerNorm(hidden_size)

    def forward(self, pixels):
        x = self.proj(pixels)
        h, w = x.shape[2:]
        return self.layer_norm(x.flatten(2).transpose(1, 2)), h, w


class SegformerEfficientSelfAttention(nn.Module):
    def __init__(self, hidden_size, num_heads, sr_ratio):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(hidden_size, hidden_size, sr_ratio, sr_ratio)
            self.layer_norm = nn.LayerNorm(hidden_size)

    def split_heads(self, x):
        n, length, _ = x.shape
        return x.view(n, length, self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x, h, w):
        q = self.split_heads(self.query(x))
        if self.sr_ratio > 1:
            n, length, c = x.shape
            x = self.sr(x.permute(0, 2, 1).reshape(n, c, h, w)).reshape(n, c, -1).permute(0, 2, 1)
            x = self.layer_norm(x)
        k = self.split_heads(self.key(x))
        v = self.split_heads(self.value(x))
        probs = F.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim), dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.shape[0], ctx.shape[1], -1)


class SegformerSelfOutput(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        return self.dense(x)


class SegformerAttention(nn.Module):
    def __init__(self, hidden_size, num_heads, sr_ratio):
        super().__init__()
        self.self = SegformerEfficientSelfAttention(hidden_size, num_heads, sr_ratio)
        self.output = SegformerSelfOutput(hidden_size)

    def forward(self, x, h, w):
        return self.output(self.self(x, h, w))


class SegformerDWConv(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x, h, w):
        n, _, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(n, c, h, w)).flatten(2).transpose(1, 2)


class SegformerMixFFN(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.dense1 = nn.Linear(in_features, hidden_features)
        self.dwconv = SegformerDWConv(hidden_features)
        self.dense2 = nn.Linear(hidden_features, in_features)

    def forward(self, x, h, w):
        return self.dense2(F.gelu(self.dwconv(self.dense1(x), h, w)))


class SegformerLayer(nn.Module):
    def __init__(self, hidden_size, num_heads, sr_ratio):
        super().__init__()
        self.layer_norm_1 = nn.LayerNorm(hidden_size)
        self.attention = SegformerAttention(hidden_size, num_heads, sr_ratio)
        self.layer_norm_2 = nn.LayerNorm(hidden_size)
        self.mlp = SegformerMixFFN(hidden_size, hidden_size * MLP_RATIO)

    def forward(self, x, h, w):
        x = x + self.attention(self.layer_norm_1(x), h, w)
        return x + self.mlp(self.layer_norm_2(x), h, w)


class SegformerEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hs = cfg.hidden_sizes
        self.patch_embeddings = nn.ModuleList(
            [SegformerOverlapPatchEmbeddings(PATCH_SIZES[i], PATCH_STRIDES[i], 3 if i == 0 else hs[i - 1], hs[i])
             for i in range(4)])
        self.block = nn.ModuleList(
            [nn.ModuleList([SegformerLayer(hs[i], HEADS[i], SR_RATIOS[i]) for _ in range(cfg.depths[i])])
             for i in range(4)])
        self.layer_norm = nn.ModuleList([nn.LayerNorm(hs[i]) for i in range(4)])

    def forward(self, pixels):
        stages = []
        x = pixels
        for embed, layers, norm in zip(self.patch_embeddings, self.block, self.layer_norm):
            x, h, w = embed(x)
            for layer in layers:
                x = layer(x, h, w)
            x = norm(x)
            x = x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
            stages.append(x)
        return stages


class SegformerModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.encoder = SegformerEncoder(cfg)

    def forward(self, pixels):
        return self.encoder(pixels)


class SegformerMLP(nn.Module):
    def __init__(self, input_dim, decoder_dim):
        super().__init__()
        self.proj = nn.Linear(input_dim, decoder_dim)

    def forward(self, x):
        return self.proj(x.flatten(2).transpose(1, 2))


class SegformerDecodeHead(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg.decoder_hidden_size
        self.linear_c = nn.ModuleList([SegformerMLP(c, d) for c in cfg.hidden_sizes])
        self.linear_fuse = nn.Conv2d(4 * d, d, 1, bias=False)
        self.batch_norm = nn.BatchNorm2d(d)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(cfg.classifier_dropout_prob)
        self.classifier = nn.Conv2d(d, cfg.num_labels, 1)

    def forward(self, stages):
        size = stages[0].shape[2:]
        upsampled = []
        for x, mlp in zip(stages, self.linear_c):
            n, _, h, w = x.shape
            y = mlp(x).permute(0, 2, 1).reshape(n, -1, h, w)
            upsampled.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        y = self.linear_fuse(torch.cat(upsampled[::-1], dim=1))
        return self.classifier(self.dropout(self.activation(self.batch_norm(y))))


class SegformerForSemanticSegmentation(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.segformer = SegformerModel(cfg)
        self.decode_head = SegformerDecodeHead(cfg)

    def forward(self, pixels):
        stages = self.segformer(pixels)
        return self.decode_head(stages), stages


def build(variant, width=1.0, dropout=0.1, num_labels=5):
    model = SegformerForSemanticSegmentation(Config(variant, width, num_labels, dropout))
    fixturelib.param_fill(model)
    return model


def eval_fixture(variant, shape):
    """Inference logits at stride 4 (and stage 4, to tell encoder from decoder errors)."""
    model = build(variant).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        logits, stages = model(x)
    fixturelib.save(f"models/segformer-b{variant}.safetensors",
                    {"input": x, "logits": logits, "stage4": stages[3]},
                    {"model": f"segformer-b{variant}", "num_classes": 5, "width": 1,
                     "params": sum(p.numel() for p in model.parameters())})


def hashed_input(shape):
    """2u - 1 with u the param_fill hash of the name "input" (tests/param_fill.h
    param_fill_uniform), so the C test rebuilds the input instead of reading 110 KB of it."""
    n = int(np.prod(shape))
    u = fixturelib._uniform01("input", n)
    return torch.from_numpy((2.0 * u - 1.0).astype(np.float32)).reshape(shape)


def train_fixture(width):
    """One training-mode forward/backward of a width-scaled segformer-b0 (dropout off): loss,
    every parameter gradient and the decode head's BatchNorm running stats after the step
    (no logits: the loss and the running stats already check the forward, and the file stays
    under 300 KB). Width 0.125 (hidden 4, 8, 20, 32) is the smallest that is well conditioned:
    at width 0.1 (3 channels in stage 1) PyTorch's own float32 gradients differ from float64 by
    up to 2e-3, at 0.125 by 1e-5.
    66x70 is the smallest kind of input whose reduced key/value grids are 2x2 or more in every
    stage (stride-4 grid 17x18, sr 8 -> 2x2), so no attention softmax is over a single key
    (that would make every query/key gradient exactly zero)."""
    model = build(0, width=width, dropout=0.0).train()
    x = hashed_input((2, 3, 66, 70))
    labels = torch.randint(0, 5, (2, 66, 70))
    labels[torch.rand(2, 66, 70) < 0.2] = 255
    logits, _ = model(x)
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(upsampled, labels, ignore_index=255)
    loss.backward()
    out = {"labels": labels.to(torch.uint8), "loss": loss.detach().reshape(1)}
    for name, p in model.named_parameters():
        out["grad." + name] = p.grad
    bn = model.decode_head.batch_norm
    out["after.decode_head.batch_norm.running_mean"] = bn.running_mean
    out["after.decode_head.batch_norm.running_var"] = bn.running_var
    n_params = sum(p.numel() for p in model.parameters())
    fixturelib.save("models/segformer-b0-train.safetensors", out,
                    {"model": "segformer-b0", "num_classes": 5, "width": width, "params": n_params,
                     "input_shape": ",".join(str(d) for d in x.shape)})


if __name__ == "__main__":
    torch.manual_seed(20240612)
    eval_fixture(0, (1, 3, 67, 93))
    eval_fixture(2, (1, 3, 67, 93))
    train_fixture(0.125)
