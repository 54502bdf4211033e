"""Image classification: the backbone's deepest feature -> the family's classifier.

Single-label: softmax cross-entropy with optional label smoothing (Szegedy et al. 2016, sec. 7).
Multi-label: one sigmoid per class with binary cross-entropy; targets are multi-hot vectors.
A backbone with auxiliary classifiers (GoogLeNet with ``model.backbone.aux_logits``) adds each
one's loss, the same criterion on its logits, at weight 0.3 (Szegedy et al. 2015, sec. 5).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2
from torchvision.utils import draw_bounding_boxes, make_grid

from visionkit.data.transforms import OnImage, classification_transforms
from visionkit.errors import ConfigError
from visionkit.evaluation.accuracy import AccuracyEvaluator, MultiLabelEvaluator
from visionkit.models.build import build_backbone
from visionkit.models.heads.classification import ClassificationSettings
from visionkit.models.heads.settings import build_head
from visionkit.registry import TASKS
from visionkit.tasks import starters
from visionkit.tasks.base import ExportNormalize, Task
from visionkit.visualize import denormalize

#: weight of each auxiliary classifier's loss (Szegedy et al. 2015, sec. 5)
AUX_WEIGHT = 0.3


@TASKS.register("classification")
class ClassificationTask(Task):
    monitor = ("accuracy", "max")
    starter = staticmethod(starters.classification)

    settings = ClassificationSettings
    renamed_head_keys: ClassVar[dict[str, str]] = {"classifier": "name"}

    def __init__(self, backbone, classes: list[str], settings: ClassificationSettings | None = None, *,
                 mean=(0.0,), std=(1.0,)):
        super().__init__()
        s = settings or ClassificationSettings()
        self.backbone = backbone
        self.classes = list(classes)
        self.head = build_head("classification", s.name, backbone, len(self.classes), s.dropout)
        self.label_smoothing = s.label_smoothing
        self.multi_label = s.multi_label
        self.set_normalization(mean, std)
        if s.multi_label:
            self.monitor = ("mAP", "max")

    @classmethod
    def from_config(cls, cfg, data_info: dict) -> ClassificationTask:
        classes = data_info["classes"]
        cls.check_num_classes(cfg, classes)
        backbone = build_backbone(cfg, aux_classes=len(classes))  # used with model.backbone.aux_logits
        if cfg.data.image_size < backbone.min_input_size:  # the network input is exactly this size
            raise ConfigError(
                f"{cfg.where('data.image_size')}: 'data.image_size' is {cfg.data.image_size}, but "
                f"{cfg.model.backbone.name} needs inputs of at least {backbone.min_input_size} pixels; "
                "raise data.image_size"
            )
        with cls.build_errors(cfg):
            return cls(backbone, classes, cls.head_settings(cfg), mean=cfg.data.mean, std=cfg.data.std)

    @classmethod
    def sample_transform(cls, cfg, train: bool):
        d = cfg.data
        t = classification_transforms(
            train, size=d.image_size, mean=d.mean, std=d.std, scale=tuple(d.augment.scale),
            ratio=tuple(d.augment.ratio), hflip=d.augment.hflip, resize_ratio=d.augment.resize_ratio,
            normalize=False,  # batches are normalised on the device by Task.preprocess
        )
        return OnImage(t)

    @classmethod
    def check_sample(cls, sample: dict, data_info: dict) -> list[str]:
        """A class id in range, or a multi-hot vector with one 0/1 entry per class."""
        n = len(data_info["classes"])
        labels = sample.get("labels")
        if not isinstance(labels, torch.Tensor):
            return [f"no label tensor (got {type(labels).__name__})"]
        if labels.ndim == 0:
            value = int(labels)
            return [] if 0 <= value < n else [f"label {value} is outside 0..{n - 1}"]
        if labels.shape != (n,) or not ((labels == 0) | (labels == 1)).all():
            return [f"multi-hot labels must be {n} values of 0 or 1, got shape {tuple(labels.shape)}"]
        return []

    def _logits(self, images: torch.Tensor, with_aux: bool = False):
        """Class logits, and with ``with_aux`` also the backbone's auxiliary logits by name (only
        in training; eval-mode backbones do not run them)."""
        feats = self.backbone(images)
        aux = {name: feats.pop(name) for name in self.backbone.aux_outputs if name in feats}
        logits = self.head(feats[next(reversed(feats))])
        return (logits, aux) if with_aux else logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, C)``."""
        return self._logits(images)

    def compile_targets(self) -> list[nn.Module]:
        """With auxiliary classifiers ``loss`` calls backbone and head without ``forward``."""
        return [self.backbone, self.head] if self.backbone.aux_outputs else [self]

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """``loss_ce`` (``loss_bce`` multi-label), and ``loss_aux1``, ``loss_aux2`` (already weighted
        by :data:`AUX_WEIGHT`) when the backbone has auxiliary classifiers."""
        if self.backbone.aux_outputs:
            logits, aux = self._logits(batch["images"], with_aux=True)
        else:
            logits, aux = self(batch["images"]), {}
        labels = batch["labels"]
        losses = {"loss_bce" if self.multi_label else "loss_ce": self._criterion(logits, labels)}
        for name, aux_logits in aux.items():
            losses[f"loss_{name}"] = AUX_WEIGHT * self._criterion(aux_logits, labels)
        return losses

    def _criterion(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)

    @torch.no_grad()
    def predict(self, batch: dict) -> dict:
        """``logits`` (B, C); ``scores`` (B, C) probabilities; ``labels`` (B,) top-1 class ids
        (multi-label: (B, C) booleans at probability 0.5)."""
        logits = self(batch["images"]).float()
        if self.multi_label:
            scores = logits.sigmoid()
            return {"logits": logits, "scores": scores, "labels": scores >= 0.5}
        scores = logits.softmax(1)
        return {"logits": logits, "scores": scores, "labels": scores.argmax(1)}

    def evaluator(self):
        return MultiLabelEvaluator(self.classes) if self.multi_label else AccuracyEvaluator(self.classes)

    def describe(self, predictions: dict, i: int) -> str:
        """One image's prediction as text: ``"star 0.97"`` (multi-label: every class above 0.5)."""
        scores = predictions["scores"][i]
        if self.multi_label:
            on = [f"{self.classes[c]} {scores[c]:.2f}" for c in range(len(self.classes)) if scores[c] >= 0.5]
            return ", ".join(on) or "(none)"
        c = int(scores.argmax())
        return f"{self.classes[c]} {scores[c]:.2f}"

    def record(self, predictions: dict, i: int) -> dict:
        """One image's prediction as JSON-able values (for ``predict --out``)."""
        scores = predictions["scores"][i].float().cpu()
        if self.multi_label:
            return {"labels": [self.classes[c] for c in range(len(self.classes)) if scores[c] >= 0.5],
                    "scores": dict(zip(self.classes, scores.tolist()))}
        c = int(scores.argmax())
        return {"label": self.classes[c], "score": float(scores[c]),
                "scores": dict(zip(self.classes, scores.tolist()))}

    def visualize(self, batch: dict, predictions: dict, max_images: int = 16) -> torch.Tensor:
        """Each image with a caption ``true -> predicted score``, green when right, red when wrong
        (just the prediction, in white, when the batch has no labels)."""
        images = denormalize(batch["images"][:max_images], self.mean, self.std)
        labels = batch.get("labels")
        out = []
        for i, img in enumerate(images):
            img = self.zoom(img, self.zoom_factor(img.shape[-1]))
            h, w = img.shape[-2:]
            caption, colour = self.describe(predictions, i), "white"
            if labels is not None:
                truth, right = self._truth(labels[i].cpu(), predictions["labels"][i].cpu())
                caption, colour = f"{truth} -> {caption}", ("lime" if right else "red")
            box = torch.tensor([[1, 1, w - 2, h - 2]], dtype=torch.float)
            out.append(draw_bounding_boxes(img, box, labels=[caption], colors=colour, width=2))
        return make_grid(out, nrow=min(8, len(out)), padding=2)[None]

    def _truth(self, label: torch.Tensor, pred: torch.Tensor) -> tuple[str, bool]:
        if self.multi_label:
            names = ",".join(self.classes[c] for c in label.nonzero().flatten().tolist())
            return names, bool((pred == (label > 0.5)).all())
        return self.classes[int(label)], int(pred) == int(label)

    def metadata(self) -> dict:
        return {"classes": self.classes, "multi_label": self.multi_label}

    @classmethod
    def target_kind(cls, cfg) -> str:
        return "multi_label" if cfg.model.head.multi_label else "label"

    # -- export: ``logits`` and ``scores`` for a batch of eval crops ------------------------------
    export_outputs = ("logits", "scores")
    export_attrs = ("classes", "multi_label", "mean", "std")
    export_any_size = False  # the classifier's input is the eval transform's crop

    def export_graph(self, normalize: bool) -> nn.Module:
        return _ClassificationGraph(self, normalize).eval()

    @classmethod
    def export_preprocess(cls, cfg) -> dict:
        size = cfg.data.image_size
        return {"resize_short_side": round(size * cfg.data.augment.resize_ratio), "center_crop": size}

    @classmethod
    def export_transform(cls, spec: dict):
        return v2.Compose([v2.Resize(spec["resize_short_side"], antialias=True), v2.CenterCrop(spec["center_crop"])])

    def from_export_outputs(self, outputs: dict[str, torch.Tensor]) -> dict:
        scores = outputs["scores"].float()
        labels = scores >= 0.5 if self.multi_label else scores.argmax(1)
        return {"logits": outputs["logits"].float(), "scores": scores, "labels": labels}


class _ClassificationGraph(nn.Module):
    """``logits`` (B, C) and ``scores`` (B, C): softmax, or sigmoid for multi-label models."""

    def __init__(self, task: ClassificationTask, normalize: bool):
        super().__init__()
        self.task, self.norm = task, ExportNormalize(task.mean, task.std, normalize)

    def forward(self, images: torch.Tensor):
        logits = self.task(self.norm(images)).float()
        return logits, (logits.sigmoid() if self.task.multi_label else logits.softmax(1))
