/*
 * test_batch.c - the micro-batched CPU forward (model.c layer_forward_batch,
 * cpu_engine.c) against the per-sequence forward (layer_forward of one
 * sequence at a time, the path before micro-batching):
 *  - sequences of different lengths (1 .. 64 tokens) in one micro-batch and
 *    split over several: the layer output (propagate: no capture), the output
 *    with capture, and the Hessian sums and token/sequence counts captured
 *    per sequence (hessian_accum_cpu, f64), for every captured input;
 *  - bit for bit, sequences of 1 to 64 tokens, on a model of realistic
 *    width (gen_model llama f32, hidden 384) and on tiny ones (the bundled
 *    stories260K, Llama f32, hidden 64; gen_model Qwen3 bf16 with q/k norm;
 *    Qwen2-MoE bf16 with a shared expert, all-experts and routed-only
 *    calibration): matmul_seq_forward_cpu gives each sequence its own
 *    GEMM calls (OpenBLAS's kernels give a row other bits at another
 *    position within a call: its Zen kernels off a 12-row grid, its
 *    SkylakeX small-matrix kernel for short products);
 *  - with 1 and 2 host/BLAS threads (the -np 2 and -np 1 settings on 2 cores);
 *  - the CPU engine over more than one micro-batch (12 samples, over 4096
 *    tokens, the wide model in f32 and bf16): calibrate's Hessian sums and
 *    counts and propagate's residual stream (kept in the model dtype by the
 *    engine, in f32 by the reference), bit for bit.
 * Needs BUILD/gen_model (BUILD default "build").
 */
#include "engine.h"
#include "model.h"
#include "ops_cpu.h"
#include "test.h"

#include <cblas.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_tmp[256], g_gen[512];

/* Hessian capture with the CPU engine's arithmetic (hessian_accum_cpu per capture). */
typedef struct hcap {
    const model_config *c;
    double **H;    /* [num_inputs] -> [n, n] */
    int64_t *cnt;  /* [2 * num_inputs]: tokens, sequences */
    float *scr;
} hcap;

static void cap_fn(void *p, int id, const float *X, int nseq, const int *T, int n) {
    hcap *h = p;
    hessian_accum_cpu(h->H[id], X, nseq, T, n, h->scr);
    for (int s = 0; s < nseq; s++) {
        h->cnt[2 * id] += T[s];
        h->cnt[2 * id + 1] += T[s] > 0;
    }
}

static void hcap_init(hcap *h, const model_config *c) {
    const int ni = model_num_inputs(c);
    int nmax = 0;
    h->c = c;
    h->H = calloc((size_t)ni, sizeof(double *));
    h->cnt = calloc(2 * (size_t)ni, sizeof(int64_t));
    for (int i = 0; i < ni; i++) {
        const int n = model_input_dim(c, i);
        nmax = n > nmax ? n : nmax;
        h->H[i] = calloc((size_t)n * n, sizeof(double));
    }
    h->scr = malloc(sizeof(float) * (size_t)nmax * nmax);
}

static void hcap_free(hcap *h) {
    for (int i = 0; i < model_num_inputs(h->c); i++) free(h->H[i]);
    free(h->H);
    free(h->cnt);
    free(h->scr);
}

/* 1 if every count and every Hessian sum of a and b is identical (bit for
 * bit); else reports the largest difference against the largest entry. */
