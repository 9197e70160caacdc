"""The committed 100k-step results (benchmark/results/100k/) are what benchmark/report.py makes of
the committed run folders: regenerating them from the eval.csv, args.json and summary.json files in
runs/ gives the committed results.md and final_returns.csv byte for byte."""

from pathlib import Path

from benchmark.report import report

RESULTS = Path(__file__).resolve().parents[2] / "benchmark" / "results" / "100k"


def test_report_reproduces_the_committed_table_and_final_returns(tmp_path):
    report([RESULTS / "runs"], tmp_path)
    for name in ("results.md", "final_returns.csv"):
        assert (tmp_path / name).read_text() == (RESULTS / name).read_text(), (
            f"{name} differs: regenerate with python benchmark/report.py --paths benchmark/results/100k/runs "
            "--out-dir benchmark/results/100k")
    assert (tmp_path / "learning_curves.png").stat().st_size > 10_000


def test_the_readme_shows_the_committed_table():
    """benchmark/results/100k/README.md carries results.md's table rows as they are."""
    readme = (RESULTS / "README.md").read_text()
    rows = [line for line in (RESULTS / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert rows and all(row in readme for row in rows)
