"""gmm_density_matching.py end to end: every option, outputs, the headline command, reproducibility,
resume, Ctrl-C, NaN stop, bad input and learning."""

import itertools
import json
import os

import numpy as np
import pytest
import torch
from conftest import (
    COMMON_BAD_INPUTS,
    assert_episode_end_transitions_stored,
    assert_nan_stops_at_last_good_checkpoint,
    assert_resumed_to,
    assert_same_seed_same_results,
    assert_video_written,
    bad_input_test,
    flat_state,
    foreign_checkpoint,
    interrupt_then_resume,
    only_run_dir,
    read_csv,
    replace_flags,
    require_video,
    run_script,
)

import gmm_density_matching as gmm

GMM_METRICS = {"losses/qf1_loss", "losses/qf2_loss", "losses/actor_loss", "losses/ess", "losses/mixture_entropy",
               "losses/component_std_0", "losses/q_spread", "losses/temperature", "charts/episodic_return",
               "charts/SPS"}


def tiny(tmp_path, **overrides) -> gmm.Args:
    """A run that finishes in about a second: small nets, 300 steps, learning from step 100."""
    base = dict(env_id="Pendulum-v1", total_timesteps=300, learning_starts=100, random_steps=100, batch_size=32,
                hidden_size=32, num_action_samples=8, eval_every=0, eval_episodes=1, log_every=100,
                checkpoint_every=1000, output_dir=str(tmp_path))
    return gmm.args_from_flat(dict(**{**base, **overrides}))


# ---- every option combination runs -----------------------------------------------------------
@pytest.mark.parametrize("proposal, correction, temperature_mode", itertools.product(
    ["gaussian", "uniform", "policy", "mixed"], [False, True], ["fixed", "kl"]))
def test_option_combinations_run(tmp_path, proposal, correction, temperature_mode):
    args = tiny(tmp_path, proposal=proposal, importance_correction=correction, temperature_mode=temperature_mode,
                total_timesteps=200)
    result = gmm.train(args)
    assert result["global_step"] == 200 and np.isfinite(result["final_eval"][0]["mean_return"])


@pytest.mark.parametrize("overrides", [
    {"num_components": 1}, {"alpha": 0.2}, {"entropy_coef": 0.0}, {"num_critic_updates": 2}, {"num_envs": 2, "total_timesteps": 500},
    {"num_layers": 1, "hidden_size": 8}, {"score_dtype": "bfloat16"},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_network_and_schedule_options_run(tmp_path, overrides):
    args = tiny(tmp_path, **overrides)
    result = gmm.train(args)
    assert result["global_step"] == args.total_timesteps
    metrics = {row["metric"] for row in read_csv(os.path.join(result["run_dir"], "metrics.csv"))}
    assert GMM_METRICS <= metrics, GMM_METRICS - metrics


def test_logged_diagnostics_are_in_range(tmp_path):
    args = tiny(tmp_path, num_components=3, num_action_samples=16, total_timesteps=400)
    rows = read_csv(os.path.join(gmm.train(args)["run_dir"], "metrics.csv"))
    last = {r["metric"]: float(r["value"]) for r in rows if r["global_step"] == "400"}
    assert 1.0 <= last["losses/ess"] <= 16.0
    assert 0.0 <= last["losses/mixture_entropy"] <= np.log(3) + 1e-6
    stds = [last[f"losses/component_std_{k}"] for k in range(3)]
    assert all(np.exp(-5) <= s <= np.exp(2) for s in stds) and "losses/component_std_3" not in last
    assert last["losses/temperature"] > 0 and last["losses/q_spread"] >= 0


# ---- the headline command, on CPU, with every output -------------------------------------------
def test_headline_command_runs_on_humanoid_and_writes_every_output(tmp_path):
    result = run_script("gmm_density_matching.py", "--env-id", "Humanoid-v4", "--cuda", "--total-timesteps", "300",
                        "--learning-starts", "200", "--random-steps", "200", "--eval-every", "150", "--eval-episodes",
                        "1", "--log-every", "100", "--checkpoint-every", "200", "--output-dir", str(tmp_path),
                        timeout=300)
    assert result.returncode == 0, result.stderr
    if not torch.cuda.is_available():
        assert "notice: --cuda was given but CUDA is not available; training on the CPU" in result.stderr
    assert "eval at step 300" in result.stdout and "SPS" in result.stdout and "ETA" in result.stdout
    run_dir = only_run_dir(tmp_path)
    assert os.path.basename(run_dir).startswith("Humanoid-v4__gmm_density_matching__1__")
    record = json.load(open(os.path.join(run_dir, "args.json")))
    assert record["algorithm"] == "gmm_density_matching" and record["args"]["num_components"] == 4
    assert record["args"]["num_action_samples"] == 32 and "torch" in record["versions"]
    evals = read_csv(os.path.join(run_dir, "eval.csv"))
    assert [(r["global_step"], r["mode"]) for r in evals] == [
        ("150", "deterministic"), ("150", "stochastic"), ("300", "deterministic"), ("300", "stochastic")]
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["algorithm"] == "gmm_density_matching" and summary["global_step"] == 300 and summary["train_sps"] > 0
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir))
    metrics = {row["metric"] for row in read_csv(os.path.join(run_dir, "metrics.csv"))}
    assert GMM_METRICS - {"charts/episodic_return"} <= metrics
    checkpoint = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)
    assert checkpoint["algorithm"] == "gmm_density_matching" and checkpoint["global_step"] == 300


