#!/bin/sh
# Run the libFuzzer targets built by `make fuzz` (see docs/FUZZING.md).
#   run.sh smoke T...   every committed input of corpus/T and regressions/T once (no fuzzing)
#   run.sh ci T...      fuzz each target FUZZ_SECONDS (default 60) s, or FUZZ_RUNS executions
#                       when set; new inputs go to $FUZZ_BUILD/work/T (the repo corpus is
#                       read-only here), crashes to $FUZZ_BUILD/crashes/T/
#   run.sh merge T...   add to corpus/T the inputs of $FUZZ_BUILD/work/T (up to
#                       FUZZ_MERGE_MAX_KB, 8, KB each) that add coverage (-merge=1)
# Limits: -rss_limit_mb=2048, -malloc_limit_mb=512 (one allocation above it is a
# finding), -timeout=30 s per input (wall clock: a starved machine can trip it). FUZZ_OPTS adds libFuzzer flags.
# Exit status 1 when any target crashed; a summary line per target is printed:
#   fuzz <target>: <executions> execs, <exec/s> exec/s, <corpus> inputs, ok|CRASH
set -u
mode=$1; shift
B=${FUZZ_BUILD:-build/fuzz}
F=tests/fuzz
LIMITS="-rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=30"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
fail=0
for t in "$@"; do
    bin=$B/fuzz_$t
    mkdir -p "$F/regressions/$t"
    dirs="$F/corpus/$t $F/regressions/$t"
    log=$B/logs/$t.log
    mkdir -p "$B/logs"
    case $mode in
    smoke)
        # files as arguments: each is executed once, nothing is written
        files=$(find $dirs -type f | sort)
        if [ -z "$files" ]; then echo "fuzz $t: no inputs"; continue; fi
        # shellcheck disable=SC2086
        if "$bin" $LIMITS $files >"$log" 2>&1; then
            echo "fuzz-smoke $t: $(echo "$files" | wc -l) inputs ok"
        else
            echo "fuzz-smoke $t: FAILED (log: $log)"; tail -n 30 "$log"; fail=1
        fi ;;
    ci)
        mkdir -p "$B/work/$t" "$B/crashes/$t"
        if [ -n "${FUZZ_RUNS:-}" ]; then budget="-runs=$FUZZ_RUNS"; else budget="-max_total_time=${FUZZ_SECONDS:-60}"; fi
        # shellcheck disable=SC2086
        "$bin" $LIMITS $budget -print_final_stats=1 -artifact_prefix="$B/crashes/$t/" ${FUZZ_OPTS:-} \
            "$B/work/$t" $dirs >"$log" 2>&1
        rc=$?
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
        corp=$(grep -o 'corp: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
        if [ $rc -eq 0 ]; then res=ok; else res="CRASH (log: $log)"; fail=1; fi
        echo "fuzz $t: ${execs:-?} execs, ${eps:-?} exec/s, ${corp:-?} inputs, $res"
        if [ $rc -ne 0 ]; then grep -m1 -A12 '==ERROR\|runtime error\|deadly signal\|fuzz target exited' "$log"; ls "$B/crashes/$t"; fi ;;
    merge)
        # candidates: the inputs fuzz-ci found, up to FUZZ_MERGE_MAX_KB (default 8) KB each so the
        # repo corpus stays small; -merge=1 adds to corpus/T those that add coverage to it (the
        # committed inputs keep their names)
        cand=$B/merge-cand/$t
        rm -rf "$cand"; mkdir -p "$cand" "$B/work/$t"
        find "$B/work/$t" -type f -size -$((${FUZZ_MERGE_MAX_KB:-8} + 1))k -exec cp {} "$cand/" \;
        "$bin" $LIMITS -merge=1 "$F/corpus/$t" "$cand" >"$log" 2>&1 || { echo "merge $t failed (log: $log)"; fail=1; continue; }
        echo "merge $t: $(ls "$F/corpus/$t" | wc -l) inputs, $(du -sk "$F/corpus/$t" | cut -f1) KB" ;;
    *) echo "usage: run.sh smoke|ci|merge TARGET..." >&2; exit 2 ;;
    esac
done
exit $fail
