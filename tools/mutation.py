"""Mutation testing of the math and update functions of the three scripts, with mutmut 3.x.

    python tools/mutation.py                                   # every script's math functions
    python tools/mutation.py --scripts posac_jko.py --functions jko_actor_loss gaussian_w2_squared
    python tools/mutation.py --functions 'POSAC.*' td_target   # fnmatch patterns, name or Class.method
    python tools/mutation.py --list                            # print the selection, run nothing
    python tools/mutation.py --report-only                     # rewrite the report from mutants/
    python tools/mutation.py --show 'posac_jko.x_td_target__mutmut_3'   # diff of one mutant

mutmut copies the scripts and tests/ into mutants/, rewrites each mutated function into a trampoline
plus one copy per mutant (`posac_jko.x_td_target__mutmut_3`, methods
`posac_jko.xǁPOSACǁcritic_step__mutmut_1`), runs TEST_FILES once to learn which tests reach which
function, then, for each selected mutant, forks and reruns only those tests. A mutant that no test
fails on "survived"; one whose function no test reaches is "no tests" (not run).

No configuration file is needed: mutmut reads `[tool.mutmut]` from pyproject.toml (or `[mutmut]` from
setup.cfg), and this script hands it MUTMUT_CONFIG instead by replacing mutmut's config reader in this
process, then calls mutmut's `run` in-process. mutmut generates mutants only inside the math
functions of all three scripts (every other line counts as `# pragma: no mutate`; cached in
mutants/ until a script changes), and --scripts / --functions pick which of them are run and
reported, passed to `mutmut run` as mutant-name globs (`posac_jko.x_td_target__mutmut_*`).

mutmut skips every decorated function (except @staticmethod / @classmethod). Here that would drop
the `@torch.no_grad()` functions update_target and kl_temperature, so by default this script lets
mutmut mutate functions whose only decorators are in ALLOWED_DECORATORS (`--no-decorated` to keep
mutmut's behaviour). The decorator stays on the trampoline, the original copy and every mutant.

Needs `pip install 'mutmut>=3.8,<4'` (it uses mutmut internals: tested with 3.8.1). Add `mutants/`
to .gitignore. Linux/macOS only (mutmut forks).
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import shutil
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The fast math tests: the only tests mutmut runs (against every mutant whose function they reach).
TEST_FILES = [
    "tests/test_sac_math.py", "tests/test_sac_updates.py",
    "tests/test_posac_math.py", "tests/test_posac_updates.py",
    "tests/test_gmm_math.py", "tests/test_gmm_updates.py",
]

# Every script is always copied into mutants/ (the tests import them all) and always mutated (in its
# math functions only); --scripts / --functions only decide which mutants are run and reported.
SCRIPTS = ["sac_continuous.py", "posac_jko.py", "gmm_density_matching.py"]

# The math and update functions: every function (and method of a class) between the line starting
# with EQUATIONS_START and the line starting with EQUATIONS_END, plus these "Class.method" names.
EQUATIONS_START = "# The equations"
EQUATIONS_END = "class ReplayBuffer"
EXTRA_FUNCTIONS = {
    "sac_continuous.py": [
        "Actor.distribution_params", "Actor.squash", "Actor.log_prob_from_noise", "Actor.sample",
        "SAC.critic_step", "SAC.target_update", "SAC.actor_step", "SAC.temperature_step",
    ],
    "posac_jko.py": [
        "Actor.split_params", "Actor.squash", "Actor.log_prob_from_noise", "Actor.squash_and_log_prob",
        "Actor.sample",
        "POSAC.critic_step", "POSAC.target_update", "POSAC.sample_all", "POSAC.actor_step",
        "POSAC.temperature_step",
    ],
    "gmm_density_matching.py": [
        "GMMActor.distribution_params", "GMMActor.squash", "GMMActor.log_jacobian", "GMMActor.sample_u",
        "GMMActor.sample",
        "GMMAgent.critic_step", "GMMAgent.target_update", "GMMAgent.propose", "GMMAgent.actor_step",
    ],
}

# Decorators that do not stop a function from being mutated (see the module docstring).
ALLOWED_DECORATORS = {"torch.no_grad()", "torch.no_grad", "staticmethod", "classmethod"}

# Paths mutmut copies into mutants/ besides the scripts, tests/, pyproject.toml and setup.cfg
# (copied always): add data files here if new tests read them.
ALSO_COPY: list[str] = ["run_extras.py"]  # the scripts' optional module (--config, the video preflight)

# What `[tool.mutmut]` would say. Keys as in mutmut 3.8's configuration.py.
MUTMUT_CONFIG = {
    "source_paths": SCRIPTS,
    "pytest_add_cli_args_test_selection": TEST_FILES,
    "pytest_add_cli_args": ["-p", "no:cacheprovider", "-W", "ignore"],
    "also_copy": ALSO_COPY,
    # Untracked mutants/ would otherwise show up as "changed files" on every later run
    "use_git_change_detection": False,
    # torch's thread pools and fork: fork from the process that ran the stats (fast, fine with
    # OMP_NUM_THREADS=1); "forkserver" is the fallback if workers ever hang
    "process_isolation": "fork",
    # a mutant is a timeout after (its tests' clean duration + timeout_constant) * timeout_multiplier
    "timeout_multiplier": 15.0,
    "timeout_constant": 5.0,
}

# Survivors that cannot change what a script computes, each with the reason. Matched on the function
# ("name" or "Class.method", fnmatch patterns, any script) and a fragment of the mutant's "+" lines, so a
# reason stays with its mutant when mutmut renumbers them. A survivor matched by none is reported as
# UNEXPLAINED: either a test is missing or a reason is.
DEVICE = ("a device argument: on the CPU, where the tests run, every choice names the same device; on a GPU the "
          "mutant mixes devices and the next operation raises, a loud error and not a different number")
DTYPE = "dtype=None is torch's default float32, the dtype of these tensors in every run of the scripts"
DIM = ("dim +1 is dim -1 on the 2-D tensors ([batch, features] or [batch, samples]) this function is given; "
       "the scripts never call it with another rank")
KEEPDIM = "keepdim only turns [1, B] into [B]: expand_as(next_q) broadcasts both to the same [N, B]"
ZERO_GRAD = ("zero_grad filling zeros instead of None: the backward pass that follows writes the same gradient "
             "into every parameter of that optimizer either way")
GAUSS_CONSTANT = ("changes only the constant term of log q(u) of the gaussian proposal: every sample of a state gets "
                  "the same offset, which the softmax of eq. (6) removes (the mixed proposal computes its own "
                  "Gaussian term in propose, tested against torch.distributions)")
UNIFORM_CONSTANT = "a constant factor in q(u) of the uniform proposal: the same offset for every sample, removed by the softmax"
SEARCH = ("a finer, wider or shifted search grid of the bracketing search: T stays within the stated 0.04% of the exact "
          "root (tests/test_gmm_math.py checks that at several offsets and scales)")
TIES = ("differs only when a float32 value equals the threshold exactly: about 2^-24 per comparison, rare but not "
        "impossible, so not strictly equivalent (an accepted survivor: no test of bounded size meets a tie)")
GRAD_U = ("the gradient with respect to the samples u: the scripts never differentiate through u (the proposals are "
          "drawn without gradient), so autograd discards it; the gradients used (mean, 1/sigma) are gradchecked")
EQUIVALENT: list[tuple[str, str, str]] = [
    ("*", "zero_grad(set_to_none=None)", ZERO_GRAD),
    ("*", "zero_grad(set_to_none=False)", ZERO_GRAD),
    ("*", "device=None", DEVICE),
    ("*", "dtype=None", DTYPE),
    # sac_continuous.py
    ("backup_target_q", "min(dim=0, ).values", KEEPDIM),
    ("backup_target_q", "mean(dim=0, )", KEEPDIM),
    ("backup_target_q", "keepdim=False", KEEPDIM),
    ("backup_target_q", "subset = torch.randperm(next_q.shape[0], generator=generator, )", DEVICE),
    ("backup_target_q", "if (generator is not None) and False else", DEVICE),
    ("backup_target_q", "if (generator is not None) or True else", DEVICE),
    ("backup_target_q", "if generator is None else next_q.device", DEVICE),
    ("backup_target_q", "subset.to(None)", DEVICE),
    ("Actor.distribution_params", "out.chunk(2, dim=+1)", DIM),
    ("Actor.log_prob_from_noise", "log_density.sum(+1)", DIM),
    ("Actor.sample", "noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)", DEVICE),
    ("Actor.sample", "tanh_u = torch.tanh(u) if (self.use_tanh) or True else None",
     "computes tanh(u) also without tanh squashing, where log_prob and the action ignore it"),
    ("SAC.target_update", "self.critic_updates -= 1",
     "the counter only matters modulo --target-update-period, and -k is 0 modulo p exactly when k is"),
    ("SAC.actor_step", "if args.num_actor_samples >= 1:", "with one action per state repeat_interleave(1) returns the batch"),
    # posac_jko.py
    ("jko_actor_loss", ".mean(dim=+1)", "the inputs are [N-1, B]: dim +1 is dim -1 (the scripts never pass another rank)"),
    ("POSAC.critic_step", "next_q.min(dim=0, ).values", KEEPDIM),
    ("POSAC.critic_step", "keepdim=False", KEEPDIM),
    ("POSAC.sample_all", "noise = torch.randn(mean.shape, dtype=mean.dtype)", DEVICE),
    ("POSAC.actor_step", "obs if (n == 1) and False else obs.repeat(n, 1)", "with one actor obs.repeat(1, 1) is obs"),
    ("POSAC.actor_step", "if n >= 1:", "with one actor the JKO terms run on empty [0, B] slices: the summed loss, every "
                                       "gradient and every logged scalar are unchanged"),
    # gmm_density_matching.py
    ("SquaredMahalanobis.forward", "u.unsqueeze(+2)", "u is always [B, M, A]: unsqueeze(2) is unsqueeze(-2)"),
    ("SquaredMahalanobis.backward", "grad_u = ", GRAD_U),
    ("gaussian_proposal", "u = torch.randn(batch_size, num_samples, action_dim, generator=generator, )", DEVICE),
    ("gaussian_proposal", "-0.5 * u.pow(2).sum(-1) + 0.5 * action_dim * math.log(2 * math.pi)", GAUSS_CONSTANT),
    ("gaussian_proposal", "-0.5 * u.pow(2).sum(-1) - 0.5 * action_dim / math.log(2 * math.pi)", GAUSS_CONSTANT),
    ("gaussian_proposal", "-0.5 * u.pow(2).sum(-1) - 0.5 / action_dim * math.log(2 * math.pi)", GAUSS_CONSTANT),
    ("gaussian_proposal", "-0.5 * u.pow(2).sum(-1) - 1.5 * action_dim * math.log(2 * math.pi)", GAUSS_CONSTANT),
    ("gaussian_proposal", "-0.5 * u.pow(2).sum(-1) - 0.5 * action_dim * math.log(2 / math.pi)", GAUSS_CONSTANT),
    ("gaussian_proposal", "-0.5 * u.pow(2).sum(-1) - 0.5 * action_dim * math.log(3 * math.pi)", GAUSS_CONSTANT),
    ("uniform_proposal", "action_dim, generator=generator, ) * 2 - 1)", DEVICE),
    ("uniform_proposal", "torch.log((1 - v.pow(2)) * 2)", UNIFORM_CONSTANT),
    ("uniform_proposal", "torch.log((1 - v.pow(2)) / 3)", UNIFORM_CONSTANT),
    ("boltzmann_weights", "dim=+1", DIM),
    ("kl_temperature", "rounds: int = 6", SEARCH),
    ("kl_temperature", "grid: int = 8", SEARCH),
    ("kl_temperature", "spread.log() - 13.0", SEARCH),
    ("kl_temperature", "spread.log() + 13.0", SEARCH),
    ("kl_temperature", "fractions = torch.arange(grid + 1,", SEARCH),
    ("kl_temperature", "fractions = torch.arange(1, grid + 2,", SEARCH),
    ("kl_temperature", "fractions = torch.arange(1, grid + 1, dtype=q_values.dtype)", DEVICE),
    ("kl_temperature", "fractions = torch.arange(1, grid + 1, device=q_values.device, )",
     "without dtype the integer arange divided by an int is float32, the dtype of Q in every run of the script"),
    ("kl_temperature", "dim=+1", DIM),
    ("kl_temperature", "q_values.shape[+1]", DIM),
    ("kl_temperature", ".mean(+1)", DIM),
    ("kl_temperature", "count = (kl >= kl_bound)", TIES),
    ("density_matching_loss", ".sum(+1)", DIM),
    ("entropy_regulariser", ".sum(+1)", DIM),
    ("effective_sample_size", ".sum(+1)", DIM),
    ("GMMActor.distribution_params", "dim=+1", DIM),
    ("GMMActor.distribution_params", "unflatten(+1", DIM),
    ("GMMActor.distribution_params", "F.log_softmax(logits, dim=None)", DIM + " (log_softmax without dim takes dim 1 of a 2-D input)"),
    ("GMMActor.distribution_params", "F.log_softmax(logits, )", DIM + " (log_softmax without dim takes dim 1 of a 2-D input)"),
    ("GMMActor.sample_u", "cumsum(dim=+1)", DIM),
    ("GMMActor.sample_u", "uniform = torch.rand(log_w.shape[0], num_samples, 1, generator=generator, dtype=log_w.dtype)", DEVICE),
    ("GMMActor.sample_u", "noise = torch.randn(index.shape, generator=generator, dtype=mean.dtype)", DEVICE),
    ("GMMActor.sample_u", "noise = torch.randn(index.shape, generator=generator, device=mean.device, )", DTYPE),
    ("GMMActor.sample_u", "k = (uniform >= cumulative.unsqueeze(1))", TIES),
    ("GMMActor.sample_u", " " * 25 + ")", DTYPE + " (torch.rand without its dtype= line)"),
    ("GMMActor.sample_u", "mean.gather(1, index) - log_std.gather(1, index).exp() * noise",
     "equivalent in distribution only: mu - sigma * eps has the law of mu + sigma * eps (eps is symmetric) and sample and "
     "act still draw alike (both use sample_u), but a seed draws the mirror-image numbers (an accepted survivor)"),
    ("GMMAgent.critic_step", "if args.alpha >= 0:", "with alpha = 0, alpha * log pi is 0 either way, and sample() draws "
                                                     "the same next action as act()"),
    ("GMMAgent.critic_step", 'self.actor.act(batch["next_obs"]), 1.0', "this branch runs only with alpha = 0, which multiplies it"),
    ("GMMAgent.propose", "gaussian_proposal(b, m, a, None, generator)", DEVICE),
    ("GMMAgent.propose", "uniform_proposal(b, m, a, None, generator)", DEVICE),
    ("GMMAgent.propose", "gaussian_proposal(b, m - m_policy, a, None, generator)", DEVICE),
    ("GMMAgent.propose", "if m_policy <= m:", "with m_policy = M it concatenates an empty [B, 0, A] block"),
    ("GMMAgent.propose", 'log_q = ""', "log_q is returned only with --importance-correction, which assigns it first"),
    ("GMMAgent.actor_step", "torch.tensor(args.temperature, ))", DEVICE),
]

DEFAULT_REPORT = "benchmark/results/mutation.md"
STAMP = "mutants/mutation-tool.json"
STATUS_ORDER = ["killed", "survived", "timeout", "suspicious", "no tests", "segfault", "not checked", "other"]


# ---- selection -----------------------------------------------------------------------------
def defined_functions(script: str) -> list[tuple[ast.FunctionDef, str | None, int]]:
    """(function node, its class or None, the line of the top-level statement that holds it) of every
    module-level function and method of a top-level class, in the order of the file."""
    found = []
    for node in ast.parse((REPO / script).read_text()).body:
        if isinstance(node, ast.FunctionDef):
            found.append((node, None, node.lineno))
        elif isinstance(node, ast.ClassDef):
            found += [(m, node.name, node.lineno) for m in node.body if isinstance(m, ast.FunctionDef)]
    return found


def qualified(fn: ast.FunctionDef, cls: str | None) -> str:
    return f"{cls}.{fn.name}" if cls else fn.name


def functions_of(script: str) -> list[tuple[str, str | None, str]]:
    """(name, class or None, "Class.method" or "name") of the script's math functions: every function
    and method defined in its equations section, then EXTRA_FUNCTIONS."""
    lines = (REPO / script).read_text().splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.startswith(EQUATIONS_START)), None)
    end = next((i + 1 for i, line in enumerate(lines) if start and i + 1 > start and line.startswith(EQUATIONS_END)), None)
    if start is None or end is None:
        raise SystemExit(f"{script}: no '{EQUATIONS_START}' ... '{EQUATIONS_END}' section")
    found: dict[str, tuple[str, str | None, str]] = {}
    everything: dict[str, tuple[str, str | None, str]] = {}
    for fn, cls, statement_line in defined_functions(script):
        qual = qualified(fn, cls)
        everything[qual] = (fn.name, cls, qual)
        if start < statement_line < end:
            found[qual] = everything[qual]
    for qual in EXTRA_FUNCTIONS.get(script, []):
        if qual not in everything:
            raise SystemExit(f"{script}: EXTRA_FUNCTIONS names {qual}, which the script does not define")
        found[qual] = everything[qual]
    return list(found.values())


def mangled(module: str, name: str, cls: str | None) -> str:
    """mutmut 3's key of a function: module.x_name, or module.xǁClassǁname for a method."""
    return f"{module}.xǁ{cls}ǁ{name}" if cls else f"{module}.x_{name}"


