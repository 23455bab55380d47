/*
 * test_fp8.c - the FP8 (float8_e4m3fn) scheme math against goldens from torch
 * 2.14 / compressed-tensors 0.19.0 (tests/gen_fp8_golden.py ->
 * tests/golden/fp8/): the cast (qs_fp8_e4m3_bits: ties to even, subnormals,
 * +-0, 448 saturation after compressed-tensors' clamp, NaN) and the decode of
 * all 256 patterns; the weight qparams (quant_minmax_qparams, strategy
 * tensor / channel / block with partial tiles, an all-zero row), the
 * compressor's codes (quant_code_from_deq_k) and the fake quant in f32, bf16,
 * f16; the activation fake quant of the eval forward (scheme_act_fake:
 * dynamic per token as FP8_DYNAMIC, static per tensor as FP8, saturating).
 */
#include "qscalar.h"
#include "quant.h"
#include "scheme.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>

#include "golden.h"

#define GOLD_DIR "tests/golden/fp8/"

static int same_bits(float a, float b) { return (isnan(a) && isnan(b)) || memcmp(&a, &b, sizeof a) == 0; }

static const unsigned char *raw_u8(const gold *g, const char *name, size_t *n) {
    const st_tensor *t = st_find(g->m, name);
    if (!t || t->dtype != DS_DTYPE_U8) return NULL;
    *n = t->nbytes;
    return t->data;
}

static void test_cast(void) {
    gold g;
    TEST("fp8 e4m3fn cast == torch (clamp to +-448 first, as compressed-tensors)") {
        if (gold_open(GOLD_DIR "cast.safetensors", &g)) { CHECK(0); break; }
        size_t n = 0, nb = 0;
        float *x = gold_f32(&g, "x", &n);
        const unsigned char *bits = raw_u8(&g, "bits", &nb);
        CHECK(x && bits && n == nb && n > 4000);
        int bad = 0;
        for (size_t i = 0; x && bits && i < n; i++) {
            float t = x[i];
            if (t < -448.0f) t = -448.0f;
            if (t > 448.0f) t = 448.0f;
            unsigned b = qs_fp8_e4m3_bits(t);
            if (b != bits[i] && bad++ < 5) fprintf(stderr, "  x=%a got 0x%02x want 0x%02x\n", x[i], b, bits[i]);
        }
        CHECK_EQ_INT(bad, 0);
        free(x);
        gold_close(&g);
    }
    TEST("fp8 e4m3fn decode of all 256 patterns == torch") {
        if (gold_open(GOLD_DIR "cast.safetensors", &g)) { CHECK(0); break; }
        size_t n = 0;
        float *dec = gold_f32(&g, "dec", &n);
        CHECK(dec && n == 256);
        int bad = 0;
        for (unsigned b = 0; dec && b < 256; b++) bad += !same_bits(qs_fp8_e4m3_value(b), dec[b]);
        CHECK_EQ_INT(bad, 0);
        /* round trip of every finite pattern */
        for (unsigned b = 0; b < 256; b++)
            if ((b & 0x7f) != 0x7f) bad += qs_fp8_e4m3_bits(qs_fp8_e4m3_value(b)) != b;
        CHECK_EQ_INT(bad, 0);
        free(dec);
        gold_close(&g);
    }
    TEST("fp8 e4m3fn cast: hand-checked values") {
        CHECK_EQ_INT(qs_fp8_e4m3_bits(448.0f), 0x7e);
        CHECK_EQ_INT(qs_fp8_e4m3_bits(-448.0f), 0xfe);
        CHECK_EQ_INT(qs_fp8_e4m3_bits(1e30f), 0x7e);         /* saturating (torch: NaN; CT clamps first) */
        CHECK_EQ_INT(qs_fp8_e4m3_bits(0x1p-9f), 0x01);       /* smallest subnormal */
        CHECK_EQ_INT(qs_fp8_e4m3_bits(0x1p-10f), 0x00);      /* tie to even: 0 */
        CHECK_EQ_INT(qs_fp8_e4m3_bits(0x3p-10f), 0x02);      /* 1.5 * 2^-9: tie to even 2 */
        CHECK_EQ_INT(qs_fp8_e4m3_bits(1.0625f), 0x38);       /* 1 + 1/16: tie to even 1.0 */
        CHECK_EQ_INT(qs_fp8_e4m3_bits(1.1875f), 0x3a);       /* 1 + 3/16: tie to even 1.25 */
        CHECK_EQ_INT(qs_fp8_e4m3_bits(-0.0f), 0x80);
        CHECK_EQ_INT(qs_fp8_e4m3_bits(NAN), 0x7f);
        CHECK(qs_fp8_e4m3_value(0x7e) == 448.0f && qs_fp8_e4m3_value(0x08) == 0x1p-6f && isnan(qs_fp8_e4m3_value(0xff)));
    }
}

