/*
 * gpu_plan.h - GPU memory planning for layer-by-layer calibration (host-side,
 * no CUDA needed, unit-tested on CPU). Given model dims and the rank's token
 * count, size every device buffer of the layer driver and pick the largest
 * micro-batch (sequences per forward chunk) whose peak fits the budget.
 * Accounting follows docs/model-and-tokenizer.md §5.3:
 *   weights      one layer's linears + norms, bf16; MoE: the union of a
 *                dense and a sparse layer (router, all experts, shared
 *                expert and its gate) when the model has both kinds
 *   acts         the residual stream of all local tokens, bf16, updated in
 *                place by the propagation pass (0 when offloaded to pinned
 *                host memory; then two micro-batch staging buffers)
 *   hessians     one per distinct linear input (qkv, o, gate/up, down), f32
 *                or f64 accumulators; MoE: + every expert's down_proj input
 *                (IM), the shared expert's (IS), and with routed calibration
 *                every expert's gate/up input (C); f32 scratch of the widest
 *                input's f64 accumulate: one tile row, min(n, 1024) x n
 *                (hessian_scratch_floats in cuda/kernels.h)
 *   transients   per micro-batch: residual copy, norm out, q, k, v, ctx,
 *                attn/mlp out, gate (-> act), up (the widest MLP: F, IM or
 *                IS); MoE: router logits + softmax scratch, top-K ids and
 *                weights, row lists, gathered rows, the block's accumulator
 *   attn_ws      256 bytes for the fused attention kernel (HS 64, 128); else
 *                scores f32 + P bf16 for the rep query heads of one kv head
 *                (attention_ws_bytes in cuda/kernels.h, DONESHOT_ATTN=gemm)
 *   gptq         the engine's solve buffers, each sized for its largest
 *                use over the layer's shapes (f32 weight copy, wq f32, q
 *                int8; the Hessian copy, which a solve consumes; scales,
 *                zero points), the solver's workspace for its largest call
 *                (working copy, error block, a second Hessian-sized
 *                matrix with hessian_copy, cuSOLVER's ~ n * 128 floats,
 *                estimated) and the
 *                cached factor of a shared Hessian; with gptq_group, the
 *                shapes include a grouped solve of gptq_group_rows rows of
 *                width C (the modules sharing a Hessian: q/k/v, gate/up,
 *                the experts' gate/up)
 *   cublas_ws    fixed cuBLAS workspace (32 MiB)
 * With rtn_only (QuantizationModifier) hessians and gptq are 0.
 * Peak = weights + acts + staging + hessians + cublas_ws
 *        + forward transients + attn_ws + gptq
 * (the engine keeps the forward and GPTQ buffers apart: no aliasing).
 */
#ifndef DS_GPU_PLAN_H
#define DS_GPU_PLAN_H

#include "common.h"

typedef struct gpu_plan_dims {
    int C, F, NH, NKV, HS; /* hidden, ffn hidden, heads, kv heads, head size */
    int V;                 /* vocab (embedding / lm_head stay on the host: not counted) */
    /* mixture of experts (all 0 for a dense model): experts, top-K, expert
     * and shared-expert widths; dense_layers: some layer has a dense MLP
     * (F counted only then); routed: per-expert gate/up Hessians
     * (moe_calibrate_all_experts false) */
    int E, K, IM, IS, dense_layers, routed;
    long n_tokens;         /* calibration tokens on this rank */
    int seq_len;           /* tokens per sequence (T) */
} gpu_plan_dims;

typedef struct gpu_plan_opts {
    int offload_acts;      /* 1: inps/outs in pinned host memory, streamed per micro-batch */
    size_t budget_bytes;   /* device memory the plan may use */
    int hessian_f64;       /* 1: f64 Hessian accumulators (hessian_accum_f64_cuda) */
    int gptq_block;        /* GPTQ block size (128) */
    int hessian_copy;      /* 1: the solver needs a second [in, in] f32 matrix: the permuted
                            * Hessian (actorder) or potrs' right-hand side (DONESHOT_GPTQ_FACTOR
                            * torch, the CUDA default; cuda/gptq.cu) */
    int max_micro_batch;   /* upper bound on sequences per chunk (0: 64) */
    int rtn_only;          /* 1: QuantizationModifier (round-to-nearest on the host): no Hessians, no solves */
    int gptq_group;        /* 1: room for grouped solves (engine_ops.gptq_group) where it costs no
                            * micro-batch size */
} gpu_plan_opts;

/* Rows of one grouped GPTQ solve at most: 128 thread blocks of the sweep
 * kernel (one lane per row, 128 rows and 130 KiB of shared memory per block,
 * one block per SM), one wave on an H100's 132 SMs; more rows would take a
 * second wave and memory. */
#define GPU_PLAN_GROUP_ROWS_MAX 16384

typedef struct gpu_plan {
    size_t weights, acts, staging, hessians, transients, attn_ws, gptq, cublas_ws;
    size_t peak;           /* bytes at the chosen micro-batch */
    int micro_batch;       /* sequences per forward chunk (>= 1 when it fits) */
    long n_seq;            /* ceil(n_tokens / seq_len) */
    int gptq_group_rows;   /* rows (of width C) one grouped solve may take; 0: none planned (the
                            * groups then fit in the largest module's buffers) */
} gpu_plan;

/* Fill *p. DS_OK when a micro-batch >= 1 fits the budget; DS_ERR_USAGE with a
 * message ("needs X GiB at micro-batch 1, budget Y GiB" + hint) when not, in
 * which case *p still holds the micro-batch-1 figures. DS_ERR_USAGE too for
 * bad dims (NH % NKV != 0, non-positive sizes). */
ds_status gpu_plan_make(const gpu_plan_dims *d, const gpu_plan_opts *o, gpu_plan *p);

/* Bytes of the per-micro-batch transients and attention workspace for mb
 * sequences (exposed for tests and the bench). */
size_t gpu_plan_forward_bytes(const gpu_plan_dims *d, int mb);

/* One line per component, in MiB, to f (for --verbose and the bench). */
void gpu_plan_print(const gpu_plan *p, FILE *f);

#endif