def select(scripts: list[str], patterns: list[str] | None) -> dict[str, dict[str, str]]:
    """script -> {mangled key: "Class.method"} of the selected functions."""
    selection: dict[str, dict[str, str]] = {}
    used = set()
    for script in scripts:
        module = Path(script).stem
        chosen = {}
        for name, cls, qual in functions_of(script):
            hits = [p for p in patterns or ["*"] if fnmatch.fnmatchcase(qual, p) or fnmatch.fnmatchcase(name, p)]
            if hits:
                used.update(hits)
                chosen[mangled(module, name, cls)] = qual
        if chosen:
            selection[script] = chosen
    unused = [p for p in patterns or [] if p not in used]
    if unused:
        raise SystemExit(f"--functions {' '.join(unused)}: no math function of {', '.join(scripts)} matches")
    return selection


# ---- mutmut, configured from here --------------------------------------------------------
def configure_mutmut(allow_decorated: bool, debug: bool) -> None:
    import mutmut.configuration as configuration

    values = dict(MUTMUT_CONFIG, debug=debug)
    configuration._config_reader = lambda: (lambda key, default: values.get(key, default))
    configuration.reset_config()
    only_mutate_math_functions()
    if allow_decorated:
        allow_decorators()


def math_function_lines(script: str) -> set[int]:
    """The lines (decorators to last line) of every math function of the script."""
    wanted = {qual for _, _, qual in functions_of(script)}
    lines = set()
    for fn, cls, _ in defined_functions(script):
        if qualified(fn, cls) in wanted:
            first = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
            lines.update(range(first, fn.end_lineno + 1))
    return lines


