#!/bin/sh
# Slurm: the README's job script under a real one-node Slurm cluster that this
# test starts on localhost (tests/slurm/cluster.sh: munged, slurmctld, slurmd,
# a generated slurm.conf, all in a temp dir; stopped and removed on exit).
# - the README script as written (srun --mpi=pmix), 2 tasks, sbatch --wait:
#   exit 0 and the same checkpoint as mpirun -np 2; mpirun inside the
#   allocation too; the local rank each task sees (SLURM_LOCALID under srun,
#   OMPI_COMM_WORLD_LOCAL_RANK under mpirun) and the one doneshot reads
# - a bad recipe: job exit code 2 (sbatch --wait, scontrol's ExitCode), the
#   message in the job's output file
# - a real time limit (--time=1 --signal=USR1@50): SIGUSR1 mid-run, a resume
#   point, the script requeues itself and resumes; SIGKILL of the resumed
#   run's ranks leaves no output, and a second sbatch of the same script
#   resumes (the killed run's lock does not block it); scancel of that one
#   (SIGTERM): a resume point; a third sbatch finishes with a checkpoint
#   byte-identical to an uninterrupted run, no partial run or lock left
# Skips (SKIP line, then "0 passed, 0 failed, 1 skipped") without the Slurm and
# munge packages, without root, or when the cluster cannot start.
# DS_SLURM_LOGS=DIR keeps the job outputs, scripts and daemon logs there.
# Last line: "N passed, N failed".
BUILD=${BUILD:-build}
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
BIN=$BUILD/doneshot
P=0; F=0
ok() { P=$((P + 1)); }
fail() { echo "FAIL $1"; F=$((F + 1)); }
skip() { echo "SKIP slurm: $1"; echo "0 passed, 0 failed, 1 skipped"; exit 0; }

