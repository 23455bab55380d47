/*
 * test_kernels.c - every CUDA launcher (cuda/kernels.h) against its CPU twin
 * (src/ops_cpu.h, src/quant.h, src/gptq.h): deterministic seeded inputs (never
 * all zero), odd shapes and one realistic shape per op, |got-ref| <= atol +
 * rtol*|ref| (bf16 outputs: rtol ~1e-2; f32: ~1e-5), NMSE reported, NaN never
 * passes, sentinel guard regions around every device output.
 * Without a device (or in a build without -DDS_CUDA) every test is reported
 * as skipped, never as passed; as failed with DS_REQUIRE_GPU=1 (make test-gpu).
 *
 * Built with -DDS_CUDA_SIM (test_kernels_sim, every configuration): every
 * launcher of cuda/ runs on the CPU simulator of tests/cuda_sim.h (the
 * kernels' own code: indices, shared memory, barriers, shuffles,
 * mma/ldmatrix/cp.async; the cuBLAS/cuSOLVER calls on the reference
 * stand-ins of tests/cuda_sim_api.h) against the same twins, on the small
 * and odd shapes (the realistic ones, GPU_ONLY, would take minutes).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "gptq.h"
#include "ops_cpu.h"
#include "quant.h"
#include "test.h"
#ifdef DS_CUDA
#include "kernels.h"
#include "moe_twins.h"
#endif

static const char *const TEST_NAMES[] = {
    "convert_bf16", "rmsnorm_forward", "rope_tables", "rope_forward",
    "matmul_forward", "attention_forward", "swiglu_forward", "residual_forward",
    "hessian_accum", "hessian_accum_f64", "gptq_quantize", "quant_pack_rows", "quant_pack_cols",
    "hessian_to_f32", "moe_route", "moe_gather", "moe_shared_gate_add",
    "gptq_factor_reuse", "gptq_quantize_fp8", "gptq_quantize_nvfp4", "act_absmax",
    "matmul_batched", "moe_combine", /* run() dispatches these two by name */
    "attention_gemm_fallback",        /* and this one */
    "gptq_factor_methods",            /* and this one */
    "gptq_rows_concat",               /* and this one */
    "residual_rmsnorm_forward",       /* and this one */
};

#ifndef DS_CUDA
int main(void) {
    for (size_t i = 0; i < DS_ARRAY_LEN(TEST_NAMES); i++)
        TEST(TEST_NAMES[i]) { SKIP_NO_GPU("built without CUDA"); }
    return TEST_REPORT();
}
#else
#ifdef DS_CUDA_SIM
#include "cuda_sim_order.h"
static const int g_sim = 1;
#else
static const int g_sim = 0;
#endif
/* a realistic shape: on a GPU only (minutes on the simulator) */
#define GPU_ONLY(call) \
    do {               \
        if (!g_sim) call; \
    } while (0)

/* ---- deterministic inputs ---- */
static uint64_t g_rng = 0x9E3779B97F4A7C15ULL;
static void seed(uint64_t s) { g_rng = s * 0x9E3779B97F4A7C15ULL + 1; }
static float urand(void) { /* [-1, 1) */
    g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}
/* n values amp*U(-1,1) + off, rounded to bf16 (activation-dtype values). */
static float *rand_bf16(size_t n, float amp, float off) {
    float *x = xmalloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) x[i] = bf16_to_f32(f32_to_bf16(amp * urand() + off));
    return x;
}
static uint16_t *to_bf16(const float *x, size_t n) {
    uint16_t *h = xmalloc(sizeof(uint16_t) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(x[i]);
    return h;
}
static float *from_bf16(const uint16_t *h, size_t n) {
    float *x = xmalloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) x[i] = bf16_to_f32(h[i]);
    return x;
}

/* ---- device buffers with sentinel guards ---- */
#define GUARD 512
#define SENT 0xA5
typedef struct { uint8_t *base; size_t bytes; } dbuf;
static void *dbuf_new(dbuf *b, size_t bytes) {
    b->bytes = bytes;
    b->base = ds_cuda_malloc(bytes + 2 * GUARD);
    ds_cuda_memset(b->base, SENT, bytes + 2 * GUARD, NULL);
    return b->base + GUARD;
}
static void *dbuf_up(dbuf *b, const void *host, size_t bytes) {
    void *p = dbuf_new(b, bytes);
    ds_cuda_memcpy_h2d(p, host, bytes, NULL);
    return p;
}
/* Copy the payload to host; returns 1 when both guards are intact. */
static int dbuf_get(dbuf *b, void *host) {
    uint8_t *t = xmalloc(b->bytes + 2 * GUARD);
    ds_cuda_memcpy_d2h(t, b->base, b->bytes + 2 * GUARD, NULL);
    memcpy(host, t + GUARD, b->bytes);
    int ok = 1;
    for (size_t i = 0; i < GUARD; i++)
        if (t[i] != SENT || t[GUARD + b->bytes + i] != SENT) { ok = 0; break; }
    free(t);
    return ok;
}
static void dbuf_free(dbuf *b) { ds_cuda_free(b->base); b->base = NULL; }

static double nmse(const float *got, const float *want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return den > 0 ? num / den : num;
}
static void report(const char *what, const float *got, const float *want, size_t n) {
    fprintf(stderr, "  %-28s n=%-9zu nmse %.3e\n", what, n, nmse(got, want, n));
}

#define BF16_RTOL 1e-2
#define F32_RTOL 1e-5

/* ---------------- tests ---------------- */
static void t_convert(void) {
    const size_t n = 4099;
    float *x = rand_bf16(n, 100.0f, 0.0f);
    for (size_t i = 0; i < n; i++) x[i] += urand() * 0.01f; /* not bf16-exact: exercises rounding */
    union { uint32_t u; float f; } sp[] = {{0x7fc00000u}, {0x7f800000u}, {0xff800000u}, {0x3f808000u},
                                          {0x3f818000u}, {0x80000000u}, {0x00000001u}, {0x7f7fffffu}};
    for (size_t i = 0; i < DS_ARRAY_LEN(sp); i++) x[i] = sp[i].f;
    uint16_t *want = to_bf16(x, n), *got = xmalloc(n * 2);
    dbuf bx, by, bz;
    float *dx = dbuf_up(&bx, x, n * 4);
    uint16_t *dy = dbuf_new(&by, n * 2);
    f32_to_bf16_cuda(dy, dx, n, NULL);
    CHECK(dbuf_get(&by, got));
    CHECK(memcmp(got, want, n * 2) == 0);
    float *back = xmalloc(n * 4), *wb = from_bf16(want, n);
    float *dz = dbuf_new(&bz, n * 4);
    bf16_to_f32_cuda(dz, dy, n, NULL);
    CHECK(dbuf_get(&bz, back));
    CHECK(memcmp(back, wb, n * 4) == 0);
    dbuf_free(&bx); dbuf_free(&by); dbuf_free(&bz);
    free(x); free(want); free(got); free(back); free(wb);
}

/* rmsnorm_forward_kernel's arithmetic replayed on the host (cuda/rmsnorm.cu,
 * RMS_THREADS 256): thread t sums x[c]^2 for c = t, t+256, ... (fma; v*v is
 * exact for bf16 v), each warp reduces with the xor butterfly v += shfl_xor(v,
 * o), o = 16..1, and keeps lane 0's value; warp 0 reduces the 8 partials (the
 * other lanes 0) the same way; rinv = 1/sqrtf(s/C + eps) (IEEE division and
 * sqrt: no fast math); y = bf16(w * bf16(x * rinv)). Bit-exact twin of the
 * kernel, so the device output must equal it. */
#define RMS_REF_THREADS 256
static float warp_sum_ref(float v[32]) {
    float t[32];
    for (int o = 16; o > 0; o >>= 1) {
        for (int l = 0; l < 32; l++) t[l] = v[l] + v[l ^ o];
        memcpy(v, t, sizeof t);
    }
    return v[0];
}
static void rmsnorm_kernel_order_ref(uint16_t *y, const uint16_t *x, const uint16_t *w, int T, int C, float eps) {
    float ss[RMS_REF_THREADS], part[32];
    for (int row = 0; row < T; row++) {
        const uint16_t *xr = x + (size_t)row * C;
        for (int t = 0; t < RMS_REF_THREADS; t++) {
            float acc = 0.0f;
            for (int c = t; c < C; c += RMS_REF_THREADS) {
                float v = bf16_to_f32(xr[c]);
                acc = fmaf(v, v, acc);
            }
            ss[t] = acc;
        }
        memset(part, 0, sizeof part);
        for (int wi = 0; wi < RMS_REF_THREADS / 32; wi++) part[wi] = warp_sum_ref(ss + 32 * wi);
        const float s = warp_sum_ref(part);
        const float r = 1.0f / sqrtf(s / (float)C + eps);
        for (int c = 0; c < C; c++) {
            float n = bf16_to_f32(f32_to_bf16(bf16_to_f32(xr[c]) * r));
            y[(size_t)row * C + c] = f32_to_bf16(bf16_to_f32(w[c]) * n);
        }
    }
}

/* Distance in bf16 ulps (steps of the ordered bit patterns; +0 == -0). */
static int bf16_ulps(uint16_t a, uint16_t b) {
    int ka = a & 0x8000 ? -(int)(a & 0x7fff) : (int)a, kb = b & 0x8000 ? -(int)(b & 0x7fff) : (int)b;
    return abs(ka - kb);
}

