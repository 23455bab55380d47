/*
 * context.cu - device selection, cuBLAS/cuSOLVER handles, allocation and copy
 * helpers, events, and the bf16 <-> f32 conversion kernels.
 * One device per process (MPI rank): ds_cuda_init(local_rank) picks
 * local_rank % count. Handles are created once and re-bound to the caller's
 * stream on every use (cublasSetStream is cheap).
 */
#include "cuda_common.cuh"

#include <stdio.h>

static int g_dev = -1;
static char g_name[400] = "none";
static cublasHandle_t g_cublas;
static cusolverDnHandle_t g_cusolver;
static void *g_cublas_ws;
static const size_t CUBLAS_WS_BYTES = (size_t)32 << 20;

extern "C" int ds_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky "no driver/device" error */
        return 0;
    }
    return n;
}

extern "C" int ds_cuda_init(int local_rank) {
    if (g_dev >= 0) return g_dev;
    int n = ds_cuda_device_count();
    if (n <= 0) return -1;
    int dev = (local_rank < 0 ? 0 : local_rank) % n;
    if (cudaSetDevice(dev) != cudaSuccess) { (void)cudaGetLastError(); return -1; }
    cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
    snprintf(g_name, sizeof g_name, "%.200s (sm_%d%d, %d SMs, %.1f GiB)", p.name, p.major, p.minor,
             p.multiProcessorCount, (double)p.totalGlobalMem / (1 << 30));
    CUBLAS_CHECK(cublasCreate(&g_cublas));
    /* fp32 GEMMs stay true fp32 (no TF32), as the reference disables TF32. */
    CUBLAS_CHECK(cublasSetMathMode(g_cublas, CUBLAS_DEFAULT_MATH));
    /* A fixed user workspace keeps cuBLAS deterministic across calls. */
    CUDA_CHECK(cudaMalloc(&g_cublas_ws, CUBLAS_WS_BYTES));
    CUBLAS_CHECK(cublasSetWorkspace(g_cublas, g_cublas_ws, CUBLAS_WS_BYTES));
    CUSOLVER_CHECK(cusolverDnCreate(&g_cusolver));
    g_dev = dev;
    return dev;
}

extern "C" const char *ds_cuda_device_name(void) { return g_name; }

extern "C" void ds_cuda_mem_info(size_t *free_b, size_t *total_b) {
    CUDA_CHECK(cudaMemGetInfo(free_b, total_b));
}

void gptq_cuda_release(void); /* gptq.cu workspace */

extern "C" void ds_cuda_shutdown(void) {
    if (g_dev < 0) return;
    gptq_cuda_release();
    cusolverDnDestroy(g_cusolver);
    cublasDestroy(g_cublas);
    cudaFree(g_cublas_ws);
    g_cublas_ws = NULL;
    g_dev = -1;
}

cublasHandle_t ds_cublas_get(void *stream) {
    DS_ASSERT(g_dev >= 0 && "ds_cuda_init not called");
    CUBLAS_CHECK(cublasSetStream(g_cublas, DS_STREAM(stream)));
    return g_cublas;
}

cusolverDnHandle_t ds_cusolver_get(void *stream) {
    DS_ASSERT(g_dev >= 0 && "ds_cuda_init not called");
    CUSOLVER_CHECK(cusolverDnSetStream(g_cusolver, DS_STREAM(stream)));
    return g_cusolver;
}

extern "C" void *ds_cuda_malloc(size_t n) {
    if (n == 0) return NULL;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        (void)cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        DS_DIE(1, "cudaMalloc(%zu bytes = %.2f GiB) failed: %s (free %.2f of %.2f GiB)\n"
                  "hint: lower the micro-batch or offload activations (see gpu_plan)",
               n, (double)n / (1 << 30), cudaGetErrorString(e), (double)fr / (1 << 30),
               (double)tot / (1 << 30));
    }
    return p;
}

extern "C" void ds_cuda_free(void *p) { if (p) CUDA_CHECK(cudaFree(p)); }

