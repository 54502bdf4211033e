"""Row 6: COCO evaluation of the same predictions against plain pycocotools ``COCOeval``.

The comparison needs visionkit's own COCO evaluator (``visionkit.evaluation.coco``), which the
detection work adds. Until it exists this benchmark reports a row saying so rather than a number.
"""

from __future__ import annotations

import importlib.util

from visionkit.bench import common
from visionkit.registry import BENCHMARKS

FIGURE = "6 COCO evaluation (5,000 images x 20 detections, boxes + masks) vs pycocotools COCOeval"


@BENCHMARKS.register("coco_eval")
def coco_eval(quick: bool) -> list[dict]:
    if importlib.util.find_spec("visionkit.evaluation.coco") is None:
        return [common.unavailable(FIGURE, ">= 3 (every AP equal within 1e-4)", "s",
                                   "not available yet: visionkit has no COCO evaluator "
                                   "(visionkit.evaluation.coco) to compare")]
    return [common.unavailable(FIGURE, ">= 3 (every AP equal within 1e-4)", "s",
                               "not measured yet: visionkit.evaluation.coco exists but this row "
                               "has not been wired to it")]
