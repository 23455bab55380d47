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

/* ---- mappings: the recipe's, resolved against each decoder layer ---- */

/* The module class compressed-tensors would match for a norm of this
 * architecture: "LlamaForCausalLM" -> "LlamaRMSNorm". */
static void norm_class(const model_config *c, char *out, size_t cap) {
    const char *suf = strstr(c->arch_name, "ForCausalLM");
    const int n = suf ? (int)(suf - c->arch_name) : (int)strlen(c->arch_name);
    snprintf(out, cap, "%.*sRMSNorm", n, c->arch_name);
}

/* One module of a decoder layer that a mapping may name. */
typedef struct sq_mod {
    char name[160];
    const char *cls;
    int norm_slot; /* smoothable norm: its mapping slot (0 input_layernorm, 1 post_attention_layernorm), else -1 */
    int input;     /* Linear: the input it reads (INP_*); norm: the input it produces, or -1 */
} sq_mod;

/* Layer l's modules: its norms (q_norm / k_norm too) and every Linear
 * (experts, router and shared expert included). *n: count; returns the
 * array (caller frees). */
static sq_mod *layer_modules(const model_config *c, int l, const char *ncls, int *n) {
    const int nl = model_layer_linears(c, l, 1, NULL);
    layer_linear *ll = xcalloc((size_t)DS_MAX(nl, 1), sizeof *ll);
    model_layer_linears(c, l, 1, ll);
    sq_mod *m = xcalloc((size_t)nl + 4, sizeof *m);
    int k = 0;
    static const char *norms[4] = {"input_layernorm", "post_attention_layernorm", "self_attn.q_norm",
                                   "self_attn.k_norm"};
    for (int i = 0; i < (c->qk_norm ? 4 : 2); i++, k++) {
        snprintf(m[k].name, sizeof m[k].name, "model.layers.%d.%s", l, norms[i]);
        m[k].cls = ncls;
        m[k].norm_slot = i < 2 && i < smoothquant_num_mappings(c) ? i : -1;
        m[k].input = i == 0 ? INP_ATTN : i == 1 ? INP_MLP : -1;
    }
    for (int i = 0; i < nl; i++, k++) {
        snprintf(m[k].name, sizeof m[k].name, "%s", ll[i].name);
        m[k].cls = "Linear";
        m[k].norm_slot = -1;
        m[k].input = ll[i].input_id;
    }
    free(ll);
    *n = k;
    return m;
}

/* Mapping k (the recipe's; k < 0: the architecture's default slot -k-1)
 * matches module d as its smooth layer (entry -1) or balance entry `e`. */
static int map_match(const recipe *r, int k, int e, const sq_mod *d) {
    if (k >= 0) return recipe_sq_match(r, k, e, d->name, d->cls);
    const int slot = -k - 1;
    if (e < 0) return d->norm_slot == slot;
    return d->cls[0] == 'L' && !strcmp(d->cls, "Linear") && d->input == (slot == 0 ? INP_ATTN : INP_MLP);
}

#define SQ_SUPPORTED "doneshot smooths input_layernorm into q/k/v_proj and (dense MLPs) post_attention_layernorm " \
                     "into gate/up_proj"

