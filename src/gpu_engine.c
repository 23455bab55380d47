/*
 * gpu_engine.c - the CUDA layer engine (see gpu_engine.h). Plain C: every
 * device operation goes through cuda/kernels.h, so the same file links against
 * the real kernels (make CUDA=1) or, for the CPU-side tests of this
 * orchestration, against tests/cuda_emul.c (host memory, CPU twins).
 */
#include "gpu_engine.h"
#include "comm.h"
#include "gpu_plan.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

int gpu_engine_local_rank(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID",
                                       "PMI_LOCAL_RANK"};
    const char *from = "MPI's shared-memory split";
    int r = -1;
    for (size_t i = 0; i < DS_ARRAY_LEN(vars) && r < 0; i++) {
        const char *v = getenv(vars[i]);
        char *end;
        if (v && *v) {
            long x = strtol(v, &end, 10);
            if (*end == '\0' && x >= 0 && x < 1 << 20) { r = (int)x; from = vars[i]; }
        }
    }
    if (r < 0) r = comm_local_rank();
    ds_debug("local rank %d (from %s) of %d ranks on this node", r, from, comm_local_size());
    return r;
}

ds_status gpu_engine_check_model(const model_config *c) {
    if (c->dtype != DS_DTYPE_BF16 && c->dtype != DS_DTYPE_F16 && c->dtype != DS_DTYPE_F32)
        return ds_error(DS_ERR_USAGE, "--device cuda: the model's torch_dtype is %s; the CUDA engine runs "
                        "bfloat16, float16 and float32 models\nhint: use --device cpu",
                        ds_dtype_torch_name(c->dtype));
    return DS_OK;
}

#if defined(DS_GPU_LAZY)
/* The doneshot binary of a CUDA build: the rest of this file lives in
 * libdoneshot-cuda.so, which src/gpu_loader.c loads on first use. */
#elif !defined(DS_CUDA)

int gpu_engine_built(void) { return 0; }
int gpu_engine_device_count(void) { return 0; }
const char *gpu_engine_why_none(void) { return "this doneshot was built without CUDA"; }

ds_status gpu_engine_create(const model *m, const ds_sample *local, size_t nlocal, const gpu_engine_opts *o,
                            gpu_engine **out) {
    (void)m; (void)local; (void)nlocal; (void)o;
    *out = NULL;
    return ds_error(DS_ERR_USAGE, "--device cuda: this doneshot was built without CUDA\n"
                    "hint: use --device cpu, or rebuild with nvcc installed (make CUDA=1)");
}
#define UNREACHABLE DS_DIE(1, "CUDA engine call in a build without CUDA")
const char *gpu_engine_describe(const gpu_engine *e) { (void)e; return "none"; }
void gpu_engine_load_layer(gpu_engine *e, const layer_weights *lw) { (void)e; (void)lw; UNREACHABLE; }
void gpu_engine_calibrate(gpu_engine *e, const int *used, double *const *H_host, int64_t *cnt, float *act_amax) {
    (void)e; (void)used; (void)H_host; (void)cnt; (void)act_amax; UNREACHABLE;
}
ds_status gpu_engine_gptq(gpu_engine *e, const quant_args *a, const layer_linear *li, const double *H_host,
                          int64_t nseq, int block_size, double dampening_frac, gptq_result *res, void *wq_model) {
    (void)e; (void)a; (void)li; (void)H_host; (void)nseq; (void)block_size; (void)dampening_frac; (void)res;
    (void)wq_model;
    UNREACHABLE;
}
ds_status gpu_engine_gptq_group(gpu_engine *e, const quant_args *a, const layer_linear *const *lis, int n,
                                const double *H_host, int64_t nseq, int block_size, double dampening_frac,
                                gptq_result *res, void *const *wq_model) {
    (void)e; (void)a; (void)lis; (void)n; (void)H_host; (void)nseq; (void)block_size; (void)dampening_frac;
    (void)res; (void)wq_model;
    UNREACHABLE;
}
void gpu_engine_set_weight(gpu_engine *e, int lin, const float *w, const void *w_model) {
    (void)e; (void)lin; (void)w; (void)w_model; UNREACHABLE;
}
void gpu_engine_propagate(gpu_engine *e) { (void)e; UNREACHABLE; }
void gpu_engine_get_residual(gpu_engine *e, uint16_t *host) { (void)e; (void)host; UNREACHABLE; }
void gpu_engine_set_residual(gpu_engine *e, const uint16_t *host) { (void)e; (void)host; UNREACHABLE; }
gpu_engine_times gpu_engine_get_times(const gpu_engine *e) { (void)e; return (gpu_engine_times){0}; }
size_t gpu_engine_peak_bytes(const gpu_engine *e) { (void)e; return 0; }
void gpu_engine_destroy(gpu_engine *e) { (void)e; }

#else /* DS_CUDA */

#include "kernels.h"

/* *v := the number in environment variable name when it is set and not
 * empty, in [lo, 2^30]; else *v unchanged. DS_ERR_USAGE names it. */
static ds_status env_rows(const char *name, long lo, const char *dflt, long *v) {
    const char *s = getenv(name);
    if (!s || !*s) return DS_OK;
    char *end;
    errno = 0;
    const long n = strtol(s, &end, 10);
    if (*end || errno || n < lo || n > (1L << 30))
        return ds_error(DS_ERR_USAGE, "%s=%s: expected a number of rows in [%ld, 2^30]\nhint: unset it (%s)", name,
                        s, lo, dflt);
    *v = n;
    return DS_OK;
}

/* Dense-layer Hessian inputs (model.h INP_*). */
enum { NCAP = INP_DOWN + 1 };

struct gpu_engine {
    const model *m;
    model_config c;
    int dev;
    char desc[512];
    void *s_comp, *s_copy;          /* compute stream, copy stream (offload) */
    void *ev_h2d[2], *ev_comp[2];   /* staging-buffer handshakes (offload) */
    void *ev_hess[2 * NCAP];        /* start/stop around each Hessian update of a chunk */

    /* samples: sequence lengths, token offsets into the residual stream, chunks */
    size_t nseq, ntok;
    int *len;
    size_t *off;                    /* [nseq + 1] */
    int nchunks;
    int *chunk0;                    /* [nchunks + 1] first sequence of each chunk */
    int cs0, cs1;                   /* the sequences [cs0, cs1) of the chunk layer_chunk is on */
    const layer_linear *lin0;       /* the loaded layer's lw->lin (gptq's li -> weight slot) */
    int *seg;                       /* [micro_batch] one routed expert's rows per sequence of the chunk */
    int *pseg;                      /* [2 E, micro_batch] an expert group's problems' rows per sequence (twin geometry) */
    size_t chunk_tok_max;
    int max_T, micro_batch;

    /* residual stream, bf16 [ntok, C] */
    int offload;
    uint16_t *x_dev;                /* resident */
    uint16_t *x_host;               /* pinned (offload) */
    uint16_t *stage[2];             /* [chunk_tok_max, C] device staging (offload) */

    /* per-chunk transients */
    uint16_t *y, *a, *q, *k, *v, *ctx, *o, *g, *u;
    void *attn_ws;
    uint16_t *cos_t, *sin_t;        /* [max_T, HS] */

    /* one layer's weights: nlw slots (a dense layer's LIN_Q..LIN_DOWN, or a
     * sparse layer's lin[] order: attention, router, experts, shared expert),
     * each sized for the largest Linear any layer puts there */
    int nlw;
    int *win, *wout, *has_b;        /* [nlw] current layer's shapes */
    size_t *wcap;                   /* [nlw] elements allocated */
    uint16_t **w, **b;              /* [nlw] */
    uint16_t *in_norm, *post_norm, *q_norm, *k_norm;
    uint16_t *h_stage;              /* pinned host staging of a whole layer */
    size_t *h_off, *h_boff, h_norm_off, h_elems;

    /* MoE layer (issue 13): the current layer's structure and transients */
    int sparse, all_experts, router, expert0, shared0, shared_gate;
    uint16_t *logits, *xe, *acc;    /* [ct, E], [R, C], [ct, C] */
    int32_t *top_e_d, *rows_d;      /* [ct, K]; rows: the routed rows sorted by expert */
    float *top_w_d, *rw_d, *gate_ws;/* [ct, K], [ct, K] (combine order), [ct] */
    void *route_ws;
    int32_t *top_e_h, *rows_h, *eoff;/* host: [ct, K], [ct, K], [E + 1] */
    float *top_w_h, *rw_h;
    /* expert groups (moe_chunk): up to moe_rows rows each (xe, g, u, o hold
     * that many); the group tables of a chunk (GEMM pointer arrays, combine
     * lists) go up in one copy from ix_h to ix_d */
    int moe_rows, expert_bias;      /* R; some expert Linear has a bias */
    unsigned char *ix_h, *ix_d;
    size_t ix_bytes;
    int32_t *tpos, *efill, *gdesc;  /* host: [ct, K] sorted positions + [ct, K] choices by
                                     * expert + [ct] cursors; [E]; [8 E] group descriptors */
    int *tprob;                     /* host: [3 E] rows of a group's GEMM problems, [3 E] their slots */
    int64_t *cnt;                   /* calibration: the caller's counts */
    uint64_t calib_gen;             /* calibrations so far (names the Hessians of a layer) */

