#!/usr/bin/env python3
"""Generate the GPTQ / quantization goldens in tests/golden/gptq/ from the REAL
llm-compressor and compressed-tensors (not run in CI; documents how the files
were made). Made with: llmcompressor 0.14.0.1, compressed-tensors 0.19.0,
torch 2.14.0 (CPU), safetensors 0.8.0.

    .venv/bin/python tests/gen_gptq_golden.py [outdir]

Per GPTQ case <name>.safetensors holds
  inputs : W (model dtype [out,in]), Hu (F32, the upper triangle of the
           normalized Hessian H [in,in] from llmcompressor's accumulate_hessian,
           row by row: H[i, i:], to keep the files small)
  outputs: wq (model dtype [out,in], quantize_weight's dequantized weight), scale
           (model dtype [out,G]), zp (I32 [out,G]), codes (I8 [out,in], via
           compressed-tensors' own quantize() of wq), packed (I32, pack_to_int32
           along dim 1), zp_packed (I32, along dim 0; asym only), loss (F64 [1]),
           rtn (I32 [1]), perm (I64 [in], the actorder permutation or arange),
           rtn_codes / rtn_wq (RTN with the same qparams: CT quantize/fake_quantize
           of W, for the qparams tests)
  metadata: num_bits, symmetric, strategy, group_size, actorder, dtype,
           block_size, dampening_frac.
pack.safetensors: random codes q<b> (I8 [5,37]) and packed p<b> for bits 1..8,
and zp-style packing along dim 0 (zq<b> I8 [37,3] -> zp<b>).
argsort.safetensors: tie-heavy vectors x<n> and torch.argsort(x, descending=True).
"""
import os
import sys

import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import fake_quantize, quantize
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
from llmcompressor.modifiers.gptq.helpers import accumulate_hessian, make_empty_hessian
from llmcompressor.observers import Observer
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "golden", "gptq")


def make_layer(out, inp, dtype, seed, dead=(), n_seq=8, seq_len=32):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(inp, out, bias=False, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_((torch.randn(out, inp, generator=g) * 0.05).to(dtype))
        # a few outliers so groups differ in range
        lin.weight[0, 3] = 0.4
        lin.weight[1, 5] = -0.5
    H = make_empty_hessian(lin)
    ns = torch.zeros((), dtype=torch.float32)
    for _ in range(n_seq):
        x = torch.randn(1, seq_len, inp, generator=g)
        # correlated columns: col 2k+1 ~ col 2k, and a shared low-rank part
        x[..., 1::2] = 0.8 * x[..., 0::2] + 0.2 * x[..., 1::2]
        x = x + torch.randn(1, seq_len, 1, generator=g) * torch.linspace(0, 2, inp)
        x[..., list(dead)] = 0
        H, ns = accumulate_hessian(x.to(dtype), lin, H, ns)
    return lin, H / ns


def run_case(name, out, inp, dtype, qa_kwargs, seed, dead=(), block=128, damp=0.01):
    lin, H = make_layer(out, inp, dtype, seed, dead)
    qargs = QuantizationArgs(**qa_kwargs)
    obs = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=qargs)
    obs(lin.weight)
    qp = obs.get_qparams()
    scale, zp = qp["scale"], qp["zero_point"]
    W = lin.weight.detach().to(torch.float32).clone()
    wq, losses, rtn = quantize_weight(
        weights=W.unsqueeze(0).clone(), hessians=H.unsqueeze(0).clone(), scale=scale.unsqueeze(0),
        zero_point=zp.unsqueeze(0), global_scale=None, quant_args=qargs, blocksize=block,
        percdamp=damp)
    wq = wq[0]
    wq_model = wq.to(dtype)
    assert torch.equal(wq_model.to(torch.float32), wq), "dequantized weight not exact in model dtype"
    zp_arg = None if qargs.symmetric else zp
    codes = quantize(wq_model, scale, zp, qargs, dtype=torch.int8)
    rtn_wq = fake_quantize(lin.weight.detach(), scale, zp_arg if zp_arg is not None else zp, qargs)
    rtn_codes = quantize(lin.weight.detach(), scale, zp, qargs, dtype=torch.int8)
    if qargs.actorder:
        perm = torch.argsort(torch.diagonal(H), descending=True)
    else:
        perm = torch.arange(inp)
    t = {
        "W": lin.weight.detach().contiguous(),
        "Hu": H[torch.triu_indices(inp, inp).unbind()].contiguous(),
        "wq": wq_model.contiguous(),
        "scale": scale.contiguous(), "zp": zp.to(torch.int32).contiguous(),
        "codes": codes.contiguous(), "packed": pack_to_int32(codes, qargs.num_bits).contiguous(),
        "loss": losses.to(torch.float64).reshape(1), "rtn": rtn.to(torch.int32).reshape(1),
        "perm": perm.to(torch.int64).contiguous(),
        "rtn_wq": rtn_wq.contiguous(), "rtn_codes": rtn_codes.contiguous(),
    }
    if not qargs.symmetric:
        t["zp_packed"] = pack_to_int32(zp.to(torch.int8), qargs.num_bits, packed_dim=0).contiguous()
    meta = {
        "num_bits": str(qargs.num_bits), "symmetric": str(int(qargs.symmetric)),
        "strategy": str(getattr(qargs.strategy, "value", qargs.strategy)), "group_size": str(qargs.group_size or -1),
        "actorder": str(getattr(qargs.actorder, "value", qargs.actorder) if qargs.actorder else "none"),
        "dtype": str(dtype).replace("torch.", ""), "block_size": str(block),
        "dampening_frac": repr(damp),
    }
    save_file(t, os.path.join(OUT, name + ".safetensors"), metadata=meta)
    print(name, "loss", float(losses[0]), "rtn", bool(rtn[0]))