static void t_rmsnorm(int T, int C) {
    size_t n = (size_t)T * C;
    float *x = rand_bf16(n, 3.0f, 0.1f), *w = rand_bf16((size_t)C, 0.5f, 1.0f);
    float *want = xmalloc(n * 4);
    rmsnorm_forward_cpu(want, x, w, T, C, 1e-5f, DS_DTYPE_BF16);
    uint16_t *hx = to_bf16(x, n), *hw = to_bf16(w, (size_t)C), *hy = xmalloc(n * 2);
    dbuf bx, bw, by;
    uint16_t *dx = dbuf_up(&bx, hx, n * 2), *dw = dbuf_up(&bw, hw, (size_t)C * 2);
    uint16_t *dy = dbuf_new(&by, n * 2);
    rmsnorm_forward_cuda(dy, dx, dw, T, C, 1e-5f, NULL);
    CHECK(dbuf_get(&by, hy));
    float *got = from_bf16(hy, n);
    /* 1. bitwise the kernel's own order (rmsnorm_kernel_order_ref) */
    uint16_t *kref = xmalloc(n * 2);
    rmsnorm_kernel_order_ref(kref, hx, hw, T, C, 1e-5f);
    size_t kbad = 0;
    for (size_t i = 0; i < n; i++) kbad += hy[i] != kref[i];
    CHECK_EQ_INT(kbad, 0);
    /* 2. the serial CPU twin (the CPU engine's order) within 2 bf16 ulps: the
     * two sums of squares differ by a few f32 ulps, so r may differ by one;
     * that can move bf16(x*r) by one ulp where x*r lies at a rounding midpoint,
     * and y = bf16(w * n) with w in [0.5, 1.5] turns one ulp of n into up to
     * 2 ulps of y (w*n in the binade below n: w * ulp(n) = 2w ulp(y) before
     * rounding). An H100 showed 2 ulps on one element. */
    int worst = 0, kworst = 0;
    size_t differ = 0, kdiffer = 0;
    for (size_t i = 0; i < n; i++) {
        const uint16_t s = f32_to_bf16(want[i]);
        int u = bf16_ulps(hy[i], s), ku = bf16_ulps(kref[i], s);
        differ += u != 0;
        kdiffer += ku != 0;
        if (u > worst) worst = u;
        if (ku > kworst) kworst = ku;
    }
    CHECK(worst <= 2);
    CHECK(kworst <= 2); /* the two host orders alone (no device involved) */
    fprintf(stderr, "  rmsnorm %dx%d: %zu of %zu differ from the serial twin, by <= %d bf16 ulps (kernel order on "
            "the host: %zu, <= %d)\n", T, C, differ, n, worst, kdiffer, kworst);
    report("rmsnorm", got, want, n);
    free(kref);
    /* in place (y aliases x) */
    rmsnorm_forward_cuda(dx, dx, dw, T, C, 1e-5f, NULL);
    CHECK(dbuf_get(&bx, hy));
    float *got2 = from_bf16(hy, n);
    CHECK(memcmp(got, got2, n * 4) == 0);
    dbuf_free(&bx); dbuf_free(&bw); dbuf_free(&by);
    free(x); free(w); free(want); free(hx); free(hw); free(hy); free(got); free(got2);
}

/* The fused residual add + RMSNorm: x = bf16(x + d) must equal
 * residual_forward_cpu's x exactly (one rounding of an exact f32 sum), y the
 * two separate launches bit for bit (the same statistic order: also checked
 * against rmsnorm_kernel_order_ref on the twin's x) and the serial twin
 * within the 2 bf16 ulps of t_rmsnorm. */
static void t_residual_rmsnorm(int T, int C) {
    size_t n = (size_t)T * C;
    float *x = rand_bf16(n, 3.0f, 0.1f), *d = rand_bf16(n, 1.0f, 0.0f), *w = rand_bf16((size_t)C, 0.5f, 1.0f);
    uint16_t *hx = to_bf16(x, n), *hd = to_bf16(d, n), *hw = to_bf16(w, (size_t)C);
    float *want = xmalloc(n * 4);
    residual_forward_cpu(x, d, n, DS_DTYPE_BF16); /* x is now the twin's new residual stream */
    rmsnorm_forward_cpu(want, x, w, T, C, 1e-5f, DS_DTYPE_BF16);
    dbuf bx, bd, bw, by, bx2, by2;
    uint16_t *dx = dbuf_up(&bx, hx, n * 2), *dd = dbuf_up(&bd, hd, n * 2), *dw = dbuf_up(&bw, hw, (size_t)C * 2);
    uint16_t *dy = dbuf_new(&by, n * 2), *dx2 = dbuf_up(&bx2, hx, n * 2), *dy2 = dbuf_new(&by2, n * 2);
    residual_rmsnorm_forward_cuda(dy, dx, dd, dw, T, C, 1e-5f, NULL);
    residual_forward_cuda(dx2, dd, n, NULL); /* the unfused pair */
    rmsnorm_forward_cuda(dy2, dx2, dw, T, C, 1e-5f, NULL);
    uint16_t *gx = xmalloc(n * 2), *gy = xmalloc(n * 2), *gx2 = xmalloc(n * 2), *gy2 = xmalloc(n * 2);
    CHECK(dbuf_get(&bx, gx) && dbuf_get(&by, gy) && dbuf_get(&bx2, gx2) && dbuf_get(&by2, gy2));
    uint16_t *tx = to_bf16(x, n), *kref = xmalloc(n * 2);
    CHECK(memcmp(gx, tx, n * 2) == 0);  /* the residual stream: exact */
    CHECK(memcmp(gx2, tx, n * 2) == 0);
    CHECK(memcmp(gy, gy2, n * 2) == 0); /* fused == unfused, bit for bit */
    rmsnorm_kernel_order_ref(kref, tx, hw, T, C, 1e-5f);
    CHECK(memcmp(gy, kref, n * 2) == 0);
    int worst = 0;
    for (size_t i = 0; i < n; i++) {
        const int u = bf16_ulps(gy[i], f32_to_bf16(want[i]));
        if (u > worst) worst = u;
    }
    CHECK(worst <= 2);
    float *got = from_bf16(gy, n);
    report("residual+rmsnorm", got, want, n);
    dbuf_free(&bx); dbuf_free(&bd); dbuf_free(&bw); dbuf_free(&by); dbuf_free(&bx2); dbuf_free(&by2);
    free(x); free(d); free(w); free(hx); free(hd); free(hw); free(want);
    free(gx); free(gy); free(gx2); free(gy2); free(tx); free(kref); free(got);
}

static float *inv_freq_for(int HS, double theta) {
    float *f = xmalloc(sizeof(float) * (HS / 2));
    for (int k = 0; k < HS / 2; k++) f[k] = (float)(1.0 / pow(theta, (double)(2 * k) / HS));
    return f;
}

static void t_rope_tables(int T, int HS) {
    float *inv = inv_freq_for(HS, 500000.0);
    size_t n = (size_t)T * HS;
    float *wc = xmalloc(n * 4), *ws = xmalloc(n * 4);
    rope_tables_cpu(wc, ws, inv, T, HS, DS_DTYPE_BF16);
    dbuf bi, bc, bs;
    float *di = dbuf_up(&bi, inv, sizeof(float) * (HS / 2));
    uint16_t *dc = dbuf_new(&bc, n * 2), *ds = dbuf_new(&bs, n * 2);
    rope_tables_cuda(dc, ds, di, T, HS, NULL);
    uint16_t *hc = xmalloc(n * 2), *hs = xmalloc(n * 2);
    CHECK(dbuf_get(&bc, hc));
    CHECK(dbuf_get(&bs, hs));
    float *gc = from_bf16(hc, n), *gs = from_bf16(hs, n);
    /* accurate cosf/sinf differ from glibc by <= 2 f32 ulps: <= 1 bf16 ulp after rounding */
    CHECK_CLOSE(gc, wc, n, 1e-6, BF16_RTOL);
    CHECK_CLOSE(gs, ws, n, 1e-6, BF16_RTOL);
    report("rope cos", gc, wc, n);
    report("rope sin", gs, ws, n);
    dbuf_free(&bi); dbuf_free(&bc); dbuf_free(&bs);
    free(inv); free(wc); free(ws); free(hc); free(hs); free(gc); free(gs);
}

static void t_rope(int T, int NH, int HS) {
    float *inv = inv_freq_for(HS, 500000.0);
    size_t nt = (size_t)T * HS, n = (size_t)T * NH * HS;
    float *ct = xmalloc(nt * 4), *st = xmalloc(nt * 4);
    rope_tables_cpu(ct, st, inv, T, HS, DS_DTYPE_BF16);
    float *x = rand_bf16(n, 4.0f, 0.0f), *want = xmalloc(n * 4);
    memcpy(want, x, n * 4);
    rope_forward_cpu(want, ct, st, T, NH, HS, DS_DTYPE_BF16);
    uint16_t *hx = to_bf16(x, n), *hc = to_bf16(ct, nt), *hs = to_bf16(st, nt);
    dbuf bx, bc, bs;
    uint16_t *dx = dbuf_up(&bx, hx, n * 2), *dc = dbuf_up(&bc, hc, nt * 2), *ds = dbuf_up(&bs, hs, nt * 2);
    rope_forward_cuda(dx, dc, ds, T, NH, HS, NH * HS, NULL);
    CHECK(dbuf_get(&bx, hx));
    float *got = from_bf16(hx, n);
    CHECK_CLOSE(got, want, n, 0.0, 0.0); /* same tables, same rounding points: exact */
    report("rope", got, want, n);
    dbuf_free(&bx); dbuf_free(&bc); dbuf_free(&bs);
    free(inv); free(ct); free(st); free(x); free(want); free(hx); free(hc); free(hs); free(got);
}

static void t_matmul(int T, int in, int out, int bias) {
    float *x = rand_bf16((size_t)T * in, 1.0f, 0.0f), *w = rand_bf16((size_t)out * in, 0.05f, 0.0f);
    float *b = bias ? rand_bf16((size_t)out, 0.5f, 0.0f) : NULL;
    size_t ny = (size_t)T * out;
    float *want = xmalloc(ny * 4);
    matmul_forward_cpu(want, x, w, b, T, in, out, DS_DTYPE_BF16);
    uint16_t *hx = to_bf16(x, (size_t)T * in), *hw = to_bf16(w, (size_t)out * in);
    uint16_t *hb = b ? to_bf16(b, (size_t)out) : NULL, *hy = xmalloc(ny * 2);
    dbuf bx, bw, bb = {0}, by;
    uint16_t *dx = dbuf_up(&bx, hx, (size_t)T * in * 2), *dw = dbuf_up(&bw, hw, (size_t)out * in * 2);
    uint16_t *db = b ? dbuf_up(&bb, hb, (size_t)out * 2) : NULL, *dy = dbuf_new(&by, ny * 2);
    matmul_forward_cuda(dy, dx, dw, db, T, in, out, NULL, 0, NULL);
    CHECK(dbuf_get(&by, hy));
    float *got = from_bf16(hy, ny);
    /* f32 summation order differs (tensor cores vs OpenBLAS): a bf16 rounding may flip */
    CHECK_CLOSE(got, want, ny, 1e-3, BF16_RTOL);
    CHECK(nmse(got, want, ny) < 1e-4);
    report(bias ? "matmul (bias)" : "matmul", got, want, ny);
    dbuf_free(&bx); dbuf_free(&bw); if (b) dbuf_free(&bb); dbuf_free(&by);
    free(x); free(w); free(b); free(want); free(hx); free(hw); free(hb); free(hy); free(got);
}

