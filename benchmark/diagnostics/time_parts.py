"""Where a training step's time goes: milliseconds per call of each part, measured in one process.

    python benchmark/diagnostics/time_parts.py --script sac_continuous --env-id Hopper-v4
    python benchmark/diagnostics/time_parts.py --script gmm_density_matching --env-id Humanoid-v4 --actor-parts

Two tables, both on the CPU with --threads torch threads:

1. The training loop. The script's own `train()` runs (--total-timesteps steps, the first
   --learning-starts uniform-random, 256x256 networks, batch 256, no evaluation until the single
   final episode) with timers around the agent's critic step and actor step, the replay buffer's
   add and sample, the actor's `act` (acting, and for the GMM also the target's next actions) and
   the vector env's step. Nothing in the script changes: the timers wrap the methods and are
   removed afterwards. "ms per train step" is 1000 / the run's train_sps (summary.json's figure).
2. With --actor-parts (gmm_density_matching only): the GMM actor update split into its parts
   (distribution parameters, proposals, the M-sample critic pass, the KL temperature, the weights,
   log pi and loss, backward and Adam), on the env's shapes with random replay data (the cost does
   not depend on the values), --part-updates updates after 10 warm-up ones, median per part. The
   same updates also time the M-sample pass with bfloat16 hidden products (`--score-dtype
   bfloat16`), right after the float32 one on the same inputs: a side-by-side figure, not part of
   the update's total.

Timings on a shared VM drift; compare parts within one table, not across runs.
"""

from __future__ import annotations

import collections
import importlib
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import tyro

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


@dataclass
class Args:
    script: Literal["sac_continuous", "gmm_density_matching"] = "sac_continuous"
    """which script's training loop to time"""
    env_id: str = "Hopper-v4"
    """environment"""
    total_timesteps: int = 2_000
    """env steps of the timed run"""
    learning_starts: int = 1_000
    """uniform-random steps before the first update (not timed as training)"""
    threads: int = 2
    """torch CPU threads"""
    actor_parts: bool = False
    """also split the GMM actor update into its parts (gmm_density_matching only)"""
    part_updates: int = 50
    """updates timed for --actor-parts"""


