/*
 * quant.h - integer weight quantization as compressed-tensors does it:
 * quantization arguments, min-max qparams (calculate_qparams), fake quant
 * (clamp then round half-to-even), and the pack-quantized bit layout.
 * Source: compressed-tensors quantization/utils/helpers.py,
 * lifecycle/forward.py, compressors/pack_quantized/helpers.py
 * (docs/reference-llm-compressor.md §1.3, §3.2).
 */
#ifndef DS_QUANT_H
#define DS_QUANT_H

#include "common.h"

typedef enum { QS_TENSOR = 0, QS_CHANNEL, QS_GROUP } quant_strategy;
typedef enum { QA_NONE = 0, QA_STATIC, QA_GROUP } quant_actorder; /* static == "weight", group == "dynamic" */

typedef enum { QT_INT = 0, QT_FLOAT } quant_type; /* QuantizationArgs.type */

typedef struct quant_args {
    int num_bits;           /* 2..8 */
    int symmetric;          /* 1: zp = 0 */
    quant_strategy strategy;
    int group_size;         /* > 0 for QS_GROUP, else -1 */
    quant_actorder actorder;
    quant_type type;        /* QT_INT (the zero default; last, so {bits, sym, ...} initializers stay int);
                             * QT_FLOAT is parsed by recipes and rejected until a float scheme exists */
} quant_args;

/* Integer range: [-2^(b-1), 2^(b-1)-1]. */
void quant_range(const quant_args *a, int *qmin, int *qmax);

/* Number of scale columns for a weight with `in` columns: 1 (channel/tensor
 * per row... tensor gives 1 for all rows) or in/group_size. */
int quant_num_groups(const quant_args *a, int in);

/* Min-max qparams per (row, group) of W [out, in] row-major, computed as
 * compressed-tensors calculate_qparams on the observed weight:
 * min = min(amin, 0), max = max(amax, 0); symmetric: scale = max(|min|,|max|) /
 * ((qmax-qmin)/2); asymmetric: scale = (max-min)/(qmax-qmin), zp =
 * round_half_even(clamp(qmin - min/scale, qmin, qmax)). The division is done in
 * f32 and the scale rounded to `scale_dtype` (the model dtype: the reference
 * computes it in the observed weight's dtype). Zero scales -> dtype eps.
 * W must hold values exactly representable in scale_dtype (the original
 * weights). scale, zp: [out, ngroups] (zp may be NULL when symmetric; for
 * QS_TENSOR ngroups = 1 and every row gets the same value). */
void quant_minmax_qparams(const quant_args *a, const float *W, int out, int in,
                          ds_dtype scale_dtype, float *scale, int *zp);

/* Fake-quantize one value: q = round_half_even(clamp(x/scale + zp, qmin, qmax));
 * returns the integer q and writes the dequantized value
 * round_to(scale_dtype, (q - zp) * scale) to *deq (the reference multiplies
 * in the scale's dtype). */
int quant_fake(float x, float scale, int zp, int qmin, int qmax, ds_dtype scale_dtype, float *deq);

/* The integer code compressed-tensors stores for a model-dtype weight value x
 * (the pack-quantized compressor re-quantizes the saved dequantized weight:
 * quantize(weight, scale, zp) with weight and scale in the model dtype, so
 * x/scale and + zp are each rounded to `dt` before clamp and round half to
 * even). For int8 in bf16 this can differ from the code used inside GPTQ
 * (bf16 holds only 8 significant bits), and it is what ends up on disk. */
int quant_code_from_deq(float x, float scale, int zp, int qmin, int qmax, ds_dtype dt);

/* Dense pack (CT pack_to_int32, "pack-quantized"): element i of each row goes
 * to global bit i*b of that row's int32 words, stored as u = q - qmin (biased
 * unsigned), lowest bits first, last word zero-padded.
 * q: [rows, cols] int8 codes; packed: [rows, ceil(cols*b/32)]. */
void quant_pack_rows(const int8_t *q, int rows, int cols, int bits, int32_t *packed);
void quant_unpack_rows(const int32_t *packed, int rows, int cols, int bits, int8_t *q);
/* Zero-points are packed along dim 0 (output channels): zp [rows, g] ->
 * packed [ceil(rows*b/32), g]. */
void quant_pack_cols(const int8_t *zp, int rows, int g, int bits, int32_t *packed);
void quant_unpack_cols(const int32_t *packed, int rows, int g, int bits, int8_t *zp);
int quant_packed_cols(int cols, int bits); /* ceil(cols*bits/32) */

#endif
