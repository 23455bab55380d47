/*
 * moe_twins.h - the CPU twins of cuda/moe.cu's launchers (cuda/kernels.h),
 * on host arrays with bf16 storage: the steps of model.c's route and
 * moe_forward with act = BF16, written out again because model.c keeps them
 * static. They are the reference of tests/test_kernels.c (real kernels) and
 * the implementation of tests/cuda_emul.c; tests/test_moe_gpu_emul.sh checks
 * that they equal model.c's (the emulated engine's checkpoints are
 * byte-identical to --device cpu's for Mixtral, Qwen2-MoE and Qwen3-MoE).
 * Static functions: include from one test translation unit each.
 */
#ifndef DS_MOE_TWINS_H
#define DS_MOE_TWINS_H

#include "common.h"
#include "moe_route.h"

#include <math.h>
#include <string.h>

/* model.c route: p = softmax(bf16 logits) in f32, top-K (descending, ties ->
 * lower index), renormalised when norm_topk, rounded to bf16. ws [T, E] f32. */
static void moe_route_twin(int32_t *top_e, float *top_w, const uint16_t *logits, int T, int E, int K, int norm_topk,
                           float *ws) {
    for (int t = 0; t < T; t++) {
        float *p = ws + (size_t)t * E;
        for (int e = 0; e < E; e++) p[e] = bf16_to_f32(logits[(size_t)t * E + e]);
        moe_route_token(p, E, K, norm_topk, DS_DTYPE_BF16, top_e + (size_t)t * K, top_w + (size_t)t * K);
    }
}

/* dst [n, C] = x[rows[i], :]. */
static void moe_gather_twin(uint16_t *dst, const uint16_t *x, const int32_t *rows, int n, int C) {
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)i * C, x + (size_t)rows[i] * C, sizeof(uint16_t) * C);
}

/* model.c moe_forward's index-add for several experts at once: for each of
 * the n distinct rows tok[i], its contributions p = start[i] .. start[i+1]-1
 * in that order (ascending expert, as the CPU's expert loop adds them):
 * a = bf16(a + bf16(w[p] * y[src[p], :])). */
static void moe_combine_twin(uint16_t *acc, const uint16_t *y, const int32_t *tok, const int32_t *start,
                             const int32_t *src, const float *w, int n, int C) {
    const ds_dtype act = DS_DTYPE_BF16;
    for (int i = 0; i < n; i++) {
        uint16_t *a = acc + (size_t)tok[i] * C;
        for (int p = start[i]; p < start[i + 1]; p++) {
            const uint16_t *yr = y + (size_t)src[p] * C;
            for (int j = 0; j < C; j++)
                a[j] = f32_to_bf16(ds_round_to(bf16_to_f32(a[j]) + ds_round_to(w[p] * bf16_to_f32(yr[j]), act), act));
        }
    }
}

/* model.c moe_forward's shared expert: g = bf16(sigmoid(bf16(m . wsg))),
 * a = bf16(a + bf16(g * y)); gate_ws [T] receives g. */
static void moe_shared_gate_add_twin(uint16_t *acc, const uint16_t *y, const uint16_t *m, const uint16_t *wsg, int T,
                                     int C, float *gate_ws) {
    const ds_dtype act = DS_DTYPE_BF16;
    for (int t = 0; t < T; t++) {
        float z = 0;
        for (int j = 0; j < C; j++) z += bf16_to_f32(m[(size_t)t * C + j]) * bf16_to_f32(wsg[j]);
        float g = ds_round_to(1.0f / (1.0f + expf(-ds_round_to(z, act))), act);
        gate_ws[t] = g;
        uint16_t *a = acc + (size_t)t * C;
        const uint16_t *yt = y + (size_t)t * C;
        for (int j = 0; j < C; j++)
            a[j] = f32_to_bf16(ds_round_to(bf16_to_f32(a[j]) + ds_round_to(g * bf16_to_f32(yt[j]), act), act));
    }
}

#endif
