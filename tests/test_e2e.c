/*
 * test_e2e.c - end-to-end tests of `doneshot` under mpirun: the bundled model
 * quantized at -np 1, 2 and 4 must give the same checkpoint (names, dtypes,
 * shapes, config.json; >= 99.9 % identical int codes; scales within 1e-3),
 * dequantized weights close to the originals, and bad inputs must give the
 * documented exit code on every rank without leaving a checkpoint behind.
 * Needs build/doneshot (BUILD env) and mpirun (MPIRUN env).
 */
#include "quant.h"
#include "safetensors.h"
#include "st_writer.h"
#include "ckpt_compare.h"
#include "test.h"
#include "fixtures.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_tmp[256], g_bin[512], g_mpirun[512];
/* the bundled model quantized at -np 1, 2, 4 (the first test), compared by the next ones */
static char g_out[3][512];
static const int g_nps[3] = {1, 2, 4};

static int run(const char *cmd) { return test_system(cmd); }

static int quantize(int np, const char *out, const char *extra) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "%s -np %d %s --recipe recipes/stories260k-w4a16.json --output %s --summary %s.json -q %s "
             ">%s.log 2>&1", g_mpirun, np, g_bin, out, out, extra ? extra : "", out);
    return run(cmd);
}

/* Run doneshot with args on 2 ranks; every rank records its exit code.
 * Returns the common code, or -2 if ranks disagree. */
static int run_bad(const char *args, const char *tag) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "%s -np 2 sh -c '%s %s >%s/%s.$OMPI_COMM_WORLD_RANK.log 2>&1; echo $? > %s/%s.rc.$OMPI_COMM_WORLD_RANK' "
             ">/dev/null 2>&1", g_mpirun, g_bin, args, g_tmp, tag, g_tmp, tag);
    run(cmd);
    int rc[2] = {-1, -1};
    for (int r = 0; r < 2; r++) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s.rc.%d", g_tmp, tag, r);
        FILE *f = fopen(p, "r");
        if (f) { if (fscanf(f, "%d", &rc[r]) != 1) rc[r] = -1; fclose(f); }
    }
    return rc[0] == rc[1] ? rc[0] : -2;
}

static int log_contains(const char *tag, const char *needle) {
    char p[512], *buf;
    snprintf(p, sizeof p, "%s/%s.0.log", g_tmp, tag);
    if (ds_read_file(p, &buf, NULL) != DS_OK) return 0;
    int found = strstr(buf, needle) != NULL;
    free(buf);
    return found;
}

static int same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int ok = ds_read_file(a, &x, &nx) == DS_OK && ds_read_file(b, &y, &ny) == DS_OK && nx == ny &&
             memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return ok;
}

/* Relative Frobenius error of the dequantized weights vs the original model. */
static double dequant_error(const char *ckpt, const char *orig, int *nmods) {
    st_model *q = NULL, *o = NULL;
    double worst = -1;
    *nmods = 0;
    if (st_open_dir(ckpt, &q) || st_open_dir(orig, &o)) { st_close(q); return -1; }
    for (size_t i = 0; i < st_count(q); i++) {
        const st_tensor *p = st_get(q, i);
        if (!ckpt_ends_with(p->name, ".weight_packed")) continue;
        char base[600], nm[700];
        snprintf(base, sizeof base, "%.*s", (int)(strlen(p->name) - 14), p->name);
        snprintf(nm, sizeof nm, "%s.weight_scale", base);
        const st_tensor *sc = st_find(q, nm);
        snprintf(nm, sizeof nm, "%s.weight", base);
        const st_tensor *w = st_find(o, nm);
        if (!sc || !w) { worst = 1e9; break; }
        int out = (int)w->shape[0], in = (int)w->shape[1], ng = (int)sc->shape[1];
        int8_t *qq = malloc((size_t)out * in);
        int32_t *pk = malloc(p->nbytes);
        float *s = malloc(sizeof(float) * (size_t)out * ng), *wf = malloc(sizeof(float) * (size_t)out * in);
        memcpy(pk, p->data, p->nbytes);
        quant_unpack_rows(pk, out, in, 4, qq);
        st_to_f32(sc, s);
        st_to_f32(w, wf);
        double num = 0, den = 0;
        for (int r = 0; r < out; r++)
            for (int c = 0; c < in; c++) {
                double d = (double)qq[(size_t)r * in + c] * s[(size_t)r * ng + c / (in / ng)] - wf[(size_t)r * in + c];
                num += d * d;
                den += (double)wf[(size_t)r * in + c] * wf[(size_t)r * in + c];
            }
        double e = sqrt(num / den);
        if (e > worst) worst = e;
        (*nmods)++;
        free(qq); free(pk); free(s); free(wf);
    }
    st_close(q);
    st_close(o);
    return worst;
}

