/*
 * test_w8a8.c - the INT8 W8A8 schemes:
 *  - the dynamic per-token int8 activation fake-quant (src/scheme.c
 *    scheme_act_fake, the W8A8 input_activations row) against
 *    compressed-tensors' forward_quantize (goldens: tests/gen_actquant_golden.py),
 *    bit for bit in f32, bf16, f16;
 *  - static int8 per-tensor activations (recipes/w8a8-static.json): the
 *    input_scale the pipeline computes (act_absmax_cpu over the calibration
 *    batches, then qs_qparams: max|x| / 127.5) and the static fake quant
 *    against llm-compressor's static_minmax observer + calculate_qparams and
 *    compressed-tensors' forward_quantize (goldens:
 *    tests/gen_actquant_static_golden.py), bit for bit in f32, bf16, f16;
 *    hand-computed values (255 -> scale 2 exactly; 127 instead of 127.5
 *    gives 2.0079 and fails), ties to even, the clamp to [-128, 127], the
 *    int-quantized layout with input_scale [1] and no zero point.
 */
#include "scheme.h"
#include "golden.h"
#include "ops_cpu.h"
#include "qscalar.h"
#include "test.h"

#define GOLD_DIR "tests/golden/actquant/"
#define GOLD_STATIC_DIR "tests/golden/actquant_static/"

static const quant_args A_STATIC = {.num_bits = 8, .symmetric = 1, .strategy = QS_TENSOR, .group_size = -1,
                                    .dynamic = QD_STATIC};

/* The pipeline's input_scale of a static int8 per-tensor input: the observer's
 * max |x| (act_absmax_cpu, any split into batches), then calculate_qparams. */
static float static_scale(float absmax, ds_dtype dt) {
    int qmin, qmax, z;
    float s;
    quant_range(&A_STATIC, &qmin, &qmax);
    qs_qparams(1, -absmax, absmax, (int)dt, qmin, qmax, &s, &z);
    return s;
}

static void static_hand_tests(void) {
    TEST("static int8 input_scale by hand: max|x| / 127.5 (255 -> 2 exactly, eps for zeros)") {
        int qmin, qmax;
        quant_range(&A_STATIC, &qmin, &qmax);
        CHECK_EQ_INT(qmin, -128);
        CHECK_EQ_INT(qmax, 127);
        CHECK(static_scale(255.0f, DS_DTYPE_F32) == 2.0f);     /* 127 would give 2.007874 */
        CHECK(static_scale(255.0f, DS_DTYPE_F32) != 255.0f / 127.0f);
        CHECK(static_scale(1.0f, DS_DTYPE_F32) == 1.0f / 127.5f);
        CHECK(static_scale(0.0f, DS_DTYPE_F32) == 0x1p-23f);   /* torch.finfo(f32).eps */
        CHECK(static_scale(0.0f, DS_DTYPE_BF16) == 0x1p-7f);
        /* bf16: 255 and 127.5 exact, 300 / 127.5 = 2.3529 -> bf16 2.359375 */
        CHECK(static_scale(300.0f, DS_DTYPE_BF16) == 2.359375f);
    }
    TEST("static int8 fake quant by hand: scale 2, ties to even, clamp to [-128, 127]") {
        CHECK(scheme_act_supported(&A_STATIC));
        const float s = 2.0f;
        float x[] = {1.0f, 3.0f, 5.0f, -1.0f, -3.0f, 2.9f, 253.0f, 255.0f, 300.0f, -255.0f, -256.0f, -300.0f, 0.0f};
        const float want[] = {0.0f, 4.0f, 4.0f, -0.0f, -4.0f, 2.0f, 252.0f, 254.0f, 254.0f, -256.0f, -256.0f,
                              -256.0f, 0.0f};
        const int n = (int)DS_ARRAY_LEN(x);
        scheme_act_fake(&A_STATIC, &s, x, 1, n, DS_DTYPE_F32);
        CHECK_CLOSE(x, want, (size_t)n, 0, 0);
    }
    TEST("static int8 activations: int-quantized, weight I8 + weight_scale + input_scale [1], no zero point") {
        quant_args w = {.num_bits = 8, .symmetric = 1, .strategy = QS_CHANNEL, .group_size = -1,
                        .act = QACT_INPUT_SCALE};
        CHECK(scheme_format_name(&w) && !strcmp(scheme_format_name(&w), "int-quantized"));
        scheme_tensor_spec sp[SCHEME_MAX_TENSORS];
        CHECK_EQ_INT(scheme_tensors(&w, DS_DTYPE_BF16, 172, 64, sp), 3);
        CHECK(!strcmp(sp[0].suffix, "weight") && sp[0].dtype == DS_DTYPE_I8 && sp[0].shape[0] == 172 &&
              sp[0].shape[1] == 64);
        CHECK(!strcmp(sp[1].suffix, "weight_scale") && sp[1].dtype == DS_DTYPE_BF16 && sp[1].shape[1] == 1);
        CHECK(!strcmp(sp[2].suffix, "input_scale") && sp[2].dtype == DS_DTYPE_BF16 && sp[2].ndim == 1 &&
              sp[2].shape[0] == 1);
        float is = 0.25f;
        uint16_t out;
        int8_t q[1] = {0};
        float sc[1] = {1.0f};
        scheme_module m = {.q = q, .scale = sc, .out = 1, .in = 1, .dtype = DS_DTYPE_BF16, .act_scale = &is};
        scheme_encode(&w, 2, &m, &out);
        CHECK_EQ_INT(out, 0x3E80); /* bf16 0.25 */
        quant_args asym_in = A_STATIC;
        asym_in.symmetric = 0;
        CHECK(!scheme_act_supported(&asym_in)); /* asymmetric static int8: exit 2 (recipe) */
        CHECK(strstr(scheme_act_supported_list(), "int 8 static tensor") != NULL);
    }
}

