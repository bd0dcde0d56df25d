#include "train/progress.h"

#include <time.h>
#include <unistd.h>

double progress_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void progress_format_duration(char *buf, size_t size, double seconds) {
  if (seconds < 0 || seconds != seconds) seconds = 0;
  long s = (long)(seconds + 0.5);
  if (s >= 3600)
    snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else
    snprintf(buf, size, "%ld:%02ld", s / 60, s % 60);
}

void progress_start(progress_bar *p, FILE *out, const char *label, int64_t total) {
  p->out = out;
  p->label = label;
  p->total = total;
  p->last_printed = 0;
  p->first = 0;
  p->start = progress_now();
  p->tty = out && isatty(fileno(out));
}

void progress_update(progress_bar *p, int64_t done, const char *extra) {
  if (!p->out || p->total <= 0) return;
  int64_t step = p->total / 10 > 0 ? p->total / 10 : 1;
  if (!p->tty && done != p->total && done - p->last_printed < step) return;
  p->last_printed = done;
  double elapsed = progress_now() - p->start;
  double rate = elapsed > 0 ? (double)(done - p->first) / elapsed : 0;
  char eta[32];
  progress_format_duration(eta, sizeof eta, rate > 0 ? (double)(p->total - done) / rate : 0);
  int width = 24, filled = (int)(width * done / p->total);
  char bar[32];
  for (int i = 0; i < width; i++) bar[i] = i < filled ? '#' : '.';
  bar[width] = '\0';
  fprintf(p->out, "%s%s [%s] %lld/%lld %.2f/s ETA %s%s%s%s", p->tty ? "\r" : "", p->label, bar, (long long)done,
          (long long)p->total, rate, eta, extra ? "  " : "", extra ? extra : "", p->tty ? "\033[K" : "\n");
  fflush(p->out);
}

void progress_finish(progress_bar *p) {
  if (p->out && p->tty) {
    fputc('\n', p->out);
    fflush(p->out);
  }
}
