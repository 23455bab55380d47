/*
 * gptq.c - GPTQ as llm-compressor's quantize_weight does it, on the CPU.
 *
 * Followed from the installed reference stack (the goldens in
 * tests/golden/gptq/ were made with it): llmcompressor 0.14.0.1
 * (modifiers/gptq/gptq_quantize.py quantize_weight + gptq_block_update,
 * modifiers/gptq/helpers.py apply_activation_ordering, factorize_hessian,
 * column_scale_window), compressed-tensors 0.19.0, torch 2.14.0.
 *
 * Order of operations (all f32, like GPTQ_PRECISION):
 *  1. qparams: min-max of the ORIGINAL weight per (row, group), computed in the
 *     model dtype (quant_minmax_qparams).
 *  2. actorder static/weight: perm = torch.argsort(diag(H), descending=True).
 *     That call is NOT stable on CPU: torch sorts (value, index) pairs with
 *     libstdc++ std::sort (introsort, median-of-3, insertion sort below 16,
 *     heapsort past depth 2*lg n) and the comparator
 *     (isnan(a) && !isnan(b)) || a > b. torch_argsort_desc below replays that
 *     algorithm step by step, so ties come out in torch's order.
 *     g_idx = (arange(in) // gs)[perm]: each column keeps its original group.
 *  3. dead columns: diag(H) == 0 -> H_ii = 1, W[:, i] = 0 (after the perm).
 *  4. damp = f32(percdamp) * mean(diag H) added to the diagonal.
 *  5. L = chol(H); Hinv = cholesky_inverse(L); U = chol(Hinv, upper). On a
 *     failed Cholesky (or a non-finite H) U = I: round-to-nearest, flagged.
 *  6. per block [i1,i2): per column i: q = fake_quant(w) with the column's
 *     group scale; the dequantized value is rounded to the SCALE dtype (bf16
 *     for a bf16 model: _quantize_dequantize does x_q.to(scale.dtype) * scale);
 *     err = (w - q) / U_ii; loss += err^2; W1[:, i:] -= err * U[i, i:]
 *     (product rounded, then the subtraction: no FMA). After the block
 *     W[:, i2:] -= Err1 @ U[i1:i2, i2:] (sgemm).
 *  7. undo the permutation.
 * actorder=group ("dynamic") was removed from compressed-tensors (0.19 rejects
 * it); QA_GROUP here keeps the llm-compressor 0.13 semantics (re-observe the
 * permuted weight, contiguous groups in permuted order, g_idx = (arange //
 * gs)[invperm]) for old recipes, without a golden.
 *
 * Layout: the working weight is kept transposed, Wt [in, out], so column i of
 * W is the contiguous row i of Wt; the rank-1 intra-block updates then stream
 * through memory and the lazy update is a single sgemm.
 *
 * NB: the bitwise match of the per-element updates relies on no FP
 * contraction (-std=c11 implies -ffp-contract=off in GCC).
 */
#include "gptq.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <string.h>

/* ---- torch.argsort(x, descending=True) on CPU (libstdc++ std::sort) ---- */

typedef struct { float key; int64_t idx; } kv;

static int desc_less(const kv *a, const kv *b) {
    return (isnan(a->key) && !isnan(b->key)) || a->key > b->key;
}
static void kv_swap(kv *a, kv *b) { kv t = *a; *a = *b; *b = t; }

static void move_median_to_first(kv *result, kv *a, kv *b, kv *c) {
    if (desc_less(a, b)) {
        if (desc_less(b, c)) kv_swap(result, b);
        else if (desc_less(a, c)) kv_swap(result, c);
        else kv_swap(result, a);
    } else if (desc_less(a, c)) kv_swap(result, a);
    else if (desc_less(b, c)) kv_swap(result, c);
    else kv_swap(result, b);
}

static kv *unguarded_partition(kv *first, kv *last, kv *pivot) {
    for (;;) {
        while (desc_less(first, pivot)) ++first;
        --last;
        while (desc_less(pivot, last)) --last;
        if (!(first < last)) return first;
        kv_swap(first, last);
        ++first;
    }
}

static void push_heap_kv(kv *first, ptrdiff_t hole, ptrdiff_t top, kv value) {
    ptrdiff_t parent = (hole - 1) / 2;
    while (hole > top && desc_less(first + parent, &value)) {
        first[hole] = first[parent];
        hole = parent;
        parent = (hole - 1) / 2;
    }
    first[hole] = value;
}

