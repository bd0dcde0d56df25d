/* Differentiable ops. Each takes the step context, returns a new step tensor (NULL after an
 * error: any NULL input makes an op return NULL, so a forward pass checks once at the end
 * with hakd_ctx_status). Every op has a backward rule recorded on the tape.
 * Layout: NCHW for images, row-major everywhere. Each op names the PyTorch function whose
 * semantics it copies. */
#ifndef HAKD_OPS_H
#define HAKD_OPS_H

#include "hakd/tensor.h"

/* ---- convolution / linear algebra ---- */

/* reference: torch.nn.functional.conv2d. x (N,Cin,H,W), w (Cout,Cin/groups,kh,kw), b (Cout) or NULL.
 * A blocked bfloat16 x (bf16 training's chain) gives a blocked bfloat16 output where the product
 * runs in bf16 on oneDNN (depthwise too), gradients included; otherwise x is converted. */
hakd_tensor *hakd_conv2d(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *w, hakd_tensor *b, int stride, int padding,
                         int dilation, int groups);
typedef enum { HAKD_ACT_NONE = 0, HAKD_ACT_RELU, HAKD_ACT_RELU6 } hakd_activation;
/* Inference only (an error while gradients are recorded for its inputs): act(conv2d(x, w, b) *
 * scale[c] + shift[c] + residual), i.e. a convolution followed by eval-mode BatchNorm, an optional
 * residual add and ReLU/ReLU6, with the affine folded into the weights. scale, shift (Cout);
 * residual NULL or the output's shape. reference: relu(bn.eval()(conv(x)) + residual) */
hakd_tensor *hakd_conv2d_affine_act(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *w, hakd_tensor *b,
                                    const hakd_tensor *scale, const hakd_tensor *shift, const hakd_tensor *residual,
                                    hakd_activation act, int stride, int padding, int dilation, int groups);
/* In the bf16 precision, a CNN's consecutive inference convolutions keep their activations in
 * oneDNN's blocked bfloat16 layout (HAKD_BF16_BLOCKED, hakd/tensor.h): hakd_conv2d_affine_act
 * takes x and residual in either layout and writes its result in x's (blocked only where the
 * product runs in bf16 on oneDNN, depthwise convolutions included; otherwise it converts x and
 * answers float32). hakd_maxpool2d, hakd_adaptive_avgpool2d to 1x1, hakd_concat along channels
 * and hakd_dropout take the layout too and keep it. A chain starts with hakd_to_bf16_blocked and
 * ends with hakd_to_f32 before ops that need float32 (the others refuse the layout with an error).
 * In training the chain is hakd_conv2d and hakd_batchnorm2d_act; every op here but max pooling
 * records its gradient (float32 in the blocked layout, hakd/tensor.h), the conversions included
 * (their backward converts the gradient back). The conversions return x itself when it already
 * has the layout asked for, and to_bf16_blocked is refused where bf16 cannot run. */
hakd_tensor *hakd_to_bf16_blocked(hakd_ctx *ctx, hakd_tensor *x);
hakd_tensor *hakd_to_f32(hakd_ctx *ctx, hakd_tensor *x);
/* The float32 blocked layout (HAKD_F32_BLOCKED, hakd/tensor.h) of float32 training's ResNet chain:
 * hakd_conv2d and hakd_batchnorm2d_act take it and keep it (a convolution that oneDNN does not run
 * as a direct kernel converts), hakd_to_f32 ends it; the gradient converts back in backward. */
hakd_tensor *hakd_to_f32_blocked(hakd_ctx *ctx, hakd_tensor *x);
/* A depthwise k x k convolution (stride 1, dilation 1) of channels-last tokens, without their
 * NCHW copy: x (N, h*w, C) with the tokens in row-major (h, w) order, w (C, 1, k, k), b (C) or
 * NULL -> (N, oh*ow, C), oh = h + 2 padding - k + 1 (likewise ow). reference:
 * conv2d(x.transpose(1, 2).reshape(N, C, h, w), w, b, padding=padding, groups=C).flatten(2).transpose(1, 2) */
hakd_tensor *hakd_depthwise_conv2d_tokens(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *w, hakd_tensor *b, int64_t h,
                                          int64_t width, int padding);
/* reference: F.linear. x (..., in), w (out, in), b (out) or NULL -> (..., out). */
hakd_tensor *hakd_linear(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *w, hakd_tensor *b);
/* reference: torch.matmul on (B..., M, K) x (B..., K, N), with optional transposes of the last two dims of a / b.
 * Leading dims must match (no broadcasting), or one of a and b is 2-D (shared by every matrix of the other). */
