"""Run by tests/test_distributed.py, alone or under torchrun: ``visionkit eval``'s function on
several (config, checkpoint) pairs in one process group, each writing ``OUT/<name>/eval_val.json``
(and its detections json), so one launch scores every task.

Usage: python tests/ddp_evaluate.py OUT NAME=CONFIG::CHECKPOINT [...]
"""

import sys
from pathlib import Path

from visionkit import api

if __name__ == "__main__":
    out = Path(sys.argv[1])
    for item in sys.argv[2:]:
        name, _, rest = item.partition("=")
        config, _, checkpoint = rest.partition("::")
        api.evaluate(config, checkpoint, "val", output=out / name / "eval_val.json", log=lambda *a: None)
