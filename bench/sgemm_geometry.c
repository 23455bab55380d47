/*
 * sgemm_geometry.c - the evidence for matmul_seq_forward_cpu's call geometry
 * (src/ops_cpu.c), on this machine's OpenBLAS (one thread):
 *  1. position: Y = X W^T for rows [off, off + len) of a 600-row X as a call
 *     of their own vs within the whole call: how many rows get other bits
 *     (0 everywhere where the kernel computes a row alike at any position;
 *     OpenBLAS 0.3.21's Zen kernels differ off a 12-row grid and in a
 *     call's last partial block);
 *  2. address: one shape at 16 other alignments of X, W and Y: the same
 *     bits (what the fixed geometry relies on);
 *  3. speed: GFLOP/s of 4096 rows done as calls of R rows x C output
 *     columns, for the forward's shapes (the cost of per-sequence calls).
 * usage: cc -std=c11 -O2 -D_GNU_SOURCE -Isrc bench/sgemm_geometry.c src/util.c src/comm_serial.c \
 *          -o sgemm_geometry -lopenblas -lm -lpthread && ./sgemm_geometry
 */
#include "common.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

static void fill(float *a, size_t n, unsigned seed) {
    srand(seed);
    for (size_t i = 0; i < n; i++) a[i] = (float)rand() / (float)RAND_MAX - 0.5f;
}

static void gemm(float *y, const float *x, const float *w, int rows, int in, int out, int ldy) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out, in, 1.0f, x, in, w, in, 0.0f, y, ldy);
}

int main(void) {
    openblas_set_num_threads(1);
    const int K = 384, O = 384, T = 600;
    float *X = xmalloc(sizeof(float) * T * K), *W = xmalloc(sizeof(float) * O * K);
    float *Y = xmalloc(sizeof(float) * T * O), *Z = xmalloc(sizeof(float) * T * O);
    fill(X, (size_t)T * K, 1);
    fill(W, (size_t)O * K, 2);
    gemm(Y, X, W, T, K, O, O);
    printf("1. rows with other bits as a call of their own (of a %d-row call, in %d, out %d):\n", T, K, O);
    const int offs[] = {0, 1, 12, 37}, lens[] = {1, 7, 12, 16, 24, 100, 512};
    for (size_t a = 0; a < DS_ARRAY_LEN(offs); a++) {
        printf("   off %2d:", offs[a]);
        for (size_t l = 0; l < DS_ARRAY_LEN(lens); l++) {
            gemm(Z, X + (size_t)offs[a] * K, W, lens[l], K, O, O);
            int bad = 0;
            for (int r = 0; r < lens[l]; r++)
                bad += memcmp(Z + (size_t)r * O, Y + (size_t)(offs[a] + r) * O, sizeof(float) * O) != 0;
            printf("  len %d: %d", lens[l], bad);
        }
        printf("\n");
    }
    const int shapes[][3] = {{512, 768, 256}, {7, 64, 64}, {100, 64, 172}, {33, 288, 768}};
    int abad = 0;
    for (size_t s = 0; s < DS_ARRAY_LEN(shapes); s++) {
        const int n = shapes[s][0], in = shapes[s][1], out = shapes[s][2];
        float *x0 = xmalloc(sizeof(float) * n * in), *w0 = xmalloc(sizeof(float) * out * in);
        float *xa = xmalloc(sizeof(float) * (n * in + 16)), *wa = xmalloc(sizeof(float) * (out * in + 16));
        float *y0 = xmalloc(sizeof(float) * n * out), *ya = xmalloc(sizeof(float) * (n * out + 16));
        fill(x0, (size_t)n * in, 3 + (unsigned)s);
        fill(w0, (size_t)out * in, 4 + (unsigned)s);
        gemm(y0, x0, w0, n, in, out, out);
        for (int a = 0; a < 16; a++) {
            memcpy(xa + a, x0, sizeof(float) * n * in);
            memcpy(wa + 15 - a, w0, sizeof(float) * out * in);
            gemm(ya + (a * 3) % 16, xa + a, wa + 15 - a, n, in, out, out);
            abad += memcmp(ya + (a * 3) % 16, y0, sizeof(float) * n * out) != 0;
        }
        free(x0); free(w0); free(xa); free(wa); free(y0); free(ya);
    }
    printf("2. one shape at 16 alignments x %zu shapes: %d with other bits\n", DS_ARRAY_LEN(shapes), abad);
    printf("3. GFLOP/s of 4096 rows as calls of R rows x C outputs (best of 3):\n");
    const int kio[][2] = {{768, 768}, {768, 2048}, {2048, 768}}, geo[][2] = {{4096, 0}, {2048, 0}, {512, 0},
                                                                            {512, 512}, {512, 256}};
    const int N = 4096;
    for (size_t k = 0; k < DS_ARRAY_LEN(kio); k++) {
        const int in = kio[k][0], out = kio[k][1];
        float *x = xmalloc(sizeof(float) * N * in), *w = xmalloc(sizeof(float) * out * in);
        float *y = xmalloc(sizeof(float) * N * out);
        fill(x, (size_t)N * in, 5);
        fill(w, (size_t)out * in, 6);
        printf("   in %4d out %4d:", in, out);
        for (size_t g = 0; g < DS_ARRAY_LEN(geo); g++) {
            const int R = geo[g][0], Cw = geo[g][1] ? geo[g][1] : out;
            double best = 1e30;
            for (int it = 0; it < 3; it++) {
                double t = ds_now();
                for (int r0 = 0; r0 < N; r0 += R)
                    for (int c0 = 0; c0 < out; c0 += Cw)
                        gemm(y + (size_t)r0 * out + c0, x + (size_t)r0 * in, w + (size_t)c0 * in, R,
                             in, DS_MIN(Cw, out - c0), out);
                t = ds_now() - t;
                best = t < best ? t : best;
            }
            printf("  %dx%d %.1f", R, Cw, 2.0 * N * in * out / best / 1e9);
        }
        printf("\n");
        free(x); free(w); free(y);
    }
    free(X); free(W); free(Y); free(Z);
    return 0;
}
