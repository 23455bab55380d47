/*
 * model.c - config.json parsing, weight binding and the decoder-layer
 * forward pass (HF transformers modeling_llama.py / modeling_qwen2.py /
 * modeling_qwen3.py, modeling_qwen2_moe.py, modeling_qwen3_moe.py,
 * modeling_mixtral.py; docs/model-and-tokenizer.md §1.3-2.7, §3).
 * Deliberately not here: the lm_head/loss (eval), GPU code.
 */
#include "model.h"
#include "scheme.h"
#include "ops_cpu.h"
#include "quant.h"
#include "moe_route.h"
#include "qscalar.h"

#include <cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static const struct { const char *name; model_arch arch; } g_archs[] = {
    {"LlamaForCausalLM", ARCH_LLAMA},
    {"MistralForCausalLM", ARCH_MISTRAL},
    {"Qwen2ForCausalLM", ARCH_QWEN2},
    {"Qwen3ForCausalLM", ARCH_QWEN3},
    {"Qwen2MoeForCausalLM", ARCH_QWEN2_MOE},
    {"Qwen3MoeForCausalLM", ARCH_QWEN3_MOE},
    {"MixtralForCausalLM", ARCH_MIXTRAL},
};
#define SUPPORTED_ARCHS "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, " \
                        "Qwen2MoeForCausalLM, Qwen3MoeForCausalLM, MixtralForCausalLM"


/* ---- config.json ---- */

/* Supported ranges of the config.json sizes: generous for any real model, and
 * small enough that every product of two of them fits an int64 and every
 * per-Linear dimension an int. */
#define MAX_HIDDEN (1 << 18)
#define MAX_INTER (1 << 20)
#define MAX_LAYERS (1 << 16)
#define MAX_HEADS (1 << 16)
#define MAX_HEAD_DIM (1 << 16)
#define MAX_QDIM (1 << 24)     /* num_attention_heads x head_dim */
#define MAX_VOCAB (1 << 24)
#define MAX_POS (1 << 28)
#define MAX_EXPERTS (1 << 14)
#define CFG_HINT "hint: config.json must describe the checkpoint's safetensors (same model, unedited)"

/* An integer key within [lo, hi] (bounds keep every size product far from
 * int overflow). Missing or null: DS_ERR_INPUT when required, else def. */
static ds_status get_int(const cJSON *j, const char *path, const char *key, int required, int def, int lo,
                         int hi, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!v || cJSON_IsNull(v)) {
        if (required)
            return ds_error(DS_ERR_INPUT, "%s: missing required key \"%s\" (expected an integer in [%d, %d])",
                            path, key, lo, hi);
        *out = def;
        return DS_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return ds_error(DS_ERR_INPUT, "%s: key \"%s\": expected an integer in [%d, %d]\n" CFG_HINT, path, key,
                        lo, hi);
    if (v->valuedouble < lo || v->valuedouble > hi)
        return ds_error(DS_ERR_INPUT, "%s: key \"%s\" = %.17g is outside the supported range [%d, %d]\n" CFG_HINT,
                        path, key, v->valuedouble, lo, hi);
    *out = (int)v->valuedouble;
    return DS_OK;
}

static double get_num(const cJSON *j, const char *key, double def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static int get_bool(const cJSON *j, const char *key, int def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

/* RoPE inverse frequencies with optional rope_scaling (default, linear, llama3). */
static ds_status rope_setup(const cJSON *j, const char *path, model *m) {
    int HS = m->cfg.HS, half = HS / 2;
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(j, "rope_parameters");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(j, "rope_scaling");
    if (cJSON_IsObject(rp) && !cJSON_IsObject(rs)) rs = rp;
    double def = m->cfg.arch == ARCH_MIXTRAL ? 1e6 : 10000.0; /* class defaults */
    double theta = get_num(j, "rope_theta", cJSON_IsObject(rp) ? get_num(rp, "rope_theta", def) : def);
    if (!(theta > 0.0 && theta < 1e30))
        return ds_error(DS_ERR_INPUT, "%s: key \"rope_theta\" = %g is outside (0, 1e30)\n" CFG_HINT, path, theta);
    m->inv_freq = xmalloc(sizeof(float) * (size_t)half);
    for (int k = 0; k < half; k++)
        m->inv_freq[k] = (float)(1.0 / pow(theta, (double)(2 * k) / (double)HS));
    if (!cJSON_IsObject(rs)) return DS_OK;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!cJSON_IsString(t)) t = cJSON_GetObjectItemCaseSensitive(rs, "type");
    const char *type = cJSON_IsString(t) ? t->valuestring : "default";
    if (strcmp(type, "default") == 0) return DS_OK;
    double factor = get_num(rs, "factor", 1.0);
    if (!(factor > 0.0 && factor < 1e30))
        return ds_error(DS_ERR_INPUT, "%s: rope_scaling \"factor\" = %g is outside (0, 1e30)\n" CFG_HINT, path, factor);
    if (strcmp(type, "linear") == 0) {
        for (int k = 0; k < half; k++) m->inv_freq[k] = (float)(m->inv_freq[k] / factor);
        return DS_OK;
    }
    if (strcmp(type, "llama3") == 0) {
        double lo = get_num(rs, "low_freq_factor", 1.0), hi = get_num(rs, "high_freq_factor", 4.0);
        double orig = get_num(rs, "original_max_position_embeddings", 8192);
        if (!(lo > 0.0 && hi > lo && hi < 1e30 && orig >= 1.0 && orig < 1e30))
            return ds_error(DS_ERR_INPUT, "%s: rope_scaling llama3: expected 0 < low_freq_factor < high_freq_factor "
                            "and original_max_position_embeddings >= 1, got %g, %g, %g\n" CFG_HINT, path, lo, hi,
                            orig);
        float low_wl = (float)(orig / lo), high_wl = (float)(orig / hi);
        for (int k = 0; k < half; k++) {
            float f = m->inv_freq[k], wl = 2.0f * (float)M_PI / f;
            if (wl < high_wl) continue;
            if (wl > low_wl) { m->inv_freq[k] = (float)(f / factor); continue; }
            float s = (float)(((float)orig / wl - lo) / (hi - lo));
            m->inv_freq[k] = (1.0f - s) * (float)(f / factor) + s * f;
        }
        return DS_OK;
    }
    return ds_error(DS_ERR_INPUT, "%s: rope_scaling type \"%s\" is not supported (supported: default, linear, llama3)",
                    path, type);
}

/* MoE keys (§1.3): Mixtral num_local_experts (expert width = intermediate_size,
 * every layer sparse, always renormalised); Qwen2/3-MoE num_experts,
 * moe_intermediate_size, norm_topk_prob, decoder_sparse_step, mlp_only_layers,
 * Qwen2-MoE shared_expert_intermediate_size. */
static ds_status parse_moe(const cJSON *j, const char *path, model_config *c) {
    ds_status st;
    c->sparse_step = 1;
    if (c->arch == ARCH_MIXTRAL) {
        if ((st = get_int(j, path, "num_local_experts", 1, 0, 1, MAX_EXPERTS, &c->E)) ||
            (st = get_int(j, path, "num_experts_per_tok", 0, DS_MIN(2, c->E), 1, c->E, &c->K)))
            return st;
        c->IM = c->F;
        c->norm_topk = 1;
    } else if (c->arch == ARCH_QWEN2_MOE || c->arch == ARCH_QWEN3_MOE) {
        if ((st = get_int(j, path, "num_experts", 1, 0, 1, MAX_EXPERTS, &c->E)) ||
            (st = get_int(j, path, "num_experts_per_tok", 1, 0, 1, c->E, &c->K)) ||
            (st = get_int(j, path, "moe_intermediate_size", 1, 0, 1, MAX_INTER, &c->IM)) ||
            (st = get_int(j, path, "decoder_sparse_step", 0, 1, 1, MAX_LAYERS, &c->sparse_step)))
            return st;
        if (c->arch == ARCH_QWEN2_MOE &&
            (st = get_int(j, path, "shared_expert_intermediate_size", 0, 0, 0, MAX_INTER, &c->IS)))
            return st;
        c->norm_topk = get_bool(j, "norm_topk_prob", 0);
        const cJSON *mo = cJSON_GetObjectItemCaseSensitive(j, "mlp_only_layers");
        if (mo && !cJSON_IsNull(mo)) {
            if (!cJSON_IsArray(mo) || cJSON_GetArraySize(mo) > DS_MAX_MLP_ONLY)
                return ds_error(DS_ERR_INPUT, "%s: key \"mlp_only_layers\": expected a list of at most %d layer "
                                "indices", path, DS_MAX_MLP_ONLY);
            const cJSON *v;
            cJSON_ArrayForEach(v, mo) {
                if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 ||
                    v->valuedouble >= c->L)
                    return ds_error(DS_ERR_INPUT, "%s: key \"mlp_only_layers\": expected layer indices in [0, %d) "
                                    "(num_hidden_layers %d)\n" CFG_HINT, path, c->L, c->L);
                c->mlp_only[c->n_mlp_only++] = (int)v->valuedouble;
            }
        }
    } else {
        return DS_OK;
    }
    if (c->E > 0 && (c->K <= 0 || c->K > c->E || c->IM <= 0 || c->sparse_step <= 0))
        return ds_error(DS_ERR_INPUT, "%s: inconsistent MoE config (experts %d, experts per token %d, expert "
                        "intermediate size %d, decoder_sparse_step %d): expected 1 <= experts per token <= "
                        "experts and positive sizes", path, c->E, c->K, c->IM, c->sparse_step);
    return DS_OK;
}

