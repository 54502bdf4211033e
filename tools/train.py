#!/usr/bin/env python
"""Train from a config: the same as ``visionkit train CONFIG [key=value ...] [--run-dir D] [--resume [P]]``.

Works under torchrun too: ``torchrun --nproc_per_node=2 tools/train.py CONFIG``.
"""

import sys

from visionkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
