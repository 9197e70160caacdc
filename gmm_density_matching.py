"""Density-matching GMM policy: a Gaussian-mixture actor that imitates the critic's Boltzmann
action density, in one file.

What it learns
--------------
Twin critics Q_1, Q_2 (TD learning with EMA targets, as in SAC) and a K-component Gaussian-mixture
actor pi(a|s). The actor is not trained to climb Q's gradient; it is fitted, by a weighted
maximum-likelihood (forward-KL, cross-entropy) step, to the density proportional to exp(Q(s,a)/T)
that the critic induces, estimated on M sampled actions per state. A mixture can put mass on
several good actions at once, which a single Gaussian cannot.

The equations this file implements (symbols: s state, a action in the env's Box, u the pre-squash
variable, d termination flag -- never truncation --, gamma discount, tau Polyak rate):

  Policy (K-component diagonal Gaussian mixture over u, squashed into the env's own bounds)
      pi(u|s) = sum_k w_k(s) N(u; mu_k(s), diag sigma_k(s)^2),   a = tanh(u) * scale + bias,
      scale = (high - low) / 2,  bias = (high + low) / 2
      log pi(a|s) = log pi(u|s) - sum_j log(scale_j * (1 - tanh(u_j)^2) + eps)                   (1)

  Actor update, per state s of the minibatch
      u_1..u_M ~ q(.|s):  gaussian N(0, I) (the source) | uniform on the box | policy pi(.|s)
                          | mixed (a fraction from pi, the rest from N(0, I)),  a_i = tanh(u_i)*scale+bias (2)
      log pi(u_i|s) = logsumexp_k [ log w_k(s) + sum_j log N(u_ij; mu_kj(s), sigma_kj(s)) ]           (3)
      Q_i = min(Q_1(s, a_i), Q_2(s, a_i)),   p_i = exp(Q_i / T) / sum_j exp(Q_j / T)                   (4)
      L_actor = -sum_i p_i log pi(u_i|s)  -  lambda * sum_k w_k(s) sum_j log sigma_kj(s)             (5)
                 (p_i carries no gradient; the tanh Jacobian of (1) does not depend on the actor's
                  parameters, so the fit is done in u-space with the same gradient as in a-space)
      importance correction (optional): p_i = softmax_i( Q_i / T - log q(a_i|s) ),                  (6)
          q(a|s) the proposal's density over actions (log q(u|s) minus the tanh Jacobian of (1))
      temperature: fixed T, or per batch the minimiser of MPO's dual
          g(T) = T * eps + T * mean_s log mean_i exp(Q_i / T),   i.e.  mean_s KL(p || uniform) = eps  (7)

  Acting
      k ~ Cat(w(s)),  u ~ N(mu_k(s), sigma_k(s)),  a = tanh(u) * scale + bias;
      deterministic (evaluation): a = tanh(mu_k*(s)) * scale + bias,  k* = argmax_k w_k(s)           (8)

  Critics (twin, fused into one batched matmul per layer; first layer split for the M-sample pass)
      W [s; a] + b = (W_s s + b) + W_a a : W_s s + b once per state, broadcast over the M actions    (9)
      y = r + gamma * (1 - d) * ( min(Q'_1(s', a'), Q'_2(s', a')) - alpha * log pi(a'|s') ),
          a' ~ pi(.|s'),  alpha = 0 by default (the source writes no entropy term)                  (10)
      L_Q = mean_batch (Q_1(s, a) - y)^2 + mean_batch (Q_2(s, a) - y)^2                            (11)
      theta' <- (1 - tau) theta' + tau theta   after every critic update                            (12)

The proposal pitfall (why eq. (6) and the non-source proposals exist)
---------------------------------------------------------------------
Self-normalised weights on samples from q fit the density q(a) * exp(Q/T), not exp(Q/T). With the
source's q = N(0, I) over u that is exp(Q/T) times the tanh-image of N(0, I): a prior of fixed
width pulling the policy to the box centre, whose pull grows with T. `uniform` has a constant
q(a), so its target is exactly exp(Q/T) over the box. With q = pi_old (`policy`) the target is
MPO's E-step, pi_old * exp(Q/T): each update tilts the current policy towards higher Q. The
correction (6) makes the target exactly exp(Q/T) for any proposal (self-normalised importance
sampling), at the price of a smaller effective sample size. In 17 dimensions (Humanoid) a fixed N(0, I) leaves the weights close to
one-hot (ESS ~ 1, logged as losses/ess), which is why MPO samples from the policy. The scale of Q
grows by orders of magnitude during training, so a fixed T slides from "uniform weights" to
"argmax"; the KL-bounded T of eq. (7) keeps the reweighting's strength constant instead.

Defaults, and why (measured; see the numbers below)
---------------------------------------------------
K = 4 (--num-components): SAC-GMM's value (haarnoja/sac). Not tuned by RL runs here. Why K > 1 at
  all: on the two-peaked toy of benchmark/gmm_toy_density.py, K = 4 puts 50% / 48% of its sampled
  mass within 0.2 of the two peaks, a single Gaussian (K = 1) only 22% / 22%.
M = 32 (--num-action-samples): the issue's benchmark setting. The update's cost is linear in M (the
  M-sample critic pass dominates); with the default proposal ESS stayed at 17-19 of 32 on
  HalfCheetah, so most samples carry weight. Not tuned.
proposal = policy, temperature = kl with eps = 0.5: on HalfCheetah the source's sampler
  (--proposal gaussian --temperature-mode fixed --temperature 1) did not move: its N(0, I) prior
  holds the deterministic action at the box centre (evaluation -3, -8: standing still). The policy
  proposal with the KL-bounded T learned (below). eps = 1.0 was not better than 0.5 and halved ESS
  (10 vs 17-19). In 1-D (Pendulum) every sampler works: all reach about -250 by 6,000 steps.
lambda = 0.01 (--entropy-coef): with the policy proposal the regulariser compounds (each fit
  inflates the variance by about 1 / (1 - lambda)); lambda = 0.05 drove every component's std to
  the upper clamp e^2 on HalfCheetah (bang-bang random actions, no learning). 0 and 0.01 both
  learned; 0.01 is kept as a guard against the collapse a forward-KL fit to sharpened targets
  invites, at a cost that one seed could not separate from 0.
The critic target has no entropy term (alpha = 0, as the source writes it).
score_dtype = float32 (--score-dtype): float32 scores throughout. bfloat16 for the scoring
  pass's hidden products is faster on some hardware only, and moves the weights p_i by a total
  variation of about 2% on a trained Pendulum critic (benchmark/score_precision.py): an option for
  speed on such hardware (README, Benchmarks), not a default whose results depend on the machine.

What was run (CPU shared with other jobs, so short runs, ONE seed each; treat them as a sanity
check of the defaults, not as a benchmark). HalfCheetah-v4, seed 1, 10,000 steps, learning from
step 2,000, hidden 128 (to fit the time), evaluation 3 episodes:
    configuration                               det. eval 5k / 10k   stoch. 10k   last train ep.  ESS
    gaussian, fixed T = 1 (the source)             -3 /   -8            -242          -237         23
    policy, kl 0.5, lambda 0.05                  -272 / -273            -287          -341         17
    policy, kl 0.5, lambda 0      (eps 0.5)      -126 / -518             -10          +277         19
    policy, kl 0.5, lambda 0.01   (default)      -124 /  +59             -79          -107         17
    policy, kl 1.0, lambda 0                     -354 /  -23             -19           +23         10
Pendulum-v1, seed 1, 6,000 steps, learning from step 1,000, hidden 64, deterministic evaluation
at 2k / 4k / 6k steps (5 episodes): gaussian fixed T=1: -1757 / -331 / -266; gaussian kl 0.5:
-1742 / -462 / -289; mixed kl 0.5: -1631 / -502 / -233; policy kl 0.5 lambda 0.05: -1553 / -1032 /
-258 (-242 at 8k). None of these HalfCheetah numbers is close to what SAC reaches in 10k steps;
longer, multi-seed runs (benchmark/sweep.py) are what should settle the defaults.

Sources: the density-matching GMM policy document (the project's source 000: GMM actor, Boltzmann
target on M standard-Gaussian samples, loss (5), twin critics with EMA targets); MPO (Abdolmaleki
et al. 2018, arXiv:1806.06920) for the policy proposal and the KL-bounded temperature; Soft
Q-learning (Haarnoja et al. 2017, arXiv:1702.08165) for the Boltzmann policy; SAC (arXiv:1801.01290)
for the critics; the file layout and metric names follow CleanRL's sac_continuous_action.py.

Run it:
    python gmm_density_matching.py --env-id Humanoid-v4 --cuda
    python gmm_density_matching.py --env-id Pendulum-v1 --total-timesteps 15000 --eval-every 2500
    python gmm_density_matching.py --env-id Hopper-v4 --proposal gaussian --temperature-mode fixed  # the source's sampler
    python gmm_density_matching.py --resume runs/Hopper-v4__gmm_density_matching__1__1700000000   # go on
"""

