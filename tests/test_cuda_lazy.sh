#!/bin/sh
# A CUDA build costs nothing without a GPU (issue 11 item 7): the doneshot of
# `make CUDA=1` links no CUDA library and loads $BUILD/libdoneshot-cuda.so
# (src/gpu_loader.c) only when the driver reports a device. Checks, on a
# machine without a GPU: no CUDA library in ldd, a CPU run's peak RSS stays
# small, --device cuda still exits 2 with a cause and a hint, a missing or
# broken DONESHOT_CUDA_LIB falls back cleanly; with a stand-in libcuda.so.1
# that reports one device (built here with cc), the engine library really is
# loaded (every symbol it takes from the executable resolves) and a library
# from another build is refused. CPU-only builds: SKIP.
# Last line: "N passed, N failed".
B=${BUILD:-build}
BIN=$B/doneshot
SO=$B/libdoneshot-cuda.so
P=0; F=0
ok() { P=$((P + 1)); }
fail() { echo "FAIL $1"; F=$((F + 1)); }
if [ ! -f "$SO" ] && ! ldd "$BIN" 2>/dev/null | grep -q libcudart; then
    echo "SKIP CPU-only build (no $SO)"
    echo "0 passed, 0 failed"
    exit 0
fi
T=$(mktemp -d /tmp/ds-cuda-lazy.XXXXXX)
trap 'rm -rf "$T"' EXIT
R="--recipe recipes/stories260k-w4a16.json --overwrite"
run() { timeout -k 10 120 "$BIN" "$@"; }
# --device auto asks for devices only for a model and scheme the CUDA engine
# runs (bf16, f16 or f32; src/main.c select_device): the auto cases below use
# the bf16 fixture
FIX=${DS_FIXTURES:-${BUILD:-build}/fixtures}
${PYTHON:-python3} tests/fixtures.py "$FIX" >/dev/null || { echo "FAIL fixtures"; exit 1; }
RB="$R --model $FIX/models/stories260K-bf16"

# 1. the binary maps no CUDA library; the engine library exports one symbol
ldd "$BIN" | grep -E 'libcuda|libcudart|libcublas|libcusolver|libnvJitLink' >"$T/ldd"
[ ! -s "$T/ldd" ] && ok || fail "doneshot links CUDA libraries: $(tr '\n' ' ' <"$T/ldd")"
[ -f "$SO" ] && [ "$(nm -D --defined-only "$SO" 2>/dev/null | awk '$2 == "T" { print $3 }')" = doneshot_gpu_backend ] \
    && ok || fail "$SO exports doneshot_gpu_backend only"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "SKIP no-GPU checks: this machine has a GPU"
else
    # 2. a CPU run of the CUDA build has the CPU build's footprint (~25 MB on
    #    stories260K; it was ~265 MB with cudart/cuBLAS/cuSOLVER linked)
    run $R --output "$T/cpu" --summary "$T/sum.json" -q >"$T/cpu.log" 2>&1 && ok || fail "CPU run exits 0"
    rss=$(tr -d ' \t\n' <"$T/sum.json" 2>/dev/null | sed -nE 's/.*"peak_rss_bytes":\[([0-9.e+]+).*/\1/p')
    mb=$(awk -v r="${rss:-0}" 'BEGIN { printf "%d", r / 1048576 }')
    [ -n "$rss" ] && [ "$mb" -gt 0 ] && [ "$mb" -lt 64 ] && echo "peak RSS $mb MB" && ok || fail "CPU run peak RSS ${mb} MB (expected < 64 MB)"

    # 3. --device cuda without a device: exit 2, a cause and a hint, no output
    run $R --device cuda --output "$T/cuda" >"$T/cuda.log" 2>&1; rc=$?
    [ $rc -eq 2 ] && grep -q -- '--device cuda' "$T/cuda.log" && grep -q '^hint:' "$T/cuda.log" && [ ! -e "$T/cuda" ] \
        && ok || { fail "--device cuda without a device: rc $rc (expected 2 + message)"; cat "$T/cuda.log"; }

    # 4. DONESHOT_CUDA_LIB naming a missing file: auto falls back to the CPU
    #    with a warning naming it; --device cuda exits 2
    DONESHOT_CUDA_LIB=$T/missing.so run $RB --output "$T/auto" >"$T/auto.log" 2>&1; rc=$?
    [ $rc -eq 0 ] && grep -q "DONESHOT_CUDA_LIB=$T/missing.so" "$T/auto.log" && grep -q 'device auto: cpu' "$T/auto.log" \
        && ok || { fail "DONESHOT_CUDA_LIB missing, --device auto: rc $rc"; cat "$T/auto.log"; }
    DONESHOT_CUDA_LIB=$T/missing.so run $R --device cuda --output "$T/cuda" >"$T/cuda2.log" 2>&1; rc=$?
    [ $rc -eq 2 ] && [ ! -e "$T/cuda" ] && ok || fail "DONESHOT_CUDA_LIB missing, --device cuda: rc $rc (expected 2)"

    # 5. a stand-in driver reporting one device makes the loader go on to the
    #    engine library: it loads (RTLD_NOW: every symbol resolves), the CUDA
    #    runtime then finds no real device, and the run falls back to the CPU
    if command -v cc >/dev/null 2>&1; then
        cat >"$T/drv.c" <<'EOF'
int cuInit(unsigned flags);
int cuDeviceGetCount(int *n);
int cuInit(unsigned flags) { (void)flags; return 0; }
int cuDeviceGetCount(int *n) { *n = 1; return 0; }
EOF
        cat >"$T/other.c" <<'EOF'
#include <stddef.h>
struct table { const char *version; size_t abi; void *count, *create; };
const struct table *doneshot_gpu_backend(void);
const struct table *doneshot_gpu_backend(void) {
    static const struct table t = {"0.0.0-other", 1, NULL, NULL};
    return &t;
}
EOF
        cc -shared -fPIC -o "$T/libcuda.so.1" "$T/drv.c" && cc -shared -fPIC -o "$T/other.so" "$T/other.c" || fail "cc"
        LD_LIBRARY_PATH=$T run $RB --output "$T/fake" -v >"$T/fake.log" 2>&1; rc=$?
        [ $rc -eq 0 ] && grep -q 'CUDA runtime reports no device (driver: 1)' "$T/fake.log" \
            && grep -q 'device auto: cpu' "$T/fake.log" && ! grep -q 'warning' "$T/fake.log" \
            && ok || { fail "engine library loaded by the stand-in driver: rc $rc"; grep doneshot "$T/fake.log"; }
        DONESHOT_CUDA_LIB=/etc/hostname LD_LIBRARY_PATH=$T run $RB --output "$T/fake" >"$T/bad.log" 2>&1; rc=$?
        [ $rc -eq 0 ] && grep -q 'cannot load the CUDA engine: /etc/hostname' "$T/bad.log" \
            && ok || { fail "DONESHOT_CUDA_LIB not a library: rc $rc"; cat "$T/bad.log"; }
        DONESHOT_CUDA_LIB=$T/other.so LD_LIBRARY_PATH=$T run $R --device cuda --output "$T/other" >"$T/other.log" 2>&1
        rc=$?
        [ $rc -eq 2 ] && grep -q 'from another build' "$T/other.log" && [ ! -e "$T/other" ] \
            && ok || { fail "engine library of another build: rc $rc (expected 2)"; cat "$T/other.log"; }
    else
        echo "SKIP stand-in driver: no cc"
    fi
fi
echo "$P passed, $F failed"
[ "$F" -eq 0 ]
