/*
 * pipeline.c - distributed sequential GPTQ (see pipeline.h).
 */
#include "pipeline.h"
#include "checkpoint.h"
#include "ckpt_async.h"
#include "comm.h"
#include "engine.h"
#include "gpu_engine.h"
#include "gptq.h"
#include "resume.h"
#include "qscalar.h"
#include "scheme.h"
#include "smoothquant.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

/* ---- validation ---- */

ds_status pipeline_validate(const model *m, const recipe *r) {
    const model_config *c = &m->cfg;
    int nq = 0;
    if (recipe_module_targeted(r, "lm_head", "Linear"))
        return ds_error(DS_ERR_USAGE, "the recipe targets lm_head, which doneshot does not quantize\n"
                        "hint: add \"lm_head\" to the GPTQModifier's \"ignore\" list");
    layer_linear *ll = xmalloc(sizeof(layer_linear) * (size_t)(3 * c->E + 12));
    ds_status st = DS_OK;
    for (int l = 0; l < c->L && !st; l++) {
        int n = model_layer_linears(c, l, 1, ll);
        for (int k = 0; k < n; k++) {
            const layer_linear *li = &ll[k];
            if (!li->quantizable || !ckpt_module_quantized(r, li->name)) continue;
            nq++;
            if (r->w.strategy == QS_TENSOR_GROUP && li->in % r->w.group_size != 0) { /* nvfp4: packs groups of 16 */
                st = ds_error(DS_ERR_USAGE,
                              "tensor_group quantization (NVFP4) needs in_features divisible by group_size %d; "
                              "%s has %d\n"
                              "hint: add it to the modifier's \"ignore\" list (e.g. \"re:.*down_proj\"), as "
                              "llm-compressor requires", r->w.group_size, li->name, li->in);
                break;
            }
            if (r->w.strategy == QS_GROUP && !r->bypass_divisibility && li->in % r->w.group_size != 0) {
                st = ds_error(DS_ERR_USAGE,
                              "group_size %d does not divide in_features %d of %s\n"
                              "hint: use a group_size that divides every in_features (this model: %d, %d, %d%s), "
                              "strategy \"channel\", or a recipe made for this model",
                              r->w.group_size, li->in, li->name, c->C, c->NH * c->HS,
                              c->E ? c->IM : c->F, c->IS ? " and the shared expert's" : "");
                break;
            }
        }
    }
    free(ll);
    /* a "re:" target/ignore entry whose match failed (e.g. PCRE2's match
     * limit) above: the module's status is unknown, so the recipe is refused */
    if (!st) st = recipe_match_status(r);
    if (!st) st = smoothquant_validate(c, r);
    if (st) return st;
    if (nq == 0)
        return ds_error(DS_ERR_USAGE, "the recipe's targets match no Linear module of this model "
                        "(targets apply to e.g. model.layers.0.self_attn.q_proj)");
    return DS_OK;
}

/* ---- module assignment ---- */

void pipeline_assign(const double *cost, int n, int nranks, int *owner) {
    int *order = xmalloc(sizeof(int) * (size_t)(n ? n : 1));
    double *load = xcalloc((size_t)nranks, sizeof(double));
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++) { /* stable insertion sort, descending cost */
        int v = order[i], j = i - 1;
        while (j >= 0 && cost[order[j]] < cost[v]) { order[j + 1] = order[j]; j--; }
        order[j + 1] = v;
    }
    for (int i = 0; i < n; i++) {
        int best = 0;
        for (int r = 1; r < nranks; r++)
            if (load[r] < load[best]) best = r;
        owner[order[i]] = best;
        load[best] += cost[order[i]];
    }
    free(order);
    free(load);
}

/* ---- result exchange ----
 * The owner broadcasts the fake-quantized weight exactly as GPTQ produced it
 * (in the model dtype, so no precision is lost), the scales and zero-points.
 * Every rank installs that weight for the propagation pass (as the reference
 * writes `weight` = the GPTQ output); rank 0 derives the on-disk codes from it
 * the way the compressed-tensors compressor re-quantizes the stored weight. */

typedef scheme_result packed_result; /* layout: scheme_result_alloc */

/* ---- next-layer prefetch (CUDA engine: the host reads and converts layer
 * l+1 from the mmap'd shards while the GPU works on layer l) ---- */

typedef struct layer_prefetch {
    pthread_t th;
    const model *m;
    int l, active;
    ds_status st;     /* layer_load's status */
    char err[4096];   /* its message (the error buffer is per thread) */
    layer_weights lw;
} layer_prefetch;

static void *prefetch_run(void *p) {
    layer_prefetch *f = p;
    f->st = layer_load(f->m, f->l, &f->lw);
    if (f->st) snprintf(f->err, sizeof f->err, "%s", ds_errmsg());
    return NULL;
}

static void prefetch_start(layer_prefetch *f, const model *m, int l) {
    f->m = m;
    f->l = l;
    f->active = pthread_create(&f->th, NULL, prefetch_run, f) == 0;
}

/* Layer l's weights: the prefetched copy when there is one, else loaded now.
 * On failure (e.g. a non-finite weight) nothing is left to free. */
static ds_status layer_get(layer_prefetch *f, const model *m, int l, layer_weights *lw) {
    if (f->active) {
        pthread_join(f->th, NULL);
        f->active = 0;
        DS_ASSERT(f->l == l);
        *lw = f->lw;
        return f->st ? ds_error(f->st, "%s", f->err) : DS_OK;
    }
    return layer_load(m, l, lw);
}

/* ---- the run: its state and named steps ----
 * Every step is collective unless it says otherwise: all ranks call it in
 * the same order, and a failure on any rank is combined with
 * comm_sync_status, so all ranks return the same status. */

