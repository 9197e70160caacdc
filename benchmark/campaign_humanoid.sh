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
# A queue of the ten runs, taken in order by CAMPAIGN_WORKERS workers (default 2: two runs at a time
# on the 2-core VM), one thread per run. Shorter runs come first (on one core: sac ~1.5 h,
# gmm_source ~1.7 h, posac and sb3_sac ~2.5 h, gmm ~4.5 h): a machine that is not kept between
# 3-hour sessions loses its unfinished runs' checkpoints, so the order makes as many runs as
# possible finish in each session. With 3 workers on 2 cores three runs share the cores: each is
# slower (the same numbers: one thread each, deterministic on the CPU), but when a session ends
# soon after the second run would, the third one may finish too.
# Resumable: rerun the same command after any interruption; finished runs are skipped, unfinished
# ones resume from their last checkpoint (sweep.py's rule). Runs already committed under
# benchmark/results/humanoid_300k/runs/ count as finished: their folders (eval.csv, args.json,
# summary.json) are copied into the output folder first, so a fresh machine does not redo them.
#   bash benchmark/campaign_humanoid.sh                   # runs into runs/humanoid_300k
#   CAMPAIGN_OUT=/somewhere CAMPAIGN_WORKERS=3 bash benchmark/campaign_humanoid.sh
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

POSAC=(--num-actors 2 --w2-weights 0.0 0.1)
SOURCE_SAMPLER=(--proposal gaussian --temperature-mode fixed --temperature 1)
RUN_COUNT=10

# campaign_run N: the queue's run number N (0-based), shortest first
campaign_run() {
    case $1 in
        0) one_run sac_continuous.py 1 "${LONG[@]}" ;;
        1) one_run posac_jko.py 1 "${LONG[@]}" "${POSAC[@]}" ;;
        2) one_run sac_continuous.py 2 "${LONG[@]}" ;;
        3) one_run sac_continuous.py 3 "${LONG[@]}" ;;
        4) one_run gmm_density_matching.py 1 --total-timesteps 100000 "${EVAL[@]}" "${SOURCE_SAMPLER[@]}" ;;
        5) one_run posac_jko.py 2 "${LONG[@]}" "${POSAC[@]}" ;;
        6) one_run benchmark/sb3_sac.py 1 "${LONG[@]}" ;;
        7) one_run gmm_density_matching.py 1 "${LONG[@]}" ;;
        8) one_run gmm_density_matching.py 2 "${LONG[@]}" ;;
        9) one_run gmm_density_matching.py 3 "${LONG[@]}" ;;
    esac
}

# The committed finished runs, so that they are skipped (a folder already there is left as it is).
COMMITTED=benchmark/results/humanoid_300k/runs
mkdir -p "$OUT"
for folder in "$COMMITTED"/*/; do
    [[ -f "$folder/summary.json" ]] || continue
    [[ -e "$OUT/$(basename "$folder")" ]] || cp -r "$folder" "$OUT/"
done

# The queue: a counter file that each worker advances under a lock, so no run is taken twice.
QUEUE=$(mktemp)
trap 'rm -f "$QUEUE"' EXIT
echo 0 > "$QUEUE"
next_run() {
    flock "$QUEUE" bash -c 'n=$(cat "$1"); echo $((n + 1)) > "$1"; echo "$n"' bash "$QUEUE"
}

worker() {
    local status=0 n
    while n=$(next_run) && (( n < RUN_COUNT )); do
        campaign_run "$n" || status=$?
    done
    return "$status"
}

pids=()
for _ in $(seq "${CAMPAIGN_WORKERS:-2}"); do
    worker &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
done
exit "$status"
