"""A run folder is untrusted input (every script): whatever someone else put in it (args.json,
checkpoint.pt, the CSVs and arrays, leftover temp files, symbolic links), `--resume` and `--evaluate`
run no code from it, write nothing outside it, allocate nothing it does not justify, and never crash
after changing it. A refused folder is exit code 2, exactly one `error:` line, the folder
byte-identical afterwards and nothing outside it created or changed. The same for the command
line's own bad values (non-finite floats, seeds, config files, folders that cannot be written)."""

from __future__ import annotations

import errno
import functools
import hashlib
import importlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

from conftest import REPO, only_run_dir, read_csv, run_main

SCRIPTS = ("sac_continuous.py", "gmm_density_matching.py", "posac_jko.py")
TINY = ["--env-id", "Pendulum-v1", "--total-timesteps", "300", "--learning-starts", "100", "--random-steps", "100",
        "--batch-size", "32", "--hidden-size", "32", "--eval-every", "150", "--eval-episodes", "1",
        "--log-every", "100", "--checkpoint-every", "150"]
EXTRA = {"posac_jko.py": ["--num-actors", "2", "--w2-weights", "0.0", "0.1", "--autotune"],
         "gmm_density_matching.py": ["--num-action-samples", "8"]}


def module_of(script: str):
    return importlib.import_module(script[:-3])


@functools.lru_cache(maxsize=None)
def imports_address_space() -> int:
    """The address space (bytes) a child takes once it has imported what a script imports: PyPI's CUDA
    build of torch maps several GB of libraries at import, the CPU wheel far less, so the caps below
    are headroom above this, not absolute sizes (0 where /proc cannot tell)."""
    probe = subprocess.run([sys.executable, "-c", "import gymnasium, numpy, torch, tyro\n"
                            "print(open('/proc/self/status').read())"], capture_output=True, text=True, timeout=300)
    peak = [line.split()[1] for line in probe.stdout.splitlines() if line.startswith("VmPeak:")]
    return int(peak[0]) * 1024 if peak else 0


def run_limited(script: str, argv: list[str], memory_gb: float = 6.0, env_extra: dict | None = None
                ) -> subprocess.CompletedProcess:
    """The script as a user runs it, in a child whose address space is capped at `memory_gb` above
    what its imports take (a refused allocation fails there instead of taking the machine)."""
    limit = imports_address_space() + int(memory_gb * 2**30)

    def restrict():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    return subprocess.run([sys.executable, os.path.join(REPO, script), *argv], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO, preexec_fn=restrict)


def fingerprint(folder) -> dict:
    """Every entry under `folder`: a file's hash, a link's target, a folder's name."""
    found = {}
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = os.path.join(root, name)
            key = os.path.relpath(path, folder)
            if os.path.islink(path):
                found[key] = "link -> " + os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    found[key] = hashlib.sha1(f.read()).hexdigest()
            else:
                found[key] = "folder"
    return found


