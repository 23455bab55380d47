/*
 * cuda_sim_api.h - the CUDA runtime, cuBLAS and cuSOLVER calls that cuda/
 * makes, for the simulator (tests/cuda_sim.h): device memory is host memory
 * (cudaMalloc poisons it: 0xFF bytes, NaN as bf16/f32), copies are memcpy,
 * streams and events are placeholders (every call completes before it
 * returns). Reference semantics, from the cuBLAS and cuSOLVER documentation:
 *   GEMMs (GemmEx, GemmStridedBatchedEx, GemmBatchedEx,
 *   GemmGroupedBatchedEx, Sgemm): column-major C[m,n] = alpha op(A)[m,k]
 *   op(B)[k,n] + beta C (C not read when beta == 0), A(i,l) at A[i + l*lda]
 *   (op N) or A[l + i*lda] (op T); leading dimensions checked as cuBLAS does
 *   (CUBLAS_STATUS_INVALID_VALUE); products summed in double, rounded to f32
 *   and, for a bf16 C, to bf16 by common.h's f32_to_bf16 (nearest even);
 *   potrf / potri / potrs / trtri: LAPACK's spotrf / spotri / spotrs / strtri
 *   (column-major, the same uplo, devInfo as LAPACK's info).
 * Not the hardware's arithmetic: results are compared with the CPU twins'
 * tolerances, as on a GPU.
 */
#ifndef DS_CUDA_SIM_API_H
#define DS_CUDA_SIM_API_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

extern "C" { /* liblapacke (the project links it); declared here to keep <complex.h> out of C++ */
int LAPACKE_spotrf_work(int layout, char uplo, int n, float *a, int lda);
int LAPACKE_spotri_work(int layout, char uplo, int n, float *a, int lda);
int LAPACKE_spotrs_work(int layout, char uplo, int n, int nrhs, const float *a, int lda, float *b, int ldb);
int LAPACKE_strtri_work(int layout, char uplo, char diag, int n, float *a, int lda);
}

/* ---------------- runtime ---------------- */
typedef enum cudaError { cudaSuccess = 0, cudaErrorInvalidValue = 1 } cudaError_t;
typedef void *cudaStream_t;
typedef void *cudaEvent_t;
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
#define cudaStreamNonBlocking 1u
struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount;
    size_t totalGlobalMem;
};

inline cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "CUDA simulator (tests/cuda_sim.h, on the CPU)");
    p->major = 9;
    p->multiProcessorCount = 132;
    p->totalGlobalMem = (size_t)80 << 30;
    return cudaSuccess;
}
inline cudaError_t cudaGetLastError(void) { return cudaSuccess; }
inline const char *cudaGetErrorName(cudaError_t e) { return e ? "cudaErrorInvalidValue" : "cudaSuccess"; }
inline const char *cudaGetErrorString(cudaError_t e) { return e ? "invalid argument" : "no error"; }
inline cudaError_t cudaMalloc(void **p, size_t n) {
    *p = malloc(n ? n : 1);
    if (!*p) return cudaErrorInvalidValue;
    memset(*p, 0xFF, n); /* uninitialised device memory reads as NaN */
    return cudaSuccess;
}
inline cudaError_t cudaFree(void *p) {
    free(p);
    return cudaSuccess;
}
inline cudaError_t cudaMallocHost(void **p, size_t n) { return cudaMalloc(p, n); }
inline cudaError_t cudaFreeHost(void *p) { return cudaFree(p); }
inline cudaError_t cudaMemGetInfo(size_t *f, size_t *t) {
    *f = *t = (size_t)80 << 30;
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind, cudaStream_t = 0) {
    if (n) memmove(d, s, n);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpy2DAsync(void *d, size_t dpitch, const void *s, size_t spitch, size_t width,
                                     size_t height, cudaMemcpyKind, cudaStream_t = 0) {
    if (width > dpitch || width > spitch) return cudaErrorInvalidValue;
    for (size_t r = 0; r < height; r++) memmove((char *)d + r * dpitch, (const char *)s + r * spitch, width);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind k) {
    return cudaMemcpyAsync(d, s, n, k);
}
inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t = 0) {
    if (n) memset(p, v, n);
    return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) {
    *s = malloc(1);
    return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
    free(s);
    return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
inline cudaError_t cudaEventCreate(cudaEvent_t *e) {
    *e = malloc(1);
    return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
    free(e);
    return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t = 0) { return cudaSuccess; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t, cudaEvent_t) {
    *ms = 0.0f;
    return cudaSuccess;
}
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }
template <class F> inline cudaError_t cudaFuncSetAttribute(F f, cudaFuncAttribute a, int v) {
    if (a != cudaFuncAttributeMaxDynamicSharedMemorySize || v < 0 || (size_t)v > sim::smem_optin_limit())
        return cudaErrorInvalidValue;
    sim::set_smem_max(reinterpret_cast<const void *>(f), (size_t)v);
    return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int *d) {
    *d = 0;
    return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int dev) {
    if (dev != 0 || a != cudaDevAttrMaxSharedMemoryPerBlockOptin) return cudaErrorInvalidValue;
    *v = (int)sim::smem_optin_limit();
    return cudaSuccess;
}

