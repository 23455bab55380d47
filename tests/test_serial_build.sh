#!/bin/sh
# `make MPI=0` (one rank, src/comm_serial.c instead of MPI; what
# bench/device_bundle.sh ships to GPU nodes without MPI): it builds, does not
# link libmpi, and its checkpoint of the bundled model is identical to the MPI
# build's at -np 1 (every int code, scales, config). Also: a make that names
# another configuration in the same build folder rebuilds what it compiled
# and removes a stale libdoneshot-cuda.so (Makefile CONFIG). Last line:
# "N passed, N failed".
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
# the build configuration stamp: DEBUG=1 after DEBUG=0 recompiles, a second
# DEBUG=1 does not; CUDA=0 removes a CUDA build's library
C=$T/cfg
make -s CUDA=0 BUILD=$C $C/src/util.o >$T/c1.log 2>&1 || fail "make util.o: $(tail -3 $T/c1.log)"
make CUDA=0 DEBUG=1 BUILD=$C $C/src/util.o >$T/c2.log 2>&1
grep -q "^CC src/util.c" $T/c2.log && ok || fail "DEBUG=1 after DEBUG=0 did not recompile: $(cat $T/c2.log)"
make CUDA=0 DEBUG=1 BUILD=$C $C/src/util.o >$T/c3.log 2>&1
grep -q "^CC" $T/c3.log && fail "the same configuration recompiled: $(cat $T/c3.log)" || ok
: >$C/libdoneshot-cuda.so
make -s CUDA=0 BUILD=$C $C/src/util.o >/dev/null 2>&1
[ ! -e $C/libdoneshot-cuda.so ] && ok || fail "a stale libdoneshot-cuda.so survived a configuration change"
rm -rf $T
echo "$P passed, $F failed"
[ "$F" -eq 0 ]
