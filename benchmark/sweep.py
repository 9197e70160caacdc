"""One sweep runner for every algorithm script: expand a grid into runs, then execute them
locally (N worker processes) or on Slurm (one `sbatch --array` job), idempotently.

The grid is scripts x env ids x seeds x configurations, where a configuration is a list of
extra CLI arguments. It comes from the command line

    python benchmark/sweep.py --scripts sac_continuous.py benchmark/sb3_sac.py \
        --env-ids Hopper-v4 Walker2d-v4 --seeds 1 2 3 --grid tau=0.005,0.01 --workers 2 \
        -- --total-timesteps 1000000 --eval-every 10000

(everything after `--` goes to every run; each `--grid KEY=V1,V2` sweeps `--KEY` over the
values, several `--grid` entries sweep their product, and a value with spaces gives several
tokens: `--grid "w2_weights=0.0 0.1,0.0 0.2"`), or from a YAML file in the format of POSAC's
config_sac.yaml:

    scripts: [posac_jko.py]          # optional; --scripts on the command line wins
    common:
      seeds: [1, 2, 3]
      enabled_environments: [Hopper-v4, Humanoid-v4]
      num_actors: 2                  # any other key becomes a CLI flag: --num-actors 2
    environments:
      Hopper-v4:
        w2_weights: [0.0, 0.1]       # one configuration: --w2-weights 0.0 0.1
      Humanoid-v4:
        w2_weights_list:             # a key ending in _list sweeps: one configuration per item
          - [0.0, 0.1]
          - [0.0, 0.2]
      Walker2d-v4: ["--tau", "0.01"] # or raw CLI args (a list of lists = several configurations)

Keys map to flags by `snake_case -> --kebab-case`; a list value gives several tokens
(`--w2-weights 0.0 0.1`), a boolean gives `--flag` / `--no-flag`. Several `_list` keys sweep
their product. `--env-ids` / `--seeds` on the command line override the YAML's.

A sweep file is a program: its `scripts` are run as given, so run only sweep files you trust. It
is read as plain YAML data (no tags, no duplicate keys, UTF-8) and every value is checked for the
shape above; a malformed file is one `sweep.py: error: ...` line and exit 2, before anything runs.
Env ids become parts of log paths and run folder names, so an env id may not hold a control
character, a backslash or an empty, `.` or `..` path part (a namespace like `ALE/Pong-v5` is fine),
and an id in a sweep file must be a registered id: `--env-ids some.module:Env-v0` (a module part)
is for the command line only.

Each configuration gets a deterministic `--exp-name`: the script stem plus a short hash of its
extra arguments (e.g. `posac_jko-1a2b3c4d`). A run is then found again as the folder
`{output_dir}/{env_id}__{exp_name}__{seed}__*`, which gives the rule of docs/CONTRACT.md:
finished (summary.json reached the budget) -> skip; checkpoint.pt present -> rerun with
`--resume <folder>`; else start fresh. Rerunning a sweep after a crash or preemption therefore
costs only the minutes since the last checkpoint. `--dry-run` prints what would run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template
from typing import Callable, Optional

import tyro

# `python benchmark/sweep.py` puts benchmark/ (not the repo root) on sys.path; add the root so the
# package import below works both as a script and as `import benchmark.sweep`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmark.runfolders import CHECKPOINT, is_finished, matching_folders, short, thread_env  # noqa: E402


@dataclass
class Args:
    # grid
    scripts: Optional[list[str]] = None
    """algorithm scripts to run (paths); overrides the YAML's `scripts`"""
    env_ids: Optional[list[str]] = None
    """environment ids; overrides the YAML's `enabled_environments`"""
    seeds: Optional[list[int]] = None
    """seeds; overrides the YAML's `common.seeds` (default 1 without a YAML)"""
    grid: list[str] = field(default_factory=list)
    """KEY=V1,V2,... entries: sweep --KEY over the values (product over entries)"""
    common_args: list[str] = field(default_factory=list)
    """CLI arguments for every run; on the command line, everything after `--` (they are part of
    the exp-name hash, so another budget is another experiment)"""
    config: Optional[str] = None
    """YAML sweep file (POSAC's format, see the module docstring)"""
    output_dir: str = "runs"
    """where the runs write their folders (passed as --output-dir)"""
    python: str = sys.executable
    """python interpreter that runs the scripts"""
    dry_run: bool = False
    """print each run's action (start / resume / skip) and command, run nothing"""

    # local execution
    workers: int = 1
    """runs executed in parallel on this machine"""
    threads: Optional[int] = None
    """CPU threads per run (OMP_NUM_THREADS / MKL_NUM_THREADS); default: cores // workers"""

    # Slurm execution
    slurm: bool = False
    """submit one `sbatch --array` job (one array task per run) instead of running locally"""
    slurm_partition: Optional[str] = None
    """#SBATCH --partition"""
    slurm_time: str = "2-00:00:00"
    """#SBATCH --time per array task"""
    slurm_gpus_per_task: int = 0
    """#SBATCH --gpus-per-task (0: no GPU line; else the runs also get --cuda)"""
    slurm_cpus_per_task: int = 2
    """#SBATCH --cpus-per-task (also the runs' thread count)"""
    slurm_mem: Optional[str] = None
    """#SBATCH --mem, e.g. 16G"""
    slurm_max_parallel: int = 0
    """at most this many array tasks at once (`--array=0-N%K`); 0 = no limit"""
    slurm_extra: list[str] = field(default_factory=list)
    """extra #SBATCH options without their dashes, e.g. --slurm-extra account=abc qos=long"""
    slurm_template: Optional[str] = None
    """file replacing the built-in sbatch template (same $placeholders, see SBATCH_TEMPLATE)"""
    slurm_wait: bool = False
    """block until the array finishes (`sbatch --wait`); exit non-zero if a task failed"""

    # internal: what one Slurm array task runs
    task_manifest: Optional[str] = None
    """(used by the sbatch script) manifest.json of a submitted sweep; runs one task of it"""
    task_index: Optional[int] = None
    """(used by the sbatch script) index into the manifest; default $SLURM_ARRAY_TASK_ID"""