def assert_refused(code: int, stderr: str, message: str) -> None:
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert code == 2, stderr
    assert len(errors) == 1 and message in errors[0], stderr
    assert "Traceback" not in stderr, stderr


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """One tiny finished Pendulum run per script, with evaluations and checkpoints (trained once)."""
    runs = {}
    for script in SCRIPTS:
        out = tmp_path_factory.mktemp(script[:-3])
        result = subprocess.run([sys.executable, os.path.join(REPO, script), *TINY, *EXTRA.get(script, []),
                                 "--output-dir", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr
        runs[script] = only_run_dir(out)
    return runs


@pytest.fixture
def handed_over(finished_runs, tmp_path):
    """A copy of a finished run, as a folder handed over by someone else: (script -> folder), plus
    the file outside it that an attacker would like to overwrite."""
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")

    def copy(script: str):
        folder = tmp_path / "handed" / os.path.basename(finished_runs[script])
        shutil.copytree(finished_runs[script], folder)
        return folder
    copy.outside = outside
    return copy


def first_optimizer(agent_state: dict) -> dict:
    """The first optimizer state_dict inside a checkpoint's agent state (any script)."""
    for value in agent_state.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and set(item) == {"state", "param_groups"} and item["state"]:
                return item
    raise AssertionError("no optimizer state in the checkpoint")


def first_weight(agent_state: dict) -> tuple[dict, str]:
    """(the network state_dict, key) of the first 2-D weight in a checkpoint's agent state."""
    for value in agent_state.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                for key, tensor in item.items():
                    if isinstance(tensor, torch.Tensor) and tensor.dim() == 2:
                        return item, key
    raise AssertionError("no weight in the checkpoint")


def edit_checkpoint(folder, change) -> None:
    path = folder / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)


def resume_argv(script: str, folder) -> list[str]:
    return [*TINY[:2], "--total-timesteps", "600", *TINY[4:], *EXTRA.get(script, []), "--resume", str(folder)]


# ---- 1. no write goes through a symbolic link ----------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_link_in_the_folder_is_refused_and_nothing_outside_changes(script, handed_over, monkeypatch, capsys):
    folder = handed_over(script)
    os.symlink(handed_over.outside, folder / "metrics.csv.tmp")
    before = fingerprint(folder)
    code, _, err = run_main(module_of(script), resume_argv(script, folder), monkeypatch, capsys)
    assert_refused(code, err, "is a symbolic link")
    assert fingerprint(folder) == before and handed_over.outside.read_text() == "precious\n"


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_linked_videos_folder_is_refused_by_evaluate(script, handed_over, tmp_path, monkeypatch, capsys):
    folder = handed_over(script)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, folder / "videos")
    before = fingerprint(folder)
    code, _, err = run_main(module_of(script), ["--evaluate", str(folder), "--capture-video"], monkeypatch, capsys)
    assert_refused(code, err, "videos is a symbolic link")
    assert fingerprint(folder) == before and list(elsewhere.iterdir()) == []


def test_atomic_writes_replace_a_planted_temp_link_instead_of_following_it(tmp_path):
    sac = module_of("sac_continuous.py")
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    os.symlink(outside, tmp_path / "args.json.tmp")
    sac.atomic_write_text(str(tmp_path / "args.json"), lambda f: f.write("{}"))
    assert outside.read_text() == "precious\n" and (tmp_path / "args.json").read_text() == "{}"
    assert not os.path.islink(tmp_path / "args.json") and not os.path.exists(tmp_path / "args.json.tmp")


# ---- 2. an env id read from a file never imports code ------------------------------------------------
PAYLOAD = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


@pytest.mark.parametrize("script", SCRIPTS)
def test_evaluate_refuses_an_env_id_with_a_module_part_from_args_json(script, handed_over, monkeypatch, capsys):
    folder = handed_over(script)
    marker = folder.parent / "code_ran"
    (folder.parent / "planted_payload.py").write_text(PAYLOAD.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(folder.parent))  # the module is importable, as runs/<folder>/x.py was
    record = json.loads((folder / "args.json").read_text())
    record["args"]["env_id"] = "planted_payload:Pendulum-v1"
    (folder / "args.json").write_text(json.dumps(record))
    before = fingerprint(folder)
    code, _, err = run_main(module_of(script), ["--evaluate", str(folder)], monkeypatch, capsys)
    assert_refused(code, err, "pass --env-id planted_payload:Pendulum-v1 on the command line")
    assert not marker.exists() and "planted_payload" not in sys.modules
    assert fingerprint(folder) == before


def test_config_file_refuses_an_env_id_with_a_module_part(tmp_path, monkeypatch, capsys):
    config = tmp_path / "experiment.yaml"
    config.write_text("env_name: this:Pendulum-v1\n")
    code, _, err = run_main(module_of("sac_continuous.py"), ["--config", str(config), "--output-dir", str(tmp_path / "out")],
                            monkeypatch, capsys)
    assert_refused(code, err, "a file may only name registered envs")
    assert not (tmp_path / "out").exists()


