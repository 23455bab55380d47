/*
 * scheme.h - one home for a weight quantization scheme and its on-disk
 * compressed-tensors format: the per-module checkpoint tensor table (name
 * suffix, dtype, shape as a function of (out, in, args), present-if
 * predicate, encoder, reader checks), the on-disk codes of a GPTQ result,
 * the dequantizing reader and the quantization_config weights JSON.
 * The checkpoint planner and writer (src/checkpoint.c), the resume
 * "already written" test, the reader's validation and load (src/model.c) and
 * quantization_config (src/recipe.c) all iterate this one table, so a new
 * scheme is a new table (plus its scalar math in src/qscalar.h).
 * Formats today: "pack-quantized" (type int, 2..8 bits; W4A16, W8A16, ...):
 *   weight_packed     I32 [out, ceil(in*b/32)]       always
 *   weight_scale      model dtype [out, groups]      always
 *   weight_shape      I64 [2] = {out, in}            always (reader: optional)
 *   weight_zero_point I32 [ceil(out*b/32), groups]   iff asymmetric
 *   weight_g_idx      I32 [in]                       iff actorder group
 * "float-quantized" (type float, 8 bits: FP8, FP8_DYNAMIC, FP8_BLOCK):
 *   weight        F8_E4M3 [out, in]                 always (e4m3 bit patterns)
 *   weight_scale  model dtype: tensor [1], channel [out, 1], group [out, g],
 *                 block [ceil(out/b0), ceil(in/b1)] always
 *   input_scale   model dtype [1]                   iff a->act == QACT_INPUT_SCALE
 * "nvfp4-pack-quantized" (type float, 4 bits, tensor_group 16: NVFP4A16, NVFP4):
 *   weight_packed        U8 [out, in/2]                 always (e2m1 codes, element 2k low nibble)
 *   weight_scale         F8_E4M3 [out, in/16]           always
 *   weight_global_scale  F32 [1]                        always
 *   input_global_scale   F32 [1]                        iff a->act == QACT_INPUT_GLOBAL_SCALE
 * Adding a format: a ct_tensor table + a ct_format row (accepts, table,
 * dequantizer) in src/scheme.c; its code kind in src/qscalar.h (qs_*_k).
 * Source: compressed-tensors compressors/pack_quantized, float_quantized
 * (docs/reference-llm-compressor.md §3.2, §3.7).
 */
#ifndef DS_SCHEME_H
#define DS_SCHEME_H

#include "quant.h"
#include "safetensors.h"

#define SCHEME_MAX_TENSORS 8

/* One checkpoint tensor of a quantized module: "<module>.<suffix>". */
typedef struct scheme_tensor_spec {
    const char *suffix;  /* "weight_packed" (static storage) */
    ds_dtype dtype;
    int ndim;            /* 1 or 2 */
    int64_t shape[2];
    size_t nbytes;
} scheme_tensor_spec;

/* A quantized module in memory (the writer's input): q [out, in] codes,
 * scale/zp [out, groups] (zp NULL when symmetric), g_idx [in] or NULL. */
typedef struct scheme_module {
    const int8_t *q;
    const float *scale;
    const int *zp, *g_idx;
    int out, in;
    ds_dtype dtype;      /* the model dtype (scales are stored in it) */
    const float *act_scale; /* QACT_INPUT_SCALE: the module's input_scale (1 value); QACT_INPUT_GLOBAL_SCALE:
                             * its input_global_scale (NVFP4); else NULL */
    const float *global_scale; /* nvfp4-pack-quantized: the weight_global_scale (1 value; scale holds
                                * the effective scales weight_scale / global_scale); else NULL */
} scheme_module;

/* compressed-tensors format name of a's scheme ("pack-quantized",
 * "float-quantized"), NULL when doneshot has no format for it. */
const char *scheme_format_name(const quant_args *a);

/* "pack-quantized, float-quantized, ...": the formats doneshot writes (static buffer). */
const char *scheme_format_list(void);
/* 1 if `name` is one of them. */
int scheme_format_known(const char *name);

/* ---- input activations ----
 * The input-activation schemes doneshot runs (a table in src/scheme.c):
 * fp8 static per-tensor (FP8: input_scale calibrated), fp8 dynamic per
 * token (FP8_DYNAMIC), fp8 dynamic per group (FP8_BLOCK), int8 dynamic per
 * token (W8A8), int8 static per-tensor symmetric (W8A8 static: input_scale =
 * max|x| / 127.5 calibrated, stored by int-quantized), NVFP4. */

/* 1 if input activation args `in` are supported. */
int scheme_act_supported(const quant_args *in);
/* Their descriptions, comma separated (static buffer), for error messages. */
const char *scheme_act_supported_list(void);
/* The activation fake quant of a Linear's input, in place, as
 * compressed-tensors' forward_quantize applies it when transformers loads
 * the checkpoint: X [rows, n] (values of dt, the activation dtype);
 * input_scale: the module's stored input_scale (static args; NULL for
 * dynamic ones, whose scales are computed from X per token / group).
 * `in` must be scheme_act_supported. */
