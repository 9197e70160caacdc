#!/usr/bin/env bash
# The 100k-step learning-evidence campaign (benchmark/results/100k/): Hopper-v4 and HalfCheetah-v4,
# seeds 1 2 3, 100,000 env steps, evaluation every 5,000 steps over 10 deterministic (and 10
# stochastic) episodes on a separately seeded env. Four algorithms:
#   sac      sac_continuous.py defaults
#   sb3_sac  benchmark/sb3_sac.py: SB3's SAC with the same 256x256 networks, batch 256, buffer and
#            5,000 learning starts (SB3's one learning rate, 3e-4, for actor, critics and alpha)
#   posac    posac_jko.py with 2 actors, W2 weights 0.0 0.1, and sac's schedule and temperature
#            (5,000 random steps and learning starts, autotuned alpha); its single lr stays 3e-4.
#            (The runs in benchmark/results/100k/ are made with commit b4c86f9's scripts, where
#            --learning-starts 5000 also set 5,000 random steps: the same settings as the explicit
#            --random-steps 5000 here, but another exp-name hash, so the campaign is finished from
#            that commit: git worktree add ../campaign b4c86f9, copy the committed run folders
#            into its runs/100k, and run this script there.)
#   gmm      gmm_density_matching.py defaults
# Two runs at a time, one thread each; SAC and SB3 first (the comparison the campaign is for),
# GMM last (the slowest per step). Resumable: rerun the same command after any interruption and
# finished runs are skipped, unfinished ones resume from their last checkpoint (every 10k steps).
#   bash benchmark/campaign_100k.sh                       # runs into runs/100k
#   python benchmark/report.py --paths runs/100k --out-dir benchmark/results/100k   (afterwards)
source "$(dirname "$0")/common.sh"
OUT=${CAMPAIGN_OUT:-runs/100k}
GRID=(--env-ids Hopper-v4 HalfCheetah-v4 --output-dir "$OUT" --workers 2 --threads 1)
BUDGET=(--total-timesteps 100000 --eval-every 5000 --eval-episodes 10 --checkpoint-every 10000)
status=0
# seed by seed, so an interrupted campaign leaves whole seeds of the SAC-vs-SB3 comparison
for seed in 1 2 3; do
    "$PYTHON" benchmark/sweep.py --scripts sac_continuous.py benchmark/sb3_sac.py --seeds "$seed" \
        "${GRID[@]}" "$@" -- "${BUDGET[@]}" || status=$?
done
for seed in 1 2 3; do
    "$PYTHON" benchmark/sweep.py --scripts posac_jko.py --seeds "$seed" "${GRID[@]}" "$@" \
        -- "${BUDGET[@]}" --num-actors 2 --w2-weights 0.0 0.1 --learning-starts 5000 --random-steps 5000 --autotune || status=$?
done
for seed in 1 2 3; do
    "$PYTHON" benchmark/sweep.py --scripts gmm_density_matching.py --seeds "$seed" "${GRID[@]}" "$@" \
        -- "${BUDGET[@]}" || status=$?
done
exit "$status"
