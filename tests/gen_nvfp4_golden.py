#!/usr/bin/env python3
"""Generate the NVFP4 goldens in tests/golden/nvfp4/ from the REAL
compressed-tensors and llm-compressor (not run in CI; documents how the files
were made). Made with: llmcompressor 0.14.0.1, compressed-tensors 0.19.0,
torch 2.14.0 (CPU), safetensors 0.8.0.

    ~/.cache/doneshot/venv/bin/python tests/gen_nvfp4_golden.py [outdir]

cast.safetensors
  gp_x_<dtype> / gp_y_<dtype>: absmax values (model dtype) and their
  generate_gparam (F32), for f32, bf16, f16;
  fp4_x (F32 [n]): ties, bucket edges, +-0, saturation, random;
  fp4_y: round_to_quantized_type_args(x, NVFP4 weights args) (clamp +-6 then
  cast_to_fp4); fp4_packed (U8 [1, n/2]): pack_fp4_to_uint8(fp4_y);
  fp4_unpacked (BF16 [1, n]): unpack_fp4_from_uint8(fp4_packed).
  fp8_x (F32 [m]): normals, subnormals, subnormal ties, values near and past
  448; fp8_y: round_to_quantized_type_dtype(x, float8_e4m3fn).
w_<dtype>.safetensors (dtype f32, bf16, f16) - RTN of one weight [out, 64]:
  W (model dtype) with a zero group, a group of tiny values (subnormal e4m3fn
  scales), a group of 5 * 2^k values (fp4 ties), an outlier;
  scale (F32 [out, 4]) and gs (F32 [1]) from llm-compressor's
  memoryless_minmax Observer.get_qparams (generate_gparam, calculate_qparams);
  deq (model dtype): fake_quantize(W, scale, gs) (the forward's QDQ);
  packed (U8 [out, 32]) / scale_f8 (F8_E4M3 [out, 4]): NVFP4PackedCompressor
  .compress of deq (the checkpoint); dec (model dtype): its decompress,
  cast to the model dtype as a loaded model holds it.
fused.safetensors - q/k/v weights [8|4|4, 32] linked by FusionHandler.fuse
  (fuse_weight_observers' rule): q_W, k_W, v_W, gs (the one shared global
  scale), q_scale, k_scale, v_scale.
act_<dtype>.safetensors - NVFP4 input activations ("local" dynamic):
  calib (model dtype [3, 4, 32]): the static_minmax observer's data, gs
  (F32 [1]) its input_global_scale; x (model dtype [2, 5, 32], larger than
  the calibration data so some fp8 group scales saturate at 448, with a zero
  group); y: forward_quantize(module, x, "input", args) (per-group-16 scales
  from x with the static gs, QDQ, back to the model dtype).
gptq_<name>.safetensors - llm-compressor's quantize_weight with NVFP4 weights
  (tensor_group 16, the observer's scale and global_scale) on a layer of
  tests/gen_gptq_golden.py's make_layer: W (model dtype [out, in]), Hu (F32,
  upper triangle of the normalized Hessian, row by row), gs (F32 [1]), scale
  (F32 [out, in/16]), wq (model dtype: the GPTQ weight), packed (U8: the
  compressor's codes of wq), loss (F64 [1]); metadata actorder, dtype,
  block_size, dampening_frac.
"""
import os
import sys

