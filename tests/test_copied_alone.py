"""A script copied alone into an empty folder is a complete implementation: it trains, logs
(metrics.csv, eval.csv, TensorBoard), checkpoints, survives a SIGKILL, resumes with every check of a
run folder, and plays a saved run with --evaluate, with nothing else of this repository beside it
(no tools/, tests/, benchmark/ or other script on sys.path)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, read_csv

SCRIPTS = ("sac_continuous.py", "gmm_density_matching.py", "posac_jko.py")
SMALL = ["--env-id", "Pendulum-v1", "--learning-starts", "100", "--random-steps", "100", "--batch-size", "32",
         "--hidden-size", "32", "--eval-every", "500", "--eval-episodes", "1", "--checkpoint-every", "200",
         "--log-every", "100"]


# Runs a script as `python SCRIPT ARGS` does, except that importing anything of this repository
# fails: the editable install (pip install -e .) would otherwise find it from any folder.
ALONE = """
import importlib.abc, os, runpy, sys
REPOSITORY_MODULES = {"sac_continuous", "posac_jko", "gmm_density_matching", "benchmark", "tools", "tests"}
class NothingFromTheRepository(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REPOSITORY_MODULES:
            raise ImportError(f"{name}: not beside a script copied alone")
sys.meta_path.insert(0, NothingFromTheRepository())
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def command(folder, script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", ALONE, os.path.join(folder, script), *args]


def alone_env() -> dict:
    """The user's environment without this repository on PYTHONPATH (pytest's rootdir insertion does
    not reach a subprocess), with one torch thread."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_script_copied_alone_trains_is_killed_resumes_and_evaluates(tmp_path, script):
    folder = tmp_path / "alone"
    folder.mkdir()
    shutil.copy(os.path.join(REPO, script), folder / script)
    env = alone_env()

    # train until the first checkpoint lands, then SIGKILL (no chance to write anything more)
    process = subprocess.Popen(command(folder, script, *SMALL, "--total-timesteps", "100000"), cwd=folder, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not glob.glob(str(folder / "runs" / "*" / "checkpoint.pt")) and time.time() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (run_dir,) = glob.glob(str(folder / "runs" / "*"))
    assert sorted(os.listdir(folder)) == sorted(["runs", script])  # nothing written beside the script but runs/

    resumed = subprocess.run(command(folder, script, *SMALL, "--total-timesteps", "1000", "--resume", run_dir),
                             cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    rows = read_csv(os.path.join(run_dir, "eval.csv"))
    assert {int(row["global_step"]) for row in rows} == {500, 1000}
    assert any(row["metric"].startswith("losses/") for row in read_csv(os.path.join(run_dir, "metrics.csv")))
    assert glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))
    assert os.path.exists(os.path.join(run_dir, "summary.json"))

    evaluated = subprocess.run(command(folder, script, "--evaluate", run_dir, "--eval-episodes", "2"), cwd=folder,
                               env=env, capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "deterministic" in evaluated.stdout and "stochastic" in evaluated.stdout


@pytest.mark.parametrize("flags", [["--capture-video"], ["--config", "course.yaml"]],
                         ids=lambda flags: flags[0])
def test_a_flag_of_run_extras_names_the_file_to_copy_along(tmp_path, flags):
    """--capture-video and --config live in run_extras.py: without it beside the script,
    one `error:` line says to copy it, exit code 2, and nothing is created."""
    script = "sac_continuous.py"
    shutil.copy(os.path.join(REPO, script), tmp_path / script)
    (tmp_path / "course.yaml").write_text("env_name: Pendulum-v1\n")
    result = subprocess.run(command(tmp_path, script, "--env-id", "Pendulum-v1", *flags), cwd=tmp_path,
                            env=alone_env(), capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2 and len(errors) == 1 and "run_extras.py" in errors[0], result.stderr
    assert flags[0] in errors[0] and "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(["course.yaml", script])


def test_a_script_copied_alone_compiles(tmp_path):
    """--compile is part of each script (Appendix A), not of run_extras.py: copied alone, a compiled
    run trains to its end (or, without a working compiler, falls back to eager with a notice)."""
    script = "sac_continuous.py"
    shutil.copy(os.path.join(REPO, script), tmp_path / script)
    result = subprocess.run(command(tmp_path, script, *SMALL, "--total-timesteps", "300", "--compile"),
                            cwd=tmp_path, env=alone_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "--compile" in result.stderr and "run_extras" not in result.stderr
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "*"))
    assert os.path.exists(os.path.join(run_dir, "summary.json"))
