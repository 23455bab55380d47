/*
 * test_ops.c - the CPU ops of src/ops_cpu.c against naive double-precision
 * references written from the HF formulas (../shared/docs/model-and-tokenizer.md
 * §2), plus the module-to-rank assignment against the worked example of
 * ../shared/docs/reference-llm-compressor.md §2.3.
 */
#include "gptq.h"
#include "ops_cpu.h"
#include "pipeline.h"
#include "test.h"

#include <float.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static double urand(void) { /* splitmix64 -> [0, 1) */
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (double)((z ^ (z >> 31)) >> 11) / 9007199254740992.0;
}
static float *rnd(size_t n, double scale) {
    float *p = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) p[i] = (float)((2 * urand() - 1) * scale);
    return p;
}

static void mark_range(void *ctx, size_t lo, size_t hi) {
    unsigned char *seen = ctx;
    for (size_t i = lo; i < hi; i++) seen[i]++;
}

/* ds_parallel_tasks: every task once, each worker's share of the threads
 * seen inside its tasks (and 1 inside their ds_parallel_for workers),
 * worker_done once per worker */
typedef struct tasks_ctx {
    pthread_mutex_t mu;
    int runs[40], share[40], nested_max, done_calls;
} tasks_ctx;

static void nested_probe(void *p, size_t lo, size_t hi) {
    tasks_ctx *c = p;
    (void)lo; (void)hi;
    pthread_mutex_lock(&c->mu);
    c->nested_max = DS_MAX(c->nested_max, ds_threads());
    pthread_mutex_unlock(&c->mu);
}

static void task_probe(void *p, size_t i) {
    tasks_ctx *c = p;
    pthread_mutex_lock(&c->mu);
    c->runs[i]++;
    c->share[i] = ds_threads();
    pthread_mutex_unlock(&c->mu);
    ds_parallel_for(64, 1, nested_probe, c);
}

static void task_done(void *p) {
    tasks_ctx *c = p;
    pthread_mutex_lock(&c->mu);
    c->done_calls++;
    pthread_mutex_unlock(&c->mu);
}

static void test_parallel_tasks(void) {
    TEST("ds_parallel_tasks runs every task once on shares of the threads; nesting runs inline") {
        const int cases[][2] = {{5, 2}, {5, 40}, {1, 7}, {3, 3}, {4, 0}};
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
            const int T = cases[k][0], n = cases[k][1];
            tasks_ctx c;
            memset(&c, 0, sizeof c);
            pthread_mutex_init(&c.mu, NULL);
            ds_set_threads(T);
            ds_parallel_tasks((size_t)n, task_probe, task_done, &c);
            const int W = DS_MIN(T, n);
            int bad = 0, low = T, high = 0;
            for (int i = 0; i < n; i++) {
                bad += c.runs[i] != 1;
                low = DS_MIN(low, c.share[i]);
                high = DS_MAX(high, c.share[i]);
            }
            CHECK_EQ_INT(bad, 0);
            CHECK_EQ_INT(c.done_calls, DS_MAX(W, 1));
            if (n) {
                CHECK(low >= T / DS_MAX(W, 1) && high <= (T + W - 1) / W); /* T / W, remainder spread */
                CHECK(c.nested_max <= high); /* a task's ds_parallel_for within its share */
            }
            CHECK_EQ_INT(ds_threads(), T); /* the caller's own budget restored */
            pthread_mutex_destroy(&c.mu);
        }
        /* a ds_parallel_for worker sees 1 thread */
        tasks_ctx c;
        memset(&c, 0, sizeof c);
        pthread_mutex_init(&c.mu, NULL);
        ds_set_threads(4);
        ds_parallel_for(4, 1, nested_probe, &c);
        CHECK_EQ_INT(c.nested_max, 1);
        CHECK_EQ_INT(ds_threads(), 4);
        pthread_mutex_destroy(&c.mu);
        ds_set_threads(1);
    }
}

