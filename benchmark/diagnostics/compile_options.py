"""Which torch.compile settings pay on this CPU, and how much any of them could: ms per update,
eager vs compiled under each setting, side by side; and the share of eager's time in matrix products.

    python benchmark/diagnostics/compile_options.py --script sac_continuous --env-id Hopper-v4

1. The bound. An eager agent runs --profile-updates updates under torch.profiler; the table gives
   its time per update and the share spent in the matrix products (aten::mm, addmm, bmm, baddbmm).
   On the CPU, Inductor hands these to the same BLAS kernels eager uses, so a compiler can at best
   remove the rest: total / matrix-product time is the largest speedup ANY compiled update can give
   at these sizes (a generous bound: the profiler's own cost per operation inflates the rest).
2. The settings. Each --options entry runs in a fresh process (compiler settings are global): two
   agents of --script built from the same seed (256x256 networks, batch 256, the env's shapes,
   random replay data: the cost does not depend on the values), one eager and one through the
   script's own --compile path (`accelerate_updates`) under that setting. After compilation they
   alternate --rounds rounds of --updates updates (critic, target, actor and temperature step),
   each agent drawing the same batches and seeds. The table gives ms per update, the paired ratio
   (eager ms / compiled ms within each round: median and range; above 1 = compiled is faster),
   the compile time, and two checks that the compiled agent trained: how far its parameters moved
   over all its updates, and how far they were from the eager agent's after the first
   WARMUP_UPDATES (float32 rounding only: ~1e-6; later the difference grows, as Adam amplifies
   rounding). A setting that is fast because it skips work shows up there: "moved 0" means the
   compiled update never changed a parameter.

Settings (--options): default (what --compile does), max-autotune (mode=
"max-autotune-no-cudagraphs"), cpp-wrapper (Inductor's C++ wrapper instead of Python),
compiled-autograd (torch._dynamo.config.compiled_autograd), trace-autograd-ops
(torch._dynamo.config.trace_autograd_ops: backward() traced into the graph), adam-in-graph (the
optimizers switched from fused to foreach, so the compiler traces Adam's step instead of calling
the fused kernel). Timings on a shared VM drift: read the paired ratios.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import tyro

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmark.runfolders import thread_env  # noqa: E402

Script = Literal["sac_continuous", "posac_jko", "gmm_density_matching"]
Option = Literal["default", "max-autotune", "cpp-wrapper", "compiled-autograd", "trace-autograd-ops",
                 "adam-in-graph"]
MATRIX_PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
WARMUP_UPDATES = 5  # the compiling updates; after them eager and compiled agents are compared


@dataclass
class Args:
    script: Script = "sac_continuous"
    """whose update to time"""
    env_id: str = "Hopper-v4"
    """the env whose observation and action sizes shape the networks"""
    options: list[Option] = field(default_factory=lambda: ["default", "max-autotune", "cpp-wrapper",
                                                            "compiled-autograd", "trace-autograd-ops",
                                                            "adam-in-graph"])
    """compiler settings to compare with eager, each in its own process"""
    updates: int = 100
    """updates per round and agent"""
    rounds: int = 3
    """alternating rounds (eager, compiled) per setting"""
    profile_updates: int = 50
    """eager updates under the profiler for the matrix-product share (0: skip)"""
    threads: int = 1
    """torch CPU threads"""
    hidden_size: int = 256
    """network width (the scripts' default)"""
    one_option: str = ""
    """internal: time this one setting in this process and print its result as JSON"""


def build_agent(module, args: Args, space: gym.spaces.Box, obs_dim: int, compile: bool):
    """One agent of `module` (seed 1; POSAC with two actors, W2 weights 0 and 0.1)."""
    extra = {"num_actors": 2, "w2_weights": [0.0, 0.1]} if module.__name__ == "posac_jko" else {}
    run_args = module.args_from_flat(dict(env_id=args.env_id, seed=1, hidden_size=args.hidden_size, compile=compile,
                                          **extra))
    torch.manual_seed(1)
    return module.Agent(run_args, obs_dim, space, torch.device("cpu")), run_args


def random_batches(space: gym.spaces.Box, obs_dim: int, count: int, batch_size: int = 256) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    low, high = torch.as_tensor(space.low), torch.as_tensor(space.high)
    return [{"obs": torch.randn(batch_size, obs_dim, generator=generator),
             "next_obs": torch.randn(batch_size, obs_dim, generator=generator),
             "actions": low + (high - low) * torch.rand(batch_size, *space.shape, generator=generator),
             "rewards": torch.randn(batch_size, generator=generator),
             "terminations": (torch.rand(batch_size, generator=generator) < 0.05).float()}
            for _ in range(count)]


def script_and_shapes(args: Args):
    """-> (the script's module, the env's action space, observation size, 8 random batches)."""
    env = gym.make(args.env_id)
    space, obs_dim = env.action_space, int(np.prod(env.observation_space.shape))
    env.close()
    return __import__(args.script), space, obs_dim, random_batches(space, obs_dim, count=8)


def full_update(agent, batch: dict) -> None:
    """What one env step's update does in the training loops (one critic step per env step)."""
    losses = agent.critic_step(batch)
    agent.target_update()
    losses |= agent.actor_step(batch)
    if hasattr(agent, "temperature_step"):
        agent.temperature_step(losses["log_prob"])


def parameters_of(agent) -> list[torch.Tensor]:
    """Copies of every actor's and the critics' parameters."""
    modules = list(agent.policies) + [agent.critics]
    return [tensor.detach().clone() for module in modules for tensor in module.parameters()]


def apply_option(option: str, module, agent, run_args) -> None:
    """Set the compiler up for `option`, then make `agent`'s update methods compiled ones."""
    import torch._dynamo.config
    import torch._inductor.config
    if option == "cpp-wrapper":
        torch._inductor.config.cpp_wrapper = True
    elif option == "compiled-autograd":
        torch._dynamo.config.compiled_autograd = True
    elif option == "trace-autograd-ops":
        torch._dynamo.config.trace_autograd_ops = True
    elif option == "adam-in-graph":
        for value in vars(agent).values():
            for optimizer in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(optimizer, torch.optim.Optimizer):
                    for group in optimizer.param_groups:
                        group["fused"], group["foreach"] = None, True
    module.accelerate_updates(agent, run_args)
    if option == "max-autotune":
        for name in agent.COMPILED_STEPS:
            step = getattr(agent, name)
            if isinstance(step, module.CompiledStep):
                step.compiled = torch.compile(step.eager, mode="max-autotune-no-cudagraphs")


def time_one_option(args: Args) -> dict:
    """Eager vs compiled under args.one_option, alternating rounds in this process."""
    module, space, obs_dim, batches = script_and_shapes(args)
    eager, _ = build_agent(module, args, space, obs_dim, compile=False)
    compiled, run_args = build_agent(module, args, space, obs_dim, compile=True)
    apply_option(args.one_option, module, compiled, run_args)
    start_parameters = parameters_of(compiled)

    def round_of_updates(agent, round_index: int, updates: int) -> float:
        torch.manual_seed(1000 + round_index)  # both agents draw the same noise in a round
        start = time.perf_counter()
        for k in range(updates):
            full_update(agent, batches[k % len(batches)])
        return 1000 * (time.perf_counter() - start) / updates

    start = time.perf_counter()
    round_of_updates(compiled, -1, WARMUP_UPDATES)  # compilation, in a round of its own
    compile_seconds = time.perf_counter() - start
    round_of_updates(eager, -1, WARMUP_UPDATES)
    from_eager = max(float((a - b).abs().max()) for a, b in zip(parameters_of(compiled), parameters_of(eager)))
    eager_ms, compiled_ms = [], []
    for round_index in range(args.rounds):
        eager_ms.append(round_of_updates(eager, round_index, args.updates))
        compiled_ms.append(round_of_updates(compiled, round_index, args.updates))
    moved = max(float((now - then).abs().max()) for now, then in zip(parameters_of(compiled), start_parameters))
    compiled_for_real = all(getattr(getattr(compiled, name), "compiled", None) is not None
                            for name in compiled.COMPILED_STEPS)
    return {"option": args.one_option, "eager_ms": eager_ms, "compiled_ms": compiled_ms,
            "compile_s": compile_seconds, "moved": moved, "from_eager": from_eager,
            "compiled_for_real": compiled_for_real}


def matrix_product_share(args: Args) -> dict:
    """Eager ms per update under the profiler and the part of it in matrix products."""
    from torch.profiler import ProfilerActivity, profile
    module, space, obs_dim, batches = script_and_shapes(args)
    agent, _ = build_agent(module, args, space, obs_dim, compile=False)
    for k in range(10):
        full_update(agent, batches[k % len(batches)])
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for k in range(args.profile_updates):
            full_update(agent, batches[k % len(batches)])
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    products = sum(event.self_cpu_time_total for event in events if event.key in MATRIX_PRODUCTS)
    return {"ms_per_update": total / args.profile_updates / 1000,
            "product_ms": products / args.profile_updates / 1000, "share": products / total}


def settings_table(results: list[dict]) -> str:
    lines = ["| setting | eager ms/update | compiled ms/update | paired ratio (median, range) | compile s "
             "| moved | from eager after warm-up |", "|---|---|---|---|---|---|---|"]
    for result in results:
        if "error" in result:
            lines.append(f"| {result['option']} | failed: {result['error']} | | | | | |")
            continue
        ratios = [e / c for e, c in zip(result["eager_ms"], result["compiled_ms"])]
        name = result["option"] + ("" if result["compiled_for_real"] else " (fell back to eager)")
        lines.append(f"| {name} | {statistics.median(result['eager_ms']):.2f} "
                     f"| {statistics.median(result['compiled_ms']):.2f} | {statistics.median(ratios):.2f}x "
                     f"({min(ratios):.2f}-{max(ratios):.2f}) | {result['compile_s']:.1f} "
                     f"| {result['moved']:.2g} | {result['from_eager']:.2g} |")
    return "\n".join(lines)


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    if args.one_option:
        print(json.dumps(time_one_option(args)))
        return
    print(f"{args.script} on {args.env_id} shapes, {args.hidden_size}x{args.hidden_size}, batch 256, "
          f"CPU {args.threads} thread(s), {args.rounds} rounds of {args.updates} updates per setting")
    if args.profile_updates > 0:
        share = matrix_product_share(args)
        print(f"\neager, profiled: {share['ms_per_update']:.2f} ms per update, of which matrix products "
              f"{share['product_ms']:.2f} ms ({share['share']:.0%}): no compiled update can be more than "
              f"{1 / share['share']:.2f}x faster at these sizes\n")
    results = []
    for option in args.options:
        command = [sys.executable, __file__, "--script", args.script, "--env-id", args.env_id,
                   "--updates", str(args.updates), "--rounds", str(args.rounds), "--threads", str(args.threads),
                   "--hidden-size", str(args.hidden_size), "--one-option", option]
        finished = subprocess.run(command, capture_output=True, text=True, env=thread_env(args.threads),
                                  cwd=ROOT)
        lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
        if finished.returncode != 0 or not lines:
            last = (finished.stderr.strip().splitlines() or ["no output"])[-1]
            results.append({"option": option, "error": last[:200]})
        else:
            results.append(json.loads(lines[-1]))
        print(settings_table(results[-1:]).splitlines()[-1], flush=True)
    print("\n" + settings_table(results))


if __name__ == "__main__":
    main(tyro.cli(Args))
