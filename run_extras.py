"""The optional part of the three scripts: what only --compile / --cudagraphs, --capture-video and
--config need. A script imports this module only when one of those flags is given (as CleanRL's
scripts import cleanrl_utils only for --save-model), so a script copied alone into an empty folder
still trains, logs, checkpoints, resumes and --evaluates; with one of these flags it says, in one
`error:` line, to copy this file beside it.

    --compile / --cudagraphs   accelerate_updates: the agent's own update methods, torch.compiled
                               and replayed as CUDA graphs (the eager methods stay the algorithm)
    --capture-video            video_problem: moviepy installed and the env renders headless,
                               checked before any training
    --config FILE.yaml         config_defaults: a file of defaults (the course's experiment files)
"""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from typing import Optional

import torch


def one_line(error: BaseException) -> str:
    """The first line of an exception's message (torch's can run to a page)."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]


# ---- --compile and --cudagraphs: the SAME update methods, compiled and replayed -----------------
# The script's update methods are the only version of the algorithm. --compile hands each of them to
# torch.compile as it is (graph breaks at backward() and the optimizer included); --cudagraphs then
# records each compiled method once as a CUDA graph and replays it: one launch instead of hundreds
# of small kernels, which is where a GPU loses its time at these network sizes (LeanRL's recipe).
UPDATE_METHODS = ("critic_step", "actor_step", "temperature_step")


def compile_errors() -> tuple:
    """A missing or broken C/C++ compiler or Triton, or an operation the compiler rejects
    (imported only when needed: importing the compiler stack takes a second)."""
    import torch._dynamo.exc
    import torch._inductor.exc
    return (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError,
            torch._inductor.exc.InvalidCxxCompiler, torch._inductor.exc.CppCompileError)


def accelerate_updates(agent, args) -> None:
    """Swap the agent's update methods for compiled (and CUDA-graphed) versions of themselves."""
    if not args.compile:
        return
    # compiled random ops call the same ATen kernels as eager ones: the same seed draws the same
    # noise, so a compiled run follows an eager one (tests/test_compile.py) and resumes either way
    import torch._inductor.config
    torch._inductor.config.fallback_random = True
    if args.cudagraphs:  # Adam steps recorded in a CUDA graph must keep their step counts on the GPU
        for value in vars(agent).values():
            for optimizer in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(optimizer, torch.optim.Optimizer):
                    for group in optimizer.param_groups:
                        group["capturable"] = True
    print("notice: --compile: the first updates compile the update step (tens of seconds)"
          + (", then record it as CUDA graphs" if args.cudagraphs else ""), file=sys.stderr)
    compiled_steps = []  # shared: if one fails to compile, all fall back together
    for name in UPDATE_METHODS:
        if hasattr(agent, name):
            step = CompiledStep(getattr(agent, name), name, compiled_steps)
            setattr(agent, name, CudaGraphStep(step, agent) if args.cudagraphs else step)


class CompiledStep:
    """torch.compile(method). If compiling fails (it fails before the update changes anything):
    one notice line, and this and the agent's other update methods run eagerly from then on."""

    def __init__(self, method, name: str, all_steps: list):
        self.eager, self.name, self.all_steps = method, name, all_steps
        # a run's shapes never change (fixed batch and networks): dynamic=False keeps torch.compile
        # from retrying with symbolic shapes when another agent of other sizes is compiled in the
        # same process (a test session, a notebook), which fails in torch 2.13 and so ran eagerly
        self.compiled = torch.compile(method, dynamic=False)
        all_steps.append(self)

    def __call__(self, *inputs):
        if self.compiled is not None:
            try:
                return self.compiled(*inputs)
            except compile_errors() as error:
                print(f"notice: --compile: compiling {self.name} failed, so the updates run eagerly "
                      f"({one_line(error)[:300]})", file=sys.stderr)
                for step in self.all_steps:
                    step.compiled = None
        return self.eager(*inputs)