static void adjust_heap(kv *first, ptrdiff_t hole, ptrdiff_t len, kv value) {
    ptrdiff_t top = hole, child = hole;
    while (child < (len - 1) / 2) {
        child = 2 * (child + 1);
        if (desc_less(first + child, first + (child - 1))) child--;
        first[hole] = first[child];
        hole = child;
    }
    if ((len & 1) == 0 && child == (len - 2) / 2) {
        child = 2 * (child + 1);
        first[hole] = first[child - 1];
        hole = child - 1;
    }
    push_heap_kv(first, hole, top, value);
}

static void heap_sort_kv(kv *first, kv *last) {
    ptrdiff_t len = last - first;
    if (len >= 2) {
        for (ptrdiff_t parent = (len - 2) / 2;; parent--) {
            adjust_heap(first, parent, len, first[parent]);
            if (parent == 0) break;
        }
    }
    while (last - first > 1) {
        --last;
        kv value = *last;
        *last = *first;
        adjust_heap(first, 0, last - first, value);
    }
}

static void introsort_loop(kv *first, kv *last, int depth) {
    while (last - first > 16) {
        if (depth == 0) {
            heap_sort_kv(first, last);
            return;
        }
        --depth;
        kv *mid = first + (last - first) / 2;
        move_median_to_first(first, first + 1, mid, last - 1);
        kv *cut = unguarded_partition(first + 1, last, first);
        introsort_loop(cut, last, depth);
        last = cut;
    }
}

static void unguarded_linear_insert(kv *last) {
    kv val = *last;
    kv *next = last - 1;
    while (desc_less(&val, next)) {
        *last = *next;
        last = next;
        --next;
    }
    *last = val;
}

static void insertion_sort(kv *first, kv *last) {
    if (first == last) return;
    for (kv *i = first + 1; i != last; ++i) {
        if (desc_less(i, first)) {
            kv val = *i;
            memmove(first + 1, first, (size_t)(i - first) * sizeof(kv));
            *first = val;
        } else {
            unguarded_linear_insert(i);
        }
    }
}

void gptq_argsort_desc(const float *x, int64_t n, int64_t *perm) {
    kv *a = xmalloc((size_t)DS_MAX(n, 1) * sizeof(kv));
    for (int64_t i = 0; i < n; i++) { a[i].key = x[i]; a[i].idx = i; }
    if (n > 1) {
        int lg = 0;
        for (int64_t t = n; t > 1; t >>= 1) lg++;
        introsort_loop(a, a + n, 2 * lg);
        if (n > 16) {
            insertion_sort(a, a + 16);
            for (kv *i = a + 16; i != a + n; ++i) unguarded_linear_insert(i);
        } else {
            insertion_sort(a, a + n);
        }
    }
    for (int64_t i = 0; i < n; i++) perm[i] = a[i].idx;
    free(a);
}

/* ---- helpers ---- */

/* Scale column of weight column c (original order): c / group_size for group
 * and tensor_group, c / block[1] for block, else 0 (llm-compressor's g_idx). */
static int col_group(const quant_args *a, int64_t c) {
    if (a->strategy == QS_GROUP || a->strategy == QS_TENSOR_GROUP) return (int)(c / a->group_size);
    if (a->strategy == QS_BLOCK) return (int)(c / a->block[1]);
    return 0;
}

static ds_status check_args(const quant_args *a, int out, int in, int block_size) {
    if (out <= 0 || in <= 0) return ds_error(DS_ERR_USAGE, "gptq: bad weight shape [%d, %d]", out, in);
    if (a->num_bits < 1 || a->num_bits > 8)
        return ds_error(DS_ERR_USAGE, "gptq: num_bits must be 1..8, got %d", a->num_bits);
    if (block_size <= 0) return ds_error(DS_ERR_USAGE, "gptq: block_size must be > 0, got %d", block_size);
    if (a->strategy == QS_BLOCK && (a->block[0] <= 0 || a->block[1] <= 0))
        return ds_error(DS_ERR_USAGE, "gptq: strategy block needs a positive block_structure, got [%d, %d]",
                        a->block[0], a->block[1]);
    if (a->strategy == QS_TOKEN)
        return ds_error(DS_ERR_USAGE, "gptq: strategy token is for activations, not weights");
    if (a->strategy == QS_GROUP || a->strategy == QS_TENSOR_GROUP) {
        if (a->group_size <= 0)
            return ds_error(DS_ERR_USAGE, "gptq: group strategy needs group_size > 0, got %d",
                            a->group_size);
        if (in % a->group_size != 0)
            return ds_error(DS_ERR_USAGE,
                            "gptq: group_size %d does not divide in_features %d\n"
                            "hint: pick a group size that divides every targeted layer's input width",
                            a->group_size, in);
    }
    return DS_OK;
}

