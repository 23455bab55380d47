/*
 * recipe.c - JSON recipe -> struct recipe, with validation, target matching
 * and the config.json "quantization_config" block.
 *
 * Follows llm-compressor's recipe schema and GPTQModifier/QuantizationMixin
 * semantics (docs/reference-llm-compressor.md §1.5, §1.6, §4) and
 * compressed-tensors' QuantizationArgs validation and serialization (§3.7).
 * Deliberately not supported (clear DS_ERR_USAGE errors): YAML, modifiers
 * other than GPTQModifier / QuantizationModifier / SmoothQuantModifier,
 * more than one config group, schemes without a checkpoint format in
 * src/scheme.c, the "mse" observer, dynamic weights.
 *
 * The cJSON tree never leaves this file: values are copied into the struct
 * and the tree is deleted. "re:" target/ignore entries are compiled once with
 * PCRE2 (anchored at the start, like Python's re.match) and cached in priv.
 */
#include "recipe.h"
#include "json_util.h"
#include "scheme.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cJSON.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

struct recipe_priv {
    pcre2_code **target_re; /* [ntargets], NULL where the entry is not "re:" */
    pcre2_code **ignore_re; /* [nignore] */
    /* SmoothQuantModifier: mappings' smooth [nmappings] and balance
     * [nmappings][nbalance] entries, its ignore list [nignore] */
    pcre2_code **sq_smooth_re, ***sq_balance_re, **sq_ignore_re;
    pcre2_match_context *mctx; /* RECIPE_RE_MATCH_LIMIT / RECIPE_RE_DEPTH_LIMIT / RECIPE_RE_HEAP_LIMIT_KIB */
    char observer[32], in_observer[32];
    int group_size_m1; /* channel strategy given as "group_size": -1 (serialized as -1, not null) */
    /* where the patterns come from, for match errors */
    char origin[256], gptq_path[512], sq_path[512];
    /* first "re:" match that failed with a PCRE2 error (sticky; see
     * recipe_match_status). Written only by a failing match, which no run gets
     * past pipeline_validate, so the concurrent matching of a valid run never
     * writes it. */
    int match_err;        /* PCRE2 error code, 0 = none */
    char *match_msg;      /* the full message (malloc'd) */
};

/* ---- presets (compressed-tensors PRESET_SCHEMES, §4.4) ---- */

/* One preset: weights and input_activations (in.num_bits == 0: none) exactly
 * as compressed-tensors 0.19.0 quantization/quant_scheme.py PRESET_SCHEMES,
 * and the activation observer llm-compressor resolves for it. A preset is
 * offered when src/scheme.c has a format for its weights and accepts its
 * activations (scheme_act_supported); add a scheme = add its row here. */
typedef struct preset { const char *name; quant_args w, in; const char *in_observer; } preset;
#define P_INTW(b, s) {.num_bits = (b), .symmetric = (s), .strategy = QS_GROUP, .group_size = 128}
#define P_FP8 .num_bits = 8, .type = QT_FLOAT, .symmetric = 1
#define P_FP4 .num_bits = 4, .type = QT_FLOAT, .symmetric = 1, .strategy = QS_TENSOR_GROUP, .group_size = 16, \
              .scale_dtype_set = 1, .scale_dtype = DS_DTYPE_F8_E4M3
static const preset PRESETS[] = {
    {"W4A16", P_INTW(4, 1), {0}, NULL}, {"W4A16_ASYM", P_INTW(4, 0), {0}, NULL},
    {"W8A16", P_INTW(8, 1), {0}, NULL}, {"W2A16", P_INTW(2, 1), {0}, NULL},
    {"W3A16", P_INTW(3, 1), {0}, NULL}, {"W5A16", P_INTW(5, 1), {0}, NULL},
    {"W6A16", P_INTW(6, 1), {0}, NULL}, {"W7A16", P_INTW(7, 1), {0}, NULL},
    {"W8A8", {.num_bits = 8, .symmetric = 1, .strategy = QS_CHANNEL, .group_size = -1},
     {.num_bits = 8, .symmetric = 1, .strategy = QS_TOKEN, .group_size = -1, .dynamic = QD_DYNAMIC}, NULL},
    {"INT8", {.num_bits = 8, .symmetric = 1, .strategy = QS_CHANNEL, .group_size = -1},
     {.num_bits = 8, .symmetric = 1, .strategy = QS_TOKEN, .group_size = -1, .dynamic = QD_DYNAMIC}, NULL},
    {"FP8", {P_FP8, .strategy = QS_TENSOR, .group_size = -1},
     {P_FP8, .strategy = QS_TENSOR, .group_size = -1}, "static_minmax"},
    {"FP8_DYNAMIC", {P_FP8, .strategy = QS_CHANNEL, .group_size = -1},
     {P_FP8, .strategy = QS_TOKEN, .group_size = -1, .dynamic = QD_DYNAMIC}, NULL},
    {"FP8_BLOCK", {P_FP8, .strategy = QS_BLOCK, .group_size = -1, .block = {128, 128}},
     {P_FP8, .strategy = QS_GROUP, .group_size = 128, .dynamic = QD_DYNAMIC}, NULL},
    {"NVFP4A16", {P_FP4}, {0}, NULL},
    {"NVFP4", {P_FP4}, {P_FP4, .dynamic = QD_LOCAL}, "static_minmax"},
};
/* compressed-tensors presets doneshot has no row for */
static const char *const UNSUPPORTED_PRESETS[] = {
    "W4A8", "W4A4", "W2A4", "W2A8", "W3A4", "W3A8", "W5A8", "W6A8", "W7A8", "W4AFP8",
    "MXFP4A16", "MXFP4", "MXFP8A16", "MXFP8", "UNQUANTIZED",
};

/* What input activations store per module (quant_args.act of the weights). */
static quant_act_store act_store(const quant_args *in) {
    if (in->num_bits == 0) return QACT_NONE;
    if (in->dynamic == QD_LOCAL) return QACT_INPUT_GLOBAL_SCALE;
    if (in->dynamic == QD_DYNAMIC) return QACT_DYNAMIC;
    return QACT_INPUT_SCALE;
}

/* 1 if doneshot runs preset ps: its weights have a format and its activations are supported. */
static int preset_runs(const preset *ps) {
    quant_args w = ps->w;
    w.act = act_store(&ps->in);
    return scheme_format_name(&w) != NULL && (ps->in.num_bits == 0 || scheme_act_supported(&ps->in));
}

/* "W4A16, W4A16_ASYM, ..." of the presets doneshot runs (static buffer). */
static const char *supported_presets(void) {
    static char buf[512];
    size_t n = 0;
    buf[0] = 0;
    for (size_t i = 0; i < DS_ARRAY_LEN(PRESETS); i++)
        if (preset_runs(&PRESETS[i]))
            n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", n ? ", " : "", PRESETS[i].name);
    return buf;
}

#define RUN_KEYS "model, dataset, output, num_calibration_samples, max_seq_length, seed, text_field, max_shard_size, moe_calibrate_all_experts"
#define GPTQ_KEYS "targets, ignore, scheme, config_groups, block_size, dampening_frac, actorder, offload_hessians, bypass_divisibility_checks, batched_quantization"
#define QM_KEYS "targets, ignore, scheme, config_groups, bypass_divisibility_checks"
#define SQ_KEYS "smoothing_strength, mappings, ignore, num_calibration_steps, algorithm"
#define GROUP_KEYS "targets, weights, input_activations, output_activations, format"
#define WEIGHT_KEYS "num_bits, type, symmetric, strategy, group_size, actorder, observer, observer_kwargs, dynamic, block_structure, scale_dtype, zp_dtype"

/* ---- parse context and error helpers ---- */

typedef struct pctx {
    const char *origin;
} pctx;

/* Short JSON rendering of a value for messages: strings quoted, others as JSON,
 * truncated to ~60 chars. */
static void describe(const cJSON *v, char *buf, size_t n) {
    if (!v) { snprintf(buf, n, "nothing"); return; }
    char *txt = cJSON_PrintUnformatted(v);
    if (!txt) { snprintf(buf, n, "?"); return; }
    if (strlen(txt) > 60) snprintf(buf, n, "%.57s...", txt);
    else snprintf(buf, n, "%s", txt);
    cJSON_free(txt);
}

