#!/bin/sh
# test_model_input.sh - hostile model directories (issue 10, items 3, 6, 7):
# every one must end `doneshot eval` (and quantization) with exit 3 and a
# message naming the key or tensor, never a crash, an out-of-bounds read, a
# huge allocation or a silent wrong result.
#   item 3: compressed-tensors tensors (weight_packed, weight_scale,
#           weight_shape, weight_zero_point, weight_g_idx) whose shape, dtype
#           or values contradict quantization_config;
#   item 6: config.json sizes out of range or contradicting the safetensors;
#   item 7: inf/NaN weights (and an inf scale of a quantized checkpoint).
# Inputs are made from data/stories260K (a W4A16 channel checkpoint and an
# asymmetric group-4 actorder-group one are quantized from it) and a tiny
# Mixtral from $BUILD/gen_model, edited with a small stdlib-Python script.
# Env: BUILD (default build), MPIRUN (default "mpirun --oversubscribe"),
# PYTHON (default python3). Last line: "N passed, N failed, N skipped".
BUILD=${BUILD:-build}
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
PYTHON=${PYTHON:-python3}
DS=$BUILD/doneshot
MODEL=data/stories260K
TEXT=data/tinystories_sample.txt
. tests/lib.sh # counters, pass/fail/skip, $TMP, the DS check
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "SKIP $PYTHON not found"; echo "0 passed, 0 failed, 1 skipped"; exit 0
fi

# st.py DIR OP ...: edit DIR/config.json or one tensor of DIR/model.safetensors
#   cfg  KEY.PATH JSON            set a (dotted) config.json key
#   put  NAME DTYPE SHAPE FILL    replace/add a tensor: FILL = zeros, or a JSON list of values
#   poke NAME INDEX VALUE         set element INDEX (flat) of an F32/I32 tensor ("inf", "nan" ok)
#   dup  NAME NEW                 copy tensor NAME to NEW
#   del  NAME                     remove tensor NAME
cat >"$TMP/st.py" <<'EOF'
import json, struct, sys
d, op, args = sys.argv[1], sys.argv[2], sys.argv[3:]
if op == "cfg":
    c = json.load(open(d + "/config.json"))
    keys, o = args[0].split("."), c
    for k in keys[:-1]:
        o = o[k]
    o[keys[-1]] = json.loads(args[1])
    json.dump(c, open(d + "/config.json", "w"), indent=1)
    sys.exit(0)
