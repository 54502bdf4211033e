"""Semantic segmentation scores from one confusion matrix accumulated over a split.

Rows are true classes, columns predicted ones; pixels whose true label is ``ignore_index`` are
left out entirely. With ``TP``, ``FP``, ``FN`` per class read off the matrix (the standard
definitions of Long et al. 2015, sec. 5, and of the VOC/Cityscapes benchmarks):

- ``IoU_c = TP / (TP + FP + FN)``; ``mIoU`` averages it over the *counted* classes,
- ``pixel_acc = sum TP / labelled pixels``,
- ``mean_acc`` averages ``TP / (TP + FN)`` over the classes present in the ground truth,
- ``fw_iou = sum_c freq_c * IoU_c`` with ``freq_c`` the class's share of labelled pixels.

Absent-class rule: a class that appears neither in the ground truth nor in the prediction of
the whole split has no IoU (0/0) and is left out of ``mIoU``; a class predicted somewhere but
never true has IoU 0 and counts (false positives are errors). All values lie in 0..1.
"""

from __future__ import annotations

import torch

from visionkit.evaluation.base import Evaluator


def confusion_matrix(target: torch.Tensor, pred: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """``(C, C)`` int64 counts of (true, predicted) pixel pairs, ignore pixels dropped."""
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    return torch.bincount(target * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)


def scores_from_confusion(cm: torch.Tensor) -> tuple[dict[str, float], list[float | None]]:
    """(scalar metrics, per-class IoU with None for classes absent from truth and prediction)."""
    cm = cm.double()
    tp = cm.diag()
    truth = cm.sum(1)  # TP + FN
    predicted = cm.sum(0)  # TP + FP
    union = truth + predicted - tp
    total = truth.sum()
    counted = union > 0
    iou = torch.where(counted, tp / union.clamp(min=1), torch.zeros_like(tp))
    present = truth > 0
    out = {
        "mIoU": iou[counted].mean().item() if counted.any() else 0.0,
        "pixel_acc": (tp.sum() / total).item() if total > 0 else 0.0,
        "mean_acc": (tp[present] / truth[present]).mean().item() if present.any() else 0.0,
        "fw_iou": ((truth / total) * iou).sum().item() if total > 0 else 0.0,
    }
    per_class = [iou[c].item() if counted[c] else None for c in range(len(tp))]
    return out, per_class


class MIoUEvaluator(Evaluator):
    """Accumulates ``batch["semantic"]`` against ``predictions["labels"]`` (tensors of the same
    size, or lists of them for images of different sizes)."""

    def __init__(self, classes: list[str], ignore_index: int = 255):
        self.classes = list(classes)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        n = len(self.classes)
        self.confusion = torch.zeros(n, n, dtype=torch.long)

    def process(self, batch: dict, predictions: dict) -> None:
        targets, preds = batch["semantic"], predictions["labels"]
        if isinstance(targets, torch.Tensor) and isinstance(preds, torch.Tensor):
            targets, preds = [targets], [preds]
        for t, p in zip(targets, preds):
            if t.shape[-2:] != p.shape[-2:]:
                raise ValueError(f"prediction {tuple(p.shape)} and label map {tuple(t.shape)} differ in size")
            self.confusion += confusion_matrix(t.detach().cpu(), p.detach().cpu(), len(self.classes),
                                               self.ignore_index)

    def merge(self, shards: list[MIoUEvaluator]) -> None:
        self.confusion = sum((s.confusion for s in shards), torch.zeros_like(self.confusion))

    def compute(self) -> dict[str, float]:
        out, per_class = scores_from_confusion(self.confusion)
        # per-class IoU as scalars for TensorBoard; absent classes have none (see the rule above)
        out.update({f"IoU/{c}": v for c, v in zip(self.classes, per_class) if v is not None})
        return out

    def metric_names(self) -> set[str]:
        return {"mIoU", "pixel_acc", "mean_acc", "fw_iou"} | {f"IoU/{c}" for c in self.classes}

    def details(self) -> dict:
        _, per_class = scores_from_confusion(self.confusion)
        cm = self.confusion
        acc = [cm[c, c].item() / cm[c].sum().item() if cm[c].sum() > 0 else None for c in range(len(cm))]
        return {"per_class_iou": dict(zip(self.classes, per_class)),
                "per_class_accuracy": dict(zip(self.classes, acc)),
                "confusion_matrix": cm.tolist(), "classes": self.classes,
                "ignore_index": self.ignore_index}
