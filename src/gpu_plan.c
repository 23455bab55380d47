/*
 * gpu_plan.c - GPU memory plan of the layer-by-layer calibration driver
 * (see gpu_plan.h for what is counted).
 */
#include "gpu_plan.h"
#include "kernels.h" /* hessian_scratch_floats (declarations only: no CUDA needed) */

static const size_t BF16 = 2, F32 = 4, MIB = (size_t)1 << 20;

static int has_dense(const gpu_plan_dims *d) { return d->E <= 0 || d->dense_layers; }

/* the widest MLP input: dense F, expert IM, shared expert IS */
static size_t mlp_width(const gpu_plan_dims *d) {
    size_t w = has_dense(d) ? (size_t)d->F : 0;
    if (d->E > 0) w = DS_MAX(w, (size_t)DS_MAX(d->IM, d->IS));
    return w;
}

static size_t layer_weight_params(const gpu_plan_dims *d) {
    size_t C = (size_t)d->C, F = (size_t)d->F, qo = (size_t)d->NH * d->HS, kv = (size_t)d->NKV * d->HS;
    size_t n = C * qo /* q */ + 2 * C * kv /* k, v */ + qo * C /* o */ + 2 * C /* norms */;
    if (has_dense(d)) n += 3 * C * F; /* gate, up, down */
    if (d->E > 0) /* router, experts, shared expert + its gate */
        n += (size_t)d->E * C + 3 * (size_t)d->E * C * d->IM + 3 * C * (size_t)d->IS + (d->IS > 0 ? C : 0);
    return n;
}

size_t gpu_plan_forward_bytes(const gpu_plan_dims *d, int mb) {
    size_t T = (size_t)mb * d->seq_len, C = (size_t)d->C, F = mlp_width(d);
    size_t qo = (size_t)d->NH * d->HS, kv = (size_t)d->NKV * d->HS;
    /* gpu_engine.c's chunk buffers: residual copy, norm out, q, k, v, ctx,
     * attn/mlp out, gate (-> act), up */
    size_t t = T * (3 * C + 2 * qo + 2 * kv + 2 * F) * BF16;
    if (d->E > 0) /* logits, gathered rows, accumulator (bf16); top-K ids, weights, row
                   * lists (twice: device and routed copies), softmax scratch, gate */
        t += T * ((size_t)d->E + 2 * C) * BF16 + T * (size_t)d->K * 4 * 4 + T * (size_t)d->E * F32 + T * F32;
    /* attention workspace: ~0 for the fused kernel, else the rep heads of one
     * kv head of one sequence (cuda/kernels.h; DONESHOT_ATTN=gemm) */
    size_t a = attention_ws_bytes(d->seq_len, d->NH / d->NKV, d->HS);
    /* rope tables */
    t += 2 * (size_t)d->seq_len * d->HS * BF16;
    return t + a;
}

static size_t gptq_bytes(const gpu_plan_dims *d, const gpu_plan_opts *o) {
    size_t C = (size_t)d->C, F = has_dense(d) ? (size_t)d->F : 0, qo = (size_t)d->NH * d->HS;
    size_t IM = d->E > 0 ? (size_t)d->IM : 0, IS = d->E > 0 ? (size_t)d->IS : 0;
    /* (out, in) of the solves: q (qo, C), o (C, qo), gate/up (F, C), down (C, F),
     * expert and shared expert gate/up and down */
    size_t shapes[8][2] = {{qo, C}, {C, qo}, {F, C}, {C, F}, {IM, C}, {C, IM}, {IS, C}, {C, IS}};
    size_t best = 0, bs = (size_t)(o->gptq_block > 0 ? o->gptq_block : 128);
    for (int i = 0; i < 8; i++) {
        if (shapes[i][0] == 0 || shapes[i][1] == 0) continue;
        size_t out = shapes[i][0], in = shapes[i][1];
        size_t b = out * in * F32 * 2        /* W f32 + working copy */
                   + out * in * (F32 + 1)    /* wq f32 + q int8 */
                   + in * in * F32           /* H copy (shared Hessian consumed by the solve) */
                   + (o->actorder ? in * in * F32 : 0)
                   + out * bs * F32          /* error block */
                   + in * 128 * F32          /* cuSOLVER workspace (estimate) */
                   + out * (in / 32 + 1) * 12; /* scales, zp, packed words */
        if (b > best) best = b;
    }
    /* the cached factor of a shared Hessian (q/k/v, gate/up, experts' gate/up:
     * all C wide; gpu_engine_gptq keys only those) */
    return best + C * C * F32;
}

