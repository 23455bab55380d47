/*
 * pipeline.h - the distributed sequential GPTQ pipeline (llm-compressor's
 * sequential pipeline + GPTQ DDP, docs/reference-llm-compressor.md
 * §1.7, §2.2), one decoder layer resident at a time:
 *   for each layer:
 *     module list from the config (attention, dense MLP or router + experts
 *       + shared expert; routers are never quantized)
 *     calibration pass over this rank's samples, capturing each targeted
 *       Linear's input -> Hessian sums 2·XᵀX (f64) + sequence counts
 *     assign modules to owner ranks (greedy bin packing by solve cost)
 *     reduce each Hessian to its owner(s)
 *     owners run GPTQ; codes + scales broadcast from each owner
 *     every rank installs the dequantized weights and re-runs the layer
 *       (propagation pass: layer i+1 is calibrated on quantized layer i)
 *     rank 0 streams the layer's quantized tensors into the checkpoint
 * All collectives are issued in one deterministic order on every rank.
 * The per-rank compute (forward, Hessian sums, solves, propagation) runs in
 * a layer engine (engine.h): the CPU engine (cpu_engine.c) or, with
 * run_opts.cuda, the CUDA engine (gpu_engine.h); pipeline.c is only the
 * distributed algorithm, in named steps (resume_open, output_claim,
 * engine_start, then per layer layer_begin, modules_assign,
 * calibrate_and_reduce, solve_owned, exchange_results, propagate,
 * layer_boundary; output_finish). With one rank and the CUDA engine the
 * Hessians never leave the device.
 */
#ifndef DS_PIPELINE_H
#define DS_PIPELINE_H

#include "dataset.h"
#include "model.h"
#include "recipe.h"
#include "run_stats.h"

typedef struct run_opts {
    const char *out_dir;
    int overwrite;
    uint64_t max_shard_bytes;   /* 0 = unlimited */
    /* MoE: 0 (default) = moe_calibrate_all_experts=True (every expert's
     * Hessian sees all tokens, the layer output uses the routed experts only);
     * 1 = Hessians from routed tokens only; an expert that gets no token on
     * any rank is quantized round-to-nearest with a counted warning. */
    int moe_routed_only;
    /* compute device: 0 CPU (model.c forward, OpenBLAS), 1 the CUDA engine
     * (gpu_engine.h) with these settings */
    int cuda;
    int offload_acts;           /* --offload-activations */
    size_t gpu_budget_bytes;    /* 0: 90% of free device memory */
    int max_micro_batch;        /* 0: planner default */
    /* resume (resume.h): continue the partial run of this job in
     * <out>.partial; save a resume point at the first layer boundary
     * resume_interval seconds after the last one (0: every layer) */
    int resume;
    double resume_interval;
    int stop_after_layer;       /* testing aid: stop with exit 1 after the resume point of this layer (1-based) */
} run_opts;

/* Check the recipe against the model before any work: group size divides
 * every quantized module's in_features (unless bypassed), at least one
 * module is targeted, lm_head not targeted (unsupported). DS_ERR_USAGE. */
ds_status pipeline_validate(const model *m, const recipe *r);

/* Run the whole job on this rank's samples. Collective: every rank calls it.
 * Returns the same status on every rank. */
ds_status pipeline_quantize(const model *m, const recipe *r, const ds_sample *local, size_t nlocal,
                            const run_opts *o, run_stats *stats);

/* Owner of each of n modules with the given costs: sort by cost descending
 * (stable), give each to the least-loaded rank (lowest index on ties). */
void pipeline_assign(const double *cost, int n, int nranks, int *owner);

#endif
