#!/bin/sh
# test_dataset_stream.sh - calibration files far larger than memory:
#   * a ~320 MB (uncompressed) .jsonl.gz quantizes at -np 2 with every rank's
#     peak RSS (run summary peak_rss_bytes) under 128 MiB: the file is
#     streamed and only each rank's rows are tokenized (dataset_load_slice);
#     the old loader read and tokenized the whole file on every rank
#     (~1.1 GB RSS and ~70 s per rank for this file);
#   * opt-in (DS_TEST_HUGE=1, ~1-2 min): a .jsonl.gz over 2 GiB uncompressed
#     (the old loader failed: "request does not fit in an int").
# Env: BUILD (default build), MPIRUN (default "mpirun --oversubscribe"),
# DS_TEST_HUGE. Last line: "N passed, N failed, N skipped".
BUILD=${BUILD:-build}
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
DS=$BUILD/doneshot
RECIPE=recipes/stories260k-w4a16.json
. tests/lib.sh # counters, pass/fail/skip, $TMP, the DS check

# $1 rows -> stdout: JSON lines, row i has a distinct text (~160 bytes)
gen_rows() {
    seq 1 "$1" | sed 's/.*/{"text": "& Once upon a time, there was a little girl named Lily. She liked to play in the park with her dog. One day she found a big red ball under a tree."}/'
}

# largest peak_rss_bytes of a run summary, in MiB
peak_mib() {
    tr -d '\n\t ' <"$1" | sed -n 's/.*"peak_rss_bytes":\[\([0-9.,e+]*\)\].*/\1/p' | tr ',' '\n' |
        awk 'BEGIN { m = -1 } { if ($1 + 0 > m) m = $1 + 0 } END { if (m < 0) print "none"; else printf "%d\n", m / 1048576 }'
}

ROWS=2000000
t0=$(date +%s)
gen_rows $ROWS | gzip -1 >"$TMP/big.jsonl.gz"
t1=$(date +%s)
echo "generated $ROWS rows ($(gen_rows 1 | wc -c) bytes each) in $((t1 - t0)) s: $(wc -c <"$TMP/big.jsonl.gz") bytes gzipped"

timeout -k 10 300 $MPIRUN -np 2 "$DS" --recipe $RECIPE --dataset "$TMP/big.jsonl.gz" --num-samples 24 \
    --max-seq-len 64 --seed 5 --output "$TMP/big" --summary "$TMP/big.json" -q >"$TMP/big.log" 2>&1
rc=$?
t2=$(date +%s)
peak=$(peak_mib "$TMP/big.json" 2>/dev/null)
echo "-np 2 on the ~320 MB .jsonl.gz: exit $rc in $((t2 - t1)) s, peak RSS ${peak:-?} MiB (max over ranks)"
# an ASan build (make asan) keeps freed memory in quarantine and shadow
# memory besides: its RSS says nothing about the reader, so only the exit
# status counts there
LIM=128
nm "$DS" 2>/dev/null | grep -q __asan_init && { LIM=100000; echo "SKIP the 128 MiB bound: ASan build"; }
if [ $rc -eq 0 ] && [ -n "$peak" ] && [ "$peak" != none ] && [ "$peak" -lt $LIM ]; then
    pass "a ~320 MB .jsonl.gz quantizes at -np 2 with < $LIM MiB peak RSS per rank"
else
    fail "big .jsonl.gz: exit $rc, peak RSS ${peak:-?} MiB (want exit 0, < 128 MiB): $(tail -c 400 "$TMP/big.log")"
fi

rm -rf "$TMP/big" "$TMP/big.jsonl.gz"

if [ "${DS_TEST_HUGE:-0}" = 1 ]; then
    HROWS=14500000 # ~2.2 GiB uncompressed
    t0=$(date +%s)
    gen_rows $HROWS | gzip -1 >"$TMP/huge.jsonl.gz"
    t1=$(date +%s)
    timeout -k 10 900 "$DS" --recipe $RECIPE --dataset "$TMP/huge.jsonl.gz" --num-samples 16 --max-seq-len 64 \
        --output "$TMP/huge" --summary "$TMP/huge.json" -q >"$TMP/huge.log" 2>&1
    rc=$?
    t2=$(date +%s)
    peak=$(peak_mib "$TMP/huge.json" 2>/dev/null)
    echo "huge: generated $HROWS rows in $((t1 - t0)) s; quantize exit $rc in $((t2 - t1)) s, peak RSS ${peak:-?} MiB"
    if [ $rc -eq 0 ] && [ -n "$peak" ] && [ "$peak" != none ] && [ "$peak" -lt 128 ]; then
        pass "a .jsonl.gz over 2 GiB uncompressed quantizes with < 128 MiB peak RSS"
    else
        fail "huge .jsonl.gz: exit $rc, peak ${peak:-?} MiB: $(tail -c 400 "$TMP/huge.log")"
    fi
else
    skip "a .jsonl.gz over 2 GiB uncompressed (set DS_TEST_HUGE=1, ~1-2 min)"
fi

echo "$P passed, $F failed, $S skipped"
[ "$F" -eq 0 ]
