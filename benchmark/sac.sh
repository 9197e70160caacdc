#!/usr/bin/env bash
# sac_continuous.py on HalfCheetah, Hopper, Walker2d, Ant, Humanoid (v4): 1M steps, 3 seeds.
#   bash benchmark/sac.sh --workers 2            # this machine
#   bash benchmark/sac.sh --slurm --slurm-partition cpu
source "$(dirname "$0")/common.sh"
mujoco_sweep sac_continuous.py "$@"