static ds_status err_at(const pctx *c, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static ds_status err_at(const pctx *c, const char *path, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (path && *path) return ds_error(DS_ERR_USAGE, "%s: %s: %s", c->origin, path, msg);
    return ds_error(DS_ERR_USAGE, "%s: %s", c->origin, msg);
}

static ds_status err_type(const pctx *c, const char *path, const char *want, const cJSON *v) {
    char d[80];
    describe(v, d, sizeof d);
    return err_at(c, path, "expected %s, got %s", want, d);
}

static ds_status err_value(const pctx *c, const char *path, const cJSON *v, const char *allowed) {
    char d[80];
    describe(v, d, sizeof d);
    return err_at(c, path, "invalid value %s (allowed: %s)", d, allowed);
}

/* snprintf for key paths (truncation is harmless: paths only go into messages). */
static void pathf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void pathf(char *buf, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, n, fmt, ap);
    va_end(ap);
}

static void join_path(char *buf, size_t n, const char *base, const char *key) {
    if (base && *base) pathf(buf, n, "%s.%s", base, key);
    else pathf(buf, n, "%s", key);
}

typedef struct keyref { const char *key; size_t pos; } keyref;

static int keyref_cmp(const void *x, const void *y) {
    const keyref *a = x, *b = y;
    int d = strcmp(a->key, b->key);
    if (d) return d;
    return a->pos < b->pos ? -1 : a->pos > b->pos;
}

/* Reject duplicate keys in an object (cJSON keeps both; the first would win).
 * Names the earliest key that occurs again. O(n log n): sort (key, position)
 * pairs; equal keys end up adjacent with the first occurrence leading its run
 * (a pairwise scan took minutes for 200k keys). */
static ds_status check_dups(const pctx *c, const char *path, const cJSON *obj) {
    size_t n = 0;
    for (const cJSON *a = obj->child; a; a = a->next) n++;
    if (n < 2) return DS_OK;
    keyref *k = xmalloc(n * sizeof *k);
    n = 0;
    for (const cJSON *a = obj->child; a; a = a->next, n++) k[n] = (keyref){a->string, n};
    qsort(k, n, sizeof *k, keyref_cmp);
    size_t first = n; /* position of the earliest duplicated key */
    const char *dup = NULL;
    for (size_t i = 1; i < n; i++)
        if (k[i - 1].pos < first && strcmp(k[i - 1].key, k[i].key) == 0) {
            first = k[i - 1].pos;
            dup = k[i - 1].key;
        }
    free(k);
    if (dup) return err_at(c, path, "duplicate key \"%s\"", dup);
    return DS_OK;
}

static int ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

/* ---- typed getters ---- */

static ds_status get_int(const pctx *c, const char *path, const cJSON *v, long lo, long hi,
                         const char *what, long *out) {
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble != floor(v->valuedouble))
        return err_type(c, path, what, v);
    double d = v->valuedouble;
    if (d < (double)lo || d > (double)hi) {
        char dd[80];
        describe(v, dd, sizeof dd);
        return err_at(c, path, "expected %s, got %s", what, dd);
    }
    *out = (long)d;
    return DS_OK;
}

static ds_status get_bool(const pctx *c, const char *path, const cJSON *v, int *out) {
    if (!cJSON_IsBool(v)) return err_type(c, path, "true or false", v);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return DS_OK;
}

static ds_status get_str(const pctx *c, const char *path, const cJSON *v, char **out) {
    if (!cJSON_IsString(v) || !v->valuestring[0]) return err_type(c, path, "a non-empty string", v);
    free(*out);
    *out = xstrdup(v->valuestring);
    return DS_OK;
}

static void free_list(char **l, int n) {
    if (!l) return;
    for (int i = 0; i < n; i++) free(l[i]);
    free(l);
}

/* A string or a list of non-empty strings. */
static ds_status get_str_list(const pctx *c, const char *path, const cJSON *v, char ***out, int *nout) {
    char **l = NULL;
    int n = 0;
    if (cJSON_IsString(v)) {
        if (!v->valuestring[0]) return err_type(c, path, "a non-empty string or a list of strings", v);
        l = xmalloc(sizeof *l);
        l[n++] = xstrdup(v->valuestring);
    } else if (cJSON_IsArray(v)) {
        int cnt = cJSON_GetArraySize(v);
        if (cnt == 0) return err_type(c, path, "a non-empty list of strings", v);
        l = xcalloc((size_t)DS_MAX(cnt, 1), sizeof *l);
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
            if (!cJSON_IsString(e) || !e->valuestring[0]) {
                char p[512];
                pathf(p, sizeof p, "%s[%d]", path, n);
                free_list(l, n);
                return err_type(c, p, "a non-empty string", e);
            }
            l[n++] = xstrdup(e->valuestring);
        }
    } else {
        return err_type(c, path, "a string or a list of strings", v);
    }
    *out = l;
    *nout = n;
    return DS_OK;
}

static int lists_equal(char **a, int na, char **b, int nb) {
    if (na != nb) return 0;
    for (int i = 0; i < na; i++)
        if (strcmp(a[i], b[i]) != 0) return 0;
    return 1;
}

/* ---- sizes ---- */

