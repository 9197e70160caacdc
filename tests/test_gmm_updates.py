"""gmm_density_matching.py's own update steps against independent references (tests/references.py):
the critic target (10) takes the minimum of the TARGET critics at a' ~ pi(.|s'), the critic loss
(11) sums the critics' mean squared errors, the target update (12) moves the targets a fraction tau
towards the online critics, and the actor step scores its M proposals with the minimum of the
ONLINE critics, weights them by eqs. (4)/(6) and follows the gradient of (5) computed with
torch.distributions' MixtureSameFamily. The target critics differ from the online ones and the two
critics from each other, so using the wrong set or the mean/max instead of the min shows."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import tyro
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import gmm_density_matching as gmm
from references import (ACTION_DIM, BATCH, OBS_DIM, SPACE, assert_critic_scalars, assert_same_gradients, clone_parameters, each_critic, polyak,
                        prepared)
from references import random_batch as shared_batch

CLOSE = dict(rtol=1e-5, atol=1e-5)  # float32


def gmm_critic_layers(ensemble, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Critic k of gmm's CriticEnsemble as plain layers: its first layer is stored split into a
    state and an action half, eq. (9); here the two halves are stacked back into one matrix."""
    first = (torch.cat([ensemble.weight_state[k], ensemble.weight_action[k]]), ensemble.bias_first[k])
    return [first] + [(weight[k], bias[k]) for weight, bias in zip(ensemble.weights, ensemble.biases)]


def small_agent(**overrides) -> gmm.GMMAgent:
    settings = dict(env_id="Hopper-v4", hidden_size=16, num_components=3, num_action_samples=8, seed=3,
                    entropy_coef=0.05)
    torch.manual_seed(0)
    return prepared(gmm.GMMAgent(gmm.args_from_flat(dict(**{**settings, **overrides})), OBS_DIM, SPACE, torch.device("cpu")))


def random_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """The shared batch in float32, the dtype the GMM tests run in, with larger rewards."""
    return shared_batch(seed, dtype=torch.float32, reward_scale=3.0)


def mixture_log_prob(u: torch.Tensor, log_w, mean, log_std) -> torch.Tensor:
    """log pi(u|s) of eq. (3) from torch.distributions: u [B, M, A] -> [B, M]."""
    mixture = MixtureSameFamily(Categorical(logits=log_w), Independent(Normal(mean, log_std.exp()), 1))
    return mixture.log_prob(u.transpose(0, 1)).transpose(0, 1)  # the batch dims must be trailing


def reference_log_q_of_actions(proposal: str, u: torch.Tensor, params, actor, mix: float = 0.5) -> torch.Tensor:
    """log q(a_i|s) of eq. (6) from torch.distributions: the proposal's density over u (N(0, I); tanh(u)
    uniform on the box; the GMM; the stratified mixture f * GMM + (1 - f) * N(0, I)) minus log |da/du|."""
    standard = Independent(Normal(torch.zeros_like(u), torch.ones_like(u)), 1).log_prob(u)
    if proposal == "gaussian":
        log_q_u = standard
    elif proposal == "uniform":  # v = tanh(u) ~ U(-1, 1)^A: q(u) = prod_j (1/2) * dv/du
        v = torch.tanh(u)
        log_q_u = (torch.distributions.Uniform(-1.0, 1.0).log_prob(v) + torch.log(1 - v.pow(2))).sum(-1)
    else:
        log_pi = mixture_log_prob(u, *(p.detach() for p in params))
        f = 1.0 if proposal == "policy" else round(mix * u.shape[1]) / u.shape[1]
        log_q_u = log_pi if f == 1.0 else torch.logaddexp(log_pi + math.log(f), standard + math.log(1 - f))
    log_jacobian = torch.log(actor.action_scale * (1 - torch.tanh(u).pow(2))).sum(-1)
    return log_q_u - log_jacobian


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_critic_target_is_the_target_critics_minimum_at_the_policys_next_action(alpha):
    agent = small_agent(alpha=alpha)
    critics = copy.deepcopy(agent.critics)
    batch = random_batch()
    torch.manual_seed(5)
    with torch.no_grad():  # the policy's draw a' ~ pi(.|s') from the same random stream
        next_action, next_log_prob = agent.actor.sample(batch["next_obs"])
        next_q = each_critic(agent.target_critics, gmm_critic_layers, batch["next_obs"], next_action)
        target = batch["rewards"] + 0.99 * (1 - batch["terminations"]) * (next_q.min(dim=0).values - alpha * next_log_prob)
    torch.manual_seed(5)
    out = agent.critic_step(batch)
    torch.testing.assert_close(out["td_target"], target, **CLOSE)
    q_values = each_critic(critics, gmm_critic_layers, batch["obs"], batch["actions"])
    loss = (q_values - target).pow(2).mean(dim=1).sum()  # eq. (11): per critic a mean over the batch, summed
    torch.testing.assert_close(out["critic_loss"], loss.detach(), **CLOSE)
    loss.backward()
    assert_same_gradients(agent.critics, critics)


