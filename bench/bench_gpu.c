/*
 * bench_gpu.c - per-layer GPU micro-benchmark of the calibration pipeline at
 * Llama-3-8B shapes (C 4096, F 14336, 32/8 heads of 128), 512 x 2048 tokens.
 * Times, for one decoder layer, with CUDA events:
 *   forward   the 7 projection GEMMs, attention, elementwise (norms, RoPE,
 *             SwiGLU, residuals) on one micro-batch, scaled to all tokens;
 *   hessian   the 4 distinct Hessian GEMMs (qkv, o, gate/up, down inputs);
 *   gptq      the 7 solves (q, k, v, o, gate, up, down), W4 g128 actorder static
 *             (then q and down again with DONESHOT_GPTQ_FACTOR=flip and
 *             =potri: A/B lines with both times and losses, not counted in
 *             the layer);
 *   pack      int4 packing of the 7 code matrices;
 * and prints achieved TFLOP/s per stage against a cuBLAS bf16 GEMM peak
 * (8192^3) measured in the same run, plus the projected 32-layer total
 * (2 forward passes: calibration + propagation, as anchors.md §6).
 * Usage: build/bench_gpu [--mb SEQS] [--seqs N] [--seq-len T] [--reps R]
 * Built by bench/bench_gpu.sh (links build/libdoneshot.a, CUDA=1).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "kernels.h"

static int C = 4096, F = 14336, NH = 32, NKV = 8, HS = 128, L = 32;

static uint64_t rng = 88172645463325252ULL;
static float urand(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static uint16_t *dev_rand_bf16(size_t n, float amp) {
    uint16_t *h = xmalloc(n * 2);
    for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(amp * urand());
    uint16_t *d = ds_cuda_malloc(n * 2);
    ds_cuda_memcpy_h2d(d, h, n * 2, NULL);
    ds_cuda_sync(NULL);
    free(h);
    return d;
}

/* The inputs of one GPTQ solve: Hsrc := X^T X of X = xr's first 2 F^2 / in
 * rows of width in (full rank), Hw := its copy (a solve consumes it), W :=
 * wg's first out x in values as f32. */
static void gptq_inputs(float *Hsrc, float *Hw, float *W, const uint16_t *xr, const uint16_t *wg, int out, int in) {
    ds_cuda_memset(Hsrc, 0, (size_t)in * in * 4, NULL);
    hessian_accum_cuda(Hsrc, xr, (int)((size_t)2 * F * F / in), in, NULL);
    hessian_symmetrize_cuda(Hsrc, in, NULL);
    bf16_to_f32_cuda(W, wg, (size_t)out * in, NULL); /* out*in == F*C or less */
    ds_cuda_memcpy_d2d(Hw, Hsrc, (size_t)in * in * 4, NULL);
}

typedef struct { const char *name; double ms, flop; } stage;
static stage st[32];
static int nst;
static void *ev0, *ev1;

static void begin(void) { ds_cuda_event_record(ev0, NULL); }
static double end_ms(void) { ds_cuda_event_record(ev1, NULL); return ds_cuda_event_ms(ev0, ev1); }
static void add(const char *name, double ms, double flop) {
    st[nst++] = (stage){name, ms, flop};
}

