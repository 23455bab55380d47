/*
 * scheme.c - the quantization schemes' one home (see scheme.h): the
 * compressed-tensors tensor table per format, its encoders and reader
 * checks, the on-disk codes of a GPTQ result, the dequantizing reader and
 * the quantization_config weights JSON. Scalar math: src/qscalar.h.
 * Source: compressed-tensors 0.19.0 compressors/pack_quantized/base.py
 * (compress_weight: weight_packed, weight_shape, weight_zero_point packed
 * along dim 0) and quantization/quant_args.py (the args' JSON).
 */
#include "scheme.h"
#include "qscalar.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#define DT_MODEL (-1) /* the model dtype (the reader: any of F32/BF16/F16) */

/* One row of a format's table. */
typedef struct ct_tensor {
    const char *suffix;
    int dtype;                                                  /* ds_dtype or DT_MODEL */
    int (*shape)(const quant_args *a, int out, int in, int64_t *shp); /* returns ndim */
    int (*present)(const quant_args *a);                        /* NULL: always */
    const char *absent;      /* the reader's "expected ..." when present() is 0 and it is stored */
    void (*encode)(const quant_args *a, const scheme_module *m, void *dst);
    /* reader: NULL = dtype and shape as above; else 0 ok, 1 dtype/shape, 2 value (want says) */
    int (*check)(const quant_args *a, int out, int in, const st_tensor *t, int check_values, char *want,
                 size_t cap);
    int optional;            /* the reader accepts its absence */
} ct_tensor;

/* ---- pack-quantized ---- */

static int sym(const quant_args *a) { return a->symmetric; }
static int asym(const quant_args *a) { return !sym(a); }
static int group_act(const quant_args *a) { return a->actorder == QA_GROUP; }

static int shape_packed(const quant_args *a, int out, int in, int64_t *s) {
    s[0] = out;
    s[1] = qs_packed_words(in, a->num_bits);
    return 2;
}
static int shape_scale(const quant_args *a, int out, int in, int64_t *s) {
    s[0] = out;
    s[1] = quant_num_groups(a, in);
    return 2;
}
static int shape_shape(const quant_args *a, int out, int in, int64_t *s) {
    (void)a; (void)out; (void)in;
    s[0] = 2;
    return 1;
}
static int shape_zp(const quant_args *a, int out, int in, int64_t *s) {
    s[0] = qs_packed_words(out, a->num_bits);
    s[1] = quant_num_groups(a, in);
    return 2;
}
static int shape_gidx(const quant_args *a, int out, int in, int64_t *s) {
    (void)a; (void)out;
    s[0] = in;
    return 1;
}

static void enc_packed(const quant_args *a, const scheme_module *m, void *dst) {
    quant_pack_rows(m->q, m->out, m->in, a->num_bits, dst);
}
static void enc_scale(const quant_args *a, const scheme_module *m, void *dst) {
    ds_convert_from_f32(dst, m->scale, m->dtype, (size_t)m->out * quant_num_groups(a, m->in));
}
static void enc_shape(const quant_args *a, const scheme_module *m, void *dst) {
    (void)a;
    int64_t shape[2] = {m->out, m->in};
    memcpy(dst, shape, sizeof shape);
}
static void enc_zp(const quant_args *a, const scheme_module *m, void *dst) {
    const size_t n = (size_t)m->out * quant_num_groups(a, m->in);
    int8_t *z8 = xmalloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) z8[i] = (int8_t)m->zp[i];
    quant_pack_cols(z8, m->out, quant_num_groups(a, m->in), a->num_bits, dst);
    free(z8);
}
static void enc_gidx(const quant_args *a, const scheme_module *m, void *dst) {
    (void)a;
    int32_t *gi = dst;
    for (int i = 0; i < m->in; i++) gi[i] = m->g_idx[i];
}

static int is_float_dtype(ds_dtype d) { return d == DS_DTYPE_F32 || d == DS_DTYPE_BF16 || d == DS_DTYPE_F16; }

/* t has dtype dt (DT_MODEL: F32/BF16/F16) and the given shape. */
static int tensor_is(const st_tensor *t, int dt, int ndim, const int64_t *s) {
    if (!t || (dt == DT_MODEL ? !is_float_dtype(t->dtype) : t->dtype != (ds_dtype)dt) || t->ndim != ndim)
        return 0;
    for (int d = 0; d < ndim; d++)
        if (t->shape[d] != s[d]) return 0;
    return 1;
}

static const char *want_dtype(int dt) { return dt == DT_MODEL ? "F32/BF16/F16" : ds_dtype_name((ds_dtype)dt); }

/* weight_scale: [out, groups] in any float dtype; strategy tensor: also one element. */
static int check_scale(const quant_args *a, int out, int in, const st_tensor *t, int check_values, char *want,
                       size_t cap) {
    (void)check_values;
    int64_t s[2];
    shape_scale(a, out, in, s);
    if (tensor_is(t, DT_MODEL, 2, s) || (a->strategy == QS_TENSOR && t && is_float_dtype(t->dtype) &&
                                          t->ndim >= 1 && t->ndim <= 2 && st_numel(t) == 1))
        return 0;
    snprintf(want, cap, "F32/BF16/F16 [%lld, %lld]", (long long)s[0], (long long)s[1]);
    return 1;
}

