"""Learning curves and a results table from any set of run folders.

    python benchmark/report.py runs/ other_runs/Hopper-v4__sac_continuous-1a2b3c4d__1__1700000000 \
        --out-dir report

Reads every run folder at or below the given paths (a folder with eval.csv; args.json and
summary.json when present) and writes into --out-dir:
- `learning_curves.png`: one panel per env; one line per algorithm (per configuration when an
  algorithm ran several, per actor for multi-actor POSAC runs): the mean evaluation return
  over seeds, with the band from the lowest to the highest seed. Seeds are put on a common step
  grid by linear interpolation, up to the last step every seed reached.
- `results.md`: per env and line, the final and the best evaluation return (mean +- std over
  seeds, std with ddof=0), the seeds (and how many were resumed), the final global step, and SPS /
  train SPS / wall time from summary.json, over the runs that finished in one process ("-": none).
- `final_returns.csv`: one row per finished run and policy, `algorithm,env_id,seed,total_timesteps,
  final_return` (the mean return of the run's last evaluation), the algorithm by its short name
  (SHORT_NAMES); a multi-actor run's actor i >= 1 as `{name}_actor{i}` (POSAC: posac, posac_actor1).
The evaluation mode (deterministic / stochastic) is picked with --mode.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmark.runfolders import ARGS, EVAL_CSV, SUMMARY, find_run_folders, folder_time, read_json  # noqa: E402


@dataclass
class Args:
    paths: list[str] = field(default_factory=lambda: ["runs"])
    """run folders, or folders searched recursively for them"""
    out_dir: str = "report"
    """where learning_curves.png, results.md and final_returns.csv go"""
    mode: Literal["deterministic", "stochastic"] = "deterministic"
    """which evaluation mode to report"""


# the algorithms' short names in final_returns.csv
SHORT_NAMES = {"sac_continuous": "sac", "gmm_density_matching": "gmm", "posac_jko": "posac", "sb3_sac": "sb3_sac"}


def run_identity(folder: Path) -> dict:
    """env_id / exp_name / seed / algorithm of a run, from args.json, else from the folder name
    `{env_id}__{exp_name}__{seed}__{unix_time}`."""
    parts = folder.name.split("__")
    record = read_json(folder / ARGS) or {}
    run_args = record.get("args", {})
    exp_name = run_args.get("exp_name", parts[1] if len(parts) == 4 else folder.name)
    return {
        "env_id": run_args.get("env_id", parts[0] if len(parts) == 4 else "?"),
        "exp_name": exp_name,
        "seed": int(run_args.get("seed", parts[2] if len(parts) == 4 else 0)),
        "algorithm": record.get("algorithm", exp_name),
        "total_timesteps": run_args.get("total_timesteps", np.nan),
        "time": folder_time(folder),
        "folder": str(folder),
    }


def load_runs(paths: list[str | Path], mode: str = "deterministic") -> pd.DataFrame:
    """One row per evaluation of every run found: identity columns + eval.csv columns + the
    summary's sps / train_sps. When one (env, exp_name, seed) has several folders (a run that
    was restarted from scratch), only the newest counts."""
    frames = []
    for folder in find_run_folders(paths):
        evals = pd.read_csv(folder / EVAL_CSV)
        evals = evals[evals["mode"] == mode]
        if evals.empty:
            continue
        summary = read_json(folder / SUMMARY) or {}
        identity = run_identity(folder)
        timing = {name: summary.get(name, np.nan) for name in ("sps", "train_sps", "wall_time_s")}
        # a resumed run's summary times only its last process: sps * wall_time_s = the steps that
        # process ran. Such timings are left out (NaN) and the run is marked as resumed.
        resumed = bool(summary) and timing["sps"] * timing["wall_time_s"] < summary.get("global_step", 0) - 1
        if resumed:
            timing = dict.fromkeys(timing, np.nan)
        frames.append(evals.assign(**identity, **timing, resumed=resumed))
    if not frames:
        raise FileNotFoundError(f"no run folders with {mode} evaluations under {list(map(str, paths))}")
    df = pd.concat(frames, ignore_index=True)
    newest = df.groupby(["env_id", "exp_name", "seed"])["time"].transform("max")
    df = df[df["time"] == newest]
    return df.assign(label=line_labels(df))


def line_labels(df: pd.DataFrame) -> pd.Series:
    """The legend label of each row: the algorithm; the exp_name instead when the algorithm ran
    several configurations on that env; plus ` actor i` for runs with several policies."""
    configs = df.groupby(["env_id", "algorithm"])["exp_name"].transform("nunique")
    actors = df.groupby("folder")["policy"].transform("nunique")
    base = df["algorithm"].where(configs == 1, df["exp_name"])
    return base.where(actors == 1, base + " actor " + df["policy"].astype(str))


def curve(group: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, lowest, highest) over the seeds of one line, on the union of their evaluation
    steps up to the last step that every seed reached."""
    per_seed = [g.sort_values("global_step") for _, g in group.groupby("seed")]
    last = min(g["global_step"].iloc[-1] for g in per_seed)
    steps = np.unique(np.concatenate([g["global_step"].to_numpy() for g in per_seed]))
    steps = steps[steps <= last]
    values = np.stack([np.interp(steps, g["global_step"], g["mean_return"]) for g in per_seed])
    return steps, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def results_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (env, line): final and best return as mean/std over seeds, seeds, steps, SPS."""
    rows = []
    for (env_id, label), group in df.groupby(["env_id", "label"], sort=True):
        per_seed = group.sort_values("global_step").groupby("seed")
        final = per_seed["mean_return"].last()
        best = per_seed["mean_return"].max()
        rows.append({
            "env_id": env_id, "line": label, "seeds": len(final), "resumed": int(per_seed["resumed"].first().sum()),
            "final_mean": final.mean(), "final_std": final.std(ddof=0),
            "best_mean": best.mean(), "best_std": best.std(ddof=0),
            "steps": int(per_seed["global_step"].max().mean()),
            "sps": per_seed["sps"].first().mean(), "train_sps": per_seed["train_sps"].first().mean(),
            "wall_min": per_seed["wall_time_s"].first().mean() / 60,
        })
    return pd.DataFrame(rows)


def final_returns(df: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run (last evaluation at its total_timesteps) and policy: algorithm (short
    name, `_actor{i}` for actor i >= 1), env_id, seed, total_timesteps, final_return."""
    rows = []
    for _, run in df.groupby("folder", sort=False):
        last_step = run["global_step"].max()
        budget = run["total_timesteps"].iloc[0]
        if pd.notna(budget) and last_step < budget:
            continue  # unfinished: its last evaluation is not a final one
        name = SHORT_NAMES.get(run["algorithm"].iloc[0], run["algorithm"].iloc[0])
        for policy, evals in run[run["global_step"] == last_step].groupby("policy"):
            rows.append({"algorithm": name if policy == 0 else f"{name}_actor{policy}",
                         "env_id": run["env_id"].iloc[0], "seed": int(run["seed"].iloc[0]),
                         "total_timesteps": int(last_step), "final_return": float(evals["mean_return"].iloc[-1])})
    columns = ["algorithm", "env_id", "seed", "total_timesteps", "final_return"]
    return pd.DataFrame(rows, columns=columns).sort_values(["env_id", "algorithm", "seed"], ignore_index=True)


