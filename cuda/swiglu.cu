/*
 * swiglu.cu - SiLU-gated product and the residual add on bf16 arrays; twins
 * of swiglu_forward_cpu / residual_forward_cpu:
 *   out = bf16(bf16(z / (1 + expf(-z))) * up),   x = bf16(x + y).
 * Memory-bound: 8 bf16 (16 bytes) per thread per step when all pointers are
 * 16-byte aligned, a scalar tail/fallback otherwise. expf is the accurate
 * CUDA expf (<= 2 ulp; the CPU uses glibc's): rare 1-ulp bf16 differences.
 */
#include "cuda_common.cuh"

static __device__ __forceinline__ uint16_t swiglu1(uint16_t g, uint16_t u) {
    float z = bf16_to_f32_dev(g);
    float s = round_bf16_dev(__fdiv_rn(z, __fadd_rn(1.0f, expf(-z))));
    return f32_to_bf16_dev(__fmul_rn(s, bf16_to_f32_dev(u)));
}

static __device__ __forceinline__ uint16_t add1(uint16_t a, uint16_t b) {
    return f32_to_bf16_dev(__fadd_rn(bf16_to_f32_dev(a), bf16_to_f32_dev(b)));
}

template <int OP> /* 0: swiglu(out, a=gate, b=up); 1: residual (out=x, a=x, b=y) */
static __global__ void ew_kernel(uint16_t *out, const uint16_t *a, const uint16_t *b, size_t n,
                                 int vec) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i0 = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (vec) {
        size_t nv = n / 8;
        for (size_t i = i0; i < nv; i += stride) {
            uint4 va = reinterpret_cast<const uint4 *>(a)[i];
            uint4 vb = reinterpret_cast<const uint4 *>(b)[i];
            const uint16_t *pa = reinterpret_cast<const uint16_t *>(&va);
            const uint16_t *pb = reinterpret_cast<const uint16_t *>(&vb);
            uint4 vo;
            uint16_t *po = reinterpret_cast<uint16_t *>(&vo);
#pragma unroll
            for (int k = 0; k < 8; k++) po[k] = OP == 0 ? swiglu1(pa[k], pb[k]) : add1(pa[k], pb[k]);
            reinterpret_cast<uint4 *>(out)[i] = vo;
        }
        for (size_t i = nv * 8 + i0; i < n; i += stride)
            out[i] = OP == 0 ? swiglu1(a[i], b[i]) : add1(a[i], b[i]);
    } else {
        for (size_t i = i0; i < n; i += stride)
            out[i] = OP == 0 ? swiglu1(a[i], b[i]) : add1(a[i], b[i]);
    }
}

static int aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

template <int OP>
static void ew_launch(uint16_t *out, const uint16_t *a, const uint16_t *b, size_t n, void *stream) {
    if (!n) return;
    int vec = aligned16(out) && aligned16(a) && aligned16(b);
    size_t work = vec ? CEIL_DIV(n, (size_t)8) : n;
    size_t blocks = CEIL_DIV(work, (size_t)256);
    if (blocks > 132 * 64) blocks = 132 * 64; /* grid-stride beyond ~64 blocks per SM */
    DS_LAUNCH(ew_kernel<OP>, (unsigned)blocks, 256, 0, stream, out, a, b, n, vec);
    CUDA_LAUNCH_CHECK();
}

extern "C" void swiglu_forward_cuda(uint16_t *out, const uint16_t *gate, const uint16_t *up, size_t n,
                                    void *stream) {
    ew_launch<0>(out, gate, up, n, stream);
}

extern "C" void residual_forward_cuda(uint16_t *x, const uint16_t *y, size_t n, void *stream) {
    ew_launch<1>(x, x, y, n, stream);
}
