/*
 * test_safetensors.c - safetensors reader (src/safetensors.c) and streaming
 * writer (src/st_writer.c): round trips incl. sharding, data/stories260K and
 * its sharded and bf16 copies (tests/fixtures.py), malformed files (each
 * must give DS_ERR_INPUT naming the file, never a crash; run under ASan), and
 * the synthetic model generator ${BUILD:-build}/gen_model when it is built.
 */
#include "safetensors.h"
#include "st_writer.h"
#include "test.h"
#include "fixtures.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_tmp[64];

/* ---- helpers ---- */

static char *tmp_path(const char *name) { return ds_path_join(g_tmp, name); }

static char *make_dir(const char *name) {
    char *d = tmp_path(name);
    mkdir(d, 0755);
    return d;
}

/* Write a raw file: 8-byte length `hlen` (or strlen(header)), header, `data_len` bytes. */
static void write_raw(const char *path, const char *header, uint64_t hlen, size_t data_len) {
    FILE *f = fopen(path, "wb");
    DS_ASSERT(f);
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(hlen >> (8 * i));
    fwrite(b, 1, 8, f);
    fwrite(header, 1, strlen(header), f);
    for (size_t i = 0; i < data_len; i++) fputc((int)(i & 0xff), f);
    fclose(f);
}

/* A malformed single file `name` must fail with DS_ERR_INPUT naming it. */
static void expect_bad_file(const char *name, const char *header, size_t data_len) {
    char *p = tmp_path(name);
    write_raw(p, header, strlen(header), data_len);
    st_model *m = (st_model *)1;
    ds_status st = st_open_file(p, &m);
    CHECK_EQ_INT(st, DS_ERR_INPUT);
    CHECK(m == NULL);
    if (getenv("ST_VERBOSE")) fprintf(stderr, "  %s\n", ds_errmsg());
    if (!strstr(ds_errmsg(), name)) fprintf(stderr, "  message lacks '%s': %s\n", name, ds_errmsg());
    CHECK(strstr(ds_errmsg(), name) != NULL);
    if (st == DS_OK) st_close(m);
    free(p);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    DS_ASSERT(f);
    fputs(text, f);
    fclose(f);
}

static void fill_bytes(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)((i * 131u + seed * 7u + (i >> 8)) & 0xff);
}

typedef struct spec { const char *name; ds_dtype dt; int ndim; int64_t shape[3]; } spec;

static size_t spec_bytes(const spec *s) {
    size_t n = 1;
    for (int i = 0; i < s->ndim; i++) n *= (size_t)s->shape[i];
    return n * ds_dtype_size(s->dt);
}

/* Write `n` specs to dir (reverse order, to exercise pwrite at any offset). */
static ds_status write_specs(const char *dir, const spec *sp, size_t n, uint64_t max_shard, int *nshards) {
    st_writer *w = stw_open(dir, max_shard);
    ds_status st = DS_OK;
    for (size_t i = 0; i < n && !st; i++) st = stw_plan(w, sp[i].name, sp[i].dt, sp[i].ndim, sp[i].shape);
    if (!st) st = stw_begin(w);
    for (size_t i = n; i-- > 0 && !st;) {
        size_t nb = spec_bytes(&sp[i]);
        unsigned char *buf = xmalloc(nb ? nb : 1);
        fill_bytes(buf, nb, (unsigned)i);
        st = stw_write(w, sp[i].name, buf, nb);
        free(buf);
    }
    if (!st) st = stw_finish(w);
    if (nshards) *nshards = stw_num_shards(w);
    stw_close(w);
    return st;
}

/* Read back and compare every spec's dtype, shape and bytes. */
static void check_specs(const st_model *m, const spec *sp, size_t n) {
    CHECK_EQ_INT(st_count(m), n);
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_find(m, sp[i].name);
        CHECK(t != NULL);
        if (!t) continue;
        CHECK_EQ_INT(t->dtype, sp[i].dt);
        CHECK_EQ_INT(t->ndim, sp[i].ndim);
        for (int d = 0; d < sp[i].ndim; d++) CHECK_EQ_INT(t->shape[d], sp[i].shape[d]);
        size_t nb = spec_bytes(&sp[i]);
        CHECK_EQ_INT(t->nbytes, nb);
        unsigned char *want = xmalloc(nb ? nb : 1);
        fill_bytes(want, nb, (unsigned)i);
        CHECK(nb == 0 || memcmp(t->data, want, nb) == 0);
        free(want);
    }
    for (size_t i = 1; i < st_count(m); i++) CHECK(strcmp(st_get(m, i - 1)->name, st_get(m, i)->name) < 0);
}

/* Spec rules of our own output: 8+N multiple of 8, "__metadata__" first,
 * each tensor aligned to its element size, descending dtype size then name. */