path = d + "/model.safetensors"
raw = open(path, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
meta = hdr.pop("__metadata__", None)
base = 8 + n
data = {k: raw[base + v["data_offsets"][0]:base + v["data_offsets"][1]] for k, v in hdr.items()}
size = {"F32": 4, "I32": 4, "I64": 8, "I8": 1, "F16": 2, "BF16": 2}
fmt = {"F32": "f", "I32": "i", "I64": "q", "I8": "b"}
if op == "put":
    name, dt, shape = args[0], args[1], json.loads(args[2])
    cnt = 1
    for s in shape:
        cnt *= s
    if args[3] == "zeros":
        b = bytes(cnt * size[dt])
    else:
        vals = json.loads(args[3])
        b = struct.pack("<%d%s" % (len(vals), fmt[dt]), *vals)
    hdr[name] = {"dtype": dt, "shape": shape}
    data[name] = b
elif op == "poke":
    name, i, v = args[0], int(args[1]), args[2]
    t = hdr[name]
    f = fmt[t["dtype"]]
    b = bytearray(data[name])
    struct.pack_into("<" + f, b, i * size[t["dtype"]], float(v) if f == "f" else int(v))
    data[name] = bytes(b)
elif op == "dup":
    hdr[args[1]] = dict(hdr[args[0]])
    data[args[1]] = data[args[0]]
elif op == "del":
    del hdr[args[0]], data[args[0]]
off, h = 0, {}
if meta is not None:
    h["__metadata__"] = meta
for k in sorted(hdr):
    h[k] = {"dtype": hdr[k]["dtype"], "shape": hdr[k]["shape"], "data_offsets": [off, off + len(data[k])]}
    off += len(data[k])
hj = json.dumps(h).encode()
hj += b" " * (-len(hj) % 8)
with open(path, "wb") as fo:
    fo.write(struct.pack("<Q", len(hj)) + hj + b"".join(data[k] for k in sorted(hdr)))
EOF

# new_case NAME BASE: a fresh copy of BASE in $TMP/NAME
new_case() { rm -rf "$TMP/$1"; cp -r "$2" "$TMP/$1"; }
st() { "$PYTHON" "$TMP/st.py" "$@"; }
# expect_eval NAME WANT_RC PATTERN: eval $TMP/NAME (in the background, 8 at
# a time: most of a run is MPI start-up); check_all then wants the exit code
# and an error message matching the grep -E pattern (- : any).
NJOBS=0
run_eval() {
    timeout -k 10 60 "$DS" eval --model "$TMP/$1" --dataset $TEXT --seq-len 64 --max-windows 2 -q \
        >"$TMP/$1.out" 2>"$TMP/$1.err"
    echo $? >"$TMP/$1.rc"
}
expect_eval() {
    printf '%s\n' "$2" >"$TMP/$1.want"
    printf '%s\n' "$3" >"$TMP/$1.pat"
    echo "$1" >>"$TMP/cases"
    run_eval "$1" &
    NJOBS=$((NJOBS + 1))
    if [ $((NJOBS % 8)) = 0 ]; then wait; fi
}
check_all() {
    wait
    while read -r name; do
        want=$(cat "$TMP/$name.want"); pat=$(cat "$TMP/$name.pat"); rc=$(cat "$TMP/$name.rc")
        # Open MPI's singleton start-up, 8 at once on a loaded machine, once
        # failed before doneshot ran (exit 1, its "-----" banner first): such
        # a case runs again alone, and says so
        if [ "$rc" != "$want" ] && head -1 "$TMP/$name.err" | grep -q '^-----'; then
            echo "note: $name: Open MPI failed to start (exit $rc: $(grep -v '^-----' "$TMP/$name.err" | head -2 |
                tr '\n' ' ')); running it again alone"
            run_eval "$name"; rc=$(cat "$TMP/$name.rc")
        fi
        if [ "$rc" = "$want" ] && { [ "$pat" = - ] || grep -qE -- "$pat" "$TMP/$name.err"; }; then
            pass "$name: exit $rc $(head -1 "$TMP/$name.err")"
        else fail "$name: want exit $want and /$pat/, got exit $rc: $(head -12 "$TMP/$name.err")"; fi
    done <"$TMP/cases"
    rm -f "$TMP/cases"
}

# ---- item 6: config.json sizes ----
new_case cfg_ok $MODEL
expect_eval cfg_ok 0 -
for kv in "num_hidden_layers 1000000000" "vocab_size 1000000000" "head_dim 1000000000" \
          "max_position_embeddings 0" "num_attention_heads 0" "hidden_size -1" "intermediate_size 1.5"; do
    set -- $kv
    new_case "cfg_$1" $MODEL; st "$TMP/cfg_$1" cfg "$1" "$2"
    expect_eval "cfg_$1" 3 "key \"$1\".*(outside the supported range|expected an integer)"
done
new_case cfg_qdim $MODEL; st "$TMP/cfg_qdim" cfg num_attention_heads 65536
st "$TMP/cfg_qdim" cfg num_key_value_heads 65536; st "$TMP/cfg_qdim" cfg head_dim 65536
expect_eval cfg_qdim 3 'num_attention_heads x head_dim = 65536 x 65536 = 4294967296 is outside'
new_case cfg_hidden $MODEL; st "$TMP/cfg_hidden" cfg hidden_size 128
expect_eval cfg_hidden 3 'hidden_size = 128 contradicts the checkpoint: tensor .model.embed_tokens.weight. has shape \[512, 64\] \(columns 64\)'
new_case cfg_heads $MODEL; st "$TMP/cfg_heads" cfg num_attention_heads 16
expect_eval cfg_heads 3 'num_attention_heads x head_dim = 128 contradicts .*self_attn.q_proj.weight. has shape \[64, 64\] \(output rows 64\)'
new_case cfg_kv $MODEL; st "$TMP/cfg_kv" cfg num_key_value_heads 2
expect_eval cfg_kv 3 'num_key_value_heads x head_dim = 16 contradicts .*k_proj.weight. has shape \[32, 64\] \(output rows 32\)'
new_case cfg_inter $MODEL; st "$TMP/cfg_inter" cfg intermediate_size 100
expect_eval cfg_inter 3 'intermediate_size = 100 contradicts .*mlp.gate_proj.weight. has shape \[172, 64\] \(output rows 172\)'
new_case cfg_fewer_layers $MODEL; st "$TMP/cfg_fewer_layers" cfg num_hidden_layers 4
expect_eval cfg_fewer_layers 3 'num_hidden_layers = 4 contradicts the checkpoint: it has .model.layers.4.input'
new_case cfg_more_layers $MODEL; st "$TMP/cfg_more_layers" cfg num_hidden_layers 7
expect_eval cfg_more_layers 3 'num_hidden_layers = 7 contradicts the checkpoint: it has 5 layers'
new_case cfg_eps $MODEL; st "$TMP/cfg_eps" cfg rms_norm_eps -1
expect_eval cfg_eps 3 'rms_norm_eps'
new_case cfg_theta $MODEL; st "$TMP/cfg_theta" cfg rope_theta 0
expect_eval cfg_theta 3 'rope_theta'

