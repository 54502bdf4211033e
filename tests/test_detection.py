"""The detection task: transforms, training steps on several families, predictions, COCO scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torchvision import tv_tensors

from visionkit import load_config
from visionkit.data.collate import collate_samples
from visionkit.data.datasets.coco import ShapesInstances
from visionkit.data.transforms import detection_transforms
from visionkit.errors import ConfigError
from visionkit.evaluation.coco import CocoEvaluator
from visionkit.registry import TASKS

SMALL_HEAD = {"fpn_channels": 16, "box_representation": 32, "mask_channels": 16, "mask_convs": 1,
              "box_batch_size_per_image": 16, "rpn_batch_size_per_image": 32}


def det_config(tmp_path, shapes_root, backbone="resnet18_w32", name="mask_rcnn", **head):
    cfg = {
        "task": "detection",
        "model": {"backbone": {"name": backbone}, "head": {"name": name, **SMALL_HEAD, **head}},
        "data": {"dataset": "shapes", "root": str(shapes_root), "image_size": 32,
                 "synth": {"num_images": 240, "size": 32, "seed": 0}, "mean": [0.5] * 3,
                 "std": [0.25] * 3, "batch_size": 4, "num_workers": 0},
        "train": {"epochs": 1, "device": "cpu", "progress": False},
    }
    path = tmp_path / f"{backbone}_{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


def build(cfg):
    return TASKS.get("detection").from_config(cfg, {"classes": ["circle", "crescent", "cross", "square",
                                                                "star", "triangle"]})


def shapes_batch(shapes_root, indices, train=False, scale=(1.0, 1.0)):
    ds = ShapesInstances(shapes_root)
    t = detection_transforms(train, scale_range=scale)
    return collate_samples([t(ds[i]) for i in indices])


# -- transforms ------------------------------------------------------------------------------------
def _tight(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_keeps_boxes_and_masks_aligned(shapes_root, seed):
    sample = ShapesInstances(shapes_root)[seed]
    for i, m in enumerate(sample["masks"]):  # the reader's boxes are the masks' tight extents
        assert sample["boxes"][i].tolist() == _tight(m)
    torch.manual_seed(seed)
    out = detection_transforms(True, hflip=0.5, scale_range=(0.6, 1.6))(dict(sample))
    n = len(out["labels"])
    assert out["boxes"].shape == (n, 4) and out["masks"].shape[0] == n
    assert out["image"].shape[-2:] == out["masks"].shape[-2:] == (32, 32)
    for box, mask in zip(out["boxes"], out["masks"]):
        if mask.sum() > 0:  # resampling moves an edge by at most a pixel
            assert np.allclose(box.tolist(), _tight(mask), atol=1.01), (box, _tight(mask))


def _square_sample(size=64):
    mask = torch.zeros(1, size, size, dtype=torch.uint8)
    mask[0, 20:33, 24:37] = 1
    return {"image": tv_tensors.Image(torch.zeros(3, size, size, dtype=torch.uint8)), "labels": torch.tensor([0]),
            "masks": tv_tensors.Mask(mask),
            "boxes": tv_tensors.BoundingBoxes(torch.tensor([[24.0, 20.0, 37.0, 33.0]]), format="XYXY",
                                              canvas_size=(size, size))}


def _centre_offset(box, mask) -> list[float]:
    t = _tight(mask)
    return [(t[0] + t[2] - box[0] - box[2]).item() / 2, (t[1] + t[3] - box[1] - box[3]).item() / 2]


def test_scale_jitter_leaves_masks_centred_on_their_boxes():
    """Nearest-neighbour resizing that rounds the source index down moved each mask about half a
    pixel right and down of its box at a non-integer scale (mean +0.40 / +0.46 px here); the
    masks must stay centred on their boxes on average."""
    pipeline = detection_transforms(True, hflip=0.0, scale_range=(0.75, 1.25))
    offsets = []
    for seed in range(100):
        torch.manual_seed(seed)
        out = pipeline(_square_sample())
        offsets.append(_centre_offset(out["boxes"][0], out["masks"][0]))
    mean = torch.tensor(offsets).mean(0)
    assert mean.abs().max() < 0.1, mean


def test_detector_resize_keeps_target_masks_on_their_boxes(tmp_path, shapes_root):
    """The detector's own resize (min_size) at a non-integer scale keeps mask and box together."""
    task = build(det_config(tmp_path, shapes_root, min_size=83, max_size=200)).train()
    sample = _square_sample()
    images, targets = task.model.transform([sample["image"].float() / 255],
                                           [{"boxes": sample["boxes"].as_subclass(torch.Tensor),
                                             "labels": sample["labels"], "masks": sample["masks"]}])
    assert images.image_sizes[0] == (83, 83)
    dx, dy = _centre_offset(targets[0]["boxes"][0], targets[0]["masks"][0])
    assert abs(dx) < 0.25 and abs(dy) < 0.25, (dx, dy)
    # an image whose instances the crop removed keeps an empty (0, H, W) mask stack
    _, targets = task.model.transform([sample["image"].float() / 255],
                                      [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                                        "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)}])
    assert targets[0]["masks"].shape == (0, 83, 83)


def test_flip_moves_box_and_mask_together():
    image = tv_tensors.Image(torch.zeros(3, 10, 20, dtype=torch.uint8))
    mask = torch.zeros(1, 10, 20, dtype=torch.uint8)
    mask[0, 2:5, 1:4] = 1
    sample = {"image": image, "labels": torch.tensor([0]), "masks": tv_tensors.Mask(mask),
              "boxes": tv_tensors.BoundingBoxes([[1, 2, 4, 5]], format="XYXY", canvas_size=(10, 20))}
    out = detection_transforms(True, hflip=1.0)(sample)
    assert out["boxes"].tolist() == [[16, 2, 19, 5]] and _tight(out["masks"][0]) == [16, 2, 19, 5]


def test_crop_that_removes_an_instance_drops_its_label_and_mask():
    image = tv_tensors.Image(torch.zeros(3, 20, 20, dtype=torch.uint8))
    masks = torch.zeros(2, 20, 20, dtype=torch.uint8)
    masks[0, 0:2, 0:2] = 1
    masks[1, 8:12, 8:12] = 1
    sample = {"image": image, "labels": torch.tensor([3, 4]), "masks": tv_tensors.Mask(masks),
              "iscrowd": torch.tensor([False, False]), "area": torch.tensor([4.0, 16.0]),
              "boxes": tv_tensors.BoundingBoxes([[0, 0, 2, 2], [8, 8, 12, 12]], format="XYXY",
                                                canvas_size=(20, 20))}
    dropped = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out = detection_transforms(True, hflip=0.0, scale_range=(2.0, 2.0))(dict(sample))
        assert len(out["labels"]) == len(out["boxes"]) == len(out["masks"])
        dropped += len(out["labels"]) < 2
    assert dropped > 0  # the 2 px corner object falls outside many of the 2x crops


def test_crowd_regions_are_left_out_of_training():
    image = tv_tensors.Image(torch.zeros(3, 20, 20, dtype=torch.uint8))
    sample = {"image": image, "labels": torch.tensor([1, 2]), "iscrowd": torch.tensor([True, False]),
              "masks": tv_tensors.Mask(torch.ones(2, 20, 20, dtype=torch.uint8)), "area": torch.ones(2),
              "boxes": tv_tensors.BoundingBoxes([[0, 0, 9, 9], [3, 3, 9, 9]], format="XYXY",
                                                canvas_size=(20, 20))}
    out = detection_transforms(True, hflip=0.0)(sample)
    assert out["labels"].tolist() == [2] and "iscrowd" not in out


# -- model -----------------------------------------------------------------------------------------
FAMILIES = ["resnet18_w32", "vgg11_bn_w16", "densenet_bc_k12_tiny"]


@pytest.mark.parametrize("name", ["faster_rcnn", "mask_rcnn"])
@pytest.mark.parametrize("backbone", FAMILIES)
def test_training_steps_lower_the_loss_on_three_families(tmp_path, shapes_root, backbone, name):
    task = build(det_config(tmp_path, shapes_root, backbone, name))
    batch = task.preprocess(shapes_batch(shapes_root, [0, 1]))
    task.train()
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3)
    torch.manual_seed(0)
    first = None
    for _ in range(6):
        losses = task.loss(batch)
        expected = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
        assert set(losses) == expected | ({"loss_mask"} if name == "mask_rcnn" else set())
        total = sum(losses.values())
        assert torch.isfinite(total)
        first = total.item() if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    stem_grad = next(p for p in task.backbone.parameters() if p.requires_grad).grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0  # the loss reaches the backbone
    assert total.item() < first


@pytest.mark.parametrize("fpn_norm,head_norm,norm_type", [("batch", "batch", torch.nn.BatchNorm2d),
                                                           ("group", "group", torch.nn.GroupNorm)])
def test_norm_layers_and_conv_box_head_are_built_and_train(tmp_path, shapes_root, fpn_norm, head_norm, norm_type):
    task = build(det_config(tmp_path, shapes_root, fpn_norm=fpn_norm, head_norm=head_norm, box_convs=2,
                            mask_convs=2))
    heads = task.model.roi_heads
    for part in (task.model.backbone.fpn, heads.mask_head, heads.box_head):
        assert sum(isinstance(m, norm_type) for m in part.modules()) >= 2, part
    assert sum(isinstance(m, torch.nn.Conv2d) for m in heads.box_head.modules()) == 2
    batch = task.preprocess(shapes_batch(shapes_root, [0, 1]))
    task.train()
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3)
    losses = [None, None]
    for i in range(6):
        total = sum(task.loss(batch).values())
        losses[min(i, 1)] = total.item()
        opt.zero_grad()
        total.backward()
        opt.step()
    assert losses[1] < losses[0]
    with pytest.raises(ConfigError, match="'model.head.head_norm' is 'layer', not one of: none, batch, group"):
        det_config(tmp_path, shapes_root, head_norm="layer")
    plain = build(det_config(tmp_path, shapes_root, fpn_norm="none", head_norm="none"))
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))
                   for m in (*plain.model.backbone.fpn.modules(), *plain.model.roi_heads.modules()))