/* ---- quantization_config (compressed-tensors QuantizationArgs) ---- */

static const char *strategy_str(quant_strategy s) { return scheme_strategy_name(s); }

static const char *actorder_str(quant_actorder a) {
    return a == QA_GROUP ? "group" : a == QA_STATIC ? "static" : "null";
}

/* "quantization_config: num_bits 4, strategy group, group_size 128, symmetric true, actorder null" */
static void qargs_str(const quant_args *a, char *buf, size_t cap) {
    snprintf(buf, cap, "quantization_config: num_bits %d, strategy %s, group_size %d, symmetric %s, actorder %s",
             a->num_bits, strategy_str(a->strategy), a->group_size, a->symmetric ? "true" : "false",
             actorder_str(a->actorder));
}

/* config_groups.<g>.weights -> quant_args, with the QuantizationArgs defaults
 * (num_bits 8, symmetric, strategy from group_size) and the subset doneshot
 * dequantizes: int, static, strategy tensor/channel/group, 2..8 bits. */
static ds_status parse_qweights(const cJSON *w, const char *path, const char *grp, quant_args *a) {
    char ctx[600];
    snprintf(ctx, sizeof ctx, "%s (quantization_config.config_groups.%.200s.weights)", path, grp);
    if (!cJSON_IsObject(w)) return ds_error(DS_ERR_INPUT, "%s: expected an object", ctx);
    ds_status st;
    int gs = -1;
    if ((st = get_int(w, ctx, "num_bits", 0, 8, 2, 8, &a->num_bits))) return st;
    const cJSON *gsj = cJSON_GetObjectItemCaseSensitive(w, "group_size");
    int gs_m1 = cJSON_IsNumber(gsj) && gsj->valuedouble == -1; /* -1: channel */
    if (!gs_m1 && (st = get_int(w, ctx, "group_size", 0, -1, 1, MAX_INTER, &gs))) return st;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(w, "type");
    a->type = cJSON_IsString(v) && strcmp(v->valuestring, "float") == 0 ? QT_FLOAT : QT_INT;
    if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && (strcmp(v->valuestring, "int") == 0 || a->type == QT_FLOAT)))
        return ds_error(DS_ERR_INPUT, "%s: quantization_config.config_groups.%s.weights.type: expected \"int\" or "
                        "\"float\"", path, grp);
    v = cJSON_GetObjectItemCaseSensitive(w, "block_structure");
    if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 2 && cJSON_IsNumber(v->child) &&
        cJSON_IsNumber(v->child->next) && v->child->valuedouble >= 1 && v->child->next->valuedouble >= 1 &&
        v->child->valuedouble <= MAX_INTER && v->child->next->valuedouble <= MAX_INTER) {
        a->block[0] = (int)v->child->valuedouble;
        a->block[1] = (int)v->child->next->valuedouble;
    } else if (v && !cJSON_IsNull(v)) {
        return ds_error(DS_ERR_INPUT, "%s: quantization_config.config_groups.%s.weights.block_structure: expected "
                        "null or [rows, cols]", path, grp);
    }
    v = cJSON_GetObjectItemCaseSensitive(w, "scale_dtype");
    if (cJSON_IsString(v) && !strcmp(v->valuestring, "torch.float8_e4m3fn")) {
        a->scale_dtype_set = 1;
        a->scale_dtype = DS_DTYPE_F8_E4M3;
    }
    v = cJSON_GetObjectItemCaseSensitive(w, "dynamic");
    if (v && !cJSON_IsNull(v) && !cJSON_IsFalse(v))
        return ds_error(DS_ERR_INPUT, "%s: quantization_config.config_groups.%s.weights.dynamic: only false is "
                        "supported", path, grp);
    v = cJSON_GetObjectItemCaseSensitive(w, "symmetric");
    if (v && !cJSON_IsNull(v) && !cJSON_IsBool(v))
        return ds_error(DS_ERR_INPUT, "%s: quantization_config.config_groups.%s.weights.symmetric: expected true or "
                        "false", path, grp);
    a->symmetric = v && cJSON_IsBool(v) ? cJSON_IsTrue(v) : 1;
    v = cJSON_GetObjectItemCaseSensitive(w, "strategy");
    if (!v || cJSON_IsNull(v)) a->strategy = gs > 0 ? QS_GROUP : gs_m1 ? QS_CHANNEL : QS_TENSOR;
    else if (cJSON_IsString(v) && strcmp(v->valuestring, "group") == 0) a->strategy = QS_GROUP;
    else if (cJSON_IsString(v) && strcmp(v->valuestring, "channel") == 0) a->strategy = QS_CHANNEL;
    else if (cJSON_IsString(v) && strcmp(v->valuestring, "tensor") == 0) a->strategy = QS_TENSOR;
    else if (cJSON_IsString(v) && strcmp(v->valuestring, "block") == 0 && a->block[0] > 0) a->strategy = QS_BLOCK;
    else if (cJSON_IsString(v) && strcmp(v->valuestring, "tensor_group") == 0) a->strategy = QS_TENSOR_GROUP;
    else
        return ds_error(DS_ERR_INPUT, "%s: quantization_config.config_groups.%s.weights.strategy: expected "
                        "\"group\", \"channel\", \"tensor\", \"block\" (with a block_structure) or "
                        "\"tensor_group\" (the strategies doneshot reads)", path, grp);
    if ((a->strategy == QS_GROUP || a->strategy == QS_TENSOR_GROUP) && gs <= 0)
        return ds_error(DS_ERR_INPUT, "%s: quantization_config.config_groups.%s.weights: strategy \"%s\" needs "
                        "a positive group_size", path, grp, strategy_str(a->strategy));
    a->group_size = a->strategy == QS_GROUP || a->strategy == QS_TENSOR_GROUP ? gs : -1;
    v = cJSON_GetObjectItemCaseSensitive(w, "actorder");
    a->actorder = QA_NONE;
    if (!v || cJSON_IsNull(v) || cJSON_IsFalse(v)) a->actorder = QA_NONE;
    else if (cJSON_IsTrue(v)) a->actorder = QA_GROUP;
    else if (cJSON_IsString(v) && (!strcmp(v->valuestring, "group") || !strcmp(v->valuestring, "dynamic")))
        a->actorder = QA_GROUP;
    else if (cJSON_IsString(v) && (!strcmp(v->valuestring, "static") || !strcmp(v->valuestring, "weight")))
        a->actorder = QA_STATIC;
    else
        return ds_error(DS_ERR_INPUT, "%s: quantization_config.config_groups.%s.weights.actorder: expected null, "
                        "\"static\", \"weight\", \"group\" or \"dynamic\"", path, grp);
    if (a->actorder == QA_GROUP && a->strategy != QS_GROUP)
        return ds_error(DS_ERR_INPUT, "%s: quantization_config.config_groups.%s.weights: actorder \"group\" needs "
                        "strategy \"group\"", path, grp);
    return DS_OK;
}

/* config_groups.<g>.input_activations -> *in (num_bits 0 when null) and
 * weights->act; refused unless scheme_act_supported. */
static ds_status parse_qact(const cJSON *v, const char *path, const char *grp, quant_args *wa, quant_args *in) {
    memset(in, 0, sizeof *in);
    wa->act = QACT_NONE;
    if (!v || cJSON_IsNull(v)) return DS_OK;
    char ctx[600];
    snprintf(ctx, sizeof ctx, "%s (quantization_config.config_groups.%.200s.input_activations)", path, grp);
    if (!cJSON_IsObject(v)) return ds_error(DS_ERR_INPUT, "%s: expected an object or null", ctx);
    ds_status st;
    int gs = -1;
    if ((st = get_int(v, ctx, "num_bits", 0, 8, 2, 8, &in->num_bits))) return st;
    if ((st = get_int(v, ctx, "group_size", 0, -1, -1, MAX_INTER, &gs))) return st;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "type");
    in->type = cJSON_IsString(t) && !strcmp(t->valuestring, "float") ? QT_FLOAT : QT_INT;
    t = cJSON_GetObjectItemCaseSensitive(v, "symmetric");
    in->symmetric = cJSON_IsBool(t) ? cJSON_IsTrue(t) : 1;
    t = cJSON_GetObjectItemCaseSensitive(v, "dynamic");
    in->dynamic = cJSON_IsTrue(t) ? QD_DYNAMIC : cJSON_IsString(t) && !strcmp(t->valuestring, "local") ? QD_LOCAL
                                                                                                       : QD_STATIC;
    t = cJSON_GetObjectItemCaseSensitive(v, "strategy");
    const char *s = cJSON_IsString(t) ? t->valuestring : gs > 0 ? "group" : "tensor";
    in->strategy = !strcmp(s, "token") ? QS_TOKEN : !strcmp(s, "group") ? QS_GROUP : !strcmp(s, "channel") ? QS_CHANNEL
                   : !strcmp(s, "tensor_group") ? QS_TENSOR_GROUP : !strcmp(s, "block") ? QS_BLOCK : QS_TENSOR;
    in->group_size = gs;
    t = cJSON_GetObjectItemCaseSensitive(v, "scale_dtype");
    if (cJSON_IsString(t) && !strcmp(t->valuestring, "torch.float8_e4m3fn")) {
        in->scale_dtype_set = 1;
        in->scale_dtype = DS_DTYPE_F8_E4M3;
    }
    if (!scheme_act_supported(in))
        return ds_error(DS_ERR_INPUT, "%s: type %s, num_bits %d, strategy %s, dynamic %s is not an input activation "
                        "scheme doneshot evaluates (supported: %s)", ctx, scheme_type_name(in->type), in->num_bits,
                        s, in->dynamic == QD_LOCAL ? "local" : in->dynamic ? "true" : "false",
                        scheme_act_supported_list());
    wa->act = in->dynamic == QD_LOCAL ? QACT_INPUT_GLOBAL_SCALE : in->dynamic ? QACT_DYNAMIC : QACT_INPUT_SCALE;
    return DS_OK;
}

