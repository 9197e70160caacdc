"""posac_jko.py's own update steps against float64 references (tests/references.py): every actor
gets exactly the gradient of its own loss, eq. (5) for actor 0 and (6) with (4) and (7) for actor
i >= 1 against actor i-1 (detached by the script, not by the test); the critic target (2)
bootstraps from actor 0 through the TARGET critics' minimum; the target update (9) moves the
target critics a fraction tau towards the online ones; the temperature step (8) has SAC's sign.
Three actors with different W2 weights, so a wrong predecessor, an off-by-one weight or a flipped
sign changes a gradient."""

from __future__ import annotations

import copy

import pytest
import torch

import posac_jko as pj
from references import (ACTION_DIM, BATCH, OBS_DIM, SPACE, assert_critic_scalars, assert_same_gradients,
                        clone_parameters, each_critic, full_update, polyak, prepared, random_batch, stacked_critic_layers, tanh_gaussian_log_prob)

W2_WEIGHTS = (0.0, 0.25, 0.75)  # exact in float32 (the script keeps them as a float32 column)
CLOSE = dict(rtol=1e-4, atol=1e-6)  # float64; the scripts' eps = 1e-6 in the tanh Jacobian is the difference


def float64_agent(num_actors: int = 3, **overrides) -> pj.POSAC:
    settings = dict(env_id="Hopper-v4", num_actors=num_actors, w2_weights=W2_WEIGHTS[:num_actors], hidden_size=16,
                    alpha=0.5, lambda_q=1.5)
    torch.manual_seed(0)
    agent = pj.POSAC(pj.args_from_flat(dict(**{**settings, **overrides})), OBS_DIM, SPACE, torch.device("cpu"))
    return prepared(agent, agent.actors, agent.critics, agent.target_critics, dtype=torch.float64)


float64_batch = random_batch  # float64 by default


def min_q(critics, obs, action):
    return each_critic(critics, stacked_critic_layers, obs, action).min(dim=0).values


def reference_actor_losses(actors, critics, obs, noise, alpha, lambda_q, normalize_q) -> torch.Tensor:
    """Each actor's loss on copies of the networks: (5) for actor 0, (6) for i >= 1 with the W2 of
    (4) to a detached actor i-1 and lambda of (7). -> [N]."""
    params = [actor.distribution_params(obs) for actor in actors]
    scale, bias = actors[0].action_scale, actors[0].action_bias
    losses = []
    for i, (mean, log_std) in enumerate(params):
        std = log_std.exp()
        u = mean + std * noise[i]
        log_prob = tanh_gaussian_log_prob(u, mean, std, scale)
        q = min_q(critics, obs, torch.tanh(u) * scale + bias)
        if i == 0:
            losses.append((alpha * log_prob - q).mean())
            continue
        previous_mean, previous_std = params[i - 1][0].detach(), params[i - 1][1].exp().detach()
        w2 = (mean - previous_mean).pow(2).sum(-1) + (std - previous_std).pow(2).sum(-1)
        lam = lambda_q / q.detach().abs().mean() if normalize_q else lambda_q
        losses.append((-lam * q + W2_WEIGHTS[i] * w2 + alpha * log_prob).mean())
    return torch.stack(losses)


@pytest.mark.parametrize("normalize_q", [False, True])
def test_each_actor_gets_the_gradient_of_its_own_loss(normalize_q):
    agent = float64_agent(normalize_q=normalize_q)
    actors, critics = copy.deepcopy(agent.actors), copy.deepcopy(agent.critics)
    batch = float64_batch()
    torch.manual_seed(7)
    noise = torch.randn(3, BATCH, ACTION_DIM, dtype=torch.float64)  # actor_step's one draw, [N, B, A]
    torch.manual_seed(7)
    out = agent.actor_step(batch)
    expected = reference_actor_losses(actors, critics, batch["obs"], noise, 0.5, 1.5, normalize_q)
    torch.testing.assert_close(out["per_actor_loss"], expected.detach(), **CLOSE)
    expected.sum().backward()
    for i in range(3):
        assert_same_gradients(agent.actors[i], actors[i])
    assert all(p.grad is None for p in agent.critics.parameters()), "the actor step must not train the critics"
    # the logged entropy -log pi per actor, and lambda of eq. (7) for actors 1 and 2
    with torch.no_grad():
        log_probs, lambdas = [], []
        for i, actor in enumerate(actors):
            mean, log_std = actor.distribution_params(batch["obs"])
            u = mean + log_std.exp() * noise[i]
            log_probs.append(tanh_gaussian_log_prob(u, mean, log_std.exp(), actor.action_scale))
            q = min_q(critics, batch["obs"], torch.tanh(u) * actor.action_scale + actor.action_bias)
            lambdas.append(1.5 / q.abs().mean() if normalize_q else torch.tensor(1.5, dtype=torch.float64))
    torch.testing.assert_close(out["entropy"], -torch.stack(log_probs).mean(dim=1), **CLOSE)
    torch.testing.assert_close(out["lambda"].double(), torch.stack(lambdas[1:]), **CLOSE)
    # the logged W2 of actor i is to actor i-1
    with torch.no_grad():
        params = [(mean, log_std.exp()) for mean, log_std in (a.distribution_params(batch["obs"]) for a in actors)]
        w2 = [((m - pm).pow(2).sum(-1) + (s - ps).pow(2).sum(-1)).mean()
              for (m, s), (pm, ps) in zip(params[1:], params[:-1])]
    torch.testing.assert_close(out["w2"], torch.stack(w2), **CLOSE)


