/*
 * embed.cu - token embedding gather: out[t, :] = table[ids[t], :] (bf16 rows,
 * exact copy). One block per token, 16-byte copies when C % 8 == 0 and the
 * pointers are aligned. ids must be validated (0 <= id < V) by the caller.
 */
#include "cuda_common.cuh"

static __global__ void embed_forward_kernel(uint16_t *out, const uint16_t *table, const int32_t *ids,
                                            int C, int vec) {
    const size_t t = blockIdx.x;
    const size_t id = (size_t)ids[t];
    if (vec) {
        const uint4 *src = reinterpret_cast<const uint4 *>(table + id * C);
        uint4 *dst = reinterpret_cast<uint4 *>(out + t * C);
        for (int c = threadIdx.x; c < C / 8; c += blockDim.x) dst[c] = src[c];
    } else {
        for (int c = threadIdx.x; c < C; c += blockDim.x) out[t * C + c] = table[id * C + c];
    }
}

extern "C" void embed_forward_cuda(uint16_t *out, const uint16_t *table, const int32_t *ids, int T,
                                   int C, void *stream) {
    DS_ASSERT(T >= 0 && C > 0);
    if (T == 0) return;
    int vec = C % 8 == 0 && ((uintptr_t)out & 15u) == 0 && ((uintptr_t)table & 15u) == 0;
    embed_forward_kernel<<<T, 128, 0, DS_STREAM(stream)>>>(out, table, ids, C, vec);
    CUDA_LAUNCH_CHECK();
}
