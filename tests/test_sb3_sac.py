"""benchmark/sb3_sac.py obeys docs/CONTRACT.md: a two-run local sweep of it end to end (then the
report on its folders), SIGTERM -> checkpoint + exit 130 -> --resume finishes the same run, and
bad input -> exit 2 before any run folder exists. Tiny budgets on Pendulum-v1, one thread."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmark.report import report
from benchmark.sweep import Args, main

ROOT = Path(__file__).resolve().parent.parent
SB3 = str(ROOT / "benchmark" / "sb3_sac.py")
TINY = ["--total-timesteps", "300", "--learning-starts", "100", "--eval-every", "100", "--eval-episodes", "1",
        "--checkpoint-every", "100", "--log-every", "100", "--buffer-size", "1000", "--hidden-size", "64",
        "--batch-size", "64"]


def eval_rows(folder: Path) -> list[dict]:
    with open(folder / "eval.csv") as f:
        return list(csv.DictReader(f))


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
    resumed = subprocess.run(command[:command.index("2000")] + ["300"] + command[command.index("2000") + 1:]
                             + ["--resume", str(folder)], env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((folder / "summary.json").read_text())["global_step"] == 300
    steps = [int(r["global_step"]) for r in eval_rows(folder) if r["mode"] == "deterministic"]
    assert steps == [100, 200, 300]  # no row twice, none lost
    assert list(tmp_path.iterdir()) == [folder]


def test_bad_input_exits_2_without_a_run_folder(tmp_path):
    result = subprocess.run([sys.executable, SB3, "--env-id", "NoSuchEnv-v0", "--output-dir", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("sb3_sac.py: error: cannot make env")
    assert not list(tmp_path.iterdir())
