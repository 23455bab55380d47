/*
 * moe.cu - the mixture-of-experts pieces of a sparse decoder layer (issue
 * 13), twins of model.c's route / moe_forward steps with act = BF16:
 *  - moe_route_cuda: softmax in f32 over the bf16 router logits of a token
 *    (max, exp, sum in expert order), top-K as torch.topk (descending, ties
 *    to the lower index), renormalised when norm_topk, weights rounded to
 *    bf16; one thread per token (E is at most a few hundred), so the sums run
 *    in the CPU's order: moe_route_token (src/moe_route.h), the function the
 *    CPU forward calls;
 *  - moe_gather_cuda: rows of x by index (the routed tokens of one expert);
 *  - moe_combine_cuda: acc[r] = bf16(acc[r] + bf16(w * y)) for the routed
 *    rows of the experts of one group at once: one thread per (row, column)
 *    adds that row's contributions in ascending expert order (the CPU's
 *    order), so no races and no atomics;
 *  - moe_shared_gate_add_cuda: Qwen2-MoE's shared expert,
 *    acc[t] = bf16(acc[t] + bf16(g_t * y[t])), g_t = bf16(sigmoid(bf16(m_t . w)))
 *    with the dot product summed sequentially in f32 (one thread per token).
 * expf is CUDA's accurate expf (<= 2 ulp; the CPU uses glibc's), so a router
 * probability can differ in the last bit and, rarely, a tie-close top-K
 * choice; everything else is exact against the twins.
 */
#include "cuda_common.cuh"
#include "moe_route.h" /* the router math of the CPU forward */

static __global__ void route_kernel(int32_t *top_e, float *top_w, const uint16_t *logits, int T, int E, int K,
                                    int norm_topk, float *probs) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= T) return;
    const uint16_t *z = logits + (size_t)t * E;
    float *p = probs + (size_t)t * E;
    for (int e = 0; e < E; e++) p[e] = bf16_to_f32_dev(z[e]);
    moe_route_token(p, E, K, norm_topk, DS_DTYPE_BF16, top_e + (size_t)t * K, top_w + (size_t)t * K);
}

extern "C" size_t moe_route_ws_bytes(int T, int E) { return sizeof(float) * (size_t)T * E; }

extern "C" void moe_route_cuda(int32_t *top_e, float *top_w, const uint16_t *logits, int T, int E, int K,
                               int norm_topk, void *ws, void *stream) {
    if (T <= 0) return;
    DS_LAUNCH(route_kernel, (unsigned)CEIL_DIV(T, 128), 128, 0, stream,
              top_e, top_w, logits, T, E, K, norm_topk, (float *)ws);
    CUDA_LAUNCH_CHECK();
}

static __global__ void gather_kernel(uint16_t *dst, const uint16_t *x, const int32_t *rows, int n, int C) {
    size_t total = (size_t)n * C, stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += stride) {
        size_t r = i / C, j = i % C;
        dst[i] = x[(size_t)rows[r] * C + j];
    }
}

extern "C" void moe_gather_cuda(uint16_t *dst, const uint16_t *x, const int32_t *rows, int n, int C, void *stream) {
    if (n <= 0) return;
    size_t blocks = CEIL_DIV((size_t)n * C, (size_t)256);
    if (blocks > 132 * 64) blocks = 132 * 64;
    DS_LAUNCH(gather_kernel, (unsigned)blocks, 256, 0, stream, dst, x, rows, n, C);
    CUDA_LAUNCH_CHECK();
}

static __global__ void combine_kernel(uint16_t *acc, const uint16_t *y, const int32_t *tok, const int32_t *start,
                                      const int32_t *src, const float *w, int n, int C) {
    size_t total = (size_t)n * C, stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += stride) {
        size_t r = i / C, j = i % C, dr = (size_t)tok[r] * C + j;
        float a = bf16_to_f32_dev(acc[dr]);
        for (int p = start[r]; p < start[r + 1]; p++) {
            float q = round_bf16_dev(__fmul_rn(w[p], bf16_to_f32_dev(y[(size_t)src[p] * C + j])));
            a = round_bf16_dev(__fadd_rn(a, q));
        }
        acc[dr] = f32_to_bf16_dev(a);
    }
}

extern "C" void moe_combine_cuda(uint16_t *acc, const uint16_t *y, const int32_t *tok, const int32_t *start,
                                 const int32_t *src, const float *w, int n, int C, void *stream) {
    if (n <= 0) return;
    size_t blocks = CEIL_DIV((size_t)n * C, (size_t)256);
    if (blocks > 132 * 64) blocks = 132 * 64;
    DS_LAUNCH(combine_kernel, (unsigned)blocks, 256, 0, stream, acc, y, tok, start, src, w, n, C);
    CUDA_LAUNCH_CHECK();
}

static __global__ void shared_gate_kernel(float *gate, const uint16_t *m, const uint16_t *wsg, int T, int C) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= T) return;
    const uint16_t *mt = m + (size_t)t * C;
    float z = 0.0f;
    for (int j = 0; j < C; j++) z = __fadd_rn(z, __fmul_rn(bf16_to_f32_dev(mt[j]), bf16_to_f32_dev(wsg[j])));
    gate[t] = round_bf16_dev(__fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-round_bf16_dev(z)))));
}

static __global__ void gate_add_kernel(uint16_t *acc, const uint16_t *y, const float *gate, int T, int C) {
    size_t total = (size_t)T * C, stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += stride) {
        float p = round_bf16_dev(__fmul_rn(gate[i / C], bf16_to_f32_dev(y[i])));
        acc[i] = f32_to_bf16_dev(__fadd_rn(bf16_to_f32_dev(acc[i]), p));
    }
}

extern "C" void moe_shared_gate_add_cuda(uint16_t *acc, const uint16_t *y, const uint16_t *m, const uint16_t *wsg,
                                         int T, int C, float *gate_ws, void *stream) {
    if (T <= 0) return;
    DS_LAUNCH(shared_gate_kernel, (unsigned)CEIL_DIV(T, 128), 128, 0, stream, gate_ws, m, wsg, T, C);
    CUDA_LAUNCH_CHECK();
    size_t blocks = CEIL_DIV((size_t)T * C, (size_t)256);
    if (blocks > 132 * 64) blocks = 132 * 64;
    DS_LAUNCH(gate_add_kernel, (unsigned)blocks, 256, 0, stream, acc, y, gate_ws, T, C);
    CUDA_LAUNCH_CHECK();
}
