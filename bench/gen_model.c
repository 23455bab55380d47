/*
 * gen_model.c - synthetic Hugging Face checkpoint generator for benchmarks
 * and tests: writes config.json + safetensors shards (+ tokenizer files
 * copied from another model) for Llama, Qwen3, Qwen3-MoE, Qwen2-MoE (shared
 * expert, q/k/v bias) and Mixtral shapes
 * with random but realistically scaled weights.
 *
 * Tensor names/shapes follow docs/model-and-tokenizer.md §1.4, config keys
 * §1.3. Initialization keeps a deep random forward well-scaled:
 *   Linear [out,in]            N(0, 1/sqrt(in))   (q,k,v,gate,up,experts, router)
 *   o_proj, down_proj, w2      N(0, 1/sqrt(in)) / sqrt(2L)   (residual branches)
 *   embed_tokens               N(0, 0.02);  lm_head N(0, 1/sqrt(H))
 *   RMSNorm weights            1 + N(0, 0.02)
 * Each tensor's stream is seeded from (seed, name), so bytes do not depend on
 * the write order, sharding or thread count. Tensors are planned first, then
 * generated in 1M-element chunks by worker threads and written in order
 * (memory is O(threads * chunk), not O(model)).
 *
 * Not a trainer: weights carry no knowledge; perplexity is ~vocab size.
 */
#include "common.h"
#include "st_writer.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

enum { ARCH_LLAMA, ARCH_QWEN3, ARCH_QWEN3_MOE, ARCH_MIXTRAL, ARCH_QWEN2_MOE };
static const char *const k_arch_names[] = {"llama", "qwen3", "qwen3_moe", "mixtral", "qwen2_moe"};
static const char *const k_arch_classes[] = {"LlamaForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM",
                                             "MixtralForCausalLM", "Qwen2MoeForCausalLM"};

typedef struct gen_cfg {
    const char *out, *tok_from, *preset;
    int arch;
    long hidden, inter, layers, heads, kv_heads, head_dim, vocab;
    long experts, experts_per_tok, moe_inter, shared_inter;
    long bos, eos, max_pos;
    double rope_theta;
    int tie;
    ds_dtype dtype;
    uint64_t seed, max_shard;
    long threads;
} gen_cfg;

/* One planned tensor. */
typedef struct gen_tensor {
    char *name;
    int ndim;
    int64_t shape[2];
    int ones;       /* norm weight: 1 + N(0, std) */
    float std;
} gen_tensor;

typedef struct gen_list { gen_tensor *t; size_t n, cap; } gen_list;

/* ---- PRNG: splitmix64 + Box-Muller ---- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t hash_name(uint64_t seed, const char *s) {
    uint64_t h = 1469598103934665603ull ^ seed;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return splitmix64(&h);
}

/* n standard normals (n even or odd) from state s. */
static void gauss_fill(float *x, size_t n, uint64_t *s) {
    const float two_pi = 6.28318530717958647692f, inv24 = 1.0f / 16777216.0f;
    size_t i = 0;
    for (; i < n; i += 2) {
        uint64_t r = splitmix64(s);
        float u1 = (float)((r >> 40) + 1) * inv24;          /* (0,1] */
        float u2 = (float)((r >> 16) & 0xffffff) * inv24;    /* [0,1) */
        float rad = sqrtf(-2.0f * logf(u1));
        float sn, cs;
        sincosf(two_pi * u2, &sn, &cs);
        x[i] = rad * cs;
        if (i + 1 < n) x[i + 1] = rad * sn;
    }
}

/* ---- planning ---- */

static void add(gen_list *l, float std, int ones, int ndim, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static void add(gen_list *l, float std, int ones, int ndim, int64_t d0, int64_t d1, const char *fmt, ...) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 256;
        l->t = xrealloc(l->t, l->cap * sizeof *l->t);
    }
    gen_tensor *t = &l->t[l->n++];
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    t->name = xstrdup(buf);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->ones = ones;
    t->std = std;
}

