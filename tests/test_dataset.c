/*
 * test_dataset.c - dataset.c: .txt / .jsonl / .gz loading, skipped-row
 * counting, input_ids rows, malformed files, deterministic shuffle, the
 * streaming per-rank slice (dataset_load_slice == dataset_load +
 * dataset_shuffle_take + rank slice, on generated files with every kind of
 * skipped row, CRLF, NULs, rows longer than the reader's chunk, chat rows),
 * and chat rendering against transformers' apply_chat_template goldens
 * (tests/golden/tokenizer/chat.json from tests/gen_tokenizer_golden.py).
 * Uses the bundled data/stories260K; the chat goldens need
 * ../shared/tokenizers (SKIP if absent).
 */
#include "dataset.h"
#include "test.h"
#include "fixtures.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <unistd.h>
#include <zlib.h>

#define STORIES "data/stories260K"

static int same_ids(const ds_sample *s, const int32_t *want, size_t n) {
    if ((size_t)s->n != n) return 0;
    for (size_t i = 0; i < n; i++)
        if (s->ids[i] != want[i]) return 0;
    return 1;
}

static void test_chat_goldens(void) {
    char *buf = NULL;
    size_t len;
    TEST("chat templates match transformers apply_chat_template") {
        if (ds_read_file("tests/golden/tokenizer/chat.json", &buf, &len)) { SKIP("no chat goldens"); break; }
        cJSON *root = cJSON_Parse(buf), *e;
        CHECK(cJSON_IsArray(root));
        int n = 0;
        cJSON_ArrayForEach(e, root) {
            const char *dir = fixture(cJSON_GetObjectItem(e, "dir")->valuestring);
            const char *want = cJSON_GetObjectItem(e, "rendered")->valuestring;
            char *mj = cJSON_PrintUnformatted(cJSON_GetObjectItem(e, "messages"));
            tokenizer *t = NULL;
            if (!ds_is_dir(dir)) { free(mj); continue; }
            CHECK_EQ_INT(tokenizer_load(dir, &t), DS_OK);
            char *got = NULL;
            const cJSON *md = cJSON_GetObjectItem(e, "model_dir");
            ds_status st = dataset_render_chat(t, cJSON_IsString(md) ? md->valuestring : NULL, mj, &got);
            CHECK_EQ_INT(st, DS_OK);
            if (st) fprintf(stderr, "  %s: %s\n", dir, ds_errmsg());
            if (got && strcmp(got, want)) {
                fprintf(stderr, "FAIL chat %s case %d:\n--- got\n%s\n--- want\n%s\n", dir, n, got, want);
                t_cur_failed = 1;
            }
            /* ids of the rendered text as HF (add_special_tokens=False) */
            const cJSON *ids = cJSON_GetObjectItem(e, "ids");
            if (got && ids) {
                int32_t *v = NULL;
                size_t nv = 0;
                CHECK_EQ_INT(tokenizer_encode(t, got, strlen(got), 0, &v, &nv), DS_OK);
                CHECK_EQ_INT(nv, cJSON_GetArraySize(ids));
                for (size_t i = 0; i < nv && i < (size_t)cJSON_GetArraySize(ids); i++)
                    if (v[i] != cJSON_GetArrayItem(ids, (int)i)->valueint) { CHECK(!"chat ids differ"); break; }
                free(v);
            }
            free(got);
            free(mj);
            tokenizer_free(t);
            n++;
        }
        if (n == 0) SKIP("none of the goldens' tokenizer folders (../shared/tokenizers) is present");
        cJSON_Delete(root);
    }
    free(buf);
}


/* ---- streaming slices ---- */

typedef struct tbuf { char *p; size_t n, cap; } tbuf;

