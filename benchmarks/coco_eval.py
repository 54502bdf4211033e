"""Row 6: COCO evaluation of the same predictions, ours vs plain pycocotools ``COCOeval``.

Synthetic COCO-style data: ``images`` 640 x 480 images with 0-8 objects each (random star-like
12-gon polygons from 4 to 300 px across, 10 categories, 5 % of them crowd regions stored as
RLE, as COCO stores crowds), and 20 detections per image: a jittered copy of each object (10 %
with the wrong class) and false positives elsewhere, each with a score, a box and an RLE mask.

Both sides start from the same ground-truth dicts and results list and end at the 12 summary
numbers of ``bbox`` and of ``segm``: loadRes (mask areas), evaluate, accumulate, summarize.
Ours is :class:`visionkit.evaluation.coco.CocoEvaluator` with its default backend (``auto``:
faster-coco-eval when installed), which also works out per-class AP; the baseline is plain
pycocotools. They run in alternation and each side's median counts; the row also reports the
largest difference between any of the 24 numbers (and of the precision tables), which must be
at most 1e-4.
"""

from __future__ import annotations

import contextlib
import io
import time

import numpy as np

from benchmarks import BENCHMARKS, common

FIGURE = "6 COCO evaluation ({:,} images x 20 detections, boxes + masks) vs pycocotools COCOeval"
TARGET = ">= 3 (every AP equal within 1e-4)"
TOLERANCE = 1e-4
WIDTH, HEIGHT, CATEGORIES = 640, 480, 10


def _polygon(rng, cx, cy, rx, ry, n: int = 12) -> list[float]:
    """A star-like polygon around (cx, cy): ``n`` vertices at random angles and radii."""
    angle = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(0.7, 1.0, n)
    xy = np.stack([cx + rx * r * np.cos(angle), cy + ry * r * np.sin(angle)], 1)
    return np.clip(xy, 0, [WIDTH - 1, HEIGHT - 1]).round(2).ravel().tolist()


def _rle(poly: list[float]) -> dict:
    from pycocotools import mask as mask_utils

    return mask_utils.merge(mask_utils.frPyObjects([poly], HEIGHT, WIDTH))


