"""gmm_density_matching.py, the math: each pure function against an independent computation."""

import math
import platform
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import gmm_density_matching as gmm


def random_gmm(batch=5, k=3, a=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    log_w = torch.log_softmax(torch.randn(batch, k, generator=g, dtype=dtype), dim=-1)
    mean = torch.randn(batch, k, a, generator=g, dtype=dtype)
    log_std = 0.5 * torch.randn(batch, k, a, generator=g, dtype=dtype)
    return log_w, mean, log_std


def agent_for(space, **overrides):
    args = gmm.args_from_flat(dict(env_id="Pendulum-v1", hidden_size=16, **overrides))
    obs_dim = 3
    return gmm.GMMAgent(args, obs_dim, space, torch.device("cpu"))


# ---- eq. (3): log pi(u|s) ---------------------------------------------------------------------
def test_log_prob_equals_mixture_same_family_in_float64():
    log_w, mean, log_std = random_gmm()
    u = torch.randn(5, 7, 2, dtype=torch.float64)  # 7 points per state
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=log_w),
        torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1))
    expected = reference.log_prob(u.transpose(0, 1)).transpose(0, 1)  # [M, B] batch convention -> [B, M]
    torch.testing.assert_close(gmm.gmm_log_prob(u, log_w, mean, log_std), expected, rtol=1e-12, atol=1e-12)


def test_log_prob_gradient_passes_gradcheck_and_matches_mixture_same_family():
    """The hand-written backward of the Mahalanobis term (SquaredMahalanobis) against finite
    differences (gradcheck) and against autograd through torch.distributions, float64."""
    log_w, mean, log_std = random_gmm()
    u = torch.randn(5, 7, 2, dtype=torch.float64)
    inputs = [t.detach().clone().requires_grad_() for t in (u, mean, torch.exp(-log_std))]
    assert torch.autograd.gradcheck(gmm.SquaredMahalanobis.apply, inputs)

    params = [t.detach().clone().requires_grad_() for t in (log_w, mean, log_std)]
    # Categorical normalises its logits: give ours the same log_softmax so the gradients compare
    ours_log_prob = gmm.gmm_log_prob(u, torch.log_softmax(params[0], -1), params[1], params[2])
    ours = torch.autograd.grad(ours_log_prob.sin().sum(), params)
    reference_params = [t.detach().clone().requires_grad_() for t in (log_w, mean, log_std)]
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=reference_params[0]),
        torch.distributions.Independent(torch.distributions.Normal(reference_params[1], reference_params[2].exp()), 1))
    expected = torch.autograd.grad(reference.log_prob(u.transpose(0, 1)).transpose(0, 1).sin().sum(), reference_params)
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_actor_log_prob_includes_the_tanh_jacobian():
    """sample() returns log pi(a|s) over actions: the u-density minus log|da/du|, eq. (1)."""
    space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32))
    actor = gmm.GMMActor(3, space.low, space.high, 16, 1, num_components=3)
    obs = torch.randn(4, 3)
    torch.manual_seed(0)
    action, log_prob = actor.sample(obs)
    torch.manual_seed(0)
    u = actor.sample_u(actor.distribution_params(obs), 1).squeeze(1)
    assert torch.allclose(action, actor.squash(u))
    scale = torch.tensor([2.0, 0.5])
    jacobian = torch.log(scale * (1 - torch.tanh(u) ** 2) + 1e-6).sum(-1)
    expected = gmm.gmm_log_prob(u.unsqueeze(1), *actor.distribution_params(obs)).squeeze(1) - jacobian
    torch.testing.assert_close(log_prob, expected)
    assert ((action >= torch.tensor(space.low)) & (action <= torch.tensor(space.high))).all()


def test_sampling_follows_the_mixture_weights_and_components():
    """Three components far apart: the share of draws near each mean is its weight (within 4
    binomial standard errors), and each cluster has its component's mean and std."""
    actor = gmm.GMMActor(1, np.array([-1.0], np.float32), np.array([1.0], np.float32), 8, 1, num_components=3)
    weights = torch.tensor([0.5, 0.3, 0.2])
    log_w = torch.log(weights).view(1, 3)
    mean = torch.tensor([[[-6.0], [0.0], [6.0]]])
    log_std = torch.log(torch.tensor([[[0.1], [0.2], [0.3]]]))
    draws = 20_000
    u = actor.sample_u((log_w, mean, log_std), draws, torch.Generator().manual_seed(0)).view(-1)
    clusters = [u[u < -3], u[(u > -3) & (u < 3)], u[u > 3]]
    for cluster, weight, mu, sigma in zip(clusters, weights.tolist(), [-6.0, 0.0, 6.0], [0.1, 0.2, 0.3]):
        assert abs(len(cluster) / draws - weight) < 4 * (weight * (1 - weight) / draws) ** 0.5
        assert abs(float(cluster.mean()) - mu) < 0.02 and abs(float(cluster.std()) - sigma) < 0.02