def only_mutate_math_functions() -> None:
    """Generate mutants only in the math functions of SCRIPTS (all of them, whatever --scripts and
    --functions select, so that mutants/ stays valid across selections): every other line is
    treated as if it carried `# pragma: no mutate`. Without this mutmut mutates all ~1600 lines of
    each script (~9000 mutants, 90 s to generate, 5 MB modules to import) and puts a trampoline on
    every function."""
    import mutmut.mutation.file_mutation as file_mutation

    original = file_mutation.get_ignored_lines
    if getattr(original, "_math_only", False):
        return

    def get_ignored_lines(filename, source, metadata_wrapper, *args, **kwargs):
        ignored = original(filename, source, metadata_wrapper, *args, **kwargs)
        script = Path(filename).as_posix()
        if script in SCRIPTS:
            keep = math_function_lines(script)
            ignored.no_mutate_lines |= set(range(1, source.count("\n") + 2)) - keep
        return ignored

    get_ignored_lines._math_only = True
    file_mutation.get_ignored_lines = get_ignored_lines


def allow_decorators() -> None:
    """Let mutmut mutate functions whose decorators are all in ALLOWED_DECORATORS: it then treats them
    like undecorated ones (it keeps the decorators on the trampoline and on every copy)."""
    import libcst as cst
    from mutmut.mutation.file_mutation import MutationVisitor

    original = MutationVisitor._skip_node_and_children
    if getattr(original, "_allows_decorators", False):
        return
    empty = cst.Module([])

    def skip(self, node):
        if isinstance(node, cst.FunctionDef) and node.decorators:
            names = [empty.code_for_node(d.decorator) for d in node.decorators]
            lone_or_no_method_decorator = len(names) == 1 or not {"staticmethod", "classmethod"} & set(names)
            if all(n in ALLOWED_DECORATORS for n in names) and lone_or_no_method_decorator:
                # mutmut's other checks, on an undecorated copy (which has no position: a
                # `# pragma: no mutate block` on the def line of such a function is not seen)
                return original(self, node.with_changes(decorators=[]))
        return original(self, node)

    skip._allows_decorators = True
    MutationVisitor._skip_node_and_children = skip


