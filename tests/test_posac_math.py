"""posac_jko.py in-process: the closed-form W2 of eq. (4), the stop-gradient to the previous actor,
N = 1 being exactly sac_continuous.py's update, checkpoint state of every actor, and bad inputs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
import tyro

import posac_jko as pj
import sac_continuous as sac
from references import full_update

OBS_DIM = 11  # Hopper-v4's shapes, without making the env
SPACE = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)


def random_batch(size: int = 64, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(size, OBS_DIM, generator=g), "next_obs": torch.randn(size, OBS_DIM, generator=g),
            "actions": torch.rand(size, 3, generator=g) * 2 - 1, "rewards": torch.randn(size, generator=g),
            "terminations": (torch.rand(size, generator=g) < 0.1).float()}


def posac_agent(num_actors: int, seed: int = 0, **kwargs) -> pj.POSAC:
    weights = tuple([0.0] + [0.5] * (num_actors - 1))
    args = pj.args_from_flat(dict(env_id="Hopper-v4", num_actors=num_actors, w2_weights=weights, hidden_size=64, **kwargs))
    torch.manual_seed(seed)
    return pj.POSAC(args, OBS_DIM, SPACE, torch.device("cpu"))


# ---- eq. (4): the closed form ---------------------------------------------------------------
def test_w2_closed_form_matches_bures_formula():
    """W2^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), float64, random diagonal S."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        d = int(rng.integers(1, 7))
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        sd1, sd2 = rng.uniform(0.05, 3.0, size=d), rng.uniform(0.05, 3.0, size=d)
        cov1, cov2 = np.diag(sd1 ** 2), np.diag(sd2 ** 2)
        root1 = scipy.linalg.sqrtm(cov1)
        cross = scipy.linalg.sqrtm(root1 @ cov2 @ root1)
        bures = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * np.real(cross))
        closed = pj.gaussian_w2_squared(*(torch.as_tensor(x, dtype=torch.float64) for x in (mu1, sd1, mu2, sd2)))
        assert closed.dtype == torch.float64
        assert closed.item() == pytest.approx(bures, rel=1e-9, abs=1e-12)


def test_w2_closed_form_matches_quantile_formula_on_samples():
    """In 1-D, W2^2 = int_0^1 (F1^-1(q) - F2^-1(q))^2 dq: sorted samples pair up by quantile. A
    diagonal Gaussian's optimal coupling is coordinate-wise, so the d-D value is the sum over dims."""
    rng = np.random.default_rng(1)
    n = 200_000
    mu1, mu2 = np.array([0.3, -1.0, 2.0]), np.array([-0.2, -1.0, 0.5])
    sd1, sd2 = np.array([1.0, 0.2, 0.7]), np.array([0.5, 0.9, 0.7])
    x = np.sort(mu1 + sd1 * rng.standard_normal((n, 3)), axis=0)
    y = np.sort(mu2 + sd2 * rng.standard_normal((n, 3)), axis=0)
    empirical = ((x - y) ** 2).mean(axis=0).sum()
    closed = pj.gaussian_w2_squared(*(torch.as_tensor(v) for v in (mu1, sd1, mu2, sd2))).item()
    assert closed == pytest.approx(empirical, rel=0.02)
    # the same with exact quantiles (midpoint rule on a fine grid): no sampling noise at all
    q = (np.arange(n) + 0.5) / n
    exact = sum(np.mean((scipy.stats.norm.ppf(q, m1, s1) - scipy.stats.norm.ppf(q, m2, s2)) ** 2)
                for m1, s1, m2, s2 in zip(mu1, sd1, mu2, sd2))
    assert closed == pytest.approx(exact, rel=1e-3)


