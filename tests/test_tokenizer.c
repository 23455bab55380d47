/*
 * test_tokenizer.c - tokenizer.c against Hugging Face tokenizers goldens
 * (tests/golden/tokenizer/NAME.json, made by tests/gen_tokenizer_golden.py from
 * every tokenizer of the project's shared inputs; the same files are
 * committed under tests/data/tokenizers and materialized by tests/fixtures.py,
 * checked by SHA-256): encode with and without special tokens
 * must give identical ids, decode must give HF's exact string. Plus
 * malformed tokenizer.json files (clean errors, no crash), a directory with
 * only tokenizer.json, and invalid UTF-8 input. Run from the repo root.
 */
#include "tokenizer.h"
#include "test.h"
#include "fixtures.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <sys/stat.h>

static const char *NAMES[] = {"stories260K", "gpt2", "llama2", "llama3", "llama3.1", "mistral-7b-v0.1",
                              "phi-3-mini", "qwen2", "qwen2.5", "qwen3"};

static cJSON *load_json(const char *path) {
    char *buf = NULL;
    size_t len;
    if (ds_read_file(path, &buf, &len)) return NULL;
    cJSON *j = cJSON_ParseWithLength(buf, len);
    free(buf);
    return j;
}

static int ids_equal(const int32_t *v, size_t n, const cJSON *want, size_t *at) {
    size_t wn = (size_t)cJSON_GetArraySize(want), i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, want) {
        if (i >= n || v[i] != e->valueint) { *at = i; return 0; }
        i++;
    }
    *at = i;
    return n == wn;
}

static void golden(const char *name, const cJSON *corpus) {
    static char title[128];
    char path[256];
    snprintf(path, sizeof path, "tests/golden/tokenizer/%s.json", name);
    snprintf(title, sizeof title, "golden ids and decode: %s", name);
    TEST(title) {
        cJSON *g = load_json(path);
        const char *tp = g ? fixture(cJSON_GetObjectItem(g, "path")->valuestring) : NULL;
        CHECK(g != NULL && ds_file_exists(tp));
        if (!g || !ds_file_exists(tp)) { cJSON_Delete(g); break; }
        tokenizer *t = NULL;
        double t0 = ds_now();
        ds_status st = tokenizer_load(tp, &t);
        double tl = ds_now() - t0;
        CHECK_EQ_INT(st, DS_OK);
        if (st) { fprintf(stderr, "  %s\n", ds_errmsg()); cJSON_Delete(g); break; }
        int n = cJSON_GetArraySize(corpus), bad = 0, total = 0;
        for (int mode = 0; mode < 2; mode++) {
            const cJSON *want = cJSON_GetObjectItem(g, mode ? "add_special" : "no_special");
            for (int i = 0; i < n; i++) {
                const char *text = cJSON_GetArrayItem(corpus, i)->valuestring;
                int32_t *ids = NULL;
                size_t m = 0, at;
                CHECK_EQ_INT(tokenizer_encode(t, text, strlen(text), mode, &ids, &m), DS_OK);
                total++;
                if (!ids_equal(ids, m, cJSON_GetArrayItem(want, i), &at)) {
                    if (bad++ < 3)
                        fprintf(stderr, "FAIL %s: entry %d (add_special=%d) differs at id %zu: \"%.60s\"\n", name, i,
                                mode, at, text);
                    t_cur_failed = 1;
                }
                free(ids);
            }
        }
        const cJSON *want = cJSON_GetObjectItem(g, "no_special"), *dec = cJSON_GetObjectItem(g, "decoded");
        int dbad = 0, rt = 0;
        for (int i = 0; i < n; i++) {
            const cJSON *w = cJSON_GetArrayItem(want, i);
            size_t m = (size_t)cJSON_GetArraySize(w);
            int32_t *ids = xmalloc((m + 1) * sizeof *ids);
            for (size_t k = 0; k < m; k++) ids[k] = cJSON_GetArrayItem(w, (int)k)->valueint;
            char *text = NULL;
            CHECK_EQ_INT(tokenizer_decode(t, ids, m, 0, &text), DS_OK);
            const char *wd = cJSON_GetArrayItem(dec, i)->valuestring;
            if (!text || strcmp(text, wd)) {
                if (dbad++ < 3) fprintf(stderr, "FAIL %s: decode of entry %d: got \"%.60s\" want \"%.60s\"\n", name, i, text, wd);
                t_cur_failed = 1;
            }
            rt += text && !strcmp(text, cJSON_GetArrayItem(corpus, i)->valuestring);
            free(text);
            free(ids);
        }
        fprintf(stderr, "  %-16s load %.2fs, %d/%d encodes identical, %d/%d decodes identical (%d round-trip)\n",
                name, tl, total - bad, total, n - dbad, n, rt);
        tokenizer_free(t);
        cJSON_Delete(g);
    }
}

