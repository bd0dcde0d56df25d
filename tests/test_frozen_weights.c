/* Frozen parameters (hakd_params_freeze): a frozen convolution on oneDNN keeps its weights folded
 * and reordered between forwards (src/ops/conv2d_frozen.c). What it computes must be bit for bit
 * what the unfrozen model computes, on the first call and the later ones, and every change hakd
 * knows of (hakd_tensor_changed, the optimizers, hakd_model_load, new BatchNorm statistics) must
 * show in the next forward. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "harness.h"
#include "rand_fill.h"
#include "hakd/model.h"
#include "hakd/ops.h"
#include "hakd/optim.h"
#include "ops/scratch.h"

typedef struct {
  hakd_params p;
  hakd_tensor *x, *w, *b, *scale, *shift, *res;
  int pad, dilation;
} frozen_case;

/* x (n, cin, hw, hw), w (cout, cin, 3, 3), bias, BatchNorm affine, residual of the output's shape. */
static void case_init(frozen_case *c, int64_t n, int64_t cin, int64_t cout, int64_t hw, int dilation, uint64_t seed) {
  hakd_params_init(&c->p);
  c->pad = c->dilation = dilation;
  int64_t xs[4] = {n, cin, hw, hw}, ws[4] = {cout, cin, 3, 3}, cs[1] = {cout}, ys[4] = {n, cout, hw, hw};
  c->x = hakd_params_add(&c->p, "x", 4, xs, 1);
  c->w = hakd_params_add(&c->p, "w", 4, ws, 1);
  c->b = hakd_params_add(&c->p, "b", 1, cs, 1);
  c->scale = hakd_params_add(&c->p, "scale", 1, cs, 1);
  c->shift = hakd_params_add(&c->p, "shift", 1, cs, 1);
  c->res = hakd_params_add(&c->p, "res", 4, ys, 1);
  fill_normal(hakd_f32(c->x), hakd_numel(c->x), 1.0f, seed);
  fill_normal(hakd_f32(c->w), hakd_numel(c->w), 0.1f, seed + 1);
  fill_normal(hakd_f32(c->b), cout, 0.5f, seed + 2);
  fill_normal(hakd_f32(c->scale), cout, 1.0f, seed + 3);
  fill_normal(hakd_f32(c->shift), cout, 0.5f, seed + 4);
  fill_normal(hakd_f32(c->res), hakd_numel(c->res), 1.0f, seed + 5);
}

/* The fused inference op on case c (residual and ReLU when with_res), in ctx (reset first); blocked:
 * the input converted to blocked bfloat16 and the result back to float32 (bf16 precision). */
static hakd_tensor *case_run(hakd_ctx *ctx, frozen_case *c, int with_res, int blocked) {
  hakd_ctx_reset(ctx);
  hakd_tensor *x = blocked ? hakd_to_bf16_blocked(ctx, c->x) : c->x;
  hakd_tensor *y = hakd_conv2d_affine_act(ctx, x, c->w, c->b, c->scale, c->shift, with_res ? c->res : NULL,
                                          with_res ? HAKD_ACT_RELU : HAKD_ACT_NONE, 1, c->pad, c->dilation, 1);
  return blocked ? hakd_to_f32(ctx, y) : y;
}

/* Runs c unfrozen into a copy, then frozen twice (the call that packs, the call that reuses);
 * every result equals the copy bit for bit. Returns the packed bytes the frozen calls kept. */