def test_deterministic_action_is_the_heaviest_components_mean():
    space = gym.spaces.Box(np.array([-2.0], np.float32), np.array([4.0], np.float32))
    actor = gmm.GMMActor(2, space.low, space.high, 8, 1, num_components=3)
    obs = torch.randn(6, 2)
    log_w, mean, _ = actor.distribution_params(obs)
    k_star = log_w.argmax(-1)
    expected = torch.tanh(mean[torch.arange(6), k_star]) * 3.0 + 1.0
    torch.testing.assert_close(actor.deterministic_action(obs), expected)
    # not the mixture mean, nor the first component, in general
    assert not torch.allclose(actor.deterministic_action(obs), torch.tanh(mean[:, 0]) * 3.0 + 1.0) or (k_star == 0).all()


# ---- eq. (5): the two loss terms ----------------------------------------------------------------
def test_entropy_regulariser_value_and_sign():
    log_w, _, log_std = random_gmm(batch=4, k=3, a=2)
    lam = 0.3
    expected = np.mean([-lam * sum(math.exp(log_w[b, k]) * float(log_std[b, k].sum()) for k in range(3))
                        for b in range(4)])
    value = gmm.entropy_regulariser(log_w, log_std, lam)
    assert abs(float(value) - expected) < 1e-12
    # minimising it must widen the components: d L_ent / d log sigma = -lambda * w < 0
    log_std = log_std.clone().requires_grad_(True)
    gmm.entropy_regulariser(log_w, log_std, lam).backward()
    assert (log_std.grad < 0).all()
    assert float(gmm.entropy_regulariser(log_w, torch.ones_like(log_std), lam)) < 0  # wide stds lower the loss


def test_density_matching_loss_is_the_weighted_negative_log_likelihood():
    log_pi = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -4.0]], requires_grad=True)
    weights = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], requires_grad=True)
    loss = gmm.density_matching_loss(log_pi, weights)
    assert abs(loss.item() - np.mean([0.2 + 0.6 + 1.5, 0.5])) < 1e-6
    loss.backward()
    assert weights.grad is None, "p_i is a target: no gradient may flow into it"
    torch.testing.assert_close(log_pi.grad, -weights.detach() / 2)


# ---- eqs. (4), (6), (7): the weights --------------------------------------------------------------
def test_boltzmann_weights_against_a_hand_computed_softmax():
    q = torch.tensor([[1.0, 2.0, 4.0]])
    t = 2.0
    e = [math.exp(1 / t), math.exp(2 / t), math.exp(4 / t)]
    expected = torch.tensor([[x / sum(e) for x in e]])
    torch.testing.assert_close(gmm.boltzmann_weights(q, t), expected)
    log_q = torch.tensor([[0.0, math.log(2.0), math.log(4.0)]])
    e_corrected = [e[0], e[1] / 2, e[2] / 4]
    expected = torch.tensor([[x / sum(e_corrected) for x in e_corrected]])
    torch.testing.assert_close(gmm.boltzmann_weights(q, t, log_q), expected)
    assert gmm.effective_sample_size(torch.full((2, 8), 1 / 8)).item() == pytest.approx(8.0)
    assert gmm.effective_sample_size(torch.eye(8)[:2]).item() == pytest.approx(1.0)


