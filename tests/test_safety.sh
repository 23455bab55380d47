#!/bin/sh
# Data safety of the output path, the resume state and failure reporting
# (issue 10 of the hostile-input probe): doneshot never replaces what is not
# its own, refuses bad targets before any work, cleans up after a failure,
# refuses to resume another model's or data's partial run, validates the
# resume state, and rank 0 prints a failing rank's own message.
# Last line: "N passed, N failed".
BUILD=${BUILD:-build}
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
BIN=$BUILD/doneshot
T=/tmp/ds-safety.$$
P=0; F=0
ok() { P=$((P + 1)); }
fail() { echo "FAIL $1"; F=$((F + 1)); }
R="--recipe recipes/stories260k-w4a16.json"
q() { # q NP LOG ARGS... -> exit code
    np=$1; log=$2; shift 2
    timeout -k 10 300 $MPIRUN -np "$np" $BIN $R "$@" >"$log" 2>&1
}
no_work() { ! grep -q "layer 1/5" "$1"; } # refused before the model was quantized
trap 'rm -rf $T' EXIT INT TERM
mkdir -p $T

# 1. an existing non-empty directory that is not a checkpoint: refused up
#    front, --overwrite or not, and left untouched
mkdir -p $T/user && echo precious >$T/user/notes.txt
for ow in "" --overwrite; do
    q 1 $T/l1 --output $T/user $ow; rc=$?
    [ $rc -eq 2 ] && no_work $T/l1 && grep -q "not a checkpoint" $T/l1 && [ "$(cat $T/user/notes.txt)" = precious ] \
        && ok || fail "1: non-empty non-checkpoint output ($ow): exit 2, untouched (rc $rc)"
done
#    the parent of the model directory, and the model directory itself
mkdir -p $T/models && cp -r data/stories260K $T/models/m
q 1 $T/l1 --model $T/models/m --output $T/models --overwrite; rc=$?
[ $rc -eq 2 ] && no_work $T/l1 && [ -f $T/models/m/model.safetensors ] && ok \
    || fail "1: output = parent of the model: exit 2, model kept (rc $rc)"
# 4. --output equal to --model with --overwrite
q 1 $T/l1 --model $T/models/m --output $T/models/m --overwrite; rc=$?
[ $rc -eq 2 ] && grep -q "is the input model" $T/l1 && cmp -s $T/models/m/config.json data/stories260K/config.json \
    && ok || fail "4: output = model with --overwrite: exit 2, model kept (rc $rc)"
#    a directory holding the calibration file
mkdir -p $T/d && cp data/tinystories_sample.txt $T/d/calib.txt
q 1 $T/l1 --dataset $T/d/calib.txt --output $T/d --overwrite; rc=$?
[ $rc -eq 2 ] && [ -f $T/d/calib.txt ] && ok || fail "1: output holding the dataset: exit 2 (rc $rc)"
#    an empty directory is fine; a checkpoint needs --overwrite and is then replaced
mkdir -p $T/empty
q 1 $T/l1 --output $T/empty; [ $? -eq 0 ] && [ -f $T/empty/config.json ] && ok || fail "1: empty output dir"
q 1 $T/l1 --output $T/empty; rc=$?
[ $rc -eq 2 ] && grep -q "already holds a checkpoint" $T/l1 && ok || fail "1: checkpoint without --overwrite (rc $rc)"
q 1 $T/l1 --output $T/empty --overwrite; [ $? -eq 0 ] && ok || fail "1: checkpoint with --overwrite"
#    a foreign "<out>.partial" is never removed
mkdir -p $T/x.partial && echo mine >$T/x.partial/keep
q 1 $T/l1 --output $T/x; rc=$?
[ $rc -eq 2 ] && [ -f $T/x.partial/keep ] && ok || fail "1: foreign OUT.partial kept (rc $rc)"