static size_t check_case(frozen_case *c, int with_res, int blocked, const char *what) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_grad(ctx, 0);
  hakd_ctx_set_training(ctx, 0);
  if (blocked) hakd_ctx_set_precision(ctx, HAKD_BF16);
  ops_release();
  hakd_params_freeze(&c->p, 0);
  hakd_tensor *y = case_run(ctx, c, with_res, blocked);
  size_t kept = 0;
  float *want = y ? copy_floats(hakd_f32(y), hakd_numel(y)) : NULL;
  if (!want) {
    test_fail(__FILE__, __LINE__, "%s: unfrozen forward failed: %s", what, hakd_error_message());
    goto done;
  }
  if (ops_frozen_weights_bytes() != 0) {
    test_fail(__FILE__, __LINE__, "%s: an unfrozen forward kept packed weights", what);
    goto done;
  }
  hakd_params_freeze(&c->p, 1);
  uint64_t packs = ops_frozen_weights_packs();
  for (int call = 0; call < 2; call++) {
    y = case_run(ctx, c, with_res, blocked);
    if (!y || memcmp(hakd_f32(y), want, (size_t)hakd_numel(y) * sizeof(float)) != 0) {
      test_fail(__FILE__, __LINE__, "%s: frozen call %d differs from the unfrozen forward", what, call);
      goto done;
    }
    /* the first call packs (unless the budget is 0), the second reuses */
    uint64_t made = ops_frozen_weights_packs() - packs;
    if (made != (call == 0 && ops_frozen_weights_bytes() > 0 ? 1u : 0u)) {
      test_fail(__FILE__, __LINE__, "%s: call %d packed %llu times", what, call, (unsigned long long)made);
      goto done;
    }
    packs += made;
  }
  kept = ops_frozen_weights_bytes();
done:
  free(want);
  hakd_ctx_free(ctx);
  return kept;
}

/* float32 on small maps: weights folded with the affine (4 input channels: fewer weights than
 * outputs) and not folded (32: the affine in the output pass), each with and without a residual
 * and ReLU, undilated and dilated as the ASPP (rate 2 on 8x8, every tap reading the map). */
TEST(float32_frozen_forward_equals_unfrozen_bit_for_bit) {
  int64_t cins[2] = {4, 32};
  for (int i = 0; i < 2 && !test_failed(); i++) {
    for (int dilation = 1; dilation <= 2 && !test_failed(); dilation++) {
      for (int with_res = 0; with_res < 2 && !test_failed(); with_res++) {
        frozen_case c;
        case_init(&c, 2, cins[i], 48, 8, dilation, 100 + 10 * i + dilation);
        char what[96];
        snprintf(what, sizeof what, "cin %lld dilation %d residual %d", (long long)cins[i], dilation, with_res);
        size_t kept = check_case(&c, with_res, 0, what);
        /* the frozen calls ran on kept weights (at least the 48 x cin x 9 of them) */
        if (!test_failed() && kept < (size_t)(48 * cins[i] * 9) * sizeof(float))
          test_fail(__FILE__, __LINE__, "%s: %zu packed bytes kept", what, kept);
        hakd_params_free(&c.p);
      }
    }
  }
}

/* bf16 on blocked bfloat16 activations: the weights folded and rounded to bfloat16 once. */
TEST(bf16_blocked_frozen_forward_equals_unfrozen_bit_for_bit) {
  frozen_case c;
  case_init(&c, 2, 32, 48, 8, 1, 200);
  if (!hakd_bf16_supported()) {
    hakd_ctx *ctx = hakd_ctx_new();
    hakd_ctx_set_grad(ctx, 0);
    hakd_ctx_set_precision(ctx, HAKD_BF16);
    hakd_tensor *y = hakd_to_bf16_blocked(ctx, c.x);
    ASSERT_TRUE(bf16_refused(ctx, y, "bf16"));
    hakd_ctx_free(ctx);
  } else {
    for (int with_res = 0; with_res < 2 && !test_failed(); with_res++) {
      size_t kept = check_case(&c, with_res, 1, with_res ? "bf16 residual" : "bf16");
      if (!test_failed() && kept < (size_t)(48 * 32 * 9) * 2) test_fail(__FILE__, __LINE__, "%zu bytes kept", kept);
    }
  }
  hakd_params_free(&c.p);
}

/* Changes reach the next forward: weights written and announced (hakd_tensor_changed), new
 * BatchNorm statistics (the affine, compared by value), an optimizer step. */