def test_a_run_on_the_users_own_module_env_is_evaluated_when_the_user_names_it(tmp_path):
    """Typed on the command line, `--env-id mymodule:MyEnv-v0` is the user's own code: training and
    --evaluate work; --evaluate without it refuses, saying how to confirm."""
    (tmp_path / "my_envs.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('MyPendulum-v0', entry_point='gymnasium.envs.classic_control:PendulumEnv', max_episode_steps=50)\n")
    env = {"PYTHONPATH": str(tmp_path)}
    trained = run_limited("sac_continuous.py", ["--env-id", "my_envs:MyPendulum-v0", *TINY[2:], "--output-dir",
                                                str(tmp_path / "out")], env_extra=env)
    assert trained.returncode == 0, trained.stderr
    folder = only_run_dir(tmp_path / "out")
    refused = run_limited("sac_continuous.py", ["--evaluate", folder], env_extra=env)
    assert_refused(refused.returncode, refused.stderr, "pass --env-id my_envs:MyPendulum-v0 on the command line")
    confirmed = run_limited("sac_continuous.py", ["--evaluate", folder, "--env-id", "my_envs:MyPendulum-v0"], env_extra=env)
    assert confirmed.returncode == 0, confirmed.stderr
    assert "actor 0 deterministic" in confirmed.stdout


# ---- 3, 6. every tensor and number of a checkpoint is checked before anything is loaded ------------
def wrong_adam_shape(checkpoint):
    entry = next(iter(first_optimizer(checkpoint["agent"])["state"].values()))
    entry["exp_avg"] = torch.zeros(7)


def set_weight(value_of):
    def change(checkpoint):
        network, key = first_weight(checkpoint["agent"])
        network[key] = value_of(network[key])
    return change


def set_group(key, value):
    def change(checkpoint):
        first_optimizer(checkpoint["agent"])["param_groups"][0][key] = value
    return change


def set_buffer(key, value):
    def change(checkpoint):
        checkpoint["replay_buffer"][key] = value
    return change


def set_top(key, value):
    def change(checkpoint):
        checkpoint[key] = value
    return change


def add_agent_key(checkpoint):
    checkpoint["agent"]["surprise"] = torch.zeros(3)


def nan_rewards(checkpoint):
    checkpoint["replay_buffer"]["rewards"][3] = float("nan")


CRAFTED = {
    "complex weights": (set_weight(lambda w: w.to(torch.complex64)), "torch.complex64"),
    "integer weights": (set_weight(lambda w: w.to(torch.int64)), "torch.int64"),
    "NaN weights": (set_weight(lambda w: torch.full_like(w, float("nan"))), "NaN or infinite"),
    "an extra key": (add_agent_key, "does not fit this run"),
    "lr 'fast'": (set_group("lr", "fast"), "not a finite number"),
    "lr inf": (set_group("lr", float("inf")), "not a finite number"),
    "betas of three": (set_group("betas", (0.9, 0.99, 0.1)), "not a list of 2 entries"),
    "buffer position 0.5": (set_buffer("position", 0.5), "not integers"),
    "negative buffer size": (set_buffer("size", -5), "do not fit"),
    "buffer size past its rows": (set_buffer("size", 250), "do not fit"),
    "NaN in the buffer": (nan_rewards, "NaN or infinite"),
    "global_step 10**30": (set_top("global_step", 10**30), "out of range"),
    "episodes 'x'": (set_top("episodes", "x"), "is a str"),
    "rng of the wrong kind": (set_top("rng", {"python": 1}), "random states"),
}


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("kind", list(CRAFTED))
def test_a_crafted_checkpoint_is_refused_before_anything_changes(script, kind, handed_over, monkeypatch, capsys):
    folder = handed_over(script)
    change, message = CRAFTED[kind]
    edit_checkpoint(folder, change)
    before = fingerprint(folder)
    code, _, err = run_main(module_of(script), resume_argv(script, folder), monkeypatch, capsys)
    assert_refused(code, err, message)
    assert fingerprint(folder) == before


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_adam_state_of_the_wrong_shape_is_refused_as_a_user_runs_it(script, handed_over):
    """In a child process with capped memory: without the check, fused Adam writes out of bounds
    (a segfault, or memory until the OOM killer)."""
    folder = handed_over(script)
    edit_checkpoint(folder, wrong_adam_shape)
    before = fingerprint(folder)
    result = run_limited(script, resume_argv(script, folder))
    assert_refused(result.returncode, result.stderr, "'exp_avg' is (7,)")
    assert fingerprint(folder) == before