typedef struct run {
    const model *m;
    const recipe *r;
    const run_opts *o;
    run_stats *stats;
    const ds_sample *local;
    size_t nlocal;
    int rank, nranks;
    int maxlin, nin;           /* Linear modules per layer (upper bound), Hessian inputs */
    char *pdir, *rdir;         /* <out>.partial and its resume/ folder */
    uint64_t job_fp;
    resume_head rh;            /* this rank's resume-file header */
    size_t state_bytes;        /* this rank's residual stream in the model dtype */
    engine *eng;
    ckpt_writer *ck;           /* rank 0 */
    ckpt_async *wr;            /* rank 0: the writer thread that writes ck's module tensors (ckpt_async.h) */
    int saved;                 /* a resume point is on disk: keep the partial dir on failure */
    double t_start, last_state;
    layer_prefetch pf;
    sq_plan sq;                /* SmoothQuant: every layer's smoothing scales (off: none) */
    /* per layer: the quantized modules, their owners and Hessians */
    int nm;
    int *mods, *owner, *used;  /* [maxlin] (indices into lw.lin), [maxlin], [nin] */
    double *cost;              /* [maxlin] */
    double **H;                /* [nin]: host Hessian sums, NULL where unused or not owned */
    int64_t *cnt;              /* [2 nin]: tokens, sequences per input */
    float *amax;               /* [nin]: static activation observer (max |X|, all ranks), or NULL */
    float *wgs;                /* [maxlin]: NVFP4 weight global scale per module of u->mods (fused q/k/v,
                                * gate/up share one), or NULL when the weights are not tensor_group */
} run;

/* Layer l to resume after, from the partial run of this job: *start = the
 * first layer to compute (0: a fresh run; a stale state of another job is
 * discarded with a warning unless --resume asks for it). */
static ds_status resume_open(run *u, int *start) {
    const model_config *c = &u->m->cfg;
    /* every rank's token ids, combined in rank order (two 32-bit halves, so
     * the integer sums cannot overflow) */
    const uint64_t ids_fp = resume_ids_fingerprint(u->local, u->nlocal) * (2u * (uint64_t)u->rank + 1u);
    int64_t halves[2] = {(int64_t)(ids_fp & 0xffffffffu), (int64_t)(ids_fp >> 32)};
    comm_allreduce_sum_i64(halves, 2);
    const uint64_t data_fp = (uint64_t)halves[0] ^ ((uint64_t)halves[1] << 29);
    /* the model as rank 0 sees it (path, mtime, bytes); every other rank
     * (another node may hold its own copy) must see the same bytes */
    uint64_t mfp[2];
    resume_model_fingerprint(u->m, &mfp[0], &mfp[1]);
    const uint64_t mine = mfp[1];
    comm_bcast(mfp, sizeof mfp, 0);
    ds_status st = DS_OK;
    if (mine != mfp[1])
        st = ds_error(DS_ERR_INPUT, "the model files in '%s' differ from rank 0's (config.json, a shard's size or "
                      "its bytes)\nhint: every node needs the same model at the same path", u->m->dir);
    if ((st = comm_sync_status(st))) return st;
    u->job_fp = resume_job_fingerprint(u->m, u->r, u->nranks, u->o->cuda, u->stats->samples_total,
                                       u->stats->tokens_total, mfp[0], data_fp);
    int done_layers = -1; /* last completed layer of the partial run, -1: none */
    st = resume_load_progress(u->rdir, u->nranks, u->job_fp, c->L, c->L * u->maxlin, &done_layers,
                                        u->stats);
    if (st && !u->o->resume) { st = DS_OK; done_layers = 0; } /* another job's state: discarded below */
    if ((st = comm_sync_status(st))) return st;
    if (!u->o->resume && done_layers >= 0) {
        if (u->rank == 0)
            ds_warn("discarding the partial run in %s (pass --resume to continue it instead)", u->pdir);
        done_layers = -1;
        u->stats->nmods = u->stats->n_rtn = u->stats->n_no_tokens = 0;
    } else if (u->o->resume && done_layers < 0 && u->rank == 0) {
        ds_info("--resume: no resume state in %s; starting from the first layer", u->rdir);
    }
    *start = done_layers + 1;
    return DS_OK;
}

/* Rank 0 claims the output (lock, partial dir, unquantized tensors) before
 * hours of work. */
static ds_status output_claim(run *u, int start) {
    const double t0 = ds_now();
    ds_status st = DS_OK;
    if (u->rank == 0)
        st = ckpt_begin(u->m, u->r, u->o->out_dir, u->o->overwrite, u->o->max_shard_bytes, start > 0 ? start : -1,
                        &u->ck);
    u->stats->t.save += ds_now() - t0;
    return comm_sync_status(st);
}

/* The engine (CPU or CUDA) with this rank's samples embedded; on a resume,
 * the residual stream after layer start-1 replaces the embeddings. */
static ds_status engine_start(run *u, int start) {
    const model_config *c = &u->m->cfg;
    ds_status st;
    if (u->o->cuda) {
        gpu_engine_opts go = {.offload_acts = u->o->offload_acts, .budget_bytes = u->o->gpu_budget_bytes,
                              .local_rank = gpu_engine_local_rank(), .qa = &u->r->w, .gptq_block = u->r->block_size,
                              .max_micro_batch = u->o->max_micro_batch, .moe_routed = u->o->moe_routed_only,
                              .rtn_only = u->r->quantizer == RQ_QUANTIZATION};
        st = gpu_engine_create_engine(u->m, u->local, u->nlocal, &go, &u->eng);
    } else {
        st = cpu_engine_create(u->m, u->local, u->nlocal, &u->eng);
    }
    snprintf(u->stats->device, sizeof u->stats->device, "%s",
             u->eng ? u->eng->ops->describe(u->eng) : u->o->cuda ? "cuda" : "cpu");
    if ((st = comm_sync_status(st))) return st;
    if (u->o->cuda) ds_info("device: %s", u->stats->device);

    size_t ntok_local = 0;
    for (size_t i = 0; i < u->nlocal; i++) ntok_local += (size_t)u->local[i].n;
    u->state_bytes = ntok_local * (size_t)c->C * ds_dtype_size(u->eng->resid_dtype);
    u->rh = (resume_head){.world = u->nranks, .rank = u->rank, .dtype = u->eng->resid_dtype, .job_fp = u->job_fp,
                          .rank_fp = resume_rank_fingerprint(u->job_fp, u->local, u->nlocal),
                          .nlocal = u->nlocal, .ntok = ntok_local, .C = (uint64_t)c->C};
    if (start > 0) {
        unsigned char *buf = xmalloc(u->state_bytes ? u->state_bytes : 1);
        u->rh.layer = start - 1;
        st = resume_load_rank(u->rdir, &u->rh, buf, u->state_bytes);
        if (!st) u->eng->ops->set_residual(u->eng, buf);
        free(buf);
        if ((st = comm_sync_status(st))) return st;
        if (u->rank == 0)
            ds_info("resuming after layer %d/%d (%d modules already quantized)", start, c->L, u->stats->nmods);
    }
    u->saved = start > 0;
    return DS_OK;
}

