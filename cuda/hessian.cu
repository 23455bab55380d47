/*
 * hessian.cu - Hessian accumulation H += 2 X^T X from bf16 activations;
 * twin of hessian_accum_cpu.
 * Column-major view (see matmul.cu): X row-major [rows, n] is the col-major
 * n x rows matrix X^T (ld n), so H = X^T X = (X^T)(X^T)^T is
 *   cublasGemmEx(OP_N, OP_T, m=n, n=n, k=rows, A=X (lda n), B=X (ldb n), C=H (ldc n)).
 * bf16 x bf16 products are exact in f32, so with CUBLAS_COMPUTE_32F this
 * computes the same products as the CPU's f32 ssyrk on upcast values; only
 * the summation order differs. alpha = 2 is an exact scaling.
 * Symmetry: the GEMM computes both triangles (2x the FLOPs of a SYRK; cuBLAS
 * has no bf16 SYRK) and tiles may sum (i,j) and (j,i) in different orders,
 * so H can be asymmetric by a rounding: hessian_symmetrize_cuda copies the
 * upper triangle down when it matters (the GPTQ solve reads one triangle).
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

static __global__ void add_f32_to_f64_kernel(double *H, const float *S, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        H[i] += (double)S[i];
}

extern "C" void hessian_accum_f64_cuda(double *H, const uint16_t *X, int rows, int n, float *scratch,
                                       void *stream) {
    DS_ASSERT(rows >= 0 && n > 0);
    if (rows == 0) return;
    const float alpha = 2.0f, beta = 0.0f;
    cublasHandle_t h = ds_cublas_get(stream);
    CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, n, n, rows, &alpha, X, CUDA_R_16BF, n, X,
                              CUDA_R_16BF, n, &beta, scratch, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
    size_t nn = (size_t)n * n;
    size_t blocks = CEIL_DIV(nn, (size_t)256);
    if (blocks > 8192) blocks = 8192;
    add_f32_to_f64_kernel<<<(unsigned)blocks, 256, 0, DS_STREAM(stream)>>>(H, scratch, nn);
    CUDA_LAUNCH_CHECK();
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
    symmetrize_kernel<<<grid, block, 0, DS_STREAM(stream)>>>(H, n);
    CUDA_LAUNCH_CHECK();
}

static __global__ void to_f32_kernel(float *Hf, const double *Hd, size_t n, double divisor) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        Hf[i] = (float)__ddiv_rn(Hd[i], divisor);
}

extern "C" void hessian_to_f32_cuda(float *Hf, const double *Hd, size_t n, double divisor, void *stream) {
    if (!n) return;
    size_t blocks = CEIL_DIV(n, (size_t)256);
    if (blocks > 8192) blocks = 8192;
    to_f32_kernel<<<(unsigned)blocks, 256, 0, DS_STREAM(stream)>>>(Hf, Hd, n, divisor);
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
    act_absmax_kernel<<<(unsigned)blocks, 256, 0, DS_STREAM(stream)>>>((unsigned int *)amax, X, n);
    CUDA_LAUNCH_CHECK();
}
