#!/bin/sh
# Tokenizer throughput, single thread: doneshot's tokenizer (C) vs Hugging Face
# tokenizers (Python bindings, Rust core) on WikiText-2 test (1.3 MB), one
# encode() call over the whole file, add_special_tokens=False, best of 3 runs.
# The C side is bench/bench_tokenizer.c (compiled here, -O2) timing
# tokenizer_encode only (not loading), with a fresh word cache per run.
# Usage (repo root): sh bench/bench_tokenizer.sh   [PY=.venv-tok/bin/python]
set -e
PY=${PY:-.venv-tok/bin/python}
TEXT=${TEXT:-../shared/data/wikitext2_test.txt}
OUT=build/tok
mkdir -p "$OUT"
mpicc -std=c11 -D_GNU_SOURCE -O2 -Isrc $(pkg-config --cflags libcjson) src/util.c src/comm.c \
    src/tokenizer.c src/tokenizer_bpe.c bench/bench_tokenizer.c -o "$OUT/bench_tokenizer" \
    -lcjson -lz -lpcre2-8 -lutf8proc -lm
export RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
echo "text: $TEXT ($(wc -c < "$TEXT") bytes), one encode call, best of 3, single thread"
printf '%-10s %14s %14s %8s\n' tokenizer "doneshot MB/s" "HF MB/s" ratio
python3 tests/fixtures.py build/fixtures >/dev/null || exit 1 # the committed tokenizers, unpacked
for name in llama3 qwen2; do
    tj=build/fixtures/tokenizers/$name/tokenizer.json
    c=$("$OUT/bench_tokenizer" "$tj" "$TEXT" 3)
    h=$("$PY" bench/bench_tokenizer.py "$tj" "$TEXT" 3 2>/dev/null)
    cm=${c%% *}; hm=${h%% *}
    ci=$(echo "$c" | awk '{print $3}'); hi=$(echo "$h" | awk '{print $3}')
    [ "$ci" = "$hi" ] || echo "WARNING: id counts differ ($ci vs $hi)"
    printf '%-10s %14s %14s %8s\n' "$name" "$cm" "$hm" "$(awk "BEGIN{printf \"%.2fx\", $cm/$hm}")"
done