/* Collective: every rank saves its residual stream, rank 0 makes the
 * checkpoint shards durable and then records the layer (resume.h). A failure
 * is a warning: the run goes on, only without this resume point. */
static ds_status resume_point(run *u, int l) {
    /* (the caller drained the writer thread: every tensor of layers <= l is written) */
    unsigned char *buf = xmalloc(u->state_bytes ? u->state_bytes : 1);
    u->rh.layer = l;
    u->eng->ops->get_residual(u->eng, buf);
    ds_status st = resume_save_rank(u->rdir, &u->rh, buf, u->state_bytes);
    free(buf);
    if (!st && u->rank == 0) st = ckpt_sync(u->ck);
    st = comm_sync_status(st);
    if (!st && u->rank == 0) st = resume_save_progress(u->rdir, l, u->nranks, u->job_fp, u->stats);
    st = comm_sync_status(st);
    if (st && u->rank == 0)
        ds_warn("could not save a resume state after layer %d: %s (the run goes on)", l + 1, ds_errmsg());
    if (!st) u->saved = 1;
    return st;
}

/* SmoothQuantModifier (a recipe stage before GPTQ; llm-compressor's
 * default "independent" pipeline gives it its own sequential epoch): every
 * layer's smoothing scales from a forward pass over all layers (activation
 * min/max all-reduced over the ranks), the smoothed unquantized tensors
 * written by rank 0; layer_begin re-applies the scales in the GPTQ pass. */
static ds_status smoothing_epoch(run *u) {
    if (!smoothquant_recipe_on(u->r)) return DS_OK;
    const double t = ds_now();
    ds_status st = smoothquant_calibrate(u->m, u->r, u->local, u->nlocal, u->rank == 0 ? u->ck : NULL, &u->sq);
    u->stats->t.forward += ds_now() - t;
    return st;
}

/* Layer l's weights into lw and the engine; prefetch l+1 (CUDA engine). */
static ds_status layer_begin(run *u, int l, layer_weights *lw) {
    const ds_status lst = layer_get(&u->pf, u->m, l, lw);
    ds_status st = comm_sync_status(lst); /* e.g. a non-finite weight: exit 3 naming it */
    if (st) {
        if (!lst) layer_free(lw);
        return st;
    }
    layer_set_all_experts(lw, !u->o->moe_routed_only);
    const float *sq = smoothquant_layer_scales(&u->sq, l);
    if (sq) smoothquant_apply(&u->m->cfg, lw, sq); /* the smoothed layer, as the SmoothQuant epoch left it */
    st = comm_sync_status(u->eng->ops->load_layer(u->eng, lw));
    if (st) {
        layer_free(lw);
        return st;
    }
    if (u->o->cuda && l + 1 < u->m->cfg.L) prefetch_start(&u->pf, u->m, l + 1);
    return DS_OK;
}

/* Not collective: the targeted Linears of the layer (from the config, never
 * the tokens, so the same on all ranks), their owners (bin packing by solve
 * cost 2·out·in² + in³) and which Hessian inputs they use. */
static void modules_assign(run *u, const layer_weights *lw) {
    u->nm = 0;
    for (int k = 0; k < lw->nlin; k++)
        if (lw->lin[k].quantizable && ckpt_module_quantized(u->r, lw->lin[k].name)) {
            const layer_linear *li = &lw->lin[k];
            u->cost[u->nm] = 2.0 * li->out * (double)li->in * li->in + (double)li->in * li->in * li->in;
            u->mods[u->nm++] = k;
        }
    pipeline_assign(u->cost, u->nm, u->nranks, u->owner);
    for (int inp = 0; inp < u->nin; inp++) {
        u->used[inp] = 0;
        for (int i = 0; i < u->nm && !u->used[inp]; i++) u->used[inp] = lw->lin[u->mods[i]].input_id == inp;
    }
}

/* NVFP4 (tensor_group) weight global scales of the layer's quantized modules
 * from their ORIGINAL weights: llm-compressor's fuse_weight_observers links
 * the observers of the modules named in FUSED_LAYER_NAMES under one parent
 * (gate_proj/up_proj, q_proj/k_proj/v_proj, q_a_proj/kv_a_proj_with_mqa,
 * w1/w3), whose global scale is generate_gparam of the group's absmax
 * (qs_nvfp4_global_scale); other modules use their own absmax. Not collective
 * (every rank holds the layer's weights). */
static void nvfp4_global_scales(run *u, const layer_weights *lw) {
    static const char *const fused[][3] = {{"gate_proj", "up_proj", NULL}, {"q_proj", "k_proj", "v_proj"},
                                           {"q_a_proj", "kv_a_proj_with_mqa", NULL}, {"w1", "w3", NULL}};
    if (u->r->w.strategy != QS_TENSOR_GROUP) return;
    if (!u->wgs) u->wgs = xmalloc(sizeof(float) * (size_t)u->maxlin);
    float *am = xmalloc(sizeof(float) * (size_t)(u->nm ? u->nm : 1));
    int *grp = xmalloc(sizeof(int) * (size_t)(u->nm ? u->nm : 1));
    for (int i = 0; i < u->nm; i++) {
        const layer_linear *li = &lw->lin[u->mods[i]];
        am[i] = qs_absmax(li->w, (size_t)li->out * li->in);
        const char *dot = strrchr(li->name, '.');
        const char *leaf = dot ? dot + 1 : li->name;
        grp[i] = -1;
        for (int g = 0; g < (int)DS_ARRAY_LEN(fused) && grp[i] < 0; g++)
            for (int k = 0; k < 3 && fused[g][k]; k++)
                if (!strcmp(leaf, fused[g][k])) grp[i] = g;
    }
    for (int i = 0; i < u->nm; i++) {
        const char *ni = lw->lin[u->mods[i]].name, *di = strrchr(ni, '.');
        float m = am[i];
        for (int j = 0; j < u->nm && grp[i] >= 0; j++) {
            const char *nj = lw->lin[u->mods[j]].name, *dj = strrchr(nj, '.');
            if (grp[j] == grp[i] && di && dj && di - ni == dj - nj && !strncmp(ni, nj, (size_t)(di - ni)) &&
                am[j] > m)
                m = am[j];
        }
        u->wgs[i] = qs_nvfp4_global_scale(m, (int)u->m->cfg.dtype);
    }
    free(am);
    free(grp);
}