def torch_version() -> str:
    from importlib.metadata import version
    return version("torch")


def mutmut_version() -> str:
    from importlib.metadata import version
    return version("mutmut")


def forget_results(selection: dict[str, dict[str, str]]) -> None:
    """Mark the selected mutants "not checked": mutmut reruns them anyway (they are named), but keeps
    the old verdicts meanwhile, so an interrupted run would otherwise report stale results."""
    for script, functions in selection.items():
        path = REPO / "mutants" / f"{script}.meta"
        if path.exists():
            meta = json.loads(path.read_text())
            codes = meta["exit_code_by_key"]
            meta["exit_code_by_key"] = {k: None if function_key(k) in functions else v for k, v in codes.items()}
            path.write_text(json.dumps(meta, indent=4))


def prepare_mutants_dir(allow_decorated: bool, fresh: bool) -> None:
    """Start over when asked, or when mutants/ was generated by another mutmut / decorator setting
    (mutmut only regenerates a file when the source is newer than its mutated copy)."""
    stamp = {"mutmut": mutmut_version(), "allow_decorated": allow_decorated,
             "allowed_decorators": sorted(ALLOWED_DECORATORS) if allow_decorated else [],
             "math_functions": {script: [qual for _, _, qual in functions_of(script)] for script in SCRIPTS}}
    path = REPO / STAMP
    old = json.loads(path.read_text()) if path.exists() else None
    if old:
        old.pop("last_run", None)
    if (fresh or old != stamp) and (REPO / "mutants").exists():
        print(f"removing mutants/ ({'--fresh' if fresh else 'generated with other settings'})")
        shutil.rmtree(REPO / "mutants")
    # always recollect which tests reach which function: the tests may have changed
    (REPO / "mutants/mutmut-stats.json").unlink(missing_ok=True)
    (REPO / "mutants").mkdir(exist_ok=True)
    path.write_text(json.dumps(stamp))


