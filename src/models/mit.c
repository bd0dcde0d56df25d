/* MiT-B0..B5 (Mix Transformer), the SegFormer encoder, with Hugging Face
 * SegformerForSemanticSegmentation names under `prefix` (`segformer.encoder` for SegFormer,
 * `backbone` for DeepLabV3-MiT):
 *   patch_embeddings.{i}.proj / .layer_norm          overlapping patch embedding of stage i
 *   block.{i}.{j}.layer_norm_1, .attention.self.{query,key,value}, .attention.self.sr +
 *     .attention.self.layer_norm (sr > 1), .attention.output.dense, .layer_norm_2,
 *     .mlp.dense1, .mlp.dwconv.dwconv, .mlp.dense2
 *   layer_norm.{i}                                    after each stage
 * reference: transformers/models/segformer/modeling_segformer.py (SegformerEncoder).
 *
 * Every LayerNorm uses eps 1e-5: HF's config has layer_norm_eps = 1e-6, but the modeling code
 * builds every nn.LayerNorm(C) with torch's default and never reads that value.
 * Tokens are (N, L, C) with L = h * w in row-major order, as HF's flatten(2).transpose(1, 2).
 *
 * Width multiplier: hidden size i = layer_scale_channels(reference, width, heads[i]), so the head
 * counts stay 1, 2, 5, 8 and channels per head = hidden / heads (32 for B0, 64 for B1-B5 at width 1);
 * the Mix-FFN hidden size stays 4x. tools/gen_models_mit.py applies the same rule. */
#include <math.h>
#include <stdlib.h>

#include "models/model_internal.h"

enum { MIT_STAGES = 4, MIT_MLP_RATIO = 4 };
#define MIT_LN_EPS 1e-5f

static const int mit_depths[6][MIT_STAGES] = {{2, 2, 2, 2}, {2, 2, 2, 2}, {3, 4, 6, 3},
                                              {3, 4, 18, 3}, {3, 8, 27, 3}, {3, 6, 40, 3}};
static const int mit_hidden_b0[MIT_STAGES] = {32, 64, 160, 256};
static const int mit_hidden_b1_b5[MIT_STAGES] = {64, 128, 320, 512};
static const int mit_heads[MIT_STAGES] = {1, 2, 5, 8};
static const int mit_sr_ratios[MIT_STAGES] = {8, 4, 2, 1};
static const int mit_patch_sizes[MIT_STAGES] = {7, 3, 3, 3};
static const int mit_patch_strides[MIT_STAGES] = {4, 2, 2, 2};

/* One SegformerLayer. */
typedef struct {
  layer_ln norm1;                /* layer_norm_1 */
  layer_linear query, key, value;
  layer_conv sr;                 /* sequence reduction (kernel = stride = sr ratio), sr > 1 only */
  layer_ln sr_norm;              /* attention.self.layer_norm, sr > 1 only */
  layer_linear attn_out;         /* attention.output.dense */
  layer_ln norm2;                /* layer_norm_2 */
  layer_linear fc1;              /* mlp.dense1 (C -> 4C) */
  layer_conv dwconv;             /* mlp.dwconv.dwconv, 3x3 depthwise with bias */
  layer_linear fc2;              /* mlp.dense2 (4C -> C) */
  float drop_path;               /* stochastic depth probability of both residual branches */
} mit_block;

typedef struct {
  backbone base;
  int depth[MIT_STAGES], heads[MIT_STAGES], sr_ratio[MIT_STAGES];
  layer_conv patch_proj[MIT_STAGES];
  layer_ln patch_norm[MIT_STAGES];
  mit_block *blocks[MIT_STAGES];
  layer_ln stage_norm[MIT_STAGES];
} mit;

/* (N, C, h, w) -> (N, h*w, C) */
static hakd_tensor *map_to_tokens(hakd_ctx *ctx, hakd_tensor *x) {
  if (!x) return NULL;
  static const int perm[3] = {0, 2, 1};
  int64_t shape[3] = {x->shape[0], x->shape[1], x->shape[2] * x->shape[3]};
  return hakd_permute(ctx, hakd_reshape(ctx, x, 3, shape), perm);
}

/* (N, h*w, C) -> (N, C, h, w) */
static hakd_tensor *tokens_to_map(hakd_ctx *ctx, hakd_tensor *t, int64_t h, int64_t w) {
  if (!t) return NULL;
  static const int perm[3] = {0, 2, 1};
  int64_t shape[4] = {t->shape[0], t->shape[2], h, w};
  return hakd_reshape(ctx, hakd_permute(ctx, t, perm), 4, shape);
}

