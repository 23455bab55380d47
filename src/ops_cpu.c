/*
 * ops_cpu.c - CPU reference implementations of the decoder ops (the CPU twins
 * of cuda/). Follows HF transformers' Llama modeling code and the rounding
 * points of docs/model-and-tokenizer.md §3: statistics, softmax and
 * accumulations in f32; values rounded to the activation dtype where HF
 * rounds. GEMMs go to OpenBLAS; everything else is plain loops.
 */
#include "ops_cpu.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- exp over arrays (see ops_cpu.h) ---- */

typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));

/* (vector values are never passed by value: a 32-byte vector argument's ABI
 * depends on AVX being enabled) */
#define VF8(a) ((vf8){(a), (a), (a), (a), (a), (a), (a), (a)})
#define VI8(a) ((vi8){(a), (a), (a), (a), (a), (a), (a), (a)})
/* m ? a : b, lane-wise (m: all ones or zero per lane) */
#define VSEL(m, a, b) ((vf8)(((vi8)(a) & (m)) | ((vi8)(b) & ~(m))))

/* out[0..8) = exp(in[0..8)): Cephes expf (cephes/single/expf.c) on eight
 * lanes, ISO C arithmetic (no contraction under -std=c11), so every clone
 * rounds identically. */
static inline void exp8(float *out, const float *in) {
    vf8 x;
    memcpy(&x, in, sizeof x);
    const vf8 hi = VF8(88.72283935546875f), lo = VF8(-103.97207708f);
    vf8 xc = VSEL(x > hi, hi, x);
    xc = VSEL(xc < lo, lo, xc);
    /* k = round(x / ln 2) (to nearest even: the 1.5 * 2^23 shift), |k| <= 150 */
    const vf8 shift = VF8(12582912.0f);
    const vf8 k = (xc * VF8(1.44269504088896341f) + shift) - shift;
    vf8 r = xc - k * VF8(0.693359375f);
    r = r - k * VF8(-2.12194440e-4f);
    const vf8 z = r * r;
    vf8 p = VF8(1.9875691500e-4f);
    p = p * r + VF8(1.3981999507e-3f);
    p = p * r + VF8(8.3334519073e-3f);
    p = p * r + VF8(4.1665795894e-2f);
    p = p * r + VF8(1.6666665459e-1f);
    p = p * r + VF8(5.0000001201e-1f);
    p = p * z + r + VF8(1.0f);
    /* p * 2^k as p * 2^k1 * 2^k2 (k1 = k >> 1, k2 = k - k1, both normal
     * powers of two): the first product is exact, the second rounds once */
    const vi8 ki = __builtin_convertvector(k, vi8), k1 = ki >> 1, k2 = ki - k1;
    const vf8 s1 = (vf8)((k1 + VI8(127)) << 23), s2 = (vf8)((k2 + VI8(127)) << 23);
    vf8 y = (p * s1) * s2;
    y = VSEL(x > hi, VF8(INFINITY), y);
    y = VSEL(x < lo, VF8(0.0f), y);
    y = VSEL(x != x, x, y); /* NaN in, NaN out */
    memcpy(out, &y, sizeof y);
}

__attribute__((target_clones("avx2", "default")))
void exp_array_cpu(float *y, const float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) exp8(y + i, x + i);
    if (i < n) { /* the tail zero-padded: the same operations per element */
        float t[8] = {0};
        memcpy(t, x + i, sizeof(float) * (n - i));
        exp8(t, t);
        memcpy(y + i, t, sizeof(float) * (n - i));
    }
}

/* The sgemm calls of matmul_seq_forward_cpu: each covers at most MM_ROWS rows
 * of one sequence (its row chunks split the sequence evenly, counted from its
 * first row) and one of ceil(out / MM_COLS) even slices of the outputs. */
#define MM_ROWS 2048
#define MM_COLS 2048

typedef struct mm_job {
    float *y;
    const float *x, *w, *b;
    const size_t *chunk; /* [2 * nchunk]: first row, rows */
    int in, out, nslice;
    ds_dtype act;
} mm_job;

