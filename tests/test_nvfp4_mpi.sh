#!/bin/sh
# test_nvfp4_mpi.sh - NVFP4 (W4A4: static input_global_scale reduced with MPI
# max, fused weight global scales) end to end on the bundled stories260K
# (down_proj ignored: its in_features 172 is not a multiple of 16):
#   * -np 1, 2 and 4 write byte-identical checkpoints (the activation absmax is
#     an all-reduce max; weights and Hessians as for W4A16 on this model);
#   * the checkpoint has the nvfp4-pack-quantized tensors and doneshot eval
#     reads it (a finite perplexity);
#   * without ignoring down_proj the recipe is refused with exit 2 naming it.
# Env: BUILD (default build), MPIRUN. Last line: "N passed, N failed, N skipped".
BUILD=${BUILD:-build}
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
DS=$BUILD/doneshot
MODEL=data/stories260K
TEXT=data/tinystories_sample.txt
. tests/lib.sh # counters, pass/fail/skip, $TMP, the DS check

cat >"$TMP/r.json" <<'JSON'
{"modifiers": [{"GPTQModifier": {"targets": ["Linear"], "scheme": "NVFP4",
  "ignore": ["lm_head", "re:.*down_proj"], "actorder": "static"}}]}
JSON
for np in 1 2 4; do
    timeout -k 10 300 $MPIRUN -np $np "$DS" --recipe "$TMP/r.json" --model $MODEL --dataset $TEXT \
        --num-samples 16 --max-seq-len 128 --output "$TMP/np$np" -q >"$TMP/np$np.log" 2>&1
    echo "rc=$?" >>"$TMP/np$np.log"
done
if grep -q '^rc=0$' "$TMP/np1.log"; then pass "NVFP4 quantize -np 1"
else fail "NVFP4 quantize -np 1: $(cat "$TMP/np1.log")"; fi
if cmp -s "$TMP/np1/model.safetensors" "$TMP/np2/model.safetensors" &&
   cmp -s "$TMP/np1/model.safetensors" "$TMP/np4/model.safetensors" &&
   cmp -s "$TMP/np1/config.json" "$TMP/np4/config.json"; then
    pass "NVFP4 checkpoints byte-identical at -np 1, 2, 4"
else fail "NVFP4 checkpoints differ across -np: $(cat "$TMP/np2.log" "$TMP/np4.log")"; fi
n=0
for t in weight_packed weight_scale weight_global_scale input_global_scale; do
    grep -q "model.layers.4.self_attn.k_proj.$t\"" "$TMP/np1/model.safetensors" 2>/dev/null && n=$((n + 1))
done
if [ $n -eq 4 ] && grep -q '"nvfp4-pack-quantized"' "$TMP/np1/config.json"; then
    pass "nvfp4-pack-quantized tensors and format in the checkpoint"
else fail "nvfp4 tensors/format missing ($n of 4)"; fi
out=$("$DS" eval --model "$TMP/np1" --dataset $TEXT --seq-len 128 --max-windows 8 -q 2>&1)
if echo "$out" | grep -q '^ppl [0-9][0-9.]* ('; then pass "doneshot eval reads the NVFP4 checkpoint: $out"
else fail "doneshot eval of the NVFP4 checkpoint: $out"; fi
sed 's/, "re:.\*down_proj"//' "$TMP/r.json" >"$TMP/r2.json"
"$DS" --recipe "$TMP/r2.json" --model $MODEL --dataset $TEXT --output "$TMP/bad" -q >"$TMP/bad.log" 2>&1
rc=$?
if [ $rc -eq 2 ] && grep -q 'down_proj has 172' "$TMP/bad.log"; then pass "in_features 172 refused with exit 2"
else fail "in_features 172: rc=$rc $(cat "$TMP/bad.log")"; fi
echo "$P passed, $F failed, $S skipped"
[ "$F" -eq 0 ]