static void test_parallel_for(void) {
    TEST("ds_parallel_for covers every index once; threaded conversions equal serial ones") {
        const size_t n = (3u << 20) + 7;
        unsigned char *seen = calloc(n, 1);
        ds_set_threads(5);
        ds_parallel_for(n, 1000, mark_range, seen);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) bad += seen[i] != 1;
        CHECK_EQ_INT(bad, 0);
        float *x = rnd(n, 3), *y1 = malloc(n * 4), *y5 = malloc(n * 4);
        uint16_t *h1 = malloc(n * 2), *h5 = malloc(n * 2);
        for (int dt = DS_DTYPE_BF16; dt <= DS_DTYPE_F16; dt++) {
            ds_set_threads(1);
            ds_convert_from_f32(h1, x, (ds_dtype)dt, n);
            CHECK(ds_convert_to_f32(y1, h1, (ds_dtype)dt, n) == DS_OK);
            ds_set_threads(5);
            ds_convert_from_f32(h5, x, (ds_dtype)dt, n);
            CHECK(ds_convert_to_f32(y5, h5, (ds_dtype)dt, n) == DS_OK);
            CHECK(memcmp(h1, h5, n * 2) == 0);
            CHECK(memcmp(y1, y5, n * 4) == 0);
            CHECK(y1[n - 1] == ds_round_to(x[n - 1], (ds_dtype)dt) && y1[12345] == ds_round_to(x[12345], (ds_dtype)dt));
        }
        ds_set_threads(1);
        free(seen); free(x); free(y1); free(y5); free(h1); free(h5);
    }
}

static void test_matmul(void) {
    TEST("matmul_forward_cpu matches a double reference (odd shapes, bias)") {
        int T = 7, in = 37, out = 13;
        float *x = rnd((size_t)T * in, 1), *w = rnd((size_t)out * in, 0.5), *b = rnd(out, 1);
        float *y = malloc(sizeof(float) * T * out);
        double *ref = malloc(sizeof(double) * T * out);
        matmul_forward_cpu(y, x, w, b, T, in, out, DS_DTYPE_F32);
        for (int t = 0; t < T; t++)
            for (int o = 0; o < out; o++) {
                double s = b[o];
                for (int i = 0; i < in; i++) s += (double)x[t * in + i] * w[o * in + i];
                ref[t * out + o] = s;
            }
        CHECK_CLOSE(y, ref, T * out, 1e-5, 1e-5);
        matmul_forward_cpu(y, x, w, b, T, in, out, DS_DTYPE_BF16);
        for (int i = 0; i < T * out; i++) CHECK(y[i] == ds_round_to(y[i], DS_DTYPE_BF16));
        CHECK_CLOSE(y, ref, T * out, 1e-4, 8e-3);
        free(x); free(w); free(b); free(y); free(ref);
    }
}

static void test_rmsnorm(void) {
    TEST("rmsnorm_forward_cpu matches x*rsqrt(mean(x^2)+eps)*w") {
        int T = 5, C = 67;
        float *x = rnd((size_t)T * C, 3), *w = rnd(C, 1), *y = malloc(sizeof(float) * T * C);
        double *ref = malloc(sizeof(double) * T * C);
        rmsnorm_forward_cpu(y, x, w, T, C, 1e-5f, DS_DTYPE_F32);
        for (int t = 0; t < T; t++) {
            double ss = 0;
            for (int c = 0; c < C; c++) ss += (double)x[t * C + c] * x[t * C + c];
            double r = 1 / sqrt(ss / C + 1e-5);
            for (int c = 0; c < C; c++) ref[t * C + c] = x[t * C + c] * r * w[c];
        }
        CHECK_CLOSE(y, ref, T * C, 1e-6, 1e-5);
        free(x); free(w); free(y); free(ref);
    }
}