int recipe_parse_size(const char *s, int64_t *out) {
    if (!s) return -1;
    while (isspace((unsigned char)*s)) s++;
    if (!isdigit((unsigned char)*s) && *s != '.') return -1;
    char *end;
    double v = strtod(s, &end);
    if (end == s || !isfinite(v) || v < 0) return -1;
    while (isspace((unsigned char)*end)) end++;
    static const struct { const char *suf; double mul; } units[] = {
        {"", 1}, {"b", 1}, {"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
        {"kib", 1024.0}, {"mib", 1048576.0}, {"gib", 1073741824.0}, {"tib", 1099511627776.0},
    };
    for (size_t i = 0; i < DS_ARRAY_LEN(units); i++) {
        if (strcasecmp(end, units[i].suf) == 0) {
            double b = v * units[i].mul;
            if (b >= 9.2e18) return -1;
            if (units[i].mul == 1 && v != floor(v)) return -1; /* fractional bytes */
            *out = (int64_t)b;
            return 0;
        }
    }
    return -1;
}

/* ---- quantization args (config_groups.*.weights, §3.7) ---- */

typedef struct wparse {
    quant_args a;
    int actorder_set; /* scheme-level actorder given and not null */
    int group_size_m1; /* "group_size": -1 given */
    char observer[32];
} wparse;

static const char *strategy_name(quant_strategy s) { return scheme_strategy_name(s); }

static const char *actorder_name(quant_actorder a) {
    switch (a) {
    case QA_STATIC: return "static";
    case QA_GROUP: return "group";
    default: return NULL;
    }
}

/* actorder value: "static"|"weight"|"group"|"dynamic" (any case), true
 * (group), false/null (none). *set = 0 for false/null. */
static ds_status parse_actorder(const pctx *c, const char *path, const cJSON *v, quant_actorder *out,
                                int *set) {
    *set = 1;
    if (cJSON_IsNull(v) || cJSON_IsFalse(v)) { *out = QA_NONE; *set = 0; return DS_OK; }
    if (cJSON_IsTrue(v)) { *out = QA_GROUP; return DS_OK; }
    if (cJSON_IsString(v)) {
        const char *s = v->valuestring;
        if (!strcasecmp(s, "static") || !strcasecmp(s, "weight")) { *out = QA_STATIC; return DS_OK; }
        if (!strcasecmp(s, "group") || !strcasecmp(s, "dynamic")) { *out = QA_GROUP; return DS_OK; }
    }
    return err_value(c, path, v, "static, weight, group, dynamic, null");
}

/* QuantizationArgs (config_groups.<g>.weights, or .input_activations when act). */
static ds_status parse_args(const pctx *c, const char *path, const cJSON *w, wparse *out, int act) {
    char p[512];
    ds_status st;
    if (!cJSON_IsObject(w)) return err_type(c, path, "an object (quantization args)", w);
    if ((st = check_dups(c, path, w))) return st;
    long bits = 8; /* QuantizationArgs defaults */
    int sym = 1, has_strategy = 0, has_gs = 0, has_block = 0;
    quant_dynamic dynamic = QD_STATIC;
    quant_type type = QT_INT;
    long gs = -1;
    int block[2] = {0, 0}, sd_set = 0;
    quant_strategy strat = QS_TENSOR;
    quant_actorder ao = QA_NONE;
    int ao_set = 0;
    snprintf(out->observer, sizeof out->observer, "%s", act ? "" : "memoryless_minmax");
    for (const cJSON *it = w->child; it; it = it->next) {
        const char *k = it->string;
        join_path(p, sizeof p, path, k);
        if (!strcmp(k, "num_bits")) {
            if ((st = get_int(c, p, it, 2, 8, "an integer in 2..8", &bits))) return st;
        } else if (!strcmp(k, "type")) {
            if (!cJSON_IsString(it)) return err_type(c, p, "a string", it);
            if (!strcasecmp(it->valuestring, "float")) type = QT_FLOAT;
            else if (!strcasecmp(it->valuestring, "int")) type = QT_INT;
            else return err_value(c, p, it, "int, float");
        } else if (!strcmp(k, "symmetric")) {
            if ((st = get_bool(c, p, it, &sym))) return st;
        } else if (!strcmp(k, "strategy")) {
            if (cJSON_IsNull(it)) continue;
            if (!cJSON_IsString(it)) return err_type(c, p, "a string", it);
            const char *s = it->valuestring;
            if (!strcasecmp(s, "group")) strat = QS_GROUP;
            else if (!strcasecmp(s, "channel")) strat = QS_CHANNEL;
            else if (!strcasecmp(s, "tensor")) strat = QS_TENSOR;
            else if (!strcasecmp(s, "block")) strat = QS_BLOCK;
            else if (!strcasecmp(s, "tensor_group")) strat = QS_TENSOR_GROUP;
            else if (!strcasecmp(s, "token") && act) strat = QS_TOKEN;
            else if (!strcasecmp(s, "token") || !strcasecmp(s, "attn_head"))
                return err_at(c, p, "strategy \"%s\" is not supported by doneshot v1 (supported: group, channel, "
                              "tensor, block, tensor_group%s)", s, act ? ", token" : "");
            else return err_value(c, p, it, act ? "group, channel, tensor, block, tensor_group, token"
                                                : "group, channel, tensor, block, tensor_group");
            has_strategy = 1;
        } else if (!strcmp(k, "group_size")) {
            if (cJSON_IsNull(it)) continue;
            if ((st = get_int(c, p, it, -1, 1L << 30, "a positive integer (or -1 or null)", &gs))) return st;
            if (gs == 0) return err_at(c, p, "expected a positive integer (or -1 or null), got 0");
            has_gs = 1;
        } else if (!strcmp(k, "actorder")) {
            if ((st = parse_actorder(c, p, it, &ao, &ao_set))) return st;
        } else if (!strcmp(k, "observer")) {
            if (cJSON_IsNull(it)) continue;
            if (!cJSON_IsString(it)) return err_type(c, p, "a string", it);
            const char *s = it->valuestring;
            if (!strcmp(s, "mse") || !strcmp(s, "memoryless_mse") || !strcmp(s, "imatrix_mse"))
                return err_at(c, p, "observer \"%s\" is not supported by doneshot v1 (supported: %s)", s,
                              act ? "static_minmax" : "minmax, memoryless_minmax");
            if (act ? strcmp(s, "static_minmax") != 0 : (strcmp(s, "minmax") && strcmp(s, "memoryless_minmax")))
                return err_value(c, p, it, act ? "static_minmax" : "minmax, memoryless_minmax");
            snprintf(out->observer, sizeof out->observer, "%s", s);
        } else if (!strcmp(k, "observer_kwargs")) {
            if (cJSON_IsNull(it)) continue;
            if (!cJSON_IsObject(it)) return err_type(c, p, "an object", it);
            if (it->child) return err_at(c, p, "observer_kwargs are not supported by doneshot v1 (expected {})");
        } else if (!strcmp(k, "dynamic")) {
            int dyn = 0;
            if (cJSON_IsString(it) && !strcmp(it->valuestring, "local")) dynamic = QD_LOCAL;
            else if ((st = get_bool(c, p, it, &dyn))) return st;
            else dynamic = dyn ? QD_DYNAMIC : QD_STATIC;
            if (!act && dynamic != QD_STATIC)
                return err_at(c, p, "dynamic weights are not supported by doneshot v1 (expected false)");
        } else if (!strcmp(k, "block_structure")) {
            if (cJSON_IsNull(it)) continue;
            if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 2 || !cJSON_IsNumber(it->child) ||
                !cJSON_IsNumber(it->child->next) || it->child->valuedouble < 1 || it->child->next->valuedouble < 1 ||
                it->child->valuedouble > (1 << 20) || it->child->next->valuedouble > (1 << 20) ||
                it->child->valuedouble != (int)it->child->valuedouble ||
                it->child->next->valuedouble != (int)it->child->next->valuedouble)
                return err_type(c, p, "null or [rows, cols] (two positive integers)", it);
            block[0] = (int)it->child->valuedouble;
            block[1] = (int)it->child->next->valuedouble;
            has_block = 1;
        } else if (!strcmp(k, "scale_dtype")) {
            if (cJSON_IsNull(it)) continue;
            if (!(cJSON_IsString(it) && !strcmp(it->valuestring, "torch.float8_e4m3fn")))
                return err_value(c, p, it, "null, \"torch.float8_e4m3fn\"");
            sd_set = 1;
        } else if (!strcmp(k, "zp_dtype")) {
            if (!cJSON_IsNull(it) && !(cJSON_IsString(it) && (!strcmp(it->valuestring, "torch.int8") ||
                                                              !strcmp(it->valuestring, "torch.float8_e4m3fn"))))
                return err_value(c, p, it, "null, \"torch.int8\", \"torch.float8_e4m3fn\"");
        } else {
            return err_at(c, path, "unknown key \"%s\" (allowed: " WEIGHT_KEYS ")", k);
        }
    }
    /* strategy / group_size consistency, as compressed-tensors validates */
    if (!has_strategy) {
        if (has_gs && gs > 0) strat = QS_GROUP;
        else if (has_gs && gs == -1) strat = QS_CHANNEL;
        else strat = QS_TENSOR;
    }
    join_path(p, sizeof p, path, "block_structure");
    if (strat == QS_BLOCK && !has_block) return err_at(c, p, "strategy \"block\" needs a block_structure [rows, cols]");
    if (strat != QS_BLOCK && has_block)
        return err_at(c, p, "block_structure needs strategy \"block\" (got \"%s\")", strategy_name(strat));
    join_path(p, sizeof p, path, "group_size");
    if (strat == QS_GROUP || strat == QS_TENSOR_GROUP) {
        if (!has_gs || gs <= 0)
            return err_at(c, p, "strategy \"%s\" needs a positive group_size, got %s", strategy_name(strat),
                          has_gs ? "-1" : "none");
    } else {
        if (has_gs && gs > 0)
            return err_at(c, p, "group_size %ld needs strategy \"group\" (got strategy \"%s\")", gs,
                          strategy_name(strat));
        gs = -1;
    }
    if (ao_set && ao == QA_GROUP && strat != QS_GROUP) {
        join_path(p, sizeof p, path, "actorder");
        return err_at(c, p, "actorder \"group\" needs strategy \"group\" (got \"%s\")", strategy_name(strat));
    }
    if (type == QT_FLOAT && bits != 8 && bits != 4) {
        join_path(p, sizeof p, path, "num_bits");
        return err_at(c, p, "type \"float\" needs num_bits 8 (fp8 e4m3) or 4 (fp4 e2m1), got %ld", bits);
    }
    out->a.type = type;
    out->a.block[0] = block[0];
    out->a.block[1] = block[1];
    out->a.dynamic = dynamic;
    out->a.scale_dtype_set = sd_set;
    out->a.scale_dtype = sd_set ? DS_DTYPE_F8_E4M3 : DS_DTYPE_F32;
    out->a.num_bits = (int)bits;
    out->a.symmetric = sym;
    out->a.strategy = strat;
    out->a.group_size = (int)gs;
    out->a.actorder = ao;
    out->actorder_set = ao_set;
    out->group_size_m1 = has_gs && gs == -1;
    return DS_OK;
}

static ds_status parse_weights(const pctx *c, const char *path, const cJSON *w, wparse *out) {
    return parse_args(c, path, w, out, 0);
}

static const preset *find_preset(const char *name) {
    for (size_t i = 0; i < DS_ARRAY_LEN(PRESETS); i++)
        if (!strcasecmp(PRESETS[i].name, name)) return &PRESETS[i];
    return NULL;
}

/* Preset `name` -> weight args *out and input activation args *in
 * (in->a.num_bits == 0: none). */
