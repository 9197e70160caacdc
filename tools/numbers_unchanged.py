"""Check that a change moved code without changing numbers: short Pendulum runs of each script, with
a checkpoint and a --resume mid-run, at a reference commit and in the working tree, compared row
by row (eval.csv whole, every `losses/*` row of metrics.csv, POSAC's eval_actor_*.npy).

    python tools/numbers_unchanged.py                    # against HEAD
    python tools/numbers_unchanged.py --against 5c7980e  # against any commit
    python tools/numbers_unchanged.py --only sac_default posac_3_actors

Each run is two commands: `--total-timesteps 600` (a checkpoint at 300 and at the end), then
`--resume RUN --total-timesteps 1000`. The reference commit is checked out with `git worktree` into a
temporary folder; the runs use one thread and the CPU, so the same seed gives the same numbers.
Exit code 1 and the first differing row when anything differs.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ["--env-id", "Pendulum-v1", "--seed", "3", "--learning-starts", "200", "--random-steps", "200",
         "--batch-size", "64", "--eval-every", "300", "--eval-episodes", "2", "--checkpoint-every", "300",
         "--log-every", "100", "--hidden-size", "64"]
CONFIGURATIONS = {
    "sac_default": ("sac_continuous.py", []),
    "sac_reinforce": ("sac_continuous.py", ["--actor-gradient-type", "reinforce", "--num-actor-samples", "4"]),
    "sac_redq": ("sac_continuous.py", ["--num-critic-networks", "5", "--target-critic-backup-type", "redq",
                                       "--num-critic-updates", "2"]),
    "sac_hard_target": ("sac_continuous.py", ["--no-use-soft-target-update", "--target-update-period", "100"]),
    "posac_2_actors": ("posac_jko.py", ["--num-actors", "2", "--w2-weights", "0.0", "0.1"]),
    "posac_3_actors": ("posac_jko.py", ["--num-actors", "3", "--w2-weights", "0.0", "0.1", "0.3", "--autotune"]),
    "gmm_default": ("gmm_density_matching.py", []),
    "gmm_source": ("gmm_density_matching.py", ["--proposal", "gaussian", "--temperature-mode", "fixed",
                                               "--temperature", "1"]),
}


def run_configuration(code_dir: str, out_dir: str, script: str, flags: list[str]) -> str:
    """Train to 600 steps, resume to 1000; return the run folder."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    first = [sys.executable, script, *SHORT, *flags, "--total-timesteps", "600", "--output-dir", out_dir]
    subprocess.run(first, cwd=code_dir, env=env, check=True, capture_output=True)
    (run_dir,) = glob.glob(os.path.join(out_dir, "*"))
    resume = [sys.executable, script, *SHORT, *flags, "--total-timesteps", "1000", "--resume", run_dir]
    subprocess.run(resume, cwd=code_dir, env=env, check=True, capture_output=True)
    return run_dir


def numbers(run_dir: str) -> dict[str, list]:
    """What must not change: eval.csv's rows, the losses rows without their wall time, the arrays."""
    with open(os.path.join(run_dir, "eval.csv"), newline="") as f:
        evaluation = list(csv.reader(f))
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        losses = [[step, metric, value] for step, _, metric, value in csv.reader(f) if metric.startswith("losses/")]
    arrays = {os.path.basename(path): np.load(path).tolist()
              for path in sorted(glob.glob(os.path.join(run_dir, "eval_actor_*.npy")))}
    return {"eval.csv": evaluation, "losses rows of metrics.csv": losses, **arrays}


def first_difference(reference: dict, current: dict) -> str | None:
    for name in sorted(set(reference) | set(current)):
        a, b = reference.get(name), current.get(name)
        if a is None or b is None:
            return f"{name}: only in {'the working tree' if a is None else 'the reference'}"
        for i, (row_a, row_b) in enumerate(zip(a, b)):
            if row_a != row_b:
                return f"{name} row {i}: reference {row_a} != working tree {row_b}"
        if len(a) != len(b):
            return f"{name}: {len(a)} rows in the reference, {len(b)} in the working tree"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD", help="the reference commit (default HEAD)")
    parser.add_argument("--only", nargs="+", choices=sorted(CONFIGURATIONS), help="run only these configurations")
    options = parser.parse_args()
    names = options.only or list(CONFIGURATIONS)
    with tempfile.TemporaryDirectory() as tmp:
        reference_dir = os.path.join(tmp, "reference")
        subprocess.run(["git", "worktree", "add", "--detach", reference_dir, options.against], cwd=REPO, check=True,
                       capture_output=True)
        try:
            failures = 0
            for name in names:
                script, flags = CONFIGURATIONS[name]
                runs = {}
                for label, code_dir in (("reference", reference_dir), ("current", REPO)):
                    out_dir = os.path.join(tmp, label, name)
                    runs[label] = numbers(run_configuration(code_dir, out_dir, script, flags))
                problem = first_difference(runs["reference"], runs["current"])
                rows = sum(len(rows) for rows in runs["current"].values())
                print(f"{name:16s} {'SAME' if problem is None else 'DIFFERENT'} ({rows} rows)"
                      + ("" if problem is None else f": {problem}"), flush=True)
                failures += problem is not None
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", reference_dir], cwd=REPO, capture_output=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
