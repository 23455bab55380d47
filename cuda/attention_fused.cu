/*
 * attention_fused.cu - the fused causal GQA attention kernel (one of
 * attention.cu's two paths; attention_fused in cuda/kernels.h picks it),
 * twin of attention_forward_cpu per sequence. HS 64 or 128, opt-in with
 * DONESHOT_ATTN=fused until a GPU run has verified it: it has never run on a
 * GPU; tests/test_kernels' simulator build runs it on the CPU
 * (tests/cuda_sim.h) against the twin.
 *
 * One block of FA_THREADS = 4 warps per (head h, query tile of FA_BM = 64
 * rows, sequence); head h reads kv head h / (NH/NKV). No T x T buffer: the
 * workspace is ~0. Per block, two passes over the key tiles 0..qt (FA_BN =
 * 64 keys; causal: none past the diagonal tile; K/V tiles by cp.async,
 * zero-filled past T):
 *   pass 1: S = Q K^T on tensor cores (mma.sync m16n8k16 bf16, fp32
 *           accumulate), s = S * HS^-0.5 (one f32 rounding, as the twin's
 *           sgemm alpha), keys j > i masked; running row max m and sum
 *           l = sum exp(s - m) (online softmax: l rescaled by exp(m_old - m));
 *   pass 2: S recomputed (the same instructions: bit-identical s), P =
 *           bf16(exp(s - m) * (1 / l)) - the twin's (and HF eager's) rounding
 *           point, P rounded after normalising - and ctx += P V on tensor
 *           cores in fp32; ctx rounded once to bf16 and written straight into
 *           the [T, NH*HS] o_proj input (same strides as the GEMM path).
 *   The max is order-independent, so m equals the twin's exactly; l differs
 *   from the twin's sequential sum by f32 rounding only (a P may land 1 bf16
 *   ulp apart when e/l sits on a rounding tie, as with the GEMM path).
 *   Cost: 1.5x the useful FLOPs (Q K^T twice), the price of HF's rounding.
 */
#include "cuda_common.cuh"
#include "ptx.cuh"

#define FA_BM 64                    /* query rows per block (16 per warp) */
#define FA_BN 64                    /* keys per tile (== FA_BM: tile qt holds the diagonal) */
#define FA_THREADS 128

static __device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    return (uint32_t)f32_to_bf16_dev(lo) | ((uint32_t)f32_to_bf16_dev(hi) << 16);
}

/* rows [row0, row0 + FA_BN) of a [T, ld] bf16 matrix (HS columns from src) into
 * dst [FA_BN][HS + 8] by 16-byte cp.async; rows >= T zero-filled (src-size 0). */
template <int HS>
static __device__ __forceinline__ void fa_load_tile(uint16_t *dst, const uint16_t *src, int ld, int row0, int T) {
    constexpr int CPR = HS / 8, LD = HS + 8;
    for (int c = threadIdx.x; c < FA_BN * CPR; c += FA_THREADS) {
        const int r = c / CPR, col = (c % CPR) * 8, gr = row0 + r;
        const uint16_t *s = src + (size_t)(gr < T ? gr : 0) * ld + col;
        cp_async16(dst + r * LD + col, s, gr < T ? 16 : 0);
    }
}

/* s[8][4] = mask(Q_w K_tile^T * scale) for this warp's 16 rows (r0 = row of
 * d0/d1, r0 + 8 of d2/d3) and keys key0 + 8j + 2t (+1): -inf where key > row. */
template <int HS>
static __device__ __forceinline__ void fa_scores(float s[FA_BN / 8][4], const uint32_t qf[HS / 16][4],
                                                 const uint16_t *Ks, int key0, int r0, float scale) {
    constexpr int LD = HS + 8;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int j = 0; j < FA_BN / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++)
#pragma unroll
        for (int j = 0; j < FA_BN / 8; j++) {
            /* B[k = dim][n = key] = K[key][dim]: two consecutive dims of one key row */
            const uint16_t *kr = Ks + (j * 8 + g) * LD + kk * 16 + 2 * t;
            mma_m16n8k16_bf16(s[j], qf[kk], *(const uint32_t *)kr, *(const uint32_t *)(kr + 8));
        }
