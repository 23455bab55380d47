/*
 * cpu_engine.c - the CPU instance of the layer engine (engine.h): the
 * residual stream of this rank's samples in the model dtype (one buffer,
 * samples concatenated; lossless, since every layer output is rounded to that
 * dtype: bf16/f16 models keep half the bytes of f32), model.c's
 * layer_forward_batch (OpenBLAS GEMMs) over micro-batches of whole samples
 * (converted to f32 per micro-batch) for the calibration and propagation passes,
 * Hessian capture with hessian_accum_cpu (f64 sums per sample, one call per
 * micro-batch and input) and gptq_quantize for solves.
 *
 * Micro-batches: consecutive samples with at most CPU_BATCH_ROWS tokens in
 * all and at most CPU_BATCH_BYTES of layer scratch (a longer sample runs
 * alone). One GEMM of a few thousand rows keeps the BLAS threads busy where
 * one 512-token sample per GEMM left them spinning (docs/BENCHMARKS.md).
 */
#include "engine.h"
#include "ops_cpu.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define CPU_BATCH_ROWS 4096
#define CPU_BATCH_BYTES ((size_t)256 << 20)

typedef struct cpu_batch {
    size_t first, nseq; /* samples [first, first + nseq) */
    size_t row0;        /* their first row in x */
    int rows;
} cpu_batch;

typedef struct cpu_engine {
    engine base;
    const model *m;
    const ds_sample *local;
    size_t nlocal, ntok;
    unsigned char *x;         /* [ntok, C] residual stream in the model dtype, samples concatenated */
    size_t esz;               /* its element size */
    int *len;                 /* [nlocal] tokens per sample */
    cpu_batch *batch;         /* micro-batches, in sample order */
    size_t nbatch;
    float *y;                 /* [max rows, C] f32 activations of one micro-batch */
    float *scratch;           /* [nmax, nmax] for the Hessian update */
    pthread_mutex_t mu;       /* guards t.gptq (concurrent solves) */
    layer_scratch ls;
    const layer_weights *lw;  /* current layer (borrowed) */
    engine_times t;
    /* capture state of one calibration pass */
    double *const *H;
    int64_t *cnt;
    const int *used;
} cpu_engine;

static const char *describe(const engine *e) { (void)e; return "cpu"; }

static ds_status load_layer(engine *e, const layer_weights *lw) {
    ((cpu_engine *)e)->lw = lw;
    return DS_OK;
}

/* The f32 activations of micro-batch mb into c->y (exact: the stream holds
 * values of the model dtype). */
static void load_batch(cpu_engine *c, const cpu_batch *mb) {
    const model_config *mc = &c->m->cfg;
    ds_status st = ds_convert_to_f32(c->y, c->x + mb->row0 * mc->C * c->esz, mc->dtype, (size_t)mb->rows * mc->C);
    DS_ASSERT(st == DS_OK); /* the model dtype is F32, BF16 or F16 (model_open) */
}

static void capture(void *p, int input_id, const float *X, int nseq, const int *T, int n) {
    cpu_engine *c = p;
    size_t rows = 0;
    int64_t seqs = 0;
    for (int s = 0; s < nseq; s++) rows += (size_t)T[s], seqs += T[s] > 0;
    if (c->base.act_amax && c->used[input_id] && rows > 0) /* static activation observer (min/max) */
        c->base.act_amax[input_id] = act_absmax_cpu(c->base.act_amax[input_id], X, rows * (size_t)n);
    if (!c->used[input_id] || !c->H[input_id] || rows == 0) return;
    double t0 = ds_now();
    hessian_accum_cpu(c->H[input_id], X, nseq, T, n, c->scratch);
    c->cnt[2 * input_id] += (int64_t)rows;
    c->cnt[2 * input_id + 1] += seqs;
    c->t.hessian += ds_now() - t0;
}

static ds_status calibrate(engine *e, const int *used, double *const *H_host, int64_t *cnt) {
    cpu_engine *c = (cpu_engine *)e;
    DS_ASSERT(H_host);
    c->H = H_host;
    c->cnt = cnt;
    c->used = used;
    const double t0 = ds_now(), h0 = c->t.hessian;
    for (size_t b = 0; b < c->nbatch; b++) {
        const cpu_batch *mb = &c->batch[b];
        load_batch(c, mb);
        layer_calibrate_batch(c->m, c->lw, c->y, (int)mb->nseq, c->len + mb->first, &c->ls, capture, c);
    }
    c->t.forward += ds_now() - t0 - (c->t.hessian - h0);
    c->H = NULL;
    c->cnt = NULL;
    c->used = NULL;
    return DS_OK;
}

static ds_status solve(engine *e, const quant_args *a, const layer_linear *li, const double *H_host, int64_t nseq,
                       int block_size, double dampening_frac, gptq_result *res, void *wq_model) {
    cpu_engine *c = (cpu_engine *)e;
    const double t0 = ds_now();
    DS_ASSERT(H_host);
    /* its own scratch: solves may run concurrently (concurrent_gptq) */
    float *Hf = xmalloc(sizeof(float) * (size_t)li->in * li->in);
    hessian_to_f32_cpu(Hf, H_host, li->in, (double)nseq);
    ds_status st = gptq_quantize(a, li->w, li->out, li->in, Hf, block_size, dampening_frac, c->m->cfg.dtype, res);
    free(Hf);
    if (st == DS_OK) {
        ds_convert_from_f32(wq_model, res->wq, c->m->cfg.dtype, (size_t)li->out * li->in);
        free(res->wq);
        res->wq = NULL;
    }
    pthread_mutex_lock(&c->mu);
    c->t.gptq += ds_now() - t0;
    pthread_mutex_unlock(&c->mu);
    return st;
}

