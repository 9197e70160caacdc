# Shared by the benchmark/*.sh entry points (sourced, not run): the standard MuJoCo v4 set, the
# seeds, and `sweep`, which runs benchmark/sweep.py from the repository root.
#   PYTHON    interpreter (default: .venv/bin/python when present, else python)
#   RUN_ARGS  extra arguments for every run, e.g. RUN_ARGS="--eval-every 20000"
# Any arguments given to an entry point go to sweep.py: --workers 4, --dry-run,
# --slurm --slurm-partition gpu --slurm-gpus-per-task 1 --slurm-time 2-00:00:00, ...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
MUJOCO_ENVS=(HalfCheetah-v4 Hopper-v4 Walker2d-v4 Ant-v4 Humanoid-v4)
MUJOCO_SEEDS=(1 2 3)
MUJOCO_STEPS=1000000
MUJOCO_OUT=runs/mujoco
read -r -a RUN_ARGS_ARRAY <<< "${RUN_ARGS:-}"

# mujoco_sweep SCRIPT [sweep.py flags...]: one script on the standard set, 1M steps, 3 seeds.
mujoco_sweep() {
    local script=$1
    shift
    "$PYTHON" benchmark/sweep.py --scripts "$script" --env-ids "${MUJOCO_ENVS[@]}" --seeds "${MUJOCO_SEEDS[@]}" \
        --output-dir "$MUJOCO_OUT" "$@" -- --total-timesteps "$MUJOCO_STEPS" "${RUN_ARGS_ARRAY[@]}"
}
