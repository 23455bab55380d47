/*
 * test_scheme.c - the scheme table (src/scheme.h) round-trips: for each int
 * scheme doneshot writes (W4A16 channel, group 32 with actorder group,
 * asymmetric group, W8A16 channel) every quantized Linear of the bundled
 * model is planned and written through the checkpoint writer (ckpt_begin,
 * ckpt_write_module, ckpt_finish) into a temp dir and read back through the
 * model reader (model_open_quantized_ok, layer_load): the dequantized
 * weights equal round_dtype((q - zp) * scale) bit for bit, the other
 * weights are unchanged, quantization_config gives back the same args, and
 * the writer's tensor list is the reader's expected list (one table).
 * Uses data/stories260K.
 */
#include "checkpoint.h"
#include "model.h"
#include "recipe.h"
#include "safetensors.h"
#include "scheme.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MODEL "data/stories260K"

typedef struct scheme_case {
    const char *name, *weights, *ignore;
} scheme_case;

static const scheme_case g_cases[] = {
    {"W4A16 channel", "{\"num_bits\":4,\"type\":\"int\",\"symmetric\":true,\"strategy\":\"channel\"}", "[]"},
    {"W4A16 group 32 actorder group",
     "{\"num_bits\":4,\"type\":\"int\",\"symmetric\":true,\"strategy\":\"group\",\"group_size\":32,"
     "\"actorder\":\"group\"}",
     "[]"}, /* in_features 172 is no multiple of 32 */
    {"W4 asymmetric group 4", "{\"num_bits\":4,\"symmetric\":false,\"strategy\":\"group\",\"group_size\":4}", "[]"},
    {"W8A16 channel", "{\"num_bits\":8,\"type\":\"int\",\"symmetric\":true,\"strategy\":\"channel\"}", "[]"},
};

/* Deterministic synthetic codes, scales, zero-points and g_idx of one module. */
typedef struct module_data {
    int8_t *q;
    float *scale;
    int *zp, *g_idx;
    float *want; /* the dequantized weight the reader must give */
} module_data;

static void make_module(const quant_args *a, int out, int in, int salt, ds_dtype dt, module_data *d) {
    int qmin, qmax;
    quant_range(a, &qmin, &qmax);
    const int ng = quant_num_groups(a, in), span = qmax - qmin + 1;
    d->q = xmalloc((size_t)out * in);
    d->scale = xmalloc(sizeof(float) * (size_t)out * ng);
    d->zp = a->symmetric ? NULL : xmalloc(sizeof(int) * (size_t)out * ng);
    d->g_idx = a->actorder == QA_GROUP ? xmalloc(sizeof(int) * (size_t)in) : NULL;
    d->want = xmalloc(sizeof(float) * (size_t)out * in);
    for (int o = 0; o < out; o++)
        for (int g = 0; g < ng; g++) {
            d->scale[(size_t)o * ng + g] = ds_round_to(0.0078125f * (float)(1 + (o * 3 + g * 5 + salt) % 11), dt);
            if (d->zp) d->zp[(size_t)o * ng + g] = qmin + (o * 7 + g * 3 + salt) % span;
        }
    for (int i = 0; d->g_idx && i < in; i++) d->g_idx[i] = ((i * 5 + salt) % in) / a->group_size;
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            const size_t e = (size_t)o * in + i;
            d->q[e] = (int8_t)(qmin + (o * 31 + i * 17 + salt) % span);
            const int g = scheme_column_group(a, d->g_idx, i);
            const int z = d->zp ? d->zp[(size_t)o * ng + g] : 0;
            d->want[e] = ds_round_to((float)(d->q[e] - z) * d->scale[(size_t)o * ng + g], dt);
        }
}

static void free_module(module_data *d) {
    free(d->q); free(d->scale); free(d->zp); free(d->g_idx); free(d->want);
    memset(d, 0, sizeof *d);
}

/* The writer's tensors of `module` in the output == scheme_tensors (names,
 * dtypes, shapes), and the reader accepts each of them and the absence of
 * every entry that is not written only where it may be absent. */