extern "C" void *ds_cuda_malloc_host(size_t n) {
    void *p = NULL;
    if (n) CUDA_CHECK(cudaMallocHost(&p, n));
    return p;
}

extern "C" void ds_cuda_free_host(void *p) { if (p) CUDA_CHECK(cudaFreeHost(p)); }

extern "C" void ds_cuda_memcpy_h2d(void *dst, const void *src, size_t n, void *stream) {
    if (n) CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, DS_STREAM(stream)));
}

extern "C" void ds_cuda_memcpy_d2h(void *dst, const void *src, size_t n, void *stream) {
    if (!n) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, DS_STREAM(stream)));
    CUDA_CHECK(cudaStreamSynchronize(DS_STREAM(stream)));
}

extern "C" void ds_cuda_memcpy_d2h_async(void *dst, const void *src, size_t n, void *stream) {
    if (n) CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, DS_STREAM(stream)));
}

extern "C" void ds_cuda_memcpy_d2d(void *dst, const void *src, size_t n, void *stream) {
    if (n) CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, DS_STREAM(stream)));
}

extern "C" void ds_cuda_memset(void *p, int byte, size_t n, void *stream) {
    if (n) CUDA_CHECK(cudaMemsetAsync(p, byte, n, DS_STREAM(stream)));
}

extern "C" void *ds_cuda_stream_create(void) {
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    return (void *)s;
}

extern "C" void ds_cuda_stream_destroy(void *stream) {
    if (stream) CUDA_CHECK(cudaStreamDestroy(DS_STREAM(stream)));
}

extern "C" void ds_cuda_sync(void *stream) {
    if (stream) CUDA_CHECK(cudaStreamSynchronize(DS_STREAM(stream)));
    else CUDA_CHECK(cudaDeviceSynchronize());
}

extern "C" void *ds_cuda_event_create(void) {
    cudaEvent_t e;
    CUDA_CHECK(cudaEventCreate(&e));
    return (void *)e;
}

extern "C" void ds_cuda_event_destroy(void *ev) { if (ev) CUDA_CHECK(cudaEventDestroy((cudaEvent_t)ev)); }

extern "C" void ds_cuda_event_record(void *ev, void *stream) {
    CUDA_CHECK(cudaEventRecord((cudaEvent_t)ev, DS_STREAM(stream)));
}

extern "C" float ds_cuda_event_ms(void *start, void *stop) {
    float ms = 0;
    CUDA_CHECK(cudaEventSynchronize((cudaEvent_t)stop));
    CUDA_CHECK(cudaEventElapsedTime(&ms, (cudaEvent_t)start, (cudaEvent_t)stop));
    return ms;
}

extern "C" void ds_cuda_stream_wait(void *stream, void *ev) {
    CUDA_CHECK(cudaStreamWaitEvent(DS_STREAM(stream), (cudaEvent_t)ev, 0));
}

/* ---- conversions: grid-stride, one element per thread step ---- */
static __global__ void f32_to_bf16_kernel(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = f32_to_bf16_dev(src[i]);
}

static __global__ void bf16_to_f32_kernel(float *dst, const uint16_t *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = bf16_to_f32_dev(src[i]);
}

static unsigned grid_for(size_t n, int threads) {
    size_t b = CEIL_DIV(n, (size_t)threads);
    return (unsigned)(b > 65535 * 8 ? 65535 * 8 : (b ? b : 1));
}

extern "C" void f32_to_bf16_cuda(uint16_t *dst, const float *src, size_t n, void *stream) {
    if (!n) return;
    DS_LAUNCH(f32_to_bf16_kernel, grid_for(n, 256), 256, 0, stream, dst, src, n);
    CUDA_LAUNCH_CHECK();
}

extern "C" void bf16_to_f32_cuda(float *dst, const uint16_t *src, size_t n, void *stream) {
    if (!n) return;
    DS_LAUNCH(bf16_to_f32_kernel, grid_for(n, 256), 256, 0, stream, dst, src, n);
    CUDA_LAUNCH_CHECK();
}