static void result_alloc(gptq_result *res, const quant_args *a, int out, int in) {
    int ng = quant_num_groups(a, in);
    memset(res, 0, sizeof(*res));
    res->wq = xmalloc((size_t)out * in * sizeof(float));
    res->q = xmalloc((size_t)out * in);
    res->scale = xmalloc((size_t)out * ng * sizeof(float));
    res->zp = xcalloc((size_t)out * ng, sizeof(int));
    res->row_loss = xcalloc((size_t)out, sizeof(double));
}

double gptq_halve_row_losses(double *row_loss, int out) {
    double loss = 0;
    for (int r = 0; r < out; r++) {
        row_loss[r] /= 2;
        loss += row_loss[r];
    }
    return loss;
}

void gptq_result_free(gptq_result *res) {
    if (!res) return;
    free(res->wq);
    free(res->q);
    free(res->scale);
    free(res->zp);
    free(res->g_idx);
    free(res->row_loss);
    memset(res, 0, sizeof(*res));
}

/* Transpose src [rows, cols] -> dst [cols, rows], cache-blocked. */
static void transpose(const float *src, int rows, int cols, float *dst) {
    const int B = 64;
    for (int r0 = 0; r0 < rows; r0 += B)
        for (int c0 = 0; c0 < cols; c0 += B) {
            int r1 = DS_MIN(rows, r0 + B), c1 = DS_MIN(cols, c0 + B);
            for (int r = r0; r < r1; r++)
                for (int c = c0; c < c1; c++) dst[(size_t)c * rows + r] = src[(size_t)r * cols + c];
        }
}

/* RTN as compressed-tensors applies it to a model-dtype weight (the
 * QuantizationModifier path and the compressor): code = quantize(W) computed in
 * the model dtype, dequant = (q - zp) * scale in the scale dtype. */
ds_status rtn_quantize(const quant_args *a, const float *W, int out, int in, ds_dtype model_dtype,
                       gptq_result *res) {
    ds_status st = check_args(a, out, in, 1);
    if (st != DS_OK) return st;
    result_alloc(res, a, out, in);
    int ng = quant_num_groups(a, in);
    const quant_kind_t kind = quant_kind(a);
    int qmin, qmax;
    quant_range(a, &qmin, &qmax);
    quant_minmax_qparams(a, W, out, in, model_dtype, res->scale, a->symmetric ? NULL : res->zp);
    for (int r = 0; r < out; r++)
        for (int c = 0; c < in; c++) {
            size_t k = (size_t)r * in + c;
            int g = col_group(a, c);
            float s = res->scale[(size_t)r * ng + g];
            int z = res->zp[(size_t)r * ng + g];
            int q = quant_code_from_deq_k(kind, W[k], s, z, qmin, qmax, model_dtype);
            float dq = quant_dequant_k(kind, q, z, s, model_dtype);
            res->q[k] = (int8_t)q;
            res->wq[k] = dq;
            float e = W[k] - dq;
            res->row_loss[r] += (double)e * e;
        }
    res->loss = gptq_halve_row_losses(res->row_loss, out);
    return DS_OK;
}

/* Factor H (n x n, symmetric, row-major == column-major) in place into the
 * upper factor U of H^-1, stored row-major upper (U[i][j] at i*n+j, j >= i).
 * Column-major 'L' calls: L lower (col-major) -> inverse in lower (col-major)
 * -> lower Cholesky L2 of H^-1 (col-major), whose row-major view is
 * L2^T = U (torch's cholesky(upper=True)). No LAPACKE transposition copies.
 * Returns 0 on success, else the failing LAPACK info. */
