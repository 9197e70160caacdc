"""benchmark/report.py on synthetic run folders: the numbers in the table are the right means and
stds over seeds, lines are labelled per algorithm / configuration / actor, final_returns.csv has one
row per finished run and policy, and the PNG is written."""

import json
from pathlib import Path

import numpy as np
import pytest

from benchmark.report import curve, load_runs, report


def write_run(root: Path, env_id: str, exp_name: str, seed: int, rows: list[tuple], algorithm: str,
              unix_time: int = 1000, sps=None, total_timesteps: int = 300) -> Path:
    """rows: (global_step, policy, mode, mean_return)."""
    folder = root / f"{env_id}__{exp_name}__{seed}__{unix_time}"
    folder.mkdir(parents=True)
    lines = ["global_step,policy,mode,mean_return,std_return,episodes"]
    lines += [f"{s},{p},{m},{r},1.0,10" for s, p, m, r in rows]
    (folder / "eval.csv").write_text("\n".join(lines) + "\n")
    (folder / "args.json").write_text(json.dumps({"algorithm": algorithm, "args": {
        "env_id": env_id, "exp_name": exp_name, "seed": seed, "total_timesteps": total_timesteps}}))
    if sps is not None:
        (folder / "summary.json").write_text(json.dumps({"global_step": rows[-1][0], "sps": sps, "train_sps": sps / 2,
                                                         "wall_time_s": 60.0 * seed}))
    return folder


@pytest.fixture
def runs(tmp_path):
    # sac: returns per seed at steps 100, 200, 300; best is in the middle for seed 1
    sac = {1: [10, 50, 40], 2: [20, 30, 60], 3: [0, 10, 20]}
    for seed, returns in sac.items():
        rows = [(100 * (i + 1), 0, mode, r + (0 if mode == "deterministic" else -5))
                for i, r in enumerate(returns) for mode in ("deterministic", "stochastic")]
        write_run(tmp_path, "Hopper-v4", "sac_continuous-aaaa0000", seed, rows, "sac_continuous", sps=100.0 * seed)
    # an older, restarted-from-scratch folder of seed 1 must be ignored
    write_run(tmp_path, "Hopper-v4", "sac_continuous-aaaa0000", 1, [(100, 0, "deterministic", -999.0)],
              "sac_continuous", unix_time=10)
    # POSAC with two actors, two seeds, unfinished (no summary)
    for seed, base in ((1, 100.0), (2, 200.0)):
        rows = [(step, actor, "deterministic", base + actor + step / 100) for step in (100, 200) for actor in (0, 1)]
        write_run(tmp_path, "Hopper-v4", "posac_jko-bbbb1111", seed, rows, "posac_jko", total_timesteps=200)
    # another env
    write_run(tmp_path / "nested", "Walker2d-v4", "sb3_sac-cccc2222", 1, [(100, 0, "deterministic", 7.0)], "sb3_sac")
    # unfinished: evaluated up to step 100 of 300, so it has no final return
    write_run(tmp_path, "Walker2d-v4", "sac_continuous-aaaa0000", 1, [(100, 0, "deterministic", 3.0)], "sac_continuous")
    return tmp_path


def row(table, env_id, line):
    (match,) = [r for r in table.itertuples() if r.env_id == env_id and r.line == line]
    return match