if [ -x "$BUILD/gen_model" ] &&
   "$BUILD/gen_model" --out "$TMP/mix" --arch mixtral --hidden 32 --intermediate 48 --layers 2 --heads 4 \
       --kv-heads 2 --vocab 512 --experts 4 --experts-per-tok 2 --dtype f32 --tokenizer-from $MODEL \
       --threads 1 >"$TMP/gen.log" 2>&1; then
    expect_eval mix 0 -
    for e in 10000000 200000000 1000000000; do
        new_case "mix_e$e" "$TMP/mix"; st "$TMP/mix_e$e" cfg num_local_experts $e
        expect_eval "mix_e$e" 3 "key \"num_local_experts\" = $e is outside the supported range \[1, 16384\]"
    done
    new_case mix_e8 "$TMP/mix"; st "$TMP/mix_e8" cfg num_local_experts 8
    expect_eval mix_e8 3 'num_local_experts = 8 contradicts the checkpoint: .*block_sparse_moe.gate.weight. has shape \[4, 32\] \(output rows 4\)'
    new_case mix_e3 "$TMP/mix"; st "$TMP/mix_e3" cfg num_local_experts 3
    expect_eval mix_e3 3 'num_local_experts = 3 contradicts'
    E3=model.layers.0.block_sparse_moe.experts.3.w1.weight
    new_case mix_lost_expert "$TMP/mix"; st "$TMP/mix_lost_expert" del $E3
    expect_eval mix_lost_expert 3 "num_local_experts = 4 contradicts the checkpoint: layer 0 has 3 experts \('${E3%.weight}' not found\)"
    new_case mix_extra_expert "$TMP/mix"; st "$TMP/mix_extra_expert" dup $E3 model.layers.0.block_sparse_moe.experts.4.w1.weight
    expect_eval mix_extra_expert 3 "num_local_experts = 4 contradicts the checkpoint: it has .*experts.4.w1' \(more experts\)"
    new_case mix_k "$TMP/mix"; st "$TMP/mix_k" cfg num_experts_per_tok 5
    expect_eval mix_k 3 'key "num_experts_per_tok" = 5 is outside the supported range \[1, 4\]'
else
    skip "MoE config cases: $BUILD/gen_model missing or failed"
fi

# ---- item 3: compressed-tensors tensors vs quantization_config ----
# Q: W4A16 symmetric channel, static actorder (64 -> 64 q_proj: packed [64, 8], scale [64, 1]).
# QA: W4 asymmetric group 4, actorder group (down_proj 172 -> 64: packed [64, 22], scale [64, 43],
#     zero point [8, 43], g_idx [172]).
cat >"$TMP/asym.json" <<'EOF'
{"model": "data/stories260K", "dataset": "data/tinystories_sample.txt", "num_calibration_samples": 8,
 "max_seq_length": 64,
 "modifiers": [{"GPTQModifier": {"ignore": ["lm_head"], "config_groups": {"group_0": {"targets": ["Linear"],
   "weights": {"num_bits": 4, "type": "int", "symmetric": false, "strategy": "group", "group_size": 4,
               "actorder": "group"}}}}}]}
