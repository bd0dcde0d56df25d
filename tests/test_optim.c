/* Optimizers and schedule against torch.optim (tools/gen_optim.py). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "hakd/io.h"
#include "hakd/optim.h"

/* fp32 updates of a few steps: PyTorch computes step sizes in double, we in float, so the
 * parameters agree to a few ulps; 1e-6 relative leaves margin. */
#define OPTIM_TOL 1e-6

static void run_optimizer_case(hakd_optim_kind kind, const char *tag, float clip) {
  hakd_st_file *f;
  ASSERT_OK(hakd_st_open(test_fixture_path("train/optim.safetensors"), &f));
  hakd_params p;
  hakd_params_init(&p);
  int64_t wshape[2] = {4, 3}, bshape[1] = {3};
  hakd_tensor *w = hakd_params_add(&p, "head.w", 2, wshape, 0);
  hakd_tensor *b = hakd_params_add(&p, "head.b", 1, bshape, 0);
  ASSERT_OK(hakd_st_read_f32(f, "w0", hakd_f32(w), 12));
  ASSERT_OK(hakd_st_read_f32(f, "b0", hakd_f32(b), 3));
  hakd_optim_config c;
  hakd_optim_config_default(&c, kind);
  c.weight_decay = 0.05f;
  c.clip_norm = clip;
  hakd_optimizer *o = hakd_optim_new(&c);
  float lr = kind == HAKD_OPTIM_SGD ? 0.1f : 0.01f;
  ASSERT_EQ_INT(hakd_optim_add_group(o, &p, "head.w", 1.0f, 0), 1);
  ASSERT_EQ_INT(hakd_optim_add_group(o, &p, NULL, 10.0f, 1), 1); /* b: 10x lr, no decay (1-D) */
  for (int k = 0; k < 3; k++) {
    char name[64];
    snprintf(name, sizeof name, "grad%d.w", k);
    ASSERT_OK(hakd_st_read_f32(f, name, w->grad, 12));
    snprintf(name, sizeof name, "grad%d.b", k);
    ASSERT_OK(hakd_st_read_f32(f, name, b->grad, 3));
    hakd_optim_step(o, lr);
    float want_w[12], want_b[3];
    snprintf(name, sizeof name, "%s.clip%d.step%d.w", tag, (int)clip, k);
    ASSERT_OK(hakd_st_read_f32(f, name, want_w, 12));
    snprintf(name, sizeof name, "%s.clip%d.step%d.b", tag, (int)clip, k);
    ASSERT_OK(hakd_st_read_f32(f, name, want_b, 3));
    ASSERT_ALLCLOSE(hakd_f32(w), want_w, 12, OPTIM_TOL);
    ASSERT_ALLCLOSE(hakd_f32(b), want_b, 3, OPTIM_TOL);
  }
  ASSERT_EQ_INT(hakd_optim_state_count(o), kind == HAKD_OPTIM_ADAMW ? 4 : 2);
  hakd_optim_free(o);
  hakd_params_free(&p);
  hakd_st_close(f);
}

TEST(sgd_momentum_groups_match_torch) { run_optimizer_case(HAKD_OPTIM_SGD, "sgd", 0.0f); }
TEST(sgd_clip_grad_norm_matches_torch) { run_optimizer_case(HAKD_OPTIM_SGD, "sgd", 1.0f); }
TEST(adamw_groups_match_torch) { run_optimizer_case(HAKD_OPTIM_ADAMW, "adamw", 0.0f); }
TEST(adamw_clip_grad_norm_matches_torch) { run_optimizer_case(HAKD_OPTIM_ADAMW, "adamw", 1.0f); }

/* Without clipping, the step takes the gradient norm it returns in the same pass as the update
 * (optim.c update_param): the norm and the updated weights are bit for bit those of a clipped
 * step whose threshold is never reached (a pass of its own first), for tensors split over
 * threads (300000 elements) and small ones, and the norm is the gradients' L2 norm. */
static double step_once(hakd_optim_kind kind, float clip, float *w_out, float *b_out, int64_t nw) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t wshape[1] = {nw}, bshape[1] = {7};
  hakd_tensor *w = hakd_params_add(&p, "w", 1, wshape, 0), *b = hakd_params_add(&p, "b", 1, bshape, 0);
  uint64_t rng = hakd_rng_seed(3);
  for (int64_t i = 0; i < nw; i++) hakd_f32(w)[i] = hakd_rng_normal(&rng), w->grad[i] = hakd_rng_normal(&rng);
  for (int i = 0; i < 7; i++) hakd_f32(b)[i] = hakd_rng_normal(&rng), b->grad[i] = hakd_rng_normal(&rng);
  hakd_optim_config c;
  hakd_optim_config_default(&c, kind);
  c.clip_norm = clip;
  hakd_optimizer *o = hakd_optim_new(&c);
  double norm = -1;
  if (o && hakd_optim_add_group(o, &p, NULL, 1.0f, 0) == 2) {
    norm = hakd_optim_step(o, 0.1f);
    memcpy(w_out, hakd_f32(w), (size_t)nw * sizeof(float));
    memcpy(b_out, hakd_f32(b), 7 * sizeof(float));
  }
  hakd_optim_free(o);
  hakd_params_free(&p);
  return norm;
}

TEST(unclipped_norm_in_the_update_pass_equals_its_own_pass) {
  enum { NW = 300000 };
  static float w[2][NW];
  float b[2][7];
  hakd_optim_kind kinds[2] = {HAKD_OPTIM_SGD, HAKD_OPTIM_ADAMW};
  for (int k = 0; k < 2; k++) {
    double unclipped = step_once(kinds[k], 0.0f, w[0], b[0], NW), clipped = step_once(kinds[k], 1e30f, w[1], b[1], NW);
    ASSERT_TRUE(unclipped > 0 && memcmp(&unclipped, &clipped, sizeof unclipped) == 0);
    ASSERT_TRUE(memcmp(w[0], w[1], sizeof w[0]) == 0 && memcmp(b[0], b[1], sizeof b[0]) == 0);
    /* the L2 norm of 300007 standard normal draws: sqrt(300007) within a few percent */
    ASSERT_NEAR(unclipped / sqrt(300007.0), 1.0, 0.02);
  }
}

TEST(poly_schedule_with_warmup_matches_mmseg) {
  hakd_st_file *f;
  ASSERT_OK(hakd_st_open(test_fixture_path("train/optim.safetensors"), &f));
  float want[100];
  ASSERT_OK(hakd_st_read_f32(f, "poly_lr", want, 100));
  hakd_schedule s = {.base_lr = 0.01f, .max_iters = 100, .power = 0.9f, .min_lr = 1e-4f, .warmup_iters = 10,
                     .warmup_ratio = 0.1f};
  float got[100];
  for (int i = 0; i < 100; i++) got[i] = hakd_schedule_lr(&s, i);
  ASSERT_ALLCLOSE(got, want, 100, 1e-6); /* float result of a double formula */
  hakd_st_close(f);
}
