"""Does density matching really match? A state-free toy for gmm_density_matching.py.

A fixed critic with two equally good, narrow peaks on a 1-D action box [-1, 1]:

    Q(a) = -min((a - 0.6)^2, (a + 0.6)^2) / (2 * 0.08^2),   T = 1,

so the Boltzmann target exp(Q(a)/T) is two bumps of equal mass at a = -0.6 and a = +0.6. The actor of
gmm_density_matching.py (a GMMActor fed a constant observation) is fitted by the script's own
actor loss, eqs. (2)-(6): M proposal samples per state, p_i = softmax(Q_i / T - log q(a_i)), loss
-sum_i p_i log pi(u_i) - lambda * sum_k w_k sum_j log sigma_kj. A K-component mixture should put
about half of its mass near each peak; a single Gaussian (K = 1) cannot -- the forward-KL fit of
one Gaussian to two bumps covers both with one broad hump, centred between them.

    python benchmark/diagnostics/gmm_toy_density.py        # writes benchmark/diagnostics/gmm_toy_density.png

`fit_toy` is imported by tests/test_gmm_density.py.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import gmm_density_matching as gmm  # noqa: E402

PEAKS = (-0.6, 0.6)
PEAK_WIDTH = 0.08
NEAR = 0.2  # "near a peak": within this distance of it (2.5 peak widths)


def toy_q(actions: torch.Tensor) -> torch.Tensor:
    """The two-peaked critic Q(a) on actions [..., 1] -> [...]."""
    a = actions.squeeze(-1)
    return -torch.minimum((a - PEAKS[0]) ** 2, (a - PEAKS[1]) ** 2) / (2 * PEAK_WIDTH ** 2)


def fit_toy(num_components: int, proposal: str = "uniform", importance_correction: bool = True,
            steps: int = 400, num_states: int = 16, num_samples: int = 256, temperature: float = 1.0,
            entropy_coef: float = 0.0, seed: int = 0, num_eval_samples: int = 20_000) -> dict:
    """Fit a GMMActor to exp(toy_q / T) with the script's actor update; return the fitted actor,
    samples of it, and the fraction of the sampled mass within NEAR of each peak."""
    torch.manual_seed(seed)
    args = gmm.Args(env_id="Pendulum-v1", seed=seed, num_components=num_components, num_action_samples=num_samples,
                    proposal=proposal, importance_correction=importance_correction, temperature_mode="fixed",
                    temperature=temperature, entropy_coef=entropy_coef, hidden_size=32, num_layers=1,
                    policy_lr=1e-2)
    space = gmm.gym.spaces.Box(np.array([-1.0], np.float32), np.array([1.0], np.float32))
    agent = gmm.GMMAgent(args, obs_dim=1, action_space=space, device=torch.device("cpu"))
    actor, obs = agent.actor, torch.zeros(num_states, 1)
    for _ in range(steps):
        # the actor step of gmm_density_matching.py, with the critics replaced by the fixed toy Q
        params = actor.distribution_params(obs)
        with torch.no_grad():
            u, log_q = agent.propose(obs, params)
            weights = gmm.boltzmann_weights(toy_q(actor.squash(u)), temperature, log_q)
        loss = (gmm.density_matching_loss(gmm.gmm_log_prob(u, *params), weights)
                + gmm.entropy_regulariser(params[0], params[2], entropy_coef))
        agent.actor_optimizer.zero_grad()
        loss.backward()
        agent.actor_optimizer.step()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        samples = actor.squash(actor.sample_u(actor.distribution_params(obs[:1]), num_eval_samples, generator))
    samples = samples.reshape(-1).numpy()
    mass = [float(np.mean(np.abs(samples - peak) < NEAR)) for peak in PEAKS]
    return {"actor": actor, "samples": samples, "mass_near_peaks": mass, "final_loss": loss.item()}


def action_density(actor: gmm.GMMActor, grid: np.ndarray) -> np.ndarray:
    """pi(a) on a grid of actions inside (-1, 1): the mixture density of u = atanh(a), divided by
    the Jacobian da/du, eq. (1)."""
    with torch.no_grad():
        a = torch.as_tensor(grid, dtype=torch.float32).view(1, -1, 1)
        u = torch.atanh(a)
        log_pi_a = gmm.gmm_log_prob(u, *actor.distribution_params(torch.zeros(1, 1))) - actor.log_jacobian(u)
    return log_pi_a.exp().view(-1).numpy()


def main(path: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gmm_toy_density.png")) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(-0.999, 0.999, 2001)
    target = np.exp(toy_q(torch.as_tensor(grid).view(-1, 1)).numpy())
    target /= np.trapezoid(target, grid)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.fill_between(grid, target, color="0.85", label="Boltzmann target exp(Q/T), normalised")
    for k, style in ((4, "C0-"), (1, "C3--")):
        fit = fit_toy(k)
        mass = ", ".join(f"{m:.0%}" for m in fit["mass_near_peaks"])
        ax.plot(grid, action_density(fit["actor"], grid), style,
                label=f"fitted GMM, K={k} (mass near the peaks: {mass})")
        print(f"K={k}: mass within {NEAR} of the peaks {PEAKS}: {mass}")
    ax.set_xlabel("action a")
    ax.set_ylabel("density")
    ax.set_title("density matching on a fixed two-peaked Q (uniform proposal, M=256)")
    ax.legend(loc="upper center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