/* weight_shape: I64 (or I32) [2] = {out, in}. */
static int check_shape(const quant_args *a, int out, int in, const st_tensor *t, int check_values, char *want,
                       size_t cap) {
    (void)a; (void)check_values;
    const int64_t two[1] = {2};
    int64_t v[2] = {-1, -1};
    if (tensor_is(t, DS_DTYPE_I64, 1, two)) memcpy(v, t->data, sizeof v);
    else if (tensor_is(t, DS_DTYPE_I32, 1, two)) {
        int32_t v32[2];
        memcpy(v32, t->data, sizeof v32);
        v[0] = v32[0];
        v[1] = v32[1];
    }
    if (v[0] == out && v[1] == in) return 0;
    char got[64];
    snprintf(got, sizeof got, "{%lld, %lld}", (long long)v[0], (long long)v[1]);
    snprintf(want, cap, "I64 [2] = {%d, %d} (values %s)", out, in, v[0] < 0 ? "unreadable" : got);
    return 1;
}

/* weight_g_idx: I32 [in]; check_values: every value a scale group. */
static int check_gidx(const quant_args *a, int out, int in, const st_tensor *t, int check_values, char *want,
                      size_t cap) {
    (void)out;
    int64_t s[1] = {in};
    if (!tensor_is(t, DS_DTYPE_I32, 1, s)) {
        snprintf(want, cap, "I32 [%d]", in);
        return 1;
    }
    const int ng = quant_num_groups(a, in);
    for (int i = 0; check_values && i < in; i++) {
        int32_t g;
        memcpy(&g, (const char *)t->data + sizeof g * (size_t)i, sizeof g);
        if (g < 0 || g >= ng) {
            snprintf(want, cap, "element [%d] = %d is outside [0, %d) (the weight_scale groups)", i, (int)g, ng);
            return 2;
        }
    }
    return 0;
}

static const ct_tensor pack_quantized[] = {
    {"weight_packed", DS_DTYPE_I32, shape_packed, NULL, NULL, enc_packed, NULL, 0},
    {"weight_scale", DT_MODEL, shape_scale, NULL, NULL, enc_scale, check_scale, 0},
    {"weight_shape", DS_DTYPE_I64, shape_shape, NULL, NULL, enc_shape, check_shape, 1},
    {"weight_zero_point", DS_DTYPE_I32, shape_zp, asym, "no zero point (symmetric)", enc_zp, NULL, 0},
    {"weight_g_idx", DS_DTYPE_I32, shape_gidx, group_act, "no g_idx (actorder is not \"group\")", enc_gidx,
     check_gidx, 0},
};

/* ---- float-quantized (compressed-tensors compressors/float_quantized:
 * FP8 / FP8_DYNAMIC / FP8_BLOCK) ----
 *   weight        F8_E4M3 [out, in]                        always (the e4m3 codes)
 *   weight_scale  model dtype: tensor [1], channel [out, 1], group [out, in/gs],
 *                 block [ceil(out/b0), ceil(in/b1)]        always
 *   input_scale   model dtype [1]                          iff static input activations (FP8) */

static int shape_fp8(const quant_args *a, int out, int in, int64_t *s) {
    (void)a;
    s[0] = out;
    s[1] = in;
    return 2;
}
static int shape_fscale(const quant_args *a, int out, int in, int64_t *s) {
    switch (a->strategy) {
    case QS_TENSOR: s[0] = 1; return 1;
    case QS_BLOCK:
        s[0] = (out + a->block[0] - 1) / a->block[0];
        s[1] = quant_num_groups(a, in);
        return 2;
    default: s[0] = out; s[1] = quant_num_groups(a, in); return 2;
    }
}
static int shape_one(const quant_args *a, int out, int in, int64_t *s) {
    (void)a; (void)out; (void)in;
    s[0] = 1;
    return 1;
}
static int has_input_scale(const quant_args *a) { return a->act == QACT_INPUT_SCALE; }

static void enc_fp8(const quant_args *a, const scheme_module *m, void *dst) {
    (void)a;
    memcpy(dst, m->q, (size_t)m->out * m->in); /* codes are the e4m3 bit patterns */
}
/* weight_scale from the in-memory [out, groups] scales (block: row r0 of each block row). */
static void enc_fscale(const quant_args *a, const scheme_module *m, void *dst) {
    const int ng = quant_num_groups(a, m->in);
    int64_t s[2] = {1, 1};
    int nd = shape_fscale(a, m->out, m->in, s);
    const size_t rows = (size_t)s[0], cols = nd == 2 ? (size_t)s[1] : 1;
    const int rstep = a->strategy == QS_BLOCK ? a->block[0] : 1;
    float *tmp = xmalloc(sizeof(float) * rows * cols);
    for (size_t r = 0; r < rows; r++)
        for (size_t g = 0; g < cols; g++) tmp[r * cols + g] = m->scale[r * rstep * ng + g];
    ds_convert_from_f32(dst, tmp, m->dtype, rows * cols);
    free(tmp);
}
static void enc_input_scale(const quant_args *a, const scheme_module *m, void *dst) {
    (void)a;
    DS_ASSERT(m->act_scale);
    ds_convert_from_f32(dst, m->act_scale, m->dtype, 1);
}
/* weight_scale: the table's shape in any float dtype (tensor: any 1-element shape). */
static int check_fscale(const quant_args *a, int out, int in, const st_tensor *t, int check_values, char *want,
                        size_t cap) {
    (void)check_values;
    int64_t s[2] = {1, 1};
    int nd = shape_fscale(a, out, in, s);
    if (tensor_is(t, DT_MODEL, nd, s) || (a->strategy == QS_TENSOR && t && is_float_dtype(t->dtype) &&
                                           t->ndim <= 2 && st_numel(t) == 1))
        return 0;
    if (nd == 1) snprintf(want, cap, "F32/BF16/F16 [%lld]", (long long)s[0]);
    else snprintf(want, cap, "F32/BF16/F16 [%lld, %lld]", (long long)s[0], (long long)s[1]);
    return 1;
}
static int check_input_scale(const quant_args *a, int out, int in, const st_tensor *t, int check_values,
                             char *want, size_t cap) {
    (void)a; (void)out; (void)in; (void)check_values;
    if (t && is_float_dtype(t->dtype) && t->ndim <= 1 && st_numel(t) == 1) return 0;
    snprintf(want, cap, "F32/BF16/F16 [1]");
    return 1;
}

