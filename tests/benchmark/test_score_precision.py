"""benchmark/diagnostics/score_precision.py: float32 against float32 differs by nothing, bfloat16 by a little,
and the figures mean what their names say."""

import pytest
import torch

import gmm_density_matching as gmm
from benchmark.diagnostics.score_precision import compare_scoring, report


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> str:
    args = gmm.args_from_flat(dict(env_id="Pendulum-v1", total_timesteps=400, learning_starts=100, random_steps=100,
                                   batch_size=32, hidden_size=64, num_action_samples=16, eval_every=0, eval_episodes=1,
                                   log_every=100, checkpoint_every=1000,
                                   output_dir=str(tmp_path_factory.mktemp("runs"))))
    return gmm.train(args)["run_dir"]


def test_the_same_precision_changes_nothing(trained_run):
    figures = compare_scoring(trained_run, num_states=50, low_dtype=torch.float32)
    assert figures["error_max"] == 0.0 and figures["weights_tv_max"] == 0.0
    assert figures["states"] == 50 and figures["actions_per_state"] == 16


def test_bfloat16_moves_the_weights_a_little(trained_run):
    figures = compare_scoring(trained_run, num_states=500)
    assert figures["states"] == 400  # the buffer holds 400 transitions: all of them
    assert 0.0 < figures["error_mean"] <= figures["error_max"] < 0.05 * figures["q_mean_abs"]
    assert 0.0 < figures["weights_tv_mean"] <= figures["weights_tv_max"] <= 1.0
    assert figures["q_spread_median"] > 0 and figures["temperature"] > 0
    table = report(figures)
    assert table.count("\n") == 1 + len(figures)


def test_a_missing_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint.pt"):
        compare_scoring(str(tmp_path))


def test_a_foreign_file_is_one_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="cannot read"):
        compare_scoring(str(tmp_path))
