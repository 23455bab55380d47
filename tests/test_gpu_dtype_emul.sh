#!/bin/sh
# tests/test_gpu_dtype_emul.sh - float16 and float32 models on the CUDA engine
# (issue 13 item 5), without a GPU: build/doneshot-emul runs src/gpu_engine.c
# against tests/cuda_emul.c (the kernels' CPU twins). The engine computes
# the forward in bfloat16 for every model dtype (weights, norms, embeddings
# and the residual stream rounded to bfloat16 on upload) while GPTQ quantizes
# the model's own weight values and rounds scales to the model dtype, so the
# checkpoint has --device cpu's tensors (names, dtypes, shapes) and a
# per-module GPTQ loss close to it, not equal (the CPU computes in the model
# dtype). Checks, 16 samples of 64 tokens:
#   * the bundled f32 stories260K, an f16 Llama and an f16 Qwen3-MoE
#     (gen_model): exit 0, the device line says "<dtype> model, bfloat16
#     forward", the same tensor table as --device cpu, summed GPTQ loss within
#     2 % and every module's within 10 % of the CPU's, `doneshot eval` ppl
#     within 2 %; a byte-reinterpretation bug (f16 read as bf16) or a missed
#     conversion moves these by orders of magnitude;
#   * -np 2 on the f16 Llama: summed loss within 1 % of -np 1;
#   * resume on the f16 Llama (the residual state is bfloat16, the engine's
#     resid_dtype): stop after layer 1, --resume, byte-identical checkpoint.
# Needs BUILD/doneshot-emul, BUILD/gen_model, mpirun, python3 (stdlib).
BUILD=${BUILD:-build}
DS=$BUILD/doneshot
. tests/lib.sh
EM=$BUILD/doneshot-emul GEN=$BUILD/gen_model
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
D=data/tinystories_sample.txt
if [ ! -x "$EM" ] || [ ! -x "$GEN" ]; then
    fail "$EM or $GEN not built"; echo "$P passed, $F failed, $S skipped"; exit 1
fi
export DS_EMUL_DEVICES=1
$GEN --out $TMP/f16 --hidden 128 --intermediate 256 --layers 2 --heads 4 --kv-heads 2 --vocab 512 --dtype f16 \
    --tokenizer-from data/stories260K --bos 1 --eos 2 >/dev/null 2>&1 || fail "gen_model f16 llama"
$GEN --out $TMP/moe16 --arch qwen3_moe --hidden 64 --intermediate 128 --layers 2 --heads 4 --kv-heads 2 \
    --head-dim 16 --vocab 512 --dtype f16 --tokenizer-from data/stories260K --bos 1 --eos 2 --experts 4 \
    --experts-per-tok 2 --moe-intermediate 32 >/dev/null 2>&1 || fail "gen_model f16 qwen3_moe"
R=recipes/stories260k-w4a16.json

# cmp_runs A.json B.json A_DIR B_DIR SUMTOL MODTOL: "ok <details>" or "bad <details>"
cmp_runs() {
    python3 - "$@" <<'EOF'
import json, struct, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
def table(d):
    raw = open(d + "/model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    h = json.loads(raw[8:8 + n]); h.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"]) for k, v in h.items()}
ta, tb = table(sys.argv[3]), table(sys.argv[4])
la = {m["name"]: m["loss"] for m in a["modules"]}
lb = {m["name"]: m["loss"] for m in b["modules"]}
tol_sum, tol_mod = float(sys.argv[5]), float(sys.argv[6])
ok = sorted(la) == sorted(lb) and len(lb) > 0 and ta == tb
worst = max(abs(la[k] - lb[k]) / max(lb[k], 1e-30) for k in lb) if ok else float("inf")
ratio = sum(la.values()) / sum(lb.values()) if ok else float("inf")
ok = ok and abs(ratio - 1) <= tol_sum and worst <= tol_mod and all(x == x for x in la.values())
print("%s %d modules, same tensor table: %s, summed loss ratio %.5f, worst module %.4f" % (
    "ok" if ok else "bad", len(lb), ta == tb, ratio, worst))