from __future__ import annotations

import csv
import ctypes
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
import torch.nn.functional as F
import tyro

ALGORITHM = "gmm_density_matching"


# =============================================================================================
# Arguments
# =============================================================================================
@dataclass
class Args:
    # ---- experiment ----------------------------------------------------------------------
    exp_name: str = "gmm_density_matching"
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
    """a run folder or its checkpoint.pt: continue that run (networks, optimizers, replay
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
    num_critic_updates: int = 1
    """critic gradient steps per training iteration (the update-to-data ratio); the actor takes one
    step per iteration, on the last critic batch"""
    q_lr: float = 1e-3
    """critic learning rate (CleanRL's SAC default)"""
    tau: Annotated[float, tyro.conf.arg(aliases=("--soft-target-update-rate",))] = 0.005
    """Polyak rate of the EMA target critics, eq. (12)"""
    alpha: float = 0.0
    """entropy term in the critic target, eq. (10): y uses min Q' - alpha * log pi(a'|s'). The source
    writes no entropy term (0, the default); a positive value makes the critic a soft Q-function"""

    # ---- algorithm: the GMM actor ----------------------------------------------------------
    num_components: Annotated[int, tyro.conf.arg(aliases=("-k",))] = 4
    """K, mixture components of the actor, eq. (1); 4 as in SAC-GMM (haarnoja/sac)"""
    num_action_samples: Annotated[int, tyro.conf.arg(aliases=("-m",))] = 32
    """M, actions sampled per state in the actor update, eq. (2); the M-sample critic pass is the
    cost of this algorithm (linear in M)"""
    proposal: Literal["gaussian", "uniform", "policy", "mixed"] = "policy"
    """where the M samples come from, eq. (2): gaussian = N(0, I) in u-space (the source), uniform =
    uniform on the action box, policy = the current GMM (MPO), mixed = a `proposal-mix` fraction
    from the GMM and the rest from N(0, I). `policy` is the default because the source's
    `gaussian` did not learn HalfCheetah (module docstring, "Defaults, and why")"""
    proposal_mix: float = 0.5
    """with --proposal mixed: the fraction of the M samples drawn from the policy"""
    importance_correction: bool = False
    """subtract log q(u_i) from the logits, eq. (6), so the target is exp(Q/T) itself rather than
    q(u) * exp(Q/T) (see "The proposal pitfall" in the module docstring)"""
    temperature_mode: Literal["fixed", "kl"] = "kl"
    """fixed: T = --temperature throughout (the source); kl: T set every batch by MPO's dual, eq. (7),
    so that the weights' mean KL to uniform equals --kl-bound whatever the scale of Q"""
    temperature: float = 1.0
    """T of eq. (4) with --temperature-mode fixed"""
    kl_bound: float = 0.5
    """eps of eq. (7) with --temperature-mode kl: the mean KL(p || uniform) of the weights, in nats
    (must be below log M; 0 = uniform weights, log M = one-hot)"""
    score_dtype: Literal["float32", "bfloat16"] = "float32"
    """number format of the hidden-layer products in the M-sample scoring pass, the actor update's
    main cost. bfloat16 rounds only each action's deviation from a per-state float32 reference to
    8 significant bits (CriticEnsemble.forward_many); everything else stays float32. Faster on
    hardware with bfloat16 matrix instructions (AVX512-BF16 or AMX CPUs, recent GPUs), slower where
    bfloat16 is emulated. Opt-in: it moves the weights p_i slightly (README, Benchmarks)"""
    entropy_coef: Annotated[float, tyro.conf.arg(aliases=("--lambda",))] = 0.01
    """lambda of eq. (5), the weight of the std regulariser -sum_k w_k sum_j log sigma_kj; in [0, 1):
    for one Gaussian the fitted variance is the weighted sample variance times 1 / (1 - lambda);
    0.05 pinned every std at the upper clamp on HalfCheetah with the policy proposal"""
    policy_lr: float = 3e-4
    """actor learning rate"""
    hidden_size: int = 256
    """width of every hidden layer (actor and critics)"""
    num_layers: int = 2
    """number of hidden layers (actor and critics)"""
    log_std_min: float = -5.0
    """lower bound of every component's log sigma (CleanRL's range)"""
    log_std_max: float = 2.0
    """upper bound of every component's log sigma"""

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
                "num_critic_updates", "hidden_size", "num_layers", "checkpoint_every", "log_every"]
    for name in positive:
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ["eval_every", "learning_starts", "random_steps"]:
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.num_components < 1:
        raise ConfigError(f"--num-components (K) must be >= 1, got {args.num_components}")
    if args.num_action_samples < 2:
        raise ConfigError(f"--num-action-samples (M) must be >= 2 (a softmax over one sample is "
                          f"always 1), got {args.num_action_samples}")
    if not args.temperature > 0:
        raise ConfigError(f"--temperature (T) must be > 0, got {args.temperature}")
    if not 0.0 < args.kl_bound < math.log(args.num_action_samples):
        raise ConfigError(f"--kl-bound must lie in (0, log M) = (0, {math.log(args.num_action_samples):.3f}), "
                          f"got {args.kl_bound}")
    if not 0.0 <= args.entropy_coef < 1.0:
        raise ConfigError(f"--entropy-coef (lambda) must lie in [0, 1), got {args.entropy_coef}")
    if args.proposal == "mixed" and not 1 <= round(args.proposal_mix * args.num_action_samples) < args.num_action_samples:
        raise ConfigError(f"--proposal-mix {args.proposal_mix} with M = {args.num_action_samples} must leave at "
                          "least one sample from the policy and one from N(0, I)")
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
                          "the GMM actor needs a continuous gymnasium.spaces.Box")
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
    """N independent Q(s, a) MLPs evaluated as ONE batched matmul per layer, with the first layer
    split into a state half and an action half, eq. (9).

    Layer l of all N critics is a weight tensor [N, in, out]; `torch.baddbmm` applies the N layers
    to N copies of the batch at once (the "fused critics" of LeanRL). The first layer's weight
    W = [W_s; W_a] is stored as its two blocks, W_s [N, obs_dim, h] and W_a [N, act_dim, h]:
    W [s; a] = W_s s + W_a a is the same number, and `forward_many` uses it to score M actions per
    state while computing W_s s only once per state. Initialisation is nn.Linear's law,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = obs_dim + act_dim for both halves.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_size: int, num_layers: int, num_critics: int = 2):
        super().__init__()
        self.num_critics = num_critics
        bound = 1.0 / math.sqrt(obs_dim + action_dim)
        self.weight_state = nn.Parameter(torch.empty(num_critics, obs_dim, hidden_size).uniform_(-bound, bound))
        self.weight_action = nn.Parameter(torch.empty(num_critics, action_dim, hidden_size).uniform_(-bound, bound))
        self.bias_first = nn.Parameter(torch.empty(num_critics, 1, hidden_size).uniform_(-bound, bound))
        sizes = [hidden_size] * num_layers + [1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(num_critics, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_critics, 1, fan_out).uniform_(-bound, bound)))

    def _rest(self, x: torch.Tensor) -> torch.Tensor:
        """The layers after the first: x [N, rows, h] (pre-activation of layer 1) -> [N, rows]."""
        x = F.relu(x, inplace=True)  # in place: each pre-activation is a fresh tensor nobody else reads
        for weight, bias in zip(self.weights[:-1], self.biases[:-1]):
            x = torch.baddbmm(bias, x, weight).relu_()
        # the output layer has ONE column: a multiply-and-sum over the hidden units is the same
        # dot product, and on the CPU several times faster than a batched matmul of width 1
        out_weight, out_bias = self.weights[-1], self.biases[-1]  # [N, hidden, 1], [N, 1, 1]
        return (x * out_weight.transpose(1, 2)).sum(-1) + out_bias.squeeze(-1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """obs [B, obs_dim], action [B, act_dim] -> Q values [N, B]."""
        n = self.num_critics
        x = torch.baddbmm(self.bias_first, obs.unsqueeze(0).expand(n, -1, -1), self.weight_state)
        x = torch.baddbmm(x, action.unsqueeze(0).expand(n, -1, -1), self.weight_action)
        return self._rest(x)

    @torch.no_grad()
    def forward_many(self, obs: torch.Tensor, actions: torch.Tensor, chunk_rows: int = 1024,
                     matmul_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """obs [B, obs_dim], actions [B, M, act_dim] (M actions per state) -> Q values [N, B, M].

        Only used to score the M proposals (the weights p_i carry no gradient), hence no_grad and
        in-place activations. The state half W_s s + b is computed once per state, [B, h], and
        broadcast over the M actions' halves W_a a, [M, h] per state: the first layer costs
        B*obs_dim + B*M*act_dim multiply-adds per unit instead of B*M*(obs_dim + act_dim)
        (Humanoid: 376 vs 17 inputs).

        With B*M rows (8,192 for B=256, M=32) each activation is 8 MB: too big for the CPU's cache,
        so every ReLU and bias add would be a trip to main memory, and allocating fresh 8 MB
        tensors each update made glibc return them to the OS and fault them in again. Running the
        rows in blocks of whole states, about `chunk_rows` rows each (1 MB activations), keeps
        every block in cache and reuses two small buffers; one 2-D matmul per critic and block runs
        faster here than a `baddbmm` over the stacked critics. Measured on Humanoid shapes, 2 threads:
        21-27 ms for the unblocked pass vs 18-20 ms blocked (and ~36 ms with fresh 8 MB tensors).

        `matmul_dtype=torch.bfloat16` (`--score-dtype`; None keeps the input's dtype) runs the
        hidden -> hidden products, nearly all of the pass's arithmetic, in bfloat16, but not on
        the activations themselves. Each state gets a float32 reference: the critic's activations
        r_k at the state's MEAN action (B rows, cheap). A layer's product is split as
            relu(P) W + b = (relu(P) - r) W + (r W + b),
        the second term exact in float32 and only the deviation relu(P) - r = max(P - r, -r)
        rounded to bfloat16. The deviations are as small as the M actions are close, so the
        rounding scales with the differences between the M scores, which is all the weights p_i
        see, not with the size of Q. On trained Pendulum critics this moves the weights by a total
        variation of about 0.02 (benchmark/results/score_precision_pendulum.txt); a development
        version that rounded the activations themselves moved them by 0.22-0.29, and
        tests/test_gmm_math.py shows that difference on a toy critic. The references cost one
        B-row float32 pass per critic.
        """
        b, m, a = actions.shape
        n, hidden = self.num_critics, self.bias_first.shape[-1]
        matmul_dtype = matmul_dtype or obs.dtype
        low_precision = matmul_dtype != obs.dtype
        states_per_block = max(1, chunk_rows // m)
        block_rows = min(b, states_per_block) * m
        buffers = [torch.empty(block_rows, hidden, device=obs.device, dtype=obs.dtype) for _ in range(2)]
        if low_precision:  # a block's rounded deviations, and their product
            low_buffers = [torch.empty(block_rows, hidden, device=obs.device, dtype=matmul_dtype) for _ in range(2)]
        actions_2d = actions.reshape(b * m, a)
        values = torch.empty(n, b * m, device=obs.device, dtype=obs.dtype)
        for c in range(n):
            # this critic's weights, taken out of the stacked tensors once (not once per block)
            weight_action, out_weight, out_values = self.weight_action[c], self.weights[-1][c, :, 0], values[c]
            hidden_layers = [(weight[c], bias[c]) for weight, bias in zip(self.weights[:-1], self.biases[:-1])]
            state_half = torch.addmm(self.bias_first[c], obs, self.weight_state[c])  # [B, h]
            if low_precision:
                # the references r_k, layer by layer, and what each block adds to its products
                reference = (state_half + actions.mean(dim=1) @ weight_action).relu()  # r_0 [B, h]
                first_offset = state_half - reference  # P_0 - r_0 = W_a a + (state half - r_0)
                floors, offsets = [], []
                for k, (weight, bias) in enumerate(hidden_layers):
                    floors.append(-reference)
                    pre_activation = torch.addmm(bias, reference, weight)  # r_k W_k + b_k
                    reference = pre_activation.relu()  # r_{k+1}
                    offsets.append(pre_activation if k == len(hidden_layers) - 1 else pre_activation - reference)
                low_weights = [weight.to(matmul_dtype) for weight, _ in hidden_layers]
            for first in range(0, b, states_per_block):
                last = min(first + states_per_block, b)
                rows, states = slice(first * m, last * m), slice(first, last)
                x, free = (buffers if last - first == states_per_block else
                           [buffer[:(last - first) * m] for buffer in buffers])  # a shorter last block
                x = torch.mm(actions_2d[rows], weight_action, out=x)
                if not low_precision:
                    x.view(last - first, m, hidden).add_(state_half[states, None]).relu_()
                    for weight, bias in hidden_layers:  # hidden -> hidden layers, ping-ponging the buffers
                        x, free = torch.addmm(bias, x, weight, out=free).relu_(), x
                else:
                    deviation, product = [buffer[:(last - first) * m].view(last - first, m, hidden)
                                          for buffer in low_buffers]
                    x.view(last - first, m, hidden).add_(first_offset[states, None])  # P_0 - r_0
                    for k, weight_low in enumerate(low_weights):
                        # relu(P_k) - r_k = max(P_k - r_k, -r_k), rounded to bfloat16 as it is stored
                        torch.maximum(x.view(last - first, m, hidden), floors[k][states, None], out=deviation)
                        torch.mm(deviation.view(-1, hidden), weight_low, out=product.view(-1, hidden))
                        # + (r_k W_k + b_k) = P_{k+1} in float32; minus r_{k+1} except after the last
                        torch.add(product, offsets[k][states, None], out=free.view(last - first, m, hidden))
                        x, free = free, x
                    x.relu_()
                # the output layer has one column: a matrix-vector product into the result
                torch.mv(x, out_weight, out=out_values[rows])
        return values.add_(self.biases[-1].view(n, 1)).view(n, b, m)


class GMMActor(nn.Module):
    """K-component diagonal Gaussian mixture over u, squashed by tanh into the env's box, eq. (1).

    One MLP trunk emits, per state, K mixture logits, K means and K log-stds (each act_dim wide).
    The log-stds are squashed smoothly into [log_std_min, log_std_max] (CleanRL's tanh trick: no
    dead gradient at a hard clamp). The action scale and bias are buffers, so they move with
    `.to(device)` and are saved in the checkpoint.
    """

    def __init__(self, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray, hidden_size: int,
                 num_layers: int, num_components: int, log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__()
        self.action_dim = int(np.prod(action_low.shape))
        self.num_components = num_components
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.net = mlp(obs_dim, num_components * (1 + 2 * self.action_dim), hidden_size, num_layers)
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)

    def distribution_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log w(s) [B, K] (normalised: logsumexp = 0), mu(s) [B, K, A], log sigma(s) [B, K, A]."""
        k, a = self.num_components, self.action_dim
        logits, mean, raw_log_std = self.net(obs).split([k, k * a, k * a], dim=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(raw_log_std) + 1)
        return F.log_softmax(logits, dim=-1), mean.unflatten(-1, (k, a)), log_std.unflatten(-1, (k, a))

    def squash(self, u: torch.Tensor) -> torch.Tensor:
        """a = tanh(u) * scale + bias."""
        return torch.tanh(u) * self.action_scale + self.action_bias

    def log_jacobian(self, u: torch.Tensor) -> torch.Tensor:
        """log |da/du| = sum_j log(scale_j (1 - tanh(u_j)^2) + eps), eq. (1); eps keeps it finite."""
        return torch.log(self.action_scale * (1 - torch.tanh(u).pow(2)) + 1e-6).sum(-1)

    def sample_u(self, params: tuple, num_samples: int,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """u ~ pi(.|s), eq. (8): k ~ Cat(w(s)), u = mu_k + sigma_k * eps. -> [B, num_samples, A].

        Used without gradient (acting, the critic target, the `policy` proposal): the loss of
        eq. (4) needs log pi at given samples, never a path derivative through them.
        """
        log_w, mean, log_std = params
        # k ~ Cat(w) by inverting the CDF: one uniform r per draw, k = #{j < K-1 : r > w_0+...+w_j}.
        # Unlike torch.multinomial it never syncs with the host or raises on bad weights (NaN
        # weights give k = 0, and the NaN reaches the losses, where the NaN check stops the run),
        # and it needs one random number per draw where the Gumbel-max trick needs K
        cumulative = log_w.exp().cumsum(dim=-1)[:, :-1]  # [B, K-1]; the last (=1) is never passed
        uniform = torch.rand(log_w.shape[0], num_samples, 1, generator=generator, device=log_w.device,
                             dtype=log_w.dtype)
        k = (uniform > cumulative.unsqueeze(1)).sum(dim=-1)  # [B, M], in 0..K-1
        index = k.unsqueeze(-1).expand(-1, -1, self.action_dim)
        noise = torch.randn(index.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean.gather(1, index) + log_std.gather(1, index).exp() * noise

    def sample(self, obs: torch.Tensor, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw a ~ pi(.|s); return (action [B, A], log pi(a|s) [B]) with the tanh correction, eq. (1)."""
        params = self.distribution_params(obs)
        u = self.sample_u(params, 1, generator)  # [B, 1, A]
        log_prob = gmm_log_prob(u, *params).squeeze(1) - self.log_jacobian(u.squeeze(1))
        return self.squash(u.squeeze(1)), log_prob

    @torch.no_grad()
    def act(self, obs: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A ~ pi(.|s) without log pi: what acting and the entropy-free target (10) need. Draws the
        same random numbers as `sample`, so either gives the same action."""
        return self.squash(self.sample_u(self.distribution_params(obs), 1, generator).squeeze(1))

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The evaluation action, eq. (8): squash(mu_k*(s)) with k* = argmax_k w_k(s)."""
        log_w, mean, _ = self.distribution_params(obs)
        k_star = log_w.argmax(dim=-1)
        return self.squash(mean[torch.arange(mean.shape[0], device=mean.device), k_star])


# ---- ALGO LOGIC: the pure math of the actor update (each function is one equation) ----------
class SquaredMahalanobis(torch.autograd.Function):
    """sum_j ((u_j - mu_kj) / sigma_kj)^2 for every point i and component k, with its gradient
    written out: u [B, M, A], mean [B, K, A], inv_std = 1/sigma [B, K, A] -> [B, M, K].

    The same numbers as the one-line formula, but with the [B, M, K, A] tensors (557k numbers at
    Humanoid's sizes, K=4, M=32) touched 5 times forward and backward instead of autograd's ~11:
    with z = (u - mu) * inv_std and upstream gradient g [B, M, K],
        d/d mu_kj      = -2 inv_std_kj sum_i g_ik z_ikj
        d/d inv_std_kj =  2 sum_i g_ik z_ikj^2 / inv_std_kj      (as dz/d inv_std = u - mu = z / inv_std)
        d/d u_ij       =  2 sum_k g_ik z_ikj inv_std_kj          (only when u requires a gradient)
    so the backward needs only g * z and its products, summed over the M points (measured, B=256,
    M=32, K=4, A=17, 2 threads: 2.2 ms for the log-density forward and backward vs 4.1 ms).
    tests/test_gmm_math.py checks it with torch.autograd.gradcheck in float64.
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor) -> torch.Tensor:
        z = (u.unsqueeze(-2) - mean.unsqueeze(-3)).mul_(inv_std.unsqueeze(-3))  # [B, M, K, A]
        ctx.save_for_backward(z, inv_std)
        return z.pow(2).sum(-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
        z, inv_std = ctx.saved_tensors
        grad_z = z * grad.unsqueeze(-1)  # g_ik z_ikj, [B, M, K, A]
        grad_u = None
        if ctx.needs_input_grad[0]:  # the actor's proposals never need it; kept for correctness
            grad_u = 2.0 * (grad_z * inv_std.unsqueeze(-3)).sum(dim=-2)
        grad_mean = -2.0 * grad_z.sum(dim=-3) * inv_std
        grad_inv_std = 2.0 * grad_z.mul_(z).sum(dim=-3) / inv_std
        return grad_u, grad_mean, grad_inv_std


def gmm_log_prob(u: torch.Tensor, log_w: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log pi(u|s) = logsumexp_k [ log w_k + sum_j log N(u_j; mu_kj, sigma_kj) ], eq. (3).

    u [B, M, A] (M points per state), log_w [B, K], mean / log_std [B, K, A] -> [B, M].
    The density of u, not of a: the tanh Jacobian does not depend on the actor's parameters, so
    fitting in u-space has the same gradient as fitting in a-space.
    """
    mahalanobis = SquaredMahalanobis.apply(u, mean, torch.exp(-log_std))  # [B, M, K]
    log_normal = -0.5 * mahalanobis - log_std.sum(-1).unsqueeze(-2) - 0.5 * u.shape[-1] * math.log(2 * math.pi)
    return torch.logsumexp(log_w.unsqueeze(-2) + log_normal, dim=-1)


def gaussian_proposal(batch_size: int, num_samples: int, action_dim: int, device: torch.device,
                      generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The source's proposal, eq. (2): u ~ N(0, I) in the pre-squash space. -> (u [B, M, A], log q(u) [B, M])."""
    u = torch.randn(batch_size, num_samples, action_dim, generator=generator, device=device)
    return u, -0.5 * u.pow(2).sum(-1) - 0.5 * action_dim * math.log(2 * math.pi)


def uniform_proposal(batch_size: int, num_samples: int, action_dim: int, device: torch.device,
                     generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniform on the action box, eq. (2): v = tanh(u) ~ U(-1, 1)^A, u = atanh(v).

    Density of u: q(u) = prod_j (1 - tanh(u_j)^2) / 2. v is kept 1e-4 inside the box so u is finite.
    """
    v = (torch.rand(batch_size, num_samples, action_dim, generator=generator, device=device) * 2 - 1) * (1 - 1e-4)
    u = torch.atanh(v)
    return u, torch.log((1 - v.pow(2)) / 2).sum(-1)


def boltzmann_weights(q_values: torch.Tensor, temperature: torch.Tensor | float,
                      log_proposal: Optional[torch.Tensor] = None) -> torch.Tensor:
    """p_i = softmax_i(Q_i / T), eq. (4); with log_proposal, softmax_i(Q_i / T - log q(u_i)), eq. (6).

    q_values [B, M] -> weights [B, M] summing to 1 over M. Computed without gradient: p is the
    target the actor imitates, a constant in eq. (5).
    """
    logits = q_values / temperature
    if log_proposal is not None:
        logits = logits - log_proposal
    return torch.softmax(logits.detach(), dim=-1)


@torch.no_grad()
def kl_temperature(q_values: torch.Tensor, kl_bound: float, rounds: int = 5, grid: int = 7) -> torch.Tensor:
    """T minimising MPO's dual g(T) = T eps + T mean_s log mean_i exp(Q_i / T), eq. (7).

    dg/dT = eps - mean_s KL(softmax(Q/T) || uniform), and that KL falls monotonically from
    ~log M (T -> 0, one-hot) to 0 (T -> inf), so the minimiser is the T whose weights have mean KL
    exactly eps. A bracketing search on log T finds it without a host sync (no `.item()`, no
    data-dependent branch). The bracket starts at the batch's Q spread times e^{+-12}; each round
    evaluates the KL at `grid` evenly spaced log T inside it in ONE batched pass and keeps the
    sub-interval where the KL crosses eps, shrinking it (grid + 1) = 8-fold. Five rounds leave a
    24 / 8^5 = 7e-4 wide bracket in log T (T within 0.04%) in ~50 tensor ops, where bisection
    needs ~300 small ones for the same width (measured, B=256, M=32, 2 threads: 1.3-1.5 ms vs
    2.0 ms; the exp/log of the softmax dominate, so wider grids cost more than they save).
    q_values [B, M] -> scalar T.
    """
    m = q_values.shape[-1]
    spread = (q_values.max(dim=-1).values - q_values.min(dim=-1).values).mean().clamp_min(1e-6)
    low, high = spread.log() - 12.0, spread.log() + 12.0
    fractions = torch.arange(1, grid + 1, device=q_values.device, dtype=q_values.dtype) / (grid + 1)
    for _ in range(rounds):
        log_t = low + (high - low) * fractions  # [G], increasing
        log_p = torch.log_softmax(q_values.unsqueeze(0) / log_t.exp().view(-1, 1, 1), dim=-1)  # [G, B, M]
        kl = (log_p.exp() * (log_p + math.log(m))).sum(-1).mean(-1)  # [G], decreasing in T
        # the too-sharp points (weights further from uniform than eps: T must grow) are a prefix;
        # their count says which neighbouring pair of points brackets the solution
        count = (kl > kl_bound).sum().view(1)
        points = torch.cat([low.view(1), log_t, high.view(1)])  # [G + 2]
        low, high = points.index_select(0, count).squeeze(0), points.index_select(0, count + 1).squeeze(0)
    return (0.5 * (low + high)).exp()


def density_matching_loss(log_pi: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """L_KL = -sum_i p_i log pi(u_i|s), eq. (5), averaged over states. log_pi, weights [B, M]."""
    return -(weights.detach() * log_pi).sum(-1).mean()


def entropy_regulariser(log_w: torch.Tensor, log_std: torch.Tensor, coefficient: float) -> torch.Tensor:
    """L_ent = -lambda * sum_k w_k(s) sum_j log sigma_kj(s), eq. (5), averaged over states.

    Negative sign: minimising it RAISES the stds (weighted by the mixture weights), which keeps
    the fit from collapsing onto the few samples that carry the weight. log_w [B, K], log_std [B, K, A].
    """
    return -coefficient * (log_w.exp() * log_std.sum(-1)).sum(-1).mean()


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    """ESS = 1 / sum_i p_i^2, averaged over states: M for uniform weights, 1 for one-hot."""
    return (1.0 / weights.pow(2).sum(-1)).mean()


def td_target(rewards: torch.Tensor, terminations: torch.Tensor, next_q_min: torch.Tensor,
              next_log_prob: torch.Tensor | float, alpha: float, gamma: float) -> torch.Tensor:
    """y = r + gamma * (1 - d) * (min_i Q'_i(s', a') - alpha * log pi(a'|s')), eq. (10). Shapes [B]."""
    return rewards + gamma * (1.0 - terminations) * (next_q_min - alpha * next_log_prob)


def critic_loss(q_values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """eq. (11): sum over the critics of the mean squared TD error. q_values [N, B], target [B]."""
    return (q_values - target).pow(2).mean(dim=1).sum()


@torch.no_grad()
def update_target(source: nn.Module, target: nn.Module, tau: float) -> None:
    """theta' <- (1 - tau) theta' + tau theta, eq. (12).
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
RESUME_MUST_MATCH = ("env_id", "num_envs", "buffer_size", "hidden_size", "num_layers", "num_components",
                     "num_action_samples", "proposal", "importance_correction", "temperature_mode", "seed")


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
def evaluate(actor: GMMActor, env: gym.Env, episodes: int, seed: int, deterministic: bool,
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
                action = actor.act(obs_t, generator=generator)
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


def keep_freed_memory_in_process() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    Every actor update allocates and frees tensors of a few MB ([B, M, K, A] = 2.2 MB at Humanoid's
    sizes, K=4, M=32). By default glibc serves blocks that size with mmap, or trims them off the
    heap when freed, so the next update page-faults the same memory in again, zero-filled by the
    kernel each time. On the 2-core test VM that cost about a third of the update (Humanoid shapes,
    2 threads: 57 ms per update by default, 41 ms with this; SAC's smaller tensors showed no
    difference). Raising the mmap and trim thresholds gives what jemalloc or tcmalloc (the
    allocators PyTorch's CPU performance guide recommends) do by design. Returns whether it applied:
    a no-op where the C library is not glibc (macOS, Windows, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h> constants
    applied = mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's maximum: bigger blocks still use mmap
    applied &= mallopt(m_trim_threshold, 1024 * 1024 * 1024)  # trim only when 1 GB lies free at the top
    return bool(applied)


def pick_device(want_cuda: bool) -> torch.device:
    if want_cuda and torch.cuda.is_available():
        return torch.device("cuda")
    if want_cuda:
        print("notice: --cuda was given but CUDA is not available; training on the CPU", file=sys.stderr)
    return torch.device("cpu")


# =============================================================================================
# ALGO LOGIC: the agent (networks + optimizers + one gradient step of each part)
# =============================================================================================
class GMMAgent:
    """GMM actor, twin critics, their EMA targets and optimizers, with the update steps.

    The updates return loss tensors without calling `.item()`: reading a GPU value forces a host
    sync, so the training loop only converts them when it logs.
    """

    def __init__(self, args: Args, obs_dim: int, action_space: gym.spaces.Box, device: torch.device):
        self.args, self.device = args, device
        self.action_dim = int(np.prod(action_space.shape))
        self.actor = GMMActor(obs_dim, action_space.low, action_space.high, args.hidden_size, args.num_layers,
                              args.num_components, args.log_std_min, args.log_std_max).to(device)
        self.critics = CriticEnsemble(obs_dim, self.action_dim, args.hidden_size, args.num_layers).to(device)
        self.target_critics = CriticEnsemble(obs_dim, self.action_dim, args.hidden_size, args.num_layers).to(device)
        self.target_critics.load_state_dict(self.critics.state_dict())
        self.target_critics.requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.policy_lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critics.parameters(), lr=args.q_lr, fused=True)
        # the M proposal samples of the actor update have their own generator, checkpointed
        self.proposal_generator = torch.Generator(device=device)
        self.proposal_generator.manual_seed(args.seed + 7)

    def critic_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One gradient step of eq. (11) on the TD target (10), then the EMA of the targets (12)."""
        args = self.args
        with torch.no_grad():
            if args.alpha > 0:
                next_actions, next_log_prob = self.actor.sample(batch["next_obs"])
            else:  # the source's target has no entropy term: log pi(a'|s') is not needed
                next_actions, next_log_prob = self.actor.act(batch["next_obs"]), 0.0
            next_q = self.target_critics(batch["next_obs"], next_actions).min(dim=0).values
            target = td_target(batch["rewards"], batch["terminations"], next_q, next_log_prob, args.alpha, args.gamma)
        q_values = self.critics(batch["obs"], batch["actions"])
        loss = critic_loss(q_values, target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()
        update_target(self.critics, self.target_critics, args.tau)
        # the per-critic losses and mean Q are only logged every log_every steps: `loss_scalars`
        # derives them from these two tensors then, instead of every update
        return {"critic_loss": loss.detach(), "q_values": q_values.detach(), "td_target": target}

    def propose(self, obs: torch.Tensor, params: tuple) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The M samples u_i of eq. (2) for every state, and, when the importance correction (6)
        needs it, the log-density of the proposal over ACTIONS, log q(a_i|s) = log q(u_i|s) -
        log |da/du|(u_i): the target of (6) is then exp(Q(s, a)/T) as a density over the action box,
        the Boltzmann policy itself. -> (u [B, M, A], log q(a|s) [B, M] or None)."""
        args, generator = self.args, self.proposal_generator
        b, m, a = obs.shape[0], args.num_action_samples, self.action_dim
        need_log_q = args.importance_correction
        if args.proposal == "gaussian":
            u, log_q = gaussian_proposal(b, m, a, obs.device, generator)
        elif args.proposal == "uniform":
            u, log_q = uniform_proposal(b, m, a, obs.device, generator)
        else:
            detached = tuple(p.detach() for p in params)
            # `policy`: all M from pi_old; `mixed`: the first round(mix * M) from pi_old, the rest N(0, I)
            m_policy = m if args.proposal == "policy" else round(args.proposal_mix * m)
            u = self.actor.sample_u(detached, m_policy, generator)
            if m_policy < m:
                u = torch.cat([u, gaussian_proposal(b, m - m_policy, a, obs.device, generator)[0]], dim=1)
            log_q = None
            if need_log_q:
                log_q = gmm_log_prob(u, *detached)
                if m_policy < m:  # the sample set is a stratified draw from the mixture q = f pi + (1-f) N(0, I)
                    f = m_policy / m
                    log_gauss = -0.5 * u.pow(2).sum(-1) - 0.5 * a * math.log(2 * math.pi)
                    log_q = torch.logaddexp(log_q + math.log(f), log_gauss + math.log(1 - f))
        if not need_log_q:
            return u, None
        return u, log_q - self.actor.log_jacobian(u)  # from a density over u to one over a, eq. (1)

    def actor_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One gradient step of the density-matching loss, eqs. (2)-(7)."""
        args = self.args
        obs = batch["obs"]
        params = self.actor.distribution_params(obs)
        with torch.no_grad():
            u, log_q = self.propose(obs, params)  # eq. (2)
            # Q_i = min(Q_1, Q_2)(s, a_i): the M-sample critic pass, state half computed once (9)
            q = self.critics.forward_many(obs, self.actor.squash(u), matmul_dtype=getattr(torch, args.score_dtype))
            q = q.min(dim=0).values  # [B, M]
            # eq. (7); the KL bound measures the reweighting by exp(Q/T) alone, before any correction
            temperature = (kl_temperature(q, args.kl_bound) if args.temperature_mode == "kl"
                           else torch.tensor(args.temperature, device=obs.device))
            weights = boltzmann_weights(q, temperature, log_q)  # eqs. (4), (6)
        log_pi = gmm_log_prob(u, *params)  # eq. (3), with gradient into w, mu, sigma
        kl_loss = density_matching_loss(log_pi, weights)
        ent_loss = entropy_regulariser(params[0], params[2], args.entropy_coef)
        loss = kl_loss + ent_loss  # eq. (5)
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_optimizer.step()

        # the diagnostics (ESS, mixture entropy, component stds, Q spread) are only logged every
        # log_every steps: `loss_scalars` derives them from these tensors then, not every update
        log_w, _, log_std = params
        return {"actor_loss": loss.detach(), "kl_loss": kl_loss.detach(), "entropy_reg": ent_loss.detach(),
                "temperature": temperature.detach(), "weights": weights, "sample_q": q,
                "log_w": log_w.detach(), "log_std": log_std.detach()}

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critics": self.critics.state_dict(),
                "target_critics": self.target_critics.state_dict(),
                "actor_optimizer": self.actor_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(),
                "proposal_generator": self.proposal_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critics.load_state_dict(state["critics"])
        self.target_critics.load_state_dict(state["target_critics"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.proposal_generator.set_state(state["proposal_generator"])


def crossed(step_before: int, step_after: int, every: int) -> bool:
    """True when a multiple of `every` lies in (step_before, step_after]: with N envs the step
    counter moves N at a time and may jump over the exact multiple."""
    return every > 0 and step_after // every > step_before // every


# =============================================================================================
# The training run
# =============================================================================================
def train(args: Args) -> dict:
    """Run (or resume) one density-matching training run; return its final figures (also in summary.json)."""
    action_space = validate_args(args)  # ConfigError before any work
    device = pick_device(args.cuda)
    checkpoint = load_compatible_checkpoint(args, device) if args.resume else None
    if args.capture_video and "DISPLAY" not in os.environ:
        os.environ.setdefault("MUJOCO_GL", "osmesa")  # headless MuJoCo rendering
    keep_freed_memory_in_process()  # the update's MB-sized temporaries stay mapped (see there)

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

    agent = GMMAgent(args, obs_dim, action_space, device)
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


def loss_scalars(losses: dict[str, torch.Tensor], agent: GMMAgent) -> dict[str, float]:
    """The CleanRL-named scalars of the latest update (the only place losses leave the device),
    plus the density-matching diagnostics: ESS, mixture entropy, per-component stds, Q spread, T."""
    q_values, target = losses["q_values"], losses["td_target"]
    per_critic = (q_values - target).pow(2).mean(dim=1).tolist()
    q_means = q_values.mean(dim=1).tolist()
    scalars = {f"losses/qf{i + 1}_loss": value for i, value in enumerate(per_critic)}
    scalars.update({f"losses/qf{i + 1}_values": value for i, value in enumerate(q_means)})
    scalars["losses/qf_loss"] = float(losses["critic_loss"]) / len(per_critic)
    scalars["losses/actor_loss"] = float(losses["actor_loss"])
    scalars["losses/kl_loss"] = float(losses["kl_loss"])
    scalars["losses/entropy_reg"] = float(losses["entropy_reg"])
    log_w, log_std = losses["log_w"], losses["log_std"]
    scalars["losses/ess"] = float(effective_sample_size(losses["weights"]))
    scalars["losses/mixture_entropy"] = float(-(log_w.exp() * log_w).sum(-1).mean())
    component_std = log_std.exp().mean(dim=(0, 2))  # [K], averaged over states and action dims
    scalars.update({f"losses/component_std_{k}": value for k, value in enumerate(component_std.tolist())})
    scalars["losses/q_spread"] = float(losses["sample_q"].std(dim=-1).mean())  # Q's spread across the M samples
    scalars["losses/temperature"] = float(losses["temperature"])
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