static void write_file(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    if (f) { fputs(s, f); fclose(f); }
}

static void malformed(void) {
    static const struct { const char *what, *json, *expect; } cases[] = {
        {"truncated JSON", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0", "not valid JSON"},
        {"empty file", "", "not valid JSON"},
        {"not an object", "[1, 2, 3]", "not valid JSON"},
        {"missing model", "{\"normalizer\": null}", "missing 'model'"},
        {"unknown model type", "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}", "unsupported model type 'Unigram'"},
        {"WordPiece", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "unsupported model type 'WordPiece'"},
        {"missing merges", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}", "merges"},
        {"merge not in vocab", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}", "merges[0]"},
        {"merge without space", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"ab\"]}}", "merges[0]"},
        {"merge bad type", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [[\"a\"]]}}", "merges[0]"},
        {"vocab id not a number", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}}", "invalid id"},
        {"negative vocab id", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -5}, \"merges\": []}}", "invalid id"},
        {"unsupported normalizer", "{\"normalizer\": {\"type\": \"BertNormalizer\"}, \"model\": {\"vocab\": {}, \"merges\": []}}", "normalizer type 'BertNormalizer'"},
        {"unsupported pre_tokenizer", "{\"pre_tokenizer\": {\"type\": \"Whitespace\"}, \"model\": {\"vocab\": {}, \"merges\": []}}", "pre_tokenizer type 'Whitespace'"},
        {"bad regex", "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(ab\"}, \"behavior\": \"Isolated\"}, \"model\": {\"vocab\": {}, \"merges\": []}}", "bad regex"},
        {"unsupported split behavior", "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Removed\"}, \"model\": {\"vocab\": {}, \"merges\": []}}", "behavior 'Removed'"},
        {"unsupported decoder", "{\"decoder\": {\"type\": \"WordPiece\"}, \"model\": {\"vocab\": {}, \"merges\": []}}", "decoder type 'WordPiece'"},
        {"unsupported post_processor", "{\"post_processor\": {\"type\": \"Foo\"}, \"model\": {\"vocab\": {}, \"merges\": []}}", "post_processor type 'Foo'"},
        {"template id out of range", "{\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<s>\"}}, {\"Sequence\": {\"id\": \"A\"}}], \"special_tokens\": {\"<s>\": {\"ids\": [99]}}}, \"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}}", "out of range"},
        {"added token without id", "{\"added_tokens\": [{\"content\": \"<x>\"}], \"model\": {\"vocab\": {}, \"merges\": []}}", "added_tokens"},
        {"model not an object", "{\"model\": 3}", "missing 'model'"},
    };
    TEST("malformed tokenizer.json files give DS_ERR_INPUT, never a crash") {
        mkdir("tests/tmp", 0755);
        for (size_t i = 0; i < DS_ARRAY_LEN(cases); i++) {
            write_file("tests/tmp/bad_tokenizer.json", cases[i].json);
            tokenizer *t = (tokenizer *)1;
            ds_status st = tokenizer_load("tests/tmp/bad_tokenizer.json", &t);
            if (st != DS_ERR_INPUT || t != NULL || !strstr(ds_errmsg(), cases[i].expect)) {
                fprintf(stderr, "FAIL malformed '%s': status %d, message: %s\n", cases[i].what, st, ds_errmsg());
                t_cur_failed = 1;
            }
            if (st == DS_OK) tokenizer_free(t);
        }
        tokenizer *t = NULL;
        CHECK_EQ_INT(tokenizer_load("tests/tmp/no-such-dir", &t), DS_ERR_INPUT);
        CHECK(t == NULL);
    }
    TEST("truncations of a real tokenizer.json never crash") {
        char *buf = NULL;
        size_t len;
        CHECK_EQ_INT(ds_read_file("data/stories260K/tokenizer.json", &buf, &len), DS_OK);
        if (!buf) break;
        for (size_t cut = 0; cut < len; cut += len / 37 + 1) {
            FILE *f = fopen("tests/tmp/bad_tokenizer.json", "wb");
            fwrite(buf, 1, cut, f);
            fclose(f);
            tokenizer *t = NULL;
            CHECK_EQ_INT(tokenizer_load("tests/tmp/bad_tokenizer.json", &t), DS_ERR_INPUT);
        }
        free(buf);
    }
}

int main(void) {
    ds_log_set_level(DS_LOG_ERROR);
    cJSON *corpus = load_json("tests/golden/tokenizer/corpus.json");
    for (size_t i = 0; i < DS_ARRAY_LEN(NAMES); i++) {
        if (!corpus) {
            TEST(NAMES[i]) CHECK(!"tests/golden/tokenizer/corpus.json missing");
            continue;
        }
        golden(NAMES[i], corpus);
    }

    TEST("directory holding only tokenizer.json; known ids; BOS/EOS") {
        tokenizer *t = NULL;
        CHECK_EQ_INT(tokenizer_load(fixture("tokenizers/llama3"), &t), DS_OK);
        if (!t) break;
        int32_t *ids;
        size_t n;
        CHECK_EQ_INT(tokenizer_encode(t, "Hello world", 11, 1, &ids, &n), DS_OK);
        CHECK_EQ_INT(n, 3);
        if (n == 3) { CHECK_EQ_INT(ids[0], 128000); CHECK_EQ_INT(ids[1], 9906); CHECK_EQ_INT(ids[2], 1917); }
        free(ids);
        CHECK_EQ_INT(tokenizer_bos_id(t), 128000);
        CHECK_EQ_INT(tokenizer_eos_id(t), 128001);
        CHECK_EQ_INT(tokenizer_vocab_size(t), 128256);
        tokenizer_free(t);
        CHECK_EQ_INT(tokenizer_load("data/stories260K", &t), DS_OK);
        CHECK_EQ_INT(tokenizer_bos_id(t), 1);
        CHECK_EQ_INT(tokenizer_eos_id(t), 2);
        CHECK_EQ_INT(tokenizer_vocab_size(t), 512);
        tokenizer_free(t);
        CHECK_EQ_INT(tokenizer_load(fixture("tokenizers/qwen2.5"), &t), DS_OK);
        CHECK_EQ_INT(tokenizer_bos_id(t), -1);
        CHECK_EQ_INT(tokenizer_eos_id(t), 151645);
        CHECK(tokenizer_chat_template(t) != NULL);
        tokenizer_free(t);
    }

    TEST("invalid UTF-8 input and empty input never crash") {
        const char *dirs[] = {"data/stories260K", fixture("tokenizers/qwen2"), fixture("tokenizers/llama3")};
        for (size_t d = 0; d < 3; d++) {
            tokenizer *t = NULL;
            CHECK_EQ_INT(tokenizer_load(dirs[d], &t), DS_OK);
            if (!t) continue;
            const char bad[] = "ok \xff\xfe bytes \xc3 and \xe2\x82 cut";
            int32_t *ids;
            size_t n;
            CHECK_EQ_INT(tokenizer_encode(t, bad, sizeof bad - 1, 1, &ids, &n), DS_OK);
            CHECK(n > 3);
            free(ids);
            CHECK_EQ_INT(tokenizer_encode(t, "", 0, 0, &ids, &n), DS_OK);
            CHECK_EQ_INT(n, 0);
            free(ids);
            char *s;
            int32_t odd[] = {-1, 5, 1 << 30};
            CHECK_EQ_INT(tokenizer_decode(t, odd, 3, 0, &s), DS_OK);
            free(s);
            tokenizer_free(t);
        }
    }

    malformed();
    cJSON_Delete(corpus);
    return TEST_REPORT();
}
