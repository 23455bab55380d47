/*
 * dataset.h - calibration datasets: rows -> token id sequences.
 * Formats (by content/extension): .txt (blank-line-separated documents),
 * .jsonl / .json lines with a text field (default "text"), chat rows with
 * "messages" rendered through the model's chat template (Llama 3, ChatML/Qwen,
 * Llama 2/Mistral [INST]), pre-tokenized rows with "input_ids"; any of them
 * optionally gzip-compressed (.gz, zlib). One row -> one sample, truncated to
 * max_seq_len, no padding. Empty rows / invalid UTF-8 rows are skipped with a
 * counted warning (dataset.skipped). Row order is file order. Files are
 * streamed (any size); dataset_load_slice keeps only one rank's rows.
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
    int vocab_size;           /* token ids must be < this when there is no tokenizer (tok NULL) */
} dataset_opts;

/* Load and tokenize every row, in file order. The file is streamed (memory:
 * the rows' ids plus the longest row, not the file). DS_ERR_INPUT on
 * unreadable/malformed files (message: path, line number, what was
 * expected) and when no row is usable. tok may be NULL (a model folder
 * without tokenizer.json): then only pre-tokenized rows ("input_ids", ids
 * below o->vocab_size) are accepted, and a text or chat row is DS_ERR_INPUT
 * naming the missing tokenizer. */
ds_status dataset_load(const char *path, const tokenizer *tok, const dataset_opts *o, ds_dataset *out);
void dataset_free(ds_dataset *d);

/* Deterministic Fisher-Yates shuffle of row order with a seed (splitmix64
 * stream), then keep the first n rows (n > size keeps all, with no error). */
void dataset_shuffle_take(ds_dataset *d, uint64_t seed, size_t n);

/* Positions [first, first + count) of dataset_shuffle_take's permutation of
 * n rows, without an n-sized array: ord[i] (count entries) = index, in the
 * unshuffled order, of the row that lands at position first + i. O(n) time,
 * O(count) memory. Requires first + count <= n. */
void dataset_shuffle_positions(uint64_t seed, size_t n, size_t first, size_t count, size_t *ord);

typedef struct dataset_slice_info {
    size_t usable;  /* usable rows in the file */
    size_t total;   /* N = min(usable, num_samples): the samples over all ranks */
    size_t first;   /* this rank holds shuffled positions [first, first + out->n) of N */
} dataset_slice_info;

/* One rank's calibration rows, exactly what dataset_load + dataset_shuffle_take
 * (seed, num_samples) + the slice [floor(N*rank/world), floor(N*(rank+1)/world))
 * give (reference-llm-compressor.md §2.1), in that shuffled order, but with
 * memory bounded by the kept rows: the file (plain or gzip, any size) is
 * streamed twice; the first read checks every row (same errors with line
 * numbers, same skipped-row warnings, out->skipped) and keeps one bit per row;
 * the second tokenizes only this rank's rows. Rows are tokenized in the first
 * read only where that is the only way to know a row gives >= 1 token (no
 * BOS/EOS added, e.g. chat rows that carry their own BOS). Extra memory:
 * O(rows) bits, O(kept rows) words, one chunk and the longest row. out->n may
 * be 0 (more ranks than samples). DS_ERR_INPUT as dataset_load, also if the
 * file changes between the reads; DS_ERR_USAGE for a bad rank/world. */
ds_status dataset_load_slice(const char *path, const tokenizer *tok, const dataset_opts *o, uint64_t seed,
                             size_t num_samples, int rank, int world, ds_dataset *out, dataset_slice_info *info);

/* Render a JSON array of {role, content} messages with the model's chat
 * template (tokenizer_config.json chat_template of tok, else of model_dir)
 * as transformers' apply_chat_template(tokenize=False,
 * add_generation_prompt=False) does for the supported families. *out is
 * malloc'd. DS_ERR_INPUT for unrecognised templates or bad messages. */
ds_status dataset_render_chat(const tokenizer *tok, const char *model_dir, const char *messages_json,
                              char **out);

#endif
