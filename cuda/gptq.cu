/*
 * gptq.cu - GPTQ on the GPU; twin of gptq_quantize (src/gptq.h), same
 * numerics as llm-compressor's quantize_weight:
 *   1. qparams (min-max, model-dtype scales) from the ORIGINAL weight, all
 *      groups up front (actorder=group: from the permuted weight); int
 *      (tensor/channel/group) and fp8 e4m3 (also block: one scale per
 *      [block[0], block[1]] tile, stored in each of its rows) through the
 *      code-kind functions of qscalar.h (qs_fake_k: fp8 scale = absmax/448);
 *      NVFP4 (fp4 tensor_group, groups of 16): the effective scales
 *      weight_scale / global_scale (qa->global_scale: the fused one) are
 *      computed on the host by the CPU twin's quant_minmax_qparams;
 *   2. actorder: perm = torch.argsort(diag H, descending) with torch's tie
 *      order (gptq_argsort_desc, shared with the CPU twin, host side); each column keeps its original group's scale
 *      (static) - the kernels see a per-column group table `gcol`;
 *   3. dead columns (H_ii == 0): H_ii = 1, W[:, i] = 0;
 *   4. damp = frac * mean(diag H) (after the dead fix) added to the diagonal;
 *   5. U = upper Cholesky of H^-1, fp32, by DONESHOT_GPTQ_FACTOR's method
 *      (src/gptq.h): torch (default): what torch runs on CUDA for
 *      cholesky -> cholesky_inverse -> cholesky(upper): cuSOLVER spotrf(L),
 *      spotrs(L) against the identity (torch's CUDA cholesky_inverse is
 *      potrs-based; the right-hand side is H's own buffer once the permuted
 *      copy exists, else a workspace matrix), spotrf of that inverse (its
 *      lower triangle; torch reads the upper, which differs from it only
 *      by the solves' rounding); potri: spotrf, spotri, spotrf in place;
 *      flip: spotrf of the reversed H, trtri, anti-transpose. The
 *      column-major lower factor L2 of H^-1 read row-major IS U = L2^T
 *      (U[r][c] = buf[r*n + c], c >= r; the other triangle holds stale
 *      values and is never read);
 *      any failure -> warning, U = I (round-to-nearest, rtn_fallback = 1);
 *   6. column sweep per block of min(block_size, in, 128) columns (llm-compressor
 *      clamps the block to the weight's width; wider blocks run as blocks of
 *      128, which GPTQ's lazy update makes exact up to fp32 summation order):
 *      gptq_block_kernel, one lane per row (each lane quantizes its own
 *      row's columns in order; the warp's rows and the block of U in
 *      shared memory), with the intra-block update
 *      w_j -= err * U[c][j] written as __fmul_rn/__fsub_rn (no FMA
 *      contraction, like the CPU's plain loop); then the lazy update
 *      W[:, i2:] -= Err @ U[i1:i2, i2:] by cublasSgemm (true fp32, no TF32);
 *   7. outputs written at the original column positions (undoing the perm).
 * gptq_cuda_set_factor_key(k) before a call: steps 2-5 (everything that
 * depends only on H) are kept under key k, and the next call with the same
 * key, width, actorder and dampening reuses them (the permutation, dead
 * columns, U or its RTN fallback) instead of refactoring H: results are
 * bitwise those of a fresh factorisation.
 * Differences from the CPU twin come only from fp32 summation orders in
 * cuSOLVER / sgemm vs LAPACK / OpenBLAS; codes agree except for rare flips
 * at rounding ties (tests/test_kernels.c reports the flip rate).
 */
#include "cuda_common.cuh"
#include "qscalar.h" /* qparams, fake quant: the host's math */

extern "C" {
#include "gptq.h" /* gptq_argsort_desc */
}
#include <float.h>
#include <stdlib.h>
#include <string.h>

#define GPTQ_MAX_BLOCK GPTQ_CUDA_MAX_BLOCK /* gptq.h */
/* U's block (64 KiB) and one warp's rows (16.1 KiB) fit the 99 KiB that
 * sm_86 / sm_89 allow a thread block */
static_assert(GPTQ_MAX_BLOCK <= 128, "gptq_block_kernel's shared memory is sized for blocks of <= 128 columns");
#define GPTQ_WARPS 4 /* gptq_block_kernel: one row per lane, at most 128 rows per thread block */

/* ---- grow-only workspace ---- */
static void *g_ws;
static size_t g_ws_bytes;

/* ---- one cached factorisation (gptq_cuda_set_factor_key) ----
 * U of the last keyed solve, with the host tables that depend only on H
 * (permutation, dead columns, the failure), so that the modules sharing a
 * Hessian (every MoE expert's gate/up, q/k/v, gate/up) factor it once. */
static float *g_fac;
static size_t g_fac_cap;
static uint64_t g_fac_key, g_next_key;
static int g_fac_n, g_fac_perm, g_fac_info, g_fac_step;
static double g_fac_damp;
static int *g_fac_permv;
static uint8_t *g_fac_dead;

extern "C" void gptq_cuda_set_factor_key(uint64_t key) { g_next_key = key; }