class SweepError(ValueError):
    """A malformed grid, sweep file or flag; main() prints it as `sweep.py: error: ...` and exits 2."""


def clip(text: str, limit: int = 160) -> str:
    """Free text (a parser's message, which may quote the input) on one line, about `limit` long."""
    text = text if len(text) <= limit else text[:limit] + "..."
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def control_character(text: str) -> Optional[str]:
    """The first control character in text (C0/C1 controls such as newline, tab and NUL, DEL, Unicode
    format characters and line/paragraph separators), None when it has none."""
    return next((c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)


def check_env_id(env_id, from_file: bool) -> None:
    """Refuse an env id that could leave the output folder or break a path: it becomes part of
    `{output_dir}/{env_id}__...` run folders and `sweep_logs/{env_id}__....log` files. A sweep file
    may only name registered ids (a module part `pkg.module:Env-v0` makes gymnasium import that
    module); the command line may."""
    if not isinstance(env_id, str) or not env_id:
        raise SweepError(f"an env id must be a non-empty string, got {short(env_id)}")
    if control_character(env_id) is not None:
        raise SweepError(f"env id {short(env_id)} contains a control character")
    if "\\" in env_id or any(part in ("", ".", "..") for part in env_id.split("/")):
        raise SweepError(f"env id {short(env_id)} is not a safe part of a path (it names run folders and logs): "
                         "no backslash, no leading '/', no empty, '.' or '..' part between '/'s (ALE/Pong-v5 is fine)")
    if from_file and ":" in env_id:
        raise SweepError(f"env id {short(env_id)}: a sweep file may only name registered ids; to run your own "
                         "module, pass it on the command line: --env-ids module:Env-v0")


# ---------------------------------------------------------------------------------------------
# The grid: runs and their expansion
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One point of the grid: a script on an env with a seed and a list of extra CLI arguments."""

    script: str
    env_id: str
    seed: int
    extra_args: tuple[str, ...] = ()
    output_dir: str = "runs"

    @property
    def exp_name(self) -> str:
        """`{script stem}-{8 hex digits of sha1(extra args)}`: readable, and the same on every
        rerun so the sweep finds the run's folder again."""
        digest = hashlib.sha1(json.dumps(list(self.extra_args)).encode()).hexdigest()[:8]
        return f"{Path(self.script).stem}-{digest}"

    @property
    def name(self) -> str:
        return f"{self.env_id}__{self.exp_name}__{self.seed}"

    @property
    def total_timesteps(self) -> Optional[int]:
        """The budget requested through `--total-timesteps` (None: the script's default)."""
        value = flag_value(self.extra_args, "--total-timesteps")
        return None if value is None else int(float(value))

    def command(self, python: str = sys.executable) -> list[str]:
        return [
            python, self.script,
            "--env-id", self.env_id,
            "--seed", str(self.seed),
            "--exp-name", self.exp_name,
            "--output-dir", self.output_dir,
            *self.extra_args,
        ]


def flag_value(args: tuple[str, ...] | list[str], flag: str) -> Optional[str]:
    """The value of the last `flag V` or `flag=V` in an argument list, None when absent."""
    value = None
    for i, token in enumerate(args):
        if token == flag and i + 1 < len(args):
            value = args[i + 1]
        elif token.startswith(flag + "="):
            value = token.split("=", 1)[1]
    return value


def expand_grid(
    scripts: list[str],
    env_ids: list[str],
    seeds: list[int],
    configs: list[list[str]],
    common_args: list[str] = (),
    output_dir: str = "runs",
) -> list[Run]:
    """scripts x env ids x configurations x seeds, in that nesting order (the seeds of one
    configuration run next to each other)."""
    configs = configs or [[]]
    return [
        Run(script, env_id, seed, tuple(common_args) + tuple(config), output_dir)
        for script in scripts
        for env_id in env_ids
        for config in configs
        for seed in seeds
    ]


# A sweep file is plain data: CLI tokens are strings or numbers (a bool is one too, and becomes
# "True" inside a list); keys become flags, so they must look like flag names.
def is_token(value) -> bool:
    return isinstance(value, (str, int, float))


def is_token_list(value) -> bool:
    return isinstance(value, list) and all(is_token(item) for item in value)


FLAG_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def to_cli(key, value) -> list[str]:
    """One YAML key/value as CLI tokens: num_actors: 2 -> ["--num-actors", "2"]."""
    if not isinstance(key, str) or not FLAG_KEY.fullmatch(key):
        raise SweepError(f"{short(key)} is not a flag name (a letter, then letters, digits, _ or -)")
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else ["--no-" + key.replace("_", "-")]
    if value is None:
        return []
    if is_token(value):
        return [flag, str(value)]
    if is_token_list(value):
        return [flag, *(str(v) for v in value)]
    raise SweepError(f"{key}: expected a value or a list of values, got {short(value)}")


def expand_mapping(mapping, where: str = "") -> list[list[str]]:
    """The configurations (lists of CLI args) one YAML entry stands for.

    A dict maps keys to flags, and every `<key>_list` sweeps its items (the product over
    several such keys); a flat list is raw CLI args (one configuration); a list of lists is
    several raw configurations; None / empty is one empty configuration. `where` names the
    entry in error messages."""
    prefix = f"{where}: " if where else ""
    if mapping is None or (isinstance(mapping, (list, dict)) and not mapping):
        return [[]]
    if isinstance(mapping, list):
        if is_token_list(mapping):
            return [[str(token) for token in mapping]]
        if all(is_token_list(item) for item in mapping):
            return [[str(token) for token in item] for item in mapping]
        raise SweepError(f"{prefix}expected CLI args (a list of values, or a list of such lists), got {short(mapping)}")
    if not isinstance(mapping, dict):
        raise SweepError(f"{prefix}expected a mapping or a list of CLI args, got {short(mapping)}")
    fixed: list[str] = []
    swept: list[list[list[str]]] = []
    try:
        for key, value in mapping.items():
            if isinstance(key, str) and key.endswith("_list"):
                if not isinstance(value, list) or not value:
                    raise SweepError(f"{key} must be a non-empty list, got {short(value)}")
                swept.append([to_cli(key[: -len("_list")], item) for item in value])
            else:
                fixed += to_cli(key, value)
    except SweepError as error:
        raise SweepError(f"{prefix}{error}") from None
    return [fixed + [t for part in combo for t in part] for combo in itertools.product(*swept)]


def file_mapping(value, what: str) -> dict:
    """A mapping of a sweep file ({} when absent)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SweepError(f"{what} must be a mapping, got {short(value)}")
    return value


def file_list(value, what: str, item_ok: Callable[[object], bool], items: str) -> Optional[list]:
    """A list of a sweep file (None when absent) whose items all pass item_ok; `items` names them."""
    if value is not None and (not isinstance(value, list) or not all(item_ok(item) for item in value)):
        raise SweepError(f"{what} must be a list of {items}, got {short(value)}")
    return value


def expand_yaml(
    config: dict,
    scripts: Optional[list[str]] = None,
    env_ids: Optional[list[str]] = None,
    seeds: Optional[list[int]] = None,
    common_args: list[str] = (),
    output_dir: str = "runs",
) -> list[Run]:
    """Runs from a parsed YAML sweep file; the keyword arguments (from the CLI) override it. The
    file's values are checked even where the CLI overrides them: a malformed file is an error."""
    if not isinstance(config, dict):
        raise SweepError("the YAML file must hold a mapping with `common` and `environments`")
    common = dict(file_mapping(config.get("common"), "`common`"))
    environments = file_mapping(config.get("environments"), "`environments` (env id -> arguments)")
    yaml_scripts = file_list(config.get("scripts"), "`scripts`", lambda s: isinstance(s, str) and s != "",
                             "script paths")
    yaml_seeds = file_list(common.pop("seeds", None), "`common.seeds`",
                           lambda s: isinstance(s, int) and not isinstance(s, bool), "integers")
    enabled = file_list(common.pop("enabled_environments", None), "`common.enabled_environments`",
                        lambda e: isinstance(e, str), "env ids")
    for env_id in (enabled or []) + list(environments):
        check_env_id(env_id, from_file=True)
    scripts = scripts or yaml_scripts
    seeds = seeds or yaml_seeds
    env_ids = env_ids or enabled or list(environments)
    if not scripts:
        raise SweepError("no scripts: give --scripts or a top-level `scripts:` list in the YAML")
    if not seeds:
        raise SweepError("no seeds: give --seeds or `common.seeds` in the YAML")
    common_configs = expand_mapping(common, "common")
    runs: list[Run] = []
    for env_id in env_ids:
        env_configs = expand_mapping(environments.get(env_id), f"environments: {env_id}")
        configs = [c + e for c in common_configs for e in env_configs]
        runs += expand_grid(scripts, [env_id], seeds, configs, common_args, output_dir)
    return runs


def load_sweep_file(path: str):
    """The parsed sweep file: UTF-8 YAML read as plain data. yaml.safe_load already builds no Python
    objects; this loader also refuses every tag (`!!python/object`, `!custom`, even `!!str`: a sweep
    file has no use for them) and duplicate keys (safe_load keeps the last one silently). Every
    problem is one SweepError line."""
    import yaml  # only --config needs PyYAML

    class SweepFileLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            event = self.peek_event()
            if getattr(event, "tag", None) is not None:  # an alias event has no tag
                raise yaml.composer.ComposerError(None, None, f"found the tag {short(event.tag)}: a sweep file "
                                                  "holds plain data, no YAML tags", event.start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges; its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # unhashable: SafeLoader reports it below
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {short(key)}",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise SweepError(f"{path}: cannot read it ({error.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SweepError(f"{path}: not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start})") from None
    try:
        return yaml.load(text, Loader=SweepFileLoader)
    except yaml.MarkedYAMLError as error:  # syntax errors, tags, duplicate keys: say where
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f"{error.context}: " if error.context else ""
        raise SweepError(f"{path}: {where}{clip(context + str(error.problem))}") from None
    except yaml.YAMLError as error:  # e.g. a character YAML does not accept (NUL); line 2 is `in "<unicode string>"`
        raise SweepError(f"{path}: {clip(str(error).splitlines()[0])}") from None
    except RecursionError:
        raise SweepError(f"{path}: nested too deeply") from None


def parse_grid(entries: list[str]) -> dict:
    """`--grid` entries as a YAML-style mapping: ["tau=0.005,0.01"] -> {"tau_list": [...]}; a value
    with spaces becomes a list ("0.0 0.1" -> ["0.0", "0.1"]), true/false become booleans."""
    mapping = {}
    for entry in entries:
        key, sep, values = entry.partition("=")
        if not sep or not key or not values:
            raise SweepError(f"--grid entries look like KEY=V1,V2,... ; got {entry!r}")
        items = []
        for value in values.split(","):
            tokens = value.split()
            items.append({"true": True, "false": False}.get(value.strip().lower(), tokens if len(tokens) > 1 else value.strip()))
        mapping[key.replace("-", "_") + "_list"] = items
    return mapping


def runs_from_args(args: Args) -> list[Run]:
    """The runs an Args stands for (YAML file or CLI grid), with the env ids and scripts checked."""
    common_args = list(args.common_args)
    configs = expand_mapping(parse_grid(args.grid), "--grid") if args.grid else []
    for env_id in args.env_ids or []:
        check_env_id(env_id, from_file=False)
    if args.config:
        config = load_sweep_file(args.config)
        runs = expand_yaml(config, args.scripts, args.env_ids, args.seeds, common_args, args.output_dir)
        if configs:  # a --grid multiplies the YAML's configurations
            runs = [Run(r.script, r.env_id, r.seed, r.extra_args + tuple(c), r.output_dir)
                    for r in runs for c in configs]
    else:
        if not args.scripts or not args.env_ids:
            raise SweepError("give --scripts and --env-ids (or a --config YAML file)")
        runs = expand_grid(args.scripts, args.env_ids, args.seeds or [1], configs, common_args, args.output_dir)
    for script in sorted({r.script for r in runs}):
        if control_character(script) is not None:  # its stem becomes part of the run folder names
            raise SweepError(f"script {short(script)} contains a control character")
        if not Path(script).is_file():
            raise SweepError(f"script not found: {short(script)}")
    return runs


# ---------------------------------------------------------------------------------------------
# Idempotence: what to do with each run
# ---------------------------------------------------------------------------------------------


def plan(run: Run) -> tuple[str, Optional[Path]]:
    """("skip", folder) when a matching folder finished, ("resume", folder) for the newest
    matching folder with a checkpoint, else ("start", None). See docs/CONTRACT.md."""
    folders = matching_folders(run.output_dir, run.env_id, run.exp_name, run.seed)
    for folder in folders:
        if is_finished(folder, run.total_timesteps):
            return "skip", folder
    with_checkpoint = [f for f in folders if (f / CHECKPOINT).is_file()]
    if with_checkpoint:
        return "resume", with_checkpoint[-1]
    return "start", None


def planned_command(run: Run, python: str = sys.executable) -> tuple[str, Optional[list[str]]]:
    """The action for a run and the command that carries it out (None for skip)."""
    action, folder = plan(run)
    if action == "skip":
        return action, None
    command = run.command(python)
    if action == "resume":
        command += ["--resume", str(folder)]
    return action, command


# ---------------------------------------------------------------------------------------------
# Local execution
# ---------------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


@dataclass
class Progress:
    """Counts for the progress line; the ETA assumes pending runs last as long as finished ones."""

    total: int
    workers: int
    started_at: float = field(default_factory=time.time)
    done: int = 0
    failed: int = 0
    skipped: int = 0
    running: int = 0
    run_seconds: list[float] = field(default_factory=list)

    def eta(self) -> Optional[float]:
        if not self.run_seconds:
            return None
        remaining = self.total - self.done - self.failed - self.skipped
        return sum(self.run_seconds) / len(self.run_seconds) * remaining / self.workers

    def line(self) -> str:
        eta = self.eta()
        return (
            f"[sweep] {self.done + self.skipped}/{self.total} done ({self.skipped} skipped), "
            f"{self.running} running, {self.failed} failed, "
            f"elapsed {format_duration(time.time() - self.started_at)}, "
            f"ETA {'?' if eta is None else format_duration(eta)}"
        )


def log_path(run: Run) -> Path:
    """Each run's console output goes to {output_dir}/sweep_logs/{run name}.log (appended, so a
    resumed run's log follows its first attempt)."""
    return Path(run.output_dir) / "sweep_logs" / f"{run.name}.log"


def run_local(runs: list[Run], workers: int = 1, threads: Optional[int] = None,
              python: str = sys.executable, status_every: float = 30.0) -> int:
    """Execute the runs with `workers` processes at a time; returns the number of failed runs.

    SIGINT/SIGTERM are passed on to the running scripts, which checkpoint and exit 130; a rerun
    of the same sweep resumes them."""
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    env = thread_env(threads)
    progress = Progress(total=len(runs), workers=workers)
    pending = list(runs)
    running: dict[subprocess.Popen, tuple[Run, float]] = {}
    last_status = time.time()

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous_sigterm = signal.signal(signal.SIGTERM, stop)
    print(f"[sweep] {len(runs)} runs, {workers} workers x {threads} threads", flush=True)
    try:
        while pending or running:
            # Fill free worker slots; skipping a finished run does not take a slot.
            while pending and len(running) < workers:
                run = pending.pop(0)
                action, command = planned_command(run, python)
                if command is None:
                    progress.skipped += 1
                    print(f"[sweep] skip   {run.name} (finished)", flush=True)
                    continue
                log = log_path(run)
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "a") as f:
                    f.write(f"$ {shlex.join(command)}\n")
                    f.flush()
                    # own session: a terminal Ctrl-C reaches only the sweep, which passes it on
                    # once (a second SIGINT would make the scripts quit without a checkpoint)
                    process = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env,
                                               start_new_session=True)
                running[process] = (run, time.time())
                print(f"[sweep] {action:<6} {run.name} (log: {log})", flush=True)
            progress.running = len(running)
            # Collect finished processes.
            for process in [p for p in running if p.poll() is not None]:
                run, started = running.pop(process)
                seconds = time.time() - started
                if process.returncode == 0:
                    progress.done += 1
                    progress.run_seconds.append(seconds)
                    print(f"[sweep] done   {run.name} in {format_duration(seconds)}", flush=True)
                else:
                    progress.failed += 1
                    print(f"[sweep] FAILED {run.name} (exit {process.returncode}, see {log_path(run)})", flush=True)
                progress.running = len(running)
                if pending or running:
                    print(progress.line(), flush=True)
                last_status = time.time()
            if time.time() - last_status > status_every:
                print(progress.line(), flush=True)
                last_status = time.time()
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("[sweep] interrupted: asking running scripts to checkpoint; rerun the sweep to resume", flush=True)
        for process in running:
            process.send_signal(signal.SIGINT)
        for process in running:
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    print(progress.line(), flush=True)
    return progress.failed


# ---------------------------------------------------------------------------------------------
# Slurm execution: one sbatch --array job; each task re-plans its run when it starts, so a
# requeued or resubmitted task resumes from its checkpoint.
# ---------------------------------------------------------------------------------------------

# Placeholders a --slurm-template file may use: $job_name $array $cpus_per_task $time $log_dir
# $sbatch_options (the partition / GPU / memory / --slurm-extra lines) $workdir $python $sweep_py
# $manifest. The last line must run `$python $sweep_py --task-manifest $manifest`.
SBATCH_TEMPLATE = """#!/bin/bash
#SBATCH --job-name=$job_name
#SBATCH --array=$array
#SBATCH --cpus-per-task=$cpus_per_task
#SBATCH --time=$time
#SBATCH --output=$log_dir/%A_%a.out
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
$sbatch_options
# One array task = one configuration of the sweep. `exec` makes the script the batch shell, so
# the TERM that Slurm sends 120 s before the time limit (or on preemption) reaches it: it
# writes its checkpoint and exits 130, and a requeue or a rerun of the sweep resumes it.
export OMP_NUM_THREADS=$cpus_per_task MKL_NUM_THREADS=$cpus_per_task
cd $workdir
exec $python $sweep_py --task-manifest $manifest
"""


# sbatch reads the #SBATCH lines itself: it splits a line at whitespace and strips quotes, so a
# value with a space could add options of its own (`--slurm-partition "gpu --chdir=/elsewhere"`),
# and shell quoting does not apply there. Their values are held to this conservative set (anything
# else belongs in a --slurm-template); %A-style patterns and node lists like n[01-04] still pass.
SBATCH_VALUE = re.compile(r"[\w.,:=+@/%\[\]-]+")


def for_sbatch(value: str, what: str, directive: bool = False) -> str:
    """value, once it is known not to inject anything into the sbatch script: no control character
    anywhere (a newline would end an #SBATCH comment and start a line that bash runs) and, for a
    value of an #SBATCH line (`directive`), only SBATCH_VALUE's characters. `what` names its flag."""
    bad = control_character(value)
    if bad is not None:
        raise SweepError(f"{what} {short(value)} contains the control character {bad!r}, which would start a "
                         "new line in the sbatch script")
    if directive and not SBATCH_VALUE.fullmatch(value):
        raise SweepError(f"{what} {short(value)} cannot go into an #SBATCH line: use only letters, digits and "
                         "_ . , : = + @ / % [ ] - (a --slurm-template can hold anything else)")
    return value


def sbatch_script(args: Args, n_tasks: int, manifest: Path, log_dir: Path) -> str:
    """The sbatch file text: the built-in template (or --slurm-template) with its placeholders
    filled in from the --slurm-* flags. Every value is checked by for_sbatch first (SweepError)."""
    options = []  # the #SBATCH lines the flags ask for
    if args.slurm_partition:
        options.append(f"--partition={for_sbatch(args.slurm_partition, '--slurm-partition', directive=True)}")
    if args.slurm_gpus_per_task:
        options.append(f"--gpus-per-task={args.slurm_gpus_per_task}")
    if args.slurm_mem:
        options.append(f"--mem={for_sbatch(args.slurm_mem, '--slurm-mem', directive=True)}")
    for extra in args.slurm_extra:
        extra = for_sbatch(extra, "--slurm-extra", directive=True)
        options.append(extra if extra.startswith("-") else "--" + extra)
    array = f"0-{n_tasks - 1}" + (f"%{args.slurm_max_parallel}" if args.slurm_max_parallel else "")
    template = Path(args.slurm_template).read_text() if args.slurm_template else SBATCH_TEMPLATE
    return Template(template).substitute(
        job_name=f"sweep-{manifest.parent.name}",
        array=array,
        cpus_per_task=args.slurm_cpus_per_task,
        time=for_sbatch(args.slurm_time, "--slurm-time", directive=True),
        log_dir=shlex.quote(for_sbatch(str(log_dir), "--output-dir (its slurm/ folder)", directive=True)),
        sbatch_options="\n".join(f"#SBATCH {option}" for option in options),
        workdir=shlex.quote(for_sbatch(os.getcwd(), "the working directory")),
        python=shlex.quote(for_sbatch(args.python, "--python")),
        sweep_py=shlex.quote(for_sbatch(str(Path(__file__).resolve()), "sweep.py's path")),
        manifest=shlex.quote(for_sbatch(str(manifest), "--output-dir (its slurm/ folder)")),
    )


def absolute(run: Run) -> Run:
    """The run with absolute script and output paths (array tasks may start elsewhere)."""
    return Run(str(Path(run.script).resolve()), run.env_id, run.seed, run.extra_args,
               str(Path(run.output_dir).resolve()))


def submit_slurm(args: Args, runs: list[Run]) -> int:
    """Write manifest.json + sweep.sbatch under {output_dir}/slurm/<timestamp>/ and submit the
    unfinished runs as one array job. Returns sbatch's exit code; SweepError (nothing written)
    when a value would inject lines or options into the sbatch script."""
    todo = [absolute(r) for r in runs if plan(r)[0] != "skip"]
    sweep_dir = Path(args.output_dir).resolve() / "slurm" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    manifest = sweep_dir / "manifest.json"
    # built (and its values checked) before anything is printed or written
    script = sbatch_script(args, len(todo), manifest, sweep_dir) if todo else ""
    print(f"[sweep] {len(runs) - len(todo)} of {len(runs)} runs finished already; {len(todo)} to submit", flush=True)
    if not todo:
        return 0
    command = ["sbatch", "--parsable"] + (["--wait"] if args.slurm_wait else []) + [str(sweep_dir / "sweep.sbatch")]
    if args.dry_run:
        print(script)
        print("$", shlex.join(command))
        return 0
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # runtime args are appended when a task starts but are not part of a run's identity (its
    # exp-name hash): the same experiment on a GPU node or a CPU node is the same experiment
    runtime_args = ["--cuda"] if args.slurm_gpus_per_task else []
    manifest.write_text(json.dumps({"python": args.python, "runtime_args": runtime_args,
                                    "runs": [asdict(r) for r in todo]}, indent=1))
    (sweep_dir / "sweep.sbatch").write_text(script)
    print("$", shlex.join(command), flush=True)
    result = subprocess.run(command)
    print(f"[sweep] sbatch exit {result.returncode}; task logs in {sweep_dir}", flush=True)
    return result.returncode


def run_task(manifest_path: str, index: Optional[int]) -> None:
    """Inside a Slurm array task: plan the manifest's run number `index` and exec it."""
    if index is None:
        index = int(os.environ["SLURM_ARRAY_TASK_ID"])
    manifest = json.loads(Path(manifest_path).read_text())
    entry = manifest["runs"][index]
    run = Run(entry["script"], entry["env_id"], entry["seed"], tuple(entry["extra_args"]), entry["output_dir"])
    action, command = planned_command(run, manifest["python"])
    print(f"[sweep task {index}] {action} {run.name}", flush=True)
    if command is None:
        sys.exit(0)
    command += manifest.get("runtime_args", [])
    print("$", shlex.join(command), flush=True)
    os.execv(command[0], command)


# ---------------------------------------------------------------------------------------------


def main(args: Args) -> int:
    if args.task_manifest:
        run_task(args.task_manifest, args.task_index)
    try:
        if args.workers < 1:
            raise SweepError("--workers must be at least 1")
        runs = runs_from_args(args)
        if args.slurm:
            return submit_slurm(args, runs)
    except SweepError as e:
        print(f"sweep.py: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run in runs:
            action, command = planned_command(run, args.python)
            lines = f"# {action}: {run.name}" + (f"\n{shlex.join(command)}" if command else " (finished)")
            # one write per run: campaign_humanoid.sh's two lanes print into one pipe, and under
            # PYTHONUNBUFFERED each print() is two writes (text, newline) the other lane can split
            sys.stdout.write(lines + "\n")
            sys.stdout.flush()
        return 0
    try:
        failed = run_local(runs, args.workers, args.threads, args.python)
    except KeyboardInterrupt:
        return 130
    return 1 if failed else 0


def parse_cli(argv: list[str]) -> Args:
    """tyro parses the sweep's own flags; whatever follows a bare `--` goes to every run."""
    own, rest = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = tyro.cli(Args, args=own, description=__doc__.split("\n\n")[0])
    args.common_args = list(args.common_args) + rest
    return args


if __name__ == "__main__":
    sys.exit(main(parse_cli(sys.argv[1:])))