static void tb_put(tbuf *b, const void *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void tb_puts(tbuf *b, const char *s) { tb_put(b, s, strlen(s)); }

static uint32_t lcg(uint32_t *r) { *r = *r * 1103515245u + 12345u; return *r >> 8; }

static const char *const WORDS[] = {"Once", "upon", "a", "time", "Lily", "played", "with", "her", "dog",
                                    "in", "the", "park", "and", "was", "very", "happy", "caf\xc3\xa9"};

static void tb_words(tbuf *b, uint32_t *r, size_t n) {
    for (size_t k = 0; k < n; k++) {
        if (k) tb_puts(b, " ");
        tb_puts(b, WORDS[lcg(r) % (sizeof WORDS / sizeof *WORDS)]);
    }
}

/* JSON lines with every kind of row: text, blank and whitespace-only lines,
 * empty / null / invalid-UTF-8 text (skipped), input_ids (also empty:
 * skipped), "\u0000" inside text, CRLF, a row longer than the reader's
 * chunk, and a last line without '\n'. */
static void gen_jsonl(tbuf *b) {
    uint32_t r = 12345;
    char tmp[128];
    for (int i = 0; i < 2500; i++) {
        int kind = (int)(lcg(&r) % 40);
        if (i == 1200) { /* ~330 KB, more than one read chunk (input_ids: cheap to load many times) */
            tb_puts(b, "{\"input_ids\": [1");
            for (int k = 0; k < 60000; k++) { snprintf(tmp, sizeof tmp, ", %d", 3 + k % 500); tb_puts(b, tmp); }
            tb_puts(b, "]}\n");
        } else if (kind == 0) tb_puts(b, "\n");
        else if (kind == 1) tb_puts(b, "  \t\r\n");
        else if (kind == 2) tb_puts(b, "{\"text\": \"\"}\n");
        else if (kind == 3) tb_puts(b, "{\"text\": null}\n");
        else if (kind == 4) tb_puts(b, "{\"text\": \"bad \xff\xfe row\"}\n");
        else if (kind == 5) {
            snprintf(tmp, sizeof tmp, "{\"input_ids\": [1, %d, %d, 7]}\n", 2 + i % 100, 3 + i % 50);
            tb_puts(b, tmp);
        } else if (kind == 6) tb_puts(b, "{\"input_ids\": []}\n");
        else if (kind == 7) tb_puts(b, "{\"text\": \"nul\\u0000hidden\"}\r\n");
        else {
            snprintf(tmp, sizeof tmp, "{\"text\": \"%d ", i);
            tb_puts(b, tmp);
            tb_words(b, &r, 1 + lcg(&r) % 40);
            tb_puts(b, kind == 8 ? "\", \"other\": [1, 2]}\r\n" : "\"}\n");
        }
    }
    tb_puts(b, "{\"text\": \"the very last row\"}");
}

/* .txt documents: blank, whitespace-only, CRLF-blank and NUL-only lines
 * (all separators), invalid UTF-8 inside a document (skipped), NUL inside a
 * line, CRLF, a blank line longer than the reader's chunk, no final '\n'. */
static void gen_txt(tbuf *b) {
    uint32_t r = 777;
    char tmp[64];
    for (int i = 0; i < 4000; i++) {
        int kind = (int)(lcg(&r) % 24);
        if (i == 900) { /* a blank line longer than one read chunk, then a document spanning chunks */
            for (int k = 0; k < 40000; k++) tb_puts(b, k % 2 ? " \t      " : "   ");
            tb_puts(b, "\n");
        }
        else if (kind < 3) tb_puts(b, "\n");
        else if (kind == 3) tb_puts(b, "   \t\n");
        else if (kind == 4) tb_puts(b, "\r\n");
        else if (kind == 5) tb_put(b, "\0\n", 2);
        else if (kind == 6) tb_puts(b, "bad \xc3 line\n");
        else if (kind == 7) tb_put(b, "a\0b nul inside\n", 15);
        else {
            snprintf(tmp, sizeof tmp, "%d ", i);
            tb_puts(b, tmp);
            tb_words(b, &r, 1 + lcg(&r) % 30);
            tb_puts(b, kind == 8 ? "\r\n" : "\n");
        }
    }
    tb_puts(b, "last document, no newline");
}

static int write_file(const char *path, const tbuf *b, int gz) {
    if (gz) {
        gzFile f = gzopen(path, "wb6");
        if (!f) return -1;
        size_t off = 0;
        while (off < b->n) {
            unsigned k = (unsigned)(b->n - off < (1u << 20) ? b->n - off : (1u << 20));
            if (gzwrite(f, b->p + off, k) != (int)k) { gzclose(f); return -1; }
            off += k;
        }
        return gzclose(f) == Z_OK ? 0 : -1;
    }
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(b->p, 1, b->n, f);
    return fclose(f) == 0 && w == b->n ? 0 : -1;
}

static int same_sample(const ds_sample *a, const ds_sample *b) {
    return a->n == b->n && (a->n == 0 || memcmp(a->ids, b->ids, (size_t)a->n * sizeof *a->ids) == 0);
}

/* Slices over world sizes 1, 2, 4 concatenate to dataset_load + shuffle_take. */
static void check_slices(const char *path, const tokenizer *t, const dataset_opts *o, uint64_t seed, size_t N) {
    ds_dataset ref;
    if (dataset_load(path, t, o, &ref) != DS_OK) {
        fprintf(stderr, "FAIL %s: dataset_load(%s): %s\n", t_cur, path, ds_errmsg());
        t_cur_failed = 1;
        return;
    }
    size_t usable = ref.n;
    dataset_shuffle_take(&ref, seed, N);
    for (int world = 1; world <= 4; world *= 2) {
        size_t at = 0;
        for (int rank = 0; rank < world; rank++) {
            ds_dataset s;
            dataset_slice_info info;
            ds_status st = dataset_load_slice(path, t, o, seed, N, rank, world, &s, &info);
            CHECK_EQ_INT(st, DS_OK);
            if (st) { fprintf(stderr, "  %s: %s\n", path, ds_errmsg()); return; }
            CHECK_EQ_INT(info.usable, usable);
            CHECK_EQ_INT(info.total, ref.n);
            CHECK_EQ_INT(info.first, at);
            CHECK_EQ_INT(s.skipped, ref.skipped);
            for (size_t i = 0; i < s.n; i++)
                if (at + i >= ref.n || !same_sample(&s.rows[i], &ref.rows[at + i])) {
                    fprintf(stderr, "FAIL %s: %s seed %llu N %zu: rank %d/%d row %zu differs from the whole-file path\n",
                            t_cur, path, (unsigned long long)seed, N, rank, world, i);
                    t_cur_failed = 1;
                    break;
                }
            at += s.n;
            dataset_free(&s);
        }
        CHECK_EQ_INT(at, ref.n);
    }
    dataset_free(&ref);
}

static void test_shuffle_positions(void) {
    TEST("shuffle_positions gives shuffle_take's permutation without the array") {
        const size_t ns[] = {0, 1, 2, 3, 5, 64, 1000, 4099};
        const uint64_t seeds[] = {0, 42, UINT64_MAX - 3};
        for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
            for (size_t b = 0; b < 3; b++) {
                size_t n = ns[a];
                ds_dataset d = {0};
                d.n = n;
                d.rows = xcalloc(n + 1, sizeof *d.rows);
                for (size_t i = 0; i < n; i++) {
                    d.rows[i].ids = xmalloc(sizeof(int32_t));
                    d.rows[i].ids[0] = (int32_t)i;
                    d.rows[i].n = 1;
                }
                dataset_shuffle_take(&d, seeds[b], n);
                size_t win[][2] = {{0, n}, {0, n > 0}, {n / 3, n / 2 - n / 3}, {n ? n - 1 : 0, n > 0}};
                for (int w = 0; w < 4; w++) {
                    size_t first = win[w][0], count = win[w][1];
                    size_t *ord = xmalloc((count + 1) * sizeof *ord);
                    dataset_shuffle_positions(seeds[b], n, first, count, ord);
                    for (size_t i = 0; i < count; i++)
                        if (ord[i] != (size_t)d.rows[first + i].ids[0]) {
                            fprintf(stderr, "FAIL %s: n %zu seed %llu window [%zu,+%zu) position %zu\n", t_cur, n,
                                    (unsigned long long)seeds[b], first, count, first + i);
                            t_cur_failed = 1;
                            break;
                        }
                    free(ord);
                }
                dataset_free(&d);
            }
    }
}

static void test_slices(const tokenizer *t, int have) {
    char dir[] = "/tmp/doneshot-test-dataset-XXXXXX", p[4][128];
    if (!mkdtemp(dir)) { TEST("slices: temp dir") CHECK(!"mkdtemp"); return; }
    tbuf j = {0}, x = {0};
    gen_jsonl(&j);
    gen_txt(&x);
    snprintf(p[0], sizeof p[0], "%s/gen.jsonl", dir);
    snprintf(p[1], sizeof p[1], "%s/gen.jsonl.gz", dir);
    snprintf(p[2], sizeof p[2], "%s/gen.txt", dir);
    snprintf(p[3], sizeof p[3], "%s/gen.data", dir); /* no known extension: sniffed as .txt */
    int ok = write_file(p[0], &j, 0) == 0 && write_file(p[1], &j, 1) == 0 && write_file(p[2], &x, 0) == 0 &&
             write_file(p[3], &x, 1) == 0;

    TEST("slice: streaming slices over 1, 2, 4 ranks == whole-file load + shuffle + slice") {
        if (!have) { SKIP("no data/stories260K tokenizer"); break; }
        CHECK(ok);
        dataset_opts o1 = {.add_special = 1, .model_dir = STORIES};           /* BOS: no tokenizing in the scan */
        dataset_opts o0 = {.add_special = 0, .max_seq_len = 7};               /* no BOS: the scan tokenizes */
        dataset_opts o2 = {.add_special = 1, .max_seq_len = 5, .text_field = "text"};
        for (int f = 0; f < 4; f++) {
            check_slices(p[f], t, &o1, 0, 64);
            if (f % 2) check_slices(p[f], t, &o1, 42, 100000); /* more samples than rows: all, shuffled */
            if (f >= 1 && f <= 2) check_slices(p[f], t, &o0, 7, 33);
            check_slices(p[f], t, &o2, 3, 3);       /* fewer samples than ranks */
        }
        const char *small[] = {"tests/data/stories.txt", "tests/data/rows.jsonl", "tests/data/rows.jsonl.gz",
                               "tests/data/bad_utf8.jsonl", "data/tinystories_sample.txt"};
        for (int f = 0; f < 5; f++) {
            check_slices(small[f], t, &o1, 0, 512);
            check_slices(small[f], t, &o1, 5, 2);
        }
        /* chat rows rendered with their own BOS (add_special 0: the scan tokenizes) */
        dataset_opts oc = {.add_special = 1, .model_dir = "tests/data/chat-llama2"};
        check_slices("tests/data/chat.jsonl", t, &oc, 0, 8);
        check_slices("tests/data/chat.jsonl", t, &oc, 1, 1);
    }

    TEST("slice: errors (line numbers, missing file, truncated gzip, bad rank)") {
        if (!have) { SKIP("no data/stories260K tokenizer"); break; }
        dataset_opts o = {.add_special = 1, .model_dir = STORIES};
        ds_dataset d;
        dataset_slice_info info;
        CHECK_EQ_INT(dataset_load_slice("tests/data/malformed.jsonl", t, &o, 0, 8, 0, 1, &d, &info), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "malformed.jsonl:2") != NULL);
        CHECK_EQ_INT(dataset_load_slice("tests/data/does-not-exist.txt", t, &o, 0, 8, 0, 1, &d, &info), DS_ERR_INPUT);
        CHECK_EQ_INT(dataset_load_slice("tests/data/rows.jsonl", t, &o, 0, 8, 2, 2, &d, &info), DS_ERR_USAGE);
        CHECK_EQ_INT(dataset_load_slice("tests/data/chat.jsonl", t, &o, 0, 8, 0, 1, &d, &info), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "chat.jsonl:1") != NULL && strstr(ds_errmsg(), "chat template") != NULL);
        /* a gzip cut in the middle: an error naming the file, in both loaders */
        char cut[160];
        snprintf(cut, sizeof cut, "%s/cut.jsonl.gz", dir);
        char *gz = NULL;
        size_t len = 0;
        CHECK_EQ_INT(ds_read_file(p[1], &gz, &len), DS_OK);
        tbuf half = {0};
        if (gz) tb_put(&half, gz, len / 2);
        CHECK_EQ_INT(write_file(cut, &half, 0), 0);
        CHECK_EQ_INT(dataset_load_slice(cut, t, &o, 0, 8, 0, 1, &d, &info), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "cut.jsonl.gz") != NULL);
        CHECK_EQ_INT(dataset_load(cut, t, &o, &d), DS_ERR_INPUT);
        free(gz);
        free(half.p);
        unlink(cut);
        /* only blank / skipped rows */
        char empty[160];
        tbuf e = {0};
        tb_puts(&e, "\n{\"text\": \"\"}\n  \n");
        snprintf(empty, sizeof empty, "%s/empty.jsonl", dir);
        CHECK_EQ_INT(write_file(empty, &e, 0), 0);
        CHECK_EQ_INT(dataset_load_slice(empty, t, &o, 0, 8, 0, 1, &d, &info), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "no usable rows") != NULL);
        free(e.p);
        unlink(empty);
    }
    for (int f = 0; f < 4; f++) unlink(p[f]);
    rmdir(dir);
    free(j.p);
    free(x.p);
}