void gptq_cuda_release(void) {
    if (g_ws) cudaFree(g_ws);
    g_ws = NULL;
    g_ws_bytes = 0;
    if (g_fac) cudaFree(g_fac);
    g_fac = NULL;
    g_fac_cap = 0;
    g_fac_key = 0;
    free(g_fac_permv);
    free(g_fac_dead);
    g_fac_permv = NULL;
    g_fac_dead = NULL;
}

static void *ws_get(size_t n) {
    if (n > g_ws_bytes) {
        gptq_cuda_release();
        g_ws = ds_cuda_malloc(n);
        g_ws_bytes = n;
    }
    return g_ws;
}

static size_t al(size_t n) { return (n + 255) & ~(size_t)255; }

/* ---- qparams ---- */
/* One warp per (row, group) of `gsz` columns: min and max. */
static __global__ void minmax_kernel(const float *W, int out, int in, int gsz, int ng, float *mn,
                                     float *mx) {
    size_t wid = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (wid >= (size_t)out * ng) return;
    int r = (int)(wid / ng), g = (int)(wid % ng);
    const float *p = W + (size_t)r * in + (size_t)g * gsz;
    const int len = in - g * gsz < gsz ? in - g * gsz : gsz; /* a partial last group */
    float a = INFINITY, b = -INFINITY;
    for (int j = lane; j < len; j += 32) { a = fminf(a, p[j]); b = fmaxf(b, p[j]); }
    for (int o = 16; o > 0; o >>= 1) {
        a = fminf(a, __shfl_xor_sync(0xffffffffu, a, o));
        b = fmaxf(b, __shfl_xor_sync(0xffffffffu, b, o));
    }
    if (lane == 0) { mn[wid] = a; mx[wid] = b; }
}

/* QS_BLOCK: one warp per (row tile of br rows, column block g of bc columns):
 * the tile's min and max, written to each of its rows' entry [r, g] (the
 * in-memory scale layout [out, ng] of quant_minmax_qparams). */
static __global__ void block_minmax_kernel(const float *W, int out, int in, int br, int bc, int ng, float *mn,
                                           float *mx) {
    size_t wid = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    const int nrt = (out + br - 1) / br;
    if (wid >= (size_t)nrt * ng) return;
    const int t = (int)(wid / ng), g = (int)(wid % ng);
    const int r0 = t * br, r1 = r0 + br < out ? r0 + br : out;
    const int c0 = g * bc, c1 = c0 + bc < in ? c0 + bc : in, w = c1 - c0;
    float a = INFINITY, b = -INFINITY;
    for (int k = lane; k < (r1 - r0) * w; k += 32) {
        const float v = W[(size_t)(r0 + k / w) * in + c0 + k % w];
        a = fminf(a, v);
        b = fmaxf(b, v);
    }
    for (int o = 16; o > 0; o >>= 1) {
        a = fminf(a, __shfl_xor_sync(0xffffffffu, a, o));
        b = fmaxf(b, __shfl_xor_sync(0xffffffffu, b, o));
    }
    if (lane == 0)
        for (int r = r0; r < r1; r++) { mn[(size_t)r * ng + g] = a; mx[(size_t)r * ng + g] = b; }
}

/* QS_TENSOR: one block folds the per-row values into entry 0. */
static __global__ void minmax_fold_kernel(float *mn, float *mx, int n) {
    __shared__ float sa[256], sb[256];
    float a = INFINITY, b = -INFINITY;
    for (int i = threadIdx.x; i < n; i += 256) { a = fminf(a, mn[i]); b = fmaxf(b, mx[i]); }
    sa[threadIdx.x] = a; sb[threadIdx.x] = b;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            sa[threadIdx.x] = fminf(sa[threadIdx.x], sa[threadIdx.x + s]);
            sb[threadIdx.x] = fmaxf(sb[threadIdx.x], sb[threadIdx.x + s]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) { mn[0] = sa[0]; mx[0] = sb[0]; }
}

/* calculate_qparams (qs_qparams, shared with src/quant.c). Entry i reads
 * mn/mx[src_all ? 0 : i] (QS_TENSOR broadcasts entry 0). */
static __global__ void qparams_kernel(const float *mn, const float *mx, size_t n, int src_all, int sym,
                                      int qmin, int qmax, int dt, float *scale, int32_t *zp) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= n) return;
    size_t k = src_all ? 0 : i;
    float s;
    int z;
    qs_qparams(sym, fminf(mn[k], 0.0f), fmaxf(mx[k], 0.0f), dt, qmin, qmax, &s, &z);
    scale[i] = s;
    zp[i] = z;
}

/* ---- preparation ---- */
/* Wp[r][i] = W[r][perm[i]] (perm NULL: identity). */
static __global__ void permute_cols_kernel(float *Wp, const float *W, const int *perm, int out, int in) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= (size_t)out * in) return;
    size_t r = i / in;
    int c = (int)(i % in);
    Wp[i] = W[r * in + (perm ? perm[c] : c)];
}

