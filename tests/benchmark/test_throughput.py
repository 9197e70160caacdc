"""benchmark/throughput.py: every contender gets the same settings, and the table's medians and
ratios are right (on synthetic results; the real measurement is the lead's long run)."""

import os

import benchmark.throughput as throughput
from benchmark.throughput import LABELS, Args, command, measure, table


def flag(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_every_contender_gets_the_same_settings():
    args = Args(env_id="Hopper-v4", total_timesteps=3000, learning_starts=700)
    for label in LABELS:
        cmd = command(args, label, "/tmp/out", 0)
        assert flag(cmd, "--env-id") == "Hopper-v4" and flag(cmd, "--total-timesteps") == "3000"
        assert flag(cmd, "--batch-size") == "256" and flag(cmd, "--hidden-size") == "256"
        assert flag(cmd, "--learning-starts") == "700" and flag(cmd, "--eval-every") == "0"
        assert "--no-cuda" in cmd and "--cuda" not in cmd
        assert ("--compile" in cmd) == ("--compile" in label) and ("--cudagraphs" in cmd) == ("--cudagraphs" in label)
        if label != "sb3_sac":  # SB3 ties random steps to learning_starts itself
            assert flag(cmd, "--random-steps") == "700" and flag(cmd, "--num-layers") == "2"
    assert flag(command(args, "posac_jko (2 actors)", "/tmp/out", 0), "--num-actors") == "2"
    assert {"sac_continuous --compile", "sac_continuous --compile --cudagraphs", "gmm_density_matching --compile",
            "posac_jko (2 actors) --compile --cudagraphs"} <= set(LABELS)
    on_gpu = command(Args(cuda=True), "sac_continuous --compile --cudagraphs", "/tmp/out", 0)
    assert "--cuda" in on_gpu and "--no-cuda" not in on_gpu


def test_steady_sps_counts_the_steps_after_steady_from_over_their_wall_time(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("global_step,wall_time,metric,value\n"
                       "500,100.0,losses/qf_loss,1\n1000,160.0,losses/qf_loss,1\n"  # 60 s: compiling
                       "1500,165.0,losses/qf_loss,1\n1500,165.5,charts/episodic_return,3\n2000,170.0,losses/qf_loss,1\n")
    assert throughput.steady_sps(metrics, 1000) == (2000 - 1000) / (170.0 - 160.0)
    assert throughput.steady_sps(metrics, 1200) == (2000 - 1500) / (170.0 - 165.0)  # a step's first row


def test_table_ranks_by_steady_sps_when_asked():
    results = {"sac_continuous": [{"train_sps": 50.0, "sps": 40.0, "steady_sps": 100.0}],
               "sac_continuous --compile": [{"train_sps": 40.0, "sps": 30.0, "steady_sps": 250.0}]}
    lines = table(results, key="steady_sps").splitlines()
    assert "steady SPS median" in lines[0]
    assert lines[3] == "| sac_continuous --compile | 250 (250-250) | 30 | 2.50 | 2.50 (2.50-2.50) | 1 |"


def test_table_medians_and_ratios():
    results = {
        "sac_continuous": [{"train_sps": 100.0, "sps": 90.0}, {"train_sps": 120.0, "sps": 95.0}, {"train_sps": 80.0, "sps": 70.0}],
        "sb3_sac": [{"train_sps": 50.0, "sps": 45.0}, {"train_sps": 60.0, "sps": 50.0}, {"train_sps": 55.0, "sps": 40.0}],
        "gmm_density_matching": [{"error": "exit 2: boom"}],
    }
    lines = table(results).splitlines()
    # paired: 50/100, 60/120, 55/80 -> 0.50, 0.50, 0.69
    assert lines[2] == "| sac_continuous | 100 (80-120) | 90 | 1.00 | 1.00 (1.00-1.00) | 3 |"
    assert lines[3] == "| sb3_sac | 55 (50-60) | 45 | 0.55 | 0.50 (0.50-0.69) | 3 |"
    assert lines[4] == "| gmm_density_matching | failed: exit 2: boom | - | - | - | 1 |"


def test_table_keeps_the_finished_runs_of_a_contender_with_a_failed_run():
    results = {
        "sac_continuous": [{"train_sps": 100.0, "sps": 90.0}, {"error": "exit 1: disk full"}, {"train_sps": 80.0, "sps": 70.0}],
        "sb3_sac": [{"train_sps": 50.0, "sps": 45.0}, {"train_sps": 60.0, "sps": 50.0}, {"error": "exit 1: boom"}],
    }
    lines = table(results).splitlines()
    # medians over finished runs: sac 90, sb3 55; paired only in round 1 (both finished): 0.50
    assert lines[2] == "| sac_continuous | 90 (80-100) | 80 | 1.00 | 1.00 (1.00-1.00) | 2 of 3 (1 failed: exit 1: disk full) |"
    assert lines[3] == "| sb3_sac | 55 (50-60) | 48 | 0.61 | 0.50 (0.50-0.50) | 2 of 3 (1 failed: exit 1: boom) |"


def test_rounds_alternate_and_reverse_their_order(monkeypatch, tmp_path):
    order = []
    label_of_script = {"sac_continuous.py": "sac_continuous", "sb3_sac.py": "sb3_sac"}

    def fake_run_once(cmd, threads, output_dir, env_id, steady_from=0):
        order.append(label_of_script[os.path.basename(cmd[1])])
        return {"train_sps": 1.0, "sps": 1.0}

    monkeypatch.setattr(throughput, "run_once", fake_run_once)
    measure(Args(repeats=3, contenders=["sac_continuous", "sb3_sac"], output_dir=str(tmp_path)))
    assert order == ["sac_continuous", "sb3_sac", "sb3_sac", "sac_continuous", "sac_continuous", "sb3_sac"]