def test_the_actor_step_moves_each_actor_downhill_on_its_own_loss():
    """One step with a small learning rate lowers every actor's own loss (same noise), and leaves
    the previous actors where their own gradients put them: a sign error anywhere raises one."""
    agent = float64_agent(lr=1e-4)
    batch = float64_batch(seed=2)
    torch.manual_seed(11)
    noise = torch.randn(3, BATCH, ACTION_DIM, dtype=torch.float64)
    before = reference_actor_losses(agent.actors, agent.critics, batch["obs"], noise, 0.5, 1.5, False).detach()
    torch.manual_seed(11)
    agent.actor_step(batch)
    after = reference_actor_losses(agent.actors, agent.critics, batch["obs"], noise, 0.5, 1.5, False).detach()
    assert (after < before).all(), (before, after)


@pytest.mark.parametrize("autotune", [False, True])
def test_critic_target_bootstraps_from_actor_0_through_the_target_critics_minimum(autotune):
    agent = float64_agent(autotune=autotune)
    critics, actor_0 = copy.deepcopy(agent.critics), copy.deepcopy(agent.actors[0])
    batch = float64_batch(seed=3)
    torch.manual_seed(5)
    noise = torch.randn(BATCH, ACTION_DIM, dtype=torch.float64)  # actor 0's next-action draw
    with torch.no_grad():
        mean, log_std = actor_0.distribution_params(batch["next_obs"])
        u = mean + log_std.exp() * noise
        next_log_prob = tanh_gaussian_log_prob(u, mean, log_std.exp(), actor_0.action_scale)
        next_q = min_q(agent.target_critics, batch["next_obs"], torch.tanh(u) * actor_0.action_scale + actor_0.action_bias)
        alpha = 1.0 if autotune else 0.5
        target = batch["rewards"] + 0.99 * (1 - batch["terminations"]) * (next_q - alpha * next_log_prob)
    torch.manual_seed(5)
    out = agent.critic_step(batch)
    for k in range(2):
        torch.testing.assert_close(out["td_target"][k], target, **CLOSE)
    # eq. (3): the sum over critics of the mean squared TD error, and its gradient
    q_values = each_critic(critics, stacked_critic_layers, batch["obs"], batch["actions"])
    loss = (q_values - target).pow(2).mean(dim=1).sum()
    torch.testing.assert_close(out["critic_loss"], loss.detach(), **CLOSE)
    loss.backward()
    assert_same_gradients(agent.critics, critics)


def test_target_update_moves_the_targets_tau_towards_the_online_critics():
    agent = float64_agent(tau=0.25)
    target, online = clone_parameters(agent.target_critics), clone_parameters(agent.critics)
    agent.target_update()
    for after, expected in zip(agent.target_critics.parameters(), polyak(target, online, 0.25)):
        torch.testing.assert_close(after, expected, rtol=1e-12, atol=1e-12)
    for after, before in zip(agent.critics.parameters(), online):
        assert torch.equal(after, before)


@pytest.mark.parametrize("entropy_gap", [+0.7, -0.7])
def test_temperature_step_follows_eq_8(entropy_gap):
    """d L_alpha / d log alpha = -mean(log pi + target_entropy): alpha rises when the entropy
    -log pi is below the target (-dim A), falls when above."""
    agent = float64_agent(autotune=True)
    with torch.no_grad():
        agent.log_alpha.fill_(0.3)
    log_prob = torch.full((BATCH,), ACTION_DIM + entropy_gap, dtype=torch.float64)  # entropy = target - gap
    before = agent.log_alpha.item()
    out = agent.temperature_step(log_prob)
    assert agent.log_alpha.grad.item() == pytest.approx(-entropy_gap)
    assert out["alpha_loss"].item() == pytest.approx(-before * entropy_gap, abs=1e-7)
    assert (agent.log_alpha.item() > before) == (entropy_gap > 0)


