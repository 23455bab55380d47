/*
 * recipe.h - the JSON recipe: a mirror of llm-compressor's recipe schema
 * (docs/reference-llm-compressor.md §4) plus doneshot's run
 * settings. Accepted forms:
 *   {"modifiers": [{"GPTQModifier": {...}}], <run keys>}
 *   {"<x>_stage": {"<y>_modifiers": {"GPTQModifier": {...}}}, <run keys>}
 *   {"GPTQModifier": {...}}  (bare)
 * Run keys (all optional, overridden by CLI flags): "model", "dataset",
 * "output", "num_calibration_samples", "max_seq_length", "seed",
 * "text_field", "max_shard_size" (bytes or "5GB"-style string).
 * GPTQModifier keys: targets, ignore, scheme (preset name or {PRESET:[targets]}),
 * config_groups, block_size, dampening_frac, actorder, offload_hessians,
 * bypass_divisibility_checks (batched_quantization is accepted and ignored;
 * bypass_divisibility_checks: true is rejected: doneshot v1 needs group_size
 * to divide every in_features; block_size is 1..2^20, and a block wider than
 * the weight is one block, as in llm-compressor).
 * Relative paths in run keys are kept as written (relative to the working
 * directory, like CLI flags). applied_json holds only the modifier part:
 * {"modifiers":[{"GPTQModifier":{...resolved...}}]}. Unknown keys and invalid values are
 * DS_ERR_USAGE errors naming the key and the allowed values.
 * Exactly one quantizing modifier: GPTQModifier, or QuantizationModifier
 * (round-to-nearest with the scheme's observer, no Hessians; keys targets,
 * ignore, scheme, config_groups, bypass_divisibility_checks). A
 * SmoothQuantModifier (smoothing_strength, mappings, ignore,
 * num_calibration_steps, algorithm) may come before it (recipe.smoothquant).
 * Presets (compressed-tensors PRESET_SCHEMES, weights + input_activations):
 * W4A16, W4A16_ASYM, W8A16, W2A16..W7A16, W8A8/INT8, FP8, FP8_DYNAMIC,
 * FP8_BLOCK, NVFP4A16, NVFP4; a preset (or config group) whose weight args
 * have no checkpoint format in src/scheme.c, or whose input_activations
 * scheme_act_supported() refuses, is a DS_ERR_USAGE naming the key and
 * listing the supported ones.
 */
#ifndef DS_RECIPE_H
#define DS_RECIPE_H

#include "quant.h"

/* The quantizing modifier of a recipe. */
typedef enum { RQ_GPTQ = 0, RQ_QUANTIZATION } recipe_quantizer;

/* SmoothQuantModifier (llm-compressor modifiers/transform/smoothquant):
 * present = 0 when the recipe has none. mappings: NULL/0 = the
 * architecture's defaults; else nmappings pairs of (balance layer entries,
 * smooth layer entry) as written ("re:" allowed). */
typedef struct recipe_sq_mapping {
    char **balance; int nbalance;
    char *smooth;
} recipe_sq_mapping;
typedef struct recipe_smoothquant {
    int present;
    double smoothing_strength;    /* default 0.5, in [0, 1] */
    int log_equalization;         /* algorithm "log_equalization" (default "smoothquant": 0) */
    long num_calibration_steps;   /* -1: unset (all samples) */
    recipe_sq_mapping *mappings; int nmappings;
    char **ignore; int nignore;
} recipe_smoothquant;

typedef struct recipe {
    /* run settings; NULL / -1 when the recipe does not set them */
    char *model, *dataset, *output, *text_field;
    long num_samples, max_seq_len, seed;
    int64_t max_shard_size;       /* bytes, -1 unset */
    int moe_calibrate_all_experts; /* llm-compressor's moe_calibrate_all_experts: 1/0, -1 unset (= 1) */
    /* the quantizing modifier (GPTQModifier or QuantizationModifier) */
    recipe_quantizer quantizer;   /* RQ_GPTQ (default) or RQ_QUANTIZATION */
    char *scheme_name;            /* preset name ("W4A16") or NULL for config_groups */
    quant_args w;                 /* weight quantization (one config group in v1); w.act says what
                                   * input-activation tensors each module stores */
    quant_args in;                /* input_activations args; in.num_bits == 0: none (weight-only) */
    const char *in_observer;      /* input activation observer ("static_minmax") or NULL (dynamic/none) */
    recipe_smoothquant smoothquant; /* SmoothQuantModifier, .present = 0 if none */
    char **targets; int ntargets; /* default ["Linear"] */
    char **ignore; int nignore;   /* default [] */
    int block_size;               /* default 128 (GPTQ) */
    double dampening_frac;        /* default 0.01 */
    int offload_hessians;         /* accepted, no effect on CPU */
    int bypass_divisibility;      /* always 0 (true is rejected at parse) */
    char *applied_json;           /* normalized recipe text to store with the output */
    const char *observer;         /* weight observer name: "memoryless_minmax" (default) or "minmax"; points into priv */
    struct recipe_priv *priv;     /* private to recipe.c: compiled "re:" patterns etc. */
} recipe;

