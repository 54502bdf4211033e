"""YAML configs: load, ``_base_`` inheritance, ``key.path=value`` overrides, schema validation.

Every check runs before any data is read, and every failure is one :class:`ConfigError` line that
names the file, the key path and, for typos, the closest valid key. The schema (what keys exist,
their types, defaults and allowed values) lives in :mod:`visionkit.schema`; tasks add their own
``model.head`` keys through their ``head_schema``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from visionkit.config_names import resolve_base, resolve_config
from visionkit.errors import ConfigError
from visionkit.registry import close_matches
from visionkit.schema import flatten, validate  # noqa: F401  (flatten: also read from here)

CMDLINE = "command line"


# -- YAML ----------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader (no python tags) that rejects duplicate keys and reads ``1e-3`` as a float."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"duplicate key '{key}' at line {key_node.start_mark.line + 1} "
                f"(first at line {seen[key].start_mark.line + 1}); keep one of them"
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.1 (PyYAML) wants a dot in floats; YAML 1.2 and every user reads 1e-3 as a number.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text; a config is a YAML text file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file '{path}': {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.constructor.ConstructorError as e:
        raise ConfigError(
            f"{path}: line {e.problem_mark.line + 1}: {e.problem}; only plain YAML values are "
            "allowed (python tags are refused)"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(f"{path}: {where}invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


# -- merging with origins ---------------------------------------------------------------------------
def _merge(dst: dict, src: Mapping, origins: dict, source: str, prefix: str = "") -> None:
    """Merge ``src`` into ``dst``: mappings recursively, everything else (lists too) replaced."""
    for k, v in src.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            origins[path] = source
            _merge(dst[k], v, origins, source, path + ".")
        else:
            dst[k] = copy.deepcopy(v) if isinstance(v, (dict, list)) else v
            origins[path] = source
            _mark_children(v, origins, source, path)


def _mark_children(v: Any, origins: dict, source: str, path: str) -> None:
    if isinstance(v, Mapping):
        for k, sub in v.items():
            origins[f"{path}.{k}"] = source
            _mark_children(sub, origins, source, f"{path}.{k}")


def _load_tree(path: Path, origins: dict, stack: tuple[Path, ...] = ()) -> dict:
    key = path.resolve()
    if key in stack:
        chain = " -> ".join(str(p) for p in (*stack, key))
        raise ConfigError(f"{stack[-1]}: _base_ cycle: {chain}")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a relative path or a list of them")
    merged: dict = {}
    for b in bases:
        base_path = resolve_base(b, path.parent, path)  # beside the file, else a shipped config
        if not base_path.is_file():
            raise ConfigError(f"{path}: _base_ '{b}' is a folder ({base_path}); name a YAML file in it")
        _merge(merged, _load_tree(base_path, origins, (*stack, key)), origins, str(base_path))
    _merge(merged, data, origins, str(path))
    return merged


def parse_override(token: str) -> tuple[str, Any]:
    """``a.b.c=value`` -> ("a.b.c", value parsed as a YAML scalar or flow list/mapping)."""
    if "=" not in token:
        raise ConfigError(f"{CMDLINE}: override '{token}' must look like key.path=value")
    key, _, raw = token.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{CMDLINE}: override '{token}' has an empty key")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except (yaml.YAMLError, ConfigError) as e:
        raise ConfigError(f"{CMDLINE}: cannot parse the value of '{token}': {e}") from None
    return key, value


def apply_overrides(cfg: dict, overrides: Iterable[str], origins: dict) -> None:
    for token in overrides:
        key, value = parse_override(token)
        parts = key.split(".")
        node = cfg
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
                origins.setdefault(".".join(parts[: i + 1]), CMDLINE)  # a typo there is the command line's
            elif not isinstance(nxt, dict):
                raise ConfigError(
                    f"{CMDLINE}: cannot set '{key}': '{'.'.join(parts[: i + 1])}' is not a mapping"
                )
            node = nxt
        node[parts[-1]] = value
        origins[key] = CMDLINE
        _mark_children(value, origins, CMDLINE, key)


# -- the Config object ------------------------------------------------------------------------------
class Config(dict):
    """A validated, resolved config: a nested dict with attribute access (``cfg.train.epochs``)."""

    def __init__(self, data: Mapping | None = None, source: str | None = None, origins: dict | None = None):
        super().__init__()
        for k, v in (data or {}).items():
            self[k] = Config(v) if isinstance(v, Mapping) and not isinstance(v, Config) else v
        self.source = source
        self.origins = dict(origins or {})  # dotted key -> the file (or "command line") that set it

    def where(self, key: str) -> str:
        """Where ``key`` (or the keys under it) was set, for an error about it: its file, the
        command line, or both; the config's own file for a default."""
        if key in self.origins:
            return self.origins[key]
        found = sorted({o for k, o in self.origins.items() if k.startswith(key + ".")})
        return " and ".join(found) if found else str(self.source)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __deepcopy__(self, memo):
        return Config(copy.deepcopy(self.to_dict(), memo), self.source, self.origins)

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def get_path(self, path: str, default: Any = None) -> Any:
        node: Any = self
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Load ``path`` with its ``_base_`` chain, apply ``key=value`` overrides, validate, fill defaults."""
    path, overrides = resolve_config(path), list(overrides)  # a file, else a shipped config's name
    origins: dict[str, str] = {}
    raw = _load_tree(path, origins)
    if not raw and not overrides:  # a file saved empty by mistake would train every default
        raise ConfigError(f"config file '{path}' holds no settings (empty, comments only, or empty _base_ "
                          "files); start from configs/quickstart.yaml or a file under configs/, or give a "
                          "key=value override (e.g. task=classification) to take every default")
    apply_overrides(raw, overrides, origins)
    resolved = validate(raw, origins, default_file=str(path))
    return Config(resolved, source=str(path), origins=origins)


def as_config(config: str | Path | Config, overrides: Iterable[str] = ()) -> Config:
    """``config`` itself when it is a :class:`Config`, else the file loaded with ``overrides``."""
    return config if isinstance(config, Config) else load_config(config, list(overrides))


def suggestion(key: str, valid: Iterable[str]) -> str:
    close = close_matches(key, list(valid))
    return f"; did you mean '{close[0]}'?" if close else ""