def test_the_temperature_is_fitted_to_actor_0s_entropy_not_the_last_actors():
    """Eq. (8) with three actors and --autotune: the actor step hands the temperature step actor 0's
    log pi, so the alpha loss, its gradient and the logged entropy are actor 0's (from torch.distributions
    on the same noise). Actor 2 is made much narrower than actor 0, so the last actor's log pi gives
    another loss: fitting alpha to it fails here."""
    agent = float64_agent(autotune=True)
    with torch.no_grad():
        agent.log_alpha.fill_(0.3)  # at log alpha = 0 (the start) the loss is 0 whatever log pi is
        agent.actors[2].net[-1].bias[ACTION_DIM:].sub_(3.0)  # actor 2's raw log sigma: a narrower actor
    actors = copy.deepcopy(agent.actors)
    batch = float64_batch(seed=6)
    losses = agent.critic_step(batch)
    torch.manual_seed(9)
    noise = torch.randn(3, BATCH, ACTION_DIM, dtype=torch.float64)  # actor_step's one draw, [N, B, A]
    torch.manual_seed(9)
    losses |= agent.actor_step(batch)
    with torch.no_grad():
        log_probs = []
        for i, actor in enumerate(actors):
            mean, log_std = actor.distribution_params(batch["obs"])
            log_probs.append(tanh_gaussian_log_prob(mean + log_std.exp() * noise[i], mean, log_std.exp(),
                                                    actor.action_scale))
    target_entropy = -ACTION_DIM
    expected, last = (-(0.3 * (lp + target_entropy)).mean().item() for lp in (log_probs[0], log_probs[-1]))
    assert abs(expected - last) > 0.1, (expected, last)  # the test can tell the two actors apart
    losses |= agent.temperature_step(losses["log_prob"])
    assert losses["alpha_loss"].item() == pytest.approx(expected, rel=1e-4)
    assert losses["alpha_loss"].item() != pytest.approx(last, rel=1e-2)
    assert agent.log_alpha.grad.item() == pytest.approx(-(log_probs[0] + target_entropy).mean().item(), rel=1e-4)
    scalars = pj.loss_scalars(losses, agent)
    assert scalars["losses/alpha_loss"] == pytest.approx(expected, rel=1e-4)
    assert scalars["losses/entropy"] == pytest.approx(-log_probs[0].mean().item(), rel=1e-4)
    assert scalars["losses/entropy"] != pytest.approx(-log_probs[-1].mean().item(), rel=1e-2)


def test_actions_use_the_boxs_scale_and_bias():
    """On an asymmetric box: the deterministic action is tanh(mu) * scale + bias, far-out u lands on
    the bounds, and acting draws the action `sample` draws from the same stream."""
    actor = float64_agent().actors[1]
    obs = float64_batch()["obs"]
    low, high = torch.as_tensor(SPACE.low, dtype=torch.float64), torch.as_tensor(SPACE.high, dtype=torch.float64)
    mean, _ = actor.distribution_params(obs)
    torch.testing.assert_close(actor.deterministic_action(obs), torch.tanh(mean) * (high - low) / 2 + (high + low) / 2)
    torch.testing.assert_close(actor.squash(torch.tensor([[-30.0, 0.0, 30.0]], dtype=torch.float64)),
                               torch.stack([low[0], (low[1] + high[1]) / 2, high[2]]).view(1, 3))
    torch.manual_seed(4)
    sampled, _ = actor.sample(obs)
    torch.manual_seed(4)
    torch.testing.assert_close(actor.act(obs), sampled.detach())


def test_loss_scalars_report_the_updates_numbers():
    """What is logged is what the update computed: per-critic TD errors and mean Q, actor 0's loss
    as the SAC actor loss, each actor's loss, entropy, W2 to its predecessor and lambda, alpha."""
    agent = float64_agent(autotune=True, normalize_q=True)
    losses = full_update(agent, float64_batch(seed=4))
    scalars = pj.loss_scalars(losses, agent)
    assert_critic_scalars(scalars, losses)
    assert scalars["losses/actor_loss"] == pytest.approx(losses["per_actor_loss"][0].item())
    for i in range(3):
        assert scalars[f"losses/actor_loss_{i}"] == pytest.approx(losses["per_actor_loss"][i].item())
        assert scalars[f"losses/entropy_actor_{i}"] == pytest.approx(losses["entropy"][i].item())
    for i in (1, 2):
        assert scalars[f"losses/w2_actor_{i}"] == pytest.approx(losses["w2"][i - 1].item())
        assert scalars[f"losses/lambda_actor_{i}"] == pytest.approx(losses["lambda"][i - 1].item())
    assert scalars["losses/alpha"] == pytest.approx(agent.log_alpha.exp().item())
    assert scalars["losses/alpha_loss"] == pytest.approx(losses["alpha_loss"].item())
    assert "losses/w2_actor_3" not in scalars


def test_two_actors_report_the_w2_and_lambda_of_actor_1():
    agent = float64_agent(num_actors=2)
    out = agent.actor_step(float64_batch())
    assert out["w2"].shape == (1,) and out["lambda"].shape == (1,) and out["per_actor_loss"].shape == (2,)
    assert {"losses/w2_actor_1", "losses/lambda_actor_1"} <= set(pj.loss_scalars(
        out | agent.critic_step(float64_batch()), agent))
