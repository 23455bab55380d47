/*
 * test_gpu_engine.c - the CUDA engine (src/gpu_engine.c) end to end.
 *
 * Without a GPU: build/doneshot-emul runs the engine against tests/cuda_emul.c
 * (host memory poisoned with NaN, ops = the CPU twins), so everything but the
 * kernels themselves is exercised: device selection, the memory plan, chunking
 * of variable-length samples, the offload double-buffer, Hessian hand-off with
 * and without an MPI reduction, GPTQ outputs, weight installation. The twins
 * are the CPU engine's own functions, so every emulated checkpoint must equal
 * the CPU one exactly (100 % of the int codes, identical scales): a difference
 * is an orchestration bug, not rounding. Checks:
 *  - (MoE models: tests/test_moe_gpu_emul.sh)
 *  - `--device cuda` (emulated) and `--device cpu` checkpoints of a bf16 model
 *    are identical at -np 1, 2 and 4, for Llama (stories260K-bf16, generated
 *    by tests/fixtures.py) and a synthetic GQA Qwen3 (q/k norm);
 *  - offloaded and resident activations give identical checkpoints, at the
 *    same micro-batch and at micro-batch 1;
 *  - int8 channel weights (codes 16x finer than int4, so a last-bit
 *    difference of a Hessian moves some) at the planned micro-batch and at 5:
 *    identical to the CPU (the Hessian twin sums each sequence in f32, as the
 *    CPU engine, whatever the chunking);
 *  - unsupported setups are usage errors (exit 2) with a message: no device
 *    (nothing written), memory budget too small; an f32 model runs (bfloat16
 *    forward); --device auto picks the emulated engine for bf16 and f32
 *    models and falls back to the CPU with no device.
 *  - the static activation scales (GPTQ FP8 input_scale, QuantizationModifier
 *    NVFP4 input_global_scale) of the emulated engine equal the CPU ones
 *    (more in tests/test_actobs_gpu_emul.sh; here: the comparison the real-GPU
 *    test below uses).
 * With a GPU (build/doneshot built with CUDA and a device visible): the real
 * engine's checkpoint against the CPU one (>= 99 % codes: cuBLAS sums in
 * another order), and its static activation scales within 2 % of the CPU's
 * (max |x| of activations computed in another summation order: an ulp of a
 * bf16 activation, then the scale's own rounding); else those tests are
 * reported skipped, never passed, and failed with DS_REQUIRE_GPU=1.
 * `test_gpu_engine real-gpu` runs only them (make test-gpu).
 * Needs BUILD/doneshot, BUILD/doneshot-emul, BUILD/gen_model, mpirun, python3
 * (tests/fixtures.py).
 */
#include "ckpt_compare.h"
#include "common.h"
#include "test.h"
#include "fixtures.h"

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_tmp[256], g_bin[512], g_emul[512], g_gen[512], g_mpirun[512], g_model[1100];
static char g_nodev[600]; /* the emulator with no device (DS_EMUL_DEVICES=0) */

/* Every job runs under timeout(1): a heap corruption the emulator provokes
 * can leave Open MPI's signal handler deadlocked instead of exiting. */
static int run(const char *cmd) {
    char full[8192];
    snprintf(full, sizeof full, "timeout -k 10 300 sh -c '%s'", cmd);
    return test_system(full);
}

/* Quantize with `bin` on np ranks with recipe `rp` into g_tmp/tag; extra
 * args appended. Returns the exit code; the log is g_tmp/tag.log. */
static int quant_r(const char *bin, int np, const char *rp, const char *tag, const char *extra) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s -np %d %s --recipe %s --output %s/%s --overwrite %s >%s/%s.log 2>&1", g_mpirun,
             np, bin, rp, g_tmp, tag, extra, g_tmp, tag);
    int rc = run(cmd);
    if (rc) fprintf(stderr, "  %s: exit %d (log %s/%s.log)\n", tag, rc, g_tmp, tag);
    return rc;
}

