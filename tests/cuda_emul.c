/*
 * cuda_emul.c - a host-memory stand-in for cuda/kernels.h, for testing the
 * CUDA engine's orchestration (src/gpu_engine.c: buffer sizes and offsets,
 * chunking, op order, offload double-buffering, Hessian and GPTQ hand-offs)
 * on machines without a GPU. It is linked into build/doneshot-emul only,
 * never into doneshot.
 *
 * "Device" memory is plain malloc memory filled with 0xFF bytes (NaN in bf16
 * and f32) so a read of a buffer the engine never wrote poisons the result;
 * under ASan an access past a buffer's planned size is reported. Every op is
 * its CPU twin (src/ops_cpu.h, gptq.h, quant.h) applied to bf16 storage, so
 * for a bf16 model the emulated engine must reproduce the CPU pipeline up to
 * the Hessian's summation split. Streams and events are synchronous, so this
 * cannot find a missing stream synchronization: that needs a real device.
 *
 * Environment: DS_EMUL_DEVICES (default 1) visible devices; DS_EMUL_MEM_MB
 * (default 4096) the device memory reported by ds_cuda_mem_info.
 */
#include "gptq.h"
#include "kernels.h"
#include "ops_cpu.h"
#include "moe_twins.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- context, memory ---- */
typedef struct { void *p; size_t n; } alloc_rec;
static alloc_rec *g_allocs;
static size_t g_nallocs, g_cap, g_used;

int ds_cuda_device_count(void) {
    const char *v = getenv("DS_EMUL_DEVICES");
    return v ? atoi(v) : 1;
}
int ds_cuda_init(int local_rank) {
    int n = ds_cuda_device_count();
    return n > 0 ? (local_rank < 0 ? 0 : local_rank) % n : -1;
}
const char *ds_cuda_device_name(void) { return "host emulator (tests/cuda_emul.c)"; }
void ds_cuda_mem_info(size_t *free_b, size_t *total_b) {
    const char *v = getenv("DS_EMUL_MEM_MB");
    size_t tot = (size_t)(v ? atol(v) : 4096) << 20;
    *total_b = tot;
    *free_b = g_used < tot ? tot - g_used : 0;
}
void ds_cuda_shutdown(void) {}

void *ds_cuda_malloc(size_t n) {
    if (n == 0) return NULL;
    void *p = xmalloc(n);
    memset(p, 0xFF, n);
    if (g_nallocs == g_cap) {
        g_cap = g_cap ? 2 * g_cap : 64;
        g_allocs = xrealloc(g_allocs, sizeof(alloc_rec) * g_cap);
    }
    g_allocs[g_nallocs++] = (alloc_rec){p, n};
    g_used += n;
    return p;
}
void ds_cuda_free(void *p) {
    if (!p) return;
    for (size_t i = 0; i < g_nallocs; i++)
        if (g_allocs[i].p == p) {
            g_used -= g_allocs[i].n;
            g_allocs[i] = g_allocs[--g_nallocs];
            free(p);
            return;
        }
    DS_DIE(1, "cuda_emul: ds_cuda_free of a pointer not from ds_cuda_malloc");
}
void *ds_cuda_malloc_host(size_t n) { return n ? xmalloc(n) : NULL; }
void ds_cuda_free_host(void *p) { free(p); }
void ds_cuda_memcpy_h2d(void *dst, const void *src, size_t n, void *stream) { (void)stream; if (n) memcpy(dst, src, n); }
void ds_cuda_memcpy_d2h(void *dst, const void *src, size_t n, void *stream) { (void)stream; if (n) memcpy(dst, src, n); }
void ds_cuda_memcpy_d2h_async(void *dst, const void *src, size_t n, void *stream) {
    (void)stream;
    if (n) memcpy(dst, src, n);
}
void ds_cuda_memcpy_d2d(void *dst, const void *src, size_t n, void *stream) { (void)stream; if (n) memmove(dst, src, n); }
void ds_cuda_memset(void *p, int byte, size_t n, void *stream) { (void)stream; if (n) memset(p, byte, n); }
void *ds_cuda_stream_create(void) { return xmalloc(1); }
void ds_cuda_stream_destroy(void *stream) { free(stream); }
void ds_cuda_sync(void *stream) { (void)stream; }
void *ds_cuda_event_create(void) { return xcalloc(1, sizeof(double)); }
void ds_cuda_event_destroy(void *ev) { free(ev); }
void ds_cuda_event_record(void *ev, void *stream) { (void)stream; *(double *)ev = ds_now(); }
float ds_cuda_event_ms(void *start, void *stop) { return (float)((*(double *)stop - *(double *)start) * 1e3); }
void ds_cuda_stream_wait(void *stream, void *ev) { (void)stream; (void)ev; }