static const ct_tensor float_quantized[] = {
    {"weight", DS_DTYPE_F8_E4M3, shape_fp8, NULL, NULL, enc_fp8, NULL, 0},
    {"weight_scale", DT_MODEL, shape_fscale, NULL, NULL, enc_fscale, check_fscale, 0},
    {"input_scale", DT_MODEL, shape_one, has_input_scale, "no input_scale (input activations are not static)",
     enc_input_scale, check_input_scale, 0},
};

/* ---- int-quantized (compressed-tensors compressors/naive_quantized
 * IntQuantizationCompressor: INT weights whose scheme has input_activations,
 * W8A8; NaiveQuantizationCompressor.compress stores quantize(weight) as
 * int8, unpacked, and drops a symmetric zero point) ----
 *   weight             I8 [out, in]                always (the int codes)
 *   weight_scale       model dtype [out, groups]   always (W8A8 channel: [out, 1])
 *   weight_zero_point  I8 [out, groups]            iff asymmetric
 *   input_scale        model dtype [1]             iff static int8 tensor activations
 *                                                  (no input_zero_point: symmetric,
 *                                                  _remove_symmetric_zp drops it) */

static int shape_int8(const quant_args *a, int out, int in, int64_t *s) {
    (void)a;
    s[0] = out;
    s[1] = in;
    return 2;
}
static void enc_int8(const quant_args *a, const scheme_module *m, void *dst) {
    (void)a;
    memcpy(dst, m->q, (size_t)m->out * m->in);
}
static void enc_zp8(const quant_args *a, const scheme_module *m, void *dst) {
    int8_t *z = dst;
    const size_t n = (size_t)m->out * quant_num_groups(a, m->in);
    for (size_t i = 0; i < n; i++) z[i] = (int8_t)m->zp[i];
}

static const ct_tensor int_quantized[] = {
    {"weight", DS_DTYPE_I8, shape_int8, NULL, NULL, enc_int8, NULL, 0},
    {"weight_scale", DT_MODEL, shape_scale, NULL, NULL, enc_scale, check_scale, 0},
    {"weight_zero_point", DS_DTYPE_I8, shape_scale, asym, "no zero point (symmetric)", enc_zp8, NULL, 0},
    {"input_scale", DT_MODEL, shape_one, has_input_scale, "no input_scale (input activations are not static)",
     enc_input_scale, check_input_scale, 0},
};

/* ---- nvfp4-pack-quantized (compressed-tensors compressors/nvfp4: NVFP4A16, NVFP4) ----
 *   weight_packed        U8 [out, in/2]        always (4-bit e2m1 codes, element 2k low nibble)
 *   weight_scale         F8_E4M3 [out, in/16]  always (scale = eff * global_scale, exact)
 *   weight_global_scale  F32 [1]               always (448*6/absmax, fused q/k/v and gate/up)
 *   input_global_scale   F32 [1]               iff NVFP4 (static_minmax input observer)
 * In memory the scale [out, in/16] is the effective scale weight_scale / weight_global_scale
 * (what the fake quant divides by); src/qfp4.h has the math. */

static int shape_fp4_packed(const quant_args *a, int out, int in, int64_t *s) {
    (void)a;
    s[0] = out;
    s[1] = in / 2;
    return 2;
}
static int shape_nvscale(const quant_args *a, int out, int in, int64_t *s) {
    s[0] = out;
    s[1] = quant_num_groups(a, in);
    return 2;
}
static int has_input_global_scale(const quant_args *a) { return a->act == QACT_INPUT_GLOBAL_SCALE; }

static void enc_fp4_packed(const quant_args *a, const scheme_module *m, void *dst) {
    (void)a;
    unsigned char *d = dst;
    const size_t n = (size_t)m->out * m->in;
    for (size_t k = 0; k + 1 < n; k += 2) d[k / 2] = (unsigned char)((m->q[k] & 15) | ((m->q[k + 1] & 15) << 4));
}
static void enc_nvscale(const quant_args *a, const scheme_module *m, void *dst) {
    DS_ASSERT(m->global_scale);
    unsigned char *d = dst;
    const size_t n = (size_t)m->out * quant_num_groups(a, m->in);
    for (size_t k = 0; k < n; k++) /* weight_scale = fp8(eff * gs): exact (fp8 has 4 significant bits) */
        d[k] = (unsigned char)qs_fp8_e4m3_bits(QS_MUL(m->scale[k], *m->global_scale));
}
static void enc_wgs(const quant_args *a, const scheme_module *m, void *dst) {
    (void)a;
    DS_ASSERT(m->global_scale);
    memcpy(dst, m->global_scale, sizeof(float));
}
static void enc_igs(const quant_args *a, const scheme_module *m, void *dst) {
    (void)a;
    DS_ASSERT(m->act_scale);
    memcpy(dst, m->act_scale, sizeof(float));
}

