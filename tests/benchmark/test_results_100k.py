"""The committed campaign results (benchmark/results/100k/, benchmark/results/humanoid_300k/) are
what benchmark/report.py makes of the committed run folders: regenerating them from the eval.csv,
args.json and summary.json files in runs/ gives the committed results.md and final_returns.csv
byte for byte, and each campaign's README shows results.md's table as it is."""

from pathlib import Path

import pytest

from benchmark.report import report

RESULTS = Path(__file__).resolve().parents[2] / "benchmark" / "results"
CAMPAIGNS = ["100k", "humanoid_300k"]


@pytest.mark.parametrize("campaign", CAMPAIGNS)
def test_report_reproduces_the_committed_table_and_final_returns(tmp_path, campaign):
    results = RESULTS / campaign
    report([results / "runs"], tmp_path)
    for name in ("results.md", "final_returns.csv"):
        assert (tmp_path / name).read_text() == (results / name).read_text(), (
            f"{name} differs: regenerate with python benchmark/report.py --paths benchmark/results/{campaign}/runs "
            f"--out-dir benchmark/results/{campaign}")
    assert (tmp_path / "learning_curves.png").stat().st_size > 10_000


@pytest.mark.parametrize("campaign", CAMPAIGNS)
def test_the_readme_shows_the_committed_table(campaign):
    """The campaign's README.md carries results.md's table rows as they are."""
    readme = (RESULTS / campaign / "README.md").read_text()
    rows = [line for line in (RESULTS / campaign / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert rows and all(row in readme for row in rows)
