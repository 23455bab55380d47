#!/usr/bin/env python3
"""tests/fixtures.py DIR - materialize the test fixtures under DIR (stdlib only).

DIR mirrors the layout the goldens were made from (../shared of the project's
development machines), so a golden path "../shared/X" is read as "DIR/X":
  models/stories260K/              copy of data/stories260K (F32)
  models/stories260K-bf16/         the same weights rounded to BF16 (round to
                                   nearest even), torch_dtype bfloat16
  models/stories260K-sharded/      the same F32 tensors in 3 shards + index
  models/variants/mistral/         the same tensors declared MistralForCausalLM
  models/variants/qwen2/           Qwen2ForCausalLM: + q/k/v biases, all zero
  models/variants/mixtral-4x-top2/ MixtralForCausalLM, 4 experts, top-2: every
                                   expert a copy of the layer's MLP, routers
                                   N(0, 0.03) from a fixed seed
  tokenizers/NAME/                 tests/data/tokenizers/NAME decompressed
                                   (tokenizer.json.xz); qwen2.5, qwen3 and
                                   llama3's tokenizer.llama3.1.json are the
                                   qwen2 / llama3 file with their own
                                   added_tokens block spliced in; every
                                   tokenizer.json is checked against the
                                   SHA-256 of the file the goldens were made
                                   from
Built in DIR.tmp.PID and renamed to DIR when complete; an existing complete
DIR (DIR/.complete holds VERSION) is left alone. Run from the repo root.
Exit 0 ok, 1 on any error (message on stderr).
"""
import array
import json
import lzma
import os
import random
import shutil
import struct
import sys

VERSION = "1"
SRC_MODEL = "data/stories260K"
TOK_DATA = "tests/data/tokenizers"

# SHA-256 of the tokenizer files tests/golden/tokenizer was generated from.
TOKENIZERS = {
    "gpt2/tokenizer.json": "a6aa29bf8416d74ad795a73262b1aa3f985564ee338adbee7ffbc5861f78b6b8",
    "llama2/tokenizer.json": "2c341bce84833ba331e10ff053cdbd05c591a02325f96ebe4f7bf1938ea6a24e",
    "llama3/tokenizer.json": "e134af98b985517b4f068e3755ae90d4e9cd2d45d328325dc503f1c6b2d06cc7",
    "llama3/tokenizer.llama3.1.json": "79e3e522635f3171300913bb421464a87de6222182a0570b9b2ccba2a964b2b4",
    "mistral-7b-v0.1/tokenizer.json": "ce94e23dba98ebddd7004d1758882d7a7d2bbe027f5fe859832a9631d71f9287",
    "phi-3-mini/tokenizer.json": "9e2ae3d66819f163cdcfedba5078f3a3af8118c2712491ed60912f77886bda6f",
    "qwen2/tokenizer.json": "a12e3ba5d5e0ad173cf7b408ab8534c6be8cbc6a146714e9c7dc8cf2346603b1",
    "qwen2.5/tokenizer.json": "a8506e7111b80c6d8635951a02eab0f4e1a8e4e5772da83846579e97b16f61bf",
    "qwen3/tokenizer.json": "baf4233a05cc80d36da049c8c40877aa3b37dab8c9bc156c928f7b2ef5575305",
}
# derived file -> (base file, added_tokens block)
SPLICED = {
    "qwen2.5/tokenizer.json": ("qwen2/tokenizer.json", "qwen2.5/tokenizer.json.added_tokens"),
    "qwen3/tokenizer.json": ("qwen2/tokenizer.json", "qwen3/tokenizer.json.added_tokens"),
    "llama3/tokenizer.llama3.1.json": ("llama3/tokenizer.json", "llama3/tokenizer.llama3.1.json.added_tokens"),
}


# ---- safetensors (little-endian, header padded with spaces to 8 bytes) ----
def st_read(path):
    buf = open(path, "rb").read()
    (n,) = struct.unpack_from("<Q", buf, 0)
    hdr = json.loads(buf[8:8 + n])
    hdr.pop("__metadata__", None)
    base = 8 + n
    return [(k, m["dtype"], m["shape"], buf[base + m["data_offsets"][0]:base + m["data_offsets"][1]])
            for k, m in hdr.items()]


def st_write(path, tensors):
    hdr, off = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape, data in tensors:
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for t in tensors:
            f.write(t[3])


def f32_to_bf16(data):
    """F32 bytes -> BF16 bytes, round to nearest even (NaN kept quiet)."""
    u = array.array("I")
    u.frombytes(data)
    out = array.array("H", bytes(2 * len(u)))
    for i, x in enumerate(u):
        if (x & 0x7FFFFFFF) > 0x7F800000:
            out[i] = (x >> 16) | 0x40
        else:
            out[i] = ((x + 0x7FFF + ((x >> 16) & 1)) >> 16) & 0xFFFF
    return out.tobytes()


def f32_bytes(values):
    return array.array("f", values).tobytes()


def write_model(d, config, tensors, shards=1):
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    for n in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(SRC_MODEL, n), os.path.join(d, n))
    if shards == 1:
        st_write(os.path.join(d, "model.safetensors"), tensors)
        return
    total = sum(len(t[3]) for t in tensors)
    per, groups, cur, size = total / shards, [], [], 0
    for t in tensors:
        if cur and size + len(t[3]) / 2 > per * (len(groups) + 1) and len(groups) < shards - 1:
            groups.append(cur)
            cur = []
        cur.append(t)
        size += len(t[3])
    groups.append(cur)
    wmap = {}
    for i, g in enumerate(groups):
        fn = "model-%05d-of-%05d.safetensors" % (i + 1, len(groups))
        st_write(os.path.join(d, fn), g)
        wmap.update({t[0]: fn for t in g})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=2)
        f.write("\n")