static int factor_hinv(float *H, int n) {
    lapack_int info = LAPACKE_spotrf_work(LAPACK_COL_MAJOR, 'L', n, H, n);
    if (info != 0) return (int)info;
    info = LAPACKE_spotri_work(LAPACK_COL_MAJOR, 'L', n, H, n);
    if (info != 0) return (int)info;
    info = LAPACKE_spotrf_work(LAPACK_COL_MAJOR, 'L', n, H, n);
    if (info != 0) return (int)info;
    return 0;
}

/* The same U by the reversal identity: with J the reversal permutation and
 * J H J = L L^T (L lower), H = (J L J)(J L J)^T with J L J upper, so
 * H^-1 = V^T V for the upper V = (J L J)^-1 = J L^-1 J, which is therefore
 * H^-1's upper Cholesky factor (unique with a positive diagonal). In place:
 * reverse the n^2 array (J H J; H symmetric), spotrf 'L', strtri 'L' (L^-1
 * in the col-major lower triangle = the row-major upper one), then the
 * anti-transpose within that triangle (U[i][j] = L^-1[n-1-j][n-1-i]).
 * n^3/3 + n^3/3 flops against n^3/3 + 2n^3/3 + n^3/3. */
static int factor_hinv_flip(float *H, int n) {
    const size_t nn = (size_t)n * n;
    for (size_t k = 0; k < nn / 2; k++) {
        const float t = H[k];
        H[k] = H[nn - 1 - k];
        H[nn - 1 - k] = t;
    }
    lapack_int info = LAPACKE_spotrf_work(LAPACK_COL_MAJOR, 'L', n, H, n);
    if (info != 0) return (int)info;
    info = LAPACKE_strtri_work(LAPACK_COL_MAJOR, 'L', 'N', n, H, n);
    if (info != 0) return (int)info;
    for (int i = 0; i < n; i++) /* swap (i, j) with (n-1-j, n-1-i), each pair once: i + j < n - 1 */
        for (int j = i; j < n - 1 - i; j++) {
            float *a = H + (size_t)i * n + j, *b = H + (size_t)(n - 1 - j) * n + (n - 1 - i);
            const float t = *a;
            *a = *b;
            *b = t;
        }
    return 0;
}

/* DONESHOT_GPTQ_FACTOR: 1 and *m when it names a method, 0 when unset or
 * empty, -1 for any other value. */
static int factor_env(gptq_factor_method *m) {
    const char *e = getenv("DONESHOT_GPTQ_FACTOR");
    if (!e || !*e) return 0;
    if (strcmp(e, "flip") == 0) *m = GPTQ_FACTOR_FLIP;
    else if (strcmp(e, "torch") == 0) *m = GPTQ_FACTOR_TORCH;
    else if (strcmp(e, "potri") == 0) *m = GPTQ_FACTOR_POTRI;
    else return -1;
    return 1;
}

gptq_factor_method gptq_factor_method_env(gptq_factor_method dflt) {
    gptq_factor_method m;
    return factor_env(&m) > 0 ? m : dflt;
}

int gptq_factor_env_valid(void) {
    gptq_factor_method m;
    return factor_env(&m) >= 0;
}

int gptq_hinv_upper(float *H, int n, gptq_factor_method method) {
    const int info = method == GPTQ_FACTOR_FLIP ? factor_hinv_flip(H, n) : factor_hinv(H, n);
    if (info != 0) return info;
    /* U must be finite for the updates to mean anything. */
    for (int i = 0; i < n; i++)
        if (!isfinite(H[(size_t)i * n + i])) return -1;
    return 0;
}

/* ---- the factorisation of H, shared by the modules that use the same H ----
 * Everything up to U depends on H (its f32 bytes), dampening_frac and whether
 * columns are permuted, never on the weight: the permutation, the dead
 * columns, the damped inverse's upper Cholesky factor, the failure. */
typedef struct hfactor {
    int n;
    int64_t *perm;      /* [n] processing order */
    unsigned char *dead;/* [n] permuted column i had H_ii == 0 */
    float *U;           /* [n, n] row-major upper factor (H's buffer, or owned by the cache) */
    int finite, info;   /* H finite; 0 or the failing LAPACK info (-1: non-finite U) */
} hfactor;

static void hfactor_free(hfactor *f) {
    free(f->perm);
    free(f->dead);
    memset(f, 0, sizeof *f);
}