static const ct_tensor nvfp4_pack_quantized[] = {
    {"weight_packed", DS_DTYPE_U8, shape_fp4_packed, NULL, NULL, enc_fp4_packed, NULL, 0},
    {"weight_scale", DS_DTYPE_F8_E4M3, shape_nvscale, NULL, NULL, enc_nvscale, NULL, 0},
    {"weight_global_scale", DS_DTYPE_F32, shape_one, NULL, NULL, enc_wgs, NULL, 0},
    {"input_global_scale", DS_DTYPE_F32, shape_one, has_input_global_scale,
     "no input_global_scale (input activations are not NVFP4)", enc_igs, NULL, 0},
};

/* Dequantizers: W [out, in] from the stored tensors (entry order) and the
 * weight_scale as f32 (srow: its row stride, 0 = one scale). */
typedef void (*dequant_fn)(const quant_args *a, ds_dtype dt, int out, int in, const st_tensor *const *stored,
                           const float *scale, size_t srow, float *w);
static void dequant_packed(const quant_args *a, ds_dtype dt, int out, int in, const st_tensor *const *stored,
                           const float *scale, size_t srow, float *w);
static void dequant_fp8(const quant_args *a, ds_dtype dt, int out, int in, const st_tensor *const *stored,
                        const float *scale, size_t srow, float *w);
static void dequant_int8(const quant_args *a, ds_dtype dt, int out, int in, const st_tensor *const *stored,
                         const float *scale, size_t srow, float *w);
static void dequant_nvfp4(const quant_args *a, ds_dtype dt, int out, int in, const st_tensor *const *stored,
                          const float *scale, size_t srow, float *w);

/* One compressed-tensors format: its name, the args it takes, its tensor
 * table and its dequantizer. A new format is a new row here. */
typedef struct ct_format {
    const char *name;
    int (*accepts)(const quant_args *a);
    const ct_tensor *t;
    int nt;
    dequant_fn dequantize;
} ct_format;

static int int_weights(const quant_args *a) {
    return a->type == QT_INT && a->num_bits >= 1 && a->num_bits <= 8 && a->act == QACT_NONE &&
           (a->strategy == QS_TENSOR || a->strategy == QS_CHANNEL || a->strategy == QS_GROUP);
}
static int fp8_any(const quant_args *a) {
    return a->type == QT_FLOAT && a->num_bits == 8 && a->symmetric &&
           (a->strategy == QS_TENSOR || a->strategy == QS_CHANNEL || a->strategy == QS_GROUP ||
            a->strategy == QS_BLOCK);
}
/* CT FloatQuantizationCompressor.can_compress: FLOAT weights *and*
 * input_activations (FP8, FP8_DYNAMIC, FP8_BLOCK). */
static int fp8_weights(const quant_args *a) {
    return fp8_any(a) && (a->act == QACT_DYNAMIC || a->act == QACT_INPUT_SCALE);
}
/* fp8 weight-only: no float-quantized (it needs input_activations) and no
 * pack-quantized (INT only), so compressed-tensors' priority list
 * (compressors/format.py COMPRESSION_FORMAT_PRIORITY) ends at its fallback,
 * NaiveQuantizationCompressor: "naive-quantized", the same tensors. */
static int fp8_weight_only(const quant_args *a) { return fp8_any(a) && a->act == QACT_NONE; }

/* INT weights with input activations (W8A8, W4A8, ...; dynamic, or static
 * per-tensor with an input_scale): int-quantized (compressed-tensors picks it
 * before pack-quantized whenever the scheme has input_activations and INT
 * weights). */
static int int_act_weights(const quant_args *a) {
    return a->type == QT_INT && a->num_bits >= 1 && a->num_bits <= 8 &&
           (a->act == QACT_DYNAMIC || a->act == QACT_INPUT_SCALE) &&
           a->actorder != QA_GROUP && /* no weight_g_idx in the naive compressor */
           (a->strategy == QS_TENSOR || a->strategy == QS_CHANNEL || a->strategy == QS_GROUP);
}

/* CT NVFP4PackedCompressor.can_compress: float, 4 bits, group_size 16
 * (strategy tensor_group). A static per-tensor input_scale (fp8 or int8
 * activations) has no row in the table below, so such a scheme is refused
 * rather than written without its scale. */
static int nvfp4_weights(const quant_args *a) {
    return a->type == QT_FLOAT && a->num_bits == 4 && a->group_size == 16 && a->strategy == QS_TENSOR_GROUP &&
           a->symmetric && a->act != QACT_INPUT_SCALE;
}

