#!/usr/bin/env python3
"""Interop: static INT8 activations (W8A8 with a calibrated per-tensor
input_scale) - doneshot vs llm-compressor 0.14, and transformers +
compressed-tensors loading doneshot's int-quantized checkpoint.

Recipe: recipes/w8a8-static.json (GPTQModifier config_groups: int8 channel
symmetric weights, int8 tensor symmetric static input activations with the
static_minmax observer, lm_head ignored). llmcompressor.oneshot gets the SAME
config_groups (read from that file) and EXACTLY the same calibration token
ids as parity_w8a8.py (64 TinyStories documents, BOS first, <= 256 tokens,
seed 0), on CPU, f32.

Checks: the checkpoint's tensor set, dtypes and shapes identical to
llm-compressor's (weight I8 [out, in], weight_scale [out, 1], input_scale
[1] in the model dtype, no input_zero_point: compressed-tensors'
_remove_symmetric_zp); >= 99.9 % identical int8 codes; weight_scale and
input_scale (= max|x| over every calibration token of the module's input
/ 127.5) within 1e-6 relative for every module upstream of the first int8
code that differs (measured: 5e-7; a forward is torch vs OpenBLAS, a few
ulps), and within 1e-4 for all (measured 1.9e-5: 11 of 226560 codes sit on
a rounding boundary and flip, from layer 2's up_proj on, and the later
layers' activations, so their max, move with them); quantization_config's
config_groups (weights and input_activations) and format identical;
`mpirun -np 2` writes the same input_scale bytes as -np 1 (the observer's
max is all-reduced with MPI MAX); `doneshot eval` ppl of the two checkpoints
within 5e-3; transformers' from_pretrained of doneshot's checkpoint without
warnings, dequantized weights bitwise equal to `doneshot eval
--dump-weights`, ppl within 5e-3 of `doneshot eval` (the static activation
fake quant is discontinuous like the dynamic one: an ulp of forward noise
moves some activations to the next int8 step; see parity_w8a8.py).

The observer: llm-compressor gives a config_groups input_activations without
"observer" the "minmax" observer (llmcompressor/modifiers/quantization/
quantization/mixin.py: a moving average of each batch's min and max,
averaging_constant 0.01, over its randomly shuffled calibration batches;
DDP: AVG over ranks), which doneshot does not implement: doneshot uses
static_minmax for it (running min/max, order- and -np-independent) and
writes "static_minmax". --default-observer also runs llm-compressor on the
recipe without "observer" and prints how far its input_scale lands from
doneshot's (informational, no check).

Prints "ok"/"FAIL" lines and "RESULT {...}"; exit 1 if a target is missed.
Usage: parity_w8a8_static.py --doneshot build/doneshot [--workdir DIR]
       [--windows 40] [--seq-len 256] [--mpirun CMD] [--reuse] [--verbose]
       [--default-observer]
"""
import argparse
import copy
import json
import os
import shlex
import shutil
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import parity_llmcompressor as P  # noqa: E402  (calibration rows, run, ds_eval, check)
from parity_w8a8 import N_ROWS, MAX_LEN, SEED, load_tensors, transformers_ppl  # noqa: E402
from check_transformers import load_quiet, wikitext_lf  # noqa: E402

ROOT, FP = P.ROOT, P.FP
RECIPE = os.path.join(ROOT, "recipes", "w8a8-static.json")
FAILS = P.FAILS
check = P.check


def run_llmcompressor(rows, config_groups, out):
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM
    g = json.load(open(RECIPE))["modifiers"][0]["GPTQModifier"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(FP, dtype=torch.float32)
    ds = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    mod = GPTQModifier(config_groups=config_groups, ignore=g["ignore"], block_size=g["block_size"],
                       dampening_frac=g["dampening_frac"])
    oneshot(model=model, dataset=ds, recipe=[mod], num_calibration_samples=len(rows), max_seq_length=MAX_LEN,
            output_dir=out, save_compressed=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):  # for `doneshot eval`
        shutil.copy(os.path.join(FP, f), out)


def rel(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


# A module's input depends on every module of the earlier input groups (forward order).
GROUPS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
          ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))


def group_index(m):
    layer = int(m.split(".")[2])
    sub = m.split(".", 3)[3]
    return layer * len(GROUPS) + next(i for i, g in enumerate(GROUPS) if sub in g)


