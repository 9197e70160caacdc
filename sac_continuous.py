"""Soft Actor-Critic (SAC) for continuous control, in one file.

What it learns
--------------
A stochastic actor pi(a|s) and an ensemble of N critics Q_1..Q_N, trained from a replay buffer to
maximise the entropy-regularised return  sum_t gamma^t (r_t + alpha * H(pi(.|s_t))).

The equations this file implements (symbols: s state, a action in the env's Box, u the pre-squash
variable, d termination flag -- never truncation --, gamma discount, tau Polyak rate):

  Policy (tanh-squashed Gaussian, scaled to the env's own bounds)
      u ~ N(mu(s), sigma(s)),   a = tanh(u) * scale + bias,
      scale = (high - low) / 2,  bias = (high + low) / 2
      log pi(a|s) = log N(u; mu, sigma) - sum_j log(scale_j * (1 - tanh(u_j)^2) + eps)          (1)

  Critic target (one sample a' ~ pi(.|s'))
      y = r + gamma * (1 - d) * ( backup(Q'_1..N(s', a')) - alpha * log pi(a'|s') )            (2)
      backup = min (clipped double-Q) | mean | doubleq (critic i bootstraps from target critic
               i-1) | redq (min over a random subset of the target critics)
      L_Q = sum_i mean_batch (Q_i(s, a) - y)^2                                                   (3)

  Actor
      reparametrize:  L_pi = E_s[ alpha * log pi(a~|s) - Q(s, a~) ],  a~ = rsample               (4)
      reinforce:      L_pi = -E_s[ log pi(a|s) * sg(Q(s, a) - alpha * log pi(a|s)) ],  a = sample (5)
      (Q is the min over critics, or the mean for the `mean` and `redq` backups; sg = stop-grad.)

  Temperature (SAC v2 autotuning)
      L_alpha = -log_alpha * sg(log pi(a|s) + target_entropy),  target_entropy = -dim(A)        (6)

  Targets
      soft:  theta' <- (1 - tau) theta' + tau theta   after every critic update                  (7)
      hard:  theta' <- theta                          every `target_update_period` critic updates

Sources: Haarnoja et al. 2018, "Soft Actor-Critic" (arXiv:1801.01290) and "Soft Actor-Critic
Algorithms and Applications" (arXiv:1812.05905); the knobs follow a course codebase's SAC
(actor_gradient_type, num_critic_networks, target_critic_backup_type, ...); the file layout,
defaults where that source is silent, and metric names follow CleanRL's sac_continuous_action.py.

Run it:
    python sac_continuous.py --env-id Hopper-v4 --total-timesteps 1000000
    python sac_continuous.py --env-id Pendulum-v1 --total-timesteps 10000 --eval-every 2000
    python sac_continuous.py --resume runs/Hopper-v4__sac_continuous__1__1700000000   # go on
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass
from typing import Annotated, Literal, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro

ALGORITHM = "sac_continuous"


# =============================================================================================
# Arguments
# =============================================================================================
@dataclass
class Args:
    # ---- experiment ----------------------------------------------------------------------
    exp_name: str = "sac_continuous"
    """name of this experiment; the run folder is {env_id}__{exp_name}__{seed}__{unix_time}"""
    seed: int = 1
    """seed of the experiment (torch, numpy, python, replay sampling and the environments)"""
    torch_deterministic: bool = True
    """sets `torch.backends.cudnn.deterministic`; on CPU results are bit-identical for a seed anyway"""
    cuda: bool = False
    """train on the GPU if one is available (falls back to the CPU with a notice otherwise)"""
    track: bool = False
    """mirror the TensorBoard metrics to Weights & Biases"""
    wandb_project_name: str = "continuous-control-references"
    """the wandb project name"""
    wandb_entity: Optional[str] = None
    """the wandb entity (team); None uses your default"""
    capture_video: bool = False
    """record the first deterministic evaluation episode of each evaluation to `videos/`
    (needs moviepy; MuJoCo renders headless with MUJOCO_GL=osmesa)"""
    output_dir: str = "runs"
    """where run folders are created"""
    resume: Optional[str] = None
    """a run folder or its checkpoint.pt: continue that run (networks, optimizers, alpha, replay
    buffer, RNG states and counters are restored; the environment cannot be saved, so the episode
    that was running when the checkpoint was written restarts from a fresh reset). The other
    arguments must describe the same run (same env, same network and buffer shapes);
    `--total-timesteps` may be raised to train further."""
    checkpoint_every: int = 50_000
    """write checkpoint.pt every this many env steps (and always at the end and on Ctrl-C)"""

    # ---- environment ---------------------------------------------------------------------
    env_id: str = "Hopper-v4"
    """the gymnasium environment id (any env with a Box action space)"""
    total_timesteps: int = 1_000_000
    """total environment steps (summed over the vectorized environments)"""
    num_envs: int = 1
    """parallel environments for data collection (one training iteration per vector step, as in
    CleanRL and SB3: with N envs the update-to-data ratio is num_critic_updates / N)"""
    eval_every: int = 10_000
    """evaluate every this many env steps (0: only the final evaluation)"""
    eval_episodes: int = 10
    """episodes per evaluation, run once deterministically (tanh(mu)) and once stochastically"""

    # ---- algorithm: replay and schedule ---------------------------------------------------
    buffer_size: int = 1_000_000
    """replay buffer capacity (transitions)"""
    batch_size: int = 256
    """minibatch size of every gradient step"""
    gamma: float = 0.99
    """discount factor"""
    learning_starts: Annotated[int, tyro.conf.arg(aliases=("--training-starts",))] = 5_000
    """env steps before the first gradient update (the course codebase's `training_starts`)"""
    random_steps: int = 5_000
    """env steps taken with uniformly random actions before the actor acts (CleanRL ties this to
    learning_starts; the course codebase keeps them separate)"""

    # ---- algorithm: critics ---------------------------------------------------------------
    num_critic_networks: int = 2
    """N critics: 1, 2 (clipped double-Q) or more (an ensemble)"""
    target_critic_backup_type: Literal["min", "mean", "doubleq", "redq"] = "min"
    """how the N target critics combine in the TD target, eq. (2): min (clipped double-Q), mean,
    doubleq (critic i bootstraps from target critic i-1; the swap when N=2), redq (min over a
    random subset of `redq_subset_size` target critics, redrawn every update). The actor uses the
    min over critics, or the mean for `mean` and `redq` (as the REDQ paper does)"""
    redq_subset_size: int = 2
    """size of the random subset for the `redq` backup"""
    num_critic_updates: int = 1
    """critic gradient steps per training iteration (the update-to-data ratio); the actor and
    temperature take one step per iteration, on the last critic batch"""
    q_lr: float = 1e-3
    """critic learning rate (CleanRL's default; the temperature uses it too)"""
    use_soft_target_update: bool = True
    """Polyak-average the target critics after every critic update (else hard copies)"""
    tau: Annotated[float, tyro.conf.arg(aliases=("--soft-target-update-rate",))] = 0.005
    """Polyak rate of the soft target update, eq. (7) (course codebase: soft_target_update_rate)"""
    target_update_period: int = 1000
    """with --no-use-soft-target-update: copy critics to targets every this many critic updates"""

    # ---- algorithm: actor ------------------------------------------------------------------
    actor_gradient_type: Literal["reparametrize", "reinforce"] = "reparametrize"
    """reparametrize: pathwise gradient through a~ = rsample, eq. (4); reinforce: likelihood-ratio
    gradient with sampled actions, eq. (5) (unbiased but noisy: use many num_actor_samples)"""
    num_actor_samples: int = 1
    """actions sampled per state in the actor loss (reparametrize needs 1, reinforce many)"""
    policy_lr: float = 3e-4
    """actor learning rate"""
    hidden_size: int = 256
    """width of every hidden layer (actor and critics)"""
    num_layers: int = 2
    """number of hidden layers (actor and critics)"""
    state_dependent_std: bool = True
    """the actor outputs log sigma(s); with --no-state-dependent-std sigma is one learned vector"""
    use_tanh: bool = True
    """tanh-squash the Gaussian into the action box, eq. (1); without it a = u * scale + bias is
    clipped only when sent to the env (the classic ablation tanh was introduced to fix)"""
    log_std_min: float = -5.0
    """lower bound of log sigma (CleanRL's range; SB3 uses -20)"""
    log_std_max: float = 2.0
    """upper bound of log sigma"""

    # ---- algorithm: entropy ------------------------------------------------------------------
    use_entropy_bonus: bool = True
    """maximum-entropy objective; with --no-use-entropy-bonus alpha = 0 (no entropy term at all)"""
    autotune: bool = True
    """tune alpha by eq. (6) (SAC v2, CleanRL and SB3 default); --no-autotune keeps --alpha fixed"""
    alpha: Annotated[float, tyro.conf.arg(aliases=("--temperature",))] = 0.2
    """entropy temperature when not autotuned, and the initial value when autotuned is off
    (course codebase: temperature). Autotuning starts from alpha = 1 as CleanRL does"""
    target_entropy_scale: float = 1.0
    """target entropy = -target_entropy_scale * dim(A), eq. (6)"""

    # ---- logging & outputs -----------------------------------------------------------------
    log_every: int = 1000
    """write losses to TensorBoard/metrics.csv and print the progress line every this many steps"""


class ConfigError(ValueError):
    """Bad input: reported as one line before any work starts."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite: the run stops, the last good checkpoint stays on disk."""


def validate_args(args: Args) -> gym.spaces.Box:
    """Check every argument and the environment before any work; return the env's action space.

    Raises ConfigError with a one-line message naming what is wrong.
    """
    positive = ["total_timesteps", "num_envs", "buffer_size", "batch_size", "eval_episodes",
                "num_critic_networks", "num_critic_updates", "num_actor_samples", "hidden_size",
                "num_layers", "checkpoint_every", "log_every", "target_update_period"]
    for name in positive:
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ["eval_every", "learning_starts", "random_steps"]:
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.batch_size > args.buffer_size:
        raise ConfigError(f"--batch-size ({args.batch_size}) cannot exceed --buffer-size ({args.buffer_size})")
    if not 0.0 <= args.gamma <= 1.0:
        raise ConfigError(f"--gamma must lie in [0, 1], got {args.gamma}")
    if not 0.0 < args.tau <= 1.0:
        raise ConfigError(f"--tau must lie in (0, 1], got {args.tau}")
    if min(args.q_lr, args.policy_lr) <= 0:
        raise ConfigError("--q-lr and --policy-lr must be positive")
    if args.alpha < 0:
        raise ConfigError(f"--alpha must be >= 0, got {args.alpha}")
    if args.log_std_min >= args.log_std_max:
        raise ConfigError("--log-std-min must be smaller than --log-std-max")
    backup, n = args.target_critic_backup_type, args.num_critic_networks
    if backup in ("doubleq", "redq") and n < 2:
        raise ConfigError(f"--target-critic-backup-type {backup} needs --num-critic-networks >= 2, got {n}")
    if backup == "redq" and not 1 <= args.redq_subset_size <= n:
        raise ConfigError(f"--redq-subset-size must lie in [1, {n}], got {args.redq_subset_size}")
    if args.actor_gradient_type == "reinforce" and args.num_actor_samples < 2:
        print("notice: reinforce with --num-actor-samples 1 is a very noisy gradient; the course "
              "codebase uses many samples", file=sys.stderr)
    if args.resume is not None and resolve_checkpoint_path(args.resume) is None:
        raise ConfigError(f"--resume {args.resume}: no checkpoint.pt there")
    return check_env(args.env_id)


def check_env(env_id: str) -> gym.spaces.Box:
    """Make the env once to check it exists and has a bounded Box action space."""
    try:
        env = gym.make(env_id)
    except gym.error.Error as error:  # NameNotFound, VersionNotFound, DependencyNotInstalled, ...
        raise ConfigError(f"unknown or unavailable environment '{env_id}': {error}") from None
    space = env.action_space
    env.close()
    if not isinstance(space, gym.spaces.Box):
        raise ConfigError(f"{env_id} has a {type(space).__name__} action space ({space}); "
                          "SAC needs a continuous gymnasium.spaces.Box")
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise ConfigError(f"{env_id} has an unbounded action space ({space}); the policy is "
                          "squashed into [low, high], so both bounds must be finite")
    return space


# =============================================================================================
# Environment
# =============================================================================================
def make_env(env_id: str, seed: int, video_folder: Optional[str] = None):
    """A thunk for gym.vector: the env with episode statistics (and optional video), seeded.

    The env is seeded at its first reset by the vector env (`envs.reset(seed=...)`); the action
    space is seeded here so anything sampling from it is reproducible too.
    """

    def thunk():
        if video_folder is not None:
            env = gym.make(env_id, render_mode="rgb_array")
            # the evaluation runs 2 * eval_episodes episodes per round; film the first of each
            env = gym.wrappers.RecordVideo(env, video_folder, episode_trigger=lambda ep: True,
                                           disable_logger=True)
        else:
            env = gym.make(env_id)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env.action_space.seed(seed)
        return env

    return thunk


# =============================================================================================
# ALGO LOGIC: networks and losses
# =============================================================================================
def mlp(in_dim: int, out_dim: int, hidden_size: int, num_layers: int) -> nn.Sequential:
    """in -> [Linear, ReLU] * num_layers -> Linear out."""
    layers, width = [], in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden_size), nn.ReLU()]
        width = hidden_size
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class CriticEnsemble(nn.Module):
    """N independent Q(s, a) MLPs evaluated as ONE batched matmul per layer.

    Layer l of all N critics is a weight tensor [N, in, out]; `torch.baddbmm` applies the N layers
    to N copies of the batch at once. This computes exactly what N separate nn.Linear stacks would
    (same initialisation law, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as nn.Linear), but with one
    kernel launch per layer instead of N -- the "fused critics" of LeanRL.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_size: int, num_layers: int, num_critics: int):
        super().__init__()
        self.num_critics = num_critics
        sizes = [obs_dim + action_dim] + [hidden_size] * num_layers + [1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(num_critics, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_critics, 1, fan_out).uniform_(-bound, bound)))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """obs [B, obs_dim], action [B, act_dim] -> Q values [N, B]."""
        x = torch.cat([obs, action], dim=-1).unsqueeze(0).expand(self.num_critics, -1, -1)
        for weight, bias in zip(self.weights[:-1], self.biases[:-1]):
            # in-place ReLU: baddbmm's backward does not need its output, so overwriting it saves
            # one [N, B, hidden] allocation per layer
            x = torch.baddbmm(bias, x, weight).relu_()
        # the output layer has ONE column: a multiply-and-sum over the hidden units is the same
        # dot product, and on the CPU several times faster than a batched matmul of width 1
        out_weight, out_bias = self.weights[-1], self.biases[-1]  # [N, hidden, 1], [N, 1, 1]
        return (x * out_weight.transpose(1, 2)).sum(-1) + out_bias.squeeze(-1)


class Actor(nn.Module):
    """Gaussian policy over u, squashed by tanh into the env's box, eq. (1).

    The action scale and bias are buffers, so they move with `.to(device)` and are saved in the
    checkpoint; asymmetric and offset boxes (low != -high) are handled by the same formula.
    """

    def __init__(self, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray, hidden_size: int,
                 num_layers: int, state_dependent_std: bool = True, use_tanh: bool = True,
                 log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__()
        action_dim = int(np.prod(action_low.shape))
        self.state_dependent_std = state_dependent_std
        self.use_tanh = use_tanh
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        # one trunk; the last layer emits mu (and log sigma when it depends on the state)
        self.net = mlp(obs_dim, action_dim * (2 if state_dependent_std else 1), hidden_size, num_layers)
        if not state_dependent_std:
            self.log_std_param = nn.Parameter(torch.zeros(action_dim))
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)

    def distribution_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu(s) and log sigma(s) of the pre-squash Gaussian."""
        out = self.net(obs)
        if self.state_dependent_std:
            mean, raw_log_std = out.chunk(2, dim=-1)
        else:
            mean, raw_log_std = out, self.log_std_param.expand_as(out)
        # squash log sigma smoothly into [min, max] (CleanRL): no dead gradient at a hard clamp
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(raw_log_std) + 1)
        return mean, log_std

    def squash(self, u: torch.Tensor) -> torch.Tensor:
        """a = tanh(u) * scale + bias (or u * scale + bias without tanh)."""
        return (torch.tanh(u) if self.use_tanh else u) * self.action_scale + self.action_bias

    def log_prob(self, u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) for a = squash(u), eq. (1), summed over action dimensions -> [B]."""
        return self._log_prob((u - mean) / log_std.exp(), log_std, torch.tanh(u) if self.use_tanh else None)

    def _log_prob(self, z: torch.Tensor, log_std: torch.Tensor, tanh_u: Optional[torch.Tensor]) -> torch.Tensor:
        """eq. (1) given the standardised z = (u - mu) / sigma and tanh(u), which `sample` already has."""
        log_density = -0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        if self.use_tanh:
            # change of variables: |da/du| = scale * (1 - tanh(u)^2); eps keeps log finite at |u|>>1
            log_density = log_density - torch.log(self.action_scale * (1 - tanh_u.pow(2)) + 1e-6)
        else:
            log_density = log_density - torch.log(self.action_scale)
        return log_density.sum(-1)

    def sample(self, obs: torch.Tensor, reparametrize: bool = True,
               generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw a ~ pi(.|s); return (action, log pi(a|s)).

        reparametrize=True: u = mu + sigma * eps keeps the gradient path through the action (eq. 4).
        reparametrize=False: u is detached, only log pi carries gradient (REINFORCE, eq. 5).
        """
        mean, log_std = self.distribution_params(obs)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        u = mean + log_std.exp() * noise
        if reparametrize:
            # (u - mu) / sigma IS the noise: using it directly skips three ops forward and backward.
            # The gradient is the same: d/dtheta of -z^2/2 along u = mu + sigma * eps is zero.
            z = noise
        else:
            u = u.detach()
            z = (u - mean) / log_std.exp()  # the score function needs z's dependence on mu, sigma
        tanh_u = torch.tanh(u) if self.use_tanh else None
        action = (tanh_u if self.use_tanh else u) * self.action_scale + self.action_bias
        return action, self._log_prob(z, log_std, tanh_u)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """A stochastic action for the env, without log pi (the collection loop needs no more).
        Draws the same noise as `sample`, so the random stream is the same either way."""
        mean, log_std = self.distribution_params(obs)
        return self.squash(mean + log_std.exp() * torch.randn(mean.shape, device=mean.device, dtype=mean.dtype))

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The evaluation action: squash(mu(s))."""
        return self.squash(self.distribution_params(obs)[0])


def backup_target_q(next_q: torch.Tensor, backup_type: str, redq_subset_size: int = 2,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Combine the target critics' values next_q [N, B] into per-critic targets [N, B], eq. (2)."""
    if backup_type == "min":
        return next_q.min(dim=0, keepdim=True).values.expand_as(next_q)
    if backup_type == "mean":
        return next_q.mean(dim=0, keepdim=True).expand_as(next_q)
    if backup_type == "doubleq":
        # critic i learns from target critic i-1 (for N = 2: each from the other, van Hasselt 2010)
        return torch.roll(next_q, shifts=1, dims=0)
    if backup_type == "redq":
        subset = torch.randperm(next_q.shape[0], generator=generator, device=generator.device
                                if generator is not None else next_q.device)[:redq_subset_size]
        return next_q[subset.to(next_q.device)].min(dim=0, keepdim=True).values.expand_as(next_q)
    raise ValueError(f"unknown backup type {backup_type}")