static int hcap_same(const hcap *a, const hcap *b) {
    int same = 1;
    for (int i = 0; i < model_num_inputs(a->c); i++) {
        const size_t n = (size_t)model_input_dim(a->c, i);
        double mx = 0, worst = 0;
        for (size_t k = 0; k < n * n; k++) mx = fabs(a->H[i][k]) > mx ? fabs(a->H[i][k]) : mx;
        for (size_t k = 0; k < n * n; k++) worst = fabs(a->H[i][k] - b->H[i][k]) > worst ? fabs(a->H[i][k] - b->H[i][k]) : worst;
        const int h_ok = memcmp(a->H[i], b->H[i], sizeof(double) * n * n) == 0;
        if (!h_ok) fprintf(stderr, "  input %d: Hessian sums differ by up to %.3g (largest entry %.3g)\n", i, worst, mx);
        if (!h_ok || a->cnt[2 * i] != b->cnt[2 * i] ||
            a->cnt[2 * i + 1] != b->cnt[2 * i + 1]) {
            fprintf(stderr, "  input %d differs (tokens %lld vs %lld, sequences %lld vs %lld)\n", i,
                    (long long)a->cnt[2 * i], (long long)b->cnt[2 * i], (long long)a->cnt[2 * i + 1],
                    (long long)b->cnt[2 * i + 1]);
            same = 0;
        }
    }
    return same;
}

static int64_t hcap_tokens(const hcap *h) {
    int64_t s = 0;
    for (int i = 0; i < model_num_inputs(h->c); i++) s += h->cnt[2 * i];
    return s;
}

static void set_threads(int n) {
    ds_set_threads(n);
    openblas_set_num_threads(n);
}

static uint32_t g_rng = 12345;
static int rnd(int hi) {
    g_rng = g_rng * 1664525u + 1013904223u;
    return (int)((g_rng >> 8) % (uint32_t)hi);
}

/* Rows of a and b: bit for bit. */
#define CHECK_ROWS(a, b, n) CHECK(memcmp(a, b, sizeof(float) * (n)) == 0)

/* Layer `l` of model dir: per-sequence vs micro-batched forward, with and
 * without capture, all sequences in one micro-batch and split 3 + 4, bit
 * for bit (lengths down to 1). */
static void check_layer(const char *what, const char *dir, int l, int all_experts) {
    static const int lens[] = {5, 37, 1, 64, 20, 3, 48};
    const int nseq = (int)DS_ARRAY_LEN(lens);
    for (int threads = 1; threads <= 2; threads++) {
        char name[256];
        snprintf(name, sizeof name, "%s, layer %d%s, %d thread(s): micro-batched forward == (bitwise) per-sequence forward",
                 what, l, all_experts ? "" : " (routed-only)", threads);
        TEST(name) {
            set_threads(threads);
            model m;
            layer_weights lw;
            if (model_open(dir, &m) != DS_OK) { CHECK(!"model_open"); break; }
            if (layer_load(&m, l, &lw) != DS_OK) { CHECK(!"layer_load"); model_close(&m); break; }
            layer_set_all_experts(&lw, all_experts);
            const model_config *c = &m.cfg;
            int N = 0, maxT = 0;
            for (int i = 0; i < nseq; i++) { N += lens[i]; maxT = lens[i] > maxT ? lens[i] : maxT; }
            float *x0 = malloc(sizeof(float) * (size_t)N * c->C);
            float *ref = malloc(sizeof(float) * (size_t)N * c->C), *refc = malloc(sizeof(float) * (size_t)N * c->C);
            float *got = malloc(sizeof(float) * (size_t)N * c->C);
            for (int r = 0; r < N; r++) {
                int32_t id = 3 + rnd(c->V - 3);
                CHECK(model_embed(&m, &id, 1, x0 + (size_t)r * c->C) == DS_OK);
            }
            /* reference: one sequence per call, without and with capture */
            hcap hr, hb;
            hcap_init(&hr, c);
            hcap_init(&hb, c);
            layer_scratch s1, sb;
            layer_scratch_init(&s1, c, maxT);
            memcpy(ref, x0, sizeof(float) * (size_t)N * c->C);
            memcpy(refc, x0, sizeof(float) * (size_t)N * c->C);
            for (int i = 0, r = 0; i < nseq; r += lens[i], i++) {
                layer_forward(&m, &lw, ref + (size_t)r * c->C, lens[i], &s1, NULL, NULL);
                layer_forward(&m, &lw, refc + (size_t)r * c->C, lens[i], &s1, cap_fn, &hr);
            }
            CHECK(hcap_tokens(&hr) > 0);
            /* one micro-batch of all sequences, then 3 + 4 sequences */
            layer_scratch_init_batch(&sb, c, N, maxT);
            memcpy(got, x0, sizeof(float) * (size_t)N * c->C);
            layer_forward_batch(&m, &lw, got, nseq, lens, &sb, NULL, NULL);
            CHECK_ROWS(got, ref, (size_t)N * c->C);
            memcpy(got, x0, sizeof(float) * (size_t)N * c->C);
            const int r3 = lens[0] + lens[1] + lens[2];
            layer_forward_batch(&m, &lw, got, 3, lens, &sb, cap_fn, &hb);
            layer_forward_batch(&m, &lw, got + (size_t)r3 * c->C, nseq - 3, lens + 3, &sb, cap_fn, &hb);
            /* vs the capturing reference: with all-experts calibration every
             * expert runs on all tokens, a different GEMM than routed rows */
            CHECK_ROWS(got, refc, (size_t)N * c->C);
            CHECK(hcap_same(&hr, &hb));
            layer_scratch_free(&s1);
            layer_scratch_free(&sb);
            hcap_free(&hr);
            hcap_free(&hb);
            free(x0), free(ref), free(refc), free(got);
            layer_free(&lw);
            model_close(&m);
        }
    }
    set_threads(1);
}

