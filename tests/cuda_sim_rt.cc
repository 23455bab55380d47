/*
 * cuda_sim_rt.cc - the CUDA runtime surface of cuda/kernels.h (device
 * memory, copies, one "device") for tests/test_kernels' simulator build:
 * device memory is host memory, copies are memcpy, streams are ignored
 * (every launch runs to completion in tests/cuda_sim.h before it returns).
 * The launchers that call cuBLAS/cuSOLVER, or live in a .cu file that does,
 * are not simulated: their stubs abort with a message (test_kernels does
 * not call them in this build).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define _Noreturn [[noreturn]] /* common.h is C11 */
extern "C" {
#include "common.h"
}
#include "kernels.h"

#include "cuda_sim.h"

extern "C" {

/* the block schedule of the launches after this call (sim::order) */
void cuda_sim_set_order(int order, unsigned seed) { sim::set_order(order, seed); }

int ds_cuda_device_count(void) { return 1; }
int ds_cuda_init(int local_rank) {
    (void)local_rank;
    return 0;
}
const char *ds_cuda_device_name(void) { return "CUDA simulator (tests/cuda_sim.h, on the CPU)"; }
void ds_cuda_shutdown(void) {}
void *ds_cuda_malloc(size_t n) { return n ? xmalloc(n) : NULL; }
void ds_cuda_free(void *p) { free(p); }
void ds_cuda_memcpy_h2d(void *dst, const void *src, size_t n, void *stream) {
    (void)stream;
    if (n) memcpy(dst, src, n);
}
void ds_cuda_memcpy_d2h(void *dst, const void *src, size_t n, void *stream) {
    (void)stream;
    if (n) memcpy(dst, src, n);
}
void ds_cuda_memset(void *p, int byte, size_t n, void *stream) {
    (void)stream;
    if (n) memset(p, byte, n);
}

/* attention.cu's dispatcher, fused branch only (its GEMM path is cuBLAS) */
void attention_forward_cuda(uint16_t *out, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T,
                            int NH, int NKV, int HS, void *ws, void *stream) {
    (void)ws;
    if (!attention_fused(HS)) {
        fprintf(stderr, "cuda_sim: attention's GEMM path (cuBLAS) is not simulated\n");
        abort();
    }
    attention_fused_cuda(out, q, k, v, B, T, NH, NKV, HS, stream);
}

[[noreturn]] static void not_simulated(const char *name) {
    fprintf(stderr, "cuda_sim: %s is not simulated (cuBLAS/cuSOLVER: real GPU only)\n", name);
    abort();
}
void f32_to_bf16_cuda(uint16_t *, const float *, size_t, void *) { not_simulated(__func__); }
void bf16_to_f32_cuda(float *, const uint16_t *, size_t, void *) { not_simulated(__func__); }
void matmul_forward_cuda(uint16_t *, const uint16_t *, const uint16_t *, const uint16_t *, int, int, int,
                         const int *, int, void *) {
    not_simulated(__func__);
}
void matmul_batched_forward_cuda(const void *const *, void *const *, const int *, int, int, int, const int *, int,
                                 void *) {
    not_simulated(__func__);
}
void hessian_accum_cuda(float *, const uint16_t *, int, int, void *) { not_simulated(__func__); }
void hessian_accum_f64_cuda(double *, const uint16_t *, const int *, int, int, float *, void *) {
    not_simulated(__func__);
}
void hessian_symmetrize_cuda(float *, int, void *) { not_simulated(__func__); }
void hessian_to_f32_cuda(float *, const double *, int, double, void *) { not_simulated(__func__); }
void act_absmax_cuda(float *, const uint16_t *, size_t, void *) { not_simulated(__func__); }
ds_status gptq_quantize_cuda(const quant_args *, const float *, int, int, float *, int, double, ds_dtype,
                             gptq_cuda_out *, void *) {
    not_simulated(__func__);
}
void gptq_cuda_set_factor_key(uint64_t) { not_simulated(__func__); }

} /* extern "C" */
