"""COCO box and mask AP through COCOeval, on whatever split the trainer scores.

The ground truth is collected from the batches (boxes, labels, masks, ``iscrowd``, ``area``), so
the same evaluator scores COCO files and the shapes scenes; crowd regions are passed as
``iscrowd=1`` and COCOeval ignores detections that fall on them. Predictions use 0-based labels;
``category_ids[label]`` maps them back to the data set's ids for the results file.

Metrics (0..1): ``bbox_AP`` (AP@[.5:.95]), ``bbox_AP50``, ``bbox_AP75``, ``bbox_APs/m/l`` and the
same with ``segm_`` for masks. A size range with no ground truth in the split is left out rather
than reported as COCOeval's -1. Per-class AP goes to :meth:`details`; :meth:`write` saves the
detections as a standard COCO results json that any COCO tool re-scores.

``backend`` picks the COCOeval (:mod:`visionkit.evaluation.coco_backend`): pycocotools, the
reference, or faster-coco-eval, which gives the same numbers several times faster; ``auto`` (the
default, config key ``data.coco_eval.backend``) takes the fast one when it is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from visionkit.errors import DataError
from visionkit.evaluation import coco_backend
from visionkit.evaluation.base import Evaluator, interleave

_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _rle(mask: torch.Tensor) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.to(torch.uint8).cpu().numpy()))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _xywh(box) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


class CocoEvaluator(Evaluator):
    """Accumulates ground truth and detections image by image; scores them in :meth:`compute`."""

    def __init__(self, classes: list[str], category_ids: list[int] | None = None, masks: bool = True,
                 backend: str = "auto"):
        self.classes = list(classes)
        self.category_ids = list(category_ids or range(1, len(self.classes) + 1))
        self.iou_types = ("bbox", "segm") if masks else ("bbox",)
        self.backend = coco_backend.resolve(backend)
        self.reset()

    def metric_names(self) -> set[str]:
        return {f"{t}_{s}" for t in self.iou_types for s in _STATS}

    def reset(self) -> None:
        self.images: list[dict] = []
        self.gt: list[dict] = []
        self.results: list[dict] = []
        self._per_class: dict[str, dict[str, float]] = {}
        #: each IoU type's full COCOeval result (12 stats, precision table) of the last compute()
        self.scores: dict[str, coco_backend.CocoScore] = {}
        self._next_id = 0
        self._own_ids = False  # image ids counted here (the batches carried none)

    def process(self, batch: dict, predictions: list[dict]) -> None:
        if "boxes" not in batch or "labels" not in batch:
            raise DataError("the split has no boxes/labels to score detections against")
        ids = batch.get("image_id")
        self._own_ids |= ids is None
        for i, pred in enumerate(predictions):
            image_id = int(ids[i]) if ids is not None else self._next_id
            self._next_id = max(self._next_id, image_id) + 1
            h, w = batch["images"][i].shape[-2:]
            self.images.append({"id": image_id, "width": int(w), "height": int(h)})
            self._add_truth(batch, i, image_id)
            self._add_results(pred, image_id)

    def add_coco(self, images: list[dict], annotations: list[dict], results: list[dict]) -> None:
        """Add ground truth and detections already in COCO form: a data set's ``images`` and
        ``annotations`` (polygons or RLE, ``iscrowd``, ``area``) and a results list as
        :meth:`write` saves it. The dicts are kept, not copied; category ids must be this
        evaluator's."""
        known = set(self.category_ids)
        for what, items in (("annotation", annotations), ("result", results)):
            bad = {a["category_id"] for a in items} - known
            if bad:
                raise DataError(f"{what} category ids {sorted(bad)[:10]} are not among the evaluator's "
                                f"{sorted(known)[:10]}")
        self.images.extend(images)
        self.gt.extend(annotations)
        self.results.extend(results)
        self._next_id = max([self._next_id, *(im["id"] + 1 for im in images)])

    def _add_truth(self, batch: dict, i: int, image_id: int) -> None:
        boxes, labels = batch["boxes"][i], batch["labels"][i]
        masks = batch.get("masks")
        crowd = batch.get("iscrowd")
        area = batch.get("area")
        for k in range(len(labels)):
            ann = {"id": len(self.gt) + 1, "image_id": image_id,
                   "category_id": self.category_ids[int(labels[k])], "bbox": _xywh(boxes[k]),
                   "iscrowd": int(crowd[i][k]) if crowd is not None else 0}
            if masks is not None and "segm" in self.iou_types:
                ann["segmentation"] = _rle(masks[i][k])
            if area is not None:
                ann["area"] = float(area[i][k])
            elif "segmentation" in ann:
                ann["area"] = float(masks[i][k].sum())
            else:
                ann["area"] = ann["bbox"][2] * ann["bbox"][3]
            self.gt.append(ann)

    def _add_results(self, pred: dict, image_id: int) -> None:
        masks = pred.get("masks")
        for k in range(len(pred["labels"])):
            res = {"image_id": image_id, "category_id": self.category_ids[int(pred["labels"][k])],
                   "bbox": [round(v, 2) for v in _xywh(pred["boxes"][k])],
                   "score": round(float(pred["scores"][k]), 5)}
            if masks is not None and "segm" in self.iou_types:
                res["segmentation"] = _rle(masks[k])
            self.results.append(res)

    def ground_truth(self) -> dict:
        """The collected ground truth as a COCO dataset dict."""
        return {"images": self.images, "annotations": self.gt,
                "categories": [{"id": c, "name": n} for c, n in zip(self.category_ids, self.classes)]}

    def merge(self, shards: list[CocoEvaluator]) -> None:
        """Images, ground truth and detections of all ranks in sample order; annotation ids (and
        image ids this evaluator counted itself) renumbered as one process numbers them."""
        def per_image(s):
            gt, res = {}, {}
            for a in s.gt:
                gt.setdefault(a["image_id"], []).append(a)
            for r in s.results:
                res.setdefault(r["image_id"], []).append(r)
            return [(img, gt.get(img["id"], []), res.get(img["id"], [])) for img in s.images]

        own = any(s._own_ids for s in shards)
        items = interleave([per_image(s) for s in shards])  # before reset: self may be a shard
        self.reset()
        for position, (img, gt, res) in enumerate(items):
            image_id = position if own else img["id"]
            self.images.append({**img, "id": image_id})
            self.gt += [{**a, "id": len(self.gt) + k + 1, "image_id": image_id} for k, a in enumerate(gt)]
            self.results += [{**r, "image_id": image_id} for r in res]
        self._next_id = len(self.images)
        self._own_ids = own

    def compute(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        self.scores = {}
        gt = self.ground_truth()
        for iou_type in self.iou_types:
            if not self.results:  # loadRes refuses an empty list: nothing detected scores 0
                metrics.update({f"{iou_type}_{s}": 0.0 for s in _STATS[:3]})
                self._per_class[iou_type] = {n: 0.0 for n in self.classes}
                continue
            score = coco_backend.evaluate(gt, self.results, iou_type, self.backend,
                                          threads=torch.get_num_threads())
            self.scores[iou_type] = score
            for name, value in zip(_STATS, score.stats[:6]):
                if value >= 0:  # -1: no ground truth of that size in the split
                    metrics[f"{iou_type}_{name}"] = float(value)
            self._per_class[iou_type] = self._class_ap(score)
        return metrics

    def _class_ap(self, score: coco_backend.CocoScore) -> dict[str, float]:
        """AP@[.5:.95] of each class (all sizes, 100 detections), as COCOeval's summary computes it."""
        precision = score.precision  # (iou, recall, class, area, max dets)
        out = {}
        for k, cat in enumerate(score.cat_ids):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            out[self.classes[self.category_ids.index(cat)]] = float(p.mean()) if p.size else float("nan")
        return {n: v for n, v in out.items() if v == v}  # noqa: PLR0124 (NaN: a class absent from the split, no AP)

    def details(self) -> dict:
        return {f"{t}_per_class_AP": v for t, v in self._per_class.items()} | {
            "images": len(self.images), "instances": len(self.gt), "detections": len(self.results),
            "coco_backend": self.backend}

    def write(self, directory, split: str) -> list[Path]:
        """The detections as a COCO results json: ``<directory>/detections_<split>.json``."""
        path = Path(directory) / f"detections_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.results))
        return [path]