static void test_rope(void) {
    TEST("rope_forward_cpu rotates pairs (j, j+HS/2) by p*theta^(-2j/HS)") {
        int T = 9, NH = 3, HS = 10;
        float inv[5], *cs = malloc(sizeof(float) * T * HS), *sn = malloc(sizeof(float) * T * HS);
        for (int k = 0; k < HS / 2; k++) inv[k] = (float)(1.0 / pow(10000.0, 2.0 * k / HS));
        rope_tables_cpu(cs, sn, inv, T, HS, DS_DTYPE_F32);
        float *x = rnd((size_t)T * NH * HS, 1), *x0 = malloc(sizeof(float) * T * NH * HS);
        memcpy(x0, x, sizeof(float) * T * NH * HS);
        double *ref = malloc(sizeof(double) * T * NH * HS);
        rope_forward_cpu(x, cs, sn, T, NH, HS, DS_DTYPE_F32);
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++)
                for (int j = 0; j < HS / 2; j++) {
                    double a = t * pow(10000.0, -2.0 * j / HS);
                    const float *v = x0 + (t * NH + h) * HS;
                    ref[(t * NH + h) * HS + j] = v[j] * cos(a) - v[j + HS / 2] * sin(a);
                    ref[(t * NH + h) * HS + j + HS / 2] = v[j + HS / 2] * cos(a) + v[j] * sin(a);
                }
        CHECK_CLOSE(x, ref, T * NH * HS, 1e-5, 1e-5);
        free(cs); free(sn); free(x); free(x0); free(ref);
    }
}

static void test_attention(void) {
    /* T = 300: the score GEMM's 128-row blocks (ATT_ROWS), the last one partial */
    static const int Ts[] = {11, 300};
    for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) TEST("attention_forward_cpu: causal GQA softmax(QK^T/sqrt(HS))V") {
        int T = Ts[ti], NH = 4, NKV = 2, HS = 6;
        float *q = rnd((size_t)T * NH * HS, 1), *k = rnd((size_t)T * NKV * HS, 1), *v = rnd((size_t)T * NKV * HS, 1);
        float *o = malloc(sizeof(float) * T * NH * HS), *scr = malloc(sizeof(float) * T * T);
        double *ref = calloc((size_t)T * NH * HS, sizeof(double));
        attention_forward_cpu(o, q, k, v, T, NH, NKV, HS, DS_DTYPE_F32, scr);
        for (int h = 0; h < NH; h++) {
            int g = h / (NH / NKV);
            for (int i = 0; i < T; i++) {
                double s[512], mx = -1e300, sum = 0;
                for (int j = 0; j <= i; j++) {
                    s[j] = 0;
                    for (int e = 0; e < HS; e++) s[j] += (double)q[(i * NH + h) * HS + e] * k[(j * NKV + g) * HS + e];
                    s[j] /= sqrt((double)HS);
                    if (s[j] > mx) mx = s[j];
                }
                for (int j = 0; j <= i; j++) sum += exp(s[j] - mx);
                for (int j = 0; j <= i; j++)
                    for (int e = 0; e < HS; e++)
                        ref[(i * NH + h) * HS + e] += exp(s[j] - mx) / sum * v[(j * NKV + g) * HS + e];
            }
        }
        CHECK_CLOSE(o, ref, T * NH * HS, 1e-6, 1e-5);
        free(q); free(k); free(v); free(o); free(scr); free(ref);
    }
}

/* ulps between f and the correctly rounded double e (both finite, e >= 0):
 * |f - e| in units of the float spacing at e (subnormal spacing below FLT_MIN) */
static double ulps(float f, double e) {
    const double sp = e < FLT_MIN ? ldexp(1.0, -149) : ldexp(1.0, ilogb(e) - 23);
    return fabs((double)f - e) / sp;
}

