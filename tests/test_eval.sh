#!/bin/sh
# test_eval.sh - `doneshot eval` end to end on the bundled stories260K model:
#   * the perplexity string is identical at -np 1, 2 and 4 (bit-identical NLL);
#   * it matches an independent stdlib-Python reference forward
#     (tests/reference_forward.py, float64) within 1e-4 relative;
#   * bad inputs give exit code 3 (bad model/data) or 2 (usage) on every rank.
# Env: BUILD (default build), MPIRUN (default "mpirun --oversubscribe"),
# PYTHON (default python3). Last line: "N passed, N failed, N skipped".
BUILD=${BUILD:-build}
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
PYTHON=${PYTHON:-python3}
DS=$BUILD/doneshot
MODEL=data/stories260K
TEXT=data/tinystories_sample.txt
REF=${REF_FORWARD:-tests/reference_forward.py}
. tests/lib.sh # counters, pass/fail/skip, $TMP, the DS check

# ---- -np independence ----
ARGS="--model $MODEL --dataset $TEXT --seq-len 128 --max-windows 23 -q"
for np in 1 2 4; do
    $MPIRUN -np $np "$DS" eval $ARGS >"$TMP/np$np.out" 2>"$TMP/np$np.err"
    echo "rc=$?" >>"$TMP/np$np.out"
done
if grep -q '^ppl [0-9.]* (nll [0-9.]*, 2921 tokens, 23 windows of 128)$' "$TMP/np1.out" &&
   grep -q '^rc=0$' "$TMP/np1.out"; then pass "eval -np 1 prints the ppl line"
else fail "eval -np 1 prints the ppl line: $(cat "$TMP/np1.out" "$TMP/np1.err")"; fi
if cmp -s "$TMP/np1.out" "$TMP/np2.out" && cmp -s "$TMP/np1.out" "$TMP/np4.out"; then
    pass "eval gives the identical ppl at -np 1, 2, 4"
else fail "eval -np 1/2/4 differ: $(cat "$TMP/np1.out" "$TMP/np2.out" "$TMP/np4.out")"; fi

# 3 windows over 4 ranks: rank 0 owns none (uneven split, more ranks than windows)
$MPIRUN -np 1 "$DS" eval --model $MODEL --dataset $TEXT --seq-len 64 --max-windows 3 -q >"$TMP/a" 2>&1
$MPIRUN -np 4 "$DS" eval --model $MODEL --dataset $TEXT --seq-len 64 --max-windows 3 -q >"$TMP/b" 2>&1
if [ -s "$TMP/a" ] && cmp -s "$TMP/a" "$TMP/b"; then pass "eval with more ranks than windows"
else fail "eval with more ranks than windows: $(cat "$TMP/a" "$TMP/b")"; fi

# ---- --json ----
"$DS" eval --model $MODEL --dataset $TEXT --seq-len 64 --max-windows 2 --json -q >"$TMP/ds.json" 2>&1
if "$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["windows"]==2 and d["seq_len"]==64 and d["predicted_tokens"]==126 and d["ppl"]>1' "$TMP/ds.json" 2>/dev/null
then pass "eval --json"; else fail "eval --json: $(cat "$TMP/ds.json")"; fi

# ---- a doneshot W4A16 checkpoint (dequantized on load), -np independent ----
if "$DS" --recipe recipes/stories260k-w4a16.json --model $MODEL --dataset $TEXT --output "$TMP/q" -q \
        >"$TMP/q.log" 2>&1; then
    $MPIRUN -np 1 "$DS" eval --model "$TMP/q" --dataset $TEXT --seq-len 64 --max-windows 6 -q >"$TMP/q1" 2>&1
    $MPIRUN -np 2 "$DS" eval --model "$TMP/q" --dataset $TEXT --seq-len 64 --max-windows 6 -q >"$TMP/q2" 2>&1
    qppl=$(sed -n 's/^ppl \([0-9.]*\) .*/\1/p' "$TMP/q1")
    if [ -n "$qppl" ] && cmp -s "$TMP/q1" "$TMP/q2" && awk -v p="$qppl" 'BEGIN { exit !(p > 1 && p < 100) }'
    then pass "eval of a W4A16 checkpoint at -np 1 and 2: $(cat "$TMP/q1")"
    else fail "eval of a W4A16 checkpoint: $(cat "$TMP/q1" "$TMP/q2")"; fi
