"""The training crop of the classification pipeline: v2's distribution, without v2's dispatch."""

from __future__ import annotations

import statistics

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from visionkit.data.transforms import RandomResizedCropFlip, classification_transforms


def test_pixels_are_torchvisions_resized_crop_of_the_drawn_box_then_the_flip():
    image = tv_tensors.Image(torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8))
    t = RandomResizedCropFlip(32, scale=(0.3, 1.0), hflip=0.5)
    flips = 0
    for seed in range(40):
        torch.manual_seed(seed)
        got = t(image)
        torch.manual_seed(seed)
        u = torch.rand(2 * t.TRIES + 3).tolist()
        top, left, h, w = t.box(48, 64, u)
        assert 0 <= top <= 48 - h and 0 <= left <= 64 - w
        want = F.resized_crop(image, top, left, h, w, [32, 32], antialias=True)
        if u[-1] < 0.5:
            want, flips = F.horizontal_flip(want), flips + 1
        assert isinstance(got, tv_tensors.Image) and got.dtype == torch.uint8 and torch.equal(got, want)
    assert 5 < flips < 35
    plain = image.as_subclass(torch.Tensor)
    assert type(t(plain)) is torch.Tensor
    square = plain[:, :36, :36]
    for p, flipped in ((0.0, False), (1.0, True)):  # the whole image, at its size: hflip 0 never flips, 1 always
        for seed in range(5):
            torch.manual_seed(seed)
            whole = RandomResizedCropFlip(36, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=p)(square)
            assert torch.equal(whole, square.flip(-1) if flipped else square)


def test_boxes_follow_the_distribution_of_v2_random_resized_crop():
    scale, ratio, n = (0.2, 1.0), (3 / 4, 4 / 3), 3000
    ours = RandomResizedCropFlip(32, scale=scale, ratio=ratio)
    theirs = v2.RandomResizedCrop(32, scale=scale, ratio=ratio, antialias=True)
    image = tv_tensors.Image(torch.zeros(3, 60, 80, dtype=torch.uint8))
    torch.manual_seed(0)
    a = [ours.box(60, 80, torch.rand(2 * ours.TRIES + 3).tolist()) for _ in range(n)]
    b = [(p["top"], p["left"], p["height"], p["width"]) for p in (theirs.make_params([image]) for _ in range(n))]

    def stats(boxes):
        area = [h * w / 4800 for _, _, h, w in boxes]
        aspect = [w / h for _, _, h, w in boxes]
        centre = [(left + w / 2) / 80 for _, left, _, w in boxes]
        return [statistics.mean(area), statistics.stdev(area), statistics.mean(aspect), statistics.mean(centre)]

    for x, y in zip(stats(a), stats(b)):
        assert x == pytest.approx(y, abs=0.02)
    for _, _, h, w in a:
        assert 0.2 * 4800 * 0.9 <= h * w <= 4800 and 0.7 <= w / h <= 1.4


def test_a_box_that_never_fits_falls_back_to_the_centre_with_the_ratio_clamped():
    t = RandomResizedCropFlip(8, scale=(0.99, 1.0), ratio=(0.75, 4 / 3))
    u = [0.5] * (2 * t.TRIES + 3)
    assert t.box(10, 100, u) == (0, 43, 10, 13)  # too wide: the widest allowed box, centred
    assert t.box(100, 10, u) == (43, 0, 13, 10)  # too tall: the tallest


def test_the_training_pipeline_uses_it_and_normalises_when_asked():
    raw = classification_transforms(True, size=16, mean=[0.5] * 3, std=[0.25] * 3, normalize=False)
    assert isinstance(raw, RandomResizedCropFlip) and raw.size == [16, 16]
    full = classification_transforms(True, size=16, mean=[0.5] * 3, std=[0.25] * 3)
    image = tv_tensors.Image(torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8))
    torch.manual_seed(3)
    a = full(image)
    torch.manual_seed(3)
    b = (raw(image).float() / 255 - 0.5) / 0.25
    assert a.dtype == torch.float32 and torch.allclose(a, b, atol=1e-6)