EOF
}
ppl() { "$DS" eval --model "$1" --dataset $D --seq-len 64 --max-windows 20 --json -q 2>/dev/null | tail -1 |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])'; }

for case in "f32 data/stories260K float32" "f16 $TMP/f16 float16" "moe16 $TMP/moe16 float16"; do
    set -- $case
    A="--recipe $R --model $2 --dataset $D --num-samples 16 --max-seq-len 64 -q"
    timeout -k 10 300 "$EM" $A --device cuda --output $TMP/$1.cuda --summary $TMP/$1.cuda.json >$TMP/$1.cuda.log 2>&1
    rc=$?
    timeout -k 10 300 "$DS" $A --device cpu --output $TMP/$1.cpu --summary $TMP/$1.cpu.json >$TMP/$1.cpu.log 2>&1
    if [ $rc -ne 0 ] || [ ! -f $TMP/$1.cpu.json ]; then
        fail "$1: emulated cuda rc=$rc $(tail -3 $TMP/$1.cuda.log $TMP/$1.cpu.log)"; continue
    fi
    dev=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["device"])' $TMP/$1.cuda.json)
    case "$dev" in
        *"| $3 model, bfloat16 forward"*) pass "$1: the device line says '$3 model, bfloat16 forward'";;
        *) fail "$1: device line: $dev";;
    esac
    out=$(cmp_runs $TMP/$1.cuda.json $TMP/$1.cpu.json $TMP/$1.cuda $TMP/$1.cpu 0.02 0.10)
    case "$out" in ok*) pass "$1: emulated cuda vs cpu: ${out#ok }";; *) fail "$1: ${out}";; esac
    pa=$(ppl $TMP/$1.cuda) pb=$(ppl $TMP/$1.cpu)
    if python3 -c "import sys; a, b = float('$pa'), float('$pb'); sys.exit(not abs(a - b) / b <= 0.02)" 2>/dev/null; then
        pass "$1: eval ppl of the two checkpoints within 2 % ($pa vs $pb)"
    else fail "$1: eval ppl $pa (cuda) vs $pb (cpu)"; fi
done

# -np 2 on the f16 model
A="--recipe $R --model $TMP/f16 --dataset $D --num-samples 16 --max-seq-len 64 -q"
timeout -k 10 300 $MPIRUN -np 2 "$EM" $A --device cuda --output $TMP/np2 --summary $TMP/np2.json >$TMP/np2.log 2>&1
if [ -f $TMP/np2.json ] && [ -f $TMP/f16.cuda.json ]; then
    out=$(cmp_runs $TMP/np2.json $TMP/f16.cuda.json $TMP/np2 $TMP/f16.cuda 0.01 0.10)
    case "$out" in ok*) pass "f16 -np 2 vs -np 1 (emulated cuda): ${out#ok }";; *) fail "f16 -np 2: $out";; esac
else fail "f16 -np 2: $(tail -3 $TMP/np2.log)"; fi

# resume: the bfloat16 residual state of a float16 model
timeout -k 10 300 "$EM" $A --device cuda --output $TMP/res --stop-after-layer 1 --resume-interval 0 \
    >$TMP/res1.log 2>&1
timeout -k 10 300 "$EM" $A --device cuda --output $TMP/res --resume >$TMP/res2.log 2>&1
if grep -q "stopped after layer 1" $TMP/res1.log && [ -f $TMP/res/model.safetensors ] &&
   cmp -s $TMP/res/model.safetensors $TMP/f16.cuda/model.safetensors; then
    pass "f16 on the (emulated) CUDA engine: stop after layer 1 + --resume == the uninterrupted checkpoint"
else fail "f16 resume: $(tail -n 3 $TMP/res1.log $TMP/res2.log)"; fi

echo "$P passed, $F failed, $S skipped"
[ "$F" -eq 0 ]
