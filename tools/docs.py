#!/usr/bin/env python
"""Rewrite the generated reference pages: docs/config-keys.md (``visionkit config keys --markdown``)
and docs/cli.md (every command's ``--help``). ``tests/test_docs.py`` fails until they match the code."""

from pathlib import Path

from visionkit.cli import build_parser
from visionkit.config_keys import cli_markdown, keys_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs"

if __name__ == "__main__":
    for name, text in (("config-keys.md", keys_markdown()), ("cli.md", cli_markdown(build_parser()))):
        (DOCS / name).write_text(text)
        print(f"wrote {DOCS / name}")