ds_status smoothquant_resolve(const model_config *c, const recipe *r, unsigned char *on, int verbose) {
    const recipe_smoothquant *q = &r->smoothquant;
    const int nmap = smoothquant_num_mappings(c);
    memset(on, 0, (size_t)c->L * nmap);
    if (!q->present) return DS_OK;
    const int nm = q->nmappings ? q->nmappings : nmap;
    char ncls[96];
    norm_class(c, ncls, sizeof ncls);
    int *found = xcalloc((size_t)nm, sizeof *found), *partial = xcalloc((size_t)nm, sizeof *partial);
    int nskipped = 0, nbal = 0;
    for (int k = 0; k < q->nmappings; k++) nbal = DS_MAX(nbal, q->mappings[k].nbalance);
    int *hits = xcalloc((size_t)DS_MAX(nbal, 1), sizeof *hits);
    ds_status st = DS_OK;
    char mk[64];
    for (int l = 0; l < c->L && !st; l++) {
        int n = 0;
        sq_mod *md = layer_modules(c, l, ncls, &n);
        for (int k = 0; k < nm && !st; k++) {
            const int key = q->nmappings ? k : -k - 1;
            if (q->nmappings) snprintf(mk, sizeof mk, "SmoothQuantModifier.mappings[%d]", k);
            else snprintf(mk, sizeof mk, "SmoothQuantModifier (default mapping %d)", k);
            int sm = -1, nsm = 0;
            for (int i = 0; i < n; i++)
                if (map_match(r, key, -1, &md[i])) {
                    if (nsm++ == 0) sm = i;
                    else {
                        st = ds_error(DS_ERR_USAGE, "%s: smooth layer \"%s\" matches both %s and %s (one smooth "
                                      "layer per decoder layer, as llm-compressor requires)\nhint: anchor the "
                                      "pattern, e.g. \"re:.*input_layernorm$\"", mk,
                                      q->nmappings ? q->mappings[k].smooth : "", md[sm].name, md[i].name);
                        break;
                    }
                }
            if (st || nsm == 0) continue; /* no smooth layer in this decoder layer */
            found[k]++;
            const int slot = md[sm].norm_slot;
            if (slot < 0) {
                st = ds_error(DS_ERR_USAGE, "%s: smooth layer %s is not supported (%s%s)\nhint: use "
                              "[[\"re:.*q_proj\", \"re:.*k_proj\", \"re:.*v_proj\"], \"re:.*input_layernorm\"]%s",
                              mk, md[sm].name, SQ_SUPPORTED, c->E ? "; MoE architectures: attention only, as "
                              "llm-compressor's default mappings" : "", nmap > 1 ? " and [[\"re:.*gate_proj\", "
                              "\"re:.*up_proj\"], \"re:.*post_attention_layernorm\"]" : "");
                break;
            }
            if (on[(size_t)l * nmap + slot] & 2) {
                st = ds_error(DS_ERR_USAGE, "%s: %s is the smooth layer of an earlier mapping too\nhint: "
                              "name each smooth layer in one mapping only", mk, md[sm].name);
                break;
            }
            /* balance: exactly the Linears that read the smooth layer's output */
            const int nb = q->nmappings ? q->mappings[k].nbalance : 1;
            memset(hits, 0, sizeof *hits * (size_t)DS_MAX(nbal, 1));
            int all_ign = 1, any_ign = 0;
            for (int i = 0; i < n && !st; i++) {
                int in = 0;
                for (int e = 0; e < nb; e++)
                    if (map_match(r, key, q->nmappings ? e : 0, &md[i])) { in = 1; if (q->nmappings) hits[e]++; }
                const int reader = md[i].norm_slot < 0 && !strcmp(md[i].cls, "Linear") &&
                                   md[i].input == md[sm].input;
                if (in && !reader)
                    st = ds_error(DS_ERR_USAGE, "%s: balance layer %s does not read the output of %s\nhint: the "
                                  "balance layers of %s are the Linears it feeds", mk, md[i].name, md[sm].name,
                                  md[sm].name);
                else if (!in && reader)
                    st = ds_error(DS_ERR_USAGE, "%s: %s also reads the output of %s but is not a balance layer; "
                                  "smoothing without it would change the model\nhint: list every Linear that "
                                  "reads %s among the balance layers", mk, md[i].name, md[sm].name, md[sm].name);
                else if (in) {
                    const int ig = recipe_sq_ignored(r, md[i].name, md[i].cls);
                    all_ign &= ig;
                    any_ign |= ig;
                }
            }
            for (int e = 0; e < nb && !st && q->nmappings; e++)
                if (!hits[e])
                    st = ds_error(DS_ERR_USAGE, "%s: balance entry \"%s\" matches no Linear of model.layers.%d "
                                  "(its smooth layer %s is there; llm-compressor fails on this incomplete set)",
                                  mk, q->mappings[k].balance[e], l, md[sm].name);
            if (st) break;
            const int sig = recipe_sq_ignored(r, md[sm].name, md[sm].cls);
            /* llm-compressor's rule: a mapping is skipped only when its smooth
             * layer and every balance layer are ignored */
            if (sig && all_ign) {
                on[(size_t)l * nmap + slot] = 2; /* resolved, not smoothed */
                nskipped++;
                continue;
            }
            if ((sig || any_ign) && !partial[k]++ && verbose)
                ds_warn("%s: %s is smoothed although the ignore list names %s: llm-compressor skips a mapping "
                        "only when its smooth layer and all its balance layers are ignored", mk, md[sm].name,
                        sig ? md[sm].name : "some of its balance layers");
            on[(size_t)l * nmap + slot] = 3;
        }
        free(md);
    }
    /* a "re:" match that failed (PCRE2 limit) explains any error above: report it */
    if (recipe_match_status(r)) st = DS_ERR_USAGE;
    for (int k = 0; k < nm && !st; k++)
        if (!found[k])
            st = ds_error(DS_ERR_USAGE, "SmoothQuantModifier.mappings[%d]: smooth layer \"%s\" matches no module "
                          "of any decoder layer (%s)\nhint: e.g. \"re:.*input_layernorm\"", k,
                          q->nmappings ? q->mappings[k].smooth : "", SQ_SUPPORTED);
    if (!st && verbose && nskipped)
        ds_info("smoothquant: %d mapping%s skipped (smooth layer and all balance layers ignored)", nskipped,
                nskipped == 1 ? "" : "s");
    for (size_t i = 0; i < (size_t)c->L * nmap; i++) on[i] = on[i] == 3;
    free(found); free(partial); free(hits);
    return st;
}

