#!/bin/sh
# Testing aid for tests/test_slurm.sh: while the file named by $DS_SLOW
# exists, run the command with all of the node's ranks on CPU 0 (same
# numerics, several times slower), so that a run outlasts Slurm's first
# time-limit check and receives --signal's SIGUSR1 mid-run.
if [ -n "${DS_SLOW:-}" ] && [ -e "$DS_SLOW" ] && command -v taskset >/dev/null 2>&1; then
    exec taskset -c 0 "$@"
fi
exec "$@"