    /* Hessian sums (f64) per captured input (model_num_inputs; allocated on
     * first use) + the f32 per-call scratch */
    int nin;
    int *hn;
    double **Hd;
    float *Hscratch;
    int rtn_only;                   /* no Hessians, no solve buffers (QuantizationModifier) */
    int *want_h;                    /* [nin] this calibration sums input inp's Hessian */
    /* static activation observer: max |X| per input over one calibration
     * (act_absmax_cuda), f32 [nin] on the device; observe: this calibration's on */
    float *amax_d;
    int observe;

    /* GPTQ inputs and outputs, sized for the largest module or grouped
     * solve: gcap_w weight elements, gcap_ng scales */
    size_t gcap_w, gcap_ng;
    long group_rows_max;            /* DONESHOT_GPTQ_GROUP_ROWS (default: no limit but the buffers) */
    float *gW, *gH, *gWq, *gScale;
    int8_t *gQ;
    int32_t *gZp, *gGidx;

    gpu_engine_times t;
    size_t peak;
};

static void sample_mem(gpu_engine *e) {
    size_t fr = 0, tot = 0;
    ds_cuda_mem_info(&fr, &tot);
    if (tot - fr > e->peak) e->peak = tot - fr;
}

int gpu_engine_built(void) { return 1; }
int gpu_engine_device_count(void) { return ds_cuda_device_count(); }
const char *gpu_engine_why_none(void) {
    return ds_cuda_device_count() > 0 ? "" : "the CUDA runtime reports no device (cudaGetDeviceCount)";
}
const char *gpu_engine_describe(const gpu_engine *e) { return e->desc; }
gpu_engine_times gpu_engine_get_times(const gpu_engine *e) { return e->t; }
size_t gpu_engine_peak_bytes(const gpu_engine *e) { return e->peak; }

static void *dalloc(size_t n) { return ds_cuda_malloc(n ? n : 16); }

/* The residual stream of sequences [s0, s1) as f32 -> bf16, into dst (host). */
static ds_status embed_range(const model *m, const ds_sample *local, size_t s0, size_t s1, uint16_t *dst,
                             float *tmp) {
    const int C = m->cfg.C;
    for (size_t s = s0; s < s1; s++) {
        ds_status st = model_embed(m, local[s].ids, local[s].n, tmp);
        if (st) return st;
        ds_convert_from_f32(dst, tmp, DS_DTYPE_BF16, (size_t)local[s].n * C);
        dst += (size_t)local[s].n * C;
    }
    return DS_OK;
}

