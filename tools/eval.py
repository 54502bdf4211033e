#!/usr/bin/env python
"""Score a checkpoint: the same as ``visionkit eval CONFIG --checkpoint PATH [--split val|test]``."""

import sys

from visionkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
