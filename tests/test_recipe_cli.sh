#!/bin/sh
# Hostile recipes end to end (issue 10 items 8, 11, 12): doneshot either runs
# them as llm-compressor would or refuses them with exit 2 and a message
# naming the key / pattern, before the output is claimed (no OUTPUT,
# OUTPUT.partial or OUTPUT.partial.lock left behind).
# Env: BUILD (default build), MPIRUN (default "mpirun --oversubscribe").
# Last line: "N passed, N failed".
DS=${BUILD:-build}/doneshot
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
P=0; F=0
ok() { P=$((P + 1)); }
fail() { echo "FAIL $1"; F=$((F + 1)); }
TMP=$(mktemp -d /tmp/ds-recipe-cli.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
RUN="--num-samples 8 --max-seq-len 64 -q"

# recipes/stories260k-w4a16.json (channel strategy: fits the 64/172-wide
# layers) with the GPTQModifier's block_size and an extra key spliced in
stories() { # $1 = block_size, $2 = extra GPTQModifier entry (or empty)
    sed -e "s/\"block_size\": 128/\"block_size\": $1${2:+, $2}/" -e '/"output"/d' recipes/stories260k-w4a16.json
}

# refused: exit 2, message contains $2, nothing written. $1 = name, $3 = recipe
refused() {
    out=$TMP/out
    timeout -k 10 60 "$DS" --recipe "$3" --output "$out" $RUN >"$TMP/log" 2>&1
    rc=$?
    if [ $rc -eq 2 ] && grep -qF -- "$2" "$TMP/log" && [ ! -e "$out" ] && [ ! -e "$out.partial" ] \
        && [ ! -e "$out.partial.lock" ]; then
        ok
    else
        fail "$1: want exit 2 with '$2' and no output (got $rc: $(head -c 400 "$TMP/log"); left: $(ls "$TMP" | tr '\n' ' '))"
    fi
    rm -rf "$out" "$out.partial" "$out.partial.lock"
}

# item 8: a block_size above the layer width is one block (as llm-compressor's
# range loop); it used to size a block_size^2 scratch (100000: 40 GB, exit 1)
stories 100000 >"$TMP/bs_big.json"
stories 1000 >"$TMP/bs_1000.json"
timeout -k 10 60 "$DS" --recipe "$TMP/bs_big.json" --output "$TMP/big" $RUN >"$TMP/log" 2>&1
rc=$?
[ $rc -eq 0 ] && [ -f "$TMP/big/model.safetensors" ] && ok \
    || fail "block_size 100000 runs (got $rc: $(head -c 400 "$TMP/log"))"
timeout -k 10 60 "$DS" --recipe "$TMP/bs_1000.json" --output "$TMP/b1000" $RUN >"$TMP/log" 2>&1
rc=$?
[ $rc -eq 0 ] && cmp -s "$TMP/big/model.safetensors" "$TMP/b1000/model.safetensors" && ok \
    || fail "block_size 100000 and 1000 (both one block here) give the same checkpoint (rc $rc)"
rm -rf "$TMP/big" "$TMP/b1000"

stories 2000000 >"$TMP/bs_huge.json"
refused "block_size 2000000" "GPTQModifier.block_size: 2000000 is too large (allowed: 1..1048576)" "$TMP/bs_huge.json"
stories 0 >"$TMP/bs_0.json"
refused "block_size 0" "GPTQModifier.block_size: expected a positive integer, got 0" "$TMP/bs_0.json"

# item 8: bypass_divisibility_checks: true was accepted, then GPTQ aborted (exit 1)
stories 128 '"bypass_divisibility_checks": true' >"$TMP/bypass.json"
refused "bypass_divisibility_checks true" "GPTQModifier.bypass_divisibility_checks: true is not supported" "$TMP/bypass.json"
stories 128 '"bypass_divisibility_checks": false' >"$TMP/nobypass.json"
timeout -k 10 60 "$DS" --recipe "$TMP/nobypass.json" --output "$TMP/nb" $RUN >"$TMP/log" 2>&1 && ok \
    || fail "bypass_divisibility_checks false runs ($(head -c 400 "$TMP/log"))"
rm -rf "$TMP/nb"

# item 11: an ignore pattern that hits PCRE2's match limit counted as "no
# match": down_proj was quantized although the recipe ignores it (exit 0)
stories 128 >"$TMP/re.json"
sed -i 's/"ignore": \["lm_head"\]/"ignore": ["lm_head", "re:(.*.*.*)*\\\\.down_proj$"]/' "$TMP/re.json"
grep -qF 're:(.*.*.*)*\\.down_proj$' "$TMP/re.json" || fail "test setup: pattern not spliced in"
refused "catastrophic ignore regex" 'ignore[1]: regex "(.*.*.*)*\.down_proj$" could not be matched against module "model.layers.0.' "$TMP/re.json"
# every rank refuses it the same way
out=$TMP/out
timeout -k 10 120 $MPIRUN -np 2 "$DS" --recipe "$TMP/re.json" --output "$out" $RUN >"$TMP/log" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -qF "match limit" "$TMP/log" && [ ! -e "$out" ] && [ ! -e "$out.partial" ] && ok \
    || fail "catastrophic ignore regex, 2 ranks: exit 2 (got $rc: $(head -c 400 "$TMP/log"))"

# item 12: 200k keys took ~2 min in the pairwise duplicate-key check
awk 'BEGIN { printf "{\"GPTQModifier\": {\"scheme\": \"W4A16\""
             for (i = 0; i < 200000; i++) printf ", \"k%07d\": 0", i
             print "}}" }' >"$TMP/many.json"
timeout -k 5 20 "$DS" --recipe "$TMP/many.json" --model data/stories260K --dataset data/tinystories_sample.txt \
    --output "$TMP/out" $RUN >"$TMP/log" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -qF 'GPTQModifier: unknown key "k0000000"' "$TMP/log" && ok \
    || fail "recipe with 200k keys: exit 2 within 20 s (got $rc: $(head -c 300 "$TMP/log"))"

echo "$P passed, $F failed"
[ "$F" -eq 0 ]