ds_status gpu_engine_create(const model *m, const ds_sample *local, size_t nlocal, const gpu_engine_opts *o,
                            gpu_engine **out) {
    const model_config *c = &m->cfg;
    *out = NULL;
    ds_status st = gpu_engine_check_model(c);
    if (st) return st;
    int dev = ds_cuda_init(o->local_rank);
    if (dev < 0)
        return ds_error(DS_ERR_USAGE, "--device cuda: no usable CUDA device on this node (local rank %d)\n"
                        "hint: check nvidia-smi and CUDA_VISIBLE_DEVICES, or use --device cpu", o->local_rank);

    gpu_engine *e = xcalloc(1, sizeof *e);
    e->m = m;
    e->c = *c;
    e->dev = dev;
    e->offload = o->offload_acts;
    const size_t C = (size_t)c->C, qd = (size_t)c->NH * c->HS, kvd = (size_t)c->NKV * c->HS;
    /* the widest MLP input of any layer: dense F, expert IM, shared expert IS */
    size_t F = 0;
    for (int l = 0; l < c->L; l++) F = DS_MAX(F, (size_t)(model_layer_sparse(c, l) ? DS_MAX(c->IM, c->IS) : c->F));

    /* sequences and token offsets */
    e->nseq = nlocal;
    e->len = xmalloc(sizeof(int) * (nlocal ? nlocal : 1));
    e->off = xmalloc(sizeof(size_t) * (nlocal + 1));
    e->off[0] = 0;
    e->max_T = 1;
    for (size_t s = 0; s < nlocal; s++) {
        e->len[s] = local[s].n;
        e->off[s + 1] = e->off[s] + (size_t)local[s].n;
        e->max_T = DS_MAX(e->max_T, local[s].n);
    }
    e->ntok = e->off[nlocal];

    /* memory plan: picks the micro-batch (sequences per chunk) */
    /* default budget: 90 % of the free memory, split between the local
     * ranks that share this device (local rank % devices == dev) */
    size_t fr = 0, tot = 0;
    ds_cuda_mem_info(&fr, &tot);
    const int ndev = ds_cuda_device_count(), nloc = comm_local_size();
    const int sharing = DS_MAX(1, (nloc - 1 - dev) / DS_MAX(1, ndev) + 1);
    const size_t budget = o->budget_bytes ? o->budget_bytes : fr / 10 * 9 / (size_t)sharing;
    int dense_layers = 0;
    for (int l = 0; l < c->L; l++) dense_layers |= !model_layer_sparse(c, l);
    gpu_plan_dims d = {.C = c->C, .F = c->F, .NH = c->NH, .NKV = c->NKV, .HS = c->HS, .V = c->V,
                       .n_tokens = (long)e->ntok, .seq_len = e->max_T, .E = c->E, .K = c->K, .IM = c->IM,
                       .IS = c->IS, .dense_layers = dense_layers, .routed = o->moe_routed};
    /* the solver's error block is min(block_size, in, GPTQ_CUDA_MAX_BLOCK) columns wide */
    gpu_plan_opts po = {.offload_acts = o->offload_acts, .budget_bytes = budget, .hessian_f64 = 1,
                        .gptq_block = DS_MIN(o->gptq_block, GPTQ_CUDA_MAX_BLOCK),
                        .hessian_copy = o->qa->actorder != QA_NONE ||
                                        gptq_factor_method_env(GPTQ_FACTOR_CUDA_DEFAULT) == GPTQ_FACTOR_TORCH,
                        .max_micro_batch = o->max_micro_batch,
                        .rtn_only = o->rtn_only, .gptq_group = 1};
    gpu_plan plan;
    st = gpu_plan_make(&d, &po, &plan);
    /* MoE expert groups: DONESHOT_MOE_GROUP_ROWS rows (a tuning and test
     * knob; default: what half of the memory the plan leaves affords);
     * grouped GPTQ solves: DONESHOT_GPTQ_GROUP_ROWS rows at most (0: one
     * solve per module; default: what the buffers hold) */
    long group_rows = 0;
    e->group_rows_max = INT_MAX;
    if (st == DS_OK && c->E > 0)
        st = env_rows("DONESHOT_MOE_GROUP_ROWS", 1, "the default uses the memory the plan leaves", &group_rows);
    if (st == DS_OK)
        st = env_rows("DONESHOT_GPTQ_GROUP_ROWS", 0, "the default groups what the GPTQ buffers hold",
                      &e->group_rows_max);
    if (st) {
        free(e->len); free(e->off); free(e);
        return st;
    }
    e->micro_batch = plan.micro_batch;
    /* chunks: consecutive sequences, at most micro_batch each */
    e->nchunks = (int)((nlocal + (size_t)e->micro_batch - 1) / (size_t)e->micro_batch);
    e->chunk0 = xmalloc(sizeof(int) * (size_t)(e->nchunks + 1));
    e->seg = xmalloc(sizeof(int) * (size_t)e->micro_batch);
    e->pseg = c->E > 0 ? xmalloc(sizeof(int) * 2 * (size_t)c->E * (size_t)e->micro_batch) : NULL;
    e->chunk_tok_max = 1;
    for (int i = 0; i <= e->nchunks; i++) e->chunk0[i] = (int)DS_MIN(nlocal, (size_t)i * e->micro_batch);
    for (int i = 0; i < e->nchunks; i++)
        e->chunk_tok_max = DS_MAX(e->chunk_tok_max, e->off[e->chunk0[i + 1]] - e->off[e->chunk0[i]]);

    e->s_comp = ds_cuda_stream_create();
    e->s_copy = ds_cuda_stream_create();
    for (int i = 0; i < 2; i++) { e->ev_h2d[i] = ds_cuda_event_create(); e->ev_comp[i] = ds_cuda_event_create(); }
    for (int i = 0; i < 2 * NCAP; i++) e->ev_hess[i] = ds_cuda_event_create();

    /* transients (one chunk) */
    const size_t ct = e->chunk_tok_max;
    /* MoE: R rows per expert group (moe_chunk), at least ct (one expert on
     * every token), at most every routed row (routed) or every expert on
     * every token (all-experts calibration); xe, o: [R, C], g, u: [R, IM] */
    size_t R = 0, ixb = 0;
    if (c->E > 0) {
        const size_t E = (size_t)c->E, K = (size_t)c->K, IM = (size_t)c->IM;
        const size_t rmax = ct * (o->moe_routed ? K : DS_MAX(K, E));
        ixb = 9 * E * sizeof(void *) + sizeof(int32_t) * (3 * ct * K + E + 1);
        if (group_rows) {
            R = DS_MIN(rmax, DS_MAX(ct, (size_t)group_rows));
        } else {
            const size_t need = plan.peak + ixb, slack = budget > need ? (budget - need) / 2 : 0;
            R = DS_MIN(rmax, ct + slack / (4 * (C + IM)));
        }
        R = DS_MAX(ct, DS_MIN(R, (size_t)1 << 30));
        e->moe_rows = (int)R;
    }
    e->y = dalloc(ct * C * 2);
    e->a = dalloc(ct * C * 2);
    e->q = dalloc(ct * qd * 2);
    e->k = dalloc(ct * kvd * 2);
    e->v = dalloc(ct * kvd * 2);
    e->ctx = dalloc(ct * qd * 2);
    e->o = dalloc(DS_MAX(ct, R) * C * 2);
    e->g = dalloc(DS_MAX(ct * F, R * (size_t)c->IM) * 2);
    e->u = dalloc(DS_MAX(ct * F, R * (size_t)c->IM) * 2);
    if (c->E > 0) {
        const size_t E = (size_t)c->E, K = (size_t)c->K;
        e->logits = dalloc(ct * E * 2);
        e->xe = dalloc(R * C * 2);
        e->acc = dalloc(ct * C * 2);
        e->top_e_d = dalloc(ct * K * sizeof(int32_t));
        e->rows_d = dalloc(ct * K * sizeof(int32_t));
        e->top_w_d = dalloc(ct * K * sizeof(float));
        e->rw_d = dalloc(ct * K * sizeof(float));
        e->gate_ws = dalloc(ct * sizeof(float));
        e->route_ws = dalloc(moe_route_ws_bytes((int)ct, c->E));
        e->top_e_h = xmalloc(ct * K * sizeof(int32_t));
        e->rows_h = xmalloc(ct * K * sizeof(int32_t));
        e->top_w_h = xmalloc(ct * K * sizeof(float));
        e->rw_h = xmalloc(ct * K * sizeof(float));
        e->eoff = xmalloc((E + 1) * sizeof(int32_t));
        e->ix_bytes = ixb;
        e->ix_d = dalloc(ixb);
        e->ix_h = xcalloc(1, ixb);
        e->tpos = xmalloc(ct * K * sizeof(int32_t) * 2 + ct * sizeof(int32_t)); /* + sorted choices, cursors */
        e->efill = xmalloc(E * sizeof(int32_t));
        e->gdesc = xmalloc(8 * E * sizeof(int32_t));
        e->tprob = xmalloc(6 * E * sizeof(int)); /* rows, then weight slots */
    }
    e->attn_ws = dalloc(attention_ws_bytes(e->max_T, c->NH / c->NKV, c->HS));
    e->cos_t = dalloc((size_t)e->max_T * c->HS * 2);
    e->sin_t = dalloc((size_t)e->max_T * c->HS * 2);
    float *inv = dalloc(sizeof(float) * (size_t)(c->HS / 2));
    ds_cuda_memcpy_h2d(inv, m->inv_freq, sizeof(float) * (size_t)(c->HS / 2), e->s_comp);
    rope_tables_cuda(e->cos_t, e->sin_t, inv, e->max_T, c->HS, e->s_comp);
    ds_cuda_sync(e->s_comp);
    ds_cuda_free(inv);

    /* weights: device buffers and one pinned host staging area for a layer */
    const int nlmax = 3 * c->E + 12;
    layer_linear *ll = xmalloc(sizeof(layer_linear) * (size_t)nlmax);
    e->nlw = 0;
    for (int l = 0; l < c->L; l++) e->nlw = DS_MAX(e->nlw, model_layer_linears(c, l, 1, NULL));
    e->win = xcalloc((size_t)e->nlw, sizeof(int));
    e->wout = xcalloc((size_t)e->nlw, sizeof(int));
    e->has_b = xcalloc((size_t)e->nlw, sizeof(int));
    e->wcap = xcalloc((size_t)e->nlw, sizeof(size_t));
    size_t *bcap = xcalloc((size_t)e->nlw, sizeof(size_t));
    e->w = xcalloc((size_t)e->nlw, sizeof(uint16_t *));
    e->b = xcalloc((size_t)e->nlw, sizeof(uint16_t *));
    e->h_off = xcalloc((size_t)e->nlw, sizeof(size_t));
    e->h_boff = xcalloc((size_t)e->nlw, sizeof(size_t));
    size_t h = 0, gmax_w = 0, gmax_ng = 0;
    int gmax_in = 0;
    for (int l = 0; l < c->L; l++) {
        const int n = model_layer_linears(c, l, 1, ll);
        for (int k = 0; k < n; k++) {
            e->wcap[k] = DS_MAX(e->wcap[k], (size_t)ll[k].out * ll[k].in);
            bcap[k] = DS_MAX(bcap[k], (size_t)ll[k].out);
            if (!ll[k].quantizable) continue;
            gmax_w = DS_MAX(gmax_w, (size_t)ll[k].out * ll[k].in);
            gmax_in = DS_MAX(gmax_in, ll[k].in);
            gmax_ng = DS_MAX(gmax_ng, (size_t)ll[k].out * quant_num_groups(o->qa, ll[k].in));
        }
    }
    for (int k = 0; k < e->nlw; k++) {
        e->w[k] = dalloc(e->wcap[k] * 2);
        e->b[k] = dalloc(bcap[k] * 2);
        e->h_off[k] = h;
        h += e->wcap[k];
        e->h_boff[k] = h;
        h += bcap[k];
    }
    free(bcap);
    free(ll);
    e->h_norm_off = h;
    h += 2 * C + 2 * (size_t)c->HS;
    e->h_elems = h;
    e->h_stage = ds_cuda_malloc_host(h * 2);
    e->in_norm = dalloc(C * 2);
    e->post_norm = dalloc(C * 2);
    e->q_norm = dalloc((size_t)c->HS * 2);
    e->k_norm = dalloc((size_t)c->HS * 2);

    /* Hessians: allocated by the first calibration that uses them (the
     * first layer; an MoE run's set depends on the calibration mode) */
    e->nin = model_num_inputs(c);
    e->hn = xcalloc((size_t)e->nin, sizeof(int));
    e->Hd = xcalloc((size_t)e->nin, sizeof(double *));
    int hmax = 0;
    for (int i = 0; i < e->nin; i++) {
        e->hn[i] = model_input_dim(c, i);
        /* the widest input any layer can capture (a sparse model's dense F may be unused) */
        const int possible = i == INP_DOWN ? dense_layers : i == INP_SHARED_DOWN ? c->IS > 0 : 1;
        if (possible) hmax = DS_MAX(hmax, e->hn[i]);
    }
    e->Hscratch = dalloc(o->rtn_only ? 0 : sizeof(float) * hessian_scratch_floats(hmax)); /* one tile row */
    e->want_h = xcalloc((size_t)e->nin, sizeof(int));
    e->amax_d = dalloc(sizeof(float) * (size_t)e->nin);

    /* GPTQ (none with rtn_only: QuantizationModifier rounds on the host) */
    e->rtn_only = o->rtn_only;
    /* a grouped solve of the plan's rows, all C wide (engine_ops.gptq_group) */
    gmax_w = DS_MAX(gmax_w, (size_t)plan.gptq_group_rows * C);
    gmax_ng = DS_MAX(gmax_ng, (size_t)plan.gptq_group_rows * quant_num_groups(o->qa, (int)C));
    if (o->rtn_only) gmax_w = gmax_ng = 0, gmax_in = 0;
    e->gcap_w = gmax_w;
    e->gcap_ng = gmax_ng;
    e->gW = dalloc(sizeof(float) * gmax_w);
    e->gWq = dalloc(sizeof(float) * gmax_w);
    e->gQ = dalloc(gmax_w);
    e->gH = dalloc(sizeof(float) * (size_t)gmax_in * gmax_in);
    e->gScale = dalloc(sizeof(float) * gmax_ng);
    e->gZp = dalloc(sizeof(int32_t) * gmax_ng);
    e->gGidx = dalloc(sizeof(int32_t) * (size_t)gmax_in);

    /* residual stream: embeddings on the host (model_embed checks the ids) */
    double t0 = ds_now();
    float *tmp = xmalloc(sizeof(float) * (size_t)e->max_T * C);
    if (e->offload) {
        e->x_host = ds_cuda_malloc_host(e->ntok * C * 2 + 16);
        for (int i = 0; i < 2; i++) e->stage[i] = dalloc(ct * C * 2);
        st = embed_range(m, local, 0, nlocal, e->x_host, tmp);
    } else {
        e->x_dev = dalloc(e->ntok * C * 2);
        uint16_t *hb = e->h_stage; /* staging: chunk by chunk through the layer staging area */
        size_t cap = e->h_elems / C;  /* tokens that fit */
        size_t s = 0;
        while (s < nlocal && st == DS_OK) {
            size_t s1 = s, toks = 0;
            while (s1 < nlocal && (s1 == s || toks + (size_t)local[s1].n <= cap)) toks += (size_t)local[s1++].n;
            if (toks > cap) { /* one sequence longer than the staging area: plain host buffer */
                uint16_t *big = xmalloc(toks * C * 2);
                st = embed_range(m, local, s, s1, big, tmp);
                ds_cuda_memcpy_h2d(e->x_dev + e->off[s] * C, big, toks * C * 2, e->s_comp);
                ds_cuda_sync(e->s_comp);
                free(big);
            } else {
                st = embed_range(m, local, s, s1, hb, tmp);
                ds_cuda_memcpy_h2d(e->x_dev + e->off[s] * C, hb, toks * C * 2, e->s_comp);
                ds_cuda_sync(e->s_comp);
            }
            s = s1;
        }
    }
    free(tmp);
    e->t.upload += ds_now() - t0;
    sample_mem(e);
    char moe[64] = "";
    if (e->moe_rows) snprintf(moe, sizeof moe, " | MoE expert groups of up to %d rows", e->moe_rows);
    char bf[96] = "";
    if (c->dtype != DS_DTYPE_BF16)
        snprintf(bf, sizeof bf, " | %s model, bfloat16 forward", ds_dtype_torch_name(c->dtype));
    snprintf(e->desc, sizeof e->desc,
             "%s | micro-batch %d (%d chunks) | activations %s | attention %s | plan peak %.2f of %.2f GiB "
             "budget%s%s%s",
             ds_cuda_device_name(), e->micro_batch, e->nchunks, e->offload ? "offloaded (pinned host)" : "resident",
             attention_fused(c->HS) ? "fused kernel" : "batched GEMM",
             (double)plan.peak / (double)(1u << 30), (double)budget / (double)(1u << 30),
             sharing > 1 ? " (device shared by local ranks)" : "", moe, bf);
    if (st) {
        gpu_engine_destroy(e);
        return st;
    }
    *out = e;
    return DS_OK;
}