import torch
from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8, unpack_fp4_from_uint8
from compressed_tensors.quantization import QuantizationScheme, QuantizationStatus
from compressed_tensors.quantization.lifecycle.forward import fake_quantize, forward_quantize
from compressed_tensors.quantization.quant_args import round_to_quantized_type_args, round_to_quantized_type_dtype
from compressed_tensors.quantization.quant_scheme import NVFP4
from compressed_tensors.quantization.utils import calculate_range, generate_gparam
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
from llmcompressor.observers import Observer
from llmcompressor.observers.fusion import FusionHandler
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "golden", "nvfp4")
WARGS = NVFP4["weights"]
AARGS = NVFP4["input_activations"]
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def cast_case():
    g = torch.Generator().manual_seed(1)
    edges = [0.0, -0.0, 0.1, 0.25, 0.2500001, 0.26, 0.5, 0.74, 0.75, 0.76, 1.0, 1.25, 1.26, 1.5, 1.74,
             1.75, 1.76, 2.0, 2.49, 2.5, 2.51, 3.0, 3.49, 3.5, 3.51, 4.0, 4.99, 5.0, 5.01, 5.5, 6.0, 6.01,
             7.0, 100.0, 1e30, float("inf")]
    x = torch.tensor(edges + [-e for e in edges], dtype=torch.float32)
    x = torch.cat([x, torch.randn(256, generator=g) * 3, torch.rand(256, generator=g) * 14 - 7])
    if x.numel() % 2:
        x = torch.cat([x, torch.tensor([0.3])])
    qmin, qmax = calculate_range(WARGS, "cpu")
    y = round_to_quantized_type_args(x.clone(), WARGS, qmin, qmax)
    packed = pack_fp4_to_uint8(y.reshape(1, -1))
    unpacked = unpack_fp4_from_uint8(packed, 1, x.numel())
    sub = 2.0 ** -9
    f8 = [0.0, sub, sub / 2, sub * 0.5000001, sub * 1.5, sub * 2.5, sub * 3.5, sub * 7, sub * 7.5, 2.0 ** -6,
          2.0 ** -6 * 1.0625, 2.0 ** -6 * 1.1875, 1.0, 1.0625, 1.1875, 1.125, 240.0, 248.0, 440.0, 447.0,
          448.0, 449.0, 463.0, 464.0, 480.0, 1e6, 2.0 ** -12, 3e-3, 0.013]
    xf8 = torch.tensor(f8 + [-v for v in f8], dtype=torch.float32)
    xf8 = torch.cat([xf8, torch.exp(torch.rand(512, generator=g) * 20 - 12),
                     torch.rand(64, generator=g) * 2 ** -6])
    yf8 = round_to_quantized_type_dtype(xf8.clone(), torch.float8_e4m3fn)
    t = {"fp4_x": x, "fp4_y": y.contiguous(), "fp4_packed": packed.contiguous(),
         "fp4_unpacked": unpacked.contiguous(), "fp8_x": xf8, "fp8_y": yf8}
    # generate_gparam over many absmax values (Tensor.__rtruediv__ is reciprocal * scalar: 1 ulp off the
    # correctly rounded quotient for some), each dtype; +zero / tiny / NaN
    am = torch.cat([torch.exp(torch.rand(2000, generator=g) * 16 - 10), torch.tensor([0.0, 1e-30, 1.0, 448.0])])
    for n, dt in DTYPES.items():
        a = am.to(dt)
        t[f"gp_x_{n}"] = a
        t[f"gp_y_{n}"] = torch.cat([generate_gparam(-v.reshape(1), v.reshape(1)) for v in a])
    save_file(t, os.path.join(OUT, "cast.safetensors"))


def make_weight(out, inp, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g) * 0.05
    W[0, 0:16] = 0.0                                        # zero group: scale -> eps 0.125
    W[1, 16:32] = torch.randn(16, generator=g) * 1e-5      # tiny group: subnormal fp8 scale
    W[2, 32:48] = torch.tensor([5.0, -5.0, 2.5, -2.5, 1.25, 0.75, 0.25, -0.25, 3.5, 1.75, 6.0, -6.0, 0, 0.5,
                                1.5, 3.0]) * 2 ** -5       # fp4 ties after scaling
    W[3, 5] = 0.6                                           # outlier: sets the global scale
    return W.to(dtype)


def weight_case(name, dtype):
    W = make_weight(8, 64, dtype, 7)
    obs = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=WARGS.model_copy())
    obs(W)
    qp = obs.get_qparams()
    scale, gs = qp["scale"], qp["global_scale"]
    scale_param = scale.to(dtype)  # initialize_qparams: weight_scale has the observed dtype
    deq = fake_quantize(W, scale_param, None, WARGS, global_scale=gs)
    scheme = QuantizationScheme(targets=["Linear"], weights=WARGS)
    comp = NVFP4PackedCompressor.compress({"weight": deq, "weight_scale": scale_param,
                                           "weight_global_scale": gs}, scheme)
    dec = NVFP4PackedCompressor.decompress(dict(comp), scheme)["weight"].to(dtype)
    save_file({"W": W, "scale": scale.float().contiguous(), "gs": gs.float(), "deq": deq.contiguous(),
               "packed": comp["weight_packed"].contiguous(), "scale_f8": comp["weight_scale"].contiguous(),
               "dec": dec.contiguous()},
              os.path.join(OUT, f"w_{name}.safetensors"), metadata={"dtype": name})


