/*
 * quant.c - integer weight quantization as compressed-tensors does it.
 *
 * Followed line by line from the installed reference stack (the versions the
 * goldens in tests/golden/gptq/ were made with):
 *   compressed-tensors 0.19.0  quantization/utils/helpers.py (calculate_qparams,
 *                              _calculate_range, _get_dtype_eps),
 *                              quantization/lifecycle/forward_helpers.py
 *                              (_quantize_dequantize), quant_args.py
 *                              (round_to_quantized_type_*),
 *                              compressors/pack_quantized/helpers.py (pack_to_int32)
 *   llmcompressor 0.14.0.1     observers/min_max.py (memoryless_minmax)
 *   torch 2.14.0               (CPU bf16/f16 elementwise ops compute in f32 and
 *                              round once to the storage dtype)
 *
 * Numerics (all confirmed against the sources above and the goldens):
 *  - qparams are computed in the observed weight's dtype (bf16 for a bf16
 *    model): every elementwise op is one f32 op rounded to that dtype.
 *      sym:  scale = rd(absmax / rd(rd(qmax-qmin) / 2))          (int4: /7.5)
 *      asym: scale = rd(rd(max-min) / rd(qmax-qmin))
 *            zp    = round_half_even(clamp(rd(qmin - rd(min/scale)), qmin, qmax))
 *    then scale == 0 -> finfo(dtype).eps. zp is computed before the eps fix.
 *  - fake quant (_quantize_dequantize): t = x/scale (f32), t += zp (f32),
 *    clamp to [qmin,qmax], round half to even, dequant in the SCALE dtype:
 *    rd(rd(q - zp) * scale). q - zp is exact in bf16/f16 for |q - zp| <= 256.
 */
#include "quant.h"
#include "qscalar.h"

#include <math.h>
#include <string.h>

quant_kind_t quant_kind(const quant_args *a) {
    if (a->type != QT_FLOAT) return QK_INT;
    return a->num_bits == 4 ? QK_FP4 : QK_FP8;
}

void quant_range(const quant_args *a, int *qmin, int *qmax) {
    DS_ASSERT(a->num_bits >= 1 && a->num_bits <= 8);
    switch (quant_kind(a)) {
    case QK_FP8: *qmin = -448; *qmax = 448; return; /* torch.finfo(float8_e4m3fn) */
    case QK_FP4: *qmin = -6; *qmax = 6; return;     /* FP4_E2M1_DATA */
    default: qs_range(a->num_bits, qmin, qmax);
    }
}

int quant_num_groups(const quant_args *a, int in) {
    if (a->strategy == QS_GROUP || a->strategy == QS_TENSOR_GROUP) {
        DS_ASSERT(a->group_size > 0);
        return (in + a->group_size - 1) / a->group_size;
    }
    if (a->strategy == QS_BLOCK) {
        DS_ASSERT(a->block[1] > 0);
        return (in + a->block[1] - 1) / a->block[1];
    }
    return 1;
}

/* One (row, group) of calculate_qparams; mn <= 0 <= mx already. */
static void qparams_one(const quant_args *a, float mn, float mx, ds_dtype dt, int qmin, int qmax,
                        float *scale, int *zp) {
    int z;
    qs_qparams(a->symmetric, mn, mx, (int)dt, qmin, qmax, scale, &z);
    if (zp) *zp = z;
}

void quant_minmax_qparams(const quant_args *a, const float *W, int out, int in,
                          ds_dtype scale_dtype, float *scale, int *zp) {
    int qmin, qmax;
    quant_range(a, &qmin, &qmax);
    if (a->strategy == QS_TENSOR_GROUP) { /* NVFP4: effective scales weight_scale / global_scale (qfp4.h) */
        const float gs = a->global_scale > 0.0f ? a->global_scale
                                                : qs_nvfp4_global_scale(qs_absmax(W, (size_t)out * in), (int)scale_dtype);
        qs_nvfp4_qparams(W, out, in, (int)scale_dtype, gs, scale);
        if (zp) memset(zp, 0, sizeof(int) * (size_t)out * (size_t)quant_num_groups(a, in));
        return;
    }
    if (a->strategy == QS_TENSOR) {
        float mn = 0.0f, mx = 0.0f;
        for (size_t i = 0; i < (size_t)out * (size_t)in; i++) {
            if (W[i] < mn) mn = W[i];
            if (W[i] > mx) mx = W[i];
        }
        float s;
        int z;
        qparams_one(a, mn, mx, scale_dtype, qmin, qmax, &s, &z);
        for (int r = 0; r < out; r++) {
            scale[r] = s;
            if (zp) zp[r] = z;
        }
        return;
    }
    int ng = quant_num_groups(a, in);
    if (a->strategy == QS_BLOCK) { /* one scale per [block[0], block[1]] tile, copied to each of its rows */
        const int br = a->block[0], bc = a->block[1];
        for (int r0 = 0; r0 < out; r0 += br)
            for (int g = 0; g < ng; g++) {
                int c0 = g * bc, c1 = DS_MIN(in, c0 + bc), r1 = DS_MIN(out, r0 + br);
                float mn = 0.0f, mx = 0.0f;
                for (int r = r0; r < r1; r++)
                    for (int c = c0; c < c1; c++) {
                        float v = W[(size_t)r * in + c];
                        if (v < mn) mn = v;
                        if (v > mx) mx = v;
                    }
                float s;
                int z;
                qparams_one(a, mn, mx, scale_dtype, qmin, qmax, &s, &z);
                for (int r = r0; r < r1; r++) {
                    scale[(size_t)r * ng + g] = s;
                    if (zp) zp[(size_t)r * ng + g] = z;
                }
            }
        return;
    }
    int gs = a->strategy == QS_GROUP || a->strategy == QS_TENSOR_GROUP ? a->group_size : in;
    for (int r = 0; r < out; r++) {
        const float *w = W + (size_t)r * in;
        for (int g = 0; g < ng; g++) {
            int c0 = g * gs, c1 = DS_MIN(in, c0 + gs);
            float mn = 0.0f, mx = 0.0f; /* min(amin, 0), max(amax, 0) */
            for (int c = c0; c < c1; c++) {
                if (w[c] < mn) mn = w[c];
                if (w[c] > mx) mx = w[c];
            }
            qparams_one(a, mn, mx, scale_dtype, qmin, qmax, &scale[(size_t)r * ng + g],
                        zp ? &zp[(size_t)r * ng + g] : NULL);
        }
    }
}