static const ct_format formats[] = {
    {"pack-quantized", int_weights, pack_quantized, (int)DS_ARRAY_LEN(pack_quantized), dequant_packed},
    {"float-quantized", fp8_weights, float_quantized, (int)DS_ARRAY_LEN(float_quantized), dequant_fp8},
    {"int-quantized", int_act_weights, int_quantized, (int)DS_ARRAY_LEN(int_quantized), dequant_int8},
    {"nvfp4-pack-quantized", nvfp4_weights, nvfp4_pack_quantized, (int)DS_ARRAY_LEN(nvfp4_pack_quantized),
     dequant_nvfp4},
    {"naive-quantized", fp8_weight_only, float_quantized, (int)DS_ARRAY_LEN(float_quantized), dequant_fp8},
};

static const ct_format *format_of(const quant_args *a) {
    for (size_t i = 0; i < DS_ARRAY_LEN(formats); i++)
        if (formats[i].accepts(a)) return &formats[i];
    return NULL;
}

const char *scheme_format_name(const quant_args *a) {
    const ct_format *f = format_of(a);
    return f ? f->name : NULL;
}

int scheme_format_known(const char *name) {
    for (size_t i = 0; i < DS_ARRAY_LEN(formats); i++)
        if (!strcmp(formats[i].name, name)) return 1;
    return 0;
}