hakd_tensor *hakd_matmul(hakd_ctx *ctx, hakd_tensor *a, hakd_tensor *b, int transpose_a, int transpose_b);
/* alpha * matmul(a, b): the scale inside the product (attention's 1/sqrt(d)) instead of an extra
 * pass over the output. */
hakd_tensor *hakd_matmul_scaled(hakd_ctx *ctx, hakd_tensor *a, hakd_tensor *b, int transpose_a, int transpose_b,
                                float alpha);
/* Attention: softmax(scale * q k^T) v for q (N, H, L, d), k (N, H, L', d), v (N, H, L', dv) ->
 * (N, H, L, dv), the last dim of the scores being softmaxed. Where nothing needs its gradient
 * (inference, a frozen teacher) and in float32, the (L, L') scores are never stored: blocks of
 * query rows have their scores made, softmaxed and multiplied by v while they are in cache
 * (SegFormer's first stage at 1024x1024 has 65536 x 1024 scores per image: 256 MB), with the
 * values the three ops give to float rounding (the products are cut into blocks; whether the sums
 * keep their order depends on OpenBLAS's kernels: bit for bit at SegFormer's shapes with its
 * AVX-512 kernels, within 7e-7 relative with its Haswell ones; tests/test_attention.c).
 * Otherwise the three recorded ops hakd_matmul_scaled, hakd_softmax and hakd_matmul. */
hakd_tensor *hakd_attention(hakd_ctx *ctx, hakd_tensor *q, hakd_tensor *k, hakd_tensor *v, float scale);

/* ---- shape ---- */

/* reference: Tensor.reshape (a view; one entry may be -1). */
hakd_tensor *hakd_reshape(hakd_ctx *ctx, hakd_tensor *x, int ndim, const int64_t *shape);
/* reference: Tensor.permute(...).contiguous(). */
hakd_tensor *hakd_permute(hakd_ctx *ctx, hakd_tensor *x, const int *perm);
/* reference: torch.flatten(x, start_dim, end_dim). */
hakd_tensor *hakd_flatten(hakd_ctx *ctx, hakd_tensor *x, int start_dim, int end_dim);
/* reference: torch.cat(xs, dim). */
hakd_tensor *hakd_concat(hakd_ctx *ctx, int n, hakd_tensor *const *xs, int dim);
/* reference: x.narrow(dim, start, length).contiguous(). */
hakd_tensor *hakd_slice(hakd_ctx *ctx, hakd_tensor *x, int dim, int64_t start, int64_t length);

/* ---- normalisation ---- */

/* reference: F.batch_norm. x (N,C,H,W) or (N,C). In training mode (hakd_ctx_training) uses batch
 * statistics (biased var for normalising) and updates running_mean/var in place with
 * momentum (unbiased var), else uses the running stats. weight/bias may be NULL. */
hakd_tensor *hakd_batchnorm2d(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *weight, hakd_tensor *bias,
                              hakd_tensor *running_mean, hakd_tensor *running_var, float momentum, float eps);
/* act(batchnorm2d(x) + residual) on blocked bfloat16 x (HAKD_BF16_BLOCKED, bf16 training's CNN
 * chain) or blocked float32 x (HAKD_F32_BLOCKED, float32 training's ResNet chain) in one pass,
 * with its gradient: statistics and their updates as hakd_batchnorm2d (training: batch
 * statistics, PyTorch's running-stat update with the unbiased variance, SyncBN when the context
 * synchronises; eval: running statistics), summed in double from the stored values; output in
 * x's layout. residual NULL or in x's layout and shape. In bfloat16 the activation's gradient
 * mask comes from the rounded output (ReLU6: values within half a bfloat16 step of 6 count as
 * clipped). Float32 NCHW x runs the NCHW kernel (batchnorm.c). reference: relu(bn(x) + residual) */
hakd_tensor *hakd_batchnorm2d_act(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *weight, hakd_tensor *bias,
                                  hakd_tensor *running_mean, hakd_tensor *running_var, float momentum, float eps,
                                  hakd_tensor *residual, hakd_activation act);
/* reference: F.layer_norm over the last dim. weight/bias (D) may be NULL. */
hakd_tensor *hakd_layernorm(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *weight, hakd_tensor *bias, float eps);

/* ---- activations ---- */

