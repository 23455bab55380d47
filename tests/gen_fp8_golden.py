#!/usr/bin/env python3
"""Goldens for doneshot's FP8 (float8_e4m3fn) scheme math (tests/test_fp8.c), from
torch 2.14 and compressed-tensors 0.19.0 (the interop venv):

  cast.safetensors   x F32 [N] (edge cases: zero/-0, subnormal boundaries and ties,
                     normal ties, 448 and beyond, NaN, random magnitudes) and
                     bits U8 [N] = torch.clamp(x, -448, 448).to(float8_e4m3fn)
                     (compressed-tensors always clamps to the finfo range first);
                     dec F32 [256] = every e4m3fn bit pattern .to(float32).
  w_<dt>_<strategy>.safetensors  (dt f32/bf16/f16; strategy tensor/channel/block)
                     W [out, in] in dt, scale (calculate_qparams of the min/max of
                     the weight / row / [4, 8] tile, as the memoryless_minmax observer),
                     fq = fake_quantize(W) (dt), codes U8 = quantize(W, dtype=fp8)
                     (the float-quantized compressor), metadata strategy/dtype/block.
  act_<dt>.safetensors  x [T, n] in dt, fq = fake_quantize with the dynamic
                     per-token scales (compute_dynamic_scales_and_zp, FP8_DYNAMIC),
                     fqs = fake_quantize with a static per-tensor scale s (FP8).

Run: ~/.cache/doneshot/venv/bin/python tests/gen_fp8_golden.py  (writes tests/golden/fp8/)
"""
import os

import torch
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import fake_quantize, quantize
from compressed_tensors.quantization.utils import calculate_qparams, compute_dynamic_scales_and_zp
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "fp8")
F8 = torch.float8_e4m3fn
DT = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def cast_golden():
    g = torch.Generator().manual_seed(1)
    sub = [m * 2.0 ** -9 for m in range(0, 9)]
    edge = [0.0, -0.0, 2.0 ** -10, 2.0 ** -10 * 1.0000001, 2.0 ** -10 * 0.9999999, 3 * 2.0 ** -10,
            5 * 2.0 ** -10, 2.0 ** -6, 2.0 ** -6 * (1 - 2 ** -5), 1.0, 1.0625, 1.1875, 1.125, 1.0624999,
            1.0625001, 15.5, 16.5, 240.0, 248.0, 256.0, 272.0, 416.0, 432.0, 440.0, 447.9, 448.0, 449.0,
            464.0, 480.0, 1e4, 1e30, float("inf"), 2.0 ** -20, 1e-30, 0.5 * 2.0 ** -9, 1.5 * 2.0 ** -9,
            2.5 * 2.0 ** -9, 7.5 * 2.0 ** -9]
    edge = edge + sub + [-v for v in edge + sub]
    rnd = torch.exp(torch.empty(4000).uniform_(-14, 7, generator=g)) * torch.sign(torch.randn(4000, generator=g))
    ties = []  # exact midpoints between neighbouring e4m3 values
    vals = torch.arange(0, 127, dtype=torch.uint8).view(F8).float()
    for a, b in zip(vals[:-1], vals[1:]):
        ties.append(float((a + b) / 2))
    x = torch.tensor(edge + ties + [-t for t in ties], dtype=torch.float32)
    x = torch.cat([x, rnd.float(), torch.tensor([float("nan")])])
    bits = torch.clamp(x, -448.0, 448.0).to(F8).view(torch.uint8)
    dec = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(F8).float()
    save_file({"x": x.contiguous(), "bits": bits.contiguous(), "dec": dec.contiguous()},
              os.path.join(OUT, "cast.safetensors"))


def tiles(W, b0, b1, fn):
    out, inn = W.shape
    r = []
    for i in range(0, out, b0):
        r.append([fn(W[i:i + b0, j:j + b1]) for j in range(0, inn, b1)])
    return torch.stack([torch.stack(row) for row in r])


def weight_golden(dtn, strategy):
    g = torch.Generator().manual_seed(sum(map(ord, dtn + strategy)))
    dt = DT[dtn]
    out, inn = 10, 20
    W = (torch.randn(out, inn, generator=g) * 0.05).to(dt)
    W[3, :] = 0  # an all-zero row (eps scale)
    W[5, 7] = 3.0  # an outlier
    kw = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": strategy}
    if strategy == "block":
        kw["block_structure"] = [4, 8]
    args = QuantizationArgs(**kw)
    if strategy == "tensor":
        mn, mx = W.amin().reshape(1), W.amax().reshape(1)
    elif strategy == "channel":
        mn, mx = W.amin(dim=1, keepdim=True), W.amax(dim=1, keepdim=True)
    else:
        mn, mx = tiles(W, 4, 8, torch.amin), tiles(W, 4, 8, torch.amax)
    scale, zp = calculate_qparams(mn, mx, args)
    fq = fake_quantize(W, scale, zp, args)
    codes = quantize(W, scale, zp, args, dtype=F8).view(torch.uint8)
    save_file({"W": W.contiguous(), "scale": scale.contiguous(), "fq": fq.contiguous(), "codes": codes.contiguous()},
              os.path.join(OUT, "w_%s_%s.safetensors" % (dtn, strategy)),
              metadata={"strategy": strategy, "dtype": dtn, "block": "4,8"})


def act_golden(dtn):
    g = torch.Generator().manual_seed(7)
    dt = DT[dtn]
    x = (torch.randn(6, 16, generator=g) * 3).to(dt)
    x[2] = 0  # an all-zero token
    x[4, 3] = 900.0  # saturates nothing: scales follow it
    dyn = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="token", dynamic=True)
    x3 = x.unsqueeze(0)  # [batch, seq, hidden] as in the model: "token" reduces the last dim only
    scale, zp = compute_dynamic_scales_and_zp(x3, dyn, module=None)
    fq = fake_quantize(x3, scale, zp, dyn)[0]
    scale = scale[0]
    st = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="tensor", dynamic=False)
    s = torch.tensor([0.0123], dtype=dt)  # a static input_scale; |x|/s > 448 saturates
    fqs = fake_quantize(x, s, torch.zeros(1, dtype=dt), st)
    save_file({"x": x.contiguous(), "fq": fq.contiguous(), "scale": scale.contiguous(),
               "s": s.contiguous(), "fqs": fqs.contiguous()},
              os.path.join(OUT, "act_%s.safetensors" % dtn), metadata={"dtype": dtn})


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    cast_golden()
    for dtn in DT:
        for strategy in ("tensor", "channel", "block"):
            weight_golden(dtn, strategy)
        act_golden(dtn)
    print("wrote", OUT)
