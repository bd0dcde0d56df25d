/* Confusion-matrix metrics against numbers computed by hand. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hakd/metrics.h"

/* Two 2x2 images, 3 classes, class 2 in neither labels nor predictions:
 *   image 1 label 0 0 1 255  pred 0 1 1 1   (the 255 pixel is not counted)
 *   image 2 label 0 1 1 0    pred 0 1 0 0
 * counts[label][pred]: (0,0)=3 (0,1)=1 (1,0)=1 (1,1)=2
 * class 0: IoU 3/(4+4-3) = 60%, Acc 3/4 = 75%;  class 1: IoU 2/(3+3-2) = 50%, Acc 2/3
 * aAcc 5/7; mIoU (60+50)/2 = 55%; mAcc (75+66.67)/2 = 70.83%; class 2 nan, left out. */
static const int32_t label1[4] = {0, 0, 1, 255}, pred1[4] = {0, 1, 1, 1};
static const int32_t label2[4] = {0, 1, 1, 0}, pred2[4] = {0, 1, 0, 0};

TEST(hand_computed_two_images_with_nan_class) {
  hakd_confusion cm;
  ASSERT_OK(hakd_confusion_init(&cm, 3));
  ASSERT_OK(hakd_confusion_add(&cm, pred1, label1, 4, 255));
  ASSERT_OK(hakd_confusion_add(&cm, pred2, label2, 4, 255));
  ASSERT_EQ_INT(cm.counts[0 * 3 + 0], 3);
  ASSERT_EQ_INT(cm.counts[0 * 3 + 1], 1);
  ASSERT_EQ_INT(cm.counts[1 * 3 + 0], 1);
  ASSERT_EQ_INT(cm.counts[1 * 3 + 1], 2);
  hakd_metrics m;
  ASSERT_OK(hakd_confusion_compute(&m, &cm));
  /* exact ratios of small integers in double */
  ASSERT_NEAR(m.iou[0], 0.6, 1e-12);
  ASSERT_NEAR(m.iou[1], 0.5, 1e-12);
  ASSERT_TRUE(isnan(m.iou[2]));
  ASSERT_NEAR(m.acc[0], 0.75, 1e-12);
  ASSERT_NEAR(m.acc[1], 2.0 / 3.0, 1e-12);
  ASSERT_TRUE(isnan(m.acc[2]));
  ASSERT_NEAR(m.aacc, 5.0 / 7.0, 1e-12);
  ASSERT_NEAR(m.miou, 0.55, 1e-12);
  ASSERT_NEAR(m.macc, (0.75 + 2.0 / 3.0) / 2, 1e-12);
  ASSERT_EQ_INT(m.labelled, 7);

  char *text = NULL;
  size_t size = 0;
  FILE *fp = open_memstream(&text, &size);
  static const char *const names[3] = {"road", "sky", "unseen"};
  hakd_metrics_print(fp, &m, names);
  fclose(fp);
  ASSERT_TRUE(strstr(text, "| Class  |  IoU  |  Acc  |") != NULL);
  ASSERT_TRUE(strstr(text, "|  road  | 60.00 | 75.00 |") != NULL);
  ASSERT_TRUE(strstr(text, "|  sky   | 50.00 | 66.67 |") != NULL);
  ASSERT_TRUE(strstr(text, "| unseen |  nan  |  nan  |") != NULL);
  ASSERT_TRUE(strstr(text, "| 71.43 | 55.00 | 70.83 |") != NULL);
  free(text);
  hakd_metrics_free(&m);
  hakd_confusion_free(&cm);
}

TEST(merge_equals_adding_everything_to_one) {
  hakd_confusion a, b, all;
  ASSERT_OK(hakd_confusion_init(&a, 3));
  ASSERT_OK(hakd_confusion_init(&b, 3));
  ASSERT_OK(hakd_confusion_init(&all, 3));
  ASSERT_OK(hakd_confusion_add(&a, pred1, label1, 4, 255));
  ASSERT_OK(hakd_confusion_add(&b, pred2, label2, 4, 255));
  ASSERT_OK(hakd_confusion_add(&all, pred1, label1, 4, 255));
  ASSERT_OK(hakd_confusion_add(&all, pred2, label2, 4, 255));
  ASSERT_OK(hakd_confusion_merge(&a, &b));
  ASSERT_TRUE(!memcmp(a.counts, all.counts, 9 * sizeof *a.counts));
  hakd_confusion other;
  ASSERT_OK(hakd_confusion_init(&other, 4));
  ASSERT_EQ_INT(hakd_confusion_merge(&a, &other), HAKD_ESHAPE);
  hakd_confusion_reset(&a);
  ASSERT_EQ_INT(a.counts[0], 0);
  hakd_confusion_free(&other);
  hakd_confusion_free(&a);
  hakd_confusion_free(&b);
  hakd_confusion_free(&all);
}

TEST(predicted_but_absent_class_has_zero_iou_nan_acc) {
  /* mmseg: a class only predicted has union > 0 and no labels: IoU 0, Acc nan. */
  static const int32_t label[3] = {0, 0, 0}, pred[3] = {0, 1, 0};
  hakd_confusion cm;
  ASSERT_OK(hakd_confusion_init(&cm, 2));
  ASSERT_OK(hakd_confusion_add(&cm, pred, label, 3, 255));
  hakd_metrics m;
  ASSERT_OK(hakd_confusion_compute(&m, &cm));
  ASSERT_NEAR(m.iou[0], 2.0 / 3.0, 1e-12);
  ASSERT_NEAR(m.iou[1], 0.0, 0);
  ASSERT_TRUE(isnan(m.acc[1]));
  ASSERT_NEAR(m.miou, 1.0 / 3.0, 1e-12);
  ASSERT_NEAR(m.macc, 2.0 / 3.0, 1e-12);
  hakd_metrics_free(&m);
  hakd_confusion_free(&cm);
}

TEST(out_of_range_values_are_refused) {
  hakd_confusion cm;
  ASSERT_OK(hakd_confusion_init(&cm, 3));
  static const int32_t label[3] = {0, 7, 1}, pred[3] = {0, 0, 1};
  ASSERT_EQ_INT(hakd_confusion_add(&cm, pred, label, 3, 255), HAKD_ERANGE);
  ASSERT_TRUE(strstr(hakd_error_message(), "label 7") != NULL);
  static const int32_t label_ok[3] = {0, 255, 1}, pred_bad[3] = {0, 9, 3};
  /* the prediction under an ignored label is not looked at; the last one is */
  ASSERT_EQ_INT(hakd_confusion_add(&cm, pred_bad, label_ok, 3, 255), HAKD_ERANGE);
  ASSERT_TRUE(strstr(hakd_error_message(), "prediction 3") != NULL);
  for (int i = 0; i < 9; i++) ASSERT_EQ_INT(cm.counts[i], 0); /* nothing counted */
  hakd_metrics m;
  ASSERT_OK(hakd_confusion_compute(&m, &cm));
  ASSERT_TRUE(isnan(m.aacc) && isnan(m.miou) && isnan(m.macc));
  hakd_metrics_free(&m);
  hakd_confusion_free(&cm);
  ASSERT_EQ_INT(hakd_confusion_init(&cm, 0), HAKD_EINVAL);
}