static void t_attention(int B, int T, int NH, int NKV, int HS) {
    size_t nq = (size_t)B * T * NH * HS, nk = (size_t)B * T * NKV * HS;
    float *q = rand_bf16(nq, 2.0f, 0.0f), *k = rand_bf16(nk, 2.0f, 0.0f), *v = rand_bf16(nk, 1.0f, 0.0f);
    float *want = xmalloc(nq * 4), *scr = xmalloc(sizeof(float) * T * T);
    for (int b = 0; b < B; b++)
        attention_forward_cpu(want + (size_t)b * T * NH * HS, q + (size_t)b * T * NH * HS,
                              k + (size_t)b * T * NKV * HS, v + (size_t)b * T * NKV * HS, T, NH, NKV,
                              HS, DS_DTYPE_BF16, scr);
    uint16_t *hq = to_bf16(q, nq), *hk = to_bf16(k, nk), *hv = to_bf16(v, nk), *ho = xmalloc(nq * 2);
    dbuf bq, bk, bv, bo, bw;
    uint16_t *dq = dbuf_up(&bq, hq, nq * 2), *dk = dbuf_up(&bk, hk, nk * 2), *dv = dbuf_up(&bv, hv, nk * 2);
    uint16_t *dout = dbuf_new(&bo, nq * 2);
    void *ws = dbuf_new(&bw, attention_ws_bytes(T, NH / NKV, HS));
    attention_forward_cuda(dout, dq, dk, dv, B, T, NH, NKV, HS, ws, NULL);
    fprintf(stderr, "  attention B=%d T=%d NH=%d NKV=%d HS=%d: %s path\n", B, T, NH, NKV, HS,
            attention_fused(HS) ? "fused" : "gemm");
    CHECK(dbuf_get(&bo, ho));
    float *got = from_bf16(ho, nq);
    /* P rounded to bf16 on both sides, but exp/sum orders differ: rare 1-ulp P flips */
    CHECK_CLOSE(got, want, nq, 4e-3, 2e-2);
    CHECK(nmse(got, want, nq) < 1e-4);
    report("attention", got, want, nq);
    uint8_t *tmp = xmalloc(bw.bytes);
    CHECK(dbuf_get(&bw, tmp)); /* workspace guards */
    free(tmp);
    dbuf_free(&bq); dbuf_free(&bk); dbuf_free(&bv); dbuf_free(&bo); dbuf_free(&bw);
    free(q); free(k); free(v); free(want); free(scr); free(hq); free(hk); free(hv); free(ho); free(got);
}

/* T in {1, 17, 64, 200, 2048} x HS {64, 128} x GQA rep {1, 4} (NKV 2). */
static void t_attention_sweep(void) {
    static const int Ts[] = {1, 17, 64, 200, 2048};
    setenv("DONESHOT_ATTN", "fused", 1); /* the fused kernel is opt-in */
    for (size_t i = 0; i < DS_ARRAY_LEN(Ts); i++)
        for (int HS = 64; HS <= 128; HS *= 2)
            for (int rep = 1; rep <= 4; rep *= 4) {
                if (Ts[i] < 2048) t_attention(2, Ts[i], 2 * rep, 2, HS);
                else GPU_ONLY(t_attention(1, Ts[i], 2 * rep, 2, HS));
            }
    unsetenv("DONESHOT_ATTN");
}

/* Unset or DONESHOT_ATTN=gemm: HS 64/128 take the batched-GEMM path with its
 * rep*T*T workspace (the verified default); =fused: the fused kernel. */
static void t_attention_gemm_fallback(void) {
    unsetenv("DONESHOT_ATTN");
    CHECK(!attention_fused(64) && !attention_fused(128));
    CHECK(attention_ws_bytes(2048, 4, 128) == (size_t)2048 * 2048 * 4 * 6); /* 96 MiB */
    setenv("DONESHOT_ATTN", "fused", 1);
    CHECK(attention_fused(64) && attention_fused(128) && !attention_fused(40));
    CHECK(attention_ws_bytes(2048, 4, 128) <= 256);
    setenv("DONESHOT_ATTN", "gemm", 1);
    CHECK(!attention_fused(64) && !attention_fused(128));
    t_attention(2, 200, 8, 2, 64);
    t_attention(1, 300, 4, 4, 128);
    unsetenv("DONESHOT_ATTN");
}

static void t_swiglu(size_t n, size_t off) {
    float *g = rand_bf16(n + off, 6.0f, 0.0f), *u = rand_bf16(n + off, 2.0f, 0.0f);
    float *want = xmalloc((n + off) * 4);
    swiglu_forward_cpu(want, g + off, u + off, n, DS_DTYPE_BF16);
    uint16_t *hg = to_bf16(g, n + off), *hu = to_bf16(u, n + off), *ho = xmalloc((n + off) * 2);
    dbuf bg, bu, bo;
    uint16_t *dg = dbuf_up(&bg, hg, (n + off) * 2), *du = dbuf_up(&bu, hu, (n + off) * 2);
    uint16_t *dout = dbuf_new(&bo, n * 2);
    swiglu_forward_cuda(dout, dg + off, du + off, n, NULL); /* off = 1: the unaligned scalar path */
    CHECK(dbuf_get(&bo, ho));
    float *got = from_bf16(ho, n);
    CHECK_CLOSE(got, want, n, 1e-6, BF16_RTOL);
    report(off ? "swiglu (unaligned)" : "swiglu", got, want, n);
    dbuf_free(&bg); dbuf_free(&bu); dbuf_free(&bo);
    free(g); free(u); free(want); free(hg); free(hu); free(ho); free(got);
}

static void t_residual(size_t n) {
    float *x = rand_bf16(n, 8.0f, 0.0f), *y = rand_bf16(n, 1.0f, 0.0f);
    uint16_t *hx = to_bf16(x, n), *hy = to_bf16(y, n);
    residual_forward_cpu(x, y, n, DS_DTYPE_BF16);
    dbuf bx, by;
    uint16_t *dx = dbuf_up(&bx, hx, n * 2), *dy = dbuf_up(&by, hy, n * 2);
    residual_forward_cuda(dx, dy, n, NULL);
    CHECK(dbuf_get(&bx, hx));
    float *got = from_bf16(hx, n);
    CHECK_CLOSE(got, x, n, 0.0, 0.0); /* one f32 add of bf16 values, one rounding: exact */
    dbuf_free(&bx); dbuf_free(&by);
    free(x); free(y); free(hx); free(hy); free(got);
}

/* CPU reference Hessian, mirrored to full, as f64 and f32. */
static double *hessian_ref(const float *X, int rows, int n) {
    double *H = xcalloc((size_t)n * n, sizeof(double));
    float *scr = xmalloc(sizeof(float) * (size_t)n * n);
    hessian_accum_cpu(H, X, 1, &rows, n, scr);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) H[(size_t)j * n + i] = H[(size_t)i * n + j];
    free(scr);
    return H;
}

/* hessian_to_f32_cuda == hessian_to_f32_cpu (bitwise: one IEEE division and
 * one rounding per element, mirrored). The strict lower triangle of the
 * input is NaN (hessian_accum_f64_cuda does not write it): only the upper
 * triangle may be read. */
static void t_to_f32(int n, int nseq) {
    size_t nn = (size_t)n * n;
    double *H = xmalloc(nn * 8);
    for (size_t i = 0; i < nn; i++) H[i] = (double)urand() * 1e3 + (double)urand() * 1e-9;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++) H[(size_t)i * n + j] = NAN;
    float *want = xmalloc(nn * 4), *got = xmalloc(nn * 4);
    hessian_to_f32_cpu(want, H, n, (double)nseq);
    dbuf bh, bf;
    double *dh = dbuf_up(&bh, H, nn * 8);
    float *df = dbuf_new(&bf, nn * 4);
    hessian_to_f32_cuda(df, dh, n, (double)nseq, NULL);
    CHECK(dbuf_get(&bf, got));
    report("hessian_to_f32", got, want, nn);
    CHECK(memcmp(got, want, nn * 4) == 0);
    dbuf_free(&bh);
    dbuf_free(&bf);
    free(H); free(want); free(got);
}

/* f32: hessian_accum_cuda (full GEMM) + symmetrize vs the CPU twin, all of H.
 * f64: hessian_accum_f64_cuda (upper triangle by tile rows of DS_HESS_TILE;
 * the first call's rows in three sequences, one empty) vs the CPU twin on j >= i; the strict lower triangle holds a sentinel that
 * must survive, and the scratch is exactly hessian_scratch_floats(n) floats
 * between guards. */
static void t_hessian(int rows, int n, int f64) {
    size_t nn = (size_t)n * n, ncmp = nn;
    float *X = rand_bf16((size_t)rows * n, 1.0f, 0.0f);
    double *Hd = hessian_ref(X, rows, n);
    float *want = xmalloc(nn * 4), *got = xmalloc(nn * 4);
    for (size_t i = 0; i < nn; i++) want[i] = (float)Hd[i];
    uint16_t *hx = to_bf16(X, (size_t)rows * n);
    dbuf bx, bh, bs = {0};
    uint16_t *dx = dbuf_up(&bx, hx, (size_t)rows * n * 2);
    /* two calls with a split of the rows: sums must not depend on it */
    int r1 = rows / 3;
    if (f64) {
        const double lower = -12345.0;
        double *g = xcalloc(nn, 8);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < i; j++) g[(size_t)i * n + j] = lower;
        double *dh = dbuf_up(&bh, g, nn * 8);
        const size_t ns = hessian_scratch_floats(n);
        float *scr = dbuf_new(&bs, ns * 4), *hs = xmalloc(ns * 4);
        const int seg1[3] = {r1 / 2, 0, r1 - r1 / 2}, seg2[1] = {rows - r1}; /* an empty sequence too */
        hessian_accum_f64_cuda(dh, dx, seg1, 3, n, scr, NULL);
        hessian_accum_f64_cuda(dh, dx + (size_t)r1 * n, seg2, 1, n, scr, NULL);
        CHECK(dbuf_get(&bh, g));
        CHECK(dbuf_get(&bs, hs)); /* the GEMMs stay inside the scratch */
        size_t k = 0, lower_bad = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                const size_t e = (size_t)i * n + j;
                if (j < i) { lower_bad += g[e] != lower; continue; }
                got[k] = (float)g[e];
                want[k++] = (float)Hd[e]; /* k <= e: compacts want in place */
            }
        CHECK_EQ_INT(lower_bad, 0);
        ncmp = k;
        free(g); free(hs);
    } else {
        float *dh = dbuf_new(&bh, nn * 4);
        ds_cuda_memset(dh, 0, nn * 4, NULL);
        hessian_accum_cuda(dh, dx, r1, n, NULL);
        hessian_accum_cuda(dh, dx + (size_t)r1 * n, rows - r1, n, NULL);
        hessian_symmetrize_cuda(dh, n, NULL);
        CHECK(dbuf_get(&bh, got));
        int sym = 1;
        for (int i = 0; i < n && sym; i++)
            for (int j = 0; j < i; j++)
                if (got[(size_t)i * n + j] != got[(size_t)j * n + i]) { sym = 0; break; }
        CHECK(sym);
    }
    /* exact products, f32 sums in a different order: error ~ eps * sum |x_i x_j| <= eps * 2 rows */
    CHECK_CLOSE(got, want, ncmp, 2e-6 * rows, F32_RTOL);
    report(f64 ? "hessian f64 (upper)" : "hessian f32", got, want, ncmp);
    dbuf_free(&bx); dbuf_free(&bh); if (f64) dbuf_free(&bs);
    free(X); free(Hd); free(want); free(got); free(hx);
}

/* The static activation observer: act_absmax_cuda over X [rows, n] bf16 in
 * three calls (a split of the rows, as chunks) == act_absmax_cpu over all of
 * it, bit for bit (max is order-independent). The largest |x| is a negative
 * value (the sign must be dropped); nan_at >= 0 puts a NaN there (skipped by
 * both) and -Inf two entries after it when inf (counted by both). */