# ---- 5. args.json is checked like the command line under --evaluate ------------------------------
ARGS_JSON = {
    "hidden_size '32'": ({"hidden_size": "32"}, "'hidden_size' must be a int"),
    "gamma 'x'": ({"gamma": "x"}, "'gamma' must be a float"),
    "num_layers 2.5": ({"num_layers": 2.5}, "'num_layers' must be a int"),
    "a list for an int": ({"batch_size": [1, 2]}, "'batch_size' must be a int"),
    "hidden_size 10**9": ({"hidden_size": 10**9}, "disagree on hidden_size"),
    "unknown field": ({"sideways": 1}, "fields this script does not have"),
}


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("kind", list(ARGS_JSON))
def test_evaluate_checks_args_json(script, kind, handed_over, monkeypatch, capsys):
    folder = handed_over(script)
    changes, message = ARGS_JSON[kind]
    record = json.loads((folder / "args.json").read_text())
    record["args"].update(changes)
    (folder / "args.json").write_text(json.dumps(record))
    before = fingerprint(folder)
    code, _, err = run_main(module_of(script), ["--evaluate", str(folder)], monkeypatch, capsys)
    assert_refused(code, err, message)
    assert fingerprint(folder) == before


def test_evaluate_refuses_an_unknown_choice_in_args_json(handed_over, monkeypatch, capsys):
    folder = handed_over("sac_continuous.py")
    record = json.loads((folder / "args.json").read_text())
    record["args"]["actor_gradient_type"] = "sideways"
    (folder / "args.json").write_text(json.dumps(record))
    code, _, err = run_main(module_of("sac_continuous.py"), ["--evaluate", str(folder)], monkeypatch, capsys)
    assert_refused(code, err, "'actor_gradient_type' must be one of 'reparametrize', 'reinforce'")


@pytest.mark.parametrize("script", SCRIPTS)
def test_networks_larger_than_the_checkpoint_are_never_built(script, handed_over):
    """args.json AND the checkpoint's args claim hidden_size 10**9 (12 GB of weights): refused
    before building, within a 6 GB address space."""
    folder = handed_over(script)
    edit_checkpoint(folder, lambda checkpoint: checkpoint["args"].update(hidden_size=10**9))
    record = json.loads((folder / "args.json").read_text())
    record["args"]["hidden_size"] = 10**9
    (folder / "args.json").write_text(json.dumps(record))
    before = fingerprint(folder)
    result = run_limited(script, ["--evaluate", str(folder)])
    assert_refused(result.returncode, result.stderr, "asks for networks larger than its checkpoint holds")
    assert fingerprint(folder) == before


# ---- 6, 7. the folder's other files: checked before the first byte changes, bounded ----------------
FOLDER_FILES = {
    "a text step in metrics.csv": ("metrics.csv", b"global_step,wall_time,metric,value\nx,1.0,charts/SPS,3.0\n",
                                   "not a row of this file"),
    "non-UTF-8 eval.csv": ("eval.csv", b"\xff\xfe\x00garbage", "cannot read"),
    "eval.csv without its header": ("eval.csv", b"150,0,deterministic,-1.0,0.0,1\n", "does not start with the header"),
    "a return in eval.csv that is not a number": (
        "eval.csv", b"global_step,policy,mode,mean_return,std_return,episodes\n150,0,deterministic,-1.0x,0.0,1\n",
        "not a row of this file"),
    "an unknown mode in eval.csv": (
        "eval.csv", b"global_step,policy,mode,mean_return,std_return,episodes\n150,0,greedy,-1.0,0.0,1\n",
        "not a row of this file"),
}


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("kind", list(FOLDER_FILES))
def test_a_bad_csv_is_refused_before_anything_changes(script, kind, handed_over, monkeypatch, capsys):
    folder = handed_over(script)
    name, content, message = FOLDER_FILES[kind]
    (folder / name).write_bytes(content)
    before = fingerprint(folder)
    code, _, err = run_main(module_of(script), resume_argv(script, folder), monkeypatch, capsys)
    assert_refused(code, err, message)
    assert fingerprint(folder) == before