static void check_layout(const char *path, const st_model *m, int shard) {
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    if (!f) return;
    unsigned char b[8];
    CHECK(fread(b, 1, 8, f) == 8);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
    CHECK_EQ_INT((8 + hlen) % 8, 0);
    char head[32] = {0};
    CHECK(fread(head, 1, 30, f) == 30);
    CHECK(strncmp(head, "{\"__metadata__\":{\"format\":\"pt\"}", 30) == 0);
    fclose(f);
    const unsigned char *prev = NULL;
    size_t prev_sz = 0;
    const char *prev_name = NULL;
    /* Walk tensors of this shard in file order. */
    size_t n = st_count(m), cnt = 0;
    const st_tensor **ts = xcalloc(n ? n : 1, sizeof *ts);
    for (size_t i = 0; i < n; i++)
        if (st_get(m, i)->shard == shard) ts[cnt++] = st_get(m, i);
    for (size_t i = 0; i < cnt; i++)
        for (size_t j = i + 1; j < cnt; j++)
            if ((const char *)ts[j]->data < (const char *)ts[i]->data ||
                (ts[j]->data == ts[i]->data &&
                 (ds_dtype_size(ts[j]->dtype) > ds_dtype_size(ts[i]->dtype) ||
                  (ds_dtype_size(ts[j]->dtype) == ds_dtype_size(ts[i]->dtype) &&
                   strcmp(ts[j]->name, ts[i]->name) < 0)))) {
                const st_tensor *x = ts[i]; ts[i] = ts[j]; ts[j] = x;
            }
    /* The first tensor starts the data buffer, which is 8-aligned in the file. */
    const unsigned char *base = cnt ? (const unsigned char *)ts[0]->data : NULL;
    for (size_t i = 0; i < cnt; i++) {
        const unsigned char *p = ts[i]->data;
        size_t sz = ds_dtype_size(ts[i]->dtype);
        CHECK_EQ_INT((size_t)(p - base) % sz, 0);
        if (prev) {
            CHECK(prev_sz > sz || (prev_sz == sz && strcmp(prev_name, ts[i]->name) < 0));
        }
        prev = p; prev_sz = sz; prev_name = ts[i]->name;
    }
    free(ts);
}

static const spec g_specs[] = {
    {"model.layers.0.self_attn.q_proj.weight", DS_DTYPE_BF16, 2, {6, 5, 0}},
    {"model.norm.weight", DS_DTYPE_F32, 1, {7, 0, 0}},
    {"ids", DS_DTYPE_I64, 1, {3, 0, 0}},
    {"packed", DS_DTYPE_I32, 2, {2, 3, 0}},
    {"scalar", DS_DTYPE_F32, 0, {0, 0, 0}},
    {"empty", DS_DTYPE_F32, 2, {0, 4, 0}},
    {"bytes \"quoted\"\\", DS_DTYPE_U8, 1, {5, 0, 0}},
    {"cube", DS_DTYPE_F16, 3, {2, 3, 3}},
};

