#!/bin/sh
# FP8 end to end on the bundled model (fast: 8 samples of 64 tokens):
#  - QuantizationModifier FP8 at -np 1, 2, 4: the same fp8 weight bytes, and
#    the static input_scale (max |x| over every rank's tokens, MPI max) within
#    1e-6 relative of -np 1 (the forward's f32 sums may differ by an ulp);
#  - the float-quantized layout (weight F8_E4M3 [out, in], weight_scale [1],
#    input_scale [1]) and `doneshot eval` of it;
#  - GPTQModifier FP8_DYNAMIC at -np 2: per-channel weight_scale [out, 1], no
#    input_scale, eval;
#  - stop after layer 2 + --resume == the uninterrupted run (the codes live in
#    "<module>.weight" here);
#  - GPTQModifier FP8_DYNAMIC and FP8_BLOCK on the emulated CUDA engine
#    (doneshot-emul, CPU twins) on the bf16 fixture: the checkpoint is byte-
#    identical to --device cpu's, at -np 1 and 2 (FP8_BLOCK: -np 1); the same
#    for NVFP4A16 (down_proj ignored: 172 columns) at -np 1 and 2, GPTQ FP8
#    (static input_scale) and QuantizationModifier FP8 at -np 2 (more static
#    observer runs: tests/test_actobs_gpu_emul.sh), and GPTQ W8A8 at -np 1, 2;
#  - QuantizationModifier FP8_DYNAMIC (-np 1, 2), W8A8 and NVFP4A16 without
#    --dataset write the checkpoint a run with data writes; GPTQ without one
#    is exit 2;
#  - an unsupported preset is exit 2 listing the supported ones.
# Last line: "N passed, N failed, N skipped".
BUILD=${BUILD:-build}
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
DS=$BUILD/doneshot
. tests/lib.sh

M=data/stories260K
D=data/tinystories_sample.txt
recipe() { # recipe FILE MODIFIER SCHEME
    printf '{"modifiers": [{"%s": {"scheme": "%s", "targets": ["Linear"], "ignore": ["lm_head"]}}]}\n' "$2" "$3" >"$1"
}
q() { # q NP RECIPE OUT ARGS...
    np=$1; r=$2; out=$3; shift 3
    timeout -k 10 300 $MPIRUN -np "$np" "$DS" --recipe "$r" --model $M --dataset $D --num-samples 8 \
        --max-seq-len 64 --output "$out" --overwrite "$@" >"$out.log" 2>&1
}
# st_py layout A | st_py cmp A B: python3 (stdlib only) reads the safetensors of
# checkpoint A (and B): the layout summary of A, or A compared with B.
st_py() {
    python3 - "$@" <<'EOF'
import json, struct, sys
def load(d):
    b = open(d + "/model.safetensors", "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); h.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]) for k, v in h.items()}
def f32(t):
    return struct.unpack("<%df" % (len(t[2]) // 4), t[2])
A = load(sys.argv[2])
if sys.argv[1] == "layout":
    w = [k for k in A if A[k][0] == "F8_E4M3"]
    shapes = {A[k[:-7] + ".weight_scale"][0] + str(A[k[:-7] + ".weight_scale"][1]) for k in w}
    ins = [k for k in A if k.endswith(".input_scale")]
    print("f8=%d scales=%s input_scales=%d positive=%d" % (len(w), ",".join(sorted(shapes)), len(ins),
          sum(1 for k in ins if f32(A[k])[0] > 0)))
else:
    B = load(sys.argv[3])
    same_f8 = sorted(A) == sorted(B) and all(A[k][2] == B[k][2] for k in A if A[k][0] == "F8_E4M3")
    rel = max([abs(a - b) / abs(b) for k in A if k.endswith("_scale") for a, b in zip(f32(A[k]), f32(B[k]))] or [0])
    print("same_f8=%d max_scale_rel=%.3g identical=%d" % (same_f8, rel, all(A[k] == B[k] for k in A)))
EOF
}

recipe $TMP/fp8.json QuantizationModifier FP8
for np in 1 2 4; do
    q $np $TMP/fp8.json $TMP/f$np && pass "FP8 QuantizationModifier at -np $np" \
        || fail "FP8 QuantizationModifier at -np $np: $(tail -2 $TMP/f$np.log)"
done
lay=$(st_py layout $TMP/f1)
[ "$lay" = "f8=35 scales=F32[1] input_scales=35 positive=35" ] && pass "float-quantized layout ($lay)" \
    || fail "float-quantized layout: $lay"
grep -q '"format":[[:space:]]*"float-quantized"' $TMP/f1/config.json &&
    grep -q '"observer":[[:space:]]*"static_minmax"' $TMP/f1/config.json \
    && pass "quantization_config: float-quantized, static input_activations" || fail "quantization_config of FP8"
for np in 2 4; do
    r=$(st_py cmp $TMP/f$np $TMP/f1)
    case "$r" in
    same_f8=1*) awk -v x="${r#*max_scale_rel=}" 'BEGIN { exit !(x + 0 <= 1e-6) }' \
        && pass "-np $np vs -np 1: $r" || fail "-np $np vs -np 1: input_scale differs: $r" ;;
    *) fail "-np $np vs -np 1: $r" ;;
    esac
done
out=$("$DS" eval --model $TMP/f1 --dataset $D --seq-len 64 --max-windows 4 --json -q 2>&1)
echo "$out" | grep -q '"quantized": true' && pass "doneshot eval reads the FP8 checkpoint" || fail "eval FP8: $out"

recipe $TMP/dyn.json GPTQModifier FP8_DYNAMIC
recipe $TMP/gfp8.json GPTQModifier FP8
q 2 $TMP/dyn.json $TMP/d2 && pass "FP8_DYNAMIC GPTQModifier at -np 2" || fail "FP8_DYNAMIC GPTQ: $(tail -2 $TMP/d2.log)"
lay=$(st_py layout $TMP/d2)
case "$lay" in "f8=35 scales=F32[172, 1],F32[32, 1],F32[64, 1] input_scales=0 positive=0")
    pass "FP8_DYNAMIC layout: per-channel scales, no input_scale ($lay)" ;; *) fail "FP8_DYNAMIC layout: $lay" ;; esac
