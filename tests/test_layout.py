"""The read-first layout every algorithm script shares (docs: README "How to read a script"):
Part 1 is the algorithm within a line budget, `train()` is short, every numbered equation of the
docstring can be found in the code by its number, and Appendix A (the run infrastructure) is
byte-identical in the three scripts."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools.sync_appendix import SCRIPTS, split

ROOT = Path(__file__).resolve().parent.parent
# the run's flags (RunArgs) are in Appendix A, so Part 1 holds the algorithm and the loop
PART_1_BUDGET = {"sac_continuous.py": 700, "posac_jko.py": 700, "gmm_density_matching.py": 800}


def part_1(script: str) -> str:
    return split((ROOT / script).read_text())[0]


def test_appendix_a_is_byte_identical_in_the_three_scripts():
    appendices = {script: split((ROOT / script).read_text())[1] for script in SCRIPTS}
    assert appendices["sac_continuous.py"].splitlines()[1].startswith("# APPENDIX A")
    for script, text in appendices.items():
        assert text == appendices["sac_continuous.py"], (
            f"Appendix A of {script} differs from sac_continuous.py's: edit it there and run "
            "`python tools/sync_appendix.py`")


@pytest.mark.parametrize("script", SCRIPTS)
def test_part_1_fits_its_budget_and_opens_with_a_short_docstring(script):
    text = part_1(script)
    assert len(text.splitlines()) <= PART_1_BUDGET[script]
    docstring = ast.get_docstring(ast.parse((ROOT / script).read_text()), clean=False)
    assert docstring is not None and len(docstring.splitlines()) <= 62


@pytest.mark.parametrize("script", SCRIPTS)
def test_train_is_at_most_100_lines_and_lives_in_part_1(script):
    tree = ast.parse((ROOT / script).read_text())
    train = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "train")
    assert train.end_lineno - train.lineno + 1 <= 100
    assert train.end_lineno <= len(part_1(script).splitlines())


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numbered_equation_is_found_in_the_code_by_its_number(script):
    tree = ast.parse((ROOT / script).read_text())
    docstring = ast.get_docstring(tree, clean=False)
    numbers = sorted({int(n) for n in re.findall(r"\((\d+)\)\s*$", docstring, flags=re.MULTILINE)})
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 5, numbers
    code = "\n".join(part_1(script).splitlines()[tree.body[0].end_lineno:])  # Part 1 after the docstring
    for n in numbers:
        assert re.search(rf"eqs?\. [^\n]*\b{n}\b|\({n}\)", code), f"equation ({n}) is not referenced in {script}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_agents_share_the_update_step_names(script):
    tree = ast.parse((ROOT / script).read_text())
    agents = [node for node in tree.body if isinstance(node, ast.ClassDef)
              and {"critic_step", "actor_step"} <= {f.name for f in node.body if isinstance(f, ast.FunctionDef)}]
    assert len(agents) == 1
    methods = {f.name for f in agents[0].body if isinstance(f, ast.FunctionDef)}
    assert {"policies", "critic_step", "target_update", "actor_step"} <= methods
    parts = next(node.value for node in agents[0].body if isinstance(node, ast.Assign)
                 and [target.id for target in node.targets] == ["CHECKPOINT_PARTS"])
    assert isinstance(parts, ast.Tuple) and len(parts.elts) >= 5
    compiled = next(node.value for node in agents[0].body if isinstance(node, ast.Assign)
                    and [target.id for target in node.targets] == ["COMPILED_STEPS"])
    named = [element.value for element in compiled.elts]  # --compile finds each by this name
    assert {"critic_step", "actor_step"} <= set(named) <= methods, named


RUN_FLAGS = ("--exp-name", "--output-dir", "--resume", "--evaluate", "--config", "--checkpoint-every",
             "--eval-every", "--eval-episodes", "--log-every", "--cuda", "--compile", "--track", "--capture-video")


def help_boxes(script: str) -> dict[str, str]:
    """`script --help`, 120 columns wide (one column of boxes, no flag wrapped), as {box title: its text}."""
    env = {**os.environ, "COLUMNS": "120"}
    text = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=120).stdout
    parts = re.split(r"╭─ (.+?) ─+╮", text)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_the_algorithm_then_the_run_flags_each_flag_before_its_other_name(script):
    boxes = help_boxes(script)
    assert list(boxes) == ["options", "run options"], list(boxes)
    def declares(box: str, flag: str) -> bool:  # a line of the box that starts with the flag
        return re.search(rf"^│ ({flag}|-\w+ \S+, {flag})\b", boxes[box], flags=re.MULTILINE) is not None

    for flag in RUN_FLAGS:  # the run's flags in their own group, and only there
        assert declares("run options", flag) and not declares("options", flag), flag
    for flag in ("--env-id", "--seed", "--total-timesteps", "--batch-size", "--gamma", "--learning-starts"):
        assert declares("options", flag), flag
    module = __import__(script[:-3])
    hints = module.flag_types()
    checked = 0
    for name, hint in hints.items():  # a flag with a second name: the flag itself is listed first
        for marker in getattr(hint, "__metadata__", ()):
            other_names = [alias for alias in (getattr(marker, "aliases", None) or ()) if alias.startswith("--")]
            if getattr(marker, "name", None):
                other_names.append("--" + marker.name)
            flag = "--" + name.replace("_", "-")
            for other in set(other_names) - {flag}:
                def where(name: str, line: str):
                    found = re.search(rf"{name}(?![\w-])", line)
                    return found.start() if found else None

                line = next(line for box in boxes.values() for line in box.splitlines() if where(other, line) is not None)
                assert where(flag, line) is not None and where(flag, line) < where(other, line), line
                checked += 1
    assert checked >= 1
    everything = "".join(boxes.values())
    field_names = [name for name in hints if "_" in name and name not in module.__doc__]  # lambda_q: a symbol of eq. (7)
    for internal in ["CONFIG_KEYS", "RESUME_MUST_MATCH", "Appendix", "(README"] + field_names:
        assert not re.search(rf"(?<![\w-]){re.escape(internal)}(?![\w-])", everything), f"{internal} in --help"
