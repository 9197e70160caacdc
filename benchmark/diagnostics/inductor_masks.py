"""Why `--compile` makes the update slower on this CPU: Inductor's C++ kernels that write or read a
boolean mask, timed against eager PyTorch on one tensor the size of the critics' hidden layer.

    python benchmark/diagnostics/inductor_masks.py --threads 2

A ReLU network's backward pass needs to know where each ReLU was active: `where(out <= 0, 0, grad)`.
Inductor computes that mask in the forward kernel and keeps it as a bool tensor for the backward
kernel. On torch 2.13's CPU backend, storing such a mask from a vectorized kernel goes through a
generic element-by-element conversion (at::vec::VecMask to bool), which this table shows costing
about 20x what eager's comparison does (reading it back is slower than the float control too).
Each cell is one call on a [2, 256, 256] float32 tensor (2 critics x batch 256 x 256 hidden units),
median over --rounds rounds of --calls calls.
The float rows are the control: the same comparison kept as a float mask is as fast as eager or
faster. Every compiled output is checked equal to eager's before it is timed.

Then (--profile-updates > 0) it profiles --script's own compiled update (the --compile path, the
env's shapes, as benchmark/diagnostics/compile_options.py builds it) with Inductor's per-kernel
profiling on, and lists where a compiled update's time goes: matrix products, Dynamo's guard checks,
and the generated kernels, largest first; the ReLU mask kernels (names with threshold_backward) are
among the largest though each touches only a few hundred KB. The "relu" row's compiled time is
mostly a compiled function's call overhead (guards, wrapper: some 20-40 us) on so small a kernel.

Rerun it after a torch upgrade: if the bool rows reach eager's speed, re-measure `--compile`
(benchmark/diagnostics/compile_options.py and benchmark/throughput.py).
"""

from __future__ import annotations

import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmark.diagnostics.compile_options import (  # noqa: E402
    MATRIX_PRODUCTS, Args as CompileArgs, Script, build_agent, full_update, matrix_product_share,
    script_and_shapes)


@dataclass
class Args:
    threads: int = 2
    """torch CPU threads"""
    calls: int = 200
    """calls per timing round"""
    rounds: int = 5
    """alternating (eager, compiled) rounds per case"""
    critics: int = 2
    """leading size of the tensor (the critic ensemble)"""
    batch_size: int = 256
    """middle size of the tensor (the batch)"""
    hidden_size: int = 256
    """width of the tensor and of the profiled agent's networks"""
    profile_updates: int = 50
    """compiled updates of --script to profile (0: skip)"""
    script: Script = "sac_continuous"
    """whose compiled update to profile"""
    env_id: str = "Hopper-v4"
    """the env whose shapes the profiled agent has"""
    top_kernels: int = 8
    """how many generated kernels to list"""


# name -> (what it stands for, function of (activation, saved bool mask, incoming gradient))
CASES: dict[str, tuple[str, Callable]] = {
    "relu": ("float in, float out (control)", lambda x, mask, grad: torch.relu(x)),
    "x <= 0 as bool": ("writes a bool mask (ReLU's, for the backward)", lambda x, mask, grad: x <= 0),
    "x <= 0 as uint8": ("writes a byte mask", lambda x, mask, grad: (x <= 0).to(torch.uint8)),
    "x <= 0 as float": ("the same mask kept as float (control)", lambda x, mask, grad: (x <= 0).float()),
    "where(bool mask, 0, grad)": ("reads a bool mask (ReLU's backward)",
                                  lambda x, mask, grad: torch.where(mask, 0.0, grad)),
    "where(x <= 0, 0, grad)": ("the same, mask recomputed from x (control)",
                               lambda x, mask, grad: torch.where(x <= 0, 0.0, grad)),
}


