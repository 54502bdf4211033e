"""Name -> builder tables for everything a config can name.

Only registered names build objects: a config never carries an import path (see docs/reliability.md,
"what survives what"). Registering a name twice is a programming error and fails at import.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator


class RegistryError(KeyError):
    """An unknown or duplicate name; the message lists the close names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


def close_matches(name: str, choices) -> list[str]:
    """Up to three choices that look like ``name`` (typos, wrong case, missing suffix)."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
    out = [lowered[f] for f in found]
    # a prefix match helps for families: "resnet" -> resnet18, resnet34, ...
    for c in choices:
        if len(out) >= 3:
            break
        if c.lower().startswith(name.lower()) and c not in out:
            out.append(c)
    return out


class Registry:
    """A named table of builders: ``@BACKBONES.register("resnet18")``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}

    def register(self, name: str | None = None, obj: Callable | None = None):
        def add(o: Callable) -> Callable:
            key = name or o.__name__
            if key in self._items:
                raise RegistryError(f"{self.kind} '{key}' is registered twice")
            self._items[key] = o
            return o

        return add(obj) if obj is not None else add

    def get(self, name: str) -> Callable:
        if name not in self._items:
            raise RegistryError(self.unknown_message(name))
        return self._items[name]

    def unknown_message(self, name: str) -> str:
        close = close_matches(str(name), self._items)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} '{name}'{hint} (registered: {', '.join(sorted(self._items))})"

    def build(self, name: str, *args, **kwargs):
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


BACKBONES = Registry("backbone")
NECKS = Registry("neck")
#: "<task>.<head>" -> head builder; ``model.head.name`` of a task picks among the names under its prefix
HEADS = Registry("head")
TASKS = Registry("task")
DATASETS = Registry("dataset")
#: target kind (``Task.target_kind``) -> ``builder(cfg, root) -> Source``: the ``shapes`` data set's
#: scenes with those targets
SHAPES_VIEWS = Registry("shapes view")
