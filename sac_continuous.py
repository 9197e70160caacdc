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
(actor_gradient_type, num_critic_networks, target_critic_backup_type, ...); the defaults where
that source is silent and the metric names follow CleanRL's sac_continuous_action.py.

Run it:
    python sac_continuous.py --env-id Hopper-v4 --total-timesteps 1000000
    python sac_continuous.py --env-id Pendulum-v1 --total-timesteps 10000 --eval-every 2000
    python sac_continuous.py --resume runs/Hopper-v4__sac_continuous__1__1700000000   # go on
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
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
# A flag with a second name (the source's) is declared as tyro.conf.arg(name=<second name>,
# aliases=(<flag>,)): tyro lists aliases first, so --help then shows the flag before its alias.
@dataclass
class Args:
    # ---- environment and budget ---------------------------------------------------------------
    env_id: str = "Hopper-v4"
    """the gymnasium environment id (any env with a Box action space)"""
    seed: int = 1
    """seed of the experiment (torch, numpy, python, replay sampling and the environments)"""
    total_timesteps: int = 1_000_000
    """total environment steps (summed over the vectorized environments)"""
    num_envs: int = 1
    """parallel environments for data collection (one training iteration per vector step, as in
    CleanRL and SB3: with N envs the update-to-data ratio is --num-critic-updates / N)"""
    # ---- algorithm: replay and schedule ---------------------------------------------------
    buffer_size: int = 1_000_000
    """replay buffer capacity (transitions)"""
    batch_size: int = 256
    """minibatch size of every gradient step"""
    gamma: float = 0.99
    """discount factor"""
    learning_starts: Annotated[int, tyro.conf.arg(name="training-starts", aliases=("--learning-starts",))] = 5_000
    """env steps before the first gradient update (the course codebase's `training_starts`)"""
    random_steps: int = 5_000
    """env steps taken with uniformly random actions before the actor acts (CleanRL ties this to
    --learning-starts; the course codebase keeps them separate)"""

    # ---- algorithm: critics ---------------------------------------------------------------
    num_critic_networks: int = 2
    """N critics: 1, 2 (clipped double-Q) or more (an ensemble)"""
    target_critic_backup_type: Literal["min", "mean", "doubleq", "redq"] = "min"
    """how the N target critics combine in the TD target, eq. (2): min (clipped double-Q), mean,
    doubleq (critic i bootstraps from target critic i-1; the swap when N=2), redq (min over a
    random subset of --redq-subset-size target critics, redrawn every update). The actor uses the
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
    tau: Annotated[float, tyro.conf.arg(name="soft-target-update-rate", aliases=("--tau",))] = 0.005
    """Polyak rate of the soft target update, eq. (7) (course codebase: soft_target_update_rate)"""
    target_update_period: int = 1000
    """with --no-use-soft-target-update: copy critics to targets every this many critic updates"""

    # ---- algorithm: actor ------------------------------------------------------------------
    actor_gradient_type: Literal["reparametrize", "reinforce"] = "reparametrize"
    """reparametrize: pathwise gradient through a~ = rsample, eq. (4); reinforce: likelihood-ratio
    gradient with sampled actions, eq. (5) (unbiased but noisy: use many --num-actor-samples)"""
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
    alpha: Annotated[float, tyro.conf.arg(name="temperature", aliases=("--alpha",))] = 0.2
    """the fixed entropy temperature with --no-autotune (course codebase: temperature). With
    --autotune (the default) this value is NOT used: alpha starts at 1 and follows eq. (6), as in
    CleanRL"""
    target_entropy_scale: float = 1.0
    """target entropy = -(this scale) * dim(A), eq. (6)"""

    # ---- run, evaluation and outputs: the flags every script shares (RunArgs, Appendix A) ----
    run: tyro.conf.OmitArgPrefixes[RunArgs] = field(default_factory=lambda: RunArgs())
    """output folder, --resume and --evaluate, evaluation / checkpoint / log schedule, device, tracking"""


# the args that fix the shapes and meaning of what a checkpoint holds: resuming with other values
# would be a different run, so --resume insists they match
RESUME_MUST_MATCH = ("env_id", "num_envs", "buffer_size", "hidden_size", "num_layers", "num_critic_networks",
                     "state_dependent_std", "use_tanh", "use_entropy_bonus", "autotune", "actor_gradient_type",
                     "target_critic_backup_type", "seed")
PER_ACTOR_EVALUATION = False  # one policy: eval.csv's policy column is always 0
# --config: the course codebase's key names (sac_config / its experiment YAML files) -> this
# script's field, with the settings a key implies. The course's temperature is a FIXED alpha, so a
# file that sets it also turns autotuning off (unless the file says `autotune: true`).
CONFIG_BASE = "sac"  # a course file's `base_config: sac`
CONFIG_KEYS = {"env_name": ("env_id", {}), "total_steps": ("total_timesteps", {}), "discount": ("gamma", {}),
               "training_starts": ("learning_starts", {}), "soft_target_update_rate": ("tau", {}),
               "temperature": ("alpha", {"autotune": False}), "actor_learning_rate": ("policy_lr", {}),
               "critic_learning_rate": ("q_lr", {})}


def validate_args(args: Args) -> gym.spaces.Box:
    """Check every argument and the environment before any work; return the env's action space.
    Raises ConfigError (Appendix A) with a one-line message naming what is wrong."""
    for name in ["num_critic_networks", "num_critic_updates", "num_actor_samples", "target_update_period"]:
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
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
    return validate_common_args(args)  # sizes, schedule, gamma, tau, --resume, the env (Appendix A)


# =============================================================================================
# Environment
# =============================================================================================
def make_env(env_id: str, seed: int, video_folder: Optional[str] = None):
    """A thunk for gym.vector: the env with episode statistics (and optional video), seeded.

    The env is seeded at its first reset by the vector env (`envs.reset(seed=...)`); the action
    space is seeded here so anything sampling from it is reproducible too.
    """

    def thunk():
        if video_folder is None:
            env = gym.make(env_id)
        else:  # films every episode; the evaluation narrows it to the first per policy
            env = gym.wrappers.RecordVideo(gym.make(env_id, render_mode="rgb_array"), video_folder,
                                           episode_trigger=lambda ep: True, disable_logger=True)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env.action_space.seed(seed)
        return env

    return thunk


def true_next_obs(next_obs: np.ndarray, infos: dict) -> np.ndarray:
    """The state each env really reached. With SAME_STEP autoreset an env whose episode just ended
    has already been reset: `next_obs` holds the NEW episode's first observation and the last one
    is in infos["final_obs"]. A truncated episode (time limit) must bootstrap from that last state,
    eq. (2); a terminated one does not bootstrap at all (d = 1)."""
    real_next_obs = next_obs.copy()
    if "_final_obs" in infos:
        for i in np.flatnonzero(infos["_final_obs"]):
            real_next_obs[i] = infos["final_obs"][i]
    return real_next_obs


# =============================================================================================
# Networks (the policy of eq. (1) and the critics)
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

    def log_prob_from_noise(self, z: torch.Tensor, log_std: torch.Tensor,
                            tanh_u: Optional[torch.Tensor]) -> torch.Tensor:
        """log pi(a|s), eq. (1), summed over action dimensions -> [B], given the standardised
        z = (u - mu) / sigma and tanh(u) (which `sample` already has)."""
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
        return action, self.log_prob_from_noise(z, log_std, tanh_u)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A stochastic action for the env, without log pi (the course codebase's `get_action`).
        Draws the same noise as `sample`, so it gives the same action from the same random stream."""
        mean, log_std = self.distribution_params(obs)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return self.squash(mean + log_std.exp() * noise)

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The evaluation action: squash(mu(s))."""
        return self.squash(self.distribution_params(obs)[0])


# =============================================================================================
# The equations: one small function each (the number is the docstring's)
# =============================================================================================
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
    Fast path: one multi-tensor lerp over all parameters; the plain version is
    `for t, s in zip(target.parameters(), source.parameters()): t.lerp_(s, tau)` (same numbers)."""
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
        if not all(np.isfinite(value).all() for value in (obs, next_obs, rewards)):  # so never checkpointed
            raise NonFiniteDataError("the environment returned a NaN or infinite observation or reward")
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


