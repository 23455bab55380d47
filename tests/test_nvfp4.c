/*
 * test_nvfp4.c - src/qfp4.h (NVFP4 scalar math) vs goldens from
 * compressed-tensors 0.19.0 / llm-compressor 0.14 (tests/gen_nvfp4_golden.py,
 * tests/golden/nvfp4/): the fp4 grid rounding (ties, +-0, saturation) and
 * codes, the float8_e4m3fn rounding (subnormals, ties, 448), the global and
 * group scales of a weight (zero group, subnormal scales) in f32/bf16/f16,
 * fake quant, the compressor's packed codes and decompress, the fused q/k/v
 * global scale, the "local" dynamic activation QDQ (saturated scales), and
 * gptq_quantize with NVFP4 weights (f32 actorder static, bf16 block 32).
 */
#include "gptq.h"
#include "qfp4.h"
#include "test.h"

#include <stdlib.h>

#include "golden.h"

#define GOLD_DIR "tests/golden/nvfp4/"

/* Raw bytes of a golden tensor of dtype dt (NULL and a failed check when absent). */
static const unsigned char *gold_raw(const gold *g, const char *name, ds_dtype dt, size_t *n) {
    const st_tensor *t = st_find(g->m, name);
    CHECK(t != NULL);
    if (!t) return NULL;
    CHECK_EQ_INT(t->dtype, dt);
    if (n) *n = t->nbytes;
    return t->data;
}

/* torch's float8_e4m3fn byte -> f32 (independent of qs_fp8_e4m3_round). */
static float f8_to_f32(unsigned char b) {
    int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    float v = e == 0 ? ldexpf((float)m, -9) : ldexpf(1.0f + m / 8.0f, e - 7);
    return s ? -v : v;
}