def run_mutmut(globs: list[str], max_children: int) -> int:
    import mutmut.__main__ as mutmut_main

    try:
        mutmut_main._run(globs, max_children)
    except SystemExit as e:  # mutmut exits on a failed clean run / stats run
        return int(e.code or 0)
    except AssertionError as e:  # "Filtered for specific mutants, but nothing matches"
        print(f"mutmut: {e}")
        return 1
    return 0


# ---- report ----------------------------------------------------------------------------------
def load_results(script: str) -> dict[str, int | None]:
    path = REPO / "mutants" / f"{script}.meta"
    if not path.exists():
        return {}
    return json.loads(path.read_text())["exit_code_by_key"]


def status_of(code: int | None) -> str:
    from mutmut.stats import status_by_exit_code
    status = status_by_exit_code[code]
    return status if status in STATUS_ORDER else "other"


def diff_of(name: str, script: str) -> str:
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    try:
        return get_diff_for_mutant(name, path=script)
    except Exception as e:  # noqa: BLE001 - a report without one diff beats no report
        return f"(no diff: {e})"


def changed_lines(diff: str) -> list[str]:
    """The -/+ lines of a unified diff (the full diff: --show NAME)."""
    lines = [line for line in diff.splitlines() if line[:1] in "-+" and not line.startswith(("---", "+++"))]
    return lines or [diff]