/* Calibration pass (outputs discarded: propagate_error=True), then each
 * Hessian reduced to the rank(s) that solve modules using it. Host sums:
 * every used input with the CPU engine; with a device engine only to carry
 * a reduction (one rank: they stay on the device). */
static ds_status calibrate_and_reduce(run *u, const layer_weights *lw, stage_times *lt) {
    const model_config *c = &u->m->cfg;
    const int host_H = !u->eng->ops->device_hessians || u->nranks > 1;
    for (int inp = 0; inp < u->nin; inp++) {
        int n = model_input_dim(c, inp);
        u->H[inp] = u->used[inp] && host_H ? xcalloc((size_t)n * n, sizeof(double)) : NULL;
    }
    memset(u->cnt, 0, sizeof(int64_t) * 2 * (size_t)u->nin);
    const int static_act = u->r->w.act == QACT_INPUT_SCALE || u->r->w.act == QACT_INPUT_GLOBAL_SCALE;
    if (u->r->quantizer == RQ_QUANTIZATION && !static_act) { /* round-to-nearest, nothing to observe */
        for (int inp = 0; inp < u->nin; inp++) { free(u->H[inp]); u->H[inp] = NULL; }
        return DS_OK;
    }
    if (static_act) {
        if (!u->amax) u->amax = xmalloc(sizeof(float) * (size_t)u->nin);
        memset(u->amax, 0, sizeof(float) * (size_t)u->nin);
    }
    if (u->r->quantizer == RQ_QUANTIZATION) /* no Hessians (NULL entries): the activation observer only */
        for (int inp = 0; inp < u->nin; inp++) { free(u->H[inp]); u->H[inp] = NULL; }
    u->eng->act_amax = static_act ? u->amax : NULL;
    const engine_times t0 = u->eng->ops->times(u->eng);
    /* QuantizationModifier passes u->H (all NULL) even to a device engine: no Hessians */
    const int pass_H = host_H || u->r->quantizer == RQ_QUANTIZATION;
    ds_status st = comm_sync_status(u->eng->ops->calibrate(u->eng, u->used, pass_H ? u->H : NULL, u->cnt));
    u->eng->act_amax = NULL;
    /* static_minmax over every rank's tokens: the max of the ranks' max |X| */
    for (int inp = 0; static_act && !st && inp < u->nin; inp++)
        u->amax[inp] = (float)comm_allreduce_max_f64(u->amax[inp]);
    const engine_times t1 = u->eng->ops->times(u->eng);
    lt->forward = t1.forward - t0.forward;
    lt->hessian = t1.hessian - t0.hessian;
    lt->reduce = t1.hess_copy - t0.hess_copy; /* device -> host copies for the reduction */
    if (st) return st;

    /* token/sequence counts per input (one collective, config-sized) */
    const double t = ds_now();
    comm_allreduce_sum_i64(u->cnt, 2 * (size_t)u->nin);
    for (int inp = 0; inp < u->nin; inp++) {
        if (!u->H[inp]) continue;
        int n = model_input_dim(c, inp), first = -1, multi = 0, mine = 0;
        for (int i = 0; i < u->nm; i++) {
            if (lw->lin[u->mods[i]].input_id != inp) continue;
            if (first < 0) first = u->owner[i];
            else if (u->owner[i] != first) multi = 1;
            mine |= u->owner[i] == u->rank;
        }
        if (multi) comm_allreduce_sum_f64(u->H[inp], (size_t)n * n);
        else comm_reduce_sum_f64(u->H[inp], (size_t)n * n, first);
        if (!mine) { free(u->H[inp]); u->H[inp] = NULL; }
    }
    lt->reduce += ds_now() - t;
    return DS_OK;
}

static void hessians_free(run *u) {
    for (int inp = 0; inp < u->nin; inp++) { free(u->H[inp]); u->H[inp] = NULL; }
}

/* res (freed here) into the broadcast payload pr: the fake-quantized
 * weight (the RTN paths' f32 wq converted; GPTQ wrote it there), scales,
 * zero points, g_idx, and meta = loss, RTN fallback, seconds. */
static void result_to_payload(const run *u, const layer_linear *li, gptq_result *res, packed_result *pr,
                              double seconds) {
    const model_config *c = &u->m->cfg;
    const size_t ng = (size_t)quant_num_groups(&u->r->w, li->in);
    if (res->wq) ds_convert_from_f32(pr->w, res->wq, c->dtype, (size_t)li->out * li->in); /* the RTN paths */
    memcpy(pr->scale, res->scale, sizeof(float) * li->out * ng);
    for (size_t e = 0; e < li->out * ng; e++) pr->zp[e] = res->zp ? res->zp[e] : 0;
    for (int e = 0; e < li->in; e++) pr->g_idx[e] = res->g_idx ? res->g_idx[e] : 0;
    pr->meta[0] = res->loss;
    pr->meta[1] = res->rtn_fallback;
    pr->meta[2] = seconds;
    gptq_result_free(res);
}

/* Module i of the layer (owned by this rank) solved into *pr: the
 * fake-quantized weight in the model dtype, scales, zero points, g_idx and
 * loss. An expert no rank routed a token to is quantized round-to-nearest.
 * On failure, why receives the message (the caller may be another thread). */
