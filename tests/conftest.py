"""Shared test helpers: running a script as a user would, reading its outputs, and small
scripted environments registered with gymnasium for the done-handling and NaN tests."""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# On a bare machine (no libosmesa6, no Slurm) the tests that need them skip, saying why. CI
# installs both and sets REQUIRE_ALL_TESTS=1 (.ci/run): there a missing piece fails the test
# instead, so CI proves that video capture and the Slurm sweep really ran.
REQUIRE_ALL_TESTS = os.environ.get("REQUIRE_ALL_TESTS") == "1"



def replace_flags(module, args, **changes):
    """dataclasses.replace for a script's Args, by flag name wherever the flag lives (Args or
    Args.run): replace_flags(sac, args, resume=run_dir)."""
    return module.args_from_flat({**module.flat_args(args), **changes})


@pytest.fixture(autouse=True)
def keep_mujoco_gl_unchanged():
    """A test that trains with --capture-video in this process sets MUJOCO_GL=osmesa here (the
    script does, to render headless); every later subprocess would inherit it, and on a machine
    without OSMesa even making a MuJoCo env then fails. So each test gets the variable back."""
    before = os.environ.get("MUJOCO_GL")
    yield
    if before is None:
        os.environ.pop("MUJOCO_GL", None)
    else:
        os.environ["MUJOCO_GL"] = before


def skip_unless_available(problem: str | None) -> None:
    """Skip the calling test with `problem` as the reason (or fail it under REQUIRE_ALL_TESTS=1);
    do nothing when problem is None."""
    if problem is None:
        return
    if REQUIRE_ALL_TESTS:
        pytest.fail(f"{problem} (REQUIRE_ALL_TESTS=1: this test must run here)")
    pytest.skip(problem)


def require_video(env_id: str) -> None:
    """Skip (or fail in CI) unless the scripts' --capture-video preflight (run_extras.py) passes for env_id."""
    import run_extras

    skip_unless_available(run_extras.video_problem(env_id))