/* quant_r with the bundled model's W4A16 recipe. */
static int quant(const char *bin, int np, const char *tag, const char *extra) {
    return quant_r(bin, np, "recipes/stories260k-w4a16.json", tag, extra);
}

/* quant() of the bf16 model with `args` after --model. */
static int quant_m(const char *bin, int np, const char *tag, const char *args) {
    char e[2048];
    snprintf(e, sizeof e, "--model %s %s", g_model, args);
    return quant(bin, np, tag, e);
}

static int log_has(const char *tag, const char *needle) {
    char p[512], *buf = NULL;
    snprintf(p, sizeof p, "%s/%s.log", g_tmp, tag);
    if (ds_read_file(p, &buf, NULL) != DS_OK) return 0;
    int found = strstr(buf, needle) != NULL;
    free(buf);
    return found;
}

/* Fraction of identical codes between g_tmp/a and g_tmp/b (-1: structure differs). */
static double agree(const char *a, const char *b, double *scale_rel) {
    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s/%s", g_tmp, a);
    snprintf(pb, sizeof pb, "%s/%s", g_tmp, b);
    ckpt_cmp c = ckpt_compare(pa, pb);
    if (scale_rel) *scale_rel = c.max_scale_rel;
    if (!c.ok || c.codes == 0 || c.bad_scales) return -1;
    double f = (double)c.same / (double)c.codes;
    printf("  %s vs %s: %ld/%ld codes identical (%.4f %%), max scale rel diff %.2e\n", a, b, c.same, c.codes,
           100.0 * f, c.max_scale_rel);
    return f;
}

/* The emulated engine runs the CPU engine's twins: every code and scale equal. */
static int identical(const char *a, const char *b) {
    double rel = 1;
    return agree(a, b, &rel) == 1.0 && rel == 0.0;
}

/* g_tmp/cpu1: the CPU reference checkpoint of the bf16 model at -np 1. */
static int cpu_reference(void) {
    char p[600];
    snprintf(p, sizeof p, "%s/cpu1/config.json", g_tmp);
    return ds_file_exists(p) ? 0 : quant_m(g_bin, 1, "cpu1", "--device cpu");
}

static void test_emul_np1(void) {
    TEST("emulated cuda == cpu on stories260K-bf16 (-np 1): identical codes and scales") {
        char e[1024];
        CHECK_EQ_INT(cpu_reference(), 0);
        snprintf(e, sizeof e, "--device cuda --summary %s/emul1.json", g_tmp);
        CHECK_EQ_INT(quant_m(g_emul, 1, "emul1", e), 0);
        CHECK(log_has("emul1", "host emulator"));
        CHECK(identical("cpu1", "emul1"));
    }
}

static void test_emul_np24(void) {
    TEST("emulated cuda at -np 2 and 4 (Hessians reduced on the host) == -np 1 == cpu") {
        CHECK_EQ_INT(quant_m(g_emul, 2, "emul2", "--device cuda"), 0);
        CHECK_EQ_INT(quant_m(g_emul, 4, "emul4", "--device cuda"), 0);
        CHECK(identical("emul1", "emul2"));
        CHECK(identical("emul1", "emul4"));
        CHECK(identical("cpu1", "emul2"));
    }
}

static void test_emul_offload(void) {
    TEST("offloaded activations == resident at the same micro-batch; micro-batch 1 == planned") {
        CHECK_EQ_INT(quant_m(g_emul, 1, "res5", "--device cuda --micro-batch 5"), 0);
        CHECK_EQ_INT(quant_m(g_emul, 1, "off5", "--device cuda --micro-batch 5 --offload-activations"), 0);
        CHECK(log_has("off5", "offloaded"));
        CHECK(identical("res5", "off5"));
        CHECK_EQ_INT(quant_m(g_emul, 2, "off1", "--device cuda --micro-batch 1 --offload-activations"), 0);
        CHECK(identical("emul1", "off1"));
    }
}

