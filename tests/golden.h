/*
 * golden.h - read golden tensors (written by the Python safetensors package,
 * tests/gen_*.py) through src/safetensors.c, for the unit tests.
 */
#ifndef DS_TEST_GOLDEN_H
#define DS_TEST_GOLDEN_H

#include "quant.h"
#include "safetensors.h"

#include <stdlib.h>
#include <string.h>

typedef struct { st_model *m; } gold;

static inline int gold_open(const char *path, gold *g) {
    g->m = NULL;
    if (st_open_file(path, &g->m) != DS_OK) {
        fprintf(stderr, "%s\n", ds_errmsg());
        return -1;
    }
    return 0;
}
static inline void gold_close(gold *g) { st_close(g->m); g->m = NULL; }

/* __metadata__ value copied into out, or NULL. */
static inline const char *gold_meta(const gold *g, const char *key, char *out, size_t outn) {
    const char *v = st_metadata(g->m, key);
    if (!v) return NULL;
    snprintf(out, outn, "%s", v);
    return out;
}

/* The weight scheme (num_bits, symmetric, strategy, group_size; actorder
 * left QA_NONE) and the model dtype a golden's metadata records. */
static inline quant_args gold_quant_args(const gold *g, ds_dtype *dt) {
    char v[64];
    quant_args a = {0};
    a.num_bits = atoi(gold_meta(g, "num_bits", v, sizeof v));
    a.symmetric = atoi(gold_meta(g, "symmetric", v, sizeof v));
    gold_meta(g, "strategy", v, sizeof v);
    a.strategy = !strcmp(v, "group") ? QS_GROUP : !strcmp(v, "channel") ? QS_CHANNEL : QS_TENSOR;
    a.group_size = atoi(gold_meta(g, "group_size", v, sizeof v));
    gold_meta(g, "dtype", v, sizeof v);
    *dt = !strcmp(v, "bfloat16") ? DS_DTYPE_BF16 : !strcmp(v, "float16") ? DS_DTYPE_F16 : DS_DTYPE_F32;
    return a;
}

/* Tensor as f32 (F32/BF16/F16); *n = element count; NULL if absent. */
static inline float *gold_f32(const gold *g, const char *name, size_t *n) {
    const st_tensor *t = st_find(g->m, name);
    if (!t) return NULL;
    size_t cnt = (size_t)st_numel(t);
    float *o = xmalloc((cnt ? cnt : 1) * sizeof(float));
    if (st_to_f32(t, o) != DS_OK) { free(o); return NULL; }
    if (n) *n = cnt;
    return o;
}

/* Integer tensor (I8/I32/I64) as int64; NULL if absent or not integer. */
static inline int64_t *gold_i64(const gold *g, const char *name, size_t *n) {
    const st_tensor *t = st_find(g->m, name);
    if (!t) return NULL;
    size_t es = t->dtype == DS_DTYPE_I8 ? 1 : t->dtype == DS_DTYPE_I32 ? 4 : t->dtype == DS_DTYPE_I64 ? 8 : 0;
    if (!es) return NULL;
    size_t cnt = t->nbytes / es;
    int64_t *o = xmalloc((cnt ? cnt : 1) * sizeof(int64_t));
    const unsigned char *b = t->data;
    for (size_t i = 0; i < cnt; i++) {
        if (es == 1) { int8_t v; memcpy(&v, b + i, 1); o[i] = v; }
        else if (es == 4) { int32_t v; memcpy(&v, b + 4 * i, 4); o[i] = v; }
        else { int64_t v; memcpy(&v, b + 8 * i, 8); o[i] = v; }
    }
    if (n) *n = cnt;
    return o;
}

/* Number of dims (shape filled, up to 4), or -1 if absent. */
static inline int gold_shape(const gold *g, const char *name, int64_t shape[4]) {
    const st_tensor *t = st_find(g->m, name);
    if (!t) return -1;
    for (int i = 0; i < t->ndim && i < 4; i++) shape[i] = t->shape[i];
    return t->ndim;
}

/* The GPTQ/quant golden cases of tests/golden/gptq/ (tests/gen_gptq_golden.py). */
static const char *g_cases[] = {
    "a_bf16_g128_sym_static", "b_bf16_channel_none", "c_bf16_g64_asym_dead",
    "d_f32_g32_sym_static", "e_bf16_int8_g64_static", "f_bf16_g32_sym_none_block16",
    "g_bf16_int8_channel_asym_static",
};

#endif