static ds_status preset_args(const pctx *c, const char *path, const char *name, wparse *out, wparse *in,
                             const char **canon) {
    const preset *ps = find_preset(name);
    if (!ps || !preset_runs(ps)) {
        for (size_t i = 0; !ps && i < DS_ARRAY_LEN(UNSUPPORTED_PRESETS); i++)
            if (!strcasecmp(UNSUPPORTED_PRESETS[i], name))
                return err_at(c, path, "scheme %s is not supported by doneshot v1 (supported: %s)",
                              UNSUPPORTED_PRESETS[i], supported_presets());
        if (ps)
            return err_at(c, path, "scheme %s is not supported by doneshot v1 (supported: %s)", ps->name,
                          supported_presets());
        return err_at(c, path, "unknown scheme \"%s\" (supported: %s)", name, supported_presets());
    }
    memset(out, 0, sizeof *out);
    memset(in, 0, sizeof *in);
    out->a = ps->w;
    out->a.actorder = QA_NONE;
    out->actorder_set = 0;
    snprintf(out->observer, sizeof out->observer, "memoryless_minmax");
    in->a = ps->in;
    snprintf(in->observer, sizeof in->observer, "%s", ps->in_observer ? ps->in_observer : "");
    *canon = ps->name;
    return DS_OK;
}

/* ---- regex ---- */

static ds_status compile_entries(const pctx *c, const char *path, char **l, int n, pcre2_code ***out) {
    pcre2_code **re = xcalloc((size_t)DS_MAX(n, 1), sizeof *re);
    for (int i = 0; i < n; i++) {
        if (strncmp(l[i], "re:", 3) != 0) continue;
        int ec;
        PCRE2_SIZE off;
        re[i] = pcre2_compile((PCRE2_SPTR)(l[i] + 3), PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED, &ec, &off, NULL);
        if (!re[i]) {
            PCRE2_UCHAR emsg[256];
            pcre2_get_error_message(ec, emsg, sizeof emsg);
            for (int j = 0; j < i; j++) pcre2_code_free(re[j]);
            free(re);
            char p[512];
            pathf(p, sizeof p, "%s[%d]", path, i);
            return err_at(c, p, "invalid regex \"%s\": %s at offset %zu", l[i] + 3, (const char *)emsg, (size_t)off);
        }
    }
    *out = re;
    return DS_OK;
}

static void free_re(pcre2_code **re, int n) {
    if (!re) return;
    for (int i = 0; i < n; i++) pcre2_code_free(re[i]);
    free(re);
}

/* ---- GPTQModifier ---- */

