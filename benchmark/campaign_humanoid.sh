#!/usr/bin/env bash
# The Humanoid-v4 learning-evidence campaign (benchmark/results/humanoid_300k/): 300,000 env steps,
# evaluation every 10,000 steps over 10 deterministic and 10 stochastic episodes on a separately
# seeded env, a checkpoint every 10,000 steps. Five configurations, 10 runs:
#   sac         sac_continuous.py defaults                                  seeds 1 2 3
#   gmm         gmm_density_matching.py defaults (the headline command)     seeds 1 2 3
#   posac       posac_jko.py --num-actors 2 --w2-weights 0.0 0.1 and the source's other settings
#               (its defaults: lr 3e-4, 10,000 random-action steps, fixed alpha 0.2)   seeds 1 2
#   sb3_sac     benchmark/sb3_sac.py defaults (256x256, batch 256, 5,000 learning starts: the
#               sizes of the 100k campaign)                                 seed 1
#   gmm_source  gmm_density_matching.py with the source's sampler (--proposal gaussian
#               --temperature-mode fixed --temperature 1), 100,000 steps    seed 1
# Two lanes of one run at a time, one thread each (so two runs on the two cores): lane A holds the
# SAC-family runs, lane B the three GMM seeds (the slowest per step), about the same core-hours each.
# Resumable: rerun the same command after any interruption; finished runs are skipped, unfinished
# ones resume from their last checkpoint (sweep.py's rule).
#   bash benchmark/campaign_humanoid.sh                   # runs into runs/humanoid_300k
#   CAMPAIGN_OUT=/somewhere bash benchmark/campaign_humanoid.sh
#   python benchmark/report.py --paths runs/humanoid_300k --out-dir benchmark/results/humanoid_300k
# Any arguments go to every sweep.py call (--dry-run prints what would run).
source "$(dirname "$0")/common.sh"
OUT=${CAMPAIGN_OUT:-runs/humanoid_300k}
GRID=(--env-ids Humanoid-v4 --output-dir "$OUT" --workers 1 --threads 1)
EVAL=(--eval-every 10000 --eval-episodes 10 --checkpoint-every 10000)
LONG=(--total-timesteps 300000 "${EVAL[@]}")

# one_run SCRIPT SEED [script flags...]: one run of the campaign (skipped when finished)
one_run() {
    local script=$1 seed=$2
    shift 2
    "$PYTHON" benchmark/sweep.py --scripts "$script" --seeds "$seed" "${GRID[@]}" "${SWEEP_ARGS[@]}" -- "$@"
}
SWEEP_ARGS=("$@")

lane_a() {
    local status=0
    one_run sac_continuous.py 1 "${LONG[@]}" || status=$?
    one_run posac_jko.py 1 "${LONG[@]}" --num-actors 2 --w2-weights 0.0 0.1 || status=$?
    one_run sac_continuous.py 2 "${LONG[@]}" || status=$?
    one_run benchmark/sb3_sac.py 1 "${LONG[@]}" || status=$?
    one_run sac_continuous.py 3 "${LONG[@]}" || status=$?
    one_run posac_jko.py 2 "${LONG[@]}" --num-actors 2 --w2-weights 0.0 0.1 || status=$?
    one_run gmm_density_matching.py 1 --total-timesteps 100000 "${EVAL[@]}" \
        --proposal gaussian --temperature-mode fixed --temperature 1 || status=$?
    return "$status"
}

lane_b() {
    local status=0
    for seed in 1 2 3; do
        one_run gmm_density_matching.py "$seed" "${LONG[@]}" || status=$?
    done
    return "$status"
}

lane_a &
lane_a_pid=$!
lane_b &
lane_b_pid=$!
status=0
wait "$lane_a_pid" || status=$?
wait "$lane_b_pid" || status=$?
exit "$status"
