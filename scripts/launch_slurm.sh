#!/usr/bin/env bash
# Multi-node launch on Slurm. Every node must see the same repository and output folder (a shared filesystem).
#
# The whole pipeline (dSFT -> AIF -> dDPO -> eval) from one job:
#   sbatch --nodes=4 scripts/launch_slurm.sh run recipes/zephyr-7b-beta [zephyr run options...]
# `zephyr run` runs on the first node and starts each stage there: training stages with one `accelerate launch`
# per node (srun, rendezvous on the first node), AIF as one prompt shard per node (`--shard i/n`) then merged,
# eval on the first node. A rerun of the job resumes where it stopped.
#
# One training stage:
#   sbatch --nodes=2 scripts/launch_slurm.sh dpo recipes/zephyr-7b-beta/dpo/config_full.yaml zero3 [overrides...]
#
# STAGE: a training stage (sft, dpo, orpo, simpo, kto, rm: the table in zephyr/stages/__init__.py). CONFIG: a file or a name in accelerate_configs/. GPUS_PER_NODE (default 8) sets the process
# count: the global batch is per_device_train_batch_size x gradient_accumulation_steps x nodes x GPUS_PER_NODE,
# all taken from the recipe (the DeepSpeed section of the accelerate config leaves them to it, so they cannot
# disagree). Only rank 0 writes the final model, metrics and dashboard logs.
#
# Preemption and time limits: SIGTERM makes every rank finish its step, save a checkpoint and exit; resubmitting
# (or `--requeue`, which reruns this same script) resumes from it. --signal asks for that SIGTERM 5 minutes before
# the time limit, and the launcher waits up to TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds for the ranks to save.
#SBATCH --job-name=zephyr
#SBATCH --signal=TERM@300
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --exclusive
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

NODES=${SLURM_NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-600}

if [ "${1:-}" = run ]; then
  [ $# -ge 2 ] || { echo "usage: sbatch --nodes=N $0 run PIPELINE [zephyr run options...]" >&2; exit 2; }
  echo "zephyr: pipeline $2 on $NODES node(s) x $GPUS_PER_NODE processes, rendezvous at $MASTER_ADDR:$MASTER_PORT"
  export ZEPHYR_SLURM_NODES=$NODES ZEPHYR_GPUS_PER_NODE=$GPUS_PER_NODE ZEPHYR_MASTER_ADDR=$MASTER_ADDR \
    ZEPHYR_MASTER_PORT=$MASTER_PORT
  exec python -m zephyr.cli run "${@:2}"
fi

if [ $# -lt 3 ]; then
  echo "usage: sbatch --nodes=N $0 STAGE RECIPE CONFIG [overrides...]   or   $0 run PIPELINE [options...]" >&2
  exit 2
fi
STAGE=$1 RECIPE=$2 CONFIG=$3
shift 3
TRAINING=$(python -c 'from zephyr.stages import training_stages; print(" ".join(training_stages()))')
case " $TRAINING " in *" $STAGE "*) ;; *) echo "STAGE must be a training stage ($TRAINING), got $STAGE" >&2; exit 2 ;; esac
[ -f "$CONFIG" ] || CONFIG="accelerate_configs/${CONFIG%.yaml}.yaml"
[ -f "$CONFIG" ] || { echo "accelerate config not found: $CONFIG" >&2; exit 2; }

echo "zephyr: $STAGE on $NODES node(s) x $GPUS_PER_NODE processes, rendezvous at $MASTER_ADDR:$MASTER_PORT"

# Single quotes: SLURM_PROCID (the node rank) is expanded on each node by srun's shell, not here.
srun --kill-on-bad-exit=1 bash -c 'accelerate launch \
  --config_file "$0" --num_machines "$1" --num_processes "$(($1 * $2))" --machine_rank "$SLURM_PROCID" \
  --main_process_ip "$3" --main_process_port "$4" --rdzv_backend c10d --max_restarts 0 ${ACCELERATE_EXTRA_ARGS:-} \
  -m zephyr.cli "$5" "${@:6}"' "$CONFIG" "$NODES" "$GPUS_PER_NODE" "$MASTER_ADDR" "$MASTER_PORT" "$STAGE" \
  "$RECIPE" "$@"
