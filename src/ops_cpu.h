/*
 * ops_cpu.h - CPU reference ops of the decoder forward pass and Hessian
 * accumulation (the CPU twins of cuda/). Layout conventions (model.h):
 * activations are row-major [T, C] f32 arrays whose values are rounded to the
 * activation dtype `act` (BF16/F16 for such checkpoints, F32 = no rounding) at
 * the points where Hugging Face rounds (docs/model-and-tokenizer.md
 * §2-3); Linear weights are row-major [out, in] f32 (y = x W^T + b).
 * Dimension names: T tokens, C hidden, NH heads, NKV kv heads, HS head size.
 */
#ifndef DS_OPS_CPU_H
#define DS_OPS_CPU_H

#include "common.h"

/* y[T,out] = round_act(x[T,in] W[out,in]^T + b[out]) (b may be NULL).
 * f32 accumulation (OpenBLAS sgemm); the bias is added before the rounding.
 * The T rows are one sequence (matmul_seq_forward_cpu). */
void matmul_forward_cpu(float *y, const float *x, const float *w, const float *b, int T, int in,
                        int out, ds_dtype act);

/* matmul_forward_cpu on the rows of nseg sequences, concatenated (seg[i] >= 0
 * rows each; a sequence of 0 rows is skipped). Each row's bits depend only on
 * its sequence's length and its position in it, never on the other
 * sequences, the thread count or the split of a micro-batch: every sgemm
 * covers a fixed piece of one sequence (ops_cpu.c). The rows are split over
 * the host threads (OpenBLAS runs one thread: main.c). */
void matmul_seq_forward_cpu(float *y, const float *x, const float *w, const float *b, const int *seg, int nseg,
                            int in, int out, ds_dtype act);

/* RMSNorm per row (HF LlamaRMSNorm): r = x * rsqrt(mean(x^2) + eps) in f32,
 * r = round_act(r), y = round_act(w * r). x and y may alias. */
void rmsnorm_forward_cpu(float *y, const float *x, const float *w, int T, int C, float eps,
                         ds_dtype act);

/* RoPE tables for positions 0..T-1: cos/sin [T, HS] (HF: emb = cat(f, f)),
 * computed in f32 from inv_freq[HS/2] and rounded to act. */
void rope_tables_cpu(float *cos_t, float *sin_t, const float *inv_freq, int T, int HS, ds_dtype act);

/* In-place rotate_half RoPE on x [T, NH*HS] (NH heads of HS): for j < HS/2,
 * x'[j] = x[j]cos[j] - x[j+HS/2]sin[j], x'[j+HS/2] = x[j+HS/2]cos + x[j]sin,
 * each product and the sum rounded to act (HF bf16 elementwise). */
void rope_forward_cpu(float *x, const float *cos_t, const float *sin_t, int T, int NH, int HS,
                      ds_dtype act);

/* y[i] = exp(x[i]) for n floats (y may be x), f32, at most 2 ulp from the
 * correctly rounded value (Cephes expf: Cody-Waite reduction by ln 2, a
 * degree-6 polynomial, scaling by 2^k in two exact steps so that results
 * between FLT_MIN and 2^-149 are the rounded subnormals). exp(-inf) = 0,
 * exp(+inf) and x > 88.7228 = +inf, x < -103.973 = 0, NaN stays NaN. Eight
 * lanes at a time (GCC vector extensions; an AVX2 clone where the CPU has it,
 * same IEEE operations, so the same bits on every x86-64); each element's
 * value does not depend on n or its position. */
void exp_array_cpu(float *y, const float *x, size_t n);

/* Causal GQA attention: out[T, NH*HS] from q[T, NH*HS], k,v [T, NKV*HS];
 * head h uses kv head h / (NH/NKV); scores f32 scaled by HS^-0.5, f32
 * softmax, P rounded to act, P@V accumulated in f32, output rounded to act.
 * scratch: at least T*T floats (the per-head score matrix; two sgemm per head). */
void attention_forward_cpu(float *out, const float *q, const float *k, const float *v, int T,
                           int NH, int NKV, int HS, ds_dtype act, float *scratch);

/* out[n] = round_act(round_act(silu(gate)) * up), silu(z) = z/(1+exp(-z)) in f32. */
void swiglu_forward_cpu(float *out, const float *gate, const float *up, size_t n, ds_dtype act);

/* x[n] = round_act(x + y) (residual add). */
void residual_forward_cpu(float *x, const float *y, size_t n, ds_dtype act);

/* Hessian sum: H[n,n] (f64; only the upper triangle j >= i is accumulated,
 * call hessian_mirror_cpu once before use) += 2 * X_s^T X_s for each of the
 * nseq sequences s, in order, whose rows X_s [T[s], n] f32 are concatenated
 * in X (T[s] may be 0). Each X_s^T X_s is computed in f32 (ssyrk/sgemm tiles
 * of a geometry fixed by n, products of the activation values, exact inputs)
 * and added in f64, so the result is the same for any grouping of the
 * sequences into calls and any thread count, and independent of how they are
 * split across ranks up to f64 rounding. Tiles run on ds_threads() threads.
 * scratch: n*n floats. */
void hessian_accum_cpu(double *H, const float *X, int nseq, const int *T, int n, float *scratch);
/* Copy the upper triangle of H [n,n] into the lower one. */
void hessian_mirror_cpu(double *H, int n);
/* The GPTQ input from a Hessian sum: Hf[i][j] = Hf[j][i] = (float)(H[i][j] /
 * nseq) for j >= i (only H's upper triangle is read), as llm-compressor's
 * running mean H = sum / num_samples (reference-llm-compressor.md §1.4). */
void hessian_to_f32_cpu(float *Hf, const double *H, int n, double nseq);
/* The static activation observer (static_minmax, symmetric: max |X|) over
 * X [n] f32: returns max(m, max_i |X[i]|), NaN entries ignored (m >= 0, not
 * NaN). Twin of act_absmax_cuda; max is order-independent, so any split of
 * the rows (micro-batches, ranks, threads) gives the same value. */
float act_absmax_cpu(float m, const float *X, size_t n);

#endif
