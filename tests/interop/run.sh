#!/bin/sh
# tests/interop/run.sh - the Python-ecosystem checks of `make check`:
#   check_transformers.py     transformers/compressed-tensors load a doneshot
#                             checkpoint (no warnings), same tokens, same
#                             perplexity as `doneshot eval`, identical
#                             dequantized weights;
#   check_moe.py              the same for the 4-expert Mixtral variant
#                             (models/variants/mixtral-4x-top2 of
#                             tests/fixtures.py, quantized at -np 2): load without warnings,
#                             fused experts == doneshot's dequantization,
#                             perplexity == `doneshot eval`;
#   parity_llmcompressor.py   GPTQ codes/scales/perplexity vs llmcompressor.oneshot
#                             on the same calibration token ids; QuantizationModifier
#                             (RTN) int4 symmetric/asymmetric: byte-identical checkpoints;
#   parity_w8a8.py            INT8 W8A8 with/without SmoothQuant vs llmcompressor.oneshot
#                             (codes, scales, smoothed norms, ppl; transformers load);
#   parity_w8a8_static.py     INT8 W8A8 with static per-tensor input_scale (recipes/w8a8-static.json)
#                             vs llmcompressor.oneshot (codes, weight/input scales, layout,
#                             quantization_config, -np 2 input_scale, ppl; transformers load);
#   parity_fp8.py             FP8 / FP8_DYNAMIC / FP8_BLOCK (QuantizationModifier, GPTQModifier)
#                             vs llmcompressor.oneshot (fp8 bytes, scales, ppl; transformers load);
#   check_fp8_block.py        FP8_BLOCK through transformers on a 128-wide random Llama
#                             (gen_model): load, bitwise weights, ppl == `doneshot eval`;
#   parity_nvfp4.py           NVFP4A16 / NVFP4 (GPTQModifier, QuantizationModifier) vs
#                             llmcompressor.oneshot (fp4 codes, fp8 and global scales,
#                             quantization_config, ppl; transformers load).
# Creates (or reuses) the venv with the versions pinned in
# tests/interop/requirements.txt. Env: BUILD (default build), MPIRUN,
# DS_FIXTURES (default BUILD/fixtures),
# VENV (default ~/.cache/doneshot/venv), KEEP=1 keeps the work dir.
# Last line: "N passed, N failed, N skipped"; exit 1 on any failure.
cd "$(dirname "$0")/../.." || exit 1
BUILD=${BUILD:-build}
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
# Cached outside the clone so CI runs on the same machine reuse it.
VENV=${VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/doneshot/venv}
REQ=tests/interop/requirements.txt
if [ "$(id -u)" = 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
P=0; F=0

if [ ! -x "$BUILD/doneshot" ]; then
    echo "FAIL $BUILD/doneshot is not built (make BUILD=$BUILD)"; echo "0 passed, 1 failed, 0 skipped"; exit 1
fi

have_venv() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c \
        'import torch, transformers, compressed_tensors, llmcompressor, safetensors, numpy, datasets, tokenizers' \
        >/dev/null 2>&1
}
if ! have_venv; then
    echo "creating $VENV (pinned in $REQ; several minutes on a fresh machine)"
    torch_pin=$(grep -E '^torch==' "$REQ")
    mkdir -p "$(dirname "$VENV")"
    # CPU wheels from download.pytorch.org when reachable, else PyPI's wheel
    # (it runs on CPU too; larger download).
    { python3 -m venv "$VENV" &&
      { "$VENV/bin/pip" install -q --index-url https://download.pytorch.org/whl/cpu "$torch_pin" 2>/dev/null ||
        "$VENV/bin/pip" install -q "$torch_pin"; } &&
      "$VENV/bin/pip" install -q -r "$REQ"; } || true
    if ! have_venv; then
        # No package index reachable: the interop suites cannot run here. Say so
        # loudly and count them as skipped (never as passed).
        echo "SKIP interop: could not create the Python venv $VENV (needs network access to PyPI)"
        echo "0 passed, 0 failed, 8 skipped"; exit 0
    fi
fi

FIX=${DS_FIXTURES:-$BUILD/fixtures}
if ! python3 tests/fixtures.py "$FIX"; then
    echo "FAIL tests/fixtures.py $FIX"; echo "0 passed, 1 failed, 0 skipped"; exit 1
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-interop.XXXXXX")
[ "${KEEP:-0}" = 1 ] && echo "work dir: $WORK" || trap 'rm -rf "$WORK"' EXIT
export PYTHONWARNINGS=${PYTHONWARNINGS:-} TOKENIZERS_PARALLELISM=false

suite() { # $1 = script, rest = arguments
    name=$1; shift
    echo "== tests/interop/$name"
    "$VENV/bin/python" "tests/interop/$name" --doneshot "$BUILD/doneshot" --mpirun "$MPIRUN" "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.err"
    rc=$?
    grep -E '^(ok|FAIL|RESULT) ' "$WORK/$name.out"
    p=$(grep -c '^ok ' "$WORK/$name.out"); f=$(grep -c '^FAIL ' "$WORK/$name.out")
    P=$((P + p)); F=$((F + f))
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $name exited with $rc"; tail -30 "$WORK/$name.err"; F=$((F + 1))
    fi
}
suite check_transformers.py --workdir "$WORK/transformers" --seq-len 256 --windows 40
suite check_moe.py --workdir "$WORK/moe" --seq-len 256 --windows 10 --np 2 \
    --model "$FIX/models/variants/mixtral-4x-top2"
suite parity_llmcompressor.py --workdir "$WORK/parity" --seq-len 256 --windows 40 --rtn
suite parity_w8a8.py --workdir "$WORK/w8a8" --seq-len 256 --windows 40 --fixtures "$FIX"
suite parity_w8a8_static.py --workdir "$WORK/w8a8_static" --seq-len 256 --windows 40
suite parity_fp8.py --workdir "$WORK/fp8" --seq-len 256 --windows 40
suite check_fp8_block.py --workdir "$WORK/fp8_block" --seq-len 128 --windows 16
suite parity_nvfp4.py --workdir "$WORK/nvfp4" --seq-len 256 --windows 40 --rtn

echo "$P passed, $F failed, 0 skipped"
[ "$F" -eq 0 ]
