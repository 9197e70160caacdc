"""--compile and --cudagraphs (Appendix A's accelerate_updates): the compiled update IS the eager
one, handed to torch.compile, so the two must agree number for number (up to float32 rounding);
a missing compiler falls back to eager with one notice; checkpoint/resume, the NaN stop and Ctrl-C
work the same with --compile. The CUDA cases run where a GPU is present and skip elsewhere."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import (
    assert_nan_stops_at_last_good_checkpoint,
    assert_resumed_to,
    interrupt_then_resume,
    replace_flags,
    run_script,
    skip_unless_available,
)
from references import OBS_DIM, SPACE, random_batch

import gmm_density_matching as gmm
import posac_jko as posac
import sac_continuous as sac

MODULES = {"sac_continuous": sac, "posac_jko": posac, "gmm_density_matching": gmm}
UPDATES = 5
HAS_CUDA = torch.cuda.is_available()
# eager and compiled float32 kernels round differently (fused operations, another summation order);
# Adam divides by sqrt(v), so after UPDATES steps a 1e-7 difference in a gradient can move a weight
# by ~1e-6. Measured, largest over every tensor of the state: CPU 1.2e-6 (GMM), H200 6.5e-8 for
# compiled and compiled + CUDA graphs alike (benchmark/results/compile_equivalence_h200.txt)
TOLERANCE = {"cpu": 1e-5, "cuda": 1e-5}
DEVICES = [("cpu", False),
           pytest.param("cuda", False, marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU here")),
           pytest.param("cuda", True, marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU here"))]


def updated_agent(module, device: str, compile: bool, cudagraphs: bool = False, **overrides):
    """An agent (seed 3, 64-unit nets, POSAC with two actors; `overrides` change its Args) after
    UPDATES full updates on fixed batches, each update's random draws seeded alike;
    -> (agent, the losses of every update)."""
    extra = {"num_actors": 2, "w2_weights": [0.0, 0.1]} if module is posac else {}
    args = module.args_from_flat(dict(env_id="Pendulum-v1", hidden_size=64, seed=3, cuda=device == "cuda",
                                      compile=compile, cudagraphs=cudagraphs, **{**extra, **overrides}))
    torch.manual_seed(0)
    agent = module.Agent(args, OBS_DIM, SPACE, torch.device(device))
    module.accelerate_updates(agent, args)
    history = []
    for k in range(UPDATES):
        batch = {key: value.float().to(device) for key, value in random_batch(seed=k).items()}
        torch.manual_seed(100 + k)
        losses = agent.critic_step(batch)
        agent.target_update()
        losses |= agent.actor_step(batch)
        if hasattr(agent, "temperature_step"):
            losses |= agent.temperature_step(losses["log_prob"])
        history.append({key: value.detach().cpu().clone() for key, value in losses.items()
                        if torch.is_tensor(value)})
    return agent, history


@pytest.mark.parametrize("device, cudagraphs", DEVICES)
@pytest.mark.parametrize("script", list(MODULES))
def test_compiled_updates_match_eager_ones(script, device, cudagraphs):
    assert_compiled_updates_match_eager_ones(MODULES[script], device, cudagraphs)


# SAC's knobs that change what the update methods compute: the redq backup draws a random subset
# of target critics with the agent's own generator inside the compiled (and CUDA-graphed) step
SAC_VARIANTS = {
    "redq": {"num_critic_networks": 5, "target_critic_backup_type": "redq", "redq_subset_size": 2},
    "reinforce, 4 samples": {"actor_gradient_type": "reinforce", "num_actor_samples": 4},
    "fixed alpha, hard targets": {"autotune": False, "use_soft_target_update": False, "target_update_period": 2},
    "no entropy bonus, mean backup": {"use_entropy_bonus": False, "target_critic_backup_type": "mean"},
}


@pytest.mark.parametrize("device, cudagraphs", DEVICES[:1] + DEVICES[2:])
@pytest.mark.parametrize("variant", list(SAC_VARIANTS))
def test_compiled_sac_variants_match_eager_ones(variant, device, cudagraphs):
    assert_compiled_updates_match_eager_ones(sac, device, cudagraphs, **SAC_VARIANTS[variant])


def assert_compiled_updates_match_eager_ones(module, device: str, cudagraphs: bool, **overrides):
    """UPDATES updates eager and compiled (and CUDA-graphed) from the same state: the same losses
    and the same state (networks, optimizers, generators) up to float32 rounding."""
    eager, eager_losses = updated_agent(module, device, compile=False, **overrides)
    compiled, compiled_losses = updated_agent(module, device, compile=True, cudagraphs=cudagraphs, **overrides)
    step = compiled.critic_step
    assert type(step).__name__ == ("CudaGraphStep" if cudagraphs else "CompiledStep")
    # compiled for real (a fallback to eager would compare eager with eager), and recorded as a graph
    skip_unless_available(None if (step.step if cudagraphs else step).compiled is not None else
                          "torch.compile fell back to eager here (no working C++ compiler?)")
    assert not cudagraphs or step.graph is not None
    tolerance = TOLERANCE[device]
    for k, (a, b) in enumerate(zip(eager_losses, compiled_losses)):
        assert a.keys() == b.keys() and len(a) >= 3
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=tolerance, atol=tolerance, msg=f"update {k}: {key}")
    state_a, state_b = tensors_of(module.agent_state(eager)), tensors_of(module.agent_state(compiled))
    assert state_a.keys() == state_b.keys() and len(state_a) > 20
    for name, tensor in state_a.items():  # networks, targets, optimizer moments, temperature, generators
        if tensor.is_floating_point():
            torch.testing.assert_close(state_b[name], tensor, rtol=tolerance, atol=tolerance, msg=name)
        else:
            assert torch.equal(state_b[name], tensor), name
    # and the networks did move: the comparison is not between two untouched networks
    torch.manual_seed(0)
    initial = tensors_of(module.agent_state(module.Agent(eager.args, OBS_DIM, SPACE, torch.device(device))))
    moved = max((initial[name] - state_a[name]).abs().max().item() for name in initial if ".critics." in name)
    assert moved > 10 * tolerance


def test_agents_of_other_sizes_in_one_process_each_compile(capsys):
    """The same method compiled for a second agent with other shapes must not fail over to eager
    (torch.compile's retry with symbolic shapes did, in torch 2.13: dynamic=False prevents it)."""
    for hidden_size, copies in ((24, 2), (40, 1)):  # other network sizes and another batch size
        args = sac.args_from_flat(dict(env_id="Pendulum-v1", hidden_size=hidden_size, compile=True))
        agent = sac.Agent(args, OBS_DIM, SPACE, torch.device("cpu"))
        sac.accelerate_updates(agent, args)
        batch = {key: value.float().repeat(copies, *[1] * (value.dim() - 1))
                 for key, value in random_batch(seed=0).items()}
        losses = agent.critic_step(batch)
        losses |= agent.actor_step(batch)
        agent.temperature_step(losses["log_prob"])
        assert all(getattr(agent, name).compiled is not None for name in agent.COMPILED_STEPS), hidden_size
    assert "run eagerly" not in capsys.readouterr().err


def tensors_of(state, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a (nested) state dict by a dotted path, on the CPU."""
    if torch.is_tensor(state):
        return {prefix: state.detach().cpu()}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else []
    return {path: tensor for key, value in items for path, tensor in tensors_of(value, f"{prefix}.{key}").items()}


def tiny(module, tmp_path, **overrides):
    base = dict(env_id="Pendulum-v1", total_timesteps=300, learning_starts=100, random_steps=100, batch_size=32,
                hidden_size=32, eval_every=100, eval_episodes=1, log_every=100, checkpoint_every=1000,
                output_dir=str(tmp_path), compile=True)
    return module.args_from_flat(dict(**{**base, **overrides}))


def compiled_run_from_a_fresh_compiler(module, args) -> dict:
    """module.train(args) as a new process runs it: torch.compile's caches emptied first (an earlier
    compile in this process, of other shapes, would otherwise decide what this one reuses)."""
    torch._dynamo.reset()
    return module.train(args)


def test_a_compiled_run_is_reproducible(tmp_path):
    first, second = (compiled_run_from_a_fresh_compiler(sac, tiny(sac, tmp_path / name)) for name in ("a", "b"))
    read = lambda result: open(os.path.join(result["run_dir"], "eval.csv")).read()  # noqa: E731
    assert read(first) == read(second)  # same seed, same CPU: the same numbers, compiled too


@pytest.mark.parametrize("script", list(MODULES))
def test_a_compiled_run_resumes(script, tmp_path):
    module = MODULES[script]
    first = module.train(tiny(module, tmp_path))
    args = tiny(module, tmp_path, resume=first["run_dir"], total_timesteps=400)
    assert_resumed_to(first["run_dir"], module.train(args), 400)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU here")
@pytest.mark.parametrize("script", list(MODULES))
def test_a_cuda_graph_run_checkpoints_and_resumes(script, tmp_path):
    module = MODULES[script]
    args = tiny(module, tmp_path, cuda=True, cudagraphs=True)
    first = module.train(args)
    assert first["global_step"] == 300
    resumed = module.train(replace_flags(module, args, resume=first["run_dir"], total_timesteps=400))
    assert_resumed_to(first["run_dir"], resumed, 400)


@pytest.mark.parametrize("device, cudagraphs", DEVICES[:1] + DEVICES[2:])
def test_a_compiled_run_stops_on_a_nonfinite_loss_at_the_last_good_checkpoint(tmp_path, device, cudagraphs):
    args = tiny(sac, tmp_path, env_id="ScriptedNaN-v0", total_timesteps=2000, checkpoint_every=300, eval_every=0,
                cuda=device == "cuda", cudagraphs=cudagraphs)
    assert_nan_stops_at_last_good_checkpoint(sac.train, sac.NonFiniteLossError, args, tmp_path)


def test_ctrl_c_during_a_compiled_run_writes_a_checkpoint_that_resumes(tmp_path):
    cli = ["--env-id", "Pendulum-v1", "--learning-starts", "100", "--batch-size", "32", "--hidden-size", "32",
           "--eval-every", "0", "--eval-episodes", "1", "--compile"]
    interrupt_then_resume("sac_continuous.py", cli, tmp_path, extra_steps=100)


def test_without_a_working_compiler_the_run_falls_back_to_eager_with_one_notice(tmp_path):
    """No C++ compiler (CXX names a missing program) and an empty compile cache: compiling the first
    update fails; the run says so in one line and trains eagerly to the end, without a traceback."""
    result = run_script("sac_continuous.py", "--env-id", "Pendulum-v1", "--total-timesteps", "200",
                        "--learning-starts", "100", "--batch-size", "32", "--hidden-size", "32",
                        "--eval-every", "0", "--eval-episodes", "1", "--compile", "--output-dir", str(tmp_path / "runs"),
                        env_extra={"CXX": "/nonexistent/g++", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"),
                                   "TORCHINDUCTOR_FX_GRAPH_CACHE": "0"})
    assert result.returncode == 0, result.stderr
    notices = [line for line in result.stderr.splitlines() if "so the updates run eagerly" in line]
    assert len(notices) == 1, result.stderr
    assert "Traceback" not in result.stderr
    run_dir = tmp_path / "runs" / os.listdir(tmp_path / "runs")[0]
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 200


@pytest.mark.parametrize("cli, message", [
    (["--cudagraphs"], "--cudagraphs needs --cuda and --compile"),
    (["--cudagraphs", "--cuda"], "--cudagraphs needs --cuda and --compile"),
    pytest.param(["--cudagraphs", "--cuda", "--compile"], "--cudagraphs needs a CUDA GPU",
                 marks=pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is present")),
])
@pytest.mark.parametrize("script", list(MODULES))
def test_cudagraphs_without_its_requirements_is_one_error_line(script, cli, message, tmp_path):
    result = run_script(f"{script}.py", "--env-id", "Pendulum-v1", "--output-dir", str(tmp_path), *cli)
    assert result.returncode == 2 and f"error: {message}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not os.listdir(tmp_path)
