#!/usr/bin/env python
"""Speed and memory figures side by side with their baselines, run from a checkout.

    python tools/benchmark.py --list                        # the rows and what each measures
    python tools/benchmark.py --quick --out bench.json      # about a minute
    python tools/benchmark.py --only trainer_step,pipeline  # chosen rows, full size

The harness lives in ``benchmarks/`` beside this folder, outside the installed package, so the
checkout's root goes first on ``sys.path``: it finds ``benchmarks`` and times this checkout's
``visionkit`` without PYTHONPATH or an install.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import main

if __name__ == "__main__":
    sys.exit(main())
