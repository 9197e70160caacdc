"""benchmark/sweep.py and benchmark/report.py on inputs an attacker may have written (issue 27):
malformed sweep files, env ids that would leave the output folder, values that would inject lines
into the sbatch script, and damaged run folders. Each is one `<tool>: error: ...` line on stderr and
exit code 2, with nothing run and nothing written; NaN / inf returns are flagged in the table."""

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.report import Args as ReportArgs
from benchmark.report import main as report_main
from benchmark.report import report
from benchmark.sweep import Args, Run, SweepError, main, parse_cli, plan, sbatch_script

ROOT = Path(__file__).resolve().parents[2]
FAKE = str(Path(__file__).with_name("fake_algo.py"))
SWEEP = str(ROOT / "benchmark" / "sweep.py")
REPORT = str(ROOT / "benchmark" / "report.py")


def one_error_line(err: str, tool: str) -> str:
    """The single stderr line of a refused input (no traceback, no second line)."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: "), err
    return lines[0]


# ---- A. malformed sweep files ---------------------------------------------------------------------

MALFORMED_SWEEP_FILES = {
    "syntax error": (b"common: {seeds: [1\n", "line 2, column 1: while parsing a flow sequence"),
    "environments is a list": (b"common: {seeds: [1]}\nenvironments: [E-v0]\n", "`environments`"),
    "seeds is a string": (b"common: {seeds: '12'}\nenvironments: {E-v0: }\n", "`common.seeds`"),
    "seeds is a mapping": (b"common: {seeds: {a: 1}}\nenvironments: {E-v0: }\n", "`common.seeds`"),
    "seeds are booleans": (b"common: {seeds: [true]}\nenvironments: {E-v0: }\n", "`common.seeds`"),
    "enabled_environments is a mapping": (b"common: {seeds: [1], enabled_environments: {E-v0: 1}}\n",
                                          "`common.enabled_environments`"),
    "scripts is a string": (b"scripts: fake.py\ncommon: {seeds: [1]}\nenvironments: {E-v0: }\n", "`scripts`"),
    "common is a list": (b"common: [1]\nenvironments: {E-v0: }\n", "`common`"),
    "non-string env id": (b"common: {seeds: [1]}\nenvironments: {3: }\n", "env id"),
    "mapping as an argument value": (b"common: {seeds: [1]}\nenvironments: {E-v0: {tau: {x: 1}}}\n", "tau"),
    "mixed raw argument lists": (b"common: {seeds: [1]}\nenvironments: {E-v0: [[--tau, 1], --gamma]}\n", "E-v0"),
    "key that is no flag name": (b"common: {seeds: [1], 'tau; rm': 1}\nenvironments: {E-v0: }\n", "flag name"),
    "python tag": (b"common: !!python/object/apply:os.system ['touch pwned']\n", "tag"),
    "custom tag": (b"common: !custom {seeds: [1]}\nenvironments: {E-v0: }\n", "tag"),
    "standard tag": (b"common: {seeds: [1]}\nenvironments: {E-v0: !!binary aGk=}\n", "tag"),
    "duplicate top-level key": (b"common: {seeds: [1]}\ncommon: {seeds: [2]}\nenvironments: {E-v0: }\n",
                                "duplicate key 'common'"),
    "duplicate env id": (b"common: {seeds: [1]}\nenvironments:\n  E-v0: {tau: 0.1}\n  E-v0: {tau: 0.2}\n",
                         "duplicate key 'E-v0'"),
    "not UTF-8": (b"common: {seeds: [1]}\nenvironments: {\"E\xff-v0\": }\n", "not UTF-8"),
    "NUL byte": (b"common: {seeds: [1]}\x00\n", "sweep.yaml"),
}


@pytest.mark.parametrize("content, expected", MALFORMED_SWEEP_FILES.values(), ids=MALFORMED_SWEEP_FILES.keys())
def test_malformed_sweep_file_is_one_error_line_and_runs_nothing(tmp_path, capsys, monkeypatch, content, expected):
    monkeypatch.chdir(tmp_path)  # a YAML tag that ran `touch pwned` would leave the file here
    (tmp_path / "sweep.yaml").write_bytes(content)
    out = tmp_path / "out"
    code = main(parse_cli(["--config", str(tmp_path / "sweep.yaml"), "--scripts", FAKE, "--output-dir", str(out),
                           "--threads", "1", "--", "--total-timesteps", "20"]))
    captured = capsys.readouterr()
    assert code == 2 and expected in one_error_line(captured.err, "sweep.py")
    assert captured.out == "" and not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]


def test_duplicate_keys_made_by_a_merge_are_not_duplicates(tmp_path, capsys):
    """`<<: *anchor` then an own key overrides the merged one: YAML's rule, not a duplicate."""
    (tmp_path / "sweep.yaml").write_text("base: &base {seeds: [1], tau: 0.1}\n"
                                         "common: {<<: *base, tau: 0.2}\nenvironments: {E-v0: }\n")
    assert main(Args(config=str(tmp_path / "sweep.yaml"), scripts=[FAKE], output_dir=str(tmp_path), dry_run=True)) == 0
    assert "--tau 0.2" in capsys.readouterr().out


