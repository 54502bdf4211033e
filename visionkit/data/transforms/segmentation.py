"""Joint image + label-map transforms for semantic segmentation (``torchvision.transforms.v2``).

The image is a ``tv_tensors.Image`` and the label map a ``tv_tensors.Mask``, so one v2 pipeline
moves both: masks are resized with nearest-neighbour interpolation at pixel centres (a label is
never blended into a class that is not there, and it stays on the image's edges) and padded with
the fill given for ``Mask`` -- the ignore value, so padding never counts as background.
:class:`RandomScale` also moves depth maps (depth's joint transforms carry them as masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["ImageAndMask", "RandomScale", "Resize", "resize_masks", "segmentation_transforms"]


def resize_masks(masks: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Masks (label or depth maps, a stack of instance masks, empty or not; a ``Mask`` or a plain
    tensor of any dtype) at ``size`` (H, W), each output pixel from the input pixel its centre
    falls in ("nearest-exact"), as the image's bilinear resize samples (half-pixel centres).
    Plain "nearest" (v2's and torchvision's detection resize for masks) samples at
    floor(i * in / out), a shift of up to half an input pixel right and down: at factor 0.8 about
    every other object rim came out on the wrong side of the image's edge, and at 64 px it is a
    visible share of a small shape."""
    return F.resize(masks, [int(v) for v in size], interpolation=v2.InterpolationMode.NEAREST_EXACT)


class Resize(v2.Resize):
    """``v2.Resize`` to a fixed size whose masks (label or depth maps) are sampled at pixel
    centres, so they stay on the image's edges (see :func:`resize_masks`)."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask) and self.size is not None and len(self.size) == 2:
            return resize_masks(inpt, self.size)
        return super().transform(inpt, params)


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale`` (the "random scale" of DeepLab, Chen et
    al. 2017 sec. 4.1, and of mmseg's ``RandomResize`` with a ratio range).

    With ``base_size`` (H, W) the factor applies to the size that fits the image into
    ``base_size`` keeping its aspect ratio (Cityscapes recipes: 1024x2048 images, base 512x1024);
    without, to the image's own size.
    """

    def __init__(self, scale: Sequence[float], base_size: Sequence[int] | None = None):
        super().__init__()
        self.scale = (float(scale[0]), float(scale[1]))
        self.base_size = tuple(base_size) if base_size else None

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        s = torch.empty(1).uniform_(*self.scale).item()
        if self.base_size:
            s *= min(self.base_size[0] / h, self.base_size[1] / w)
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return resize_masks(inpt, params["size"])
        if isinstance(inpt, tv_tensors.Image):
            return F.resize(inpt, params["size"], antialias=True)
        return inpt


def segmentation_transforms(train: bool, *, crop_size: int, ignore_index: int,
                            scale: Sequence[float] = (0.5, 2.0), base_size: Sequence[int] | None = None,
                            hflip: float = 0.5) -> v2.Transform:
    """Training: random scale, a ``crop_size`` square crop (padded with 0 / ``ignore_index``
    where the scaled image is smaller) and a horizontal flip. Evaluation: nothing -- images are
    scored at their own resolution, as the benchmarks define it; large images use the task's
    sliding-window inference instead of a resize."""
    if not train:
        return v2.Identity()
    steps: list[v2.Transform] = []
    if tuple(scale) != (1.0, 1.0) or base_size:
        steps.append(RandomScale(scale, base_size))
    steps.append(v2.RandomCrop(crop_size, pad_if_needed=True,
                               fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    return v2.Compose(steps)


class ImageAndMask:
    """A sample transform applying ``t`` to the image and its label map together (a class, not a
    closure, so loader workers started by spawn or forkserver can receive it)."""

    def __init__(self, t):
        self.t = t

    def __call__(self, sample: dict) -> dict:
        if "semantic" in sample:  # Mask, so v2 resizes it with nearest and pads it with ignore
            sample["image"], sample["semantic"] = self.t(tv_tensors.Image(sample["image"]),
                                                         tv_tensors.Mask(sample["semantic"]))
        else:  # predict: an image alone
            sample["image"] = self.t(sample["image"])
        return sample