def test_critic_loss_sums_the_critics_mean_squared_errors():
    q_values = torch.tensor([[1.0, 2.0, 4.0], [0.0, -1.0, 1.0]])
    target = torch.tensor([1.0, 0.0, 1.0])
    # critic 1: (0 + 4 + 9) / 3, critic 2: (1 + 1 + 0) / 3
    assert gmm.critic_loss(q_values, target).item() == pytest.approx(13 / 3 + 2 / 3)


@pytest.mark.parametrize("tau", [0.25, 1.0])
def test_target_update_moves_the_targets_tau_towards_the_online_critics(tau):
    agent = small_agent(tau=tau)
    target, online = clone_parameters(agent.target_critics), clone_parameters(agent.critics)
    agent.target_update()
    for after, expected in zip(agent.target_critics.parameters(), polyak(target, online, tau)):
        torch.testing.assert_close(after, expected, rtol=1e-6, atol=1e-7)
    for after, before in zip(agent.critics.parameters(), online):
        assert torch.equal(after, before)


@pytest.mark.parametrize("proposal, temperature_mode, correction", [
    ("gaussian", "fixed", False), ("policy", "kl", False), ("mixed", "kl", True), ("uniform", "fixed", True)])
def test_actor_step_scores_with_the_online_critics_minimum_and_fits_the_weights(proposal, temperature_mode, correction):
    agent = small_agent(proposal=proposal, temperature_mode=temperature_mode, importance_correction=correction,
                        temperature=0.7)
    actor, critics = copy.deepcopy(agent.actor), copy.deepcopy(agent.critics)
    obs = random_batch(seed=2)["obs"]
    proposal_state = agent.proposal_generator.get_state()
    out = agent.actor_step({"obs": obs})
    # the same M proposals again (the script's sampler, from the same generator state)
    agent.proposal_generator.set_state(proposal_state)
    params = actor.distribution_params(obs)
    u, log_q = agent.propose(obs, tuple(p.detach() for p in params))
    actions = actor.squash(u)  # [B, M, A]
    q = each_critic(critics, gmm_critic_layers, obs.repeat_interleave(8, dim=0), actions.reshape(-1, ACTION_DIM))
    q = q.min(dim=0).values.view(BATCH, 8)
    torch.testing.assert_close(out["sample_q"], q, **CLOSE)
    if temperature_mode == "kl":  # eq. (7) on these scores (kl_temperature itself: tests/test_gmm_math.py)
        torch.testing.assert_close(out["temperature"], gmm.kl_temperature(q, 0.5), rtol=1e-4, atol=0)
    temperature = out["temperature"] if temperature_mode == "kl" else 0.7
    if correction:  # the proposal's log-density over actions, independently of the script's
        # (float32 and the scripts' eps in the Jacobians: agreement to 1e-3 in log q)
        torch.testing.assert_close(log_q, reference_log_q_of_actions(proposal, u, params, actor), rtol=0, atol=1e-3)
    logits = q / temperature - (log_q if correction else 0.0)
    weights = torch.softmax(logits, dim=-1)
    torch.testing.assert_close(out["weights"], weights, **CLOSE)
    # eq. (5) with log pi from torch.distributions, and its gradient
    log_w, mean, log_std = params
    loss = (-(weights * mixture_log_prob(u, *params)).sum(-1).mean()
            - 0.05 * (log_w.exp() * log_std.sum(-1)).sum(-1).mean())
    torch.testing.assert_close(out["actor_loss"], loss.detach(), **CLOSE)
    loss.backward()
    assert_same_gradients(agent.actor, actor)


