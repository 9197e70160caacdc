"""A tiny stand-in for an algorithm script that obeys docs/CONTRACT.md (CLI flags, run folder,
args.json / eval.csv / metrics.csv / checkpoint.pt / summary.json, --resume, exit codes), so the
sweep and Slurm tests run in seconds without training anything.

Its "return" after step t of T is `seed + 100 * t / T + policy` (deterministic mode) and that
minus 1 (stochastic mode), so tests can predict every number. Test hooks, read from the
environment so they do not change the sweep's exp-name hash:
  FAKE_ALGO_SLEEP     seconds to sleep per step (default 0)
  FAKE_ALGO_CRASH_AT  exit 1 at this step (after the last periodic checkpoint), like a preemption
Every invocation's argv is appended to `invocations.jsonl` in the run folder.
"""

import argparse
import csv
import json
import os
import signal
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--env-id", default="Fake-v0")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--total-timesteps", type=int, default=100)
    p.add_argument("--exp-name", default="fake_algo")
    p.add_argument("--output-dir", default="runs")
    p.add_argument("--resume", default=None)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--eval-episodes", type=int, default=1)
    p.add_argument("--learning-starts", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--num-actors", type=int, default=1)
    p.add_argument("--w2-weights", type=float, nargs="+", default=[0.0])
    p.add_argument("--tau", type=float, default=0.005)
    p.add_argument("--cuda", action=argparse.BooleanOptionalAction, default=False)
    return p.parse_args(argv)  # argparse exits 2 on bad input, as the contract asks


def append_rows(path: Path, header: list[str], rows: list[list]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(header)
        writer.writerows(rows)


def truncate_rows(path: Path, step: int) -> None:
    """On resume, drop rows logged after the checkpoint's step."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= step]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(kept)


def evaluate(args, step: int) -> list[dict]:
    out = []
    for policy in range(args.num_actors):
        for mode, offset in (("deterministic", 0.0), ("stochastic", -1.0)):
            mean = args.seed + 100.0 * step / args.total_timesteps + policy + offset
            out.append(dict(policy=policy, mode=mode, mean_return=mean, std_return=0.5, episodes=args.eval_episodes))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    start = 0
    if args.resume:
        folder = Path(args.resume)
        folder = folder.parent if folder.name == "checkpoint.pt" else folder
        start = json.loads((folder / "checkpoint.pt").read_text())["global_step"]
        for name in ("eval.csv", "metrics.csv"):
            truncate_rows(folder / name, start)
    else:
        folder = Path(args.output_dir) / f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
        folder.mkdir(parents=True, exist_ok=True)
        record = {"algorithm": "fake_algo", "args": vars(args), "command": sys.argv,
                  "env": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}}
        (folder / "args.json").write_text(json.dumps(record))
    with open(folder / "invocations.jsonl", "a") as f:
        f.write(json.dumps(sys.argv) + "\n")

    def checkpoint(step):
        tmp = folder / "checkpoint.pt.tmp"
        tmp.write_text(json.dumps({"global_step": step}))
        os.replace(tmp, folder / "checkpoint.pt")

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    sleep = float(os.environ.get("FAKE_ALGO_SLEEP", "0"))
    crash_at = int(os.environ.get("FAKE_ALGO_CRASH_AT", "-1"))
    t0 = time.time()
    for step in range(start + 1, args.total_timesteps + 1):
        time.sleep(sleep)
        if step == crash_at:
            print(f"fake crash at step {step}", file=sys.stderr)
            return 1
        if stop:
            checkpoint(step - 1)
            print(f"interrupted; resume with --resume {folder}", file=sys.stderr)
            return 130
        if args.eval_every and step % args.eval_every == 0 and step < args.total_timesteps:
            rows = evaluate(args, step)
            append_rows(folder / "eval.csv", ["global_step", "policy", "mode", "mean_return", "std_return", "episodes"],
                        [[step, r["policy"], r["mode"], r["mean_return"], r["std_return"], r["episodes"]] for r in rows])
        if step % 10 == 0:
            append_rows(folder / "metrics.csv", ["global_step", "wall_time", "metric", "value"],
                        [[step, time.time() - t0, "charts/SPS", 1000.0]])
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            checkpoint(step)
    final = evaluate(args, args.total_timesteps)
    append_rows(folder / "eval.csv", ["global_step", "policy", "mode", "mean_return", "std_return", "episodes"],
                [[args.total_timesteps, r["policy"], r["mode"], r["mean_return"], r["std_return"], r["episodes"]] for r in final])
    checkpoint(args.total_timesteps)
    summary = {"algorithm": "fake_algo", "env_id": args.env_id, "seed": args.seed, "global_step": args.total_timesteps,
               "total_timesteps": args.total_timesteps, "sps": 1000.0, "train_sps": 900.0,
               "wall_time_s": time.time() - t0, "final_eval": final}
    (folder / "summary.json").write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
