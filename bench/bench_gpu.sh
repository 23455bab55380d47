#!/bin/sh
# bench_gpu.sh - one-command GPU benchmark (needs an NVIDIA GPU, nvcc, MPI).
#   1. builds doneshot and build/bench_gpu with CUDA (SKIP_BUILD=1: use what
#      BUILD holds, e.g. a bundle from bench/device_bundle.sh);
#   2. per-layer micro-benchmark: build/bench_gpu (Llama-3-8B layer, 512 x 2048
#      tokens; stage TFLOP/s vs a cuBLAS bf16 8192^3 peak; projected 32 layers);
#   3. end to end: a synthetic Llama-3-8B (build/gen_model --preset llama3-8b),
#      512 x 2048 random token ids, doneshot W4A16 at -np 1 on the GPU, timed,
#      then the seed table (bench/stage_table.py: per-stage time, TFLOP/s vs
#      the GEMM peak of step 2, peak GPU memory, save time); with OFFLOAD=1
#      also with --offload-activations --gpu-memory 7GB (the <= 8 GB target:
#      the plan leaves out the CUDA context);
#      FP8=1 (default): also GPTQ FP8 (recipes/fp8-gptq.json: fp8 weights, per-tensor
#      scales, static input_scale) end to end, with its stage table;
#   4. NP2=1 (default): the same job on 2 ranks sharing the GPU, and
#      build/ckpt_diff checks both checkpoints agree (>= 99.9 % int codes).
# DEADLINE (an epoch second; bench/device_check.sh sets it): every doneshot
# run gets `timeout` to 20 s before it, so the logs and tables still print.
# MICRO_REPS: --reps of the micro-benchmark (default 3); SKIP_MICRO=1 skips
# it (the stage tables then print no % of peak).
# TOKENIZER: a folder with the Llama-3 tokenizer.json for the synthetic model
# (doneshot reads it and copies it to the checkpoint, even for pre-tokenized
# ids); default BUILD/tokenizers/llama3 (the device bundle's), else
# build/fixtures/tokenizers/llama3 (made by tests/fixtures.py).
# GEN_ARGS: gen_model's shape (default --preset llama3-8b; a tiny shape and
# BUILD/doneshot the emulated engine make a dry run on a CPU).
# Usage: sh bench/bench_gpu.sh [WORKDIR]   (default /tmp/doneshot-bench; needs
#        ~16 GB of disk for the model). SKIP_E2E=1 runs only the micro-benchmark.
# Results go to WORKDIR/bench_gpu.txt, WORKDIR/e2e.txt (wall times, outcomes,
# stage tables, checkpoint checks), WORKDIR/e2e_TAG.log (each run's log) and
# WORKDIR/summary_TAG.json (TAG: w4a16, fp8, offload, np2). Exit status: the
# number of failed runs and checks.
set -eu
WORK=${1:-/tmp/doneshot-bench}
BUILD=${BUILD:-build}
JOBS=${JOBS:-$(nproc)}
SEQS=${SEQS:-512}
SEQ_LEN=${SEQ_LEN:-2048}
# MPIRUN: the launcher; empty when mpirun is absent (a device node without MPI,
# running a `make MPI=0` bundle, see bench/device_bundle.sh): then only -np 1.
if [ -z "${MPIRUN+x}" ]; then
    if command -v mpirun >/dev/null 2>&1; then
        MPIRUN="mpirun --oversubscribe $( [ "$(id -u)" = 0 ] && echo --allow-run-as-root )"
    else
        MPIRUN=""
    fi
fi
mkdir -p "$WORK"
# tmo: seconds to 20 s before DEADLINE (at least 1), or a day without one
tmo() {
    if [ -n "${DEADLINE:-}" ]; then t=$((DEADLINE - $(date +%s) - 20)); [ "$t" -lt 1 ] && t=1; echo $t
    else echo 86400; fi
}
# run_np N cmd...: cmd on N ranks (returns 0 and says so when N > 1 needs MPI)
run_np() {
    np=$1; shift
    if [ -n "$MPIRUN" ]; then timeout "$(tmo)" $MPIRUN -np "$np" "$@"
    elif [ "$np" = 1 ]; then timeout "$(tmo)" "$@"
    else echo "skipped: -np $np needs mpirun"; fi
}

command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if [ -z "${SKIP_BUILD:-}" ]; then
    echo "== build (CUDA=1)"
    make -j"$JOBS" CUDA=1 BUILD="$BUILD" all
fi

if [ "${SKIP_MICRO:-0}" != 1 ]; then
    echo "== per-layer micro-benchmark"
    timeout "$(tmo)" "$BUILD/bench_gpu" --seqs "$SEQS" --seq-len "$SEQ_LEN" --reps "${MICRO_REPS:-3}" 2>&1 |
        tee "$WORK/bench_gpu.txt"
fi