/* Zero the dead columns (flags in permuted order). */
static __global__ void zero_dead_kernel(float *Wp, const uint8_t *deadp, int out, int in) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= (size_t)out * in) return;
    if (deadp[i % in]) Wp[i] = 0.0f;
}

/* H_ii == 0 -> 1, then + damp, on the original (unpermuted) H. */
static __global__ void fix_diag_kernel(float *H, int n, float damp) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float d = H[(size_t)i * n + i];
    H[(size_t)i * n + i] = __fadd_rn(d == 0.0f ? 1.0f : d, damp);
}

/* Hp[i][j] = H[perm[i]][perm[j]]. */
static __global__ void permute_sym_kernel(float *Hp, const float *H, const int *perm, int n) {
    int j = blockIdx.x * blockDim.x + threadIdx.x, i = blockIdx.y;
    if (j < n) Hp[(size_t)i * n + j] = H[(size_t)perm[i] * n + perm[j]];
}

/* a[k] <-> a[n2 - 1 - k]: J H J for a row-major [n, n] H (n2 = n^2). */
static __global__ void reverse_kernel(float *a, size_t n2) {
    const size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (k < n2 / 2) {
        const float t = a[k];
        a[k] = a[n2 - 1 - k];
        a[n2 - 1 - k] = t;
    }
}

/* Row-major upper triangle: (i, j) <-> (n-1-j, n-1-i) for i + j < n - 1
 * (the anti-transpose; grid y = rows i, x = columns j). */
static __global__ void antitranspose_upper_kernel(float *a, int n) {
    const int i = blockIdx.y, j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= i && i + j < n - 1) {
        float *p = a + (size_t)i * n + j, *q = a + (size_t)(n - 1 - j) * n + (n - 1 - i);
        const float t = *p;
        *p = *q;
        *q = t;
    }
}

/* d[i] = A[i][i] (row-major [n, n]): one contiguous copy instead of a 2-D
 * memcpy of n 4-byte rows. */
static __global__ void diag_kernel(float *d, const float *A, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) d[i] = A[(size_t)i * n + i];
}

static __global__ void identity_kernel(float *U, int n) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < (size_t)n * n) U[i] = (i / n == i % n) ? 1.0f : 0.0f;
}

/* ---- the column sweep of one block [i1, i1+nb) ---- */
struct sweep_args {
    float *Wp;            /* [out, in] working weight, permuted order */
    const float *U;       /* [in, in] row-major upper factor */
    float *Err;           /* [out, ldE] */
    int ldE;
    const float *scale;   /* [out, ng] */
    const int32_t *zp;    /* [out, ng] */
    const int *gcol;      /* [in] group of each permuted column */
    const int *perm;      /* [in] original column of each permuted column, NULL = identity */
    float *wq;            /* [out, in] original order */
    int8_t *q;            /* [out, in] original order */
    double *rowloss;      /* [out] */
    int out, in, ng, qmin, qmax, dt, i1, nb;
    int kind;             /* QS_KIND_INT / QS_KIND_FP8 (qscalar.h) */
};

/* One lane per row: each lane walks the block's nb columns of its own row
 * in order (column c: fake-quantize, err = (w - deq) / U[c][c], then
 * w_j -= err * U[c][j] for the later columns j, product rounded then the
 * subtraction, no FMA: the CPU loop's arithmetic, element by element in the
 * same order). The rows of a warp sit in shared memory (Ws, row stride
 * nb + 1: lane l's column j is bank (l + j) % 32, conflict-free), the block
 * of U is shared by the thread block and read as a broadcast. The
 * quantization of a column is each lane's own (one warp instruction for 32
 * rows), so the sweep costs about one row's dependent chain, not the
 * rows' instructions. */
static __global__ void __launch_bounds__(GPTQ_WARPS * 32)
gptq_block_kernel(sweep_args a) {
    DS_EXTERN_SHARED(float, smem);
    const int nb = a.nb, ldw = nb + 1, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float *Us = smem;                                            /* [nb][nb] */
    float *Ws = smem + (size_t)nb * nb + (size_t)warp * 32 * ldw; /* this warp's [32][nb + 1] */
    for (int idx = threadIdx.x; idx < nb * nb; idx += blockDim.x) {
        int c = idx / nb, j = idx % nb;
        Us[idx] = a.U[(size_t)(a.i1 + c) * a.in + a.i1 + j];
    }
    const int rw0 = blockIdx.x * blockDim.x + warp * 32; /* the warp's first row; a lane per row */
    for (int rr = 0; rr < 32 && rw0 + rr < a.out; rr++) /* coalesced: lanes along the row */
        for (int j = lane; j < nb; j += 32) Ws[rr * ldw + j] = a.Wp[(size_t)(rw0 + rr) * a.in + a.i1 + j];
    __syncthreads();
    const int r = rw0 + lane;
    if (r >= a.out) return; /* no collective below */
    float *w = Ws + lane * ldw;
    double loss = 0.0;
    for (int c = 0; c < nb; c++) {
        const int col = a.i1 + c, g = a.gcol[col];
        const float sc = a.scale[(size_t)r * a.ng + g];
        const int z = a.zp[(size_t)r * a.ng + g];
        const float wc = w[c];
        float deq;
        /* as gptq.c: quant_fake_k decides; the stored code is the one the compressor
         * recomputes from the saved weight (quant_code_from_deq_k), for every kind: with
         * int8 and a bf16 model, deq/scale rounded to bf16 (0.5 apart above 64) can land
         * on a tie k +- 0.5 and round (half to even) to a neighbour of the decision code k
         * (about 4 % of int8 codes) */
        (void)qs_fake_k(a.kind, wc, sc, z, a.qmin, a.qmax, a.dt, &deq);
        const int code = qs_code_from_deq_k(a.kind, deq, sc, z, a.qmin, a.qmax, a.dt);
        const float d = Us[c * nb + c];
        const float err = __fdiv_rn(__fsub_rn(wc, deq), d);
        loss += (double)err * err;
        const float *u = Us + c * nb;
        for (int j = c + 1; j < nb; j++) w[j] = __fsub_rn(w[j], __fmul_rn(err, u[j]));
        const size_t o = (size_t)r * a.in + (a.perm ? a.perm[col] : col);
        a.q[o] = (int8_t)code;
        a.wq[o] = deq;
        a.Err[(size_t)r * a.ldE + c] = err;
    }
    a.rowloss[r] += loss;
}