/* (N, L, heads*d) -> (N, heads, L, d) */
static hakd_tensor *split_heads(hakd_ctx *ctx, hakd_tensor *t, int heads) {
  if (!t) return NULL;
  static const int perm[4] = {0, 2, 1, 3};
  if (heads == 1) {
    int64_t single[4] = {t->shape[0], 1, t->shape[1], t->shape[2]};
    return hakd_reshape(ctx, t, 4, single);
  }
  int64_t shape[4] = {t->shape[0], t->shape[1], heads, t->shape[2] / heads};
  return hakd_permute(ctx, hakd_reshape(ctx, t, 4, shape), perm);
}

/* (N, heads, L, d) -> (N, L, heads*d) */
static hakd_tensor *merge_heads(hakd_ctx *ctx, hakd_tensor *t) {
  if (!t) return NULL;
  static const int perm[4] = {0, 2, 1, 3};
  int64_t shape[3] = {t->shape[0], t->shape[2], t->shape[1] * t->shape[3]};
  if (t->shape[1] != 1) t = hakd_permute(ctx, t, perm);
  return hakd_reshape(ctx, t, 3, shape);
}

/* reference: drop_path in modeling_segformer.py: per sample, the branch is zeroed with
 * probability p and scaled by 1/(1-p) otherwise; identity outside training. Sample b draws from
 * its own stream (see hakd_ctx_set_sample_offset), so a data-parallel split changes no mask. */
static hakd_tensor *drop_path(hakd_ctx *ctx, hakd_tensor *branch, float p) {
  if (!branch || p <= 0.0f || !hakd_ctx_training(ctx)) return branch;
  int64_t shape[3] = {branch->shape[0], 1, 1};
  hakd_tensor *mask = hakd_tensor_new(ctx, HAKD_F32, 3, shape);
  if (!mask) return NULL;
  float keep = 1.0f - p;
  uint64_t site = hakd_rng_next(hakd_ctx_rng(ctx));
  for (int64_t i = 0; i < shape[0]; i++) {
    uint64_t stream = hakd_rng_substream(site, hakd_ctx_sample_offset(ctx) + i);
    hakd_f32(mask)[i] = floorf(keep + hakd_rng_uniform(&stream)) / keep;
  }
  return hakd_mul(ctx, branch, mask);
}

/* SegformerEfficientSelfAttention + SegformerSelfOutput on tokens x (N, h*w, C). */
static hakd_tensor *attention_forward(hakd_ctx *ctx, const mit_block *b, hakd_tensor *x, int heads, int sr_ratio,
                                      int64_t h, int64_t w) {
  hakd_tensor *q = split_heads(ctx, layer_linear_forward(ctx, &b->query, x), heads);
  hakd_tensor *kv_in = x;
  if (sr_ratio > 1) {
    hakd_tensor *reduced = layer_conv_forward(ctx, &b->sr, tokens_to_map(ctx, x, h, w));
    kv_in = layer_ln_forward(ctx, &b->sr_norm, map_to_tokens(ctx, reduced));
  }
  hakd_tensor *k = split_heads(ctx, layer_linear_forward(ctx, &b->key, kv_in), heads);
  hakd_tensor *v = split_heads(ctx, layer_linear_forward(ctx, &b->value, kv_in), heads);
  if (!q || !k || !v) return NULL;
  float inv_sqrt_d = 1.0f / sqrtf((float)q->shape[3]);
  /* softmax(q k^T / sqrt(d)) v, (N, heads, L, d); its (L, L') scores never stored where no gradient is wanted */
  hakd_tensor *context = hakd_attention(ctx, q, k, v, inv_sqrt_d);
  return layer_linear_forward(ctx, &b->attn_out, merge_heads(ctx, context));
}

/* SegformerMixFFN: dense1 -> depthwise 3x3 on the (h, w) grid -> GELU -> dense2. The depthwise
 * convolution runs on the tokens as they are (no NCHW copy and back). */
static hakd_tensor *mix_ffn_forward(hakd_ctx *ctx, const mit_block *b, hakd_tensor *x, int64_t h, int64_t w) {
  hakd_tensor *hidden = layer_linear_forward(ctx, &b->fc1, x);
  hidden = hakd_depthwise_conv2d_tokens(ctx, hidden, b->dwconv.weight, b->dwconv.bias, h, w, b->dwconv.padding);
  return layer_linear_forward(ctx, &b->fc2, hakd_gelu(ctx, hidden));
}