static void test_roundtrip(void) {
    TEST("writer round trip, single file") {
        char *d = make_dir("rt1");
        int ns = 0;
        CHECK_EQ_INT(write_specs(d, g_specs, DS_ARRAY_LEN(g_specs), 0, &ns), DS_OK);
        CHECK_EQ_INT(ns, 1);
        char *ip = ds_path_join(d, "model.safetensors.index.json");
        char *tp = ds_path_join(d, "model.safetensors.tmp");
        CHECK(!ds_file_exists(ip));
        CHECK(!ds_file_exists(tp));
        st_model *m = NULL;
        ds_status st = st_open_dir(d, &m);
        if (st) fprintf(stderr, "  %s\n", ds_errmsg());
        CHECK_EQ_INT(st, DS_OK);
        if (m) {
            check_specs(m, g_specs, DS_ARRAY_LEN(g_specs));
            CHECK(st_metadata(m, "format") && strcmp(st_metadata(m, "format"), "pt") == 0);
            CHECK(st_metadata(m, "nope") == NULL);
            CHECK_EQ_INT(st_num_shards(m), 1);
            check_layout(st_shard_path(m, 0), m, 0);
            CHECK_EQ_INT(st_numel(st_find(m, "scalar")), 1);
            CHECK_EQ_INT(st_numel(st_find(m, "empty")), 0);
            CHECK(st_find(m, "missing") == NULL);
            float f[7];
            CHECK_EQ_INT(st_to_f32(st_find(m, "model.norm.weight"), f), DS_OK);
            CHECK_EQ_INT(st_to_f32(st_find(m, "ids"), f), DS_ERR_INPUT);
        }
        st_close(m);
        free(ip); free(tp); free(d);
    }

    TEST("writer round trip, 3 shards + index.json") {
        char *d = make_dir("rt3");
        spec sp[9];
        char names[9][32];
        uint64_t total = 0;
        for (int i = 0; i < 9; i++) {
            snprintf(names[i], sizeof names[i], "layer.%d.w", 8 - i);
            sp[i] = (spec){names[i], i % 2 ? DS_DTYPE_BF16 : DS_DTYPE_F32, 2, {10, 10, 0}};
            total += spec_bytes(&sp[i]);
        }
        /* 400+200+400 | 200+400+200 | 400+200+400 with a 1000-byte limit */
        int ns = 0;
        CHECK_EQ_INT(write_specs(d, sp, 9, 1000, &ns), DS_OK);
        CHECK_EQ_INT(ns, 3);
        st_model *m = NULL;
        ds_status st = st_open_dir(d, &m);
        if (st) fprintf(stderr, "  %s\n", ds_errmsg());
        CHECK_EQ_INT(st, DS_OK);
        if (m) {
            check_specs(m, sp, 9);
            CHECK_EQ_INT(st_num_shards(m), 3);
            for (int s = 0; s < 3; s++) {
                char want[64];
                snprintf(want, sizeof want, "model-%05d-of-00003.safetensors", s + 1);
                CHECK(strstr(st_shard_path(m, s), want) != NULL);
                check_layout(st_shard_path(m, s), m, s);
            }
            CHECK_EQ_INT(st_find(m, "layer.8.w")->shard, 0);
            CHECK_EQ_INT(st_find(m, "layer.5.w")->shard, 1);
            CHECK_EQ_INT(st_find(m, "layer.0.w")->shard, 2);
        }
        st_close(m);
        /* index.json: total_size and a sorted weight_map */
        char *ip = ds_path_join(d, "model.safetensors.index.json"), *text = NULL;
        size_t len = 0;
        CHECK_EQ_INT(ds_read_file(ip, &text, &len), DS_OK);
        cJSON *root = text ? cJSON_Parse(text) : NULL;
        CHECK(root != NULL);
        if (root) {
            const cJSON *ts = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "metadata"), "total_size");
            CHECK(cJSON_IsNumber(ts) && (uint64_t)ts->valuedouble == total);
            const cJSON *wm = cJSON_GetObjectItem(root, "weight_map");
            CHECK_EQ_INT(cJSON_GetArraySize(wm), 9);
            const char *prev = "";
            for (const cJSON *e = wm ? wm->child : NULL; e; e = e->next) {
                CHECK(strcmp(prev, e->string) < 0);
                prev = e->string;
            }
            const cJSON *e0 = cJSON_GetObjectItem(wm, "layer.0.w");
            CHECK(cJSON_IsString(e0) && strcmp(e0->valuestring, "model-00003-of-00003.safetensors") == 0);
        }
        cJSON_Delete(root);
        free(text);
        /* Rewriting as a single file removes the stale index. */
        CHECK_EQ_INT(write_specs(d, sp, 9, 0, &ns), DS_OK);
        CHECK_EQ_INT(ns, 1);
        CHECK(!ds_file_exists(ip));
        m = NULL;
        CHECK_EQ_INT(st_open_dir(d, &m), DS_OK);
        CHECK_EQ_INT(st_count(m), 9);
        st_close(m);
        free(ip); free(d);
    }

    TEST("writer: chunked stw_write_range, oversize tensor gets its own shard") {
        char *d = make_dir("rtr");
        st_writer *w = stw_open(d, 100);
        int64_t big[1] = {1000}, small[1] = {10};
        CHECK_EQ_INT(stw_plan(w, "a", DS_DTYPE_U8, 1, small), DS_OK);
        CHECK_EQ_INT(stw_plan(w, "big", DS_DTYPE_U8, 1, big), DS_OK);
        CHECK_EQ_INT(stw_plan(w, "c", DS_DTYPE_U8, 1, small), DS_OK);
        CHECK_EQ_INT(stw_begin(w), DS_OK);
        CHECK_EQ_INT(stw_num_shards(w), 3);
        CHECK(strcmp(stw_shard_name(w, "big"), "model-00002-of-00003.safetensors") == 0);
        unsigned char buf[1000];
        fill_bytes(buf, 1000, 1);
        for (int k = 9; k >= 0; k--) CHECK_EQ_INT(stw_write_range(w, "big", (uint64_t)k * 100, buf + k * 100, 100), DS_OK);
        CHECK_EQ_INT(stw_write_range(w, "big", 990, buf, 20), DS_ERR_RUNTIME);
        CHECK_EQ_INT(stw_write(w, "a", buf, 10), DS_OK);
        CHECK_EQ_INT(stw_write(w, "c", buf, 10), DS_OK);
        CHECK_EQ_INT(stw_finish(w), DS_OK);
        CHECK_EQ_INT(stw_total_bytes(w), 1020);
        stw_close(w);
        st_model *m = NULL;
        CHECK_EQ_INT(st_open_dir(d, &m), DS_OK);
        const st_tensor *t = st_find(m, "big");
        CHECK(t && t->nbytes == 1000 && memcmp(t->data, buf, 1000) == 0);
        st_close(m);
        free(d);
    }

    TEST("writer: misuse gives errors, not crashes") {
        char *d = make_dir("misuse");
        st_writer *w = stw_open(d, 0);
        int64_t sh[2] = {2, 2}, neg[1] = {-1};
        CHECK_EQ_INT(stw_plan(w, "x", DS_DTYPE_F32, 2, sh), DS_OK);
        CHECK_EQ_INT(stw_plan(w, "x", DS_DTYPE_F32, 2, sh), DS_ERR_RUNTIME);
        CHECK(strstr(ds_errmsg(), "duplicate") != NULL);
        CHECK_EQ_INT(stw_plan(w, "n", DS_DTYPE_F32, 1, neg), DS_ERR_RUNTIME);
        CHECK_EQ_INT(stw_plan(w, "y", DS_DTYPE_F32, 2, sh), DS_OK);
        CHECK_EQ_INT(stw_write(w, "x", sh, 16), DS_ERR_RUNTIME); /* before begin */
        CHECK_EQ_INT(stw_begin(w), DS_OK);
        CHECK_EQ_INT(stw_plan(w, "z", DS_DTYPE_F32, 2, sh), DS_ERR_RUNTIME);
        float v[4] = {1, 2, 3, 4};
        CHECK_EQ_INT(stw_write(w, "x", v, 12), DS_ERR_RUNTIME);
        CHECK_EQ_INT(stw_write(w, "nope", v, 16), DS_ERR_RUNTIME);
        CHECK_EQ_INT(stw_write(w, "x", v, 16), DS_OK);
        CHECK_EQ_INT(stw_write(w, "x", v, 16), DS_ERR_RUNTIME);
        CHECK_EQ_INT(stw_finish(w), DS_ERR_RUNTIME); /* y missing */
        CHECK(strstr(ds_errmsg(), "'y'") != NULL);
        stw_close(w);
        /* Unfinished: no plausible checkpoint left behind. */
        char *p = ds_path_join(d, "model.safetensors");
        CHECK(!ds_file_exists(p));
        free(p); free(d);
    }
}