def equivalence_reason(qual: str, diff_lines: list[str]) -> str | None:
    """The EQUIVALENT reason that matches this survivor, or None."""
    added = "\n".join(line[1:] for line in diff_lines if line.startswith("+"))
    for pattern, fragment, reason in EQUIVALENT:
        if fnmatch.fnmatchcase(qual, pattern) and fragment in added:
            return reason
    return None


def function_key(name: str) -> str:
    return name.partition("__mutmut_")[0]


def number(name: str) -> int:
    return int(name.rpartition("_")[2])


def write_report(selection: dict[str, dict[str, str]], report: Path, seconds: float | None,
                 command: str) -> tuple[str, int]:
    rows, sections, total_survived, unexplained = [], [], 0, []
    for script, functions in selection.items():
        results = load_results(script)
        selected = {k: v for k, v in results.items() if function_key(k) in functions}
        counts = Counter(status_of(v) for v in selected.values())
        total_survived += counts["survived"]
        rows.append(f"| {script} | {len(selected)} | " + " | ".join(str(counts[s]) for s in STATUS_ORDER) + " |")
        by_function = defaultdict(list)
        for name, code in selected.items():
            by_function[function_key(name)].append((name, status_of(code)))
        lines = [f"## {script}", "",
                 "| function | mutants | killed | survived | other |", "|---|---:|---:|---:|---:|"]
        for key, qual in functions.items():
            got = by_function.get(key, [])
            c = Counter(s for _, s in got)
            other = ", ".join(f"{n} {s}" for s, n in sorted(c.items()) if s not in ("killed", "survived"))
            note = other or ("no mutants (nothing mutmut mutates)" if not got else "")
            lines.append(f"| {qual} | {len(got)} | {c['killed']} | {c['survived']} | {note} |")
        lines.append("")
        for key, qual in functions.items():
            # not killed, and run: "no tests" mutants are only counted (no test reaches the function)
            survivors = sorted((n for n, s in by_function.get(key, []) if s not in ("killed", "no tests")), key=number)
            if survivors:
                lines += [f"### {qual}", "", "```diff"]
                for name in survivors:
                    changed = changed_lines(diff_of(name, script))
                    reason = equivalence_reason(qual, changed)
                    if reason is None:
                        unexplained.append(name)
                    lines.append(f"# {name} ({status_of(selected[name])}): "
                                 + (f"equivalent: {reason}" if reason else "UNEXPLAINED"))
                    lines += changed
                lines += ["```", ""]
        sections.append("\n".join(lines))

    header = ["# Mutation testing: the math and update functions", "",
              f"mutmut {mutmut_version()}, tests: {', '.join(TEST_FILES)}.",
              f"Command: `{command}`" + (f" ({seconds / 60:.1f} min" if seconds is not None else " (")
              + f" on {os.cpu_count()} CPU cores, torch {torch_version()}).",
              "Survivors below show the changed lines only; the full diff of one mutant: "
              "`python tools/mutation.py --show NAME` (what `mutmut show NAME` prints; mutmut's own CLI "
              "needs a `[tool.mutmut]` config, which this script passes in instead).", "",
              "Each survivor carries the reason it cannot change a result (tools/mutation.py's EQUIVALENT) or "
              "UNEXPLAINED.", "",
              "| script | mutants | " + " | ".join(STATUS_ORDER) + " |",
              "|---|---:|" + "---:|" * len(STATUS_ORDER)]
    verdict = [f"{total_survived} survivors: {total_survived - len(unexplained)} equivalent (reason given), "
               f"{len(unexplained)} unexplained" + (": " + ", ".join(unexplained) if unexplained else "") + "."]
    text = "\n".join(header + rows + [""] + verdict + [""] + sections)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text.rstrip() + "\n")
    return "\n".join(header[-2:] + rows + verdict), total_survived


