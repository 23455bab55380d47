/*
 * rmsnorm.cu - RMSNorm (HF LlamaRMSNorm) on bf16 rows; twin of
 * rmsnorm_forward_cpu: r = x * (1 / sqrtf(mean(x^2) + eps)) in f32,
 * y = bf16(w * bf16(r)). One block per row; f32 sum of squares reduced by
 * warp shuffles (summation order differs from the CPU's serial loop: a few
 * f32 ulps on the statistic, usually invisible after the bf16 rounding).
 */
#include "cuda_common.cuh"

#define RMS_THREADS 256

static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __global__ void __launch_bounds__(RMS_THREADS)
rmsnorm_forward_kernel(uint16_t *y, const uint16_t *x, const uint16_t *w, int C, float eps) {
    __shared__ float part[RMS_THREADS / 32];
    __shared__ float rinv;
    const size_t row = blockIdx.x;
    const uint16_t *xr = x + row * C;
    uint16_t *yr = y + row * C;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < C; c += RMS_THREADS) {
        float v = bf16_to_f32_dev(xr[c]);
        ss = __fmaf_rn(v, v, ss); /* v*v exact in f32 for bf16 v, so fma == mul+add */
    }
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float s = threadIdx.x < RMS_THREADS / 32 ? part[threadIdx.x] : 0.0f;
        s = warp_sum(s);
        if (threadIdx.x == 0) rinv = 1.0f / sqrtf(__fdiv_rn(s, (float)C) + eps);
    }
    __syncthreads();
    const float r = rinv;
    for (int c = threadIdx.x; c < C; c += RMS_THREADS) {
        float n = round_bf16_dev(__fmul_rn(bf16_to_f32_dev(xr[c]), r));
        yr[c] = f32_to_bf16_dev(__fmul_rn(bf16_to_f32_dev(w[c]), n));
    }
}

extern "C" void rmsnorm_forward_cuda(uint16_t *y, const uint16_t *x, const uint16_t *w, int T, int C,
                                     float eps, void *stream) {
    DS_ASSERT(T >= 0 && C > 0);
    if (T == 0) return;
    DS_LAUNCH(rmsnorm_forward_kernel, T, RMS_THREADS, 0, stream, y, x, w, C, eps);
    CUDA_LAUNCH_CHECK();
}