/* ---- bf16 helpers ---- */
static float *unpack(const uint16_t *h, size_t n) {
    float *x = xmalloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) x[i] = bf16_to_f32(h[i]);
    return x;
}
static void pack(uint16_t *h, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(x[i]);
}

void f32_to_bf16_cuda(uint16_t *dst, const float *src, size_t n, void *stream) { (void)stream; pack(dst, src, n); }
void bf16_to_f32_cuda(float *dst, const uint16_t *src, size_t n, void *stream) {
    (void)stream;
    for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(src[i]);
}

/* ---- forward ops ---- */
void matmul_forward_cuda(uint16_t *y, const uint16_t *x, const uint16_t *w, const uint16_t *b, int T, int in,
                         int out, const int *seg, int nseg, void *stream) {
    (void)stream;
    if (!seg) {
        seg = &T;
        nseg = 1;
    }
    int rows = 0;
    for (int i = 0; i < nseg; i++) rows += seg[i];
    DS_ASSERT(rows == T);
    float *xf = unpack(x, (size_t)T * in), *wf = unpack(w, (size_t)out * in), *bf = b ? unpack(b, out) : NULL;
    float *yf = xmalloc(sizeof(float) * (size_t)T * out);
    matmul_seq_forward_cpu(yf, xf, wf, bf, seg, nseg, in, out, DS_DTYPE_BF16);
    pack(y, yf, (size_t)T * out);
    free(xf); free(wf); free(bf); free(yf);
}

/* Every problem as matmul_forward_cuda's twin on its own rows; the pointers
 * are read from the "device" copy, so a table the engine did not upload
 * poisons the result. */
void matmul_batched_forward_cuda(const void *const *ptr_h, void *const *ptr_d, const int *T, int n, int in, int out,
                                 const int *seg, int nseg, void *stream) {
    for (int i = 0; i < n; i++) {
        DS_ASSERT(T[i] >= 1 && ptr_d[i] == ptr_h[i] && ptr_d[n + i] == ptr_h[n + i] &&
                  ptr_d[2 * n + i] == ptr_h[2 * n + i]);
        matmul_forward_cuda(ptr_d[2 * n + i], ptr_d[n + i], ptr_d[i], NULL, T[i], in, out,
                            seg ? seg + (size_t)i * nseg : NULL, nseg, stream);
    }
}

void rmsnorm_forward_cuda(uint16_t *y, const uint16_t *x, const uint16_t *w, int T, int C, float eps, void *stream) {
    (void)stream;
    float *xf = unpack(x, (size_t)T * C), *wf = unpack(w, C);
    rmsnorm_forward_cpu(xf, xf, wf, T, C, eps, DS_DTYPE_BF16);
    pack(y, xf, (size_t)T * C);
    free(xf); free(wf);
}

void residual_rmsnorm_forward_cuda(uint16_t *y, uint16_t *x, const uint16_t *d, const uint16_t *w, int T, int C,
                                   float eps, void *stream) {
    residual_forward_cuda(x, d, (size_t)T * C, stream);
    rmsnorm_forward_cuda(y, x, w, T, C, eps, stream);
}

void rope_tables_cuda(uint16_t *cos_t, uint16_t *sin_t, const float *inv_freq, int T, int HS, void *stream) {
    (void)stream;
    float *c = xmalloc(sizeof(float) * (size_t)T * HS), *s = xmalloc(sizeof(float) * (size_t)T * HS);
    rope_tables_cpu(c, s, inv_freq, T, HS, DS_DTYPE_BF16);
    pack(cos_t, c, (size_t)T * HS);
    pack(sin_t, s, (size_t)T * HS);
    free(c); free(s);
}

