/*
 * test_dataset.c - dataset.c: .txt / .jsonl / .gz loading, skipped-row
 * counting, input_ids rows, malformed files, deterministic shuffle, and chat
 * rendering against transformers' apply_chat_template goldens
 * (tests/golden/tokenizer/chat.json from tests/gen_tokenizer_golden.py).
 * Uses ../shared/models/stories260K and ../shared/tokenizers (SKIP if absent).
 */
#include "dataset.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <stdlib.h>

#define STORIES "../shared/models/stories260K"

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
            const char *dir = cJSON_GetObjectItem(e, "dir")->valuestring;
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

int main(void) {
    ds_log_set_level(DS_LOG_ERROR);
    tokenizer *t = NULL;
    int have = ds_is_dir(STORIES) && tokenizer_load(STORIES, &t) == DS_OK;
    dataset_opts o = {.add_special = 1, .model_dir = STORIES};

    TEST("txt: blank-line separated documents") {
        if (!have) { SKIP("no ../shared/models/stories260K"); break; }
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
        if (!have) { SKIP("no ../shared/models/stories260K"); break; }
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
        if (!have) { SKIP("no ../shared/models/stories260K"); break; }
        dataset_opts o2 = {.add_special = 0, .max_seq_len = 3};
        ds_dataset d;
        CHECK_EQ_INT(dataset_load("tests/data/stories.txt", t, &o2, &d), DS_OK);
        for (size_t i = 0; i < d.n; i++) { CHECK(d.rows[i].n <= 3); CHECK(d.rows[i].ids[0] != 1); }
        dataset_free(&d);
    }

    TEST("invalid UTF-8 rows are skipped and counted") {
        if (!have) { SKIP("no ../shared/models/stories260K"); break; }
        ds_dataset d;
        CHECK_EQ_INT(dataset_load("tests/data/bad_utf8.jsonl", t, &o, &d), DS_OK);
        CHECK_EQ_INT(d.n, 2);
        CHECK_EQ_INT(d.skipped, 1);
        dataset_free(&d);
    }

    TEST("malformed inputs give errors with line numbers") {
        if (!have) { SKIP("no ../shared/models/stories260K"); break; }
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

    test_chat_goldens();
    tokenizer_free(t);
    return TEST_REPORT();
}