def test_mask_roi_align_takes_its_own_sampling_ratio(tmp_path, shapes_root):
    """model.head.mask_sampling_ratio sets the mask head's RoIAlign samples per bin side (torchvision's
    values: 2) apart from the box head's roi_sampling_ratio; a large RoI then reads other features."""
    from torchvision.ops import MultiScaleRoIAlign

    task = build(det_config(tmp_path, shapes_root, roi_sampling_ratio=1, mask_sampling_ratio=2))
    heads = task.model.roi_heads
    levels = list(heads.mask_roi_pool.featmap_names)
    g = torch.Generator().manual_seed(0)
    feats = {n: torch.randn(1, 8, 32 >> i, 32 >> i, generator=g) for i, n in enumerate(levels)}  # stride 4, 8
    boxes, sizes = [torch.tensor([[4.0, 6.0, 120.0, 110.0]])], [(128, 128)]
    got = {n: getattr(heads, n)(feats, boxes, sizes) for n in ("mask_roi_pool", "box_roi_pool")}
    for name, size, ratio in (("mask_roi_pool", 14, 2), ("box_roi_pool", 7, 1)):
        torch.testing.assert_close(got[name], MultiScaleRoIAlign(levels, size, ratio)(feats, boxes, sizes))
    one = MultiScaleRoIAlign(levels, 14, 1)(feats, boxes, sizes)
    assert (got["mask_roi_pool"] - one).abs().max() > 0.1
    with pytest.raises(ConfigError, match="model.head.mask_sampling_ratio"):
        det_config(tmp_path, shapes_root, mask_sampling_ratio=-2)


