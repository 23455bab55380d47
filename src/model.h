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
 * Qwen3ForCausalLM (../shared/docs/model-and-tokenizer.md §1.3-2.7).
 */
#ifndef DS_MODEL_H
#define DS_MODEL_H

#include "safetensors.h"

typedef enum { ARCH_LLAMA = 0, ARCH_MISTRAL, ARCH_QWEN2, ARCH_QWEN3 } model_arch;

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
} model_config;

typedef struct model {
    model_config cfg;
    int quantized;          /* 1: a compressed-tensors pack-quantized checkpoint (dequantized on load) */
    char *dir;              /* owned */
    st_model *st;           /* owned: mmap'd shards */
    float *inv_freq;        /* [HS/2] RoPE inverse frequencies (scaling applied) */
} model;

/* Open a model directory: parse and validate config.json (DS_ERR_INPUT for
 * missing/invalid keys, DS_ERR_INPUT "unsupported architecture X (supported:
 * ...)"), mmap the safetensors, check every tensor the forward needs exists
 * with the expected shape. */
ds_status model_open(const char *dir, model *m);
/* As model_open, but also accepts a compressed-tensors pack-quantized
 * checkpoint (a doneshot output): layer_load then dequantizes each quantized
 * Linear, W = (q - zp) * scale per group, in the model dtype. */
ds_status model_open_quantized_ok(const char *dir, model *m);
void model_close(model *m);

/* ---- one decoder layer ---- */

enum { LIN_Q, LIN_K, LIN_V, LIN_O, LIN_GATE, LIN_UP, LIN_DOWN, LIN_COUNT };
/* Captured Linear inputs ("one Hessian per distinct input"). */
enum { INP_ATTN = 0, INP_O, INP_MLP, INP_DOWN, INP_COUNT };

typedef struct layer_linear {
    char name[160];         /* module name, e.g. model.layers.3.self_attn.q_proj */
    int in, out;
    int input_id;           /* INP_* */
    float *w;               /* [out, in] owned f32 (values exact in the model dtype) */
    float *b;               /* [out] owned, or NULL */
} layer_linear;

typedef struct layer_weights {
    int layer;
    float *in_norm, *post_norm;   /* [C] */
    float *q_norm, *k_norm;       /* [HS] (Qwen3) or NULL */
    layer_linear lin[LIN_COUNT];
} layer_weights;

/* Input feature count of each captured input. */
int model_input_dim(const model_config *c, int input_id);
ds_status layer_load(const model *m, int l, layer_weights *lw);
void layer_free(layer_weights *lw);

/* Per-sequence scratch sized for sequences of up to max_T tokens. */
typedef struct layer_scratch {
    int max_T;
    float *a, *q, *k, *v, *ctx, *o, *g, *u, *att, *cos_t, *sin_t;
    int rope_T;             /* rows of cos/sin already computed */
} layer_scratch;
void layer_scratch_init(layer_scratch *s, const model_config *c, int max_T);
void layer_scratch_free(layer_scratch *s);

/* Called with each captured Linear input X [T, n] (n = model_input_dim). */
typedef void (*capture_fn)(void *ctx, int input_id, const float *X, int T, int n);

/* x [T, C] := decoder layer (x) in place. cap may be NULL. */
void layer_forward(const model *m, const layer_weights *lw, float *x, int T, layer_scratch *s,
                   capture_fn cap, void *cap_ctx);

/* Embedding rows for ids[T] into x [T, C] (values in the model dtype). */
ds_status model_embed(const model *m, const int32_t *ids, int T, float *x);

/* Tensor name helpers. */
const char *model_lin_suffix(int lin); /* "self_attn.q_proj" */

#endif