/* ---- malformed inputs ---- */

#define T1 "\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"

static void test_malformed(void) {
    TEST("malformed single files -> DS_ERR_INPUT naming the file") {
        char *p = tmp_path("short.safetensors");
        write_text(p, "abc");
        st_model *m = NULL;
        CHECK_EQ_INT(st_open_file(p, &m), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "short.safetensors") != NULL);
        free(p);

        p = tmp_path("hlen_big.safetensors");
        write_raw(p, "{" T1 "}", 1000, 8);
        CHECK_EQ_INT(st_open_file(p, &m), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "hlen_big.safetensors") != NULL);
        free(p);

        p = tmp_path("hlen_huge.safetensors");
        write_raw(p, "{" T1 "}", 200000000ull, 8);
        CHECK_EQ_INT(st_open_file(p, &m), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "hlen_huge.safetensors") != NULL);
        CHECK(strstr(ds_errmsg(), "limit") != NULL);
        free(p);

        p = tmp_path("truncated.safetensors");
        write_raw(p, "{" T1 "}", strlen("{" T1 "}"), 5); /* data cut short */
        CHECK_EQ_INT(st_open_file(p, &m), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "truncated.safetensors") != NULL);
        free(p);

        expect_bad_file("notjson.safetensors", "{\"t\": nope}", 0);
        expect_bad_file("notjson2.safetensors", "{" T1 "} x", 8);
        expect_bad_file("array.safetensors", "[1,2]", 0);
        expect_bad_file("overlap.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12);
        expect_bad_file("hole.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12);
        expect_bad_file("nostart.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8);
        expect_bad_file("trailing.safetensors", "{" T1 "}", 12);
        expect_bad_file("range.safetensors",
                        "{\"t\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8);
        expect_bad_file("backwards.safetensors",
                        "{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8);
        expect_bad_file("dtype.safetensors", "{\"t\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
        expect_bad_file("span.safetensors", "{\"t\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
        expect_bad_file("dup.safetensors", "{" T1 "," T1 "}", 8);
        expect_bad_file("negdim.safetensors", "{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8);
        expect_bad_file("fracdim.safetensors", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", 8);
        expect_bad_file("strdim.safetensors", "{\"t\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8);
        expect_bad_file("ndim.safetensors",
                        "{\"t\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1);
        expect_bad_file("overflow.safetensors",
                        "{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}", 8);
        expect_bad_file("offs3.safetensors", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8);
        expect_bad_file("offsneg.safetensors", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8);
        expect_bad_file("noshape.safetensors", "{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8);
        expect_bad_file("entry.safetensors", "{\"t\":[1,2,3]}", 0);
        expect_bad_file("meta.safetensors", "{\"__metadata__\":{\"a\":1}," T1 "}", 8);
        expect_bad_file("meta2.safetensors", "{\"__metadata__\":[]," T1 "}", 8);
        expect_bad_file("nul.safetensors", "{" T1 "}\x01", 8);
    }

    TEST("header whitespace and empty headers are accepted") {
        char *p = tmp_path("ws.safetensors");
        write_raw(p, " \n{" T1 "}\t\r  ", strlen(" \n{" T1 "}\t\r  "), 8);
        st_model *m = NULL;
        ds_status st = st_open_file(p, &m);
        if (st) fprintf(stderr, "  %s\n", ds_errmsg());
        CHECK_EQ_INT(st, DS_OK);
        CHECK(m && st_count(m) == 1 && st_find(m, "t")->nbytes == 8);
        st_close(m);
        free(p);
        p = tmp_path("empty.safetensors");
        write_raw(p, "{}", 2, 0);
        m = NULL;
        CHECK_EQ_INT(st_open_file(p, &m), DS_OK);
        CHECK_EQ_INT(st_count(m), 0);
        CHECK(st_find(m, "t") == NULL);
        st_close(m);
        free(p);
        /* st_parse_header directly */
        st_tensor *ts = NULL;
        size_t n = 0;
        const char *h = "{" T1 "}";
        unsigned char data[8] = {0};
        CHECK_EQ_INT(st_parse_header(h, strlen(h), data, 8, "direct.safetensors", &ts, &n), DS_OK);
        CHECK(n == 1 && ts && ts[0].data == data && ts[0].shape[0] == 2);
        for (size_t i = 0; i < n; i++) free(ts[i].name);
        free(ts);
        CHECK_EQ_INT(st_parse_header(h, strlen(h) - 1, data, 8, "direct.safetensors", &ts, &n), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "direct.safetensors") != NULL);
    }

    TEST("malformed directories: missing files, bad index") {
        char *d = make_dir("nothing");
        st_model *m = NULL;
        CHECK_EQ_INT(st_open_dir(d, &m), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), d) && strstr(ds_errmsg(), "model.safetensors"));
        free(d);

        /* Two shards: s1 has a,b; s2 has c. */
        d = make_dir("sharded_bad");
        char *s1 = ds_path_join(d, "s1.safetensors"), *s2 = ds_path_join(d, "s2.safetensors");
        char *ip = ds_path_join(d, "model.safetensors.index.json");
        write_raw(s1, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                  strlen("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}"), 8);
        write_raw(s2, "{" T1 "}", strlen("{" T1 "}"), 8);
        write_text(ip, "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\",\"t\":\"s2.safetensors\"}}");
        CHECK_EQ_INT(st_open_dir(d, &m), DS_OK);
        CHECK_EQ_INT(st_count(m), 3);
        CHECK_EQ_INT(st_find(m, "t")->shard, 1);
        st_close(m);
        m = NULL;

        write_text(ip, "{\"weight_map\":{\"a\":\"s1.safetensors\",\"t\":\"s3.safetensors\"}}");
        CHECK_EQ_INT(st_open_dir(d, &m), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "s3.safetensors") != NULL);

        write_text(ip, "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\",\"t\":\"s2.safetensors\","
                       "\"q\":\"s2.safetensors\"}}");
        CHECK_EQ_INT(st_open_dir(d, &m), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "s2.safetensors") && strstr(ds_errmsg(), "'q'"));

        write_text(ip, "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\",\"t\":\"s2.safetensors\"}}");
        CHECK_EQ_INT(st_open_dir(d, &m), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "s1.safetensors") && strstr(ds_errmsg(), "'b'"));

        write_text(ip, "{\"weight_map\":[1]}");
        CHECK_EQ_INT(st_open_dir(d, &m), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "model.safetensors.index.json") != NULL);

        write_text(ip, "{\"weight_map\":{\"a\":\"../s1.safetensors\"}}");
        CHECK_EQ_INT(st_open_dir(d, &m), DS_ERR_INPUT);

        write_text(ip, "not json");
        CHECK_EQ_INT(st_open_dir(d, &m), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "model.safetensors.index.json") != NULL);

        /* A bad shard's message names the shard. */
        write_raw(s2, "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,9]}}",
                  strlen("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,9]}}"), 9);
        write_text(ip, "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\",\"t\":\"s2.safetensors\"}}");
        CHECK_EQ_INT(st_open_dir(d, &m), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "s2.safetensors") != NULL);
        CHECK(m == NULL);
        free(s1); free(s2); free(ip); free(d);
    }
}

/* Deterministic mutation fuzz of st_parse_header (SQLite style): any
 * outcome but a crash or an ASan report is fine; errors must be DS_ERR_INPUT. */
static void test_fuzz(void) {
    TEST("st_parse_header survives 20000 mutated headers") {
        const char *good = "{\"__metadata__\":{\"format\":\"pt\"},"
                           "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                           "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]},"
                           "\"c\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[22,23]}}";
        const char alphabet[] = "{}[],:\"0123456789-.eE \\abFU8";
        size_t n = strlen(good);
        unsigned char data[64] = {0};
        char *buf = xmalloc(n + 8);
        uint64_t s = 12345;
        int ok = 0, bad = 0, wrong = 0;
        for (int it = 0; it < 20000; it++) {
            memcpy(buf, good, n);
            size_t len = n;
            int edits = ((s >> 58) & 3) == 0 ? 2 : 1; /* high bits: LCG low bits cycle */
            for (int k = 0; k < edits; k++) {
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                size_t pos = (size_t)(s >> 33) % len;
                int op = (int)((s >> 20) % 3);
                char ch = alphabet[(s >> 40) % (sizeof alphabet - 1)];
                if (op == 0) buf[pos] = ch;
                else if (op == 1 && len > 1) { memmove(buf + pos, buf + pos + 1, len - pos - 1); len--; }
                else if (op == 2 && len < n + 7) { memmove(buf + pos + 1, buf + pos, len - pos); buf[pos] = ch; len++; }
            }
            st_tensor *ts = NULL;
            size_t cnt = 0;
            ds_status st = st_parse_header(buf, len, data, 23, "fuzz.safetensors", &ts, &cnt);
            if (st == DS_OK) {
                ok++;
                for (size_t i = 0; i < cnt; i++) {
                    if ((const unsigned char *)ts[i].data + ts[i].nbytes > data + 23) wrong++;
                    free(ts[i].name);
                }
                free(ts);
            } else {
                bad++;
                if (st != DS_ERR_INPUT || !strstr(ds_errmsg(), "fuzz.safetensors")) wrong++;
            }
        }
        free(buf);
        CHECK_EQ_INT(wrong, 0);
        if (getenv("ST_VERBOSE") || !(ok > 0 && bad > 0)) fprintf(stderr, "  ok %d bad %d wrong %d\n", ok, bad, wrong);
        CHECK(ok > 0 && bad > 0);
    }
}

