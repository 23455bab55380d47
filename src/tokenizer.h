/*
 * tokenizer.h - Hugging Face tokenizer.json in C: BPE models (byte-level and
 * SentencePiece-style with byte fallback), normalizers, pre-tokenizers,
 * added/special tokens, post-processor BOS/EOS, decode
 * (docs/model-and-tokenizer.md §4). Produces exactly the ids of
 * HF tokenizers' encode(). Loading never aborts: malformed or unsupported
 * files give DS_ERR_INPUT naming the component.
 */
#ifndef DS_TOKENIZER_H
#define DS_TOKENIZER_H

#include "common.h"

typedef struct tokenizer tokenizer;

/* Load tokenizer.json (and tokenizer_config.json when present) from a model
 * directory. */
ds_status tokenizer_load(const char *dir, tokenizer **out);
void tokenizer_free(tokenizer *t);

/* Encode UTF-8 text (len bytes). add_special: 1 = as HF add_special_tokens=True
 * (post-processor / add_bos_token), 0 = none. *ids is malloc'd (caller frees).
 * Invalid UTF-8 is handled as HF does (lossy) and never crashes. */
ds_status tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_special,
                           int32_t **ids, size_t *n);
/* Decode ids to malloc'd UTF-8 text (skip_special: drop special tokens). */
ds_status tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                           char **text);
int tokenizer_vocab_size(const tokenizer *t);
int32_t tokenizer_bos_id(const tokenizer *t); /* -1 if none */
int32_t tokenizer_eos_id(const tokenizer *t); /* -1 if none */

/* tokenizer_config.json chat_template (the "default" one of a list), NULL if
 * none; BOS/EOS token texts (e.g. "<s>"), NULL if none. Borrowed strings. */
const char *tokenizer_chat_template(const tokenizer *t);
const char *tokenizer_bos_text(const tokenizer *t);
const char *tokenizer_eos_text(const tokenizer *t);
/* Id of an added token or vocab entry given as text (byte-level vocabularies
 * take the raw text, e.g. " the"); -1 if absent. */
int32_t tokenizer_token_to_id(const tokenizer *t, const char *s);
/* Number of ids add_special=1 puts before the text (0 or 1 for BOS). */
int tokenizer_prefix_count(const tokenizer *t);

#endif
