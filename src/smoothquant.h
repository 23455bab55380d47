/*
 * smoothquant.h - llm-compressor's SmoothQuantModifier
 * (modifiers/transform/smoothquant/base.py, llm-compressor 0.14.0.1;
 * docs/reference-llm-compressor.md §4.5, §2.6).
 *
 * Mappings (llm-compressor MAPPINGS_REGISTRY): every architecture doneshot
 * reads smooths input_layernorm into q/k/v; the dense ones (Llama, Mistral,
 * Qwen2, Qwen3: DEFAULT_SMOOTHQUANT_MAPPINGS) also post_attention_layernorm
 * into gate/up; the MoE ones (Mixtral, Qwen2-MoE, Qwen3-MoE:
 * MIXTRAL_/QWEN_MOE_SMOOTHQUANT_MAPPINGS) smooth attention only.
 *
 * The run (oneshot's default "independent" pipeline: SmoothQuant gets its
 * own sequential calibration epoch before GPTQ's): layer by layer, a
 * calibration forward records the per-channel min and max of each smoothed
 * norm's output (all-reduced over the ranks, MIN / MAX), the smoothing
 * scales are computed and folded into the layer's weights, and the smoothed
 * layer propagates (no quantization). The GPTQ pass then starts from the
 * embeddings again, re-applying the same scales to each layer it loads.
 *
 * Numerics, in the model dtype dt (round_dt = ds_round_to), per channel j:
 *   act_j = round_dt(max_j - min_j)                 (dynamic range)
 *   ws_j  = round_dt(2 * max_{balance, k} |W_kj|)    (the factor 2 is in the code)
 *   smoothquant:      s_j = round_dt(round_dt(act_j^a) / round_dt(ws_j^(1-a))),
 *                     s_j = act_j where ws_j == 0
 *   log_equalization: s_j = round_dt(act_j / round_dt(log2(2 + act_j)))
 *   s_j = max(s_j, 1e-5)  (f32: torch.maximum with an f32 tensor promotes)
 *   balance W_kj := round_dt(W_kj * s_j), norm g_j := round_dt(g_j / s_j)
 *   (f32 products rounded once to dt, as update_offload_parameter's copy).
 * pow: the exponent is rounded to dt first (aten's pow_tensor_scalar casts
 * the scalar to the tensor's dtype: 0.8 is 0.80078125 in bf16); 0.5 is
 * sqrtf (aten's special case), else powf; aten's
 * vectorized pow (Sleef, 1 ulp) may differ from powf by an ulp.
 */
#ifndef DS_SMOOTHQUANT_H
#define DS_SMOOTHQUANT_H

#include "dataset.h"
#include "model.h"

struct ckpt_writer;
struct recipe;

/* SmoothQuantModifier settings: on (the recipe has one), smoothing_strength
 * (alpha in [0, 1]), algorithm "log_equalization" (log_eq = 1). */
typedef struct sq_params {
    int on;
    double alpha;
    int log_eq;
} sq_params;

/* The smoothing of a run: scales s [L][nmap][C] f32. */
typedef struct sq_plan {
    int L, C, nmap;
    sq_params p;
    unsigned char *on; /* [L][nmap]: 1 where the recipe smooths mapping k of layer l (else s = 1) */
    float *s;
} sq_plan;

/* The recipe's SmoothQuantModifier into *p (p->on = 0 when it has none). */
void smoothquant_recipe_params(const struct recipe *r, sq_params *p);
/* The recipe's mappings and ignore list resolved per decoder layer into
 * on [L][nmap] (1: mapping slot k of layer l is smoothed). Without
 * "mappings" the architecture's defaults (above) apply. Each recipe mapping
 * is matched within each decoder layer (compressed-tensors matching, as
 * recipe_module_targeted): its smooth entry must match one module there, an
 * input_layernorm or (dense) post_attention_layernorm, or none (the mapping
 * skips that layer) and must match in some layer; its balance entries must
 * each match a Linear there, and together exactly the Linears that read the
 * smooth layer's output (anything else changes the model's function). A
 * slot named by two mappings is an error. ignore: as llm-compressor's
 * _resolve_mappings, a mapping is skipped in a layer only when its smooth
 * layer and all its balance layers are ignored (verbose: a warning once per
 * mapping where the list names only some of them, and an info line with the
 * skipped count). Differs from llm-compressor 0.14 where its greedy grouping
 * (match_modules_set) pairs one layer's smooth layer with other layers'
 * balance layers (a smooth pattern that matches only some layers): doneshot
 * keeps each mapping inside its decoder layer. Errors: DS_ERR_USAGE naming
 * the mapping, the module and the rule. DS_OK (all 0) without a
 * SmoothQuantModifier. */
ds_status smoothquant_resolve(const model_config *c, const struct recipe *r, unsigned char *on, int verbose);

/* Before any work: smoothquant_resolve succeeds (its errors). */
ds_status smoothquant_validate(const model_config *c, const struct recipe *r);
/* 1 if the recipe smooths (a SmoothQuantModifier). */
int smoothquant_recipe_on(const struct recipe *r);

/* Mappings per layer for this architecture: 2 (attention, MLP) for dense
 * architectures, 1 (attention) for MoE ones. Mapping 0 smooths
 * input_layernorm into q/k/v (input INP_ATTN), mapping 1
 * post_attention_layernorm into gate/up (INP_MLP). */
int smoothquant_num_mappings(const model_config *c);

/* 1 if checkpoint tensor `name` is changed by the smoothing: a smoothed norm
 * weight (model.layers.N.input_layernorm.weight, ...) or a balance Linear's
 * weight (q/k/v_proj.weight; dense gate/up_proj.weight). */
int smoothquant_tensor(const model_config *c, const char *name);

/* The smoothing scales of one mapping over n channels: mn/mx the channel
 * min/max of the smoothed activation (values of dt), wmax the channel max of
 * |W| over every balance weight, alpha / log_eq as sq_params; s [n] out (f32
 * values, see the header comment). Source: _apply_smoothing and
 * _calculate_smoothing_scales. */
void smoothquant_scales(int n, const float *mn, const float *mx, const float *wmax, double alpha, int log_eq,
                        ds_dtype dt, float *s);

/* Fold scales s [nmap][C] into layer lw (f32 values of dt): each balance
 * weight's column j times s[j], the norm weight divided by s[j], each
 * rounded to dt. */
void smoothquant_apply(const model_config *c, layer_weights *lw, const float *s);

/* Collective (every rank, same order): the SmoothQuant epoch of recipe r
 * (smoothquant_resolve's mappings) over this rank's nlocal samples on the
 * CPU (model.c's layer_forward), min/max all-reduced over the ranks;
 * plan->s receives every layer's scales (1 for mappings not smoothed). ck
 * (rank 0; NULL elsewhere): every smoothquant_tensor of the model is written
 * to it, smoothed (ckpt_write_tensor), except the quantized Linears (the
 * GPTQ pass writes those). Errors: a layer_load failure (DS_ERR_INPUT), a
 * write failure; the same status on every rank. */
ds_status smoothquant_calibrate(const model *m, const struct recipe *r, const ds_sample *local, size_t nlocal,
                                struct ckpt_writer *ck, sq_plan *plan);

/* Layer l's scales [nmap][C] (NULL when plan is NULL or off). */
const float *smoothquant_layer_scales(const sq_plan *plan, int l);

void sq_plan_free(sq_plan *plan);

#endif
