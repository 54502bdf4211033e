"""Image pipelines built from ``torchvision.transforms.v2``.

The pipelines take a uint8 ``tv_tensors.Image`` and return a normalised float image, so the
model sees the same value range in training, evaluation, prediction and export.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["OnImage", "RandomResizedCropFlip", "classification_transforms"]


class RandomResizedCropFlip:
    """Inception-style random resized crop, then a horizontal flip with probability ``hflip``, of
    one image tensor (uint8 or float, ``[..., C, H, W]``; a ``tv_tensors.Image`` stays one).

    The distribution of ``v2.RandomResizedCrop`` + ``v2.RandomHorizontalFlip``: up to ``TRIES``
    draws of an area fraction uniform in ``scale`` and a log aspect ratio uniform in log(``ratio``)
    until the box fits, at a uniform position; else the centred box of the whole image with its
    aspect ratio clamped into ``ratio``. What differs is the cost: the random numbers come from one
    ``torch.rand`` call on the default generator (so the trainer's per-sample seeding governs
    them, as it does v2's) and the pixels from torchvision's resized-crop kernel called directly,
    without v2's per-call dispatch (tv_tensor unwrapping, type checks, one tensor op per random
    number), which on small images costs more than the pixels themselves.
    """

    TRIES = 10

    def __init__(self, size: int, scale: Sequence[float] = (0.5, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5):
        self.size = [int(size), int(size)]
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        self.hflip = float(hflip)

    def box(self, height: int, width: int, u: Sequence[float]) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the crop, from ``2 * TRIES + 3`` uniform numbers in [0, 1)."""
        (s0, s1), (r0, r1) = self.scale, self.log_ratio
        for k in range(self.TRIES):
            area = height * width * (s0 + (s1 - s0) * u[2 * k])
            aspect = math.exp(r0 + (r1 - r0) * u[2 * k + 1])
            w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < w <= width and 0 < h <= height:
                return int(u[-3] * (height - h + 1)), int(u[-2] * (width - w + 1)), h, w
        w, h = width, height
        if width / height < self.ratio[0]:
            h = round(width / self.ratio[0])
        elif width / height > self.ratio[1]:
            w = round(height * self.ratio[1])
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        plain = image.as_subclass(torch.Tensor) if isinstance(image, tv_tensors.Image) else image
        u = torch.rand(2 * self.TRIES + 3).tolist()
        top, left, h, w = self.box(plain.shape[-2], plain.shape[-1], u)
        out = F.resized_crop_image(plain, top, left, h, w, self.size, antialias=True)
        if u[-1] < self.hflip:
            out = out.flip(-1)
        return tv_tensors.Image(out) if isinstance(image, tv_tensors.Image) else out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"hflip={self.hflip})")


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
) -> v2.Compose | RandomResizedCropFlip:
    """The standard classification recipe: random crops and flips to train, a centre crop to evaluate.

    Training uses a random resized crop (the Inception-style augmentation of Szegedy et al. 2015,
    sec. 6) with ``scale``/``ratio`` bounds and a horizontal flip with probability ``hflip``
    (:class:`RandomResizedCropFlip`: v2's distribution without its per-call dispatch).
    Evaluation resizes the short side to ``round(size * resize_ratio)`` and crops the centre
    ``size`` square; ImageNet recipes use ``resize_ratio = 1 / 0.875``, while 1.0 keeps the whole
    of our centred synthetic images. ``mean``/``std`` have one entry per channel (checked by the
    config validation, not here). With ``normalize=False`` the pipeline stops at the uint8 crop:
    the trainer then converts and normalises whole batches on the device, which costs a fraction
    of doing it per sample in the workers (and moves 4x fewer bytes to a GPU).
    """
    if train:
        steps = [RandomResizedCropFlip(size, scale=scale, ratio=ratio, hflip=hflip)]
        if not normalize:
            return steps[0]
    else:
        steps = [v2.Resize(round(size * resize_ratio), antialias=True), v2.CenterCrop(size)]
    if normalize:
        steps += [
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[float(m) for m in mean], std=[float(s) for s in std]),
        ]
    return v2.Compose(steps)


class OnImage:
    """A sample transform applying ``t`` to the image (a class, not a closure, so loader workers
    started by spawn or forkserver can receive it)."""

    def __init__(self, t):
        self.t = t

    def __call__(self, sample: dict) -> dict:
        sample["image"] = self.t(sample["image"])
        return sample
