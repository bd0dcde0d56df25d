/* Data-parallel runs (mpirun, src/dist): 2 ranks x batch 2 reach the weights of 1 rank x batch 4,
 * with SyncBN, for a CNN, a Transformer and a HeteroAKD distillation; checkpoints resume across a
 * change of the rank count; a global batch that does not split is refused. The runs are the
 * built CLI ($HAKD_CLI) under the mpirun CMake found (tiny widths, 32x32 crops: seconds). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/dist.h"
#include "hakd/model.h"
#include "harness.h"
#include "train_testutil.h"

/* Equality of the weights "where the arithmetic allows": the ranks add their partial sums (of the
 * gradients, of the BatchNorm statistics) in another order than one process does, so the
 * weights agree to rounding, not bit for bit. */
#define DIST_TOL 1e-5
/* The saved optimizer state holds gradients (momentum buffers), which amplify those rounding
 * differences of the weights about tenfold at these tiny widths (8 channels per BatchNorm). */
#define DIST_STATE_TOL 1e-4

static const char *mpiexec(void) {
  if (!HAKD_MPIEXEC[0]) test_skip("built without MPI (CMake found none): data-parallel runs are not built");
  if (!hakd_dist_built_with_mpi()) test_fail(__FILE__, __LINE__, "CMake found mpirun but the library has no MPI");
  return HAKD_MPIEXEC;
}

/* Runs `hakd <verb> <args> --work-dir <tmp>/<work>` on `ranks` processes; output in out. */
static int run_hakd(int ranks, const char *verb, const char *args, const char *work, char *out, size_t size) {
  const char *cli = getenv("HAKD_CLI");
  if (!cli) {
    snprintf(out, size, "HAKD_CLI is not set (ctest sets it to the built hakd)");
    return -1;
  }
  char cmd[4096];
  if (ranks > 1) {
    /* The sanitizer build's LeakSanitizer sees what OpenMPI itself keeps until exit: suppress
     * its modules only (tests/lsan_openmpi.supp), with components kept loaded so that their
     * frames have names, and full unwinding so that an OpenMPI frame is found where there is one.
     * mpirun hands the environment to the processes it starts on this machine. */
    setenv("OMPI_MCA_mca_base_component_disable_dlclose", "1", 0);
    setenv("LSAN_OPTIONS", "suppressions=" HAKD_SOURCE_DIR "/tests/lsan_openmpi.supp:fast_unwind_on_malloc=0", 0);
  }
  if (ranks > 1)
    /* single_copy_mechanism none: containers without ptrace rights refuse OpenMPI's default copy */
    snprintf(cmd, sizeof cmd,
             "%s --oversubscribe --allow-run-as-root --bind-to none --mca btl_vader_single_copy_mechanism none "
             "-np %d %s %s %s --work-dir %s/%s",
             mpiexec(), ranks, cli, verb, args, test_tmpdir(), work);
  else
    snprintf(cmd, sizeof cmd, "%s %s %s --work-dir %s/%s", cli, verb, args, test_tmpdir(), work);
  int rc = test_run_capture(cmd, out, size);
  if (rc != 0) fprintf(stderr, "%s\n-> exit %d:\n%s\n", cmd, rc, out);
  return rc;
}

/* max |a - b| / max |b| over every float of <work>/<file> in the two runs */
static double weights_error(const char *work_a, const char *work_b, const char *file) {
  char pa[1200], pb[1200];
  snprintf(pa, sizeof pa, "%s/%s/%s", test_tmpdir(), work_a, file);
  snprintf(pb, sizeof pb, "%s/%s/%s", test_tmpdir(), work_b, file);
  float *a = NULL, *b = NULL;
  int64_t na = 0, nb = 0;
  double err = INFINITY;
  if (!read_all_floats(pa, &a, &na) && !read_all_floats(pb, &b, &nb) && na == nb && na > 0)
    err = test_max_rel_err(a, b, na, 1e-6);
  else
    fprintf(stderr, "%s / %s: cannot compare (%lld and %lld floats): %s\n", pa, pb, (long long)na, (long long)nb,
            hakd_error_message());
  free(a);
  free(b);
  printf("%s: %s vs %s: max relative difference %.3g\n", file, work_a, work_b, err);
  return err;
}

/* Tiny run: random rescale 0.5..2 on 32x32 images pads some crops with ignored pixels, in other
 * numbers on each rank (the cross-entropy's global normalisation has to be right); a loader thread
 * per rank; one compute thread. */
static void common_args(char *buf, size_t size, const char *model, int iters) {
  snprintf(buf, size,
           "--model %s --width 0.125 --dataset generic --data-root %s --crop 32x32 --batch 4 --iters %d --workers 1 "
           "--threads 1 --memory-check 0 --log-every 1 --lr 0.01",
           model, make_dataset(), iters);
}

