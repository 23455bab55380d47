#!/usr/bin/env python3
"""Interop: INT8 W8A8 (with and without SmoothQuant) parity of doneshot with
llm-compressor, and transformers + compressed-tensors loading doneshot's
int-quantized checkpoint.

Both quantize the bundled stories260K from EXACTLY the same calibration token
ids (the rows of parity_llmcompressor.py: 64 TinyStories documents, BOS
first, 256 tokens at most, seed 0):
  * "sq":    [SmoothQuantModifier(smoothing_strength=0.8),
              GPTQModifier(scheme="W8A8", ignore=["lm_head"])]
             = recipes/w8a8-smoothquant.json;
  * "plain": [GPTQModifier(scheme="W8A8", ignore=["lm_head"])] = recipes/w8a8.json;
  * "rtn":   [SmoothQuantModifier(smoothing_strength=0.8),
              QuantizationModifier(scheme="W8A8", ignore=["lm_head"])]
             = tests/interop/w8a8-rtn-smoothquant.json (round-to-nearest);
  * "rtn-plain": [QuantizationModifier(scheme="W8A8", ignore=["lm_head"])]
             = tests/interop/w8a8-rtn.json, with no calibration data on
             either side (doneshot without --dataset, oneshot without a
             dataset: llm-compressor's DataFreePipeline).
llmcompressor.oneshot runs with its default pipeline ("independent": the
SmoothQuant epoch over all layers, then the GPTQ epoch), on CPU, f32.

Checks per variant: the same quantized modules; >= 99.9 % identical int8
codes (`weight`, I8 [out, in]); weight_scale within 1e-6 relative; the
(smoothed) norm weights within 1e-6 relative; `doneshot eval` ppl of the two
checkpoints within 0.5 %; the same tensor set (names, dtypes, shapes) and
quantization_config (format, quant_method, quantization_status,
config_groups, ignore) as llm-compressor's; format int-quantized with the
W8A8 input_activations; transformers' from_pretrained of doneshot's
checkpoint (compressed-tensors applies the dynamic per-token int8 activation
fake-quant) dequantizes weights bitwise equal to doneshot's (`eval
--dump-weights`) and gives `doneshot eval`'s ppl within 5e-3 relative.

Why not 1e-6 (issue 14's bound for weight-only schemes): the dynamic
per-token activation quantizer is discontinuous, so two forwards that differ
by one ulp (OpenBLAS vs torch summation order; W4A16 agrees to 5e-8) round
some activations to the neighbouring int8 step. Measured on this model: 1e-7
relative noise on the Linear inputs of transformers' own forward moves its
ppl by 7e-5, 3e-7 by 1.2e-3. The fake-quant itself is bit-exact against
compressed-tensors (tests/test_w8a8.c).
With --fixtures DIR (tests/fixtures.py output): the Qwen2 variant (q/k/v
biases) smoothed by doneshot (W8A8 + SmoothQuant 0.8) and by llm-compressor
(SmoothQuantModifier 0.8 alone: the norms do not depend on the quantizer) on
the first 16 rows: every smoothed norm within 1e-6 relative.
Custom SmoothQuant mappings and ignore (always): on the first 16 rows,
SmoothQuantModifier(0.8) with the MLP mapping only, spelled as a user would
([["re:.*gate_proj", "re:.*up_proj"], "re:.*post_attention_layernorm$"]), and
an ignore list naming layer 3's norm and both of its balance layers (skips
that mapping) plus layer 1's norm alone (llm-compressor smooths it anyway):
the same norms changed as llm-compressor's, each within 1e-6 relative, the
others bitwise unchanged.
Prints "ok"/"FAIL" lines and "RESULT {...}"; exit 1 if a target is missed.

Usage: parity_w8a8.py --doneshot build/doneshot [--workdir DIR]
       [--windows 40] [--seq-len 256] [--np 1] [--verbose] [--reuse]
"""
import argparse
import shlex
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import parity_llmcompressor as P  # noqa: E402  (calibration rows, run, ds_eval)
from check_transformers import hf_ppl, wikitext_lf  # noqa: E402

