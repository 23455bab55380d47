/*
 * fuzz_st_index.c - a sharded checkpoint's model.safetensors.index.json
 * (st_open_dir: weight_map -> shard files, cross-checks against the shards),
 * then model_open on the result as the CLI does. The two shards and
 * config.json of tests/fuzz/fixtures/tiny-sharded sit beside the input.
 */
#include "fuzz_common.h"
#include "model.h"

static char *g_dir;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_quiet();
    g_dir = fz_subdir("sharded");
    fz_link(g_dir, "config.json", "tests/fuzz/fixtures/tiny-sharded/config.json");
    fz_link(g_dir, "model-00001-of-00002.safetensors",
            "tests/fuzz/fixtures/tiny-sharded/model-00001-of-00002.safetensors");
    fz_link(g_dir, "model-00002-of-00002.safetensors",
            "tests/fuzz/fixtures/tiny-sharded/model-00002-of-00002.safetensors");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write(g_dir, "model.safetensors.index.json", data, size);
    st_model *s = NULL;
    if (st_open_dir(g_dir, &s) != DS_OK) return 0;
    for (size_t i = 0; i < st_count(s); i++) {
        const st_tensor *t = st_get(s, i);
        if (st_find(s, t->name) != t) __builtin_trap();
        (void)st_shard_path(s, t->shard);
    }
    st_close(s);
    model m;
    if (model_open(g_dir, &m) == DS_OK) model_close(&m);
    return 0;
}