def test_an_array_in_the_folder_is_never_read_but_rebuilt_from_eval_csv(handed_over):
    """POSAC's eval_actor_{i}.npy are rebuilt from eval.csv's checked rows, never read: a planted
    header claiming 10**10 rows (240 GB) costs nothing, and the arrays match eval.csv afterwards."""
    folder = handed_over("posac_jko.py")
    path = folder / "eval_actor_0.npy"
    with open(path, "wb") as f:  # a real .npy header for 10**10 rows of 3 float64, and no data
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**10, 3)})
    result = run_limited("posac_jko.py", resume_argv("posac_jko.py", folder), memory_gb=3.0)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_csv(folder / "eval.csv")
    for i in range(2):
        mine = [r for r in rows if r["policy"] == str(i)]
        expected = [[float(r["global_step"]), float(r["mean_return"]), float(s["mean_return"])]
                    for r, s in zip(mine[0::2], mine[1::2])]
        assert [r["mode"] for r in mine] == ["deterministic", "stochastic"] * len(expected)
        assert np.load(folder / f"eval_actor_{i}.npy").tolist() == expected
        assert [row[0] for row in expected] == [150.0, 300.0, 450.0, 600.0]


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_compressed_checkpoint_member_is_refused_before_it_inflates(script, handed_over):
    """A small file whose member inflates to 1 GiB (torch.save never compresses): refused unread."""
    folder = handed_over(script)
    path = folder / "checkpoint.pt"
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for info, data in members:
            archive.writestr(info, data)
        with archive.open(zipfile.ZipInfo(f"{members[0][0].filename.split('/')[0]}/data/999"), "w",
                          force_zip64=True) as member:
            pass
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:
        chunk = bytes(2**24)
        with archive.open("bomb/data/0", "w", force_zip64=True) as member:
            for _ in range(64):
                member.write(chunk)
    assert path.stat().st_size < 5 * 2**20
    before = fingerprint(folder)
    result = run_limited(script, resume_argv(script, folder), memory_gb=4.0)
    assert_refused(result.returncode, result.stderr, "is compressed")
    assert fingerprint(folder) == before


def test_a_yaml_alias_bomb_is_reported_in_bounded_memory(tmp_path):
    """Ten levels of nine aliases: a few hundred bytes on disk, 9**10 items when printed in full."""
    levels = ["&a0 [" + ", ".join(["x"] * 9) + "]"]
    levels += [f"&a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]" for level in range(1, 10)]
    config = tmp_path / "bomb.yaml"
    config.write_text("env_name: Pendulum-v1\ntemperature: [" + ", ".join(levels) + "]\n")
    result = run_limited("sac_continuous.py", ["--config", str(config), "--output-dir", str(tmp_path / "out")],
                         memory_gb=3.0)
    assert_refused(result.returncode, result.stderr, "'temperature' must be a float")
    assert len(result.stderr) < 2000 and not (tmp_path / "out").exists()


# ---- 8. evaluation does not inherit training-only flags -------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_run_trained_with_gpu_flags_is_evaluated_on_the_cpu(script, handed_over, monkeypatch, capsys):
    folder = handed_over(script)
    record = json.loads((folder / "args.json").read_text())
    record["args"].update(cuda=True, compile=True, cudagraphs=True, track=True)
    (folder / "args.json").write_text(json.dumps(record))
    code, out, err = run_main(module_of(script), ["--evaluate", str(folder)], monkeypatch, capsys)
    assert code == 0, err
    assert "actor 0 deterministic" in out