static void two_ranks_match_one(const char *verb, const char *args) {
  static char out[1 << 16];
  mpiexec();
  ASSERT_EQ_INT(run_hakd(1, verb, args, "one", out, sizeof out), 0);
  ASSERT_EQ_INT(run_hakd(2, verb, args, "two", out, sizeof out), 0);
  ASSERT_TRUE(strstr(out, "data parallel: 2 processes x batch 2, SyncBN on") != NULL);
  ASSERT_TRUE(strstr(out, "gradient all-reduce of") != NULL);
  /* rank 0 alone printed: one summary line */
  ASSERT_TRUE(strstr(out, "done: 3 iterations") != NULL && !strstr(strstr(out, "done: 3 iterations") + 1, "done:"));
  ASSERT_TRUE(weights_error("one", "two", "latest.safetensors") < DIST_TOL);
  /* optimizer state, BatchNorm running statistics and the distillation projectors */
  ASSERT_TRUE(weights_error("one", "two", "latest.state.safetensors") < DIST_STATE_TOL);
}

TEST(cnn_two_ranks_of_batch_2_match_one_rank_of_batch_4) {
  char args[2048];
  common_args(args, sizeof args, "deeplabv3-r18-d8", 3);
  two_ranks_match_one("train", args);
}

/* bf16 training keeps a CNN's activations blocked bfloat16 (src/ops/bf16_batchnorm.c): its
 * BatchNorm reduces the same sums over the ranks (SyncBN). The ranks' activations round to
 * bfloat16 from statistics summed in another order, so a value near a rounding boundary can land
 * one bfloat16 step (2^-8 relative) apart and the weights agree to BF16_DIST_TOL, not 1e-5
 * (without the reduction, the local batch's statistics move them by more than 1e-4: the test
 * below). */
#define BF16_DIST_TOL 1e-4
TEST(cnn_bf16_blocked_two_ranks_match_one_rank) {
  static char out[1 << 16];
  mpiexec();
  char args[2048], bf16[2100];
  common_args(args, sizeof args, "deeplabv3-r18-d8", 3);
  snprintf(bf16, sizeof bf16, "%s --precision bf16", args);
  int rc_one = run_hakd(1, "train", bf16, "one", out, sizeof out);
  if (!hakd_bf16_supported()) { /* refused with the reason where bf16 cannot run (bf16.h) */
    ASSERT_TRUE(rc_one != 0);
    ASSERT_TRUE(strstr(out, "AVX512-BF16") != NULL);
    return;
  }
  ASSERT_EQ_INT(rc_one, 0);
  ASSERT_EQ_INT(run_hakd(2, "train", bf16, "two", out, sizeof out), 0);
  ASSERT_TRUE(strstr(out, "SyncBN on") != NULL);
  ASSERT_TRUE(weights_error("one", "two", "latest.safetensors") < BF16_DIST_TOL);
  /* the blocked path ran: the plain bf16 path (float32 activations) ends elsewhere */
  setenv("HAKD_BF16_BLOCKED_TRAIN", "0", 1);
  int rc = run_hakd(1, "train", bf16, "plain", out, sizeof out);
  unsetenv("HAKD_BF16_BLOCKED_TRAIN");
  ASSERT_EQ_INT(rc, 0);
  ASSERT_TRUE(weights_error("one", "plain", "latest.safetensors") > 1e-6);
}

/* drop path (0.1 by default) and dropout draw per sample: the masks are the same however the
 * batch is split */
TEST(transformer_two_ranks_of_batch_2_match_one_rank_of_batch_4) {
  char args[2048];
  common_args(args, sizeof args, "segformer-b0", 3);
  two_ranks_match_one("train", args);
}

TEST(heteroakd_distillation_two_ranks_match_one_rank) {
  mpiexec();
  /* a random SegFormer teacher: the step's arithmetic, not its quality, is under test */
  hakd_model_options mo;
  hakd_model_options_default(&mo);
  mo.num_classes = HAKD_SYNTH_NUM_CLASSES;
  mo.width = 0.125f;
  hakd_model *teacher = NULL;
  ASSERT_OK(hakd_model_create("segformer-b0", &mo, &teacher));
  hakd_model_init(teacher, 5);
  char weights[700];
  snprintf(weights, sizeof weights, "%s/teacher.safetensors", test_tmpdir());
  int rc = hakd_params_save(hakd_model_params(teacher), weights, NULL);
  hakd_model_free(teacher);
  ASSERT_OK(rc);
  char base[2048], args[4096];
  common_args(base, sizeof base, "deeplabv3-r18-d8", 3);
  snprintf(args, sizeof args,
           "%s --teacher segformer-b0 --teacher-width 0.125 --teacher-weights %s --method heteroakd --warmup-iters 0",
           base, weights);
  two_ranks_match_one("distill", args);
}

