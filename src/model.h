/*
 * model.h - Hugging Face decoder-only causal LMs: config.json, per-layer
 * weight binding, and the decoder-layer forward pass on the CPU.
 *
 * Dimension names (project-wide): T tokens of one sequence, C hidden size,
 * F intermediate (MLP) size, NH attention heads, NKV key/value heads, HS head
 * size, L layers, V vocab. Linear weights are row-major [out, in] like HF
 * nn.Linear (y = x W^T + b). Activations are row-major [T, C] f32 arrays whose
 * values are rounded to the model dtype at HF's rounding points.
 * Architectures: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
 * Qwen3ForCausalLM and the mixture-of-experts Qwen2MoeForCausalLM,
 * Qwen3MoeForCausalLM, MixtralForCausalLM (docs/model-and-tokenizer.md
 * §1.3-2.7). E experts, K experts per token, IM expert width, IS shared-expert
 * width (Qwen2-MoE).
 */
#ifndef DS_MODEL_H
#define DS_MODEL_H

#include "quant.h"
#include "safetensors.h"

typedef enum {
    ARCH_LLAMA = 0, ARCH_MISTRAL, ARCH_QWEN2, ARCH_QWEN3, ARCH_QWEN2_MOE, ARCH_QWEN3_MOE, ARCH_MIXTRAL
} model_arch;

#define DS_MAX_MLP_ONLY 256

typedef struct model_config {
    char arch_name[64];     /* architectures[0] */
    model_arch arch;
    int C, F, L, NH, NKV, HS, V;
    int max_pos;            /* max_position_embeddings */
    float eps;              /* rms_norm_eps */
    int tie;                /* tie_word_embeddings */
    int qkv_bias, o_bias, mlp_bias, qk_norm;
    ds_dtype dtype;         /* torch_dtype / dtype: the activation dtype */
    int bos_id, eos_id;     /* -1 if absent */
    /* mixture of experts (E == 0: dense model) */
    int E, K, IM, IS;       /* experts, experts per token, moe_intermediate_size, shared_expert_intermediate_size */
    int norm_topk;          /* renormalise the top-k probabilities (Mixtral: always) */
    int sparse_step;        /* decoder_sparse_step */
    int n_mlp_only, mlp_only[DS_MAX_MLP_ONLY]; /* mlp_only_layers */
} model_config;

#define DS_MAX_QARGS 8

typedef struct model {
    model_config cfg;
    int quantized;          /* 1: a compressed-tensors pack-quantized checkpoint (dequantized on load) */
    int nqargs;             /* quantized: distinct weight args of quantization_config.config_groups */
    quant_args qargs[DS_MAX_QARGS];
    quant_args qact[DS_MAX_QARGS]; /* their groups' input_activations (num_bits 0: none) */
    char *dir;              /* owned */
    st_model *st;           /* owned: mmap'd shards */
    float *inv_freq;        /* [HS/2] RoPE inverse frequencies (scaling applied) */
} model;

/* Open a model directory: parse and validate config.json (DS_ERR_INPUT for
 * missing/invalid keys, sizes outside their supported range, DS_ERR_INPUT
 * "unsupported architecture X (supported: ...)"), mmap the safetensors, check
 * the config sizes against the tensors present (embedding, layer count,
 * attention/MLP widths, expert count: DS_ERR_INPUT naming the key and the
 * tensor it contradicts) and that every tensor the forward needs exists with
 * the expected shape and dtype. Cost: O(tensors), no tensor data read. */
ds_status model_open(const char *dir, model *m);
/* As model_open, but also accepts a compressed-tensors pack-quantized
 * checkpoint (a doneshot output): quantization_config's weight args are
 * parsed and every quantized module's weight_packed, weight_scale,
 * weight_shape, weight_zero_point and weight_g_idx are checked against them
 * (shape and dtype; DS_ERR_INPUT naming the tensor, expected vs got).
 * layer_load then dequantizes each quantized Linear, W = (q - zp) * scale
 * per group, in the model dtype. */
ds_status model_open_quantized_ok(const char *dir, model *m);
void model_close(model *m);

/* ---- one decoder layer ---- */

/* Role of a Linear within its layer. The first four Linears of every layer are
 * q, k, v, o (lin[LIN_Q..LIN_O]); a dense layer continues with gate, up, down
 * (lin[LIN_GATE..LIN_DOWN]), a sparse (MoE) layer with the router, each
 * expert's gate, up, down (Mixtral w1, w3, w2), and for Qwen2-MoE the shared
 * expert's gate, up, down and shared_expert_gate: model (state-dict) order. */
enum { LIN_Q, LIN_K, LIN_V, LIN_O, LIN_GATE, LIN_UP, LIN_DOWN, LIN_COUNT,
       LIN_ROUTER = LIN_COUNT, LIN_SHARED_GATE };
/* Captured Linear inputs ("one Hessian per distinct input"): the fixed ones,
 * then two per expert (gate/up input of the routed tokens, down input).
 * With all-experts calibration every expert's gate/up reads INP_MLP. */
enum { INP_ATTN = 0, INP_O, INP_MLP, INP_DOWN, INP_SHARED_DOWN, INP_EXPERT0 };
#define INP_EXPERT_UP(e) (INP_EXPERT0 + 2 * (e))
#define INP_EXPERT_DOWN(e) (INP_EXPERT0 + 2 * (e) + 1)