@pytest.mark.parametrize("proposal", ["gaussian", "policy", "mixed", "uniform"])
def test_importance_corrected_target_is_exp_q_over_t_on_a_grid(proposal):
    """1-D action box [-2, 2]: with the correction (6), the weighted proposal samples histogram to
    exp(Q(a)/T) normalised on a grid, whatever the proposal; without it, the gaussian and policy
    proposals fit q(a) * exp(Q/T) instead (the test fails if the correction is dropped)."""
    space = gym.spaces.Box(np.array([-2.0], np.float32), np.array([2.0], np.float32))
    torch.manual_seed(0)
    edges = np.linspace(-1.99, 1.99, 41)
    centres = 0.5 * (edges[1:] + edges[:-1])

    def q_of(a):
        return -((a - 0.8) ** 2) / 0.5 + 0.3 * torch.sin(3 * a)

    t = 2.0  # a broad target, so that the proposal's own shape would show if left uncorrected
    target = np.exp(q_of(torch.as_tensor(centres)).numpy() / t)
    target /= target.sum()
    errors = {}
    for corrected in (True, False):
        # a wide policy (sigma in u ~ e^0.5), so that it covers the target and importance sampling from it works
        agent = agent_for(space, num_action_samples=400_000, proposal=proposal, importance_correction=corrected,
                          log_std_min=0.0, log_std_max=1.0)
        obs = torch.zeros(1, 3)
        with torch.no_grad():
            params = agent.actor.distribution_params(obs)
            u, log_q = agent.propose(obs, params)
            a = agent.actor.squash(u).squeeze(-1)  # [1, M]
            p = gmm.boltzmann_weights(q_of(a), t, log_q)
        hist, _ = np.histogram(a.numpy().ravel(), bins=edges, weights=p.numpy().ravel())
        errors[corrected] = np.abs(hist / hist.sum() - target).sum()  # total variation x 2
    assert errors[True] < 0.05, errors
    if proposal != "uniform":  # uniform has a constant q(a): corrected or not, the same target
        assert errors[False] > 0.1, errors


@pytest.mark.parametrize("mix", [0.25, 0.75])
def test_mixed_proposal_log_q_is_the_f_weighted_mixture_over_actions(mix):
    """--proposal mixed --importance-correction: the first f M samples come from pi_old, the rest
    from N(0, I), and log q(a|s) is that of the mixture f pi_old + (1 - f) N(0, I) minus the squash's
    log |da/du| (eq. (1) with its 1e-6). The reference is one torch.distributions MixtureSameFamily of
    K + 1 components (weights f w_k and 1 - f), float64. f != 1/2, so swapping f and 1 - f fails."""
    space = gym.spaces.Box(np.array([-1.0, 0.5], np.float32), np.array([3.0, 2.0], np.float32))
    m = 8  # f M = 2 or 6: f is exactly `mix`
    torch.manual_seed(0)
    agent = agent_for(space, proposal="mixed", proposal_mix=mix, importance_correction=True, num_action_samples=m,
                      num_components=3)
    agent.actor.double()
    obs = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        params = agent.actor.distribution_params(obs)
        u, log_q = agent.propose(obs, params)
    assert u.shape == (5, m, 2) and log_q.dtype == torch.float64
    log_w, mean, log_std = params
    b, _, a = mean.shape

    def mixture_log_prob(f):
        gaussian_weight = torch.full((b, 1), math.log(1 - f), dtype=torch.float64)
        mixture = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(logits=torch.cat([log_w + math.log(f), gaussian_weight], -1)),
            torch.distributions.Independent(torch.distributions.Normal(
                torch.cat([mean, torch.zeros(b, 1, a, dtype=torch.float64)], 1),
                torch.cat([log_std.exp(), torch.ones(b, 1, a, dtype=torch.float64)], 1)), 1))
        return mixture.log_prob(u.transpose(0, 1)).transpose(0, 1)  # [M, B] batch convention -> [B, M]

    scale = torch.tensor([2.0, 0.75], dtype=torch.float64)  # (high - low) / 2
    log_jacobian = torch.log(scale * (1 - torch.tanh(u) ** 2) + 1e-6).sum(-1)
    expected = mixture_log_prob(mix) - log_jacobian
    torch.testing.assert_close(log_q, expected, rtol=1e-10, atol=1e-10)
    # the test can tell f from 1 - f: the GMM (std ~ e^-1.5) and N(0, I) differ on these samples
    assert (log_q - (mixture_log_prob(1 - mix) - log_jacobian)).abs().max() > 0.3


