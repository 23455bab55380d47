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
                                    const uint16_t *b, int T, int in, int out, const int *seg, int nseg,
                                    void *stream) {
    (void)seg; (void)nseg; /* the CPU twin's geometry: one GEMM here */
    DS_ASSERT(T >= 0 && in > 0 && out > 0);
    if (T == 0) return;
    float beta = 0.0f;
    if (b) {
        size_t n = (size_t)T * out;
        DS_LAUNCH(bias_fill_kernel, (unsigned)CEIL_DIV(n, (size_t)256), 256, 0, stream, y, b, T, out);
        CUDA_LAUNCH_CHECK();
        beta = 1.0f;
    }
    const float alpha = 1.0f;
    cublasHandle_t h = ds_cublas_get(stream);
    CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, out, T, in, &alpha, w, CUDA_R_16BF, in, x,
                              CUDA_R_16BF, in, &beta, y, CUDA_R_16BF, out, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
}

/* The experts of a MoE group: same (in, out), no bias, T_i rows each (see
 * kernels.h). Same operands and compute type as matmul_forward_cuda; the
 * pointer arrays (device) are {W..., x..., y...}. */
extern "C" void matmul_batched_forward_cuda(const void *const *ptr_h, void *const *ptr_d, const int *T, int n,
                                            int in, int out, const int *seg, int nseg, void *stream) {
    (void)seg; (void)nseg;
    DS_ASSERT(n >= 0 && in > 0 && out > 0);
    if (n == 0) return;
    int same = 1;
    for (int i = 0; i < n; i++) {
        DS_ASSERT(T[i] >= 1);
        same &= T[i] == T[0];
    }
    const float alpha = 1.0f, beta = 0.0f;
    cublasHandle_t h = ds_cublas_get(stream);
    const void *const *A = (const void *const *)ptr_d, *const *B = (const void *const *)ptr_d + n;
    void *const *Cp = ptr_d + 2 * (size_t)n;
    if (same) {
        CUBLAS_CHECK(cublasGemmBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, out, T[0], in, &alpha, A, CUDA_R_16BF, in, B,
                                         CUDA_R_16BF, in, &beta, Cp, CUDA_R_16BF, out, n, CUBLAS_COMPUTE_32F,
                                         CUBLAS_GEMM_DEFAULT));
        return;
    }
#if defined(CUBLAS_VERSION) && CUBLAS_VERSION >= 120500
    static int grouped_ok = 1; /* cleared when this cuBLAS refuses the shapes or types */
    if (grouped_ok) {
        cublasOperation_t *ta = (cublasOperation_t *)xmalloc(sizeof(cublasOperation_t) * 2 * (size_t)n);
        int *iv = (int *)xmalloc(sizeof(int) * 7 * (size_t)n);
        float *sc = (float *)xmalloc(sizeof(float) * 2 * (size_t)n);
        int *m_a = iv, *n_a = iv + n, *k_a = iv + 2 * n, *lda = iv + 3 * n, *ldb = iv + 4 * n, *ldc = iv + 5 * n,
            *gs = iv + 6 * n;
        for (int i = 0; i < n; i++) {
            ta[i] = CUBLAS_OP_T;
            ta[n + i] = CUBLAS_OP_N;
            m_a[i] = out; n_a[i] = T[i]; k_a[i] = in;
            lda[i] = in; ldb[i] = in; ldc[i] = out;
            gs[i] = 1;
            sc[i] = alpha; sc[n + i] = beta;
        }
        cublasStatus_t st = cublasGemmGroupedBatchedEx(h, ta, ta + n, m_a, n_a, k_a, sc, A, CUDA_R_16BF, lda, B,
                                                       CUDA_R_16BF, ldb, sc + n, Cp, CUDA_R_16BF, ldc, n, gs,
                                                       CUBLAS_COMPUTE_32F);
        free(ta); free(iv); free(sc);
        if (st == CUBLAS_STATUS_SUCCESS) return;
        if (st != CUBLAS_STATUS_NOT_SUPPORTED) CUBLAS_CHECK(st);
        grouped_ok = 0;
        /* once a process: a benchmark log must show that the routed expert GEMMs took the slow path */
        ds_warn("cublasGemmGroupedBatchedEx does not take these bf16 shapes on this cuBLAS: the routed MoE expert "
                "GEMMs run one cublasGemmEx per expert (slower)");
    }
#endif
    for (int i = 0; i < n; i++)
        CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, out, T[i], in, &alpha, ptr_h[i], CUDA_R_16BF, in,
                                  ptr_h[n + i], CUDA_R_16BF, in, &beta, (void *)ptr_h[2 * n + i], CUDA_R_16BF, out,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
