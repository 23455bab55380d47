/*
 * smoothquant.c - SmoothQuantModifier (see smoothquant.h): mappings, the
 * smoothing scales, folding them into a layer, and the calibration epoch.
 */
#include "smoothquant.h"
#include "checkpoint.h"
#include "comm.h"
#include "recipe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SQ_MIN_SCALE 1e-5f /* MINIMUM_SMOOTHING_SCALE */

void smoothquant_recipe_params(const recipe *r, sq_params *p) {
    memset(p, 0, sizeof *p);
    if (!r || !r->smoothquant.present) return;
    p->on = 1;
    p->alpha = r->smoothquant.smoothing_strength;
    p->log_eq = r->smoothquant.log_equalization;
}

/* pattern equals want, ignoring one trailing "$" on either (llm-compressor
 * writes both "re:.*q_proj" and "re:.*q_proj$" in its registries). */
static int same_pattern(const char *pattern, const char *want) {
    size_t a = strlen(pattern), b = strlen(want);
    if (a && pattern[a - 1] == '$') a--;
    return a == b && !strncmp(pattern, want, a);
}

ds_status smoothquant_validate(const model_config *c, const recipe *r) {
    const recipe_smoothquant *q = &r->smoothquant;
    static const char *bal[2][3] = {{"re:.*q_proj", "re:.*k_proj", "re:.*v_proj"}, {"re:.*gate_proj", "re:.*up_proj", NULL}};
    static const char *smooth[2] = {"re:.*input_layernorm", "re:.*post_attention_layernorm"};
    const int nmap = smoothquant_num_mappings(c);
    if (!q->present) return DS_OK;
    if (q->nignore > 0)
        return ds_error(DS_ERR_USAGE, "SmoothQuantModifier.ignore: not supported by doneshot (got %d entr%s, first "
                        "\"%s\")\nhint: remove \"ignore\" (every mapping of the architecture is smoothed)",
                        q->nignore, q->nignore == 1 ? "y" : "ies", q->ignore[0]);
    int ok = q->nmappings == 0 || q->nmappings == nmap;
    for (int k = 0; ok && k < q->nmappings; k++) {
        const recipe_sq_mapping *mp = &q->mappings[k];
        const int nb = k == 0 ? 3 : 2;
        ok = mp->nbalance == nb && same_pattern(mp->smooth, smooth[k]);
        for (int b = 0; ok && b < nb; b++) ok = same_pattern(mp->balance[b], bal[k][b]);
    }
    if (!ok)
        return ds_error(DS_ERR_USAGE, "SmoothQuantModifier.mappings: doneshot supports the architecture's default "
                        "mappings only; for %s: [[\"re:.*q_proj\", \"re:.*k_proj\", \"re:.*v_proj\"], "
                        "\"re:.*input_layernorm\"]%s\nhint: omit \"mappings\" to use them",
                        c->arch_name, nmap > 1 ? ", [[\"re:.*gate_proj\", \"re:.*up_proj\"], "
                        "\"re:.*post_attention_layernorm\"]" : " (MoE: attention only, as llm-compressor)");
    return DS_OK;
}

int smoothquant_recipe_on(const recipe *r) {
    sq_params p;
    smoothquant_recipe_params(r, &p);
    return p.on;
}

int smoothquant_num_mappings(const model_config *c) { return c->E > 0 ? 1 : 2; }

/* The balance Linears of mapping k (indices into lw->lin): q, k, v; gate, up. */
static int balance_of(int k, int *idx) {
    if (k == 0) { idx[0] = LIN_Q; idx[1] = LIN_K; idx[2] = LIN_V; return 3; }
    idx[0] = LIN_GATE; idx[1] = LIN_UP;
    return 2;
}

int smoothquant_tensor(const model_config *c, const char *name) {
    int l = -1, n = 0;
    char rest[128];
    if (sscanf(name, "model.layers.%d.%127s%n", &l, rest, &n) != 2 || l < 0 || l >= c->L) return 0;
    static const char *attn[] = {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                 "self_attn.v_proj.weight"};
    static const char *mlp[] = {"post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight"};
    for (size_t i = 0; i < DS_ARRAY_LEN(attn); i++)
        if (!strcmp(rest, attn[i])) return 1;
    if (smoothquant_num_mappings(c) < 2) return 0;
    for (size_t i = 0; i < DS_ARRAY_LEN(mlp); i++)
        if (!strcmp(rest, mlp[i])) return 1;
    return 0;
}

/* torch's x.pow(e) for a float tensor and a scalar exponent (aten
 * pow_tensor_scalar: 0.5 -> sqrt, 1 -> x, 2 -> x*x, else pow). */
