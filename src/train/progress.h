/* Progress line with rate and ETA for long work (training, evaluation). On a terminal it
 * redraws one line; otherwise it prints a line every 10% so logs stay readable. */
#ifndef HAKD_TRAIN_PROGRESS_H
#define HAKD_TRAIN_PROGRESS_H

#include <stdint.h>
#include <stdio.h>

typedef struct {
  FILE *out;
  const char *label;
  int64_t total, last_printed;
  int64_t first; /* units already done when timing started (a resumed run): not in the rate */
  double start;
  int tty;
} progress_bar;

double progress_now(void);
/* "1:02:03" / "2:03" */
void progress_format_duration(char *buf, size_t size, double seconds);
void progress_start(progress_bar *p, FILE *out, const char *label, int64_t total);
/* done of total; extra text (may be NULL) appended to the line. */
void progress_update(progress_bar *p, int64_t done, const char *extra);
void progress_finish(progress_bar *p);

#endif