def run_script(script: str, *cli_args: str, timeout: float = 300, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python <script> <cli_args>` from the repo root, capturing output (2 torch threads)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    return subprocess.run([sys.executable, os.path.join(REPO, script), *cli_args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def run_main(module, argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """The script's own entry point in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [f"{module.ALGORITHM}.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def only_run_dir(output_dir: str) -> str:
    """The single run folder a script created under output_dir."""
    runs = sorted(glob.glob(os.path.join(str(output_dir), "*__*__*__*")))
    assert len(runs) == 1, f"expected one run folder in {output_dir}, found {runs}"
    return runs[0]


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def loss_rows(run_dir: str) -> list[tuple]:
    """metrics.csv without the wall-clock columns and SPS: what must repeat exactly for a seed."""
    return [(r["global_step"], r["metric"], r["value"]) for r in read_csv(os.path.join(run_dir, "metrics.csv"))
            if r["metric"] != "charts/SPS"]


# ---- scripted environments ---------------------------------------------------------------
class ScriptedEnv(gym.Env):
    """1-D env whose observation is the step count; reward 1 per step. Episodes end by
    termination at `terminate_at` or by the TimeLimit wrapper at max_episode_steps (truncation),
    so a test can check which transitions bootstrap."""

    def __init__(self, terminate_at: int = 10_000, nan_reward_after: int | None = None):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Box(np.array([-1.0], np.float32), np.array([3.0], np.float32))
        self.terminate_at, self.nan_reward_after = terminate_at, nan_reward_after
        self.t, self.total = 0, 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        self.total += 1
        reward = 1.0
        if self.nan_reward_after is not None and self.total > self.nan_reward_after:
            reward = float("nan")
        return np.array([float(self.t)], np.float32), reward, self.t >= self.terminate_at, False, {}


for _id, _kwargs, _limit in (("ScriptedTruncate-v0", {}, 5), ("ScriptedTerminate-v0", {"terminate_at": 5}, 100),
                             ("ScriptedNaN-v0", {"nan_reward_after": 600}, 50)):
    if _id not in gym.registry:
        gym.register(_id, entry_point=ScriptedEnv, kwargs=_kwargs, max_episode_steps=_limit)


@pytest.fixture
def tiny_args_common():
    """CLI flags for a fast run on Pendulum: small nets, early learning, frequent everything."""
    return ["--env-id", "Pendulum-v1", "--total-timesteps", "400", "--learning-starts", "100",
            "--batch-size", "32", "--eval-every", "200", "--eval-episodes", "2", "--log-every", "100",
            "--checkpoint-every", "200"]


def flat_state(checkpoint: dict) -> dict:
    """Every tensor of a checkpoint, by a dotted path (for exact comparison)."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, torch.Tensor):
            out[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        elif isinstance(value, (list, tuple)) and prefix.endswith("state"):
            for i, item in enumerate(value):
                walk(f"{prefix}.{i}", item)

    walk("", checkpoint)
    return out


# ---- behaviours every algorithm script shares (checked once per script by these helpers) ----
def assert_bad_input_rejected(script: str, cli: list, message: str, tmp_path) -> None:
    """Bad input: exit code 2, exactly one `error:` line containing `message`, no traceback and
    no run folder. Items of `cli` may be callables of tmp_path (to build a checkpoint first)."""
    cli = [item(tmp_path) if callable(item) else item for item in cli]
    out_dir = tmp_path / "out"
    result = run_script(script, *cli, "--output-dir", str(out_dir), timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if "error:" in line]) == 1
    assert not out_dir.exists(), "no run folder may be created for bad input"


def bad_input_test(script: str, table: dict):
    """The parametrized test every script's module defines over its own table of bad inputs
    (name -> (cli, message)): `test_bad_input_is_one_clear_error = bad_input_test(script, TABLE)`."""
    @pytest.mark.parametrize("name", list(table))
    def test_bad_input_is_one_clear_error(tmp_path, name):
        cli, message = table[name]
        assert_bad_input_rejected(script, cli, message, tmp_path)
    return test_bad_input_is_one_clear_error


def assert_episode_end_transitions_stored(run_dir: str, expect_termination: bool, episode_ends: int) -> None:
    """Scripted env (obs = step count, episodes of 5 steps): the transition out of obs 4 must store
    next_obs 5 (the true final state, not the next episode's reset obs 0) and d = termination;
    the buffer must hold `episode_ends` such transitions."""
    buffer = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["replay_buffer"]
    obs, next_obs, done = buffer["obs"][:, 0], buffer["next_obs"][:, 0], buffer["terminations"]
    assert torch.equal(next_obs, obs + 1), "next_obs must be the step after obs, also at episode ends"
    last = obs == 4
    assert last.sum() == episode_ends
    assert (done[last] == float(expect_termination)).all() and (done[~last] == 0).all()


def assert_same_seed_same_results(run_dirs: list[str]) -> None:
    """run_dirs: two runs with one seed, then one with another. The first two must write identical
    evaluations and losses; the third must differ."""
    evals = [[(r["global_step"], r["mode"], r["mean_return"]) for r in read_csv(os.path.join(d, "eval.csv"))]
             for d in run_dirs]
    losses = [loss_rows(d) for d in run_dirs]
    assert evals[0] == evals[1] and losses[0] == losses[1]
    assert evals[0] != evals[2] and losses[0] != losses[2]


def assert_resumed_to(run_dir: str, result: dict, total_timesteps: int) -> None:
    """A run resumed with a larger budget continues in its own folder up to the new total, and no
    evaluation row is written twice."""
    assert result["run_dir"] == run_dir and result["global_step"] == total_timesteps
    steps = [(r["global_step"], r["mode"]) for r in read_csv(os.path.join(run_dir, "eval.csv"))]
    assert len(steps) == len(set(steps)) and (str(total_timesteps), "deterministic") in steps
    with open(os.path.join(run_dir, "summary.json")) as f:
        assert json.load(f)["global_step"] == total_timesteps


def interrupt_then_resume(script: str, cli: list[str], tmp_path, extra_steps: int = 100) -> None:
    """Start `script` with --total-timesteps 100000, send SIGINT once step 300 is logged, check the
    exit code 130, the checkpoint and the printed resume command; then run that command (with a
    budget `extra_steps` past the checkpoint) and check that it finishes the same run folder."""
    import json
    import signal

    import torch

    process = subprocess.Popen([sys.executable, os.path.join(REPO, script), "--total-timesteps", "100000",
                                "--log-every", "100", "--output-dir", str(tmp_path), *cli], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in process.stdout:  # wait until training is under way
        if line.startswith("step 300/"):
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    run_dir = only_run_dir(tmp_path)
    assert f"Resume with: python {script}" in stderr and f"--resume {run_dir}" in stderr, stderr
    step = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["global_step"]
    assert step >= 300
    command = stderr.split("Resume with: python ")[1].strip().split()
    command[command.index("100000")] = str(step + extra_steps)  # finish soon after the interruption
    finished = run_script(*command, timeout=300)
    assert finished.returncode == 0, finished.stderr
    with open(os.path.join(run_dir, "summary.json")) as f:
        assert json.load(f)["global_step"] == step + extra_steps


def assert_video_written(run_dir: str) -> None:
    videos = [f for f in os.listdir(os.path.join(run_dir, "videos")) if f.endswith(".mp4")]
    assert videos and os.path.getsize(os.path.join(run_dir, "videos", videos[0])) > 0


def assert_nan_stops_at_last_good_checkpoint(train, error_type, args, tmp_path) -> None:
    """ScriptedNaN-v0 returns NaN rewards after 600 steps: the critic loss turns NaN, the run stops
    with `error_type` naming the last good checkpoint (written at step 600 with checkpoint_every
    300), and that checkpoint still holds finite networks."""
    import torch

    with pytest.raises(error_type, match="Last good checkpoint: .*step 600"):
        train(args)
    checkpoint = torch.load(os.path.join(only_run_dir(tmp_path), "checkpoint.pt"), weights_only=True)
    assert checkpoint["global_step"] == 600
    for name, tensor in {**checkpoint["agent"]["actor"], **checkpoint["agent"]["critics"]}.items():
        assert torch.isfinite(tensor).all(), name


def foreign_checkpoint(algorithm: str):
    """A checkpoint-maker for the bad-input tables: a file claiming to come from `algorithm`."""
    def make(tmp_path) -> str:
        import torch

        path = tmp_path / "foreign.pt"
        torch.save({"algorithm": algorithm, "args": {}}, path)
        return str(path)
    return make


# bad inputs every algorithm script rejects the same way (each test file adds its own knobs' cases)
COMMON_BAD_INPUTS = {
    "unknown env": (["--env-id", "NoSuchEnv-v9"], "unknown or unavailable environment 'NoSuchEnv-v9'"),
    "discrete env": (["--env-id", "CartPole-v1"], "CartPole-v1 has a Discrete action space"),
    "batch > buffer": (["--batch-size", "512", "--buffer-size", "256"],
                       "--batch-size (512) cannot exceed --buffer-size (256)"),
    "missing resume": (["--resume", "/nonexistent/run"], "no checkpoint.pt there"),
}