TEST(changes_reach_the_next_frozen_forward) {
  frozen_case c;
  case_init(&c, 1, 4, 32, 8, 1, 300); /* folded */
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_grad(ctx, 0);
  hakd_ctx_set_training(ctx, 0);
  hakd_params_freeze(&c.p, 1);
  hakd_tensor *y = case_run(ctx, &c, 0, 0);
  float *first = y ? copy_floats(hakd_f32(y), hakd_numel(y)) : NULL;
  ASSERT_TRUE(first != NULL);
  size_t kept = ops_frozen_weights_bytes(); /* one entry: each change replaces it */
  ASSERT_TRUE(kept > 0);
  for (int change = 0; change < 3 && !test_failed(); change++) {
    if (change == 0) { /* weights written in place, announced */
      uint64_t stamp = c.w->frozen;
      for (int64_t i = 0; i < hakd_numel(c.w); i++) hakd_f32(c.w)[i] *= -1.5f;
      hakd_tensor_changed(c.w);
      ASSERT_TRUE(c.w->frozen != 0 && c.w->frozen != stamp);
    } else if (change == 1) { /* other BatchNorm statistics: a new affine */
      for (int64_t i = 0; i < hakd_numel(c.scale); i++) hakd_f32(c.scale)[i] += 0.25f;
    } else { /* an optimizer step on the (frozen) weights */
      hakd_optim_config oc;
      hakd_optim_config_default(&oc, HAKD_OPTIM_SGD);
      hakd_optimizer *opt = hakd_optim_new(&oc);
      ASSERT_TRUE(opt != NULL);
      c.w->requires_grad = 1; /* an optimizer takes trainable tensors */
      c.w->grad = calloc((size_t)hakd_numel(c.w), sizeof(float));
      ASSERT_TRUE(c.w->grad != NULL);
      for (int64_t i = 0; i < hakd_numel(c.w); i++) c.w->grad[i] = 0.5f;
      hakd_params only = {&c.w, 1, 1};
      uint64_t stamp = c.w->frozen;
      ASSERT_TRUE(hakd_optim_add_group(opt, &only, NULL, 1.0f, 0) >= 0);
      hakd_optim_step(opt, 0.5f);
      hakd_optim_free(opt);
      c.w->requires_grad = 0;
      free(c.w->grad);
      c.w->grad = NULL;
      ASSERT_TRUE(c.w->frozen != 0 && c.w->frozen != stamp);
    }
    y = case_run(ctx, &c, 0, 0);
    float *got = y ? copy_floats(hakd_f32(y), hakd_numel(y)) : NULL;
    ASSERT_TRUE(got != NULL);
    hakd_params_freeze(&c.p, 0);
    y = case_run(ctx, &c, 0, 0);
    ASSERT_TRUE(y != NULL);
    if (memcmp(got, hakd_f32(y), (size_t)hakd_numel(y) * sizeof(float)) != 0 ||
        memcmp(got, first, (size_t)hakd_numel(y) * sizeof(float)) == 0)
      test_fail(__FILE__, __LINE__, "change %d: the frozen forward did not see it", change);
    memcpy(first, got, (size_t)hakd_numel(y) * sizeof(float));
    if (ops_frozen_weights_bytes() != kept)
      test_fail(__FILE__, __LINE__, "change %d: %zu bytes kept, not %zu", change, ops_frozen_weights_bytes(), kept);
    free(got);
    hakd_params_freeze(&c.p, 1);
  }
  free(first);
  hakd_ctx_free(ctx);
  hakd_params_free(&c.p);
}

/* HAKD_FROZEN_CACHE_MB=0 keeps nothing, and the results stay the same. */
TEST(zero_budget_keeps_nothing) {
  frozen_case c;
  case_init(&c, 2, 32, 48, 8, 1, 400);
  setenv("HAKD_FROZEN_CACHE_MB", "0", 1);
  size_t kept = check_case(&c, 1, 0, "budget 0");
  unsetenv("HAKD_FROZEN_CACHE_MB");
  ASSERT_TRUE(kept == 0);
  hakd_params_free(&c.p);
}