def gen_pack():
    g = torch.Generator().manual_seed(7)
    t = {}
    for b in range(1, 9):
        lo, hi = -(1 << (b - 1)), (1 << (b - 1))
        q = torch.randint(lo, hi, (5, 37), generator=g, dtype=torch.int64).to(torch.int8)
        t[f"q{b}"] = q
        t[f"p{b}"] = pack_to_int32(q, b).contiguous()
        zq = torch.randint(lo, hi, (37, 3), generator=g, dtype=torch.int64).to(torch.int8)
        t[f"zq{b}"] = zq
        t[f"zp{b}"] = pack_to_int32(zq, b, packed_dim=0).contiguous()
    save_file(t, os.path.join(OUT, "pack.safetensors"))


def gen_argsort():
    g = torch.Generator().manual_seed(11)
    t = {}
    for n in (5, 16, 17, 33, 300, 4099):
        x = torch.randint(0, 6, (n,), generator=g).to(torch.float32) * 0.5
        x[::7] = 0.0
        if n > 100:
            x[3] = float("nan")
            x[n // 2] = float("inf")
        t[f"x{n}"] = x
        t[f"p{n}"] = torch.argsort(x, descending=True).to(torch.int64)
    # all-equal (worst case for median-of-3), and strictly sorted ascending
    t["x1000"] = torch.zeros(1000)
    t["p1000"] = torch.argsort(t["x1000"], descending=True)
    t["x2000"] = torch.arange(2000, dtype=torch.float32) // 3
    t["p2000"] = torch.argsort(t["x2000"], descending=True)
    save_file(t, os.path.join(OUT, "argsort.safetensors"))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    bf = torch.bfloat16
    int4g = dict(num_bits=4, type="int", symmetric=True, strategy="group", group_size=128)
    run_case("a_bf16_g128_sym_static", 32, 256, bf, {**int4g, "actorder": "static"}, 1)
    run_case("b_bf16_channel_none", 32, 128, bf,
             dict(num_bits=4, type="int", symmetric=True, strategy="channel", actorder=None), 2)
    run_case("c_bf16_g64_asym_dead", 48, 128, bf,
             dict(num_bits=4, type="int", symmetric=False, strategy="group", group_size=64,
                  actorder="static"), 3, dead=(17,))
    run_case("d_f32_g32_sym_static", 32, 128, torch.float32,
             dict(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32,
                  actorder="static"), 4)
    run_case("e_bf16_int8_g64_static", 32, 128, bf,
             dict(num_bits=8, type="int", symmetric=True, strategy="group", group_size=64,
                  actorder="static"), 5)
    run_case("f_bf16_g32_sym_none_block16", 32, 96, bf,
             dict(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32,
                  actorder=None), 6, block=16)
    run_case("g_bf16_int8_channel_asym_static", 32, 128, bf,
             dict(num_bits=8, type="int", symmetric=False, strategy="channel", actorder="static"), 8)
    gen_pack()
    gen_argsort()


if __name__ == "__main__":
    main()
