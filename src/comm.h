/*
 * comm.h - the only interface to MPI. comm.c is the only file that includes
 * <mpi.h>. Every collective here must be called by all ranks in the same order
 * (reference-llm-compressor.md §2.7, #2733); a failure on one rank either
 * aborts the job (comm_abort) or is combined with comm_allreduce_max_int at a
 * stage boundary so all ranks stop together.
 *
 * Works without mpirun too (singleton MPI init), so `doneshot ...` alone is
 * a world of size 1.
 */
#ifndef DS_COMM_H
#define DS_COMM_H

#include "common.h"

#include <stddef.h>
#include <stdint.h>

void comm_init(int *argc, char ***argv);
void comm_finalize(void);
int comm_rank(void);
int comm_size(void);
int comm_local_rank(void);       /* rank within the node (MPI_COMM_TYPE_SHARED) */
int comm_local_size(void);       /* ranks on this node */
int comm_initialized(void);
/* MPI_Abort(code) when MPI is initialized, exit(code) otherwise. */
_Noreturn void comm_abort(int code);
void comm_barrier(void);

/* In-place sums over all ranks. */
void comm_allreduce_sum_f64(double *buf, size_t n);
void comm_allreduce_sum_i64(int64_t *buf, size_t n);
/* In-place sum to `root` only (buf is undefined on other ranks afterwards). */
void comm_reduce_sum_f64(double *buf, size_t n, int root);
int comm_allreduce_max_int(int v);
/* In-place elementwise max over all ranks (a min: negate before and after). */
void comm_allreduce_max_f32(float *buf, size_t n);
double comm_allreduce_max_f64(double v);
/* Gather one double per rank to every rank (out has comm_size() entries). */
void comm_allgather_f64(double v, double *out);
/* Broadcast nbytes from root (chunked internally past INT_MAX). */
void comm_bcast(void *buf, size_t nbytes, int root);

/* Combine a per-rank status at a stage boundary (collective). Returns the
 * worst status on every rank; when it is not DS_OK, the message of the
 * lowest failing rank is broadcast and becomes every rank's ds_errmsg(),
 * prefixed "rank r: " where r is not the rank itself or 0, so rank 0 can
 * print the failing rank's own words. */
ds_status comm_sync_status(ds_status st);
/* comm_sync_status, then rank 0 prints the resulting message as an error. */
static inline ds_status comm_sync_report(ds_status st) {
    ds_status worst = comm_sync_status(st);
    if (worst != DS_OK && comm_rank() == 0) ds_log(DS_LOG_ERROR, "%s", ds_errmsg());
    return worst;
}

#endif
