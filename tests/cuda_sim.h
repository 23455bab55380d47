/*
 * cuda_sim.h - a CPU simulator of the CUDA execution model, so that the
 * kernels and launchers of cuda/ run unchanged in `make test` on machines
 * without a GPU (tests/test_kernels.c built as test_kernels_sim: each
 * launcher against its CPU twin).
 *
 * Not the emulator (tests/cuda_emul.c replaces every launcher by its CPU
 * twin to run the engine fast); this runs the kernels' own code: grid and
 * block indices, __shared__ memory, __syncthreads, warp shuffles, and the
 * PTX the fused attention uses (mma.sync m16n8k16 bf16, ldmatrix.x4.trans,
 * cp.async groups), each from its PTX ISA definition (PTX ISA 8.x,
 * "Matrix fragments for mma.m16n8k16", "ldmatrix", "cp.async").
 *
 * Model: one OS thread; the blocks of a launch run one after another; each
 * CUDA thread of a block is a fiber (an x86-64 stack switch of six
 * registers, tests/cuda_sim_rt.cc, announced to ASan in a sanitized build;
 * ucontext on other machines) that runs until it blocks at
 * a barrier or a warp collective; the scheduler resumes the fibers round-
 * robin or warp by warp (tests/cuda_sim_order.h, sim::set_order; the
 * default runs each warp up to the next barrier before the next warp
 * starts), so a missing barrier shows.
 * - __shared__ is `static`: one copy per kernel, shared by the block's
 *   fibers (blocks are sequential); dynamic shared memory
 *   (DS_EXTERN_SHARED) is one buffer per launch, NaN-filled per block.
 * - __syncthreads waits for every thread of the block; a thread that exits
 *   while others wait, or lanes of a warp at different collectives, abort
 *   with a message (the kernel would hang or be undefined on a GPU).
 * - warp collectives (shuffles, mma, ldmatrix) need all 32 lanes (full
 *   mask, blockDim a multiple of 32 where they are used).
 * - cp.async: the destination is poisoned (0xFF bytes: bf16/f32 NaN) when
 *   the copy is issued, and the copy lands at the cp.async.wait_group that
 *   covers its group: reading a tile before its wait + barrier, or issuing a
 *   copy into a tile other warps still read, gives NaN.
 * - arithmetic is the host's with -ffp-contract=off (__fmul_rn etc. are the
 *   plain IEEE ops, expf the host libm's); mma accumulates the 16 products
 *   and C in double and rounds once (tensor cores' order is unspecified).
 * - atomics are plain read-modify-writes (one OS thread).
 * - the CUDA runtime, cuBLAS and cuSOLVER calls: tests/cuda_sim_api.h
 *   (reference semantics on host memory).
 * Races the schedules do not expose go unseen; this checks the index math,
 * fragment layouts, synchronisation protocol and the library calls'
 * arguments, not the hardware's arithmetic or timing.
 */
#ifndef DS_CUDA_SIM_H
#define DS_CUDA_SIM_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#if defined(__x86_64__)
#define SIM_FAST_SWITCH 1
#ifdef __SANITIZE_ADDRESS__ /* ASan is told of every stack switch (its swapcontext path re-clears a stack each time) */
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define SIM_ASAN_START(save, bottom, size) __sanitizer_start_switch_fiber(save, bottom, size)
#define SIM_ASAN_FINISH(save, bottom, size) __sanitizer_finish_switch_fiber(save, bottom, size)
#else
#define SIM_ASAN_START(save, bottom, size) ((void)0)
#define SIM_ASAN_FINISH(save, bottom, size) ((void)0)
#endif
/* saves the callee-saved registers, MXCSR and the x87 control word on the
 * current stack, *save_sp = rsp, then resumes the stack to_sp
 * (tests/cuda_sim_rt.cc) */
extern "C" void sim_ctx_switch(void **save_sp, void *to_sp);
#endif

#include <functional>
#include <mutex>
#include <vector>

#ifndef _Noreturn
#define _Noreturn [[noreturn]] /* common.h is C11 */
#endif
extern "C" {
#include "common.h" /* bf16_to_f32, f32_to_bf16 */
}
#include "cuda_sim_order.h"