static int bits_eq(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

static void test_cast(void) {
    gold g;
    if (gold_open(GOLD_DIR "cast.safetensors", &g)) { TEST("cast_golden_opens") CHECK(0); return; }
    size_t n = 0, n2 = 0;
    float *x = gold_f32(&g, "fp4_x", &n), *y = gold_f32(&g, "fp4_y", NULL);
    float *un = gold_f32(&g, "fp4_unpacked", NULL);
    const unsigned char *pk = gold_raw(&g, "fp4_packed", DS_DTYPE_U8, NULL);
    TEST("fp4_round_bitwise_incl_signed_zero") {
        int bad = 0;
        for (size_t i = 0; i < n; i++)
            if (!bits_eq(qs_fp4_quant(x[i]), y[i])) {
                if (bad++ < 5) fprintf(stderr, "  x=%.9g got %g want %g\n", x[i], qs_fp4_quant(x[i]), y[i]);
            }
        CHECK_EQ_INT(bad, 0);
    }
    TEST("fp4_ties_to_even") {
        CHECK(qs_fp4_quant(0.25f) == 0.0f && qs_fp4_quant(0.75f) == 1.0f && qs_fp4_quant(1.25f) == 1.0f);
        CHECK(qs_fp4_quant(1.75f) == 2.0f && qs_fp4_quant(2.5f) == 2.0f && qs_fp4_quant(3.5f) == 4.0f);
        CHECK(qs_fp4_quant(5.0f) == 4.0f && qs_fp4_quant(7.0f) == 6.0f && qs_fp4_quant(-1e30f) == -6.0f);
        CHECK(signbit(qs_fp4_quant(-0.1f)) && !signbit(qs_fp4_quant(-0.0f)));
    }
    TEST("fp4_codes_pack_low_nibble_first") {
        int bad = 0;
        for (size_t k = 0; k + 1 < n; k += 2) {
            int c = qs_fp4_code(y[k]) | (qs_fp4_code(y[k + 1]) << 4);
            if (c != pk[k / 2]) bad++;
        }
        CHECK_EQ_INT(bad, 0);
        CHECK_EQ_INT(qs_fp4_code(-0.0f), 8);
        CHECK_EQ_INT(qs_fp4_code(6.0f), 7);
        CHECK_EQ_INT(qs_fp4_code(-1.5f), 11);
    }
    TEST("fp4_unpack_values") {
        int bad = 0;
        for (size_t k = 0; k < n; k++) {
            int c = (pk[k / 2] >> (4 * (k & 1))) & 15;
            if (!bits_eq(qs_fp4_value(c), un[k]) && !(qs_fp4_value(c) == 0 && un[k] == 0)) bad++;
        }
        CHECK_EQ_INT(bad, 0);
    }
    float *xf = gold_f32(&g, "fp8_x", &n2), *yf = gold_f32(&g, "fp8_y", NULL);
    TEST("fp8_e4m3fn_round_subnormals_ties_saturation") {
        int bad = 0;
        for (size_t i = 0; i < n2; i++)
            if (!bits_eq(qs_fp8_e4m3_round(xf[i]), yf[i])) {
                if (bad++ < 5) fprintf(stderr, "  x=%.9g got %.9g want %.9g\n", xf[i], qs_fp8_e4m3_round(xf[i]), yf[i]);
            }
        CHECK_EQ_INT(bad, 0);
        CHECK(qs_fp8_e4m3_round(1e6f) == 448.0f && qs_fp8_e4m3_round(0x1p-10f) == 0.0f);
        CHECK(qs_fp8_e4m3_round(0x1p-10f * 3) == 0x1p-8f);
    }
    TEST("global_scale_generate_gparam_rdiv_all_dtypes") {
        const char *dn[3] = {"f32", "bf16", "f16"};
        const ds_dtype dd[3] = {DS_DTYPE_F32, DS_DTYPE_BF16, DS_DTYPE_F16};
        for (int k = 0; k < 3; k++) {
            char nx[16], ny[16];
            size_t m = 0;
            snprintf(nx, sizeof nx, "gp_x_%s", dn[k]);
            snprintf(ny, sizeof ny, "gp_y_%s", dn[k]);
            float *ax = gold_f32(&g, nx, &m), *ay = gold_f32(&g, ny, NULL);
            int bad = 0;
            for (size_t i = 0; ax && ay && i < m; i++)
                if (!bits_eq(qs_nvfp4_global_scale(ax[i], (int)dd[k]), ay[i])) {
                    if (bad++ < 3) fprintf(stderr, "  %s absmax=%.9g got %.9g want %.9g\n", dn[k], ax[i],
                                           qs_nvfp4_global_scale(ax[i], (int)dd[k]), ay[i]);
                }
            CHECK(ax && ay && m > 2000);
            CHECK_EQ_INT(bad, 0);
            free(ax); free(ay);
        }
    }
    free(x); free(y); free(un); free(xf); free(yf);
    gold_close(&g);
}

static ds_dtype dt_of(const char *n) {
    return !strcmp(n, "bf16") ? DS_DTYPE_BF16 : !strcmp(n, "f16") ? DS_DTYPE_F16 : DS_DTYPE_F32;
}

static void test_weight(const char *name) {
    char path[256], tn[64];
    snprintf(path, sizeof path, GOLD_DIR "w_%s.safetensors", name);
    gold g;
    if (gold_open(path, &g)) { TEST("weight_golden_opens") CHECK(0); return; }
    const ds_dtype dt = dt_of(name);
    int64_t sh[4];
    gold_shape(&g, "W", sh);
    const int out = (int)sh[0], in = (int)sh[1], ng = in / QS_NVFP4_GROUP;
    float *W = gold_f32(&g, "W", NULL), *scale = gold_f32(&g, "scale", NULL), *gsv = gold_f32(&g, "gs", NULL);
    float *deq = gold_f32(&g, "deq", NULL), *dec = gold_f32(&g, "dec", NULL);
    const unsigned char *pk = gold_raw(&g, "packed", DS_DTYPE_U8, NULL);
    const unsigned char *s8 = gold_raw(&g, "scale_f8", DS_DTYPE_F8_E4M3, NULL);
    float absmax = 0;
    for (int i = 0; i < out * in; i++) absmax = fmaxf(absmax, fabsf(W[i]));
    const float gs = qs_nvfp4_global_scale(absmax, (int)dt);
    snprintf(tn, sizeof tn, "global_scale_%s", name);
    TEST(tn) CHECK(bits_eq(gs, gsv[0]));
    float *s = xmalloc(sizeof(float) * out * ng);
    snprintf(tn, sizeof tn, "group_scales_%s_zero_and_subnormal", name);
    TEST(tn) {
        int bad = 0, sub = 0, eps = 0;
        for (int o = 0; o < out; o++)
            for (int k = 0; k < ng; k++) {
                float am = 0;
                for (int j = 0; j < QS_NVFP4_GROUP; j++) am = fmaxf(am, fabsf(W[(size_t)o * in + k * 16 + j]));
                float v = qs_nvfp4_group_scale(am, gs, (int)dt);
                s[o * ng + k] = v;
                bad += !bits_eq(v, scale[o * ng + k]);
                bad += !bits_eq(v, f8_to_f32(s8[o * ng + k]));
                sub += v > 0 && v < 0x1p-6f;
                eps += v == 0.125f && am == 0;
            }
        CHECK_EQ_INT(bad, 0);
        CHECK(eps >= 1); /* the golden's zero group */
        if (dt == DS_DTYPE_F32) CHECK(sub >= 1);
    }
    snprintf(tn, sizeof tn, "fake_quant_codes_decompress_%s", name);
    TEST(tn) {
        int bad_deq = 0, bad_code = 0, bad_dec = 0;
        for (int o = 0; o < out; o++)
            for (int i = 0; i < in; i++) {
                const size_t e = (size_t)o * in + i;
                const float eff = qs_nvfp4_eff(s[o * ng + i / 16], gs);
                float d;
                qs_nvfp4_fake(W[e], eff, &d);
                d = qs_round_to(d, (int)dt);
                bad_deq += !bits_eq(d, deq[e]) && !(d == 0 && deq[e] == 0);
                int c = qs_nvfp4_code_from_deq(deq[e], eff);
                bad_code += c != ((pk[e / 2] >> (4 * (e & 1))) & 15);
                float w = qs_nvfp4_dequant(c, eff, (int)dt);
                bad_dec += !bits_eq(w, dec[e]) && !(w == 0 && dec[e] == 0);
            }
        float *eff = xmalloc(sizeof(float) * out * ng);
        qs_nvfp4_qparams(W, out, in, (int)dt, gs, eff);
        int bad_eff = 0;
        for (int k = 0; k < out * ng; k++) bad_eff += !bits_eq(eff[k], qs_nvfp4_eff(scale[k], gsv[0]));
        CHECK_EQ_INT(bad_eff, 0);
        free(eff);
        CHECK_EQ_INT(bad_deq, 0);
        CHECK_EQ_INT(bad_code, 0);
        CHECK_EQ_INT(bad_dec, 0);
    }
    free(W); free(scale); free(gsv); free(deq); free(dec); free(s);
    gold_close(&g);
}

static void test_fused(void) {
    gold g;
    if (gold_open(GOLD_DIR "fused.safetensors", &g)) { TEST("fused_golden_opens") CHECK(0); return; }
    const char *names[3] = {"q", "k", "v"};
    float absmax = 0;
    for (int m = 0; m < 3; m++) {
        char n[16];
        size_t cnt = 0;
        snprintf(n, sizeof n, "%s_W", names[m]);
        float *W = gold_f32(&g, n, &cnt);
        for (size_t i = 0; i < cnt; i++) absmax = fmaxf(absmax, fabsf(W[i]));
        free(W);
    }
    float *gsv = gold_f32(&g, "gs", NULL);
    const float gs = qs_nvfp4_global_scale(absmax, DS_DTYPE_F32);
    TEST("fused_qkv_share_the_max_global_scale") CHECK(bits_eq(gs, gsv[0]));
    TEST("fused_group_scales_use_the_shared_scale") {
        int bad = 0;
        for (int m = 0; m < 3; m++) {
            char n[16], ns[16];
            size_t cnt = 0;
            snprintf(n, sizeof n, "%s_W", names[m]);
            snprintf(ns, sizeof ns, "%s_scale", names[m]);
            float *W = gold_f32(&g, n, &cnt), *sc = gold_f32(&g, ns, NULL);
            for (size_t k = 0; k < cnt / 16; k++) {
                float am = 0;
                for (int j = 0; j < 16; j++) am = fmaxf(am, fabsf(W[k * 16 + j]));
                bad += !bits_eq(qs_nvfp4_group_scale(am, gs, DS_DTYPE_F32), sc[k]);
            }
            free(W); free(sc);
        }
        CHECK_EQ_INT(bad, 0);
    }
    free(gsv);
    gold_close(&g);
}

static void test_act(const char *name) {
    char path[256], tn[64];
    snprintf(path, sizeof path, GOLD_DIR "act_%s.safetensors", name);
    gold g;
    if (gold_open(path, &g)) { TEST("act_golden_opens") CHECK(0); return; }
    const ds_dtype dt = dt_of(name);
    size_t nc = 0, nx = 0;
    float *calib = gold_f32(&g, "calib", &nc), *gsv = gold_f32(&g, "gs", NULL);
    float *x = gold_f32(&g, "x", &nx), *y = gold_f32(&g, "y", NULL);
    float absmax = 0;
    for (size_t i = 0; i < nc; i++) absmax = fmaxf(absmax, fabsf(calib[i]));
    const float gs = qs_nvfp4_global_scale(absmax, (int)dt);
    snprintf(tn, sizeof tn, "input_global_scale_static_minmax_%s", name);
    TEST(tn) CHECK(bits_eq(gs, gsv[0]));
    snprintf(tn, sizeof tn, "dynamic_local_activation_qdq_%s", name);
    TEST(tn) {
        int bad = 0, sat = 0;
        for (size_t k = 0; k < nx / 16; k++) {
            float am = 0;
            for (int j = 0; j < 16; j++) am = fmaxf(am, fabsf(x[k * 16 + j]));
            const float sc = qs_nvfp4_group_scale(am, gs, (int)dt);
            sat += sc == 448.0f;
            const float eff = qs_nvfp4_eff(sc, gs);
            for (int j = 0; j < 16; j++) {
                float d;
                qs_nvfp4_fake(x[k * 16 + j], eff, &d);
                d = qs_round_to(d, (int)dt);
                if (!bits_eq(d, y[k * 16 + j]) && !(d == 0 && y[k * 16 + j] == 0)) bad++;
            }
        }
        CHECK_EQ_INT(bad, 0);
        CHECK(sat >= 1);
    }
    snprintf(tn, sizeof tn, "act_qdq_rows_%s", name);
    TEST(tn) {
        float *xc = xmalloc(sizeof(float) * nx);
        memcpy(xc, x, sizeof(float) * nx);
        qs_nvfp4_act_qdq(xc, nx / 32, 32, gs, (int)dt);
        int bad = 0;
        for (size_t i = 0; i < nx; i++) bad += !bits_eq(xc[i], y[i]) && !(xc[i] == 0 && y[i] == 0);
        CHECK_EQ_INT(bad, 0);
        free(xc);
    }
    free(calib); free(gsv); free(x); free(y);
    gold_close(&g);
}

/* GPTQ with NVFP4 weights (the fp4 code kind through gptq_quantize) vs
 * llm-compressor's quantize_weight with the observer's scale and global scale. */
static void test_gptq(const char *name) {
    char path[256], tn[80], v[64];
    snprintf(path, sizeof path, GOLD_DIR "gptq_%s.safetensors", name);
    gold g;
    if (gold_open(path, &g)) { TEST("gptq_golden_opens") CHECK(0); return; }
    gold_meta(&g, "dtype", v, sizeof v);
    const ds_dtype dt = !strcmp(v, "bfloat16") ? DS_DTYPE_BF16 : !strcmp(v, "float16") ? DS_DTYPE_F16 : DS_DTYPE_F32;
    quant_args a = {.num_bits = 4, .symmetric = 1, .strategy = QS_TENSOR_GROUP, .group_size = 16,
                    .type = QT_FLOAT, .scale_dtype_set = 1, .scale_dtype = DS_DTYPE_F8_E4M3};
    a.actorder = !strcmp(gold_meta(&g, "actorder", v, sizeof v), "static") ? QA_STATIC : QA_NONE;
    const int block = atoi(gold_meta(&g, "block_size", v, sizeof v));
    const double damp = atof(gold_meta(&g, "dampening_frac", v, sizeof v));
    int64_t sh[4];
    gold_shape(&g, "W", sh);
    const int out = (int)sh[0], in = (int)sh[1], ng = in / 16;
    size_t nHu = 0;
    float *W = gold_f32(&g, "W", NULL), *Hu = gold_f32(&g, "Hu", &nHu), *gsv = gold_f32(&g, "gs", NULL);
    float *scale = gold_f32(&g, "scale", NULL), *wq = gold_f32(&g, "wq", NULL);
    const unsigned char *pk = gold_raw(&g, "packed", DS_DTYPE_U8, NULL);
    float *H = xmalloc(sizeof(float) * (size_t)in * in);
    for (int i = 0, k = 0; i < in; i++)
        for (int j = i; j < in; j++) H[(size_t)i * in + j] = H[(size_t)j * in + i] = Hu[k++];
    gptq_result res;
    snprintf(tn, sizeof tn, "gptq_nvfp4_%s_scales_weights_codes", name);
    TEST(tn) {
        CHECK(nHu == (size_t)in * (in + 1) / 2);
        CHECK_EQ_INT(gptq_quantize(&a, W, out, in, H, block, damp, dt, &res), DS_OK);
        int bad_s = 0, bad_w = 0, bad_c = 0;
        for (int k = 0; k < out * ng; k++) bad_s += !bits_eq(res.scale[k], qs_nvfp4_eff(scale[k], gsv[0]));
        for (size_t e = 0; e < (size_t)out * in; e++) {
            const float w = qs_round_to(res.wq[e], (int)dt);
            bad_w += !bits_eq(w, wq[e]) && !(w == 0 && wq[e] == 0);
            const float eff = res.scale[(e / in) * ng + (e % in) / 16];
            bad_c += qs_nvfp4_code_from_deq(w, eff) != ((pk[e / 2] >> (4 * (e & 1))) & 15);
        }
        CHECK_EQ_INT(bad_s, 0);
        CHECK_EQ_INT(bad_w, 0);
        CHECK_EQ_INT(bad_c, 0);
        gptq_result_free(&res);
    }
    free(W); free(Hu); free(gsv); free(scale); free(wq); free(H);
    gold_close(&g);
}

int main(void) {
    test_cast();
    test_weight("f32");
    test_weight("bf16");
    test_weight("f16");
    test_fused();
    test_act("f32");
    test_act("bf16");
    test_act("f16");
    test_gptq("f32_static");
    test_gptq("bf16_none_block32");
    TEST("global_scale_all_zero_is_one") {
        CHECK(qs_nvfp4_global_scale(0.0f, DS_DTYPE_F32) == 1.0f);
        CHECK(qs_nvfp4_global_scale(0.0f, DS_DTYPE_F16) == 1.0f);
        CHECK(qs_nvfp4_global_scale(1.0f, DS_DTYPE_F32) == 2688.0f);
    }
    (void)g_cases;
    return TEST_REPORT();
}