static void test_quantize_np124(void) {
    TEST("quantize bundled model at -np 1, 2, 4") {
        for (int i = 0; i < 3; i++) {
            snprintf(g_out[i], sizeof g_out[i], "%s/np%d", g_tmp, g_nps[i]);
            int rc = quantize(g_nps[i], g_out[i], NULL);
            if (rc != 0) {
                fprintf(stderr, "np %d exit %d; log %s.log\n", g_nps[i], rc, g_out[i]);
                char cmd[2048];
                snprintf(cmd, sizeof cmd, "tail -20 %s.log >&2", g_out[i]);
                run(cmd);
            }
            CHECK_EQ_INT(rc, 0);
            char p[2048];
            const char *files[] = {"config.json", "model.safetensors", "recipe.yaml", "tokenizer.json",
                                   "tokenizer_config.json", "generation_config.json"};
            for (size_t f = 0; f < DS_ARRAY_LEN(files); f++) {
                snprintf(p, sizeof p, "%s/%s", g_out[i], files[f]);
                CHECK(ds_file_exists(p));
            }
            snprintf(p, sizeof p, "%s.json", g_out[i]);
            CHECK(ds_file_exists(p)); /* --summary */
        }
    }
}

static void test_world_sizes_agree(void) {
    TEST("checkpoints agree across world sizes") {
        for (int i = 1; i < 3; i++) {
            ckpt_cmp c = ckpt_compare(g_out[0], g_out[i]);
            CHECK(c.ok);
            CHECK(c.codes > 0);
            double frac = c.codes ? (double)c.same / (double)c.codes : 0;
            printf("np1 vs np%d: %.4f%% identical int4 codes (%ld), max scale rel diff %.2e\n", g_nps[i],
                   100 * frac, c.codes, c.max_scale_rel);
            CHECK(frac >= 0.999);
            CHECK(c.max_scale_rel <= 1e-3);
            char a[2048], b[2048];
            snprintf(a, sizeof a, "%s/config.json", g_out[0]);
            snprintf(b, sizeof b, "%s/config.json", g_out[i]);
            CHECK(same_file(a, b));
        }
    }
}

static void test_config_quantization(void) {
    TEST("config.json carries the compressed-tensors quantization_config") {
        char p[2048], *txt = NULL;
        snprintf(p, sizeof p, "%s/config.json", g_out[0]);
        CHECK(ds_read_file(p, &txt, NULL) == DS_OK);
        if (txt) {
            CHECK(strstr(txt, "\"quant_method\":\t\"compressed-tensors\"") || strstr(txt, "\"quant_method\": \"compressed-tensors\""));
            CHECK(strstr(txt, "pack-quantized") != NULL);
            CHECK(strstr(txt, "\"lm_head\"") != NULL);
            CHECK(strstr(txt, "\"quantization_status\"") != NULL);
        }
        free(txt);
    }
}

static void test_dequant_close(void) {
    TEST("dequantized weights are close to the originals") {
        int nmods = 0;
        double e = dequant_error(g_out[1], "data/stories260K", &nmods);
        printf("worst relative Frobenius error of dequantized weights: %.4f over %d modules\n", e, nmods);
        CHECK_EQ_INT(nmods, 35);
        CHECK(e >= 0 && e < 0.25);
    }
}

