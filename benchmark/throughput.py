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

import csv
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
from benchmark.runfolders import METRICS_CSV, SUMMARY, read_json, thread_env  # noqa: E402


def contenders(learning_starts: int) -> dict[str, tuple[str, list[str]]]:
    """label -> (script, its own args for the shared settings). The flags every script shares
    (env, seed, budget, batch, learning starts, evaluation) are added in `command`."""
    net = ["--hidden-size", "256"]
    # the project's scripts can separate uniform random steps from learning starts; SB3 ties them
    ours = net + ["--num-layers", "2", "--random-steps", str(learning_starts)]
    table_of = {
        "sac_continuous": ("sac_continuous.py", ours + ["--num-critic-updates", "1"]),
        "gmm_density_matching": ("gmm_density_matching.py", ours + ["--num-critic-updates", "1"]),
        "gmm_density_matching (bf16 scores)": ("gmm_density_matching.py", ours + ["--num-critic-updates", "1",
                                                                                  "--score-dtype", "bfloat16"]),
        "posac_jko (1 actor)": ("posac_jko.py", ours + ["--updates-per-step", "1", "--num-actors", "1", "--w2-weights", "0.0"]),
        "posac_jko (2 actors)": ("posac_jko.py", ours + ["--updates-per-step", "1", "--num-actors", "2",
                                                          "--w2-weights", "0.0", "0.1"]),
        "sb3_sac": ("benchmark/sb3_sac.py", net),
    }
    # --compile / --compile --cudagraphs variants of our scripts (README, --compile)
    for label, (script, own) in list(table_of.items()):
        if label.startswith(("sac_continuous", "gmm_density_matching", "posac_jko (2 actors)")) and "bf16" not in label:
            table_of[f"{label} --compile"] = (script, own + ["--compile"])
            table_of[f"{label} --compile --cudagraphs"] = (script, own + ["--compile", "--cudagraphs"])
    return table_of


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
    cuda: bool = False
    """run every contender with --cuda (the GPU); the default is the CPU"""
    steady_from: int = 0
    """rank by the steps per second from this step to the end instead of train_sps (0: off),
    read from metrics.csv's wall times: the compiled variants' compilation is then left out"""
    log_every: int = 500
    """the runs' --log-every: the resolution of --steady-from"""


def command(args: Args, label: str, output_dir: str, repeat: int) -> list[str]:
    script, own_args = contenders(args.learning_starts)[label]
    shared = ["--env-id", args.env_id, "--seed", str(args.seed), "--total-timesteps", str(args.total_timesteps),
              "--learning-starts", str(args.learning_starts), "--batch-size", "256",
              "--cuda" if args.cuda else "--no-cuda", "--log-every", str(args.log_every),
              "--eval-every", "0", "--eval-episodes", "1", "--checkpoint-every", str(10 * args.total_timesteps),
              "--exp-name", f"throughput{repeat}", "--output-dir", output_dir]
    return [args.python, str(ROOT / script), *shared, *own_args]


def run_once(cmd: list[str], threads: int, output_dir: str, env_id: str, steady_from: int = 0) -> dict:
    """Run one contender to completion; its summary.json figures (and steady_sps with
    steady_from), or {"error": ...}."""
    before = set(Path(output_dir).glob(f"{env_id}__*"))
    result = subprocess.run(cmd, env=thread_env(threads), capture_output=True, text=True, cwd=ROOT)
    new = sorted(set(Path(output_dir).glob(f"{env_id}__*")) - before)
    summary = read_json(new[-1] / SUMMARY) if new else None
    if result.returncode != 0 or summary is None:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {result.returncode}: {tail}"}
    figures = {"train_sps": summary["train_sps"], "sps": summary["sps"]}
    if steady_from > 0:
        figures["steady_sps"] = steady_sps(new[-1] / METRICS_CSV, steady_from)
    return figures


def steady_sps(metrics_csv: Path, steady_from: int) -> float:
    """Env steps per second between the first logged step >= steady_from and the last logged step,
    from the wall time metrics.csv writes with every logged row."""
    times: dict[int, float] = {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            times.setdefault(int(row["global_step"]), float(row["wall_time"]))
    steps = sorted(step for step in times if step >= steady_from)
    if len(steps) < 2:
        raise ValueError(f"{metrics_csv}: fewer than two logged steps from step {steady_from}")
    return (steps[-1] - steps[0]) / (times[steps[-1]] - times[steps[0]])


def paired_ratios(runs: list[dict], baseline_runs: list[dict], key: str = "train_sps") -> list[float]:
    """Round by round: this contender's `key` (train_sps) over the baseline's in the same round
    (rounds where either run failed are skipped)."""
    return [run[key] / base[key] for run, base in zip(runs, baseline_runs)
            if "error" not in run and "error" not in base]


def table(results: dict[str, list[dict]], baseline: str = BASELINE, key: str = "train_sps") -> str:
    """Markdown table: median train SPS (range), median SPS, ratio of the medians to the
    baseline's, and the median (range) of the per-round paired ratios, over the runs that
    finished; a failed run (a crash, a full disk) is counted and its first error shown, and only
    a contender with no finished run at all is reported as failed. key="steady_sps" ranks by the
    steps per second after --steady-from instead of train_sps."""
    finished = {label: [r for r in runs if "error" not in r] for label, runs in results.items()}
    medians = {label: statistics.median(r[key] for r in runs) for label, runs in finished.items() if runs}
    name = "train SPS" if key == "train_sps" else "steady SPS"
    lines = [f"| script | {name} median (min-max) | SPS median | ratio to {baseline} | "
             "paired ratio median (min-max) | runs |",
             "|---|---|---|---|---|---|"]
    for label, runs in results.items():
        errors = [r["error"] for r in runs if "error" in r]
        if not finished[label]:
            lines.append(f"| {label} | failed: {errors[0]} | - | - | - | {len(runs)} |")
            continue
        train = [r[key] for r in finished[label]]
        ratio, paired = "-", "-"
        rounds = paired_ratios(runs, results[baseline], key) if baseline in medians else []
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
                outcome = run_once(command(args, label, output_dir, repeat), args.threads, output_dir, args.env_id,
                                   args.steady_from)
                results[label].append(outcome)
                shown = outcome.get("error") or f"train SPS {outcome['train_sps']:.0f}" + (
                    f", steady SPS {outcome['steady_sps']:.0f}" if "steady_sps" in outcome else "")
                print(f"[throughput] round {repeat + 1}/{args.repeats} {label}: {shown} ({time.time() - start:.0f} s)",
                      flush=True)
    return results


if __name__ == "__main__":
    args = tyro.cli(Args)
    results = measure(args)
    print(f"\n{args.env_id}, {args.total_timesteps} steps ({args.learning_starts} learning starts), 256x256, batch 256, "
          f"1 gradient step per env step, {'GPU (--cuda), ' if args.cuda else ''}CPU {args.threads} threads, "
          f"{args.repeats} alternating runs each"
          + (f"; steady SPS = steps/s from step {args.steady_from} to the end" if args.steady_from else "") + "\n")
    print(table(results, key="steady_sps" if args.steady_from else "train_sps"))