/* The CPU engine (micro-batches of up to 4096 tokens) vs per-sequence
 * layer_forward over two layers: Hessian sums, counts, residual stream. */
static void check_engine(const char *what, const char *dir) {
    char name[256];
    snprintf(name, sizeof name, "cpu engine, %s, 12 samples (over 4096 tokens: 2 micro-batches), 2 layers: "
             "calibrate + propagate == per-sequence (bitwise)", what);
    TEST(name) {
        set_threads(2);
        model m;
        if (model_open(dir, &m) != DS_OK) { CHECK(!"model_open"); break; }
        const model_config *c = &m.cfg;
        enum { NS = 12 };
        ds_sample smp[NS];
        int N = 0, maxT = 0;
        for (int i = 0; i < NS; i++) {
            smp[i].n = i == 4 ? 8 : 300 + 15 * i + (i % 3);
            smp[i].ids = malloc(sizeof(int32_t) * (size_t)smp[i].n);
            for (int t = 0; t < smp[i].n; t++) smp[i].ids[t] = 3 + rnd(c->V - 3);
            N += smp[i].n;
            maxT = smp[i].n > maxT ? smp[i].n : maxT;
        }
        CHECK(N > 4096);
        /* the engine keeps the stream in the model dtype, the reference in f32 */
        const size_t esz = ds_dtype_size(c->dtype);
        float *ref = malloc(sizeof(float) * (size_t)N * c->C);
        unsigned char *got = malloc(esz * N * c->C), *want = malloc(esz * N * c->C);
        float *y = malloc(sizeof(float) * (size_t)maxT * c->C);
        for (int i = 0, r = 0; i < NS; r += smp[i].n, i++)
            CHECK(model_embed(&m, smp[i].ids, smp[i].n, ref + (size_t)r * c->C) == DS_OK);
        engine *e = NULL;
        CHECK(cpu_engine_create(&m, smp, NS, &e) == DS_OK);
        layer_scratch s1;
        layer_scratch_init(&s1, c, maxT);
        const int ni = model_num_inputs(c);
        int *used = malloc(sizeof(int) * (size_t)ni);
        for (int i = 0; i < ni; i++) used[i] = 1;
        for (int l = 0; l < 2 && e; l++) {
            layer_weights lw;
            if (layer_load(&m, l, &lw) != DS_OK) { CHECK(!"layer_load"); break; }
            hcap hr, hb;
            hcap_init(&hr, c);
            hcap_init(&hb, c);
            for (int i = 0, r = 0; i < NS; r += smp[i].n, i++) { /* calibration, then propagation */
                memcpy(y, ref + (size_t)r * c->C, sizeof(float) * (size_t)smp[i].n * c->C);
                layer_forward(&m, &lw, y, smp[i].n, &s1, cap_fn, &hr);
            }
            for (int i = 0, r = 0; i < NS; r += smp[i].n, i++)
                layer_forward(&m, &lw, ref + (size_t)r * c->C, smp[i].n, &s1, NULL, NULL);
            CHECK(e->ops->load_layer(e, &lw) == DS_OK);
            CHECK(e->ops->calibrate(e, used, hb.H, hb.cnt) == DS_OK);
            e->ops->propagate(e);
            e->ops->get_residual(e, got);
            ds_convert_from_f32(want, ref, c->dtype, (size_t)N * c->C);
            CHECK(hcap_same(&hr, &hb));
            CHECK(memcmp(got, want, esz * N * c->C) == 0);
            hcap_free(&hr);
            hcap_free(&hb);
            layer_free(&lw);
        }
        if (e) e->ops->destroy(e);
        layer_scratch_free(&s1);
        for (int i = 0; i < NS; i++) free(smp[i].ids);
        free(used), free(ref), free(got), free(want), free(y);
        model_close(&m);
    }
    set_threads(1);
}