static void check_one_list(const quant_args *a, const model *q, const char *module, int out, int in) {
    scheme_tensor_spec spec[SCHEME_MAX_TENSORS];
    const int n = scheme_tensors(a, q->cfg.dtype, out, in, spec);
    CHECK(n >= 3);
    char name[400], want[200];
    size_t prefix = strlen(module) + 1, stored = 0;
    for (size_t i = 0; i < st_count(q->st); i++) {
        const st_tensor *t = st_get(q->st, i);
        if (strncmp(t->name, module, prefix - 1) == 0 && t->name[prefix - 1] == '.') stored++;
    }
    CHECK_EQ_INT(stored, n); /* nothing but the table's tensors ("weight" itself is gone) */
    for (int k = 0; k < n; k++) {
        snprintf(name, sizeof name, "%s.%s", module, spec[k].suffix);
        const st_tensor *t = st_find(q->st, name);
        CHECK(t && t->dtype == spec[k].dtype && t->ndim == spec[k].ndim && t->nbytes == spec[k].nbytes);
        for (int dd = 0; t && dd < t->ndim; dd++) CHECK_EQ_INT(t->shape[dd], spec[k].shape[dd]);
        CHECK(scheme_is_module_tensor(name));
    }
    int found = 0;
    for (int k = 0; k < scheme_read_entries(a); k++) {
        const char *suffix = scheme_read_suffix(a, k);
        int written = 0;
        for (int j = 0; j < n; j++) written |= strcmp(spec[j].suffix, suffix) == 0;
        found += written;
        snprintf(name, sizeof name, "%s.%s", module, suffix);
        const st_tensor *t = st_find(q->st, name);
        CHECK_EQ_INT(scheme_read_check(a, k, out, in, t, 1, want, sizeof want), 0);
        if (!written) CHECK(t == NULL);
        /* an unwritten entry must be absent; a written one, other than
         * weight_shape (llm-compressor may omit it), must be present */
        if (written && strcmp(suffix, "weight_shape") != 0)
            CHECK(scheme_read_check(a, k, out, in, NULL, 1, want, sizeof want) != 0);
    }
    CHECK_EQ_INT(found, n);
}

static void run_case(const scheme_case *sc, const char *tmp) {
    TEST(sc->name) {
        char *json = xasprintf("{\"GPTQModifier\":{\"ignore\":%s,\"config_groups\":{\"group_0\":"
                               "{\"targets\":[\"Linear\"],\"weights\":%s}}}}", sc->ignore, sc->weights);
        recipe r;
        model m, q;
        memset(&q, 0, sizeof q);
        ds_status st = recipe_parse(json, "test_scheme", &r);
        free(json);
        CHECK_EQ_INT(st, DS_OK);
        if (st) { fprintf(stderr, "%s\n", ds_errmsg()); break; }
        st = model_open(MODEL, &m);
        if (st) { SKIP("no " MODEL); recipe_free(&r); break; }
        const quant_args *a = &r.w;
        const model_config *c = &m.cfg;
        char *out = xasprintf("%s/ckpt", tmp);
        ckpt_writer *w = NULL;
        CHECK_EQ_INT(ckpt_begin(&m, &r, out, 1, (uint64_t)1 << 30, -1, &w), DS_OK);
        layer_linear *ll = xmalloc(sizeof(layer_linear) * (size_t)(3 * c->E + 12));
        module_data *md = xcalloc((size_t)c->L * 16, sizeof(module_data));
        int nq = 0, nl = 0;
        for (int l = 0; w && l < c->L; l++) {
            nl = model_layer_linears(c, l, 1, ll);
            DS_ASSERT(nl <= 16);
            for (int k = 0; k < nl; k++) {
                if (!ll[k].quantizable || !ckpt_module_quantized(&r, ll[k].name)) continue;
                module_data *d = &md[l * 16 + k];
                make_module(a, ll[k].out, ll[k].in, l * 16 + k, c->dtype, d);
                CHECK_EQ_INT(ckpt_write_module(w, ll[k].name, d->q, d->scale, d->zp, d->g_idx, ll[k].out,
                                               ll[k].in), DS_OK);
                nq++;
            }
        }
        CHECK(nq > 0);
        if (w) CHECK_EQ_INT(ckpt_finish(w, NULL, NULL), DS_OK);
        st = model_open_quantized_ok(out, &q);
        CHECK_EQ_INT(st, DS_OK);
        if (st) fprintf(stderr, "%s\n", ds_errmsg());
        if (!st) {
            CHECK(q.quantized && q.nqargs == 1);
            CHECK(memcmp(&q.qargs[0], a, sizeof *a) == 0); /* quantization_config round-trips the args */
            for (int l = 0; l < c->L; l++) {
                layer_weights lw, orig;
                CHECK_EQ_INT(layer_load(&q, l, &lw), DS_OK);
                CHECK_EQ_INT(layer_load(&m, l, &orig), DS_OK);
                for (int k = 0; k < lw.nlin; k++) {
                    const layer_linear *li = &lw.lin[k];
                    const size_t n = (size_t)li->out * li->in;
                    const module_data *d = &md[l * 16 + k];
                    if (d->q) {
                        CHECK(memcmp(li->w, d->want, sizeof(float) * n) == 0);
                        check_one_list(a, &q, li->name, li->out, li->in);
                    } else {
                        CHECK(memcmp(li->w, orig.lin[k].w, sizeof(float) * n) == 0);
                    }
                }
                layer_free(&lw);
                layer_free(&orig);
            }
            model_close(&q);
        }
        for (int i = 0; i < c->L * 16; i++) free_module(&md[i]);
        free(md);
        free(ll);
        char *cmd = xasprintf("rm -rf '%s'", out);
        test_system(cmd);
        free(cmd);
        free(out);
        model_close(&m);
        recipe_free(&r);
    }
}