def compare(a, A, B):
    layout_a = {k: (str(v.dtype), v.shape) for k, v in A.items()}
    layout_b = {k: (str(v.dtype), v.shape) for k, v in B.items()}
    diff = sorted(k for k in set(layout_a) | set(layout_b) if layout_a.get(k) != layout_b.get(k))
    check(not diff, "tensor names, dtypes and shapes identical to llm-compressor's (%d tensors%s)"
          % (len(layout_b), "; differ: " + ", ".join(diff[:6]) if diff else ""))
    mods = sorted((k[:-len(".input_scale")] for k in B if k.endswith(".input_scale")), key=group_index)
    check(len(mods) == 35 and not any(k.endswith("zero_point") for k in A),
          "35 modules with input_scale [1], no zero point (symmetric)")
    same = total = 0
    ws, first_flip = (0.0, "-"), None
    is_clean, is_all = (0.0, "-"), (0.0, "-")
    for m in mods:
        qa, qb = A.get(m + ".weight"), B[m + ".weight"]
        if qa is None or qa.shape != qb.shape:
            continue
        eq = int((qa == qb).sum())
        same += eq
        total += qb.size
        r = rel(A[m + ".weight_scale"], B[m + ".weight_scale"])
        ws = max(ws, (r, m))
        r = rel(A[m + ".input_scale"], B[m + ".input_scale"])
        is_all = max(is_all, (r, m))
        # clean: no differing code upstream of this module's input (a flip moves the later activations)
        if first_flip is None or group_index(m) <= group_index(first_flip):
            is_clean = max(is_clean, (r, m))
        if eq != qb.size and first_flip is None:
            first_flip = m
        if a.verbose:
            print("  %-40s codes %8.4f%%  input_scale %.8g / %.8g (rel %.1e)" % (
                m, 100.0 * eq / qb.size, float(A[m + ".input_scale"][0]), float(B[m + ".input_scale"][0]), r))
    agree = same / max(total, 1)
    check(agree >= 0.999, "int8 codes identical: %.4f%% (%d of %d; target >= 99.9%%)" % (100 * agree, same, total))
    check(ws[0] <= 1e-6, "max relative weight_scale difference %.2e (%s; target <= 1e-6)" % ws)
    check(is_clean[0] <= 1e-6, "input_scale of the modules upstream of the first differing code (%s): max "
          "relative difference %.2e (%s; target <= 1e-6)" % (first_flip or "none", is_clean[0], is_clean[1]))
    check(is_all[0] <= 1e-4, "input_scale of every module: max relative difference %.2e (%s; target <= 1e-4: a "
          "code on a rounding boundary that flips moves every later activation, and their max with it)" % is_all)
    return agree, ws[0], is_clean[0], is_all[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--doneshot", required=True)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--windows", type=int, default=40, help="eval windows (0: the whole text)")
    ap.add_argument("--mpirun", default="mpirun --oversubscribe")
    ap.add_argument("--reuse", action="store_true", help="reuse existing checkpoints in --workdir")
    ap.add_argument("--default-observer", action="store_true",
                    help="also llm-compressor without \"observer\" (its moving-average minmax): report the gap")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    a.doneshot = os.path.abspath(a.doneshot)
    a.np = 1  # P.ds_eval's world size
    work = a.workdir or tempfile.mkdtemp(prefix="ds-w8a8-static-")
    os.makedirs(work, exist_ok=True)
    rows = P.calibration_rows(N_ROWS, MAX_LEN, SEED)
    calib = os.path.join(work, "calib.jsonl")
    with open(calib, "w") as f:
        for r in rows:
            f.write(json.dumps({"input_ids": r}) + "\n")
    text = wikitext_lf(work)
    cg = json.load(open(RECIPE))["modifiers"][0]["GPTQModifier"]["config_groups"]
    ds_q, ds_q2, lc_q = (os.path.join(work, d) for d in ("doneshot", "doneshot-np2", "llmcompressor"))
    base = [a.doneshot, "--recipe", RECIPE, "--model", FP, "--dataset", calib, "--num-samples", str(len(rows)),
            "--max-seq-len", str(MAX_LEN), "--overwrite", "-q", "--output"]
    for q, np_ in ((ds_q, 1), (ds_q2, 2)):
        if not (a.reuse and os.path.exists(os.path.join(q, "model.safetensors"))):
            P.run((shlex.split(a.mpirun) + ["-np", str(np_)] if np_ > 1 else []) + base + [q])
    if not (a.reuse and os.path.exists(os.path.join(lc_q, "model.safetensors"))):
        run_llmcompressor(rows, copy.deepcopy(cg), lc_q)
    A, A2, B = load_tensors(ds_q), load_tensors(ds_q2), load_tensors(lc_q)
    result = {"calib_rows": len(rows), "calib_tokens": sum(map(len, rows)), "text": os.path.basename(text)}
    agree, ws, is_clean, is_all = compare(a, A, B)
    result.update({"code_agreement": agree, "weight_scale_rel": ws, "input_scale_rel_upstream": is_clean,
                   "input_scale_rel": is_all})

    ins = sorted(k for k in A if k.endswith(".input_scale"))
    np_same = sum(1 for k in ins if k in A2 and A[k].tobytes() == A2[k].tobytes())
    check(np_same == len(ins) == 35, "-np 2 vs -np 1: input_scale bytes identical (%d of %d)" % (np_same, len(ins)))

    qa = json.load(open(os.path.join(ds_q, "config.json")))["quantization_config"]
    qb = json.load(open(os.path.join(lc_q, "config.json")))["quantization_config"]
    ga, gb = qa["config_groups"]["group_0"], qb["config_groups"]["group_0"]
    check(ga.get("input_activations") == gb.get("input_activations"),
          "quantization_config input_activations identical: %s" % json.dumps(ga.get("input_activations")))
    check(ga.get("weights") == gb.get("weights") and ga.get("format") == gb.get("format") == "int-quantized" and
          qa["format"] == qb["format"] and qa["ignore"] == qb["ignore"],
          "quantization_config weights, format (%s) and ignore identical" % qa["format"])

    e_fp, e_ds, e_lc = P.ds_eval(a, FP, text), P.ds_eval(a, ds_q, text), P.ds_eval(a, lc_q, text)
    r = abs(e_ds["ppl"] - e_lc["ppl"]) / e_lc["ppl"]
    check(r <= 5e-3, "ppl on %s (%d windows of %d): fp32 %.4f, doneshot %.4f, llm-compressor %.4f (rel diff %.2e; "
          "target <= 5e-3)" % (os.path.basename(text), e_ds["windows"], e_ds["seq_len"], e_fp["ppl"], e_ds["ppl"],
                               e_lc["ppl"], r))
    _, msgs = load_quiet(ds_q)
    check(not msgs, "transformers/compressed-tensors load the doneshot checkpoint without warnings%s"
          % ("" if not msgs else ": " + "; ".join(msgs[:3])))
    hf, _, (same, nw) = transformers_ppl(a, ds_q, text)
    check(same == nw == 35, "compressed-tensors' dequantized Linear weights bitwise == doneshot eval's (%d of %d)"
          % (same, nw))
    r_hf = abs(hf - e_ds["ppl"]) / hf
    check(r_hf <= 5e-3, "transformers + compressed-tensors ppl %.8f vs doneshot eval %.8f (rel diff %.2e; target "
          "<= 5e-3)" % (hf, e_ds["ppl"], r_hf))
    result.update({"ppl_fp": e_fp["ppl"], "ppl_doneshot": e_ds["ppl"], "ppl_llmcompressor": e_lc["ppl"],
                   "ppl_rel_diff": r, "ppl_transformers": hf, "transformers_rel_diff": r_hf})

    if a.default_observer:  # llm-compressor's own default ("minmax", shuffled batches): informational
        cg0 = copy.deepcopy(cg)
        del cg0["group_0"]["input_activations"]["observer"]
        lc0 = os.path.join(work, "llmcompressor-default-observer")
        if not (a.reuse and os.path.exists(os.path.join(lc0, "model.safetensors"))):
            run_llmcompressor(rows, cg0, lc0)
        C = load_tensors(lc0)
        ratio = [float(A[k][0] / C[k][0]) for k in ins]
        obs = json.load(open(os.path.join(lc0, "config.json")))["quantization_config"]["config_groups"]["group_0"]
        print("info llm-compressor without \"observer\": observer %s; doneshot input_scale / its input_scale: "
              "min %.3f, max %.3f" % (obs["input_activations"]["observer"], min(ratio), max(ratio)))
        result["default_observer_ratio"] = [min(ratio), max(ratio)]
    print("RESULT " + json.dumps(result))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