#pragma unroll
    for (int j = 0; j < FA_BN / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int key = key0 + j * 8 + 2 * t + (e & 1), row = r0 + (e >> 1) * 8;
            const float x = __fmul_rn(s[j][e], scale); /* no FMA contraction into s - m */
            s[j][e] = key > row ? -INFINITY : x;
        }
}

/* grid (NH, ceil(T / FA_BM), B); query tiles issued last-first (the longest
 * rows start first). out/q: [B*T, NH*HS], k/v: [B*T, NKV*HS], bf16. */
template <int HS>
static __global__ void __launch_bounds__(FA_THREADS)
attention_fused_kernel(uint16_t *out, const uint16_t *q, const uint16_t *k, const uint16_t *v, int T, int NH,
                       int NKV, float scale) {
    constexpr int LD = HS + 8; /* +16 bytes a row: conflict-free fragment loads and ldmatrix */
    __shared__ __align__(16) uint16_t Ks[FA_BN * LD];
    __shared__ __align__(16) uint16_t Vs[FA_BN * LD]; /* pass 1: the second K buffer */
    const int h = blockIdx.x, qt = (int)gridDim.y - 1 - (int)blockIdx.y, b = blockIdx.z;
    const int qs = NH * HS, ks = NKV * HS, kvh = h / (NH / NKV);
    const uint16_t *qb = q + (size_t)b * T * qs + (size_t)h * HS;
    const uint16_t *kb = k + (size_t)b * T * ks + (size_t)kvh * HS;
    const uint16_t *vb = v + (size_t)b * T * ks + (size_t)kvh * HS;
    uint16_t *ob = out + (size_t)b * T * qs + (size_t)h * HS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int r0 = qt * FA_BM + warp * 16 + g, r1 = r0 + 8; /* this thread's two rows */

    /* Q fragments (A operand) for the whole head dim, straight from global memory */
    uint32_t qf[HS / 16][4];
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++) {
        const int c = kk * 16 + 2 * t;
        qf[kk][0] = r0 < T ? *(const uint32_t *)(qb + (size_t)r0 * qs + c) : 0u;
        qf[kk][1] = r1 < T ? *(const uint32_t *)(qb + (size_t)r1 * qs + c) : 0u;
        qf[kk][2] = r0 < T ? *(const uint32_t *)(qb + (size_t)r0 * qs + c + 8) : 0u;
        qf[kk][3] = r1 < T ? *(const uint32_t *)(qb + (size_t)r1 * qs + c + 8) : 0u;
    }

    /* pass 1: row max and sum, K double-buffered in Ks / Vs */
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float s[FA_BN / 8][4];
    fa_load_tile<HS>(Ks, kb, ks, 0, T);
    cp_async_commit();
    for (int kt = 0; kt <= qt; kt++) {
        uint16_t *cur = (kt & 1) ? Vs : Ks;
        if (kt < qt) fa_load_tile<HS>((kt & 1) ? Ks : Vs, kb, ks, (kt + 1) * FA_BN, T);
        cp_async_commit(); /* possibly empty: keeps the group count uniform */
        cp_async_wait<1>();
        __syncthreads();
        fa_scores<HS>(s, qf, cur, kt * FA_BN, r0, scale);
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < FA_BN / 8; j++) mx = fmaxf(mx, fmaxf(s[j][2 * hr], s[j][2 * hr + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mn = fmaxf(m[hr], mx);
            if (mn == -INFINITY) continue; /* row fully masked so far (not reached: key 0 <= row) */
            float add = 0.0f;
#pragma unroll
            for (int j = 0; j < FA_BN / 8; j++)
                add += expf(__fsub_rn(s[j][2 * hr], mn)) + expf(__fsub_rn(s[j][2 * hr + 1], mn));
            l[hr] = __fmaf_rn(l[hr], expf(__fsub_rn(m[hr], mn)), add);
            m[hr] = mn;
        }
        __syncthreads(); /* cur is refilled two tiles on */
    }
    float inv[2];
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        l[hr] += __shfl_xor_sync(0xffffffffu, l[hr], 1);
        l[hr] += __shfl_xor_sync(0xffffffffu, l[hr], 2);
        inv[hr] = 1.0f / l[hr];
    }
    cp_async_wait<0>();

    /* pass 2: P = bf16(exp(s - m) / l), ctx += P V */
    float o[HS / 8][4];
