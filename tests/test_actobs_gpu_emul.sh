#!/bin/sh
# tests/test_actobs_gpu_emul.sh - the static activation observer (max |X| per
# used Linear input: FP8's and static int8's input_scale, NVFP4's
# input_global_scale) and
# QuantizationModifier on the CUDA engine (issue 14 item 5), without a GPU:
# build/doneshot-emul runs src/gpu_engine.c against tests/cuda_emul.c (the
# CPU twins of every launcher, act_absmax_cuda's included), so its checkpoint
# must equal --device cpu's byte for byte (max is order-independent: any
# difference is an orchestration bug: a missed capture, a wrong input id or
# width, a stale device max, a QuantizationModifier pass that summed Hessians).
# Runs (8 samples of 64 tokens, the bf16 fixture):
#   GPTQ FP8 -np 1, 2, 4; GPTQ NVFP4 -np 1, 2; QuantizationModifier FP8
#   -np 1, 2, 4 and NVFP4 -np 1; GPTQ FP8 with --offload-activations;
#   static int8 activations (W8A8 static, recipes/w8a8-static.json's
#   config_groups): QuantizationModifier and GPTQ, -np 1, 2;
#   a bf16 Mixtral (gen_model): QuantizationModifier FP8 and GPTQ NVFP4 with
#   routed and all-experts calibration (the experts' inputs are observed).
# Each checkpoint is also checked to carry positive finite static scales
# (input_scale / input_global_scale), so an observer that saw nothing fails.
# Needs BUILD/doneshot-emul, BUILD/gen_model, mpirun, python3 (stdlib).
BUILD=${BUILD:-build}
DS=$BUILD/doneshot
. tests/lib.sh
EM=$BUILD/doneshot-emul GEN=$BUILD/gen_model
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
FIXM=${DS_FIXTURES:-$BUILD/fixtures}/models/stories260K-bf16
D=data/tinystories_sample.txt
if [ ! -x "$EM" ] || [ ! -x "$GEN" ]; then
    fail "$EM or $GEN not built"; echo "$P passed, $F failed, $S skipped"; exit 1
fi
[ -d "$FIXM" ] || python3 tests/fixtures.py "${DS_FIXTURES:-$BUILD/fixtures}" >/dev/null ||
    { fail "tests/fixtures.py"; echo "$P passed, $F failed, $S skipped"; exit 1; }
$GEN --out $TMP/mixtral --arch mixtral --hidden 64 --heads 4 --kv-heads 2 --head-dim 16 --layers 2 --vocab 512 \
    --dtype bf16 --bos 1 --eos 2 --tokenizer-from data/stories260K --experts 8 --experts-per-tok 2 \
    --moe-intermediate 32 --intermediate 96 >/dev/null 2>&1 || { fail "gen_model mixtral"; echo "$P passed, $F failed, $S skipped"; exit 1; }

recipe() { # recipe FILE MODIFIER SCHEME [IGNORE]: IGNORE is appended to the ignore list
    printf '{"modifiers": [{"%s": {"scheme": "%s", "targets": ["Linear"], "ignore": ["lm_head"%s]}}]}\n' "$2" "$3" \
        "${4:+, \"$4\"}" >"$1"
}
recipe $TMP/gfp8.json GPTQModifier FP8
recipe $TMP/qfp8.json QuantizationModifier FP8
# NVFP4 groups of 16: the fixture's down_proj (172 columns) stays unquantized
recipe $TMP/gnv.json GPTQModifier NVFP4 're:.*down_proj'
recipe $TMP/qnv.json QuantizationModifier NVFP4 're:.*down_proj'
recipe $TMP/gnvm.json GPTQModifier NVFP4
# static int8 per-tensor activations: recipes/w8a8-static.json (GPTQ), its config_groups under QuantizationModifier
cp recipes/w8a8-static.json $TMP/gw8s.json
python3 -c 'import json, sys; g = json.load(open(sys.argv[1]))["modifiers"][0]["GPTQModifier"]
print(json.dumps({"modifiers": [{"QuantizationModifier": {k: g[k] for k in ("targets", "ignore", "config_groups")}}]}))' \
    recipes/w8a8-static.json >$TMP/qw8s.json
# scales OUT: "N" static scales, or "bad ..." when one is not positive and finite
scales() {
    python3 - "$1" <<'EOF'
import json, math, struct, sys
b = open(sys.argv[1] + "/model.safetensors", "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n]); h.pop("__metadata__", None)
def val(v):
    raw = b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
    if v["dtype"] == "F32": return struct.unpack("<f", raw)[0]
    if v["dtype"] == "BF16": return struct.unpack("<f", b"\0\0" + raw)[0]
    return float("nan")
s = {k: val(v) for k, v in h.items() if k.endswith(".input_scale") or k.endswith(".input_global_scale")}
bad = [k for k, x in s.items() if not (x > 0 and math.isfinite(x))]
print("bad " + " ".join(bad[:3]) if bad else len(s))
EOF
}
# run NAME NP RECIPE MODEL [extra args]: cpu and emulated cuda, then compare
run() {
    name=$1 np=$2 r=$3 mo=$4; shift 4
    o=$TMP/run$((P + F))
    for dev in cpu cuda; do
        timeout -k 10 120 $MPIRUN -np "$np" "$EM" --recipe $r --model "$mo" --dataset $D --num-samples 8 \
            --max-seq-len 64 --output $o-$dev --overwrite --device $dev "$@" >$o-$dev.log 2>&1 ||
            { fail "$name: --device $dev failed ($(tail -n 2 $o-$dev.log))"; return; }
    done
    grep -q "device: host emulator" $o-cuda.log || { fail "$name: the cuda run did not use the (emulated) CUDA engine"; return; }
    n=$(scales $o-cuda)
    case "$n" in ''|bad*|0) fail "$name: static scales of the cuda checkpoint: '$n'"; return ;; esac
    if cmp -s $o-cpu/model.safetensors $o-cuda/model.safetensors; then
        pass "$name: emulated cuda == cpu (byte-identical, $n static scales)"
    else
        fail "$name: emulated cuda checkpoint differs from cpu"
    fi
    rm -rf $o-cpu $o-cuda
}
export DS_EMUL_DEVICES=1
for np in 1 2 4; do run "GPTQ FP8 -np $np" $np $TMP/gfp8.json "$FIXM"; done
for np in 1 2; do run "GPTQ NVFP4 -np $np" $np $TMP/gnv.json "$FIXM"; done
for np in 1 2 4; do run "QuantizationModifier FP8 -np $np" $np $TMP/qfp8.json "$FIXM"; done
run "QuantizationModifier NVFP4 -np 1" 1 $TMP/qnv.json "$FIXM"
run "GPTQ FP8 --offload-activations -np 2" 2 $TMP/gfp8.json "$FIXM" --offload-activations
for np in 1 2; do run "QuantizationModifier W8A8 static int8 activations -np $np" $np $TMP/qw8s.json "$FIXM"; done
for np in 1 2; do run "GPTQ W8A8 static int8 activations -np $np" $np $TMP/gw8s.json "$FIXM"; done
for all in true false; do
    run "Mixtral QuantizationModifier FP8 all-experts=$all -np 2" 2 $TMP/qfp8.json $TMP/mixtral \
        --moe-calibrate-all-experts $all
    run "Mixtral GPTQ NVFP4 all-experts=$all -np 2" 2 $TMP/gnvm.json $TMP/mixtral --moe-calibrate-all-experts $all
done
echo "$P passed, $F failed, $S skipped"
[ "$F" -eq 0 ]