/* Every tensor of the model, in HF state-dict order. */
static void plan_tensors(const gen_cfg *c, gen_list *l) {
    const int64_t H = c->hidden, hd = c->head_dim, q = c->heads * hd, kv = c->kv_heads * hd;
    const float in_h = 1.0f / sqrtf((float)H), resid = 1.0f / sqrtf(2.0f * (float)c->layers);
    const float nstd = 0.02f;
    add(l, 0.02f, 0, 2, c->vocab, H, "model.embed_tokens.weight");
    for (long i = 0; i < c->layers; i++) {
        const int qb = c->arch == ARCH_QWEN2_MOE; /* q/k/v bias */
        add(l, in_h, 0, 2, q, H, "model.layers.%ld.self_attn.q_proj.weight", i);
        if (qb) add(l, nstd, 0, 1, q, 0, "model.layers.%ld.self_attn.q_proj.bias", i);
        add(l, in_h, 0, 2, kv, H, "model.layers.%ld.self_attn.k_proj.weight", i);
        if (qb) add(l, nstd, 0, 1, kv, 0, "model.layers.%ld.self_attn.k_proj.bias", i);
        add(l, in_h, 0, 2, kv, H, "model.layers.%ld.self_attn.v_proj.weight", i);
        if (qb) add(l, nstd, 0, 1, kv, 0, "model.layers.%ld.self_attn.v_proj.bias", i);
        add(l, resid / sqrtf((float)q), 0, 2, H, q, "model.layers.%ld.self_attn.o_proj.weight", i);
        if (c->arch == ARCH_QWEN3 || c->arch == ARCH_QWEN3_MOE) {
            add(l, nstd, 1, 1, hd, 0, "model.layers.%ld.self_attn.q_norm.weight", i);
            add(l, nstd, 1, 1, hd, 0, "model.layers.%ld.self_attn.k_norm.weight", i);
        }
        if (c->arch == ARCH_QWEN3_MOE || c->arch == ARCH_QWEN2_MOE) {
            const int64_t im = c->moe_inter, is = c->shared_inter;
            add(l, in_h, 0, 2, c->experts, H, "model.layers.%ld.mlp.gate.weight", i);
            for (long e = 0; e < c->experts; e++) {
                add(l, in_h, 0, 2, im, H, "model.layers.%ld.mlp.experts.%ld.gate_proj.weight", i, e);
                add(l, in_h, 0, 2, im, H, "model.layers.%ld.mlp.experts.%ld.up_proj.weight", i, e);
                add(l, resid / sqrtf((float)im), 0, 2, H, im, "model.layers.%ld.mlp.experts.%ld.down_proj.weight",
                    i, e);
            }
            if (c->arch == ARCH_QWEN2_MOE && is > 0) {
                add(l, in_h, 0, 2, is, H, "model.layers.%ld.mlp.shared_expert.gate_proj.weight", i);
                add(l, in_h, 0, 2, is, H, "model.layers.%ld.mlp.shared_expert.up_proj.weight", i);
                add(l, resid / sqrtf((float)is), 0, 2, H, is, "model.layers.%ld.mlp.shared_expert.down_proj.weight", i);
                add(l, in_h, 0, 2, 1, H, "model.layers.%ld.mlp.shared_expert_gate.weight", i);
            }
        } else if (c->arch == ARCH_MIXTRAL) {
            const int64_t im = c->inter;
            add(l, in_h, 0, 2, c->experts, H, "model.layers.%ld.block_sparse_moe.gate.weight", i);
            for (long e = 0; e < c->experts; e++) {
                add(l, in_h, 0, 2, im, H, "model.layers.%ld.block_sparse_moe.experts.%ld.w1.weight", i, e);
                add(l, resid / sqrtf((float)im), 0, 2, H, im,
                    "model.layers.%ld.block_sparse_moe.experts.%ld.w2.weight", i, e);
                add(l, in_h, 0, 2, im, H, "model.layers.%ld.block_sparse_moe.experts.%ld.w3.weight", i, e);
            }
        } else {
            const int64_t im = c->inter;
            add(l, in_h, 0, 2, im, H, "model.layers.%ld.mlp.gate_proj.weight", i);
            add(l, in_h, 0, 2, im, H, "model.layers.%ld.mlp.up_proj.weight", i);
            add(l, resid / sqrtf((float)im), 0, 2, H, im, "model.layers.%ld.mlp.down_proj.weight", i);
        }
        add(l, nstd, 1, 1, H, 0, "model.layers.%ld.input_layernorm.weight", i);
        add(l, nstd, 1, 1, H, 0, "model.layers.%ld.post_attention_layernorm.weight", i);
    }
    add(l, nstd, 1, 1, H, 0, "model.norm.weight");
    if (!c->tie) add(l, in_h, 0, 2, c->vocab, H, "lm_head.weight");
}