static void test_weights(const char *dtn, const char *strategy) {
    static char name[128]; /* the running test's name (test.h keeps the pointer) */
    char path[256];
    snprintf(path, sizeof path, GOLD_DIR "w_%s_%s.safetensors", dtn, strategy);
    snprintf(name, sizeof name, "fp8 weights %s %s: qparams, codes, fake quant == compressed-tensors", dtn, strategy);
    gold g;
    TEST(name) {
        if (gold_open(path, &g)) { CHECK(0); break; }
        const ds_dtype dt = !strcmp(dtn, "bf16") ? DS_DTYPE_BF16 : !strcmp(dtn, "f16") ? DS_DTYPE_F16 : DS_DTYPE_F32;
        int64_t shp[4];
        CHECK_EQ_INT(gold_shape(&g, "W", shp), 2);
        const int out = (int)shp[0], in = (int)shp[1];
        quant_args a = {.num_bits = 8, .type = QT_FLOAT, .symmetric = 1, .group_size = -1};
        a.strategy = !strcmp(strategy, "tensor") ? QS_TENSOR : !strcmp(strategy, "channel") ? QS_CHANNEL : QS_BLOCK;
        if (a.strategy == QS_BLOCK) { a.block[0] = 4; a.block[1] = 8; }
        size_t nsc = 0, ncodes = 0;
        float *W = gold_f32(&g, "W", NULL), *want_s = gold_f32(&g, "scale", &nsc), *fq = gold_f32(&g, "fq", NULL);
        const unsigned char *codes = raw_u8(&g, "codes", &ncodes);
        CHECK(W && want_s && fq && codes && ncodes == (size_t)out * in);
        if (!W || !want_s || !fq || !codes) { free(W); free(want_s); free(fq); gold_close(&g); break; }
        const int ng = quant_num_groups(&a, in);
        float *s = xmalloc(sizeof(float) * (size_t)out * ng);
        quant_minmax_qparams(&a, W, out, in, dt, s, NULL);
        int bad_s = 0, bad_c = 0, bad_d = 0, bad_f = 0, qmin, qmax;
        quant_range(&a, &qmin, &qmax);
        CHECK(qmin == -448 && qmax == 448);
        for (int r = 0; r < out; r++)
            for (int c = 0; c < in; c++) {
                const int gi = scheme_column_group(&a, NULL, c);
                const float sc = s[(size_t)r * ng + gi];
                const size_t wi = a.strategy == QS_TENSOR ? 0 : a.strategy == QS_CHANNEL ? (size_t)r
                                  : (size_t)(r / 4) * ng + gi;
                if (c == 0 || a.strategy == QS_BLOCK) bad_s += !same_bits(sc, want_s[wi]);
                const size_t k = (size_t)r * in + c;
                const int q = quant_code_from_deq_k(QK_FP8, W[k], sc, 0, qmin, qmax, dt);
                bad_c += q != codes[k];
                bad_d += !same_bits(quant_dequant_k(QK_FP8, q, 0, sc, dt), fq[k]);
                float dq;
                (void)quant_fake_k(QK_FP8, W[k], sc, 0, qmin, qmax, dt, &dq); /* GPTQ's f32 division */
                if (dt == DS_DTYPE_F32) bad_f += !same_bits(dq, fq[k]);
            }
        CHECK_EQ_INT(bad_s, 0);
        CHECK_EQ_INT(bad_c, 0);
        CHECK_EQ_INT(bad_d, 0);
        CHECK_EQ_INT(bad_f, 0);
        /* the on-disk weight_scale layout (block: one per tile) */
        scheme_tensor_spec spec[SCHEME_MAX_TENSORS];
        CHECK_EQ_INT(scheme_tensors(&a, dt, out, in, spec), 2);
        CHECK_EQ_INT((int)(spec[1].nbytes / ds_dtype_size(dt)), (int)nsc);
        free(s); free(W); free(want_s); free(fq);
        gold_close(&g);
    }
}

