/*
 * safetensors.h - read-only access to safetensors files and sharded HF
 * checkpoints (model.safetensors or model.safetensors.index.json), per the
 * safetensors format spec (docs: 8-byte LE header length, JSON header,
 * byte buffer; offsets relative to the buffer; full coverage, no overlaps).
 * Shards are mmap'd (PROT_READ, MAP_PRIVATE); tensors are views into the
 * mapping, never copied. Nothing here aborts on bad bytes: every parse error
 * is a DS_ERR_INPUT with a message naming the file and tensor.
 */
#ifndef DS_SAFETENSORS_H
#define DS_SAFETENSORS_H

#include "common.h"

#define ST_MAX_DIMS 8

typedef struct st_tensor {
    char *name;                  /* owned */
    ds_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;            /* borrowed: points into the shard's mmap (may be unaligned) */
    size_t nbytes;
    int shard;                   /* index into the model's shard list */
} st_tensor;

typedef struct st_model st_model; /* opaque: shards + name -> tensor table */

/* Open a model directory: model.safetensors.index.json (weight_map) if present,
 * else model.safetensors. */
ds_status st_open_dir(const char *dir, st_model **out);
/* Open one .safetensors file. */
ds_status st_open_file(const char *path, st_model **out);
/* NULL if absent. O(1) average (hash table). */
const st_tensor *st_find(const st_model *m, const char *name);
size_t st_count(const st_model *m);
const st_tensor *st_get(const st_model *m, size_t i); /* i < st_count; sorted by name */
const char *st_shard_path(const st_model *m, int shard);
/* Number of shard files (1 for a single file). */
int st_num_shards(const st_model *m);
/* Value of a "__metadata__" key of the first shard, or NULL. */
const char *st_metadata(const st_model *m, const char *key);
void st_close(st_model *m);

/* Element count of t (product of shape; 1 for 0-d). */
int64_t st_numel(const st_tensor *t);
/* Convert a F32/BF16/F16 tensor to f32 (dst has st_numel floats). */
ds_status st_to_f32(const st_tensor *t, float *dst);

/* Validate a header buffer (JSON bytes, length n) against a data buffer of
 * data_len bytes; exposed for unit tests and fuzzing. On success fills a
 * malloc'd tensor array (data pointers = base + offset) and count. */
ds_status st_parse_header(const char *json, size_t n, const unsigned char *base, size_t data_len,
                          const char *filename, st_tensor **tensors, size_t *count);

#endif
