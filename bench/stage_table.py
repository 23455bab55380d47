#!/usr/bin/env python3
"""stage_table.py - the seed table's columns from a doneshot --summary JSON:
total time, per-stage time (max over ranks), peak GPU memory, save time, and
achieved TFLOP/s per stage against a measured GEMM peak (bench_gpu's cuBLAS
bf16 8192^3 line). Stdlib only.

FLOP model per layer (N calibration tokens, T tokens per sequence, P the
layer's Linear parameters, C hidden, F MLP width, Q = heads*head_dim):
  forward, propagate  2*N*P + 2*N*T*Q      (projections + causal attention)
  hessian             2*N*(2*U(C) + U(Q) + U(F))   (2 X^T X, upper triangle:
                      U(n) = sum over tile rows r0 = 0, 1024, .. of
                      min(1024, n-r0) * (n-r0), the products the GPU engine's
                      GEMMs compute (cuda/hessian.cu); n^2/2 + ~512 n)
  gptq                sum over modules of 2*out*in^2 + in^3 (the pipeline's
                      solve-cost model: lazy updates + Cholesky/inverse)
Usage: stage_table.py SUMMARY.json MODEL_DIR [PEAK_TFLOPS] [SEQ_LEN]
"""
import json
import os
import sys


def upper_products(n, tile=1024):
    """Products of hessian_accum_f64_cuda's tile-row GEMMs for an n-wide input
    (DS_HESS_TILE = 1024 in cuda/kernels.h): the upper triangle plus the
    diagonal tiles' lower halves."""
    return sum(min(tile, n - r0) * (n - r0) for r0 in range(0, n, tile))


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    s = json.load(open(sys.argv[1]))
    cfg = json.load(open(os.path.join(sys.argv[2], "config.json")))
    peak = float(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] else 0.0
    T = int(sys.argv[4]) if len(sys.argv) > 4 else 2048
    C, F, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    NH, NKV = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    HS = cfg.get("head_dim") or C // NH
    Q, KV = NH * HS, NKV * HS
    N = s["tokens"]
    P = C * Q + 2 * C * KV + Q * C + 3 * C * F
    fwd = L * (2.0 * N * P + 2.0 * N * T * Q)
    flops = {
        "forward": fwd,
        "propagate": fwd,
        "hessian": L * 2.0 * N * (2 * upper_products(C) + upper_products(Q) + upper_products(F)),
        "gptq": sum(2.0 * m["out_features"] * m["in_features"] ** 2 + m["in_features"] ** 3
                    for m in s["modules"]),
    }
    st = s["stage_time_s"]
    print(f"device: {s.get('device', '?')} | world size {s['world_size']} | {s['samples']} samples, {N} tokens")
    print(f"{'stage':<10} {'time s':>9} {'TFLOP':>9} {'TFLOP/s':>9} {'% peak':>8}")
    for k in ["load", "forward", "hessian", "reduce", "gptq", "broadcast", "propagate", "save"]:
        t = st.get(k, 0.0)
        if k in flops and t > 0:
            tf = flops[k] / t / 1e12
            pct = f"{100 * tf / peak:7.1f}%" if peak else "       -"
            print(f"{k:<10} {t:9.2f} {flops[k] / 1e12:9.1f} {tf:9.1f} {pct}")
        else:
            print(f"{k:<10} {t:9.2f} {'':>9} {'':>9} {'':>8}")
    print(f"total time {s['total_time_s']:.1f} s (pipeline {s['pipeline_time_s']:.1f} s) | save {s['save_time_s']:.1f} s"
          f" | peak GPU memory {s.get('peak_device_bytes', 0) / 2**30:.2f} GiB"
          f" | peak RSS {max(s['peak_rss_bytes']) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
