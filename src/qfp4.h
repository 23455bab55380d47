/*
 * qfp4.h - the scalar math of NVFP4 (FP4 e2m1 values in groups of 16 with an
 * float8_e4m3fn group scale and an f32 global scale), one source for the host
 * and the device like src/qscalar.h (QS_FN, round-to-nearest f32 ops):
 * the fp4 grid rounding, the 4-bit code and its value, the e4m3fn rounding of
 * a group scale, the global scale, the group scale, the effective scale and
 * fake quant, each in compressed-tensors' exact op order and dtypes.
 * Source: compressed-tensors 0.19.0 quantization/utils/fp4_utils.py
 * (cast_to_fp4), quantization/utils/helpers.py (calculate_qparams,
 * generate_gparam), lifecycle/forward_helpers.py (_quantize_dequantize,
 * _dequantize), compressors/nvfp4/ (pack_fp4_to_uint8, unpack_fp4_from_uint8,
 * decompress); llm-compressor 0.14 observers/base.py (get_global_scale),
 * gptq/helpers.py (column_scale_window: eff = scale / global_scale).
 * Goldens: tests/gen_nvfp4_golden.py -> tests/golden/nvfp4/ (tests/test_nvfp4.c).
 */
/* qscalar.h first, outside the guard: it includes this file part-way, after
 * qs_round_to and the float8_e4m3fn cast this file uses, before its code-kind
 * dispatch that uses this file. */
#include "qscalar.h"

#ifndef DS_QFP4_H
#define DS_QFP4_H

#define QS_FP4_MAX 6.0f    /* FP4_E2M1_DATA.max */
#define QS_FP8_MAX QS_FP8_E4M3_MAX /* FP8_E4M3_DATA.max */
#define QS_NVFP4_GROUP 16

/* x rounded to float8_e4m3fn and back (calculate_qparams' scale_dtype
 * rounding: clamp to [-448, 448], then torch's round-to-nearest-even cast,
 * subnormals on the 2^-9 grid below 2^-6): qscalar.h's qs_fp8_e4m3_bits.
 * NaN passes through. */
QS_FN float qs_fp8_e4m3_round(float x) { return qs_fp8_e4m3_value(qs_fp8_e4m3_bits(x)); }

/* CT cast_to_fp4 of a value already clamped to [-6, 6]: the nearest of
 * {0, .5, 1, 1.5, 2, 3, 4, 6}, ties to the even code (0.25 -> 0, 0.75 -> 1,
 * 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4), times sign(x): a nonzero
 * negative x that rounds to zero gives -0.0, x = -0.0 gives +0.0
 * (torch.sign(-0.0) = 0). NaN passes through. */
QS_FN float qs_fp4_round(float x) {
    if (isnan(x)) return x;
    float a = fabsf(x), r;
    if (a <= 0.25f) r = 0.0f;
    else if (a < 0.75f) r = 0.5f;
    else if (a <= 1.25f) r = 1.0f;
    else if (a < 1.75f) r = 1.5f;
    else if (a <= 2.5f) r = 2.0f;
    else if (a < 3.5f) r = 3.0f;
    else if (a <= 5.0f) r = 4.0f;
    else r = 6.0f;
    return x < 0.0f ? -r : r;
}

/* round_to_quantized_type_args for fp4: clamp to [-6, 6], then cast_to_fp4. */
QS_FN float qs_fp4_quant(float t) {
    if (t < -QS_FP4_MAX) t = -QS_FP4_MAX;
    if (t > QS_FP4_MAX) t = QS_FP4_MAX;
    return qs_fp4_round(t);
}

/* The 4-bit code pack_fp4_to_uint8 stores for an fp4 grid value v: bit 3 =
 * signbit(v) (so -0.0 is code 8), bits 0..2 = the magnitude's index in
 * {0, .5, 1, 1.5, 2, 3, 4, 6} (via (int8)(2|v|) as CT does; off-grid values
 * give what CT gives: 5 -> 0 (2|v| = 10 matches no index), > 6 -> 7). */
QS_FN int qs_fp4_code(float v) {
    int s = signbit(v) ? 8 : 0;
    int m = (int)fabsf(QS_MUL(v, 2.0f)); /* truncation, as .to(torch.int8) */
    int idx = m == 1 ? 1 : m == 2 ? 2 : m == 3 ? 3 : m == 4 ? 4 : m == 6 ? 5 : m == 8 ? 6 : m >= 12 ? 7 : 0;
    return idx | s;
}

/* The fp4 value of a 4-bit code (kE2M1ToFloat[c & 7], negated when bit 3). */
QS_FN float qs_fp4_value(int c) {
    const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    float m = mag[c & 7];
    return (c & 8) ? -m : m;
}

/* torch.finfo(dt).tiny: generate_gparam's lower clamp of the absmax. */
QS_FN float qs_dtype_tiny(int dt) { return dt == DS_DTYPE_F16 ? 0x1p-14f : 0x1p-126f; }

/* generate_gparam of a tensor (or fused group of tensors) whose absolute
 * maximum is absmax, a value of dt (the observed dtype): clamp(absmax,
 * min=tiny(dt)), then 448*6 / it as torch computes a Python scalar divided by
 * a tensor (Tensor.__rtruediv__ = reciprocal() * scalar, each op rounded to
 * dt: NOT the correctly rounded quotient, 1 ulp off for some values),
 * NaN/inf -> 1.0, as f32. An all-zero weight gets 1.0 (2688/tiny overflows). */
