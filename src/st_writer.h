/*
 * st_writer.h - streaming safetensors writer with sharding.
 *
 * Two phases, so a checkpoint of any size is written with O(one tensor) of
 * memory and tensors can be written in any order as soon as they are ready:
 *   1. stw_plan() every tensor (name, dtype, shape);
 *   2. stw_begin() assigns shards (greedy in plan order, a new shard when the
 *      next tensor would pass max_shard_bytes), lays tensors out in each shard
 *      sorted by descending dtype size then name (as the safetensors writer),
 *      writes each shard's header (padded with spaces to a multiple of 8,
 *      {"__metadata__":{"format":"pt"}}), and pre-sizes the files;
 *   3. stw_write() copies one tensor's bytes to its place (pwrite);
 *   4. stw_finish() checks every planned tensor was written, fsyncs, and if
 *      there is more than one shard writes model.safetensors.index.json
 *      ({"metadata":{"total_size":N},"weight_map":{...}}).
 * File names: model.safetensors, or model-00001-of-0000N.safetensors.
 */
#ifndef DS_ST_WRITER_H
#define DS_ST_WRITER_H

#include "common.h"

typedef struct st_writer st_writer;

/* dir must exist. max_shard_bytes 0 = unlimited. */
st_writer *stw_open(const char *dir, uint64_t max_shard_bytes);
/* Plan a tensor; error (DS_ERR_RUNTIME) on duplicate name or after begin. */
ds_status stw_plan(st_writer *w, const char *name, ds_dtype dt, int ndim, const int64_t *shape);
ds_status stw_begin(st_writer *w);
/* Instead of stw_begin, to continue an interrupted write (resume): lay out
 * the same plan, reopen the existing "<shard>.tmp" files (each must have the
 * planned size and header, else DS_ERR_INPUT naming the file) and count every
 * tensor for which done(ctx, name) returns 1 as already written. */
ds_status stw_begin_resume(st_writer *w, int (*done)(void *ctx, const char *name), void *ctx);
/* fsync every shard file (the written tensors are durable afterwards). */
ds_status stw_sync(st_writer *w);
/* nbytes must equal the planned size; each tensor exactly once. */
ds_status stw_write(st_writer *w, const char *name, const void *data, size_t nbytes);
/* Write bytes [offset, offset+nbytes) of a planned tensor, for tensors
 * produced in pieces (e.g. a 1 GB embedding generated in chunks). The caller
 * writes disjoint ranges; the tensor counts as written once the byte total
 * reaches its planned size (an empty tensor: after one call with nbytes 0).
 * Errors (DS_ERR_RUNTIME): unknown name, range outside the tensor, I/O. */
ds_status stw_write_range(st_writer *w, const char *name, uint64_t offset, const void *data, size_t nbytes);
ds_status stw_finish(st_writer *w);
/* After stw_begin: the shard file name holding `tensor` (borrowed), or NULL. */
const char *stw_shard_name(const st_writer *w, const char *tensor);
int stw_num_shards(const st_writer *w);
uint64_t stw_total_bytes(const st_writer *w);
/* Frees; if not finished, leaves partial files for the caller's cleanup.
 * (Shards are written as "<name>.tmp" and renamed by stw_finish, so an
 * unfinished run never leaves a plausible-looking checkpoint.) */
void stw_close(st_writer *w);

#endif