static float pow_scalar(float x, float e) {
    if (e == 0.5f) return sqrtf(x);
    if (e == 1.0f) return x;
    if (e == 2.0f) return x * x;
    if (e == 0.0f) return 1.0f;
    return powf(x, e);
}

void smoothquant_scales(int n, const float *mn, const float *mx, const float *wmax, double alpha, int log_eq,
                        ds_dtype dt, float *s) {
    /* aten's pow_tensor_scalar takes the exponent in the tensor's dtype */
    const float ea = ds_round_to((float)alpha, dt), eb = ds_round_to((float)(1.0 - alpha), dt);
    for (int j = 0; j < n; j++) {
        const float act = ds_round_to(mx[j] - mn[j], dt);
        float v;
        if (log_eq) {
            const float lg = ds_round_to(log2f(ds_round_to(2.0f + act, dt)), dt);
            v = ds_round_to(act / lg, dt);
        } else {
            const float ws = ds_round_to(2.0f * wmax[j], dt);
            const float num = ds_round_to(pow_scalar(act, ea), dt), den = ds_round_to(pow_scalar(ws, eb), dt);
            v = ws > 0.0f ? ds_round_to(num / den, dt) : act;
        }
        s[j] = isnan(v) ? v : (v > SQ_MIN_SCALE ? v : SQ_MIN_SCALE); /* torch.maximum propagates NaN */
    }
}

void smoothquant_apply(const model_config *c, layer_weights *lw, const float *s) {
    const ds_dtype dt = c->dtype;
    const int C = c->C;
    for (int k = 0; k < smoothquant_num_mappings(c); k++) {
        const float *sk = s + (size_t)k * C;
        int idx[3];
        const int nb = balance_of(k, idx);
        for (int b = 0; b < nb; b++) {
            layer_linear *li = &lw->lin[idx[b]];
            DS_ASSERT(li->in == C);
            for (int o = 0; o < li->out; o++) {
                float *row = li->w + (size_t)o * C;
                for (int j = 0; j < C; j++) row[j] = ds_round_to(row[j] * sk[j], dt);
            }
        }
        float *g = k == 0 ? lw->in_norm : lw->post_norm;
        for (int j = 0; j < C; j++) g[j] = ds_round_to(g[j] / sk[j], dt);
    }
}

const float *smoothquant_layer_scales(const sq_plan *plan, int l) {
    if (!plan || !plan->p.on || !plan->s) return NULL;
    DS_ASSERT(l >= 0 && l < plan->L);
    return plan->s + (size_t)l * plan->nmap * plan->C;
}

void sq_plan_free(sq_plan *plan) {
    if (!plan) return;
    free(plan->s);
    memset(plan, 0, sizeof *plan);
}

/* ---- the calibration epoch ---- */

typedef struct sq_capture {
    int C, nmap;
    float *mn, *mx; /* [nmap][C] */
} sq_capture;

static void capture(void *p, int input_id, const float *X, int T, int n) {
    sq_capture *q = p;
    const int k = input_id == INP_ATTN ? 0 : input_id == INP_MLP ? 1 : -1;
    if (k < 0 || k >= q->nmap) return;
    DS_ASSERT(n == q->C);
    float *mn = q->mn + (size_t)k * n, *mx = q->mx + (size_t)k * n;
    for (int t = 0; t < T; t++) {
        const float *x = X + (size_t)t * n;
        for (int j = 0; j < n; j++) {
            if (x[j] < mn[j] || isnan(x[j])) mn[j] = x[j];
            if (x[j] > mx[j] || isnan(x[j])) mx[j] = x[j];
        }
    }
}

/* Rank 0: the smoothed tensors of layer lw into ck (quantized Linears are
 * skipped by ckpt_write_tensor: the GPTQ pass writes them). */
static ds_status write_smoothed(const model_config *c, const layer_weights *lw, struct ckpt_writer *ck) {
    char name[256];
    ds_status st = DS_OK;
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", lw->layer);
    st = ckpt_write_tensor(ck, name, lw->in_norm, (size_t)c->C);
    if (!st && smoothquant_num_mappings(c) > 1) {
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", lw->layer);
        st = ckpt_write_tensor(ck, name, lw->post_norm, (size_t)c->C);
    }
    for (int k = 0; k < smoothquant_num_mappings(c) && !st; k++) {
        int idx[3];
        const int nb = balance_of(k, idx);
        for (int b = 0; b < nb && !st; b++) {
            const layer_linear *li = &lw->lin[idx[b]];
            snprintf(name, sizeof name, "%s.weight", li->name);
            st = ckpt_write_tensor(ck, name, li->w, (size_t)li->out * li->in);
        }
    }
    return st;
}

