/*
 * fuzz_dataset.c - calibration rows (dataset_load: .txt documents, .jsonl /
 * .json text / chat "messages" / "input_ids" rows, gzip), tokenized with the
 * bundled stories260K tokenizer, then dataset_shuffle_take; and through
 * dataset_load_slice (the streaming two-pass loader quantize uses) as rank
 * 0 or 1 of 2, which must agree with dataset_load. Input: byte 0 picks the file name (.jsonl, .txt, .json, .jsonl.gz,
 * none), the chat template (tokenizer_config.json of tests/data/chat-*) and
 * add_special / max_seq_len; the rest is the file. Seeds: tests/data/.
 */
#include "fuzz_common.h"
#include "dataset.h"

static const char *const k_names[] = {"rows.jsonl", "rows.txt", "rows.json", "rows.jsonl.gz", "rows"};
static const char *const k_chat[] = {"data/stories260K", "tests/data/chat-llama2", "tests/data/chat-llama3",
                                     "tests/data/chat-mistral"};
static tokenizer *g_tok;
static char *g_chat[4];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_quiet();
    char *p = fz_path("data/stories260K");
    if (tokenizer_load(p, &g_tok) != DS_OK) { fprintf(stderr, "fuzz_dataset: %s\n", ds_errmsg()); abort(); }
    free(p);
    for (int i = 0; i < 4; i++) g_chat[i] = fz_path(k_chat[i]);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    unsigned sel = data[0];
    const char *name = k_names[sel % 5];
    fz_write(fz_dir(), name, data + 1, size - 1);
    char *path = xasprintf("%s/%s", fz_dir(), name);
    dataset_opts o = {.text_field = (sel & 0x80) ? "content" : NULL,
                      .max_seq_len = (sel & 0x40) ? 16 : 0,
                      .add_special = (sel >> 5) & 1,
                      .model_dir = g_chat[(sel / 5) % 4]};
    ds_dataset d = {0};
    if (dataset_load(path, g_tok, &o, &d) == DS_OK) {
        int V = tokenizer_vocab_size(g_tok);
        for (size_t i = 0; i < d.n; i++) {
            if (d.rows[i].n < 0 || (o.max_seq_len > 0 && d.rows[i].n > o.max_seq_len)) __builtin_trap();
            for (int32_t k = 0; k < d.rows[i].n; k++)
                if (d.rows[i].ids[k] < 0 || d.rows[i].ids[k] >= V) __builtin_trap(); /* unembeddable id */
        }
        dataset_shuffle_take(&d, 42, 3);
    }
    ds_dataset part;
    dataset_slice_info info;
    int rank = (sel >> 4) & 1;
    if (dataset_load_slice(path, g_tok, &o, 42, 3, rank, 2, &part, &info) == DS_OK) {
        if (!d.rows || info.total != d.n || info.first + part.n > info.total) __builtin_trap();
        for (size_t i = 0; i < part.n; i++) /* the same rows dataset_load + shuffle_take keep */
            if (part.rows[i].n != d.rows[info.first + i].n ||
                memcmp(part.rows[i].ids, d.rows[info.first + i].ids, sizeof(int32_t) * (size_t)part.rows[i].n))
                __builtin_trap();
        dataset_free(&part);
    } else if (d.rows) {
        __builtin_trap(); /* dataset_load accepted the file */
    }
    if (d.rows) dataset_free(&d);
    free(path);
    return 0;
}
