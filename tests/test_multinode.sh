#!/bin/sh
# Multi-node: a 2-node job on this machine. Two network namespaces joined by
# a veth pair (10.231.0.1 and 10.231.0.2, addresses that exist only inside
# them) are the nodes A and B; Open MPI runs over TCP only (btl tcp,self, OOB
# and BTL restricted to the veth subnet), mpirun runs on node A and starts
# node B's daemon through tests/multinode/agent.sh (enters B's namespace
# instead of ssh); a hostfile puts ranks 0-1 on A and 2-3 on B. Each node has
# a mount and host name of its own (tests/multinode/node.sh): the model path
# $T/node/model is on each node that node's own copy (bind mount); the rest of
# the filesystem, the output included, is shared as on a cluster.
# It shows:
# - ranks 0,1 on node A and 2,3 on node B with local ranks 0,1 on each node
#   (what each rank got, tests/multinode/rank.sh), and the CUDA engine's -v
#   line (emulated engine): OMPI_COMM_WORLD_LOCAL_RANK, 2 ranks on the node
# - the same checkpoint (int codes, scales, config.json) as a 1-node -np 4 run
# - the Hessians cross the veth pair: node B's interface moves more bytes
#   than one full set of the model's Hessians (a lower bound for any reduce)
# - only rank 0 writes the output: ranks 1-3 run with the output's directory
#   mounted read-only (a run with resume points shows such a write fails)
# - each node reads the model itself: without node B's copy the job fails
#   with exit 3 and a message naming a rank of node B and the path
# - resume state on the shared filesystem: stop after layer 2 and --resume
#   across the 2 nodes gives the same checkpoint
# - kill -9 of a rank on node B: mpirun exits non-zero within seconds with a
#   message naming the rank and the signal, no output, nothing left running
# Skips (SKIP line, then "0 passed, 0 failed, 1 skipped") without root,
# iproute2, unshare or Open MPI, or when the namespaces or the launcher
# cannot start. About 45 s on 2 cores. MN_KEEP=1 keeps the temp dir (logs).
# Last line: "N passed, N failed".
BUILD=${BUILD:-build}
MPIRUN=${MPIRUN:-mpirun --oversubscribe}
BIN=$BUILD/doneshot
P=0; F=0
ok() { P=$((P + 1)); }
fail() { echo "FAIL $1"; F=$((F + 1)); }
skip() { echo "SKIP multinode: $1"; echo "0 passed, 0 failed, 1 skipped"; exit 0; }

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
[ -x "$BIN" ] || skip "$BIN not built"
[ "$(id -u)" -eq 0 ] || skip "needs root (network namespaces, bind mounts)"
for c in ip unshare mount mpirun timeout; do
    command -v $c >/dev/null 2>&1 || skip "$c not found (iproute2, util-linux, Open MPI)"
done
mpirun --version 2>/dev/null | grep -q "Open MPI" || skip "mpirun is not Open MPI (the launcher agent is Open MPI's plm_rsh_agent)"