def test_table_has_the_right_means(runs, tmp_path):
    out = tmp_path / "report"
    table = report([runs], out)
    sac = row(table, "Hopper-v4", "sac_continuous")
    assert sac.seeds == 3
    assert sac.final_mean == pytest.approx(np.mean([40, 60, 20]))
    assert sac.final_std == pytest.approx(np.std([40, 60, 20]))
    assert sac.best_mean == pytest.approx(np.mean([50, 60, 20]))
    assert sac.best_std == pytest.approx(np.std([50, 60, 20]))
    assert sac.steps == 300 and sac.sps == pytest.approx(200.0) and sac.train_sps == pytest.approx(100.0)
    actor1 = row(table, "Hopper-v4", "posac_jko actor 1")
    assert actor1.final_mean == pytest.approx(np.mean([103.0, 203.0])) and np.isnan(actor1.sps)
    assert row(table, "Walker2d-v4", "sb3_sac").final_mean == pytest.approx(7.0)
    assert len(table) == 5
    markdown = (out / "results.md").read_text()
    assert "| Hopper-v4 | sac_continuous | 3 | 40.0 +- 16.3 | 43.3 +- 17.0 | 300 | 200 | 100 | 2 |" in markdown
    assert "| Hopper-v4 | posac_jko actor 0 | 2 | 152.0 +- 50.0 | 152.0 +- 50.0 | 200 | - | - | - |" in markdown
    finals = (out / "final_returns.csv").read_text().splitlines()
    assert finals == [
        "algorithm,env_id,seed,total_timesteps,final_return",
        "posac,Hopper-v4,1,200,102.0000", "posac,Hopper-v4,2,200,202.0000",
        "posac_actor1,Hopper-v4,1,200,103.0000", "posac_actor1,Hopper-v4,2,200,203.0000",
        "sac,Hopper-v4,1,300,40.0000", "sac,Hopper-v4,2,300,60.0000", "sac,Hopper-v4,3,300,20.0000",
    ]  # the Walker2d runs stopped before their 300 steps
    png = out / "learning_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_stochastic_mode_and_configurations_get_their_own_lines(runs):
    write_run(runs, "Hopper-v4", "sac_continuous-dddd3333", 1, [(100, 0, "deterministic", 1.0)], "sac_continuous")
    df = load_runs([runs], mode="stochastic")
    assert set(df["mode"]) == {"stochastic"}
    labels = set(load_runs([runs])["label"])
    assert {"sac_continuous-aaaa0000", "sac_continuous-dddd3333", "posac_jko actor 0", "sb3_sac"} <= labels


def test_curve_interpolates_seeds_onto_common_steps(runs):
    df = load_runs([runs])
    group = df[(df["label"] == "sac_continuous") & (df["env_id"] == "Hopper-v4")]
    steps, mean, lowest, highest = curve(group)
    assert list(steps) == [100, 200, 300]
    assert list(mean) == pytest.approx([10, 30, 40])
    assert list(lowest) == [0, 10, 20] and list(highest) == [20, 50, 60]  # the band: lowest to highest seed
    # misaligned seeds: one evaluated at 150, the other only at 100 and 200
    import pandas as pd

    misaligned = pd.DataFrame({"seed": [1, 1, 2, 2, 2], "global_step": [100, 200, 100, 150, 300],
                               "mean_return": [0.0, 10.0, 0.0, 5.0, 99.0]})
    steps, mean, lowest, highest = curve(misaligned)
    assert list(steps) == [100, 150, 200]  # up to the last step both seeds reached
    assert mean[1] == pytest.approx(5.0) and lowest[1] == highest[1] == pytest.approx(5.0)


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_runs([tmp_path])


def test_a_resumed_run_is_marked_and_its_partial_timing_left_out(tmp_path):
    """A resumed run's summary times only its last process (sps * wall_time_s = the steps it ran):
    the table says "resumed" and averages SPS and wall time over the other seeds only."""
    for seed in (1, 2):
        folder = write_run(tmp_path, "Hopper-v4", "sb3_sac-eeee4444", seed, [(300, 0, "deterministic", 1.0)],
                           "sb3_sac", sps=10.0)
        if seed == 2:  # resumed at step 200: its last process ran 100 steps in 20 s
            (folder / "summary.json").write_text(json.dumps({"global_step": 300, "sps": 5.0, "train_sps": 5.0,
                                                             "wall_time_s": 20.0}))
    table = report([tmp_path], tmp_path / "report")
    line = row(table, "Hopper-v4", "sb3_sac")
    assert line.resumed == 1 and line.sps == pytest.approx(10.0) and line.wall_min == pytest.approx(1.0)
    assert "| Hopper-v4 | sb3_sac | 2 (1 resumed) |" in (tmp_path / "report" / "results.md").read_text()