# a Slurm job around the test (make check inside an allocation) must not leak
# into the jobs of the local cluster
for v in $(env | sed -n 's/^\(SLURM_[A-Za-z0-9_]*\)=.*/\1/p'); do unset "$v"; done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
[ -x "$BIN" ] || skip "$BIN not built"
. tests/slurm/cluster.sh
T=$(mktemp -d /tmp/ds-slurm.XXXXXX) || skip "mktemp failed"
chmod 755 "$T"
bg=""
cleanup() {
    for p in $bg; do kill "$p" 2>/dev/null; done
    [ -n "${DS_SLURM_LOGS:-}" ] && mkdir -p "$DS_SLURM_LOGS" && cp "$T"/*.out "$T"/*.log "$T"/*.sh "$T"/cluster/slurm.conf \
        "$T"/cluster/log/* "$DS_SLURM_LOGS"/ 2>/dev/null
    slurm_down
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
t0=$(date +%s)
slurm_up "$T/cluster" || skip "$SLURM_WHY"
srun --mpi=list 2>&1 | grep -q pmix || skip "Slurm has no pmix MPI plugin (srun --mpi=list)"
echo "cluster up in $(($(date +%s) - t0)) s: $(sinfo -h -o '%N %c CPUs %t')"

# jobstate ID: the job's state, e.g. RUNNING, COMPLETED, FAILED
jobstate() { timeout 15 scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
# jobfield ID KEY: e.g. jobfield 5 ExitCode -> 2:0
jobfield() { timeout 15 scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }
# wait_done ID SECS: wait until the job has ended for good; 1 on timeout
wait_done() {
    n=$(($2 * 5))
    while [ $n -gt 0 ]; do
        case $(jobstate "$1") in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|PREEMPTED|BOOT_FAIL|DEADLINE) return 0;; esac
        sleep 0.2; n=$((n - 1))
    done
    return 1
}
# wait_grep FILE PATTERN SECS [ID]: wait until FILE has a line matching
# PATTERN (ERE); 1 on timeout, or as soon as job ID has ended without it
wait_grep() {
    n=$(($3 * 5))
    while [ $n -gt 0 ]; do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        if [ -n "${4:-}" ] && [ $((n % 10)) -eq 0 ]; then
            case $(jobstate "$4") in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL) grep -qE "$2" "$1"; return;; esac
        fi
        sleep 0.2; n=$((n - 1))
    done
    return 1
}
# same A B: byte-identical checkpoints (every file)
same() { [ -f "$1/model.safetensors" ] && diff -r "$1" "$2" >/dev/null; }
# the README's Slurm job script (the first sh block after the paragraph that
# starts "Slurm (`tests/test_slurm.sh`"; a line that merely starts with
# "Slurm" elsewhere must not move the anchor), with this
# test's recipe, dataset and binary: readme_job FILE [RECIPE]
readme_job() {
    awk '/^Slurm \(`tests\/test_slurm\.sh`/ {s = 1} s && /^```sh/ {p = 1; next} p && /^```/ {exit} p' README.md |
        sed -e "s|recipes/w4a16.json|${2:-recipes/stories260k-w4a16.json}|" \
            -e "s|calib.jsonl|data/tinystories_sample.txt|" -e "s|build/doneshot|$BIN|" >"$1"
    grep -q "^srun .*$BIN" "$1"
}
# after_resume FILE SECS: wait until the run that resumed last in FILE has done a layer
after_resume() {
    wait_grep "$1" "resuming after layer [0-9]+/" "$2" || return 1
    n=$(grep -o "resuming after layer [0-9]*" "$1" | tail -1 | grep -o "[0-9]*$")
    wait_grep "$1" "^doneshot: layer $((n + 1))/" "$2"
}
# doneshot_pids ID: the doneshot processes of job ID (scontrol listpids)
doneshot_pids() {
    for p in $(timeout 15 scontrol listpids "$1" 2>/dev/null | awk 'NR > 1 {print $1}'); do
        grep -qx doneshot /proc/$p/comm 2>/dev/null && echo $p
    done
}
# submit ARGS...: sbatch --parsable, prints the job id
submit() { timeout 30 sbatch --parsable "$@" | cut -d';' -f1; }
# run_job SECS ARGS...: submit, wait (polling scontrol: sbatch --wait polls
# every few seconds), exit with the job's exit code (1 if it did not end)
run_job() {
    rj_s=$1; shift
    rj_id=$(submit "$@") && [ -n "$rj_id" ] && wait_done "$rj_id" "$rj_s" || return 1
    rj_ec=$(jobfield "$rj_id" ExitCode)
    [ "$rj_ec" = "0:0" ] && [ "$(jobstate "$rj_id")" = COMPLETED ] && return 0
    return $(( ${rj_ec%%:*} > 0 ? ${rj_ec%%:*} : 1 ))
}
R="--recipe recipes/stories260k-w4a16.json --dataset data/tinystories_sample.txt"

# ---- the README script, 2 tasks, as written -------------------------------
readme_job $T/job.sh && ok || fail "no srun line in the README's Slurm script: $(cat $T/job.sh)"
timeout -k 10 120 $MPIRUN -np 2 $BIN $R --model data/stories260K --output $T/ref -q >$T/ref.log 2>&1 \
    || fail "mpirun -np 2 reference: $(tail -3 $T/ref.log)"
MODEL=data/stories260K OUT=$T/readme timeout -k 10 120 sbatch --wait --ntasks=2 --cpus-per-task=1 \
    -o $T/readme.out $T/job.sh >/dev/null 2>$T/sbatch.err; rc=$?
[ $rc -eq 0 ] && grep -q "ranks 2 " $T/readme.out && ok \
    || fail "README script under sbatch --wait -n 2: exit $rc, want 0 with 2 ranks: $(tail -5 $T/readme.out $T/sbatch.err)"
same $T/ref $T/readme && ok || fail "srun checkpoint differs from mpirun -np 2's"

# mpirun inside the allocation
sed "s|^srun --mpi=pmix |mpirun |" $T/job.sh >$T/job-mpirun.sh
MODEL=data/stories260K OUT=$T/inalloc run_job 120 --ntasks=2 --cpus-per-task=1 -o $T/inalloc.out $T/job-mpirun.sh
rc=$?
[ $rc -eq 0 ] && grep -q "ranks 2 " $T/inalloc.out && same $T/ref $T/inalloc && ok \
    || fail "mpirun inside the allocation: exit $rc, want 0, 2 ranks, the same checkpoint: $(tail -5 $T/inalloc.out)"

# local ranks: what each task sees, and what doneshot's CUDA engine reads
if [ -x $BUILD/doneshot-emul ] && [ -x $BUILD/gen_model ]; then
    $BUILD/gen_model --out $T/bf16 --hidden 64 --intermediate 172 --layers 2 --heads 8 --kv-heads 4 --vocab 512 \
        --dtype bf16 --tokenizer-from data/stories260K --seed 1 >/dev/null 2>&1
    BUILD=$BUILD MODEL=$T/bf16 OUT=$T/emul run_job 120 --ntasks=2 --cpus-per-task=1 -o $T/ranks.out tests/slurm/ranks.sh
    rc=$?
    [ $rc -eq 0 ] && ok || fail "tests/slurm/ranks.sh: exit $rc: $(tail -5 $T/ranks.out)"
    grep -q "probe srun task=1 slurm_localid=1 ompi_local=unset" $T/ranks.out \
        && grep -q "probe srun task=0 slurm_localid=0 ompi_local=unset" $T/ranks.out \
        && grep -q "local rank 0 (from SLURM_LOCALID) of 2 ranks on this node" $T/ranks.out \
        && ok || fail "srun: each task's SLURM_LOCALID, doneshot reads it: $(grep -E 'probe|local rank' $T/ranks.out)"
    grep -q "probe mpirun task=1 slurm_localid=0 ompi_local=1" $T/ranks.out \
        && grep -q "local rank 0 (from OMPI_COMM_WORLD_LOCAL_RANK) of 2 ranks on this node" $T/ranks.out \
        && ok || fail "mpirun in the allocation: OMPI_COMM_WORLD_LOCAL_RANK first: $(grep -E 'probe|local rank' $T/ranks.out)"
else
    echo "SKIP local ranks: $BUILD/doneshot-emul or $BUILD/gen_model missing"
fi

# ---- a bad recipe: exit code 2, the message in the output file ------------
readme_job $T/bad.sh recipes/w4a16.json
id=$(MODEL=data/stories260K OUT=$T/bad submit -o $T/bad.out --ntasks=2 --cpus-per-task=1 $T/bad.sh)
wait_done "$id" 60; st=$(jobstate "$id"); ec=$(jobfield "$id" ExitCode)
[ "$st" = FAILED ] && [ "$ec" = "2:0" ] && ok || fail "bad recipe: job $id $st ExitCode=$ec, want FAILED 2:0"
grep -q "error: group_size 128 does not divide" $T/bad.out && ok || fail "bad recipe: no message in the output: $(head -3 $T/bad.out)"
MODEL=data/stories260K OUT=$T/bad timeout -k 10 120 sbatch --wait --ntasks=2 --cpus-per-task=1 -o $T/bad2.out \
    $T/bad.sh >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] && [ ! -e $T/bad ] && ok || fail "bad recipe: sbatch --wait exit $rc, want 2, no output"

# ---- a real time limit, a requeue, a hard scancel, a resubmission ---------
# slurmctld checks time limits every 30 s, so --time=1 --signal=USR1@50 sends
# SIGUSR1 10 to 40 s into the run. To have it arrive mid-run whatever the
# machine's speed, the ranks are stopped (SIGSTOP) once their signal handlers
# are in place (the "starting from the first layer" line, 1-2 s in):
# slurmstepd sends SIGCONT with the signal, so they wake up to SIGUSR1 and stop
# at the next layer boundary. The uninterrupted reference runs meanwhile.
M=$T/m12
$BUILD/gen_model --out $M --hidden 384 --intermediate 1024 --layers 12 --heads 6 --kv-heads 2 --vocab 512 \
    --dtype f32 --tokenizer-from data/stories260K --seed 3 >/dev/null 2>&1
t1=$(date +%s)
id=$(MODEL=$M OUT=$T/tl submit -o $T/tl.out --ntasks=2 --cpus-per-task=1 --time=1 --signal=USR1@50 $T/job.sh)
wait_grep $T/tl.out "starting from the first layer" 60 "$id"
ranks=$(doneshot_pids "$id")
for p in $ranks; do kill -STOP $p; done
timeout -k 10 300 $MPIRUN -np 2 $BIN $R --model $M --output $T/mref -q >$T/mref.log 2>&1 &
bg=$!
if wait_grep $T/tl.out "stopped on SIGUSR1 after layer" 60 "$id"; then
    ok
    echo "time limit: SIGUSR1 $(($(date +%s) - t1)) s after the submission: $(grep -o 'stopped on SIGUSR1 after layer [0-9/]*' $T/tl.out)"
    # the requeued run is to be killed, not signalled again: a longer limit
    timeout 15 scontrol update JobId="$id" TimeLimit=10 || fail "scontrol update TimeLimit"
    # the requeued run resumes; once it has done a layer, SIGKILL its ranks
    # (as a crash, a lost node or the end of KillWait does; a plain scancel
    # sends SIGTERM first, and even scancel --signal=KILL cancels the job that way)
    wait_grep $T/tl.out "resuming after layer" 60 && ok || fail "time limit: no requeued run resumed: $(tail -5 $T/tl.out)"
    after_resume $T/tl.out 60
    [ "$(jobfield "$id" Restarts)" -ge 1 ] 2>/dev/null && ok || fail "time limit: Restarts=$(jobfield "$id" Restarts), want >= 1"
    ranks=$(doneshot_pids "$id")
    k=0
    for p in $ranks; do kill -KILL $p && k=$((k + 1)); done
    [ $k -eq 2 ] && ok || fail "SIGKILL: found $k doneshot processes of job $id, want 2"
    wait_done "$id" 60 && ok || fail "SIGKILL: job $id still $(jobstate "$id")"
    [ ! -e $T/tl ] && [ -d $T/tl.partial ] && ok || fail "SIGKILL: the output path exists, or no partial run: $(ls -d $T/tl*)"
    echo "SIGKILL: job $id $(jobstate "$id") ExitCode=$(jobfield "$id" ExitCode) Restarts=$(jobfield "$id" Restarts); left: $(ls -a $T | grep tl.partial | tr '\n' ' ')"
    # a second sbatch of the same script resumes (the killed run's lock does not
    # block it); a plain scancel (SIGTERM, SIGKILL after KillWait) once it has
    # done a layer: a resume point at the next layer boundary
    id=$(MODEL=$M OUT=$T/tl submit -o $T/tl2.out --ntasks=2 --cpus-per-task=1 $T/job.sh)
    wait_grep $T/tl2.out "resuming after layer" 60 && ok \
        || fail "resubmitted after a SIGKILL: no resume: $(grep -E 'error|resum' $T/tl2.out | head -3)"
    after_resume $T/tl2.out 60
    timeout 10 scancel "$id"
    wait_done "$id" 60
    [ "$(jobstate "$id")" = CANCELLED ] && grep -q "stopped on SIGTERM after layer" $T/tl2.out && [ ! -e $T/tl ] && ok \
        || fail "scancel: job $id $(jobstate "$id"), want CANCELLED, a SIGTERM resume point, no output: $(tail -3 $T/tl2.out)"
    # and a third run finishes
    MODEL=$M OUT=$T/tl run_job 180 --ntasks=2 --cpus-per-task=1 -o $T/tl3.out $T/job.sh
    rc=$?
    [ $rc -eq 0 ] && grep -q "resuming after layer" $T/tl3.out && ok \
        || fail "resubmitted after scancel: exit $rc, want 0 and a resume: $(grep -E 'error|resum' $T/tl3.out | head -3)"
    wait $bg; rc=$?; bg=""
    [ $rc -eq 0 ] || fail "uninterrupted reference: exit $rc: $(tail -3 $T/mref.log)"
    same $T/mref $T/tl && ok || fail "time limit + requeue + scancel + resubmit: checkpoint differs from an uninterrupted run"
    [ ! -e $T/tl.partial ] && [ ! -e $T/tl.partial.lock ] && ok || fail "partial run or lock left behind: $(ls -d $T/tl*)"
    echo "time limit, requeue, scancel, resubmit: $(($(date +%s) - t1)) s"
else
    for p in $ranks; do kill -CONT $p 2>/dev/null; done
    fail "time limit: no SIGUSR1 stop within 60 s (job $id $(jobstate "$id")): $(tail -5 $T/tl.out)"
fi
echo "total $(($(date +%s) - t0)) s"
echo "$P passed, $F failed"
[ "$F" -eq 0 ]
