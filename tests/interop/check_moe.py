#!/usr/bin/env python3
"""Interop (c): transformers loads a doneshot mixture-of-experts checkpoint.

1. doneshot quantizes the 4-expert, top-2 Mixtral variant
   (../shared/models/variants/mixtral-4x-top2) with recipes/stories260k-w4a16.json
   and data/tinystories_sample.txt at -np 2 (experts spread over the ranks).
2. transformers' AutoModelForCausalLM.from_pretrained(dir) loads it through
   compressed-tensors (transformers 5 may fuse the experts at load through its
   conversion mapping); any warning during the load (missing/unexpected keys
   included) fails the test; its dequantized weights (fused experts included)
   are bitwise doneshot's own (`doneshot eval --dump-weights`; step 4).
3. HF perplexity == `doneshot eval` within 1e-3 relative on the first windows
   of the evaluation text (GPTQ protocol, as check_transformers.py).

Prints "ok ..."/"FAIL ..." lines and "RESULT {...}"; exit status 1 on failure.
Skipped (a "SKIP ..." line, counted neither passed nor failed) when the
Mixtral variant is not there.
Usage: check_moe.py --doneshot build/doneshot [--model DIR] [--text FILE]
       [--seq-len 256] [--windows 10] [--np 2] [--workdir DIR] [--mpirun "..."]
"""
import argparse
import json
import os
import shlex
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_transformers as ct  # noqa: E402  (shared helpers: run, load_quiet, hf_ppl, ...)

ROOT = ct.ROOT
FAILS = ct.FAILS
check = ct.check


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--doneshot", required=True)
    ap.add_argument("--model", default=os.path.join(ROOT, "..", "shared", "models", "variants", "mixtral-4x-top2"))
    ap.add_argument("--text", default=None, help="evaluation text (default: WikiText-2 test, LF)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--windows", type=int, default=10)
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--mpirun", default="mpirun --oversubscribe")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    a.doneshot = os.path.abspath(a.doneshot)
    if not os.path.exists(os.path.join(a.model, "config.json")):
        print("SKIP MoE interop: %s not found (not counted as passed)" % a.model)
        return 0
    work = a.workdir or tempfile.mkdtemp(prefix="ds-interop-moe-")
    os.makedirs(work, exist_ok=True)
    a.text = ct.wikitext_lf(work) if a.text is None else a.text
    import torch
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    # 1. quantize at -np 2
    q = os.path.join(work, "mixtral-4x-top2-W4A16")
    mpi = shlex.split(a.mpirun) + ["-np", str(a.np)] if a.np > 1 else []
    ct.run(mpi + [a.doneshot, "--recipe", "recipes/stories260k-w4a16.json", "--model", a.model,
                  "--dataset", "data/tinystories_sample.txt", "--output", q, "--overwrite", "-q"])
    cfg = json.load(open(os.path.join(q, "config.json")))
    qc = cfg.get("quantization_config", {})
    ign = qc.get("ignore", [])
    L = cfg["num_hidden_layers"]
    check(all("model.layers.%d.block_sparse_moe.gate" % i in ign for i in range(L)),
          "quantization_config.ignore lists every router (block_sparse_moe.gate)")

    # 2. load, no warnings (missing/unexpected keys are reported as warnings)
    model, msgs = ct.load_quiet(q)
    model.eval()
    check(not msgs, "transformers/compressed-tensors load the MoE checkpoint without warnings"
          + ("" if not msgs else ": " + " | ".join(msgs)[:2000]))
    hqc = model.config.quantization_config
    hqc = hqc.to_dict() if hasattr(hqc, "to_dict") else hqc
    check(hqc.get("quant_method") == "compressed-tensors" and hqc.get("format") == "pack-quantized",
          "quantization_config is compressed-tensors pack-quantized")
    # 3. perplexity, doneshot's ids fed to the HF model
    ids = [int(x) for x in ct.run([a.doneshot, "tokenize", "--model", q, "--input", a.text]).split()]
    T, K = a.seq_len, min(a.windows, len(ids) // a.seq_len)
    ppl_hf, _ = ct.hf_ppl(model, ids, T, K)
    ev = ct.ds_eval(a, q)
    rel = abs(ev["ppl"] - ppl_hf) / ppl_hf
    check(ev["windows"] == K and ev["seq_len"] == T, "doneshot eval used %d windows of %d" % (K, T))
    check(rel <= 1e-3, "MoE W4A16 ppl: transformers %.6f vs doneshot eval %.6f (rel diff %.2e <= 1e-3)"
          % (ppl_hf, ev["ppl"], rel))

    # 4. after the first forward (which decompressed the Linear modules), the
    # dequantized weights (experts fused by transformers: gate_up_proj[e] =
    # cat(w1, w3), down_proj[e] = w2) are bitwise doneshot's own dequantization
    from safetensors.torch import load_file
    dump = os.path.join(work, "dequant.safetensors")
    ct.run([a.doneshot, "eval", "--model", q, "--dump-weights", dump, "-q"])
    ours = load_file(dump)
    sd = model.state_dict()
    E = cfg["num_local_experts"]
    pairs = []  # (description, transformers tensor or None, doneshot tensor)
    for i in range(L):
        pre, moe = "model.layers.%d." % i, "model.layers.%d.block_sparse_moe." % i
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            pairs.append((pre + "self_attn.%s" % p, sd.get(pre + "self_attn.%s.weight" % p),
                          ours[pre + "self_attn.%s.weight" % p]))
        gu, dn = sd.get(pre + "mlp.experts.gate_up_proj"), sd.get(pre + "mlp.experts.down_proj")
        if gu is None:  # unfused layout
            for e in range(E):
                for w in ("w1", "w3", "w2"):
                    n = moe + "experts.%d.%s.weight" % (e, w)
                    pairs.append((n, sd.get(n), ours[n]))
        else:
            for e in range(E):
                pairs.append((pre + "mlp.experts.gate_up_proj[%d]" % e, gu[e], torch.cat(
                    [ours[moe + "experts.%d.w1.weight" % e], ours[moe + "experts.%d.w3.weight" % e]], 0)))
                pairs.append((pre + "mlp.experts.down_proj[%d]" % e, dn[e], ours[moe + "experts.%d.w2.weight" % e]))
    missing = [n for n, h, _ in pairs if h is None]
    bad = [n for n, h, o in pairs if h is not None and not torch.equal(h.float(), o)]
    check(not missing, "transformers holds all %d quantized weights (%d attention, %d experts x %d layers)"
          % (len(pairs), 4 * L, E, L) + ("" if not missing else " (missing %s)" % missing[:3]))
    check(not bad, "dequantized weights (experts fused) identical to doneshot's (%d/%d differ%s)"
          % (len(bad), len(pairs), "" if not bad else ": " + ", ".join(bad[:3])))

    print("RESULT " + json.dumps({
        "model": os.path.basename(os.path.normpath(a.model)), "text": os.path.basename(a.text),
        "seq_len": T, "windows": K, "ranks": a.np, "weights_identical": not bad, "ppl_w4a16_transformers": ppl_hf,
        "ppl_w4a16_doneshot": ev["ppl"], "rel_diff_w4a16": rel, "load_warnings": len(msgs)}))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
