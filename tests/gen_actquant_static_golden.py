#!/usr/bin/env python3
"""Generate tests/golden/actquant_static/*.safetensors from the REAL
llm-compressor observer and compressed-tensors qparams / fake-quant of static
int8 per-tensor input activations (not run in CI; documents how the files
were made). Made with: llm-compressor 0.14.0.1, compressed-tensors 0.19.0,
torch 2.14.0 (CPU).

    ~/.cache/doneshot/venv/bin/python tests/gen_actquant_static_golden.py [outdir]

Args: QuantizationArgs(num_bits=8, type="int", strategy="tensor",
symmetric=True, dynamic=False) (recipes/w8a8-static.json's
input_activations). Per case <dtype>.safetensors (values in that dtype):
  calib [3, 17, 96]: three calibration batches; the static_minmax observer
        (llmcompressor.observers StaticMinMaxObserver, base_name "input")
        sees them one by one (running min and max);
  scale [1]: calculate_qparams of its min/max (max(|min|, |max|) / 127.5),
        the module's input_scale;
  x [40, 96], y [40, 96]: forward_quantize(module, x, "input", args) with
        that input_scale, as transformers applies it to a loaded checkpoint.
Batch 1 holds the largest |x| (-300: negative), x row 0 is zeros, row 1 runs
past the clamp on both sides, row 2 holds exact .5 ties of the scale.
"""
import os
import sys

import torch
from compressed_tensors.quantization import QuantizationArgs, QuantizationStatus
from compressed_tensors.quantization.lifecycle.forward import forward_quantize
from llmcompressor.observers import Observer
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "golden", "actquant_static")
ARGS = dict(num_bits=8, type="int", strategy="tensor", symmetric=True, dynamic=False)


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, dt in (("f32", torch.float32), ("bf16", torch.bfloat16), ("f16", torch.float16)):
        g = torch.Generator().manual_seed(11)
        calib = torch.randn(3, 17, 96, generator=g) * 3
        calib[1, 4, 7] = -300.0
        calib[2, 0, 0] = 250.0
        calib = calib.to(dt)
        args = QuantizationArgs(**ARGS)
        obs = Observer.load_from_registry("static_minmax", base_name="input", args=args)
        for b in range(calib.shape[0]):
            obs(calib[b:b + 1])
        scale = obs.get_qparams()["scale"].reshape(1)
        assert scale.dtype == dt
        lin = torch.nn.Linear(4, 4)
        lin.quantization_status = QuantizationStatus.COMPRESSED  # as after a compressed load
        lin.input_scale = torch.nn.Parameter(scale.clone(), requires_grad=False)
        x = torch.randn(40, 96, generator=g) * 40
        x[0] = 0
        x[1] = torch.linspace(-400, 400, 96)
        x[2] = (torch.arange(96) - 48.0) * 0.5 * scale.float()  # k/2 * scale: ties at odd k
        x = x.to(dt)
        y = forward_quantize(lin, x[None], "input", args)[0]
        save_file({"calib": calib.contiguous(), "scale": scale.contiguous(), "x": x.contiguous(),
                   "y": y.contiguous()}, os.path.join(OUT, name + ".safetensors"), metadata={"dtype": name})


if __name__ == "__main__":
    main()
