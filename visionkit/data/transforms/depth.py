"""Joint image + depth-map transforms for depth estimation (``torchvision.transforms.v2``).

The depth map travels as a ``tv_tensors.Mask``, which every geometric transform resamples with
*nearest* (resizes sample it at pixel centres, like the image): a flip, crop or rescale never
invents a depth value by interpolation, and padding is 0 (no measurement).
"""

from __future__ import annotations

from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2._utils import query_size

from visionkit.data.transforms.segmentation import RandomScale, Resize
from visionkit.errors import DataError

__all__ = ["KB_CROP", "BottomCenterCrop", "depth_transforms"]

KB_CROP = (352, 1216)  # KITTI benchmark crop (Uhrig et al. 2017): the rows the LiDAR covers


class BottomCenterCrop(v2.Transform):
    """KITTI's benchmark crop: the bottom ``352 x 1216`` pixels, centred horizontally."""

    def make_params(self, flat_inputs):
        h, w = query_size(flat_inputs)
        ch, cw = KB_CROP
        if h < ch or w < cw:
            raise DataError(f"data.depth.kb_crop needs images of at least {cw}x{ch}, got {w}x{h}")
        return {"top": h - ch, "left": (w - cw) // 2}

    def transform(self, inpt, params):
        return TF.crop(inpt, params["top"], params["left"], *KB_CROP)


def depth_transforms(train: bool, d, hflip: float) -> v2.Compose:
    """``kb_crop`` -> ``resize`` -> (train: random ``scale`` -> random ``crop`` -> flip); ``d`` is
    the ``data.depth`` config section."""
    steps = []
    if d.kb_crop:
        steps.append(BottomCenterCrop())
    if d.resize:
        steps.append(Resize(tuple(d.resize), antialias=True))  # depth at pixel centres too
    if train:
        if tuple(d.scale) != (1.0, 1.0):
            steps.append(RandomScale(d.scale))  # depth maps as labels: nearest-exact, never blended
        if d.crop:
            steps.append(v2.RandomCrop(tuple(d.crop), pad_if_needed=True, fill=0))
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(p=hflip))
    return v2.Compose(steps or [v2.Identity()])