/* Units [lo, hi) (unit u: row chunk u / nslice, output slice u % nslice):
 * one 1-thread sgemm each, then the bias and the rounding. */
static void mm_units(void *p, size_t lo, size_t hi) {
    const mm_job *j = p;
    const int in = j->in, out = j->out;
    for (size_t u = lo; u < hi; u++) {
        const size_t *ch = j->chunk + 2 * (u / (size_t)j->nslice);
        const size_t r0 = ch[0], n = ch[1];
        const int s = (int)(u % (size_t)j->nslice);
        const int c0 = (int)((int64_t)out * s / j->nslice), nc = (int)((int64_t)out * (s + 1) / j->nslice) - c0;
        float *y = j->y + r0 * out + c0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, nc, in, 1.0f, j->x + r0 * in, in,
                    j->w + (size_t)c0 * in, in, 0.0f, y, out);
        for (size_t t = 0; t < n; t++) {
            float *yr = y + t * out;
            if (j->b)
                for (int o = 0; o < nc; o++) yr[o] += j->b[c0 + o];
            ds_round_array(yr, (size_t)nc, j->act);
        }
    }
}

/* Why a fixed call geometry: OpenBLAS's kernels give a row other bits at
 * another position within a call (measured on its Zen/Haswell sgemm: the
 * rows of a call's last partial 12-row block, and any row of a call that
 * starts off that grid; its SkylakeX small-matrix kernel picks itself by
 * the row count), while one shape gives the same bits at any address. So
 * every output element comes from the same call shape and position whatever
 * the thread count, the micro-batch or the other sequences beside it
 * (tests/test_ops.c, tests/test_batch.c). */
void matmul_seq_forward_cpu(float *y, const float *x, const float *w, const float *b, const int *seg, int nseg,
                            int in, int out, ds_dtype act) {
    size_t nchunk = 0, rows = 0;
    for (int i = 0; i < nseg; i++) {
        DS_ASSERT(seg[i] >= 0);
        nchunk += ((size_t)seg[i] + MM_ROWS - 1) / MM_ROWS;
        rows += (size_t)seg[i];
    }
    if (nchunk == 0) return;
    size_t *chunk = xmalloc(sizeof(size_t) * 2 * nchunk), k = 0, r0 = 0;
    for (int i = 0; i < nseg; r0 += (size_t)seg[i], i++) {
        const size_t n = (size_t)seg[i], nc = (n + MM_ROWS - 1) / MM_ROWS;
        for (size_t c = 0; c < nc; c++, k++) {
            chunk[2 * k] = r0 + n * c / nc;
            chunk[2 * k + 1] = n * (c + 1) / nc - n * c / nc;
        }
    }
    const int nslice = (out + MM_COLS - 1) / MM_COLS;
    mm_job j = {y, x, w, b, chunk, in, out, nslice, act};
    const size_t units = nchunk * (size_t)nslice;
    /* at least ~4 MFLOP per thread */
    const size_t per_unit = DS_MAX((size_t)1, rows * (size_t)in * (size_t)out / units);
    ds_parallel_for(units, DS_MAX((size_t)1, ((size_t)2 << 20) / per_unit), mm_units, &j);
    free(chunk);
}

void matmul_forward_cpu(float *y, const float *x, const float *w, const float *b, int T, int in,
                        int out, ds_dtype act) {
    if (T > 0) matmul_seq_forward_cpu(y, x, w, b, &T, 1, in, out, act);
}

typedef struct rms_job {
    float *y;
    const float *x, *w;
    int C;
    float eps;
    ds_dtype act;
} rms_job;

static void rms_rows(void *p, size_t lo, size_t hi) {
    const rms_job *j = p;
    const int C = j->C;
    for (size_t t = lo; t < hi; t++) {
        const float *xr = j->x + t * C;
        float *yr = j->y + t * C;
        float ss = 0.0f;
        for (int c = 0; c < C; c++) ss += xr[c] * xr[c];
        float r = 1.0f / sqrtf(ss / (float)C + j->eps);
        for (int c = 0; c < C; c++) yr[c] = ds_round_to(j->w[c] * ds_round_to(xr[c] * r, j->act), j->act);
    }
}

