"""Independent references for the update-step tests (tests/test_*_updates.py): the tanh-Gaussian
log-density from torch.distributions, one critic at a time from its raw weight matrices, and the
Polyak step written out. They share no code with the scripts, so a bug in a script's fused or
fast-path version shows up as a difference, not as the same wrong number on both sides."""

from __future__ import annotations

import torch
from torch.distributions import Independent, Normal


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
