/*
 * test_gpu_engine.c - the CUDA engine (src/gpu_engine.c) end to end.
 *
 * Without a GPU: build/doneshot-emul runs the engine against tests/cuda_emul.c
 * (host memory poisoned with NaN, ops = the CPU twins), so everything but the
 * kernels themselves is exercised: device selection, the memory plan, chunking
 * of variable-length samples, the offload double-buffer, Hessian hand-off with
 * and without an MPI reduction, GPTQ outputs, weight installation. Checks:
 *  - `--device cuda` (emulated) and `--device cpu` checkpoints of a bf16 model
 *    agree (>= 99 % identical int codes; issue 5's acceptance bound) at -np 1,
 *    2 and 4, for Llama (stories260K-bf16) and a synthetic GQA Qwen3 (q/k norm);
 *  - offloaded and resident activations give identical checkpoints at the same
 *    micro-batch; micro-batch 1 agrees with the planned one;
 *  - unsupported setups are usage errors (exit 2) with a message: f32 model,
 *    MoE model, no device, memory budget too small; --device auto falls back
 *    to the CPU.
 * With a GPU (build/doneshot built with CUDA and a device visible): the real
 * engine's checkpoint against the CPU one (>= 99 % codes); else that test is
 * reported skipped, never passed.
 * Needs BUILD/doneshot, BUILD/doneshot-emul, BUILD/gen_model, mpirun, and
 * ../shared/models/stories260K-bf16 (tests skip without it).
 */
#include "ckpt_compare.h"
#include "common.h"
#include "test.h"

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define BF16_MODEL "../shared/models/stories260K-bf16"

static char g_tmp[256], g_bin[512], g_emul[512], g_gen[512], g_mpirun[512];

/* Every job runs under timeout(1): a heap corruption the emulator provokes
 * can leave Open MPI's signal handler deadlocked instead of exiting. */
static int run(const char *cmd) {
    char full[8192];
    snprintf(full, sizeof full, "timeout -k 10 300 sh -c '%s'", cmd);
    return test_system(full);
}

/* Quantize with `bin` on np ranks into g_tmp/tag; extra args appended.
 * Returns the exit code; the log is g_tmp/tag.log. */
static int quant(const char *bin, int np, const char *tag, const char *extra) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "%s -np %d %s --recipe recipes/stories260k-w4a16.json --output %s/%s --overwrite %s >%s/%s.log 2>&1",
             g_mpirun, np, bin, g_tmp, tag, extra, g_tmp, tag);
    int rc = run(cmd);
    if (rc) fprintf(stderr, "  %s: exit %d (log %s/%s.log)\n", tag, rc, g_tmp, tag);
    return rc;
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