def test_checkpoint_from_before_the_norm_keys_gets_the_overrides_that_rebuild_it():
    from visionkit.engine.trainer import _model_settings_hint
    from visionkit.tasks.detection import DetectionTask

    added = DetectionTask.added_settings
    saved = {"model": {"backbone": {"name": "resnet18"}, "head": {"fpn_channels": 64}}}
    current = {"backbone": {"name": "resnet18"},
               "head": {"fpn_channels": 128, "fpn_norm": "batch", "head_norm": "none", "later": 1}}
    hint = _model_settings_hint(saved, current, added)
    assert "built with model.head.fpn_channels=64 model.head.fpn_norm=none: pass those overrides" in hint
    assert "head_norm" not in hint  # its value then was "none", as now
    assert hint.endswith("its config does not record model.head.later")


def test_checkpoint_with_the_former_mask_head_defaults_gets_the_overrides_that_rebuild_it():
    """Until 2026-11-29 the mask head was 2 x 64 by default; a run's saved config records the values
    it trained with, so loading it under today's defaults names the overrides that fit."""
    from visionkit.engine.trainer import _model_settings_hint
    from visionkit.tasks.detection import DetectionTask

    recipe = Path(__file__).resolve().parents[1] / "configs/detection/mask_rcnn_resnet18_fpn_shapes.yaml"
    current = load_config(recipe).model.to_dict()
    saved = {"model": json.loads(json.dumps(current))}
    saved["model"]["head"].update(mask_convs=2, mask_channels=64)
    hint = _model_settings_hint(saved, current, DetectionTask.added_settings)
    assert hint == ("; the checkpoint's model was built with model.head.mask_convs=2 "
                    "model.head.mask_channels=64: pass those overrides")