out=$("$DS" eval --model $TMP/d2 --dataset $D --seq-len 64 --max-windows 4 --json -q 2>&1)
echo "$out" | grep -q '"quantized": true' && pass "doneshot eval reads the FP8_DYNAMIC checkpoint" || fail "eval FP8_DYNAMIC: $out"

# the CUDA engine (emulated: doneshot-emul runs the launchers' CPU twins) on
# the bf16 fixture (the CUDA engine computes in bf16) == the CPU engine
EM=$BUILD/doneshot-emul
FIXM=${DS_FIXTURES:-$BUILD/fixtures}/models/stories260K-bf16
if [ -x "$EM" ] && [ -d "$FIXM" ]; then
    recipe $TMP/blk.json GPTQModifier FP8_BLOCK
    recipe $TMP/w8.json GPTQModifier W8A8 # int8 weights, dynamic int8 activations (no observer)
    printf '{"modifiers": [{"GPTQModifier": {"scheme": "NVFP4A16", "targets": ["Linear"], "ignore": ["lm_head", "re:.*down_proj"]}}]}\n' >$TMP/nv.json
    for c in dyn:1 dyn:2 blk:1 nv:1 nv:2 gfp8:2 fp8:2 w8:1 w8:2; do
        r=${c%:*}; np=${c#*:}
        for dev in cpu cuda; do
            DS_EMUL_DEVICES=1 timeout -k 10 300 $MPIRUN -np "$np" "$EM" --recipe $TMP/$r.json --model "$FIXM" \
                --dataset $D --num-samples 8 --max-seq-len 64 --output $TMP/e$r$dev$np --overwrite --device $dev -q \
                >$TMP/e$r$dev$np.log 2>&1 || echo "exit $?" >>$TMP/e$r$dev$np.log
        done
        if cmp -s $TMP/e${r}cpu$np/model.safetensors $TMP/e${r}cuda$np/model.safetensors; then
            pass "$r on the (emulated) CUDA engine at -np $np == --device cpu (byte-identical checkpoint)"
        else fail "emulated CUDA vs CPU, $r -np $np: $(tail -n 2 $TMP/e${r}cuda$np.log $TMP/e${r}cpu$np.log)"; fi
    done
else skip "no $EM or $FIXM (make; tests/fixtures.py)"; fi

q 1 $TMP/gfp8.json $TMP/ref || fail "FP8 GPTQ reference run"
q 1 $TMP/gfp8.json $TMP/res --resume-interval 0 --stop-after-layer 2; rc=$?
[ $rc -eq 1 ] && [ -f $TMP/res.partial/resume/progress.bin ] && pass "FP8 GPTQ stopped after layer 2" \
    || fail "FP8 stop after layer 2 (exit $rc)"
q 1 $TMP/gfp8.json $TMP/res --resume; rc=$?
r=$(st_py cmp $TMP/res $TMP/ref)
[ $rc -eq 0 ] && [ "${r##*identical=}" = 1 ] && pass "FP8 --resume == uninterrupted run" || fail "FP8 resume (exit $rc): $r"

# a recipe that needs no data (round-to-nearest, dynamic activations) runs
# without --dataset, as llm-compressor's oneshot(model, recipe) does, and
# writes the checkpoint a run with data writes (RTN never sees activations);
# a recipe that calibrates still refuses to run without data (exit 2)
recipe $TMP/FP8_DYNAMIC.json QuantizationModifier FP8_DYNAMIC
recipe $TMP/W8A8.json QuantizationModifier W8A8
printf '{"modifiers": [{"QuantizationModifier": {"scheme": "NVFP4A16", "targets": ["Linear"], "ignore": ["lm_head", "re:.*down_proj"]}}]}\n' \
    >$TMP/NVFP4A16.json
for c in FP8_DYNAMIC:1 FP8_DYNAMIC:2 W8A8:1 NVFP4A16:1; do
    s=${c%:*}; np=${c#*:}
    [ -d $TMP/qd_data$s ] || q 1 $TMP/$s.json $TMP/qd_data$s || fail "$s QuantizationModifier with data"
    o=$TMP/qd_none$s$np
    timeout -k 10 300 $MPIRUN -np $np "$DS" --recipe $TMP/$s.json --model $M --output $o --overwrite \
        --summary $o.json >$o.log 2>&1; rc=$?
    if [ $rc -eq 0 ] && cmp -s $TMP/qd_data$s/model.safetensors $o/model.safetensors &&
        cmp -s $TMP/qd_data$s/config.json $o/config.json &&
        grep -q '"dataset":[[:space:]]*null' $o.json && grep -q "calibration: none" $o.log; then
        pass "$s QuantizationModifier without --dataset at -np $np == with data (same checkpoint)"
    else fail "$s without data, -np $np (exit $rc): $(tail -n 3 $o.log)"; fi
done
"$DS" --recipe $TMP/dyn.json --model $M --output $TMP/nodata --overwrite -q >$TMP/nodata.log 2>&1; rc=$?
[ $rc -eq 2 ] && grep -q "no calibration dataset given, and this recipe calibrates" $TMP/nodata.log &&
    [ ! -e $TMP/nodata ] && pass "GPTQ without --dataset: exit 2 saying why, nothing written" \
    || fail "GPTQ without data: exit $rc $(cat $TMP/nodata.log)"
recipe $TMP/qfp8.json QuantizationModifier FP8 # static per-tensor input_scale: observed on data
"$DS" --recipe $TMP/qfp8.json --model $M --output $TMP/nodata2 --overwrite -q >$TMP/nodata2.log 2>&1; rc=$?
[ $rc -eq 2 ] && grep -q "no calibration dataset given, and this recipe calibrates" $TMP/nodata2.log &&
    [ ! -e $TMP/nodata2 ] && pass "QuantizationModifier FP8 (static input_scale) without --dataset: exit 2" \
    || fail "FP8 static without data: exit $rc $(cat $TMP/nodata2.log)"

recipe $TMP/bad.json QuantizationModifier MXFP8
"$DS" --recipe $TMP/bad.json --model $M --dataset $D --output $TMP/bad --overwrite -q >$TMP/bad.log 2>&1; rc=$?
[ $rc -eq 2 ] && grep -q "scheme MXFP8 is not supported by doneshot v1 (supported: .*FP8_DYNAMIC" $TMP/bad.log \
    && pass "unsupported preset: exit 2 listing the supported ones" || fail "MXFP8: exit $rc $(cat $TMP/bad.log)"

echo "$P passed, $F failed, $S skipped"
[ "$F" -eq 0 ]
