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
- checkpoint.pt: a zip holding model.save() (networks, optimizers, alpha, step counters),
  save_replay_buffer(), the RNG states and the bookkeeping, written to a temp file and renamed
  (atomic), every --checkpoint-every steps, on SIGINT/SIGTERM and at the end; --resume continues
  it (the interrupted episode restarts: env states are not saved);
- exit codes: 0 done, 2 bad input, 130 interrupted, 1 non-finite loss.

Settings match sac_continuous.py's defaults where SB3 allows: net_arch 256x256, batch 256,
train_freq 1 with gradient_steps 1 (one update per vector step), learning_starts 5000 uniform
random steps, tau 0.005, gamma 0.99, alpha auto-tuned from 1.0. SB3 differences kept as SB3 has
them: one learning rate for actor, critic and alpha (3e-4), log sigma clamped to [-20, 2].

    python benchmark/sb3_sac.py --env-id Hopper-v4 --seed 1 --total-timesteps 1000000
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import signal
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import gymnasium as gym
import numpy as np
import torch

# The bookkeeping every run of this project shares (errors, logging to TensorBoard/metrics.csv/
# eval.csv with resume truncation, the step-crossing test, the resume command) comes from the
# reference script, so this peer writes exactly the same files.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sac_continuous import (ConfigError, NonFiniteLossError, RunLogger, crossed,  # noqa: E402
                            run_cli, strip_resume_flag)

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


def save_checkpoint(path: Path, model, state: dict) -> None:
    """model.save + save_replay_buffer + bookkeeping into one zip, written atomically."""
    tmp, buffer_tmp = path.with_name(path.name + ".tmp"), path.with_name("replay_buffer.pkl.tmp")
    model_bytes = io.BytesIO()
    model.save(model_bytes)
    with open(buffer_tmp, "wb") as f:  # through a file: a 1M-step buffer is not held twice in memory
        model.save_replay_buffer(f)
    with zipfile.ZipFile(tmp, "w") as zf:
        zf.writestr("model.zip", model_bytes.getvalue())
        zf.write(buffer_tmp, "replay_buffer.pkl")
        zf.writestr("state.json", json.dumps(state))
        zf.writestr("rng.pkl", pickle.dumps({"python": random.getstate(), "numpy": np.random.get_state(),
                                             "torch": torch.get_rng_state()}))
    os.replace(tmp, path)
    buffer_tmp.unlink()


def load_checkpoint(path: Path, env, device: str):
    """(model with its replay buffer, bookkeeping state); restores the global RNG states."""
    from stable_baselines3 import SAC

    with zipfile.ZipFile(path) as zf:
        model = SAC.load(io.BytesIO(zf.read("model.zip")), env=env, device=device)
        with zf.open("replay_buffer.pkl") as f:
            model.load_replay_buffer(io.BufferedReader(f))
        state = json.loads(zf.read("state.json"))
        rng = pickle.loads(zf.read("rng.pkl"))
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return model, state


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


def make_envs(args: Args, run_dir: Path):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    envs = make_vec_env(args.env_id, n_envs=args.num_envs, seed=args.seed, vec_env_cls=DummyVecEnv)
    eval_env = gym.make(args.env_id, render_mode="rgb_array" if args.capture_video else None)
    if args.capture_video:  # the first deterministic episode of each evaluation
        every = 2 * args.eval_episodes
        eval_env = gym.wrappers.RecordVideo(eval_env, str(run_dir / "videos"), episode_trigger=lambda e: e % every == 0)
    return envs, eval_env


def train(args: Args) -> dict:
    """The whole run; returns the summary (plus run_dir and interrupted)."""
    from stable_baselines3 import SAC

    validate(args)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = "cuda" if args.cuda and torch.cuda.is_available() else "cpu"
    if args.resume:
        run_dir = checkpoint_path(args.resume).parent
    else:
        run_dir = Path(args.output_dir) / f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
        run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "args.json").write_text(json.dumps(
        {"algorithm": ALGORITHM, "args": asdict(args), "command": sys.argv, "versions": library_versions()}, indent=2))
    envs, eval_env = make_envs(args, run_dir)
    state = {"global_step": 0, "train_time": 0.0, "train_steps": 0, "episodes": 0, "last_return": float("nan"),
             "last_good_step": None}
    if args.resume:
        model, state = load_checkpoint(run_dir / "checkpoint.pt", envs, device)
        envs.seed(args.seed + state["global_step"])  # the interrupted episode restarts
    else:
        model = SAC("MlpPolicy", envs, learning_rate=args.learning_rate, buffer_size=args.buffer_size,
                    learning_starts=args.learning_starts, batch_size=args.batch_size, tau=args.tau, gamma=args.gamma,
                    train_freq=1, gradient_steps=1, ent_coef="auto",
                    policy_kwargs=dict(net_arch=[args.hidden_size, args.hidden_size]),
                    seed=args.seed, device=device, verbose=0)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=asdict(args), name=run_dir.name, id=run_dir.name, resume="allow")
    logger = RunLogger(str(run_dir), resume_step=state["global_step"] if args.resume else None)
    callback = make_callback(args, run_dir, logger, state, eval_env)
    start_time, start_step = time.time(), state["global_step"]
    final_eval: list[dict] = []
    try:
        remaining = args.total_timesteps - state["global_step"]
        if remaining > 0:
            model.learn(total_timesteps=remaining, callback=callback, reset_num_timesteps=not args.resume,
                        log_interval=10**9)
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
               "wall_time_s": wall_time, "final_eval": final_eval}
    if not interrupted:
        tmp = run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, run_dir / "summary.json")
    return {**summary, "run_dir": str(run_dir), "interrupted": interrupted}


def main() -> None:
    run_cli(Args, train, f"{ALGORITHM}.py", __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