static void test_exp_array(void) {
    TEST("exp_array_cpu: <= 2 ulp from exp() over [-104, 89] and random bit patterns; inf, NaN, signed zero") {
        enum { N = 1 << 21 };
        float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
        for (int i = 0; i < N; i++) x[i] = -104.0f + 193.0f * (float)i / (float)N; /* dense sweep */
        exp_array_cpu(y, x, N);
        double worst = 0;
        float at = 0;
        for (int i = 0; i < N; i++) {
            const double e = exp((double)x[i]);
            const double u = e > FLT_MAX ? (isinf(y[i]) ? 0 : 1e9) : ulps(y[i], e);
            if (!(u <= worst)) { worst = u; at = x[i]; }
        }
        printf("  worst %.3f ulp at x = %.9g\n", worst, (double)at);
        CHECK(worst <= 2.0);
        /* random finite bit patterns in range, at odd offsets and lengths (the tail path) */
        uint32_t st = 12345;
        for (int i = 0; i < N; i++) {
            st = st * 1664525u + 1013904223u;
            float v;
            memcpy(&v, &st, 4);
            x[i] = isfinite(v) && fabsf(v) < 100.0f ? v : (float)(st >> 8) / 16777216.0f * 190.0f - 100.0f;
        }
        exp_array_cpu(y + 3, x + 3, N - 10);
        worst = 0;
        for (int i = 3; i < N - 7; i++) {
            const double e = exp((double)x[i]);
            const double u = e > FLT_MAX ? (isinf(y[i]) ? 0 : 1e9) : ulps(y[i], e);
            if (!(u <= worst)) worst = u;
        }
        CHECK(worst <= 2.0);
        /* the same value wherever it sits: element 5 of a 7-long call == the sweep's */
        float a[7] = {-3, -2, -1, 0, 1, 0.5f, 2}, b[7];
        exp_array_cpu(b, a, 7);
        float c;
        exp_array_cpu(&c, &a[5], 1);
        CHECK(b[5] == c && b[3] == 1.0f);
        float sp[8] = {-INFINITY, INFINITY, NAN, -0.0f, 88.73f, -104.0f, -87.5f, 1e-30f}, r[8];
        exp_array_cpu(r, sp, 8);
        CHECK(r[0] == 0.0f && isinf(r[1]) && r[1] > 0 && isnan(r[2]) && r[3] == 1.0f && isinf(r[4]) && r[5] == 0.0f);
        CHECK(r[6] > 0 && r[6] < FLT_MIN && ulps(r[6], exp(-87.5)) <= 1.0); /* a subnormal, rounded */
        CHECK(r[7] == 1.0f);
        free(x); free(y);
    }
}

static void test_swiglu_residual(void) {
    TEST("swiglu and residual") {
        size_t n = 101;
        float *g = rnd(n, 4), *u = rnd(n, 2), *o = malloc(sizeof(float) * n);
        double *ref = malloc(sizeof(double) * n);
        swiglu_forward_cpu(o, g, u, n, DS_DTYPE_F32);
        for (size_t i = 0; i < n; i++) ref[i] = g[i] / (1 + exp(-(double)g[i])) * u[i];
        CHECK_CLOSE(o, ref, n, 1e-6, 1e-5);
        float *x = rnd(n, 1);
        for (size_t i = 0; i < n; i++) ref[i] = (double)x[i] + o[i];
        residual_forward_cpu(x, o, n, DS_DTYPE_F32);
        CHECK_CLOSE(x, ref, n, 1e-6, 1e-6);
        free(g); free(u); free(o); free(ref); free(x);
    }
}

static void test_hessian_accum(void) {
    TEST("hessian_accum_cpu: 2 X^T X, split across calls = one call") {
        int rows = 23, n = 19;
        float *X = rnd((size_t)rows * n, 1), *scr = malloc(sizeof(float) * n * n);
        double *H1 = calloc((size_t)n * n, sizeof(double)), *H2 = calloc((size_t)n * n, sizeof(double));
        double *ref = calloc((size_t)n * n, sizeof(double));
        const int split[2] = {10, rows - 10};
        hessian_accum_cpu(H1, X, 1, &rows, n, scr);
        hessian_mirror_cpu(H1, n);
        hessian_accum_cpu(H2, X, 1, &split[0], n, scr);
        hessian_accum_cpu(H2, X + 10 * n, 1, &split[1], n, scr);
        hessian_mirror_cpu(H2, n);
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++) ref[i * n + j] += 2.0 * X[r * n + i] * X[r * n + j];
        CHECK_CLOSE(H1, ref, n * n, 1e-5, 1e-5);
        CHECK_CLOSE(H2, ref, n * n, 1e-5, 1e-5);
        /* the same sequences (and an empty one) in one call: the same bits */
        const int three[3] = {10, 0, rows - 10};
        double *H3 = calloc((size_t)n * n, sizeof(double));
        hessian_accum_cpu(H3, X, 3, three, n, scr);
        hessian_mirror_cpu(H3, n);
        CHECK(memcmp(H2, H3, sizeof(double) * n * n) == 0);
        free(X); free(scr); free(H1); free(H2); free(H3); free(ref);
    }
}

