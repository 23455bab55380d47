#!/usr/bin/env python3
"""Interop (b): GPTQ parity of doneshot with llm-compressor.

Both quantize the bundled stories260K with the demo recipe's scheme
(recipes/stories260k-w4a16.json: W4A16 int4 symmetric, its strategy /
group_size / actorder, ignore lm_head, block_size, dampening_frac) from
EXACTLY the same calibration token ids:

  * rows = blank-line-separated documents of data/tinystories_sample.txt,
    tokenized with tokenizer.json (add_special_tokens, i.e. BOS first),
    truncated to max_seq_length, a seeded choice of num_calibration_samples
    rows, written to calib.jsonl as {"input_ids": [...]};
  * doneshot calibrates from calib.jsonl with --num-samples = number of rows
    (its seeded shuffle only reorders them);
  * llmcompressor.oneshot gets the same rows as a datasets.Dataset with
    input_ids, num_calibration_samples = number of rows, pipeline
    "sequential", on CPU.

Then it compares the two checkpoints: fraction of identical int4 codes
(target >= 99%), max relative weight_scale difference (target <= 1e-3), and
`doneshot eval` perplexity of both (within 0.5%) and of the original model.
Prints "ok"/"FAIL" lines, a per-module table with --verbose, and
"RESULT {...}"; exit 1 if a target is missed.

With --rtn: QuantizationModifier (round to nearest, no calibration) with
the demo recipe's config_groups, symmetric and asymmetric (symmetric false:
weight_zero_point), through both tools: every tensor of the two checkpoints
(packed codes, scales, zero points, shapes, the unquantized tensors) must be
byte-identical (RTN involves no summation order), and quantization_config
the same.

Usage: parity_llmcompressor.py --doneshot build/doneshot [--workdir DIR]
       [--windows 40] [--seq-len 256] [--np 1] [--verbose] [--rtn]
"""
import argparse
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FP = os.path.join(ROOT, "data", "stories260K")
RECIPE = os.path.join(ROOT, "recipes", "stories260k-w4a16.json")
CALIB_TEXT = os.path.join(ROOT, "data", "tinystories_sample.txt")
FAILS = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILS.append(what)


def run(cmd):
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit("command failed (%d): %s" % (r.returncode, " ".join(cmd)))
    return r.stdout


def calibration_rows(n, max_len, seed):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(FP, "tokenizer.json"))
    text = open(CALIB_TEXT, encoding="utf-8", newline="").read()
    docs = [d.strip() for d in text.split("\n\n") if d.strip()]
    random.Random(seed).shuffle(docs)
    return [tok.encode(d, add_special_tokens=True).ids[:max_len] for d in docs[:n]]


def gptq_modifier(rc):
    from llmcompressor.modifiers.quantization import GPTQModifier
    g = rc["modifiers"][0]["GPTQModifier"]
    kw = {k: g[k] for k in ("ignore", "config_groups", "block_size", "dampening_frac") if k in g}
    if "actorder" in g:
        kw["actorder"] = g["actorder"]
    return GPTQModifier(**kw)


def run_llmcompressor(rows, rc, out, max_len):
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(FP, dtype=torch.float32)
    ds = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    oneshot(model=model, dataset=ds, recipe=[gptq_modifier(rc)], num_calibration_samples=len(rows),
            max_seq_length=max_len, pipeline="sequential", output_dir=out, save_compressed=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):  # for `doneshot eval`
        shutil.copy(os.path.join(FP, f), out)


def unpack_int4(packed, cols):
    """compressed-tensors pack-quantized int4: 8 codes per int32, lowest nibble
    first, stored as q + 8."""
    p = packed.astype(np.int64) & 0xFFFFFFFF
    nib = np.stack([(p >> (4 * j)) & 0xF for j in range(8)], axis=-1).reshape(p.shape[0], -1)
    return (nib[:, :cols] - 8).astype(np.int8)


def load_codes(d):
    from safetensors.numpy import load_file
    t = load_file(os.path.join(d, "model.safetensors"))
    out = {}
    for k in t:
        if k.endswith(".weight_packed"):
            m = k[:-len(".weight_packed")]
            rows, cols = (int(x) for x in t[m + ".weight_shape"])
            out[m] = (unpack_int4(t[k], cols), t[m + ".weight_scale"].astype(np.float64))
    return out