const char *scheme_format_list(void) {
    static char buf[256];
    size_t n = 0;
    buf[0] = 0;
    for (size_t i = 0; i < DS_ARRAY_LEN(formats); i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", n ? ", " : "", formats[i].name);
    return buf;
}

/* ---- input activations (compressed-tensors lifecycle/forward.py
 * forward_quantize as transformers applies it to a loaded checkpoint) ---- */

/* Fake-quantize rows x n of X in place: one scale per row (token), per
 * group of group_size columns (dynamic group) or one given scale (static
 * tensor). Numerics of the reference in the activation dtype dt: dynamic
 * scales = calculate_qparams(amin, amax) (qs_qparams: absmax / qmax, eps),
 * code = round(clamp(round_dt(x / scale))) of the args' kind, x :=
 * round_dt(value(code) * scale). */
static void act_fake_minmax(const quant_args *in, const float *input_scale, float *X, int rows, int n, ds_dtype dt) {
    int qmin, qmax;
    quant_range(in, &qmin, &qmax);
    const int kind = (int)quant_kind(in);
    const int gs = in->strategy == QS_GROUP ? in->group_size : n;
    for (int r = 0; r < rows; r++) {
        float *x = X + (size_t)r * n;
        for (int c0 = 0; c0 < n; c0 += gs) {
            const int c1 = DS_MIN(n, c0 + gs);
            float s;
            if (input_scale) {
                s = *input_scale;
            } else {
                float mn = 0.0f, mx = 0.0f;
                int z;
                for (int c = c0; c < c1; c++) {
                    if (x[c] < mn) mn = x[c];
                    if (x[c] > mx) mx = x[c];
                }
                qs_qparams(in->symmetric, mn, mx, (int)dt, qmin, qmax, &s, &z);
            }
            for (int c = c0; c < c1; c++)
                x[c] = qs_dequant_k(kind, qs_code_from_deq_k(kind, x[c], s, 0, qmin, qmax, (int)dt), 0, s, (int)dt);
        }
    }
}

static int act_fp8_static_tensor(const quant_args *in) {
    return in->type == QT_FLOAT && in->num_bits == 8 && in->symmetric && in->strategy == QS_TENSOR &&
           in->dynamic == QD_STATIC;
}
static int act_fp8_dynamic_token(const quant_args *in) {
    return in->type == QT_FLOAT && in->num_bits == 8 && in->symmetric && in->strategy == QS_TOKEN &&
           in->dynamic == QD_DYNAMIC;
}
static int act_fp8_dynamic_group(const quant_args *in) {
    return in->type == QT_FLOAT && in->num_bits == 8 && in->symmetric && in->strategy == QS_GROUP &&
           in->dynamic == QD_DYNAMIC && in->group_size > 0;
}
static int act_int8_dynamic_token(const quant_args *in) {
    return in->type == QT_INT && in->num_bits == 8 && in->symmetric && in->strategy == QS_TOKEN &&
           in->dynamic == QD_DYNAMIC;
}
/* Static int8 per-tensor (symmetric): input_scale = max|x| / 127.5 calibrated
 * (qs_qparams, bit range 255), x -> round_half_even(clamp(x / s, -128, 127)) * s. */
static int act_int8_static_tensor(const quant_args *in) {
    return in->type == QT_INT && in->num_bits == 8 && in->symmetric && in->strategy == QS_TENSOR &&
           in->dynamic == QD_STATIC;
}

/* NVFP4 input activations: fp4 tensor_group 16, dynamic "local" (per-token
 * group scales from the current values, the static input_global_scale). */
static int act_nvfp4_local(const quant_args *in) {
    return in->type == QT_FLOAT && in->num_bits == 4 && in->symmetric && in->strategy == QS_TENSOR_GROUP &&
           in->group_size == QS_NVFP4_GROUP && in->dynamic == QD_LOCAL;
}
/* input_scale: the module's input_global_scale (NULL: 1, never used by a loaded checkpoint). */
static void act_fake_nvfp4(const quant_args *in, const float *input_scale, float *X, int rows, int n, ds_dtype dt) {
    (void)in;
    qs_nvfp4_act_qdq(X, (size_t)rows, n, input_scale ? *input_scale : 1.0f, (int)dt);
}

/* One supported input-activation scheme: its description, the args it
 * takes, what it needs calibrated (observer), and its fake quant in the
 * forward. A new activation scheme is a new row. */
typedef struct ct_act {
    const char *desc;
    int (*accepts)(const quant_args *in);
    void (*fake)(const quant_args *in, const float *input_scale, float *X, int rows, int n, ds_dtype dt);
} ct_act;

static const ct_act acts[] = {
    {"float 8 static tensor (FP8)", act_fp8_static_tensor, act_fake_minmax},
    {"float 8 dynamic token (FP8_DYNAMIC)", act_fp8_dynamic_token, act_fake_minmax},
    {"float 8 dynamic group (FP8_BLOCK)", act_fp8_dynamic_group, act_fake_minmax},
    {"int 8 dynamic token (W8A8)", act_int8_dynamic_token, act_fake_minmax},
    {"int 8 static tensor, symmetric (W8A8 static)", act_int8_static_tensor, act_fake_minmax},
    {"float 4 tensor_group 16 local (NVFP4)", act_nvfp4_local, act_fake_nvfp4},
};

static const ct_act *act_of(const quant_args *in) {
    for (size_t i = 0; i < DS_ARRAY_LEN(acts); i++)
        if (acts[i].accepts(in)) return &acts[i];
    return NULL;
}

int scheme_act_supported(const quant_args *in) { return act_of(in) != NULL; }

const char *scheme_act_supported_list(void) {
    static char buf[512];
    size_t n = 0;
    buf[0] = 0;
    for (size_t i = 0; i < DS_ARRAY_LEN(acts); i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", n ? ", " : "", acts[i].desc);
    return buf;
}

void scheme_act_fake(const quant_args *in, const float *input_scale, float *X, int rows, int n, ds_dtype dt) {
    const ct_act *a = act_of(in);
    DS_ASSERT(a);
    a->fake(in, input_scale, X, rows, n, dt);
}

/* ---- planner and writer ---- */

int scheme_tensors(const quant_args *a, ds_dtype dt, int out, int in, scheme_tensor_spec *specs) {
    const ct_format *f = format_of(a);
    int n = 0;
    for (int k = 0; f && k < f->nt; k++) {
        const ct_tensor *e = &f->t[k];
        if (e->present && !e->present(a)) continue;
        scheme_tensor_spec *s = &specs[n++];
        s->suffix = e->suffix;
        s->dtype = e->dtype == DT_MODEL ? dt : (ds_dtype)e->dtype;
        s->shape[1] = 1;
        s->ndim = e->shape(a, out, in, s->shape);
        s->nbytes = ds_dtype_size(s->dtype) * (size_t)s->shape[0] * (size_t)(s->ndim == 2 ? s->shape[1] : 1);
    }
    return n;
}

void scheme_encode(const quant_args *a, int k, const scheme_module *m, void *dst) {
    const ct_format *f = format_of(a);
    DS_ASSERT(f);
    for (int i = 0, n = 0; i < f->nt; i++) {
        const ct_tensor *e = &f->t[i];
        if (e->present && !e->present(a)) continue;
        if (n++ == k) {
            e->encode(a, m, dst);
            return;
        }
    }
    DS_ASSERT(!"scheme_encode: no such tensor");
}

int scheme_is_module_tensor(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    for (size_t i = 0; i < DS_ARRAY_LEN(formats); i++)
        for (int k = 0; k < formats[i].nt; k++)
            if (strcmp(formats[i].t[k].suffix, "weight") != 0 && /* every Linear has one: see scheme_writes_weight */
                strcmp(dot + 1, formats[i].t[k].suffix) == 0)
                return 1;
    return 0;
}

int scheme_writes_weight(const quant_args *a) {
    const ct_format *f = format_of(a);
    for (int k = 0; f && k < f->nt; k++)
        if (!strcmp(f->t[k].suffix, "weight")) return 1;
    return 0;
}

/* ---- reader ---- */

int scheme_read_entries(const quant_args *a) {
    const ct_format *f = format_of(a);
    return f ? f->nt : 0;
}

const char *scheme_read_suffix(const quant_args *a, int k) {
    const ct_format *f = format_of(a);
    DS_ASSERT(f && k >= 0 && k < f->nt);
    return f->t[k].suffix;
}

int scheme_read_check(const quant_args *a, int k, int out, int in, const st_tensor *t, int check_values,
                      char *want, size_t cap) {
    const ct_format *f = format_of(a);
    DS_ASSERT(f && k >= 0 && k < f->nt);
    const ct_tensor *e = &f->t[k];
    if (e->present && !e->present(a)) {
        if (!t) return 0;
        snprintf(want, cap, "%s", e->absent);
        return 1;
    }
    if (!t && e->optional) return 0;
    if (e->check) return e->check(a, out, in, t, check_values, want, cap);
    int64_t s[2] = {0, 0};
    int nd = e->shape(a, out, in, s);
    if (tensor_is(t, e->dtype, nd, s)) return 0;
    if (nd == 1) snprintf(want, cap, "%s [%lld]", want_dtype(e->dtype), (long long)s[0]);
    else snprintf(want, cap, "%s [%lld, %lld]", want_dtype(e->dtype), (long long)s[0], (long long)s[1]);
    return 1;
}

/* Entry index of `suffix` in a's format (-1: none). */
static int entry_of(const ct_format *f, const char *suffix) {
    for (int k = 0; k < f->nt; k++)
        if (strcmp(f->t[k].suffix, suffix) == 0) return k;
    return -1;
}

/* A copy of a (possibly unaligned) stored tensor's int32 data. */
static int32_t *i32_copy(const st_tensor *t) {
    int32_t *p = xmalloc(t->nbytes ? t->nbytes : 1);
    memcpy(p, t->data, t->nbytes);
    return p;
}

void scheme_dequantize(const quant_args *a, ds_dtype dt, int out, int in, const st_tensor *const *stored,
                       const float *scale, size_t srow, float *w) {
    const ct_format *f = format_of(a);
    DS_ASSERT(f);
    f->dequantize(a, dt, out, in, stored, scale, srow, w);
}

/* nvfp4-pack-quantized: W[o, i] = round_dt(round_bf16(fp4(code) * (scale[o, i/16] / global_scale)))
 * (compressed-tensors' decompress dequantizes to bf16 whatever the model dtype). */
static void dequant_nvfp4(const quant_args *a, ds_dtype dt, int out, int in, const st_tensor *const *stored,
                          const float *scale, size_t srow, float *w) {
    const ct_format *f = format_of(a);
    const unsigned char *p = stored[entry_of(f, "weight_packed")]->data;
    float gs;
    memcpy(&gs, stored[entry_of(f, "weight_global_scale")]->data, sizeof gs);
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            const size_t e = (size_t)o * in + i;
            const int c = (p[e / 2] >> (4 * (e & 1))) & 15;
            w[e] = qs_nvfp4_dequant(c, qs_nvfp4_eff(scale[(size_t)o * srow + i / QS_NVFP4_GROUP], gs), (int)dt);
        }
}

/* float-quantized: W[o, i] = round_dt(fp8(q) * scale[o / b0 (block) or o, g(i)]). */
static void dequant_fp8(const quant_args *a, ds_dtype dt, int out, int in, const st_tensor *const *stored,
                        const float *scale, size_t srow, float *w) {
    const ct_format *f = format_of(a);
    const st_tensor *q = stored[entry_of(f, "weight")];
    const unsigned char *qb = q->data;
    const int br = a->strategy == QS_BLOCK ? a->block[0] : 1;
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            int g = scheme_column_group(a, NULL, i);
            w[(size_t)o * in + i] = qs_dequant_k(QS_KIND_FP8, qb[(size_t)o * in + i], 0,
                                                 scale[(size_t)(o / br) * srow + g], (int)dt);
        }
}

