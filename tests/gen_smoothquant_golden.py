#!/usr/bin/env python3
"""Generate tests/golden/smoothquant/*.safetensors from the REAL llm-compressor
SmoothQuantModifier (not run in CI; documents how the files were made). Made
with: llmcompressor 0.14.0.1, compressed-tensors 0.19.0, torch 2.14.0 (CPU).

    ~/.cache/doneshot/venv/bin/python tests/gen_smoothquant_golden.py [outdir]

Per case <name>.safetensors: a norm (weight g [C]) feeding NB Linears
(weights w0..w<NB-1> [out_b, C]); the channel min/max of the norm output
(mn, mx [C]); llm-compressor's _apply_smoothing with smoothing_strength /
algorithm from the metadata gives the smoothed g_out, w<b>_out. Inputs in the
model dtype (metadata dtype). Column 3 of every W is zero (weight scale 0 ->
the activation range), channel 5 has a tiny range (-> the 1e-5 clamp).
"""
import os
import sys

import torch
from llmcompressor.modifiers.transform.smoothquant.base import (
    SmoothQuantMapping,
    SmoothQuantModifier,
    SmoothQuantScale,
)
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "golden", "smoothquant")


class Norm(torch.nn.Module):
    def __init__(self, g):
        super().__init__()
        self.weight = torch.nn.Parameter(g.clone(), requires_grad=False)


def case(name, dtype, alpha, algorithm, C=24, outs=(16, 8, 8), seed=0):
    gen = torch.Generator().manual_seed(seed)
    g = (torch.rand(C, generator=gen) * 2 + 0.1).to(dtype)
    ws = []
    for o in outs:
        w = (torch.randn(o, C, generator=gen) * 0.1)
        w[:, 3] = 0
        w[:, 7] *= 30  # an outlier column
        ws.append(w.to(dtype))
    x = torch.randn(200, C, generator=gen) * 2
    x[:, 9] *= 40  # an activation outlier channel
    x[:, 5] = 1e-7
    x = x.to(dtype)
    mn, mx = x.min(dim=0)[0], x.max(dim=0)[0]
    norm = Norm(g)
    lins = []
    for w in ws:
        lin = torch.nn.Linear(C, w.shape[0], bias=False, dtype=dtype)
        lin.weight.data.copy_(w)
        lin.weight.requires_grad_(False)
        lins.append(lin)
    model = torch.nn.ModuleList([norm] + lins)
    m = SmoothQuantModifier(smoothing_strength=alpha, algorithm=algorithm)
    m.resolved_mappings_ = [SmoothQuantMapping("norm", norm, lins)]
    m.scales_ = {"norm": SmoothQuantScale(min_channel_vals=mn.clone(), max_channel_vals=mx.clone())}
    m._apply_smoothing(model)
    t = {"g": g, "mn": mn, "mx": mx, "g_out": norm.weight.data.clone()}
    for b, (w, lin) in enumerate(zip(ws, lins)):
        t["w%d" % b] = w
        t["w%d_out" % b] = lin.weight.data.clone()
    meta = {"alpha": repr(alpha), "algorithm": algorithm, "nb": str(len(ws)),
            "dtype": {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}[dtype]}
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, name + ".safetensors"), metadata=meta)


def main():
    os.makedirs(OUT, exist_ok=True)
    case("f32_a08", torch.float32, 0.8, "smoothquant")
    case("f32_a05", torch.float32, 0.5, "smoothquant", seed=1)
    case("bf16_a08", torch.bfloat16, 0.8, "smoothquant", seed=2)
    case("f16_a065", torch.float16, 0.65, "smoothquant", outs=(12, 12), seed=3)
    case("f32_logeq", torch.float32, 0.5, "log_equalization", seed=4)
    case("bf16_logeq", torch.bfloat16, 0.5, "log_equalization", seed=5)


if __name__ == "__main__":
    main()
