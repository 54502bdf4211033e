"""RoIAlign for training on CPUs: torchvision's numbers, a backward that uses every core.

torchvision's CPU ``roi_align`` backward walks the RoIs one after another on one thread, so in a
Mask R-CNN training step on a CPU, with every sampled box RoI and mask RoI of the batch going
through it, it can be the largest single cost. With a fixed
``sampling_ratio`` every RoI samples a regular grid of points, so the whole op is one bilinear
``grid_sample`` per pyramid level (RoIs of an image laid side by side), whose backward is
vectorised and parallel, followed by an average over each bin's samples.

:class:`FastMultiScaleRoIAlign` uses it where a backward will follow on a CPU (grad enabled,
fixed sampling ratio, CPU tensors) and torchvision's own op everywhere else (CUDA's backward is
parallel already), so inference, tracing and ONNX export
run exactly torchvision's code. ``tests/test_roi_align.py`` checks outputs and gradients against
``torchvision.ops.roi_align``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales


def roi_align_grid(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float,
                   sampling_ratio: int) -> Tensor:
    """``torchvision.ops.roi_align(features, rois, output_size, spatial_scale, sampling_ratio,
    aligned=False)`` for ``sampling_ratio >= 1``, through ``grid_sample``.

    ``rois`` is ``(K, 5)``: image index, x1, y1, x2, y2 in input pixels. torchvision's sampling
    rules are kept: each bin is split into ``sampling_ratio``\\ :sup:`2` cells sampled at their
    centres, a RoI is at least one feature cell wide, points within one cell outside the map read
    the border, points further out read 0. Computes in float32 (as torchvision's autocast rule
    for ``roi_align``) and returns the features' dtype.
    """
    if sampling_ratio < 1:
        raise ValueError(f"roi_align_grid needs a fixed sampling_ratio >= 1, got {sampling_ratio}")
    n, c, h, w = features.shape
    p, s = int(output_size), int(sampling_ratio)
    ps, k = p * s, rois.shape[0]
    if k == 0:
        return features.new_zeros((0, c, p, p))
    with torch.autocast(features.device.type, enabled=False):
        feats = features.float()
        box = rois[:, 1:].float() * spatial_scale
        steps = torch.arange(ps, device=rois.device, dtype=torch.float32) + 0.5
        x1, y1, x2, y2 = box.unbind(1)
        xs = x1[:, None] + ((x2 - x1).clamp(min=1.0) / ps)[:, None] * steps  # (K, ps) sample columns
        ys = y1[:, None] + ((y2 - y1).clamp(min=1.0) / ps)[:, None] * steps
        inside = ((ys >= -1) & (ys <= h))[:, :, None] & ((xs >= -1) & (xs <= w))[:, None, :]
        # align_corners=True maps -1..1 onto pixel centres 0..size-1; "border" clamps like torchvision
        gx = (xs / max(w - 1, 1) * 2 - 1)[:, None, :].expand(k, ps, ps)
        gy = (ys / max(h - 1, 1) * 2 - 1)[:, :, None].expand(k, ps, ps)
        grid = torch.stack([gx, gy], dim=-1)

        # each image's RoIs side by side in one grid: RoI i goes to row block flat[i] = image * kmax + slot
        image = rois[:, 0].long()
        counts = torch.bincount(image, minlength=n)
        order = torch.argsort(image, stable=True)
        slot = torch.empty_like(image)
        slot[order] = torch.arange(k, device=rois.device) - (torch.cumsum(counts, 0) - counts)[image[order]]
        kmax = int(counts.max())
        flat = image * kmax + slot
        padded = grid.new_zeros((n * kmax, ps, ps, 2)).index_copy_(0, flat, grid)
        out = F.grid_sample(feats, padded.view(n, kmax * ps, ps, 2), mode="bilinear",
                            padding_mode="border", align_corners=True)
        # index_select, not advanced indexing: its backward is a row-wise index_add, far cheaper
        # on a CPU than the accumulating index_put that out[image, :, slot] would need
        out = out.view(n, c, kmax, ps, ps).transpose(1, 2).reshape(n * kmax, c, ps, ps).index_select(0, flat)
        out = out * inside[:, None]
        if s > 1:
            out = F.avg_pool2d(out, s)  # the mean of each bin's s x s samples
    return out.to(features.dtype)


class FastMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's :class:`~torchvision.ops.MultiScaleRoIAlign` (same levels, scales and
    numbers) that pools with :func:`roi_align_grid` when a backward will follow."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = _filter_input(x, self.featmap_names)  # torchvision's own steps, so levels and scales match
        if (self.sampling_ratio < 1 or self.output_size[0] != self.output_size[1] or not torch.is_grad_enabled()
                or feats[0].device.type != "cpu"  # torchvision's CUDA backward is parallel already
                or torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(feats, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        size = self.output_size[0]
        if len(feats) == 1:
            return roi_align_grid(feats[0], rois, size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], size, size))
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            if len(idx):
                out[idx] = roi_align_grid(feat, rois[idx], size, scale, self.sampling_ratio).to(out.dtype)
        return out