/* The quantizing modifier m (GPTQModifier; QuantizationModifier when r->quantizer is RQ_QUANTIZATION). */
static ds_status parse_gptq(const pctx *c, const char *path, const cJSON *m, recipe *r) {
    char p[512];
    ds_status st = DS_OK;
    const int qm = r->quantizer == RQ_QUANTIZATION;
    if (!cJSON_IsObject(m))
        return err_type(c, path, qm ? "an object (QuantizationModifier arguments)" : "an object (GPTQModifier arguments)", m);
    if ((st = check_dups(c, path, m))) return st;
    char **mtargets = NULL; int nmt = 0, has_mt = 0;
    const cJSON *scheme = NULL, *groups = NULL;
    quant_actorder mao = QA_STATIC;
    int mao_explicit = 0, mao_set = 0;
    long bs = 128;
    double damp = 0.01;
    int offload = 0, bypass = 0;
    wparse w, wi;
    memset(&w, 0, sizeof w);
    memset(&wi, 0, sizeof wi);
    char **gtargets = NULL; int ngt = 0;
    const char *canon = NULL;

    for (const cJSON *it = m->child; it; it = it->next) {
        const char *k = it->string;
        join_path(p, sizeof p, path, k);
        if (!strcmp(k, "targets")) {
            if (has_mt) free_list(mtargets, nmt);
            if ((st = get_str_list(c, p, it, &mtargets, &nmt))) goto fail;
            has_mt = 1;
        } else if (!strcmp(k, "ignore")) {
            if (cJSON_IsNull(it)) continue;
            free_list(r->ignore, r->nignore); r->ignore = NULL; r->nignore = 0;
            if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 0) continue;
            if ((st = get_str_list(c, p, it, &r->ignore, &r->nignore))) goto fail;
        } else if (!strcmp(k, "scheme")) {
            if (!cJSON_IsNull(it)) scheme = it;
        } else if (!strcmp(k, "config_groups")) {
            if (!cJSON_IsNull(it)) groups = it;
        } else if (qm && (!strcmp(k, "block_size") || !strcmp(k, "dampening_frac") || !strcmp(k, "actorder") ||
                          !strcmp(k, "offload_hessians") || !strcmp(k, "batched_quantization"))) {
            st = err_at(c, path, "unknown key \"%s\" (allowed: " QM_KEYS ")\nhint: %s is a GPTQModifier key", k, k);
            goto fail;
        } else if (!strcmp(k, "block_size")) {
            /* llm-compressor takes any size (a block wider than the weight is
             * one block; gptq_quantize clamps likewise); 2^20 bounds typos */
            if ((st = get_int(c, p, it, 1, 1L << 53, "a positive integer", &bs))) goto fail;
            if (bs > RECIPE_MAX_BLOCK_SIZE) {
                st = err_at(c, p, "%ld is too large (allowed: 1..%d)\n"
                            "hint: a block wider than a layer is the whole layer; the default is 128",
                            bs, RECIPE_MAX_BLOCK_SIZE);
                goto fail;
            }
        } else if (!strcmp(k, "dampening_frac")) {
            if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble < 0) {
                st = err_type(c, p, "a non-negative number", it);
                goto fail;
            }
            damp = it->valuedouble;
        } else if (!strcmp(k, "actorder")) {
            if ((st = parse_actorder(c, p, it, &mao, &mao_set))) goto fail;
            mao_explicit = 1;
        } else if (!strcmp(k, "offload_hessians")) {
            if ((st = get_bool(c, p, it, &offload))) goto fail;
        } else if (!strcmp(k, "bypass_divisibility_checks")) {
            if ((st = get_bool(c, p, it, &bypass))) goto fail;
            if (bypass) {
                /* compressed-tensors would then quantize a shorter last group
                 * (scales [out, ceil(in/group_size)]); doneshot's solver,
                 * packing and checkpoint need whole groups */
                st = err_at(c, p, "true is not supported by doneshot v1 (group_size must divide every "
                            "in_features)\nhint: remove the key or set it to false; use a group_size that "
                            "divides the layers' input widths, or strategy \"channel\"");
                goto fail;
            }
        } else if (!strcmp(k, "batched_quantization")) {
            /* llm-compressor >= 0.14 GPU batching knob: accepted, no effect */
            long b;
            if (cJSON_IsNull(it) || (cJSON_IsString(it) && !strcmp(it->valuestring, "auto"))) continue;
            if ((st = get_int(c, p, it, 1, 1L << 30, "\"auto\", null or a positive integer", &b))) goto fail;
        } else {
            st = err_at(c, path, "unknown key \"%s\" (allowed: %s)", k, qm ? QM_KEYS : GPTQ_KEYS);
            goto fail;
        }
    }
    (void)mao_set;

    if (scheme && groups) {
        st = err_at(c, path, "give either \"scheme\" or \"config_groups\", not both");
        goto fail;
    }
    if (!scheme && !groups) {
        st = err_at(c, path, "missing \"scheme\" or \"config_groups\"\nhint: add \"scheme\": \"W4A16\"");
        goto fail;
    }
    if (scheme) {
        join_path(p, sizeof p, path, "scheme");
        if (cJSON_IsString(scheme)) {
            if ((st = preset_args(c, p, scheme->valuestring, &w, &wi, &canon))) goto fail;
        } else if (cJSON_IsObject(scheme)) {
            if (cJSON_GetArraySize(scheme) != 1) {
                st = err_at(c, p, "expected exactly one {PRESET: [targets]} entry (doneshot v1 supports one scheme), got %d",
                            cJSON_GetArraySize(scheme));
                goto fail;
            }
            const cJSON *e = scheme->child;
            if (!strcmp(e->string, "weights") || !strcmp(e->string, "input_activations")) {
                st = err_at(c, p, "inline scheme objects are not supported by doneshot v1\nhint: use a preset name, {PRESET: [targets]} or config_groups");
                goto fail;
            }
            if ((st = preset_args(c, p, e->string, &w, &wi, &canon))) goto fail;
            char pp[512];
            pathf(pp, sizeof pp, "%s.%s", p, e->string);
            if ((st = get_str_list(c, pp, e, &gtargets, &ngt))) goto fail;
        } else {
            st = err_type(c, p, "a preset name or {PRESET: [targets]}", scheme);
            goto fail;
        }
    } else {
        join_path(p, sizeof p, path, "config_groups");
        if (!cJSON_IsObject(groups)) { st = err_type(c, p, "an object", groups); goto fail; }
        if (cJSON_GetArraySize(groups) != 1) {
            st = err_at(c, p, "expected exactly one config group (doneshot v1 supports one), got %d",
                        cJSON_GetArraySize(groups));
            goto fail;
        }
        const cJSON *g = groups->child, *fmt = NULL;
        char gp[512];
        pathf(gp, sizeof gp, "%s.%s", p, g->string);
        if (!cJSON_IsObject(g)) { st = err_type(c, gp, "an object (quantization scheme)", g); goto fail; }
        if ((st = check_dups(c, gp, g))) goto fail;
        const cJSON *gw = NULL, *gi = NULL;
        for (const cJSON *it = g->child; it; it = it->next) {
            const char *k = it->string;
            char kp[512];
            pathf(kp, sizeof kp, "%s.%s", gp, k);
            if (!strcmp(k, "targets")) {
                free_list(gtargets, ngt); gtargets = NULL; ngt = 0;
                if ((st = get_str_list(c, kp, it, &gtargets, &ngt))) goto fail;
            } else if (!strcmp(k, "weights")) {
                gw = it;
            } else if (!strcmp(k, "input_activations")) {
                if (!cJSON_IsNull(it)) gi = it;
            } else if (!strcmp(k, "output_activations")) {
                if (!cJSON_IsNull(it)) {
                    st = err_at(c, kp, "output activation quantization is not supported by doneshot v1 (expected null)");
                    goto fail;
                }
            } else if (!strcmp(k, "format")) {
                if (!cJSON_IsNull(it) && !cJSON_IsString(it)) {
                    st = err_type(c, kp, "null or a format name", it);
                    goto fail;
                }
                fmt = it;
            } else {
                st = err_at(c, gp, "unknown key \"%s\" (allowed: " GROUP_KEYS ")", k);
                goto fail;
            }
        }
        if (!gtargets) { st = err_at(c, gp, "missing \"targets\""); goto fail; }
        char wp[512];
        pathf(wp, sizeof wp, "%s.weights", gp);
        if (!gw || cJSON_IsNull(gw)) { st = err_at(c, gp, "missing \"weights\""); goto fail; }
        if ((st = parse_weights(c, wp, gw, &w))) goto fail;
        if (gi) {
            pathf(wp, sizeof wp, "%s.input_activations", gp);
            if ((st = parse_args(c, wp, gi, &wi, 1))) goto fail;
            if (!scheme_act_supported(&wi.a)) {
                st = err_at(c, wp, "this input activation scheme (type %s, num_bits %d, strategy %s, dynamic %s, "
                            "symmetric %s) is not supported by doneshot v1 (supported: %s)",
                            scheme_type_name(wi.a.type), wi.a.num_bits, strategy_name(wi.a.strategy),
                            wi.a.dynamic == QD_LOCAL ? "local" : wi.a.dynamic ? "true" : "false",
                            wi.a.symmetric ? "true" : "false", scheme_act_supported_list());
                goto fail;
            }
            if (wi.a.dynamic == QD_STATIC && !wi.observer[0]) /* llm-compressor's default for static activations */
                snprintf(wi.observer, sizeof wi.observer, "static_minmax");
        }
        w.a.act = act_store(&wi.a);
        const char *fname = scheme_format_name(&w.a);
        if (!fname) {
            st = err_at(c, wp, "this weight scheme (type %s, num_bits %d, strategy %s%s) has no checkpoint format in "
                        "doneshot v1 (supported: %s)", scheme_type_name(w.a.type), w.a.num_bits,
                        strategy_name(w.a.strategy), gi ? ", with these input_activations" : "",
                        scheme_format_list());
            goto fail;
        }
        if (fmt && cJSON_IsString(fmt) && strcmp(fmt->valuestring, fname) != 0) {
            pathf(wp, sizeof wp, "%s.format", gp);
            st = err_value(c, wp, fmt, fname);
            goto fail;
        }
    }
    w.a.act = act_store(&wi.a);

    /* effective targets: the scheme's own targets win; the modifier's must agree */
    if (gtargets) {
        if (has_mt && !lists_equal(mtargets, nmt, gtargets, ngt)) {
            join_path(p, sizeof p, path, "targets");
            st = err_at(c, p, "conflicts with the targets of the %s", scheme ? "scheme" : "config group");
            goto fail;
        }
        free_list(mtargets, nmt);
        r->targets = gtargets; r->ntargets = ngt;
        gtargets = NULL; ngt = 0;
    } else if (has_mt) {
        r->targets = mtargets; r->ntargets = nmt;
    } else {
        r->targets = xmalloc(sizeof *r->targets);
        r->targets[0] = xstrdup("Linear");
        r->ntargets = 1;
    }
    mtargets = NULL; nmt = 0;

    /* actorder (§1.5): the modifier's default "static" fills an unset scheme
     * value; explicit modifier and scheme values must agree. */
    quant_actorder res;
    if (!mao_explicit) res = w.actorder_set ? w.a.actorder : QA_STATIC;
    else if (!w.actorder_set || w.a.actorder == mao) res = mao;
    else {
        join_path(p, sizeof p, path, "actorder");
        st = err_at(c, p, "\"%s\" conflicts with the scheme's actorder \"%s\"",
                    actorder_name(mao) ? actorder_name(mao) : "null", actorder_name(w.a.actorder));
        goto fail;
    }
    if (res == QA_GROUP && w.a.strategy != QS_GROUP) res = QA_NONE; /* falls back to None */
    if (qm) res = w.actorder_set ? w.a.actorder : QA_NONE; /* no GPTQ: the scheme's value, stored as is */
    w.a.actorder = res;

    r->w = w.a;
    r->in = wi.a;
    snprintf(r->priv->in_observer, sizeof r->priv->in_observer, "%s", wi.observer);
    r->in_observer = wi.a.num_bits && wi.observer[0] ? r->priv->in_observer : NULL;
    r->scheme_name = canon ? xstrdup(canon) : NULL;
    r->block_size = (int)bs;
    r->dampening_frac = damp;
    r->offload_hessians = offload;
    r->bypass_divisibility = bypass;
    snprintf(r->priv->observer, sizeof r->priv->observer, "%s", w.observer);
    r->priv->group_size_m1 = w.group_size_m1;
    r->observer = r->priv->observer;

    join_path(p, sizeof p, path, "targets");
    if ((st = compile_entries(c, p, r->targets, r->ntargets, &r->priv->target_re))) return st;
    join_path(p, sizeof p, path, "ignore");
    if ((st = compile_entries(c, p, r->ignore, r->nignore, &r->priv->ignore_re))) return st;
    pathf(r->priv->origin, sizeof r->priv->origin, "%s", c->origin);
    pathf(r->priv->gptq_path, sizeof r->priv->gptq_path, "%s", path);
    r->priv->mctx = pcre2_match_context_create(NULL);
    DS_ASSERT(r->priv->mctx);
    pcre2_set_match_limit(r->priv->mctx, RECIPE_RE_MATCH_LIMIT);
    pcre2_set_depth_limit(r->priv->mctx, RECIPE_RE_DEPTH_LIMIT);
    pcre2_set_heap_limit(r->priv->mctx, RECIPE_RE_HEAP_LIMIT_KIB);
    return DS_OK;
fail:
    free_list(mtargets, nmt);
    free_list(gtargets, ngt);
    return st;
}

/* ---- top level ---- */

/* The recipe's modifiers: the quantizing one (args, its name) and an optional SmoothQuantModifier. */
typedef struct modref {
    const cJSON *args; char path[512]; const char *name;
    const cJSON *sq; char sq_path[512];
} modref;

#define MODIFIERS "GPTQModifier, QuantizationModifier, SmoothQuantModifier (before the quantizing one)"

static ds_status add_modifier(const pctx *c, const char *path, const cJSON *m, modref *gptq) {
    const int is_q = !strcmp(m->string, "GPTQModifier") || !strcmp(m->string, "QuantizationModifier");
    if (!strcmp(m->string, "SmoothQuantModifier")) {
        if (gptq->sq) return err_at(c, path, "a second SmoothQuantModifier (first at %s)", gptq->sq_path);
        if (gptq->args)
            return err_at(c, path, "SmoothQuantModifier must come before the quantizing modifier (%s at %s)",
                          gptq->name, gptq->path);
        gptq->sq = m;
        pathf(gptq->sq_path, sizeof gptq->sq_path, "%s", path);
        return DS_OK;
    }
    if (!is_q) {
        if (ends_with(m->string, "Modifier"))
            return err_at(c, path, "modifier %s is not supported: doneshot v1 runs " MODIFIERS, m->string);
        return err_at(c, path, "unknown modifier \"%s\" (allowed: " MODIFIERS ")", m->string);
    }
    if (gptq->args) {
        if (!strcmp(gptq->name, m->string))
            return err_at(c, path, "a second %s (doneshot v1 runs exactly one; first at %s)", m->string, gptq->path);
        return err_at(c, path, "a %s besides the %s at %s (doneshot v1 runs exactly one quantizing modifier)",
                      m->string, gptq->name, gptq->path);
    }
    gptq->args = m;
    gptq->name = m->string;
    pathf(gptq->path, sizeof gptq->path, "%s", path);
    return DS_OK;
}

