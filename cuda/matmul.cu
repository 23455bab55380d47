/*
 * matmul.cu - Linear layers on tensor cores; twin of matmul_forward_cpu.
 *
 * The column-major trick (the one place it is spelled out; attention.cu and
 * hessian.cu reuse it): cuBLAS is column-major, so a row-major M x N array
 * with leading dimension ld IS the column-major N x M array (its transpose)
 * with the same ld. For y[T,out] = x[T,in] W[out,in]^T we therefore ask for
 * the column-major product  Y^T (out x T) = W (out x in) * X^T (in x T):
 *   W   row-major [out,in] = col-major W^T (in x out, lda=in)  -> OP_T gives W
 *   X   row-major [T,in]   = col-major X^T (in x T,  ldb=in)   -> OP_N
 *   Y   row-major [T,out]  = col-major Y^T (out x T, ldc=out)
 *   cublasGemmEx(OP_T, OP_N, m=out, n=T, k=in, ...)
 * bf16 inputs and output, CUBLAS_COMPUTE_32F (fp32 accumulation, the single
 * rounding to bf16 at the end = HF's rounding point).
 * Bias: y is first filled with the broadcast bias rows and the GEMM runs with
 * beta = 1, so cuBLAS computes acc + b in f32 and rounds once, exactly the
 * CPU twin's "bias added before the rounding" (b is bf16, hence exact).
 */
#include "cuda_common.cuh"

static __global__ void bias_fill_kernel(uint16_t *y, const uint16_t *b, int T, int out) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < (size_t)T * out) y[i] = b[i % out];
}

extern "C" void matmul_forward_cuda(uint16_t *y, const uint16_t *x, const uint16_t *w,
                                    const uint16_t *b, int T, int in, int out, void *stream) {
    DS_ASSERT(T >= 0 && in > 0 && out > 0);
    if (T == 0) return;
    float beta = 0.0f;
    if (b) {
        size_t n = (size_t)T * out;
        bias_fill_kernel<<<(unsigned)CEIL_DIV(n, (size_t)256), 256, 0, DS_STREAM(stream)>>>(y, b, T, out);
        CUDA_LAUNCH_CHECK();
        beta = 1.0f;
    }
    const float alpha = 1.0f;
    cublasHandle_t h = ds_cublas_get(stream);
    CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, out, T, in, &alpha, w, CUDA_R_16BF, in, x,
                              CUDA_R_16BF, in, &beta, y, CUDA_R_16BF, out, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
}