D=$(cd "$(dirname "$0")/multinode" && pwd)
NSA=ds-mnA-$$ NSB=ds-mnB-$$
T=$(mktemp -d /tmp/ds-multinode.XXXXXX) || skip "mktemp failed"
bg=""
cleanup() {
    [ -n "$bg" ] && kill -9 $bg 2>/dev/null
    for ns in $NSA $NSB; do
        for p in $(ip netns pids $ns 2>/dev/null); do kill -9 $p 2>/dev/null; done
    done
    ip netns del $NSA 2>/dev/null; ip netns del $NSB 2>/dev/null # the veth pair goes with them
    [ -n "${MN_KEEP:-}" ] || rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the two nodes ---------------------------------------------------------
ip netns add $NSA 2>$T/err && ip netns add $NSB 2>>$T/err \
    && ip link add dsmnA$$ type veth peer name dsmnB$$ 2>>$T/err \
    && ip link set dsmnA$$ netns $NSA && ip link set dsmnB$$ netns $NSB \
    && ip -n $NSA addr add 10.231.0.1/24 dev dsmnA$$ && ip -n $NSB addr add 10.231.0.2/24 dev dsmnB$$ \
    && ip -n $NSA link set dsmnA$$ up && ip -n $NSB link set dsmnB$$ up \
    && ip -n $NSA link set lo up && ip -n $NSB link set lo up 2>>$T/err \
    || skip "cannot create network namespaces and a veth pair: $(head -2 $T/err)"
mkdir -p $T/node $T/nodeA $T/nodeB $T/shared $T/log
printf '10.231.0.1 %s nodeA\n10.231.0.2 %s nodeB\n' $NSA $NSB >$T/hosts
printf '10.231.0.1 slots=2\n10.231.0.2 slots=2\n' >$T/hostfile
export MN_ROOT=$T MN_HOSTS=$T/hosts MN_LOG=$T/log
MCA="--mca plm_rsh_agent $D/agent.sh --mca plm_rsh_no_tree_spawn 1 --mca btl tcp,self \
--mca btl_tcp_if_include 10.231.0.0/24 --mca oob_tcp_if_include 10.231.0.0/24"
# mn SECS CMD...: CMD on the 2 nodes (mpirun on node A), ranks 0-1 on A, 2-3 on B
mn() {
    secs=$1; shift
    timeout -k 10 $secs ip netns exec $NSA sh $D/node.sh nodeA \
        "exec mpirun --hostfile $T/hostfile -np 4 $MCA $D/rank.sh $*"
}
R="--recipe recipes/stories260k-w4a16.json"
# q SECS OUT ARGS...: doneshot on the 2 nodes, the model of each node, log in OUT.log
q() { secs=$1; out=$2; shift 2; mn $secs $BIN $R --model $T/node/model --output $out "$@" >$out.log 2>&1; }
same() { $BUILD/ckpt_diff "$1" "$2" 1.0 >/dev/null && cmp -s "$1/config.json" "$2/config.json"; }
cfg() { grep -o "\"$2\": *[0-9]*" "$1" | grep -o "[0-9]*$"; } # cfg CONFIG KEY: an integer
# one f64 Hessian per distinct module input of a layer (q/k/v, o, gate/up: hidden; down: intermediate)
hessian_bytes() {
    h=$(cfg $1 hidden_size); m=$(cfg $1 intermediate_size); l=$(cfg $1 num_hidden_layers)
    echo $((l * (3 * h * h + m * m) * 8))
}
nsbytes() { # rx + tx bytes of node B's end of the veth pair
    ip netns exec $NSB cat /sys/class/net/dsmnB$$/statistics/rx_bytes /sys/class/net/dsmnB$$/statistics/tx_bytes \
        | awk '{s += $1} END {print s + 0}'
}

ip netns exec $NSA sh $D/node.sh nodeA true 2>$T/err || skip "cannot make a mount/UTS namespace in a network namespace: $(head -2 $T/err)"
t0=$(date +%s)
mn 30 sh -c "'echo probe \$OMPI_COMM_WORLD_RANK'" >$T/probe.log 2>&1
[ "$(grep -c '^probe' $T/probe.log)" -eq 4 ] || skip "Open MPI cannot start the 2-node job through $D/agent.sh: $(tail -5 $T/probe.log)"

# ---- 1 node vs 2 nodes -----------------------------------------------------
# each node its own copy, made at different times (plain cp: other mtimes):
# a resume takes the model's identity from rank 0 and checks only that every
# other rank sees the same bytes
cp -r data/stories260K $T/nodeA/model && sleep 1 && cp -r data/stories260K $T/nodeB/model
timeout -k 10 120 $MPIRUN -np 4 $BIN $R --output $T/ref >$T/ref.log 2>&1 && ok || fail "1-node -np 4: $(tail -3 $T/ref.log)"

rm -f $T/log/*
b0=$(nsbytes)
MN_RO=$T/shared q 120 $T/shared/out -v; rc=$?
b1=$(nsbytes)
[ $rc -eq 0 ] && grep -q "| ranks 4 |" $T/shared/out.log && ok || fail "2 nodes, -np 4: exit $rc: $(tail -5 $T/shared/out.log)"
same $T/ref $T/shared/out && ok || fail "2 nodes: checkpoint differs from the 1-node -np 4 run"
want="rank 0 local 0 host nodeA netns $NSA|rank 1 local 1 host nodeA netns $NSA|rank 2 local 0 host nodeB netns $NSB|rank 3 local 1 host nodeB netns $NSB"
got=$(cat $T/log/rank-0.txt $T/log/rank-1.txt $T/log/rank-2.txt $T/log/rank-3.txt 2>/dev/null | paste -sd'|')
[ "$got" = "$want" ] && ok || fail "ranks per node and local ranks: got '$got', want '$want'"
hb=$(hessian_bytes data/stories260K/config.json)
[ $((b1 - b0)) -gt "$hb" ] && ok || fail "node B's veth moved $((b1 - b0)) bytes, fewer than one set of Hessians ($hb)"
echo "2-node run: $((b1 - b0)) bytes over the veth pair (one set of Hessians: $hb bytes)"
# only rank 0 writes: ranks 1-3 saw $T/shared read-only, and the run above
# passed; the same mount makes a run with resume points (each rank writes its
# own state) report the failed write, so the mount does bite
! grep -q "Read-only" $T/shared/out.log && [ -f $T/shared/out/config.json ] && ok \
    || fail "ranks 1-3 tried to write under the output's directory: $(grep Read-only $T/shared/out.log | head -2)"
MN_RO=$T/shared q 120 $T/shared/ro --resume-interval 0 --num-samples 8
grep -q "rank [123]: .*Read-only file system" $T/shared/ro.log && ok \
    || fail "the read-only output mount of ranks 1-3 is not in effect: $(grep -i -E 'error|warning' $T/shared/ro.log | head -3)"

# ---- each node reads the model itself --------------------------------------
mv $T/nodeB/model $T/nodeB/model.away
q 60 $T/shared/nomodel; rc=$?
mv $T/nodeB/model.away $T/nodeB/model
[ $rc -eq 3 ] && grep -q "rank [23]: model directory '$T/node/model' does not exist" $T/shared/nomodel.log \
    && [ ! -e $T/shared/nomodel ] && ok \
    || fail "node B without the model: exit $rc (want 3), a message naming rank 2 or 3: $(grep error $T/shared/nomodel.log | head -2)"

# ---- resume state on the shared filesystem ---------------------------------
q 120 $T/shared/res --resume-interval 0 --stop-after-layer 2; rc=$?
n=$(ls $T/shared/res.partial/resume/rank-*.bin 2>/dev/null | wc -l)
[ $rc -eq 1 ] && [ "$n" -eq 4 ] && ok || fail "2 nodes, stop after layer 2: exit $rc (want 1), $n rank files (want 4)"
q 120 $T/shared/res --resume; rc=$?
[ $rc -eq 0 ] && grep -q "resuming after layer 2/5" $T/shared/res.log && same $T/ref $T/shared/res && ok \
    || fail "2 nodes, --resume: exit $rc, or not the 1-node checkpoint: $(tail -3 $T/shared/res.log)"

# ---- local rank as doneshot's CUDA engine reads it (emulated engine) -------
if [ -x $BUILD/doneshot-emul ] && [ -x $BUILD/gen_model ]; then
    $BUILD/gen_model --out $T/bf16 --hidden 64 --intermediate 172 --layers 2 --heads 8 --kv-heads 4 --vocab 512 \
        --dtype bf16 --tokenizer-from data/stories260K --seed 1 >/dev/null 2>&1
    DS_EMUL_DEVICES=2 mn 120 $BUILD/doneshot-emul $R --model $T/bf16 --num-samples 8 --device cuda -v \
        --output $T/shared/emul >$T/emul.log 2>&1; rc=$?
    [ $rc -eq 0 ] && grep -q "local rank 0 (from OMPI_COMM_WORLD_LOCAL_RANK) of 2 ranks on this node" $T/emul.log \
        && ok || fail "emulated CUDA engine on 2 nodes: exit $rc, -v local rank line: $(grep -E 'local rank|error' $T/emul.log)"
else
    echo "SKIP local rank line: $BUILD/doneshot-emul or $BUILD/gen_model missing"
fi

# ---- a rank killed on node B -----------------------------------------------
q 120 $T/shared/kill --num-samples 400 --max-seq-len 512 &
bg=$!
n=0
until grep -q "^doneshot: layer 1/" $T/shared/kill.log 2>/dev/null || [ $n -ge 300 ]; do sleep 0.1; n=$((n + 1)); done
victim=""
for p in $(ip netns pids $NSB); do
    grep -qx doneshot /proc/$p/comm 2>/dev/null && tr '\0' '\n' </proc/$p/environ 2>/dev/null \
        | grep -qx OMPI_COMM_WORLD_RANK=3 && victim=$p
done
if [ -n "$victim" ]; then
    k0=$(date +%s%N)
    kill -9 $victim
    wait $bg; rc=$?
    ms=$((($(date +%s%N) - k0) / 1000000))
    bg=""
    echo "kill -9 of rank 3 on node B: mpirun exited $rc after $ms ms"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $ms -lt 15000 ] && ok || fail "killed rank: exit $rc after $ms ms (want non-zero within 15 s)"
    grep -q "rank 3 .*signal 9" $T/shared/kill.log && ok \
        || fail "killed rank: no message naming rank 3 and signal 9: $(tail -8 $T/shared/kill.log)"
    sleep 1
    left=$(for ns in $NSA $NSB; do ip netns pids $ns; done | wc -l)
    [ ! -e $T/shared/kill ] && [ "$left" -eq 0 ] && ok || fail "killed rank: output exists or $left processes left on the nodes"
else
    fail "no doneshot rank 3 found on node B: $(tail -5 $T/shared/kill.log)"
fi
echo "multinode: $(($(date +%s) - t0)) s"
echo "$P passed, $F failed"
[ $F -eq 0 ]
