"""The package's architecture rules, checked on its source with ``ast`` (no import runs):

- no import cycle between visionkit's modules, counting imports inside functions too (a cycle
  that only works because one side imports late is still two modules that need each other);
- no module outside ``visionkit/tasks/`` and the registries decides anything by a task's name:
  the task object answers (see ``visionkit/tasks/base.py``), so a new task touches only
  ``tasks/``, its head, its data reader and configs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import visionkit

PACKAGE = Path(visionkit.__file__).parent


def _modules(skip: tuple[str, ...] = ()) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package but those under ``skip``."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        if any(rel.relative_to("visionkit").as_posix().startswith(s) for s in skip):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(module: str, path: Path, node: ast.AST, known: dict[str, Path]) -> list[str]:
    """The visionkit modules one import statement names (``from x import y``: ``x.y`` when that
    is a module, else ``x``; relative imports resolved against ``module``'s package)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
          and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        names = [node.args[0].value]  # importlib.import_module("visionkit.x") is an import too
    else:
        return []
    out = []
    for name in names:
        if name.split(".")[0] != "visionkit":
            continue
        while name not in known and "." in name:  # an attribute of a module: the module
            name = name.rsplit(".", 1)[0]
        if name != module:
            out.append(name)
    return out


def import_graph(skip: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """Module -> the visionkit modules it imports, anywhere in its file."""
    known = _modules(skip)
    graph = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[module] = {t for node in ast.walk(tree) for t in _imported(module, path, node, known) if t in known}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_late_relative_and_from_imports():
    graph = import_graph()
    assert "visionkit.schema" in graph["visionkit.config"]  # from visionkit.schema import validate
    assert "visionkit.data.datasets.sources" in graph["visionkit.registrations"]  # from x import module
    assert "visionkit.export.runtime" in graph["visionkit.cli"]  # inside a function


def test_no_import_cycle():
    # visionkit/bench is leaving the package (a top-level benchmarks/ folder); it is not part of it
    cycle = find_cycle(import_graph(skip=("bench/",)))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
