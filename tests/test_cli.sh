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
echo "$P passed, $F failed"
[ "$F" -eq 0 ]