# ---- done-handling: terminations stop the bootstrap, truncations bootstrap from the final obs ---
@pytest.mark.parametrize("env_id, expect_termination", [("ScriptedTruncate-v0", False), ("ScriptedTerminate-v0", True)])
def test_episode_end_transitions(tmp_path, env_id, expect_termination):
    args = tiny(tmp_path, env_id=env_id, total_timesteps=23, learning_starts=1000, eval_episodes=1)
    run_dir = gmm.train(args)["run_dir"]
    assert_episode_end_transitions_stored(run_dir, expect_termination, episode_ends=4)  # 23 steps, 5 per episode


# ---- reproducibility ------------------------------------------------------------------------------
@pytest.mark.parametrize("proposal", ["policy", "gaussian"])
def test_same_seed_same_results_other_seed_differs(tmp_path, proposal):
    runs = [gmm.train(tiny(tmp_path / str(i), seed=seed, proposal=proposal, eval_every=150,
                           total_timesteps=450))["run_dir"] for i, seed in enumerate([3, 3, 4])]
    assert_same_seed_same_results(runs)


# ---- checkpoint and resume ------------------------------------------------------------------------
def test_resume_restores_the_saved_state_exactly(tmp_path):
    args = tiny(tmp_path, total_timesteps=300)
    run_dir = gmm.train(args)["run_dir"]
    path = os.path.join(run_dir, "checkpoint.pt")
    saved = torch.load(path, weights_only=True)
    os.remove(os.path.join(run_dir, "summary.json"))  # as if stopped during its final evaluation
    gmm.train(replace_flags(gmm, args, resume=run_dir))  # at the final step: trains nothing, re-saves
    reloaded = torch.load(path, weights_only=True)
    a, b = flat_state(saved), flat_state(reloaded)
    assert a.keys() == b.keys() and any("proposal_generator" in key for key in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resumed_run_reaches_total_timesteps_and_rows_are_not_duplicated(tmp_path):
    args = tiny(tmp_path, total_timesteps=300, eval_every=100)
    run_dir = gmm.train(args)["run_dir"]
    result = gmm.train(replace_flags(gmm, args, resume=os.path.join(run_dir, "checkpoint.pt"), total_timesteps=500))
    assert_resumed_to(run_dir, result, 500)


def test_ctrl_c_writes_checkpoint_and_the_printed_command_resumes(tmp_path):
    cli = ["--env-id", "Pendulum-v1", "--learning-starts", "100", "--batch-size", "32", "--hidden-size", "32",
           "--num-action-samples", "8", "--eval-every", "0", "--eval-episodes", "1"]
    interrupt_then_resume("gmm_density_matching.py", cli, tmp_path, extra_steps=100)


# ---- non-finite losses ----------------------------------------------------------------------------
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    args = tiny(tmp_path, env_id="ScriptedNaN-v0", total_timesteps=2000, checkpoint_every=300, log_every=100)
    assert_nan_stops_at_last_good_checkpoint(gmm.train, gmm.NonFiniteLossError, args, tmp_path)


# ---- bad input: one clear line, exit 2, no run folder --------------------------------------------
def make_pendulum_run(tmp_path):
    return gmm.train(tiny(tmp_path / "pendulum", total_timesteps=150))["run_dir"]


BAD_INPUTS = {
    **COMMON_BAD_INPUTS,
    "K < 1": (["--num-components", "0"], "--num-components (K) must be >= 1, got 0"),
    "M < 2": (["--num-action-samples", "1"], "--num-action-samples (M) must be >= 2"),
    "T = 0": (["--temperature", "0"], "--temperature (T) must be > 0, got 0.0"),
    "T < 0": (["--temperature", "-1"], "--temperature (T) must be > 0, got -1.0"),
    "KL bound >= log M": (["--kl-bound", "5", "--num-action-samples", "32"], "--kl-bound must lie in (0, log M)"),
    "lambda >= 1": (["--entropy-coef", "1.0"], "--entropy-coef (lambda) must lie in [0, 1)"),
    "mix leaves no gaussian": (["--proposal", "mixed", "--proposal-mix", "1.0"], "--proposal-mix 1.0 with M = 32"),
    "foreign checkpoint": (["--resume", foreign_checkpoint("sac_continuous")], "checkpoint is from 'sac_continuous', not gmm_density_matching"),
    "other K checkpoint": (["--num-components", "2", "--resume", make_pendulum_run], "num_components (checkpoint 4, now 2)"),
}


test_bad_input_is_one_clear_error = bad_input_test("gmm_density_matching.py", BAD_INPUTS)


def test_capture_video_writes_mp4(tmp_path):
    require_video("InvertedPendulum-v4")  # skips on a bare machine, saying why (fails in CI)
    args = tiny(tmp_path, env_id="InvertedPendulum-v4", total_timesteps=150, capture_video=True, eval_episodes=1)
    run_dir = gmm.train(args)["run_dir"]
    assert_video_written(run_dir)


# ---- learning ---------------------------------------------------------------------------------------
def test_learns_pendulum_with_the_defaults(tmp_path):
    """Every default (network size, K, M, proposal, temperature mode and KL bound, lambda, learning
    rates, batch, buffer, learning starts, gamma, tau) solves Pendulum-v1: a deterministic
    evaluation >= -400 within 15,000 steps. Only the evaluation schedule is set (every 1,000 steps,
    5 episodes). To keep CI short the budget is spent in stages, each resuming the previous
    checkpoint with a larger total: 9,000 steps first (measured on this 2-core VM: -245 at step
    8,000, ~2.5 min), then 12,000 and 15,000 only if no evaluation has reached -400 yet."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    evals, run_dir = [], None
    for total in (9_000, 12_000, 15_000):
        args = gmm.args_from_flat(dict(env_id="Pendulum-v1", total_timesteps=total, eval_every=1_000, eval_episodes=5,
                                       output_dir=str(tmp_path), resume=run_dir))
        result = gmm.train(args)
        run_dir = result["run_dir"]
        evals = [(int(r["global_step"]), float(r["mean_return"])) for r in read_csv(os.path.join(run_dir, "eval.csv"))
                 if r["mode"] == "deterministic"]
        assert evals[-1][0] == total
        if max(ret for _, ret in evals) >= -400:
            break
    assert max(ret for _, ret in evals) >= -400, f"deterministic evaluations: {evals}"
