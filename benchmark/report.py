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

A return that is NaN or infinite (a diverged run) makes its cell `non-finite` in results.md, with a
note under the table. A run folder file that cannot be read as the scripts write it (empty or
non-UTF-8 eval.csv, a missing column, text where a step or return belongs, invalid JSON or a JSON
list in args.json / summary.json) stops the report with one line `report.py: error: <file>: ...`
and exit code 2: the scripts write args.json and summary.json atomically and eval.csv's header
before any row, so such a file is damage or tampering, not an interrupted run, and skipping it
would quietly leave a run out of the table. Move the named folder away and rerun.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmark.runfolders import (ARGS, EVAL_CSV, SUMMARY, RunFolderError, find_run_folders, folder_time,  # noqa: E402
                                  is_number, load_json_object, read_text, short)


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


# the eval.csv columns report.py reads (docs/CONTRACT.md has the full header)
EVAL_COLUMNS = ("global_step", "policy", "mode", "mean_return")


JSON_KINDS = {"a string": lambda value: isinstance(value, str),
              "an integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
              "a number": is_number}


def typed(record: dict, key: str, expected: str, path: Path, default=None):
    """record[key] when it is `expected` ("a string", "an integer" or "a number", as the scripts write
    it; a bool is none of them), default when absent, else RunFolderError naming the file."""
    if key not in record:
        return default
    value = record[key]
    if not JSON_KINDS[expected](value):
        raise RunFolderError(path, f"{key} is {short(value)}, not {expected}")
    return value


def name_identity(folder: Path) -> tuple[str, str, int]:
    """(env_id, exp_name, seed) from a folder name `{env_id}__{exp_name}__{seed}__{unix_time}`, for
    runs without args.json; ("?", the folder name, 0) for a name of another form."""
    parts = folder.name.split("__")
    if len(parts) == 4:
        try:
            return parts[0], parts[1], int(parts[2])
        except ValueError:
            pass
    return "?", folder.name, 0


def run_identity(folder: Path) -> dict:
    """env_id / exp_name / seed / algorithm of a run, from args.json, else from the folder name."""
    path = folder / ARGS
    record = load_json_object(path) or {}
    run_args = record.get("args", {})
    if not isinstance(run_args, dict):
        raise RunFolderError(path, f"args is {short(run_args)}, not an object")
    env_id, exp_name, seed = name_identity(folder)
    exp_name = typed(run_args, "exp_name", "a string", path, exp_name)
    return {
        "env_id": typed(run_args, "env_id", "a string", path, env_id),
        "exp_name": exp_name,
        "seed": typed(run_args, "seed", "an integer", path, seed),
        "algorithm": typed(record, "algorithm", "a string", path, exp_name),
        "total_timesteps": typed(run_args, "total_timesteps", "an integer", path, np.nan),
        "time": folder_time(folder),
        "folder": str(folder),
    }


def numeric_column(evals: pd.DataFrame, column: str, integers: bool, path: Path) -> pd.Series:
    """An eval.csv column (read as text) as numbers: integers (steps, policies), or floats where
    "nan" and "inf" are allowed (a diverged run's returns; the table flags them). RunFolderError
    names the first line that holds anything else."""
    text = evals[column]
    values = pd.to_numeric(text, errors="coerce")
    if integers:
        bad = ~np.isfinite(values) | (values != values.round())
    else:
        bad = values.isna() & (text.str.strip().str.lower() != "nan")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise RunFolderError(path, f"line {row + 2}: {column} is {short(text.iloc[row])}, "
                                   f"not {'an integer' if integers else 'a number'}")
    return values.astype("int64") if integers else values.astype(float)


def read_evals(folder: Path) -> pd.DataFrame:
    """A run's eval.csv with numeric global_step / policy / mean_return; RunFolderError naming the
    file when it is empty, not UTF-8, not a CSV table, lacks a column report.py reads, or holds a
    value of the wrong kind. A header without rows (a run before its first evaluation) is fine."""
    path = folder / EVAL_CSV
    text = read_text(path) or ""  # None: deleted since find_run_folders saw it, as good as empty
    try:
        # every cell as text, nothing turned into NaN on the way: numeric_column decides what is a number
        evals = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as error:
        raise RunFolderError(path, f"not a CSV table ({str(error).strip().splitlines()[0][:200]})") from None
    except pd.errors.EmptyDataError:
        raise RunFolderError(path, "empty file (not even the header)") from None
    missing = [column for column in EVAL_COLUMNS if column not in evals.columns]
    if missing:
        raise RunFolderError(path, f"no column {', '.join(missing)} (its header: {short(list(evals.columns))})")
    return evals.assign(global_step=numeric_column(evals, "global_step", True, path),
                        policy=numeric_column(evals, "policy", True, path),
                        mean_return=numeric_column(evals, "mean_return", False, path))


