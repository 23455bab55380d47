/*
 * scheme.c - the quantization schemes' one home (see scheme.h): the
 * compressed-tensors tensor table per format, its encoders and reader
 * checks, the on-disk codes of a GPTQ result, the dequantizing reader and
 * the quantization_config weights JSON. Scalar math: src/qscalar.h.
 * Source: compressed-tensors 0.19.0 compressors/pack_quantized/base.py
 * (compress_weight: weight_packed, weight_shape, weight_zero_point packed
 * along dim 0) and quantization/quant_args.py (the args' JSON).
 */
#include "scheme.h"
#include "qscalar.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#define DT_MODEL (-1) /* the model dtype (the reader: any of F32/BF16/F16) */

/* One row of a format's table. */
typedef struct ct_tensor {
    const char *suffix;
    int dtype;                                                  /* ds_dtype or DT_MODEL */
    int (*shape)(const quant_args *a, int out, int in, int64_t *shp); /* returns ndim */
    int (*present)(const quant_args *a);                        /* NULL: always */
    const char *absent;      /* the reader's "expected ..." when present() is 0 and it is stored */
    void (*encode)(const quant_args *a, const scheme_module *m, void *dst);
    /* reader: NULL = dtype and shape as above; else 0 ok, 1 dtype/shape, 2 value (want says) */
    int (*check)(const quant_args *a, int out, int in, const st_tensor *t, int check_values, char *want,
                 size_t cap);
    int optional;            /* the reader accepts its absence */
} ct_tensor;

/* ---- pack-quantized ---- */

static int sym(const quant_args *a) { return a->symmetric; }
static int asym(const quant_args *a) { return !sym(a); }
static int group_act(const quant_args *a) { return a->actorder == QA_GROUP; }

static int shape_packed(const quant_args *a, int out, int in, int64_t *s) {
    s[0] = out;
    s[1] = qs_packed_words(in, a->num_bits);
    return 2;
}
static int shape_scale(const quant_args *a, int out, int in, int64_t *s) {
    s[0] = out;
    s[1] = quant_num_groups(a, in);
    return 2;
}
static int shape_shape(const quant_args *a, int out, int in, int64_t *s) {
    (void)a; (void)out; (void)in;
    s[0] = 2;
    return 1;
}
static int shape_zp(const quant_args *a, int out, int in, int64_t *s) {
    s[0] = qs_packed_words(out, a->num_bits);
    s[1] = quant_num_groups(a, in);
    return 2;
}
static int shape_gidx(const quant_args *a, int out, int in, int64_t *s) {
    (void)a; (void)out;
    s[0] = in;
    return 1;
}

static void enc_packed(const quant_args *a, const scheme_module *m, void *dst) {
    quant_pack_rows(m->q, m->out, m->in, a->num_bits, dst);
}
static void enc_scale(const quant_args *a, const scheme_module *m, void *dst) {
    ds_convert_from_f32(dst, m->scale, m->dtype, (size_t)m->out * quant_num_groups(a, m->in));
}
static void enc_shape(const quant_args *a, const scheme_module *m, void *dst) {
    (void)a;
    int64_t shape[2] = {m->out, m->in};
    memcpy(dst, shape, sizeof shape);
}
static void enc_zp(const quant_args *a, const scheme_module *m, void *dst) {
    const size_t n = (size_t)m->out * quant_num_groups(a, m->in);
    int8_t *z8 = xmalloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) z8[i] = (int8_t)m->zp[i];
    quant_pack_cols(z8, m->out, quant_num_groups(a, m->in), a->num_bits, dst);
    free(z8);
}
static void enc_gidx(const quant_args *a, const scheme_module *m, void *dst) {
    (void)a;
    int32_t *gi = dst;
    for (int i = 0; i < m->in; i++) gi[i] = m->g_idx[i];
}

static int is_float_dtype(ds_dtype d) { return d == DS_DTYPE_F32 || d == DS_DTYPE_BF16 || d == DS_DTYPE_F16; }

/* t has dtype dt (DT_MODEL: F32/BF16/F16) and the given shape. */
static int tensor_is(const st_tensor *t, int dt, int ndim, const int64_t *s) {
    if (!t || (dt == DT_MODEL ? !is_float_dtype(t->dtype) : t->dtype != (ds_dtype)dt) || t->ndim != ndim)
        return 0;
    for (int d = 0; d < ndim; d++)
        if (t->shape[d] != s[d]) return 0;
    return 1;
}