static void test_input_variants(void) {
    TEST("input variants: bf16, sharded, Mistral, Qwen2 (q/k/v bias); sharded == single file") {
        {
            const char *models[] = {"models/stories260K-bf16", "models/stories260K-sharded", "models/variants/mistral",
                                    "models/variants/qwen2"};
            char o[4][1024], extra[1200];
            for (int i = 0; i < 4; i++) {
                snprintf(o[i], sizeof o[i], "%s/variant%d", g_tmp, i);
                snprintf(extra, sizeof extra, "--model %s", fixture(models[i]));
                int rc = quantize(2, o[i], extra);
                if (rc) fprintf(stderr, "%s: exit %d (log %s.log)\n", models[i], rc, o[i]);
                CHECK_EQ_INT(rc, 0);
            }
            ckpt_cmp c = ckpt_compare(g_out[1], o[1]); /* same tensors in 3 shards vs 1 file */
            CHECK(c.ok);
            CHECK(c.codes > 0 && c.same == c.codes);
            /* bf16 checkpoint: scales are stored as BF16 */
            st_model *b = NULL;
            CHECK(st_open_dir(o[0], &b) == DS_OK);
            if (b) {
                const st_tensor *t = st_find(b, "model.layers.0.self_attn.q_proj.weight_scale");
                CHECK(t && t->dtype == DS_DTYPE_BF16);
                st_close(b);
            }
            /* Qwen2: q/k/v biases are kept unquantized */
            st_model *q = NULL;
            CHECK(st_open_dir(o[3], &q) == DS_OK);
            if (q) {
                CHECK(st_find(q, "model.layers.0.self_attn.q_proj.bias") != NULL);
                st_close(q);
            }
        }
    }
}

static void test_calibration_formats(void) {
    TEST("calibration from .jsonl.gz and from chat rows (Llama 2 template)") {
        char o[1024], extra[2048], cmd[2048];
        snprintf(o, sizeof o, "%s/gz", g_tmp);
        CHECK_EQ_INT(quantize(2, o, "--dataset tests/data/rows.jsonl.gz"), 0);
        /* the bundled model with a chat template: stories260K files + a Llama 2 tokenizer_config.json */
        snprintf(cmd, sizeof cmd, "mkdir -p %s/chatmodel && cp data/stories260K/* %s/chatmodel/ && "
                 "cp tests/data/chat-llama2/tokenizer_config.json %s/chatmodel/", g_tmp, g_tmp, g_tmp);
        CHECK_EQ_INT(run(cmd), 0);
        snprintf(o, sizeof o, "%s/chat", g_tmp);
        snprintf(extra, sizeof extra, "--model %s/chatmodel --dataset tests/data/chat.jsonl", g_tmp);
        CHECK_EQ_INT(quantize(2, o, extra), 0);
        /* a chat dataset with a model that has no chat template: clear error, exit 3 */
        snprintf(o, sizeof o, "%s/chat_no_template", g_tmp);
        int rc = quantize(2, o, "--dataset tests/data/chat.jsonl");
        CHECK(rc == 3 || rc == 2);
    }
}

static void test_overwrite(void) {
    TEST("existing output is refused without --overwrite, replaced with it") {
        CHECK(quantize(1, g_out[0], NULL) == 2);
        CHECK(quantize(1, g_out[0], "--overwrite") == 0);
    }
}