struct __attribute__((aligned(16))) uint4 {
    unsigned x, y, z, w;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

namespace sim {

struct cp_op {
    void *dst;
    const void *src;
    int bytes, src_bytes;
};

struct thread {
#ifdef SIM_FAST_SWITCH
    void *sp;
    void *fake; /* ASan's fake stack of this fiber while it is switched out */
#else
    ucontext_t uc;
#endif
    char *stack; /* owned by state::stacks */
    dim3 idx;
    int lin;
    bool done, at_bar; /* finished; waiting at __syncthreads */
    std::vector<cp_op> ops;      /* issued cp.async copies not yet landed, in order */
    std::vector<size_t> commits; /* ops.size() at each commit_group still pending */
};

struct warp {
    int arrived = 0;
    unsigned gen = 0;
    int kind = 0;
    void *arg[32];
};

struct state {
    dim3 grid, block, bidx;
    std::vector<thread> th;
    std::vector<warp> warps;
    int nthreads = 0, cur = -1, order = CUDA_SIM_WARP_SERIAL;
    unsigned rng = 1;
#ifdef SIM_FAST_SWITCH
    void *sched;
    const void *sched_bottom = nullptr; /* the scheduler's stack, for ASan */
    size_t sched_size = 0;
    void *sched_fake = nullptr; /* ASan's fake stack of the scheduler while a fiber runs */
#else
    ucontext_t sched;
#endif
    int bar_arrived = 0;
    unsigned bar_gen = 0;
    unsigned long events = 0;
    const std::function<void()> *body = nullptr;
    std::vector<char *> stacks; /* one per thread index, kept across launches */
    std::vector<uint4> dyn;     /* the launch's dynamic shared memory (16-byte aligned) */
    ~state() {
        for (char *p : stacks) free(p);
    }
};
inline state S;
inline constexpr size_t STACK_BYTES = (size_t)256 << 10;

[[noreturn]] inline void die(const char *what) {
    fprintf(stderr, "cuda_sim: %s (block %u,%u,%u thread %d)\n", what, S.bidx.x, S.bidx.y, S.bidx.z,
            S.cur >= 0 ? S.th[(size_t)S.cur].lin : -1);
    abort();
}

inline void set_order(int order, unsigned seed = 1) {
    S.order = order;
    S.rng = seed ? seed : 1;
}

#ifdef SIM_FAST_SWITCH
inline void yield() {
    thread &t = S.th[(size_t)S.cur];
    SIM_ASAN_START(&t.fake, S.sched_bottom, S.sched_size);
    sim_ctx_switch(&t.sp, S.sched);
    SIM_ASAN_FINISH(t.fake, nullptr, nullptr);
}
inline void resume(int i) {
    S.cur = i;
    SIM_ASAN_START(&S.sched_fake, S.th[(size_t)i].stack, STACK_BYTES);
    sim_ctx_switch(&S.sched, S.th[(size_t)i].sp);
    SIM_ASAN_FINISH(S.sched_fake, nullptr, nullptr);
}
#else
inline void yield() { swapcontext(&S.th[(size_t)S.cur].uc, &S.sched); }
inline void resume(int i) {
    S.cur = i;
    swapcontext(&S.sched, &S.th[(size_t)i].uc);
}
#endif

/* the copies of thread t's first n committed groups land */
inline void cp_land(thread &t, size_t ngroups) {
    if (!ngroups) return;
    const size_t nops = t.commits[ngroups - 1];
    for (size_t i = 0; i < nops; i++) {
        const cp_op &o = t.ops[i];
        memcpy(o.dst, o.src, (size_t)o.src_bytes);
        memset((char *)o.dst + o.src_bytes, 0, (size_t)(o.bytes - o.src_bytes));
    }
    t.ops.erase(t.ops.begin(), t.ops.begin() + (long)nops);
    t.commits.erase(t.commits.begin(), t.commits.begin() + (long)ngroups);
    for (size_t &c : t.commits) c -= nops;
}

void entry();
#ifdef SIM_FAST_SWITCH
/* a fresh fiber for t: its stack holds what sim_ctx_switch pops (control
 * words, r15..r12, rbx, rbp) and returns into entry() */
inline void fiber_init(thread &t) {
#ifdef __SANITIZE_ADDRESS__ /* the frames a finished fiber left poisoned (the kernels use a few KiB) */
    __asan_unpoison_memory_region(t.stack + STACK_BYTES - (64 << 10), 64 << 10);
#endif
    uint64_t *sp = (uint64_t *)(void *)(t.stack + STACK_BYTES); /* 16-byte aligned (malloc) */
    uint32_t mxcsr;
    uint16_t fpcw;
    __asm__ volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(mxcsr), "=m"(fpcw));
    *--sp = 0;                     /* entry's frame: rsp = 8 (mod 16) as after a call */
    *--sp = (uint64_t)(uintptr_t)&entry;
    for (int r = 0; r < 6; r++) *--sp = 0; /* rbp, rbx, r12..r15 */
    *--sp = (uint64_t)mxcsr | ((uint64_t)fpcw << 32);
    t.sp = sp;
}
#else
/* a fresh fiber for t that runs entry() (out of line: getcontext returns twice) */
__attribute__((noinline)) inline void fiber_init(thread &t) {
    getcontext(&t.uc);
    t.uc.uc_stack.ss_sp = t.stack;
    t.uc.uc_stack.ss_size = STACK_BYTES;
    t.uc.uc_link = &S.sched;
    makecontext(&t.uc, entry, 0);
}
#endif

inline void entry() {
#ifdef SIM_FAST_SWITCH
    SIM_ASAN_FINISH(nullptr, &S.sched_bottom, &S.sched_size); /* first run: learn the scheduler's stack */
#endif
    (*S.body)();
    thread &t = S.th[(size_t)S.cur];
    t.commits.push_back(t.ops.size()); /* what is still in flight lands (the hardware finishes it) */
    cp_land(t, t.commits.size());
    t.done = true;
    S.events++;
#ifdef SIM_FAST_SWITCH
    SIM_ASAN_START(nullptr, S.sched_bottom, S.sched_size); /* this fiber's stack is done */
    sim_ctx_switch(&t.sp, S.sched);                        /* never resumed */
    abort();
#endif
}

/* Dynamic shared memory per block: 48 KiB unless the kernel opted in to
 * more with cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize),
 * up to the device's opt-in limit: 227 KiB on sm_90; DS_SIM_SMEM_OPTIN=bytes
 * simulates a smaller device (101376: sm_86 / sm_89). A launch above its
 * kernel's limit fails as on the hardware (here: abort with a message). */
inline size_t smem_optin_limit() {
    static const size_t v = [] {
        const char *e = getenv("DS_SIM_SMEM_OPTIN");
        return e && *e ? (size_t)strtoul(e, nullptr, 10) : (size_t)232448;
    }();
    return v;
}
struct smem_attr {
    const void *fn;
    size_t max;
};
inline std::mutex &smem_mutex() {
    static std::mutex m;
    return m;
}
inline std::vector<smem_attr> &smem_attrs() {
    static std::vector<smem_attr> v;
    return v;
}
inline void set_smem_max(const void *fn, size_t max) {
    const std::lock_guard<std::mutex> lock(smem_mutex());
    for (smem_attr &a : smem_attrs())
        if (a.fn == fn) { a.max = max; return; }
    smem_attrs().push_back(smem_attr{fn, max});
}
inline void check_smem(const void *fn, size_t smem, const char *name) {
    size_t max = 49152;
    {
        const std::lock_guard<std::mutex> lock(smem_mutex());
        for (const smem_attr &a : smem_attrs())
            if (a.fn == fn) max = a.max;
    }
    if (smem > max) {
        fprintf(stderr, "cuda_sim: %s launched with %zu bytes of dynamic shared memory, above its limit of %zu "
                "(cudaFuncSetAttribute MaxDynamicSharedMemorySize; the device's opt-in limit is %zu)\n",
                name, smem, max, smem_optin_limit());
        abort();
    }
}

/* Runs body() as every thread of every block of grid x block. */
inline void launch(dim3 grid, dim3 block, size_t dyn_smem, const std::function<void()> &body) {
    static std::mutex one_at_a_time; /* the engine's host threads share the one simulated device */
    const std::lock_guard<std::mutex> lock(one_at_a_time);
    S.dyn.assign(dyn_smem / 16 + 1, uint4{});
    const int n = (int)(block.x * block.y * block.z);
    if (n <= 0 || n > 1024) die("block size out of range (1..1024 threads)");
    if (block.x > 1024 || block.y > 1024 || block.z > 64) die("block dimension out of range (x, y <= 1024, z <= 64)");
    if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
        die("grid dimension out of range (x 1..2^31-1, y and z 1..65535)"); /* cudaErrorInvalidConfiguration */
    S.grid = grid;
    S.block = block;
    S.body = &body;
    S.nthreads = n;
    S.th.resize((size_t)n);
    S.warps.assign((size_t)(n + 31) / 32, warp());
    while (S.stacks.size() < (size_t)n) {
        S.stacks.push_back((char *)malloc(STACK_BYTES));
        if (!S.stacks.back()) die("out of memory for fiber stacks");
    }
    for (int i = 0; i < n; i++) {
        thread &t = S.th[(size_t)i];
        t.stack = S.stacks[(size_t)i];
        t.lin = i;
        t.idx = dim3((unsigned)i % block.x, (unsigned)i / block.x % block.y, (unsigned)i / (block.x * block.y));
    }
    std::vector<int> ord((size_t)n);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                S.bidx = dim3(bx, by, bz);
                S.bar_arrived = 0;
                memset(S.dyn.data(), 0xFF, S.dyn.size() * sizeof(uint4)); /* uninitialised: NaN */
                for (warp &w : S.warps) w.arrived = 0;
                for (thread &t : S.th) {
                    t.done = t.at_bar = false;
                    t.ops.clear();
                    t.commits.clear();
                    fiber_init(t);
                }
                for (int alive = n; alive;) {
                    const unsigned long ev = S.events;
                    if (S.order >= CUDA_SIM_WARP_SERIAL) {
                        const int nw = (n + 31) / 32;
                        for (int k = 0; k < nw; k++) {
                            const int w = S.order == CUDA_SIM_WARP_SERIAL ? k : nw - 1 - k;
                            for (int more = 1; more;) { /* until its threads wait at the barrier or are done */
                                const unsigned long ew = S.events;
                                more = 0;
                                for (int i = 32 * w; i < n && i < 32 * w + 32; i++) {
                                    if (S.th[(size_t)i].done || S.th[(size_t)i].at_bar) continue;
                                    more = 1;
                                    resume(i);
                                }
                                if (S.events == ew) more = 0; /* blocked on another warp: the outer check */
                            }
                        }
                    } else {
                        const int rev = S.order == CUDA_SIM_ROUND_ROBIN_REVERSE;
                        for (int i = 0; i < n; i++) ord[(size_t)i] = rev ? n - 1 - i : i;
                        if (S.order == CUDA_SIM_SHUFFLED)
                            for (int i = n - 1; i > 0; i--) {
                                S.rng = S.rng * 1103515245u + 12345u;
                                const int j = (int)((S.rng >> 8) % (unsigned)(i + 1));
                                const int tmp = ord[(size_t)i];
                                ord[(size_t)i] = ord[(size_t)j];
                                ord[(size_t)j] = tmp;
                            }
                        for (int i : ord) {
                            if (S.th[(size_t)i].done) continue;
                            resume(i);
                        }
                    }
                    S.cur = -1;
                    alive = 0;
                    for (const thread &t : S.th) alive += !t.done;
                    if (alive && S.events == ev)
                        die("deadlock: threads wait at a barrier or warp collective that the others never reach");
                }
            }
}