static const char *want_dtype(int dt) { return dt == DT_MODEL ? "F32/BF16/F16" : ds_dtype_name((ds_dtype)dt); }

/* weight_scale: [out, groups] in any float dtype; strategy tensor: also one element. */
static int check_scale(const quant_args *a, int out, int in, const st_tensor *t, int check_values, char *want,
                       size_t cap) {
    (void)check_values;
    int64_t s[2];
    shape_scale(a, out, in, s);
    if (tensor_is(t, DT_MODEL, 2, s) || (a->strategy == QS_TENSOR && t && is_float_dtype(t->dtype) &&
                                          t->ndim >= 1 && t->ndim <= 2 && st_numel(t) == 1))
        return 0;
    snprintf(want, cap, "F32/BF16/F16 [%lld, %lld]", (long long)s[0], (long long)s[1]);
    return 1;
}

/* weight_shape: I64 (or I32) [2] = {out, in}. */
static int check_shape(const quant_args *a, int out, int in, const st_tensor *t, int check_values, char *want,
                       size_t cap) {
    (void)a; (void)check_values;
    const int64_t two[1] = {2};
    int64_t v[2] = {-1, -1};
    if (tensor_is(t, DS_DTYPE_I64, 1, two)) memcpy(v, t->data, sizeof v);
    else if (tensor_is(t, DS_DTYPE_I32, 1, two)) {
        int32_t v32[2];
        memcpy(v32, t->data, sizeof v32);
        v[0] = v32[0];
        v[1] = v32[1];
    }
    if (v[0] == out && v[1] == in) return 0;
    char got[64];
    snprintf(got, sizeof got, "{%lld, %lld}", (long long)v[0], (long long)v[1]);
    snprintf(want, cap, "I64 [2] = {%d, %d} (values %s)", out, in, v[0] < 0 ? "unreadable" : got);
    return 1;
}

/* weight_g_idx: I32 [in]; check_values: every value a scale group. */
static int check_gidx(const quant_args *a, int out, int in, const st_tensor *t, int check_values, char *want,
                      size_t cap) {
    (void)out;
    int64_t s[1] = {in};
    if (!tensor_is(t, DS_DTYPE_I32, 1, s)) {
        snprintf(want, cap, "I32 [%d]", in);
        return 1;
    }
    const int ng = quant_num_groups(a, in);
    for (int i = 0; check_values && i < in; i++) {
        int32_t g;
        memcpy(&g, (const char *)t->data + sizeof g * (size_t)i, sizeof g);
        if (g < 0 || g >= ng) {
            snprintf(want, cap, "element [%d] = %d is outside [0, %d) (the weight_scale groups)", i, (int)g, ng);
            return 2;
        }
    }
    return 0;
}

static const ct_tensor pack_quantized[] = {
    {"weight_packed", DS_DTYPE_I32, shape_packed, NULL, NULL, enc_packed, NULL, 0},
    {"weight_scale", DT_MODEL, shape_scale, NULL, NULL, enc_scale, check_scale, 0},
    {"weight_shape", DS_DTYPE_I64, shape_shape, NULL, NULL, enc_shape, check_shape, 1},
    {"weight_zero_point", DS_DTYPE_I32, shape_zp, asym, "no zero point (symmetric)", enc_zp, NULL, 0},
    {"weight_g_idx", DS_DTYPE_I32, shape_gidx, group_act, "no g_idx (actorder is not \"group\")", enc_gidx,
     check_gidx, 0},
};

typedef struct ct_format {
    const char *name;
    int (*accepts)(const quant_args *a);
    const ct_tensor *t;
    int nt;
} ct_format;

static int int_weights(const quant_args *a) { return a->type == QT_INT && a->num_bits >= 1 && a->num_bits <= 8; }

static const ct_format formats[] = {
    {"pack-quantized", int_weights, pack_quantized, (int)DS_ARRAY_LEN(pack_quantized)},
};

static const ct_format *format_of(const quant_args *a) {
    for (size_t i = 0; i < DS_ARRAY_LEN(formats); i++)
        if (formats[i].accepts(a)) return &formats[i];
    return NULL;
}

