"""Scoring a task on a data loader, with no trainer: ``visionkit eval``, the API, validation and
the final test all call :func:`evaluate` (as detectron2's ``inference_on_dataset``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from visionkit.engine import distributed
from visionkit.evaluation.base import Evaluator


@dataclass
class EvalResult:
    metrics: dict[str, float]
    #: the evaluator after ``compute`` (details, files it writes); under torchrun rank 0's holds the merged split
    evaluator: Evaluator
    #: ``(path, reason)`` of the unreadable samples left out (``data.on_error: skip``)
    bad: list = field(default_factory=list)
    #: drawings of the first batch (``vis_images`` of them), or None
    vis: torch.Tensor | None = None


def move_to_device(batch: dict, task, device: torch.device, channels_last: bool = False) -> dict:
    """A loader's batch on ``device``, through the task's ``preprocess`` (uint8 -> normalised)."""

    def move(v):
        if isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=True)
        if isinstance(v, list):
            return [move(x) for x in v]
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        return v

    batch = task.preprocess({k: move(v) for k, v in batch.items()})
    images = batch.get("images")
    if channels_last and isinstance(images, torch.Tensor) and images.ndim == 4:
        batch["images"] = images.contiguous(memory_format=torch.channels_last)
    return batch


@torch.no_grad()
def evaluate(task, loader: Iterable, evaluator: Evaluator, device: torch.device, *,
             autocast: Callable[[], Any] = contextlib.nullcontext, channels_last: bool = False,
             group: distributed.Group | None = None, vis_images: int = 0,
             log: Callable[[str], None] = print, split: str = "") -> EvalResult:
    """Score every batch of ``loader`` with ``task.predict`` and ``evaluator``.

    Under torchrun each rank scores its shard and the results are merged exactly. Unreadable
    samples (``data.on_error: skip``) are left out, counted as ``metrics["bad_samples"]`` and named.
    """
    group = group or distributed.Group()
    task.eval()
    group.sync_buffers(task)  # every rank scores with rank 0's BatchNorm statistics
    evaluator.reset()
    vis, bad = None, []
    for batch in loader:
        if isinstance(batch, dict) and "bad_samples" in batch:
            bad += [x for items in batch.pop("bad_samples") for x in (items or [])]
            if "images" not in batch:
                batch = None
        if batch is None:
            continue
        batch = move_to_device(batch, task, device, channels_last)
        with autocast():
            preds = task.predict(batch)
        evaluator.process(batch, preds)
        if vis is None and vis_images > 0 and group.is_main:
            vis = task.visualize(batch, preds, vis_images)
    if group.enabled:
        metrics, evaluator, bad = distributed.reduce_evaluation(group, evaluator, bad)
    else:
        metrics = evaluator.compute()
    if bad:
        metrics["bad_samples"] = float(len(bad))
        log(f"warning: {len(bad)} unreadable {split + ' ' if split else ''}sample(s) left out of the metrics, "
            f"e.g. '{bad[0][0]}' ({bad[0][1]})")
    return EvalResult(metrics, evaluator, bad, vis)