def rtn_parity(a, work, rc, rows, calib, max_len):
    """QuantizationModifier (RTN) with rc's config_groups, symmetric and
    asymmetric, and fp8 weight-only (float, 8 bits, per channel, no
    input_activations: compressed-tensors' fallback format naive-quantized):
    doneshot's and llm-compressor's checkpoints byte-identical, the same
    quantization_config format."""
    import copy

    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from safetensors.torch import load_file  # the numpy loader has no float8
    from transformers import AutoModelForCausalLM

    def raw(t):
        return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    g = rc["modifiers"][0]["GPTQModifier"]
    fp8 = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel"}
    for name, sym in (("rtn-sym", True), ("rtn-asym", False), ("rtn-fp8-weight-only", True)):
        groups = copy.deepcopy(g["config_groups"])
        groups["group_0"]["weights"]["symmetric"] = sym
        groups["group_0"]["weights"].pop("actorder", None)
        if "fp8" in name:
            groups["group_0"]["weights"] = dict(fp8)
        qm = {"ignore": g["ignore"], "config_groups": groups}
        recipe = os.path.join(work, name + ".json")
        with open(recipe, "w") as f:
            json.dump({"modifiers": [{"QuantizationModifier": qm}]}, f)
        ds_q, lc_q = os.path.join(work, "doneshot-" + name), os.path.join(work, "llmcompressor-" + name)
        run([a.doneshot, "--recipe", recipe, "--model", FP, "--dataset", calib, "--num-samples", str(len(rows)),
             "--max-seq-len", str(max_len), "--output", ds_q, "--overwrite", "-q"])
        model = AutoModelForCausalLM.from_pretrained(FP, dtype=torch.float32)
        data = Dataset.from_dict({"input_ids": rows[:4], "attention_mask": [[1] * len(r) for r in rows[:4]]})
        oneshot(model=model, dataset=data, recipe=[QuantizationModifier(**qm)], num_calibration_samples=4,
                max_seq_length=max_len, output_dir=lc_q, save_compressed=True)
        A, B = load_file(os.path.join(ds_q, "model.safetensors")), load_file(os.path.join(lc_q, "model.safetensors"))
        diff = sorted(k for k in B if k not in A or A[k].dtype != B[k].dtype or A[k].shape != B[k].shape
                      or raw(A[k]) != raw(B[k]))
        extra = sorted(k for k in A if k not in B)
        zp = sum(1 for k in B if k.endswith("weight_zero_point"))
        check(not diff and not extra and len(B) > 0 and (zp == 35) == (not sym),
              "%s: QuantizationModifier checkpoints byte-identical: %d tensors (%d weight_zero_point); differing: "
              "%s; only in doneshot's: %s" % (name, len(B), zp, diff[:4] or "none", extra[:4] or "none"))
        qa = json.load(open(os.path.join(ds_q, "config.json")))["quantization_config"]
        qb = json.load(open(os.path.join(lc_q, "config.json")))["quantization_config"]
        ga, gb = qa["config_groups"]["group_0"], qb["config_groups"]["group_0"]
        keys = ("num_bits", "type", "symmetric", "strategy", "group_size", "dynamic", "actorder")
        same = all(ga["weights"].get(k) == gb["weights"].get(k) for k in keys) and qa["format"] == qb["format"] \
            and ga.get("input_activations") == gb.get("input_activations") and qa["ignore"] == qb["ignore"]
        check(same, "%s: quantization_config format %s / %s, weights %s" % (
            name, qa["format"], qb["format"], {k: ga["weights"].get(k) for k in keys}))


