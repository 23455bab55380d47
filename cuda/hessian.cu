/*
 * hessian.cu - Hessian accumulation H += 2 X^T X from bf16 activations;
 * twin of hessian_accum_cpu.
 * Column-major view (see matmul.cu): X row-major [rows, n] is the col-major
 * n x rows matrix X^T (ld n), so H = X^T X = (X^T)(X^T)^T is
 *   cublasGemmEx(OP_N, OP_T, m=n, n=n, k=rows, A=X (lda n), B=X (ldb n), C=H (ldc n)).
 * bf16 x bf16 products are exact in f32, so with CUBLAS_COMPUTE_32F this
 * computes the same products as the CPU's f32 ssyrk on upcast values; only
 * the summation order differs. alpha = 2 is an exact scaling.
 *
 * f64 sums (hessian_accum_f64_cuda, the engine's path): only the upper
 * triangle j >= i, as hessian_accum_cpu. cuBLAS has no bf16 SYRK, so the
 * triangle is covered by tile rows of DS_HESS_TILE (1024) rows: tile row a
 * (rows r0 = a*1024 .. r0+b, b = min(1024, n - r0)) is one GemmEx
 *   S[b, w] = 2 X[:, r0:r0+b]^T X[:, r0:n]   (w = n - r0; OP_N, OP_T,
 *   m=w, n=b, k=rows, A=B=X+r0 (ld n), C=S (ldc w): S row-major [b][w])
 * into the f32 scratch (one tile row: min(n,1024) x n floats), then a kernel
 * adds S's upper part (j >= i) into H in f64. Products: sum_a b*w =
 * n^2/2 + about n*1024/2 instead of n^2 (n <= 1024: one GEMM, all n^2);
 * the diagonal tiles' lower halves are computed but never added, so H's
 * strict lower triangle keeps what it held (the engine zeroes H: 0).
 * Readers take the upper triangle only: hessian_to_f32_cuda mirrors it into
 * the f32 GPTQ input; the host copies for an MPI reduction are summed whole
 * (the lower zeros stay zeros) and come back through hessian_to_f32_cuda.
 * The tile rows run one after another on the stream (the scratch is reused);
 * short last rows use fewer SMs than one big GEMM would: unmeasured.
 *
 * f32 sums (hessian_accum_cuda, bench and twin tests): one full GEMM, both
 * triangles; tiles may sum (i,j) and (j,i) in different orders, so H can be
 * asymmetric by a rounding: hessian_symmetrize_cuda copies the upper
 * triangle down when it matters.
 */
#include "cuda_common.cuh"

extern "C" void hessian_accum_cuda(float *H, const uint16_t *X, int rows, int n, void *stream) {
    DS_ASSERT(rows >= 0 && n > 0);
    if (rows == 0) return;
    const float alpha = 2.0f, beta = 1.0f;
    cublasHandle_t h = ds_cublas_get(stream);
    CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, n, n, rows, &alpha, X, CUDA_R_16BF, n, X,
                              CUDA_R_16BF, n, &beta, H, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
}

/* H[(r0+i)*n + r0+j] += S[i*w + j] for the tile row's upper part j >= i
 * (i < b, j < w). Grid (x: column blocks, y: rows i); coalesced in j. */
static __global__ void add_upper_f32_to_f64_kernel(double *H, const float *S, int r0, int b, int w, int n) {
    for (int i = blockIdx.y; i < b; i += gridDim.y) {
        double *hr = H + (size_t)(r0 + i) * n + r0;
        const float *sr = S + (size_t)i * w;
        for (int j = i + blockIdx.x * blockDim.x + threadIdx.x; j < w; j += gridDim.x * blockDim.x)
            hr[j] += (double)sr[j];
    }
}

extern "C" void hessian_accum_f64_cuda(double *H, const uint16_t *X, const int *seg, int nseg, int n,
                                       float *scratch, void *stream) {
    DS_ASSERT(nseg >= 0 && n > 0);
    int rows = 0;
    for (int i = 0; i < nseg; i++) { DS_ASSERT(seg[i] >= 0); rows += seg[i]; }
    if (rows == 0) return;
    const float alpha = 2.0f, beta = 0.0f;
    cublasHandle_t h = ds_cublas_get(stream);
    for (int r0 = 0; r0 < n; r0 += DS_HESS_TILE) {
        const int b = DS_MIN(DS_HESS_TILE, n - r0), w = n - r0;
        CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, w, b, rows, &alpha, X + r0, CUDA_R_16BF, n,
                                  X + r0, CUDA_R_16BF, n, &beta, scratch, CUDA_R_32F, w, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
        dim3 grid((unsigned)DS_MIN(CEIL_DIV(w, 256), 8), (unsigned)b);
        DS_LAUNCH(add_upper_f32_to_f64_kernel, grid, 256, 0, stream, H, scratch, r0, b, w, n);
        CUDA_LAUNCH_CHECK();
    }
}