static void test_emul_qwen3(void) {
    TEST("synthetic GQA Qwen3 (q/k norm, bf16): emulated cuda == cpu at -np 1 and 2") {
        char cmd[2048], e[1200];
        snprintf(cmd, sizeof cmd,
                 "%s --out %s/qwen3 --arch qwen3 --hidden 64 --intermediate 160 --layers 2 --heads 4 --kv-heads 2 "
                 "--head-dim 16 --vocab 512 --dtype bf16 --tokenizer-from data/stories260K --seed 7 >%s/gen.log 2>&1",
                 g_gen, g_tmp, g_tmp);
        CHECK_EQ_INT(run(cmd), 0);
        snprintf(e, sizeof e, "--model %s/qwen3 --device cpu", g_tmp);
        CHECK_EQ_INT(quant(g_bin, 2, "qcpu", e), 0);
        snprintf(e, sizeof e, "--model %s/qwen3 --device cuda", g_tmp);
        CHECK_EQ_INT(quant(g_emul, 1, "qemul1", e), 0);
        CHECK_EQ_INT(quant(g_emul, 2, "qemul2", e), 0);
        CHECK(identical("qcpu", "qemul1"));
        CHECK(identical("qcpu", "qemul2"));
    }
}

/* g_tmp/name: a GPTQ recipe for the bf16 model with run settings `settings`
 * (JSON members) and one config group of Linear weights `weights` (JSON
 * members); its path in rp. Returns 0, or -1 when it cannot be written. */
static int write_recipe(char *rp, size_t n, const char *name, const char *settings, const char *weights) {
    snprintf(rp, n, "%s/%s", g_tmp, name);
    FILE *f = fopen(rp, "w");
    if (!f) return -1;
    fprintf(f, "{\"model\": \"%s\", \"dataset\": \"data/tinystories_sample.txt\", %s,\n"
            " \"modifiers\": [{\"GPTQModifier\": {\"ignore\": [\"lm_head\"], \"config_groups\": {\"g\": {\n"
            "  \"targets\": [\"Linear\"], \"weights\": {%s}}}}}]}\n", g_model, settings, weights);
    return fclose(f) == 0 ? 0 : -1;
}

static void test_emul_asym(void) {
    TEST("asymmetric int8 group 4 with actorder=group (zero points, g_idx): emulated cuda == cpu, -np 2") {
        char rp[512];
        CHECK_EQ_INT(write_recipe(rp, sizeof rp, "asym.json",
                                  "\"num_calibration_samples\": 48, \"max_seq_length\": 200",
                                  "\"num_bits\": 8, \"type\": \"int\", \"symmetric\": false, \"strategy\": \"group\", "
                                  "\"group_size\": 4, \"actorder\": \"group\""), 0);
        CHECK_EQ_INT(quant_r(g_bin, 2, rp, "acpu", "--device cpu"), 0);
        CHECK_EQ_INT(quant_r(g_emul, 2, rp, "aemul", "--device cuda --micro-batch 7"), 0);
        char pa[600], pb[600];
        snprintf(pa, sizeof pa, "%s/acpu", g_tmp);
        snprintf(pb, sizeof pb, "%s/aemul", g_tmp);
        st_model *a = NULL, *b = NULL;
        CHECK(st_open_dir(pa, &a) == DS_OK && st_open_dir(pb, &b) == DS_OK);
        if (a && b) { /* every tensor (packed codes, scales, zero points, g_idx) byte-identical */
            size_t diff = 0, nzp = 0, ngi = 0;
            for (size_t i = 0; i < st_count(a); i++) {
                const st_tensor *x = st_get(a, i), *y = st_find(b, x->name);
                nzp += strstr(x->name, "weight_zero_point") != NULL;
                ngi += strstr(x->name, "weight_g_idx") != NULL;
                if (!y || x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes) != 0) {
                    if (diff++ < 3) fprintf(stderr, "  differs: %s\n", x->name);
                }
            }
            printf("  asym int8 g4 actorder=group: %zu tensors, %zu differ, %zu zero-point and %zu g_idx tensors\n",
                   st_count(a), diff, nzp, ngi);
            CHECK_EQ_INT(diff, 0);
            CHECK_EQ_INT(nzp, 35);
            CHECK_EQ_INT(ngi, 35);
        }
        st_close(a);
        st_close(b);
    }
}

