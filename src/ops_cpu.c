/*
 * ops_cpu.c - CPU reference implementations of the decoder ops (the CPU twins
 * of cuda/). Follows HF transformers' Llama modeling code and the rounding
 * points of ../shared/docs/model-and-tokenizer.md §3: statistics, softmax and
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
    for (int h = 0; h < NH; h++) {
        const int g = h / rep;
        for (int i = 0; i < T; i++) {
            const float *qi = q + (size_t)i * qs + (size_t)h * HS;
            float mx = -INFINITY;
            for (int j = 0; j <= i; j++) {
                const float *kj = k + (size_t)j * ks + (size_t)g * HS;
                float d = 0.0f;
                for (int e = 0; e < HS; e++) d += qi[e] * kj[e];
                scratch[j] = d * scale;
                if (scratch[j] > mx) mx = scratch[j];
            }
            float sum = 0.0f;
            for (int j = 0; j <= i; j++) { scratch[j] = expf(scratch[j] - mx); sum += scratch[j]; }
            float inv = 1.0f / sum;
            float *oi = out + (size_t)i * qs + (size_t)h * HS;
            memset(oi, 0, sizeof(float) * (size_t)HS);
            for (int j = 0; j <= i; j++) {
                float p = ds_round_to(scratch[j] * inv, act);
                const float *vj = v + (size_t)j * ks + (size_t)g * HS;
                for (int e = 0; e < HS; e++) oi[e] += p * vj[e];
            }
            ds_round_array(oi, (size_t)HS, act);
        }
    }
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