# 8. a failure after the output was claimed (a non-finite weight in layer 3,
#    found when that layer is loaded): exit 3 naming the tensor, and neither
#    the partial output nor the lock is left behind
cp -r data/stories260K $T/models/inf
python3 - "$T/models/inf/model.safetensors" <<'EOF'
import json, struct, sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
o = 8 + n + h['model.layers.2.mlp.up_proj.weight']['data_offsets'][0] + 4 * 17
b[o:o + 4] = struct.pack('<f', float('inf'))
open(p, 'wb').write(b)
EOF
q 2 $T/l8 --model $T/models/inf --output $T/o8; rc=$?
[ $rc -eq 3 ] && grep -q "model.layers.2.mlp.up_proj" $T/l8 && [ ! -e $T/o8 ] && [ ! -e $T/o8.partial ] \
    && [ ! -e $T/o8.partial.lock ] && ok || fail "8: failure after claiming the output: exit 3, nothing left (rc $rc)"

# 2. --output '' (read past a heap buffer before)
q 1 $T/l2 --output ''; rc=$?
[ $rc -eq 2 ] && grep -q "empty path" $T/l2 && ok || fail "2: --output '': exit 2 (rc $rc)"

# 4. --summary inside the output (would overwrite config.json), or = the dataset
q 1 $T/l4 --output $T/s4 --summary $T/s4/config.json; rc=$?
[ $rc -eq 2 ] && no_work $T/l4 && [ ! -e $T/s4 ] && ok || fail "4: --summary OUTPUT/config.json: exit 2 (rc $rc)"
q 1 $T/l4 --output $T/s5 --dataset $T/d/calib.txt --summary $T/d/calib.txt; rc=$?
[ $rc -eq 2 ] && [ "$(wc -c <$T/d/calib.txt)" -gt 1000 ] && ok || fail "4: --summary = dataset: exit 2 (rc $rc)"

# 9. targets that can never be renamed into: refused before loading the model
for o in . / /dev/null; do
    q 1 $T/l9 --output $o; rc=$?
    [ $rc -eq 2 ] && no_work $T/l9 && ok || fail "9: --output $o: exit 2 before any work (rc $rc)"
done
chmod 0555 $T/empty 2>/dev/null
if [ "$(id -u)" -ne 0 ]; then
    q 1 $T/l9 --output $T/empty/sub; rc=$?
    [ $rc -eq 2 ] && no_work $T/l9 && ok || fail "9: unwritable parent: exit 2 (rc $rc)"
fi
q 1 $T/l9 --output /proc/doneshot-out; rc=$?
[ $rc -eq 2 ] && no_work $T/l9 && ok || fail "9: --output under /proc: exit 2 before any work (rc $rc)"
chmod 0755 $T/empty

# 14. a lock file left by a dead process never blocks the next run
mkdir -p $T/lk && : >$T/lk/out.partial.lock
q 1 $T/l14 --output $T/lk/out; rc=$?
[ $rc -eq 0 ] && [ ! -e $T/lk/out.partial.lock ] && ok || fail "14: stale lock file: run proceeds, lock removed (rc $rc)"

# 5. --resume of a different model of the same shape, or of other data: exit 2
q 1 $T/l5 --model $T/models/m --output $T/r5 --resume-interval 0 --stop-after-layer 2
cp -r $T/models/m $T/models/m2 # same shape and bytes, another model directory
q 1 $T/l5 --model $T/models/m2 --output $T/r5 --resume; rc=$?
[ $rc -eq 2 ] && grep -q "another recipe, model" $T/l5 && [ -f $T/r5.partial/resume/progress.bin ] && ok \
    || fail "5: --resume with another model of the same shape: exit 2, partial kept (rc $rc)"
head -c 60000 data/tinystories_sample.txt >$T/other.txt
q 1 $T/l5 --model $T/models/m --dataset $T/other.txt --output $T/r5 --resume; rc=$?
[ $rc -eq 2 ] && ok || fail "5: --resume with other calibration data: exit 2 (rc $rc)"
q 1 $T/l5 --model $T/models/m --output $T/r5 --resume; rc=$?
[ $rc -eq 0 ] && grep -q "resuming after layer 2/5" $T/l5 && ok || fail "5: --resume of the same job still works (rc $rc)"