static void test_emul_int8(void) {
    TEST("int8 channel weights (codes 16x finer than int4: a last-bit Hessian difference moves some): "
         "emulated cuda at the planned micro-batch and at 5 == cpu, -np 1 and 2") {
        char rp[512];
        CHECK_EQ_INT(write_recipe(rp, sizeof rp, "w8.json",
                                  "\"num_calibration_samples\": 64, \"max_seq_length\": 256, \"seed\": 0",
                                  "\"num_bits\": 8, \"type\": \"int\", \"symmetric\": true, \"strategy\": \"channel\", "
                                  "\"actorder\": \"static\""), 0);
        CHECK_EQ_INT(quant_r(g_bin, 1, rp, "w8cpu", "--device cpu"), 0);
        CHECK_EQ_INT(quant_r(g_emul, 1, rp, "w8emul", "--device cuda"), 0);
        CHECK(!log_has("w8emul", "micro-batch 1 ")); /* several sequences per chunk */
        CHECK_EQ_INT(quant_r(g_emul, 2, rp, "w8emul5", "--device cuda --micro-batch 5"), 0);
        CHECK(identical("w8cpu", "w8emul"));
        CHECK(identical("w8cpu", "w8emul5"));
    }
}

static void test_unsupported(void) {
    TEST("unsupported setups are usage errors (exit 2) naming the cause") {
        /* the bundled model is float32: it runs, with the bfloat16 forward
         * (tests/test_gpu_dtype_emul.sh compares it with the CPU) */
        CHECK_EQ_INT(quant(g_emul, 2, "f32", "--device cuda"), 0);
        CHECK(log_has("f32", "float32 model, bfloat16 forward"));
        CHECK_EQ_INT(quant_m(g_emul, 1, "tiny", "--device cuda --gpu-memory 1MB"), 2);
        CHECK(log_has("tiny", "GPU memory plan needs"));
        CHECK_EQ_INT(quant_m(g_nodev, 2, "nodev", "--device cuda"), 2);
        CHECK(log_has("nodev", "no CUDA device"));
        char nod[600];
        snprintf(nod, sizeof nod, "%s/nodev", g_tmp);
        CHECK(!ds_is_dir(nod)); /* nothing written */
    }
}

static void test_auto(void) {
    TEST("--device auto: the emulated engine for bf16 and f32 models, cpu with no device") {
        CHECK_EQ_INT(quant_m(g_emul, 2, "auto_bf16", "--device auto"), 0);
        CHECK(log_has("auto_bf16", "host emulator"));
        CHECK_EQ_INT(quant(g_emul, 2, "auto_f32", ""), 0);
        CHECK(log_has("auto_f32", "host emulator"));
        CHECK(log_has("auto_f32", "float32 model, bfloat16 forward"));
        CHECK_EQ_INT(quant_m(g_nodev, 2, "autonodev", "--device auto"), 0);
        CHECK(log_has("autonodev", "device auto: cpu"));
        CHECK(!log_has("autonodev", "host emulator"));
    }
}

/* Quantize the bf16 model with `bin` on np ranks into g_tmp/tag with the
 * recipe {modifier: {scheme, targets Linear, ignore lm_head and down_proj
 * (172 columns: no NVFP4 group of 16)}} on 16 samples of 128 tokens; extra
 * args appended. Exit code. */
