/* hakd_bench_run and `hakd bench`: the reported numbers follow the documented conventions
 * (median, images/s, FLOP counts per mode, optimizer per family) on tiny width-scaled models. */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hakd/bench.h"

static void tiny_config(hakd_bench_config *c, const char *model, hakd_bench_mode mode) {
  hakd_bench_config_default(c);
  c->model = model;
  c->mode = mode;
  c->height = c->width = 32;
  c->batch = 2;
  c->width_mult = 0.125f;
  c->warmup = 1;
  c->iters = 3;
  c->threads = 2;
}

/* The multiply-adds hakd bench counts: as executed (the products with the padding that the
 * convolution kernels skip left out), or nominal (every convolution in full, hakd info's). */
static int64_t macs_counted(const char *name, int size, int executed) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.width = 0.125f;
  hakd_model *m;
  if (hakd_model_create(name, &o, &m)) return -1;
  int64_t macs = executed ? hakd_model_executed_macs(m, size, size) : hakd_model_macs(m, size, size);
  hakd_model_free(m);
  return macs;
}

static int64_t macs_of(const char *name, int size) { return macs_counted(name, size, 1); }

/* The derived numbers are computed from the timings exactly as documented; tolerance 1e-9
 * relative for the double arithmetic. */
static void check_timing(const hakd_bench_config *c, const hakd_bench_result *r) {
  ASSERT_TRUE(r->ms_min > 0.0);
  ASSERT_TRUE(r->ms_min <= r->ms_median && r->ms_median <= r->ms_max);
  ASSERT_NEAR(r->images_per_s, 1e3 * c->batch / r->ms_median, 1e-9 * r->images_per_s);
  ASSERT_NEAR(r->gflops, r->flops_per_iter / r->ms_median * 1e-6, 1e-9 * r->gflops);
  ASSERT_TRUE(r->peak_rss_mb > 1.0);
  ASSERT_TRUE(r->arena_mb > 0.0);
  ASSERT_EQ_INT(r->threads, 2);
}

TEST(infer_counts_two_flops_per_mac) {
  hakd_bench_config c;
  tiny_config(&c, "segformer-b0", HAKD_BENCH_INFER);
  hakd_bench_result r;
  ASSERT_OK(hakd_bench_run(&c, &r));
  check_timing(&c, &r);
  int64_t macs = macs_of("segformer-b0", 32);
  ASSERT_TRUE(macs > 0);
  ASSERT_EQ_INT(r.model_macs, macs);
  ASSERT_EQ_INT(r.teacher_macs, 0);
  ASSERT_NEAR(r.flops_per_iter, 2.0 * (double)macs * c.batch, 0.5);
  ASSERT_TRUE(!strcmp(r.optimizer, "none"));
}

TEST(train_counts_three_forwards) {
  hakd_bench_config c;
  tiny_config(&c, "deeplabv3-r18-d8", HAKD_BENCH_TRAIN);
  hakd_bench_result r;
  ASSERT_OK(hakd_bench_run(&c, &r));
  check_timing(&c, &r);
  int64_t macs = macs_of("deeplabv3-r18-d8", 32), nominal = macs_counted("deeplabv3-r18-d8", 32, 0);
  ASSERT_EQ_INT(r.model_macs, macs);
  ASSERT_NEAR(r.flops_per_iter, 6.0 * (double)macs * c.batch, 0.5);
  /* at 32x32 (a 4x4 map) the ASPP's rates 12/24/36 leave only their centre taps: executed < nominal */
  ASSERT_EQ_INT(r.model_nominal_macs, nominal);
  ASSERT_TRUE(macs < nominal);
  ASSERT_NEAR(r.nominal_flops_per_iter, 6.0 * (double)nominal * c.batch, 0.5);
  ASSERT_TRUE(!strcmp(r.optimizer, "sgd"));

  tiny_config(&c, "segformer-b0", HAKD_BENCH_TRAIN);
  ASSERT_OK(hakd_bench_run(&c, &r));
  ASSERT_TRUE(!strcmp(r.optimizer, "adamw"));
}

TEST(distill_counts_teacher_forward_and_student_step) {
  hakd_bench_config c;
  tiny_config(&c, "segformer-b0", HAKD_BENCH_DISTILL);
  c.teacher = "deeplabv3-r18-d8";
  hakd_bench_result r;
  ASSERT_OK(hakd_bench_run(&c, &r));
  check_timing(&c, &r);
  int64_t student = macs_of("segformer-b0", 32), teacher = macs_of("deeplabv3-r18-d8", 32);
  ASSERT_EQ_INT(r.model_macs, student);
  ASSERT_EQ_INT(r.teacher_macs, teacher);
  ASSERT_NEAR(r.flops_per_iter, (6.0 * (double)student + 2.0 * (double)teacher) * c.batch, 0.5);
  ASSERT_TRUE(!strcmp(r.optimizer, "adamw"));
}

TEST(bad_configs_are_refused) {
  hakd_bench_config c;
  hakd_bench_result r;
  hakd_bench_mode mode;
  ASSERT_EQ_INT(hakd_bench_mode_parse("distill", &mode), 0);
  ASSERT_EQ_INT(mode, HAKD_BENCH_DISTILL);
  ASSERT_EQ_INT(hakd_bench_mode_parse("eval", &mode), HAKD_EINVAL);
  ASSERT_TRUE(strstr(hakd_error_message(), "'eval'") != NULL);
  tiny_config(&c, "segformer-b0", HAKD_BENCH_DISTILL);
  ASSERT_EQ_INT(hakd_bench_run(&c, &r), HAKD_EINVAL); /* no teacher */
  tiny_config(&c, "segformer-b0", HAKD_BENCH_TRAIN);
  c.iters = 0;
  ASSERT_EQ_INT(hakd_bench_run(&c, &r), HAKD_EINVAL);
  tiny_config(&c, "no-such-model", HAKD_BENCH_TRAIN);
  ASSERT_TRUE(hakd_bench_run(&c, &r) < 0);
  ASSERT_TRUE(strstr(hakd_error_message(), "no-such-model") != NULL);
}

/* `hakd bench` prints one JSON line with the documented keys. */
TEST(cli_prints_one_json_line) {
  const char *cli = getenv("HAKD_CLI");
  ASSERT_TRUE(cli != NULL);
  char cmd[1024], line[2048], extra[64];
  snprintf(cmd, sizeof cmd,
           "%s bench --model segformer-b0 --width 0.125 --size 32x48 --batch 1 --mode infer --iters 2 --warmup 0 "
           "--threads 1",
           cli);
  FILE *p = popen(cmd, "r");
  ASSERT_TRUE(p != NULL);
  int got = fgets(line, sizeof line, p) != NULL;
  int more = fgets(extra, sizeof extra, p) != NULL;
  ASSERT_EQ_INT(pclose(p), 0);
  ASSERT_TRUE(got);
  ASSERT_TRUE(!more);
  const char *keys[] = {"{\"model\": \"segformer-b0\"", "\"mode\": \"infer\"", "\"size\": \"32x48\"", "\"batch\": 1,",
                        "\"images_per_s\": ", "\"ms_per_iter\": ", "\"peak_rss_mb\": ", "\"gflops\": ",
                        "\"threads\": 1,", "\"precision\": \"fp32\""};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    if (!strstr(line, keys[i])) test_fail(__FILE__, __LINE__, "key %s missing in: %s", keys[i], line);
  }
  ASSERT_TRUE(line[strlen(line) - 2] == '}');
}
