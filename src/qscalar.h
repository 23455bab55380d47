/*
 * qscalar.h - the scalar math of the quantization schemes, one source for
 * the host (src/quant.c, src/scheme.c) and the device (cuda/gptq.cu,
 * cuda/quant_pack.cu): the integer range, finfo(dtype).eps, rounding to the
 * model dtype, calculate_qparams of one (row, group), fake quant, the code
 * compressed-tensors stores for a saved weight, and the pack-quantized bit
 * layout. Every function is `static inline`, and `__host__ __device__` under
 * nvcc (QS_FN). On the device each f32 op is a round-to-nearest intrinsic
 * (__fdiv_rn, ..., never contracted into an FMA), so host and device agree
 * bit for bit. Numerics and sources: src/quant.c's header comment.
 * A .cu includes this after cuda_common.cuh (which brings common.h).
 */
#ifndef DS_QSCALAR_H
#define DS_QSCALAR_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define QS_FN static inline __host__ __device__
#else
#include "common.h"
#define QS_FN static inline
#endif

#ifdef __CUDA_ARCH__
#define QS_ADD(a, b) __fadd_rn((a), (b))
#define QS_SUB(a, b) __fsub_rn((a), (b))
#define QS_MUL(a, b) __fmul_rn((a), (b))
#define QS_DIV(a, b) __fdiv_rn((a), (b))
#define QS_RINT(x) rintf(x)
#else
#define QS_ADD(a, b) ((a) + (b))
#define QS_SUB(a, b) ((a) - (b))
#define QS_MUL(a, b) ((a) * (b))
#define QS_DIV(a, b) ((a) / (b))
#define QS_RINT(x) nearbyintf(x) /* default FE_TONEAREST: half to even */
#endif

/* Integer range of a b-bit signed code: [-2^(b-1), 2^(b-1)-1]. */
QS_FN void qs_range(int bits, int *qmin, int *qmax) {
    *qmin = -(1 << (bits - 1));
    *qmax = (1 << (bits - 1)) - 1;
}

/* torch.finfo(dtype).eps: calculate_qparams' replacement for a zero scale. */
QS_FN float qs_dtype_eps(int dt) {
    if (dt == DS_DTYPE_BF16) return 0x1p-7f;
    if (dt == DS_DTYPE_F16) return 0x1p-10f;
    return 0x1p-23f;
}

/* Round x to the nearest value of dt (BF16/F16; F32: identity), as ds_round_to. */
QS_FN float qs_round_to(float x, int dt) {
#ifdef __CUDA_ARCH__
    if (dt == DS_DTYPE_BF16) {
        uint32_t u = __float_as_uint(x);
        if ((u & 0x7fffffffu) > 0x7f800000u) return __uint_as_float(0x7fc00000u);
        return __uint_as_float(((u + 0x7fffu + ((u >> 16) & 1u)) >> 16) << 16);
    }
    if (dt == DS_DTYPE_F16) return __half2float(__float2half_rn(x));
    return x;
#else
    return ds_round_to(x, (ds_dtype)dt);
#endif
}

/* calculate_qparams for one (row, group) with mn = min(amin, 0) and
 * mx = max(amax, 0): every op one f32 op rounded to dt (the observed
 * weight's dtype). sym: scale = absmax / ((qmax-qmin)/2), zp = 0; asym:
 * scale = (mx-mn)/(qmax-qmin), zp = round_half_even(clamp(qmin - mn/scale)),
 * an all-zero group's NaN zp -> 0 (torch's NaN.round().to(int8) on x86);
 * then a zero scale -> eps(dt) (zp computed before that fix). */
QS_FN void qs_qparams(int sym, float mn, float mx, int dt, int qmin, int qmax, float *scale, int *zp) {
    const float range = qs_round_to((float)(qmax - qmin), dt);
    float s;
    int z = 0;
    if (sym) {
        float absmax = fabsf(mn) > fabsf(mx) ? fabsf(mn) : fabsf(mx);
        float half = qs_round_to(QS_DIV(range, 2.0f), dt);
        s = qs_round_to(QS_DIV(absmax, half), dt);
    } else {
        s = qs_round_to(QS_DIV(qs_round_to(QS_SUB(mx, mn), dt), range), dt);
        float t = qs_round_to(QS_DIV(mn, s), dt); /* 0/0 = NaN for an all-zero group */
        float zf = qs_round_to(QS_SUB((float)qmin, t), dt);
        if (!isnan(zf)) {
            if (zf < (float)qmin) zf = (float)qmin;
            if (zf > (float)qmax) zf = (float)qmax;
            z = (int)QS_RINT(zf);
        }
    }
    if (s == 0.0f) s = qs_dtype_eps(dt);
    *scale = s;
    *zp = z;
}

