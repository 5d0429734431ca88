#!/usr/bin/env bash
# Run by train.sbatch / eval.sbatch as one SLURM task per node (srun --ntasks-per-node=1): starts this node's
# GPUS_PER_NODE ranks with the DeepSpeed launcher in --no_ssh mode, all nodes meeting at MASTER_ADDR:MASTER_PORT.
#   usage: node_launch.sh ENTRY [entry args ...]     (env: GPUS_PER_NODE, MASTER_PORT, from the sbatch script)
set -euo pipefail
entry=$1; shift

# Master = first host of the allocation. Slurm reaches nodes at their NodeAddr, so the other nodes can too; it
# equals the host name on most clusters (and is 127.0.0.1 on the one-machine test cluster, whose names don't resolve).
master_host=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
master_addr=$(scontrol show node "$master_host" | grep -oP '\bNodeAddr=\K\S+' || true)
master_addr=${master_addr:-$master_host}

# DeepSpeed only goes multi-node with a hostfile (without one it pins itself to localhost). With --no_ssh the host
# names are just keys: the file fixes the node order (= SLURM_NODEID order) and the ranks per node.
hostfile=$(mktemp "${TMPDIR:-/tmp}/ds-hostfile.$SLURM_JOB_ID.XXXXXX")
trap 'rm -f "$hostfile"' EXIT
scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/\$/ slots=$GPUS_PER_NODE/" > "$hostfile"

if [[ $SLURM_NODEID == 0 ]]; then
  echo "[node_launch] $SLURM_JOB_NUM_NODES nodes x $GPUS_PER_NODE ranks," \
       "master $master_host ($master_addr:$MASTER_PORT), entry $entry" >&2
fi
# RANKS_STOP_ON_SIGNAL=1 (train.sbatch): stop signals (SIGUSR1 from train.sbatch, SIGTERM from SLURM) are for the
# ranks, which finish their step, save a checkpoint and exit 75. Ignored here, they are also ignored by the DeepSpeed
# launcher processes started below (they inherit the disposition; the ranks install their own handlers), so no
# launcher dies before its ranks and the ranks' status reaches srun. (DeepSpeed's per-node launcher installs its own
# SIGTERM handler all the same: a direct SIGTERM gives the ranks 30 s before it kills them and exits 1.)
if [[ ${RANKS_STOP_ON_SIGNAL:-0} == 1 ]]; then trap '' USR1 TERM; fi
# Not exec: the trap removes the hostfile afterwards; srun signals the whole step on cancel.
deepspeed --hostfile "$hostfile" --no_ssh --node_rank "$SLURM_NODEID" --num_nodes "$SLURM_JOB_NUM_NODES" \
  --num_gpus "$GPUS_PER_NODE" --master_addr "$master_addr" --master_port "$MASTER_PORT" --no_local_rank \
  "$entry" "$@"