static void test_act(const char *dtn) {
    static char name[128];
    char path[256];
    snprintf(path, sizeof path, GOLD_DIR "act_%s.safetensors", dtn);
    snprintf(name, sizeof name, "fp8 activations %s: dynamic per token, static per tensor == compressed-tensors", dtn);
    gold g;
    TEST(name) {
        if (gold_open(path, &g)) { CHECK(0); break; }
        const ds_dtype dt = !strcmp(dtn, "bf16") ? DS_DTYPE_BF16 : !strcmp(dtn, "f16") ? DS_DTYPE_F16 : DS_DTYPE_F32;
        int64_t shp[4];
        CHECK_EQ_INT(gold_shape(&g, "x", shp), 2);
        const int T = (int)shp[0], n = (int)shp[1];
        float *x = gold_f32(&g, "x", NULL), *fq = gold_f32(&g, "fq", NULL), *fqs = gold_f32(&g, "fqs", NULL);
        float *s = gold_f32(&g, "s", NULL);
        CHECK(x && fq && fqs && s);
        if (!x || !fq || !fqs || !s) { free(x); free(fq); free(fqs); free(s); gold_close(&g); break; }
        const quant_args tok = {.num_bits = 8, .type = QT_FLOAT, .symmetric = 1, .strategy = QS_TOKEN,
                                .group_size = -1, .dynamic = QD_DYNAMIC};
        const quant_args ten = {.num_bits = 8, .type = QT_FLOAT, .symmetric = 1, .strategy = QS_TENSOR,
                                .group_size = -1};
        CHECK(scheme_act_supported(&tok) && scheme_act_supported(&ten));
        float *y = xmalloc(sizeof(float) * (size_t)T * n);
        memcpy(y, x, sizeof(float) * (size_t)T * n);
        scheme_act_fake(&tok, NULL, y, T, n, dt);
        int bad = 0;
        for (size_t i = 0; i < (size_t)T * n; i++) bad += !same_bits(y[i], fq[i]);
        CHECK_EQ_INT(bad, 0);
        memcpy(y, x, sizeof(float) * (size_t)T * n);
        scheme_act_fake(&ten, s, y, T, n, dt);
        bad = 0;
        for (size_t i = 0; i < (size_t)T * n; i++) bad += !same_bits(y[i], fqs[i]);
        CHECK_EQ_INT(bad, 0);
        free(y); free(x); free(fq); free(fqs); free(s);
        gold_close(&g);
    }
}

int main(void) {
    test_cast();
    const char *dts[] = {"f32", "bf16", "f16"}, *strats[] = {"tensor", "channel", "block"};
    for (int d = 0; d < 3; d++) {
        for (int k = 0; k < 3; k++) test_weights(dts[d], strats[k]);
        test_act(dts[d]);
    }
    (void)g_cases;
    return TEST_REPORT();
}