int quant_fake(float x, float scale, int zp, int qmin, int qmax, ds_dtype scale_dtype, float *deq) {
    return qs_fake(x, scale, zp, qmin, qmax, (int)scale_dtype, deq);
}

int quant_code_from_deq(float x, float scale, int zp, int qmin, int qmax, ds_dtype dt) {
    return qs_code_from_deq(x, scale, zp, qmin, qmax, (int)dt);
}

int quant_fake_k(quant_kind_t k, float x, float scale, int zp, int qmin, int qmax, ds_dtype scale_dtype,
                 float *deq) {
    return qs_fake_k((int)k, x, scale, zp, qmin, qmax, (int)scale_dtype, deq);
}

int quant_code_from_deq_k(quant_kind_t k, float x, float scale, int zp, int qmin, int qmax, ds_dtype dt) {
    return qs_code_from_deq_k((int)k, x, scale, zp, qmin, qmax, (int)dt);
}

float quant_dequant_k(quant_kind_t k, int q, int zp, float scale, ds_dtype dt) {
    return qs_dequant_k((int)k, q, zp, scale, (int)dt);
}

int quant_packed_cols(int cols, int bits) { return qs_packed_words(cols, bits); }

/* Dense pack of one strided vector of n codes into its words (stride ws). */
static void pack_vec(const int8_t *q, size_t qs, int n, int bits, int32_t *out, size_t ws) {
    int nw = qs_packed_words(n, bits);
    for (int w = 0; w < nw; w++) out[(size_t)w * ws] = (int32_t)qs_pack_word(w, bits, n, q, NULL, qs);
}

static void unpack_vec(const int32_t *in, size_t ws, int n, int bits, int8_t *q, size_t qs) {
    for (int i = 0; i < n; i++) q[(size_t)i * qs] = (int8_t)qs_unpack_one(in, ws, i, bits);
}

typedef struct pack_ctx { const int8_t *q; int cols, bits, pc; int32_t *packed; } pack_ctx;

static void pack_rows_range(void *p, size_t lo, size_t hi) {
    const pack_ctx *c = p;
    for (size_t r = lo; r < hi; r++)
        pack_vec(c->q + r * c->cols, 1, c->cols, c->bits, c->packed + r * c->pc, 1);
}

void quant_pack_rows(const int8_t *q, int rows, int cols, int bits, int32_t *packed) {
    DS_ASSERT(bits >= 1 && bits <= 8);
    pack_ctx c = {q, cols, bits, quant_packed_cols(cols, bits), packed};
    ds_parallel_for((size_t)rows, (size_t)(1 << 18) / (size_t)(cols > 0 ? cols : 1) + 1, pack_rows_range, &c);
}

void quant_unpack_rows(const int32_t *packed, int rows, int cols, int bits, int8_t *q) {
    DS_ASSERT(bits >= 1 && bits <= 8);
    int pc = quant_packed_cols(cols, bits);
    for (int r = 0; r < rows; r++)
        unpack_vec(packed + (size_t)r * pc, 1, cols, bits, q + (size_t)r * cols, 1);
}

void quant_pack_cols(const int8_t *zp, int rows, int g, int bits, int32_t *packed) {
    DS_ASSERT(bits >= 1 && bits <= 8);
    for (int c = 0; c < g; c++) pack_vec(zp + c, (size_t)g, rows, bits, packed + c, (size_t)g);
}

void quant_unpack_cols(const int32_t *packed, int rows, int g, int bits, int8_t *zp) {
    DS_ASSERT(bits >= 1 && bits <= 8);
    for (int c = 0; c < g; c++) unpack_vec(packed + c, (size_t)g, rows, bits, zp + c, (size_t)g);
}
