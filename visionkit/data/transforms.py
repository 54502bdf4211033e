"""Image pipelines built from ``torchvision.transforms.v2``.

The pipelines take a uint8 ``tv_tensors.Image`` and return a normalised float image, so the
model sees the same value range in training, evaluation, prediction and export.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2

__all__ = ["classification_transforms"]


def classification_transforms(
    train: bool,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    resize_ratio: float = 1.0,
    normalize: bool = True,
) -> v2.Compose:
    """The standard classification recipe: random crops and flips to train, a centre crop to evaluate.

    Training uses a random resized crop (the Inception-style augmentation of Szegedy et al. 2015,
    sec. 6) with ``scale``/``ratio`` bounds and a horizontal flip with probability ``hflip``.
    Evaluation resizes the short side to ``round(size * resize_ratio)`` and crops the centre
    ``size`` square; ImageNet recipes use ``resize_ratio = 1 / 0.875``, while 1.0 keeps the whole
    of our centred synthetic images. ``mean``/``std`` have one entry per channel (checked by the
    config validation, not here). With ``normalize=False`` the pipeline stops at the uint8 crop:
    the trainer then converts and normalises whole batches on the device, which costs a fraction
    of doing it per sample in the workers (and moves 4x fewer bytes to a GPU).
    """
    if train:
        steps = [v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), antialias=True)]
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(p=hflip))
    else:
        steps = [v2.Resize(round(size * resize_ratio), antialias=True), v2.CenterCrop(size)]
    if normalize:
        steps += [
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[float(m) for m in mean], std=[float(s) for s in std]),
        ]
    return v2.Compose(steps)
