"""Head settings as dataclasses: each option is written once, as a field with its default, its
limits and a line of help; the task turns the fields into its ``model.head`` schema
(:func:`visionkit.tasks.base.settings_schema`) and the config back into the dataclass.
"""

from __future__ import annotations

import dataclasses

from visionkit.registry import HEADS


def option(default, help: str = "", **limits):
    """A settings field: ``limits`` are :class:`visionkit.schema.Field`'s (``min``, ``max``,
    ``choices``, ``length``); a list default is copied for each instance. (It returns a
    ``dataclasses.field``, which ruff's RUF009 cannot see where the type is mutable.)"""
    meta = {"help": help, **limits}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def head_names(task: str) -> list[str]:
    """The heads registered for ``task`` (``HEADS`` keys ``"<task>.<name>"``), by name."""
    prefix = f"{task}."
    return [k[len(prefix):] for k in HEADS if k.startswith(prefix)]


def head_choices(task: str):
    """``choices`` for a ``name`` option: read when a config is validated, after registration."""
    return lambda: head_names(task)


def build_head(task: str, name: str, *args, **kwargs):
    """Build the head ``name`` registered for ``task``."""
    return HEADS.build(f"{task}.{name}", *args, **kwargs)
