"""Depth metrics and losses against values worked out by hand on tiny maps with invalid pixels."""

from __future__ import annotations

import math

import pytest
import torch

from visionkit.evaluation.depth import DepthEvaluator, crop_mask, depth_metrics
from visionkit.models.heads.depth import berhu_loss, l1_loss, silog_loss

LN2 = math.log(2)

# valid pixels: (t=2, p=1), (t=4, p=4), (t=1, p=2); t=0 has no measurement, t=20 is beyond max_depth
TARGET = torch.tensor([[2.0, 0.0, 20.0], [4.0, 1.0, 0.0]])
PRED = torch.tensor([[1.0, 5.0, 3.0], [4.0, 2.0, 7.0]])


def test_every_metric_by_hand():
    m = depth_metrics(PRED, TARGET, min_depth=1e-3, max_depth=10.0)
    assert m["abs_rel"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert m["sq_rel"] == pytest.approx((1 / 2 + 0 + 1 / 1) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert m["rmse_log"] == pytest.approx(LN2 * math.sqrt(2 / 3))
    assert m["log10"] == pytest.approx(2 * math.log10(2) / 3)
    # ratios 2, 1, 2: only the exact pixel is under 1.25, 1.5625 and 1.953
    assert m["delta1"] == pytest.approx(1 / 3)
    assert m["delta2"] == pytest.approx(1 / 3)
    assert m["delta3"] == pytest.approx(1 / 3)
    # e = (-ln2, 0, ln2): mean 0, so silog = 100 * rms(e)
    assert m["silog"] == pytest.approx(100 * LN2 * math.sqrt(2 / 3))
    assert m["skipped_images"] == 0


def test_delta3_counts_a_ratio_under_1_953():
    m = depth_metrics(torch.tensor([1.9, 1.0]), torch.tensor([1.0, 1.0]))
    assert (m["delta1"], m["delta2"], m["delta3"]) == (0.5, 0.5, 1.0)


def test_per_image_and_per_pixel_averaging_differ_as_computed():
    second_t = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    second_p = torch.tensor([[1.0, 1.0, 9.0], [9.0, 9.0, 9.0]])
    t, p = torch.stack([TARGET, second_t]), torch.stack([PRED, second_p])
    per_image = depth_metrics(p, t, average="image")
    per_pixel = depth_metrics(p, t, average="pixel")
    assert per_image["abs_rel"] == pytest.approx((0.5 + 0.0) / 2)  # image means 0.5 and 0
    assert per_pixel["abs_rel"] == pytest.approx(1.5 / 5)  # 5 valid pixels in all
    assert per_image["rmse"] == pytest.approx((math.sqrt(2 / 3) + 0) / 2)
    assert per_pixel["rmse"] == pytest.approx(math.sqrt(2 / 5))


def test_predictions_are_clamped_to_the_range():
    m = depth_metrics(torch.tensor([50.0]), torch.tensor([10.0]), max_depth=10.0)
    assert m["abs_rel"] == 0.0


def test_median_scaling_removes_a_global_scale():
    t, p = torch.tensor([2.0, 4.0, 8.0, 0.0]), torch.tensor([1.0, 2.0, 4.0, 100.0])
    assert depth_metrics(p, t)["abs_rel"] == pytest.approx(0.5)
    ev = DepthEvaluator(median_scaling=True)
    ev.process({"depth": t}, {"depth": p})
    assert ev.compute()["abs_rel"] == pytest.approx(0.0)
    assert ev.details()["median_scale"]["mean"] == pytest.approx(2.0)


def test_garg_crop_ignores_errors_outside_it():
    t = torch.full((10, 10), 5.0)
    p = t.clone()
    p[0, :] = 1.0  # row 0 lies above the Garg crop (rows 4..8)
    assert depth_metrics(p, t)["abs_rel"] > 0
    assert depth_metrics(p, t, crop="garg")["abs_rel"] == 0.0
    mask = crop_mask(10, 10, "garg")
    assert mask[4:9, 0:9].all() and mask.sum() == 5 * 9


def test_image_without_valid_pixel_is_skipped_and_counted():
    t = torch.stack([TARGET, torch.zeros(2, 3)])
    p = torch.stack([PRED, torch.ones(2, 3)])
    m = depth_metrics(p, t)
    assert m["skipped_images"] == 1 and m["abs_rel"] == pytest.approx(0.5)
    empty = depth_metrics(torch.ones(2, 2), torch.zeros(2, 2))
    assert empty["skipped_images"] == 1 and math.isnan(empty["abs_rel"])


def test_metrics_at_ground_truth_resolution():
    """A prediction at another size is resized to the ground truth's before scoring."""
    m = depth_metrics(torch.full((4, 4), 3.0), torch.full((8, 8), 3.0))
    assert m["abs_rel"] == 0.0


# -- losses ---------------------------------------------------------------------------------------

def _valid(t):
    return (t > 1e-3) & (t <= 10.0)


def test_l1_loss_by_hand():
    assert l1_loss(PRED, TARGET, _valid(TARGET)).item() == pytest.approx(2 / 3)


def test_silog_loss_by_hand_per_image():
    t2 = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    p2 = torch.tensor([[2.0, 4.0, 1.0], [1.0, 1.0, 1.0]])
    t, p = torch.stack([TARGET, t2]), torch.stack([PRED, p2])
    first = 10 * LN2 * math.sqrt(2 / 3)  # g = (-ln2, 0, ln2): mean 0
    second = 10 * LN2 * math.sqrt(2.5 - 0.85 * 2.25)  # g = (ln2, 2 ln2): mean 1.5 ln2, mean g^2 2.5 ln2^2
    got = silog_loss(p, t, _valid(t), lam=0.85, scale=10.0).item()
    assert got == pytest.approx((first + second) / 2, rel=1e-5)
    # lam = 1: a prediction off by one global factor costs nothing
    scaled = silog_loss(p2[None] * 0 + 3.0, t2[None], _valid(t2[None]), lam=1.0)
    assert scaled.item() == pytest.approx(0, abs=1e-4)


def test_berhu_loss_by_hand():
    t = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    p = torch.tensor([[2.0, 1.1, 1.0, 50.0]])  # |x| = 1, 0.1, 0 (and an invalid pixel)
    # c = 0.2 * 1 = 0.2: 0.1 and 0 are L1; 1 costs (1 + 0.04) / 0.4 = 2.6
    assert berhu_loss(p, t, _valid(t), threshold=0.2).item() == pytest.approx((2.6 + 0.1 + 0) / 3)


@pytest.mark.parametrize("loss", [l1_loss, silog_loss, berhu_loss])
def test_losses_without_valid_pixels_are_zero_with_a_graph(loss):
    p = torch.ones(2, 3, 3, requires_grad=True)
    t = torch.zeros(2, 3, 3)
    value = loss(p, t, _valid(t))
    assert value.item() == 0.0
    value.backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()
