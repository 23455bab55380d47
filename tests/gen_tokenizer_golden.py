#!/usr/bin/env python3
"""Generate tokenizer / chat-template goldens for tests/test_tokenizer.c and
tests/test_dataset.c with the real Hugging Face libraries.

  python3 -m venv .venv-tok && .venv-tok/bin/pip install tokenizers transformers jinja2
  .venv-tok/bin/python tests/gen_tokenizer_golden.py      # run from the repo root

Writes tests/golden/tokenizer/{corpus.json, <name>.json, chat.json}.
<name>.json: {"path", "add_special": [[ids] per corpus entry], "no_special":
[[ids]...], "decoded": [tokenizers.decode(no_special ids) per entry]} from
tokenizers.Tokenizer.from_file(path).encode(text, add_special_tokens=...).
llama2/tokenizer.json has three "a b" merges whose tokens contain spaces
("   "), which tokenizers refuses to load; for that file the goldens come from
a copy whose merges are written as pairs, split the way doneshot splits them
(first split point where a, b and ab are all in the vocab; spaces never reach
the model after the Replace normalizer, so the choice cannot change ids).
chat.json: transformers apply_chat_template(tokenize=False,
add_generation_prompt=False) for every tokenizer dir with a chat_template and
for the fixture templates in tests/data/chat-*/ (Llama 3, Llama 2, Mistral).
"""
import json
import os
import sys
import tempfile

import tokenizers

SHARED = "../shared"
OUT = "tests/golden/tokenizer"

TOKENIZERS = [
    ("stories260K", f"{SHARED}/models/stories260K/tokenizer.json"),
    ("gpt2", f"{SHARED}/tokenizers/gpt2/tokenizer.json"),
    ("llama2", f"{SHARED}/tokenizers/llama2/tokenizer.json"),
    ("llama3", f"{SHARED}/tokenizers/llama3/tokenizer.json"),
    ("llama3.1", f"{SHARED}/tokenizers/llama3/tokenizer.llama3.1.json"),
    ("mistral-7b-v0.1", f"{SHARED}/tokenizers/mistral-7b-v0.1/tokenizer.json"),
    ("phi-3-mini", f"{SHARED}/tokenizers/phi-3-mini/tokenizer.json"),
    ("qwen2", f"{SHARED}/tokenizers/qwen2/tokenizer.json"),
    ("qwen2.5", f"{SHARED}/tokenizers/qwen2.5/tokenizer.json"),
    ("qwen3", f"{SHARED}/tokenizers/qwen3/tokenizer.json"),
]


def excerpts(path, n, size, stride):
    text = open(path, encoding="utf-8").read()
    out = []
    for i in range(n):
        s = (i * stride) % max(1, len(text) - size)
        out.append(text[s:s + size])
    return out


def corpus():
    c = []
    c += excerpts(f"{SHARED}/data/wikitext2_test.txt", 8, 1500, 157_003)
    c.append(open(f"{SHARED}/data/wikitext2_test.txt", encoding="utf-8").read()[:3000])
    c += excerpts(f"{SHARED}/data/tinystories_sample.txt", 4, 1200, 37_001)
    c += [
        "Hello world", " Hello world", "Hello World", " ", "  ", "   ", "\t", "\n", "\n\n", "\n\n\n",
        "\t\n", "Hello\n\nworld", " \n \n", "a  b   c    d", "trailing spaces   ", "   leading",
        "333333333", "1234567890 12 123 1234", "3.14159 -42 1e-9 0x1F", "ied 4 ½ months", "Führer",
        "!!!!!!", "Cửa Việt", " discards", "don't I'm you'll we've they're she's he'd",
        "DON'T I'M YOU'LL", "'s 'S 'ſ",
        "def f(x):\n    return x**2  # square\n\n\tif x > 0:\n\t\tprint(f\"{x}\")\n",
        "int main(void) { int a[3] = {1, 2, 3}; return a[0] + a[1]; }",
        "🦙 emoji 😀👍🏽 👨‍👩‍👧 and ✨",
        "中文测试：你好，世界！日本語のテキスト。한국어 텍스트",
        "RTL: שלום עולם — مرحبا بالعالم",
        "Combining: e\u0301 a\u0308 n\u0303 \u03d2\u0301\u03d2\u0308\u017f\u0307 A\u030a",
        "Khmer: ស្វាគមន៍ Thai: สวัสดี Devanagari: नमस्ते",
        "zero\u200bwidth\u00a0nbsp\u2003emspace\u3000ideographic",
        "special <|endoftext|> inside <s> text </s> and <unk>",
        "<s>Hello</s>", "Hello <s> world", "<|begin_of_text|>Hi<|eot_id|>",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "<|user|>\nHello<|end|>\n<|assistant|>\n", "<think>\nok\n</think>\n\n",
        "line1\r\nline2\rline3\n", "tab\tseparated\tvalues\t1\t2",
        "URL: https://example.com/path?q=1&r=2#frag email@example.org",
        "Mixed CASE and snake_case and camelCase and kebab-case",
        "\u180e mongolian vowel separator", "\x01ctrl\x02chars\x7f\x1b[0m",
        "a" * 300, " " * 50 + "x", "ab" * 200,
    ]
    return c


