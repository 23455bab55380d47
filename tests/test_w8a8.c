/*
 * test_w8a8.c - the INT8 W8A8 scheme: the dynamic per-token int8 activation
 * fake-quant (src/scheme.c scheme_act_fake, the W8A8 input_activations row) against compressed-tensors' forward_quantize
 * (goldens: tests/gen_actquant_golden.py), bit for bit in f32, bf16, f16.
 */
#include "scheme.h"
#include "golden.h"
#include "test.h"

#define GOLD_DIR "tests/golden/actquant/"

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
    return TEST_REPORT();
}