ROOT, FP = P.ROOT, P.FP
N_ROWS, MAX_LEN, SEED = 64, 256, 0
VARIANTS = {
    "sq": os.path.join(ROOT, "recipes", "w8a8-smoothquant.json"),
    "plain": os.path.join(ROOT, "recipes", "w8a8.json"),
    "rtn": os.path.join(HERE, "w8a8-rtn-smoothquant.json"),
    "rtn-plain": os.path.join(HERE, "w8a8-rtn.json"),  # no data on either side
}
FAILS = P.FAILS
check = P.check


def run_llmcompressor(rows, variant, out):
    import shutil

    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(FP, dtype=torch.float32)
    ds = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    if variant in ("rtn", "rtn-plain"):
        from llmcompressor.modifiers.quantization import QuantizationModifier
        recipe = [QuantizationModifier(scheme="W8A8", targets=["Linear"], ignore=["lm_head"])]
    else:
        recipe = [GPTQModifier(scheme="W8A8", targets=["Linear"], ignore=["lm_head"], block_size=128,
                               dampening_frac=0.01)]
    if variant in ("sq", "rtn"):
        recipe.insert(0, SmoothQuantModifier(smoothing_strength=0.8))
    if variant == "rtn-plain":  # data-free: llm-compressor's DataFreePipeline
        oneshot(model=model, recipe=recipe, output_dir=out, save_compressed=True)
    else:
        oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(rows), max_seq_length=MAX_LEN,
                output_dir=out, save_compressed=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):  # for `doneshot eval`
        shutil.copy(os.path.join(FP, f), out)


def load_tensors(d):
    from safetensors.numpy import load_file
    return load_file(os.path.join(d, "model.safetensors"))


def compare(a, variant, A, B):
    mods = sorted(k[:-len(".weight_scale")] for k in A if k.endswith(".weight_scale"))
    modsb = sorted(k[:-len(".weight_scale")] for k in B if k.endswith(".weight_scale"))
    check(mods == modsb and len(mods) == 35, "%s: both checkpoints quantize the same %d modules" % (variant, len(mods)))
    same = total = 0
    worst_scale, worst_mod = 0.0, "-"
    dtype_ok = True
    for m in mods:
        qa, qb = A[m + ".weight"], B[m + ".weight"]
        dtype_ok &= qa.dtype == np.int8 and qa.shape == qb.shape and A[m + ".weight_scale"].shape == (qa.shape[0], 1)
        dtype_ok &= A[m + ".weight_scale"].dtype == B[m + ".weight_scale"].dtype
        eq = int((qa == qb).sum())
        same += eq
        total += qa.size
        sa, sb = A[m + ".weight_scale"].astype(np.float64), B[m + ".weight_scale"].astype(np.float64)
        rel = float(np.max(np.abs(sa - sb) / np.maximum(np.abs(sb), 1e-30)))
        if rel > worst_scale:
            worst_scale, worst_mod = rel, m
        if a.verbose:
            print("  %-40s codes %8.4f%%  max|dq|=%d  scale rel %.2e" % (
                m, 100.0 * eq / qa.size, int(np.abs(qa.astype(int) - qb).max()), rel))
    check(dtype_ok, "%s: weight I8 [out, in], weight_scale [out, 1] in llm-compressor's dtype" % variant)
    layout = sorted(A) == sorted(B) and all(A[k].dtype == B[k].dtype and A[k].shape == B[k].shape for k in A)
    check(layout, "%s: the same %d tensors as llm-compressor's checkpoint, each with its dtype and shape%s" % (
        variant, len(B), "" if layout else " (only doneshot's: %s; only llm-compressor's: %s)" % (
            sorted(set(A) - set(B))[:4], sorted(set(B) - set(A))[:4])))
    agree = same / max(total, 1)
    check(agree >= 0.999, "%s: int8 codes identical: %.4f%% (%d of %d; target >= 99.9%%)"
          % (variant, 100 * agree, same, total))
    check(worst_scale <= 1e-6, "%s: max relative weight_scale difference %.2e (%s; target <= 1e-6)"
          % (variant, worst_scale, worst_mod))
    norms = sorted(k for k in B if k.endswith("layernorm.weight") or k == "model.norm.weight")
    worst_norm, wn = 0.0, "-"
    for k in norms:
        x, y = A[k].astype(np.float64), B[k].astype(np.float64)
        rel = float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-30)))
        if rel > worst_norm:
            worst_norm, wn = rel, k
    orig = load_tensors(FP)
    moved = max(float(np.max(np.abs(B[k] - orig[k]))) for k in norms)
    check(worst_norm <= 1e-6, "%s: norm weights (%d) within %.2e relative (%s; target <= 1e-6; llm-compressor "
          "moved them by up to %.3g)" % (variant, len(norms), worst_norm, wn, moved))
    return agree, worst_scale, worst_norm


