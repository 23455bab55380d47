/*
 * cuda_sim_order.h - the block schedules of the CUDA simulator
 * (tests/cuda_sim.h), for its C++ and for tests/test_kernels.c (C):
 * ROUND_ROBIN: each round resumes every thread once, in index order (the
 * warps advance in lockstep); ROUND_ROBIN_REVERSE: the same, last thread
 * first; SHUFFLED: a fresh pseudo-random order each round (seed);
 * WARP_SERIAL (the default): warp 0 runs until all its threads wait at
 * __syncthreads (or are done), then warp 1, ... (the widest skew between
 * warps: a read of shared memory another warp has not yet written, or a
 * write into a buffer another warp still reads, meets the cp.async poison
 * or stale data); WARP_SERIAL_REVERSE: the last warp first.
 */
#ifndef DS_CUDA_SIM_ORDER_H
#define DS_CUDA_SIM_ORDER_H

enum cuda_sim_order {
    CUDA_SIM_ROUND_ROBIN,
    CUDA_SIM_ROUND_ROBIN_REVERSE,
    CUDA_SIM_SHUFFLED,
    CUDA_SIM_WARP_SERIAL,
    CUDA_SIM_WARP_SERIAL_REVERSE
};

#ifdef __cplusplus
extern "C" {
#endif
/* the schedule of the launches after this call (tests/cuda_sim_rt.cc) */
void cuda_sim_set_order(int order, unsigned seed);
#ifdef __cplusplus
}
#endif

#endif
