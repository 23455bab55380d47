/*
 * quant_pack.cu - compressed-tensors "pack-quantized" dense bit packing;
 * bitwise twins of quant_pack_rows / quant_pack_cols (src/quant.h).
 * Element i of a row (or of a column, for zero-points packed along dim 0)
 * sits at global bit i*b as u = q - qmin (biased unsigned), lowest bits
 * first, possibly straddling two words; the last word is zero-padded.
 * One thread per output int32 word: it ORs in every element overlapping
 * bits [32w, 32w + 32) (64-bit shifts, so straddling elements just work).
 * quant_pack_cols_cuda takes int32 zero-points (gptq_quantize_cuda's zp
 * layout) where the CPU twin takes int8: same values.
 */
#include "cuda_common.cuh"

static __device__ __forceinline__ uint32_t pack_word(long long w, int bits, int n, int qmin,
                                                     const int8_t *q8, const int32_t *q32,
                                                     size_t stride) {
    const long long lo = 32 * w, hi = lo + 32; /* bit range of this word */
    long long i0 = lo / bits, i1 = (hi + bits - 1) / bits;
    if (i1 > n) i1 = n;
    uint64_t acc = 0;
    for (long long i = i0; i < i1; i++) {
        int qv = q8 ? (int)q8[(size_t)i * stride] : (int)q32[(size_t)i * stride];
        uint64_t u = (uint64_t)(uint32_t)(qv - qmin) & ((1u << bits) - 1u);
        long long pos = i * bits - lo;
        if (pos >= 0) acc |= u << pos;
        else acc |= u >> (-pos);
    }
    return (uint32_t)acc;
}

static __global__ void pack_rows_kernel(const int8_t *q, int rows, int cols, int bits, int words,
                                        int32_t *packed) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)rows * words) return;
    size_t r = t / words;
    int w = (int)(t % words);
    int qmin = -(1 << (bits - 1));
    packed[t] = (int32_t)pack_word(w, bits, cols, qmin, q + r * cols, NULL, 1);
}

static __global__ void pack_cols_kernel(const int32_t *zp, int rows, int g, int bits, int words,
                                        int32_t *packed) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)words * g) return;
    int w = (int)(t / g), c = (int)(t % g);
    int qmin = -(1 << (bits - 1));
    packed[t] = (int32_t)pack_word(w, bits, rows, qmin, NULL, zp + c, (size_t)g);
}

extern "C" void quant_pack_rows_cuda(const int8_t *q, int rows, int cols, int bits, int32_t *packed,
                                     void *stream) {
    DS_ASSERT(rows >= 0 && cols > 0 && bits >= 1 && bits <= 8);
    int words = (int)CEIL_DIV((long long)cols * bits, 32LL);
    size_t n = (size_t)rows * words;
    if (!n) return;
    pack_rows_kernel<<<(unsigned)CEIL_DIV(n, (size_t)256), 256, 0, DS_STREAM(stream)>>>(q, rows, cols, bits,
                                                                                        words, packed);
    CUDA_LAUNCH_CHECK();
}

extern "C" void quant_pack_cols_cuda(const int32_t *zp, int rows, int g, int bits, int32_t *packed,
                                     void *stream) {
    DS_ASSERT(rows > 0 && g >= 0 && bits >= 1 && bits <= 8);
    int words = (int)CEIL_DIV((long long)rows * bits, 32LL);
    size_t n = (size_t)words * g;
    if (!n) return;
    pack_cols_kernel<<<(unsigned)CEIL_DIV(n, (size_t)256), 256, 0, DS_STREAM(stream)>>>(zp, rows, g, bits,
                                                                                        words, packed);
    CUDA_LAUNCH_CHECK();
}