/* Steps 1-5 on H in place (f->U = H; f owns perm and dead). */
static void hfactor_compute(float *H, int n, int use_perm, double dampening_frac, gptq_factor_method method,
                            hfactor *f) {
    memset(f, 0, sizeof *f);
    f->n = n;
    f->perm = xmalloc((size_t)n * sizeof(int64_t));
    f->dead = xcalloc((size_t)n, 1);
    int64_t *perm = f->perm;
    /* 1-2. permutation (descending diag(H), torch's tie order) */
    if (use_perm) {
        float *d = xmalloc((size_t)n * sizeof(float));
        for (int i = 0; i < n; i++) d[i] = H[(size_t)i * n + i];
        gptq_argsort_desc(d, n, perm);
        free(d);
        /* permute H in place of a copy (H[perm][:, perm]) */
        float *Hp = xmalloc((size_t)n * n * sizeof(float));
        for (int i = 0; i < n; i++) {
            const float *src = H + (size_t)perm[i] * n;
            float *dst = Hp + (size_t)i * n;
            for (int j = 0; j < n; j++) dst[j] = src[perm[j]];
        }
        memcpy(H, Hp, (size_t)n * n * sizeof(float));
        free(Hp);
    } else {
        for (int i = 0; i < n; i++) perm[i] = i;
    }
    /* 3. dead columns, 4. dampening */
    int finite = 1;
    for (size_t k = 0; k < (size_t)n * n && finite; k++)
        if (!isfinite(H[k])) finite = 0;
    double dsum = 0;
    for (int i = 0; i < n; i++) {
        float *hii = &H[(size_t)i * n + i];
        if (*hii == 0.0f) {
            *hii = 1.0f;
            f->dead[i] = 1;
        }
        dsum += *hii;
    }
    float mean = (float)(dsum / n);
    float damp = (float)dampening_frac * mean;
    for (int i = 0; i < n; i++) H[(size_t)i * n + i] += damp;
    /* 5. U = chol(chol_inverse(chol(H)), upper) */
    f->finite = finite;
    f->info = finite ? gptq_hinv_upper(H, n, method) : -1;
    f->U = H;
}

/* A per-thread memo of the last factorisations, keyed by a 128-bit hash of
 * H's f32 bytes, n, dampening_frac, whether columns are permuted and the
 * factor method: in all-experts MoE
 * calibration every expert's gate_proj and up_proj (and a dense layer's
 * q/k/v, gate/up) come with the same Hessian, which is then factored once.
 * The hit returns the very factor a fresh computation would give (same
 * inputs, same code), so results are bit-identical. Factors above
 * HF_CACHE_MAX_N columns (> 256 MiB) are not kept. */
#define HF_CACHE_SLOTS 2
#define HF_CACHE_MAX_N 8192
typedef struct hf_slot {
    uint64_t k0, k1;
    int n, use_perm;
    gptq_factor_method method;
    double damp;
    uint64_t last_use;
    hfactor f; /* f.U owned */
} hf_slot;
static _Thread_local hf_slot g_hf[HF_CACHE_SLOTS];
static _Thread_local uint64_t g_hf_clock;
static _Thread_local int64_t g_hf_hits, g_hf_misses;

static void hf_hash(const float *H, size_t nn, uint64_t *k0, uint64_t *k1) {
    /* two independent 64-bit multiply-xorshift streams over the 32-bit words */
    uint64_t a = 0x9e3779b97f4a7c15ull ^ nn, b = 0xc2b2ae3d27d4eb4full + nn;
    const uint32_t *w = (const uint32_t *)(const void *)H;
    for (size_t i = 0; i < nn; i++) {
        a = (a ^ w[i]) * 0x100000001b3ull;
        a ^= a >> 29;
        b = (b + w[i]) * 0xff51afd7ed558ccdull;
        b ^= b >> 32;
    }
    *k0 = a;
    *k1 = b;
}

void gptq_factor_cache_clear(void) {
    for (int i = 0; i < HF_CACHE_SLOTS; i++) {
        free(g_hf[i].f.U);
        hfactor_free(&g_hf[i].f);
        memset(&g_hf[i], 0, sizeof g_hf[i]);
    }
}

void gptq_factor_cache_stats(int64_t *hits, int64_t *misses) {
    if (hits) *hits = g_hf_hits;
    if (misses) *misses = g_hf_misses;
}

/* The factor of H (modified in place as scratch): a memo hit, or computed
 * now (and memoised when small enough). *fc: the factor to use (borrowed). */