/* A budget that is not a number of MB fails the frozen forward with the variable named (a typo
 * must not silently keep the default). */
TEST(bad_budget_is_refused_by_name) {
  frozen_case c;
  case_init(&c, 1, 32, 48, 8, 1, 700);
  hakd_params_freeze(&c.p, 1);
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_grad(ctx, 0);
  hakd_ctx_set_training(ctx, 0);
  const char *bad[3] = {"lots", "-5", "12MB"};
  for (int i = 0; i < 3 && !test_failed(); i++) {
    setenv("HAKD_FROZEN_CACHE_MB", bad[i], 1);
    hakd_tensor *y = case_run(ctx, &c, 0, 0);
    if (y || hakd_ctx_status(ctx) != HAKD_EINVAL || !strstr(hakd_error_message(), "HAKD_FROZEN_CACHE_MB") ||
        !strstr(hakd_error_message(), bad[i]))
      test_fail(__FILE__, __LINE__, "HAKD_FROZEN_CACHE_MB=%s: expected a refusal naming it, got %s", bad[i],
                y ? "a result" : hakd_error_message());
  }
  unsetenv("HAKD_FROZEN_CACHE_MB");
  ASSERT_TRUE(case_run(ctx, &c, 0, 0) != NULL); /* and fine again without it */
  hakd_ctx_free(ctx);
  hakd_params_free(&c.p);
}

/* A budget smaller than the model's packed weights (1 MB against r18-d8 at width 0.25's 2-3 MB):
 * entries are evicted and made again, least recently used first, and the logits stay the
 * unfrozen ones bit for bit, forward after forward. */
TEST(evictions_under_a_small_budget_keep_results) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 5;
  o.width = 0.25f;
  hakd_model *m = NULL;
  ASSERT_OK(hakd_model_create("deeplabv3-r18-d8", &o, &m));
  hakd_model_init(m, 9);
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_grad(ctx, 0);
  hakd_ctx_set_training(ctx, 0);
  int64_t xs[4] = {2, 3, 64, 64};
  float *img = malloc(2 * 3 * 64 * 64 * sizeof(float)), *want = NULL;
  ASSERT_TRUE(img != NULL);
  fill_normal(img, 2 * 3 * 64 * 64, 1.0f, 600);
  ops_release();
  setenv("HAKD_FROZEN_CACHE_MB", "1", 1);
  uint64_t packs = ops_frozen_weights_packs();
  for (int run = 0; run < 4 && !test_failed(); run++) {
    if (run == 1) hakd_params_freeze(hakd_model_params(m), 1);
    hakd_ctx_reset(ctx);
    hakd_model_output out;
    hakd_tensor *x = hakd_tensor_wrap(ctx, HAKD_F32, 4, xs, img);
    if (hakd_model_forward(m, ctx, x, &out)) {
      test_fail(__FILE__, __LINE__, "run %d: %s", run, hakd_error_message());
      break;
    }
    int64_t n = hakd_numel(out.logits);
    if (run == 0) {
      want = copy_floats(hakd_f32(out.logits), n);
      if (!want) test_fail(__FILE__, __LINE__, "out of memory");
    } else if (memcmp(want, hakd_f32(out.logits), (size_t)n * sizeof(float)) != 0) {
      test_fail(__FILE__, __LINE__, "run %d: frozen logits differ under a 1 MB budget", run);
    }
    if (ops_frozen_weights_bytes() > ((size_t)1 << 20))
      test_fail(__FILE__, __LINE__, "run %d: %zu bytes kept over a 1 MB budget", run, ops_frozen_weights_bytes());
  }
  unsetenv("HAKD_FROZEN_CACHE_MB");
  /* three frozen forwards of a model whose packed weights do not fit: packed again each time */
  uint64_t made = ops_frozen_weights_packs() - packs;
  if (!test_failed() && made < 6) test_fail(__FILE__, __LINE__, "%llu packs: no evictions?", (unsigned long long)made);
  ops_release();
  free(img);
  free(want);
  hakd_ctx_free(ctx);
  hakd_model_free(m);
}

