#!/bin/sh
# The device bundle's Open MPI (bench/bundle_openmpi.sh, issue 12 item 7):
# in a mount namespace where this machine's Open MPI is hidden (its library
# files, MCA plugin and PMIx directories, help texts and launchers replaced by
# empty ones, as on a GPU machine with no MPI installed), the relocated copy
# runs `mpirun -np 2 doneshot` on the bundled model, and the checkpoint equals
# the one of the system's mpirun -np 2 (same arithmetic: identical codes).
# Also checks that the run really used the bundle (doneshot resolves every
# MPI library from it) and that without the bundle's environment the
# job cannot start (the hiding works, so the test can fail).
# Skips without root or unshare, or when Open MPI is not Debian's 4.1 layout.
# Last line: "N passed, N failed, N skipped".
BUILD=${BUILD:-build}
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
DS=$BUILD/doneshot
. tests/lib.sh
done_() { echo "$P passed, $F failed, $S skipped"; [ "$F" -eq 0 ]; exit $?; }

if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null 2>&1; then
    skip "bundle: needs root and unshare (mount namespace)"; done_
fi
mkdir -p "$TMP/probe_a" "$TMP/probe_b"
if ! unshare -m sh -c "mount --bind '$TMP/probe_a' '$TMP/probe_b'" 2>/dev/null; then
    skip "bundle: cannot bind-mount in a mount namespace here"; done_
fi
B=$TMP/ompi
if ! sh bench/bundle_openmpi.sh "$B" >"$TMP/bundle.log" 2>&1; then
    if grep -q "not found" "$TMP/bundle.log"; then skip "bundle: $(cat "$TMP/bundle.log")"; done_; fi
    fail "bundle_openmpi.sh: $(tail -3 "$TMP/bundle.log")"; done_
fi
pass "bundle_openmpi.sh built a tree ($(du -sh "$B" | cut -f1))"

R="--recipe recipes/stories260k-w4a16.json --num-samples 8 --max-seq-len 64 -q --overwrite"
$MPIRUN -np 2 "$DS" $R --output "$TMP/sys" >"$TMP/sys.log" 2>&1 || { fail "system mpirun -np 2: $(tail -3 "$TMP/sys.log")"; done_; }

# hide the system's Open MPI: files get an empty file, directories an empty one
mkdir -p "$TMP/emptydir" && : >"$TMP/emptyfile"
cat >"$TMP/hide.sh" <<EOF
set -e
mount --make-rprivate / 2>/dev/null || true
for f in /usr/lib/x86_64-linux-gnu/libmpi.so.40.* /usr/lib/x86_64-linux-gnu/libopen-rte.so.40.* \
         /usr/lib/x86_64-linux-gnu/libopen-pal.so.40.* /usr/lib/x86_64-linux-gnu/pmix2/lib/libpmix.so.2.* \
         /usr/bin/orterun /usr/bin/orted; do
    [ -f "\$f" ] && mount --bind "$TMP/emptyfile" "\$f"
done
for d in /usr/lib/x86_64-linux-gnu/openmpi /usr/lib/x86_64-linux-gnu/pmix2 /usr/share/openmpi /etc/openmpi; do
    [ -d "\$d" ] && mount --bind "$TMP/emptydir" "\$d"
done
set +e
"\$@"
EOF
# 1. the hiding works: the system's launcher cannot run doneshot in there
if unshare -m sh "$TMP/hide.sh" $MPIRUN -np 2 "$DS" $R --output "$TMP/none" >"$TMP/none.log" 2>&1; then
    fail "with the system's Open MPI hidden, the system mpirun still ran (the test cannot tell the bundle apart)"
else
    pass "system Open MPI hidden in the namespace (mpirun fails there)"
fi
# 2. the bundle runs -np 2 and every MPI library the ranks map is the bundle's
cat >"$TMP/run.sh" <<EOF
OMPI_BUNDLE="$B"; . "$B/env.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
[ "\$(command -v mpirun)" = "$B/bin/mpirun" ] || { echo "mpirun is \$(command -v mpirun)"; exit 9; }
mpirun --oversubscribe -np 2 "$DS" $R --output "$TMP/bundle"
EOF
if unshare -m sh "$TMP/hide.sh" sh "$TMP/run.sh" >"$TMP/bundle.log" 2>&1; then
    pass "bundled mpirun -np 2 doneshot ran with the system's Open MPI hidden"
    if grep -q -i -E "sorry|warning|error|no such file" "$TMP/bundle.log"; then
        fail "the bundled Open MPI complained: $(grep -i -E -m3 "sorry|warning|error|no such" "$TMP/bundle.log")"
    else
        pass "the bundled run printed no Open MPI/PMIx warning"
    fi
else
    fail "bundled mpirun -np 2 (exit $?): $(tail -5 "$TMP/bundle.log")"; done_
fi
# the libraries doneshot resolves in the namespace with the bundle's environment
unshare -m sh "$TMP/hide.sh" sh -c "OMPI_BUNDLE='$B'; . '$B/env.sh'; ldd '$DS'" >"$TMP/ldd.txt" 2>&1
if grep -E 'lib(mpi|open-pal|open-rte|pmix)\.so' "$TMP/ldd.txt" | grep -v -q "$B/"; then
    fail "doneshot resolves an MPI library outside the bundle: $(grep -E 'lib(mpi|open)' "$TMP/ldd.txt" | head -3)"
elif ! grep -q "$B/lib/libmpi.so" "$TMP/ldd.txt"; then
    fail "doneshot does not resolve libmpi from the bundle: $(head -5 "$TMP/ldd.txt")"
else
    pass "doneshot's libmpi, libopen-pal, libopen-rte, libpmix come from the bundle"
fi
# 3. same checkpoint as the system's mpirun (same arithmetic)
if [ -x "$BUILD/ckpt_diff" ] && "$BUILD/ckpt_diff" "$TMP/sys" "$TMP/bundle" 1.0 >"$TMP/diff.txt" 2>&1; then
    pass "bundle -np 2 checkpoint == system -np 2 checkpoint (identical codes)"
elif [ ! -x "$BUILD/ckpt_diff" ] && cmp -s "$TMP/sys/model.safetensors" "$TMP/bundle/model.safetensors"; then
    pass "bundle -np 2 checkpoint == system -np 2 checkpoint (identical bytes)"
else
    fail "bundle vs system checkpoint differ: $(tail -3 "$TMP/diff.txt" 2>/dev/null)"
fi
done_
