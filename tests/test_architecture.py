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


# -- no decisions by a task's name outside tasks/ and the registries ---------------------------------
#: where task names may be spelled out: the tasks themselves, the registries, the benchmark harness
#: (leaving the package), and the module that lists what registers
NAME_DECISIONS_ALLOWED = ("tasks/", "registry.py", "registrations.py", "bench/")


def _task_names() -> set[str]:
    from visionkit.registry import TASKS

    return set(TASKS)


def _strings(node: ast.AST) -> list[str]:
    """The string constants ``node`` is, or holds as a literal tuple/list/set."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def _is_task_of_config(node: ast.AST) -> bool:
    """``cfg.task``, ``self.cfg.task``, ``meta["task"]``, ``task_name``: a task's name, not a Task."""
    if isinstance(node, ast.Attribute) and node.attr == "task":
        owner = node.value
        return (isinstance(owner, ast.Name) and owner.id == "cfg") or (
            isinstance(owner, ast.Attribute) and owner.attr == "cfg")
    if isinstance(node, ast.Subscript):
        return _strings(node.slice) == ["task"]
    return isinstance(node, ast.Name) and node.id == "task_name"


def _is_registry(node: ast.AST) -> bool:
    from visionkit import registry

    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    return isinstance(getattr(registry, name or "", None), registry.Registry)


def name_decisions(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    """(line, what) for every place ``tree`` decides by a task's name: a compare with a task name
    (``== "detection"``, ``in ("segmentation", "depth")``), a table keyed by task names, a match
    on one, ``getattr`` by one, or a lookup of the config's task name in anything but a registry
    (``OUTPUTS[cfg.task]``, ``cfg.task in VIEWS``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for op, left, right in zip(node.ops, [node.left, *node.comparators], node.comparators):
                if isinstance(op, (ast.In, ast.NotIn)):
                    hit = set(_strings(right)) & names if not isinstance(right, ast.Constant) else set()
                    if not hit and _is_task_of_config(left) and not _is_registry(right):
                        found.append((node.lineno, "a lookup of the task's name"))
                else:
                    hit = (set(_strings(left)) | set(_strings(right))) & names
                if hit:
                    found.append((node.lineno, f"compares with {', '.join(sorted(hit))}"))
        elif isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and k.value in names}
            if len(keys) >= 2:  # one key may be a batch's "depth" or COCO's "segmentation"
                found.append((node.lineno, f"a table keyed by task names {', '.join(sorted(keys))}"))
        elif isinstance(node, ast.MatchValue) and set(_strings(node.value)) & names:
            found.append((node.lineno, f"matches {_strings(node.value)[0]}"))
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) >= 2:
                if set(_strings(node.args[1])) & names or _is_task_of_config(node.args[1]):
                    found.append((node.lineno, "getattr by a task's name"))
            elif (isinstance(func, ast.Attribute) and func.attr == "get" and node.args
                  and _is_task_of_config(node.args[0]) and not _is_registry(func.value)):
                found.append((node.lineno, "a lookup of the task's name"))
        elif isinstance(node, ast.Subscript) and _is_task_of_config(node.slice):
            found.append((node.lineno, "a lookup of the task's name"))
    return sorted(found)


def test_the_name_finder_finds_each_form():
    source = '''
if cfg.task == "detection": pass
ok = task_name in ("segmentation", "x")
OUTPUTS = {"classification": 1, "depth": 2}
getattr(module, cfg.task)
VIEWS[cfg.task]
if self.cfg.task not in VIEWS: pass
match meta["task"]:
    case "depth": pass
TASKS.get(cfg.task); cfg.task in TASKS; {"depth": 1}; "segmentation" in annotation; task.loss(batch)
'''
    lines = [line for line, _ in name_decisions(ast.parse(source), {"classification", "detection",
                                                                    "segmentation", "depth"})]
    assert lines == [2, 3, 4, 5, 6, 7, 9]


def test_no_module_outside_tasks_decides_by_a_task_name():
    names = _task_names()
    problems = []
    for path in _modules(skip=NAME_DECISIONS_ALLOWED).values():
        for line, what in name_decisions(ast.parse(path.read_text(), str(path)), names):
            problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert not problems, ("decided by a task's name outside visionkit/tasks/ (ask the task object instead, "
                          "see visionkit/tasks/base.py):\n" + "\n".join(problems))
