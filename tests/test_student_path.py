"""What a student does in the first hour, for every script: `--evaluate` a saved run (finished or
stopped), `--capture-video` that fails before training when it cannot work, `--config` YAML files
(the course's experiment files for sac_continuous.py), and the Korean quickstart's flags."""

from __future__ import annotations

import glob
import hashlib
import importlib
import os
import re
import subprocess
import sys

import pytest

import run_extras
from conftest import REPO, only_run_dir, require_video, run_main, run_script, skip_unless_available

SCRIPTS = ("sac_continuous.py", "gmm_density_matching.py", "posac_jko.py")
TINY = ["--env-id", "Pendulum-v1", "--total-timesteps", "250", "--learning-starts", "100", "--batch-size", "32",
        "--hidden-size", "32", "--eval-every", "0", "--eval-episodes", "1", "--log-every", "100"]
EXTRA = {"posac_jko.py": ["--num-actors", "2", "--w2-weights", "0.0", "0.1"],
         "gmm_density_matching.py": ["--num-action-samples", "8"]}


def fingerprint(folder: str) -> dict:
    """Every file of a run folder and its hash (what --evaluate must leave alone)."""
    files = sorted(p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True) if os.path.isfile(p))
    return {os.path.relpath(p, folder): hashlib.sha1(open(p, "rb").read()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """One tiny finished Pendulum run per script (trained once for the tests below)."""
    runs = {}
    for script in SCRIPTS:
        out = tmp_path_factory.mktemp(script[:-3])
        result = run_script(script, *TINY, *EXTRA.get(script, []), "--output-dir", str(out), timeout=300)
        assert result.returncode == 0, result.stderr
        runs[script] = only_run_dir(out)
    return runs


@pytest.mark.parametrize("script", SCRIPTS)
def test_evaluate_plays_a_finished_run_and_changes_nothing(script, finished_runs, monkeypatch, capsys):
    module = importlib.import_module(script[:-3])
    run_dir = finished_runs[script]
    before = fingerprint(run_dir)
    code, out, err = run_main(module, ["--evaluate", run_dir, "--eval-episodes", "2"], monkeypatch, capsys)
    assert code == 0, err
    actors = 2 if script == "posac_jko.py" else 1
    for i in range(actors):
        for mode in ("deterministic", "stochastic"):
            assert re.search(rf"actor {i} {mode}: -?\d+\.\d\d \+- \d+\.\d\d", out), out
    assert "at step 250" in out
    assert fingerprint(run_dir) == before, "--evaluate changed the run folder"


@pytest.mark.parametrize("script", SCRIPTS)
def test_evaluate_takes_the_latest_checkpoint_of_a_stopped_run(script, finished_runs, tmp_path, monkeypatch, capsys):
    """A run that was stopped (or is still going) has a checkpoint but no summary.json yet."""
    module = importlib.import_module(script[:-3])
    stopped = tmp_path / os.path.basename(finished_runs[script])
    stopped.mkdir()
    for name in ("checkpoint.pt", "args.json", "eval.csv"):
        (stopped / name).write_bytes(open(os.path.join(finished_runs[script], name), "rb").read())
    code, out, err = run_main(module, ["--evaluate", str(stopped / "checkpoint.pt")], monkeypatch, capsys)
    assert code == 0 and "actor 0 deterministic" in out, err


@pytest.mark.parametrize("script", SCRIPTS)
def test_evaluate_fails_cleanly_on_a_missing_or_wrong_folder(script, finished_runs, tmp_path, monkeypatch, capsys):
    module = importlib.import_module(script[:-3])
    other = finished_runs["posac_jko.py" if script != "posac_jko.py" else "sac_continuous.py"]
    empty = tmp_path / "no_checkpoint_here"
    empty.mkdir()
    for target, message in ((str(tmp_path / "missing"), "no checkpoint.pt there"),
                            (str(empty), "no checkpoint.pt there"),
                            (other, f"not {module.ALGORITHM}")):
        code, out, err = run_main(module, ["--evaluate", target], monkeypatch, capsys)
        errors = [line for line in err.splitlines() if "error:" in line]
        assert code == 2 and len(errors) == 1 and message in errors[0], err


def test_evaluate_films_every_episode_under_videos(tmp_path):
    require_video("InvertedPendulum-v4")
    tiny = [a if a != "Pendulum-v1" else "InvertedPendulum-v4" for a in TINY]
    result = run_script("sac_continuous.py", *tiny, "--output-dir", str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(tmp_path)
    evaluated = run_script("sac_continuous.py", "--evaluate", run_dir, "--eval-episodes", "1", "--capture-video", timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    videos = glob.glob(os.path.join(run_dir, "videos", "evaluate-*", "*.mp4"))
    assert len(videos) == 2 and all(os.path.getsize(v) > 0 for v in videos)  # one per mode


@pytest.mark.parametrize("script", SCRIPTS)
def test_capture_video_without_rendering_is_one_line_before_any_work(script, tmp_path):
    """No OSMesa (a bare machine): exit 2 before any training, one line that names the fix, no run
    folder. Where rendering works, ../shared/tools/bare-machine (as root) hides OSMesa first."""
    command = [sys.executable, os.path.join(REPO, script), "--env-id", "InvertedPendulum-v4", "--capture-video",
               "--output-dir", str(tmp_path / "out")]
    if run_extras.video_problem("InvertedPendulum-v4") is None:
        tool = os.path.join(os.path.dirname(REPO), "shared", "tools", "bare-machine")
        skip_unless_available(None if os.path.exists(tool) and os.geteuid() == 0 else
                              "rendering works here; hiding OSMesa needs ../shared/tools/bare-machine run as root")
        command = [tool, "env", "-u", "MUJOCO_GL", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "apt-get install libosmesa6" in errors[0] and "MUJOCO_GL=egl" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_capture_video_without_moviepy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "moviepy", None)  # `import moviepy` now fails as if not installed
    assert 'pip install -e ".[video]"' in run_extras.video_problem("InvertedPendulum-v4")


# ---- --config ------------------------------------------------------------------------------------
COURSE_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))


@pytest.mark.parametrize("config", COURSE_CONFIGS, ids=os.path.basename)
def test_the_course_experiment_files_load_and_run(config, tmp_path, monkeypatch, capsys):
    sac = importlib.import_module("sac_continuous")
    defaults = run_extras.config_defaults(sac, config)
    assert defaults.env_id in ("Pendulum-v1", "HalfCheetah-v4") and not defaults.autotune  # a fixed temperature
    short = ["--total-timesteps", "120", "--learning-starts", "60", "--random-steps", "60", "--batch-size", "16",
             "--hidden-size", "16", "--eval-every", "0", "--eval-episodes", "1", "--log-every", "60"]
    code, out, err = run_main(sac, ["--config", config, *short, "--output-dir", str(tmp_path)], monkeypatch, capsys)
    assert code == 0, err
    import json
    with open(os.path.join(only_run_dir(tmp_path), "args.json")) as f:
        recorded = json.load(f)["args"]
    assert recorded["total_timesteps"] == 120  # the command line wins
    assert recorded["env_id"] == defaults.env_id and recorded["alpha"] == defaults.alpha  # the file's values
    assert recorded["config"] == config


def test_course_names_map_to_this_scripts_flags(tmp_path):
    sac = importlib.import_module("sac_continuous")
    path = tmp_path / "course.yaml"
    path.write_text("base_config: sac\nenv_name: Hopper-v4\ntotal_steps: 5000\ndiscount: 0.9\ntraining_starts: 100\n"
                    "soft_target_update_rate: 0.01\ntemperature: 0.3\nuse_entropy_bonus: false\n"
                    "actor_gradient_type: reinforce\nnum_actor_samples: 4\n")
    args = run_extras.config_defaults(sac, sac.config_path(["-cfg", str(path)]))
    assert (args.env_id, args.total_timesteps, args.gamma, args.learning_starts, args.tau, args.alpha) == \
        ("Hopper-v4", 5000, 0.9, 100, 0.01, 0.3)
    assert not args.use_entropy_bonus and not args.autotune and args.actor_gradient_type == "reinforce"


@pytest.mark.parametrize("text, message", [
    ("env_name: Pendulum-v1\nlearning_rate_typo: 0.1\n", "unknown key 'learning_rate_typo'"),
    ("discount: high\n", "'discount' must be a float, got 'high'"),
    ("num_critic_networks: 2.5\n", "'num_critic_networks' must be a int"),
    ("actor_gradient_type: sideways\n", "'actor_gradient_type' must be one of"),
    ("base_config: dqn\n", "base_config 'dqn' is not this script's ('sac')"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_a_bad_config_file_is_one_clear_error(text, message, tmp_path, monkeypatch, capsys):
    sac = importlib.import_module("sac_continuous")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, out, err = run_main(sac, ["--config", str(path), "--output-dir", str(tmp_path / "out")], monkeypatch, capsys)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and message in errors[0], err
    assert not (tmp_path / "out").exists()


def test_posac_reads_its_sources_names_from_a_config_file(tmp_path):
    posac = importlib.import_module("posac_jko")
    path = tmp_path / "posac.yaml"
    path.write_text("env_name: Hopper-v4\nnum_steps: 20000\neval_freq: 10\nautomatic_entropy_tuning: true\n"
                    "num_actors: 2\nw2_weights: [0.0, 0.1]\nlr: 0.0003\nstart_steps: 3000\n")
    args = run_extras.config_defaults(posac, posac.config_path(["--config", str(path)]))
    assert (args.env_id, args.total_timesteps, args.eval_freq_episodes, args.autotune, args.num_actors) == \
        ("Hopper-v4", 20000, 10, True, 2)
    assert (args.random_steps, args.learning_starts) == (3000, None)  # start_steps: random actions only
    assert tuple(args.w2_weights) == (0.0, 0.1)


# ---- the Korean quickstart stays in step with the scripts -----------------------------------------
def test_every_flag_the_korean_quickstart_names_exists():
    with open(os.path.join(REPO, "docs", "README.ko.md")) as f:
        text = f.read()
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text)) - {"--logdir"}  # tensorboard's own flag
    assert len(flags) > 10
    helps = {script: run_script(script, "--help", timeout=60).stdout for script in SCRIPTS}
    for flag in flags:
        assert any(flag in text_ for text_ in helps.values()), f"{flag} is in docs/README.ko.md but no script has it"


# ---- a CUDA build of torch beside headless MuJoCo rendering ---------------------------------------
# CUDA builds of torch install Triton, which carries its own LLVM; Mesa's OSMesa links the system's.
# Loaded in that order (OSMesa, then Triton) the process dies with a segmentation fault at the first
# torch.optim.Adam(...), which imports Triton through torch._dynamo (seen here with torch 2.14.1 and
# 2.15.0 and Debian 12's libosmesa6); Triton first, both work. The scripts import Triton before the
# run's first env (Appendix A's load_triton_before_opengl). --capture-video alone is not affected:
# OSMesa then loads at the first frame, after the optimizers (and Triton) exist. CI has torch's CPU wheel, without
# Triton, so this stand-in records when Triton was first asked for, and acts as if absent.
FAKE_TRITON = '''
import os
mapped = open("/proc/self/maps").read()
with open(os.environ["TRITON_IMPORT_LOG"], "a") as log:
    log.write("after-mesa-llvm\\n" if "libLLVM" in mapped else "before-mesa-llvm\\n")
raise ImportError("a stand-in for Triton, acting as if absent")
'''


@pytest.mark.parametrize("script, cli_args", [
    ("sac_continuous.py", [a if a != "Pendulum-v1" else "InvertedPendulum-v4" for a in TINY]),
    ("gmm_density_matching.py", [a if a != "Pendulum-v1" else "InvertedPendulum-v4" for a in TINY]
     + EXTRA["gmm_density_matching.py"]),
    ("benchmark/sb3_sac.py", ["--env-id", "InvertedPendulum-v4", "--total-timesteps", "250", "--learning-starts", "100",
                              "--batch-size", "32", "--hidden-size", "32", "--eval-every", "0", "--eval-episodes", "1"]),
])
def test_triton_is_loaded_before_osmesa_brings_mesa_s_llvm(script, cli_args, tmp_path):
    """MUJOCO_GL=osmesa set by the user (a common setting on headless machines): MuJoCo loads
    OSMesa, and with it Mesa's LLVM, when it is first imported, i.e. at the run's first env."""
    require_video("InvertedPendulum-v4")  # OSMesa renders here
    (tmp_path / "fake" / "triton").mkdir(parents=True)
    (tmp_path / "fake" / "triton" / "__init__.py").write_text(FAKE_TRITON)
    log = tmp_path / "triton_imports.log"
    env = {**os.environ, "MUJOCO_GL": "osmesa", "PYTHONPATH": str(tmp_path / "fake"), "TRITON_IMPORT_LOG": str(log),
           "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, os.path.join(REPO, script), *cli_args, "--output-dir", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    imports = log.read_text().split()
    # Triton was first asked for before Mesa's LLVM was in the process; torch asked again after it
    # was (so the run really loaded OSMesa, and without the early import Triton would load last)
    assert imports[0] == "before-mesa-llvm" and "after-mesa-llvm" in imports, imports
