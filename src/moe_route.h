/*
 * moe_route.h - the router math of one token of a sparse (MoE) layer, one
 * source for the CPU forward (src/model.c route), the CUDA kernel
 * (cuda/moe.cu route_kernel) and its CPU twin (tests/moe_twins.h), so the
 * three cannot drift apart. `static inline`, `__host__ __device__` under
 * nvcc (QS_FN of qscalar.h); on the device each f32 op is a round-to-nearest
 * intrinsic (QS_ADD, ...), so both sides do the same f32 operations in the
 * same order; only expf differs (glibc's vs CUDA's, <= 2 ulp).
 * Source: transformers' MixtralSparseMoeBlock / Qwen2MoeSparseMoeBlock /
 * Qwen3MoeSparseMoeBlock (v4): softmax(router_logits, dim=-1, dtype=float),
 * torch.topk, optional renormalisation, .to(hidden_states.dtype).
 * A .cu includes this after cuda_common.cuh.
 */
#ifndef DS_MOE_ROUTE_H
#define DS_MOE_ROUTE_H

#include "qscalar.h"

/* Softmax and top-K of one token.
 * p [E] f32: on entry the router logits (already in the model dtype), on
 *   exit the probabilities p[e] = expf(z[e] - max z) / sum (the max and the
 *   sum taken in expert order);
 * te [K] out: the experts, as torch.topk: descending probability, ties to
 *   the lower index; tw [K] out: their weights, divided by their sum when
 *   norm_topk (Mixtral always, Qwen*-MoE per config), then rounded to dt
 *   (a ds_dtype).
 * 1 <= K <= E; no error cases. */
QS_FN void moe_route_token(float *p, int E, int K, int norm_topk, int dt, int32_t *te, float *tw) {
    float mx = p[0], sum = 0.0f, tsum = 0.0f;
    for (int e = 1; e < E; e++) mx = p[e] > mx ? p[e] : mx;
    for (int e = 0; e < E; e++) {
        p[e] = expf(QS_SUB(p[e], mx));
        sum = QS_ADD(sum, p[e]);
    }
    for (int e = 0; e < E; e++) p[e] = QS_DIV(p[e], sum);
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int j = 0; j < k && !taken; j++) taken = te[j] == e;
            if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        te[k] = best;
        tw[k] = p[best];
        tsum = QS_ADD(tsum, p[best]);
    }
    for (int k = 0; k < K; k++) tw[k] = qs_round_to(norm_topk ? QS_DIV(tw[k], tsum) : tw[k], dt);
}

#endif