def test_the_sources_settings_resolve_and_sample_the_sources_proposal():
    """The source's sampler as README and the docstring give it, on the source's task: u_i ~ N(0, I),
    p_i = softmax(min(Q_1, Q_2) / T) with T = 1, no importance correction, no entropy term in the
    critic target, the std regulariser of eq. (5) on, twin critics, soft target updates."""
    args = tyro.cli(gmm.Args, args=["--env-id", "Humanoid-v4", "--proposal", "gaussian", "--temperature-mode", "fixed",
                                    "--temperature", "1"])
    gmm.validate_args(args)
    assert (args.env_id, args.proposal, args.temperature_mode, args.temperature, args.importance_correction,
            args.alpha) == ("Humanoid-v4", "gaussian", "fixed", 1.0, False, 0.0)
    assert args.entropy_coef > 0 and 0 < args.tau < 1
    small = small_agent(proposal=args.proposal, temperature_mode=args.temperature_mode, temperature=args.temperature,
                        num_action_samples=4096)
    obs = random_batch(seed=4)["obs"][:4]
    u, log_q = small.propose(obs, small.actor.distribution_params(obs))
    assert log_q is None and u.shape == (4, 4096, ACTION_DIM)
    # N(0, I) in u-space, whatever the policy: mean 0, variance 1, no correlation
    flat = u.reshape(-1, ACTION_DIM)
    assert flat.mean(0).abs().max() < 0.03 and (flat.var(0) - 1).abs().max() < 0.05
    assert torch.corrcoef(flat.T).sub(torch.eye(ACTION_DIM)).abs().max() < 0.03
    assert small.critics.num_critics == 2
    out = small_agent(proposal="gaussian", temperature_mode="fixed", temperature=1.0).actor_step({"obs": obs})
    torch.testing.assert_close(out["weights"], torch.softmax(out["sample_q"] / 1.0, dim=-1))
    assert math.isclose(float(out["temperature"]), 1.0)


def test_distribution_params_come_from_the_trunk_as_eq_1_says():
    """The trunk's K logits, K means and K log-std columns: log w normalised by log-softmax, log sigma
    squashed smoothly into [log_std_min, log_std_max] (raw 0 -> the midpoint)."""
    actor = small_agent(log_std_min=-4.0, log_std_max=1.0).actor
    obs = random_batch(seed=5)["obs"]
    raw = actor.net(obs).detach()
    k, a = 3, ACTION_DIM
    logits, mean, raw_log_std = raw[:, :k], raw[:, k:k + k * a], raw[:, k + k * a:]
    log_w, mu, log_std = (t.detach() for t in actor.distribution_params(obs))
    torch.testing.assert_close(log_w, logits - torch.logsumexp(logits, dim=-1, keepdim=True))
    torch.testing.assert_close(mu, mean.reshape(-1, k, a))
    torch.testing.assert_close(log_std, (-4.0 + 2.5 * (torch.tanh(raw_log_std) + 1)).reshape(-1, k, a))
    assert -4.0 <= log_std.min() and log_std.max() <= 1.0


def test_each_proposal_draws_from_its_distribution():
    """Many samples for two states: gaussian is N(0, I) over u; uniform puts tanh(u) uniformly on the
    box's (-1, 1)^A; policy has the GMM's mean and variance; mixed has the policy's samples first
    (round(mix * M)), then N(0, I) ones."""
    m = 6000
    agent = small_agent(num_action_samples=m)
    obs = random_batch(seed=6)["obs"][:2]
    params = tuple(p.detach() for p in agent.actor.distribution_params(obs))
    log_w, mean, log_std = params
    w = log_w.exp().unsqueeze(-1)
    mixture_mean = (w * mean).sum(1)  # [B, A]
    mixture_var = (w * (log_std.exp().pow(2) + mean.pow(2))).sum(1) - mixture_mean.pow(2)

    def draw(proposal):
        agent.args.proposal = proposal
        return agent.propose(obs, params)[0]  # [B, M, A]

    u = draw("gaussian")
    assert u.mean(1).abs().max() < 0.05 and (u.var(1) - 1).abs().max() < 0.06
    v = torch.tanh(draw("uniform"))
    assert v.mean(1).abs().max() < 0.03 and (v.var(1) - 1 / 3).abs().max() < 0.02
    assert v.min() > -1 and v.max() < 1 and (v < -0.9).float().mean() == pytest.approx(0.05, abs=0.01)
    u = draw("policy")
    torch.testing.assert_close(u.mean(1), mixture_mean, atol=0.03, rtol=0)
    torch.testing.assert_close(u.var(1), mixture_var, atol=0.03, rtol=0.05)
    u = draw("mixed")
    half = m // 2
    torch.testing.assert_close(u[:, :half].mean(1), mixture_mean, atol=0.04, rtol=0)
    torch.testing.assert_close(u[:, :half].var(1), mixture_var, atol=0.04, rtol=0.06)
    assert u[:, half:].mean(1).abs().max() < 0.06 and (u[:, half:].var(1) - 1).abs().max() < 0.08