def test_prediction_format(tmp_path, shapes_root):
    task = build(det_config(tmp_path, shapes_root, box_score_thresh=0.0, detections_per_img=5)).eval()
    batch = task.preprocess(shapes_batch(shapes_root, [0, 1, 2]))
    preds = task.predict(batch)
    assert len(preds) == 3
    for p in preds:
        n = len(p["scores"])
        assert 0 < n <= 5
        assert p["boxes"].shape == (n, 4) and p["labels"].dtype == torch.int64
        assert p["masks"].shape == (n, 32, 32) and p["masks"].dtype == torch.bool
        assert p["labels"].min() >= 0 and p["labels"].max() < 6
        assert (p["boxes"] >= 0).all() and (p["boxes"] <= 32).all()
        assert torch.all(p["scores"][:-1] >= p["scores"][1:])
    rec = task.record(preds, 0)["detections"][0]
    assert set(rec) == {"label", "category_id", "score", "box", "mask_area", "segmentation"}
    assert rec["category_id"] == task.classes.index(rec["label"]) + 1
    assert json.dumps(task.record(preds, 0))  # JSON-able
    vis = task.visualize(batch, preds, 2)
    assert vis.dtype == torch.uint8 and vis.shape[:2] == (1, 3) and vis.shape[-2] >= 256


def _iou(a, b):
    return float((a & b).sum() / (a | b).sum())