class CudaGraphStep:
    """Run `step` a few times on a side stream (compilation, cuBLAS and optimizer state are set up
    outside the graph), then record it once as a CUDA graph and from then on replay it.

    The graph reads fixed input tensors (each call copies its batch into them) and writes fixed
    output tensors: the losses it returns are overwritten by the next replay, and the training
    loop only ever reads the latest ones. Random draws advance the generators on each replay."""
    WARMUP_CALLS = 3

    def __init__(self, step, agent):
        self.step, self.calls, self.graph, self.nothing_to_record = step, 0, None, False
        # the agent's own generators (e.g. SAC's redq subset) must be known to the graph
        self.generators = [value for value in vars(agent).values() if isinstance(value, torch.Generator)
                           and value.device.type == "cuda"]

    def __call__(self, inputs):
        if self.graph is not None:
            copy_into(self.static_inputs, inputs)
            self.graph.replay()
            return dict(self.static_outputs)  # a new dict (the loop adds to it), the same tensors
        if self.nothing_to_record:  # e.g. temperature_step with a fixed alpha: no GPU work at all
            return self.step(inputs)
        self.calls += 1
        if self.calls <= self.WARMUP_CALLS:
            side_stream = torch.cuda.Stream()
            side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side_stream):
                outputs = self.step(inputs)
            torch.cuda.current_stream().wait_stream(side_stream)
            self.nothing_to_record = outputs == {}
            return outputs
        self.static_inputs = clone_tensors(inputs)
        self.graph = torch.cuda.CUDAGraph()
        for generator in self.generators:
            self.graph.register_generator_state(generator)
        with torch.cuda.graph(self.graph):
            self.static_outputs = self.step(self.static_inputs)
        self.graph.replay()  # recording runs nothing: this replay is the update of this call
        return dict(self.static_outputs)


def clone_tensors(value):
    return {key: item.clone() for key, item in value.items()} if isinstance(value, dict) else value.clone()


def copy_into(static, value) -> None:
    for key in static if isinstance(static, dict) else [None]:
        target, source = (static[key], value[key]) if key is not None else (static, value)
        if target.data_ptr() != source.data_ptr():
            target.copy_(source)


# ---- --capture-video: check before training that the video can be written ------------------
RENDER_PROBE = """
import sys
import gymnasium as gym
env = gym.make(sys.argv[1], render_mode="rgb_array")
env.reset(seed=0)
frame = env.render()
assert frame is not None and frame.size > 0, "render() returned no frame"
env.close()
"""


def headless_rendering_env(environ) -> dict:
    """`environ` with MUJOCO_GL=osmesa where there is no display and MUJOCO_GL is not set (MuJoCo
    then renders on the CPU); os.environ itself for the run that is about to render."""
    if "DISPLAY" not in environ:
        environ.setdefault("MUJOCO_GL", "osmesa")
    return environ


def video_problem(env_id: str) -> Optional[str]:
    """Why --capture-video cannot work here (None when it can): the video writer (moviepy) must be
    installed and the env must render one frame headless. The frame is rendered in a child
    process, so a missing OpenGL library cannot crash or litter this one."""
    try:
        import moviepy  # noqa: F401
    except ImportError:
        return "--capture-video needs moviepy to write the videos: pip install -e \".[video]\" (or pip install moviepy)"
    child_env = headless_rendering_env(dict(os.environ))  # this process's environment is left as it is
    try:
        probe = subprocess.run([sys.executable, "-c", RENDER_PROBE, env_id], capture_output=True, text=True,
                               timeout=300, env=child_env)
    except subprocess.TimeoutExpired:
        return f"--capture-video: rendering one frame of {env_id} did not finish in 300 s"
    if probe.returncode == 0:
        return None
    lines = [line.strip() for line in probe.stderr.splitlines() if line.strip()]
    reason = lines[-1] if lines else f"exit code {probe.returncode}"
    return (f"--capture-video: {env_id} cannot render here ({reason[:200]}). MuJoCo renders headless with "
            f"MUJOCO_GL={child_env.get('MUJOCO_GL', 'glfw')}: for osmesa install OSMesa (apt-get install "
            "libosmesa6); on an NVIDIA machine use MUJOCO_GL=egl; with a display unset MUJOCO_GL")


