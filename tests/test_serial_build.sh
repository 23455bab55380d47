#!/bin/sh
# `make MPI=0` (one rank, src/comm_serial.c instead of MPI; what
# bench/device_bundle.sh ships to GPU nodes without MPI): it builds, does not
# link libmpi, and its checkpoint of the bundled model is identical to the MPI
# build's at -np 1 (every int code, scales, config). Last line: "N passed, N failed".
BUILD=${BUILD:-build}
B=$BUILD/serial
T=/tmp/ds-serial.$$
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
P=0; F=0
ok() { P=$((P + 1)); }
fail() { echo "FAIL $1"; F=$((F + 1)); }
mkdir -p $T
if make -s CUDA=0 MPI=0 BUILD=$B $B/doneshot >$T/build.log 2>&1; then ok; else fail "make MPI=0: $(tail -5 $T/build.log)"; fi
if [ -x $B/doneshot ]; then
    ldd $B/doneshot | grep -q libmpi && fail "the MPI=0 build links libmpi" || ok
    $B/doneshot --recipe recipes/stories260k-w4a16.json --output $T/serial -q >$T/serial.log 2>&1 \
        && ok || fail "serial doneshot: $(tail -3 $T/serial.log)"
    $MPIRUN -np 1 $BUILD/doneshot --recipe recipes/stories260k-w4a16.json --output $T/mpi -q >$T/mpi.log 2>&1 \
        && ok || fail "MPI doneshot -np 1: $(tail -3 $T/mpi.log)"
    $BUILD/ckpt_diff $T/serial $T/mpi 1.0 && ok || fail "serial and MPI checkpoints differ"
    cmp -s $T/serial/config.json $T/mpi/config.json && ok || fail "config.json differs"
    $B/doneshot --recipe recipes/stories260k-w4a16.json --output $T/bad --num-samples 0 >/dev/null 2>&1
    [ $? -eq 2 ] && ok || fail "serial build: usage error exits 2"
fi
rm -rf $T
echo "$P passed, $F failed"
[ "$F" -eq 0 ]
