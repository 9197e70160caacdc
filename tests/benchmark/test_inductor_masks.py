"""benchmark/diagnostics/inductor_masks.py: every compiled case computes what eager does, the
profile of a compiled update adds up, and its kernels are labelled from the generated code."""

from benchmark.diagnostics.inductor_masks import CASES, Args, profile_compiled_update, profile_report, table, time_cases

SMALL = dict(threads=1, calls=2, rounds=1, critics=2, batch_size=8, hidden_size=16)


def test_every_case_is_timed_eager_and_compiled():
    results = time_cases(Args(**SMALL))  # raises if a compiled case differs from eager
    assert [result["case"] for result in results] == list(CASES)
    assert all(result["eager_us"] > 0 and result["compiled_us"] > 0 for result in results)
    rows = table(results).splitlines()
    assert len(rows) == 2 + len(CASES)
    assert rows[3].startswith("| x <= 0 as bool | writes a bool mask")


def test_profile_of_a_compiled_update_adds_up_and_labels_its_kernels():
    args = Args(**{**SMALL, "hidden_size": 32}, profile_updates=3, env_id="Pendulum-v1", top_kernels=50)
    profiled = profile_compiled_update(args)
    assert profiled["products_ms"] > 0 and profiled["kernels_ms"] > 0 and profiled["eager_ms"] > 0
    assert profiled["products_ms"] + profiled["kernels_ms"] + profiled["guards_ms"] < profiled["total_ms"]
    assert 0 <= profiled["mask_kernels_ms"] <= profiled["kernels_ms"]
    # the kernels were found in the generated code: each labelled True or False (None = ambiguous)
    labels = [takes_bool for _, _, takes_bool in profiled["top_kernels"]]
    assert labels and all(label in (True, False) for label in labels)
    assert "generated kernel | us per update | reads or writes a bool mask" in profile_report(profiled, args)
