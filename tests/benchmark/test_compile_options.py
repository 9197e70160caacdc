"""benchmark/diagnostics/compile_options.py: the compiled agent it times is the script's own
--compile path and really trains; the matrix-product share is a share; failures are table rows."""

from benchmark.diagnostics.compile_options import Args, matrix_product_share, settings_table, time_one_option

SMALL = dict(script="sac_continuous", env_id="Pendulum-v1", hidden_size=32, updates=3, rounds=2)


def test_default_setting_compiles_the_scripts_update_and_trains_like_eager():
    result = time_one_option(Args(**SMALL, one_option="default"))
    assert result["compiled_for_real"]  # not a silent fallback to eager
    assert len(result["eager_ms"]) == len(result["compiled_ms"]) == 2
    assert all(ms > 0 for ms in result["eager_ms"] + result["compiled_ms"])
    assert result["moved"] > 1e-4  # 11 Adam steps at lr 3e-4 move the weights
    assert result["from_eager"] < 1e-5  # the same way as eager's (same batches, same noise)


def test_matrix_product_share_is_part_of_the_update():
    share = matrix_product_share(Args(**SMALL, profile_updates=3))
    assert 0 < share["product_ms"] < share["ms_per_update"]
    assert 0 < share["share"] < 1


def test_table_shows_failures_fallbacks_and_paired_ratios():
    rows = settings_table([
        {"option": "default", "eager_ms": [10.0, 12.0, 11.0], "compiled_ms": [5.0, 12.0, 22.0], "compile_s": 3.0,
         "moved": 0.01, "from_eager": 1e-6, "compiled_for_real": True},
        {"option": "cpp-wrapper", "eager_ms": [1.0], "compiled_ms": [1.0], "compile_s": 1.0, "moved": 0.0,
         "from_eager": 0.0, "compiled_for_real": False},
        {"option": "max-autotune", "error": "RuntimeError: boom"}]).splitlines()
    assert rows[2] == "| default | 11.00 | 12.00 | 1.00x (0.50-2.00) | 3.0 | 0.01 | 1e-06 |"
    assert rows[3].startswith("| cpp-wrapper (fell back to eager) |")
    assert rows[4].startswith("| max-autotune | failed: RuntimeError: boom |")