typedef struct layer_linear {
    char name[160];         /* module name, e.g. model.layers.3.self_attn.q_proj */
    int in, out;
    int input_id;           /* INP_* */
    int role;               /* LIN_* */
    int expert;             /* expert index, -1 (attention / dense MLP / router), -2 (shared expert) */
    int quantizable;        /* 0 for routers and shared_expert_gate (never quantized) */
    float *w;               /* [out, in] owned f32 (values exact in the model dtype) */
    float *b;               /* [out] owned, or NULL */
    /* a quantized checkpoint's input activation quantization (eval's forward
     * fake-quantizes the input as compressed-tensors does: scheme_act_fake):
     * act NULL = none; act_scale: the module's input_scale (static args) or
     * input_global_scale (NVFP4, dynamic "local") */
    const quant_args *act;
    float act_scale;
} layer_linear;

typedef struct layer_weights {
    int layer;
    int sparse;                   /* MoE block */
    int all_experts;              /* calibration: every expert sees every token (default 1) */
    float *in_norm, *post_norm;   /* [C] */
    float *q_norm, *k_norm;       /* [HS] (Qwen3) or NULL */
    int nlin;
    layer_linear *lin;            /* [nlin], model order (see LIN_*) */
    int router, expert0, shared0, shared_gate; /* indices into lin (sparse layers), -1 if absent */
} layer_weights;

/* Number of captured inputs (INP_* ids are < this). */
int model_num_inputs(const model_config *c);
/* Input feature count of each captured input. */
int model_input_dim(const model_config *c, int input_id);
/* 1 if layer l has a MoE block. */
int model_layer_sparse(const model_config *c, int l);
/* The Linears of layer l (names, shapes, roles, inputs; w = b = NULL) into
 * out[] (may be NULL); returns their count. all_experts: input ids for
 * all-experts calibration (see INP_*). */
int model_layer_linears(const model_config *c, int l, int all_experts, layer_linear *out);
/* 1 if `module` (e.g. model.layers.2.mlp.experts.7.down_proj) is a
 * quantizable Linear of this model (routers/shared_expert_gate are not). */
int model_linear_quantizable(const model_config *c, const char *module);
/* Load (and dequantize) layer l's weights into lw as f32. DS_ERR_INPUT when
 * a Linear weight or bias holds an inf/NaN (checked inside the conversion,
 * "<tensor>: element [r, c] is inf"), or a quantized module's g_idx value or
 * dequantized weight is invalid; lw is then freed (layer_free is safe). */
ds_status layer_load(const model *m, int l, layer_weights *lw);
/* Switch calibration mode (1: all experts see all tokens, 0: routed tokens only). */
void layer_set_all_experts(layer_weights *lw, int on);
void layer_free(layer_weights *lw);

/* Scratch of layer_forward_batch for micro-batches of up to max_rows tokens
 * in all, each sequence of up to max_T tokens. */
typedef struct layer_scratch {
    int max_T, max_rows;
    float *a, *q, *k, *v, *ctx, *o, *g, *u, *att, *cos_t, *sin_t;
    int rope_T;             /* rows of cos/sin already computed */
    /* MoE (one sequence at a time): router probabilities [T, E], top-k
     * experts/weights [T, K], the combined output [T, C], gathered rows
     * [T, C], their weights [T] */
    float *probs, *topw, *acc, *xe, *rw;
    int *tope, *rows;
} layer_scratch;
/* Scratch for one sequence of up to max_T tokens per call (layer_forward). */
void layer_scratch_init(layer_scratch *s, const model_config *c, int max_T);
/* Scratch for micro-batches: up to max_rows tokens per call, max_T per sequence. */
void layer_scratch_init_batch(layer_scratch *s, const model_config *c, int max_rows, int max_T);
void layer_scratch_free(layer_scratch *s);

/* Called with each captured Linear input X [sum T[i], n] (n =
 * model_input_dim): the rows of nseq sequences, concatenated (a micro-batch,
 * or one sequence; T[i] may be 0, or smaller than the sequence: the routed
 * tokens of one expert). Hessian sums are kept per sequence, so they are the
 * same whatever the micro-batching. */
typedef void (*capture_fn)(void *ctx, int input_id, const float *X, int nseq, const int *T, int n);

/* x [T, C] := decoder layer (x) in place. cap may be NULL. */
void layer_forward(const model *m, const layer_weights *lw, float *x, int T, layer_scratch *s,
                   capture_fn cap, void *cap_ctx);
/* The same for a micro-batch of nseq sequences whose rows are concatenated in
 * x [sum T[i], C] (sum <= s->max_rows, each T[i] <= s->max_T): every Linear is
 * one GEMM over all rows, attention (causal, positions from 0) and the MoE
 * block run per sequence. Each row's result equals layer_forward of its own
 * sequence (OpenBLAS computes each output row alike for any row count;
 * tests/test_batch.c checks it bit for bit); cap sees one sequence per call. */
void layer_forward_batch(const model *m, const layer_weights *lw, float *x, int nseq, const int *T,
                         layer_scratch *s, capture_fn cap, void *cap_ctx);
/* The calibration pass of layer_forward_batch: the same captures, in the
 * same order and with the same values, but it stops after the last one (the
 * down_proj inputs): the layer output, which calibration discards, is not
 * computed (the down_proj GEMMs, a quarter of a Llama layer's Linear
 * FLOPs, are skipped) and x is left half-updated (scratch). */
void layer_calibrate_batch(const model *m, const layer_weights *lw, float *x, int nseq, const int *T,
                           layer_scratch *s, capture_fn cap, void *cap_ctx);

/* Embedding rows for ids[T] into x [T, C] (values in the model dtype). */
ds_status model_embed(const model *m, const int32_t *ids, int T, float *x);

/* Tensor name helpers: the dense-layer suffix of LIN_Q..LIN_DOWN. */

#endif