/* ---------------- cuBLAS ---------------- */
#define CUBLAS_VERSION 120500 /* the grouped-batched path of matmul.cu is simulated too */
typedef struct sim_handle *cublasHandle_t;
typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_NOT_SUPPORTED = 15
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_16BF = 14 } cudaDataType;
typedef cudaDataType cudaDataType_t;
typedef enum { CUBLAS_COMPUTE_32F = 68 } cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;
typedef enum { CUBLAS_FILL_MODE_LOWER = 0, CUBLAS_FILL_MODE_UPPER = 1 } cublasFillMode_t;
typedef enum { CUBLAS_DIAG_NON_UNIT = 0, CUBLAS_DIAG_UNIT = 1 } cublasDiagType_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0 } cublasMath_t;

inline cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = (cublasHandle_t)malloc(1);
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasDestroy(cublasHandle_t h) {
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetWorkspace(cublasHandle_t, void *, size_t) { return CUBLAS_STATUS_SUCCESS; }
inline const char *cublasGetStatusString(cublasStatus_t s) {
    return s == CUBLAS_STATUS_SUCCESS ? "success" : s == CUBLAS_STATUS_INVALID_VALUE ? "invalid value" : "error";
}

namespace sim {
inline double blas_ld(const void *p, cudaDataType t, size_t i) {
    return t == CUDA_R_32F ? ((const float *)p)[i] : bf16_to_f32(((const uint16_t *)p)[i]);
}
inline void blas_st(void *p, cudaDataType t, size_t i, double v) {
    if (t == CUDA_R_32F) ((float *)p)[i] = (float)v;
    else ((uint16_t *)p)[i] = f32_to_bf16((float)v);
}
/* one GEMM, cuBLAS's column-major definition */
inline cublasStatus_t gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const void *A,
                           cudaDataType at, long long lda, const void *B, cudaDataType bt, long long ldb, float beta,
                           void *C, cudaDataType ct, long long ldc) {
    if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
    if (lda < (ta == CUBLAS_OP_N ? (m > 1 ? m : 1) : (k > 1 ? k : 1))) return CUBLAS_STATUS_INVALID_VALUE;
    if (ldb < (tb == CUBLAS_OP_N ? (k > 1 ? k : 1) : (n > 1 ? n : 1))) return CUBLAS_STATUS_INVALID_VALUE;
    if (ldc < (m > 1 ? m : 1)) return CUBLAS_STATUS_INVALID_VALUE;
    std::vector<double> a((size_t)m * k), b((size_t)k); /* op(A) row-major, one column of op(B) */
    for (int i = 0; i < m; i++)
        for (int l = 0; l < k; l++)
            a[(size_t)i * k + l] = blas_ld(A, at, ta == CUBLAS_OP_N ? i + (size_t)l * lda : l + (size_t)i * lda);
    for (int j = 0; j < n; j++) {
        for (int l = 0; l < k; l++)
            b[(size_t)l] = blas_ld(B, bt, tb == CUBLAS_OP_N ? l + (size_t)j * ldb : j + (size_t)l * ldb);
        for (int i = 0; i < m; i++) {
            double s = 0;
            const double *ar = &a[(size_t)i * k];
            for (int l = 0; l < k; l++) s += ar[l] * b[(size_t)l];
            const size_t ci = i + (size_t)j * ldc;
            double v = (double)alpha * s;
            if (beta != 0.0f) v += (double)beta * blas_ld(C, ct, ci);
            blas_st(C, ct, ci, v);
        }
    }
    return CUBLAS_STATUS_SUCCESS;
}
} /* namespace sim */