/* ---- the bundled model and its variants (tests/fixtures.py: sharded and
 * bf16 copies written by an independent stdlib-Python safetensors writer) ---- */

static void test_fixtures(void) {
    const char *base = "data/stories260K";
    TEST("stories260K single file") {
        st_model *m = NULL;
        ds_status st = st_open_dir(base, &m);
        if (st) fprintf(stderr, "  %s\n", ds_errmsg());
        CHECK_EQ_INT(st, DS_OK);
        if (!m) continue;
        CHECK_EQ_INT(st_count(m), 47); /* 5 layers x 9 + embed + norm (tied) */
        const st_tensor *e = st_find(m, "model.embed_tokens.weight");
        CHECK(e && e->dtype == DS_DTYPE_F32 && e->ndim == 2 && e->shape[0] == 512 && e->shape[1] == 64);
        const st_tensor *q = st_find(m, "model.layers.4.self_attn.k_proj.weight");
        CHECK(q && q->shape[0] == 32 && q->shape[1] == 64);
        float *f = xmalloc(512 * 64 * sizeof *f);
        CHECK_EQ_INT(st_to_f32(e, f), DS_OK);
        double ss = 0;
        for (int i = 0; i < 512 * 64; i++) ss += (double)f[i] * f[i];
        CHECK(ss > 0 && isfinite(ss));
        free(f);
        st_close(m);
    }
    TEST("stories260K-sharded equals the single file") {
        st_model *a = NULL, *b = NULL;
        CHECK_EQ_INT(st_open_dir(base, &a), DS_OK);
        ds_status st = st_open_dir(fixture("models/stories260K-sharded"), &b);
        if (st) fprintf(stderr, "  %s\n", ds_errmsg());
        CHECK_EQ_INT(st, DS_OK);
        if (a && b) {
            CHECK_EQ_INT(st_num_shards(b), 3);
            CHECK_EQ_INT(st_count(a), st_count(b));
            for (size_t i = 0; i < st_count(a) && i < st_count(b); i++) {
                const st_tensor *x = st_get(a, i), *y = st_get(b, i);
                CHECK(strcmp(x->name, y->name) == 0);
                CHECK(x->dtype == y->dtype && x->ndim == y->ndim && x->nbytes == y->nbytes);
                CHECK(memcmp(x->shape, y->shape, sizeof x->shape) == 0);
                CHECK(x->nbytes == y->nbytes && memcmp(x->data, y->data, x->nbytes) == 0);
            }
        }
        st_close(a);
        st_close(b);
    }
    TEST("stories260K-bf16 = bf16(stories260K)") {
        st_model *a = NULL, *b = NULL;
        CHECK_EQ_INT(st_open_dir(base, &a), DS_OK);
        CHECK_EQ_INT(st_open_dir(fixture("models/stories260K-bf16"), &b), DS_OK);
        if (a && b) {
            CHECK_EQ_INT(st_count(a), st_count(b));
            long bad = 0;
            for (size_t i = 0; i < st_count(a); i++) {
                const st_tensor *x = st_get(a, i), *y = st_find(b, x->name);
                CHECK(y != NULL);
                if (!y) continue;
                CHECK_EQ_INT(y->dtype, DS_DTYPE_BF16);
                CHECK_EQ_INT(st_numel(x), st_numel(y));
                size_t n = (size_t)st_numel(x);
                float *fx = xmalloc(n * sizeof *fx), *fy = xmalloc(n * sizeof *fy);
                CHECK_EQ_INT(st_to_f32(x, fx), DS_OK);
                CHECK_EQ_INT(st_to_f32(y, fy), DS_OK);
                for (size_t k = 0; k < n; k++)
                    if (ds_round_to(fx[k], DS_DTYPE_BF16) != fy[k]) bad++;
                free(fx);
                free(fy);
            }
            CHECK_EQ_INT(bad, 0);
        }
        st_close(a);
        st_close(b);
    }
}