EOF
if timeout -k 10 120 "$DS" --recipe recipes/stories260k-w4a16.json --model $MODEL --dataset $TEXT \
        --output "$TMP/Q" -q >"$TMP/q.log" 2>&1 &&
   timeout -k 10 120 "$DS" --recipe "$TMP/asym.json" --output "$TMP/QA" -q >"$TMP/qa.log" 2>&1; then
    expect_eval Q 0 -
    expect_eval QA 0 -
    Lq=model.layers.1.self_attn.q_proj
    Ld=model.layers.2.mlp.down_proj
    new_case q_packed_bits "$TMP/Q"; st "$TMP/q_packed_bits" put $Lq.weight_packed I32 '[64, 16]' zeros
    expect_eval q_packed_bits 3 "'$Lq.weight_packed': expected I32 \[64, 8\], got I32 \[64, 16\] \(quantization_config: num_bits 4, strategy channel"
    new_case q_packed_dtype "$TMP/Q"; st "$TMP/q_packed_dtype" put $Lq.weight_packed I64 '[64, 8]' zeros
    expect_eval q_packed_dtype 3 "'$Lq.weight_packed': expected I32 \[64, 8\], got I64"
    new_case q_scale_dtype "$TMP/Q"; st "$TMP/q_scale_dtype" put $Lq.weight_scale I32 '[64, 1]' zeros
    expect_eval q_scale_dtype 3 "'$Lq.weight_scale': expected F32/BF16/F16 \[64, 1\], got I32 \[64, 1\] \(quantization_config"
    new_case q_scale_shape "$TMP/Q"; st "$TMP/q_scale_shape" put $Lq.weight_scale F32 '[64, 2]' zeros
    expect_eval q_scale_shape 3 "'$Lq.weight_scale': expected F32/BF16/F16 \[64, 1\], got F32 \[64, 2\]"
    new_case q_shape_dtype "$TMP/Q"; st "$TMP/q_shape_dtype" put $Lq.weight_shape I8 '[2]' '[64, 64]'
    expect_eval q_shape_dtype 3 "'$Lq.weight_shape': expected I64 \[2\] = \{64, 64\}"
    new_case q_shape_vals "$TMP/Q"; st "$TMP/q_shape_vals" put $Lq.weight_shape I64 '[2]' '[64, 128]'
    expect_eval q_shape_vals 3 "'$Lq.weight_shape': expected I64 \[2\] = \{64, 64\} \(values \{64, 128\}\)"
    new_case q_sym_zp "$TMP/Q"; st "$TMP/q_sym_zp" put $Lq.weight_zero_point I32 '[8, 1]' zeros
    expect_eval q_sym_zp 3 "'$Lq.weight_zero_point': expected no zero point \(symmetric\)"
    new_case q_gidx_static "$TMP/Q"; st "$TMP/q_gidx_static" put $Lq.weight_g_idx I32 '[64]' zeros
    expect_eval q_gidx_static 3 "'$Lq.weight_g_idx': expected no g_idx"
    new_case q_bits9 "$TMP/Q"; st "$TMP/q_bits9" cfg quantization_config.config_groups.group_0.weights.num_bits 9
    expect_eval q_bits9 3 'key "num_bits" = 9 is outside the supported range \[2, 8\]'
    new_case q_bits8 "$TMP/Q"; st "$TMP/q_bits8" cfg quantization_config.config_groups.group_0.weights.num_bits 8
    expect_eval q_bits8 3 "weight_packed': expected I32 \[[0-9]+, [0-9]+\], got I32 .*num_bits 8"
    new_case q_block "$TMP/Q"; st "$TMP/q_block" cfg quantization_config.config_groups.group_0.weights.strategy '"block"'
    expect_eval q_block 3 'strategy: expected "group", "channel", "tensor", "block" .with a block_structure.'
    new_case q_group "$TMP/Q"; st "$TMP/q_group" cfg quantization_config.config_groups.group_0.weights.strategy '"group"'
    st "$TMP/q_group" cfg quantization_config.config_groups.group_0.weights.group_size 16
    expect_eval q_group 3 "weight_scale': expected F32/BF16/F16 \[[0-9]+, [0-9]+\], got F32 \[[0-9]+, 1\] .*strategy group, group_size 16"

    new_case qa_zp_shape "$TMP/QA"; st "$TMP/qa_zp_shape" put $Ld.weight_zero_point I32 '[1, 43]' zeros
    expect_eval qa_zp_shape 3 "'$Ld.weight_zero_point': expected I32 \[8, 43\], got I32 \[1, 43\] \(quantization_config: num_bits 4, strategy group, group_size 4, symmetric false, actorder group\)"
    new_case qa_zp_dtype "$TMP/QA"; st "$TMP/qa_zp_dtype" put $Ld.weight_zero_point I8 '[8, 43]' zeros
    expect_eval qa_zp_dtype 3 "'$Ld.weight_zero_point': expected I32 \[8, 43\], got I8 \[8, 43\]"
    new_case qa_zp_missing "$TMP/QA"; st "$TMP/qa_zp_missing" cfg quantization_config.config_groups.group_0.weights.symmetric true
    expect_eval qa_zp_missing 3 "weight_zero_point': expected no zero point \(symmetric\)"
    new_case qa_gidx_shape "$TMP/QA"; st "$TMP/qa_gidx_shape" put $Ld.weight_g_idx I32 '[171]' zeros
    expect_eval qa_gidx_shape 3 "'$Ld.weight_g_idx': expected I32 \[172\], got I32 \[171\]"
    new_case qa_gidx_dtype "$TMP/QA"; st "$TMP/qa_gidx_dtype" put $Ld.weight_g_idx I64 '[172]' zeros
    expect_eval qa_gidx_dtype 3 "'$Ld.weight_g_idx': expected I32 \[172\], got I64 \[172\]"
    new_case qa_gidx_value "$TMP/QA"; st "$TMP/qa_gidx_value" poke $Ld.weight_g_idx 5 43
    expect_eval qa_gidx_value 3 "'$Ld.weight_g_idx': element \[5\] = 43 is outside \[0, 43\)"
    new_case qa_gidx_neg "$TMP/QA"; st "$TMP/qa_gidx_neg" poke $Ld.weight_g_idx 171 -1
    expect_eval qa_gidx_neg 3 "'$Ld.weight_g_idx': element \[171\] = -1 is outside"
    new_case qa_scale_groups "$TMP/QA"; st "$TMP/qa_scale_groups" put $Ld.weight_scale F32 '[64, 86]' zeros
    expect_eval qa_scale_groups 3 "'$Ld.weight_scale': expected F32/BF16/F16 \[64, 43\], got F32 \[64, 86\]"
    # every rank fails the same way, at open
    $MPIRUN -np 2 sh -c 'timeout -k 10 60 "$0" eval "$@" >/dev/null 2>&1; echo "rc=$?"' "$DS" \
        --model "$TMP/qa_zp_shape" --dataset $TEXT --seq-len 64 --max-windows 2 >"$TMP/rc.out" 2>&1
    if [ "$(grep -c '^rc=3$' "$TMP/rc.out")" = 2 ]; then pass "qa_zp_shape: exit 3 on both of 2 ranks"
    else fail "qa_zp_shape at -np 2: $(tr '\n' ' ' <"$TMP/rc.out")"; fi

    # ---- item 7 (quantized): an inf scale ----
    new_case q_scale_inf "$TMP/Q"; st "$TMP/q_scale_inf" poke $Lq.weight_scale 9 inf
    expect_eval q_scale_inf 3 "$Lq.weight_scale: element \[9, 0\] is inf; doneshot needs finite weights"
    new_case qa_scale_nan "$TMP/QA"; st "$TMP/qa_scale_nan" poke $Ld.weight_scale 50 nan
    expect_eval qa_scale_nan 3 "$Ld.weight_scale: element \[1, 7\] is nan"
    new_case q_scale_huge "$TMP/Q"; st "$TMP/q_scale_huge" poke $Lq.weight_scale 3 3e38
    expect_eval q_scale_huge 3 "$Lq.weight \(dequantized\): element \[3, [0-9]+\] is -?inf"