def test_w2_is_zero_between_identical_actors_and_bounds_action_w2():
    """Same parameters: W2 = 0. And the pre-squash W2 bounds the action-space W2 from above
    (tanh is 1-Lipschitz): checked in 1-D with the quantile formula on squashed samples."""
    mu, sd = torch.tensor([[0.5, -2.0]]), torch.tensor([[0.3, 1.5]])
    assert pj.gaussian_w2_squared(mu, sd, mu.clone(), sd.clone()).item() == 0.0
    rng = np.random.default_rng(2)
    z = np.sort(rng.standard_normal(100_000))
    for m1, s1, m2, s2 in ((0.0, 1.0, 2.0, 0.3), (1.5, 0.5, -1.0, 2.0), (0.1, 0.1, 0.2, 0.15)):
        action_w2 = np.mean((np.tanh(m1 + s1 * z) - np.tanh(m2 + s2 * z)) ** 2)  # monotone map: sorted stays sorted
        pre_squash = pj.gaussian_w2_squared(*(torch.tensor([v]) for v in (m1, s1, m2, s2))).item()
        assert action_w2 <= pre_squash + 1e-9


# ---- eq. (6): actor i-1 is a fixed reference (the gradients themselves: tests/test_posac_updates.py)
def test_actor_0_updates_as_if_it_were_alone_in_the_chain():
    """The full actor step: actor 1's W2 pull towards actor 0 must not move actor 0, so actor 0
    (and the critics) follow the same trajectory with 1 or 3 actors."""
    alone, chain = posac_agent(1), posac_agent(3)
    chain.actors[0].load_state_dict(alone.actors[0].state_dict())
    chain.critics.load_state_dict(alone.critics.state_dict())
    chain.target_critics.load_state_dict(alone.target_critics.state_dict())
    for step in range(3):
        batch = random_batch(seed=step)
        for agent in (alone, chain):
            torch.manual_seed(10 + step)  # actor 0 draws its noise first in both
            out = full_update(agent, batch)
        assert out["w2"].shape == (2,) and out["entropy"].shape == (3,) and out["per_actor_loss"].shape == (3,)
    for name, value in alone.actors[0].state_dict().items():
        torch.testing.assert_close(chain.actors[0].state_dict()[name], value, rtol=1e-5, atol=1e-6)
    for name, value in alone.critics.state_dict().items():
        torch.testing.assert_close(chain.critics.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_act_draws_what_sample_draws():
    """Acting and the stochastic evaluation use Actor.act: the action `sample` gives from the same
    random stream, the global one or an explicit generator (the evaluation's)."""
    actor = posac_agent(1).actor
    obs = random_batch()["obs"]
    torch.manual_seed(3)
    sampled, _ = actor.sample(obs)
    torch.manual_seed(3)
    assert torch.equal(actor.act(obs), sampled.detach())
    sampled, _ = actor.sample(obs, generator=torch.Generator().manual_seed(4))
    assert torch.equal(actor.act(obs, generator=torch.Generator().manual_seed(4)), sampled.detach())


def test_normalized_q_weight_is_detached_and_scale_free():
    q = torch.tensor([-100.0, -300.0], requires_grad=True)
    lam = pj.q_weight(q, 2.0, normalize_q=True)
    assert not lam.requires_grad and lam.item() == pytest.approx(2.0 / 200.0)
    assert pj.q_weight(q, 2.0, normalize_q=False) == 2.0
    # TD3+BC's point: scaling Q scales lambda inversely, so lambda * Q keeps its scale
    assert (pj.q_weight(q * 10, 1.0, True) * q * 10).detach().tolist() == pytest.approx((pj.q_weight(q, 1.0, True) * q).detach().tolist())


# ---- N = 1 is SAC --------------------------------------------------------------------------
@pytest.mark.parametrize("autotune", [False, True])
def test_one_actor_update_equals_sac_continuous_update(autotune):
    """Same initial state, same batch, same torch RNG state: one full update (critic step, target
    update, actor step, temperature step) of POSAC with 1 actor and of sac_continuous.py with the
    same settings leaves every parameter bit-identical."""
    sac_args = sac.args_from_flat(dict(env_id="Hopper-v4", autotune=autotune, alpha=0.2, q_lr=3e-4, policy_lr=3e-4))
    posac_args = pj.args_from_flat(dict(env_id="Hopper-v4", num_actors=1, autotune=autotune, alpha=0.2, lr=3e-4))
    torch.manual_seed(0)
    reference = sac.SAC(sac_args, OBS_DIM, SPACE, torch.device("cpu"))
    torch.manual_seed(123)  # a different init, overwritten below: the state dicts must line up by name
    agent = pj.POSAC(posac_args, OBS_DIM, SPACE, torch.device("cpu"))
    agent.actors[0].load_state_dict(reference.actor.state_dict())
    agent.critics.load_state_dict(reference.critics.state_dict())
    agent.target_critics.load_state_dict(reference.target_critics.state_dict())
    for step in range(2):
        batch = random_batch(seed=step)
        rng = torch.get_rng_state()
        sac_out = full_update(reference, batch)
        torch.set_rng_state(rng)
        posac_out = full_update(agent, batch)
        assert torch.equal(sac_out["critic_loss"], posac_out["critic_loss"])
        assert torch.equal(sac_out["actor_loss"], posac_out["actor_loss"])
    pairs = [(reference.actor, agent.actors[0]), (reference.critics, agent.critics),
             (reference.target_critics, agent.target_critics)]
    for ref_module, module in pairs:
        ref_state, state = ref_module.state_dict(), module.state_dict()
        assert list(ref_state) == list(state)
        for name in ref_state:
            assert torch.equal(ref_state[name], state[name]), name
    assert torch.equal(reference.log_alpha, agent.log_alpha)
    ref_opt, opt = reference.actor_optimizer.state_dict()["state"], agent.actor_optimizer.state_dict()["state"]
    assert all(torch.equal(ref_opt[k]["exp_avg_sq"], opt[k]["exp_avg_sq"]) for k in ref_opt)


# ---- checkpoint state: every actor and its optimizer ------------------------------------------
def test_agent_state_round_trip_restores_every_actor_and_optimizer(tmp_path):
    trained = posac_agent(2, seed=0, autotune=True)
    for step in range(3):
        full_update(trained, random_batch(seed=step))
    path = str(tmp_path / "checkpoint.pt")
    pj.save_checkpoint(path, {"agent": pj.agent_state(trained)})
    restored = posac_agent(2, seed=99, autotune=True)  # different init
    pj.load_agent_state(restored, torch.load(path, weights_only=True)["agent"])  # plain data, as --resume loads it
    for i in range(2):
        for name, value in trained.actors[i].state_dict().items():
            assert torch.equal(restored.actors[i].state_dict()[name], value)
    # the restored agent continues exactly as the original does (Adam moments and steps included)
    batch = random_batch(seed=7)
    for agent in (trained, restored):
        torch.manual_seed(3)
        full_update(agent, batch)
    for a, b in zip(list(trained.actors.parameters()) + list(trained.critics.parameters()) + [trained.log_alpha],
                    list(restored.actors.parameters()) + list(restored.critics.parameters()) + [restored.log_alpha]):
        assert torch.equal(a, b)


# ---- arguments ------------------------------------------------------------------------------
def test_source_option_names_are_accepted():
    args = tyro.cli(pj.Args, args=["--env-name", "Pendulum-v1", "--num-steps", "5000", "--start-steps", "500",
                                   "--eval-freq", "10", "--updates-per-step", "2", "--lr", "0.001",
                                   "--num-actors", "2", "--w2-weights", "0.0,0.1", "--automatic-entropy-tuning"])
    pj.validate_args(args)
    # --start-steps: random actions only; updates start once the buffer holds more than a batch
    assert (args.env_id, args.total_timesteps, args.random_steps, args.learning_starts) == ("Pendulum-v1", 5000, 500, 256)
    assert (args.eval_freq_episodes, args.updates_per_step, args.lr, args.autotune) == (10, 2, 0.001, True)
    assert args.w2_weights == (0.0, 0.1)
    spaced = tyro.cli(pj.Args, args=["--env-id", "Pendulum-v1", "--num-actors", "3", "--w2-weights", "0", "0.1", "0.2"])
    pj.validate_args(spaced)
    assert spaced.w2_weights == (0.0, 0.1, 0.2)
    defaults = pj.Args()
    assert (defaults.env_id, defaults.seed, defaults.random_steps, defaults.updates_per_step, defaults.alpha,
            defaults.autotune, defaults.num_actors, defaults.lr, defaults.batch_size) == \
        ("Humanoid-v5", 123456, 10_000, 1, 0.2, False, 1, 3e-4, 256)


def test_the_sources_command_line_resolves_to_every_setting_the_source_fixes():
    """The source's documented command line (its README) and its listed defaults: every setting it
    fixes, as this script resolves it (--cuda only asks for the GPU; the CPU fallback is Appendix A's)."""
    args = tyro.cli(pj.Args, args=["--env-name", "Humanoid-v5", "--seed", "123456", "--num-steps", "1000000",
                                   "--eval-freq", "10", "--num-actors", "2", "--w2-weights", "0.0,0.1",
                                   "--lr", "0.0003", "--cuda"])
    pj.validate_args(args)
    flags = pj.flat_args(args)
    resolved = {name: flags[name] for name in (
        "env_id", "seed", "total_timesteps", "eval_freq_episodes", "num_actors", "w2_weights", "lr", "cuda",
        "gamma", "tau", "alpha", "autotune", "batch_size", "random_steps", "learning_starts", "updates_per_step",
        "eval_episodes", "hidden_size", "num_envs")}
    assert resolved == {
        "env_id": "Humanoid-v5", "seed": 123456, "total_timesteps": 1_000_000, "eval_freq_episodes": 10,
        "num_actors": 2, "w2_weights": (0.0, 0.1), "lr": 3e-4, "cuda": True, "gamma": 0.99, "tau": 0.005,
        "alpha": 0.2, "autotune": False, "batch_size": 256,
        "random_steps": 10_000,  # start_steps: the random-action period
        "learning_starts": 256,  # updates once len(memory) > batch_size
        "updates_per_step": 1, "eval_episodes": 10, "hidden_size": 256, "num_envs": 1}
    agent = pj.POSAC(args, 348, pj.check_env("Humanoid-v5"), torch.device("cpu"))
    assert agent.critics.num_critics == 2 and agent.alpha_optimizer is None  # twin critics, fixed alpha
    assert agent.alpha.item() == pytest.approx(0.2)
    assert all(group["lr"] == 3e-4 for opt in (agent.actor_optimizer, agent.critic_optimizer) for group in opt.param_groups)


@pytest.mark.parametrize("overrides, message", [
    ({"num_actors": 2, "w2_weights": (0.0, 0.1, 0.2)}, "one weight per actor"),
    ({"num_actors": 2}, "pass --w2-weights"),
    ({"num_actors": 2, "w2_weights": (0.0, -0.1)}, ">= 0"),
    ({"num_actors": 2, "w2_weights": (0.1, 0.1)}, "w_0 must be 0"),
    ({"num_actors": 2, "w2_weights": ("0.0,abc",)}, "not a number"),
    ({"num_actors": 0, "w2_weights": ()}, "--num-actors must be positive"),
    ({"env_id": "CartPole-v1"}, "Discrete action space"),
    ({"env_id": "NoSuchEnv-v0"}, "unknown or unavailable environment"),
    ({"lambda_q": 0.0}, "--lambda-q"),
    ({"eval_freq_episodes": 0}, "--eval-freq"),
])
def test_bad_inputs_are_rejected_with_a_clear_message(overrides, message):
    args = pj.args_from_flat(dict(**{"env_id": "Pendulum-v1", **overrides}))
    with pytest.raises(pj.ConfigError, match=message.replace("+", r"\+")):
        pj.validate_args(args)