void rope_forward_cuda(uint16_t *x, const uint16_t *cos_t, const uint16_t *sin_t, int T, int NH, int HS, int ld,
                       void *stream) {
    (void)stream;
    const size_t w = (size_t)NH * HS;
    float *xf = xmalloc(sizeof(float) * (size_t)T * w);
    for (int t = 0; t < T; t++)
        for (size_t j = 0; j < w; j++) xf[(size_t)t * w + j] = bf16_to_f32(x[(size_t)t * ld + j]);
    float *c = unpack(cos_t, (size_t)T * HS), *s = unpack(sin_t, (size_t)T * HS);
    rope_forward_cpu(xf, c, s, T, NH, HS, DS_DTYPE_BF16);
    for (int t = 0; t < T; t++) pack(x + (size_t)t * ld, xf + (size_t)t * w, w);
    free(xf); free(c); free(s);
}

void attention_forward_cuda(uint16_t *out, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T,
                            int NH, int NKV, int HS, void *ws, void *stream) {
    (void)stream;
    const size_t qs = (size_t)NH * HS, ks = (size_t)NKV * HS;
    memset(ws, 0xFF, attention_ws_bytes(T, NH / NKV, HS)); /* the workspace must be this large */
    float *scratch = xmalloc(sizeof(float) * (size_t)T * T), *o = xmalloc(sizeof(float) * (size_t)T * qs);
    for (int b = 0; b < B; b++) {
        float *qf = unpack(q + (size_t)b * T * qs, (size_t)T * qs);
        float *kf = unpack(k + (size_t)b * T * ks, (size_t)T * ks);
        float *vf = unpack(v + (size_t)b * T * ks, (size_t)T * ks);
        attention_forward_cpu(o, qf, kf, vf, T, NH, NKV, HS, DS_DTYPE_BF16, scratch);
        pack(out + (size_t)b * T * qs, o, (size_t)T * qs);
        free(qf); free(kf); free(vf);
    }
    free(scratch); free(o);
}

void swiglu_forward_cuda(uint16_t *out, const uint16_t *gate, const uint16_t *up, size_t n, void *stream) {
    (void)stream;
    float *g = unpack(gate, n), *u = unpack(up, n);
    swiglu_forward_cpu(g, g, u, n, DS_DTYPE_BF16);
    pack(out, g, n);
    free(g); free(u);
}

void residual_forward_cuda(uint16_t *x, const uint16_t *y, size_t n, void *stream) {
    (void)stream;
    float *xf = unpack(x, n), *yf = unpack(y, n);
    residual_forward_cpu(xf, yf, n, DS_DTYPE_BF16);
    pack(x, xf, n);
    free(xf); free(yf);
}

/* ---- Hessians ---- */
void hessian_accum_cuda(float *H, const uint16_t *X, int rows, int n, void *stream) {
    (void)stream;
    double *Hd = xcalloc((size_t)n * n, sizeof(double));
    float *scratch = xmalloc(sizeof(float) * (size_t)n * n), *Xf = unpack(X, (size_t)rows * n);
    hessian_accum_cpu(Hd, Xf, 1, &rows, n, scratch);
    hessian_mirror_cpu(Hd, n);
    for (size_t i = 0; i < (size_t)n * n; i++) H[i] += (float)Hd[i];
    free(Hd); free(scratch); free(Xf);
}

/* As hessian_accum_cpu and the real kernel: the upper triangle only, the
 * segments summed one by one (the CPU engine's per-sequence order). The
 * engine's scratch is the kernel's (hessian_scratch_floats(n), one tile row),
 * smaller than the CPU's n x n: it is overwritten whole (an undersized
 * allocation shows up under ASan) and the CPU twin gets its own. */
void hessian_accum_f64_cuda(double *H, const uint16_t *X, const int *seg, int nseg, int n, float *scratch,
                            void *stream) {
    (void)stream;
    size_t rows = 0;
    for (int i = 0; i < nseg; i++) rows += (size_t)seg[i];
    if (rows == 0) return;
    const size_t ns = hessian_scratch_floats(n);
    for (size_t i = 0; i < ns; i++) scratch[i] = NAN;
    float *Xf = unpack(X, rows * n), *S = xmalloc(sizeof(float) * (size_t)n * n);
    hessian_accum_cpu(H, Xf, nseg, seg, n, S);
    free(Xf); free(S);
}

