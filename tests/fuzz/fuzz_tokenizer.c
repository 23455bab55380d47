/*
 * fuzz_tokenizer.c - tokenizer.json (+ tokenizer_config.json) through
 * tokenizer_load, then encode / decode of a fixed text with specials, as
 * `doneshot tokenize`, the dataset loader and eval use a loaded tokenizer.
 * Input: tokenizer.json, optionally followed by SEP and tokenizer_config.json
 * (SEP = "\n#tokenizer_config.json\n"). Seeds: the bundled stories260K
 * tokenizer and byte-level / SentencePiece tokenizers trimmed to 300 ids
 * (tools/trim_tokenizer.py).
 */
#include "fuzz_common.h"
#include "tokenizer.h"

#define SEP "\n#tokenizer_config.json\n"

static char *g_dir;
static const char k_text[] = "Hello world, it's 2024!\n\n  <s>Once</s> <|endoftext|> h\xc3\xa9llo \xe6\x97\xa5\xe6\x9c\xac"
                             " \xf0\x9f\x98\x80 tab\there \xff\xfe bad \xc3";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_quiet();
    g_dir = fz_subdir("tok");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *sep = memmem(data, size, SEP, sizeof SEP - 1);
    size_t n = sep ? (size_t)(sep - data) : size;
    fz_write(g_dir, "tokenizer.json", data, n);
    if (sep) {
        size_t off = n + sizeof SEP - 1;
        fz_write(g_dir, "tokenizer_config.json", data + off, size - off);
    } else {
        fz_unlink(g_dir, "tokenizer_config.json");
    }
    tokenizer *t = NULL;
    if (tokenizer_load(g_dir, &t) != DS_OK) return 0;
    int V = tokenizer_vocab_size(t);
    int32_t bos = tokenizer_bos_id(t), eos = tokenizer_eos_id(t);
    if (V < 0 || bos >= V || eos >= V) __builtin_trap();
    (void)tokenizer_chat_template(t);
    (void)tokenizer_bos_text(t);
    (void)tokenizer_eos_text(t);
    (void)tokenizer_token_to_id(t, "<s>");
    (void)tokenizer_prefix_count(t);
    for (int special = 0; special < 2; special++) {
        int32_t *ids = NULL;
        size_t nid = 0;
        if (tokenizer_encode(t, k_text, sizeof k_text - 1, special, &ids, &nid) == DS_OK) {
            for (size_t i = 0; i < nid; i++)
                if (ids[i] < 0 || ids[i] >= V) __builtin_trap(); /* an id the model cannot embed */
            char *text = NULL;
            if (tokenizer_decode(t, ids, nid, special, &text) == DS_OK) free(text);
        }
        free(ids);
    }
    tokenizer_free(t);
    return 0;
}
