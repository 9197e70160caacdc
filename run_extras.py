"""The optional part of the three scripts: what only --capture-video and --config need. A script
imports this module only when one of those flags is given (as CleanRL's scripts import cleanrl_utils
only for --save-model), so a script copied alone into an empty folder still trains, logs,
checkpoints, resumes, compiles and --evaluates; with one of these flags it says, in one `error:`
line, to copy this file beside it.

    --capture-video            video_problem: moviepy installed and the env renders headless,
                               checked before any training
    --config FILE.yaml         config_defaults: a file of defaults (the course's experiment files)
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional


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
    ConfigError, short, one_line = script.ConfigError, script.short, script.one_line
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
    except ConfigError:  # a key given twice: already one line naming the key
        raise
    except (OSError, ValueError, TypeError, yaml.YAMLError) as error:  # ValueError: not UTF-8; TypeError: a list as a key
        raise ConfigError(f"--config {path}: cannot read it ({one_line(error)})") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of keys to values, got a {type(values).__name__}")
    hints = script.flag_types()
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
    return script.args_from_flat({**settings, "config": path})