static void t_act_absmax(int rows, int n, int nan_at, int inf) {
    const size_t N = (size_t)rows * n;
    float *X = rand_bf16(N, 3.0f, 0.0f);
    X[N / 2] = bf16_to_f32(f32_to_bf16(-7.25f));
    if (nan_at >= 0) X[nan_at] = NAN;
    if (nan_at >= 0 && inf) X[nan_at + 2] = -INFINITY;
    uint16_t *hx = to_bf16(X, N);
    const float start = 0.5f; /* a previous call's value */
    const float want = act_absmax_cpu(start, X, N);
    dbuf bx, bm;
    uint16_t *dx = dbuf_up(&bx, hx, N * 2);
    float *dm = dbuf_up(&bm, &start, sizeof(float));
    const int r1 = rows / 3, r2 = rows - rows / 4;
    act_absmax_cuda(dm, dx, (size_t)r1 * n, NULL);
    act_absmax_cuda(dm, dx + (size_t)r1 * n, (size_t)(r2 - r1) * n, NULL);
    act_absmax_cuda(dm, dx + (size_t)r2 * n, (size_t)(rows - r2) * n, NULL);
    act_absmax_cuda(dm, dx, 0, NULL); /* empty: no change */
    float got = -1;
    CHECK(dbuf_get(&bm, &got));
    CHECK(memcmp(&got, &want, sizeof got) == 0);
    CHECK(inf ? isinf(want) : want == 7.25f);
    fprintf(stderr, "  %-28s n=%-9zu got %g want %g\n", "act_absmax", N, (double)got, (double)want);
    dbuf_free(&bx); dbuf_free(&bm);
    free(X); free(hx);
}

/* The CPU twin's steps 2-5 (src/gptq.c hfactor_compute, its factorisation
 * gptq_hinv_upper with the method DONESHOT_GPTQ_FACTOR selects (main sets it), on the same
 * f32 H): processing order perm [n], dead columns [n], U [n, n] row-major
 * upper factor of the damped inverse. Returns gptq_hinv_upper's info. */
static int gptq_factor_ref(const float *H, int n, int use_perm, double frac, int64_t *perm, unsigned char *dead,
                           float *U) {
    float *d = xmalloc(sizeof(float) * (size_t)n);
    for (int i = 0; i < n; i++) d[i] = H[(size_t)i * n + i];
    if (use_perm) gptq_argsort_desc(d, n, perm);
    else for (int i = 0; i < n; i++) perm[i] = i;
    free(d);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) U[(size_t)i * n + j] = H[(size_t)perm[i] * n + perm[j]];
    double dsum = 0;
    for (int i = 0; i < n; i++) {
        float *hii = &U[(size_t)i * n + i];
        dead[i] = *hii == 0.0f;
        if (dead[i]) *hii = 1.0f;
        dsum += *hii;
    }
    const float damp = (float)frac * (float)(dsum / n);
    for (int i = 0; i < n; i++) U[(size_t)i * n + i] += damp;
    return gptq_hinv_upper(U, n, gptq_factor_method_env(GPTQ_FACTOR_CUDA_DEFAULT));
}

/* Row r of the CPU twin's column sweep replayed in f64 from its own
 * dequantized values wq_ref, up to processing position `upto`: returns the
 * value the fake quant rounds there, t = w / scale + zp (code units). */
static double gptq_replay_t(const quant_args *qa, const float *W, int in, int r, const int64_t *perm,
                            const unsigned char *dead, const float *U, const float *wq_ref, const float *scale,
                            const int *zp, int ng, int upto, double *w) {
    for (int j = 0; j < in; j++) w[j] = dead[j] ? 0.0 : W[(size_t)r * in + perm[j]];
    for (int c = 0; c < upto; c++) {
        const double err = (w[c] - wq_ref[(size_t)r * in + perm[c]]) / U[(size_t)c * in + c];
        for (int j = c + 1; j < in; j++) w[j] -= err * U[(size_t)c * in + j];
    }
    const int g = qa->strategy == QS_GROUP ? (int)(perm[upto] / qa->group_size) : 0;
    return w[upto] / scale[(size_t)r * ng + g] + zp[(size_t)r * ng + g];
}

/* Tie tolerance (code units) of the first GPU/CPU decision flip in a row:
 * the two sweeps see the same value up to f32 summation-order noise (cuSOLVER
 * and cuBLAS vs LAPACK and OpenBLAS, about 1e-3 code units for int8), so a
 * flip is only legitimate where that value is at a rounding tie k + 0.5.
 * Later flips in the row follow from the first (the error feedback moves the
 * remaining columns) and are not ties. With the CPU twin as the "device"
 * and H moved by +-30..300 f32 ulps (far more noise than the H100 showed: no
 * int8 decision flip at all), the first flips were within 0.027 of a tie. */
#define GPTQ_TIE_TOL 0.05
/* Relative bound on |loss_gpu - loss_cpu| without decision flips: the CPU
 * twin with its H moved by +-2 f32 ulps gives <= 1.2e-5 on these shapes; the
 * H100 printed identical losses (6 digits) for the int8 case. Each decision
 * flip adds its share (flips / codes): a tie flip moves the rest of its row
 * (error feedback), and one tie flip in the int8 45x200 case (13 decisions
 * moved) changed the loss by 2.0e-4 relative in that emulation. */
#define GPTQ_LOSS_RTOL 1e-4


/* Device buffers of gptq_quantize_cuda calls of up to [out, in] with ng
 * groups a row: W, H and the outputs (o holds their device pointers; g_idx
 * too when with_gidx). */
typedef struct gptq_dev {
    dbuf W, H, wq, q, s, z, g;
    float *dW, *dH;
    gptq_cuda_out o;
} gptq_dev;

static void gptq_dev_new(gptq_dev *d, int out, int in, int ng, int with_gidx) {
    const size_t nn = (size_t)in * in, nw = (size_t)out * in;
    memset(d, 0, sizeof *d);
    d->dW = dbuf_new(&d->W, nw * 4);
    d->dH = dbuf_new(&d->H, nn * 4);
    d->o.wq = dbuf_new(&d->wq, nw * 4);
    d->o.q = dbuf_new(&d->q, nw);
    d->o.scale = dbuf_new(&d->s, (size_t)out * ng * 4);
    d->o.zp = dbuf_new(&d->z, (size_t)out * ng * 4);
    if (with_gidx) d->o.g_idx = dbuf_new(&d->g, (size_t)in * 4);
}

static void gptq_dev_free(gptq_dev *d) {
    dbuf_free(&d->W); dbuf_free(&d->H); dbuf_free(&d->wq); dbuf_free(&d->q); dbuf_free(&d->s); dbuf_free(&d->z);
    if (d->o.g_idx) dbuf_free(&d->g);
}

/* GPTQ: same inputs to gptq_quantize and gptq_quantize_cuda. The criterion:
 * scales and zero points identical, loss within GPTQ_LOSS_RTOL, codes equal
 * except after a rounding tie (int kinds: the first differing dequantized
 * value of each row, in processing order, is within GPTQ_TIE_TOL of a tie
 * in the CPU twin's replayed sweep), codes and dequantized values consistent.
 * The stored code is the compressor's (quant_code_from_deq_k) on both. */