void gpu_engine_load_layer(gpu_engine *e, const layer_weights *lw) {
    const model_config *c = &e->c;
    double t0 = ds_now();
    DS_ASSERT(lw->nlin <= e->nlw);
    ds_cuda_sync(e->s_comp); /* the staging area may still feed the last copies */
    e->sparse = lw->sparse;
    e->all_experts = lw->all_experts;
    e->router = lw->router;
    e->expert0 = lw->expert0;
    e->shared0 = lw->shared0;
    e->shared_gate = lw->shared_gate;
    e->lin0 = lw->lin;
    uint16_t *hs = e->h_stage;
    for (int k = 0; k < lw->nlin; k++) {
        const layer_linear *li = &lw->lin[k];
        size_t n = (size_t)li->out * li->in;
        DS_ASSERT(n <= e->wcap[k]);
        e->win[k] = li->in;
        e->wout[k] = li->out;
        ds_convert_from_f32(hs + e->h_off[k], li->w, DS_DTYPE_BF16, n);
        ds_cuda_memcpy_h2d(e->w[k], hs + e->h_off[k], n * 2, e->s_comp);
        e->has_b[k] = li->b != NULL;
        if (li->b) {
            ds_convert_from_f32(hs + e->h_boff[k], li->b, DS_DTYPE_BF16, (size_t)li->out);
            ds_cuda_memcpy_h2d(e->b[k], hs + e->h_boff[k], (size_t)li->out * 2, e->s_comp);
        }
    }
    uint16_t *hn = hs + e->h_norm_off;
    const size_t C = (size_t)c->C, HS = (size_t)c->HS;
    ds_convert_from_f32(hn, lw->in_norm, DS_DTYPE_BF16, C);
    ds_convert_from_f32(hn + C, lw->post_norm, DS_DTYPE_BF16, C);
    ds_cuda_memcpy_h2d(e->in_norm, hn, C * 2, e->s_comp);
    ds_cuda_memcpy_h2d(e->post_norm, hn + C, C * 2, e->s_comp);
    if (c->qk_norm) {
        ds_convert_from_f32(hn + 2 * C, lw->q_norm, DS_DTYPE_BF16, HS);
        ds_convert_from_f32(hn + 2 * C + HS, lw->k_norm, DS_DTYPE_BF16, HS);
        ds_cuda_memcpy_h2d(e->q_norm, hn + 2 * C, HS * 2, e->s_comp);
        ds_cuda_memcpy_h2d(e->k_norm, hn + 2 * C + HS, HS * 2, e->s_comp);
    }
    e->expert_bias = 0;
    for (int x = 0; lw->sparse && x < c->E; x++) { /* the expert groups batch equal shapes */
        const int G = lw->expert0 + 3 * x;
        DS_ASSERT(e->win[G] == c->C && e->win[G + 1] == c->C && e->wout[G + 2] == c->C);
        DS_ASSERT(e->wout[G] == e->wout[lw->expert0] && e->wout[G + 1] == e->wout[G] && e->win[G + 2] == e->wout[G]);
        DS_ASSERT((size_t)e->wout[G] <= (size_t)c->IM);
        e->expert_bias |= e->has_b[G] | e->has_b[G + 1] | e->has_b[G + 2];
    }
    ds_cuda_sync(e->s_comp);
    e->t.upload += ds_now() - t0;
}

void gpu_engine_set_weight(gpu_engine *e, int lin, const float *w, const void *w_model) {
    DS_ASSERT(lin >= 0 && lin < e->nlw);
    double t0 = ds_now();
    ds_cuda_sync(e->s_comp);
    size_t n = (size_t)e->wout[lin] * e->win[lin];
    if (e->c.dtype == DS_DTYPE_BF16 && w_model) memcpy(e->h_stage + e->h_off[lin], w_model, n * 2);
    else ds_convert_from_f32(e->h_stage + e->h_off[lin], w, DS_DTYPE_BF16, n);
    ds_cuda_memcpy_h2d(e->w[lin], e->h_stage + e->h_off[lin], n * 2, e->s_comp);
    e->t.upload += ds_now() - t0;
}

/* Linear `lin` on X [T, in], the rows of nseg sequences (seg[i] rows each:
 * the CPU twin's call geometry, as the CPU engine's). */
static void matmul_seg(gpu_engine *e, uint16_t *y, const uint16_t *x, int lin, int T, const int *seg, int nseg) {
    matmul_forward_cuda(y, x, e->w[lin], e->has_b[lin] ? e->b[lin] : NULL, T, e->win[lin], e->wout[lin], seg, nseg,
                        e->s_comp);
}

/* matmul_seg on all rows of the current chunk's sequences. */
static void matmul(gpu_engine *e, uint16_t *y, const uint16_t *x, int lin, int T) {
    DS_ASSERT((size_t)T == e->off[e->cs1] - e->off[e->cs0]);
    matmul_seg(e, y, x, lin, T, e->len + e->cs0, e->cs1 - e->cs0);
}

/* Capture of input `inp` from X [T, n], the rows of nseg sequences (seg[i]
 * rows each, T in all: the Hessian kernel's twin sums each in f32 as the CPU
 * engine does): the activation observer's max |X| (when on), then the
 * Hessian update (when wanted), bracketed by events. */
static void capture_seg(gpu_engine *e, const int *used, int inp, const uint16_t *X, const int *seg, int nseg) {
    int T = 0;
    for (int i = 0; i < nseg; i++) T += seg[i];
    if (!used || !used[inp] || T <= 0) return;
    if (e->observe) act_absmax_cuda(e->amax_d + inp, X, (size_t)T * (size_t)e->hn[inp], e->s_comp);
    if (!e->want_h[inp]) return;
    if (inp < NCAP) ds_cuda_event_record(e->ev_hess[2 * inp], e->s_comp);
    hessian_accum_f64_cuda(e->Hd[inp], X, seg, nseg, e->hn[inp], e->Hscratch, e->s_comp);
    if (inp < NCAP) ds_cuda_event_record(e->ev_hess[2 * inp + 1], e->s_comp);
}

/* capture_seg of X [T, n], all rows of the current chunk's sequences. */
static void capture(gpu_engine *e, const int *used, int inp, const uint16_t *X, int T) {
    DS_ASSERT((size_t)T == e->off[e->cs1] - e->off[e->cs0]);
    capture_seg(e, used, inp, X, e->len + e->cs0, e->cs1 - e->cs0);
}

