/*
 * quant_pack.cu - compressed-tensors "pack-quantized" dense bit packing;
 * bitwise twins of quant_pack_rows / quant_pack_cols (src/quant.h).
 * Element i of a row (or of a column, for zero-points packed along dim 0)
 * sits at global bit i*b as u = q - qmin (biased unsigned), lowest bits
 * first, possibly straddling two words; the last word is zero-padded.
 * One thread per output int32 word: qs_pack_word (src/qscalar.h, the
 * host's code too) ORs in every element overlapping bits [32w, 32w + 32).
 * quant_pack_cols_cuda takes int32 zero-points (gptq_quantize_cuda's zp
 * layout) where the CPU twin takes int8: same values.
 */
#include "cuda_common.cuh"
#include "qscalar.h" /* qs_pack_word: the host's bit layout */

static __global__ void pack_rows_kernel(const int8_t *q, int rows, int cols, int bits, int words,
                                        int32_t *packed) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)rows * words) return;
    size_t r = t / words;
    int w = (int)(t % words);
    packed[t] = (int32_t)qs_pack_word(w, bits, cols, q + r * cols, NULL, 1);
}

static __global__ void pack_cols_kernel(const int32_t *zp, int rows, int g, int bits, int words,
                                        int32_t *packed) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)words * g) return;
    int w = (int)(t / g), c = (int)(t % g);
    packed[t] = (int32_t)qs_pack_word(w, bits, rows, NULL, zp + c, (size_t)g);
}

extern "C" void quant_pack_rows_cuda(const int8_t *q, int rows, int cols, int bits, int32_t *packed,
                                     void *stream) {
    DS_ASSERT(rows >= 0 && cols > 0 && bits >= 1 && bits <= 8);
    int words = qs_packed_words(cols, bits);
    size_t n = (size_t)rows * words;
    if (!n) return;
    DS_LAUNCH(pack_rows_kernel, (unsigned)CEIL_DIV(n, (size_t)256), 256, 0, stream,
              q, rows, cols, bits, words, packed);
    CUDA_LAUNCH_CHECK();
}

extern "C" void quant_pack_cols_cuda(const int32_t *zp, int rows, int g, int bits, int32_t *packed,
                                     void *stream) {
    DS_ASSERT(rows > 0 && g >= 0 && bits >= 1 && bits <= 8);
    int words = qs_packed_words(rows, bits);
    size_t n = (size_t)words * g;
    if (!n) return;
    DS_LAUNCH(pack_cols_kernel, (unsigned)CEIL_DIV(n, (size_t)256), 256, 0, stream,
              zp, rows, g, bits, words, packed);
    CUDA_LAUNCH_CHECK();
}