static ds_status solve_one(run *u, layer_weights *lw, int i, packed_result *pr, char *why, size_t why_len) {
    const model_config *c = &u->m->cfg;
    const quant_args *qa = &u->r->w;
    layer_linear *li = &lw->lin[u->mods[i]];
    const int64_t ntok = u->cnt[2 * li->input_id], nseq = u->cnt[2 * li->input_id + 1];
    const double t = ds_now();
    gptq_result res;
    ds_status gs;
    quant_args qm = *qa; /* NVFP4: this module's (fused) weight global scale */
    if (u->wgs) qm.global_scale = u->wgs[i];
    scheme_result_alloc(pr, qa, li->out, li->in, c->dtype); /* the caller frees it, also on failure */
    if (u->r->quantizer == RQ_QUANTIZATION) { /* QuantizationModifier: the observer's qparams, RTN */
        gs = rtn_quantize(&qm, li->w, li->out, li->in, c->dtype, &res);
    } else if (ntok == 0) {
        gs = rtn_quantize(&qm, li->w, li->out, li->in, c->dtype, &res);
        res.rtn_fallback = 2;
    } else { /* u->H: the reduced sum, or NULL (one rank, device engine: on the device); the
              * fake-quantized weight straight into the broadcast payload */
        gs = u->eng->ops->gptq(u->eng, &qm, li, u->H[li->input_id], nseq, u->r->block_size,
                               u->r->dampening_frac, &res, pr->w);
    }
    if (gs) {
        snprintf(why, why_len, "%s", ds_errmsg());
        return gs;
    }
    result_to_payload(u, li, &res, pr, ds_now() - t);
    return DS_OK;
}

/* Module i can join a grouped solve (engine_ops.gptq_group): GPTQ with
 * calibration tokens, quantization parameters per row (channel, group; block
 * when its tiles do not straddle modules) and no per-module global scale. */
static int groupable(const run *u, const layer_linear *li) {
    const quant_args *qa = &u->r->w;
    if (!u->eng->ops->gptq_group || u->r->quantizer == RQ_QUANTIZATION || u->wgs) return 0;
    if (u->cnt[2 * li->input_id] == 0) return 0;
    return qa->strategy == QS_CHANNEL || qa->strategy == QS_GROUP ||
           (qa->strategy == QS_BLOCK && qa->block[0] > 0 && li->out % qa->block[0] == 0);
}

/* The n owned modules mi[0..n) (indices into u->mods, one input) as one
 * engine_ops.gptq_group call; each one's time is the call's share by rows. */
static ds_status solve_group(run *u, layer_weights *lw, const int *mi, int n, packed_result *prs, char *why,
                             size_t why_len) {
    const model_config *c = &u->m->cfg;
    const layer_linear **lis = xmalloc(sizeof *lis * (size_t)n);
    void **wq = xmalloc(sizeof *wq * (size_t)n);
    gptq_result *res = xcalloc((size_t)n, sizeof *res);
    int64_t rows = 0;
    for (int k = 0; k < n; k++) {
        lis[k] = &lw->lin[u->mods[mi[k]]];
        scheme_result_alloc(&prs[mi[k]], &u->r->w, lis[k]->out, lis[k]->in, c->dtype); /* the caller frees */
        wq[k] = prs[mi[k]].w;
        rows += lis[k]->out;
    }
    const int inp = lis[0]->input_id;
    ds_debug("gptq: %s .. %s (%d modules, %lld rows) to the engine as one group", lis[0]->name, lis[n - 1]->name,
             n, (long long)rows);
    const double t = ds_now();
    ds_status gs = u->eng->ops->gptq_group(u->eng, &u->r->w, lis, n, u->H[inp], u->cnt[2 * inp + 1],
                                           u->r->block_size, u->r->dampening_frac, res, wq);
    const double dt = ds_now() - t;
    if (gs) snprintf(why, why_len, "%s", ds_errmsg());
    else
        for (int k = 0; k < n; k++) result_to_payload(u, lis[k], &res[k], &prs[mi[k]], dt * lis[k]->out / rows);
    free(res);
    free(wq);
    free(lis);
    return gs;
}

/* Room for one failed solve's message (ds_errmsg) */
#define SOLVE_WHY 2048

/* Concurrent solves of one rank (engines with concurrent_gptq): a task is a
 * run of owned modules that share one Hessian, so a worker factors it once
 * (gptq_quantize's per-thread memo); a group costing more than a worker's
 * share is split (each part refactors, on another thread). */
typedef struct solve_task {
    int first, count; /* into solve_pool.mi */
    double cost;
} solve_task;

typedef struct solve_pool {
    run *u;
    layer_weights *lw;
    packed_result *prs;
    const int *mi;      /* owned module indices (into u->mods), grouped by input */
    solve_task *task;   /* by decreasing cost */
    ds_status *st;      /* [u->nm] */
    char (*why)[SOLVE_WHY]; /* [u->nm] */
} solve_pool;

static void solve_task_run(void *p, size_t t) {
    solve_pool *sp = p;
    const solve_task *k = &sp->task[t];
    for (int j = k->first; j < k->first + k->count; j++) {
        const int i = sp->mi[j];
        sp->st[i] = solve_one(sp->u, sp->lw, i, &sp->prs[i], sp->why[i], sizeof sp->why[i]);
        if (sp->st[i]) break;
    }
}

static void solve_worker_done(void *p) {
    (void)p;
    gptq_factor_cache_clear(); /* the worker's memo (thread-local) */
}

static int task_cmp(const void *a, const void *b) {
    const solve_task *x = a, *y = b;
    if (x->cost != y->cost) return x->cost < y->cost ? 1 : -1;
    return (x->first > y->first) - (x->first < y->first);
}

/* The owned modules' solves as tasks over the rank's threads. The results
 * do not depend on the schedule: every solve is thread-count independent
 * (gptq_quantize) and a memo hit returns the factor a fresh one would. */
