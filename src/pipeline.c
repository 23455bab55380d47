/*
 * pipeline.c - distributed sequential GPTQ (see pipeline.h).
 */
#include "pipeline.h"
#include "checkpoint.h"
#include "comm.h"
#include "gpu_engine.h"
#include "gptq.h"
#include "ops_cpu.h"
#include "resume.h"

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

/* ---- Hessian capture ---- */

typedef struct capture_ctx {
    double **H;            /* [ninputs] -> [n, n] upper-triangle sums, NULL if unused */
    int64_t *cnt;          /* [2 * ninputs]: rows (tokens), calls (sequences) per input */
    float *scratch;        /* [nmax, nmax] */
    double seconds;
} capture_ctx;

static void capture_hessian(void *p, int input_id, const float *X, int T, int n) {
    capture_ctx *c = p;
    if (!c->H[input_id] || T <= 0) return;
    double t0 = ds_now();
    hessian_accum_cpu(c->H[input_id], X, T, n, c->scratch);
    c->cnt[2 * input_id] += T;
    c->cnt[2 * input_id + 1]++;
    c->seconds += ds_now() - t0;
}

/* ---- result exchange ----
 * The owner broadcasts the fake-quantized weight exactly as GPTQ produced it
 * (in the model dtype, so no precision is lost), the scales and zero-points.
 * Every rank installs that weight for the propagation pass (as the reference
 * writes `weight` = the GPTQ output); rank 0 derives the on-disk codes from it
 * the way the compressed-tensors compressor re-quantizes the stored weight. */

static int column_group(const quant_args *a, const int *g_idx, int col) {
    if (a->strategy != QS_GROUP) return 0;
    if (a->actorder == QA_GROUP && g_idx) return g_idx[col];
    return col / a->group_size;
}

/* q = the code compressed-tensors stores for the dequantized weight W. */
typedef struct codes_ctx {
    const quant_args *a;
    const float *W, *scale;
    const int *zp, *g_idx;
    int in, ng, qmin, qmax;
    ds_dtype dt;
    int8_t *q;
} codes_ctx;

static void codes_rows(void *p, size_t lo, size_t hi) {
    const codes_ctx *c = p;
    for (size_t o = lo; o < hi; o++)
        for (int i = 0; i < c->in; i++) {
            int g = column_group(c->a, c->g_idx, i);
            int z = c->zp ? c->zp[o * c->ng + g] : 0;
            c->q[o * c->in + i] = (int8_t)quant_code_from_deq(c->W[o * c->in + i], c->scale[o * c->ng + g], z,
                                                              c->qmin, c->qmax, c->dt);
        }
}

static void codes_from_weight(const quant_args *a, const float *W, const float *scale, const int *zp,
                              const int *g_idx, int out, int in, ds_dtype dt, int8_t *q) {
    codes_ctx c = {.a = a, .W = W, .scale = scale, .zp = zp, .g_idx = g_idx, .in = in,
                   .ng = quant_num_groups(a, in), .dt = dt, .q = q};
    quant_range(a, &c.qmin, &c.qmax);
    ds_parallel_for((size_t)out, (size_t)(1 << 18) / (size_t)in + 1, codes_rows, &c);
}

typedef struct packed_result {
    unsigned char *buf;
    size_t size;
    void *w;       /* [out, in] in the model dtype */
    float *scale;  /* [out, ngroups] */
    int32_t *zp, *g_idx;
    double *meta;  /* loss, rtn_fallback, seconds */
} packed_result;

static void packed_layout(packed_result *p, const quant_args *a, int out, int in, ds_dtype dt) {
    size_t ng = (size_t)quant_num_groups(a, in);
    size_t off_meta = 0, off_scale = off_meta + 3 * sizeof(double);
    size_t off_zp = off_scale + sizeof(float) * out * ng;
    size_t off_gi = off_zp + sizeof(int32_t) * out * ng;
    size_t off_w = off_gi + sizeof(int32_t) * in;
    off_w = (off_w + 7) & ~(size_t)7;
    p->size = off_w + ds_dtype_size(dt) * (size_t)out * in;
    p->buf = xcalloc(1, p->size);
    p->meta = (double *)(void *)(p->buf + off_meta);
    p->scale = (float *)(void *)(p->buf + off_scale);
    p->zp = (int32_t *)(void *)(p->buf + off_zp);
    p->g_idx = (int32_t *)(void *)(p->buf + off_gi);
    p->w = p->buf + off_w;
}

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