def ds_eval(a, model, text):
    cmd = (shlex.split(a.mpirun) + ["-np", str(a.np)]) if a.np > 1 else []
    cmd += [a.doneshot, "eval", "--model", model, "--dataset", text, "--seq-len", str(a.seq_len), "--json", "-q"]
    if a.windows > 0:
        cmd += ["--max-windows", str(a.windows)]
    return json.loads(run(cmd).strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--doneshot", required=True)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--windows", type=int, default=40, help="eval windows (0: the whole text)")
    ap.add_argument("--np", type=int, default=1)
    ap.add_argument("--mpirun", default="mpirun --oversubscribe")
    ap.add_argument("--reuse", action="store_true", help="reuse existing checkpoints in --workdir")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--rtn", action="store_true", help="also the QuantizationModifier (RTN) byte parity")
    a = ap.parse_args()
    a.doneshot = os.path.abspath(a.doneshot)
    work = a.workdir or tempfile.mkdtemp(prefix="ds-parity-")
    os.makedirs(work, exist_ok=True)
    rc = json.load(open(RECIPE))
    n = int(rc.get("num_calibration_samples", 64))
    max_len = int(rc.get("max_seq_length", 256))
    seed = int(rc.get("seed", 0))

    rows = calibration_rows(n, max_len, seed)
    calib = os.path.join(work, "calib.jsonl")
    with open(calib, "w") as f:
        for r in rows:
            f.write(json.dumps({"input_ids": r}) + "\n")
    ds_q, lc_q = os.path.join(work, "doneshot-W4A16"), os.path.join(work, "llmcompressor-W4A16")
    if not (a.reuse and os.path.exists(os.path.join(ds_q, "model.safetensors"))):
        run([a.doneshot, "--recipe", RECIPE, "--model", FP, "--dataset", calib, "--num-samples", str(len(rows)),
             "--max-seq-len", str(max_len), "--output", ds_q, "--overwrite", "-q"])
    if not (a.reuse and os.path.exists(os.path.join(lc_q, "model.safetensors"))):
        run_llmcompressor(rows, rc, lc_q, max_len)
    print("calibration: %d rows, %d tokens (%s)" % (len(rows), sum(map(len, rows)), calib))

    A, B = load_codes(ds_q), load_codes(lc_q)
    check(sorted(A) == sorted(B) and len(A) == 35, "both checkpoints quantize the same %d modules" % len(A))
    same = total = 0
    worst_scale, worst_mod = 0.0, "all modules"
    for m in sorted(A):
        (qa, sa), (qb, sb) = A[m], B[m]
        eq = int((qa == qb).sum())
        same += eq
        total += qa.size
        rel = float(np.max(np.abs(sa - sb) / np.maximum(np.abs(sb), 1e-30)))
        if rel > worst_scale:
            worst_scale, worst_mod = rel, m
        if a.verbose:
            print("  %-40s codes %7.3f%%  max|dq|=%d  scale rel %.2e" % (m, 100.0 * eq / qa.size,
                  int(np.abs(qa.astype(int) - qb).max()), rel))
    agree = same / total
    check(agree >= 0.99, "int4 codes identical: %.3f%% (%d of %d; target >= 99%%)" % (100 * agree, same, total))
    check(worst_scale <= 1e-3, "max relative scale difference %.2e (%s; target <= 1e-3)" % (worst_scale, worst_mod))

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from check_transformers import wikitext_lf
    text = wikitext_lf(work)
    e_fp, e_ds, e_lc = ds_eval(a, FP, text), ds_eval(a, ds_q, text), ds_eval(a, lc_q, text)
    rel = abs(e_ds["ppl"] - e_lc["ppl"]) / e_lc["ppl"]
    check(rel <= 5e-3, "ppl on %s (%d windows of %d): fp32 %.4f, doneshot W4A16 %.4f, llm-compressor W4A16 "
          "%.4f (rel diff %.2e; target <= 5e-3)" % (os.path.basename(text), e_ds["windows"], e_ds["seq_len"],
                                                   e_fp["ppl"], e_ds["ppl"], e_lc["ppl"], rel))
    if a.rtn:
        rtn_parity(a, work, rc, rows, calib, max_len)
    print("RESULT " + json.dumps({
        "calib_rows": len(rows), "calib_tokens": sum(map(len, rows)), "code_agreement": agree,
        "max_scale_rel_diff": worst_scale, "text": os.path.basename(text), "windows": e_ds["windows"],
        "seq_len": e_ds["seq_len"], "ppl_fp": e_fp["ppl"], "ppl_doneshot": e_ds["ppl"],
        "ppl_llmcompressor": e_lc["ppl"], "ppl_rel_diff": rel}))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
