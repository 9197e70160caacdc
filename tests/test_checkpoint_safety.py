"""A checkpoint is data, never code (every script): `--resume` loads with weights_only=True and
checks the structure first, so a crafted or broken checkpoint.pt is one `error:` line, exit code
2, no traceback, nothing run and nothing created or changed in the run folder."""

from __future__ import annotations

import importlib
import os
import pickle

import numpy as np
import pytest
import torch

from conftest import run_script

SCRIPTS = ("sac_continuous.py", "gmm_density_matching.py", "posac_jko.py")
CLI = ["--env-id", "Pendulum-v1"]


class WritesMarker:
    """Unpickling this object runs `touch MARKER`: what a malicious checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plain_checkpoint(module, **changes) -> dict:
    """A checkpoint whose top level is well formed for `module` on Pendulum-v1 (args included)."""
    args = module.args_from_flat(dict(env_id="Pendulum-v1"))
    if hasattr(module, "parse_w2_weights"):
        args.w2_weights = module.parse_w2_weights(args.w2_weights)
    state = {"format": module.CHECKPOINT_FORMAT, "algorithm": module.ALGORITHM, "args": module.flat_args(args),
             "global_step": 100, "train_time": 1.0, "train_steps": 0, "episodes": 0, "last_return": 0.0,
             "agent": {}, "replay_buffer": {}, "rng": {}, "eval_generator": torch.Generator().get_state()}
    state.update(changes)
    return state


def write(path, kind: str, module, marker: str) -> str:
    """Fill `path` (a run folder's checkpoint.pt) with one kind of bad checkpoint; the expected
    message fragment is returned."""
    if kind == "code-executing object":
        torch.save({"algorithm": module.ALGORITHM, "args": {}, "payload": WritesMarker(marker)}, path)
        return "a checkpoint is data only, so it was not loaded"
    if kind == "plain pickle with code":
        with open(path, "wb") as f:
            pickle.dump({"payload": WritesMarker(marker)}, f, protocol=2)  # torch.load's own protocol
        return "cannot read"
    if kind == "missing keys":
        state = plain_checkpoint(module)
        del state["replay_buffer"]
        torch.save(state, path)
        return "checkpoint lacks 'replay_buffer'"
    if kind == "wrong value types":
        torch.save(plain_checkpoint(module, global_step="100"), path)
        return "checkpoint's 'global_step' is a str, not a int"
    if kind == "networks that do not fit":
        torch.save(plain_checkpoint(module), path)
        return "does not fit this run"
    if kind == "unknown args":
        state = plain_checkpoint(module)
        state["args"]["no_such_flag"] = 1
        torch.save(state, path)
        return "fields this script does not have: no_such_flag"
    if kind == "previous format (pickled NumPy state)":
        torch.save({**plain_checkpoint(module), "rng": {"numpy": np.random.get_state()}}, path)
        return "written by an earlier version of this script"
    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
        return "cannot read"
    if kind == "truncated file":
        torch.save(plain_checkpoint(module), path)
        path.write_bytes(path.read_bytes()[:200])
        return "cannot read"
    if kind == "empty file":
        path.write_bytes(b"")
        return "cannot read"
    if kind == "directory named checkpoint.pt":
        path.mkdir()
        return "no checkpoint.pt there"
    raise ValueError(kind)


KINDS = ["code-executing object", "plain pickle with code", "missing keys", "wrong value types",
         "networks that do not fit", "unknown args", "previous format (pickled NumPy state)", "random bytes",
         "truncated file", "empty file", "directory named checkpoint.pt"]


def folder_contents(folder) -> dict:
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in sorted(folder.iterdir())}


def bad_run_folder(tmp_path, module, kind: str):
    """A run folder holding one kind of bad checkpoint.pt; returns (folder, marker, message, contents)."""
    run_dir = tmp_path / f"Pendulum-v1__{module.ALGORITHM}__1__1700000000"
    run_dir.mkdir()
    (run_dir / "args.json").write_text('{"algorithm": "%s"}' % module.ALGORITHM)
    (run_dir / "eval.csv").write_text("global_step,policy,mode,mean_return,std_return,episodes\n100,0,deterministic,-1.0,0.0,2\n")
    marker = tmp_path / "code_ran"
    message = write(run_dir / "checkpoint.pt", kind, module, str(marker))
    return run_dir, marker, message, folder_contents(run_dir)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_checkpoint_is_one_clear_error_and_runs_nothing(tmp_path, script, kind, monkeypatch, capsys):
    """The script's own entry point, in this process (a code-executing pickle would run here)."""
    module = importlib.import_module(script[:-3])
    run_dir, marker, message, before = bad_run_folder(tmp_path, module, kind)
    monkeypatch.setattr("sys.argv", [script, *CLI, "--resume", str(run_dir), "--output-dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, stderr
    error_lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], stderr
    assert not marker.exists(), "the checkpoint's code ran"
    assert folder_contents(run_dir) == before, "the run folder was changed"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_command_line_refuses_a_code_executing_checkpoint(tmp_path, script):
    """The same as a user runs it: exit code 2, one line, no traceback, the code did not run."""
    module = importlib.import_module(script[:-3])
    run_dir, marker, message, before = bad_run_folder(tmp_path, module, "code-executing object")
    result = run_script(script, *CLI, "--resume", str(run_dir), "--output-dir", str(tmp_path / "out"), timeout=180)
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert "Traceback" not in result.stderr and not marker.exists()
    assert folder_contents(run_dir) == before


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_loader_unpickles_objects(script):
    """Every torch.load in the scripts and benchmark/ is a weights_only load."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [os.path.join(root, script)] + [os.path.join(root, "benchmark", name)
                                            for name in os.listdir(os.path.join(root, "benchmark")) if name.endswith(".py")]
    for path in paths:
        with open(path) as f:
            text = f.read()
        assert "weights_only=False" not in text, path
        for call in text.split("torch.load(")[1:]:
            assert "weights_only=True" in call.split(")")[0] + call.split("\n")[0], path


# ---- a checkpoint holds the filled rows of the replay buffer, not its whole storage ---------------
def stored_bytes(tensor: torch.Tensor) -> int:
    """What torch.save writes for `tensor`: its whole storage, not only the elements it views."""
    return tensor.untyped_storage().nbytes()


@pytest.mark.parametrize("script", SCRIPTS)
def test_checkpoint_saves_only_the_filled_rows_of_the_buffer(tmp_path, script):
    """With the default 1M-row buffer, 200 steps on Pendulum: each saved buffer array owns exactly
    its 200 rows, and the file is far below the 36 MB a whole-storage save of the buffer costs
    (by the same arithmetic, a Humanoid-v4 checkpoint would be ~3 GB from the first one)."""
    module = importlib.import_module(script[:-3])
    args = module.args_from_flat(dict(env_id="Pendulum-v1", total_timesteps=200, learning_starts=100, random_steps=100,
                                      batch_size=32, hidden_size=32, eval_every=0, eval_episodes=1,
                                      checkpoint_every=200, output_dir=str(tmp_path)))
    assert args.buffer_size == 1_000_000
    if hasattr(module, "parse_w2_weights"):
        args.w2_weights = module.parse_w2_weights(args.w2_weights)
    run_dir = module.train(args)["run_dir"]
    path = os.path.join(run_dir, "checkpoint.pt")
    buffer = torch.load(path, weights_only=True)["replay_buffer"]
    arrays = {name: value for name, value in buffer.items() if isinstance(value, torch.Tensor) and value.dim() >= 1
              and name != "generator"}
    assert set(arrays) == {"obs", "next_obs", "actions", "rewards", "terminations"}
    for name, array in arrays.items():
        assert len(array) == 200 and stored_bytes(array) == array.numel() * array.element_size(), name
    assert os.path.getsize(path) < 1_000_000, f"{os.path.getsize(path)} bytes"


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_checkpoint_keeps_every_network_optimizer_and_generator_of_the_agent(script):
    """Every network, optimizer, random generator and trainable tensor that the agent holds is named in
    its CHECKPOINT_PARTS (a forgotten one would restart from scratch on --resume, silently), and
    load_agent_state(agent_state(...)) carries a trained agent's values into a fresh one."""
    module = importlib.import_module(script[:-3])
    args = module.args_from_flat(dict(env_id="Pendulum-v1", hidden_size=16))
    if hasattr(args, "autotune"):  # so the temperature's optimizer exists
        args.autotune = True
    if hasattr(module, "parse_w2_weights"):
        args.num_actors, args.w2_weights = 2, module.parse_w2_weights(("0.0", "0.1"))
    space = module.check_env("Pendulum-v1")
    torch.manual_seed(0)
    agent = module.Agent(args, 3, space, torch.device("cpu"))
    stateful = (torch.nn.Module, torch.optim.Optimizer, torch.Generator)
    held = {name for name, value in vars(agent).items()
            if isinstance(value, stateful) or (isinstance(value, torch.Tensor) and value.requires_grad)}
    assert held <= set(module.Agent.CHECKPOINT_PARTS), held - set(module.Agent.CHECKPOINT_PARTS)
    with torch.no_grad():  # change every parameter, then check that a fresh agent takes the values
        for name in module.Agent.CHECKPOINT_PARTS:
            if isinstance(getattr(agent, name), torch.nn.Module):
                for parameter in getattr(agent, name).parameters():
                    parameter.add_(1.0)
    torch.manual_seed(1)
    fresh = module.Agent(args, 3, space, torch.device("cpu"))
    module.load_agent_state(fresh, module.agent_state(agent))
    for name in module.Agent.CHECKPOINT_PARTS:
        if isinstance(getattr(agent, name), torch.nn.Module):
            for a, b in zip(getattr(agent, name).parameters(), getattr(fresh, name).parameters(), strict=True):
                assert torch.equal(a, b), name
