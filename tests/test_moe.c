/*
 * test_moe.c - mixture-of-experts end to end under mpirun:
 *  - the Mixtral variant (4 experts, top-2) quantized at -np 1, 2, 4: same
 *    checkpoint structure and int4 codes, every expert quantized with finite
 *    positive scales, routers kept unquantized and listed in "ignore";
 *  - its forward (doneshot eval) against tests/reference_forward.py
 *    (independent stdlib-Python Mixtral forward) on the same tokens;
 *  - synthetic Qwen3-MoE and Qwen2-MoE (shared expert) models from gen_model
 *    at -np 2;
 *  - routed-only calibration (run_opts.moe_routed_only, driven in-process by
 *    this binary under mpirun): experts without tokens fall back to RTN with
 *    a counted warning, no hang, no NaN.
 * Needs BUILD/doneshot, BUILD/gen_model, mpirun, python3 (the Mixtral variant
 * from tests/fixtures.py, the reference forward).
 */
#include "comm.h"
#include "gptq.h"
#include "model.h"
#include "pipeline.h"
#include "quant.h"
#include "recipe.h"
#include "safetensors.h"
#include "ckpt_compare.h"
#include "test.h"
#include "fixtures.h"

#include <math.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_tmp[256], g_bin[512], g_gen[512], g_self[512], g_mpirun[512];
/* the Mixtral fixture, and its checkpoints at -np 1, 2, 4 (made by the first test) */
static char g_mixtral[1100], g_mix[3][512];
static int g_have_mixtral;
static const int g_nps[3] = {1, 2, 4};
#define RECIPE "recipes/stories260k-w4a16.json"

static int run(const char *cmd) { return test_system(cmd); }

static int quantize(int np, const char *mdir, const char *out) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s -np %d %s --recipe %s --model %s --num-samples 32 --output %s "
             "--overwrite -q >%s.log 2>&1", g_mpirun, np, g_bin, RECIPE, mdir, out, out);
    int rc = run(cmd);
    if (rc) {
        snprintf(cmd, sizeof cmd, "tail -20 %s.log >&2", out);
        run(cmd);
    }
    return rc;
}

static int file_has(const char *path, const char *needle) {
    char *buf = NULL;
    if (ds_read_file(path, &buf, NULL) != DS_OK) return 0;
    int f = strstr(buf, needle) != NULL;
    free(buf);
    return f;
}

/* ---- in-process driver: `test_moe driver MODEL OUT` under mpirun ---- */
static int driver(const char *model_dir, const char *out) {
    comm_init(NULL, NULL);
    ds_log_set_rank(comm_rank(), comm_size());
    ds_log_set_level(DS_LOG_WARN);
    recipe r;
    model m;
    if (recipe_load(RECIPE, &r) || model_open(model_dir, &m)) DS_DIE(3, "%s", ds_errmsg());
    /* one 6-token sample on rank 0 only: most experts get no token */
    int32_t ids[6] = {1, 40, 41, 42, 43, 44};
    ds_sample s = {ids, 6};
    run_opts ro = {.out_dir = out, .overwrite = 1, .moe_routed_only = 1, .resume_interval = 1e30};
    run_stats st;
    ds_status rc = pipeline_quantize(&m, &r, &s, comm_rank() == 0 ? 1 : 0, &ro, &st);
    if (comm_rank() == 0)
        printf("driver: status %d modules %d rtn %d no_tokens %d\n", (int)rc, st.nmods, st.n_rtn, st.n_no_tokens);
    run_stats_free(&st);
    model_close(&m);
    recipe_free(&r);
    comm_finalize();
    return rc;
}