def fixed_llama2(path):
    j = json.load(open(path, encoding="utf-8"))
    vocab = j["model"]["vocab"]
    pairs = []
    for m in j["model"]["merges"]:
        if isinstance(m, list):
            pairs.append(m)
            continue
        a, b = m.split(" ", 1)
        if a in vocab and b in vocab and a + b in vocab:
            pairs.append([a, b])
            continue
        for i, ch in enumerate(m):
            if ch == " " and i > len(a):
                x, y = m[:i], m[i + 1:]
                if x in vocab and y in vocab and x + y in vocab:
                    pairs.append([x, y])
                    break
        else:
            raise SystemExit(f"cannot split merge {m!r}")
    j["model"]["merges"] = pairs
    f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8")
    json.dump(j, f, ensure_ascii=False)
    f.close()
    return f.name


def load(path):
    try:
        return tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # llama2's space merges
        print(f"  tokenizers cannot load {path} ({e}); using pair-form merges", file=sys.stderr)
        return tokenizers.Tokenizer.from_file(fixed_llama2(path))


CHAT_CASES = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello. How can I help?"}],
    [{"role": "user", "content": "  padded question \n"}, {"role": "assistant", "content": "\nanswer one "},
     {"role": "user", "content": "second\nline"}, {"role": "assistant", "content": "two"}],
    [{"role": "user", "content": "Think first."},
     {"role": "assistant", "content": "<think>\nreasoning here\n</think>\n\nThe answer."}],
]

CHAT_DIRS = [
    (f"{SHARED}/tokenizers/qwen2", None), (f"{SHARED}/tokenizers/qwen2.5", None),
    (f"{SHARED}/tokenizers/qwen3", None), (f"{SHARED}/tokenizers/phi-3-mini", None),
    (f"{SHARED}/tokenizers/llama3", "tests/data/chat-llama3"),
    (f"{SHARED}/tokenizers/llama2", "tests/data/chat-llama2"),
    (f"{SHARED}/tokenizers/mistral-7b-v0.1", "tests/data/chat-mistral"),
]


def render(tok_dir, tpl_dir, messages):
    """transformers' apply_chat_template; falls back to its Jinja setup."""
    cfg = json.load(open(os.path.join(tpl_dir or tok_dir, "tokenizer_config.json"), encoding="utf-8"))
    tcfg = {}
    p = os.path.join(tok_dir, "tokenizer_config.json")
    if os.path.exists(p):
        tcfg = json.load(open(p, encoding="utf-8"))

    def tokstr(v):
        return v.get("content") if isinstance(v, dict) else v
    bos = tokstr(tcfg.get("bos_token", cfg.get("bos_token")))
    eos = tokstr(tcfg.get("eos_token", cfg.get("eos_token")))
    if tok_dir.endswith("llama3"):
        bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
        out, _ = render_jinja_template(conversations=[messages], chat_template=cfg["chat_template"],
                                       add_generation_prompt=False, bos_token=bos, eos_token=eos)
        return out[0]
    except ImportError:
        from transformers.utils.chat_template_utils import _compile_jinja_template
        return _compile_jinja_template(cfg["chat_template"]).render(
            messages=messages, add_generation_prompt=False, bos_token=bos, eos_token=eos)


def main():
    os.makedirs(OUT, exist_ok=True)
    texts = corpus()
    json.dump(texts, open(f"{OUT}/corpus.json", "w", encoding="utf-8"), ensure_ascii=False, indent=0)
    for name, path in TOKENIZERS:
        tok = load(path)
        g = {"path": path, "add_special": [], "no_special": [], "decoded": []}
        for t in texts:
            g["add_special"].append(tok.encode(t, add_special_tokens=True).ids)
            ids = tok.encode(t, add_special_tokens=False).ids
            g["no_special"].append(ids)
            g["decoded"].append(tok.decode(ids, skip_special_tokens=False))
        with open(f"{OUT}/{name}.json", "w", encoding="utf-8") as f:
            f.write('{"path": %s,\n' % json.dumps(path))
            for k in ("add_special", "no_special"):
                f.write('"%s": [\n%s],\n' % (k, ",\n".join(json.dumps(x, separators=(",", ":")) for x in g[k])))
            f.write('"decoded": %s}\n' % json.dumps(g["decoded"], ensure_ascii=False))
        n = sum(map(len, g["no_special"]))
        rt = sum(d == t for d, t in zip(g["decoded"], texts))
        print(f"{name}: {n} ids, decode round-trips {rt}/{len(texts)}")
    chat = []
    for tok_dir, tpl_dir in CHAT_DIRS:
        if not os.path.exists(os.path.join(tpl_dir or tok_dir, "tokenizer_config.json")):
            continue
        tok = load(os.path.join(tok_dir, "tokenizer.json"))
        for msgs in CHAT_CASES:
            try:
                r = render(tok_dir, tpl_dir, msgs)
            except Exception as e:  # template refuses (e.g. system role in Mistral)
                print(f"  {tok_dir}: template raised {e!r}; case skipped", file=sys.stderr)
                continue
            chat.append({"dir": tok_dir, "model_dir": tpl_dir, "messages": msgs, "rendered": r,
                         "ids": tok.encode(r, add_special_tokens=False).ids})
    json.dump(chat, open(f"{OUT}/chat.json", "w", encoding="utf-8"), ensure_ascii=False, indent=1)
    print(f"chat: {len(chat)} cases")


if __name__ == "__main__":
    main()
