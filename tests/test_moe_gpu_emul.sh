#!/bin/sh
# tests/test_moe_gpu_emul.sh - MoE layers in the CUDA engine (issue 13),
# without a GPU: build/doneshot-emul runs src/gpu_engine.c against
# tests/cuda_emul.c (host memory, the CPU twins of every kernel, cuda/moe.cu's
# included), so its checkpoint must equal --device cpu's byte for byte: any
# difference is an orchestration bug (routing hand-off, expert row lists,
# gather/scatter, Hessian inputs and counts, weight slots), not rounding.
# Models: the bundled Mixtral variant (tests/fixtures.py) rounded to bf16, and
# small bf16 synthetic Mixtral (top-2, norm_topk), Qwen2-MoE (shared expert +
# sigmoid gate, no renormalisation) and Qwen3-MoE (norm_topk_prob) from
# gen_model; -np 1, 2, 4; moe_calibrate_all_experts true and false
# (routed: experts without tokens fall back to RTN with the counted warning,
# the same number on both devices); --offload-activations; the experts in
# groups (one batched GEMM per projection and group, one combine per group) of
# the default size (all of a chunk's experts here) and of one chunk's rows
# (DONESHOT_MOE_GROUP_ROWS=1: several groups per chunk); the planned
# micro-batch (several sequences per chunk: the Hessian twin still sums each
# sequence's rows, a routed expert's too, in f32 as the CPU does), micro-batch 1
# and micro-batch 5 (chunks of 5, 5, 2 sequences).
# Needs BUILD/doneshot, BUILD/doneshot-emul, BUILD/gen_model, mpirun.
BUILD=${BUILD:-build}
DS=$BUILD/doneshot
. tests/lib.sh
EMUL=$BUILD/doneshot-emul GEN=$BUILD/gen_model
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
if [ ! -x "$EMUL" ] || [ ! -x "$GEN" ]; then
    fail "$EMUL or $GEN not built"; echo "$P passed, $F failed, $S skipped"; exit 1
fi
common="--hidden 64 --heads 4 --kv-heads 2 --head-dim 16 --layers 2 --vocab 512 --dtype bf16 --bos 1 --eos 2
        --tokenizer-from data/stories260K --experts 8 --experts-per-tok 2 --moe-intermediate 32 --intermediate 96"
# the bundled Mixtral variant (tests/fixtures.py: 4 experts, top-2; f32) with its weights
# rounded to bf16 (the CUDA engine's dtype) by fixtures.py's own converter
FIX=${DS_FIXTURES:-$BUILD/fixtures}
python3 tests/fixtures.py "$FIX" >/dev/null &&
python3 - "$FIX/models/variants/mixtral-4x-top2" $TMP/mixtral_fixture <<'PY' || { fail "bf16 Mixtral fixture"; echo "$P passed, $F failed, $S skipped"; exit 1; }
import json, os, sys
sys.path.insert(0, "tests")
import fixtures as f
src, dst = sys.argv[1], sys.argv[2]
cfg = dict(json.load(open(os.path.join(src, "config.json"))), torch_dtype="bfloat16")
tens = f.st_read(os.path.join(src, "model.safetensors"))
f.write_model(dst, cfg, [(n, "BF16", s, f.f32_to_bf16(d)) if dt == "F32" else (n, dt, s, d) for n, dt, s, d in tens])
PY
$GEN --out $TMP/mixtral --arch mixtral $common >/dev/null 2>&1 &&
$GEN --out $TMP/qwen2_moe --arch qwen2_moe $common --shared-intermediate 48 --seed 7 >/dev/null 2>&1 &&
$GEN --out $TMP/qwen3_moe --arch qwen3_moe $common --seed 11 >/dev/null 2>&1 ||
    { fail "gen_model"; echo "$P passed, $F failed, $S skipped"; exit 1; }

