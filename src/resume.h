/*
 * resume.h - the pipeline's resume state, kept in "<out>.partial/resume/"
 * beside the partially written checkpoint (checkpoint.h):
 *   rank-<r>.bin   each rank's residual stream after the last completed layer
 *                  (its samples' hidden states, [ntok, C] in the model dtype,
 *                  exact: activations are model-dtype values) behind a header
 *   progress.bin   rank 0: that layer, the job fingerprint, and the module
 *                  records so far (for the final summary); written last, after
 *                  every rank file and an fsync of the checkpoint shards, so it
 *                  never points at state that is not on disk.
 * A resumed run recomputes nothing it had finished and, with the same inputs,
 * writes the same checkpoint as an uninterrupted run. The fingerprint covers
 * the doneshot version, the applied recipe, the model's shape and dtype, the
 * model's identity (config.json, and per shard its real path, size, mtime
 * and 16 pages of its bytes, as rank 0 sees them; other ranks must see the
 * same size and bytes), the world size, the device kind, the total
 * sample/token counts and every rank's token ids; each rank file also covers
 * that rank's token ids. A model moved to another path does not resume.
 * Files are written to "<name>.tmp", fsync'd and renamed.
 */
#ifndef DS_RESUME_H
#define DS_RESUME_H

#include "dataset.h"
#include "model.h"
#include "recipe.h"
#include "run_stats.h"

typedef struct resume_head {
    char magic[8];           /* "DSRESUM1" */
    int32_t layer;           /* last completed layer, 0-based */
    int32_t world, rank, dtype;
    uint64_t job_fp, rank_fp;
    uint64_t nlocal, ntok, C;
} resume_head;

/* FNV-1a 64 of the model, in one pass over its files: *content covers
 * config.json and per shard its size and 16 4-KiB pages spread over the
 * file; *full adds each shard's real path and mtime (ns). The job uses rank
 * 0's *full; every rank checks its *content against rank 0's (each node may
 * hold its own copy of the model). */
void resume_model_fingerprint(const model *m, uint64_t *full, uint64_t *content);
/* FNV-1a 64 of a rank's samples (lengths and token ids, in order). */
uint64_t resume_ids_fingerprint(const ds_sample *local, size_t nlocal);
/* FNV-1a 64 of the job (identical on every rank): version, recipe, model
 * shape, model_fp (rank 0's full resume_model_fingerprint), world
 * size, device, sample/token totals and data_fp (the ids of all ranks
 * combined, see pipeline.c). */
uint64_t resume_job_fingerprint(const model *m, const recipe *r, int world, int cuda, size_t samples_total,
                                size_t tokens_total, uint64_t model_fp, uint64_t data_fp);
/* FNV-1a 64 of the job and of this rank's ids. */
uint64_t resume_rank_fingerprint(uint64_t job_fp, const ds_sample *local, size_t nlocal);

/* rank-<h->rank>.bin in dir: header + nbytes of data. DS_ERR_RUNTIME on I/O. */
ds_status resume_save_rank(const char *dir, const resume_head *h, const void *data, size_t nbytes);
/* Read this rank's file into data (nbytes); every header field must equal
 * want's, else DS_ERR_USAGE naming the first difference. */
ds_status resume_load_rank(const char *dir, const resume_head *want, void *data, size_t nbytes);

/* progress.bin: layer, world, job_fp and s->mods[0..nmods), n_rtn, n_no_tokens. */
ds_status resume_save_progress(const char *dir, int layer, int world, uint64_t job_fp, const run_stats *s);
/* *layer = -1 when there is no progress file (DS_OK). When there is one:
 * DS_ERR_USAGE if it is from another job (world size or fingerprint, the
 * message says which) or corrupt (layer outside [0, nlayers-2], counts or
 * module records out of range), else *layer and the records are restored
 * into s (s->mods holds max_mods records). The file is never modified. */
ds_status resume_load_progress(const char *dir, int world, uint64_t job_fp, int nlayers, int max_mods, int *layer,
                               run_stats *s);

#endif