# ---- 9. a kill during the final evaluation, then --resume: one row per evaluation -----------------
@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("cut", ["after the first row", "after every row"])
def test_resuming_a_kill_during_the_final_evaluation_writes_each_row_once(script, cut, handed_over, monkeypatch, capsys):
    folder = handed_over(script)
    (folder / "summary.json").unlink()  # the final evaluation never finished
    if cut == "after the first row":
        eval_lines = (folder / "eval.csv").read_text().splitlines(keepends=True)
        final = [i for i, line in enumerate(eval_lines) if line.startswith("300,")]
        (folder / "eval.csv").write_text("".join(eval_lines[:final[0] + 1]))
    argv = [*TINY, *EXTRA.get(script, []), "--resume", str(folder)]
    code, _, err = run_main(module_of(script), argv, monkeypatch, capsys)
    assert code == 0, err
    evaluations = [(r["global_step"], r["policy"], r["mode"]) for r in read_csv(folder / "eval.csv")]
    assert len(evaluations) == len(set(evaluations)) and ("300", "0", "stochastic") in evaluations
    eval_metrics = [(r["global_step"], r["metric"]) for r in read_csv(folder / "metrics.csv")
                    if r["metric"].startswith("eval/")]
    assert len(eval_metrics) == len(set(eval_metrics))
    if script == "posac_jko.py":
        steps = np.load(folder / "eval_actor_0.npy")[:, 0].tolist()
        assert steps == [150.0, 300.0]


# ---- 11. a non-finite observation or reward is never stored ---------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_nan_from_the_env_stops_before_it_is_stored_or_checkpointed(script, tmp_path):
    module = module_of(script)
    args = module.args_from_flat(dict(env_id="ScriptedNaN-v0", total_timesteps=2000, learning_starts=1500,
                                      random_steps=1500, batch_size=32, hidden_size=32, eval_every=0, eval_episodes=1,
                                      checkpoint_every=300, log_every=100, output_dir=str(tmp_path)))
    if hasattr(module, "parse_w2_weights"):
        args.w2_weights = module.parse_w2_weights(args.w2_weights)
    with pytest.raises(module.NonFiniteLossError, match=r"at step 601; .*Last good checkpoint: .*step 600"):
        module.train(args)
    checkpoint = torch.load(os.path.join(only_run_dir(tmp_path), "checkpoint.pt"), weights_only=True)
    assert checkpoint["global_step"] == 600 and torch.isfinite(checkpoint["replay_buffer"]["rewards"]).all()


# ---- 12. the command line's own bad values: one error line before any work ------------------------
BAD_VALUES = {
    "sac_continuous.py": [["--q-lr", "nan"], ["--policy-lr", "inf"], ["--alpha", "nan"], ["--log-std-max", "inf"]],
    "gmm_density_matching.py": [["--temperature", "nan"], ["--policy-lr", "inf"]],
    "posac_jko.py": [["--lr", "nan"], ["--w2-weights", "0.0", "inf", "--num-actors", "2"]],
}


@pytest.mark.parametrize("script, flags", [(s, f) for s, cases in BAD_VALUES.items() for f in cases]
                         + [(s, ["--seed", seed]) for s in SCRIPTS for seed in ("-1", "4294967296")],
                         ids=lambda value: value if isinstance(value, str) else " ".join(value))
def test_non_finite_numbers_and_out_of_range_seeds_are_refused(script, flags, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(module_of(script), ["--env-id", "Pendulum-v1", *flags, "--output-dir", str(tmp_path / "o")],
                            monkeypatch, capsys)
    assert_refused(code, err, "--seed must lie in" if "--seed" in flags else flags[0])  # the flag, named
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content, message", [
    (b"env_name: Pendulum-v1\n\xff\xfe: 3\n", "cannot read it"),
    (b"env_name: Pendulum-v1\ndiscount: 0.9\ndiscount: 0.5\n", "the key 'discount' is given twice"),
    (b"env_name: !!python/object/apply:os.system ['true']\n", "cannot read it"),
])
def test_a_config_file_that_is_not_plain_utf8_yaml_is_refused(content, message, tmp_path, monkeypatch, capsys):
    config = tmp_path / "experiment.yaml"
    config.write_bytes(content)
    code, _, err = run_main(module_of("sac_continuous.py"), ["--config", str(config), "--output-dir", str(tmp_path / "o")],
                            monkeypatch, capsys)
    assert_refused(code, err, message)
    assert not (tmp_path / "o").exists()


