#!/bin/bash
# Multi-node launch without SLURM: run this script once on every node (same arguments), e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash scripts/torchrun_example.sh   # on node0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 bash scripts/torchrun_example.sh   # on node1
# Single node: NNODES=1 (MASTER_ADDR defaults to localhost).
#
# torchrun (python -m torch.distributed.run) starts one process per GPU and sets RANK/LOCAL_RANK/WORLD_SIZE; Lightning detects it
# (TorchElasticEnvironment) and does not spawn processes itself. trainer.num_nodes/devices must
# match --nnodes/--nproc_per_node. Resume after a failure: run the same command again
# (--ckpt_path last picks up <log_dir>/checkpoints/last.ckpt; nothing is lost but the steps
# since the last checkpoint).
#
# CPU smoke test of the same path (2 processes, gloo):
#   NNODES=1 GPUS=2 STRATEGY=configs/trainer/fsdp_cpu.yaml RUN=configs/diffusion/demo.yaml \
#       bash scripts/torchrun_example.sh --trainer.max_steps 20
set -euo pipefail

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
GPUS=${GPUS:-8}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-29500}
RUN=${RUN:-configs/diffusion/lightningdit_xl1_vfmvae.yaml}
STRATEGY=${STRATEGY:-configs/trainer/fsdp_bf16.yaml}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m lightning_modules fit \
    --config "$RUN" \
    --config "$STRATEGY" \
    --trainer.num_nodes "$NNODES" \
    --trainer.devices "$GPUS" \
    --ckpt_path last \
    "$@"