/* One SiLU-gated MLP (weights in slots G, G+1, G+2) on X [T, C] -> e->o;
 * down-input capture id down_id. */
/* need_out 0: stop after the down_proj input's capture (e->o not written). */
static void mlp_chunk(gpu_engine *e, int G, const uint16_t *X, int T, const int *used, int down_id, int need_out) {
    const size_t F = (size_t)e->wout[G];
    matmul(e, e->g, X, G, T);
    matmul(e, e->u, X, G + 1, T);
    swiglu_forward_cuda(e->g, e->g, e->u, (size_t)T * F, e->s_comp);
    capture(e, used, down_id, e->g, T);
    if (need_out) matmul(e, e->o, e->g, G + 2, T);
}

/* The GEMMs of one expert group: n problems as matmul_batched_forward_cuda
 * (host pointers ph {W, x, y}, their device copy pd, rows tp[i], rows per
 * sequence of the chunk seg [n, nseg]); with an expert bias (no supported
 * architecture has one) one matmul per problem, weight slot lin[i]. */
static void expert_gemms(gpu_engine *e, void **ph, void **pd, const int *tp, const int *lin, int n, int in, int out,
                         const int *seg, int nseg) {
    if (e->expert_bias) {
        for (int i = 0; i < n; i++)
            matmul_seg(e, ph[2 * n + i], ph[n + i], lin[i], tp[i], seg + (size_t)i * nseg, nseg);
        return;
    }
    matmul_batched_forward_cuda((const void *const *)ph, pd, tp, n, in, out, seg, nseg, e->s_comp);
}

/* Routed calibration: e->seg[q - s0] = how many of one expert's nx rows
 * (chunk-relative token indices, ascending) belong to sequence q of the
 * chunk [s0, s1). Returns the number of sequences that gave it a row. */
static int expert_segs(gpu_engine *e, const int32_t *rows, int nx, int s0, int s1) {
    int nseq = 0, i = 0;
    for (int q = s0; q < s1; q++) {
        const int hi = (int)(e->off[q + 1] - e->off[s0]), i0 = i;
        while (i < nx && rows[i] < hi) i++;
        e->seg[q - s0] = i - i0;
        nseq += i > i0;
    }
    DS_ASSERT(i == nx); /* every row is a token of the chunk */
    return nseq;
}

/* The MoE block of model.c moe_forward on m = e->a [T, C] (sequences
 * [s0, s1)) -> e->acc (used != NULL, calibrating: no output, as
 * moe_forward's need_out 0: the down projections, the combine and the
 * shared expert's down projection and gate are skipped, about a third of
 * the experts' GEMM FLOPs when every expert sees every token): router and
 * top-K on the device, the routing copied to the host and sorted by expert
 * once (ascending expert, tokens in order, as the CPU). The experts run
 * in groups of consecutive experts of at most e->moe_rows rows: routed,
 * one gather of the group's rows, then its gate
 * and up projections as one batched GEMM, one SwiGLU, the down projections
 * as one batched GEMM and one combine kernel (each token's contributions
 * added in ascending expert order); when calibrating with all experts,
 * every expert of a group reads all T tokens of m (the same x pointer:
 * stride 0; its down_proj Hessian sees every token) and only the routed
 * rows are added. Then the shared expert (Qwen2-MoE). Hessians as before
 * the grouping: each expert's down_proj input its own, the gate/up input
 * its own (routed) or INP_MLP (all experts, captured by layer_chunk);
 * counts as the CPU capture: tokens, and the sequences that gave the
 * expert at least one token. One upload per chunk: the sorted rows, the
 * combine weights and the group tables (pointer arrays, combine lists). */
static void moe_chunk(gpu_engine *e, int T, int s0, int s1, const int *used) {
    const model_config *c = &e->c;
    const int E = c->E, K = c->K, C = c->C, n = T * K;
    void *s = e->s_comp;
    const uint16_t *m = e->a;
    matmul(e, e->logits, m, e->router, T);
    moe_route_cuda(e->top_e_d, e->top_w_d, e->logits, T, E, K, c->norm_topk, e->route_ws, s);
    ds_cuda_memcpy_d2h(e->top_e_h, e->top_e_d, sizeof(int32_t) * (size_t)n, s);
    ds_cuda_memcpy_d2h(e->top_w_h, e->top_w_d, sizeof(float) * (size_t)n, s);
    const int32_t *te = e->top_e_h;
    const int all = used && e->all_experts, R = e->moe_rows, IM = e->wout[e->expert0];
    int32_t *eoff = e->eoff, *rows = e->rows_h, *tpos = e->tpos, *tord = tpos + n, *tcur = tord + n;

    /* counting sort of the n routed (token, expert) pairs by expert */
    memset(eoff, 0, sizeof(int32_t) * (size_t)(E + 1));
    for (int i = 0; i < n; i++) eoff[te[i] + 1]++;
    for (int x = 0; x < E; x++) eoff[x + 1] += eoff[x];
    memcpy(e->efill, eoff, sizeof(int32_t) * (size_t)E);
    for (int i = 0; i < n; i++) {
        const int p = e->efill[te[i]]++;
        rows[p] = i / K;
        tpos[i] = p;
    }
    /* each token's K choices by ascending expert (insertion sort; K is small) */
    for (int t = 0; t < T; t++) {
        int32_t *o = tord + (size_t)t * K;
        for (int k = 0; k < K; k++) {
            int j = k;
            while (j > 0 && te[(size_t)t * K + o[j - 1]] > te[(size_t)t * K + k]) { o[j] = o[j - 1]; j--; }
            o[j] = k;
        }
        tcur[t] = 0;
    }

    /* groups of consecutive experts (at least one each) of at most R rows,
     * and their tables: pointer arrays (gate/up: W, x, y of 2 np problems;
     * down: W, x, y of np), combine lists (tokens, starts, source rows of
     * the group's output, weights in rw_h) */
    void **ptr = (void **)e->ix_h, **ptr_d = (void **)e->ix_d;
    const size_t pbytes = 9 * (size_t)E * sizeof(void *);
    int32_t *src = (int32_t *)(e->ix_h + pbytes), *tok = src + n, *start = tok + n;
    const int32_t *src_d = (const int32_t *)(e->ix_d + pbytes), *tok_d = src_d + n, *start_d = tok_d + n;
    int ng = 0, pc = 0, ntok = 0, nst = 0, nsrc = 0;
    for (int x = 0; x < E;) {
        const int x0 = x;
        int rws = 0, np = 0;
        while (x < E) {
            const int r = all ? T : eoff[x + 1] - eoff[x];
            if (x > x0 && rws + r > R) break;
            rws += r;
            np += r > 0;
            x++;
        }
        int32_t *gd = e->gdesc + 8 * ng++;
        gd[0] = x0; gd[1] = x; gd[2] = rws; gd[3] = np; gd[4] = pc; gd[5] = ntok; gd[6] = nst;
        void **pg = ptr + pc;
        for (int y = x0, j = 0; y < x; y++) {
            const int r = all ? T : eoff[y + 1] - eoff[y], G = e->expert0 + 3 * y;
            if (!r) continue;
            const size_t off = all ? (size_t)(y - x0) * T : (size_t)(eoff[y] - eoff[x0]);
            void *xin = all ? (void *)m : (void *)(e->xe + off * C);
            pg[j] = e->w[G];
            pg[np + j] = e->w[G + 1];
            pg[2 * np + j] = pg[3 * np + j] = xin;
            pg[4 * np + j] = e->g + off * IM;
            pg[5 * np + j] = e->u + off * IM;
            pg[6 * np + j] = e->w[G + 2];
            pg[7 * np + j] = e->g + off * IM;
            pg[8 * np + j] = e->o + off * C;
            j++;
        }
        pc += 9 * np;
        for (int t = 0; t < T; t++) {
            int q = tcur[t];
            if (q >= K || te[(size_t)t * K + tord[(size_t)t * K + q]] >= x) continue;
            tok[ntok++] = t;
            start[nst++] = nsrc;
            for (; q < K; q++) {
                const int i = t * K + tord[(size_t)t * K + q], y = te[i];
                if (y >= x) break;
                src[nsrc] = all ? (y - x0) * T + t : tpos[i] - eoff[x0];
                e->rw_h[nsrc++] = e->top_w_h[i];
            }
            tcur[t] = q;
        }
        start[nst++] = nsrc;
        gd[7] = ntok - gd[5];
    }
    const size_t ixn = pbytes + sizeof(int32_t) * (2 * (size_t)n + (size_t)nst);
    DS_ASSERT(nsrc == n && pc <= 9 * E && ixn <= e->ix_bytes);
    ds_cuda_memcpy_h2d(e->rows_d, rows, sizeof(int32_t) * (size_t)n, s);
    ds_cuda_memcpy_h2d(e->rw_d, e->rw_h, sizeof(float) * (size_t)n, s);
    ds_cuda_memcpy_h2d(e->ix_d, e->ix_h, ixn, s);
    if (!used) ds_cuda_memset(e->acc, 0, sizeof(uint16_t) * (size_t)T * C, s);

    for (int gi = 0; gi < ng; gi++) {
        const int32_t *gd = e->gdesc + 8 * gi;
        const int x0 = gd[0], x1 = gd[1], rws = gd[2], np = gd[3], p0 = gd[4];
        if (np == 0) continue; /* routed: no token chose these experts */
        if (!all) moe_gather_cuda(e->xe, m, e->rows_d + eoff[x0], rws, C, s);
        int *tp = e->tprob, *lin = e->tprob + 3 * E;
        const int nsq = s1 - s0;
        for (int y = x0, j = 0; y < x1; y++) {
            const int r0 = eoff[y], nx = eoff[y + 1] - r0, r = all ? T : nx, G = e->expert0 + 3 * y;
            if (!r) continue;
            tp[j] = tp[np + j] = tp[2 * np + j] = r;
            lin[j] = G; lin[np + j] = G + 1; lin[2 * np + j] = G + 2;
            /* problem j (gate, and down), np + j (up): its rows per sequence */
            const int nseq = all ? 0 : expert_segs(e, rows + r0, nx, s0, s1);
            memcpy(e->pseg + (size_t)j * nsq, all ? e->len + s0 : e->seg, sizeof(int) * (size_t)nsq);
            memcpy(e->pseg + (size_t)(np + j) * nsq, e->pseg + (size_t)j * nsq, sizeof(int) * (size_t)nsq);
            j++;
            if (all) continue;
            if (used && e->cnt) /* its tokens and the sequences that gave it one */
                for (int id = INP_EXPERT_UP(y); id <= INP_EXPERT_DOWN(y); id++)
                    if (used[id] && e->want_h[id]) { e->cnt[2 * id] += nx; e->cnt[2 * id + 1] += nseq; }
            capture_seg(e, used, INP_EXPERT_UP(y), e->xe + (size_t)(r0 - eoff[x0]) * C, e->seg, s1 - s0);
        }
        expert_gemms(e, ptr + p0, ptr_d + p0, tp, lin, 2 * np, C, IM, e->pseg, nsq);
        swiglu_forward_cuda(e->g, e->g, e->u, (size_t)rws * IM, s);
        for (int y = x0, j = 0; y < x1; y++) {
            const int r = all ? T : eoff[y + 1] - eoff[y];
            const size_t off = all ? (size_t)(y - x0) * T : (size_t)(eoff[y] - eoff[x0]);
            if (!r) continue;
            const int *seg = e->pseg + (size_t)j++ * nsq; /* problem j's rows per sequence (first loop) */
            if (!used) continue;
            if (all) capture(e, used, INP_EXPERT_DOWN(y), e->g + off * IM, r);
            else capture_seg(e, used, INP_EXPERT_DOWN(y), e->g + off * IM, seg, nsq);
        }
        if (used) continue; /* calibrating: the output is discarded (model.c moe_forward need_out 0) */
        expert_gemms(e, ptr + p0 + 6 * np, ptr_d + p0 + 6 * np, tp + 2 * np, lin + 2 * np, np, IM, C, e->pseg, nsq);
        moe_combine_cuda(e->acc, e->o, tok_d + gd[5], start_d + gd[6], src_d, e->rw_d, gd[7], C, s);
    }
    if (e->shared0 >= 0) {
        mlp_chunk(e, e->shared0, m, T, used, INP_SHARED_DOWN, !used);
        if (!used) moe_shared_gate_add_cuda(e->acc, e->o, m, e->w[e->shared_gate], T, C, e->gate_ws, s);
    }
}

