"""POSAC: a JKO chain of Soft Actor-Critic actors with a closed-form W2 term, in one file.

What it learns
--------------
N tanh-Gaussian actors pi_0..pi_{N-1} and one twin critic, trained together from one replay buffer.
Actor 0 is a plain SAC actor: it collects the data and the critic bootstraps from it. Actor i >= 1
is one implicit-Euler (JKO, Jordan-Kinderlehrer-Otto) step of a Wasserstein gradient flow that
starts at actor i-1: it climbs the same Q but pays w_i * W2^2 for moving away from its predecessor,
which is a fixed reference for that step (no gradient reaches actor i-1 from actor i's loss).
With --num-actors 1 the file is plain SAC with a fixed (or autotuned) temperature.

The equations this file implements (symbols: s state, u the pre-squash variable, a action in the
env's Box, d termination flag -- never truncation --, gamma discount, tau Polyak rate, sg stop-grad):

  Policy i (tanh-squashed diagonal Gaussian, scaled to the env's own bounds, as in SAC)
      u ~ N(mu_i(s), diag sigma_i(s)^2),   a = tanh(u) * scale + bias,
      scale = (high - low) / 2,  bias = (high + low) / 2
      log pi_i(a|s) = log N(u; mu_i, sigma_i) - sum_j log(scale_j * (1 - tanh(u_j)^2) + eps)     (1)

  Critic target (twin critics, clipped double-Q; the next action comes from the ONLINE actor 0)
      y = r + gamma * (1 - d) * ( min_k Q'_k(s', a'_0) - alpha * log pi_0(a'_0|s') ),
      a'_0 ~ pi_0(.|s')                                                                          (2)
      L_Q = sum_k mean_batch (Q_k(s, a) - y)^2                                                   (3)

  Closed-form W2 between diagonal Gaussians, on the pre-squash parameters
      W2^2(N(mu, sigma), N(mu', sigma')) = |mu - mu'|^2 + |sigma - sigma'|^2                      (4)
      This is exact for the Gaussians over u. The map u -> tanh(u) * scale + bias is Lipschitz with
      constant max_j scale_j (tanh is 1-Lipschitz), so on actions
      W2(pi_i, pi_{i-1}) <= max_j scale_j * W2(u-Gaussians): eq. (4) is a pre-squash proximal term
      that bounds the action-space distance from above; it is not the action-space W2 itself.

  Actors (reparametrized: a~_i = squash(mu_i + sigma_i * eps), eps ~ N(0, I))
      L_0 = E_s[ alpha * log pi_0(a~_0|s) - min_k Q_k(s, a~_0) ]                 (plain SAC)    (5)
      L_i = E_s[ -lambda_i * min_k Q_k(s, a~_i) + w_i * W2^2(pi_i(.|s), sg(pi_{i-1}(.|s)))
                 + alpha * log pi_i(a~_i|s) ],   i >= 1                                          (6)
      lambda_i = lambda_q (fixed), or with --normalize-q (TD3+BC style)
      lambda_i = lambda_q / sg(mean_batch |min_k Q_k(s, a~_i)|)                                   (7)
      The source writes "+ alpha * H(pi_i)"; minimising that would shrink the entropy. The SAC sign
      (+ alpha * log pi, i.e. maximise entropy) is what is meant and what is implemented.
      All N losses are summed into one backward pass: each actor's parameters only reach its own
      term (the predecessor is detached and the critics are frozen), so this equals N separate steps.

  Temperature (only with --autotune; fitted on actor 0, shared by every actor)
      L_alpha = -log_alpha * sg(log pi_0(a|s) + target_entropy),  target_entropy = -dim(A)        (8)

  Target critics
      theta' <- (1 - tau) theta' + tau theta   after every critic update                          (9)

Sources: the POSAC document (POGO, "Policy Optimization as a Gradient Flow in Offline RL", carried
to online SAC), Haarnoja et al. 2018 (arXiv:1801.01290, 1812.05905) for SAC; the layout, metric
names and the tanh-Gaussian details follow this project's sac_continuous.py (CleanRL style).
The source's option names are accepted: --env-name (= --env-id), --num-steps (= --total-timesteps),
--start-steps (= --learning-starts; the random-action phase follows it), --eval-freq (evaluation
every that many training episodes, instead of --eval-every steps), --updates-per-step, --lr,
--automatic-entropy-tuning (= --autotune), and --w2-weights "0.0,0.1" as well as 0.0 0.1.

Run it:
    python posac_jko.py --env-id Hopper-v4 --num-actors 2 --w2-weights 0.0 0.1
    python posac_jko.py --env-name Humanoid-v5 --seed 123456 --num-steps 1000000 --eval-freq 10 \\
        --num-actors 2 --w2-weights "0.0,0.1" --lr 0.0003          # the source's command line
    python posac_jko.py --env-id Pendulum-v1 --total-timesteps 10000 --learning-starts 1000 \\
        --num-actors 2 --w2-weights 0.0 0.1 --eval-every 2000
    python posac_jko.py --resume runs/Hopper-v4__posac_jko__123456__1700000000   # go on
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
from typing import Annotated, Optional, Union

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro

ALGORITHM = "posac_jko"
NUM_CRITICS = 2  # twin critics, clipped double-Q (the source's QNetwork has two heads)


# =============================================================================================
# Arguments
# =============================================================================================
@dataclass
class Args:
    # ---- experiment ----------------------------------------------------------------------
    exp_name: str = "posac_jko"
    """name of this experiment; the run folder is {env_id}__{exp_name}__{seed}__{unix_time}"""
    seed: int = 123456
    """seed of the experiment (torch, numpy, python, replay sampling and the environments);
    the source's default"""
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
    """record the first deterministic evaluation episode of each actor at each evaluation to
    `videos/` (needs moviepy; MuJoCo renders headless with MUJOCO_GL=osmesa)"""
    output_dir: str = "runs"
    """where run folders are created"""
    resume: Optional[str] = None
    """a run folder or its checkpoint.pt: continue that run (every actor, the critics, every
    optimizer, alpha, the replay buffer, RNG states and counters are restored; the environment
    cannot be saved, so the episode that was running when the checkpoint was written restarts from
    a fresh reset). The other arguments must describe the same run (same env, actors, W2 weights,
    network and buffer shapes); `--total-timesteps` may be raised to train further."""
    checkpoint_every: int = 50_000
    """write checkpoint.pt every this many env steps (and always at the end and on Ctrl-C)"""

    # ---- environment ---------------------------------------------------------------------
    env_id: Annotated[str, tyro.conf.arg(aliases=("--env-name",))] = "Humanoid-v5"
    """the gymnasium environment id (any env with a Box action space); the source's --env-name"""
    total_timesteps: Annotated[int, tyro.conf.arg(aliases=("--num-steps",))] = 1_000_000
    """total environment steps (summed over the vectorized environments); the source's --num-steps"""
    num_envs: int = 1
    """parallel environments for data collection (one training iteration per vector step, as in
    CleanRL and SB3: with N envs the update-to-data ratio is updates_per_step / N)"""
    eval_every: int = 10_000
    """evaluate every this many env steps (0: only the final evaluation); ignored with --eval-freq"""
    eval_freq_episodes: Annotated[Optional[int], tyro.conf.arg(aliases=("--eval-freq",))] = None
    """the source's --eval-freq: evaluate every this many finished training episodes (the source
    uses 10) instead of every --eval-every steps"""
    eval_episodes: int = 10
    """episodes per evaluation, per actor, run once deterministically (tanh(mu)) and once
    stochastically"""

    # ---- algorithm: replay and schedule ---------------------------------------------------
    buffer_size: int = 1_000_000
    """replay buffer capacity (transitions)"""
    batch_size: int = 256
    """minibatch size of every gradient step"""
    gamma: float = 0.99
    """discount factor"""
    learning_starts: Annotated[int, tyro.conf.arg(aliases=("--start-steps",))] = 10_000
    """env steps before the first gradient update; the source's --start-steps, which also ends the
    uniformly random actions (see --random-steps)"""
    random_steps: Optional[int] = None
    """env steps taken with uniformly random actions before actor 0 acts (None: the same as
    --learning-starts, as the source's start_steps does both)"""
    updates_per_step: int = 1
    """gradient updates per env step (per vector step); each update is one critic step, eq. (3),
    then one step of every actor, eqs. (5)-(6), on the same batch (the source's updates_per_step)"""
    lr: float = 3e-4
    """learning rate of the critics, of every actor and of the temperature (the source's single lr)"""
    tau: float = 0.005
    """Polyak rate of the soft target update, eq. (9)"""

    # ---- algorithm: actors and the JKO chain ------------------------------------------------
    num_actors: int = 1
    """N actors in the JKO chain; actor 0 is plain SAC and collects the data. 1 = plain SAC"""
    w2_weights: Annotated[tuple[Union[float, str], ...], tyro.conf.arg(metavar="W [W ...]")] = (0.0,)
    """one W2 weight w_i per actor, eq. (6); w_0 must be 0 (actor 0 has no predecessor). Give them
    as separate numbers (0.0 0.1) or, as the source does, one comma-separated string ("0.0,0.1")"""
    lambda_q: float = 1.0
    """lambda in eq. (6): weight of the Q term of actors i >= 1 (actor 0 keeps the plain SAC loss)"""
    normalize_q: bool = False
    """TD3+BC-style normalisation, eq. (7): lambda_i = lambda_q / mean|Q(s, a~_i)| (detached, per
    batch and per actor), so w_i means the same whatever the scale of the returns"""
    hidden_size: int = 256
    """width of every hidden layer (actors and critics)"""
    num_layers: int = 2
    """number of hidden layers (actors and critics)"""
    log_std_min: float = -5.0
    """lower bound of log sigma (CleanRL's range, as in sac_continuous.py; the source clamps at -20)"""
    log_std_max: float = 2.0
    """upper bound of log sigma"""

    # ---- algorithm: entropy ------------------------------------------------------------------
    alpha: float = 0.2
    """entropy temperature, fixed unless --autotune (the source's default 0.2)"""
    autotune: Annotated[bool, tyro.conf.arg(aliases=("--automatic-entropy-tuning",))] = False
    """tune alpha by eq. (8) on actor 0 (off in the source); autotuning starts from alpha = 1"""

    # ---- logging & outputs -----------------------------------------------------------------
    log_every: int = 1000
    """write losses to TensorBoard/metrics.csv and print the progress line every this many steps"""


