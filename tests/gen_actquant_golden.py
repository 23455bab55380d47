#!/usr/bin/env python3
"""Generate tests/golden/actquant/*.safetensors from the REAL compressed-tensors
dynamic activation fake-quant (not run in CI; documents how the files were
made). Made with: compressed-tensors 0.19.0, torch 2.14.0 (CPU).

    ~/.cache/doneshot/venv/bin/python tests/gen_actquant_golden.py [outdir]

Per case <dtype>.safetensors: x [T, n] (model dtype) and y = forward_quantize(
module, x[None], "input", W8A8's input_activations) [T, n] (int8 symmetric,
dynamic, strategy token: what a W8A8 Linear applies to its input when
transformers loads an int-quantized checkpoint). Row 0 is all zeros (scale ->
eps), row 1 has one outlier, row 2 holds exact .5 ties of the scale.
"""
import os
import sys

import torch
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import forward_quantize
from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "golden", "actquant")


def main():
    os.makedirs(OUT, exist_ok=True)
    args = PRESET_SCHEMES["W8A8"]["input_activations"]
    assert isinstance(args, QuantizationArgs) and args.dynamic is True and args.strategy == "token"
    lin = torch.nn.Linear(4, 4)
    from compressed_tensors.quantization import QuantizationStatus
    lin.quantization_status = QuantizationStatus.COMPRESSED  # as after a compressed load
    for name, dt in (("f32", torch.float32), ("bf16", torch.bfloat16), ("f16", torch.float16)):
        g = torch.Generator().manual_seed(7)
        T, n = 40, 96
        x = torch.randn(T, n, generator=g) * torch.rand(T, 1, generator=g) * 4
        x[0] = 0
        x[1, 5] = 300.0
        x[2] = torch.arange(n) - 48.0
        x[2, 0] = 127.0 * 2  # scale 2: the integers k are ties k/2 at odd k
        x = x.to(dt)
        y = forward_quantize(lin, x[None], "input", args)[0]
        save_file({"x": x.contiguous(), "y": y.contiguous()}, os.path.join(OUT, name + ".safetensors"),
                  metadata={"dtype": name})


if __name__ == "__main__":
    main()