static void t_gptq(int out, int in, quant_args qa, int dead_col) {
    int rows = 2 * in + 17;
    float *X = rand_bf16((size_t)rows * in, 1.0f, 0.0f);
    for (int c = 0; c < in; c++) { /* uneven channel scales: a meaningful actorder */
        float s = 0.25f + 2.0f * (float)((c * 37) % in) / in;
        for (int r = 0; r < rows; r++) X[(size_t)r * in + c] = bf16_to_f32(f32_to_bf16(X[(size_t)r * in + c] * s));
    }
    if (dead_col >= 0)
        for (int r = 0; r < rows; r++) X[(size_t)r * in + dead_col] = 0.0f;
    double *Hd = hessian_ref(X, rows, in);
    size_t nn = (size_t)in * in, nw = (size_t)out * in;
    float *H = xmalloc(nn * 4), *Hc = xmalloc(nn * 4);
    for (size_t i = 0; i < nn; i++) H[i] = (float)(Hd[i] / rows);
    memcpy(Hc, H, nn * 4);
    float *W = rand_bf16(nw, 0.05f, 0.0f);
    gptq_result ref;
    ds_status st = gptq_quantize(&qa, W, out, in, Hc, 128, 0.01, DS_DTYPE_BF16, &ref);
    CHECK_EQ_INT(st, DS_OK);
    if (st != DS_OK) { free(X); free(Hd); free(H); free(Hc); free(W); return; }
    int ng = quant_num_groups(&qa, in);
    gptq_dev dv;
    gptq_dev_new(&dv, out, in, ng, 1);
    gptq_cuda_out o = dv.o;
    ds_cuda_memcpy_h2d(dv.dW, W, nw * 4, NULL);
    ds_cuda_memcpy_h2d(dv.dH, H, nn * 4, NULL);
    CHECK_EQ_INT(gptq_quantize_cuda(&qa, dv.dW, out, in, dv.dH, 128, 0.01, DS_DTYPE_BF16, &o, NULL), DS_OK);
    float *wq = xmalloc(nw * 4), *sc = xmalloc((size_t)out * ng * 4);
    int8_t *q = xmalloc(nw);
    int32_t *zp = xmalloc((size_t)out * ng * 4), *gi = xmalloc((size_t)in * 4);
    float *Wback = xmalloc(nw * 4);
    CHECK(dbuf_get(&dv.wq, wq)); CHECK(dbuf_get(&dv.q, q)); CHECK(dbuf_get(&dv.s, sc));
    CHECK(dbuf_get(&dv.z, zp)); CHECK(dbuf_get(&dv.g, gi)); CHECK(dbuf_get(&dv.W, Wback));
    CHECK(memcmp(Wback, W, nw * 4) == 0); /* W not modified */
    /* scales and zero-points come from the original weight: identical */
    CHECK(memcmp(sc, ref.scale, (size_t)out * ng * 4) == 0);
    int zbad = 0;
    for (size_t i = 0; i < (size_t)out * ng; i++) zbad += zp[i] != ref.zp[i];
    CHECK_EQ_INT(zbad, 0);
    CHECK_EQ_INT(o.rtn_fallback, ref.rtn_fallback);
    size_t flips = 0, bigflips = 0, dflips = 0; /* codes; dequantized values (the GPTQ decisions) */
    for (size_t i = 0; i < nw; i++) {
        dflips += wq[i] != ref.wq[i];
        if (q[i] != ref.q[i]) flips++;
        if (abs((int)q[i] - (int)ref.q[i]) > 1) bigflips++;
    }
    double rate = (double)flips / nw;
    fprintf(stderr, "  gptq %dx%d bits=%d strategy=%d actorder=%d: flip rate %.4f%% (%zu/%zu, %zu by >1), "
            "loss gpu %.6g cpu %.6g\n", out, in, qa.num_bits, (int)qa.strategy, (int)qa.actorder,
            100 * rate, flips, nw, bigflips, o.loss, ref.loss);
    fprintf(stderr, "  gptq decision flips %.4f%% (%zu)\n", 100.0 * dflips / nw, dflips);
    CHECK(rate <= 0.01);
    CHECK(dflips <= nw / 100);
    CHECK(bigflips <= nw / 1000);
    const double lrel = fabs(o.loss - ref.loss) / (fabs(ref.loss) + 1e-30);
    const double lbound = GPTQ_LOSS_RTOL + (double)dflips / nw;
    fprintf(stderr, "  gptq loss relative difference %.3e (bound %.3e)\n", lrel, lbound);
    CHECK(lrel <= lbound || fabs(o.loss - ref.loss) <= 1e-12);
    if (quant_kind(&qa) == QK_INT && qa.actorder != QA_GROUP) { /* each row's first decision flip: a tie */
        int64_t *perm = xmalloc(sizeof(int64_t) * (size_t)in);
        unsigned char *dead = xmalloc((size_t)in);
        float *U = xmalloc(nn * 4);
        double *wrow = xmalloc(sizeof(double) * (size_t)in);
        CHECK_EQ_INT(gptq_factor_ref(H, in, qa.actorder != QA_NONE, 0.01, perm, dead, U), 0);
        int rows_flipped = 0, not_tie = 0;
        double worst = 0.0;
        for (int r = 0; r < out; r++) {
            int first = -1;
            for (int j = 0; j < in && first < 0; j++)
                if (wq[(size_t)r * in + perm[j]] != ref.wq[(size_t)r * in + perm[j]]) first = j;
            if (first < 0) continue;
            rows_flipped++;
            const double t = gptq_replay_t(&qa, W, in, r, perm, dead, U, ref.wq, ref.scale, ref.zp, ng, first, wrow);
            const double dist = fabs(t - floor(t) - 0.5);
            if (dist > worst) worst = dist;
            if (dist > GPTQ_TIE_TOL) {
                if (not_tie++ < 3)
                    fprintf(stderr, "  row %d: first flip at column %lld, t = %.6f is not a tie\n", r,
                            (long long)perm[first], t);
            }
        }
        fprintf(stderr, "  gptq rows with a flip %d of %d; their first flip: worst distance from a tie %.2e "
                "(tolerance %.0e)\n", rows_flipped, out, worst, GPTQ_TIE_TOL);
        CHECK_EQ_INT(not_tie, 0);
        free(perm); free(dead); free(U); free(wrow);
    }
    /* consistent outputs: each stored code is the compressor's code of its own dequantized value */
    size_t cbad = 0, gbad = 0;
    int qlo, qhi;
    quant_range(&qa, &qlo, &qhi);
    for (size_t i = 0; i < nw; i++) {
        const size_t r = i / (size_t)in;
        const int col = (int)(i % (size_t)in);
        const int g = qa.actorder == QA_GROUP ? gi[col] : qa.strategy == QS_GROUP || qa.strategy == QS_TENSOR_GROUP
                                                                  ? col / qa.group_size
                                                                  : qa.strategy == QS_BLOCK ? col / qa.block[1] : 0;
        const size_t k = r * (size_t)ng + (size_t)g;
        cbad += (int8_t)quant_code_from_deq_k(quant_kind(&qa), wq[i], sc[k], zp[k], qlo, qhi,
                                      DS_DTYPE_BF16) != q[i];
        if (quant_kind(&qa) == QK_INT) { /* wq on the grid: bf16((k - zp) * scale) for a code k in range */
            const long k0 = lround((double)wq[i] / sc[k]) + zp[k];
            int on = 0;
            for (long kk = k0 - 1; kk <= k0 + 1 && !on; kk++)
                on = kk >= qlo && kk <= qhi && quant_dequant_k(QK_INT, (int)kk, zp[k], sc[k], DS_DTYPE_BF16) == wq[i];
            gbad += !on;
        }
    }
    CHECK_EQ_INT(cbad, 0);
    CHECK_EQ_INT(gbad, 0);
    if (dead_col >= 0) /* dead column: W[:, i] = 0 -> dequantized 0 */
        for (int r = 0; r < out; r++) CHECK(wq[(size_t)r * in + dead_col] == 0.0f);
    /* float kinds: dequantized values agree wherever the codes agree (same scale, same zp). Not for
     * int: there two neighbouring decisions k, k+1 can store the same code (int8 above 64, see
     * cuda/gptq.cu), so the decision flips are judged on wq above (first flip of a row: a tie) */
    size_t wbad = 0;
    for (size_t i = 0; quant_kind(&qa) != QK_INT && i < nw; i++) wbad += q[i] == ref.q[i] && wq[i] != ref.wq[i];
    CHECK_EQ_INT(wbad, 0);
    gptq_dev_free(&dv);
    gptq_result_free(&ref);
    free(X); free(Hd); free(H); free(Hc); free(W); free(wq); free(sc); free(q); free(zp); free(gi);
    free(Wback);
}

static void t_pack_rows(int rows, int cols, int bits) {
    int qmin = -(1 << (bits - 1)), span = 1 << bits;
    int8_t *q = xmalloc((size_t)rows * cols);
    for (size_t i = 0; i < (size_t)rows * cols; i++)
        q[i] = (int8_t)(qmin + (int)((urand() + 1.0f) * 0.5f * span) % span);
    q[0] = (int8_t)qmin; q[1] = (int8_t)(qmin + span - 1);
    int words = quant_packed_cols(cols, bits);
    size_t np = (size_t)rows * words;
    int32_t *want = xmalloc(np * 4), *got = xmalloc(np * 4);
    quant_pack_rows(q, rows, cols, bits, want);
    dbuf bq, bp;
    int8_t *dq = dbuf_up(&bq, q, (size_t)rows * cols);
    int32_t *dp = dbuf_new(&bp, np * 4);
    quant_pack_rows_cuda(dq, rows, cols, bits, dp, NULL);
    CHECK(dbuf_get(&bp, got));
    CHECK(memcmp(got, want, np * 4) == 0);
    dbuf_free(&bq); dbuf_free(&bp);
    free(q); free(want); free(got);
}

static void t_pack_cols(int rows, int g, int bits) {
    int qmin = -(1 << (bits - 1)), span = 1 << bits;
    int8_t *z8 = xmalloc((size_t)rows * g);
    int32_t *z32 = xmalloc((size_t)rows * g * 4);
    for (size_t i = 0; i < (size_t)rows * g; i++) {
        z8[i] = (int8_t)(qmin + (int)((urand() + 1.0f) * 0.5f * span) % span);
        z32[i] = z8[i];
    }
    int words = quant_packed_cols(rows, bits);
    size_t np = (size_t)words * g;
    int32_t *want = xmalloc(np * 4), *got = xmalloc(np * 4);
    quant_pack_cols(z8, rows, g, bits, want);
    dbuf bz, bp;
    int32_t *dz = dbuf_up(&bz, z32, (size_t)rows * g * 4);
    int32_t *dp = dbuf_new(&bp, np * 4);
    quant_pack_cols_cuda(dz, rows, g, bits, dp, NULL);
    CHECK(dbuf_get(&bp, got));
    CHECK(memcmp(got, want, np * 4) == 0);
    dbuf_free(&bz); dbuf_free(&bp);
    free(z8); free(z32); free(want); free(got);
}

/* One factorisation reused (gptq_cuda_set_factor_key): three weights solved
 * with the same H under one key give bitwise the results of unkeyed solves
 * (each of which refactors H), including a dead column; a new key refactors. */
static void t_gptq_factor_reuse(int out, int in, quant_args qa) {
    int rows = 2 * in + 5;
    float *X = rand_bf16((size_t)rows * in, 1.0f, 0.0f);
    for (int r = 0; r < rows; r++) X[(size_t)r * in + 3] = 0.0f; /* a dead column */
    double *Hd = hessian_ref(X, rows, in);
    size_t nn = (size_t)in * in, nw = (size_t)out * in;
    float *H = xmalloc(nn * 4);
    for (size_t i = 0; i < nn; i++) H[i] = (float)(Hd[i] / rows);
    gptq_dev dv;
    gptq_dev_new(&dv, out, in, quant_num_groups(&qa, in), 0);
    gptq_cuda_out o = dv.o;
    float *dW = dv.dW, *dH = dv.dH;
    float *wq[2][3];
    double loss[2][3];
    for (int pass = 0; pass < 2; pass++) { /* 0: unkeyed, 1: one key */
        for (int k = 0; k < 3; k++) {
            seed(1000 + (uint64_t)k);
            float *W = rand_bf16(nw, 0.05f, 0.0f);
            ds_cuda_memcpy_h2d(dW, W, nw * 4, NULL);
            ds_cuda_memcpy_h2d(dH, H, nn * 4, NULL); /* H is scratch: fresh every call */
            if (pass == 1) gptq_cuda_set_factor_key(0xABCDEF);
            CHECK_EQ_INT(gptq_quantize_cuda(&qa, dW, out, in, dH, 128, 0.01, DS_DTYPE_BF16, &o, NULL), DS_OK);
            wq[pass][k] = xmalloc(nw * 4);
            CHECK(dbuf_get(&dv.wq, wq[pass][k]));
            loss[pass][k] = o.loss;
            free(W);
        }
    }
    for (int k = 0; k < 3; k++) {
        CHECK(memcmp(wq[0][k], wq[1][k], nw * 4) == 0);
        CHECK(loss[0][k] == loss[1][k]);
        for (int r = 0; r < out; r++) CHECK(wq[1][k][(size_t)r * in + 3] == 0.0f);
        free(wq[0][k]);
        free(wq[1][k]);
    }
    /* another Hessian under a new key: not the cached factor */
    for (size_t i = 0; i < nn; i += (size_t)in + 1) H[i] *= 2.0f;
    ds_cuda_memcpy_h2d(dH, H, nn * 4, NULL);
    gptq_cuda_set_factor_key(0xABCDF0);
    CHECK_EQ_INT(gptq_quantize_cuda(&qa, dW, out, in, dH, 128, 0.01, DS_DTYPE_BF16, &o, NULL), DS_OK);
    CHECK(o.loss != loss[1][2]);
    fprintf(stderr, "  gptq factor reuse %dx%d: 3 solves bitwise equal to unkeyed ones\n", out, in);
    gptq_dev_free(&dv);
    free(X); free(Hd); free(H);
}

/* A grouped solve (engine_ops.gptq_group): three weights of out[k] rows
 * sharing H solved as one [sum out, in] call give each weight's own solve:
 * its rows' share of row_loss (summed in row order) is its own call's loss,
 * and its codes and dequantized values are its own. GPTQ treats rows
 * independently, and so do the sweep kernel and the simulator's GEMM
 * stand-in: there every value is bitwise the same. cuBLAS may pick another
 * sgemm kernel for another row count (another fp32 summation order, which
 * GPTQ's error feedback amplifies into a few code flips), so on a GPU the
 * bound is the device check's: loss within 1e-3, >= 95 % identical codes.
 * Every call: sum(row_loss) == loss bitwise. */
