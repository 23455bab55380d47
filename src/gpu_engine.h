/*
 * gpu_engine.h - the CUDA layer engine of the pipeline (issue: GPU backend).
 * The pipeline (pipeline.c) keeps the whole distributed algorithm (module
 * assignment, MPI reductions, broadcasts, checkpoint); the engine replaces
 * the four per-rank compute steps of one decoder layer:
 *   load       the layer's weights -> device (bf16), once per layer
 *   calibrate  forward over this rank's samples in micro-batches, capturing
 *              Hessian sums 2·XᵀX (f64 on the device, upper triangle only,
 *              hessian_accum_f64_cuda)
 *   gptq       an owner's solve on the device (gptq_quantize_cuda)
 *   propagate  forward with the quantized weights, updating the residual
 *              stream in place (device-resident, or streamed from pinned host
 *              memory with --offload-activations: double-buffered, copies on a
 *              second stream overlapped with compute)
 * Every device buffer is allocated once in gpu_engine_create, sized by
 * gpu_plan (src/gpu_plan.h) and the model dims: no allocation in the layer
 * loop (the GPTQ workspace of cuda/gptq.cu grows on the first layer only).
 *
 * Numerics: the same ops and rounding points as the CPU forward (model.c)
 * with bf16 activation storage, so a bf16 model gives the CPU path's values
 * up to GEMM summation order (cuda/kernels.h documents each op's twin).
 * Supported: Llama / Mistral / Qwen2 / Qwen3 and the MoE families Mixtral,
 * Qwen2-MoE (shared expert + sigmoid gate), Qwen3-MoE. torch_dtype
 * bfloat16 runs as transformers computes it; float16 and float32 models run
 * the same bfloat16 forward (weights, norms, embeddings and the residual
 * stream rounded to bfloat16 on upload), while GPTQ quantizes the model's own
 * f32 weight values with the Hessians of that forward and rounds scales to
 * the model dtype: the per-module loss is close to --device cpu's (which
 * computes in the model dtype), not equal. A sparse layer (issue 13): router matmul in bf16, routing
 * (softmax, top-K, norm_topk) on the device (cuda/moe.cu), the routing copied
 * to the host once per chunk to list each expert's rows, one upload of all
 * experts' row lists, then per expert gather -> gate/up/swiglu/down GEMMs ->
 * weighted scatter-add (all tokens for every expert when calibrating with
 * moe_calibrate_all_experts); the experts' gate/up share INP_MLP's Hessian
 * (all experts) and each expert's down_proj (and, routed, up input) has its
 * own f64 sum, allocated on first use.
 *
 * In a build without CUDA (make CUDA=0) gpu_engine_built() is 0, the device
 * count is 0 and gpu_engine_create returns DS_ERR_USAGE with a hint; the
 * other calls are never reached. A CUDA build loads the engine lazily (see
 * "lazy loading" below). Device failures (OOM, launch errors) abort
 * the job through ds_fatal with the CUDA error text (common.h tier (b)).
 */
#ifndef DS_GPU_ENGINE_H
#define DS_GPU_ENGINE_H

#include "dataset.h"
#include "engine.h"
#include "gptq.h"
#include "model.h"

typedef struct gpu_engine gpu_engine;

typedef struct gpu_engine_opts {
    int offload_acts;       /* 1: residual stream in pinned host memory (--offload-activations) */
    size_t budget_bytes;    /* device bytes the plan may use; 0: 90% of the free memory
                               divided by the local ranks sharing the device */
    int local_rank;         /* device = local_rank % visible devices */
    const quant_args *qa;   /* the recipe's weight scheme (sizes the GPTQ outputs) */
    int gptq_block;         /* GPTQ block size */
    int max_micro_batch;    /* sequences per forward chunk cap (0: planner default) */
    int moe_routed;         /* MoE calibration with routed tokens only (plans per-expert gate/up Hessians) */
    int rtn_only;           /* QuantizationModifier: no Hessians and no device solves (gptq is refused) */
} gpu_engine_opts;

