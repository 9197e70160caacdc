"""One throughput table for every script and SB3's SAC, under the same settings.

    python benchmark/throughput.py --env-id Hopper-v4 --total-timesteps 6000 --learning-starts 1000 --repeats 3

Every contender runs the same env with 256x256 networks, batch 256, one gradient step per env
step and the same learning_starts (uniform random actions before it), on the CPU with
--threads threads (OMP_NUM_THREADS / MKL_NUM_THREADS, default 2), one run at a time. Runs
alternate in rounds, the order reversed every other round (A B C, C B A, A B C ...), so a slow
spell of the machine, or one that drifts during a round, hits every contender alike.
Each run's train_sps comes from its summary.json (steps per second after learning_starts,
evaluation excluded); the table shows the median over repeats, its range, the whole-run SPS, the
ratio of the median train_sps to sac_continuous.py's, and the paired ratio: each round's
train_sps over sac_continuous.py's in the SAME round, median (min-max) over rounds. On a VM whose
speed swings by a third within minutes (this one), the paired ratio is the steadier figure: runs
a minute apart share the machine's mood, runs ten minutes apart need not. Runs write into a
temporary folder (or --output-dir) and use a single final evaluation episode.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import tyro

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmark.runfolders import SUMMARY, read_json, thread_env  # noqa: E402


def contenders(learning_starts: int) -> dict[str, tuple[str, list[str]]]:
    """label -> (script, its own args for the shared settings). The flags every script shares
    (env, seed, budget, batch, learning starts, evaluation) are added in `command`."""
    net = ["--hidden-size", "256"]
    # the project's scripts can separate uniform random steps from learning starts; SB3 ties them
    ours = net + ["--num-layers", "2", "--random-steps", str(learning_starts)]
    return {
        "sac_continuous": ("sac_continuous.py", ours + ["--num-critic-updates", "1"]),
        "gmm_density_matching": ("gmm_density_matching.py", ours + ["--num-critic-updates", "1"]),
        "gmm_density_matching (bf16 scores)": ("gmm_density_matching.py", ours + ["--num-critic-updates", "1",
                                                                                  "--score-dtype", "bfloat16"]),
        "posac_jko (1 actor)": ("posac_jko.py", ours + ["--updates-per-step", "1", "--num-actors", "1", "--w2-weights", "0.0"]),
        "posac_jko (2 actors)": ("posac_jko.py", ours + ["--updates-per-step", "1", "--num-actors", "2",
                                                          "--w2-weights", "0.0", "0.1"]),
        "sb3_sac": ("benchmark/sb3_sac.py", net),
    }


LABELS = list(contenders(0))
BASELINE = "sac_continuous"


@dataclass
class Args:
    env_id: str = "Hopper-v4"
    """environment for every contender"""
    total_timesteps: int = 6_000
    """env steps per run"""
    learning_starts: int = 1_000
    """random steps before the first gradient step (the same for all)"""
    repeats: int = 3
    """runs per contender (alternating)"""
    threads: int = 2
    """CPU threads per run"""
    contenders: list[str] = field(default_factory=lambda: list(LABELS))
    """which contenders to run (labels of `contenders()`)"""
    seed: int = 1
    """seed of every run"""
    output_dir: Optional[str] = None
    """keep the run folders here (default: a temporary folder, deleted afterwards)"""
    python: str = sys.executable
    """python interpreter that runs the scripts"""


def command(args: Args, label: str, output_dir: str, repeat: int) -> list[str]:
    script, own_args = contenders(args.learning_starts)[label]
    shared = ["--env-id", args.env_id, "--seed", str(args.seed), "--total-timesteps", str(args.total_timesteps),
              "--learning-starts", str(args.learning_starts), "--batch-size", "256", "--no-cuda",
              "--eval-every", "0", "--eval-episodes", "1", "--checkpoint-every", str(10 * args.total_timesteps),
              "--exp-name", f"throughput{repeat}", "--output-dir", output_dir]
    return [args.python, str(ROOT / script), *shared, *own_args]


def run_once(cmd: list[str], threads: int, output_dir: str, env_id: str) -> dict:
    """Run one contender to completion; its summary.json figures, or {"error": ...}."""
    before = set(Path(output_dir).glob(f"{env_id}__*"))
    result = subprocess.run(cmd, env=thread_env(threads), capture_output=True, text=True, cwd=ROOT)
    new = sorted(set(Path(output_dir).glob(f"{env_id}__*")) - before)
    summary = read_json(new[-1] / SUMMARY) if new else None
    if result.returncode != 0 or summary is None:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {result.returncode}: {tail}"}
    return {"train_sps": summary["train_sps"], "sps": summary["sps"]}


def paired_ratios(runs: list[dict], baseline_runs: list[dict]) -> list[float]:
    """Round by round: this contender's train_sps over the baseline's in the same round (rounds
    where either run failed are skipped)."""
    return [run["train_sps"] / base["train_sps"] for run, base in zip(runs, baseline_runs)
            if "error" not in run and "error" not in base]


def table(results: dict[str, list[dict]], baseline: str = BASELINE) -> str:
    """Markdown table: median train SPS (range), median SPS, ratio of the medians to the
    baseline's, and the median (range) of the per-round paired ratios, over the runs that
    finished; a failed run (a crash, a full disk) is counted and its first error shown, and only
    a contender with no finished run at all is reported as failed."""
    finished = {label: [r for r in runs if "error" not in r] for label, runs in results.items()}
    medians = {label: statistics.median(r["train_sps"] for r in runs) for label, runs in finished.items() if runs}
    lines = ["| script | train SPS median (min-max) | SPS median | ratio to sac_continuous | "
             "paired ratio median (min-max) | runs |",
             "|---|---|---|---|---|---|"]
    for label, runs in results.items():
        errors = [r["error"] for r in runs if "error" in r]
        if not finished[label]:
            lines.append(f"| {label} | failed: {errors[0]} | - | - | - | {len(runs)} |")
            continue
        train = [r["train_sps"] for r in finished[label]]
        ratio, paired = "-", "-"
        rounds = paired_ratios(runs, results[baseline]) if baseline in medians else []
        if rounds:
            ratio = f"{medians[label] / medians[baseline]:.2f}"
            paired = f"{statistics.median(rounds):.2f} ({min(rounds):.2f}-{max(rounds):.2f})"
        count = f"{len(runs)}" if not errors else f"{len(train)} of {len(runs)} ({len(errors)} failed: {errors[0]})"
        lines.append(f"| {label} | {medians[label]:.0f} ({min(train):.0f}-{max(train):.0f}) | "
                     f"{statistics.median(r['sps'] for r in finished[label]):.0f} | {ratio} | {paired} | {count} |")
    return "\n".join(lines)


def measure(args: Args) -> dict[str, list[dict]]:
    unknown = [c for c in args.contenders if c not in LABELS]
    if unknown:
        raise SystemExit(f"error: unknown contenders {unknown}; choose from {LABELS}")
    results: dict[str, list[dict]] = {label: [] for label in args.contenders}
    with tempfile.TemporaryDirectory() as tmp:
        output_dir = str(Path(args.output_dir or tmp).resolve())
        for repeat in range(args.repeats):
            # one run of each contender per round, the order reversed every other round
            order = args.contenders if repeat % 2 == 0 else args.contenders[::-1]
            for label in order:
                start = time.time()
                outcome = run_once(command(args, label, output_dir, repeat), args.threads, output_dir, args.env_id)
                results[label].append(outcome)
                shown = outcome.get("error") or f"train SPS {outcome['train_sps']:.0f}"
                print(f"[throughput] round {repeat + 1}/{args.repeats} {label}: {shown} ({time.time() - start:.0f} s)",
                      flush=True)
    return results


if __name__ == "__main__":
    args = tyro.cli(Args)
    results = measure(args)
    print(f"\n{args.env_id}, {args.total_timesteps} steps ({args.learning_starts} learning starts), 256x256, batch 256, "
          f"1 gradient step per env step, CPU {args.threads} threads, {args.repeats} alternating runs each\n")
    print(table(results))
