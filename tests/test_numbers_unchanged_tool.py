"""tools/numbers_unchanged.py, the check that a layout change moved code without changing numbers:
what it compares (eval.csv whole, the losses rows of metrics.csv without their wall time, POSAC's
arrays) and that one changed digit anywhere is reported with its row."""

import csv

import numpy as np

from tools import numbers_unchanged


def write_run(folder, loss_value="0.5", evaluation_return="-1200.5", wall_time="1.0"):
    folder.mkdir()
    with open(folder / "eval.csv", "w", newline="") as f:
        csv.writer(f).writerows([["global_step", "policy", "mode", "mean_return", "std_return", "episodes"],
                                 ["300", "0", "deterministic", evaluation_return, "3.0", "2"]])
    with open(folder / "metrics.csv", "w", newline="") as f:
        csv.writer(f).writerows([["global_step", "wall_time", "metric", "value"],
                                 ["300", wall_time, "charts/SPS", "123.0"],
                                 ["300", wall_time, "losses/qf_loss", loss_value]])
    np.save(folder / "eval_actor_0.npy", np.array([[300.0, -1200.5, -1300.0]]))
    return str(folder)


def test_the_same_numbers_at_another_wall_time_and_speed_are_the_same(tmp_path):
    reference = numbers_unchanged.numbers(write_run(tmp_path / "a"))
    current = numbers_unchanged.numbers(write_run(tmp_path / "b", wall_time="99.0"))
    assert numbers_unchanged.first_difference(reference, current) is None
    assert set(reference) == {"eval.csv", "losses rows of metrics.csv", "eval_actor_0.npy"}


def test_one_changed_loss_or_return_is_reported_with_its_row(tmp_path):
    reference = numbers_unchanged.numbers(write_run(tmp_path / "a"))
    loss = numbers_unchanged.numbers(write_run(tmp_path / "b", loss_value="0.5000001"))
    assert "losses rows of metrics.csv row 0" in numbers_unchanged.first_difference(reference, loss)
    evaluation = numbers_unchanged.numbers(write_run(tmp_path / "c", evaluation_return="-1200.4"))
    assert "eval.csv row 1" in numbers_unchanged.first_difference(reference, evaluation)
    missing = dict(reference)
    del missing["eval_actor_0.npy"]
    assert "only in the reference" in numbers_unchanged.first_difference(reference, missing)