def test_kl_temperature_solves_the_dual():
    """The returned T gives weights whose mean KL to uniform is eps (the dual's optimality
    condition), and it scales with Q: the same problem with 100 x Q needs 100 x T."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(64, 32, generator=g) * torch.rand(64, 1, generator=g) * 5
    for eps in (0.05, 0.5, 2.0):
        t = gmm.kl_temperature(q, eps)
        p = torch.softmax(q / t, dim=-1)
        kl = (p * torch.log(p * 32)).sum(-1).mean()
        assert abs(float(kl) - eps) < 1e-3 * max(eps, 1.0), (eps, float(kl))
        assert float(gmm.kl_temperature(100 * q, eps)) == pytest.approx(100 * float(t), rel=1e-3)

    # the dual itself is minimal there: g(T) = T eps + T mean_s log mean_i exp(Q_i/T)
    def dual(temp, eps=0.5):
        return temp * eps + temp * (torch.logsumexp(q / temp, -1) - math.log(32)).mean()

    t = gmm.kl_temperature(q, 0.5)
    assert dual(t) <= dual(t * 1.05) and dual(t) <= dual(t * 0.95)


def test_kl_temperature_is_within_its_stated_precision_at_any_offset_and_scale():
    """T within 0.04% (the docstring's precision) of the exact root, found by bisection in float64;
    unchanged when a constant is added to every Q (softmax ignores it) and proportional to Q's
    scale from 1e-6 to 1e6."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(32, 16, generator=g, dtype=torch.float64) * 3

    def exact_root(values, eps):
        def mean_kl(log_t):
            log_p = torch.log_softmax(values / math.exp(log_t), dim=-1)
            return float((log_p.exp() * (log_p + math.log(values.shape[-1]))).sum(-1).mean())
        low, high = -30.0, 30.0
        for _ in range(200):
            middle = 0.5 * (low + high)
            low, high = (middle, high) if mean_kl(middle) > eps else (low, middle)
        return math.exp(0.5 * (low + high))

    for eps in (0.1, 0.5, 1.5):
        root = exact_root(q, eps)
        assert float(gmm.kl_temperature(q, eps)) == pytest.approx(root, rel=4e-4)
        assert float(gmm.kl_temperature(q - 1000.0, eps)) == pytest.approx(root, rel=4e-4)
        for scale in (1e-6, 1e6):
            assert float(gmm.kl_temperature(q * scale, eps)) == pytest.approx(root * scale, rel=4e-4)


# ---- eq. (9): the split first layer ------------------------------------------------------------------
def test_split_critic_forward_equals_the_concatenated_forward():
    torch.manual_seed(0)
    critics = gmm.CriticEnsemble(obs_dim=5, action_dim=3, hidden_size=16, num_layers=2).double()
    obs, actions = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 4, 3, dtype=torch.float64)

    def plain(o, a):  # the unsplit network: x = [s; a], one weight W = [W_s; W_a] per critic
        w = torch.cat([critics.weight_state, critics.weight_action], dim=1)
        x = torch.cat([o, a], -1).unsqueeze(0).expand(2, -1, -1)
        x = torch.relu(torch.baddbmm(critics.bias_first, x, w))
        x = torch.relu(torch.baddbmm(critics.biases[0], x, critics.weights[0]))
        return torch.baddbmm(critics.biases[1], x, critics.weights[1]).squeeze(-1)

    many = critics.forward_many(obs, actions)  # [N, B, M]
    assert many.shape == (2, 7, 4)
    for i in range(4):
        torch.testing.assert_close(many[:, :, i], plain(obs, actions[:, i]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(critics(obs, actions[:, i]), plain(obs, actions[:, i]), rtol=1e-12, atol=1e-12)
    # the two critics are independent networks
    assert not torch.allclose(many[0], many[1])
    # in blocks of whole states (here 2 states = 8 rows, the last block holding one state) the
    # pass computes the same numbers
    torch.testing.assert_close(critics.forward_many(obs, actions, chunk_rows=8), many, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(critics.forward_many(obs, actions, chunk_rows=1), many, rtol=1e-12, atol=1e-12)


def bfloat16_case(action_noise: float):
    """A float32 critic with Q of a few hundred (as on a MuJoCo task), 10 states x 8 actions each
    (action_noise: how far the 8 actions spread around each state's centre), its bfloat16 scores
    (blocks of 3 states) and, in float64, the pieces of its exact forward."""
    torch.manual_seed(1)
    critics = gmm.CriticEnsemble(obs_dim=9, action_dim=3, hidden_size=64, num_layers=2)
    with torch.no_grad():
        critics.weights[-1].mul_(20.0)
        critics.biases[-1].add_(300.0)
    obs = torch.randn(10, 9)
    actions = torch.tanh(torch.randn(10, 1, 3) + action_noise * torch.randn(10, 8, 3))
    low = critics.forward_many(obs, actions, chunk_rows=24, matmul_dtype=torch.bfloat16).double()

    c64 = {name: p.detach().double() for name, p in critics.named_parameters()}
    first = torch.cat([c64["weight_state"], c64["weight_action"]], dim=1)  # [N, 12, h]

    def first_layer(a):  # [10, k, 3] -> relu(first layer) [N, 10 * k, h]
        x = torch.cat([obs.double().unsqueeze(1).expand(-1, a.shape[1], -1), a], -1).reshape(-1, 12)
        return torch.relu(torch.baddbmm(c64["bias_first"], x.expand(2, -1, -1), first))

    def output(hidden_pre_activation):  # [N, rows, h] -> Q [N, 10, 8]
        return torch.baddbmm(c64["biases.1"], torch.relu(hidden_pre_activation), c64["weights.1"]).view(2, 10, 8)

    h1 = first_layer(actions.double())
    # the reference: the activations at each state's mean action, repeated for its 8 actions
    reference = first_layer(actions.double().mean(1, keepdim=True)).repeat_interleave(8, dim=1)
    exact = output(torch.baddbmm(c64["biases.0"], h1, c64["weights.0"]))
    return low, exact, h1, reference, c64, output


def test_bfloat16_scoring_stays_within_its_rounding_bound():
    """--score-dtype bfloat16 against a float64 forward of the same float32 weights, entry by
    entry, under the worst case of its rounding: the deviation h1 - r and the weights rounded
    (relative 2^-9 each), the product rounded (2^-9), the reference term r W + b exact; then
    through the 1-Lipschitz ReLU and the output weights."""
    low, exact, h1, reference, c64, _ = bfloat16_case(action_noise=1.0)
    unit = 2.0 ** -9
    deviation = h1 - reference
    product = torch.bmm(deviation, c64["weights.0"])
    product_size = torch.bmm(deviation.abs(), c64["weights.0"].abs())  # sum_i |d_i W_ij|
    hidden_error = 2 * unit * product_size + unit * product.abs() * (1 + 2 * unit) + 1e-4  # + float32 slack
    bound = torch.bmm(hidden_error, c64["weights.1"].abs()).view(2, 10, 8)
    error = (low - exact).abs()
    assert (error <= bound).all(), (error / bound).max()
    assert error.max() > 1e-3  # it did run in bfloat16: float32 alone is ~100x closer


def test_bfloat16_scoring_rounds_only_the_deviations():
    """With the 8 actions of a state close together (as a trained policy proposes them), Q differs
    little across them: rounding the activations themselves to bfloat16 would blur those
    differences; rounding only the deviations from the state's reference keeps them."""
    low, exact, h1, _, c64, output = bfloat16_case(action_noise=0.05)

    def bf16(t):
        return t.to(torch.bfloat16).double()

    rounding_activations = output(bf16(torch.bmm(bf16(h1), bf16(c64["weights.0"]))) + c64["biases.0"])
    naive_error = (rounding_activations - exact).abs()
    error = (low - exact).abs()
    spread = exact.amax(-1) - exact.amin(-1)  # of Q over each state's 8 actions: what the weights see
    assert error.max() < naive_error.max() / 5
    assert (error.amax(-1) < 0.05 * spread).all(), (error.amax(-1) / spread).max()
    assert (naive_error.amax(-1) > 0.1 * spread).any()  # the naive rounding is not harmless here


def test_td_target_has_no_entropy_term_by_default():
    r, d = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])
    q, logp = torch.tensor([10.0, 10.0]), torch.tensor([-3.0, -3.0])
    torch.testing.assert_close(gmm.td_target(r, d, q, logp, gmm.Args().alpha, 0.9), torch.tensor([10.0, 1.0]))
    torch.testing.assert_close(gmm.td_target(r, d, q, logp, 0.5, 0.9), torch.tensor([1 + 0.9 * 11.5, 1.0]))


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="the malloc thresholds are a glibc setting")
def test_malloc_thresholds_apply_on_glibc():
    assert gmm.keep_freed_memory_in_process() is True


def test_act_draws_what_sample_draws():
    space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32))
    actor = agent_for(space).actor
    obs = torch.randn(6, 3)
    sampled, _ = actor.sample(obs, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(actor.act(obs, generator=torch.Generator().manual_seed(4)), sampled)
