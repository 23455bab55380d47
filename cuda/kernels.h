/*
 * kernels.h - the CUDA backend as seen from C: context helpers and the
 * launchers of the cuda/ .cu files. Plain C (extern "C"), the only CUDA header src/
 * includes. All array arguments of launchers are DEVICE pointers; `stream`
 * is a cudaStream_t passed as void* (NULL = legacy default stream).
 *
 * Activation storage on the GPU: bf16 (uint16_t bit patterns, HF rounding
 * points reproduced in the kernels: see each launcher). Hessians: f32 or f64.
 * GPTQ and weights-for-GPTQ: f32. Each launcher twins the CPU function of the
 * same stem in src/ops_cpu.h / src/quant.h / src/gptq.h, with act = BF16.
 * Dimension names: T tokens, C hidden, NH heads, NKV kv heads, HS head size.
 * Layouts: activations row-major [T, C]; Linear weights row-major [out, in].
 * Errors: CUDA/cuBLAS/cuSOLVER failures abort the job through ds_fatal
 * (tier (b) of common.h); shape errors are DS_ASSERTs.
 */
#ifndef DS_KERNELS_H
#define DS_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__cplusplus) && !defined(_Noreturn)
#define _Noreturn [[noreturn]] /* common.h is C11 */
#endif
#ifdef __cplusplus
extern "C" {
#endif
#include "quant.h"

/* ---------------- context (context.cu) ---------------- */
/* Number of usable devices; 0 when there is no driver or no device (never aborts). */
int ds_cuda_device_count(void);
/* Select device local_rank % count, create the cuBLAS/cuSOLVER handles.
 * Returns the device index, or -1 when no device is usable (no abort). */
int ds_cuda_init(int local_rank);
/* "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)"; "none" before init. */
const char *ds_cuda_device_name(void);
void ds_cuda_mem_info(size_t *free_b, size_t *total_b);
void ds_cuda_shutdown(void); /* destroy handles and workspaces */
void *ds_cuda_malloc(size_t n); /* aborts with a clear message on OOM; n = 0 -> NULL */
void ds_cuda_free(void *p);
void *ds_cuda_malloc_host(size_t n); /* pinned host memory */
void ds_cuda_free_host(void *p);
void ds_cuda_memcpy_h2d(void *dst, const void *src, size_t n, void *stream);
void ds_cuda_memcpy_d2h(void *dst, const void *src, size_t n, void *stream); /* synchronous */
/* Asynchronous device -> host copy (dst should be pinned for true overlap). */
void ds_cuda_memcpy_d2h_async(void *dst, const void *src, size_t n, void *stream);
void ds_cuda_memcpy_d2d(void *dst, const void *src, size_t n, void *stream);
void ds_cuda_memset(void *p, int byte, size_t n, void *stream);
void *ds_cuda_stream_create(void);
void ds_cuda_stream_destroy(void *stream);
void ds_cuda_sync(void *stream); /* stream sync; NULL: device sync */
/* Events for timing (bench): elapsed ms between two recorded events. */
void *ds_cuda_event_create(void);
void ds_cuda_event_destroy(void *ev);
void ds_cuda_event_record(void *ev, void *stream);
float ds_cuda_event_ms(void *start, void *stop); /* synchronizes on stop */
/* Work issued to `stream` after this call waits for `ev`'s last record
 * (cudaStreamWaitEvent; an event never recorded is complete). */
void ds_cuda_stream_wait(void *stream, void *ev);

/* ---------------- conversions (context.cu) ---------------- */
void f32_to_bf16_cuda(uint16_t *dst, const float *src, size_t n, void *stream); /* RNE, NaN->0x7FC0 */
void bf16_to_f32_cuda(float *dst, const uint16_t *src, size_t n, void *stream);

/* ---------------- forward ops ---------------- */
/* matmul.cu: y[T,out] = bf16(x[T,in] W[out,in]^T + b) with fp32 accumulation on
 * tensor cores (cublasGemmEx, CUBLAS_COMPUTE_32F); b [out] bf16 or NULL (added
 * in f32 before the single rounding, as matmul_forward_cpu). seg: host [nseg],
 * the rows' sequence lengths (sum T), or NULL for one sequence of T rows:
 * one GEMM over all rows on the device; the CPU twin computes per sequence
 * as matmul_seq_forward_cpu does (the CPU engine's call geometry). */
void matmul_forward_cuda(uint16_t *y, const uint16_t *x, const uint16_t *w, const uint16_t *b,
                         int T, int in, int out, const int *seg, int nseg, void *stream);

/* matmul.cu: n bias-free Linear problems of one shape as one batched
 * launch (the MoE experts of a group): y_i [T_i, out] = bf16(x_i [T_i, in]
 * W_i [out, in]^T), fp32 accumulation, each output element the GEMM of
 * matmul_forward_cuda (the CPU twin computes every problem exactly as
 * matmul_forward_cpu on its own rows). ptr_h: HOST array [3n] of device
 * pointers {W_0..W_n-1, x_0..x_n-1, y_0..y_n-1} (x_i may repeat: the
 * experts' shared input, stride 0); ptr_d: a DEVICE copy of the same array,
 * uploaded by the caller stream-ordered before this call; T: host [n], each
 * >= 1. All T_i equal: one cublasGemmBatchedEx; otherwise one
 * cublasGemmGroupedBatchedEx (cuBLAS >= 12.5, one group per problem), or a
 * loop of cublasGemmEx on an older cuBLAS or where it answers
 * NOT_SUPPORTED. seg: host [n, nseg], problem i's rows per sequence (as
 * matmul_forward_cuda's seg, for the CPU twin), or NULL. */
void matmul_batched_forward_cuda(const void *const *ptr_h, void *const *ptr_d, const int *T, int n, int in,
                                 int out, const int *seg, int nseg, void *stream);

/* rmsnorm.cu: as rmsnorm_forward_cpu (f32 statistics, two bf16 roundings). y may alias x. */
void rmsnorm_forward_cuda(uint16_t *y, const uint16_t *x, const uint16_t *w, int T, int C,
                          float eps, void *stream);
/* rmsnorm.cu: the residual add fused in front of the norm (one pass over x
 * saved): x[T, C] = bf16(x + d) in place, then y = rmsnorm(x) with w [C];
 * bit for bit residual_forward_cuda followed by rmsnorm_forward_cuda (twins:
 * residual_forward_cpu, then rmsnorm_forward_cpu). y must not alias x or d. */
void residual_rmsnorm_forward_cuda(uint16_t *y, uint16_t *x, const uint16_t *d, const uint16_t *w, int T, int C,
                                   float eps, void *stream);

/* rope.cu: cos/sin tables [T, HS] bf16 from inv_freq[HS/2] (f32 device array),
 * as rope_tables_cpu; and the in-place rotate_half on x [T, NH*HS] with row
 * stride `ld` elements (ld = NH*HS for a packed tensor) as rope_forward_cpu. */
void rope_tables_cuda(uint16_t *cos_t, uint16_t *sin_t, const float *inv_freq, int T, int HS,
                      void *stream);
void rope_forward_cuda(uint16_t *x, const uint16_t *cos_t, const uint16_t *sin_t, int T, int NH,
                       int HS, int ld, void *stream);

/* attention.cu: causal GQA attention for B sequences of T tokens each
 * (q [B*T, NH*HS], k,v [B*T, NKV*HS], out [B*T, NH*HS], bf16), as
 * attention_forward_cpu per sequence: f32 scores (fp32 accumulate), f32
 * causal softmax, P rounded to bf16 after normalising, P@V fp32 accumulate,
 * bf16 out. Fused kernel (attention_fused(HS): no T x T buffer; k, v 16-byte
 * aligned) or batched GEMMs. ws: attention_ws_bytes(T, NH/NKV, HS) device
 * bytes (never NULL on the GEMM path). */
/* 1: attention_forward_cuda runs the fused kernel (HS 64 or 128, and the
 * environment sets DONESHOT_ATTN=fused: opt-in until a device run has
 * verified it; it has never run); 0: the batched-GEMM path, verified on an
 * H100. Inline so that the planner (src/gpu_plan.c), the emulator and the
 * kernels agree. */
static inline int attention_fused(int HS) {
    const char *e = getenv("DONESHOT_ATTN");
    return (HS == 64 || HS == 128) && e && strcmp(e, "fused") == 0;
}
/* Workspace bytes: 256 (fused) or rep*T*T f32 scores + rep*T*T bf16 P. */
static inline size_t attention_ws_bytes(int T, int rep, int HS) {
    if (attention_fused(HS)) return 256;
    size_t tt = (size_t)T * T * rep;
    return ((tt * sizeof(float) + 255) & ~(size_t)255) + tt * sizeof(uint16_t);
}
void attention_forward_cuda(uint16_t *out, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                            int B, int T, int NH, int NKV, int HS, void *ws, void *stream);
/* attention_fused.cu: the fused kernel alone (attention_forward_cuda's fused
 * path, whatever the environment says): HS 64 or 128, k and v 16-byte
 * aligned, q and out 4-byte aligned (asserted). */
void attention_fused_cuda(uint16_t *out, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T,
                          int NH, int NKV, int HS, void *stream);

/* swiglu.cu: out = bf16(bf16(silu(gate)) * up) and x = bf16(x + y). */
void swiglu_forward_cuda(uint16_t *out, const uint16_t *gate, const uint16_t *up, size_t n,
                         void *stream);
void residual_forward_cuda(uint16_t *x, const uint16_t *y, size_t n, void *stream);

/* ---------------- Hessians (hessian.cu) ---------------- */
/* H[n,n] f32 += 2 X^T X for X [rows, n] bf16 (GemmEx, bf16 products exact in
 * f32, fp32 accumulate). Full matrix written (both triangles; tensor-core
 * summation order may leave H[i][j] and H[j][i] a rounding apart: call
 * hessian_symmetrize_cuda before a solve if exact symmetry matters). */
void hessian_accum_cuda(float *H, const uint16_t *X, int rows, int n, void *stream);
/* Tile-row height of hessian_accum_f64_cuda's upper-triangle GEMMs. */
#define DS_HESS_TILE 1024
/* f32 elements of hessian_accum_f64_cuda's scratch for inputs up to n wide:
 * one tile row, min(n, DS_HESS_TILE) x n. */
static inline size_t hessian_scratch_floats(int n) {
    return (size_t)(n < DS_HESS_TILE ? n : DS_HESS_TILE) * (size_t)n;
}
/* The twin of hessian_accum_cpu: H[n,n] f64 += 2 X^T X for X [rows, n] bf16,
 * rows = seg[0] + ... + seg[nseg-1] (the rows of nseg sequences, in order;
 * a segment may be empty), the upper triangle j >= i only (the strict lower
 * one is left as it was). The kernel: per tile row of DS_HESS_TILE rows,
 * scratch (hessian_scratch_floats(n) f32) = 2 X_a^T X[:, a..n] over all rows
 * of the call (GemmEx, f32), then added in f64. The CPU twin sums each
 * segment in f32 and adds it in f64: the CPU engine's order (one
 * hessian_accum_cpu per sequence), so the emulated engine's Hessians are the
 * CPU engine's bit for bit whatever its chunking; the kernel's f32 sums may
 * span sequences (another summation order, as cuBLAS's own). */
void hessian_accum_f64_cuda(double *H, const uint16_t *X, const int *seg, int nseg, int n, float *scratch,
                            void *stream);
/* Copy the upper triangle (row-major i<j) onto the lower. */
void hessian_symmetrize_cuda(float *H, int n, void *stream);
/* Hf[i][j] = Hf[j][i] = (float)(Hd[i][j] / divisor) for j >= i, Hd and Hf
 * [n, n] (divisor = number of calibration sequences): only Hd's upper
 * triangle is read; bit-identical to hessian_to_f32_cpu. */
void hessian_to_f32_cuda(float *Hf, const double *Hd, int n, double divisor, void *stream);
/* Static activation observer (static_minmax): *amax (one f32, >= 0, not
 * NaN) := max(*amax, max_i |X[i]|) over X [n] bf16 (NaN skipped), combined
 * with atomicMax, so calls over any split of the rows (micro-batches, chunks)
 * give the bit-identical value of act_absmax_cpu (ops_cpu.h). */
void act_absmax_cuda(float *amax, const uint16_t *X, size_t n, void *stream);

/* ---------------- GPTQ (gptq.cu) ---------------- */
/* Outputs of gptq_quantize_cuda, DEVICE arrays allocated by the caller:
 * wq [out,in] f32 (dequantized, exact in model dtype), q [out,in] int8 codes,
 * scale [out,ngroups] f32 (model-dtype values), zp [out,ngroups] int32
 * (0 when symmetric), g_idx [in] int32 (only for actorder=group; may be NULL
 * otherwise). ngroups = quant_num_groups(a, in). */
typedef struct gptq_cuda_out {
    float *wq;
    int8_t *q;
    float *scale;
    int32_t *zp;
    int32_t *g_idx;
    double loss;      /* host: sum (w-q)^2/d^2 / 2, the sum of the rows' shares in row order */
    int rtn_fallback; /* host: 1 when Cholesky failed and U = I was used */
    double *row_loss; /* HOST [out] or NULL: each row's share of loss (gptq_result.row_loss's
                         order), so a solve of several modules' concatenated rows gives each
                         module's loss as its own solve would */
} gptq_cuda_out;
/* Same numerics as gptq_quantize (src/gptq.h): W [out,in] f32 device (not
 * modified), H [in,in] f32 device (normalized Hessian, used as scratch:
 * destroyed). fp32 throughout (no TF32), Cholesky / inverse / Cholesky by
 * cuSOLVER, column sweep per block in a kernel (one lane per row, block <= 128
 * columns), lazy updates by cublasSgemm. Returns DS_ERR_USAGE for unsupported
 * arguments (message in ds_errmsg()). */
ds_status gptq_quantize_cuda(const quant_args *a, const float *W, int out, int in, float *H,
                             int block_size, double dampening_frac, ds_dtype model_dtype,
                             gptq_cuda_out *o, void *stream);
/* The next gptq_quantize_cuda call only: key != 0 names its Hessian; a call
 * whose key (and width, actorder, dampening) equals the last keyed call's
 * reuses that factorisation (permutation, dead columns, U; one extra
 * [in, in] f32 device buffer) instead of refactoring H, with bitwise the same
 * results. The caller guarantees that equal keys mean equal H. 0: no reuse. */
void gptq_cuda_set_factor_key(uint64_t key);

/* quant_pack.cu: the twins of quant_pack_rows / quant_pack_cols (bitwise). */
void quant_pack_rows_cuda(const int8_t *q, int rows, int cols, int bits, int32_t *packed,
                          void *stream);
void quant_pack_cols_cuda(const int32_t *zp, int rows, int g, int bits, int32_t *packed,
                          void *stream);

/* ---------------- mixture of experts (moe.cu; twins of model.c's route and
 * moe_forward steps, act = BF16) ---------------- */
/* Router: logits [T, E] bf16 -> top_e [T, K] expert ids (descending
 * probability, ties -> lower index) and top_w [T, K] weights (bf16 values in
 * f32): softmax in f32, renormalised over the K when norm_topk. ws: at least
 * moe_route_ws_bytes(T, E) bytes of device scratch. */
size_t moe_route_ws_bytes(int T, int E);
void moe_route_cuda(int32_t *top_e, float *top_w, const uint16_t *logits, int T, int E, int K, int norm_topk,
                    void *ws, void *stream);
/* dst [n, C] = x[rows[i], :] (bf16). */
void moe_gather_cuda(uint16_t *dst, const uint16_t *x, const int32_t *rows, int n, int C, void *stream);
/* The index-add of several experts at once (the rows tok[0..n) distinct):
 * acc[tok[i], :] = bf16(acc + bf16(w[p] * y[src[p], :])) for p = start[i]
 * .. start[i+1]-1 in that order (ascending expert: moe_forward's order).
 * start [n+1] holds absolute indices into src / w. */
void moe_combine_cuda(uint16_t *acc, const uint16_t *y, const int32_t *tok, const int32_t *start,
                      const int32_t *src, const float *w, int n, int C, void *stream);
/* Qwen2-MoE shared expert: acc[t] = bf16(acc[t] + bf16(g_t * y[t])), g_t =
 * bf16(sigmoid(bf16(sum_j m[t,j] * wsg[j]))) (f32, sequential sum); gate_ws
 * [T] f32 device scratch. */
void moe_shared_gate_add_cuda(uint16_t *acc, const uint16_t *y, const uint16_t *m, const uint16_t *wsg, int T, int C,
                              float *gate_ws, void *stream);

#ifdef __cplusplus
}
#endif
#endif
