"""Helpers shared by sweep.py, report.py and throughput.py: reading the run folders that every
script writes, as described in docs/CONTRACT.md.

A run folder is `{output_dir}/{env_id}__{exp_name}__{seed}__{unix_time}/` and holds
args.json, eval.csv, metrics.csv, checkpoint.pt and (once the run completed) summary.json.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Optional

SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
ARGS = "args.json"
EVAL_CSV = "eval.csv"
METRICS_CSV = "metrics.csv"


def read_json(path: Path) -> Optional[dict]:
    """The parsed JSON file, or None when it is missing or unreadable (a run killed mid-write)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def folder_time(folder: Path) -> int:
    """The unix_time suffix of a run folder name (0 when it does not parse), used for ordering."""
    try:
        return int(Path(folder).name.rsplit("__", 1)[1])
    except (IndexError, ValueError):
        return 0


def matching_folders(output_dir: str | Path, env_id: str, exp_name: str, seed: int) -> list[Path]:
    """Every folder `{output_dir}/{env_id}__{exp_name}__{seed}__*`, oldest first.

    glob.escape keeps env ids or names with glob characters literal; the `__` separators keep
    seed 1 from matching seed 12."""
    prefix = glob.escape(f"{env_id}__{exp_name}__{seed}__")
    found = [Path(p) for p in glob.glob(os.path.join(glob.escape(str(output_dir)), prefix + "*"))]
    return sorted((p for p in found if p.is_dir()), key=lambda p: (folder_time(p), p.name))


def is_finished(folder: Path, total_timesteps: Optional[int] = None) -> bool:
    """A run is finished when summary.json exists and its global_step reached the budget.

    The budget is the one the sweep asks for when it knows it (`--total-timesteps` in the
    command), else the budget the run itself recorded in its summary."""
    summary = read_json(Path(folder) / SUMMARY)
    if summary is None or "global_step" not in summary:
        return False
    budget = total_timesteps if total_timesteps is not None else summary.get("total_timesteps", 0)
    return int(summary["global_step"]) >= int(budget)


def find_run_folders(paths: list[str | Path]) -> list[Path]:
    """Every run folder (a folder holding eval.csv) at or below the given paths."""
    folders: set[Path] = set()
    for path in map(Path, paths):
        if (path / EVAL_CSV).is_file():
            folders.add(path)
        folders.update(p.parent for p in path.rglob(EVAL_CSV))
    return sorted(folders)


def thread_env(threads: int, base: Optional[dict] = None) -> dict:
    """A copy of the environment that limits a child process's math libraries to `threads`
    threads (torch reads OMP_NUM_THREADS at import; MKL_NUM_THREADS covers MKL builds)."""
    env = dict(os.environ if base is None else base)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    return env