static void solve_parallel(run *u, layer_weights *lw, packed_result *prs, ds_status *st, char (*why)[SOLVE_WHY]) {
    int *mi = xmalloc(sizeof(int) * (size_t)(u->nm ? u->nm : 1));
    solve_task *task = xmalloc(sizeof(solve_task) * (size_t)(u->nm ? u->nm : 1));
    int nmi = 0, ntask = 0;
    double total = 0;
    for (int i = 0; i < u->nm; i++) /* u->cost: the module's loop + a factorisation of its Hessian */
        if (u->owner[i] == u->rank) total += u->cost[i];
    const int T = ds_threads();
    for (int inp = 0; inp < u->nin; inp++) {
        const int g0 = nmi;
        const double n = model_input_dim(&u->m->cfg, inp), factor = n * n * n; /* the in^3 term of u->cost */
        double loops = 0;
        for (int i = 0; i < u->nm; i++) {
            if (u->owner[i] != u->rank || lw->lin[u->mods[i]].input_id != inp) continue;
            mi[nmi++] = i;
            loops += u->cost[i] - factor;
        }
        const int cnt = nmi - g0;
        if (!cnt) continue;
        /* parts: enough that none exceeds a worker's share of the layer */
        int parts = (int)ceil((factor + loops) / (total / T));
        parts = DS_MAX(1, DS_MIN(parts, cnt));
        for (int p = 0; p < parts; p++) {
            const int a = g0 + cnt * p / parts, b = g0 + cnt * (p + 1) / parts;
            task[ntask++] = (solve_task){a, b - a, factor + loops * (b - a) / cnt};
        }
    }
    qsort(task, (size_t)ntask, sizeof *task, task_cmp);
    solve_pool sp = {.u = u, .lw = lw, .prs = prs, .mi = mi, .task = task, .st = st, .why = why};
    ds_parallel_tasks((size_t)ntask, solve_task_run, solve_worker_done, &sp);
    free(task);
    free(mi);
}

/* Every rank solves the modules it owns (ranks in parallel; an engine with
 * concurrent_gptq also solves several at once on the rank's threads) into
 * prs[i]. lt->gptq: the wall time. */
static ds_status solve_owned(run *u, layer_weights *lw, packed_result *prs, stage_times *lt) {
    const double t = ds_now();
    ds_status *st = xcalloc((size_t)(u->nm ? u->nm : 1), sizeof *st);
    char(*why)[SOLVE_WHY] = xcalloc((size_t)(u->nm ? u->nm : 1), sizeof *why);
    if (u->eng->ops->concurrent_gptq && ds_threads() > 1) {
        solve_parallel(u, lw, prs, st, why);
    } else {
        /* in model order; a groupable module takes every later owned one of
         * its input along (q with k and v, gate with up, the experts' gate/up) */
        int *mi = xmalloc(sizeof(int) * (size_t)(u->nm ? u->nm : 1));
        char *done = xcalloc((size_t)(u->nm ? u->nm : 1), 1);
        for (int i = 0; i < u->nm; i++) {
            if (u->owner[i] != u->rank || done[i]) continue;
            const layer_linear *li = &lw->lin[u->mods[i]];
            int n = 0;
            if (groupable(u, li))
                for (int j = i; j < u->nm; j++) {
                    const layer_linear *lj = &lw->lin[u->mods[j]];
                    if (u->owner[j] == u->rank && !done[j] && lj->input_id == li->input_id && groupable(u, lj))
                        mi[n++] = j;
                }
            if (n > 1) {
                for (int k = 0; k < n; k++) done[mi[k]] = 1;
                if ((st[i] = solve_group(u, lw, mi, n, prs, why[i], sizeof why[i]))) break;
            } else if ((st[i] = solve_one(u, lw, i, &prs[i], why[i], sizeof why[i]))) {
                break;
            }
        }
        free(done);
        free(mi);
    }
    ds_status s = DS_OK;
    for (int i = 0; i < u->nm; i++) { /* the first failure in model order (the caller frees prs) */
        if (u->owner[i] != u->rank) continue;
        if (st[i] && !s) s = ds_error(st[i], "GPTQ failed on %s: %s", lw->lin[u->mods[i]].name, why[i]);
    }
    free(why);
    free(st);
    lt->gptq += ds_now() - t;
    return comm_sync_status(s); /* a failed solve stops every rank at this layer */
}

/* One module's tensors for the checkpoint writer thread (rank 0): derives
 * the on-disk codes from the weight and writes them (ckpt_write_module_gs).
 * Owns its data, so the pipeline may go on with the next layer. */
typedef struct save_job {
    ckpt_writer *ck;
    const quant_args *qa;
    ds_dtype dt;
    char *name;
    packed_result pr;  /* scale, zp, g_idx and the fake-quantized weight in the model dtype */
    float *w;          /* QuantizationModifier: a copy of the original weight f32 [out, in]; NULL: pr.w */
    int out, in, has_act, has_gs;
    float act_scale, gs;
} save_job;

static ds_status save_job_run(void *p) {
    const save_job *j = p;
    const size_t n = (size_t)j->out * (size_t)j->in;
    const int *zp = j->qa->symmetric ? NULL : j->pr.zp;
    const int *gi = j->qa->actorder == QA_GROUP ? j->pr.g_idx : NULL;
    float *w = j->w;
    if (!w) { /* the weight every rank installed: the same conversion */
        w = xmalloc(sizeof(float) * n);
        ds_convert_to_f32(w, j->pr.w, j->dt, n);
    }
    int8_t *q = xmalloc(n ? n : 1);
    /* the compressor quantizes the module's weight: GPTQ's fake-quantized one, or with
     * QuantizationModifier the original (fp4: a small negative weight gives code 8, -0) */
    scheme_codes_from_weight(j->qa, w, j->pr.scale, zp, gi, j->out, j->in, j->dt, q);
    if (w != j->w) free(w);
    const ds_status st = ckpt_write_module_gs(j->ck, j->name, q, j->pr.scale, zp, gi, j->out, j->in,
                                              j->has_act ? &j->act_scale : NULL, j->has_gs ? &j->gs : NULL);
    free(q);
    return st;
}

static void save_job_free(void *p) {
    save_job *j = p;
    free(j->name);
    free(j->w);
    free(j->pr.buf);
    free(j);
}

/* Each result is broadcast from its owner, in model order; every rank
 * installs the weight, records the module; rank 0 hands the module to the
 * checkpoint writer thread (save_job). Returns rank 0's write status so far
 * (not combined: the caller does at the layer boundary); lt->save is the
 * time spent waiting for the writer (bounded queue). */