def test_a_folder_that_cannot_be_written_is_one_error(handed_over, tmp_path, monkeypatch, capsys):
    """A read-only run folder for --resume, and an --output-dir under a folder that cannot be
    written: one error before any work. Root (these tests and CI) writes anywhere whatever the
    permission bits say, so the folders are made unwritable to the script through os.access."""
    folder = handed_over("sac_continuous.py")
    blocked = {str(folder), str(tmp_path / "locked")}
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) not in blocked and real_access(path, mode))
    before = fingerprint(folder)
    sac = module_of("sac_continuous.py")
    code, _, err = run_main(sac, resume_argv("sac_continuous.py", folder), monkeypatch, capsys)
    assert_refused(code, err, f"cannot write to {folder}")
    assert fingerprint(folder) == before
    (tmp_path / "locked").mkdir()
    code, _, err = run_main(sac, [*TINY, "--output-dir", str(tmp_path / "locked" / "runs")], monkeypatch, capsys)
    assert_refused(code, err, f"cannot write to {tmp_path / 'locked'}")
    assert not (tmp_path / "locked" / "runs").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(script, handed_over, monkeypatch, capsys):
    folder = handed_over(script)
    previous = (folder / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def save_then_fail(state, f, *args, **kwargs):
        real_save({"half": torch.zeros(1000)}, f)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", save_then_fail)
    code, _, err = run_main(module_of(script), resume_argv(script, folder), monkeypatch, capsys)
    assert_refused(code, err, "No space left on device")
    assert (folder / "checkpoint.pt").read_bytes() == previous
    assert not [name for name in os.listdir(folder) if name.endswith(".tmp")]


def test_the_same_command_three_times_in_one_second_gets_three_folders(tmp_path, monkeypatch):
    sac = module_of("sac_continuous.py")
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)
    args = sac.args_from_flat(dict(env_id="Pendulum-v1", total_timesteps=50, learning_starts=100, random_steps=100,
                                   batch_size=32, hidden_size=32, eval_every=0, eval_episodes=1, log_every=100,
                                   output_dir=str(tmp_path)))
    folders = {sac.train(args)["run_dir"] for _ in range(3)}
    assert len(folders) == 3 and all(os.path.isdir(folder) for folder in folders)


def test_two_resumes_of_one_folder_at_once_are_refused(handed_over, monkeypatch, capsys):
    import fcntl

    folder = handed_over("sac_continuous.py")
    descriptor = os.open(folder, os.O_RDONLY)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running --resume holds
    try:
        before = fingerprint(folder)
        code, _, err = run_main(module_of("sac_continuous.py"), resume_argv("sac_continuous.py", folder), monkeypatch, capsys)
        assert_refused(code, err, "another process is already writing")
        assert fingerprint(folder) == before
    finally:
        os.close(descriptor)


# ---- 4. no torch release with a known weights_only bypass ------------------------------------------
def test_the_torch_floor_excludes_releases_with_a_known_weights_only_bypass():
    """torch 2.8 and 2.9's weights_only unpickler can be made to corrupt the heap (CVE-2026-24747,
    GHSA-63cw-57p8-fm3p, fixed in 2.10.0): pyproject.toml may not admit them."""
    import re

    text = open(os.path.join(REPO, "pyproject.toml")).read()
    floor = re.search(r'"torch>=(\d+)\.(\d+)', text)
    assert floor is not None and (int(floor.group(1)), int(floor.group(2))) >= (2, 10)