def microseconds_per_call(function: Callable, inputs: tuple, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        function(*inputs)
    return 1e6 * (time.perf_counter() - start) / calls


def time_cases(args: Args) -> list[dict]:
    """Eager vs torch.compile(dynamic=False) for each case; outputs checked equal first."""
    generator = torch.Generator().manual_seed(0)
    shape = (args.critics, args.batch_size, args.hidden_size)
    x, grad = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    inputs = (x, x <= 0, grad)
    results = []
    for name, (meaning, eager) in CASES.items():
        compiled = torch.compile(eager, dynamic=False)
        if not torch.equal(compiled(*inputs), eager(*inputs)):
            raise AssertionError(f"{name}: the compiled kernel computes something else than eager")
        eager_us, compiled_us = [], []
        for _ in range(args.rounds):
            eager_us.append(microseconds_per_call(eager, inputs, args.calls))
            compiled_us.append(microseconds_per_call(compiled, inputs, args.calls))
        results.append({"case": name, "meaning": meaning, "eager_us": statistics.median(eager_us),
                        "compiled_us": statistics.median(compiled_us)})
    return results


def table(results: list[dict]) -> str:
    lines = ["| kernel | what it is | eager us/call | compiled us/call | compiled / eager |", "|---|---|---|---|---|"]
    for result in results:
        lines.append(f"| {result['case']} | {result['meaning']} | {result['eager_us']:.1f} "
                     f"| {result['compiled_us']:.1f} | {result['compiled_us'] / result['eager_us']:.2f}x |")
    return "\n".join(lines)


def profile_compiled_update(args: Args) -> dict:
    """ms per compiled update of --script (and per eager update, for comparison), split into
    matrix products, Dynamo's guard checks, the generated kernels (each: us per update) and the rest
    (wrappers, optimizer, autograd)."""
    from torch._inductor import config as inductor_config
    from torch.profiler import ProfilerActivity, profile
    module_args = CompileArgs(script=args.script, env_id=args.env_id, hidden_size=args.hidden_size,
                              profile_updates=args.profile_updates)
    module, space, obs_dim, batches = script_and_shapes(module_args)
    agent, run_args = build_agent(module, module_args, space, obs_dim, compile=True)
    module.accelerate_updates(agent, run_args)
    with inductor_config.patch({"cpp.enable_kernel_profile": True}):  # each kernel shows in the profile
        for k in range(10):  # compiles, then settles
            full_update(agent, batches[k % len(batches)])
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for k in range(args.profile_updates):
            full_update(agent, batches[k % len(batches)])
    per_update = {event.key: event.self_cpu_time_total / args.profile_updates
                  for event in profiler.key_averages()}  # us per update
    kernels = {name: us for name, us in per_update.items() if "cpp_fused" in name}
    takes_bool = kernels_with_bool_arguments()
    # the profile names a kernel graph_<n>_<its name in the generated code>
    takes_bool_by_profile_name = {name: takes_bool.get(name.split("_", 2)[-1]) for name in kernels}
    eager = matrix_product_share(module_args)
    return {"eager_ms": eager["ms_per_update"], "eager_products_ms": eager["product_ms"],
            "total_ms": sum(per_update.values()) / 1000,
            "products_ms": sum(per_update.get(name, 0.0) for name in MATRIX_PRODUCTS) / 1000,
            "guards_ms": per_update.get("TorchDynamo Cache Lookup", 0.0) / 1000,
            "kernels_ms": sum(kernels.values()) / 1000,
            "mask_kernels_ms": sum(us for name, us in kernels.items() if takes_bool_by_profile_name[name]) / 1000,
            "top_kernels": [(name, us, takes_bool_by_profile_name[name])
                            for name, us in sorted(kernels.items(), key=lambda item: -item[1])[:args.top_kernels]]}


def kernels_with_bool_arguments() -> dict[str, bool | None]:
    """For each C++ kernel of the graphs this process compiled: does its signature in the generated
    code (`name = async_compile.cpp_pybinding(['float*', 'bool*'], ...)`) take a bool buffer?
    None where two graphs define kernels of that name differently."""
    from torch._inductor.codecache import PyCodeCache
    answers: dict[str, bool | None] = {}
    for module in PyCodeCache.modules:
        source = Path(module.__file__).read_text()
        for name, signature in re.findall(r"^(cpp_fused_\w+) = async_compile\.cpp_pybinding\((\[[^]]*\])",
                                           source, flags=re.MULTILINE):
            takes_bool = "bool*" in signature
            answers[name] = takes_bool if answers.get(name, takes_bool) == takes_bool else None
    return answers


def profile_report(profiled: dict, args: Args) -> str:
    lines = [f"{args.script} --compile on {args.env_id} shapes, profiled: {profiled['total_ms']:.2f} ms per update "
             f"= matrix products {profiled['products_ms']:.2f} + generated kernels {profiled['kernels_ms']:.2f} "
             f"(of which kernels with a bool mask {profiled['mask_kernels_ms']:.2f}) "
             f"+ Dynamo guard checks {profiled['guards_ms']:.2f} + the rest "
             f"{profiled['total_ms'] - profiled['products_ms'] - profiled['kernels_ms'] - profiled['guards_ms']:.2f}",
             f"eager, profiled the same way: {profiled['eager_ms']:.2f} ms per update, of which matrix products "
             f"{profiled['eager_products_ms']:.2f}",
             "", "| generated kernel | us per update | reads or writes a bool mask |", "|---|---|---|"]
    lines += [f"| {name} | {us:.0f} | { {True: 'yes', False: 'no'}.get(takes_bool, '?')} |"
              for name, us, takes_bool in profiled["top_kernels"]]
    return "\n".join(lines)


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    from torch._inductor.cpu_vec_isa import pick_vec_isa
    print(f"torch {torch.__version__}, Inductor's vector ISA {pick_vec_isa()}, {args.threads} thread(s), "
          f"tensor {args.critics}x{args.batch_size}x{args.hidden_size} float32, median of {args.rounds} "
          f"rounds of {args.calls} calls", file=sys.stderr)
    print(table(time_cases(args)))
    if args.profile_updates > 0:
        print("\n" + profile_report(profile_compiled_update(args), args))


if __name__ == "__main__":
    main(tyro.cli(Args))