QS_FN float qs_nvfp4_global_scale(float absmax, int dt) {
    float m = absmax;
    if (!isnan(m) && m < qs_dtype_tiny(dt)) m = qs_dtype_tiny(dt);
    float g = qs_round_to(QS_MUL(qs_round_to(QS_DIV(1.0f, m), dt), QS_MUL(QS_FP8_MAX, QS_FP4_MAX)), dt);
    if (isnan(g) || isinf(g)) g = 1.0f;
    return g;
}

/* calculate_qparams of one group of 16 (symmetric fp4, scale_dtype fp8) with
 * absolute maximum absmax (a value of dt) and global scale gs: s =
 * round_dt(absmax / 6); s = gs * s in f32; rounded to e4m3fn
 * (qs_fp8_e4m3_round); a zero scale -> 0.125 (the eps CT uses for fp8).
 * The result is the weight_scale value (exact in e4m3fn, BF16, F16, F32). */
QS_FN float qs_nvfp4_group_scale(float absmax, float gs, int dt) {
    float s = qs_round_to(QS_DIV(absmax, QS_FP4_MAX), dt);
    s = qs_fp8_e4m3_round(QS_MUL(gs, s));
    if (s == 0.0f) s = 0.125f;
    return s;
}

/* The effective scale of a group: scale / global_scale in f32. */
QS_FN float qs_nvfp4_eff(float scale, float gs) { return QS_DIV(scale, gs); }

/* Fake quant with an effective scale eff (_quantize_dequantize): q =
 * fp4(clamp(x / eff, -6, 6)) in f32; returns q (an fp4 grid value, maybe
 * -0.0) and writes q * eff (f32, not rounded to the model dtype: GPTQ works
 * in f32, the forward rounds the result to the activation dtype) to *deq. */
QS_FN float qs_nvfp4_fake(float x, float eff, float *deq) {
    float q = qs_fp4_quant(QS_DIV(x, eff));
    if (deq) *deq = QS_MUL(q, eff);
    return q;
}

/* The 4-bit code the nvfp4-pack-quantized compressor stores for a saved
 * weight x (a model-dtype value): quantize() = fp4(clamp(x / eff)), eff =
 * scale / global_scale in f32, then pack_fp4_to_uint8's code. */
QS_FN int qs_nvfp4_code_from_deq(float x, float eff) { return qs_fp4_code(qs_fp4_quant(QS_DIV(x, eff))); }

/* The weight the compressor's decompress gives for code c: unpacked to bf16
 * (exact), times eff in f32, rounded to bf16 (dequantize(..., dtype=bf16),
 * whatever the model dtype), then to the model dtype dt when loaded. */
QS_FN float qs_nvfp4_dequant(int c, float eff, int dt) {
    float w = qs_round_to(QS_MUL(qs_fp4_value(c), eff), DS_DTYPE_BF16);
    return qs_round_to(w, dt);
}

#ifndef __CUDACC__ /* host loops over a module / an activation */

/* max |x[i]| over n values (0 for n = 0; NaN is skipped). */
static inline float qs_absmax(const float *x, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++)
        if (fabsf(x[i]) > m) m = fabsf(x[i]);
    return m;
}

/* NVFP4 weight qparams (llm-compressor's memoryless_minmax observer with a
 * TENSOR_GROUP global scale) of W [out, in] (in % 16 == 0, values of dt)
 * with global scale gs (qs_nvfp4_global_scale of the absmax of W or of its
 * fused group): eff[o, g] = group_scale(absmax of W[o, 16g:16g+16]) / gs,
 * eff [out, in/16]. */
static inline void qs_nvfp4_qparams(const float *W, int out, int in, int dt, float gs, float *eff) {
    const int ng = in / QS_NVFP4_GROUP;
    for (int o = 0; o < out; o++)
        for (int g = 0; g < ng; g++) {
            float am = qs_absmax(W + (size_t)o * in + (size_t)g * QS_NVFP4_GROUP, QS_NVFP4_GROUP);
            eff[(size_t)o * ng + g] = qs_nvfp4_eff(qs_nvfp4_group_scale(am, gs, dt), gs);
        }
}

/* NVFP4 input activations ("local" dynamic, compressed-tensors
 * forward_quantize): x [rows, in] (in % 16 == 0, values of the activation
 * dtype dt) fake-quantized in place with the module's static
 * input_global_scale gs: per row and group of 16, s = group_scale(absmax, gs,
 * dt) (from the current values), x = round_dt(fp4(clamp(x / (s/gs))) * (s/gs)). */
static inline void qs_nvfp4_act_qdq(float *x, size_t rows, int in, float gs, int dt) {
    const int ng = in / QS_NVFP4_GROUP;
    for (size_t r = 0; r < rows; r++)
        for (int g = 0; g < ng; g++) {
            float *v = x + r * (size_t)in + (size_t)g * QS_NVFP4_GROUP;
            const float eff = qs_nvfp4_eff(qs_nvfp4_group_scale(qs_absmax(v, QS_NVFP4_GROUP), gs, dt), gs);
            for (int j = 0; j < QS_NVFP4_GROUP; j++) {
                float d;
                (void)qs_nvfp4_fake(v[j], eff, &d);
                v[j] = qs_round_to(d, dt);
            }
        }
}

#endif

#endif