class ConfigError(ValueError):
    """Bad input: reported as one line before any work starts."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite: the run stops, the last good checkpoint stays on disk."""


def parse_w2_weights(values) -> tuple[float, ...]:
    """The W2 weights as floats: accepts numbers, strings, and comma-separated strings ("0.0,0.1"
    is the source's form), in any mix. Raises ConfigError on anything that is not a number."""
    if isinstance(values, (str, int, float)):
        values = (values,)
    weights = []
    for value in values:
        parts = value.split(",") if isinstance(value, str) else [value]
        for part in parts:
            if isinstance(part, str) and not part.strip():
                continue  # "0.0,0.1," or "0.0, 0.1"
            try:
                weights.append(float(part))
            except ValueError:
                raise ConfigError(f"--w2-weights: '{part}' is not a number (give e.g. 0.0 0.1 or \"0.0,0.1\")") from None
    return tuple(weights)


def validate_args(args: Args) -> gym.spaces.Box:
    """Check every argument and the environment before any work; return the env's action space.

    Also fills in the derived values, so that args.json records what the run really used:
    `w2_weights` becomes a tuple of floats and `random_steps` = `learning_starts` when not given.
    Raises ConfigError with a one-line message naming what is wrong.
    """
    positive = ["total_timesteps", "num_envs", "buffer_size", "batch_size", "eval_episodes", "num_actors",
                "updates_per_step", "hidden_size", "num_layers", "checkpoint_every", "log_every"]
    for name in positive:
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.random_steps is None:
        args.random_steps = args.learning_starts
    for name in ["eval_every", "learning_starts", "random_steps"]:
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.eval_freq_episodes is not None and args.eval_freq_episodes <= 0:
        raise ConfigError(f"--eval-freq must be positive (training episodes), got {args.eval_freq_episodes}")
    if args.batch_size > args.buffer_size:
        raise ConfigError(f"--batch-size ({args.batch_size}) cannot exceed --buffer-size ({args.buffer_size})")
    if not 0.0 <= args.gamma <= 1.0:
        raise ConfigError(f"--gamma must lie in [0, 1], got {args.gamma}")
    if not 0.0 < args.tau <= 1.0:
        raise ConfigError(f"--tau must lie in (0, 1], got {args.tau}")
    if args.lr <= 0:
        raise ConfigError(f"--lr must be positive, got {args.lr}")
    if args.alpha < 0:
        raise ConfigError(f"--alpha must be >= 0, got {args.alpha}")
    if not (math.isfinite(args.lambda_q) and args.lambda_q > 0):
        raise ConfigError(f"--lambda-q must be a positive number, got {args.lambda_q}")
    if args.log_std_min >= args.log_std_max:
        raise ConfigError("--log-std-min must be smaller than --log-std-max")

    # ---- the JKO chain: one W2 weight per actor, the first 0, none negative ----------------
    weights = parse_w2_weights(args.w2_weights)
    n = args.num_actors
    if len(weights) != n:
        if n > 1 and weights == (0.0,):  # the default, i.e. not given
            example = " ".join(["0.0"] + ["0.1"] * (n - 1))
            raise ConfigError(f"--num-actors {n} needs one W2 weight per actor: pass --w2-weights with {n} values, "
                              f"the first 0 (e.g. --w2-weights {example})")
        raise ConfigError(f"--w2-weights has {len(weights)} value(s) {list(weights)} but --num-actors is {n}; "
                          "give exactly one weight per actor")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ConfigError(f"--w2-weights must be finite and >= 0, got {list(weights)}")
    if weights[0] != 0.0:
        raise ConfigError(f"--w2-weights: w_0 must be 0 (actor 0 is the plain SAC actor and has no predecessor), "
                          f"got {weights[0]}")
    args.w2_weights = weights
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
                          "POSAC needs a continuous gymnasium.spaces.Box")
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise ConfigError(f"{env_id} has an unbounded action space ({space}); the policies are "
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
    kernel launch per layer instead of N -- the "fused critics" of LeanRL. POSAC uses N = 2.
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
    """Gaussian policy over u, squashed by tanh into the env's box, eq. (1) -- the same network
    (and parameter names) as sac_continuous.py's Actor with its default options.

    The action scale and bias are buffers, so they move with `.to(device)` and are saved in the
    checkpoint; asymmetric and offset boxes (low != -high) are handled by the same formula.
    """

    def __init__(self, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray, hidden_size: int,
                 num_layers: int, log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__()
        action_dim = int(np.prod(action_low.shape))
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        # one trunk; the last layer emits mu and log sigma
        self.net = mlp(obs_dim, action_dim * 2, hidden_size, num_layers)
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)

    def distribution_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu(s) and log sigma(s) of the pre-squash Gaussian."""
        return self.split_params(self.net(obs))

    def split_params(self, net_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The trunk's output -> (mu, log sigma); works on any leading shape (POSAC stacks actors)."""
        mean, raw_log_std = net_out.chunk(2, dim=-1)
        # squash log sigma smoothly into [min, max] (CleanRL): no dead gradient at a hard clamp
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(raw_log_std) + 1)
        return mean, log_std

    def squash(self, u: torch.Tensor) -> torch.Tensor:
        """a = tanh(u) * scale + bias."""
        return torch.tanh(u) * self.action_scale + self.action_bias

    def log_prob(self, u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) for a = squash(u), eq. (1), summed over action dimensions -> [B]."""
        return self.log_prob_from_noise((u - mean) / log_std.exp(), log_std, torch.tanh(u))

    def log_prob_from_noise(self, z: torch.Tensor, log_std: torch.Tensor, tanh_u: torch.Tensor) -> torch.Tensor:
        """eq. (1) given z = (u - mu) / sigma and tanh(u). For a reparametrized sample z IS the noise
        eps, which saves three ops forward and backward; the gradient is the same (d/dtheta of
        -z^2/2 along u = mu + sigma * eps is zero)."""
        log_density = -0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        # change of variables: |da/du| = scale * (1 - tanh(u)^2); eps keeps log finite at |u|>>1
        log_density = log_density - torch.log(self.action_scale * (1 - tanh_u.pow(2)) + 1e-6)
        return log_density.sum(-1)

    def squash_and_log_prob(self, mean: torch.Tensor, log_std: torch.Tensor, std: torch.Tensor,
                            noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u = mu + sigma * eps -> (squash(u), log pi), with tanh(u) computed once for both."""
        tanh_u = torch.tanh(mean + std * noise)
        return tanh_u * self.action_scale + self.action_bias, self.log_prob_from_noise(noise, log_std, tanh_u)

    def sample_with_params(self, obs: torch.Tensor, generator: Optional[torch.Generator] = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw a ~ pi(.|s) by reparametrization; return (action, log pi(a|s), mu, sigma).

        mu and sigma (pre-squash) are what the closed-form W2 of eq. (4) needs."""
        mean, log_std = self.distribution_params(obs)
        std = log_std.exp()
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        action, log_prob = self.squash_and_log_prob(mean, log_std, std, noise)
        return action, log_prob, mean, std

    def sample(self, obs: torch.Tensor, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw a ~ pi(.|s); return (action, log pi(a|s)). The gradient flows through the action."""
        return self.sample_with_params(obs, generator)[:2]

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """A stochastic action for the env, without log pi (the collection loop needs no more).
        Draws the same noise as `sample`, so the random stream is the same either way."""
        mean, log_std = self.distribution_params(obs)
        return self.squash(mean + log_std.exp() * torch.randn(mean.shape, device=mean.device, dtype=mean.dtype))

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The evaluation action: squash(mu(s))."""
        return self.squash(self.distribution_params(obs)[0])


def gaussian_w2_squared(mean: torch.Tensor, std: torch.Tensor, ref_mean: torch.Tensor,
                        ref_std: torch.Tensor) -> torch.Tensor:
    """eq. (4): squared 2-Wasserstein distance between diagonal Gaussians N(mean, std^2) and
    N(ref_mean, ref_std^2), summed over the last (action) dimension -> [B].

    For diagonal (commuting) covariances the Bures term tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)
    reduces to |std - ref_std|^2. On POSAC's pre-tanh parameters this is a proximal term that
    bounds the action-space W2 from above (see the docstring), not the action-space W2 itself.
    The caller passes the reference (the previous actor) detached."""
    return (mean - ref_mean).pow(2).sum(-1) + (std - ref_std).pow(2).sum(-1)


def td_target(rewards: torch.Tensor, terminations: torch.Tensor, next_q_min: torch.Tensor,
              next_log_prob: torch.Tensor, alpha: torch.Tensor | float, gamma: float) -> torch.Tensor:
    """y = r + gamma * (1 - d) * (min_k Q'_k - alpha * log pi_0(a'|s')), eq. (2). Shapes [B] (next_q_min
    may be [N, B]: the min is already taken and broadcast per critic)."""
    soft_value = next_q_min - alpha * next_log_prob
    return rewards + gamma * (1.0 - terminations) * soft_value


def critic_loss(q_values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """eq. (3): sum over critics of the mean squared TD error. q_values, target: [N, B]."""
    return (q_values - target).pow(2).mean(dim=1).sum()


def sac_actor_loss(log_prob: torch.Tensor, q_value: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """eq. (5), actor 0: E[alpha * log pi - Q]; the gradient flows through q_value and log_prob."""
    return (alpha * log_prob - q_value).mean()


def q_weight(q_value: torch.Tensor, lambda_q: float, normalize_q: bool) -> torch.Tensor | float:
    """lambda_i of eq. (7): lambda_q, or lambda_q / sg(mean_batch |Q|) (TD3+BC) with normalize_q.
    q_value: [B] for one actor, or [N-1, B] for several (one lambda per actor, shape [N-1, 1])."""
    if not normalize_q:
        return lambda_q
    return lambda_q / q_value.detach().abs().mean(dim=-1, keepdim=True).clamp_min(1e-6)


def jko_actor_loss(log_prob: torch.Tensor, q_value: torch.Tensor, w2_squared: torch.Tensor,
                   lam: torch.Tensor | float, w2_weight: torch.Tensor | float,
                   alpha: torch.Tensor | float) -> torch.Tensor:
    """eq. (6), actor i >= 1: E_batch[-lambda_i * Q + w_i * W2^2(pi_i, sg pi_{i-1}) + alpha * log pi_i].

    Inputs are [B] for one actor (returns a scalar) or [N-1, B] for actors 1..N-1 with lam and
    w2_weight of shape [N-1, 1] (returns one loss per actor, [N-1]). The entropy enters with SAC's
    sign (+alpha log pi = -alpha * entropy is minimised, so the entropy is maximised); the source's
    "+ alpha * H" would do the opposite."""
    return (-lam * q_value + w2_weight * w2_squared + alpha * log_prob).mean(dim=-1)


def temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """eq. (8): raises alpha when actor 0's entropy (-log pi) is below the target."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


