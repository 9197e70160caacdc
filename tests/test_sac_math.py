"""sac_continuous.py's math against independent references (float64 where it matters)."""


import numpy as np
import pytest
import torch
import torch.distributions as D

import sac_continuous as sac


def make_actor(low, high, obs_dim=3, **kwargs):
    torch.manual_seed(0)
    return sac.Actor(obs_dim, np.asarray(low, np.float32), np.asarray(high, np.float32), 16, 2, **kwargs).double()


def reference_log_prob(actor, u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log pi(a|s) of a = squash(u) from torch.distributions' Normal plus the change of variables
    written out (with eq. (1)'s 1e-6), independent of the script's formula; differentiable."""
    log_density = D.Independent(D.Normal(mean, log_std.exp()), 1).log_prob(u)
    if actor.use_tanh:
        return log_density - torch.log(actor.action_scale * (1 - torch.tanh(u) ** 2) + 1e-6).sum(-1)
    return log_density - torch.log(actor.action_scale).sum(-1)


@pytest.mark.parametrize("low, high", [([-2.0, -0.4], [2.0, 0.4]), ([-1.0, 0.0], [3.0, 10.0])])
def test_tanh_gaussian_log_prob_matches_torch_distributions(low, high):
    actor = make_actor(low, high)
    obs = torch.randn(64, 3, dtype=torch.float64)
    action, log_prob = actor.sample(obs, generator=torch.Generator().manual_seed(2))
    mean, log_std = actor.distribution_params(obs)
    scale = torch.tensor(high, dtype=torch.float64) / 2 - torch.tensor(low, dtype=torch.float64) / 2
    bias = torch.tensor(high, dtype=torch.float64) / 2 + torch.tensor(low, dtype=torch.float64) / 2
    reference = D.TransformedDistribution(D.Independent(D.Normal(mean, log_std.exp()), 1),
                                          [D.TanhTransform(), D.AffineTransform(bias, scale)])
    # the 1e-6 in eq. (1)'s Jacobian shifts log pi by at most ~1e-6 / (scale * (1 - tanh^2))
    torch.testing.assert_close(log_prob, reference.log_prob(action), rtol=0, atol=1e-3)
    assert ((action > bias - scale) & (action < bias + scale)).all()


@pytest.mark.parametrize("use_tanh", [True, False])
@pytest.mark.parametrize("reparametrize", [True, False])
def test_sample_shortcut_equals_log_prob_of_the_drawn_action_with_the_same_gradient(use_tanh, reparametrize):
    """`sample` reuses the noise as (u - mu) / sigma and tanh(u) for both outputs: its log pi and
    the parameters' gradient must equal torch.distributions' on the same u (float64)."""
    actor = make_actor([-1.0, 0.0], [3.0, 10.0], use_tanh=use_tanh)
    obs = torch.randn(32, 3, dtype=torch.float64)
    generator = torch.Generator().manual_seed(5)
    action, log_prob = actor.sample(obs, reparametrize=reparametrize, generator=generator)
    shortcut_grads = torch.autograd.grad((log_prob.sum() + action.sum()), list(actor.parameters()))

    mean, log_std = actor.distribution_params(obs)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    u = mean + log_std.exp() * noise
    if not reparametrize:
        u = u.detach()
    plain_log_prob = reference_log_prob(actor, u, mean, log_std)
    plain_grads = torch.autograd.grad((plain_log_prob.sum() + actor.squash(u).sum()), list(actor.parameters()))
    torch.testing.assert_close(log_prob, plain_log_prob)
    torch.testing.assert_close(action, actor.squash(u))
    for shortcut, plain in zip(shortcut_grads, plain_grads):
        torch.testing.assert_close(shortcut, plain)


def test_act_draws_what_sample_draws():
    actor = make_actor([-2.0, -0.4], [2.0, 0.4])
    obs = torch.randn(4, 3, dtype=torch.float64)
    torch.manual_seed(3)
    sampled, _ = actor.sample(obs)
    torch.manual_seed(3)
    torch.testing.assert_close(actor.act(obs), sampled.detach())
    # with an explicit generator too (the evaluation's stochastic actions)
    sampled, _ = actor.sample(obs, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(actor.act(obs, generator=torch.Generator().manual_seed(4)), sampled.detach())


def test_actions_stay_in_asymmetric_box_and_centre_maps_to_bias():
    low, high = [-1.0, 0.0], [3.0, 10.0]
    actor = make_actor(low, high)
    torch.testing.assert_close(actor.squash(torch.zeros(1, 2, dtype=torch.float64)),
                               torch.tensor([[1.0, 5.0]], dtype=torch.float64))
    big = torch.tensor([[50.0, -50.0]], dtype=torch.float64)
    torch.testing.assert_close(actor.squash(big), torch.tensor([[3.0, 0.0]], dtype=torch.float64))
    actions, _ = actor.sample(torch.randn(5000, 3, dtype=torch.float64) * 5)
    assert (actions >= torch.tensor(low, dtype=torch.float64)).all() and (actions <= torch.tensor(high, dtype=torch.float64)).all()
    # both halves of each box are visited: the scaling is not stuck at one bound
    assert (actions[:, 0] < 1.0).any() and (actions[:, 0] > 1.0).any()


@pytest.mark.parametrize("use_tanh", [True, False])
def test_deterministic_action_is_the_squashed_mean_on_an_asymmetric_box(use_tanh):
    """The evaluation action from the actor's mean output mu(s) (the first half of the trunk's
    output), written out: tanh(mu) * scale + bias; with --no-use-tanh mu * scale + bias, NOT clipped
    (the Args docstring: clipped only when sent to the env, which `evaluate` does). Means both
    above 1 and below 0.5 in size, so tanh(mu), mu and clip(mu * scale + bias) all give other actions."""
    low, high = [-1.0, 0.5], [3.0, 2.0]
    actor = make_actor(low, high, use_tanh=use_tanh)
    obs = torch.randn(64, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 4
    with torch.no_grad():
        mean = actor.net(obs)[:, :2]  # mu; the second half is the raw log sigma
    assert mean.abs().max() > 1.0 and (mean.abs() < 0.5).any()  # both saturated and near-linear means
    low_t, high_t = torch.tensor(low, dtype=torch.float64), torch.tensor(high, dtype=torch.float64)
    scale, bias = (high_t - low_t) / 2, (high_t + low_t) / 2  # [2, 0.75], [1, 1.25]
    expected = (torch.tanh(mean) if use_tanh else mean) * scale + bias
    action = actor.deterministic_action(obs)
    torch.testing.assert_close(action, expected, rtol=1e-12, atol=1e-12)
    inside = (action > low_t) & (action < high_t)
    assert inside.all() if use_tanh else not inside.all()  # without tanh the mean may leave the box


def test_untanhed_policy_log_prob_is_gaussian_in_action_space():
    actor = make_actor([-2.0], [2.0], use_tanh=False, state_dependent_std=False)
    obs = torch.randn(10, 3, dtype=torch.float64)
    mean, log_std = actor.distribution_params(obs)
    u = mean + 0.3
    expected = D.Normal(mean * 2.0, log_std.exp() * 2.0).log_prob(u * 2.0).sum(-1)
    torch.testing.assert_close(actor.log_prob_from_noise((u - mean) / log_std.exp(), log_std, None), expected)


def test_critic_ensemble_equals_separate_mlps():
    torch.manual_seed(1)
    ensemble = sac.CriticEnsemble(4, 2, 8, 2, num_critics=3).double()
    obs, act = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    out = ensemble(obs, act)
    for i in range(3):
        x = torch.cat([obs, act], -1)
        for layer, (w, b) in enumerate(zip(ensemble.weights, ensemble.biases)):
            x = x @ w[i] + b[i, 0]
            if layer < 2:
                x = torch.relu(x)
        torch.testing.assert_close(out[i], x.squeeze(-1))


Q_NEXT = torch.tensor([[1.0, 5.0, -2.0], [3.0, 4.0, 0.0], [2.0, 6.0, -1.0]], dtype=torch.float64)  # [N=3, B=3]


def test_backup_min_mean_doubleq():
    torch.testing.assert_close(sac.backup_target_q(Q_NEXT, "min"), torch.tensor([[1.0, 4.0, -2.0]] * 3, dtype=torch.float64))
    torch.testing.assert_close(sac.backup_target_q(Q_NEXT, "mean"), torch.tensor([[2.0, 5.0, -1.0]] * 3, dtype=torch.float64))
    # doubleq: critic i bootstraps from target critic i-1 (with two critics, each from the other)
    two = Q_NEXT[:2]
    torch.testing.assert_close(sac.backup_target_q(two, "doubleq"), torch.stack([two[1], two[0]]))


def test_backup_redq_is_min_over_a_random_subset():
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        out = sac.backup_target_q(Q_NEXT, "redq", redq_subset_size=2, generator=generator)
        candidates = {pair: Q_NEXT[list(pair)].min(0).values for pair in [(0, 1), (0, 2), (1, 2)]}
        match = [pair for pair, value in candidates.items() if torch.equal(out[0], value)]
        assert match and all(torch.equal(out[i], out[0]) for i in range(3))
        seen.update(match)
    assert len(seen) == 3, "the subset is not redrawn"
    full = sac.backup_target_q(Q_NEXT, "redq", redq_subset_size=3, generator=generator)
    torch.testing.assert_close(full, sac.backup_target_q(Q_NEXT, "min"))


def test_td_target_termination_stops_bootstrap():
    rewards = torch.tensor([1.0, 1.0], dtype=torch.float64)
    terminations = torch.tensor([0.0, 1.0], dtype=torch.float64)
    backup = torch.tensor([[10.0, 10.0]], dtype=torch.float64)
    log_prob = torch.tensor([-2.0, -2.0], dtype=torch.float64)
    y = sac.td_target(rewards, terminations, backup, log_prob, alpha=0.5, gamma=0.9)
    torch.testing.assert_close(y, torch.tensor([[1.0 + 0.9 * (10.0 + 1.0), 1.0]], dtype=torch.float64))


def test_critic_loss_sums_critics_and_averages_batch():
    q = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 0.0], [1.0, 3.0]], dtype=torch.float64)
    assert sac.critic_loss(q, y).item() == pytest.approx((1 + 4) / 2 + (1 + 9) / 2)


@pytest.mark.parametrize("entropy_gap, direction", [(+1.0, "up"), (-1.0, "down")])
def test_temperature_loss_sign(entropy_gap, direction):
    """log pi + target_entropy > 0 means the entropy (-log pi) is below target: alpha must rise."""
    log_alpha = torch.zeros(1, requires_grad=True)
    target_entropy = -2.0
    log_prob = torch.full((8,), -target_entropy + entropy_gap)
    sac.temperature_loss(log_alpha, log_prob, target_entropy).backward()
    stepped = log_alpha.detach() - 0.1 * log_alpha.grad
    assert (stepped > 0).item() if direction == "up" else (stepped < 0).item()


def test_reinforce_and_reparametrize_estimate_the_same_gradient():
    """On a toy quadratic critic, the likelihood-ratio gradient (5) and the pathwise gradient (4)
    are two estimators of the same gradient of E[Q - alpha log pi]: with many samples they agree."""
    torch.manual_seed(3)
    actor = make_actor([-1.0, -1.0], [1.0, 1.0], obs_dim=2)
    target = torch.tensor([0.3, -0.5], dtype=torch.float64)

    def critic(obs, action):  # Q(s, a) = -|a - c|^2, maximised at c, inside the box
        return -((action - target) ** 2).sum(-1)

    obs = torch.tensor([[0.5, -1.0]], dtype=torch.float64).repeat(400_000, 1)
    gradients = {}
    for kind in ("reparametrize", "reinforce"):
        actor.zero_grad()
        torch.manual_seed(11)
        action, log_prob = actor.sample(obs, reparametrize=kind == "reparametrize")
        q = critic(obs, action)
        sac.actor_loss(log_prob, q, alpha=0.1, gradient_type=kind).backward()
        gradients[kind] = torch.cat([p.grad.flatten() for p in actor.net[-1].parameters()])
    pathwise, score = gradients["reparametrize"], gradients["reinforce"]
    cosine = torch.dot(pathwise, score) / (pathwise.norm() * score.norm())
    assert cosine > 0.99, f"cosine {cosine:.4f}"
    assert (score.norm() / pathwise.norm() - 1).abs() < 0.05


def test_soft_and_hard_target_update():
    torch.manual_seed(0)
    source, target = sac.CriticEnsemble(2, 1, 4, 1, 2), sac.CriticEnsemble(2, 1, 4, 1, 2)
    before = [p.clone() for p in target.parameters()]
    sac.update_target(source, target, 0.1)
    for p_before, p_after, p_source in zip(before, target.parameters(), source.parameters()):
        torch.testing.assert_close(p_after, 0.9 * p_before + 0.1 * p_source)
    sac.update_target(source, target, 1.0)
    for p_after, p_source in zip(target.parameters(), source.parameters()):
        torch.testing.assert_close(p_after, p_source)


def test_crossed_handles_vector_step_jumps():
    assert sac.crossed(998, 1002, 1000) and not sac.crossed(1000, 1004, 1000) and not sac.crossed(0, 5, 0)
