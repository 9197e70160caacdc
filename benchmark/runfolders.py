"""Helpers shared by sweep.py, report.py and throughput.py: reading the run folders that every
script writes, as described in docs/CONTRACT.md.

A run folder is `{output_dir}/{env_id}__{exp_name}__{seed}__{unix_time}/` and holds
args.json, eval.csv, metrics.csv, checkpoint.pt and (once the run completed) summary.json.
"""

from __future__ import annotations

import glob
import json
import os
import reprlib
from pathlib import Path
from typing import Optional

SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
ARGS = "args.json"
EVAL_CSV = "eval.csv"
METRICS_CSV = "metrics.csv"


# Error messages quote values from sweep files, run folders or the command line through this
# bounded repr: a long value stays short, a control character is escaped (the message stays one
# line), and a YAML alias bomb (a few hundred bytes standing for 10^9 nested items, shared by
# reference, so cheap to load) is never expanded while it is reported.
_BOUNDED = reprlib.Repr()
_BOUNDED.maxlevel, _BOUNDED.maxlist, _BOUNDED.maxdict, _BOUNDED.maxstring, _BOUNDED.maxother = 2, 4, 4, 60, 60


def short(value) -> str:
    """repr(value), bounded (see _BOUNDED)."""
    return _BOUNDED.repr(value)


class RunFolderError(ValueError):
    """A file of a run folder that exists but is not what the scripts write (damaged, hand-edited
    or forged): `<path>: <what is wrong>`, one line."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")


def read_text(path: str | Path) -> Optional[str]:
    """A run folder file as UTF-8 text; None when it does not exist, RunFolderError when it cannot
    be read or is not UTF-8."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise RunFolderError(path, f"cannot read it ({error.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RunFolderError(path, f"not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start})") from None


def load_json_object(path: str | Path) -> Optional[dict]:
    """The JSON object in a run folder file (args.json, summary.json); None when the file does not
    exist, RunFolderError when it is unreadable, not JSON, or JSON but not an object."""
    text = read_text(path)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise RunFolderError(path, f"not valid JSON ({error.msg}, line {error.lineno} column {error.colno})") from None
    except RecursionError:
        raise RunFolderError(path, "JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise RunFolderError(path, f"expected a JSON object, got a {type(value).__name__}")
    return value


def read_json(path: Path) -> Optional[dict]:
    """The JSON object in the file, or None when it is missing or unusable: for callers that treat
    such a run as unfinished (a sweep then reruns it) rather than stop on it."""
    try:
        return load_json_object(path)
    except RunFolderError:
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
    summary = read_json(Path(folder) / SUMMARY) or {}
    step = summary.get("global_step")
    budget = total_timesteps if total_timesteps is not None else summary.get("total_timesteps", 0)
    # a step or budget that is not a number (a damaged or forged summary) does not count as finished
    return is_number(step) and is_number(budget) and step >= budget


def is_number(value) -> bool:
    """A JSON number (bool is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
