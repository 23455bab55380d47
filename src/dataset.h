/*
 * dataset.h - calibration datasets: rows -> token id sequences.
 * Formats (by content/extension): .txt (blank-line-separated documents),
 * .jsonl / .json lines with a text field (default "text"), chat rows with
 * "messages" rendered through the model's chat template (Llama 3, ChatML/Qwen,
 * Llama 2/Mistral [INST]), pre-tokenized rows with "input_ids"; any of them
 * optionally gzip-compressed (.gz, zlib). One row -> one sample, truncated to
 * max_seq_len, no padding. Empty rows / invalid UTF-8 rows are skipped with a
 * counted warning (dataset.skipped). Row order is file order.
 */
#ifndef DS_DATASET_H
#define DS_DATASET_H

#include "tokenizer.h"

typedef struct ds_sample { int32_t *ids; int32_t n; } ds_sample;

typedef struct ds_dataset {
    ds_sample *rows;
    size_t n;
    size_t skipped;        /* rows skipped (empty, invalid) */
} ds_dataset;

typedef struct dataset_opts {
    const char *text_field;   /* NULL -> "text" */
    long max_seq_len;         /* truncate each row (tokens); <= 0: no limit */
    int add_special;          /* add BOS etc. as the tokenizer's defaults (HF add_special_tokens) */
    const char *model_dir;    /* for tokenizer_config.json chat template */
} dataset_opts;

/* Load and tokenize every row. DS_ERR_INPUT on unreadable/malformed files
 * (message: path, line number, what was expected). */
ds_status dataset_load(const char *path, const tokenizer *tok, const dataset_opts *o, ds_dataset *out);
void dataset_free(ds_dataset *d);

/* Deterministic Fisher-Yates shuffle of row order with a seed (splitmix64
 * stream), then keep the first n rows (n > size keeps all, with no error). */
void dataset_shuffle_take(ds_dataset *d, uint64_t seed, size_t n);

/* Render a JSON array of {role, content} messages with the model's chat
 * template (tokenizer_config.json chat_template of tok, else of model_dir)
 * as transformers' apply_chat_template(tokenize=False,
 * add_generation_prompt=False) does for the supported families. *out is
 * malloc'd. DS_ERR_INPUT for unrecognised templates or bad messages. */
ds_status dataset_render_chat(const tokenizer *tok, const char *model_dir, const char *messages_json,
                              char **out);

#endif