@torch.no_grad()
def update_target(source: nn.Module, target: nn.Module, tau: float) -> None:
    """theta' <- (1 - tau) theta' + tau theta, eq. (9); tau = 1 is a hard copy.
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

    def __init__(self, run_dir: str, resume_step: Optional[int], num_actors: int):
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
        # the source's per-actor evaluation arrays: rows [global_step, deterministic, stochastic]
        self.actor_array_paths = [os.path.join(run_dir, f"eval_actor_{i}.npy") for i in range(num_actors)]
        self.actor_arrays = [truncate_array_after(path, resume_step) for path in self.actor_array_paths]

    def scalars(self, step: int, values: dict[str, float]) -> None:
        now = time.time()
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
            self.metrics_csv.writerow([step, f"{now:.3f}", tag, repr(float(value))])
        self.metrics_file.flush()

    def evaluation(self, step: int, policy: int, mode: str, returns: np.ndarray) -> None:
        with open(self.eval_path, "a", newline="") as f:
            csv.writer(f).writerow([step, policy, mode, repr(float(returns.mean())), repr(float(returns.std())), len(returns)])
        tags = {f"eval/actor_{policy}/{mode}_return": float(returns.mean())}
        if policy == 0:  # actor 0 under SAC's tag too, so POSAC and SAC curves share a name
            tags[f"eval/{mode}_return"] = float(returns.mean())
        self.scalars(step, tags)

    def actor_array(self, step: int, actor: int, deterministic_mean: float, stochastic_mean: float) -> None:
        """Append [step, deterministic mean, stochastic mean] to eval_actor_{actor}.npy (atomically)."""
        row = np.array([[step, deterministic_mean, stochastic_mean]], dtype=np.float64)
        self.actor_arrays[actor] = np.concatenate([self.actor_arrays[actor], row])
        atomic_save_array(self.actor_array_paths[actor], self.actor_arrays[actor])

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


def truncate_array_after(path: str, last_step: Optional[int]) -> np.ndarray:
    """The rows of an evaluation array to continue from: none for a new run, or on resume the
    saved rows with global_step <= last_step (the same rule as truncate_csv_after)."""
    if last_step is None or not os.path.exists(path):
        return np.zeros((0, 3), dtype=np.float64)
    rows = np.load(path).reshape(-1, 3)
    return rows[rows[:, 0] <= last_step]


def atomic_save_array(path: str, array: np.ndarray) -> None:
    """np.save through a temp file + rename, as atomic_write_text does for text."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