def synthetic(num_images: int, detections: int = 20, seed: int = 0) -> tuple[dict, list[dict]]:
    """A COCO ground-truth dict and a results list (see the module docstring)."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": WIDTH, "height": HEIGHT})
        objects = []
        for _ in range(int(rng.integers(0, 9))):
            rx, ry = np.exp(rng.uniform(np.log(2), np.log(150), 2))
            cx, cy = rng.uniform(rx, WIDTH - rx), rng.uniform(ry, HEIGHT - ry)
            poly, cat = _polygon(rng, cx, cy, rx, ry), int(rng.integers(1, CATEGORIES + 1))
            rle = _rle(poly)
            crowd = int(rng.random() < 0.05)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                         "bbox": mask_utils.toBbox(rle).tolist(), "area": float(mask_utils.area(rle)),
                         "iscrowd": crowd,
                         "segmentation": {"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode()}
                         if crowd else [poly]})
            objects.append((cx, cy, rx, ry, cat))
        for k in range(detections):
            if k < len(objects) and rng.random() < 0.9:  # a hit, roughly where the object is
                cx, cy, rx, ry, cat = objects[k]
                j = rng.normal(0, 0.1, 4)
                cx, cy, rx, ry = cx + j[0] * rx, cy + j[1] * ry, rx * np.exp(j[2]), ry * np.exp(j[3])
                if rng.random() < 0.1:
                    cat = int(rng.integers(1, CATEGORIES + 1))
                score = rng.uniform(0.3, 1.0)
            else:  # a false positive anywhere
                rx, ry = np.exp(rng.uniform(np.log(2), np.log(150), 2))
                cx, cy = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
                cat, score = int(rng.integers(1, CATEGORIES + 1)), rng.uniform(0.0, 0.7)
            rle = _rle(_polygon(rng, cx, cy, rx, ry))
            box = np.asarray(mask_utils.toBbox(rle)) + rng.normal(0, 1.0, 4)  # boxes and masks differ
            box[2:] = np.maximum(box[2:], 1.0)
            results.append({"image_id": image_id, "category_id": cat, "bbox": box.round(2).tolist(),
                            "score": round(float(score), 5),
                            "segmentation": {"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode()}})
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, CATEGORIES + 1)]
    return {"images": images, "annotations": anns, "categories": categories}, results


def pycocotools_stats(dataset: dict, results: list[dict]) -> dict[str, tuple]:
    """Plain pycocotools, as its README uses it: per IoU type a COCO index, loadRes, COCOeval
    evaluate/accumulate/summarize. Each API adds keys to the dicts it is handed, so both sides
    copy them one level deep; for segm the box is dropped so loadRes takes the mask's area."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = {}
    for iou_type in ("bbox", "segm"):
        res = [{k: v for k, v in r.items() if iou_type == "bbox" or k != "bbox"} for r in results]
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = {**dataset, "annotations": [dict(a) for a in dataset["annotations"]]}
            gt.createIndex()
            ev = COCOeval(gt, gt.loadRes(res), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[iou_type] = (np.asarray(ev.stats, dtype=float), np.asarray(ev.eval["precision"]))
    return out


def ours_stats(dataset: dict, results: list[dict], backend: str = "auto") -> tuple[dict[str, tuple], str]:
    """visionkit's evaluator on the same inputs: the 12 stats and precision table per IoU type."""
    from visionkit.evaluation.coco import CocoEvaluator

    cats = dataset["categories"]
    ev = CocoEvaluator([c["name"] for c in cats], [c["id"] for c in cats], masks=True, backend=backend)
    ev.add_coco(dataset["images"], dataset["annotations"], results)
    ev.compute()
    return {t: (s.stats, s.precision) for t, s in ev.scores.items()}, ev.backend


def max_difference(a: dict[str, tuple], b: dict[str, tuple]) -> tuple[float, float]:
    """Largest absolute difference of the 12 stats and of the precision tables, over both IoU types."""
    stats = max(float(np.abs(a[t][0] - b[t][0]).max()) for t in ("bbox", "segm"))
    precision = max(float(np.abs(a[t][1] - b[t][1]).max()) for t in ("bbox", "segm"))
    return stats, precision


@BENCHMARKS.register("coco_eval")
def coco_eval(quick: bool, images: int | None = None, repeats: int | None = None) -> list[dict]:
    """``images`` and ``repeats`` override the sizes (5,000 and 3; quick: 500 and 2)."""
    images = images or (500 if quick else 5000)
    repeats = repeats or (2 if quick else 3)
    start = time.perf_counter()
    dataset, results = synthetic(images)
    setup = time.perf_counter() - start
    got: dict = {}

    def ours() -> float:
        t = time.perf_counter()
        got["ours"], got["backend"] = ours_stats(dataset, results)
        return time.perf_counter() - t

    def baseline() -> float:
        t = time.perf_counter()
        got["base"] = pycocotools_stats(dataset, results)
        return time.perf_counter() - t

    t_ours, t_base = common.alternate(ours, baseline, repeats)
    stats_diff, precision_diff = max_difference(got["ours"], got["base"])
    info = common.details(f"CocoEvaluator (backend auto -> {got['backend']}) vs pycocotools COCOeval",
                          [HEIGHT, WIDTH], f"{images} images x 20 detections", repeats, "cpu",
                          images=images, detections=len(results), instances=len(dataset["annotations"]),
                          crowd=sum(a["iscrowd"] for a in dataset["annotations"]),
                          backend=got["backend"], max_abs_stat_difference=stats_diff,
                          max_abs_precision_difference=precision_diff,
                          ours_seconds=t_ours, baseline_seconds=t_base, setup_seconds=round(setup, 2),
                          bbox_stats=got["base"]["bbox"][0].round(4).tolist(),
                          segm_stats=got["base"]["segm"][0].round(4).tolist())
    r = common.row(FIGURE.format(images), images / common.median(t_ours),
                   images / common.median(t_base), TARGET, "images/s", info,
                   note=f"max |AP difference| over the 24 stats: {stats_diff:.2g} (tolerance {TOLERANCE:g})")
    if stats_diff > TOLERANCE:
        r["met"] = False
        r["note"] += "; the numbers DIFFER from pycocotools"
    if got["backend"] == "pycocotools":
        r["note"] += "; faster-coco-eval is not installed, so ours runs pycocotools too"
    return [r]

