/*
 * fuzz_eval.c - the compressed-tensors checkpoint `doneshot eval` reads:
 * model_open_quantized_ok, then every layer through layer_load (which
 * dequantizes weight_packed / weight_scale / weight_zero_point / weight_g_idx)
 * and a 4-token forward. Input: byte 0 picks the fixture config.json
 * (tiny-q: W4 channel, tiny-qa: W4 asym group 4 + actorder group, tiny-qmoe:
 * Qwen3-MoE W4), the rest is its model.safetensors. With bit 2 of byte 0 set
 * the rest is only the JSON header: the target lays the tensors out
 * contiguously (rewriting data_offsets) and fills each one from the fixture's
 * tensor of that name and size, else with pseudo-random bytes, so mutations
 * of names, dtypes and shapes reach the loader instead of failing the
 * data_offsets coverage check.
 */
#include "fuzz_common.h"
#include "model.h"

#include <cjson/cJSON.h>

static const char *const k_fixtures[] = {"tiny-q", "tiny-qa", "tiny-qmoe"};
static char *g_dirs[3];
static st_model *g_st[3]; /* the fixtures' tensors */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_quiet();
    for (int i = 0; i < 3; i++) {
        g_dirs[i] = fz_subdir(k_fixtures[i]);
        char *rel = xasprintf("tests/fuzz/fixtures/%s/config.json", k_fixtures[i]);
        fz_link(g_dirs[i], "config.json", rel);
        free(rel);
        rel = xasprintf("tests/fuzz/fixtures/%s/model.safetensors", k_fixtures[i]);
        char *p = fz_path(rel);
        if (st_open_file(p, &g_st[i]) != DS_OK) { fprintf(stderr, "fuzz_eval: %s\n", ds_errmsg()); abort(); }
        free(p);
        free(rel);
    }
    return 0;
}

/* A safetensors file from header JSON `h`: contiguous data_offsets, data
 * from fixture `fx` where a tensor of that name and size exists. 0 if h is not
 * a JSON object of tensor objects with dtype and shape (size capped at 1 MiB). */
static int build_file(const st_model *fx, const char *dir, const uint8_t *h, size_t n) {
    cJSON *root = cJSON_ParseWithLength((const char *)h, n);
    if (!cJSON_IsObject(root)) { cJSON_Delete(root); return 0; }
    uint64_t off = 0;
    for (cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        if (!cJSON_IsObject(e)) goto bad;
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype"), *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
        ds_dtype d;
        if (!cJSON_IsString(dt) || ds_dtype_from_name(dt->valuestring, &d) || !cJSON_IsArray(sh)) goto bad;
        uint64_t numel = 1;
        for (const cJSON *x = sh->child; x; x = x->next) {
            if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble > (1 << 20)) goto bad;
            numel *= (uint64_t)x->valuedouble;
            if (numel > (1 << 20)) goto bad;
        }
        uint64_t nb = numel * ds_dtype_size(d);
        cJSON *offs = cJSON_CreateArray();
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + nb)));
        cJSON_DeleteItemFromObjectCaseSensitive(e, "data_offsets");
        while (cJSON_GetObjectItemCaseSensitive(e, "data_offsets")) cJSON_DeleteItemFromObjectCaseSensitive(e, "data_offsets");
        cJSON_AddItemToObject(e, "data_offsets", offs);
        off += nb;
        if (off > (1 << 20)) goto bad;
    }
    char *js = cJSON_PrintUnformatted(root);
    size_t hl = strlen(js);
    unsigned char *buf = xcalloc(8 + hl + off + 1, 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, js, hl);
    unsigned char *p = buf + 8 + hl;
    uint32_t rnd = 12345;
    off = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        size_t b = (size_t)off, en = (size_t)o->child->next->valuedouble;
        off = en;
        const st_tensor *t = st_find(fx, e->string);
        if (t && t->nbytes == en - b) memcpy(p + b, t->data, en - b);
        else for (size_t k = b; k < en; k++) p[k] = (unsigned char)((rnd = rnd * 1103515245u + 12345u) >> 16);
    }
    fz_write(dir, "model.safetensors", buf, 8 + hl + off);
    free(buf);
    free(js);
    cJSON_Delete(root);
    return 1;
bad:
    cJSON_Delete(root);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int fx = data[0] % 3;
    const char *dir = g_dirs[fx];
    if (data[0] & 4) {
        if (!build_file(g_st[fx], dir, data + 1, size - 1)) return 0;
    } else {
        fz_write(dir, "model.safetensors", data + 1, size - 1);
    }
    model m;
    if (model_open_quantized_ok(dir, &m) != DS_OK) return 0;
    const model_config *c = &m.cfg;
    int T = 4;
    int32_t ids[4] = {0, 1, 2, 3};
    float *x = xcalloc((size_t)T * (size_t)c->C, sizeof(float));
    if (model_embed(&m, ids, T, x) == DS_OK) {
        layer_scratch s;
        layer_scratch_init(&s, c, T);
        for (int l = 0; l < c->L; l++) {
            layer_weights lw;
            if (layer_load(&m, l, &lw) != DS_OK) break;
            layer_forward(&m, &lw, x, T, &s, NULL, NULL);
            layer_free(&lw);
        }
        layer_scratch_free(&s);
    }
    free(x);
    model_close(&m);
    return 0;
}