NS=12 LEN=48
q() { # q BIN DEVICE NP MODEL ALL OUT [extra args]
    b=$1 d=$2 n=$3 mo=$4 al=$5 out=$6; shift 6
    timeout -k 10 120 $MPIRUN -np $n $b --recipe recipes/stories260k-w4a16.json --model $mo --device $d \
        --num-samples $NS --max-seq-len $LEN --moe-calibrate-all-experts $al --output $out --overwrite "$@" >$out.log 2>&1
}
rtn() { grep -c "no calibration token was routed" "$1" 2>/dev/null; }
for m in mixtral_fixture mixtral qwen2_moe qwen3_moe; do
    for all in true false; do
        for np in 1 2 4; do
            o=$TMP/$m-$all-$np
            if ! q $DS cpu $np $TMP/$m $all $o-cpu; then fail "$m all=$all -np $np: cpu run (log below)"; tail -5 $o-cpu.log; continue; fi
            if ! q $EMUL cuda $np $TMP/$m $all $o-cuda; then fail "$m all=$all -np $np: emulated cuda run"; tail -5 $o-cuda.log; continue; fi
            if cmp -s $o-cpu/model.safetensors $o-cuda/model.safetensors && [ "$(rtn $o-cpu.log)" = "$(rtn $o-cuda.log)" ]; then
                pass "$m all-experts=$all -np $np: emulated cuda == cpu (byte-identical, $(rtn $o-cpu.log) RTN warnings)"
            else
                fail "$m all-experts=$all -np $np: emulated cuda differs from cpu (RTN lines $(rtn $o-cpu.log) vs $(rtn $o-cuda.log))"
            fi
            rm -rf $o-cpu $o-cuda
        done
    done
done
# expert groups: DONESHOT_MOE_GROUP_ROWS=1 -> groups of one chunk's rows (48 tokens at
# --micro-batch 1): all-experts calibration 1 expert per group, routed ~2 groups per chunk
# (group tables, gather/combine offsets); the default above packed more rows per group
export DONESHOT_MOE_GROUP_ROWS=1
for m in mixtral qwen2_moe qwen3_moe; do
    for all in true false; do
        o=$TMP/$m-$all-grp
        def=$(sed -n 's/.*MoE expert groups of up to \([0-9]*\) rows.*/\1/p' $TMP/$m-$all-2-cuda.log | head -1)
        q $DS cpu 2 $TMP/$m $all $o-cpu && q $EMUL cuda 2 $TMP/$m $all $o-cuda --micro-batch 1 &&
        grep -q "MoE expert groups of up to 48 rows" $o-cuda.log && [ "${def:-0}" -gt 48 ] &&
        cmp -s $o-cpu/model.safetensors $o-cuda/model.safetensors &&
        pass "$m all-experts=$all -np 2, expert groups of 48 rows (default $def): emulated cuda == cpu" ||
        fail "$m all-experts=$all -np 2, expert groups of 48 rows (default ${def:-?}): differs from cpu, or group size"
        rm -rf $o-cpu $o-cuda
    done
done
unset DONESHOT_MOE_GROUP_ROWS
# routed calibration on 3 tokens: experts without a token fall back to RTN, counted the same way
NS=1 LEN=3
for m in mixtral qwen2_moe; do
    o=$TMP/$m-few
    q $DS cpu 2 $TMP/$m false $o-cpu && q $EMUL cuda 2 $TMP/$m false $o-cuda --micro-batch 1 &&
    [ "$(rtn $o-cpu.log)" -gt 0 ] && [ "$(rtn $o-cpu.log)" = "$(rtn $o-cuda.log)" ] &&
    cmp -s $o-cpu/model.safetensors $o-cuda/model.safetensors &&
    pass "$m routed, 3 tokens, -np 2: $(rtn $o-cpu.log) RTN fallbacks on both, byte-identical" ||
    fail "$m routed, 3 tokens: RTN warnings $(rtn $o-cpu.log) vs $(rtn $o-cuda.log), or checkpoints differ"
done
# --offload-activations (residual stream in pinned host memory, double-buffered staging)
for m in qwen2_moe qwen3_moe; do
    o=$TMP/$m-off
    q $DS cpu 2 $TMP/$m true $o-cpu && q $EMUL cuda 2 $TMP/$m true $o-cuda --micro-batch 1 --offload-activations &&
    grep -q "activations offloaded" $o-cuda.log && cmp -s $o-cpu/model.safetensors $o-cuda/model.safetensors &&
    pass "$m --offload-activations, -np 2: emulated cuda == cpu (byte-identical)" ||
    fail "$m --offload-activations, -np 2: emulated cuda differs from cpu (or did not offload)"
done
# micro-batch 5: chunks of 5, 5 and 2 sequences (routed experts' rows split per sequence in each)
NS=12 LEN=48
for m in mixtral qwen3_moe; do
    for all in true false; do
        o=$TMP/$m-$all-mb
        q $DS cpu 1 $TMP/$m $all $o-cpu && q $EMUL cuda 1 $TMP/$m $all $o-cuda --micro-batch 5 &&
        cmp -s $o-cpu/model.safetensors $o-cuda/model.safetensors &&
        pass "$m all-experts=$all --micro-batch 5: emulated cuda == cpu (byte-identical)" ||
        fail "$m all-experts=$all --micro-batch 5: emulated cuda differs from cpu"
        rm -rf $o-cpu $o-cuda
    done
done
echo "$P passed, $F failed, $S skipped"
[ $F -eq 0 ]
