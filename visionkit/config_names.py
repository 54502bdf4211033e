"""The shipped configs: where they are, finding one by name, and listing them.

The recipes live in the checkout's top-level ``configs/`` (the layout people know) and install
with the package as ``visionkit/configs/`` (package data: see ``setup.py``), so both a checkout
(editable install) and a plain ``pip install`` find them. A config argument is a path when that
file exists, else a name under the shipped folder: ``quickstart``,
``detection/mask_rcnn_resnet18_fpn_shapes`` (``.yaml`` optional, and ``configs/`` in front as in a
checkout) or a file name that only one shipped config has. A ``_base_`` that is not beside its file is looked up the same way, so a copy
of a recipe works wherever it is copied.
"""

from __future__ import annotations

from pathlib import Path

from visionkit.errors import ConfigError
from visionkit.registry import close_matches

SUFFIXES = (".yaml", ".yml")


def shipped_dir() -> Path:
    """The folder of the shipped configs: the installed package data, else the checkout's."""
    package = Path(__file__).resolve().parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


def _strip(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def shipped_files() -> dict[str, Path]:
    """Every shipped YAML file by name (its path below the shipped folder, no suffix), fragments too."""
    root = shipped_dir()
    if not root.is_dir():
        return {}
    files = sorted(p for s in SUFFIXES for p in root.rglob(f"*{s}") if p.is_file())
    return {_strip(p.relative_to(root).as_posix()): p for p in files}


def is_recipe(name: str) -> bool:
    """A config meant to be trained: not a ``_base_`` fragment (``_base_/...``, ``detection/_x``)."""
    return not any(part.startswith("_") for part in name.split("/"))


def find_shipped(name: str) -> Path | None:
    """The shipped file ``name`` names (``a/b``, ``a/b.yaml``, or a base name only one file has)."""
    files = shipped_files()
    key = _strip(name.replace("\\", "/")).lstrip("/")
    while key.startswith(("./", "../", "configs/")):  # ../_base_/runtime.yaml; configs/quickstart.yaml
        key = key.split("/", 1)[1]                      # typed outside a checkout
    if key in files:
        return files[key]
    tail = [p for n, p in files.items() if n.endswith("/" + key)]
    return tail[0] if len(tail) == 1 else None


def resolve_config(path: str | Path) -> Path:
    """``path`` itself when that file exists, else the shipped config it names; a ConfigError
    naming the closest shipped configs when it is neither."""
    given = Path(path)
    if given.exists():
        return given
    found = find_shipped(str(path))
    if found is not None:
        return found
    names = [n for n in shipped_files() if is_recipe(n)]
    key = _strip(str(path))
    close = close_matches(key, names) or close_matches(Path(key).name, [Path(n).name for n in names])
    close = [next(n for n in names if n == c or n.endswith("/" + c)) for c in close]
    hint = f"; closest shipped configs: {', '.join(close)}" if close else ""
    raise ConfigError(f"config file '{path}' does not exist and is no shipped config name{hint} "
                      "(`visionkit config list` shows them all)")


def resolve_base(base: str, parent: Path, where: Path) -> Path:
    """A ``_base_`` entry of ``where``: beside the file first, then by name among the shipped configs."""
    beside = parent / base
    if beside.exists():
        return beside
    found = find_shipped(base)
    if found is not None:
        return found
    raise ConfigError(f"{where}: _base_ file '{base}' not found: looked at {beside} (beside the file) and "
                      f"for a shipped config '{_strip(base).lstrip('./')}' in {shipped_dir()}")


def description(path: Path) -> str:
    """The first line of the file's leading comment (the recipes start with what they are), or ''."""
    first = path.read_text().split("\n", 1)[0]
    return first.lstrip("#").strip() if first.startswith("#") else ""


def list_shipped() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every shipped recipe (fragments left out)."""
    return [(n, description(p)) for n, p in shipped_files().items() if is_recipe(n)]