static const hfactor *hfactor_get(float *H, int n, int use_perm, double dampening_frac, hfactor *own) {
    const gptq_factor_method method = gptq_factor_method_env(GPTQ_FACTOR_CPU_DEFAULT);
    if (n > HF_CACHE_MAX_N) {
        hfactor_compute(H, n, use_perm, dampening_frac, method, own);
        return own;
    }
    uint64_t k0, k1;
    hf_hash(H, (size_t)n * n, &k0, &k1);
    g_hf_clock++;
    for (int i = 0; i < HF_CACHE_SLOTS; i++) {
        hf_slot *s = &g_hf[i];
        if (s->f.U && s->n == n && s->use_perm == use_perm && s->method == method && s->damp == dampening_frac &&
            s->k0 == k0 && s->k1 == k1) {
            s->last_use = g_hf_clock;
            g_hf_hits++;
            return &s->f;
        }
    }
    g_hf_misses++;
    hfactor_compute(H, n, use_perm, dampening_frac, method, own);
    int v = 0; /* least recently used slot */
    for (int i = 1; i < HF_CACHE_SLOTS; i++)
        if (g_hf[i].last_use < g_hf[v].last_use) v = i;
    hf_slot *s = &g_hf[v];
    free(s->f.U);
    hfactor_free(&s->f);
    s->k0 = k0;
    s->k1 = k1;
    s->n = n;
    s->use_perm = use_perm;
    s->method = method;
    s->damp = dampening_frac;
    s->last_use = g_hf_clock;
    s->f = *own; /* the slot takes perm and dead */
    s->f.U = xmalloc((size_t)n * n * sizeof(float));
    memcpy(s->f.U, H, (size_t)n * n * sizeof(float));
    memset(own, 0, sizeof *own);
    return &s->f;
}

/* y[r] = y[r] - x[r] * h for r < n: the product rounded to f32, then the
 * subtraction (no FMA), 4 lanes at a time, two vectors per step (GCC/Clang
 * vector extension, the SSE2 width of the x86-64 baseline: the same IEEE
 * operations per element as the scalar loop, which GCC -O2 leaves
 * unvectorized), then the tail. */
typedef float f32x4 __attribute__((vector_size(16)));
static void sub_scaled(float *restrict y, const float *restrict x, float h, int n) {
    int r = 0;
    for (; r + 8 <= n; r += 8) {
        f32x4 a0, a1, b0, b1;
        memcpy(&a0, y + r, sizeof a0);
        memcpy(&a1, y + r + 4, sizeof a1);
        memcpy(&b0, x + r, sizeof b0);
        memcpy(&b1, x + r + 4, sizeof b1);
        b0 = b0 * h;
        b1 = b1 * h;
        a0 = a0 - b0;
        a1 = a1 - b1;
        memcpy(y + r, &a0, sizeof a0);
        memcpy(y + r + 4, &a1, sizeof a1);
    }
    for (; r < n; r++) {
        float p = x[r] * h;
        y[r] = y[r] - p;
    }
}

/* Output rows per GPTQ work item: the block loop runs per chunk of rows. */
#define GPTQ_ROWS 256

typedef struct gptq_block_job {
    int n, out, ng, bs, qmin, qmax, rtn;
    quant_kind_t kind;
    ds_dtype model_dtype;
    const float *U;    /* [n, n] upper Cholesky factor of Hinv (unused if rtn) */
    const int *gcol;   /* [n] group of permuted column j */
    const float *sc;   /* [out, ng] scales */
    const int *zz;     /* [out, ng] zero points */
    float *Wt;         /* [n, out] permuted, transposed working weight */
    double *row_loss;  /* [out] sum of err^2 per row (per block, then the blocks in order) */
} gptq_block_job;

/* Step 6 on output rows [r0, r0 + w) of Wt (chunk c): per block [i1, i2), per
 * column i: q = fake_quant(w) with the column's group scale; err = (w - q) /
 * U_ii; W1[:, i:] -= err * U[i, i:] (product rounded, then the subtraction:
 * no FMA); after the block, W[:, i2:] -= Err1 @ U[i1:i2, i2:] (sgemm; its
 * K = i2 - i1 <= 128 is one OpenBLAS block, so each element is the same dot
 * product for any row split). */