/* SmoothQuantModifier -> r->smoothquant (llm-compressor modifiers/transform/smoothquant/base.py). */
static ds_status parse_sq(const pctx *c, const char *path, const cJSON *m, recipe *r) {
    char p[512];
    ds_status st;
    recipe_smoothquant *q = &r->smoothquant;
    if (!cJSON_IsObject(m)) return err_type(c, path, "an object (SmoothQuantModifier arguments)", m);
    if ((st = check_dups(c, path, m))) return st;
    q->present = 1;
    q->smoothing_strength = 0.5;
    q->num_calibration_steps = -1;
    for (const cJSON *it = m->child; it; it = it->next) {
        const char *k = it->string;
        join_path(p, sizeof p, path, k);
        if (!strcmp(k, "smoothing_strength")) {
            if (!cJSON_IsNumber(it) || !(it->valuedouble >= 0 && it->valuedouble <= 1))
                return err_type(c, p, "a number in [0, 1]", it);
            q->smoothing_strength = it->valuedouble;
        } else if (!strcmp(k, "algorithm")) {
            if (!cJSON_IsString(it) || (strcmp(it->valuestring, "smoothquant") && strcmp(it->valuestring, "log_equalization")))
                return err_value(c, p, it, "smoothquant, log_equalization");
            q->log_equalization = !strcmp(it->valuestring, "log_equalization");
        } else if (!strcmp(k, "num_calibration_steps")) {
            if (cJSON_IsNull(it)) continue;
            if ((st = get_int(c, p, it, 1, 1L << 40, "a positive integer or null", &q->num_calibration_steps))) return st;
        } else if (!strcmp(k, "ignore")) {
            if (cJSON_IsNull(it)) continue;
            free_list(q->ignore, q->nignore); q->ignore = NULL; q->nignore = 0;
            if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 0) continue;
            if ((st = get_str_list(c, p, it, &q->ignore, &q->nignore))) return st;
        } else if (!strcmp(k, "calibration_function")) {
            if (!cJSON_IsNull(it)) return err_at(c, p, "only null is supported by doneshot v1");
        } else if (!strcmp(k, "mappings")) {
            if (cJSON_IsNull(it)) continue;
            if (!cJSON_IsArray(it)) return err_type(c, p, "a list of [[balance layers], smooth layer]", it);
            const int n = cJSON_GetArraySize(it);
            q->mappings = xcalloc((size_t)DS_MAX(n, 1), sizeof *q->mappings);
            int i = 0;
            for (const cJSON *e = it->child; e; e = e->next, i++) {
                char ep[600];
                pathf(ep, sizeof ep, "%s[%d]", p, i);
                if (!cJSON_IsArray(e) || cJSON_GetArraySize(e) != 2 || !cJSON_IsString(e->child->next))
                    return err_type(c, ep, "[[balance layers], smooth layer]", e);
                recipe_sq_mapping *mp = &q->mappings[q->nmappings++];
                char bp[640];
                pathf(bp, sizeof bp, "%s[0]", ep);
                if ((st = get_str_list(c, bp, e->child, &mp->balance, &mp->nbalance))) return st;
                mp->smooth = xstrdup(e->child->next->valuestring);
            }
        } else {
            return err_at(c, path, "unknown key \"%s\" (allowed: " SQ_KEYS ", calibration_function)", k);
        }
    }
    /* the patterns, compiled once (matched by recipe_sq_match) */
    struct recipe_priv *pv = r->priv;
    pathf(pv->sq_path, sizeof pv->sq_path, "%s", path);
    pv->sq_smooth_re = xcalloc((size_t)DS_MAX(q->nmappings, 1), sizeof *pv->sq_smooth_re);
    pv->sq_balance_re = xcalloc((size_t)DS_MAX(q->nmappings, 1), sizeof *pv->sq_balance_re);
    for (int i = 0; i < q->nmappings; i++) {
        recipe_sq_mapping *mp = &q->mappings[i];
        pathf(p, sizeof p, "%s.mappings[%d][0]", path, i);
        if ((st = compile_entries(c, p, mp->balance, mp->nbalance, &pv->sq_balance_re[i]))) return st;
        pathf(p, sizeof p, "%s.mappings[%d]", path, i);
        pcre2_code **one = NULL;
        if ((st = compile_entries(c, p, &mp->smooth, 1, &one))) return st;
        pv->sq_smooth_re[i] = one[0];
        free(one);
    }
    join_path(p, sizeof p, path, "ignore");
    return compile_entries(c, p, q->ignore, q->nignore, &pv->sq_ignore_re);
}

static ds_status parse_run_key(const pctx *c, const cJSON *it, recipe *r, int *handled) {
    const char *k = it->string;
    *handled = 1;
    if (!strcmp(k, "model")) return get_str(c, k, it, &r->model);
    if (!strcmp(k, "dataset")) return get_str(c, k, it, &r->dataset);
    if (!strcmp(k, "output")) return get_str(c, k, it, &r->output);
    if (!strcmp(k, "text_field")) return get_str(c, k, it, &r->text_field);
    if (!strcmp(k, "num_calibration_samples"))
        return get_int(c, k, it, 1, 1L << 40, "a positive integer", &r->num_samples);
    if (!strcmp(k, "max_seq_length"))
        return get_int(c, k, it, 1, 1L << 40, "a positive integer", &r->max_seq_len);
    if (!strcmp(k, "seed")) return get_int(c, k, it, 0, 1L << 53, "a non-negative integer", &r->seed);
    if (!strcmp(k, "moe_calibrate_all_experts")) return get_bool(c, k, it, &r->moe_calibrate_all_experts);
    if (!strcmp(k, "max_shard_size")) {
        if (cJSON_IsNumber(it)) {
            long v;
            ds_status st = get_int(c, k, it, 1, 1L << 53, "a positive number of bytes or a size like \"5GB\"", &v);
            if (st) return st;
            r->max_shard_size = v;
            return DS_OK;
        }
        int64_t v;
        if (!cJSON_IsString(it) || recipe_parse_size(it->valuestring, &v) != 0 || v <= 0)
            return err_type(c, k, "a positive number of bytes or a size like \"5GB\", \"500MB\", \"2GiB\"", it);
        r->max_shard_size = v;
        return DS_OK;
    }
    *handled = 0;
    return DS_OK;
}

static ds_status walk_top(const pctx *c, const cJSON *root, recipe *r, modref *gptq) {
    ds_status st;
    if (!cJSON_IsObject(root)) return err_type(c, "", "a JSON object at the top level", root);
    if ((st = check_dups(c, "", root))) return st;
    for (const cJSON *it = root->child; it; it = it->next) {
        const char *k = it->string;
        int handled;
        if ((st = parse_run_key(c, it, r, &handled))) return st;
        if (handled) continue;
        if (!strcmp(k, "modifiers")) {
            if (!cJSON_IsArray(it)) return err_type(c, k, "a list of {ModifierName: {...}}", it);
            int i = 0;
            for (const cJSON *e = it->child; e; e = e->next, i++) {
                char p[512];
                pathf(p, sizeof p, "modifiers[%d]", i);
                if (!cJSON_IsObject(e) || cJSON_GetArraySize(e) != 1)
                    return err_type(c, p, "an object with one key, like {\"GPTQModifier\": {...}}", e);
                char mp[512];
                pathf(mp, sizeof mp, "%s.%s", p, e->child->string);
                if ((st = add_modifier(c, mp, e->child, gptq))) return st;
            }
        } else if (ends_with(k, "_stage")) {
            if (!cJSON_IsObject(it)) return err_type(c, k, "an object of <name>_modifiers groups", it);
            if ((st = check_dups(c, k, it))) return st;
            for (const cJSON *g = it->child; g; g = g->next) {
                char gp[512];
                pathf(gp, sizeof gp, "%s.%s", k, g->string);
                if (!ends_with(g->string, "_modifiers"))
                    return err_at(c, k, "unknown key \"%s\" (allowed: <name>_modifiers)", g->string);
                if (!cJSON_IsObject(g)) return err_type(c, gp, "an object of {ModifierName: {...}}", g);
                if ((st = check_dups(c, gp, g))) return st;
                for (const cJSON *m = g->child; m; m = m->next) {
                    char mp[512];
                    pathf(mp, sizeof mp, "%s.%s", gp, m->string);
                    if ((st = add_modifier(c, mp, m, gptq))) return st;
                }
            }
        } else if (ends_with(k, "Modifier")) {
            if ((st = add_modifier(c, k, it, gptq))) return st;
        } else {
            return err_at(c, "", "unknown key \"%s\" (allowed: " RUN_KEYS ", modifiers, <name>_stage, GPTQModifier)", k);
        }
    }
    if (!gptq->args)
        return err_at(c, "", "no GPTQModifier found (nor a QuantizationModifier)\nhint: {\"modifiers\": [{\"GPTQModifier\": {\"scheme\": \"W4A16\", \"ignore\": [\"lm_head\"]}}]}");
    return DS_OK;
}

