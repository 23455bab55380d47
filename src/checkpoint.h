/*
 * checkpoint.h - writes the compressed-tensors checkpoint (rank 0 only):
 * pack-quantized tensors for every quantized Linear (weight_packed int32
 * [out, ceil(in*b/32)], weight_scale [out, ngroups] in the model dtype,
 * weight_shape int64 [2], weight_zero_point int32 packed along dim 0 when
 * asymmetric, weight_g_idx int32 [in] for actorder=group), every other tensor
 * byte-for-byte, config.json with quantization_config
 * (docs/reference-llm-compressor.md §3), tokenizer/generation
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

/* The paths of a quantize run, for ckpt_check_output (summary, dataset and
 * recipe may be NULL). */
typedef struct ckpt_paths {
    const char *out, *model, *dataset, *recipe, *summary;
} ckpt_paths;

/* Before any work (rank 0): can p->out receive the checkpoint without
 * destroying anything? DS_ERR_USAGE, naming the path and why, when
 *   - out is empty, "/", or ends in "." or "..";
 *   - out exists and is not a directory, or is a non-empty directory that is
 *     not a checkpoint (config.json with quantization_config) -- refused with
 *     or without overwrite; a checkpoint is replaced only with overwrite;
 *   - out is or contains the model directory, the dataset or the recipe;
 *   - "<out>.partial" exists and is not a doneshot partial run;
 *   - the nearest existing ancestor of out is not a writable directory;
 *   - the summary lies inside out or its partial dir, is the dataset or the
 *     recipe, is a model file (config.json, *.safetensors*, tokenizer*) of the
 *     model directory, or its directory is missing or not writable.
 * Source: issue 10 of this project (never lose a user's data). */
ds_status ckpt_check_output(const ckpt_paths *p, int overwrite);

/* The output lock (flock on an inode-verified lock file, see checkpoint.c):
 * 0 and *fd when acquired, -1 with errno (EWOULDBLOCK: another process holds
 * it) otherwise. Release unlinks the file while still holding the lock. */
int ckpt_lock_acquire(const char *path, int *fd);
void ckpt_lock_release(const char *path, int fd);

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
/* The same with the module's static input activation scale (act_scale: one
 * value, written as "<module>.input_scale" when the scheme stores one
 * (quant_args.act == QACT_INPUT_SCALE); NULL otherwise). */
ds_status ckpt_write_module_act(ckpt_writer *w, const char *module, const int8_t *q, const float *scale,
                                const int *zp, const int *g_idx, int out, int in, const float *act_scale);
/* The same with NVFP4's weight_global_scale too (global_scale: one value, the
 * nvfp4-pack-quantized format's "<module>.weight_global_scale"; scale then
 * holds the effective scales weight_scale / global_scale; NULL for other
 * formats). act_scale is the input_global_scale for QACT_INPUT_GLOBAL_SCALE. */
ds_status ckpt_write_module_gs(ckpt_writer *w, const char *module, const int8_t *q, const float *scale,
                               const int *zp, const int *g_idx, int out, int in, const float *act_scale,
                               const float *global_scale);
/* Write unquantized tensor `name` (a planned model tensor, e.g. a smoothed
 * norm weight) from f32 values data [n], converted to its dtype in the model.
 * A quantized Linear's "<module>.weight" is skipped (DS_OK: the module's
 * tensors are written by ckpt_write_module). Only tensors ckpt_begin left
 * unwritten (smoothquant_tensor names when the recipe smooths) can be written
 * (DS_ERR_RUNTIME otherwise: each tensor exactly once). */
ds_status ckpt_write_tensor(ckpt_writer *w, const char *name, const float *data, size_t n);
/* Finish: check all tensors written, config.json, extra files, fsync, rename.
 * Returns bytes written through *bytes. */
ds_status ckpt_finish(ckpt_writer *w, uint64_t *bytes, int *nshards);
/* Make every tensor written so far durable (fsync), before a resume point. */
ds_status ckpt_sync(ckpt_writer *w);
/* Free after a failure; the partial dir is removed unless keep (it holds a
 * resume state worth continuing). */
void ckpt_abort(ckpt_writer *w, int keep);

#endif