/* Per-engine timings, seconds, accumulated over the run (device time of the
 * Hessian updates measured with events; the rest is wall time). */
typedef struct gpu_engine_times {
    double upload, forward, hessian, hess_copy, gptq, propagate;
} gpu_engine_times;

/* 1 when this binary carries a CUDA backend. */
int gpu_engine_built(void);
/* Visible CUDA devices (0 with no driver/device or in a CPU-only build). */
int gpu_engine_device_count(void);
/* The local rank used for device selection: OMPI_COMM_WORLD_LOCAL_RANK,
 * then SLURM_LOCALID, then MPI's shared-memory split (comm_local_rank). */
int gpu_engine_local_rank(void);
/* DS_OK if the engine runs this model (torch_dtype bfloat16, float16 or
 * float32); DS_ERR_USAGE naming what is not supported + hint. */
ds_status gpu_engine_check_model(const model_config *c);

/* Select the device, plan memory for `nlocal` samples (max length sets the
 * attention workspace), allocate every buffer, embed the samples on the host
 * and upload them (or keep them in pinned memory when offloaded).
 * DS_ERR_USAGE: no device, unsupported model, plan does not fit the budget
 * (message with the figures and a hint). DS_ERR_INPUT: a token id out of range. */
ds_status gpu_engine_create(const model *m, const ds_sample *local, size_t nlocal,
                            const gpu_engine_opts *o, gpu_engine **out);
/* "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB) | micro-batch 8 | resident". */
const char *gpu_engine_describe(const gpu_engine *e);

/* Upload layer lw's weights (q, k, v, o, gate, up, down, biases, norms). */
void gpu_engine_load_layer(gpu_engine *e, const layer_weights *lw);

/* Calibration pass of the loaded layer over all local samples (outputs
 * discarded). used[inp] (INP_* ids, model_num_inputs entries): capture that
 * input. cnt[2*inp] += tokens, cnt[2*inp+1] += sequences, as the CPU capture.
 * H_host: NULL keeps the sums on the device only (one rank: no reduction);
 * else H_host[inp] [n, n] f64 receives the full local sum of each used input,
 * and a NULL H_host[inp] of a used input sums no Hessian (nor counts) for it
 * (QuantizationModifier: the activation observer only). act_amax: NULL, or
 * [model_num_inputs] f32 where each used input's entry := max(entry, max |X|
 * over its captured rows) (act_absmax_cuda per capture, one copy at the end:
 * the CPU engine's value bit for bit, given the same activations). */
void gpu_engine_calibrate(gpu_engine *e, const int *used, double *const *H_host, int64_t *cnt, float *act_amax);

/* GPTQ of Linear li of the loaded layer (li->w: its f32 weight; a bf16
 * model's is read from the device copy, not uploaded again) with the
 * Hessian sum of li->input_id: H_host [in, in] f64 (the reduced sum; only its
 * upper triangle is read) or NULL to use the device-resident sum of the last
 * calibration. Normalized as the CPU path: Hf = (float)(H / nseq), upper
 * triangle mirrored. The fake-quantized weight goes to wq_model [out, in] in
 * the model dtype (a bf16 model: converted on the device, half the bytes
 * copied back); res as gptq_quantize with res->wq = res->q = NULL (the
 * pipeline derives codes from wq_model). Returns gptq_quantize_cuda's status. */
ds_status gpu_engine_gptq(gpu_engine *e, const quant_args *a, const layer_linear *li, const double *H_host,
                          int64_t nseq, int block_size, double dampening_frac, gptq_result *res, void *wq_model);

/* engine_ops.gptq_group: the n Linears lis[k] of the loaded layer that read
 * one input, as gpu_engine_gptq each, solved as one GPTQ over their rows
 * concatenated in order (gW, gWq, ... hold the group; consecutive modules
 * share a solve while their rows fit the buffers, sized for the plan's
 * gptq_group_rows, and the solves of one group share one factorisation).
 * res[k].loss is its rows' share of the solve's loss, summed in its row
 * order: the loss of its own solve. Same arguments and status as
 * gpu_engine_gptq (n = 1 is gpu_engine_gptq); on failure every res[k] is
 * freed. */
