#!/bin/sh
# device_check.sh - every GPU check and benchmark in one call on a lent GPU
# machine, from the bundle of bench/device_bundle.sh unpacked in DIR (default
# /tmp/doneshot-device), with a checkout of the repo as the working folder.
#
# A lent machine gives one call of at most 10 minutes and 15 minutes of device
# time in all, so the steps run in priority order under one wall-clock budget:
# each gets `timeout` of at most its cap and of what is left of BUDGET; a step
# that would have less than its floor is skipped (and says so). After every
# step its log and the running table steps.txt (step, status, seconds) are
# copied to $OUT, so a call cut short still returns what it finished.
#
#   STEPS   which steps, in this order (default: twins accept f32 factor
#           np2 bench moe: the short checks first); names:
#     twins   tests/test_kernels: every CUDA kernel vs its CPU twin (passes
#             only when all ran, none skipped)
#     accept  bf16 demo model, --device cuda vs --device cpu, resident and
#             with --offload-activations --micro-batch 3: summed per-module
#             GPTQ loss within 0.5 % and >= 95 % identical int codes
#     bench   bench/bench_gpu.sh with the bundle's binaries, -np 1: the
#             per-layer micro-benchmark (cuBLAS peak, fused attention and
#             factorisation A/B lines), a synthetic Llama-3-8B (16 GB),
#             512 x 2048 random ids, W4A16 end to end and its stage table
#             (issue 12's 75 s target); FP8=1 / OFFLOAD=1 add those runs
#     moe     bench/bench_moe.sh gpu (issue 13): per-module loss parity cuda
#             vs cpu on a 2-layer cut of the Qwen3-30B-A3B shape (within
#             0.5 % summed, <= 1 % of modules over 0.5 %; CUT_SEQS x CUT_LEN ids, default 16 x 256), then MOE_LAYERS (default 12) layers of it on 512 x
#             2048 ids under what is left of the step's cap
#     f32     the float32 demo model on cuda (bfloat16 forward) vs cpu:
#             summed GPTQ loss within 2 %
#     factor  DONESHOT_GPTQ_FACTOR=flip and =potri vs the default
#             factorisation (torch's potrs) on cuda: each summed loss within
#             1e-3 and >= 95 % identical codes (both always printed)
#     np2     mpirun -np 2 on one GPU through the bundled Open MPI: summed
#             per-module loss vs -np 1 within 0.5 %, both times
#   BUDGET  wall-clock seconds for the whole script (default 540: a 600 s
#           call keeps time to copy the results back)
#
# Exit status: the number of failed or timed-out steps (skipped ones do not
# count). Checked on the CPU: a bundle without a GPU fails every GPU step
# cleanly within the budget and copies every log.
set -u
# sourced by run_step with DEVICE_CHECK_FUNCS=1 (D from the environment)
[ "${DEVICE_CHECK_FUNCS:-0}" = 1 ] || D=${1:-/tmp/doneshot-device}
W=/tmp/doneshot-check
M=$D/models/stories260K-bf16
# left: seconds of the budget left (DEADLINE: the epoch second it ends)
left() { echo $((DEADLINE - $(date +%s))); }
# save: this run's logs, and what the benchmarks left in their folders, to $OUT
save() {
    cp /tmp/doneshot-bench/*.txt /tmp/doneshot-bench/*.log $W/ 2>/dev/null
    for f in /tmp/doneshot-bench/summary*.json; do [ -f "$f" ] && cp "$f" "$W/bench_${f##*/}"; done
    for f in /tmp/doneshot-moe/*.json /tmp/doneshot-moe/*.log; do [ -f "$f" ] && cp "$f" "$W/moe_${f##*/}"; done
    [ -n "${OUT:-}" ] && cp $W/*.txt $W/*.json $W/*.log "$OUT"/ 2>/dev/null
    return 0
}
# loss_cmp A.json B.json BOUND: summed per-module GPTQ loss of B within BOUND
# (relative) of A's; prints both sums, the worst module and both times
loss_cmp() {
    python3 - "$@" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
bound = float(sys.argv[3])
la = {m["name"]: m["loss"] for m in a["modules"]}
lb = {m["name"]: m["loss"] for m in b["modules"]}
worst = max(la, key=lambda k: abs(la[k] - lb[k]) / max(abs(la[k]), 1e-12))
sa, sb = sum(la.values()), sum(lb.values())
dev = lambda s: s.get("device", "?").split(" |")[0]  # the device, not the plan details
print(f"{dev(a)} {a['total_time_s']:.2f} s, {dev(b)} {b['total_time_s']:.2f} s; "
      f"summed loss {sa:.6g} vs {sb:.6g} (rel {abs(sb - sa) / sa:.2e}, bound {bound:g}); worst module {worst} "
      f"rel {abs(la[worst] - lb[worst]) / max(abs(la[worst]), 1e-12):.2e}; gptq stage "
      f"{a['stage_time_s']['gptq']:.3f} s vs {b['stage_time_s']['gptq']:.3f} s")
sys.exit(0 if abs(sb - sa) <= bound * sa else 1)
PY
}

step_twins() {
    "$D/test_kernels" >$W/test_kernels.out 2>&1
    cat $W/test_kernels.out
    # passes only when every twin test ran and passed (skips mean no device)
    tail -n 1 $W/test_kernels.out | grep -q "^[1-9][0-9]* passed, 0 failed, 0 skipped"
}
step_accept() {
    [ -d "$M" ] || { echo "$M not in the bundle"; return 1; }
    R="--recipe recipes/stories260k-w4a16.json --model $M --overwrite"
    "$D/doneshot" $R --device cpu --output $W/cpu -q --summary $W/accept_cpu.json &&
    "$D/doneshot" $R --device cuda --output $W/cuda --summary $W/accept_cuda.json &&
    "$D/doneshot" $R --device cuda --offload-activations --micro-batch 3 --output $W/off -q \
        --summary $W/accept_off.json || return 1
    # issue 12: per-module loss is the acceptance measure across devices (the
    # codes move with any summation order); both are printed. On the
    # simulator: 99.28 % codes, summed loss rel 7.6e-5, worst module 7.9e-3
    rc=0
    for t in cuda off; do
        "$D/ckpt_diff" $W/cpu $W/$t 0.95 || rc=1
        loss_cmp $W/accept_cpu.json $W/accept_$t.json 5e-3 || rc=1
    done
    return $rc
}
step_bench() {
    # DEADLINE (exported by run_step): each run ends 20 s before the step's
    # timeout, so its stage table and checkpoint check still print
    MPIRUN="" BUILD="$D" SKIP_BUILD=1 NP2=0 FP8=${FP8:-0} OFFLOAD=${OFFLOAD:-0} MICRO_REPS=1 \
        sh bench/bench_gpu.sh /tmp/doneshot-bench
}
step_moe() {
    # the parity cut's cpu run: 16 x 256 ids (2 layers of 388 modules took 210 s
    # on 2 cores here at 8 x 256; the device host has 16)
    BUILD="$D" MOE_LAYERS=${MOE_LAYERS:-12} CUT_SEQS=${CUT_SEQS:-16} CUT_LEN=${CUT_LEN:-256} \
        sh bench/bench_moe.sh gpu /tmp/doneshot-moe
}
step_f32() {
    R="--recipe recipes/stories260k-w4a16.json --model data/stories260K --overwrite -q"
    "$D/doneshot" $R --device cpu --output $W/f32cpu --summary $W/f32cpu.json &&
    "$D/doneshot" $R --device cuda --output $W/f32cuda --summary $W/f32cuda.json &&
    loss_cmp $W/f32cpu.json $W/f32cuda.json 2e-2 # emulator: 0.3 %, worst module 2.5e-2
}
step_factor() {
    [ -d "$M" ] || { echo "$M not in the bundle"; return 1; }
    R="--recipe recipes/stories260k-w4a16.json --model $M --overwrite -q --device cuda"
    "$D/doneshot" $R --output $W/fdef --summary $W/fdef.json || return 1
    rc=0
    # the gate is the loss; the codes only 95 %: another factorisation is
    # another rounding of U, which GPTQ's error feedback spreads (on the
    # simulator potri vs the default: 100 % at 64 x 256 ids, 91.8 % at 8 x 64)
    for m in flip potri; do
        echo "-- DONESHOT_GPTQ_FACTOR=$m vs the default"
        DONESHOT_GPTQ_FACTOR=$m "$D/doneshot" $R --output $W/f$m --summary $W/f$m.json || { rc=1; continue; }
        "$D/ckpt_diff" $W/fdef $W/f$m 0.95 || rc=1
        loss_cmp $W/fdef.json $W/f$m.json 1e-3 || rc=1
    done
    return $rc
}
step_np2() {
    # both ranks share the GPU; the sample split changes the summation order,
    # so codes may differ: compare losses
    [ -x "$D/mpi/doneshot" ] && [ -d "$D/ompi" ] && [ -d "$M" ] ||
        { echo "the bundle has no mpi/doneshot, ompi/ or demo model"; return 1; }
    OMPI_BUNDLE=$D/ompi
    . "$D/ompi/env.sh"
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    R="--recipe recipes/stories260k-w4a16.json --model $M --overwrite --device cuda -q"
    "$D/mpi/doneshot" $R --output $W/np1 --summary $W/np1.json &&
    mpirun --oversubscribe -np 2 "$D/mpi/doneshot" $R --output $W/np2 --summary $W/np2.json &&
    loss_cmp $W/np1.json $W/np2.json 5e-3
}

# run_step NAME CAP FLOOR: step_NAME under timeout t = min(CAP, left - 15)
# in a shell of its own (its exports stay there; the benchmarks end their
# runs by DEADLINE = now + t), log in $W/NAME.txt, outcome in steps.txt
run_step() {
    name=$1 cap=$2 floor=$3
    t=$(($(left) - 15))
    [ "$t" -gt "$cap" ] && t=$cap
    if [ "$t" -lt "$floor" ]; then
        echo "== $name: skipped ($t s left of the budget, needs $floor)"
        printf '%-7s skipped   (budget)\n' "$name" >>$W/steps.txt
        save
        return
    fi
    echo "== $name (timeout $t s)"
    s=$(date +%s)
    DEVICE_CHECK_FUNCS=1 D=$D DEADLINE=$((s + t)) timeout "$t" sh -c ". bench/device_check.sh && step_$name" \
        >$W/$name.txt 2>&1
    rc=$?
    el=$(($(date +%s) - s))
    cat $W/$name.txt
    case $rc in
    0) st=passed ;;
    124 | 137) st=timeout fails=$((fails + 1)) ;;
    *) st="failed($rc)" fails=$((fails + 1)) ;;
    esac
    printf '%-7s %-9s %5d s\n' "$name" "$st" "$el" >>$W/steps.txt
    save
}

[ "${DEVICE_CHECK_FUNCS:-0}" = 1 ] && return 0
STEPS=${STEPS:-"twins accept f32 factor np2 bench moe"}
BUDGET=${BUDGET:-540}
DEADLINE=$(($(date +%s) + BUDGET))
T0=$(date +%s)
export LD_LIBRARY_PATH="$D/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
rm -rf $W /tmp/doneshot-bench/*.txt /tmp/doneshot-bench/*.log /tmp/doneshot-bench/summary*.json \
    /tmp/doneshot-moe/*.json /tmp/doneshot-moe/*.log
mkdir -p $W
fails=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >$W/gpu.txt 2>&1 ||
    echo "nvidia-smi: none" >$W/gpu.txt
cat $W/gpu.txt
git rev-parse --short HEAD >>$W/gpu.txt 2>/dev/null
for name in $STEPS; do
    case $name in
    twins) run_step twins 150 30 ;;
    accept) run_step accept 120 20 ;;
    bench) run_step bench 330 150 ;;
    moe) run_step moe 400 200 ;;
    f32) run_step f32 120 20 ;;
    factor) run_step factor 150 30 ;;
    np2) run_step np2 150 30 ;;
    *) echo "unknown step '$name' (twins accept bench moe f32 factor np2)"; fails=$((fails + 1)) ;;
    esac
done
echo "== steps ($(($(date +%s) - T0)) s of a $BUDGET s budget)"
cat $W/steps.txt
save
echo "device_check: $fails failed step(s)"
exit $fails