void scheme_act_fake(const quant_args *in, const float *input_scale, float *X, int rows, int n, ds_dtype dt);

/* 1 if a's format stores the codes as "<module>.weight" (float-quantized):
 * the module's .weight is then a quantized tensor, not the source weight. */
int scheme_writes_weight(const quant_args *a);

/* The tensors a module [out, in] of args a writes, in table (= write)
 * order, into specs[SCHEME_MAX_TENSORS]; returns their count (0: no format).
 * dt: the model dtype. The planner, the writer and the tests use this. */
int scheme_tensors(const quant_args *a, ds_dtype dt, int out, int in, scheme_tensor_spec *specs);

/* Fill dst (specs[k].nbytes, aligned) with the bytes of tensor k of
 * scheme_tensors(a, m->dtype, m->out, m->in, ...). */
void scheme_encode(const quant_args *a, int k, const scheme_module *m, void *dst);

/* 1 if tensor `name` ends in ".<suffix>" of some table entry (of any
 * format): a quantized module's tensor, written per layer. */
int scheme_is_module_tensor(const char *name);

/* ---- reader ---- */

/* Number of table entries the reader checks for args a (present or not,
 * in table order), and entry k's suffix. */
int scheme_read_entries(const quant_args *a);
const char *scheme_read_suffix(const quant_args *a, int k);
/* Check stored tensor t (NULL: absent) against entry k for a module
 * [out, in]: 0 when it is acceptable, else 1 (dtype, shape or presence) or
 * 2 (a value) with what was expected written to want ("I32 [64, 8]",
 * "no zero point (symmetric)"). The reader accepts
 * what llm-compressor writes too: scales in any float dtype (a 1-element
 * scale for strategy tensor), weight_shape I64 or I32 or absent.
 * check_values: also the values (g_idx in [0, groups); O(in) reads), with
 * "element [i] = v is outside ..." in want. */
int scheme_read_check(const quant_args *a, int k, int out, int in, const st_tensor *t, int check_values,
                      char *want, size_t cap);

/* Dequantize a module [out, in] from its stored tensors, indexed by entry
 * (stored[k] for scheme_read_suffix(a, k); NULL when absent; all passed
 * scheme_read_check): W[o, i] = round_dt((q - zp) * scale[o, g(i)]),
 * g(i) = scheme_column_group. scale: the weight_scale as f32, row stride
 * srow (0: one scale for all rows). w: [out, in]. */
void scheme_dequantize(const quant_args *a, ds_dtype dt, int out, int in, const st_tensor *const *stored,
                       const float *scale, size_t srow, float *w);

/* ---- codes ---- */

/* The scale group of column col: g_idx[col] with actorder group (g_idx not
 * NULL), col / group_size for strategy group, else 0. */
int scheme_column_group(const quant_args *a, const int *g_idx, int col);

/* q [out, in] = the codes compressed-tensors stores for the dequantized
 * weight W [out, in] (model-dtype values) with scale/zp [out, groups] (zp
 * NULL: symmetric) and g_idx [in] or NULL: quant_code_from_deq per element
 * (the compressor re-quantizes the saved weight). Parallel over rows. */
void scheme_codes_from_weight(const quant_args *a, const float *W, const float *scale, const int *zp,
                              const int *g_idx, int out, int in, ds_dtype dt, int8_t *q);

/* A GPTQ result in transit (the pipeline broadcasts it from the module's
 * owner): one zeroed buffer holding meta [3] doubles (loss, rtn_fallback,
 * seconds), scale f32 [out, groups], zp i32 [out, groups], g_idx i32 [in],
 * then (8-byte aligned) the fake-quantized weight [out, in] in the model
 * dtype. The caller frees buf. */
typedef struct scheme_result {
    unsigned char *buf;
    size_t size;
    void *w;
    float *scale;
    int32_t *zp, *g_idx;
    double *meta;
} scheme_result;
void scheme_result_alloc(scheme_result *p, const quant_args *a, int out, int in, ds_dtype dt);

/* ---- quantization_config ---- */

/* "int" / "float" (QuantizationArgs.type). */
const char *scheme_type_name(quant_type t);
/* "tensor", "channel", "group", "block", "token", "tensor_group". */
const char *scheme_strategy_name(quant_strategy s);
/* "torch.float8_e4m3fn" / "torch.int8" (scale_dtype, zp_dtype), NULL otherwise. */
const char *scheme_dtype_torch_name(ds_dtype d);

/* The config_groups.<g>.weights (or input_activations) object of
 * quantization_config for args a (a new cJSON object, the caller owns it),
 * exactly as compressed-tensors writes it: actorder, block_structure (null
 * or [b0, b1]), dynamic (false/true/"local"), group_size (-1 when
 * group_size_m1, else null, for non-group strategies), num_bits, observer
 * (NULL: null), observer_kwargs {}, scale_dtype (null or
 * "torch.float8_e4m3fn"), strategy, symmetric, type, zp_dtype (null when
 * symmetric, "torch.int8" else). */
struct cJSON *scheme_weights_json(const quant_args *a, const char *observer, int group_size_m1);

#endif