def to_markdown(table: pd.DataFrame, mode: str) -> str:
    def number(x, digits=0):
        return "-" if pd.isna(x) else f"{x:.{digits}f}"

    lines = [
        f"Evaluation returns ({mode} policy), mean +- std over seeds (ddof=0). SPS and wall time: means over the"
        " runs that ran in one process (a resumed run's summary times only its last part).",
        "",
        "| env | algorithm | seeds | final return | best return | steps | SPS | train SPS | wall time (min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.env_id} | {r.line} | {r.seeds}{f' ({r.resumed} resumed)' if r.resumed else ''} | "
            f"{r.final_mean:.1f} +- {r.final_std:.1f} | "
            f"{r.best_mean:.1f} +- {r.best_std:.1f} | {r.steps} | {number(r.sps)} | {number(r.train_sps)} | "
            f"{number(r.wall_min)} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(df: pd.DataFrame, path: Path, mode: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    envs = sorted(df["env_id"].unique())
    cols = min(3, len(envs))
    rows = (len(envs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, env_id in zip(axes.flat, envs):
        for label, group in df[df["env_id"] == env_id].groupby("label", sort=True):
            steps, mean, lowest, highest = curve(group)
            (line,) = ax.plot(steps, mean, label=f"{label} ({group['seed'].nunique()} seeds)")
            ax.fill_between(steps, lowest, highest, color=line.get_color(), alpha=0.2)
        ax.set_title(env_id)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(f"{mode} eval return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(envs):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(paths: list[str | Path], out_dir: str | Path, mode: str = "deterministic") -> pd.DataFrame:
    """Write learning_curves.png, results.md and final_returns.csv into out_dir; returns the results table."""
    df = load_runs(paths, mode)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_curves(df, out_dir / "learning_curves.png", mode)
    table = results_table(df)
    markdown = to_markdown(table, mode)
    (out_dir / "results.md").write_text(markdown + "\n![learning curves](learning_curves.png)\n")
    final_returns(df).to_csv(out_dir / "final_returns.csv", index=False, float_format="%.4f")
    print(markdown)
    print(f"wrote {out_dir / 'learning_curves.png'}, {out_dir / 'results.md'} and {out_dir / 'final_returns.csv'}")
    return table


if __name__ == "__main__":
    args = tyro.cli(Args)
    try:
        report(args.paths, args.out_dir, args.mode)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