/* Fake quant (_quantize_dequantize): q = round_half_even(clamp(x/scale + zp,
 * qmin, qmax)) in f32 (NaN -> 0); *deq = round_to(dt, (q - zp) * scale)
 * (the reference multiplies in the scale's dtype). Returns q. */
QS_FN int qs_fake(float x, float scale, int zp, int qmin, int qmax, int dt, float *deq) {
    float t = QS_DIV(x, scale);
    if (zp != 0) t = QS_ADD(t, (float)zp);
    if (t < (float)qmin) t = (float)qmin;
    if (t > (float)qmax) t = (float)qmax;
    int q = isnan(t) ? 0 : (int)QS_RINT(t);
    if (deq) *deq = qs_round_to(QS_MUL((float)(q - zp), scale), dt);
    return q;
}

/* The code the pack-quantized compressor stores for a saved model-dtype
 * weight x: quantize(x, scale, zp) with x/scale and + zp each rounded to dt,
 * then clamp and round half to even (NaN -> 0). */
QS_FN int qs_code_from_deq(float x, float scale, int zp, int qmin, int qmax, int dt) {
    float t = qs_round_to(QS_DIV(x, scale), dt);
    if (zp != 0) t = qs_round_to(QS_ADD(t, (float)zp), dt);
    if (t < (float)qmin) t = (float)qmin;
    if (t > (float)qmax) t = (float)qmax;
    return isnan(t) ? 0 : (int)QS_RINT(t);
}

/* The dequantized weight of a stored code: round_to(dt, (q - zp) * scale). */
QS_FN float qs_dequant(int q, int zp, float scale, int dt) {
    return qs_round_to(QS_MUL((float)(q - zp), scale), dt);
}

/* ---- float8_e4m3fn (torch.float8_e4m3fn; compressed-tensors FP8_E4M3_DATA) ----
 * 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities; S.1111.111 is
 * NaN; largest finite 448 (0x7e); subnormals m * 2^-9 (m = 1..7); the
 * smallest normal 2^-6. The cast rounds to nearest, ties to even (torch's
 * c10::detail::fp8e4m3fn_from_fp32_value) and, unlike torch, saturates at
 * +-448 (compressed-tensors clamps to [-448, 448] before every cast, so the
 * two agree on every value the schemes cast). NaN -> 0x7f | sign. */
#define QS_FP8_E4M3_MAX 448.0f

QS_FN unsigned qs_fp8_e4m3_bits(float x) {
    const unsigned sign = signbit(x) ? 0x80u : 0u;
    if (isnan(x)) return sign | 0x7fu;
    const float a = fabsf(x);
    if (a >= QS_FP8_E4M3_MAX) return sign | 0x7eu;
    if (a < 0x1p-6f) /* subnormal (and zero): m * 2^-9, m = 0..8 (8 is the smallest normal, bits 0x08) */
        return sign | (unsigned)QS_RINT(QS_MUL(a, 512.0f));
    int e;
    (void)frexpf(a, &e); /* a = f * 2^e, f in [0.5, 1): exponent E = e - 1 in [-6, 8] */
    int E = e - 1;
    float m = QS_RINT(ldexpf(a, 3 - E)); /* 8..16, exact scaling by a power of two */
    if (m >= 16.0f) { m = 8.0f; E++; }
    return sign | (unsigned)((E + 7) << 3) | (unsigned)((int)m - 8);
}

/* The value of float8_e4m3fn bits b (0..255). */
QS_FN float qs_fp8_e4m3_value(unsigned b) {
    const unsigned E = (b >> 3) & 15u, M = b & 7u;
    float v;
    if (E == 15u && M == 7u) v = NAN;
    else if (E == 0u) v = ldexpf((float)M, -9);
    else v = ldexpf((float)(8u + M), (int)E - 10);
    return (b & 0x80u) ? -v : v;
}

/* fp4 e2m1 and NVFP4's scales (src/qfp4.h; it includes this file first) */
#include "qfp4.h"

/* ---- the code kinds (quant_kind_t of src/quant.h: 0 int, 1 fp8, 2 fp4) ----
 * One entry per scheme kind; the int kind is the functions above, unchanged.
 * A code is an int: the integer q (QS_KIND_INT), the bit pattern (fp8:
 * 0..255) or the 4-bit e2m1 code (fp4: 0..15, bit 3 the sign). For fp4 the
 * scale is NVFP4's effective scale weight_scale / global_scale (f32). */
#define QS_KIND_INT 0
#define QS_KIND_FP8 1
#define QS_KIND_FP4 2

/* The value a code stands for (before zp and scale). */
QS_FN float qs_code_value(int kind, int q) {
    if (kind == QS_KIND_FP8) return qs_fp8_e4m3_value((unsigned)q & 0xffu);
    if (kind == QS_KIND_FP4) return qs_fp4_value(q);
    return (float)q;
}