int main(int argc, char **argv) {
    int mb = 16, seqs = 512, T = 2048, reps = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--mb")) mb = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seqs")) seqs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seq-len")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else { fprintf(stderr, "usage: %s [--mb SEQS] [--seqs N] [--seq-len T] [--reps R]\n", argv[0]); return 2; }
    }
    if (ds_cuda_init(0) < 0) {
        fprintf(stderr, "bench_gpu: no CUDA device\n");
        return 1;
    }
    printf("device: %s\n", ds_cuda_device_name());
    printf("shapes: Llama-3-8B layer (C %d, F %d, NH %d, NKV %d, HS %d), %d x %d tokens, micro-batch %d seqs\n",
           C, F, NH, NKV, HS, seqs, T, mb);
    ev0 = ds_cuda_event_create();
    ev1 = ds_cuda_event_create();
    const double scale = (double)seqs / mb; /* micro-batches per layer pass */

    /* ---- cuBLAS bf16 peak: 8192^3 ---- */
    double peak;
    {
        int n = 8192;
        uint16_t *a = dev_rand_bf16((size_t)n * n, 1), *b = dev_rand_bf16((size_t)n * n, 1);
        uint16_t *c = ds_cuda_malloc((size_t)n * n * 2);
        matmul_forward_cuda(c, a, b, NULL, n, n, n, NULL, 0, NULL); /* warm-up */
        begin();
        for (int r = 0; r < reps; r++) matmul_forward_cuda(c, a, b, NULL, n, n, n, NULL, 0, NULL);
        double ms = end_ms() / reps;
        peak = 2.0 * n * n * (double)n / (ms * 1e-3) / 1e12;
        printf("cuBLAS bf16 GEMM 8192^3: %.3f ms, %.1f TFLOP/s (peak reference)\n", ms, peak);
        ds_cuda_free(a); ds_cuda_free(b); ds_cuda_free(c);
    }

    /* ---- one layer's weights and a micro-batch of activations ---- */
    const int qo = NH * HS, kv = NKV * HS;
    const size_t Tm = (size_t)mb * T;
    uint16_t *wq = dev_rand_bf16((size_t)qo * C, 0.02f), *wk = dev_rand_bf16((size_t)kv * C, 0.02f);
    uint16_t *wv = dev_rand_bf16((size_t)kv * C, 0.02f), *wo = dev_rand_bf16((size_t)C * qo, 0.02f);
    uint16_t *wg = dev_rand_bf16((size_t)F * C, 0.02f), *wu = dev_rand_bf16((size_t)F * C, 0.02f);
    uint16_t *wd = dev_rand_bf16((size_t)C * F, 0.02f), *wn = dev_rand_bf16((size_t)C, 1.0f);
    uint16_t *x = dev_rand_bf16(Tm * C, 1.0f), *xn = ds_cuda_malloc(Tm * C * 2);
    uint16_t *q = ds_cuda_malloc(Tm * qo * 2), *k = ds_cuda_malloc(Tm * kv * 2), *v = ds_cuda_malloc(Tm * kv * 2);
    uint16_t *ctx = ds_cuda_malloc(Tm * qo * 2), *y = ds_cuda_malloc(Tm * C * 2);
    uint16_t *g = ds_cuda_malloc(Tm * F * 2), *u = ds_cuda_malloc(Tm * F * 2), *act = ds_cuda_malloc(Tm * F * 2);
    void *aws = ds_cuda_malloc(attention_ws_bytes(T, NH / NKV, HS));
    float *invf = ds_cuda_malloc(sizeof(float) * HS / 2);
    {
        float h[256];
        for (int i = 0; i < HS / 2; i++) h[i] = 1.0f / powf(500000.0f, (float)(2 * i) / HS);
        ds_cuda_memcpy_h2d(invf, h, sizeof(float) * HS / 2, NULL);
    }
    uint16_t *cos_t = ds_cuda_malloc((size_t)T * HS * 2), *sin_t = ds_cuda_malloc((size_t)T * HS * 2);
    rope_tables_cuda(cos_t, sin_t, invf, T, HS, NULL);

    /* ---- forward stages (per micro-batch, averaged over reps, scaled) ---- */
    double ms, tok = (double)Tm;