else
    fail "quantize the item-3 checkpoints: $(tail -3 "$TMP/q.log" "$TMP/qa.log" 2>/dev/null)"
fi

# ---- item 7: non-finite weights ----
L3=model.layers.3.mlp.up_proj.weight
new_case w_inf $MODEL; st "$TMP/w_inf" poke $L3 $((5 * 64 + 7)) inf
expect_eval w_inf 3 "$L3: element \[5, 7\] is inf; doneshot needs finite weights"
new_case w_nan $MODEL; st "$TMP/w_nan" poke model.layers.0.self_attn.q_proj.weight 4095 nan
expect_eval w_nan 3 'model.layers.0.self_attn.q_proj.weight: element \[63, 63\] is nan'
new_case w_ninf $MODEL; st "$TMP/w_ninf" poke model.layers.4.mlp.down_proj.weight 0 -inf
expect_eval w_ninf 3 'model.layers.4.mlp.down_proj.weight: element \[0, 0\] is -inf'
check_all
if grep -q '^hint: ' "$TMP/w_inf.err"; then pass "w_inf: the message has a hint"; else fail "w_inf hint: $(cat "$TMP/w_inf.err")"; fi
# quantization reads the weights through the same layer_load: no checkpoint with an inf scale
timeout -k 10 120 "$DS" --recipe recipes/stories260k-w4a16.json --model "$TMP/w_inf" --dataset $TEXT \
    --output "$TMP/w_inf_q" -q >"$TMP/out" 2>"$TMP/err"