inline cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                   const void *alpha, const void *A, cudaDataType at, int lda, const void *B,
                                   cudaDataType bt, int ldb, const void *beta, void *C, cudaDataType ct, int ldc,
                                   cublasComputeType_t, cublasGemmAlgo_t) {
    return sim::gemm(ta, tb, m, n, k, *(const float *)alpha, A, at, lda, B, bt, ldb, *(const float *)beta, C, ct,
                     ldc);
}
inline cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                                                 int n, int k, const void *alpha, const void *A, cudaDataType at,
                                                 int lda, long long sa, const void *B, cudaDataType bt, int ldb,
                                                 long long sb, const void *beta, void *C, cudaDataType ct, int ldc,
                                                 long long sc, int count, cublasComputeType_t, cublasGemmAlgo_t) {
    const size_t ea = at == CUDA_R_32F ? 4 : 2, eb = bt == CUDA_R_32F ? 4 : 2, ec = ct == CUDA_R_32F ? 4 : 2;
    for (int i = 0; i < count; i++) {
        const cublasStatus_t s =
            sim::gemm(ta, tb, m, n, k, *(const float *)alpha, (const char *)A + (size_t)(i * sa) * ea, at, lda,
                      (const char *)B + (size_t)(i * sb) * eb, bt, ldb, *(const float *)beta,
                      (char *)C + (size_t)(i * sc) * ec, ct, ldc);
        if (s) return s;
    }
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasGemmBatchedEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void *alpha, const void *const A[], cudaDataType at, int lda,
                                          const void *const B[], cudaDataType bt, int ldb, const void *beta,
                                          void *const C[], cudaDataType ct, int ldc, int count, cublasComputeType_t,
                                          cublasGemmAlgo_t) {
    for (int i = 0; i < count; i++) {
        const cublasStatus_t s = sim::gemm(ta, tb, m, n, k, *(const float *)alpha, A[i], at, lda, B[i], bt, ldb,
                                           *(const float *)beta, C[i], ct, ldc);
        if (s) return s;
    }
    return CUBLAS_STATUS_SUCCESS;
}
/* group g: group_size[g] problems with the g-th parameters; the pointer arrays
 * run over all problems, group after group */
inline cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t, const cublasOperation_t ta[],
                                                 const cublasOperation_t tb[], const int m[], const int n[],
                                                 const int k[], const void *alpha, const void *const A[],
                                                 cudaDataType at, const int lda[], const void *const B[],
                                                 cudaDataType bt, const int ldb[], const void *beta, void *const C[],
                                                 cudaDataType ct, const int ldc[], int groups, const int size[],
                                                 cublasComputeType_t) {
    int p = 0;
    for (int g = 0; g < groups; g++)
        for (int i = 0; i < size[g]; i++, p++) {
            const cublasStatus_t s =
                sim::gemm(ta[g], tb[g], m[g], n[g], k[g], ((const float *)alpha)[g], A[p], at, lda[g], B[p], bt,
                          ldb[g], ((const float *)beta)[g], C[p], ct, ldc[g]);
            if (s) return s;
        }
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                  const float *alpha, const float *A, int lda, const float *B, int ldb,
                                  const float *beta, float *C, int ldc) {
    return sim::gemm(ta, tb, m, n, k, *alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, *beta, C, CUDA_R_32F, ldc);
}