class Timers:
    """Wrap methods of classes with timers: total seconds and calls per label; `remove` undoes it."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self._originals: list[tuple[type, str, object]] = []

    def wrap(self, owner: type, method: str, label: str) -> None:
        original = getattr(owner, method)
        self._originals.append((owner, method, original))

        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = original(*args, **kwargs)
            self.seconds[label] += time.perf_counter() - start
            self.calls[label] += 1
            return result

        setattr(owner, method, timed)

    def remove(self) -> None:
        for owner, method, original in reversed(self._originals):
            setattr(owner, method, original)
        self._originals.clear()

    def table(self) -> str:
        lines = ["| part | calls | ms per call | total s |", "|---|---|---|---|"]
        for label in self.seconds:
            per_call = 1000 * self.seconds[label] / max(self.calls[label], 1)
            lines.append(f"| {label} | {self.calls[label]} | {per_call:.3f} | {self.seconds[label]:.2f} |")
        return "\n".join(lines)


def agent_and_actor_classes(module) -> tuple[type, type]:
    agent = next(getattr(module, name) for name in ("SAC", "GMMAgent") if hasattr(module, name))
    actor = next(getattr(module, name) for name in ("Actor", "GMMActor") if hasattr(module, name))
    return agent, actor


def time_training_loop(args: Args, module) -> tuple[dict, Timers]:
    agent_class, actor_class = agent_and_actor_classes(module)
    timers = Timers()
    timers.wrap(agent_class, "critic_step", "critic step")
    timers.wrap(agent_class, "target_update", "target update")
    timers.wrap(agent_class, "actor_step", "actor step")
    if hasattr(agent_class, "temperature_step"):  # SAC; the GMM has no learned temperature
        timers.wrap(agent_class, "temperature_step", "temperature step")
    timers.wrap(module.ReplayBuffer, "add", "replay add")
    timers.wrap(module.ReplayBuffer, "sample", "replay sample")
    timers.wrap(actor_class, "act", "actor act")
    timers.wrap(gym.vector.SyncVectorEnv, "step", "env step")
    try:
        with tempfile.TemporaryDirectory() as output_dir:
            run_args = module.args_from_flat(dict(
                env_id=args.env_id, total_timesteps=args.total_timesteps, learning_starts=args.learning_starts,
                random_steps=args.learning_starts, hidden_size=256, num_layers=2, batch_size=256, eval_every=0,
                eval_episodes=1, log_every=10 * args.total_timesteps, checkpoint_every=10 * args.total_timesteps,
                output_dir=output_dir))
            result = module.train(run_args)
    finally:
        timers.remove()
    return result, timers


BFLOAT16_PASS = "M-sample critic pass, bfloat16 products (beside, not in the total)"


def time_gmm_actor_parts(args: Args, gmm) -> dict[str, float]:
    """Median ms per part of the GMM actor update, mirroring `GMMAgent.actor_step` step by step."""
    env = gym.make(args.env_id)
    obs_dim, action_space = int(np.prod(env.observation_space.shape)), env.action_space
    env.close()
    action_dim = int(np.prod(action_space.shape))
    run_args = gmm.Args(env_id=args.env_id, hidden_size=256, num_layers=2, batch_size=256)
    agent = gmm.GMMAgent(run_args, obs_dim, action_space, torch.device("cpu"))
    buffer = gmm.ReplayBuffer(10_000, obs_dim, action_dim, torch.device("cpu"), seed=0)
    rng = np.random.default_rng(0)
    low, high = action_space.low, action_space.high
    for _ in range(2_000):
        buffer.add(rng.standard_normal((1, obs_dim)), rng.standard_normal((1, obs_dim)),
                   rng.uniform(low, high, (1, action_dim)), rng.standard_normal(1), np.zeros(1))
    gmm.keep_freed_memory_in_process()  # as train() does
    times: dict[str, list[float]] = collections.defaultdict(list)

    def timed(label, function):
        start = time.perf_counter()
        value = function()
        times[label].append(1000 * (time.perf_counter() - start))
        return value

    for update in range(10 + args.part_updates):
        batch = buffer.sample(run_args.batch_size)
        obs = batch["obs"]
        timed("critic step", lambda: agent.critic_step(batch))
        timed("target update", agent.target_update)
        params = timed("distribution params", lambda: agent.actor.distribution_params(obs))
        with torch.no_grad():
            u, log_q = timed("proposals", lambda: agent.propose(obs, params))
            q = timed("M-sample critic pass", lambda: agent.critics.forward_many(obs, agent.actor.squash(u))
                      .min(dim=0).values)
            timed(BFLOAT16_PASS, lambda: agent.critics.forward_many(obs, agent.actor.squash(u),
                                                                    matmul_dtype=torch.bfloat16))
            temperature = timed("KL temperature", lambda: gmm.kl_temperature(q, run_args.kl_bound))
            weights = timed("Boltzmann weights", lambda: gmm.boltzmann_weights(q, temperature, log_q))
        loss = timed("log pi and loss", lambda: gmm.density_matching_loss(gmm.gmm_log_prob(u, *params), weights)
                     + gmm.entropy_regulariser(params[0], params[2], run_args.entropy_coef))

        def backward_and_step():
            agent.actor_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            agent.actor_optimizer.step()

        timed("backward and Adam", backward_and_step)
        if update < 10:  # warm-up
            times.clear()
    return {label: statistics.median(values) for label, values in times.items()}


def main(args: Args) -> None:
    if args.actor_parts and args.script != "gmm_density_matching":
        raise SystemExit("error: --actor-parts needs --script gmm_density_matching")
    torch.set_num_threads(args.threads)
    module = importlib.import_module(args.script)
    result, timers = time_training_loop(args, module)
    print(f"\n{args.script} on {args.env_id}, {args.total_timesteps} steps ({args.learning_starts} random), "
          f"256x256, batch 256, CPU {args.threads} threads: train SPS {result['train_sps']:.1f}, "
          f"{1000 / result['train_sps']:.2f} ms per train step\n")
    print(timers.table())
    if args.actor_parts:
        parts = time_gmm_actor_parts(args, module)
        print(f"\nGMM update by part ({args.env_id} shapes, median of {args.part_updates} updates, ms):\n")
        print("| part | ms |\n|---|---|")
        for label, ms in parts.items():
            print(f"| {label} | {ms:.2f} |")
        print(f"| all parts | {sum(ms for label, ms in parts.items() if label != BFLOAT16_PASS):.2f} |")


if __name__ == "__main__":
    main(tyro.cli(Args))
