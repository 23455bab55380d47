#!/bin/sh
# tests/multinode/agent.sh HOST CMD...: Open MPI's remote launcher for
# tests/test_multinode.sh, in place of ssh (mpirun --mca plm_rsh_agent): runs
# CMD (the orted daemon's command line) inside the network namespace that
# holds the address HOST, through tests/multinode/node.sh. The map comes from
# $MN_HOSTS, lines "ADDRESS NAMESPACE NODE-NAME"; an unknown host is an error,
# as ssh's would be.
host=$1; shift
line=$(grep "^$host " "$MN_HOSTS" 2>/dev/null | head -1)
[ -n "$line" ] || { echo "agent.sh: unknown host $host (not in ${MN_HOSTS:-\$MN_HOSTS})" >&2; exit 255; }
set -- "$(echo "$line" | cut -d' ' -f2)" "$(echo "$line" | cut -d' ' -f3)" "$*"
exec ip netns exec "$1" sh "$(dirname "$0")/node.sh" "$2" "$3"
