#!/bin/sh
# What is deterministic (README "Determinism"), on random-weight bf16 Llamas
# from gen_model (8 layers, hidden 128; a few seconds per run):
#   * the same -np twice: byte-identical model.safetensors and config.json,
#     identical per-module GPTQ losses (the summation order is the same);
#   * -np 1 vs -np 2: the ranks' f64 Hessian partial sums are added in
#     another order; where that moves the last bit of the f32 Hessian, a code
#     at a rounding boundary can flip and the flip propagates through the
#     later layers. The checkpoints are equivalent, not identical: the summed
#     per-module GPTQ loss (--summary) agrees within 0.5 %. With OpenBLAS on
#     one thread such flips are rare (before, its threading changed sums and
#     ~4 % of the codes differed on seed 3); the test checks the loss bound
#     on seeds 3 and 11 and reports (SKIP) when no code differs, which is
#     the usual case now;
#   * --threads 1 vs --threads 3 at -np 1: byte-identical (the host threads
#     split GEMM rows, Hessian tiles and GPTQ output rows, never a sum), on a
#     model wide enough to split all three (intermediate 640: the down_proj
#     input's Hessian is tiled from 512 columns on; 384 and 640 output rows
#     > the 256-row GPTQ chunk), and on a Qwen2-MoE in both calibration modes
#     (a rank solves several modules at once on its threads).
# Env: BUILD, MPIRUN, PYTHON. Last line: "N passed, N failed, N skipped".
BUILD=${BUILD:-build}
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
PYTHON=${PYTHON:-python3}
T=/tmp/ds-determinism.$$
P=0; F=0; S=0
ok() { echo "ok   $1"; P=$((P + 1)); }
fail() { echo "FAIL $1"; F=$((F + 1)); }
skip() { echo "SKIP $1"; S=$((S + 1)); }
if [ "$(id -u)" = 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_rmaps_base_oversubscribe=1
BOUND=0.005
mkdir -p $T
trap 'rm -rf $T' EXIT

gen() { # gen SEED DIR
    $BUILD/gen_model --out "$2" --hidden 128 --intermediate 256 --layers 8 --heads 4 --kv-heads 2 --vocab 512 \
        --dtype bf16 --tokenizer-from data/stories260K --seed "$1" --threads 1 >"$2.gen.log" 2>&1
}
q() { # q NP MODEL OUT
    timeout -k 10 180 $MPIRUN -np "$1" $BUILD/doneshot --recipe recipes/stories260k-w4a16.json --model "$2" \
        --output "$3" --summary "$3.json" -q >"$3.log" 2>&1
}
loss() { # loss SUMMARY...: the summed per-module GPTQ loss of each
    $PYTHON -c 'import json, sys
for p in sys.argv[1:]: print("%.17g" % sum(m["loss"] for m in json.load(open(p))["modules"]))' "$@"
}
modlosses() { # the per-module losses, one per line
    $PYTHON -c 'import json, sys
for m in json.load(open(sys.argv[1]))["modules"]: print(m["name"], repr(m["loss"]))' "$1"
}

# ---- bitwise where the order is the same ----
gen 3 $T/m3 || fail "gen_model: $(tail -3 $T/m3.gen.log)"
q 2 $T/m3 $T/a2 && q 2 $T/m3 $T/b2 || fail "quantize -np 2: $(tail -3 $T/a2.log $T/b2.log)"
cmp -s $T/a2/model.safetensors $T/b2/model.safetensors && cmp -s $T/a2/config.json $T/b2/config.json \
    && ok "-np 2 twice: byte-identical checkpoint" || fail "-np 2 twice: checkpoints differ"
modlosses $T/a2.json >$T/a2.loss && modlosses $T/b2.json >$T/b2.loss && [ -s $T/a2.loss ] && cmp -s $T/a2.loss $T/b2.loss \
    && ok "-np 2 twice: identical per-module GPTQ losses" || fail "-np 2 twice: losses differ"

# ---- equivalent loss where the order differs ----
found=""
for seed in 3 11; do
    m=$T/m$seed
    [ -d $m ] || gen $seed $m || { fail "gen_model seed $seed"; break; }
    if [ $seed = 3 ]; then mv $T/a2 $T/s3-np2 && mv $T/a2.json $T/s3-np2.json
    else q 2 $m $T/s$seed-np2 || { fail "quantize seed $seed -np 2"; break; }; fi
    q 1 $m $T/s$seed-np1 || { fail "quantize seed $seed -np 1: $(tail -3 $T/s$seed-np1.log)"; break; }
    same=$($BUILD/ckpt_diff $T/s$seed-np1 $T/s$seed-np2 1.0 2>&1)
    l1=$(loss $T/s$seed-np1.json); l2=$(loss $T/s$seed-np2.json)
    rel=$($PYTHON -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print('%.3g' % (abs(a - b) / a))" "$l1" "$l2")
    echo "seed $seed: $same"
    echo "seed $seed: summed GPTQ loss -np 1 $l1, -np 2 $l2, relative difference $rel (bound $BOUND)"
    if $PYTHON -c "import sys; sys.exit(not float(sys.argv[1]) <= float(sys.argv[2]))" "$rel" "$BOUND"; then
        ok "seed $seed: -np 1 and -np 2 summed GPTQ loss within $BOUND ($rel)"
    else
        fail "seed $seed: -np 1 vs -np 2 summed GPTQ loss differs by $rel (> $BOUND)"
    fi
    if ! echo "$same" | grep -q "(100.0000 %)"; then found=$seed; break; fi
done
if [ -n "$found" ]; then
    ok "seed $found: -np 1 and -np 2 codes differ (not bitwise), loss equivalent"
else
    skip "no seed gave differing -np 1/-np 2 codes (the usual case: the f64 order difference flipped no code)"
fi

# ---- the thread count never changes the result ----
$BUILD/gen_model --out $T/wide --hidden 384 --intermediate 640 --layers 3 --heads 6 --kv-heads 2 --vocab 512 \
    --dtype bf16 --tokenizer-from data/stories260K --seed 5 --threads 1 >$T/wide.gen.log 2>&1 || fail "gen_model wide"
for th in 1 3; do
    timeout -k 10 180 $BUILD/doneshot --recipe recipes/stories260k-w4a16.json --model $T/wide --threads $th \
        --output $T/wide-t$th -q >$T/wide-t$th.log 2>&1 || fail "quantize --threads $th: $(tail -3 $T/wide-t$th.log)"
done
cmp -s $T/wide-t1/model.safetensors $T/wide-t3/model.safetensors \
    && ok "--threads 1 vs --threads 3: byte-identical checkpoint" \
    || fail "--threads 1 vs --threads 3: checkpoints differ ($($BUILD/ckpt_diff $T/wide-t1 $T/wide-t3 2>&1 | tail -1))"

# MoE: a rank solves several modules at once on its threads (one task per
# Hessian: q/k/v, o, the experts' shared gate/up, each expert's down_proj);
# the schedule never changes the result, in both calibration modes
$BUILD/gen_model --out $T/moe --arch qwen2_moe --hidden 128 --heads 4 --kv-heads 2 --layers 2 --vocab 512 \
    --experts 8 --experts-per-tok 2 --moe-intermediate 32 --intermediate 96 --shared-intermediate 48 \
    --dtype bf16 --tokenizer-from data/stories260K --seed 7 --threads 1 >$T/moe.gen.log 2>&1 || fail "gen_model moe"
for all in true false; do
    for th in 1 3; do
        timeout -k 10 180 $BUILD/doneshot --recipe recipes/stories260k-w4a16.json --model $T/moe --threads $th \
            --num-samples 12 --max-seq-len 48 --moe-calibrate-all-experts $all --output $T/moe-$all-t$th -q \
            >$T/moe-$all-t$th.log 2>&1 || fail "quantize qwen2_moe --threads $th: $(tail -3 $T/moe-$all-t$th.log)"
    done
    cmp -s $T/moe-$all-t1/model.safetensors $T/moe-$all-t3/model.safetensors \
        && ok "Qwen2-MoE (all experts: $all) --threads 1 vs --threads 3: byte-identical checkpoint" \
        || fail "Qwen2-MoE (all experts: $all) --threads 1 vs 3: checkpoints differ"
done

echo "$P passed, $F failed, $S skipped"
[ "$F" -eq 0 ]