def test_mixture_components_are_drawn_with_their_weights_independently_per_state():
    """sample_u with two identical states and two far-apart components of weights 0.3 / 0.7: each
    component is drawn at its weight, and the two states' choices agree only by chance
    (0.3^2 + 0.7^2 = 0.58), not always (one shared uniform per sample would make them equal)."""
    log_w = torch.log(torch.tensor([[0.3, 0.7], [0.3, 0.7]]))
    mean = torch.tensor([-10.0, 10.0]).view(1, 2, 1).expand(2, 2, ACTION_DIM)
    log_std = torch.full((2, 2, ACTION_DIM), math.log(0.1))
    u = small_agent().actor.sample_u((log_w, mean, log_std), 20_000, torch.Generator().manual_seed(0))
    component = (u[..., 0] > 0).float()  # [2, M]
    assert component.mean(1).tolist() == pytest.approx([0.7, 0.7], abs=0.015)
    assert (component[0] == component[1]).float().mean().item() == pytest.approx(0.58, abs=0.015)
    # each component's spread is its own sigma
    assert u[component.bool()].std().item() == pytest.approx(0.1, rel=0.05)


def test_bfloat16_scoring_is_used_when_asked_and_stays_close():
    """--score-dtype bfloat16 runs the M-sample scoring in bfloat16 (scores differ from float32's in
    the last bits, by far less than their spread); float32, the default, scores exactly."""
    scores = {}
    for dtype in ("float32", "bfloat16"):
        agent = small_agent(score_dtype=dtype)
        scores[dtype] = agent.actor_step({"obs": random_batch(seed=2)["obs"]})["sample_q"]
    difference = (scores["bfloat16"] - scores["float32"]).abs()
    assert 0 < difference.max() < 0.05 * scores["float32"].std(dim=-1).mean()


def test_loss_scalars_report_the_updates_numbers():
    """What is logged is what the update computed: per-critic TD errors and mean Q, the actor's
    losses, ESS, the mixture entropy, each component's std, the Q spread over the samples, T."""
    agent = small_agent(proposal="policy", temperature_mode="fixed", temperature=0.7)
    batch = random_batch(seed=3)
    losses = agent.critic_step(batch)
    losses |= agent.actor_step(batch)
    scalars = gmm.loss_scalars(losses, agent)
    assert_critic_scalars(scalars, losses, rel=1e-5)
    for name in ("actor_loss", "kl_loss", "entropy_reg"):
        assert scalars[f"losses/{name}"] == pytest.approx(losses[name].item())
    w = losses["weights"]
    assert scalars["losses/ess"] == pytest.approx((1 / (w ** 2).sum(-1)).mean().item(), rel=1e-5)
    log_w, log_std = losses["log_w"], losses["log_std"]
    assert scalars["losses/mixture_entropy"] == pytest.approx(-(log_w.exp() * log_w).sum(-1).mean().item(), rel=1e-5)
    for k in range(3):
        assert scalars[f"losses/component_std_{k}"] == pytest.approx(log_std[:, k].exp().mean().item(), rel=1e-5)
    assert scalars["losses/q_spread"] == pytest.approx(losses["sample_q"].std(dim=-1).mean().item(), rel=1e-5)
    assert scalars["losses/temperature"] == pytest.approx(0.7)