void hessian_symmetrize_cuda(float *H, int n, void *stream) {
    (void)stream;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) H[(size_t)j * n + i] = H[(size_t)i * n + j];
}

void hessian_to_f32_cuda(float *Hf, const double *Hd, int n, double divisor, void *stream) {
    (void)stream;
    hessian_to_f32_cpu(Hf, Hd, n, divisor);
}

void act_absmax_cuda(float *amax, const uint16_t *X, size_t n, void *stream) {
    (void)stream;
    float *Xf = unpack(X, n);
    *amax = act_absmax_cpu(*amax, Xf, n);
    free(Xf);
}

/* ---- GPTQ, packing ---- */
/* The CPU twin memoises the factorisation of a repeated Hessian itself (gptq.h).
 * It is gptq_quantize, so it factors as the CPU does (GPTQ_FACTOR_CPU_DEFAULT
 * unless DONESHOT_GPTQ_FACTOR says otherwise): the emulated engine checks the
 * CUDA engine's orchestration against the CPU engine on the same arithmetic. */
void gptq_cuda_set_factor_key(uint64_t key) { (void)key; }

ds_status gptq_quantize_cuda(const quant_args *a, const float *W, int out, int in, float *H, int block_size,
                             double dampening_frac, ds_dtype model_dtype, gptq_cuda_out *o, void *stream) {
    (void)stream;
    gptq_result r;
    ds_status st = gptq_quantize(a, W, out, in, H, block_size, dampening_frac, model_dtype, &r);
    if (st) return st;
    const size_t nw = (size_t)out * in, ng = (size_t)out * quant_num_groups(a, in);
    memcpy(o->wq, r.wq, sizeof(float) * nw);
    memcpy(o->q, r.q, nw);
    memcpy(o->scale, r.scale, sizeof(float) * ng);
    for (size_t i = 0; i < ng; i++) o->zp[i] = r.zp ? r.zp[i] : 0;
    if (o->g_idx)
        for (int i = 0; i < in; i++) o->g_idx[i] = r.g_idx ? r.g_idx[i] : i / (a->group_size > 0 ? a->group_size : in);
    o->loss = r.loss;
    o->rtn_fallback = r.rtn_fallback;
    if (o->row_loss) memcpy(o->row_loss, r.row_loss, sizeof(double) * (size_t)out);
    gptq_result_free(&r);
    return DS_OK;
}

void quant_pack_rows_cuda(const int8_t *q, int rows, int cols, int bits, int32_t *packed, void *stream) {
    (void)stream;
    quant_pack_rows(q, rows, cols, bits, packed);
}

void quant_pack_cols_cuda(const int32_t *zp, int rows, int g, int bits, int32_t *packed, void *stream) {
    (void)stream;
    int8_t *z = xmalloc((size_t)rows * g);
    for (size_t i = 0; i < (size_t)rows * g; i++) z[i] = (int8_t)zp[i];
    quant_pack_cols(z, rows, g, bits, packed);
    free(z);
}

/* ---- mixture of experts: the twins of tests/moe_twins.h ---- */
size_t moe_route_ws_bytes(int T, int E) { return sizeof(float) * (size_t)T * E; }

void moe_route_cuda(int32_t *top_e, float *top_w, const uint16_t *logits, int T, int E, int K, int norm_topk,
                    void *ws, void *stream) {
    (void)stream;
    memset(ws, 0xFF, moe_route_ws_bytes(T, E)); /* the workspace must be this large */
    moe_route_twin(top_e, top_w, logits, T, E, K, norm_topk, ws);
}

void moe_gather_cuda(uint16_t *dst, const uint16_t *x, const int32_t *rows, int n, int C, void *stream) {
    (void)stream;
    moe_gather_twin(dst, x, rows, n, C);
}

void moe_combine_cuda(uint16_t *acc, const uint16_t *y, const int32_t *tok, const int32_t *start, const int32_t *src,
                      const float *w, int n, int C, void *stream) {
    (void)stream;
    moe_combine_twin(acc, y, tok, start, src, w, n, C);
}

void moe_shared_gate_add_cuda(uint16_t *acc, const uint16_t *y, const uint16_t *m, const uint16_t *wsg, int T, int C,
                              float *gate_ws, void *stream) {
    (void)stream;
    moe_shared_gate_add_twin(acc, y, m, wsg, T, C, gate_ws);
}
