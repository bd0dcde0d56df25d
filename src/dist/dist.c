/* MPI behind the dist interface: start/end, ranks, agreement, small collectives. Without MPI
 * (HAKD_WITH_MPI undefined) the same functions describe a run of one process. */
#include "dist/dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAKD_WITH_MPI
#include <mpi.h>
#endif

int hakd_dist_launcher_size(void) {
  /* OpenMPI's mpirun, MPICH/Hydra and Slurm's PMI, PMIx */
  const char *names[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", NULL};
  for (int i = 0; names[i]; i++) {
    const char *v = getenv(names[i]);
    if (v && *v) {
      int n = atoi(v);
      if (n > 0) return n;
    }
  }
  return 0;
}

static int comm_sum(const hakd_comm *comm, double *values, int64_t n) {
  (void)comm;
  return dist_sum_f64(values, n);
}

static hakd_comm world = {0, 1, comm_sum, NULL};

const hakd_comm *dist_comm(void) { return &world; }
int hakd_dist_rank(void) { return world.rank; }
int hakd_dist_size(void) { return world.size; }

#ifdef HAKD_WITH_MPI

static int started;

int hakd_dist_built_with_mpi(void) { return 1; }

/* MPI's error as a hakd error. */
static int mpi_fail(int code, const char *what) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  return hakd_error(HAKD_EIO, "MPI %s failed: %.*s", what, len, text);
}

int hakd_dist_init(int *argc, char ***argv) {
  if (started) return 0;
  int provided = 0, rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  if (rc != MPI_SUCCESS) return hakd_error(HAKD_EIO, "MPI_Init_thread failed (code %d)", rc);
  started = 1;
  /* errors come back as codes and become hakd errors instead of aborting inside MPI */
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &world.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world.size);
  return 0;
}

void hakd_dist_finalize(void) {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (started && !finalized) MPI_Finalize();
  started = 0;
}

void hakd_dist_abort(int code) {
  if (started) MPI_Abort(MPI_COMM_WORLD, code);
  exit(code);
}

int dist_sum_f64(double *values, int64_t n) {
  if (world.size == 1 || n == 0) return 0;
  int rc = MPI_Allreduce(MPI_IN_PLACE, values, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return rc == MPI_SUCCESS ? 0 : mpi_fail(rc, "MPI_Allreduce");
}

int dist_sum_u64(uint64_t *values, int64_t n) {
  if (world.size == 1 || n == 0) return 0;
  int rc = MPI_Allreduce(MPI_IN_PLACE, values, (int)n, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
  return rc == MPI_SUCCESS ? 0 : mpi_fail(rc, "MPI_Allreduce");
}

int dist_max_i64(int64_t *values, int n) {
  if (world.size == 1 || n == 0) return 0;
  int rc = MPI_Allreduce(MPI_IN_PLACE, values, n, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
  return rc == MPI_SUCCESS ? 0 : mpi_fail(rc, "MPI_Allreduce");
}

int dist_broadcast_f32(float *values, int64_t n) {
  if (world.size == 1) return 0;
  /* in pieces: MPI counts are int */
  for (int64_t at = 0; at < n; at += 1 << 30) {
    int count = (int)(n - at < (1 << 30) ? n - at : 1 << 30);
    int rc = MPI_Bcast(values + at, count, MPI_FLOAT, 0, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Bcast");
  }
  return 0;
}

int dist_agree(int status) {
  if (world.size == 1) return status;
  /* the lowest failing rank (size when none) */
  int64_t key[2] = {-(int64_t)(status ? world.rank : world.size), 0};
  int rc = dist_max_i64(key, 1);
  if (rc) return rc;
  int origin = (int)-key[0];
  if (origin == world.size) return 0;
  struct {
    int status;
    char message[1024];
  } what;
  memset(&what, 0, sizeof what);
  if (origin == world.rank) {
    what.status = status;
    snprintf(what.message, sizeof what.message, "%s", hakd_error_message());
  }
  rc = MPI_Bcast(&what, (int)sizeof what, MPI_BYTE, origin, MPI_COMM_WORLD);
  if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Bcast");
  if (origin == world.rank) return status;
  return hakd_error(what.status, "rank %d: %s", origin, what.message);
}

#else /* without MPI: one process */

int hakd_dist_built_with_mpi(void) { return 0; }

int hakd_dist_init(int *argc, char ***argv) {
  (void)argc, (void)argv;
  int n = hakd_dist_launcher_size();
  if (n > 1)
    return hakd_error(HAKD_EUNSUPPORTED,
                      "this hakd was built without MPI, but a launcher (mpirun) started %d processes: they would "
                      "each run the whole training alone. Install MPI (scripts/install-deps.sh installs "
                      "libopenmpi-dev and openmpi-bin), rebuild, or run hakd without mpirun",
                      n);
  return 0;
}
void hakd_dist_finalize(void) {}
void hakd_dist_abort(int code) { exit(code); }
int dist_sum_f64(double *values, int64_t n) { return (void)values, (void)n, 0; }
int dist_sum_u64(uint64_t *values, int64_t n) { return (void)values, (void)n, 0; }
int dist_max_i64(int64_t *values, int n) { return (void)values, (void)n, 0; }
int dist_broadcast_f32(float *values, int64_t n) { return (void)values, (void)n, 0; }
int dist_agree(int status) { return status; }

#endif