def td_target(rewards: torch.Tensor, terminations: torch.Tensor, next_q_backup: torch.Tensor,
              next_log_prob: torch.Tensor, alpha: torch.Tensor | float, gamma: float) -> torch.Tensor:
    """y = r + gamma * (1 - d) * (backup - alpha * log pi(a'|s')), eq. (2). Shapes: [B], [B], [N, B], [B]."""
    soft_value = next_q_backup - alpha * next_log_prob
    return rewards + gamma * (1.0 - terminations) * soft_value


def critic_loss(q_values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """eq. (3): sum over critics of the mean squared TD error. q_values, target: [N, B]."""
    return (q_values - target).pow(2).mean(dim=1).sum()


def reduce_q_for_actor(q_values: torch.Tensor, backup_type: str) -> torch.Tensor:
    """Q seen by the actor: min over critics, or the mean for the mean / redq backups. [N, B] -> [B]."""
    return q_values.mean(dim=0) if backup_type in ("mean", "redq") else q_values.min(dim=0).values


def actor_loss(log_prob: torch.Tensor, q_value: torch.Tensor, alpha: torch.Tensor | float,
               gradient_type: str) -> torch.Tensor:
    """eq. (4) for reparametrize (gradient flows through q_value and log_prob), eq. (5) for
    reinforce (q_value must come from a detached action; the gradient is the score function)."""
    if gradient_type == "reparametrize":
        return (alpha * log_prob - q_value).mean()
    advantage = (q_value - alpha * log_prob).detach()  # sg(Q - alpha log pi)
    return -(log_prob * advantage).mean()


def temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """eq. (6): raises alpha when the policy's entropy (-log pi) is below the target."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


@torch.no_grad()
def update_target(source: nn.Module, target: nn.Module, tau: float) -> None:
    """theta' <- (1 - tau) theta' + tau theta, eq. (7); tau = 1 is a hard copy.
    One multi-tensor lerp over all parameters instead of a Python loop of small ops."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


# =============================================================================================
# Replay buffer
# =============================================================================================
class ReplayBuffer:
    """A ring buffer of preallocated tensors on the training device.

    `next_obs` is stored explicitly (rather than as obs[i+1]) because a truncated episode's final
    observation differs from the next episode's first one. Sampling uses its own seeded
    torch.Generator, so the batches depend only on the seed, and its state goes into checkpoints.
    """

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, device: torch.device, seed: int):
        self.capacity, self.device = capacity, device
        self.obs = torch.zeros((capacity, obs_dim), dtype=torch.float32, device=device)
        self.next_obs = torch.zeros((capacity, obs_dim), dtype=torch.float32, device=device)
        self.actions = torch.zeros((capacity, action_dim), dtype=torch.float32, device=device)
        self.rewards = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.terminations = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.position, self.size = 0, 0
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def add(self, obs, next_obs, actions, rewards, terminations) -> None:
        """Add a batch of transitions (one per vectorized env); arrays of leading dim n_envs."""
        n = len(obs)
        index = (torch.arange(n) + self.position) % self.capacity
        index = index.to(self.device)
        for store, value in ((self.obs, obs), (self.next_obs, next_obs), (self.actions, actions),
                             (self.rewards, rewards), (self.terminations, terminations)):
            store[index] = torch.as_tensor(np.asarray(value), dtype=torch.float32).to(self.device)
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        index = torch.randint(0, self.size, (batch_size,), generator=self.generator, device=self.device)
        return {"obs": self.obs[index], "next_obs": self.next_obs[index], "actions": self.actions[index],
                "rewards": self.rewards[index], "terminations": self.terminations[index]}

    def state_dict(self) -> dict:
        # only the filled part is saved: a 1M-capacity buffer 5% full costs 5% of the disk
        filled = slice(0, self.size)
        return {"obs": self.obs[filled].cpu(), "next_obs": self.next_obs[filled].cpu(),
                "actions": self.actions[filled].cpu(), "rewards": self.rewards[filled].cpu(),
                "terminations": self.terminations[filled].cpu(), "position": self.position,
                "size": self.size, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        size = state["size"]
        for name in ("obs", "next_obs", "actions", "rewards", "terminations"):
            getattr(self, name)[:size] = state[name].to(self.device)
        self.position, self.size = state["position"], size
        self.generator.set_state(state["generator"])


# =============================================================================================
# TRY NOT TO MODIFY: outputs (logging, evaluation, checkpoints, signals)
# =============================================================================================
class RunLogger:
    """Writes every scalar to TensorBoard and to metrics.csv (long format: step, time, tag, value).

    With --track, wandb mirrors TensorBoard (sync_tensorboard, as in CleanRL).
    """

    def __init__(self, run_dir: str, resume_step: Optional[int]):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides TensorBoard events logged after the checkpoint we resume from
        self.writer = SummaryWriter(run_dir, purge_step=resume_step)
        self.metrics_path = os.path.join(run_dir, "metrics.csv")
        self.eval_path = os.path.join(run_dir, "eval.csv")
        for path, header in ((self.metrics_path, ["global_step", "wall_time", "metric", "value"]),
                             (self.eval_path, ["global_step", "policy", "mode", "mean_return", "std_return", "episodes"])):
            truncate_csv_after(path, header, resume_step)
        self.metrics_file = open(self.metrics_path, "a", newline="")
        self.metrics_csv = csv.writer(self.metrics_file)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        now = time.time()
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
            self.metrics_csv.writerow([step, f"{now:.3f}", tag, repr(float(value))])
        self.metrics_file.flush()

    def evaluation(self, step: int, policy: int, mode: str, returns: np.ndarray) -> None:
        with open(self.eval_path, "a", newline="") as f:
            csv.writer(f).writerow([step, policy, mode, repr(float(returns.mean())), repr(float(returns.std())), len(returns)])
        self.scalars(step, {f"eval/{mode}_return": float(returns.mean())})

    def close(self) -> None:
        self.writer.close()
        self.metrics_file.close()


def truncate_csv_after(path: str, header: list[str], last_step: Optional[int]) -> None:
    """Create `path` with its header, or on resume keep only rows with global_step <= last_step
    (rows written after the checkpoint would otherwise appear twice)."""
    if last_step is None or not os.path.exists(path):
        with open(path, "w", newline="") as f:
            csv.writer(f).writerow(header)
        return
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f)][1:]
    kept = [row for row in rows if row and int(row[0]) <= last_step]
    atomic_write_text(path, lambda f: csv.writer(f).writerows([header] + kept))


