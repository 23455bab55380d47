#!/bin/sh
# CPU benchmark of MoE calibration + GPTQ (docs/BENCHMARKS-moe.md): a
# Qwen3-30B-A3B-shaped synthetic model (hidden 2048, 32/4 heads x 128,
# 128 experts of width 768, top-8, bf16) with a reduced layer count and vocab,
# against a dense Qwen3 model with the same active parameters per token
# (intermediate 8 x 768 = 6144, same attention), both in this run, same
# calibration tokens (random ids). Prints per-layer forward / Hessian / solve
# (GPTQ) / save times from doneshot's per-layer log and the summary totals.
# usage: sh bench/bench_moe.sh [layers] [samples] [seq_len] [np]
set -eu
L=${1:-2}; S=${2:-16}; T=${3:-128}; NP=${4:-1}
BUILD=${BUILD:-build}
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
[ "$(id -u)" = 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
W=${BENCH_DIR:-/tmp/doneshot-bench-moe}
mkdir -p "$W"
[ -n "${SKIP_BUILD:-}" ] || make -s "$BUILD/doneshot" "$BUILD/gen_model" >/dev/null
common="--hidden 2048 --heads 32 --kv-heads 4 --head-dim 128 --layers $L --vocab 512 --dtype bf16 --bos 1 --eos 2 --tokenizer-from data/stories260K"
[ -f "$W/moe/config.json" ] || "$BUILD/gen_model" --out "$W/moe" --arch qwen3_moe --experts 128 \
    --experts-per-tok 8 --moe-intermediate 768 $common >/dev/null
[ -f "$W/dense/config.json" ] || "$BUILD/gen_model" --out "$W/dense" --arch qwen3 --intermediate 6144 \
    $common >/dev/null
python3 - "$W/calib.jsonl" "$S" "$T" <<'PY'
import json, random, sys
random.seed(0)
with open(sys.argv[1], "w") as f:
    for _ in range(int(sys.argv[2])):
        f.write(json.dumps({"input_ids": [random.randrange(3, 512) for _ in range(int(sys.argv[3]))]}) + "\n")
PY
echo "calibration: $S x $T tokens, $L layers, -np $NP, $(nproc) cores"
for m in dense moe; do
    $MPIRUN -np "$NP" "$BUILD/doneshot" --recipe recipes/w4a16.json --model "$W/$m" --dataset "$W/calib.jsonl" \
        --num-samples "$S" --max-seq-len "$T" --output "$W/out-$m" --overwrite --summary "$W/$m.json" \
        >"$W/$m.log" 2>&1 || { tail -20 "$W/$m.log"; exit 1; }
    echo "== $m"
    grep -E "layer [0-9]+/" "$W/$m.log" | sed 's/^doneshot: /  /'
    grep -E "done:|stage time" "$W/$m.log" | sed 's/^doneshot: /  /'
done