void rmsnorm_forward_cpu(float *y, const float *x, const float *w, int T, int C, float eps,
                         ds_dtype act) {
    rms_job j = {y, x, w, C, eps, act};
    ds_parallel_for((size_t)(T > 0 ? T : 0), (size_t)(1 << 16) / (size_t)C + 1, rms_rows, &j);
}

void rope_tables_cpu(float *cos_t, float *sin_t, const float *inv_freq, int T, int HS, ds_dtype act) {
    int half = HS / 2;
    for (int p = 0; p < T; p++)
        for (int k = 0; k < half; k++) {
            float f = (float)p * inv_freq[k];
            float c = ds_round_to(cosf(f), act), s = ds_round_to(sinf(f), act);
            cos_t[(size_t)p * HS + k] = cos_t[(size_t)p * HS + k + half] = c;
            sin_t[(size_t)p * HS + k] = sin_t[(size_t)p * HS + k + half] = s;
        }
}

typedef struct rope_job {
    float *x;
    const float *cos_t, *sin_t;
    int NH, HS;
    ds_dtype act;
} rope_job;

static void rope_rows(void *p, size_t lo, size_t hi) {
    const rope_job *jb = p;
    const int half = jb->HS / 2, NH = jb->NH, HS = jb->HS;
    const ds_dtype act = jb->act;
    for (size_t t = lo; t < hi; t++) {
        const float *c = jb->cos_t + t * HS, *s = jb->sin_t + t * HS;
        for (int h = 0; h < NH; h++) {
            float *v = jb->x + t * NH * HS + (size_t)h * HS;
            for (int j = 0; j < half; j++) {
                float a = v[j], b = v[j + half];
                float a1 = ds_round_to(a * c[j], act), a2 = ds_round_to(b * s[j], act);
                float b1 = ds_round_to(b * c[j + half], act), b2 = ds_round_to(a * s[j + half], act);
                v[j] = ds_round_to(a1 - a2, act);
                v[j + half] = ds_round_to(b1 + b2, act);
            }
        }
    }
}

void rope_forward_cpu(float *x, const float *cos_t, const float *sin_t, int T, int NH, int HS,
                      ds_dtype act) {
    rope_job j = {x, cos_t, sin_t, NH, HS, act};
    ds_parallel_for((size_t)(T > 0 ? T : 0), (size_t)(1 << 16) / ((size_t)NH * HS) + 1, rope_rows, &j);
}

typedef struct att_job {
    float *out, *scratch;
    const float *q, *k, *v;
    int T, NH, NKV, HS;
    ds_dtype act;
} att_job;

#define ATT_ROWS 128

/* Row s of the scores [w]: s[0..n) := round_act(softmax(s[0..n))) in f32
 * (max, exp, sum, 1/sum, as torch's softmax), s[n..w) := 0 (the causal
 * zeros the P V block reads). The sum runs over eight fixed lanes, then the
 * lanes in order, then the tail: the same order for any thread count. */
static void softmax_row(float *s, int n, int w, ds_dtype act) {
    float mx = -INFINITY;
    for (int c = 0; c < n; c++) mx = s[c] > mx ? s[c] : mx;
    for (int c = 0; c < n; c++) s[c] -= mx;
    exp_array_cpu(s, s, (size_t)n);
    float lane[8] = {0}, sum = 0.0f;
    int c = 0;
    for (; c + 8 <= n; c += 8)
        for (int l = 0; l < 8; l++) lane[l] += s[c + l];
    for (int l = 0; l < 8; l++) sum += lane[l];
    for (; c < n; c++) sum += s[c];
    const float inv = 1.0f / sum;
    for (c = 0; c < n; c++) s[c] = ds_round_to(s[c] * inv, act);
    for (c = n; c < w; c++) s[c] = 0.0f;
}

/* Heads [lo, hi) of one sequence; the first range uses the caller's scratch,
 * the others (other threads) their own [T, T]. */