/* The distinct weight args of quantization_config.config_groups into
 * m->qargs (each quantized module must match one of them). */
static ds_status parse_qconfig(const cJSON *qc, const char *path, model *m) {
    const cJSON *cg = cJSON_GetObjectItemCaseSensitive(qc, "config_groups"), *g;
    if (!cJSON_IsObject(cg))
        return ds_error(DS_ERR_INPUT, "%s: quantization_config.config_groups: expected an object of groups\n"
                        "hint: a doneshot or llm-compressor pack-quantized checkpoint has one", path);
    ds_status st;
    cJSON_ArrayForEach(g, cg) {
        const cJSON *w = cJSON_IsObject(g) ? cJSON_GetObjectItemCaseSensitive(g, "weights") : NULL;
        if (!w || cJSON_IsNull(w)) continue; /* no weight quantization in this group */
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(g, "format");
        quant_args a, in;
        memset(&a, 0, sizeof a);
        if ((st = parse_qweights(w, path, g->string, &a))) return st;
        if ((st = parse_qact(cJSON_GetObjectItemCaseSensitive(g, "input_activations"), path, g->string, &a, &in)))
            return st;
        const char *fname = scheme_format_name(&a);
        if (!fname)
            return ds_error(DS_ERR_INPUT, "%s: quantization_config.config_groups.%s: no checkpoint format doneshot "
                            "reads holds these weights (type %s, num_bits %d, strategy %s; formats: %s)", path,
                            g->string, scheme_type_name(a.type), a.num_bits, strategy_str(a.strategy),
                            scheme_format_list());
        if (f && !cJSON_IsNull(f) && !(cJSON_IsString(f) && strcmp(f->valuestring, fname) == 0))
            return ds_error(DS_ERR_INPUT, "%s: quantization_config.config_groups.%s.format: expected \"%s\" for "
                            "this scheme (the formats doneshot reads: %s)", path, g->string, fname,
                            scheme_format_list());
        int dup = 0;
        for (int i = 0; i < m->nqargs; i++)
            dup |= memcmp(&m->qargs[i], &a, sizeof a) == 0 && memcmp(&m->qact[i], &in, sizeof in) == 0;
        if (dup) continue;
        if (m->nqargs == DS_MAX_QARGS)
            return ds_error(DS_ERR_INPUT, "%s: quantization_config has more than %d distinct weight schemes",
                            path, DS_MAX_QARGS);
        m->qact[m->nqargs] = in;
        m->qargs[m->nqargs++] = a;
    }
    if (m->nqargs == 0)
        return ds_error(DS_ERR_INPUT, "%s: quantization_config.config_groups has no group with \"weights\"\n"
                        "hint: doneshot reads weight-quantized (W4A16, W8A16) pack-quantized checkpoints", path);
    return DS_OK;
}

static ds_status parse_config(const char *path, const char *text, model *m, int allow_quantized) {
    model_config *c = &m->cfg;
    ds_status st = DS_OK;
    cJSON *j = cJSON_Parse(text);
    if (!j || !cJSON_IsObject(j)) {
        st = ds_error(DS_ERR_INPUT, "%s: not a valid JSON object", path);
        goto done;
    }
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(j, "architectures");
    const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    if (!cJSON_IsString(a0)) {
        st = ds_error(DS_ERR_INPUT, "%s: missing \"architectures\" (expected e.g. [\"LlamaForCausalLM\"])", path);
        goto done;
    }
    snprintf(c->arch_name, sizeof c->arch_name, "%s", a0->valuestring);
    size_t k;
    for (k = 0; k < DS_ARRAY_LEN(g_archs); k++)
        if (strcmp(g_archs[k].name, a0->valuestring) == 0) break;
    if (k == DS_ARRAY_LEN(g_archs)) {
        st = ds_error(DS_ERR_INPUT,
                      "%s: unsupported architecture %s (supported: " SUPPORTED_ARCHS ")", path, a0->valuestring);
        goto done;
    }
    c->arch = g_archs[k].arch;
    if ((st = get_int(j, path, "hidden_size", 1, 0, 1, MAX_HIDDEN, &c->C)) ||
        (st = get_int(j, path, "intermediate_size", 1, 0, 1, MAX_INTER, &c->F)) ||
        (st = get_int(j, path, "num_hidden_layers", 1, 0, 1, MAX_LAYERS, &c->L)) ||
        (st = get_int(j, path, "num_attention_heads", 1, 0, 1, MAX_HEADS, &c->NH)) ||
        (st = get_int(j, path, "num_key_value_heads", 0, c->NH, 1, c->NH, &c->NKV)) ||
        (st = get_int(j, path, "vocab_size", 1, 0, 1, MAX_VOCAB, &c->V)) ||
        (st = get_int(j, path, "max_position_embeddings", 0, 2048, 2, MAX_POS, &c->max_pos)) ||
        (st = get_int(j, path, "head_dim", 0, c->C / c->NH, 2, MAX_HEAD_DIM, &c->HS)))
        goto done;
    if (c->HS < 2) { /* derived from hidden_size / num_attention_heads */
        st = ds_error(DS_ERR_INPUT, "%s: head_dim = hidden_size / num_attention_heads = %d / %d = %d, expected >= 2\n"
                      CFG_HINT, path, c->C, c->NH, c->HS);
        goto done;
    }
    if ((int64_t)c->NH * c->HS > MAX_QDIM) {
        st = ds_error(DS_ERR_INPUT, "%s: num_attention_heads x head_dim = %d x %d = %lld is outside the supported "
                      "range [1, %d]\n" CFG_HINT, path, c->NH, c->HS, (long long)c->NH * c->HS, MAX_QDIM);
        goto done;
    }
    if (c->NH % c->NKV != 0 || c->HS % 2 != 0) {
        st = ds_error(DS_ERR_INPUT,
                      "%s: inconsistent dimensions (hidden_size %d, intermediate_size %d, layers %d, "
                      "heads %d, kv heads %d, head_dim %d, vocab %d): expected num_attention_heads "
                      "divisible by num_key_value_heads and an even head_dim\n" CFG_HINT, path, c->C, c->F, c->L, c->NH,
                      c->NKV, c->HS, c->V);
        goto done;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(j, "hidden_act");
    if (cJSON_IsString(act) && strcmp(act->valuestring, "silu") != 0) {
        st = ds_error(DS_ERR_INPUT, "%s: hidden_act \"%s\" is not supported (expected \"silu\")", path,
                      act->valuestring);
        goto done;
    }
    double eps = get_num(j, "rms_norm_eps", 1e-6);
    if (!(eps >= 0.0 && eps <= 1.0)) {
        st = ds_error(DS_ERR_INPUT, "%s: key \"rms_norm_eps\" = %g is outside [0, 1]\n" CFG_HINT, path, eps);
        goto done;
    }
    c->eps = (float)eps;
    c->tie = get_bool(j, "tie_word_embeddings", 0);
    c->qkv_bias = c->arch == ARCH_QWEN2       ? 1
                  : c->arch == ARCH_QWEN2_MOE ? get_bool(j, "qkv_bias", 1)
                                              : get_bool(j, "attention_bias", 0);
    c->o_bias = c->arch == ARCH_QWEN2 || c->arch == ARCH_QWEN2_MOE ? 0 : get_bool(j, "attention_bias", 0);
    c->mlp_bias = c->arch == ARCH_LLAMA ? get_bool(j, "mlp_bias", 0) : 0;
    c->qk_norm = c->arch == ARCH_QWEN3 || c->arch == ARCH_QWEN3_MOE;
    if ((st = parse_moe(j, path, c))) goto done;
    c->bos_id = -1;
    c->eos_id = -1;
    int v;
    if (get_int(j, path, "bos_token_id", 0, -1, 0, 1 << 30, &v) == DS_OK) c->bos_id = v;
    if (get_int(j, path, "eos_token_id", 0, -1, 0, 1 << 30, &v) == DS_OK) c->eos_id = v;
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(j, "torch_dtype");
    if (!cJSON_IsString(dt)) dt = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    c->dtype = DS_DTYPE_F32;
    if (cJSON_IsString(dt)) {
        if (strcmp(dt->valuestring, "bfloat16") == 0) c->dtype = DS_DTYPE_BF16;
        else if (strcmp(dt->valuestring, "float16") == 0) c->dtype = DS_DTYPE_F16;
        else if (strcmp(dt->valuestring, "float32") == 0) c->dtype = DS_DTYPE_F32;
        else {
            st = ds_error(DS_ERR_INPUT, "%s: torch_dtype \"%s\" is not supported (expected bfloat16, float16 or float32)",
                          path, dt->valuestring);
            goto done;
        }
    }
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(j, "quantization_config");
    if (qc && !cJSON_IsNull(qc) && allow_quantized) {
        const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(qc, "format");
        const cJSON *qm = cJSON_GetObjectItemCaseSensitive(qc, "quant_method");
        if (!cJSON_IsString(qm) || strcmp(qm->valuestring, "compressed-tensors") != 0 || !cJSON_IsString(fmt) ||
            !scheme_format_known(fmt->valuestring)) {
            st = ds_error(DS_ERR_INPUT, "%s: quantization_config is not compressed-tensors in a format doneshot "
                          "reads (%s)", path, scheme_format_list());
            goto done;
        }
        m->quantized = 1;
        if ((st = parse_qconfig(qc, path, m))) goto done;
    } else if (qc && !cJSON_IsNull(qc)) {
        st = ds_error(DS_ERR_INPUT, "%s: the model is already quantized (config.json has quantization_config)\n"
                      "hint: quantize the original (unquantized) checkpoint", path);
        goto done;
    }
    st = rope_setup(j, path, m);
done:
    cJSON_Delete(j);
    return st;
}

/* ---- tensors ---- */

static ds_status expect_tensor(const model *m, const char *name, int64_t d0, int64_t d1) {
    const st_tensor *t = st_find(m->st, name);
    if (!t)
        return ds_error(DS_ERR_INPUT, "%s: tensor '%s' not found in the checkpoint", m->dir, name);
    int ndim = d1 < 0 ? 1 : 2;
    if (t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1))
        return ds_error(DS_ERR_INPUT, "%s: tensor '%s' has shape [%lld%s%lld], expected [%lld%s%lld]",
                        st_shard_path(m->st, t->shard), name, (long long)t->shape[0], t->ndim > 1 ? ", " : "",
                        t->ndim > 1 ? (long long)t->shape[1] : 0LL, (long long)d0, ndim > 1 ? ", " : "",
                        ndim > 1 ? (long long)d1 : 0LL);
    if (t->dtype != DS_DTYPE_F32 && t->dtype != DS_DTYPE_BF16 && t->dtype != DS_DTYPE_F16)
        return ds_error(DS_ERR_INPUT, "%s: tensor '%s' has dtype %s, expected F32, BF16 or F16",
                        st_shard_path(m->st, t->shard), name, ds_dtype_name(t->dtype));
    return DS_OK;
}

