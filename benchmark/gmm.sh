#!/usr/bin/env bash
# gmm_density_matching.py on HalfCheetah, Hopper, Walker2d, Ant, Humanoid (v4): 1M steps, 3 seeds.
#   bash benchmark/gmm.sh --workers 2            # this machine
#   bash benchmark/gmm.sh --slurm --slurm-partition cpu
source "$(dirname "$0")/common.sh"
mujoco_sweep gmm_density_matching.py "$@"
