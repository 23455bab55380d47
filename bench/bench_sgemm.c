/*
 * bench_sgemm.c - OpenBLAS sgemm peak on this machine, for the GEMM shapes of
 * a calibration forward pass: prints GFLOP/s of Y[M,N] = X[M,K] W[N,K]^T.
 * usage: bench_sgemm M N K threads
 */
#include "common.h"

#include <cblas.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: bench_sgemm M N K threads\n"); return 2; }
    int M = atoi(argv[1]), N = atoi(argv[2]), K = atoi(argv[3]);
    openblas_set_num_threads(atoi(argv[4]));
    float *x = xmalloc(sizeof(float) * (size_t)M * K), *w = xmalloc(sizeof(float) * (size_t)N * K);
    float *y = xmalloc(sizeof(float) * (size_t)M * N);
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = (float)(i % 13) * 0.1f - 0.6f;
    for (size_t i = 0; i < (size_t)N * K; i++) w[i] = (float)(i % 7) * 0.1f - 0.3f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, x, K, w, K, 0, y, N);
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        double t = ds_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, x, K, w, K, 0, y, N);
        t = ds_now() - t;
        if (t < best) best = t;
    }
    printf("%.1f\n", 2.0 * M * N * K / best / 1e9);
    free(x); free(w); free(y);
    return 0;
}