#define TIME(name, flop, body)                                   \
    do {                                                         \
        body;                                                    \
        begin();                                                 \
        for (int r_ = 0; r_ < reps; r_++) { body; }              \
        ms = end_ms() / reps;                                    \
        add(name, ms * scale, (flop) * scale);                   \
    } while (0)
    TIME("fwd rmsnorm (input)", 0, rmsnorm_forward_cuda(xn, x, wn, (int)Tm, C, 1e-5f, NULL));
    TIME("fwd q,k,v gemm", 2.0 * tok * C * (qo + 2 * kv), {
        matmul_forward_cuda(q, xn, wq, NULL, (int)Tm, C, qo, NULL, 0, NULL);
        matmul_forward_cuda(k, xn, wk, NULL, (int)Tm, C, kv, NULL, 0, NULL);
        matmul_forward_cuda(v, xn, wv, NULL, (int)Tm, C, kv, NULL, 0, NULL); });
    TIME("fwd rope q,k", 0, { /* positions restart at 0 in every sequence */
        for (int b = 0; b < mb; b++) {
            rope_forward_cuda(q + (size_t)b * T * qo, cos_t, sin_t, T, NH, HS, qo, NULL);
            rope_forward_cuda(k + (size_t)b * T * kv, cos_t, sin_t, T, NKV, HS, kv, NULL);
        } });
    /* causal attention: useful FLOPs = 2 * 2 * T^2/2 * HS per head-sequence */
    TIME("fwd attention", 2.0 * (double)T * T * HS * NH * mb,
         attention_forward_cuda(ctx, q, k, v, mb, T, NH, NKV, HS, aws, NULL));
    /* A/B: the other path (DONESHOT_ATTN=fused when the stages ran the
     * default GEMM path, else gemm), timed apart from the stages */
    const char *attn_path = attention_fused(HS) ? "fused" : "gemm";
    const char *attn_other = attention_fused(HS) ? "gemm" : "fused";
    double attn_gemm_ms;
    {
        const char *prev = getenv("DONESHOT_ATTN");
        setenv("DONESHOT_ATTN", attn_other, 1);
        void *gws = ds_cuda_malloc(attention_ws_bytes(T, NH / NKV, HS));
        attention_forward_cuda(ctx, q, k, v, mb, T, NH, NKV, HS, gws, NULL);
        begin();
        for (int r_ = 0; r_ < reps; r_++) attention_forward_cuda(ctx, q, k, v, mb, T, NH, NKV, HS, gws, NULL);
        attn_gemm_ms = end_ms() / reps * scale;
        ds_cuda_free(gws);
        if (prev) setenv("DONESHOT_ATTN", prev, 1);
        else unsetenv("DONESHOT_ATTN");
    }
    TIME("fwd o gemm", 2.0 * tok * qo * C, matmul_forward_cuda(y, ctx, wo, NULL, (int)Tm, qo, C, NULL, 0, NULL));
    /* the engine's residual add + post-attention norm is one fused launch;
     * A/B: the two launches it replaced, timed apart from the stages */
    TIME("fwd residual+rmsnorm", 0, residual_rmsnorm_forward_cuda(xn, x, y, wn, (int)Tm, C, 1e-5f, NULL));
    double unfused_ms;
    {
        begin();
        for (int r_ = 0; r_ < reps; r_++) {
            residual_forward_cuda(x, y, Tm * C, NULL);
            rmsnorm_forward_cuda(xn, x, wn, (int)Tm, C, 1e-5f, NULL);
        }
        unfused_ms = end_ms() / reps * scale;
    }
    const double fused_ms = st[nst - 1].ms;
    TIME("fwd residual (last)", 0, residual_forward_cuda(x, y, Tm * C, NULL));
    TIME("fwd gate,up gemm", 2.0 * 2 * tok * C * F, {
        matmul_forward_cuda(g, xn, wg, NULL, (int)Tm, C, F, NULL, 0, NULL);
        matmul_forward_cuda(u, xn, wu, NULL, (int)Tm, C, F, NULL, 0, NULL); });
    TIME("fwd swiglu", 0, swiglu_forward_cuda(act, g, u, Tm * F, NULL));
    TIME("fwd down gemm", 2.0 * tok * F * C, matmul_forward_cuda(y, act, wd, NULL, (int)Tm, F, C, NULL, 0, NULL));
    const int nfwd = nst;

    /* ---- Hessians (one per distinct input) ---- */
    float *Hc = ds_cuda_malloc((size_t)C * C * 4), *Ho = ds_cuda_malloc((size_t)qo * qo * 4);
    float *Hg = ds_cuda_malloc((size_t)C * C * 4), *Hd = ds_cuda_malloc((size_t)F * F * 4);
    TIME("hessian qkv,o,gate/up", 2.0 * tok * ((double)C * C * 2 + (double)qo * qo), {
        hessian_accum_cuda(Hc, xn, (int)Tm, C, NULL);
        hessian_accum_cuda(Ho, ctx, (int)Tm, qo, NULL);
        hessian_accum_cuda(Hg, xn, (int)Tm, C, NULL); });
    TIME("hessian down", 2.0 * tok * (double)F * F, hessian_accum_cuda(Hd, act, (int)Tm, F, NULL));
    const int nhes = nst;

    /* ---- GPTQ solves with SPD Hessians built from random activations ---- */
    {
        struct { const char *name; int out, in; } lin[7] = {
            {"gptq q", qo, C}, {"gptq k", kv, C}, {"gptq v", kv, C}, {"gptq o", C, qo},
            {"gptq gate", F, C}, {"gptq up", F, C}, {"gptq down", C, F}};
        quant_args qa = {.num_bits = 4, .symmetric = 1, .strategy = QS_GROUP, .group_size = 128, .actorder = QA_STATIC};
        float *Hsrc = ds_cuda_malloc((size_t)F * F * 4), *Hw = ds_cuda_malloc((size_t)F * F * 4);
        float *W = ds_cuda_malloc((size_t)F * C * 4);
        float *wqo = ds_cuda_malloc((size_t)F * C * 4);
        int8_t *qc[7];
        float *scl = ds_cuda_malloc((size_t)F * (F / 128) * 4);
        int32_t *zp = ds_cuda_malloc((size_t)F * (F / 128) * 4);
        uint16_t *xr = dev_rand_bf16((size_t)2 * F * F, 1.0f); /* rows = 2F*F/in >= 2*in: full rank */
        double loss[7] = {0}, ms7[7] = {0};
        /* the 7 solves (the default factorisation: torch's potrf, potrs against
         * the identity, potrf), then q and down again with
         * DONESHOT_GPTQ_FACTOR=flip (potrf + trtri) and =potri (potrf, potri,
         * potrf: the default until 2026-11-28): time and loss */
        static const char *const alt[2] = {"flip", "potri"};
        for (int r = 0; r < 11; r++) {
            const int i = r < 7 ? r : (r - 7) % 2 == 0 ? 0 : 6, flip = r >= 7;
            const char *method = flip ? alt[(r - 7) / 2] : NULL;
            if (flip) setenv("DONESHOT_GPTQ_FACTOR", method, 1);
            int out = lin[i].out, in = lin[i].in;
            if (!flip) qc[i] = ds_cuda_malloc((size_t)out * in);
            gptq_inputs(Hsrc, Hw, W, xr, wg, out, in);
            gptq_cuda_out o = {.wq = wqo, .q = qc[i], .scale = scl, .zp = zp};
            ds_cuda_sync(NULL);
            double t0 = ds_now();
            ds_status s = gptq_quantize_cuda(&qa, W, out, in, Hw, 128, 0.01, DS_DTYPE_BF16, &o, NULL);
            ds_cuda_sync(NULL);
            double t1 = ds_now();
            if (s != DS_OK) { fprintf(stderr, "gptq: %s\n", ds_errmsg()); return 1; }
            if (o.rtn_fallback) printf("warning: %s%s%s fell back to RTN\n", lin[i].name, flip ? " " : "",
                                       flip ? method : "");
            if (flip) { /* an A/B line, not a stage of the layer */
                printf("%s with DONESHOT_GPTQ_FACTOR=%s: %.2f ms (default %.2f ms), loss %.6g vs %.6g (rel %.2e)\n",
                       lin[i].name, method, (t1 - t0) * 1e3, ms7[i], o.loss, loss[i],
                       fabs(o.loss - loss[i]) / loss[i]);
                unsetenv("DONESHOT_GPTQ_FACTOR");
                continue;
            }
            /* nominal FLOPs, the same for every factorisation method (so rates
             * compare across runs): (4/3) in^3 (potrf, potri, potrf) + sweep out*in^2 */
            add(lin[i].name, (t1 - t0) * 1e3, 4.0 / 3 * (double)in * in * in + (double)out * in * in);
            loss[i] = o.loss;
            ms7[i] = (t1 - t0) * 1e3;
        }
        /* where a solve's time goes (DONESHOT_GPTQ_PROFILE: one line each on
         * stderr): q and k (the same width, 4x the rows), gate, down */
        setenv("DONESHOT_GPTQ_PROFILE", "1", 1);
        for (int m = 0; m < 7; m++) {
            if (m != 0 && m != 1 && m != 4 && m != 6) continue;
            const int out = lin[m].out, in = lin[m].in;
            gptq_inputs(Hsrc, Hw, W, xr, wg, out, in);
            gptq_cuda_out o = {.wq = wqo, .q = qc[m], .scale = scl, .zp = zp};
            ds_cuda_sync(NULL);
            fflush(stdout);
            if (gptq_quantize_cuda(&qa, W, out, in, Hw, 128, 0.01, DS_DTYPE_BF16, &o, NULL) != DS_OK) {
                fprintf(stderr, "gptq %s (profiled): %s\n", lin[m].name, ds_errmsg());
                return 1;
            }
        }
        unsetenv("DONESHOT_GPTQ_PROFILE");
        /* q, k, v as one solve of their concatenated rows (the engine's
         * grouped solve, engine_ops.gptq_group) against three solves that
         * share one factorisation (gptq_cuda_set_factor_key: the engine's
         * way before): an A/B line, timing only (the weights are wg's first
         * rows, the Hessian C wide as above) */
        {
            const int R = qo + 2 * kv, outs[3] = {qo, kv, kv};
            int8_t *qg = ds_cuda_malloc((size_t)R * C);
            double ab[2] = {0, 0};
            for (int grp = 0; grp < 2; grp++)
                for (int m = 0; m < (grp ? 1 : 3); m++) {
                    const int out = grp ? R : outs[m];
                    gptq_inputs(Hsrc, Hw, W, xr, wg, out, C);
                    gptq_cuda_out o = {.wq = wqo, .q = qg, .scale = scl, .zp = zp};
                    ds_cuda_sync(NULL);
                    double t0 = ds_now();
                    gptq_cuda_set_factor_key(0x5EED0000u + (uint64_t)grp);
                    ds_status s = gptq_quantize_cuda(&qa, W, out, C, Hw, 128, 0.01, DS_DTYPE_BF16, &o, NULL);
                    ds_cuda_sync(NULL);
                    ab[grp] += (ds_now() - t0) * 1e3;
                    if (s != DS_OK) { fprintf(stderr, "gptq q+k+v: %s\n", ds_errmsg()); return 1; }
                }
            printf("gptq q+k+v as one solve of %d rows: %.2f ms; apart, one factorisation: %.2f ms (%.2fx)\n", R,
                   ab[1], ab[0], ab[0] / ab[1]);
            ds_cuda_free(qg);
        }
        int32_t *packed = ds_cuda_malloc((size_t)F * C / 2);
        begin();
        for (int i = 0; i < 7; i++) quant_pack_rows_cuda(qc[i], lin[i].out, lin[i].in, 4, packed, NULL);
        add("pack int4 (7)", end_ms(), 0);
        for (int i = 0; i < 7; i++) ds_cuda_free(qc[i]);
        ds_cuda_free(Hsrc); ds_cuda_free(Hw); ds_cuda_free(W); ds_cuda_free(wqo); ds_cuda_free(scl);
        ds_cuda_free(zp); ds_cuda_free(xr); ds_cuda_free(packed);
    }

    /* ---- report ---- */
    printf("\n%-24s %12s %12s %10s %8s\n", "stage (per layer)", "ms", "GFLOP", "TFLOP/s", "% peak");
    double fwd = 0, hes = 0, solve = 0;
    for (int i = 0; i < nst; i++) {
        double tf = st[i].flop > 0 ? st[i].flop / (st[i].ms * 1e-3) / 1e12 : 0;
        printf("%-24s %12.2f %12.1f %10.1f %7.1f%%\n", st[i].name, st[i].ms, st[i].flop / 1e9, tf,
               tf > 0 ? 100 * tf / peak : 0.0);
        if (i < nfwd) fwd += st[i].ms;
        else if (i < nhes) hes += st[i].ms;
        else solve += st[i].ms;
    }
    double layer = 2 * fwd + hes + solve;
    {
        const double af = 2.0 * (double)T * T * HS * NH * seqs, tf = af / (attn_gemm_ms * 1e-3) / 1e12;
        printf("\nfwd attention ran the %s path; A/B DONESHOT_ATTN=%s: %.2f ms, %.1f TFLOP/s, %.1f%% peak\n",
               attn_path, attn_other, attn_gemm_ms, tf, 100 * tf / peak);
    }
    printf("fwd residual+rmsnorm fused: %.2f ms; A/B the two launches: %.2f ms (saved %.2f ms a pass)\n", fused_ms,
           unfused_ms, unfused_ms - fused_ms);
    printf("\nper layer: forward %.1f ms (x2 passes), hessian %.1f ms, gptq+pack %.1f ms -> %.1f ms\n",
           fwd, hes, solve, layer);
    printf("projected %d layers: %.1f s (target <= 75 s end to end on one H100)\n", L, L * layer / 1e3);
    ds_cuda_shutdown();
    return 0;
}