int main(void) {
    ds_log_set_level(DS_LOG_ERROR);
    tokenizer *t = NULL;
    int have = ds_is_dir(STORIES) && tokenizer_load(STORIES, &t) == DS_OK;
    dataset_opts o = {.add_special = 1, .model_dir = STORIES};

    TEST("txt: blank-line separated documents") {
        if (!have) { SKIP("no data/stories260K tokenizer"); break; }
        ds_dataset d;
        CHECK_EQ_INT(dataset_load("tests/data/stories.txt", t, &o, &d), DS_OK);
        CHECK_EQ_INT(d.n, 3);
        CHECK_EQ_INT(d.skipped, 0);
        const char *docs[] = {"Once upon a time, there was a little girl.\nShe liked to play.",
                              "The cat sat on the mat.", "One day, Lily went to the park."};
        for (size_t i = 0; i < 3 && i < d.n; i++) {
            int32_t *ids; size_t n;
            CHECK_EQ_INT(tokenizer_encode(t, docs[i], strlen(docs[i]), 1, &ids, &n), DS_OK);
            CHECK(same_ids(&d.rows[i], ids, n));
            CHECK_EQ_INT(d.rows[i].ids[0], 1); /* BOS */
            free(ids);
        }
        dataset_free(&d);
    }

    TEST("jsonl and jsonl.gz: text, input_ids, empty rows skipped") {
        if (!have) { SKIP("no data/stories260K tokenizer"); break; }
        const char *paths[] = {"tests/data/rows.jsonl", "tests/data/rows.jsonl.gz"};
        for (int p = 0; p < 2; p++) {
            ds_dataset d;
            CHECK_EQ_INT(dataset_load(paths[p], t, &o, &d), DS_OK);
            CHECK_EQ_INT(d.n, 4);
            CHECK_EQ_INT(d.skipped, 1);
            int32_t want[] = {1, 2, 3};
            if (d.n == 4) CHECK(same_ids(&d.rows[2], want, 3));
            dataset_free(&d);
        }
    }

    TEST("max_seq_len truncates, add_special=0 drops BOS") {
        if (!have) { SKIP("no data/stories260K tokenizer"); break; }
        dataset_opts o2 = {.add_special = 0, .max_seq_len = 3};
        ds_dataset d;
        CHECK_EQ_INT(dataset_load("tests/data/stories.txt", t, &o2, &d), DS_OK);
        for (size_t i = 0; i < d.n; i++) { CHECK(d.rows[i].n <= 3); CHECK(d.rows[i].ids[0] != 1); }
        dataset_free(&d);
    }

    TEST("invalid UTF-8 rows are skipped and counted") {
        if (!have) { SKIP("no data/stories260K tokenizer"); break; }
        ds_dataset d;
        CHECK_EQ_INT(dataset_load("tests/data/bad_utf8.jsonl", t, &o, &d), DS_OK);
        CHECK_EQ_INT(d.n, 2);
        CHECK_EQ_INT(d.skipped, 1);
        dataset_free(&d);
    }

    TEST("malformed inputs give errors with line numbers") {
        if (!have) { SKIP("no data/stories260K tokenizer"); break; }
        ds_dataset d;
        CHECK_EQ_INT(dataset_load("tests/data/malformed.jsonl", t, &o, &d), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "malformed.jsonl:2") != NULL);
        CHECK_EQ_INT(dataset_load("tests/data/does-not-exist.txt", t, &o, &d), DS_ERR_INPUT);
        dataset_opts o3 = o;
        o3.text_field = "body";
        CHECK_EQ_INT(dataset_load("tests/data/rows.jsonl", t, &o3, &d), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "'body'") != NULL);
        /* a chat row with a template-less model */
        CHECK_EQ_INT(dataset_load("tests/data/chat.jsonl", t, &o, &d), DS_ERR_INPUT);
        CHECK(strstr(ds_errmsg(), "chat template") != NULL);
    }

    TEST("shuffle_take is a deterministic permutation") {
        ds_dataset a = {0}, b = {0};
        a.n = b.n = 100;
        a.rows = xcalloc(100, sizeof *a.rows);
        b.rows = xcalloc(100, sizeof *b.rows);
        for (int i = 0; i < 100; i++) {
            a.rows[i].ids = xmalloc(sizeof(int32_t)); a.rows[i].ids[0] = i; a.rows[i].n = 1;
            b.rows[i].ids = xmalloc(sizeof(int32_t)); b.rows[i].ids[0] = i; b.rows[i].n = 1;
        }
        dataset_shuffle_take(&a, 42, 1000);
        dataset_shuffle_take(&b, 42, 10);
        CHECK_EQ_INT(a.n, 100);
        CHECK_EQ_INT(b.n, 10);
        int seen[100] = {0}, moved = 0;
        for (int i = 0; i < 100; i++) { seen[a.rows[i].ids[0]]++; moved += a.rows[i].ids[0] != i; }
        for (int i = 0; i < 100; i++) CHECK_EQ_INT(seen[i], 1);
        CHECK(moved > 50);
        for (int i = 0; i < 10; i++) CHECK_EQ_INT(a.rows[i].ids[0], b.rows[i].ids[0]);
        ds_dataset c = {0};
        c.n = 100;
        c.rows = xcalloc(100, sizeof *c.rows);
        for (int i = 0; i < 100; i++) { c.rows[i].ids = xmalloc(sizeof(int32_t)); c.rows[i].ids[0] = i; c.rows[i].n = 1; }
        dataset_shuffle_take(&c, 43, 100);
        int diff = 0;
        for (int i = 0; i < 100; i++) diff += c.rows[i].ids[0] != a.rows[i].ids[0];
        CHECK(diff > 0);
        dataset_free(&a); dataset_free(&b); dataset_free(&c);
    }

    test_shuffle_positions();
    test_slices(t, have);
    test_chat_goldens();
    tokenizer_free(t);
    return TEST_REPORT();
}
