#!/bin/sh
# tests/multinode/node.sh NAME CMD: run CMD (one shell command line) as if on
# the "node" NAME of tests/test_multinode.sh. Run it inside the node's network
# namespace (ip netns exec). It takes a private mount and UTS namespace
# (unshare), sets the host name to NAME and bind-mounts the node's own
# directory $MN_ROOT/NAME on $MN_ROOT/node: a path under $MN_ROOT/node (the
# model) is on each node that node's own file, found only through this mount
# (in the root namespace $MN_ROOT/node is empty), like a node-local disk. The
# rest of the filesystem is shared, as a cluster's shared filesystem is.
# The mounts vanish with the node's last process.
[ -n "$MN_ROOT" ] && [ $# -ge 2 ] || { echo "usage: MN_ROOT=DIR $0 NAME CMD" >&2; exit 2; }
name=$1; shift
exec unshare --mount --uts --propagation private sh -c '
    hostname "$1" && mount --bind "$MN_ROOT/$1" "$MN_ROOT/node" || exit 1
    exec sh -c "$2"' sh "$name" "$*"