static void att_heads(void *p, size_t lo, size_t hi) {
    const att_job *j = p;
    const int T = j->T, HS = j->HS, rep = j->NH / j->NKV, qs = j->NH * HS, ks = j->NKV * HS;
    const float scale = 1.0f / sqrtf((float)HS);
    float *S = lo == 0 ? j->scratch : xmalloc(sizeof(float) * (size_t)T * T); /* scores, then probabilities */
    for (size_t h = lo; h < hi; h++) {
        const int g = (int)h / rep;
        /* S = (Q_h K_g^T) * scale; only j <= i is used (causal): row blocks
         * of ATT_ROWS stop at their last row's column (each element is the
         * same HS-long dot product either way) */
        for (int r0 = 0; r0 < T; r0 += ATT_ROWS) {
            const int r1 = DS_MIN(T, r0 + ATT_ROWS);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, r1, HS, scale, j->q + (size_t)r0 * qs + h * HS,
                        qs, j->k + (size_t)g * HS, ks, 0.0f, S + (size_t)r0 * T, T);
        }
        for (int i = 0; i < T; i++) softmax_row(S + (size_t)i * T, i + 1, DS_MIN(T, (i / ATT_ROWS + 1) * ATT_ROWS),
                                                j->act);
        /* ctx_h = P V_g, written straight into the [T, NH*HS] o_proj input;
         * the same row blocks, each to its last causal column */
        for (int r0 = 0; r0 < T; r0 += ATT_ROWS) {
            const int r1 = DS_MIN(T, r0 + ATT_ROWS);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, HS, r1, 1.0f, S + (size_t)r0 * T, T,
                        j->v + (size_t)g * HS, ks, 0.0f, j->out + (size_t)r0 * qs + h * HS, qs);
        }
        if (j->act != DS_DTYPE_F32)
            for (int i = 0; i < T; i++) ds_round_array(j->out + (size_t)i * qs + h * HS, (size_t)HS, j->act);
    }
    if (S != j->scratch) free(S);
}

void attention_forward_cpu(float *out, const float *q, const float *k, const float *v, int T,
                           int NH, int NKV, int HS, ds_dtype act, float *scratch) {
    if (T <= 0) return;
    att_job j = {out, scratch, q, k, v, T, NH, NKV, HS, act};
    /* With host threads, heads run in parallel on 1-thread sgemm (the softmax
     * is the larger part at HS = 64-128, and it is scalar); each head's
     * arithmetic is the same either way. */
    ds_parallel_for((size_t)NH, 1, att_heads, &j);
}

typedef struct ew_job {
    float *out;
    const float *a, *b;
    ds_dtype act;
} ew_job;

static void swiglu_range(void *p, size_t lo, size_t hi) {
    const ew_job *j = p;
    float e[256];
    for (size_t i0 = lo; i0 < hi; i0 += 256) {
        const size_t n = DS_MIN(hi - i0, (size_t)256);
        for (size_t i = 0; i < n; i++) e[i] = -j->a[i0 + i];
        exp_array_cpu(e, e, n);
        for (size_t i = 0; i < n; i++) {
            const float z = j->a[i0 + i];
            const float s = ds_round_to(z / (1.0f + e[i]), j->act);
            j->out[i0 + i] = ds_round_to(s * j->b[i0 + i], j->act);
        }
    }
}

void swiglu_forward_cpu(float *out, const float *gate, const float *up, size_t n, ds_dtype act) {
    ew_job j = {out, gate, up, act};
    ds_parallel_for(n, (size_t)1 << 16, swiglu_range, &j);
}

static void residual_range(void *p, size_t lo, size_t hi) {
    const ew_job *j = p;
    for (size_t i = lo; i < hi; i++) j->out[i] = ds_round_to(j->out[i] + j->b[i], j->act);
}

void residual_forward_cpu(float *x, const float *y, size_t n, ds_dtype act) {
    ew_job j = {x, NULL, y, act};
    ds_parallel_for(n, (size_t)1 << 18, residual_range, &j);
}

/* Hessian tiles: the upper triangle of H [n, n] in B x B tiles (a, b),
 * b >= a. The tiling depends on n alone (a row's bits depend on the call
 * geometry on some BLAS kernels, ops_cpu.h): one tile below 512 columns,
 * else 4 to 16 tile rows of a multiple of 64 columns. */
