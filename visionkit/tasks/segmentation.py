"""Semantic segmentation: every pixel gets a class.

Backbone -> head (``fcn``, ``deeplabv3`` or ``semantic_fpn``, see ``models/heads/segmentation.py``)
-> logits upsampled bilinearly to the input size (Long et al. 2015, sec. 3.3). The loss (beside
the heads, with their settings :class:`SegmentationSettings`) is per-pixel cross-entropy that skips ``ignore_index`` pixels, with optional class weights, an
optional soft Dice term (Milletari et al. 2016, eq. 1, averaged over classes) and an optional
auxiliary FCN head on a shallower stage (Zhao et al. 2017, sec. 3.3). Predictions are scored
by a confusion matrix (``evaluation/miou.py``).

Batch: ``images`` (B, 3, H, W) -- a list when evaluation images differ in size -- and
``semantic`` (B, H, W) class ids with ``ignore_index`` where unlabelled.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import make_grid

from visionkit.data.datasets.segmentation import parse_palette, save_palette_png
from visionkit.data.transforms import ImageAndMask, segmentation_transforms
from visionkit.errors import ConfigError
from visionkit.evaluation.miou import MIoUEvaluator
from visionkit.models.build import build_backbone
from visionkit.models.heads.segmentation import (
    SegmentationSettings,
    boundary_factor,
    build_aux_head,
    cross_entropy_loss,
    dice_loss,
)
from visionkit.models.heads.settings import build_head
from visionkit.registry import TASKS
from visionkit.schema import Field
from visionkit.tasks import starters
from visionkit.tasks.base import ExportNormalize, Task
from visionkit.visualize import denormalize


@TASKS.register("segmentation")
class SegmentationTask(Task):
    monitor = ("mIoU", "max")
    starter = staticmethod(starters.segmentation)

    @classmethod
    def data_schema(cls) -> dict:
        """``data.segmentation``: where label maps live, their classes, palette and id table."""
        return {"segmentation": {  # label maps (docs/segmentation.md)
            "classes": Field([str], None, nullable=True, help="class names in id order; null: the data set's"),
            "palette": Field([str], None, nullable=True, help="'#rrggbb' per class; null: VOC colour map"),
            "images": Field(str, "images", help="image folder below data.root"),
            "labels": Field(str, "labels", help="label-map folder below data.root"),
            "image_suffix": Field(str, "", help="end of image names before the extension"),
            "label_suffix": Field(str, "", help="end of label-map names before .png"),
            "split_lists": Field(str, None, nullable=True, help="folder of train/val/test.txt stems (VOC)"),
            "id_map": Field(dict, None, nullable=True, help="label id -> class id (Cityscapes)"),
            "scale": Field([float], [0.5, 2.0], length=2, min=0.01, help="random scale range (train)"),
            "base_size": Field([int], None, nullable=True, length=2, min=1,
                               help="[H, W] the scale applies to; null: the image's own size"),
            "ignore_boundaries": Field(bool, False, help="shapes: ignore anti-aliased object rims"),
        }}

    @classmethod
    def check_sample(cls, sample: dict, data_info: dict) -> list[str]:
        """A label map of the image's size whose values are class ids or the ignore value."""
        label, image = sample.get("semantic"), sample.get("image")
        if not isinstance(label, torch.Tensor):
            return ["no label map"]
        problems = []
        if isinstance(image, torch.Tensor) and tuple(label.shape[-2:]) != tuple(image.shape[-2:]):
            problems.append(f"label map is {tuple(label.shape[-2:])} but the image is {tuple(image.shape[-2:])}")
        n = len(data_info["classes"])
        cfg = data_info.get("cfg")
        ignore = cfg.model.head.ignore_index if cfg is not None else 255
        values = label.unique()
        bad = values[((values < 0) | (values >= n)) & (values != ignore)]
        if bad.numel():
            problems.append(f"label values {bad.tolist()[:10]} are neither class ids 0..{n - 1} nor the "
                            f"ignore value {ignore}")
        return problems

    settings = SegmentationSettings

    def __init__(self, backbone, classes: list[str], settings: SegmentationSettings | None = None, *,
                 palette=None, mean=(0.0,), std=(1.0,)):
        super().__init__()
        s = settings or SegmentationSettings()
        self.backbone = backbone
        self.classes = list(classes)
        n = len(self.classes)
        owner = type(backbone).__name__
        self.head = build_head("segmentation", s.name, backbone.feature_specs, n, s, owner)
        # the aux head never reads the refine stage: its default is the stage before the deepest
        self.aux_head = build_aux_head(backbone.feature_specs, n, s.aux_stage, owner) if s.aux else None
        self.aux_weight = s.aux_weight
        self.ignore_index = s.ignore_index
        self.dice_weight = s.dice_weight
        self.boundary_weight = s.boundary_weight
        self.register_buffer("class_weights", None if s.class_weights is None
                             else torch.tensor(s.class_weights, dtype=torch.float32), False)
        self.inference, self.window = s.inference, s.window or 512
        self.stride = s.stride or max(1, self.window * 2 // 3)
        self.palette = [tuple(c) for c in (palette or parse_palette(None, n))]
        self.set_normalization(mean, std)

    @classmethod
    def from_config(cls, cfg, data_info: dict) -> SegmentationTask:
        h = cfg.model.head
        classes = list(data_info["classes"])
        n = len(classes)
        where = cfg.where
        cls.check_num_classes(cfg, classes)
        if h.ignore_index < n:
            raise ConfigError(f"{where('model.head.ignore_index')}: 'model.head.ignore_index' {h.ignore_index} "
                              f"is a class id (0..{n - 1}); "
                              "use a value above them, e.g. 255")
        if h.class_weights is not None and len(h.class_weights) != n:
            raise ConfigError(f"{where('model.head.class_weights')}: 'model.head.class_weights' has "
                              f"{len(h.class_weights)} values for "
                              f"{n} classes; give one per class")
        backbone = build_backbone(cfg)
        settings = dataclasses.replace(cls.head_settings(cfg), window=h.window or cfg.data.image_size)
        with cls.build_errors(cfg):
            return cls(backbone, classes, settings, palette=parse_palette(cfg.data.segmentation.palette, n),
                       mean=cfg.data.mean, std=cfg.data.std)

    @classmethod
    def sample_transform(cls, cfg, train: bool):
        d, s = cfg.data, cfg.data.segmentation
        t = segmentation_transforms(train, crop_size=d.image_size, ignore_index=cfg.model.head.ignore_index,
                                    scale=s.scale, base_size=s.base_size, hflip=d.augment.hflip)
        return ImageAndMask(t)

    # -- model -------------------------------------------------------------------------------------
    def preprocess(self, batch: dict) -> dict:
        """Normalise images (a list too, for evaluation images of different sizes); labels to int64."""
        images = batch["images"]
        if isinstance(images, list):
            batch["images"] = [super(SegmentationTask, self).preprocess({"images": x[None]})["images"][0]
                               for x in images]
        else:
            batch = super().preprocess(batch)
        sem = batch.get("semantic")
        if sem is not None:
            batch["semantic"] = [x.long() for x in sem] if isinstance(sem, list) else sem.long()
        return batch

    def _logits(self, images: torch.Tensor, with_aux: bool = False):
        feats = self.backbone(images)
        size = images.shape[-2:]
        logits = F.interpolate(self.head(feats), size=size, mode="bilinear", align_corners=False)
        if not with_aux:
            return logits
        aux = F.interpolate(self.aux_head(feats), size=size, mode="bilinear", align_corners=False)
        return logits, aux

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, C, H, W)`` at the input size."""
        return self._logits(images)

    def compile_targets(self) -> list[torch.nn.Module]:
        """Backbone and heads: ``loss`` calls them without ``forward``."""
        return [m for m in (self.backbone, self.head, self.aux_head) if m is not None]

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        images, target = batch["images"], batch["semantic"]
        if isinstance(images, list):
            raise ValueError("training batches must have one image size; check data.image_size (the crop)")  # noqa: TRY004 (a bad batch, not a bad type: keep ValueError)
        with_aux = self.aux_head is not None
        out = self._logits(images, with_aux)
        logits, aux = out if with_aux else (out, None)
        # the rim factor depends on the labels only: computed once for the main and the aux loss
        factor = boundary_factor(target, self.boundary_weight)
        ce = cross_entropy_loss(logits, target, self.ignore_index, self.class_weights, factor)
        losses = {"loss_ce": ce}
        if self.dice_weight > 0:
            losses["loss_dice"] = self.dice_weight * dice_loss(logits, target, self.ignore_index)
        if aux is not None:
            losses["loss_aux"] = self.aux_weight * cross_entropy_loss(aux, target, self.ignore_index,
                                                                      self.class_weights, factor)
        return losses


    @torch.no_grad()
    def _infer(self, image: torch.Tensor) -> torch.Tensor:
        """Logits of one batch ``(B, 3, H, W)``, whole or by sliding window."""
        if self.inference == "whole":
            return self._logits(image).float()
        return self._slide(image)

    def _slide(self, image: torch.Tensor) -> torch.Tensor:
        """Average the logits of ``window``-square crops taken every ``stride`` pixels; an image
        smaller than the window is padded (and the padding cropped off again)."""
        b, _, h, w = image.shape
        win, step = self.window, self.stride
        ph, pw = max(h, win), max(w, win)
        if (ph, pw) != (h, w):
            image = F.pad(image, (0, pw - w, 0, ph - h))
        n = len(self.classes)
        total = image.new_zeros(b, n, ph, pw, dtype=torch.float32)
        count = image.new_zeros(1, 1, ph, pw, dtype=torch.float32)
        ys = list(range(0, ph - win + 1, step))
        xs = list(range(0, pw - win + 1, step))
        ys += [ph - win] if ys[-1] != ph - win else []
        xs += [pw - win] if xs[-1] != pw - win else []
        for y in ys:
            for x in xs:
                total[..., y:y + win, x:x + win] += self._logits(image[..., y:y + win, x:x + win]).float()
                count[..., y:y + win, x:x + win] += 1
        return (total / count)[..., :h, :w]

    @torch.no_grad()
    def predict(self, batch: dict) -> dict:
        """``labels``: per-pixel class ids ``(B, H, W)`` at the input size (a list of ``(H, W)``
        when the batch's images are a list); ``confidence``: the winning class's probability."""
        images = batch["images"]
        if isinstance(images, list):
            outs = [self._infer(x[None]) for x in images]
            probs = [o.softmax(1)[0] for o in outs]
            best = [p.max(0) for p in probs]
            return {"labels": [b.indices for b in best], "confidence": [b.values for b in best]}
        best = self._infer(images).softmax(1).max(1)
        return {"labels": best.indices, "confidence": best.values}

    def evaluator(self):
        return MIoUEvaluator(self.classes, self.ignore_index)

    # -- output ------------------------------------------------------------------------------------
    def _shares(self, predictions: dict, i: int) -> dict[str, float]:
        labels = predictions["labels"][i].reshape(-1).cpu()
        counts = torch.bincount(labels, minlength=len(self.classes)).double()
        shares = counts / counts.sum()
        order = shares.argsort(descending=True).tolist()
        return {self.classes[c]: float(shares[c]) for c in order if counts[c] > 0}

    def describe(self, predictions: dict, i: int) -> str:
        """The classes found and their share of the pixels: ``background 71.2%, star 24.0%``."""
        return ", ".join(f"{c} {100 * s:.1f}%" for c, s in self._shares(predictions, i).items())

    def record(self, predictions: dict, i: int) -> dict:
        labels = predictions["labels"][i]
        return {"size": list(labels.shape[-2:]), "pixel_share": self._shares(predictions, i),
                "mean_confidence": float(predictions["confidence"][i].float().mean())}

    def write_outputs(self, predictions: dict, i: int, out_dir, stem: str) -> list[str]:
        """``<stem>_mask.png``: the class map as a palette PNG (values are class ids, VOC style)."""
        name = f"{stem}_mask.png"
        save_palette_png(predictions["labels"][i], self.palette, f"{out_dir}/{name}")
        return [name]

    def overlay(self, image: torch.Tensor, labels: torch.Tensor, alpha: float = 0.55) -> torch.Tensor:
        """uint8 image blended with the palette colour of each pixel's class; ignore pixels
        (and any value outside the classes) keep the image."""
        pal = torch.tensor(self.palette, dtype=torch.float32)
        labels = labels.cpu().long()
        valid = (labels >= 0) & (labels < len(pal))
        colours = pal[labels.clamp(0, len(pal) - 1)].permute(2, 0, 1)
        a = alpha * valid.float()
        return (image.float() * (1 - a) + colours * a).round().to(torch.uint8)

    def visualize(self, batch: dict, predictions: dict, max_images: int = 16) -> torch.Tensor:
        """Rows of (image, ground truth overlay, prediction overlay); without ground truth,
        (image, prediction overlay). Small images are enlarged to 128 px to be legible."""
        images = batch["images"]
        images = list(images[:max_images])
        truth = batch.get("semantic")
        panels = []
        for i, img in enumerate(images):
            img = denormalize(img[None], self.mean, self.std)[0]
            row = [img]
            if truth is not None:
                row.append(self.overlay(img, truth[i]))
            row.append(self.overlay(img, predictions["labels"][i]))
            panels += row
        per_row = len(panels) // max(len(images), 1)
        side = max(max(p.shape[-2:]) for p in panels)
        zoom = self.zoom_factor(side)
        grown = [self.zoom(p.float(), zoom) for p in panels]
        h = max(p.shape[-2] for p in grown)
        w = max(p.shape[-1] for p in grown)
        padded = [F.pad(p, (0, w - p.shape[-1], 0, h - p.shape[-2])) for p in grown]
        return make_grid(torch.stack(padded), nrow=per_row, padding=2).to(torch.uint8)[None]

    def metadata(self) -> dict:
        return {"classes": self.classes, "palette": [list(c) for c in self.palette]}

    @classmethod
    def target_kind(cls, cfg) -> str:
        return "semantic"

    # -- export: ``logits`` at the input size ------------------------------------------------------
    export_outputs = ("logits",)
    export_attrs = ("classes", "palette", "mean", "std", "ignore_index")

    def export_graph(self, normalize: bool) -> nn.Module:
        return _SegmentationGraph(self, normalize).eval()

    def export_dynamic_axes(self, names, dynamic: bool) -> dict[str, dict[int, str]]:
        spatial = {0: "batch", 2: "height", 3: "width"}
        return {"images": spatial, **{n: spatial for n in names}} if dynamic else {}

    @classmethod
    def from_export_attrs(cls, attrs: dict) -> SegmentationTask:
        view = super().from_export_attrs(attrs)
        view.palette = [tuple(c) for c in view.palette]  # JSON gives lists; drawing takes tuples
        return view

    def from_export_outputs(self, outputs: dict[str, torch.Tensor]) -> dict:
        best = outputs["logits"].float().softmax(1).max(1)
        return {"labels": best.indices, "confidence": best.values}


class _SegmentationGraph(nn.Module):
    """``logits`` (B, C, H, W) at the input size (whole-image inference; the task's sliding
    window is a loop over crops and is not part of the graph)."""

    def __init__(self, task: SegmentationTask, normalize: bool):
        super().__init__()
        self.task, self.norm = task, ExportNormalize(task.mean, task.std, normalize)

    def forward(self, images: torch.Tensor):
        return (self.task._logits(self.norm(images)).float(),)