def load_runs(paths: list[str | Path], mode: str = "deterministic") -> pd.DataFrame:
    """One row per evaluation of every run found: identity columns + eval.csv columns + the
    summary's sps / train_sps. When one (env, exp_name, seed) has several folders (a run that
    was restarted from scratch), only the newest counts. RunFolderError for a malformed file."""
    frames = []
    for folder in find_run_folders(paths):
        evals = read_evals(folder)
        evals = evals[evals["mode"] == mode]
        if evals.empty:
            continue
        summary_path = folder / SUMMARY
        summary = load_json_object(summary_path) or {}
        identity = run_identity(folder)
        timing = {name: typed(summary, name, "a number", summary_path, np.nan)
                  for name in ("sps", "train_sps", "wall_time_s")}
        # a resumed run's summary times only its last process: sps * wall_time_s = the steps that
        # process ran. Such timings are left out (NaN) and the run is marked as resumed.
        steps = typed(summary, "global_step", "a number", summary_path, 0)
        resumed = bool(summary) and timing["sps"] * timing["wall_time_s"] < steps - 1
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


def mean_std(values: pd.Series) -> tuple[float, float]:
    """Mean and std (ddof=0) over seeds; a NaN or inf among them gives a non-finite result, which
    to_markdown flags (pandas would skip a NaN)."""
    with np.errstate(invalid="ignore"):  # inf - inf inside the std is NaN, as it should be: no warning
        return values.mean(skipna=False), values.std(ddof=0, skipna=False)


def results_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (env, line): final and best return as mean/std over seeds, seeds, steps, SPS."""
    rows = []
    for (env_id, label), group in df.groupby(["env_id", "label"], sort=True):
        per_seed = group.sort_values("global_step").groupby("seed")
        # NaN must propagate: pandas' last(), max(), mean() and std() skip it, which would report a
        # diverged seed's previous return, or the mean over the other seeds, as if nothing happened
        # (mean_std keeps it too)
        final = per_seed["mean_return"].agg(lambda returns: returns.iloc[-1])
        best = per_seed["mean_return"].agg(lambda returns: returns.to_numpy().max())
        (final_mean, final_std), (best_mean, best_std) = mean_std(final), mean_std(best)
        rows.append({
            "env_id": env_id, "line": label, "seeds": len(final), "resumed": int(per_seed["resumed"].first().sum()),
            "final_mean": final_mean, "final_std": final_std, "best_mean": best_mean, "best_std": best_std,
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


NON_FINITE_NOTE = ("non-finite: a seed's return is NaN or infinite (the run diverged), so there is no mean over seeds;"
                   " its eval.csv has the values.")


def to_markdown(table: pd.DataFrame, mode: str) -> str:
    def number(x, digits=0):
        return "-" if pd.isna(x) else f"{x:.{digits}f}"

    def returns(mean, std):
        return f"{mean:.1f} +- {std:.1f}" if np.isfinite(mean) and np.isfinite(std) else "non-finite"

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
            f"{returns(r.final_mean, r.final_std)} | "
            f"{returns(r.best_mean, r.best_std)} | {r.steps} | {number(r.sps)} | {number(r.train_sps)} | "
            f"{number(r.wall_min)} |"
        )
    if not np.isfinite(table[["final_mean", "final_std", "best_mean", "best_std"]].to_numpy(dtype=float)).all():
        lines += ["", NON_FINITE_NOTE]
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


def main(args: Args) -> int:
    """report() for the command line: a malformed run folder file or no runs at all is one line
    `report.py: error: ...` and exit code 2."""
    try:
        report(args.paths, args.out_dir, args.mode)
    except (RunFolderError, FileNotFoundError) as error:
        print(f"report.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
