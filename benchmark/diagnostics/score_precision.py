"""How far `--score-dtype bfloat16` moves the GMM actor's targets, on a trained run's own critics.

    python benchmark/diagnostics/score_precision.py --checkpoint runs/Pendulum-v1__gmm_density_matching__1__.../checkpoint.pt

Loads a gmm_density_matching.py checkpoint (actor, critics, replay buffer), draws --num-states
states from its replay buffer, proposes M actions per state exactly as that run's actor update
does (its --proposal, --num-action-samples), and scores them twice: float32 throughout, and with
the hidden-layer products in bfloat16. It reports the size of Q, the spread of Q over each state's
M actions, the error of min(Q1, Q2), and the total-variation distance between the two sets of
Boltzmann weights p_i (the targets the actor imitates), both at the temperature the run would use
(its fixed T, or the KL-bound T solved on the float32 scores).

The scoring's rounding is small next to Q, but the weights only see Q's differences across a
state's M actions; this measures the error against those, on real critics rather than random ones.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import gmm_density_matching as gmm  # noqa: E402


@dataclass
class Args:
    checkpoint: str
    """a gmm_density_matching.py checkpoint.pt (or its run folder)"""
    num_states: int = 1024
    """states drawn from the checkpoint's replay buffer (fewer if it holds fewer)"""
    seed: int = 0
    """seed of the state draw and of the proposals"""
    threads: int = 2
    """CPU threads"""


@torch.no_grad()
def compare_scoring(checkpoint_path: str, num_states: int = 1024, seed: int = 0,
                    low_dtype: torch.dtype = torch.bfloat16) -> dict[str, float]:
    """Score the same proposals in float32 and with `low_dtype` hidden products; the differences."""
    try:  # read as data only, and checked to be a gmm_density_matching.py checkpoint
        checkpoint = gmm.read_checkpoint(checkpoint_path, flag="--checkpoint")
    except gmm.ConfigError as error:  # missing, unreadable, foreign or from another version
        raise SystemExit(f"error: {error}") from None
    args = gmm.args_from_flat(checkpoint["args"])
    action_space = gmm.check_env(args.env_id)
    buffer = checkpoint["replay_buffer"]
    agent = gmm.GMMAgent(args, buffer["obs"].shape[1], action_space, torch.device("cpu"))
    gmm.load_agent_state(agent, checkpoint["agent"])
    agent.proposal_generator.manual_seed(seed)

    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(buffer["size"], generator=generator)[:num_states]
    obs = buffer["obs"][rows]
    u, log_q = agent.propose(obs, agent.actor.distribution_params(obs))
    actions = agent.actor.squash(u)
    q_exact = agent.critics.forward_many(obs, actions).min(dim=0).values  # [B, M]
    q_low = agent.critics.forward_many(obs, actions, matmul_dtype=low_dtype).min(dim=0).values
    temperature = (gmm.kl_temperature(q_exact, args.kl_bound) if args.temperature_mode == "kl"
                   else torch.tensor(args.temperature))
    weights_exact = gmm.boltzmann_weights(q_exact, temperature, log_q)
    weights_low = gmm.boltzmann_weights(q_low, temperature, log_q)

    error = (q_low - q_exact).abs()  # [B, M]
    spread = q_exact.amax(dim=-1) - q_exact.amin(dim=-1)  # [B]
    total_variation = 0.5 * (weights_low - weights_exact).abs().sum(dim=-1)  # [B]
    return {"states": len(rows), "actions_per_state": q_exact.shape[1], "temperature": float(temperature),
            "q_mean_abs": q_exact.abs().mean().item(), "q_spread_median": spread.median().item(),
            "error_max": error.max().item(), "error_mean": error.mean().item(),
            "error_over_spread_median": (error.amax(dim=-1) / spread.clamp_min(1e-12)).median().item(),
            "weights_tv_mean": total_variation.mean().item(), "weights_tv_max": total_variation.max().item()}


def report(figures: dict[str, float]) -> str:
    names = {"states": "states", "actions_per_state": "actions per state (M)", "temperature": "temperature T",
             "q_mean_abs": "mean |Q|", "q_spread_median": "median spread of Q over a state's M actions",
             "error_max": "largest |Q error|", "error_mean": "mean |Q error|",
             "error_over_spread_median": "median of (a state's largest error / its spread)",
             "weights_tv_mean": "mean total variation between the weights",
             "weights_tv_max": "largest total variation between the weights"}
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {names[key]} | {value:.4g} |" for key, value in figures.items()]
    return "\n".join(lines)


def main(args: Args) -> None:
    if args.num_states < 1:
        raise SystemExit("error: --num-states must be positive")
    torch.set_num_threads(args.threads)
    figures = compare_scoring(args.checkpoint, args.num_states, args.seed)
    print(f"bfloat16 vs float32 scoring, {args.checkpoint}")
    print(report(figures))


if __name__ == "__main__":
    main(tyro.cli(Args))