static void gptq_block_rows(const gptq_block_job *j, int c) {
    const int n = j->n, out = j->out, ng = j->ng, bs = j->bs;
    const int r0 = c * GPTQ_ROWS, w = DS_MIN(GPTQ_ROWS, out - r0);
    float *Err1 = xmalloc((size_t)bs * w * sizeof(float));
    float *Ub = xmalloc((size_t)bs * bs * sizeof(float));
    double *bl = xmalloc(sizeof(double) * (size_t)w); /* this block's err^2 per row */
    const float *U = j->U;
    for (int i1 = 0; i1 < n; i1 += bs) {
        memset(bl, 0, sizeof(double) * (size_t)w);
        const int i2 = DS_MIN(i1 + bs, n), count = i2 - i1;
        /* U[i1:i2, i1:i2] (upper part), or I */
        for (int i = 0; i < count; i++)
            for (int k = 0; k < count; k++)
                Ub[(size_t)i * bs + k] = j->rtn ? (i == k ? 1.0f : 0.0f)
                                                : (k >= i ? U[(size_t)(i1 + i) * n + (i1 + k)] : 0.0f);
        for (int i = 0; i < count; i++) {
            float *wv = j->Wt + (size_t)(i1 + i) * out + r0;
            float *err = Err1 + (size_t)i * w;
            const float d = Ub[(size_t)i * bs + i];
            const int g = j->gcol[i1 + i];
            for (int r = 0; r < w; r++) {
                size_t k = (size_t)(r0 + r) * ng + g;
                float dq;
                (void)quant_fake_k(j->kind, wv[r], j->sc[k], j->zz[k], j->qmin, j->qmax, j->model_dtype, &dq);
                float e = (wv[r] - dq) / d;
                err[r] = e;
                bl[r] += (double)e * e;
                wv[r] = dq; /* Q1[:, i] */
            }
            if (j->rtn) continue;
            for (int k = i + 1; k < count; k++)
                sub_scaled(j->Wt + (size_t)(i1 + k) * out + r0, err, Ub[(size_t)i * bs + k], w);
        }
        /* W[:, i2:] -= Err1 @ U[i1:i2, i2:]  <=>  Wt[i2:, :] -= U[i1:i2, i2:]^T @ Err1 */
        if (i2 < n && !j->rtn)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n - i2, w, count, -1.0f, U + (size_t)i1 * n + i2, n,
                        Err1, w, 1.0f, j->Wt + (size_t)i2 * out + r0, out);
        for (int r = 0; r < w; r++) j->row_loss[r0 + r] += bl[r];
    }
    free(bl);
    free(Ub);
    free(Err1);
}

static void gptq_block_chunks(void *p, size_t lo, size_t hi) {
    for (size_t c = lo; c < hi; c++) gptq_block_rows(p, (int)c);
}

typedef struct gptq_unperm_job {
    int n, out, ng, qmin, qmax;
    quant_kind_t kind;
    ds_dtype model_dtype;
    const int64_t *perm;
    const int *gcol;
    const float *sc, *Wt;
    const int *zz;
    gptq_result *res;
} gptq_unperm_job;

/* Step 7 for output rows [lo, hi), 64 at a time: each Wt row segment is read
 * contiguously and the row's scattered writes stay in cache. */
static void gptq_unperm_rows(void *p, size_t lo, size_t hi) {
    const gptq_unperm_job *j = p;
    const int n = j->n, out = j->out, ng = j->ng;
    for (size_t r0 = lo; r0 < hi; r0 += 64) {
        const size_t r1 = DS_MIN(hi, r0 + 64);
        for (int c = 0; c < n; c++) {
            const float *w = j->Wt + (size_t)c * out;
            const int64_t col = j->perm[c];
            const int g = j->gcol[c];
            for (size_t r = r0; r < r1; r++) {
                size_t k = r * ng + g;
                int qc = quant_code_from_deq_k(j->kind, w[r], j->sc[k], j->zz[k], j->qmin, j->qmax, j->model_dtype);
                j->res->wq[r * n + col] = w[r];
                j->res->q[r * n + col] = (int8_t)qc;
            }
        }
    }
}

