/*
 * cpu_engine.c - the CPU instance of the layer engine (engine.h): the
 * residual stream of this rank's samples in f32, model.c's layer_forward
 * (OpenBLAS GEMMs) for the calibration and propagation passes, Hessian
 * capture with hessian_accum_cpu (f64 sums) and gptq_quantize for solves.
 */
#include "engine.h"
#include "ops_cpu.h"

#include <stdlib.h>
#include <string.h>

typedef struct cpu_engine {
    engine base;
    const model *m;
    const ds_sample *local;
    size_t nlocal;
    float **x;                /* [nlocal] -> [T_s, C] residual stream */
    float *y;                 /* [max_T, C] calibration copy */
    float *scratch;           /* [nmax, nmax] for the Hessian update */
    float *Hf;                /* the normalised f32 Hessian of a solve (grown on demand) */
    size_t Hf_cap;
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

static void capture(void *p, int input_id, const float *X, int T, int n) {
    cpu_engine *c = p;
    if (!c->used[input_id] || !c->H[input_id] || T <= 0) return;
    double t0 = ds_now();
    hessian_accum_cpu(c->H[input_id], X, T, n, c->scratch);
    c->cnt[2 * input_id] += T;
    c->cnt[2 * input_id + 1]++;
    c->t.hessian += ds_now() - t0;
}

static ds_status calibrate(engine *e, const int *used, double *const *H_host, int64_t *cnt) {
    cpu_engine *c = (cpu_engine *)e;
    const int C = c->m->cfg.C;
    DS_ASSERT(H_host);
    c->H = H_host;
    c->cnt = cnt;
    c->used = used;
    const double t0 = ds_now(), h0 = c->t.hessian;
    for (size_t s = 0; s < c->nlocal; s++) {
        memcpy(c->y, c->x[s], sizeof(float) * (size_t)c->local[s].n * C);
        layer_forward(c->m, c->lw, c->y, c->local[s].n, &c->ls, capture, c);
    }
    c->t.forward += ds_now() - t0 - (c->t.hessian - h0);
    c->H = NULL;
    c->cnt = NULL;
    c->used = NULL;
    return DS_OK;
}

static ds_status solve(engine *e, const quant_args *a, const layer_linear *li, const double *H_host, int64_t nseq,
                       int block_size, double dampening_frac, gptq_result *res) {
    cpu_engine *c = (cpu_engine *)e;
    const double t0 = ds_now();
    DS_ASSERT(H_host);
    const size_t need = (size_t)li->in * li->in;
    if (need > c->Hf_cap) c->Hf = xrealloc(c->Hf, sizeof(float) * (c->Hf_cap = need));
    hessian_to_f32_cpu(c->Hf, H_host, li->in, (double)nseq);
    ds_status st = gptq_quantize(a, li->w, li->out, li->in, c->Hf, block_size, dampening_frac, c->m->cfg.dtype, res);
    c->t.gptq += ds_now() - t0;
    return st;
}

static void set_weight(engine *e, int lin, const float *w) { (void)e; (void)lin; (void)w; }

static void propagate(engine *e) {
    cpu_engine *c = (cpu_engine *)e;
    const double t0 = ds_now();
    for (size_t s = 0; s < c->nlocal; s++) layer_forward(c->m, c->lw, c->x[s], c->local[s].n, &c->ls, NULL, NULL);
    c->t.propagate += ds_now() - t0;
}

static void get_residual(engine *e, void *buf) {
    cpu_engine *c = (cpu_engine *)e;
    const model_config *mc = &c->m->cfg;
    const size_t esz = ds_dtype_size(mc->dtype);
    unsigned char *b = buf;
    for (size_t s = 0, off = 0; s < c->nlocal; off += (size_t)c->local[s].n * mc->C, s++)
        ds_convert_from_f32(b + off * esz, c->x[s], mc->dtype, (size_t)c->local[s].n * mc->C);
}

static void set_residual(engine *e, const void *buf) {
    cpu_engine *c = (cpu_engine *)e;
    const model_config *mc = &c->m->cfg;
    const size_t esz = ds_dtype_size(mc->dtype);
    const unsigned char *b = buf;
    for (size_t s = 0, off = 0; s < c->nlocal; off += (size_t)c->local[s].n * mc->C, s++)
        ds_convert_to_f32(c->x[s], b + off * esz, mc->dtype, (size_t)c->local[s].n * mc->C);
}

static engine_times times(const engine *e) { return ((const cpu_engine *)e)->t; }
static size_t peak_bytes(const engine *e) { (void)e; return 0; }

static void destroy(engine *e) {
    cpu_engine *c = (cpu_engine *)e;
    if (!c) return;
    for (size_t s = 0; s < c->nlocal; s++) free(c->x[s]);
    free(c->x);
    free(c->y);
    free(c->scratch);
    free(c->Hf);
    layer_scratch_free(&c->ls);
    free(c);
}

static const engine_ops cpu_ops = {
    .device_hessians = 0, .describe = describe, .load_layer = load_layer, .calibrate = calibrate,
    .gptq = solve, .set_weight = set_weight, .propagate = propagate, .get_residual = get_residual,
    .set_residual = set_residual, .times = times, .peak_bytes = peak_bytes, .destroy = destroy};

ds_status cpu_engine_create(const model *m, const ds_sample *local, size_t nlocal, engine **out) {
    const model_config *mc = &m->cfg;
    cpu_engine *c = xcalloc(1, sizeof *c);
    c->base.ops = &cpu_ops;
    c->m = m;
    c->local = local;
    c->nlocal = nlocal;
    c->x = xcalloc(nlocal ? nlocal : 1, sizeof(float *));
    int max_T = 1, nmax = 0;
    ds_status st = DS_OK;
    for (size_t s = 0; s < nlocal && st == DS_OK; s++) {
        max_T = DS_MAX(max_T, local[s].n);
        c->x[s] = xmalloc(sizeof(float) * (size_t)local[s].n * mc->C);
        st = model_embed(m, local[s].ids, local[s].n, c->x[s]);
    }
    for (int inp = 0; inp < model_num_inputs(mc); inp++) nmax = DS_MAX(nmax, model_input_dim(mc, inp));
    c->y = xmalloc(sizeof(float) * (size_t)max_T * mc->C);
    c->scratch = xmalloc(sizeof(float) * (size_t)nmax * nmax);
    layer_scratch_init(&c->ls, mc, max_T);
    if (st) {
        destroy(&c->base);
        return st;
    }
    *out = &c->base;
    return DS_OK;
}