def models(root):
    cfg = json.load(open(os.path.join(SRC_MODEL, "config.json")))
    tens = st_read(os.path.join(SRC_MODEL, "model.safetensors"))
    assert all(t[1] == "F32" for t in tens), "data/stories260K is expected in F32"
    m = os.path.join(root, "models")
    shutil.copytree(SRC_MODEL, os.path.join(m, "stories260K"))

    write_model(os.path.join(m, "stories260K-bf16"), dict(cfg, torch_dtype="bfloat16"),
                [(n, "BF16", s, f32_to_bf16(d)) for n, _, s, d in tens])
    write_model(os.path.join(m, "stories260K-sharded"), cfg, tens, shards=3)

    base = {k: v for k, v in cfg.items() if k not in ("attention_bias", "mlp_bias", "pretraining_tp")}
    write_model(os.path.join(m, "variants", "mistral"),
                dict(base, architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=None), tens)

    qw, H = [], cfg["hidden_size"]
    for n, dt, s, d in tens:
        qw.append((n, dt, s, d))
        for p in ("q_proj", "k_proj", "v_proj"):
            if n.endswith("self_attn.%s.weight" % p):
                qw.append((n[:-len("weight")] + "bias", "F32", [s[0]], bytes(4 * s[0])))
    qcfg = {k: v for k, v in base.items() if k != "head_dim"}
    qcfg.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False,
                sliding_window=None, max_window_layers=cfg["num_hidden_layers"])
    write_model(os.path.join(m, "variants", "qwen2"), qcfg, qw)

    E, rng, mx = 4, random.Random(20260101), []
    by = {n: (dt, s, d) for n, dt, s, d in tens}
    for n, dt, s, d in tens:
        if ".mlp." not in n:
            mx.append((n, dt, s, d))
            continue
        if not n.endswith("mlp.gate_proj.weight"):
            continue
        pre = n[:-len("mlp.gate_proj.weight")]
        mx.append((pre + "block_sparse_moe.gate.weight", "F32", [E, H],
                   f32_bytes(rng.gauss(0.0, 0.03) for _ in range(E * H))))
        for e in range(E):
            for w, src in (("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")):
                t = by[pre + "mlp.%s.weight" % src]
                mx.append((pre + "block_sparse_moe.experts.%d.%s.weight" % (e, w), t[0], t[1], t[2]))
    write_model(os.path.join(m, "variants", "mixtral-4x-top2"),
                dict(base, architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=E,
                     num_experts_per_tok=2, router_aux_loss_coef=0.02, output_router_logits=False,
                     sliding_window=None), mx)


def splice(base, block):
    key = b'"added_tokens": '
    i, j = base.index(key) + len(key), base.index(b'"normalizer"')
    return base[:i] + block + base[j:]


def tokenizers(root):
    import hashlib
    t = os.path.join(root, "tokenizers")
    for dirpath, _, files in os.walk(TOK_DATA):
        rel = os.path.relpath(dirpath, TOK_DATA)
        os.makedirs(os.path.join(t, rel), exist_ok=True)
        for fn in files:
            src, dst = os.path.join(dirpath, fn), os.path.join(t, rel, fn)
            if fn.endswith(".xz"):
                with lzma.open(src) as f, open(dst[:-3], "wb") as g:
                    shutil.copyfileobj(f, g)
            elif not fn.endswith(".added_tokens"):
                shutil.copyfile(src, dst)
    for name, (base, block) in SPLICED.items():
        data = splice(open(os.path.join(t, base), "rb").read(), open(os.path.join(TOK_DATA, block), "rb").read())
        open(os.path.join(t, name), "wb").write(data)
    for name, want in TOKENIZERS.items():
        got = hashlib.sha256(open(os.path.join(t, name), "rb").read()).hexdigest()
        if got != want:
            raise RuntimeError("%s: SHA-256 %s, expected %s (the file the goldens were made from)" % (name, got, want))


def main():
    if len(sys.argv) != 2:
        sys.stderr.write("usage: python3 tests/fixtures.py DIR   (run from the repo root)\n")
        return 2
    root = sys.argv[1].rstrip("/")
    stamp = os.path.join(root, ".complete")
    if os.path.isfile(stamp) and open(stamp).read().strip() == VERSION:
        return 0
    tmp = "%s.tmp.%d" % (root, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        models(tmp)
        tokenizers(tmp)
        with open(os.path.join(tmp, ".complete"), "w") as f:
            f.write(VERSION + "\n")
        if os.path.isdir(root) and not os.path.isfile(stamp):
            shutil.rmtree(root)
        elif os.path.isdir(root):  # an older version, or made meanwhile by another run
            if open(stamp).read().strip() == VERSION:
                shutil.rmtree(tmp)
                return 0
            shutil.rmtree(root)
        os.makedirs(os.path.dirname(os.path.abspath(root)), exist_ok=True)
        os.rename(tmp, root)
    except Exception as e:  # noqa: BLE001 - report any failure, leave nothing half-made
        shutil.rmtree(tmp, ignore_errors=True)
        sys.stderr.write("tests/fixtures.py: %s\n" % e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