def qwen2_norms(a, work, rows):
    """SmoothQuant norms on the Qwen2 fixture: doneshot vs llm-compressor."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    model = os.path.join(a.fixtures, "models", "variants", "qwen2")
    rows = rows[:16]
    calib = os.path.join(work, "calib16.jsonl")
    with open(calib, "w") as f:
        for r in rows:
            f.write(json.dumps({"input_ids": r}) + "\n")
    ds_q, lc_q = os.path.join(work, "doneshot-qwen2-sq"), os.path.join(work, "llmcompressor-qwen2-sq")
    P.run([a.doneshot, "--recipe", VARIANTS["sq"], "--model", model, "--dataset", calib, "--num-samples",
           str(len(rows)), "--max-seq-len", str(MAX_LEN), "--output", ds_q, "--overwrite", "-q"])
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    data = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    oneshot(model=m, dataset=data, recipe=[SmoothQuantModifier(smoothing_strength=0.8)],
            num_calibration_samples=len(rows), max_seq_length=MAX_LEN, output_dir=lc_q)
    A, B = load_file(os.path.join(ds_q, "model.safetensors")), load_file(os.path.join(lc_q, "model.safetensors"))
    norms = sorted(k for k in B if k.endswith("layernorm.weight"))
    worst = max(float(((A[k].double() - B[k].double()).abs() / B[k].double().abs()).max()) for k in norms)
    check(len(norms) == 10 and worst <= 1e-6, "qwen2 fixture (q/k/v bias): %d smoothed norms within %.2e relative of "
          "llm-compressor's (target <= 1e-6)" % (len(norms), worst))
    return worst


CUSTOM_SQ = {"smoothing_strength": 0.8,
             "mappings": [[["re:.*gate_proj", "re:.*up_proj"], "re:.*post_attention_layernorm$"]],
             "ignore": ["re:model\\.layers\\.3\\.(post_attention_layernorm|mlp\\.(gate|up)_proj)$",
                        "model.layers.1.post_attention_layernorm"]}


def custom_mappings(a, work, rows):
    """Custom mappings + ignore: doneshot (W8A8 GPTQ after it) vs llm-compressor's
    SmoothQuantModifier alone (the norms do not depend on the quantizer)."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    rows = rows[:16]
    calib = os.path.join(work, "calib16.jsonl")
    with open(calib, "w") as f:
        for r in rows:
            f.write(json.dumps({"input_ids": r}) + "\n")
    recipe = os.path.join(work, "custom-sq.json")
    with open(recipe, "w") as f:
        json.dump({"modifiers": [{"SmoothQuantModifier": CUSTOM_SQ},
                                 {"GPTQModifier": {"scheme": "W8A8", "ignore": ["lm_head"]}}]}, f)
    ds_q, lc_q = os.path.join(work, "doneshot-custom-sq"), os.path.join(work, "llmcompressor-custom-sq")
    import subprocess
    r = subprocess.run([a.doneshot, "--recipe", recipe, "--model", FP, "--dataset", calib, "--num-samples",
                        str(len(rows)), "--max-seq-len", str(MAX_LEN), "--output", ds_q, "--overwrite"],
                       capture_output=True, text=True)
    check(r.returncode == 0 and "1 mapping skipped" in r.stderr and
          "model.layers.1.post_attention_layernorm is smoothed although the ignore list names" in r.stderr,
          "custom mappings + ignore: doneshot runs (rc %d), says 1 mapping skipped and warns that layer 1's "
          "norm alone does not skip its mapping" % r.returncode)
    m = AutoModelForCausalLM.from_pretrained(FP, dtype=torch.float32)
    data = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    oneshot(model=m, dataset=data, recipe=[SmoothQuantModifier(**CUSTOM_SQ)], num_calibration_samples=len(rows),
            max_seq_length=MAX_LEN, output_dir=lc_q)
    A, B = load_file(os.path.join(ds_q, "model.safetensors")), load_file(os.path.join(lc_q, "model.safetensors"))
    O = load_file(os.path.join(FP, "model.safetensors"))
    norms = sorted(k for k in B if k.endswith("layernorm.weight"))
    lc_changed = [k for k in norms if not torch.equal(B[k], O[k])]
    ds_changed = [k for k in norms if not torch.equal(A[k], O[k])]
    want = ["model.layers.%d.post_attention_layernorm.weight" % i for i in (0, 1, 2, 4)]
    worst = max(float(((A[k].double() - B[k].double()).abs() / B[k].double().abs()).max()) for k in norms)
    check(lc_changed == want and ds_changed == want and worst <= 1e-6,
          "custom mappings + ignore: %d of %d norms smoothed by doneshot, %d by llm-compressor (want layers "
          "0, 1, 2, 4's post_attention_layernorm), all within %.2e relative (target <= 1e-6)"
          % (len(ds_changed), len(norms), len(lc_changed), worst))
    return worst


