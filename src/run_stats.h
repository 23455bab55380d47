/*
 * run_stats.h - what a quantize run measured and decided, as plain data:
 * per-stage times, one record per quantized module (loss, owner rank, solve
 * time), totals. Filled by the pipeline (pipeline.c), saved and restored by
 * the resume state (resume.c), reported by the summary (summary.c); none of
 * those depends on another's code through it.
 */
#ifndef DS_RUN_STATS_H
#define DS_RUN_STATS_H

#include <stddef.h>
#include <stdint.h>

typedef struct stage_times {
    double load, forward, hessian, reduce, gptq, bcast, propagate, save;
} stage_times;

typedef struct module_record {
    char name[160];
    int owner, in, out, rtn_fallback;
    double loss, seconds;
} module_record;

typedef struct run_stats {
    stage_times t;              /* this rank's totals */
    double total_s;             /* wall time of pipeline_quantize */
    size_t samples_total, tokens_total;
    module_record *mods;        /* all quantized modules (every rank has them) */
    int nmods, n_rtn;           /* n_rtn: RTN fallbacks (Cholesky failure or no tokens) */
    int n_no_tokens;            /* experts that received no calibration token (routed-only mode) */
    uint64_t bytes_written;
    int nshards;
    char device[512];           /* "cpu" or the CUDA engine's description */
    size_t device_peak_bytes;   /* CUDA: peak device memory in use (max over ranks) */
    double save_busy_s;         /* rank 0: seconds the checkpoint writer thread worked (t.save counts
                                 * only the pipeline's waits for it; ckpt_async.h) */
} run_stats;

/* Free s->mods (s itself is the caller's). */
void run_stats_free(run_stats *s);

#endif
