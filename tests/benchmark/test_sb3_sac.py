"""benchmark/sb3_sac.py obeys docs/CONTRACT.md: a two-run local sweep of it end to end (then the
report on its folders), SIGTERM -> checkpoint + exit 130 -> --resume finishes the same run, its
checkpoints are plain data (weights_only) that round-trip exactly, a checkpoint that would run
code or does not fit is one error line (exit 2) with nothing run or changed, and bad input ->
exit 2 before any run folder exists. Tiny budgets on Pendulum-v1, one thread."""

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmark.report import report
from benchmark.sweep import Args, main

ROOT = Path(__file__).resolve().parents[2]
SB3 = str(ROOT / "benchmark" / "sb3_sac.py")
TINY = ["--total-timesteps", "300", "--learning-starts", "100", "--eval-every", "100", "--eval-episodes", "1",
        "--checkpoint-every", "100", "--log-every", "100", "--buffer-size", "1000", "--hidden-size", "64",
        "--batch-size", "64"]


def eval_rows(folder: Path) -> list[dict]:
    with open(folder / "eval.csv") as f:
        return list(csv.DictReader(f))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same(a, b, where: str = "checkpoint") -> None:
    """Nested dicts/lists/tensors/numbers equal exactly (tensors: same dtype, shape and values)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, float) and a != a:
        assert b != b, where  # nan
    else:
        assert a == b, where


def error_line(stderr: str) -> str:
    """The one `error:` line of a refused run (no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("sb3_sac.py: error: "), stderr
    return lines[0]


class WritesMarker:
    """Unpickling this object runs `touch MARKER`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_two_run_sweep_of_sb3_sac_end_to_end(tmp_path):
    start = time.time()
    args = Args(scripts=[SB3], env_ids=["Pendulum-v1"], seeds=[1, 2], output_dir=str(tmp_path / "runs"),
                workers=2, threads=1, python=sys.executable, common_args=TINY)
    assert main(args) == 0
    folders = sorted((tmp_path / "runs").glob("Pendulum-v1__sb3_sac-*"))
    assert len(folders) == 2
    for folder in folders:
        record = json.loads((folder / "args.json").read_text())
        assert record["algorithm"] == "sb3_sac" and record["args"]["batch_size"] == 64
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["global_step"] == 300 and summary["train_sps"] > 0 and summary["sps"] > 0
        assert 50 < summary["peak_rss_mb"] < 24 * 1024
        assert [(r["global_step"], r["mode"]) for r in eval_rows(folder)] == [
            (str(step), mode) for step in (100, 200, 300) for mode in ("deterministic", "stochastic")]
        metrics = (folder / "metrics.csv").read_text()
        for tag in ("charts/episodic_return", "charts/SPS", "losses/qf_loss", "losses/actor_loss", "losses/alpha"):
            assert tag in metrics
        assert list(folder.glob("events.out.tfevents.*")) and (folder / "checkpoint.pt").is_file()
    table = report([tmp_path / "runs"], tmp_path / "report")
    assert list(table["seeds"]) == [2] and (tmp_path / "report" / "learning_curves.png").stat().st_size > 0
    assert time.time() - start < 60


def test_sigterm_checkpoints_and_resume_finishes_the_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, SB3, "--env-id", "Pendulum-v1", "--output-dir", str(tmp_path), *TINY[:1], "2000", *TINY[2:]]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(tmp_path.glob("*/checkpoint.pt")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Resume with:" in err
    (folder,) = tmp_path.iterdir()
    assert not (folder / "summary.json").exists()
    checkpoint = load(folder / "checkpoint.pt")  # plain data: no pickle, no SB3 zip
    assert checkpoint["format"] == 2 and checkpoint["algorithm"] == "sb3_sac"
    resume = command[:command.index("2000")] + ["300"] + command[command.index("2000") + 1:] + ["--resume", str(folder)]

    # a checkpoint that does not fit this run's model is refused before the folder changes
    before = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    refused = subprocess.run(resume + ["--hidden-size", "32"], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert str(folder / "checkpoint.pt") in error_line(refused.stderr) and "--hidden-size" in refused.stderr
    assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before

    resumed = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((folder / "summary.json").read_text())["global_step"] == 300
    steps = [int(r["global_step"]) for r in eval_rows(folder) if r["mode"] == "deterministic"]
    assert steps == [100, 200, 300]  # no row twice, none lost
    assert list(tmp_path.iterdir()) == [folder]

    # the resumed run's checkpoint is plain data too
    final = load(folder / "checkpoint.pt")
    assert final["num_timesteps"] == final["state"]["global_step"] == 300
    rows = final["replay_buffer"]["pos"]  # SB3 drops the transition of the step a stop signal ends
    assert 290 < rows <= 300 and final["replay_buffer"]["observations"].shape == (rows, 1, 3)
    # resuming the completed run at the same budget: one error line, nothing changed (as the scripts)
    before = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    refused = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "already reached step 300" in error_line(refused.stderr), refused.stderr
    assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before
    # stopped during its final evaluation (no summary.json): resuming loads the checkpoint into a fresh
    # model and writes it back unchanged (networks, optimizers, alpha, buffer, RNG states)
    (folder / "summary.json").unlink()
    again = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert_same(load(folder / "checkpoint.pt"), final)
    assert json.loads((folder / "summary.json").read_text())["global_step"] == 300


def test_bad_input_exits_2_without_a_run_folder(tmp_path):
    result = subprocess.run([sys.executable, SB3, "--env-id", "NoSuchEnv-v0", "--output-dir", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("sb3_sac.py: error: cannot make env")
    assert not list(tmp_path.iterdir())


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    folder, marker = tmp_path / "run", tmp_path / "MARKER"
    folder.mkdir()
    payload = {"format": 2, "algorithm": "sb3_sac", "state": {}, "payload": WritesMarker(marker)}
    torch.save(payload, folder / "checkpoint.pt")
    result = subprocess.run([sys.executable, SB3, "--env-id", "Pendulum-v1", "--resume", str(folder)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"cannot resume from {folder / 'checkpoint.pt'}" in error_line(result.stderr)
    assert not marker.exists()
    assert [path.name for path in folder.iterdir()] == ["checkpoint.pt"]

    # a bare pickle (not a torch.save zip) is refused the same way (in process: no second start-up)
    from benchmark.sb3_sac import ConfigError, load_checkpoint

    with open(folder / "checkpoint.pt", "wb") as f:
        pickle.dump(payload, f, protocol=2)  # the protocol torch.save uses: no warning about it
    with pytest.raises(ConfigError, match="cannot resume from"):
        load_checkpoint(folder / "checkpoint.pt", None, None, "cpu")  # refused before a model is built
    assert not marker.exists()


def test_checkpoint_saves_only_the_filled_rows_of_the_buffer(tmp_path):
    """Default 1M-row buffer, 200 steps: each saved buffer array owns exactly its 200 rows (torch.save
    writes a tensor's whole storage, so a view of SB3's arrays would write all 1M rows)."""
    result = subprocess.run([sys.executable, SB3, "--env-id", "Pendulum-v1", "--output-dir", str(tmp_path),
                             "--total-timesteps", "200", "--learning-starts", "100", "--eval-every", "0",
                             "--checkpoint-every", "200", "--hidden-size", "32", "--batch-size", "32"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    (folder,) = tmp_path.iterdir()
    buffer = load(folder / "checkpoint.pt")["replay_buffer"]
    arrays = {name: value for name, value in buffer.items() if isinstance(value, torch.Tensor)}
    assert arrays and all(len(array) == 200 for array in arrays.values())
    for name, array in arrays.items():
        assert array.untyped_storage().nbytes() == array.numel() * array.element_size(), name
    assert (folder / "checkpoint.pt").stat().st_size < 1_000_000