static double reference_nll(const char *mdir, const char *text, int T) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "python3 -c \"\nimport importlib.util,math,os,sys\n"
             "sp=importlib.util.spec_from_file_location('rf','tests/reference_forward.py')\n"
             "rf=importlib.util.module_from_spec(sp);sp.loader.exec_module(rf)\n"
             "cfg,T=rf.load_hf('%s');W={k:v for k,(_,_,v) in T.items()}\n"
             "hf=rf.Model(cfg,W,'hf');tok=rf.HFBPE(os.path.join('%s','tokenizer.json'))\n"
             "ids=tok.encode(open('%s',encoding='utf-8').read())[:%d];nll=0.0\n"
             "for p in range(len(ids)-1):\n"
             "  lg=hf.step(ids[p],p);m=max(lg);nll+=m+math.log(sum(math.exp(v-m) for v in lg))-lg[ids[p+1]]\n"
             "print('%%.12f'%%(nll/(len(ids)-1)))\n\" >%s/ref.txt 2>%s/ref.err",
             mdir, mdir, text, T, g_tmp, g_tmp);
    if (run(cmd) != 0) return NAN;
    char p[512];
    snprintf(p, sizeof p, "%s/ref.txt", g_tmp);
    FILE *f = fopen(p, "r");
    double v = NAN;
    if (f) { if (fscanf(f, "%lf", &v) != 1) v = NAN; fclose(f); }
    return v;
}

static double doneshot_nll(const char *mdir, const char *text, int T) {
    char cmd[4096], p[512];
    snprintf(p, sizeof p, "%s/eval.json", g_tmp);
    snprintf(cmd, sizeof cmd, "%s eval --model %s --dataset %s --seq-len %d --max-windows 1 --json -q >%s 2>&1",
             g_bin, mdir, text, T, p);
    if (run(cmd) != 0) return NAN;
    char *buf = NULL;
    double v = NAN;
    if (ds_read_file(p, &buf, NULL) == DS_OK) {
        char *k = strstr(buf, "\"nll\":");
        if (k) v = strtod(k + 6, NULL);
    }
    free(buf);
    return v;
}

static int gen(const char *out, const char *args) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s --out %s --dtype f32 --vocab 512 --bos 1 --eos 2 --tokenizer-from data/stories260K "
             "--threads 1 %s >%s.gen.log 2>&1", g_gen, out, args, out);
    return run(cmd);
}

static void test_mixtral_np124(void) {
    TEST("Mixtral 4x top-2 quantized at -np 1, 2, 4: identical structure and codes") {
        if (!g_have_mixtral) { CHECK(!"no Mixtral fixture"); }
        else {
            for (int i = 0; i < 3; i++) {
                snprintf(g_mix[i], sizeof g_mix[i], "%s/mix%d", g_tmp, g_nps[i]);
                CHECK_EQ_INT(quantize(g_nps[i], g_mixtral, g_mix[i]), 0);
            }
            for (int i = 1; i < 3; i++) {
                ckpt_cmp c = ckpt_compare(g_mix[0], g_mix[i]);
                printf("mixtral np1 vs np%d: %ld/%ld identical int4 codes over %d modules\n", g_nps[i], c.same,
                       c.codes, c.nmods);
                CHECK(c.ok);
                CHECK(c.codes > 0 && (double)c.same >= 0.999 * (double)c.codes);
                char a[600], b[600], *x = NULL, *y = NULL;
                snprintf(a, sizeof a, "%s/config.json", g_mix[0]);
                snprintf(b, sizeof b, "%s/config.json", g_mix[i]);
                CHECK(ds_read_file(a, &x, NULL) == DS_OK && ds_read_file(b, &y, NULL) == DS_OK && x && y &&
                      strcmp(x, y) == 0);
                free(x);
                free(y);
            }
        }
    }
}