static ds_status exchange_results(run *u, layer_weights *lw, packed_result *prs, stage_times *lt, double *loss) {
    const model_config *c = &u->m->cfg;
    const quant_args *qa = &u->r->w;
    run_stats *stats = u->stats;
    ds_status st = DS_OK;
    for (int i = 0; i < u->nm; i++) {
        layer_linear *li = &lw->lin[u->mods[i]];
        packed_result pr = prs[i];
        if (u->owner[i] != u->rank) scheme_result_alloc(&pr, qa, li->out, li->in, c->dtype);
        double t = ds_now();
        comm_bcast(pr.buf, pr.size, u->owner[i]);
        lt->bcast += ds_now() - t;
        /* QuantizationModifier: llm-compressor keeps the original weights (and
         * no activation quantization) for the rest of the calibration, so the
         * propagation does too; GPTQ propagates its fake-quantized weights. */
        const int keep = u->r->quantizer == RQ_QUANTIZATION;
        if (!keep) {
            ds_convert_to_f32(li->w, pr.w, c->dtype, (size_t)li->out * li->in);
            u->eng->ops->set_weight(u->eng, u->mods[i], li->w, pr.w);
        }
        module_record *mr = &stats->mods[stats->nmods++];
        snprintf(mr->name, sizeof mr->name, "%s", li->name);
        mr->owner = u->owner[i];
        mr->in = li->in;
        mr->out = li->out;
        mr->loss = pr.meta[0];
        mr->rtn_fallback = pr.meta[1] != 0;
        mr->seconds = pr.meta[2];
        stats->n_rtn += mr->rtn_fallback;
        if (pr.meta[1] == 2) {
            stats->n_no_tokens++;
            if (u->rank == 0)
                ds_warn("%s: no calibration token was routed to this expert (routed-only MoE calibration); "
                        "used round-to-nearest for this module (hint: keep moe_calibrate_all_experts or use "
                        "more calibration samples)", li->name);
        } else if (mr->rtn_fallback && u->rank == 0)
            ds_warn("%s: Cholesky of the Hessian failed; used round-to-nearest for this module "
                    "(hint: raise dampening_frac or use more calibration samples)", li->name);
        *loss += pr.meta[0];
        if (u->rank == 0 && st == DS_OK) {
            t = ds_now();
            save_job *j = xcalloc(1, sizeof *j);
            *j = (save_job){.ck = u->ck, .qa = qa, .dt = c->dtype, .name = xstrdup(li->name), .pr = pr,
                            .out = li->out, .in = li->in};
            if (keep) { /* li->w is freed with the layer */
                j->w = xmalloc(sizeof(float) * (size_t)li->out * li->in);
                memcpy(j->w, li->w, sizeof(float) * (size_t)li->out * li->in);
            }
            if (qa->act == QACT_INPUT_SCALE) { /* calculate_qparams(min, max) of the observer, in the model dtype */
                int qmin, qmax, z;
                quant_range(&u->r->in, &qmin, &qmax);
                const float am = u->amax[li->input_id];
                qs_qparams(1, -am, am, (int)c->dtype, qmin, qmax, &j->act_scale, &z);
            }
            if (qa->act == QACT_INPUT_GLOBAL_SCALE) /* NVFP4: generate_gparam of the observer's absmax */
                j->act_scale = qs_nvfp4_global_scale(u->amax[li->input_id], (int)c->dtype);
            j->has_act = qa->act == QACT_INPUT_SCALE || qa->act == QACT_INPUT_GLOBAL_SCALE;
            j->has_gs = u->wgs != NULL;
            j->gs = u->wgs ? u->wgs[i] : 0.0f;
            pr.buf = NULL; /* the job owns it now */
            st = ckpt_async_submit(u->wr, (ckpt_job){save_job_run, save_job_free, j});
            lt->save += ds_now() - t;
        }
        free(pr.buf);
        prs[i].buf = NULL;
    }
    if (u->rank == 0 && st == DS_OK) { /* at most the writer's depth of layers queued: memory stays bounded */
        const double t = ds_now();
        st = ckpt_async_end_layer(u->wr);
        lt->save += ds_now() - t;
    }
    return st;
}

/* One decoder layer: load, calibrate, reduce, solve, exchange, propagate. */
static ds_status layer_run(run *u, int l, stage_times *lt, double *loss) {
    layer_weights lw;
    double t = ds_now();
    ds_status st = layer_begin(u, l, &lw);
    lt->load = ds_now() - t;
    if (st) return st;
    modules_assign(u, &lw);
    nvfp4_global_scales(u, &lw); /* from the original weights, before any is replaced */
    if (!(st = calibrate_and_reduce(u, &lw, lt))) {
        packed_result *prs = xcalloc((size_t)(u->nm ? u->nm : 1), sizeof(packed_result));
        if (!(st = solve_owned(u, &lw, prs, lt))) {
            st = exchange_results(u, &lw, prs, lt, loss);
            /* with the quantized weights; the last layer's output is never read (no resume point
             * follows it, nothing computes on the final hidden states) */
            if (l + 1 < u->m->cfg.L) {
                t = ds_now();
                u->eng->ops->propagate(u->eng);
                lt->propagate = ds_now() - t;
            }
        }
        for (int i = 0; i < u->nm; i++) free(prs[i].buf);
        free(prs);
    }
    hessians_free(u);
    layer_free(&lw);
    return comm_sync_status(st); /* a save failure on rank 0 stops everyone at the layer boundary */
}

static void log_layer(const model *m, int l, const stage_times *lt, double loss, int nmods, double t_start) {
    double elapsed = ds_now() - t_start;
    double eta = elapsed / (l + 1) * (m->cfg.L - l - 1);
    ds_info("layer %d/%d | fwd %.2fs | hess %.2fs | reduce %.2fs | gptq %.2fs | bcast %.2fs | prop %.2fs | "
            "save %.2fs | loss %.3e | rss %.0f MB | eta %.1fs",
            l + 1, m->cfg.L, lt->forward, lt->hessian, lt->reduce, lt->gptq, lt->bcast, lt->propagate, lt->save,
            nmods ? loss / nmods : 0.0, (double)ds_peak_rss_bytes() / 1048576.0, eta);
}

