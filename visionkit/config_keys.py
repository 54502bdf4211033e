"""Generated references: every config key from the schema, and every command from the parser.

``visionkit config keys [--task T] [--markdown]`` prints the key table; ``docs/config-keys.md``
and ``docs/cli.md`` are these functions' output, committed, and ``tests/test_docs.py`` fails when
they differ from what the code generates (so a key's help, type or default never drifts from its
documentation).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from visionkit.registry import TASKS
from visionkit.schema import Field, base_schema, flatten

#: the command that rewrites the committed pages (named by the test when they differ)
REGENERATE = "python tools/docs.py"
WIDTH = 100  # argparse's help width for the CLI page, fixed so the page does not follow the terminal


def _type(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type(x) for x in t)
    if isinstance(t, list):
        return f"list[{_type(t[0])}]"
    return getattr(t, "__name__", str(t))


def _value(v) -> str:
    """A value as it is written in YAML."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, str):
        return repr(v) if v == "" else v
    return str(v)


def _allowed(f: Field) -> str:
    parts = []
    choices = f.allowed()
    if choices is not None:
        parts.append("one of: " + ", ".join(_value(c) for c in choices))
    if f.min is not None:
        parts.append(f">= {_value(f.min)}")
    if f.max is not None:
        parts.append(f"<= {_value(f.max)}")
    if f.length is not None:
        parts.append(f"{f.length} values")
    if f.nullable:
        parts.append("null allowed")
    return "; ".join(parts)


def _rows(tree: Mapping, prefix: str) -> list[tuple[str, str, str, str, str]]:
    return [(key, _type(f.type), _value(f.default), _allowed(f), f.help)
            for key, f in flatten(tree, prefix).items()]


def key_sections(task: str | None = None) -> list[tuple[str, list[tuple[str, str, str, str, str]]]]:
    """(title, rows) per section: the keys every config shares, then each task's head and data keys
    (only ``task``'s when given). A row is (key, type, default, allowed values, help)."""
    shared = base_schema()
    shared["model"].pop("head")
    sections = [("Keys every config shares", _rows(shared, ""))]
    for name in [task] if task else TASKS.names():
        cls = TASKS.get(name)
        rows = _rows(cls.head_schema(), "model.head.") + _rows(cls.data_schema(), "data.")
        sections.append((f"task: {name}", rows))
    return sections


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def keys_markdown(task: str | None = None) -> str:
    out = ["# Config keys", "",
           f"Generated from the schema by `visionkit config keys --markdown`; `{REGENERATE}` rewrites",
           "this page. Every key can be set in a config file or as `key.path=value` on the command line;",
           "see [configs.md](configs.md) for inheritance and overrides.", ""]
    for title, rows in key_sections(task):
        out += [f"## {title}", "", "| key | type | default | allowed | help |", "|---|---|---|---|---|"]
        out += [f"| `{k}` | {_cell(t)} | `{_cell(d)}` | {_cell(a)} | {_cell(h)} |" for k, t, d, a, h in rows]
        out.append("")
    return "\n".join(out)


def keys_text(task: str | None = None) -> str:
    out = []
    for title, rows in key_sections(task):
        width = max(len(r[0]) for r in rows)
        out.append(f"{title}:")
        for k, t, d, a, h in rows:
            extra = "; ".join(x for x in (a, h) if x)
            out.append(f"  {k:<{width}}  {t} = {d}" + (f"  ({extra})" if extra else ""))
        out.append("")
    return "\n".join(out)


def _subcommands(parser: argparse.ArgumentParser, path: list[str]) -> list[tuple[list[str], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:  # argparse keeps its sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _subcommands(sub, [*path, name])
    return found


def cli_markdown(parser: argparse.ArgumentParser) -> str:
    """Each command's ``--help``, in order, at a fixed width."""
    out = ["# Command-line reference", "",
           f"Generated from the argument parser (`visionkit ... --help`); `{REGENERATE}` rewrites this page.",
           "Exit codes: `0` ok, `2` config or usage error, `1` any other failure; `--debug` (anywhere on",
           "the line) shows the traceback. Config overrides (`key.path=value`) may follow the config",
           "anywhere on the line.", ""]
    for path, p in _subcommands(parser, ["visionkit"]):
        p.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=WIDTH)
        out += [f"## {' '.join(path)}", "", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(out)