int main(void) {
    const char *build = getenv("BUILD") ? getenv("BUILD") : "build";
    const char *mpirun = getenv("MPIRUN") ? getenv("MPIRUN") : "mpirun --oversubscribe";
    snprintf(g_bin, sizeof g_bin, "%s/doneshot", build);
    snprintf(g_emul, sizeof g_emul, "%s/doneshot-emul", build);
    snprintf(g_gen, sizeof g_gen, "%s/gen_model", build);
    snprintf(g_mpirun, sizeof g_mpirun, "%s", mpirun);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/ds_gpu_engine_%d", (int)getpid());
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", g_tmp);
    run(cmd);
    const int have = ds_is_dir(BF16_MODEL);
    const char *M = "--model " BF16_MODEL;
    char qwen[1024];
    snprintf(qwen, sizeof qwen, "--model %s/qwen3", g_tmp);

    TEST("emulated cuda == cpu on stories260K-bf16 (-np 1)") {
        if (!have) { SKIP(BF16_MODEL " not present"); break; }
        char e[1024];
        snprintf(e, sizeof e, "%s --device cpu", M);
        CHECK_EQ_INT(quant(g_bin, 1, "cpu1", e), 0);
        snprintf(e, sizeof e, "%s --device cuda --summary %s/emul1.json", M, g_tmp);
        CHECK_EQ_INT(quant(g_emul, 1, "emul1", e), 0);
        CHECK(log_has("emul1", "host emulator"));
        double rel = 1;
        double f = agree("cpu1", "emul1", &rel);
        CHECK(f >= 0.99);
        CHECK(rel < 1e-2);
    }

    TEST("emulated cuda at -np 2 and 4 (Hessians reduced on the host) == -np 1") {
        if (!have) { SKIP(BF16_MODEL " not present"); break; }
        char e[1024];
        snprintf(e, sizeof e, "%s --device cuda", M);
        CHECK_EQ_INT(quant(g_emul, 2, "emul2", e), 0);
        CHECK_EQ_INT(quant(g_emul, 4, "emul4", e), 0);
        CHECK(agree("emul1", "emul2", NULL) >= 0.999);
        CHECK(agree("emul1", "emul4", NULL) >= 0.999);
        CHECK(agree("cpu1", "emul2", NULL) >= 0.99);
    }

    TEST("offloaded activations == resident at the same micro-batch; micro-batch 1 ~ planned") {
        if (!have) { SKIP(BF16_MODEL " not present"); break; }
        char e[1024];
        snprintf(e, sizeof e, "%s --device cuda --micro-batch 5", M);
        CHECK_EQ_INT(quant(g_emul, 1, "res5", e), 0);
        snprintf(e, sizeof e, "%s --device cuda --micro-batch 5 --offload-activations", M);
        CHECK_EQ_INT(quant(g_emul, 1, "off5", e), 0);
        CHECK(log_has("off5", "offloaded"));
        double rel = 1;
        CHECK(agree("res5", "off5", &rel) == 1.0);
        CHECK(rel == 0.0);
        snprintf(e, sizeof e, "%s --device cuda --micro-batch 1 --offload-activations", M);
        CHECK_EQ_INT(quant(g_emul, 2, "off1", e), 0);
        CHECK(agree("emul1", "off1", NULL) >= 0.999);
    }

    TEST("synthetic GQA Qwen3 (q/k norm, bf16): emulated cuda == cpu at -np 1 and 2") {
        snprintf(cmd, sizeof cmd,
                 "%s --out %s/qwen3 --arch qwen3 --hidden 64 --intermediate 160 --layers 2 --heads 4 --kv-heads 2 "
                 "--head-dim 16 --vocab 512 --dtype bf16 --tokenizer-from data/stories260K --seed 7 >%s/gen.log 2>&1",
                 g_gen, g_tmp, g_tmp);
        CHECK_EQ_INT(run(cmd), 0);
        char e[1200];
        snprintf(e, sizeof e, "%s --device cpu", qwen);
        CHECK_EQ_INT(quant(g_bin, 2, "qcpu", e), 0);
        snprintf(e, sizeof e, "%s --device cuda", qwen);
        CHECK_EQ_INT(quant(g_emul, 1, "qemul1", e), 0);
        CHECK_EQ_INT(quant(g_emul, 2, "qemul2", e), 0);
        CHECK(agree("qcpu", "qemul1", NULL) >= 0.99);
        CHECK(agree("qcpu", "qemul2", NULL) >= 0.99);
    }

    TEST("asymmetric int8 group 4 with actorder=group (zero points, g_idx): emulated cuda == cpu, -np 2") {
        if (!have) { SKIP(BF16_MODEL " not present"); break; }
        char rp[512], e[4096];
        snprintf(rp, sizeof rp, "%s/asym.json", g_tmp);
        FILE *f = fopen(rp, "w");
        CHECK(f != NULL);
        if (!f) break;
        fputs("{\"model\": \"" BF16_MODEL "\", \"dataset\": \"data/tinystories_sample.txt\",\n"
              " \"num_calibration_samples\": 48, \"max_seq_length\": 200,\n"
              " \"modifiers\": [{\"GPTQModifier\": {\"ignore\": [\"lm_head\"], \"config_groups\": {\"g\": {\n"
              "  \"targets\": [\"Linear\"], \"weights\": {\"num_bits\": 8, \"type\": \"int\", \"symmetric\": false,\n"
              "  \"strategy\": \"group\", \"group_size\": 4, \"actorder\": \"group\"}}}}}]}\n", f);
        fclose(f);
        snprintf(e, sizeof e, "%s -np 2 %s --recipe %s --device cpu --output %s/acpu >%s/acpu.log 2>&1",
                 g_mpirun, g_bin, rp, g_tmp, g_tmp);
        CHECK_EQ_INT(run(e), 0);
        snprintf(e, sizeof e, "%s -np 2 %s --recipe %s --device cuda --micro-batch 7 --output %s/aemul "
                 ">%s/aemul.log 2>&1", g_mpirun, g_emul, rp, g_tmp, g_tmp);
        CHECK_EQ_INT(run(e), 0);
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

    TEST("unsupported setups are usage errors (exit 2) naming the cause") {
        /* the bundled model is float32 */
        CHECK_EQ_INT(quant(g_emul, 2, "f32", "--device cuda"), 2);
        CHECK(log_has("f32", "bfloat16"));
        CHECK(log_has("f32", "hint:"));
        if (ds_is_dir("../shared/models/variants/mixtral-4x-top2")) {
            CHECK_EQ_INT(quant(g_emul, 1, "moe", "--model ../shared/models/variants/mixtral-4x-top2 --device cuda"), 2);
            CHECK(log_has("moe", "mixture-of-experts"));
        }
        if (!have) break;
        char e[1024];
        snprintf(e, sizeof e, "%s --device cuda --gpu-memory 1MB", M);
        CHECK_EQ_INT(quant(g_emul, 1, "tiny", e), 2);
        CHECK(log_has("tiny", "GPU memory plan needs"));
        snprintf(e, sizeof e, "-x DS_EMUL_DEVICES=0 %s %s --device cuda", g_emul, M);
        char c2[4096];
        snprintf(c2, sizeof c2, "%s -np 2 %s --recipe recipes/stories260k-w4a16.json --output %s/nodev >%s/nodev.log 2>&1",
                 g_mpirun, e, g_tmp, g_tmp);
        CHECK_EQ_INT(run(c2), 2);
        CHECK(log_has("nodev", "no CUDA device"));
        CHECK(!ds_is_dir("/nonexistent") && access("/tmp", F_OK) == 0);
        char nod[600];
        snprintf(nod, sizeof nod, "%s/nodev", g_tmp);
        CHECK(!ds_is_dir(nod)); /* nothing written */
    }

    TEST("--device auto: the emulated engine for a bf16 dense model, cpu for f32 and with no device") {
        if (!have) { SKIP(BF16_MODEL " not present"); break; }
        char e[1024];
        snprintf(e, sizeof e, "%s --device auto", M);
        CHECK_EQ_INT(quant(g_emul, 2, "auto_bf16", e), 0);
        CHECK(log_has("auto_bf16", "host emulator"));
        CHECK_EQ_INT(quant(g_emul, 2, "auto_f32", ""), 0);
        CHECK(log_has("auto_f32", "device auto: cpu"));
        CHECK(!log_has("auto_f32", "host emulator"));
    }

    TEST("real GPU: cuda == cpu on stories260K-bf16 (>= 99 % identical codes)") {
        if (!have) { SKIP(BF16_MODEL " not present"); break; }
        char e[1024];
        snprintf(e, sizeof e, "%s --device cuda", M);
        int rc = quant(g_bin, 1, "gpu1", e);
        if (rc == 2 && (log_has("gpu1", "no CUDA device") || log_has("gpu1", "built without CUDA"))) {
            SKIP("no CUDA device");
            break;
        }
        CHECK_EQ_INT(rc, 0);
        CHECK(agree("cpu1", "gpu1", NULL) >= 0.99);
        snprintf(e, sizeof e, "%s --device cuda --offload-activations --micro-batch 3", M);
        CHECK_EQ_INT(quant(g_bin, 2, "gpu2", e), 0);
        CHECK(agree("cpu1", "gpu2", NULL) >= 0.99);
    }

    snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
    if (!t_failed) run(cmd);
    return TEST_REPORT();
}