int model_num_inputs(const model_config *c) { return INP_EXPERT0 + 2 * c->E; }

int model_input_dim(const model_config *c, int input_id) {
    switch (input_id) {
    case INP_ATTN: case INP_MLP: return c->C;
    case INP_O: return c->NH * c->HS;
    case INP_DOWN: return c->F;
    case INP_SHARED_DOWN: return c->IS;
    default: return (input_id - INP_EXPERT0) % 2 ? c->IM : c->C;
    }
}

int model_layer_sparse(const model_config *c, int l) {
    if (c->E <= 0) return 0;
    for (int i = 0; i < c->n_mlp_only; i++)
        if (c->mlp_only[i] == l) return 0;
    return (l + 1) % c->sparse_step == 0;
}

static int lin_has_bias(const model_config *c, int role) {
    if (role <= LIN_V) return c->qkv_bias;
    if (role == LIN_O) return c->o_bias;
    if (role <= LIN_DOWN) return c->mlp_bias;
    return 0;
}

static void put_lin(layer_linear *out, int *n, const char *name, int in, int o, int inp, int role, int expert,
                    int quantizable) {
    if (out) {
        layer_linear *li = &out[*n];
        memset(li, 0, sizeof *li);
        snprintf(li->name, sizeof li->name, "%s", name);
        li->in = in;
        li->out = o;
        li->input_id = inp;
        li->role = role;
        li->expert = expert;
        li->quantizable = quantizable;
    }
    (*n)++;
}

