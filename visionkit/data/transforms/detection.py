"""Joint image + instance-target pipelines for detection, from ``torchvision.transforms.v2``.

A detection sample is a dict: ``image`` (uint8 ``tv_tensors.Image``), ``boxes``
(``tv_tensors.BoundingBoxes``, XYXY pixels), ``labels`` (int64, 0-based class ids), optionally
``masks`` (``tv_tensors.Mask``, ``(N, H, W)`` uint8), ``iscrowd`` and ``area``. One v2 call moves
all of them together, so a flip or a crop can never leave a mask behind its box.

Training uses large-scale jitter (Ghiasi et al. 2021, "Simple Copy-Paste", sec. 3): rescale the
image by a random factor, then crop or pad back to the original canvas, so object sizes change
while the model's own resize (``min_size``) does not undo it. ``SanitizeBoundingBoxes`` then drops
the instances the crop cut to nothing, with their labels and masks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from visionkit.data.transforms.segmentation import resize_masks


class _DropCrowd:
    """Crowd regions are not objects to learn (COCO's ``iscrowd``): remove them before training."""

    def __call__(self, sample: dict) -> dict:
        crowd = sample.pop("iscrowd", None)
        sample.pop("area", None)  # the evaluator's; meaningless once the image is jittered
        if crowd is None or not bool(crowd.any()):
            return sample
        keep = ~crowd.bool()
        for key in ("boxes", "labels", "masks"):
            if key in sample:
                sample[key] = tv_tensors.wrap(sample[key][keep], like=sample[key]) \
                    if isinstance(sample[key], tv_tensors.TVTensor) else sample[key][keep]
        return sample


class _ScaleJitterCrop:
    """Rescale by a factor drawn from ``scale_range`` and crop/pad back to the input size."""

    def __init__(self, scale_range: tuple[float, float]):
        self.lo, self.hi = scale_range

    def __call__(self, sample: dict) -> dict:
        h, w = sample["image"].shape[-2:]
        factor = self.lo + (self.hi - self.lo) * float(torch.rand(()))
        size = [max(1, round(h * factor)), max(1, round(w * factor))]
        masks = sample.pop("masks", None)
        sample = v2.Resize(size, antialias=True)(sample)
        if masks is not None:
            sample["masks"] = resize_masks(masks, size)
        return v2.RandomCrop((h, w), pad_if_needed=True, fill=0)(sample)


class _TargetsOnly:
    """Run ``pipeline`` on samples with targets; an image without them (predict) passes unchanged.
    A class, not a closure, so loader workers started by spawn or forkserver can receive it."""

    def __init__(self, pipeline=None):
        self.pipeline = pipeline

    def __call__(self, sample: dict) -> dict:
        if self.pipeline is None or "boxes" not in sample:
            return sample
        return self.pipeline(sample)


def detection_transforms(train: bool, *, hflip: float = 0.5,
                         scale_range: tuple[float, float] = (1.0, 1.0)) -> Callable[[dict], dict]:
    """Per-sample pipeline; evaluation keeps the image as is (the model resizes it and maps its
    boxes and masks back, so scores are computed in the original pixels)."""
    if not train:
        return _TargetsOnly()
    steps: list = [_DropCrowd()]
    if scale_range != (1.0, 1.0):
        steps.append(_ScaleJitterCrop(scale_range))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    steps.append(v2.SanitizeBoundingBoxes(min_size=1.0))
    return _TargetsOnly(v2.Compose(steps))
