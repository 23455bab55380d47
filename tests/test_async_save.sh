#!/bin/sh
# The checkpoint writer thread (issue 12 item 5, src/ckpt_async.c): rank 0
# encodes and writes each layer's quantized tensors on its own thread while
# the next layer calibrates. Checks, at -np 1 and -np 2:
#   1. the checkpoint is byte-identical to the synchronous writer's
#      (DONESHOT_SYNC_SAVE=1), also sharded, with SmoothQuant + W8A8 and FP8;
#   2. a write error on the writer thread (DONESHOT_FAULT_WRITE_JOB=k: the
#      k-th module job fails, as a disk-full pwrite would) stops the job with
#      exit 1 naming it, and leaves no output, no partial dir and no lock;
#   3. with resume points after every layer, a write error in layer 2 leaves
#      the resume point of layer 1 only (a resume point never claims a layer
#      the writer has not written), and --resume then finishes a checkpoint
#      identical to an uninterrupted run; the same for --stop-after-layer (-np 2).
# stories260K: 7 quantized modules per layer, so job 10 is in layer 2.
# Last line: "N passed, N failed".
BUILD=${BUILD:-build}
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
BIN=$BUILD/doneshot
T=/tmp/ds-async-save.$$
P=0; F=0
ok() { P=$((P + 1)); }
fail() { echo "FAIL $1"; F=$((F + 1)); }
q() { # q NP LOG ARGS... -> exit code (env DONESHOT_* passed to every rank; RECIPE: another recipe)
    np=$1; log=$2; shift 2
    timeout -k 10 300 $MPIRUN -x DONESHOT_SYNC_SAVE -x DONESHOT_FAULT_WRITE_JOB -np "$np" $BIN \
        --recipe "${RECIPE:-recipes/stories260k-w4a16.json}" "$@" >"$log" 2>&1
}
D="--model data/stories260K --dataset data/tinystories_sample.txt --num-samples 32 --max-seq-len 128"
same() { diff -r "$1" "$2" >/dev/null 2>&1; }
trap 'rm -rf $T' EXIT INT TERM
mkdir -p $T
export DONESHOT_SYNC_SAVE=0 DONESHOT_FAULT_WRITE_JOB=

for np in 1 2; do
    # 1. byte-identical to the synchronous writer
    for v in "plain::" "shards::--max-shard-size 100KB" "sq:recipes/w8a8-smoothquant.json:$D" \
             "fp8:recipes/fp8.json:$D"; do
        name=${v%%:*}; rest=${v#*:}; rcp=${rest%%:*}; args=${rest#*:}
        DONESHOT_SYNC_SAVE=1 RECIPE=$rcp q $np $T/ls $args --output $T/s-$name-$np; rs=$?
        RECIPE=$rcp q $np $T/la $args --output $T/a-$name-$np; ra=$?
        [ $rs -eq 0 ] && [ $ra -eq 0 ] && same $T/s-$name-$np $T/a-$name-$np && ok \
            || fail "1: -np $np $name: async checkpoint == synchronous one (rc $rs/$ra)"
    done
    unset RECIPE
    n=$(ls $T/s-shards-$np/*.safetensors 2>/dev/null | wc -l)
    [ "$n" -gt 1 ] && ok || fail "1: -np $np: --max-shard-size 100KB gives several shards ($n)"

    # 2. a write error on the writer thread: exit 1, the message, nothing left behind
    for mode in 0 1; do
        DONESHOT_SYNC_SAVE=$mode DONESHOT_FAULT_WRITE_JOB=10 q $np $T/lf --output $T/f$np; rc=$?
        [ $rc -eq 1 ] && grep -q "injected write failure in job 10" $T/lf && [ ! -e $T/f$np ] \
            && [ ! -e $T/f$np.partial ] && [ ! -e $T/f$np.partial.lock ] && ok \
            || { fail "2: -np $np sync=$mode: writer error: exit 1, nothing left (rc $rc)"; tail -3 $T/lf; }
    done

    # 3. resume points wait for the writer (the synchronous mode too, at -np 1)
    modes="0 1"; [ $np -eq 1 ] || modes=0
    for mode in $modes; do
        DONESHOT_SYNC_SAVE=$mode DONESHOT_FAULT_WRITE_JOB=10 q $np $T/lr --output $T/r$np-$mode \
            --resume-interval 0; rc=$?
        [ $rc -eq 1 ] && [ -f $T/r$np-$mode.partial/resume/progress.bin ] && [ ! -e $T/r$np-$mode ] && ok \
            || fail "3: -np $np sync=$mode: error in layer 2 with resume points: exit 1, partial kept (rc $rc)"
        q $np $T/lr2 --output $T/r$np-$mode --resume --resume-interval 0; rc=$?
        [ $rc -eq 0 ] && grep -q "resuming after layer 1/" $T/lr2 && same $T/r$np-$mode $T/s-plain-$np && ok \
            || { fail "3: -np $np sync=$mode: resumed after layer 1 only, checkpoint identical (rc $rc)";
                 grep resuming $T/lr2; }
    done
    [ $np -eq 2 ] || continue
    q $np $T/lt --output $T/t$np --resume-interval 0 --stop-after-layer 3; rc=$?
    q $np $T/lt2 --output $T/t$np --resume; rc2=$?
    [ $rc -eq 1 ] && [ $rc2 -eq 0 ] && grep -q "resuming after layer 3/" $T/lt2 && same $T/t$np $T/s-plain-$np && ok \
        || fail "3: -np $np: --stop-after-layer 3 then --resume: identical checkpoint (rc $rc/$rc2)"
done
echo "$P passed, $F failed"
[ $F -eq 0 ]