static void test_pipeline_assign(void) {
    TEST("pipeline_assign reproduces llm-compressor's Llama-3-8B bin packing") {
        /* q k v o gate up down, weight = in_features (reference §2.3) */
        double cost[7] = {4096, 4096, 4096, 4096, 4096, 4096, 14336};
        int own[7];
        pipeline_assign(cost, 7, 2, own);
        int want2[7] = {1, 1, 1, 1, 0, 1, 0}; /* r0 = {down, gate}; r1 = {q, k, v, o, up} */
        for (int i = 0; i < 7; i++) CHECK_EQ_INT(own[i], want2[i]);
        pipeline_assign(cost, 7, 4, own);
        int want4[7] = {1, 2, 3, 1, 2, 3, 0}; /* r0 = {down}; r1 = {q, o}; r2 = {k, gate}; r3 = {v, up} */
        for (int i = 0; i < 7; i++) CHECK_EQ_INT(own[i], want4[i]);
        pipeline_assign(cost, 7, 1, own);
        for (int i = 0; i < 7; i++) CHECK_EQ_INT(own[i], 0);
    }
}

/* matmul_seq_forward_cpu: a sequence's rows get the same bits alone and
 * among others (lengths off any kernel grid: 12-row blocks on OpenBLAS's
 * Zen kernels, where a row's bits depend on its position within a call),
 * at 1 and 3 threads, and past one call's MM_ROWS (2049 rows, split in two)
 * and MM_COLS (2100 outputs, two slices). */
static void test_matmul_seq_invariance(void) {
    TEST("matmul_seq_forward_cpu: each sequence's rows as computed alone, at any thread count") {
        const int seg[5] = {37, 2049, 0, 5, 130}, nseg = 5, in = 96, out = 2100;
        int T = 0;
        for (int i = 0; i < nseg; i++) T += seg[i];
        float *x = rnd((size_t)T * in, 1), *w = rnd((size_t)out * in, 0.05), *b = rnd(out, 0.1);
        float *yb = malloc(sizeof(float) * T * out), *ys = malloc(sizeof(float) * T * out);
        for (int th = 1; th <= 3; th += 2) {
            ds_set_threads(th);
            matmul_seq_forward_cpu(yb, x, w, b, seg, nseg, in, out, DS_DTYPE_BF16);
            ds_set_threads(4 - th); /* alone, at the other thread count */
            for (int i = 0, r = 0; i < nseg; r += seg[i], i++)
                if (seg[i])
                    matmul_forward_cpu(ys + (size_t)r * out, x + (size_t)r * in, w, b, seg[i], in, out,
                                       DS_DTYPE_BF16);
            CHECK(memcmp(yb, ys, sizeof(float) * T * out) == 0);
        }
        /* and the values are the product (f64 reference, bf16 rounding) */
        double worst = 0;
        for (int t = 0; t < T; t += 97)
            for (int o = 0; o < out; o += 13) {
                double ref = b[o];
                for (int k = 0; k < in; k++) ref += (double)x[(size_t)t * in + k] * w[(size_t)o * in + k];
                worst = fmax(worst, fabs(yb[(size_t)t * out + o] - ref) / (fabs(ref) + 1e-3));
            }
        CHECK(worst < 1.0 / 128);
        ds_set_threads(1);
        free(x); free(w); free(b); free(yb); free(ys);
    }
}

