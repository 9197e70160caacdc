"""Copy Appendix A (run infrastructure) from sac_continuous.py into the other two scripts.

Appendix A runs from the line that starts `# APPENDIX A` to the end of the file (or to a line
that starts `# APPENDIX B`) and must be byte-identical in the three algorithm scripts
(tests/test_layout.py checks it). Edit it in sac_continuous.py, then run

    python tools/sync_appendix.py          # rewrite gmm_density_matching.py and posac_jko.py
    python tools/sync_appendix.py --check  # only report which files differ (exit 1 if any)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "sac_continuous.py"
SCRIPTS = ("sac_continuous.py", "gmm_density_matching.py", "posac_jko.py")
# the line above `# APPENDIX A` (a rule of `=`) belongs to the appendix's heading
START = "# APPENDIX A"
END = "# APPENDIX B"


def split(text: str) -> tuple[str, str, str]:
    """(before, appendix A, after) of a script's text; appendix A starts at the rule line above
    `# APPENDIX A` and ends before `# APPENDIX B`'s rule line, or at the end of the file."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith(START)]
    if len(starts) != 1:
        raise ValueError(f"expected exactly one line starting with {START!r}, found {len(starts)}")
    begin = starts[0] - 1 if starts[0] > 0 and lines[starts[0] - 1].startswith("# ====") else starts[0]
    ends = [i for i, line in enumerate(lines) if line.startswith(END) and i > begin]
    end = len(lines)
    if ends:
        end = ends[0] - 1 if lines[ends[0] - 1].startswith("# ====") else ends[0]
    return "".join(lines[:begin]), "".join(lines[begin:end]), "".join(lines[end:])


def appendix(path: Path) -> str:
    return split(path.read_text())[1]


def main(argv: list[str]) -> int:
    check_only = "--check" in argv
    reference = appendix(ROOT / SOURCE)
    differing = []
    for name in SCRIPTS:
        path = ROOT / name
        before, current, after = split(path.read_text())
        if current != reference:
            differing.append(name)
            if not check_only:
                path.write_text(before + reference + after)
    if differing:
        print(("differ from " if check_only else "rewritten from ") + f"{SOURCE}: {', '.join(differing)}")
    return 1 if check_only and differing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
