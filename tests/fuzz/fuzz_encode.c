/*
 * fuzz_encode.c - text through tokenizer_encode / tokenizer_decode (what
 * `doneshot tokenize` and every calibration row go through) with the bundled
 * stories260K tokenizer and the trimmed (fixtures/tokenizers) byte-level (GPT-2, Llama 3, Qwen2) and
 * SentencePiece (Llama 2, Mistral, Phi-3) tokenizers.
 * Input: byte 0 picks the tokenizer and add_special, the rest is the text.
 * Every id must be < vocab size; decode of the ids must not fail.
 */
#include "fuzz_common.h"
#include "tokenizer.h"

static const char *const k_toks[] = {
    "data/stories260K/tokenizer.json",          "tests/fuzz/fixtures/tokenizers/gpt2.json",
    "tests/fuzz/fixtures/tokenizers/llama3.json",  "tests/fuzz/fixtures/tokenizers/qwen2.json",
    "tests/fuzz/fixtures/tokenizers/llama2.json",  "tests/fuzz/fixtures/tokenizers/mistral-7b-v0.1.json",
    "tests/fuzz/fixtures/tokenizers/phi-3-mini.json",
};
#define NTOK ((int)DS_ARRAY_LEN(k_toks))
static tokenizer *g_tok[NTOK];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_quiet();
    for (int i = 0; i < NTOK; i++) {
        char *p = fz_path(k_toks[i]);
        if (tokenizer_load(p, &g_tok[i]) != DS_OK) {
            fprintf(stderr, "fuzz_encode: %s\n", ds_errmsg());
            abort();
        }
        free(p);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const tokenizer *t = g_tok[data[0] % NTOK];
    int special = (data[0] / NTOK) & 1;
    int V = tokenizer_vocab_size(t);
    int32_t *ids = NULL;
    size_t n = 0;
    if (tokenizer_encode(t, (const char *)data + 1, size - 1, special, &ids, &n) != DS_OK) return 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) __builtin_trap();
    char *text = NULL;
    if (tokenizer_decode(t, ids, n, data[0] & 2, &text) != DS_OK) __builtin_trap();
    free(text);
    free(ids);
    return 0;
}
