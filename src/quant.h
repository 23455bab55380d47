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

/* QuantizationStrategy. Weights: tensor/channel/group (int, fp8), block (fp8: block_structure),
 * tensor_group (nvfp4). Input activations also: token (dynamic per token). */
typedef enum { QS_TENSOR = 0, QS_CHANNEL, QS_GROUP, QS_BLOCK, QS_TOKEN, QS_TENSOR_GROUP } quant_strategy;
typedef enum { QA_NONE = 0, QA_STATIC, QA_GROUP } quant_actorder; /* static == "weight", group == "dynamic" */

typedef enum { QT_INT = 0, QT_FLOAT } quant_type; /* QuantizationArgs.type */

/* QuantizationArgs.dynamic: false, true, "local" (NVFP4 activations: dynamic
 * local scales, static global scale). */
typedef enum { QD_STATIC = 0, QD_DYNAMIC, QD_LOCAL } quant_dynamic;

/* The scalar kind of a scheme's codes (the fake-quant rounding):
 * QK_INT: round half to even into [qmin, qmax]; QK_FP8: cast to
 * float8_e4m3fn (qs_fp8_e4m3_*, src/qscalar.h); QK_FP4: float4 e2m1 (the
 * nvfp4 scheme). quant_kind(a) maps args to it. */
typedef enum { QK_INT = 0, QK_FP8, QK_FP4 } quant_kind_t;

/* The input activations of a quantized module as its weight args see them
 * (quant_args.act of the WEIGHT args, set by the recipe / the reader from
 * input_activations): none (weight-only: W4A16, ...), dynamic (quantized,
 * nothing stored: FP8_DYNAMIC, W8A8), a static per-tensor input_scale [1]
 * (FP8), or NVFP4's input_global_scale [1]. The format depends on it
 * (pack-quantized is weight-only). */
typedef enum { QACT_NONE = 0, QACT_DYNAMIC, QACT_INPUT_SCALE, QACT_INPUT_GLOBAL_SCALE } quant_act_store;

typedef struct quant_args {
    int num_bits;           /* 2..8 */
    int symmetric;          /* 1: zp = 0 */
    quant_strategy strategy;
    int group_size;         /* > 0 for QS_GROUP, else -1 */
    quant_actorder actorder;
    quant_type type;        /* QT_INT (the zero default) or QT_FLOAT (fp8: num_bits 8, fp4: 4) */
    /* --- added for the FP8/W8A8/NVFP4 schemes (zero = the old meaning) --- */
    int block[2];           /* QS_BLOCK: block_structure [rows, cols] (FP8_BLOCK: 128, 128) */
    quant_dynamic dynamic;  /* weights: always QD_STATIC; activations: as given */
    int scale_dtype_set;    /* 1: scales are rounded to scale_dtype (NVFP4: F8_E4M3); 0: the observed dtype */
    ds_dtype scale_dtype;
    quant_act_store act;    /* weight args only: input-activation tensors the module stores */
    float global_scale;     /* QS_TENSOR_GROUP (NVFP4) weights: this module's weight_global_scale, set per
                             * module by the pipeline (shared by a fused q/k/v or gate/up group); 0: from
                             * the module's own absmax (qs_nvfp4_global_scale, src/qfp4.h) */
} quant_args;

/* The code kind of args a (QK_INT for type int; QK_FP8 / QK_FP4 for float 8 / 4 bits). */
quant_kind_t quant_kind(const quant_args *a);

/* Code range: int [-2^(b-1), 2^(b-1)-1]; fp8 e4m3 [-448, 448]; fp4 e2m1 [-6, 6]
 * (compressed-tensors calculate_range: the dtype's finfo min/max). */
void quant_range(const quant_args *a, int *qmin, int *qmax);

/* Number of scale columns for a weight with `in` columns: 1 (channel/tensor
 * per row... tensor gives 1 for all rows), ceil(in/group_size) (group,
 * tensor_group) or ceil(in/block[1]) (block: in memory every row of a block
 * row holds its block's scale; the checkpoint stores [ceil(out/block[0]),
 * ceil(in/block[1])]). */
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
 * QS_TENSOR ngroups = 1 and every row gets the same value). QS_TENSOR_GROUP
 * (NVFP4): scale = the effective scale weight_scale / global_scale (f32;
 * global_scale = a->global_scale, or from W's absmax when 0), zp = 0
 * (qs_nvfp4_qparams, src/qfp4.h). */
void quant_minmax_qparams(const quant_args *a, const float *W, int out, int in,
                          ds_dtype scale_dtype, float *scale, int *zp);

/* Fake-quantize one value: q = round_half_even(clamp(x/scale + zp, qmin, qmax));
 * returns the integer q and writes the dequantized value
 * round_to(scale_dtype, (q - zp) * scale) to *deq (the reference multiplies
 * in the scale's dtype). */
int quant_fake(float x, float scale, int zp, int qmin, int qmax, ds_dtype scale_dtype, float *deq);
/* The same for any code kind (quant_kind): QK_INT is quant_fake; QK_FP8
 * returns the float8_e4m3fn bit pattern (0..255) of fp8(clamp(x/scale,
 * -448, 448)) and *deq = round_to(dt, fp8value * scale). */
int quant_fake_k(quant_kind_t k, float x, float scale, int zp, int qmin, int qmax, ds_dtype scale_dtype,
                 float *deq);

/* The integer code compressed-tensors stores for a model-dtype weight value x
 * (the pack-quantized compressor re-quantizes the saved dequantized weight:
 * quantize(weight, scale, zp) with weight and scale in the model dtype, so
 * x/scale and + zp are each rounded to `dt` before clamp and round half to
 * even). For int8 in bf16 this can differ from the code used inside GPTQ
 * (bf16 holds only 8 significant bits), and it is what ends up on disk. */
int quant_code_from_deq(float x, float scale, int zp, int qmin, int qmax, ds_dtype dt);
/* The same for any code kind (fp8: the e4m3 bit pattern of
 * fp8(clamp(round_dt(x/scale), -448, 448)), as the float-quantized compressor). */
int quant_code_from_deq_k(quant_kind_t k, float x, float scale, int zp, int qmin, int qmax, ds_dtype dt);
/* Dequantized value of code q (any kind): round_to(dt, (value(q) - zp) * scale). */
float quant_dequant_k(quant_kind_t k, int q, int zp, float scale, ds_dtype dt);

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