[ "${SKIP_E2E:-0}" = 1 ] && exit 0

echo "== synthetic Llama-3-8B model"
if [ ! -f "$WORK/model/config.json" ] || [ ! -f "$WORK/model/tokenizer.json" ]; then
    TOKENIZER=${TOKENIZER:-$BUILD/tokenizers/llama3}
    [ -f "$TOKENIZER/tokenizer.json" ] || TOKENIZER=build/fixtures/tokenizers/llama3
    [ -f "$TOKENIZER/tokenizer.json" ] || python3 tests/fixtures.py build/fixtures >/dev/null
    "$BUILD/gen_model" ${GEN_ARGS:---preset llama3-8b} --tokenizer-from "$TOKENIZER" --out "$WORK/model"
fi
echo "== $SEQS x $SEQ_LEN random calibration tokens (pre-tokenized jsonl)"
if [ ! -f "$WORK/tokens.jsonl" ]; then
    awk -v n="$SEQS" -v t="$SEQ_LEN" 'BEGIN { srand(1234);
        for (i = 0; i < n; i++) { printf "{\"input_ids\":[128000";
            for (j = 1; j < t; j++) printf ",%d", int(rand() * 128000); print "]}" } }' > "$WORK/tokens.jsonl"
fi
PEAK=$(sed -n 's/.*GEMM 8192^3: .* ms, \([0-9.]*\) TFLOP\/s.*/\1/p' "$WORK/bench_gpu.txt" 2>/dev/null | head -n 1)
: >"$WORK/e2e.txt"
fails=0
# e2e TAG NP doneshot-args...: one end-to-end run, its log in WORK/e2e_TAG.log,
# the wall time, its outcome and the stage table (from WORK/summary_TAG.json)
# appended to WORK/e2e.txt; a failed or timed-out run counts in the exit status
e2e() {
    tag=$1 np=$2
    shift 2
    echo "== doneshot $tag, -np $np, --device cuda: $*" | tee -a "$WORK/e2e.txt"
    START=$(date +%s.%N)
    run_np "$np" "$BUILD/doneshot" --model "$WORK/model" --dataset "$WORK/tokens.jsonl" --device cuda \
        --overwrite --summary "$WORK/summary_$tag.json" "$@" >"$WORK/e2e_$tag.log" 2>&1
    rc=$?
    END=$(date +%s.%N)
    tail -n 6 "$WORK/e2e_$tag.log"
    [ $rc = 0 ] || fails=$((fails + 1))
    awk -v s="$START" -v e="$END" -v rc=$rc 'BEGIN { printf "end-to-end wall time: %.1f s, exit %d%s\n", e - s, rc,
        rc == 124 ? " (timed out)" : "" }' | tee -a "$WORK/e2e.txt"
    if [ $rc = 0 ]; then
        python3 bench/stage_table.py "$WORK/summary_$tag.json" "$WORK/model" "$PEAK" "$SEQ_LEN" | tee -a "$WORK/e2e.txt"
    fi
    return $rc
}
# same A B: ckpt_diff's check that B has >= 99.9 % of A's int codes, into e2e.txt
same() {
    "$BUILD/ckpt_diff" "$1" "$2" 0.999 >"$WORK/ckpt_diff.out" 2>&1
    rc=$?
    tee -a "$WORK/e2e.txt" <"$WORK/ckpt_diff.out"
    [ $rc = 0 ] || fails=$((fails + 1))
}
set +e
# issue 12: target <= 75 s on one H100 (W4A16=0 skips it: a second call on a
# warm machine that adds FP8=1 / OFFLOAD=1 to the first call's checkpoint)
[ "${W4A16:-1}" = 1 ] && e2e w4a16 1 --recipe recipes/w4a16.json --output "$WORK/out"
if [ "${FP8:-1}" = 1 ]; then
    # issue 14: FP8 end to end (GPTQ with fp8 e4m3 weights, per-tensor scale, and the
    # static per-tensor input_scale observed in the GPU forward)
    e2e fp8 1 --recipe recipes/fp8-gptq.json --output "$WORK/out_fp8"
    rm -rf "$WORK/out_fp8" # 8 GB: the lent machine's disk also holds the model and two W4A16 outputs
fi
if [ "${OFFLOAD:-1}" = 1 ]; then
    # the plan leaves out the CUDA context (~0.5 GiB): 7GB keeps the process under 8 GB
    e2e offload 1 --recipe recipes/w4a16.json --offload-activations --gpu-memory 7GB --output "$WORK/out_offload" &&
        same "$WORK/out" "$WORK/out_offload"
fi
if [ "${NP2:-1}" = 1 ] && [ -n "$MPIRUN" ]; then
    # correctness: the same checkpoint as -np 1
    e2e np2 2 --recipe recipes/w4a16.json --output "$WORK/out_np2" && same "$WORK/out" "$WORK/out_np2"
fi
exit $fails