rc=$?
if [ $rc = 3 ] && grep -q "$L3: element \[5, 7\] is inf" "$TMP/err" && [ ! -e "$TMP/w_inf_q/config.json" ]; then
    pass "quantizing a model with an inf weight: exit 3, no checkpoint"
else fail "quantizing a model with an inf weight: exit $rc: $(head -3 "$TMP/err")"; fi

# ---- a model folder without tokenizer.json ----
# pre-tokenized rows need no tokenizer: the same ids as text rows give the
# same checkpoint (ids from `doneshot tokenize`, the run's own tokenizer),
# without tokenizer files; a text row is exit 3 naming the missing file
mkdir -p "$TMP/notok" && cp $MODEL/config.json $MODEL/model.safetensors "$TMP/notok/"
$PYTHON - "$TEXT" "$TMP/rows" <<'PY'
import json, sys
docs = [d.strip() for d in open(sys.argv[1], encoding="utf-8").read().split("\n\n") if d.strip()][:8]
for i, d in enumerate(docs):
    open(f"{sys.argv[2]}.{i}.txt", "w", encoding="utf-8").write(d)
with open(sys.argv[2] + ".text.jsonl", "w", encoding="utf-8") as f:
    for d in docs:
        f.write(json.dumps({"text": d}) + "\n")
PY
: >"$TMP/rows.ids.jsonl"
for f in "$TMP"/rows.[0-9].txt; do
    "$DS" tokenize --model $MODEL --input "$f" | awk '{ printf "{\"input_ids\": [%s", $1;
        for (i = 2; i <= NF; i++) printf ", %s", $i; print "]}" }' >>"$TMP/rows.ids.jsonl"
done
Q="--recipe recipes/stories260k-w4a16.json --num-samples 8 --max-seq-len 64 --overwrite -q"
timeout -k 10 120 "$DS" $Q --model $MODEL --dataset "$TMP/rows.text.jsonl" --output "$TMP/tok_text" 2>"$TMP/err1"
rc1=$?
timeout -k 10 120 "$DS" $Q --model "$TMP/notok" --dataset "$TMP/rows.ids.jsonl" --output "$TMP/tok_ids" 2>"$TMP/err2"
rc2=$?
if [ $rc1 = 0 ] && [ $rc2 = 0 ] && [ "$(wc -l <"$TMP/rows.ids.jsonl")" = 8 ] &&
    cmp -s "$TMP/tok_text/model.safetensors" "$TMP/tok_ids/model.safetensors" &&
    [ ! -e "$TMP/tok_ids/tokenizer.json" ] && grep -q "has no tokenizer.json" "$TMP/err2"; then
    pass "no tokenizer.json: pre-tokenized rows give the text rows' checkpoint, without tokenizer files"
else fail "no tokenizer.json, pre-tokenized: exit $rc1 / $rc2: $(head -3 "$TMP/err1" "$TMP/err2")"; fi
timeout -k 10 120 "$DS" $Q --model "$TMP/notok" --dataset "$TMP/rows.text.jsonl" --output "$TMP/tok_none" \
    >/dev/null 2>"$TMP/err"
rc=$?
if [ $rc = 3 ] && grep -q "rows.text.jsonl:1: a text row, but the model folder .* has no tokenizer.json" "$TMP/err" &&
    grep -q "^hint: " "$TMP/err" && [ ! -e "$TMP/tok_none/config.json" ]; then
    pass "no tokenizer.json, text rows: exit 3 naming the file and row, a hint, no checkpoint"
else fail "no tokenizer.json, text rows: exit $rc: $(head -3 "$TMP/err")"; fi
echo '{"input_ids": [1, 511, 512]}' >"$TMP/oob.jsonl"
timeout -k 10 120 "$DS" $Q --model "$TMP/notok" --dataset "$TMP/oob.jsonl" --output "$TMP/tok_oob" >/dev/null 2>"$TMP/err"
rc=$?
if [ $rc = 3 ] && grep -q "oob.jsonl:1: input_ids\[2\] is not a token id in \[0, 512)" "$TMP/err"; then
    pass "no tokenizer.json: ids checked against config.json's vocab_size (512)"
else fail "no tokenizer.json, id 512: exit $rc: $(head -3 "$TMP/err")"; fi

echo "$P passed, $F failed, $S skipped"
[ "$F" -eq 0 ]