# ---- --config FILE.yaml: a file of defaults, e.g. the course's experiment files -------------
def config_defaults(script, path: str):
    """The script's Args that `--config FILE.yaml` (or `-cfg FILE`) stands for. `script` is the
    calling script's module: its Args, CONFIG_KEYS, CONFIG_BASE and its checks of a value read from
    a file (value_fits, type_name, short, MAX_TEXT_BYTES) are used as they are.

    The file's keys set the defaults and the command line still wins. A key is a field of Args
    (snake_case) or a name from CONFIG_KEYS (the source's names, e.g. the course's env_name,
    total_steps, discount); `base_config`, if present, must name the script's CONFIG_BASE. An
    unknown key or a value of the wrong type is one ConfigError naming the key."""
    ConfigError, short = script.ConfigError, script.short
    MAX_TEXT_BYTES, CONFIG_BASE, CONFIG_KEYS = script.MAX_TEXT_BYTES, script.CONFIG_BASE, script.CONFIG_KEYS
    try:
        import yaml
    except ImportError:
        raise ConfigError("--config needs PyYAML: pip install pyyaml") from None

    class UniqueKeyLoader(yaml.SafeLoader):
        """yaml.safe_load's loader (data only: it builds no Python objects) that refuses a key given
        twice, where safe_load would silently keep the last one."""

    def unique_mapping(loader, node, deep=False):
        keys = [loader.construct_object(key_node, deep=deep) for key_node, _ in node.value]
        repeated = [key for i, key in enumerate(keys) if key in keys[:i]]
        if repeated:
            raise ConfigError(f"--config {path}: the key {short(repeated[0])} is given twice")
        return loader.construct_mapping(node, deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, unique_mapping)
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_TEXT_BYTES + 1)
        if len(text) > MAX_TEXT_BYTES:
            raise ValueError(f"larger than {MAX_TEXT_BYTES} bytes")
        values = yaml.load(text.decode("utf-8"), Loader=UniqueKeyLoader)
    except (OSError, ValueError, TypeError, yaml.YAMLError) as error:  # ValueError: not UTF-8; TypeError: a list as a key
        raise ConfigError(f"--config {path}: cannot read it ({one_line(error)})") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of keys to values, got a {type(values).__name__}")
    hints = typing.get_type_hints(script.Args, include_extras=True)
    settings: dict = {}
    for key, value in values.items():
        if key == "base_config":
            if value != CONFIG_BASE:
                raise ConfigError(f"--config {path}: base_config '{value}' is not this script's ('{CONFIG_BASE}')")
            continue
        target, implied = CONFIG_KEYS.get(key, (key, {}))
        if target not in hints or target in ("config", "resume", "evaluate"):
            raise ConfigError(f"--config {path}: unknown key {short(key)}")
        if not script.value_fits(value, hints[target]):
            raise ConfigError(f"--config {path}: {short(key)} must be {script.type_name(hints[target])}, got {short(value)}")
        if target == "env_id" and ":" in value:
            raise ConfigError(f"--config {path}: the env '{value[:100]}' imports the module before ':'; a file may "
                              f"only name registered envs. If you trust that module, pass --env-id {value[:100]}")
        settings[target] = list(value) if isinstance(value, list) else value
        for name, implied_value in implied.items():
            settings.setdefault(name, implied_value)
    for name, value in settings.items():
        if isinstance(value, list):
            settings[name] = tuple(value)
    return script.Args(**settings, config=path)