static void t_gptq_rows_concat(const int outs[3], int in, quant_args qa) {
    int rows = 2 * in + 5, R = outs[0] + outs[1] + outs[2];
    float *X = rand_bf16((size_t)rows * in, 1.0f, 0.0f);
    double *Hd = hessian_ref(X, rows, in);
    size_t nn = (size_t)in * in, nw = (size_t)R * in;
    float *H = xmalloc(nn * 4);
    for (size_t i = 0; i < nn; i++) H[i] = (float)(Hd[i] / rows);
    const int ng = quant_num_groups(&qa, in);
    float *W = rand_bf16(nw, 0.05f, 0.0f); /* the three weights' rows, concatenated */
    gptq_dev dv;
    gptq_dev_new(&dv, R, in, ng, 0);
    gptq_cuda_out o = dv.o;
    float *dW = dv.dW, *dH = dv.dH;
    float *wq1 = xmalloc(nw * 4), *wqg = xmalloc(nw * 4), *sc1 = xmalloc((size_t)R * ng * 4);
    float *scg = xmalloc((size_t)R * ng * 4);
    int8_t *q1 = xmalloc(nw), *qg = xmalloc(nw);
    double loss1[3], *rl = xmalloc(sizeof(double) * (size_t)R);
    size_t r0 = 0;
    for (int k = 0; k < 3; k++) { /* one call per weight */
        const size_t mw = (size_t)outs[k] * in;
        ds_cuda_memcpy_h2d(dW, W + r0 * in, mw * 4, NULL);
        ds_cuda_memcpy_h2d(dH, H, nn * 4, NULL);
        o.row_loss = rl;
        CHECK_EQ_INT(gptq_quantize_cuda(&qa, dW, outs[k], in, dH, 128, 0.01, DS_DTYPE_BF16, &o, NULL), DS_OK);
        double sum = 0;
        for (int r = 0; r < outs[k]; r++) sum += rl[r];
        CHECK(sum == o.loss);
        loss1[k] = o.loss;
        ds_cuda_memcpy_d2h(wq1 + r0 * in, o.wq, mw * 4, NULL);
        ds_cuda_memcpy_d2h(q1 + r0 * in, o.q, mw, NULL);
        ds_cuda_memcpy_d2h(sc1 + r0 * ng, o.scale, (size_t)outs[k] * ng * 4, NULL);
        r0 += (size_t)outs[k];
    }
    ds_cuda_memcpy_h2d(dW, W, nw * 4, NULL); /* the group in one call */
    ds_cuda_memcpy_h2d(dH, H, nn * 4, NULL);
    CHECK_EQ_INT(gptq_quantize_cuda(&qa, dW, R, in, dH, 128, 0.01, DS_DTYPE_BF16, &o, NULL), DS_OK);
    CHECK(dbuf_get(&dv.wq, wqg) && dbuf_get(&dv.q, qg) && dbuf_get(&dv.s, scg));
    CHECK(memcmp(sc1, scg, (size_t)R * ng * 4) == 0); /* qparams: per row, from the original weight */
    double sum_all = 0, worst = 0;
    size_t same = 0;
    for (size_t i = 0; i < nw; i++) same += q1[i] == qg[i];
    r0 = 0;
    for (int k = 0; k < 3; k++) {
        double lk = 0;
        for (int r = 0; r < outs[k]; r++) lk += rl[r0 + (size_t)r];
        CHECK(isfinite(lk) && lk > 0);
        worst = fmax(worst, fabs(lk - loss1[k]) / loss1[k]);
        if (g_sim) CHECK(lk == loss1[k]);
        r0 += (size_t)outs[k];
    }
    for (int r = 0; r < R; r++) sum_all += rl[r];
    CHECK(sum_all == o.loss);
    if (g_sim) CHECK(same == nw && memcmp(wq1, wqg, nw * 4) == 0);
    CHECK(worst <= 1e-3 && (double)same >= 0.95 * (double)nw);
    fprintf(stderr, "  gptq rows %d+%d+%d x %d in one call: per-module loss rel diff %.2e, %.4f %% codes identical\n",
            outs[0], outs[1], outs[2], in, worst, 100.0 * (double)same / (double)nw);
    gptq_dev_free(&dv);
    free(X); free(Hd); free(H); free(W); free(wq1); free(wqg); free(sc1); free(scg); free(q1); free(qg); free(rl);
}

/* ---- mixture of experts (cuda/moe.cu vs tests/moe_twins.h) ---- */

/* Router: expert ids equal except where the twin's K-th and (K+1)-th
 * probabilities are within 1e-6 relative (expf ulps may swap a near tie);
 * weights of matching experts within bf16 rounding. */
static void t_moe_route(int T, int E, int K, int norm) {
    float *z = rand_bf16((size_t)T * E, 4.0f, 0.0f);
    uint16_t *hz = to_bf16(z, (size_t)T * E);
    int32_t *we = xmalloc(sizeof(int32_t) * (size_t)T * K), *ge = xmalloc(sizeof(int32_t) * (size_t)T * K);
    float *ww = xmalloc(sizeof(float) * (size_t)T * K), *gw = xmalloc(sizeof(float) * (size_t)T * K);
    float *ws = xmalloc(sizeof(float) * (size_t)T * E);
    moe_route_twin(we, ww, hz, T, E, K, norm, ws);
    dbuf bz, be, bw, bs;
    uint16_t *dz = dbuf_up(&bz, hz, (size_t)T * E * 2);
    int32_t *de = dbuf_new(&be, sizeof(int32_t) * (size_t)T * K);
    float *dw = dbuf_new(&bw, sizeof(float) * (size_t)T * K);
    void *dws = dbuf_new(&bs, moe_route_ws_bytes(T, E));
    moe_route_cuda(de, dw, dz, T, E, K, norm, dws, NULL);
    CHECK(dbuf_get(&be, ge));
    CHECK(dbuf_get(&bw, gw));
    int bad = 0, near = 0;
    for (int t = 0; t < T; t++) {
        int same = memcmp(we + (size_t)t * K, ge + (size_t)t * K, sizeof(int32_t) * K) == 0;
        if (same) {
            for (int k = 0; k < K; k++) {
                float a = ww[(size_t)t * K + k], b = gw[(size_t)t * K + k];
                if (!(fabsf(a - b) <= BF16_RTOL * fabsf(a))) bad++;
            }
            continue;
        }
        /* a swap is allowed only at a near tie of the twin's probabilities */
        float *p = ws + (size_t)t * E, kth = p[we[(size_t)t * K + K - 1]], next = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int k = 0; k < K; k++) taken |= we[(size_t)t * K + k] == e;
            if (!taken && p[e] > next) next = p[e];
        }
        if (fabsf(kth - next) <= 1e-6f * kth) near++;
        else bad++;
    }
    CHECK_EQ_INT(bad, 0);
    fprintf(stderr, "  moe_route T=%d E=%d K=%d norm=%d: %d near-tie swaps\n", T, E, K, norm, near);
    dbuf_free(&bz); dbuf_free(&be); dbuf_free(&bw); dbuf_free(&bs);
    free(z); free(hz); free(we); free(ge); free(ww); free(gw); free(ws);
}

/* Gather: exact. */
static void t_moe_gather(int T, int C, int n) {
    float *x = rand_bf16((size_t)T * C, 3.0f, 0.0f);
    uint16_t *hx = to_bf16(x, (size_t)T * C);
    int32_t *rows = xmalloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) rows[i] = (int32_t)(((int64_t)i * 7 + 3) % T); /* distinct for gcd(7, T) = 1 */
    uint16_t *want = xmalloc((size_t)n * C * 2), *got = xmalloc((size_t)n * C * 2);
    moe_gather_twin(want, hx, rows, n, C);
    dbuf bx, br, bg;
    uint16_t *dx = dbuf_up(&bx, hx, (size_t)T * C * 2);
    int32_t *dr = dbuf_up(&br, rows, sizeof(int32_t) * (size_t)n);
    uint16_t *dg = dbuf_new(&bg, (size_t)n * C * 2);
    moe_gather_cuda(dg, dx, dr, n, C, NULL);
    CHECK(dbuf_get(&bg, got));
    CHECK(memcmp(got, want, (size_t)n * C * 2) == 0);
    dbuf_free(&bx); dbuf_free(&br); dbuf_free(&bg);
    free(x); free(hx); free(rows); free(want); free(got);
}

/* Shared-expert gate: the sequential f32 dot product is exact; expf ulps
 * can move a bf16 gate by one step. */
static void t_moe_shared_gate(int T, int C) {
    float *m = rand_bf16((size_t)T * C, 2.0f, 0.0f), *y = rand_bf16((size_t)T * C, 1.0f, 0.0f),
          *a = rand_bf16((size_t)T * C, 4.0f, 0.0f), *wsg = rand_bf16((size_t)C, 0.05f, 0.0f);
    uint16_t *hm = to_bf16(m, (size_t)T * C), *hy = to_bf16(y, (size_t)T * C), *ha = to_bf16(a, (size_t)T * C),
             *hw = to_bf16(wsg, (size_t)C);
    float *gws = xmalloc(sizeof(float) * (size_t)T);
    dbuf bm, by, ba, bw, bg;
    uint16_t *dm = dbuf_up(&bm, hm, (size_t)T * C * 2), *dy = dbuf_up(&by, hy, (size_t)T * C * 2),
             *da = dbuf_up(&ba, ha, (size_t)T * C * 2), *dw = dbuf_up(&bw, hw, (size_t)C * 2);
    float *dg = dbuf_new(&bg, sizeof(float) * (size_t)T);
    moe_shared_gate_add_cuda(da, dy, dm, dw, T, C, dg, NULL);
    moe_shared_gate_add_twin(ha, hy, hm, hw, T, C, gws);
    uint16_t *ga = xmalloc((size_t)T * C * 2);
    CHECK(dbuf_get(&ba, ga));
    CHECK(dbuf_get(&bg, gws)); /* guards of the gate scratch */
    float *got = from_bf16(ga, (size_t)T * C), *want = from_bf16(ha, (size_t)T * C);
    CHECK_CLOSE(got, want, (size_t)T * C, 1e-6, BF16_RTOL);
    report("moe_shared_gate_add", got, want, (size_t)T * C);
    dbuf_free(&bm); dbuf_free(&by); dbuf_free(&ba); dbuf_free(&bw); dbuf_free(&bg);
    free(m); free(y); free(a); free(wsg); free(hm); free(hy); free(ha); free(hw); free(gws); free(ga); free(got);
    free(want);
}

/* Batched expert GEMMs (matmul_batched_forward_cuda): n problems y_i =
 * x_i W_i^T with rows T[i] against the CPU twin (as t_matmul) and against
 * matmul_forward_cuda on the same problem; shared: every problem reads the
 * same x (the all-experts calibration, stride 0; T all equal). */
