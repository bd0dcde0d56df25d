/* Knowledge distillation: the HeteroAKD loss (HETEROAKD.md sections 1-8) and the baselines
 * (Hinton KD, channel-wise distillation, FitNet) as differentiable losses, and a distiller that
 * owns the trainable projectors/aligners and turns teacher + student outputs into loss terms.
 *
 * Every loss returns a scalar step tensor of shape (1) with its backward recorded on the tape;
 * sums are accumulated in double. The teacher side of every loss is a constant: gradients flow
 * only into the student tensor (for L_hakd through r = softmax(Z_s/T) only; S_t, Z_hyb and the
 * KEM weights W are constants). */
#ifndef HAKD_DISTILL_H
#define HAKD_DISTILL_H

#include "hakd/model.h"
#include "hakd/tensor.h"

/* ---- losses ------------------------------------------------------------------------------ */

typedef enum { HAKD_RELIABILITY_CE = 0, HAKD_RELIABILITY_BCE = 1 } hakd_reliability;
typedef enum { HAKD_KEM_AXIS_SPATIAL = 0, HAKD_KEM_AXIS_CLASS = 1 } hakd_kem_axis;

typedef struct {
  float T;                      /* temperature of the KL term, 4 */
  hakd_reliability reliability; /* ce: per pixel; bce: per pixel and class (one-vs-rest) */
  hakd_kem_axis kem_axis;       /* KEM softmax over the valid pixels of an image (spatial; for bce
                                   per class) or over the classes of a pixel (class, bce only) */
  int no_kmm;                   /* ablation: Z_hyb = Z_t */
  int no_kem;                   /* ablation: W = 1 / (valid pixels of the image) at every valid
                                   pixel (and class, for bce) */
  int ignore_index;             /* 255 */
} hakd_hakd_loss_options;

void hakd_hakd_loss_options_default(hakd_hakd_loss_options *o);

/* L_hakd of HETEROAKD.md sections 2-5 on the grid of z_s:
 *   z_s (N,K,h,w) the student's projected logits (gradient flows into it);
 *   z_t (N,K,h',w') the teacher's projected logits, a constant, resized bilinearly
 *       (align_corners=False) to h x w when its grid differs;
 *   labels I32 (N,H,W), resized to h x w with PyTorch's nearest rule when H x W differs;
 *       values in [0,K) or ignore_index.
 * L = T^2 / N * sum_n sum_p W_np KL(q_np || r_np), q = softmax(Z_hyb/T), r = softmax(Z_s/T)
 * (per-class Bernoulli KL for bce). An image without a valid pixel contributes 0.
 * weights_out (may be NULL) receives the KEM weight map W: (N,h,w) for ce, (N,K,h,w) for bce,
 * 0 at ignored pixels; with the spatial axis it sums to 1 over each image (each image and
 * class for bce) that has a valid pixel. Note the class axis (bce) normalises per pixel, so
 * its L grows with the number of valid pixels. reference: tools/gen_distill.py hakd_loss */
hakd_tensor *hakd_loss_hakd(hakd_ctx *ctx, hakd_tensor *z_s, hakd_tensor *z_t, hakd_tensor *labels,
                            const hakd_hakd_loss_options *o, hakd_tensor **weights_out);

/* Hinton KD per pixel: T^2 * mean over all N*h*w pixels of KL(softmax(t/T) || softmax(s/T))
 * over classes (every pixel counts, as CIRKD). s (N,K,h,w); t (N,K,h',w') constant, resized
 * bilinearly to h x w when its grid differs.
 * reference: F.kl_div(F.log_softmax(s/T,1), F.softmax(t/T,1), reduction="sum") * T^2 / (N*h*w) */
hakd_tensor *hakd_loss_kd(hakd_ctx *ctx, hakd_tensor *s, hakd_tensor *t, float T);

/* Channel-wise distillation: per channel softmax over h*w of x/T, KL(teacher || student),
 * summed, / (N*C), times T^2. s (N,C,h,w); t (N,C,h',w') constant, resized bilinearly to h x w
 * when its grid differs. reference: tools/gen_distill.py cwd_loss */
hakd_tensor *hakd_loss_cwd(hakd_ctx *ctx, hakd_tensor *s, hakd_tensor *t, float T);

/* mean((x - target)^2) over all elements; target (same shape) is a constant.
 * reference: F.mse_loss(x, target.detach()) */
hakd_tensor *hakd_loss_mse(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *target);

/* ---- distiller ---------------------------------------------------------------------------- */

typedef enum {
  HAKD_DISTILL_NONE = 0,
  HAKD_DISTILL_KD,
  HAKD_DISTILL_CWD,
  HAKD_DISTILL_FITNET,
  HAKD_DISTILL_HETEROAKD
} hakd_distill_method;

/* Where Z_s and Z_t meet (section 1): the student's output logits grid, the student stage's
 * grid, or the teacher stage's grid. */
typedef enum { HAKD_GRID_LOGITS = 0, HAKD_GRID_STUDENT, HAKD_GRID_TEACHER } hakd_grid;