/* ---- resume state: the residual stream in the model dtype ---- */

static void residual_put(gpu_engine *eng, float **x, const ds_sample *local, size_t nlocal, const model_config *c,
                         const unsigned char *buf) {
    if (eng) { gpu_engine_set_residual(eng, (const uint16_t *)(const void *)buf); return; }
    const size_t esz = ds_dtype_size(c->dtype);
    for (size_t s = 0, off = 0; s < nlocal; off += (size_t)local[s].n * c->C, s++)
        ds_convert_to_f32(x[s], buf + off * esz, c->dtype, (size_t)local[s].n * c->C);
}

static void residual_get(gpu_engine *eng, float *const *x, const ds_sample *local, size_t nlocal,
                         const model_config *c, unsigned char *buf) {
    if (eng) { gpu_engine_get_residual(eng, (uint16_t *)(void *)buf); return; }
    const size_t esz = ds_dtype_size(c->dtype);
    for (size_t s = 0, off = 0; s < nlocal; off += (size_t)local[s].n * c->C, s++)
        ds_convert_from_f32(buf + off * esz, x[s], c->dtype, (size_t)local[s].n * c->C);
}

/* Collective: every rank saves its residual stream, rank 0 makes the
 * checkpoint shards durable and then records the layer (resume.h). A failure
 * is a warning: the run goes on, only without this resume point. */
static ds_status save_state(const char *rdir, const resume_head *rh, gpu_engine *eng, float *const *x,
                            const ds_sample *local, size_t nlocal, const model_config *c, size_t bytes,
                            ckpt_writer *ck, const run_stats *stats) {
    unsigned char *buf = xmalloc(bytes ? bytes : 1);
    residual_get(eng, x, local, nlocal, c, buf);
    ds_status st = resume_save_rank(rdir, rh, buf, bytes);
    free(buf);
    if (!st && rh->rank == 0) st = ckpt_sync(ck);
    st = comm_sync_status(st);
    if (!st && rh->rank == 0) st = resume_save_progress(rdir, rh->layer, rh->world, rh->job_fp, stats);
    st = comm_sync_status(st);
    if (st && rh->rank == 0)
        ds_warn("could not save a resume state after layer %d: %s (the run goes on)", rh->layer + 1, ds_errmsg());
    return st;
}

/* ---- the pipeline ---- */

static void log_layer(const model *m, int l, const stage_times *lt, double loss, int nmods, double t_start) {
    double elapsed = ds_now() - t_start;
    double eta = elapsed / (l + 1) * (m->cfg.L - l - 1);
    ds_info("layer %d/%d | fwd %.2fs | hess %.2fs | reduce %.2fs | gptq %.2fs | bcast %.2fs | prop %.2fs | "
            "save %.2fs | loss %.3e | rss %.0f MB | eta %.1fs",
            l + 1, m->cfg.L, lt->forward, lt->hessian, lt->reduce, lt->gptq, lt->bcast, lt->propagate, lt->save,
            nmods ? loss / nmods : 0.0, (double)ds_peak_rss_bytes() / 1048576.0, eta);
}

