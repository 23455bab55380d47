/*
 * test_quant.c - src/quant.c: pack/unpack layout (bits 1..8, odd column
 * counts, the reference doc's worked words), packed words / qparams / RTN
 * codes vs goldens from compressed-tensors 0.19.0 (tests/gen_gptq_golden.py),
 * fake-quant rounding (half to even, clamp then round) and an RMSE bound.
 */
#include "quant.h"
#include "test.h"

#include <stdlib.h>

#include "golden.h"

#define GOLD_DIR "tests/golden/gptq/"

static uint64_t rng_state = 0x243f6a8885a308d3ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    return rng_state;
}
static float nrand(void) {
    double u = ((rnd() >> 11) + 1.0) / 9007199254740993.0, v = (rnd() >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

static void test_roundtrip(void) {
    TEST("pack_unpack_roundtrip_bits_1_to_8") {
        const int colss[] = {1, 3, 7, 8, 9, 31, 32, 33, 37, 64, 101};
        for (int b = 1; b <= 8; b++)
            for (size_t ci = 0; ci < DS_ARRAY_LEN(colss); ci++) {
                int rows = 3, cols = colss[ci];
                int8_t *q = xmalloc((size_t)rows * cols), *u = xmalloc((size_t)rows * cols);
                for (int i = 0; i < rows * cols; i++) q[i] = (int8_t)((int)(rnd() % (1u << b)) - (1 << (b - 1)));
                int pc = quant_packed_cols(cols, b);
                CHECK_EQ_INT(pc, (cols * b + 31) / 32);
                int32_t *p = xmalloc((size_t)rows * pc * sizeof(int32_t));
                quant_pack_rows(q, rows, cols, b, p);
                quant_unpack_rows(p, rows, cols, b, u);
                CHECK(memcmp(q, u, (size_t)rows * cols) == 0);
                /* padding bits of the last word are zero */
                int used = (cols * b) % 32;
                if (used) for (int r = 0; r < rows; r++) CHECK(((uint32_t)p[(size_t)r * pc + pc - 1] >> used) == 0);
                /* zero points along dim 0: [cols, rows] -> [ceil(cols*b/32), rows] */
                int32_t *pz = xmalloc((size_t)pc * rows * sizeof(int32_t));
                quant_pack_cols(q, cols, rows, b, pz);
                quant_unpack_cols(pz, cols, rows, b, u);
                CHECK(memcmp(q, u, (size_t)rows * cols) == 0);
                free(q); free(u); free(p); free(pz);
            }
    }
}

static void test_worked_examples(void) {
    TEST("worked_example_int4_0xD7B0F869") {
        const int8_t q[8] = {1, -2, 0, 7, -8, 3, -1, 5};
        int32_t w = 0;
        quant_pack_rows(q, 1, 8, 4, &w);
        CHECK_EQ_INT((uint32_t)w, 0xD7B0F869u);
        CHECK_EQ_INT(w, -676267927);
    }
    TEST("worked_example_int8_0x00FF7E81") {
        const int8_t q[4] = {1, -2, 127, -128};
        int32_t w = 0;
        quant_pack_rows(q, 1, 4, 8, &w);
        CHECK_EQ_INT((uint32_t)w, 0x00FF7E81u);
    }
}

static void test_pack_golden(void) {
    TEST("pack_vs_compressed_tensors_pack_to_int32") {
        gold g;
        if (gold_open(GOLD_DIR "pack.safetensors", &g) != 0) { SKIP("no golden"); continue; }
        for (int b = 1; b <= 8; b++) {
            char n1[16], n2[16];
            int64_t sh[4];
            snprintf(n1, sizeof n1, "q%d", b); snprintf(n2, sizeof n2, "p%d", b);
            size_t nq = 0, np;
            int64_t *q = gold_i64(&g, n1, &nq), *p = gold_i64(&g, n2, &np);
            CHECK(q && p && gold_shape(&g, n1, sh) == 2);
            if (!q || !p) { free(q); free(p); continue; }
            int rows = (int)sh[0], cols = (int)sh[1];
            int8_t *q8 = xmalloc(nq), *u = xmalloc(nq);
            for (size_t i = 0; i < nq; i++) q8[i] = (int8_t)q[i];
            CHECK_EQ_INT(np, (size_t)rows * quant_packed_cols(cols, b));
            int32_t *mine = xmalloc(np * sizeof(int32_t));
            quant_pack_rows(q8, rows, cols, b, mine);
            size_t bad = 0;
            for (size_t i = 0; i < np; i++) bad += mine[i] != (int32_t)p[i];
            CHECK_EQ_INT(bad, 0);
            for (size_t i = 0; i < np; i++) mine[i] = (int32_t)p[i];
            quant_unpack_rows(mine, rows, cols, b, u);
            CHECK(memcmp(u, q8, nq) == 0);
            free(q); free(p); free(q8); free(u); free(mine);
            /* dim-0 packing (zero points) */
            snprintf(n1, sizeof n1, "zq%d", b); snprintf(n2, sizeof n2, "zp%d", b);
            q = gold_i64(&g, n1, &nq); p = gold_i64(&g, n2, &np);
            CHECK(q && p && gold_shape(&g, n1, sh) == 2);
            if (!q || !p) { free(q); free(p); continue; }
            rows = (int)sh[0]; cols = (int)sh[1];
            q8 = xmalloc(nq);
            for (size_t i = 0; i < nq; i++) q8[i] = (int8_t)q[i];
            CHECK_EQ_INT(np, (size_t)quant_packed_cols(rows, b) * cols);
            mine = xmalloc(np * sizeof(int32_t));
            quant_pack_cols(q8, rows, cols, b, mine);
            bad = 0;
            for (size_t i = 0; i < np; i++) bad += mine[i] != (int32_t)p[i];
            CHECK_EQ_INT(bad, 0);
            free(q); free(p); free(q8); free(mine);
        }
        gold_close(&g);
    }
}


static void test_case_golden(const char *name) {
    static char tname[160];
    snprintf(tname, sizeof tname, "qparams_pack_golden_%s", name);
    TEST(tname) {
        char path[256];
        snprintf(path, sizeof path, GOLD_DIR "%s.safetensors", name);
        gold g;
        if (gold_open(path, &g) != 0) { SKIP("no golden"); continue; }
        ds_dtype dt;
        quant_args a = gold_quant_args(&g, &dt);
        int64_t sh[4];
        gold_shape(&g, "W", sh);
        int out = (int)sh[0], in = (int)sh[1], ng = quant_num_groups(&a, in);
        int gs = a.strategy == QS_GROUP ? a.group_size : in;
        size_t nW = 0, ns = 0, nz = 0, nc = 0, np = 0, nrc = 0, nrw = 0;
        float *W = gold_f32(&g, "W", &nW), *scale = gold_f32(&g, "scale", &ns);
        float *rtn_wq = gold_f32(&g, "rtn_wq", &nrw);
        int64_t *zp = gold_i64(&g, "zp", &nz), *codes = gold_i64(&g, "codes", &nc);
        int64_t *packed = gold_i64(&g, "packed", &np), *rtn_codes = gold_i64(&g, "rtn_codes", &nrc);
        CHECK(W && scale && zp && codes && packed && rtn_codes && rtn_wq);
        CHECK_EQ_INT(ns, (size_t)out * ng);
        /* qparams bitwise */
        float *s = xmalloc(ns * sizeof(float));
        int *z = xcalloc(ns, sizeof(int));
        quant_minmax_qparams(&a, W, out, in, dt, s, a.symmetric ? NULL : z);
        size_t bad_s = 0, bad_z = 0;
        for (size_t i = 0; i < ns; i++) {
            bad_s += memcmp(&s[i], &scale[i], sizeof(float)) != 0;
            bad_z += z[i] != zp[i];
        }
        CHECK_EQ_INT(bad_s, 0);
        CHECK_EQ_INT(bad_z, 0);
        /* RTN codes and dequant as compressed-tensors quantize()/fake_quantize() of W */
        int qmin, qmax;
        quant_range(&a, &qmin, &qmax);
        size_t bad_c = 0, bad_w = 0;
        for (int r = 0; r < out; r++)
            for (int c = 0; c < in; c++) {
                size_t k = (size_t)r * in + c, kg = (size_t)r * ng + c / gs;
                int q = quant_code_from_deq(W[k], s[kg], z[kg], qmin, qmax, dt);
                bad_c += q != rtn_codes[k];
                bad_w += ds_round_to((float)(q - z[kg]) * s[kg], dt) != rtn_wq[k];
            }
        CHECK_EQ_INT(bad_c, 0);
        CHECK_EQ_INT(bad_w, 0);
        /* packed words of the golden codes */
        int8_t *q8 = xmalloc(nc);
        for (size_t i = 0; i < nc; i++) q8[i] = (int8_t)codes[i];
        int pc = quant_packed_cols(in, a.num_bits);
        CHECK_EQ_INT(np, (size_t)out * pc);
        int32_t *p = xmalloc(np * sizeof(int32_t));
        quant_pack_rows(q8, out, in, a.num_bits, p);
        size_t bad_p = 0;
        for (size_t i = 0; i < np; i++) bad_p += p[i] != (int32_t)packed[i];
        CHECK_EQ_INT(bad_p, 0);
        if (!a.symmetric) {
            size_t nzp = 0;
            int64_t *zpp = gold_i64(&g, "zp_packed", &nzp);
            int8_t *z8 = xmalloc(ns);
            for (size_t i = 0; i < ns; i++) z8[i] = (int8_t)z[i];
            int32_t *pz = xmalloc(nzp * sizeof(int32_t));
            CHECK_EQ_INT(nzp, (size_t)quant_packed_cols(out, a.num_bits) * ng);
            quant_pack_cols(z8, out, ng, a.num_bits, pz);
            size_t bad_zp = 0;
            for (size_t i = 0; i < nzp; i++) bad_zp += pz[i] != (int32_t)zpp[i];
            CHECK_EQ_INT(bad_zp, 0);
            free(zpp); free(z8); free(pz);
        }
        free(W); free(scale); free(rtn_wq); free(zp); free(codes); free(packed); free(rtn_codes);
        free(s); free(z); free(q8); free(p);
        gold_close(&g);
    }
}

static void test_fake_rounding(void) {
    TEST("fake_quant_round_half_even") {
        float d;
        /* scale 1, int4 */
        CHECK_EQ_INT(quant_fake(2.5f, 1.0f, 0, -8, 7, DS_DTYPE_F32, &d), 2);
        CHECK_EQ_INT(quant_fake(3.5f, 1.0f, 0, -8, 7, DS_DTYPE_F32, &d), 4);
        CHECK_EQ_INT(quant_fake(-2.5f, 1.0f, 0, -8, 7, DS_DTYPE_F32, &d), -2);
        CHECK_EQ_INT(quant_fake(-3.5f, 1.0f, 0, -8, 7, DS_DTYPE_F32, &d), -4);
        CHECK_EQ_INT(quant_fake(0.5f, 1.0f, 0, -8, 7, DS_DTYPE_F32, &d), 0);
        CHECK_EQ_INT(quant_fake(-0.5f, 1.0f, 0, -8, 7, DS_DTYPE_F32, &d), 0);
        CHECK_EQ_INT(quant_fake(2.5000002f, 1.0f, 0, -8, 7, DS_DTYPE_F32, &d), 3);
        /* zero point added before clamp/round: 1.5 + 3 = 4.5 -> 4 */
        CHECK_EQ_INT(quant_fake(1.5f, 1.0f, 3, -8, 7, DS_DTYPE_F32, &d), 4);
        CHECK(d == 1.0f);
    }
    TEST("fake_quant_clamp_then_round") {
        float d;
        /* symmetric absmax/7.5: +absmax -> 7.5 clamps to 7, -absmax -> -8 */
        float s = ds_round_to(0.46875f / 7.5f, DS_DTYPE_BF16); /* exactly 1/16 */
        CHECK(s == 0.0625f);
        CHECK_EQ_INT(quant_fake(0.46875f, s, 0, -8, 7, DS_DTYPE_BF16, &d), 7);   /* 7.5 -> clamp 7 */
        CHECK_EQ_INT(quant_fake(-0.46875f, s, 0, -8, 7, DS_DTYPE_BF16, &d), -8); /* -7.5 -> -8 (even) */
        CHECK_EQ_INT(quant_fake(7.6f, 1.0f, 0, -8, 7, DS_DTYPE_F32, &d), 7);
        CHECK_EQ_INT(quant_fake(-9.5f, 1.0f, 0, -8, 7, DS_DTYPE_F32, &d), -8);
        CHECK_EQ_INT(quant_fake(1e30f, 1.0f, 0, -128, 127, DS_DTYPE_F32, &d), 127);
        CHECK_EQ_INT(quant_fake(-INFINITY, 1.0f, 0, -128, 127, DS_DTYPE_F32, &d), -128);
        /* dequant rounded to the scale dtype: 7 * bf16(0.3) rounded to bf16 */
        float s3 = ds_round_to(0.3f, DS_DTYPE_BF16);
        CHECK_EQ_INT(quant_fake(7 * s3, s3, 0, -8, 7, DS_DTYPE_BF16, &d), 7);
        CHECK(d == ds_round_to(7 * s3, DS_DTYPE_BF16));
    }
    TEST("qparams_sym_is_absmax_over_7_5_and_zero_scale_eps") {
        quant_args a = {.num_bits = 4, .symmetric = 1, .strategy = QS_GROUP, .group_size = 4, .actorder = QA_NONE};
        float W[8] = {0.75f, -0.5f, 0.25f, 0.0f, 0, 0, 0, 0};
        float s[2];
        quant_minmax_qparams(&a, W, 1, 8, DS_DTYPE_BF16, s, NULL);
        CHECK(s[0] == ds_round_to(0.75f / 7.5f, DS_DTYPE_BF16));
        CHECK(s[1] == 0x1p-7f); /* all-zero group -> finfo(bf16).eps */
        quant_args b = {.num_bits = 4, .symmetric = 0, .strategy = QS_CHANNEL, .group_size = -1, .actorder = QA_NONE};
        float W2[4] = {0.1f, 0.2f, 0.3f, 0.4f};
        int z;
        quant_minmax_qparams(&b, W2, 1, 4, DS_DTYPE_F32, s, &z);
        CHECK(s[0] == 0.4f / 15.0f);
        CHECK_EQ_INT(z, -8); /* min clamped to 0 -> zp = qmin */
        quant_args t = {.num_bits = 8, .symmetric = 1, .strategy = QS_TENSOR, .group_size = -1, .actorder = QA_NONE};
        float s2[2];
        quant_minmax_qparams(&t, W2, 2, 2, DS_DTYPE_F32, s2, NULL);
        CHECK(s2[0] == s2[1] && s2[0] == 0.4f / 127.5f);
    }
}

static void test_rmse(void) {
    TEST("rtn_rmse_bound") {
        /* Normal weights, int4 sym group 128 in bf16: every error <= scale/2,
         * plus the clipped +absmax (absmax/scale = 7.5 up to the bf16 rounding
         * of the scale, 2^-8 relative) and the bf16 rounding of the dequant;
         * overall RMSE <= 1.1 * mean(scale)/sqrt(12) (uniform-error model). */
        const int out = 64, in = 1024;
        quant_args a = {.num_bits = 4, .symmetric = 1, .strategy = QS_GROUP, .group_size = 128, .actorder = QA_NONE};
        float *W = xmalloc((size_t)out * in * sizeof(float));
        for (int i = 0; i < out * in; i++) W[i] = ds_round_to(0.02f * nrand(), DS_DTYPE_BF16);
        int ng = quant_num_groups(&a, in);
        float *s = xmalloc((size_t)out * ng * sizeof(float));
        quant_minmax_qparams(&a, W, out, in, DS_DTYPE_BF16, s, NULL);
        double se = 0, ssum = 0;
        int over = 0;
        for (int r = 0; r < out; r++)
            for (int c = 0; c < in; c++) {
                float sc = s[(size_t)r * ng + c / 128], d;
                quant_fake(W[(size_t)r * in + c], sc, 0, -8, 7, DS_DTYPE_BF16, &d);
                double e = (double)W[(size_t)r * in + c] - d;
                if (fabs(e) > 0.5 * sc + 8 * sc * 0x1p-8 + fabs(d) * 0x1p-8) over++;
                se += e * e;
            }
        for (int i = 0; i < out * ng; i++) ssum += s[i];
        double rmse = sqrt(se / ((double)out * in)), bound = 1.1 * (ssum / (out * ng)) / sqrt(12.0);
        printf("rtn int4 g128 rmse %.6g, bound %.6g\n", rmse, bound);
        CHECK_EQ_INT(over, 0);
        CHECK(rmse <= bound);
        free(W); free(s);
    }
}

int main(void) {
    test_roundtrip();
    test_worked_examples();
    test_pack_golden();
    for (size_t i = 0; i < DS_ARRAY_LEN(g_cases); i++) test_case_golden(g_cases[i]);
    test_fake_rounding();
    test_rmse();
    return TEST_REPORT();
}
