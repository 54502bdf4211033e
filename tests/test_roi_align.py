"""The grid_sample RoIAlign used in training gives torchvision's roi_align numbers and gradients."""

from unittest import mock

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from visionkit.models.heads.roi_align import FastMultiScaleRoIAlign, roi_align_grid


def _rois(n_images: int, per_image: int, size: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n_images * per_image, 2, generator=g) * size * 0.9
    wh = torch.rand(n_images * per_image, 2, generator=g) * size * 0.5 + 0.2  # some thinner than a cell
    boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
    image = torch.arange(n_images).repeat_interleave(per_image)[torch.randperm(n_images * per_image, generator=g)]
    return torch.cat([image[:, None].float(), boxes], 1)


@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_matches_torchvision_values_and_gradients(sampling_ratio, scale):
    feats = torch.randn(3, 5, 16, 12, requires_grad=True)
    rois = _rois(3, 7, 16 / scale, seed=sampling_ratio)
    rois[0, 1:] = torch.tensor([0.0, 0.0, 12 / scale, 16 / scale])  # the whole map: samples on the far border
    rois[1, 1:] = torch.tensor([-3.0, -3.0, 2.0, 2.0]) / scale  # partly outside: the "read 0" rule
    rois[2, 0] = 0  # images with unequal RoI counts
    ref = roi_align(feats, rois, 7, scale, sampling_ratio)
    out = roi_align_grid(feats, rois, 7, scale, sampling_ratio)
    assert out.shape == ref.shape == (21, 5, 7, 7)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), feats)
    (g_out,) = torch.autograd.grad((out * weights).sum(), feats)
    torch.testing.assert_close(g_out, g_ref, atol=1e-4, rtol=1e-4)


def test_no_rois_and_adaptive_ratio():
    feats = torch.randn(2, 4, 8, 8)
    assert roi_align_grid(feats, torch.zeros(0, 5), 7, 1.0, 2).shape == (0, 4, 7, 7)
    with pytest.raises(ValueError, match="sampling_ratio >= 1"):
        roi_align_grid(feats, torch.zeros(1, 5), 7, 1.0, 0)


def test_multiscale_matches_torchvision_in_training_and_bf16():
    names = ["p2", "p3", "p4"]
    g = torch.Generator().manual_seed(0)
    feats = {n: torch.randn(2, 8, 32 // 2**i, 32 // 2**i, generator=g, requires_grad=True)
             for i, n in enumerate(names)}
    feats["pool"] = torch.randn(2, 8, 2, 2, generator=g)  # a level the pooler does not read
    boxes = []
    for _ in range(2):  # small and large boxes, so all three levels get RoIs
        xy = torch.rand(40, 2, generator=g) * 100
        wh = torch.rand(40, 2, generator=g) ** 2 * 120 + 2
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=128)], 1))
    shapes = [(128, 128), (128, 128)]
    ref_pool = MultiScaleRoIAlign(names, 14, 1, canonical_scale=40)  # 128 px boxes on levels p2..p4
    fast_pool = FastMultiScaleRoIAlign(names, 14, 1, canonical_scale=40)
    with mock.patch("visionkit.models.heads.roi_align.roi_align_grid", wraps=roi_align_grid) as grid:
        ref, out = ref_pool(feats, boxes, shapes), fast_pool(feats, boxes, shapes)
    assert grid.call_count == 3  # one grid_sample pooling per level, not torchvision's op
    levels = ref_pool.map_levels(boxes)
    assert set(levels.tolist()) == {0, 1, 2}
    # grid_sample's normalised sample coordinates round apart from roi_align's by ~1e-5 on unit features
    torch.testing.assert_close(out, ref, atol=5e-5, rtol=1e-5)
    w = torch.randn(ref.shape, generator=g)
    g_ref = torch.autograd.grad((ref * w).sum(), [feats[n] for n in names])
    g_out = torch.autograd.grad((out * w).sum(), [feats[n] for n in names])
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # under bf16 autocast both compute in float32 and return bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = {n: v.bfloat16() for n, v in feats.items()}
        ref16, out16 = ref_pool(half, boxes, shapes), fast_pool(half, boxes, shapes)
    assert out16.dtype == ref16.dtype == torch.bfloat16
    torch.testing.assert_close(out16, ref16)
    # without grad (inference, export) it is torchvision's own op
    with torch.no_grad(), mock.patch("visionkit.models.heads.roi_align.roi_align_grid") as grid:
        torch.testing.assert_close(fast_pool(feats, boxes, shapes), ref, atol=0, rtol=0)
    assert grid.call_count == 0