ds_status pipeline_quantize(const model *m, const recipe *r, const ds_sample *local, size_t nlocal,
                            const run_opts *o, run_stats *stats) {
    const model_config *c = &m->cfg;
    const int rank = comm_rank(), nranks = comm_size();
    const double t_start = ds_now();
    ckpt_writer *ck = NULL;
    ds_status st = DS_OK;
    int saved = 0; /* a resume state is on disk: keep the partial dir on failure */
    memset(stats, 0, sizeof *stats);

    /* sample counts (for the fingerprint and the summary) */
    int max_T = 1;
    int64_t counts[2] = {(int64_t)nlocal, 0};
    for (size_t s = 0; s < nlocal; s++) { max_T = DS_MAX(max_T, local[s].n); counts[1] += local[s].n; }
    comm_allreduce_sum_i64(counts, 2);
    stats->samples_total = (size_t)counts[0];
    stats->tokens_total = (size_t)counts[1];
    const int maxlin = 3 * c->E + 12;
    stats->mods = xcalloc((size_t)c->L * (size_t)maxlin, sizeof(module_record));

    /* resume state of an interrupted run of this job (resume.h) */
    char *pdir = ckpt_partial_dir(o->out_dir), *rdir = ds_path_join(pdir, "resume");
    /* every rank's token ids, combined in rank order (two 32-bit halves, so
     * the integer sums cannot overflow) */
    const uint64_t ids_fp = resume_ids_fingerprint(local, nlocal) * (2u * (uint64_t)rank + 1u);
    int64_t halves[2] = {(int64_t)(ids_fp & 0xffffffffu), (int64_t)(ids_fp >> 32)};
    comm_allreduce_sum_i64(halves, 2);
    const uint64_t data_fp = (uint64_t)halves[0] ^ ((uint64_t)halves[1] << 29);
    const uint64_t job_fp = resume_job_fingerprint(m, r, nranks, o->cuda, stats->samples_total, stats->tokens_total,
                                                   data_fp);
    const uint64_t rank_fp = resume_rank_fingerprint(job_fp, local, nlocal);
    int done_layers = -1; /* last completed layer of the partial run, -1: none */
    st = resume_load_progress(rdir, nranks, job_fp, c->L, c->L * maxlin, &done_layers, stats);
    if (st && !o->resume) { st = DS_OK; done_layers = 0; } /* another job's state: discarded below */
    if ((st = comm_sync_status(st))) goto early;
    if (!o->resume && done_layers >= 0) {
        if (rank == 0)
            ds_warn("discarding the partial run in %s (pass --resume to continue it instead)", pdir);
        done_layers = -1;
        stats->nmods = stats->n_rtn = stats->n_no_tokens = 0;
    } else if (o->resume && done_layers < 0 && rank == 0) {
        ds_info("--resume: no resume state in %s; starting from the first layer", rdir);
    }
    const int start = done_layers + 1;

    /* output first: fail before hours of work, not after */
    double t0 = ds_now();
    if (rank == 0)
        st = ckpt_begin(m, r, o->out_dir, o->overwrite, o->max_shard_bytes, start > 0 ? start : -1, &ck);
    st = comm_sync_status(st);
    stats->t.save += ds_now() - t0;
    if (st) goto early;

    /* embeddings of the local samples: x[s] [T_s, C] */
    float **x = xcalloc(nlocal ? nlocal : 1, sizeof(float *));
    gpu_engine *eng = NULL;
    if (o->cuda) { /* the engine embeds and keeps the residual stream itself */
        gpu_engine_opts go = {.offload_acts = o->offload_acts, .budget_bytes = o->gpu_budget_bytes,
                              .local_rank = gpu_engine_local_rank(), .qa = &r->w, .gptq_block = r->block_size,
                              .max_micro_batch = o->max_micro_batch};
        st = gpu_engine_create(m, local, nlocal, &go, &eng);
        snprintf(stats->device, sizeof stats->device, "%s", eng ? gpu_engine_describe(eng) : "cuda");
    } else {
        snprintf(stats->device, sizeof stats->device, "cpu");
        for (size_t s = 0; s < nlocal && st == DS_OK; s++) {
            x[s] = xmalloc(sizeof(float) * (size_t)local[s].n * c->C);
            st = model_embed(m, local[s].ids, local[s].n, x[s]);
        }
    }
    if ((st = comm_sync_status(st))) goto done;
    if (eng) ds_info("device: %s", gpu_engine_describe(eng));

    /* resuming: the residual stream after layer start-1 replaces the embeddings */
    size_t ntok_local = 0;
    for (size_t i = 0; i < nlocal; i++) ntok_local += (size_t)local[i].n;
    const size_t esz = ds_dtype_size(c->dtype), state_bytes = ntok_local * (size_t)c->C * esz;
    resume_head rh = {.world = nranks, .rank = rank, .dtype = c->dtype, .job_fp = job_fp, .rank_fp = rank_fp,
                      .nlocal = nlocal, .ntok = ntok_local, .C = (uint64_t)c->C};
    if (start > 0) {
        unsigned char *buf = xmalloc(state_bytes ? state_bytes : 1);
        rh.layer = start - 1;
        st = resume_load_rank(rdir, &rh, buf, state_bytes);
        if (!st) residual_put(eng, x, local, nlocal, c, buf);
        free(buf);
        if ((st = comm_sync_status(st))) goto done;
        if (rank == 0) ds_info("resuming after layer %d/%d (%d modules already quantized)", start, c->L, stats->nmods);
    }
    double last_state = ds_now();
    saved = start > 0;

    /* module list: every targeted Linear, in model order, built from the
     * config (never from the tokens), so it is the same on all ranks */
    const int nin = model_num_inputs(c);
    int nmax = 0;
    for (int inp = 0; inp < nin; inp++) nmax = DS_MAX(nmax, model_input_dim(c, inp));
    /* CPU-path buffers (the engine has its own, on the device) */
    float *y = eng ? NULL : xmalloc(sizeof(float) * (size_t)max_T * c->C);
    float *Hf = NULL;
    capture_ctx cap = {.scratch = eng ? NULL : xmalloc(sizeof(float) * (size_t)nmax * nmax),
                       .H = xcalloc((size_t)nin, sizeof(double *)),
                       .cnt = xcalloc((size_t)nin * 2, sizeof(int64_t))};
    int *mods = xmalloc(sizeof(int) * (size_t)maxlin), *owner = xmalloc(sizeof(int) * (size_t)maxlin);
    int *used = xmalloc(sizeof(int) * (size_t)nin);
    double *cost = xmalloc(sizeof(double) * (size_t)maxlin);
    layer_scratch ls = {0};
    if (!eng) layer_scratch_init(&ls, c, max_T);
    layer_prefetch pf = {0};

    for (int l = start; l < c->L; l++) {
        stage_times lt = {0};
        layer_weights lw;
        double t = ds_now();
        const ds_status lst = layer_get(&pf, m, l, &lw);
        if ((st = comm_sync_status(lst))) { /* e.g. a non-finite weight: exit 3 naming it */
            if (!lst) layer_free(&lw);
            break;
        }
        layer_set_all_experts(&lw, !o->moe_routed_only);
        if (eng) gpu_engine_load_layer(eng, &lw);
        if (eng && l + 1 < c->L) prefetch_start(&pf, m, l + 1);
        lt.load = ds_now() - t;

        int nm = 0;
        for (int k = 0; k < lw.nlin; k++)
            if (lw.lin[k].quantizable && ckpt_module_quantized(r, lw.lin[k].name)) {
                const layer_linear *li = &lw.lin[k];
                cost[nm] = 2.0 * li->out * (double)li->in * li->in + (double)li->in * li->in * li->in;
                mods[nm++] = k;
            }
        pipeline_assign(cost, nm, nranks, owner);
        /* host Hessian sums: every used input on the CPU; with the engine
         * only to carry a reduction (one rank: they stay on the device) */
        const int host_H = !eng || nranks > 1;
        for (int inp = 0; inp < nin; inp++) {
            int n = model_input_dim(c, inp);
            used[inp] = 0;
            for (int i = 0; i < nm && !used[inp]; i++) used[inp] = lw.lin[mods[i]].input_id == inp;
            cap.H[inp] = used[inp] && host_H ? xcalloc((size_t)n * n, sizeof(double)) : NULL;
        }
        memset(cap.cnt, 0, sizeof(int64_t) * 2 * (size_t)nin);

        /* calibration pass (outputs discarded: propagate_error=True) */
        t = ds_now();
        if (eng) {
            gpu_engine_times g0 = gpu_engine_get_times(eng);
            gpu_engine_calibrate(eng, used, host_H ? cap.H : NULL, cap.cnt);
            gpu_engine_times g1 = gpu_engine_get_times(eng);
            lt.hessian = g1.hessian - g0.hessian;
            lt.forward = g1.forward - g0.forward;
            lt.reduce = g1.hess_copy - g0.hess_copy; /* device -> host copies for the reduction */
        } else {
            cap.seconds = 0;
            for (size_t s = 0; s < nlocal; s++) {
                memcpy(y, x[s], sizeof(float) * (size_t)local[s].n * c->C);
                layer_forward(m, &lw, y, local[s].n, &ls, capture_hessian, &cap);
            }
            lt.hessian = cap.seconds;
            lt.forward = ds_now() - t - cap.seconds;
        }

        /* token/sequence counts per input (one collective, config-sized), then
         * each Hessian reduced to the rank(s) that solve modules using it */
        t = ds_now();
        comm_allreduce_sum_i64(cap.cnt, 2 * (size_t)nin);
        for (int inp = 0; inp < nin; inp++) {
            if (!cap.H[inp]) continue;
            int n = model_input_dim(c, inp), first = -1, multi = 0, mine = 0;
            for (int i = 0; i < nm; i++) {
                if (lw.lin[mods[i]].input_id != inp) continue;
                if (first < 0) first = owner[i];
                else if (owner[i] != first) multi = 1;
                mine |= owner[i] == rank;
            }
            if (multi) comm_allreduce_sum_f64(cap.H[inp], (size_t)n * n);
            else comm_reduce_sum_f64(cap.H[inp], (size_t)n * n, first);
            if (!mine) { free(cap.H[inp]); cap.H[inp] = NULL; }
        }
        lt.reduce += ds_now() - t;

        /* phase 1: every rank solves the modules it owns (ranks in parallel);
         * phase 2: each result is broadcast from its owner, in model order */
        double layer_loss = 0;
        packed_result *prs = xcalloc((size_t)(nm ? nm : 1), sizeof(packed_result));
        for (int i = 0; i < nm; i++) {
            layer_linear *li = &lw.lin[mods[i]];
            const int64_t ntok = cap.cnt[2 * li->input_id], nseq = cap.cnt[2 * li->input_id + 1];
            if (owner[i] == rank) {
                packed_result pr;
                packed_layout(&pr, &r->w, li->out, li->in, c->dtype);
                t = ds_now();
                int n = li->in;
                gptq_result res;
                ds_status gs;
                if (ntok == 0) { /* an expert no rank routed a token to: round-to-nearest */
                    gs = rtn_quantize(&r->w, li->w, li->out, li->in, c->dtype, &res);
                    res.rtn_fallback = 2;
                } else if (eng) { /* cap.H: the reduced sum, or NULL (one rank: on the device) */
                    gs = gpu_engine_gptq(eng, &r->w, li, cap.H[li->input_id], nseq, r->block_size,
                                         r->dampening_frac, &res);
                } else {
                    Hf = xrealloc(Hf, sizeof(float) * (size_t)n * n);
                    hessian_to_f32_cpu(Hf, cap.H[li->input_id], n, (double)nseq);
                    gs = gptq_quantize(&r->w, li->w, li->out, li->in, Hf, r->block_size, r->dampening_frac,
                                       c->dtype, &res);
                }
                if (gs) {
                    char why[2048];
                    snprintf(why, sizeof why, "%s", ds_errmsg());
                    st = ds_error(gs, "GPTQ failed on %s: %s", li->name, why);
                    free(pr.buf);
                    break;
                }
                size_t ng = (size_t)quant_num_groups(&r->w, li->in);
                ds_convert_from_f32(pr.w, res.wq, c->dtype, (size_t)li->out * li->in);
                memcpy(pr.scale, res.scale, sizeof(float) * li->out * ng);
                for (size_t e = 0; e < li->out * ng; e++) pr.zp[e] = res.zp ? res.zp[e] : 0;
                for (int e = 0; e < li->in; e++) pr.g_idx[e] = res.g_idx ? res.g_idx[e] : 0;
                pr.meta[0] = res.loss;
                pr.meta[1] = res.rtn_fallback;
                pr.meta[2] = ds_now() - t;
                gptq_result_free(&res);
                lt.gptq += ds_now() - t;
                prs[i] = pr;
            }
        }
        if ((st = comm_sync_status(st))) { /* a solve failed: stop at this layer, all ranks */
            for (int i = 0; i < nm; i++) free(prs[i].buf);
            free(prs);
            for (int inp = 0; inp < nin; inp++) { free(cap.H[inp]); cap.H[inp] = NULL; }
            layer_free(&lw);
            break;
        }
        for (int i = 0; i < nm; i++) {
            layer_linear *li = &lw.lin[mods[i]];
            packed_result pr = prs[i];
            if (owner[i] != rank) packed_layout(&pr, &r->w, li->out, li->in, c->dtype);
            t = ds_now();
            comm_bcast(pr.buf, pr.size, owner[i]);
            lt.bcast += ds_now() - t;
            const int *zp = r->w.symmetric ? NULL : pr.zp;
            const int *gi = r->w.actorder == QA_GROUP ? pr.g_idx : NULL;
            ds_convert_to_f32(li->w, pr.w, c->dtype, (size_t)li->out * li->in);
            if (eng) gpu_engine_set_weight(eng, mods[i], li->w);
            module_record *mr = &stats->mods[stats->nmods++];
            snprintf(mr->name, sizeof mr->name, "%s", li->name);
            mr->owner = owner[i];
            mr->in = li->in;
            mr->out = li->out;
            mr->loss = pr.meta[0];
            mr->rtn_fallback = pr.meta[1] != 0;
            mr->seconds = pr.meta[2];
            stats->n_rtn += mr->rtn_fallback;
            if (pr.meta[1] == 2) {
                stats->n_no_tokens++;
                if (rank == 0)
                    ds_warn("%s: no calibration token was routed to this expert (routed-only MoE calibration); "
                            "used round-to-nearest for this module (hint: keep moe_calibrate_all_experts or use "
                            "more calibration samples)", li->name);
            } else if (mr->rtn_fallback && rank == 0)
                ds_warn("%s: Cholesky of the Hessian failed; used round-to-nearest for this module "
                        "(hint: raise dampening_frac or use more calibration samples)", li->name);
            layer_loss += pr.meta[0];
            if (rank == 0 && st == DS_OK) {
                t = ds_now();
                int8_t *q = xmalloc((size_t)li->out * li->in);
                codes_from_weight(&r->w, li->w, pr.scale, zp, gi, li->out, li->in, c->dtype, q);
                st = ckpt_write_module(ck, li->name, q, pr.scale, zp, gi, li->out, li->in);
                free(q);
                lt.save += ds_now() - t;
            }
            free(pr.buf);
        }
        free(prs);
        for (int inp = 0; inp < nin; inp++) { free(cap.H[inp]); cap.H[inp] = NULL; }

        /* propagation pass with the quantized weights */
        t = ds_now();
        if (eng) gpu_engine_propagate(eng);
        else
            for (size_t s = 0; s < nlocal; s++) layer_forward(m, &lw, x[s], local[s].n, &ls, NULL, NULL);
        lt.propagate = ds_now() - t;
        layer_free(&lw);

        stats->t.load += lt.load; stats->t.forward += lt.forward; stats->t.hessian += lt.hessian;
        stats->t.reduce += lt.reduce; stats->t.gptq += lt.gptq; stats->t.bcast += lt.bcast;
        stats->t.propagate += lt.propagate; stats->t.save += lt.save;
        log_layer(m, l, &lt, layer_loss, nm, t_start);
        /* a save failure on rank 0 stops everyone at the layer boundary */
        if ((st = comm_sync_status(st))) break;
        /* resume point: every resume_interval seconds, or now when a rank
         * got SIGUSR1/SIGTERM (then stop); decided on all ranks alike, never
         * after the last layer */
        const int sig = comm_allreduce_max_int(ds_stop_signal());
        if (l + 1 < c->L && (sig || comm_allreduce_max_f64(ds_now() - last_state) >= o->resume_interval)) {
            t = ds_now();
            rh.layer = l;
            if (save_state(rdir, &rh, eng, x, local, nlocal, c, state_bytes, ck, stats) == DS_OK) saved = 1;
            last_state = ds_now();
            stats->t.save += last_state - t;
            if (sig) {
                st = ds_error(DS_ERR_RUNTIME, "stopped on %s after layer %d/%d; the partial run is in %s\n"
                              "hint: continue it with --resume", sig == SIGTERM ? "SIGTERM" : "SIGUSR1", l + 1,
                              c->L, pdir);
                break;
            }
            if (o->stop_after_layer == l + 1) {
                st = ds_error(DS_ERR_RUNTIME, "stopped after layer %d as asked (--stop-after-layer); the partial "
                              "run is in %s\nhint: continue it with --resume", l + 1, pdir);
                break;
            }
        }
    }
    if (pf.active) { /* stopped early: drop the prefetched layer */
        pthread_join(pf.th, NULL);
        layer_free(&pf.lw);
    }
    free(mods);
    free(used);
    free(owner);
    free(cost);
    free(cap.H);
    free(cap.cnt);
    layer_scratch_free(&ls);
    free(cap.scratch);
    free(y);
    free(Hf);

    if (st == DS_OK) {
        double t = ds_now();
        if (rank == 0) {
            st = ckpt_finish(ck, &stats->bytes_written, &stats->nshards);
            if (st == DS_OK) ck = NULL; /* freed by ckpt_finish; on failure ckpt_abort cleans up */
        }
        stats->t.save += ds_now() - t;
        st = comm_sync_status(st);
    }
done:
    if (o->cuda) { /* every rank reaches here on every path: a collective is safe */
        double peak = eng ? (double)gpu_engine_peak_bytes(eng) : 0.0;
        stats->device_peak_bytes = (size_t)comm_allreduce_max_f64(peak);
        gpu_engine_destroy(eng);
    }
    if (ck) ckpt_abort(ck, saved);
    for (size_t s = 0; s < nlocal; s++) free(x[s]);
    free(x);
    stats->total_s = ds_now() - t_start;
early:
    free(pdir);
    free(rdir);
    return st;
}

void run_stats_free(run_stats *s) {
    if (!s) return;
    free(s->mods);
    s->mods = NULL;
}