def transformers_ppl(a, q, text):
    """ppl of checkpoint q through transformers + compressed-tensors on
    `doneshot tokenize`'s ids, the GPTQ protocol of check_transformers.py."""
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = AutoModelForCausalLM.from_pretrained(q)
    model.eval()
    qc = model.config.quantization_config
    qc = qc.to_dict() if hasattr(qc, "to_dict") else qc
    ids = [int(x) for x in P.run([a.doneshot, "tokenize", "--model", q, "--input", text]).split()]
    T, K = a.seq_len, min(a.windows, len(ids) // a.seq_len) if a.windows > 0 else len(ids) // a.seq_len
    dump = q.rstrip("/") + ".dequantized.safetensors"
    P.run([a.doneshot, "eval", "--model", q, "--dump-weights", dump, "-q"])
    from safetensors.torch import load_file
    ppl = hf_ppl(model, ids, T, K)[0]  # first: compressed-tensors decompresses on the first forward
    ours, sd = load_file(dump), model.state_dict()
    same = sum(1 for n in ours if n in sd and torch.equal(sd[n].float(), ours[n]))
    return ppl, qc, (same, len(ours))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--doneshot", required=True)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--windows", type=int, default=40, help="eval windows (0: the whole text)")
    ap.add_argument("--np", type=int, default=1)
    ap.add_argument("--mpirun", default="mpirun --oversubscribe")
    ap.add_argument("--reuse", action="store_true", help="reuse existing checkpoints in --workdir")
    ap.add_argument("--variants", default="sq,plain,rtn,rtn-plain")
    ap.add_argument("--fixtures", default=None, help="tests/fixtures.py output: also the Qwen2 SmoothQuant check")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    a.doneshot = os.path.abspath(a.doneshot)
    work = a.workdir or tempfile.mkdtemp(prefix="ds-w8a8-")
    os.makedirs(work, exist_ok=True)
    rows = P.calibration_rows(N_ROWS, MAX_LEN, SEED)
    calib = os.path.join(work, "calib.jsonl")
    with open(calib, "w") as f:
        for r in rows:
            f.write(json.dumps({"input_ids": r}) + "\n")
    text = wikitext_lf(work)
    result = {"calib_rows": len(rows), "calib_tokens": sum(map(len, rows)), "text": os.path.basename(text)}
    e_fp = P.ds_eval(a, FP, text)
    result["ppl_fp"] = e_fp["ppl"]
    for variant in a.variants.split(","):
        ds_q, lc_q = os.path.join(work, "doneshot-" + variant), os.path.join(work, "llmcompressor-" + variant)
        if not (a.reuse and os.path.exists(os.path.join(ds_q, "model.safetensors"))):
            cmd = (shlex.split(a.mpirun) + ["-np", str(a.np)]) if a.np > 1 else []
            data = [] if variant == "rtn-plain" else ["--dataset", calib, "--num-samples", str(len(rows)),
                                                      "--max-seq-len", str(MAX_LEN)]
            P.run(cmd + [a.doneshot, "--recipe", VARIANTS[variant], "--model", FP] + data +
                  ["--output", ds_q, "--overwrite", "-q"])
        if not (a.reuse and os.path.exists(os.path.join(lc_q, "model.safetensors"))):
            run_llmcompressor(rows, variant, lc_q)
        agree, ws, wn = compare(a, variant, load_tensors(ds_q), load_tensors(lc_q))
        e_ds, e_lc = P.ds_eval(a, ds_q, text), P.ds_eval(a, lc_q, text)
        rel = abs(e_ds["ppl"] - e_lc["ppl"]) / e_lc["ppl"]
        check(rel <= 5e-3, "%s: ppl on %s (%d windows of %d): fp32 %.4f, doneshot W8A8 %.4f, llm-compressor "
              "%.4f (rel diff %.2e; target <= 5e-3)" % (variant, os.path.basename(text), e_ds["windows"],
                                                       e_ds["seq_len"], e_fp["ppl"], e_ds["ppl"], e_lc["ppl"], rel))
        hf, qc, (same, nw) = transformers_ppl(a, ds_q, text)
        check(same == nw == 35, "%s: compressed-tensors' dequantized Linear weights bitwise == doneshot eval's "
              "(%d of %d)" % (variant, same, nw))
        g = qc.get("config_groups", {}).get("group_0", {})
        ia = g.get("input_activations") or {}
        check(qc.get("format") == "int-quantized" and g.get("format") == "int-quantized" and
              ia.get("dynamic") is True and ia.get("strategy") == "token" and ia.get("num_bits") == 8 and
              ia.get("type") == "int" and ia.get("symmetric") is True,
              "%s: quantization_config int-quantized, input_activations int8 dynamic per-token symmetric" % variant)
        keys = ("format", "quant_method", "quantization_status", "config_groups", "ignore")
        qlc = json.load(open(os.path.join(lc_q, "config.json")))["quantization_config"]
        diff = [k for k in keys if qc.get(k) != qlc.get(k)]
        check(not diff, "%s: quantization_config %s equal to llm-compressor's%s" % (
            variant, "/".join(keys), "" if not diff else ": differ in %s (%s vs %s)" % (
                diff, json.dumps(qc.get(diff[0]))[:300], json.dumps(qlc.get(diff[0]))[:300])))
        rel_hf = abs(hf - e_ds["ppl"]) / hf
        check(rel_hf <= 5e-3, "%s: transformers + compressed-tensors ppl %.8f vs doneshot eval %.8f (rel diff "
              "%.2e; target <= 5e-3: dynamic activation rounding, see the docstring)" % (variant, hf, e_ds["ppl"],
                                                                                       rel_hf))
        result[variant] = {"code_agreement": agree, "max_scale_rel_diff": ws, "max_norm_rel_diff": wn,
                           "ppl_doneshot": e_ds["ppl"], "ppl_llmcompressor": e_lc["ppl"], "ppl_rel_diff": rel,
                           "ppl_transformers": hf, "transformers_rel_diff": rel_hf}
    if a.fixtures:
        result["qwen2_sq_norm_rel_diff"] = qwen2_norms(a, work, rows)
    result["custom_sq_norm_rel_diff"] = custom_mappings(a, work, rows)
    print("RESULT " + json.dumps(result))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
