"""Independent references for the update-step tests (tests/test_*_updates.py): the tanh-Gaussian
log-density from torch.distributions, one critic at a time from its raw weight matrices, and the
Polyak step written out. They share no code with the scripts, so a bug in a script's fused or
fast-path version shows up as a difference, not as the same wrong number on both sides.
Also the setting those tests share: a small asymmetric action box, a random batch, and the
target critics pushed away from the online ones."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal

# ---- the shared setting -------------------------------------------------------------------------
OBS_DIM, BATCH, ACTION_DIM = 5, 16, 3
# an asymmetric, offset box: a wrong scale or bias in the squash changes the numbers
SPACE = gym.spaces.Box(np.array([-2.0, -0.5, 0.0], np.float32), np.array([2.0, 0.5, 3.0], np.float32))


def random_batch(seed: int = 1, dtype: torch.dtype = torch.float64,
                 reward_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A replay batch of BATCH transitions in SPACE, every fourth one terminal."""
    g = torch.Generator().manual_seed(seed)
    low, high = (torch.as_tensor(bound, dtype=dtype) for bound in (SPACE.low, SPACE.high))
    return {"obs": torch.randn(BATCH, OBS_DIM, generator=g, dtype=dtype),
            "next_obs": torch.randn(BATCH, OBS_DIM, generator=g, dtype=dtype),
            "actions": low + (high - low) * torch.rand(BATCH, ACTION_DIM, generator=g, dtype=dtype),
            "rewards": torch.randn(BATCH, generator=g, dtype=dtype) * reward_scale,
            "terminations": torch.tensor([1.0, 0.0, 0.0, 0.0] * (BATCH // 4), dtype=dtype)}


def prepared(agent, *modules, dtype: torch.dtype = torch.float32):
    """The agent with `modules` in `dtype` and its target critics pushed away from the online ones
    (they start as a copy), so that using one set for the other changes the numbers."""
    for module in modules:
        module.to(dtype)
    with torch.no_grad():
        for p in agent.target_critics.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return agent


def tanh_gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log pi(a|s) for a = tanh(u) * scale + bias, u ~ N(mean, diag std^2): the Gaussian's log-density
    at u minus log |da/du| = sum_j log(scale_j (1 - tanh(u_j)^2)) (exact, without the scripts' eps)."""
    log_normal = Independent(Normal(mean, std), 1).log_prob(u)
    return log_normal - torch.log(scale * (1 - torch.tanh(u).pow(2))).sum(-1)


def mlp_critic(layers: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    """One critic from its (weight [in, out], bias [1, out]) pairs: ReLU between layers -> [B]."""
    for weight, bias in layers[:-1]:
        x = torch.relu(x @ weight + bias)
    weight, bias = layers[-1]
    return (x @ weight + bias).squeeze(-1)


def stacked_critic_layers(ensemble, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Critic k's layers from a CriticEnsemble that stacks N critics as weights [N, in, out] and
    biases [N, 1, out] (sac_continuous.py, posac_jko.py)."""
    return [(weight[k], bias[k]) for weight, bias in zip(ensemble.weights, ensemble.biases)]


def each_critic(ensemble, layers_of, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Q_k(s, a) of every critic k, one at a time -> [N, B]."""
    x = torch.cat([obs, action], dim=-1)
    return torch.stack([mlp_critic(layers_of(ensemble, k), x) for k in range(ensemble.num_critics)])


def polyak(target: list[torch.Tensor], source: list[torch.Tensor], tau: float) -> list[torch.Tensor]:
    """theta' <- (1 - tau) theta' + tau theta, written out."""
    return [(1 - tau) * t + tau * s for t, s in zip(target, source)]


def clone_parameters(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def assert_same_gradients(module, reference, relative: float = 1e-4) -> None:
    """Every parameter's gradient equals the reference module's, to `relative` of the largest
    reference entry of that tensor (the scripts' eps = 1e-6 in the tanh Jacobian moves single
    entries by more than an elementwise relative tolerance allows; a wrong loss moves them by O(1))."""
    references = dict(reference.named_parameters())
    for name, p in module.named_parameters():
        expected = references[name].grad
        assert p.grad is not None and expected is not None, name
        error = (p.grad - expected).abs().max().item()
        assert error <= relative * expected.abs().max().item() + 1e-12, f"{name}: off by {error:.3g}"


def full_update(agent, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One update as sac_continuous.py and posac_jko.py's train() run it: critic step, target update,
    actor step, temperature step; the losses of all four."""
    losses = agent.critic_step(batch)
    agent.target_update()
    losses |= agent.actor_step(batch)
    return losses | agent.temperature_step(losses["log_prob"])


def assert_critic_scalars(scalars: dict[str, float], losses: dict[str, torch.Tensor], rel: float = 1e-6) -> None:
    """The logged critic figures are the update's: per critic k its mean squared TD error and mean Q,
    and losses/qf_loss the critic loss divided by the number of critics."""
    q = losses["q_values"]
    y = losses["td_target"].expand_as(q)
    for k in range(len(q)):
        assert scalars[f"losses/qf{k + 1}_loss"] == pytest.approx(((q[k] - y[k]) ** 2).mean().item(), rel=rel)
        assert scalars[f"losses/qf{k + 1}_values"] == pytest.approx(q[k].mean().item(), rel=rel)
    assert scalars["losses/qf_loss"] == pytest.approx(losses["critic_loss"].item() / len(q), rel=rel)
