#!/bin/sh
# device_bundle.sh - a self-contained doneshot for a GPU machine that has the
# CUDA driver and toolkit but no MPI and none of the Debian packages.
# Builds `make CUDA=1 MPI=0 CUDA_ARCH=90` (one rank, H100/H200) into
# build/device, gathers the binaries (doneshot with libdoneshot-cuda.so, the
# CUDA engine it loads from beside itself), the non-CUDA shared libraries they
# load (cJSON, OpenBLAS, LAPACKE, PCRE2, utf8proc, zlib, gfortran), the bf16
# demo model and the Llama-3 tokenizer into one archive,
# build/device-bundle.tgz (~30 MB). It also
# carries an MPI build (mpi/doneshot, build/device-mpi) and this machine's
# Open MPI relocated (ompi/, bench/bundle_openmpi.sh, ~18 MB), so that
#   OMPI_BUNDLE=$D/ompi; . $D/ompi/env.sh; mpirun -np 2 $D/mpi/doneshot ...
# runs where no MPI is installed (device_check.sh's np2 step). Then, on the
# GPU machine, with a checkout of the repo beside it:
#   tar xzf build/device-bundle.tgz -C /tmp && sh bench/device_check.sh /tmp/doneshot-device
# (STEPS and BUDGET select the checks and bound the call: see its header and
# docs/BENCHMARKS-gpu.md).
set -eu
B=build/device
D=build/device-bundle/doneshot-device
make -j"$(nproc)" CUDA=1 MPI=0 CUDA_ARCH=90 BUILD=$B all >/dev/null
make -j"$(nproc)" CUDA=1 MPI=1 CUDA_ARCH=90 BUILD=build/device-mpi build/device-mpi/doneshot >/dev/null
rm -rf build/device-bundle
mkdir -p $D/lib $D/models $D/mpi
cp build/device-mpi/doneshot build/device-mpi/libdoneshot-cuda.so $D/mpi/
sh bench/bundle_openmpi.sh $D/ompi
# libdoneshot-cuda.so: the CUDA engine, which doneshot loads from beside itself
for f in doneshot libdoneshot-cuda.so bench_gpu gen_model ckpt_diff tests/test_kernels; do cp $B/$f $D/; done
strip $D/* $D/mpi/* 2>/dev/null || true
# shared libraries outside glibc, the C++ runtime and CUDA (those are on the device)
for f in $D/doneshot $D/libdoneshot-cuda.so $D/bench_gpu $D/gen_model $D/ckpt_diff $D/test_kernels $D/mpi/doneshot; do ldd "$f"; done |
    awk '/=> \// { print $3 }' | sort -u |
    grep -v -E '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s)\.so|/ld-linux|/libcu|/libnv|/lib(mpi|open-rte|open-pal|pmix)\.so' |
    while read -r so; do cp -L "$so" $D/lib/; done
# the bf16 demo model, generated from data/stories260K, and the Llama-3
# tokenizer for bench_gpu.sh's synthetic Llama-3-8B (tests/fixtures.py)
if python3 tests/fixtures.py build/fixtures >/dev/null; then
    cp -r build/fixtures/models/stories260K-bf16 $D/models/
    mkdir -p $D/tokenizers && cp -r build/fixtures/tokenizers/llama3 $D/tokenizers/
else
    echo "warning: tests/fixtures.py failed; device_check.sh will skip the e2e check" >&2
fi
tar czf build/device-bundle.tgz -C build/device-bundle doneshot-device
ls -l build/device-bundle.tgz | awk '{ printf "build/device-bundle.tgz: %.1f MB\n", $5 / 1e6 }'
ls $D/lib
