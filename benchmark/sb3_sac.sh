#!/usr/bin/env bash
# Stable-Baselines3's SAC (benchmark/sb3_sac.py) on the same MuJoCo v4 set: 1M steps, 3 seeds.
#   bash benchmark/sb3_sac.sh --workers 2
source "$(dirname "$0")/common.sh"
mujoco_sweep benchmark/sb3_sac.py "$@"
