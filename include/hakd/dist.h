/* Data-parallel runs over several processes (MPI): what the CLI needs to start and end them.
 *
 * Built with MPI (CMake finds it), `mpirun -np N hakd train|distill ...` runs N processes
 * ("ranks") that split every batch and average their gradients (see docs/SCALING.md). Built
 * without it, hakd is one process, and hakd_dist_init refuses a launch by mpirun with a message
 * saying so instead of running N independent copies of the same training. */
#ifndef HAKD_DIST_H
#define HAKD_DIST_H

/* 1 when this build has MPI. */
int hakd_dist_built_with_mpi(void);
/* The process count a launcher (mpirun of OpenMPI, MPICH or Slurm's PMI) announced in the
 * environment, 0 when not launched by one. */
int hakd_dist_launcher_size(void);
/* Starts MPI when the build has it (a process started without mpirun is a run of 1). Without
 * MPI: 0, or HAKD_EUNSUPPORTED naming the launcher's process count when a launcher started
 * more than one process. */
int hakd_dist_init(int *argc, char ***argv);
/* Ends MPI (after hakd_dist_init succeeded); safe to call more than once. */
void hakd_dist_finalize(void);
/* Ends every process of the run at once, with `code`: for a failure one process met alone. */
void hakd_dist_abort(int code);
int hakd_dist_rank(void); /* 0 .. size-1; 0 without MPI */
int hakd_dist_size(void); /* 1 without MPI or when started without a launcher */

#endif