/* The decoder layer on the chunk's residual stream x [T, C] (sequences
 * [s0, s1), concatenated), in place; the op order and rounding points of
 * model.c layer_forward (dense). used != NULL: capture Hessians. */
static void layer_chunk(gpu_engine *e, uint16_t *x, int s0, int s1, const int *used) {
    const model_config *c = &e->c;
    const int T = (int)(e->off[s1] - e->off[s0]);
    const int qd = c->NH * c->HS, kvd = c->NKV * c->HS;
    void *s = e->s_comp;
    if (T <= 0) return;
    e->cs0 = s0;
    e->cs1 = s1;
    rmsnorm_forward_cuda(e->a, x, e->in_norm, T, c->C, c->eps, s);
    capture(e, used, INP_ATTN, e->a, T);
    matmul(e, e->q, e->a, LIN_Q, T);
    matmul(e, e->k, e->a, LIN_K, T);
    matmul(e, e->v, e->a, LIN_V, T);
    if (c->qk_norm) {
        rmsnorm_forward_cuda(e->q, e->q, e->q_norm, T * c->NH, c->HS, c->eps, s);
        rmsnorm_forward_cuda(e->k, e->k, e->k_norm, T * c->NKV, c->HS, c->eps, s);
    }
    /* RoPE per sequence (positions restart at 0); attention over runs of
     * sequences of equal length (one batched call per run) */
    for (int i = s0; i < s1;) {
        int j = i + 1;
        while (j < s1 && e->len[j] == e->len[i]) j++;
        const int Ti = e->len[i];
        const size_t r0 = e->off[i] - e->off[s0];
        for (int t = i; t < j; t++) {
            const size_t rt = e->off[t] - e->off[s0];
            rope_forward_cuda(e->q + rt * qd, e->cos_t, e->sin_t, Ti, c->NH, c->HS, qd, s);
            rope_forward_cuda(e->k + rt * kvd, e->cos_t, e->sin_t, Ti, c->NKV, c->HS, kvd, s);
        }
        if (Ti > 0)
            attention_forward_cuda(e->ctx + r0 * qd, e->q + r0 * qd, e->k + r0 * kvd, e->v + r0 * kvd, j - i, Ti,
                                   c->NH, c->NKV, c->HS, e->attn_ws, s);
        i = j;
    }
    capture(e, used, INP_O, e->ctx, T);
    matmul(e, e->o, e->ctx, LIN_O, T);
    residual_rmsnorm_forward_cuda(e->a, x, e->o, e->post_norm, T, c->C, c->eps, s); /* x += o; a = norm(x) */
    capture(e, used, INP_MLP, e->a, T);
    /* calibrating (used): the layer output is discarded (run_pass works on
     * a copy), so the dense down_proj GEMM and the last residual add are
     * skipped, as model.c layer_calibrate_batch does */
    if (e->sparse) {
        moe_chunk(e, T, s0, s1, used);
        if (!used) residual_forward_cuda(x, e->acc, (size_t)T * c->C, s);
        return;
    }
    mlp_chunk(e, LIN_GATE, e->a, T, used, INP_DOWN, !used);
    if (!used) residual_forward_cuda(x, e->o, (size_t)T * c->C, s);
}

/* Offload: copy chunk ci of the pinned residual stream into staging buffer
 * ci&1 on the copy stream, after the compute that last used that buffer. */
static void prefetch(gpu_engine *e, int ci) {
    const size_t C = (size_t)e->c.C;
    const int b = ci & 1;
    const size_t t0 = e->off[e->chunk0[ci]], nt = e->off[e->chunk0[ci + 1]] - t0;
    ds_cuda_stream_wait(e->s_copy, e->ev_comp[b]);
    ds_cuda_memcpy_h2d(e->stage[b], e->x_host + t0 * C, nt * C * 2, e->s_copy);
    ds_cuda_event_record(e->ev_h2d[b], e->s_copy);
}

/* One pass over all chunks: calibration (used != NULL: on a copy, outputs
 * discarded) or propagation (in place). Returns the Hessian device seconds. */
static double run_pass(gpu_engine *e, const int *used) {
    const size_t C = (size_t)e->c.C;
    double hess_ms = 0;
    /* both streams start after everything issued before (weights, memsets) */
    ds_cuda_event_record(e->ev_comp[0], e->s_comp);
    ds_cuda_event_record(e->ev_comp[1], e->s_comp);
    if (e->offload && e->nchunks > 0) prefetch(e, 0);
    for (int ci = 0; ci < e->nchunks; ci++) {
        const int s0 = e->chunk0[ci], s1 = e->chunk0[ci + 1], b = ci & 1;
        const size_t t0 = e->off[s0], nt = e->off[s1] - t0;
        uint16_t *buf;
        if (e->offload) {
            if (ci + 1 < e->nchunks) prefetch(e, ci + 1);
            ds_cuda_stream_wait(e->s_comp, e->ev_h2d[b]);
            buf = e->stage[b];
        } else if (used) {
            ds_cuda_memcpy_d2d(e->y, e->x_dev + t0 * C, nt * C * 2, e->s_comp);
            buf = e->y;
        } else {
            buf = e->x_dev + t0 * C;
        }
        layer_chunk(e, buf, s0, s1, used);
        if (e->offload) {
            ds_cuda_event_record(e->ev_comp[b], e->s_comp);
            if (!used) {
                ds_cuda_stream_wait(e->s_copy, e->ev_comp[b]);
                ds_cuda_memcpy_d2h_async(e->x_host + t0 * C, buf, nt * C * 2, e->s_copy);
            }
        }
        if (used) /* the chunk's Hessian updates (synchronizes on the chunk) */
            for (int inp = 0; inp < NCAP; inp++)
                if (used[inp] && e->want_h[inp] && nt > 0) hess_ms += ds_cuda_event_ms(e->ev_hess[2 * inp], e->ev_hess[2 * inp + 1]);
    }
    ds_cuda_sync(e->s_comp);
    ds_cuda_sync(e->s_copy);
    return hess_ms / 1e3;
}