/* Round the clamped t to a code of kind. */
QS_FN int qs_round_code(int kind, float t) {
    if (kind == QS_KIND_FP8) return (int)qs_fp8_e4m3_bits(t);
    if (kind == QS_KIND_FP4) return qs_fp4_code(qs_fp4_round(t));
    return isnan(t) ? 0 : (int)QS_RINT(t);
}

/* qs_fake for any kind: t = x/scale (+ zp) in f32, clamp to [qmin, qmax],
 * code = round_code(t); *deq = round_to(dt, (value(code) - zp) * scale).
 * fp4: *deq = value(code) * scale in f32, not rounded to dt (llm-compressor's
 * effective scale is f32: qs_nvfp4_fake). */
QS_FN int qs_fake_k(int kind, float x, float scale, int zp, int qmin, int qmax, int dt, float *deq) {
    if (kind == QS_KIND_INT) return qs_fake(x, scale, zp, qmin, qmax, dt, deq);
    if (kind == QS_KIND_FP4) return qs_fp4_code(qs_nvfp4_fake(x, scale, deq));
    float t = QS_DIV(x, scale);
    if (zp != 0) t = QS_ADD(t, (float)zp);
    if (t < (float)qmin) t = (float)qmin;
    if (t > (float)qmax) t = (float)qmax;
    int q = qs_round_code(kind, t);
    if (deq) *deq = qs_round_to(QS_MUL(QS_SUB(qs_code_value(kind, q), (float)zp), scale), dt);
    return q;
}

/* qs_code_from_deq for any kind (x/scale and + zp rounded to dt; fp4: x/scale
 * in f32, qs_nvfp4_code_from_deq). */
QS_FN int qs_code_from_deq_k(int kind, float x, float scale, int zp, int qmin, int qmax, int dt) {
    if (kind == QS_KIND_INT) return qs_code_from_deq(x, scale, zp, qmin, qmax, dt);
    if (kind == QS_KIND_FP4) return qs_nvfp4_code_from_deq(x, scale);
    float t = qs_round_to(QS_DIV(x, scale), dt);
    if (zp != 0) t = qs_round_to(QS_ADD(t, (float)zp), dt);
    if (t < (float)qmin) t = (float)qmin;
    if (t > (float)qmax) t = (float)qmax;
    return qs_round_code(kind, t);
}

/* qs_dequant for any kind. */
QS_FN float qs_dequant_k(int kind, int q, int zp, float scale, int dt) {
    if (kind == QS_KIND_INT) return qs_dequant(q, zp, scale, dt);
    return qs_round_to(QS_MUL(QS_SUB(qs_code_value(kind, q), (float)zp), scale), dt);
}

/* ---- pack-quantized bit layout (CT pack_to_int32) ----
 * Element i of a vector of n b-bit codes sits at global bit i*b as
 * u = q - qmin (biased unsigned), lowest bits first, possibly straddling two
 * int32 words; the last word is zero-padded. */

/* Words for n codes of b bits: ceil(n*b/32). */
QS_FN int qs_packed_words(int n, int bits) { return (int)(((int64_t)n * bits + 31) / 32); }

/* Word w of the packed vector: the codes overlapping bits [32w, 32w+32),
 * read from q8[i*stride] (or q32[i*stride] when q8 is NULL). */
QS_FN uint32_t qs_pack_word(int64_t w, int bits, int n, const int8_t *q8, const int32_t *q32, size_t stride) {
    const int64_t lo = 32 * w, hi = lo + 32;
    int64_t i0 = lo / bits, i1 = (hi + bits - 1) / bits;
    if (i1 > n) i1 = n;
    const int qmin = -(1 << (bits - 1));
    uint64_t acc = 0;
    for (int64_t i = i0; i < i1; i++) {
        int qv = q8 ? (int)q8[(size_t)i * stride] : (int)q32[(size_t)i * stride];
        uint64_t u = (uint64_t)((uint32_t)(qv - qmin) & ((1u << bits) - 1u));
        int64_t pos = i * bits - lo;
        if (pos >= 0) acc |= u << pos;
        else acc |= u >> (-pos);
    }
    return (uint32_t)acc;
}

/* Code i of a packed vector whose words are words[k*stride]. */
QS_FN int qs_unpack_one(const int32_t *words, size_t stride, int64_t i, int bits) {
    const uint64_t bit = (uint64_t)i * (uint64_t)bits;
    const size_t w = (size_t)(bit >> 5);
    const unsigned sh = (unsigned)(bit & 31u);
    uint32_t u = (uint32_t)words[w * stride] >> sh;
    if (sh + (unsigned)bits > 32u) u |= (uint32_t)words[(w + 1) * stride] << (32u - sh);
    return (int)(u & ((1u << bits) - 1u)) - (1 << (bits - 1));
}

#endif