static int quant_scheme(const char *bin, int np, const char *tag, const char *modifier, const char *scheme,
                        const char *extra) {
    char rp[512], cmd[4096];
    snprintf(rp, sizeof rp, "%s/%s.recipe.json", g_tmp, tag);
    FILE *f = fopen(rp, "w");
    if (!f) return -1;
    fprintf(f, "{\"dataset\": \"data/tinystories_sample.txt\", \"num_calibration_samples\": 16, "
               "\"max_seq_length\": 128, \"modifiers\": [{\"%s\": {\"scheme\": \"%s\", \"targets\": "
               "[\"Linear\"], \"ignore\": [\"lm_head\", \"re:.*down_proj\"]}}]}\n", modifier, scheme);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s -np %d %s --recipe %s --model %s --output %s/%s --overwrite %s >%s/%s.log 2>&1",
             g_mpirun, np, bin, rp, g_model, g_tmp, tag, extra, g_tmp, tag);
    int rc = run(cmd);
    if (rc) fprintf(stderr, "  %s: exit %d (log %s/%s.log)\n", tag, rc, g_tmp, tag);
    return rc;
}

/* Largest relative difference of the static activation scales (every
 * *.input_scale and *.input_global_scale) of g_tmp/a and g_tmp/b; -1 when
 * the two sets differ, there is none, or a scale is not positive and finite. */
static double act_scale_rel(const char *a, const char *b) {
    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s/%s", g_tmp, a);
    snprintf(pb, sizeof pb, "%s/%s", g_tmp, b);
    st_model *ma = NULL, *mb = NULL;
    if (st_open_dir(pa, &ma) || st_open_dir(pb, &mb)) { st_close(ma); return -1; }
    double worst = 0;
    int n = 0, ok = st_count(ma) == st_count(mb);
    for (size_t i = 0; ok && i < st_count(ma); i++) {
        const st_tensor *x = st_get(ma, i), *y = st_find(mb, x->name);
        if (!ckpt_ends_with(x->name, ".input_scale") && !ckpt_ends_with(x->name, ".input_global_scale")) continue;
        float u = 0, v = 0;
        ok = y && st_numel(x) == 1 && st_numel(y) == 1 && st_to_f32(x, &u) == DS_OK && st_to_f32(y, &v) == DS_OK &&
             u > 0 && v > 0 && isfinite(u) && isfinite(v);
        if (ok) worst = DS_MAX(worst, fabs((double)u - v) / v);
        n++;
    }
    st_close(ma);
    st_close(mb);
    printf("  %s vs %s: %d static activation scales, max rel diff %.2e%s\n", a, b, n, worst, ok ? "" : " (invalid)");
    return ok && n > 0 ? worst : -1;
}

/* g_tmp/a and g_tmp/b hold byte-identical model.safetensors. */
static int identical_bytes(const char *a, const char *b) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cmp -s %s/%s/model.safetensors %s/%s/model.safetensors", g_tmp, a, g_tmp, b);
    return run(cmd) == 0;
}

static void test_emul_act_scales(void) {
    TEST("emulated cuda == cpu: static activation scales (GPTQ FP8, QuantizationModifier NVFP4)") {
        CHECK_EQ_INT(quant_scheme(g_bin, 1, "fp8cpu", "GPTQModifier", "FP8", "--device cpu"), 0);
        CHECK_EQ_INT(quant_scheme(g_emul, 2, "fp8emul", "GPTQModifier", "FP8", "--device cuda"), 0);
        CHECK(log_has("fp8emul", "host emulator"));
        CHECK(act_scale_rel("fp8cpu", "fp8emul") == 0.0);
        CHECK(identical_bytes("fp8cpu", "fp8emul"));
        CHECK_EQ_INT(quant_scheme(g_bin, 1, "nv4cpu", "QuantizationModifier", "NVFP4", "--device cpu"), 0);
        CHECK_EQ_INT(quant_scheme(g_emul, 1, "nv4emul", "QuantizationModifier", "NVFP4", "--device cuda"), 0);
        CHECK(act_scale_rel("nv4cpu", "nv4emul") == 0.0);
        CHECK(identical_bytes("nv4cpu", "nv4emul"));
    }
}