static void t_matmul_batched(int n, const int *T, int in, int out, int shared) {
    size_t nx = 0, ny = 0, nw = (size_t)n * out * in;
    size_t *xo = xmalloc(sizeof(size_t) * (size_t)n), *yo = xmalloc(sizeof(size_t) * (size_t)n);
    for (int i = 0; i < n; i++) {
        xo[i] = shared ? 0 : nx;
        nx = shared ? (size_t)T[0] * in : nx + (size_t)T[i] * in;
        yo[i] = ny;
        ny += (size_t)T[i] * out;
    }
    float *x = rand_bf16(nx, 1.0f, 0.0f), *w = rand_bf16(nw, 0.05f, 0.0f), *want = xmalloc(ny * 4);
    for (int i = 0; i < n; i++)
        matmul_forward_cpu(want + yo[i], x + xo[i], w + (size_t)i * out * in, NULL, T[i], in, out, DS_DTYPE_BF16);
    uint16_t *hx = to_bf16(x, nx), *hw = to_bf16(w, nw), *hy = xmalloc(ny * 2), *hr = xmalloc(ny * 2);
    dbuf bx, bw, by, br, bp;
    uint16_t *dx = dbuf_up(&bx, hx, nx * 2), *dw = dbuf_up(&bw, hw, nw * 2), *dy = dbuf_new(&by, ny * 2);
    uint16_t *dr = dbuf_new(&br, ny * 2);
    void **ph = xmalloc(sizeof(void *) * 3 * (size_t)n);
    for (int i = 0; i < n; i++) {
        ph[i] = dw + (size_t)i * out * in;
        ph[n + i] = dx + xo[i];
        ph[2 * n + i] = dy + yo[i];
        matmul_forward_cuda(dr + yo[i], dx + xo[i], dw + (size_t)i * out * in, NULL, T[i], in, out, NULL, 0, NULL);
    }
    void **pd = dbuf_up(&bp, ph, sizeof(void *) * 3 * (size_t)n);
    matmul_batched_forward_cuda((const void *const *)ph, pd, T, n, in, out, NULL, 0, NULL);
    CHECK(dbuf_get(&by, hy));
    CHECK(dbuf_get(&br, hr));
    float *got = from_bf16(hy, ny), *ref = from_bf16(hr, ny);
    CHECK_CLOSE(got, want, ny, 1e-3, BF16_RTOL);
    CHECK(nmse(got, want, ny) < 1e-4);
    CHECK_CLOSE(got, ref, ny, 1e-3, BF16_RTOL); /* cuBLAS may pick another kernel for the batch */
    size_t same = 0;
    for (size_t i = 0; i < ny; i++) same += hy[i] == hr[i];
    fprintf(stderr, "  matmul_batched n=%d %s: %zu of %zu outputs bitwise those of matmul_forward_cuda\n", n,
            shared ? "shared x" : "own x", same, ny);
    report("matmul_batched", got, want, ny);
    dbuf_free(&bx); dbuf_free(&bw); dbuf_free(&by); dbuf_free(&br); dbuf_free(&bp);
    free(xo); free(yo); free(x); free(w); free(want); free(hx); free(hw); free(hy); free(hr); free(ph); free(got);
    free(ref);
}

/* model.c moe_forward's index-add, one expert at a time: a = bf16(a + bf16(w * y))
 * (the reference of moe_combine's several-experts-at-once form). */
static void moe_scatter_add_twin(uint16_t *acc, const uint16_t *y, const int32_t *rows, const float *w, int n, int C,
                                 int y_by_row) {
    const ds_dtype act = DS_DTYPE_BF16;
    for (int i = 0; i < n; i++) {
        uint16_t *a = acc + (size_t)rows[i] * C;
        const uint16_t *yr = y + (size_t)(y_by_row ? rows[i] : i) * C;
        for (int j = 0; j < C; j++)
            a[j] = f32_to_bf16(ds_round_to(bf16_to_f32(a[j]) + ds_round_to(w[i] * bf16_to_f32(yr[j]), act), act));
    }
}

/* The expert-group combine: T tokens each routed to K distinct of E experts,
 * expert outputs y [E, T, C] (row e*T + t); moe_combine_cuda over two
 * groups ([0, E/2), [E/2, E)) must equal the per-expert index-add
 * (moe_scatter_add_twin for e = 0..E-1) bit for bit, and so must the twin. */
static void t_moe_combine(int T, int C, int E, int K) {
    const size_t ny = (size_t)E * T * C;
    float *y = rand_bf16(ny, 3.0f, 0.0f), *a = rand_bf16((size_t)T * C, 5.0f, 0.0f);
    uint16_t *hy = to_bf16(y, ny), *ha = to_bf16(a, (size_t)T * C), *hb = to_bf16(a, (size_t)T * C);
    int32_t *te = xmalloc(sizeof(int32_t) * (size_t)T * K);
    float *tw = rand_bf16((size_t)T * K, 0.5f, 0.5f);
    for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++) {
            int e, dup;
            do {
                e = (int)((urand() + 1.0f) * 0.5f * E) % E;
                dup = 0;
                for (int j = 0; j < k; j++) dup |= te[(size_t)t * K + j] == e;
            } while (dup);
            te[(size_t)t * K + k] = e;
        }
    /* reference: expert by expert, its rows in token order */
    int32_t *rows = xmalloc(sizeof(int32_t) * (size_t)T);
    float *rw = xmalloc(sizeof(float) * (size_t)T);
    for (int e = 0; e < E; e++) {
        int nr = 0;
        for (int t = 0; t < T; t++)
            for (int k = 0; k < K; k++)
                if (te[(size_t)t * K + k] == e) { rows[nr] = t; rw[nr++] = tw[(size_t)t * K + k]; }
        moe_scatter_add_twin(ha, hy + (size_t)e * T * C, rows, rw, nr, C, 1);
    }
    /* the combine lists of two groups */
    int32_t *tok = xmalloc(sizeof(int32_t) * 2 * (size_t)T), *start = xmalloc(sizeof(int32_t) * (2 * (size_t)T + 2));
    int32_t *src = xmalloc(sizeof(int32_t) * (size_t)T * K);
    float *cw = xmalloc(sizeof(float) * (size_t)T * K);
    int ntok = 0, nst = 0, nsrc = 0, g0[3] = {0, 0, 0};
    const int bound[3] = {0, E / 2, E};
    for (int g = 0; g < 2; g++) {
        g0[g] = ntok;
        for (int t = 0; t < T; t++) {
            int any = 0;
            for (int e = bound[g]; e < bound[g + 1]; e++)
                for (int k = 0; k < K; k++)
                    if (te[(size_t)t * K + k] == e) {
                        if (!any) { tok[ntok++] = t; start[nst++] = nsrc; any = 1; }
                        src[nsrc] = e * T + t;
                        cw[nsrc++] = tw[(size_t)t * K + k];
                    }
        }
        start[nst++] = nsrc;
    }
    g0[2] = ntok;
    uint16_t *tw2 = to_bf16(a, (size_t)T * C);
    moe_combine_twin(tw2, hy, tok, start, src, cw, g0[1], C);
    moe_combine_twin(tw2, hy, tok + g0[1], start + g0[1] + 1, src, cw, g0[2] - g0[1], C);
    CHECK(memcmp(tw2, ha, (size_t)T * C * 2) == 0);
    dbuf by, bb, bt, bs, bsr, bw;
    uint16_t *dy = dbuf_up(&by, hy, ny * 2), *db = dbuf_up(&bb, hb, (size_t)T * C * 2);
    int32_t *dt = dbuf_up(&bt, tok, sizeof(int32_t) * (size_t)ntok);
    int32_t *ds = dbuf_up(&bs, start, sizeof(int32_t) * (size_t)nst);
    int32_t *dsr = dbuf_up(&bsr, src, sizeof(int32_t) * (size_t)nsrc);
    float *dw = dbuf_up(&bw, cw, sizeof(float) * (size_t)nsrc);
    moe_combine_cuda(db, dy, dt, ds, dsr, dw, g0[1], C, NULL);
    moe_combine_cuda(db, dy, dt + g0[1], ds + g0[1] + 1, dsr, dw, g0[2] - g0[1], C, NULL);
    CHECK(dbuf_get(&bb, hb));
    CHECK(memcmp(hb, ha, (size_t)T * C * 2) == 0);
    fprintf(stderr, "  moe_combine T=%d C=%d E=%d K=%d: %d token entries in 2 groups\n", T, C, E, K, ntok);
    dbuf_free(&by); dbuf_free(&bb); dbuf_free(&bt); dbuf_free(&bs); dbuf_free(&bsr); dbuf_free(&bw);
    free(y); free(a); free(hy); free(ha); free(hb); free(te); free(tw); free(rows); free(rw); free(tok); free(start);
    free(src); free(cw); free(tw2);
}