/* The table's own consistency: every written suffix is recognised as a
 * module tensor (resume), nothing else is. */
static void test_suffixes(void) {
    TEST("module tensor suffixes") {
        CHECK(scheme_is_module_tensor("model.layers.3.mlp.up_proj.weight_packed"));
        CHECK(scheme_is_module_tensor("model.layers.3.mlp.up_proj.weight_g_idx"));
        CHECK(!scheme_is_module_tensor("model.layers.3.mlp.up_proj.weight"));
        CHECK(!scheme_is_module_tensor("model.layers.3.input_layernorm.weight"));
        quant_args f = {.num_bits = 8, .symmetric = 1, .strategy = QS_CHANNEL, .group_size = -1, .type = QT_FLOAT};
        scheme_tensor_spec spec[SCHEME_MAX_TENSORS];
        /* weight-only fp8: compressed-tensors' float-quantized needs input_activations
         * (FloatQuantizationCompressor.can_compress), so it falls back to naive-quantized */
        CHECK(scheme_format_name(&f) && !strcmp(scheme_format_name(&f), "naive-quantized"));
        CHECK(scheme_format_known("naive-quantized"));
        f.act = QACT_DYNAMIC;
        CHECK(scheme_format_name(&f) && !strcmp(scheme_format_name(&f), "float-quantized"));
        f.act = QACT_NONE;
        CHECK_EQ_INT(scheme_tensors(&f, DS_DTYPE_BF16, 8, 8, spec), 2); /* weight, weight_scale */
        CHECK(!strcmp(spec[0].suffix, "weight") && spec[0].dtype == DS_DTYPE_F8_E4M3);
        CHECK(spec[1].ndim == 2 && spec[1].shape[0] == 8 && spec[1].shape[1] == 1);
        CHECK(scheme_writes_weight(&f));
        f.act = QACT_INPUT_SCALE;
        CHECK_EQ_INT(scheme_tensors(&f, DS_DTYPE_BF16, 8, 8, spec), 3);
        CHECK(!strcmp(spec[2].suffix, "input_scale") && spec[2].ndim == 1 && spec[2].shape[0] == 1);
        CHECK(scheme_is_module_tensor("model.layers.3.mlp.up_proj.input_scale"));
        f.num_bits = 6; /* no fp6 format */
        CHECK(scheme_format_name(&f) == NULL);
        CHECK_EQ_INT(scheme_tensors(&f, DS_DTYPE_BF16, 8, 8, spec), 0);
        CHECK(strcmp(scheme_type_name(QT_FLOAT), "float") == 0 && strcmp(scheme_type_name(QT_INT), "int") == 0);
    }
}

int main(void) {
    char tmp[] = "/tmp/test_scheme.XXXXXX";
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 1;
    }
    test_suffixes();
    for (size_t i = 0; i < DS_ARRAY_LEN(g_cases); i++) run_case(&g_cases[i], tmp);
    rmdir(tmp);
    return TEST_REPORT();
}
