# tests/lib.sh - the common preamble of the shell tests, sourced after DS
# (the doneshot binary) is set: Open MPI as root and oversubscribed, the
# counters with pass/fail/skip, a temp dir $TMP removed at exit, and a
# failure line when DS is not built.
if [ "$(id -u)" = 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_rmaps_base_oversubscribe=1
P=0; F=0; S=0
pass() { echo "ok   $1"; P=$((P + 1)); }
fail() { echo "FAIL $1"; F=$((F + 1)); }
skip() { echo "SKIP $1"; S=$((S + 1)); }
TMP=$(mktemp -d)
[ -n "${KEEP:-}" ] && echo "work dir: $TMP" || trap 'rm -rf "$TMP"' EXIT

if [ ! -x "$DS" ]; then
    echo "FAIL $DS not built"; echo "0 passed, 1 failed, 0 skipped"; exit 1
fi
