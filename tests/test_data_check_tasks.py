"""`visionkit data check` validates every task's targets, not only class labels: label-map values,
depth values, boxes, labels and masks, each problem named with the value found."""

from __future__ import annotations

import json

import torch
from torchvision import tv_tensors

from visionkit.cli import main
from visionkit.registry import TASKS  # filled by `import visionkit` (visionkit/registrations.py)

CLASSES = {"classes": ["background", "a", "b"]}


def image(h=8, w=10):
    return torch.zeros(3, h, w, dtype=torch.uint8)


def test_segmentation_label_values_and_size():
    check = TASKS.get("segmentation").check_sample
    good = torch.tensor([[0, 1, 2, 255]] * 8)
    assert check({"image": image(8, 4), "semantic": tv_tensors.Mask(good)}, CLASSES) == []
    bad = good.clone()
    bad[0, 0] = 7
    problems = check({"image": image(8, 4), "semantic": tv_tensors.Mask(bad)}, CLASSES)
    assert problems == ["label values [7] are neither class ids 0..2 nor the ignore value 255"]
    problems = check({"image": image(9, 4), "semantic": tv_tensors.Mask(good)}, CLASSES)
    assert problems == ["label map is (8, 4) but the image is (9, 4)"]


def test_depth_values_and_size():
    check = TASKS.get("depth").check_sample
    depth = torch.full((8, 10), 2.5)
    depth[0, 0] = 0  # no measurement: fine
    assert check({"image": image(), "depth": tv_tensors.Mask(depth)}, {"classes": []}) == []
    depth[1, 1] = -1.0
    assert check({"image": image(), "depth": tv_tensors.Mask(depth)}, {"classes": []}) == [
        "depth map holds negative values (min -1)"]
    depth[1, 1] = float("nan")
    assert check({"image": image(), "depth": tv_tensors.Mask(depth)}, {"classes": []}) == [
        "depth map holds NaN or Inf values"]
    assert check({"image": image(8, 12), "depth": tv_tensors.Mask(torch.ones(8, 10))}, {"classes": []}) == [
        "depth map is (8, 10) but the image is (8, 12)"]


def test_detection_boxes_labels_and_masks():
    check = TASKS.get("detection").check_sample

    def sample(boxes, labels, masks=None):
        s = {"image": image(), "labels": torch.tensor(labels),
             "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32), format="XYXY",
                                               canvas_size=(8, 10))}
        if masks is not None:
            s["masks"] = tv_tensors.Mask(masks)
        return s

    assert check(sample([[0, 0, 10, 8], [2, 2, 4, 5]], [0, 2], torch.zeros(2, 8, 10)), CLASSES) == []
    assert check(sample([[0, 0, 11, 8]], [1]), CLASSES) == [
        "1 box(es) outside the 10x8 image, e.g. [0.0, 0.0, 11.0, 8.0]"]
    assert check(sample([[3, 3, 3, 6]], [1]), CLASSES) == [
        "1 box(es) of zero area, e.g. [3.0, 3.0, 3.0, 6.0]"]
    assert check(sample([[0, 0, 4, 4]], [3]), CLASSES) == ["labels [3] are outside 0..2"]
    assert check(sample([[0, 0, 4, 4]], [1], torch.zeros(1, 8, 9)), CLASSES) == [
        "masks have shape (1, 8, 9), expected (1, 8, 10)"]


def test_data_check_runs_each_task_on_shapes(make_config, capsys):
    for task, head in (("segmentation", {"model.head.name": "fcn"}), ("depth", {}), ("detection", {})):
        cfg = make_config(f"{task}.yaml", task=task, **head)
        assert main(["data", "check", str(cfg), "--json"]) == 0, task
        report = json.loads(capsys.readouterr().out)
        assert report["task"] == task and report["errors"] == []
        assert sum(s["ok"] for s in report["splits"].values()) == 240
