/*
 * ckpt_compare.h - compare two doneshot (pack-quantized, int4) checkpoints of
 * the same model, for the end-to-end tests: same tensor names, dtypes and
 * shapes; unquantized tensors byte-identical; int4 codes counted equal/total;
 * largest relative weight_scale difference; scales of b finite and > 0;
 * modules whose codes are all one value.
 */
#ifndef DS_TEST_CKPT_COMPARE_H
#define DS_TEST_CKPT_COMPARE_H

#include "quant.h"
#include "safetensors.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct ckpt_cmp {
    int ok;              /* same structure, unquantized tensors identical */
    int nmods, nexperts; /* quantized modules (of which MoE experts) */
    int bad_scales;      /* non-finite or <= 0 scales in b */
    int constant_codes;  /* modules of a whose codes are all equal */
    long codes, same;    /* int4 codes compared / identical */
    double max_scale_rel;
} ckpt_cmp;

static inline int ckpt_ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* int4 codes of a weight_packed tensor (shape from <module>.weight_shape),
 * malloc'd [out*in]; NULL if the shape tensor is missing. */
static inline int8_t *ckpt_codes(const st_model *m, const st_tensor *p, int *out, int *in) {
    char nm[600];
    snprintf(nm, sizeof nm, "%.*s.weight_shape", (int)(strlen(p->name) - 14), p->name);
    const st_tensor *sh = st_find(m, nm);
    if (!sh) return NULL;
    int64_t d[2];
    memcpy(d, sh->data, sizeof d);
    *out = (int)d[0];
    *in = (int)d[1];
    int32_t *pk = malloc(p->nbytes);
    memcpy(pk, p->data, p->nbytes);
    int8_t *q = malloc((size_t)*out * *in);
    quant_unpack_rows(pk, *out, *in, 4, q);
    free(pk);
    return q;
}

static inline ckpt_cmp ckpt_compare(const char *a_dir, const char *b_dir) {
    ckpt_cmp r = {0};
    st_model *a = NULL, *b = NULL;
    if (st_open_dir(a_dir, &a) || st_open_dir(b_dir, &b)) { st_close(a); return r; }
    r.ok = st_count(a) == st_count(b);
    for (size_t i = 0; r.ok && i < st_count(a); i++) {
        const st_tensor *x = st_get(a, i), *y = st_find(b, x->name);
        if (!y || x->dtype != y->dtype || x->ndim != y->ndim || x->nbytes != y->nbytes ||
            memcmp(x->shape, y->shape, sizeof(int64_t) * (size_t)x->ndim) != 0) {
            fprintf(stderr, "structure differs at %s\n", x->name);
            r.ok = 0;
            break;
        }
        if (ckpt_ends_with(x->name, ".weight_packed")) {
            int out, in, o2, i2;
            int8_t *qa = ckpt_codes(a, x, &out, &in), *qb = ckpt_codes(b, y, &o2, &i2);
            if (!qa || !qb) { r.ok = 0; free(qa); free(qb); break; }
            int lo = 127, hi = -128;
            for (long k = 0; k < (long)out * in; k++) {
                r.codes++;
                r.same += qa[k] == qb[k];
                lo = qa[k] < lo ? qa[k] : lo;
                hi = qa[k] > hi ? qa[k] : hi;
            }
            r.constant_codes += lo == hi;
            r.nmods++;
            r.nexperts += strstr(x->name, ".experts.") != NULL;
            free(qa);
            free(qb);
        } else if (ckpt_ends_with(x->name, ".weight_scale")) {
            size_t n = (size_t)st_numel(x);
            float *fa = malloc(sizeof(float) * n), *fb = malloc(sizeof(float) * n);
            st_to_f32(x, fa);
            st_to_f32(y, fb);
            for (size_t k = 0; k < n; k++) {
                double d = fabs((double)fa[k] - fb[k]) / fmax(fabs((double)fa[k]), 1e-30);
                if (d > r.max_scale_rel) r.max_scale_rel = d;
                r.bad_scales += !(isfinite(fb[k]) && fb[k] > 0);
            }
            free(fa);
            free(fb);
        } else if (memcmp(x->data, y->data, x->nbytes) != 0) {
            fprintf(stderr, "unquantized tensor %s differs\n", x->name);
            r.ok = 0;
        }
    }
    st_close(a);
    st_close(b);
    return r;
}

#endif