inline void *dyn_smem() { return S.dyn.data(); }

inline const dim3 &thread_idx() { return S.th[(size_t)S.cur].idx; }

inline void syncthreads() {
    const unsigned my = S.bar_gen;
    S.events++;
    if (++S.bar_arrived == S.nthreads) {
        S.bar_arrived = 0;
        S.bar_gen++;
        for (thread &t : S.th) t.at_bar = false;
        return;
    }
    S.th[(size_t)S.cur].at_bar = true;
    while (S.bar_gen == my) yield();
}

/* All 32 lanes of the caller's warp deposit arg; the last to arrive runs
 * fn(args of lanes 0..31), which writes every lane's results through them. */
template <class F> inline void warp_op(int kind, void *arg, F &&fn) {
    const int lin = S.th[(size_t)S.cur].lin, lane = lin & 31;
    warp &w = S.warps[(size_t)(lin >> 5)];
    if ((lin | 31) >= S.nthreads) die("full-mask warp collective in a partial warp");
    if (w.arrived == 0) w.kind = kind;
    else if (w.kind != kind) die("lanes of a warp at different collectives (divergence)");
    w.arg[lane] = arg;
    S.events++;
    if (++w.arrived == 32) {
        fn(w.arg);
        w.arrived = 0;
        w.gen++;
        return;
    }
    const unsigned my = w.gen;
    while (w.gen == my) yield();
}