/* ---- config.json ---- */

typedef struct jbuf { char **lines; size_t n, cap; } jbuf;

static void jkv(jbuf *b, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void jkv(jbuf *b, const char *key, const char *fmt, ...) {
    char val[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(val, sizeof val, fmt, ap);
    va_end(ap);
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 64;
        b->lines = xrealloc(b->lines, b->cap * sizeof *b->lines);
    }
    b->lines[b->n++] = xasprintf("  \"%s\": %s", key, val);
}

static ds_status write_config(const gen_cfg *c) {
    jbuf b = {0};
    const char *F = "false", *T = "true";
    jkv(&b, "architectures", "[\n    \"%s\"\n  ]", k_arch_classes[c->arch]);
    jkv(&b, "model_type", "\"%s\"", k_arch_names[c->arch]);
    jkv(&b, "attention_bias", "%s", F);
    jkv(&b, "attention_dropout", "0.0");
    jkv(&b, "bos_token_id", "%ld", c->bos);
    jkv(&b, "eos_token_id", "%ld", c->eos);
    jkv(&b, "head_dim", "%ld", c->head_dim);
    jkv(&b, "hidden_act", "\"silu\"");
    jkv(&b, "hidden_size", "%ld", c->hidden);
    jkv(&b, "initializer_range", "0.02");
    jkv(&b, "intermediate_size", "%ld", c->inter);
    jkv(&b, "max_position_embeddings", "%ld", c->max_pos);
    if (c->arch == ARCH_LLAMA) {
        jkv(&b, "mlp_bias", "%s", F);
        jkv(&b, "pretraining_tp", "1");
    }
    if (c->arch == ARCH_QWEN3 || c->arch == ARCH_QWEN3_MOE) {
        jkv(&b, "max_window_layers", "%ld", c->layers);
        jkv(&b, "use_sliding_window", "%s", F);
        jkv(&b, "sliding_window", "null");
    }
    if (c->arch == ARCH_QWEN2_MOE) {
        jkv(&b, "qkv_bias", "%s", T);
        jkv(&b, "shared_expert_intermediate_size", "%ld", c->shared_inter);
    }
    if (c->arch == ARCH_QWEN3_MOE || c->arch == ARCH_QWEN2_MOE) {
        jkv(&b, "decoder_sparse_step", "1");
        jkv(&b, "mlp_only_layers", "[]");
        jkv(&b, "moe_intermediate_size", "%ld", c->moe_inter);
        jkv(&b, "norm_topk_prob", "%s", c->arch == ARCH_QWEN3_MOE ? T : F);
        jkv(&b, "num_experts", "%ld", c->experts);
        jkv(&b, "num_experts_per_tok", "%ld", c->experts_per_tok);
        jkv(&b, "output_router_logits", "%s", F);
        jkv(&b, "router_aux_loss_coef", "0.001");
    }
    if (c->arch == ARCH_MIXTRAL) {
        jkv(&b, "num_local_experts", "%ld", c->experts);
        jkv(&b, "num_experts_per_tok", "%ld", c->experts_per_tok);
        jkv(&b, "output_router_logits", "%s", F);
        jkv(&b, "router_aux_loss_coef", "0.02");
        jkv(&b, "router_jitter_noise", "0.0");
        jkv(&b, "sliding_window", "null");
    }
    jkv(&b, "num_attention_heads", "%ld", c->heads);
    jkv(&b, "num_hidden_layers", "%ld", c->layers);
    jkv(&b, "num_key_value_heads", "%ld", c->kv_heads);
    jkv(&b, "rms_norm_eps", "1e-05");
    jkv(&b, "rope_scaling", "null");
    jkv(&b, "rope_theta", "%.1f", c->rope_theta);
    jkv(&b, "tie_word_embeddings", "%s", c->tie ? T : F);
    jkv(&b, "torch_dtype", "\"%s\"", ds_dtype_torch_name(c->dtype));
    jkv(&b, "use_cache", "%s", T);
    jkv(&b, "vocab_size", "%ld", c->vocab);

    char *path = ds_path_join(c->out, "config.json");
    ds_status st = DS_OK;
    FILE *f = fopen(path, "w");
    if (!f) {
        st = ds_error(DS_ERR_RUNTIME, "%s: cannot create: %s", path, strerror(errno));
    } else {
        fputs("{\n", f);
        for (size_t i = 0; i < b.n; i++) fprintf(f, "%s%s\n", b.lines[i], i + 1 < b.n ? "," : "");
        fputs("}\n", f);
        if (fclose(f) != 0) st = ds_error(DS_ERR_RUNTIME, "%s: write failed: %s", path, strerror(errno));
    }
    for (size_t i = 0; i < b.n; i++) free(b.lines[i]);
    free(b.lines);
    free(path);
    return st;
}

static ds_status copy_file(const char *from_dir, const char *to_dir, const char *name, int required) {
    char *src = ds_path_join(from_dir, name), *dst = ds_path_join(to_dir, name), *text = NULL;
    size_t len = 0;
    ds_status st = DS_OK;
    if (!ds_file_exists(src)) {
        if (required) st = ds_error(DS_ERR_USAGE, "--tokenizer-from: %s not found", src);
        goto out;
    }
    if ((st = ds_read_file(src, &text, &len))) goto out;
    FILE *f = fopen(dst, "wb");
    if (!f) {
        st = ds_error(DS_ERR_RUNTIME, "%s: cannot create: %s", dst, strerror(errno));
        goto out;
    }
    size_t w = fwrite(text, 1, len, f);
    if (fclose(f) != 0 || w != len) st = ds_error(DS_ERR_RUNTIME, "%s: write failed: %s", dst, strerror(errno));
out:
    free(text);
    free(src);
    free(dst);
    return st;
}

/* ---- tensor generation ---- */

#define CHUNK (1u << 20) /* elements per generated chunk */
#define MAX_THREADS 16

/* One chunk of one tensor, generated by a worker thread. The stream of chunk
 * k is seeded from (seed, name, k), so bytes don't depend on thread count. */
typedef struct gen_job {
    const gen_tensor *t;
    ds_dtype dtype;
    uint64_t seed, chunk, numel;
    float *f;                    /* (CHUNK) scratch */
    unsigned char *out;          /* (CHUNK * 4) bytes in dtype */
    size_t n;                    /* elements produced */
} gen_job;

static void *gen_chunk(void *arg) {
    gen_job *j = arg;
    uint64_t s = hash_name(j->seed, j->t->name) + j->chunk * 0xD1B54A32D192ED03ull;
    splitmix64(&s);
    j->n = (size_t)DS_MIN((uint64_t)CHUNK, j->numel - j->chunk * CHUNK);
    gauss_fill(j->f, j->n, &s);
    const float base = j->t->ones ? 1.0f : 0.0f, sd = j->t->std;
    for (size_t k = 0; k < j->n; k++) j->f[k] = base + sd * j->f[k];
    ds_convert_from_f32(j->out, j->f, j->dtype, j->n);
    return NULL;
}

/* Generate every tensor chunk by chunk: nth workers fill chunks in parallel,
 * the main thread writes them in order (memory: nth chunks). */
static ds_status write_tensors(const gen_cfg *c, const gen_list *l, st_writer *w, int nth) {
    gen_job jobs[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    for (int k = 0; k < nth; k++) {
        jobs[k].f = xmalloc(CHUNK * sizeof(float));
        jobs[k].out = xmalloc(CHUNK * 4);
        jobs[k].dtype = c->dtype;
        jobs[k].seed = c->seed;
    }
    size_t esz = ds_dtype_size(c->dtype);
    ds_status st = DS_OK;
    for (size_t i = 0; i < l->n && !st; i++) {
        const gen_tensor *t = &l->t[i];
        uint64_t numel = (uint64_t)t->shape[0] * (uint64_t)(t->ndim == 2 ? t->shape[1] : 1);
        uint64_t nchunks = (numel + CHUNK - 1) / CHUNK;
        for (uint64_t c0 = 0; c0 < nchunks && !st; c0 += (uint64_t)nth) {
            int nj = (int)DS_MIN((uint64_t)nth, nchunks - c0);
            for (int k = 0; k < nj; k++) {
                jobs[k].t = t;
                jobs[k].numel = numel;
                jobs[k].chunk = c0 + (uint64_t)k;
                if (k > 0 && pthread_create(&tid[k], NULL, gen_chunk, &jobs[k]) != 0)
                    DS_DIE(1, "pthread_create failed");
            }
            gen_chunk(&jobs[0]);
            for (int k = 1; k < nj; k++) pthread_join(tid[k], NULL);
            for (int k = 0; k < nj && !st; k++)
                st = stw_write_range(w, t->name, jobs[k].chunk * CHUNK * esz, jobs[k].out, jobs[k].n * esz);
        }
    }
    for (int k = 0; k < nth; k++) {
        free(jobs[k].f);
        free(jobs[k].out);
    }
    return st;
}

/* ---- command line ---- */

static void usage(FILE *to) {
    fprintf(to,
            "usage: gen_model --out DIR [--preset llama3-8b|llama-100m|qwen3-30b-a3b]\n"
            "                 --hidden H --intermediate I --layers L --heads NH --kv-heads NKV\n"
            "                 [--head-dim HS] [--vocab V] [--dtype bf16|f32|f16]\n"
            "                 [--arch llama|qwen3|qwen3_moe|qwen2_moe|mixtral]\n"
            "                 [--experts E --experts-per-tok K --moe-intermediate IM] [--tie]\n"
            "                 [--shared-intermediate IS (qwen2_moe shared expert; 0 = none)]\n"
            "                 [--seed S] [--max-shard-size BYTES[KB|MB|GB|KiB|MiB|GiB]]\n"
            "                 [--tokenizer-from DIR] [--bos ID] [--eos ID] [--rope-theta X]\n"
            "                 [--threads N (default: online CPUs, at most 16)]\n"
            "Writes DIR/config.json and safetensors shards (default max shard 5GB) with random,\n"
            "realistically scaled weights. Options given with --preset override it.\n");
}

static int parse_long(const char *s, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end) return -1;
    *out = v;
    return 0;
}

static int parse_size(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-') return -1;
    static const struct { const char *suf; uint64_t mul; } sufs[] = {
        {"", 1}, {"B", 1}, {"KB", 1000}, {"MB", 1000000}, {"GB", 1000000000},
        {"KiB", 1024}, {"MiB", 1048576}, {"GiB", 1073741824}};
    for (size_t i = 0; i < DS_ARRAY_LEN(sufs); i++)
        if (strcmp(end, sufs[i].suf) == 0) {
            *out = (uint64_t)v * sufs[i].mul;
            return 0;
        }
    return -1;
}

static int apply_preset(gen_cfg *c, const char *name) {
    if (strcmp(name, "llama3-8b") == 0) {
        c->arch = ARCH_LLAMA;
        c->hidden = 4096; c->inter = 14336; c->layers = 32; c->heads = 32; c->kv_heads = 8;
        c->vocab = 128256; c->rope_theta = 500000.0; c->max_pos = 8192; c->bos = 128000; c->eos = 128001;
    } else if (strcmp(name, "llama-100m") == 0) {
        c->arch = ARCH_LLAMA;
        c->hidden = 768; c->inter = 2048; c->layers = 12; c->heads = 12; c->kv_heads = 4; c->vocab = 512;
    } else if (strcmp(name, "qwen3-30b-a3b") == 0) {
        c->arch = ARCH_QWEN3_MOE;
        c->hidden = 2048; c->inter = 6144; c->layers = 48; c->heads = 32; c->kv_heads = 4; c->head_dim = 128;
        c->experts = 128; c->experts_per_tok = 8; c->moe_inter = 768; c->vocab = 151936;
        c->rope_theta = 1000000.0; c->bos = 151643; c->eos = 151645;
    } else {
        return -1;
    }
    return 0;
}

/* Parse argv into c; DS_ERR_USAGE with a message on bad input. */
static ds_status parse_args(int argc, char **argv, gen_cfg *c) {
    memset(c, 0, sizeof *c);
    c->dtype = DS_DTYPE_BF16;
    c->seed = 0;
    c->max_shard = 5000000000ull;
    c->bos = c->eos = -1;
    c->arch = -1;
    /* Preset first, wherever it appears, so other options override it. */
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--preset") == 0) {
            c->preset = argv[i + 1];
            if (apply_preset(c, c->preset) != 0)
                return ds_error(DS_ERR_USAGE, "--preset: unknown preset '%s' (llama3-8b, llama-100m, qwen3-30b-a3b)",
                                c->preset);
        }
    static const struct { const char *opt; size_t off; } longs[] = {
        {"--hidden", offsetof(gen_cfg, hidden)}, {"--intermediate", offsetof(gen_cfg, inter)},
        {"--layers", offsetof(gen_cfg, layers)}, {"--heads", offsetof(gen_cfg, heads)},
        {"--kv-heads", offsetof(gen_cfg, kv_heads)}, {"--head-dim", offsetof(gen_cfg, head_dim)},
        {"--vocab", offsetof(gen_cfg, vocab)}, {"--experts", offsetof(gen_cfg, experts)},
        {"--experts-per-tok", offsetof(gen_cfg, experts_per_tok)},
        {"--moe-intermediate", offsetof(gen_cfg, moe_inter)}, {"--bos", offsetof(gen_cfg, bos)},
        {"--shared-intermediate", offsetof(gen_cfg, shared_inter)},
        {"--eos", offsetof(gen_cfg, eos)}, {"--threads", offsetof(gen_cfg, threads)}, {"--max-position-embeddings", offsetof(gen_cfg, max_pos)}};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--tie") == 0) { c->tie = 1; continue; }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) { usage(stdout); exit(0); }
        if (i + 1 >= argc) return ds_error(DS_ERR_USAGE, "%s: missing value (or unknown option)", a);
        const char *v = argv[++i];
        int done = 0;
        for (size_t k = 0; k < DS_ARRAY_LEN(longs) && !done; k++)
            if (strcmp(a, longs[k].opt) == 0) {
                if (parse_long(v, (long *)((char *)c + longs[k].off)) != 0)
                    return ds_error(DS_ERR_USAGE, "%s: expected an integer, got '%s'", a, v);
                done = 1;
            }
        if (done) continue;
        if (strcmp(a, "--out") == 0) c->out = v;
        else if (strcmp(a, "--preset") == 0) continue;
        else if (strcmp(a, "--tokenizer-from") == 0) c->tok_from = v;
        else if (strcmp(a, "--seed") == 0) {
            if (parse_size(v, &c->seed) != 0) return ds_error(DS_ERR_USAGE, "--seed: expected an integer, got '%s'", v);
        } else if (strcmp(a, "--max-shard-size") == 0) {
            if (parse_size(v, &c->max_shard) != 0)
                return ds_error(DS_ERR_USAGE, "--max-shard-size: expected bytes (e.g. 5GB), got '%s'", v);
        } else if (strcmp(a, "--rope-theta") == 0) {
            char *end;
            c->rope_theta = strtod(v, &end);
            if (end == v || *end || !(c->rope_theta > 0))
                return ds_error(DS_ERR_USAGE, "--rope-theta: expected a positive number, got '%s'", v);
        } else if (strcmp(a, "--dtype") == 0) {
            if (strcmp(v, "bf16") == 0) c->dtype = DS_DTYPE_BF16;
            else if (strcmp(v, "f16") == 0) c->dtype = DS_DTYPE_F16;
            else if (strcmp(v, "f32") == 0) c->dtype = DS_DTYPE_F32;
            else return ds_error(DS_ERR_USAGE, "--dtype: expected bf16, f16 or f32, got '%s'", v);
        } else if (strcmp(a, "--arch") == 0) {
            c->arch = -2;
            for (int k = 0; k < (int)DS_ARRAY_LEN(k_arch_names); k++)
                if (strcmp(v, k_arch_names[k]) == 0) c->arch = k;
            if (c->arch < 0)
                return ds_error(DS_ERR_USAGE, "--arch: expected llama, qwen3, qwen3_moe, qwen2_moe or mixtral, got '%s'", v);
        } else {
            return ds_error(DS_ERR_USAGE, "unknown option '%s'", a);
        }
    }
    /* Defaults and validation. */
    if (c->arch < 0) c->arch = ARCH_LLAMA;
    if (!c->out) return ds_error(DS_ERR_USAGE, "--out DIR is required");
    if (!c->vocab) c->vocab = 32000;
    if (c->hidden <= 0 || c->layers <= 0 || c->heads <= 0 || c->kv_heads <= 0 || c->vocab <= 0)
        return ds_error(DS_ERR_USAGE, "--hidden, --layers, --heads, --kv-heads and --vocab must be positive "
                        "(got %ld, %ld, %ld, %ld, %ld)", c->hidden, c->layers, c->heads, c->kv_heads, c->vocab);
    if (c->heads % c->kv_heads)
        return ds_error(DS_ERR_USAGE, "--kv-heads %ld must divide --heads %ld", c->kv_heads, c->heads);
    if (!c->head_dim) {
        if (c->hidden % c->heads)
            return ds_error(DS_ERR_USAGE, "--hidden %ld is not a multiple of --heads %ld; give --head-dim",
                            c->hidden, c->heads);
        c->head_dim = c->hidden / c->heads;
    }
    if (c->head_dim <= 0 || c->head_dim % 2)
        return ds_error(DS_ERR_USAGE, "--head-dim must be positive and even (RoPE pairs), got %ld", c->head_dim);
    int moe = c->arch == ARCH_QWEN3_MOE || c->arch == ARCH_MIXTRAL || c->arch == ARCH_QWEN2_MOE;
    if (moe) {
        if (c->experts <= 0) return ds_error(DS_ERR_USAGE, "--arch %s needs --experts E", k_arch_names[c->arch]);
        if (!c->experts_per_tok) c->experts_per_tok = DS_MIN(c->experts, c->arch == ARCH_MIXTRAL ? 2 : 8);
        if (c->experts_per_tok <= 0 || c->experts_per_tok > c->experts)
            return ds_error(DS_ERR_USAGE, "--experts-per-tok must be in [1, %ld], got %ld", c->experts,
                            c->experts_per_tok);
        int qmoe = c->arch == ARCH_QWEN3_MOE || c->arch == ARCH_QWEN2_MOE;
        if (qmoe && c->moe_inter <= 0)
            return ds_error(DS_ERR_USAGE, "--arch %s needs --moe-intermediate IM", k_arch_names[c->arch]);
        if (qmoe && !c->inter) c->inter = c->moe_inter * c->experts_per_tok;
    } else if (c->experts) {
        return ds_error(DS_ERR_USAGE, "--experts needs --arch qwen3_moe, qwen2_moe or mixtral");
    }
    if (c->inter <= 0) return ds_error(DS_ERR_USAGE, "--intermediate must be positive, got %ld", c->inter);
    if (!c->max_pos) c->max_pos = 2048;
    if (!c->threads) c->threads = DS_MAX(1, DS_MIN(MAX_THREADS, sysconf(_SC_NPROCESSORS_ONLN)));
    if (c->threads < 1 || c->threads > MAX_THREADS)
        return ds_error(DS_ERR_USAGE, "--threads must be in [1, %d], got %ld", MAX_THREADS, c->threads);
    if (c->rope_theta == 0)
        c->rope_theta = c->arch == ARCH_LLAMA ? 10000.0 : 1000000.0;
    if (c->bos < 0) c->bos = c->vocab == 128256 ? 128000 : c->vocab == 151936 ? 151643 : 1;
    if (c->eos < 0) c->eos = c->vocab == 128256 ? 128001 : c->vocab == 151936 ? 151645 : 2;
    if (c->bos >= c->vocab || c->eos >= c->vocab)
        return ds_error(DS_ERR_USAGE, "bos/eos ids (%ld, %ld) must be < --vocab %ld", c->bos, c->eos, c->vocab);
    return DS_OK;
}