ds_status gptq_quantize(const quant_args *a, const float *W, int out, int in, float *H,
                        int block_size, double dampening_frac, ds_dtype model_dtype,
                        gptq_result *res) {
    ds_status st = check_args(a, out, in, block_size);
    if (st != DS_OK) return st;
    result_alloc(res, a, out, in);
    const int n = in;
    const int ng = quant_num_groups(a, in);
    const int gs = a->strategy == QS_GROUP ? a->group_size : in;
    const quant_kind_t kind = quant_kind(a);
    int qmin, qmax;
    quant_range(a, &qmin, &qmax);
    const int use_perm = a->actorder != QA_NONE;
    const int group_act = a->actorder == QA_GROUP && a->strategy == QS_GROUP;

    /* 1-5: the factorisation (permutation, dead columns, damping, U) */
    hfactor own;
    memset(&own, 0, sizeof own);
    const hfactor *fac = hfactor_get(H, n, use_perm, dampening_frac, &own);
    const int64_t *perm = fac->perm;

    /* Wt [n, out]: permuted, transposed working weight. */
    float *Wt = xmalloc((size_t)n * out * sizeof(float));
    {
        float *tmp = xmalloc((size_t)n * out * sizeof(float));
        transpose(W, out, in, tmp);
        for (int j = 0; j < n; j++)
            memcpy(Wt + (size_t)j * out, tmp + (size_t)perm[j] * out, (size_t)out * sizeof(float));
        free(tmp);
    }

    /* qparams: original weight (none/static) or permuted weight (group). */
    int *zp_out = a->symmetric ? NULL : res->zp;
    int *gcol = xmalloc((size_t)n * sizeof(int)); /* group of permuted column j */
    if (group_act) {
        float *Wp = xmalloc((size_t)n * out * sizeof(float));
        transpose(Wt, n, out, Wp);
        quant_minmax_qparams(a, Wp, out, in, model_dtype, res->scale, zp_out);
        free(Wp);
        res->g_idx = xmalloc((size_t)n * sizeof(int));
        for (int j = 0; j < n; j++) {
            gcol[j] = j / gs;
            res->g_idx[perm[j]] = j / gs;
        }
    } else {
        quant_minmax_qparams(a, W, out, in, model_dtype, res->scale, zp_out);
        for (int j = 0; j < n; j++) gcol[j] = col_group(a, perm[j]);
    }

    /* 3. dead columns: W[:, i] = 0 (after the perm) */
    for (int i = 0; i < n; i++)
        if (fac->dead[i]) memset(Wt + (size_t)i * out, 0, (size_t)out * sizeof(float));

    /* 5. the RTN fallback on a failed factorisation */
    const int info = fac->info;
    if (info != 0) {
        res->rtn_fallback = 1;
        if (fac->finite)
            ds_warn("gptq: Cholesky of the Hessian failed (info %d); using round-to-nearest for this "
                    "module (hint: raise dampening_frac or add calibration samples)", info);
        else
            ds_warn("gptq: Hessian has NaN/inf entries; using round-to-nearest for this module");
    }

    /* 6. block loop, over chunks of GPTQ_ROWS output rows (columns of Wt) in
     * parallel: every row's updates are independent (U is shared), so the
     * result does not depend on the thread count; each row's squared
     * errors are summed in f64 (per block, then the blocks in order: the
     * CUDA kernel's order) and the rows added in order. */
    const int bs = DS_MIN(block_size, n);
    const int nch = (out + GPTQ_ROWS - 1) / GPTQ_ROWS;
    gptq_block_job job = {.n = n, .out = out, .ng = ng, .bs = bs, .kind = kind, .qmin = qmin, .qmax = qmax,
                          .model_dtype = model_dtype, .rtn = res->rtn_fallback, .U = fac->U, .gcol = gcol,
                          .sc = res->scale, .zz = res->zp, .Wt = Wt, .row_loss = res->row_loss};
    ds_parallel_for((size_t)nch, 1, gptq_block_chunks, &job);
    res->loss = gptq_halve_row_losses(res->row_loss, out);

    /* 7. undo the permutation, back to [out, in]; the stored code is the one
     * the compressor recomputes from the saved model-dtype weight. */
    gptq_unperm_job uj = {.n = n, .out = out, .ng = ng, .qmin = qmin, .qmax = qmax, .kind = kind,
                          .model_dtype = model_dtype, .perm = perm, .gcol = gcol, .sc = res->scale,
                          .zz = res->zp, .Wt = Wt, .res = res};
    ds_parallel_for((size_t)out, 64, gptq_unperm_rows, &uj);
    free(gcol);
    free(Wt);
    hfactor_free(&own);
    return DS_OK;
}