ds_status smoothquant_calibrate(const model *m, const sq_params *p, const ds_sample *local, size_t nlocal,
                                struct ckpt_writer *ck, sq_plan *plan) {
    const model_config *c = &m->cfg;
    memset(plan, 0, sizeof *plan);
    plan->L = c->L;
    plan->C = c->C;
    plan->nmap = smoothquant_num_mappings(c);
    plan->p = *p;
    plan->s = xcalloc((size_t)c->L * plan->nmap * c->C, sizeof(float));
    const size_t nm = (size_t)plan->nmap * c->C;
    int max_T = 1;
    size_t *off = xmalloc(sizeof(size_t) * (nlocal + 1));
    off[0] = 0;
    for (size_t i = 0; i < nlocal; i++) {
        max_T = DS_MAX(max_T, local[i].n);
        off[i + 1] = off[i] + (size_t)local[i].n * c->C;
    }
    float *x = xmalloc(sizeof(float) * (off[nlocal] ? off[nlocal] : 1));
    float *y = xmalloc(sizeof(float) * (size_t)max_T * c->C);
    float *mm = xmalloc(sizeof(float) * 2 * nm), *wmax = xmalloc(sizeof(float) * (size_t)c->C);
    sq_capture q = {.C = c->C, .nmap = plan->nmap, .mn = mm, .mx = mm + nm};
    layer_scratch ls;
    layer_scratch_init(&ls, c, max_T);
    ds_status st = DS_OK;
    for (size_t i = 0; i < nlocal && !st; i++) st = model_embed(m, local[i].ids, local[i].n, x + off[i]);
    st = comm_sync_status(st);
    const double t0 = ds_now();
    for (int l = 0; l < c->L && !st; l++) {
        layer_weights lw;
        if ((st = comm_sync_status(layer_load(m, l, &lw)))) break; /* layer_load frees lw on failure */
        layer_set_all_experts(&lw, 0); /* the smoothed inputs do not depend on the experts */
        for (size_t j = 0; j < nm; j++) { q.mn[j] = INFINITY; q.mx[j] = -INFINITY; }
        for (size_t i = 0; i < nlocal; i++) { /* calibration: outputs discarded */
            memcpy(y, x + off[i], sizeof(float) * (size_t)local[i].n * c->C);
            layer_forward(m, &lw, y, local[i].n, &ls, capture, &q);
        }
        /* every rank the same statistics: MIN and MAX over the ranks (a
         * rank without tokens contributes +inf / -inf) */
        for (size_t j = 0; j < nm; j++) q.mn[j] = -q.mn[j];
        comm_allreduce_max_f32(mm, 2 * nm);
        for (size_t j = 0; j < nm; j++) q.mn[j] = -q.mn[j];
        float *s = plan->s + (size_t)l * nm;
        for (int k = 0; k < plan->nmap; k++) {
            int idx[3];
            const int nb = balance_of(k, idx);
            for (int j = 0; j < c->C; j++) wmax[j] = 0.0f;
            for (int b = 0; b < nb; b++) {
                const layer_linear *li = &lw.lin[idx[b]];
                for (int o = 0; o < li->out; o++)
                    for (int j = 0; j < c->C; j++) {
                        const float a = fabsf(li->w[(size_t)o * c->C + j]);
                        if (a > wmax[j] || isnan(a)) wmax[j] = a;
                    }
            }
            const float *mn = q.mn + (size_t)k * c->C, *mx = q.mx + (size_t)k * c->C;
            int seen = 1;
            for (int j = 0; j < c->C && seen; j++) seen = mn[j] <= mx[j];
            if (!seen) { /* no token anywhere: llm-compressor has no statistics and skips the mapping */
                for (int j = 0; j < c->C; j++) s[(size_t)k * c->C + j] = 1.0f;
                continue;
            }
            smoothquant_scales(c->C, mn, mx, wmax, p->alpha, p->log_eq, c->dtype, s + (size_t)k * c->C);
        }
        smoothquant_apply(c, &lw, s);
        if (ck) st = write_smoothed(c, &lw, ck);
        for (size_t i = 0; i < nlocal; i++) layer_forward(m, &lw, x + off[i], local[i].n, &ls, NULL, NULL);
        layer_free(&lw);
        st = comm_sync_status(st);
    }
    if (!st && comm_rank() == 0)
        ds_info("smoothquant: %d layers smoothed (smoothing_strength %g, %s) in %.2fs", c->L, p->alpha,
                p->log_eq ? "log_equalization" : "smoothquant", ds_now() - t0);
    layer_scratch_free(&ls);
    free(x); free(y); free(mm); free(wmax); free(off);
    if (st) sq_plan_free(plan);
    return st;
}
