#!/usr/bin/env python3
"""Interop: FP8_BLOCK checkpoints through transformers + compressed-tensors.

The bundled stories260K is 64 wide, and FP8_BLOCK's dynamic activation groups
of 128 cannot be reshaped there by compressed-tensors' forward (parity_fp8.py
skips its transformers half for FP8_BLOCK). Here a small random Llama whose
Linear inputs are multiples of 128 (gen_model: hidden 128, intermediate 256,
4 heads of 32, 2 kv heads: k/v_proj have 64 outputs, a partial 128x128 weight
block) is quantized by doneshot with FP8_BLOCK (GPTQModifier and
QuantizationModifier), then:

  * transformers loads the checkpoint without warnings;
  * the weights compressed-tensors decompresses are bitwise doneshot's
    dequantization (`doneshot eval --dump-weights`);
  * transformers' perplexity (dynamic per-group-128 fp8 activation fake quant
    applied by compressed-tensors) equals `doneshot eval`'s within --ppl-rtol
    (default 1e-3, as parity_fp8.py), and the same model with the activation
    quantization disabled is further from it (the comparison sees the
    activation quantization; measured rel 1.6e-5 (GPTQ) / 2.4e-4 (QM) with
    it, 1.4e-3 / 3.5e-3 without).

Prints "ok"/"FAIL" lines and "RESULT {...}"; exit 1 if a target is missed.
Usage: check_fp8_block.py --doneshot build/doneshot [--gen-model build/gen_model]
       [--workdir DIR] [--seq-len 128] [--windows 16]
"""
import argparse
import json
import os
import shlex
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from check_transformers import hf_ppl, load_quiet  # noqa: E402
from parity_llmcompressor import FAILS, check, run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
TEXT = os.path.join(ROOT, "data", "tinystories_sample.txt")
MODS = {"GPTQ": "GPTQModifier", "QM": "QuantizationModifier"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--doneshot", required=True)
    ap.add_argument("--gen-model", default=None, help="default: gen_model next to --doneshot")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--np", type=int, default=1)
    ap.add_argument("--mpirun", default="mpirun --oversubscribe")
    ap.add_argument("--ppl-rtol", type=float, default=1e-3)
    a = ap.parse_args()
    a.doneshot = os.path.abspath(a.doneshot)
    gen = os.path.abspath(a.gen_model or os.path.join(os.path.dirname(a.doneshot), "gen_model"))
    work = a.workdir or tempfile.mkdtemp(prefix="ds-fp8-block-")
    os.makedirs(work, exist_ok=True)
    import torch
    import compressed_tensors.quantization as cq
    from safetensors.torch import load_file
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    fp = os.path.join(work, "llama128")
    run([gen, "--out", fp, "--hidden", "128", "--intermediate", "256", "--layers", "2", "--heads", "4",
         "--kv-heads", "2", "--head-dim", "32", "--vocab", "512", "--dtype", "f32", "--tokenizer-from",
         os.path.join(ROOT, "data", "stories260K"), "--bos", "1", "--eos", "2", "--seed", "3"])
    ids = [int(x) for x in run([a.doneshot, "tokenize", "--model", fp, "--input", TEXT]).split()]
    T, K = a.seq_len, min(a.windows, len(ids) // a.seq_len)
    result = {"seq_len": T, "windows": K}
    mpi = (shlex.split(a.mpirun) + ["-np", str(a.np)]) if a.np > 1 else []
    for mod in ("GPTQ", "QM"):
        tag = "FP8_BLOCK %s" % MODS[mod]
        recipe, q = os.path.join(work, "fp8_block-%s.json" % mod), os.path.join(work, "q-%s" % mod)
        with open(recipe, "w") as f:
            json.dump({"modifiers": [{MODS[mod]: {"scheme": "FP8_BLOCK", "targets": ["Linear"],
                                                  "ignore": ["lm_head"]}}]}, f)
        run(mpi + [a.doneshot, "--recipe", recipe, "--model", fp, "--dataset", TEXT, "--num-samples", "16",
                   "--max-seq-len", "128", "--output", q, "--overwrite", "-q"])
        e = json.loads(run([a.doneshot, "eval", "--model", q, "--dataset", TEXT, "--seq-len", str(T),
                            "--max-windows", str(K), "--json", "-q"]))
        model, msgs = load_quiet(q)
        model.eval()
        check(not msgs, "%s: transformers loads doneshot's checkpoint without warnings%s"
              % (tag, "" if not msgs else ": " + " | ".join(msgs)[:1000]))
        # the first forward decompresses the fp8 weights (as in parity_fp8.py: ppl, then weights)
        ppl_hf, _ = hf_ppl(model, ids, T, K)
        rel = abs(e["ppl"] - ppl_hf) / ppl_hf
        check(e["windows"] == K and rel <= a.ppl_rtol, "%s: transformers ppl %.9f vs doneshot eval %.9f "
              "(rel %.2e; target <= %.0e)" % (tag, ppl_hf, e["ppl"], rel, a.ppl_rtol))
        dump = os.path.join(work, "dequant-%s.safetensors" % mod)
        run([a.doneshot, "eval", "--model", q, "--dump-weights", dump, "-q"])
        ours, sd = load_file(dump), model.state_dict()
        bad = [n for n in ours if n not in sd or not torch.equal(sd[n].float(), ours[n])]
        check(len(ours) == 14 and not bad, "%s: compressed-tensors' dequantized weights == doneshot's, bitwise "
              "(%d of %d differ)" % (tag, len(bad), len(ours)))
        model.apply(cq.disable_quantization)
        ppl_off, _ = hf_ppl(model, ids, T, K)
        rel_off = abs(e["ppl"] - ppl_off) / ppl_off
        check(rel_off > rel, "%s: without the activation quantization transformers is further from doneshot "
              "eval (rel %.2e > %.2e)" % (tag, rel_off, rel))
        result[mod] = {"ppl_doneshot": e["ppl"], "ppl_transformers": ppl_hf, "rel": rel,
                       "ppl_transformers_no_act_quant": ppl_off, "rel_no_act_quant": rel_off}
    print("RESULT " + json.dumps(result))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
