#!/bin/sh
# Resume (--resume, --resume-interval, src/resume.c): a run stopped after a
# layer (--stop-after-layer, the testing aid that stands in for a crash) and
# continued with --resume writes the same checkpoint as an uninterrupted run
# (every int code, scale and config.json), at -np 1 and 2, on the CPU and on
# the emulated CUDA engine (resident and offloaded activations); chained
# stops; a partial run of another job or world size is refused (exit 2) and
# left in place; without --resume it is discarded with a warning; a truncated
# state file is a clear error; a second writer of the same output is refused;
# SIGUSR1 makes a resume point at the next layer boundary and stops.
# Last line: "N passed, N failed".
BUILD=${BUILD:-build}
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
BIN=$BUILD/doneshot
T=/tmp/ds-resume.$$
P=0; F=0
ok() { P=$((P + 1)); }
fail() { echo "FAIL $1"; F=$((F + 1)); }
R="--recipe recipes/stories260k-w4a16.json"
q() { # q NP BIN OUT ARGS... -> exit code, log in OUT.log
    np=$1; bin=$2; out=$3; shift 3
    timeout -k 10 300 $MPIRUN -np "$np" "$bin" $R --output "$out" "$@" >"$out.log" 2>&1
}
same() { # same REF OUT: identical codes and config.json
    $BUILD/ckpt_diff "$1" "$2" 1.0 >/dev/null && cmp -s "$1/config.json" "$2/config.json"
}
mkdir -p $T

for np in 1 2; do
    q $np $BIN $T/ref$np; [ $? -eq 0 ] && ok || fail "np $np: uninterrupted run"
    q $np $BIN $T/a$np --resume-interval 0 --stop-after-layer 2; rc=$?
    [ $rc -eq 1 ] && [ -f $T/a$np.partial/resume/progress.bin ] && [ ! -e $T/a$np ] \
        && ok || fail "np $np: stop after layer 2 -> exit 1 ($rc), partial state kept, no output"
    grep -q "continue it with --resume" $T/a$np.log && ok || fail "np $np: the stop message names --resume"
    q $np $BIN $T/a$np --resume; rc=$?
    [ $rc -eq 0 ] && grep -q "resuming after layer 2/5" $T/a$np.log && ok || fail "np $np: --resume ($rc)"
    same $T/ref$np $T/a$np && ok || fail "np $np: resumed checkpoint differs from the uninterrupted one"
    [ ! -e $T/a$np.partial ] && [ ! -e $T/a$np/resume ] && ok || fail "np $np: partial dir or resume state left behind"
done

# chained: stop after 1, resume and stop after 3, resume to the end
q 2 $BIN $T/c --resume-interval 0 --stop-after-layer 1 >/dev/null
q 2 $BIN $T/c --resume --resume-interval 0 --stop-after-layer 3; [ $? -eq 1 ] && ok || fail "chained: second stop"
q 2 $BIN $T/c --resume; [ $? -eq 0 ] && same $T/ref2 $T/c && ok || fail "chained stops: checkpoint differs"

# another world size / another job: refused, partial left in place
q 2 $BIN $T/w --resume-interval 0 --stop-after-layer 2 >/dev/null
q 1 $BIN $T/w --resume; rc=$?
[ $rc -eq 2 ] && grep -q "used 2 ranks" $T/w.log && [ -f $T/w.partial/resume/progress.bin ] \
    && ok || fail "resume at another world size: exit 2 with the rank count, state kept ($rc)"
q 2 $BIN $T/w --resume --num-samples 32; rc=$?
[ $rc -eq 2 ] && grep -q "another recipe, model" $T/w.log && ok || fail "resume of another job: exit 2 ($rc)"
# without --resume: discarded with a warning, fresh run
q 2 $BIN $T/w; rc=$?
[ $rc -eq 0 ] && grep -q "discarding the partial run" $T/w.log && same $T/ref2 $T/w \
    && ok || fail "a stale partial run without --resume: discarded, fresh checkpoint ($rc)"