static void test_mixtral_experts(void) {
    TEST("Mixtral: every expert quantized (60 expert Linears), sane scales, routers in ignore") {
        if (!g_have_mixtral) { CHECK(!"no Mixtral fixture"); }
        else {
            ckpt_cmp c = ckpt_compare(g_mix[1], g_mix[1]);
            CHECK(c.ok);
            CHECK_EQ_INT(c.nmods, 5 * (4 + 4 * 3));
            CHECK_EQ_INT(c.nexperts, 5 * 4 * 3);
            CHECK_EQ_INT(c.bad_scales, 0);
            CHECK_EQ_INT(c.constant_codes, 0);
            st_model *s = NULL;
            CHECK(st_open_dir(g_mix[1], &s) == DS_OK);
            if (s) {
                CHECK(st_find(s, "model.layers.3.block_sparse_moe.experts.3.w2.weight_packed") != NULL);
                CHECK(st_find(s, "model.layers.3.block_sparse_moe.gate.weight") != NULL); /* unquantized */
                CHECK(st_find(s, "model.layers.3.block_sparse_moe.gate.weight_packed") == NULL);
                st_close(s);
            }
            char p[600];
            snprintf(p, sizeof p, "%s/config.json", g_mix[1]);
            CHECK(file_has(p, "\"model.layers.0.block_sparse_moe.gate\""));
            CHECK(file_has(p, "\"model.layers.4.block_sparse_moe.gate\""));
            CHECK(file_has(p, "\"lm_head\""));
            snprintf(p, sizeof p, "%s.log", g_mix[0]);
            CHECK(!file_has(p, "round-to-nearest"));
        }
    }
}

static void test_mixtral_forward(void) {
    TEST("Mixtral forward (doneshot eval) matches reference_forward.py") {
        if (!g_have_mixtral) { CHECK(!"no Mixtral fixture"); }
        else if (run("python3 -c 'import sys' >/dev/null 2>&1") != 0) { CHECK(!"python3 not available"); }
        else {
            char text[600], *buf = NULL;
            snprintf(text, sizeof text, "%s/text.txt", g_tmp);
            CHECK(ds_read_file("data/tinystories_sample.txt", &buf, NULL) == DS_OK);
            if (buf) {
                FILE *f = fopen(text, "w");
                fwrite(buf, 1, 64 * 8, f); /* ~4x more than 64 tokens */
                fclose(f);
                free(buf);
            }
            double ref = reference_nll(g_mixtral, text, 64), ds = doneshot_nll(g_mixtral, text, 64);
            printf("mean NLL over 63 tokens: doneshot %.10f reference %.10f (ppl rel diff %.2e)\n", ds, ref,
                   fabs(exp(ds) - exp(ref)) / exp(ref));
            CHECK(isfinite(ref) && isfinite(ds));
            CHECK(fabs(exp(ds) - exp(ref)) <= 1e-4 * exp(ref));
            /* and the quantized checkpoint still evaluates (dequantized on load) */
            double q = doneshot_nll(g_mix[1], text, 64);
            printf("quantized checkpoint mean NLL %.4f\n", q);
            CHECK(isfinite(q) && q < ds + 1.0);
        }
    }
}

static void test_qwen_moe(void) {
    TEST("synthetic Qwen3-MoE and Qwen2-MoE (shared expert) end to end at -np 2") {
        char q3[512], q2[512], o3[600], o2[600];
        snprintf(q3, sizeof q3, "%s/qwen3moe", g_tmp);
        snprintf(q2, sizeof q2, "%s/qwen2moe", g_tmp);
        CHECK_EQ_INT(gen(q3, "--arch qwen3_moe --hidden 64 --heads 4 --kv-heads 2 --head-dim 16 --layers 2 "
                             "--experts 8 --experts-per-tok 2 --moe-intermediate 32"), 0);
        snprintf(o3, sizeof o3, "%s/qwen3moe-q", g_tmp);
        CHECK_EQ_INT(quantize(2, q3, o3), 0);
        ckpt_cmp c = ckpt_compare(o3, o3);
        CHECK(c.ok);
        CHECK_EQ_INT(c.nmods, 2 * (4 + 8 * 3));
        CHECK_EQ_INT(c.bad_scales, 0);
        char p[700];
        snprintf(p, sizeof p, "%s/config.json", o3);
        CHECK(file_has(p, "\"model.layers.1.mlp.gate\""));
        CHECK_EQ_INT(gen(q2, "--arch qwen2_moe --hidden 64 --heads 4 --kv-heads 2 --layers 2 "
                             "--experts 4 --experts-per-tok 2 --moe-intermediate 32 --shared-intermediate 48"), 0);
        snprintf(o2, sizeof o2, "%s/qwen2moe-q", g_tmp);
        CHECK_EQ_INT(quantize(2, q2, o2), 0);
        c = ckpt_compare(o2, o2);
        CHECK(c.ok);
        CHECK_EQ_INT(c.nmods, 2 * (4 + 4 * 3 + 3));
        CHECK_EQ_INT(c.bad_scales, 0);
        snprintf(p, sizeof p, "%s/config.json", o2);
        CHECK(file_has(p, "\"model.layers.0.mlp.shared_expert_gate\""));
        CHECK(file_has(p, "\"model.layers.0.mlp.gate\""));
        st_model *s = NULL;
        CHECK(st_open_dir(o2, &s) == DS_OK);
        if (s) {
            CHECK(st_find(s, "model.layers.1.mlp.shared_expert.down_proj.weight_packed") != NULL);
            CHECK(st_find(s, "model.layers.1.self_attn.q_proj.bias") != NULL);
            st_close(s);
        }
    }
}