#pragma unroll
    for (int n = 0; n < HS / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    fa_load_tile<HS>(Ks, kb, ks, 0, T);
    cp_async_commit();
    fa_load_tile<HS>(Vs, vb, ks, 0, T);
    cp_async_commit();
    for (int kt = 0; kt <= qt; kt++) {
        cp_async_wait<1>(); /* K(kt) landed; V(kt) may be in flight */
        __syncthreads();
        fa_scores<HS>(s, qf, Ks, kt * FA_BN, r0, scale);
        uint32_t pf[FA_BN / 16][4]; /* P as A fragments: S's D layout is A's, two n8 tiles per k16 */
#pragma unroll
        for (int kc = 0; kc < FA_BN / 16; kc++)
#pragma unroll
            for (int half = 0; half < 2; half++) {
                float p[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float x = s[2 * kc + half][e];
                    p[e] = x == -INFINITY ? 0.0f : __fmul_rn(expf(__fsub_rn(x, m[e >> 1])), inv[e >> 1]);
                }
                pf[kc][2 * half] = pack_bf16(p[0], p[1]);     /* row g */
                pf[kc][2 * half + 1] = pack_bf16(p[2], p[3]); /* row g + 8 */
            }
        __syncthreads(); /* every warp is done with Ks */
        if (kt < qt) fa_load_tile<HS>(Ks, kb, ks, (kt + 1) * FA_BN, T);
        cp_async_commit();
        cp_async_wait<1>(); /* V(kt) landed; K(kt + 1) may be in flight */
        __syncthreads();
#pragma unroll
        for (int kc = 0; kc < FA_BN / 16; kc++)
#pragma unroll
            for (int np = 0; np < HS / 16; np++) {
                /* B[k = key][n = dim] = V[key][dim], stored row-major by key:
                 * ldmatrix.x4.trans of the 8x8 blocks (keys +0/+8) x (dims +0/+8) */
                const int row = kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, col = np * 16 + (lane >> 4) * 8;
                uint32_t b0, b1, b2, b3;
                ldmatrix_x4_trans(Vs + row * LD + col, b0, b1, b2, b3);
                mma_m16n8k16_bf16(o[2 * np], pf[kc], b0, b1);
                mma_m16n8k16_bf16(o[2 * np + 1], pf[kc], b2, b3);
            }
        __syncthreads(); /* every warp is done with Vs */
        if (kt < qt) fa_load_tile<HS>(Vs, vb, ks, (kt + 1) * FA_BN, T);
        cp_async_commit();
    }
    cp_async_wait<0>();
#pragma unroll
    for (int n = 0; n < HS / 8; n++) {
        const int c = n * 8 + 2 * t;
        if (r0 < T) *(uint32_t *)(ob + (size_t)r0 * qs + c) = pack_bf16(o[n][0], o[n][1]);
        if (r1 < T) *(uint32_t *)(ob + (size_t)r1 * qs + c) = pack_bf16(o[n][2], o[n][3]);
    }
}

template <int HS>
static void attention_fused_launch(uint16_t *out, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B,
                                   int T, int NH, int NKV, float scale, void *stream) {
    const dim3 grid((unsigned)NH, (unsigned)CEIL_DIV(T, FA_BM), (unsigned)B);
    DS_LAUNCH(attention_fused_kernel<HS>, grid, FA_THREADS, 0, stream, out, q, k, v, T, NH, NKV, scale);
    CUDA_LAUNCH_CHECK();
}

extern "C" void attention_fused_cuda(uint16_t *out, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                                     int B, int T, int NH, int NKV, int HS, void *stream) {
    DS_ASSERT(B >= 0 && B <= 65535 && T > 0 && T <= 65535 && NH > 0 && NKV > 0 && NH % NKV == 0);
    DS_ASSERT(HS == 64 || HS == 128);
    /* cp.async moves 16-byte chunks of K/V rows; Q loads and ctx stores are 4 bytes */
    DS_ASSERT(((uintptr_t)k & 15) == 0 && ((uintptr_t)v & 15) == 0 && ((uintptr_t)q & 3) == 0 &&
              ((uintptr_t)out & 3) == 0);
    if (B == 0) return;
    const float scale = 1.0f / sqrtf((float)HS); /* same expression as the CPU twin */
    if (HS == 64) attention_fused_launch<64>(out, q, k, v, B, T, NH, NKV, scale, stream);
    else attention_fused_launch<128>(out, q, k, v, B, T, NH, NKV, scale, stream);
}