RESUME_MUST_MATCH = ("env_id", "num_envs", "buffer_size", "hidden_size", "num_layers", "num_actors", "w2_weights",
                     "lambda_q", "normalize_q", "autotune", "seed")


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
    # w2_weights is a tuple here and may come back from torch.load as a list: compare as lists
    differ = [f"{k} (checkpoint {saved.get(k)!r}, now {getattr(args, k)!r})" for k in RESUME_MUST_MATCH
              if as_list(saved.get(k)) != as_list(getattr(args, k))]
    if differ:
        raise ConfigError(f"--resume {args.resume}: incompatible arguments: {', '.join(differ)}")
    checkpoint["path"] = path
    return checkpoint


def as_list(value):
    return list(value) if isinstance(value, (tuple, list)) else value


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
    so every evaluation (and every actor) starts from the same states. Stochastic actions use their
    own generator, so evaluating never changes the training run's random stream."""
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
# ALGO LOGIC: the agent (actors + critics + optimizers + one gradient step of each part)
# =============================================================================================
class POSAC:
    """N actors, twin critics, target critics, temperature and their optimizers, with the updates.

    The updates return loss tensors without calling `.item()`: reading a GPU value forces a host
    sync, so the training loop only converts them when it logs. With num_actors = 1 every step is
    the same computation, in the same order, as sac_continuous.py's SAC (min backup, reparametrize).
    """

    def __init__(self, args: Args, obs_dim: int, action_space: gym.spaces.Box, device: torch.device):
        self.args, self.device = args, device
        action_dim = int(np.prod(action_space.shape))
        self.actors = nn.ModuleList([
            Actor(obs_dim, action_space.low, action_space.high, args.hidden_size, args.num_layers,
                  args.log_std_min, args.log_std_max) for _ in range(args.num_actors)]).to(device)
        self.critics = CriticEnsemble(obs_dim, action_dim, args.hidden_size, args.num_layers, NUM_CRITICS).to(device)
        self.target_critics = CriticEnsemble(obs_dim, action_dim, args.hidden_size, args.num_layers,
                                             NUM_CRITICS).to(device)
        self.target_critics.load_state_dict(self.critics.state_dict())
        self.target_critics.requires_grad_(False)
        # one Adam over every actor: Adam's statistics are per parameter, so this is exactly one
        # optimizer per actor, stepped in one fused call
        self.actor_optimizer = torch.optim.Adam(self.actors.parameters(), lr=args.lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critics.parameters(), lr=args.lr, fused=True)
        # w_1..w_{N-1} as a column, to weight the [N-1, B] W2 values of eq. (6) in one product
        self.w2_weights_tensor = torch.tensor([float(w) for w in args.w2_weights[1:]], device=device).view(-1, 1)
        self.lambda_q_tensor = torch.full((args.num_actors - 1,), float(args.lambda_q), device=device)  # for the log

        # temperature: alpha = exp(log_alpha) keeps alpha > 0; autotuning starts at alpha = 1
        self.target_entropy = -float(action_dim)
        initial_alpha = 1.0 if args.autotune else max(args.alpha, 1e-12)
        self.log_alpha = torch.tensor([math.log(initial_alpha)], device=device, requires_grad=args.autotune)
        # fused: one kernel per step for this single number, instead of the ~10 small operations
        # of Adam's default per-tensor loop on the CPU
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=args.lr, fused=True) if args.autotune else None
        self.critic_updates = 0

    @property
    def actor(self) -> Actor:
        """Actor 0: the data collector, the critic's bootstrap policy, the plain SAC actor."""
        return self.actors[0]

    @property
    def alpha(self) -> torch.Tensor:
        """The temperature used in eqs. (2), (5) and (6); exactly 0 with --alpha 0."""
        if not self.args.autotune and self.args.alpha == 0:
            return torch.zeros((), device=self.device)
        return self.log_alpha.detach().exp().squeeze()

    def critic_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One gradient step of eq. (3) on the TD target (2) -- bootstrapped from actor 0 --, then
        the target update (9)."""
        args = self.args
        with torch.no_grad():
            next_actions, next_log_prob = self.actor.sample(batch["next_obs"])
            next_q = self.target_critics(batch["next_obs"], next_actions)
            next_q_min = next_q.min(dim=0, keepdim=True).values.expand_as(next_q)  # clipped double-Q
            target = td_target(batch["rewards"], batch["terminations"], next_q_min, next_log_prob, self.alpha,
                               args.gamma)
        q_values = self.critics(batch["obs"], batch["actions"])
        loss = critic_loss(q_values, target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()

        self.critic_updates += 1
        update_target(self.critics, self.target_critics, args.tau)
        # the per-critic losses and mean Q are only logged every log_every steps: `loss_scalars`
        # derives them from these two tensors then, instead of every update
        return {"critic_loss": loss.detach(), "q_values": q_values.detach(), "td_target": target}

    def sample_all(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every actor's reparametrized action for the same states: (actions [N, B, A],
        log pi [N, B], mu [N, B, A], sigma [N, B, A]), eq. (1).

        Only the N trunks run separately; the actors share the env's box and the log-sigma range,
        so sampling, squashing and log pi run once on the stacked [N, B, ...] tensors (fewer small
        kernels than N calls of Actor.sample, and the same numbers: with N = 1 it is that call)."""
        mean, log_std = self.actor.split_params(torch.stack([actor.net(obs) for actor in self.actors]))
        std = log_std.exp()
        noise = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype)
        actions, log_probs = self.actor.squash_and_log_prob(mean, log_std, std, noise)
        return actions, log_probs, mean, std

    def actor_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One gradient step of every actor, eqs. (5) and (6), then of the temperature loss (8)."""
        args, obs = self.args, batch["obs"]
        n, batch_size = len(self.actors), obs.shape[0]
        actions, log_probs, means, stds = self.sample_all(obs)
        # ONE critic pass over the N actors' actions ([N * B] rows) instead of N passes; the critics
        # are constants here: switching their grads off saves the backward pass into their weights
        self.critics.requires_grad_(False)
        obs_rows = obs if n == 1 else obs.repeat(n, 1)
        q_values = self.critics(obs_rows, actions.reshape(n * batch_size, -1)).min(dim=0).values.view(n, batch_size)
        self.critics.requires_grad_(True)

        alpha = self.alpha
        losses = [sac_actor_loss(log_probs[0], q_values[0], alpha)]  # eq. (5): actor 0 is plain SAC
        if n > 1:
            # eq. (4) for every i >= 1 at once, each against its predecessor, detached: actor i-1 is
            # the fixed reference of step i (its own gradient comes only from its own loss)
            w2 = gaussian_w2_squared(means[1:], stds[1:], means[:-1].detach(), stds[:-1].detach())  # [N-1, B]
            lam = q_weight(q_values[1:], args.lambda_q, args.normalize_q)
            losses.append(jko_actor_loss(log_probs[1:], q_values[1:], w2, lam, self.w2_weights_tensor, alpha))  # eq. (6)
        per_actor = torch.cat([losses[0].view(1), *losses[1:]])  # [N]
        # one backward for all: each actor's parameters only reach its own term, so the sum
        # gives each actor exactly the gradient of its own loss
        total = per_actor.sum()
        self.actor_optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.actor_optimizer.step()

        out = {"actor_loss": total.detach(), "per_actor_loss": per_actor.detach(),
               "entropy": -log_probs.detach().mean(dim=1)}
        if n > 1:
            out["w2"] = w2.detach().mean(dim=1)
            out["lambda"] = lam.view(-1) if args.normalize_q else self.lambda_q_tensor
        if self.alpha_optimizer is not None:
            alpha_loss = temperature_loss(self.log_alpha, log_probs[0], self.target_entropy)
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()
            out["alpha_loss"] = alpha_loss.detach()
        return out

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One full POSAC update on one batch: the critic step, then every actor's step."""
        return {**self.critic_step(batch), **self.actor_step(batch)}

    def state_dict(self) -> dict:
        return {"actors": [actor.state_dict() for actor in self.actors], "critics": self.critics.state_dict(),
                "target_critics": self.target_critics.state_dict(),
                "actor_optimizer": self.actor_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(),
                "log_alpha": self.log_alpha.detach().clone(),
                "alpha_optimizer": self.alpha_optimizer.state_dict() if self.alpha_optimizer else None,
                "critic_updates": self.critic_updates}

    def load_state_dict(self, state: dict) -> None:
        for actor, actor_state in zip(self.actors, state["actors"], strict=True):
            actor.load_state_dict(actor_state)
        self.critics.load_state_dict(state["critics"])
        self.target_critics.load_state_dict(state["target_critics"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        if self.alpha_optimizer is not None:
            self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.critic_updates = state["critic_updates"]


def crossed(step_before: int, step_after: int, every: int) -> bool:
    """True when a multiple of `every` lies in (step_before, step_after]: with N envs the step
    counter moves N at a time and may jump over the exact multiple."""
    return every > 0 and step_after // every > step_before // every


# =============================================================================================
# The training run
# =============================================================================================
def train(args: Args) -> dict:
    """Run (or resume) one POSAC training run; return its final figures (also in summary.json)."""
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
    if video_folder is not None:  # film the first (deterministic) episode of every actor's evaluation
        eval_env.env.episode_trigger = lambda episode: episode % (2 * args.eval_episodes) == 0
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    action_dim = int(np.prod(action_space.shape))

    agent = POSAC(args, obs_dim, action_space, device)
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
    logger = RunLogger(run_dir, resume_step=global_step if checkpoint is not None else None,
                       num_actors=args.num_actors)

    def checkpoint_state() -> dict:
        return {"algorithm": ALGORITHM, "args": asdict(args), "global_step": global_step,
                "train_time": train_time, "train_steps": train_steps, "episodes": episodes,
                "last_return": last_return, "agent": agent.state_dict(),
                "replay_buffer": buffer.state_dict(), "rng": rng_states(),
                "eval_generator": eval_generator.get_state()}

    def run_evaluation(step: int) -> list[dict]:
        """Every actor, deterministic then stochastic, printed in the source's format."""
        results = []
        print(f"Evaluation over {args.eval_episodes} episodes (step {step}):", flush=True)
        for i, actor in enumerate(agent.actors):
            means = {}
            for mode in ("deterministic", "stochastic"):
                returns = evaluate(actor, eval_env, args.eval_episodes, args.seed + 100_000,
                                   mode == "deterministic", device, eval_generator)
                logger.evaluation(step, i, mode, returns)
                means[mode] = float(returns.mean())
                results.append({"policy": i, "mode": mode, "mean_return": means[mode],
                                "std_return": float(returns.std()), "episodes": len(returns)})
                print(f"  Actor {i} - {mode.capitalize()}: {means[mode]:.2f}", flush=True)
            logger.actor_array(step, i, means["deterministic"], means["stochastic"])
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
                # ---- ALGO LOGIC: act (uniform random first, then actor 0's stochastic policy) ----
                if global_step < args.random_steps:
                    actions = np.random.uniform(low, high, size=(args.num_envs, action_dim)).astype(np.float32)
                else:
                    with torch.no_grad():
                        actions = agent.actor.act(torch.as_tensor(obs, dtype=torch.float32, device=device))
                    actions = np.clip(actions.cpu().numpy(), low, high)  # float32 rounding at the bounds
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

                # ---- ALGO LOGIC: training: critic step (2)-(3), then every actor (5)-(6) -------------
                if global_step > args.learning_starts:
                    for _ in range(args.updates_per_step):
                        losses = agent.update(buffer.sample(args.batch_size))
                        nonfinite |= ~torch.isfinite(losses["critic_loss"]) | ~torch.isfinite(losses["actor_loss"])
                    train_time += time.time() - iteration_start
                    train_steps += args.num_envs

                # ---- TRY NOT TO MODIFY: logging, evaluation, checkpoints ------------------------
                episodes_before = episodes
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
                if args.eval_freq_episodes is not None:  # the source's schedule: every k training episodes
                    evaluation_due = crossed(episodes_before, episodes, args.eval_freq_episodes)
                else:
                    evaluation_due = crossed(step_before, global_step, args.eval_every)
                if evaluation_due and global_step < args.total_timesteps:
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


def loss_scalars(losses: dict[str, torch.Tensor], agent: POSAC) -> dict[str, float]:
    """The CleanRL-named scalars of the latest update (the only place losses leave the device),
    plus one W2, entropy and loss per actor."""
    q_values, target = losses["q_values"], losses["td_target"]
    per_critic = (q_values - target).pow(2).mean(dim=1).tolist()
    q_means = q_values.mean(dim=1).tolist()
    per_actor = losses["per_actor_loss"].tolist()
    entropies = losses["entropy"].tolist()
    scalars = {f"losses/qf{i + 1}_loss": value for i, value in enumerate(per_critic)}
    scalars.update({f"losses/qf{i + 1}_values": value for i, value in enumerate(q_means)})
    scalars["losses/qf_loss"] = float(losses["critic_loss"]) / len(per_critic)
    scalars["losses/actor_loss"] = per_actor[0]  # actor 0's: the SAC actor loss, comparable with SAC's
    scalars["losses/alpha"] = float(agent.alpha)
    scalars["losses/entropy"] = entropies[0]
    for i, (loss, entropy) in enumerate(zip(per_actor, entropies)):
        scalars[f"losses/actor_loss_{i}"] = loss
        scalars[f"losses/entropy_actor_{i}"] = entropy
    if "w2" in losses:  # actor i's W2^2 to actor i-1, eq. (4), and its lambda, eq. (7)
        for i, (w2, lam) in enumerate(zip(losses["w2"].tolist(), losses["lambda"].tolist()), start=1):
            scalars[f"losses/w2_actor_{i}"] = w2
            scalars[f"losses/lambda_actor_{i}"] = lam
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