hakd_tensor *hakd_relu(hakd_ctx *ctx, hakd_tensor *x);
hakd_tensor *hakd_relu6(hakd_ctx *ctx, hakd_tensor *x);
/* reference: F.gelu(approximate="none"), the exact erf form. */
hakd_tensor *hakd_gelu(hakd_ctx *ctx, hakd_tensor *x);
hakd_tensor *hakd_sigmoid(hakd_ctx *ctx, hakd_tensor *x);
/* reference: F.softmax / F.log_softmax along dim (negative counts from the end). */
hakd_tensor *hakd_softmax(hakd_ctx *ctx, hakd_tensor *x, int dim);
hakd_tensor *hakd_log_softmax(hakd_ctx *ctx, hakd_tensor *x, int dim);
/* reference: F.dropout (inverted scaling); identity when not training or p == 0. */
hakd_tensor *hakd_dropout(hakd_ctx *ctx, hakd_tensor *x, float p);

/* ---- elementwise and reductions ---- */

/* reference: a + b, a * b with broadcasting (numpy rules, up to HAKD_MAX_DIMS). */
hakd_tensor *hakd_add(hakd_ctx *ctx, hakd_tensor *a, hakd_tensor *b);
hakd_tensor *hakd_sub(hakd_ctx *ctx, hakd_tensor *a, hakd_tensor *b);
hakd_tensor *hakd_mul(hakd_ctx *ctx, hakd_tensor *a, hakd_tensor *b);
/* x * s + c */
hakd_tensor *hakd_affine_scalar(hakd_ctx *ctx, hakd_tensor *x, float s, float c);
static inline hakd_tensor *hakd_scale(hakd_ctx *ctx, hakd_tensor *x, float s) { return hakd_affine_scalar(ctx, x, s, 0.0f); }
/* Sum / mean of all elements -> shape (1). */
hakd_tensor *hakd_sum(hakd_ctx *ctx, hakd_tensor *x);
hakd_tensor *hakd_mean(hakd_ctx *ctx, hakd_tensor *x);
/* Sum / mean over one dim, keepdim semantics of torch.sum(x, dim, keepdim). */
hakd_tensor *hakd_sum_dim(hakd_ctx *ctx, hakd_tensor *x, int dim, int keepdim);
hakd_tensor *hakd_mean_dim(hakd_ctx *ctx, hakd_tensor *x, int dim, int keepdim);

/* ---- resizing and pooling ---- */

/* reference: F.interpolate(x, size=(oh,ow), mode="bilinear", align_corners=...). x (N,C,H,W). */
hakd_tensor *hakd_resize_bilinear(hakd_ctx *ctx, hakd_tensor *x, int64_t out_h, int64_t out_w, int align_corners);
/* reference: F.interpolate(mode="nearest"): src = floor(dst * in / out). Works on F32 and I32
 * (label maps (N,H,W) or (N,C,H,W)); no gradient for I32. */
hakd_tensor *hakd_resize_nearest(hakd_ctx *ctx, hakd_tensor *x, int64_t out_h, int64_t out_w);
/* reference: F.max_pool2d(kernel, stride, padding) (padding with -inf). */
hakd_tensor *hakd_maxpool2d(hakd_ctx *ctx, hakd_tensor *x, int kernel, int stride, int padding);
/* reference: F.avg_pool2d(kernel, stride, padding, count_include_pad=True). */
hakd_tensor *hakd_avgpool2d(hakd_ctx *ctx, hakd_tensor *x, int kernel, int stride, int padding);
/* reference: F.adaptive_avg_pool2d(x, (oh, ow)). */
hakd_tensor *hakd_adaptive_avgpool2d(hakd_ctx *ctx, hakd_tensor *x, int64_t out_h, int64_t out_w);

/* ---- losses ---- */

/* reference: F.cross_entropy(logits, labels, ignore_index, reduction="mean").
 * logits (N,K,H,W) or (N,K); labels I32 (N,H,W) or (N). Mean over valid pixels; exactly 0
 * (with zero gradient) when none is valid. A label outside [0,K) that is not ignore_index is
 * an error. Returns shape (1). */
hakd_tensor *hakd_cross_entropy(hakd_ctx *ctx, hakd_tensor *logits, hakd_tensor *labels, int ignore_index);
/* KL(softmax(t/T) || softmax(s/T)) summed over the class dim (dim 1) and over pixels, divided by
 * `divisor` (e.g. N*H*W for a per-pixel mean), times T^2. t is a constant target (no gradient
 * flows into it). reference: F.kl_div(F.log_softmax(s/T,1), F.softmax(t/T,1), reduction="sum")*T*T/divisor */
hakd_tensor *hakd_kl_div_softmax(hakd_ctx *ctx, hakd_tensor *s, hakd_tensor *t, float T, double divisor);

#endif
