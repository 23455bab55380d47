/*
 * attention.cu - causal GQA attention, twin of attention_forward_cpu (per
 * sequence). Two paths (attention_fused in cuda/kernels.h picks one): the
 * fused kernel (cuda/attention_fused.cu: HS 64 or 128, opt-in) or, the
 * default, verified on an H100 and always for other head sizes, batched
 * GEMMs (this file): for each sequence and kv head g, the rep = NH/NKV
 * query heads h = g*rep + r sharing it form one strided batch
 * (K/V stride 0: no repeat_kv copies). Column-major views (see matmul.cu):
 *   scores  S_h^T (Tk x Tq) = K_g (Tk x HS) Q_h^T (HS x Tq):
 *           GemmStridedBatchedEx(OP_T, OP_N, m=T, n=T, k=HS, A=K_g lda=NKV*HS,
 *           B=Q_h ldb=NH*HS (stride HS), C=S_h f32 ldc=T (stride T*T)),
 *           so S_h is row-major [Tq][Tk] (row i contiguous);
 *   softmax one block per (row i, head): s = dot * HS^-0.5 (f32), causal mask
 *           j > i, f32 max/exp/sum, P = bf16(e / sum), zeros above the diagonal;
 *   context ctx_h^T (HS x Tq) = V_g^T (HS x Tk) P_h^T (Tk x Tq):
 *           (OP_N, OP_N, m=HS, n=T, k=T, A=V_g lda=NKV*HS, B=P_h ldb=T,
 *           C=out_h bf16 ldc=NH*HS (stride HS)) - written straight into the
 *           [T, NH*HS] o_proj input; fp32 accumulate, one bf16 rounding.
 * Workspace (GEMM path only): rep*T*T f32 scores + rep*T*T bf16 P (T = 2048,
 * rep = 4: 96 MiB; T = 8192: 1.5 GiB). Half of the GEMM work is above the
 * diagonal (masked): ~7% of a Llama-3-8B layer's forward FLOPs at T = 2048.
 */
#include "cuda_common.cuh"

#define SM_THREADS 256

static __device__ __forceinline__ float block_reduce(float v, float *red, int is_max) {
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, u) : v + u;
    }
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float w = threadIdx.x < SM_THREADS / 32 ? red[threadIdx.x] : (is_max ? -INFINITY : 0.0f);
        for (int o = 16; o > 0; o >>= 1) {
            float u = __shfl_xor_sync(0xffffffffu, w, o);
            w = is_max ? fmaxf(w, u) : w + u;
        }
        if (threadIdx.x == 0) red[32] = w;
    }
    __syncthreads();
    float r = red[32];
    __syncthreads(); /* red reused by the next reduction */
    return r;
}

/* grid (T rows, rep heads). */
static __global__ void __launch_bounds__(SM_THREADS)
causal_softmax_kernel(uint16_t *P, const float *S, int T, float scale) {
    __shared__ float red[33];
    const int i = blockIdx.x;
    const size_t off = ((size_t)blockIdx.y * T + i) * T;
    const float *s = S + off;
    uint16_t *p = P + off;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j <= i; j += SM_THREADS) mx = fmaxf(mx, __fmul_rn(s[j], scale));
    mx = block_reduce(mx, red, 1);
    float sum = 0.0f;
    for (int j = threadIdx.x; j <= i; j += SM_THREADS) sum += expf(__fsub_rn(__fmul_rn(s[j], scale), mx));
    sum = block_reduce(sum, red, 0);
    const float inv = 1.0f / sum;
    for (int j = threadIdx.x; j < T; j += SM_THREADS) {
        float e = j <= i ? expf(__fsub_rn(__fmul_rn(s[j], scale), mx)) : 0.0f;
        p[j] = f32_to_bf16_dev(__fmul_rn(e, inv));
    }
}

extern "C" void attention_forward_cuda(uint16_t *out, const uint16_t *q, const uint16_t *k,
                                       const uint16_t *v, int B, int T, int NH, int NKV, int HS,
                                       void *ws, void *stream) {
    DS_ASSERT(B >= 0 && B <= 65535 && T > 0 && T <= 65535 && NH > 0 && NKV > 0 && NH % NKV == 0 && HS > 0);
    if (B == 0) return;
    const float scale = 1.0f / sqrtf((float)HS); /* same expression as the CPU twin */
    if (attention_fused(HS)) {
        attention_fused_cuda(out, q, k, v, B, T, NH, NKV, HS, stream);
        return;
    }
    DS_ASSERT(ws != NULL);
    const int rep = NH / NKV, qs = NH * HS, ks = NKV * HS;
    const size_t tt = (size_t)T * T;
    float *S = (float *)ws;
    uint16_t *P = (uint16_t *)((char *)ws + ((tt * rep * sizeof(float) + 255) & ~(size_t)255));
    const float one = 1.0f, zero = 0.0f;
    cublasHandle_t h = ds_cublas_get(stream);
    for (int b = 0; b < B; b++) {
        const uint16_t *qb = q + (size_t)b * T * qs, *kb = k + (size_t)b * T * ks,
                       *vb = v + (size_t)b * T * ks;
        uint16_t *ob = out + (size_t)b * T * qs;
        for (int g = 0; g < NKV; g++) {
            const uint16_t *Kg = kb + (size_t)g * HS, *Vg = vb + (size_t)g * HS;
            const uint16_t *Qh = qb + (size_t)g * rep * HS;
            uint16_t *Oh = ob + (size_t)g * rep * HS;
            CUBLAS_CHECK(cublasGemmStridedBatchedEx(
                h, CUBLAS_OP_T, CUBLAS_OP_N, T, T, HS, &one, Kg, CUDA_R_16BF, ks, 0, Qh, CUDA_R_16BF,
                qs, HS, &zero, S, CUDA_R_32F, T, (long long)tt, rep, CUBLAS_COMPUTE_32F,
                CUBLAS_GEMM_DEFAULT));
            DS_LAUNCH(causal_softmax_kernel, dim3(T, rep), SM_THREADS, 0, stream, P, S, T, scale);
            CUDA_LAUNCH_CHECK();
            CUBLAS_CHECK(cublasGemmStridedBatchedEx(
                h, CUBLAS_OP_N, CUBLAS_OP_N, HS, T, T, &one, Vg, CUDA_R_16BF, ks, 0, P, CUDA_R_16BF,
                T, (long long)tt, &zero, Oh, CUDA_R_16BF, qs, HS, rep, CUBLAS_COMPUTE_32F,
                CUBLAS_GEMM_DEFAULT));
        }
    }
}