/* SegformerLayer: x + attn(LN1(x)), then x + MixFFN(LN2(x)), each branch through drop path. */
static hakd_tensor *block_forward(hakd_ctx *ctx, const mit_block *b, hakd_tensor *x, int heads, int sr_ratio,
                                  int64_t h, int64_t w) {
  hakd_tensor *attn = attention_forward(ctx, b, layer_ln_forward(ctx, &b->norm1, x), heads, sr_ratio, h, w);
  x = hakd_add(ctx, x, drop_path(ctx, attn, b->drop_path));
  hakd_tensor *mlp = mix_ffn_forward(ctx, b, layer_ln_forward(ctx, &b->norm2, x), h, w);
  return hakd_add(ctx, x, drop_path(ctx, mlp, b->drop_path));
}

static int mit_forward(backbone *base, hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *stages[4]) {
  mit *m = (mit *)base;
  hakd_tensor *map = x;
  for (int s = 0; s < MIT_STAGES; s++) {
    hakd_tensor *embedded = layer_conv_forward(ctx, &m->patch_proj[s], map);
    if (!embedded) break;
    int64_t h = embedded->shape[2], w = embedded->shape[3];
    hakd_tensor *tokens = layer_ln_forward(ctx, &m->patch_norm[s], map_to_tokens(ctx, embedded));
    /* no-grad: within a stage only the latest block output is alive */
    hakd_arena_mark mark = hakd_ctx_mark(ctx);
    for (int j = 0; j < m->depth[s]; j++) {
      tokens = block_forward(ctx, &m->blocks[s][j], tokens, m->heads[s], m->sr_ratio[s], h, w);
      hakd_ctx_collapse(ctx, mark, 1, &tokens);
    }
    map = tokens_to_map(ctx, layer_ln_forward(ctx, &m->stage_norm[s], tokens), h, w);
    stages[s] = map;
    if (!map) break;
  }
  int status = hakd_ctx_status(ctx);
  if (status) return status;
  return stages[3] ? 0 : hakd_error(HAKD_EINVAL, "MiT forward produced no stage 4 feature");
}

/* Symbolic versions of the token reshapes above. */
static int map_to_tokens_describe(model_graph *g, int x) {
  static const int perm[3] = {0, 2, 1};
  int64_t s[HAKD_MAX_DIMS];
  if (g->shape(g, x, s) != 4) return 0;
  int64_t shape[3] = {0, s[1], s[2] * s[3]};
  return g->permute(g, g->reshape(g, x, 3, shape), perm);
}

static int tokens_to_map_describe(model_graph *g, int t, int64_t h, int64_t w) {
  static const int perm[3] = {0, 2, 1};
  int64_t s[HAKD_MAX_DIMS];
  if (g->shape(g, t, s) != 3) return 0;
  int64_t shape[4] = {0, s[2], h, w};
  return g->reshape(g, g->permute(g, t, perm), 4, shape);
}

static int split_heads_describe(model_graph *g, int t, int heads) {
  static const int perm[4] = {0, 2, 1, 3};
  int64_t s[HAKD_MAX_DIMS];
  if (g->shape(g, t, s) != 3) return 0;
  if (heads == 1) return g->reshape(g, t, 4, (int64_t[]){0, 1, s[1], s[2]});
  return g->permute(g, g->reshape(g, t, 4, (int64_t[]){0, s[1], heads, s[2] / heads}), perm);
}

static int merge_heads_describe(model_graph *g, int t) {
  static const int perm[4] = {0, 2, 1, 3};
  int64_t s[HAKD_MAX_DIMS];
  if (g->shape(g, t, s) != 4) return 0;
  int64_t shape[3] = {0, s[2], s[1] * s[3]};
  if (s[1] != 1) t = g->permute(g, t, perm);
  return g->reshape(g, t, 3, shape);
}