enum { K_SHFL_XOR = 1, K_SHFL_IDX, K_SHFL_DOWN, K_MMA, K_LDSM };

template <class T> struct shfl_arg {
    T v, out;
    int p;
};
template <class T> inline T shfl(int kind, unsigned mask, T v, int p, int width) {
    if (mask != 0xffffffffu || width != 32) die("only full-warp shuffles (mask 0xffffffff, width 32) are simulated");
    shfl_arg<T> a{v, v, p};
    warp_op(kind * 16 + (int)sizeof(T), &a, [kind](void **args) {
        for (int l = 0; l < 32; l++) {
            shfl_arg<T> *me = (shfl_arg<T> *)args[l];
            int src = l;
            if (kind == K_SHFL_XOR) src = l ^ (me->p & 31);
            else if (kind == K_SHFL_IDX) src = me->p & 31;
            else if (l + me->p < 32) src = l + me->p;
            me->out = ((shfl_arg<T> *)args[src])->v;
        }
    });
    return a.out;
}

/* mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, b, d. Fragments
 * (PTX ISA, g = lane >> 2, t = lane & 3; a register's low 16 bits hold the
 * element of lower index): A 16x16: a[0] = (row g, cols 2t, 2t+1), a[1] =
 * (row g+8, cols 2t..), a[2] = (row g, cols 2t+8..), a[3] = (row g+8, cols
 * 2t+8..); B 16x8: b0 = (rows 2t, 2t+1, col g), b1 = (rows 2t+8, 2t+9, col
 * g); C/D 16x8 f32: d[0..1] = (row g, cols 2t, 2t+1), d[2..3] = (row g+8). */
