"""Stable-Baselines3's SAC, run through the same contract as the project's scripts
(docs/CONTRACT.md), so sweeps, reports and the throughput table treat it as one more peer.

SB3 does the learning (`stable_baselines3.SAC`: twin critics, clipped double-Q target
y = r + gamma * (1 - d) * (min_j Q'_j(s', a') - alpha * log pi(a'|s')), tanh-Gaussian actor,
alpha tuned towards the target entropy -dim(A)); this file only adds the contract around it:
- the common CLI flags (tyro), the run folder `{output_dir}/{env_id}__{exp_name}__{seed}__{unix_time}`;
- args.json, metrics.csv + TensorBoard (CleanRL metric names: SB3's train/critic_loss is
  losses/qf_loss, train/actor_loss losses/actor_loss, train/ent_coef losses/alpha,
  train/ent_coef_loss losses/alpha_loss), eval.csv with deterministic and stochastic evaluation
  on a separately seeded env, summary.json (train_sps counts steps after learning_starts and
  excludes evaluation and checkpoint time);
- checkpoint.pt: plain data only (one torch.save of dicts, tensors and numbers, read back with
  torch.load(weights_only=True), so a checkpoint from anyone cannot run code): SB3's
  get_parameters() (networks, target critics, optimizers), alpha, the step counters, the filled
  part of the replay buffer, the RNG states and the bookkeeping; written to a temp file, fsynced
  and renamed (atomic) every --checkpoint-every steps, on SIGINT/SIGTERM and at the end;
  --resume builds a fresh SAC the way a new run does, loads it into that and continues (the
  interrupted episode restarts: env states are not saved);
- exit codes: 0 done, 2 bad input, 130 interrupted, 1 non-finite loss.

Settings match sac_continuous.py's defaults where SB3 allows: net_arch 256x256, batch 256,
train_freq 1 with gradient_steps 1 (one update per vector step), learning_starts 5000 uniform
random steps, tau 0.005, gamma 0.99, alpha auto-tuned from 1.0. SB3 differences kept as SB3 has
them: one learning rate for actor, critic and alpha (3e-4), log sigma clamped to [-20, 2].

    python benchmark/sb3_sac.py --env-id Hopper-v4 --seed 1 --total-timesteps 1000000
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
import tyro

# The bookkeeping every run of this project shares (errors, logging to TensorBoard/metrics.csv/
# eval.csv with resume truncation, the step-crossing test, the resume command) comes from the
# reference script, so this peer writes exactly the same files.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sac_continuous import (ConfigError, NonFiniteLossError, RunLogger, archive_problem, atomic_write,  # noqa: E402
                            atomic_write_text, crossed, load_triton_before_opengl, lock_run_folder, new_run_folder,
                            peak_resident_mb, read_json, read_previous_rows, rng_problem, run_folder_problem,
                            rng_states, set_rng_states, strip_resume_flag, writable_folder_problem)

ALGORITHM = "sb3_sac"


@dataclass
class Args:
    # experiment
    exp_name: str = ALGORITHM
    """name of this experiment; the run folder is {env_id}__{exp_name}__{seed}__{unix_time}"""
    seed: int = 1
    """seed of the experiment (SB3's set_random_seed, the envs, evaluation resets)"""
    torch_deterministic: bool = True
    """sets `torch.backends.cudnn.deterministic`"""
    cuda: bool = False
    """train on the GPU if one is available"""
    track: bool = False
    """mirror the TensorBoard metrics to Weights & Biases"""
    wandb_project_name: str = "continuous-control-references"
    """the wandb project name"""
    wandb_entity: Optional[str] = None
    """the wandb entity (team)"""
    capture_video: bool = False
    """record the first deterministic evaluation episode of each evaluation to `videos/`"""
    output_dir: str = "runs"
    """where run folders are created"""
    resume: Optional[str] = None
    """a run folder or its checkpoint.pt: continue that run in its folder"""
    checkpoint_every: int = 50_000
    """write checkpoint.pt every this many env steps (and at the end and on SIGINT/SIGTERM)"""

    # environment
    env_id: str = "Hopper-v4"
    """the gymnasium environment id (Box action space)"""
    total_timesteps: int = 1_000_000
    """total environment steps"""
    num_envs: int = 1
    """parallel environments (DummyVecEnv); one gradient step per vector step, as SB3 does"""
    eval_every: int = 10_000
    """evaluate every this many env steps (0: only the final evaluation)"""
    eval_episodes: int = 10
    """episodes per evaluation, once deterministic and once stochastic"""

    # algorithm (SB3 SAC)
    buffer_size: int = 1_000_000
    """replay buffer capacity"""
    batch_size: int = 256
    """minibatch size"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target critics"""
    learning_rate: float = 3e-4
    """one learning rate for actor, critics and alpha (SB3's design)"""
    learning_starts: int = 5_000
    """uniform random env steps before the first gradient step"""
    hidden_size: int = 256
    """width of both hidden layers of actor and critics (net_arch [h, h])"""

    # logging
    log_every: int = 1_000
    """write losses/SPS and print the progress line every this many steps"""


def validate(args: Args) -> None:
    """Check the arguments and the env before any work (no run folder is made on failure)."""
    for name in ("total_timesteps", "num_envs", "eval_episodes", "batch_size", "buffer_size", "hidden_size", "log_every"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("eval_every", "checkpoint_every", "learning_starts"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    load_triton_before_opengl()  # MUJOCO_GL=osmesa + a CUDA build of torch: see sac_continuous.py
    try:
        env = gym.make(args.env_id)
    except Exception as e:  # unknown id, missing dependency
        raise ConfigError(f"cannot make env {args.env_id!r}: {e}") from None
    space = env.action_space
    env.close()
    if not isinstance(space, gym.spaces.Box):
        raise ConfigError(f"{args.env_id} has action space {space}; only gym.spaces.Box is supported")
    if args.resume and not checkpoint_path(args.resume).is_file():
        raise ConfigError(f"no checkpoint.pt at {args.resume}")


def checkpoint_path(resume: str) -> Path:
    path = Path(resume)
    return path if path.name == "checkpoint.pt" else path / "checkpoint.pt"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": sys.version.split()[0]}
    for package in ("stable-baselines3", "torch", "gymnasium", "mujoco", "numpy", "tyro"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


# checkpoints -----------------------------------------------------------------------------------
# A checkpoint is one torch.save of plain data (dicts, lists, tensors, numbers, strings, None), so
# --resume reads it with torch.load(weights_only=True), which refuses any other Python object:
# a checkpoint shared by someone else cannot run code when it is loaded. SB3's own model.save /
# SAC.load and save_replay_buffer / load_replay_buffer unpickle, so they are not used.
CHECKPOINT_FORMAT = 2
BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
# the bookkeeping dict of the run (train() and the callback keep it), and the kind of each value
STATE_FIELDS = {"global_step": (int,), "train_time": (int, float), "train_steps": (int,), "episodes": (int,),
                "last_return": (int, float), "last_good_step": (int, type(None))}


def make_model(args: Args, envs, device: str):
    """The SAC of a run, untrained: a new run trains it, --resume loads a checkpoint into it (one
    constructor for both, so a resumed model cannot differ from a new one)."""
    from stable_baselines3 import SAC

    return SAC("MlpPolicy", envs, learning_rate=args.learning_rate, buffer_size=args.buffer_size,
               learning_starts=args.learning_starts, batch_size=args.batch_size, tau=args.tau, gamma=args.gamma,
               train_freq=1, gradient_steps=1, ent_coef="auto",
               policy_kwargs=dict(net_arch=[args.hidden_size, args.hidden_size]),
               seed=args.seed, device=device, verbose=0)


def save_checkpoint(path: Path, model, state: dict) -> None:
    """Everything --resume needs, as plain data, in one torch.save: to a temp file, fsync, then
    os.replace, so a crash or kill mid-write leaves the previous checkpoint intact.

    Besides get_parameters() (policy with actor, critics and target critics; the actor, critic
    and alpha optimizers), SAC keeps state of its own: log_ent_coef (alpha; the target entropy is
    derived from the action space), the counters, and the action space's generator, which draws
    the uniform random actions before --learning-starts."""
    buffer = model.replay_buffer
    filled = buffer.buffer_size if buffer.full else buffer.pos
    log_ent_coef = getattr(model, "log_ent_coef", None)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "algorithm": ALGORITHM,
        "state": dict(state),
        "parameters": model.get_parameters(),
        "log_ent_coef": None if log_ent_coef is None else log_ent_coef.detach().cpu(),
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(model._n_updates),
        "episode_num": int(model._episode_num),
        "action_space_rng": model.action_space.np_random.bit_generator.state,
        # only the filled rows (views of SB3's arrays, not copies)
        "replay_buffer": {"pos": int(buffer.pos), "full": int(buffer.full),
                          **{name: torch.from_numpy(getattr(buffer, name)[:filled]) for name in BUFFER_ARRAYS}},
        "rng": rng_states(),
    }
    atomic_write(str(path), lambda f: torch.save(checkpoint, f), "wb")  # the scripts' own: no link followed


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (torch's can run to a page)."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]


def is_a(value, kinds: tuple) -> bool:
    """isinstance, except that a bool is not a number here."""
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def checkpoint_problem(checkpoint) -> Optional[str]:
    """What is wrong with the structure of a loaded checkpoint, or None. Shapes are checked
    against the model in load_checkpoint."""
    if not isinstance(checkpoint, dict):
        return f"it holds a {type(checkpoint).__name__}, not a checkpoint"
    if checkpoint.get("algorithm") != ALGORITHM:
        return f"it is a checkpoint of {checkpoint.get('algorithm')!r}, not of {ALGORITHM}"
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        return (f"checkpoint format {checkpoint.get('format')!r}; this script reads format {CHECKPOINT_FORMAT} "
                "(written by another version of it)")
    fields = {"state": (dict,), "parameters": (dict,), "log_ent_coef": (torch.Tensor, type(None)),
              "num_timesteps": (int,), "n_updates": (int,), "episode_num": (int,), "action_space_rng": (dict,),
              "replay_buffer": (dict,), "rng": (dict,)}
    for key, kinds in fields.items():
        if key not in checkpoint:
            return f"the checkpoint lacks '{key}'"
        if not is_a(checkpoint[key], kinds):
            return f"the checkpoint's '{key}' is a {type(checkpoint[key]).__name__}"
    for key in ("num_timesteps", "n_updates", "episode_num"):
        if checkpoint[key] < 0:
            return f"the checkpoint's '{key}' is negative ({checkpoint[key]})"
    state = checkpoint["state"]
    for key, kinds in STATE_FIELDS.items():
        if key not in state:
            return f"the checkpoint's 'state' lacks '{key}'"
        if not is_a(state[key], kinds):
            return f"the checkpoint's state '{key}' is a {type(state[key]).__name__}"
        if is_a(state[key], (int,)) and state[key] < 0:
            return f"the checkpoint's state '{key}' is negative ({state[key]})"
    if state["global_step"] != checkpoint["num_timesteps"]:
        return f"its step counters disagree ({state['global_step']} and {checkpoint['num_timesteps']})"
    buffer = checkpoint["replay_buffer"]
    for key in ("pos", "full", *BUFFER_ARRAYS):
        if key not in buffer:
            return f"the checkpoint's replay buffer lacks '{key}'"
        if not is_a(buffer[key], (torch.Tensor,) if key in BUFFER_ARRAYS else (int,)):
            return f"the checkpoint's replay buffer '{key}' is a {type(buffer[key]).__name__}"
    rng = checkpoint["rng"]
    kinds = {"python": {"version": (int,), "state": (torch.Tensor,), "gauss_next": (float, type(None))},
             "numpy": {"keys": (torch.Tensor,), "position": (int,), "has_gauss": (int,), "cached_gaussian": (int, float)}}
    for stream, fields_of_stream in kinds.items():
        if not isinstance(rng.get(stream), dict):
            return f"the checkpoint's RNG states lack '{stream}'"
        for key, kinds_of_field in fields_of_stream.items():
            if not is_a(rng[stream].get(key), kinds_of_field):
                return f"the checkpoint's {stream} RNG state '{key}' is missing or a {type(rng[stream].get(key)).__name__}"
    if not isinstance(rng.get("torch"), torch.Tensor) or rng["torch"].dtype != torch.uint8:
        return "the checkpoint's torch RNG state is missing or not a uint8 tensor"
    if "cuda" not in rng or not (rng["cuda"] is None or (isinstance(rng["cuda"], list) and all(
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in rng["cuda"]))):
        return "the checkpoint's CUDA RNG states are missing or not a list of uint8 tensors"
    return None


def shape(tensor: torch.Tensor) -> tuple:
    return tuple(tensor.shape)


def parameters_problem(saved: dict, model) -> Optional[str]:
    """Whether get_parameters() of the checkpoint fits this run's model: the same objects, the
    same tensors with the same shapes (a checkpoint of another --hidden-size or --env-id does not),
    and optimizer states that match the parameters they belong to."""
    expected = model.get_parameters()
    if set(saved) != set(expected):
        return f"its parameters hold {sorted(saved)}, this model needs {sorted(expected)}"
    for name, ours in expected.items():
        theirs = saved[name]
        if not isinstance(theirs, dict):
            return f"its parameters '{name}' are a {type(theirs).__name__}"
        if "param_groups" not in ours:  # a module's state_dict
            if set(theirs) != set(ours):
                diff = sorted(set(theirs) ^ set(ours))
                return f"its '{name}' state does not match this model ({', '.join(diff[:3])}, ...)"
            for key, tensor in ours.items():
                if not isinstance(theirs[key], torch.Tensor) or shape(theirs[key]) != shape(tensor):
                    found = shape(theirs[key]) if isinstance(theirs[key], torch.Tensor) else type(theirs[key]).__name__
                    return (f"its '{name}' tensor '{key}' is {found}, this model needs {shape(tensor)} "
                            "(was it written with other --env-id, --hidden-size or --num-envs?)")
            continue
        # an optimizer's state_dict: groups of parameter ids, and per-id state (Adam: step, moments)
        groups, state = theirs.get("param_groups"), theirs.get("state")
        if not isinstance(groups, list) or not isinstance(state, dict) or len(groups) != len(ours["param_groups"]):
            return f"its optimizer state '{name}' is malformed"
        optimizer = functools.reduce(getattr, name.split("."), model)  # e.g. "actor.optimizer"
        params = [p for group in optimizer.param_groups for p in group["params"]]
        ids = []
        for group, our_group in zip(groups, ours["param_groups"]):
            if not isinstance(group, dict) or not isinstance(group.get("params"), list) \
                    or len(group["params"]) != len(our_group["params"]):
                return f"its optimizer state '{name}' has other parameter groups than this model"
            ids += group["params"]
        for param_id, param in zip(ids, params):
            entry = state.get(param_id, {})
            if not isinstance(entry, dict):
                return f"its optimizer state '{name}' is malformed"
            for key, value in entry.items():
                if not isinstance(value, torch.Tensor):
                    return f"its optimizer state '{name}' holds a {type(value).__name__} as '{key}'"
                if value.dim() > 0 and (shape(value) != shape(param) or value.dtype != param.dtype):
                    return (f"its optimizer state '{name}' '{key}' is {shape(value)} {value.dtype}, the parameter "
                            f"is {shape(param)} {param.dtype}")
        if set(state) - set(ids):
            return f"its optimizer state '{name}' holds state of unknown parameters"
    return None


def setting_kind(value) -> str:
    """What an optimizer setting is, as far as the optimizer's arithmetic cares."""
    if isinstance(value, (bool, type(None))):
        return "flag"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (tuple, list)) and all(setting_kind(v) == "number" for v in value):
        return f"{len(value)} numbers"
    return type(value).__name__


def settings_problem(fresh: dict, model) -> Optional[str]:
    """After loading: whether every optimizer group has the settings a fresh one has (lr, betas,
    eps, ...), each of the same kind. torch fills in settings that older versions lacked; a group
    missing others, or holding a string for a number, would fail at the first Adam step."""
    for name, ours in fresh.items():
        if "param_groups" not in ours:
            continue
        optimizer = functools.reduce(getattr, name.split("."), model)
        for group, our_group in zip(optimizer.param_groups, ours["param_groups"]):
            for key, value in our_group.items():
                if key != "params" and (key not in group or setting_kind(group[key]) != setting_kind(value)):
                    found = setting_kind(group[key]) if key in group else "missing"
                    return f"its optimizer '{name}' setting '{key}' is {found}, not a {setting_kind(value)}"
    return None


def buffer_problem(saved: dict, buffer) -> Optional[str]:
    """Whether the saved replay buffer fits this run's (SB3's arrays are (capacity, num_envs, ...))."""
    pos, full = saved["pos"], saved["full"]
    if full not in (0, 1) or not 0 <= pos < buffer.buffer_size:
        return f"its replay buffer position {pos} (full {full}) does not fit a buffer of {buffer.buffer_size} rows"
    rows = buffer.buffer_size if full else pos
    for name in BUFFER_ARRAYS:
        ours, theirs = getattr(buffer, name), saved[name]
        want = (rows, *ours.shape[1:])
        if shape(theirs) != want or theirs.dtype != torch.from_numpy(ours[:0]).dtype:
            return (f"its replay buffer '{name}' is {shape(theirs)} {theirs.dtype}, this run needs {want} "
                    f"{ours.dtype} (was it written with other --env-id, --buffer-size or --num-envs?)")
    return None


def optimizer_shapes_problem(model) -> Optional[str]:
    """After set_parameters: every loaded Adam entry has its parameter's shape and finite values (a
    crafted exp_avg of another shape would make Adam's step write out of bounds)."""
    optimizers = [model.actor.optimizer, model.critic.optimizer, getattr(model, "ent_coef_optimizer", None)]
    for optimizer in filter(None, optimizers):
        for parameter, entry in optimizer.state.items():
            for key, value in entry.items():
                want = () if key == "step" else tuple(parameter.shape)
                if not isinstance(value, torch.Tensor) or tuple(value.shape) != want or not torch.isfinite(value).all():
                    return f"an optimizer's '{key}' does not fit its parameter {want}"
    return None


def load_checkpoint(path: Path, args: Args, envs, device: str):
    """(model with its replay buffer, bookkeeping state), from a checkpoint read as data only;
    restores the global RNG states. The model is a fresh make_model() with the checkpoint loaded
    into it. Every problem is one ConfigError naming the file, raised before anything changes."""
    def refuse(why: str) -> ConfigError:
        return ConfigError(f"cannot resume from {path}: {why}")

    # a run folder is untrusted input (README, Outputs): no links in it, an uncompressed archive
    problem = run_folder_problem(str(path.parent)) or archive_problem(str(path))
    if problem is not None:
        raise refuse(problem)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # objects refused by weights_only, a truncated, empty or foreign file
        try:
            unsafe = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # not a torch.save zip at all
            unsafe = []
        if unsafe:
            raise refuse(f"it asks to build Python objects ({', '.join(unsafe[:3])}); a checkpoint is data only, "
                         "so it was not loaded") from None
        raise refuse(f"cannot read it ({first_line(error)})") from None
    try:
        problem = checkpoint_problem(checkpoint)
    except Exception as error:  # odd data (unhashable or uncomparable values) where numbers belong
        problem = f"its structure is malformed ({first_line(error)})"
    if problem is not None:
        raise refuse(problem)

    model = make_model(args, envs, device)
    log_ent_coef, saved_alpha = getattr(model, "log_ent_coef", None), checkpoint["log_ent_coef"]
    try:
        problem = parameters_problem(checkpoint["parameters"], model) or buffer_problem(
            checkpoint["replay_buffer"], model.replay_buffer)
    except Exception as error:
        problem = f"its parameters or replay buffer are malformed ({first_line(error)})"
    if problem is None and (log_ent_coef is None) != (saved_alpha is None):
        problem = "its alpha (log_ent_coef) does not match this model's (tuned vs fixed)"
    if problem is None and saved_alpha is not None and shape(saved_alpha) != shape(log_ent_coef):
        problem = f"its log_ent_coef is {shape(saved_alpha)}, this model needs {shape(log_ent_coef)}"
    if problem is not None:
        raise refuse(problem)
    stage = "its networks and optimizers do not load"
    try:
        fresh = model.get_parameters()
        model.set_parameters(checkpoint["parameters"], exact_match=True, device=device)
        problem = settings_problem(fresh, model) or optimizer_shapes_problem(model) or rng_problem(checkpoint["rng"])
        if problem is not None:
            raise ValueError(problem)
        if saved_alpha is not None:
            with torch.no_grad():  # in place: the alpha optimizer holds this very tensor
                log_ent_coef.copy_(saved_alpha)
        stage = "its action-space generator state does not load"
        space_rng = model.action_space.np_random.bit_generator  # draws the actions before --learning-starts
        if checkpoint["action_space_rng"].get("bit_generator") != type(space_rng).__name__:
            raise ValueError(f"it is not a {type(space_rng).__name__} state")
        space_rng.state = checkpoint["action_space_rng"]
        stage = "its RNG states do not load"
        set_rng_states(checkpoint["rng"])
    except Exception as error:  # a malformed optimizer, generator or RNG state
        raise refuse(f"{stage} ({first_line(error)})") from None
    model.num_timesteps = checkpoint["num_timesteps"]
    model._n_updates = checkpoint["n_updates"]
    model._episode_num = checkpoint["episode_num"]
    buffer, saved = model.replay_buffer, checkpoint["replay_buffer"]
    for name in BUFFER_ARRAYS:
        array = getattr(buffer, name)
        array[:len(saved[name])] = saved[name].numpy()
    buffer.pos, buffer.full = saved["pos"], bool(saved["full"])
    return model, checkpoint["state"]


# evaluation ------------------------------------------------------------------------------------


def evaluate(model, env: gym.Env, episodes: int, seed: int, deterministic: bool) -> np.ndarray:
    """Returns of `episodes` episodes reset with seeds seed..seed+episodes-1. Stochastic actions
    come from a forked, reseeded torch RNG, so evaluating never shifts the training stream."""
    returns = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            done, total = False, 0.0
            while not done:
                action, _ = model.predict(obs, deterministic=deterministic)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    return np.asarray(returns)


# the run ---------------------------------------------------------------------------------------


def make_callback(args: Args, run_dir: Path, logger: RunLogger, state: dict, eval_env):
    """The SB3 callback that carries the contract: episode stats, SPS and losses every
    --log-every steps, evaluations, checkpoints, non-finite checks and the stop signal."""
    from stable_baselines3.common.callbacks import BaseCallback

    ckpt = run_dir / "checkpoint.pt"

    class ContractCallback(BaseCallback):
        def __init__(self):
            super().__init__()
            self.stop_signal: Optional[int] = None
            self.last_end: Optional[float] = None  # when the previous _on_step finished
            self.start_time, self.start_step = time.time(), state["global_step"]
            self.losses: dict[str, float] = {}

        def run_evaluation(self, step: int) -> list[dict]:
            results = []
            for mode in ("deterministic", "stochastic"):
                returns = evaluate(self.model, eval_env, args.eval_episodes, args.seed + 100_000, mode == "deterministic")
                logger.evaluation(step, 0, mode, returns)
                results.append({"policy": 0, "mode": mode, "mean_return": float(returns.mean()),
                                "std_return": float(returns.std()), "episodes": len(returns)})
            print(f"eval at step {step}: deterministic {results[0]['mean_return']:.2f} | "
                  f"stochastic {results[1]['mean_return']:.2f}", flush=True)
            return results

        def check_finite(self, step: int) -> None:
            values = self.model.logger.name_to_value
            for key in ("train/critic_loss", "train/actor_loss"):
                if key in values and not np.isfinite(values[key]):
                    good = f"{ckpt} (step {state['last_good_step']})" if state["last_good_step"] is not None else "none was written yet"
                    raise NonFiniteLossError(f"{key} is {values[key]} by step {step}; last good checkpoint: {good}")

        def _on_step(self) -> bool:
            now, step = time.time(), self.num_timesteps
            before = step - args.num_envs
            # the time since the previous step ended = one env step + the gradient step before
            # it; it counts as training once updates run (SB3 trains when step > learning_starts)
            if self.last_end is not None and before > args.learning_starts:
                state["train_time"] += now - self.last_end
                state["train_steps"] += args.num_envs
            state["global_step"] = step
            for info in self.locals["infos"]:
                if "episode" in info:
                    state["episodes"] += 1
                    state["last_return"] = float(info["episode"]["r"])
                    logger.scalars(step, {"charts/episodic_return": info["episode"]["r"],
                                          "charts/episodic_length": info["episode"]["l"]})
            values = self.model.logger.name_to_value
            for key, tag in (("train/critic_loss", "losses/qf_loss"), ("train/actor_loss", "losses/actor_loss"),
                             ("train/ent_coef", "losses/alpha"), ("train/ent_coef_loss", "losses/alpha_loss")):
                if key in values:
                    self.losses[tag] = float(values[key])
            self.check_finite(step)
            if crossed(before, step, args.log_every):
                sps = (step - self.start_step) / max(now - self.start_time, 1e-9)
                logger.scalars(step, {"charts/SPS": sps, **self.losses})
                eta = (args.total_timesteps - step) / max(sps, 1e-9)
                print(f"step {step}/{args.total_timesteps} | SPS {sps:.0f} | last return {state['last_return']:.2f} | "
                      f"episodes {state['episodes']} | ETA {eta / 60:.1f} min", flush=True)
            if crossed(before, step, args.eval_every) and step < args.total_timesteps:
                self.run_evaluation(step)
            if crossed(before, step, args.checkpoint_every) and step < args.total_timesteps:
                state["last_good_step"] = step
                save_checkpoint(ckpt, self.model, state)
            self.last_end = time.time()
            return self.stop_signal is None

    callback = ContractCallback()

    def handle(signum, frame):
        print(f"\n{signal.Signals(signum).name} received: writing a checkpoint...", file=sys.stderr, flush=True)
        callback.stop_signal = signum

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)
    return callback


def make_envs(args: Args):
    """The training envs (DummyVecEnv with Monitor, seeded like SB3 does)."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    return make_vec_env(args.env_id, n_envs=args.num_envs, seed=args.seed, vec_env_cls=DummyVecEnv)


def make_eval_env(args: Args, run_dir: Path) -> gym.Env:
    eval_env = gym.make(args.env_id, render_mode="rgb_array" if args.capture_video else None)
    if args.capture_video:  # the first deterministic episode of each evaluation
        every = 2 * args.eval_episodes
        eval_env = gym.wrappers.RecordVideo(eval_env, str(run_dir / "videos"), episode_trigger=lambda e: e % every == 0)
    return eval_env


def completed_at(run_dir: Path) -> int:
    """The global step in the run's summary.json: where it completed (-1: it never did)."""
    try:
        step = read_json(str(run_dir / "summary.json"))["global_step"]
    except (ConfigError, KeyError, TypeError):
        return -1
    return step if isinstance(step, int) and not isinstance(step, bool) else -1


def train(args: Args) -> dict:
    """The whole run; returns the summary (plus run_dir and interrupted)."""
    validate(args)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = "cuda" if args.cuda and torch.cuda.is_available() else "cpu"
    envs = make_envs(args)
    previous_rows = None
    if args.resume:  # load and check the checkpoint and the folder's files before anything in it changes
        run_dir = checkpoint_path(args.resume).parent
        try:
            if not os.access(run_dir, os.W_OK | os.X_OK):
                raise ConfigError(f"--resume {args.resume}: cannot write to {run_dir}")
            folder_lock = lock_run_folder(str(run_dir), f"--resume {args.resume}")
            model, state = load_checkpoint(run_dir / "checkpoint.pt", args, envs, device)
            if state["global_step"] >= args.total_timesteps and completed_at(run_dir) >= state["global_step"]:
                # as the project's scripts: nothing to train (a run stopped during its final
                # evaluation has no summary.json and is finished below)
                raise ConfigError(f"--resume {args.resume}: that run already reached step {state['global_step']} "
                                  f"(--total-timesteps {args.total_timesteps}); give a larger --total-timesteps "
                                  "to train on")
            # the final evaluation of a run resumed at its budget runs again: its rows go (as the scripts do)
            redo_step = state["global_step"] if state["global_step"] >= args.total_timesteps else None
            previous_rows = read_previous_rows(str(run_dir), state["global_step"], redo_step)
        except BaseException:
            envs.close()
            raise
        envs.seed(args.seed + state["global_step"])  # the interrupted episode restarts
    else:
        problem = writable_folder_problem(args.output_dir)
        if problem is not None:
            envs.close()
            raise ConfigError(f"--output-dir {args.output_dir}: {problem}")
        run_dir = Path(new_run_folder(args.output_dir, f"{args.env_id}__{args.exp_name}__{args.seed}"))
        folder_lock = lock_run_folder(str(run_dir), "--output-dir")
        model = make_model(args, envs, device)
        state = {"global_step": 0, "train_time": 0.0, "train_steps": 0, "episodes": 0, "last_return": float("nan"),
                 "last_good_step": None}
    args_record = {"algorithm": ALGORITHM, "args": asdict(args), "command": sys.argv, "versions": library_versions()}
    atomic_write_text(str(run_dir / "args.json"), lambda f: json.dump(args_record, f, indent=2))
    eval_env = make_eval_env(args, run_dir)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=asdict(args), name=run_dir.name, id=run_dir.name, resume="allow")
    logger = RunLogger(str(run_dir), state["global_step"] if args.resume else None, False, previous_rows)
    callback = make_callback(args, run_dir, logger, state, eval_env)
    start_time, start_step = time.time(), state["global_step"]
    final_eval: list[dict] = []
    try:
        remaining = args.total_timesteps - state["global_step"]
        if remaining > 0:
            model.learn(total_timesteps=remaining, callback=callback, reset_num_timesteps=not args.resume,
                        log_interval=10**9)
        else:  # stopped during its final evaluation: nothing to learn; the final checkpoint and evaluation
            callback.init_callback(model)
        state["global_step"] = int(model.num_timesteps)
        interrupted = callback.stop_signal is not None
        state["last_good_step"] = state["global_step"]
        save_checkpoint(run_dir / "checkpoint.pt", model, state)
        if interrupted:
            command = [sys.argv[0]] + strip_resume_flag(sys.argv[1:]) + ["--resume", str(run_dir)]
            print(f"stopped at step {state['global_step']}; checkpoint written to {run_dir / 'checkpoint.pt'}.\n"
                  f"Resume with: python {' '.join(command)}", file=sys.stderr, flush=True)
        else:
            final_eval = callback.run_evaluation(state["global_step"])
    finally:
        logger.close()
        envs.close()
        eval_env.close()
        if args.track:
            import wandb

            wandb.finish()
    wall_time = time.time() - start_time
    summary = {"algorithm": ALGORITHM, "env_id": args.env_id, "seed": args.seed, "global_step": state["global_step"],
               "total_timesteps": args.total_timesteps,
               "sps": (state["global_step"] - start_step) / max(wall_time, 1e-9),
               "train_sps": state["train_steps"] / state["train_time"] if state["train_time"] > 0 else float("nan"),
               "wall_time_s": wall_time, "peak_rss_mb": peak_resident_mb(), "final_eval": final_eval}
    if not interrupted:
        atomic_write_text(str(run_dir / "summary.json"), lambda f: json.dump(summary, f, indent=2))
    os.close(folder_lock)
    return {**summary, "run_dir": str(run_dir), "interrupted": interrupted}


def main() -> None:
    """The exit codes of every script of this project: 0 done, 1 stopped on a non-finite loss,
    2 bad input (one `error:` line), 130 interrupted (after writing the checkpoint)."""
    args = tyro.cli(Args, description=__doc__.split("\n\n")[0])
    try:
        result = train(args)
    except (ConfigError, NonFiniteLossError) as error:
        print(f"{ALGORITHM}.py: error: {error}", file=sys.stderr)
        sys.exit(2 if isinstance(error, ConfigError) else 1)
    sys.exit(130 if result["interrupted"] else 0)


if __name__ == "__main__":
    main()
