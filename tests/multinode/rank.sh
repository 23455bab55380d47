#!/bin/sh
# tests/multinode/rank.sh CMD...: what each rank of tests/test_multinode.sh
# runs around doneshot. Writes $MN_LOG/rank-R.txt ("rank R local L host H
# netns NS": the world rank and Open MPI's local rank this process got, the
# node it runs on), then runs CMD. With MN_RO=DIR, every rank but 0 runs in
# a mount namespace of its own where DIR is read-only: a write there by any
# other rank fails (EROFS).
r=${OMPI_COMM_WORLD_RANK:-x}
echo "rank $r local ${OMPI_COMM_WORLD_LOCAL_RANK:-unset} host $(hostname) netns $(ip netns identify $$)" \
    >"$MN_LOG/rank-$r.txt"
if [ -n "${MN_RO:-}" ] && [ "$r" != 0 ]; then
    exec unshare --mount --propagation private sh -c \
        'mount --bind "$MN_RO" "$MN_RO" && mount -o remount,bind,ro "$MN_RO" && exec "$@"' sh "$@"
fi
exec "$@"