void gpu_engine_calibrate(gpu_engine *e, const int *used, double *const *H_host, int64_t *cnt, float *act_amax) {
    double t0 = ds_now();
    const int *u = used;
    for (int inp = 0; inp < e->nin; inp++) {
        /* H_host given with a NULL entry for a used input: the observer only (QuantizationModifier) */
        e->want_h[inp] = u[inp] && !(H_host && !H_host[inp]);
        if (!e->want_h[inp]) continue;
        const size_t nb = sizeof(double) * (size_t)e->hn[inp] * e->hn[inp];
        if (!e->Hd[inp]) e->Hd[inp] = dalloc(nb); /* first use */
        ds_cuda_memset(e->Hd[inp], 0, nb, e->s_comp);
    }
    e->observe = act_amax != NULL;
    if (e->observe) ds_cuda_memset(e->amax_d, 0, sizeof(float) * (size_t)e->nin, e->s_comp);
    e->cnt = cnt;
    e->calib_gen++;
    double hs = run_pass(e, u);
    e->cnt = NULL;
    if (e->observe) { /* one copy per calibration; max with the caller's values */
        float *m = xmalloc(sizeof(float) * (size_t)e->nin);
        ds_cuda_memcpy_d2h(m, e->amax_d, sizeof(float) * (size_t)e->nin, e->s_comp);
        for (int inp = 0; inp < e->nin; inp++)
            if (u[inp] && m[inp] > act_amax[inp]) act_amax[inp] = m[inp];
        free(m);
        e->observe = 0;
    }
    for (int inp = 0; inp < e->nin; inp++) {
        /* every token reaches these; a routed expert's inputs were counted per chunk */
        const int routed = inp >= INP_EXPERT0 && !(e->all_experts && (inp - INP_EXPERT0) % 2);
        if (!e->want_h[inp] || routed) continue;
        cnt[2 * inp] += (int64_t)e->ntok;
        cnt[2 * inp + 1] += (int64_t)e->nseq;
    }
    double t1 = ds_now();
    e->t.hessian += hs;
    e->t.forward += t1 - t0 - hs;
    if (H_host) {
        for (int inp = 0; inp < e->nin; inp++)
            if (u[inp] && H_host[inp])
                ds_cuda_memcpy_d2h(H_host[inp], e->Hd[inp], sizeof(double) * (size_t)e->hn[inp] * e->hn[inp],
                                   e->s_comp);
        e->t.hess_copy += ds_now() - t1;
    }
}

/* The solve of lis[0..n) (one input, rows concatenated: R rows, capacity
 * checked by the caller) into res[k] / wq_model[k]; gH holds the
 * normalised Hessian (consumed). */
static ds_status gptq_solve(gpu_engine *e, const quant_args *a, const layer_linear *const *lis, int n, int R,
                            int block_size, double dampening_frac, gptq_result *res, void *const *wq_model) {
    const int in = lis[0]->in, bf16 = e->c.dtype == DS_DTYPE_BF16;
    const size_t ng = (size_t)quant_num_groups(a, in), nw = (size_t)R * in;
    void *s = e->s_comp;
    /* the weights, row blocks of gW: a bf16 model's from its device copy
     * (exact); an f16 / f32 model's device copy is rounded to bf16, so its
     * f32 values are uploaded */
    size_t r0 = 0;
    for (int k = 0; k < n; k++) {
        const layer_linear *li = lis[k];
        const int lin = (int)(li - e->lin0);
        DS_ASSERT(lin >= 0 && lin < e->nlw && e->win[lin] == in && e->wout[lin] == li->out);
        const size_t mw = (size_t)li->out * in;
        if (bf16) bf16_to_f32_cuda(e->gW + r0 * in, e->w[lin], mw, s);
        else ds_cuda_memcpy_h2d(e->gW + r0 * in, li->w, sizeof(float) * mw, s);
        r0 += (size_t)li->out;
    }
    double *row_loss = xmalloc(sizeof(double) * (size_t)R);
    gptq_cuda_out o = {.wq = e->gWq, .q = e->gQ, .scale = e->gScale, .zp = e->gZp, .g_idx = e->gGidx,
                       .row_loss = row_loss};
    ds_status st = gptq_quantize_cuda(a, e->gW, R, in, e->gH, block_size, dampening_frac, e->c.dtype, &o, s);
    if (st == DS_OK) {
        /* a bf16 model: the values are bf16's; gW (f32, done with) holds the bf16 copy */
        if (bf16) f32_to_bf16_cuda((uint16_t *)e->gW, e->gWq, nw, s);
        r0 = 0;
        for (int k = 0; k < n; k++) {
            const int out = lis[k]->out;
            const size_t mw = (size_t)out * in, mg = (size_t)out * ng;
            if (bf16) {
                ds_cuda_memcpy_d2h(wq_model[k], (uint16_t *)e->gW + r0 * in, 2 * mw, s);
            } else {
                float *wq = xmalloc(sizeof(float) * mw);
                ds_cuda_memcpy_d2h(wq, e->gWq + r0 * in, sizeof(float) * mw, s);
                ds_convert_from_f32(wq_model[k], wq, e->c.dtype, mw);
                free(wq);
            }
            gptq_result *rk = &res[k];
            rk->scale = xmalloc(sizeof(float) * mg);
            ds_cuda_memcpy_d2h(rk->scale, e->gScale + r0 * ng, sizeof(float) * mg, s);
            if (!a->symmetric) {
                rk->zp = xmalloc(sizeof(int) * mg);
                ds_cuda_memcpy_d2h(rk->zp, e->gZp + r0 * ng, sizeof(int32_t) * mg, s);
            }
            if (a->actorder == QA_GROUP) { /* depends on H only: the same for every module */
                rk->g_idx = xmalloc(sizeof(int) * (size_t)in);
                ds_cuda_memcpy_d2h(rk->g_idx, e->gGidx, sizeof(int32_t) * (size_t)in, s);
            }
            double loss = 0; /* this module's rows in order: its own solve's sum */
            for (int r = 0; r < out; r++) loss += row_loss[r0 + (size_t)r];
            rk->loss = loss;
            rk->rtn_fallback = o.rtn_fallback;
            r0 += (size_t)out;
        }
    }
    free(row_loss);
    return st;
}

ds_status gpu_engine_gptq_group(gpu_engine *e, const quant_args *a, const layer_linear *const *lis, int n,
                                const double *H_host, int64_t nseq, int block_size, double dampening_frac,
                                gptq_result *res, void *const *wq_model) {
    double t0 = ds_now();
    DS_ASSERT(n >= 1);
    const int in = lis[0]->in, inp = lis[0]->input_id;
    const size_t nn = (size_t)in * in, ng = (size_t)quant_num_groups(a, in);
    void *s = e->s_comp;
    for (int k = 0; k < n; k++) memset(&res[k], 0, sizeof res[k]);
    DS_ASSERT(!e->rtn_only); /* created for QuantizationModifier: the pipeline rounds on the host */
    DS_ASSERT(inp >= 0 && inp < e->nin && e->hn[inp] == in && nseq > 0);
    for (int k = 0; k < n; k++) DS_ASSERT(lis[k]->input_id == inp && lis[k]->in == in);
    if (!e->Hd[inp]) e->Hd[inp] = dalloc(sizeof(double) * nn); /* another rank calibrated it */
    if (H_host) ds_cuda_memcpy_h2d(e->Hd[inp], H_host, sizeof(double) * nn, s);
    /* a Hessian several modules share (q/k/v; gate/up; every expert's gate/up
     * with all-experts calibration; one expert's gate/up when routed) is
     * factored once per layer: its key names (calibration, input) */
    const int shared = inp == INP_ATTN || inp == INP_MLP || (inp >= INP_EXPERT0 && (inp - INP_EXPERT0) % 2 == 0);
    uint64_t key = e->calib_gen * 0x9E3779B97F4A7C15ull ^ ((uint64_t)inp << 40) ^ (uint64_t)nseq;
    key ^= key >> 31;
    ds_status st = DS_OK;
    /* consecutive modules as one solve while their rows fit the buffers */
    for (int k0 = 0; k0 < n && st == DS_OK;) {
        int k1 = k0 + 1, R = lis[k0]->out;
        while (k1 < n && R + lis[k1]->out <= e->group_rows_max && (size_t)(R + lis[k1]->out) * in <= e->gcap_w &&
               (size_t)(R + lis[k1]->out) * ng <= e->gcap_ng)
            R += lis[k1++]->out;
        if (n > 1) ds_debug("gptq: %s .. %s (%d modules, %d rows) in one solve", lis[k0]->name, lis[k1 - 1]->name,
                            k1 - k0, R);
        hessian_to_f32_cuda(e->gH, e->Hd[inp], in, (double)nseq, s); /* reads the upper triangle, mirrors */
        if (shared || k1 < n || k0 > 0) gptq_cuda_set_factor_key(key ? key : 1);
        st = gptq_solve(e, a, lis + k0, k1 - k0, R, block_size, dampening_frac, res + k0, wq_model + k0);
        k0 = k1;
    }
    if (st != DS_OK)
        for (int k = 0; k < n; k++) gptq_result_free(&res[k]);
    sample_mem(e);
    e->t.gptq += ds_now() - t0;
    return st;
}

