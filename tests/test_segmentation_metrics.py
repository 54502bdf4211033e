"""mIoU and the other segmentation scores against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from visionkit.evaluation.miou import MIoUEvaluator, confusion_matrix

# target / prediction of six pixels; the fifth is ignored (255), so its prediction never counts.
# kept pairs (true, pred): (0,0) (0,1) (1,1) (1,1) (0,2)
TARGET = torch.tensor([[0, 0, 1], [1, 255, 0]])
PRED = torch.tensor([[0, 1, 1], [1, 2, 2]])


def test_confusion_matrix_drops_ignored_pixels():
    cm = confusion_matrix(TARGET, PRED, 3)
    assert cm.tolist() == [[1, 1, 1], [0, 2, 0], [0, 0, 0]]


def test_scores_match_hand_computed_values():
    ev = MIoUEvaluator(["a", "b", "c"])
    ev.process({"semantic": TARGET[None]}, {"labels": PRED[None]})
    m = ev.compute()
    # IoU: a 1/(3+1-1)=1/3, b 2/(2+3-2)=2/3, c predicted once but never true: 0/1 = 0 (it counts)
    assert m["IoU/a"] == pytest.approx(1 / 3) and m["IoU/b"] == pytest.approx(2 / 3) and m["IoU/c"] == 0
    assert m["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert m["pixel_acc"] == pytest.approx(3 / 5)
    assert m["mean_acc"] == pytest.approx((1 / 3 + 2 / 2) / 2)  # c has no true pixel: left out
    assert m["fw_iou"] == pytest.approx(3 / 5 * 1 / 3 + 2 / 5 * 2 / 3)


def test_class_absent_from_truth_and_prediction_is_left_out_of_the_mean():
    ev = MIoUEvaluator(["a", "b", "c", "d"])  # d: never true, never predicted
    ev.process({"semantic": TARGET[None]}, {"labels": PRED[None]})
    m = ev.compute()
    assert m["mIoU"] == pytest.approx(1 / 3) and "IoU/d" not in m
    assert ev.details()["per_class_iou"]["d"] is None
    assert ev.details()["confusion_matrix"][3] == [0, 0, 0, 0]


def test_accumulates_over_batches_and_lists_of_sizes():
    ev = MIoUEvaluator(["a", "b", "c"])
    ev.process({"semantic": [TARGET[:, :2], TARGET[:, 2:]]}, {"labels": [PRED[:, :2], PRED[:, 2:]]})
    whole = MIoUEvaluator(["a", "b", "c"])
    whole.process({"semantic": TARGET[None]}, {"labels": PRED[None]})
    assert ev.compute() == whole.compute()
    ev.reset()
    ev.process({"semantic": torch.zeros(1, 2, 2, dtype=torch.long)}, {"labels": torch.zeros(1, 2, 2, dtype=torch.long)})
    m = ev.compute()
    assert m["mIoU"] == 1.0 and m["pixel_acc"] == 1.0 and m["fw_iou"] == 1.0


def test_all_ignored_gives_zeros_not_nan():
    ev = MIoUEvaluator(["a", "b"])
    ev.process({"semantic": torch.full((1, 2, 2), 255)}, {"labels": torch.zeros(1, 2, 2, dtype=torch.long)})
    assert all(not math.isnan(v) and v == 0 for v in ev.compute().values())
