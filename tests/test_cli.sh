#!/bin/sh
# CLI surface: --help/--version, every long option of `doneshot --help` and
# `doneshot eval --help` is documented in doneshot.1, and the man page is
# lint-clean (mandoc). Last line: "N passed, N failed".
BIN=${BUILD:-build}/doneshot
P=0; F=0
ok() { P=$((P + 1)); }
fail() { echo "FAIL $1"; F=$((F + 1)); }

"$BIN" --help >/tmp/ds-help.$$ 2>&1 && ok || fail "--help exits 0"
"$BIN" --version | grep -q '^doneshot [0-9]' && ok || fail "--version prints the version"
"$BIN" eval --help >>/tmp/ds-help.$$ 2>&1 && ok || fail "eval --help exits 0"
for opt in $(grep -oE -- '--[a-z][a-z-]+' /tmp/ds-help.$$ | sort -u); do
    grep -q -- "Fl \\\\$opt\\b\|Fl \\\\${opt#--}\|\\\\-${opt#--}" doneshot.1 && ok || fail "option $opt is not in doneshot.1"
done
rm -f /tmp/ds-help.$$
if command -v mandoc >/dev/null 2>&1; then
    mandoc -Tlint -W warning doneshot.1 && ok || fail "mandoc -Tlint doneshot.1"
else
    echo "SKIP man lint: mandoc not installed"
fi
"$BIN" --no-such-flag >/dev/null 2>&1; [ $? -eq 2 ] && ok || fail "unknown option exits 2"
"$BIN" >/dev/null 2>&1; [ $? -eq 2 ] && ok || fail "missing --recipe exits 2"
"$BIN" --recipe recipes/stories260k-w4a16.json --device gpu >/dev/null 2>&1; [ $? -eq 2 ] && ok || fail "--device gpu exits 2"
# DONESHOT_GPTQ_FACTOR: torch, flip or potri; a typo is refused, naming the variable
err=$(DONESHOT_GPTQ_FACTOR=Flip "$BIN" --recipe recipes/stories260k-w4a16.json 2>&1 >/dev/null); rc=$?
[ $rc -eq 2 ] && echo "$err" | grep -q "DONESHOT_GPTQ_FACTOR=Flip: expected torch, flip or potri" && ok ||
    fail "DONESHOT_GPTQ_FACTOR=Flip exits 2 naming the variable (rc $rc: $err)"
# one size parser for the command line and the recipe: "1.5 GB" means the
# same in both; a fractional byte count or an unknown unit is refused in both
out=/tmp/ds-cli-size.$$
"$BIN" --recipe recipes/stories260k-w4a16.json --max-shard-size "1.5 GB" --output $out -q >/dev/null 2>&1 \
    && [ -f $out/config.json ] && ok || fail "--max-shard-size '1.5 GB' is accepted (the recipe accepts it)"
rm -rf $out
for bad in 1.5 5XB; do
    "$BIN" --recipe recipes/stories260k-w4a16.json --max-shard-size "$bad" --output $out >/dev/null 2>&1
    [ $? -eq 2 ] && [ ! -e $out ] && ok || fail "--max-shard-size '$bad' exits 2"
done
# --device cuda on a machine without a GPU (or a CPU-only build): exit 2, a
# cause and a hint, nothing written. With a GPU this check does not apply.
if ! command -v nvidia-smi >/dev/null 2>&1; then
    out=/tmp/ds-cli-cuda.$$
    "$BIN" --recipe recipes/stories260k-w4a16.json --device cuda --output $out >$out.log 2>&1
    rc=$?
    [ $rc -eq 2 ] && grep -q "no CUDA device\|built without CUDA" $out.log && grep -q "hint:" $out.log && [ ! -e $out ] \
        && ok || fail "--device cuda without a GPU: exit 2 with cause and hint (got $rc: $(head -c 300 $out.log))"
    "$BIN" --recipe recipes/stories260k-w4a16.json --device auto --output $out -q >$out.log 2>&1 && [ -d $out ] \
        && ok || fail "--device auto without a GPU runs on the CPU"
    rm -rf $out $out.log
fi
echo "$P passed, $F failed"
[ "$F" -eq 0 ]