/* int-quantized: W[o, i] = round_dt((q - zp) * scale[o, g(i)]) (CT dequantize:
 * q and zp cast to the scale's dtype, subtracted, multiplied). */
static void dequant_int8(const quant_args *a, ds_dtype dt, int out, int in, const st_tensor *const *stored,
                         const float *scale, size_t srow, float *w) {
    const ct_format *f = format_of(a);
    const int8_t *q = stored[entry_of(f, "weight")]->data;
    const st_tensor *z = stored[entry_of(f, "weight_zero_point")];
    const int8_t *zp = z && !a->symmetric ? z->data : NULL;
    const int ng = quant_num_groups(a, in);
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            const int g = scheme_column_group(a, NULL, i);
            w[(size_t)o * in + i] = qs_dequant(q[(size_t)o * in + i], zp ? zp[(size_t)o * ng + g] : 0,
                                               scale[(size_t)o * srow + g], (int)dt);
        }
}

static void dequant_packed(const quant_args *a, ds_dtype dt, int out, int in, const st_tensor *const *stored,
                           const float *scale, size_t srow, float *w) {
    const ct_format *f = format_of(a);
    const int bits = a->num_bits, ng = quant_num_groups(a, in);
    const st_tensor *p = stored[entry_of(f, "weight_packed")];
    const st_tensor *z = stored[entry_of(f, "weight_zero_point")];
    const st_tensor *gi = stored[entry_of(f, "weight_g_idx")];
    int8_t *q = xmalloc((size_t)out * in);
    int32_t *packed = i32_copy(p);
    quant_unpack_rows(packed, out, in, bits, q);
    free(packed);
    int8_t *zp = NULL;
    int32_t *gidx = NULL;
    if (z && !a->symmetric) {
        int32_t *zpk = i32_copy(z);
        zp = xmalloc((size_t)out * ng);
        quant_unpack_cols(zpk, out, ng, bits, zp);
        free(zpk);
    }
    if (gi && a->actorder == QA_GROUP) gidx = i32_copy(gi);
    for (int o = 0; o < out; o++) {
        float *row = w + (size_t)o * in;
        for (int i = 0; i < in; i++) {
            int g = scheme_column_group(a, gidx, i);
            int zz = zp ? zp[(size_t)o * ng + g] : 0;
            row[i] = qs_dequant(q[(size_t)o * in + i], zz, scale[(size_t)o * srow + g], (int)dt);
        }
    }
    free(q); free(zp); free(gidx);
}

/* ---- codes ---- */

int scheme_column_group(const quant_args *a, const int *g_idx, int col) {
    if (a->strategy == QS_BLOCK) return col / a->block[1];
    if (a->strategy == QS_TENSOR_GROUP) return col / a->group_size;
    if (a->strategy != QS_GROUP) return 0;
    if (a->actorder == QA_GROUP && g_idx) return g_idx[col];
    return col / a->group_size;
}