/* ---- gen_model (bench/gen_model.c), when built ---- */

static cJSON *read_json(const char *dir, const char *name) {
    char *p = ds_path_join(dir, name), *text = NULL;
    size_t len;
    cJSON *j = NULL;
    if (ds_read_file(p, &text, &len) == DS_OK) j = cJSON_Parse(text);
    free(text);
    free(p);
    return j;
}

static int json_int(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItem(o, k);
    return cJSON_IsNumber(v) ? (int)v->valuedouble : -1;
}

static void test_gen_model(void) {
    const char *build = getenv("BUILD") ? getenv("BUILD") : "build";
    char *bin = xasprintf("%s/gen_model", build);
    int have = access(bin, X_OK) == 0;
    TEST("gen_model: tiny llama, sharded, reads back") {
        if (!have) { SKIP("gen_model not built"); continue; }
        char *d = tmp_path("gen_llama");
        char *cmd = xasprintf("%s --out %s --hidden 64 --intermediate 96 --layers 3 --heads 4 --kv-heads 2 "
                              "--vocab 300 --dtype bf16 --seed 7 --max-shard-size 60000%s > %s/gen.log 2>&1",
                              bin, d, " --tokenizer-from data/stories260K", g_tmp);
        CHECK_EQ_INT(system(cmd), 0);
        st_model *m = NULL;
        ds_status st = st_open_dir(d, &m);
        if (st) fprintf(stderr, "  %s\n", ds_errmsg());
        CHECK_EQ_INT(st, DS_OK);
        if (m) {
            CHECK(st_num_shards(m) > 1);
            CHECK_EQ_INT(st_count(m), 3 + 3 * 9);
            const st_tensor *t = st_find(m, "model.layers.2.self_attn.k_proj.weight");
            CHECK(t && t->dtype == DS_DTYPE_BF16 && t->shape[0] == 32 && t->shape[1] == 64);
            const st_tensor *q = st_find(m, "model.layers.1.mlp.gate_proj.weight");
            CHECK(q && q->shape[0] == 96 && q->shape[1] == 64);
            CHECK(st_find(m, "lm_head.weight") != NULL);
            if (q) { /* ~ N(0, 1/sqrt(64)) */
                size_t n = (size_t)st_numel(q);
                float *f = xmalloc(n * sizeof *f);
                CHECK_EQ_INT(st_to_f32(q, f), DS_OK);
                double s = 0, s2 = 0;
                for (size_t i = 0; i < n; i++) { s += f[i]; s2 += (double)f[i] * f[i]; }
                double mean = s / (double)n, sd = sqrt(s2 / (double)n - mean * mean);
                CHECK(fabs(mean) < 0.02 && fabs(sd - 0.125) < 0.01);
                free(f);
            }
            const st_tensor *nw = st_find(m, "model.norm.weight");
            float f[64];
            CHECK(nw && st_to_f32(nw, f) == DS_OK && fabsf(f[0] - 1.0f) < 0.2f);
        }
        st_close(m);
        cJSON *cfg = read_json(d, "config.json");
        CHECK(cfg != NULL);
        CHECK_EQ_INT(json_int(cfg, "hidden_size"), 64);
        CHECK_EQ_INT(json_int(cfg, "num_key_value_heads"), 2);
        CHECK_EQ_INT(json_int(cfg, "head_dim"), 16);
        CHECK_EQ_INT(json_int(cfg, "vocab_size"), 300);
        CHECK(cJSON_IsString(cJSON_GetObjectItem(cfg, "torch_dtype")) &&
              strcmp(cJSON_GetObjectItem(cfg, "torch_dtype")->valuestring, "bfloat16") == 0);
        cJSON_Delete(cfg);
        free(cmd);
        free(d);
    }
    TEST("gen_model: tiny qwen3_moe, tied, f32") {
        if (!have) { SKIP("gen_model not built"); continue; }
        char *d = tmp_path("gen_moe");
        char *cmd = xasprintf("%s --out %s --arch qwen3_moe --hidden 32 --intermediate 64 --layers 2 --heads 4 "
                              "--kv-heads 2 --head-dim 16 --vocab 100 --experts 4 --experts-per-tok 2 "
                              "--moe-intermediate 24 --tie --dtype f32 > %s/gen2.log 2>&1", bin, d, g_tmp);
        CHECK_EQ_INT(system(cmd), 0);
        st_model *m = NULL;
        CHECK_EQ_INT(st_open_dir(d, &m), DS_OK);
        if (m) {
            CHECK(st_find(m, "lm_head.weight") == NULL);
            const st_tensor *t = st_find(m, "model.layers.1.mlp.experts.3.down_proj.weight");
            CHECK(t && t->dtype == DS_DTYPE_F32 && t->shape[0] == 32 && t->shape[1] == 24);
            t = st_find(m, "model.layers.0.mlp.gate.weight");
            CHECK(t && t->shape[0] == 4 && t->shape[1] == 32);
            t = st_find(m, "model.layers.0.self_attn.q_norm.weight");
            CHECK(t && t->shape[0] == 16);
            t = st_find(m, "model.layers.0.self_attn.q_proj.weight");
            CHECK(t && t->shape[0] == 64 && t->shape[1] == 32);
            /* embed(1) + norm(1) + per layer: 2 norms, 4 attn, 2 qk norms, router, 4*3 experts */
            CHECK_EQ_INT(st_count(m), 2 + 2 * (2 + 4 + 2 + 1 + 12));
        }
        st_close(m);
        cJSON *cfg = read_json(d, "config.json");
        CHECK(cfg != NULL);
        CHECK_EQ_INT(json_int(cfg, "num_experts"), 4);
        CHECK_EQ_INT(json_int(cfg, "num_experts_per_tok"), 2);
        CHECK_EQ_INT(json_int(cfg, "moe_intermediate_size"), 24);
        CHECK(cJSON_IsTrue(cJSON_GetObjectItem(cfg, "tie_word_embeddings")));
        const cJSON *arch = cJSON_GetArrayItem(cJSON_GetObjectItem(cfg, "architectures"), 0);
        CHECK(cJSON_IsString(arch) && strcmp(arch->valuestring, "Qwen3MoeForCausalLM") == 0);
        cJSON_Delete(cfg);
        free(cmd);
        free(d);
    }
    TEST("gen_model: same seed -> same bytes; bad usage -> exit 2") {
        if (!have) { SKIP("gen_model not built"); continue; }
        char *cmd = xasprintf("%s --out %s/g1 --hidden 16 --intermediate 32 --layers 1 --heads 2 --kv-heads 1 "
                              "--vocab 50 --seed 3 >/dev/null 2>&1 && %s --out %s/g2 --hidden 16 "
                              "--intermediate 32 --layers 1 --heads 2 --kv-heads 1 --vocab 50 --seed 3 "
                              ">/dev/null 2>&1 && cmp -s %s/g1/model.safetensors %s/g2/model.safetensors",
                              bin, g_tmp, bin, g_tmp, g_tmp, g_tmp);
        CHECK_EQ_INT(system(cmd), 0);
        free(cmd);
        cmd = xasprintf("%s --out %s/g3 --hidden 16 --heads 3 >/dev/null 2>&1", bin, g_tmp);
        CHECK_EQ_INT(test_system(cmd), 2);
        free(cmd);
    }
    free(bin);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/ds_st_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    test_roundtrip();
    test_malformed();
    test_fuzz();
    test_fixtures();
    test_gen_model();
    char *rm = xasprintf("rm -rf '%s'", g_tmp);
    if (system(rm) != 0) fprintf(stderr, "warning: could not remove %s\n", g_tmp);
    free(rm);
    return TEST_REPORT();
}
