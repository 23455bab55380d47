/*
 * cuda_sim_rt.cc - the simulator's controls for tests/test_kernels.c (C):
 * cuda_sim_set_order picks the block schedule (tests/cuda_sim.h).
 */
#include "cuda_sim.h"

void cuda_sim_set_order(int order, unsigned seed) { sim::set_order(order, seed); }

#ifdef SIM_FAST_SWITCH
/* sim_ctx_switch(void **save_sp, void *to_sp), System V x86-64: rdi, rsi */
__asm__(".text\n"
        ".globl sim_ctx_switch\n"
        ".type sim_ctx_switch, @function\n"
        "sim_ctx_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    subq $8, %rsp\n"
        "    stmxcsr (%rsp)\n"
        "    fnstcw 4(%rsp)\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    ldmxcsr (%rsp)\n"
        "    fldcw 4(%rsp)\n"
        "    addq $8, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size sim_ctx_switch, .-sim_ctx_switch\n");
#endif
