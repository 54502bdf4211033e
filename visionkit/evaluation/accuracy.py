"""Classification metrics: top-1 / top-5 accuracy, per-class accuracy, confusion matrix, and
multi-label scores (per-label accuracy, exact match, mean average precision)."""

from __future__ import annotations

import torch

from visionkit.evaluation.base import Evaluator, interleave


class AccuracyEvaluator(Evaluator):
    """Single-label scores from a confusion matrix (rows: true class, columns: predicted)."""

    def __init__(self, classes: list[str]):
        self.classes = list(classes)
        self.reset()

    def reset(self) -> None:
        n = len(self.classes)
        self.confusion = torch.zeros(n, n, dtype=torch.long)
        self.top5_correct = 0
        self.count = 0

    def process(self, batch: dict, predictions: dict) -> None:
        labels = batch["labels"].detach().cpu().long()
        logits = predictions["logits"].detach().float().cpu()
        pred = logits.argmax(1)
        n = len(self.classes)
        self.confusion += torch.bincount(labels * n + pred, minlength=n * n).view(n, n)
        if n >= 5:
            top5 = logits.topk(5, dim=1).indices
            self.top5_correct += int((top5 == labels[:, None]).any(1).sum())
        self.count += len(labels)

    def merge(self, shards: list[AccuracyEvaluator]) -> None:
        self.confusion = sum((s.confusion for s in shards), torch.zeros_like(self.confusion))
        self.top5_correct = sum(s.top5_correct for s in shards)
        self.count = sum(s.count for s in shards)

    def compute(self) -> dict[str, float]:
        cm = self.confusion.double()
        total = cm.sum().item()
        out = {"accuracy": cm.diag().sum().item() / total if total else 0.0}
        if len(self.classes) >= 5:
            out["top5"] = self.top5_correct / self.count if self.count else 0.0
        support = cm.sum(1)
        present = support > 0
        if present.any():
            out["mean_class_accuracy"] = (cm.diag()[present] / support[present]).mean().item()
        return out

    def metric_names(self) -> set[str]:
        return {"accuracy", "mean_class_accuracy"} | ({"top5"} if len(self.classes) >= 5 else set())

    def details(self) -> dict:
        cm = self.confusion
        per_class = {
            c: (cm[i, i].item() / cm[i].sum().item()) if cm[i].sum() > 0 else None
            for i, c in enumerate(self.classes)
        }
        return {"per_class_accuracy": per_class, "confusion_matrix": cm.tolist(), "classes": self.classes}


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float | None:
    """Area under the precision-recall curve, as in Pascal VOC 2010+ (all points, no interpolation
    beyond the monotone envelope). None when the class has no positive."""
    npos = int(positives.sum())
    if npos == 0:
        return None
    order = scores.argsort(descending=True)
    tp = positives[order].double()
    ctp = tp.cumsum(0)
    precision = ctp / torch.arange(1, len(tp) + 1, dtype=torch.float64)
    # monotone envelope from the right, then sum precision at each true positive
    envelope = precision.flip(0).cummax(0).values.flip(0)
    return float((envelope * tp).sum() / npos)


class MultiLabelEvaluator(Evaluator):
    """Multi-label scores at a 0.5 probability threshold, plus threshold-free mAP."""

    def __init__(self, classes: list[str]):
        self.classes = list(classes)
        self.reset()

    def reset(self) -> None:
        self.scores: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def process(self, batch: dict, predictions: dict) -> None:
        self.scores.append(predictions["scores"].detach().float().cpu())
        self.targets.append(batch["labels"].detach().cpu() > 0.5)

    def merge(self, shards: list[MultiLabelEvaluator]) -> None:
        # sample order matters: average_precision breaks score ties by position
        def rows(name):
            return interleave([list(torch.cat(getattr(s, name))) if getattr(s, name) else [] for s in shards])

        scores, targets = rows("scores"), rows("targets")
        self.scores = [torch.stack(scores)] if scores else []
        self.targets = [torch.stack(targets)] if targets else []

    def _ap(self) -> list[float | None]:
        s, t = torch.cat(self.scores), torch.cat(self.targets)
        return [average_precision(s[:, c], t[:, c]) for c in range(len(self.classes))]

    def compute(self) -> dict[str, float]:
        if not self.scores:
            return {}
        s, t = torch.cat(self.scores), torch.cat(self.targets)
        pred = s >= 0.5
        aps = [a for a in self._ap() if a is not None]
        return {
            "accuracy": (pred == t).double().mean().item(),
            "exact_match": (pred == t).all(1).double().mean().item(),
            "mAP": sum(aps) / len(aps) if aps else 0.0,
        }

    def metric_names(self) -> set[str]:
        return {"accuracy", "exact_match", "mAP"}

    def details(self) -> dict:
        return {"per_class_AP": dict(zip(self.classes, self._ap())) if self.scores else {}}