const char *scheme_format_name(const quant_args *a) {
    const ct_format *f = format_of(a);
    return f ? f->name : NULL;
}

/* ---- planner and writer ---- */

int scheme_tensors(const quant_args *a, ds_dtype dt, int out, int in, scheme_tensor_spec *specs) {
    const ct_format *f = format_of(a);
    int n = 0;
    for (int k = 0; f && k < f->nt; k++) {
        const ct_tensor *e = &f->t[k];
        if (e->present && !e->present(a)) continue;
        scheme_tensor_spec *s = &specs[n++];
        s->suffix = e->suffix;
        s->dtype = e->dtype == DT_MODEL ? dt : (ds_dtype)e->dtype;
        s->shape[1] = 1;
        s->ndim = e->shape(a, out, in, s->shape);
        s->nbytes = ds_dtype_size(s->dtype) * (size_t)s->shape[0] * (size_t)(s->ndim == 2 ? s->shape[1] : 1);
    }
    return n;
}

void scheme_encode(const quant_args *a, int k, const scheme_module *m, void *dst) {
    const ct_format *f = format_of(a);
    DS_ASSERT(f);
    for (int i = 0, n = 0; i < f->nt; i++) {
        const ct_tensor *e = &f->t[i];
        if (e->present && !e->present(a)) continue;
        if (n++ == k) {
            e->encode(a, m, dst);
            return;
        }
    }
    DS_ASSERT(!"scheme_encode: no such tensor");
}

int scheme_is_module_tensor(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    for (size_t i = 0; i < DS_ARRAY_LEN(formats); i++)
        for (int k = 0; k < formats[i].nt; k++)
            if (strcmp(dot + 1, formats[i].t[k].suffix) == 0) return 1;
    return 0;
}

/* ---- reader ---- */

int scheme_read_entries(const quant_args *a) {
    const ct_format *f = format_of(a);
    return f ? f->nt : 0;
}

const char *scheme_read_suffix(const quant_args *a, int k) {
    const ct_format *f = format_of(a);
    DS_ASSERT(f && k >= 0 && k < f->nt);
    return f->t[k].suffix;
}

int scheme_read_check(const quant_args *a, int k, int out, int in, const st_tensor *t, int check_values,
                      char *want, size_t cap) {
    const ct_format *f = format_of(a);
    DS_ASSERT(f && k >= 0 && k < f->nt);
    const ct_tensor *e = &f->t[k];
    if (e->present && !e->present(a)) {
        if (!t) return 0;
        snprintf(want, cap, "%s", e->absent);
        return 1;
    }
    if (!t && e->optional) return 0;
    if (e->check) return e->check(a, out, in, t, check_values, want, cap);
    int64_t s[2] = {0, 0};
    int nd = e->shape(a, out, in, s);
    if (tensor_is(t, e->dtype, nd, s)) return 0;
    if (nd == 1) snprintf(want, cap, "%s [%lld]", want_dtype(e->dtype), (long long)s[0]);
    else snprintf(want, cap, "%s [%lld, %lld]", want_dtype(e->dtype), (long long)s[0], (long long)s[1]);
    return 1;
}

/* Entry index of `suffix` in a's format (-1: none). */
static int entry_of(const ct_format *f, const char *suffix) {
    for (int k = 0; k < f->nt; k++)
        if (strcmp(f->t[k].suffix, suffix) == 0) return k;
    return -1;
}

/* A copy of a (possibly unaligned) stored tensor's int32 data. */
static int32_t *i32_copy(const st_tensor *t) {
    int32_t *p = xmalloc(t->nbytes ? t->nbytes : 1);
    memcpy(p, t->data, t->nbytes);
    return p;
}

