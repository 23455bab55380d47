/*
 * rmsnorm.cu - RMSNorm (HF LlamaRMSNorm) on bf16 rows; twin of
 * rmsnorm_forward_cpu: r = x * (1 / sqrtf(mean(x^2) + eps)) in f32,
 * y = bf16(w * bf16(r)). One block per row; f32 sum of squares reduced by
 * warp shuffles (summation order differs from the CPU's serial loop: a few
 * f32 ulps on the statistic, usually invisible after the bf16 rounding).
 *
 * residual_rmsnorm_forward_cuda fuses the residual add in front of it (issue
 * 12 item 4): x = bf16(x + d), then y = rmsnorm(x), twin of
 * residual_forward_cpu followed by rmsnorm_forward_cpu. Each thread writes
 * its elements of the new x in the first loop and reads them back in the
 * second (its own writes; the row, C bf16, is in L1/L2 by then), so x is read
 * from DRAM once instead of twice (residual add, then the norm's statistic):
 * one pass over [T, C] saved. The statistic's summation order is the plain
 * kernel's, so the fused launch equals the two launches bit for bit.
 */
#include "cuda_common.cuh"

#define RMS_THREADS 256

static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* ADD 0: y = rmsnorm(x) (x read only; y may alias x). ADD 1: x = bf16(x + d)
 * in place, then y = rmsnorm(x) (y must not alias x or d). */
template <int ADD>
static __global__ void __launch_bounds__(RMS_THREADS)
rmsnorm_forward_kernel(uint16_t *y, uint16_t *x, const uint16_t *d, const uint16_t *w, int C, float eps) {
    __shared__ float part[RMS_THREADS / 32];
    __shared__ float rinv;
    const size_t row = blockIdx.x;
    uint16_t *xr = x + row * C;
    uint16_t *yr = y + row * C;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < C; c += RMS_THREADS) {
        float v = bf16_to_f32_dev(xr[c]);
        if (ADD) {
            const uint16_t s = f32_to_bf16_dev(__fadd_rn(v, bf16_to_f32_dev(d[row * C + c]))); /* as residual_forward */
            xr[c] = s;
            v = bf16_to_f32_dev(s);
        }
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
    /* ADD 0 never writes x: the cast only shares the kernel's signature */
    DS_LAUNCH(rmsnorm_forward_kernel<0>, T, RMS_THREADS, 0, stream, y, (uint16_t *)x, (const uint16_t *)NULL, w, C,
              eps);
    CUDA_LAUNCH_CHECK();
}

extern "C" void residual_rmsnorm_forward_cuda(uint16_t *y, uint16_t *x, const uint16_t *d, const uint16_t *w, int T,
                                              int C, float eps, void *stream) {
    DS_ASSERT(T >= 0 && C > 0);
    DS_ASSERT(y != x && y != d);
    if (T == 0) return;
    DS_LAUNCH(rmsnorm_forward_kernel<1>, T, RMS_THREADS, 0, stream, y, x, d, w, C, eps);
    CUDA_LAUNCH_CHECK();
}
