/*
 * engine.h - the per-rank compute of one decoder layer behind one interface,
 * with two instances: the CPU engine (cpu_engine.c: model.c's forward on
 * OpenBLAS, f32 activations) and the CUDA engine (gpu_engine.c). The
 * pipeline (pipeline.c) keeps the distributed algorithm (module assignment,
 * reductions, broadcasts, resume points, checkpoint) and reaches the compute
 * only through these calls, per layer:
 *   load_layer  make layer lw current (the engine borrows lw until the next
 *               load; lw->lin[k].w stays the pipeline's f32 copy)
 *   calibrate   forward over this rank's samples, outputs discarded,
 *               capturing Hessian sums 2·XᵀX (f64) of the used inputs
 *   gptq        an owner's solve of one Linear (gptq_group: of several
 *               that share a Hessian, in one solve)
 *   set_weight  install the broadcast fake-quantized weight
 *   propagate   forward with the quantized weights, updating the residual
 *               stream (layer l+1's input) in place
 * Adding a backend is one more instance of engine_ops.
 */
#ifndef DS_ENGINE_H
#define DS_ENGINE_H

#include "dataset.h"
#include "gptq.h"
#include "model.h"

typedef struct engine engine;

/* Seconds accumulated over the run. */
typedef struct engine_times {
    double forward, hessian, hess_copy, gptq, propagate;
} engine_times;

typedef struct engine_ops {
    /* 1: calibrate keeps the Hessian sums on the device and gptq reads them
     * when given H_host = NULL (one rank, nothing to reduce) */
    int device_hessians;
    /* 1: gptq may run on several threads at once (each call then uses the
     * ds_threads() share of its thread); 0: one call at a time */
    int concurrent_gptq;
    const char *(*describe)(const engine *e);
    /* Make lw (borrowed until the next load) the current layer. */
    ds_status (*load_layer)(engine *e, const layer_weights *lw);
    /* Calibration pass over the local samples. used[inp] (model_num_inputs
     * entries): capture that input. cnt[2*inp] += tokens, cnt[2*inp+1] +=
     * sequences. H_host: NULL (device_hessians only: keep the sums on the
     * device) or H_host[inp] [n, n] f64 zeroed by the caller for every used
     * input, which receives the local sum (upper triangle at least); a NULL
     * H_host[inp] for a used input: no Hessian for it, only the activation
     * observer (QuantizationModifier). */
    ds_status (*calibrate)(engine *e, const int *used, double *const *H_host, int64_t *cnt);
    /* GPTQ of Linear li of the current layer (li->w its f32 weight) with the
     * Hessian sum H_host [in, in] (NULL: the device's, see above) of nseq
     * sequences, normalised as llm-compressor (H / nseq). The fake-quantized
     * weight goes to wq_model [out, in] in the model dtype (the values are
     * exact in it: the broadcast payload); res as gptq_quantize but res->wq
     * NULL (no f32 copy crosses to the host). */
    ds_status (*gptq)(engine *e, const quant_args *a, const layer_linear *li, const double *H_host, int64_t nseq,
                      int block_size, double dampening_frac, gptq_result *res, void *wq_model);
    /* Optional (NULL: the pipeline calls gptq once per module). The n >= 1
     * Linears lis[k] of the current layer that read one input (equal
     * input_id, hence one Hessian H_host, as gptq's) solved together, as
     * one GPTQ over their rows concatenated in the given order (GPTQ treats
     * rows independently given H; the engine may split the rows into
     * several solves that share one factorisation). res[k] and wq_model[k]
     * as gptq's for lis[k], res[k].loss its rows' share. The caller groups
     * only schemes whose quantization parameters are per row (strategy
     * channel or group; block with every out a multiple of the block's
     * rows) and equal for every module. Results equal n gptq calls up to
     * the fp32 summation order of the lazy update's GEMM. */
    ds_status (*gptq_group)(engine *e, const quant_args *a, const layer_linear *const *lis, int n,
                            const double *H_host, int64_t nseq, int block_size, double dampening_frac,
                            gptq_result *res, void *const *wq_model);
    /* Linear lin of the current layer := the broadcast fake-quantized weight,
     * w [out, in] f32 and the same values w_model in the model dtype (the
     * engine reads whichever is cheaper); the CPU engine reads
     * lw->lin[lin].w, which the caller has already replaced. */
    void (*set_weight)(engine *e, int lin, const float *w, const void *w_model);
    void (*propagate)(engine *e);
    /* The residual stream of all local samples in e->resid_dtype, [ntok, C],
     * samples concatenated in order (resume state). */
    void (*get_residual)(engine *e, void *buf);
    void (*set_residual)(engine *e, const void *buf);
    engine_times (*times)(const engine *e);
    size_t (*peak_bytes)(const engine *e); /* device memory peak; 0 on the CPU */
    void (*destroy)(engine *e);
} engine_ops;

/* Every instance starts with this. */
struct engine {
    const engine_ops *ops;
    /* [model_num_inputs] or NULL: calibrate also keeps, per used input,
     * max |X| over the captured rows (the static_minmax activation observer
     * of static input scales, e.g. FP8; act_absmax_cpu / act_absmax_cuda). */
    float *act_amax;
    /* get_residual / set_residual's element type: the model dtype (CPU
     * engine), bfloat16 (CUDA engine, whatever the model dtype) */
    ds_dtype resid_dtype;
};

/* The CPU engine: embeds the nlocal samples (model_embed) and keeps the
 * residual stream [ntok, C] in the model dtype (samples concatenated; the
 * values are exact in it); calibration runs layer_forward_batch over
 * micro-batches of samples with Hessian capture (hessian_accum_cpu), gptq
 * runs gptq_quantize on (float)(H / nseq). DS_ERR_INPUT: a token id out of
 * range. */
ds_status cpu_engine_create(const model *m, const ds_sample *local, size_t nlocal, engine **out);

#endif