void scheme_dequantize(const quant_args *a, ds_dtype dt, int out, int in, const st_tensor *const *stored,
                       const float *scale, size_t srow, float *w) {
    const ct_format *f = format_of(a);
    DS_ASSERT(f);
    const int bits = a->num_bits, ng = quant_num_groups(a, in);
    const st_tensor *p = stored[entry_of(f, "weight_packed")];
    const st_tensor *z = stored[entry_of(f, "weight_zero_point")];
    const st_tensor *gi = stored[entry_of(f, "weight_g_idx")];
    int8_t *q = xmalloc((size_t)out * in);
    int32_t *packed = i32_copy(p);
    quant_unpack_rows(packed, out, in, bits, q);
    free(packed);
    int8_t *zp = NULL;
    int32_t *gidx = NULL;
    if (z && !a->symmetric) {
        int32_t *zpk = i32_copy(z);
        zp = xmalloc((size_t)out * ng);
        quant_unpack_cols(zpk, out, ng, bits, zp);
        free(zpk);
    }
    if (gi && a->actorder == QA_GROUP) gidx = i32_copy(gi);
    for (int o = 0; o < out; o++) {
        float *row = w + (size_t)o * in;
        for (int i = 0; i < in; i++) {
            int g = scheme_column_group(a, gidx, i);
            int zz = zp ? zp[(size_t)o * ng + g] : 0;
            row[i] = qs_dequant(q[(size_t)o * in + i], zz, scale[(size_t)o * srow + g], (int)dt);
        }
    }
    free(q); free(zp); free(gidx);
}

/* ---- codes ---- */

int scheme_column_group(const quant_args *a, const int *g_idx, int col) {
    if (a->strategy != QS_GROUP) return 0;
    if (a->actorder == QA_GROUP && g_idx) return g_idx[col];
    return col / a->group_size;
}

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
            int g = scheme_column_group(c->a, c->g_idx, i);
            int z = c->zp ? c->zp[o * c->ng + g] : 0;
            c->q[o * c->in + i] = (int8_t)qs_code_from_deq(c->W[o * c->in + i], c->scale[o * c->ng + g], z,
                                                           c->qmin, c->qmax, (int)c->dt);
        }
}

void scheme_codes_from_weight(const quant_args *a, const float *W, const float *scale, const int *zp,
                              const int *g_idx, int out, int in, ds_dtype dt, int8_t *q) {
    codes_ctx c = {.a = a, .W = W, .scale = scale, .zp = zp, .g_idx = g_idx, .in = in,
                   .ng = quant_num_groups(a, in), .dt = dt, .q = q};
    quant_range(a, &c.qmin, &c.qmax);
    ds_parallel_for((size_t)out, (size_t)(1 << 18) / (size_t)in + 1, codes_rows, &c);
}

void scheme_result_alloc(scheme_result *p, const quant_args *a, int out, int in, ds_dtype dt) {
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

/* ---- quantization_config ---- */

const char *scheme_type_name(quant_type t) { return t == QT_FLOAT ? "float" : "int"; }

static const char *strategy_name(quant_strategy s) {
    return s == QS_GROUP ? "group" : s == QS_CHANNEL ? "channel" : "tensor";
}

struct cJSON *scheme_weights_json(const quant_args *a, const char *observer, int group_size_m1) {
    cJSON *w = cJSON_CreateObject();
    if (a->actorder == QA_STATIC) cJSON_AddStringToObject(w, "actorder", "static");
    else if (a->actorder == QA_GROUP) cJSON_AddStringToObject(w, "actorder", "group");
    else cJSON_AddNullToObject(w, "actorder");
    cJSON_AddNullToObject(w, "block_structure");
    cJSON_AddBoolToObject(w, "dynamic", 0);
    if (a->strategy == QS_GROUP) cJSON_AddNumberToObject(w, "group_size", a->group_size);
    else if (group_size_m1) cJSON_AddNumberToObject(w, "group_size", -1);
    else cJSON_AddNullToObject(w, "group_size");
    cJSON_AddNumberToObject(w, "num_bits", a->num_bits);
    cJSON_AddStringToObject(w, "observer", observer ? observer : "memoryless_minmax");
    cJSON_AddItemToObject(w, "observer_kwargs", cJSON_CreateObject());
    cJSON_AddNullToObject(w, "scale_dtype");
    cJSON_AddStringToObject(w, "strategy", strategy_name(a->strategy));
    cJSON_AddBoolToObject(w, "symmetric", a->symmetric);
    cJSON_AddStringToObject(w, "type", scheme_type_name(a->type));
    if (a->symmetric) cJSON_AddNullToObject(w, "zp_dtype");
    else cJSON_AddStringToObject(w, "zp_dtype", "torch.int8");
    return w;
}
