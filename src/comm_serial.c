/*
 * comm_serial.c - comm.h for a build without MPI (make MPI=0): a world of
 * one rank, every collective the identity. For machines with no MPI
 * installation (e.g. a lent GPU node running the -np 1 benchmark); the
 * multi-rank pipeline needs the MPI build (comm.c).
 */
#include "comm.h"
#include "common.h"

#include <stdlib.h>

static int g_init = 0;

void comm_init(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    g_init = 1;
    ds_log_set_rank(0, 1);
    ds_set_abort(comm_abort);
}
void comm_finalize(void) { g_init = 0; }
int comm_rank(void) { return 0; }
int comm_size(void) { return 1; }
int comm_local_rank(void) { return 0; }
int comm_local_size(void) { return 1; }
int comm_initialized(void) { return g_init; }
void comm_abort(int code) { exit(code); }
void comm_barrier(void) {}
void comm_allreduce_sum_f64(double *buf, size_t n) { (void)buf; (void)n; }
void comm_allreduce_sum_i64(int64_t *buf, size_t n) { (void)buf; (void)n; }
void comm_reduce_sum_f64(double *buf, size_t n, int root) { (void)buf; (void)n; (void)root; }
void comm_allreduce_max_f32(float *buf, size_t n) { (void)buf; (void)n; }
int comm_allreduce_max_int(int v) { return v; }
double comm_allreduce_max_f64(double v) { return v; }
void comm_allgather_f64(double v, double *out) { out[0] = v; }
void comm_bcast(void *buf, size_t nbytes, int root) { (void)buf; (void)nbytes; (void)root; }
ds_status comm_sync_status(ds_status st) { return st; }
