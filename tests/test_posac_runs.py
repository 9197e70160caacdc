"""posac_jko.py end to end: the command line as the source writes it, outputs of every actor,
reproducibility, resume, exit codes, and learning on Pendulum with two actors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import posac_jko as pj
from conftest import assert_bad_input_rejected, assert_episode_end_transitions_stored, interrupt_then_resume, loss_rows, only_run_dir, read_csv, run_script


@pytest.fixture(autouse=True)
def one_torch_thread():
    """In-process runs use one torch thread: these networks are small, and on a busy machine a
    second OpenMP thread mostly waits for the first (restored afterwards for other tests)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the same for the subprocess runs


def tiny_args(output_dir, **overrides) -> pj.Args:
    """A fast two-actor Pendulum run: small nets, early learning, frequent everything."""
    settings = dict(env_id="Pendulum-v1", total_timesteps=400, learning_starts=100, random_steps=100, batch_size=32,
                    hidden_size=32, eval_every=200, eval_episodes=2, log_every=100, checkpoint_every=200,
                    num_actors=2, w2_weights=(0.0, 0.1), seed=3, output_dir=str(output_dir))
    return pj.args_from_flat(dict(**{**settings, **overrides}))


def test_source_command_line_writes_every_actor(tmp_path):
    """The source's flag names, its "0.0,0.1" weights and its per-episode evaluation schedule."""
    result = run_script("posac_jko.py", "--env-name", "Pendulum-v1", "--num-steps", "400", "--start-steps", "100",
                        "--eval-freq", "1", "--eval-episodes", "1", "--num-actors", "2", "--w2-weights", "0.0,0.1",
                        "--lr", "0.0003", "--batch-size", "32", "--hidden-size", "32", "--log-every", "100",
                        "--output-dir", str(tmp_path), env_extra=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    for i in range(2):
        assert f"Actor {i} - Deterministic: " in result.stdout and f"Actor {i} - Stochastic: " in result.stdout
    run_dir = only_run_dir(tmp_path)
    recorded = json.load(open(os.path.join(run_dir, "args.json")))
    assert recorded["algorithm"] == "posac_jko" and recorded["args"]["w2_weights"] == [0.0, 0.1]
    # --start-steps is the random-action period only; updates start once the buffer holds more
    # than one batch (the source's len(memory) > batch_size): here from step 33
    assert recorded["args"]["random_steps"] == 100 and recorded["args"]["learning_starts"] == 32
    first_update = min(int(step) for step, metric, _ in loss_rows(run_dir) if metric == "losses/qf1_loss")
    assert first_update == 100  # the first log interval (--log-every 100) after step 33 already has losses
    # Pendulum episodes are 200 steps: evaluations after episodes 1 (step 200) and at the end (400)
    rows = read_csv(os.path.join(run_dir, "eval.csv"))
    assert {(r["global_step"], r["policy"], r["mode"]) for r in rows} == {
        (step, policy, mode) for step in ("200", "400") for policy in ("0", "1") for mode in ("deterministic", "stochastic")}
    for i in range(2):
        array = np.load(os.path.join(run_dir, f"eval_actor_{i}.npy"))
        assert array.shape == (2, 3) and array[:, 0].tolist() == [200, 400]
        mine = {(r["global_step"], r["mode"]): float(r["mean_return"]) for r in rows if r["policy"] == str(i)}
        assert array[1, 1:].tolist() == [mine[("400", "deterministic")], mine[("400", "stochastic")]]
    metrics = {r["metric"] for r in read_csv(os.path.join(run_dir, "metrics.csv"))}
    assert {"losses/w2_actor_1", "losses/entropy_actor_0", "losses/entropy_actor_1", "losses/actor_loss",
            "losses/qf1_loss", "charts/episodic_return", "eval/actor_1/deterministic_return"} <= metrics
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert {(e["policy"], e["mode"]) for e in summary["final_eval"]} == {
        (p, m) for p in (0, 1) for m in ("deterministic", "stochastic")}


@pytest.mark.parametrize("cli, message", [
    (["--env-id", "Pendulum-v1", "--num-actors", "2", "--w2-weights", "0.0", "0.1", "0.2"], "--w2-weights has 3 value(s)"),
    (["--env-id", "CartPole-v1"], "CartPole-v1 has a Discrete action space"),
], ids=["w2 length", "discrete env"])
def test_bad_input_exits_2_before_any_work(tmp_path, cli, message):
    assert_bad_input_rejected("posac_jko.py", cli, message, tmp_path)


def test_ctrl_c_writes_checkpoint_and_the_printed_command_resumes(tmp_path):
    cli = ["--env-id", "Pendulum-v1", "--learning-starts", "100", "--batch-size", "32", "--hidden-size", "32",
           "--num-actors", "2", "--w2-weights", "0.0", "0.1", "--eval-every", "0", "--eval-episodes", "1"]
    interrupt_then_resume("posac_jko.py", cli, tmp_path, extra_steps=100)


def test_same_seed_same_run(tmp_path):
    first = pj.train(tiny_args(tmp_path / "a"))
    second = pj.train(tiny_args(tmp_path / "b"))
    assert loss_rows(first["run_dir"]) == loss_rows(second["run_dir"])
    assert first["final_eval"] == second["final_eval"]
    for i in range(2):
        a, b = (np.load(os.path.join(run["run_dir"], f"eval_actor_{i}.npy")) for run in (first, second))
        assert np.array_equal(a, b)


def test_resume_continues_the_run_with_every_actor(tmp_path):
    """(That the restored actors and optimizers continue bit-exactly is test_posac_math's round trip;
    this is the run folder's side.) Uses the TD3+BC lambda and autotuned alpha, to run those paths."""
    options = dict(normalize_q=True, autotune=True)
    first = pj.train(tiny_args(tmp_path, total_timesteps=200, **options))
    run_dir = first["run_dir"]
    with pytest.raises(pj.ConfigError, match="num_actors"):  # a checkpoint of 2 actors is not a 3-actor run
        pj.train(tiny_args(tmp_path, total_timesteps=400, resume=run_dir, num_actors=3, w2_weights=(0.0, 0.1, 0.1),
                           **options))
    second = pj.train(tiny_args(tmp_path, total_timesteps=400, resume=run_dir, **options))
    assert second["run_dir"] == run_dir and second["global_step"] == 400
    rows = read_csv(os.path.join(run_dir, "eval.csv"))
    assert [(r["global_step"], r["policy"]) for r in rows if r["mode"] == "deterministic"] == [
        ("200", "0"), ("200", "1"), ("400", "0"), ("400", "1")]
    for i in range(2):  # the array holds the first run's row (its final evaluation) and the new ones
        assert np.load(os.path.join(run_dir, f"eval_actor_{i}.npy"))[:, 0].tolist() == [200, 400]
    steps = [int(step) for step, metric, _ in loss_rows(run_dir) if metric == "losses/w2_actor_1"]
    assert steps == sorted(set(steps)) and steps[-1] == 400  # logged once per interval, no duplicates
    lambdas = [float(v) for _, metric, v in loss_rows(run_dir) if metric == "losses/lambda_actor_1"]
    assert lambdas and all(0 < v < 1e6 and v != 1.0 for v in lambdas)  # lambda_q / mean|Q|, not the fixed 1


@pytest.mark.parametrize("env_id, expect_termination", [("ScriptedTruncate-v0", False), ("ScriptedTerminate-v0", True)])
def test_episode_end_transitions(tmp_path, env_id, expect_termination):
    """POSAC's own loop stores the true final state and d = termination, never truncation."""
    args = tiny_args(tmp_path, env_id=env_id, total_timesteps=23, learning_starts=1000, eval_episodes=1)
    run_dir = pj.train(args)["run_dir"]
    assert_episode_end_transitions_stored(run_dir, expect_termination, episode_ends=4)  # 23 steps, 5 per episode


def test_actor_0_is_the_one_that_acts(tmp_path):
    """After the random steps the environment gets actor 0's stochastic actions, not another
    actor's: the stored actions are far more likely under actor 0 than under actor 1 (no updates
    here, so both actors keep their different initial weights)."""
    args = tiny_args(tmp_path, total_timesteps=300, random_steps=0, learning_starts=10_000, eval_every=0)
    run_dir = pj.train(args)["run_dir"]
    checkpoint = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)
    agent = pj.POSAC(args, 3, pj.check_env("Pendulum-v1"), torch.device("cpu"))
    pj.load_agent_state(agent, checkpoint["agent"])
    buffer = checkpoint["replay_buffer"]
    actor = agent.actors[0]
    u = torch.atanh(((buffer["actions"] - actor.action_bias) / actor.action_scale).clamp(-1 + 1e-6, 1 - 1e-6))
    log_likelihood = []
    with torch.no_grad():
        for policy in agent.actors:
            mean, log_std = policy.distribution_params(buffer["obs"])
            log_likelihood.append(torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum().item())
    assert log_likelihood[0] > log_likelihood[1] + 50, log_likelihood


