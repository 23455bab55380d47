/*
 * rope.cu - RoPE tables and the rotate_half rotation on bf16 q/k; twins of
 * rope_tables_cpu and rope_forward_cpu. Angles p * inv_freq[k] in f32 with
 * the accurate (non-fast-math) cosf/sinf, rounded to bf16. Rotation: each
 * product rounded to bf16, then the sum/difference rounded (HF bf16
 * elementwise), with __fmul_rn/__fadd_rn so nvcc cannot contract into FMAs.
 */
#include "cuda_common.cuh"

static __global__ void rope_tables_kernel(uint16_t *cos_t, uint16_t *sin_t, const float *inv_freq,
                                          int T, int HS) {
    const int half = HS / 2;
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= (size_t)T * half) return;
    int p = (int)(i / half), k = (int)(i % half);
    float f = __fmul_rn((float)p, inv_freq[k]);
    uint16_t c = f32_to_bf16_dev(cosf(f)), s = f32_to_bf16_dev(sinf(f));
    size_t o = (size_t)p * HS + k;
    cos_t[o] = cos_t[o + half] = c;
    sin_t[o] = sin_t[o + half] = s;
}

extern "C" void rope_tables_cuda(uint16_t *cos_t, uint16_t *sin_t, const float *inv_freq, int T,
                                 int HS, void *stream) {
    DS_ASSERT(T >= 0 && HS > 0 && HS % 2 == 0);
    size_t n = (size_t)T * (HS / 2);
    if (!n) return;
    DS_LAUNCH(rope_tables_kernel, (unsigned)CEIL_DIV(n, (size_t)256), 256, 0, stream,
              cos_t, sin_t, inv_freq, T, HS);
    CUDA_LAUNCH_CHECK();
}

/* One thread per (token, head, j < HS/2) pair. */
static __global__ void rope_forward_kernel(uint16_t *x, const uint16_t *cos_t, const uint16_t *sin_t,
                                           int T, int NH, int HS, int ld) {
    const int half = HS / 2;
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t per_t = (size_t)NH * half;
    if (i >= (size_t)T * per_t) return;
    int t = (int)(i / per_t);
    int r = (int)(i % per_t);
    int h = r / half, j = r % half;
    uint16_t *v = x + (size_t)t * ld + (size_t)h * HS;
    const uint16_t *c = cos_t + (size_t)t * HS, *s = sin_t + (size_t)t * HS;
    float a = bf16_to_f32_dev(v[j]), b = bf16_to_f32_dev(v[j + half]);
    float a1 = round_bf16_dev(__fmul_rn(a, bf16_to_f32_dev(c[j])));
    float a2 = round_bf16_dev(__fmul_rn(b, bf16_to_f32_dev(s[j])));
    float b1 = round_bf16_dev(__fmul_rn(b, bf16_to_f32_dev(c[j + half])));
    float b2 = round_bf16_dev(__fmul_rn(a, bf16_to_f32_dev(s[j + half])));
    v[j] = f32_to_bf16_dev(__fsub_rn(a1, a2));
    v[j + half] = f32_to_bf16_dev(__fadd_rn(b1, b2));
}

extern "C" void rope_forward_cuda(uint16_t *x, const uint16_t *cos_t, const uint16_t *sin_t, int T,
                                  int NH, int HS, int ld, void *stream) {
    DS_ASSERT(T >= 0 && NH > 0 && HS > 0 && HS % 2 == 0 && ld >= NH * HS);
    size_t n = (size_t)T * NH * (HS / 2);
    if (!n) return;
    DS_LAUNCH(rope_forward_kernel, (unsigned)CEIL_DIV(n, (size_t)256), 256, 0, stream,
              x, cos_t, sin_t, T, NH, HS, ld);
    CUDA_LAUNCH_CHECK();
}