static void set_weight(engine *e, int lin, const float *w, const void *w_model) {
    (void)e; (void)lin; (void)w; (void)w_model;
}

static void propagate(engine *e) {
    cpu_engine *c = (cpu_engine *)e;
    const double t0 = ds_now();
    const model_config *mc = &c->m->cfg;
    for (size_t b = 0; b < c->nbatch; b++) {
        const cpu_batch *mb = &c->batch[b];
        load_batch(c, mb);
        layer_forward_batch(c->m, c->lw, c->y, (int)mb->nseq, c->len + mb->first, &c->ls, NULL, NULL);
        ds_convert_from_f32(c->x + mb->row0 * mc->C * c->esz, c->y, mc->dtype, (size_t)mb->rows * mc->C);
    }
    c->t.propagate += ds_now() - t0;
}

static void get_residual(engine *e, void *buf) {
    cpu_engine *c = (cpu_engine *)e;
    const model_config *mc = &c->m->cfg;
    memcpy(buf, c->x, c->ntok * mc->C * c->esz);
}

static void set_residual(engine *e, const void *buf) {
    cpu_engine *c = (cpu_engine *)e;
    const model_config *mc = &c->m->cfg;
    memcpy(c->x, buf, c->ntok * mc->C * c->esz);
}

static engine_times times(const engine *e) { return ((const cpu_engine *)e)->t; }
static size_t peak_bytes(const engine *e) { (void)e; return 0; }

static void destroy(engine *e) {
    cpu_engine *c = (cpu_engine *)e;
    if (!c) return;
    free(c->x);
    free(c->len);
    free(c->batch);
    free(c->y);
    free(c->scratch);
    pthread_mutex_destroy(&c->mu);
    layer_scratch_free(&c->ls);
    free(c);
}

static const engine_ops cpu_ops = {
    .device_hessians = 0, .concurrent_gptq = 1, .describe = describe, .load_layer = load_layer, .calibrate = calibrate,
    .gptq = solve, .set_weight = set_weight, .propagate = propagate, .get_residual = get_residual,
    .set_residual = set_residual, .times = times, .peak_bytes = peak_bytes, .destroy = destroy};

/* Scratch bytes per micro-batch row (layer_scratch_init_batch's per-row
 * buffers plus the calibration copy). */
static size_t row_bytes(const model_config *mc) {
    const size_t qd = (size_t)mc->NH * mc->HS, kvd = (size_t)mc->NKV * mc->HS;
    const size_t FF = (size_t)DS_MAX(mc->F, DS_MAX(mc->IM, mc->IS));
    return sizeof(float) * (3 * (size_t)mc->C + 2 * qd + 2 * kvd + 2 * FF);
}

ds_status cpu_engine_create(const model *m, const ds_sample *local, size_t nlocal, engine **out) {
    const model_config *mc = &m->cfg;
    cpu_engine *c = xcalloc(1, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    c->base.ops = &cpu_ops;
    c->base.resid_dtype = m->cfg.dtype;
    c->m = m;
    c->local = local;
    c->nlocal = nlocal;
    c->len = xcalloc(nlocal ? nlocal : 1, sizeof(int));
    int max_T = 1, nmax = 0;
    for (size_t s = 0; s < nlocal; s++) {
        c->len[s] = local[s].n;
        c->ntok += (size_t)local[s].n;
        max_T = DS_MAX(max_T, local[s].n);
    }
    /* micro-batches: consecutive samples up to the row limit */
    const size_t by_mem = CPU_BATCH_BYTES / row_bytes(mc);
    const int max_rows = DS_MAX(max_T, (int)DS_MIN((size_t)CPU_BATCH_ROWS, by_mem));
    c->batch = xcalloc(nlocal ? nlocal : 1, sizeof(cpu_batch));
    int rows_used = 1;
    for (size_t s = 0, row = 0; s < nlocal; row += (size_t)c->len[s], s++) {
        cpu_batch *mb = c->nbatch ? &c->batch[c->nbatch - 1] : NULL;
        if (!mb || mb->rows + c->len[s] > max_rows) {
            mb = &c->batch[c->nbatch++];
            *mb = (cpu_batch){.first = s, .nseq = 0, .row0 = row, .rows = 0};
        }
        mb->nseq++;
        mb->rows += c->len[s];
        rows_used = DS_MAX(rows_used, mb->rows);
    }
    c->esz = ds_dtype_size(mc->dtype);
    c->x = xmalloc(c->esz * (c->ntok ? c->ntok : 1) * mc->C);
    c->y = xmalloc(sizeof(float) * (size_t)rows_used * mc->C);
    ds_status st = DS_OK;
    for (size_t s = 0, row = 0; s < nlocal && st == DS_OK; row += (size_t)c->len[s], s++) {
        st = model_embed(m, local[s].ids, local[s].n, c->y);
        if (st == DS_OK) ds_convert_from_f32(c->x + row * mc->C * c->esz, c->y, mc->dtype, (size_t)local[s].n * mc->C);
    }
    for (int inp = 0; inp < model_num_inputs(mc); inp++) nmax = DS_MAX(nmax, model_input_dim(mc, inp));
    c->scratch = xmalloc(sizeof(float) * (size_t)nmax * nmax);
    layer_scratch_init_batch(&c->ls, mc, rows_used, max_T);
    if (st) {
        destroy(&c->base);
        return st;
    }
    *out = &c->base;
    return DS_OK;
}