static void test_real_gpu_act_scales(void) {
    TEST("real GPU: static activation scales on cuda within 2 % of cpu (GPTQ FP8, QuantizationModifier NVFP4)") {
        int rc = quant_scheme(g_bin, 1, "fp8gpu", "GPTQModifier", "FP8", "--device cuda");
        if (rc == 2 && (log_has("fp8gpu", "no CUDA device") || log_has("fp8gpu", "built without CUDA"))) {
            SKIP_NO_GPU(log_has("fp8gpu", "no CUDA device") ? "no CUDA device" : "built without CUDA");
            break;
        }
        CHECK_EQ_INT(rc, 0);
        CHECK_EQ_INT(quant_scheme(g_bin, 1, "fp8cpu", "GPTQModifier", "FP8", "--device cpu"), 0);
        double r = act_scale_rel("fp8cpu", "fp8gpu");
        CHECK(r >= 0 && r <= 2e-2);
        CHECK_EQ_INT(quant_scheme(g_bin, 2, "nv4gpu", "QuantizationModifier", "NVFP4", "--device cuda"), 0);
        CHECK_EQ_INT(quant_scheme(g_bin, 1, "nv4cpu", "QuantizationModifier", "NVFP4", "--device cpu"), 0);
        r = act_scale_rel("nv4cpu", "nv4gpu");
        CHECK(r >= 0 && r <= 2e-2);
    }
}

static void test_real_gpu(void) {
    TEST("real GPU: cuda == cpu on stories260K-bf16 (>= 99 % identical codes)") {
        int rc = quant_m(g_bin, 1, "gpu1", "--device cuda");
        if (rc == 2 && (log_has("gpu1", "no CUDA device") || log_has("gpu1", "built without CUDA"))) {
            SKIP_NO_GPU(log_has("gpu1", "no CUDA device") ? "no CUDA device" : "built without CUDA");
            break;
        }
        CHECK_EQ_INT(rc, 0);
        CHECK_EQ_INT(cpu_reference(), 0);
        CHECK(agree("cpu1", "gpu1", NULL) >= 0.99);
        CHECK_EQ_INT(quant_m(g_bin, 2, "gpu2", "--device cuda --offload-activations --micro-batch 3"), 0);
        CHECK(agree("cpu1", "gpu2", NULL) >= 0.99);
    }
}

int main(int argc, char **argv) {
    const char *build = getenv("BUILD") ? getenv("BUILD") : "build";
    const char *mpirun = getenv("MPIRUN") ? getenv("MPIRUN") : "mpirun --oversubscribe";
    const int gpu_only = argc == 2 && strcmp(argv[1], "real-gpu") == 0;
    if (argc > 1 && !gpu_only) {
        fprintf(stderr, "usage: %s [real-gpu]\n", argv[0]);
        return 2;
    }
    snprintf(g_bin, sizeof g_bin, "%s/doneshot", build);
    snprintf(g_emul, sizeof g_emul, "%s/doneshot-emul", build);
    snprintf(g_nodev, sizeof g_nodev, "env DS_EMUL_DEVICES=0 %s", g_emul);
    snprintf(g_gen, sizeof g_gen, "%s/gen_model", build);
    snprintf(g_mpirun, sizeof g_mpirun, "%s", mpirun);
    snprintf(g_model, sizeof g_model, "%s", fixture("models/stories260K-bf16"));
    snprintf(g_tmp, sizeof g_tmp, "/tmp/ds_gpu_engine_%d", (int)getpid());
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", g_tmp);
    run(cmd);
    TEST("fixtures: stories260K-bf16") CHECK(ds_is_dir(g_model));

    if (!gpu_only) {
        test_emul_np1();
        test_emul_np24();
        test_emul_offload();
        test_emul_qwen3();
        test_emul_asym();
        test_emul_int8();
        test_unsupported();
        test_auto();
        test_emul_act_scales();
    }
    test_real_gpu();
    test_real_gpu_act_scales();

    snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
    if (!t_failed) run(cmd);
    return TEST_REPORT();
}
