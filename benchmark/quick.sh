#!/usr/bin/env bash
# A quick comparison sized for a 2-core machine: all three scripts and SB3's SAC at equal budgets
# (Hopper-v4, 20k steps, 5k learning starts, 2 seeds, evaluation every 5k steps over 5 episodes),
# two runs at a time with one thread each, then the report in runs/quick/report/.
# 8 runs, 4 after one another on each core; GMM goes first as the slowest per step (it scores
# many sampled actions per state). Watch the sweep's ETA line; RUN_ARGS="--total-timesteps 15000"
# changes the budget for every script alike.
#   bash benchmark/quick.sh
source "$(dirname "$0")/common.sh"
QUICK=(--env-ids Hopper-v4 --seeds 1 2 --output-dir runs/quick --workers 2 --threads 1)
BUDGET=(--total-timesteps 20000 --learning-starts 5000 --eval-every 5000 --eval-episodes 5 "${RUN_ARGS_ARRAY[@]}")
status=0
"$PYTHON" benchmark/sweep.py --scripts gmm_density_matching.py sac_continuous.py benchmark/sb3_sac.py \
    "${QUICK[@]}" "$@" -- "${BUDGET[@]}" || status=$?
"$PYTHON" benchmark/sweep.py --scripts posac_jko.py "${QUICK[@]}" "$@" \
    -- "${BUDGET[@]}" --num-actors 2 --w2-weights 0.0 0.1 --random-steps 5000 || status=$?  # its default is 10,000
if [[ " $* " != *" --dry-run "* ]]; then
    "$PYTHON" benchmark/report.py --paths runs/quick --out-dir runs/quick/report
fi
exit "$status"