int model_layer_linears(const model_config *c, int l, int all_experts, layer_linear *out) {
    const int qd = c->NH * c->HS, kvd = c->NKV * c->HS, C = c->C;
    char nm[160];
    int n = 0;
    static const char *attn[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    const int aout[4] = {qd, kvd, kvd, C};
    for (int k = 0; k < 4; k++) {
        snprintf(nm, sizeof nm, "model.layers.%d.self_attn.%s", l, attn[k]);
        put_lin(out, &n, nm, k == LIN_O ? qd : C, aout[k], k == LIN_O ? INP_O : INP_ATTN, k, -1, 1);
    }
    if (!model_layer_sparse(c, l)) {
        static const char *mlp[3] = {"gate_proj", "up_proj", "down_proj"};
        for (int k = 0; k < 3; k++) {
            snprintf(nm, sizeof nm, "model.layers.%d.mlp.%s", l, mlp[k]);
            put_lin(out, &n, nm, k == 2 ? c->F : C, k == 2 ? C : c->F, k == 2 ? INP_DOWN : INP_MLP, LIN_GATE + k,
                    -1, 1);
        }
        return n;
    }
    const int mix = c->arch == ARCH_MIXTRAL;
    const char *blk = mix ? "block_sparse_moe" : "mlp";
    static const char *qn[3] = {"gate_proj", "up_proj", "down_proj"}, *mn[3] = {"w1", "w3", "w2"};
    snprintf(nm, sizeof nm, "model.layers.%d.%s.gate", l, blk);
    put_lin(out, &n, nm, C, c->E, INP_MLP, LIN_ROUTER, -1, 0);
    for (int e = 0; e < c->E; e++)
        for (int k = 0; k < 3; k++) {
            snprintf(nm, sizeof nm, "model.layers.%d.%s.experts.%d.%s", l, blk, e, mix ? mn[k] : qn[k]);
            int inp = k == 2 ? INP_EXPERT_DOWN(e) : all_experts ? INP_MLP : INP_EXPERT_UP(e);
            put_lin(out, &n, nm, k == 2 ? c->IM : C, k == 2 ? C : c->IM, inp, LIN_GATE + k, e, 1);
        }
    if (c->IS > 0) {
        for (int k = 0; k < 3; k++) {
            snprintf(nm, sizeof nm, "model.layers.%d.mlp.shared_expert.%s", l, qn[k]);
            put_lin(out, &n, nm, k == 2 ? c->IS : C, k == 2 ? C : c->IS, k == 2 ? INP_SHARED_DOWN : INP_MLP,
                    LIN_GATE + k, -2, 1);
        }
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.shared_expert_gate", l);
        put_lin(out, &n, nm, C, 1, INP_MLP, LIN_SHARED_GATE, -2, 0);
    }
    return n;
}

/* Name-based check without building lists: model.layers.N.<suffix>. */
int model_linear_quantizable(const model_config *c, const char *module) {
    int l, pos = 0;
    if (sscanf(module, "model.layers.%d.%n", &l, &pos) != 1 || pos == 0 || l < 0 || l >= c->L) return 0;
    const char *s = module + pos;
    static const char *attn[4] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"};
    for (int k = 0; k < 4; k++)
        if (strcmp(s, attn[k]) == 0) return 1;
    int sparse = model_layer_sparse(c, l);
    static const char *mlp[3] = {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
    for (int k = 0; k < 3; k++)
        if (strcmp(s, mlp[k]) == 0) return !sparse;
    if (!sparse) return 0;
    const int mix = c->arch == ARCH_MIXTRAL;
    const char *pre = mix ? "block_sparse_moe.experts." : "mlp.experts.";
    size_t pl = strlen(pre);
    if (strncmp(s, pre, pl) == 0) {
        char *end;
        long e = strtol(s + pl, &end, 10);
        if (end == s + pl || *end != '.' || e < 0 || e >= c->E) return 0;
        end++;
        if (mix) return strcmp(end, "w1") == 0 || strcmp(end, "w2") == 0 || strcmp(end, "w3") == 0;
        return strcmp(end, "gate_proj") == 0 || strcmp(end, "up_proj") == 0 || strcmp(end, "down_proj") == 0;
    }
    if (c->IS > 0)
        return strcmp(s, "mlp.shared_expert.gate_proj") == 0 || strcmp(s, "mlp.shared_expert.up_proj") == 0 ||
               strcmp(s, "mlp.shared_expert.down_proj") == 0;
    return 0;
}

/* "[a, b]" */
static const char *shape_str(const st_tensor *t, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < t->ndim && n < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
    return buf;
}

static int is_float_dtype(ds_dtype d) { return d == DS_DTYPE_F32 || d == DS_DTYPE_BF16 || d == DS_DTYPE_F16; }

/* DS_ERR_INPUT: "<dir>: <module>.<suffix>: expected <want>, got <dtype shape>" + the quantization args. */
static ds_status packed_error(const model *m, const char *module, const char *suffix, const st_tensor *t,
                              const quant_args *a, const char *fmt_want, ...) __attribute__((format(printf, 6, 7)));
static ds_status packed_error(const model *m, const char *module, const char *suffix, const st_tensor *t,
                              const quant_args *a, const char *fmt_want, ...) {
    char want[200], got[200], shp[160], qa[200];
    va_list ap;
    va_start(ap, fmt_want);
    vsnprintf(want, sizeof want, fmt_want, ap);
    va_end(ap);
    if (t) snprintf(got, sizeof got, "%s %s", ds_dtype_name(t->dtype), shape_str(t, shp, sizeof shp));
    else snprintf(got, sizeof got, "no such tensor");
    qargs_str(a, qa, sizeof qa);
    return ds_error(DS_ERR_INPUT, "%s: tensor '%s.%s': expected %s, got %s (%s)\n"
                    "hint: the compressed-tensors tensors do not match config.json's quantization_config; "
                    "re-export the checkpoint", m->dir, module, suffix, want, got, qa);
}

/* Validate the stored tensors of Linear `module` [out, in] against the
 * quantization args a: every entry of the scheme's tensor table
 * (src/scheme.h: dtype, shape, present iff its predicate; g_idx values in
 * [0, groups) when check_values, O(in) reads). DS_ERR_INPUT naming the
 * tensor otherwise. */
static ds_status check_packed(const model *m, const char *module, int out, int in, const quant_args *a,
                              int check_values) {
    char name[300], want[200];
    for (int k = 0; k < scheme_read_entries(a); k++) {
        const char *suffix = scheme_read_suffix(a, k);
        snprintf(name, sizeof name, "%s.%s", module, suffix);
        const st_tensor *t = st_find(m->st, name);
        int bad = scheme_read_check(a, k, out, in, t, check_values, want, sizeof want);
        if (bad == 2)
            return ds_error(DS_ERR_INPUT, "%s: tensor '%s': %s\nhint: the checkpoint is corrupt; re-export it",
                            m->dir, name, want);
        if (bad) return packed_error(m, module, suffix, t, a, "%s", want);
    }
    return DS_OK;
}

/* 1 if Linear `module` of a quantized checkpoint is stored quantized: no
 * "<module>.weight" (pack-quantized: weight_packed), or a float8 one
 * (float-quantized), or one with a weight_scale beside it. */
static int stored_quantized(const model *m, const char *module) {
    if (!m->quantized) return 0;
    char name[300];
    snprintf(name, sizeof name, "%s.weight", module);
    const st_tensor *t = st_find(m->st, name);
    if (!t || t->dtype == DS_DTYPE_F8_E4M3) return 1;
    snprintf(name, sizeof name, "%s.weight_scale", module);
    return st_find(m->st, name) != NULL;
}

/* The quantization args (one of m->qargs) that the pack-quantized tensors of
 * `module` match; else the mismatch against the first. */
static ds_status select_qargs(const model *m, const char *module, int out, int in, int check_values,
                              const quant_args **a) {
    for (int i = 1; i < m->nqargs; i++)
        if (check_packed(m, module, out, in, &m->qargs[i], check_values) == DS_OK) {
            *a = &m->qargs[i];
            return DS_OK;
        }
    *a = &m->qargs[0];
    return check_packed(m, module, out, in, &m->qargs[0], check_values);
}

/* ---- config.json vs the tensors present ---- */

/* 1 if Linear `module` is stored (as .weight or .weight_packed); its [out, in]
 * as far as known (-1: unknown). */
static int linear_dims(const model *m, const char *module, int64_t *out, int64_t *in) {
    char name[300];
    *out = *in = -1;
    snprintf(name, sizeof name, "%s.weight", module);
    const st_tensor *t = st_find(m->st, name);
    if (!t) {
        snprintf(name, sizeof name, "%s.weight_packed", module);
        t = st_find(m->st, name);
        if (t && t->ndim == 2) *out = t->shape[0];
        return t != NULL;
    }
    if (t->ndim == 2) {
        *out = t->shape[0];
        *in = t->shape[1];
    }
    return 1;
}

/* DS_ERR_INPUT "config.json: KEYS = VALUE contradicts the checkpoint: tensor
 * 'T' has shape [..] (WHAT GOT)"; T is module.weight, module.weight_packed or
 * `module` itself, whichever is stored. */
static ds_status contradicts(const model *m, const char *keys, long long value, const char *module,
                             const char *what, long long got) {
    static const char *const suffix[] = {".weight", ".weight_packed", ""};
    char name[300], shp[160] = "?";
    for (size_t k = 0; k < DS_ARRAY_LEN(suffix); k++) {
        snprintf(name, sizeof name, "%s%s", module, suffix[k]);
        const st_tensor *t = st_find(m->st, name);
        if (t) {
            shape_str(t, shp, sizeof shp);
            break;
        }
    }
    return ds_error(DS_ERR_INPUT, "%s/config.json: %s = %lld contradicts the checkpoint: tensor '%s' has shape %s "
                    "(%s %lld)\nhint: config.json must describe the checkpoint's safetensors (same model, unedited)",
                    m->dir, keys, value, name, shp, what, got);
}

/* Number of modules fmt(i) (printf with one %d) stored, probing i = 0, 1, ...
 * up to limit. */
static int count_stored(const model *m, const char *fmt, int limit) {
    char mod[300];
    int64_t o, i;
    int n = 0;
    for (; n < limit; n++) {
        snprintf(mod, sizeof mod, fmt, n);
        if (!linear_dims(m, mod, &o, &i)) break;
    }
    return n;
}

/* Every config.json size against the tensors it describes (embedding, layer
 * count, layer 0 attention, the first dense MLP, the first MoE block: router,
 * expert count and widths, shared expert), so a contradicting config fails
 * here with a message naming the key, before anything is sized from it. */
static ds_status check_config_tensors(const model *m) {
    const model_config *c = &m->cfg;
    char name[300], fmt[300];
    int64_t o, i;
    const st_tensor *t = st_find(m->st, "model.embed_tokens.weight");
    if (t && t->ndim == 2 && t->shape[1] != c->C)
        return contradicts(m, "hidden_size", c->C, "model.embed_tokens.weight", "columns", t->shape[1]);
    if (t && t->ndim == 2 && t->shape[0] != c->V)
        return contradicts(m, "vocab_size", c->V, "model.embed_tokens.weight", "rows", t->shape[0]);
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", c->L);
    if (st_find(m->st, name))
        return ds_error(DS_ERR_INPUT, "%s/config.json: num_hidden_layers = %d contradicts the checkpoint: it has "
                        "'%s' (more layers)\nhint: config.json must describe the checkpoint's safetensors",
                        m->dir, c->L, name);
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", c->L - 1);
    if (!st_find(m->st, name)) {
        int n = 0;
        for (; n < c->L; n++) {
            snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", n);
            if (!st_find(m->st, name)) break;
        }
        return ds_error(DS_ERR_INPUT, "%s/config.json: num_hidden_layers = %d contradicts the checkpoint: it has "
                        "%d layers ('%s' not found)\nhint: config.json must describe the checkpoint's safetensors",
                        m->dir, c->L, n, name);
    }
    const long long qd = (long long)c->NH * c->HS, kvd = (long long)c->NKV * c->HS;
    if (linear_dims(m, "model.layers.0.self_attn.q_proj", &o, &i)) {
        if (o >= 0 && o != qd)
            return contradicts(m, "num_attention_heads x head_dim", qd, "model.layers.0.self_attn.q_proj",
                               "output rows", o);
        if (i >= 0 && i != c->C)
            return contradicts(m, "hidden_size", c->C, "model.layers.0.self_attn.q_proj", "input columns", i);
    }
    if (linear_dims(m, "model.layers.0.self_attn.k_proj", &o, &i) && o >= 0 && o != kvd)
        return contradicts(m, "num_key_value_heads x head_dim", kvd, "model.layers.0.self_attn.k_proj",
                           "output rows", o);
    if (linear_dims(m, "model.layers.0.self_attn.o_proj", &o, &i) && i >= 0 && i != qd)
        return contradicts(m, "num_attention_heads x head_dim", qd, "model.layers.0.self_attn.o_proj",
                           "input columns", i);
    int dense = -1, sparse = -1;
    for (int l = 0; l < c->L && (dense < 0 || sparse < 0); l++) {
        if (model_layer_sparse(c, l)) sparse = sparse < 0 ? l : sparse;
        else dense = dense < 0 ? l : dense;
    }
    if (dense >= 0) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate_proj", dense);
        if (linear_dims(m, name, &o, &i) && o >= 0 && o != c->F)
            return contradicts(m, "intermediate_size", c->F, name, "output rows", o);
    }
    if (sparse < 0) return DS_OK;
    const int mix = c->arch == ARCH_MIXTRAL;
    const char *blk = mix ? "block_sparse_moe" : "mlp", *ekey = mix ? "num_local_experts" : "num_experts";
    snprintf(name, sizeof name, "model.layers.%d.%s.gate", sparse, blk);
    if (linear_dims(m, name, &o, &i) && o >= 0 && o != c->E) return contradicts(m, ekey, c->E, name, "output rows", o);
    snprintf(fmt, sizeof fmt, "model.layers.%d.%s.experts.%%d.%s", sparse, blk, mix ? "w1" : "gate_proj");
    snprintf(name, sizeof name, fmt, c->E);
    if (linear_dims(m, name, &o, &i))
        return ds_error(DS_ERR_INPUT, "%s/config.json: %s = %d contradicts the checkpoint: it has '%s' (more "
                        "experts)\nhint: config.json must describe the checkpoint's safetensors", m->dir, ekey,
                        c->E, name);
    snprintf(name, sizeof name, fmt, c->E - 1);
    if (!linear_dims(m, name, &o, &i)) {
        int n = count_stored(m, fmt, c->E);
        snprintf(name, sizeof name, fmt, n);
        return ds_error(DS_ERR_INPUT, "%s/config.json: %s = %d contradicts the checkpoint: layer %d has %d experts "
                        "('%s' not found)\nhint: config.json must describe the checkpoint's safetensors", m->dir,
                        ekey, c->E, sparse, n, name);
    }
    snprintf(name, sizeof name, fmt, 0);
    if (linear_dims(m, name, &o, &i) && o >= 0 && o != c->IM)
        return contradicts(m, mix ? "intermediate_size" : "moe_intermediate_size", c->IM, name, "output rows", o);
    snprintf(name, sizeof name, "model.layers.%d.mlp.shared_expert.gate_proj", sparse);
    if (c->IS > 0 && linear_dims(m, name, &o, &i) && o >= 0 && o != c->IS)
        return contradicts(m, "shared_expert_intermediate_size", c->IS, name, "output rows", o);
    if (c->IS == 0 && linear_dims(m, name, &o, &i))
        return ds_error(DS_ERR_INPUT, "%s/config.json: shared_expert_intermediate_size is 0 or absent, but the "
                        "checkpoint has '%s'\nhint: config.json must describe the checkpoint's safetensors",
                        m->dir, name);
    return DS_OK;
}

static ds_status check_tensors(const model *m) {
    const model_config *c = &m->cfg;
    char name[256];
    ds_status st;
    if ((st = check_config_tensors(m))) return st;
    if ((st = expect_tensor(m, "model.embed_tokens.weight", c->V, c->C))) return st;
    if ((st = expect_tensor(m, "model.norm.weight", c->C, -1))) return st;
    if (!c->tie && (st = expect_tensor(m, "lm_head.weight", c->V, c->C))) {
        ds_error_prefix("tie_word_embeddings is false");
        return st;
    }
    layer_linear *ll = xmalloc(sizeof(layer_linear) * (3 * (size_t)c->E + 12));
    for (int l = 0; l < c->L; l++) {
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        if ((st = expect_tensor(m, name, c->C, -1))) goto out;
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        if ((st = expect_tensor(m, name, c->C, -1))) goto out;
        if (c->qk_norm) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.q_norm.weight", l);
            if ((st = expect_tensor(m, name, c->HS, -1))) goto out;
            snprintf(name, sizeof name, "model.layers.%d.self_attn.k_norm.weight", l);
            if ((st = expect_tensor(m, name, c->HS, -1))) goto out;
        }
        int nl = model_layer_linears(c, l, 1, ll);
        for (int k = 0; k < nl; k++) {
            const layer_linear *li = &ll[k];
            const quant_args *a;
            snprintf(name, sizeof name, "%s.weight", li->name);
            if (stored_quantized(m, li->name)) {
                if ((st = select_qargs(m, li->name, li->out, li->in, 0, &a))) goto out;
            } else if ((st = expect_tensor(m, name, li->out, li->in))) goto out;
            if (lin_has_bias(c, li->role)) {
                snprintf(name, sizeof name, "%s.bias", li->name);
                if ((st = expect_tensor(m, name, li->out, -1))) goto out;
            }
        }
    }
out:
    free(ll);
    return st;
}