static void test_bad_inputs(void) {
    TEST("bad inputs: documented exit code on every rank, no checkpoint left") {
        char args[2048], p[1024];
        snprintf(p, sizeof p, "%s/bad.json", g_tmp);
        FILE *f = fopen(p, "w");
        fputs("{\"modifiers\": [{\"GPTQModifier\": {\"scheme\": \"W4A16\",}]}", f);
        fclose(f);
        snprintf(p, sizeof p, "%s/unknown_scheme.json", g_tmp);
        f = fopen(p, "w");
        fputs("{\"modifiers\": [{\"GPTQModifier\": {\"scheme\": \"W4A99\", \"ignore\": [\"lm_head\"]}}]}", f);
        fclose(f);
        struct { const char *args, *tag, *needle; int code; } cases[] = {
            {"--recipe %s/nope.json --output %s/o1", "missing_recipe", "nope.json", 2},
            {"--recipe %s/bad.json --output %s/o2", "bad_json", "bad.json", 2},
            {"--recipe %s/unknown_scheme.json --model data/stories260K --dataset data/tinystories_sample.txt --output %s/o3",
             "unknown_scheme", "W4A99", 2},
            {"--recipe recipes/w4a16.json --model data/stories260K --dataset data/tinystories_sample.txt --output %s/o4%s",
             "group_not_dividing", "does not divide", 2},
            {"--recipe recipes/stories260k-w4a16.json --model %s/no_model --output %s/o5", "missing_model", "no_model", 3},
            {"--recipe recipes/stories260k-w4a16.json --dataset %s/none.txt --output %s/o6", "missing_dataset", "none.txt", 3},
            {"--recipe recipes/stories260k-w4a16.json --bogus-flag%s%s", "unknown_option", "bogus", 2},
            {"--recipe recipes/stories260k-w4a16.json --model %s/gpt2 --output %s/o8", "unsupported_arch", "GPT2LMHeadModel", 3},
            {"--recipe recipes/stories260k-w4a16.json --model %s/int_model --output %s/o9", "wrong_dtype", "I32", 3},
        };
        /* fixtures: a GPT-2 config and a model whose norm weight is I32 */
        char d[600];
        snprintf(d, sizeof d, "%s/gpt2", g_tmp);
        mkdir(d, 0755);
        snprintf(p, sizeof p, "%s/config.json", d);
        f = fopen(p, "w");
        fputs("{\"architectures\": [\"GPT2LMHeadModel\"], \"n_embd\": 64}", f);
        fclose(f);
        snprintf(d, sizeof d, "%s/int_model", g_tmp);
        mkdir(d, 0755);
        char cmd[1400];
        snprintf(cmd, sizeof cmd, "cp data/stories260K/config.json data/stories260K/tokenizer*.json %s/", d);
        run(cmd);
        st_model *src = NULL;
        CHECK(st_open_dir("data/stories260K", &src) == DS_OK);
        if (src) {
            st_writer *w = stw_open(d, 0);
            for (size_t i = 0; i < st_count(src); i++) {
                const st_tensor *t = st_get(src, i);
                ds_dtype dt = strcmp(t->name, "model.norm.weight") == 0 ? DS_DTYPE_I32 : t->dtype;
                stw_plan(w, t->name, dt, t->ndim, t->shape);
            }
            CHECK(stw_begin(w) == DS_OK);
            for (size_t i = 0; i < st_count(src); i++) {
                const st_tensor *t = st_get(src, i);
                stw_write(w, t->name, t->data, t->nbytes);
            }
            CHECK(stw_finish(w) == DS_OK);
            stw_close(w);
            st_close(src);
        }
        for (size_t i = 0; i < DS_ARRAY_LEN(cases); i++) {
            snprintf(args, sizeof args, cases[i].args, g_tmp, g_tmp);
            int rc = run_bad(args, cases[i].tag);
            if (rc != cases[i].code || !log_contains(cases[i].tag, cases[i].needle))
                fprintf(stderr, "case %s: exit %d (want %d on both ranks), message has '%s': %d\n", cases[i].tag,
                        rc, cases[i].code, cases[i].needle, log_contains(cases[i].tag, cases[i].needle));
            CHECK_EQ_INT(rc, cases[i].code);
            CHECK(log_contains(cases[i].tag, cases[i].needle));
        }
        /* no output directory (or temp dir) was left by any failed run */
        snprintf(cmd, sizeof cmd, "ls -d %s/o* 2>/dev/null | grep -q .", g_tmp);
        CHECK(run(cmd) != 0);
    }
}

int main(void) {
    const char *build = getenv("BUILD") ? getenv("BUILD") : "build";
    const char *mpirun = getenv("MPIRUN") ? getenv("MPIRUN") : "mpirun --oversubscribe";
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);
    snprintf(g_bin, sizeof g_bin, "%s/doneshot", build);
    snprintf(g_mpirun, sizeof g_mpirun, "%s", mpirun);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/doneshot-e2e-XXXXXX");
    if (!mkdtemp(g_tmp)) { perror("mkdtemp"); return 1; }

    test_quantize_np124();
    test_world_sizes_agree();
    test_config_quantization();
    test_dequant_close();
    test_input_variants();
    test_calibration_formats();
    test_overwrite();
    test_bad_inputs();

    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
    if (t_failed == 0) run(cmd);
    else fprintf(stderr, "kept %s for inspection\n", g_tmp);
    return TEST_REPORT();
}
