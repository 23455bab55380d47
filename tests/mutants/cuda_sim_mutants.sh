#!/bin/sh
# cuda_sim_mutants.sh - shows that test_kernels_sim (tests/cuda_sim.h) can
# fail: each mutant is one deliberate defect in a cuda/ file (a barrier
# removed, a cp.async wait too late, a fragment lane mapping changed, a
# cuBLAS leading dimension wrong, the GPTQ sweep's rows, the factorisation); the simulator build of
# tests/test_kernels.c is relinked with the mutated file and must FAIL (or
# abort). Prints "caught" / "MISSED" per
# mutant and "N passed, N failed" (passed = caught). Not part of make test
# (~20 s per mutant). Run from the repository root after `make`:
#   sh tests/mutants/cuda_sim_mutants.sh [BUILD]
BUILD=${1:-${BUILD:-build}}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
CXXF="-std=c++17 -D_GNU_SOURCE -O2 -Wno-unknown-pragmas -ffp-contract=off -fno-strict-aliasing -DDS_CUDA_SIM -Isrc -Icuda -Itests"
LIBS="-lcjson -lz -lopenblas -llapacke -lpcre2-8 -lutf8proc -lpthread -lm -lstdc++"
P=0; F=0
# mutant FILE LABEL OLD NEW [K]: the K-th line (default 1st) that is OLD
# (leading and trailing blanks aside) replaced by NEW
mutant() {
    f=$1; label=$2
    python3 - "$f" "$3" "$4" "$W/$(basename "$f")" "${5:-1}" <<'PY' || { echo "MISSED $label: the line is not in $1"; F=$((F + 1)); return; }
import sys
f, old, new, dst, k = sys.argv[1:6]
s = open(f).read().split('\n')
i = [n for n, l in enumerate(s) if l.strip() == old.strip()]
if len(i) < int(k): sys.exit(1)
s[i[int(k) - 1]] = new
open(dst, 'w').write('\n'.join(s))
PY
    g++ $CXXF -x c++ -c "$W/$(basename "$f")" -o "$W/m.o" || { echo "MISSED $label: does not compile"; F=$((F + 1)); return; }
    objs=$(ls "$BUILD"/sim/cuda/*.o | grep -v "/$(basename "$f" .cu).o")
    mpicc "$BUILD/sim/tests/test_kernels.o" "$W/m.o" $objs "$BUILD/sim/tests/cuda_sim_rt.o" "$BUILD/libdoneshot.a" \
        -o "$W/t" $LIBS || { echo "MISSED $label: does not link"; F=$((F + 1)); return; }
    if timeout 300 "$W/t" >"$W/out" 2>&1; then
        echo "MISSED $label"; F=$((F + 1))
    else
        echo "caught $label: $(grep -m1 -E '^FAIL|cuda_sim:' "$W/out")"; P=$((P + 1))
    fi
}
A=cuda/attention_fused.cu
mutant $A "pass 1: no barrier after the K tile's wait" "__syncthreads();" "" 1
mutant $A "pass 1: no barrier before the buffer is refilled" "__syncthreads(); /* cur is refilled two tiles on */" ""
mutant $A "pass 2: no barrier after K(kt)'s wait" "__syncthreads();" "" 2
mutant $A "pass 2: no barrier before Ks is refilled" "__syncthreads(); /* every warp is done with Ks */" ""
mutant $A "pass 2: no barrier after V(kt)'s wait" "__syncthreads();" "" 3
mutant $A "pass 2: no barrier before Vs is refilled" "__syncthreads(); /* every warp is done with Vs */" ""
mutant $A "pass 2: V(kt) not waited for" "cp_async_wait<1>(); /* V(kt) landed; K(kt + 1) may be in flight */" \
    "cp_async_wait<2>();"
mutant $A "ldmatrix lane mapping: key and dim halves swapped" \
    "const int row = kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, col = np * 16 + (lane >> 4) * 8;" \
    "const int row = kc * 16 + (lane & 7) + (lane >> 4) * 8, col = np * 16 + ((lane >> 3) & 1) * 8;"
mutant $A "mma B fragment registers swapped" "mma_m16n8k16_bf16(o[2 * np], pf[kc], b0, b1);" \
    "mma_m16n8k16_bf16(o[2 * np], pf[kc], b1, b0);"
mutant $A "P as an A fragment: wrong register" "pf[kc][2 * half] = pack_bf16(p[0], p[1]);     /* row g */" \
    "pf[kc][half] = pack_bf16(p[0], p[1]);"
mutant $A "Q fragment: wrong column" "const int c = kk * 16 + 2 * t;" "const int c = kk * 16 + t;"
mutant $A "causal mask off by one" "s[j][e] = key > row ? -INFINITY : x;" "s[j][e] = key >= row ? -INFINITY : x;"
mutant cuda/rmsnorm.cu "rmsnorm: no barrier before the warp sums are read" "__syncthreads();" "" 1
mutant cuda/rmsnorm.cu "rmsnorm: no barrier before rinv is read" "__syncthreads();" "" 2
mutant cuda/rmsnorm.cu "residual+rmsnorm: statistic of the old x" "v = bf16_to_f32_dev(s);" "(void)s;"
mutant cuda/rmsnorm.cu "residual+rmsnorm: new x not written back" "xr[c] = s;" ""
mutant cuda/moe.cu "moe_gather: row index not mapped" "dst[i] = x[(size_t)rows[r] * C + j];" "dst[i] = x[r * C + j];"
mutant cuda/moe.cu "moe_combine: contributions added last first" \
    "for (int p = start[r]; p < start[r + 1]; p++) {" "for (int p = start[r + 1] - 1; p >= start[r]; p--) {"
# the launchers' library calls (tests/cuda_sim_api.h's cuBLAS stand-in)
mutant cuda/matmul.cu "grouped expert GEMMs: C's leading dimension" \
    "lda[i] = in; ldb[i] = in; ldc[i] = out;" "lda[i] = in; ldb[i] = in; ldc[i] = in;"
mutant cuda/hessian.cu "f64 Hessian: the tile row's column offset dropped" \
    "CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, w, b, rows, &alpha, X + r0, CUDA_R_16BF, n," \
    "CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, w, b, rows, &alpha, X, CUDA_R_16BF, n,"
mutant cuda/gptq.cu "GPTQ lazy update: the trailing block's leading dimension" \
    "Hp + (size_t)i1 * in + i2, in, Err, BS, &p1, Wp + i2, in));" \
    "Hp + (size_t)i1 * in + i2, in, Err, BS, &p1, Wp + i2, in - i2));"
# the GPTQ sweep (one lane per row, the rows in shared memory)
mutant cuda/gptq.cu "GPTQ sweep: no barrier between loading the rows and sweeping them" "__syncthreads();" "" 3
mutant cuda/gptq.cu "GPTQ sweep: a lane's row read with the wrong stride" \
    "float *w = Ws + lane * ldw;" "float *w = Ws + lane * nb;"
mutant cuda/gptq.cu "GPTQ sweep: the updates reach one column too few" \
    "for (int j = c + 1; j < nb; j++) w[j] = __fsub_rn(w[j], __fmul_rn(err, u[j]));" \
    "for (int j = c + 1; j < nb - 1; j++) w[j] = __fsub_rn(w[j], __fmul_rn(err, u[j]));"
# the default factorisation (torch's CUDA calls: potrs against the identity)
mutant cuda/gptq.cu "GPTQ torch factor: U read from the Cholesky factor, not the solved right-hand side" \
    "if (potrs && !reuse) Hp = rhs; /* U lives there (or, after a failure, the fallback's identity) */" ""
mutant cuda/gptq.cu "GPTQ torch factor: the right-hand side not set to the identity" \
    "DS_LAUNCH(identity_kernel, (unsigned)CEIL_DIV(n2, (size_t)256), 256, 0, st, rhs, in);" ""
echo "$P passed, $F failed"
[ "$F" -eq 0 ]