int main(int argc, char **argv) {
    gen_cfg c;
    ds_status st = parse_args(argc, argv, &c);
    if (st) {
        fprintf(stderr, "gen_model: %s\n", ds_errmsg());
        usage(stderr);
        return st;
    }
    if (!ds_is_dir(c.out) && mkdir(c.out, 0755) != 0) {
        fprintf(stderr, "gen_model: %s: cannot create directory: %s\n", c.out, strerror(errno));
        return DS_ERR_RUNTIME;
    }
    double t0 = ds_now();
    gen_list l = {0};
    plan_tensors(&c, &l);
    uint64_t params = 0;
    for (size_t i = 0; i < l.n; i++)
        params += (uint64_t)l.t[i].shape[0] * (uint64_t)(l.t[i].ndim == 2 ? l.t[i].shape[1] : 1);
    printf("gen_model: %s %s: %zu tensors, %llu parameters (%.1fM), %s, %.2f GB\n",
           c.preset ? c.preset : "custom", k_arch_names[c.arch], l.n, (unsigned long long)params, (double)params / 1e6,
           ds_dtype_name(c.dtype), (double)params * (double)ds_dtype_size(c.dtype) / 1e9);
    fflush(stdout);

    st_writer *w = stw_open(c.out, c.max_shard);
    for (size_t i = 0; i < l.n && !st; i++) st = stw_plan(w, l.t[i].name, c.dtype, l.t[i].ndim, l.t[i].shape);
    if (!st) st = stw_begin(w);
    if (!st) st = write_tensors(&c, &l, w, (int)c.threads);
    if (!st) st = stw_finish(w);
    if (!st) st = write_config(&c);
    if (!st && c.tok_from) st = copy_file(c.tok_from, c.out, "tokenizer.json", 1);
    if (!st && c.tok_from) st = copy_file(c.tok_from, c.out, "tokenizer_config.json", 0);
    if (!st && c.tok_from) st = copy_file(c.tok_from, c.out, "special_tokens_map.json", 0);
    if (st) {
        fprintf(stderr, "gen_model: %s\n", ds_errmsg());
    } else {
        double dt = ds_now() - t0;
        printf("gen_model: wrote %s (%d shard%s) in %.2f s (%.0f MB/s)\n", c.out, stw_num_shards(w),
               stw_num_shards(w) > 1 ? "s" : "", dt, (double)stw_total_bytes(w) / 1e6 / (dt > 0 ? dt : 1e-9));
    }
    stw_close(w);
    for (size_t i = 0; i < l.n; i++) free(l.t[i].name);
    free(l.t);
    return st;
}
