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

/* The rows of the largest set of modules that share one Hessian (all C
 * wide): q/k/v; gate/up; with all-experts calibration every expert's
 * gate/up and the shared expert's, else one expert's or the shared
 * expert's; at most GPU_PLAN_GROUP_ROWS_MAX. */
static size_t group_rows(const gpu_plan_dims *d) {
    const size_t qo = (size_t)d->NH * d->HS, kv = (size_t)d->NKV * d->HS;
    size_t r = qo + 2 * kv;
    if (has_dense(d)) r = DS_MAX(r, 2 * (size_t)d->F);
    if (d->E > 0) {
        const size_t IM = (size_t)d->IM, IS = (size_t)d->IS;
        r = DS_MAX(r, d->routed ? 2 * DS_MAX(IM, IS) : 2 * ((size_t)d->E * IM + IS));
    }
    return DS_MIN(r, (size_t)GPU_PLAN_GROUP_ROWS_MAX);
}

/* The engine's GPTQ buffers are each sized for their largest use (gW, gWq
 * f32 and gQ int8 for the most weight elements, gH for the widest input,
 * scales / zero points for the most groups: gpu_engine.c), the solver's
 * workspace for its largest call (cuda/gptq.cu: working copy, error block,
 * the permuted Hessian or potrs' right-hand side (hessian_copy), row
 * losses, min/max per group, cuSOLVER's workspace, estimated as in x 128
 * floats), plus the cached factor of a
 * shared Hessian (q/k/v, gate/up, the experts' gate/up: all C wide). Groups:
 * in / 32 + 1 per row bounds every group size the CUDA solver runs. */
static size_t gptq_bytes(const gpu_plan_dims *d, const gpu_plan_opts *o, size_t grows) {
    size_t C = (size_t)d->C, F = has_dense(d) ? (size_t)d->F : 0, qo = (size_t)d->NH * d->HS;
    size_t IM = d->E > 0 ? (size_t)d->IM : 0, IS = d->E > 0 ? (size_t)d->IS : 0;
    /* (out, in) of the solves: q (qo, C), o (C, qo), gate/up (F, C), down (C, F),
     * expert and shared expert gate/up and down, a grouped solve (grows, C) */
    size_t shapes[9][2] = {{qo, C}, {C, qo}, {F, C}, {C, F}, {IM, C}, {C, IM}, {IS, C}, {C, IS}, {grows, C}};
    size_t max_w = 0, max_in = 0, max_ng = 0, ws = 0, bs = (size_t)(o->gptq_block > 0 ? o->gptq_block : 128);
    for (int i = 0; i < 9; i++) {
        if (shapes[i][0] == 0 || shapes[i][1] == 0) continue;
        const size_t out = shapes[i][0], in = shapes[i][1], ng = out * (in / 32 + 1);
        max_w = DS_MAX(max_w, out * in);
        max_in = DS_MAX(max_in, in);
        max_ng = DS_MAX(max_ng, ng);
        ws = DS_MAX(ws, out * in * F32                        /* working copy */
                            + out * bs * F32                  /* error block */
                            + (o->hessian_copy ? in * in * F32 : 0) /* permuted H or potrs' B */
                            + out * 8 + ng * 2 * F32          /* row losses, min / max */
                            + in * (12 + 128 * F32));         /* tables, cuSOLVER workspace */
    }
    const size_t engine = max_w * (2 * F32 + 1)  /* gW, gWq, gQ */
                          + max_in * max_in * F32 /* gH: the Hessian, consumed by the solve */
                          + max_ng * 2 * F32 + max_in * F32; /* scales, zero points, g_idx */
    return engine + ws + C * C * F32;
}

static ds_status plan_make(const gpu_plan_dims *d, const gpu_plan_opts *o, size_t grows, gpu_plan *p);

ds_status gpu_plan_make(const gpu_plan_dims *d, const gpu_plan_opts *o, gpu_plan *p) {
    ds_status st = plan_make(d, o, 0, p);
    if (st != DS_OK || !o->gptq_group || o->rtn_only) return st; /* a grouped plan needs more */
    /* the grouped solves' room, unless it would cost micro-batch size */
    gpu_plan g;
    const size_t grows = group_rows(d);
    if (plan_make(d, o, grows, &g) == DS_OK && g.micro_batch >= p->micro_batch) {
        g.gptq_group_rows = (int)grows;
        *p = g;
    }
    return DS_OK;
}

static ds_status plan_make(const gpu_plan_dims *d, const gpu_plan_opts *o, size_t grows, gpu_plan *p) {
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
    p->gptq = gptq_bytes(d, o, grows);
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
               "attn_ws %.1f  gptq %.1f  cublas_ws %.1f (MiB), grouped GPTQ solves of <= %d rows\n",
            (double)p->weights / m, (double)p->acts / m, (double)p->staging / m,
            (double)p->hessians / m, (double)p->transients / m, (double)p->attn_ws / m,
            (double)p->gptq / m, (double)p->cublas_ws / m, p->gptq_group_rows);
}