typedef struct codes_ctx {
    const quant_args *a;
    const float *W, *scale;
    const int *zp, *g_idx;
    int in, ng, qmin, qmax, kind;
    ds_dtype dt;
    int8_t *q;
} codes_ctx;

static void codes_rows(void *p, size_t lo, size_t hi) {
    const codes_ctx *c = p;
    for (size_t o = lo; o < hi; o++)
        for (int i = 0; i < c->in; i++) {
            int g = scheme_column_group(c->a, c->g_idx, i);
            int z = c->zp ? c->zp[o * c->ng + g] : 0;
            c->q[o * c->in + i] = (int8_t)qs_code_from_deq_k(c->kind, c->W[o * c->in + i], c->scale[o * c->ng + g],
                                                             z, c->qmin, c->qmax, (int)c->dt);
        }
}

void scheme_codes_from_weight(const quant_args *a, const float *W, const float *scale, const int *zp,
                              const int *g_idx, int out, int in, ds_dtype dt, int8_t *q) {
    codes_ctx c = {.a = a, .W = W, .scale = scale, .zp = zp, .g_idx = g_idx, .in = in,
                   .ng = quant_num_groups(a, in), .dt = dt, .q = q, .kind = (int)quant_kind(a)};
    quant_range(a, &c.qmin, &c.qmax);
    ds_parallel_for((size_t)out, (size_t)(1 << 18) / (size_t)in + 1, codes_rows, &c);
}

void scheme_result_alloc(scheme_result *p, const quant_args *a, int out, int in, ds_dtype dt) {
    size_t ng = (size_t)quant_num_groups(a, in);
    size_t off_meta = 0, off_scale = off_meta + 3 * sizeof(double);
    size_t off_zp = off_scale + sizeof(float) * out * ng;
    size_t off_gi = off_zp + sizeof(int32_t) * out * ng;
    size_t off_w = off_gi + sizeof(int32_t) * in;
    off_w = (off_w + 7) & ~(size_t)7;
    p->size = off_w + ds_dtype_size(dt) * (size_t)out * in;
    p->buf = xcalloc(1, p->size);
    p->meta = (double *)(void *)(p->buf + off_meta);
    p->scale = (float *)(void *)(p->buf + off_scale);
    p->zp = (int32_t *)(void *)(p->buf + off_zp);
    p->g_idx = (int32_t *)(void *)(p->buf + off_gi);
    p->w = p->buf + off_w;
}

/* ---- quantization_config ---- */

const char *scheme_type_name(quant_type t) { return t == QT_FLOAT ? "float" : "int"; }

const char *scheme_strategy_name(quant_strategy s) {
    switch (s) {
    case QS_GROUP: return "group";
    case QS_CHANNEL: return "channel";
    case QS_BLOCK: return "block";
    case QS_TOKEN: return "token";
    case QS_TENSOR_GROUP: return "tensor_group";
    default: return "tensor";
    }
}

const char *scheme_dtype_torch_name(ds_dtype d) {
    return d == DS_DTYPE_F8_E4M3 ? "torch.float8_e4m3fn" : d == DS_DTYPE_I8 ? "torch.int8" : NULL;
}

struct cJSON *scheme_weights_json(const quant_args *a, const char *observer, int group_size_m1) {
    cJSON *w = cJSON_CreateObject();
    if (a->actorder == QA_STATIC) cJSON_AddStringToObject(w, "actorder", "static");
    else if (a->actorder == QA_GROUP) cJSON_AddStringToObject(w, "actorder", "group");
    else cJSON_AddNullToObject(w, "actorder");
    if (a->strategy == QS_BLOCK) {
        cJSON *bs = cJSON_AddArrayToObject(w, "block_structure");
        cJSON_AddItemToArray(bs, cJSON_CreateNumber(a->block[0]));
        cJSON_AddItemToArray(bs, cJSON_CreateNumber(a->block[1]));
    } else {
        cJSON_AddNullToObject(w, "block_structure");
    }
    if (a->dynamic == QD_LOCAL) cJSON_AddStringToObject(w, "dynamic", "local");
    else cJSON_AddBoolToObject(w, "dynamic", a->dynamic == QD_DYNAMIC);
    if (a->strategy == QS_GROUP || a->strategy == QS_TENSOR_GROUP)
        cJSON_AddNumberToObject(w, "group_size", a->group_size);
    else if (group_size_m1) cJSON_AddNumberToObject(w, "group_size", -1);
    else cJSON_AddNullToObject(w, "group_size");
    cJSON_AddNumberToObject(w, "num_bits", a->num_bits);
    if (observer) cJSON_AddStringToObject(w, "observer", observer);
    else cJSON_AddNullToObject(w, "observer");
    cJSON_AddItemToObject(w, "observer_kwargs", cJSON_CreateObject());
    const char *sd = a->scale_dtype_set ? scheme_dtype_torch_name(a->scale_dtype) : NULL;
    if (sd) cJSON_AddStringToObject(w, "scale_dtype", sd);
    else cJSON_AddNullToObject(w, "scale_dtype");
    cJSON_AddStringToObject(w, "strategy", scheme_strategy_name(a->strategy));
    cJSON_AddBoolToObject(w, "symmetric", a->symmetric);
    cJSON_AddStringToObject(w, "type", scheme_type_name(a->type));
    if (a->symmetric) cJSON_AddNullToObject(w, "zp_dtype");
    else cJSON_AddStringToObject(w, "zp_dtype", "torch.int8");
    return w;
}