struct mma_arg {
    float *d;
    const uint32_t *a;
    uint32_t b0, b1;
};
inline void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    mma_arg m{d, a, b0, b1};
    warp_op(K_MMA, &m, [](void **args) {
        float A[16][16], B[16][8], C[16][8];
        for (int l = 0; l < 32; l++) {
            const mma_arg *x = (const mma_arg *)args[l];
            const int g = l >> 2, t = l & 3;
            for (int e = 0; e < 2; e++) {
                A[g][2 * t + e] = bf16_to_f32((uint16_t)(x->a[0] >> (16 * e)));
                A[g + 8][2 * t + e] = bf16_to_f32((uint16_t)(x->a[1] >> (16 * e)));
                A[g][2 * t + 8 + e] = bf16_to_f32((uint16_t)(x->a[2] >> (16 * e)));
                A[g + 8][2 * t + 8 + e] = bf16_to_f32((uint16_t)(x->a[3] >> (16 * e)));
                B[2 * t + e][g] = bf16_to_f32((uint16_t)(x->b0 >> (16 * e)));
                B[2 * t + 8 + e][g] = bf16_to_f32((uint16_t)(x->b1 >> (16 * e)));
                C[g][2 * t + e] = x->d[e];
                C[g + 8][2 * t + e] = x->d[2 + e];
            }
        }
        for (int l = 0; l < 32; l++) {
            const mma_arg *x = (const mma_arg *)args[l];
            const int g = l >> 2, t = l & 3;
            for (int e = 0; e < 4; e++) {
                const int r = g + (e >> 1) * 8, c = 2 * t + (e & 1);
                double s = C[r][c];
                for (int k = 0; k < 16; k++) s += (double)A[r][k] * (double)B[k][c];
                x->d[e] = (float)s;
            }
        }
    });
}

/* ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16: lanes 8i..8i+7 give the
 * 16-byte aligned row addresses of matrix i (8 x 8 b16); lane l's register i
 * gets matrix i transposed: elements (row 2(l&3), col l>>2) and (row
 * 2(l&3)+1, col l>>2) of the stored matrix, low half first. */
struct ldsm_arg {
    const uint16_t *p;
    uint32_t r[4];
};
inline void ldmatrix_x4_trans(const uint16_t *p, uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3) {
    if ((uintptr_t)p & 15) die("ldmatrix: row address not 16-byte aligned");
    ldsm_arg a{p, {0, 0, 0, 0}};
    warp_op(K_LDSM, &a, [](void **args) {
        for (int l = 0; l < 32; l++) {
            ldsm_arg *me = (ldsm_arg *)args[l];
            for (int i = 0; i < 4; i++) {
                const uint16_t *r0p = ((ldsm_arg *)args[8 * i + 2 * (l & 3)])->p;
                const uint16_t *r1p = ((ldsm_arg *)args[8 * i + 2 * (l & 3) + 1])->p;
                me->r[i] = (uint32_t)r0p[l >> 2] | ((uint32_t)r1p[l >> 2] << 16);
            }
        }
    });
    r0 = a.r[0];
    r1 = a.r[1];
    r2 = a.r[2];
    r3 = a.r[3];
}

/* cp.async.cg.shared.global [dst], [src], 16, src_bytes */
inline void cp_async16(void *dst, const void *src, int src_bytes) {
    if (((uintptr_t)dst & 15) || ((uintptr_t)src & 15)) die("cp.async: 16-byte copy not 16-byte aligned");
    if (src_bytes < 0 || src_bytes > 16) die("cp.async: src-size outside 0..16");
    memset(dst, 0xFF, 16); /* poison: the data is not there before the wait */
    S.th[(size_t)S.cur].ops.push_back(cp_op{dst, src, 16, src_bytes});
}
inline void cp_async_commit() {
    thread &t = S.th[(size_t)S.cur];
    t.commits.push_back(t.ops.size());
}
/* cp.async.wait_group n: every committed group but the newest n has landed */
inline void cp_async_wait(int n) {
    thread &t = S.th[(size_t)S.cur];
    if (t.commits.size() > (size_t)n) cp_land(t, t.commits.size() - (size_t)n);
}

} /* namespace sim */

/* ---- the CUDA C++ surface the kernels use ---- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
#define threadIdx (sim::thread_idx())
#define blockIdx (sim::S.bidx)
#define blockDim (sim::S.block)
#define gridDim (sim::S.grid)

inline void __syncthreads() { sim::syncthreads(); }
template <class T> inline T __shfl_xor_sync(unsigned m, T v, int lane_mask, int w = 32) {
    return sim::shfl(sim::K_SHFL_XOR, m, v, lane_mask, w);
}
template <class T> inline T __shfl_sync(unsigned m, T v, int src, int w = 32) {
    return sim::shfl(sim::K_SHFL_IDX, m, v, src, w);
}
template <class T> inline T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32) {
    return sim::shfl(sim::K_SHFL_DOWN, m, v, (int)d, w);
}
inline float __uint_as_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline uint32_t __float_as_uint(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
inline int __float_as_int(float f) { return (int)__float_as_uint(f); }
inline float __int_as_float(int i) { return __uint_as_float((uint32_t)i); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline unsigned atomicMax(unsigned *p, unsigned v) {
    const unsigned o = *p;
    if (v > o) *p = v;
    return o;
}
inline float atomicAdd(float *p, float v) {
    const float o = *p;
    *p = o + v;
    return o;
}

#include "cuda_sim_api.h"

/* launch syntax (cuda_common.cuh's DS_LAUNCH) */
#define DS_SIM_LAUNCH(kernel, grid, block, smem, ...)                                   \
    (sim::check_smem(reinterpret_cast<const void *>(&kernel), (size_t)(smem), #kernel), \
     sim::launch(dim3(grid), dim3(block), (size_t)(smem), [&] { kernel(__VA_ARGS__); }))

#endif
