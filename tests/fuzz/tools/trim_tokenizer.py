#!/usr/bin/env python3
"""Seed maker for the tokenizer fuzz target: keep the first N vocab ids of a
real tokenizer.json (and the merges whose parts and result are kept, and the
added tokens, renumbered past the vocab), so the seed keeps the file's
normalizer / pre-tokenizer / post-processor / decoder but is a few KB.
usage: trim_tokenizer.py IN.json OUT.json [N=300]"""
import json, sys

src, dst = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 300
t = json.load(open(src, encoding="utf-8"))
m = t["model"]
vocab = {k: v for k, v in m["vocab"].items() if v < n}
merges = []
for mg in m.get("merges", []):
    a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
    if a in vocab and b in vocab and a + b in vocab:
        merges.append(mg)
m["vocab"], m["merges"] = vocab, merges
remap = {}
for i, at in enumerate(t.get("added_tokens", [])[:8]):
    remap[at["id"]] = at["id"] if at["id"] < n else n + i
    at["id"] = remap[at["id"]]
t["added_tokens"] = t.get("added_tokens", [])[:8]
pp = json.dumps(t.get("post_processor"))
for old, new in remap.items():
    pp = pp.replace(f'"id": {old}', f'"id": {new}').replace(f"[{old}]", f"[{new}]")
t["post_processor"] = json.loads(pp)
json.dump(t, open(dst, "w", encoding="utf-8"), ensure_ascii=False, separators=(",", ":"))
