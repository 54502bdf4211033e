"""Object detection and instance segmentation: Faster R-CNN and Mask R-CNN on any backbone.

``model.head.name`` picks ``faster_rcnn`` (boxes) or ``mask_rcnn`` (boxes + one mask per
instance); the other ``model.head`` keys are :class:`visionkit.models.heads.rcnn.RCNNSettings`
(widths, sampling counts, proposal counts, thresholds, image min/max size) plus the training
augmentation's ``scale_jitter`` and the drawing/JSON thresholds.

Batches: ``images`` is a list of uint8 ``(3, H, W)`` tensors of any sizes (or one stacked tensor);
``boxes``/``labels``/``masks`` are per-image lists. The model resizes each image to ``min_size``
itself and maps its detections back, so predictions and scores are in the input's pixels.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from visionkit.data.transforms import detection_transforms
from visionkit.errors import ConfigError
from visionkit.evaluation.coco import CocoEvaluator, _rle
from visionkit.evaluation.coco_backend import BACKENDS
from visionkit.evaluation.coco_backend import resolve as resolve_backend
from visionkit.models.build import build_backbone
from visionkit.models.heads.rcnn import RCNNSettings
from visionkit.models.heads.settings import build_head, head_choices
from visionkit.registry import TASKS
from visionkit.schema import Field
from visionkit.tasks import starters
from visionkit.tasks.base import Task, settings_schema

_PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
            "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3"]

@TASKS.register("detection")
class DetectionTask(Task):
    monitor = ("segm_AP", "max")
    drawing_side = 256  # boxes and their labels need more room than a class caption
    starter = staticmethod(starters.detection)
    #: head keys added after the first release, with the value that builds the model from before them
    added_settings: ClassVar[dict] = {"model.head.fpn_norm": "none", "model.head.head_norm": "none", "model.head.box_convs": 0}

    @classmethod
    def head_schema(cls) -> dict:
        return {
            "name": Field(str, "mask_rcnn", choices=head_choices("detection"),
                          help="faster_rcnn: boxes; mask_rcnn: + masks"),
            "num_classes": Field(int, None, nullable=True, min=1, help="null: from the data set"),
            **settings_schema(RCNNSettings),
            # the image size follows data.image_size unless set
            "min_size": Field(int, None, nullable=True, min=8, help="null: data.image_size"),
            "max_size": Field(int, None, nullable=True, min=8, help="null: min_size * 1333 / 800"),
            "scale_jitter": Field([float], [1.0, 1.0], length=2, min=0.05,
                                  help="training rescale range, then crop/pad back (large-scale jitter)"),
            "mask_threshold": Field(float, 0.5, min=0, max=1, help="mask probability that counts as inside"),
            "vis_score": Field(float, 0.5, min=0, max=1, help="least score drawn and printed"),
        }

    @classmethod
    def data_schema(cls) -> dict:
        """``data.coco_eval.backend``: which COCOeval scores the split (same numbers, see
        :mod:`visionkit.evaluation.coco_backend`)."""
        return {"coco_eval": {
            "backend": Field(str, "auto", choices=BACKENDS,
                             help="auto: faster_coco_eval when installed, else pycocotools (same AP)"),
        }}

    def __init__(self, backbone, classes: list[str], *, variant: str = "mask_rcnn",
                 settings: RCNNSettings | None = None, mean=(0.5,) * 3, std=(0.25,) * 3,
                 category_ids: list[int] | None = None, mask_threshold: float = 0.5, vis_score: float = 0.5,
                 coco_backend: str = "auto"):
        super().__init__()
        self.classes = list(classes)
        self.category_ids = list(category_ids or range(1, len(self.classes) + 1))
        # the backbone is registered here only (the model holds a plain reference), so its weights
        # are named backbone.* as in every task and backbone weight files load by name
        self.backbone = backbone
        self.model = build_head("detection", variant, backbone, len(self.classes),
                                settings=settings or RCNNSettings(), mean=mean, std=std, register_backbone=False)
        self.variant = variant
        self.mask_threshold, self.vis_score = mask_threshold, vis_score
        self.coco_backend = coco_backend
        self.monitor = ("segm_AP", "max") if self.model.has_masks else ("bbox_AP", "max")

    @classmethod
    def check_sample(cls, sample: dict, data_info: dict) -> list[str]:
        """Boxes inside the image with positive area, labels in range, one mask per box of the
        image's size."""
        image, boxes, labels = sample.get("image"), sample.get("boxes"), sample.get("labels")
        if not isinstance(boxes, torch.Tensor) or not isinstance(labels, torch.Tensor):
            return ["no boxes or labels"]
        problems = []
        h, w = image.shape[-2:] if isinstance(image, torch.Tensor) else (None, None)
        b = boxes.as_subclass(torch.Tensor).float().reshape(-1, 4)
        if len(b) != len(labels):
            problems.append(f"{len(b)} boxes but {len(labels)} labels")
        flat = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
        if flat.any():
            problems.append(f"{int(flat.sum())} box(es) of zero area, e.g. {b[flat][0].tolist()}")
        if h is not None:
            out = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w) | (b[:, 3] > h)
            if out.any():
                problems.append(f"{int(out.sum())} box(es) outside the {w}x{h} image, e.g. {b[out][0].tolist()}")
        n = len(data_info["classes"])
        bad = labels[(labels < 0) | (labels >= n)]
        if bad.numel():
            problems.append(f"labels {bad.tolist()[:10]} are outside 0..{n - 1}")
        masks = sample.get("masks")
        if isinstance(masks, torch.Tensor) and h is not None and (
                masks.shape[0] != len(b) or tuple(masks.shape[-2:]) != (h, w)):
            problems.append(f"masks have shape {tuple(masks.shape)}, expected ({len(b)}, {h}, {w})")
        return problems

    @classmethod
    def from_config(cls, cfg, data_info: dict) -> DetectionTask:
        h = cfg.model.head
        classes = data_info["classes"]
        cls.check_num_classes(cfg, classes)
        kw = {f.name: h[f.name] for f in dataclasses.fields(RCNNSettings)}
        kw["min_size"] = h.min_size or cfg.data.image_size
        kw["max_size"] = h.max_size or math.ceil(kw["min_size"] * 1333 / 800)
        if kw["max_size"] < kw["min_size"]:
            raise ConfigError(f"{cfg.where('model.head.max_size')}: 'model.head.max_size' ({kw['max_size']}) "
                              f"is below "
                              f"min_size ({kw['min_size']})")
        try:  # checked before the model is built: a missing package is a config error, not a late crash
            coco_backend = resolve_backend(cfg.data.coco_eval.backend)
        except ConfigError as e:
            raise ConfigError(f"{cfg.where('data.coco_eval.backend')}: {e}") from None
        backbone = build_backbone(cfg)
        with cls.build_errors(cfg):
            return cls(backbone, classes, variant=h.name, settings=RCNNSettings(**kw), mean=cfg.data.mean,
                       std=cfg.data.std, category_ids=data_info.get("category_ids"),
                       mask_threshold=h.mask_threshold, vis_score=h.vis_score,
                       coco_backend=coco_backend)

    @classmethod
    def sample_transform(cls, cfg, train: bool):
        lo, hi = cfg.model.head.scale_jitter
        if lo > hi:
            raise ConfigError(f"{cfg.where('model.head.scale_jitter')}: 'model.head.scale_jitter' must be "
                              f"[min, max], got {[lo, hi]}")
        return detection_transforms(train, hflip=cfg.data.augment.hflip, scale_range=(lo, hi))

    # -- batches -------------------------------------------------------------------------------
    def preprocess(self, batch: dict) -> dict:
        """Images to a list of 0..1 float tensors (the model normalises and resizes them) and every
        per-image target to a list, whether the loader stacked equal shapes or not."""
        images = batch["images"]
        batch["images"] = [im.float().div(255) if im.dtype == torch.uint8 else im.float() for im in images]
        for key in ("boxes", "labels", "masks", "iscrowd", "area"):
            if key in batch and isinstance(batch[key], torch.Tensor):
                batch[key] = list(batch[key])
        return batch

    def _targets(self, batch: dict) -> list[dict]:
        targets = []
        for i in range(len(batch["images"])):
            keep = ~batch["iscrowd"][i].bool() if "iscrowd" in batch else slice(None)
            t = {"boxes": batch["boxes"][i].as_subclass(torch.Tensor)[keep].float(),
                 "labels": batch["labels"][i][keep] + 1}  # 0 is the background in torchvision's heads
            if self.model.has_masks:
                t["masks"] = batch["masks"][i].as_subclass(torch.Tensor)[keep]
            targets.append(t)
        return targets

    def forward(self, images: list[torch.Tensor]):
        return self.model(images)

    def compile_targets(self) -> list[torch.nn.Module]:
        """Backbone + FPN on the resized, padded batch; the RPN and RoI heads work on data-dependent
        numbers of boxes and stay eager."""
        return [self.model.backbone]

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """torchvision's named terms: loss_objectness, loss_rpn_box_reg (RPN), loss_classifier,
        loss_box_reg (box head) and loss_mask (mask head)."""
        return self.model(batch["images"], self._targets(batch))

    @torch.no_grad()
    def predict(self, batch: dict) -> list[dict]:
        """Per image: ``boxes`` (N, 4) XYXY input pixels, ``labels`` (N,) 0-based class ids,
        ``scores`` (N,), and for mask_rcnn ``masks`` (N, H, W) bool at ``mask_threshold``;
        sorted by score, at most ``detections_per_img``."""
        out = []
        for det in self.model(batch["images"]):
            p = {"boxes": det["boxes"].float(), "labels": det["labels"] - 1, "scores": det["scores"].float()}
            if "masks" in det:
                p["masks"] = det["masks"][:, 0] >= self.mask_threshold
            out.append(p)
        return out

    def evaluator(self):
        return CocoEvaluator(self.classes, self.category_ids, masks=self.model.has_masks,
                             backend=self.coco_backend)

    # -- outputs -------------------------------------------------------------------------------
    def _shown(self, pred: dict) -> torch.Tensor:
        return (pred["scores"] >= self.vis_score).nonzero().flatten()

    def describe(self, predictions: list[dict], i: int) -> str:
        """``"2 objects: star 0.98, circle 0.91"`` (those scoring at least ``vis_score``)."""
        p = predictions[i]
        shown = self._shown(p).tolist()
        if not shown:
            return "no objects"
        items = ", ".join(f"{self.classes[int(p['labels'][k])]} {float(p['scores'][k]):.2f}" for k in shown)
        return f"{len(shown)} object{'s' * (len(shown) != 1)}: {items}"

    def record(self, predictions: list[dict], i: int) -> dict:
        """Every detection: class, COCO category id, score, XYXY box and (masks) RLE + area."""
        p = predictions[i]
        dets = []
        for k in range(len(p["labels"])):
            label = int(p["labels"][k])
            d = {"label": self.classes[label], "category_id": self.category_ids[label],
                 "score": round(float(p["scores"][k]), 4),
                 "box": [round(float(v), 2) for v in p["boxes"][k]]}
            if "masks" in p:
                d["mask_area"] = int(p["masks"][k].sum())
                d["segmentation"] = _rle(p["masks"][k])
            dets.append(d)
        return {"detections": dets}

    def visualize(self, batch: dict, predictions: list[dict], max_images: int = 16) -> torch.Tensor:
        """Each image, enlarged to at least 256 px, with mask overlays and boxes labelled
        ``class score`` in the class's colour (ground-truth boxes, when known, in thin white)."""
        tiles = []
        for i, (img, p) in enumerate(zip(batch["images"][:max_images], predictions)):
            img = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
            h, w = img.shape[-2:]
            f = self.zoom_factor(max(h, w))
            img = self.zoom(img, f)
            keep = self._shown(p).cpu()
            labels = p["labels"].cpu()[keep]
            colours = [_PALETTE[int(c) % len(_PALETTE)] for c in labels]
            if "masks" in p and len(keep):
                m = p["masks"].cpu()[keep][None].float()
                m = F.interpolate(m, scale_factor=f, mode="nearest")[0] > 0.5
                img = draw_segmentation_masks(img, m, alpha=0.45, colors=colours)
            if "boxes" in batch and len(batch["boxes"][i]):
                truth = batch["boxes"][i].as_subclass(torch.Tensor).float().cpu() * f
                img = draw_bounding_boxes(img, truth, colors="white", width=1)
            if len(keep):
                scores = p["scores"].cpu()[keep]
                names = [f"{self.classes[int(c)]} {float(s):.2f}" for c, s in zip(labels, scores)]
                boxes = p["boxes"].cpu()[keep] * f
                img = draw_bounding_boxes(img, boxes, labels=names, colors=colours, width=2)
            tiles.append(img)
        size = (max(t.shape[1] for t in tiles), max(t.shape[2] for t in tiles))
        tiles = [F.pad(t, (0, size[1] - t.shape[2], 0, size[0] - t.shape[1])) for t in tiles]
        return make_grid(tiles, nrow=min(4, len(tiles)), padding=2)[None]

    def metadata(self) -> dict:
        return {"classes": self.classes, "category_ids": self.category_ids, "variant": self.variant}

    @classmethod
    def target_kind(cls, cfg) -> str:
        return "instances"

    # -- export: one image's detections ------------------------------------------------------------
    export_outputs = ("boxes", "labels", "scores", "masks")
    export_attrs = ("classes", "category_ids", "variant", "mask_threshold", "vis_score")
    export_normalizes = True  # torchvision's detector normalises (and resizes) inside its transform
    export_single_image = True  # it loops over a list of images in Python

    def export_graph(self, normalize: bool) -> nn.Module:
        return _DetectionGraph(self).eval()

    def export_output_names(self) -> list[str]:
        return [n for n in self.export_outputs if n != "masks" or self.model.has_masks]

    def export_dynamic_axes(self, names, dynamic: bool) -> dict[str, dict[int, str]]:
        """The number of detections always varies; with ``dynamic`` the image size too."""
        axes = {n: {0: "detections"} for n in names}
        if dynamic:
            axes["images"] = {2: "height", 3: "width"}
            if "masks" in axes:
                axes["masks"] = {0: "detections", 1: "height", 2: "width"}
        return axes

    def from_export_outputs(self, outputs: dict[str, torch.Tensor]) -> list[dict]:
        p = {"boxes": outputs["boxes"].float(), "labels": outputs["labels"].long(),
             "scores": outputs["scores"].float()}
        if "masks" in outputs:
            p["masks"] = outputs["masks"] >= self.mask_threshold
        return [p]


class _DetectionGraph(nn.Module):
    """One image ``(1, 3, H, W)`` in 0..1 -> ``boxes`` (N, 4) XYXY input pixels, ``labels`` (N,)
    0-based class ids, ``scores`` (N,) and ``masks`` (N, H, W) mask probabilities (Mask R-CNN; a
    Faster R-CNN graph has no masks output). torchvision's detector takes a list of images and
    loops over it in Python, so an export holds exactly one image per run (batch 1)."""

    def __init__(self, task: DetectionTask):
        super().__init__()
        self.task = task

    def forward(self, images: torch.Tensor):
        det = self.task.model([images[0]])[0]
        out = (det["boxes"].float(), det["labels"] - 1, det["scores"].float())
        if "masks" in det:
            out = out + (det["masks"][:, 0].float(),)
        return out