# ---- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scripts", nargs="+", default=SCRIPTS, choices=SCRIPTS, metavar="SCRIPT")
    parser.add_argument("--functions", nargs="+", metavar="PATTERN",
                        help="fnmatch patterns on 'name' or 'Class.method' (default: all math functions)")
    parser.add_argument("--report", default=DEFAULT_REPORT, help=f"markdown report (default {DEFAULT_REPORT})")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2, help="parallel mutants")
    parser.add_argument("--fresh", action="store_true", help="delete mutants/ first")
    parser.add_argument("--no-decorated", dest="allow_decorated", action="store_false",
                        help="mutmut's default: do not mutate @torch.no_grad() functions")
    parser.add_argument("--list", action="store_true", help="print the selected functions and exit")
    parser.add_argument("--report-only", action="store_true", help="report the results already in mutants/")
    parser.add_argument("--show", nargs="+", metavar="MUTANT", help="print the diff of these mutants and exit")
    parser.add_argument("--debug", action="store_true", help="mutmut's debug output (pytest commands, output)")
    args = parser.parse_args(argv)

    os.chdir(REPO)  # mutmut works relative to the working directory
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # forked workers and torch thread pools
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "tools"]
    configure_mutmut(args.allow_decorated, args.debug)

    if args.show:
        for name in args.show:
            script = next(s for s in SCRIPTS if name.startswith(Path(s).stem + "."))
            print(f"# {name}: {status_of(load_results(script).get(name))}")
            print(diff_of(name, script))
        return 0

    selection = select(args.scripts, args.functions)
    if args.list:
        for script, functions in selection.items():
            print(script)
            for key, qual in functions.items():
                print(f"    {qual:32s} {key}__mutmut_*")
        return 0

    command = "python tools/mutation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    seconds = None
    code = 0
    if not args.report_only:
        prepare_mutants_dir(args.allow_decorated, args.fresh)
        forget_results(selection)
        globs = [f"{key}__mutmut_*" for functions in selection.values() for key in functions]
        start = time.perf_counter()
        code = run_mutmut(globs, args.max_children)
        seconds = time.perf_counter() - start
        print(f"\nmutmut run: {seconds:.0f} s, exit code {code}")
        stamp = json.loads((REPO / STAMP).read_text())
        (REPO / STAMP).write_text(json.dumps(dict(stamp, last_run={"command": command.strip(), "seconds": seconds})))
    elif (REPO / STAMP).exists():  # report the run that produced the results
        last = json.loads((REPO / STAMP).read_text()).get("last_run", {})
        command, seconds = last.get("command", command), last.get("seconds")
    report = Path(args.report)
    summary, survived = write_report(selection, report, seconds, command.strip())
    print(summary)
    print(f"\n{survived} survivors; report: {report}")
    return code


if __name__ == "__main__":
    sys.exit(main())