/* A whole model: the logits of deeplabv3-r18-d8 at 64x64 (layer4 and the ASPP on 8x8 maps) frozen
 * equal the unfrozen ones bit for bit, twice; weights loaded into the frozen model (hakd_model_load
 * renews the stamps) give what an unfrozen model with them gives, bit for bit. */
static int forward_logits(hakd_model *m, hakd_ctx *ctx, float *img, float **out) {
  int64_t xs[4] = {2, 3, 64, 64};
  hakd_ctx_reset(ctx);
  hakd_tensor *x = hakd_tensor_wrap(ctx, HAKD_F32, 4, xs, img);
  hakd_model_output o;
  int rc = hakd_model_forward(m, ctx, x, &o);
  if (rc) return rc;
  *out = copy_floats(hakd_f32(o.logits), hakd_numel(o.logits));
  return *out ? 0 : HAKD_ENOMEM;
}

TEST(frozen_model_equals_unfrozen_and_sees_a_reload) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 5;
  o.width = 0.25f;
  hakd_model *m[2] = {NULL, NULL}; /* seeds 7 and 8 */
  float *logits[2][3] = {{NULL}}; /* unfrozen, frozen, frozen again */
  char path[2][512];
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_grad(ctx, 0);
  hakd_ctx_set_training(ctx, 0);
  float *img = malloc(2 * 3 * 64 * 64 * sizeof(float)), *reloaded[2] = {NULL, NULL};
  ASSERT_TRUE(img != NULL);
  fill_normal(img, 2 * 3 * 64 * 64, 1.0f, 500);
  int64_t n = 5 * 8 * 8 * 2;
  for (int i = 0; i < 2; i++) {
    ASSERT_OK(hakd_model_create("deeplabv3-r18-d8", &o, &m[i]));
    hakd_model_init(m[i], 7 + (uint64_t)i);
    snprintf(path[i], sizeof path[i], "%s/frozen_seed%d.safetensors", test_tmpdir(), 7 + i);
    ASSERT_OK(hakd_params_save(hakd_model_params(m[i]), path[i], NULL));
    ASSERT_OK(forward_logits(m[i], ctx, img, &logits[i][0]));
    hakd_params_freeze(hakd_model_params(m[i]), 1);
    ASSERT_OK(forward_logits(m[i], ctx, img, &logits[i][1]));
    ASSERT_OK(forward_logits(m[i], ctx, img, &logits[i][2]));
    for (int k = 1; k < 3; k++)
      if (memcmp(logits[i][0], logits[i][k], (size_t)n * sizeof(float)) != 0)
        test_fail(__FILE__, __LINE__, "seed %d: frozen forward %d differs from the unfrozen one", 7 + i, k);
  }
  ASSERT_TRUE(ops_frozen_weights_bytes() > 0);
  ASSERT_TRUE(memcmp(logits[0][0], logits[1][0], (size_t)n * sizeof(float)) != 0);
  /* the frozen seed-7 model (its packed weights kept) loads seed 8's file, then its own again */
  for (int k = 0; k < 2; k++) {
    hakd_load_options lo;
    hakd_load_options_default(&lo);
    ASSERT_OK(hakd_model_load(m[0], path[1 - k], &lo, NULL));
    ASSERT_OK(forward_logits(m[0], ctx, img, &reloaded[k]));
    if (memcmp(reloaded[k], logits[1 - k][0], (size_t)n * sizeof(float)) != 0)
      test_fail(__FILE__, __LINE__, "the frozen model after loading %s differs from an unfrozen one with it", path[1 - k]);
  }
  free(img);
  for (int i = 0; i < 2; i++) {
    free(reloaded[i]);
    for (int k = 0; k < 3; k++) free(logits[i][k]);
    hakd_model_free(m[i]);
  }
  hakd_ctx_free(ctx);
}
