/*
 * cuda_common.cuh - shared helpers for the cuda/ launchers: error-check
 * macros that abort through ds_fatal (src/common.h), bf16 <-> f32 device
 * conversions that round exactly like src/common.h's f32_to_bf16 (round to
 * nearest even, NaN -> 0x7FC0), CEIL_DIV, and the shared context accessors
 * (cuBLAS / cuSOLVER handles) implemented in context.cu, and DS_LAUNCH
 * (a kernel launch: <<<grid, block, smem, stream>>>).
 * Included only by .cu files; src/ sees cuda/kernels.h.
 * With -DDS_CUDA_SIM (the .cu files compiled by the host C++ compiler for
 * tests/test_kernels' simulator build) the CUDA headers are replaced by
 * tests/cuda_sim.h (which also stands in for the runtime, cuBLAS and
 * cuSOLVER) and DS_LAUNCH runs the kernel on the simulator.
 */
#ifndef DS_CUDA_COMMON_CUH
#define DS_CUDA_COMMON_CUH

#include <stdint.h>
#ifdef DS_CUDA_SIM
#include "cuda_sim.h"
#else
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#endif

#ifndef _Noreturn
#define _Noreturn [[noreturn]] /* common.h is C11 */
#endif
extern "C" {
#include "common.h"
#include "kernels.h"
}

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

#define CUDA_CHECK(call)                                                              \
    do {                                                                              \
        cudaError_t e_ = (call);                                                      \
        if (e_ != cudaSuccess)                                                        \
            ds_fatal(1, __FILE__, __LINE__, __func__, "CUDA error %s: %s (%s)",       \
                     cudaGetErrorName(e_), cudaGetErrorString(e_), #call);            \
    } while (0)

#define CUBLAS_CHECK(call)                                                            \
    do {                                                                              \
        cublasStatus_t s_ = (call);                                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                              \
            ds_fatal(1, __FILE__, __LINE__, __func__, "cuBLAS error %d: %s (%s)",     \
                     (int)s_, cublasGetStatusString(s_), #call);                      \
    } while (0)

#define CUSOLVER_CHECK(call)                                                          \
    do {                                                                              \
        cusolverStatus_t s_ = (call);                                                 \
        if (s_ != CUSOLVER_STATUS_SUCCESS)                                            \
            ds_fatal(1, __FILE__, __LINE__, __func__, "cuSOLVER error %d (%s)",       \
                     (int)s_, #call);                                                 \
    } while (0)

/* kernel<<<grid, block, smem, stream>>>(args...) */
#ifdef DS_CUDA_SIM
#define DS_LAUNCH(kernel, grid, block, smem, stream, ...) \
    ((void)(stream), DS_SIM_LAUNCH(kernel, grid, block, smem, __VA_ARGS__))
#else
#define DS_LAUNCH(kernel, grid, block, smem, stream, ...) \
    kernel<<<grid, block, smem, DS_STREAM(stream)>>>(__VA_ARGS__)
#endif

/* After every launch: launch errors at once; with -DDS_DEBUG also execution
 * errors (synchronize, so the failing kernel is the one named). */
#ifdef DS_CUDA_SIM
#define CUDA_LAUNCH_CHECK() ((void)0)
#elif defined(DS_DEBUG)
#define CUDA_LAUNCH_CHECK()                                                           \
    do { CUDA_CHECK(cudaGetLastError()); CUDA_CHECK(cudaDeviceSynchronize()); } while (0)
#else
#define CUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())
#endif

#define DS_STREAM(s) ((cudaStream_t)(s))

/* Context (context.cu): lazily created handles bound to `stream`. */
cublasHandle_t ds_cublas_get(void *stream);
cusolverDnHandle_t ds_cusolver_get(void *stream);

/* The kernel's dynamic shared memory (the launch's smem bytes) as type *name */
#ifdef DS_CUDA_SIM
#define DS_EXTERN_SHARED(type, name) type *const name = (type *)sim::dyn_smem()
#else
#define DS_EXTERN_SHARED(type, name) extern __shared__ type name[]
#endif

/* ---- device dtype helpers (bit-identical to src/common.h) ---- */
__device__ __forceinline__ float bf16_to_f32_dev(uint16_t h) {
    return __uint_as_float((uint32_t)h << 16);
}
__device__ __forceinline__ uint16_t f32_to_bf16_dev(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
__device__ __forceinline__ float round_bf16_dev(float f) { return bf16_to_f32_dev(f32_to_bf16_dev(f)); }

#endif