/* A 2-rank run stopped at iteration 2 resumes on 1 rank: the checkpoint holds the global batch's
 * loader state and the same weights on every rank, so the result is the 1-rank run's. */
TEST(two_rank_checkpoint_resumes_on_one_rank) {
  static char out[1 << 16];
  mpiexec();
  char args[2048], stop[2100];
  common_args(args, sizeof args, "deeplabv3-r18-d8", 4);
  snprintf(stop, sizeof stop, "%s --stop-after 2", args);
  ASSERT_EQ_INT(run_hakd(1, "train", args, "straight", out, sizeof out), 0);
  ASSERT_EQ_INT(run_hakd(2, "train", stop, "moved", out, sizeof out), 0);
  char resume[2100];
  snprintf(resume, sizeof resume, "%s --resume auto", args);
  ASSERT_EQ_INT(run_hakd(1, "train", resume, "moved", out, sizeof out), 0);
  ASSERT_TRUE(strstr(out, "at iteration 2") != NULL);
  ASSERT_TRUE(strstr(out, "done: 4 iterations") != NULL);
  ASSERT_TRUE(weights_error("straight", "moved", "latest.safetensors") < DIST_TOL);
  ASSERT_TRUE(weights_error("straight", "moved", "latest.state.safetensors") < DIST_STATE_TOL);
}

/* On the same rank count the arithmetic is the same: a resumed 2-rank run is bit-identical. */
TEST(two_rank_resume_on_two_ranks_is_bit_identical) {
  static char out[1 << 16];
  mpiexec();
  char args[2048], stop[2100], resume[2100];
  common_args(args, sizeof args, "deeplabv3-r18-d8", 4);
  snprintf(stop, sizeof stop, "%s --stop-after 2", args);
  snprintf(resume, sizeof resume, "%s --resume auto", args);
  ASSERT_EQ_INT(run_hakd(2, "train", args, "straight", out, sizeof out), 0);
  ASSERT_EQ_INT(run_hakd(2, "train", stop, "resumed", out, sizeof out), 0);
  ASSERT_EQ_INT(run_hakd(2, "train", resume, "resumed", out, sizeof out), 0);
  ASSERT_TRUE(strstr(out, "at iteration 2") != NULL);
  ASSERT_TRUE(weights_error("straight", "resumed", "latest.safetensors") == 0);
  ASSERT_TRUE(weights_error("straight", "resumed", "latest.state.safetensors") == 0);
}

TEST(one_rank_checkpoint_resumes_on_two_ranks) {
  static char out[1 << 16];
  mpiexec();
  char args[2048], stop[2100], resume[2100];
  common_args(args, sizeof args, "deeplabv3-r18-d8", 4);
  snprintf(stop, sizeof stop, "%s --stop-after 2", args);
  snprintf(resume, sizeof resume, "%s --resume auto", args);
  ASSERT_EQ_INT(run_hakd(1, "train", args, "straight", out, sizeof out), 0);
  ASSERT_EQ_INT(run_hakd(1, "train", stop, "moved", out, sizeof out), 0);
  ASSERT_EQ_INT(run_hakd(2, "train", resume, "moved", out, sizeof out), 0);
  ASSERT_TRUE(strstr(out, "at iteration 2") != NULL);
  ASSERT_TRUE(weights_error("straight", "moved", "latest.safetensors") < DIST_TOL);
}

/* Without SyncBN each rank normalises with its own 2 images: the run works and stays in step (rank
 * 0's running statistics are broadcast), but its weights are not the 1-rank run's. */
TEST(without_sync_bn_batchnorm_sees_the_local_batch) {
  static char out[1 << 16];
  mpiexec();
  char args[2048], off[2100];
  common_args(args, sizeof args, "deeplabv3-r18-d8", 3);
  snprintf(off, sizeof off, "%s --sync-bn 0", args);
  ASSERT_EQ_INT(run_hakd(1, "train", args, "one", out, sizeof out), 0);
  ASSERT_EQ_INT(run_hakd(2, "train", off, "two", out, sizeof out), 0);
  ASSERT_TRUE(strstr(out, "SyncBN off") != NULL);
  ASSERT_TRUE(weights_error("one", "two", "latest.safetensors") > 1e-4);
}

TEST(global_batch_that_does_not_split_over_the_ranks_is_refused) {
  static char out[1 << 16];
  mpiexec();
  char args[2048], odd[2100];
  common_args(args, sizeof args, "deeplabv3-r18-d8", 2);
  snprintf(odd, sizeof odd, "%s --batch 3", args);
  ASSERT_TRUE(run_hakd(2, "train", odd, "odd", out, sizeof out) != 0);
  ASSERT_TRUE(strstr(out, "--batch 3") != NULL && strstr(out, "2 processes") != NULL && strstr(out, "--batch 4"));
}