/* ---------------- cuSOLVER ---------------- */
typedef struct sim_handle *cusolverDnHandle_t;
typedef enum { CUSOLVER_STATUS_SUCCESS = 0, CUSOLVER_STATUS_INVALID_VALUE = 3 } cusolverStatus_t;

inline cusolverStatus_t cusolverDnCreate(cusolverDnHandle_t *h) {
    *h = (cusolverDnHandle_t)malloc(1);
    return CUSOLVER_STATUS_SUCCESS;
}
inline cusolverStatus_t cusolverDnDestroy(cusolverDnHandle_t h) {
    free(h);
    return CUSOLVER_STATUS_SUCCESS;
}
inline cusolverStatus_t cusolverDnSetStream(cusolverDnHandle_t, cudaStream_t) { return CUSOLVER_STATUS_SUCCESS; }
inline cusolverStatus_t cusolverDnSpotrf_bufferSize(cusolverDnHandle_t, cublasFillMode_t, int n, float *, int,
                                                    int *lwork) {
    *lwork = n;
    return CUSOLVER_STATUS_SUCCESS;
}
inline cusolverStatus_t cusolverDnSpotri_bufferSize(cusolverDnHandle_t, cublasFillMode_t, int n, float *, int,
                                                    int *lwork) {
    *lwork = n;
    return CUSOLVER_STATUS_SUCCESS;
}
inline cusolverStatus_t cusolverDnSpotrf(cusolverDnHandle_t, cublasFillMode_t u, int n, float *A, int lda, float *,
                                         int, int *info) {
    if (lda < (n > 1 ? n : 1)) return CUSOLVER_STATUS_INVALID_VALUE;
    *info = LAPACKE_spotrf_work(102 /* LAPACK_COL_MAJOR */, u == CUBLAS_FILL_MODE_LOWER ? 'L' : 'U', n, A, lda);
    return CUSOLVER_STATUS_SUCCESS;
}
inline cusolverStatus_t cusolverDnSpotri(cusolverDnHandle_t, cublasFillMode_t u, int n, float *A, int lda, float *,
                                         int, int *info) {
    if (lda < (n > 1 ? n : 1)) return CUSOLVER_STATUS_INVALID_VALUE;
    *info = LAPACKE_spotri_work(102, u == CUBLAS_FILL_MODE_LOWER ? 'L' : 'U', n, A, lda);
    return CUSOLVER_STATUS_SUCCESS;
}
inline cusolverStatus_t cusolverDnSpotrs(cusolverDnHandle_t, cublasFillMode_t u, int n, int nrhs, const float *A,
                                         int lda, float *B, int ldb, int *info) {
    if (n < 0 || nrhs < 0 || lda < (n > 1 ? n : 1) || ldb < (n > 1 ? n : 1)) return CUSOLVER_STATUS_INVALID_VALUE;
    *info = LAPACKE_spotrs_work(102, u == CUBLAS_FILL_MODE_LOWER ? 'L' : 'U', n, nrhs, A, lda, B, ldb);
    return CUSOLVER_STATUS_SUCCESS;
}
inline cusolverStatus_t cusolverDnXtrtri_bufferSize(cusolverDnHandle_t, cublasFillMode_t, cublasDiagType_t, int64_t n,
                                                    cudaDataType, void *, int64_t, size_t *dev, size_t *host) {
    *dev = (size_t)n * 4;
    *host = 0;
    return CUSOLVER_STATUS_SUCCESS;
}
inline cusolverStatus_t cusolverDnXtrtri(cusolverDnHandle_t, cublasFillMode_t u, cublasDiagType_t d, int64_t n,
                                         cudaDataType t, void *A, int64_t lda, void *, size_t, void *, size_t,
                                         int *info) {
    if (t != CUDA_R_32F || lda < (n > 1 ? n : 1)) return CUSOLVER_STATUS_INVALID_VALUE;
    *info = LAPACKE_strtri_work(102, u == CUBLAS_FILL_MODE_LOWER ? 'L' : 'U', d == CUBLAS_DIAG_UNIT ? 'U' : 'N',
                                (int)n, (float *)A, (int)lda);
    return CUSOLVER_STATUS_SUCCESS;
}

#endif
