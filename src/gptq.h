/*
 * gptq.h - GPTQ (Frantar et al. 2023, Alg. 1 with lazy batch updates §3.4) as
 * llm-compressor's quantize_weight implements it (modifiers/gptq/
 * gptq_quantize.py; docs/reference-llm-compressor.md §1.4-1.5):
 * fp32 throughout; scales from the ORIGINAL weight (min-max, all groups up
 * front); actorder static = process columns by descending diag(H) (stable
 * order) while each column keeps its original group's scale; dead columns
 * (H_ii == 0) get H_ii = 1 and W[:,i] = 0; damp = dampening_frac *
 * mean(diag H) added to the diagonal; U = upper Cholesky of (cholesky_inverse
 * of chol(H)); column loop with intra-block and lazy inter-block updates; on
 * Cholesky failure, warn and use U = I (round-to-nearest for this module).
 */
#ifndef DS_GPTQ_H
#define DS_GPTQ_H

#include "quant.h"

typedef struct gptq_result {
    float *wq;        /* [out, in] dequantized (fake-quant) weight, values exact in model dtype */
    int8_t *q;        /* [out, in] integer codes as compressed-tensors stores them:
                         quant_code_from_deq(wq) (== the GPTQ loop's code except
                         where bf16 rounding of an int8 dequant is ambiguous) */
    float *scale;     /* [out, ngroups] (model-dtype values) */
    int *zp;          /* [out, ngroups] (0 when symmetric) */
    int *g_idx;       /* [in] group of each column (actorder=group only; else NULL) */
    double loss;      /* sum of (w-q)^2/d^2 / 2, for logging: the sum of row_loss in row order */
    double *row_loss; /* [out] each row's share of loss: per lazy-update block the row's squared
                         errors summed in column order, the blocks' sums added in order, halved
                         (gptq_quantize_cuda's order, so that the loss of a solve over several
                         modules' concatenated rows splits into theirs bit for bit) */
    int rtn_fallback; /* 1 if Cholesky failed and RTN was used */
} gptq_result;

/* Quantize W [out, in] (f32 values of the model-dtype weight) given the
 * normalized Hessian H [in, in] (= H_sum / num_samples, f32, symmetric; it is
 * modified in place as scratch). model_dtype is the dtype the scales are
 * rounded to and the dequantized weights are representable in.
 * block_size: columns per lazy-update block, >= 1; a block_size above `in`
 * is one block of `in` columns (as llm-compressor's range loop), and the
 * scratch is sized by min(block_size, in).
 * Returns DS_OK or DS_ERR_USAGE (e.g. group_size not dividing in).
 * Caller frees with gptq_result_free. */
ds_status gptq_quantize(const quant_args *a, const float *W, int out, int in, float *H,
                        int block_size, double dampening_frac, ds_dtype model_dtype,
                        gptq_result *res);

/* gptq_quantize memoises, per thread, the factorisation of its last two
 * Hessians (the permutation, dead columns, damped inverse's upper Cholesky
 * factor; keyed by a 128-bit hash of H's bytes, in, dampening_frac and
 * whether actorder permutes), so modules sharing one Hessian (every MoE
 * expert's gate/up in all-experts calibration, q/k/v, gate/up) factor it
 * once; results are bit-identical to a fresh factorisation. clear frees the
 * memo; stats reports this thread's hits and misses (tests, benchmarks). */
void gptq_factor_cache_clear(void);
void gptq_factor_cache_stats(int64_t *hits, int64_t *misses);

/* How the upper Cholesky factor U of H^-1 (H^-1 = U^T U) is computed:
 * TORCH: chol(H) -> cholesky_inverse -> chol(upper), llm-compressor's
 *   torch.linalg calls as torch runs them on the device: on the CPU LAPACK
 *   potrf, potri, potrf (4/3 n^3 flops); on CUDA (cuda/gptq.cu) potrf, potrs
 *   against the identity (torch's CUDA cholesky_inverse,
 *   _cholesky_inverse_cusolver_potrs_based), potrf (8/3 n^3 flops, in
 *   triangular solves);
 * FLIP: J H J = L L^T, U = J L^-1 J (J: the reversal; a potrf and a trtri,
 *   2/3 n^3 flops, no inverse of H): the same matrix up to fp32 rounding;
 * POTRI: potrf, potri, potrf on both devices (on the CPU the same as TORCH;
 *   on CUDA the solver's default until 2026-11-28, kept to compare timings).
 * None gives llm-compressor's bits beyond small models: torch's LAPACK (MKL)
 * rounds differently from OpenBLAS's, and on a 100M model TORCH and FLIP
 * agree with llm-compressor's int codes equally (93.6 %) at the same summed
 * loss (docs/BENCHMARKS.md). */
typedef enum { GPTQ_FACTOR_TORCH = 0, GPTQ_FACTOR_FLIP = 1, GPTQ_FACTOR_POTRI = 2 } gptq_factor_method;

/* The solvers' defaults: the CPU takes the flip (measured faster there); the
 * CUDA solver torch's own CUDA calls (no potri: issue 12 item 1), until a
 * device run has timed all three there (bench_gpu's A/B lines). */
#define GPTQ_FACTOR_CPU_DEFAULT GPTQ_FACTOR_FLIP
#define GPTQ_FACTOR_CUDA_DEFAULT GPTQ_FACTOR_TORCH

/* DONESHOT_GPTQ_FACTOR: "torch", "flip" or "potri" select the method; unset,
 * empty or anything else: dflt (main.c rejects other values at start-up,
 * exit 2). gptq_quantize reads it with GPTQ_FACTOR_CPU_DEFAULT,
 * gptq_quantize_cuda with GPTQ_FACTOR_CUDA_DEFAULT. */
gptq_factor_method gptq_factor_method_env(gptq_factor_method dflt);

/* 1 when DONESHOT_GPTQ_FACTOR is unset, empty, "torch", "flip" or "potri". */
int gptq_factor_env_valid(void);

/* H [n, n] (symmetric, positive definite, f32) -> U in place, row-major
 * upper triangle (U[i][j] at i*n + j, j >= i; the strict lower triangle is
 * scratch), by LAPACK: FLIP, else (TORCH, POTRI) potrf, potri, potrf.
 * Returns 0, the failing LAPACK info, or -1 for a non-finite U. */
int gptq_hinv_upper(float *H, int n, gptq_factor_method method);

/* row_loss [out] (each row's sum of squared errors) := its halves (exact);
 * returns their sum in row order: a solve's loss, in the one order both
 * solvers use (gptq_quantize, gptq_quantize_cuda). */
double gptq_halve_row_losses(double *row_loss, int out);

/* Widest block the CUDA solver (cuda/gptq.cu) runs in one pass: the U block
 * and a warp's 32 rows of the block live in shared memory (one lane per
 * row). A larger block_size is run as blocks of this width; GPTQ's
 * lazy batch update is exact for any width, so only fp32 summation order
 * changes (as between the CPU and GPU solvers anyway). */
#define GPTQ_CUDA_MAX_BLOCK 128

/* Round-to-nearest with the same qparams (no Hessian), same result layout. */
ds_status rtn_quantize(const quant_args *a, const float *W, int out, int in, ds_dtype model_dtype,
                       gptq_result *res);

void gptq_result_free(gptq_result *res);

/* perm = torch.argsort(x, descending=True) as torch 2.14 computes it on the
 * CPU (not stable: libstdc++ std::sort on (value, index) pairs, NaN first).
 * Used for actorder static; exposed for tests. */
void gptq_argsort_desc(const float *x, int64_t n, int64_t *perm);

#endif