def test_alias_bomb_is_reported_in_bounded_memory(tmp_path):
    """Nine nested levels of ten aliases stand for 10^9 strings; the old code formatted such a seed
    into run names. It must be refused with a short message, in a process limited to 1 GiB."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    for use in ("common: {seeds: *l8}\nenvironments: {E-v0: }",
                "common: {seeds: [1]}\nenvironments: {E-v0: *l8}",
                "common: {seeds: [1]}\nenvironments: {E-v0: {tau: *l8}}"):
        (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n" + use + "\n")
        gib = 1 << 30
        result = subprocess.run([sys.executable, SWEEP, "--config", str(tmp_path / "bomb.yaml"), "--scripts", FAKE,
                                 "--output-dir", str(tmp_path / "out"), "--dry-run"],
                                capture_output=True, text=True, timeout=120,
                                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (gib, gib)))
        assert result.returncode == 2 and result.stdout == "", result.stderr[-2000:]
        assert len(one_error_line(result.stderr, "sweep.py")) < 400


def test_sweep_cli_error_exit_code_and_no_traceback(tmp_path):
    """The real command line (not main()): exit code 2 and one line, for a sweep file and for a flag."""
    (tmp_path / "sweep.yaml").write_text("common: {seeds: [1\n")
    for flags in (["--config", str(tmp_path / "sweep.yaml"), "--scripts", FAKE],
                  ["--scripts", FAKE, "--env-ids", "../E-v0"]):
        result = subprocess.run([sys.executable, SWEEP, *flags, "--output-dir", str(tmp_path / "out")],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and result.stdout == "", result.stderr
        one_error_line(result.stderr, "sweep.py")
    assert not (tmp_path / "out").exists()


# ---- B. env ids -----------------------------------------------------------------------------------


def sweep_file(tmp_path: Path, env_id: str, enabled: bool = False) -> str:
    """A sweep file naming env_id (JSON strings are YAML double-quoted scalars, escapes included)."""
    name = json.dumps(env_id)
    common = f"{{seeds: [1], enabled_environments: [{name}]}}" if enabled else "{seeds: [1]}"
    (tmp_path / "sweep.yaml").write_text(f"common: {common}\nenvironments: {{{name}: }}\n")
    return str(tmp_path / "sweep.yaml")


def test_env_id_in_a_sweep_file_cannot_write_outside_the_output_dir(tmp_path, capsys):
    """The reproduction: `../../escaped/E-v0` in a sweep file wrote the run's log to
    {output_dir}/sweep_logs/../../escaped/ and its run folder to {output_dir}/../../escaped/."""
    out = tmp_path / "a" / "out"
    code = main(Args(config=sweep_file(tmp_path, "../../escaped/E-v0"), scripts=[FAKE], output_dir=str(out), threads=1,
                     common_args=["--total-timesteps", "20", "--eval-every", "10"]))
    assert code == 2 and "env id '../../escaped/E-v0'" in one_error_line(capsys.readouterr().err, "sweep.py")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]  # no a/out, no escaped/


UNSAFE_ENV_IDS = ["../E-v0", "ALE/../../E-v0", "/tmp/E-v0", "ALE//E-v0", "./E-v0", "ALE/", "..\\E-v0", "E-v0\n",
                  "E\tv0", "E\x00v0", "E-v0\x1b[2J", "E\u2028v0", ""]


@pytest.mark.parametrize("env_id", UNSAFE_ENV_IDS)
@pytest.mark.parametrize("source", ["sweep file", "enabled_environments", "command line"])
def test_unsafe_env_id_is_refused_from_any_source(tmp_path, capsys, env_id, source):
    out = tmp_path / "out"
    # a dry run: should the check ever be lost, nothing is written to /tmp/E-v0__... (as the old code did)
    if source == "command line":
        args = Args(scripts=[FAKE], env_ids=[env_id], output_dir=str(out), dry_run=True)
    else:
        args = Args(config=sweep_file(tmp_path, env_id, enabled=source == "enabled_environments"), scripts=[FAKE],
                    output_dir=str(out), dry_run=True)
    assert main(args) == 2
    assert "env id" in one_error_line(capsys.readouterr().err, "sweep.py") and not out.exists()


@pytest.mark.parametrize("enabled", [False, True])
def test_module_env_id_only_from_the_command_line(tmp_path, capsys, enabled):
    out = tmp_path / "out"
    assert main(Args(config=sweep_file(tmp_path, "some.module:Env-v0", enabled), scripts=[FAKE],
                     output_dir=str(out))) == 2
    line = one_error_line(capsys.readouterr().err, "sweep.py")
    assert "may only name registered ids" in line and "--env-ids module:Env-v0" in line and not out.exists()
    # the command line may name a module (gymnasium imports it), and a namespace is a fine path part
    assert main(Args(scripts=[FAKE], env_ids=["some.module:Env-v0", "ALE/Pong-v5"], output_dir=str(out),
                     dry_run=True)) == 0
    printed = capsys.readouterr().out
    assert "--env-id some.module:Env-v0" in printed and "--env-id ALE/Pong-v5" in printed


def test_plan_treats_a_malformed_summary_as_unfinished(tmp_path):
    """A forged or damaged summary.json (a text step, a list) means "not finished", not a crash."""
    with_budget = Run(FAKE, "E-v0", 1, ("--total-timesteps", "100"), str(tmp_path))
    own_budget = Run(FAKE, "E-v0", 1, (), str(tmp_path))  # finished means: reached the budget in its summary
    for index, (run, summary) in enumerate([
            (with_budget, '{"global_step": "100"}'), (with_budget, '{"global_step": [100]}'), (with_budget, '[100]'),
            (with_budget, '{"global_step": true}'), (with_budget, '{"global_step": '),
            (own_budget, '{"global_step": 100, "total_timesteps": "x"}')]):
        folder = tmp_path / f"{run.name}__{index}"
        folder.mkdir()
        (folder / "checkpoint.pt").write_text("{}")
        (folder / "summary.json").write_text(summary)
        assert plan(run) == ("resume", folder)


# ---- C. values in the sbatch script ---------------------------------------------------------------

SBATCH_INJECTIONS = {
    "time newline": ({"slurm_time": "1:00:00\necho injected"}, "--slurm-time"),
    "time NUL": ({"slurm_time": "1:00:00\x00"}, "--slurm-time"),
    "partition newline": ({"slurm_partition": "gpu\necho injected"}, "--slurm-partition"),
    "partition extra option": ({"slurm_partition": "gpu --chdir=/tmp"}, "--slurm-partition"),
    "mem carriage return": ({"slurm_mem": "8G\r\necho injected"}, "--slurm-mem"),
    "extra newline": ({"slurm_extra": ["account=abc\necho injected"]}, "--slurm-extra"),
    "extra second option": ({"slurm_extra": ["qos=long --wrap=id"]}, "--slurm-extra"),
    "extra quote": ({"slurm_extra": ["comment='x'"]}, "--slurm-extra"),
    "output dir newline": ({"output_dir": "out\necho injected"}, "--output-dir"),
    "output dir command substitution": ({"output_dir": "$(touch pwned)"}, "--output-dir"),
    "output dir backticks": ({"output_dir": "`touch pwned`"}, "--output-dir"),
    "output dir space": ({"output_dir": "my runs"}, "--output-dir"),
    "python newline": ({"python": "/usr/bin/python3\necho injected"}, "--python"),
}


@pytest.mark.parametrize("values, flag", SBATCH_INJECTIONS.values(), ids=SBATCH_INJECTIONS.keys())
def test_sbatch_injection_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch, values, flag):
    monkeypatch.chdir(tmp_path)
    values = {"output_dir": "out", **values}
    args = Args(scripts=[FAKE], env_ids=["E-v0"], slurm=True, dry_run=True, **values)
    with pytest.raises(SweepError, match=flag):
        sbatch_script(args, 2, tmp_path / "m.json", Path(values["output_dir"]).resolve())
    assert main(args) == 2
    captured = capsys.readouterr()
    assert flag in one_error_line(captured.err, "sweep.py") and captured.out == ""  # no script printed
    assert list(tmp_path.iterdir()) == []


def test_sbatch_refuses_a_working_directory_with_a_newline(tmp_path, monkeypatch):
    """The sbatch script `cd`s into the working directory, which is not a flag but goes in all the same."""
    workdir = tmp_path / "a\necho injected"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    with pytest.raises(SweepError, match="working directory"):
        sbatch_script(Args(), 2, tmp_path / "m.json", tmp_path)


def test_sbatch_accepts_ordinary_slurm_values(tmp_path):
    args = Args(slurm_partition="gpu,long", slurm_time="2-00:00:00", slurm_mem="16G",
                slurm_extra=["nodelist=n[01-04]", "mail-user=me@example.org", "gres=gpu:a100:1", "--exclusive"])
    lines = sbatch_script(args, 3, tmp_path / "m.json", tmp_path).splitlines()
    for line in ["#SBATCH --partition=gpu,long", "#SBATCH --time=2-00:00:00", "#SBATCH --mem=16G",
                 "#SBATCH --nodelist=n[01-04]", "#SBATCH --mail-user=me@example.org", "#SBATCH --gres=gpu:a100:1",
                 "#SBATCH --exclusive", f"#SBATCH --output={tmp_path}/%A_%a.out"]:
        assert line in lines


# ---- D. the README says what a sweep file may do --------------------------------------------------


def test_readme_says_a_sweep_file_is_a_program():
    readme = " ".join((ROOT / "benchmark" / "README.md").read_text().split())
    assert "`scripts:` entries are run as given" in readme and "run only sweep files you trust" in readme
    assert "registered ids" in readme and "--env-ids module:Env-v0" in readme


# ---- E. report.py on damaged run folders ----------------------------------------------------------

EVAL_HEADER = "global_step,policy,mode,mean_return,std_return,episodes\n"


def write_run(root: Path, eval_csv: bytes | str = EVAL_HEADER + "100,0,deterministic,5.0,1.0,10\n",
              args_json: bytes | str | None = None, summary_json: bytes | str | None = None, seed: int = 1) -> Path:
    folder = root / f"E-v0__algo-00000000__{seed}__1000"
    folder.mkdir(parents=True)
    files = {"eval.csv": eval_csv, "summary.json": summary_json,
             "args.json": json.dumps({"algorithm": "algo", "args": {"env_id": "E-v0", "exp_name": "algo-00000000",
                                                                    "seed": seed, "total_timesteps": 100}})
             if args_json is None else args_json}
    for name, content in files.items():
        if content is not None:
            (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


DAMAGED_RUN_FILES = {
    "empty eval.csv": ("eval.csv", b"", "empty file"),
    "eval.csv without mean_return": ("eval.csv", b"global_step,policy,mode\n100,0,deterministic\n",
                                     "no column mean_return"),
    "eval.csv not UTF-8": ("eval.csv", EVAL_HEADER.encode() + b"100,0,determ\xffistic,5.0,1.0,10\n", "not UTF-8"),
    "text in global_step": ("eval.csv", EVAL_HEADER + "many,0,deterministic,5.0,1.0,10\n",
                            "line 2: global_step is 'many'"),
    "text in mean_return": ("eval.csv", EVAL_HEADER + "100,0,deterministic,good,1.0,10\n", "mean_return is 'good'"),
    "unclosed quote": ("eval.csv", EVAL_HEADER + '100,0,"deterministic,5.0,1.0,10\n', "not a CSV table"),
    "args.json is a list": ("args.json", "[1, 2]", "expected a JSON object, got a list"),
    "summary.json is a list": ("summary.json", "[]", "expected a JSON object, got a list"),
    "args.json invalid JSON": ("args.json", '{"algorithm": ', "not valid JSON"),
    "summary.json invalid JSON": ("summary.json", "{sps: 1}", "not valid JSON"),
    "summary.json not UTF-8": ("summary.json", b'{"sps": "\xff"}', "not UTF-8"),
    "args.json args is a list": ("args.json", '{"args": [1]}', "args is [1], not an object"),
    "args.json seed is text": ("args.json", '{"args": {"seed": "one"}}', "seed is 'one', not an integer"),
    "summary.json sps is text": ("summary.json", '{"global_step": 100, "sps": "fast"}', "sps is 'fast', not a number"),
}


@pytest.mark.parametrize("name, content, expected", DAMAGED_RUN_FILES.values(), ids=DAMAGED_RUN_FILES.keys())
def test_damaged_run_folder_file_is_one_error_line_naming_it(tmp_path, capsys, name, content, expected):
    write_run(tmp_path / "runs", seed=2)  # a good run beside it does not hide the damaged one
    folder = write_run(tmp_path / "runs", **{name.replace(".", "_"): content})
    out = tmp_path / "report"
    assert report_main(ReportArgs(paths=[str(tmp_path / "runs")], out_dir=str(out))) == 2
    line = one_error_line(capsys.readouterr().err, "report.py")
    assert line.startswith(f"report.py: error: {folder / name}: ") and expected in line, line
    assert not out.exists()


def test_report_cli_error_exit_code_and_no_traceback(tmp_path):
    folder = write_run(tmp_path / "runs", summary_json="[]")
    result = subprocess.run([sys.executable, REPORT, "--paths", str(tmp_path / "runs"), "--out-dir",
                             str(tmp_path / "report")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert one_error_line(result.stderr, "report.py").startswith(f"report.py: error: {folder / 'summary.json'}: ")


def test_a_header_only_eval_csv_is_a_run_before_its_first_evaluation(tmp_path):
    write_run(tmp_path, eval_csv=EVAL_HEADER, seed=2)
    write_run(tmp_path)
    assert report([tmp_path], tmp_path / "report")["seeds"].tolist() == [1]


def test_non_finite_returns_are_flagged_in_the_table(tmp_path):
    """A diverged seed (inf or NaN return) makes the cell `non-finite` with a note, instead of
    "inf +- nan", or a NaN seed silently left out of the mean over seeds."""
    def evals(last: str) -> str:
        return EVAL_HEADER + f"50,0,deterministic,1.0,1.0,10\n100,0,deterministic,{last},1.0,10\n"

    for seed, last in ((1, "10.0"), (2, "inf"), (3, "12.0")):
        write_run(tmp_path / "runs" / "inf", evals(last), seed=seed)
    for seed, last in ((1, "10.0"), (2, "nan")):
        folder = write_run(tmp_path / "runs" / "nan", evals(last), seed=seed)
        record = json.loads((folder / "args.json").read_text())
        record["args"]["env_id"] = "F-v0"
        (folder / "args.json").write_text(json.dumps(record))
    report([tmp_path / "runs"], tmp_path / "report")
    markdown = (tmp_path / "report" / "results.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| E-v0 |") or line.startswith("| F-v0 |")]
    assert len(rows) == 2
    assert rows[0].startswith("| E-v0 | algo | 3 | non-finite | non-finite |")  # the inf seed is also the best
    assert rows[1].startswith("| F-v0 | algo | 2 | non-finite | non-finite |")  # not 10.0 +- 0.0 from seed 1 alone
    assert not any(word in row for row in rows for word in ("inf", "nan"))
    assert "non-finite: a seed's return is NaN or infinite" in markdown