ds_status gpu_plan_make(const gpu_plan_dims *d, const gpu_plan_opts *o, gpu_plan *p) {
    *p = (gpu_plan){0};
    if (d->C <= 0 || (has_dense(d) && d->F <= 0) || d->NH <= 0 || d->NKV <= 0 || d->HS <= 0 || d->seq_len <= 0 ||
        d->n_tokens < 0 || d->NH % d->NKV != 0 || (d->E > 0 && (d->K <= 0 || d->K > d->E || d->IM <= 0)))
        return ds_error(DS_ERR_USAGE,
                        "gpu_plan: bad dims C=%d F=%d NH=%d NKV=%d HS=%d T=%d tokens=%ld", d->C, d->F,
                        d->NH, d->NKV, d->HS, d->seq_len, d->n_tokens);
    const size_t C = (size_t)d->C, F = has_dense(d) ? (size_t)d->F : 0, qo = (size_t)d->NH * d->HS;
    const size_t hb = o->hessian_f64 ? 8 : 4;
    p->n_seq = (d->n_tokens + d->seq_len - 1) / d->seq_len;
    p->weights = layer_weight_params(d) * BF16;
    p->acts = o->offload_acts ? 0 : (size_t)d->n_tokens * C * BF16; /* updated in place */
    p->hessians = (2 * C * C + qo * qo + F * F) * hb; /* qkv, gate/up: C; o: qo; down: F */
    if (d->E > 0) {
        const size_t E = (size_t)d->E, IM = (size_t)d->IM, IS = (size_t)d->IS;
        p->hessians += (E * IM * IM + IS * IS) * hb;  /* expert / shared-expert down_proj inputs */
        if (d->routed) p->hessians += E * C * C * hb; /* each expert's routed gate/up input */
    }
    const size_t wmax = DS_MAX(DS_MAX(C, qo), mlp_width(d));
    if (o->hessian_f64) /* f32 scratch of the f64 accumulate: one tile row of the widest */
        p->hessians += hessian_scratch_floats((int)wmax) * F32;
    p->gptq = gptq_bytes(d, o);
    if (o->rtn_only) p->hessians = p->gptq = 0; /* only the activation observer runs on the device */
    p->cublas_ws = 32 * MIB;
    const size_t fixed = p->weights + p->acts + p->hessians + p->cublas_ws;
    int maxmb = o->max_micro_batch > 0 ? o->max_micro_batch : 64;
    if (p->n_seq > 0 && maxmb > p->n_seq) maxmb = (int)p->n_seq;
    if (maxmb < 1) maxmb = 1;
    for (int mb = maxmb; mb >= 1; mb--) {
        size_t fwd = gpu_plan_forward_bytes(d, mb);
        size_t stage = o->offload_acts ? 2 * (size_t)mb * d->seq_len * C * BF16 : 0;
        size_t peak = fixed + stage + fwd + p->gptq;
        if (peak <= o->budget_bytes || mb == 1) {
            p->attn_ws = attention_ws_bytes(d->seq_len, d->NH / d->NKV, d->HS);
            p->transients = fwd - p->attn_ws;
            p->staging = stage;
            p->peak = peak;
            p->micro_batch = mb;
            if (peak <= o->budget_bytes) return DS_OK;
        }
    }
    double gib = (double)((size_t)1 << 30);
    return ds_error(DS_ERR_USAGE,
                    "GPU memory plan needs %.2f GiB at micro-batch 1, budget %.2f GiB\n"
                    "hint: %s", (double)p->peak / gib, (double)o->budget_bytes / gib,
                    o->offload_acts ? "use more ranks (tokens per rank) or a larger GPU"
                                    : "offload activations to host memory");
}

void gpu_plan_print(const gpu_plan *p, FILE *f) {
    const double m = (double)MIB;
    fprintf(f, "gpu plan: micro-batch %d of %ld sequences, peak %.1f MiB\n", p->micro_batch, p->n_seq,
            (double)p->peak / m);
    fprintf(f, "  weights %.1f  acts %.1f  staging %.1f  hessians %.1f  transients %.1f  "
               "attn_ws %.1f  gptq %.1f  cublas_ws %.1f (MiB)\n",
            (double)p->weights / m, (double)p->acts / m, (double)p->staging / m,
            (double)p->hessians / m, (double)p->transients / m, (double)p->attn_ws / m,
            (double)p->gptq / m, (double)p->cublas_ws / m);
}