def fused_case():
    g = torch.Generator().manual_seed(3)
    mods, obss = {}, {}
    for n, rows, amp in (("q", 8, 0.05), ("k", 4, 0.2), ("v", 4, 0.01)):
        lin = torch.nn.Linear(32, rows, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(rows, 32, generator=g) * amp)
        mods[n] = lin
        obss[n] = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=WARGS.model_copy())
    FusionHandler.fuse([(obss[n], mods[n]) for n in ("q", "k", "v")])
    out = {}
    gss = []
    for n in ("q", "k", "v"):
        obss[n](mods[n].weight)
        qp = obss[n].get_qparams()
        out[f"{n}_W"] = mods[n].weight.detach().clone()
        out[f"{n}_scale"] = qp["scale"].float().contiguous()
        gss.append(qp["global_scale"])
    assert all(torch.equal(gss[0], x) for x in gss)
    out["gs"] = gss[0].float()
    save_file(out, os.path.join(OUT, "fused.safetensors"))


def act_case(name, dtype):
    g = torch.Generator().manual_seed(11)
    calib = (torch.randn(3, 4, 32, generator=g) * 0.5).to(dtype)
    obs = Observer.load_from_registry("static_minmax", base_name="input", args=AARGS.model_copy())
    for b in range(calib.shape[0]):
        obs(calib[b:b + 1])
    gs = obs.get_qparams()["global_scale"]
    x = torch.randn(2, 5, 32, generator=g) * 0.5
    x[0, 0, :] *= 40.0      # beyond the calibrated range: fp8 scales saturate at 448
    x[1, 2, 16:32] = 0.0    # a zero group
    x[1, 3, 0:16] *= 1e-4   # tiny group
    x = x.to(dtype)
    mod = torch.nn.Linear(32, 4, bias=False).to(dtype)
    mod.register_parameter("input_global_scale", torch.nn.Parameter(gs.clone(), requires_grad=False))
    mod.quantization_status = QuantizationStatus.FROZEN
    y = forward_quantize(mod, x.clone(), "input", AARGS)
    save_file({"calib": calib.contiguous(), "gs": gs.float(), "x": x.contiguous(), "y": y.contiguous()},
              os.path.join(OUT, f"act_{name}.safetensors"), metadata={"dtype": name})


def gptq_case(name, out, inp, dtype, actorder, seed, block=128, damp=0.01):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gen_gptq_golden import make_layer
    lin, H = make_layer(out, inp, dtype, seed, dead=(3,))
    qargs = WARGS.model_copy(update={"actorder": actorder})
    obs = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=qargs)
    obs(lin.weight)
    qp = obs.get_qparams()
    scale, gs = qp["scale"], qp["global_scale"]
    W = lin.weight.detach().to(torch.float32).clone()
    wq, losses, rtn = quantize_weight(
        weights=W.unsqueeze(0).clone(), hessians=H.unsqueeze(0).clone(), scale=scale.unsqueeze(0),
        zero_point=qp["zero_point"].unsqueeze(0), global_scale=gs.unsqueeze(0), quant_args=qargs,
        blocksize=block, percdamp=damp)
    wq = wq[0].to(dtype)
    scheme = QuantizationScheme(targets=["Linear"], weights=qargs)
    comp = NVFP4PackedCompressor.compress({"weight": wq, "weight_scale": scale.to(dtype),
                                           "weight_global_scale": gs}, scheme)
    t = {"W": lin.weight.detach().contiguous(), "Hu": H[torch.triu_indices(inp, inp).unbind()].contiguous(),
         "gs": gs.float(), "scale": scale.float().contiguous(), "wq": wq.contiguous(),
         "packed": comp["weight_packed"].contiguous(), "loss": losses.to(torch.float64).reshape(1)}
    meta = {"actorder": actorder or "none", "dtype": str(dtype).replace("torch.", ""), "block_size": str(block),
            "dampening_frac": repr(damp)}
    save_file(t, os.path.join(OUT, f"gptq_{name}.safetensors"), metadata=meta)
    print(name, "loss", float(losses[0]), "rtn", bool(rtn[0]))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    cast_case()
    for n, dt in DTYPES.items():
        weight_case(n, dt)
        act_case(n, dt)
    fused_case()
    gptq_case("f32_static", 48, 96, torch.float32, "static", 5)
    gptq_case("bf16_none_block32", 32, 64, torch.bfloat16, None, 6, block=32)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