static int hess_tile(int n) {
    if (n < 512) return n;
    const int nt = DS_MIN(16, DS_MAX(4, n / 512));
    return ((n + nt - 1) / nt + 63) / 64 * 64;
}

typedef struct hacc_job {
    double *H;
    const float *X;
    const int *T;
    float *scratch; /* [n, n] */
    int nseq, n, B;
    int (*tile)[2]; /* tasks: tile (a, b), off-diagonal (sgemm) tiles first */
} hacc_job;

/* One tile, every sequence in order: its X_s^T X_s in f32 (ssyrk on the
 * diagonal, sgemm off it) into its place in the scratch, then twice that
 * added into H in f64. The tile's part of H stays in cache across the
 * sequences; each element gets the same additions in the same order as one
 * call per sequence. */
static void hacc_tile(void *p, size_t k) {
    const hacc_job *j = p;
    const int n = j->n, a = j->tile[k][0], b = j->tile[k][1];
    const int r0 = a * j->B, c0 = b * j->B, nr = DS_MIN(j->B, n - r0), nc = DS_MIN(j->B, n - c0);
    float *S = j->scratch + (size_t)r0 * n + c0;
    const float *X = j->X;
    for (int s = 0; s < j->nseq; X += (size_t)j->T[s] * n, s++) {
        const int rows = j->T[s];
        if (rows <= 0) continue;
        if (a == b)
            cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, nr, rows, 1.0f, X + r0, n, 0.0f, S, n);
        else
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nr, nc, rows, 1.0f, X + r0, n, X + c0, n, 0.0f, S, n);
        for (int i = 0; i < nr; i++) {
            double *hr = j->H + (size_t)(r0 + i) * n + c0;
            const float *sr = S + (size_t)i * n;
            for (int c = a == b ? i : 0; c < nc; c++) hr[c] += 2.0 * (double)sr[c];
        }
    }
}

void hessian_accum_cpu(double *H, const float *X, int nseq, const int *T, int n, float *scratch) {
    int any = 0;
    for (int s = 0; s < nseq; s++) any |= T[s] > 0;
    if (!any) return;
    const int B = hess_tile(n), nt = (n + B - 1) / B;
    int(*tile)[2] = xmalloc(sizeof *tile * (size_t)nt * (size_t)(nt + 1) / 2);
    size_t k = 0;
    for (int a = 0; a < nt; a++) /* an sgemm tile costs about twice an ssyrk one */
        for (int b = a + 1; b < nt; b++) tile[k][0] = a, tile[k++][1] = b;
    for (int a = 0; a < nt; a++) tile[k][0] = a, tile[k++][1] = a;
    hacc_job j = {H, X, T, scratch, nseq, n, B, tile};
    ds_parallel_tasks(k, hacc_tile, NULL, &j);
    free(tile);
}

void hessian_mirror_cpu(double *H, int n) {
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) H[(size_t)j * n + i] = H[(size_t)i * n + j];
}

float act_absmax_cpu(float m, const float *X, size_t n) {
    for (size_t i = 0; i < n; i++) m = fabsf(X[i]) > m ? fabsf(X[i]) : m;
    return m;
}

typedef struct h2f_job {
    float *Hf;
    const double *H;
    int n;
    double nseq;
} h2f_job;

/* Rows [lo, hi) of Hf from H's upper triangle (rows i >= j read H[j][i]):
 * every element is written by exactly one row. */
static void h2f_rows(void *p, size_t lo, size_t hi) {
    const h2f_job *j = p;
    const size_t n = (size_t)j->n;
    for (size_t a = lo; a < hi; a++) {
        float *hr = j->Hf + a * n;
        for (size_t b = 0; b < a; b++) hr[b] = (float)(j->H[b * n + a] / j->nseq);
        for (size_t b = a; b < n; b++) hr[b] = (float)(j->H[a * n + b] / j->nseq);
    }
}

void hessian_to_f32_cpu(float *Hf, const double *H, int n, double nseq) {
    h2f_job j = {Hf, H, n, nseq};
    ds_parallel_for((size_t)n, 64, h2f_rows, &j);
}