static void test_routed_only(void) {
    TEST("routed-only calibration: experts without tokens use RTN, counted, no hang") {
        char q[512], o[600], cmd[4096];
        snprintf(q, sizeof q, "%s/qwen3moe32", g_tmp);
        CHECK_EQ_INT(gen(q, "--arch qwen3_moe --hidden 64 --heads 4 --kv-heads 2 --layers 2 "
                            "--experts 32 --experts-per-tok 1 --moe-intermediate 32"), 0);
        snprintf(o, sizeof o, "%s/routed", g_tmp);
        snprintf(cmd, sizeof cmd, "timeout 60 %s -np 2 %s driver %s %s >%s.log 2>&1", g_mpirun, g_self, q, o, o);
        CHECK_EQ_INT(run(cmd), 0);
        char p[700], *buf = NULL;
        snprintf(p, sizeof p, "%s.log", o);
        int nmods = 0, rtn = 0, none = 0;
        if (ds_read_file(p, &buf, NULL) == DS_OK) {
            char *d = strstr(buf, "driver:");
            if (d) sscanf(d, "driver: status %*d modules %d rtn %d no_tokens %d", &nmods, &rtn, &none);
        }
        printf("routed-only: %d modules, %d RTN, %d without tokens\n", nmods, rtn, none);
        CHECK_EQ_INT(nmods, 2 * (4 + 32 * 3));
        /* 6 tokens, top-1: at most 6 experts per layer see tokens */
        CHECK(none >= 2 * 3 * (32 - 6) && none < 2 * 3 * 32);
        CHECK(rtn >= none);
        CHECK(buf && strstr(buf, "no calibration token was routed") != NULL);
        free(buf);
        ckpt_cmp c = ckpt_compare(o, o);
        CHECK(c.ok);
        CHECK_EQ_INT(c.bad_scales, 0);
    }
}

/* One factorisation of a shared Hessian (gptq.c's memo): the experts'
 * gate/up solves with the same H give bit-identical results to a solve with
 * the memo cleared, hit it, and a different H (or dampening) misses. */