static int gen(const char *out, const char *args) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s --out %s --vocab 512 --bos 1 --eos 2 --tokenizer-from data/stories260K "
             "--threads 1 %s >%s.gen.log 2>&1", g_gen, out, args, out);
    return test_system(cmd);
}

int main(void) {
    const char *build = getenv("BUILD") ? getenv("BUILD") : "build";
    snprintf(g_gen, sizeof g_gen, "%s/gen_model", build);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/doneshot-batch-XXXXXX");
    if (!mkdtemp(g_tmp)) { perror("mkdtemp"); return 1; }
    char wide[300], wide16[300], qwen3[300], moe[300];
    snprintf(wide, sizeof wide, "%s/llama384", g_tmp);
    snprintf(wide16, sizeof wide16, "%s/llama384-bf16", g_tmp);
    snprintf(qwen3, sizeof qwen3, "%s/qwen3", g_tmp);
    snprintf(moe, sizeof moe, "%s/qwen2moe", g_tmp);
    int have_wide = 0, have_wide16 = 0, have_qwen3 = 0, have_moe = 0;
    TEST("gen_model: Llama f32 and bf16 (hidden 384), Qwen3 bf16 and Qwen2-MoE bf16 variants") {
        have_wide = gen(wide, "--arch llama --dtype f32 --hidden 384 --intermediate 512 --layers 2 --heads 6 "
                              "--kv-heads 6 --head-dim 64") == 0;
        have_wide16 = gen(wide16, "--arch llama --dtype bf16 --hidden 384 --intermediate 512 --layers 2 --heads 6 "
                                  "--kv-heads 6 --head-dim 64") == 0;
        CHECK(have_wide);
        CHECK(have_wide16);
        have_qwen3 = gen(qwen3, "--arch qwen3 --dtype bf16 --hidden 64 --intermediate 96 --layers 1 --heads 4 "
                                "--kv-heads 2 --head-dim 16") == 0;
        have_moe = gen(moe, "--arch qwen2_moe --dtype bf16 --hidden 64 --intermediate 96 --layers 1 --heads 4 "
                            "--kv-heads 2 --experts 4 --experts-per-tok 2 --moe-intermediate 32 "
                            "--shared-intermediate 48") == 0;
        CHECK(have_qwen3);
        CHECK(have_moe);
    }
    if (have_wide) {
        check_layer("llama f32 hidden 384", wide, 1, 1);
        check_engine("llama f32 hidden 384", wide);
    }
    if (have_wide16) check_engine("llama bf16 hidden 384 (bf16 residual stream)", wide16);
    check_layer("stories260K (llama f32)", "data/stories260K", 0, 1);
    check_layer("stories260K (llama f32)", "data/stories260K", 3, 1);
    if (have_qwen3) check_layer("qwen3 bf16", qwen3, 0, 1);
    if (have_moe) {
        check_layer("qwen2-moe bf16", moe, 0, 1);
        check_layer("qwen2-moe bf16", moe, 0, 0);
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
    test_system(cmd);
    return TEST_REPORT();
}