static int block_describe(model_graph *g, const mit_block *b, int x, int heads, int sr_ratio, int64_t h, int64_t w) {
  int normed = g->layernorm(g, x, &b->norm1);
  int q = split_heads_describe(g, g->linear(g, normed, &b->query), heads), kv_in = normed;
  if (sr_ratio > 1) {
    int reduced = g->conv(g, tokens_to_map_describe(g, normed, h, w), &b->sr, NULL, 0, HAKD_ACT_NONE);
    kv_in = g->layernorm(g, map_to_tokens_describe(g, reduced), &b->sr_norm);
  }
  int k = split_heads_describe(g, g->linear(g, kv_in, &b->key), heads);
  int v = split_heads_describe(g, g->linear(g, kv_in, &b->value), heads);
  int64_t qs[HAKD_MAX_DIMS];
  if (g->shape(g, q, qs) != 4) return 0;
  int scores = g->matmul(g, q, k, 1, 1.0f / sqrtf((float)qs[3]));
  int context = g->matmul(g, g->softmax(g, scores, -1), v, 0, 1.0f);
  x = g->add(g, x, g->linear(g, merge_heads_describe(g, context), &b->attn_out));
  int hidden = g->linear(g, g->layernorm(g, x, &b->norm2), &b->fc1);
  hidden = map_to_tokens_describe(g, g->conv(g, tokens_to_map_describe(g, hidden, h, w), &b->dwconv, NULL, 0,
                                             HAKD_ACT_NONE));
  return g->add(g, x, g->linear(g, g->gelu(g, hidden), &b->fc2));
}

static int mit_describe(backbone *base, model_graph *g, int x, int stages[4]) {
  mit *m = (mit *)base;
  int map = x;
  for (int s = 0; s < MIT_STAGES; s++) {
    int embedded = g->conv(g, map, &m->patch_proj[s], NULL, 0, HAKD_ACT_NONE);
    int64_t shape[HAKD_MAX_DIMS];
    if (g->shape(g, embedded, shape) != 4) return HAKD_EINVAL;
    int tokens = g->layernorm(g, map_to_tokens_describe(g, embedded), &m->patch_norm[s]);
    for (int j = 0; j < m->depth[s]; j++)
      tokens = block_describe(g, &m->blocks[s][j], tokens, m->heads[s], m->sr_ratio[s], shape[2], shape[3]);
    map = tokens_to_map_describe(g, g->layernorm(g, tokens, &m->stage_norm[s]), shape[2], shape[3]);
    stages[s] = map;
  }
  return map ? 0 : HAKD_EINVAL;
}

static void mit_destroy(backbone *base) {
  mit *m = (mit *)base;
  for (int s = 0; s < MIT_STAGES; s++) free(m->blocks[s]);
  free(m);
}

/* Output size of a conv of kernel k, stride s, padding p on n pixels; 0 when the kernel is
 * larger than the padded input (conv2d refuses that). */
static int conv_out(int n, int k, int s, int p) { return n + 2 * p < k ? 0 : (n + 2 * p - k) / s + 1; }

/* Smallest input side for which every patch embedding has an output and every spatial-reduction
 * conv (kernel = stride = sr ratio, no padding) fits its stage map. Found by walking the sizes
 * through the layer geometry, so it follows mit_patch_sizes / mit_sr_ratios if they change. */
static void mit_min_input(mit *m) {
  for (int n = 1; n < 4096; n++) {
    int size = n, ok = 1;
    for (int s = 0; s < MIT_STAGES && ok; s++) {
      size = conv_out(size, mit_patch_sizes[s], mit_patch_strides[s], mit_patch_sizes[s] / 2);
      ok = size >= 1 && size >= m->sr_ratio[s];
    }
    if (ok) {
      m->base.min_input = n;
      break;
    }
  }
  m->base.min_input_reason = "its stage-1 attention reduces keys with an 8x8 conv on the stride-4 map";
}

static int block_init(mit_block *b, hakd_params *p, const char *prefix, int dim, int sr_ratio, float drop_path_prob) {
  char name[LAYER_NAME_MAX];
  int hidden = dim * MIT_MLP_RATIO;
  int rc = layer_ln_init(&b->norm1, p, layer_name(name, "%s.layer_norm_1", prefix), dim, MIT_LN_EPS);
  if (!rc) rc = layer_linear_init(&b->query, p, layer_name(name, "%s.attention.self.query", prefix), dim, dim, 1);
  if (!rc) rc = layer_linear_init(&b->key, p, layer_name(name, "%s.attention.self.key", prefix), dim, dim, 1);
  if (!rc) rc = layer_linear_init(&b->value, p, layer_name(name, "%s.attention.self.value", prefix), dim, dim, 1);
  if (!rc && sr_ratio > 1) {
    rc = layer_conv_init(&b->sr, p, layer_name(name, "%s.attention.self.sr", prefix), dim, dim, sr_ratio, sr_ratio, 0,
                         1, 1, 1);
    if (!rc)
      rc = layer_ln_init(&b->sr_norm, p, layer_name(name, "%s.attention.self.layer_norm", prefix), dim, MIT_LN_EPS);
  }
  if (!rc) rc = layer_linear_init(&b->attn_out, p, layer_name(name, "%s.attention.output.dense", prefix), dim, dim, 1);
  if (!rc) rc = layer_ln_init(&b->norm2, p, layer_name(name, "%s.layer_norm_2", prefix), dim, MIT_LN_EPS);
  if (!rc) rc = layer_linear_init(&b->fc1, p, layer_name(name, "%s.mlp.dense1", prefix), dim, hidden, 1);
  if (!rc)
    rc = layer_conv_init(&b->dwconv, p, layer_name(name, "%s.mlp.dwconv.dwconv", prefix), hidden, hidden, 3, 1, 1, 1,
                         hidden, 1);
  if (!rc) rc = layer_linear_init(&b->fc2, p, layer_name(name, "%s.mlp.dense2", prefix), hidden, dim, 1);
  b->drop_path = drop_path_prob;
  return rc;
}

