/*
 * ptx.cuh - the inline PTX the kernels use, each behind a small function so
 * that tests/cuda_sim.h can stand in for it (same names and contracts,
 * implemented from the PTX ISA's definitions) when the kernels run in the
 * CPU simulator (-DDS_CUDA_SIM). sm_80 or later.
 */
#ifndef DS_PTX_CUH
#define DS_PTX_CUH

#ifdef DS_CUDA_SIM
using sim::cp_async16;
using sim::ldmatrix_x4_trans;
using sim::mma_m16n8k16_bf16;
template <int N> inline void cp_async_wait(void) { sim::cp_async_wait(N); }
inline void cp_async_commit(void) { sim::cp_async_commit(); }
#else
/* D (16x8 f32) += A (16x16 bf16, row-major) B (16x8 bf16, col-major), one
 * warp: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32. Fragments (PTX
 * ISA, g = lane/4, t = lane%4; low half of a register = lower index):
 * a[0] row g, k 2t..2t+1; a[1] row g+8; a[2] row g, k 2t+8..; a[3] row g+8,
 * k 2t+8..; b0 k 2t..2t+1, n g; b1 k 2t+8..; d[0..1] row g, n 2t..2t+1;
 * d[2..3] row g+8. */
static __device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], uint32_t b0,
                                                         uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16: lanes 8i..8i+7 give the
 * 16-byte aligned shared-memory row addresses of 8x8 matrix i; register i of
 * lane l gets matrix i transposed (stored rows 2(l%4), 2(l%4)+1, column l/4). */
static __device__ __forceinline__ void ldmatrix_x4_trans(const uint16_t *p, uint32_t &r0, uint32_t &r1,
                                                         uint32_t &r2, uint32_t &r3) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(a));
}

/* 16 bytes global -> shared, asynchronous (cp.async.cg: L2 only); the last
 * 16 - src_bytes bytes are zero-filled. Lands at the cp_async_wait that
 * covers its group; the other threads see it after a barrier. */
static __device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes) {
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes));
}
/* close the thread's current group of cp.async copies */
static __device__ __forceinline__ void cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::); }
/* wait until at most N of the thread's committed groups are in flight */
template <int N> static __device__ __forceinline__ void cp_async_wait(void) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
#endif

#endif