def test_masks_are_pasted_at_their_boxes_sub_pixel_place():
    """A mask that fills its box covers exactly the pixels whose centres lie in the box, and a
    small disc sampled at 28 x 28 over its box pastes back onto itself; torchvision's paste rounds
    the box to whole pixels first and loses a good part of a small object's mask IoU."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image
    from torchvision.ops import roi_align

    from visionkit.models.heads.rcnn import paste_masks

    full = paste_masks(torch.ones(1, 1, 28, 28), torch.tensor([[3.3, 5.6, 9.7, 30.2]]), (32, 40))[0, 0] >= 0.5
    assert full.shape == (32, 40)
    assert full.any(0).nonzero().flatten().tolist() == list(range(3, 10))  # centres 3.5 .. 9.5
    assert full.any(1).nonzero().flatten().tolist() == list(range(6, 30))  # centres 6.5 .. 29.5

    yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    disc = ((yy - 20.3) ** 2 + (xx - 31.6) ** 2) <= 5.2**2  # a 10 px object at sub-pixel place
    box = torch.tensor([[31.6 - 5.2, 20.3 - 5.2, 31.6 + 5.2, 20.3 + 5.2]])
    target = roi_align(disc[None, None].float(), [box], (28, 28), 1.0, sampling_ratio=4, aligned=True)
    ours = paste_masks(target, box, (64, 64))[0, 0] >= 0.5
    theirs = paste_masks_in_image(target, box, (64, 64))[0, 0] >= 0.5
    assert _iou(ours, disc) >= 0.98  # 1.0 here
    assert _iou(theirs, disc) < _iou(ours, disc) - 0.1  # 0.84 here
    assert paste_masks(target[:0], box[:0], (64, 64)).shape == (0, 1, 64, 64)
    plain = paste_masks(target, box, (64, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # evaluation under train.amp pastes in float32
        mixed = paste_masks(target, box, (64, 64))
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)


def test_bf16_autocast_keeps_boxes_float32(tmp_path, shapes_root):
    """torchvision decodes boxes in the deltas' dtype: bf16 deltas would put every box on a grid of
    1/256 of its size. The box-regression layers run in float32, so boxes keep their precision."""
    task = build(det_config(tmp_path, shapes_root, box_score_thresh=0.0)).eval()
    batch = task.preprocess(shapes_batch(shapes_root, [0, 1]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        boxes = torch.cat([p["boxes"] for p in task.predict(batch)])
        proposals, _ = task.model.rpn(*_images_and_features(task, batch))
    for b in (boxes, torch.cat(proposals)):
        assert b.dtype == torch.float32
        assert (b != b.bfloat16().float()).float().mean() > 0.5  # most not on the bf16 grid
    task.train()  # and the training losses stay finite under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = task.loss(batch)
    assert all(torch.isfinite(v) for v in losses.values())


def _images_and_features(task, batch):
    images, _ = task.model.transform(batch["images"])
    return images, task.model.backbone(images.tensors)


def test_images_of_different_sizes_batch_as_a_list(tmp_path, shapes_root):
    task = build(det_config(tmp_path, shapes_root, box_score_thresh=0.0)).eval()
    images = [torch.randint(0, 255, (3, 32, 48), dtype=torch.uint8),
              torch.randint(0, 255, (3, 40, 32), dtype=torch.uint8)]
    preds = task.predict(task.preprocess({"images": images}))
    assert preds[0]["masks"].shape[-2:] == (32, 48) and preds[1]["masks"].shape[-2:] == (40, 32)


def test_head_config_is_checked(tmp_path, shapes_root):
    with pytest.raises(ConfigError, match="head.box_batchsize.*did you mean 'box_batch_size_per_image'"):
        det_config(tmp_path, shapes_root, box_batchsize=3)
    with pytest.raises(ConfigError, match="max_size"):
        build(det_config(tmp_path, shapes_root, min_size=64, max_size=32))
    with pytest.raises(ConfigError, match="fpn needs at least two backbone stages"):
        build(load_config(_write(tmp_path, det_config(tmp_path, shapes_root).to_dict(),
                                 **{"model.backbone.out_stages": ["layer4"]})))


def _write(tmp_path, cfg: dict, **over) -> str:
    for key, value in over.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


# -- evaluator -------------------------------------------------------------------------------------
def _truth_batch(shapes_root):
    batch = shapes_batch(shapes_root, range(8))
    batch["images"] = list(batch["images"])
    return batch


def _perfect(batch, shift=0):
    preds = []
    for boxes, labels, masks in zip(batch["boxes"], batch["labels"], batch["masks"]):
        b = boxes.as_subclass(torch.Tensor).clone()
        b[:, [0, 2]] += shift
        preds.append({"boxes": b, "labels": labels.clone(), "scores": torch.linspace(0.9, 0.8, len(labels)),
                      "masks": torch.roll(masks.bool(), shift, dims=-1)})
    return preds


def test_evaluator_scores_perfect_predictions_1_and_shifted_ones_less(shapes_root, tmp_path):
    batch = _truth_batch(shapes_root)
    ev = CocoEvaluator(["circle", "crescent", "cross", "square", "star", "triangle"])
    ev.process(batch, _perfect(batch))
    m = ev.compute()
    assert m["bbox_AP"] == pytest.approx(1.0) and m["segm_AP"] == pytest.approx(1.0)
    assert m["bbox_AP50"] == pytest.approx(1.0) and m["segm_AP75"] == pytest.approx(1.0)
    per_class = ev.details()["segm_per_class_AP"]
    assert per_class and all(v == pytest.approx(1.0) for v in per_class.values())

    ev.reset()
    ev.process(batch, _perfect(batch, shift=2))
    shifted = ev.compute()
    assert 0 < shifted["bbox_AP"] < 0.9 and 0 < shifted["segm_AP"] < 0.9
    assert shifted["bbox_AP50"] > shifted["bbox_AP75"]

    files = ev.write(tmp_path, "val")  # standard COCO results: any COCO tool reads them
    results = json.loads(files[0].read_text())
    assert len(results) == ev.details()["instances"]
    assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(results[0])


def test_evaluator_ignores_detections_on_crowd_regions(shapes_root):
    batch = _truth_batch(shapes_root)
    preds = _perfect(batch)
    batch["iscrowd"] = [torch.zeros(len(x), dtype=torch.bool) for x in batch["labels"]]
    batch["iscrowd"][0][0] = True  # image 0's first object is now a crowd region; its detection hits it
    ev = CocoEvaluator(["circle", "crescent", "cross", "square", "star", "triangle"])
    ev.process(batch, preds)
    assert ev.compute()["bbox_AP"] == pytest.approx(1.0)  # not a false positive