/* 32x32 tiles of the strict lower triangle: H[j][i] = H[i][j] for i < j. */
static __global__ void symmetrize_kernel(float *H, int n) {
    int i = blockIdx.y * 32 + threadIdx.y; /* row of the upper element */
    int j = blockIdx.x * 32 + threadIdx.x;
    if (blockIdx.x < blockIdx.y) return;
    if (i < n && j < n && i < j) H[(size_t)j * n + i] = H[(size_t)i * n + j];
}

extern "C" void hessian_symmetrize_cuda(float *H, int n, void *stream) {
    DS_ASSERT(n > 0);
    dim3 grid(CEIL_DIV(n, 32), CEIL_DIV(n, 32)), block(32, 32);
    DS_LAUNCH(symmetrize_kernel, grid, block, 0, stream, H, n);
    CUDA_LAUNCH_CHECK();
}

/* 32x32 tiles (by, bx), bx >= by, of H's upper triangle: each element j >= i
 * is converted once, written at (i, j) and, through a shared-memory
 * transpose, at (j, i) for j > i; the lower triangle of Hd is never read.
 * Block 32 x 8. */
static __global__ void to_f32_mirror_kernel(float *Hf, const double *Hd, int n, double divisor) {
    __shared__ float t[32][33];
    const int by = blockIdx.y, bx = blockIdx.x, tx = threadIdx.x;
    if (bx < by) return;
    for (int r = threadIdx.y; r < 32; r += 8) {
        const int i = by * 32 + r, j = bx * 32 + tx;
        float v = 0.0f;
        if (i < n && j < n && j >= i) {
            v = (float)__ddiv_rn(Hd[(size_t)i * n + j], divisor);
            Hf[(size_t)i * n + j] = v;
        }
        t[r][tx] = v;
    }
    __syncthreads();
    for (int r = threadIdx.y; r < 32; r += 8) {
        const int j = bx * 32 + r, i = by * 32 + tx; /* Hf[j][i] = H[i][j] = t[tx][r] */
        if (i < n && j < n && j > i) Hf[(size_t)j * n + i] = t[tx][r];
    }
}

extern "C" void hessian_to_f32_cuda(float *Hf, const double *Hd, int n, double divisor, void *stream) {
    DS_ASSERT(n >= 0);
    if (!n) return;
    dim3 grid(CEIL_DIV(n, 32), CEIL_DIV(n, 32)), block(32, 8);
    DS_LAUNCH(to_f32_mirror_kernel, grid, block, 0, stream, Hf, Hd, n, divisor);
    CUDA_LAUNCH_CHECK();
}

/* Static activation observer: per thread the max of |x| as bf16 bit patterns
 * (sign cleared; for non-negative non-NaN values the integer order is the
 * float order), a warp max, one atomicMax per warp on the f32 bit pattern
 * (bf16 bits << 16: the same float). NaN (|bits| > 0x7F80) is skipped, as
 * fabsf(NaN) > m is false in act_absmax_cpu; Inf counts. */
static __global__ void act_absmax_kernel(unsigned int *amax, const uint16_t *X, size_t n) {
    unsigned int m = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const unsigned int a = X[i] & 0x7FFFu;
        if (a <= 0x7F80u && a > m) m = a;
    }
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned int v = __shfl_down_sync(0xFFFFFFFFu, m, o);
        m = v > m ? v : m;
    }
    if ((threadIdx.x & 31) == 0 && m) atomicMax(amax, m << 16);
}

extern "C" void act_absmax_cuda(float *amax, const uint16_t *X, size_t n, void *stream) {
    if (!n) return;
    size_t blocks = CEIL_DIV(n, (size_t)256);
    if (blocks > 1024) blocks = 1024;
    DS_LAUNCH(act_absmax_kernel, (unsigned)blocks, 256, 0, stream, (unsigned int *)amax, X, n);
    CUDA_LAUNCH_CHECK();
}
