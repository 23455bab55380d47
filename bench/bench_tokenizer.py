#!/usr/bin/env python3
"""HF tokenizers side of bench/bench_tokenizer.sh: encode TEXT with
tokenizer.json once (one call, add_special_tokens=False, single thread via
RAYON_NUM_THREADS=1 / TOKENIZERS_PARALLELISM=false), best of N runs, print
MB/s and the id count."""
import sys
import time

import tokenizers

path, text_path, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = tokenizers.Tokenizer.from_file(path)
text = open(text_path, "rb").read().decode("utf-8")  # keep \r bytes as the C side does
nbytes = len(text.encode("utf-8"))
best = 1e9
for _ in range(runs):
    t0 = time.perf_counter()
    ids = tok.encode(text, add_special_tokens=False).ids
    best = min(best, time.perf_counter() - t0)
print(f"{nbytes / 1e6 / best:.2f} MB/s {len(ids)} ids")