typedef struct {
  /* HeteroAKD */
  int stages[4];     /* distilled backbone stages (1..4), default {4} */
  int n_stages;      /* 1 */
  float T;           /* 4 */
  float lambda_kd;   /* 0.1: Hinton KD on the final logits (method kd and heteroakd) */
  float lambda_hakd; /* 1 */
  float lambda_proj; /* 1 */
  int64_t warmup_iters; /* -1: 10% of the total iterations given to hakd_distiller_create */
  hakd_reliability reliability;
  hakd_kem_axis kem_axis;
  int no_kmm, no_kem;
  int proj_relu;            /* 0: projector = 1x1 conv -> BN (no ReLU) */
  hakd_grid grid;           /* HAKD_GRID_LOGITS */
  int proj_grad_to_student; /* 0: L_proj sees the student feature through a stop-gradient */
  int ignore_index;         /* 255 */
  float bn_momentum;        /* 0.1, of the projector / aligner BatchNorms */
  /* baselines */
  float kd_T;          /* 1 */
  float cwd_T;         /* 4 */
  float lambda_cwd;    /* 3 */
  int cwd_feature;     /* 0; 1: CWD also on stage 4 through a 1x1 alignment conv */
  int fitnet_stage;    /* 4 */
  float lambda_fitnet; /* 1 */
} hakd_distill_options;

void hakd_distill_options_default(hakd_distill_options *o);

/* "none" | "kd" | "cwd" | "fitnet" | "heteroakd" and the like; parse errors name the value. */
int hakd_distill_method_parse(const char *text, hakd_distill_method *out);
const char *hakd_distill_method_name(hakd_distill_method m);
int hakd_reliability_parse(const char *text, hakd_reliability *out);   /* ce | bce */
int hakd_kem_axis_parse(const char *text, hakd_kem_axis *out);         /* spatial | class */
int hakd_grid_parse(const char *text, hakd_grid *out);                 /* logits | student | teacher */
/* "4" or "2,3,4": distinct stages in 1..4, written to o->stages / o->n_stages. */
int hakd_distill_stages_parse(const char *text, hakd_distill_options *o);

typedef struct hakd_distiller hakd_distiller;

/* Borrows both models (they must outlive the distiller); teacher may be NULL for method none.
 * Checks the options against the models (same num_classes, stages in range) and creates the
 * trainable parameters, initialised as PyTorch does (hakd_distiller_init with seed 0):
 *   heteroakd: distill.proj_s.<stage>.{0 conv 1x1 C_s->K, 1 BN}, distill.proj_t.<stage>.{0, 1}
 *   fitnet:    distill.fitnet.{0 conv 1x1 C_s->C_t, 1 BN} on fitnet_stage
 *   cwd with cwd_feature: distill.cwd_align.{weight, bias} (1x1 conv C_s->C_t, stage 4)
 * total_iters sets the default warm-up (10%). */
int hakd_distiller_create(hakd_model *teacher, hakd_model *student, hakd_distill_method method,
                          const hakd_distill_options *o, int64_t total_iters, hakd_distiller **out);
void hakd_distiller_free(hakd_distiller *d);
/* Re-initialises the parameters: convs kaiming-uniform(a=sqrt(5)) with uniform bias (nn.Conv2d
 * defaults), BN weight 1, bias 0, running stats 0/1. */
void hakd_distiller_init(hakd_distiller *d, uint64_t seed);
/* Trainable parameters and BN buffers, named as above (empty for none/kd/cwd on logits). */
hakd_params *hakd_distiller_params(hakd_distiller *d);
hakd_distill_method hakd_distiller_method(const hakd_distiller *d);
const hakd_distill_options *hakd_distiller_options(const hakd_distiller *d);
/* Iterations 0 .. warmup_iters-1 are warm-up. */
int64_t hakd_distiller_warmup_iters(const hakd_distiller *d);

typedef struct {
  /* Each a (1) step tensor, NULL when the method has no such term. Computed (for the log)
   * during warm-up too, but then left out of `total`. */
  hakd_tensor *kd;     /* Hinton KD on the final logits upsampled to the label size */
  hakd_tensor *hakd;   /* sum over stages of L_hakd */
  hakd_tensor *proj;   /* sum over stages of L_proj */
  hakd_tensor *cwd;    /* CWD on logits (+ on stage 4 with cwd_feature) */
  hakd_tensor *fitnet; /* FitNet MSE */
  /* lambda-weighted sum of the terms above (shape (1); a constant 0 when nothing applies);
   * the trainer adds its CE (+ 0.4 aux CE) to it. */
  hakd_tensor *total;
  float lambda_kd, lambda_hakd, lambda_proj, lambda_cwd, lambda_fitnet; /* weights used this iteration */
  int warmup;                   /* 1 while iter < warmup_iters */
  int n_stages;                 /* HeteroAKD stages in kem_weights / stages */
  int stages[4];
  hakd_tensor *kem_weights[4];  /* KEM W per distilled stage ((N,h,w) ce, (N,K,h,w) bce) */
} hakd_distill_losses;

/* One training step's distillation terms.
 *   teacher: the teacher's output, computed by the caller with grad off and training off (its
 *            tensors are treated as constants whatever their flags);
 *   student: the student's output from this step's forward pass (grad on);
 *   labels:  I32 (N,H,W) at the input resolution, ignore_index for unlabelled pixels;
 *   iter:    0-based iteration, for the warm-up.
 * Projectors run in the context's training mode (batch statistics while training). */
int hakd_distiller_forward(hakd_distiller *d, hakd_ctx *ctx, const hakd_model_output *teacher,
                           const hakd_model_output *student, hakd_tensor *labels, int64_t iter,
                           hakd_distill_losses *out);

#endif