static ds_status open_impl(const char *dir, model *m, int allow_quantized) {
    memset(m, 0, sizeof *m);
    if (!ds_is_dir(dir))
        return ds_error(DS_ERR_INPUT, "model directory '%s' does not exist\n"
                        "hint: pass --model DIR or set \"model\" in the recipe", dir);
    m->dir = xstrdup(dir);
    char *path = ds_path_join(dir, "config.json"), *text = NULL;
    ds_status st = ds_read_file(path, &text, NULL);
    if (st == DS_OK) st = parse_config(path, text, m, allow_quantized);
    free(text);
    free(path);
    if (st == DS_OK) st = st_open_dir(dir, &m->st);
    if (st == DS_OK) st = check_tensors(m);
    if (st != DS_OK) model_close(m);
    return st;
}

ds_status model_open(const char *dir, model *m) { return open_impl(dir, m, 0); }
ds_status model_open_quantized_ok(const char *dir, model *m) { return open_impl(dir, m, 1); }

void model_close(model *m) {
    if (!m) return;
    st_close(m->st);
    free(m->dir);
    free(m->inv_freq);
    memset(m, 0, sizeof *m);
}

/* ---- loading (with the non-finite check) ---- */

/* Nonzero when x[0, n) holds an inf or NaN: exponent bits all ones <=>
 * (u & 0x7f800000) + 0x00800000 has bit 31 set; branch-free AND/ADD/OR that
 * the compiler vectorizes. */
static uint32_t nonfinite_bits(const float *x, size_t n) {
    uint32_t acc = 0;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        uint32_t blk = 0;
        for (int k = 0; k < 64; k++) {
            uint32_t u;
            memcpy(&u, &x[i + k], sizeof u);
            blk |= (u & 0x7f800000u) + 0x00800000u;
        }
        acc |= blk;
    }
    for (; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        acc |= (u & 0x7f800000u) + 0x00800000u;
    }
    return acc & 0x80000000u;
}

/* Index of the first inf/NaN of x[0, n), or n when all are finite. */
static size_t first_nonfinite(const float *x, size_t n) {
    if (!nonfinite_bits(x, n)) return n;
    size_t i = 0;
    while (i < n && isfinite(x[i])) i++;
    return i;
}

/* Conversion to f32 fused with the finite check: each thread converts its
 * range in cache-sized pieces and checks each piece while it is in cache,
 * so the check adds no memory traffic. */
#define CONV_PIECE 8192
typedef struct conv_ctx {
    float *dst;
    const unsigned char *src;
    ds_dtype dt;
    int check;
    atomic_int bad;
} conv_ctx;

static void conv_range(void *p, size_t lo, size_t hi) {
    conv_ctx *c = p;
    const size_t es = ds_dtype_size(c->dt);
    uint32_t bad = 0;
    for (size_t a = lo; a < hi; a += CONV_PIECE) {
        size_t n = DS_MIN(CONV_PIECE, hi - a);
        ds_convert_to_f32(c->dst + a, c->src + a * es, c->dt, n); /* dtype checked by the caller */
        if (c->check) bad |= nonfinite_bits(c->dst + a, n);
    }
    if (bad) atomic_store_explicit(&c->bad, 1, memory_order_relaxed);
}

static const char *nonfinite_name(float v) { return isnan(v) ? "nan" : v > 0 ? "inf" : "-inf"; }

/* DS_ERR_INPUT "<shard>: <tensor>: element [r, c] is inf" for the value v of
 * element idx of a [rows, cols] tensor (cols <= 0: 1-D). */
static ds_status nonfinite_error(const model *m, const st_tensor *t, const char *name, float v, size_t idx,
                                 int64_t cols) {
    char at[64];
    if (cols > 0) snprintf(at, sizeof at, "[%zu, %zu]", idx / (size_t)cols, idx % (size_t)cols);
    else snprintf(at, sizeof at, "[%zu]", idx);
    return ds_error(DS_ERR_INPUT, "%s: %s: element %s is %s; doneshot needs finite weights\n"
                    "hint: the checkpoint is corrupt or was saved from a diverged run; repair or re-export it",
                    t ? st_shard_path(m->st, t->shard) : m->dir, name, at, nonfinite_name(v));
}

/* Tensor `name` (checked by model_open) as a malloc'd f32 array in *out;
 * finite: also DS_ERR_INPUT on an inf or NaN element. */
static ds_status load_f32(const model *m, const char *name, int finite, float **out) {
    const st_tensor *t = st_find(m->st, name);
    *out = NULL;
    if (!t) return ds_error(DS_ERR_INPUT, "%s: tensor '%s' not found in the checkpoint", m->dir, name);
    if (!is_float_dtype(t->dtype))
        return ds_error(DS_ERR_INPUT, "%s: tensor '%s' has dtype %s, expected F32, BF16 or F16",
                        st_shard_path(m->st, t->shard), name, ds_dtype_name(t->dtype));
    size_t n = (size_t)st_numel(t);
    float *p = xmalloc(sizeof(float) * (n ? n : 1));
    conv_ctx c = {p, t->data, t->dtype, finite, 0};
    ds_parallel_for(n, (size_t)1 << 20, conv_range, &c);
    if (atomic_load(&c.bad)) {
        size_t bad = first_nonfinite(p, n);
        ds_status st = nonfinite_error(m, t, name, p[bad], bad, t->ndim == 2 ? t->shape[1] : 0);
        free(p);
        return st;
    }
    *out = p;
    return DS_OK;
}

/* Dequantize a pack-quantized Linear [out, in] into *w: W[o,i] =
 * round_dtype((q - zp) * scale[o, g(i)]), g(i) = g_idx[i] with actorder group,
 * else i / group_size (0 for channel and tensor). The tensors are validated
 * against the quantization args first (model_open checked their shapes; the
 * g_idx values are checked here); DS_ERR_INPUT naming the tensor on a
 * mismatch or a non-finite weight (an inf/NaN or overflowing scale). */
static ds_status load_packed(const model *m, const char *module, int out, int in, float **w,
                             const quant_args **aout) {
    char name[300];
    const quant_args *a;
    *w = NULL;
    ds_status st = select_qargs(m, module, out, in, 1, &a);
    if (st) return st;
    *aout = a;
    const st_tensor *stored[SCHEME_MAX_TENSORS] = {0}, *p = NULL, *sct = NULL;
    for (int k = 0; k < scheme_read_entries(a); k++) {
        const char *suffix = scheme_read_suffix(a, k);
        snprintf(name, sizeof name, "%s.%s", module, suffix);
        stored[k] = st_find(m->st, name);
        if (!strcmp(suffix, "weight_packed") || !strcmp(suffix, "weight")) p = stored[k];
        if (!strcmp(suffix, "weight_scale")) sct = stored[k];
    }
    const int ng = quant_num_groups(a, in);
    const size_t srow = st_numel(sct) == 1 ? 0 : (size_t)ng; /* tensor strategy: one scale for all rows */
    float *scale;
    snprintf(name, sizeof name, "%s.weight_scale", module);
    if (sct && sct->dtype == DS_DTYPE_F8_E4M3) { /* nvfp4-pack-quantized: float8_e4m3fn group scales */
        const size_t ns = (size_t)st_numel(sct);
        const unsigned char *b = sct->data;
        scale = xmalloc(sizeof(float) * (ns ? ns : 1));
        for (size_t k = 0; k < ns; k++) scale[k] = qs_fp8_e4m3_value(b[k]);
    } else if ((st = load_f32(m, name, 0, &scale))) {
        return st;
    }
    float *d = xmalloc(sizeof(float) * (size_t)out * in);
    scheme_dequantize(a, m->cfg.dtype, out, in, stored, scale, srow, d);
    for (int o = 0; o < out && st == DS_OK; o++) {
        const float *row = d + (size_t)o * in;
        size_t bad = first_nonfinite(row, (size_t)in);
        if (bad < (size_t)in) {
            int g = scheme_column_group(a, NULL, (int)bad);
            snprintf(name, sizeof name, "%s.weight_g_idx", module);
            const st_tensor *gt = a->actorder == QA_GROUP ? st_find(m->st, name) : NULL;
            if (gt) { /* actorder group: the column's group is g_idx[bad] */
                int32_t v;
                memcpy(&v, (const char *)gt->data + sizeof v * bad, sizeof v);
                g = v;
            }
            const size_t si = (size_t)(a->strategy == QS_BLOCK ? o / a->block[0] : o) * srow + (size_t)g;
            if (!isfinite(scale[si])) {
                snprintf(name, sizeof name, "%s.weight_scale", module);
                st = nonfinite_error(m, sct, name, scale[si], si, srow ? ng : 0);
            } else {
                snprintf(name, sizeof name, "%s.weight (dequantized)", module);
                st = nonfinite_error(m, p, name, row[bad], (size_t)o * in + bad, in);
            }
        }
    }
    free(scale);
    if (st) free(d);
    else *w = d;
    return st;
}

