"""``visionkit config init TASK --data PATH``: a complete, commented config for the user's data.

The task's starter (``Task.starter``, see :mod:`visionkit.tasks.starters`) reads the data and
writes the body; this module adds the header (what was found, what the config is sized for),
checks the result against the schema and writes it, never over an existing file.
``visionkit train --task T --data PATH`` trains from the same text without a file of the user's.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from visionkit.config import Config, load_config
from visionkit.errors import ConfigError, DataError
from visionkit.registry import TASKS
from visionkit.tasks.starters import Machine, align_comments


def starter_tasks() -> list[str]:
    """The tasks that offer ``config init``."""
    return [n for n in TASKS.names() if TASKS.get(n).starter is not None]


def starter_text(task: str, data: str | Path, machine: Machine | None = None) -> str:
    """The config text for ``data`` (a folder laid out as ``task``'s reader expects)."""
    if task not in starter_tasks():
        raise ConfigError(f"no starter config for task '{task}'; choose one of {', '.join(starter_tasks())}")
    root = Path(data).expanduser().resolve()
    if not root.is_dir():
        state = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"--data '{data}' {state}; give the folder that holds your data")
    machine = machine or Machine.detect()
    starter = TASKS.get(task).starter(root, machine)
    found = "\n".join(f"#   {line}" for line in starter.found)
    return (f"# {task} on {root.name}: written by `visionkit config init {task} --data {shlex.quote(str(data))}`\n"
            f"# Found in {root}:\n{found}\n"
            f"# Sized for {machine.what}.\n"
            "# Every key and its default: `visionkit config show THIS_FILE`; change one for a run with\n"
            "# key.path=value after the file name (e.g. train.epochs=5).\n\n" + align_comments(starter.body))


def default_out(task: str, data: str | Path) -> Path:
    return Path(f"{task}_{Path(data).expanduser().resolve().name}.yaml")


def init_config(task: str, data: str | Path, out: str | Path | None = None,
                machine: Machine | None = None) -> tuple[Path, Config]:
    """Write the starter config for ``data`` to ``out`` (default ``<task>_<folder>.yaml`` here)
    and return its path and the loaded config; an existing ``out`` is never overwritten."""
    path = Path(out) if out else default_out(task, data)
    if path.exists():
        raise ConfigError(f"'{path}' already exists; choose another --out or delete it first")
    text = starter_text(task, data, machine)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    try:
        return path, load_config(path)
    except ConfigError:  # a starter that writes an invalid config is a bug: leave no file behind
        path.unlink()
        raise
