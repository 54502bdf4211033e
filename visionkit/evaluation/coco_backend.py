"""Which COCOeval scores detections: pycocotools' reference one, or faster-coco-eval's C++ one.

``faster-coco-eval`` re-implements COCOeval's per-image matching (``evaluateImg``) and
``accumulate`` in C++ and keeps pycocotools' ``_prepare``/``computeIoU``/``summarize`` logic; on
the same inputs it gives the same 12 summary numbers and the same precision table (checked in
``tests/test_coco_fast.py`` against pycocotools), several times faster because pycocotools
spends most of its time in those two Python loops.

``auto`` takes faster-coco-eval when it is installed and pycocotools otherwise, so a missing
optional package never changes a number, only the time it takes. Both sides are fed the same
inputs the same way: a ground-truth dict (``images``, ``annotations``, ``categories``) and a
list of result dicts, copied one level deep (each API adds keys such as ``ignore`` or ``rle`` to
the dicts it is given; a full deep copy of the RLE strings would cost more than the evaluation).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from dataclasses import dataclass

import numpy as np

from visionkit.errors import ConfigError, DataError

BACKENDS = ("auto", "pycocotools", "faster_coco_eval")


def fast_available() -> bool:
    return importlib.util.find_spec("faster_coco_eval") is not None


def resolve(name: str) -> str:
    """The backend ``name`` stands for: ``auto`` picks faster_coco_eval when installed."""
    if name not in BACKENDS:
        raise ConfigError(f"COCO evaluation backend '{name}' is not one of {', '.join(BACKENDS)} "
                          f"(config key data.coco_eval.backend)")
    if name == "auto":
        return "faster_coco_eval" if fast_available() else "pycocotools"
    if name == "faster_coco_eval" and not fast_available():
        raise ConfigError("data.coco_eval.backend is faster_coco_eval but the package is not installed: "
                          "pip install faster-coco-eval (or visionkit[fast]), or use auto/pycocotools")
    return name


@dataclass
class CocoScore:
    """What one COCOeval run gives: the 12 summary numbers, the precision table
    (iou x recall x class x area x max dets) and the category ids along its class axis."""

    stats: np.ndarray
    precision: np.ndarray
    cat_ids: list[int]


def _quiet(*_args, **_kw) -> None:
    pass


def _chunked(fn, rles: list[dict]) -> np.ndarray:
    parts = [fn(rles[i:i + 255]) for i in range(0, len(rles), 255)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _load_results(gt, coco_cls, mask_api, results: list[dict], iou_type: str):
    """What ``gt.loadRes(results)`` builds for box or mask results, with the masks' areas and
    boxes worked out in one call over all of them instead of one call per result (loadRes's
    Python loop over the mask API would otherwise be a large share of the fast backend's time).

    As loadRes: ids 1..N in order, ``iscrowd`` 0, ``area`` the box's (bbox) or the mask's
    (segm, whose box is the mask's bounding box), the ground truth's images and categories.
    """
    known = {im["id"] for im in gt.dataset["images"]}
    stray = {r["image_id"] for r in results} - known
    if stray:
        raise DataError(f"results name image ids {sorted(stray)[:10]} that the ground truth does not have")
    if iou_type == "segm":
        rles = [r["segmentation"] for r in results]
        # pycocotools 2.0.11's area() fails on lists of more than 255 masks (its length goes
        # through a uint8 array under numpy 2), so both APIs are fed chunks of 255
        areas, boxes = _chunked(mask_api.area, rles), _chunked(mask_api.toBbox, rles)
        anns = [{**{k: v for k, v in r.items() if k != "bbox"}, "area": areas[i], "bbox": boxes[i],
                 "id": i + 1, "iscrowd": 0} for i, r in enumerate(results)]
    else:
        anns = []
        for i, r in enumerate(results):
            x, y, w, h = r["bbox"]
            ann = {**r, "area": w * h, "id": i + 1, "iscrowd": 0}
            if "segmentation" not in ann:  # loadRes gives a box result the box as its polygon
                ann["segmentation"] = [[x, y, x, y + h, x + w, y + h, x + w, y]]
            anns.append(ann)
    dt = coco_cls()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                  "annotations": anns}
    dt.createIndex()
    return dt


def evaluate(ground_truth: dict, results: list[dict], iou_type: str, backend: str = "auto",
             threads: int = 1) -> CocoScore:
    """Score ``results`` (COCO results-format dicts) against ``ground_truth`` (a COCO dataset
    dict) for ``iou_type`` ``bbox`` or ``segm``: load the results (as loadRes), evaluate,
    accumulate, summarize.

    For ``segm`` the results' ``bbox`` is replaced by the mask's, as loadRes would otherwise take
    the box's area instead of the mask's for the small/medium/large ranges. ``threads`` bounds
    faster-coco-eval's mask-IoU worker threads (pycocotools has none).
    """
    backend = resolve(backend)
    if backend == "pycocotools":
        from pycocotools import mask as mask_api
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        make_eval = COCOeval
    else:
        from faster_coco_eval import COCO, COCOeval_faster
        from faster_coco_eval.core import mask as mask_api

        def make_eval(gt, dt, kind):
            return COCOeval_faster(gt, dt, kind, print_function=_quiet, rle_iou_max_workers=max(1, threads))

    with contextlib.redirect_stdout(io.StringIO()):  # both print progress lines
        gt = COCO()
        gt.dataset = {"images": ground_truth["images"],
                      "annotations": [dict(a) for a in ground_truth["annotations"]],
                      "categories": ground_truth["categories"]}
        gt.createIndex()
        dt = _load_results(gt, COCO, mask_api, results, iou_type)
        ev = make_eval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return CocoScore(np.asarray(ev.stats[:12], dtype=float), np.asarray(ev.eval["precision"]),
                     [int(c) for c in ev.params.catIds])