ds_status layer_load(const model *m, int l, layer_weights *lw) {
    const model_config *c = &m->cfg;
    char name[256];
    ds_status st = DS_OK;
    memset(lw, 0, sizeof *lw);
    lw->layer = l;
    lw->all_experts = 1;
    lw->sparse = model_layer_sparse(c, l);
    lw->router = lw->expert0 = lw->shared0 = lw->shared_gate = -1;
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
    if ((st = load_f32(m, name, 0, &lw->in_norm))) goto fail;
    snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
    if ((st = load_f32(m, name, 0, &lw->post_norm))) goto fail;
    if (c->qk_norm) {
        snprintf(name, sizeof name, "model.layers.%d.self_attn.q_norm.weight", l);
        if ((st = load_f32(m, name, 0, &lw->q_norm))) goto fail;
        snprintf(name, sizeof name, "model.layers.%d.self_attn.k_norm.weight", l);
        if ((st = load_f32(m, name, 0, &lw->k_norm))) goto fail;
    }
    lw->nlin = model_layer_linears(c, l, 1, NULL);
    lw->lin = xcalloc((size_t)lw->nlin, sizeof(layer_linear));
    model_layer_linears(c, l, 1, lw->lin);
    for (int k = 0; k < lw->nlin; k++) {
        layer_linear *li = &lw->lin[k];
        if (li->role == LIN_ROUTER) lw->router = k;
        else if (li->role == LIN_SHARED_GATE) lw->shared_gate = k;
        else if (li->expert == 0 && lw->expert0 < 0) lw->expert0 = k;
        else if (li->expert == -2 && lw->shared0 < 0) lw->shared0 = k;
        snprintf(name, sizeof name, "%s.weight", li->name);
        if (stored_quantized(m, li->name)) {
            const quant_args *qa = NULL;
            st = load_packed(m, li->name, li->out, li->in, &li->w, &qa);
            const quant_args *in = st ? NULL : &m->qact[qa - m->qargs];
            if (in && in->num_bits) { /* eval's activation fake quant (scheme_act_fake) */
                li->act = in;
                if (qa->act == QACT_INPUT_SCALE || qa->act == QACT_INPUT_GLOBAL_SCALE) {
                    float *s1 = NULL;
                    snprintf(name, sizeof name, qa->act == QACT_INPUT_SCALE ? "%s.input_scale" : "%s.input_global_scale",
                             li->name);
                    if (!(st = load_f32(m, name, 1, &s1))) li->act_scale = s1[0];
                    free(s1);
                }
            }
        } else {
            st = load_f32(m, name, 1, &li->w);
        }
        if (st) goto fail;
        if (lin_has_bias(c, li->role)) {
            snprintf(name, sizeof name, "%s.bias", li->name);
            if ((st = load_f32(m, name, 1, &li->b))) goto fail;
        }
    }
    return DS_OK;
fail:
    layer_free(lw);
    return st;
}

void layer_set_all_experts(layer_weights *lw, int on) {
    lw->all_experts = on;
    for (int k = 0; k < lw->nlin; k++) {
        layer_linear *li = &lw->lin[k];
        if (li->expert >= 0 && li->role != LIN_DOWN) li->input_id = on ? INP_MLP : INP_EXPERT_UP(li->expert);
    }
}

void layer_free(layer_weights *lw) {
    if (!lw) return;
    free(lw->in_norm);
    free(lw->post_norm);
    free(lw->q_norm);
    free(lw->k_norm);
    for (int k = 0; k < lw->nlin; k++) { free(lw->lin[k].w); free(lw->lin[k].b); }
    free(lw->lin);
    memset(lw, 0, sizeof *lw);
}

/* ---- forward ---- */

void layer_scratch_init(layer_scratch *s, const model_config *c, int max_T) {
    layer_scratch_init_batch(s, c, max_T, max_T);
}

void layer_scratch_init_batch(layer_scratch *s, const model_config *c, int max_rows, int max_T) {
    size_t Tq = (size_t)(max_T > 0 ? max_T : 1), T = DS_MAX((size_t)(max_rows > 0 ? max_rows : 1), Tq);
    size_t qd = (size_t)c->NH * c->HS, kvd = (size_t)c->NKV * c->HS;
    size_t FF = (size_t)DS_MAX(c->F, DS_MAX(c->IM, c->IS));
    memset(s, 0, sizeof *s);
    s->max_T = (int)Tq;
    s->max_rows = (int)T;
    s->a = xmalloc(sizeof(float) * T * c->C);
    s->q = xmalloc(sizeof(float) * T * qd);
    s->k = xmalloc(sizeof(float) * T * kvd);
    s->v = xmalloc(sizeof(float) * T * kvd);
    s->ctx = xmalloc(sizeof(float) * T * qd);
    s->o = xmalloc(sizeof(float) * T * c->C);
    s->g = xmalloc(sizeof(float) * T * FF);
    s->u = xmalloc(sizeof(float) * T * FF);
    s->att = xmalloc(sizeof(float) * Tq * Tq);
    s->cos_t = xmalloc(sizeof(float) * Tq * c->HS);
    s->sin_t = xmalloc(sizeof(float) * Tq * c->HS);
    if (c->E > 0) { /* one sequence at a time */
        T = Tq;
        s->probs = xmalloc(sizeof(float) * T * (size_t)c->E);
        s->topw = xmalloc(sizeof(float) * T * (size_t)c->K);
        s->tope = xmalloc(sizeof(int) * T * (size_t)c->K);
        s->acc = xmalloc(sizeof(float) * T * c->C);
        s->xe = xmalloc(sizeof(float) * T * c->C);
        s->rw = xmalloc(sizeof(float) * T);
        s->rows = xmalloc(sizeof(int) * T);
    }
}

void layer_scratch_free(layer_scratch *s) {
    if (!s) return;
    float **p[] = {&s->a, &s->q, &s->k, &s->v, &s->ctx, &s->o, &s->g, &s->u, &s->att, &s->cos_t, &s->sin_t,
                   &s->probs, &s->topw, &s->acc, &s->xe, &s->rw};
    for (size_t i = 0; i < DS_ARRAY_LEN(p); i++) { free(*p[i]); *p[i] = NULL; }
    free(s->tope);
    free(s->rows);
    s->tope = s->rows = NULL;
    s->rope_T = 0;
}

/* Router (§2.6): logits z = m Wr^T rounded to the model dtype, p = softmax(z)
 * in fp32 over all E experts, top-K as torch.topk (descending, ties -> lower
 * index), renormalised when norm_topk (Mixtral always), then cast to the
 * model dtype (transformers v4). */
static void route(const model_config *c, const layer_linear *R, const float *m, int T, layer_scratch *s) {
    const int E = c->E, K = c->K;
    matmul_forward_cpu(s->probs, m, R->w, NULL, T, c->C, E, c->dtype);
    for (int t = 0; t < T; t++) /* moe_route.h, shared with the CUDA kernel */
        moe_route_token(s->probs + (size_t)t * E, E, K, c->norm_topk, (int)c->dtype, s->tope + (size_t)t * K,
                        s->topw + (size_t)t * K);
}

/* y = Linear L (x) over the rows of nseq sequences (T[i] rows each):
 * matmul_seq_forward_cpu, after the input activation fake quant of a
 * quantized checkpoint's module (L->act: FP8, W8A8, ...; scheme_act_fake on
 * a copy of x, as compressed-tensors' forward_quantize applies it to the
 * module input: per token, or with the static per-tensor scale). */
static void lin_forward(float *y, const float *x, const layer_linear *L, int nseq, const int *T, int in, int out,
                        ds_dtype act) {
    int rows = 0;
    for (int i = 0; i < nseq; i++) rows += T[i];
    if (!L->act) {
        matmul_seq_forward_cpu(y, x, L->w, L->b, T, nseq, in, out, act);
        return;
    }
    float *xq = xmalloc(sizeof(float) * (size_t)DS_MAX(rows, 1) * (size_t)in);
    memcpy(xq, x, sizeof(float) * (size_t)rows * (size_t)in);
    scheme_act_fake(L->act, L->act->dynamic == QD_DYNAMIC ? NULL : &L->act_scale, xq, rows, in, act);
    matmul_seq_forward_cpu(y, xq, L->w, L->b, T, nseq, in, out, act);
    free(xq);
}

/* One SiLU-gated MLP (dense, expert or shared expert) on X [rows, C] -> s->o
 * [rows, C], rows = sum T[i] of nseq sequences; the down_proj input is
 * captured as down_id, all nseq sequences in one call (none if cap is NULL);
 * need_out 0: stop after that capture (s->o is not written). */
