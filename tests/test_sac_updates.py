"""sac_continuous.py's own update steps against float64 references (tests/references.py): the
critic target (2) with each backup type over N critics taken from the TARGET critics, the critic
loss (3) and its gradient, the actor's gradient for both estimators, eq. (4) through the action and
eq. (5) by the score function, with the actor's Q reduced as the backup type says, the temperature
step (6), and the target update (7), soft and hard, counted in critic updates."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import sac_continuous as sac
from references import (ACTION_DIM, BATCH, OBS_DIM, SPACE, assert_critic_scalars, assert_same_gradients,
                        clone_parameters, each_critic, full_update, polyak, prepared, random_batch, stacked_critic_layers, tanh_gaussian_log_prob)

CLOSE = dict(rtol=1e-4, atol=1e-6)  # float64; the scripts' eps = 1e-6 in the tanh Jacobian is the difference


def float64_agent(**overrides) -> sac.SAC:
    settings = dict(env_id="Hopper-v4", hidden_size=16, autotune=False, alpha=0.5, num_critic_networks=3)
    torch.manual_seed(0)
    agent = sac.SAC(sac.args_from_flat(dict(**{**settings, **overrides})), OBS_DIM, SPACE, torch.device("cpu"))
    return prepared(agent, agent.actor, agent.critics, agent.target_critics, dtype=torch.float64)


float64_batch = random_batch  # float64 by default


def policy_sample(actor, obs, noise):
    """(action, log pi) of the reparametrized draw u = mu + sigma * noise, log pi by torch.distributions."""
    mean, log_std = actor.distribution_params(obs)
    u = mean + log_std.exp() * noise
    return torch.tanh(u) * actor.action_scale + actor.action_bias, tanh_gaussian_log_prob(u, mean, log_std.exp(),
                                                                                       actor.action_scale)


@pytest.mark.parametrize("backup", ["min", "mean", "doubleq", "redq"])
def test_critic_target_and_loss_for_every_backup(backup):
    """Three critic steps (REDQ draws its pair anew each time, from the agent's own generator: five
    critics, so a pair drawn from another stream would differ)."""
    n = 5 if backup == "redq" else 3
    agent = float64_agent(target_critic_backup_type=backup, num_critic_networks=n)
    subset_generator = torch.Generator().set_state(agent.backup_generator.get_state())
    for step in range(3):
        critics, actor = copy.deepcopy(agent.critics), copy.deepcopy(agent.actor)
        batch = float64_batch(seed=step)
        torch.manual_seed(5 + step)
        noise = torch.randn(BATCH, ACTION_DIM, dtype=torch.float64)
        with torch.no_grad():
            next_action, next_log_prob = policy_sample(actor, batch["next_obs"], noise)
            next_q = each_critic(agent.target_critics, stacked_critic_layers, batch["next_obs"], next_action)  # [n, B]
            if backup == "min":
                backup_q = next_q.min(dim=0).values.expand(n, -1)
            elif backup == "mean":
                backup_q = next_q.mean(dim=0).expand(n, -1)
            elif backup == "doubleq":  # critic i learns from target critic i-1
                backup_q = next_q[[2, 0, 1]]
            else:  # the min over a random pair of the target critics, the same pair for every critic
                pair = torch.randperm(n, generator=subset_generator)[:2]
                backup_q = next_q[pair].min(dim=0).values.expand(n, -1)
            target = batch["rewards"] + 0.99 * (1 - batch["terminations"]) * (backup_q - 0.5 * next_log_prob)
        torch.manual_seed(5 + step)
        out = agent.critic_step(batch)
        torch.testing.assert_close(out["td_target"], target, **CLOSE)
        q_values = each_critic(critics, stacked_critic_layers, batch["obs"], batch["actions"])
        torch.testing.assert_close(out["q_values"], q_values.detach(), **CLOSE)
        loss = (q_values - target).pow(2).mean(dim=1).sum()
        torch.testing.assert_close(out["critic_loss"], loss.detach(), **CLOSE)
        loss.backward()
        assert_same_gradients(agent.critics, critics)


@pytest.mark.parametrize("gradient", ["reparametrize", "reinforce"])
@pytest.mark.parametrize("backup", ["min", "mean", "redq"])
def test_actor_gradient_for_both_estimators(gradient, backup):
    """eq. (4): d/dtheta mean(alpha log pi(a~) - Q(s, a~)) through a~; eq. (5): the score function
    -mean(log pi(a) * sg(Q(s, a) - alpha log pi(a))) with a held fixed. The actor's Q is the min over
    the critics, or their mean for the mean backup."""
    agent = float64_agent(actor_gradient_type=gradient, target_critic_backup_type=backup, num_actor_samples=2)
    actor = copy.deepcopy(agent.actor)
    batch = float64_batch(seed=2)
    obs = batch["obs"].repeat_interleave(2, dim=0)  # two actions per state
    torch.manual_seed(9)
    noise = torch.randn(2 * BATCH, ACTION_DIM, dtype=torch.float64)
    if gradient == "reparametrize":
        action, log_prob = policy_sample(actor, obs, noise)
    else:
        mean, log_std = actor.distribution_params(obs)
        u = (mean + log_std.exp() * noise).detach()
        action = (torch.tanh(u) * actor.action_scale + actor.action_bias)
        log_prob = tanh_gaussian_log_prob(u, mean, log_std.exp(), actor.action_scale)
    q_all = each_critic(agent.critics, stacked_critic_layers, obs, action)
    q = q_all.min(dim=0).values if backup == "min" else q_all.mean(dim=0)  # REDQ's actor: the mean
    if gradient == "reparametrize":
        loss = (0.5 * log_prob - q).mean()
    else:
        loss = -(log_prob * (q - 0.5 * log_prob).detach()).mean()
    torch.manual_seed(9)
    out = agent.actor_step(batch)
    torch.testing.assert_close(out["actor_loss"], loss.detach(), **CLOSE)
    torch.testing.assert_close(out["log_prob"], log_prob.detach(), **CLOSE)
    assert all(p.grad is None for p in agent.critics.parameters()), "the actor step must not train the critics"
    loss.backward()
    assert_same_gradients(agent.actor, actor)


@pytest.mark.parametrize("entropy_gap", [+0.7, -0.7])
def test_temperature_step_follows_eq_6(entropy_gap):
    """d L_alpha / d log alpha = -mean(log pi + target_entropy), target_entropy = -scale * dim A."""
    agent = float64_agent(autotune=True, target_entropy_scale=0.5)
    with torch.no_grad():
        agent.log_alpha.fill_(0.3)
    log_prob = torch.full((BATCH,), 0.5 * ACTION_DIM + entropy_gap, dtype=torch.float64)
    out = agent.temperature_step(log_prob)
    assert agent.log_alpha.grad.item() == pytest.approx(-entropy_gap)
    assert out["alpha_loss"].item() == pytest.approx(-0.3 * entropy_gap, rel=1e-6)
    assert (agent.log_alpha.item() > 0.3) == (entropy_gap > 0)
    assert agent.alpha.item() == pytest.approx(np.exp(agent.log_alpha.item()))
    assert float64_agent(use_entropy_bonus=False).alpha.item() == 0.0


def test_target_updates_soft_every_step_and_hard_every_period():
    soft = float64_agent(tau=0.25)
    target, online = clone_parameters(soft.target_critics), clone_parameters(soft.critics)
    soft.target_update()
    for after, expected in zip(soft.target_critics.parameters(), polyak(target, online, 0.25)):
        torch.testing.assert_close(after, expected, rtol=1e-12, atol=1e-12)
    hard = float64_agent(use_soft_target_update=False, target_update_period=4)
    target, online = clone_parameters(hard.target_critics), clone_parameters(hard.critics)
    for _ in range(3):
        hard.target_update()
        assert all(torch.equal(a, b) for a, b in zip(hard.target_critics.parameters(), target))
    hard.target_update()  # the fourth critic update copies
    assert all(torch.equal(a, b) for a, b in zip(hard.target_critics.parameters(), online))


def test_redq_draws_a_pair_by_default_and_an_unknown_backup_is_named():
    next_q = torch.tensor([[1.0, 5.0], [2.0, 4.0], [3.0, 3.0], [0.0, 9.0]])
    generator = torch.Generator().manual_seed(1)
    pairs = set()
    for _ in range(40):
        out = sac.backup_target_q(next_q, "redq", generator=generator)  # subset size by default: 2
        pairs.add(next((i, j) for i in range(4) for j in range(i + 1, 4)
                       if torch.equal(out[0], next_q[[i, j]].min(dim=0).values)))
    assert len(pairs) >= 4  # several different pairs, and every value is the min over some pair
    with pytest.raises(ValueError, match="unknown backup type median"):
        sac.backup_target_q(next_q, "median")


def test_loss_scalars_report_the_updates_numbers():
    """What is logged is what the update computed: per-critic TD errors and mean Q, the actor loss,
    alpha, the entropy -mean log pi and the temperature loss."""
    agent = float64_agent(autotune=True)
    losses = full_update(agent, float64_batch(seed=4))
    scalars = sac.loss_scalars(losses, agent)
    assert_critic_scalars(scalars, losses)
    assert scalars["losses/actor_loss"] == pytest.approx(losses["actor_loss"].item())
    assert scalars["losses/alpha"] == pytest.approx(agent.log_alpha.exp().item())
    assert scalars["losses/entropy"] == pytest.approx(-losses["log_prob"].mean().item())
    assert scalars["losses/alpha_loss"] == pytest.approx(losses["alpha_loss"].item())