static cJSON *str_array(char **l, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(l[i]));
    return a;
}

static void add_actorder(cJSON *o, quant_actorder a) {
    const char *s = actorder_name(a);
    if (s) cJSON_AddStringToObject(o, "actorder", s);
    else cJSON_AddNullToObject(o, "actorder");
}

/* Normalized recipe: what will be applied, defaults resolved, re-parseable. */
static char *build_applied(const recipe *r) {
    cJSON *root = cJSON_CreateObject();
    cJSON *mods = cJSON_AddArrayToObject(root, "modifiers");
    cJSON *wrap = cJSON_CreateObject();
    cJSON_AddItemToArray(mods, wrap);
    if (r->smoothquant.present) { /* before the quantizer, as it runs */
        const recipe_smoothquant *q = &r->smoothquant;
        cJSON *sw = cJSON_CreateObject();
        cJSON_AddItemToArray(mods, sw);
        cJSON *sq = cJSON_AddObjectToObject(sw, "SmoothQuantModifier");
        cJSON_AddNumberToObject(sq, "smoothing_strength", q->smoothing_strength);
        if (q->log_equalization) cJSON_AddStringToObject(sq, "algorithm", "log_equalization");
        if (q->nmappings) {
            cJSON *ma = cJSON_AddArrayToObject(sq, "mappings");
            for (int i = 0; i < q->nmappings; i++) {
                cJSON *pair = cJSON_CreateArray();
                cJSON_AddItemToArray(pair, str_array(q->mappings[i].balance, q->mappings[i].nbalance));
                cJSON_AddItemToArray(pair, cJSON_CreateString(q->mappings[i].smooth));
                cJSON_AddItemToArray(ma, pair);
            }
        }
        if (q->nignore) cJSON_AddItemToObject(sq, "ignore", str_array(q->ignore, q->nignore));
        if (q->num_calibration_steps > 0) cJSON_AddNumberToObject(sq, "num_calibration_steps", (double)q->num_calibration_steps);
        cJSON_DetachItemViaPointer(mods, wrap);
        cJSON_AddItemToArray(mods, wrap);
    }
    const int qm = r->quantizer == RQ_QUANTIZATION;
    cJSON *g = cJSON_AddObjectToObject(wrap, qm ? "QuantizationModifier" : "GPTQModifier");
    cJSON_AddItemToObject(g, "targets", str_array(r->targets, r->ntargets));
    cJSON_AddItemToObject(g, "ignore", str_array(r->ignore, r->nignore));
    cJSON *cg = cJSON_AddObjectToObject(g, "config_groups");
    cJSON *g0 = cJSON_AddObjectToObject(cg, "group_0");
    cJSON_AddItemToObject(g0, "targets", str_array(r->targets, r->ntargets));
    cJSON *w = cJSON_AddObjectToObject(g0, "weights");
    cJSON_AddNumberToObject(w, "num_bits", r->w.num_bits);
    cJSON_AddStringToObject(w, "type", scheme_type_name(r->w.type));
    cJSON_AddBoolToObject(w, "symmetric", r->w.symmetric);
    cJSON_AddStringToObject(w, "strategy", strategy_name(r->w.strategy));
    if (r->w.strategy == QS_GROUP || r->w.strategy == QS_TENSOR_GROUP)
        cJSON_AddNumberToObject(w, "group_size", r->w.group_size);
    else if (r->priv && r->priv->group_size_m1) cJSON_AddNumberToObject(w, "group_size", -1);
    else cJSON_AddNullToObject(w, "group_size");
    add_actorder(w, r->w.actorder);
    cJSON_AddStringToObject(w, "observer", r->observer);
    cJSON_AddBoolToObject(w, "dynamic", 0);
    if (r->w.strategy == QS_BLOCK || r->w.scale_dtype_set) { /* only the new schemes: older texts unchanged */
        cJSON *full = scheme_weights_json(&r->w, r->observer, 0);
        cJSON_AddItemToObject(w, "block_structure", cJSON_DetachItemFromObject(full, "block_structure"));
        cJSON_AddItemToObject(w, "scale_dtype", cJSON_DetachItemFromObject(full, "scale_dtype"));
        cJSON_Delete(full);
    }
    if (r->in.num_bits) {
        cJSON *ia = scheme_weights_json(&r->in, r->in_observer, 0);
        cJSON_DeleteItemFromObject(ia, "zp_dtype");
        cJSON_DeleteItemFromObject(ia, "observer_kwargs");
        if (!r->in_observer) cJSON_DeleteItemFromObject(ia, "observer");
        cJSON_AddItemToObject(g0, "input_activations", ia);
    } else {
        cJSON_AddNullToObject(g0, "input_activations");
    }
    cJSON_AddNullToObject(g0, "output_activations");
    if (!qm) {
        cJSON_AddNumberToObject(g, "block_size", r->block_size);
        cJSON_AddNumberToObject(g, "dampening_frac", r->dampening_frac);
        add_actorder(g, r->w.actorder);
        cJSON_AddBoolToObject(g, "offload_hessians", r->offload_hessians);
    }
    cJSON_AddBoolToObject(g, "bypass_divisibility_checks", r->bypass_divisibility);
    return ds_json_take_compact(root);
}

static void json_error_pos(const char *json, const char *at, int *line, int *col) {
    *line = 1;
    *col = 1;
    if (!at) return;
    for (const char *s = json; s < at && *s; s++) {
        if (*s == '\n') { (*line)++; *col = 1; }
        else (*col)++;
    }
}

ds_status recipe_parse(const char *json, const char *origin, recipe *out) {
    pctx c = {origin ? origin : "recipe"};
    memset(out, 0, sizeof *out);
    out->num_samples = out->max_seq_len = out->seed = -1;
    out->max_shard_size = -1;
    out->moe_calibrate_all_experts = -1;
    out->priv = xcalloc(1, sizeof *out->priv);
    if (!json) json = "";
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json, &end, 1);
    if (!root) {
        int line, col;
        const char *at = end ? end : cJSON_GetErrorPtr();
        /* cJSON often reports the position after the bad token: point at the
         * last non-blank character instead of the end of the input */
        if (at && !*at) {
            while (at > json && isspace((unsigned char)at[-1])) at--;
            if (at > json) at--;
        }
        json_error_pos(json, at, &line, &col);
        char near[24] = "";
        if (at && *at) {
            size_t i = 0;
            for (; i < 16 && at[i] && at[i] != '\n'; i++) near[i] = at[i];
            near[i] = 0;
        }
        recipe_free(out);
        if (near[0])
            return ds_error(DS_ERR_USAGE, "%s:%d:%d: invalid JSON near \"%s\"", c.origin, line, col, near);
        return ds_error(DS_ERR_USAGE, "%s:%d:%d: invalid JSON (unexpected end of input)", c.origin, line, col);
    }
    modref gptq;
    memset(&gptq, 0, sizeof gptq);
    ds_status st = walk_top(&c, root, out, &gptq);
    if (!st) {
        out->quantizer = !strcmp(gptq.name, "QuantizationModifier") ? RQ_QUANTIZATION : RQ_GPTQ;
        st = parse_gptq(&c, gptq.path, gptq.args, out);
    }
    if (!st && gptq.sq) st = parse_sq(&c, gptq.sq_path, gptq.sq, out);
    cJSON_Delete(root);
    if (st) { recipe_free(out); return st; }
    out->applied_json = build_applied(out);
    return DS_OK;
}

