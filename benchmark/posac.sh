#!/usr/bin/env bash
# posac_jko.py on the MuJoCo v4 set as benchmark/posac_sweep.yaml lays it out (seeds, enabled
# environments, 1M steps, 2 actors, per-environment W2 weights or lists of them to sweep).
#   bash benchmark/posac.sh --workers 2
#   bash benchmark/posac.sh --env-ids Hopper-v4 --seeds 1      # a subset of the YAML
source "$(dirname "$0")/common.sh"
"$PYTHON" benchmark/sweep.py --config benchmark/posac_sweep.yaml --output-dir "$MUJOCO_OUT" "$@" -- "${RUN_ARGS_ARRAY[@]}"