# --resume with nothing to resume
q 1 $BIN $T/n --resume; rc=$?
[ $rc -eq 0 ] && grep -q "no resume state" $T/n.log && same $T/ref1 $T/n && ok || fail "--resume with no state ($rc)"
# truncated rank file
q 2 $BIN $T/t --resume-interval 0 --stop-after-layer 2 >/dev/null
head -c 100 $T/t.partial/resume/rank-1.bin >$T/x && mv $T/x $T/t.partial/resume/rank-1.bin
q 2 $BIN $T/t --resume; rc=$?
[ $rc -eq 2 ] && grep -q "truncated" $T/t.log && ok || fail "truncated state file: exit 2 ($rc)"

# one writer per output: a held lock on OUTPUT.partial.lock is a usage error
if command -v flock >/dev/null 2>&1; then
    flock $T/L.partial.lock sleep 4 &
    holder=$!
    sleep 1
    q 1 $BIN $T/L; rc=$?
    [ $rc -eq 2 ] && grep -q "another doneshot is writing" $T/L.log && [ ! -e $T/L ] \
        && ok || fail "a second writer of the same output: exit 2 ($rc)"
    wait $holder
    q 1 $BIN $T/L; [ $? -eq 0 ] && [ ! -e $T/L.partial.lock ] && ok || fail "after the lock is released: runs, lock file removed"
fi

# SIGUSR1 (what Slurm's --signal sends; mpirun forwards it to every rank):
# a resume point at the next layer boundary, exit 1, then --resume finishes
$BUILD/gen_model --out $T/sigm --hidden 384 --intermediate 1024 --layers 12 --heads 6 --kv-heads 2 --vocab 512 \
    --dtype f32 --tokenizer-from data/stories260K --seed 3 >/dev/null 2>&1
q 2 $BIN $T/sref --model $T/sigm -q
$MPIRUN -np 2 $BIN $R --model $T/sigm --output $T/sig >$T/sig.log 2>&1 &
job=$!
n=0
while ! grep -q "layer 2/12" $T/sig.log 2>/dev/null && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
kill -USR1 $job
wait $job; rc=$?
if [ $rc -eq 1 ] && grep -q "stopped on SIGUSR1 after layer" $T/sig.log && [ -f $T/sig.partial/resume/progress.bin ]; then
    ok
    q 2 $BIN $T/sig --model $T/sigm --resume; rc=$?
    [ $rc -eq 0 ] && same $T/sref $T/sig && ok || fail "resume after SIGUSR1: checkpoint differs ($rc)"
else
    fail "SIGUSR1: exit 1 with a resume point (got $rc: $(grep -i 'stopped\|error' $T/sig.log | head -2))"
fi

# the emulated CUDA engine (bf16 model), resident and offloaded
FIX=${DS_FIXTURES:-$BUILD/fixtures}
${PYTHON:-python3} tests/fixtures.py "$FIX" || fail "tests/fixtures.py $FIX"
M=$FIX/models/stories260K-bf16
if [ -d $M ] && [ -x $BUILD/doneshot-emul ]; then
    for mode in "" "--offload-activations --micro-batch 5"; do
        q 2 $BUILD/doneshot-emul $T/gref --model $M --device cuda $mode --overwrite
        q 2 $BUILD/doneshot-emul $T/g --model $M --device cuda $mode --resume-interval 0 --stop-after-layer 3 >/dev/null
        q 2 $BUILD/doneshot-emul $T/g --model $M --device cuda $mode --resume; rc=$?
        [ $rc -eq 0 ] && same $T/gref $T/g && ok || fail "emulated cuda ${mode:-resident}: resumed checkpoint differs ($rc)"
        rm -rf $T/g $T/gref
    done
    q 2 $BIN $T/x --model $M --device cpu --resume-interval 0 --stop-after-layer 2 >/dev/null
    q 2 $BUILD/doneshot-emul $T/x --model $M --device cuda --resume; rc=$?
    [ $rc -eq 2 ] && ok || fail "a cpu partial run resumed on cuda is refused ($rc)"
else
    fail "emulated cuda resume: $M or $BUILD/doneshot-emul missing"
fi
rm -rf $T
echo "$P passed, $F failed"
[ "$F" -eq 0 ]