def atomic_write_text(path: str, write) -> None:
    """Write a text file through a temp file + rename, so readers never see half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: str, state: dict) -> None:
    """torch.save to a temp file, fsync, then os.replace: a crash or kill mid-write leaves the
    previous checkpoint intact (rename is atomic on POSIX)."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def resolve_checkpoint_path(resume: str) -> Optional[str]:
    """--resume accepts a run folder or a checkpoint file."""
    path = os.path.join(resume, "checkpoint.pt") if os.path.isdir(resume) else resume
    return path if os.path.isfile(path) else None


# the args that fix the shapes and meaning of what a checkpoint holds: resuming with other
# values would be a different run, so they must match
RESUME_MUST_MATCH = ("env_id", "num_envs", "buffer_size", "hidden_size", "num_layers", "num_critic_networks",
                     "state_dependent_std", "use_tanh", "use_entropy_bonus", "autotune", "actor_gradient_type",
                     "target_critic_backup_type", "seed")


def load_compatible_checkpoint(args: Args, device: torch.device) -> dict:
    """Load --resume's checkpoint and check it belongs to this algorithm and these args."""
    path = resolve_checkpoint_path(args.resume)
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # a truncated or foreign file
        raise ConfigError(f"--resume {args.resume}: cannot read {path} ({error})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("algorithm") != ALGORITHM:
        found = checkpoint.get("algorithm") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ConfigError(f"--resume {args.resume}: checkpoint is from '{found}', not {ALGORITHM}")
    saved = checkpoint["args"]
    differ = [f"{k} (checkpoint {saved[k]!r}, now {getattr(args, k)!r})" for k in RESUME_MUST_MATCH
              if saved.get(k) != getattr(args, k)]
    if differ:
        raise ConfigError(f"--resume {args.resume}: incompatible arguments: {', '.join(differ)}")
    checkpoint["path"] = path
    return checkpoint


class StopSignal:
    """Turns SIGINT/SIGTERM into a flag the training loop checks once per step, so the loop can
    finish the step, write a checkpoint and exit cleanly. A second signal is honoured at once."""

    def __init__(self):
        self.received: Optional[int] = None
        self.previous = {}

    def __enter__(self):
        if threading_is_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        if self.received is not None:  # impatient second Ctrl-C: restore and re-raise
            signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.received = signum
        print(f"\n{signal.Signals(signum).name} received: finishing this step and writing a checkpoint...",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@torch.no_grad()
def evaluate(actor: Actor, env: gym.Env, episodes: int, seed: int, deterministic: bool,
             device: torch.device, generator: torch.Generator) -> np.ndarray:
    """Returns of `episodes` episodes on the evaluation env, reset with seeds seed..seed+episodes-1
    so every evaluation starts from the same states. Stochastic actions use their own generator,
    so evaluating never changes the training run's random stream."""
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, total = False, 0.0
        while not done:
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0)
            if deterministic:
                action = actor.deterministic_action(obs_t)
            else:
                action = actor.sample(obs_t, generator=generator)[0]
            action = action.squeeze(0).cpu().numpy()
            obs, reward, terminated, truncated, _ = env.step(np.clip(action, env.action_space.low, env.action_space.high))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return np.asarray(returns)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rem = divmod(seconds, 3600)
    return f"{hours}h{rem // 60:02d}m" if hours else f"{rem // 60}m{rem % 60:02d}s"


def library_versions() -> dict[str, str]:
    """Versions recorded in args.json, so a result can be traced to its software."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": sys.version.split()[0]}
    for package in ("torch", "gymnasium", "mujoco", "numpy", "tyro"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def seed_everything(seed: int, torch_deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic


def rng_states() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def pick_device(want_cuda: bool) -> torch.device:
    if want_cuda and torch.cuda.is_available():
        return torch.device("cuda")
    if want_cuda:
        print("notice: --cuda was given but CUDA is not available; training on the CPU", file=sys.stderr)
    return torch.device("cpu")


# =============================================================================================
# ALGO LOGIC: the agent (networks + optimizers + one gradient step of each part)
# =============================================================================================
class SAC:
    """Actor, critics, target critics, temperature and their optimizers, with the update steps.

    The updates return loss tensors without calling `.item()`: reading a GPU value forces a host
    sync, so the training loop only converts them when it logs.
    """

    def __init__(self, args: Args, obs_dim: int, action_space: gym.spaces.Box, device: torch.device):
        self.args, self.device = args, device
        action_dim = int(np.prod(action_space.shape))
        self.actor = Actor(obs_dim, action_space.low, action_space.high, args.hidden_size, args.num_layers,
                           args.state_dependent_std, args.use_tanh, args.log_std_min, args.log_std_max).to(device)
        self.critics = CriticEnsemble(obs_dim, action_dim, args.hidden_size, args.num_layers,
                                      args.num_critic_networks).to(device)
        self.target_critics = CriticEnsemble(obs_dim, action_dim, args.hidden_size, args.num_layers,
                                             args.num_critic_networks).to(device)
        self.target_critics.load_state_dict(self.critics.state_dict())
        self.target_critics.requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.policy_lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critics.parameters(), lr=args.q_lr, fused=True)

        # temperature: alpha = exp(log_alpha) keeps alpha > 0; autotuning starts at alpha = 1
        self.target_entropy = -args.target_entropy_scale * action_dim
        initial_alpha = 1.0 if args.autotune else max(args.alpha, 1e-12)
        self.log_alpha = torch.tensor([math.log(initial_alpha)], device=device, requires_grad=args.autotune)
        # fused: one kernel per step for this single number, instead of the ~10 small operations
        # of Adam's default per-tensor loop on the CPU
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=args.q_lr, fused=True) if args.autotune else None
        self.critic_updates = 0
        # which target critics the redq backup uses is random: its own generator, checkpointed
        self.backup_generator = torch.Generator(device=device)
        self.backup_generator.manual_seed(args.seed + 7)

    @property
    def alpha(self) -> torch.Tensor:
        """The temperature used in eqs. (2) and (4); exactly 0 without the entropy bonus."""
        if not self.args.use_entropy_bonus:
            return torch.zeros((), device=self.device)
        return self.log_alpha.detach().exp().squeeze()

    def critic_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One gradient step of eq. (3) on the TD target (2), then the target update (7)."""
        args = self.args
        with torch.no_grad():
            next_actions, next_log_prob = self.actor.sample(batch["next_obs"])
            next_q = self.target_critics(batch["next_obs"], next_actions)
            backup = backup_target_q(next_q, args.target_critic_backup_type, args.redq_subset_size,
                                     self.backup_generator)
            target = td_target(batch["rewards"], batch["terminations"], backup, next_log_prob, self.alpha,
                               args.gamma)
        q_values = self.critics(batch["obs"], batch["actions"])
        loss = critic_loss(q_values, target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()

        self.critic_updates += 1
        if args.use_soft_target_update:
            update_target(self.critics, self.target_critics, args.tau)
        elif self.critic_updates % args.target_update_period == 0:
            update_target(self.critics, self.target_critics, 1.0)
        # the per-critic losses and mean Q are only logged every log_every steps: `loss_scalars`
        # derives them from these two tensors then, instead of every update
        return {"critic_loss": loss.detach(), "q_values": q_values.detach(), "td_target": target}

    def actor_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One gradient step of eq. (4) or (5), then of the temperature loss (6)."""
        args = self.args
        # num_actor_samples actions per state: repeat each state that many times
        obs = batch["obs"]
        if args.num_actor_samples > 1:
            obs = obs.repeat_interleave(args.num_actor_samples, dim=0)
        reparametrize = args.actor_gradient_type == "reparametrize"
        actions, log_prob = self.actor.sample(obs, reparametrize=reparametrize)
        # the critics are constants here: switching their grads off saves the backward pass into them
        self.critics.requires_grad_(False)
        with torch.set_grad_enabled(reparametrize):
            q_value = reduce_q_for_actor(self.critics(obs, actions), args.target_critic_backup_type)
        self.critics.requires_grad_(True)
        loss = actor_loss(log_prob, q_value, self.alpha, args.actor_gradient_type)
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_optimizer.step()

        out = {"actor_loss": loss.detach(), "log_prob": log_prob.detach()}  # entropy: computed when logged
        if self.alpha_optimizer is not None and args.use_entropy_bonus:
            alpha_loss = temperature_loss(self.log_alpha, log_prob, self.target_entropy)
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()
            out["alpha_loss"] = alpha_loss.detach()
        return out

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critics": self.critics.state_dict(),
                "target_critics": self.target_critics.state_dict(),
                "actor_optimizer": self.actor_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(),
                "log_alpha": self.log_alpha.detach().clone(),
                "alpha_optimizer": self.alpha_optimizer.state_dict() if self.alpha_optimizer else None,
                "critic_updates": self.critic_updates, "backup_generator": self.backup_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critics.load_state_dict(state["critics"])
        self.target_critics.load_state_dict(state["target_critics"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        if self.alpha_optimizer is not None:
            self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.critic_updates = state["critic_updates"]
        self.backup_generator.set_state(state["backup_generator"])


def crossed(step_before: int, step_after: int, every: int) -> bool:
    """True when a multiple of `every` lies in (step_before, step_after]: with N envs the step
    counter moves N at a time and may jump over the exact multiple."""
    return every > 0 and step_after // every > step_before // every


# =============================================================================================
# The training run
# =============================================================================================
def train(args: Args) -> dict:
    """Run (or resume) one SAC training run; return its final figures (also in summary.json)."""
    action_space = validate_args(args)  # ConfigError before any work
    device = pick_device(args.cuda)
    checkpoint = load_compatible_checkpoint(args, device) if args.resume else None
    if args.capture_video and "DISPLAY" not in os.environ:
        os.environ.setdefault("MUJOCO_GL", "osmesa")  # headless MuJoCo rendering

    # ---- the run folder: new, or the one the checkpoint lives in --------------------------
    if checkpoint is None:
        run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
        run_dir = os.path.join(args.output_dir, run_name)
        os.makedirs(run_dir, exist_ok=False)
    else:
        run_dir = os.path.dirname(os.path.abspath(checkpoint["path"]))
        run_name = os.path.basename(run_dir)
    args_record = {"algorithm": ALGORITHM, "args": asdict(args), "command": sys.argv, "versions": library_versions()}
    atomic_write_text(os.path.join(run_dir, "args.json"), lambda f: json.dump(args_record, f, indent=2))

    seed_everything(args.seed, args.torch_deterministic)

    # ---- environments: training (vectorized) and evaluation (separate, separately seeded) --
    # SAME_STEP autoreset: when an episode ends, step() returns the next episode's first obs and
    # puts the last obs of the ended episode in infos["final_obs"] -- needed to bootstrap a
    # truncated episode from its true final state.
    envs = gym.vector.SyncVectorEnv([make_env(args.env_id, args.seed + i) for i in range(args.num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    video_folder = os.path.join(run_dir, "videos") if args.capture_video else None
    eval_env = make_env(args.env_id, args.seed + 100_000, video_folder)()
    if video_folder is not None:  # film the first (deterministic) episode of every evaluation round
        eval_env.env.episode_trigger = lambda episode: episode % (2 * args.eval_episodes) == 0
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    action_dim = int(np.prod(action_space.shape))

    agent = SAC(args, obs_dim, action_space, device)
    buffer = ReplayBuffer(args.buffer_size, obs_dim, action_dim, device, seed=args.seed)
    eval_generator = torch.Generator(device=device)
    eval_generator.manual_seed(args.seed + 1)

    global_step, train_time, train_steps, episodes, last_return = 0, 0.0, 0, 0, float("nan")
    if checkpoint is not None:
        agent.load_state_dict(checkpoint["agent"])
        buffer.load_state_dict(checkpoint["replay_buffer"])
        set_rng_states(checkpoint["rng"])
        eval_generator.set_state(checkpoint["eval_generator"])
        global_step, train_time, train_steps = checkpoint["global_step"], checkpoint["train_time"], checkpoint["train_steps"]
        episodes, last_return = checkpoint["episodes"], checkpoint["last_return"]
        print(f"resumed {run_name} at step {global_step} from {checkpoint['path']}")
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    last_good_checkpoint_step = global_step if checkpoint is not None else None

    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=asdict(args), name=run_name, id=run_name, resume="allow", save_code=True,
                   dir=run_dir)  # wandb/ inside the run folder, not the working directory
    logger = RunLogger(run_dir, resume_step=global_step if checkpoint is not None else None)

    def checkpoint_state() -> dict:
        return {"algorithm": ALGORITHM, "args": asdict(args), "global_step": global_step,
                "train_time": train_time, "train_steps": train_steps, "episodes": episodes,
                "last_return": last_return, "agent": agent.state_dict(),
                "replay_buffer": buffer.state_dict(), "rng": rng_states(),
                "eval_generator": eval_generator.get_state()}

    def run_evaluation(step: int) -> list[dict]:
        results = []
        for mode in ("deterministic", "stochastic"):
            returns = evaluate(agent.actor, eval_env, args.eval_episodes, args.seed + 100_000,
                               mode == "deterministic", device, eval_generator)
            logger.evaluation(step, 0, mode, returns)
            results.append({"policy": 0, "mode": mode, "mean_return": float(returns.mean()),
                            "std_return": float(returns.std()), "episodes": len(returns)})
        print(f"eval at step {step}: deterministic {results[0]['mean_return']:.2f} +- {results[0]['std_return']:.2f}"
              f" | stochastic {results[1]['mean_return']:.2f} +- {results[1]['std_return']:.2f}", flush=True)
        return results

    # a non-finite loss flag accumulated on the device; read only at log/checkpoint time
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    losses: dict[str, torch.Tensor] = {}

    def stop_if_nonfinite() -> None:
        if bool(nonfinite):
            where = (f"{checkpoint_path} (step {last_good_checkpoint_step})" if last_good_checkpoint_step is not None
                     else "none was written yet")
            raise NonFiniteLossError(f"a loss became NaN or infinite by step {global_step}; stopped without "
                                     f"saving the broken networks. Last good checkpoint: {where}")

    start_time, start_step = time.time(), global_step
    low, high = action_space.low, action_space.high
    if checkpoint is None:
        obs, _ = envs.reset(seed=[args.seed + i for i in range(args.num_envs)])
    else:  # the env state is not in the checkpoint: the interrupted episode restarts
        obs, _ = envs.reset(seed=[args.seed + global_step + i for i in range(args.num_envs)])
    final_eval: list[dict] = []
    interrupted = False
    try:
        with StopSignal() as stop:
            while global_step < args.total_timesteps:
                if stop.received is not None:
                    interrupted = True
                    break
                iteration_start = time.time()
                # ---- ALGO LOGIC: act (uniform random first, then the stochastic policy) ----
                if global_step < args.random_steps:
                    actions = np.random.uniform(low, high, size=(args.num_envs, action_dim)).astype(np.float32)
                else:
                    with torch.no_grad():
                        actions = agent.actor.act(torch.as_tensor(obs, dtype=torch.float32, device=device))
                    actions = np.clip(actions.cpu().numpy(), low, high)  # a no-op with tanh; needed without
                next_obs, rewards, terminations, truncations, infos = envs.step(actions)

                # ---- TRY NOT TO MODIFY: record finished episodes --------------------------------
                finished_stats = []
                if "final_info" in infos:
                    stats = infos["final_info"]["episode"]
                    for i in np.flatnonzero(infos["final_info"]["_episode"]):
                        finished_stats.append((float(stats["r"][i]), int(stats["l"][i])))

                # the true next state: on an episode end the vector env already reset, so take the
                # final observation; terminations (not truncations) stop the bootstrap in eq. (2)
                real_next_obs = next_obs.copy()
                if "_final_obs" in infos:
                    for i in np.flatnonzero(infos["_final_obs"]):
                        real_next_obs[i] = infos["final_obs"][i]
                buffer.add(obs, real_next_obs, actions, rewards, terminations)
                obs = next_obs
                step_before, global_step = global_step, global_step + args.num_envs

                # ---- ALGO LOGIC: training ----------------------------------------------------
                if global_step > args.learning_starts:
                    for _ in range(args.num_critic_updates):
                        batch = buffer.sample(args.batch_size)
                        critic_out = agent.critic_step(batch)
                    actor_out = agent.actor_step(batch)
                    losses = {**critic_out, **actor_out}
                    nonfinite |= ~torch.isfinite(critic_out["critic_loss"]) | ~torch.isfinite(actor_out["actor_loss"])
                    train_time += time.time() - iteration_start
                    train_steps += args.num_envs

                # ---- TRY NOT TO MODIFY: logging, evaluation, checkpoints ------------------------
                for episode_return, episode_length in finished_stats:
                    episodes, last_return = episodes + 1, episode_return
                    logger.scalars(global_step, {"charts/episodic_return": episode_return,
                                                 "charts/episodic_length": episode_length})
                if crossed(step_before, global_step, args.log_every):
                    stop_if_nonfinite()
                    sps = (global_step - start_step) / max(time.time() - start_time, 1e-9)
                    scalars = {"charts/SPS": sps}
                    if losses:
                        scalars.update(loss_scalars(losses, agent))
                    logger.scalars(global_step, scalars)
                    eta = (args.total_timesteps - global_step) / max(sps, 1e-9)
                    print(f"step {global_step}/{args.total_timesteps} | SPS {sps:.0f} | last return "
                          f"{last_return:.2f} | episodes {episodes} | ETA {format_duration(eta)}", flush=True)
                if crossed(step_before, global_step, args.eval_every) and global_step < args.total_timesteps:
                    stop_if_nonfinite()
                    run_evaluation(global_step)
                if crossed(step_before, global_step, args.checkpoint_every) and global_step < args.total_timesteps:
                    stop_if_nonfinite()
                    save_checkpoint(checkpoint_path, checkpoint_state())
                    last_good_checkpoint_step = global_step

            stop_if_nonfinite()
            save_checkpoint(checkpoint_path, checkpoint_state())
            last_good_checkpoint_step = global_step
            if interrupted:
                command = " ".join([os.path.basename(sys.argv[0]) or f"{ALGORITHM}.py"] +
                                   strip_resume_flag(sys.argv[1:]) + ["--resume", run_dir])
                print(f"stopped at step {global_step}; checkpoint written to {checkpoint_path}.\n"
                      f"Resume with: python {command}", file=sys.stderr, flush=True)
            else:
                final_eval = run_evaluation(global_step)
    finally:
        logger.close()
        envs.close()
        eval_env.close()
        if args.track:
            import wandb

            wandb.finish()

    wall_time = time.time() - start_time
    summary = {"algorithm": ALGORITHM, "env_id": args.env_id, "seed": args.seed, "global_step": global_step,
               "total_timesteps": args.total_timesteps,
               "sps": (global_step - start_step) / max(wall_time, 1e-9),
               "train_sps": train_steps / train_time if train_time > 0 else float("nan"),
               "wall_time_s": wall_time, "final_eval": final_eval}
    if not interrupted:
        atomic_write_text(os.path.join(run_dir, "summary.json"), lambda f: json.dump(summary, f, indent=2))
    return {**summary, "run_dir": run_dir, "interrupted": interrupted}


def loss_scalars(losses: dict[str, torch.Tensor], agent: SAC) -> dict[str, float]:
    """The CleanRL-named scalars of the latest update (the only place losses leave the device)."""
    q_values, target = losses["q_values"], losses["td_target"]
    per_critic = (q_values - target).pow(2).mean(dim=1).tolist()
    q_means = q_values.mean(dim=1).tolist()
    scalars = {f"losses/qf{i + 1}_loss": value for i, value in enumerate(per_critic)}
    scalars.update({f"losses/qf{i + 1}_values": value for i, value in enumerate(q_means)})
    scalars["losses/qf_loss"] = float(losses["critic_loss"]) / len(per_critic)
    scalars["losses/actor_loss"] = float(losses["actor_loss"])
    scalars["losses/alpha"] = float(agent.alpha)
    scalars["losses/entropy"] = -float(losses["log_prob"].mean())
    if "alpha_loss" in losses:
        scalars["losses/alpha_loss"] = float(losses["alpha_loss"])
    return scalars


def strip_resume_flag(argv: list[str]) -> list[str]:
    """argv without an existing --resume and its value (the message adds the right one)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--resume":
            skip = True
        elif not item.startswith("--resume="):
            out.append(item)
    return out


def run_cli(args_type: type, train_function, program: str, description: str) -> None:
    """Parse the command line into `args_type`, train, and exit with the code every script of this
    project uses: 0 done, 1 stopped on a non-finite loss, 2 bad input (one `error:` line, before
    any work), 130 interrupted by Ctrl-C / SIGTERM (after writing the checkpoint)."""
    args = tyro.cli(args_type, description=description)
    try:
        result = train_function(args)
    except ConfigError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteLossError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        sys.exit(1)
    sys.exit(130 if result["interrupted"] else 0)


def main() -> None:
    run_cli(Args, train, f"{ALGORITHM}.py", __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