static void run(int idx) {
    seed((uint64_t)idx + 1);
    if (!strcmp(TEST_NAMES[idx], "matmul_batched")) {
        const int t4[4] = {64, 64, 64, 64}, tv[5] = {1, 37, 200, 3, 64}, tb[8] = {512, 512, 512, 512, 512, 512, 512, 512};
        t_matmul_batched(4, t4, 96, 48, 1);  /* all-experts calibration: one x, cublasGemmBatchedEx */
        t_matmul_batched(5, tv, 129, 75, 0); /* routed: own rows, grouped (or looped) */
        GPU_ONLY(t_matmul_batched(8, tb, 2048, 768, 1));
        return;
    }
    if (!strcmp(TEST_NAMES[idx], "attention_gemm_fallback")) {
        t_attention_gemm_fallback();
        return;
    }
    if (!strcmp(TEST_NAMES[idx], "gptq_factor_methods")) {
        /* the other DONESHOT_GPTQ_FACTOR methods, set for both solvers: flip
         * (the CPU twin flips too) and potri (the twin's torch path is potri) */
        quant_args c8 = {.num_bits = 8, .symmetric = 1, .strategy = QS_CHANNEL, .group_size = -1, .actorder = QA_NONE};
        quant_args g4s = {.num_bits = 4, .symmetric = 1, .strategy = QS_GROUP, .group_size = 128, .actorder = QA_STATIC};
        static const char *const methods[2] = {"flip", "potri"};
        for (int m = 0; m < 2; m++) {
            setenv("DONESHOT_GPTQ_FACTOR", methods[m], 1);
            fprintf(stderr, "  DONESHOT_GPTQ_FACTOR=%s\n", methods[m]);
            t_gptq(45, 200, c8, -1);
            GPU_ONLY(t_gptq(512, 1024, g4s, 77));
            GPU_ONLY(t_gptq(256, 4096, g4s, -1));
        }
        setenv("DONESHOT_GPTQ_FACTOR", "torch", 1);
        return;
    }
    if (!strcmp(TEST_NAMES[idx], "gptq_rows_concat")) { /* q/k/v-like row counts; odd ones */
        quant_args g4s = {.num_bits = 4, .symmetric = 1, .strategy = QS_GROUP, .group_size = 64, .actorder = QA_STATIC};
        quant_args c8a = {.num_bits = 8, .symmetric = 0, .strategy = QS_CHANNEL, .group_size = -1, .actorder = QA_NONE};
        const int qkv[3] = {64, 16, 16}, odd[3] = {37, 5, 70}, big[3] = {4096, 1024, 1024};
        t_gptq_rows_concat(qkv, 192, g4s);
        t_gptq_rows_concat(odd, 130, c8a);
        GPU_ONLY(t_gptq_rows_concat(big, 4096, g4s));
        return;
    }
    if (!strcmp(TEST_NAMES[idx], "residual_rmsnorm_forward")) {
        t_residual_rmsnorm(37, 1000);
        t_residual_rmsnorm(5, 4096);
        GPU_ONLY(t_residual_rmsnorm(2048, 4096));
        return;
    }
    if (!strcmp(TEST_NAMES[idx], "moe_combine")) {
        t_moe_combine(100, 64, 8, 2);
        GPU_ONLY(t_moe_combine(1024, 2048, 16, 4));
        return;
    }
    switch (idx) {
    case 0: t_convert(); break;
    case 1: t_rmsnorm(37, 1000); t_rmsnorm(5, 4096); GPU_ONLY(t_rmsnorm(512, 4096)); break;
    case 2: t_rope_tables(97, 40); GPU_ONLY(t_rope_tables(8192, 128)); break;
    case 3: t_rope(33, 5, 40); GPU_ONLY(t_rope(2048, 32, 128)); break;
    case 4: t_matmul(37, 200, 75, 1); t_matmul(3, 129, 1, 1); GPU_ONLY(t_matmul(256, 4096, 1024, 0)); break;
    case 5: /* HS 40, 16: the GEMM path; HS 64, 128: the fused kernel (ragged last tiles, GQA rep 1 and 4) */
        t_attention(2, 67, 6, 2, 40); t_attention(1, 1, 4, 4, 16); GPU_ONLY(t_attention(1, 512, 32, 8, 128));
        t_attention_sweep();
        break;
    case 6: t_swiglu(100003, 0); t_swiglu(4099, 1); GPU_ONLY(t_swiglu(1000003, 0)); GPU_ONLY(t_swiglu(2048 * 14336, 0)); break;
    case 7: t_residual(100003); GPU_ONLY(t_residual(1000003)); GPU_ONLY(t_residual(2048 * 4096)); break;
    case 8: t_hessian(300, 77, 0); GPU_ONLY(t_hessian(2048, 1024, 0)); break;
    case 9: /* one GEMM (n <= DS_HESS_TILE), 2 tile rows (the last 7 wide), 3 tile rows */
        t_hessian(301, 131, 1); GPU_ONLY(t_hessian(4096, 512, 1)); t_hessian(700, 1031, 1);
        GPU_ONLY(t_hessian(1500, 2100, 1));
        break;
    case 10: {
        quant_args g4 = {.num_bits = 4, .symmetric = 0, .strategy = QS_GROUP, .group_size = 64, .actorder = QA_STATIC}; /* asym int4 g64, actorder static */
        quant_args c8 = {.num_bits = 8, .symmetric = 1, .strategy = QS_CHANNEL, .group_size = -1, .actorder = QA_NONE}; /* sym int8 per channel */
        quant_args g4s = {.num_bits = 4, .symmetric = 1, .strategy = QS_GROUP, .group_size = 128, .actorder = QA_STATIC}; /* W4A16 */
        quant_args t4 = {.num_bits = 4, .symmetric = 1, .strategy = QS_TENSOR, .group_size = -1, .actorder = QA_NONE};
        t_gptq(67, 256, g4, 5);
        t_gptq(45, 200, c8, -1);
        t_gptq(33, 160, t4, -1);
        GPU_ONLY(t_gptq(512, 1024, g4s, 77));
        break;
    }
    case 11: t_pack_rows(13, 301, 4); t_pack_rows(7, 97, 8); t_pack_rows(9, 333, 3);
             GPU_ONLY(t_pack_rows(4096, 4096, 4)); break;
    case 12: t_pack_cols(67, 5, 4); t_pack_cols(1001, 3, 3); t_pack_cols(4096, 32, 4); break;
    case 13: t_to_f32(77, 64); t_to_f32(1031, 3); break;
    case 14: t_moe_route(300, 8, 2, 1); t_moe_route(257, 60, 4, 0); t_moe_route(4096, 128, 8, 1); break;
    case 15: t_moe_gather(100, 64, 37); GPU_ONLY(t_moe_gather(4096, 2048, 1500)); break;
    case 16: t_moe_shared_gate(33, 64); GPU_ONLY(t_moe_shared_gate(2048, 2048)); break;
    case 17: {
        quant_args g4s = {.num_bits = 4, .symmetric = 1, .strategy = QS_GROUP, .group_size = 64, .actorder = QA_STATIC};
        quant_args c8 = {.num_bits = 8, .symmetric = 0, .strategy = QS_CHANNEL, .group_size = -1, .actorder = QA_NONE};
        t_gptq_factor_reuse(96, 256, g4s);
        GPU_ONLY(t_gptq_factor_reuse(768, 2048, c8));
        break;
    }
    case 18: { /* fp8 e4m3 weights (FP8 / FP8_DYNAMIC / FP8_BLOCK): scale = absmax / 448, codes = bit patterns */
        quant_args fc = {.num_bits = 8, .type = QT_FLOAT, .symmetric = 1, .strategy = QS_CHANNEL, .group_size = -1,
                         .actorder = QA_NONE}; /* FP8_DYNAMIC */
        quant_args ft = {.num_bits = 8, .type = QT_FLOAT, .symmetric = 1, .strategy = QS_TENSOR, .group_size = -1,
                         .actorder = QA_STATIC};
        quant_args fb = {.num_bits = 8, .type = QT_FLOAT, .symmetric = 1, .strategy = QS_BLOCK, .group_size = -1,
                         .block = {128, 128}, .actorder = QA_NONE}; /* FP8_BLOCK; partial tiles at 200 x 300 */
        quant_args fg = {.num_bits = 8, .type = QT_FLOAT, .symmetric = 1, .strategy = QS_GROUP, .group_size = 64,
                         .actorder = QA_STATIC};
        t_gptq(45, 200, fc, -1);
        t_gptq(33, 160, ft, 7);
        t_gptq(200, 300, fb, 11);
        t_gptq(67, 256, fg, -1);
        GPU_ONLY(t_gptq(512, 1024, fb, -1));
        break;
    }
    case 19: { /* NVFP4A16: fp4 e2m1 in groups of 16, effective scales weight_scale / global_scale */
        quant_args n4 = {.num_bits = 4, .type = QT_FLOAT, .symmetric = 1, .strategy = QS_TENSOR_GROUP,
                         .group_size = 16, .actorder = QA_NONE}; /* the weight's own global scale */
        quant_args n4f = n4;
        n4f.actorder = QA_STATIC;
        n4f.global_scale = 300.0f; /* a fused (q/k/v) global scale */
        t_gptq(45, 208, n4, -1);
        t_gptq(67, 256, n4f, 9);
        GPU_ONLY(t_gptq(512, 1024, n4, -1));
        break;
    }
    case 20: t_act_absmax(301, 131, 17, 0); t_act_absmax(37, 64, 5, 1); GPU_ONLY(t_act_absmax(4096, 4096, -1, 0)); break;
    }
}

#ifdef DS_CUDA_SIM
int main(void) {
    setenv("DONESHOT_GPTQ_FACTOR", "torch", 1); /* as below */
    if (ds_cuda_init(0) != 0) {
        fprintf(stderr, "FAIL the simulated device did not initialise\n0 passed, 1 failed\n");
        return 1;
    }
    fprintf(stderr, "device: %s\n", ds_cuda_device_name());
    /* every test with each warp run up to its next barrier before the next
     * warp starts, first warp first; then the kernels of this repo (not the
     * GEMMs and solves, whose stand-ins are sequential) last warp first */
    for (size_t i = 0; i < DS_ARRAY_LEN(TEST_NAMES); i++)
        TEST(TEST_NAMES[i]) { run((int)i); }
    cuda_sim_set_order(CUDA_SIM_WARP_SERIAL_REVERSE, 1);
    fprintf(stderr, "schedule: last warp first\n");
    static const char *const again[] = {"rmsnorm_forward", "rope_tables", "rope_forward", "swiglu_forward",
                                        "residual_forward", "quant_pack_rows", "quant_pack_cols", "hessian_to_f32",
                                        "moe_route", "moe_gather", "moe_shared_gate_add", "act_absmax",
                                        "moe_combine", "gptq_quantize", "residual_rmsnorm_forward"};
    for (size_t i = 0; i < DS_ARRAY_LEN(TEST_NAMES); i++)
        for (size_t j = 0; j < DS_ARRAY_LEN(again); j++)
            if (!strcmp(TEST_NAMES[i], again[j]))
                TEST(TEST_NAMES[i]) { run((int)i); }
    /* the fused attention's barriers and cp.async groups under the other
     * schedules */
    static const int orders[] = {CUDA_SIM_WARP_SERIAL_REVERSE, CUDA_SIM_ROUND_ROBIN, CUDA_SIM_SHUFFLED};
    for (size_t i = 0; i < DS_ARRAY_LEN(orders); i++)
        TEST("attention_forward, other schedules") {
            fprintf(stderr, "schedule %d\n", orders[i]);
            setenv("DONESHOT_ATTN", "fused", 1);
            cuda_sim_set_order(orders[i], 7);
            seed(100 + i);
            t_attention(1, 200, 4, 2, 64);
            t_attention(1, 130, 2, 1, 128);
            unsetenv("DONESHOT_ATTN");
        }
    cuda_sim_set_order(CUDA_SIM_WARP_SERIAL, 1);
    ds_cuda_shutdown();
    return TEST_REPORT();
}
#else
int main(void) {
    /* t_gptq compares the two solvers with torch's factorisation (the CUDA
     * default, potrs against the identity; the CPU twin's is LAPACK's potri,
     * the same matrix up to fp32 rounding; the CPU's default is the flip)
     * unless a test sets another method for both */
    setenv("DONESHOT_GPTQ_FACTOR", "torch", 1);
    int dev = ds_cuda_device_count() > 0 ? ds_cuda_init(0) : -1;
    if (dev >= 0) fprintf(stderr, "device: %s\n", ds_cuda_device_name());
    for (size_t i = 0; i < DS_ARRAY_LEN(TEST_NAMES); i++) {
        TEST(TEST_NAMES[i]) {
            if (dev < 0) SKIP_NO_GPU("no CUDA device");
            else run((int)i);
        }
    }
    if (dev >= 0) ds_cuda_shutdown();
    return TEST_REPORT();
}
#endif /* DS_CUDA_SIM */
#endif /* DS_CUDA */