# =============================================================================================
# The agent: networks, optimizers, one method per update part
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
        # fast path: fused=True runs Adam's step for this single number as one kernel instead of
        # ~10 small operations (plain: torch.optim.Adam([self.log_alpha], lr=args.q_lr))
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

    @property
    def policies(self) -> list[Actor]:
        """The policies to evaluate (Appendix A): the one actor."""
        return [self.actor]

    def critic_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One gradient step of eq. (3) on the TD target (2) (the course codebase's `update_critic`)."""
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
        # the per-critic losses and mean Q are only logged every log_every steps: `loss_scalars`
        # derives them from these two tensors then, instead of every update
        return {"critic_loss": loss.detach(), "q_values": q_values.detach(), "td_target": target}

    def target_update(self) -> None:
        """eq. (7) after every critic step: a Polyak step, or a hard copy every period."""
        self.critic_updates += 1
        if self.args.use_soft_target_update:
            update_target(self.critics, self.target_critics, self.args.tau)
        elif self.critic_updates % self.args.target_update_period == 0:
            update_target(self.critics, self.target_critics, 1.0)

    def actor_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One gradient step of eq. (4) or (5) (the course codebase's `update_actor`)."""
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

        return {"actor_loss": loss.detach(), "log_prob": log_prob.detach()}  # entropy: computed when logged

    def temperature_step(self, log_prob: torch.Tensor) -> dict[str, torch.Tensor]:
        """One gradient step of eq. (6) on the actor step's log pi (only with --autotune)."""
        if self.alpha_optimizer is None or not self.args.use_entropy_bonus:
            return {}
        alpha_loss = temperature_loss(self.log_alpha, log_prob, self.target_entropy)
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optimizer.step()
        return {"alpha_loss": alpha_loss.detach()}

    # what a checkpoint keeps of the agent, restored in this order (Appendix A: agent_state)
    CHECKPOINT_PARTS = ("actor", "critics", "target_critics", "actor_optimizer", "critic_optimizer",
                        "log_alpha", "alpha_optimizer", "critic_updates", "backup_generator")
    # the update methods --compile compiles as they are (Appendix A: accelerate_updates)
    COMPILED_STEPS = ("critic_step", "actor_step", "temperature_step")


Agent = SAC  # the agent class by the name Appendix A uses (--evaluate builds one)


# =============================================================================================
# The training loop
# =============================================================================================
def train(args: Args) -> dict:
    """Run (or resume) one SAC training run; return its final figures (also in summary.json)."""
    action_space = validate_args(args)  # bad input: one `error:` line before any work
    device = pick_device(args.run.cuda)
    checkpoint = read_resume_checkpoint(args)  # --resume's, read as data and checked (None: a new run)
    seed_everything(args.seed, args.run.torch_deterministic)
    # SAME_STEP autoreset: an ended episode's last observation comes back in infos["final_obs"]
    envs = gym.vector.SyncVectorEnv([make_env(args.env_id, args.seed + i) for i in range(args.num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    action_dim = int(np.prod(action_space.shape))
    low, high = action_space.low, action_space.high
    agent = SAC(args, obs_dim, action_space, device)
    buffer = ReplayBuffer(args.buffer_size, obs_dim, action_dim, device, seed=args.seed)
    # restore the checkpoint or create the run folder; args.json, the logs, the evaluation env
    run, progress = open_run_folder(args, checkpoint, agent, buffer, device)
    # a resumed run restarts its interrupted episode (the env state is not in the checkpoint)
    obs, _ = envs.reset(seed=[args.seed + progress.global_step + i for i in range(args.num_envs)])
    losses, nonfinite = {}, torch.zeros((), dtype=torch.bool, device=device)  # NaN/inf seen in a loss

    with training_session(run, progress, envs) as stop:  # Ctrl-C / SIGTERM: finish the step, checkpoint
        while progress.global_step < args.total_timesteps and stop.received is None:
            iteration_start = time.time()
            # 1. act: uniformly random actions first, then the stochastic policy
            if progress.global_step < args.random_steps:
                actions = np.random.uniform(low, high, size=(args.num_envs, action_dim)).astype(np.float32)
            else:
                actions = agent.actor.act(torch.as_tensor(obs, dtype=torch.float32, device=device))
                actions = np.clip(actions.cpu().numpy(), low, high)  # float32 rounding at the bounds; mu without tanh

            # 2. step the environments; 3. store the transition with the TRUE next state and
            # d = termination (a truncated episode still bootstraps, eq. (2))
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            buffer.add(obs, true_next_obs(next_obs, infos), actions, rewards, terminations)
            obs = next_obs
            step_before = progress.global_step
            progress.global_step += args.num_envs
            for episode_return, episode_length in finished_episodes(infos):
                progress.episodes, progress.last_return = progress.episodes + 1, episode_return
                run.logger.scalars(progress.global_step, {"charts/episodic_return": episode_return,
                                                          "charts/episodic_length": episode_length})

            # 4. update: critics (eqs. 2-3) and targets (7) num_critic_updates times, then the
            # actor (4 or 5) and the temperature (6) once, on the last critic batch
            if progress.global_step > args.learning_starts:
                for _ in range(args.num_critic_updates):
                    batch = buffer.sample(args.batch_size)
                    losses = agent.critic_step(batch)
                    agent.target_update()
                losses |= agent.actor_step(batch)
                losses |= agent.temperature_step(losses["log_prob"])
                nonfinite |= any_nonfinite(losses)
                progress.train_time += time.time() - iteration_start  # train SPS: steps that updated
                progress.train_steps += args.num_envs

            # 5. log, evaluate and checkpoint when the step counter crosses a multiple of their period
            step = progress.global_step
            if crossed(step_before, step, args.run.log_every):
                log_progress(run, progress, loss_scalars(losses, agent) if losses else {}, nonfinite)
            if crossed(step_before, step, args.run.eval_every) and step < args.total_timesteps:
                stop_if_nonfinite(run, progress, nonfinite)
                evaluate_policies(run, agent, step)
            if crossed(step_before, step, args.run.checkpoint_every) and step < args.total_timesteps:
                save_run_checkpoint(run, progress, agent, buffer, nonfinite)

        save_run_checkpoint(run, progress, agent, buffer, nonfinite)  # the final checkpoint
        interrupted = progress.global_step < args.total_timesteps
        final_eval = [] if interrupted else evaluate_policies(run, agent, progress.global_step)
    return finish_run(run, progress, final_eval, interrupted)  # summary.json, or the command to resume


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


# =============================================================================================
# APPENDIX A: run infrastructure, identical in all three scripts. You can stop reading here.
# =============================================================================================
# Everything below is bookkeeping around the algorithm above: argument checks every script
# shares, the run folder and its files (args.json, metrics.csv, eval.csv, TensorBoard, summary),
# checkpoints and --resume, Ctrl-C, evaluation, seeding, the device, the progress line and the
# command line. These lines are byte-identical in sac_continuous.py, gmm_density_matching.py and
# posac_jko.py (tests/test_layout.py checks it; `python tools/sync_appendix.py` copies this
# appendix from sac_continuous.py into the other two), so a fix lands in all three at once.
# What only --capture-video and --config need is in run_extras.py, imported only when one of
# them is given (see run_extras below).
#
# What it takes from Part 1, by name: ALGORITHM, Args (its `run` field holds RunArgs), RESUME_MUST_MATCH,
# PER_ACTOR_EVALUATION, CONFIG_KEYS and CONFIG_BASE (--config), validate_args, make_env, train,
# and `Agent`, the agent class, built as Agent(args, obs_dim, action_space, device), with
# `policies` (the actors to evaluate), CHECKPOINT_PARTS (its attributes a checkpoint keeps) and
# COMPILED_STEPS (its update methods --compile compiles).
# train() calls the run functions below in order: read_resume_checkpoint, open_run_folder,
# training_session, finished_episodes, any_nonfinite, crossed, log_progress, evaluate_policies,
# save_run_checkpoint, finish_run.
import contextlib  # noqa: E402
import csv  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import reprlib  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
import threading  # noqa: E402
import typing  # noqa: E402
import torch.utils._python_dispatch  # noqa: E402  (AllocationBudget)
import zipfile  # noqa: E402
from dataclasses import asdict, fields  # noqa: E402

# checkpoint layout version: 2 = plain data only (tensors, dicts, lists, numbers, strings), loaded
# with torch.load(weights_only=True). Version 1 pickled NumPy's random state and cannot be loaded
# that way.
CHECKPOINT_FORMAT = 2


class ConfigError(ValueError):
    """Bad input: reported as one `error:` line (exit code 2) before any work starts."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite: the run stops, the last good checkpoint stays on disk."""


class NonFiniteDataError(NonFiniteLossError):
    """The environment returned a NaN or infinite observation or reward (raised by the replay
    buffer before storing it, so no checkpoint ever holds it; training_session adds the step)."""


# ---- the flags every script shares (Args.run) and the checks every script makes -----------
@dataclass
class RunArgs:
    """The run's flags, the same in every script: --help lists them as their own group after the
    algorithm's (tyro.conf.OmitArgPrefixes keeps them --output-dir, not --run.output-dir)."""
    exp_name: str = ALGORITHM
    """name of this experiment; the run folder is <env id>__<exp name>__<seed>__<unix time>"""
    torch_deterministic: bool = True
    """sets `torch.backends.cudnn.deterministic`; on CPU results are bit-identical for a seed anyway"""
    cuda: bool = False
    """train on the GPU if one is available (falls back to the CPU with a notice otherwise)"""
    compile: bool = False
    """torch.compile the update steps; on a GPU add --cudagraphs (measured speed-ups: benchmark/README.md)"""
    cudagraphs: bool = False
    """replay the compiled update steps as CUDA graphs (needs --cuda --compile)"""
    track: bool = False
    """mirror the TensorBoard metrics to Weights & Biases"""
    wandb_project_name: str = "continuous-control-references"
    """the wandb project name"""
    wandb_entity: Optional[str] = None
    """the wandb entity (team); None uses your default"""
    capture_video: bool = False
    """film each policy's first deterministic evaluation episode to `videos/` (needs moviepy; checked first)"""
    output_dir: str = "runs"
    """where run folders are created"""
    resume: Optional[str] = None
    """a run folder or its checkpoint.pt: continue that run exactly (the running episode restarts from a
    reset); the other args must describe the same run, but --total-timesteps may grow"""
    checkpoint_every: int = 50_000
    """write checkpoint.pt every this many env steps (and always at the end and on Ctrl-C)"""
    evaluate: Optional[str] = None
    """a run folder: play its latest checkpoint's policies instead of training"""
    config: Annotated[Optional[str], tyro.conf.arg(aliases=("-cfg",))] = None
    """a YAML file of defaults (the command line wins): this script's flag names, or the source's key names"""
    eval_every: int = 10_000
    """evaluate every this many env steps (0: only the final evaluation)"""
    eval_episodes: int = 10
    """episodes per evaluation and policy, played once with the deterministic action and once sampling"""
    log_every: int = 1000
    """write losses to TensorBoard/metrics.csv and print the progress line every this many steps"""


def flat_args(args: Args) -> dict:
    """Every flag's value by its field name, Args.run's beside the algorithm's: the flat layout that
    args.json, checkpoints and wandb's config keep."""
    values = asdict(args)
    return {**{name: value for name, value in values.items() if name != "run"}, **values["run"]}


def args_from_flat(values: dict) -> Args:
    """flat_args's inverse (a list becomes a tuple, as tyro gives it)."""
    values = {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}
    run_names = {run_field.name for run_field in fields(RunArgs)}
    return Args(**{name: value for name, value in values.items() if name not in run_names},
                run=RunArgs(**{name: value for name, value in values.items() if name in run_names}))


def flag_types() -> dict:
    """Every flag's field name -> its type hint, as flat as flat_args."""
    hints = {**typing.get_type_hints(Args, include_extras=True), **typing.get_type_hints(RunArgs, include_extras=True)}
    del hints["run"]
    return hints


COMMON_POSITIVE = ("total_timesteps", "num_envs", "buffer_size", "batch_size", "eval_episodes", "hidden_size",
                   "num_layers", "checkpoint_every", "log_every")


def validate_common_args(args: Args) -> gym.spaces.Box:
    """The checks every script makes (sizes, schedule, gamma, tau, --resume, the env); the
    algorithm's own checks are in Part 1's validate_args. Returns the env's action space."""
    values = flat_args(args)
    for name in COMMON_POSITIVE:
        if values[name] <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {values[name]}")
    for name in ("eval_every", "learning_starts", "random_steps"):
        if values[name] < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {values[name]}")
    for name, value in values.items():  # nan or inf in any float flag: refused now, not after hours of training
        for number in value if isinstance(value, (tuple, list)) else [value]:
            if isinstance(number, float) and not math.isfinite(number):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {number}")
    if not 0 <= args.seed < 2**32:  # np.random.seed's range
        raise ConfigError(f"--seed must lie in [0, 2**32 - 1], got {args.seed}")
    if args.batch_size > args.buffer_size:
        raise ConfigError(f"--batch-size ({args.batch_size}) cannot exceed --buffer-size ({args.buffer_size})")
    if not 0.0 <= args.gamma <= 1.0:
        raise ConfigError(f"--gamma must lie in [0, 1], got {args.gamma}")
    if not 0.0 < args.tau <= 1.0:
        raise ConfigError(f"--tau must lie in (0, 1], got {args.tau}")
    if args.run.resume is not None and resolve_checkpoint_path(args.run.resume) is None:
        raise ConfigError(f"--resume {args.run.resume}: no checkpoint.pt there")
    if args.run.cudagraphs and not (args.run.cuda and args.run.compile):
        raise ConfigError("--cudagraphs needs --cuda and --compile")
    if args.run.cudagraphs and not torch.cuda.is_available():
        raise ConfigError("--cudagraphs needs a CUDA GPU, and torch sees none on this machine")
    action_space = check_env(args.env_id)
    if args.run.capture_video:  # before any training: a video that cannot be written fails now, not at the end
        problem = run_extras("--capture-video").video_problem(args.env_id)
        if problem is not None:
            raise ConfigError(problem)
        run_extras("--capture-video").headless_rendering_env(os.environ)  # this run renders as the check did
    return action_space


def run_extras(flag: str):
    """run_extras.py, the module beside the scripts that only --capture-video and --config need
    (imported only then, as CleanRL imports cleanrl_utils only for --save-model): a script copied
    alone trains, resumes, compiles and evaluates without it."""
    try:
        import run_extras as extras
    except ModuleNotFoundError as error:
        if error.name != "run_extras":
            raise
        raise ConfigError(f"{flag} needs run_extras.py, which is not beside {ALGORITHM}.py: copy it there from "
                          "this project (the script alone trains, resumes and evaluates without it)") from None
    return extras


def check_env(env_id: str) -> gym.spaces.Box:
    """Make the env once to check it exists and has a bounded Box action space."""
    load_triton_before_opengl()  # this is the run's first env: MuJoCo may load OpenGL now
    try:
        env = gym.make(env_id)
    except gym.error.Error as error:  # NameNotFound, VersionNotFound, DependencyNotInstalled, ...
        raise ConfigError(f"unknown or unavailable environment '{env_id}': {error}") from None
    except Exception as error:  # e.g. MuJoCo's renderer refusing an unknown MUJOCO_GL at import
        raise ConfigError(f"cannot make environment '{env_id}': {one_line(error)}") from None
    space = env.action_space
    env.close()
    if not isinstance(space, gym.spaces.Box):
        raise ConfigError(f"{env_id} has a {type(space).__name__} action space ({space}); "
                          f"{ALGORITHM}.py needs a continuous gymnasium.spaces.Box")
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise ConfigError(f"{env_id} has an unbounded action space ({space}); the policy is "
                          "squashed into [low, high], so both bounds must be finite")
    return space


def load_triton_before_opengl() -> None:
    """Import Triton, if installed, before any MuJoCo env loads OpenGL. CUDA builds of torch
    install Triton, which carries its own copy of LLVM; Mesa's OSMesa (MUJOCO_GL=osmesa, what
    headless video capture uses) links the system's LLVM. Loading Triton's LLVM after Mesa's
    kills the process with a segmentation fault, no message, at the first `torch.optim.Adam(...)`
    (which imports Triton through torch._dynamo); loaded in the other order both work (seen with
    torch 2.14.1 and 2.15.0 and Debian 12's libosmesa6). Torch imports Triton during the run
    anyway, so importing it earlier costs nothing; without Triton (torch's CPU wheel) this does
    nothing."""
    if importlib.util.find_spec("triton") is None:
        return
    try:
        import triton  # noqa: F401
    except Exception:  # a broken Triton is torch's business: it then runs without it
        pass


# ---- one training run: the steps train() takes, as plain functions ---------------------------
@dataclass
class Progress:
    """The training loop's counters: train() advances them, every checkpoint saves them."""
    global_step: int = 0  # env steps taken, all envs together
    episodes: int = 0  # training episodes finished
    last_return: float = float("nan")  # the latest finished episode's return (the progress line)
    train_time: float = 0.0  # seconds spent in the steps that updated: train SPS = train_steps / train_time
    train_steps: int = 0


@dataclass
class RunFolder:
    """One run's folder and what is open in it (opened by open_run_folder, closed by training_session)."""
    args: Args
    path: str
    logger: "RunLogger"  # metrics.csv, eval.csv, TensorBoard (and the POSAC arrays)
    eval_env: gym.Env  # seeded apart from the training envs
    eval_generator: torch.Generator  # the stochastic evaluation's own random stream
    device: torch.device
    closers: list
    start_time: float  # for SPS: the wall clock and step at which this process started training
    start_step: int
    last_good_step: Optional[int]  # the step of the last checkpoint written or resumed from

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.path, "checkpoint.pt")


def agent_state(agent) -> dict:
    """The agent as a checkpoint keeps it: each of its CHECKPOINT_PARTS as plain data (a network's or
    an optimizer's state_dict, a list of them for POSAC's actors, a tensor, a random generator's
    state, a counter; None for an optimizer this run does not use)."""
    state = {}
    for name in agent.CHECKPOINT_PARTS:
        part = getattr(agent, name)
        if isinstance(part, nn.ModuleList):
            state[name] = [module.state_dict() for module in part]
        elif isinstance(part, (nn.Module, torch.optim.Optimizer)):
            state[name] = part.state_dict()
        elif isinstance(part, torch.Tensor):
            state[name] = part.detach().clone()
        elif isinstance(part, torch.Generator):
            state[name] = part.get_state()
        else:
            state[name] = part
    return state


def load_agent_state(agent, state: dict) -> None:
    """agent_state's inverse (the checkpoint was compared with agent_state(agent) before this)."""
    for name in agent.CHECKPOINT_PARTS:
        part, saved = getattr(agent, name), state[name]
        if isinstance(part, nn.ModuleList):
            for module, module_state in zip(part, saved, strict=True):
                module.load_state_dict(module_state)
        elif isinstance(part, (nn.Module, torch.optim.Optimizer)):
            part.load_state_dict(saved)
        elif isinstance(part, torch.Tensor):
            with torch.no_grad():
                part.copy_(saved)
        elif isinstance(part, torch.Generator):
            part.set_state(saved)
        elif part is not None:
            setattr(agent, name, saved)


BUFFER_FIELDS = ("obs", "next_obs", "actions", "rewards", "terminations")  # the replay buffer's arrays


def buffer_state(buffer) -> dict:
    """The replay buffer's filled rows (copied: torch.save writes a view's whole storage, all 1M
    rows), its write position and size, and its sampling generator's state."""
    return {**{name: getattr(buffer, name)[:buffer.size].to("cpu", copy=True) for name in BUFFER_FIELDS},
            "position": buffer.position, "size": buffer.size, "generator": buffer.generator.get_state()}


def load_buffer_state(buffer, state: dict) -> None:
    size = state["size"]
    for name in BUFFER_FIELDS:
        getattr(buffer, name)[:size] = state[name].to(buffer.device)
    buffer.position, buffer.size = state["position"], size
    buffer.generator.set_state(state["generator"])


def read_resume_checkpoint(args: Args) -> Optional[dict]:
    """--resume's checkpoint, read as data and checked against this command line (None for a new
    run). The folder to write (the checkpoint's, or --output-dir) must be writable. Changes nothing."""
    if not args.run.resume:
        problem = writable_folder_problem(args.run.output_dir)
        if problem is not None:
            raise ConfigError(f"--output-dir {args.run.output_dir}: {problem}")
        return None
    checkpoint = read_checkpoint(args.run.resume)
    check_resume_args(checkpoint, args)
    run_dir = os.path.dirname(os.path.abspath(checkpoint["path"]))
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"--resume {args.run.resume}: cannot write to {run_dir}")
    return checkpoint


def open_run_folder(args: Args, checkpoint: Optional[dict], agent, buffer, device: torch.device):
    """Restore --resume's checkpoint into the agent, the buffer and the random streams (a checkpoint
    that does not fit them is a ConfigError, raised before any file is touched) and reopen its
    folder, or create a new one. Then lock the folder, write args.json, open the logs and the
    evaluation env. Returns (RunFolder, Progress)."""
    eval_generator = torch.Generator(device=device)
    eval_generator.manual_seed(args.seed + 1)
    progress, previous_rows = Progress(), None
    if checkpoint is not None:
        run_dir = os.path.dirname(os.path.abspath(checkpoint["path"]))
        # a second --resume of this folder stops here; the lock lasts as long as this process
        folder_lock = lock_run_folder(run_dir, f"--resume {args.run.resume}")
        try:
            previous_rows = restore_checkpoint(args, checkpoint, agent, buffer, eval_generator, progress)
        except BaseException:
            os.close(folder_lock)
            raise
        print(f"resumed {os.path.basename(run_dir)} at step {progress.global_step} from {checkpoint['path']}")
    else:
        run_dir = new_run_folder(args.run.output_dir, f"{args.env_id}__{args.run.exp_name}__{args.seed}")
        folder_lock = lock_run_folder(run_dir, "--output-dir")
    accelerate_updates(agent, args)  # --compile / --cudagraphs; after the checkpoint is loaded
    args_record = {"algorithm": ALGORITHM, "args": flat_args(args), "command": sys.argv, "versions": library_versions()}
    atomic_write_text(os.path.join(run_dir, "args.json"), lambda f: json.dump(args_record, f, indent=2))

    video_folder = os.path.join(run_dir, "videos") if args.run.capture_video else None
    eval_env = make_env(args.env_id, args.seed + 100_000, video_folder)()
    if video_folder is not None:  # film the first (deterministic) episode of every policy's evaluation
        eval_env.env.episode_trigger = lambda episode: episode % (2 * args.run.eval_episodes) == 0
    closers = []
    if args.run.track:
        import wandb

        wandb.init(project=args.run.wandb_project_name, entity=args.run.wandb_entity, sync_tensorboard=True,
                   config=flat_args(args), name=os.path.basename(run_dir), id=os.path.basename(run_dir),
                   resume="allow", save_code=True, dir=run_dir)  # wandb/ inside the run folder
        closers.append(wandb.finish)
    resume_step = progress.global_step if checkpoint is not None else None
    logger = RunLogger(run_dir, resume_step, PER_ACTOR_EVALUATION, previous_rows)
    closers = [logger.close, eval_env.close] + closers + [lambda: os.close(folder_lock)]
    run = RunFolder(args, run_dir, logger, eval_env, eval_generator, device, closers, time.time(),
                    progress.global_step, resume_step)
    return run, progress


def restore_checkpoint(args: Args, checkpoint: dict, agent, buffer, eval_generator, progress: Progress) -> dict:
    """Load the checkpoint into the agent, buffer, random streams and counters, and read the rows of
    the folder's CSVs and arrays to keep. Every tensor is compared with what this run built BEFORE
    anything is loaded, and every file is checked, before the first byte of the folder changes."""
    problem = (state_problem(checkpoint["agent"], agent_state(agent), "agent")
               or buffer_problem(checkpoint["replay_buffer"], buffer)
               or rng_problem(checkpoint["rng"])
               or state_problem(checkpoint["eval_generator"], eval_generator.get_state(), "eval_generator"))
    try:
        if problem is None:
            load_agent_state(agent, checkpoint["agent"])
            problem = optimizer_state_problem(agent)
        if problem is None:
            load_buffer_state(buffer, checkpoint["replay_buffer"])
            set_rng_states(checkpoint["rng"])
            eval_generator.set_state(checkpoint["eval_generator"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
        problem = one_line(error)
    if problem is not None:
        raise ConfigError(f"--resume {args.run.resume}: {checkpoint['path']} does not fit this run ({problem})")
    for name in ("global_step", "train_time", "train_steps", "episodes", "last_return"):
        setattr(progress, name, checkpoint[name])
    # resumed at the end of its budget: the final evaluation (maybe cut short by a kill) runs
    # again, so the rows it wrote at this step go, or they would appear twice
    redo_step = progress.global_step if progress.global_step >= args.total_timesteps else None
    return read_previous_rows(os.path.dirname(os.path.abspath(checkpoint["path"])), progress.global_step, redo_step)


@contextlib.contextmanager
def training_session(run: RunFolder, progress: Progress, envs):
    """Around the loop: Ctrl-C / SIGTERM become a flag the loop checks (`stop.received`), so the step
    finishes and the checkpoint is written; the envs and files close however the loop ends; a NaN
    that the environment returned is reported with its step."""
    with StopSignal() as stop:
        try:
            yield stop
        except NonFiniteDataError as error:  # the buffer refused it: say at which step
            raise NonFiniteLossError(f"{error} at step {progress.global_step + envs.num_envs}; stopped before "
                                     f"storing it. Last good checkpoint: {last_good_checkpoint(run)}") from None
        finally:
            for close in [envs.close] + run.closers:
                close()


def finished_episodes(infos: dict) -> list[tuple[float, int]]:
    """(return, length) of every training episode that ended at this vector step."""
    if "final_info" not in infos:
        return []
    stats = infos["final_info"]["episode"]
    return [(float(stats["r"][i]), int(stats["l"][i])) for i in np.flatnonzero(infos["final_info"]["_episode"])]


def any_nonfinite(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """A flag on the device: is this update's critic or actor loss NaN or infinite? The loop ORs it
    into `nonfinite`, read only when logging, evaluating or checkpointing (no wait on the GPU)."""
    return ~torch.isfinite(losses["critic_loss"]) | ~torch.isfinite(losses["actor_loss"])


def crossed(step_before: int, step_after: int, every: int) -> bool:
    """True when a multiple of `every` lies in (step_before, step_after]: with N envs the step
    counter moves N at a time and may jump over the exact multiple."""
    return every > 0 and step_after // every > step_before // every


def log_progress(run: RunFolder, progress: Progress, loss_values: dict[str, float], nonfinite: torch.Tensor) -> None:
    """Every --log-every steps: SPS and the latest losses to metrics.csv and TensorBoard, and the
    progress line."""
    stop_if_nonfinite(run, progress, nonfinite)
    step, total = progress.global_step, run.args.total_timesteps
    sps = (step - run.start_step) / max(time.time() - run.start_time, 1e-9)
    run.logger.scalars(step, {"charts/SPS": sps, **loss_values})
    print(f"step {step}/{total} | SPS {sps:.0f} | last return {progress.last_return:.2f} | episodes "
          f"{progress.episodes} | ETA {format_duration((total - step) / max(sps, 1e-9))}", flush=True)


def stop_if_nonfinite(run: RunFolder, progress: Progress, nonfinite: torch.Tensor) -> None:
    if bool(nonfinite):
        raise NonFiniteLossError(f"a loss became NaN or infinite by step {progress.global_step}; stopped without "
                                 f"saving the broken networks. Last good checkpoint: {last_good_checkpoint(run)}")


def last_good_checkpoint(run: RunFolder) -> str:
    if run.last_good_step is None:
        return "none was written yet"
    return f"{run.checkpoint_path} (step {run.last_good_step})"


def save_run_checkpoint(run: RunFolder, progress: Progress, agent, buffer, nonfinite: torch.Tensor) -> None:
    """Everything --resume needs, as plain data, written atomically; never broken networks."""
    stop_if_nonfinite(run, progress, nonfinite)
    state = {"format": CHECKPOINT_FORMAT, "algorithm": ALGORITHM, "args": flat_args(run.args),
             "global_step": progress.global_step, "train_time": progress.train_time,
             "train_steps": progress.train_steps, "episodes": progress.episodes, "last_return": progress.last_return,
             "agent": agent_state(agent), "replay_buffer": buffer_state(buffer), "rng": rng_states(),
             "eval_generator": run.eval_generator.get_state()}
    save_checkpoint(run.checkpoint_path, state)
    run.last_good_step = progress.global_step


def evaluate_policies(run: RunFolder, agent, step: int) -> list[dict]:
    """Every policy, deterministic then stochastic, on the separately seeded evaluation env; the
    means go to eval.csv, TensorBoard and the console."""
    args, results = run.args, []
    if PER_ACTOR_EVALUATION:
        print(f"Evaluation over {args.run.eval_episodes} episodes (step {step}):", flush=True)
    for i, policy in enumerate(agent.policies):
        for mode in ("deterministic", "stochastic"):
            returns = evaluate(policy, run.eval_env, args.run.eval_episodes, args.seed + 100_000,
                               mode == "deterministic", run.device, run.eval_generator)
            run.logger.evaluation(step, i, mode, returns)
            results.append({"policy": i, "mode": mode, "mean_return": float(returns.mean()),
                            "std_return": float(returns.std()), "episodes": len(returns)})
            if PER_ACTOR_EVALUATION:
                print(f"  Actor {i} - {mode.capitalize()}: {returns.mean():.2f}", flush=True)
    if not PER_ACTOR_EVALUATION:
        det, sto = results[0], results[1]
        print(f"eval at step {step}: deterministic {det['mean_return']:.2f} +- {det['std_return']:.2f}"
              f" | stochastic {sto['mean_return']:.2f} +- {sto['std_return']:.2f}", flush=True)
    return results


def finish_run(run: RunFolder, progress: Progress, final_eval: list[dict], interrupted: bool) -> dict:
    """The run's final figures, written to summary.json when it completed; an interrupted run prints
    the command that resumes it instead."""
    args, wall_time = run.args, time.time() - run.start_time
    if interrupted:
        command = " ".join([os.path.basename(sys.argv[0]) or f"{ALGORITHM}.py"] +
                           strip_resume_flag(sys.argv[1:]) + ["--resume", run.path])
        print(f"stopped at step {progress.global_step}; checkpoint written to {run.checkpoint_path}.\n"
              f"Resume with: python {command}", file=sys.stderr, flush=True)
    summary = {"algorithm": ALGORITHM, "env_id": args.env_id, "seed": args.seed,
               "global_step": progress.global_step, "total_timesteps": args.total_timesteps,
               "sps": (progress.global_step - run.start_step) / max(wall_time, 1e-9),
               "train_sps": progress.train_steps / progress.train_time if progress.train_time > 0 else float("nan"),
               "wall_time_s": wall_time, "peak_rss_mb": peak_resident_mb(), "final_eval": final_eval}
    if not interrupted:
        atomic_write_text(os.path.join(run.path, "summary.json"), lambda f: json.dump(summary, f, indent=2))
    return {**summary, "run_dir": run.path, "interrupted": interrupted}


def peak_resident_mb() -> float:
    """This process's peak resident memory in MiB (a resumed run: since it resumed); nan where the
    platform has no `resource` module (Windows). ru_maxrss is KiB on Linux, bytes on macOS."""
    try:
        import resource
    except ImportError:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


# ---- outputs: TensorBoard, metrics.csv, eval.csv -------------------------------------------
class RunLogger:
    """Writes every scalar to TensorBoard and to metrics.csv (long format: step, time, tag, value),
    and evaluations to eval.csv (with per_actor, also under eval/actor_{i}/ tags). With --track,
    wandb mirrors TensorBoard (sync_tensorboard, as in CleanRL). A resumed run passes the rows to
    keep (read_previous_rows, checked before anything changed)."""

    def __init__(self, run_dir: str, resume_step: Optional[int], per_actor: bool = False,
                 previous_rows: Optional[dict] = None):
        from torch.utils.tensorboard import SummaryWriter

        if resume_step is not None and previous_rows is None:
            previous_rows = read_previous_rows(run_dir, resume_step, None)
        # purge_step hides TensorBoard events logged after the checkpoint we resume from
        self.writer = SummaryWriter(run_dir, purge_step=resume_step)
        self.metrics_path = os.path.join(run_dir, "metrics.csv")
        self.eval_path = os.path.join(run_dir, "eval.csv")
        for path, header in ((self.metrics_path, METRICS_HEADER), (self.eval_path, EVAL_HEADER)):
            rows = previous_rows[os.path.basename(path)] if previous_rows else []
            atomic_write_text(path, lambda f: csv.writer(f).writerows([header] + rows))
        self.metrics_file = open_for_append(self.metrics_path)
        self.metrics_csv = csv.writer(self.metrics_file)
        self.per_actor = per_actor

    def scalars(self, step: int, values: dict[str, float]) -> None:
        now = time.time()
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
            self.metrics_csv.writerow([step, f"{now:.3f}", tag, repr(float(value))])
        self.metrics_file.flush()

    def evaluation(self, step: int, policy: int, mode: str, returns: np.ndarray) -> None:
        with open_for_append(self.eval_path) as f:
            csv.writer(f).writerow([step, policy, mode, repr(float(returns.mean())), repr(float(returns.std())), len(returns)])
        tags = {f"eval/actor_{policy}/{mode}_return": float(returns.mean())} if self.per_actor else {}
        if policy == 0:  # actor 0 under SAC's tag too, so every script's curves share a name
            tags[f"eval/{mode}_return"] = float(returns.mean())
        self.scalars(step, tags)

    def close(self) -> None:
        self.writer.close()
        self.metrics_file.close()


METRICS_HEADER = ["global_step", "wall_time", "metric", "value"]
EVAL_HEADER = ["global_step", "policy", "mode", "mean_return", "std_return", "episodes"]
# what each column holds, checked in every row a resumed run keeps: "count" (a plain integer), "number"
# (a float, NaN included: an episode's return can be one), "mode", "name" (any text)
COLUMN_KINDS = {"global_step": "count", "wall_time": "number", "metric": "name", "value": "number",
                "policy": "count", "mode": "mode", "mean_return": "number", "std_return": "number", "episodes": "count"}


# ---- a run folder is untrusted input -----------------------------------------------------------
# Students hand each other run folders, so everything in one (args.json, checkpoint.pt, the CSVs and
# arrays, leftover *.tmp files, links, sub-folders) may have been written by someone else. Reading one
# follows four rules: nothing in it runs code (checkpoints load as data only; an env id read from a
# file may not name a module to import); nothing written goes outside it (a folder holding a symbolic
# link is refused, files are created without following links); nothing read allocates more than the
# file holds or the run needs; every check finishes before the first byte of the folder changes.
# Each problem is one ConfigError: one `error:` line, exit code 2.
MAX_STEP = 2**40  # a step counter past this (~10^12) was not written by a run
MAX_TEXT_BYTES = 2**20  # args.json, summary.json, a --config file: a few KB when written by hand or by us
NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)  # 0 on Windows, which has no symbolic links in run folders
SHORT_REPR = reprlib.Repr()
SHORT_REPR.maxlevel, SHORT_REPR.maxstring, SHORT_REPR.maxother, SHORT_REPR.maxlong = 2, 40, 40, 40


def short(value) -> str:
    """A repr of at most ~80 characters that never builds the whole repr: a YAML alias bomb is small
    on disk but billions of items when printed."""
    text = SHORT_REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def run_folder_problem(run_dir: str) -> Optional[str]:
    """Why `run_dir` cannot be read or written as a run folder, or None: everything in it must be a
    regular file or folder. A symbolic link would send a write outside the folder (metrics.csv.tmp ->
    ~/.bashrc), a FIFO would block the run forever."""
    for folder, subfolders, files in os.walk(run_dir):  # os.walk does not descend into linked folders
        for name in subfolders + files:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                return f"{path} is a symbolic link; a run folder may hold only its own files and folders"
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                return f"{path} is not a regular file or folder"
    return None


def writable_folder_problem(folder: str) -> Optional[str]:
    """Why no run folder can be created under `folder` (None when it can): checked before any work."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is not a folder"
    return None if os.access(existing, os.W_OK | os.X_OK) else f"cannot write to {existing}"


def new_run_folder(output_dir: str, prefix: str) -> str:
    """Create {output_dir}/{prefix}__{unix time}. The same command started again within the same
    second takes the next free second, so every run gets its own folder."""
    os.makedirs(output_dir, exist_ok=True)
    stamp = int(time.time())
    while True:
        path = os.path.join(output_dir, f"{prefix}__{stamp}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            stamp += 1


def lock_run_folder(run_dir: str, flag: str) -> int:
    """An exclusive lock on the run folder for as long as this process lives (the system drops it
    however the process ends), so two runs never write one folder. Returns the descriptor to close."""
    descriptor = os.open(run_dir, os.O_RDONLY)
    try:
        import fcntl
    except ImportError:  # Windows: no flock; a second run of one folder is not detected there
        return descriptor
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise ConfigError(f"{flag}: another process is already writing {run_dir}") from None
    return descriptor


def open_for_append(path: str):
    """open(path, "a") that never follows a symbolic link at `path`."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NO_FOLLOW, 0o644), "a", newline="")


def read_previous_rows(run_dir: str, last_step: int, redo_step: Optional[int]) -> dict:
    """The rows of metrics.csv and eval.csv a resumed run keeps: those up to the checkpoint's step
    (later ones would appear twice), minus the evaluation rows at `redo_step` (the final evaluation,
    which runs again). Every row is checked first."""
    def evaluation_at_redo_step(step: int, row: list[str], is_metric: bool) -> bool:
        return step == redo_step and (not is_metric or row[2].startswith("eval/"))

    rows = {}
    for name, header in (("metrics.csv", METRICS_HEADER), ("eval.csv", EVAL_HEADER)):
        rows[name] = [row for row in read_csv_rows(os.path.join(run_dir, name), header)
                      if int(row[0]) <= last_step and not evaluation_at_redo_step(int(row[0]), row, name == "metrics.csv")]
    return rows


def read_csv_rows(path: str, header: list[str]) -> list[list[str]]:
    """A run folder's CSV as rows (header excluded), each checked: the right number of columns, each
    holding what COLUMN_KINDS says (a step is a plain integer up to MAX_STEP). A missing file has no rows."""
    if not os.path.exists(path):
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"cannot read {path} ({one_line(error)})") from None
    if not rows or rows[0] != header:
        raise ConfigError(f"{path} does not start with the header {','.join(header)}")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header) or not all(cell_fits(cell, COLUMN_KINDS[column]) for cell, column in zip(row, header)):
            raise ConfigError(f"{path}, row {number}: not a row of this file ({short(row)})")
    return rows[1:]


def cell_fits(cell: str, kind: str) -> bool:
    """Whether a CSV cell holds what its column's kind (COLUMN_KINDS) says."""
    if kind == "count":
        return cell.isascii() and cell.isdigit() and int(cell) <= MAX_STEP
    if kind == "number":
        try:
            float(cell)
        except ValueError:
            return False
        return True
    return cell in ("deterministic", "stochastic") if kind == "mode" else True


def atomic_write(path: str, write, mode: str = "w") -> None:
    """Write a file through a temp file, fsync, then os.replace: readers never see half a file, and a
    crash or kill mid-write leaves the previous file intact (rename is atomic on POSIX). The temp
    file is created new (a leftover or a link at its name is removed, never followed), and a failed
    write (a full disk) removes it and is one ConfigError. `write(f)` fills the open temp file;
    mode "w" (text) or "wb" (binary)."""
    tmp = f"{path}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW, 0o644)
        with os.fdopen(descriptor, mode, **({"newline": ""} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:  # RuntimeError: torch.save's writer reports a full disk so
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ConfigError(f"cannot write {path} ({one_line(error)}); the previous file is unchanged") from None


def atomic_write_text(path: str, write) -> None:
    """A text file written atomically (atomic_write)."""
    atomic_write(path, write, "w")


# ---- checkpoints: written atomically, read as data only --------------------------------------
def save_checkpoint(path: str, state: dict) -> None:
    """torch.save, atomically (atomic_write): a crash or kill mid-write keeps the previous checkpoint."""
    atomic_write(path, lambda f: torch.save(state, f), "wb")


def resolve_checkpoint_path(resume: str) -> Optional[str]:
    """--resume accepts a run folder or a checkpoint file."""
    path = os.path.join(resume, "checkpoint.pt") if os.path.isdir(resume) else resume
    return path if os.path.isfile(path) else None


def read_checkpoint(resume: str, flag: str = "--resume") -> dict:
    """Load a checkpoint as DATA and check its structure; every problem is one ConfigError.

    torch.load(weights_only=True) rebuilds only tensors, dicts, lists, tuples, numbers, strings
    and None: a file that asks for any other Python object (which unpickling would construct, and
    so could run code) is refused, not opened. Loaded on the CPU: the RNG states must live there,
    and load_state_dict moves everything else to the networks' device."""
    path = resolve_checkpoint_path(resume)
    if path is None:
        raise ConfigError(f"{flag} {resume}: no checkpoint.pt there")
    problem = run_folder_problem(os.path.dirname(os.path.abspath(path))) or archive_problem(path)
    if problem is not None:
        raise ConfigError(f"{flag} {resume}: {problem}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # refused objects, a truncated, empty or foreign file
        unsafe = unsafe_globals(path)
        if unsafe and all(name.startswith("numpy") for name in unsafe):
            raise ConfigError(f"{flag} {resume}: {path} was written by an earlier version of this script "
                              "(it stores NumPy objects); this version loads checkpoints as plain data only "
                              "and cannot resume it") from None
        if unsafe:
            raise ConfigError(f"{flag} {resume}: {path} asks to build Python objects ({', '.join(unsafe[:3])}); "
                              "a checkpoint is data only, so it was not loaded") from None
        raise ConfigError(f"{flag} {resume}: cannot read {path} ({one_line(error)})") from None
    problem = checkpoint_problem(checkpoint)
    if problem is not None:
        raise ConfigError(f"{flag} {resume}: {problem} ({path})")
    checkpoint["path"] = path
    return checkpoint


# what a checkpoint holds at its top level, and the kind of each value
CHECKPOINT_FIELDS = {"format": int, "algorithm": str, "args": dict, "global_step": int, "train_time": (int, float),
                     "train_steps": int, "episodes": int, "last_return": (int, float), "agent": dict,
                     "replay_buffer": dict, "rng": dict, "eval_generator": torch.Tensor}


def checkpoint_problem(checkpoint) -> Optional[str]:
    """What is wrong with a loaded checkpoint's structure, or None. The networks' and buffer's
    own shapes are checked when they are loaded (open_run_folder)."""
    if not isinstance(checkpoint, dict):
        return f"holds a {type(checkpoint).__name__}, not a checkpoint"
    found = checkpoint.get("algorithm")
    if found != ALGORITHM:
        return f"checkpoint is from '{found}', not {ALGORITHM}"
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        return (f"checkpoint format {checkpoint.get('format')!r}, this script reads format {CHECKPOINT_FORMAT} "
                "(written by another version of this script)")
    for key, kind in CHECKPOINT_FIELDS.items():
        if key not in checkpoint:
            return f"checkpoint lacks '{key}'"
        value = checkpoint[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
            return f"checkpoint's '{key}' is a {type(value).__name__}, not a {getattr(kind, '__name__', 'number')}"
    for key in ("global_step", "train_steps", "episodes"):
        if not 0 <= checkpoint[key] <= MAX_STEP:
            return f"checkpoint's '{key}' is out of range ({short(checkpoint[key])})"
    if not (math.isfinite(checkpoint["train_time"]) and checkpoint["train_time"] >= 0):
        return f"checkpoint's 'train_time' is not a duration ({checkpoint['train_time']})"
    unknown = sorted(set(checkpoint["args"]) - set(flag_types()))
    if unknown:
        return f"checkpoint's args hold fields this script does not have: {', '.join(unknown)}"
    missing = sorted(set(RESUME_MUST_MATCH) - set(checkpoint["args"]))
    if missing:
        return f"checkpoint's args lack {', '.join(missing)}"
    return None


def check_resume_args(checkpoint: dict, args: Args) -> None:
    """The args that fix the shapes and meaning of what a checkpoint holds must match: resuming
    with other values would be a different run."""
    saved = checkpoint["args"]
    differ = [f"{k} (checkpoint {short(saved.get(k))}, now {short(getattr(args, k))})" for k in RESUME_MUST_MATCH
              if as_list(saved.get(k)) != as_list(getattr(args, k))]
    if differ:
        raise ConfigError(f"--resume {args.run.resume}: incompatible arguments: {', '.join(differ)}")
    if checkpoint["global_step"] >= args.total_timesteps and finished_at(checkpoint) >= checkpoint["global_step"]:
        # nothing left to do (a run stopped during its final evaluation has no summary.json and is finished)
        raise ConfigError(f"--resume {args.run.resume}: that run already reached step {checkpoint['global_step']} "
                          f"(--total-timesteps {args.total_timesteps}); give a larger --total-timesteps to train "
                          f"on, or play it with --evaluate")


def finished_at(checkpoint: dict) -> int:
    """The global step in summary.json beside the checkpoint: where the run completed (-1: never,
    or a summary.json that is not ours)."""
    try:
        step = read_json(os.path.join(os.path.dirname(checkpoint["path"]), "summary.json"))["global_step"]
    except (ConfigError, KeyError, TypeError):
        return -1
    return step if isinstance(step, int) and not isinstance(step, bool) else -1


def read_json(path: str):
    """A run folder's JSON file (args.json, summary.json), at most MAX_TEXT_BYTES of UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TEXT_BYTES + 1)
        if len(data) > MAX_TEXT_BYTES:
            raise ValueError(f"larger than {MAX_TEXT_BYTES} bytes")
        return json.loads(data.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(f"cannot read {path} ({one_line(error)})") from None


def archive_problem(path: str) -> Optional[str]:
    """Why `path` is not a checkpoint as torch.save writes one, checked before torch.load reads it:
    a zip archive of UNCOMPRESSED members. A compressed member could inflate far beyond the file
    (a 2 MB file to 2 GB); uncompressed, nothing read is larger than the file itself."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as error:
        return f"cannot read {path} (not a checkpoint written by torch.save: {one_line(error)})"
    for member in members:
        if member.compress_type != zipfile.ZIP_STORED or member.file_size != member.compress_size:
            return f"cannot read {path} (its member {short(member.filename)} is compressed; torch.save never compresses)"
    return None


# ---- a checkpoint's contents against what this run builds -------------------------------------
def state_problem(saved, fresh, where: str) -> Optional[str]:
    """Why the `saved` state (read from a checkpoint) cannot replace this run's `fresh` one, or None.
    The same structure (dict keys, list lengths), tensors of the same shape and dtype (the device is
    not compared) with finite values, numbers of the same kind, finite; optimizer states as in
    optimizer_dict_problem. Checked before anything is loaded: a crafted Adam state of the wrong
    shape makes the fused optimizer write out of bounds (a segfault, or memory until OOM)."""
    if isinstance(fresh, dict) and set(fresh) == {"state", "param_groups"}:
        return optimizer_dict_problem(saved, fresh, where)
    if isinstance(fresh, dict):
        if not isinstance(saved, dict) or set(saved) != set(fresh):
            found = sorted(map(str, saved))[:8] if isinstance(saved, dict) else type(saved).__name__
            return f"{where} holds {short(found)}, this run has {short(sorted(map(str, fresh)))}"
        return next(filter(None, (state_problem(saved[key], fresh[key], f"{where}.{key}") for key in fresh)), None)
    if isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(fresh):
            return f"{where} is not a list of {len(fresh)} entries"
        return next(filter(None, (state_problem(a, b, f"{where}[{i}]") for i, (a, b) in enumerate(zip(saved, fresh)))), None)
    if isinstance(fresh, torch.Tensor):
        if not isinstance(saved, torch.Tensor):
            return f"{where} is a {type(saved).__name__}, not a tensor"
        if saved.shape != fresh.shape or saved.dtype != fresh.dtype:
            return f"{where} is {short(tuple(saved.shape))} {saved.dtype}, this run needs {tuple(fresh.shape)} {fresh.dtype}"
        if saved.is_floating_point() and not bool(torch.isfinite(saved).all()):
            return f"{where} holds NaN or infinite values"
        return None
    if isinstance(fresh, bool) or fresh is None or isinstance(fresh, str):
        return None if type(saved) is type(fresh) else f"{where} is {short(saved)}, not like {short(fresh)}"
    if isinstance(fresh, int):
        in_range = isinstance(saved, int) and not isinstance(saved, bool) and 0 <= saved <= MAX_STEP
        return None if in_range else f"{where} is {short(saved)}, not a count"
    if isinstance(fresh, float):
        finite = isinstance(saved, (int, float)) and not isinstance(saved, bool) and math.isfinite(saved)
        return None if finite else f"{where} is {short(saved)}, not a finite number"
    return f"{where}: this run holds a {type(fresh).__name__}, which a checkpoint cannot replace"


def optimizer_dict_problem(saved, fresh: dict, where: str) -> Optional[str]:
    """An optimizer's state_dict against this run's (not yet stepped) one: the same param_groups
    (settings of the same kinds, finite numbers, the same parameter indices), and per-parameter
    entries of float32 tensors with finite values for those indices only. Their shapes are known
    only once loaded: optimizer_state_problem compares them with the parameters."""
    if not isinstance(saved, dict) or set(saved) != {"state", "param_groups"}:
        return f"{where} is not an optimizer state"
    problem = state_problem(saved["param_groups"], fresh["param_groups"], f"{where}.param_groups")
    if problem is not None:
        return problem
    indices = {index for group in fresh["param_groups"] for index in group["params"]}
    if any(group["params"] != fresh_group["params"] for group, fresh_group in zip(saved["param_groups"], fresh["param_groups"])):
        return f"{where}.param_groups name other parameters than this run's"
    if not isinstance(saved["state"], dict) or not set(saved["state"]) <= indices:
        return f"{where}.state is not keyed by this optimizer's parameters"
    for index, entry in saved["state"].items():
        if not isinstance(entry, dict) or not set(entry) <= {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}:
            return f"{where}.state[{index}] is not an Adam state"
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor) or value.dtype != torch.float32:
                return f"{where}.state[{index}].{key} is not a float32 tensor"
            if key == "step" and value.dim() != 0:
                return f"{where}.state[{index}].step is {short(tuple(value.shape))}, not a number"
    return None


def optimizer_state_problem(agent) -> Optional[str]:
    """After load_agent_state: every optimizer's per-parameter state has its parameter's shape (the
    loaded entries could not be compared earlier, the fresh optimizers have none yet). Finite too:
    checked here, once the shapes are known to be those of the parameters."""
    optimizers = [item for value in vars(agent).values()
                  for item in (value if isinstance(value, (list, tuple)) else [value])
                  if isinstance(item, torch.optim.Optimizer)]
    for optimizer in optimizers:
        for parameter, entry in optimizer.state.items():
            for key, value in entry.items():
                want = () if key == "step" else tuple(parameter.shape)
                if tuple(value.shape) != want:
                    return f"an optimizer's '{key}' is {short(tuple(value.shape))}, its parameter needs {want}"
                if not bool(torch.isfinite(value).all()):
                    return f"an optimizer's '{key}' holds NaN or infinite values"
    return None


def buffer_problem(saved, buffer) -> Optional[str]:
    """The saved replay buffer against this run's (empty) one: `size` and `position` integers in
    range and consistent (a ring filled from row 0: position == size until it is full), each array
    exactly `size` rows of this run's row shape and dtype, finite."""
    fresh = buffer_state(buffer)
    if not isinstance(saved, dict) or set(saved) != set(fresh):
        return "its replay buffer does not hold this script's arrays"
    size, position = saved["size"], saved["position"]
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (size, position)):
        return f"its replay buffer's size/position are {short(size)}/{short(position)}, not integers"
    if not (0 <= size <= buffer.capacity and 0 <= position < buffer.capacity
            and (position == size or size == buffer.capacity)):
        return f"its replay buffer's size {size} and position {position} do not fit {buffer.capacity} rows"
    for key, value in fresh.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and len(value) == 0:  # the filled rows
            value = torch.empty((size, *value.shape[1:]), dtype=value.dtype)
        problem = state_problem(saved[key], value, f"replay_buffer.{key}")
        if problem is not None:
            return problem
    return None


def rng_problem(saved) -> Optional[str]:
    """The saved random streams against this process's (rng_states()): the same structure; Python's
    gauss_next may be None or a number, the CUDA states None or a short list of byte tensors (a
    checkpoint from a GPU machine resumes on the CPU)."""
    fresh = rng_states()
    if not isinstance(saved, dict) or set(saved) != set(fresh) or not isinstance(saved.get("python"), dict):
        return "its random states are not this script's"
    gauss_next, cuda = saved["python"].get("gauss_next"), saved["cuda"]
    if not (gauss_next is None or (isinstance(gauss_next, float) and math.isfinite(gauss_next))):
        return f"its Python random state's gauss_next is {short(gauss_next)}"
    if not (cuda is None or (isinstance(cuda, list) and len(cuda) <= 64 and all(
            isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.dim() == 1 and len(state) <= 4096
            for state in cuda))):
        return "its CUDA random states are not byte tensors"
    comparable = {**saved, "python": {**saved["python"], "gauss_next": fresh["python"]["gauss_next"]}, "cuda": fresh["cuda"]}
    return state_problem(comparable, fresh, "rng")


def unsafe_globals(path: str) -> list[str]:
    """The Python objects a checkpoint file would ask the unpickler to build beyond plain data,
    read from its pickle opcodes without running any of them; [] when the file cannot tell."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint (empty, truncated, random bytes): the caller says so
        return []


def as_list(value):
    """Tuples and lists compare equal as lists (a tuple arg may come back as a list)."""
    return list(value) if isinstance(value, (tuple, list)) else value


def one_line(error: BaseException) -> str:
    """The first line of an exception's message (torch's can run to a page)."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]


# ---- signals, evaluation, seeding, device ---------------------------------------------------
class StopSignal:
    """Turns SIGINT/SIGTERM into a flag the training loop checks once per step, so the loop can
    finish the step, write a checkpoint and exit cleanly. A second signal is honoured at once."""

    def __init__(self):
        self.received: Optional[int] = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
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


@torch.no_grad()
def evaluate(policy, env: gym.Env, episodes: int, seed: int, deterministic: bool,
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
                action = policy.deterministic_action(obs_t)
            else:
                action = policy.act(obs_t, generator=generator)
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
    """Every global random stream, as plain data (tensors, ints, floats) that a weights_only load
    accepts; set_rng_states restores them bit for bit."""
    version, mersenne_state, gauss_next = random.getstate()
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {"python": {"version": version, "state": torch.tensor(mersenne_state, dtype=torch.int64),
                       "gauss_next": gauss_next},
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_states(states: dict) -> None:
    python, numpy_state = states["python"], states["numpy"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():  # the GPUs this machine has
        for index, cuda_state in enumerate(states["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def pick_device(want_cuda: bool) -> torch.device:
    if want_cuda and torch.cuda.is_available():
        return torch.device("cuda")
    if want_cuda:
        print("notice: --cuda was given but CUDA is not available; training on the CPU", file=sys.stderr)
    return torch.device("cpu")


# ---- --compile and --cudagraphs: the SAME update methods, compiled and replayed -----------------
# Part 1's update methods are the only version of the algorithm. --compile hands each of them to
# torch.compile as it is (graph breaks at backward() and the optimizer included); --cudagraphs then
# records each compiled method once as a CUDA graph and replays it: one launch instead of hundreds
# of small kernels, which is where a GPU loses its time at these network sizes (LeanRL's recipe).
# The agent names the methods (Agent.COMPILED_STEPS); a name it lacks is an AttributeError here.


def compile_errors() -> tuple:
    """A missing or broken C/C++ compiler or Triton, or an operation the compiler rejects
    (imported only when needed: importing the compiler stack takes a second)."""
    import torch._dynamo.exc
    import torch._inductor.exc
    return (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError,
            torch._inductor.exc.InvalidCxxCompiler, torch._inductor.exc.CppCompileError)


def accelerate_updates(agent, args: Args) -> None:
    """Swap the agent's update methods for compiled (and CUDA-graphed) versions of themselves."""
    if not args.run.compile:
        return
    # compiled random ops call the same ATen kernels as eager ones: the same seed draws the same
    # noise, so a compiled run follows an eager one (tests/test_compile.py) and resumes either way
    import torch._inductor.config
    torch._inductor.config.fallback_random = True
    if args.run.cudagraphs:  # Adam steps recorded in a CUDA graph must keep their step counts on the GPU
        for value in vars(agent).values():
            for optimizer in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(optimizer, torch.optim.Optimizer):
                    for group in optimizer.param_groups:
                        group["capturable"] = True
    print("notice: --compile: the first updates compile the update step (tens of seconds)"
          + (", then record it as CUDA graphs" if args.run.cudagraphs else ""), file=sys.stderr)
    compiled_steps = []  # shared: if one fails to compile, all fall back together
    for name in agent.COMPILED_STEPS:
        step = CompiledStep(getattr(agent, name), name, compiled_steps)
        setattr(agent, name, CudaGraphStep(step, agent) if args.run.cudagraphs else step)


class CompiledStep:
    """torch.compile(method). If compiling fails (it fails before the update changes anything):
    one notice line, and this and the agent's other update methods run eagerly from then on."""

    def __init__(self, method, name: str, all_steps: list):
        self.eager, self.name, self.all_steps = method, name, all_steps
        # a run's shapes never change (fixed batch and networks): dynamic=False keeps torch.compile
        # from retrying with symbolic shapes when another agent of other sizes is compiled in the
        # same process (a test session, a notebook), which fails in torch 2.13 and so ran eagerly
        self.compiled = torch.compile(method, dynamic=False)
        all_steps.append(self)

    def __call__(self, *inputs):
        if self.compiled is not None:
            try:
                return self.compiled(*inputs)
            except compile_errors() as error:
                print(f"notice: --compile: compiling {self.name} failed, so the updates run eagerly "
                      f"({one_line(error)[:300]})", file=sys.stderr)
                for step in self.all_steps:
                    step.compiled = None
        return self.eager(*inputs)


class CudaGraphStep:
    """Run `step` a few times on a side stream (compilation, cuBLAS and optimizer state are set up
    outside the graph), then record it once as a CUDA graph and from then on replay it.

    The graph reads fixed input tensors (each call copies its batch into them) and writes fixed
    output tensors: the losses it returns are overwritten by the next replay, and the training
    loop only ever reads the latest ones. Random draws advance the generators on each replay."""
    WARMUP_CALLS = 3

    def __init__(self, step, agent):
        self.step, self.calls, self.graph, self.nothing_to_record = step, 0, None, False
        # the agent's own generators (e.g. SAC's redq subset) must be known to the graph
        self.generators = [value for value in vars(agent).values() if isinstance(value, torch.Generator)
                           and value.device.type == "cuda"]

    def __call__(self, inputs):
        if self.graph is not None:
            copy_into(self.static_inputs, inputs)
            self.graph.replay()
            return dict(self.static_outputs)  # a new dict (the loop adds to it), the same tensors
        if self.nothing_to_record:  # e.g. temperature_step with a fixed alpha: no GPU work at all
            return self.step(inputs)
        self.calls += 1
        if self.calls <= self.WARMUP_CALLS:
            side_stream = torch.cuda.Stream()
            side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side_stream):
                outputs = self.step(inputs)
            torch.cuda.current_stream().wait_stream(side_stream)
            self.nothing_to_record = outputs == {}
            return outputs
        self.static_inputs = clone_tensors(inputs)
        self.graph = torch.cuda.CUDAGraph()
        for generator in self.generators:
            self.graph.register_generator_state(generator)
        with torch.cuda.graph(self.graph):
            self.static_outputs = self.step(self.static_inputs)
        self.graph.replay()  # recording runs nothing: this replay is the update of this call
        return dict(self.static_outputs)


def clone_tensors(value):
    return {key: item.clone() for key, item in value.items()} if isinstance(value, dict) else value.clone()


def copy_into(static, value) -> None:
    for key in static if isinstance(static, dict) else [None]:
        target, source = (static[key], value[key]) if key is not None else (static, value)
        if target.data_ptr() != source.data_ptr():
            target.copy_(source)


# ---- --evaluate: play a saved run's policies -------------------------------------------------
def evaluate_saved_run(cli_args: Args) -> dict:
    """--evaluate RUN_FOLDER: load the run's latest checkpoint (as data, checked) and its settings
    (args.json, checked like the command line), play --eval-episodes episodes per mode with every
    policy on an env reset with seeds --seed + 200000 onwards (not the training run's evaluation
    states), and print mean +- std. With --capture-video every episode is filmed to
    RUN_FOLDER/videos/evaluate-<time>/. Trains nothing and writes no other file of the run, so it
    works on a run that is still going."""
    checkpoint = read_checkpoint(cli_args.run.evaluate, flag="--evaluate")
    run_dir = os.path.dirname(os.path.abspath(checkpoint["path"]))
    args = saved_args(run_dir, checkpoint, cli_args)
    action_space = validate_args(args)
    device = pick_device(args.run.cuda)
    probe = gym.make(args.env_id)
    obs_dim = int(np.prod(probe.observation_space.shape))
    probe.close()
    # the networks are as large as args.json says: build them within what the checkpoint holds
    with AllocationBudget(stored_bytes(checkpoint["agent"]) + 2**24, f"--evaluate {cli_args.run.evaluate}"):
        agent = Agent(args, obs_dim, action_space, device)
    problem = state_problem(checkpoint["agent"], agent_state(agent), "agent")
    try:
        if problem is None:
            load_agent_state(agent, checkpoint["agent"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
        problem = one_line(error)
    if problem is not None:
        raise ConfigError(f"--evaluate {cli_args.run.evaluate}: {checkpoint['path']} does not fit its args.json ({problem})")
    video_folder = None
    if args.run.capture_video:
        video_folder = os.path.join(run_dir, "videos", f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}")
    env = make_env(args.env_id, args.seed + 200_000, video_folder)()
    if video_folder is not None:
        env.env.episode_trigger = lambda episode: True  # film every episode
    generator = torch.Generator(device=device)
    generator.manual_seed(args.seed + 200_000)
    print(f"evaluating {run_dir} at step {checkpoint['global_step']}: {args.run.eval_episodes} episodes per mode, "
          f"env seeds {args.seed + 200_000}..{args.seed + 200_000 + args.run.eval_episodes - 1}", flush=True)
    results = []
    try:
        for i, policy in enumerate(agent.policies):
            for mode in ("deterministic", "stochastic"):
                returns = evaluate(policy, env, args.run.eval_episodes, args.seed + 200_000, mode == "deterministic",
                                   device, generator)
                results.append({"policy": i, "mode": mode, "mean_return": float(returns.mean()),
                                "std_return": float(returns.std()), "episodes": len(returns)})
                print(f"  actor {i} {mode}: {returns.mean():.2f} +- {returns.std():.2f}", flush=True)
    finally:
        env.close()
    if video_folder is not None:
        print(f"videos: {video_folder}", flush=True)
    return {"run_dir": run_dir, "global_step": checkpoint["global_step"], "evaluation": results,
            "interrupted": False}


def saved_args(run_dir: str, checkpoint: dict, cli_args: Args) -> Args:
    """The run's own settings (its args.json, else the checkpoint's copy), each value checked against
    Args' types, with this command's --eval-episodes, --capture-video, --seed and --cuda. The
    architecture must be the checkpoint's own; an env id naming a module to import is honoured only
    when this command line names it too; training-only flags (--compile, --cudagraphs, --track) are
    the training run's business, not the evaluation's."""
    path, flag = os.path.join(run_dir, "args.json"), f"--evaluate {cli_args.run.evaluate}"
    saved = checkpoint["args"]
    if os.path.isfile(path):
        saved = read_json(path)
        saved = saved.get("args") if isinstance(saved, dict) else None
    hints = flag_types()
    if not isinstance(saved, dict) or not set(saved) <= set(hints):
        found = sorted(set(saved) - set(hints)) if isinstance(saved, dict) else type(saved).__name__
        raise ConfigError(f"{flag}: {path} holds fields this script does not have: {short(found)}")
    for name, value in saved.items():
        if not value_fits(value, hints[name]):
            raise ConfigError(f"{flag}: {path}: '{name}' must be {type_name(hints[name])}, got {short(value)}")
    env_id = saved.get("env_id", Args.env_id)
    if ":" in env_id and env_id != cli_args.env_id:
        raise ConfigError(f"{flag}: {path} names the env '{env_id[:100]}', which imports the module before ':'; "
                          "a run folder cannot make this script run code. If you trust that module, pass "
                          f"--env-id {env_id[:100]} on the command line")
    differ = [name for name in RESUME_MUST_MATCH if name != "seed" and name in saved
              and as_list(saved[name]) != as_list(checkpoint["args"][name])]
    if differ:
        raise ConfigError(f"{flag}: {path} and {checkpoint['path']} disagree on {', '.join(differ)}")
    args = args_from_flat(saved)
    args.seed = cli_args.seed
    for name in ("eval_episodes", "capture_video", "cuda"):
        setattr(args.run, name, getattr(cli_args.run, name))
    args.run.resume, args.run.evaluate, args.run.config = None, None, None
    args.run.compile, args.run.cudagraphs, args.run.track = False, False, False
    return args


def stored_bytes(state) -> int:
    """The bytes of the tensors in a (nested) state: what their storages hold, so a huge shape
    viewed on a small storage counts as the small storage it is."""
    if isinstance(state, torch.Tensor):
        return state.untyped_storage().nbytes()
    if isinstance(state, dict):
        return sum(stored_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(stored_bytes(value) for value in state)
    return 0


class AllocationBudget(torch.utils._python_dispatch.TorchDispatchMode):
    """While active, every tensor created with a size (torch.empty, zeros, ...: what building
    networks does) is counted BEFORE it is allocated, and going past `limit` bytes is one
    ConfigError instead of an allocation of whatever args.json claims (hidden_size 10**9: 12 GB)."""

    def __init__(self, limit: int, flag: str):
        super().__init__()
        self.limit, self.flag, self.requested = limit, flag, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for i, argument in enumerate(func._schema.arguments):
            if argument.name == "size" and isinstance(kwargs.get("size", args[i] if i < len(args) else None), (list, tuple)):
                size = kwargs.get("size", args[i] if i < len(args) else None)
                dtype = kwargs.get("dtype") or torch.get_default_dtype()
                self.requested += math.prod(size) * dtype.itemsize
                if self.requested > self.limit:
                    raise ConfigError(f"{self.flag}: its args.json asks for networks larger than its checkpoint "
                                      f"holds ({self.requested} bytes > {self.limit})")
        return func(*args, **kwargs)


# ---- a value read from a file against an Args field's type (args.json, --config) ----------
def value_fits(value, hint) -> bool:
    """Whether a YAML value fits an Args field's type (bool is not an int; an int is a float)."""
    origin, inner = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return value_fits(value, inner[0])
    if origin is typing.Union:
        return any(value_fits(value, option) for option in inner)
    if origin is typing.Literal:
        return value in inner
    if origin is tuple:
        return isinstance(value, list) and all(value_fits(v, inner[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def type_name(hint) -> str:
    origin, inner = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return type_name(inner[0])
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in inner)
    if origin is typing.Union:
        return " or ".join(type_name(option) for option in inner)
    if origin is tuple:
        return "a list"
    return "None" if hint is type(None) else f"a {hint.__name__}"


# ---- the command line ----------------------------------------------------------------------
def config_path(argv: list[str]) -> Optional[str]:
    """The FILE of `--config FILE` (or `-cfg FILE`, `--config=FILE`) in argv; None without one."""
    path = None
    for i, item in enumerate(argv):
        if item in ("--config", "-cfg") and i + 1 < len(argv):
            path = argv[i + 1]
        elif item.startswith("--config="):
            path = item.split("=", 1)[1]
    return path


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


def main() -> None:
    """Parse the command line into Args (over a --config file's defaults), train or --evaluate,
    and exit with the code every script of this project uses: 0 done, 1 stopped on a non-finite
    loss, 2 bad input (one `error:` line, before any work), 130 interrupted by Ctrl-C / SIGTERM
    (after writing the checkpoint)."""
    try:
        path = config_path(sys.argv[1:])  # --config FILE.yaml: the file's values become the defaults
        defaults = run_extras("--config").config_defaults(sys.modules[__name__], path) if path else None
        args = tyro.cli(Args, description=__doc__.split("\n\n")[0], default=defaults)
        if args.run.evaluate is not None and args.run.resume is not None:
            raise ConfigError("--evaluate and --resume exclude each other")
        result = evaluate_saved_run(args) if args.run.evaluate is not None else train(args)
    except ConfigError as error:
        print(f"{ALGORITHM}.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteLossError as error:
        print(f"{ALGORITHM}.py: error: {error}", file=sys.stderr)
        sys.exit(1)
    sys.exit(130 if result["interrupted"] else 0)


if __name__ == "__main__":
    main()