ds_status smoothquant_validate(const model_config *c, const recipe *r) {
    if (!r->smoothquant.present) return DS_OK;
    unsigned char *on = xmalloc((size_t)c->L * smoothquant_num_mappings(c));
    const ds_status st = smoothquant_resolve(c, r, on, 0);
    free(on);
    return st;
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
    free(plan->on);
    memset(plan, 0, sizeof *plan);
}

/* ---- the calibration epoch ---- */

typedef struct sq_capture {
    int C, nmap;
    float *mn, *mx; /* [nmap][C] */
} sq_capture;

static void capture(void *p, int input_id, const float *X, int nseq, const int *T, int n) {
    sq_capture *q = p;
    const int k = input_id == INP_ATTN ? 0 : input_id == INP_MLP ? 1 : -1;
    if (k < 0 || k >= q->nmap) return;
    DS_ASSERT(n == q->C);
    float *mn = q->mn + (size_t)k * n, *mx = q->mx + (size_t)k * n;
    int rows = 0;
    for (int s = 0; s < nseq; s++) rows += T[s];
    for (int t = 0; t < rows; t++) {
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

ds_status smoothquant_calibrate(const model *m, const recipe *r, const ds_sample *local, size_t nlocal,
                                struct ckpt_writer *ck, sq_plan *plan) {
    const model_config *c = &m->cfg;
    memset(plan, 0, sizeof *plan);
    plan->L = c->L;
    plan->C = c->C;
    plan->nmap = smoothquant_num_mappings(c);
    smoothquant_recipe_params(r, &plan->p);
    const sq_params *p = &plan->p;
    plan->on = xmalloc((size_t)c->L * plan->nmap);
    ds_status st = smoothquant_resolve(c, r, plan->on, comm_rank() == 0);
    if (st) { sq_plan_free(plan); return st; } /* the same on every rank: the recipe and config are */
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
            int seen = plan->on[(size_t)l * plan->nmap + k]; /* off: s = 1, an exact no-op */
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
    if (!st && comm_rank() == 0) {
        int non = 0;
        for (size_t i = 0; i < (size_t)c->L * plan->nmap; i++) non += plan->on[i];
        ds_info("smoothquant: %d mapping%s in %d layers smoothed (smoothing_strength %g, %s) in %.2fs", non,
                non == 1 ? "" : "s", c->L, p->alpha, p->log_eq ? "log_equalization" : "smoothquant",
                ds_now() - t0);
    }
    layer_scratch_free(&ls);
    free(x); free(y); free(mm); free(wmax); free(off);
    if (st) sq_plan_free(plan);
    return st;
}