int mit_create(hakd_params *p, const char *prefix, int variant, const hakd_model_options *o, backbone **out) {
  *out = NULL;
  if (variant < 0 || variant > 5)
    return hakd_error(HAKD_EINVAL, "%s: MiT variant b%d does not exist (b0..b5)", prefix, variant);
  if (o->drop_path_rate < 0.0f || o->drop_path_rate >= 1.0f)
    return hakd_error(HAKD_EINVAL, "%s: drop_path_rate %g outside [0, 1)", prefix, o->drop_path_rate);
  mit *m = calloc(1, sizeof *m);
  if (!m) return hakd_error(HAKD_ENOMEM, "%s: out of memory", prefix);
  m->base.forward = mit_forward;
  m->base.describe = mit_describe;
  m->base.destroy = mit_destroy;
  m->base.family = "transformer";
  const int *reference = variant == 0 ? mit_hidden_b0 : mit_hidden_b1_b5;
  int total_blocks = 0;
  for (int s = 0; s < MIT_STAGES; s++) total_blocks += mit_depths[variant][s];
  char name[LAYER_NAME_MAX];
  int rc = 0, block_index = 0;
  for (int s = 0; s < MIT_STAGES && !rc; s++) {
    int dim = layer_scale_channels(reference[s], o->width, mit_heads[s]);
    int in_channels = s == 0 ? 3 : m->base.channels[s - 1];
    m->base.channels[s] = dim;
    m->base.strides[s] = s == 0 ? 4 : m->base.strides[s - 1] * 2;
    m->depth[s] = mit_depths[variant][s];
    m->heads[s] = mit_heads[s];
    m->sr_ratio[s] = mit_sr_ratios[s];
    int k = mit_patch_sizes[s];
    rc = layer_conv_init(&m->patch_proj[s], p, layer_name(name, "%s.patch_embeddings.%d.proj", prefix, s), in_channels,
                         dim, k, mit_patch_strides[s], k / 2, 1, 1, 1);
    if (!rc) rc = layer_ln_init(&m->patch_norm[s], p, layer_name(name, "%s.patch_embeddings.%d.layer_norm", prefix, s),
                                dim, MIT_LN_EPS);
  }
  /* HF registers all patch embeddings, then all blocks, then the stage norms (state_dict order). */
  for (int s = 0; s < MIT_STAGES && !rc; s++) {
    m->blocks[s] = calloc((size_t)m->depth[s], sizeof(mit_block));
    if (!m->blocks[s]) {
      rc = hakd_error(HAKD_ENOMEM, "%s: out of memory", prefix);
      break;
    }
    for (int j = 0; j < m->depth[s] && !rc; j++, block_index++) {
      /* torch.linspace(0, drop_path_rate, total_blocks)[block_index] */
      float prob = total_blocks > 1 ? o->drop_path_rate * (float)block_index / (float)(total_blocks - 1) : 0.0f;
      rc = block_init(&m->blocks[s][j], p, layer_name(name, "%s.block.%d.%d", prefix, s, j), m->base.channels[s],
                      m->sr_ratio[s], prob);
    }
  }
  for (int s = 0; s < MIT_STAGES && !rc; s++)
    rc = layer_ln_init(&m->stage_norm[s], p, layer_name(name, "%s.layer_norm.%d", prefix, s), m->base.channels[s],
                       MIT_LN_EPS);
  if (!rc) mit_min_input(m);
  if (rc) {
    mit_destroy(&m->base);
    return rc == HAKD_ENOMEM ? hakd_error(HAKD_ENOMEM, "%s: out of memory", prefix) : rc;
  }
  *out = &m->base;
  return 0;
}
