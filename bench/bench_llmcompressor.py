#!/usr/bin/env python3
"""llm-compressor's oneshot on CPU, timed: the reference column of
bench/bench_cpu.sh (docs/BENCHMARKS.md).

Quantizes MODEL with the GPTQModifier of a doneshot recipe (default
recipes/w4a16.json: W4A16, group 128, actorder static, block 128,
dampening 0.01, ignore lm_head) on EXACTLY the token ids of a JSONL file
({"input_ids": [...]} per line, as bench_cpu.sh writes it and doneshot
reads it), every row as one calibration sample (num_calibration_samples =
rows, max_seq_length = the longest row), pipeline "sequential", torch on
--threads CPU threads. Times model load and the oneshot call (calibration,
GPTQ and saving the compressed checkpoint, as doneshot's total includes
its save) and prints one JSON line:
  {"load_s": ..., "oneshot_s": ..., "threads": N, "samples": S, "tokens": T,
   "torch": "...", "llmcompressor": "..."}

Usage: bench_llmcompressor.py --model DIR --dataset FILE.jsonl --out DIR
       [--recipe recipes/w4a16.json] [--threads 2]
Needs the reference stack (torch, transformers, llmcompressor; e.g.
~/.cache/doneshot/venv/bin/python).
"""
import argparse
import json
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--recipe", default=os.path.join(os.path.dirname(__file__), "..", "recipes", "w4a16.json"))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch
    torch.set_num_threads(a.threads)
    import llmcompressor
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM

    rows = [json.loads(line)["input_ids"] for line in open(a.dataset) if line.strip()]
    if not rows:
        sys.exit("%s: no rows" % a.dataset)
    g = json.load(open(a.recipe))["modifiers"][0]["GPTQModifier"]
    kw = {k: g[k] for k in ("targets", "scheme", "ignore", "config_groups", "block_size", "dampening_frac",
                            "actorder") if k in g}
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype="auto")
    t1 = time.perf_counter()
    ds = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    oneshot(model=model, dataset=ds, recipe=[GPTQModifier(**kw)], num_calibration_samples=len(rows),
            max_seq_length=max(len(r) for r in rows), pipeline="sequential", output_dir=a.out,
            save_compressed=True)
    t2 = time.perf_counter()
    print(json.dumps({"load_s": round(t1 - t0, 2), "oneshot_s": round(t2 - t1, 2), "threads": a.threads,
                      "samples": len(rows), "tokens": sum(len(r) for r in rows), "torch": torch.__version__,
                      "llmcompressor": llmcompressor.__version__}))


if __name__ == "__main__":
    main()