def test_pendulum_actor_0_learns_and_actor_1_is_evaluated(tmp_path):
    """Within 10,000 steps actor 0's deterministic return reaches -300 on Pendulum-v1 with
    --num-actors 2 --w2-weights 0.0 0.1. The source's 10,000 random start steps are Humanoid's
    default and would be the whole budget here; Pendulum episodes are 200 steps, so the test
    starts learning (and actor 0 acting) after 1,000 steps, with a smaller batch and network to keep
    the test short (a few minutes on 2 cores)."""
    args = pj.args_from_flat(dict(env_id="Pendulum-v1", total_timesteps=10_000, learning_starts=1_000,
                                  random_steps=1_000, batch_size=128, hidden_size=128, num_actors=2,
                                  w2_weights=(0.0, 0.1), eval_every=2_500, eval_episodes=5, log_every=1_000, seed=1,
                                  output_dir=str(tmp_path)))
    result = pj.train(args)
    rows = read_csv(os.path.join(result["run_dir"], "eval.csv"))
    actor_0 = [float(r["mean_return"]) for r in rows if r["policy"] == "0" and r["mode"] == "deterministic"]
    assert max(actor_0) >= -300, actor_0
    assert {r["mode"] for r in rows if r["policy"] == "1"} == {"deterministic", "stochastic"}
    assert len(np.load(os.path.join(result["run_dir"], "eval_actor_1.npy"))) == len(actor_0)
    w2 = [float(v) for _, metric, v in loss_rows(result["run_dir"]) if metric == "losses/w2_actor_1"]
    assert w2 and all(np.isfinite(w2))


def test_nonfinite_loss_stops_the_run_and_names_the_last_checkpoint(tmp_path):
    """ScriptedNaN-v0 (conftest) returns NaN rewards after 600 steps: the critic loss turns NaN,
    the run stops at the next log and keeps the step-500 checkpoint (main() exits 1 on this)."""
    args = tiny_args(tmp_path, env_id="ScriptedNaN-v0", total_timesteps=2_000, eval_every=0, checkpoint_every=500)
    with pytest.raises(pj.NonFiniteLossError, match=r"Last good checkpoint: .*checkpoint.pt \(step 500\)"):
        pj.train(args)
    assert not os.path.exists(os.path.join(only_run_dir(tmp_path), "summary.json"))
