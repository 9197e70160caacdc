"""benchmark/sweep.py: grid expansion (CLI and YAML), the skip/resume rule on fake run folders,
the sbatch file, and local sweeps end to end with tests/benchmark/fake_algo.py."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from benchmark.sweep import (Args, Run, SweepError, expand_grid, expand_mapping, expand_yaml, main, parse_cli,
                             parse_grid, plan, planned_command, sbatch_script)

FAKE = str(Path(__file__).with_name("fake_algo.py"))
SWEEP = str(Path(__file__).resolve().parents[2] / "benchmark" / "sweep.py")

POSAC_YAML = textwrap.dedent("""
    scripts: [posac_jko.py]
    common:
      seeds: [123456, 789012]
      enabled_environments:
        - Humanoid-v5
        - HalfCheetah-v5
      num_actors: 2
    environments:
      Humanoid-v5:
        w2_weights_list:
          - [0.0, 0.1]
          - [0.0, 0.2]
          - [0.0, 0.3]
      HalfCheetah-v5:
        w2_weights: [0.0, 0.1]
      Walker2d-v5:            # not enabled: ignored
        w2_weights: [0.0, 0.5]
""")


# ---- grid expansion -----------------------------------------------------------------------------


def test_expand_grid_is_the_full_product_in_order():
    runs = expand_grid(["a.py", "b.py"], ["E1-v0", "E2-v0"], [1, 2], [["--tau", "0.1"], []],
                       ["--total-timesteps", "10"], output_dir="out")
    assert len(runs) == 2 * 2 * 2 * 2
    assert runs[0] == Run("a.py", "E1-v0", 1, ("--total-timesteps", "10", "--tau", "0.1"), "out")
    assert runs[1] == Run("a.py", "E1-v0", 2, ("--total-timesteps", "10", "--tau", "0.1"), "out")
    assert runs[2].extra_args == ("--total-timesteps", "10")
    assert [r.script for r in runs] == ["a.py"] * 8 + ["b.py"] * 8
    assert runs[0].command("py") == ["py", "a.py", "--env-id", "E1-v0", "--seed", "1", "--exp-name", runs[0].exp_name,
                                     "--output-dir", "out", "--total-timesteps", "10", "--tau", "0.1"]


def test_exp_name_is_stem_plus_hash_of_extra_args():
    a = Run("dir/posac_jko.py", "E-v0", 1, ("--w2-weights", "0.0", "0.1"))
    assert re.fullmatch(r"posac_jko-[0-9a-f]{8}", a.exp_name)
    # same configuration -> same name, whatever the env, seed or output dir
    assert Run("posac_jko.py", "F-v0", 7, ("--w2-weights", "0.0", "0.1"), "elsewhere").exp_name == a.exp_name
    assert Run("posac_jko.py", "E-v0", 1, ("--w2-weights", "0.0", "0.2")).exp_name != a.exp_name
    assert a.name == f"E-v0__{a.exp_name}__1"


def test_parse_grid_sweeps_the_product_and_splits_list_values():
    configs = expand_mapping(parse_grid(["tau=0.1,0.2", "w2_weights=0.0 0.1,0.0 0.2", "autotune=false"]))
    assert configs == [
        ["--tau", "0.1", "--w2-weights", "0.0", "0.1", "--no-autotune"],
        ["--tau", "0.1", "--w2-weights", "0.0", "0.2", "--no-autotune"],
        ["--tau", "0.2", "--w2-weights", "0.0", "0.1", "--no-autotune"],
        ["--tau", "0.2", "--w2-weights", "0.0", "0.2", "--no-autotune"],
    ]
    with pytest.raises(SweepError):
        parse_grid(["tau"])


def test_parse_cli_sends_everything_after_double_dash_to_every_run():
    args = parse_cli(["--scripts", "a.py", "--env-ids", "E-v0", "--seeds", "1", "2", "--",
                      "--total-timesteps", "50", "--eval-every", "10"])
    assert args.scripts == ["a.py"] and args.seeds == [1, 2]
    assert args.common_args == ["--total-timesteps", "50", "--eval-every", "10"]


def test_expand_yaml_posac_format():
    runs = expand_yaml(yaml.safe_load(POSAC_YAML), output_dir="out")
    assert len(runs) == 3 * 2 + 1 * 2
    humanoid = [r for r in runs if r.env_id == "Humanoid-v5"]
    assert [r.extra_args for r in humanoid[::2]] == [
        ("--num-actors", "2", "--w2-weights", "0.0", "0.1"),
        ("--num-actors", "2", "--w2-weights", "0.0", "0.2"),
        ("--num-actors", "2", "--w2-weights", "0.0", "0.3"),
    ]
    assert [r.seed for r in humanoid] == [123456, 789012] * 3
    assert len({r.exp_name for r in humanoid}) == 3
    cheetah = [r for r in runs if r.env_id == "HalfCheetah-v5"]
    assert cheetah[0].extra_args == ("--num-actors", "2", "--w2-weights", "0.0", "0.1")
    assert all(r.script == "posac_jko.py" and r.output_dir == "out" for r in runs)


def test_expand_yaml_cli_overrides_and_raw_arg_lists():
    config = yaml.safe_load(textwrap.dedent("""
        common: {seeds: [1, 2, 3], enabled_environments: [A-v0, B-v0], total_timesteps: 100, cuda: false}
        environments:
          A-v0: ["--tau", "0.01"]
          B-v0: [["--tau", "0.01"], ["--tau", "0.02"]]
    """))
    runs = expand_yaml(config, scripts=["x.py"], seeds=[5], common_args=["--eval-every", "10"])
    assert [(r.env_id, r.seed, r.extra_args) for r in runs] == [
        ("A-v0", 5, ("--eval-every", "10", "--total-timesteps", "100", "--no-cuda", "--tau", "0.01")),
        ("B-v0", 5, ("--eval-every", "10", "--total-timesteps", "100", "--no-cuda", "--tau", "0.01")),
        ("B-v0", 5, ("--eval-every", "10", "--total-timesteps", "100", "--no-cuda", "--tau", "0.02")),
    ]
    assert [r.env_id for r in expand_yaml(config, scripts=["x.py"], env_ids=["B-v0"])] == ["B-v0"] * 6
    assert runs[0].total_timesteps == 100


def test_expand_yaml_errors():
    with pytest.raises(SweepError, match="no scripts"):
        expand_yaml({"common": {"seeds": [1]}, "environments": {"A-v0": None}})
    with pytest.raises(SweepError, match="no seeds"):
        expand_yaml({"environments": {"A-v0": None}}, scripts=["x.py"])
    with pytest.raises(SweepError, match="non-empty list"):
        expand_yaml({"common": {"seeds": [1]}, "environments": {"A-v0": {"w2_weights_list": []}}}, scripts=["x.py"])


def test_bad_input_exits_2(capsys):
    assert main(Args(scripts=["does_not_exist.py"], env_ids=["E-v0"])) == 2
    assert "error: script not found" in capsys.readouterr().err


# ---- skip / resume on fake run folders ------------------------------------------------------------


def make_folder(run: Run, unix_time: int, checkpoint=False, summary_step=None, total=None) -> Path:
    folder = Path(run.output_dir) / f"{run.name}__{unix_time}"
    folder.mkdir(parents=True)
    if checkpoint:
        (folder / "checkpoint.pt").write_text("{}")
    if summary_step is not None:
        (folder / "summary.json").write_text(json.dumps({"global_step": summary_step, "total_timesteps": total or summary_step}))
    return folder


def test_plan_skip_resume_start(tmp_path):
    run = Run("algo.py", "E-v0", 1, ("--total-timesteps", "100"), str(tmp_path))
    assert plan(run) == ("start", None)
    # other seeds / configurations never match (seed 12 must not pass for seed 1)
    make_folder(Run("algo.py", "E-v0", 12, run.extra_args, str(tmp_path)), 5, checkpoint=True)
    make_folder(Run("algo.py", "E-v0", 1, ("--total-timesteps", "999"), str(tmp_path)), 5, checkpoint=True)
    assert plan(run) == ("start", None)
    # a folder without checkpoint (crashed before the first one) -> start fresh
    make_folder(run, 10)
    assert plan(run) == ("start", None)
    # checkpoints -> resume the newest
    make_folder(run, 20, checkpoint=True)
    newest = make_folder(run, 30, checkpoint=True)
    assert plan(run) == ("resume", newest)
    action, command = planned_command(run, "py")
    assert action == "resume" and command[-2:] == ["--resume", str(newest)]
    # a summary short of the requested budget does not count as finished
    make_folder(run, 40, checkpoint=True, summary_step=50, total=50)
    assert plan(run)[0] == "resume"
    done = make_folder(run, 50, checkpoint=True, summary_step=100)
    assert plan(run) == ("skip", done)
    assert planned_command(run) == ("skip", None)


def test_plan_uses_the_runs_own_budget_without_total_timesteps(tmp_path):
    run = Run("algo.py", "E-v0", 1, (), str(tmp_path))
    make_folder(run, 1, checkpoint=True, summary_step=80, total=100)
    assert plan(run)[0] == "resume"
    finished = make_folder(run, 2, checkpoint=True, summary_step=100, total=100)
    assert plan(run) == ("skip", finished)


# ---- the sbatch file ------------------------------------------------------------------------------


def test_sbatch_script_fills_the_template(tmp_path):
    args = Args(slurm_partition="gpu", slurm_time="01:00:00", slurm_gpus_per_task=1, slurm_cpus_per_task=4,
                slurm_mem="8G", slurm_max_parallel=3, slurm_extra=["--account=abc", "qos=long"], python="/venv/bin/python")
    text = sbatch_script(args, 5, tmp_path / "manifest.json", tmp_path)
    for line in ["#SBATCH --array=0-4%3", "#SBATCH --partition=gpu", "#SBATCH --time=01:00:00",
                 "#SBATCH --gpus-per-task=1", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=8G",
                 "#SBATCH --account=abc", "#SBATCH --qos=long", "export OMP_NUM_THREADS=4 MKL_NUM_THREADS=4"]:
        assert line in text.splitlines()
    assert f"/venv/bin/python {SWEEP} --task-manifest {tmp_path / 'manifest.json'}" in text
    no_gpu = sbatch_script(Args(), 2, tmp_path / "m.json", tmp_path)
    assert "#SBATCH --array=0-1" in no_gpu.splitlines() and "gpus" not in no_gpu and "partition" not in no_gpu
    custom = tmp_path / "custom.sbatch"
    custom.write_text("#!/bin/sh\n#SBATCH --array=$array\n#SBATCH --qos=long\nexec $python $sweep_py --task-manifest $manifest\n")
    assert "#SBATCH --qos=long" in sbatch_script(Args(slurm_template=str(custom)), 2, tmp_path / "m.json", tmp_path)


# ---- local sweeps end to end with the fake script -------------------------------------------------


def local_args(out: Path, **kw) -> Args:
    defaults = dict(scripts=[FAKE], env_ids=["E-v0"], seeds=[1, 2], output_dir=str(out), workers=2, threads=1,
                    python=sys.executable, common_args=["--total-timesteps", "50", "--eval-every", "10",
                                                        "--checkpoint-every", "10"])
    return Args(**{**defaults, **kw})


def invocations(folder: Path) -> list[list[str]]:
    return [json.loads(line) for line in (folder / "invocations.jsonl").read_text().splitlines()]


def test_two_run_local_sweep_end_to_end_then_skip(tmp_path, capsys):
    start = time.time()
    assert main(local_args(tmp_path)) == 0
    folders = sorted(p for p in tmp_path.iterdir() if p.name.startswith("E-v0__"))
    assert [p.name.split("__")[2] for p in folders] == ["1", "2"]
    for folder in folders:
        assert json.loads((folder / "summary.json").read_text())["global_step"] == 50
        assert json.loads((folder / "args.json").read_text())["env"]["OMP_NUM_THREADS"] == "1"
    out = capsys.readouterr().out
    assert "2/2 done (0 skipped), 0 running, 0 failed" in out and "ETA" in out
    # a second sweep finds both finished and starts nothing
    assert main(local_args(tmp_path)) == 0
    assert "2/2 done (2 skipped)" in capsys.readouterr().out
    assert all(len(invocations(f)) == 1 for f in folders)
    assert time.time() - start < 60


def test_failed_run_is_resumed_by_the_next_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ALGO_CRASH_AT", "35")  # like a preemption at step 35; last checkpoint at 30
    assert main(local_args(tmp_path, seeds=[1])) == 1
    (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith("E-v0__")]
    assert not (folder / "summary.json").exists()
    monkeypatch.delenv("FAKE_ALGO_CRASH_AT")
    assert main(local_args(tmp_path, seeds=[1])) == 0
    first, second = invocations(folder)
    assert "--resume" not in first and second[-2:] == ["--resume", str(folder)]
    steps = [int(line.split(",")[0]) for line in (folder / "eval.csv").read_text().splitlines()[1:]]
    assert steps == sorted(steps) and max(steps) == 50
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("E-v0__")]) == 1  # no second folder


def test_dry_run_prints_commands_and_runs_nothing(tmp_path, capsys):
    assert main(local_args(tmp_path, dry_run=True, grid=["tau=0.1,0.2"])) == 0
    out = capsys.readouterr().out
    assert out.count("# start: E-v0__fake_algo-") == 4
    assert "--tau 0.1" in out and "--tau 0.2" in out and "--seed 2" in out
    assert not any(p.name.startswith("E-v0__") for p in tmp_path.iterdir())


def test_interrupted_sweep_checkpoints_and_exits_130(tmp_path):
    env = {**os.environ, "FAKE_ALGO_SLEEP": "0.02"}
    command = [sys.executable, SWEEP, "--scripts", FAKE, "--env-ids", "E-v0", "--seeds", "1", "--threads", "1",
               "--output-dir", str(tmp_path), "--", "--total-timesteps", "1000"]
    sweep = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not list(tmp_path.glob("E-v0__*/invocations.jsonl")) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    sweep.send_signal(signal.SIGTERM)
    out, _ = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, out
    (folder,) = tmp_path.glob("E-v0__*")
    step = json.loads((folder / "checkpoint.pt").read_text())["global_step"]
    assert 0 < step < 1000 and not (folder / "summary.json").exists()
    assert "rerun the sweep to resume" in out


# ---- the shipped entry points ---------------------------------------------------------------------

ROOT = Path(SWEEP).parent.parent


def test_shipped_posac_yaml_expands_to_the_mujoco_set():
    config = yaml.safe_load((ROOT / "benchmark" / "posac_sweep.yaml").read_text())
    runs = expand_yaml(config)
    envs = ["HalfCheetah-v4", "Hopper-v4", "Walker2d-v4", "Ant-v4", "Humanoid-v4"]
    assert sorted({r.env_id for r in runs}) == sorted(envs)
    assert len(runs) == (4 * 1 + 3) * 3  # Humanoid sweeps three W2 weight lists, 3 seeds each
    for run in runs:
        assert run.script == "posac_jko.py" and run.total_timesteps == 1_000_000
        assert run.extra_args[-5:-2] == ("--num-actors", "2", "--w2-weights") and run.extra_args[-2] == "0.0"


def test_shell_entry_point_expands_the_standard_set():
    result = subprocess.run(["bash", str(ROOT / "benchmark" / "sb3_sac.sh"), "--dry-run"],
                            env={**os.environ, "RUN_ARGS": "--eval-every 20000", "PYTHON": sys.executable},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert len(commands) == 5 * 3
    assert all(c.endswith("--total-timesteps 1000000 --eval-every 20000") for c in commands)
    assert "--env-id Humanoid-v4 --seed 3 " in commands[-1]


def test_humanoid_campaign_expands_to_its_ten_runs(tmp_path):
    """benchmark/campaign_humanoid.sh --dry-run: the issue's table, run for run (script, seed, budget, flags);
    the runs committed under benchmark/results/humanoid_300k/runs are copied in first and skipped as finished."""
    result = subprocess.run(["bash", str(ROOT / "benchmark" / "campaign_humanoid.sh"), "--dry-run"],
                            env={**os.environ, "PYTHON": sys.executable, "CAMPAIGN_OUT": str(tmp_path)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    commands = [line.split(" ", 1)[1] for line in lines if not line.startswith("#")]
    committed = sorted(p.name for p in (ROOT / "benchmark" / "results" / "humanoid_300k" / "runs").iterdir())
    skipped = sorted(line.split(": ", 1)[1].rsplit(" (", 1)[0] for line in lines if line.startswith("# skip: "))
    assert committed and skipped == sorted(name.rsplit("__", 1)[0] for name in committed)
    assert sorted(p.name for p in tmp_path.iterdir()) == committed
    every = f"--output-dir {tmp_path} --total-timesteps {{steps}} --eval-every 10000 --eval-episodes 10 --checkpoint-every 10000"
    long, short = every.format(steps=300000), every.format(steps=100000)
    posac = " --num-actors 2 --w2-weights 0.0 0.1"
    source_sampler = " --proposal gaussian --temperature-mode fixed --temperature 1"
    expected = {(script, seed, tail) for script, seeds, tail in [
        ("sac_continuous.py", (1, 2, 3), long), ("gmm_density_matching.py", (1, 2, 3), long),
        ("posac_jko.py", (1, 2), long + posac), ("benchmark/sb3_sac.py", (1,), long),
        ("gmm_density_matching.py", (1,), short + source_sampler)] for seed in seeds}
    found = set()
    for command in commands:
        script, rest = command.split(" --env-id Humanoid-v4 --seed ")
        seed, rest = rest.split(" --exp-name ")
        found.add((script, int(seed), rest.split(" ", 1)[1]))
    for folder in committed:  # a committed run stands for its row of the table: script, seed and budget
        record = json.loads((ROOT / "benchmark" / "results" / "humanoid_300k" / "runs" / folder / "args.json").read_text())
        script = {"sb3_sac": "benchmark/sb3_sac.py"}.get(record["algorithm"], f"{record['algorithm']}.py")
        budget = f"--total-timesteps {record['args']['total_timesteps']} "
        found.update(row for row in expected if row[:2] == (script, record["args"]["seed"]) and budget in row[2])
    assert len(commands) + len(skipped) == 10 and found == expected