ds_status recipe_load(const char *path, recipe *out) {
    memset(out, 0, sizeof *out);
    if (ends_with(path, ".yaml") || ends_with(path, ".yml"))
        return ds_error(DS_ERR_USAGE, "%s: YAML recipes are not supported\nhint: write the same structure as JSON (see recipes/w4a16.json)", path);
    char *txt = NULL;
    ds_status st = ds_read_file(path, &txt, NULL);
    if (st) {
        char *msg = xstrdup(ds_errmsg());
        ds_error(DS_ERR_USAGE, "recipe %s", msg);
        free(msg);
        return DS_ERR_USAGE;
    }
    st = recipe_parse(txt, path, out);
    free(txt);
    return st;
}

void recipe_free(recipe *r) {
    if (!r) return;
    free(r->model); free(r->dataset); free(r->output); free(r->text_field);
    free(r->scheme_name);
    if (r->priv) {
        free_re(r->priv->target_re, r->ntargets);
        free_re(r->priv->ignore_re, r->nignore);
        for (int i = 0; r->priv->sq_balance_re && i < r->smoothquant.nmappings; i++)
            free_re(r->priv->sq_balance_re[i], r->smoothquant.mappings[i].nbalance);
        free(r->priv->sq_balance_re);
        free_re(r->priv->sq_smooth_re, r->smoothquant.nmappings);
        free_re(r->priv->sq_ignore_re, r->smoothquant.nignore);
        pcre2_match_context_free(r->priv->mctx);
        free(r->priv->match_msg);
        free(r->priv);
    }
    free_list(r->targets, r->ntargets);
    free_list(r->ignore, r->nignore);
    for (int i = 0; i < r->smoothquant.nmappings; i++) {
        free_list(r->smoothquant.mappings[i].balance, r->smoothquant.mappings[i].nbalance);
        free(r->smoothquant.mappings[i].smooth);
    }
    free(r->smoothquant.mappings);
    free_list(r->smoothquant.ignore, r->smoothquant.nignore);
    free(r->applied_json);
    memset(r, 0, sizeof *r);
}

/* ---- matching (compressed-tensors is_match: name or class; "re:" on names) ---- */

/* 1 match, 0 no match, -1 PCRE2 error (recorded in priv->match_err/msg;
 * `list`, `i`: the entry's place, for the message). */
static int entry_match(struct recipe_priv *pv, const char *path, const char *list, int i, const char *e,
                       const pcre2_code *re, const char *name, const char *cls) {
    if (re) {
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
        DS_ASSERT(md);
        int rc = pcre2_match(re, (PCRE2_SPTR)name, PCRE2_ZERO_TERMINATED, 0, 0, md, pv->mctx);
        pcre2_match_data_free(md);
        if (rc >= 0) return 1;
        if (rc == PCRE2_ERROR_NOMATCH) return 0;
        if (!pv->match_err) {
            PCRE2_UCHAR emsg[256];
            if (pcre2_get_error_message(rc, emsg, sizeof emsg) < 0) snprintf((char *)emsg, sizeof emsg, "?");
            pv->match_err = rc;
            pv->match_msg = xasprintf(
                     "%s: %s.%s[%d]: regex \"%s\" could not be matched against module \"%s\": %s "
                     "(PCRE2 error %d; limits: %d match steps, %d KiB)\n"
                     "hint: simplify the pattern; nested repeats like (.*)* or (a+)+ backtrack exponentially",
                     pv->origin, path, list, i, e + 3, name, (const char *)emsg, rc,
                     RECIPE_RE_MATCH_LIMIT, RECIPE_RE_HEAP_LIMIT_KIB);
        }
        return -1;
    }
    return !strcmp(e, name) || (cls && !strcmp(e, cls));
}

int recipe_module_targeted(const recipe *r, const char *name, const char *cls) {
    if (!r || !r->priv || !name) return 0;
    struct recipe_priv *pv = r->priv;
    if (pv->match_err) return 0; /* a failed match already; the run stops at recipe_match_status */
    int hit = 0;
    for (int i = 0; i < r->ntargets && !hit; i++)
        hit = entry_match(pv, pv->gptq_path, "targets", i, r->targets[i], pv->target_re ? pv->target_re[i] : NULL, name, cls);
    if (hit != 1) return 0;
    for (int i = 0; i < r->nignore; i++)
        if (entry_match(pv, pv->gptq_path, "ignore", i, r->ignore[i], pv->ignore_re ? pv->ignore_re[i] : NULL, name, cls))
            return 0; /* ignored, or an error: never quantize what an ignore entry could not rule out */
    return 1;
}

int recipe_sq_match(const recipe *r, int k, int entry, const char *name, const char *cls) {
    if (!r || !r->priv || !name || !r->smoothquant.present) return 0;
    struct recipe_priv *pv = r->priv;
    const recipe_sq_mapping *mp = &r->smoothquant.mappings[k];
    DS_ASSERT(k >= 0 && k < r->smoothquant.nmappings && entry >= -1 && entry < mp->nbalance);
    if (pv->match_err) return 0;
    char list[48];
    if (entry < 0) {
        snprintf(list, sizeof list, "mappings[%d]", k);
        return entry_match(pv, pv->sq_path, list, 1, mp->smooth, pv->sq_smooth_re[k], name, cls) == 1;
    }
    snprintf(list, sizeof list, "mappings[%d][0]", k);
    return entry_match(pv, pv->sq_path, list, entry, mp->balance[entry], pv->sq_balance_re[k][entry], name, cls) == 1;
}

int recipe_needs_data(const recipe *r) {
    /* the static activation test is the pipeline's own (what it observes): w.act */
    return r->quantizer != RQ_QUANTIZATION || r->smoothquant.present || r->w.act == QACT_INPUT_SCALE ||
           r->w.act == QACT_INPUT_GLOBAL_SCALE;
}

int recipe_sq_ignored(const recipe *r, const char *name, const char *cls) {
    if (!r || !r->priv || !name || !r->smoothquant.present) return 0;
    struct recipe_priv *pv = r->priv;
    const recipe_smoothquant *q = &r->smoothquant;
    for (int i = 0; i < q->nignore && !pv->match_err; i++)
        if (entry_match(pv, pv->sq_path, "ignore", i, q->ignore[i], pv->sq_ignore_re[i], name, cls) == 1) return 1;
    return 0;
}

ds_status recipe_match_status(const recipe *r) {
    if (!r || !r->priv || !r->priv->match_err) return DS_OK;
    return ds_error(DS_ERR_USAGE, "%s", r->priv->match_msg);
}

/* ---- quantization_config ---- */

char *recipe_quantization_config_json(const recipe *r, const char *const *ignore, int nignore) {
    DS_ASSERT(r);
    cJSON *q = cJSON_CreateObject();
    cJSON *cg = cJSON_AddObjectToObject(q, "config_groups");
    cJSON *g0 = cJSON_AddObjectToObject(cg, "group_0");
    const char *format = scheme_format_name(&r->w);
    DS_ASSERT(format);
    cJSON_AddStringToObject(g0, "format", format);
    if (r->in.num_bits) cJSON_AddItemToObject(g0, "input_activations", scheme_weights_json(&r->in, r->in_observer, 0));
    else cJSON_AddNullToObject(g0, "input_activations");
    cJSON_AddNullToObject(g0, "output_activations");
    cJSON_AddItemToObject(g0, "targets", str_array(r->targets, r->ntargets));
    cJSON_AddItemToObject(g0, "weights", scheme_weights_json(&r->w, r->observer, r->priv && r->priv->group_size_m1));
    cJSON_AddStringToObject(q, "format", format);
    cJSON_AddNullToObject(q, "global_compression_ratio");
    cJSON *ig = cJSON_AddArrayToObject(q, "ignore");
    for (int i = 0; i < nignore; i++) cJSON_AddItemToArray(ig, cJSON_CreateString(ignore[i]));
    cJSON_AddNullToObject(q, "kv_cache_scheme");
    cJSON_AddStringToObject(q, "quant_method", "compressed-tensors");
    cJSON_AddStringToObject(q, "quantization_status", "compressed");
    cJSON_AddItemToObject(q, "sparsity_config", cJSON_CreateObject());
    cJSON_AddItemToObject(q, "transform_config", cJSON_CreateObject());
    cJSON_AddStringToObject(q, "version", RECIPE_CT_VERSION);
    ds_json_sort_keys(q);
    return ds_json_take_compact(q);
}