static void static_golden_tests(void) {
    static const char *cases[] = {"f32", "bf16", "f16"};
    static const ds_dtype dts[] = {DS_DTYPE_F32, DS_DTYPE_BF16, DS_DTYPE_F16};
    for (int i = 0; i < 3; i++) {
        char t[128], path[128];
        snprintf(t, sizeof t, "static int8: input_scale and fake quant == llm-compressor static_minmax + "
                 "compressed-tensors (%s)", cases[i]);
        TEST(t) {
            gold g;
            snprintf(path, sizeof path, GOLD_STATIC_DIR "%s.safetensors", cases[i]);
            if (gold_open(path, &g) != 0) { SKIP("no golden"); break; }
            int64_t cs[4], xs[4];
            CHECK_EQ_INT(gold_shape(&g, "calib", cs), 3);
            CHECK_EQ_INT(gold_shape(&g, "x", xs), 2);
            size_t nc = 0, n = 0;
            float *calib = gold_f32(&g, "calib", &nc), *want_s = gold_f32(&g, "scale", NULL);
            float *x = gold_f32(&g, "x", &n), *y = gold_f32(&g, "y", NULL);
            const size_t per = (size_t)cs[1] * (size_t)cs[2];
            float am = 0.0f;
            for (int64_t b = 0; b < cs[0]; b++) am = act_absmax_cpu(am, calib + (size_t)b * per, per);
            const float s = static_scale(am, dts[i]);
            CHECK_CLOSE(&s, want_s, 1, 0, 0);
            scheme_act_fake(&A_STATIC, want_s, x, (int)xs[0], (int)xs[1], dts[i]);
            CHECK_CLOSE(x, y, n, 0, 0);
            free(calib); free(want_s); free(x); free(y);
            gold_close(&g);
        }
    }
}

int main(void) {
    (void)g_cases;
    static const char *cases[] = {"f32", "bf16", "f16"};
    static const ds_dtype dts[] = {DS_DTYPE_F32, DS_DTYPE_BF16, DS_DTYPE_F16};
    for (int i = 0; i < 3; i++) {
        char t[96], path[128];
        snprintf(t, sizeof t, "per-token int8 activation fake-quant == compressed-tensors (%s)", cases[i]);
        TEST(t) {
            gold g;
            snprintf(path, sizeof path, GOLD_DIR "%s.safetensors", cases[i]);
            if (gold_open(path, &g) != 0) { SKIP("no golden"); break; }
            int64_t shp[4];
            CHECK_EQ_INT(gold_shape(&g, "x", shp), 2);
            size_t n = 0;
            float *x = gold_f32(&g, "x", &n), *y = gold_f32(&g, "y", NULL);
            const quant_args a = {.num_bits = 8, .symmetric = 1, .strategy = QS_TOKEN, .group_size = -1,
                                  .dynamic = QD_DYNAMIC};
            CHECK(scheme_act_supported(&a));
            scheme_act_fake(&a, NULL, x, (int)shp[0], (int)shp[1], dts[i]);
            CHECK_CLOSE(x, y, n, 0, 0);
            free(x); free(y);
            gold_close(&g);
        }
    }
    static_hand_tests();
    static_golden_tests();
    return TEST_REPORT();
}