/* The host threads split rows, tiles and output rows, never a sum: the
 * results at 1 and 3 threads are bit for bit the same (README
 * "Determinism"). Shapes past every split: 640 >= 512 (4 x 4 Hessian tiles), 600
 * output rows > GPTQ's 256-row chunk, 700 GEMM rows. */
static void test_thread_count_invariance(void) {
    TEST("matmul, Hessian tiles and GPTQ give the same bits at 1 and 3 threads") {
        const int T = 700, n = 640, out = 600;
        float *x = rnd((size_t)T * n, 1), *w = rnd((size_t)out * n, 0.05);
        ds_round_array(w, (size_t)out * n, DS_DTYPE_BF16); /* a bf16 model's weight */
        float *y1 = malloc(sizeof(float) * T * out), *y3 = malloc(sizeof(float) * T * out);
        float *scr = malloc(sizeof(float) * n * n);
        double *H1 = calloc((size_t)n * n, sizeof(double)), *H3 = calloc((size_t)n * n, sizeof(double));
        ds_set_threads(1);
        matmul_forward_cpu(y1, x, w, NULL, T, n, out, DS_DTYPE_BF16);
        const int seqs[2] = {512, T - 512};
        hessian_accum_cpu(H1, x, 1, &seqs[0], n, scr);
        hessian_accum_cpu(H1, x + (size_t)512 * n, 1, &seqs[1], n, scr);
        ds_set_threads(3);
        matmul_forward_cpu(y3, x, w, NULL, T, n, out, DS_DTYPE_BF16);
        hessian_accum_cpu(H3, x, 2, seqs, n, scr); /* both sequences in one call */
        CHECK(memcmp(y1, y3, sizeof(float) * T * out) == 0);
        size_t hbad = 0;
        for (int i = 0; i < n; i++)
            for (int j = i; j < n; j++) hbad += H1[(size_t)i * n + j] != H3[(size_t)i * n + j];
        CHECK_EQ_INT(hbad, 0);
        /* GPTQ W4 group 128, act-order static, on that Hessian */
        float *Hf = malloc(sizeof(float) * n * n);
        hessian_to_f32_cpu(Hf, H1, n, 2);
        quant_args a = {.num_bits = 4, .symmetric = 1, .strategy = QS_GROUP, .group_size = 128,
                        .actorder = QA_STATIC};
        gptq_result r1, r3;
        memset(&r1, 0, sizeof r1);
        memset(&r3, 0, sizeof r3);
        float *Hc = malloc(sizeof(float) * n * n);
        memcpy(Hc, Hf, sizeof(float) * n * n);
        ds_set_threads(1);
        gptq_factor_cache_clear();
        CHECK(gptq_quantize(&a, w, out, n, Hc, 128, 0.01, DS_DTYPE_BF16, &r1) == DS_OK);
        memcpy(Hc, Hf, sizeof(float) * n * n);
        ds_set_threads(3);
        gptq_factor_cache_clear();
        CHECK(gptq_quantize(&a, w, out, n, Hc, 128, 0.01, DS_DTYPE_BF16, &r3) == DS_OK);
        CHECK(memcmp(r1.q, r3.q, (size_t)out * n) == 0);
        CHECK(memcmp(r1.wq, r3.wq, sizeof(float) * out * n) == 0);
        CHECK(r1.loss == r3.loss && r1.loss > 0);
        ds_set_threads(1);
        gptq_result_free(&r1);
        gptq_result_free(&r3);
        free(x); free(w); free(y1); free(y3); free(scr); free(H1); free(H3); free(Hf); free(Hc);
    }
}

int main(void) {
    test_parallel_for();
    test_parallel_tasks();
    test_matmul_seq_invariance();
    test_thread_count_invariance();
    test_matmul();
    test_rmsnorm();
    test_rope();
    test_exp_array();
    test_attention();
    test_swiglu_residual();
    test_hessian_accum();
    test_pipeline_assign();
    return TEST_REPORT();
}
