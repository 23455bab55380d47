#!/bin/sh
# Job script for tests/test_slurm.sh: which local rank each task sees, under
# srun (SLURM_LOCALID) and under mpirun inside the allocation
# (OMPI_COMM_WORLD_LOCAL_RANK; the batch step's SLURM_LOCALID=0 is inherited
# by every rank), and which one doneshot's CUDA engine picks (-v prints it;
# the emulated engine with DS_EMUL_DEVICES=2). Needs BUILD, MODEL, OUT.
probe='echo "probe $1 task=${OMPI_COMM_WORLD_RANK:-$SLURM_PROCID} slurm_localid=${SLURM_LOCALID:-unset} ompi_local=${OMPI_COMM_WORLD_LOCAL_RANK:-unset}"'
run() { # run LAUNCHER...: the emulated CUDA engine on the bf16 model
    DS_EMUL_DEVICES=2 "$@" "$BUILD/doneshot-emul" --recipe recipes/stories260k-w4a16.json --model "$MODEL" \
        --dataset data/tinystories_sample.txt --num-samples 8 --device cuda -v --output "$OUT" --overwrite
}
srun --mpi=pmix sh -c "$probe" sh srun
run srun --mpi=pmix || exit $?
mpirun sh -c "$probe" sh mpirun
run mpirun