/* After layer l: a resume point every resume_interval seconds, or now when a
 * rank got SIGUSR1/SIGTERM (then stop); decided on all ranks alike, never
 * after the last layer. Returns non-DS_OK to stop. */
static ds_status layer_boundary(run *u, int l) {
    const model_config *c = &u->m->cfg;
    const int sig = comm_allreduce_max_int(ds_stop_signal());
    if (l + 1 >= c->L || !(sig || comm_allreduce_max_f64(ds_now() - u->last_state) >= u->o->resume_interval))
        return DS_OK;
    const double t = ds_now();
    /* the resume point claims layers <= l: the writer thread must have written them (a write error
     * there stops the job here, as the synchronous write did) */
    ds_status st = comm_sync_status(u->rank == 0 ? ckpt_async_drain(u->wr) : DS_OK);
    if (st) {
        u->stats->t.save += ds_now() - t;
        return st;
    }
    resume_point(u, l);
    u->last_state = ds_now();
    u->stats->t.save += u->last_state - t;
    if (sig)
        return ds_error(DS_ERR_RUNTIME, "stopped on %s after layer %d/%d; the partial run is in %s\n"
                        "hint: continue it with --resume", sig == SIGTERM ? "SIGTERM" : "SIGUSR1", l + 1, c->L,
                        u->pdir);
    if (u->o->stop_after_layer == l + 1)
        return ds_error(DS_ERR_RUNTIME, "stopped after layer %d as asked (--stop-after-layer); the partial "
                        "run is in %s\nhint: continue it with --resume", l + 1, u->pdir);
    return DS_OK;
}

/* Rank 0 finishes the checkpoint (config.json last, fsync, rename). */
static ds_status output_finish(run *u) {
    const double t = ds_now();
    ds_status st = DS_OK;
    if (u->rank == 0) {
        st = ckpt_async_drain(u->wr); /* the last layers' tensors */
        u->stats->save_busy_s = ckpt_async_busy_s(u->wr);
        ckpt_async_stop(u->wr);
        u->wr = NULL;
    }
    if (u->rank == 0 && !st) {
        st = ckpt_finish(u->ck, &u->stats->bytes_written, &u->stats->nshards);
        if (st == DS_OK) u->ck = NULL; /* freed by ckpt_finish; on failure ckpt_abort cleans up */
    }
    u->stats->t.save += ds_now() - t;
    return comm_sync_status(st);
}

ds_status pipeline_quantize(const model *m, const recipe *r, const ds_sample *local, size_t nlocal,
                            const run_opts *o, run_stats *stats) {
    const model_config *c = &m->cfg;
    memset(stats, 0, sizeof *stats);
    run u = {.m = m, .r = r, .o = o, .stats = stats, .local = local, .nlocal = nlocal, .rank = comm_rank(),
             .nranks = comm_size(), .maxlin = 3 * c->E + 12, .nin = model_num_inputs(c), .t_start = ds_now()};

    /* sample counts (for the fingerprint and the summary) */
    int64_t counts[2] = {(int64_t)nlocal, 0};
    for (size_t s = 0; s < nlocal; s++) counts[1] += local[s].n;
    comm_allreduce_sum_i64(counts, 2);
    stats->samples_total = (size_t)counts[0];
    stats->tokens_total = (size_t)counts[1];
    stats->mods = xcalloc((size_t)c->L * (size_t)u.maxlin, sizeof(module_record));
    u.pdir = ckpt_partial_dir(o->out_dir);
    u.rdir = ds_path_join(u.pdir, "resume");
    u.mods = xmalloc(sizeof(int) * (size_t)u.maxlin);
    u.owner = xmalloc(sizeof(int) * (size_t)u.maxlin);
    u.cost = xmalloc(sizeof(double) * (size_t)u.maxlin);
    u.used = xmalloc(sizeof(int) * (size_t)u.nin);
    u.H = xcalloc((size_t)u.nin, sizeof(double *));
    u.cnt = xcalloc((size_t)u.nin * 2, sizeof(int64_t));

    int start = 0;
    ds_status st = resume_open(&u, &start);
    if (!st) st = output_claim(&u, start);
    if (!st) st = smoothing_epoch(&u);
    if (!st && u.rank == 0) u.wr = ckpt_async_start(1); /* after the smoothing epoch's writes */
    if (!st) st = engine_start(&u, start);
    u.last_state = ds_now();
    for (int l = start; l < c->L && !st; l++) {
        stage_times lt = {0};
        double loss = 0;
        const int n0 = stats->nmods;
        st = layer_run(&u, l, &lt, &loss);
        stats->t.load += lt.load; stats->t.forward += lt.forward; stats->t.hessian += lt.hessian;
        stats->t.reduce += lt.reduce; stats->t.gptq += lt.gptq; stats->t.bcast += lt.bcast;
        stats->t.propagate += lt.propagate; stats->t.save += lt.save;
        if (st) break;
        log_layer(m, l, &lt, loss, stats->nmods - n0, u.t_start);
        st = layer_boundary(&u, l);
    }
    if (u.pf.active) { /* stopped early: drop the prefetched layer */
        pthread_join(u.pf.th, NULL);
        if (!u.pf.st) layer_free(&u.pf.lw);
    }
    if (!st) st = output_finish(&u);
    if (o->cuda) { /* every rank reaches here on every path: a collective is safe */
        double peak = u.eng ? (double)u.eng->ops->peak_bytes(u.eng) : 0.0;
        stats->device_peak_bytes = (size_t)comm_allreduce_max_f64(peak);
    }
    if (u.eng) u.eng->ops->destroy(u.eng);
    if (u.wr) { /* stopped early: drop what is queued; the writer must be gone before ckpt_abort */
        stats->save_busy_s = ckpt_async_busy_s(u.wr);
        ckpt_async_stop(u.wr);
    }
    if (u.ck) ckpt_abort(u.ck, u.saved);
    sq_plan_free(&u.sq);
    stats->total_s = ds_now() - u.t_start;
    free(u.mods); free(u.owner); free(u.cost); free(u.used); free(u.H); free(u.cnt); free(u.amax); free(u.wgs);
    free(u.pdir);
    free(u.rdir);
    return st;
}
