/*
 * tokenizer_bpe.h - internal to the tokenizer: hash maps (string -> id,
 * id pair -> merge), growable buffers and the BPE model (HF tokenizers
 * models/bpe: Word::merge_all with a rank heap, byte fallback, unk fusing,
 * ignore_merges, a per-word cache). Not a public API: only tokenizer*.c
 * include it.
 */
#ifndef DS_TOKENIZER_BPE_H
#define DS_TOKENIZER_BPE_H

#include "common.h"

/* ---- growable buffers ---- */
typedef struct tok_buf { char *p; size_t n, cap; } tok_buf;
typedef struct tok_ids { int32_t *p; size_t n, cap; } tok_ids;
void tok_buf_reserve(tok_buf *b, size_t extra);
void tok_buf_put(tok_buf *b, const void *s, size_t n);
void tok_ids_push(tok_ids *v, int32_t id);

/* ---- string -> int32 map (keys copied into an arena) ---- */
typedef struct tok_strmap {
    uint64_t *slots;     /* (cap) hash<<32 | (entry+1); 0 = empty */
    uint32_t cap, n, ecap;
    uint32_t *koff, *klen;
    int32_t *val;
    tok_buf arena;
} tok_strmap;
void strmap_init(tok_strmap *m, uint32_t expected);
void strmap_free(tok_strmap *m);
/* Insert k -> v; returns 1 if inserted, 0 if the key existed (value kept). */
int strmap_put(tok_strmap *m, const char *k, size_t n, int32_t v);
int32_t strmap_get(const tok_strmap *m, const char *k, size_t n); /* -1 if missing */

/* ---- (id_a, id_b) -> (rank, id_ab) ---- */
typedef struct tok_pairmap {
    uint64_t *keys;      /* (cap) UINT64_MAX = empty */
    int32_t *rank, *nid; /* (cap) */
    uint32_t cap, n;
} tok_pairmap;
void pairmap_init(tok_pairmap *m, uint32_t expected);
void pairmap_free(tok_pairmap *m);
void pairmap_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t nid); /* first wins */
int pairmap_get(const tok_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *nid);

/* ---- word cache: word bytes -> id list ---- */
typedef struct tok_cache {
    tok_strmap map;      /* word -> index into off/len */
    uint32_t *off, *len; size_t n, cap;
    tok_ids pool;
} tok_cache;

/* ---- BPE model ---- */
typedef struct bpe_model {
    int byte_level;      /* words are raw bytes, vocab keys are decoded from the byte alphabet */
    tok_strmap vocab;    /* key (raw bytes if byte_level, else the JSON string) -> id */
    tok_pairmap merges;
    int32_t byte_id[256];/* byte_level: id of the 1-byte token; else id of "<0xHH>" (-1 none) */
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t unk_id;      /* -1 none */
    tok_cache *cache;    /* mutable from const encode: encode is not thread-safe */
} bpe_model;

typedef struct bpe_sym { int32_t id, prev, next; uint32_t len; } bpe_sym;
typedef struct bpe_hent { int32_t rank, pos, nid; } bpe_hent;
typedef struct bpe_scratch {
    bpe_sym *sym; size_t sym_cap;
    bpe_hent *heap; size_t heap_cap;
} bpe_scratch;
void bpe_scratch_free(bpe_scratch *s);

/* Append the ids of one pre-tokenized word (valid UTF-8 bytes) to out. */
void bpe_word(const bpe_model *m, bpe_scratch *s, const char *w, size_t n, tok_ids *out);
void bpe_model_free(bpe_model *m);

/* UTF-8 sequence length from a lead byte of valid UTF-8 (1..4). */
static inline size_t utf8_len(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

#endif