static void mlp_forward(const model_config *c, const layer_linear *G, const float *X, int nseq, const int *T,
                        layer_scratch *s, capture_fn cap, void *cap_ctx, int down_id, int need_out) {
    const ds_dtype act = c->dtype;
    const int F = G[0].out;
    int rows = 0;
    for (int i = 0; i < nseq; i++) rows += T[i];
    lin_forward(s->g, X, &G[0], nseq, T, c->C, F, act);
    lin_forward(s->u, X, &G[1], nseq, T, c->C, F, act);
    swiglu_forward_cpu(s->g, s->g, s->u, (size_t)rows * F, act);
    if (cap) cap(cap_ctx, down_id, s->g, nseq, T, F);
    if (need_out) lin_forward(s->o, s->g, &G[2], nseq, T, F, c->C, act);
}

/* MoE block on m [T, C] (one sequence); output into s->acc (model-dtype values).
 * Experts are visited in ascending index; each one's output is scaled by its
 * routing weight (rounded) and index-added into the dtype accumulator, as
 * transformers' index_add_. With capture and all-experts calibration, every
 * expert runs on all T tokens (its down_proj Hessian sees every token) while
 * only the routed rows enter the output. need_out 0: captures only (no
 * down_proj, s->acc not written). */
static void moe_forward(const model *mdl, const layer_weights *lw, const float *m, int T, layer_scratch *s,
                        capture_fn cap, void *cap_ctx, int need_out) {
    const model_config *c = &mdl->cfg;
    const ds_dtype act = c->dtype;
    const int C = c->C, K = c->K;
    route(c, &lw->lin[lw->router], m, T, s);
    memset(s->acc, 0, sizeof(float) * (size_t)T * C);
    const int all = cap && lw->all_experts;
    for (int e = 0; e < c->E; e++) {
        const layer_linear *G = &lw->lin[lw->expert0 + 3 * e];
        int n = 0;
        for (int t = 0; t < T; t++)
            for (int k = 0; k < K; k++)
                if (s->tope[(size_t)t * K + k] == e) {
                    s->rows[n] = t;
                    s->rw[n++] = s->topw[(size_t)t * K + k];
                }
        if (all) {
            mlp_forward(c, G, m, 1, &T, s, cap, cap_ctx, INP_EXPERT_DOWN(e), need_out);
            if (!need_out) continue;
            for (int i = 0; i < n; i++) {
                float *a = s->acc + (size_t)s->rows[i] * C;
                const float *y = s->o + (size_t)s->rows[i] * C;
                for (int j = 0; j < C; j++) a[j] = ds_round_to(a[j] + ds_round_to(s->rw[i] * y[j], act), act);
            }
            continue;
        }
        if (n == 0) continue;
        for (int i = 0; i < n; i++) memcpy(s->xe + (size_t)i * C, m + (size_t)s->rows[i] * C, sizeof(float) * C);
        if (cap) cap(cap_ctx, INP_EXPERT_UP(e), s->xe, 1, &n, C);
        mlp_forward(c, G, s->xe, 1, &n, s, cap, cap_ctx, INP_EXPERT_DOWN(e), need_out);
        if (!need_out) continue;
        for (int i = 0; i < n; i++) {
            float *a = s->acc + (size_t)s->rows[i] * C;
            const float *y = s->o + (size_t)i * C;
            for (int j = 0; j < C; j++) a[j] = ds_round_to(a[j] + ds_round_to(s->rw[i] * y[j], act), act);
        }
    }
    if (lw->shared0 >= 0) { /* Qwen2-MoE: + sigmoid(m . w_sg) * SharedMLP(m) */
        mlp_forward(c, &lw->lin[lw->shared0], m, 1, &T, s, cap, cap_ctx, INP_SHARED_DOWN, need_out);
        if (!need_out) return;
        const float *wsg = lw->lin[lw->shared_gate].w;
        for (int t = 0; t < T; t++) {
            const float *mt = m + (size_t)t * C;
            float z = 0;
            for (int j = 0; j < C; j++) z += mt[j] * wsg[j];
            float g = ds_round_to(1.0f / (1.0f + expf(-ds_round_to(z, act))), act);
            float *a = s->acc + (size_t)t * C;
            const float *y = s->o + (size_t)t * C;
            for (int j = 0; j < C; j++) a[j] = ds_round_to(a[j] + ds_round_to(g * y[j], act), act);
        }
    }
}

void layer_forward(const model *m, const layer_weights *lw, float *x, int T, layer_scratch *s,
                   capture_fn cap, void *cap_ctx) {
    layer_forward_batch(m, lw, x, 1, &T, s, cap, cap_ctx);
}

/* layer_forward_batch; need_out 0 stops after the last capture (the MLP's
 * or experts' down_proj input): x is then left half-updated. */
static void layer_run(const model *m, const layer_weights *lw, float *x, int nseq, const int *T, layer_scratch *s,
                      capture_fn cap, void *cap_ctx, int need_out) {
    const model_config *c = &m->cfg;
    const ds_dtype act = c->dtype;
    const int C = c->C, qd = c->NH * c->HS, kvd = c->NKV * c->HS;
    const layer_linear *L = lw->lin;
    int N = 0; /* rows of the micro-batch */
    for (int i = 0; i < nseq; i++) {
        DS_ASSERT(T[i] >= 0 && T[i] <= s->max_T);
        N += T[i];
    }
    DS_ASSERT(N <= s->max_rows);
    if (N <= 0) return;
    if (s->rope_T < s->max_T) { /* positions restart at 0 for every sequence */
        rope_tables_cpu(s->cos_t, s->sin_t, m->inv_freq, s->max_T, c->HS, act);
        s->rope_T = s->max_T;
    }
    /* attention block: q, k, v over all rows, attention per sequence */
    rmsnorm_forward_cpu(s->a, x, lw->in_norm, N, C, c->eps, act);
    if (cap) cap(cap_ctx, INP_ATTN, s->a, nseq, T, C);
    lin_forward(s->q, s->a, &L[LIN_Q], nseq, T, C, qd, act);
    lin_forward(s->k, s->a, &L[LIN_K], nseq, T, C, kvd, act);
    lin_forward(s->v, s->a, &L[LIN_V], nseq, T, C, kvd, act);
    if (c->qk_norm) {
        rmsnorm_forward_cpu(s->q, s->q, lw->q_norm, N * c->NH, c->HS, c->eps, act);
        rmsnorm_forward_cpu(s->k, s->k, lw->k_norm, N * c->NKV, c->HS, c->eps, act);
    }
    for (int i = 0, r = 0; i < nseq; r += T[i], i++) {
        float *q = s->q + (size_t)r * qd, *k = s->k + (size_t)r * kvd;
        rope_forward_cpu(q, s->cos_t, s->sin_t, T[i], c->NH, c->HS, act);
        rope_forward_cpu(k, s->cos_t, s->sin_t, T[i], c->NKV, c->HS, act);
        attention_forward_cpu(s->ctx + (size_t)r * qd, q, k, s->v + (size_t)r * kvd, T[i], c->NH, c->NKV, c->HS,
                              act, s->att);
    }
    if (cap) cap(cap_ctx, INP_O, s->ctx, nseq, T, qd);
    lin_forward(s->o, s->ctx, &L[LIN_O], nseq, T, qd, C, act);
    residual_forward_cpu(x, s->o, (size_t)N * C, act);
    /* MLP / MoE block */
    rmsnorm_forward_cpu(s->a, x, lw->post_norm, N, C, c->eps, act);
    if (cap) cap(cap_ctx, INP_MLP, s->a, nseq, T, C);
    if (lw->sparse) {
        for (int i = 0, r = 0; i < nseq; r += T[i], i++) {
            if (T[i] == 0) continue;
            moe_forward(m, lw, s->a + (size_t)r * C, T[i], s, cap, cap_ctx, need_out);
            if (need_out) residual_forward_cpu(x + (size_t)r * C, s->acc, (size_t)T[i] * C, act);
        }
    } else {
        mlp_forward(c, &L[LIN_GATE], s->a, nseq, T, s, cap, cap_ctx, INP_DOWN, need_out);
        if (need_out) residual_forward_cpu(x, s->o, (size_t)N * C, act);
    }
}

void layer_forward_batch(const model *m, const layer_weights *lw, float *x, int nseq, const int *T,
                         layer_scratch *s, capture_fn cap, void *cap_ctx) {
    layer_run(m, lw, x, nseq, T, s, cap, cap_ctx, 1);
}

void layer_calibrate_batch(const model *m, const layer_weights *lw, float *x, int nseq, const int *T,
                           layer_scratch *s, capture_fn cap, void *cap_ctx) {
    layer_run(m, lw, x, nseq, T, s, cap, cap_ctx, 0);
}

ds_status model_embed(const model *m, const int32_t *ids, int T, float *x) {
    const st_tensor *e = st_find(m->st, "model.embed_tokens.weight");
    const int C = m->cfg.C;
    size_t es = ds_dtype_size(e->dtype);
    for (int t = 0; t < T; t++) {
        if (ids[t] < 0 || ids[t] >= m->cfg.V)
            return ds_error(DS_ERR_INPUT, "token id %d at position %d is outside the vocabulary [0, %d)",
                            ids[t], t, m->cfg.V);
        ds_status st = ds_convert_to_f32(x + (size_t)t * C,
                                         (const unsigned char *)e->data + (size_t)ids[t] * C * es, e->dtype,
                                         (size_t)C);
        if (st) return st;
    }
    return DS_OK;
}
