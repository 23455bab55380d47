/*
 * fuzz_st_file.c - one .safetensors file (st_open_file): the 8-byte header
 * length, the JSON header (dtype, shape, data_offsets, __metadata__), the
 * coverage checks; then every accepted tensor is read as a consumer would
 * (st_find, st_numel, st_to_f32). Seeds: the fixture checkpoints.
 */
#include "fuzz_common.h"
#include "safetensors.h"

static char *g_file;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_quiet();
    g_file = xasprintf("%s/model.safetensors", fz_dir());
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write(fz_dir(), "model.safetensors", data, size);
    st_model *m = NULL;
    if (st_open_file(g_file, &m) != DS_OK) return 0;
    (void)st_metadata(m, "format");
    for (size_t i = 0; i < st_count(m); i++) {
        const st_tensor *t = st_get(m, i);
        if (st_find(m, t->name) != t) __builtin_trap(); /* name table broken */
        int64_t n = st_numel(t);
        if (n < 0 || (uint64_t)n * ds_dtype_size(t->dtype) != t->nbytes) __builtin_trap();
        if (n > (1 << 20)) continue;
        float *f = xmalloc(sizeof(float) * (size_t)(n ? n : 1));
        (void)st_to_f32(t, f);
        free(f);
    }
    st_close(m);
    return 0;
}