/* ---- DONESHOT_GPTQ_PROFILE=1: where a call's time goes ----
 * The call synchronises after each phase and each launch of the block loop
 * and prints one line to stderr: host wall time of preparation (tables,
 * copies, qparams, permutation), factorisation (with its checks and the
 * cache copy; and each cuSOLVER call of it up to its info check, so the
 * slow one shows), sweep kernels, lazy-update GEMMs and the finish. A device-run
 * diagnostic (the syncs add a launch latency per kernel); the results are
 * the same. */
enum { PROF_PREP, PROF_FACTOR, PROF_SWEEP, PROF_UPDATE, PROF_FINISH, PROF_N };
typedef struct gptq_prof {
    int on;
    double t, ms[PROF_N];
    double step_ms[3]; /* the factorisation's cuSOLVER calls, each up to its info check */
} gptq_prof;

static void prof_mark(gptq_prof *p, int phase, cudaStream_t st) {
    if (!p->on) return;
    CUDA_CHECK(cudaStreamSynchronize(st));
    const double now = ds_now();
    p->ms[phase] += (now - p->t) * 1e3;
    p->t = now;
}

/* ---- host side ---- */
extern "C" ds_status gptq_quantize_cuda(const quant_args *qa, const float *W, int out, int in,
                                        float *H, int block_size, double dampening_frac,
                                        ds_dtype model_dtype, gptq_cuda_out *o, void *stream) {
    const int kind = (int)quant_kind(qa);
    if (kind == QS_KIND_FP4 && (qa->strategy != QS_TENSOR_GROUP || qa->group_size != QS_NVFP4_GROUP ||
                                in % QS_NVFP4_GROUP != 0 || qa->actorder == QA_GROUP))
        return ds_error(DS_ERR_USAGE, "gptq (cuda): fp4 weights need NVFP4's tensor_group strategy with groups "
                        "of %d dividing in_features %d (got strategy %d, group_size %d)", QS_NVFP4_GROUP, in,
                        (int)qa->strategy, qa->group_size);
    if (qa->num_bits < 2 || qa->num_bits > 8)
        return ds_error(DS_ERR_USAGE, "gptq (cuda): num_bits %d, expected 2..8", qa->num_bits);
    if (qa->strategy != QS_TENSOR && qa->strategy != QS_CHANNEL && qa->strategy != QS_GROUP &&
        (qa->strategy != QS_BLOCK || kind != QS_KIND_FP8) && (qa->strategy != QS_TENSOR_GROUP || kind != QS_KIND_FP4))
        return ds_error(DS_ERR_USAGE, "gptq (cuda): weight strategy %d unsupported (int: tensor, channel, group; "
                        "fp8: also block)", (int)qa->strategy);
    if (qa->strategy == QS_BLOCK && (qa->block[0] <= 0 || qa->block[1] <= 0))
        return ds_error(DS_ERR_USAGE, "gptq (cuda): strategy block needs a positive block_structure, got [%d, %d]",
                        qa->block[0], qa->block[1]);
    if (qa->strategy == QS_GROUP && (qa->group_size <= 0 || in % qa->group_size != 0))
        return ds_error(DS_ERR_USAGE, "gptq (cuda): group_size %d does not divide in_features %d",
                        qa->group_size, in);
    if (block_size <= 0)
        return ds_error(DS_ERR_USAGE, "gptq (cuda): block_size %d, expected >= 1", block_size);
    if (model_dtype != DS_DTYPE_BF16 && model_dtype != DS_DTYPE_F16 && model_dtype != DS_DTYPE_F32)
        return ds_error(DS_ERR_USAGE, "gptq (cuda): model dtype %s unsupported",
                        ds_dtype_name(model_dtype));
    DS_ASSERT(out > 0 && in > 0);
    cudaStream_t st = DS_STREAM(stream);
    const char *pe = getenv("DONESHOT_GPTQ_PROFILE");
    gptq_prof prof = {.on = pe && strcmp(pe, "1") == 0, .t = ds_now(), .ms = {0}, .step_ms = {0}};
    const uint64_t key = g_next_key;
    g_next_key = 0; /* one call only */
    int qmin, qmax;
    quant_range(qa, &qmin, &qmax); /* int: qs_range; fp8: [-448, 448] */
    const int gs = qa->strategy == QS_GROUP ? qa->group_size : in;
    const int ng = quant_num_groups(qa, in); /* group: in / gs; block: ceil(in / block[1]) */
    /* as gptq.c: any actorder permutes; "group" re-observes only for QS_GROUP */
    const int use_perm = qa->actorder != QA_NONE;
    const int group_act = qa->actorder == QA_GROUP && qa->strategy == QS_GROUP;
    const size_t n2 = (size_t)in * in, ow = (size_t)out * in;
    /* scratch (Err [out, BS], U block in shared memory [BS, BS]) follows the
     * block actually run, not the recipe's block_size */
    int BS = block_size;
    if (BS > in) BS = in;
    if (BS > GPTQ_MAX_BLOCK) BS = GPTQ_MAX_BLOCK;

    /* workspace layout */
    /* DONESHOT_GPTQ_FACTOR (src/gptq.h): torch's CUDA calls (potrs against
     * the identity; the default here), the flip (potrf + trtri) or potri */
    const gptq_factor_method method = gptq_factor_method_env(GPTQ_FACTOR_CUDA_DEFAULT);
    const int flip = method == GPTQ_FACTOR_FLIP, potrs = method == GPTQ_FACTOR_TORCH;
    /* potrs' right-hand side: H's buffer once permuted into Hp, else its own */
    const int own_rhs = potrs && !use_perm;
    size_t off_Wp = 0, off_Err = off_Wp + al(ow * 4), off_Hp = off_Err + al((size_t)out * BS * 4);
    size_t off_rhs = off_Hp + (use_perm ? al(n2 * 4) : 0), off_loss = off_rhs + (own_rhs ? al(n2 * 4) : 0);
    size_t off_mn = off_loss + al((size_t)out * 8), off_mx = off_mn + al((size_t)out * ng * 4);
    size_t off_perm = off_mx + al((size_t)out * ng * 4), off_gcol = off_perm + al((size_t)in * 4);
    size_t off_dead = off_gcol + al((size_t)in * 4), off_diag = off_dead + al((size_t)in);
    size_t off_info = off_diag + al((size_t)in * 4), off_work = off_info + 256;
    cusolverDnHandle_t sh = ds_cusolver_get(stream);
    int lw1 = 0, lw2 = 0;
    CUSOLVER_CHECK(cusolverDnSpotrf_bufferSize(sh, CUBLAS_FILL_MODE_LOWER, in, H, in, &lw1));
    CUSOLVER_CHECK(cusolverDnSpotri_bufferSize(sh, CUBLAS_FILL_MODE_LOWER, in, H, in, &lw2));
    int lwork = lw1 > lw2 ? lw1 : lw2;
    size_t tri_dev = 0, tri_host = 0;
    if (flip)
        CUSOLVER_CHECK(cusolverDnXtrtri_bufferSize(sh, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, in, CUDA_R_32F, H,
                                                   in, &tri_dev, &tri_host));
    if (tri_dev > (size_t)lwork * 4) lwork = (int)CEIL_DIV(tri_dev, (size_t)4);
    char *ws = (char *)ws_get(off_work + al((size_t)lwork * 4));
    float *Wp = (float *)(ws + off_Wp), *Err = (float *)(ws + off_Err);
    float *Hp = use_perm ? (float *)(ws + off_Hp) : H;
    float *rhs = own_rhs ? (float *)(ws + off_rhs) : H; /* potrs: B = I, then H^-1, then U */
    double *rowloss = (double *)(ws + off_loss);
    float *mn = (float *)(ws + off_mn), *mx = (float *)(ws + off_mx);
    int *d_perm = (int *)(ws + off_perm), *d_gcol = (int *)(ws + off_gcol);
    uint8_t *d_dead = (uint8_t *)(ws + off_dead);
    float *d_diag = (float *)(ws + off_diag);
    int *d_info = (int *)(ws + off_info);
    float *work = (float *)(ws + off_work);

    /* the cached factor of this H (same key, width, permutation, damping) */
    const int reuse = key != 0 && g_fac && g_fac_key == key && g_fac_n == in && g_fac_perm == use_perm &&
                      g_fac_damp == dampening_frac;
    /* host tables from the original diagonal */
    float *diag = (float *)xmalloc(sizeof(float) * in);
    if (!reuse) {
        DS_LAUNCH(diag_kernel, CEIL_DIV(in, 256), 256, 0, st, d_diag, H, in);
        CUDA_LAUNCH_CHECK();
        CUDA_CHECK(cudaMemcpyAsync(diag, d_diag, sizeof(float) * in, cudaMemcpyDeviceToHost, st));
        CUDA_CHECK(cudaStreamSynchronize(st));
    }
    int *perm = (int *)xmalloc(sizeof(int) * in), *gcol = (int *)xmalloc(sizeof(int) * in);
    uint8_t *deadp = (uint8_t *)xmalloc((size_t)in);
    if (reuse) {
        memcpy(perm, g_fac_permv, sizeof(int) * in);
    } else if (use_perm) { /* torch.argsort(descending=True) tie order, shared with the CPU twin */
        int64_t *p64 = (int64_t *)xmalloc(sizeof(int64_t) * in);
        gptq_argsort_desc(diag, in, p64);
        for (int i = 0; i < in; i++) perm[i] = (int)p64[i];
        free(p64);
    } else {
        for (int i = 0; i < in; i++) perm[i] = i;
    }
    double dsum = 0;
    if (reuse) memcpy(deadp, g_fac_dead, (size_t)in);
    for (int i = 0; i < in; i++) {
        if (!reuse) {
            deadp[i] = diag[perm[i]] == 0.0f;
            dsum += diag[perm[i]] == 0.0f ? 1.0 : (double)diag[perm[i]]; /* CPU order */
        }
        if (qa->strategy == QS_BLOCK) gcol[i] = perm[i] / qa->block[1]; /* gptq.c col_group */
        else if (qa->strategy == QS_TENSOR_GROUP) gcol[i] = perm[i] / qa->group_size;
        else if (qa->strategy != QS_GROUP) gcol[i] = 0;
        else gcol[i] = (group_act ? i : perm[i]) / gs;
    }
    const float mean = (float)(dsum / in);
    const float damp = (float)dampening_frac * mean; /* as gptq.c */
    if (group_act && o->g_idx) {
        int *gi = (int *)xmalloc(sizeof(int) * in);
        for (int i = 0; i < in; i++) gi[perm[i]] = i / gs;
        CUDA_CHECK(cudaMemcpyAsync(o->g_idx, gi, sizeof(int) * in, cudaMemcpyHostToDevice, st));
        CUDA_CHECK(cudaStreamSynchronize(st));
        free(gi);
    }
    CUDA_CHECK(cudaMemcpyAsync(d_perm, perm, sizeof(int) * in, cudaMemcpyHostToDevice, st));
    CUDA_CHECK(cudaMemcpyAsync(d_gcol, gcol, sizeof(int) * in, cudaMemcpyHostToDevice, st));
    CUDA_CHECK(cudaMemcpyAsync(d_dead, deadp, (size_t)in, cudaMemcpyHostToDevice, st));

    /* 1. working copy (permuted) and qparams */
    const unsigned eb = (unsigned)CEIL_DIV(ow, (size_t)256);
    DS_LAUNCH(permute_cols_kernel, eb, 256, 0, st, Wp, W, use_perm ? d_perm : NULL, out, in);
    CUDA_LAUNCH_CHECK();
    if (qa->strategy == QS_TENSOR_GROUP) {
        /* NVFP4: the effective scales weight_scale / global_scale (the fused
         * global scale qa->global_scale, or this weight's own) on the host,
         * by the CPU twin's own function (quant_minmax_qparams, qfp4.h) */
        float *Wh = (float *)xmalloc(sizeof(float) * ow), *sh_ = (float *)xmalloc(sizeof(float) * (size_t)out * ng);
        CUDA_CHECK(cudaMemcpyAsync(Wh, W, sizeof(float) * ow, cudaMemcpyDeviceToHost, st));
        CUDA_CHECK(cudaStreamSynchronize(st));
        quant_minmax_qparams(qa, Wh, out, in, model_dtype, sh_, NULL);
        CUDA_CHECK(cudaMemcpyAsync(o->scale, sh_, sizeof(float) * (size_t)out * ng, cudaMemcpyHostToDevice, st));
        CUDA_CHECK(cudaMemsetAsync(o->zp, 0, sizeof(int32_t) * (size_t)out * ng, st));
        CUDA_CHECK(cudaStreamSynchronize(st));
        free(Wh);
        free(sh_);
    } else {
        const float *src = group_act ? Wp : W;
        size_t nw = (size_t)out * ng;
        if (qa->strategy == QS_BLOCK) {
            const size_t nt = (size_t)CEIL_DIV(out, qa->block[0]) * ng;
            DS_LAUNCH(block_minmax_kernel, (unsigned)CEIL_DIV(nt * 32, (size_t)256), 256, 0, st,
                      src, out, in, qa->block[0], qa->block[1], ng, mn, mx);
        } else {
            DS_LAUNCH(minmax_kernel, (unsigned)CEIL_DIV(nw * 32, (size_t)256), 256, 0, st,
                      src, out, in, gs, ng, mn, mx);
        }
        CUDA_LAUNCH_CHECK();
        int tensor = qa->strategy == QS_TENSOR;
        if (tensor) {
            DS_LAUNCH(minmax_fold_kernel, 1, 256, 0, st, mn, mx, out);
            CUDA_LAUNCH_CHECK();
        }
        DS_LAUNCH(qparams_kernel, (unsigned)CEIL_DIV(nw, (size_t)256), 256, 0, st,
                  mn, mx, nw, tensor, qa->symmetric, qmin, qmax, (int)model_dtype, o->scale, o->zp);
        CUDA_LAUNCH_CHECK();
    }
    /* 2. dead columns, damp, permuted Hessian */
    DS_LAUNCH(zero_dead_kernel, eb, 256, 0, st, Wp, d_dead, out, in);
    CUDA_LAUNCH_CHECK();
    int info = 0, step = 0;
    const char *what[3] = {"Cholesky of H", potrs ? "solve against the identity" : "inverse of H",
                           "Cholesky of H^-1"};
    const char *what_flip[3] = {"Cholesky of the reversed H", "triangular inverse", "U = J L^-1 J (not finite)"};
    if (reuse) {
        Hp = g_fac;
        info = g_fac_info;
        step = g_fac_step;
    } else {
        DS_LAUNCH(fix_diag_kernel, CEIL_DIV(in, 256), 256, 0, st, H, in, damp);
        CUDA_LAUNCH_CHECK();
        if (use_perm) {
            DS_LAUNCH(permute_sym_kernel, dim3(CEIL_DIV(in, 256), in), 256, 0, st, Hp, H, d_perm, in);
            CUDA_LAUNCH_CHECK();
        }
    }
    prof_mark(&prof, PROF_PREP, st);
    /* 3. U = chol(chol_inverse(chol(H)))^T (flip: J L^-1 J with J H J = L L^T),
     * fallback U = I */
    if (flip && !reuse) {
        void *host_ws = tri_host ? xmalloc(tri_host) : NULL;
        DS_LAUNCH(reverse_kernel, (unsigned)CEIL_DIV(n2 / 2 + 1, (size_t)256), 256, 0, st, Hp, n2);
        CUDA_LAUNCH_CHECK();
        for (step = 0; step < 2 && info == 0; step++) {
            const double t0 = ds_now();
            if (step == 0)
                CUSOLVER_CHECK(cusolverDnSpotrf(sh, CUBLAS_FILL_MODE_LOWER, in, Hp, in, work, lwork, d_info));
            else
                CUSOLVER_CHECK(cusolverDnXtrtri(sh, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, in, CUDA_R_32F, Hp,
                                                in, work, (size_t)lwork * 4, host_ws, tri_host, d_info));
            CUDA_CHECK(cudaMemcpyAsync(&info, d_info, sizeof(int), cudaMemcpyDeviceToHost, st));
            CUDA_CHECK(cudaStreamSynchronize(st));
            prof.step_ms[step] = (ds_now() - t0) * 1e3;
        }
        free(host_ws);
        if (info == 0) {
            DS_LAUNCH(antitranspose_upper_kernel, dim3(CEIL_DIV(in, 256), in), 256, 0, st, Hp, in);
            CUDA_LAUNCH_CHECK();
        }
    }
    for (step = 0; !flip && !reuse && step < 3 && info == 0; step++) {
        const double t0 = ds_now();
        if (step == 1 && potrs) { /* rhs := L^-T L^-1 I; potrs' info flags only bad arguments */
            DS_LAUNCH(identity_kernel, (unsigned)CEIL_DIV(n2, (size_t)256), 256, 0, st, rhs, in);
            CUDA_LAUNCH_CHECK();
            CUSOLVER_CHECK(cusolverDnSpotrs(sh, CUBLAS_FILL_MODE_LOWER, in, in, Hp, in, rhs, in, d_info));
        } else if (step == 1) {
            CUSOLVER_CHECK(cusolverDnSpotri(sh, CUBLAS_FILL_MODE_LOWER, in, Hp, in, work, lwork, d_info));
        } else {
            CUSOLVER_CHECK(cusolverDnSpotrf(sh, CUBLAS_FILL_MODE_LOWER, in, step == 2 && potrs ? rhs : Hp, in, work,
                                            lwork, d_info));
        }
        CUDA_CHECK(cudaMemcpyAsync(&info, d_info, sizeof(int), cudaMemcpyDeviceToHost, st));
        CUDA_CHECK(cudaStreamSynchronize(st));
        prof.step_ms[step] = (ds_now() - t0) * 1e3;
    }
    if (potrs && !reuse) Hp = rhs; /* U lives there (or, after a failure, the fallback's identity) */
    if (info == 0 && !reuse) { /* U must be finite (a NaN/inf Hessian can factor "successfully") */
        DS_LAUNCH(diag_kernel, CEIL_DIV(in, 256), 256, 0, st, d_diag, Hp, in);
        CUDA_LAUNCH_CHECK();
        CUDA_CHECK(cudaMemcpyAsync(diag, d_diag, sizeof(float) * in, cudaMemcpyDeviceToHost, st));
        CUDA_CHECK(cudaStreamSynchronize(st));
        for (int i = 0; i < in && info == 0; i++)
            if (!isfinite(diag[i])) info = -1, step = 3;
    }
    o->rtn_fallback = info != 0;
    if (info != 0) {
        ds_warn("gptq (cuda): %s failed (info %d) for a [%d, %d] weight; using round-to-nearest",
                (flip ? what_flip : what)[step - 1], info, out, in);
        if (!reuse) {
            DS_LAUNCH(identity_kernel, (unsigned)CEIL_DIV(n2, (size_t)256), 256, 0, st, Hp, in);
            CUDA_LAUNCH_CHECK();
        }
    }
    if (key != 0 && !reuse) { /* keep this factor for the next module with the same Hessian */
        if (g_fac_cap < n2) {
            if (g_fac) cudaFree(g_fac);
            g_fac = (float *)ds_cuda_malloc(n2 * sizeof(float));
            g_fac_cap = n2;
        }
        CUDA_CHECK(cudaMemcpyAsync(g_fac, Hp, n2 * sizeof(float), cudaMemcpyDeviceToDevice, st));
        g_fac_permv = (int *)xrealloc(g_fac_permv, sizeof(int) * in);
        g_fac_dead = (uint8_t *)xrealloc(g_fac_dead, (size_t)in);
        memcpy(g_fac_permv, perm, sizeof(int) * in);
        memcpy(g_fac_dead, deadp, (size_t)in);
        g_fac_key = key;
        g_fac_n = in;
        g_fac_perm = use_perm;
        g_fac_damp = dampening_frac;
        g_fac_info = info;
        g_fac_step = step;
    }
    /* 4. column sweep, block by block */
    CUDA_CHECK(cudaMemsetAsync(rowloss, 0, sizeof(double) * out, st));
    prof_mark(&prof, PROF_FACTOR, st);
    /* shared memory: the block of U and each warp's 32 rows (stride BS + 1),
     * 130 KiB for 4 warps at BS = 128; fewer warps (rows) per thread block
     * where the device allows less (sm_86 / sm_89: 99 KiB, 2 warps) */
    int dev = 0, optin = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    int nwarps = GPTQ_WARPS;
    const auto smem_of = [BS](int w) { return (BS * BS + w * 32 * (BS + 1)) * (int)sizeof(float); };
    while (nwarps > 1 && smem_of(nwarps) > optin) nwarps--;
    const int smem = smem_of(nwarps), rows_cta = 32 * nwarps;
    CUDA_CHECK(cudaFuncSetAttribute(gptq_block_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    cublasHandle_t bh = ds_cublas_get(stream);
    const float m1 = -1.0f, p1 = 1.0f;
    for (int i1 = 0; i1 < in; i1 += BS) {
        const int nb = in - i1 < BS ? in - i1 : BS, i2 = i1 + nb;
        sweep_args sa = {Wp, Hp, Err, BS, o->scale, o->zp, d_gcol, use_perm ? d_perm : NULL,
                         o->wq, o->q, rowloss, out, in, ng, qmin, qmax, (int)model_dtype, i1, nb, kind};
        DS_LAUNCH(gptq_block_kernel, CEIL_DIV(out, rows_cta), rows_cta, smem, st, sa);
        CUDA_LAUNCH_CHECK();
        prof_mark(&prof, PROF_SWEEP, st);
        if (i2 < in && !o->rtn_fallback) /* Wp[:, i2:] -= Err[:, :nb] @ U[i1:i2, i2:]  (column-major view, see matmul.cu) */
            CUBLAS_CHECK(cublasSgemm(bh, CUBLAS_OP_N, CUBLAS_OP_N, in - i2, out, nb, &m1,
                                     Hp + (size_t)i1 * in + i2, in, Err, BS, &p1, Wp + i2, in));
        prof_mark(&prof, PROF_UPDATE, st);
    }
    double *hl = (double *)xmalloc(sizeof(double) * out);
    CUDA_CHECK(cudaMemcpyAsync(hl, rowloss, sizeof(double) * out, cudaMemcpyDeviceToHost, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
    o->loss = gptq_halve_row_losses(hl, out);
    if (o->row_loss) memcpy(o->row_loss, hl, sizeof(double) * out);
    prof_mark(&prof, PROF_FINISH, st);
    if (prof.on) {
        char steps[96] = "";
        if (!reuse && flip)
            snprintf(steps, sizeof steps, " (reverse+potrf %.2f, trtri %.2f)", prof.step_ms[0], prof.step_ms[1]);
        else if (!reuse)
            snprintf(steps, sizeof steps, " (potrf %.2f, %s %.2f, potrf %.2f)", prof.step_ms[0],
                     potrs ? "identity+potrs" : "potri", prof.step_ms[1], prof.step_ms[2]);
        fprintf(stderr, "gptq profile %dx%d%s: prep %.2f ms, factor %.2f ms%s, sweep %.2f ms (%d launches of %d "
                "thread blocks), lazy update %.2f ms, finish %.2f ms\n", out, in, reuse ? " (cached factor)" : "",
                prof.ms[PROF_PREP], prof.ms[PROF_FACTOR], steps, prof.ms[PROF_SWEEP], (int)CEIL_DIV(in, BS),
                (int)CEIL_DIV(out, rows_cta), prof.ms[PROF_UPDATE], prof.ms[PROF_FINISH]);
    }
    free(hl); free(diag); free(perm); free(gcol); free(deadp);
    return DS_OK;
}
