#!/usr/bin/env python
"""Speed and memory figures side by side with their baselines: the same as ``visionkit benchmark``.

    python tools/benchmark.py --quick --out bench.json      # about a minute
    python tools/benchmark.py --only trainer_step,pipeline  # chosen rows, full size
"""

import sys

from visionkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