static void test_shared_factor(void) {
    TEST("GPTQ: one factorisation per shared Hessian, bit-identical to a fresh one") {
        enum { N = 96, O = 40, T = 300 };
        quant_args qa = {.num_bits = 4, .strategy = QS_GROUP, .group_size = 32, .symmetric = 1,
                         .actorder = QA_STATIC};
        float *X = xmalloc(sizeof(float) * T * N), *H = xmalloc(sizeof(float) * N * N),
              *H2 = xmalloc(sizeof(float) * N * N), *W[3];
        uint64_t r = 12345;
        for (int i = 0; i < T * N; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            X[i] = (float)((double)(r >> 11) / 9007199254740992.0 - 0.5) * (i % N == 7 ? 0.0f : 1.0f);
        }
        for (int a = 0; a < N; a++)
            for (int b = 0; b < N; b++) {
                double acc = 0;
                for (int t = 0; t < T; t++) acc += 2.0 * X[t * N + a] * X[t * N + b];
                H[a * N + b] = (float)(acc / T);
            }
        for (int k = 0; k < 3; k++) {
            W[k] = xmalloc(sizeof(float) * O * N);
            for (int i = 0; i < O * N; i++) {
                r = r * 6364136223846793005ull + 1442695040888963407ull;
                W[k][i] = ds_round_to((float)((double)(r >> 11) / 9007199254740992.0 - 0.5) * 0.1f, DS_DTYPE_BF16);
            }
        }
        gptq_result fresh[3], memo[3];
        for (int k = 0; k < 3; k++) { /* reference: memo cleared before each solve */
            gptq_factor_cache_clear();
            memcpy(H2, H, sizeof(float) * N * N);
            CHECK(gptq_quantize(&qa, W[k], O, N, H2, 16, 0.01, DS_DTYPE_BF16, &fresh[k]) == DS_OK);
        }
        gptq_factor_cache_clear();
        int64_t h0, m0, h1, m1;
        gptq_factor_cache_stats(&h0, &m0);
        for (int k = 0; k < 3; k++) {
            memcpy(H2, H, sizeof(float) * N * N);
            CHECK(gptq_quantize(&qa, W[k], O, N, H2, 16, 0.01, DS_DTYPE_BF16, &memo[k]) == DS_OK);
        }
        gptq_factor_cache_stats(&h1, &m1);
        CHECK_EQ_INT(h1 - h0, 2);
        CHECK_EQ_INT(m1 - m0, 1);
        for (int k = 0; k < 3; k++) {
            CHECK(memcmp(fresh[k].wq, memo[k].wq, sizeof(float) * O * N) == 0);
            CHECK(memcmp(fresh[k].q, memo[k].q, (size_t)O * N) == 0);
            CHECK(fresh[k].loss == memo[k].loss);
            CHECK(fresh[k].loss > 0);
            gptq_result_free(&fresh[k]);
            gptq_result_free(&memo[k]);
        }
        /* another dampening, then one changed entry of H: both miss */
        gptq_result x;
        memcpy(H2, H, sizeof(float) * N * N);
        CHECK(gptq_quantize(&qa, W[0], O, N, H2, 16, 0.02, DS_DTYPE_BF16, &x) == DS_OK);
        gptq_result_free(&x);
        memcpy(H2, H, sizeof(float) * N * N);
        H2[5 * N + 5] *= 1.5f;
        CHECK(gptq_quantize(&qa, W[0], O, N, H2, 16, 0.01, DS_DTYPE_BF16, &x) == DS_OK);
        gptq_result_free(&x);
        gptq_factor_cache_stats(&h0, &m0);
        CHECK_EQ_INT(h0 - h1, 0);
        CHECK_EQ_INT(m0 - m1, 2);
        gptq_factor_cache_clear();
        for (int k = 0; k < 3; k++) free(W[k]);
        free(X);
        free(H);
        free(H2);
    }
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "driver") == 0) return driver(argv[2], argv[3]);
    const char *build = getenv("BUILD") ? getenv("BUILD") : "build";
    const char *mpirun = getenv("MPIRUN") ? getenv("MPIRUN") : "mpirun --oversubscribe";
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);
    snprintf(g_bin, sizeof g_bin, "%s/doneshot", build);
    snprintf(g_gen, sizeof g_gen, "%s/gen_model", build);
    snprintf(g_self, sizeof g_self, "%s", argv[0]);
    snprintf(g_mpirun, sizeof g_mpirun, "%s", mpirun);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/doneshot-moe-XXXXXX");
    if (!mkdtemp(g_tmp)) { perror("mkdtemp"); return 1; }
    snprintf(g_mixtral, sizeof g_mixtral, "%s", fixture("models/variants/mixtral-4x-top2"));
    g_have_mixtral = ds_is_dir(g_mixtral);
    TEST("fixtures: the Mixtral variant") CHECK(g_have_mixtral);

    test_shared_factor();

    test_mixtral_np124();
    test_mixtral_experts();
    test_mixtral_forward();
    test_qwen_moe();
    test_routed_only();

    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
    if (t_failed == 0) run(cmd);
    else fprintf(stderr, "kept %s for inspection\n", g_tmp);
    return TEST_REPORT();
}
