/*
 * comm.c - thin MPI wrapper (see comm.h). Large buffers are sent in chunks of
 * at most 1 GiB so counts never overflow an int.
 */
#include "comm.h"
#include "common.h"

#include <mpi.h>
#include <stdlib.h>

#define CHUNK ((size_t)1 << 27) /* elements per collective call */

static int g_rank = 0, g_size = 1, g_local = 0, g_local_size = 1, g_init = 0;

#define MPI_CHECK(call)                                                         \
    do {                                                                        \
        int rc_ = (call);                                                       \
        if (rc_ != MPI_SUCCESS) {                                               \
            char s_[MPI_MAX_ERROR_STRING]; int n_ = 0;                          \
            MPI_Error_string(rc_, s_, &n_);                                     \
            DS_DIE(1, "%s failed: %s", #call, s_);                              \
        }                                                                       \
    } while (0)

void comm_init(int *argc, char ***argv) {
    int already = 0;
    MPI_Initialized(&already);
    if (!already) MPI_CHECK(MPI_Init(argc, argv));
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &g_rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &g_size));
    MPI_Comm node;
    MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_rank, MPI_INFO_NULL, &node));
    MPI_CHECK(MPI_Comm_rank(node, &g_local));
    MPI_CHECK(MPI_Comm_size(node, &g_local_size));
    MPI_Comm_free(&node);
    g_init = 1;
    ds_log_set_rank(g_rank, g_size);
    ds_set_abort(comm_abort);
}

void comm_finalize(void) {
    if (g_init) { MPI_Finalize(); g_init = 0; }
}

int comm_rank(void) { return g_rank; }
int comm_size(void) { return g_size; }
int comm_local_rank(void) { return g_local; }
int comm_local_size(void) { return g_local_size; }
int comm_initialized(void) { return g_init; }

void comm_abort(int code) {
    if (g_init && g_size > 1) MPI_Abort(MPI_COMM_WORLD, code);
    if (g_init) MPI_Finalize();
    exit(code);
}

void comm_barrier(void) { if (g_init) MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD)); }

void comm_allreduce_sum_f64(double *buf, size_t n) {
    if (!g_init || g_size == 1) return;
    for (size_t i = 0; i < n; i += CHUNK)
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf + i, (int)DS_MIN(CHUNK, n - i), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
}

void comm_allreduce_sum_i64(int64_t *buf, size_t n) {
    if (!g_init || g_size == 1) return;
    for (size_t i = 0; i < n; i += CHUNK)
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf + i, (int)DS_MIN(CHUNK, n - i), MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD));
}

void comm_reduce_sum_f64(double *buf, size_t n, int root) {
    if (!g_init || g_size == 1) return;
    for (size_t i = 0; i < n; i += CHUNK) {
        int cnt = (int)DS_MIN(CHUNK, n - i);
        if (g_rank == root)
            MPI_CHECK(MPI_Reduce(MPI_IN_PLACE, buf + i, cnt, MPI_DOUBLE, MPI_SUM, root, MPI_COMM_WORLD));
        else
            MPI_CHECK(MPI_Reduce(buf + i, NULL, cnt, MPI_DOUBLE, MPI_SUM, root, MPI_COMM_WORLD));
    }
}

void comm_allreduce_max_f32(float *buf, size_t n) {
    if (!g_init || g_size == 1) return;
    for (size_t i = 0; i < n; i += CHUNK)
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf + i, (int)DS_MIN(CHUNK, n - i), MPI_FLOAT, MPI_MAX, MPI_COMM_WORLD));
}

int comm_allreduce_max_int(int v) {
    if (!g_init || g_size == 1) return v;
    int out;
    MPI_CHECK(MPI_Allreduce(&v, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
    return out;
}

double comm_allreduce_max_f64(double v) {
    if (!g_init || g_size == 1) return v;
    double out;
    MPI_CHECK(MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    return out;
}

void comm_allgather_f64(double v, double *out) {
    if (!g_init || g_size == 1) { out[0] = v; return; }
    MPI_CHECK(MPI_Allgather(&v, 1, MPI_DOUBLE, out, 1, MPI_DOUBLE, MPI_COMM_WORLD));
}

void comm_bcast(void *buf, size_t nbytes, int root) {
    if (!g_init || g_size == 1) return;
    unsigned char *p = buf;
    const size_t chunk = (size_t)1 << 30;
    for (size_t i = 0; i < nbytes; i += chunk)
        MPI_CHECK(MPI_Bcast(p + i, (int)DS_MIN(chunk, nbytes - i), MPI_BYTE, root, MPI_COMM_WORLD));
}

ds_status comm_sync_status(ds_status st) {
    if (!g_init || g_size == 1) return st;
    int worst = comm_allreduce_max_int((int)st);
    if (worst == 0) return DS_OK;
    int first, mine = st != DS_OK ? g_rank : g_size;
    MPI_CHECK(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
    char msg[4096] = "";
    if (g_rank == first) snprintf(msg, sizeof msg, "%s", ds_errmsg());
    MPI_CHECK(MPI_Bcast(msg, (int)sizeof msg, MPI_CHAR, first, MPI_COMM_WORLD));
    msg[sizeof msg - 1] = 0;
    if (first == 0 || g_rank == first) ds_error((ds_status)worst, "%s", msg);
    else ds_error((ds_status)worst, "rank %d: %s", first, msg);
    return (ds_status)worst;
}