ds_status gpu_engine_gptq(gpu_engine *e, const quant_args *a, const layer_linear *li, const double *H_host,
                          int64_t nseq, int block_size, double dampening_frac, gptq_result *res, void *wq_model) {
    return gpu_engine_gptq_group(e, a, &li, 1, H_host, nseq, block_size, dampening_frac, res, &wq_model);
}

void gpu_engine_propagate(gpu_engine *e) {
    double t0 = ds_now();
    run_pass(e, NULL);
    e->t.propagate += ds_now() - t0;
}

void gpu_engine_get_residual(gpu_engine *e, uint16_t *host) {
    const size_t n = e->ntok * (size_t)e->c.C;
    ds_cuda_sync(e->s_comp);
    ds_cuda_sync(e->s_copy);
    if (e->offload) memcpy(host, e->x_host, n * 2);
    else ds_cuda_memcpy_d2h(host, e->x_dev, n * 2, e->s_comp);
}

void gpu_engine_set_residual(gpu_engine *e, const uint16_t *host) {
    const size_t n = e->ntok * (size_t)e->c.C;
    ds_cuda_sync(e->s_comp);
    ds_cuda_sync(e->s_copy);
    if (e->offload) memcpy(e->x_host, host, n * 2);
    else {
        ds_cuda_memcpy_h2d(e->x_dev, host, n * 2, e->s_comp);
        ds_cuda_sync(e->s_comp);
    }
}

void gpu_engine_destroy(gpu_engine *e) {
    if (!e) return;
    ds_cuda_sync(NULL);
    void *dev[] = {e->x_dev, e->stage[0], e->stage[1], e->y, e->a, e->q, e->k, e->v, e->ctx, e->o, e->g, e->u,
                   e->attn_ws, e->cos_t, e->sin_t, e->in_norm, e->post_norm, e->q_norm, e->k_norm, e->Hscratch,
                   e->gW, e->gH, e->gWq, e->gScale, e->gQ, e->gZp, e->gGidx, e->logits, e->xe, e->acc,
                   e->top_e_d, e->rows_d, e->top_w_d, e->rw_d, e->gate_ws, e->route_ws, e->amax_d};
    for (size_t i = 0; i < DS_ARRAY_LEN(dev); i++) ds_cuda_free(dev[i]);
    for (int k = 0; k < e->nlw; k++) { ds_cuda_free(e->w[k]); ds_cuda_free(e->b[k]); }
    for (int i = 0; i < e->nin; i++) ds_cuda_free(e->Hd[i]);
    void *host[] = {e->win, e->wout, e->has_b, e->wcap, e->w, e->b, e->h_off, e->h_boff, e->hn, e->Hd, e->want_h,
                    e->top_e_h, e->rows_h, e->top_w_h, e->rw_h, e->eoff};
    for (size_t i = 0; i < DS_ARRAY_LEN(host); i++) free(host[i]);
    ds_cuda_free_host(e->x_host);
    ds_cuda_free_host(e->h_stage);
    for (int i = 0; i < 2; i++) { ds_cuda_event_destroy(e->ev_h2d[i]); ds_cuda_event_destroy(e->ev_comp[i]); }
    for (int i = 0; i < 2 * NCAP; i++) ds_cuda_event_destroy(e->ev_hess[i]);
    ds_cuda_stream_destroy(e->s_comp);
    ds_cuda_stream_destroy(e->s_copy);
    free(e->len);
    free(e->off);
    free(e->chunk0);
    free(e->seg);
    free(e->pseg);
    ds_cuda_free(e->ix_d);
    free(e->ix_h); free(e->tpos); free(e->efill); free(e->gdesc); free(e->tprob);
    free(e);
    ds_cuda_shutdown();
}

#endif /* DS_CUDA */

#ifndef DS_GPU_LAZY
/* ---- the engine.h instance: the calls above behind engine_ops ---- */

typedef struct gpu_adapter {
    engine base;
    gpu_engine *g;
} gpu_adapter;

static gpu_engine *G(const engine *e) { return ((const gpu_adapter *)e)->g; }
static const char *ga_describe(const engine *e) { return gpu_engine_describe(G(e)); }
static ds_status ga_load_layer(engine *e, const layer_weights *lw) {
    gpu_engine_load_layer(G(e), lw);
    return DS_OK;
}
static ds_status ga_calibrate(engine *e, const int *used, double *const *H_host, int64_t *cnt) {
    gpu_engine_calibrate(G(e), used, H_host, cnt, e->act_amax);
    return DS_OK;
}
static ds_status ga_gptq(engine *e, const quant_args *a, const layer_linear *li, const double *H_host, int64_t nseq,
                         int block_size, double dampening_frac, gptq_result *res, void *wq_model) {
    return gpu_engine_gptq(G(e), a, li, H_host, nseq, block_size, dampening_frac, res, wq_model);
}
static ds_status ga_gptq_group(engine *e, const quant_args *a, const layer_linear *const *lis, int n,
                               const double *H_host, int64_t nseq, int block_size, double dampening_frac,
                               gptq_result *res, void *const *wq_model) {
    return gpu_engine_gptq_group(G(e), a, lis, n, H_host, nseq, block_size, dampening_frac, res, wq_model);
}
static void ga_set_weight(engine *e, int lin, const float *w, const void *w_model) {
    gpu_engine_set_weight(G(e), lin, w, w_model);
}
static void ga_propagate(engine *e) { gpu_engine_propagate(G(e)); }
static void ga_get_residual(engine *e, void *buf) { gpu_engine_get_residual(G(e), buf); }
static void ga_set_residual(engine *e, const void *buf) { gpu_engine_set_residual(G(e), buf); }
static engine_times ga_times(const engine *e) {
    gpu_engine_times t = gpu_engine_get_times(G(e));
    return (engine_times){.forward = t.forward, .hessian = t.hessian, .hess_copy = t.hess_copy, .gptq = t.gptq,
                          .propagate = t.propagate};
}
static size_t ga_peak_bytes(const engine *e) { return gpu_engine_peak_bytes(G(e)); }
static void ga_destroy(engine *e) {
    if (!e) return;
    gpu_engine_destroy(G(e));
    free(e);
}

static const engine_ops gpu_ops = {
    .device_hessians = 1, .describe = ga_describe, .load_layer = ga_load_layer, .calibrate = ga_calibrate,
    .gptq = ga_gptq, .gptq_group = ga_gptq_group, .set_weight = ga_set_weight, .propagate = ga_propagate, .get_residual = ga_get_residual,
    .set_residual = ga_set_residual, .times = ga_times, .peak_bytes = ga_peak_bytes, .destroy = ga_destroy};

ds_status gpu_engine_create_engine(const model *m, const ds_sample *local, size_t nlocal, const gpu_engine_opts *o,
                                   engine **out) {
    gpu_engine *g = NULL;
    *out = NULL;
    ds_status st = gpu_engine_create(m, local, nlocal, o, &g);
    if (st) {
        if (g) gpu_engine_destroy(g);
        return st;
    }
    gpu_adapter *a = xcalloc(1, sizeof *a);
    a->base.ops = &gpu_ops;
    a->base.resid_dtype = DS_DTYPE_BF16; /* the device's residual stream, whatever the model dtype */
    a->g = g;
    *out = &a->base;
    return DS_OK;
}

#ifdef DS_CUDA
const gpu_backend *doneshot_gpu_backend(void) {
    static const gpu_backend be = {.version = DS_VERSION, .abi = GPU_BACKEND_ABI,
                                   .device_count = gpu_engine_device_count,
                                   .create_engine = gpu_engine_create_engine};
    return &be;
}
#endif
#endif /* !DS_GPU_LAZY */