/* Largest accepted GPTQModifier block_size (recipe load rejects more). */
#define RECIPE_MAX_BLOCK_SIZE (1 << 20)

/* compressed-tensors version written as quantization_config.version (the
 * version installed in the interop venv; the reference doc's example shows
 * 0.18.0). */
#define RECIPE_CT_VERSION "0.19.0"

/* Parse a recipe file / JSON text. On error returns DS_ERR_USAGE with a
 * message naming the file, the key path (e.g. modifiers[0].GPTQModifier.actorder),
 * expected vs got. */
ds_status recipe_load(const char *path, recipe *out);
ds_status recipe_parse(const char *json, const char *origin, recipe *out);
/* Frees everything and zeroes *r; a zeroed recipe is a no-op. */
void recipe_free(recipe *r);

/* Parse a size: a non-negative integer of bytes or "5GB", "500MB", "2GiB",
 * "1.5 GB", "100KB", "4096B", "20kib" (decimal KB/MB/GB/TB = 10^3k, binary
 * KiB/MiB/GiB/TiB = 2^10k; case-insensitive). 0 on success, -1 if invalid. */
int recipe_parse_size(const char *s, int64_t *out);

/* Limits of one "re:" match (PCRE2 match context). The match limit is
 * PCRE2's own default, set explicitly: every pattern that matched before
 * still does, and a catastrophically backtracking one gives up after about
 * 0.3 s (one name) instead of counting as "no match". */
#define RECIPE_RE_MATCH_LIMIT 10000000
#define RECIPE_RE_DEPTH_LIMIT 10000000
#define RECIPE_RE_HEAP_LIMIT_KIB 20000

/* 1 if module `name` of class `cls` (e.g. "Linear") is quantized: it matches
 * a target and no ignore entry. Entries are class names, exact module names,
 * or "re:<regex>" (Python re.match semantics: anchored at the start).
 * A "re:" match that fails with a PCRE2 error (match/depth/heap limit) is
 * neither a match nor a non-match: the module counts as not quantized, the
 * error is recorded in the recipe (the first one; later calls return 0) and
 * recipe_match_status reports it. Not thread-safe while an error is being
 * recorded; matches that succeed or fail cleanly write nothing. */
int recipe_module_targeted(const recipe *r, const char *name, const char *cls);

/* SmoothQuantModifier matching, with recipe_module_targeted's rules (class
 * name, exact module name or "re:" anchored at the start; a PCRE2 error is no
 * match and is recorded for recipe_match_status). recipe_sq_match: 1 if
 * module `name` of class `cls` matches mapping k's smooth entry (entry -1) or
 * its balance entry `entry` (0 <= entry < mappings[k].nbalance); k must be a
 * mapping of r. recipe_sq_ignored: 1 if it matches an entry of the
 * modifier's ignore list. Both 0 without a SmoothQuantModifier. */
int recipe_sq_match(const recipe *r, int k, int entry, const char *name, const char *cls);
int recipe_sq_ignored(const recipe *r, const char *name, const char *cls);

/* 1 if the recipe calibrates on data: GPTQ (Hessians), SmoothQuant
 * (activation ranges) or static activation scales (input_scale /
 * input_global_scale observers); 0 for round-to-nearest with weight
 * observers and dynamic or no activation quantization (FP8_DYNAMIC,
 * W8A8 and the weight-only schemes under QuantizationModifier), which
 * llm-compressor's oneshot runs without a dataset. */
int recipe_needs_data(const recipe *r);

/* DS_OK, or DS_ERR_USAGE naming the recipe, the "re:" entry (key path and
 * pattern), the module name and the PCRE2 error of the first match that
 * failed in recipe_module_targeted. Call after matching every module name of
 * the model and before writing anything (pipeline_validate does). */
ds_status recipe_match_status(const recipe *r);

/* The config.json "quantization_config" object as compact JSON text
 * (malloc'd), exactly as compressed-tensors writes it (§3.7): config_groups
 * group_0 with format pack-quantized and the weights args, format,
 * global_compression_ratio null, ignore (the given explicit names), kv_cache_scheme
 * null, quant_method, quantization_status "compressed", sparsity_config {},
 * transform_config {}, version. */
char *recipe_quantization_config_json(const recipe *r, const char *const *ignore, int nignore);

#endif
