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
#include <string.h>

void matmul_forward_cpu(float *y, const float *x, const float *w, const float *b, int T, int in,
                        int out, ds_dtype act) {
    if (T == 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
    if (b)
        for (int t = 0; t < T; t++)
            for (int o = 0; o < out; o++) y[(size_t)t * out + o] += b[o];
    ds_round_array(y, (size_t)T * out, act);
}

void rmsnorm_forward_cpu(float *y, const float *x, const float *w, int T, int C, float eps,
                         ds_dtype act) {
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * C;
        float *yr = y + (size_t)t * C;
        float ss = 0.0f;
        for (int c = 0; c < C; c++) ss += xr[c] * xr[c];
        float r = 1.0f / sqrtf(ss / (float)C + eps);
        for (int c = 0; c < C; c++) yr[c] = ds_round_to(w[c] * ds_round_to(xr[c] * r, act), act);
    }
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

void rope_forward_cpu(float *x, const float *cos_t, const float *sin_t, int T, int NH, int HS,
                      ds_dtype act) {
    int half = HS / 2;
    for (int t = 0; t < T; t++) {
        const float *c = cos_t + (size_t)t * HS, *s = sin_t + (size_t)t * HS;
        for (int h = 0; h < NH; h++) {
            float *v = x + (size_t)t * NH * HS + (size_t)h * HS;
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

void attention_forward_cpu(float *out, const float *q, const float *k, const float *v, int T,
                           int NH, int NKV, int HS, ds_dtype act, float *scratch) {
    const int rep = NH / NKV, qs = NH * HS, ks = NKV * HS;
    const float scale = 1.0f / sqrtf((float)HS);
    float *S = scratch; /* [T, T] scores, then probabilities */
    for (int h = 0; h < NH; h++) {
        const int g = h / rep;
        /* S = (Q_h K_g^T) * scale; only j <= i is used (causal) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HS, scale, q + (size_t)h * HS, qs,
                    k + (size_t)g * HS, ks, 0.0f, S, T);
        for (int i = 0; i < T; i++) {
            float *si = S + (size_t)i * T, mx = -INFINITY, sum = 0.0f;
            for (int j = 0; j <= i; j++) mx = si[j] > mx ? si[j] : mx;
            for (int j = 0; j <= i; j++) { si[j] = expf(si[j] - mx); sum += si[j]; }
            const float inv = 1.0f / sum;
            for (int j = 0; j <= i; j++) si[j] = ds_round_to(si[j] * inv, act);
            for (int j = i + 1; j < T; j++) si[j] = 0.0f;
        }
        /* ctx_h = P V_g, written straight into the [T, NH*HS] o_proj input */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HS, T, 1.0f, S, T, v + (size_t)g * HS, ks,
                    0.0f, out + (size_t)h * HS, qs);
    }
    if (act != DS_DTYPE_F32)
        for (int i = 0; i < T; i++) ds_round_array(out + (size_t)i * qs, (size_t)qs, act);
}

void swiglu_forward_cpu(float *out, const float *gate, const float *up, size_t n, ds_dtype act) {
    for (size_t i = 0; i < n; i++) {
        float z = gate[i];
        float s = ds_round_to(z / (1.0f + expf(-z)), act);
        out[i] = ds_round_to(s * up[i], act);
    }
}

void residual_forward_cpu(float *x, const float *y, size_t n, ds_dtype act) {
    for (size_t i = 0; i < n; i++) x[i] = ds_round_to(x[i] + y[i], act);
}

void hessian_accum_cpu(double *H, const float *X, int rows, int n, float *scratch) {
    if (rows == 0) return;
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, n, rows, 1.0f, X, n, 0.0f, scratch, n);
    for (int i = 0; i < n; i++) {
        const float *s = scratch + (size_t)i * n;
        double *hr = H + (size_t)i * n;
        for (int j = i; j < n; j++) hr[j] += 2.0 * (double)s[j];
    }
}

void hessian_mirror_cpu(double *H, int n) {
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) H[(size_t)j * n + i] = H[(size_t)i * n + j];
}

void hessian_to_f32_cpu(float *Hf, const double *H, int n, double nseq) {
    for (int a = 0; a < n; a++)
        for (int b = a; b < n; b++)
            Hf[(size_t)a * n + b] = Hf[(size_t)b * n + a] = (float)(H[(size_t)a * n + b] / nseq);
}
