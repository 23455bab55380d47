/*
 * checkpoint.h - writes the compressed-tensors checkpoint (rank 0 only):
 * pack-quantized tensors for every quantized Linear (weight_packed int32
 * [out, ceil(in*b/32)], weight_scale [out, ngroups] in the model dtype,
 * weight_shape int64 [2], weight_zero_point int32 packed along dim 0 when
 * asymmetric, weight_g_idx int32 [in] for actorder=group), every other tensor
 * byte-for-byte, config.json with quantization_config
 * (../shared/docs/reference-llm-compressor.md §3), tokenizer/generation
 * files and the applied recipe (recipe.yaml; JSON is valid YAML).
 *
 * Atomic: everything is written into "<out>.partial" beside the target,
 * fsync'd, and renamed to <out> at the end; config.json is written last, so an
 * interrupted run never leaves a directory that loads as a model. The
 * partial directory also holds the pipeline's resume state (resume/), which
 * is removed before the rename.
 */
#ifndef DS_CHECKPOINT_H
#define DS_CHECKPOINT_H

#include "model.h"
#include "recipe.h"

typedef struct ckpt_writer ckpt_writer;

/* 1 if Linear module `name` (e.g. model.layers.0.mlp.up_proj) is quantized. */
int ckpt_module_quantized(const recipe *r, const char *name);

/* "<out>.partial" (malloc'd): where a run writes before the final rename. */
char *ckpt_partial_dir(const char *out_dir);
/* Plan all tensors, create the partial dir (removing a stale one) with its
 * resume/ subfolder, write the unquantized tensors. overwrite: replace an
 * existing <out>; otherwise an existing non-empty <out> is a DS_ERR_USAGE
 * error. resume_layers >= 0: continue the interrupted write in the existing
 * partial dir instead, where layers [0, resume_layers) are complete
 * (DS_ERR_INPUT when its files are missing or of another layout). */
ds_status ckpt_begin(const model *m, const recipe *r, const char *out_dir, int overwrite,
                     uint64_t max_shard_bytes, int resume_layers, ckpt_writer **out);
/* Write one quantized module's tensors. q [out, in] int codes; scale/zp
 * [out, ngroups]; g_idx [in] or NULL. */
ds_status ckpt_write_module(ckpt_writer *w, const char *module, const int8_t *q, const float *scale,
                            const int *zp, const int *g_idx, int out, int in);
/* Finish: check all tensors written, config.json, extra files, fsync, rename.
 * Returns bytes written through *bytes. */
ds_status ckpt_finish(ckpt_writer *w, uint64_t *bytes, int *nshards);
/* Make every tensor written so far durable (fsync), before a resume point. */
ds_status ckpt_sync(ckpt_writer *w);
/* Free after a failure; the partial dir is removed unless keep (it holds a
 * resume state worth continuing). */
void ckpt_abort(ckpt_writer *w, int keep);

#endif