else fail "quantize for the eval test: $(tail -5 "$TMP/q.log")"; fi

# ---- independent reference forward (float64, pure Python) ----
if [ -f "$REF" ] && command -v "$PYTHON" >/dev/null 2>&1; then
    cat >"$TMP/ref.py" <<'EOF'
import json, math, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
import reference_forward as rf
d, path, T, K = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
cfg, tens = rf.load_hf(d)
m = rf.Model(cfg, {k: v for k, (_, _, v) in tens.items()}, "hf")
ids = rf.HFBPE(os.path.join(d, "tokenizer.json")).encode(open(path, encoding="utf-8").read()[:T * K * 8])[:T * K]
assert len(ids) == T * K, "text too short"
nll = 0.0
for w in range(K):  # windows evaluated independently from position 0
    m.reset()
    win = ids[w * T:(w + 1) * T]
    for p in range(T - 1):
        lg = m.step(win[p], p)
        mx = max(lg)
        nll += mx + math.log(sum(math.exp(v - mx) for v in lg)) - lg[win[p + 1]]
ours = json.load(open(sys.argv[6]))
ref = math.exp(nll / (K * (T - 1)))
rel = abs(ours["ppl"] - ref) / ref
print("reference ppl %.9f, doneshot %.9f, rel diff %.2e" % (ref, ours["ppl"], rel))
sys.exit(0 if rel <= 1e-4 else 1)
EOF
    if "$PYTHON" "$TMP/ref.py" "$REF" $MODEL $TEXT 64 2 "$TMP/ds.json" >"$TMP/ref.out" 2>&1; then
        pass "eval matches reference_forward.py: $(cat "$TMP/ref.out")"
    else fail "eval vs reference_forward.py: $(cat "$TMP/ref.out")"; fi
else
    fail "reference forward: $REF or $PYTHON not found"
fi

# ---- bad inputs: the same exit code on every rank ----
# each rank prints its own exit code; all must equal the expected one
expect_rc() { # $1 = name, $2 = expected code, rest = eval arguments
    name=$1; want=$2; shift 2
    $MPIRUN -np 2 sh -c '"$0" eval "$@" >/dev/null 2>&1; echo "rc=$?"' "$DS" "$@" >"$TMP/rc.out" 2>"$TMP/rc.err"
    got=$(grep -c "^rc=$want\$" "$TMP/rc.out")
    if [ "$got" = 2 ]; then pass "$name: exit $want on both ranks"
    else fail "$name: want rc=$want on 2 ranks, got: $(tr '\n' ' ' <"$TMP/rc.out")"; fi
}
head -c 200 $TEXT >"$TMP/short.txt"
printf '{"architectures": ["LlamaForCausalLM"], "hidden_size": 64' >"$TMP/config.json"
mkdir -p "$TMP/badmodel" && cp "$TMP/config.json" "$TMP/badmodel/config.json"
expect_rc "missing model" 3 --model "$TMP/nope" --dataset $TEXT
expect_rc "broken config.json" 3 --model "$TMP/badmodel" --dataset $TEXT
expect_rc "missing dataset" 3 --model $MODEL --dataset "$TMP/nope.txt"
expect_rc "text shorter than one window" 3 --model $MODEL --dataset "$TMP/short.txt" --seq-len 256
expect_rc "unknown option" 2 --model $MODEL --dataset $TEXT --bogus
expect_rc "missing --dataset" 2 --model $MODEL
expect_rc "bad --seq-len" 2 --model $MODEL --dataset $TEXT --seq-len 1
"$DS" eval --model $MODEL --dataset "$TMP/short.txt" --seq-len 256 2>"$TMP/err" >/dev/null
if grep -q 'hint: lower --seq-len' "$TMP/err"; then pass "short text error has a --seq-len hint"
else fail "short text error message: $(cat "$TMP/err")"; fi
if "$DS" eval --help | grep -q -- '--max-windows'; then pass "eval --help"; else fail "eval --help"; fi

echo "$P passed, $F failed, $S skipped"
[ "$F" -eq 0 ]