# 13. a corrupt progress file (negative layer): exit 2, the partial run kept
q 1 $T/l13 --output $T/r13 --resume-interval 0 --stop-after-layer 2
python3 - "$T/r13.partial/resume/progress.bin" <<'EOF'
import struct, sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
b[8:12] = struct.pack('<i', -7)  # prog_head.layer
open(p, 'wb').write(b)
EOF
q 1 $T/l13 --output $T/r13 --resume; rc=$?
[ $rc -eq 2 ] && grep -q "corrupt" $T/l13 && [ -f $T/r13.partial/resume/progress.bin ] && [ -f $T/r13.partial/resume/rank-0.bin ] \
    && ok || fail "13: corrupt progress.bin: exit 2, partial kept (rc $rc)"

# 15. a failure on rank 1 only: rank 0 prints rank 1's own message
q 2 $T/l15 --output $T/r15 --resume-interval 0 --stop-after-layer 2
truncate -s 100 $T/r15.partial/resume/rank-1.bin
q 2 $T/l15 --output $T/r15 --resume; rc=$?
[ $rc -eq 2 ] && grep "rank 0" $T/l15 | grep -q "rank 1: cannot resume: .*rank-1.bin is truncated" \
    && ok || fail "15: rank 0 prints rank 1's message (rc $rc): $(grep error $T/l15 | head -2)"

# 14. SIGTERM to the ranks themselves (what slurmstepd sends each task of an
#     srun step at a time limit or scancel): a resume point at the next layer
#     boundary, exit 1, and --resume finishes the same checkpoint. A rank
#     killed outright (SIGKILL; or Open MPI's kill ~2 s after mpirun itself
#     gets SIGTERM, see the man page) leaves the lock file and the partial
#     run behind: neither blocks the next run. The ranks are stopped
#     (SIGSTOP) before the signal, so the run cannot finish first however
#     fast the machine is.
S="--num-samples 200 --max-seq-len 512"
q 2 $T/l14r --output $T/t14ref $S
bg() { # bg OUT LOG: start a -np 2 run in the background, stop its ranks after layer 1
    timeout -k 10 300 $MPIRUN -np 2 $BIN $R --output "$1" $S --resume-interval 100000 >"$2" 2>&1 &
    job=$!
    for i in $(seq 1 600); do grep -q "layer 1/5" "$2" 2>/dev/null && break; sleep 0.05; done
    pkill -STOP -f "^$BIN .*--output $1 "
}
bg $T/t14 $T/l14t
pkill -TERM -f "^$BIN .*--output $T/t14 "
pkill -CONT -f "^$BIN .*--output $T/t14 "
wait $job; rc=$?
if [ $rc -eq 1 ] && grep -q "stopped on SIGTERM" $T/l14t && [ -f $T/t14.partial/resume/progress.bin ]; then
    ok
    q 2 $T/l14t --output $T/t14 $S --resume; rc=$?
    [ $rc -eq 0 ] && $BUILD/ckpt_diff $T/t14ref $T/t14 1.0 >/dev/null && ok || fail "14: resume after SIGTERM (rc $rc)"
else
    fail "14: SIGTERM to the ranks: resume point and exit 1 (rc $rc): $(tail -2 $T/l14t)"
fi
bg $T/t14k $T/l14k
pkill -KILL -f "^$BIN .*--output $T/t14k "
wait $job
[ ! -e $T/t14k ] && ok || fail "14: a killed run leaves no checkpoint"
q 2 $T/l14k --output $T/t14k $S --resume; rc=$?
[ $rc -eq 0 ] && $BUILD/ckpt_diff $T/t14ref $T/t14k 1.0 >/dev/null && [ ! -e $T/t14k.partial.lock ] && ok \
    || fail "14: after the ranks were killed, the next run is not blocked (rc $rc)"

echo "$P passed, $F failed"
[ $F -eq 0 ]