ds_status gpu_engine_gptq_group(gpu_engine *e, const quant_args *a, const layer_linear *const *lis, int n,
                                const double *H_host, int64_t nseq, int block_size, double dampening_frac,
                                gptq_result *res, void *const *wq_model);

/* Replace Linear `lin` (LIN_Q..LIN_DOWN) of the loaded layer by the broadcast
 * fake-quantized weight: w [out, in] f32 and w_model, the same values in the
 * model dtype (uploaded as is for a bf16 model; else w is converted). */
void gpu_engine_set_weight(gpu_engine *e, int lin, const float *w, const void *w_model);

/* Propagation pass: the residual stream := layer(residual stream). */
void gpu_engine_propagate(gpu_engine *e);

/* The residual stream of all local samples, bf16 [ntok, C] host memory
 * (samples concatenated in order): read (resume state) and write (resume). */
void gpu_engine_get_residual(gpu_engine *e, uint16_t *host);
void gpu_engine_set_residual(gpu_engine *e, const uint16_t *host);

/* Timings so far, and the peak device memory in use (sampled after
 * allocation and after each solve; cudaMemGetInfo, whole device). */
gpu_engine_times gpu_engine_get_times(const gpu_engine *e);
size_t gpu_engine_peak_bytes(const gpu_engine *e);

void gpu_engine_destroy(gpu_engine *e);

/* gpu_engine_create wrapped as the engine.h instance the pipeline drives
 * (same errors; in a build without CUDA always DS_ERR_USAGE). */
ds_status gpu_engine_create_engine(const model *m, const ds_sample *local, size_t nlocal, const gpu_engine_opts *o,
                                   engine **out);
/* Why gpu_engine_device_count() is 0: "" when it is not, else e.g. "this
 * doneshot was built without CUDA" or "no CUDA driver (libcuda.so.1: cannot
 * open shared object file ...)". Valid after gpu_engine_device_count(). */
const char *gpu_engine_why_none(void);

/* ---- lazy loading (make CUDA=1) ----
 * The doneshot binary of a CUDA build carries no CUDA library: src/gpu_loader.c
 * implements gpu_engine_built, gpu_engine_device_count, gpu_engine_why_none and
 * gpu_engine_create_engine by loading libdoneshot-cuda.so (this file with
 * DS_CUDA + the cuda/ kernels, linked against cudart, cuBLAS, cuSOLVER) on first use,
 * and only once the driver (libcuda.so.1) reports a device; so a CPU run of a
 * CUDA build has the CPU build's footprint. The library exports one symbol,
 * doneshot_gpu_backend, and takes everything else (model, gptq, util) from the
 * executable (linked -rdynamic). Library and binary must come from the same
 * build: the loader compares version and GPU_BACKEND_ABI, a fingerprint of the
 * structs that cross. The other gpu_engine_* calls stay inside the library. */
#define GPU_BACKEND_ABI                                                                                 \
    ((size_t)1 + 3 * sizeof(model) + 5 * sizeof(model_config) + 7 * sizeof(gpu_engine_opts) +          \
     11 * sizeof(ds_sample) + 13 * sizeof(layer_weights) + 17 * sizeof(quant_args) +                   \
     19 * sizeof(gptq_result) + 23 * sizeof(engine_ops) + 29 * sizeof(layer_linear))
typedef struct gpu_backend {
    const char *version;    /* DS_VERSION of the library */
    size_t abi;             /* GPU_BACKEND_ABI of the library */
    int (*device_count)(void);
    ds_status (*create_engine)(const model *m, const ds_sample *local, size_t nlocal, const gpu_engine_opts *o,
                               engine **out);
} gpu_backend;
/* The table of libdoneshot-cuda.so (defined in builds with DS_CUDA). */
const gpu_backend *doneshot_gpu_backend(void);

#endif
