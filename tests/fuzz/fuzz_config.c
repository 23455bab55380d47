/*
 * fuzz_config.c - config.json (model_open / model_open_quantized_ok: every
 * key, rope_scaling, MoE keys, quantization_config), against the tensors of
 * three fixtures: a dense bf16 Llama, a Qwen3-MoE and a pack-quantized
 * checkpoint. An accepted config is then used as quantize and eval use it:
 * layer_load, model_embed and layer_forward of 4 tokens for the first layers.
 */
#include "fuzz_common.h"
#include "model.h"

static const char *const k_fixtures[] = {"tiny", "tiny-moe", "tiny-q"};
static char *g_dirs[3];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_quiet();
    for (int i = 0; i < 3; i++) {
        g_dirs[i] = fz_subdir(k_fixtures[i]);
        char *rel = xasprintf("tests/fuzz/fixtures/%s/model.safetensors", k_fixtures[i]);
        fz_link(g_dirs[i], "model.safetensors", rel);
        free(rel);
    }
    return 0;
}

/* What quantize/eval do with an opened model, on a few tokens. */
static void use_model(const model *m) {
    const model_config *c = &m->cfg;
    int T = 4, L = c->L < 2 ? c->L : 2;
    int32_t ids[4];
    for (int t = 0; t < T; t++) ids[t] = (int32_t)(t % (c->V > 0 ? c->V : 1));
    float *x = xcalloc((size_t)T * (size_t)c->C, sizeof(float));
    if (model_embed(m, ids, T, x) == DS_OK) {
        layer_scratch s;
        layer_scratch_init(&s, c, T);
        for (int l = 0; l < L; l++) {
            layer_weights lw;
            if (layer_load(m, l, &lw) != DS_OK) break;
            layer_forward(m, &lw, x, T, &s, NULL, NULL);
            layer_free(&lw);
        }
        layer_scratch_free(&s);
    }
    free(x);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    for (int i = 0; i < 3; i++) {
        fz_write(g_dirs[i], "config.json", data, size);
        model m;
        if (model_open_quantized_ok(g_dirs[i], &m) == DS_OK) {
            use_model(&m);
            model_close(&m);
        }
    }
    model m;
    if (model_open(g_dirs[0], &m) == DS_OK) model_close(&m);
    return 0;
}
